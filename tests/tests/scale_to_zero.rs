//! Scale to zero end to end, on the real engine and a real HAProxy: an idle service
//! drained to no replica, a burst of 50 requests held by HAProxy's Lua action while the
//! first replica starts (every one answered 200 by a replica, none before a server was
//! UP), the cold-start time printed, and a
//! template that never gets ready answered 503 with `Retry-After` after
//! `activationTimeout`; HAProxy never reloaded (the same master and worker).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dockscale_e2e::haproxy::LbFixture;
use dockscale_e2e::{get_host, wait_until, RunningController};

/// A GET over a fresh connection: status, the header block, the body.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    get_host(addr, &addr.to_string(), path).await
}

fn autoscale(idle_after: &str, activation_timeout: &str) -> String {
    format!(
        "  autoscale:
    minReplicas: 0
    maxReplicas: 3
    target: {{inflightPerReplica: 8}}
    scaleToZero: {{idleAfter: {idle_after}, activationTimeout: {activation_timeout}}}
"
    )
}

/// The HAProxy master's pid and its worker's (the one answering the runtime API).
async fn haproxy_pids(fixture: &LbFixture) -> (Option<i32>, u32) {
    let worker = fixture.api().info().await.expect("show info").pid;
    (fixture.master_pid(), worker)
}

/// The service's desired and ready replicas from its status (`u64::MAX` while the
/// status does not list it yet).
async fn counts(controller: &RunningController, service: &str) -> (u64, u64) {
    let s = controller
        .try_service_status(service)
        .await
        .unwrap_or_default();
    (
        s["replicas"]["desired"].as_u64().unwrap_or(u64::MAX),
        s["replicas"]["ready"].as_u64().unwrap_or(u64::MAX),
    )
}

