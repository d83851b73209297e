//! The metrics tick: every autoscaled service samples its backend's load, its
//! autoscaler ([`crate::autoscale`], pure) decides, and the decision is explained in the
//! log, the metrics, an event and the status. A changed count wakes the service.
//!
//! Scale to zero: HAProxy's Lua action counts the requests it holds for a backend
//! with no usable server ([`crate::lb::haproxy::hold`]). Those counters are read at
//! each tick (for the metrics) and every `holds_interval` (100 ms) while a service is
//! at zero: a held request wakes the service at once, not at the next tick.

use std::time::SystemTime;

use tokio::time::Instant;

use crate::autoscale::schedule::{Holds as WindowHolds, Windows};
use crate::autoscale::{Autoscaler, Decision, Reason};
use crate::controller::Controller;
use crate::lb::LoadBalancer;
use crate::model::backend::{BackendLoad, Holds};
use crate::runtime::ContainerRuntime;
use crate::serve::metrics::Metrics;
use crate::serve::status::{
    ActiveSchedule, AutoscalerStatus, ConditionType, EventType, NextSchedule, ScheduleStatus,
    StatusHandle,
};
use crate::spec::{Autoscale, ServiceSpec};

impl<R: ContainerRuntime, L: LoadBalancer> Controller<R, L> {
    /// Every autoscaled service samples its backend's load and its autoscaler decides.
    /// A failed sample is passed on as a gap, never as a zero.
    pub(super) async fn autoscale(&mut self) {
        if self.any_scale_to_zero() {
            self.read_holds().await;
        }
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
                        tracing::debug!(
                            service = %name,
                            error = %crate::report::Chain(&e),
                            "load sample failed: a gap"
                        );
                        None
                    }
                },
                None => None,
            };
            let Some(autoscaler) = self
                .services
                .get_mut(&name)
                .and_then(|e| e.autoscaler.as_mut())
            else {
                continue;
            };
            let wall = self.settings.clock.wall();
            let decision = autoscaler.observe(now, wall, sample);
            let config = autoscaler.config().clone();
            if decision.reason == Reason::Woken {
                self.metrics
                    .scale_to_zero_wakes_total
                    .with_label_values(&[&name, "sample"])
                    .inc();
            }
            self.record_decision(&name, &config, sample, &decision);
        }
    }

    /// A service that scales to zero.
    fn any_scale_to_zero(&self) -> bool {
        self.services.values().any(|e| {
            !e.deleting
                && e.autoscaler
                    .as_ref()
                    .is_some_and(|a| a.config().scales_to_zero().is_some())
        })
    }

    /// A service that scales to zero is at zero (its replicas may still drain).
    pub(super) fn any_at_zero(&self) -> bool {
        self.services.values().any(|e| {
            !e.deleting
                && e.autoscaler
                    .as_ref()
                    .is_some_and(|a| a.config().scales_to_zero().is_some() && a.desired() == 0)
        })
    }

    /// HAProxy's held requests, read: counted in the metrics, and a service at zero
    /// with a request held (or held since the last reading) woken at once.
    pub(super) async fn read_holds(&mut self) {
        let holds = match self.lb.holds().await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %crate::report::Chain(&e), "cannot read the held requests");
                return;
            }
        };
        let now = self.started.elapsed();
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            let Some(entry) = self.services.get_mut(&name) else {
                continue;
            };
            let Some(backend) = entry
                .spec
                .spec
                .load_balancer
                .as_ref()
                .map(|l| l.backend.to_string())
            else {
                continue;
            };
            let Some(current) = holds.get(&backend) else {
                continue;
            };
            let previous = entry.holds_seen.replace(current.clone());
            let (new_held, new_timeouts) = hold_deltas(previous.as_ref(), current);
            // The first reading's totals may be from before this dockscale started:
            // only a request held now wakes then.
            let held_since = previous.is_some() && new_held > 0;
            let m = &self.metrics;
            m.held_requests_total
                .with_label_values(&[&name])
                .inc_by(new_held);
            m.held_request_timeouts_total
                .with_label_values(&[&name])
                .inc_by(new_timeouts);
            m.held_requests
                .with_label_values(&[&name])
                .set(i64::from(current.waiting));
            let histogram = m.hold_duration_seconds.with_label_values(&[&name]);
            for seconds in &current.hold_seconds {
                histogram.observe(*seconds);
            }
            if current.waiting == 0 && !held_since {
                continue;
            }
            let Some(autoscaler) = entry.autoscaler.as_mut() else {
                continue;
            };
            let Some(decision) = autoscaler.wake(now, current.waiting.max(1)) else {
                continue;
            };
            let config = autoscaler.config().clone();
            self.metrics
                .scale_to_zero_wakes_total
                .with_label_values(&[&name, "held"])
                .inc();
            self.record_decision(&name, &config, None, &decision);
        }
    }

    /// A decision explained: metrics, a log line (repeats of a reason at debug level),
    /// the status and, when the count changed, an event; the service woken to act.
    fn record_decision(
        &mut self,
        name: &str,
        config: &Autoscale,
        sample: Option<BackendLoad>,
        decision: &Decision,
    ) {
        if let Some(entry) = self.services.get_mut(name) {
            log_decision(name, decision, &mut entry.last_reason);
            if decision.changed() {
                entry.wake(Instant::now());
            }
        }
        let wall = self.settings.clock.wall();
        publish_decision(
            &self.metrics,
            &self.status,
            wall,
            name,
            config,
            sample,
            decision,
        );
    }
}

/// Requests held and held requests timed out between two readings; counters that
/// went down (HAProxy reloaded: its Lua state is new) count from zero.
fn hold_deltas(previous: Option<&Holds>, current: &Holds) -> (u64, u64) {
    let d = |now: u64, then: u64| if now >= then { now - then } else { now };
    match previous {
        Some(p) => (d(current.held, p.held), d(current.timed_out, p.timed_out)),
        None => (current.held, current.timed_out),
    }
}

