//! Stamps the binary with the git revision it was built from
//! (`DOCKSCALE_GIT_REVISION`, read by `crate::version`).
//!
//! `git rev-parse --short HEAD` (uncommitted changes are not marked: this script reruns
//! when HEAD moves, not on every edit, so a `-dirty` mark would go stale). Outside
//! a git checkout (a source tarball, a build without git) the revision is `unknown`,
//! unless `DOCKSCALE_GIT_REVISION` is set in the build's environment: packagers who
//! build from an export can pass the revision they exported. The target triple is
//! passed on too (`DOCKSCALE_TARGET`).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=DOCKSCALE_GIT_REVISION");
    let revision = std::env::var("DOCKSCALE_GIT_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=DOCKSCALE_GIT_REVISION={revision}");
    // Cargo gives build scripts the target triple; the crate itself does not see it.
    if let Ok(target) = std::env::var("TARGET") {
        println!("cargo:rustc-env=DOCKSCALE_TARGET={target}");
    }
}

/// The short revision of HEAD, and the files whose change moves it, watched.
fn git_revision() -> Option<String> {
    let head = git(&["rev-parse", "--short", "HEAD"])?;
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it points to (a
    // commit) and packed refs. A worktree's HEAD lives in its own git dir, the refs in
    // the common one.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) {
        // HEAD's reflog moves with every commit and checkout, even when the branch's
        // ref is packed.
        let mut watched = vec![dir.join("HEAD"), dir.join("logs").join("HEAD")];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            let common = git(&["rev-parse", "--git-common-dir"])
                .map(PathBuf::from)
                .unwrap_or(dir);
            watched.push(common.join(&branch));
            watched.push(common.join("packed-refs"));
        }
        // A path that does not exist would make cargo run this script on every build.
        for path in watched.iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    Some(head)
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}
