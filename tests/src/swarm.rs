//! Real swarms for the end-to-end tests, made of private engines (see [`crate::engine`]):
//! one node, or a manager and a worker whose namespaces are joined by a veth pair of
//! their own (so the machine's iptables and routes are never touched). Each engine runs
//! with `DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1` and has the demo image loaded under a
//! name on a loopback registry: Swarm never asks a registry for an image it has, and a
//! pull it tried anyway would stay on this machine. The overlay networks take their
//! addresses from the engine's own slot, never from Swarm's default 10.0.0.0/8, and
//! the tests reach tasks only through published ports on the node addresses.
//!
//! Dropping the swarm (also on panic) makes every engine leave it; each engine's own
//! drop then removes everything else.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;

use crate::engine::PrivateEngine;
use crate::WEBAPP_IMAGE;

/// The demo image as the swarm's tasks name it.
pub const SWARM_IMAGE: &str = "127.0.0.1:5999/dockscale-webapp:e2e";

/// A docker-runtime test spec made a Swarm one: the tasks' image, and the default pull
/// policy (`Never` is for the docker runtime; the nodes have the image loaded).
pub fn on_swarm(spec: &str) -> String {
    spec.replace(WEBAPP_IMAGE, SWARM_IMAGE)
        .replace("    imagePullPolicy: Never\n", "")
}

pub struct Swarm {
    pub manager: PrivateEngine,
    pub workers: Vec<PrivateEngine>,
}

fn engine(prefix: &str) -> PrivateEngine {
    let engine = PrivateEngine::builder(prefix)
        .env("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1")
        .start();
    engine.load_image(WEBAPP_IMAGE);
    engine.docker(&["tag", WEBAPP_IMAGE, SWARM_IMAGE]);
    engine
}

/// The slot's share of 100.64.0.0/10 kept for overlay networks: 100.(64+X).192.0/18.
fn overlay_pool(addr: Ipv4Addr) -> String {
    let slot = addr.octets()[2];
    format!("100.{}.192.0/18", 64 + u16::from(slot))
}

impl Swarm {
    /// A one-node swarm: a private engine that is its manager.
    pub fn single(prefix: &str) -> Swarm {
        let manager = engine(prefix);
        init(&manager);
        Swarm {
            manager,
            workers: Vec::new(),
        }
    }

    /// A manager and one worker, each a private engine, joined by a link of their own.
    pub fn two_nodes(prefix: &str) -> Swarm {
        let manager = engine(&format!("{prefix}m"));
        let worker = engine(&format!("{prefix}w"));
        link(&manager, &worker);
        init(&manager);
        let token = manager.docker(&["swarm", "join-token", "-q", "worker"]);
        let join = format!("{}:2377", manager.node_addr());
        let advertise = worker.node_addr().to_string();
        worker.docker(&[
            "swarm",
            "join",
            "--token",
            token.trim(),
            "--advertise-addr",
            &advertise,
            &join,
        ]);
        Swarm {
            manager,
            workers: vec![worker],
        }
    }

    /// The running tasks' addresses (node address and published port), as the swarm's
    /// manager reports them, over every node of the swarm.
    pub async fn task_addrs(&self, service: &str) -> BTreeSet<SocketAddrV4> {
        let host = self.docker_host();
        let socket = host.trim_start_matches("unix://");
        let Ok(docker) =
            bollard::Docker::connect_with_unix(socket, 10, bollard::API_DEFAULT_VERSION)
        else {
            return BTreeSet::new();
        };
        let filters = HashMap::from([
            ("service", vec![service]),
            ("desired-state", vec!["running"]),
        ]);
        let options = bollard::query_parameters::ListTasksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let (Ok(tasks), Ok(nodes)) = (
            docker.list_tasks(Some(options)).await,
            docker
                .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
                .await,
        ) else {
            return BTreeSet::new();
        };
        let addr_of: HashMap<String, String> = nodes
            .into_iter()
            .filter_map(|n| Some((n.id?, n.status?.addr?)))
            .collect();
        tasks
            .into_iter()
            .filter_map(|t| {
                let status = t.status?;
                if status.state != Some(bollard::models::TaskState::RUNNING) {
                    return None;
                }
                let port = status.port_status?.ports?.first()?.published_port?;
                let ip = addr_of.get(&t.node_id?)?.parse().ok()?;
                Some(SocketAddrV4::new(ip, u16::try_from(port).ok()?))
            })
            .collect()
    }

    /// `DOCKER_HOST` for a controller driving this swarm.
    pub fn docker_host(&self) -> String {
        self.manager.docker_host()
    }
}

fn init(manager: &PrivateEngine) {
    let advertise = manager.node_addr().to_string();
    let pool = overlay_pool(manager.node_addr());
    manager.docker(&[
        "swarm",
        "init",
        "--advertise-addr",
        &advertise,
        "--default-addr-pool",
        &pool,
        "--default-addr-pool-mask-length",
        "24",
    ]);
}

/// Joins two engines' namespaces directly: a veth pair between them, and a route in
/// each to the other's node address over it (so that Swarm's traffic between them
/// never crosses the host).
fn link(a: &PrivateEngine, b: &PrivateEngine) {
    let ip = |args: &[&str]| {
        let out = Command::new("ip")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
        assert!(
            out.status.success(),
            "ip {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&[
        "link",
        "add",
        "swl0",
        "netns",
        a.netns(),
        "type",
        "veth",
        "peer",
        "name",
        "swl0",
        "netns",
        b.netns(),
    ]);
    for (me, other) in [(a, b), (b, a)] {
        ip(&["-n", me.netns(), "link", "set", "swl0", "up"]);
        let to = format!("{}/32", other.node_addr());
        let from = me.node_addr().to_string();
        ip(&[
            "-n",
            me.netns(),
            "route",
            "add",
            &to,
            "dev",
            "swl0",
            "src",
            &from,
        ]);
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        for worker in &self.workers {
            let _ = worker.docker_quiet(&["swarm", "leave", "--force"]);
        }
        let _ = self.manager.docker_quiet(&["swarm", "leave", "--force"]);
    }
}