/// The value of one series in dockscale's `/metrics`, 0 when absent.
async fn metric(controller: &RunningController, series: &str) -> f64 {
    let (_, text) = controller.get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits up to `within` until every one of `series` in dockscale's `/metrics` is at
/// least `at_least`; panics with the last values read.
async fn wait_for_metrics(
    controller: &RunningController,
    series: &[String],
    at_least: f64,
    within: Duration,
) {
    wait_until(
        &format!("{series:?} at {at_least} or more"),
        within,
        Duration::from_millis(200),
        || async move {
            let mut values = Vec::new();
            for one in series {
                values.push(metric(controller, one).await);
            }
            if values.iter().all(|v| *v >= at_least) {
                Ok(())
            } else {
                Err(values)
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_service_goes_to_zero_and_held_requests_wake_it_without_a_503() {
    let fixture = LbFixture::new("e2e-zero");
    let svc = fixture.service.clone();
    fixture.write_spec(&fixture.lb_spec(1, "hello", &autoscale("3s", "20s")));
    let controller = RunningController::start(&fixture.lb_run_args(&["--metrics-interval", "1s"]));
    controller.wait_listening().await;

    wait_until(
        "one replica ready",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let c = &controller;
            let svc = svc.clone();
            async move {
                match counts(c, &svc).await {
                    (1, 1) => Ok(()),
                    other => Err(other),
                }
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, _, body) = get(fixture.bind, "/").await.expect("GET");
    assert_eq!(code, 200, "{body}");
    let pids = haproxy_pids(&fixture).await;

    // 3 s without a request: the replica is drained and removed.
    let idle_since = Instant::now();
    let ((), _) = wait_until(
        "zero replicas",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let c = &controller;
            let svc = svc.clone();
            let running = fixture.running().len();
            async move {
                match (counts(c, &svc).await, running) {
                    ((0, 0), 0) => Ok(()),
                    other => Err(other),
                }
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let to_zero = idle_since.elapsed();
    let status = controller.service_status(&svc).await;
    assert!(
        status["events"].to_string().contains("ScaledToZero"),
        "{status:#}"
    );

    // A burst at zero: HAProxy holds every request while the first replica starts.
    const N: usize = 50;
    let first = Instant::now();
    let requests: Vec<_> = (0..N)
        .map(|_| {
            let bind = fixture.bind;
            tokio::spawn(async move {
                let sent = Instant::now();
                let answer = get(bind, "/").await;
                (answer, sent.elapsed(), Instant::now())
            })
        })
        .collect();
    // Meanwhile, when HAProxy was last seen with no server taking requests: no answer
    // may come before that (a request answered then was not held).
    let last_seen_empty = async {
        let mut last_empty = first;
        let deadline = first + Duration::from_secs(20);
        while Instant::now() < deadline {
            let before = Instant::now();
            if !fixture.taking_requests().await.is_empty() {
                return last_empty;
            }
            last_empty = before;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("no server took requests within 20 s of the burst");
    };
    // How soon dockscale learns of them: the status asks for a replica.
    let woken = wait_until(
        "woken",
        Duration::from_secs(5),
        Duration::from_millis(5),
        || {
            let c = &controller;
            let svc = svc.clone();
            async move {
                match counts(c, &svc).await {
                    (d, _) if d >= 1 && d != u64::MAX => Ok(()),
                    other => Err(other),
                }
            }
        },
    );
    let (woken, last_empty) = tokio::join!(woken, last_seen_empty);
    let ((), woken_after) = woken.unwrap_or_else(|e| panic!("{e}"));
    let mut answers = Vec::new();
    for r in requests {
        answers.push(r.await.expect("request task"));
    }
    let cold_start = answers
        .iter()
        .map(|(_, took, _)| *took)
        .max()
        .unwrap_or_default();
    let quickest = answers
        .iter()
        .map(|(_, took, _)| *took)
        .min()
        .unwrap_or_default();
    println!(
        "idle -> zero replicas in {:.2}s (idleAfter 3s); woken {:.3}s after the first held \
         request (seen in the status); cold start: {N} concurrent requests at zero answered \
         in {:.3}s..{:.3}s from the first request (all within {:.3}s)",
        to_zero.as_secs_f64(),
        woken_after.as_secs_f64(),
        quickest.as_secs_f64(),
        cold_start.as_secs_f64(),
        first.elapsed().as_secs_f64(),
    );
    let replicas: Vec<String> = fixture
        .running()
        .iter()
        .map(|c| c.id[..12].to_owned())
        .collect();
    for (answer, took, done) in &answers {
        let (code, head, body) = answer.as_ref().expect("an answer");
        assert_eq!(*code, 200, "after {took:?}: {head}\n{body}");
        assert!(
            *done > last_empty,
            "answered {:?} before HAProxy was last seen with no server",
            last_empty - *done
        );
        assert!(
            replicas
                .iter()
                .any(|id| body.contains(&format!("hostname: {id}"))),
            "served by one of the replicas {replicas:?}: {body}"
        );
    }

    let status = controller.service_status(&svc).await;
    let events = status["events"].to_string();
    assert!(events.contains("woken by a held request"), "{status:#}");
    let wakes = metric(
        &controller,
        &format!("dockscale_scale_to_zero_wakes_total{{service=\"{svc}\",trigger=\"held\"}}"),
    )
    .await;
    assert_eq!(wakes, 1.0, "one wake, by a held request");
    // Read at the next tick at the latest.
    wait_for_metrics(
        &controller,
        &[
            format!("dockscale_held_requests_total{{service=\"{svc}\"}}"),
            format!("dockscale_hold_duration_seconds_count{{service=\"{svc}\"}}"),
        ],
        N as f64,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        haproxy_pids(&fixture).await,
        pids,
        "HAProxy was reloaded or restarted"
    );
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_never_gets_ready_leaves_a_503_with_retry_after() {
    let fixture = LbFixture::new("e2e-zero-503");
    let svc = fixture.service.clone();
    // Nothing listens on the template's port: the replica never answers.
    let spec = fixture
        .lb_spec(0, "hello", &autoscale("30s", "3s"))
        .replace("    port: 8080\n", "    port: 9999\n");
    fixture.write_spec(&spec);
    let controller = RunningController::start(&fixture.lb_run_args(&["--metrics-interval", "1s"]));
    controller.wait_listening().await;
    wait_until(
        "the frontend",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async { tokio::net::TcpStream::connect(fixture.bind).await.map(drop) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let pids = haproxy_pids(&fixture).await;
    assert_eq!(counts(&controller, &svc).await, (0, 0));

    let sent = Instant::now();
    let (code, head, body) = get(fixture.bind, "/").await.expect("an answer");
    let held_for = sent.elapsed();
    println!(
        "a request held for {:.3}s, then {code}",
        held_for.as_secs_f64()
    );
    assert_eq!(code, 503, "{head}\n{body}");
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case("retry-after: 3")),
        "{head}"
    );
    assert!(body.contains("retry later"), "{body}");
    assert!(
        held_for >= Duration::from_secs(3) && held_for < Duration::from_secs(5),
        "held for {held_for:?}, activationTimeout 3s"
    );
    // It woke the service: a replica was created, and it is not ready.
    assert_eq!(fixture.running().len(), 1, "one replica started");
    let (desired, ready) = counts(&controller, &svc).await;
    assert_eq!((desired, ready), (1, 0));
    wait_for_metrics(
        &controller,
        &[format!(
            "dockscale_held_request_timeouts_total{{service=\"{svc}\"}}"
        )],
        1.0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(haproxy_pids(&fixture).await, pids, "HAProxy was reloaded");
    controller.stop().await;
}
