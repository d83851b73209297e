//! The autoscaler driven by a scripted backend load.

use super::*;
use crate::model::backend::BackendLoad;

fn load(inflight: f64) -> BackendLoad {
    BackendLoad {
        scur: inflight,
        ..BackendLoad::default()
    }
}

fn autoscaled_desired(w: &World, service: &str) -> Option<u32> {
    w.status(service)?.autoscaler.map(|a| a.desired)
}

#[tokio::test(start_paused = true)]
async fn the_autoscaler_scales_up_with_the_load_and_back_down_after_it_is_gone() {
    let w = World::new(&[svc("web").replicas(1).autoscale(1, 10)]);
    // 40 requests in flight at 8 per replica from the first sample: 5 replicas, in one
    // step of at most 4.
    w.lb.set_load("web", load(40.0));
    let w = w.start();
    let up = w.converge("web", 5, secs(30)).await;
    assert!(up < secs(5), "scaled up after {up:?}");
    assert_eq!(autoscaled_desired(&w, "web"), Some(5));
    let scaled = w.events_with("web", "Autoscaled");
    assert_eq!(scaled.len(), 1, "{:?}", w.events("web"));

    // A higher load: capped at maxReplicas.
    w.lb.set_load("web", load(400.0));
    w.converge("web", 10, secs(60)).await;

    // No load: down one per 30s after the 60s window, to minReplicas.
    let idle = Instant::now();
    w.lb.set_load("web", load(0.0));
    w.settle(secs(50)).await;
    assert_eq!(w.running("web").len(), 10, "scaled down inside the window");
    let down = w.converge("web", 1, secs(600)).await;
    assert!(
        idle.elapsed() >= secs(60) + secs(30) * 8,
        "down after {down:?}"
    );
    let downs = w
        .events_with("web", "ScalingReplicaSet")
        .iter()
        .filter(|e| e.message.starts_with("Scaled down"))
        .map(|e| e.count)
        .sum::<u32>();
    assert_eq!(downs, 9, "{:?}", w.events("web"));
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_load_sample_that_fails_is_a_gap_never_a_scale_down() {
    let w = World::new(&[svc("web").replicas(1).autoscale(1, 10)]);
    w.lb.set_load("web", load(40.0));
    let w = w.start();
    w.converge("web", 5, secs(30)).await;

    w.lb.set_reachable(false);
    w.settle(secs(300)).await;
    assert_eq!(autoscaled_desired(&w, "web"), Some(5));
    assert_eq!(w.running("web").len(), 5);
    w.lb.set_reachable(true);
    // Caught up by the resync at the latest (see the report: a failed backend read
    // schedules no retry of its own).
    w.converge("web", 5, w.settings.sync_period + secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn stale_metrics_raise_the_count_to_the_fallback_and_say_so() {
    let w = World::new(&[svc("web")
        .replicas(1)
        .autoscale(1, 10)
        .fallback("{after: 30s, replicas: 7}")]);
    w.lb.set_load("web", load(40.0));
    let w = w.start();
    w.converge("web", 5, secs(30)).await;
    let active = |w: &World| {
        let s = w.status("web").expect("status");
        let c = s
            .condition(ConditionType::ScalingActive)
            .expect("condition");
        (c.status, c.reason.clone())
    };
    assert_eq!(active(&w), (true, "Sampled".to_owned()));

    w.lb.set_reachable(false);
    w.settle(secs(20)).await;
    assert_eq!(
        autoscaled_desired(&w, "web"),
        Some(5),
        "held before fallback.after"
    );
    w.settle(secs(20)).await;
    assert_eq!(autoscaled_desired(&w, "web"), Some(7));
    assert_eq!(active(&w), (false, "MetricsUnavailable".to_owned()));
    let status = w.status("web").expect("status");
    let autoscaler = status.autoscaler.expect("autoscaler status");
    assert_eq!(autoscaler.reason, "MetricsUnavailable");
    assert_eq!(autoscaler.signal, None);

    w.lb.set_reachable(true);
    w.settle(secs(5)).await;
    assert_eq!(active(&w), (true, "Sampled".to_owned()));
    let status = w.status("web").expect("status");
    let signal = status.autoscaler.and_then(|a| a.signal);
    assert_eq!(signal.as_deref(), Some("inflightPerReplica"));
}

#[tokio::test(start_paused = true)]
async fn a_restarted_controller_keeps_the_autoscaled_count() {
    let w = World::new(&[svc("web").replicas(1).autoscale(1, 10)]);
    w.lb.set_load("web", load(40.0));
    let mut w = w.start();
    w.converge("web", 5, secs(30)).await;
    let before = w.running_ids("web");

    w.stop_controller().await;
    w.start_controller();
    w.settle(secs(30)).await;
    assert_eq!(w.running_ids("web"), before, "the restart reset the count");
    w.converge("web", 5, secs(1)).await;
    assert!(w.events_with("web", "ScalingReplicaSet").is_empty());
}

#[tokio::test(start_paused = true)]
async fn editing_the_replicas_of_an_autoscaled_service_changes_nothing_and_says_why() {
    let w = World::new(&[svc("web").replicas(2).autoscale(1, 10)]);
    w.lb.set_load("web", load(16.0));
    let w = w.start();
    w.converge("web", 2, secs(5)).await;
    w.edit(&[svc("web").replicas(4).autoscale(1, 10)]);
    w.settle(secs(10)).await;
    w.converge("web", 2, secs(1)).await;
    let changed = w.events_with("web", "SpecChanged");
    assert_eq!(changed.len(), 1, "{:?}", w.events("web"));
    assert!(
        changed[0].message.contains("autoscaled"),
        "{}",
        changed[0].message
    );
}
