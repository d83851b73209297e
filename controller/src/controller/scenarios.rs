//! Whole controller passes against the in-memory adapters ([`FakeRuntime`],
//! [`FakeBalancer`]) under paused tokio time: the loop, the executor and the status,
//! in milliseconds, without Docker or HAProxy. The end-to-end tests in `tests/tests`
//! have fast twins here (named alike where the scenario is the same); the slow ones
//! stay the proof against the real engine and HAProxy. Not twinned: what lives
//! outside the [`Controller`] (the engine claim and `--standby`, the HTTP server and
//! `/readyz`, the managed HAProxy process, a real Prometheus, the private engine
//! fixture) and what only real traffic shows (sticky sessions, failed requests).
//!
//! A test builds its specs with [`svc`], starts a [`World`] (spec file in a temporary
//! directory, the fakes, a running [`Controller`]), scripts what happens from outside
//! through the fakes, and waits with [`World::until`] on virtual time. The invariants
//! of DESIGN.md that hold at every step are checked by [`World::check_invariants`].

mod adoption;
mod autoscale;
mod canary;
mod chaos;
mod crash_loop;
mod engine;
mod guard;
mod haproxy;
mod health;
mod lifecycle;
mod members;
mod pull;
mod regressions;
mod rollout;
mod rollout_control;
mod scale_to_zero;
mod spec_edits;
mod warm_pool;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::controller::clock::Clock;
use crate::controller::rollouts::{CommandReply, CommandRequest};
use crate::controller::watch::Change;
use crate::controller::{Controller, Settings};
use crate::lb::fake::{rotation_violations, FakeBalancer, LbCall};
use crate::model::replica::{is_warm_name, template_hash, ContainerId};
use crate::reconcile::control::RolloutCommand;
use crate::runtime::fake::{Call, FakeContainer, FakeRuntime, Journal, WEBAPP_IMAGE};
use crate::serve::metrics::Metrics;
use crate::serve::status::{Condition, ConditionType, Event, ServiceStatus, StatusHandle};
use crate::spec::{manifest, ScaledService};

/// The network every test service is on (the spec's default).
const NET: &str = "dockscale";

/// A `ScaledService` document, written as a user would: `svc("web").replicas(3).lb()`.
#[derive(Clone, Debug)]
struct Svc {
    name: String,
    replicas: u32,
    image: String,
    /// `template.imagePullPolicy`, when set.
    pull: Option<&'static str>,
    version: u32,
    grace: String,
    lb: bool,
    drain_timeout: String,
    check: bool,
    rollout: (u32, u32),
    autoscale: Option<(u32, u32)>,
    /// `autoscale.fallback` as written (`{after: 30s, replicas: 7}`).
    fallback: Option<String>,
    /// `autoscale.scaleToZero` as written (`{idleAfter: 30s}`).
    scale_to_zero: Option<String>,
    /// `autoscale.schedules` as written (a flow list).
    schedules: Option<String>,
    /// `autoscale.warmPool.size`.
    warm_pool: Option<u32>,
    /// A container health check, and `unhealthyReplaceAfter`.
    healthcheck: Option<String>,
    /// More `rollout` fields (a canary's strategy, steps and analysis), as YAML.
    rollout_extra: String,
}

fn svc(name: &str) -> Svc {
    Svc {
        name: name.to_owned(),
        replicas: 1,
        image: WEBAPP_IMAGE.to_owned(),
        pull: None,
        version: 1,
        grace: "10s".to_owned(),
        lb: false,
        drain_timeout: "30s".to_owned(),
        check: true,
        rollout: (1, 0),
        autoscale: None,
        fallback: None,
        scale_to_zero: None,
        schedules: None,
        warm_pool: None,
        healthcheck: None,
        rollout_extra: String::new(),
    }
}

impl Svc {
    fn replicas(mut self, n: u32) -> Self {
        self.replicas = n;
        self
    }

    /// Behind the HAProxy backend named like the service.
    fn lb(mut self) -> Self {
        self.lb = true;
        self
    }

    fn drain_timeout(mut self, d: &str) -> Self {
        self.drain_timeout = d.to_owned();
        self
    }

    fn image(mut self, image: &str) -> Self {
        self.image = image.to_owned();
        self
    }

