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

/// Waits (up to 60 s) until `n` replicas run and exactly they are UP in the backend:
/// their addresses.
async fn serving(fixture: &LbFixture, n: usize, what: &str) -> BTreeSet<SocketAddrV4> {
    let started = Instant::now();
    loop {
        let replicas: BTreeSet<SocketAddrV4> = fixture.replica_addrs().into_values().collect();
        if replicas.len() == n && up(fixture).await == replicas {
            return replicas;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let first = serving(&fixture, 2, "2 replicas never served").await;
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

/// `template.healthcheck`: Docker runs the demo backend's own probe in each replica.
/// Three failed checks in a row make a replica unhealthy: the sick one's fail at once
/// (its flag file), while the healthy one's, on a replica at a quarter of a core under
/// an unpaced load, may now and then take longer than the timeout. One slow check must
/// not take it out of rotation too.
const CONTAINER_CHECK: &str = "    healthcheck: {command: [/dockscale-webapp, check], interval: 300ms, timeout: 2s, retries: 3}\n    unhealthyReplaceAfter: 3s\n";

fn with_container_check(spec: &str, greeting: &str) -> String {
    spec.replace(
        &format!("env: {{GREETING: \"{greeting}\"}}\n"),
        &format!(
            "env: {{GREETING: \"{greeting}\", HEALTH_FAIL_FILE: /unhealthy}}\n{CONTAINER_CHECK}"
        ),
    )
}

/// The replicas in the status, by name: (state, health).
async fn containers(
    controller: &RunningController,
    service: &str,
) -> Vec<(String, String, String)> {
    // The service is listed once the controller has loaded it (after HAProxy started).
    let Some(status) = controller.try_service_status(service).await else {
        return Vec::new();
    };
    status["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let text = |k: &str| c[k].as_str().unwrap_or("-").to_owned();
            (text("name"), text("state"), text("health"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unhealthy_container_leaves_rotation_at_once_and_is_replaced_after_unhealthy_replace_after(
) {
    let fixture = LbFixture::new("e2e-chealth");
    fixture.write_spec(&with_container_check(
        &fixture.lb_spec(2, "hello", ""),
        "hello",
    ));
    let controller = RunningController::start(&fixture.lb_run_args(&[]));
    controller.wait_listening().await;

    // Ready only once Docker reports the replicas healthy.
    serving(&fixture, 2, "2 replicas never served").await;
    // The status is written by the pass after the one HAProxy's UP came from.
    let shown = Instant::now();
    let seen = loop {
        let seen = containers(&controller, &fixture.service).await;
        let serving = seen
            .iter()
            .filter(|(_, state, health)| state == "serving" && health == "healthy")
            .count();
        if serving == 2 {
            break seen;
        }
        assert!(
            shown.elapsed() < Duration::from_secs(10),
            "status shows each replica's health: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("serving: {seen:?}");

    // One replica's check starts failing: out of rotation on Docker's health_status
    // event, then drained and replaced 3 s later; the load never sees it.
    let load = Load::start(fixture.bind, "/", 8, Duration::from_secs(90));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (sick_name, sick_addr) = fixture
        .replica_addrs()
        .into_iter()
        .next()
        .expect("a replica");
    let flag = fixture.dir.path().join("unhealthy");
    std::fs::write(&flag, "1").expect("flag file");
    sh(
        "docker",
        &[
            "cp",
            &flag.display().to_string(),
            &format!("{sick_name}:/unhealthy"),
        ],
    );
    let flagged = Instant::now();
    let in_rotation_now = |rotation: &std::collections::BTreeMap<SocketAddrV4, bool>| {
        rotation.contains_key(&sick_addr)
    };
    loop {
        let rotation = fixture
            .api()
            .servers_state(&fixture.backend)
            .await
            .map(|s| in_rotation(&s))
            .expect("servers");
        if !in_rotation_now(&rotation) {
            break;
        }
        assert!(
            flagged.elapsed() < Duration::from_secs(20),
            "still in rotation: {rotation:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out_after = flagged.elapsed();
    println!("an unhealthy container left rotation {out_after:?} after its check began failing");
    let unhealthy = containers(&controller, &fixture.service).await;
    println!("after: {unhealthy:?}");

    // Replaced: the sick container is removed and two healthy replicas serve again.
    let replaced = loop {
        let replicas = fixture.replica_addrs();
        let serving: BTreeSet<SocketAddrV4> = replicas.values().copied().collect();
        if !replicas.contains_key(&sick_name) && serving.len() == 2 && up(&fixture).await == serving
        {
            break flagged.elapsed();
        }
        assert!(
            flagged.elapsed() < Duration::from_secs(60),
            "never replaced: {replicas:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("replaced and serving again {replaced:?} after (unhealthyReplaceAfter: 3s)");
    assert!(
        replaced >= Duration::from_secs(3),
        "replaced before unhealthyReplaceAfter"
    );
    let status = controller.service_status(&fixture.service).await;
    let events = status["events"].to_string();
    assert!(
        events.contains(&sick_name) && events.contains("unhealthy"),
        "{events}"
    );
    load.finish_without_failures("an unhealthy container, out of rotation and replaced")
        .await;
    controller.stop().await;
}

/// An image of the demo backend with a Dockerfile `HEALTHCHECK`, removed on drop.
struct ImageWithHealthcheck(String);

impl ImageWithHealthcheck {
    fn build(tag: &str) -> Self {
        let context = tempfile::tempdir().expect("build context");
        std::fs::write(
            context.path().join("Dockerfile"),
            format!(
                "FROM {}\nHEALTHCHECK --interval=300ms --timeout=1s --retries=1 \
                 CMD [\"/dockscale-webapp\", \"check\"]\n",
                dockscale_e2e::WEBAPP_IMAGE
            ),
        )
        .expect("Dockerfile");
        let built = std::process::Command::new("docker")
            .args(["build", "--quiet", "--tag", tag])
            .arg(context.path())
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .expect("docker build");
        assert!(
            built.status.success(),
            "{}",
            String::from_utf8_lossy(&built.stderr)
        );
        ImageWithHealthcheck(tag.to_owned())
    }
}

impl Drop for ImageWithHealthcheck {
    fn drop(&mut self) {
        let _ = dockscale_e2e::sh_quiet("docker", &["rmi", "-f", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_images_own_healthcheck_gates_readiness_and_can_be_disabled_in_the_spec() {
    let fixture = LbFixture::new("e2e-ihealth");
    let image = ImageWithHealthcheck::build(&format!("{}-img:e2e", fixture.service));
    // The image's check always fails here (the flag file is the binary itself).
    let spec = fixture
        .lb_spec(1, "hello", "")
        .replace(dockscale_e2e::WEBAPP_IMAGE, &image.0)
        .replace(
            "env: {GREETING: \"hello\"}",
            "env: {GREETING: \"hello\", HEALTH_FAIL_FILE: /dockscale-webapp}",
        );
    fixture.write_spec(&spec);
    let controller = RunningController::start(&fixture.lb_run_args(&[]));
    controller.wait_listening().await;
    let started = Instant::now();
    loop {
        let seen = containers(&controller, &fixture.service).await;
        if seen.iter().any(|(_, _, health)| health == "unhealthy") {
            println!("the image's failing HEALTHCHECK: {seen:?}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never unhealthy: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rotation = fixture
        .api()
        .servers_state(&fixture.backend)
        .await
        .map(|s| in_rotation(&s))
        .expect("servers");
    assert!(
        rotation.is_empty(),
        "an unhealthy replica was put in rotation: {rotation:?}"
    );

    // `healthcheck: {disable: true}` turns the image's check off: a new template,
    // rolled, whose replica serves.
    let disabled = spec.replace(
        "    stopGracePeriod: 5s\n",
        "    stopGracePeriod: 5s\n    healthcheck: {disable: true}\n",
    );
    fixture.write_spec(&disabled);
    serving(&fixture, 1, "the disabled check never served").await;
    let seen = containers(&controller, &fixture.service).await;
    assert!(seen.iter().all(|(_, _, health)| health == "-"), "{seen:?}");
    controller.stop().await;
}
