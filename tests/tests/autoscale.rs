//! The autoscaler end to end: a load step of slow requests through a real HAProxy
//! scales the service up until the queue drains, and back to `minReplicas` after the
//! load stops, with no failed request.

use std::time::{Duration, Instant};

use dockscale_e2e::haproxy::{backend_qcur, LbFixture, Load};
use dockscale_e2e::RunningController;

const AUTOSCALE: &str = "  autoscale:
    minReplicas: 1
    maxReplicas: 6
    target: {inflightPerReplica: 4}
    behavior:
      scaleUp:   {stabilizationWindow: 0s,  maxStep: 4, period: 4s}
      scaleDown: {stabilizationWindow: 10s, maxStep: 2, period: 4s}
";

struct Point {
    t: Duration,
    demand: f64,
    desired: u64,
    ready: u64,
    qcur: u64,
}

async fn sample(controller: &RunningController, fixture: &LbFixture, start: Instant) -> Point {
    let (_, body) = controller
        .get(&format!("/api/v1/services/{}", fixture.service))
        .await;
    let s: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    let qcur = backend_qcur(&fixture.api(), &fixture.backend).await;
    Point {
        t: start.elapsed(),
        demand: s["autoscaler"]["demand"].as_f64().unwrap_or(0.0),
        desired: s["replicas"]["desired"].as_u64().unwrap_or(0),
        ready: s["replicas"]["ready"].as_u64().unwrap_or(0),
        qcur,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_load_step_scales_up_until_the_queue_drains_and_back_down_after() {
    let fixture = LbFixture::new("e2e-auto");
    let spec = fixture
        .lb_spec(1, "hello", AUTOSCALE)
        .replace("maxconn: 32", "maxconn: 4");
    fixture.write_spec(&spec);
    let controller = RunningController::start(&fixture.lb_run_args(&["--metrics-interval", "1s"]));
    controller.wait_listening().await;
    let start = Instant::now();
    let mut timeline = Vec::new();
    loop {
        let p = sample(&controller, &fixture, start).await;
        let ready = p.ready;
        timeline.push(p);
        if ready == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the first replica never served"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 24 concurrent requests of 500 ms: 6 replicas at 4 in flight each.
    let load_started = start.elapsed();
    let load = Load::start(fixture.bind, "/?delay=500", 24, Duration::from_secs(25));
    let mut scaled_at = None;
    let mut drained_at = None;
    while start.elapsed() < load_started + Duration::from_secs(25) {
        let p = sample(&controller, &fixture, start).await;
        if p.ready == 6 && scaled_at.is_none() {
            scaled_at = Some(p.t - load_started);
        }
        if scaled_at.is_some() && drained_at.is_none() && p.qcur <= 1 {
            drained_at = Some(p.t - load_started);
        }
        timeline.push(p);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let report = load.finish().await;
    let load_stopped = start.elapsed();

    let mut settled_at = None;
    while start.elapsed() < load_stopped + Duration::from_secs(60) {
        let p = sample(&controller, &fixture, start).await;
        let done = p.ready == 1 && p.desired == 1 && fixture.running().len() == 1;
        timeline.push(p);
        if done {
            settled_at = Some(start.elapsed() - load_stopped);
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    println!("t_seconds,demand,desired,ready,qcur");
    for p in &timeline {
        println!(
            "{:.1},{:.1},{},{},{}",
            p.t.as_secs_f64(),
            p.demand,
            p.desired,
            p.ready,
            p.qcur
        );
    }
    println!(
        "load step -> 6 ready in {scaled_at:?}, queue near zero at {drained_at:?}; \
         load stop -> back to 1 in {settled_at:?}; {} ok, {} failed",
        report.ok, report.failed
    );
    assert!(scaled_at.is_some(), "never reached 6 ready replicas");
    assert!(drained_at.is_some(), "the queue never drained");
    assert!(settled_at.is_some(), "never scaled back to minReplicas");
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert!(report.ok > 100, "{report:?}");
    // Never above the maximum.
    assert!(timeline.iter().all(|p| p.desired <= 6));
    controller.stop().await;
}
