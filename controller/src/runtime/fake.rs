//! An in-memory [`ContainerRuntime`] for unit tests of whole controller passes, in the
//! way controller-rs tests its reconciler against a mock apiserver: no Docker, and
//! every change the engine would make (and every event it would stream) made here, on
//! tokio's clock, so that tests run under paused time in milliseconds.
//!
//! [`FakeRuntime`] keeps containers, networks and images, and streams events for its
//! own changes the way Docker does: `kill` before a `die` someone caused, the
//! network's `disconnect` then `die` with the exit code when a process ends (the order
//! moby logs them in), `stop`, `destroy`, `oom`, `pause`/`unpause`, and the network's
//! `connect` on start (network events carry the container's id but not its service:
//! they have no container labels). [`FakeRuntime::events`] opens a new
//! stream each call and replays the last second of events first, as the Docker
//! adapter asks the engine to.
//!
//! A test scripts what happens from outside with methods named after what an operator
//! or the kernel does ([`FakeRuntime::kill`], [`FakeRuntime::stop_from_outside`],
//! [`FakeRuntime::oom_kill`], [`FakeRuntime::engine_restarted`], ...) and what the engine
//! answers ([`FakeRuntime::fail_creates`], [`FakeRuntime::hold_stops`], images that
//! crash or never answer, [`Behaviour`]). Every call the controller makes is written to
//! a [`Journal`] shared with the fake load balancer ([`crate::lb::fake`]), so that a
//! test can check the order of both adapters' calls (a server out of rotation before
//! its container is stopped).
//!
//! Containers started by hand are scripted too: [`FakeRuntime::run_unmanaged`] (no
//! dockscale label) and [`FakeRuntime::run_member`] (`dockscale.join`, a member, whose
//! own events stream like a replica's).
//!
//! This module never decides anything for the controller; it only answers as an engine
//! would.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::model::member::{Member, LABEL_JOIN};
use crate::model::replica::{
    replica_labels, ContainerId, ContainerState, ExitCause, Health, Replica, LABEL_CREATED_AT,
    LABEL_MANAGED_BY, LABEL_SERVICE, LABEL_TEMPLATE_HASH, MANAGED_BY,
};
use crate::runtime::{ContainerEvent, ContainerRuntime, CreateReplica, DockerError, PulledImage};

/// How far back a new event stream replays, like the Docker adapter's `since`.
pub const REPLAY: Duration = Duration::from_secs(1);

/// The image every test spec uses, present in a new [`FakeRuntime`].
pub const WEBAPP_IMAGE: &str = "dockscale-webapp:latest";

/// The exit code of a container killed with SIGKILL (128 + 9).
pub const SIGKILL_EXIT: i64 = 137;
/// The exit code of a container ended by SIGTERM (128 + 15).
pub const SIGTERM_EXIT: i64 = 143;

/// A Docker failure to script, cloneable (a [`DockerError`] is not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeError {
    /// The engine does not answer.
    Unavailable,
    /// The image is not there.
    ImageNotFound,
    /// The engine refused the request.
    Api { status: u16, message: String },
    /// A bind mount's source is missing on the host (the adapter's reading of the
    /// engine's 400).
    BindSourceNotFound { path: String },
}

impl FakeError {
    fn to_docker(&self, action: &'static str, image: &str) -> DockerError {
        match self {
            FakeError::Unavailable => unavailable(),
            FakeError::ImageNotFound => DockerError::ImageNotFound {
                image: image.to_owned(),
            },
            FakeError::BindSourceNotFound { path } => {
                DockerError::BindSourceNotFound { path: path.clone() }
            }
            FakeError::Api { status, message } => DockerError::Api {
                action,
                status: *status,
                message: message.clone(),
            },
        }
    }
}

fn no_such_container(action: &'static str, id: &ContainerId) -> DockerError {
    DockerError::Api {
        action,
        status: 404,
        message: format!("no such container: {id}"),
    }
}

fn unavailable() -> DockerError {
    DockerError::Unavailable(bollard::errors::Error::IOError {
        err: std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connect: connection refused (fake engine down)",
        ),
    })
}

/// How the replicas of an image behave once started.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Behaviour {
    /// The process exits by itself (code `crash_code`) after running this long.
    pub crashes_after: Option<Duration>,
    pub crash_code: i64,
    /// The port never accepts a connection (the readiness probe fails).
    pub never_answers: bool,
}

impl Behaviour {
    /// A server that starts and answers.
    pub fn serves() -> Self {
        Behaviour::default()
    }

    /// A process that exits with code 1 after `after`.
    pub fn crashes_after(after: Duration) -> Self {
        Behaviour {
            crashes_after: Some(after),
            crash_code: 1,
            never_answers: false,
        }
    }

    /// A server that runs but never answers on its port.
    pub fn never_answers() -> Self {
        Behaviour {
            never_answers: true,
            ..Behaviour::default()
        }
    }
}

/// One container as the fake engine keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct FakeContainer {
    pub id: ContainerId,
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub state: ContainerState,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    /// The network the container was created on.
    pub network: String,
    /// Addresses by network, while running or paused.
    pub ips: BTreeMap<String, Ipv4Addr>,
    /// The port the template's server listens on.
    pub port: Option<u16>,
    pub created_at_ns: i64,
    /// Whether its port accepts connections while it runs.
    pub answers: bool,
    /// A stop was asked for (SIGTERM sent); it is on its way out.
    pub stopping: bool,
    /// Its health check's verdict, for a container whose template has one.
    pub health: Option<Health>,
}

