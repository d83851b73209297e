//! Rolling updates guarded by the analysis (`strategy: rolling` with
//! `rollout.analysis`) against a real Docker engine and a real HAProxy: a good version
//! replaced batch by batch under load without a failed request, each batch watched
//! before the old replicas it replaces go; a version answering half its requests 500
//! aborted in its first batch with every old replica still there; an abort by command
//! after two batches restoring the old template's replicas that were already retired.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dockscale_e2e::haproxy::LbFixture;
use dockscale_e2e::load::{FailureClass, KeepAliveLoad};
use dockscale_e2e::{events, RunningController};

const REPLICAS: u32 = 4;
const CLIENTS: usize = 8;
const GAP: Duration = Duration::from_millis(4);
const LOAD_LIMIT: Duration = Duration::from_secs(75);
/// Each batch is watched this long.
const INTERVAL: Duration = Duration::from_secs(2);
const ROLLOUT: &str =
    "  rollout:\n    maxSurge: 1\n    analysis: {interval: 2s, minRequests: 50}\n";

/// Template hashes of the running replicas, one per replica.
fn hashes(fixture: &LbFixture) -> Vec<String> {
    let mut h: Vec<String> = fixture
        .running()
        .into_iter()
        .map(|c| c.template_hash)
        .collect();
    h.sort();
    h
}

fn ids(fixture: &LbFixture) -> BTreeSet<String> {
    fixture.running().into_iter().map(|c| c.id).collect()
}

fn of_template(fixture: &LbFixture, hash: &str) -> usize {
    hashes(fixture).iter().filter(|h| *h == hash).count()
}

/// Starts a controller on a service of 4 replicas of `v1` with the guarded rollout,
/// serving: the controller and the template hash of `v1`.
async fn serving_v1(fixture: &LbFixture) -> (RunningController, String) {
    fixture.write_spec(&fixture.lb_spec(REPLICAS, "v1", ROLLOUT));
    let controller = RunningController::start(&fixture.lb_run_args(&[]));
    fixture.serving(REPLICAS as usize).await;
    let hash = hashes(fixture).pop().expect("replicas");
    (controller, hash)
}

/// The paced load on `/`, running for a second.
async fn load(fixture: &LbFixture) -> KeepAliveLoad {
    let url = format!("http://{}/", fixture.bind);
    let load = KeepAliveLoad::paced(&url, CLIENTS, GAP, Duration::from_secs(10), LOAD_LIMIT);
    tokio::time::sleep(Duration::from_secs(1)).await;
    load
}

