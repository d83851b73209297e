//! The managed HAProxy process: found in PATH, started in master-worker mode as a
//! daemon with the generated configuration, adopted again after a dockscale restart,
//! reloaded (never for a replica change) and restarted when it dies.
//!
//! Files in the state directory: `haproxy.cfg` (rendered), `haproxy.sock` (the admin
//! socket, mode 600), `haproxy.pid` (the master's pid), `haproxy.state` (the
//! server-state file written before each reload), `haproxy.log` (what HAProxy prints
//! while starting), `cookie.key` (the secret of the stickiness cookies, kept so that
//! sessions survive restarts) and `dockscale-hold.lua` (the scale-to-zero action,
//! loaded only when a service scales to zero).
//!
//! HAProxy is left running when dockscale stops, like the containers: serving goes on
//! and the next dockscale adopts it. Processes are signalled by the pid HAProxy wrote,
//! after checking that pid is an HAProxy running our configuration.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::Mutex;

use super::config::ManagedConfig;
use super::runtime_api::{Endpoint, RuntimeApi};
use crate::lb::LbErrorKind;

/// The longest unix socket path the kernel takes (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// How long a start or a reload may take before it is reported as failed.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    #[error(
        "`haproxy` was not found in PATH: install it (Debian/Ubuntu: `apt-get install haproxy`, \
         version 2.6 or later) or drive your own HAProxy with --haproxy-socket"
    )]
    Missing,
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the admin socket path {path} is longer than a unix socket address allows \
         ({MAX_SOCKET_PATH} bytes): choose a shorter --state-dir"
    )]
    SocketPathTooLong { path: PathBuf },
    #[error("HAProxy rejected the generated configuration {path}:\n{output}")]
    InvalidConfig { path: PathBuf, output: String },
    #[error("HAProxy did not start: {0}")]
    Start(String),
    #[error("HAProxy did not finish reloading within {0:?}")]
    Reload(Duration),
}

impl ManagedError {
    pub fn kind(&self) -> LbErrorKind {
        match self {
            ManagedError::Missing => LbErrorKind::Missing,
            ManagedError::Write { .. }
            | ManagedError::Spawn { .. }
            | ManagedError::SocketPathTooLong { .. }
            | ManagedError::Start(_) => LbErrorKind::StartFailed,
            ManagedError::InvalidConfig { .. } => LbErrorKind::ConfigInvalid,
            ManagedError::Reload(_) => LbErrorKind::ReloadFailed,
        }
    }
}

/// The files of the managed HAProxy.
#[derive(Clone, Debug)]
pub struct Paths {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub pidfile: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    pub cookie_key: PathBuf,
}

impl Paths {
    pub fn new(dir: &Path) -> Self {
        Paths {
            dir: dir.to_owned(),
            config: dir.join("haproxy.cfg"),
            socket: dir.join("haproxy.sock"),
            pidfile: dir.join("haproxy.pid"),
            state: dir.join("haproxy.state"),
            log: dir.join("haproxy.log"),
            cookie_key: dir.join("cookie.key"),
        }
    }
}

/// How a start went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Started {
    /// A new master was started.
    Fresh,
    /// A master started by an earlier dockscale with this state directory was found
    /// running and answering, and kept.
    Adopted,
}

pub struct ManagedHaproxy {
    /// `None` when HAProxy is not installed: reported when a service needs it.
    binary: Option<PathBuf>,
    paths: Paths,
    exporter: SocketAddr,
    cookie_key: String,
    api: RuntimeApi,
    /// Serializes starts and reloads (the controller reloads, the supervisor restarts).
    lock: Mutex<()>,
    /// The shape of the last configuration `haproxy -c` accepted: a restart with the
    /// same shape (only the servers' addresses differ) skips the check, to serve again
    /// sooner.
    checked_shape: std::sync::Mutex<Option<String>>,
}

