//! The controller loop: one owner of all service state, one `select!`.
//!
//! The loop waits on spec-file changes (debounced), Docker events for owned
//! containers, completions of its own Docker operations, the resync timer and
//! shutdown. When a service is due it observes (one Docker list for all services, the
//! service's HAProxy backend, port probes of warming replicas), asks [`crate::reconcile`]
//! what to do, and executes: load-balancer commands inline (they take milliseconds),
//! Docker creates and stops as background tasks (a stop may wait a whole grace
//! period) whose completion comes back to the loop. What is in flight is recorded in
//! the service's [`Memory`], so that a burst of events never acts twice.
//!
//! Errors requeue the failing service with capped exponential backoff; other
//! services go on. The status the HTTP server shows is written here and only here.

pub mod claim;
pub mod clock;
pub mod store;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
use tracing::Instrument;

use crate::autoscale::{Autoscaler, Reason};
use crate::controller::clock::{unix_ns, Clock};
use crate::controller::store::{Refresh, ReplicaStore};
use crate::lb::{LbError, LoadBalancer};
use crate::model::replica::{replica_name, template_hash, ContainerId, ContainerState, Replica};
use crate::reconcile::{
    self, Action, BackoffPolicy, ExitRecord, Limits, Memory, Note, PendingCreate, Plan, Verdict,
};
use crate::runtime::{ContainerEvent, ContainerRuntime, CreateReplica, DockerError};
use crate::serve::metrics::Metrics;
use crate::serve::status::{ConditionType, EventType, ServiceStatus, StatusHandle};
use crate::spec::manifest::{self, LoadedService};
use crate::spec::ScaledService;

/// How the loop runs; the CLI fills it in.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Spec files and directories.
    pub paths: Vec<PathBuf>,
    /// Every service is reconciled (and the spec re-read) at least this often.
    pub sync_period: Duration,
    /// Docker creates in flight per service.
    pub max_parallel: usize,
    pub crash_backoff: BackoffPolicy,
    /// Quiet time after a write to a spec file before the spec is re-read (a file
    /// renamed into place is read at once).
    pub debounce: Duration,
    /// How long a warming replica's port may take to accept a connection.
    pub probe_timeout: Duration,
    /// How often autoscaled services sample their backend's load.
    pub metrics_interval: Duration,
    /// The wall clock (the system's, or one following tokio's paused time in tests).
    pub clock: Clock,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            paths: Vec::new(),
            sync_period: Duration::from_secs(10),
            max_parallel: 8,
            crash_backoff: BackoffPolicy::default(),
            debounce: Duration::from_millis(100),
            probe_timeout: Duration::from_millis(200),
            metrics_interval: Duration::from_secs(2),
            clock: Clock::System,
        }
    }
}

/// Error backoff of a failing service: 500ms doubling to one minute.
fn error_backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(500);
    base.checked_mul(1 << failures.min(16))
        .unwrap_or(Duration::MAX)
        .min(Duration::from_secs(60))
}

/// Retry of an engine that does not answer (its event stream, its lists): 250ms
/// doubling to 2s. An engine restart (a package upgrade) takes a few seconds, and the
/// replicas are back only once dockscale sees it answer again: a long back-off would
/// hold them at zero long after it did. Each retry is one cheap request.
fn engine_backoff(failures: u32) -> Duration {
    Duration::from_millis(250)
        .checked_mul(1 << failures.min(8))
        .unwrap_or(Duration::MAX)
        .min(Duration::from_secs(2))
}

/// A Docker operation started by the loop, as it finished.
enum Done {
    Created {
        service: String,
        name: String,
        result: Result<ContainerId, DockerError>,
    },
    Removed {
        service: String,
        id: ContainerId,
        name: String,
        result: Result<(), DockerError>,
    },
}

/// One service as the loop keeps it.
struct Entry {
    spec: ScaledService,
    template_hash: String,
    /// The document was removed: drive the replicas to zero, then forget the service.
    deleting: bool,
    memory: Memory,
    due: Option<Instant>,
    failures: u32,
    /// The desired count of the previous pass, to report scaling.
    last_desired: Option<u32>,
    /// The last create failure, shown until a create succeeds.
    create_error: Option<String>,
    /// The autoscaler, once the service's replicas were first seen (it starts from
    /// the count found running, so a restart of dockscale does not reset it).
    autoscaler: Option<Autoscaler>,
    /// The autoscaler's last decision reason, to log repeats at debug level.
    last_reason: Option<Reason>,
}

impl Entry {
    fn new(spec: ScaledService) -> Self {
        Entry {
            template_hash: template_hash(&spec.spec),
            spec,
            deleting: false,
            memory: Memory::default(),
            due: Some(Instant::now()),
            failures: 0,
            last_desired: None,
            create_error: None,
            autoscaler: None,
            last_reason: None,
        }
    }

    fn desired(&self) -> u32 {
        if self.deleting {
            0
        } else if let (Some(a), Some(_)) = (&self.autoscaler, &self.spec.spec.autoscale) {
            a.desired()
        } else {
            self.spec.spec.replicas
        }
    }

    fn wake(&mut self, at: Instant) {
        self.due = Some(self.due.map_or(at, |d| d.min(at)));
    }
}

/// The controller: its services, its adapters, its in-flight work.
pub struct Controller<R: ContainerRuntime, L: LoadBalancer> {
    settings: Settings,
    runtime: Arc<R>,
    lb: Arc<L>,
    status: StatusHandle,
    metrics: Arc<Metrics>,
    services: BTreeMap<String, Entry>,
    tasks: JoinSet<Done>,
    /// The load-balancer sections last configured, to reconfigure only on change.
    lb_configured: Option<Vec<ScaledService>>,
    lb_error: Option<String>,
    /// Failed configurations in a row, and when to try again.
    lb_failures: u32,
    lb_retry_at: Option<Instant>,
    /// The autoscalers' time origin.
    started: Instant,
    /// The owned containers between two Docker lists.
    store: ReplicaStore,
}

impl<R: ContainerRuntime, L: LoadBalancer> Controller<R, L> {
    /// A controller for the services of a spec that was loaded and validated.
    pub fn new(
        settings: Settings,
        services: Vec<LoadedService>,
        runtime: Arc<R>,
        lb: Arc<L>,
        status: StatusHandle,
        metrics: Arc<Metrics>,
    ) -> Self {
        let now = settings.clock.wall();
        status.update(|s| {
            s.spec_loaded = true;
            for loaded in &services {
                let name = loaded.service.name().to_owned();
                s.services
                    .insert(name.clone(), ServiceStatus::new(&name, now));
            }
        });
        let services = services
            .into_iter()
            .map(|l| (l.service.name().to_owned(), Entry::new(l.service)))
            .collect();
        Controller {
            settings,
            runtime,
            lb,
            status,
            metrics,
            services,
            tasks: JoinSet::new(),
            store: ReplicaStore::new(),
            lb_configured: None,
            lb_error: None,
            lb_failures: 0,
            lb_retry_at: None,
            started: Instant::now(),
        }
    }