impl FakeContainer {
    pub fn owned(&self) -> bool {
        self.labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
    }

    pub fn service(&self) -> Option<&str> {
        self.labels.get(LABEL_SERVICE).map(String::as_str)
    }

    pub fn template_hash(&self) -> Option<&str> {
        self.labels.get(LABEL_TEMPLATE_HASH).map(String::as_str)
    }

    pub fn is_running(&self) -> bool {
        self.state == ContainerState::Running
    }

    /// Its address on its own network and the template's port, while it has one.
    pub fn addr(&self) -> Option<SocketAddrV4> {
        Some(SocketAddrV4::new(*self.ips.get(&self.network)?, self.port?))
    }

    /// Running, not paused, on its address, and answering.
    fn answers_on(&self, addr: SocketAddrV4) -> bool {
        self.is_running() && self.answers && self.addr() == Some(addr)
    }

    /// What the Docker adapter would make of it as a member: labelled
    /// `dockscale.join`, not owned.
    fn member(&self) -> Option<Member> {
        if self.owned() {
            return None;
        }
        Some(Member {
            id: self.id.clone(),
            name: self.name.clone(),
            service: self.labels.get(LABEL_JOIN)?.clone(),
            state: self.state,
            ips: self.ips.clone(),
            health: self
                .health
                .filter(|_| self.state == ContainerState::Running),
        })
    }

    /// What the Docker adapter would make of it; `inspect` says whether the kernel
    /// OOM-killed it (a list does not).
    fn replica(&self, inspect: bool) -> Option<Replica> {
        if !self.owned() {
            return None;
        }
        let created_at_ns = self
            .labels
            .get(LABEL_CREATED_AT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.created_at_ns);
        let exited = matches!(self.state, ContainerState::Exited | ContainerState::Dead);
        let health = self
            .health
            .filter(|_| self.state == ContainerState::Running);
        let status = match (self.state, inspect) {
            (ContainerState::Running, false) => match health {
                Some(Health::Starting) => "Up 2 seconds (health: starting)".to_owned(),
                Some(h) => format!("Up 2 seconds ({})", h.as_str()),
                None => "Up 2 seconds".to_owned(),
            },
            (ContainerState::Running, true) => "Up".to_owned(),
            (ContainerState::Paused, false) => "Up 2 seconds (Paused)".to_owned(),
            (ContainerState::Exited, false) => {
                format!("{} 1 second ago", Replica::exited_status(self.exit_code))
            }
            (ContainerState::Exited, true) => Replica::exited_status(self.exit_code),
            (other, _) => format!("{other:?}"),
        };
        Some(Replica {
            id: self.id.clone(),
            name: self.name.clone(),
            service: self.service()?.to_owned(),
            template_hash: self.template_hash().unwrap_or_default().to_owned(),
            created_at_ns,
            state: self.state,
            status,
            ips: self.ips.clone(),
            exit_cause: exited.then_some(if inspect && self.oom_killed {
                ExitCause::OutOfMemory
            } else {
                ExitCause::Unknown
            }),
            health,
        })
    }
}

/// Every call either fake adapter answered, in order. Shared by the fake runtime and
/// the fake load balancer so that their calls interleave as the controller made them.
#[derive(Clone, Debug, Default)]
pub struct Journal(Arc<Mutex<Vec<Entry>>>);

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub at: Instant,
    pub call: Call,
}

/// One call to an adapter, or one scripted change from outside (`Outside`, `Lb`'s
/// operator commands), in the order they happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    List,
    /// The list of hand-started members (`dockscale.join`).
    ListMembers,
    Inspect(ContainerId),
    EnsureNetwork(String),
    ImagePresent(String),
    Pull(String),
    Create {
        name: String,
        service: String,
    },
    /// `addrs`: the container's addresses when the stop began (none once it exited).
    Stop {
        id: ContainerId,
        name: String,
        addrs: Vec<Ipv4Addr>,
    },
    Subscribe,
    /// The controller paused a container (the warm pool).
    Pause(ContainerId),
    Unpause(ContainerId),
    Rename {
        id: ContainerId,
        name: String,
    },
    /// Something a test did to the engine or a container.
    Outside(String),
    Lb(crate::lb::fake::LbCall),
}

impl Journal {
    pub fn record(&self, call: Call) {
        lock(&self.0).push(Entry {
            at: Instant::now(),
            call,
        });
    }

    pub fn entries(&self) -> Vec<Entry> {
        lock(&self.0).clone()
    }

    /// How many recorded calls match, at or after `since`.
    pub fn count_since(&self, since: Instant, pick: impl Fn(&Call) -> bool) -> usize {
        lock(&self.0)
            .iter()
            .filter(|e| e.at >= since && pick(&e.call))
            .count()
    }