/// Creates, reconfigures or drops a service's autoscaler to match its spec, whatever
/// runs the replicas. A new one starts from the `running` replicas (a restarted
/// dockscale keeps the scale it had), or the spec's count when none runs.
pub(crate) fn follow_autoscaler(
    autoscaler: &mut Option<Autoscaler>,
    spec: &ServiceSpec,
    running: u32,
    now: std::time::Duration,
) {
    match (&spec.autoscale, autoscaler.as_mut()) {
        (Some(config), None) => {
            let start = if running > 0 { running } else { spec.replicas };
            *autoscaler = Some(Autoscaler::new(config, start, now));
        }
        (Some(config), Some(a)) if a.config() != config => a.reconfigure(config),
        (None, Some(_)) => *autoscaler = None,
        _ => {}
    }
}

/// The log line of a decision: a reason that repeats the last one without changing the
/// count at debug level. `last` is the service's last reason, updated.
pub(crate) fn log_decision(name: &str, decision: &Decision, last: &mut Option<Reason>) {
    let repeat = *last == Some(decision.reason) && !decision.changed();
    *last = Some(decision.reason);
    let reason = decision.reason.as_str();
    if repeat {
        tracing::debug!(service = %name, reason, "{}", decision.message);
    } else {
        tracing::info!(service = %name, reason, "{}", decision.message);
    }
}

/// A decision in the metrics and the status, with an event when the count changed
/// (whatever runs the replicas).
pub(crate) fn publish_decision(
    m: &Metrics,
    status: &StatusHandle,
    wall: SystemTime,
    name: &str,
    config: &Autoscale,
    sample: Option<BackendLoad>,
    decision: &Decision,
) {
    if let Some(load) = sample {
        m.backend_scur.with_label_values(&[name]).set(load.scur);
        m.backend_qcur.with_label_values(&[name]).set(load.qcur);
        m.backend_qtime_seconds
            .with_label_values(&[name])
            .set(load.qtime_ms / 1000.0);
    }
    let metrics_available = decision.reason != Reason::MetricsUnavailable;
    if let Some(d) = decision.demand {
        m.autoscaler_demand.with_label_values(&[name]).set(d);
    }
    if let Some(r) = decision.recommendation {
        m.autoscaler_recommendation
            .with_label_values(&[name])
            .set(i64::from(r));
    }
    m.autoscaler_decisions_total
        .with_label_values(&[name, decision.reason.as_str()])
        .inc();
    m.autoscaler_max_replicas
        .with_label_values(&[name])
        .set(i64::from(config.max_replicas));
    m.autoscaler_schedule_floor
        .with_label_values(&[name])
        .set(i64::from(decision.schedule_floor().unwrap_or(0)));
    for reason in Reason::ALL {
        m.autoscaler_last_decision
            .with_label_values(&[name, reason.as_str()])
            .set(i64::from(reason == decision.reason));
    }
    status.update(|s| {
        let Some(svc) = s.services.get_mut(name) else {
            return;
        };
        let last_scale_time = if decision.changed() {
            Some(wall)
        } else {
            svc.autoscaler.as_ref().and_then(|a| a.last_scale_time)
        };
        svc.autoscaler = Some(AutoscalerStatus {
            min_replicas: config.min_replicas,
            max_replicas: config.max_replicas,
            target: config
                .signals()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            signal: decision.decided_by().map(str::to_owned),
            demand: decision.demand,
            recommendation: decision.recommendation,
            desired: decision.desired,
            reason: decision.reason.as_str().to_owned(),
            message: decision.message.clone(),
            last_scale_time,
            schedule: decision
                .schedule
                .as_ref()
                .map(|windows| schedule_status(windows, wall)),
        });
        let (reason, message) = if metrics_available {
            ("Sampled", "")
        } else {
            ("MetricsUnavailable", decision.message.as_str())
        };
        svc.set_condition(
            ConditionType::ScalingActive,
            metrics_available,
            reason,
            message,
            wall,
        );
        if decision.changed() {
            let reason = match decision.reason {
                Reason::ScaledToZero => "ScaledToZero",
                Reason::Woken => "Woken",
                _ => "Autoscaled",
            };
            svc.record(EventType::Normal, reason, decision.message.clone(), wall);
        }
    });
}

/// The schedule windows of a decision, for status.
fn schedule_status(windows: &Windows, now: SystemTime) -> ScheduleStatus {
    ScheduleStatus {
        active: windows.active.as_ref().map(|w| ActiveSchedule {
            cron: w.cron.clone(),
            timezone: w.timezone.to_string(),
            min_replicas: w.min_replicas,
            opened: w.opened,
            until: w.until,
            message: WindowHolds { window: w, now }.to_string(),
        }),
        next: windows.next.as_ref().map(|n| NextSchedule {
            cron: n.cron.clone(),
            timezone: n.timezone.to_string(),
            min_replicas: n.min_replicas,
            opens: n.opens,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds(held: u64, timed_out: u64) -> Holds {
        Holds {
            held,
            timed_out,
            ..Holds::default()
        }
    }

    #[test]
    fn held_requests_are_counted_between_readings_and_from_zero_after_a_reload() {
        assert_eq!(hold_deltas(None, &holds(5, 1)), (5, 1));
        assert_eq!(hold_deltas(Some(&holds(5, 1)), &holds(9, 1)), (4, 0));
        // HAProxy reloaded: its Lua state, and the counters, started over.
        assert_eq!(hold_deltas(Some(&holds(9, 3)), &holds(2, 0)), (2, 0));
    }
}