impl ManagedHaproxy {
    /// Looks for `haproxy` in PATH and prepares the state directory; starts nothing.
    pub fn new(
        state_dir: &Path,
        exporter: SocketAddr,
        api: RuntimeApi,
    ) -> Result<Self, ManagedError> {
        let binary = locate().ok();
        let paths = Paths::new(state_dir);
        if paths.socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ManagedError::SocketPathTooLong { path: paths.socket });
        }
        std::fs::create_dir_all(&paths.dir).map_err(|source| ManagedError::Write {
            path: paths.dir.clone(),
            source,
        })?;
        let cookie_key = load_or_create_key(&paths.cookie_key)?;
        super::hold::write_script(&paths.dir).map_err(|source| ManagedError::Write {
            path: paths.dir.join(super::hold::SCRIPT_FILE),
            source,
        })?;
        Ok(ManagedHaproxy {
            binary,
            paths,
            exporter,
            cookie_key,
            api,
            lock: Mutex::new(()),
            checked_shape: std::sync::Mutex::new(None),
        })
    }

    fn binary(&self) -> Result<&Path, ManagedError> {
        self.binary.as_deref().ok_or(ManagedError::Missing)
    }

    /// The runtime API endpoint of the managed process.
    pub fn endpoint(paths: &Paths) -> Endpoint {
        Endpoint::Unix(paths.socket.clone())
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// A configuration for these backends, with this instance's files and secret.
    pub fn config(&self, backends: Vec<super::config::BackendConfig>) -> ManagedConfig {
        ManagedConfig::new(&self.paths.dir, self.exporter, &self.cookie_key, backends)
    }

    /// The shape of the configuration the running HAProxy was last given.
    pub fn running_shape(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.paths.config).ok()?;
        ManagedConfig::shape_of(&text).map(str::to_owned)
    }

    /// Adopts a running master of this state directory, or starts one with `config`.
    pub async fn start(&self, config: &ManagedConfig) -> Result<Started, ManagedError> {
        let _guard = self.lock.lock().await;
        if self.master_pid().is_some() && self.api.info().await.is_ok() {
            return Ok(Started::Adopted);
        }
        self.start_locked(config).await.map(|()| Started::Fresh)
    }

    /// Starts a new master with `config` when the current one is gone. Returns whether
    /// it had to.
    pub async fn restart_if_dead(&self, config: &ManagedConfig) -> Result<bool, ManagedError> {
        let _guard = self.lock.lock().await;
        if self.master_pid().is_some() {
            return Ok(false);
        }
        self.start_locked(config).await.map(|()| true)
    }

    async fn start_locked(&self, config: &ManagedConfig) -> Result<(), ManagedError> {
        let began = std::time::Instant::now();
        // A state file from a previous process would put old states on free slots.
        let _ = std::fs::remove_file(&self.paths.state);
        let text = config.render();
        self.check(&text).await?;
        let checked = began.elapsed();
        write_atomically(&self.paths.config, &text)?;
        let written = began.elapsed();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.paths.log)
            .map_err(|source| ManagedError::Write {
                path: self.paths.log.clone(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| ManagedError::Write {
            path: self.paths.log.clone(),
            source,
        })?;
        let binary = self.binary()?;
        // Under systemd, HAProxy in master-worker mode would tell the unit's notify
        // socket it is ready (and whose pid is the main one): only dockscale speaks
        // for the unit.
        let status = tokio::process::Command::new(binary)
            .arg("-D")
            .arg("-f")
            .arg(&self.paths.config)
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .status()
            .await
            .map_err(|source| ManagedError::Spawn {
                binary: binary.to_owned(),
                source,
            })?;
        let spawned = began.elapsed();
        if !status.success() {
            return Err(ManagedError::Start(format!(
                "{} exited with {status}; its output:\n{}",
                binary.display(),
                tail(&self.paths.log, 15)
            )));
        }
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if self.api.info().await.is_ok() && self.master_pid().is_some() {
                tracing::info!(
                    pid = self.master_pid().map(|p| p.as_raw()),
                    config = %self.paths.config.display(),
                    checked_ms = checked.as_millis(),
                    written_ms = written.as_millis(),
                    daemonized_ms = spawned.as_millis(),
                    answering_ms = began.elapsed().as_millis(),
                    "HAProxy started"
                );
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ManagedError::Start(format!(
                    "its runtime API at {} did not answer within {READY_TIMEOUT:?}; \
                     its output:\n{}",
                    self.paths.socket.display(),
                    tail(&self.paths.log, 15)
                )));
            }
            // A restart is measured in the requests it fails: look often.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Writes `config` and reloads the master (SIGUSR2): the new worker takes the
    /// listeners over, the old one finishes its connections. The server states are
    /// saved to the state file first and loaded by the new worker.
    pub async fn reload(&self, config: &ManagedConfig) -> Result<(), ManagedError> {
        let _guard = self.lock.lock().await;
        let Some(master) = self.master_pid() else {
            return self.start_locked(config).await;
        };
        let text = config.render();
        self.check(&text).await?;
        match self.api.servers_state_file().await {
            Ok(state) => write_atomically(&self.paths.state, &state)?,
            Err(e) => tracing::warn!(
                error = %crate::report::Chain(&e),
                "cannot save the server states before reloading"
            ),
        }
        let old_worker = self.api.info().await.ok().map(|i| i.pid);
        write_atomically(&self.paths.config, &text)?;
        if let Err(e) = kill(master, Signal::SIGUSR2) {
            tracing::warn!(
                error = %crate::report::Chain(&e),
                "cannot signal the HAProxy master; starting a new one"
            );
            return self.start_locked(config).await;
        }
        let wanted: Vec<String> = config.backends.iter().map(|b| b.backend.clone()).collect();
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let info = self.api.info().await.ok();
            let new_worker = info.is_some_and(|i| Some(i.pid) != old_worker);
            if new_worker {
                if let Ok(backends) = self.api.backends().await {
                    if wanted.iter().all(|w| backends.contains(w)) {
                        tracing::info!("HAProxy reloaded");
                        return Ok(());
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ManagedError::Reload(READY_TIMEOUT));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `haproxy -c` on a rendered configuration, next to the real file.
    async fn check(&self, text: &str) -> Result<(), ManagedError> {
        let shape = ManagedConfig::shape_of(text).map(str::to_owned);
        let checked = || self.checked_shape.lock().unwrap_or_else(|e| e.into_inner());
        if shape.is_some() && *checked() == shape {
            return Ok(());
        }
        let candidate = self.paths.dir.join("haproxy.cfg.new");
        write_atomically(&candidate, text)?;
        let binary = self.binary()?;
        // Not `-q`: quiet mode drops the ALERT lines that say what is wrong.
        let output = tokio::process::Command::new(binary)
            .arg("-c")
            .arg("-f")
            .arg(&candidate)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| ManagedError::Spawn {
                binary: binary.to_owned(),
                source,
            })?;
        if output.status.success() {
            *checked() = shape;
            Ok(())
        } else {
            Err(ManagedError::InvalidConfig {
                path: candidate,
                output: alerts(&output.stdout, &output.stderr),
            })
        }
    }

    /// The master's pid, when the pid file names a live HAProxy of this state directory.
    pub fn master_pid(&self) -> Option<Pid> {
        let text = std::fs::read_to_string(&self.paths.pidfile).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        if pid <= 1 {
            return None;
        }
        // Never signal a pid that was reused by another program.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        let ours = cmdline.contains("haproxy")
            && cmdline.contains(self.paths.config.to_string_lossy().as_ref());
        let pid = Pid::from_raw(pid);
        // A zombie still has a cmdline on some kernels: ask for its state too.
        let alive = kill(pid, None).is_ok() && !is_zombie(pid);
        (ours && alive).then_some(pid)
    }
}

/// A running process whose end is noticed at once: a pidfd (Linux 5.3+) becomes
/// readable when the process exits, whether or not it is our child (the managed master
/// is a daemon, reparented away from dockscale). No polling.
pub struct ProcessWatch {
    pid: Pid,
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl ProcessWatch {
    /// Watches `pid`; an error when it is already gone or pidfds are unavailable.
    pub fn new(pid: Pid) -> std::io::Result<Self> {
        let raw = rustix::process::Pid::from_raw(pid.as_raw())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let fd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::NONBLOCK)?;
        // SAFETY: `fd` is a valid descriptor that the `AsyncFd` owns from here on; nothing
        // else closes or replaces it while it is registered.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .map_err(std::io::Error::from)?;
        Ok(ProcessWatch { pid, fd })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Resolves once the process has ended.
    pub async fn exited(&self) {
        // Readable means exited; an error polling it means the same for our purpose.
        let _ = self.fd.readable().await;
    }
}

/// `haproxy` in PATH.
pub fn locate() -> Result<PathBuf, ManagedError> {
    which::which("haproxy").map_err(|_| ManagedError::Missing)
}

fn is_zombie(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(") ")?.1.to_owned();
            after.chars().next()
        })
        .is_some_and(|state| state == 'Z' || state == 'X')
}

fn load_or_create_key(path: &Path) -> Result<String, ManagedError> {
    if let Ok(key) = std::fs::read_to_string(path) {
        let key = key.trim();
        if key.len() >= 16 && key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Ok(key.to_owned());
        }
    }
    use rand::distr::{Alphanumeric, SampleString};
    let key = Alphanumeric.sample_string(&mut rand::rng(), 32);
    write_atomically(path, &key)?;
    Ok(key)
}

