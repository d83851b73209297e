//! The crash-loop back-off, per replica line: only a replica's own exit (or an OOM
//! kill) counts, and a line backing off holds back nothing but itself.

use super::*;
use crate::runtime::fake::Behaviour;

/// A pool whose crash back-off starts at 1s.
fn crashing_world(services: &[Svc]) -> World {
    World::new(services).with_settings(|s| {
        s.crash_backoff.base = secs(1);
        s.crash_backoff.max = secs(30);
    })
}

/// When each container of `service` was created, in order.
fn created_at(w: &World, service: &str) -> Vec<Instant> {
    w.journal()
        .entries()
        .into_iter()
        .filter(|e| matches!(&e.call, Call::Create { service: s, .. } if s == service))
        .map(|e| e.at)
        .collect()
}

/// The one running replica of `service` once there is one that is not `old`.
async fn next_replica(
    w: &World,
    service: &str,
    old: &ContainerId,
    within: Duration,
) -> FakeContainer {
    w.until("a replacement", within, |w| {
        w.running(service).iter().any(|c| &c.id != old)
    })
    .await;
    w.running(service)
        .into_iter()
        .find(|c| &c.id != old)
        .expect("a replacement")
}

#[tokio::test(start_paused = true)]
async fn one_crashing_line_never_holds_back_another_replacement_or_a_scale_up() {
    let w = crashing_world(&[svc("web").replicas(3).lb()])
        .with_settings(|s| s.crash_backoff.base = secs(20))
        .start();
    w.converge("web", 3, secs(5)).await;
    let replicas = w.running("web");
    let (crasher, other) = (replicas[0].clone(), replicas[1].clone());

    // Two crashes in a row: the first is replaced at once, the second backs off.
    w.rt.crash(&crasher.id, 1);
    let second = next_replica_excluding(&w, &ids(&replicas)).await;
    w.converge("web", 3, secs(1)).await;
    w.rt.crash(&second.id, 1);
    w.until("the line backing off", secs(1), |w| {
        w.status("web").is_some_and(|s| s.back_off.len() == 1)
    })
    .await;
    let held_since = Instant::now();
    assert_eq!(w.running("web").len(), 2);

    // Another line's replica is killed: replaced at once, the crashing line still waits.
    w.rt.kill(&other.id);
    w.until("the other line replaced", secs(1), |w| {
        // Two lines run; the crashing one still waits.
        w.running("web").len() == 2 && w.rt.container(&other.id).is_none()
    })
    .await;
    w.until("the other line serving", secs(1), |w| {
        w.serving("web").len() == 2
    })
    .await;
    // A scale-up goes ahead too.
    w.edit(&[svc("web").replicas(5).lb()]);
    w.until("scaled up around the back-off", secs(1), |w| {
        w.serving("web").len() == 4
    })
    .await;
    assert!(held_since.elapsed() < secs(5), "waited for the back-off");
    let status = w.status("web").expect("status");
    assert_eq!(status.back_off.len(), 1, "{:?}", status.back_off);
    assert_eq!(status.back_off[0].restarts, 2);
    assert_eq!(status.back_off[0].replica, second.name);

    // And the line itself is replaced once its back-off is over.
    let back = w.converge("web", 5, secs(30)).await;
    assert!(
        held_since.elapsed() >= secs(20),
        "the line did not back off: back after {back:?}"
    );
    w.check_invariants();
}

