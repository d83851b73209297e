//! A second, private Docker engine for the end-to-end tests: its own `dockerd` (with
//! the `containerd` it starts itself) in a network namespace of its own, behind a veth
//! pair, with its own data root, exec root, socket, bridge subnet, address pools,
//! containerd namespace and cgroup parent. Tests may stop, start and restart it (an
//! engine upgrade) and will later join two of them into a Swarm.
//!
//! It owns everything in one *slot* `X` (0..64), leased by an exclusive `flock` on
//! `/tmp/dockscale-e2e-netns/X.lock` for the fixture's life: the addresses
//! 198.18.X.0/24 (veth), 198.19.X.0/24 (bridge) and 100.(64+X).0.0/16 (pools), and
//! every name starting `dse{X}-`/`dse{X}h` (namespace, host link),
//! `/tmp/dockscale-e2e-engines/{X}-` (directories) or `dockscale-e2e-{X}-` (cgroups,
//! containerd namespace). Whoever holds the lease may sweep all of those away, which
//! is how a crashed run's leftovers go. It must not touch anything outside its slot:
//! the machine's own engine, its containerd, its networks, its iptables rules, other
//! slots. Processes are ended by pid, found by their network namespace, command line or
//! cgroup, never by name.

use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

use crate::{require_docker, sh_quiet, unique};

/// Where the slot leases live (one `X.lock` per slot).
const LEASE_DIR: &str = "/tmp/dockscale-e2e-netns";
/// Where each engine's directory lives: `{X}-{random}/` with `data/`, `exec/`, the
/// socket, the config file and the log. Short, because the containerd socket inside
/// must fit a unix socket path (108 bytes).
const ENGINES_DIR: &str = "/tmp/dockscale-e2e-engines";
/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/var/run/netns";
/// Where containerd 1.6 shims put their sockets (named by a hash, see
/// [`shim_sockets`]); a shim killed by SIGKILL leaves its socket behind.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// A system containerd's address: dockerd 20.10 attaches to a containerd listening
/// there rather than start its own (none does on this machine).
const SYSTEM_CONTAINERD: &str = "/run/containerd/containerd.sock";
/// Slots: 100.64.0.0/10 holds 64 pools of a /16, one per slot.
const SLOTS: u8 = 64;
/// How long a starting engine may take to answer `docker info` (here 0.3 to 1.6 s).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping engine may take before it is killed: more than dockerd's own
/// 15 s shutdown timeout for containers plus its 10 s wait for containerd.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped engine's containerd may take to follow it before it is killed.
const CONTAINERD_GRACE: Duration = Duration::from_secs(10);
/// How long the sweep waits for killed processes and deleted links to go.
const SWEEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Tools the fixture runs, with the Debian package that has each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("dockerd", "docker.io"),
];

/// How long an engine restart kept the engine from answering.
#[derive(Clone, Copy, Debug)]
pub struct Downtime {
    /// From SIGTERM until dockerd (and the containerd it started) had exited.
    pub stopping: Duration,
    /// From starting dockerd until it answered `docker info`.
    pub starting: Duration,
}

impl Downtime {
    /// The whole outage: SIGTERM until the engine answered again.
    pub fn total(&self) -> Duration {
        self.stopping + self.starting
    }
}

/// Options of a [`PrivateEngine`] before it starts.
#[derive(Clone, Debug)]
pub struct PrivateEngineBuilder {
    prefix: String,
    env: Vec<(String, String)>,
}

impl PrivateEngineBuilder {
    /// Starts dockerd with this environment variable too (on every start), e.g.
    /// `DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1` so Swarm uses the loaded image and never
    /// asks a registry.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Leases a slot, sweeps what a crashed run left in it, builds the namespace and
    /// starts the engine; returns once it answers. Panics (with the command that fixes
    /// it) when a tool, root, the machine's engine or the demo image is missing.
    pub fn start(self) -> PrivateEngine {
        require_tools();
        let lease = Lease::take();
        let stale = sweep_slot(lease.slot);
        if !stale.is_empty() {
            eprintln!(
                "private engine slot {}: a crashed run left {stale:?}",
                lease.slot
            );
        }
        let tag = unique(&lease.slot.to_string());
        let suffix = tag.rsplit('-').next().unwrap_or_default().to_owned();
        let dir = PathBuf::from(ENGINES_DIR).join(&tag);
        let mut engine = PrivateEngine {
            netns: format!("dse{}-{}-{}", lease.slot, suffix, self.prefix),
            host_link: format!("dse{}h{}", lease.slot, suffix),
            cgroup_parent: format!("dockscale-e2e-{tag}"),
            storage_driver: host_storage_driver(),
            dir,
            env: self.env,
            dockerd: None,
            lease,
        };
        // From here on a panic drops `engine`, whose Drop sweeps the slot.
        engine.build_namespace();
        engine.write_config();
        engine.start_again();
        engine
    }
}

