//! Rolling updates guarded by the analysis on the fakes: batch by batch, each watched
//! before the old replicas it replaces go; a bad batch aborts, and the old template's
//! replicas that were already retired are restored.

use super::rollout_control::{applied, refused};
use super::*;

/// One tick of traffic: every serving server answers 20 requests; the servers of
/// template `bad` (when given) fail half of theirs.
fn traffic(w: &World, bad: Option<&str>) {
    for c in w.running("web") {
        let Some(addr) = c.addr() else { continue };
        let failing = bad.is_some() && c.template_hash() == bad;
        w.lb.count(addr, 20, if failing { 10 } else { 0 }, 20);
    }
}

/// Traffic every 500ms until `done` or `within` passes; returns how long it took.
async fn under_traffic(
    w: &World,
    bad: Option<&str>,
    within: Duration,
    done: impl Fn(&World) -> bool,
) -> Duration {
    let start = Instant::now();
    while !done(w) {
        assert!(
            start.elapsed() < within,
            "not done within {within:?}:\n{}",
            w.describe()
        );
        traffic(w, bad);
        tokio::time::sleep(ms(500)).await;
    }
    start.elapsed()
}

fn hashes(w: &World) -> Vec<String> {
    let mut h: Vec<String> = w
        .running("web")
        .iter()
        .filter_map(|c| c.template_hash().map(str::to_owned))
        .collect();
    h.sort();
    h
}

fn of_template(w: &World, hash: &str) -> usize {
    w.running("web")
        .iter()
        .filter(|c| c.template_hash() == Some(hash))
        .count()
}

fn spec_hash(w: &World) -> String {
    w.status("web").map(|s| s.template_hash).unwrap_or_default()
}

/// Under traffic that fails on `bad`: the abort, then the old template back on every
/// one of `n` replicas, all serving, and still so after a while.
async fn aborted_and_restored(w: &World, bad: &str, old_hash: &str, n: usize) {
    under_traffic(w, Some(bad), secs(30), |w| {
        !w.events_with("web", "RolloutAborted").is_empty()
    })
    .await;
    let restored = |w: &World| hashes(w) == vec![old_hash.to_owned(); n];
    under_traffic(w, Some(bad), secs(30), |w| {
        restored(w) && w.serving("web").len() == n
    })
    .await;
    w.settle(secs(10)).await;
    assert!(restored(w), "{}", w.describe());
    assert_eq!(w.serving("web").len(), n);
}

/// A service of 4 replicas with the guarded rollout, its template changed and rolled
/// under good traffic until two old replicas were retired: the old and new hashes.
async fn two_batches_in(w: &World, spec: &Svc) -> (String, String) {
    w.converge("web", 4, secs(5)).await;
    let old_hash = spec_hash(w);
    w.edit(&[spec.clone().version(2)]);
    under_traffic(w, None, secs(30), |w| of_template(w, &old_hash) == 2).await;
    let new_hash = spec_hash(w);
    assert_ne!(new_hash, old_hash);
    (old_hash, new_hash)
}

