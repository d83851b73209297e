//! The warm pool on the fakes: filled and paused outside rotation and outside the
//! counts, taken first by a scale-up and refilled, replaced on a template change,
//! refilled after a warm container is killed (with a back-off when they keep dying),
//! replaced when its port does not answer within the progress deadline,
//! and taken when a held request wakes a service at zero.

use super::*;
use crate::model::backend::{BackendLoad, Holds};
use crate::model::replica::ContainerState;

/// The service's warm containers paused, of the current template.
fn paused(w: &World, service: &str) -> Vec<FakeContainer> {
    let hash = w
        .expected
        .borrow()
        .get(service)
        .map(|(_, h)| h.clone())
        .unwrap_or_default();
    w.warm(service)
        .into_iter()
        .filter(|c| c.state == ContainerState::Paused && c.template_hash() == Some(&hash))
        .collect()
}

/// The pool is full: `n` paused of the current template, nothing else warm, and the
/// status says so.
fn pool_ready(w: &World, service: &str, n: u32) -> bool {
    let shown = w.status(service).and_then(|s| s.warm_pool);
    paused(w, service).len() == n as usize
        && w.warm(service).len() == n as usize
        && shown.is_some_and(|p| p.ready == n && p.warming == 0)
}

fn metric(w: &World, series: &str) -> String {
    let text = w.metrics.render().expect("renders");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{series} ")))
        .unwrap_or("absent")
        .to_owned()
}

fn warm_creates_since(w: &World, since: Instant) -> usize {
    w.journal().count_since(
        since,
        |c| matches!(c, Call::Create { name, .. } if is_warm_name("web", name)),
    )
}

fn cold_creates_since(w: &World, since: Instant) -> usize {
    w.journal().count_since(
        since,
        |c| matches!(c, Call::Create { name, .. } if !is_warm_name("web", name)),
    )
}

fn pooled(min: u32, size: u32) -> Svc {
    svc("web").replicas(min).autoscale(min, 4).warm_pool(size)
}

