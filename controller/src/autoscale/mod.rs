//! The autoscaler: HAProxy's backend load in, a replica count out. Pure: no I/O and
//! no clock reads; time is passed in as a [`Duration`] since any fixed origin, so the
//! controller, the simulator (`dockscale simulate`) and the tests drive the very same
//! code.
//!
//! It follows the Kubernetes Horizontal Pod Autoscaler
//! (<https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/>,
//! "Algorithm details", "Stabilization window", "Scaling policies"):
//!
//! - **Signal.** Demand is the mean over `behavior.scaleUp.period` of `scur + qcur`:
//!   requests being served plus requests HAProxy queued because every server was at
//!   its `maxconn`. `desired = ceil(demand / inflightPerReplica)`. With a
//!   `queueTimeMillis` target, `desired = ceil(current × qtime / target)` (the HPA's
//!   `currentReplicas × currentMetric / desiredMetric`); `qtime` is HAProxy's average
//!   over the last 1024 requests, so this target reacts more slowly.
//! - **Several signals.** `targets` adds `responseTimeMillis` (`rtime`, like `qtime`
//!   a ratio to the current count) and `requestsPerSecondPerReplica` (`rate`, divided
//!   like in-flight). Each signal recommends on its own and the highest wins (the HPA
//!   with several metrics); the decision names it ([`Decision::signal`]).
//! - **Tolerance.** When a signal's ratio of metric to what the current replicas are
//!   meant to carry is within the tolerance of 1 (default 10%; `scaleUp` above 1,
//!   `scaleDown` below), that signal recommends the current count.
//! - **Schedules.** `schedules` open windows by cron expression and time zone
//!   ([`schedule`]); inside one, the minimum is raised to its `minReplicas` (the
//!   highest of the windows in force) at once, as the HPA applies a raised
//!   `minReplicas`, and the load can still take the count higher. The wall-clock time
//!   is passed in next to the monotonic one. A window that ends lowers nothing by
//!   itself: its recommendations stay in the scale-down window, so the count comes
//!   down through stabilization and the rate limit like after any drop in load.
//! - **Stale metrics.** With `fallback`, after `fallback.after` without a good sample
//!   the count is held or raised to `fallback.replicas`, never lowered
//!   ([`Reason::MetricsUnavailable`]).
//! - **Stabilization.** The HPA's rule: scale up to the *lowest* recommendation seen in
//!   `scaleUp.stabilizationWindow`, scale down to the *highest* seen in
//!   `scaleDown.stabilizationWindow`, so a spike shorter than the window moves nothing
//!   and a dip does not drop replicas that will be needed a moment later.
//! - **Rate limits.** At most `maxStep` replicas added per `scaleUp.period` and removed
//!   per `scaleDown.period` (the HPA's `Pods` policy), counted over the changes this
//!   autoscaler made in the period.
//! - **Bounds.** Clamped to `[minReplicas, maxReplicas]`; the spec's `replicas` is only
//!   the starting point. The load never takes the count below 1, whatever
//!   `minReplicas`.
//! - **Scale to zero** (not the HPA's; Knative's idea, with HAProxy holding the
//!   requests). With `minReplicas: 0` and `scaleToZero`, `idleAfter` without a single
//!   request (nothing in flight or queued in any sample *and* the backend's cumulative
//!   request counter unchanged) takes the count straight to 0 ([`Reason::ScaledToZero`]);
//!   at zero, a request seen in a sample or held by HAProxy ([`Autoscaler::wake`])
//!   takes it to `max(1, what the requests need)` at once ([`Reason::Woken`]).
//!
//! Where it differs: the base of every computation is the count the autoscaler last
//! asked for, not the count that is ready, so replicas still starting count as if they
//! served (no runaway scale-up while they start; the HPA gets the same effect from its
//! readiness delay). A failed sample is a gap, never a zero: with no sample in the
//! window nothing changes, and while the latest sample is missing the autoscaler only
//! scales up.

pub mod plot;
pub mod schedule;
pub mod simulate;

use std::collections::VecDeque;
use std::fmt::Write;
use std::time::{Duration, SystemTime};

use schedule::{Holds, Windows};

use crate::model::backend::BackendLoad;
use crate::spec::{Autoscale, Target, Tolerance};

/// Why the autoscaler decided what it did. Bounded: used as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Reason {
    ScaledUp,
    ScaledDown,
    /// The recommendation moved but the rate limit (`maxStep` per `period`) held it.
    LimitedByMaxStep,
    /// The recommendation moved but the stabilization window held it.
    Stabilizing,
    /// Demand is within the tolerance of what the replicas carry.
    WithinTolerance,
    /// The recommendation was below `minReplicas`.
    AtMinReplicas,
    /// The recommendation was above `maxReplicas`.
    AtMaxReplicas,
    /// The recommendation equals the current count.
    Steady,
    /// No usable sample: nothing changes.
    NoMetrics,
    /// No good sample for `fallback.after`: the count is held, or raised to
    /// `fallback.replicas`; never lowered.
    MetricsUnavailable,
    /// Scale to zero: no request at all for `idleAfter`, so the count went to 0.
    ScaledToZero,
    /// Scale to zero: at zero, and still no request.
    Idle,
    /// Scale to zero: a request arrived (HAProxy holds it) while at zero, so the
    /// count went to at least 1.
    Woken,
    /// The recommendation was below the floor of a schedule window in force.
    AtScheduleFloor,
}

impl Reason {
    pub const ALL: [Reason; 14] = [
        Reason::ScaledUp,
        Reason::ScaledDown,
        Reason::LimitedByMaxStep,
        Reason::Stabilizing,
        Reason::WithinTolerance,
        Reason::AtMinReplicas,
        Reason::AtMaxReplicas,
        Reason::Steady,
        Reason::NoMetrics,
        Reason::MetricsUnavailable,
        Reason::ScaledToZero,
        Reason::Idle,
        Reason::Woken,
        Reason::AtScheduleFloor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ScaledUp => "ScaledUp",
            Reason::ScaledDown => "ScaledDown",
            Reason::LimitedByMaxStep => "LimitedByMaxStep",
            Reason::Stabilizing => "Stabilizing",
            Reason::WithinTolerance => "WithinTolerance",
            Reason::AtMinReplicas => "AtMinReplicas",
            Reason::AtMaxReplicas => "AtMaxReplicas",
            Reason::Steady => "Steady",
            Reason::NoMetrics => "NoMetrics",
            Reason::MetricsUnavailable => "MetricsUnavailable",
            Reason::ScaledToZero => "ScaledToZero",
            Reason::Idle => "Idle",
            Reason::Woken => "Woken",
            Reason::AtScheduleFloor => "AtScheduleFloor",
        }
    }
}

/// One decision, with its inputs, for logs, status and metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The replica count to run from now on.
    pub desired: u32,
    /// The count before this decision.
    pub previous: u32,
    /// The raw recommendation (demand over target, tolerance applied, clamped), before
    /// stabilization and rate limits. `None` without metrics.
    pub recommendation: Option<u32>,
    /// Mean `scur + qcur` over the scale-up period.
    pub demand: Option<f64>,
    /// Mean `qtime` over the period, in milliseconds.
    pub qtime_ms: Option<f64>,
    /// The signal whose recommendation won (the highest), `None` without metrics.
    pub signal: Option<Target>,
    /// The schedule windows at this moment (in force, next); `None` without
    /// `schedules`.
    pub schedule: Option<Windows>,
    /// The floor of the window in force decided the count: the load asked for less.
    pub by_schedule: bool,
    pub reason: Reason,
    pub message: String,
}

impl Decision {
    pub fn changed(&self) -> bool {
        self.desired != self.previous
    }

    /// What decided the count, as status and the simulator name it: `schedule` when
    /// a window's floor did, else the signal's name (`inflightPerReplica`).
    pub fn decided_by(&self) -> Option<&'static str> {
        if self.by_schedule {
            Some("schedule")
        } else {
            self.signal.map(Target::name)
        }
    }

    /// The floor of the schedule window in force, if any.
    pub fn schedule_floor(&self) -> Option<u32> {
        self.schedule.as_ref().and_then(Windows::floor)
    }
}

