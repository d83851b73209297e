//! Images from a registry (the fake's): pulled once before the first create, backed
//! off when the registry refuses, never holding another service back, and `Always`
//! following the tag's image (a moved tag rolls, an unchanged one does not). Twins of
//! `tests/tests/registry.rs`.

use super::*;
use crate::runtime::fake::Behaviour;

/// A name on a loopback registry (the fake's; nothing leaves the process).
const IMAGE_V1: &str = "127.0.0.1:5999/web:1";
const IMAGE_V2: &str = "127.0.0.1:5999/web:2";
const STABLE: &str = "127.0.0.1:5999/web:stable";

fn pulls_of(w: &World, image: &str) -> Vec<Instant> {
    w.journal()
        .entries()
        .into_iter()
        .filter(|e| e.call == Call::Pull(image.to_owned()))
        .map(|e| e.at)
        .collect()
}

fn creates(w: &World) -> Vec<Instant> {
    w.journal()
        .entries()
        .into_iter()
        .filter(|e| matches!(e.call, Call::Create { .. }))
        .map(|e| e.at)
        .collect()
}

/// `n` replicas running and ready, all of the template hash the status shows (an
/// `Always` hash carries the image ID, which the test does not compute).
fn settled(w: &World, service: &str, n: usize) -> Option<String> {
    let (r, hash) = w.status.update(|s| {
        let svc = s.services.get(service)?;
        Some((svc.replicas, svc.template_hash.clone()))
    })?;
    let running = w.running(service);
    let done = running.len() == n
        && w.rt.of_service(service).len() == n
        && r.ready_updated as usize == n
        && r.pending == 0
        && r.terminating == 0
        && running
            .iter()
            .all(|c| c.template_hash() == Some(hash.as_str()));
    done.then_some(hash)
}

fn pulls_total(w: &World, result: &str) -> u64 {
    w.metrics
        .image_pulls_total
        .with_label_values(&[result])
        .get()
}

