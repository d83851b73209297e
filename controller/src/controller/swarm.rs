//! The controller loop on Docker Swarm (`dockscale run --runtime swarm`).
//!
//! Each service is one replicated Swarm service. The loop waits on spec-file changes,
//! Swarm's events (services, nodes, this node's containers), a one-second task list,
//! HAProxy restarts, the metrics tick and shutdown. A pass reads the service, its tasks
//! and the nodes, probes the tasks that may serve, plans with
//! [`crate::reconcile::swarm`] (pure) and carries the plan out: Swarm is asked for the
//! service, its spec or its count; HAProxy's slots follow the tasks. Swarm's own
//! rolling update replaces the tasks; a spec it rolled back is not asked for again
//! until the spec changes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};

use crate::autoscale::Autoscaler;
use crate::controller::autoscaling::{log_decision, publish_decision};
use crate::controller::clock::Clock;
use crate::controller::services::spec_rejected;
use crate::controller::watch::Change;
use crate::lb::{LbError, LoadBalancer};
use crate::model::backend::Backend;
use crate::model::replica::template_hash;
use crate::reconcile::swarm::{self as plan, ServiceChange, SwarmInput, SwarmPlan};
use crate::reconcile::Action;
use crate::runtime::swarm::{
    service_spec, spec_hash, with_replicas, SwarmApi, SwarmNode, SwarmService, SwarmTask,
    UpdateState,
};
use crate::runtime::DockerError;
use crate::serve::metrics::Metrics;
use crate::serve::status::{ConditionType, EventType, ServiceStatus, StatusHandle, TaskStatus};
use crate::spec::manifest::{self, LoadedService};
use crate::spec::{Runtime, ScaledService};

/// How often tasks are listed besides the events (a task on another node has no event
/// of its own here).
pub const TASK_POLL: Duration = Duration::from_secs(1);

/// How the Swarm loop runs.
#[derive(Clone, Debug)]
pub struct SwarmSettings {
    pub paths: Vec<PathBuf>,
    pub sync_period: Duration,
    pub metrics_interval: Duration,
    pub probe_timeout: Duration,
    pub debounce: Duration,
    pub clock: Clock,
}

/// One service as the loop keeps it.
struct Entry {
    service: ScaledService,
    template_hash: String,
    spec_hash: String,
    autoscaler: Option<Autoscaler>,
    last_reason: Option<crate::autoscale::Reason>,
    /// The spec hash last sent to Swarm, to tell its rollback of our update.
    sent: Option<String>,
    /// A spec Swarm rolled back: not sent again until the spec changes.
    rolled_back: Option<String>,
    last_update: Option<UpdateState>,
    /// The document went away: its service is removed.
    deleting: bool,
    /// Tasks whose drain was announced.
    announced: BTreeSet<String>,
}

impl Entry {
    fn new(service: ScaledService) -> Self {
        let template_hash = template_hash(&service.spec);
        let spec_hash = spec_hash(&service, &template_hash);
        Entry {
            service,
            template_hash,
            spec_hash,
            autoscaler: None,
            last_reason: None,
            sent: None,
            rolled_back: None,
            last_update: None,
            deleting: false,
            announced: BTreeSet::new(),
        }
    }

    fn desired(&self) -> u32 {
        self.autoscaler
            .as_ref()
            .map_or(self.service.spec.replicas, Autoscaler::desired)
    }
}

/// The Swarm controller.
pub struct SwarmController<L: LoadBalancer> {
    settings: SwarmSettings,
    api: Arc<SwarmApi>,
    lb: Arc<L>,
    status: StatusHandle,
    metrics: Arc<Metrics>,
    services: BTreeMap<String, Entry>,
    started: Instant,
    lb_error: Option<String>,
}

