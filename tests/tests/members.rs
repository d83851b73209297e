//! Hand-started members against the real engine and HAProxy: a container started by
//! hand with `--label dockscale.join=<service>` on the service's network joins its
//! backend (as the classic lab ran `docker run -d --network heig --name s3 webapp`),
//! serves through every reconcile and a scale of the service to 0 and back, leaves
//! rotation when it is killed, and is never stopped by dockscale. An unlabelled
//! container on the same network is ignored; a labelled one on another network gets
//! an event that says so.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use dockscale_e2e::haproxy::{hostname_of, in_rotation, LbFixture, Load};
use dockscale_e2e::{http_get, sh, sh_quiet, unique, RunningController};

const WEBAPP: &str = "dockscale-webapp:latest";

/// The servers in rotation and UP in the fixture's backend.
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

/// The servers in rotation (UP or not).
async fn enabled(fixture: &LbFixture) -> BTreeSet<SocketAddrV4> {
    fixture
        .api()
        .servers_state(&fixture.backend)
        .await
        .map(|s| in_rotation(&s))
        .unwrap_or_default()
        .into_keys()
        .collect()
}

/// Starts a container by hand (`docker run -d`), removed by the fixture on drop, even
/// on a panic.
fn run_by_hand(fixture: &mut LbFixture, name: &str, args: &[&str]) -> String {
    fixture.extra_containers.push(name.to_owned());
    let mut all = vec!["run", "-d", "--init", "--name", name, "--hostname", name];
    all.extend_from_slice(args);
    all.push(WEBAPP);
    sh("docker", &all).trim().to_owned()
}

/// A container's address on `network`, at the webapp's port.
fn addr_on(name: &str, network: &str) -> SocketAddrV4 {
    let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    let ip = sh("docker", &["inspect", "--format", &format, name]);
    SocketAddrV4::new(ip.trim().parse().expect("an address"), 8080)
}