#[tokio::test(start_paused = true)]
async fn a_good_rolling_update_goes_batch_by_batch_each_watched_before_old_replicas_go() {
    let spec = svc("web").replicas(4).lb().analysed();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 4, secs(5)).await;
    let old_hash = spec_hash(&w);

    w.edit(&[spec.version(2)]);
    let lowest_old = std::cell::Cell::new(4);
    let took = under_traffic(&w, None, secs(60), |w| {
        let old = of_template(w, &old_hash);
        let new = w.running("web").len() - old;
        // Old replicas go only as new ones passed: never fewer than `desired` less the
        // new ones that served a whole watch before.
        lowest_old.set(lowest_old.get().min(old));
        assert!(old + new <= 5, "beyond maxSurge: {}", w.describe());
        w.converged("web", 4)
    })
    .await;
    let batches = w.events_with("web", "RolloutBatch");
    assert_eq!(batches.len(), 4, "{:?}", w.events("web"));
    assert!(
        batches[0].message.contains("batch 1: 1 of 4"),
        "{}",
        batches[0].message
    );
    // Four batches of one, each watched for its 2s interval.
    assert!(took >= secs(8), "each batch watched: done in {took:?}");
    assert!(w.events_with("web", "RolloutAborted").is_empty());
    assert_eq!(lowest_old.get(), 0);
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_bad_first_batch_is_aborted_with_every_old_replica_still_there() {
    let spec = svc("web").replicas(4).lb().analysed();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 4, secs(5)).await;
    let old = w.running_ids("web");
    let old_hash = spec_hash(&w);

    w.edit(&[spec.clone().version(2)]);
    w.until("the new template is named", secs(5), |w| {
        spec_hash(w) != old_hash
    })
    .await;
    let new_hash = spec_hash(&w);
    let took = under_traffic(&w, Some(&new_hash), secs(30), |w| {
        !w.events_with("web", "RolloutAborted").is_empty()
    })
    .await;
    assert!(took < secs(5), "aborted {took:?} after the edit");
    under_traffic(&w, Some(&new_hash), secs(20), |w| {
        w.running_ids("web") == old
    })
    .await;
    w.settle(secs(10)).await;
    assert_eq!(w.running_ids("web"), old, "the aborted template came back");
    assert!(
        !w.journal()
            .entries()
            .iter()
            .any(|e| matches!(&e.call, Call::Stop { id, .. } if old.contains(id))),
        "an old replica was stopped"
    );
    w.assert_aborted("web", "new 5xx 50.0% vs old 0.0%");
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_bad_later_batch_is_aborted_and_the_retired_old_replicas_are_restored() {
    let spec = svc("web").replicas(4).lb().analysed();
    let w = World::new(std::slice::from_ref(&spec)).start();
    // Good until two old replicas were retired, then the new version turns bad.
    let (old_hash, new_hash) = two_batches_in(&w, &spec).await;
    aborted_and_restored(&w, &new_hash, &old_hash, 4).await;
    w.assert_aborted("web", "new 5xx");
    let status = w.status("web").expect("status");
    assert_eq!(status.replicas.ready, 4, "{:?}", status.replicas);
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_guarded_rolling_update_is_paused_aborted_and_retried_by_command() {
    let spec = svc("web").replicas(3).lb().analysed();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 3, secs(5)).await;
    let old_hash = spec_hash(&w);

    w.edit(&[spec.clone().version(2)]);
    under_traffic(&w, None, secs(20), |w| {
        !w.events_with("web", "RolloutBatch").is_empty()
    })
    .await;
    let paused = applied(w.command("web", RolloutCommand::Pause).await);
    assert!(paused.contains("Rolling update of template"), "{paused}");
    assert!(paused.contains("batch 1"), "{paused}");
    // Paused: the batch holds far past its interval, no old replica goes.
    let start = Instant::now();
    while start.elapsed() < secs(8) {
        traffic(&w, None);
        tokio::time::sleep(ms(500)).await;
    }
    assert_eq!(of_template(&w, &old_hash), 3, "{}", w.describe());
    applied(w.command("web", RolloutCommand::Abort).await);
    under_traffic(&w, None, secs(20), |w| {
        hashes(w) == vec![old_hash.clone(); 3]
    })
    .await;
    w.assert_aborted("web", "aborted by command");
    assert!(refused(w.command("web", RolloutCommand::Pause).await).contains("was aborted"));

    applied(w.command("web", RolloutCommand::Retry).await);
    under_traffic(&w, None, secs(60), |w| w.converged("web", 3)).await;
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_controller_restarted_during_the_rollout_still_restores_the_old_template() {
    let spec = svc("web").replicas(4).lb().analysed();
    let mut w = World::new(std::slice::from_ref(&spec)).start();
    let (old_hash, new_hash) = two_batches_in(&w, &spec).await;
    w.stop_controller().await;
    w.start_controller();
    aborted_and_restored(&w, &new_hash, &old_hash, 4).await;
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn an_old_replica_killed_while_a_canary_is_aborted_is_replaced_from_the_old_template() {
    let spec = svc("web").replicas(4).lb().canary();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 4, secs(5)).await;
    let old_hash = spec_hash(&w);
    w.edit(&[spec.clone().version(2)]);
    w.until("the new template is named", secs(5), |w| {
        spec_hash(w) != old_hash
    })
    .await;
    let new_hash = spec_hash(&w);
    aborted_and_restored(&w, &new_hash, &old_hash, 4).await;

    let victim = w.running_ids("web").into_iter().next().expect("a replica");
    w.rt.kill(&victim);
    under_traffic(&w, None, secs(30), |w| {
        !w.running_ids("web").contains(&victim)
            && hashes(w) == vec![old_hash.clone(); 4]
            && w.serving("web").len() == 4
    })
    .await;
    w.settle(secs(5)).await;
    assert_eq!(hashes(&w), vec![old_hash.clone(); 4], "{}", w.describe());
    w.check_invariants();
}
