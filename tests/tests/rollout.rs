//! Rolling updates, crash-loop back-off and `--dry-run`, against a real Docker engine
//! and a real HAProxy.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use dockscale_e2e::haproxy::{LbFixture, Load};
use dockscale_e2e::{get_with_cookies, sh, template_hash, wait_for, Fixture, RunningController};

const LOAD_LIMIT: Duration = Duration::from_secs(90);

fn condition<'a>(status: &'a serde_json::Value, kind: &str) -> Option<&'a serde_json::Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// Waits until `n` replicas run.
async fn running(fixture: &Fixture, n: usize) {
    wait_for("replicas running", Duration::from_secs(60), || {
        let running = fixture.running().len();
        if running == n {
            Ok(())
        } else {
            Err(running)
        }
    })
    .await;
}

/// Template hashes of the running replicas.
fn hashes(fixture: &Fixture) -> Vec<String> {
    fixture
        .running()
        .iter()
        .map(|c| template_hash(&c.id))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_change_rolls_every_replica_under_load_without_a_failed_request() {
    let fixture = LbFixture::new("e2e-roll");
    let rollout = "  rollout: {maxSurge: 1, maxUnavailable: 0}\n";
    fixture.write_spec(&fixture.lb_spec(6, "v1", rollout));
    let controller = RunningController::start(&fixture.lb_run_args(&[]));
    fixture.serving(6).await;
    let old: BTreeSet<String> = fixture.running().into_iter().map(|c| c.id).collect();
    let old_hash = hashes(&fixture)[0].clone();

    let load = Load::start(fixture.bind, "/?delay=5", 16, LOAD_LIMIT);
    tokio::time::sleep(Duration::from_secs(1)).await;
    fixture.write_spec(&fixture.lb_spec(6, "v2", rollout));
    let started = Instant::now();
    // Sample the backend while it rolls: servers ready (in rotation, not draining, UP).
    let api = fixture.api();
    let mut samples = Vec::new();
    let took = loop {
        let servers = api.servers_state(&fixture.backend).await.expect("servers");
        let ready = servers
            .iter()
            .filter(|s| s.running() && !s.draining())
            .count();
        samples.push(ready);
        let running = fixture.running();
        let done = running.len() == 6
            && running.iter().all(|c| !old.contains(&c.id))
            && ready == 6
            && hashes(&fixture).iter().all(|h| *h != old_hash);
        if done {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "rollout stuck; samples {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "rollout of 6 replicas in {took:?}; ready servers min {} over {} samples",
        samples.iter().min().copied().unwrap_or(0),
        samples.len()
    );
    load.finish_without_failures("rollout under load").await;
    assert!(
        samples.iter().all(|r| *r >= 6),
        "ready dropped below desired - maxUnavailable: {samples:?}"
    );

    // The controller completes the rollout once it has seen the last old container
    // go, which Docker can show a moment before it tells the controller.
    wait_for("Rollout complete", Duration::from_secs(10), || {
        let s = dockscale_e2e::block(controller.service_status(&fixture.service));
        let complete =
            s["replicas"]["updated"] == 6 && s["events"].to_string().contains("Rollout complete");
        if complete {
            Ok(())
        } else {
            Err(s)
        }
    })
    .await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_stops_the_rollout_and_the_old_replicas_keep_serving() {
    let fixture = LbFixture::new("e2e-noimg");
    fixture.write_spec(&fixture.lb_spec(2, "v1", ""));
    let controller = RunningController::start(&fixture.lb_run_args(&[]));
    fixture.serving(2).await;
    let old: BTreeSet<String> = fixture.running().into_iter().map(|c| c.id).collect();

    let broken = fixture.lb_spec(2, "v2", "").replace(
        "image: dockscale-webapp:latest",
        "image: dockscale-no-such-image:1.0",
    );
    assert!(
        broken.contains("imagePullPolicy: Never"),
        "a missing image must never be looked for in a registry"
    );
    fixture.write_spec(&broken);
    let (_, took) = wait_for("ImageNotFound reported", Duration::from_secs(30), || {
        let s = dockscale_e2e::block(controller.service_status(&fixture.service));
        match condition(&s, "ReplicaFailure") {
            Some(c) if c["status"] == true && c["reason"] == "ImageNotFound" => Ok(s),
            _ => Err(s["conditions"].clone()),
        }
    })
    .await;
    println!("missing image reported in {took:?}");
    let s = controller.service_status(&fixture.service).await;
    let events = s["events"].to_string();
    assert!(events.contains("dockscale-no-such-image:1.0"), "{events}");
    // Old replicas still serve, none was touched.
    let none = BTreeMap::new();
    for _ in 0..10 {
        let (code, _, _) = get_with_cookies(fixture.bind, "/", &none)
            .await
            .expect("get");
        assert_eq!(code, 200);
    }
    let now: BTreeSet<String> = fixture.running().into_iter().map(|c| c.id).collect();
    assert_eq!(
        now, old,
        "old replicas were removed while the new image is missing"
    );

    // Fixing the spec resumes and completes the rollout.
    fixture.write_spec(&fixture.lb_spec(2, "v3", ""));
    let (_, took) = wait_for("rollout to v3", Duration::from_secs(60), || {
        let s = dockscale_e2e::block(controller.service_status(&fixture.service));
        let running = fixture.running();
        let complete = running.len() == 2
            && running.iter().all(|c| !old.contains(&c.id))
            && s["replicas"]["ready"] == 2
            && s["replicas"]["updated"] == 2
            && condition(&s, "ReplicaFailure").is_some_and(|c| c["status"] == false);
        if complete {
            Ok(())
        } else {
            Err(s["replicas"].clone())
        }
    })
    .await;
    println!("fixed spec rolled out in {took:?}");
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_keeps_exiting_is_replaced_with_growing_back_off() {
    let fixture = Fixture::new("e2e-crash");
    // PORT that is not a number: the demo server exits at once with an error.
    let spec = fixture
        .pool_spec(1)
        .replace("env: {GREETING: hello}", "env: {PORT: not-a-port}");
    fixture.write_spec(&spec);
    let controller = RunningController::start(&fixture.run_args(&["--crash-backoff-base", "1s"]));

    // When dockscale asked for each container (its created-at label, on dockscale's
    // clock: what the back-off is measured against, not when a `docker ps` under load
    // happened to list it).
    let mut asked_at: BTreeMap<String, i64> = BTreeMap::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) && asked_at.len() < 5 {
        for c in fixture.containers() {
            if let Some(at) = c.created_at_ns {
                asked_at.entry(c.id).or_insert(at);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut times: Vec<i64> = asked_at.values().copied().collect();
    times.sort();
    let gaps: Vec<Duration> = times
        .windows(2)
        .map(|w| Duration::from_nanos(u64::try_from(w[1] - w[0]).unwrap_or(0)))
        .collect();
    println!("replacement gaps with a 1s base: {gaps:?}");
    assert!(gaps.len() >= 3, "too few replacements: {times:?}");
    // Back-off 1s, 2s, 4s after the first immediate replacement (plus the time the
    // replica takes to exit): each gap at least the back-off, and growing.
    for (i, gap) in gaps.iter().enumerate().skip(1) {
        let backoff = Duration::from_secs(1 << (i - 1));
        assert!(
            *gap >= backoff,
            "gap {i} is {gap:?}, shorter than the back-off {backoff:?}: {gaps:?}"
        );
    }
    assert!(
        gaps[gaps.len() - 1] > gaps[1],
        "the back-off did not grow: {gaps:?}"
    );

    let s = controller.service_status(&fixture.service).await;
    let failure = condition(&s, "ReplicaFailure").expect("ReplicaFailure condition");
    assert_eq!(failure["reason"], "CrashLoopBackOff", "{s}");
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_prints_the_plan_of_a_scale_change_and_changes_nothing() {
    let fixture = Fixture::new("e2e-dry");
    fixture.write_spec(&fixture.pool_spec(2));
    let controller = RunningController::start(&fixture.run_args(&[]));
    running(&fixture, 2).await;
    controller.stop().await;
    let before: BTreeSet<String> = fixture.containers().into_iter().map(|c| c.id).collect();

    fixture.write_spec(&fixture.pool_spec(4));
    let mut args = fixture.run_args(&["--dry-run"]);
    args.remove(0); // the program name
    let out = sh(
        dockscale_e2e::dockscale_bin().to_str().expect("utf-8 path"),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let expected = format!(
        "{svc}: desired 4, current 2, ready 2, up-to-date 2
  create network (if missing)
  create 2 replica(s)
",
        svc = fixture.service
    );
    assert_eq!(out, expected);

    fixture.write_spec(&fixture.pool_spec(1));
    let out = sh(
        dockscale_e2e::dockscale_bin().to_str().expect("utf-8 path"),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(
        out.starts_with(&format!(
            "{}: desired 1, current 2, ready 2, up-to-date 2\n",
            fixture.service
        )),
        "{out}"
    );
    assert_eq!(out.matches("stop and remove").count(), 1, "{out}");

    let after: BTreeSet<String> = fixture.containers().into_iter().map(|c| c.id).collect();
    assert_eq!(after, before, "a dry run changed containers");
}