#[tokio::test(start_paused = true)]
async fn the_pool_fills_to_its_size_paused_outside_rotation_and_outside_the_counts() {
    let t0 = Instant::now();
    let w = World::new(&[pooled(1, 2)]).start();
    w.converge("web", 1, secs(10)).await;
    w.until("two warm containers paused", secs(5), |w| {
        pool_ready(w, "web", 2)
    })
    .await;
    let warm = paused(&w, "web");
    for c in &warm {
        let id = c.id.clone();
        assert_eq!(
            w.journal()
                .count_since(t0, |call| *call == Call::Pause(id.clone())),
            1,
            "paused once"
        );
        let addr = c.addr().expect("an address");
        assert!(!w.serving("web").contains(&addr), "{addr} in rotation");
        assert!(
            w.lb.slots("web").iter().all(|s| s.addr != Some(addr)),
            "{addr} holds a slot"
        );
    }
    let s = w.status("web").expect("status");
    assert_eq!((s.replicas.current, s.replicas.ready), (1, 1));
    assert_eq!(s.containers.len(), 1, "{:?}", s.containers);
    assert!(w.converged("web", 1), "{}", w.describe());
    assert_eq!(
        metric(
            &w,
            "dockscale_warm_pool_replicas{service=\"web\",state=\"ready\"}"
        ),
        "2"
    );
    // Settled: nothing more is created.
    let now = Instant::now();
    w.settle(secs(30)).await;
    assert_eq!(warm_creates_since(&w, now) + cold_creates_since(&w, now), 0);
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_scale_up_takes_the_warm_containers_first_and_the_pool_is_refilled() {
    let w = World::new(&[pooled(1, 2)]).start();
    w.converge("web", 1, secs(10)).await;
    w.until("pool ready", secs(5), |w| pool_ready(w, "web", 2))
        .await;
    let warm = ids(&paused(&w, "web"));

    let edited = Instant::now();
    w.edit(&[pooled(3, 2)]);
    let took = w.converge("web", 3, secs(5)).await;
    let serving = w.running_ids("web");
    assert!(warm.is_subset(&serving), "{warm:?} not in {serving:?}");
    assert_eq!(cold_creates_since(&w, edited), 0, "no cold create");
    for c in w.running("web") {
        assert!(
            !is_warm_name("web", &c.name),
            "{} keeps a warm name",
            c.name
        );
    }
    assert_eq!(w.events_with("web", "TookWarm").len(), 2);
    assert_eq!(
        metric(&w, "dockscale_warm_pool_takes_total{service=\"web\"}"),
        "2"
    );
    w.until("pool refilled", secs(5), |w| pool_ready(w, "web", 2))
        .await;
    let calls: Vec<String> = w
        .journal()
        .entries()
        .into_iter()
        .filter(|e| {
            e.at >= edited && !matches!(e.call, Call::Lb(_) | Call::List | Call::Inspect(_))
        })
        .map(|e| format!("{:?} {:?}", e.at - edited, e.call))
        .collect();
    assert_eq!(warm_creates_since(&w, edited), 2, "{calls:#?}");
    assert!(ids(&paused(&w, "web")).is_disjoint(&warm));
    // Against a cold scale-up of the same size, on the same fakes.
    let c = World::new(&[svc("web").replicas(1).autoscale(1, 4)]).start();
    c.converge("web", 1, secs(10)).await;
    c.edit(&[svc("web").replicas(3).autoscale(3, 4)]);
    let cold = c.converge("web", 3, secs(5)).await;
    assert!(took < cold, "warm {took:?}, cold {cold:?}");
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_template_change_replaces_the_pool() {
    let w = World::new(&[pooled(1, 2)]).start();
    w.converge("web", 1, secs(10)).await;
    w.until("pool ready", secs(5), |w| pool_ready(w, "web", 2))
        .await;
    let old = ids(&paused(&w, "web"));
    w.edit(&[pooled(1, 2).version(2)]);
    w.converge("web", 1, secs(10)).await;
    w.until("pool of the new template", secs(15), |w| {
        pool_ready(w, "web", 2)
    })
    .await;
    let now: BTreeSet<ContainerId> = w.warm("web").into_iter().map(|c| c.id).collect();
    assert!(now.is_disjoint(&old), "old warm containers left: {now:?}");
    assert!(
        old.iter().all(|id| w.rt.container(id).is_none()),
        "{}",
        w.describe()
    );
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_warm_container_killed_is_refilled_and_a_crashing_one_backs_off() {
    let w = World::new(&[pooled(1, 2)]).start();
    w.converge("web", 1, secs(10)).await;
    w.until("pool ready", secs(5), |w| pool_ready(w, "web", 2))
        .await;
    let victim = paused(&w, "web")[0].id.clone();
    w.rt.kill(&victim);
    w.until("refilled", secs(3), |w| {
        pool_ready(w, "web", 2) && w.rt.container(&victim).is_none()
    })
    .await;
    assert_eq!(w.running_ids("web").len(), 1);

    // An image whose containers die before they answer: the pool backs off.
    let w = World::new(&[pooled(1, 1).image("crasher:1")]);
    w.rt.add_image(
        "crasher:1",
        crate::runtime::fake::Behaviour {
            crashes_after: Some(ms(50)),
            crash_code: 1,
            never_answers: true,
        },
    );
    let w = w.start();
    let start = Instant::now();
    w.settle(secs(60)).await;
    // Replicas crash too; only the warm creates are counted here. Back-off 0, 10 s,
    // 20 s, 40 s: at most 4 in a minute (a tight loop would make hundreds).
    let warm = warm_creates_since(&w, start);
    assert!((2..=5).contains(&warm), "{warm} warm creates in 60 s");
    assert!(!w.events_with("web", "WarmPoolBackOff").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_warm_container_that_never_answers_is_replaced_at_the_progress_deadline() {
    let w = World::new(&[pooled(1, 1).image("silent:1")]);
    w.rt.add_image("silent:1", crate::runtime::fake::Behaviour::never_answers());
    let w = w.start();
    let start = Instant::now();
    w.settle(secs(60)).await;
    assert_eq!(
        warm_creates_since(&w, start),
        1,
        "warming within its deadline"
    );
    assert!(paused(&w, "web").is_empty());
    // progressDeadline 2m: removed then, refilled at once the first time, after a
    // back-off the next (0, then 10 s): three warm creates in 5 minutes.
    w.settle(secs(240)).await;
    let warm = warm_creates_since(&w, start);
    assert!((2..=4).contains(&warm), "{warm} warm creates in 300 s");
    let events = w.events_with("web", "WarmPoolBackOff");
    assert!(
        events.iter().any(|e| e
            .message
            .contains("did not answer on its port within 2m (progressDeadline)")),
        "{events:?}"
    );
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_request_held_at_zero_is_served_by_a_former_warm_container() {
    let w = World::new(&[svc("web")
        .replicas(1)
        .scale_to_zero(4, "{idleAfter: 30s, activationTimeout: 10s}")
        .warm_pool(1)]);
    w.lb.set_load(
        "web",
        BackendLoad {
            requests: 0,
            ..BackendLoad::default()
        },
    );
    let w = w.start();
    w.converge("web", 0, secs(60)).await;
    w.until("pool ready", secs(5), |w| pool_ready(w, "web", 1))
        .await;
    let warm = paused(&w, "web")[0].id.clone();
    w.lb.set_holds(
        "web",
        Holds {
            waiting: 1,
            held: 1,
            ..Holds::default()
        },
    );
    let woken = w.converge("web", 1, secs(5)).await;
    assert_eq!(
        w.running_ids("web"),
        BTreeSet::from([warm.clone()]),
        "{}",
        w.describe()
    );
    let addr = w.rt.container(&warm).and_then(|c| c.addr()).expect("addr");
    assert_eq!(w.serving("web"), BTreeSet::from([addr]));
    // Woken within a reading of the holds, the take itself a few round trips.
    assert!(
        woken <= w.settings.holds_interval + ms(200),
        "served after {woken:?}"
    );
    w.until("pool refilled", secs(5), |w| pool_ready(w, "web", 1))
        .await;
    w.check_invariants();
}