/// The autoscaler of one service.
#[derive(Clone, Debug)]
pub struct Autoscaler {
    config: Autoscale,
    desired: u32,
    /// Samples within the averaging window; `None` is a failed sample.
    samples: VecDeque<(Duration, Option<BackendLoad>)>,
    /// Raw recommendations within the longest stabilization window.
    recommendations: VecDeque<(Duration, u32)>,
    /// Changes made, within the longest rate-limit period (signed).
    changes: VecDeque<(Duration, i64)>,
    /// When it started, and with what count: held as a scale-down recommendation for
    /// the first scale-down window.
    start: (Duration, u32),
    /// When the last good sample arrived (the start until one does).
    last_good: Duration,
    /// Scale to zero: when the backend last showed a request (in flight, queued,
    /// counted or held); the start until it does.
    last_activity: Duration,
    /// The backend's request counter in the last good sample.
    last_requests: Option<u64>,
}

impl Autoscaler {
    /// Starts at `now` from `replicas` (the spec's count, or the replicas found
    /// running when the controller starts), clamped to the bounds. The starting count
    /// counts as a recommendation, so nothing is scaled down within the first
    /// scale-down window.
    pub fn new(config: &Autoscale, replicas: u32, now: Duration) -> Self {
        let desired = replicas.clamp(config.min_replicas, config.max_replicas);
        Autoscaler {
            desired,
            config: config.clone(),
            samples: VecDeque::new(),
            recommendations: VecDeque::new(),
            changes: VecDeque::new(),
            start: (now, desired),
            last_good: now,
            last_activity: now,
            last_requests: None,
        }
    }

    /// Takes a new configuration (a spec edit), keeping the history; the current
    /// count is clamped to the new bounds.
    pub fn reconfigure(&mut self, config: &Autoscale) {
        self.config = config.clone();
        self.desired = self.desired.clamp(config.min_replicas, config.max_replicas);
    }

    pub fn config(&self) -> &Autoscale {
        &self.config
    }

    /// The count the autoscaler currently asks for.
    pub fn desired(&self) -> u32 {
        self.desired
    }

    /// Takes one sample (`None`: the sample failed) taken at `now` (monotonic) and
    /// `wall` (the wall-clock time the schedules are read against) and decides.
    pub fn observe(
        &mut self,
        now: Duration,
        wall: SystemTime,
        sample: Option<BackendLoad>,
    ) -> Decision {
        let windows = (!self.config.schedules.is_empty())
            .then(|| schedule::windows_at(&self.config.schedules, wall));
        let mut decision = self.decide(now, wall, windows.as_ref(), sample);
        decision.schedule = windows;
        decision
    }

    /// The HPA's steps in their order, each feeding the next: demand, the raw
    /// recommendation with the schedule's floor and the tolerance band
    /// ([`Signal::evaluate`]), the stabilization windows ([`Self::stabilize`]), the rate
    /// limits ([`Self::rate_limit`]), the bounds; then why ([`Steps::reason`]) and the
    /// explanation ([`Steps::message`]).
    fn decide(
        &mut self,
        now: Duration,
        wall: SystemTime,
        windows: Option<&Windows>,
        sample: Option<BackendLoad>,
    ) -> Decision {
        let window = self.config.behavior.scale_up.period.get();
        self.remember(now, sample);
        let current = self.desired;
        // Zero is reached through idleness only (see `idle`), never through a low load.
        let (min, max) = (self.config.load_floor(), self.config.max_replicas);
        // The window in force raises the minimum (never above the maximum); while it
        // holds more than `minReplicas`, the service does not idle down to zero.
        let active = windows.and_then(|w| w.active.as_ref());
        let raised = active.is_some_and(|w| w.min_replicas > self.config.min_replicas);
        let floor = active.map_or(min, |w| w.min_replicas.clamp(min, max));
        let holds = active.map(|window| Holds { window, now: wall }.to_string());
        if !raised {
            if let Some(decision) = self.idle(now, current, sample) {
                return decision;
            }
        }
        if let Some(decision) = self.fallback(now, current, floor, holds.as_deref()) {
            return decision;
        }
        let valid: Vec<&BackendLoad> = self
            .samples
            .iter()
            .filter_map(|(_, s)| s.as_ref())
            .collect();
        if valid.is_empty() {
            return self.without_samples(now, window, current, floor, holds.as_deref());
        }
        let window_load = Averages::of(&valid);
        let (demand, qtime) = (window_load.demand, window_load.qtime_ms);
        let latest_missing = sample.is_none();

        // The raw recommendation of every signal, each with its tolerance band; the
        // highest wins (the HPA with several metrics).
        let tolerance = self.config.tolerance;
        let signals: Vec<Signal> = self
            .config
            .signals()
            .into_iter()
            .map(|t| Signal::evaluate(t, &window_load, current, tolerance))
            .collect();
        let Some(decider) =
            signals
                .iter()
                .copied()
                .reduce(|best, s| if s.wanted > best.wanted { s } else { best })
        else {
            // Validation rejects a spec without a target; hold rather than guess.
            return Decision {
                desired: current,
                previous: current,
                recommendation: None,
                demand: Some(demand),
                qtime_ms: Some(qtime),
                signal: None,
                schedule: None,
                by_schedule: false,
                reason: Reason::NoMetrics,
                message: format!("autoscaler: no target, keeping {current}"),
            };
        };
        let unclamped = decider.wanted;
        // Below the floor of a window in force, the floor is the recommendation: it
        // stays in the scale-down window once the window ends (no cliff).
        let recommendation = unclamped.clamp(floor, max);
        self.recommendations.push_back((now, recommendation));
        let stabilized = self.stabilize(now, current, recommendation, latest_missing);
        let limited = self.rate_limit(now, current, stabilized);
        // The floor applies at once, whatever the rate limit (as a raised minimum).
        let desired = limited.clamp(floor, max);
        let steps = Steps {
            current,
            unclamped,
            recommendation,
            stabilized,
            limited,
            desired,
            floor,
            min,
            max,
            within_tolerance: decider.within_tolerance,
            by_schedule: floor > min && desired == floor && unclamped < floor,
        };
        let message = steps.message(
            demand,
            &signal_texts(&signals, decider),
            holds.as_deref(),
            tolerance,
            latest_missing,
        );
        self.record_change(now, current, desired);
        Decision {
            desired,
            previous: current,
            recommendation: Some(recommendation),
            demand: Some(demand),
            qtime_ms: Some(qtime),
            signal: Some(decider.target),
            schedule: None,
            by_schedule: steps.by_schedule,
            reason: steps.reason(),
            message,
        }
    }

    /// Keeps the sample (and when the last good one was) and drops what every window
    /// has left behind.
    fn remember(&mut self, now: Duration, sample: Option<BackendLoad>) {
        let b = &self.config.behavior;
        self.samples.push_back((now, sample));
        trim(&mut self.samples, now, b.scale_up.period.get());
        let longest_stabilization = b
            .scale_up
            .stabilization_window
            .get()
            .max(b.scale_down.stabilization_window.get());
        trim(&mut self.recommendations, now, longest_stabilization);
        let longest_period = b.scale_up.period.get().max(b.scale_down.period.get());
        trim(&mut self.changes, now, longest_period);
        if let Some(load) = sample {
            self.last_good = now;
            self.note_activity(now, &load);
        }
    }

    /// No good sample in the window: the count is kept, or raised to a schedule's
    /// floor.
    fn without_samples(
        &mut self,
        now: Duration,
        window: Duration,
        current: u32,
        floor: u32,
        holds: Option<&str>,
    ) -> Decision {
        let mut message = format!(
            "autoscaler: no sample in the last {}",
            humantime::format_duration(window)
        );
        let desired = current.max(floor);
        if let (true, Some(holds)) = (desired > current, holds) {
            let _ = write!(message, ", {holds}: scaling up from {current} to {desired}");
            self.record_change(now, current, desired);
        } else {
            let _ = write!(message, ", keeping {current}");
        }
        Decision {
            desired,
            previous: current,
            recommendation: None,
            demand: None,
            qtime_ms: None,
            signal: None,
            schedule: None,
            by_schedule: desired > current,
            reason: if desired > current {
                Reason::ScaledUp
            } else {
                Reason::NoMetrics
            },
            message,
        }
    }