#[tokio::test(start_paused = true)]
async fn a_missing_image_is_pulled_once_then_its_replicas_serve() {
    let w = World::new(&[svc("web").replicas(3).lb().image(IMAGE_V1)]);
    w.rt.push_to_registry(IMAGE_V1, "sha256:1111", 4_000_000, Behaviour::serves());
    let w = w.start();
    w.converge("web", 3, secs(10)).await;
    let pulls = pulls_of(&w, IMAGE_V1);
    assert_eq!(pulls.len(), 1, "{:?}", w.events("web"));
    assert!(creates(&w)[0] > pulls[0], "created before the pull");
    assert_eq!(w.events_with("web", "Pulling").len(), 1);
    let pulled = w.events_with("web", "Pulled");
    assert_eq!(pulled.len(), 1);
    assert!(
        pulled[0].message.contains("(4.0 MB downloaded"),
        "{}",
        pulled[0].message
    );
    assert_eq!(pulls_total(&w, "ok"), 1);
    assert_eq!(w.metrics.image_pull_duration_seconds.get_sample_count(), 1);
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_refused_pull_is_image_pull_back_off_with_the_registrys_message_and_no_hot_loop() {
    let w = World::new(&[svc("web").replicas(2).lb().image(IMAGE_V1)]);
    w.rt.push_to_registry(IMAGE_V1, "sha256:1111", 1_000, Behaviour::serves());
    w.rt.refuse_pulls("unauthorized: authentication required");
    let w = w.start();
    w.until("ImagePullBackOff reported", secs(5), |w| {
        w.condition("web", ConditionType::ReplicaFailure)
            .is_some_and(|c| {
                c.status
                    && c.reason == "ImagePullBackOff"
                    && c.message.contains("unauthorized: authentication required")
            })
    })
    .await;
    w.settle(secs(60)).await;
    // 1 s doubling, each pull taking 500 ms: pulls at 0, 1.5, 4, 8.5, 17, 33.5 s.
    let pulls = pulls_of(&w, IMAGE_V1).len();
    assert!((5..=7).contains(&pulls), "{pulls} pulls in 60 s");
    assert_eq!(w.rt.calls().creates, 0, "created without the image");
    assert_eq!(pulls_total(&w, "error"), pulls as u64);
    assert_eq!(w.events_with("web", "Failed").len(), pulls);

    // The registry lets it in: the next pull (within the 5 min cap) succeeds, and the
    // failure clears.
    w.rt.accept_pulls();
    w.converge("web", 2, secs(70)).await;
    let failure = w
        .condition("web", ConditionType::ReplicaFailure)
        .expect("ReplicaFailure");
    assert!(!failure.status, "{failure:?}");
}

#[tokio::test(start_paused = true)]
async fn a_pull_in_flight_never_holds_back_another_service_or_the_loop() {
    let w = World::new(&[
        svc("slow").replicas(2).image(IMAGE_V1),
        svc("fine").replicas(3).lb(),
    ]);
    w.rt.push_to_registry(IMAGE_V1, "sha256:1111", 1_000, Behaviour::serves());
    w.rt.set_pull_latency(secs(120));
    let w = w.start();
    w.converge("fine", 3, secs(5)).await;
    assert!(w.rt.of_service("slow").is_empty());
    // The loop still acts while the pull runs: a replica killed from outside is replaced.
    let victim = w.running("fine")[0].id.clone();
    w.rt.kill(&victim);
    w.until("replaced", secs(5), |w| {
        w.converged("fine", 3) && !w.running_ids("fine").contains(&victim)
    })
    .await;
    w.converge("slow", 2, secs(130)).await;
    assert_eq!(pulls_of(&w, IMAGE_V1).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_rollout_to_a_new_tag_pulls_it_once_before_its_first_new_replica() {
    let spec = svc("web").replicas(3).lb().image(IMAGE_V1);
    let w = World::new(std::slice::from_ref(&spec));
    w.rt.push_to_registry(IMAGE_V1, "sha256:1111", 1_000, Behaviour::serves());
    w.rt.push_to_registry(IMAGE_V2, "sha256:2222", 1_000, Behaviour::serves());
    let w = w.start();
    w.converge("web", 3, secs(10)).await;
    let old = w.running_ids("web");
    let edited = Instant::now();

    w.edit(&[spec.image(IMAGE_V2)]);
    w.until("rolled to the new tag", secs(30), |w| {
        w.converged("web", 3) && w.running_ids("web").is_disjoint(&old)
    })
    .await;
    let pulls = pulls_of(&w, IMAGE_V2);
    assert_eq!(pulls.len(), 1);
    let first_new = creates(&w)
        .into_iter()
        .find(|at| *at >= edited)
        .expect("a create after the edit");
    assert!(first_new > pulls[0], "created before the pull");
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn always_rolls_nothing_when_the_tag_is_unchanged_and_rolls_when_it_moved() {
    let w = World::new(&[svc("web").replicas(2).lb().image(STABLE).pull("Always")]);
    w.rt.push_to_registry(STABLE, "sha256:aaaa", 1_000, Behaviour::serves());
    let w = w.start();
    w.until("2 replicas of the resolved tag", secs(10), |w| {
        settled(w, "web", 2).is_some()
    })
    .await;
    let first = settled(&w, "web", 2).expect("settled");
    let old = w.running_ids("web");
    assert_eq!(pulls_of(&w, STABLE).len(), 1);

    // A reload (SIGHUP) resolves the tag again: the same image, nothing rolled.
    w.notify();
    w.until("resolved again", secs(5), |w| {
        pulls_of(w, STABLE).len() == 2
    })
    .await;
    w.settle(secs(5)).await;
    assert_eq!(w.running_ids("web"), old, "an unchanged tag rolled");
    assert_eq!(settled(&w, "web", 2), Some(first.clone()));
    // The periodic resync does not resolve it.
    w.settle(w.settings.sync_period * 3).await;
    assert_eq!(pulls_of(&w, STABLE).len(), 2, "resolved without a reload");

    // The tag moved in the registry: the next reload rolls the replicas to it.
    w.rt.push_to_registry(STABLE, "sha256:bbbb", 1_000, Behaviour::serves());
    w.notify();
    w.until("rolled to the moved tag", secs(30), |w| {
        settled(w, "web", 2).is_some_and(|h| h != first) && w.running_ids("web").is_disjoint(&old)
    })
    .await;
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_restarted_controller_keeps_always_replicas_whose_tag_did_not_move() {
    let w = World::new(&[svc("web").replicas(2).lb().image(STABLE).pull("Always")]);
    w.rt.push_to_registry(STABLE, "sha256:aaaa", 1_000, Behaviour::serves());
    let mut w = w.start();
    w.until("settled", secs(10), |w| settled(w, "web", 2).is_some())
        .await;
    let old = w.running_ids("web");
    w.stop_controller().await;
    // The restart finds the registry slow: nothing is rolled while it resolves.
    w.rt.set_pull_latency(secs(5));
    w.start_controller();
    w.until("resolved after the restart", secs(10), |w| {
        pulls_of(w, STABLE).len() == 2
    })
    .await;
    w.settle(secs(10)).await;
    assert_eq!(w.running_ids("web"), old, "adopted replicas were rolled");
    assert!(settled(&w, "web", 2).is_some());
}
