//! The backend's slots: their pool, an external HAProxy's own backends, servers
//! whose checks fail, and HAProxy's state lost while dockscale was away.

use super::*;

#[tokio::test(start_paused = true)]
async fn outgrowing_the_slot_pool_reloads_once_and_scaling_back_never_does() {
    let w = World::new(&[svc("web").replicas(3).lb()]).start();
    w.converge("web", 3, secs(5)).await;
    assert_eq!(w.lb.slots("web").len(), 16);
    let reloads = w.lb.reloads();

    w.edit(&[svc("web").replicas(20).lb()]);
    w.converge("web", 20, secs(10)).await;
    assert_eq!(w.lb.slots("web").len(), 48);
    assert_eq!(w.lb.reloads(), reloads + 1);
    let grown = w.events_with("web", "SlotPoolGrown");
    assert_eq!(grown.len(), 1, "{:?}", w.events("web"));
    assert!(
        grown[0].message.contains("grown to 48"),
        "{}",
        grown[0].message
    );

    w.edit(&[svc("web").replicas(2).lb()]);
    w.converge("web", 2, secs(10)).await;
    assert_eq!(w.lb.slots("web").len(), 48, "the pool shrank");
    assert_eq!(w.lb.reloads(), reloads + 1, "scaling back reloaded");
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn an_external_haproxy_is_driven_and_a_missing_backend_is_reported_on_its_service_alone() {
    let w = World::new(&[svc("web").replicas(2).lb(), svc("api").replicas(1).lb()])
        .with_external_haproxy(&[("web", 8)])
        .start();
    w.converge("web", 2, secs(5)).await;
    w.until("the missing backend reported", secs(5), |w| {
        w.condition("api", ConditionType::LoadBalancerSynced)
            .is_some_and(|c| !c.status && c.reason == "BackendMissing")
    })
    .await;
    let missing = w
        .condition("api", ConditionType::LoadBalancerSynced)
        .expect("LoadBalancerSynced");
    assert!(
        missing.message.contains("haproxy.cfg"),
        "{}",
        missing.message
    );
    assert_eq!(
        w.lb.slots("web").len(),
        8,
        "an external backend was reshaped"
    );
    assert_eq!(w.lb.reloads(), 0);
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_replica_whose_checks_fail_is_not_counted_ready_and_is_left_in_place() {
    let w = World::new(&[svc("web").replicas(2).lb()]).start();
    w.converge("web", 2, secs(5)).await;
    let sick = w.running("web")[0].clone();
    let since = Instant::now();

    // HAProxy's checks mark it DOWN; nothing tells dockscale, which sees it at the
    // next resync.
    w.rt.set_answering(&sick.id, false);
    w.until("counted unready", w.settings.sync_period + secs(1), |w| {
        w.status("web").is_some_and(|s| s.replicas.ready == 1)
    })
    .await;
    let available = w
        .condition("web", ConditionType::Available)
        .expect("Available");
    assert!(!available.status, "{available:?}");
    w.settle(secs(20)).await;
    assert!(w.rt.container(&sick.id).is_some_and(|c| c.is_running()));
    assert!(
        w.lb_commands_since(since).is_empty(),
        "{:?}",
        w.lb_commands_since(since)
    );

    w.rt.set_answering(&sick.id, true);
    w.converge("web", 2, w.settings.sync_period + secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn an_haproxy_restarted_while_dockscale_was_down_is_refilled_by_the_next_dockscale() {
    let mut w = World::new(&[svc("web").replicas(3).lb()]).start();
    w.converge("web", 3, secs(5)).await;
    let replicas = w.running_ids("web");
    w.stop_controller().await;
    w.lb.restart();
    assert!(w.serving("web").is_empty());

    w.start_controller();
    let took = w
        .until("every server back", secs(2), |w| {
            w.serving("web").len() == 3
        })
        .await;
    assert!(took < ms(50), "took {took:?}");
    w.converge("web", 3, secs(1)).await;
    assert_eq!(w.running_ids("web"), replicas);
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn an_haproxy_restart_during_a_drain_ends_the_drain_and_the_removal_goes_on() {
    let spec = |n| svc("web").replicas(n).lb().drain_timeout("30s");
    let w = World::new(&[spec(1)]).start();
    w.converge("web", 1, secs(5)).await;
    w.edit(&[spec(2)]);
    w.converge("web", 2, secs(5)).await;
    let newest = w.running("web")[1].clone();
    w.lb.set_sessions(newest.addr().expect("addr"), 3);
    w.edit(&[spec(1)]);
    w.settle(secs(2)).await;
    assert!(
        w.rt.container(&newest.id).is_some(),
        "the drain did not wait"
    );
    w.lb.restart();
    let took = w.converge("web", 1, secs(5)).await;
    assert!(took < secs(1), "took {took:?}");
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn new_replicas_that_never_answer_stay_out_of_rotation() {
    let w = World::new(&[svc("web").replicas(1).lb()]).start();
    w.converge("web", 1, secs(5)).await;
    w.rt.add_image(
        WEBAPP_IMAGE,
        crate::runtime::fake::Behaviour::never_answers(),
    );
    w.edit(&[svc("web").replicas(3).lb()]);
    w.settle(secs(30)).await;
    assert_eq!(w.serving("web").len(), 1);
    assert_eq!(w.running("web").len(), 3);
    let status = w.status("web").expect("status");
    assert_eq!((status.replicas.current, status.replicas.ready), (3, 1));
    // Waiting in maintenance, weight 0: assigned, never enabled.
    let warming =
        w.lb.slots("web")
            .into_iter()
            .filter(|s| s.addr.is_some() && s.weight == 0)
            .count();
    assert_eq!(warming, 2);
}
