//! HAProxy support for the end-to-end tests: a fixture with its own frontend and
//! exporter ports whose managed HAProxy is ended (by the pid it wrote) on drop, an
//! external HAProxy the test starts itself, the runtime API as the tests read it, and
//! a bounded load generator that counts every failed request.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dockscale::lb::haproxy::runtime_api::{ApiError, Endpoint, RuntimeApi};
use dockscale::lb::haproxy::stats::ServerState;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{free_port, get_with_cookies, wait_until, Fixture, TimedOut, WEBAPP_IMAGE};

/// Fails the test when HAProxy is missing.
pub fn require_haproxy() {
    match Command::new("haproxy").arg("-v").output() {
        Ok(out) if out.status.success() => {}
        _ => panic!("haproxy is missing (these tests need it): apt-get install haproxy"),
    }
}

/// A fixture whose service has a load balancer on its own loopback port.
pub struct LbFixture {
    pub base: Fixture,
    pub bind: SocketAddr,
    pub exporter: SocketAddr,
    pub backend: String,
}

impl std::ops::Deref for LbFixture {
    type Target = Fixture;
    fn deref(&self) -> &Fixture {
        &self.base
    }
}

impl std::ops::DerefMut for LbFixture {
    fn deref_mut(&mut self) -> &mut Fixture {
        &mut self.base
    }
}

impl LbFixture {
    pub fn new(prefix: &str) -> Self {
        let base = Fixture::new(prefix);
        require_haproxy();
        let backend = format!("{}-be", base.service);
        LbFixture {
            base,
            bind: SocketAddr::from(([127, 0, 0, 1], free_port())),
            exporter: SocketAddr::from(([127, 0, 0, 1], free_port())),
            backend,
        }
    }

    /// A spec with a load balancer; `extra` is appended under `spec:` (indented 2).
    pub fn lb_spec(&self, replicas: u32, env: &str, extra: &str) -> String {
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
    env: {{GREETING: "{env}"}}
    resources: {{memory: 32Mi, cpus: 0.25}}
    stopGracePeriod: 5s
  loadBalancer:
    backend: {backend}
    bind: {bind}
    server: {{check: true, maxconn: 32, weight: 100}}
    drainTimeout: 5s
{extra}"#,
            svc = self.service,
            net = self.network,
            backend = self.backend,
            bind = self.bind,
        )
    }

    /// `dockscale run` arguments with this fixture's exporter port.
    pub fn lb_run_args(&self, extra: &[&str]) -> Vec<String> {
        let exporter = self.exporter.to_string();
        let mut all = vec!["--haproxy-exporter", exporter.as_str()];
        all.extend_from_slice(extra);
        self.run_args(&all)
    }

    pub fn api(&self) -> RuntimeApi {
        RuntimeApi::new(Endpoint::Unix(self.state_dir().join("haproxy.sock")))
    }

    /// The managed HAProxy master's pid, from its pid file.
    pub fn master_pid(&self) -> Option<i32> {
        read_pid(&self.state_dir().join("haproxy.pid"))
    }

    /// The running replicas' addresses on the service network, by container name.
    pub fn replica_addrs(&self) -> BTreeMap<String, SocketAddrV4> {
        let running: std::collections::BTreeSet<String> =
            self.running().into_iter().map(|c| c.name).collect();
        let format = "{{range .Containers}}{{.Name}} {{.IPv4Address}}\n{{end}}";
        let listing = crate::sh_quiet(
            "docker",
            &["network", "inspect", &self.network, "--format", format],
        )
        .unwrap_or_default();
        listing
            .lines()
            .filter_map(|l| {
                let (name, cidr) = l.split_once(' ')?;
                let ip = cidr.split('/').next()?.parse().ok()?;
                running
                    .contains(name)
                    .then(|| (name.to_owned(), SocketAddrV4::new(ip, 8080)))
            })
            .collect()
    }

    /// The servers taking new requests (UP, neither draining nor in maintenance) and
    /// their weights; none while HAProxy does not answer.
    pub async fn taking_requests(&self) -> BTreeMap<SocketAddrV4, u32> {
        let servers = self
            .api()
            .servers_state(&self.backend)
            .await
            .unwrap_or_default();
        servers
            .iter()
            .filter(|s| s.running() && !s.draining())
            .map(|s| (SocketAddrV4::new(s.addr, s.port), s.user_weight))
            .collect()
    }

    /// Waits (up to 60 s) until `n` replicas run and `n` servers take new requests;
    /// panics with the last counts.
    pub async fn serving(&self, n: usize) {
        crate::wait_for("replicas serving", Duration::from_secs(60), || {
            let up = crate::block(self.taking_requests()).len();
            let running = self.running().len();
            if up == n && running == n {
                Ok(())
            } else {
                Err((up, running))
            }
        })
        .await;
    }
}

