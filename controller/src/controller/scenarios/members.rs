//! Hand-started members (`docker run --label dockscale.join=<service>` on the service's
//! network): in the backend while they run, out of rotation on their `die`, never
//! stopped, removed or counted, whatever the service's scale; unlabelled containers
//! and members on another network get no slot.

use super::*;

/// `n` replicas converged in the status and the containers, and the backend serving
/// exactly them and the `members`.
fn serving_with_members(w: &World, service: &str, n: usize, members: &[SocketAddrV4]) -> bool {
    let Some(status) = w.status(service) else {
        return false;
    };
    let running = w.running(service);
    let mut expected: BTreeSet<SocketAddrV4> =
        running.iter().filter_map(FakeContainer::addr).collect();
    expected.extend(members.iter().copied());
    running.len() == n
        && status.replicas.desired as usize == n
        && status.replicas.ready as usize == n
        && status.replicas.terminating == 0
        && w.serving(service) == expected
}

fn member_addr(w: &World, id: &ContainerId) -> SocketAddrV4 {
    w.rt.container(id)
        .and_then(|c| c.addr())
        .expect("the member runs on its network")
}

#[tokio::test(start_paused = true)]
async fn a_hand_started_member_serves_and_survives_a_scale_to_zero_and_back() {
    let spec = svc("web").replicas(2).lb();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 2, secs(10)).await;

    let s3 = w.rt.run_member("s3", "web", NET);
    let addr = member_addr(&w, &s3);
    let took = w
        .until("the member in rotation", secs(5), |w| {
            serving_with_members(w, "web", 2, &[addr])
        })
        .await;
    assert!(
        took < Duration::from_millis(200),
        "in rotation after {took:?}"
    );
    // The status is written from the observation of a pass: the one after.
    w.until("the member shown in rotation", secs(5), |w| {
        w.status("web")
            .is_some_and(|s| s.members.first().is_some_and(|m| m.in_rotation))
    })
    .await;
    let status = w.status("web").expect("status");
    assert_eq!(status.replicas.current, 2, "a member is not a replica");
    assert_eq!(status.members.len(), 1);
    assert_eq!(status.members[0].name, "s3");
    assert!(status.members[0].in_rotation);
    assert!(status.members[0].slot.is_some());
    assert!(status.containers.iter().all(|c| c.name != "s3"));

    w.edit(&[spec.clone().replicas(0)]);
    w.until("scaled to 0, the member alone serving", secs(60), |w| {
        serving_with_members(w, "web", 0, &[addr])
    })
    .await;
    w.settle(secs(40)).await;
    assert!(
        serving_with_members(&w, "web", 0, &[addr]),
        "{}",
        w.describe()
    );

    w.edit(&[spec.clone().replicas(2)]);
    w.until("back to 2 with the member", secs(10), |w| {
        serving_with_members(w, "web", 2, &[addr])
    })
    .await;
    assert!(w.rt.container(&s3).is_some_and(|c| c.is_running()));
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_killed_member_leaves_rotation_at_once_and_is_not_replaced() {
    let spec = svc("web").replicas(1).lb();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 1, secs(10)).await;
    let s3 = w.rt.run_member("s3", "web", NET);
    let addr = member_addr(&w, &s3);
    w.until("the member in rotation", secs(5), |w| {
        serving_with_members(w, "web", 1, &[addr])
    })
    .await;

    w.rt.kill(&s3);
    let out = w
        .until("the killed member out of rotation", secs(5), |w| {
            !w.lb.in_rotation("web").contains(&addr)
        })
        .await;
    assert!(
        out < Duration::from_millis(50),
        "out of rotation after {out:?}"
    );
    w.settle(secs(5)).await;
    assert!(serving_with_members(&w, "web", 1, &[]), "{}", w.describe());
    let status = w.status("web").expect("status");
    assert_eq!(status.members.len(), 1, "still listed, stopped");
    assert_eq!(status.members[0].serving, "stopped");
    assert!(!status.members[0].in_rotation);
    assert!(
        w.rt.container(&s3).is_some(),
        "a member is never removed by dockscale"
    );
    assert_eq!(
        w.journal()
            .count_since(Instant::now() - secs(3600), |c| matches!(
                c,
                Call::Create { .. }
            )),
        1,
        "a member is never replaced"
    );

    // Started again by hand: back in rotation.
    w.rt.start_by_hand(&s3);
    let addr = member_addr(&w, &s3);
    w.until("the restarted member back in rotation", secs(5), |w| {
        serving_with_members(w, "web", 1, &[addr])
    })
    .await;
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn an_unlabelled_container_on_the_network_is_ignored() {
    let spec = svc("web").replicas(1).lb();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 1, secs(10)).await;
    let other = w.rt.run_unmanaged("by-hand", NET);
    let addr = member_addr(&w, &other);
    w.settle(secs(5)).await;
    assert!(!w.serving("web").contains(&addr));
    assert!(w.status("web").expect("status").members.is_empty());
    w.converge("web", 1, secs(1)).await;
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_member_on_another_network_gets_one_event_and_no_slot() {
    let spec = svc("web").replicas(1).lb();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 1, secs(10)).await;
    let elsewhere = w.rt.run_member("s4", "web", "bridge");
    let addr = member_addr(&w, &elsewhere);
    w.until("the mismatch reported", secs(5), |w| {
        !w.events_with("web", "MemberNetworkMismatch").is_empty()
    })
    .await;
    w.settle(secs(40)).await;
    let events = w.events_with("web", "MemberNetworkMismatch");
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0].message.contains("bridge") && events[0].message.contains(NET),
        "{}",
        events[0].message
    );
    assert!(!w.serving("web").contains(&addr));
    let status = w.status("web").expect("status");
    assert_eq!(status.members[0].serving, "wrong network");
    w.converge("web", 1, secs(1)).await;
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_member_of_a_service_that_does_not_exist_is_ignored() {
    let spec = svc("web").replicas(1).lb();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 1, secs(10)).await;
    let stray = w.rt.run_member("s5", "nosuch", NET);
    w.settle(secs(5)).await;
    assert!(!w.serving("web").contains(&member_addr(&w, &stray)));
    assert!(w.status("web").expect("status").members.is_empty());
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn members_beyond_the_pool_grow_it_with_one_reload_and_replica_changes_reload_nothing() {
    let spec = svc("web").replicas(1).lb();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 1, secs(10)).await;
    let reloads = w.lb.reloads();
    // A pool of 16 holds 1 replica and its surge: 16 members do not fit besides them.
    let members: Vec<ContainerId> = (1..=16)
        .map(|i| w.rt.run_member(&format!("s{i}"), "web", NET))
        .collect();
    let addrs: Vec<SocketAddrV4> = members.iter().map(|m| member_addr(&w, m)).collect();
    w.until("every member in rotation", secs(10), |w| {
        serving_with_members(w, "web", 1, &addrs)
    })
    .await;
    assert_eq!(w.lb.reloads(), reloads + 1, "one reload to grow the pool");
    assert!(!w.events_with("web", "SlotPoolGrown").is_empty());

    w.edit(&[spec.clone().replicas(3)]);
    w.until("3 replicas and the members", secs(10), |w| {
        serving_with_members(w, "web", 3, &addrs)
    })
    .await;
    assert_eq!(
        w.lb.reloads(),
        reloads + 1,
        "a replica change reloads nothing"
    );
    w.check_invariants();
}
