//! What this build is: the crate version and the git revision it was built from
//! (stamped by `build.rs`; `unknown` outside a git checkout). `--version`, `dockscale
//! version` and `/api/v1/version` all read it from here.

use serde::Serialize;

/// The crate version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The short git revision of the build, or `unknown`.
pub const GIT_REVISION: &str = env!("DOCKSCALE_GIT_REVISION");

/// `0.1.0 (git abc1234)`: what `--version` prints after the program name.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("DOCKSCALE_GIT_REVISION"),
    ")"
);

/// This build, as `dockscale version -o json` and `/api/v1/version` give it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    pub version: &'static str,
    pub git_revision: &'static str,
    /// The target triple it was compiled for.
    pub target: &'static str,
}

pub fn build_info() -> BuildInfo {
    BuildInfo {
        version: VERSION,
        git_revision: GIT_REVISION,
        target: TARGET,
    }
}

/// The target triple, passed on by `build.rs`.
const TARGET: &str = env!("DOCKSCALE_TARGET");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_version_names_the_revision() {
        assert_eq!(LONG, format!("{VERSION} (git {GIT_REVISION})"));
        assert!(!GIT_REVISION.is_empty());
    }
}