    /// The time of the first matching call at or after `since`.
    pub fn first_since(&self, since: Instant, pick: impl Fn(&Call) -> bool) -> Option<Instant> {
        lock(&self.0)
            .iter()
            .find(|e| e.at >= since && pick(&e.call))
            .map(|e| e.at)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data; a test that panicked elsewhere leaves nothing half-written.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How many calls of each kind the controller made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    pub lists: usize,
    pub inspects: usize,
    pub creates: usize,
    pub stops: usize,
    pub subscribes: usize,
    pub image_checks: usize,
    pub pulls: usize,
    /// The most creates in flight at once.
    pub max_creates_in_flight: usize,
}

type Subscriber = mpsc::UnboundedSender<Result<ContainerEvent, DockerError>>;

struct Network {
    /// Its index, the second octet of its addresses (10.<index>.x.y).
    index: u8,
    next_host: u32,
}

struct Engine {
    containers: BTreeMap<ContainerId, FakeContainer>,
    next_id: u64,
    networks: BTreeMap<String, Network>,
    images: BTreeMap<String, Behaviour>,
    /// What the registry holds: per reference, the image ID and size of what its tag
    /// names and how its containers behave.
    registry: BTreeMap<String, RegistryImage>,
    /// The local image IDs of pulled images.
    local_ids: BTreeMap<String, String>,
    /// While set, every pull fails with this message (the registry refuses).
    pull_refusal: Option<String>,
    pull_latency: Duration,
    subscribers: Vec<Subscriber>,
    history: VecDeque<(Instant, ContainerEvent)>,
    /// Events are streamed (and kept for replay); off, they are lost.
    deliver: bool,
    reachable: bool,
    create_failures: VecDeque<FakeError>,
    stop_failures: VecDeque<FakeError>,
    /// Every call takes at least this long, as a request to the engine does (and so a
    /// retry loop lets time pass).
    round_trip: Duration,
    create_latency: Duration,
    stop_latency: Duration,
    creates_in_flight: usize,
    calls: Calls,
    /// Live containers (created, running, paused; not being stopped) per service after
    /// each change.
    population: Vec<(Instant, String, usize)>,
}

/// An image in the fake registry.
#[derive(Clone, Debug)]
struct RegistryImage {
    id: String,
    size: u64,
    behaviour: Behaviour,
}

/// The in-memory container engine. Share it as `Arc<FakeRuntime>` between the
/// controller and the test.
pub struct FakeRuntime {
    engine: Arc<Mutex<Engine>>,
    journal: Journal,
    /// `true` while stops hang (the engine takes the SIGTERM but does not finish).
    stops_held: watch::Sender<bool>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeRuntime {
    /// An engine with [`WEBAPP_IMAGE`], no containers and no networks. Every call takes
    /// a 1ms round trip; creates take 20ms more (10 to create, 10 to start), stops
    /// 10ms: short, but long enough for work to be in flight at once.
    pub fn new() -> Self {
        Self::with_journal(Journal::default())
    }

    pub fn with_journal(journal: Journal) -> Self {
        let (stops_held, _) = watch::channel(false);
        FakeRuntime {
            engine: Arc::new(Mutex::new(Engine {
                containers: BTreeMap::new(),
                next_id: 1,
                networks: BTreeMap::new(),
                images: BTreeMap::from([(WEBAPP_IMAGE.to_owned(), Behaviour::serves())]),
                registry: BTreeMap::new(),
                local_ids: BTreeMap::new(),
                pull_refusal: None,
                pull_latency: Duration::from_millis(500),
                subscribers: Vec::new(),
                history: VecDeque::new(),
                deliver: true,
                reachable: true,
                create_failures: VecDeque::new(),
                stop_failures: VecDeque::new(),
                round_trip: Duration::from_millis(1),
                create_latency: Duration::from_millis(20),
                stop_latency: Duration::from_millis(10),
                creates_in_flight: 0,
                calls: Calls::default(),
                population: Vec::new(),
            })),
            journal,
            stops_held,
        }
    }

    fn engine(&self) -> MutexGuard<'_, Engine> {
        lock(&self.engine)
    }

    /// The request's way to the engine.
    async fn round_trip(&self) {
        let d = self.engine().round_trip;
        tokio::time::sleep(d).await;
    }

    pub fn journal(&self) -> Journal {
        self.journal.clone()
    }

    // --- what the engine has -------------------------------------------------------

    /// Adds (or changes) a local image and how its containers behave.
    pub fn add_image(&self, image: &str, behaviour: Behaviour) {
        self.engine().images.insert(image.to_owned(), behaviour);
    }

    pub fn remove_image(&self, image: &str) {
        self.engine().images.remove(image);
    }

    /// Pushes an image to the fake registry under `image`: its tag now names `id`
    /// (`size` bytes), whose containers behave as `behaviour`.
    pub fn push_to_registry(&self, image: &str, id: &str, size: u64, behaviour: Behaviour) {
        self.engine().registry.insert(
            image.to_owned(),
            RegistryImage {
                id: id.to_owned(),
                size,
                behaviour,
            },
        );
    }

    /// Every pull fails with `message` until [`FakeRuntime::accept_pulls`].
    pub fn refuse_pulls(&self, message: &str) {
        self.engine().pull_refusal = Some(message.to_owned());
    }

    pub fn accept_pulls(&self) {
        self.engine().pull_refusal = None;
    }

    /// How long a pull takes (500ms unless set).
    pub fn set_pull_latency(&self, latency: Duration) {
        self.engine().pull_latency = latency;
    }

    pub fn set_create_latency(&self, latency: Duration) {
        self.engine().create_latency = latency;
    }

    pub fn calls(&self) -> Calls {
        self.engine().calls
    }

    /// Every container, owned or not, in creation order.
    pub fn containers(&self) -> Vec<FakeContainer> {
        let mut all: Vec<FakeContainer> = self.engine().containers.values().cloned().collect();
        all.sort_by_key(|c| c.created_at_ns);
        all
    }

    pub fn container(&self, id: &ContainerId) -> Option<FakeContainer> {
        self.engine().containers.get(id).cloned()
    }

