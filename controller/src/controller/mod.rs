//! The controller loop: one owner of all service state, one `select!`.
//!
//! The loop waits on spec-file changes (debounced), Docker events, completions of its
//! own Docker operations, HAProxy restarts, the metrics tick, the resync timer and
//! shutdown; each arm is one call into the modules below. When a service is due it is
//! observed (one Docker list for all services, the service's HAProxy backend, port
//! probes of warming replicas), planned by [`crate::reconcile`] (pure) and executed:
//! load-balancer commands inline (they take milliseconds), Docker creates and stops as
//! background tasks (a stop may wait a whole grace period) whose completions come back
//! to the loop. What is in flight is kept in each service's
//! [`Memory`](crate::reconcile::Memory), so that a burst of events never acts twice.
//!
//! - [`services`]: the services as the loop keeps them, spec reloads, the load
//!   balancer's configuration.
//! - [`events`]: Docker's event stream, kept connected.
//! - [`pass`]: one reconcile pass (observe → plan → execute → status), and the dry run.
//! - [`observe`]: what a pass reads besides the Docker list.
//! - [`execute`]: carrying a plan out, and the completions of Docker operations.
//! - [`autoscaling`]: the metrics tick and the autoscalers' decisions.
//! - [`rollouts`]: rollout commands (`dockscale rollout`) from the HTTP server, applied
//!   by the pure [`crate::reconcile::control`] and answered; the rollout history, kept
//!   per service and saved under the state directory.
//! - [`error`]: the errors of a pass and how soon each is retried.
//! - [`store`], [`watch`], [`claim`], [`clock`]: the container store, the spec file
//!   watch, the claim on the engine, the clock.
//!
//! Errors requeue the failing service as [`error::error_policy`] says; other services
//! go on. Each service's status the HTTP server shows is written by this loop only,
//! its conditions derived by [`crate::reconcile::conditions`]; HAProxy's reachability
//! and the standby state have writers of their own ([`crate::serve::status`]).

pub mod autoscaling;
pub mod claim;
pub mod clock;
pub mod error;
pub mod events;
pub mod execute;
pub mod lease;
pub mod observe;
pub mod pass;
pub mod rollouts;
#[cfg(test)]
mod scenarios;
pub mod services;
pub mod store;
pub mod swarm;
pub mod warm_pool;
pub mod watch;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant, Interval, MissedTickBehavior};

use crate::controller::clock::Clock;
use crate::controller::events::EventFeed;
use crate::controller::execute::Done;
use crate::controller::services::{Entry, LbState};
use crate::controller::store::ReplicaStore;
use crate::lb::LoadBalancer;
use crate::reconcile::BackoffPolicy;
use crate::runtime::ContainerRuntime;
use crate::serve::metrics::Metrics;
use crate::serve::status::StatusHandle;
use crate::spec::frontend::Frontend;
use crate::spec::manifest::LoadedService;

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
    /// How often HAProxy's held requests are read while a service is at zero
    /// replicas (scale to zero): the delay before a held request wakes it.
    pub holds_interval: Duration,
    /// The wall clock (the system's, or one following tokio's paused time in tests).
    pub clock: Clock,
    /// Where the services' rollout histories are kept (`<state-dir>/rollouts`); none:
    /// in memory only.
    pub history_dir: Option<PathBuf>,
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
            holds_interval: Duration::from_millis(100),
            clock: Clock::System,
            history_dir: None,
        }
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
    /// Docker creates and stops under way.
    tasks: JoinSet<Done>,
    /// What the load balancer was last configured with, and its failures.
    lb_state: LbState,
    /// The autoscalers' time origin.
    started: Instant,
    /// The owned containers between two Docker lists.
    store: ReplicaStore,
    /// The shared frontends (`kind: Frontend`) of the spec.
    frontends: Vec<Frontend>,
    /// Rollout commands from the HTTP server (taken by [`Controller::run`]).
    commands: Option<mpsc::Receiver<rollouts::CommandRequest>>,
    /// Writes the rollout histories (started by [`Controller::run`] with a history
    /// directory).
    history_writer: Option<rollouts::HistoryWriter>,
}

