//! `dockscale-webapp fs read|write|statfs PATH`: looks at a filesystem from inside the
//! container, for tests of mounts (the image is `FROM scratch`: no shell, no `cat`).
//!
//! - `read PATH` prints the file.
//! - `write PATH` writes a short line to the file (created or truncated) and prints
//!   how many bytes it wrote.
//! - `statfs PATH` prints the filesystem's `size: <bytes>` and `free: <bytes>`.
//!
//! Each returns what it prints, or the error that the caller prints before it exits 1.
//! It touches nothing but the path it is given.

use std::ffi::OsString;
use std::path::Path;

/// The usage line of the subcommand.
pub const USAGE: &str = "usage: dockscale-webapp fs read|write|statfs PATH";

/// What `write` writes.
const WRITTEN: &[u8] = b"written by dockscale-webapp\n";

/// Runs `fs <op> <path>` (the arguments after `fs`).
pub fn run(args: &[OsString]) -> Result<String, String> {
    let [op, path] = args else {
        return Err(USAGE.to_owned());
    };
    let path = Path::new(path);
    let failed = |e: std::io::Error| format!("{}: {e}", path.display());
    match op.to_str() {
        Some("read") => std::fs::read(path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(failed),
        Some("write") => std::fs::write(path, WRITTEN)
            .map(|()| format!("wrote {} bytes to {}\n", WRITTEN.len(), path.display()))
            .map_err(failed),
        Some("statfs") => nix::sys::statvfs::statvfs(path)
            .map(|s| {
                let block = s.fragment_size();
                format!(
                    "size: {}\nfree: {}\n",
                    s.blocks() * block,
                    s.blocks_available() * block
                )
            })
            .map_err(|e| failed(e.into())),
        _ => Err(USAGE.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(op: &str, path: &Path) -> Result<String, String> {
        run(&[op.into(), path.as_os_str().to_owned()])
    }

    #[test]
    fn a_written_file_reads_back_and_its_filesystem_has_a_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        assert!(fs("write", &file)
            .expect("write")
            .starts_with("wrote 28 bytes"));
        assert_eq!(
            fs("read", &file).expect("read"),
            "written by dockscale-webapp\n"
        );
        let stat = fs("statfs", dir.path()).expect("statfs");
        let size: u64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("size: "))
            .and_then(|s| s.parse().ok())
            .expect("a size line");
        assert!(size > 0, "{stat}");
    }

    #[test]
    fn a_missing_file_or_a_bad_command_is_an_error_that_says_what() {
        let missing = fs("read", Path::new("/nonexistent/f")).expect_err("missing");
        assert!(missing.starts_with("/nonexistent/f: "), "{missing}");
        assert_eq!(fs("delete", Path::new("/tmp")).expect_err("bad op"), USAGE);
        assert_eq!(run(&[]).expect_err("no args"), USAGE);
    }
}
