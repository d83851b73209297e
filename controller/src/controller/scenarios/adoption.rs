//! A second controller on the same engine and HAProxy adopts what it finds.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_restarted_controller_adopts_the_replicas_and_servers_and_changes_nothing() {
    let mut w = World::new(&[svc("web").replicas(3).lb(), svc("pool").replicas(2)]).start();
    w.converge("web", 3, secs(5)).await;
    w.converge("pool", 2, secs(5)).await;
    w.stop_controller().await;
    // Stopping the controller leaves the replicas running.
    assert_eq!(w.running("web").len(), 3);
    let web = w.running_ids("web");
    let pool = w.running_ids("pool");
    let serving = w.serving("web");

    let restarted = Instant::now();
    w.start_controller();
    w.converge("web", 3, secs(5)).await;
    w.converge("pool", 2, secs(5)).await;
    w.settle(secs(30)).await;
    assert_eq!(w.running_ids("web"), web);
    assert_eq!(w.running_ids("pool"), pool);
    assert_eq!(w.serving("web"), serving);
    let changes = w.journal().count_since(restarted, |c| {
        matches!(c, Call::Create { .. } | Call::Stop { .. })
    });
    assert_eq!(
        changes, 0,
        "the restarted controller created or stopped replicas"
    );
    let commands = w.lb_commands_since(restarted);
    assert!(commands.is_empty(), "it changed servers: {commands:?}");
    for service in ["web", "pool"] {
        assert!(
            w.events_with(service, "ScalingReplicaSet").is_empty(),
            "adopting the same count is no scaling: {:?}",
            w.events(service)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_controller_stopped_mid_rollout_finishes_it_after_a_restart() {
    let spec = svc("web").replicas(4).lb();
    let mut w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 4, secs(5)).await;
    let old = w.running_ids("web");
    w.rt.set_create_latency(ms(400));
    w.edit(&[spec.clone().version(2)]);
    w.until("the rollout under way", secs(5), |w| {
        w.running("web").iter().any(|c| !old.contains(&c.id))
    })
    .await;
    w.stop_controller().await;

    w.start_controller();
    w.until("the rollout finished", secs(30), |w| {
        w.converged("web", 4) && w.running_ids("web").is_disjoint(&old)
    })
    .await;
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_describes_a_scale_change_and_changes_nothing() {
    let mut w = World::new(&[svc("web").replicas(2).lb()]).start();
    w.converge("web", 2, secs(5)).await;
    w.stop_controller().await;
    std::fs::write(&w.spec_path, svc("web").replicas(4).yaml()).expect("write");
    let since = Instant::now();

    let services = manifest::load(&w.settings.paths).expect("the spec loads");
    let controller = Controller::new(
        w.settings.clone(),
        services,
        w.rt.clone(),
        w.lb.clone(),
        StatusHandle::default(),
        Arc::new(Metrics::new()),
    );
    let plan = controller.dry_run().await.expect("a plan");
    assert!(
        plan.contains("web: desired 4, current 2, ready 2"),
        "{plan}"
    );
    assert!(plan.contains("create 2 replica(s)"), "{plan}");
    let changes = w.journal().count_since(since, |c| {
        matches!(
            c,
            Call::Create { .. } | Call::Stop { .. } | Call::EnsureNetwork(_)
        )
    });
    assert_eq!(changes, 0);
    assert!(w.lb_commands_since(since).is_empty());
    w.controller = None;
}

#[tokio::test(start_paused = true)]
async fn a_create_cut_short_by_a_shutdown_is_cleaned_up_by_the_next_controller() {
    let w = World::new(&[svc("pool").replicas(1)]);
    w.rt.set_create_latency(secs(20));
    let mut w = w.start();
    w.settle(secs(1)).await;
    // The controller waits 5s for it, then gives up: a container created, never started.
    w.stop_controller().await;
    let left = w.rt.of_service("pool");
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].state,
        crate::model::replica::ContainerState::Created
    );

    w.rt.set_create_latency(ms(20));
    w.start_controller();
    w.converge("pool", 1, secs(5)).await;
    assert!(w.rt.container(&left[0].id).is_none());
    assert_eq!(w.events_with("pool", "NeverStarted").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_does_not_wait_for_a_hanging_stop_longer_than_five_seconds() {
    let mut w = World::new(&[svc("web").replicas(2).lb()]).start();
    w.converge("web", 2, secs(5)).await;
    w.rt.hold_stops();
    w.edit(&[svc("web").replicas(1).lb()]);
    w.settle(secs(1)).await;
    let stopping = Instant::now();
    w.stop_controller().await;
    assert!(stopping.elapsed() <= secs(5), "{:?}", stopping.elapsed());
    w.rt.release_stops();
    w.start_controller();
    w.converge("web", 1, secs(15)).await;
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn replicas_of_a_service_no_spec_names_are_left_running() {
    let mut w = World::new(&[svc("a").replicas(2), svc("b").replicas(1)]).start();
    w.converge("a", 2, secs(5)).await;
    let a = w.running_ids("a");
    w.stop_controller().await;
    // Started on a spec without `a`: its replicas may be another dockscale's.
    w.write(&svc("b").replicas(1).yaml());
    w.start_controller();
    w.converge("b", 1, secs(5)).await;
    w.settle(secs(30)).await;
    assert_eq!(w.running_ids("a"), a);
    assert!(w.status("a").is_none());
}