impl<L: LoadBalancer> SwarmController<L> {
    pub fn new(
        settings: SwarmSettings,
        services: Vec<LoadedService>,
        api: Arc<SwarmApi>,
        lb: Arc<L>,
        status: StatusHandle,
        metrics: Arc<Metrics>,
    ) -> Self {
        let now = settings.clock.wall();
        status.update(|s| {
            s.spec_loaded = true;
            for l in &services {
                let name = l.service.name().to_owned();
                s.services
                    .insert(name.clone(), ServiceStatus::new(&name, now));
            }
        });
        SwarmController {
            settings,
            api,
            lb,
            status,
            metrics,
            services: services
                .into_iter()
                .map(|l| (l.service.name().to_owned(), Entry::new(l.service)))
                .collect(),
            started: Instant::now(),
            lb_error: None,
        }
    }

    /// Runs until `shutdown` resolves. The services and their tasks keep running.
    pub async fn run(
        mut self,
        mut spec_changes: mpsc::UnboundedReceiver<Change>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        self.configure_lb().await;
        let mut events = self.api.events();
        let mut events_retry: Option<Instant> = None;
        let mut tasks = tokio::time::interval(TASK_POLL);
        tasks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut metrics = tokio::time::interval(self.settings.metrics_interval);
        metrics.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut resync = tokio::time::interval(self.settings.sync_period);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        resync.tick().await;
        let mut lb_restarts = self.lb.restarts();
        let mut due: Option<Instant> = Some(Instant::now());
        let mut reload_at: Option<Instant> = None;
        loop {
            let wake = [due, reload_at, events_retry]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                () = &mut shutdown => break,
                Some(change) = spec_changes.recv() => match change {
                    Change::Replaced => self.reload(true).await,
                    Change::Touched => reload_at = Some(Instant::now() + self.settings.debounce),
                },
                item = next_event(&mut events, events_retry.is_none()) => match item {
                    Some(Ok(what)) => {
                        tracing::debug!(event = %what, "swarm event");
                        // A burst of events is one pass, 50 ms on.
                        due.get_or_insert_with(|| Instant::now() + Duration::from_millis(50));
                    }
                    Some(Err(e)) => {
                        let error = crate::report::Chain(&e);
                        tracing::warn!(%error, "swarm events: reconnecting");
                        events_retry = Some(Instant::now() + Duration::from_secs(1));
                    }
                    None => events_retry = Some(Instant::now() + Duration::from_secs(1)),
                },
                Ok(()) = lb_changed(&mut lb_restarts) => due = Some(Instant::now()),
                _ = tasks.tick() => self.pass_all().await,
                _ = metrics.tick() => self.autoscale().await,
                _ = resync.tick() => self.reload(false).await,
                () = sleep_until(wake) => {
                    let now = Instant::now();
                    if reload_at.is_some_and(|at| at <= now) {
                        reload_at = None;
                        self.reload(true).await;
                    }
                    if events_retry.is_some_and(|at| at <= now) {
                        events_retry = None;
                        events = self.api.events();
                    }
                    if due.is_some_and(|at| at <= now) {
                        due = None;
                        self.pass_all().await;
                    }
                }
            }
        }
        tracing::info!("stopping: the Swarm services and their tasks keep running");
    }

    /// Re-reads the spec; one that does not validate changes nothing.
    async fn reload(&mut self, changed: bool) {
        match manifest::load_for(&self.settings.paths, Runtime::Swarm) {
            Ok(loaded) => {
                self.metrics
                    .spec_reloads_total
                    .with_label_values(&["ok"])
                    .inc();
                self.metrics.spec_valid.set(1);
                let now = self.settings.clock.wall();
                let mut any = false;
                let names: BTreeSet<String> =
                    loaded.iter().map(|l| l.service.name().to_owned()).collect();
                for l in loaded {
                    let name = l.service.name().to_owned();
                    match self.services.get_mut(&name) {
                        Some(e) if e.service == l.service && !e.deleting => {}
                        Some(e) => {
                            let rolled_back = e.rolled_back.take();
                            let autoscaler = e.autoscaler.take();
                            *e = Entry::new(l.service);
                            // A spec rolled back stays so until the spec changes.
                            if rolled_back.as_deref() == Some(e.spec_hash.as_str()) {
                                e.rolled_back = rolled_back;
                            }
                            e.autoscaler = autoscaler;
                            any = true;
                            self.status.update(|s| {
                                if let Some(svc) = s.services.get_mut(&name) {
                                    svc.generation += 1;
                                    svc.deleting = false;
                                }
                            });
                        }
                        None => {
                            any = true;
                            self.services.insert(name.clone(), Entry::new(l.service));
                            self.status.update(|s| {
                                s.services
                                    .insert(name.clone(), ServiceStatus::new(&name, now));
                            });
                        }
                    }
                }
                for (name, e) in self.services.iter_mut() {
                    if !names.contains(name) && !e.deleting {
                        e.deleting = true;
                        any = true;
                    }
                }
                self.status.update(|s| {
                    s.spec_errors.clear();
                    for svc in s.services.values_mut() {
                        svc.set_condition(ConditionType::SpecInvalid, false, "Valid", "", now);
                    }
                });
                if any {
                    self.configure_lb().await;
                    self.pass_all().await;
                }
            }
            Err(errors) => {
                let now = self.settings.clock.wall();
                spec_rejected(&self.metrics, &self.status, now, &errors, changed);
            }
        }
    }

    async fn configure_lb(&mut self) {
        let services: Vec<ScaledService> = self
            .services
            .values()
            .filter(|e| !e.deleting)
            .map(|e| e.service.clone())
            .collect();
        match self.lb.configure(&services).await {
            Ok(_) => self.lb_error = None,
            Err(e) => {
                tracing::error!(error = %crate::report::Chain(&e), "configuring the load balancer");
                self.lb_error = Some(e.to_string());
            }
        }
    }

    /// One pass over every service, from one list of the nodes.
    async fn pass_all(&mut self) {
        let nodes = match self.api.nodes().await {
            Ok(nodes) => {
                self.status.update(|s| s.docker_reachable = true);
                nodes
            }
            Err(e) => {
                tracing::error!(error = %crate::report::Chain(&e), "listing the swarm's nodes");
                self.status.update(|s| s.docker_reachable = false);
                return;
            }
        };
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            let _timer = self.metrics.reconcile_timer(&name);
            let result = self.pass(&name, &nodes).await;
            let label = if result.is_ok() { "ok" } else { "error" };
            self.metrics
                .reconcile_total
                .with_label_values(&[&name, label])
                .inc();
            if let Err(e) = result {
                let error = crate::report::Chain(&e);
                tracing::warn!(service = %name, %error, "swarm pass failed");
                self.metrics
                    .reconcile_errors_total
                    .with_label_values(&[&name, e.kind()])
                    .inc();
                let now = self.settings.clock.wall();
                let message = crate::report::chain(&e);
                self.status.update(|s| {
                    if let Some(svc) = s.services.get_mut(&name) {
                        svc.set_condition(
                            ConditionType::ReplicaFailure,
                            true,
                            "SwarmError",
                            &message,
                            now,
                        );
                    }
                });
            }
        }
    }

    /// One pass of one service: read, plan, act, report.
    async fn pass(
        &mut self,
        name: &str,
        nodes: &BTreeMap<String, SwarmNode>,
    ) -> Result<(), DockerError> {
        let (service, tasks) = self.read(name).await?;
        if self.services.get(name).is_some_and(|e| e.deleting) {
            return self.remove(name, service.as_ref(), &tasks, nodes).await;
        }
        self.follow_autoscaler(name, &tasks);
        if let Some(entry) = self.services.get_mut(name) {
            note_rollback(
                entry,
                service.as_ref(),
                &self.status,
                self.settings.clock.wall(),
            );
        }
        let Some((planned, backend_error)) = self.plan(name, service.as_ref(), &tasks, nodes).await
        else {
            return Ok(());
        };
        tracing::debug!(change = ?planned.change, actions = ?planned.actions, "planned");
        let lb_errors = self.rotate(name, &planned.actions).await;
        self.change(name, &planned, service.as_ref()).await?;
        self.report(name, &planned, &tasks, nodes, backend_error.or(lb_errors));
        Ok(())
    }

    /// The service of that name and, when it is dockscale's, its tasks.
    async fn read(
        &self,
        name: &str,
    ) -> Result<(Option<SwarmService>, Vec<SwarmTask>), DockerError> {
        let service = self.api.service(name).await?;
        let tasks = match &service {
            Some(s) if s.managed => self.api.tasks(&s.id).await?,
            _ => Vec::new(),
        };
        Ok((service, tasks))
    }

    /// Reads the backend, probes the tasks that may serve, and plans. Also returns why
    /// the backend could not be read.
    async fn plan(
        &self,
        name: &str,
        service: Option<&SwarmService>,
        tasks: &[SwarmTask],
        nodes: &BTreeMap<String, SwarmNode>,
    ) -> Option<(SwarmPlan, Option<String>)> {
        let entry = self.services.get(name)?;
        let backend: Option<Result<Backend, LbError>> = match &entry.service.spec.load_balancer {
            Some(lb) => Some(self.lb.backend(lb.backend.as_str()).await),
            None => None,
        };
        let probe = plan::to_probe(tasks, nodes, backend.as_ref().and_then(|b| b.as_ref().ok()));
        let how = crate::runtime::Probe::of(&entry.service.spec);
        let answering =
            crate::runtime::probe_answering(probe, &how, self.settings.probe_timeout).await;
        let input = SwarmInput {
            desired: entry.desired(),
            template_hash: &entry.template_hash,
            spec_hash: &entry.spec_hash,
            service,
            tasks,
            nodes,
            backend: backend.as_ref().map(|b| b.as_ref().ok()),
            answering: &answering,
            rolled_back: entry.rolled_back.as_deref(),
        };
        let backend_error = match &backend {
            Some(Err(e)) => Some(e.to_string()),
            _ => None,
        };
        Some((plan::plan(&input), backend_error))
    }

    /// Reads once and describes what the next pass would do for every service, without
    /// changing anything (`dockscale run --runtime swarm --dry-run`).
    pub async fn dry_run(mut self) -> Result<String, DockerError> {
        use std::fmt::Write;
        let nodes = self.api.nodes().await?;
        let mut out = String::new();
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            let (service, tasks) = self.read(&name).await?;
            self.follow_autoscaler(&name, &tasks);
            let Some((planned, _)) = self.plan(&name, service.as_ref(), &tasks, &nodes).await
            else {
                continue;
            };
            let c = planned.counts;
            let _ = writeln!(
                out,
                "{name}: desired {}, running {}, ready {}, up-to-date {}",
                c.desired, c.current, c.ready, c.updated
            );
            let _ = match &planned.change {
                ServiceChange::Nothing => Ok(()),
                ServiceChange::Create => writeln!(out, "  create the Swarm service"),
                ServiceChange::Respec => writeln!(
                    out,
                    "  update the Swarm service's spec (Swarm rolls its tasks)"
                ),
                ServiceChange::Scale { from, to } => {
                    writeln!(out, "  scale the Swarm service from {from} to {to}")
                }
                ServiceChange::NameTaken => writeln!(
                    out,
                    "  a Swarm service of this name is not dockscale's: left alone"
                ),
            };
            for action in &planned.actions {
                let _ = writeln!(out, "  {action:?}");
            }
            if planned.change == ServiceChange::Nothing && planned.actions.is_empty() {
                out.push_str("  nothing to do\n");
            }
        }
        Ok(out)
    }

    /// Asks Swarm for what the plan says.
    async fn change(
        &mut self,
        name: &str,
        planned: &SwarmPlan,
        service: Option<&SwarmService>,
    ) -> Result<(), DockerError> {
        let Some(entry) = self.services.get_mut(name) else {
            return Ok(());
        };
        let desired = entry.desired();
        let wall = self.settings.clock.wall();
        let event = match (&planned.change, service) {
            (ServiceChange::Create, _) => {
                self.api
                    .ensure_overlay(entry.service.spec.network.as_str())
                    .await?;
                let spec = service_spec(
                    &entry.service,
                    desired,
                    &entry.template_hash,
                    &entry.spec_hash,
                );
                let id = self.api.create_service(spec).await?;
                entry.sent = Some(entry.spec_hash.clone());
                Some((
                    EventType::Normal,
                    "ServiceCreated",
                    format!("Created Swarm service {name} ({id}) with {desired} task(s)"),
                ))
            }
            (ServiceChange::Respec, Some(s)) => {
                let spec = service_spec(
                    &entry.service,
                    desired,
                    &entry.template_hash,
                    &entry.spec_hash,
                );
                self.api.update_service(&s.id, s.version, spec).await?;
                entry.sent = Some(entry.spec_hash.clone());
                Some((
                    EventType::Normal,
                    "RolloutStarted",
                    format!(
                        "Swarm rolls the service to template {} ({desired} task(s))",
                        entry.template_hash
                    ),
                ))
            }
            (ServiceChange::Scale { from, to }, Some(s)) => {
                self.api
                    .update_service(&s.id, s.version, with_replicas(&s.spec, *to))
                    .await?;
                Some((
                    EventType::Normal,
                    "ScalingReplicaSet",
                    format!("Scaled the Swarm service from {from} to {to} task(s)"),
                ))
            }
            _ => None,
        };
        if let Some((kind, reason, message)) = event {
            self.status.update(|s| {
                if let Some(svc) = s.services.get_mut(name) {
                    svc.record(kind, reason, message, wall);
                }
            });
        }
        Ok(())
    }

    /// Carries out the load-balancer steps, in order. Returns the first failure.
    async fn rotate(&mut self, name: &str, actions: &[Action]) -> Option<String> {
        let entry = self.services.get_mut(name)?;
        let lb = entry.service.spec.load_balancer.as_ref()?;
        let backend = lb.backend.to_string();
        let options = lb.server.clone();
        let mut failed: Option<String> = None;
        let mut unassigned: BTreeSet<&str> = BTreeSet::new();
        let mut events = Vec::new();
        for action in actions {
            let result = match action {
                Action::Enable { slot, .. } if unassigned.contains(slot.as_str()) => continue,
                Action::AssignSlot { slot, addr, .. } => {
                    let r = self.lb.assign(&backend, slot, *addr).await;
                    if r.is_err() {
                        unassigned.insert(slot);
                    }
                    r
                }
                Action::Enable { slot, .. } => self.lb.enable(&backend, slot, &options).await,
                Action::Drain { id, slot, .. } => {
                    let r = self.lb.drain(&backend, slot).await;
                    if r.is_ok() && entry.announced.insert(id.0.clone()) {
                        events.push(format!(
                            "Draining {backend}/{slot}: Swarm is stopping task {}",
                            id.short()
                        ));
                    }
                    r
                }
                Action::Release { slot } => self.lb.release(&backend, slot).await,
                Action::Cut { slot, addr } => match self.lb.release(&backend, slot).await {
                    Ok(()) => self.lb.sever(*addr).await.map(|_| ()),
                    Err(e) => Err(e),
                },
                _ => continue,
            };
            if let Err(e) = result {
                let error = crate::report::Chain(&e);
                tracing::warn!(%error, ?action, "load balancer step failed");
                failed.get_or_insert_with(|| e.to_string());
            }
        }
        if !events.is_empty() {
            let wall = self.settings.clock.wall();
            self.status.update(|s| {
                if let Some(svc) = s.services.get_mut(name) {
                    for message in events {
                        svc.record(EventType::Normal, "Draining", message, wall);
                    }
                }
            });
        }
        failed
    }

    /// The service's document went away: its servers out of rotation, then the Swarm
    /// service removed (Swarm stops its tasks with their grace period).
    async fn remove(
        &mut self,
        name: &str,
        service: Option<&SwarmService>,
        tasks: &[SwarmTask],
        nodes: &BTreeMap<String, SwarmNode>,
    ) -> Result<(), DockerError> {
        if let Some(lb) = self
            .services
            .get(name)
            .and_then(|e| e.service.spec.load_balancer.clone())
        {
            let ours: BTreeSet<_> = tasks.iter().filter_map(|t| t.addr(nodes)).collect();
            if let Ok(b) = self.lb.backend(lb.backend.as_str()).await {
                for slot in b
                    .slots
                    .iter()
                    .filter(|s| s.addr.is_some_and(|a| ours.contains(&a)))
                {
                    let _ = self.lb.release(lb.backend.as_str(), &slot.name).await;
                }
            }
        }
        if let Some(s) = service.filter(|s| s.managed) {
            self.api.remove_service(&s.id).await?;
            tracing::info!(service = name, "removed the Swarm service");
        }
        self.services.remove(name);
        self.status.update(|s| s.services.remove(name));
        self.metrics.forget_service(name);
        self.configure_lb().await;
        Ok(())
    }

    fn follow_autoscaler(&mut self, name: &str, tasks: &[SwarmTask]) {
        let started = self.started.elapsed();
        let Some(entry) = self.services.get_mut(name) else {
            return;
        };
        match (&entry.service.spec.autoscale, &mut entry.autoscaler) {
            (Some(config), None) => {
                let running = tasks
                    .iter()
                    .filter(|t| t.desired == crate::runtime::swarm::TaskPhase::Running)
                    .count() as u32;
                let start = if running > 0 {
                    running
                } else {
                    entry.service.spec.replicas
                };
                entry.autoscaler = Some(Autoscaler::new(config, start, started));
            }
            (Some(config), Some(a)) if a.config() != config => a.reconfigure(config),
            (None, Some(_)) => entry.autoscaler = None,
            _ => {}
        }
    }

    /// The metrics tick: autoscaled services sample their backend and decide.
    async fn autoscale(&mut self) {
        let now = self.started.elapsed();
        let names: Vec<String> = self
            .services
            .iter()
            .filter(|(_, e)| e.autoscaler.is_some() && !e.deleting)
            .map(|(n, _)| n.clone())
            .collect();
        let mut changed = false;
        for name in names {
            let Some(backend) = self
                .services
                .get(&name)
                .and_then(|e| e.service.spec.load_balancer.as_ref())
                .map(|lb| lb.backend.to_string())
            else {
                continue;
            };
            let sample = self.lb.load(&backend).await.ok();
            let Some(entry) = self.services.get_mut(&name) else {
                continue;
            };
            let Some(autoscaler) = entry.autoscaler.as_mut() else {
                continue;
            };
            let decision = autoscaler.observe(now, sample);
            let config = autoscaler.config().clone();
            let repeat = entry.last_reason == Some(decision.reason) && !decision.changed();
            entry.last_reason = Some(decision.reason);
            log_decision(&name, &decision, repeat);
            changed |= decision.changed();
            let wall = self.settings.clock.wall();
            publish_decision(
                &self.metrics,
                &self.status,
                wall,
                &name,
                &config,
                sample,
                &decision,
            );
        }
        if changed {
            self.pass_all().await;
        }
    }

    /// Counts, conditions and the task list into the status; gauges.
    fn report(
        &mut self,
        name: &str,
        planned: &SwarmPlan,
        tasks: &[SwarmTask],
        nodes: &BTreeMap<String, SwarmNode>,
        lb_error: Option<String>,
    ) {
        let Some(entry) = self.services.get_mut(name) else {
            return;
        };
        let counts = planned.counts;
        for (gauge, value) in [
            (&self.metrics.replicas_desired, counts.desired),
            (&self.metrics.replicas_current, counts.current),
            (&self.metrics.replicas_ready, counts.ready),
            (&self.metrics.replicas_updated, counts.updated),
        ] {
            gauge.with_label_values(&[name]).set(i64::from(value));
        }
        let listed = task_statuses(tasks, nodes, planned);
        let conditions = plan::conditions(
            &entry.service.spec,
            planned,
            self.lb_error.as_deref().or(lb_error.as_deref()),
        );
        let update_changed = entry.last_update != planned.update;
        entry.last_update = planned.update;
        let wall = self.settings.clock.wall();
        let backend = entry
            .service
            .spec
            .load_balancer
            .as_ref()
            .map(|l| l.backend.to_string());
        let hash = entry.template_hash.clone();
        self.status.update(|s| {
            let Some(svc) = s.services.get_mut(name) else {
                return;
            };
            svc.observed_generation = svc.generation;
            svc.template_hash = hash;
            svc.replicas = counts;
            svc.backend = backend;
            svc.tasks = listed;
            for c in &conditions {
                if svc.set_condition(c.kind, c.status, c.reason, &c.message, wall) && c.event {
                    let kind = if c.warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    };
                    svc.record(kind, c.reason, c.message.clone(), wall);
                }
            }
            if update_changed {
                if let Some(state) = planned.update {
                    svc.record(
                        EventType::Normal,
                        "SwarmUpdate",
                        format!("Swarm's rolling update: {state:?}"),
                        wall,
                    );
                }
            }
        });
    }
}