    /// `IfNotPresent`, `Always` or `Never`.
    fn pull(mut self, policy: &'static str) -> Self {
        self.pull = Some(policy);
        self
    }

    /// A template change (the `VERSION` variable): a rollout.
    fn version(mut self, v: u32) -> Self {
        self.version = v;
        self
    }

    /// A canary rollout: 25% for 10s, then 50% for 10s, analysed on 20 requests.
    fn canary(mut self) -> Self {
        self.rollout_extra = ", strategy: canary, steps: [{weight: 25, pause: 10s}, \
                              {weight: 50, pause: 10s}], analysis: {interval: 1s, \
                              minRequests: 20}"
            .to_owned();
        self
    }

    /// A rolling update guarded by the analysis: each batch watched for 2s, judged on
    /// 20 requests.
    fn analysed(mut self) -> Self {
        self.rollout_extra = ", analysis: {interval: 2s, minRequests: 20}".to_owned();
        self
    }

    fn rollout(mut self, max_surge: u32, max_unavailable: u32) -> Self {
        self.rollout = (max_surge, max_unavailable);
        self
    }

    /// Autoscaled on 8 requests in flight per replica.
    fn autoscale(mut self, min: u32, max: u32) -> Self {
        self.autoscale = Some((min, max));
        self.lb = true;
        self
    }

    /// With `autoscale.fallback` (after `autoscale`).
    fn fallback(mut self, fallback: &str) -> Self {
        self.fallback = Some(fallback.to_owned());
        self
    }

    /// Autoscaled from 0 to `max` with `autoscale.scaleToZero` as written.
    fn scale_to_zero(mut self, max: u32, scale_to_zero: &str) -> Self {
        self = self.autoscale(0, max);
        self.scale_to_zero = Some(scale_to_zero.to_owned());
        self
    }
    /// With `autoscale.schedules` (after `autoscale`).
    fn schedules(mut self, schedules: &str) -> Self {
        self.schedules = Some(schedules.to_owned());
        self
    }

    /// With `autoscale.warmPool: {size}` (after `autoscale`).
    fn warm_pool(mut self, size: u32) -> Self {
        self.warm_pool = Some(size);
        self
    }

    /// With a container health check; unhealthy replicas replaced after `replace_after`.
    fn healthcheck(mut self, replace_after: &str) -> Self {
        self.healthcheck = Some(replace_after.to_owned());
        self
    }

    fn yaml(&self) -> String {
        let mut y = format!(
            "apiVersion: dockscale/v1alpha1\n\
             kind: ScaledService\n\
             metadata: {{name: {name}}}\n\
             spec:\n  \
               replicas: {replicas}\n  \
               template:\n    \
                 image: {image}\n    \
                 {pull}\
                 port: 8080\n    \
                 env: {{VERSION: \"{version}\"}}\n    \
                 stopGracePeriod: {grace}\n  \
               rollout: {{maxSurge: {surge}, maxUnavailable: {unavailable}{extra}}}\n",
            name = self.name,
            replicas = self.replicas,
            image = self.image,
            pull = self
                .pull
                .map(|p| format!("imagePullPolicy: {p}\n    "))
                .unwrap_or_default(),
            version = self.version,
            grace = self.grace,
            surge = self.rollout.0,
            unavailable = self.rollout.1,
            extra = self.rollout_extra,
        );
        if let Some(after) = &self.healthcheck {
            let at = y.find("  rollout:").unwrap_or(y.len());
            y.insert_str(
                at,
                &format!(
                    "    healthcheck: {{command: [/dockscale-webapp, check], interval: 1s}}\n    \
                     unhealthyReplaceAfter: {after}\n"
                ),
            );
        }
        if self.lb {
            y.push_str(&format!(
                "  loadBalancer:\n    \
                   backend: {name}\n    \
                   server: {{check: {check}, weight: 100}}\n    \
                   drainTimeout: {drain}\n",
                name = self.name,
                check = self.check,
                drain = self.drain_timeout,
            ));
        }
        if let Some((min, max)) = self.autoscale {
            y.push_str(&format!(
                "  autoscale:\n    \
                   minReplicas: {min}\n    \
                   maxReplicas: {max}\n    \
                   target: {{inflightPerReplica: 8}}\n"
            ));
            if let Some(f) = &self.fallback {
                y.push_str(&format!("    fallback: {f}\n"));
            }
            if let Some(z) = &self.scale_to_zero {
                y.push_str(&format!("    scaleToZero: {z}\n"));
            }
            if let Some(s) = &self.schedules {
                y.push_str(&format!("    schedules: {s}\n"));
            }
            if let Some(size) = self.warm_pool {
                y.push_str(&format!("    warmPool: {{size: {size}}}\n"));
            }
        }
        y
    }
}

