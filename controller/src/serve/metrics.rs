//! Prometheus metrics: one struct owns every collector, each declared once, where it is
//! built and registered.
//!
//! Built on the `prometheus` crate (the one DESIGN.md names): mature, with the process
//! collector (`process_resident_memory_bytes`, `process_cpu_seconds_total`) that the
//! cost benchmark reads, and the text exposition Prometheus 2.x scrapes. Labels are
//! bounded: service names come from the spec, commands and reasons from fixed sets.
//! Every series is documented in the README's metrics reference.

use std::time::Instant;

use prometheus::core::Collector;

use crate::reconcile::canary::Analysed;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Every series name registered here, prefix included (for docs checks).
    names: Vec<String>,
    pub reconcile_total: IntCounterVec,
    pub reconcile_errors_total: IntCounterVec,
    pub reconcile_duration_seconds: HistogramVec,
    pub docker_list_duration_seconds: Histogram,
    pub docker_inspects_total: IntCounter,
    pub replicas_desired: IntGaugeVec,
    pub replicas_current: IntGaugeVec,
    pub replicas_ready: IntGaugeVec,
    pub replicas_updated: IntGaugeVec,
    pub members_in_rotation: IntGaugeVec,
    pub warm_pool_replicas: IntGaugeVec,
    pub warm_pool_takes_total: IntCounterVec,
    pub autoscaler_recommendation: IntGaugeVec,
    pub autoscaler_demand: GaugeVec,
    pub autoscaler_decisions_total: IntCounterVec,
    pub autoscaler_last_decision: IntGaugeVec,
    pub autoscaler_max_replicas: IntGaugeVec,
    pub scale_to_zero_wakes_total: IntCounterVec,
    pub held_requests_total: IntCounterVec,
    pub held_request_timeouts_total: IntCounterVec,
    pub held_requests: IntGaugeVec,
    pub hold_duration_seconds: HistogramVec,
    pub autoscaler_schedule_floor: IntGaugeVec,
    pub backend_scur: GaugeVec,
    pub backend_qcur: GaugeVec,
    pub backend_qtime_seconds: GaugeVec,
    pub canary_step: IntGaugeVec,
    pub canary_weight_ratio: GaugeVec,
    pub canary_requests_per_second: GaugeVec,
    pub canary_error_ratio: GaugeVec,
    pub canary_response_time_seconds: GaugeVec,
    pub canary_verdicts_total: IntCounterVec,
    pub canary_aborted: IntGaugeVec,
    pub rollout_commands_total: IntCounterVec,
    pub haproxy_commands_total: IntCounterVec,
    pub haproxy_command_duration_seconds: HistogramVec,
    pub container_starts_total: IntCounterVec,
    pub image_pulls_total: IntCounterVec,
    pub image_pull_duration_seconds: Histogram,
    pub certificate_expiry_timestamp_seconds: GaugeVec,
    pub certificate_swaps_total: IntCounterVec,
    pub container_stops_total: IntCounterVec,
    pub container_restarts_total: IntCounterVec,
    pub replica_exits_total: IntCounterVec,
    pub spec_reloads_total: IntCounterVec,
    pub spec_valid: IntGauge,
    pub haproxy_restarts_total: IntCounter,
    pub haproxy_reloads_total: IntCounterVec,
    pub build_info: GaugeVec,
    pub up_since: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registrar::new();
        let service = &["service"];
        let m = Metrics {
            reconcile_total: r.add(IntCounterVec::new(
                Opts::new(
                    "reconcile_total",
                    "Reconcile passes, by service and result (ok, error).",
                ),
                &["service", "result"],
            )),
            reconcile_errors_total: r.add(IntCounterVec::new(
                Opts::new(
                    "reconcile_errors_total",
                    "Reconcile errors, by service and kind.",
                ),
                &["service", "kind"],
            )),
            reconcile_duration_seconds: r.add(HistogramVec::new(
                HistogramOpts::new(
                    "reconcile_duration_seconds",
                    "Duration of a reconcile pass (observe, plan, execute; \
                     Docker creates and stops run in the background).",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                service,
            )),
            docker_list_duration_seconds: r.add(Histogram::with_opts(
                HistogramOpts::new(
                    "docker_list_duration_seconds",
                    "Full Docker lists of the owned containers: at start, every resync and \
                     after the event stream broke (shared by the services due).",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )),
            docker_inspects_total: r.add(IntCounter::new(
                "docker_inspects_total",
                "Containers read again one by one between full lists \
                 (named by a Docker event, or just created or removed).",
            )),
            replicas_desired: r.add(IntGaugeVec::new(
                Opts::new(
                    "replicas_desired",
                    "Replicas the service should have (spec or autoscaler).",
                ),
                service,
            )),
            replicas_current: r.add(IntGaugeVec::new(
                Opts::new(
                    "replicas_current",
                    "Running replicas that are not being removed.",
                ),
                service,
            )),
            replicas_ready: r.add(IntGaugeVec::new(
                Opts::new(
                    "replicas_ready",
                    "Replicas serving: UP in HAProxy, or running without a load balancer.",
                ),
                service,
            )),
            replicas_updated: r.add(IntGaugeVec::new(
                Opts::new(
                    "replicas_updated",
                    "Current replicas of the current template.",
                ),
                service,
            )),
            members_in_rotation: r.add(IntGaugeVec::new(
                Opts::new(
                    "members_in_rotation",
                    "Hand-started members (dockscale.join) enabled in the service's backend.",
                ),
                service,
            )),
            warm_pool_replicas: r.add(IntGaugeVec::new(
                Opts::new(
                    "warm_pool_replicas",
                    "Warm containers of the service's pool, by state (ready: paused and \
                     takeable; warming: starting or waiting for their port).",
                ),
                &["service", "state"],
            )),
            warm_pool_takes_total: r.add(IntCounterVec::new(
                Opts::new(
                    "warm_pool_takes_total",
                    "Warm containers taken as replicas in place of a create.",
                ),
                service,
            )),
            autoscaler_recommendation: r.add(IntGaugeVec::new(
                Opts::new(
                    "autoscaler_recommendation",
                    "The autoscaler's raw recommendation before stabilization and rate limits.",
                ),
                service,
            )),
            autoscaler_demand: r.add(GaugeVec::new(
                Opts::new(
                    "autoscaler_demand",
                    "Demand the autoscaler acts on: mean of scur + qcur over the scale period.",
                ),
                service,
            )),
            autoscaler_decisions_total: r.add(IntCounterVec::new(
                Opts::new(
                    "autoscaler_decisions_total",
                    "Autoscaler decisions, by service and reason.",
                ),
                &["service", "reason"],
            )),
            autoscaler_last_decision: r.add(IntGaugeVec::new(
                Opts::new(
                    "autoscaler_last_decision",
                    "1 for the reason of the autoscaler's last decision, 0 for the others.",
                ),
                &["service", "reason"],
            )),
            autoscaler_max_replicas: r.add(IntGaugeVec::new(
                Opts::new(
                    "autoscaler_max_replicas",
                    "The service's autoscale.maxReplicas (for alerts on a queue at the ceiling).",
                ),
                service,
            )),
            scale_to_zero_wakes_total: r.add(IntCounterVec::new(
                Opts::new(
                    "scale_to_zero_wakes_total",
                    "Services woken from zero replicas, by service and trigger (held: a \
                     request HAProxy holds, sample: a request seen in a load sample).",
                ),
                &["service", "trigger"],
            )),
            held_requests_total: r.add(IntCounterVec::new(
                Opts::new(
                    "held_requests_total",
                    "Requests HAProxy held while the service had no usable replica.",
                ),
                service,
            )),
            held_request_timeouts_total: r.add(IntCounterVec::new(
                Opts::new(
                    "held_request_timeouts_total",
                    "Held requests answered 503 with Retry-After after activationTimeout.",
                ),
                service,
            )),
            held_requests: r.add(IntGaugeVec::new(
                Opts::new(
                    "held_requests",
                    "Requests HAProxy holds right now for the service, as last read.",
                ),
                service,
            )),
            hold_duration_seconds: r.add(HistogramVec::new(
                HistogramOpts::new(
                    "hold_duration_seconds",
                    "How long a held request waited for a usable replica before it was \
                     passed on (as HAProxy's Lua action measured it).",
                )
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0,
                ]),
                service,
            )),
            autoscaler_schedule_floor: r.add(IntGaugeVec::new(
                Opts::new(
                    "autoscaler_schedule_floor",
                    "The minReplicas of the autoscale.schedules window in force (the highest \
                     of those open), 0 outside every window.",
                ),
                service,
            )),
            backend_scur: r.add(GaugeVec::new(
                Opts::new(
                    "haproxy_backend_scur",
                    "Sessions being served by the backend, as the autoscaler last sampled.",
                ),
                service,
            )),
            backend_qcur: r.add(GaugeVec::new(
                Opts::new(
                    "haproxy_backend_qcur",
                    "Requests queued in the backend, as the autoscaler last sampled.",
                ),
                service,
            )),
            backend_qtime_seconds: r.add(GaugeVec::new(
                Opts::new(
                    "haproxy_backend_qtime_seconds",
                    "HAProxy's average queue time over the last 1024 requests, as last sampled.",
                ),
                service,
            )),
            canary_step: r.add(IntGaugeVec::new(
                Opts::new(
                    "canary_step",
                    "The canary step in force, from 1 (0 when no canary step is: no canary, \
                     promoted or aborted).",
                ),
                service,
            )),
            canary_weight_ratio: r.add(GaugeVec::new(
                Opts::new(
                    "canary_weight_ratio",
                    "The share of the traffic the canary step in force asks for the new \
                     template (0.2 for weight 20; 0 when no canary step is in force).",
                ),
                service,
            )),
            canary_requests_per_second: r.add(GaugeVec::new(
                Opts::new(
                    "canary_requests_per_second",
                    "Requests per second over the canary step so far, by version (stable: \
                     the old template's servers, canary: the new one's), from the figures \
                     the step is judged on; after an abort, the figures that aborted it; \
                     absent otherwise.",
                ),
                &["service", "version"],
            )),
            canary_error_ratio: r.add(GaugeVec::new(
                Opts::new(
                    "canary_error_ratio",
                    "Errors (5xx, connection and response errors) per request over the \
                     canary step so far, by version (as canary_requests_per_second).",
                ),
                &["service", "version"],
            )),
            canary_response_time_seconds: r.add(GaugeVec::new(
                Opts::new(
                    "canary_response_time_seconds",
                    "Mean response time (HAProxy's rtime, weighted by requests) over the \
                     canary step so far, by version (as canary_requests_per_second).",
                ),
                &["service", "version"],
            )),
            canary_verdicts_total: r.add(IntCounterVec::new(
                Opts::new(
                    "canary_verdicts_total",
                    "Verdicts of the canary analysis, by service and verdict (advance, \
                     promote, abort).",
                ),
                &["service", "verdict"],
            )),
            canary_aborted: r.add(IntGaugeVec::new(
                Opts::new(
                    "canary_aborted",
                    "1 while the spec's template is one whose canary was aborted (the old \
                     replicas serve until the spec changes), else 0.",
                ),
                service,
            )),
            rollout_commands_total: r.add(IntCounterVec::new(
                Opts::new(
                    "rollout_commands_total",
                    "Commands to a service's rollout (`dockscale rollout`), by command \
                     (pause, resume, abort, retry) and outcome (applied; refused: it did \
                     not apply; unauthorized: no or a wrong token; forbidden: no token file \
                     on a listen address that is not loopback).",
                ),
                &["service", "command", "outcome"],
            )),
            haproxy_commands_total: r.add(IntCounterVec::new(
                Opts::new(
                    "haproxy_commands_total",
                    "Runtime API commands sent to HAProxy, by command and result.",
                ),
                &["command", "result"],
            )),
            haproxy_command_duration_seconds: r.add(HistogramVec::new(
                HistogramOpts::new(
                    "haproxy_command_duration_seconds",
                    "Round trip of a runtime API command.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
                ]),
                &["command"],
            )),
            container_starts_total: r.add(IntCounterVec::new(
                Opts::new(
                    "container_starts_total",
                    "Replicas created and started, by service and result.",
                ),
                &["service", "result"],
            )),
            image_pulls_total: r.add(IntCounterVec::new(
                Opts::new(
                    "image_pulls_total",
                    "Image pulls from a registry, by result (ok, error).",
                ),
                &["result"],
            )),
            image_pull_duration_seconds: r.add(Histogram::with_opts(
                HistogramOpts::new(
                    "image_pull_duration_seconds",
                    "Duration of an image pull, successful or not.",
                )
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                ]),
            )),
            certificate_expiry_timestamp_seconds: r.add(GaugeVec::new(
                Opts::new(
                    "certificate_expiry_timestamp_seconds",
                    "When each certificate a frontend serves expires (Unix seconds).",
                ),
                &["frontend", "file"],
            )),
            certificate_swaps_total: r.add(IntCounterVec::new(
                Opts::new(
                    "certificate_swaps_total",
                    "Certificate files changed on disk and swapped into the running HAProxy \
                     without a reload, by result (ok; invalid: the file does not parse or its \
                     key does not match; failed: HAProxy refused it).",
                ),
                &["result"],
            )),
            container_stops_total: r.add(IntCounterVec::new(
                Opts::new(
                    "container_stops_total",
                    "Replicas stopped and removed, by service and reason \
                     (scale_down, rollout, exited, never_started).",
                ),
                &["service", "reason"],
            )),
            container_restarts_total: r.add(IntCounterVec::new(
                Opts::new(
                    "container_restarts_total",
                    "Replicas that crashed (exited on their own or were OOM-killed) \
                     and were replaced, by service.",
                ),
                service,
            )),
            replica_exits_total: r.add(IntCounterVec::new(
                Opts::new(
                    "replica_exits_total",
                    "Replicas seen exited, by service and cause: own (its process exited), \
                     oom (killed under its memory limit), signalled (killed, stopped or \
                     removed from outside), unknown (found exited without its exit event).",
                ),
                &["service", "cause"],
            )),
            spec_reloads_total: r.add(IntCounterVec::new(
                Opts::new(
                    "spec_reloads_total",
                    "Spec reads after a file change or resync, by result (ok, invalid).",
                ),
                &["result"],
            )),
            spec_valid: r.add(IntGauge::new(
                "spec_valid",
                "1 when the spec files validate, 0 while the last good spec is kept.",
            )),
            haproxy_restarts_total: r.add(IntCounter::new(
                "haproxy_restarts_total",
                "Times the managed HAProxy was found dead and started again.",
            )),
            haproxy_reloads_total: r.add(IntCounterVec::new(
                Opts::new(
                    "haproxy_reloads_total",
                    "Reloads of the managed HAProxy, by reason: services_changed, \
                     slot_pool_grown (a service may now run more replicas than its backend \
                     has slots), failed.",
                ),
                &["reason"],
            )),
            build_info: r.add(GaugeVec::new(
                Opts::new(
                    "build_info",
                    "Always 1; the version label says which dockscale runs.",
                ),
                &["version"],
            )),
            up_since: r.add(Gauge::new(
                "start_time_seconds",
                "Unix time the controller started.",
            )),
            // Last, once every collector above is registered.
            names: r.names,
            registry: r.registry,
        };
        // The process collector is unprefixed (`process_*`), like every exporter's.
        #[cfg(target_os = "linux")]
        prometheus::default_registry()
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .ok();
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        m.up_since.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        );
        m
    }

    /// The names of dockscale's own series (`dockscale_*`).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The text exposition of every series (ours and the process collector's).
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut families = self.registry.gather();
        families.extend(prometheus::default_registry().gather());
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&families, &mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }

    /// Times a reconcile pass until dropped.
    pub fn reconcile_timer(&self, service: &str) -> ReconcileTimer {
        ReconcileTimer {
            histogram: self
                .reconcile_duration_seconds
                .with_label_values(&[service]),
            start: Instant::now(),
        }
    }

    /// Removes the per-service series of a service that is gone.
    pub fn forget_service(&self, service: &str) {
        for g in [
            &self.replicas_desired,
            &self.replicas_current,
            &self.replicas_ready,
            &self.replicas_updated,
            &self.members_in_rotation,
            &self.autoscaler_recommendation,
            &self.autoscaler_max_replicas,
            &self.held_requests,
            &self.autoscaler_schedule_floor,
            &self.canary_step,
            &self.canary_aborted,
        ] {
            let _ = g.remove_label_values(&[service]);
        }
        for c in [
            &self.held_requests_total,
            &self.held_request_timeouts_total,
            &self.warm_pool_takes_total,
        ] {
            let _ = c.remove_label_values(&[service]);
        }
        for state in ["ready", "warming"] {
            let _ = self
                .warm_pool_replicas
                .remove_label_values(&[service, state]);
        }
        let _ = self.hold_duration_seconds.remove_label_values(&[service]);
        for g in [
            &self.autoscaler_demand,
            &self.backend_scur,
            &self.backend_qcur,
            &self.backend_qtime_seconds,
            &self.canary_weight_ratio,
        ] {
            let _ = g.remove_label_values(&[service]);
        }
        self.canary_figures(service, None);
    }

    /// The warm pool's counts after a pass; a service without a pool has no series.
    pub fn warm_pool(&self, service: &str, pool: &crate::reconcile::warm_pool::PoolCounts) {
        for (state, n) in [("ready", pool.ready), ("warming", pool.warming)] {
            if pool.size == 0 && n == 0 {
                let _ = self
                    .warm_pool_replicas
                    .remove_label_values(&[service, state]);
            } else {
                self.warm_pool_replicas
                    .with_label_values(&[service, state])
                    .set(i64::from(n));
            }
        }
    }

    /// Sets the per-version figures of a canary step (`stable`, `canary`) from what the
    /// planner judged, or removes them (`None`): figures of a step that is over must
    /// not stay on a dashboard as if they were current.
    pub fn canary_figures(&self, service: &str, analysed: Option<&Analysed>) {
        for version in ["stable", "canary"] {
            let labels = [service, version];
            let Some(a) = analysed else {
                for g in [
                    &self.canary_requests_per_second,
                    &self.canary_error_ratio,
                    &self.canary_response_time_seconds,
                ] {
                    let _ = g.remove_label_values(&labels);
                }
                continue;
            };
            let figures = if version == "stable" { &a.old } else { &a.new };
            self.canary_requests_per_second
                .with_label_values(&labels)
                .set(a.rate(figures));
            self.canary_error_ratio
                .with_label_values(&labels)
                .set(figures.error_rate());
            self.canary_response_time_seconds
                .with_label_values(&labels)
                .set(figures.mean_rtime_ms / 1000.0);
        }
    }
}

