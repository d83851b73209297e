//! A replica's path: created into rotation, drained and stopped out of it, replaced
//! when something happens to it from outside.

use std::collections::BTreeSet;

use super::*;
use crate::model::backend::Admin;

/// The slot events of one server, in order, from the journal.
fn commands_on(w: &World, backend: &str, slot: &str) -> Vec<&'static str> {
    w.lb_commands_since(Instant::now() - secs(3600))
        .into_iter()
        .filter(|c| c.slot() == Some((backend, slot)))
        .map(|c| match c {
            LbCall::Assign { .. } => "assign",
            LbCall::Enable { .. } => "enable",
            LbCall::Reconfigure { .. } => "reconfigure",
            LbCall::Drain { .. } => "drain",
            LbCall::Suspend { .. } => "suspend",
            LbCall::Release { .. } => "release",
            _ => "other",
        })
        .collect()
}

/// The slot serving `addr`.
fn slot_of(w: &World, backend: &str, addr: SocketAddrV4) -> String {
    w.lb.slots(backend)
        .into_iter()
        .find(|s| s.addr == Some(addr))
        .map(|s| s.name)
        .unwrap_or_else(|| panic!("no slot for {addr}\n{}", w.describe()))
}

fn scaling_messages(w: &World, service: &str) -> Vec<String> {
    w.events_with(service, "ScalingReplicaSet")
        .into_iter()
        .map(|e| e.message)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_new_service_comes_up_in_milliseconds_each_server_entering_in_maintenance() {
    let w = World::new(&[svc("web").replicas(3).lb()]).start();
    let took = w.converge("web", 3, secs(5)).await;
    assert!(took < ms(500), "took {took:?}");
    assert_eq!(w.rt.networks(), vec![NET.to_owned()]);
    let in_use: Vec<_> =
        w.lb.slots("web")
            .into_iter()
            .filter(|s| s.addr.is_some())
            .collect();
    assert_eq!(in_use.len(), 3);
    for slot in in_use {
        assert_eq!(
            (slot.admin, slot.weight, slot.check),
            (Admin::Ready, 100, true),
            "{slot:?}"
        );
        assert_eq!(commands_on(&w, "web", &slot.name), ["assign", "enable"]);
    }
    assert_eq!(w.events_with("web", "SuccessfulCreate").len(), 3);
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn scaling_up_keeps_every_replica_and_scaling_down_drains_the_newest_first() {
    let w = World::new(&[svc("web").replicas(3).lb()]).start();
    w.converge("web", 3, secs(5)).await;
    let three = w.running("web");
    let reloads = w.lb.reloads();

    w.edit(&[svc("web").replicas(5).lb()]);
    w.converge("web", 5, secs(5)).await;
    let five = w.running("web");
    assert!(
        ids(&three).is_subset(&ids(&five)),
        "scaling up replaced a replica"
    );

    // The two newest go; each server drains, is released, and only then stopped.
    let newest: Vec<FakeContainer> = five[3..].to_vec();
    let slots: Vec<String> = newest
        .iter()
        .map(|c| slot_of(&w, "web", c.addr().expect("an address")))
        .collect();
    w.edit(&[svc("web").replicas(3).lb()]);
    w.converge("web", 3, secs(5)).await;
    assert_eq!(
        ids(&w.running("web")),
        ids(&three),
        "not the newest were removed"
    );
    for slot in &slots {
        let seen = commands_on(&w, "web", slot);
        assert_eq!(
            seen.iter().rev().take(2).rev().copied().collect::<Vec<_>>(),
            ["drain", "release"],
            "{slot}: {seen:?}"
        );
    }
    assert_eq!(
        scaling_messages(&w, "web"),
        [
            "Scaled up from 0 to 3",
            "Scaled up from 3 to 5",
            "Scaled down from 5 to 3"
        ]
    );
    assert_eq!(w.lb.reloads(), reloads, "a replica change reloaded HAProxy");
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_plain_worker_pool_scales_to_the_count_in_the_file_and_keeps_the_oldest() {
    let w = World::new(&[svc("pool").replicas(3)]).start();
    w.converge("pool", 3, secs(5)).await;
    let three = ids(&w.running("pool"));
    for c in w.running("pool") {
        assert!(
            c.name.starts_with("pool-") && c.name.len() == "pool-".len() + 5,
            "{}",
            c.name
        );
        assert_eq!(c.service(), Some("pool"));
        assert_eq!(
            c.labels.get("dockscale.managed-by").map(String::as_str),
            Some("dockscale")
        );
    }
    w.edit(&[svc("pool").replicas(5)]);
    w.converge("pool", 5, secs(5)).await;
    w.edit(&[svc("pool").replicas(1)]);
    w.converge("pool", 1, secs(5)).await;
    let survivor = ids(&w.running("pool"));
    assert!(
        survivor.is_subset(&three),
        "the survivor is not one of the oldest"
    );
    assert_eq!(
        scaling_messages(&w, "pool"),
        [
            "Scaled up from 0 to 3",
            "Scaled up from 3 to 5",
            "Scaled down from 5 to 1"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_killed_replica_leaves_rotation_on_its_die_event_and_is_replaced_at_once() {
    // No resync for the length of the test: only the event can explain it.
    let w = World::new(&[svc("web").replicas(2).lb()])
        .with_settings(|s| s.sync_period = secs(300))
        .start();
    w.converge("web", 2, secs(5)).await;
    let before = w.running("web");
    let victim = before[0].clone();
    let addr = victim.addr().expect("an address");

    w.rt.kill(&victim.id);
    let out = w
        .until("out of rotation", secs(1), |w| {
            !w.lb.in_rotation("web").contains(&addr)
        })
        .await;
    assert!(out <= ms(20), "left rotation after {out:?}");
    let replaced = w.converge("web", 2, secs(1)).await;
    assert!(replaced < ms(200), "replaced after {replaced:?}");
    assert!(
        w.running_ids("web").contains(&before[1].id),
        "the healthy replica was touched"
    );
    let stopped = w.events_with("web", "ReplicaStopped");
    assert_eq!(stopped.len(), 1, "{:?}", w.events("web"));
    assert!(
        stopped[0].message.contains("from outside"),
        "{}",
        stopped[0].message
    );
    assert!(w.events_with("web", "BackOff").is_empty());
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_drain_waits_for_open_sessions_before_the_replica_is_stopped() {
    // One, then a second: the newest is well defined (a batch shares its timestamp).
    let w = World::new(&[svc("web").replicas(1).lb().drain_timeout("30s")]).start();
    w.converge("web", 1, secs(5)).await;
    w.edit(&[svc("web").replicas(2).lb().drain_timeout("30s")]);
    w.converge("web", 2, secs(5)).await;
    let newest = w.running("web")[1].clone();
    let addr = newest.addr().expect("an address");
    w.lb.set_sessions(addr, 3);

    w.edit(&[svc("web").replicas(1).lb().drain_timeout("30s")]);
    w.until("draining", secs(1), |w| {
        w.lb.slots("web")
            .iter()
            .any(|s| s.addr == Some(addr) && s.admin == Admin::Drain)
    })
    .await;
    w.settle(secs(10)).await;
    let still = w.rt.container(&newest.id).expect("still there");
    assert!(
        still.is_running() && !still.stopping,
        "stopped with sessions open"
    );

    let closed = Instant::now();
    w.lb.set_sessions(addr, 0);
    w.converge("web", 1, secs(2)).await;
    assert!(
        closed.elapsed() < ms(300),
        "stopped {:?} after the sessions closed",
        closed.elapsed()
    );
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_drain_is_cut_after_the_drain_timeout() {
    // One, then a second: the newest is well defined (a batch shares its timestamp).
    let w = World::new(&[svc("web").replicas(1).lb().drain_timeout("5s")]).start();
    w.converge("web", 1, secs(5)).await;
    w.edit(&[svc("web").replicas(2).lb().drain_timeout("5s")]);
    w.converge("web", 2, secs(5)).await;
    let newest = w.running("web")[1].clone();
    w.lb.set_sessions(newest.addr().expect("an address"), 7);

    let edited = Instant::now();
    w.edit(&[svc("web").replicas(1).lb().drain_timeout("5s")]);
    w.until("stopped", secs(10), |w| {
        w.rt.container(&newest.id).is_none()
    })
    .await;
    let took = edited.elapsed();
    assert!(
        took >= secs(5) && took < secs(5) + ms(300),
        "cut after {took:?}"
    );
    w.converge("web", 1, secs(1)).await;
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_paused_replica_leaves_rotation_and_comes_back_when_unpaused() {
    let w = World::new(&[svc("web").replicas(2).lb()]).start();
    w.converge("web", 2, secs(5)).await;
    let paused = w.running("web")[0].clone();
    let addr = paused.addr().expect("an address");

    w.rt.pause(&paused.id);
    w.until("out of rotation", secs(1), |w| {
        !w.lb.in_rotation("web").contains(&addr)
    })
    .await;
    w.settle(secs(15)).await;
    assert!(
        w.rt.container(&paused.id).is_some(),
        "a paused replica was removed"
    );
    assert_eq!(
        w.rt.of_service("web").len(),
        2,
        "a paused replica was replaced"
    );

    w.rt.unpause(&paused.id);
    let back = w
        .until("back in rotation", secs(2), |w| {
            w.serving("web").contains(&addr)
        })
        .await;
    assert!(back < ms(200), "back after {back:?}");
    w.converge("web", 2, secs(1)).await;
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_replica_disconnected_from_its_network_is_replaced() {
    let w = World::new(&[svc("web").replicas(2).lb()])
        .with_settings(|s| s.sync_period = secs(300))
        .start();
    w.converge("web", 2, secs(5)).await;
    let cut = w.running("web")[0].clone();
    let addr = cut.addr().expect("an address");

    w.rt.disconnect(&cut.id, NET);
    w.until("out of rotation", secs(1), |w| {
        !w.lb.in_rotation("web").contains(&addr)
    })
    .await;
    w.until("replaced", secs(5), |w| {
        w.rt.container(&cut.id).is_none() && w.converged("web", 2)
    })
    .await;
    assert_eq!(
        w.events_with("web", "NetworkLost").len(),
        1,
        "{}",
        w.describe()
    );
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn creates_in_flight_are_bounded_by_max_parallel() {
    let w = World::new(&[svc("pool").replicas(10)]).with_settings(|s| s.max_parallel = 3);
    w.rt.set_create_latency(ms(500));
    let w = w.start();
    w.converge("pool", 10, secs(10)).await;
    assert_eq!(w.rt.calls().max_creates_in_flight, 3, "{:?}", w.rt.calls());
    assert_eq!(w.rt.calls().creates, 10);
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_creates_is_read_back_with_inspects_not_a_list_each() {
    let w = World::new(&[svc("pool").replicas(1)]).start();
    w.converge("pool", 1, secs(5)).await;
    let before = w.rt.calls();
    w.edit(&[svc("pool").replicas(12)]);
    w.converge("pool", 12, secs(5)).await;
    let after = w.rt.calls();
    assert_eq!(after.creates - before.creates, 11);
    assert!(
        after.lists - before.lists <= 1,
        "{} lists for a burst of 11 creates",
        after.lists - before.lists
    );
    assert!(after.inspects > before.inspects);
}

#[tokio::test(start_paused = true)]
async fn a_server_an_operator_took_out_of_rotation_is_left_alone_and_reported_once() {
    let w = World::new(&[svc("web").replicas(2).lb()])
        .with_settings(|s| s.sync_period = secs(1))
        .start();
    w.converge("web", 2, secs(5)).await;
    let held = w.running("web")[0].clone();
    let addr = held.addr().expect("an address");
    let slot = slot_of(&w, "web", addr);

    let since = Instant::now();
    w.lb.operator_sets("web", &slot, Admin::Maint);
    w.settle(secs(10)).await;
    let touched: Vec<LbCall> = w
        .lb_commands_since(since)
        .into_iter()
        .filter(|c| c.slot() == Some(("web", slot.as_str())))
        .collect();
    assert!(
        touched.is_empty(),
        "dockscale fought the operator: {touched:?}"
    );
    assert_eq!(w.rt.of_service("web").len(), 2, "{}", w.describe());
    assert!(w.rt.container(&held.id).is_some_and(|c| c.is_running()));
    let reported = w.events_with("web", "ServerHeld");
    assert_eq!(reported.len(), 1, "{:?}", w.events("web"));
    assert_eq!(reported[0].count, 1, "reported more than once");

    // Back in rotation by the operator's hand: served again, nothing else done.
    w.lb.operator_sets("web", &slot, Admin::Ready);
    w.converge("web", 2, secs(2)).await;
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn an_unmanaged_container_named_like_a_replica_is_never_touched() {
    let w = World::new(&[svc("web").replicas(2).lb()]).with_settings(|s| s.sync_period = secs(1));
    let impostor = w.rt.run_unmanaged("web-zzzzz", NET);
    let w = w.start();
    w.converge("web", 2, secs(5)).await;
    w.edit(&[svc("web").replicas(0).lb()]);
    w.converge("web", 0, secs(5)).await;
    w.settle(secs(5)).await;
    let c = w.rt.container(&impostor).expect("the impostor is there");
    assert!(c.is_running());
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn after_an_haproxy_restart_every_server_is_restored_at_once() {
    let w = World::new(&[svc("web").replicas(3).lb()])
        .with_settings(|s| s.sync_period = secs(300))
        .start();
    w.converge("web", 3, secs(5)).await;
    let before = w.running_ids("web");

    w.lb.restart();
    assert!(w.serving("web").is_empty());
    let took = w
        .until("every server back", secs(2), |w| {
            w.serving("web").len() == 3
        })
        .await;
    assert!(took < ms(20), "restored after {took:?}");
    w.converge("web", 3, secs(1)).await;
    assert_eq!(w.running_ids("web"), before, "containers were touched");
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_stop_that_hangs_holds_back_neither_a_scale_up_nor_a_replacement() {
    let w = World::new(&[svc("web").replicas(3).lb()]).start();
    w.converge("web", 3, secs(5)).await;
    w.rt.hold_stops();
    w.edit(&[svc("web").replicas(1).lb()]);
    w.until("two stops hanging", secs(2), |w| {
        w.rt.of_service("web").iter().filter(|c| c.stopping).count() == 2
    })
    .await;
    assert_eq!(w.serving("web").len(), 1);

    // Meanwhile: a scale-up and a killed replica go ahead.
    w.edit(&[svc("web").replicas(2).lb()]);
    w.until("scaled up past the hanging stops", secs(2), |w| {
        w.serving("web").len() == 2
    })
    .await;
    let survivor = w
        .running("web")
        .into_iter()
        .find(|c| !c.stopping)
        .expect("a survivor");
    w.rt.kill(&survivor.id);
    w.until("the killed one replaced", secs(2), |w| {
        w.serving("web").len() == 2 && !w.serving("web").contains(&survivor.addr().expect("addr"))
    })
    .await;

    w.rt.release_stops();
    w.converge("web", 2, secs(2)).await;
    let gone: BTreeSet<_> = w.rt.of_service("web").into_iter().map(|c| c.id).collect();
    assert_eq!(gone.len(), 2);
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_refused_haproxy_command_is_retried_and_reported_meanwhile() {
    let w = World::new(&[svc("web").replicas(1).lb()]);
    w.lb.refuse_next(1);
    let w = w.start();
    let took = w.converge("web", 1, secs(5)).await;
    assert!(took < secs(2), "took {took:?}");
    let failed = w.events_with("web", "CommandFailed");
    assert_eq!(failed.len(), 1, "{:?}", w.events("web"));
    let synced = w
        .condition("web", ConditionType::LoadBalancerSynced)
        .expect("LoadBalancerSynced");
    assert!(synced.status, "{synced:?}");
}

#[tokio::test(start_paused = true)]
async fn a_scale_down_while_creates_are_in_flight_trims_the_arrivals_and_keeps_the_oldest() {
    let w = World::new(&[svc("web").replicas(3).lb()]).start();
    w.converge("web", 3, secs(5)).await;
    let old = w.running_ids("web");
    w.rt.set_create_latency(secs(2));
    w.edit(&[svc("web").replicas(6).lb()]);
    w.settle(ms(500)).await;
    assert_eq!(w.rt.of_service("web").len(), 6, "three creates in flight");
    w.edit(&[svc("web").replicas(3).lb()]);
    w.settle(secs(3)).await;
    w.converge("web", 3, secs(10)).await;
    assert_eq!(w.running_ids("web"), old);
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_service_scaled_to_zero_leaves_no_server_and_scales_back_up() {
    let w = World::new(&[svc("web").replicas(3).lb()]).start();
    w.converge("web", 3, secs(5)).await;
    w.edit(&[svc("web").replicas(0).lb()]);
    w.converge("web", 0, secs(5)).await;
    assert!(w.lb.in_rotation("web").is_empty());
    assert!(w.lb.slots("web").iter().all(|s| s.addr.is_none()));
    w.edit(&[svc("web").replicas(2).lb()]);
    w.converge("web", 2, secs(5)).await;
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn the_metrics_count_what_the_controller_did() {
    let w = World::new(&[svc("web").replicas(3).lb()]).start();
    w.converge("web", 3, secs(5)).await;
    let victim = w.running("web")[0].id.clone();
    w.rt.kill(&victim);
    w.converge("web", 3, secs(2)).await;
    w.edit(&[svc("web").replicas(2).lb()]);
    w.converge("web", 2, secs(2)).await;
    let m = &w.metrics;
    assert_eq!(m.replicas_ready.with_label_values(&["web"]).get(), 2);
    assert_eq!(m.replicas_desired.with_label_values(&["web"]).get(), 2);
    assert_eq!(
        m.container_starts_total
            .with_label_values(&["web", "ok"])
            .get(),
        4
    );
    assert_eq!(
        m.container_stops_total
            .with_label_values(&["web", "scale_down"])
            .get(),
        1
    );
    assert_eq!(
        m.container_stops_total
            .with_label_values(&["web", "exited"])
            .get(),
        1
    );
    assert_eq!(
        m.replica_exits_total
            .with_label_values(&["web", "signalled"])
            .get(),
        1
    );
    assert!(m.reconcile_total.with_label_values(&["web", "ok"]).get() > 0);
    assert!(m
        .render()
        .expect("renders")
        .contains("dockscale_replicas_ready{service=\"web\"} 2"));
}
