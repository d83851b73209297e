//! Several faults in a row, as a host has them on a bad night: replicas killed one
//! after the other under load, two controllers started on one engine, the engine
//! itself restarted.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dockscale_e2e::engine::PrivateEngine;
use dockscale_e2e::haproxy::LbFixture;
use dockscale_e2e::load::{FailureClass, KeepAliveLoad};
use dockscale_e2e::process::DockscaleProcess;
use dockscale_e2e::{dockscale_bin, free_port, sh, wait_for, Fixture, RunningController};

/// A timestamp of a container by the engine's own clock (`docker inspect -f FORMAT`:
/// `{{.Created}}`, `{{.State.StartedAt}}`), RFC 3339 with nanoseconds.
fn engine_time(id: &str, format: &str) -> std::time::SystemTime {
    let text = sh("docker", &["inspect", "-f", format, id]);
    humantime::parse_rfc3339_weak(text.trim().trim_end_matches('Z'))
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
}

/// The running replicas' ids.
fn running_ids(fixture: &Fixture) -> BTreeSet<String> {
    fixture.running().into_iter().map(|c| c.id).collect()
}

// Regression: replicas killed from outside counted as one service-wide crash loop
// (`5 exits in a row; back-off 1m 20s`) that held back every create.
#[tokio::test(flavor = "multi_thread")]
async fn six_kills_in_ten_seconds_are_each_replaced_within_a_second_without_a_failed_request() {
    let fixture = LbFixture::new("e2e-kills");
    fixture.write_spec(&fixture.lb_spec(6, "hello", ""));
    let controller = RunningController::start(&fixture.lb_run_args(&[]));
    let (original, _) = wait_for("6 replicas serving", Duration::from_secs(60), || {
        let ids = running_ids(&fixture);
        let in_rotation = dockscale_e2e::block(fixture.api().servers_state(&fixture.backend))
            .map(|s| {
                dockscale_e2e::haproxy::in_rotation(&s)
                    .values()
                    .filter(|up| **up)
                    .count()
            })
            .unwrap_or(0);
        if ids.len() == 6 && in_rotation == 6 {
            Ok(ids)
        } else {
            Err((ids.len(), in_rotation))
        }
    })
    .await;

    let url = format!("http://{}/?delay=20", fixture.bind);
    let load = KeepAliveLoad::start(&url, 8, Duration::from_secs(10), Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Six kills of different replicas on a fixed schedule, 1.5 s apart: within 10 s
    // whatever the replacements take.
    let started = Instant::now();
    let mut issued = Vec::new();
    for (n, victim) in original.iter().enumerate() {
        let at = started + Duration::from_millis(1500) * n as u32;
        tokio::time::sleep_until(at.into()).await;
        issued.push(std::time::SystemTime::now());
        sh("docker", &["kill", victim]);
    }
    let kills_took = started.elapsed();
    wait_for("6 replacements running", Duration::from_secs(20), || {
        let ids = running_ids(&fixture);
        let new = ids.difference(&original).count();
        if ids.len() == 6 && new == 6 {
            Ok(())
        } else {
            Err((ids.len(), new))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.finish().await;
    // The replacements, in the order the engine created them, against the kills in the
    // order they were issued: created and started by the engine's own clock.
    let mut replacements: Vec<(std::time::SystemTime, std::time::SystemTime)> =
        running_ids(&fixture)
            .difference(&original)
            .map(|id| {
                (
                    engine_time(id, "{{.Created}}"),
                    engine_time(id, "{{.State.StartedAt}}"),
                )
            })
            .collect();
    replacements.sort();
    let replaced: Vec<(Duration, Duration)> = issued
        .iter()
        .zip(&replacements)
        .map(|(kill, (created, started))| {
            let after = |t: &std::time::SystemTime| t.duration_since(*kill).unwrap_or_default();
            (after(created), after(started))
        })
        .collect();
    for (n, (created, running)) in replaced.iter().enumerate() {
        println!(
            "kill {n}: replacement created {created:?} and started {running:?} \
             after the kill was issued"
        );
    }
    println!(
        "6 kills in {kills_took:?}; requests {} ok, failed {:?}; samples {:#?}",
        report.ok, report.failed, report.samples
    );
    assert!(
        kills_took < Duration::from_secs(10),
        "the kills took {kills_took:?}"
    );
    assert!(report.ok > 500, "the load ran: {} ok", report.ok);
    assert_eq!(replaced.len(), 6, "{replacements:?}");
    for (n, (created, running)) in replaced.iter().enumerate() {
        assert!(
            *created <= Duration::from_secs(1),
            "kill {n}: the replacement was created {created:?} after the kill"
        );
        // Creating and starting a container is the engine's own work, slower on a busy
        // machine; dockscale asks for it on the `die` event.
        assert!(
            *running <= Duration::from_secs(2),
            "kill {n}: the replacement started {running:?} after the kill"
        );
    }
    // HAProxy cannot retry a response it has begun to forward: at most one cut per kill.
    let cut = report
        .failed
        .get(&FailureClass::MidBody)
        .copied()
        .unwrap_or(0);
    assert!(cut <= 6, "{cut} responses cut mid-body for 6 kills");
    let other: u64 = report
        .failed
        .iter()
        .filter(|(class, _)| **class != FailureClass::MidBody)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        other, 0,
        "failed requests: {:?}; {:#?}",
        report.failed, report.samples
    );

    // Not a crash loop: every exit was someone else's doing.
    let status = controller.service_status(&fixture.service).await;
    let events = status["events"].as_array().expect("events");
    assert!(
        !events.iter().any(|e| e["reason"] == "BackOff"),
        "a kill from outside backed off: {events:?}"
    );
    let stopped: u64 = events
        .iter()
        .filter(|e| e["reason"] == "ReplicaStopped")
        .map(|e| e["count"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(stopped, 6, "{events:?}");
    controller.stop().await;
}

// Regression: requests HAProxy had written to a replica cut from its network waited
// for `timeout server` (the soak's clients gave up after 10 s): the replica answers
// nothing, not even a reset.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_cut_from_their_network_are_replaced_without_a_failed_request() {
    let fixture = LbFixture::new("e2e-netcut");
    fixture.write_spec(&fixture.lb_spec(3, "hello", ""));
    let controller = RunningController::start(&fixture.lb_run_args(&[]));
    let (original, _) = wait_for("3 replicas serving", Duration::from_secs(60), || {
        let ids = running_ids(&fixture);
        let up = dockscale_e2e::block(fixture.api().servers_state(&fixture.backend))
            .map(|s| {
                dockscale_e2e::haproxy::in_rotation(&s)
                    .values()
                    .filter(|up| **up)
                    .count()
            })
            .unwrap_or(0);
        if ids.len() == 3 && up == 3 {
            Ok(ids)
        } else {
            Err((ids.len(), up))
        }
    })
    .await;
    let url = format!("http://{}/?delay=20", fixture.bind);
    let load = KeepAliveLoad::start(&url, 8, Duration::from_secs(10), Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(1)).await;
    for victim in &original {
        sh(
            "docker",
            &["network", "disconnect", &fixture.network, victim],
        );
        let (_, took) = wait_for("a replacement serving", Duration::from_secs(15), || {
            let ids = running_ids(&fixture);
            let up = dockscale_e2e::block(fixture.api().servers_state(&fixture.backend))
                .map(|s| {
                    dockscale_e2e::haproxy::in_rotation(&s)
                        .values()
                        .filter(|up| **up)
                        .count()
                })
                .unwrap_or(0);
            if ids.len() == 3 && !ids.contains(victim) && up == 3 {
                Ok(())
            } else {
                Err((ids, up))
            }
        })
        .await;
        println!(
            "{} cut from its network: replaced and serving in {took:?}",
            &victim[..12]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report = load.finish().await;
    println!(
        "3 network cuts: {} ok, failed {:?}; samples {:#?}",
        report.ok, report.failed, report.samples
    );
    assert!(report.ok > 300, "the load ran: {} ok", report.ok);
    assert_eq!(
        report.failed_total(),
        0,
        "{:?}: {:#?}",
        report.failed,
        report.samples
    );
    controller.stop().await;
}

/// `dockscale run` arguments of a second controller for the same spec and lock
/// directory, with its own state directory and port.
fn second_controller_args(fixture: &Fixture, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "run".to_owned(),
        fixture.spec_path().display().to_string(),
        "--state-dir".to_owned(),
        fixture.dir.path().join("state-b").display().to_string(),
        "--listen".to_owned(),
        format!("127.0.0.1:{}", free_port()),
        "--lock-dir".to_owned(),
        fixture.lock_dir().display().to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_controller_never_acts_beside_the_first_and_a_standby_takes_over() {
    let fixture = Fixture::new("e2e-claim");
    fixture.write_spec(&fixture.pool_spec(3));
    let log = |name: &str| fixture.dir.path().join(name);
    let mut first_args = fixture.run_args(&[]);
    first_args.remove(0);
    let mut first = DockscaleProcess::spawn(&dockscale_bin(), first_args, log("first.log"));
    first
        .wait_listening(Duration::from_secs(20))
        .await
        .expect("first listens");
    wait_for("3 replicas", Duration::from_secs(30), || {
        let n = fixture.running().len();
        if n == 3 {
            Ok(())
        } else {
            Err(n)
        }
    })
    .await;

    // Without --standby: it exits at once, naming the controller that drives the engine.
    let mut refused = DockscaleProcess::spawn(
        &dockscale_bin(),
        second_controller_args(&fixture, &[]),
        log("refused.log"),
    );
    let (status, _) = wait_for(
        "the second controller to exit",
        Duration::from_secs(20),
        || refused.exited().ok_or("still running"),
    )
    .await;
    assert!(!status.success(), "{status}");
    let said = refused.log_tail(5);
    let pid = first.pid().expect("first pid").to_string();
    assert!(
        said.contains("another dockscale already drives this Docker engine"),
        "{said}"
    );
    assert!(
        said.contains(&format!("pid {pid} ")),
        "names the holder's pid: {said}"
    );
    assert!(
        said.contains(&first.listen.to_string()),
        "names its listen address: {said}"
    );

    // With --standby: it waits, saying so, and never acts.
    let standby = DockscaleProcess::spawn(
        &dockscale_bin(),
        second_controller_args(&fixture, &["--standby"]),
        log("standby.log"),
    );
    standby
        .wait_listening(Duration::from_secs(20))
        .await
        .expect("standby listens");
    let (code, body) = standby.get("/readyz").await.expect("readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("standby"), "{body}");

    // Both running for a while, with churn the first must repair: never more than 3.
    let mut most = 0;
    for round in 0..3 {
        let victim = fixture
            .running()
            .first()
            .map(|c| c.id.clone())
            .expect("a replica");
        sh("docker", &["rm", "-f", &victim]);
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            let n = fixture.containers().len();
            most = most.max(n);
            assert!(n <= 3 + 1, "round {round}: {n} containers for replicas: 3");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let running = fixture.running().len();
    assert_eq!(running, 3, "the first controller repaired every removal");
    println!("two controllers on one engine: at most {most} containers for replicas: 3");
    let standby_log = standby.log_tail(200);
    assert!(
        !standby_log.contains("Created replica"),
        "the standby acted: {standby_log}"
    );

    // The first dies: the standby takes over and acts.
    let killed = Instant::now();
    first.kill();
    let (_, took) =
        wait_for(
            "the standby to take over",
            Duration::from_secs(10),
            || match dockscale_e2e::block(standby.get("/readyz")) {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .await;
    println!(
        "standby ready {took:?} ({:?} after the SIGKILL)",
        killed.elapsed()
    );
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "takeover took {:?}",
        killed.elapsed()
    );
    fixture.write_spec(&fixture.pool_spec(4));
    let (_, took) = wait_for(
        "4 replicas from the standby",
        Duration::from_secs(20),
        || {
            let n = fixture.containers().len();
            let r = fixture.running().len();
            assert!(n <= 5, "{n} containers for replicas: 4");
            if r == 4 && n == 4 {
                Ok(())
            } else {
                Err((r, n))
            }
        },
    )
    .await;
    println!("the standby scaled to 4 in {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_an_engine_restart_every_replica_is_back_within_seconds_and_nothing_backs_off() {
    let fixture = Fixture::new("e2e-engine");
    let mut engine = PrivateEngine::start("restart");
    engine.load_image(dockscale_e2e::WEBAPP_IMAGE);
    fixture.write_spec(&fixture.pool_spec(4));
    let mut args = fixture.run_args(&["--max-parallel", "4"]);
    args.remove(0);
    let controller = DockscaleProcess::spawn_with_env(
        &dockscale_bin(),
        args,
        fixture.dir.path().join("dockscale.log"),
        vec![("DOCKER_HOST".to_owned(), engine.docker_host())],
    );
    let label = format!("label=dockscale.service={}", fixture.service);
    let running = |engine: &PrivateEngine| -> Vec<String> {
        engine
            .docker_quiet(&[
                "ps",
                "-q",
                "--no-trunc",
                "--filter",
                &label,
                "--filter",
                "status=running",
            ])
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let (before, _) = wait_for(
        "4 replicas on the private engine",
        Duration::from_secs(60),
        || {
            let ids = running(&engine);
            if ids.len() == 4 {
                Ok(ids)
            } else {
                Err(controller.log_tail(10))
            }
        },
    )
    .await;

    for round in 0..2 {
        let downtime = engine.restart();
        let answering = Instant::now();
        let took = loop {
            let ids = running(&engine);
            if ids.len() == 4 && ids.iter().all(|id| !before.contains(id)) {
                break answering.elapsed();
            }
            assert!(
                answering.elapsed() < Duration::from_secs(30),
                "round {round}: replicas not back 30s after the engine answered: {ids:?}\n{}",
                controller.log_digest(40, 40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        println!(
            "engine restart {round}: down {:?}; \
             4 replicas running again {took:?} after it answered",
            downtime.total()
        );
        assert!(
            took < Duration::from_secs(5),
            "round {round}: back after {took:?}"
        );
        // No leftovers: the exited containers are gone.
        let all = engine.docker(&["ps", "-aq", "--filter", &label]);
        assert_eq!(all.split_whitespace().count(), 4, "{all}");
    }
    let status = controller
        .service_status(&fixture.service)
        .await
        .expect("status");
    let events = status["events"].as_array().expect("events");
    assert!(
        !events.iter().any(|e| e["reason"] == "BackOff"),
        "an engine restart is not a crash loop: {events:?}"
    );
    let failure = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "ReplicaFailure"))
        .cloned();
    assert_eq!(
        failure.as_ref().map(|c| c["status"].clone()),
        Some(false.into()),
        "{failure:?}"
    );
    drop(controller);
    // The fixture's cleanup runs against the machine's engine; the private one goes
    // with its own fixture.
    drop(engine);
}
