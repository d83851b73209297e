//! Bugs the in-memory scenarios found in the controller, each with the scenario that
//! showed it, kept as the guard against their return.

use super::*;
use crate::runtime::fake::FakeError;

// Regression: a backend that could not be read (HAProxy restarting) requeued nothing,
// so a replica killed meanwhile was replaced in HAProxy only at the next resync.
#[tokio::test(start_paused = true)]
async fn a_backend_that_could_not_be_read_is_looked_at_again_within_seconds() {
    let w = World::new(&[svc("web").replicas(2).lb()])
        .with_settings(|s| s.sync_period = secs(300))
        .start();
    w.converge("web", 2, secs(5)).await;
    w.lb.set_reachable(false);
    w.rt.kill(&w.running("web")[0].id);
    w.settle(secs(5)).await;
    w.lb.set_reachable(true);
    let took = w.converge("web", 2, secs(15)).await;
    assert!(took < secs(3), "caught up {took:?} after HAProxy answered");
    w.check_invariants();
}

fn permission_denied() -> FakeError {
    FakeError::Api {
        status: 500,
        message: "cannot kill container: permission denied".into(),
    }
}

// Regression: a stop that kept failing was tried again at once, 2450 times in 5 s,
// its events flooding the history.
#[tokio::test(start_paused = true)]
async fn a_stop_that_keeps_failing_is_retried_with_back_off() {
    let w = World::new(&[svc("web").replicas(2)]).start();
    w.converge("web", 2, secs(5)).await;
    w.rt.fail_stops(10_000, permission_denied());
    let before = w.rt.calls().stops;
    w.edit(&[svc("web").replicas(1)]);
    w.settle(secs(10)).await;
    let stops = w.rt.calls().stops - before;
    // 0.5 s, 1 s, 2 s, 4 s between tries: about 5 in 10 s.
    assert!((2..=8).contains(&stops), "{stops} stops in 10 s");
    let failed = w.events_with("web", "FailedDelete");
    assert_eq!(failed.len(), 1, "one event, its repeats folded: {failed:?}");
}

// Regression: a create failing because the engine went away (while lists still
// answered) was tried again at once: 1665 creates in 5 s.
#[tokio::test(start_paused = true)]
async fn creates_that_fail_for_the_engine_wait_instead_of_looping() {
    let w = World::new(&[svc("web").replicas(2)]).start();
    w.converge("web", 2, secs(5)).await;
    w.rt.fail_creates(10_000, FakeError::Unavailable);
    let before = w.rt.calls().creates;
    w.edit(&[svc("web").replicas(3)]);
    w.settle(secs(5)).await;
    let creates = w.rt.calls().creates - before;
    assert!(creates <= 10, "{creates} creates in 5 s");
    w.rt.fail_creates(0, FakeError::Unavailable);
    w.converge("web", 3, secs(5)).await;
}

// Regression: a create into a network removed since it was ensured was reported as a
// missing image and tried again in a hot loop; the service never came back, since the
// network was never ensured again.
#[tokio::test(start_paused = true)]
async fn a_network_removed_behind_the_controllers_back_is_created_again() {
    let w = World::new(&[svc("web").replicas(1)]).start();
    w.converge("web", 1, secs(5)).await;
    w.edit(&[svc("web").replicas(0)]);
    w.converge("web", 0, secs(20)).await;
    assert!(w.rt.remove_network(NET), "the network existed");
    let before = w.rt.calls().creates;
    w.edit(&[svc("web").replicas(2)]);
    w.converge("web", 2, secs(10)).await;
    let creates = w.rt.calls().creates - before;
    assert!(creates <= 6, "{creates} creates to get 2");
    let failure = w.condition("web", ConditionType::ReplicaFailure);
    assert!(
        failure.as_ref().is_none_or(|c| c.reason != "ImageNotFound"),
        "{failure:?}"
    );
}

// Regression: with an external HAProxy, a backend the service left kept its servers
// in rotation; a scale-down after that stopped a replica still in rotation there.
#[tokio::test(start_paused = true)]
async fn a_backend_the_service_left_has_its_servers_taken_out_of_rotation() {
    let w = World::new(&[svc("web").replicas(2).lb()])
        .with_external_haproxy(&[("web", 8), ("web2", 8)])
        .start();
    w.converge("web", 2, secs(5)).await;
    let yaml = svc("web")
        .replicas(2)
        .lb()
        .yaml()
        .replace("backend: web", "backend: web2");
    w.write(&yaml);
    w.until("the old backend emptied", secs(5), |w| {
        w.lb.in_rotation("web").is_empty()
    })
    .await;
    w.converge("web", 2, secs(5)).await;
    w.write(&yaml.replace("replicas: 2", "replicas: 1"));
    w.converge("web", 1, secs(10)).await;
    w.check_invariants();
}

// Regression: a rollout counted only replicas not being stopped against maxSurge, so
// old replicas waiting out their grace period made 7 containers for desired 4 and
// maxSurge 1 (seen in the chaos soak).
#[tokio::test(start_paused = true)]
async fn a_rollout_counts_replicas_still_stopping_against_the_surge() {
    let spec = svc("web").replicas(4).lb().rollout(1, 0);
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 4, secs(5)).await;
    let old = w.running_ids("web");
    w.rt.hold_stops();
    w.edit(&[spec.version(2)]);
    let mut most = 0;
    for _ in 0..100 {
        most = most.max(w.rt.running("web").len());
        tokio::time::sleep(ms(50)).await;
    }
    assert!(
        most <= 5,
        "{most} containers running at once for desired 4, maxSurge 1"
    );
    w.rt.release_stops();
    w.until("every replica rolled", secs(30), |w| {
        w.converged("web", 4) && w.running_ids("web").is_disjoint(&old)
    })
    .await;
    w.check_invariants();
}
