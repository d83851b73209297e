//! Support for the end-to-end tests: a real Docker engine, a real HAProxy, dockscale's
//! own `run` in-process, and cleanup of everything a test creates, even on panic.
//!
//! Every test gets its own service name, network, ports and temporary directory, so
//! tests run in parallel without colliding. Missing Docker, HAProxy or the demo image
//! is a test failure with the command that fixes it, never a skip.
//!
//! The kit is shared with the benchmarks (`bench/`): commands ([`try_sh`], and [`sh`]
//! that panics), [`free_port`], HTTP ([`try_http_get`], [`http_get`]), waits
//! ([`wait_until`], and [`wait_for`] that panics), [`remove_by_label`] and
//! [`haproxy::end_haproxy`]. Each has one implementation; the panicking forms, for
//! tests, wrap the ones that return the error.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use rand::Rng;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use dockscale::cli::{Cli, Command as CliCommand};

pub mod chaos;
pub mod engine;
pub mod haproxy;
pub mod load;
pub mod process;
pub mod registry;
pub mod swarm;
pub mod tls;

/// The demo image every test runs.
pub const WEBAPP_IMAGE: &str = "dockscale-webapp:latest";

/// Logs of the controller go to the test's output (shown on failure).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,dockscale=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A command that could not be run, or that failed.
#[derive(Debug)]
pub enum ShError {
    /// The program could not be started.
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// It ran and exited unsuccessfully; its stderr.
    Failed {
        program: String,
        args: Vec<String>,
        stderr: String,
    },
}

impl std::fmt::Display for ShError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShError::Spawn { program, .. } => write!(f, "cannot run {program}"),
            ShError::Failed {
                program,
                args,
                stderr,
            } => write!(f, "{program} {args:?} failed: {stderr}"),
        }
    }
}

impl std::error::Error for ShError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ShError::Spawn { source, .. } => Some(source),
            ShError::Failed { .. } => None,
        }
    }
}

/// Runs a command: its stdout, or why it could not run or failed (with its stderr).
pub fn try_sh(program: &str, args: &[&str]) -> Result<String, ShError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| ShError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(ShError::Failed {
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command, returning stdout; panics with stderr on failure.
pub fn sh(program: &str, args: &[&str]) -> String {
    try_sh(program, args).unwrap_or_else(|e| match &e {
        ShError::Spawn { source, .. } => panic!("{e}: {source}"),
        ShError::Failed { .. } => panic!("{e}"),
    })
}

/// Like [`sh`], but failure is returned, not a panic (for cleanup).
pub fn sh_quiet(program: &str, args: &[&str]) -> Option<String> {
    try_sh(program, args).ok()
}

/// Force-removes every container, any state, that carries `label` (`key=value`).
pub fn remove_by_label(label: &str) -> Result<(), ShError> {
    let filter = format!("label={label}");
    let ids = try_sh("docker", &["ps", "-aq", "--filter", &filter])?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids);
        try_sh("docker", &args)?;
    }
    Ok(())
}

/// Fails the test when Docker or the demo image is missing.
pub fn require_docker() {
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match info {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the Docker engine is not reachable (these tests need it; start dockerd): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("the docker CLI is missing (apt-get install docker.io): {e}"),
    }
    assert!(
        sh_quiet("docker", &["image", "inspect", WEBAPP_IMAGE]).is_some(),
        "the demo image {WEBAPP_IMAGE} is missing: build it with webapp/build-image.sh"
    );
}

/// Runs a future to completion from synchronous code inside a multi-threaded test
/// (the polling closures of [`wait_for`]).
pub fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// The `dockscale` binary of this build (`target/<profile>/dockscale`), for tests of
/// the command line itself.
pub fn dockscale_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test>-<hash>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps");
    let bin = dir.join("dockscale");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p dockscale)",
        bin.display()
    );
    bin
}

/// A unique DNS-label name: `<prefix>-<5 random>`.
pub fn unique(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}-{suffix}")
}

/// A command as a user's shell starts it: without the variables cargo and nextest give
/// a test process (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, `NEXTEST_*`, their
/// `LD_LIBRARY_PATH`). A `cargo build` it runs then sees the environment of the build
/// before it: build scripts that watch such a variable (ring's watches
/// `CARGO_MANIFEST_DIR`) would otherwise rebuild the crates after them, and the next
/// build outside the tests would rebuild them again.
pub fn user_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    let nextest_library_path = std::env::var_os("NEXTEST_LD_LIBRARY_PATH");
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let from_harness = matches!(
            name,
            "CARGO"
                | "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
        ) || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_")
            || name.starts_with("NEXTEST")
            || (name == "LD_LIBRARY_PATH" && nextest_library_path.as_ref() == Some(&value));
        if from_harness {
            command.env_remove(name);
        }
    }
    command
}

