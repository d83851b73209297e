//! Canary rollouts on the fakes: traffic shifted step by step through server weights,
//! judged from the fake balancer's scripted per-server counters.

use super::*;

/// One tick of traffic: every serving server answers 20 requests in 20ms; the new
/// template's servers (not in `old`) fail half of theirs when `bad`.
fn traffic(w: &World, old: &BTreeSet<ContainerId>, bad: bool) {
    for c in w.running("web") {
        let Some(addr) = c.addr() else { continue };
        let failing = bad && !old.contains(&c.id);
        w.lb.count(addr, 20, if failing { 10 } else { 0 }, 20);
    }
}

/// Runs traffic every 500ms until `done` or `within` passes; returns how long it took.
async fn under_traffic(
    w: &World,
    old: &BTreeSet<ContainerId>,
    bad: bool,
    within: Duration,
    done: impl Fn(&World) -> bool,
) -> Duration {
    let start = Instant::now();
    while !done(w) {
        assert!(start.elapsed() < within, "not done within {within:?}");
        traffic(w, old, bad);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    start.elapsed()
}

/// Whether some new server carries another weight than some old one (a split).
fn split(w: &World, old: &BTreeSet<ContainerId>) -> bool {
    let addrs = |new: bool| -> BTreeSet<SocketAddrV4> {
        w.running("web")
            .into_iter()
            .filter(|c| old.contains(&c.id) != new)
            .filter_map(|c| c.addr())
            .collect()
    };
    let (old_addrs, new_addrs) = (addrs(false), addrs(true));
    let weights = |set: &BTreeSet<SocketAddrV4>| -> BTreeSet<u32> {
        w.lb.slots("web")
            .into_iter()
            .filter(|s| s.in_rotation() && s.addr.is_some_and(|a| set.contains(&a)))
            .map(|s| s.weight)
            .collect()
    };
    let (o, n) = (weights(&old_addrs), weights(&new_addrs));
    !o.is_empty() && !n.is_empty() && o != n
}

#[tokio::test(start_paused = true)]
async fn a_good_canary_is_promoted_through_every_step_then_rolled_out() {
    let spec = svc("web").replicas(4).lb().canary();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 4, secs(5)).await;
    let old = w.running_ids("web");

    w.edit(&[spec.version(2)]);
    let seen_split = std::cell::Cell::new(false);
    under_traffic(&w, &old, false, secs(90), |w| {
        seen_split.set(seen_split.get() || split(w, &old));
        w.converged("web", 4) && w.running_ids("web").is_disjoint(&old)
    })
    .await;
    assert!(
        seen_split.get(),
        "old and new servers never had split weights"
    );
    let steps = w.events_with("web", "CanaryStep");
    assert_eq!(steps.len(), 2, "{:?}", w.events("web"));
    assert!(steps[0].message.contains("25%"), "{}", steps[0].message);
    assert!(w.events_with("web", "RolloutAborted").is_empty());
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_bad_canary_is_aborted_in_its_first_step_and_the_old_replicas_take_all_the_traffic() {
    let spec = svc("web").replicas(4).lb().canary();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 4, secs(5)).await;
    let old = w.running_ids("web");
    let serving = w.serving("web");

    w.edit(&[spec.version(2)]);
    let took = under_traffic(&w, &old, true, secs(30), |w| {
        !w.events_with("web", "RolloutAborted").is_empty()
    })
    .await;
    eprintln!("bad canary aborted {took:?} after the edit");
    assert!(
        took < secs(10),
        "aborted after {took:?}, past the first step"
    );
    under_traffic(&w, &old, true, secs(30), |w| w.running_ids("web") == old).await;
    w.settle(secs(20)).await;
    assert_eq!(
        w.running_ids("web"),
        old,
        "the aborted template was retried"
    );
    assert_eq!(w.serving("web"), serving);
    assert!(
        w.lb.slots("web")
            .iter()
            .filter(|s| s.in_rotation())
            .all(|s| s.weight == 100),
        "old replicas not back at full weight"
    );
    let aborted = w.events_with("web", "RolloutAborted");
    assert_eq!(aborted.len(), 1, "{:?}", w.events("web"));
    assert!(
        aborted[0].message.contains("new 5xx 50.0% vs old 0.0%"),
        "{}",
        aborted[0].message
    );
    let progressing = w
        .condition("web", ConditionType::Progressing)
        .expect("condition");
    assert_eq!(
        (progressing.status, progressing.reason.as_str()),
        (false, "RolloutAborted")
    );
    assert!(w.events_with("web", "CanaryStep").len() <= 1);
}
