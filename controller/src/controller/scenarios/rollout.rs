//! Template changes: replicas rolled within `maxSurge`/`maxUnavailable`, and rollouts
//! that cannot finish leaving the old replicas serving.

use super::*;
use crate::runtime::fake::Behaviour;

/// Rolls `web` from version 1 to 2 with the given bounds; returns the fewest servers
/// ready at any step and the most replicas alive (not being stopped) at once.
async fn roll(replicas: u32, surge: u32, unavailable: u32) -> (World, usize, usize) {
    let spec = svc("web")
        .replicas(replicas)
        .lb()
        .rollout(surge, unavailable);
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", replicas as usize, secs(5)).await;
    let old = ids(&w.running("web"));

    let since = Instant::now();
    w.edit(&[spec.version(2)]);
    w.until("every replica rolled", secs(30), |w| {
        w.converged("web", replicas as usize) && ids(&w.running("web")).is_disjoint(&old)
    })
    .await;
    let (fewest, _) = w.lb.ready_range("web", since).expect("servers changed");
    let most = w.rt.peak_live("web", since);
    w.check_invariants();
    (w, fewest, most)
}

#[tokio::test(start_paused = true)]
async fn a_rollout_with_surge_never_has_fewer_than_desired_ready_nor_more_than_desired_plus_surge()
{
    let (w, fewest, most) = roll(4, 1, 0).await;
    assert!(fewest >= 4, "only {fewest} servers ready at one step");
    assert!(most <= 5, "{most} replicas at once");
    let complete = w.events_with("web", "RolloutComplete");
    assert_eq!(complete.len(), 1, "{:?}", w.events("web"));
}

#[tokio::test(start_paused = true)]
async fn a_rollout_with_max_unavailable_keeps_desired_minus_that_ready_and_no_surge() {
    let (_w, fewest, most) = roll(4, 0, 1).await;
    assert!(fewest >= 3, "only {fewest} servers ready at one step");
    assert!(most <= 4, "{most} replicas at once");
}

#[tokio::test(start_paused = true)]
async fn a_wide_rollout_stays_within_both_bounds() {
    let (_w, fewest, most) = roll(6, 2, 2).await;
    assert!(fewest >= 4, "only {fewest} servers ready at one step");
    assert!(most <= 8, "{most} replicas at once");
}

#[tokio::test(start_paused = true)]
async fn a_rollout_to_a_missing_image_stops_and_the_old_replicas_keep_serving() {
    let spec = svc("web").replicas(2).lb();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 2, secs(5)).await;
    let old = w.running_ids("web");
    let serving = w.serving("web");

    w.edit(&[spec
        .clone()
        .image("dockscale-no-such-image:1.0")
        .pull("Never")
        .version(2)]);
    w.until("ImageNotFound reported", secs(5), |w| {
        w.condition("web", ConditionType::ReplicaFailure)
            .is_some_and(|c| c.status && c.reason == "ImageNotFound")
    })
    .await;
    w.settle(secs(30)).await;
    assert_eq!(w.running_ids("web"), old, "old replicas were touched");
    assert_eq!(w.serving("web"), serving);
    assert_eq!(
        w.rt.calls().creates,
        2,
        "a create was tried without the image"
    );
    let reported = w.events_with("web", "ImageNotFound");
    assert_eq!(reported.len(), 1, "{:?}", w.events("web"));
    assert!(reported[0].message.contains("dockscale-no-such-image:1.0"));

    // Fixing the spec resumes and completes the rollout.
    w.edit(&[spec.version(3)]);
    w.until("rolled to version 3", secs(10), |w| {
        w.converged("web", 2) && w.running_ids("web").is_disjoint(&old)
    })
    .await;
    let failure = w
        .condition("web", ConditionType::ReplicaFailure)
        .expect("ReplicaFailure");
    assert!(!failure.status, "{failure:?}");
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_rollout_whose_replicas_never_answer_stalls_after_its_deadline_and_the_old_keep_serving()
{
    let spec = svc("web").replicas(2).lb();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.rt.add_image("silent:1", Behaviour::never_answers());
    w.converge("web", 2, secs(5)).await;
    let old = w.running_ids("web");
    let serving = w.serving("web");

    let edited = Instant::now();
    w.edit(&[spec.image("silent:1").version(2)]);
    let stalled = w
        .until("the rollout stalled", secs(200), |w| {
            w.condition("web", ConditionType::Progressing)
                .is_some_and(|c| !c.status && c.reason == "ProgressDeadlineExceeded")
        })
        .await;
    assert!(
        stalled >= secs(120) && stalled < secs(125),
        "stalled after {stalled:?} (deadline 120s)"
    );
    assert!(edited.elapsed() >= secs(120));
    assert!(
        old.is_subset(&w.running_ids("web")),
        "old replicas were removed"
    );
    assert_eq!(w.serving("web"), serving);
    assert_eq!(w.events_with("web", "ProgressDeadlineExceeded").len(), 1);
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_rollout_changed_midway_converges_on_the_last_template_within_its_bounds() {
    let spec = svc("web").replicas(4).lb();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 4, secs(5)).await;
    w.rt.set_create_latency(ms(300));
    let since = Instant::now();
    w.edit(&[spec.clone().version(2)]);
    w.settle(ms(700)).await;
    w.edit(&[spec.version(3)]);
    w.converge("web", 4, secs(30)).await;
    let (fewest, _) = w.lb.ready_range("web", since).expect("servers changed");
    assert!(fewest >= 4, "only {fewest} servers ready at one step");
    let most = w.rt.peak_live("web", since);
    assert!(most <= 5, "{most} replicas at once");
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_network_change_rolls_the_replicas_onto_the_new_network() {
    let w = World::new(&[svc("web").replicas(2).lb()]).start();
    w.converge("web", 2, secs(5)).await;
    let old = w.running_ids("web");
    let yaml = svc("web")
        .replicas(2)
        .lb()
        .yaml()
        .replace("  rollout:", "  network: other\n  rollout:");
    w.write(&yaml);
    w.until("rolled onto `other`", secs(10), |w| {
        w.converged("web", 2) && w.running_ids("web").is_disjoint(&old)
    })
    .await;
    assert!(w.running("web").iter().all(|c| c.network == "other"));
    assert!(w.rt.networks().contains(&"other".to_owned()));
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_rollout_replaces_a_paused_replica_too() {
    let spec = svc("web").replicas(3).lb();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 3, secs(5)).await;
    let paused = w.running("web")[0].clone();
    w.rt.pause(&paused.id);
    w.settle(secs(1)).await;
    w.edit(&[spec.version(2)]);
    w.converge("web", 3, secs(30)).await;
    assert!(w.rt.container(&paused.id).is_none());
    w.check_invariants();
}
