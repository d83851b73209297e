//! The metrics tick: every autoscaled service samples its backend's load, its
//! autoscaler ([`crate::autoscale`], pure) decides, and the decision is explained in the
//! log, the metrics, an event and the status. A changed count wakes the service.

use std::time::SystemTime;

use tokio::time::Instant;

use crate::autoscale::{Autoscaler, Decision, Reason};
use crate::controller::Controller;
use crate::lb::LoadBalancer;
use crate::model::backend::BackendLoad;
use crate::runtime::ContainerRuntime;
use crate::serve::metrics::Metrics;
use crate::serve::status::{AutoscalerStatus, ConditionType, EventType, StatusHandle};
use crate::spec::{Autoscale, ServiceSpec};

impl<R: ContainerRuntime, L: LoadBalancer> Controller<R, L> {
    /// Every autoscaled service samples its backend's load and its autoscaler decides.
    /// A failed sample is passed on as a gap, never as a zero.
    pub(super) async fn autoscale(&mut self) {
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
            let decision = autoscaler.observe(now, sample);
            let config = autoscaler.config().clone();
            self.record_decision(&name, &config, sample, &decision);
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
            signal: decision.signal.map(|t| t.name().to_owned()),
            demand: decision.demand,
            recommendation: decision.recommendation,
            desired: decision.desired,
            reason: decision.reason.as_str().to_owned(),
            message: decision.message.clone(),
            last_scale_time,
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
            svc.record(
                EventType::Normal,
                "Autoscaled",
                decision.message.clone(),
                wall,
            );
        }
    });
}
