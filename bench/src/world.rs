//! What the benchmarks run on: a network, dockscale processes, plain HAProxy
//! processes for the baselines and containers, all tagged with one run id and removed
//! on the way out.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dockscale::lb::haproxy::runtime_api::{Endpoint, RuntimeApi};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;

pub const IMAGE: &str = "dockscale-webapp:latest";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Runs a command; its stdout, or an error with its stderr.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub struct World {
    pub id: String,
    pub dir: tempfile::TempDir,
    pub docker: bollard::Docker,
    pub network: String,
    bin: PathBuf,
    children: Vec<Child>,
    pidfiles: Vec<(PathBuf, PathBuf)>,
    services: Vec<String>,
}

impl World {
    pub async fn new(bin: &Path) -> anyhow::Result<Self> {
        if !bin.exists() {
            bail!(
                "{} is missing: build it with `cargo build --release -p dockscale`",
                bin.display()
            );
        }
        let suffix: String = (0..5)
            .map(|_| char::from(b'a' + rand::rng().random_range(0..26u8)))
            .collect();
        let id = format!("bench-{suffix}");
        let docker = bollard::Docker::connect_with_defaults()?
            .negotiate_version()
            .await?;
        let network = format!("{id}-net");
        sh("docker", &["network", "create", &network])?;
        Ok(World {
            id,
            dir: tempfile::tempdir()?,
            docker,
            network,
            bin: bin.to_owned(),
            children: Vec::new(),
            pidfiles: Vec::new(),
            services: Vec::new(),
        })
    }

    /// A service name of this run.
    pub fn service(&mut self, what: &str) -> String {
        let name = format!("{}-{what}", self.id);
        self.services.push(name.clone());
        name
    }