/// A private Docker engine in its own network namespace; see the module docs. Dropping
/// it (also on panic) stops the engine and removes every trace of it: processes,
/// mounts, directories, cgroups, shim sockets, the veth pair and the namespace.
pub struct PrivateEngine {
    /// The network namespace (`ip netns` name): `dse{X}-{random}-{prefix}`.
    netns: String,
    /// The host end of the veth pair (at most 15 characters); the other end is `eth0`
    /// in the namespace.
    host_link: String,
    /// Parent of the containers' cgroups (from the root), so a container process can
    /// be found and killed even after its shim is gone.
    cgroup_parent: String,
    /// The machine's engine's storage driver, known to work on this machine
    /// (fuse-overlayfs here, overlay2 elsewhere).
    storage_driver: String,
    /// `{ENGINES_DIR}/{X}-{random}`.
    dir: PathBuf,
    /// Extra environment of dockerd.
    env: Vec<(String, String)>,
    /// The running dockerd (nsenter execs it, so this is dockerd itself).
    dockerd: Option<Child>,
    /// Held until the engine's traces are gone; dropped last.
    lease: Lease,
}

impl PrivateEngine {
    /// Starts an engine with default options (see [`PrivateEngineBuilder::start`]).
    /// `prefix` names the test in the namespace's name, for whoever reads `ip netns`.
    pub fn start(prefix: &str) -> Self {
        Self::builder(prefix).start()
    }

    /// An engine to configure before it starts.
    pub fn builder(prefix: &str) -> PrivateEngineBuilder {
        PrivateEngineBuilder {
            prefix: prefix.to_owned(),
            env: Vec::new(),
        }
    }

