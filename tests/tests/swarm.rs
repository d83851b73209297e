//! dockscale on real swarms (`run --runtime swarm`): a one-node swarm and a two-node
//! one, each made of private engines. HAProxy runs on this host (managed) and reaches
//! the tasks at their nodes' addresses and published ports, never on an overlay
//! address.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use dockscale_e2e::dockscale_bin;
use dockscale_e2e::haproxy::{in_rotation, LbFixture, Load};
use dockscale_e2e::process::DockscaleProcess;
use dockscale_e2e::swarm::{on_swarm, Swarm};

const LOAD_LIMIT: Duration = Duration::from_secs(90);

/// Waits until HAProxy's servers in rotation are exactly the `n` running tasks, all UP.
async fn converged(
    fixture: &LbFixture,
    swarm: &Swarm,
    n: usize,
    timeout: Duration,
    log: &DockscaleProcess,
) -> Duration {
    let api = fixture.api();
    let start = Instant::now();
    loop {
        let tasks = swarm.task_addrs(&fixture.service).await;
        let rotation = match api.servers_state(&fixture.backend).await {
            Ok(s) => in_rotation(&s),
            Err(_) => Default::default(),
        };
        let up: BTreeSet<SocketAddrV4> = rotation
            .iter()
            .filter(|(_, up)| **up)
            .map(|(a, _)| *a)
            .collect();
        if tasks.len() == n && up == tasks && rotation.len() == n {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "not converged on {n} tasks after {timeout:?}: tasks {tasks:?}, \
             rotation {rotation:?}\n{}",
            log.log_digest(30, 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn swarm_spec(fixture: &LbFixture, replicas: u32, greeting: &str) -> String {
    on_swarm(&fixture.lb_spec(replicas, greeting, ""))
}

fn start_controller(fixture: &LbFixture, swarm: &Swarm, extra: &[&str]) -> DockscaleProcess {
    let mut args = fixture.lb_run_args(&[&["--runtime", "swarm"], extra].concat());
    args.remove(0);
    DockscaleProcess::spawn_with_env(
        &dockscale_bin(),
        args,
        fixture
            .dir
            .path()
            .join(format!("dockscale-{}.log", dockscale_e2e::free_port())),
        vec![("DOCKER_HOST".to_owned(), swarm.docker_host())],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn on_one_node_haproxy_follows_a_scale_a_killed_task_and_a_rollout_without_a_failed_request()
{
    let swarm = Swarm::single("swarm1");
    let fixture = LbFixture::new("e2e-swarm");
    fixture.write_spec(&swarm_spec(&fixture, 2, "one"));
    let mut controller = start_controller(&fixture, &swarm, &[]);

    let took = converged(&fixture, &swarm, 2, Duration::from_secs(60), &controller).await;
    println!("service created: 2 tasks serving through HAProxy after {took:?}");

    fixture.write_spec(&swarm_spec(&fixture, 4, "one"));
    let took = converged(&fixture, &swarm, 4, Duration::from_secs(30), &controller).await;
    println!("scaled 2 -> 4: HAProxy holds the 4 tasks after {took:?}");

    // A task's container killed under load: Swarm replaces it, HAProxy follows.
    let load = Load::start(fixture.bind, "/", 8, LOAD_LIMIT);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let label = format!("label=dockscale.service={}", fixture.service);
    let victim = swarm.manager.docker(&["ps", "-q", "--filter", &label]);
    let victim = victim
        .split_whitespace()
        .next()
        .expect("a task's container")
        .to_owned();
    let before = swarm.task_addrs(&fixture.service).await;
    let killed = Instant::now();
    swarm.manager.docker(&["kill", &victim]);
    while swarm.task_addrs(&fixture.service).await == before {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "Swarm did not replace the task"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replaced = killed.elapsed();
    let took = converged(&fixture, &swarm, 4, Duration::from_secs(30), &controller).await;
    println!("task container killed: Swarm's replacement running after {replaced:?}");
    println!("task container killed: HAProxy holds the 4 running tasks again after {took:?}");
    let report = load.finish().await;
    println!(
        "kill under load: {} ok, {} failed; first failures {:?}",
        report.ok, report.failed, report.failures
    );
    assert!(report.ok > 100, "the load ran: {report:?}");
    assert!(
        report.failed <= 8,
        "at most the requests in flight on the killed task fail: {report:?}"
    );

    // A rollout through Swarm's update, under load: not one request fails.
    let load = Load::start(fixture.bind, "/", 8, LOAD_LIMIT);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    fixture.write_spec(&swarm_spec(&fixture, 4, "two"));
    loop {
        let body = dockscale_e2e::http_get(fixture.bind, "/").await.1;
        let rolled = controller
            .service_status(&fixture.service)
            .await
            .map(|s| s["replicas"]["readyUpdated"] == 4 && s["replicas"]["updated"] == 4)
            .unwrap_or(false);
        if rolled && body.contains("two") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the rollout did not finish: {}",
            controller.log_digest(30, 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = converged(&fixture, &swarm, 4, Duration::from_secs(30), &controller).await;
    println!(
        "rollout: every task replaced {:?} after the edit, HAProxy exact {took:?} later",
        started.elapsed()
    );
    load.finish_without_failures("rollout through Swarm under load")
        .await;

    let status = controller
        .service_status(&fixture.service)
        .await
        .expect("status");
    let tasks = status["tasks"].as_array().expect("tasks in status");
    assert_eq!(
        tasks.iter().filter(|t| t["inRotation"] == true).count(),
        4,
        "{tasks:?}"
    );

    // A restarted controller adopts the service as it is: no update of it, its tasks
    // served throughout.
    let version = |swarm: &Swarm| {
        swarm
            .manager
            .docker(&[
                "service",
                "inspect",
                "--format",
                "{{.Version.Index}}",
                &fixture.service,
            ])
            .trim()
            .to_owned()
    };
    // Swarm itself writes the service once more when its update ends (the state
    // `completed`, after the monitor period): only then is the version settled.
    let update_state = |swarm: &Swarm| {
        swarm
            .manager
            .docker(&[
                "service",
                "inspect",
                "--format",
                "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
                &fixture.service,
            ])
            .trim()
            .to_owned()
    };
    dockscale_e2e::wait_for("Swarm's update completed", Duration::from_secs(30), || {
        match update_state(&swarm) {
            state if state.is_empty() || state == "completed" => Ok(()),
            state => Err(state),
        }
    })
    .await;
    let before = version(&swarm);
    let load = Load::start(fixture.bind, "/", 4, LOAD_LIMIT);
    controller.kill();
    controller.restart();
    controller
        .wait_listening(Duration::from_secs(30))
        .await
        .expect("the restarted controller listens");
    tokio::time::sleep(Duration::from_secs(3)).await;
    converged(&fixture, &swarm, 4, Duration::from_secs(30), &controller).await;
    assert_eq!(
        version(&swarm),
        before,
        "the restart changed the Swarm service"
    );
    load.finish_without_failures("dockscale restarted on Swarm")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_two_nodes_a_node_that_goes_down_leaves_rotation_and_its_tasks_come_back_on_the_other() {
    let mut swarm = Swarm::two_nodes("swarm2");
    let fixture = LbFixture::new("e2e-swarm2");
    let spec = swarm_spec(&fixture, 6, "hello").replace(
        "  loadBalancer:",
        "  placement: {preferences: [{spread: node.id}]}\n  loadBalancer:",
    );
    fixture.write_spec(&spec);
    let controller = start_controller(&fixture, &swarm, &[]);
    let took = converged(&fixture, &swarm, 6, Duration::from_secs(90), &controller).await;
    let worker_addr = swarm.workers[0].node_addr();
    let on_worker = swarm
        .task_addrs(&fixture.service)
        .await
        .iter()
        .filter(|a| *a.ip() == worker_addr)
        .count();
    println!("6 tasks over two nodes serving after {took:?} ({on_worker} on the worker)");
    assert!(
        on_worker >= 2,
        "Swarm spread the tasks: {on_worker} on the worker"
    );

    let load = Load::start(fixture.bind, "/", 8, LOAD_LIMIT);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api = fixture.api();
    let stopped = Instant::now();
    let stop_took = swarm.workers[0].stop();
    // The worker's tasks leave rotation (HAProxy's checks, then Swarm's node state).
    loop {
        let rotation = api
            .servers_state(&fixture.backend)
            .await
            .map(|s| in_rotation(&s))
            .unwrap_or_default();
        let up_on_worker = rotation
            .iter()
            .filter(|(a, up)| *a.ip() == worker_addr && **up)
            .count();
        if up_on_worker == 0 {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(60),
            "the worker's tasks stay UP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out_after = stopped.elapsed();
    converged(&fixture, &swarm, 6, Duration::from_secs(120), &controller).await;
    let report = load.finish().await;
    println!(
        "worker engine stopped ({stop_took:?} to stop): its tasks out of rotation {out_after:?} \
         after the stop began; 6 tasks serving again {:?} after it; load {} ok, {} failed, \
         first failures {:?}",
        stopped.elapsed(),
        report.ok,
        report.failed,
        report.failures
    );
    assert!(report.ok > 100, "the load ran: {report:?}");
    // At most the requests in flight on the node that went down may fail (8 clients);
    // measured here: none, of 33,488 and of 41,206 (a failed connect marks the server
    // DOWN at once, so the retries go elsewhere).
    assert!(
        report.failed <= 8,
        "more than the requests in flight failed when a node went down: {report:?}"
    );
    let tasks = swarm.task_addrs(&fixture.service).await;
    assert!(tasks.iter().all(|a| *a.ip() != worker_addr), "{tasks:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_controller_takes_over_the_swarm_within_the_lease_and_never_acts_before() {
    let swarm = Swarm::single("swarm3");
    let fixture = LbFixture::new("e2e-swarm3");
    fixture.write_spec(&swarm_spec(&fixture, 2, "hello"));
    let mut leader = start_controller(&fixture, &swarm, &["--lease-duration", "3s"]);
    converged(&fixture, &swarm, 2, Duration::from_secs(60), &leader).await;
    let standby = start_controller(&fixture, &swarm, &["--lease-duration", "3s"]);
    standby
        .wait_listening(Duration::from_secs(30))
        .await
        .expect("standby listens");
    // The standby waits, and says for whom.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let (code, body) = standby.get("/readyz").await.expect("readyz");
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("standby"), "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A scale asked while the leader is gone is done only by the standby once it leads.
    let load = Load::start(fixture.bind, "/", 4, LOAD_LIMIT);
    leader.kill();
    let killed = Instant::now();
    fixture.write_spec(&swarm_spec(&fixture, 3, "hello"));
    loop {
        if let Ok((200, _)) = standby.get("/readyz").await {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "no takeover: {}",
            standby.log_digest(20, 20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let takeover = killed.elapsed();
    converged(&fixture, &swarm, 3, Duration::from_secs(30), &standby).await;
    println!(
        "standby took over {takeover:?} after the leader's SIGKILL (lease 3s), and scaled to 3"
    );
    assert!(
        takeover >= Duration::from_secs(2),
        "took over before the lease could lapse: {takeover:?}"
    );
    assert!(
        takeover < Duration::from_secs(6),
        "took over late: {takeover:?}"
    );
    load.finish_without_failures("leader killed, standby took over")
        .await;
    let services = swarm.manager.docker(&[
        "service",
        "ls",
        "-q",
        "--filter",
        &format!("label=dockscale.service={}", fixture.service),
    ]);
    assert_eq!(
        services.split_whitespace().count(),
        1,
        "one service: {services}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_swarm_a_load_step_scales_the_service_up_from_haproxys_queue_and_back_down() {
    const AUTOSCALE: &str = "  autoscale:
    minReplicas: 1
    maxReplicas: 5
    target: {inflightPerReplica: 4}
    behavior:
      scaleUp:   {stabilizationWindow: 0s,  maxStep: 4, period: 4s}
      scaleDown: {stabilizationWindow: 10s, maxStep: 2, period: 4s}
";
    let swarm = Swarm::single("swarm4");
    let fixture = LbFixture::new("e2e-swarm4");
    let spec =
        on_swarm(&fixture.lb_spec(1, "hello", AUTOSCALE)).replace("maxconn: 32", "maxconn: 4");
    fixture.write_spec(&spec);
    let controller = start_controller(&fixture, &swarm, &["--metrics-interval", "1s"]);
    converged(&fixture, &swarm, 1, Duration::from_secs(60), &controller).await;

    // 20 concurrent requests of 500 ms: 5 tasks at 4 in flight each.
    let load = Load::start(fixture.bind, "/?delay=500", 20, Duration::from_secs(40));
    let started = Instant::now();
    let scaled = loop {
        if swarm.task_addrs(&fixture.service).await.len() == 5 {
            let took = converged(&fixture, &swarm, 5, Duration::from_secs(30), &controller).await;
            break started.elapsed() + took;
        }
        assert!(
            started.elapsed() < Duration::from_secs(35),
            "never scaled to 5 tasks: {}",
            controller.log_digest(20, 20)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // At 5 tasks the 20 clients are served 40 requests a second (4 in flight each,
    // 500 ms apiece); one task alone serves 8. Three seconds at 5 tasks proves the
    // step was absorbed, whatever the time it took to scale.
    let before = load.ok();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let at_five = load.ok() - before;
    let report = load.finish().await;
    assert!(
        at_five >= 60,
        "5 tasks served {at_five} requests in 3 s, fewer than 3 tasks would: {report:?}"
    );
    // Swarm picks the tasks a scale-down stops: each leaves rotation as soon as its
    // desired state changes, and a light load meanwhile sees no failure.
    let light = Load::start(fixture.bind, "/", 4, Duration::from_secs(60));
    let stopped = Instant::now();
    converged(&fixture, &swarm, 1, Duration::from_secs(60), &controller).await;
    light
        .finish_without_failures("scale-down 5 -> 1 on Swarm under load")
        .await;
    println!(
        "load step: 5 tasks in rotation {scaled:?} after it began, {at_five} requests \
         served in the next 3 s; back to 1 task {:?} after it stopped; {} ok, {} failed",
        stopped.elapsed(),
        report.ok,
        report.failed
    );
    assert!(report.ok > 100, "{report:?}");
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    let status = controller
        .service_status(&fixture.service)
        .await
        .expect("status");
    let events = status["events"].as_array().cloned().unwrap_or_default();
    assert!(
        events.iter().any(|e| e["reason"] == "Autoscaled"),
        "the autoscaler said why: {events:?}"
    );
}