    /// The service's running containers, oldest first.
    pub fn running(&self, service: &str) -> Vec<FakeContainer> {
        self.containers()
            .into_iter()
            .filter(|c| c.is_running() && c.owned() && c.service() == Some(service))
            .collect()
    }

    /// The service's containers in any state, oldest first.
    pub fn of_service(&self, service: &str) -> Vec<FakeContainer> {
        self.containers()
            .into_iter()
            .filter(|c| c.owned() && c.service() == Some(service))
            .collect()
    }

    pub fn networks(&self) -> Vec<String> {
        self.engine().networks.keys().cloned().collect()
    }

    /// Whether a running container answers on `addr` (what HAProxy's check sees).
    pub fn answers(&self, addr: SocketAddrV4) -> bool {
        self.engine()
            .containers
            .values()
            .any(|c| c.answers_on(addr))
    }

    /// The most live containers (not being stopped) the service had at once at or
    /// after `since`.
    pub fn peak_live(&self, service: &str, since: Instant) -> usize {
        self.engine()
            .population
            .iter()
            .filter(|(at, s, _)| *at >= since && s == service)
            .map(|(_, _, n)| *n)
            .max()
            .unwrap_or(0)
    }

    // --- scripting: the engine -----------------------------------------------------

    /// From now on, the next `n` creates fail with `error` (after the call, before any
    /// container exists); `n = 0` ends the failures still scripted.
    pub fn fail_creates(&self, n: usize, error: FakeError) {
        let mut e = self.engine();
        e.create_failures.clear();
        e.create_failures.extend(std::iter::repeat_n(error, n));
    }

    /// `docker network rm` (or a `docker network prune`): refused, like Docker does,
    /// while a container is attached; returns whether it was removed.
    pub fn remove_network(&self, network: &str) -> bool {
        self.journal
            .record(Call::Outside(format!("network rm {network}")));
        let mut e = self.engine();
        let attached = e.containers.values().any(|c| c.ips.contains_key(network));
        !attached && e.networks.remove(network).is_some()
    }

    /// The next `n` stops fail with `error` before anything is done to the container.
    pub fn fail_stops(&self, n: usize, error: FakeError) {
        let mut e = self.engine();
        e.stop_failures.extend(std::iter::repeat_n(error, n));
    }

    /// Stops hang after the SIGTERM until [`FakeRuntime::release_stops`].
    pub fn hold_stops(&self) {
        self.journal.record(Call::Outside("stops held".into()));
        self.stops_held.send_replace(true);
    }

    pub fn release_stops(&self) {
        self.journal.record(Call::Outside("stops released".into()));
        self.stops_held.send_replace(false);
    }

    /// The engine stops answering: every call fails with `Unavailable`, and open event
    /// streams fail and end.
    pub fn engine_unreachable(&self) {
        self.journal
            .record(Call::Outside("engine unreachable".into()));
        let mut e = self.engine();
        e.reachable = false;
        for s in e.subscribers.drain(..) {
            let _ = s.send(Err(unavailable()));
        }
    }

    /// The engine answers again, as it was.
    pub fn engine_reachable(&self) {
        self.journal
            .record(Call::Outside("engine reachable".into()));
        self.engine().reachable = true;
    }

    /// The engine answers again after a restart: every container that ran was stopped
    /// by it (exited 143, no address) without a `die` reaching any stream, and open
    /// streams are gone.
    pub fn engine_restarted(&self) {
        self.journal
            .record(Call::Outside("engine restarted".into()));
        let mut e = self.engine();
        e.subscribers.clear();
        for c in e.containers.values_mut() {
            if matches!(c.state, ContainerState::Running | ContainerState::Paused) {
                c.state = ContainerState::Exited;
                c.exit_code = Some(SIGTERM_EXIT);
                c.ips.clear();
            }
        }
        e.reachable = true;
        e.count_population();
    }

    /// Open event streams end (the connection closed); new ones work.
    pub fn end_event_streams(&self) {
        self.journal
            .record(Call::Outside("event streams ended".into()));
        self.engine().subscribers.clear();
    }

    /// Open event streams fail with an error, then end.
    pub fn break_event_streams(&self) {
        self.journal
            .record(Call::Outside("event streams broken".into()));
        for s in self.engine().subscribers.drain(..) {
            let _ = s.send(Err(unavailable()));
        }
    }

    /// From now on events are lost (neither streamed nor replayed) until
    /// [`FakeRuntime::deliver_events`].
    pub fn lose_events(&self) {
        self.journal.record(Call::Outside("events lost".into()));
        self.engine().deliver = false;
    }

    pub fn deliver_events(&self) {
        self.journal
            .record(Call::Outside("events delivered".into()));
        self.engine().deliver = true;
    }

    // --- scripting: containers -----------------------------------------------------

    /// A container someone started by hand, without dockscale's labels.
    pub fn run_unmanaged(&self, name: &str, network: &str) -> ContainerId {
        let labels = BTreeMap::from([("purpose".to_owned(), "not dockscale's".to_owned())]);
        self.run_by_hand(name, network, labels)
    }

    /// A container someone started by hand with `dockscale.join=<service>` (`docker run
    /// -d --network <network> --label dockscale.join=<service> webapp`): a member.
    pub fn run_member(&self, name: &str, service: &str, network: &str) -> ContainerId {
        let labels = BTreeMap::from([(LABEL_JOIN.to_owned(), service.to_owned())]);
        self.run_by_hand(name, network, labels)
    }

