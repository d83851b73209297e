//! One controller per Docker engine: the claim a controller holds while it acts.
//!
//! Two controllers acting on one engine fight: each sees the other's replicas as
//! extras or missing, and the engine ends up with more containers than any spec asks
//! for. So `run` claims the engine before it acts and keeps the claim until it exits.
//! A claim disappears with its holder, however it ends (no stale lock after a
//! SIGKILL), and says who holds it, so that a second `run` can name the first.
//!
//! [`Claim`] is the notion; [`EngineLock`] backs it for an engine reached from this
//! host: an exclusive `flock(2)` on `<lock-dir>/engine-<engine id>.lock`, which the
//! kernel releases when the holder's process ends, with the holder written in the
//! file. The descriptor is opened close-on-exec, so the HAProxy that dockscale starts
//! (and that outlives it) never inherits the claim. A cluster-wide lease (a swarm
//! object updated with its version index) implements the same trait, with
//! [`Claim::lost`] resolving when a renewal fails.
//!
//! This module decides nothing about services; it only answers "may this process act".

use std::fs::File;
use std::future::Future;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// How often a standby controller tries to take the claim over.
pub const STANDBY_POLL: Duration = Duration::from_millis(200);

/// Who holds a claim, as the holder wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// The holder's `--listen` address.
    pub listen: String,
    pub state_dir: PathBuf,
    /// Unix seconds when it took the claim.
    pub since: u64,
}

impl Holder {
    /// This process, about to claim.
    pub fn this_process(listen: &str, state_dir: &Path) -> Self {
        Holder {
            pid: std::process::id(),
            host: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "unknown".to_owned()),
            listen: listen.to_owned(),
            state_dir: state_dir.to_owned(),
            since: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {}, listening on {}, state dir {}",
            self.pid,
            self.host,
            self.listen,
            self.state_dir.display()
        )
    }
}

/// What one attempt to claim found.
#[derive(Debug)]
pub enum Attempt {
    /// The claim is ours until the guard is dropped (or [`Claim::lost`] resolves).
    Acquired,
    /// Someone else holds it; `None` while the holder has not written its name yet.
    HeldBy(Option<Holder>),
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "cannot use the lock directory {dir} (every dockscale driving this engine must \
         share one; choose it with --lock-dir)"
    )]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The right to act on one engine (or one swarm).
pub trait Claim: Send {
    /// Tries once to take the claim for `me`.
    fn try_acquire(&mut self, me: &Holder) -> Result<Attempt, ClaimError>;

    /// Resolves if a claim that was acquired is lost (a lease whose renewal failed);
    /// the controller then stops acting. Never, for a claim only death releases.
    fn lost(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// An engine claimed from this host: an exclusive `flock` held for the life of the
/// process.
pub struct EngineLock {
    path: PathBuf,
    held: Option<Flock<File>>,
}

impl EngineLock {
    /// The lock of `engine_id` in `dir` (created when missing). Nothing is locked yet.
    pub fn new(dir: &Path, engine_id: &str) -> Result<Self, ClaimError> {
        std::fs::create_dir_all(dir).map_err(|source| ClaimError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
        Ok(EngineLock {
            path: dir.join(format!("engine-{}.lock", file_safe(engine_id))),
            held: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_holder(file: &mut File) -> Option<Holder> {
        let mut text = String::new();
        file.rewind().ok()?;
        file.read_to_string(&mut text).ok()?;
        serde_json::from_str(&text).ok()
    }
}

impl Claim for EngineLock {
    fn try_acquire(&mut self, me: &Holder) -> Result<Attempt, ClaimError> {
        if self.held.is_some() {
            return Ok(Attempt::Acquired);
        }
        let lock_error = |source| ClaimError::Lock {
            path: self.path.clone(),
            source,
        };
        // Not truncated on open: the holder's name is read back by the others.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .map_err(lock_error)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut locked) => {
                let text = serde_json::to_string(me).unwrap_or_default();
                locked.set_len(0).map_err(lock_error)?;
                locked.rewind().map_err(lock_error)?;
                locked.write_all(text.as_bytes()).map_err(lock_error)?;
                locked.flush().map_err(lock_error)?;
                self.held = Some(locked);
                Ok(Attempt::Acquired)
            }
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                Ok(Attempt::HeldBy(Self::read_holder(&mut file)))
            }
            Err((_, errno)) => Err(lock_error(std::io::Error::from(errno))),
        }
    }
}

/// An engine id as a file name: Docker's ids are `ABCD:EFGH:...` (20.10) or UUIDs.
fn file_safe(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// The default lock directory: `/run/dockscale` for root, else the user's runtime
/// directory (`$XDG_RUNTIME_DIR/dockscale`), else `<tmp>/dockscale-<uid>`.
pub fn default_lock_dir() -> PathBuf {
    if nix::unistd::Uid::effective().is_root() {
        return PathBuf::from("/run/dockscale");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("dockscale"),
        _ => std::env::temp_dir().join(format!("dockscale-{}", nix::unistd::Uid::effective())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(listen: &str) -> Holder {
        Holder::this_process(listen, Path::new("/srv/state"))
    }

    #[test]
    fn a_second_claim_on_the_same_engine_names_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut first = EngineLock::new(dir.path(), "AB:CD").expect("lock");
        assert!(matches!(
            first.try_acquire(&me("127.0.0.1:1")).expect("try"),
            Attempt::Acquired
        ));
        // Another open file description conflicts even within one process.
        let mut second = EngineLock::new(dir.path(), "AB:CD").expect("lock");
        match second.try_acquire(&me("127.0.0.1:2")).expect("try") {
            Attempt::HeldBy(Some(holder)) => {
                assert_eq!(holder.listen, "127.0.0.1:1");
                assert_eq!(holder.pid, std::process::id());
                assert_eq!(holder.state_dir, Path::new("/srv/state"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            first.path().file_name().and_then(|n| n.to_str()),
            Some("engine-AB-CD.lock")
        );
    }

    #[test]
    fn a_claim_is_free_again_once_its_holder_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut first = EngineLock::new(dir.path(), "e1").expect("lock");
        first.try_acquire(&me("a")).expect("try");
        drop(first);
        let mut second = EngineLock::new(dir.path(), "e1").expect("lock");
        assert!(matches!(
            second.try_acquire(&me("b")).expect("try"),
            Attempt::Acquired
        ));
    }

    #[test]
    fn claims_on_different_engines_do_not_exclude_each_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut one = EngineLock::new(dir.path(), "e1").expect("lock");
        let mut two = EngineLock::new(dir.path(), "e2").expect("lock");
        assert!(matches!(
            one.try_acquire(&me("a")).expect("try"),
            Attempt::Acquired
        ));
        assert!(matches!(
            two.try_acquire(&me("b")).expect("try"),
            Attempt::Acquired
        ));
    }
}
