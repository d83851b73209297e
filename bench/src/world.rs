//! What the benchmarks run on: a network, dockscale processes, plain HAProxy
//! processes for the baselines and containers, all tagged with one run id and removed
//! on the way out. Commands, ports, HTTP, waits and HAProxy teardown are the e2e
//! suite's kit ([`dockscale_e2e`]), in its `Result`-returning forms.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use dockscale::lb::haproxy::runtime_api::{Endpoint, RuntimeApi};
use dockscale_e2e::haproxy::{end_haproxy, wait_answering};
use dockscale_e2e::{
    free_port, remove_by_label, remove_network, try_http_get, try_sh, unique, wait_listening,
    wait_until, write_atomically, ShError, WEBAPP_IMAGE as IMAGE,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How often the benchmarks look at what they wait for (the precision of their times).
pub const POLL: Duration = Duration::from_millis(20);

/// For [`wait_until`]: done once `seen` is `wanted`, else what was seen.
pub fn reached<T: PartialEq>(seen: T, wanted: T) -> Result<(), T> {
    if seen == wanted {
        Ok(())
    } else {
        Err(seen)
    }
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
        let id = unique("bench");
        let docker = bollard::Docker::connect_with_defaults()?
            .negotiate_version()
            .await?;
        let network = format!("{id}-net");
        try_sh("docker", &["network", "create", &network])?;
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
        let what = format!("dockscale to listen on {listen}");
        wait_listening(listen, &what, Duration::from_secs(20))
            .await
            .with_context(|| format!("see {}", dir.join("dockscale.log").display()))?;
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
        Ok(try_sh(
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
        Ok(try_sh("docker", &["inspect", "--format", &format, name])?
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
        if let Err(e) = remove_network(&self.network) {
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
                "  loadBalancer:
    backend: {}
    bind: {bind}
    server: {{check: true, maxconn: {}, weight: 100}}
    drainTimeout: 5s
",
                self.backend(),
                s.maxconn
            ),
            None => String::new(),
        };
        let text = format!(
            "apiVersion: dockscale/v1alpha1
kind: ScaledService
metadata:
  name: {svc}
spec:
  replicas: {replicas}
  network: {net}
  template:
    image: {IMAGE}
    imagePullPolicy: Never
    port: 8080
    resources: {{memory: {mem}}}
    stopGracePeriod: 5s
{lb}{extra}",
            svc = self.service,
            net = self.network,
            mem = s.memory,
            extra = s.extra,
        );
        write_atomically(&self.spec_path, &text)
            .with_context(|| format!("writing {}", self.spec_path.display()))
    }

    /// Waits until `n` servers are in rotation and UP: the time it took.
    pub async fn wait_serving(&self, n: usize, timeout: Duration) -> anyhow::Result<Duration> {
        let serving = || async { reached(self.serving().await, n) };
        let (_, took) = wait_until(&format!("{n} serving"), timeout, POLL, serving).await?;
        Ok(took)
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
        match try_http_get(self.listen, &url).await {
            Ok((_, body)) => serde_json::from_str(&body).unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        }
    }

    /// Running containers of the service.
    pub fn running(&self) -> usize {
        running(&format!("label=dockscale.service={}", self.service)).unwrap_or(0)
    }
}

/// How many running containers `docker ps --filter <filter>` lists.
pub fn running(filter: &str) -> Result<usize, ShError> {
    let ids = try_sh("docker", &["ps", "-q", "--filter", filter])?;
    Ok(ids.split_whitespace().count())
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
            "global
    master-worker
    stats socket {dir}/admin.sock mode 600 level admin expose-fd listeners
    pidfile {dir}/haproxy.pid
defaults
    mode http
    timeout connect 500ms
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
frontend fe
    bind {bind}
    default_backend be
backend be
    balance roundrobin
",
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
        try_sh("haproxy", &["-c", "-q", "-f", &path.display().to_string()])?;
        Ok(path)
    }

    pub async fn start(&self, servers: &[(String, String)]) -> anyhow::Result<()> {
        let path = self.write(servers)?;
        try_sh("haproxy", &["-D", "-f", &path.display().to_string()])?;
        wait_answering(&self.api(), "the baseline HAProxy to answer").await?;
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

/// `hey` sending GETs of `path` through `bind` from `concurrency` clients for `secs`
/// seconds, its report on stdout (read it with `wait_with_output`).
pub fn start_hey(
    bind: std::net::SocketAddr,
    secs: u64,
    concurrency: usize,
    path: &str,
) -> anyhow::Result<std::process::Child> {
    use anyhow::Context as _;
    std::process::Command::new("hey")
        .args([
            "-z",
            &format!("{secs}s"),
            "-c",
            &concurrency.to_string(),
            &format!("http://{bind}{path}"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting hey (apt-get install hey)")
}
