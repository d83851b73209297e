//! Canary rollouts on the fakes: traffic shifted step by step through server weights,
//! judged from the fake balancer's scripted per-server counters.

use super::*;

/// One tick of traffic: every serving server answers 20 requests in 20ms; the new
/// template's servers (not in `old`) fail half of theirs when `bad`.
pub(super) fn traffic(w: &World, old: &BTreeSet<ContainerId>, bad: bool) {
    for c in w.running("web") {
        let Some(addr) = c.addr() else { continue };
        let failing = bad && !old.contains(&c.id);
        w.lb.count(addr, 20, if failing { 10 } else { 0 }, 20);
    }
}

/// Runs traffic every 500ms until `done` or `within` passes; returns how long it took.
pub(super) async fn under_traffic(
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
pub(super) fn split(w: &World, old: &BTreeSet<ContainerId>) -> bool {
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
    w.assert_aborted("web", "new 5xx 50.0% vs old 0.0%");
    assert!(w.events_with("web", "CanaryStep").len() <= 1);
}

/// A gauge of the `web` service.
fn gauge(g: &prometheus::GaugeVec, labels: &[&str]) -> f64 {
    g.with_label_values(labels).get()
}

#[tokio::test(start_paused = true)]
async fn the_metrics_follow_a_canary_step_by_step_from_the_figures_it_is_judged_on() {
    let spec = svc("web").replicas(4).lb().canary();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 4, secs(5)).await;
    let old = w.running_ids("web");
    let m = w.metrics.clone();
    assert_eq!(m.canary_step.with_label_values(&["web"]).get(), 0);

    w.edit(&[spec.version(2)]);
    // (step, weight ratio, canary requests per second) as each step was judged.
    let seen = RefCell::new(BTreeSet::new());
    let rates = RefCell::new(Vec::new());
    under_traffic(&w, &old, false, secs(90), |w| {
        let step = m.canary_step.with_label_values(&["web"]).get();
        let weight = gauge(&m.canary_weight_ratio, &["web"]);
        seen.borrow_mut()
            .insert((step, (weight * 100.0).round() as i64));
        if m.render().expect("renders").contains("version=\"canary\"") {
            rates.borrow_mut().push((
                gauge(&m.canary_requests_per_second, &["web", "stable"]),
                gauge(&m.canary_requests_per_second, &["web", "canary"]),
                gauge(&m.canary_response_time_seconds, &["web", "canary"]),
            ));
        }
        w.converged("web", 4) && w.running_ids("web").is_disjoint(&old)
    })
    .await;
    let seen = seen.into_inner();
    assert!(
        seen.contains(&(1, 25)) && seen.contains(&(2, 50)),
        "steps and weights seen: {seen:?}"
    );
    // Every server answers 20 requests per 500 ms tick: 40/s each, 4 old ones, and the
    // step's new ones (1, then 2); the fake's rtime is 20 ms.
    let rates = rates.into_inner();
    assert!(!rates.is_empty(), "no canary figures while judged");
    let (stable, canary, rtime) = rates[rates.len() / 2];
    assert!((100.0..=200.0).contains(&stable), "stable {stable}/s");
    assert!((20.0..=100.0).contains(&canary), "canary {canary}/s");
    assert!((rtime - 0.02).abs() < 1e-9, "canary rtime {rtime}s");
    let verdicts = |v: &str| m.canary_verdicts_total.with_label_values(&["web", v]).get();
    assert_eq!(
        (verdicts("advance"), verdicts("promote"), verdicts("abort")),
        (1, 1, 0)
    );
    assert_eq!(m.canary_step.with_label_values(&["web"]).get(), 0);
    assert_eq!(gauge(&m.canary_weight_ratio, &["web"]), 0.0);
    assert_eq!(m.canary_aborted.with_label_values(&["web"]).get(), 0);
    let text = m.render().expect("renders");
    assert!(
        !text.contains("dockscale_canary_requests_per_second{"),
        "figures left after the promotion: {}",
        text.lines()
            .filter(|l| l.starts_with("dockscale_canary_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(start_paused = true)]
async fn an_aborted_canary_is_counted_and_its_figures_stay_while_it_is_the_spec() {
    let spec = svc("web").replicas(4).lb().canary();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 4, secs(5)).await;
    let old = w.running_ids("web");
    let m = w.metrics.clone();

    w.edit(&[spec.clone().version(2)]);
    under_traffic(&w, &old, true, secs(30), |w| {
        w.running_ids("web") == old && { m.canary_aborted.with_label_values(&["web"]).get() == 1 }
    })
    .await;
    w.settle(secs(5)).await;
    let verdicts = |v: &str| m.canary_verdicts_total.with_label_values(&["web", v]).get();
    assert_eq!(
        (verdicts("advance"), verdicts("promote"), verdicts("abort")),
        (0, 0, 1)
    );
    assert_eq!(m.canary_step.with_label_values(&["web"]).get(), 0);
    assert_eq!(m.canary_aborted.with_label_values(&["web"]).get(), 1);
    assert_eq!(gauge(&m.canary_error_ratio, &["web", "canary"]), 0.5);
    assert_eq!(gauge(&m.canary_error_ratio, &["web", "stable"]), 0.0);

    // Another template: the abort is behind, its figures with it.
    w.edit(&[spec.version(3)]);
    w.until("the new template's first step", secs(10), |_| {
        m.canary_step.with_label_values(&["web"]).get() == 1
    })
    .await;
    assert_eq!(m.canary_aborted.with_label_values(&["web"]).get(), 0);
}