    /// `docker start` of a hand-started container that had stopped.
    pub fn start_by_hand(&self, id: &ContainerId) {
        self.journal.record(Call::Outside(format!("start {id}")));
        let mut e = self.engine();
        let Some(network) = e
            .containers
            .get(id)
            .filter(|c| matches!(c.state, ContainerState::Exited))
            .map(|c| c.network.clone())
        else {
            return;
        };
        let ip = e.allocate_ip(&network);
        if let Some(c) = e.containers.get_mut(id) {
            c.state = ContainerState::Running;
            c.exit_code = None;
            c.ips.insert(network, ip);
        }
        e.emit_network(id, "connect");
        e.emit(id, "start", None);
    }

    fn run_by_hand(
        &self,
        name: &str,
        network: &str,
        labels: BTreeMap<String, String>,
    ) -> ContainerId {
        self.journal
            .record(Call::Outside(format!("docker run {name} on {network}")));
        let mut e = self.engine();
        let id = e.new_id();
        let ip = e.allocate_ip(network);
        let created_at_ns = crate::controller::clock::unix_ns(std::time::SystemTime::now());
        e.containers.insert(
            id.clone(),
            FakeContainer {
                id: id.clone(),
                name: name.to_owned(),
                image: WEBAPP_IMAGE.to_owned(),
                labels,
                state: ContainerState::Running,
                exit_code: None,
                oom_killed: false,
                network: network.to_owned(),
                ips: BTreeMap::from([(network.to_owned(), ip)]),
                port: Some(8080),
                created_at_ns,
                answers: true,
                stopping: false,
                health: None,
            },
        );
        // `docker run` connects it to its network, then starts it.
        e.emit_network(&id, "connect");
        e.emit(&id, "start", None);
        id
    }

    /// `docker kill`: SIGKILL, `kill` then `die` 137.
    pub fn kill(&self, id: &ContainerId) {
        self.journal.record(Call::Outside(format!("kill {id}")));
        let mut e = self.engine();
        e.signal(id);
        e.exit(id, SIGKILL_EXIT);
    }

    /// `docker stop` from outside: `kill` (SIGTERM), `die` 143, `stop`.
    pub fn stop_from_outside(&self, id: &ContainerId) {
        self.journal.record(Call::Outside(format!("stop {id}")));
        let mut e = self.engine();
        e.signal(id);
        e.exit(id, SIGTERM_EXIT);
        e.emit(id, "stop", None);
    }

    /// `docker rm -f` from outside: `kill`, the network's `disconnect`, `die` 137,
    /// `destroy`; the container is gone.
    pub fn remove_from_outside(&self, id: &ContainerId) {
        self.journal.record(Call::Outside(format!("rm -f {id}")));
        let mut e = self.engine();
        e.signal(id);
        e.exit(id, SIGKILL_EXIT);
        e.destroy(id);
    }

    /// The process exits by itself with `code` (no signal before: a crash).
    pub fn crash(&self, id: &ContainerId, code: i64) {
        self.journal
            .record(Call::Outside(format!("crash {id} ({code})")));
        self.engine().exit(id, code);
    }

    /// A crash whose `die` reaches the stream `lag` after the network's `disconnect`
    /// (moby releases the network, writes the container's state to disk, and only
    /// then logs the `die`): a read in between finds it exited without its `die`.
    pub fn crash_with_late_die(&self, id: &ContainerId, code: i64, lag: Duration) {
        self.journal.record(Call::Outside(format!(
            "crash {id} ({code}), its die {lag:?} late"
        )));
        let mut e = self.engine();
        let deliver = e.deliver;
        e.deliver = false;
        e.exit(id, code);
        e.deliver = deliver;
        e.emit_network(id, "disconnect");
        let engine = self.engine.clone();
        let id = id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(lag).await;
            lock(&engine).emit(&id, "die", Some(code));
        });
    }

    /// The kernel OOM-kills it: `oom`, then `die` 137.
    pub fn oom_kill(&self, id: &ContainerId) {
        self.journal.record(Call::Outside(format!("oom {id}")));
        let mut e = self.engine();
        if let Some(c) = e.containers.get_mut(id) {
            c.oom_killed = true;
        }
        e.emit(id, "oom", None);
        e.exit(id, SIGKILL_EXIT);
    }

    /// `docker pause`: still has its address, answers nothing.
    pub fn pause(&self, id: &ContainerId) {
        self.journal.record(Call::Outside(format!("pause {id}")));
        let mut e = self.engine();
        if let Some(c) = e.containers.get_mut(id).filter(|c| c.is_running()) {
            c.state = ContainerState::Paused;
            e.emit(id, "pause", None);
        }
    }

    pub fn unpause(&self, id: &ContainerId) {
        self.journal.record(Call::Outside(format!("unpause {id}")));
        let mut e = self.engine();
        if let Some(c) = e
            .containers
            .get_mut(id)
            .filter(|c| c.state == ContainerState::Paused)
        {
            c.state = ContainerState::Running;
            e.emit(id, "unpause", None);
        }
    }

    /// `docker network disconnect`: the container keeps running without its address.
    pub fn disconnect(&self, id: &ContainerId, network: &str) {
        self.journal
            .record(Call::Outside(format!("disconnect {id} from {network}")));
        let mut e = self.engine();
        if let Some(c) = e.containers.get_mut(id) {
            if c.ips.remove(network).is_some() {
                e.emit_network(id, "disconnect");
            }
        }
    }

    /// Its health check's verdict changes, with Docker's `health_status: ...` event.
    pub fn set_health(&self, id: &ContainerId, health: Health) {
        self.journal
            .record(Call::Outside(format!("{id} health: {}", health.as_str())));
        let mut e = self.engine();
        if let Some(c) = e.containers.get_mut(id).filter(|c| c.is_running()) {
            c.health = Some(health);
            e.emit(id, &format!("health_status: {}", health.as_str()), None);
        }
    }

    /// Whether the container's port answers the readiness probe (and HAProxy's check).
    pub fn set_answering(&self, id: &ContainerId, answers: bool) {
        self.journal
            .record(Call::Outside(format!("{id} answers: {answers}")));
        if let Some(c) = self.engine().containers.get_mut(id) {
            c.answers = answers;
        }
    }
}