impl Drop for LbFixture {
    fn drop(&mut self) {
        let pidfile = self.state_dir().join("haproxy.pid");
        end_haproxy(&pidfile, &self.state_dir());
    }
}

/// A process and its children (an HAProxy master and its workers), from /proc.
pub fn with_children(pid: i32) -> Vec<i32> {
    std::iter::once(pid).chain(children_of(pid)).collect()
}

/// The pids whose parent is `parent`, from /proc.
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(") ")?;
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// The pid a pid file holds.
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A process's command line, its arguments separated by NULs (empty once it is gone).
pub fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).into_owned()
}

/// Whether `pid` is an HAProxy whose command line names `marker` (its directory):
/// never a pid that was reused by another program.
pub fn is_haproxy_of(pid: i32, marker: &Path) -> bool {
    let cmdline = cmdline(pid);
    cmdline.contains("haproxy") && cmdline.contains(marker.to_string_lossy().as_ref())
}

fn is_zombie(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z'))
}

/// Ends the HAProxy master named by `pidfile` (its workers follow), only while its
/// command line names `marker` (see [`is_haproxy_of`]), and waits until it is gone: a
/// SIGTERM that lands during a reload is lost, so it is sent again.
pub fn end_haproxy(pidfile: &Path, marker: &Path) {
    let Some(pid) = read_pid(pidfile) else {
        return;
    };
    for _ in 0..20 {
        if is_zombie(pid) || !is_haproxy_of(pid, marker) {
            return;
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits (10 s at most) until a freshly started HAProxy answers on its runtime API.
pub async fn wait_answering(api: &RuntimeApi, what: &str) -> Result<Duration, TimedOut<ApiError>> {
    let answers = || async { api.info().await.map(drop) };
    let every = Duration::from_millis(50);
    let ((), took) = wait_until(what, Duration::from_secs(10), every, answers).await?;
    Ok(took)
}

/// Requests queued in `backend` (its `qcur`), 0 when HAProxy does not say.
pub async fn backend_qcur(api: &RuntimeApi, backend: &str) -> u64 {
    let Ok(servers) = api.servers_state(backend).await else {
        return 0;
    };
    let id = servers.first().map_or(0, |s| s.backend_id);
    api.stat(id)
        .await
        .ok()
        .and_then(|rows| rows.into_iter().find(|r| r.is_backend()))
        .and_then(|r| r.qcur)
        .unwrap_or(0)
}

/// Servers of a backend as `show servers state` reports them.
pub async fn servers(api: &RuntimeApi, backend: &str) -> Vec<ServerState> {
    api.servers_state(backend)
        .await
        .unwrap_or_else(|e| panic!("show servers state {backend}: {e}"))
}

/// The addresses of the servers in rotation (not in maintenance), and whether each
/// is UP.
pub fn in_rotation(servers: &[ServerState]) -> BTreeMap<SocketAddrV4, bool> {
    servers
        .iter()
        .filter(|s| !s.in_maintenance())
        .map(|s| (SocketAddrV4::new(s.addr, s.port), s.running()))
        .collect()
}

/// The `hostname:` line of a demo reply.
pub fn hostname_of(body: &str) -> Option<String> {
    body.lines()
        .find_map(|l| l.strip_prefix("hostname: "))
        .map(str::to_owned)
}

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    /// The first failures, for the test output.
    pub failures: Vec<String>,
    pub elapsed: Duration,
}

/// A bounded load: `workers` concurrent clients sending GETs through `addr` until
/// stopped or `limit` passed, whichever is first.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    failures: Arc<Mutex<(u64, Vec<String>)>>,
    started: Instant,
}

impl Load {
    pub fn start(addr: SocketAddr, path: &str, workers: usize, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new((0u64, Vec::new())));
        let started = Instant::now();
        let handles = (0..workers)
            .map(|_| {
                let (stop, ok, failures, path) =
                    (stop.clone(), ok.clone(), failures.clone(), path.to_owned());
                tokio::spawn(async move {
                    let none = BTreeMap::new();
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                        match get_with_cookies(addr, &path, &none).await {
                            Ok((200, _, _)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                let mut f = failures.lock().expect("lock");
                                f.0 += 1;
                                if f.1.len() < 10 {
                                    let what = match other {
                                        Ok((status, _, body)) => format!(
                                            "{:?}: HTTP {status} {}",
                                            started.elapsed(),
                                            body.lines().next().unwrap_or("")
                                        ),
                                        Err(e) => format!("{:?}: {e}", started.elapsed()),
                                    };
                                    f.1.push(what);
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            handles,
            failures,
            started,
        }
    }

    /// Successful requests so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the load, prints its figures as `what`, and asserts that it ran and that
    /// no request failed.
    pub async fn finish_without_failures(self, what: &str) -> LoadReport {
        let report = self.finish().await;
        println!(
            "{what}: {} ok, {} failed in {:?}; first failures: {:?}",
            report.ok, report.failed, report.elapsed, report.failures
        );
        assert!(report.ok > 100, "{what}: the load ran: {report:?}");
        assert_eq!(
            report.failed, 0,
            "{what}: failed requests: {:?}",
            report.failures
        );
        report
    }

    pub async fn finish(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for h in std::mem::take(&mut self.handles) {
            let _ = h.await;
        }
        let f = self.failures.lock().expect("lock").clone();
        LoadReport {
            ok: self.ok.load(Ordering::Relaxed),
            failed: f.0,
            failures: f.1,
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in &self.handles {
            h.abort();
        }
    }
}

/// A user's own HAProxy configuration for external mode: a frontend on `bind` and
/// `backend` with 8 free `slotN` servers (`{dir}` is the HAProxy's own directory).
pub fn external_config(bind: SocketAddr, backend: &str) -> String {
    format!(
        "global
    master-worker
    stats socket {{dir}}/admin.sock mode 600 level admin
defaults
    mode http
    timeout connect 500ms
    timeout client 10s
    timeout server 10s
    retries 3
    option redispatch 1
frontend web
    bind {bind}
    default_backend {backend}
backend {backend}
    balance roundrobin
    server-template slot 1-8 0.0.0.0:8080 disabled weight 0 check inter 1s fall 2 rise 2
"
    )
}

/// An HAProxy the test starts itself from a configuration file (external mode),
/// ended by pid on drop.
pub struct ExternalHaproxy {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pidfile: PathBuf,
}

impl ExternalHaproxy {
    /// Starts `haproxy -D` with `config`, where `{dir}` is replaced by its directory.
    pub async fn start(config: &str) -> Self {
        require_haproxy();
        let dir = tempfile::tempdir().expect("tempdir");
        let text = config.replace("{dir}", &dir.path().display().to_string());
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, text).expect("write haproxy.cfg");
        let pidfile = dir.path().join("haproxy.pid");
        let out = Command::new("haproxy")
            .arg("-D")
            .arg("-f")
            .arg(&path)
            .arg("-p")
            .arg(&pidfile)
            .output()
            .expect("run haproxy");
        assert!(
            out.status.success(),
            "haproxy did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let socket = dir.path().join("admin.sock");
        let api = RuntimeApi::new(Endpoint::Unix(socket.clone()));
        wait_answering(&api, "the external HAProxy's socket to answer")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        ExternalHaproxy {
            dir,
            socket,
            config: path,
            pidfile,
        }
    }

    pub fn pid(&self) -> Option<i32> {
        read_pid(&self.pidfile)
    }

    pub fn api(&self) -> RuntimeApi {
        RuntimeApi::new(Endpoint::Unix(self.socket.clone()))
    }
}

impl Drop for ExternalHaproxy {
    fn drop(&mut self) {
        end_haproxy(&self.pidfile, self.dir.path());
    }
}