    /// The HPA's stabilization: up to the lowest recommendation of the scale-up
    /// window, down to the highest of the scale-down window (the starting count
    /// counts as one while the controller is younger than it); never down while the
    /// latest sample is missing.
    fn stabilize(
        &self,
        now: Duration,
        current: u32,
        recommendation: u32,
        latest_missing: bool,
    ) -> u32 {
        let b = &self.config.behavior;
        let in_window = |w: Duration| {
            self.recommendations
                .iter()
                .filter(move |(t, _)| now.saturating_sub(*t) <= w)
                .map(|(_, r)| *r)
        };
        let up_floor = in_window(b.scale_up.stabilization_window.get())
            .min()
            .unwrap_or(recommendation);
        let down_window = b.scale_down.stabilization_window.get();
        let starting = (now.saturating_sub(self.start.0) <= down_window).then_some(self.start.1);
        let down_ceiling = in_window(down_window)
            .chain(starting)
            .max()
            .unwrap_or(recommendation);
        let mut stabilized = current.max(up_floor).min(down_ceiling);
        if latest_missing && stabilized < current {
            stabilized = current;
        }
        stabilized
    }

    /// The rate limits: at most `maxStep` replicas added (or removed) over each
    /// direction's period.
    fn rate_limit(&self, now: Duration, current: u32, stabilized: u32) -> u32 {
        let b = &self.config.behavior;
        let moved = |period: Duration, up: bool| -> u32 {
            self.changes
                .iter()
                .filter(|(t, _)| now.saturating_sub(*t) < period)
                .map(|(_, d)| if up { (*d).max(0) } else { (-*d).max(0) })
                .sum::<i64>()
                .try_into()
                .unwrap_or(u32::MAX)
        };
        if stabilized > current {
            let room = b
                .scale_up
                .max_step
                .saturating_sub(moved(b.scale_up.period.get(), true));
            stabilized.min(current.saturating_add(room))
        } else if stabilized < current {
            let room = b
                .scale_down
                .max_step
                .saturating_sub(moved(b.scale_down.period.get(), false));
            stabilized.max(current.saturating_sub(room))
        } else {
            stabilized
        }
    }

    /// A request seen in a sample: one in flight or queued, a positive rate, or a
    /// request counter that moved (reset by an HAProxy restart: moved too).
    fn note_activity(&mut self, now: Duration, load: &BackendLoad) {
        let counted = self.last_requests.is_some_and(|r| r != load.requests);
        if counted || load.scur + load.qcur > 0.0 || load.rate > 0.0 {
            self.last_activity = now;
        }
        self.last_requests = Some(load.requests);
    }

    /// Scale to zero, on a sample: at zero, stay there while nothing comes and wake
    /// when something did; above it, go to zero after `idleAfter` without a request.
    /// `None`: scale to zero is off, or the load decides (the HPA's rules).
    ///
    /// A gap in the samples is no proof of idleness, but the request counter is
    /// cumulative: the next good sample shows whether requests came in between, so
    /// only a good latest sample can take the count to zero.
    fn idle(
        &mut self,
        now: Duration,
        current: u32,
        sample: Option<BackendLoad>,
    ) -> Option<Decision> {
        let idle_after = self.config.scales_to_zero()?.idle_after;
        let quiet = now.saturating_sub(self.last_activity);
        let demand = sample.map(|l| l.scur + l.qcur);
        let decision = |desired: u32, reason: Reason, message: String| Decision {
            desired,
            previous: current,
            recommendation: Some(desired),
            demand,
            qtime_ms: sample.map(|l| l.qtime_ms),
            signal: None,
            reason,
            message,
            schedule: None,
            by_schedule: false,
        };
        if current == 0 {
            if quiet.is_zero() && sample.is_some() {
                let waiting = demand.unwrap_or(0.0);
                let d = self.wake_to(now, waiting);
                return Some(decision(
                    d,
                    Reason::Woken,
                    format!(
                        "autoscaler: woken by a held request (a request seen at zero, \
                         demand {waiting:.1}): scaling up from 0 to {d}"
                    ),
                ));
            }
            return Some(decision(
                0,
                Reason::Idle,
                format!(
                    "autoscaler: at zero, no request for {} (idleAfter {idle_after})",
                    whole_seconds(quiet)
                ),
            ));
        }
        if sample.is_none() || quiet < idle_after.get() {
            return None;
        }
        self.changes.push_back((now, -i64::from(current)));
        self.desired = 0;
        Some(decision(
            0,
            Reason::ScaledToZero,
            format!(
                "autoscaler: no request for {} (idleAfter {idle_after}): scaling down \
                 from {current} to 0",
                whole_seconds(quiet)
            ),
        ))
    }

    /// A request HAProxy holds for this service (its Lua action counted `waiting` at
    /// once): at zero, the count goes to `max(1, what the held requests need)` now,
    /// without waiting for the next sample. Above zero it only counts as activity
    /// (`None`). Scale to zero off: `None`.
    pub fn wake(&mut self, now: Duration, waiting: u32) -> Option<Decision> {
        self.config.scales_to_zero()?;
        self.last_activity = now;
        if self.desired != 0 {
            return None;
        }
        let d = self.wake_to(now, f64::from(waiting));
        Some(Decision {
            desired: d,
            previous: 0,
            recommendation: Some(d),
            demand: Some(f64::from(waiting)),
            qtime_ms: None,
            signal: None,
            reason: Reason::Woken,
            message: format!(
                "autoscaler: woken by a held request ({waiting} held): scaling up from 0 to {d}"
            ),
            schedule: None,
            by_schedule: false,
        })
    }

    /// From zero to `max(1, what `demand` in flight needs)` by the per-replica
    /// targets, within `maxStep` and `maxReplicas`; recorded as a change.
    fn wake_to(&mut self, now: Duration, demand: f64) -> u32 {
        let load = Averages {
            demand,
            qtime_ms: 0.0,
            rtime_ms: 0.0,
            rate: 0.0,
        };
        let needed = self
            .config
            .signals()
            .into_iter()
            .map(|t| Signal::evaluate(t, &load, 0, self.config.tolerance).wanted)
            .max()
            .unwrap_or(1);
        let step = self.config.behavior.scale_up.max_step.max(1);
        let desired = needed.max(1).min(step).min(self.config.max_replicas.max(1));
        self.last_activity = now;
        self.changes.push_back((now, i64::from(desired)));
        self.desired = desired;
        desired
    }

    /// A change of the count, counted against the rate limits.
    fn record_change(&mut self, now: Duration, current: u32, desired: u32) {
        if desired != current {
            self.changes
                .push_back((now, i64::from(desired) - i64::from(current)));
            self.desired = desired;
        }
    }

    /// Stale metrics: after `fallback.after` without a good sample, hold the count or
    /// raise it to `fallback.replicas` (or the `floor` of a schedule window in force,
    /// which `holds` names). Never lowers it (so never to zero). `None`: no fallback
    /// configured, or a good sample is recent enough.
    fn fallback(
        &mut self,
        now: Duration,
        current: u32,
        floor: u32,
        holds: Option<&str>,
    ) -> Option<Decision> {
        let f = self.config.fallback.as_ref()?;
        let blind = now.saturating_sub(self.last_good);
        if blind < f.after.get() {
            return None;
        }
        let (min, max) = (floor, self.config.max_replicas);
        let wanted = f.replicas.unwrap_or(current).max(current);
        let desired = wanted.clamp(min, max);
        let by_schedule = desired > wanted;
        let mut message = format!(
            "autoscaler: no good sample for {} (fallback after {})",
            humantime::format_duration(Duration::from_secs(blind.as_secs())),
            f.after
        );
        match (desired > current, holds) {
            (true, Some(holds)) if by_schedule => {
                let _ = write!(message, ", {holds}: scaling up from {current} to {desired}");
            }
            (true, _) => {
                let _ = write!(
                    message,
                    ": scaling up from {current} to fallback.replicas {desired}"
                );
            }
            (false, _) => {
                let _ = write!(message, ": keeping {current}");
            }
        }
        self.record_change(now, current, desired);
        Some(Decision {
            desired,
            previous: current,
            recommendation: None,
            demand: None,
            qtime_ms: None,
            signal: None,
            schedule: None,
            by_schedule,
            reason: Reason::MetricsUnavailable,
            message,
        })
    }
}