/// A rollback Swarm made of the spec dockscale sent: remembered, so that it is not sent
/// again until the spec changes, and told in an event.
fn note_rollback(
    entry: &mut Entry,
    service: Option<&SwarmService>,
    status: &StatusHandle,
    wall: std::time::SystemTime,
) {
    let Some(s) = service else {
        return;
    };
    let rolled = matches!(
        s.update.as_ref().map(|u| u.state),
        Some(
            UpdateState::RollbackStarted
                | UpdateState::RollbackCompleted
                | UpdateState::RollbackPaused
        )
    );
    let ours = entry.sent.as_deref() == Some(entry.spec_hash.as_str())
        || s.spec_hash.as_deref() != Some(entry.spec_hash.as_str());
    if rolled && ours && entry.rolled_back.as_deref() != Some(entry.spec_hash.as_str()) {
        entry.rolled_back = Some(entry.spec_hash.clone());
        let message = format!(
            "Swarm rolled back template {}: {}; it is not tried again until the spec changes",
            entry.template_hash,
            s.update.as_ref().map_or("", |u| u.message.as_str())
        );
        tracing::warn!(service = %s.name, "{message}");
        status.update(|st| {
            if let Some(svc) = st.services.get_mut(&s.name) {
                svc.record(EventType::Warning, "RolloutRolledBack", message, wall);
            }
        });
    }
}

