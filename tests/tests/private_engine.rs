//! The private Docker engine fixture itself: it runs the demo image with a port the
//! host reaches, survives an engine restart, and leaves nothing behind.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use dockscale_e2e::engine::PrivateEngine;
use dockscale_e2e::{http_get, sh, wait_for, WEBAPP_IMAGE};

/// A `a.b.c.d/n` subnet as its first address and prefix length.
fn parse_cidr(cidr: &str) -> (u32, u32) {
    let (addr, len) = cidr.split_once('/').expect("a.b.c.d/n");
    let addr: Ipv4Addr = addr.parse().expect("IPv4 subnet");
    (u32::from(addr), len.parse().expect("prefix length"))
}

fn overlap(a: &str, b: &str) -> bool {
    let ((a, la), (b, lb)) = (parse_cidr(a), parse_cidr(b));
    let len = la.min(lb);
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    a & mask == b & mask
}

/// The IPv4 subnets of an engine's networks, from `docker network inspect`.
fn subnets(docker: impl Fn(&[&str]) -> String) -> Vec<String> {
    let ids = docker(&["network", "ls", "-q"]);
    let mut args = vec![
        "network",
        "inspect",
        "--format",
        "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
    ];
    args.extend(ids.split_whitespace());
    docker(&args)
        .split_whitespace()
        .filter(|s| s.contains('.'))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_engine_runs_the_demo_image_and_leaves_nothing_behind() {
    let began = Instant::now();
    let engine = PrivateEngine::start("e2e-engine");
    println!(
        "private engine {} answering after {:?} (node {}, host side {})",
        engine.docker_host(),
        began.elapsed(),
        engine.node_addr(),
        engine.host_side_addr()
    );
    assert_ne!(
        engine.docker(&["info", "--format", "{{.ID}}"]),
        sh("docker", &["info", "--format", "{{.ID}}"]),
        "the private engine has an ID of its own"
    );

    // Its networks (the default bridge and one from its pools) overlap none of the
    // machine's engine's.
    engine.docker(&["network", "create", "e2e-private"]);
    let private = subnets(|args| engine.docker(args));
    let host = subnets(|args| sh("docker", args));
    assert!(private.len() >= 2, "{private:?}");
    for p in &private {
        assert!(!p.starts_with("10."), "{p} is in 10/8");
        for h in &host {
            assert!(!overlap(p, h), "private {p} overlaps the machine's {h}");
        }
    }

    let loading = Instant::now();
    engine.load_image(WEBAPP_IMAGE);
    println!("{WEBAPP_IMAGE} loaded in {:?}", loading.elapsed());
    let id = engine.docker(&[
        "run",
        "-d",
        "--init",
        "--name",
        "web",
        "--network",
        "e2e-private",
        "-p",
        "0:8080",
        WEBAPP_IMAGE,
    ]);
    let port = engine.published_port("web", 8080);
    let addr = SocketAddr::from((engine.node_addr(), port));
    wait_for(
        "the published port to accept",
        Duration::from_secs(20),
        || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string()),
    )
    .await;
    let (status, body) = http_get(addr, "/").await;
    assert_eq!(status, 200, "{body}");
    // The webapp answers with its hostname, the container's short id.
    assert!(
        body.contains(&format!("hostname: {}", &id.trim()[..12])),
        "not the private engine's container answering at {addr}: {body}"
    );
    println!("GET http://{addr}/ -> {status}");

    let footprint = engine.footprint();
    let names = footprint.process_names();
    for expected in ["dockerd", "containerd", "containerd-shim", "docker-proxy"] {
        assert!(
            names.iter().any(|n| n == expected),
            "the footprint misses {expected}: {names:?}"
        );
    }
    // The check after drop can fail: before it, every kind of trace is seen.
    let before = footprint.leftovers();
    for kind in [
        "network namespace",
        "link",
        "directory",
        "mount",
        "cgroup",
        "process",
    ] {
        assert!(
            before.iter().any(|l| l.starts_with(kind)),
            "no {kind} seen before drop: {before:?}"
        );
    }

    let cleaning = Instant::now();
    drop(engine);
    println!("stopped and cleaned up in {:?}", cleaning.elapsed());
    assert_eq!(footprint.leftovers(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engine_restart_stops_its_containers_and_answers_again() {
    // What a Swarm test will need (services use the loaded image, ask no registry);
    // here it shows that the environment survives a restart.
    let mut engine = PrivateEngine::builder("e2e-restart")
        .env("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1")
        .start();
    engine.load_image(WEBAPP_IMAGE);
    engine.docker(&[
        "run",
        "-d",
        "--init",
        "--restart",
        "no",
        "--name",
        "web",
        WEBAPP_IMAGE,
    ]);
    // It says so once its SIGTERM handler is installed; a SIGTERM before that kills
    // it (143 through docker-init), which a restart right after `docker run` did.
    wait_for("the webapp to listen", Duration::from_secs(20), || {
        let logs = engine.docker_quiet(&["logs", "web"]).unwrap_or_default();
        if logs.contains("dockscale-webapp listening") {
            Ok(())
        } else {
            Err(logs)
        }
    })
    .await;
    let state = |engine: &PrivateEngine| {
        engine
            .docker(&[
                "inspect",
                "--format",
                "{{.State.Status}} {{.State.ExitCode}}",
                "web",
            ])
            .trim()
            .to_owned()
    };
    assert_eq!(state(&engine), "running 0");
    let before = engine.pid();

    let down = engine.restart();
    println!(
        "engine down for {:?} (stopping {:?}, starting {:?})",
        down.total(),
        down.stopping,
        down.starting
    );
    assert!(down.total() < Duration::from_secs(30), "{down:?}");
    let pid = engine.pid().expect("a running dockerd");
    assert_ne!(Some(pid), before, "a new dockerd");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("dockerd's environment");
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|v| v == b"DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1"),
        "dockerd {pid} runs without the extra environment"
    );

    let after = state(&engine);
    println!("after the restart the container is: {after}");
    // The engine's shutdown sent SIGTERM (not SIGKILL after its timeout, 137), and the
    // webapp finished its requests and exited 0.
    assert_eq!(after, "exited 0");
    let logs = engine.docker(&["logs", "web"]);
    assert!(
        logs.contains("SIGTERM, finishing requests in flight"),
        "{logs}"
    );

    // Same data root: the container is still there and starts again.
    engine.docker(&["start", "web"]);
    assert_eq!(state(&engine), "running 0");

    let footprint = engine.footprint();
    let cleaning = Instant::now();
    drop(engine);
    println!("stopped and cleaned up in {:?}", cleaning.elapsed());
    assert_eq!(footprint.leftovers(), Vec::<String>::new());
}
