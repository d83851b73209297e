//! The autoscaler end to end: a load step of slow requests through a real HAProxy
//! scales the service up until the queue drains, and back to `minReplicas` after the
//! load stops, with no failed request; a schedule window raises the floor without
//! load, and its end comes down through the scale-down window.

use std::time::{Duration, Instant, SystemTime};

use dockscale_e2e::haproxy::{backend_qcur, in_rotation, LbFixture, Load};
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

/// A window that is open now: opened at the start of this minute (UTC) by `MM HH * * *`,
/// lasting until `open_for` from now. Returns the cron expression, the duration and
/// when the window closes.
fn window_open_now(open_for: Duration) -> (String, String, Instant) {
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970");
    let secs = since_epoch.as_secs();
    let (minute, hour, second) = ((secs / 60) % 60, (secs / 3600) % 24, secs % 60);
    // The minute started `second` (and a fraction) ago.
    let into_minute =
        Duration::from_secs(second) + Duration::from_nanos(u64::from(since_epoch.subsec_nanos()));
    let duration = (into_minute + open_for).as_secs() + 1;
    let closes = Instant::now() + Duration::from_secs(duration) - into_minute;
    (
        format!("{minute} {hour} * * *"),
        format!("{duration}s"),
        closes,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_window_raises_the_floor_without_load_and_its_end_is_gradual() {
    let fixture = LbFixture::new("e2e-sched");
    let (cron, duration, closes) = window_open_now(Duration::from_secs(30));
    let spec = fixture.lb_spec(
        1,
        "hello",
        &format!(
            "  autoscale:
    minReplicas: 1
    maxReplicas: 4
    target: {{inflightPerReplica: 4}}
    schedules: [{{cron: \"{cron}\", duration: {duration}, minReplicas: 3}}]
    behavior:
      scaleUp:   {{stabilizationWindow: 0s, maxStep: 4, period: 2s}}
      scaleDown: {{stabilizationWindow: 8s, maxStep: 1, period: 2s}}
"
        ),
    );
    fixture.write_spec(&spec);
    let controller = RunningController::start(&fixture.lb_run_args(&["--metrics-interval", "1s"]));
    controller.wait_listening().await;
    let start = Instant::now();

    // No load: the window's floor alone brings 3 replicas, serving in HAProxy.
    let api = fixture.api();
    let ready_at = loop {
        // The first pass may not have loaded the spec yet: unknown for a moment.
        let (code, body) = controller
            .get(&format!("/api/v1/services/{}", fixture.service))
            .await;
        let s: serde_json::Value = if code == 200 {
            serde_json::from_str(&body).expect("status JSON")
        } else {
            serde_json::json!({ "answered": code, "body": body })
        };
        // HAProxy may still be starting: no servers yet.
        let listed = api
            .servers_state(&fixture.backend)
            .await
            .unwrap_or_default();
        let up = in_rotation(&listed).values().filter(|up| **up).count();
        if s["replicas"]["ready"] == 3 && up == 3 {
            break start.elapsed();
        }
        assert!(
            Instant::now() < closes,
            "3 replicas not ready and UP before the window closed: {s}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let s = controller.service_status(&fixture.service).await;
    let a = &s["autoscaler"];
    assert_eq!(a["signal"], "schedule", "{a}");
    assert_eq!(a["schedule"]["active"]["minReplicas"], 3, "{a}");
    assert_eq!(a["schedule"]["active"]["cron"], cron.as_str(), "{a}");
    let message = a["schedule"]["active"]["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with(&format!(
            "schedule \"{cron}\" (UTC) holds at least 3 until "
        )),
        "{message}"
    );
    // Tomorrow's, at the same minute.
    assert_eq!(a["schedule"]["next"]["minReplicas"], 3, "{a}");
    let (_, metrics) = controller.get("/metrics").await;
    let floor = format!(
        "dockscale_autoscaler_schedule_floor{{service=\"{}\"}} 3",
        fixture.service
    );
    assert!(metrics.contains(&floor), "no `{floor}` in /metrics");

    // The window closes: the count holds for the 8 s scale-down window, then comes
    // down one replica per 2 s period, through drain, to minReplicas.
    tokio::time::sleep(closes.saturating_duration_since(Instant::now())).await;
    let mut desired = Vec::new();
    let settled = loop {
        let s = controller.service_status(&fixture.service).await;
        let d = s["replicas"]["desired"].as_u64().unwrap_or(0);
        desired.push((closes.elapsed(), d));
        if d == 1 && s["replicas"]["ready"] == 1 && fixture.running().len() == 1 {
            break closes.elapsed();
        }
        assert!(
            closes.elapsed() < Duration::from_secs(30),
            "not back to 1 replica: {desired:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let first_drop = desired
        .iter()
        .find(|(_, d)| *d < 3)
        .map(|(t, _)| *t)
        .expect("came down");
    println!(
        "window open at the start: 3 replicas ready and UP {ready_at:?} after start; \
         window closed: first replica removed {first_drop:?} after, back to 1 {settled:?} after"
    );
    assert!(
        first_drop >= Duration::from_secs(6),
        "a cliff: down {first_drop:?} after the window closed ({desired:?})"
    );
    assert!(
        desired
            .windows(2)
            .all(|w| w[0].1.saturating_sub(w[1].1) <= 1),
        "more than one replica at a time: {desired:?}"
    );
    let (_, metrics) = controller.get("/metrics").await;
    let floor = format!(
        "dockscale_autoscaler_schedule_floor{{service=\"{}\"}} 0",
        fixture.service
    );
    assert!(metrics.contains(&floor), "no `{floor}` in /metrics");
    controller.stop().await;
}
