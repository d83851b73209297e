//! `dockscale run` as a child process, so that a test can do to it what a host does to
//! a daemon: SIGKILL it and start it again with the same command line, SIGSTOP and
//! SIGCONT it.
//!
//! Its stdout and stderr go to one log file (appended across restarts, each start
//! marked), whose tail a failing test prints; `RUST_LOG` is passed on as it is. The
//! child is signalled only by the pid it was spawned with, and it is ended on drop
//! (SIGCONT first, in case it is stopped, then SIGTERM, then SIGKILL), so nothing
//! outlives a panicking test.
//!
//! [`Watching`] is a command that streams (`logs -f`, `events -w`), its output
//! collected line by line.

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A `dockscale` child process; see the module documentation.
pub struct DockscaleProcess {
    bin: PathBuf,
    /// The arguments after the program name (`run`, paths, flags).
    args: Vec<String>,
    log: PathBuf,
    /// Environment variables set for it (e.g. `DOCKER_HOST`), on top of the test's.
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Whether it was SIGSTOPped and not SIGCONTed since.
    stopped: bool,
    /// Its `--listen` address.
    pub listen: SocketAddr,
    /// How many times it was started.
    pub starts: u32,
    http: reqwest::Client,
}

impl DockscaleProcess {
    /// Starts `bin` with `args` (without the program name; `--listen` must be among
    /// them), its output appended to `log`.
    pub fn spawn(bin: &Path, args: Vec<String>, log: PathBuf) -> Self {
        Self::spawn_with_env(bin, args, log, Vec::new())
    }

    /// Like [`Self::spawn`], with these environment variables set for it (and its
    /// restarts): `DOCKER_HOST` to drive another engine, say.
    pub fn spawn_with_env(
        bin: &Path,
        args: Vec<String>,
        log: PathBuf,
        env: Vec<(String, String)>,
    ) -> Self {
        let listen = args
            .iter()
            .position(|a| a == "--listen")
            .and_then(|i| args.get(i + 1))
            .and_then(|a| a.parse().ok())
            .expect("the arguments name a --listen address");
        let mut process = DockscaleProcess {
            bin: bin.to_owned(),
            args,
            log,
            env,
            child: None,
            stopped: false,
            listen,
            starts: 0,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(3))
                .build()
                .expect("an HTTP client (no TLS, no proxy: nothing can fail)"),
        };
        process.start();
        process
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "dockscale is already running");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        self.starts += 1;
        let _ = writeln!(
            log,
            "=== start {} of {} {}",
            self.starts,
            self.bin.display(),
            self.args.join(" ")
        );
        let stderr = log.try_clone().expect("log file handle");
        let child = Command::new(&self.bin)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.stopped = false;
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        let status = child.wait().ok();
        self.stopped = false;
        status
    }

    /// Starts it again with the same command line (after [`Self::kill`]).
    pub fn restart(&mut self) {
        self.start();
    }

    /// SIGSTOP: the process stays, but does nothing until [`Self::resume`].
    pub fn suspend(&mut self) {
        self.signal(Signal::SIGSTOP);
        self.stopped = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        self.signal(Signal::SIGCONT);
        self.stopped = false;
    }

    /// Whether it exited without being killed by us, and how.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits until its HTTP server accepts connections.
    pub async fn wait_listening(&self, timeout: Duration) -> Result<Duration, String> {
        let what = format!("dockscale to listen on {}", self.listen);
        crate::wait_listening(self.listen, &what, timeout)
            .await
            .map_err(|e| e.to_string())
    }

    /// GETs a path of its HTTP server: status and body, or why not.
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        let url = format!("http://{}{path}", self.listen);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    }

    /// A service's status from `/api/v1/services/<name>`.
    pub async fn service_status(&self, name: &str) -> Result<serde_json::Value, String> {
        match self.get(&format!("/api/v1/services/{name}")).await? {
            (200, body) => serde_json::from_str(&body).map_err(|e| format!("{e}: {body}")),
            (code, body) => Err(format!("HTTP {code}: {body}")),
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = strip_colors(&std::fs::read_to_string(&self.log).unwrap_or_default());
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// What a failing test prints of the log (which goes with its temporary
    /// directory): every start and every warning or error (the first `warnings` of
    /// them), then the last `tail` lines.
    pub fn log_digest(&self, warnings: usize, tail: usize) -> String {
        let text = strip_colors(&std::fs::read_to_string(&self.log).unwrap_or_default());
        let notable: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("=== start") || l.contains(" WARN ") || l.contains(" ERROR "))
            .take(warnings)
            .collect();
        format!(
            "{}\n--- warnings and errors above, the last {tail} lines below ---\n{}",
            notable.join("\n"),
            self.log_tail(tail)
        )
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for DockscaleProcess {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        // A stopped process would not act on SIGTERM.
        let _ = kill(pid, Signal::SIGCONT);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `text` without ANSI colour sequences (`ESC [ ... m`).
fn strip_colors(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A `dockscale` command left running (`logs -f`, `events -w`), its stdout collected
/// line by line; killed by the pid it was spawned with on drop.
pub struct Watching {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Watching {
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(crate::dockscale_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dockscale");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("lines").push(line);
            }
        });
        Watching { child, lines }
    }

    /// Its exit status, once it exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// What it printed so far, line by line.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Waits for a line that `matches`; panics with what was printed.
    pub async fn wait_line(&self, what: &str, timeout: Duration, matches: impl Fn(&str) -> bool) {
        crate::wait_for(what, timeout, || {
            let lines = self.lines();
            if lines.iter().any(|l| matches(l)) {
                Ok(())
            } else {
                Err(lines)
            }
        })
        .await;
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `dockscale` with `args` to its end; it must succeed. Its stdout.
pub fn dockscale_output(args: &[&str]) -> String {
    let out = Command::new(crate::dockscale_bin())
        .args(args)
        .output()
        .expect("run dockscale");
    assert!(
        out.status.success(),
        "dockscale {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The replica names that prefix lines of `dockscale logs` (`NAME | line`).
pub fn logs_prefixes(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.split_once(" | ").map(|(name, _)| name.to_owned()))
        .collect()
}
