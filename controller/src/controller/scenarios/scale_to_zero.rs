//! Scale to zero on the fakes: an idle service drained to no replica, a request held
//! by HAProxy waking it within a reading of the held requests, and a wake that comes
//! while the last replica is still draining.

use super::*;
use crate::model::backend::{BackendLoad, Holds};

/// A backend with nothing in flight whose request counter stands at `requests`.
fn idle(requests: u64) -> BackendLoad {
    BackendLoad {
        requests,
        ..BackendLoad::default()
    }
}

fn held(waiting: u32, held: u64) -> Holds {
    Holds {
        waiting,
        held,
        ..Holds::default()
    }
}

fn autoscaler(w: &World, service: &str) -> Option<crate::serve::status::AutoscalerStatus> {
    w.status(service)?.autoscaler
}

fn counter(w: &World, name: &str, labels: &str) -> String {
    let text = w.metrics.render().expect("renders");
    let prefix = format!("dockscale_{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or("absent")
        .to_owned()
}

const IDLE_30S: &str = "{idleAfter: 30s, activationTimeout: 10s}";

#[tokio::test(start_paused = true)]
async fn an_idle_service_goes_to_zero_and_a_held_request_wakes_it_at_once() {
    let w = World::new(&[svc("web").replicas(1).scale_to_zero(4, IDLE_30S)]);
    w.lb.set_load("web", idle(12));
    let w = w.start();
    w.converge("web", 1, secs(10)).await;
    let reloads = w.lb.reloads();

    // 30 s without a request: drained and removed like any scale-down.
    let to_zero = w.converge("web", 0, secs(60)).await;
    assert!(to_zero >= secs(25), "at zero after {to_zero:?}");
    let a = autoscaler(&w, "web").expect("autoscaler status");
    assert_eq!(a.desired, 0);
    assert!(
        ["ScaledToZero", "Idle"].contains(&a.reason.as_str()),
        "{a:?}"
    );
    let zero = w.events_with("web", "ScaledToZero");
    assert_eq!(zero.len(), 1, "{:?}", w.events("web"));
    assert!(
        zero[0].message.starts_with("autoscaler: no request for 3")
            && zero[0]
                .message
                .ends_with("(idleAfter 30s): scaling down from 1 to 0"),
        "{}",
        zero[0].message
    );
    // Still idle a minute later: nothing comes back by itself.
    w.settle(secs(60)).await;
    assert!(w.converged("web", 0), "{}", w.describe());

    // A request arrives: HAProxy holds it and its counter shows it.
    let arrived = Instant::now();
    w.lb.set_holds("web", held(1, 1));
    w.until("woken", secs(1), |w| {
        autoscaler(w, "web").is_some_and(|a| a.desired == 1)
    })
    .await;
    let woken = arrived.elapsed();
    assert!(
        woken <= w.settings.holds_interval + ms(20),
        "woken after {woken:?}, not within one reading of the held requests"
    );
    w.converge("web", 1, secs(5)).await;
    let wake = w.events_with("web", "Woken");
    assert_eq!(wake.len(), 1, "{:?}", w.events("web"));
    assert!(
        wake[0].message.contains("woken by a held request (1 held)"),
        "{}",
        wake[0].message
    );
    let a = autoscaler(&w, "web").expect("autoscaler status");
    assert_eq!(a.reason, "Woken", "{a:?}");
    assert_eq!(
        counter(
            &w,
            "scale_to_zero_wakes_total",
            "service=\"web\",trigger=\"held\""
        ),
        "1"
    );
    assert_eq!(counter(&w, "held_requests_total", "service=\"web\""), "1");
    // Going to zero and back changed HAProxy's servers only, never its configuration.
    assert_eq!(w.lb.reloads(), reloads);
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn many_held_requests_wake_as_many_replicas_as_they_need() {
    let w = World::new(&[svc("web").replicas(1).scale_to_zero(4, IDLE_30S)]);
    w.lb.set_load("web", idle(0));
    let w = w.start();
    w.converge("web", 0, secs(60)).await;
    // 20 held at 8 per replica: 3 replicas at once.
    w.lb.set_holds("web", held(20, 20));
    w.converge("web", 3, secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_request_held_while_the_last_replica_drains_brings_one_back() {
    let w = World::new(&[svc("web")
        .replicas(1)
        .drain_timeout("20s")
        .scale_to_zero(4, IDLE_30S)]);
    w.lb.set_load("web", idle(3));
    let w = w.start();
    w.converge("web", 1, secs(10)).await;
    let last = w.running("web")[0].clone();
    // A long request keeps the last replica's session open: its drain takes a while.
    w.lb.set_sessions(last.addr().expect("an address"), 1);
    w.until("scaled to zero", secs(60), |w| {
        autoscaler(w, "web").is_some_and(|a| a.desired == 0)
    })
    .await;
    w.until("draining", secs(5), |w| w.serving("web").is_empty())
        .await;
    assert_eq!(
        w.running("web").len(),
        1,
        "still draining: {}",
        w.describe()
    );

    // No usable server: HAProxy holds the next request, and the service wakes.
    w.lb.set_holds("web", held(1, 1));
    w.until("woken", secs(1), |w| {
        autoscaler(w, "web").is_some_and(|a| a.desired == 1)
    })
    .await;
    w.lb.set_sessions(last.addr().expect("an address"), 0);
    w.converge("web", 1, secs(30)).await;
    assert_eq!(w.serving("web").len(), 1);
    assert_eq!(
        w.events_with("web", "Woken").len(),
        1,
        "{:?}",
        w.events("web")
    );
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn requests_counted_between_samples_keep_the_service_up() {
    let w = World::new(&[svc("web").replicas(1).scale_to_zero(4, IDLE_30S)]);
    w.lb.set_load("web", idle(0));
    let w = w.start();
    w.converge("web", 1, secs(10)).await;
    // A short request every 20 s: never in flight when sampled, always counted.
    for n in 1..=6 {
        w.settle(secs(20)).await;
        w.lb.set_load("web", idle(n));
    }
    assert_eq!(autoscaler(&w, "web").map(|a| a.desired), Some(1));
    assert!(w.events_with("web", "ScaledToZero").is_empty());
}