    /// Runs until `shutdown` resolves. Replicas are left running.
    pub async fn run(
        mut self,
        spec_changes: mpsc::UnboundedReceiver<crate::controller::watch::Change>,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut spec_changes = spec_changes;
        tokio::pin!(shutdown);
        let mut reload_at: Option<Instant> = None;
        let mut resync = tokio::time::interval(self.settings.sync_period);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await; // the first tick is immediate; services start due anyway
        let mut events: Option<BoxStream<'static, Result<ContainerEvent, DockerError>>> =
            Some(self.subscribe());
        let mut events_retry = Instant::now();
        let mut events_failures = 0u32;
        self.report_orphans().await;
        self.configure_lb().await;
        let mut lb_restarts = self.lb.restarts();
        let mut metrics_tick = tokio::time::interval(self.settings.metrics_interval);
        metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let next = self
                .services
                .values()
                .filter_map(|e| e.due)
                .chain(reload_at)
                .chain(self.lb_retry_at)
                .chain(events.is_none().then_some(events_retry))
                .min();
            let wake = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = &mut shutdown => break,
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => match done {
                    Ok(done) => self.finished(done),
                    Err(e) => tracing::error!(error = %crate::report::Chain(&e), "a docker task failed"),
                },
                Some(change) = spec_changes.recv() => match change {
                    // A whole file renamed into place: read it now. Any write still
                    // settling keeps its own deadline.
                    crate::controller::watch::Change::Replaced => self.reload(true).await,
                    crate::controller::watch::Change::Touched => {
                        reload_at = Some(Instant::now() + self.settings.debounce);
                    }
                },
                event = next_event(&mut events) => match event {
                    Some(Ok(event)) => {
                        events_failures = 0;
                        self.on_event(event);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %crate::report::Chain(&e), "docker event stream failed; resyncing");
                        self.store.events_lost();
                        events = None;
                        events_failures += 1;
                        events_retry = Instant::now() + engine_backoff(events_failures);
                    }
                    None => {
                        tracing::warn!("docker event stream ended; reconnecting");
                        self.store.events_lost();
                        events = None;
                        events_retry = Instant::now() + engine_backoff(events_failures);
                    }
                },
                Ok(()) = lb_changed(&mut lb_restarts) => {
                    // HAProxy lost its runtime state: restore every backend now.
                    let now = Instant::now();
                    for entry in self.services.values_mut() {
                        entry.wake(now);
                    }
                }
                _ = metrics_tick.tick() => self.autoscale().await,
                _ = resync.tick() => {
                    self.reload(false).await;
                    // Read everything again: what no event announced is seen here.
                    self.store.invalidate();
                    let now = Instant::now();
                    for entry in self.services.values_mut() {
                        entry.wake(now);
                    }
                }
                _ = sleep_until(wake) => {
                    let now = Instant::now();
                    if reload_at.is_some_and(|at| at <= now) {
                        reload_at = None;
                        self.reload(true).await;
                    }
                    if self.lb_retry_at.is_some_and(|at| at <= now) {
                        self.lb_retry_at = None;
                        self.configure_lb().await;
                    }
                    if events.is_none() {
                        // Without events, every pass reads everything.
                        self.store.invalidate();
                        if events_retry <= now {
                            events = Some(self.subscribe());
                            // Events may have been missed while disconnected.
                            for entry in self.services.values_mut() {
                                entry.wake(now);
                            }
                        }
                    }
                    self.reconcile_due().await;
                }
            }
        }
        self.shutdown().await;
    }

    /// Subscribes to Docker's events; they are replayed from a second back, so every
    /// container created since then has its `die` delivered.
    fn subscribe(&mut self) -> BoxStream<'static, Result<ContainerEvent, DockerError>> {
        let since = self
            .settings
            .clock
            .wall()
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.store.events_connected(unix_ns(since));
        self.runtime.events()
    }

    /// Observes once and describes what the next pass would do for every service,
    /// without executing anything (`dockscale run --dry-run`).
    pub async fn dry_run(mut self) -> Result<String, DockerError> {
        let listed = self.runtime.list_owned().await?;
        let mut out = String::new();
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            let Some(entry) = self.services.get(&name) else {
                continue;
            };
            let observed = observe(
                self.runtime.clone(),
                self.lb.clone(),
                entry,
                &listed,
                self.settings.probe_timeout,
            )
            .await;
            let Some(entry) = self.services.get_mut(&name) else {
                continue;
            };
            let (plan, _, _) = plan_service(entry, &name, &listed, &observed, &self.settings);
            let backend = entry
                .spec
                .spec
                .load_balancer
                .as_ref()
                .map(|l| l.backend.to_string());
            out.push_str(&describe_plan(&name, backend.as_deref(), &plan, &listed));
        }
        Ok(out)
    }

    /// The metrics tick: every autoscaled service samples its backend's load and its
    /// autoscaler decides. A failed sample is passed on as a gap, never as a zero.
    async fn autoscale(&mut self) {
        let now = self.started.elapsed();
        let names: Vec<String> = self
            .services
            .iter()
            .filter(|(_, e)| e.autoscaler.is_some() && !e.deleting)
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let Some(entry) = self.services.get(&name) else {
                continue;
            };
            let sample = match &entry.spec.spec.load_balancer {
                Some(lb) => match self.lb.load(lb.backend.as_str()).await {
                    Ok(load) => Some(load),
                    Err(e) => {
                        tracing::debug!(service = %name, error = %crate::report::Chain(&e), "load sample failed: a gap");
                        None
                    }
                },
                None => None,
            };
            let Some(entry) = self.services.get_mut(&name) else {
                continue;
            };
            let Some(autoscaler) = entry.autoscaler.as_mut() else {
                continue;
            };
            let decision = autoscaler.observe(now, sample);
            let config = autoscaler.config().clone();
            let m = &self.metrics;
            if let Some(load) = sample {
                m.backend_scur.with_label_values(&[&name]).set(load.scur);
                m.backend_qcur.with_label_values(&[&name]).set(load.qcur);
                m.backend_qtime_seconds
                    .with_label_values(&[&name])
                    .set(load.qtime_ms / 1000.0);
            }
            if let Some(d) = decision.demand {
                m.autoscaler_demand.with_label_values(&[&name]).set(d);
            }
            if let Some(r) = decision.recommendation {
                m.autoscaler_recommendation
                    .with_label_values(&[&name])
                    .set(i64::from(r));
            }
            m.autoscaler_decisions_total
                .with_label_values(&[&name, decision.reason.as_str()])
                .inc();
            m.autoscaler_max_replicas
                .with_label_values(&[&name])
                .set(i64::from(config.max_replicas));
            for reason in Reason::ALL {
                m.autoscaler_last_decision
                    .with_label_values(&[&name, reason.as_str()])
                    .set(i64::from(reason == decision.reason));
            }
            let repeat = entry.last_reason == Some(decision.reason) && !decision.changed();
            entry.last_reason = Some(decision.reason);
            if repeat {
                tracing::debug!(service = %name, reason = decision.reason.as_str(), "{}", decision.message);
            } else {
                tracing::info!(service = %name, reason = decision.reason.as_str(), "{}", decision.message);
            }
            if decision.changed() {
                entry.wake(Instant::now());
            }
            let wall = self.settings.clock.wall();
            self.status.update(|s| {
                let Some(svc) = s.services.get_mut(&name) else {
                    return;
                };
                let last_scale_time = if decision.changed() {
                    Some(wall)
                } else {
                    svc.autoscaler.as_ref().and_then(|a| a.last_scale_time)
                };
                svc.autoscaler = Some(crate::serve::status::AutoscalerStatus {
                    min_replicas: config.min_replicas,
                    max_replicas: config.max_replicas,
                    target: match config.target {
                        crate::spec::Target::InflightPerReplica(n) => {
                            format!("inflight {n}/replica")
                        }
                        crate::spec::Target::QueueTimeMillis(ms) => format!("qtime {ms}ms"),
                    },
                    demand: decision.demand,
                    recommendation: decision.recommendation,
                    desired: decision.desired,
                    reason: decision.reason.as_str().to_owned(),
                    message: decision.message.clone(),
                    last_scale_time,
                });
                if decision.changed() {
                    svc.record(
                        EventType::Normal,
                        "Autoscaled",
                        decision.message.clone(),
                        wall,
                    );
                }
            });
        }
    }

    /// Lets Docker operations in flight finish (a create half done would leave a
    /// container to clean up), for a few seconds at most.
    async fn shutdown(&mut self) {
        tracing::info!(
            in_flight = self.tasks.len(),
            "stopping the controller; replicas keep running"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(Ok(done))) => self.finished(done),
                Ok(Some(Err(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        self.tasks.abort_all();
    }

    fn on_event(&mut self, event: ContainerEvent) {
        let now = Instant::now();
        // A network's event names the container only: it matters if it is ours.
        let Some(service) = event
            .service
            .clone()
            .or_else(|| self.store.service_of(&event.id).map(str::to_owned))
        else {
            return;
        };
        tracing::debug!(action = %event.action, container = %event.id, service = %service, "docker event");
        let wake = match event.action.as_str() {
            // React now: the server leaves rotation and a replacement starts.
            "die" => {
                self.store.exited(&event.id, event.exit_code, now);
                Some(now)
            }
            // Signals say who ended the container; the `die` that follows acts.
            "kill" => {
                self.store.signalled(&event.id, now);
                None
            }
            "oom" => {
                self.store.oom_killed(&event.id);
                None
            }
            "stop" => None,
            "start" => {
                self.store.started(event.id.clone());
                Some(now + Duration::from_millis(10))
            }
            // Out of the service network: out of rotation now.
            "disconnect" => {
                self.store.touch(event.id.clone());
                Some(now)
            }
            // A short delay folds a burst (start, destroy) into one pass.
            _ => {
                self.store.touch(event.id.clone());
                Some(now + Duration::from_millis(10))
            }
        };
        if let (Some(at), Some(entry)) = (wake, self.services.get_mut(&service)) {
            entry.wake(at);
        }
    }

    /// Re-reads the spec paths. A spec that does not validate changes nothing: the last
    /// good spec stays in force and the error is logged and shown in status.
    async fn reload(&mut self, changed: bool) {
        let loaded = match manifest::load(&self.settings.paths) {
            Ok(loaded) => loaded,
            Err(errors) => {
                self.metrics
                    .spec_reloads_total
                    .with_label_values(&["invalid"])
                    .inc();
                self.metrics.spec_valid.set(0);
                let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                let is_new = self.status.read().spec_errors != lines;
                if is_new || changed {
                    for line in &lines {
                        tracing::error!("spec rejected, last good spec kept: {line}");
                    }
                }
                let now = self.settings.clock.wall();
                let message = lines.join("; ");
                self.status.update(|s| {
                    s.spec_errors = lines.clone();
                    for svc in s.services.values_mut() {
                        if svc.set_condition(
                            ConditionType::SpecInvalid,
                            true,
                            "ValidationFailed",
                            &message,
                            now,
                        ) {
                            svc.record(
                                EventType::Warning,
                                "SpecInvalid",
                                format!("spec rejected, last good spec kept: {message}"),
                                now,
                            );
                        }
                    }
                });
                return;
            }
        };
        self.metrics
            .spec_reloads_total
            .with_label_values(&["ok"])
            .inc();
        self.metrics.spec_valid.set(1);
        let now = self.settings.clock.wall();
        let mut seen = BTreeSet::new();
        let mut any_change = false;
        for l in loaded {
            let name = l.service.name().to_owned();
            seen.insert(name.clone());
            match self.services.get_mut(&name) {
                Some(entry) if entry.spec == l.service && !entry.deleting => {}
                Some(entry) => {
                    any_change = true;
                    let old_replicas = entry.spec.spec.replicas;
                    entry.template_hash = template_hash(&l.service.spec);
                    entry.spec = l.service;
                    entry.deleting = false;
                    entry.failures = 0;
                    entry.create_error = None;
                    entry.wake(Instant::now());
                    let change = replicas_change(
                        old_replicas,
                        entry.spec.spec.replicas,
                        entry.spec.spec.autoscale.is_some(),
                    );
                    self.status.update(|s| {
                        if let Some(svc) = s.services.get_mut(&name) {
                            svc.generation += 1;
                            svc.deleting = false;
                            svc.record(
                                EventType::Normal,
                                "SpecChanged",
                                format!("spec generation {} loaded{change}", svc.generation),
                                now,
                            );
                        }
                    });
                }
                None => {
                    any_change = true;
                    tracing::info!(service = %name, "new service");
                    self.services.insert(name.clone(), Entry::new(l.service));
                    self.status.update(|s| {
                        s.services
                            .insert(name.clone(), ServiceStatus::new(&name, now));
                    });
                }
            }
        }
        for (name, entry) in self.services.iter_mut() {
            if !seen.contains(name) && !entry.deleting {
                any_change = true;
                entry.deleting = true;
                entry.wake(Instant::now());
                self.status.update(|s| {
                    if let Some(svc) = s.services.get_mut(name) {
                        svc.deleting = true;
                        svc.record(
                            EventType::Normal,
                            "ServiceRemoved",
                            "the service's document was removed: removing its replicas".to_owned(),
                            now,
                        );
                    }
                });
            }
        }
        self.status.update(|s| {
            if !s.spec_errors.is_empty() {
                tracing::info!("spec valid again");
            }
            s.spec_errors.clear();
            s.spec_loaded = true;
            for svc in s.services.values_mut() {
                svc.set_condition(ConditionType::SpecInvalid, false, "Valid", "", now);
            }
        });
        if any_change {
            self.configure_lb().await;
        }
    }

    /// Hands the load balancer the services it should serve, when that set changed.
    async fn configure_lb(&mut self) {
        let wanted: Vec<ScaledService> = self
            .services
            .values()
            .filter(|e| e.spec.spec.load_balancer.is_some())
            .map(|e| e.spec.clone())
            .collect();
        if self.lb_configured.as_ref() == Some(&wanted) {
            return;
        }
        match self.lb.configure(&wanted).await {
            Ok(grown) => {
                let now = self.settings.clock.wall();
                self.status.update(|s| {
                    for g in grown {
                        if let Some(svc) = s.services.get_mut(&g.service) {
                            svc.record(
                                EventType::Normal,
                                "SlotPoolGrown",
                                format!(
                                    "{} replicas at once need more than the {} slots of {}: grown to {}, HAProxy reloaded with every server written in (pools never shrink while HAProxy runs; replica changes within the pool never reload)",
                                    g.needed, g.from, g.backend, g.to
                                ),
                                now,
                            );
                        }
                    }
                });
                self.lb_configured = Some(wanted);
                self.lb_error = None;
                self.lb_failures = 0;
                self.lb_retry_at = None;
            }
            Err(e) => {
                tracing::error!(error = %crate::report::Chain(&e), "configuring the load balancer");
                self.lb_error = Some(crate::report::chain(&e));
                self.lb_failures += 1;
                self.lb_retry_at = Some(Instant::now() + error_backoff(self.lb_failures));
            }
        }
    }

    /// Containers of services that no spec names: reported, never removed (they may
    /// belong to another dockscale, or the spec path may be wrong).
    async fn report_orphans(&self) {
        let Ok(listed) = self.runtime.list_owned().await else {
            return;
        };
        let orphans: BTreeSet<&str> = listed
            .iter()
            .map(|r| r.service.as_str())
            .filter(|s| !self.services.contains_key(*s))
            .collect();
        for service in orphans {
            tracing::warn!(
                service,
                "replicas of a service that no spec names are left running; \
                 remove them with `docker rm -f $(docker ps -aq --filter label=dockscale.service={service})`"
            );
        }
    }

    fn finished(&mut self, done: Done) {
        let now = self.settings.clock.wall();
        match done {
            Done::Created {
                service,
                name,
                result,
            } => {
                let Some(entry) = self.services.get_mut(&service) else {
                    return;
                };
                entry.memory.creating.remove(&name);
                entry.wake(Instant::now());
                match &result {
                    Ok(id) => self.store.touch(id.clone()),
                    // A failed create may leave a container behind: read everything.
                    Err(_) => self.store.invalidate(),
                }
                let result_label = if result.is_ok() { "ok" } else { "error" };
                self.metrics
                    .container_starts_total
                    .with_label_values(&[service.as_str(), result_label])
                    .inc();
                let event = match result {
                    Ok(id) => {
                        entry.create_error = None;
                        (
                            EventType::Normal,
                            "SuccessfulCreate",
                            format!("Created replica {name} ({id})"),
                        )
                    }
                    Err(DockerError::ImageNotFound { image }) => {
                        // Not a crash: nothing is created until the image is there.
                        entry.memory.lines.restarts.remove(&name);
                        let message = format!(
                            "image `{image}` is not present locally (dockscale never pulls): build or load it"
                        );
                        entry.create_error = Some(message.clone());
                        (EventType::Warning, "ImageNotFound", message)
                    }
                    Err(e @ DockerError::Unavailable(_)) => {
                        // The engine went away: not the replica's doing.
                        entry.memory.lines.restarts.remove(&name);
                        let message = format!(
                            "Failed to create replica {name}: {}",
                            crate::report::chain(&e)
                        );
                        entry.create_error = Some(message.clone());
                        (EventType::Warning, "FailedCreate", message)
                    }
                    Err(e) => {
                        // A replica that cannot start counts as a crash of its line.
                        let delay = entry.memory.lines.create_failed(
                            &name,
                            &entry.template_hash,
                            Instant::now(),
                            &self.settings.crash_backoff,
                        );
                        let message = format!(
                            "Failed to create replica {name}: {}; retrying in {}",
                            crate::report::chain(&e),
                            humantime::format_duration(delay)
                        );
                        entry.create_error = Some(message.clone());
                        (EventType::Warning, "FailedCreate", message)
                    }
                };
                self.status.update(|s| {
                    if let Some(svc) = s.services.get_mut(&service) {
                        svc.record(event.0, event.1, event.2, now);
                    }
                });
            }
            Done::Removed {
                service,
                id,
                name,
                result,
            } => {
                let Some(entry) = self.services.get_mut(&service) else {
                    return;
                };
                self.store.touch(id.clone());
                entry.memory.removing.remove(&id);
                entry.memory.draining.remove(&id);
                entry.memory.reported_holds.remove(&id);
                entry.wake(Instant::now());
                if let Err(e) = result {
                    entry.failures += 1;
                    self.status.update(|s| {
                        if let Some(svc) = s.services.get_mut(&service) {
                            svc.record(
                                EventType::Warning,
                                "FailedDelete",
                                format!(
                                    "Failed to remove replica {name}: {}",
                                    crate::report::chain(&e)
                                ),
                                now,
                            );
                        }
                    });
                }
            }
        }
    }

    /// Reconciles every service that is due, from one Docker list.
    async fn reconcile_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .services
            .iter()
            .filter(|(_, e)| e.due.is_some_and(|d| d <= now))
            .map(|(n, _)| n.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        for name in &due {
            if let Some(e) = self.services.get_mut(name) {
                e.due = None;
            }
        }
        let listed = match self.refresh_store().await {
            Ok(listed) => {
                self.status.update(|s| s.docker_reachable = true);
                listed
            }
            Err(e) => {
                tracing::error!(error = %crate::report::Chain(&e), "listing containers");
                self.status.update(|s| s.docker_reachable = false);
                for name in &due {
                    if let Some(entry) = self.services.get_mut(name) {
                        entry.failures += 1;
                        entry.wake(Instant::now() + engine_backoff(entry.failures));
                    }
                }
                return;
            }
        };
        let observations = futures::future::join_all(due.iter().filter_map(|name| {
            let entry = self.services.get(name)?;
            Some(observe(
                self.runtime.clone(),
                self.lb.clone(),
                entry,
                &listed,
                self.settings.probe_timeout,
            ))
        }))
        .await;
        for (name, observation) in due.iter().zip(observations) {
            let span = tracing::info_span!("reconcile", service = %name);
            self.reconcile_one(name, &listed, observation)
                .instrument(span)
                .await;
        }
    }

    /// Brings the store up to date: a full list when it may be incomplete, else one
    /// inspect per container that changed since it was read.
    async fn refresh_store(&mut self) -> Result<Vec<Replica>, DockerError> {
        match self.store.take_refresh() {
            Refresh::Nothing => {}
            Refresh::List => {
                let started = std::time::Instant::now();
                let listed = self.runtime.list_owned().await;
                self.metrics
                    .docker_list_duration_seconds
                    .observe(started.elapsed().as_secs_f64());
                match listed {
                    Ok(listed) => self.store.listed(listed),
                    Err(e) => {
                        self.store.invalidate();
                        return Err(e);
                    }
                }
            }
            Refresh::Inspect(ids) => {
                let runtime = self.runtime.clone();
                let read =
                    futures::future::join_all(ids.iter().map(|id| runtime.inspect_owned(id))).await;
                self.metrics.docker_inspects_total.inc_by(ids.len() as u64);
                for (id, result) in ids.into_iter().zip(read) {
                    match result {
                        Ok(replica) => self.store.inspected(id, replica),
                        Err(e) => {
                            self.store.invalidate();
                            return Err(e);
                        }
                    }
                }
            }
        }
        Ok(self.store.replicas(Instant::now()))
    }

    async fn reconcile_one(&mut self, name: &str, listed: &[Replica], observed: Observation) {
        let _timer = self.metrics.reconcile_timer(name);
        let Some(entry) = self.services.get_mut(name) else {
            return;
        };
        match (&entry.spec.spec.autoscale, &mut entry.autoscaler) {
            (Some(config), None) => {
                // Start from what runs (a restarted dockscale keeps the scale it had).
                let running = listed
                    .iter()
                    .filter(|r| r.service == name && r.state == ContainerState::Running)
                    .count() as u32;
                let start = if running > 0 {
                    running
                } else {
                    entry.spec.spec.replicas
                };
                entry.autoscaler = Some(Autoscaler::new(config, start, self.started.elapsed()));
            }
            (Some(config), Some(a)) if a.config() != config => a.reconfigure(config),
            (None, Some(_)) => entry.autoscaler = None,
            _ => {}
        }
        let (plan, replica_count, exits) =
            plan_service(entry, name, listed, &observed, &self.settings);
        if !exits.is_empty() {
            for (exit, verdict) in &exits {
                self.metrics
                    .replica_exits_total
                    .with_label_values(&[name, exit.cause.label()])
                    .inc();
                if matches!(verdict, Verdict::Crash { .. }) {
                    self.metrics
                        .container_restarts_total
                        .with_label_values(&[name])
                        .inc();
                }
            }
            let now = self.settings.clock.wall();
            self.status.update(|s| {
                if let Some(svc) = s.services.get_mut(name) {
                    for (exit, verdict) in &exits {
                        let (kind, reason, message) = exit_event(exit, verdict);
                        svc.record(kind, reason, message, now);
                    }
                }
            });
        }
        let Some(entry) = self.services.get_mut(name) else {
            return;
        };
        entry.memory.rollout = plan.rollout.clone();
        tracing::debug!(actions = ?plan.actions, counts = ?plan.counts, "planned");

        let errors = self.execute(name, &plan).await;
        let Some(entry) = self.services.get_mut(name) else {
            return;
        };
        if errors.is_empty() {
            entry.failures = 0;
        } else {
            entry.failures += 1;
        }
        let result = if errors.is_empty() { "ok" } else { "error" };
        self.metrics
            .reconcile_total
            .with_label_values(&[name, result])
            .inc();
        for (kind, _) in &errors {
            self.metrics
                .reconcile_errors_total
                .with_label_values(&[name, kind])
                .inc();
        }
        let counts = plan.counts;
        for (gauge, value) in [
            (&self.metrics.replicas_desired, counts.desired),
            (&self.metrics.replicas_current, counts.current),
            (&self.metrics.replicas_ready, counts.ready),
            (&self.metrics.replicas_updated, counts.updated),
        ] {
            gauge.with_label_values(&[name]).set(i64::from(value));
        }
        let backoff = (!errors.is_empty()).then(|| error_backoff(entry.failures));
        let requeue = match (plan.requeue_after, backoff) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(after) = requeue {
            entry.wake(Instant::now() + after);
        }
        let finished = entry.deleting
            && replica_count == 0
            && entry.memory.creating.is_empty()
            && entry.memory.removing.is_empty();
        self.update_status(name, &plan, &observed, &errors);
        if finished {
            tracing::info!(service = name, "service removed");
            self.services.remove(name);
            self.status.update(|s| s.services.remove(name));
            self.metrics.forget_service(name);
            self.configure_lb().await;
        }
    }

    /// Applies a plan: load-balancer steps first (a server leaves rotation before its
    /// container stops), then Docker operations as background tasks.
    async fn execute(&mut self, name: &str, plan: &Plan) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        let now = self.settings.clock.wall();
        let mut events: Vec<(EventType, &'static str, String)> = Vec::new();
        let Some(entry) = self.services.get_mut(name) else {
            return errors;
        };
        let spec = entry.spec.spec.clone();
        let backend = spec
            .load_balancer
            .as_ref()
            .map(|lb| lb.backend.to_string())
            .unwrap_or_default();
        let options = spec.load_balancer.as_ref().map(|lb| lb.server.clone());

        // A slot whose assignment failed in this pass is not enabled after it: it
        // may still hold another address.
        let mut unassigned: BTreeSet<&str> = BTreeSet::new();
        for action in &plan.actions {
            let result: Result<(), LbError> = match action {
                Action::Enable { slot, .. } if unassigned.contains(slot.as_str()) => continue,
                Action::Release { slot } => self.lb.release(&backend, slot).await,
                Action::Drain { id, slot, reason } => {
                    let r = self.lb.drain(&backend, slot).await;
                    if r.is_ok() && !entry.memory.draining.contains_key(id) {
                        entry.memory.draining.insert(id.clone(), Instant::now());
                        events.push((
                            EventType::Normal,
                            "Draining",
                            format!("Draining {backend}/{slot} ({reason:?}) before removing its replica"),
                        ));
                    }
                    r
                }
                Action::AssignSlot { slot, addr, .. } => {
                    let r = self.lb.assign(&backend, slot, *addr).await;
                    if r.is_err() {
                        unassigned.insert(slot);
                    }
                    r
                }
                Action::Enable { slot, .. } => match &options {
                    Some(o) => self.lb.enable(&backend, slot, o).await,
                    None => Ok(()),
                },
                Action::Reconfigure { slot } => match &options {
                    Some(o) => self.lb.reconfigure(&backend, slot, o).await,
                    None => Ok(()),
                },
                Action::EnsureNetwork => {
                    match self.runtime.ensure_network(spec.network.as_str()).await {
                        Ok(()) => entry.memory.network_ready = Some(spec.network.to_string()),
                        Err(e) => errors.push((
                            e.kind(),
                            format!("network {}: {}", spec.network, crate::report::chain(&e)),
                        )),
                    }
                    Ok(())
                }
                Action::Suspend { slot, .. } => self.lb.suspend(&backend, slot).await,
                Action::Create { .. } | Action::Remove { .. } => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(error = %crate::report::Chain(&e), ?action, "load balancer step failed");
                errors.push((e.reason(), e.to_string()));
            }
        }

        // Docker operations, in the background. Nothing is created into a network
        // that could not be ensured.
        let network_ok = entry.memory.network_ready.as_deref() == Some(spec.network.as_str());
        if let (Some(vacant), true) = (&plan.vacant, network_ok) {
            entry.memory.lines.vacant = vacant.clone();
        }
        for action in &plan.actions {
            match action {
                Action::Create { restarts } if network_ok => {
                    let mut rng = rand::rng();
                    let name_taken = |n: &String| entry.memory.creating.contains_key(n);
                    let replica = loop {
                        let candidate = replica_name(name, &mut rng);
                        if !name_taken(&candidate) {
                            break candidate;
                        }
                    };
                    if *restarts > 0 {
                        entry
                            .memory
                            .lines
                            .restarts
                            .insert(replica.clone(), *restarts);
                    }
                    entry.memory.creating.insert(
                        replica.clone(),
                        PendingCreate {
                            template_hash: entry.template_hash.clone(),
                            since: Instant::now(),
                        },
                    );
                    let request = CreateReplica {
                        name: replica.clone(),
                        service: name.to_owned(),
                        template_hash: entry.template_hash.clone(),
                        created_at_ns: unix_ns(self.settings.clock.wall()),
                        spec: spec.clone(),
                    };
                    let runtime = self.runtime.clone();
                    let service = name.to_owned();
                    self.tasks.spawn(async move {
                        let result = runtime.create_and_start(request).await;
                        Done::Created {
                            service,
                            name: replica,
                            result,
                        }
                    });
                }
                Action::Remove {
                    id,
                    name: replica,
                    reason,
                    age: _,
                } => {
                    if !entry.memory.removing.insert(id.clone()) {
                        continue;
                    }
                    self.metrics
                        .container_stops_total
                        .with_label_values(&[name, reason.label()])
                        .inc();
                    match reason {
                        // Looked at (and reported) before planning.
                        reconcile::RemoveReason::Exited { .. } => {}
                        reconcile::RemoveReason::NetworkLost => events.push((
                            EventType::Warning,
                            "NetworkLost",
                            format!(
                                "Replica {replica} lost its address on network {}: replacing it",
                                spec.network
                            ),
                        )),
                        reconcile::RemoveReason::NeverStarted => events.push((
                            EventType::Warning,
                            "NeverStarted",
                            format!("Removing replica {replica}: it was created but never ran"),
                        )),
                        reconcile::RemoveReason::ScaleDown | reconcile::RemoveReason::Rollout => {
                            events.push((
                                EventType::Normal,
                                "SuccessfulDelete",
                                format!("Removing replica {replica} ({reason:?})"),
                            ))
                        }
                    }
                    let runtime = self.runtime.clone();
                    let service = name.to_owned();
                    let id = id.clone();
                    let replica = replica.clone();
                    let grace = spec.template.stop_grace_period.get();
                    self.tasks.spawn(async move {
                        let result = runtime.stop_and_remove(&id, grace).await;
                        Done::Removed {
                            service,
                            id,
                            name: replica,
                            result,
                        }
                    });
                }
                _ => {}
            }
        }
        if !events.is_empty() {
            self.status.update(|s| {
                if let Some(svc) = s.services.get_mut(name) {
                    for (kind, reason, message) in events {
                        svc.record(kind, reason, message, now);
                    }
                }
            });
        }
        errors
    }

    /// Counts, conditions and events after a pass.
    fn update_status(
        &mut self,
        name: &str,
        plan: &Plan,
        observed: &Observation,
        errors: &[(&'static str, String)],
    ) {
        let Some(entry) = self.services.get_mut(name) else {
            return;
        };
        let now = self.settings.clock.wall();
        let counts = plan.counts;
        let last_desired = entry.last_desired.replace(counts.desired);
        let spec = &entry.spec.spec;
        let lb = spec.load_balancer.as_ref();
        let min_available = counts.desired.saturating_sub(spec.rollout.max_unavailable);
        let create_error = entry.create_error.clone();
        let lb_error = self.lb_error.clone();
        let rollout = entry.memory.rollout.clone();
        let hash = entry.template_hash.clone();
        // Lines whose replacement runs or starts after crashing at least twice: the loop
        // is still on until the service is fully ready again.
        let looping = entry
            .memory
            .lines
            .restarts
            .values()
            .filter(|&&n| n >= 2)
            .count();
        let instant = Instant::now();
        let held: Vec<crate::reconcile::Vacancy> = plan
            .notes
            .iter()
            .find_map(|n| match n {
                Note::CrashLoopBackOff { held } => Some(held.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let back_off: Vec<crate::serve::status::BackOffStatus> = held
            .iter()
            .map(|v| crate::serve::status::BackOffStatus {
                replica: v.last_exit.name.clone(),
                exit_code: v.last_exit.code,
                cause: v.last_exit.cause.label().to_owned(),
                ran_for_seconds: v.last_exit.ran_for.as_secs_f64(),
                restarts: v.restarts,
                next_replacement: now + v.not_before.saturating_duration_since(instant),
            })
            .collect();
        let holds: Vec<(ContainerId, String)> = plan
            .notes
            .iter()
            .filter_map(|n| match n {
                Note::OperatorHold {
                    id,
                    name,
                    slot,
                    admin,
                } => Some((id.clone(), format!("{slot} of replica {name} ({admin:?})"))),
                _ => None,
            })
            .collect();
        for (id, _) in &holds {
            entry.memory.reported_holds.insert(id.clone());
        }
        self.status.update(|s| {
            let Some(svc) = s.services.get_mut(name) else {
                return;
            };
            svc.observed_generation = svc.generation;
            svc.template_hash = hash.clone();
            svc.replicas = counts;
            svc.backend = lb.map(|l| l.backend.to_string());
            // The first pass compares with what runs: a new service is scaled up from
            // 0, and a restarted controller that adopts the same count says nothing.
            let prev = last_desired.unwrap_or(counts.current);
            if prev != counts.desired {
                let verb = if counts.desired > prev { "up" } else { "down" };
                svc.record(
                    EventType::Normal,
                    "ScalingReplicaSet",
                    format!("Scaled {verb} from {prev} to {}", counts.desired),
                    now,
                );
            }
            for (_, what) in &holds {
                svc.record(
                    EventType::Warning,
                    "ServerHeld",
                    format!("Server {what} was taken out of rotation by someone else; left as is"),
                    now,
                );
            }

            let available = counts.ready >= min_available;
            svc.set_condition(
                ConditionType::Available,
                available,
                if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                &format!("{} of {} replicas ready (at least {min_available} needed)", counts.ready, counts.desired),
                now,
            );

            let stalled = plan.notes.iter().any(|n| matches!(n, Note::RolloutStalled { .. }));
            let settled = counts.ready_updated == counts.desired
                && counts.current == counts.desired
                && counts.pending == 0
                && counts.terminating == 0;
            let (progressing, reason, message) = if stalled {
                (false, "ProgressDeadlineExceeded", format!(
                    "template {hash} made no progress for {}: {} of {} updated replicas ready; the old replicas keep serving",
                    spec.rollout.progress_deadline, counts.ready_updated, counts.desired
                ))
            } else if settled {
                (true, "NewReplicasAvailable", format!("{} replicas of template {hash} ready", counts.ready_updated))
            } else {
                (true, "ReplicasUpdating", format!(
                    "{} of {} replicas of template {hash} ready, {} starting, {} terminating",
                    counts.ready_updated, counts.desired, counts.pending, counts.terminating
                ))
            };
            let was_complete = svc
                .condition(ConditionType::Progressing)
                .is_some_and(|c| c.reason == "NewReplicasAvailable");
            if svc.set_condition(ConditionType::Progressing, progressing, reason, &message, now) && stalled {
                svc.record(EventType::Warning, "ProgressDeadlineExceeded", message.clone(), now);
            }
            if settled && !was_complete && rollout.as_ref().is_some_and(|r| r.complete) {
                svc.record(EventType::Normal, "RolloutComplete", format!("Rollout complete: {message}"), now);
            }

            let failure = plan.notes.iter().find_map(|n| match n {
                Note::ImageMissing { image } => Some(("ImageNotFound", format!(
                    "image `{image}` is not present locally (dockscale never pulls): build or load it"
                ))),
                Note::CrashLoopBackOff { held } => Some(("CrashLoopBackOff", format!(
                    "{} replica line(s) backing off: {}",
                    held.len(),
                    held.iter().map(|v| format!(
                        "{} {} ({} crashes in a row; next replacement in {})",
                        v.last_exit.name,
                        v.last_exit.describe(),
                        v.restarts,
                        humantime::format_duration(Duration::from_secs(v.not_before.saturating_duration_since(instant).as_secs()))
                    )).collect::<Vec<_>>().join("; ")
                ))),
                _ => None,
            }).or_else(|| create_error.clone().map(|m| ("FailedCreate", m)))
            .or_else(|| (looping > 0 && counts.ready < counts.desired).then(|| ("CrashLoopBackOff", format!(
                "{looping} replica line(s) crashed at least twice in a row; replacing them with back-off"
            ))));
            svc.back_off = back_off;
            let reason_was = svc.condition(ConditionType::ReplicaFailure).map(|c| (c.status, c.reason.clone()));
            match &failure {
                Some((reason, message)) => {
                    svc.set_condition(ConditionType::ReplicaFailure, true, reason, message, now);
                    if reason_was != Some((true, (*reason).to_owned())) && *reason == "ImageNotFound" {
                        svc.record(EventType::Warning, reason, message.clone(), now);
                    }
                }
                None => {
                    svc.set_condition(ConditionType::ReplicaFailure, false, "", "", now);
                }
            }

            if lb.is_some() {
                let problem = lb_error.clone().map(|m| ("ConfigureFailed", m))
                    .or_else(|| observed.backend.as_ref().err().map(|e| (e.reason(), e.message.clone())))
                    .or_else(|| plan.notes.iter().find_map(|n| match n {
                        Note::NoFreeSlot { backend, waiting } => Some(("NoFreeSlot", format!(
                            "backend {backend} has no free server slot for {waiting} replica(s)"
                        ))),
                        _ => None,
                    }))
                    .or_else(|| errors.first().map(|(_, e)| ("CommandFailed", e.clone())));
                match problem {
                    Some((reason, message)) => {
                        if svc.set_condition(ConditionType::LoadBalancerSynced, false, reason, &message, now) {
                            svc.record(EventType::Warning, reason, message, now);
                        }
                    }
                    None => {
                        svc.set_condition(ConditionType::LoadBalancerSynced, true, "Synced",
                            "the backend's servers in rotation are the ready replicas", now);
                    }
                }
            }
        });
    }

    /// The status handle this controller writes.
    pub fn status(&self) -> StatusHandle {
        self.status.clone()
    }
}

/// A plan as an operator reads it: one line per action.
pub fn describe_plan(
    service: &str,
    backend: Option<&str>,
    plan: &Plan,
    listed: &[Replica],
) -> String {
    use std::fmt::Write;
    let c = plan.counts;
    let mut out = format!(
        "{service}: desired {}, current {}, ready {}, up-to-date {}\n",
        c.desired, c.current, c.ready, c.updated
    );
    let name_of = |id: &ContainerId| {
        listed
            .iter()
            .find(|r| &r.id == id)
            .map_or_else(|| id.to_string(), |r| r.name.clone())
    };
    let backend = backend.unwrap_or("-");
    let mut creates = 0;
    for action in &plan.actions {
        // Writing to a String cannot fail.
        let _ = match action {
            Action::EnsureNetwork => writeln!(out, "  create network (if missing)"),
            Action::Create { .. } => {
                creates += 1;
                Ok(())
            }
            Action::Remove { name, reason, .. } => {
                writeln!(out, "  stop and remove {name} ({reason:?})")
            }
            Action::AssignSlot { id, slot, addr } => writeln!(
                out,
                "  add server {backend}/{slot} -> {addr} for {} (maintenance, weight 0)",
                name_of(id)
            ),
            Action::Enable { id, slot } => {
                writeln!(out, "  enable server {backend}/{slot} ({})", name_of(id))
            }
            Action::Drain { id, slot, reason } => writeln!(
                out,
                "  drain server {backend}/{slot} ({}, {reason:?})",
                name_of(id)
            ),
            Action::Release { slot } => {
                writeln!(
                    out,
                    "  release server {backend}/{slot} (maintenance, freed)"
                )
            }
            Action::Reconfigure { slot } => {
                writeln!(out, "  re-apply weight and maxconn to {backend}/{slot}")
            }
            Action::Suspend { id, slot } => writeln!(
                out,
                "  suspend server {backend}/{slot} ({}, paused: maintenance until it runs again)",
                name_of(id)
            ),
        };
    }
    if creates > 0 {
        let _ = writeln!(out, "  create {creates} replica(s)");
    }
    for note in &plan.notes {
        let _ = writeln!(out, "  note: {note:?}");
    }
    if plan.actions.is_empty() {
        out.push_str("  nothing to do\n");
    }
    out
}

/// Plans one service from the Docker list and its observation. A container Docker
/// reported dead (`die` event) counts as exited even while the list still shows it
/// running. Returns the plan and how many containers the service has.
fn plan_service(
    entry: &mut Entry,
    name: &str,
    listed: &[Replica],
    observed: &Observation,
    settings: &Settings,
) -> (Plan, usize, Vec<(ExitRecord, Verdict)>) {
    let replicas: Vec<&Replica> = listed.iter().filter(|r| r.service == name).collect();
    let now = settings.clock.now();
    let exits = reconcile::record_exits(&mut entry.memory, &replicas, now, &settings.crash_backoff);
    let input = reconcile::Input {
        service: name,
        spec: &entry.spec.spec,
        desired: entry.desired(),
        template_hash: &entry.template_hash,
        replicas: replicas.clone(),
        image_present: observed.image_present,
        backend: observed.backend.as_ref().ok(),
        backend_error: observed.backend.as_ref().err().map(|e| e.message.as_str()),
        answering: &observed.answering,
        now,
        limits: Limits {
            max_parallel: settings.max_parallel,
        },
    };
    let plan = reconcile::plan(&input, &entry.memory);
    (plan, replicas.len(), exits)
}

/// The event of an exit the crash-loop lines looked at.
fn exit_event(exit: &ExitRecord, verdict: &Verdict) -> (EventType, &'static str, String) {
    let name = &exit.name;
    let what = exit.describe();
    match verdict {
        Verdict::Replace => (
            EventType::Warning,
            "ReplicaStopped",
            format!("Replica {name} {what}; replacing it at once (not a crash)"),
        ),
        Verdict::Crash { delay, .. } if delay.is_zero() => (
            EventType::Warning,
            "ReplicaExited",
            format!("Replica {name} {what}; replacing it"),
        ),
        Verdict::Crash { restarts, delay } => (
            EventType::Warning,
            "BackOff",
            format!(
                "Replica {name} {what}: {restarts} crashes in a row on its line; back-off {} \
                 before replacing it (other replicas are not held back)",
                humantime::format_duration(*delay)
            ),
        ),
    }
}

/// What one service's observation found, besides the Docker list.
struct Observation {
    backend: Result<crate::model::backend::Backend, LbError>,
    answering: BTreeSet<ContainerId>,
    image_present: bool,
}

async fn observe<R: ContainerRuntime, L: LoadBalancer>(
    runtime: Arc<R>,
    lb: Arc<L>,
    entry: &Entry,
    listed: &[Replica],
    probe_timeout: Duration,
) -> Observation {
    let name = entry.spec.name();
    let spec = &entry.spec.spec;
    let replicas: Vec<&Replica> = listed.iter().filter(|r| r.service == name).collect();
    let backend = match &spec.load_balancer {
        Some(l) => lb.backend(l.backend.as_str()).await,
        None => Err(LbError::new(
            crate::lb::LbErrorKind::NotInUse,
            "the service has no load balancer",
        )),
    };
    let answering = match &backend {
        Ok(b) => {
            runtime
                .answering(reconcile::probe_targets(spec, &replicas, b), probe_timeout)
                .await
        }
        Err(_) => BTreeSet::new(),
    };
    // Only ask Docker about the image when a create may be needed.
    let running_current = replicas
        .iter()
        .filter(|r| r.template_hash == entry.template_hash)
        .count() as u32;
    let image_present = if running_current + entry.memory.creating.len() as u32 >= entry.desired() {
        true
    } else {
        // Unknown: let the create try and report what Docker says.
        runtime
            .image_present(&spec.template.image)
            .await
            .unwrap_or(true)
    };
    Observation {
        backend,
        answering,
        image_present,
    }
}

/// How a spec change moved `replicas`, for the `SpecChanged` event. Under autoscaling
/// the field is only the starting point, which the event says rather than let an
/// operator wait for a count that will not come.
fn replicas_change(old: u32, new: u32, autoscaled: bool) -> String {
    match (old == new, autoscaled) {
        (true, _) => String::new(),
        (false, false) => format!(" (replicas {old} -> {new})"),
        (false, true) => format!(
            " (replicas {old} -> {new}: autoscaled, so only the starting point; the autoscaler sets the count within its bounds)"
        ),
    }
}

/// The next bump of the load balancer's restart counter (never, without one).
async fn lb_changed(
    restarts: &mut Option<tokio::sync::watch::Receiver<u64>>,
) -> Result<(), tokio::sync::watch::error::RecvError> {
    match restarts {
        Some(rx) => rx.changed().await,
        None => futures::future::pending().await,
    }
}

async fn next_event(
    events: &mut Option<BoxStream<'static, Result<ContainerEvent, DockerError>>>,
) -> Option<Result<ContainerEvent, DockerError>> {
    match events {
        Some(stream) => stream.next().await,
        None => futures::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::replicas_change;

    #[test]
    fn a_spec_change_says_how_replicas_moved_and_who_decides() {
        assert_eq!(replicas_change(3, 3, false), "");
        assert_eq!(replicas_change(3, 5, false), " (replicas 3 -> 5)");
        let autoscaled = replicas_change(3, 5, true);
        assert!(
            autoscaled.starts_with(" (replicas 3 -> 5: autoscaled"),
            "{autoscaled}"
        );
    }
}
