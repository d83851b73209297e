//! Edits of the spec file: invalid ones change nothing, removed documents remove their
//! services, new ones add theirs.

use super::*;

fn stops_since(w: &World, since: Instant) -> usize {
    w.journal()
        .count_since(since, |c| matches!(c, Call::Stop { .. }))
}

#[tokio::test(start_paused = true)]
async fn an_invalid_edit_keeps_the_last_good_spec_deletes_nothing_and_says_where() {
    let w = World::new(&[svc("pool").replicas(2)])
        .with_settings(|s| s.sync_period = secs(1))
        .start();
    w.converge("pool", 2, secs(5)).await;
    let before = w.running_ids("pool");
    let since = Instant::now();

    // An unknown field: rejected, the last good spec stays.
    w.write(
        &svc("pool")
            .replicas(4)
            .yaml()
            .replace("replicas: 4", "replicaz: 4"),
    );
    w.settle(secs(3)).await;
    assert_eq!(
        w.running_ids("pool"),
        before,
        "an invalid spec changed the replicas"
    );
    let invalid = w
        .condition("pool", ConditionType::SpecInvalid)
        .expect("SpecInvalid");
    assert!(invalid.status, "{invalid:?}");
    assert_eq!(invalid.reason, "ValidationFailed");
    assert!(
        invalid.message.contains("service.yaml:5:3"),
        "the error is located: {}",
        invalid.message
    );
    assert!(!w.status.read().spec_errors.is_empty());
    assert_eq!(
        w.events_with("pool", "SpecInvalid").len(),
        1,
        "{:?}",
        w.events("pool")
    );

    // A vanished spec file is an error too, never an order to delete everything.
    std::fs::remove_file(&w.spec_path).expect("remove the spec");
    w.notify();
    w.settle(secs(3)).await;
    assert_eq!(
        w.running_ids("pool"),
        before,
        "a missing spec file removed replicas"
    );
    assert_eq!(stops_since(&w, since), 0);

    w.edit(&[svc("pool").replicas(4)]);
    w.converge("pool", 4, secs(5)).await;
    assert!(before.is_subset(&w.running_ids("pool")));
    let valid = w
        .condition("pool", ConditionType::SpecInvalid)
        .expect("SpecInvalid");
    assert!(!valid.status, "{valid:?}");
    assert!(w.status.read().spec_errors.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_removed_document_removes_its_replicas_and_servers_and_forgets_the_service() {
    let a = svc("a").replicas(2).lb();
    let b = svc("b").replicas(2).lb();
    let w = World::new(&[a.clone(), b]).start();
    w.converge("a", 2, secs(5)).await;
    w.converge("b", 2, secs(5)).await;
    let kept = w.running_ids("a");

    w.edit(&[a]);
    w.until("b forgotten", secs(5), |w| {
        w.status("b").is_none() && w.rt.of_service("b").is_empty()
    })
    .await;
    assert!(
        !w.lb.backends().contains(&"b".to_owned()),
        "{:?}",
        w.lb.backends()
    );
    assert_eq!(w.running_ids("a"), kept, "the other service was touched");
    w.converge("a", 2, secs(1)).await;
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_file_with_no_document_left_removes_every_replica() {
    let w = World::new(&[svc("pool").replicas(2)]).start();
    w.converge("pool", 2, secs(5)).await;
    w.write("# nothing here any more\n");
    w.until("the service forgotten", secs(5), |w| {
        w.rt.of_service("pool").is_empty() && w.status("pool").is_none()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_new_document_adds_its_service_and_backend_without_touching_the_others() {
    let a = svc("a").replicas(2).lb();
    let w = World::new(std::slice::from_ref(&a)).start();
    w.converge("a", 2, secs(5)).await;
    let kept = w.running_ids("a");
    let since = Instant::now();

    w.edit(&[a, svc("b").replicas(3).lb()]);
    w.converge("b", 3, secs(5)).await;
    assert_eq!(w.running_ids("a"), kept);
    assert_eq!(stops_since(&w, since), 0);
    assert_eq!(w.lb.backends(), ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn a_write_in_place_is_read_once_it_settled() {
    let w = World::new(&[svc("pool").replicas(1)]).start();
    w.converge("pool", 1, secs(5)).await;
    std::fs::write(&w.spec_path, svc("pool").replicas(3).yaml()).expect("write");
    let written = Instant::now();
    if let Some(c) = &w.controller {
        for _ in 0..3 {
            let _ = c.changes.send(Change::Touched);
        }
    }
    let took = w.converge("pool", 3, secs(5)).await;
    assert!(
        written.elapsed() >= w.settings.debounce,
        "read before the debounce"
    );
    assert!(took < secs(1), "took {took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_removed_service_drains_its_sessions_before_its_replicas_go() {
    let a = svc("a").replicas(1).lb().drain_timeout("5s");
    let w = World::new(&[a, svc("b").replicas(1)]).start();
    w.converge("a", 1, secs(5)).await;
    let replica = w.running("a")[0].clone();
    w.lb.set_sessions(replica.addr().expect("addr"), 4);
    let removed = Instant::now();
    w.edit(&[svc("b").replicas(1)]);
    w.until("a forgotten", secs(10), |w| w.status("a").is_none())
        .await;
    assert!(
        removed.elapsed() >= secs(5),
        "cut after {:?}",
        removed.elapsed()
    );
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_weight_change_reconfigures_the_servers_in_place() {
    let w = World::new(&[svc("web").replicas(2).lb()]).start();
    w.converge("web", 2, secs(5)).await;
    let replicas = w.running_ids("web");
    let since = Instant::now();
    w.write(
        &svc("web")
            .replicas(2)
            .lb()
            .yaml()
            .replace("weight: 100", "weight: 50"),
    );
    w.until("every server at weight 50", secs(5), |w| {
        w.lb.slots("web").iter().filter(|s| s.weight == 50).count() == 2
    })
    .await;
    assert_eq!(w.running_ids("web"), replicas);
    let commands = w.lb_commands_since(since);
    assert!(
        commands
            .iter()
            .all(|c| matches!(c, LbCall::Reconfigure { .. })),
        "{commands:?}"
    );
    w.converge("web", 2, secs(2)).await;
}

#[tokio::test(start_paused = true)]
async fn renaming_the_backend_moves_the_servers_to_the_new_one() {
    let w = World::new(&[svc("web").replicas(2).lb()]).start();
    w.converge("web", 2, secs(5)).await;
    let replicas = w.running_ids("web");
    let yaml = svc("web")
        .replicas(2)
        .lb()
        .yaml()
        .replace("backend: web", "backend: web2");
    w.write(&yaml);
    w.converge("web", 2, secs(5)).await;
    assert_eq!(w.lb.backends(), ["web2"], "the old backend was kept");
    assert_eq!(w.running_ids("web"), replicas);
    w.write(&yaml.replace("replicas: 2", "replicas: 1"));
    w.converge("web", 1, secs(5)).await;
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_load_balancer_added_to_a_pool_and_removed_again_keeps_the_replicas() {
    let w = World::new(&[svc("web").replicas(2)]).start();
    w.converge("web", 2, secs(5)).await;
    let replicas = w.running_ids("web");
    w.edit(&[svc("web").replicas(2).lb()]);
    w.converge("web", 2, secs(5)).await;
    assert_eq!(w.serving("web").len(), 2);
    w.edit(&[svc("web").replicas(2)]);
    w.converge("web", 2, secs(5)).await;
    assert!(w.lb.backends().is_empty());
    assert_eq!(w.running_ids("web"), replicas);
    w.edit(&[svc("web").replicas(1)]);
    w.converge("web", 1, secs(5)).await;
    w.check_invariants();
}