/// The running replica that is none of `old`.
async fn next_replica_excluding(w: &World, old: &BTreeSet<ContainerId>) -> FakeContainer {
    w.until("a new replica", secs(2), |w| {
        w.running("web").iter().any(|c| !old.contains(&c.id))
    })
    .await;
    w.running("web")
        .into_iter()
        .find(|c| !old.contains(&c.id))
        .expect("a new replica")
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_keeps_exiting_is_replaced_with_growing_back_off() {
    let w = crashing_world(&[svc("pool").replicas(1).image("crashes:1")]);
    w.rt.add_image("crashes:1", Behaviour::crashes_after(ms(200)));
    let w = w.start();
    w.until("six replicas tried", secs(60), |w| {
        created_at(w, "pool").len() >= 6
    })
    .await;
    let at = created_at(&w, "pool");
    let gaps: Vec<Duration> = at.windows(2).map(|p| p[1] - p[0]).collect();
    // Each replica runs 200ms; then at once, 1s, 2s, 4s, 8s.
    for (i, gap) in gaps.iter().enumerate().skip(1) {
        let backoff = secs(1) * (1 << (i - 1));
        assert!(
            *gap >= backoff + ms(200) && *gap < backoff + ms(500),
            "gap {i} is {gap:?}, expected the back-off {backoff:?} plus the run: {gaps:?}"
        );
    }
    // Reported while the line waits (not while its replica of the moment serves).
    w.until("CrashLoopBackOff reported", secs(20), |w| {
        w.condition("pool", ConditionType::ReplicaFailure)
            .is_some_and(|c| c.status && c.reason == "CrashLoopBackOff")
    })
    .await;
    assert!(!w.events_with("pool", "BackOff").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_template_that_always_crashes_ends_with_every_line_backing_off() {
    let w = crashing_world(&[svc("pool").replicas(3).image("crashes:1")]);
    w.rt.add_image("crashes:1", Behaviour::crashes_after(ms(500)));
    let w = w.start();
    w.settle(secs(60)).await;
    let status = w.status("pool").expect("status");
    assert_eq!(status.back_off.len(), 3, "{:?}", status.back_off);
    assert!(
        status.back_off.iter().all(|b| b.restarts >= 4),
        "{:?}",
        status.back_off
    );
    assert!(status
        .back_off
        .iter()
        .all(|b| b.cause == "own" && b.exit_code == Some(1)));
    // No hot loop: 1 + at once + 1s + 2s + 4s + 8s + 16s + 30s... per line in a minute.
    let creates = w.rt.calls().creates;
    assert!(creates <= 3 * 8, "{creates} creates in a minute");
    // Growing: the last gap of a line is the longest.
    w.settle(secs(120)).await;
    let status = w.status("pool").expect("status");
    assert!(
        status.back_off.iter().all(|b| b.restarts >= 7),
        "{:?}",
        status.back_off
    );
    let per_minute = w.rt.calls().creates - creates;
    assert!(
        per_minute <= 3 * 5,
        "{per_minute} creates in the next two minutes"
    );
}

#[tokio::test(start_paused = true)]
async fn kills_stops_and_removals_from_outside_are_never_a_crash_loop() {
    let w = crashing_world(&[svc("web").replicas(1).lb()]).start();
    w.converge("web", 1, secs(5)).await;
    for round in 0..9 {
        let victim = w.running("web")[0].clone();
        match round % 3 {
            0 => w.rt.kill(&victim.id),
            1 => w.rt.stop_from_outside(&victim.id),
            _ => w.rt.remove_from_outside(&victim.id),
        }
        let took = w
            .until(&format!("round {round}: replaced"), secs(2), |w| {
                w.rt.container(&victim.id).is_none() && w.converged("web", 1)
            })
            .await;
        assert!(took < ms(300), "round {round}: replaced after {took:?}");
    }
    assert!(
        w.events_with("web", "BackOff").is_empty(),
        "{:?}",
        w.events("web")
    );
    let restarts = w
        .metrics
        .container_restarts_total
        .with_label_values(&["web"])
        .get();
    assert_eq!(restarts, 0);
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn an_oom_kill_is_a_crash_of_its_line() {
    let w = crashing_world(&[svc("web").replicas(1).lb()]).start();
    w.converge("web", 1, secs(5)).await;
    let first = w.running("web")[0].clone();
    w.rt.oom_kill(&first.id);
    let second = next_replica(&w, "web", &first.id, secs(1)).await;
    w.converge("web", 1, secs(1)).await;

    w.rt.oom_kill(&second.id);
    w.until("backing off", secs(1), |w| {
        w.status("web").is_some_and(|s| s.back_off.len() == 1)
    })
    .await;
    let status = w.status("web").expect("status");
    assert_eq!(status.back_off[0].cause, "oom");
    assert_eq!(status.back_off[0].exit_code, Some(137));
    assert!(w.running("web").is_empty(), "replaced without back-off");
    let back = w.converge("web", 1, secs(5)).await;
    assert!(back >= secs(1) - ms(50), "back after {back:?}");
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_ran_long_enough_starts_its_line_afresh() {
    let w = crashing_world(&[svc("pool").replicas(1)])
        .with_settings(|s| s.crash_backoff.reset_after = secs(60))
        .start();
    w.converge("pool", 1, secs(5)).await;
    let mut current = w.running("pool")[0].clone();
    for round in 0..4 {
        w.settle(secs(61)).await;
        w.rt.crash(&current.id, 1);
        let took = w
            .until(&format!("round {round}: replaced"), secs(5), |w| {
                w.rt.container(&current.id).is_none() && w.converged("pool", 1)
            })
            .await;
        assert!(took < ms(300), "round {round}: backed off {took:?}");
        current = w.running("pool")[0].clone();
    }
}

#[tokio::test(start_paused = true)]
async fn a_crash_read_before_its_die_event_waits_for_it_and_counts_as_a_crash() {
    let w = crashing_world(&[svc("pool").replicas(1)]).start();
    w.converge("pool", 1, secs(5)).await;
    let c = w.running("pool")[0].clone();
    // The `disconnect` prompts a read that finds it exited; the `die` comes 5ms later.
    w.rt.crash_with_late_die(&c.id, 1, ms(5));
    w.converge("pool", 1, secs(5)).await;
    let exited = w.events_with("pool", "ReplicaExited");
    assert_eq!(exited.len(), 1, "{:?}", w.events("pool"));
    assert!(
        exited[0].message.contains("exited (code 1)"),
        "{}",
        exited[0].message
    );
    assert!(w.events_with("pool", "ReplicaStopped").is_empty());
}

#[tokio::test(start_paused = true)]
async fn one_services_crash_loop_never_disturbs_another_service() {
    let w = crashing_world(&[
        svc("a").replicas(2).lb().image("crashes:1"),
        svc("b").replicas(2).lb(),
    ]);
    w.rt.add_image("crashes:1", Behaviour::crashes_after(ms(300)));
    let w = w.start();
    w.converge("b", 2, secs(5)).await;
    let b = w.running_ids("b");
    w.settle(secs(60)).await;
    w.converge("b", 2, secs(1)).await;
    assert_eq!(w.running_ids("b"), b);
    assert!(w.events_with("b", "BackOff").is_empty());
    w.check_invariants();
}

/// Crashes `web`'s replicas until one line backs off; returns the world.
async fn one_line_backing_off(replicas: u32, base: Duration) -> World {
    let w = crashing_world(&[svc("web").replicas(replicas).lb()])
        .with_settings(|s| s.crash_backoff.base = base)
        .start();
    w.converge("web", replicas as usize, secs(5)).await;
    let first = w.running("web")[0].clone();
    let before = w.running_ids("web");
    w.rt.crash(&first.id, 1);
    let second = next_replica_excluding(&w, &before).await;
    w.converge("web", replicas as usize, secs(2)).await;
    w.rt.crash(&second.id, 1);
    w.until("one line backing off", secs(2), |w| {
        w.status("web").is_some_and(|s| s.back_off.len() == 1)
    })
    .await;
    w
}

#[tokio::test(start_paused = true)]
async fn scaling_down_drops_a_line_that_was_backing_off() {
    let w = one_line_backing_off(3, secs(20)).await;
    let creates = w.rt.calls().creates;
    w.edit(&[svc("web").replicas(2).lb()]);
    w.settle(secs(40)).await;
    assert_eq!(
        w.rt.calls().creates,
        creates,
        "the dropped line was replaced"
    );
    w.converge("web", 2, secs(1)).await;
    assert!(w.status("web").expect("status").back_off.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_line_backing_off_never_holds_back_a_rollout() {
    let w = one_line_backing_off(2, secs(60)).await;
    let edited = Instant::now();
    w.edit(&[svc("web").replicas(2).lb().version(2)]);
    w.converge("web", 2, secs(30)).await;
    assert!(
        edited.elapsed() < secs(5),
        "rolled after {:?}",
        edited.elapsed()
    );
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_crashes_while_draining_is_not_replaced() {
    let w = crashing_world(&[svc("web").replicas(1).lb().drain_timeout("30s")]).start();
    w.converge("web", 1, secs(5)).await;
    w.edit(&[svc("web").replicas(2).lb().drain_timeout("30s")]);
    w.converge("web", 2, secs(5)).await;
    let newest = w.running("web")[1].clone();
    w.lb.set_sessions(newest.addr().expect("addr"), 3);
    w.edit(&[svc("web").replicas(1).lb().drain_timeout("30s")]);
    w.settle(secs(2)).await;
    w.rt.crash(&newest.id, 1);
    w.converge("web", 1, secs(5)).await;
    let creates = w.rt.calls().creates;
    w.settle(secs(30)).await;
    assert_eq!(w.rt.calls().creates, creates);
    w.check_invariants();
}