    /// Starts `dockscale run` on a spec of one service.
    pub async fn dockscale(&mut self, service: &str, spec: Spec) -> anyhow::Result<Dockscale> {
        let dir = self.dir.path().join(service);
        std::fs::create_dir_all(&dir)?;
        let spec_path = dir.join("spec.yaml");
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let exporter = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let d = Dockscale {
            service: service.to_owned(),
            spec,
            spec_path,
            state_dir: dir.join("state"),
            listen,
            pid: 0,
            network: self.network.clone(),
        };
        d.set_replicas(d.spec.replicas)?;
        let log = std::fs::File::create(dir.join("dockscale.log"))?;
        let child = Command::new(&self.bin)
            .arg("run")
            .arg(&d.spec_path)
            .arg("--state-dir")
            .arg(&d.state_dir)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--haproxy-exporter")
            .arg(exporter.to_string())
            // Several controllers of one run may drive the engine at once, each its own
            // services: each claims the engine in a directory of its own.
            .arg("--lock-dir")
            .arg(dir.join("lock"))
            .args(&d.spec.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting dockscale")?;
        let mut d = d;
        d.pid = child.id();
        self.children.push(child);
        self.pidfiles
            .push((d.state_dir.join("haproxy.pid"), d.state_dir.clone()));
        let start = Instant::now();
        while tokio::net::TcpStream::connect(listen).await.is_err() {
            if start.elapsed() > Duration::from_secs(20) {
                bail!(
                    "dockscale did not listen on {listen}; see {}",
                    dir.join("dockscale.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(d)
    }

    /// Ends a dockscale (SIGTERM, by pid) and its managed HAProxy.
    pub fn stop_dockscale(&mut self, d: &Dockscale) {
        let _ = kill(Pid::from_raw(d.pid as i32), Signal::SIGTERM);
        if let Some(child) = self.children.iter_mut().find(|c| c.id() == d.pid) {
            let _ = child.wait();
        }
        end_haproxy(&d.state_dir.join("haproxy.pid"), &d.state_dir);
        let _ = remove_by_label(&format!("dockscale.service={}", d.service));
    }

    /// `docker run` of the demo image on the run's network, tagged with the run id.
    pub fn run_container(&self, name: &str) -> anyhow::Result<String> {
        let label = format!("dockscale-bench.run={}", self.id);
        Ok(sh(
            "docker",
            &[
                "run",
                "-d",
                "--init",
                "--name",
                name,
                "--network",
                &self.network,
                "--label",
                &label,
                "--memory",
                "32m",
                IMAGE,
            ],
        )?
        .trim()
        .to_owned())
    }

    pub fn container_ip(&self, name: &str) -> anyhow::Result<String> {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.network
        );
        Ok(sh("docker", &["inspect", "--format", &format, name])?
            .trim()
            .to_owned())
    }

    pub fn track_pidfile(&mut self, pidfile: PathBuf, marker: PathBuf) {
        self.pidfiles.push((pidfile, marker));
    }

    /// Ends every process and removes every container and the network of the run.
    pub fn cleanup(&mut self) {
        for child in &mut self.children {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let _ = child.wait();
        }
        self.children.clear();
        for (pidfile, marker) in self.pidfiles.drain(..) {
            end_haproxy(&pidfile, &marker);
        }
        for s in self.services.drain(..) {
            let _ = remove_by_label(&format!("dockscale.service={s}"));
        }
        let _ = remove_by_label(&format!("dockscale-bench.run={}", self.id));
        // The engine may still be releasing the last endpoints of removed containers.
        let mut last = None;
        for _ in 0..40 {
            match sh("docker", &["network", "rm", &self.network]) {
                Ok(_) => return,
                Err(e) if e.to_string().contains("No such network") => return,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        if let Some(e) = last {
            eprintln!("leftover network {}: {e:#}", self.network);
        }
    }
}

impl Drop for World {
    /// On an error path too.
    fn drop(&mut self) {
        if !self.children.is_empty() || !self.services.is_empty() || !self.pidfiles.is_empty() {
            self.cleanup();
        }
    }
}

pub fn remove_by_label(label: &str) -> anyhow::Result<()> {
    let ids = sh(
        "docker",
        &["ps", "-aq", "--filter", &format!("label={label}")],
    )?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids);
        sh("docker", &args)?;
    }
    Ok(())
}

/// Ends the HAProxy master named by `pidfile` if its command line names `marker`,
/// and waits until it is gone (a SIGTERM that lands during a reload is lost: it is
/// sent again).
pub fn end_haproxy(pidfile: &Path, marker: &Path) {
    let Some(pid) = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
    else {
        return;
    };
    let ours = || {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z'));
        !zombie
            && cmdline.contains("haproxy")
            && cmdline.contains(marker.to_string_lossy().as_ref())
    };
    for _ in 0..20 {
        if !ours() {
            return;
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The spec of a benchmarked service.
#[derive(Clone, Debug)]
pub struct Spec {
    pub replicas: u32,
    /// A load balancer on this bind address, with this server maxconn.
    pub bind: Option<SocketAddr>,
    pub maxconn: u32,
    /// YAML appended under `spec:` (autoscale).
    pub extra: String,
    pub extra_args: Vec<String>,
    pub memory: &'static str,
}

impl Spec {
    pub fn lb(replicas: u32) -> Self {
        Spec {
            replicas,
            bind: Some(SocketAddr::from(([127, 0, 0, 1], free_port()))),
            maxconn: 64,
            extra: String::new(),
            extra_args: Vec::new(),
            memory: "32Mi",
        }
    }

    pub fn pool(replicas: u32) -> Self {
        Spec {
            bind: None,
            ..Spec::lb(replicas)
        }
    }
}

pub struct Dockscale {
    pub service: String,
    pub spec: Spec,
    pub spec_path: PathBuf,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub pid: u32,
    network: String,
}

impl Dockscale {
    pub fn backend(&self) -> String {
        format!("{}-be", self.service)
    }

    pub fn bind(&self) -> Option<SocketAddr> {
        self.spec.bind
    }

    pub fn api(&self) -> RuntimeApi {
        RuntimeApi::new(Endpoint::Unix(self.state_dir.join("haproxy.sock")))
    }

    /// Writes the spec with `replicas`, atomically (as editors do).
    pub fn set_replicas(&self, replicas: u32) -> anyhow::Result<()> {
        let s = &self.spec;
        let lb = match s.bind {
            Some(bind) => format!(
                "  loadBalancer:\n    backend: {}\n    bind: {bind}\n    server: {{check: true, maxconn: {}, weight: 100}}\n    drainTimeout: 5s\n",
                self.backend(),
                s.maxconn
            ),
            None => String::new(),
        };
        let text = format!(
            "apiVersion: dockscale/v1alpha1\nkind: ScaledService\nmetadata:\n  name: {svc}\nspec:\n  replicas: {replicas}\n  network: {net}\n  template:\n    image: {IMAGE}\n    port: 8080\n    resources: {{memory: {mem}}}\n    stopGracePeriod: 5s\n{lb}{extra}",
            svc = self.service,
            net = self.network,
            mem = s.memory,
            extra = s.extra,
        );
        let tmp = self.spec_path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.spec_path)?;
        Ok(())
    }

    /// Servers in rotation and UP.
    pub async fn serving(&self) -> usize {
        match self.api().servers_state(&self.backend()).await {
            Ok(servers) => servers
                .iter()
                .filter(|s| s.running() && !s.draining() && !s.addr.is_unspecified())
                .count(),
            Err(_) => 0,
        }
    }

    /// The status API's JSON for the service.
    pub async fn status(&self) -> serde_json::Value {
        let url = format!("/api/v1/services/{}", self.service);
        match http_get(self.listen, &url).await {
            Some(body) => serde_json::from_str(&body).unwrap_or_default(),
            None => serde_json::Value::Null,
        }
    }

    /// Running containers of the service.
    pub fn running(&self) -> usize {
        sh(
            "docker",
            &[
                "ps",
                "-q",
                "--filter",
                &format!("label=dockscale.service={}", self.service),
            ],
        )
        .map(|o| o.split_whitespace().count())
        .unwrap_or(0)
    }
}

/// A bare HTTP GET over a fresh connection; the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// A plain HAProxy for the baselines, its configuration written from a template and
/// reloaded the classic way (`kill -USR2` to the master).
pub struct PlainHaproxy {
    pub dir: PathBuf,
    pub bind: SocketAddr,
    pub check: &'static str,
}

impl PlainHaproxy {
    pub fn new(world: &mut World, name: &str, check: &'static str) -> anyhow::Result<Self> {
        let dir = world.dir.path().join(name);
        std::fs::create_dir_all(&dir)?;
        world.track_pidfile(dir.join("haproxy.pid"), dir.clone());
        Ok(PlainHaproxy {
            dir,
            bind: SocketAddr::from(([127, 0, 0, 1], free_port())),
            check,
        })
    }

    pub fn api(&self) -> RuntimeApi {
        RuntimeApi::new(Endpoint::Unix(self.dir.join("admin.sock")))
    }

    fn config(&self, servers: &[(String, String)]) -> String {
        let mut text = format!(
            "global\n    master-worker\n    stats socket {dir}/admin.sock mode 600 level admin expose-fd listeners\n    pidfile {dir}/haproxy.pid\n\
             defaults\n    mode http\n    timeout connect 500ms\n    timeout client 30s\n    timeout server 30s\n    retries 3\n    option redispatch 1\n    retry-on conn-failure empty-response response-timeout\n\
             frontend fe\n    bind {bind}\n    default_backend be\n\
             backend be\n    balance roundrobin\n",
            dir = self.dir.display(),
            bind = self.bind
        );
        for (name, ip) in servers {
            text.push_str(&format!("    server {name} {ip}:8080 {}\n", self.check));
        }
        text
    }

    fn write(&self, servers: &[(String, String)]) -> anyhow::Result<PathBuf> {
        let path = self.dir.join("haproxy.cfg");
        std::fs::write(&path, self.config(servers))?;
        sh("haproxy", &["-c", "-q", "-f", &path.display().to_string()])?;
        Ok(path)
    }

    pub async fn start(&self, servers: &[(String, String)]) -> anyhow::Result<()> {
        let path = self.write(servers)?;
        sh("haproxy", &["-D", "-f", &path.display().to_string()])?;
        let start = Instant::now();
        while self.api().info().await.is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("the baseline HAProxy did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Regenerates the configuration and reloads, as a template-and-reload setup does.
    pub fn reload(&self, servers: &[(String, String)]) -> anyhow::Result<()> {
        self.write(servers)?;
        let pid: i32 = std::fs::read_to_string(self.dir.join("haproxy.pid"))?
            .trim()
            .parse()?;
        kill(Pid::from_raw(pid), Signal::SIGUSR2)?;
        Ok(())
    }

    pub fn stop(&self) {
        end_haproxy(&self.dir.join("haproxy.pid"), &self.dir);
    }
}