/// Where [`free_port`] keeps its leases, one `flock`ed file per port.
const PORT_LEASE_DIR: &str = "/tmp/dockscale-e2e-ports";

/// Ports [`free_port`] hands out: below Linux's ephemeral range (32768-60999), so
/// neither an outgoing connection, nor a `bind(0)`, nor a port Docker publishes takes
/// one between the lease and its use.
const LEASED_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port no other test of this machine holds: free now, and leased to this
/// process until it ends (an exclusive `flock` the kernel drops however the process
/// ends), so that two calls, in one test or in tests side by side, never return the
/// same port.
pub fn free_port() -> u16 {
    use nix::fcntl::{Flock, FlockArg};
    use std::fs::{File, OpenOptions};
    use std::sync::Mutex;
    static HELD: Mutex<Vec<Flock<File>>> = Mutex::new(Vec::new());

    std::fs::create_dir_all(PORT_LEASE_DIR)
        .unwrap_or_else(|e| panic!("cannot create {PORT_LEASE_DIR}: {e}"));
    let span = LEASED_PORTS.end - LEASED_PORTS.start;
    let start = rand::rng().random_range(0..span);
    for offset in 0..span {
        let port = LEASED_PORTS.start + (start + offset) % span;
        let path = format!("{PORT_LEASE_DIR}/{port}.lock");
        let Ok(file) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        else {
            continue;
        };
        let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        HELD.lock().unwrap_or_else(|e| e.into_inner()).push(lock);
        return port;
    }
    panic!("no free loopback port in {LEASED_PORTS:?} (leases in {PORT_LEASE_DIR})");
}

/// A container as `docker ps` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub state: String,
    /// Its `dockscale.template-hash` label (empty without one).
    pub template_hash: String,
    /// Its `dockscale.created-at` label: when dockscale asked for it, in Unix
    /// nanoseconds on dockscale's clock (what its back-off is measured against).
    pub created_at_ns: Option<i64>,
}

/// One test's world: a service name, a network, a spec directory. Dropping it removes
/// the service's containers, the containers the test made itself and the network.
pub struct Fixture {
    pub service: String,
    pub network: String,
    pub dir: tempfile::TempDir,
    /// Unmanaged containers the test created, removed on drop.
    pub extra_containers: Vec<String>,
}

impl Fixture {
    pub fn new(prefix: &str) -> Self {
        init_logging();
        require_docker();
        let service = unique(prefix);
        Fixture {
            network: format!("{service}-net"),
            service,
            dir: tempfile::tempdir().expect("tempdir"),
            extra_containers: Vec::new(),
        }
    }