fn documents(services: &[Svc]) -> String {
    services
        .iter()
        .map(Svc::yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A controller running on the fakes, as a task.
struct Running {
    changes: mpsc::UnboundedSender<Change>,
    /// Rollout commands, as the HTTP server sends them.
    commands: mpsc::Sender<CommandRequest>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// One test's world: the spec file, the fakes, the controller over them.
struct World {
    _dir: tempfile::TempDir,
    spec_path: PathBuf,
    rt: Arc<FakeRuntime>,
    lb: Arc<FakeBalancer>,
    settings: Settings,
    status: StatusHandle,
    metrics: Arc<Metrics>,
    controller: Option<Running>,
    /// The services of the last valid spec written, with their template hashes: what
    /// converging means.
    expected: RefCell<BTreeMap<String, (ScaledService, String)>>,
}

/// The services a spec text describes, `None` when it does not validate.
fn parse(text: &str) -> Option<BTreeMap<String, (ScaledService, String)>> {
    let loaded = manifest::parse_str(std::path::Path::new("service.yaml"), text).ok()?;
    Some(
        loaded
            .into_iter()
            .map(|l| {
                let hash = template_hash(&l.service.spec);
                (l.service.name().to_owned(), (l.service, hash))
            })
            .collect(),
    )
}

impl World {
    /// The fakes and the spec file; [`World::start`] starts the controller.
    fn new(services: &[Svc]) -> Self {
        init_tracing();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let spec_path = dir.path().join("service.yaml");
        let text = documents(services);
        std::fs::write(&spec_path, &text).expect("write the spec");
        let rt = Arc::new(FakeRuntime::new());
        let lb = Arc::new(FakeBalancer::new(rt.clone()));
        let settings = Settings {
            paths: vec![spec_path.clone()],
            clock: Clock::following_tokio(),
            history_dir: Some(dir.path().join("rollouts")),
            ..Settings::default()
        };
        World {
            _dir: dir,
            spec_path,
            rt,
            lb,
            settings,
            status: StatusHandle::default(),
            metrics: Arc::new(Metrics::new()),
            controller: None,
            expected: RefCell::new(parse(&text).expect("a valid spec")),
        }
    }

    /// An external HAProxy that declares these backends (name, slots).
    fn with_external_haproxy(mut self, backends: &[(&str, u32)]) -> Self {
        self.lb = Arc::new(FakeBalancer::external(self.rt.clone(), backends));
        self
    }

    fn with_settings(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        f(&mut self.settings);
        self
    }

    fn start(mut self) -> Self {
        self.start_controller();
        self
    }

    /// Starts a controller on the fakes, with a fresh status and metrics, as a
    /// restarted `dockscale run` would.
    fn start_controller(&mut self) {
        assert!(self.controller.is_none(), "a controller is running already");
        let services = manifest::load(&self.settings.paths).expect("the spec loads");
        self.status = StatusHandle::default();
        self.metrics = Arc::new(Metrics::new());
        let controller = Controller::new(
            self.settings.clone(),
            services,
            self.rt.clone(),
            self.lb.clone(),
            self.status.clone(),
            self.metrics.clone(),
        );
        let (commands, command_rx) = mpsc::channel(16);
        let controller = controller.with_rollout_commands(command_rx);
        let (changes, spec_changes) = mpsc::unbounded_channel();
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(controller.run(spec_changes, async {
            let _ = stop.await;
        }));
        self.controller = Some(Running {
            changes,
            commands,
            shutdown,
            task,
        });
    }

    async fn stop_controller(&mut self) {
        let running = self.controller.take().expect("a running controller");
        let _ = running.shutdown.send(());
        running.task.await.expect("the controller stops cleanly");
    }

    /// Rewrites the spec file and tells the controller, as an editor's rename would.
    fn edit(&self, services: &[Svc]) {
        self.write(&documents(services));
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.spec_path, text).expect("write the spec");
        if let Some(services) = parse(text) {
            *self.expected.borrow_mut() = services;
        }
        self.notify();
    }

    fn notify(&self) {
        if let Some(c) = &self.controller {
            let _ = c.changes.send(Change::Replaced);
        }
    }

    /// Sends a rollout command to the running controller, as the HTTP server does, and
    /// waits for its answer.
    async fn command(&self, service: &str, command: RolloutCommand) -> CommandReply {
        let running = self.controller.as_ref().expect("a running controller");
        let (reply, answer) = oneshot::channel();
        running
            .commands
            .send(CommandRequest {
                service: service.to_owned(),
                command,
                reply,
            })
            .await
            .expect("the controller takes commands");
        answer.await.expect("the controller answers")
    }

    fn journal(&self) -> Journal {
        self.rt.journal()
    }

    /// Waits (on virtual time) until `done` holds; returns how long it took. Fails the
    /// test with a description of the world when it does not hold `within`.
    async fn until(&self, what: &str, within: Duration, done: impl Fn(&World) -> bool) -> Duration {
        let start = Instant::now();
        // Let the controller take what is ready (a spec change) before looking.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        loop {
            if done(self) {
                return start.elapsed();
            }
            if start.elapsed() >= within {
                panic!("{what}: not within {within:?}\n{}", self.describe());
            }
            // Fine steps while things move fast, coarser over long waits.
            let step = if start.elapsed() < secs(2) {
                ms(5)
            } else {
                ms(50)
            };
            tokio::time::sleep(step).await;
        }
    }

    /// Lets `d` of virtual time pass.
    async fn settle(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// The service's running replicas (its warm containers are not replicas).
    fn running(&self, service: &str) -> Vec<FakeContainer> {
        let mut running = self.rt.running(service);
        running.retain(|c| !is_warm_name(service, &c.name));
        running
    }

    /// The service's warm containers, in any state.
    fn warm(&self, service: &str) -> Vec<FakeContainer> {
        let mut all = self.rt.of_service(service);
        all.retain(|c| is_warm_name(service, &c.name));
        all
    }

    fn running_ids(&self, service: &str) -> BTreeSet<ContainerId> {
        self.running(service).into_iter().map(|c| c.id).collect()
    }

    /// The addresses HAProxy sends new sessions to.
    fn serving(&self, backend: &str) -> BTreeSet<SocketAddrV4> {
        self.lb.serving(backend).into_iter().collect()
    }

    fn status(&self, service: &str) -> Option<ServiceStatus> {
        self.status.read().services.get(service).cloned()
    }

    fn events(&self, service: &str) -> Vec<Event> {
        self.status(service)
            .map(|s| s.events.into_iter().collect())
            .unwrap_or_default()
    }

    fn events_with(&self, service: &str, reason: &str) -> Vec<Event> {
        self.events(service)
            .into_iter()
            .filter(|e| e.reason == reason)
            .collect()
    }

    fn condition(&self, service: &str, kind: ConditionType) -> Option<Condition> {
        self.status(service)?.condition(kind).cloned()
    }

    /// Asserts that `service`'s rollout was aborted once, its event's message holding
    /// `because`, and that `Progressing` says so.
    fn assert_aborted(&self, service: &str, because: &str) {
        let aborted = self.events_with(service, "RolloutAborted");
        assert_eq!(aborted.len(), 1, "{:?}", self.events(service));
        assert!(
            aborted[0].message.contains(because),
            "{}",
            aborted[0].message
        );
        let progressing = self
            .condition(service, ConditionType::Progressing)
            .expect("condition");
        assert_eq!(
            (progressing.status, progressing.reason.as_str()),
            (false, "RolloutAborted")
        );
    }

    /// `n` replicas running, every one of the template last written, ready in the
    /// status, and (with a load balancer) exactly them serving in its backend.
    fn converged(&self, service: &str, n: usize) -> bool {
        let expected = self.expected.borrow();
        let Some((spec, hash)) = expected.get(service) else {
            return false;
        };
        // Read in place: cloning the whole status at every poll is what a long wait
        // would spend its time on.
        let Some((r, status_hash)) = self.status.update(|s| {
            let svc = s.services.get(service)?;
            Some((svc.replicas, svc.template_hash.clone()))
        }) else {
            return false;
        };
        let running = self.running(service);
        let mut all = self.rt.of_service(service);
        all.retain(|c| !is_warm_name(service, &c.name));
        let counts = running.len() == n
            && all.len() == n
            && r.desired as usize == n
            && r.ready as usize == n
            && r.ready_updated as usize == n
            && r.pending == 0
            && r.terminating == 0
            && status_hash == *hash
            && running
                .iter()
                .all(|c| c.template_hash() == Some(hash.as_str()));
        counts
            && spec.spec.load_balancer.as_ref().is_none_or(|lb| {
                let backend = lb.backend.as_str();
                let addrs: BTreeSet<SocketAddrV4> =
                    running.iter().filter_map(FakeContainer::addr).collect();
                self.serving(backend) == addrs && self.lb.in_rotation(backend).len() == n
            })
    }

    /// Waits until `service` has converged on `n` replicas.
    async fn converge(&self, service: &str, n: usize, within: Duration) -> Duration {
        self.until(&format!("{service} converged on {n}"), within, |w| {
            w.converged(service, n)
        })
        .await
    }

    /// Invariants 1 and 2 over everything journaled so far: no container without the
    /// managed-by label was stopped, and none was stopped while its server was in
    /// rotation.
    fn check_invariants(&self) {
        let violations = rotation_violations(&self.journal());
        assert!(
            violations.is_empty(),
            "stopped while in rotation:\n{}",
            violations.join("\n")
        );
        let unmanaged: BTreeSet<ContainerId> = self
            .rt
            .containers()
            .into_iter()
            .filter(|c| !c.owned())
            .map(|c| c.id)
            .collect();
        for e in self.journal().entries() {
            if let Call::Stop { id, .. } = &e.call {
                assert!(!unmanaged.contains(id), "stopped unmanaged container {id}");
            }
        }
    }

    /// The LB commands (not reads) journaled at or after `since`.
    fn lb_commands_since(&self, since: Instant) -> Vec<LbCall> {
        self.journal()
            .entries()
            .into_iter()
            .filter(|e| e.at >= since)
            .filter_map(|e| match e.call {
                Call::Lb(c) if c.is_command() => Some(c),
                _ => None,
            })
            .collect()
    }

    fn describe(&self) -> String {
        let mut out = String::from("containers:\n");
        for c in self.rt.containers() {
            out.push_str(&format!(
                "  {} {} {:?} code {:?} hash {:?} ips {:?}{}\n",
                c.id,
                c.name,
                c.state,
                c.exit_code,
                c.template_hash(),
                c.ips,
                if c.stopping { " (stopping)" } else { "" }
            ));
        }
        for b in self.lb.backends() {
            out.push_str(&format!("backend {b}:\n"));
            for s in self.lb.slots(&b).into_iter().filter(|s| s.addr.is_some()) {
                out.push_str(&format!(
                    "  {} {:?} {:?} weight {} sessions {}\n",
                    s.name, s.addr, s.admin, s.weight, s.sessions
                ));
            }
        }
        let status = self.status.read();
        for (name, s) in &status.services {
            out.push_str(&format!("status {name}: {:?}\n", s.replicas));
            for c in &s.conditions {
                out.push_str(&format!(
                    "  {:?} {} {}: {}\n",
                    c.kind, c.status, c.reason, c.message
                ));
            }
            for e in s.events.iter().rev().take(12).rev() {
                out.push_str(&format!(
                    "  event {} x{}: {}\n",
                    e.reason, e.count, e.message
                ));
            }
        }
        out.push_str(&format!("calls: {:?}\n", self.rt.calls()));
        out
    }
}

/// Logs to the test's output when `RUST_LOG` asks for them.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// The container ids of a set of containers.
fn ids(containers: &[FakeContainer]) -> BTreeSet<ContainerId> {
    containers.iter().map(|c| c.id.clone()).collect()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