    /// The engine's API address, for `DOCKER_HOST` or bollard: `unix:///…/docker.sock`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The engine's address in its namespace (198.18.X.2), where the host reaches its
    /// published ports and where it advertises itself to a Swarm.
    pub fn node_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.lease.slot, 2)
    }

    /// The host's end of the veth pair (198.18.X.1), the namespace's default route.
    pub fn host_side_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.lease.slot, 1)
    }

    /// The `ip netns` name of the engine's network namespace.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Runs `docker -H <this engine> args`, returning stdout; panics with stderr.
    pub fn docker(&self, args: &[&str]) -> String {
        let host = self.docker_host();
        let out = Command::new("docker")
            .args(["-H", &host])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run docker: {e}"));
        assert!(
            out.status.success(),
            "docker -H {host} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like [`PrivateEngine::docker`], but failure is `None`, not a panic.
    pub fn docker_quiet(&self, args: &[&str]) -> Option<String> {
        let host = self.docker_host();
        let mut all = vec!["-H", &host];
        all.extend_from_slice(args);
        sh_quiet("docker", &all)
    }

    /// Copies an image from the machine's engine (`docker save | docker load`: no
    /// registry is needed, none is reachable here).
    pub fn load_image(&self, image: &str) {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run docker save: {e}"));
        let tar = save.stdout.take().expect("docker save's stdout is piped");
        let load = Command::new("docker")
            .args(["-H", &self.docker_host(), "load"])
            .stdin(tar)
            .output()
            .unwrap_or_else(|e| panic!("cannot run docker load: {e}"));
        let saved = save
            .wait_with_output()
            .unwrap_or_else(|e| panic!("docker save {image}: {e}"));
        assert!(
            saved.status.success(),
            "docker save {image} failed: {}",
            String::from_utf8_lossy(&saved.stderr)
        );
        assert!(
            load.status.success(),
            "docker -H {} load ({image}) failed: {}",
            self.docker_host(),
            String::from_utf8_lossy(&load.stderr)
        );
    }

    /// The host port published for a container's TCP port, reachable from the host at
    /// [`PrivateEngine::node_addr`] (the engine's DNAT rule in its namespace, or its
    /// docker-proxy, forwards it).
    pub fn published_port(&self, container: &str, port: u16) -> u16 {
        let out = self.docker(&["port", container, &format!("{port}/tcp")]);
        out.lines()
            .filter_map(|l| l.rsplit_once(':')?.1.trim().parse().ok())
            .next()
            .unwrap_or_else(|| panic!("{container} publishes no port for {port}: {out:?}"))
    }

    /// The pid of the running dockerd, `None` while stopped.
    pub fn pid(&self) -> Option<i32> {
        self.dockerd
            .as_ref()
            .and_then(|c| i32::try_from(c.id()).ok())
    }

    /// Stops the engine as `systemctl stop docker` does: SIGTERM to dockerd, then waits
    /// until it and the containerd it started have exited (it stops its containers
    /// first); SIGKILL after 30 s. Returns how long that took. Stopping a
    /// stopped engine does nothing.
    pub fn stop(&mut self) -> Duration {
        let began = Instant::now();
        let Some(mut child) = self.dockerd.take() else {
            return Duration::ZERO;
        };
        let pid = child_pid(&child);
        let _ = kill(pid, Signal::SIGTERM);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if began.elapsed() < STOP_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    eprintln!(
                        "private engine {}: dockerd {pid} ignored SIGTERM for {STOP_TIMEOUT:?}; \
                         killing it",
                        self.dir.display()
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        // dockerd stops its containerd and waits for it, but only 10 s; the next
        // dockerd must not meet the old one.
        let containerd_config = self.dir.join("exec/containerd/containerd.toml");
        let marker = containerd_config.to_string_lossy();
        end_processes(
            |p| p.cmdline.contains(marker.as_ref()),
            CONTAINERD_GRACE,
            SWEEP_TIMEOUT,
        );
        began.elapsed()
    }

    /// Starts dockerd again with the same data root (after [`PrivateEngine::stop`]) and
    /// waits until it answers `docker info`; returns how long that took. Panics with
    /// the end of its log if it exits or does not answer within 30 s.
    /// Starting a running engine does nothing.
    pub fn start_again(&mut self) -> Duration {
        let began = Instant::now();
        if self.dockerd.is_some() {
            return Duration::ZERO;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_path().display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot share {}: {e}", self.log_path().display()));
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let child = Command::new("nsenter")
            // Only the network namespace: `ip netns exec` would also remount /sys, and
            // dockerd then fails with "Devices cgroup isn't mounted".
            .arg(format!("--net={NETNS_DIR}/{}", self.netns))
            .arg("dockerd")
            .args(["--config-file", &path(&self.dir.join("daemon.json"))])
            .args(["--data-root", &path(&self.dir.join("data"))])
            .args(["--exec-root", &path(&self.dir.join("exec"))])
            .args(["--pidfile", &path(&self.dir.join("docker.pid"))])
            .args(["-H", &self.docker_host()])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nsenter … dockerd: {e}"));
        self.dockerd = Some(child);
        loop {
            if let Some(Ok(Some(status))) = self.dockerd.as_mut().map(Child::try_wait) {
                self.dockerd = None;
                panic!(
                    "private dockerd exited ({status}) before answering; its log ends:\n{}",
                    self.log_tail()
                );
            }
            if self
                .docker_quiet(&["info", "--format", "{{.ServerVersion}}"])
                .is_some()
            {
                return began.elapsed();
            }
            assert!(
                began.elapsed() < ANSWER_TIMEOUT,
                "private dockerd did not answer within {ANSWER_TIMEOUT:?}; its log ends:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An engine restart (what a package upgrade does): [`PrivateEngine::stop`], then
    /// [`PrivateEngine::start_again`] with the same data root.
    pub fn restart(&mut self) -> Downtime {
        let stopping = self.stop();
        let starting = self.start_again();
        Downtime { stopping, starting }
    }

    /// What the engine has on the machine now, to check after drop that all of it is
    /// gone ([`Footprint::leftovers`]).
    pub fn footprint(&self) -> Footprint {
        let netns_inode = netns_inode(&self.netns);
        let dir = format!("{}/", self.dir.display());
        let cgroup = format!("/{}/", self.cgroup_parent);
        let shim = format!("-namespace {} ", self.cgroup_parent);
        let processes = processes()
            .into_iter()
            .filter(|p| {
                (netns_inode.is_some() && p.netns == netns_inode)
                    || p.cmdline.contains(&dir)
                    || p.cmdline.contains(&shim)
                    || p.in_cgroup_under(&cgroup)
            })
            .map(|p| (p.pid, p.start_time, p.comm))
            .collect();
        Footprint {
            netns: self.netns.clone(),
            host_link: self.host_link.clone(),
            dir: self.dir.clone(),
            cgroup_parent: self.cgroup_parent.clone(),
            processes,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    /// The last lines of dockerd's log (it is deleted with the engine).
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The namespace, with `lo` up and `eth0` at 198.18.X.2/24 whose peer on the host
    /// is 198.18.X.1/24, the default route.
    fn build_namespace(&self) {
        let ns = self.netns.as_str();
        let link = self.host_link.as_str();
        let host = format!("{}/24", self.host_side_addr());
        let node = format!("{}/24", self.node_addr());
        let gateway = self.host_side_addr().to_string();
        ip(&["netns", "add", ns]);
        ip(&[
            "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        ip(&["addr", "add", &host, "dev", link]);
        ip(&["link", "set", link, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&["-n", ns, "addr", "add", &node, "dev", "eth0"]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
        ip(&["-n", ns, "route", "add", "default", "via", &gateway]);
    }

    /// The engine's own config file. Not the machine's `/etc/docker/daemon.json`: it
    /// sets `data-root`, which clashes with the flag.
    fn write_config(&self) {
        std::fs::create_dir_all(&self.dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", self.dir.display()));
        let slot = self.lease.slot;
        let config = serde_json::json!({
            "storage-driver": self.storage_driver,
            // Its networks must not overlap the machine's engine's (172.16/12 and
            // 192.168/16) nor 10/8.
            "bip": format!("198.19.{slot}.1/24"),
            "default-address-pools": [{"base": format!("100.{}.0.0/16", 64 + slot), "size": 24}],
            // dockerd starts a containerd of its own (under the exec root) unless one
            // listens at SYSTEM_CONTAINERD; then it attaches to that one, and these
            // namespaces keep the engines apart there.
            "containerd-namespace": self.cgroup_parent,
            "containerd-plugins-namespace": format!("{}-plugins", self.cgroup_parent),
            // From the root: relative to dockerd's cgroup would depend on the test's.
            "cgroup-parent": format!("/{}", self.cgroup_parent),
            // Its own engine ID: by default it would share /etc/docker/key.json, and
            // so the ID, with the machine's engine.
            "deprecated-key-path": self.dir.join("key.json"),
        });
        let path = self.dir.join("daemon.json");
        std::fs::write(&path, config.to_string())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

impl Drop for PrivateEngine {
    /// Stops the engine gracefully (so it unmounts what it mounted), then sweeps the
    /// slot; reports what could not be removed rather than panicking (a panic in drop
    /// during a test's panic would abort). The lease is released last.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "private engine {}: dockerd's log ends:\n{}",
                self.dir.display(),
                self.log_tail()
            );
        }
        self.stop();
        let failures = sweep_slot(self.lease.slot);
        if !failures.is_empty() {
            eprintln!(
                "private engine {}: cleanup left {failures:?}",
                self.dir.display()
            );
        }
    }
}

/// What one engine had on the machine, identified by names and by processes (pid and
/// start time, so a reused pid is not mistaken for one of them).
#[derive(Clone, Debug)]
pub struct Footprint {
    netns: String,
    host_link: String,
    dir: PathBuf,
    cgroup_parent: String,
    processes: Vec<(i32, u64, String)>,
}

impl Footprint {
    /// The names (`comm`) of the engine's processes, e.g. `dockerd`, `containerd`,
    /// `containerd-shim` (truncated to 15 characters), `docker-proxy`.
    pub fn process_names(&self) -> Vec<String> {
        self.processes.iter().map(|(_, _, c)| c.clone()).collect()
    }

    /// What of it is still on the machine, described; empty when nothing is. Zombies
    /// count as gone: they hold nothing but a pid, and only their parent (init, for
    /// orphans) can reap them.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        if Path::new(NETNS_DIR).join(&self.netns).exists() {
            left.push(format!("network namespace {}", self.netns));
        }
        if Path::new("/sys/class/net").join(&self.host_link).exists() {
            left.push(format!("link {}", self.host_link));
        }
        if self.dir.exists() {
            left.push(format!("directory {}", self.dir.display()));
        }
        let marker = format!("{}/", self.dir.display());
        for m in mounts()
            .into_iter()
            .filter(|m| m.point.starts_with(&marker))
        {
            left.push(format!("mount {} ({})", m.point, m.fstype));
        }
        for group in cgroups_named(|name| name == self.cgroup_parent) {
            left.push(format!("cgroup {}", group.display()));
        }
        let cgroup = format!("/{}/", self.cgroup_parent);
        let shim = format!("-namespace {} ", self.cgroup_parent);
        for p in processes() {
            let was_ours = self
                .processes
                .iter()
                .any(|(pid, start, _)| *pid == p.pid && *start == p.start_time);
            if !p.zombie
                && (was_ours
                    || p.cmdline.contains(&marker)
                    || p.cmdline.contains(&shim)
                    || p.in_cgroup_under(&cgroup))
            {
                left.push(format!("process {} ({})", p.pid, p.cmdline));
            }
        }
        left
    }
}

/// An exclusive lease on one slot, held by an open, `flock`ed file: the kernel drops
/// it when the process ends, however it ends, so a crashed run never blocks a slot.
struct Lease {
    slot: u8,
    _lock: Flock<File>,
}

impl Lease {
    /// The lowest free slot (low slots are reused, and so swept, most often).
    fn take() -> Self {
        std::fs::create_dir_all(LEASE_DIR)
            .unwrap_or_else(|e| panic!("cannot create {LEASE_DIR}: {e}"));
        for slot in 0..SLOTS {
            let path = format!("{LEASE_DIR}/{slot}.lock");
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
            if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                return Lease { slot, _lock: lock };
            }
        }
        panic!("all {SLOTS} private-engine slots are leased (see {LEASE_DIR})");
    }
}

/// Removes everything of slot `slot` (see the module docs), the caller holding its
/// lease: processes, mounts, shim sockets, cgroups, directories, links, namespaces.
/// Returns what could not be removed.
fn sweep_slot(slot: u8) -> Vec<String> {
    let mut failures = Vec::new();
    let dir_prefix = format!("{ENGINES_DIR}/{slot}-");
    let group_prefix = format!("dockscale-e2e-{slot}-");
    let netns_prefix = format!("dse{slot}-");
    let link_prefix = format!("dse{slot}h");
    let namespaces = names_in(Path::new(NETNS_DIR), &netns_prefix);
    let inodes: Vec<u64> = namespaces.iter().filter_map(|n| netns_inode(n)).collect();

    // Processes first: they hold mounts, cgroups and the namespace. Shims of a
    // system containerd are in neither the namespace nor the directories.
    let cgroup_marker = format!("/{group_prefix}");
    let shim_marker = format!("-namespace {group_prefix}");
    let left = end_processes(
        |p| {
            p.netns.is_some_and(|i| inodes.contains(&i))
                || p.cmdline.contains(&dir_prefix)
                || p.cmdline.contains(&shim_marker)
                || p.in_cgroup_under(&cgroup_marker)
        },
        Duration::ZERO,
        SWEEP_TIMEOUT,
    );
    failures.extend(left.into_iter().map(|p| format!("process {p}")));

    // Mounts, innermost first (the reverse of mountinfo's order).
    for m in mounts()
        .iter()
        .rev()
        .filter(|m| m.point.starts_with(&dir_prefix))
    {
        if umount2(m.point.as_str(), MntFlags::empty()).is_err()
            && umount2(m.point.as_str(), MntFlags::MNT_DETACH).is_err()
        {
            failures.push(format!("mount {}", m.point));
        }
    }

    let dirs = names_in(Path::new(ENGINES_DIR), &format!("{slot}-"));
    for name in &dirs {
        let dir = Path::new(ENGINES_DIR).join(name);
        for socket in shim_sockets(&dir, &format!("dockscale-e2e-{name}")) {
            let _ = std::fs::remove_file(socket);
        }
    }
    for group in cgroups_named(|name| name.starts_with(&group_prefix)) {
        if remove_cgroup(&group).is_err() {
            failures.push(format!("cgroup {}", group.display()));
        }
    }
    let still_mounted = mounts().iter().any(|m| m.point.starts_with(&dir_prefix));
    for name in &dirs {
        let dir = Path::new(ENGINES_DIR).join(name);
        // Never recurse into a mount that would not go: it may not be ours alone.
        if still_mounted || std::fs::remove_dir_all(&dir).is_err() {
            failures.push(format!("directory {}", dir.display()));
        }
    }

    let links = names_in(Path::new("/sys/class/net"), &link_prefix);
    for link in &links {
        let _ = sh_quiet("ip", &["link", "del", link]);
    }
    for ns in &namespaces {
        let _ = sh_quiet("ip", &["netns", "del", ns]);
    }
    let began = Instant::now();
    loop {
        let left: Vec<String> = names_in(Path::new("/sys/class/net"), &link_prefix)
            .into_iter()
            .chain(names_in(Path::new(NETNS_DIR), &netns_prefix))
            .collect();
        if left.is_empty() {
            break;
        }
        if began.elapsed() > SWEEP_TIMEOUT {
            failures.extend(left.into_iter().map(|n| format!("link or namespace {n}")));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    failures
}

/// Ends every process (but this one) that `ours` picks, by pid: gives them `grace` to
/// exit on their own, then SIGKILLs them, and waits until they are gone or zombies;
/// returns the ones still alive after `grace + timeout`.
fn end_processes(
    ours: impl Fn(&Process) -> bool,
    grace: Duration,
    timeout: Duration,
) -> Vec<String> {
    let me = std::process::id();
    let began = Instant::now();
    loop {
        let alive: Vec<Process> = processes()
            .into_iter()
            .filter(|p| u32::try_from(p.pid).is_ok_and(|pid| pid != me) && !p.zombie && ours(p))
            .collect();
        if alive.is_empty() {
            return Vec::new();
        }
        if began.elapsed() > grace + timeout {
            return alive
                .into_iter()
                .map(|p| format!("{} ({})", p.pid, p.cmdline))
                .collect();
        }
        if began.elapsed() >= grace {
            for p in &alive {
                let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process as /proc shows it.
struct Process {
    pid: i32,
    /// Clock ticks after boot: with the pid, names one process for good.
    start_time: u64,
    comm: String,
    /// Arguments joined by spaces.
    cmdline: String,
    /// The `/proc/<pid>/cgroup` lines.
    cgroups: String,
    /// The inode of its network namespace.
    netns: Option<u64>,
    zombie: bool,
}

impl Process {
    /// Whether one of its cgroups lies under `prefix` (`/name/`, or `/name-` for a
    /// slot's).
    fn in_cgroup_under(&self, prefix: &str) -> bool {
        self.cgroups
            .lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .any(|path| path.starts_with(prefix))
    }
}

/// Every process on the machine (those that end while being read are skipped).
fn processes() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
            let (head, rest) = stat.rsplit_once(") ")?;
            let comm = head.split_once(" (")?.1.to_owned();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // After comm: state is field 3 of stat(5), starttime field 22.
            let zombie = fields.first().is_some_and(|s| *s == "Z" || *s == "X");
            let start_time = fields.get(19)?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline)
                .trim_end_matches('\0')
                .replace('\0', " ");
            Some(Process {
                pid,
                start_time,
                comm,
                cmdline,
                cgroups: std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default(),
                netns: std::fs::metadata(format!("/proc/{pid}/ns/net"))
                    .ok()
                    .map(|m| m.ino()),
                zombie,
            })
        })
        .collect()
}

/// The inode of a named network namespace, which its processes' `ns/net` share.
fn netns_inode(name: &str) -> Option<u64> {
    std::fs::metadata(Path::new(NETNS_DIR).join(name))
        .ok()
        .map(|m| m.ino())
}

/// A mount of this process's mount namespace (the machine's: dockerd runs in it too).
struct Mount {
    point: String,
    fstype: String,
}

/// The mounts, in mountinfo's order (a mount after the one it is mounted on).
fn mounts() -> Vec<Mount> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (fields, after) = line.split_once(" - ")?;
            Some(Mount {
                point: unescape_mountinfo(fields.split(' ').nth(4)?),
                fstype: after.split(' ').next()?.to_owned(),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` (octal).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match code {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Top-level cgroups (in every mounted hierarchy) whose name `wanted` picks.
fn cgroups_named(wanted: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    mounts()
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .flat_map(|m| {
            let root = PathBuf::from(&m.point);
            names_in(&root, "")
                .into_iter()
                .filter(|n| wanted(n))
                .map(move |n| root.join(n))
        })
        .filter(|p| p.is_dir())
        .collect()
}

/// Removes a cgroup and the cgroups below it (rmdir: their files are not files).
fn remove_cgroup(group: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(group)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_cgroup(&entry.path())?;
        }
    }
    std::fs::remove_dir(group)
}

/// The sockets the shims of an engine's containers would have in [`SHIM_SOCKET_DIR`]:
/// containerd 1.6 names each `sha256(<containerd address>/<namespace>/<id>)`, the
/// address being the engine's own containerd's or [`SYSTEM_CONTAINERD`].
fn shim_sockets(dir: &Path, namespace: &str) -> Vec<PathBuf> {
    let own = dir.join("exec/containerd/containerd.sock");
    let addresses = [
        own.to_string_lossy().into_owned(),
        SYSTEM_CONTAINERD.to_owned(),
    ];
    names_in(&dir.join("data/containers"), "")
        .into_iter()
        .flat_map(|id| {
            addresses.iter().map(move |address| {
                Path::new(SHIM_SOCKET_DIR).join(shim_socket_name(address, namespace, &id))
            })
        })
        .filter(|p| p.exists())
        .collect()
}

/// The name of a shim's socket in [`SHIM_SOCKET_DIR`].
fn shim_socket_name(address: &str, namespace: &str, id: &str) -> String {
    let digest = Sha256::digest(format!("{address}/{namespace}/{id}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Names of the entries of `dir` that start with `prefix` (none if it is missing).
fn names_in(dir: &Path, prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

fn child_pid(child: &Child) -> Pid {
    // Linux pids fit in an i32 (pid_max is at most 2^22).
    Pid::from_raw(child.id() as i32)
}

/// Runs `ip`, panicking with its stderr.
fn ip(args: &[&str]) {
    crate::sh("ip", args);
}

/// The machine's engine's storage driver, to use in the private one too.
fn host_storage_driver() -> String {
    let driver = crate::sh("docker", &["info", "--format", "{{.Driver}}"])
        .trim()
        .to_owned();
    if driver == "fuse-overlayfs" {
        require_tool("fuse-overlayfs", "fuse-overlayfs");
    }
    driver
}

/// Fails the test when the machine cannot run a private engine.
fn require_tools() {
    require_docker();
    for (tool, package) in TOOLS {
        require_tool(tool, package);
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "a private Docker engine needs root (network namespaces, veth pairs, mounts): \
         run the tests as root"
    );
}

fn require_tool(tool: &str, package: &str) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| dir.join(tool).is_file());
    assert!(
        found,
        "{tool} is missing (the private Docker engine needs it): apt-get install {package}, \
         or run scripts/prepare"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b\134c"), r"/tmp/a b\c");
        assert_eq!(unescape_mountinfo(r"/plain\0"), r"/plain\0");
    }

    #[test]
    fn a_slot_prefix_does_not_match_a_longer_slot() {
        let one = format!("{ENGINES_DIR}/1-");
        assert!(!format!("{ENGINES_DIR}/12-abcde/exec").starts_with(&one));
        assert!(!"dse12habcde".starts_with("dse1h"));
        assert!(!"dse12-abcde-x".starts_with("dse1-"));
    }

    #[test]
    fn a_shim_socket_is_named_as_containerd_names_it() {
        // The socket a SIGKILLed shim of a private engine left on this machine.
        assert_eq!(
            shim_socket_name(
                "/tmp/dse-manual/exec/containerd/containerd.sock",
                "moby",
                "cfac0ab0d709b6af29686fbc29ca649cd214462ce537bf02f37a48f747bdbd3b"
            ),
            "649018261fe4268d7df4f2fb9d5a1ccababcd87ba9c21c762ea1abd694fa58af"
        );
    }

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        let longest = format!("dse{}h{}", SLOTS - 1, "abcde");
        assert!(longest.len() <= 15, "{longest}");
    }
}