fn task_statuses(
    tasks: &[SwarmTask],
    nodes: &BTreeMap<String, SwarmNode>,
    planned: &SwarmPlan,
) -> Vec<TaskStatus> {
    let mut listed: Vec<TaskStatus> = tasks
        .iter()
        .filter(|t| {
            t.desired == crate::runtime::swarm::TaskPhase::Running
                || t.state == crate::runtime::swarm::TaskPhase::Running
        })
        .map(|t| TaskStatus {
            name: t.name.clone(),
            id: t.id.get(..12).unwrap_or(&t.id).to_owned(),
            node: t
                .node_id
                .as_ref()
                .and_then(|n| nodes.get(n))
                .map_or_else(|| "-".to_owned(), |n| n.hostname.clone()),
            desired: t.desired.as_str().to_owned(),
            state: t.state.as_str().to_owned(),
            addr: t.addr(nodes).map(|a| a.to_string()),
            in_rotation: planned.serving.contains(&t.id),
            template_hash: t.template_hash.clone(),
            error: t.error.clone(),
        })
        .collect();
    listed.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
    listed
}

async fn next_event(
    events: &mut BoxStream<'static, Result<String, DockerError>>,
    connected: bool,
) -> Option<Result<String, DockerError>> {
    if connected {
        events.next().await
    } else {
        futures::future::pending().await
    }
}

async fn lb_changed(
    restarts: &mut Option<tokio::sync::watch::Receiver<u64>>,
) -> Result<(), tokio::sync::watch::error::RecvError> {
    match restarts {
        Some(rx) => rx.changed().await,
        None => futures::future::pending().await,
    }
}