/// Waits until the backend serves exactly `expected` (UP), within `limit`.
async fn until_serving(fixture: &LbFixture, expected: &BTreeSet<SocketAddrV4>, limit: Duration) {
    let started = Instant::now();
    loop {
        let now = up(fixture).await;
        if &now == expected {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "serving {now:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The hostnames that answered `n` requests through the load balancer.
async fn answering_hosts(fixture: &LbFixture, n: usize) -> BTreeSet<String> {
    let mut hosts = BTreeSet::new();
    for _ in 0..n {
        let (code, body) = http_get(fixture.bind, "/").await;
        assert_eq!(code, 200, "{body}");
        hosts.extend(hostname_of(&body));
    }
    hosts
}

/// The service's status until `check` holds, within 10 s.
async fn status_until(
    controller: &RunningController,
    service: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let status = controller.service_status(service).await;
        if check(&status) {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hand_started_member_serves_through_a_scale_to_zero_and_back_and_leaves_rotation_when_killed(
) {
    let mut fixture = LbFixture::new("e2e-members");
    let spec = fixture.lb_spec(2, "hello", "");
    fixture.write_spec(&spec);
    let controller = RunningController::start(&fixture.lb_run_args(&[]));
    controller.wait_listening().await;
    let started = Instant::now();
    let replicas: BTreeSet<SocketAddrV4> = loop {
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

    // The classic lab's `docker run -d --network heig --name s3 webapp`, labelled.
    let network = fixture.network.clone();
    let service = fixture.service.clone();
    let member = unique("s3");
    let join = format!("dockscale.join={service}");
    let ran = Instant::now();
    run_by_hand(
        &mut fixture,
        &member,
        &["--network", &network, "--label", &join],
    );
    let member_addr = addr_on(&member, &network);
    // Ignored: unlabelled on the same network, and labelled on another one.
    let stranger = unique("s-unlabelled");
    run_by_hand(&mut fixture, &stranger, &["--network", &network]);
    let stranger_addr = addr_on(&stranger, &network);
    let elsewhere = unique("s-bridge");
    run_by_hand(&mut fixture, &elsewhere, &["--label", &join]);

    let mut with_member = replicas.clone();
    with_member.insert(member_addr);
    until_serving(&fixture, &with_member, Duration::from_secs(20)).await;
    println!(
        "the member was UP in the backend {:?} after docker run",
        ran.elapsed()
    );
    let hosts = answering_hosts(&fixture, 30).await;
    assert!(hosts.contains(&member), "the member answered: {hosts:?}");
    assert!(!hosts.contains(&stranger), "an unlabelled container served");
    assert!(!enabled(&fixture).await.contains(&stranger_addr));

    let status = status_until(&controller, &service, "the member in status", |s| {
        s["members"].as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["name"] == member.as_str() && m["inRotation"] == true)
        })
    })
    .await;
    assert_eq!(
        status["replicas"]["current"], 2,
        "a member is not a replica"
    );
    let members: Vec<&str> = status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(!members.contains(&stranger.as_str()), "{members:?}");
    let mismatch = status_until(&controller, &service, "the mismatch event", |s| {
        s["events"].as_array().is_some_and(|e| {
            e.iter().any(|e| {
                e["reason"] == "MemberNetworkMismatch"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(&elsewhere))
            })
        })
    })
    .await;
    let event = mismatch["events"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["reason"] == "MemberNetworkMismatch")
        .expect("the event");
    println!("event: {}", event["message"]);
    assert!(
        event["message"]
            .as_str()
            .is_some_and(|m| m.contains("bridge") && m.contains(&network)),
        "{event}"
    );

    // Scale to 0 under load: the member serves alone, no request fails.
    let load = Load::start(fixture.bind, "/", 8, Duration::from_secs(120));
    tokio::time::sleep(Duration::from_millis(300)).await;
    fixture.write_spec(&fixture.lb_spec(0, "hello", ""));
    let scaled = Instant::now();
    let alone = BTreeSet::from([member_addr]);
    until_serving(&fixture, &alone, Duration::from_secs(30)).await;
    let wait_gone = Instant::now();
    while !fixture.running().is_empty() {
        assert!(
            wait_gone.elapsed() < Duration::from_secs(30),
            "replicas left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "scaled to 0 in {:?}: the member serves alone",
        scaled.elapsed()
    );
    // Several resyncs and passes later, still there and serving alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(up(&fixture).await, alone);
    let hosts = answering_hosts(&fixture, 10).await;
    assert_eq!(hosts, BTreeSet::from([member.clone()]));

    fixture.write_spec(&spec);
    let back = Instant::now();
    let restored: BTreeSet<SocketAddrV4> = loop {
        let replicas: BTreeSet<SocketAddrV4> = fixture.replica_addrs().into_values().collect();
        let mut expected = replicas.clone();
        expected.insert(member_addr);
        if replicas.len() == 2 && up(&fixture).await == expected {
            break expected;
        }
        assert!(back.elapsed() < Duration::from_secs(60), "never back to 2");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("back to 2 replicas and the member in {:?}", back.elapsed());
    load.finish_without_failures("scale 2 -> 0 -> 2 with a member")
        .await;

    // Killed: out of rotation on its `die`, not replaced, not removed.
    let killed = Instant::now();
    sh("docker", &["kill", &member]);
    loop {
        if !enabled(&fixture).await.contains(&member_addr) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the killed member stayed in rotation"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "the killed member left rotation {:?} after docker kill",
        killed.elapsed()
    );
    let mut without = restored.clone();
    without.remove(&member_addr);
    until_serving(&fixture, &without, Duration::from_secs(10)).await;
    assert_eq!(fixture.running().len(), 2, "the member is not replaced");

    controller.stop().await;
    let state = |name: &str| {
        sh_quiet(
            "docker",
            &["inspect", "--format", "{{.State.Status}}", name],
        )
        .map(|s| s.trim().to_owned())
    };
    assert_eq!(
        state(&member).as_deref(),
        Some("exited"),
        "the member was left as killed"
    );
    assert_eq!(state(&stranger).as_deref(), Some("running"));
    assert_eq!(state(&elsewhere).as_deref(), Some("running"));
}