impl Engine {
    fn new_id(&mut self) -> ContainerId {
        let n = self.next_id;
        self.next_id += 1;
        // Twelve characters, so `ContainerId::short` shows all of it.
        ContainerId(format!("fake{n:08}"))
    }

    fn allocate_ip(&mut self, network: &str) -> Ipv4Addr {
        let count = self.networks.len();
        let net = self
            .networks
            .entry(network.to_owned())
            .or_insert_with(|| Network {
                index: u8::try_from(count + 1).unwrap_or(u8::MAX),
                next_host: 2,
            });
        let host = net.next_host;
        net.next_host += 1;
        let [_, _, hi, lo] = host.to_be_bytes();
        Ipv4Addr::new(10, net.index, hi, lo)
    }

    fn count_population(&mut self) {
        let mut by_service: BTreeMap<String, usize> = BTreeMap::new();
        for c in self.containers.values() {
            let Some(service) = c.service().filter(|_| c.owned()) else {
                continue;
            };
            let live = !c.stopping
                && matches!(
                    c.state,
                    ContainerState::Created | ContainerState::Running | ContainerState::Paused
                );
            *by_service.entry(service.to_owned()).or_default() += usize::from(live);
        }
        let now = Instant::now();
        for (service, n) in by_service {
            self.population.push((now, service, n));
        }
    }

    /// Streams an event about a container, as Docker would: a container's own event
    /// only for owned containers and members (the adapter filters on the labels).
    fn emit(&mut self, id: &ContainerId, action: &str, exit_code: Option<i64>) {
        let Some(c) = self.containers.get(id) else {
            return;
        };
        let (service, member) = match (c.owned(), c.member()) {
            (true, _) => (c.service().map(str::to_owned), false),
            (false, Some(m)) => (Some(m.service), true),
            (false, None) => return,
        };
        let event = ContainerEvent {
            action: action.to_owned(),
            id: id.clone(),
            service,
            exit_code,
            member,
        };
        self.publish(event);
    }

    /// A network's event about a container (any container: no labels on it).
    fn emit_network(&mut self, id: &ContainerId, action: &str) {
        let event = ContainerEvent {
            action: action.to_owned(),
            id: id.clone(),
            service: None,
            exit_code: None,
            member: false,
        };
        self.publish(event);
    }

    fn publish(&mut self, event: ContainerEvent) {
        if !self.deliver {
            return;
        }
        let now = Instant::now();
        while self
            .history
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > REPLAY)
        {
            self.history.pop_front();
        }
        self.history.push_back((now, event.clone()));
        self.subscribers
            .retain(|s| s.send(Ok(event.clone())).is_ok());
    }

    /// Someone sent a signal (`kill` event; Docker's `signal` attribute is not passed
    /// on by the adapter).
    fn signal(&mut self, id: &ContainerId) {
        if self
            .containers
            .get(id)
            .is_some_and(|c| matches!(c.state, ContainerState::Running | ContainerState::Paused))
        {
            self.emit(id, "kill", None);
        }
    }

    /// The process ended with `code`: exited, without an address. As in moby's
    /// `handleContainerExit`, the network is released (its `disconnect`) before the
    /// `die` is logged, so a read prompted by the `disconnect` can find the container
    /// exited before its `die` arrives.
    fn exit(&mut self, id: &ContainerId, code: i64) {
        let Some(c) = self.containers.get_mut(id) else {
            return;
        };
        if !matches!(c.state, ContainerState::Running | ContainerState::Paused) {
            return;
        }
        c.state = ContainerState::Exited;
        c.exit_code = Some(code);
        let connected = !std::mem::take(&mut c.ips).is_empty();
        if connected {
            self.emit_network(id, "disconnect");
        }
        self.emit(id, "die", Some(code));
        self.count_population();
    }

    /// Removed: `destroy`; the container is gone.
    fn destroy(&mut self, id: &ContainerId) {
        if !self.containers.contains_key(id) {
            return;
        }
        self.emit(id, "destroy", None);
        self.containers.remove(id);
        self.count_population();
    }
}

/// A create in flight, from the call until it returns (however it returns).
struct InFlight<'a>(&'a Mutex<Engine>);

impl<'a> InFlight<'a> {
    fn begin(engine: &'a Mutex<Engine>) -> Self {
        let mut e = lock(engine);
        e.creates_in_flight += 1;
        e.calls.max_creates_in_flight = e.calls.max_creates_in_flight.max(e.creates_in_flight);
        InFlight(engine)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(self.0).creates_in_flight -= 1;
    }
}

impl ContainerRuntime for FakeRuntime {
    async fn list_owned(&self) -> Result<Vec<Replica>, DockerError> {
        self.round_trip().await;
        self.journal.record(Call::List);
        let mut e = self.engine();
        e.calls.lists += 1;
        if !e.reachable {
            return Err(unavailable());
        }
        Ok(e.containers
            .values()
            .filter_map(|c| c.replica(false))
            .collect())
    }

