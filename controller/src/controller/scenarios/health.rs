//! Container health checks: a replica is enabled only once Docker reports it healthy,
//! leaves rotation on the `health_status` event that says it is not, and is replaced
//! once it has stayed unhealthy for `unhealthyReplaceAfter`.

use super::*;
use crate::model::replica::Health;

#[tokio::test(start_paused = true)]
async fn a_replica_enters_rotation_only_once_healthy() {
    let spec = svc("web").replicas(2).lb().healthcheck("30s");
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.until("2 replicas running", secs(5), |w| {
        w.running("web").len() == 2
    })
    .await;
    w.settle(secs(3)).await;
    assert!(
        w.serving("web").is_empty(),
        "served while starting: {}",
        w.describe()
    );

    for c in w.running("web") {
        w.rt.set_health(&c.id, Health::Healthy);
    }
    let took = w.converge("web", 2, secs(1)).await;
    assert!(
        took < Duration::from_millis(200),
        "enabled {took:?} after healthy"
    );
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_replica_leaves_rotation_at_once_and_is_replaced_after_the_limit() {
    let spec = svc("web").replicas(3).lb().healthcheck("5s");
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.until("3 replicas running", secs(5), |w| {
        w.running("web").len() == 3
    })
    .await;
    for c in w.running("web") {
        w.rt.set_health(&c.id, Health::Healthy);
    }
    w.converge("web", 3, secs(5)).await;
    let sick = w.running("web")[0].clone();
    let sick_addr = sick.addr().expect("address");

    w.rt.set_health(&sick.id, Health::Unhealthy);
    let out = w
        .until("the unhealthy replica out of rotation", secs(1), |w| {
            !w.serving("web").contains(&sick_addr)
        })
        .await;
    assert!(
        out < Duration::from_millis(100),
        "out of rotation after {out:?}"
    );
    let status = w.status("web").expect("status");
    let shown: Vec<(String, Option<String>)> = status
        .containers
        .iter()
        .map(|c| (c.name.clone(), c.health.clone()))
        .collect();
    assert!(
        shown.contains(&(sick.name.clone(), Some("unhealthy".to_owned()))),
        "{shown:?}"
    );

    // Kept (it may recover) until the limit, then replaced by a new replica.
    w.settle(secs(4)).await;
    assert!(
        w.rt.container(&sick.id).is_some(),
        "replaced before the limit"
    );
    w.until("the unhealthy replica removed", secs(3), |w| {
        w.rt.container(&sick.id).is_none()
    })
    .await;
    w.until("a replacement running", secs(5), |w| {
        w.running("web").len() == 3
    })
    .await;
    for c in w.running("web") {
        if c.health == Some(Health::Starting) {
            w.rt.set_health(&c.id, Health::Healthy);
        }
    }
    w.converge("web", 3, secs(5)).await;
    assert_eq!(
        w.events_with("web", "Unhealthy").len(),
        1,
        "{:?}",
        w.events("web")
    );
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_recovers_within_the_limit_comes_back_and_is_kept() {
    let spec = svc("web").replicas(2).lb().healthcheck("10s");
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.until("2 replicas running", secs(5), |w| {
        w.running("web").len() == 2
    })
    .await;
    for c in w.running("web") {
        w.rt.set_health(&c.id, Health::Healthy);
    }
    w.converge("web", 2, secs(5)).await;
    let flaky = w.running("web")[0].clone();
    w.rt.set_health(&flaky.id, Health::Unhealthy);
    w.until("out of rotation", secs(1), |w| {
        !w.serving("web").contains(&flaky.addr().expect("address"))
    })
    .await;
    w.settle(secs(3)).await;
    w.rt.set_health(&flaky.id, Health::Healthy);
    w.converge("web", 2, secs(1)).await;
    w.settle(secs(15)).await;
    assert!(
        w.rt.container(&flaky.id).is_some(),
        "a recovered replica was replaced"
    );
    assert!(w.events_with("web", "Unhealthy").is_empty());
    w.check_invariants();
}