/// Registers each collector as it is built, so that a metric is declared in one place:
/// the initializer of its field in [`Metrics::new`].
struct Registrar {
    registry: Registry,
    names: Vec<String>,
}

impl Registrar {
    fn new() -> Self {
        Registrar {
            registry: Registry::new_custom(Some("dockscale".to_owned()), None)
                // A constant, valid prefix: this cannot fail.
                .expect("valid registry prefix"),
            names: Vec::new(),
        }
    }

    /// Registers a collector just built, and returns it. Names, help texts and labels
    /// are constants, checked by the tests below: neither step can fail.
    fn add<C: Collector + Clone + 'static>(&mut self, built: prometheus::Result<C>) -> C {
        let collector = built.expect("valid metric");
        for desc in collector.desc() {
            self.names.push(format!("dockscale_{}", desc.fq_name));
        }
        self.registry
            .register(Box::new(collector.clone()))
            .expect("metric names are unique");
        collector
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Observes the elapsed time into the reconcile histogram when dropped.
pub struct ReconcileTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    /// `dockscale_*` names used in a text, histogram suffixes removed.
    fn names_in(text: &str) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        let mut rest = text;
        while let Some(at) = rest.find("dockscale_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(name.to_owned());
            rest = &tail[end..];
        }
        out
    }

    #[test]
    fn dashboards_and_alerts_use_only_registered_metrics() {
        let m = super::Metrics::new();
        for (file, text) in [
            (
                "manifests/grafana-dashboard.json",
                include_str!("../../../manifests/grafana-dashboard.json"),
            ),
            (
                "manifests/dockscale-alerts.yml",
                include_str!("../../../manifests/dockscale-alerts.yml"),
            ),
        ] {
            for name in names_in(text) {
                assert!(
                    m.names().contains(&name),
                    "{file} uses {name}, which is not registered"
                );
            }
        }
    }

    #[test]
    fn every_metric_is_documented_in_the_readme() {
        let readme = include_str!("../../../README.md");
        for name in super::Metrics::new().names() {
            assert!(
                readme.contains(&format!("`{name}`")),
                "README.md does not document `{name}`"
            );
        }
    }

    use super::*;

    #[test]
    fn the_warm_pool_is_shown_by_state_and_gone_without_a_pool() {
        use crate::reconcile::warm_pool::PoolCounts;
        let m = Metrics::new();
        let pool = PoolCounts {
            size: 3,
            ready: 2,
            warming: 1,
        };
        m.warm_pool("web", &pool);
        m.warm_pool_takes_total.with_label_values(&["web"]).inc();
        let text = m.render().expect("renders");
        assert!(text.contains("dockscale_warm_pool_replicas{service=\"web\",state=\"ready\"} 2"));
        assert!(text.contains("dockscale_warm_pool_replicas{service=\"web\",state=\"warming\"} 1"));
        assert!(text.contains("dockscale_warm_pool_takes_total{service=\"web\"} 1"));
        m.warm_pool("web", &PoolCounts::default());
        let text = m.render().expect("renders");
        assert!(!text.contains("dockscale_warm_pool_replicas{"), "{text}");
        m.forget_service("web");
        assert!(!m
            .render()
            .expect("renders")
            .contains("warm_pool_takes_total{"));
    }

    #[test]
    fn every_series_is_prefixed_and_renders() {
        let m = Metrics::new();
        m.replicas_ready.with_label_values(&["web"]).set(3);
        m.reconcile_total.with_label_values(&["web", "ok"]).inc();
        {
            let _t = m.reconcile_timer("web");
        }
        let text = m.render().expect("renders");
        assert!(text.contains("dockscale_replicas_ready{service=\"web\"} 3"));
        assert!(text.contains("dockscale_reconcile_total{result=\"ok\",service=\"web\"} 1"));
        assert!(text.contains("dockscale_reconcile_duration_seconds_count{service=\"web\"} 1"));
        assert!(text.contains("dockscale_build_info{version="));
        m.forget_service("web");
        assert!(!m
            .render()
            .expect("renders")
            .contains("dockscale_replicas_ready{service=\"web\"}"));
    }
}