/// The backend's figures averaged over the sampling window.
#[derive(Clone, Copy, Debug)]
struct Averages {
    /// `scur + qcur`.
    demand: f64,
    qtime_ms: f64,
    rtime_ms: f64,
    rate: f64,
}

impl Averages {
    /// `samples` is not empty (the caller checks).
    fn of(samples: &[&BackendLoad]) -> Self {
        let n = samples.len() as f64;
        let mean = |f: fn(&BackendLoad) -> f64| samples.iter().map(|l| f(l)).sum::<f64>() / n;
        Averages {
            demand: mean(|l| l.scur + l.qcur),
            qtime_ms: mean(|l| l.qtime_ms),
            rtime_ms: mean(|l| l.rtime_ms),
            rate: mean(|l| l.rate),
        }
    }
}

/// One signal's recommendation: the HPA's `ceil(current × metric / target)`, or
/// `current` when the ratio is within the tolerance of its direction.
#[derive(Clone, Copy, Debug)]
struct Signal {
    target: Target,
    /// The measured figure the target is compared with.
    metric: f64,
    /// Metric over what the current replicas are meant to carry.
    ratio: f64,
    within_tolerance: bool,
    /// Before the bounds.
    wanted: u32,
}

impl Signal {
    fn evaluate(target: Target, load: &Averages, current: u32, tolerance: Tolerance) -> Self {
        let per_replica = |metric: f64, per: f64| {
            let ratio = metric / (f64::from(current.max(1)) * per);
            (metric, ratio, (metric / per).ceil())
        };
        let latency = |metric: f64, ms: u32| {
            let ratio = metric / f64::from(ms);
            (metric, ratio, (f64::from(current) * ratio).ceil())
        };
        let (metric, ratio, raw) = match target {
            Target::InflightPerReplica(per) => per_replica(load.demand, per),
            Target::RequestsPerSecondPerReplica(per) => per_replica(load.rate, per),
            Target::QueueTimeMillis(ms) => latency(load.qtime_ms, ms),
            Target::ResponseTimeMillis(ms) => latency(load.rtime_ms, ms),
        };
        let within_tolerance = current > 0
            && if ratio >= 1.0 {
                ratio - 1.0 <= tolerance.scale_up()
            } else {
                1.0 - ratio <= tolerance.scale_down()
            };
        // Saturating float-to-int: NaN and negatives give 0, huge values u32::MAX.
        let wanted = if within_tolerance {
            current
        } else {
            raw as u32
        };
        Signal {
            target,
            metric,
            ratio,
            within_tolerance,
            wanted,
        }
    }

    /// The figure against its target, as in the log line.
    fn text(&self) -> String {
        let m = self.metric;
        match self.target {
            Target::InflightPerReplica(per) => format!("target {per}/replica"),
            Target::QueueTimeMillis(ms) => format!("qtime {m:.0}ms, target {ms}ms"),
            Target::ResponseTimeMillis(ms) => format!("rtime {m:.0}ms, target {ms}ms"),
            Target::RequestsPerSecondPerReplica(per) => {
                format!("rate {m:.1}/s, target {per}/s/replica")
            }
        }
    }
}

/// One signal: its text, as it always read. Several: each with its own
/// recommendation, then the one that decided.
fn signal_texts(signals: &[Signal], decider: Signal) -> String {
    if let [one] = signals {
        return one.text();
    }
    let each: Vec<String> = signals
        .iter()
        .map(|s| format!("{} ({} → {})", s.target.name(), s.text(), s.wanted))
        .collect();
    format!(
        "{}; decided by {} (ratio {:.2})",
        each.join(", "),
        decider.target.name(),
        decider.ratio
    )
}

fn tolerance_text(t: Tolerance) -> String {
    let (up, down) = (t.scale_up() * 100.0, t.scale_down() * 100.0);
    if up == down {
        format!("{up:.0}% tolerance")
    } else {
        format!("tolerance +{up:.0}%/-{down:.0}%")
    }
}