    async fn list_members(&self) -> Result<Vec<Member>, DockerError> {
        self.round_trip().await;
        self.journal.record(Call::ListMembers);
        let e = self.engine();
        if !e.reachable {
            return Err(unavailable());
        }
        Ok(e.containers
            .values()
            .filter_map(FakeContainer::member)
            .collect())
    }

    async fn inspect_owned(&self, id: &ContainerId) -> Result<Option<Replica>, DockerError> {
        self.round_trip().await;
        self.journal.record(Call::Inspect(id.clone()));
        let mut e = self.engine();
        e.calls.inspects += 1;
        if !e.reachable {
            return Err(unavailable());
        }
        Ok(e.containers.get(id).and_then(|c| c.replica(true)))
    }

    async fn ensure_network(&self, name: &str) -> Result<(), DockerError> {
        self.round_trip().await;
        self.journal.record(Call::EnsureNetwork(name.to_owned()));
        let mut e = self.engine();
        if !e.reachable {
            return Err(unavailable());
        }
        let count = e.networks.len();
        e.networks
            .entry(name.to_owned())
            .or_insert_with(|| Network {
                index: u8::try_from(count + 1).unwrap_or(u8::MAX),
                next_host: 2,
            });
        Ok(())
    }

    async fn image_present(&self, image: &str) -> Result<bool, DockerError> {
        self.round_trip().await;
        self.journal.record(Call::ImagePresent(image.to_owned()));
        let mut e = self.engine();
        e.calls.image_checks += 1;
        if !e.reachable {
            return Err(unavailable());
        }
        Ok(e.images.contains_key(image))
    }

    async fn pull_image(&self, image: &str) -> Result<PulledImage, DockerError> {
        self.round_trip().await;
        self.journal.record(Call::Pull(image.to_owned()));
        let latency = {
            let mut e = self.engine();
            e.calls.pulls += 1;
            e.pull_latency
        };
        tokio::time::sleep(latency).await;
        let mut e = self.engine();
        if !e.reachable {
            return Err(unavailable());
        }
        let failed = |message: String| DockerError::PullFailed {
            image: image.to_owned(),
            message,
        };
        if let Some(message) = e.pull_refusal.clone() {
            return Err(failed(message));
        }
        let Some(pushed) = e.registry.get(image).cloned() else {
            return Err(failed("manifest unknown".to_owned()));
        };
        let before = e.local_ids.insert(image.to_owned(), pushed.id.clone());
        e.images.insert(image.to_owned(), pushed.behaviour);
        let downloaded_bytes = if before.as_deref() == Some(pushed.id.as_str()) {
            0
        } else {
            pushed.size
        };
        Ok(PulledImage {
            id: pushed.id,
            downloaded_bytes,
        })
    }