fn write_atomically(path: &Path, text: &str) -> Result<(), ManagedError> {
    let err = |source| ManagedError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

/// What `haproxy -c` said was wrong: its ALERT lines (and the WARNING lines around
/// them), or everything it printed when it printed no such line.
fn alerts(stdout: &[u8], stderr: &[u8]) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(stderr),
        String::from_utf8_lossy(stdout)
    );
    let flagged: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("[ALERT]") || l.starts_with("[WARNING]"))
        .collect();
    if flagged.is_empty() {
        text.trim().to_owned()
    } else {
        flagged.join("\n")
    }
}

/// The last `n` lines of a file, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from HAProxy 2.6.12's `haproxy -c` of a relative socket path (its long
    // line continued with `\`).
    const REJECTED: &str = "\
[NOTICE]   (10924) : haproxy version is 2.6.12-1+deb12u4
[NOTICE]   (10924) : path to executable is /usr/sbin/haproxy
[ALERT]    (10924) : config : parsing [t.cfg:2] : 'stats socket' : \
missing port specification in '.dockscale/haproxy.sock'

[ALERT]    (10924) : config : Error(s) found in configuration file : t.cfg
[ALERT]    (10924) : config : Fatal errors found in configuration.
";

    #[test]
    fn a_rejected_configuration_is_reported_with_haproxys_alert_lines() {
        let said = alerts(b"", REJECTED.as_bytes());
        assert_eq!(said.lines().count(), 3, "{said}");
        assert!(
            said.starts_with("[ALERT]    (10924) : config : parsing [t.cfg:2] : 'stats socket'"),
            "{said}"
        );
        assert!(!said.contains("NOTICE"), "{said}");
    }

    #[test]
    fn output_without_alert_lines_is_reported_whole() {
        assert_eq!(
            alerts(b"Configuration file is valid\n", b""),
            "Configuration file is valid"
        );
    }
}