/// A span in whole seconds, as a duration is written in a spec (`5m 3s`).
fn whole_seconds(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Drops entries older than `window` before `now`.
/// The figures of one decision's steps, in their order.
#[derive(Clone, Copy, Debug)]
struct Steps {
    current: u32,
    /// The deciding signal's count, before the bounds.
    unclamped: u32,
    /// `unclamped` within the floor and `maxReplicas`.
    recommendation: u32,
    stabilized: u32,
    /// `stabilized` within the rate limits.
    limited: u32,
    /// `limited` within the floor and `maxReplicas`: the decision.
    desired: u32,
    floor: u32,
    min: u32,
    max: u32,
    within_tolerance: bool,
    /// The count is a schedule's floor the load alone would not reach.
    by_schedule: bool,
}

impl Steps {
    /// Why the count is what it is: the step that decided.
    fn reason(&self) -> Reason {
        let Steps {
            current,
            unclamped,
            recommendation,
            stabilized,
            desired,
            min,
            max,
            ..
        } = *self;
        if desired > current {
            if desired < stabilized {
                Reason::LimitedByMaxStep
            } else {
                Reason::ScaledUp
            }
        } else if desired < current {
            if desired > stabilized {
                Reason::LimitedByMaxStep
            } else {
                Reason::ScaledDown
            }
        } else if self.by_schedule {
            Reason::AtScheduleFloor
        } else if stabilized != current {
            Reason::LimitedByMaxStep
        } else if recommendation != current {
            Reason::Stabilizing
        } else if self.within_tolerance {
            Reason::WithinTolerance
        } else if unclamped < min {
            Reason::AtMinReplicas
        } else if unclamped > max {
            Reason::AtMaxReplicas
        } else {
            Reason::Steady
        }
    }

    /// The decision explained, step by step, as the log line and the event say it.
    fn message(
        &self,
        demand: f64,
        target_text: &str,
        holds: Option<&str>,
        tolerance: Tolerance,
        latest_missing: bool,
    ) -> String {
        let Steps {
            current,
            unclamped,
            recommendation,
            stabilized,
            limited,
            desired,
            floor,
            max,
            ..
        } = *self;
        let mut message = format!("autoscaler: demand {demand:.1}, {target_text}");
        if let Some(holds) = holds {
            let _ = write!(message, ", {holds}");
        }
        let _ = write!(message, ", recommendation {recommendation}");
        if recommendation != unclamped {
            let _ = write!(message, " (clamped from {unclamped} to [{floor}, {max}])");
        }
        if self.within_tolerance {
            let _ = write!(message, " (within {})", tolerance_text(tolerance));
        }
        if stabilized != recommendation {
            let _ = write!(message, ", stabilized to {stabilized}");
        }
        // (A floor applied at once overrides the limit: then it did not limit.)
        if limited != stabilized && desired == limited {
            let _ = write!(message, ", limited by maxStep to {limited}");
        }
        if latest_missing {
            message.push_str(", latest sample missing (no scale-down)");
        }
        let _ = match desired.cmp(&current) {
            std::cmp::Ordering::Greater => {
                write!(message, ": scaling up from {current} to {desired}")
            }
            std::cmp::Ordering::Less => {
                write!(message, ": scaling down from {current} to {desired}")
            }
            std::cmp::Ordering::Equal => write!(message, ": keeping {current}"),
        };
        message
    }
}

fn trim<T>(q: &mut VecDeque<(Duration, T)>, now: Duration, window: Duration) {
    while q
        .front()
        .is_some_and(|(t, _)| now.saturating_sub(*t) > window)
    {
        q.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_secs(2);
    /// The wall-clock time of tests without schedules: any will do.
    const WALL: SystemTime = SystemTime::UNIX_EPOCH;

    /// min 1, max 10, 8 in flight per replica, scale up: no window, 4 per 15s; scale
    /// down: 60s window, 1 per 30s (the demo's behaviour).
    fn config() -> Autoscale {
        serde_saphyr::from_str(
            "minReplicas: 1\nmaxReplicas: 10\ntarget: {inflightPerReplica: 8}\n\
             behavior:\n  scaleUp: {stabilizationWindow: 0s, maxStep: 4, period: 15s}\n  \
             scaleDown: {stabilizationWindow: 60s, maxStep: 1, period: 30s}\n",
        )
        .expect("fixture parses")
    }

    fn load(inflight: f64) -> Option<BackendLoad> {
        Some(BackendLoad {
            scur: inflight,
            qcur: 0.0,
            qtime_ms: 0.0,
            rtime_ms: 0.0,
            rate: 0.0,
            requests: 0,
        })
    }

    /// Runs a series (one sample per tick) and returns the desired count after each.
    fn run(a: &mut Autoscaler, series: impl IntoIterator<Item = Option<BackendLoad>>) -> Vec<u32> {
        let start = a.samples.back().map_or(Duration::ZERO, |(t, _)| *t + TICK);
        series
            .into_iter()
            .enumerate()
            .map(|(i, s)| a.observe(start + TICK * i as u32, WALL, s).desired)
            .collect()
    }

    fn direction_changes(trajectory: &[u32]) -> usize {
        let moves: Vec<i64> = trajectory
            .windows(2)
            .map(|w| i64::from(w[1]) - i64::from(w[0]))
            .filter(|d| *d != 0)
            .map(i64::signum)
            .collect();
        moves.windows(2).filter(|w| w[0] != w[1]).count()
    }

    #[test]
    fn a_step_up_scales_by_max_step_per_period() {
        let mut a = Autoscaler::new(&config(), 1, Duration::ZERO);
        // 80 in flight needs 10 replicas; the 15 s window averages in the step.
        let t = run(&mut a, std::iter::repeat_n(load(80.0), 17));
        // +4 at once, +4 once the 15 s period passed, then the last one.
        assert_eq!(t, [5, 5, 5, 5, 5, 5, 5, 5, 9, 9, 9, 9, 9, 9, 9, 9, 10]);
    }

    #[test]
    fn a_step_down_waits_for_the_window_then_removes_one_per_period() {
        let mut a = Autoscaler::new(&config(), 6, Duration::ZERO);
        run(&mut a, std::iter::repeat_n(load(48.0), 10));
        assert_eq!(a.desired(), 6);
        let t = run(&mut a, std::iter::repeat_n(load(8.0), 60));
        // Nothing for the 60 s window, then one replica per 30 s.
        let first_drop = t.iter().position(|d| *d < 6).expect("scales down");
        assert_eq!(first_drop, 31, "{t:?}");
        assert_eq!(&t[31..46], &[5; 15], "{t:?}");
        assert_eq!(t[46], 4, "{t:?}");
        assert_eq!(direction_changes(&t), 0);
    }

    #[test]
    fn a_spike_shorter_than_the_scale_down_window_leaves_no_trace() {
        let mut a = Autoscaler::new(&config(), 2, Duration::ZERO);
        run(&mut a, std::iter::repeat_n(load(16.0), 10));
        let mut series = vec![load(60.0); 2];
        series.extend(vec![load(16.0); 50]);
        let t = run(&mut a, series);
        let peak = *t.iter().max().expect("non-empty");
        // The 4 s spike averaged over 15 s asks for 4; it scales up (no up window)...
        assert_eq!(peak, 4, "{t:?}");
        // ...and down again only after the 60 s window, one at a time.
        assert_eq!(t.iter().rposition(|d| *d == 4), Some(37), "{t:?}");
        assert_eq!(t[38], 3, "{t:?}");
        assert_eq!(direction_changes(&t), 1);
    }

    #[test]
    fn with_an_up_window_a_short_spike_moves_nothing() {
        let mut c = config();
        // Longer than the 15 s the demand is averaged over.
        c.behavior.scale_up.stabilization_window = crate::spec::Duration::from_secs(20);
        let mut a = Autoscaler::new(&c, 2, Duration::ZERO);
        run(&mut a, std::iter::repeat_n(load(16.0), 10));
        let mut series = vec![load(200.0); 2];
        series.extend(vec![load(16.0); 10]);
        let t = run(&mut a, series);
        assert!(t.iter().all(|d| *d == 2), "{t:?}");
    }

    #[test]
    fn missing_samples_never_scale_down() {
        let mut a = Autoscaler::new(&config(), 5, Duration::ZERO);
        run(&mut a, std::iter::repeat_n(load(40.0), 10));
        // Every sample fails for two minutes: nothing moves.
        let t = run(&mut a, std::iter::repeat_n(None, 60));
        assert!(t.iter().all(|d| *d == 5), "{t:?}");
        let d = a.observe(Duration::from_secs(10_000), WALL, None);
        assert_eq!(d.reason, Reason::NoMetrics);
        // Gaps among low samples: no scale-down while the latest sample is missing.
        let mut b = Autoscaler::new(&config(), 5, Duration::ZERO);
        b.observe(Duration::ZERO, WALL, load(8.0));
        let d = b.observe(TICK, WALL, None);
        assert_eq!(d.desired, 5, "{}", d.message);
    }

    #[test]
    fn noise_within_the_tolerance_changes_nothing() {
        let mut a = Autoscaler::new(&config(), 4, Duration::ZERO);
        // 32 in flight is exactly 4 × 8; ±8% noise around it.
        let noisy = (0..200).map(|i| load(32.0 * (1.0 + 0.08 * ((i * 7 % 5) as f64 - 2.0) / 2.0)));
        let t = run(&mut a, noisy);
        assert!(t.iter().all(|d| *d == 4), "{t:?}");
        let d = a.observe(Duration::from_secs(5000), WALL, load(33.0));
        assert_eq!(d.reason, Reason::WithinTolerance, "{}", d.message);
    }

    #[test]
    fn the_count_stays_within_min_and_max() {
        let mut a = Autoscaler::new(&config(), 50, Duration::ZERO);
        assert_eq!(a.desired(), 10, "the starting count is clamped");
        let t = run(&mut a, std::iter::repeat_n(load(10_000.0), 30));
        assert!(t.iter().all(|d| *d == 10), "{t:?}");
        let d = a.observe(Duration::from_secs(1000), WALL, load(10_000.0));
        assert_eq!(d.reason, Reason::AtMaxReplicas);
        let t = run(&mut a, std::iter::repeat_n(load(0.0), 400));
        assert_eq!(*t.last().expect("non-empty"), 1);
        assert!(t.iter().all(|d| *d >= 1));
        let d = a.observe(Duration::from_secs(100_000), WALL, load(0.0));
        assert_eq!(d.reason, Reason::AtMinReplicas);
    }

    #[test]
    fn the_rate_limit_is_reported_with_the_figures() {
        let mut a = Autoscaler::new(&config(), 1, Duration::ZERO);
        let d = a.observe(Duration::ZERO, WALL, load(300.0));
        assert_eq!(d.desired, 5);
        assert_eq!(d.reason, Reason::LimitedByMaxStep);
        assert_eq!(
            d.message,
            "autoscaler: demand 300.0, target 8/replica, \
             recommendation 10 (clamped from 38 to [1, 10]), \
             limited by maxStep to 5: scaling up from 1 to 5"
        );
        // Within the same period no more replicas are added.
        let d = a.observe(TICK, WALL, load(300.0));
        assert_eq!((d.desired, d.reason), (5, Reason::LimitedByMaxStep));
    }

    #[test]
    fn a_constant_load_never_oscillates_over_thirty_minutes() {
        for inflight in [3.0, 20.0, 37.5, 61.0, 79.0] {
            let mut a = Autoscaler::new(&config(), 1, Duration::ZERO);
            let t = run(&mut a, std::iter::repeat_n(load(inflight), 900));
            assert_eq!(direction_changes(&t), 0, "{inflight}: {t:?}");
            let settled = f64::from(*t.last().expect("non-empty"));
            let exact = (inflight / 8.0_f64).ceil();
            // Settles on the exact need, or within the 10% tolerance of it.
            assert!(
                settled == exact || (inflight / (settled * 8.0) - 1.0).abs() <= 0.1,
                "{inflight}: settled on {settled}"
            );
        }
    }

    #[test]
    fn a_sine_wave_is_followed_without_flapping() {
        let mut a = Autoscaler::new(&config(), 2, Duration::ZERO);
        // Period 10 minutes, 8..72 in flight.
        let sine = (0..900).map(|i| {
            let phase = (i as f64) * 2.0 / 600.0 * std::f64::consts::TAU;
            load(40.0 + 32.0 * phase.sin())
        });
        let t = run(&mut a, sine);
        let (lo, hi) = (*t.iter().min().expect("n"), *t.iter().max().expect("n"));
        assert!(hi >= 8 && lo <= 3, "follows the wave: {lo}..{hi}");
        // One up and one down per wave period at most: 3 periods → ≤ 6 changes.
        assert!(direction_changes(&t) <= 6, "{t:?}");
    }

    #[test]
    fn a_queue_time_target_scales_on_the_ratio() {
        let mut c = config();
        c.target = Some(Target::QueueTimeMillis(50));
        let mut a = Autoscaler::new(&c, 2, Duration::ZERO);
        let slow = Some(BackendLoad {
            scur: 16.0,
            qcur: 10.0,
            qtime_ms: 150.0,
            rtime_ms: 0.0,
            rate: 0.0,
            requests: 0,
        });
        let d = a.observe(Duration::ZERO, WALL, slow);
        assert_eq!((d.recommendation, d.desired), (Some(6), 6), "{}", d.message);
    }

    #[test]
    fn queued_requests_count_as_demand() {
        let mut a = Autoscaler::new(&config(), 2, Duration::ZERO);
        let queued = Some(BackendLoad {
            scur: 16.0,
            qcur: 16.0,
            qtime_ms: 0.0,
            rtime_ms: 0.0,
            rate: 0.0,
            requests: 0,
        });
        assert_eq!(a.observe(Duration::ZERO, WALL, queued).desired, 4);
    }

    /// The demo's behaviour with `extra` spec lines (targets, tolerance, fallback).
    fn config_with(extra: &str) -> Autoscale {
        serde_saphyr::from_str(&format!(
            "minReplicas: 1\nmaxReplicas: 10\n{extra}\
             behavior:\n  scaleUp: {{stabilizationWindow: 0s, maxStep: 4, period: 15s}}\n  \
             scaleDown: {{stabilizationWindow: 60s, maxStep: 1, period: 30s}}\n",
        ))
        .expect("fixture parses")
    }

    fn full_load(inflight: f64, rtime_ms: f64, rate: f64) -> Option<BackendLoad> {
        Some(BackendLoad {
            scur: inflight,
            qcur: 0.0,
            qtime_ms: 0.0,
            rtime_ms,
            rate,
            requests: 0,
        })
    }

    const SIGNALS: &str = "targets: [{inflightPerReplica: 8}, {responseTimeMillis: 200}, \
                           {requestsPerSecondPerReplica: 50}]\n";

    #[test]
    fn the_highest_signal_decides_and_is_named() {
        let mut a = Autoscaler::new(&config_with(SIGNALS), 2, Duration::ZERO);
        // In flight and rate fit 2 replicas; the response time is three times its target.
        let d = a.observe(Duration::ZERO, WALL, full_load(16.0, 600.0, 100.0));
        assert_eq!((d.recommendation, d.desired), (Some(6), 6), "{}", d.message);
        assert_eq!(d.signal, Some(Target::ResponseTimeMillis(200)));
        assert_eq!(d.reason, Reason::ScaledUp);
        assert_eq!(
            d.message,
            "autoscaler: demand 16.0, inflightPerReplica (target 8/replica → 2), \
             responseTimeMillis (rtime 600ms, target 200ms → 6), \
             requestsPerSecondPerReplica (rate 100.0/s, target 50/s/replica → 2); \
             decided by responseTimeMillis (ratio 3.00), recommendation 6: scaling up from 2 to 6"
        );
    }

    #[test]
    fn the_request_rate_per_replica_scales_on_the_rate() {
        let mut a = Autoscaler::new(&config_with(SIGNALS), 1, Duration::ZERO);
        let d = a.observe(Duration::ZERO, WALL, full_load(2.0, 10.0, 200.0));
        assert_eq!(d.desired, 4, "{}", d.message);
        assert_eq!(d.signal, Some(Target::RequestsPerSecondPerReplica(50.0)));
    }

    #[test]
    fn a_low_signal_never_outvotes_a_high_one() {
        // Idle response time and rate do not pull the count below what in flight needs.
        let mut a = Autoscaler::new(&config_with(SIGNALS), 5, Duration::ZERO);
        let t = run(&mut a, std::iter::repeat_n(full_load(40.0, 1.0, 0.0), 100));
        assert!(t.iter().all(|d| *d == 5), "{t:?}");
    }

    #[test]
    fn the_tolerance_is_per_direction() {
        let c = config_with(
            "target: {inflightPerReplica: 8}\ntolerance: {scaleUp: 0.05, scaleDown: 0.3}\n",
        );
        let mut a = Autoscaler::new(&c, 4, Duration::ZERO);
        // 25% below what 4 replicas carry: within the scale-down tolerance, for good.
        let t = run(&mut a, std::iter::repeat_n(load(24.0), 100));
        assert!(t.iter().all(|d| *d == 4), "{t:?}");
        let d = a.observe(Duration::from_secs(1000), WALL, load(24.0));
        assert_eq!(d.reason, Reason::WithinTolerance, "{}", d.message);
        assert!(
            d.message.contains("(within tolerance +5%/-30%)"),
            "{}",
            d.message
        );
        // 6.25% above: beyond the scale-up tolerance, so one more replica.
        let mut b = Autoscaler::new(&c, 4, Duration::ZERO);
        assert_eq!(b.observe(Duration::ZERO, WALL, load(34.0)).desired, 5);
        // The same 6.25% with a single 10% tolerance changes nothing.
        let mut one = Autoscaler::new(&config(), 4, Duration::ZERO);
        let d = one.observe(Duration::ZERO, WALL, load(34.0));
        assert_eq!((d.desired, d.reason), (4, Reason::WithinTolerance));
    }

    #[test]
    fn after_the_fallback_delay_without_a_good_sample_it_goes_to_the_fallback_count() {
        let c =
            config_with("target: {inflightPerReplica: 8}\nfallback: {after: 1m, replicas: 4}\n");
        let mut a = Autoscaler::new(&c, 2, Duration::ZERO);
        run(&mut a, std::iter::repeat_n(load(16.0), 5));
        // The last good sample at 8 s; gaps from 10 s on.
        let decisions: Vec<Decision> = (5..60).map(|i| a.observe(TICK * i, WALL, None)).collect();
        let first = decisions
            .iter()
            .position(|d| d.reason == Reason::MetricsUnavailable)
            .expect("the fallback applies");
        // 8 s + 60 s = 68 s, the tick at index 29 (10 s + 29 × 2 s).
        assert_eq!(first, 29, "{:#?}", &decisions[..first + 1]);
        assert!(decisions[..first].iter().all(|d| d.desired == 2));
        assert_eq!(decisions[first].desired, 4, "{}", decisions[first].message);
        assert_eq!(
            decisions[first].message,
            "autoscaler: no good sample for 1m (fallback after 1m): \
             scaling up from 2 to fallback.replicas 4"
        );
        assert!(decisions[first..].iter().all(|d| d.desired == 4));
        // A good sample ends it: the autoscaler decides on the figures again.
        let d = a.observe(TICK * 60, WALL, load(16.0));
        assert_ne!(d.reason, Reason::MetricsUnavailable, "{}", d.message);
    }

    #[test]
    fn the_fallback_never_lowers_the_count_nor_scales_to_zero() {
        let c =
            config_with("target: {inflightPerReplica: 8}\nfallback: {after: 30s, replicas: 2}\n");
        let mut a = Autoscaler::new(&c, 6, Duration::ZERO);
        run(&mut a, std::iter::repeat_n(load(48.0), 5));
        let t = run(&mut a, std::iter::repeat_n(None, 200));
        assert!(t.iter().all(|d| *d == 6), "{t:?}");
        let d = a.observe(Duration::from_secs(5000), WALL, None);
        assert_eq!((d.desired, d.reason), (6, Reason::MetricsUnavailable));
        assert_eq!(
            d.message,
            "autoscaler: no good sample for 1h 23m 12s (fallback after 30s): keeping 6"
        );
        // Without a fallback, the same gaps hold the count too (NoMetrics).
        let mut b = Autoscaler::new(&config(), 6, Duration::ZERO);
        run(&mut b, std::iter::repeat_n(load(48.0), 5));
        let t = run(&mut b, std::iter::repeat_n(None, 200));
        assert!(t.iter().all(|d| *d == 6), "{t:?}");
    }

    #[test]
    fn no_sample_ever_triggers_the_fallback_from_the_start() {
        let c =
            config_with("target: {inflightPerReplica: 8}\nfallback: {after: 10s, replicas: 3}\n");
        let mut a = Autoscaler::new(&c, 1, Duration::ZERO);
        let t = run(&mut a, std::iter::repeat_n(None, 7));
        assert_eq!(t, [1, 1, 1, 1, 1, 3, 3]);
    }

    /// min 0 with scale to zero after 30 s idle (the demo's behaviour otherwise).
    fn to_zero() -> Autoscale {
        let mut c = config();
        c.min_replicas = 0;
        c.scale_to_zero = Some(crate::spec::ScaleToZero {
            idle_after: crate::spec::Duration::from_secs(30),
            activation_timeout: crate::spec::Duration::from_secs(10),
        });
        c
    }

    /// An idle backend whose request counter stands at `requests`.
    fn counted(requests: u64) -> Option<BackendLoad> {
        Some(BackendLoad {
            requests,
            ..BackendLoad::default()
        })
    }

    #[test]
    fn an_idle_backend_goes_to_zero_after_idle_after_and_not_before() {
        let mut a = Autoscaler::new(&to_zero(), 1, Duration::ZERO);
        let decisions: Vec<Decision> = (0..20)
            .map(|i| a.observe(TICK * i, WALL, counted(7)))
            .collect();
        // 30 s without a request is reached at the tick at 30 s (index 15).
        let first = decisions
            .iter()
            .position(|d| d.desired == 0)
            .expect("goes to zero");
        assert_eq!(first, 15, "{:#?}", &decisions[..=first]);
        assert_eq!(decisions[first].reason, Reason::ScaledToZero);
        assert_eq!(
            decisions[first].message,
            "autoscaler: no request for 30s (idleAfter 30s): scaling down from 1 to 0"
        );
        assert!(decisions[..first].iter().all(|d| d.desired == 1));
        assert!(decisions[first + 1..]
            .iter()
            .all(|d| (d.desired, d.reason) == (0, Reason::Idle)));
    }

    #[test]
    fn a_request_counted_between_two_samples_restarts_the_idle_clock() {
        let mut a = Autoscaler::new(&to_zero(), 1, Duration::ZERO);
        // Never in flight when sampled, but the counter moves once, at 20 s.
        let t: Vec<u32> = (0..40)
            .map(|i| {
                let requests = if i < 10 { 5 } else { 6 };
                a.observe(TICK * i, WALL, counted(requests)).desired
            })
            .collect();
        let first = t.iter().position(|d| *d == 0).expect("goes to zero");
        // 20 s + 30 s = 50 s, the tick at index 25.
        assert_eq!(first, 25, "{t:?}");
    }

    #[test]
    fn a_low_load_alone_never_reaches_zero() {
        // Always something in flight: the HPA's part floors at 1, whatever minReplicas.
        let mut a = Autoscaler::new(&to_zero(), 3, Duration::ZERO);
        let t = run(&mut a, std::iter::repeat_n(load(0.5), 300));
        assert_eq!(*t.last().expect("non-empty"), 1, "{t:?}");
        assert!(t.iter().all(|d| *d >= 1), "{t:?}");
    }

    #[test]
    fn gaps_never_take_the_count_to_zero_but_the_counter_tells_what_they_hid() {
        let mut a = Autoscaler::new(&to_zero(), 1, Duration::ZERO);
        a.observe(Duration::ZERO, WALL, counted(3));
        // Blind for a minute: no proof of idleness.
        let t: Vec<u32> = (1..30)
            .map(|i| a.observe(TICK * i, WALL, None).desired)
            .collect();
        assert!(t.iter().all(|d| *d == 1), "{t:?}");
        // The next good sample shows no request came in between: idle since 0 s.
        let d = a.observe(TICK * 30, WALL, counted(3));
        assert_eq!(
            (d.desired, d.reason),
            (0, Reason::ScaledToZero),
            "{}",
            d.message
        );
        // The same gap hiding one request restarts the clock at the sample that shows it.
        let mut b = Autoscaler::new(&to_zero(), 1, Duration::ZERO);
        b.observe(Duration::ZERO, WALL, counted(3));
        for i in 1..30 {
            b.observe(TICK * i, WALL, None);
        }
        assert_eq!(b.observe(TICK * 30, WALL, counted(4)).desired, 1);
    }

    #[test]
    fn a_held_request_wakes_the_service_to_one_at_once() {
        let mut a = Autoscaler::new(&to_zero(), 1, Duration::ZERO);
        for i in 0..16 {
            a.observe(TICK * i, WALL, counted(0));
        }
        assert_eq!(a.desired(), 0);
        let d = a.wake(Duration::from_secs(33), 1).expect("wakes");
        assert_eq!((d.previous, d.desired, d.reason), (0, 1, Reason::Woken));
        assert_eq!(
            d.message,
            "autoscaler: woken by a held request (1 held): scaling up from 0 to 1"
        );
        assert_eq!(a.desired(), 1);
        // A second wake while the replica starts changes nothing.
        assert_eq!(a.wake(Duration::from_secs(33), 3), None);
        // The wake counts as a request: no return to zero for another idleAfter.
        let t: Vec<u32> = (17..40)
            .map(|i| a.observe(TICK * i, WALL, counted(1)).desired)
            .collect();
        let back = t.iter().position(|d| *d == 0).expect("idle again");
        // Woken at 33 s, idle again at 63 s: the tick at 64 s (index 15).
        assert_eq!(back, 15, "{t:?}");
    }

    #[test]
    fn many_held_requests_wake_as_many_replicas_as_they_need_within_max_step() {
        let mut a = Autoscaler::new(&to_zero(), 1, Duration::ZERO);
        for i in 0..16 {
            a.observe(TICK * i, WALL, counted(0));
        }
        // 20 held at 8 per replica: 3.
        let d = a.wake(Duration::from_secs(40), 20).expect("wakes");
        assert_eq!(d.desired, 3, "{}", d.message);
        // 100 held would need 13: maxStep (4) bounds the first step.
        let mut b = Autoscaler::new(&to_zero(), 1, Duration::ZERO);
        for i in 0..16 {
            b.observe(TICK * i, WALL, counted(0));
        }
        assert_eq!(
            b.wake(Duration::from_secs(40), 100).map(|d| d.desired),
            Some(4)
        );
    }

    #[test]
    fn a_request_seen_in_a_sample_at_zero_wakes_the_service_too() {
        let mut a = Autoscaler::new(&to_zero(), 1, Duration::ZERO);
        for i in 0..16 {
            a.observe(TICK * i, WALL, counted(9));
        }
        assert_eq!(a.desired(), 0);
        let d = a.observe(TICK * 16, WALL, counted(10));
        assert_eq!((d.desired, d.reason), (1, Reason::Woken), "{}", d.message);
        assert!(
            d.message.contains("woken by a held request"),
            "{}",
            d.message
        );
    }

    /// The demo's behaviour with a daily window from 08:00 to 09:00 UTC holding 6.
    fn scheduled() -> Autoscale {
        config_with(
            "target: {inflightPerReplica: 8}\n\
             schedules: [{cron: \"0 8 * * *\", duration: 1h, minReplicas: 6}]\n",
        )
    }

    /// 2024-01-08 at `hh:mm:ss` UTC.
    fn monday(hms: &str) -> SystemTime {
        crate::autoscale::simulate::parse_start(&format!("2024-01-08T{hms}Z")).expect("a time")
    }

    /// Runs `ticks` samples of `load` from the monotonic `t0` and the wall `w0`, one per
    /// tick; returns the decisions.
    fn run_at(
        a: &mut Autoscaler,
        t0: Duration,
        w0: SystemTime,
        ticks: u32,
        sample: Option<BackendLoad>,
    ) -> Vec<Decision> {
        (0..ticks)
            .map(|i| a.observe(t0 + TICK * i, w0 + TICK * i, sample))
            .collect()
    }

    #[test]
    fn a_window_raises_the_count_to_its_floor_at_once_and_names_the_schedule() {
        let mut a = Autoscaler::new(&scheduled(), 1, Duration::ZERO);
        let before = a.observe(Duration::ZERO, monday("07:59:58"), load(4.0));
        assert_eq!((before.desired, before.schedule_floor()), (1, None));
        let next = before
            .schedule
            .and_then(|w| w.next)
            .expect("the next window");
        assert_eq!(next.opens, monday("08:00:00"));
        // Past the rate limit of 4 per period: a floor applies at once, like a raised
        // minReplicas.
        let d = a.observe(TICK, monday("08:00:00"), load(4.0));
        assert_eq!(d.desired, 6, "{}", d.message);
        assert_eq!(d.reason, Reason::ScaledUp);
        assert!(d.by_schedule);
        assert_eq!(d.decided_by(), Some("schedule"));
        assert_eq!(d.schedule_floor(), Some(6));
        assert_eq!(
            d.message,
            "autoscaler: demand 4.0, target 8/replica, schedule \"0 8 * * *\" (UTC) holds \
             at least 6 until 09:00 UTC, recommendation 6 (clamped from 1 to [6, 10]): \
             scaling up from 1 to 6"
        );
        let d = a.observe(TICK * 2, monday("08:00:02"), load(4.0));
        assert_eq!((d.desired, d.reason), (6, Reason::AtScheduleFloor));
        assert_eq!(d.decided_by(), Some("schedule"));
    }

    #[test]
    fn load_beyond_the_floor_takes_the_count_higher() {
        let mut a = Autoscaler::new(&scheduled(), 6, Duration::ZERO);
        let d = run_at(&mut a, Duration::ZERO, monday("08:10:00"), 10, load(72.0));
        let last = d.last().expect("decisions");
        assert_eq!(last.desired, 9, "{}", last.message);
        assert_eq!(last.decided_by(), Some("inflightPerReplica"));
        assert!(!last.by_schedule);
        assert_eq!(last.schedule_floor(), Some(6));
    }

    #[test]
    fn the_end_of_a_window_comes_down_through_stabilization_not_at_once() {
        let mut a = Autoscaler::new(&scheduled(), 1, Duration::ZERO);
        // Ten minutes at the floor, without load, up to 09:00.
        run_at(&mut a, Duration::ZERO, monday("08:50:00"), 300, load(4.0));
        assert_eq!(a.desired(), 6);
        let after: Vec<u32> = run_at(&mut a, TICK * 300, monday("09:00:00"), 120, load(4.0))
            .iter()
            .map(|d| d.desired)
            .collect();
        // The 60 s scale-down window holds the floor's recommendations (the last at
        // 08:59:58), then one replica per 30 s, to minReplicas.
        let first_drop = after.iter().position(|d| *d < 6).expect("comes down");
        assert_eq!(first_drop, 30, "{after:?}");
        assert_eq!(after[first_drop], 5, "{after:?}");
        assert_eq!(after.iter().position(|d| *d == 4), Some(45), "{after:?}");
        assert_eq!(after.last(), Some(&1), "{after:?}");
        assert!(after.windows(2).all(|w| w[0] - w[1] <= 1), "{after:?}");
    }

    #[test]
    fn without_metrics_a_window_still_raises_the_count_and_its_end_lowers_nothing() {
        let mut a = Autoscaler::new(&scheduled(), 2, Duration::ZERO);
        let d = a.observe(Duration::ZERO, monday("08:30:00"), None);
        assert_eq!(
            (d.desired, d.reason),
            (6, Reason::ScaledUp),
            "{}",
            d.message
        );
        assert_eq!(d.decided_by(), Some("schedule"));
        assert_eq!(
            d.message,
            "autoscaler: no sample in the last 15s, schedule \"0 8 * * *\" (UTC) holds at \
             least 6 until 09:00 UTC: scaling up from 2 to 6"
        );
        let d = run_at(&mut a, TICK, monday("09:00:00"), 200, None);
        assert!(d.iter().all(|d| d.desired == 6));
    }

    #[test]
    fn with_stale_metrics_the_fallback_and_the_floor_take_the_higher() {
        let c = config_with(
            "target: {inflightPerReplica: 8}\nfallback: {after: 10s, replicas: 3}\n\
             schedules: [{cron: \"0 8 * * *\", duration: 1h, minReplicas: 6}]\n",
        );
        let mut a = Autoscaler::new(&c, 1, Duration::ZERO);
        let d = run_at(&mut a, Duration::ZERO, monday("07:59:40"), 7, None);
        assert_eq!(d.last().map(|d| d.desired), Some(3), "{:?}", d.last());
        let d = a.observe(TICK * 10, monday("08:00:00"), None);
        assert_eq!((d.desired, d.reason), (6, Reason::MetricsUnavailable));
        assert!(d.by_schedule);
        assert!(
            d.message.ends_with(
                "schedule \"0 8 * * *\" (UTC) holds at least 6 until 09:00 UTC: \
                 scaling up from 3 to 6"
            ),
            "{}",
            d.message
        );
    }

    #[test]
    fn without_scale_to_zero_nothing_wakes_or_idles() {
        let mut a = Autoscaler::new(&config(), 1, Duration::ZERO);
        assert_eq!(a.wake(Duration::ZERO, 5), None);
        let t = run(&mut a, std::iter::repeat_n(counted(0), 400));
        assert!(t.iter().all(|d| *d == 1), "{t:?}");
        // minReplicas 0 without scaleToZero (rejected by validation) still floors at 1.
        let mut c = config();
        c.min_replicas = 0;
        let mut b = Autoscaler::new(&c, 1, Duration::ZERO);
        let t = run(&mut b, std::iter::repeat_n(counted(0), 400));
        assert!(t.iter().all(|d| *d == 1), "{t:?}");
    }

    #[test]
    fn outside_every_window_nothing_changes() {
        // The same load and start, with and without a window that is not in force.
        let mut with = Autoscaler::new(&scheduled(), 1, Duration::ZERO);
        let mut without = Autoscaler::new(&config(), 1, Duration::ZERO);
        let sine = (0..400).map(|i| load(40.0 + 32.0 * (f64::from(i) / 40.0).sin()));
        for (i, sample) in sine.enumerate() {
            let t = TICK * i as u32;
            let a = with.observe(t, monday("12:00:00") + t, sample);
            let b = without.observe(t, monday("12:00:00") + t, sample);
            assert_eq!(
                (a.desired, a.reason),
                (b.desired, b.reason),
                "{}",
                a.message
            );
            assert_eq!(a.message, b.message);
            assert_eq!(a.schedule_floor(), None);
        }
    }

    #[test]
    fn a_schedule_window_in_force_keeps_a_service_from_idling_to_zero() {
        // Scale to zero after 30 s idle, and a window from 08:00 holding 2.
        let mut c = to_zero();
        c.schedules = scheduled().schedules;
        c.schedules[0].min_replicas = 2;
        let mut a = Autoscaler::new(&c, 2, Duration::ZERO);
        // Idle for 80 s inside the window: held at its floor, never zero.
        for i in 0..16 {
            let d = a.observe(TICK * i, monday("08:10:00") + TICK * i, counted(9));
            assert_eq!(d.desired, 2, "{}", d.message);
        }
        // The same idleness outside the window goes to zero.
        let mut b = Autoscaler::new(&c, 2, Duration::ZERO);
        let t: Vec<u32> = (0..16)
            .map(|i| {
                b.observe(TICK * i, monday("12:00:00") + TICK * i, counted(9))
                    .desired
            })
            .collect();
        assert_eq!(t.last(), Some(&0), "{t:?}");
    }
}
