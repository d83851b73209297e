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
//!
//! - `pass`: one pass of a service (read, plan, act), the removal of a service, the
//!   dry run.
//! - `report`: the autoscaler's tick and the status a pass leaves.

mod pass;
mod report;

use crate::spec::frontend::Frontend;
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
    /// The shared frontends (`kind: Frontend`) of the spec.
    frontends: Vec<Frontend>,
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
        let names = services.iter().map(|l| l.service.name().to_owned());
        status.update(|s| s.loaded(names, now));
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
            frontends: Vec::new(),
        }
    }

    /// With the spec's shared frontends.
    pub fn with_frontends(mut self, frontends: Vec<Frontend>) -> Self {
        self.frontends = frontends;
        self
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
        match manifest::load_all(&self.settings.paths, Runtime::Swarm) {
            Ok(loaded) => {
                let frontends: Vec<Frontend> =
                    loaded.frontends.into_iter().map(|l| l.frontend).collect();
                let mut any = self.frontends != frontends;
                self.frontends = frontends;
                let loaded = loaded.services;
                self.metrics
                    .spec_reloads_total
                    .with_label_values(&["ok"])
                    .inc();
                self.metrics.spec_valid.set(1);
                let now = self.settings.clock.wall();
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
        // Members are not supported on Swarm: no room is made for any.
        let members = crate::lb::MemberCounts::new();
        match self
            .lb
            .configure(&services, &members, &self.frontends)
            .await
        {
            Ok(_) => self.lb_error = None,
            Err(e) => {
                tracing::error!(error = %crate::report::Chain(&e), "configuring the load balancer");
                self.lb_error = Some(e.to_string());
            }
        }
    }
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