    pub fn spec_path(&self) -> PathBuf {
        self.dir.path().join("service.yaml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Where this fixture's controllers claim the engine.
    pub fn lock_dir(&self) -> PathBuf {
        self.dir.path().join("lock")
    }

    /// A worker-pool spec (no load balancer) for this fixture's service.
    pub fn pool_spec(&self, replicas: u32) -> String {
        format!(
            r#"apiVersion: dockscale/v1alpha1
kind: ScaledService
metadata:
  name: {svc}
spec:
  replicas: {replicas}
  network: {net}
  template:
    image: {WEBAPP_IMAGE}
    imagePullPolicy: Never
    port: 8080
    env: {{GREETING: hello}}
    resources: {{memory: 32Mi, cpus: 0.25}}
    stopGracePeriod: 5s
"#,
            svc = self.service,
            net = self.network,
        )
    }

    /// Writes the spec the way editors do: a temporary file renamed over the old one.
    pub fn write_spec(&self, text: &str) {
        write_atomically(&self.spec_path(), text).expect("write the spec");
    }

    /// The service's containers, any state.
    pub fn containers(&self) -> Vec<Container> {
        let label = format!("label=dockscale.service={}", self.service);
        sh(
            "docker",
            &[
                "ps",
                "-a",
                "--no-trunc",
                "--filter",
                &label,
                "--format",
                "{{.ID}}|{{.Names}}|{{.State}}|{{.Label \"dockscale.created-at\"}}|\
                 {{.Label \"dockscale.template-hash\"}}",
            ],
        )
        .lines()
        .filter_map(|l| {
            // Split on `|`, so that a missing label is an empty field.
            let mut parts = l.split('|');
            Some(Container {
                id: parts.next()?.to_owned(),
                name: parts.next()?.to_owned(),
                state: parts.next()?.to_owned(),
                created_at_ns: parts.next()?.parse().ok(),
                template_hash: parts.next().unwrap_or_default().to_owned(),
            })
        })
        .collect()
    }

    pub fn running(&self) -> Vec<Container> {
        self.containers()
            .into_iter()
            .filter(|c| c.state == "running")
            .collect()
    }

    /// Runs an unmanaged container (no dockscale labels), removed on drop.
    pub fn run_unmanaged(&mut self, name: &str) -> String {
        let id = sh(
            "docker",
            &["run", "-d", "--init", "--name", name, WEBAPP_IMAGE],
        )
        .trim()
        .to_owned();
        self.extra_containers.push(name.to_owned());
        id
    }

    /// `dockscale run` arguments for this fixture.
    pub fn run_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "dockscale".to_owned(),
            "run".to_owned(),
            self.spec_path().display().to_string(),
            "--state-dir".to_owned(),
            self.state_dir().display().to_string(),
            "--listen".to_owned(),
            format!("127.0.0.1:{}", free_port()),
            // Tests run side by side on one engine: each claims it in its own directory
            // (a shared one would let only one of them act).
            "--lock-dir".to_owned(),
            self.lock_dir().display().to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = remove_by_label(&format!("dockscale.service={}", self.service));
        for name in &self.extra_containers {
            let _ = sh_quiet("docker", &["rm", "-f", name]);
        }
        if let Err(e) = remove_network(&self.network) {
            eprintln!("leftover network {}: {e}", self.network);
        }
    }
}

/// Removes a Docker network, waiting (up to 10 s) for the engine to release the last
/// endpoints of containers just removed; one that is already gone is not an error.
pub fn remove_network(network: &str) -> Result<(), ShError> {
    let mut last = None;
    for _ in 0..40 {
        match try_sh("docker", &["network", "rm", network]) {
            Ok(_) => return Ok(()),
            // "No such network", or "network NAME not found" (as engines 20.10 say).
            Err(ShError::Failed { stderr, .. })
                if stderr.contains("No such network") || stderr.contains("not found") =>
            {
                return Ok(())
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    last.map_or(Ok(()), Err)
}

/// Writes a file the way editors do: a temporary file beside it, renamed over it.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", rand::rng().random::<u32>()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// `dockscale run` in-process, stopped on drop.
pub struct RunningController {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), dockscale::app::AppError>>>,
    pub listen: SocketAddr,
}

impl RunningController {
    /// Starts `dockscale run` with these command-line arguments (as [`Fixture::run_args`]).
    pub fn start(args: &[String]) -> Self {
        let cli = Cli::try_parse_from(args).expect("valid run arguments");
        let CliCommand::Run(run) = cli.command else {
            panic!("not a run command");
        };
        let listen = run.listen;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(dockscale::app::run(
            run,
            async move {
                let _ = stopped.await;
            },
            futures::stream::pending(),
        ));
        RunningController {
            stop: Some(stop),
            task: Some(task),
            listen,
        }
    }

    /// Stops the controller (as Ctrl-C would) and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(Duration::from_secs(15), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => panic!("dockscale run failed: {e}"),
                Ok(Err(e)) => panic!("dockscale run panicked: {e}"),
                Err(_) => panic!("dockscale run did not stop within 15s"),
            }
        }
    }

    /// Whether the controller task ended (it should not, until stopped).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits until the controller's HTTP server accepts connections.
    pub async fn wait_listening(&self) {
        let what = format!("dockscale to listen on {}", self.listen);
        wait_listening(self.listen, &what, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// GETs a path of the controller's HTTP server.
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.listen, path).await
    }

    /// POSTs to a path of the controller's HTTP server (a write endpoint) with this
    /// `Authorization` header: its status code and body.
    pub async fn post(&self, path: &str, auth: Option<&str>) -> (u16, String) {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client");
        let mut request = client.post(format!("http://{}{path}", self.listen));
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let response = request.send().await.expect("the controller answers");
        let code = response.status().as_u16();
        (code, response.text().await.unwrap_or_default())
    }

    /// A service's status from the API, or `None` while it has none yet (its first
    /// pass has not reported). A 200 must be a status.
    pub async fn try_service_status(&self, name: &str) -> Option<serde_json::Value> {
        let (code, body) = self.get(&format!("/api/v1/services/{name}")).await;
        (code == 200).then(|| serde_json::from_str(&body).expect("status JSON"))
    }