/// The loop's timers besides the services' own due times.
struct Timers {
    resync: Interval,
    metrics: Interval,
    /// Held requests read while a service is at zero.
    holds: Interval,
    /// A spec file was written in place: re-read it once it has settled.
    reload_at: Option<Instant>,
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
        let names = services.iter().map(|l| l.service.name().to_owned());
        status.update(|s| s.loaded(names, now));
        let services = services
            .into_iter()
            .map(|l| {
                let mut entry = Entry::new(l.service);
                if let Some(dir) = &settings.history_dir {
                    entry.load_history(dir);
                }
                (entry.spec.name().to_owned(), entry)
            })
            .collect();
        Controller {
            settings,
            runtime,
            lb,
            status,
            metrics,
            services,
            tasks: JoinSet::new(),
            lb_state: LbState::default(),
            started: Instant::now(),
            store: ReplicaStore::new(),
            frontends: Vec::new(),
            commands: None,
            history_writer: None,
        }
    }

    /// Takes rollout commands from `commands` (the HTTP server's write endpoints).
    pub fn with_rollout_commands(
        mut self,
        commands: mpsc::Receiver<rollouts::CommandRequest>,
    ) -> Self {
        self.commands = Some(commands);
        self
    }

    /// With the spec's shared frontends.
    pub fn with_frontends(mut self, frontends: Vec<Frontend>) -> Self {
        self.frontends = frontends;
        self
    }

    /// The status handle this controller writes.
    pub fn status(&self) -> StatusHandle {
        self.status.clone()
    }

    /// Runs until `shutdown` resolves. Replicas are left running.
    pub async fn run(
        mut self,
        mut spec_changes: mpsc::UnboundedReceiver<watch::Change>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut timers = Timers {
            resync: interval(self.settings.sync_period),
            metrics: interval(self.settings.metrics_interval),
            holds: interval(self.settings.holds_interval),
            reload_at: None,
        };
        // The first tick is immediate; services start due anyway.
        timers.resync.tick().await;
        let mut feed = EventFeed::default();
        self.connect_events(&mut feed);
        self.report_orphans().await;
        self.configure_lb().await;
        let mut lb_restarts = self.lb.restarts();
        let mut commands = self.commands.take();
        self.history_writer = self
            .settings
            .history_dir
            .clone()
            .map(rollouts::HistoryWriter::start);

        loop {
            let wake = self.next_wake(&timers, &feed);
            tokio::select! {
                _ = &mut shutdown => break,
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    self.on_task(done);
                }
                Some(change) = spec_changes.recv() => {
                    self.on_spec_change(change, &mut timers.reload_at).await;
                }
                event = feed.next() => self.on_event_item(event, &mut feed),
                Some(request) = next_command(&mut commands) => self.on_command(request),
                Ok(()) = lb_changed(&mut lb_restarts) => self.wake_all(),
                _ = timers.metrics.tick() => self.autoscale().await,
                _ = timers.holds.tick(), if self.any_at_zero() => self.read_holds().await,
                _ = timers.resync.tick() => self.resync().await,
                _ = sleep_until(wake) => self.on_wake(&mut timers, &mut feed).await,
            }
        }
        self.shutdown().await;
    }

    /// The soonest of the services' due times and the loop's own deadlines.
    fn next_wake(&self, timers: &Timers, feed: &EventFeed) -> Instant {
        self.services
            .values()
            .filter_map(|e| e.due)
            .chain(timers.reload_at)
            .chain(self.lb_state.retry_at)
            .chain(feed.retry_at())
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    /// A deadline passed: a settled spec edit, a load-balancer retry, an event stream
    /// to reconnect, services due.
    async fn on_wake(&mut self, timers: &mut Timers, feed: &mut EventFeed) {
        let now = Instant::now();
        if timers.reload_at.is_some_and(|at| at <= now) {
            timers.reload_at = None;
            self.reload(true).await;
        }
        if self.lb_state.retry_at.is_some_and(|at| at <= now) {
            self.lb_state.retry_at = None;
            self.configure_lb().await;
        }
        self.reconnect_events(feed, now);
        self.reconcile_due().await;
    }

    /// The resync: the spec re-read, everything listed again (what no event announced
    /// is seen here), every service reconciled.
    async fn resync(&mut self) {
        self.reload(false).await;
        self.store.invalidate();
        self.wake_all();
    }

    /// Every service due now (HAProxy lost its runtime state, events may be missed).
    fn wake_all(&mut self) {
        let now = Instant::now();
        for entry in self.services.values_mut() {
            entry.wake(now);
        }
    }
}

fn interval(period: Duration) -> Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
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

/// The next rollout command (never, without a channel or once it closed).
async fn next_command(
    commands: &mut Option<mpsc::Receiver<rollouts::CommandRequest>>,
) -> Option<rollouts::CommandRequest> {
    match commands {
        Some(rx) => match rx.recv().await {
            Some(request) => Some(request),
            None => {
                *commands = None;
                futures::future::pending().await
            }
        },
        None => futures::future::pending().await,
    }
}
