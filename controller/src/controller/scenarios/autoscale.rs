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

/// An RFC 3339 time.
fn wall(text: &str) -> std::time::SystemTime {
    crate::autoscale::simulate::parse_start(text).expect("an RFC 3339 time")
}

const WEEKDAY_MORNING: &str =
    "[{cron: \"0 8 * * 1-5\", timezone: Europe/Zurich, duration: 10m, minReplicas: 4}]";

/// The `Autoscaled` events' (previous, desired) counts, from their messages.
fn autoscaled_steps(w: &World) -> Vec<(u32, u32)> {
    w.events_with("web", "Autoscaled")
        .iter()
        .filter_map(|e| {
            let tail = e.message.rsplit_once("scaling ")?.1;
            let (_, counts) = tail.split_once("from ")?;
            let (from, to) = counts.split_once(" to ")?;
            let to = to.trim_start_matches("fallback.replicas ");
            Some((from.parse().ok()?, to.parse().ok()?))
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_schedule_window_lifts_the_floor_without_load_and_ends_through_stabilization() {
    // Monday 2024-01-08, one minute before the window opens in Zurich.
    let w = World::new(&[svc("web")
        .replicas(1)
        .autoscale(1, 10)
        .schedules(WEEKDAY_MORNING)])
    .with_settings(|s| s.clock = Clock::following_tokio_from(wall("2024-01-08T07:59:00+01:00")));
    let floor = |w: &World| {
        w.metrics
            .autoscaler_schedule_floor
            .with_label_values(&["web"])
            .get()
    };
    // 4 in flight: one replica is enough for the load.
    w.lb.set_load("web", load(4.0));
    let w = w.start();
    w.converge("web", 1, secs(10)).await;
    w.until("a first decision", secs(5), |w| {
        autoscaled_desired(w, "web").is_some()
    })
    .await;
    let status = w
        .status("web")
        .and_then(|s| s.autoscaler)
        .expect("autoscaler");
    let schedule = status.schedule.expect("schedule status");
    assert_eq!(schedule.active, None);
    let next = schedule.next.expect("the next window");
    assert_eq!(
        (next.opens, next.min_replicas),
        (wall("2024-01-08T08:00:00+01:00"), 4)
    );
    assert_eq!(floor(&w), 0);

    // 08:00: the window opens; the count rises to its floor with no more load.
    let opened = w
        .until("the floor applied", secs(70), |w| {
            autoscaled_desired(w, "web") == Some(4)
        })
        .await;
    assert!(
        (secs(50)..secs(63)).contains(&opened),
        "applied {opened:?} after 07:59:10"
    );
    w.converge("web", 4, secs(30)).await;
    let status = w
        .status("web")
        .and_then(|s| s.autoscaler)
        .expect("autoscaler");
    assert_eq!(status.signal.as_deref(), Some("schedule"));
    let active = status
        .schedule
        .and_then(|s| s.active)
        .expect("a window in force");
    assert_eq!(
        (active.min_replicas, active.until),
        (4, wall("2024-01-08T08:10:00+01:00"))
    );
    assert_eq!(
        active.message,
        "schedule \"0 8 * * 1-5\" (Europe/Zurich) holds at least 4 until 08:10 CET"
    );
    let lifted = w.events_with("web", "Autoscaled");
    let lifted = lifted.last().expect("an Autoscaled event");
    assert!(
        lifted.message.ends_with(
            "schedule \"0 8 * * 1-5\" (Europe/Zurich) holds at least 4 until 08:10 CET, \
             recommendation 4 (clamped from 1 to [4, 10]): scaling up from 1 to 4"
        ),
        "{}",
        lifted.message
    );
    assert_eq!(floor(&w), 4);

    // Load beyond the floor takes the count higher: 60 in flight need 8.
    w.lb.set_load("web", load(60.0));
    w.converge("web", 8, secs(40)).await;
    let status = w
        .status("web")
        .and_then(|s| s.autoscaler)
        .expect("autoscaler");
    assert_eq!(status.signal.as_deref(), Some("inflightPerReplica"));

    // The load goes: down through the scale-down window, one per 30 s, to the floor
    // and no lower while the window lasts.
    w.lb.set_load("web", load(4.0));
    w.settle(secs(50)).await;
    assert_eq!(w.running("web").len(), 8, "scaled down inside the window");
    w.converge("web", 4, secs(240)).await;
    w.settle(secs(20)).await;
    let status = w
        .status("web")
        .and_then(|s| s.autoscaler)
        .expect("autoscaler");
    assert_eq!(
        (status.reason.as_str(), status.signal.as_deref()),
        ("AtScheduleFloor", Some("schedule"))
    );

    // 08:10: the window ends. Nothing drops at once: the floor's recommendations hold
    // for the scale-down window, then one replica per period, to minReplicas.
    let end = wall("2024-01-08T08:10:00+01:00");
    let until_end = end
        .duration_since(w.settings.clock.wall())
        .expect("the window is still open");
    w.settle(until_end + secs(50)).await;
    assert_eq!(w.running("web").len(), 4, "a cliff at the window's end");
    assert_eq!(floor(&w), 0);
    let status = w
        .status("web")
        .and_then(|s| s.autoscaler)
        .expect("autoscaler");
    let schedule = status.schedule.expect("schedule status");
    assert_eq!(schedule.active, None);
    assert_eq!(
        schedule.next.map(|n| n.opens),
        Some(wall("2024-01-09T08:00:00+01:00")),
        "the next is Tuesday's"
    );
    w.converge("web", 1, secs(200)).await;
    let after = w.settings.clock.wall();
    assert!(
        after >= end + secs(60) + secs(30) * 2,
        "down to 1 too soon after the window's end"
    );
    // Every step down was one replica: no cliff anywhere.
    let steps = autoscaled_steps(&w);
    assert!(
        steps.iter().filter(|(a, b)| b < a).all(|(a, b)| a - b == 1),
        "{steps:?}"
    );
    assert_eq!(steps.first(), Some(&(1, 4)), "{steps:?}");
    let downs: Vec<(u32, u32)> = steps.iter().copied().filter(|(a, b)| b < a).collect();
    assert_eq!(
        downs,
        [(8, 7), (7, 6), (6, 5), (5, 4), (4, 3), (3, 2), (2, 1)],
        "{steps:?}"
    );
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn an_edit_with_a_bad_schedule_keeps_the_last_good_spec() {
    let good = || {
        svc("web")
            .replicas(2)
            .autoscale(2, 10)
            .schedules(WEEKDAY_MORNING)
    };
    let w = World::new(&[good()])
        .with_settings(|s| s.clock = Clock::following_tokio_from(wall("2024-01-06T12:00:00Z")));
    w.lb.set_load("web", load(8.0));
    let w = w.start();
    w.converge("web", 2, secs(10)).await;
    for bad in [
        "[{cron: \"0 8 * * 1-5\", timezone: Mars/Olympus, duration: 10m, minReplicas: 4}]",
        "[{cron: \"0 8 * 1-5\", duration: 10m, minReplicas: 4}]",
        "[{cron: \"0 8 * * 1-5\", duration: 0s, minReplicas: 4}]",
        "[{cron: \"0 8 * * 1-5\", duration: 10m, minReplicas: 40}]",
    ] {
        w.edit(&[good().schedules(bad)]);
        w.until("the edit refused", secs(10), |w| {
            w.condition("web", ConditionType::SpecInvalid)
                .is_some_and(|c| c.status)
        })
        .await;
        let message = w
            .condition("web", ConditionType::SpecInvalid)
            .map(|c| c.message)
            .unwrap_or_default();
        assert!(message.contains("service.yaml:"), "{bad}: {message}");
        w.settle(secs(5)).await;
        w.converge("web", 2, secs(1)).await;
        w.edit(&[good()]);
        w.until("valid again", secs(10), |w| {
            w.condition("web", ConditionType::SpecInvalid)
                .is_some_and(|c| !c.status)
        })
        .await;
    }
}