    async fn create_and_start(&self, request: CreateReplica) -> Result<ContainerId, DockerError> {
        self.round_trip().await;
        self.journal.record(Call::Create {
            name: request.name.clone(),
            service: request.service.clone(),
        });
        let image = request.spec.template.image.clone();
        let network = request.spec.network.as_str().to_owned();
        let _in_flight = InFlight::begin(&self.engine);
        let (id, latency, behaviour) = {
            let mut e = self.engine();
            e.calls.creates += 1;
            if !e.reachable {
                return Err(unavailable());
            }
            if let Some(failure) = e.create_failures.pop_front() {
                return Err(failure.to_docker("create container", &image));
            }
            let Some(behaviour) = e.images.get(&image).copied() else {
                return Err(DockerError::ImageNotFound { image });
            };
            if e.containers.values().any(|c| c.name == request.name) {
                return Err(DockerError::Api {
                    action: "create container",
                    status: 409,
                    message: format!("the container name \"/{}\" is already in use", request.name),
                });
            }
            if !e.networks.contains_key(&network) {
                // The engine answers 404 "network ... not found", which the Docker
                // adapter tells from a missing image by its message.
                return Err(DockerError::NetworkNotFound { network });
            }
            let id = e.new_id();
            let labels = replica_labels(
                &request.service,
                &request.template_hash,
                request.created_at_ns,
                &request.spec.template.labels,
            );
            e.containers.insert(
                id.clone(),
                FakeContainer {
                    id: id.clone(),
                    name: request.name.clone(),
                    image: image.clone(),
                    labels,
                    state: ContainerState::Created,
                    exit_code: None,
                    oom_killed: false,
                    network: network.clone(),
                    ips: BTreeMap::new(),
                    port: request.spec.template.port,
                    created_at_ns: request.created_at_ns,
                    answers: !behaviour.never_answers,
                    stopping: false,
                    health: request
                        .spec
                        .template
                        .healthcheck
                        .as_ref()
                        .filter(|h| !h.disable)
                        .map(|_| Health::Starting),
                },
            );
            e.count_population();
            (id, e.create_latency, behaviour)
        };
        tokio::time::sleep(latency / 2).await;
        let started = {
            let mut e = self.engine();
            if !e.reachable {
                Err(unavailable())
            } else if e.containers.contains_key(&id) {
                let ip = e.allocate_ip(&network);
                if let Some(c) = e.containers.get_mut(&id) {
                    c.state = ContainerState::Running;
                    c.ips.insert(network.clone(), ip);
                }
                e.emit_network(&id, "connect");
                e.emit(&id, "start", None);
                e.count_population();
                Ok(())
            } else {
                Err(DockerError::Api {
                    action: "start container",
                    status: 404,
                    message: format!("no such container: {id}"),
                })
            }
        };
        started?;
        if let Some(after) = behaviour.crashes_after {
            // The process ends by itself later, whatever the controller does meanwhile.
            let engine = self.engine.clone();
            let journal = self.journal.clone();
            let id = id.clone();
            let code = behaviour.crash_code;
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                journal.record(Call::Outside(format!("{id} exits by itself ({code})")));
                lock(&engine).exit(&id, code);
            });
        }
        tokio::time::sleep(latency - latency / 2).await;
        Ok(id)
    }

    async fn stop_and_remove(&self, id: &ContainerId, _grace: Duration) -> Result<(), DockerError> {
        self.round_trip().await;
        let (name, addrs) = {
            let e = self.engine();
            e.containers
                .get(id)
                .map(|c| (c.name.clone(), c.ips.values().copied().collect()))
                .unwrap_or_default()
        };
        self.journal.record(Call::Stop {
            id: id.clone(),
            name,
            addrs,
        });
        let latency = {
            let mut e = self.engine();
            e.calls.stops += 1;
            if !e.reachable {
                return Err(unavailable());
            }
            if let Some(failure) = e.stop_failures.pop_front() {
                return Err(failure.to_docker("stop container", ""));
            }
            e.signal(id);
            if let Some(c) = e.containers.get_mut(id) {
                c.stopping = true;
            }
            e.count_population();
            e.stop_latency
        };
        let mut held = self.stops_held.subscribe();
        while *held.borrow_and_update() {
            if held.changed().await.is_err() {
                break;
            }
        }
        tokio::time::sleep(latency).await;
        let mut e = self.engine();
        if !e.reachable {
            return Err(unavailable());
        }
        if e.containers
            .get(id)
            .is_some_and(|c| matches!(c.state, ContainerState::Running | ContainerState::Paused))
        {
            e.exit(id, SIGTERM_EXIT);
            e.emit(id, "stop", None);
        }
        e.destroy(id);
        Ok(())
    }

    async fn pause(&self, id: &ContainerId) -> Result<(), DockerError> {
        self.round_trip().await;
        self.journal.record(Call::Pause(id.clone()));
        let mut e = self.engine();
        if !e.reachable {
            return Err(unavailable());
        }
        match e.containers.get_mut(id) {
            Some(c) if c.is_running() => {
                c.state = ContainerState::Paused;
                e.emit(id, "pause", None);
                Ok(())
            }
            Some(_) => Err(DockerError::Api {
                action: "pause container",
                status: 409,
                message: format!("container {id} is not running"),
            }),
            None => Err(no_such_container("pause container", id)),
        }
    }

    async fn unpause(&self, id: &ContainerId) -> Result<(), DockerError> {
        self.round_trip().await;
        self.journal.record(Call::Unpause(id.clone()));
        let mut e = self.engine();
        if !e.reachable {
            return Err(unavailable());
        }
        match e.containers.get_mut(id) {
            Some(c) if c.state == ContainerState::Paused => {
                c.state = ContainerState::Running;
                e.emit(id, "unpause", None);
                Ok(())
            }
            Some(c) if c.is_running() => Ok(()),
            Some(_) => Err(DockerError::Api {
                action: "unpause container",
                status: 409,
                message: format!("container {id} is not paused"),
            }),
            None => Err(no_such_container("unpause container", id)),
        }
    }

    async fn rename(&self, id: &ContainerId, name: &str) -> Result<(), DockerError> {
        self.round_trip().await;
        self.journal.record(Call::Rename {
            id: id.clone(),
            name: name.to_owned(),
        });
        let mut e = self.engine();
        if !e.reachable {
            return Err(unavailable());
        }
        if e.containers.values().any(|c| c.name == name && &c.id != id) {
            return Err(DockerError::Api {
                action: "rename container",
                status: 409,
                message: format!("the container name \"/{name}\" is already in use"),
            });
        }
        match e.containers.get_mut(id) {
            Some(c) => {
                c.name = name.to_owned();
                e.emit(id, "rename", None);
                Ok(())
            }
            None => Err(no_such_container("rename container", id)),
        }
    }

    fn events(&self) -> BoxStream<'static, Result<ContainerEvent, DockerError>> {
        self.journal.record(Call::Subscribe);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut e = self.engine();
        e.calls.subscribes += 1;
        if !e.reachable {
            let _ = tx.send(Err(unavailable()));
        } else {
            let now = Instant::now();
            for (at, event) in &e.history {
                if now.saturating_duration_since(*at) <= REPLAY {
                    let _ = tx.send(Ok(event.clone()));
                }
            }
            e.subscribers.push(tx);
        }
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed()
    }

    async fn ping(&self) -> Result<(), DockerError> {
        if self.engine().reachable {
            Ok(())
        } else {
            Err(unavailable())
        }
    }

    async fn engine_id(&self) -> Result<String, DockerError> {
        self.ping().await.map(|()| "FAKE:ENGINE:0001".to_owned())
    }

    async fn answering(
        &self,
        targets: Vec<(ContainerId, SocketAddrV4)>,
        _probe: &super::Probe,
        _timeout: Duration,
    ) -> BTreeSet<ContainerId> {
        let e = self.engine();
        targets
            .into_iter()
            .filter(|(id, addr)| e.containers.get(id).is_some_and(|c| c.answers_on(*addr)))
            .map(|(id, _)| id)
            .collect()
    }
}
