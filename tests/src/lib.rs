//! Support for the end-to-end tests: a real Docker engine, a real HAProxy, dockscale's
//! own `run` in-process, and cleanup of everything a test creates, even on panic.
//!
//! Every test gets its own service name, network, ports and temporary directory, so
//! tests run in parallel without colliding. Missing Docker, HAProxy or the demo image
//! is a test failure with the command that fixes it, never a skip.

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

/// Runs a command, returning stdout; panics with stderr on failure.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`sh`], but failure is returned, not a panic (for cleanup).
pub fn sh_quiet(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
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

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A container as `docker ps` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub state: String,
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
        write_atomically(&self.spec_path(), text);
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
                "{{.ID}} {{.Names}} {{.State}}",
            ],
        )
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some(Container {
                id: parts.next()?.to_owned(),
                name: parts.next()?.to_owned(),
                state: parts.next()?.to_owned(),
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
        let label = format!("label=dockscale.service={}", self.service);
        if let Some(ids) = sh_quiet("docker", &["ps", "-aq", "--filter", &label]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = sh_quiet("docker", &args);
            }
        }
        for name in &self.extra_containers {
            let _ = sh_quiet("docker", &["rm", "-f", name]);
        }
        let _ = sh_quiet("docker", &["network", "rm", &self.network]);
    }
}

pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension(format!("tmp{}", rand::rng().random::<u32>()));
    std::fs::write(&tmp, text).expect("write spec");
    std::fs::rename(&tmp, path).expect("rename spec");
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
        let start = Instant::now();
        while tokio::net::TcpStream::connect(self.listen).await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "dockscale never listened on {}",
                self.listen
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GETs a path of the controller's HTTP server.
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.listen, path).await
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

/// A minimal HTTP/1.1 GET over a fresh connection: status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `check` every 100ms until it returns `Some`, or panics after `timeout` with
/// `what` and the last observation.
pub async fn wait_for<T, O: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, O>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return (v, start.elapsed()),
            Err(last) => {
                if start.elapsed() > timeout {
                    panic!("timed out after {timeout:?} waiting for {what}; last seen: {last:?}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