/// The template of `v2`, with more environment when given.
fn v2(fixture: &LbFixture, env: &str) -> String {
    let spec = fixture.lb_spec(REPLICAS, "v2", ROLLOUT);
    if env.is_empty() {
        return spec;
    }
    spec.replace(
        "env: {GREETING: \"v2\"}",
        &format!("env: {{GREETING: \"v2\", {env}}}"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_version_is_rolled_batch_by_batch_under_load_without_a_failed_request() {
    let fixture = LbFixture::new("e2e-guard-good");
    let (controller, old_hash) = serving_v1(&fixture).await;
    let load = load(&fixture).await;
    fixture.write_spec(&v2(&fixture, ""));
    let started = Instant::now();
    // Each time an old replica goes, the new ones that replace it have served a whole
    // watch: the old count never drops faster than one per interval.
    let mut old_gone_at: Vec<Duration> = Vec::new();
    let mut old_now = REPLICAS as usize;
    loop {
        let old = of_template(&fixture, &old_hash);
        if old < old_now {
            old_gone_at.extend(std::iter::repeat_n(started.elapsed(), old_now - old));
            old_now = old;
        }
        let running = fixture.running().len();
        assert!(
            running <= REPLICAS as usize + 1,
            "beyond maxSurge: {running} running"
        );
        if old == 0 && fixture.taking_requests().await.len() == REPLICAS as usize {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not rolled out in 60s: {old} old replicas left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    let report = load.finish().await;
    let status = controller.service_status(&fixture.service).await;
    let batches = events(&status, "RolloutBatch");
    println!(
        "guarded rolling update of {REPLICAS}: done in {took:.1?}, old replicas gone at \
         {old_gone_at:.1?}; {} batches; {} requests, {} failed",
        batches.len(),
        report.requests(),
        report.failed_total()
    );
    assert_eq!(
        report.failed_total(),
        0,
        "failed requests: {:#?}",
        report.samples
    );
    assert!(report.requests() > 1_000, "the load ran: {report:?}");
    assert_eq!(batches.len(), REPLICAS as usize, "{batches:?}");
    assert!(events(&status, "RolloutAborted").is_empty());
    // The first old replica goes only once the first batch served a whole interval.
    assert!(
        old_gone_at[0] >= INTERVAL,
        "an old replica went {:?} after the edit, before a watch",
        old_gone_at[0]
    );
    for pair in old_gone_at.windows(2) {
        assert!(
            pair[1] - pair[0] >= INTERVAL - Duration::from_millis(300),
            "two old replicas went {:?} apart, within one watch: {old_gone_at:?}",
            pair[1] - pair[0]
        );
    }
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_answering_half_its_requests_500_is_aborted_in_its_first_batch() {
    let fixture = LbFixture::new("e2e-guard-bad");
    let (controller, _) = serving_v1(&fixture).await;
    let old = ids(&fixture);
    let load = load(&fixture).await;
    fixture.write_spec(&v2(&fixture, "FAIL_RATE: \"0.5\""));
    let started = Instant::now();
    let (mut batch_seen, mut aborted_seen, mut message) = (None, None, String::new());
    loop {
        let status = controller.service_status(&fixture.service).await;
        if batch_seen.is_none() && !events(&status, "RolloutBatch").is_empty() {
            batch_seen = Some(started.elapsed());
        }
        if let (None, Some(m)) = (aborted_seen, events(&status, "RolloutAborted").pop()) {
            aborted_seen = Some(started.elapsed());
            message = m;
        }
        let rotation = fixture.taking_requests().await;
        if aborted_seen.is_some() && ids(&fixture) == old && rotation.len() == REPLICAS as usize {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "no abort, or the old replicas not alone again: {}",
            status["events"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Alone for a while: the aborted template is not tried again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.finish().await;
    assert_eq!(ids(&fixture), old, "the aborted template was tried again");
    let bad: Vec<_> = report
        .failures
        .iter()
        .filter(|f| {
            f.served_by
                .as_deref()
                .is_some_and(|h| !old.iter().any(|id| id.starts_with(h)))
        })
        .collect();
    let batch_seen = batch_seen.expect("a RolloutBatch event before the abort");
    let aborted_seen = aborted_seen.expect("seen");
    println!(
        "bad version (FAIL_RATE=0.5) under a guarded rolling update: batch 1 seen at \
         {batch_seen:.1?}, aborted at {aborted_seen:.1?} after the edit; {} requests, {} \
         failed, all from the new replica; event: {message}",
        report.requests(),
        report.failed_total()
    );
    assert_eq!(
        report.failed_total(),
        bad.len() as u64,
        "failures other than the new version's 500s: {:#?}",
        report.samples
    );
    assert!(
        bad.iter().all(|f| f.class == FailureClass::Status5xx),
        "{:#?}",
        report.samples
    );
    assert!(!bad.is_empty(), "the new version never answered");
    assert!(
        aborted_seen - batch_seen <= INTERVAL + Duration::from_secs(2),
        "aborted {:?} after its batch was ready",
        aborted_seen - batch_seen
    );
    assert!(
        message.contains("new 5xx") && message.contains("vs old 0.0%"),
        "{message}"
    );
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abort_by_command_after_two_batches_restores_the_old_replicas_without_a_failed_request()
{
    let fixture = LbFixture::new("e2e-guard-restore");
    let (controller, old_hash) = serving_v1(&fixture).await;
    let load = load(&fixture).await;
    fixture.write_spec(&v2(&fixture, ""));
    let started = Instant::now();
    while of_template(&fixture, &old_hash) > 2 {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "two batches never passed: {:?}",
            hashes(&fixture)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let path = format!("/api/v1/services/{}/rollout/abort", fixture.service);
    let (code, body) = controller.post(&path, None).await;
    assert_eq!(code, 200, "{body}");
    let asked = Instant::now();
    loop {
        let back = hashes(&fixture) == vec![old_hash.clone(); REPLICAS as usize]
            && fixture.taking_requests().await.len() == REPLICAS as usize;
        if back {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "the old template not restored: {:?}",
            hashes(&fixture)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restored = asked.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.finish().await;
    println!(
        "abort by command with 2 of {REPLICAS} replicas on the new template: the old \
         template back on all {REPLICAS}, serving, {restored:.1?} later; {} requests, {} \
         failed",
        report.requests(),
        report.failed_total()
    );
    assert_eq!(hashes(&fixture), vec![old_hash; REPLICAS as usize]);
    assert_eq!(
        report.failed_total(),
        0,
        "failed requests: {:#?}",
        report.samples
    );
    let status = controller.service_status(&fixture.service).await;
    let aborted = events(&status, "RolloutAborted");
    assert_eq!(aborted.len(), 1, "{}", status["events"]);
    assert!(aborted[0].contains("aborted by command"), "{aborted:?}");
    controller.stop().await;
}
