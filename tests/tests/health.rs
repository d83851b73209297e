//! HTTP health checks (`loadBalancer.healthCheck`): HAProxy checks the path, and the
//! readiness gate before a replica is enabled asks the same path, so a replica whose
//! port answers but whose health check fails never takes traffic.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use dockscale_e2e::haproxy::{in_rotation, LbFixture, Load};
use dockscale_e2e::{sh, RunningController};

const HEALTH: &str =
    "    healthCheck: {path: /healthz, interval: 500ms, timeout: 400ms, rise: 1, fall: 1}\n";

async fn up(fixture: &LbFixture) -> BTreeSet<SocketAddrV4> {
    fixture
        .api()
        .servers_state(&fixture.backend)
        .await
        .map(|s| in_rotation(&s))
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, up)| *up)
        .map(|(a, _)| a)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_failing_its_http_check_leaves_rotation_and_a_new_one_failing_it_never_enters() {
    let fixture = LbFixture::new("e2e-health");
    // /healthz fails while /unhealthy exists in the container.
    let spec = fixture.lb_spec(2, "hello", HEALTH).replace(
        "env: {GREETING: \"hello\"}",
        "env: {GREETING: \"hello\", HEALTH_FAIL_FILE: /unhealthy}",
    );
    fixture.write_spec(&spec);
    let controller = RunningController::start(&fixture.lb_run_args(&[]));
    controller.wait_listening().await;
    let started = Instant::now();
    let first: BTreeSet<SocketAddrV4> = loop {
        let replicas: BTreeSet<SocketAddrV4> = fixture.replica_addrs().into_values().collect();
        if replicas.len() == 2 && up(&fixture).await == replicas {
            break replicas;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "2 replicas never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let config = std::fs::read_to_string(fixture.state_dir().join("haproxy.cfg")).expect("config");
    assert!(config.contains("option httpchk"), "{config}");

    // A replica whose /healthz turns to 503 while its port still answers: HAProxy's
    // HTTP check takes it out; the load never sees it.
    let load = Load::start(fixture.bind, "/", 8, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (sick_name, sick_addr) = fixture
        .replica_addrs()
        .into_iter()
        .next()
        .expect("a replica");
    let flag = fixture.dir.path().join("unhealthy");
    std::fs::write(&flag, "1").expect("flag file");
    let flagged = Instant::now();
    sh(
        "docker",
        &[
            "cp",
            &flag.display().to_string(),
            &format!("{sick_name}:/unhealthy"),
        ],
    );
    while up(&fixture).await.contains(&sick_addr) {
        assert!(flagged.elapsed() < Duration::from_secs(20), "still UP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "a replica failing its HTTP check went DOWN {:?} after",
        flagged.elapsed()
    );

    // A rollout to a template whose health check always fails (the flag file is the
    // binary itself): its replicas run and answer TCP, but are never enabled; the
    // old replica keeps serving.
    let failing = fixture.lb_spec(2, "two", HEALTH).replace(
        "env: {GREETING: \"two\"}",
        "env: {GREETING: \"two\", HEALTH_FAIL_FILE: /dockscale-webapp}",
    );
    fixture.write_spec(&failing);
    // Creates can take seconds on a busy engine: wait for the new replicas to run,
    // then watch the rotation for several check intervals and passes.
    let rolled = Instant::now();
    let new: BTreeSet<SocketAddrV4> = loop {
        let replicas: BTreeSet<SocketAddrV4> = fixture.replica_addrs().into_values().collect();
        let new: BTreeSet<SocketAddrV4> = replicas.difference(&first).copied().collect();
        if !new.is_empty() {
            break new;
        }
        assert!(
            rolled.elapsed() < Duration::from_secs(60),
            "the rollout never started a new replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let watched = Instant::now();
    let mut samples = 0;
    while watched.elapsed() < Duration::from_secs(5) {
        let rotation = fixture
            .api()
            .servers_state(&fixture.backend)
            .await
            .map(|s| in_rotation(&s))
            .expect("servers");
        assert!(
            new.iter().all(|a| !rotation.contains_key(a)),
            "a replica failing its health check was put in rotation: {rotation:?}"
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("new replicas {new:?} kept out of rotation over {samples} samples in 5 s");
    load.finish_without_failures("a failing health check, then a rollout that fails it")
        .await;
    controller.stop().await;
}
