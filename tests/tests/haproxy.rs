//! Services behind a real HAProxy: the backend follows the replicas through the
//! runtime API, under load, with no failed request and no reload.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use dockscale_e2e::haproxy::{hostname_of, in_rotation, servers, ExternalHaproxy, LbFixture, Load};
use dockscale_e2e::{get_with_cookies, sh, wait_for, RunningController};

const LOAD_LIMIT: Duration = Duration::from_secs(60);

/// Waits until the servers in rotation are exactly the running replicas, all UP, and
/// there are `n` of them.
async fn converged(fixture: &LbFixture, n: usize, timeout: Duration) -> Duration {
    let api = fixture.api();
    let start = Instant::now();
    loop {
        let replicas: BTreeSet<SocketAddrV4> = fixture.replica_addrs().into_values().collect();
        let rotation = match api.servers_state(&fixture.backend).await {
            Ok(s) => in_rotation(&s),
            Err(_) => BTreeMap::new(),
        };
        let up: BTreeSet<SocketAddrV4> = rotation
            .iter()
            .filter(|(_, up)| **up)
            .map(|(a, _)| *a)
            .collect();
        if replicas.len() == n
            && fixture.containers().len() == n
            && up == replicas
            && rotation.len() == n
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "not converged on {n} after {timeout:?}: replicas {replicas:?}, rotation {rotation:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_backend_is_exactly_the_replicas_and_sessions_stick() {
    let fixture = LbFixture::new("e2e-lb");
    fixture.write_spec(&fixture.lb_spec(3, "hello", ""));
    let controller = RunningController::start(&fixture.lb_run_args(&[]));
    let took = converged(&fixture, 3, Duration::from_secs(30)).await;
    println!("0 -> 3 replicas serving through HAProxy in {took:?}");

    // Free slots are in maintenance, weight 0, pointing nowhere.
    let all = servers(&fixture.api(), &fixture.backend).await;
    for s in all.iter().filter(|s| s.in_maintenance()) {
        assert!(
            s.addr.is_unspecified() && s.user_weight == 0,
            "free slot {s:?}"
        );
    }
    let mode = sh(
        "stat",
        &[
            "-c",
            "%a",
            &fixture
                .state_dir()
                .join("haproxy.sock")
                .display()
                .to_string(),
        ],
    );
    assert_eq!(mode.trim(), "600", "the admin socket is private");

    // 30 requests without cookies reach the 3 replicas.
    let none = BTreeMap::new();
    let mut hosts = BTreeSet::new();
    for _ in 0..30 {
        let (status, _, body) = get_with_cookies(fixture.bind, "/", &none)
            .await
            .expect("get");
        assert_eq!(status, 200, "{body}");
        hosts.insert(hostname_of(&body).expect("hostname line"));
    }
    assert_eq!(hosts.len(), 3, "hostnames seen: {hosts:?}");

    // A session keeps its replica (HAProxy's cookie) and its counter (the app's).
    let mut jar = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for i in 1..=6 {
        let (status, set, body) = get_with_cookies(fixture.bind, "/", &jar)
            .await
            .expect("get");
        assert_eq!(status, 200);
        jar.extend(set);
        seen.insert(hostname_of(&body).expect("hostname"));
        assert!(body.contains(&format!("count: {i}")), "request {i}: {body}");
    }
    assert!(jar.contains_key("DSSERVER"), "HAProxy's cookie: {jar:?}");
    assert_eq!(seen.len(), 1, "a session moved between replicas: {seen:?}");

    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_under_load_fails_no_request_and_never_reloads() {
    let fixture = LbFixture::new("e2e-lbscale");
    fixture.write_spec(&fixture.lb_spec(2, "hello", ""));
    let controller = RunningController::start(&fixture.lb_run_args(&[]));
    converged(&fixture, 2, Duration::from_secs(30)).await;
    let api = fixture.api();
    let master = fixture.master_pid().expect("master pid");
    let before = api.info().await.expect("show info");

    let load = Load::start(fixture.bind, "/?delay=5", 16, LOAD_LIMIT);
    tokio::time::sleep(Duration::from_secs(2)).await;
    fixture.write_spec(&fixture.lb_spec(6, "hello", ""));
    let up = converged(&fixture, 6, Duration::from_secs(30)).await;
    println!("2 -> 6 under load in {up:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    fixture.write_spec(&fixture.lb_spec(2, "hello", ""));
    let down = converged(&fixture, 2, Duration::from_secs(30)).await;
    println!("6 -> 2 under load in {down:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.finish_without_failures("scale 2 -> 6 -> 2 under load")
        .await;

    let after = api.info().await.expect("show info");
    assert_eq!(
        fixture.master_pid(),
        Some(master),
        "the master was restarted"
    );
    assert_eq!(
        after.pid, before.pid,
        "the worker changed: HAProxy was reloaded"
    );
    assert!(
        after.uptime_sec >= before.uptime_sec,
        "uptime went back: {before:?} -> {after:?}"
    );
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replica_leaves_rotation_on_the_die_event() {
    let fixture = LbFixture::new("e2e-lbkill");
    fixture.write_spec(&fixture.lb_spec(3, "hello", ""));
    let controller = RunningController::start(&fixture.lb_run_args(&[]));
    converged(&fixture, 3, Duration::from_secs(30)).await;
    let api = fixture.api();
    let addrs = fixture.replica_addrs();
    let (victim, victim_addr) = addrs
        .iter()
        .next()
        .map(|(n, a)| (n.clone(), *a))
        .expect("a replica");

    let load = Load::start(fixture.bind, "/?delay=5", 16, LOAD_LIMIT);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Through the API, not the CLI (a busy host can take a second to start `docker`),
    // and watched while the call is under way: the engine answers a kill only once
    // the container is down, which under load can be seconds after its `die` event.
    let docker = dockscale::runtime::docker::DockerRuntime::connect()
        .await
        .expect("docker");
    let killed = Instant::now();
    tracing::info!(container = %victim, "killing a replica");
    let kill = {
        let victim = victim.clone();
        tokio::spawn(async move { docker.client().kill_container(&victim, None).await })
    };
    let out_of_rotation = loop {
        let rotation = in_rotation(&servers(&api, &fixture.backend).await);
        if !rotation.contains_key(&victim_addr) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "still in rotation: {rotation:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("docker kill -> out of rotation in {out_of_rotation:?}");
    kill.await.expect("kill task").expect("docker kill");
    // HAProxy's own checks (inter 1s, fall 2) need 2 s or more to notice; the die
    // event must be faster than that.
    assert!(
        out_of_rotation < Duration::from_secs(1),
        "the server left rotation only after {out_of_rotation:?}"
    );
    converged(&fixture, 3, Duration::from_secs(30)).await;
    let report = load.finish().await;
    println!(
        "docker kill under load: {} ok, {} failed; first failures: {:?}",
        report.ok, report.failed, report.failures
    );
    assert!(report.ok > 100, "the load ran: {report:?}");
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkilled_haproxy_serves_again_with_its_servers_within_300ms() {
    let fixture = LbFixture::new("e2e-lbsigkill");
    fixture.write_spec(&fixture.lb_spec(3, "hello", ""));
    let controller = RunningController::start(&fixture.lb_run_args(&[]));
    converged(&fixture, 3, Duration::from_secs(30)).await;
    let replicas: BTreeSet<String> = fixture.replica_addrs().into_keys().collect();
    let none = BTreeMap::new();
    let mut recoveries = Vec::new();
    for round in 0..5 {
        let master = fixture.master_pid().expect("master pid");
        let pids = dockscale_e2e::haproxy::with_children(master);
        assert!(pids.len() >= 2, "a master and its worker: {pids:?}");
        let killed = Instant::now();
        for pid in &pids {
            sh("kill", &["-KILL", &pid.to_string()]);
        }
        // Serving again: a request through the frontend answered by one of the replicas.
        let took = loop {
            if let Ok((200, _, body)) = get_with_cookies(fixture.bind, "/", &none).await {
                let host = hostname_of(&body).unwrap_or_default();
                if fixture.running().iter().any(|c| c.id.starts_with(&host)) {
                    break killed.elapsed();
                }
            }
            assert!(
                killed.elapsed() < Duration::from_secs(10),
                "HAProxy did not serve again within 10s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        println!("round {round}: SIGKILL of HAProxy (pids {pids:?}) -> serving again in {took:?}");
        recoveries.push(took);
        // Every server is back in rotation, the containers untouched.
        converged(&fixture, 3, Duration::from_secs(10)).await;
        let now: BTreeSet<String> = fixture.replica_addrs().into_keys().collect();
        assert_eq!(now, replicas, "replicas were replaced");
    }
    let mut sorted = recoveries.clone();
    sorted.sort();
    let (median, worst) = (sorted[sorted.len() / 2], sorted[sorted.len() - 1]);
    println!("HAProxy SIGKILL recovery: {recoveries:?}, median {median:?}, worst {worst:?}");
    // The target is 300 ms; the test runs alone (see .config/nextest.toml), where rounds
    // take 70-85 ms even beside a compiling build. One round slowed by a busy machine
    // (HAProxy's start is CPU work) does not fail the test; a median of 5 above the
    // target, or a worst round above 1 s, does.
    assert!(
        median <= Duration::from_millis(300),
        "serving again took {median:?} in the median round (target 300ms): {recoveries:?}"
    );
    assert!(
        worst <= Duration::from_secs(1),
        "serving again took {worst:?} in the worst round: {recoveries:?}"
    );
    let status = controller.service_status(&fixture.service).await;
    println!("status after the kills: {}", status["conditions"]);
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_haproxy_is_restarted_with_its_servers_and_a_dockscale_restart_loses_nothing() {
    let fixture = LbFixture::new("e2e-lbrestart");
    fixture.write_spec(&fixture.lb_spec(3, "hello", ""));
    let controller = RunningController::start(&fixture.lb_run_args(&[]));
    converged(&fixture, 3, Duration::from_secs(30)).await;
    let ids: BTreeSet<String> = fixture.containers().into_iter().map(|c| c.id).collect();

    // HAProxy dies: dockscale starts it again with the servers.
    let master = fixture.master_pid().expect("master pid");
    sh("kill", &["-KILL", &master.to_string()]);
    let (_, took) = wait_for(
        "a new HAProxy master",
        Duration::from_secs(15),
        || match fixture.master_pid() {
            Some(p) if p != master => Ok(p),
            other => Err(other),
        },
    )
    .await;
    println!("HAProxy killed -> new master in {took:?}");
    converged(&fixture, 3, Duration::from_secs(15)).await;
    let none = BTreeMap::new();
    let (status, _, _) = get_with_cookies(fixture.bind, "/", &none)
        .await
        .expect("get");
    assert_eq!(status, 200);

    // dockscale restarts under load: nothing fails, nothing is recreated.
    let load = Load::start(fixture.bind, "/?delay=5", 16, LOAD_LIMIT);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let master = fixture.master_pid().expect("master pid");
    controller.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let controller = RunningController::start(&fixture.lb_run_args(&[]));
    tokio::time::sleep(Duration::from_secs(4)).await;
    converged(&fixture, 3, Duration::from_secs(15)).await;
    load.finish_without_failures("dockscale restart under load")
        .await;
    let after: BTreeSet<String> = fixture.containers().into_iter().map(|c| c.id).collect();
    assert_eq!(after, ids, "containers were recreated");
    assert_eq!(
        fixture.master_pid(),
        Some(master),
        "HAProxy was not adopted"
    );
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_external_haproxy_is_driven_and_a_missing_backend_is_reported() {
    let fixture = LbFixture::new("e2e-lbext");
    let config = dockscale_e2e::haproxy::external_config(fixture.bind, &fixture.backend);
    let haproxy = ExternalHaproxy::start(&config).await;
    // A second service whose backend the external HAProxy lacks.
    let missing = format!(
        r#"---
apiVersion: dockscale/v1alpha1
kind: ScaledService
metadata:
  name: {svc}-nobe
spec:
  replicas: 0
  network: {net}
  template:
    image: dockscale-webapp:latest
    imagePullPolicy: Never
    port: 8080
  loadBalancer:
    backend: no-such-backend
"#,
        svc = fixture.service,
        net = fixture.network,
    );
    fixture.write_spec(&format!("{}{missing}", fixture.lb_spec(2, "hello", "")));
    let socket = haproxy.socket.display().to_string();
    let controller =
        RunningController::start(&fixture.run_args(&["--haproxy-socket", socket.as_str()]));

    let api = haproxy.api();
    let start = Instant::now();
    loop {
        let replicas: BTreeSet<SocketAddrV4> = fixture.replica_addrs().into_values().collect();
        let rotation = in_rotation(&servers(&api, &fixture.backend).await);
        let up: BTreeSet<SocketAddrV4> = rotation
            .iter()
            .filter(|(_, u)| **u)
            .map(|(a, _)| *a)
            .collect();
        if replicas.len() == 2 && up == replicas && rotation.len() == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "rotation {rotation:?}, replicas {replicas:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let none = BTreeMap::new();
    let mut hosts = BTreeSet::new();
    for _ in 0..10 {
        let (status, _, body) = get_with_cookies(fixture.bind, "/", &none)
            .await
            .expect("get");
        assert_eq!(status, 200, "{body}");
        hosts.insert(hostname_of(&body).expect("hostname"));
    }
    assert_eq!(hosts.len(), 2, "{hosts:?}");

    // The service without a backend says why, on its own status.
    let name = format!("{}-nobe", fixture.service);
    let (_, took) = wait_for(
        "the missing backend reported",
        Duration::from_secs(15),
        || {
            let rt = tokio::runtime::Handle::current();
            let (_, body) = tokio::task::block_in_place(|| {
                rt.block_on(controller.get(&format!("/api/v1/services/{name}")))
            });
            if body.contains("BackendMissing") && body.contains("no-such-backend") {
                Ok(())
            } else {
                Err(body)
            }
        },
    )
    .await;
    println!("missing backend reported in {took:?}");
    controller.stop().await;
    drop(haproxy);
}

/// Worker pid, slot count and the `slot_pool_grown` reload counter.
async fn pool_state(fixture: &LbFixture, controller: &RunningController) -> (u32, usize, String) {
    let info = fixture.api().info().await.expect("show info");
    let slots = servers(&fixture.api(), &fixture.backend).await.len();
    let (_, metrics) = controller.get("/metrics").await;
    let grown = metrics
        .lines()
        .find(|l| l.starts_with("dockscale_haproxy_reloads_total{reason=\"slot_pool_grown\"}"))
        .unwrap_or("no slot_pool_grown reload")
        .to_owned();
    (info.pid, slots, grown)
}

#[tokio::test(flavor = "multi_thread")]
async fn outgrowing_the_slot_pool_reloads_once_and_scaling_back_never_does() {
    let fixture = LbFixture::new("e2e-lbpool");
    fixture.write_spec(&fixture.lb_spec(2, "hello", ""));
    let controller = RunningController::start(&fixture.lb_run_args(&[]));
    converged(&fixture, 2, Duration::from_secs(30)).await;
    let (first_worker, slots, grown) = pool_state(&fixture, &controller).await;
    assert_eq!(slots, 16, "a new backend's pool");
    assert_eq!(grown, "no slot_pool_grown reload");

    // 16 replicas and a surge of 1 do not fit in 16 slots: the pool grows, once.
    fixture.write_spec(&fixture.lb_spec(16, "hello", ""));
    converged(&fixture, 16, Duration::from_secs(60)).await;
    let (grown_worker, slots, grown) = pool_state(&fixture, &controller).await;
    assert_eq!(slots, 40, "2 x (16 + 1), in steps of 8");
    assert_ne!(grown_worker, first_worker, "growing the pool reloads");
    assert_eq!(
        grown,
        "dockscale_haproxy_reloads_total{reason=\"slot_pool_grown\"} 1"
    );
    let status = controller.service_status(&fixture.service).await;
    assert!(
        status["events"].to_string().contains("SlotPoolGrown"),
        "the event: {status}"
    );

    // Back down and up again under load: the pool stays, nothing reloads, nothing fails.
    let load = Load::start(fixture.bind, "/?delay=5", 16, LOAD_LIMIT);
    tokio::time::sleep(Duration::from_secs(1)).await;
    fixture.write_spec(&fixture.lb_spec(2, "hello", ""));
    converged(&fixture, 2, Duration::from_secs(60)).await;
    fixture.write_spec(&fixture.lb_spec(16, "hello", ""));
    converged(&fixture, 16, Duration::from_secs(60)).await;
    load.finish_without_failures("16 -> 2 -> 16 under load")
        .await;
    let (worker, slots, grown) = pool_state(&fixture, &controller).await;
    assert_eq!(slots, 40, "the pool never shrinks while HAProxy runs");
    assert_eq!(
        worker, grown_worker,
        "scaling within the pool reloaded HAProxy"
    );
    assert_eq!(
        grown,
        "dockscale_haproxy_reloads_total{reason=\"slot_pool_grown\"} 1"
    );
    controller.stop().await;
}