    /// A service's status from the API (`/api/v1/services/{name}`), which must answer.
    pub async fn service_status(&self, name: &str) -> serde_json::Value {
        let (code, body) = self.get(&format!("/api/v1/services/{name}")).await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }
}

impl Drop for RunningController {
    /// On a test's panic: stop the controller and wait for it (bounded), so that
    /// nothing it was starting (an HAProxy) outlives the fixture's cleanup.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let multi_thread = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            if multi_thread {
                let _ = block(tokio::time::timeout(Duration::from_secs(15), task));
            } else {
                task.abort();
            }
        }
    }
}

/// A minimal HTTP/1.1 GET over a fresh connection: status and body; panics when the
/// connection fails.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// An HTTP/1.1 GET with a `Host` header: status, headers and body.
pub async fn get_host(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> std::io::Result<(u16, String, String)> {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// A minimal HTTP/1.1 GET over a fresh connection: status and body, or the I/O error.
pub async fn try_http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let (status, _, body) = get_with_cookies(addr, path, &BTreeMap::new()).await?;
    Ok((status, body))
}

/// An HTTP/1.1 GET with cookies: status, `Set-Cookie` name=value pairs and body.
pub async fn get_with_cookies(
    addr: SocketAddr,
    path: &str,
    cookies: &BTreeMap<String, String>,
) -> std::io::Result<(u16, BTreeMap<String, String>, String)> {
    let cookie_header = if cookies.is_empty() {
        String::new()
    } else {
        let pairs: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("Cookie: {}\r\n", pairs.join("; "))
    };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie_header}Connection: close\r\n\r\n");
    let (status, head, body) = exchange(addr, &request).await?;
    let set = head
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            if !name.eq_ignore_ascii_case("set-cookie") {
                return None;
            }
            let pair = value.trim().split(';').next()?;
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    Ok((status, set, body))
}

/// One request on a fresh connection that the server closes after its answer: the
/// status (0 when the answer has none), the head and the body.
async fn exchange(addr: SocketAddr, request: &str) -> std::io::Result<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_owned(), body.to_owned()))
}

/// A service's events (from its status JSON) with this reason, oldest first: their
/// messages.
pub fn events(status: &serde_json::Value, reason: &str) -> Vec<String> {
    status["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["reason"] == reason)
                .filter_map(|e| e["message"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The template hash a container is labelled with (`dockscale.template-hash`).
pub fn template_hash(id: &str) -> String {
    sh(
        "docker",
        &[
            "inspect",
            "--format",
            "{{index .Config.Labels \"dockscale.template-hash\"}}",
            id,
        ],
    )
    .trim()
    .to_owned()
}

/// A wait that ran out of time: what was awaited, how long, and the last observation.
#[derive(Debug)]
pub struct TimedOut<O> {
    pub what: String,
    pub timeout: Duration,
    pub last: O,
}

impl<O: std::fmt::Debug> std::fmt::Display for TimedOut<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}; last seen: {:?}",
            self.timeout, self.what, self.last
        )
    }
}

impl<O: std::fmt::Debug> std::error::Error for TimedOut<O> {}

/// Awaits `check` every `every` until it returns `Ok`: its value and the time it
/// took; or, once `timeout` has passed, [`TimedOut`] with the last `Err` seen.
pub async fn wait_until<T, O, F>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> F,
) -> Result<(T, Duration), TimedOut<O>>
where
    F: std::future::Future<Output = Result<T, O>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return Ok((v, start.elapsed())),
            Err(last) if start.elapsed() > timeout => {
                return Err(TimedOut {
                    what: what.to_owned(),
                    timeout,
                    last,
                })
            }
            Err(_) => {}
        }
        tokio::time::sleep(every).await;
    }
}

/// Calls `check` every 100ms until it returns `Ok`: its value and the time it took; or
/// panics after `timeout` with `what` and the last `Err` (the observation). `check` is
/// synchronous: it awaits what it reads through [`block`].
pub async fn wait_for<T, O: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, O>,
) -> (T, Duration) {
    wait_until(what, timeout, Duration::from_millis(100), || {
        std::future::ready(check())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until `addr` accepts TCP connections (tried every 25 ms): the time it took.
pub async fn wait_listening(
    addr: SocketAddr,
    what: &str,
    timeout: Duration,
) -> Result<Duration, TimedOut<std::io::Error>> {
    let every = Duration::from_millis(25);
    let connect = move || async move { tokio::net::TcpStream::connect(addr).await.map(drop) };
    let ((), took) = wait_until(what, timeout, every, connect).await?;
    Ok(took)
}
