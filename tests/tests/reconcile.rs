//! The replica reconciler against a real Docker engine, without a load balancer.

use std::collections::BTreeSet;
use std::time::Duration;

use dockscale_e2e::{sh, wait_for, Fixture, RunningController};

fn exactly(
    fixture: &Fixture,
    n: usize,
) -> impl FnMut() -> Result<Vec<dockscale_e2e::Container>, Vec<dockscale_e2e::Container>> + '_ {
    move || {
        let all = fixture.containers();
        if all.len() == n && all.iter().all(|c| c.state == "running") {
            Ok(all)
        } else {
            Err(all)
        }
    }
}

/// The messages of the service's `ScalingReplicaSet` events, oldest first.
async fn scaling_events(controller: &RunningController, service: &str) -> Vec<String> {
    controller.service_status(service).await["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["reason"] == "ScalingReplicaSet")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn scales_to_the_count_in_the_file_and_keeps_the_oldest() {
    let fixture = Fixture::new("e2e-scale");
    fixture.write_spec(&fixture.pool_spec(3));
    let controller = RunningController::start(&fixture.run_args(&[]));

    let (three, took) = wait_for("3 replicas", Duration::from_secs(30), exactly(&fixture, 3)).await;
    println!("0 -> 3 replicas running in {took:?}");
    for c in &three {
        assert!(
            c.name.starts_with(&format!("{}-", fixture.service))
                && c.name.len() == fixture.service.len() + 6,
            "replica name {}",
            c.name
        );
    }
    let format = "{{json .Config.Labels}} {{.HostConfig.Init}} \
                  {{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}";
    let labels = sh("docker", &["inspect", "--format", format, &three[0].id]);
    assert!(
        labels.contains("\"dockscale.managed-by\":\"dockscale\""),
        "{labels}"
    );
    assert!(
        labels.contains(&format!("\"dockscale.service\":\"{}\"", fixture.service)),
        "{labels}"
    );
    assert!(labels.contains("\"dockscale.template-hash\":"), "{labels}");
    assert!(
        labels.trim_end().ends_with("true 33554432 250000000"),
        "init and limits: {labels}"
    );

    fixture.write_spec(&fixture.pool_spec(5));
    let (five, took) = wait_for("5 replicas", Duration::from_secs(30), exactly(&fixture, 5)).await;
    println!("3 -> 5 replicas running in {took:?}");
    let first_three: BTreeSet<String> = three.iter().map(|c| c.id.clone()).collect();
    assert!(
        first_three
            .iter()
            .all(|id| five.iter().any(|c| &c.id == id)),
        "scaling up replaced existing replicas"
    );

    fixture.write_spec(&fixture.pool_spec(1));
    let (one, took) = wait_for("1 replica", Duration::from_secs(30), exactly(&fixture, 1)).await;
    println!("5 -> 1 replica in {took:?}");
    assert!(
        first_three.contains(&one[0].id),
        "the survivor {} is not one of the oldest replicas",
        one[0].name
    );
    assert_eq!(
        scaling_events(&controller, &fixture.service).await,
        [
            "Scaled up from 0 to 3",
            "Scaled up from 3 to 5",
            "Scaled down from 5 to 1"
        ]
    );
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replica_is_replaced_on_the_docker_event_not_the_resync() {
    let fixture = Fixture::new("e2e-kill");
    fixture.write_spec(&fixture.pool_spec(2));
    // A resync far away: only the event can explain a quick replacement.
    let controller = RunningController::start(&fixture.run_args(&["--sync-period", "5m"]));
    let (before, _) = wait_for("2 replicas", Duration::from_secs(30), exactly(&fixture, 2)).await;

    sh("docker", &["kill", &before[0].id]);
    let (after, took) = wait_for("a replacement", Duration::from_secs(10), || {
        let now = exactly(&fixture, 2)()?;
        if now.iter().any(|c| c.id == before[0].id) {
            Err(now)
        } else {
            Ok(now)
        }
    })
    .await;
    println!("killed replica replaced in {took:?}");
    assert!(took < Duration::from_secs(5), "replacement took {took:?}");
    assert!(
        after.iter().any(|c| c.id == before[1].id),
        "the healthy replica was touched"
    );
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unmanaged_container_named_like_a_replica_is_never_touched() {
    let mut fixture = Fixture::new("e2e-foreign");
    let impostor = format!("{}-zzzzz", fixture.service);
    let impostor_id = fixture.run_unmanaged(&impostor);
    fixture.write_spec(&fixture.pool_spec(2));
    let controller = RunningController::start(&fixture.run_args(&["--sync-period", "1s"]));
    wait_for("2 replicas", Duration::from_secs(30), exactly(&fixture, 2)).await;
    // Scale to zero and through several resyncs: the impostor stays.
    fixture.write_spec(&fixture.pool_spec(0));
    wait_for("0 replicas", Duration::from_secs(30), exactly(&fixture, 0)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let state = sh(
        "docker",
        &[
            "inspect",
            "--format",
            "{{.Id}} {{.State.Status}}",
            &impostor,
        ],
    );
    assert_eq!(state.trim(), format!("{impostor_id} running"));
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_edit_changes_nothing_and_fixing_it_resumes() {
    let fixture = Fixture::new("e2e-invalid");
    fixture.write_spec(&fixture.pool_spec(2));
    let controller = RunningController::start(&fixture.run_args(&["--sync-period", "1s"]));
    let (before, _) = wait_for("2 replicas", Duration::from_secs(30), exactly(&fixture, 2)).await;

    // An unknown field and a negative count: rejected, the last good spec stays.
    let broken = fixture.pool_spec(4).replace("replicas: 4", "replicaz: 4");
    fixture.write_spec(&broken);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during: BTreeSet<String> = fixture.running().into_iter().map(|c| c.id).collect();
    let before_ids: BTreeSet<String> = before.iter().map(|c| c.id.clone()).collect();
    assert_eq!(during, before_ids, "an invalid spec changed the replicas");
    assert!(
        !controller.is_finished(),
        "the controller stopped on an invalid spec"
    );
    let (code, body) = controller
        .get(&format!("/api/v1/services/{}", fixture.service))
        .await;
    assert_eq!(code, 200);
    assert!(body.contains("\"SpecInvalid\""), "{body}");
    assert!(body.contains("ValidationFailed"), "{body}");
    assert!(
        body.contains("service.yaml:6:3"),
        "the error is located: {body}"
    );

    // A vanished spec file is an error too, never an order to delete everything.
    std::fs::remove_file(fixture.spec_path()).expect("remove spec");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fixture.running().len(),
        2,
        "a missing spec file removed replicas"
    );

    fixture.write_spec(&fixture.pool_spec(4));
    wait_for(
        "4 replicas after the fix",
        Duration::from_secs(30),
        exactly(&fixture, 4),
    )
    .await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_controller_adopts_the_running_replicas() {
    let fixture = Fixture::new("e2e-adopt");
    fixture.write_spec(&fixture.pool_spec(3));
    let args = fixture.run_args(&[]);
    let first = RunningController::start(&args);
    let (before, _) = wait_for("3 replicas", Duration::from_secs(30), exactly(&fixture, 3)).await;
    first.stop().await;
    // Stopping the controller leaves the replicas running.
    assert_eq!(fixture.running().len(), 3);

    let second = RunningController::start(&fixture.run_args(&[]));
    wait_for(
        "the second controller's HTTP server",
        Duration::from_secs(10),
        || std::net::TcpStream::connect(second.listen).map_err(|e| e.to_string()),
    )
    .await;
    // Several passes of the second controller.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: BTreeSet<String> = fixture.containers().into_iter().map(|c| c.id).collect();
    let before: BTreeSet<String> = before.into_iter().map(|c| c.id).collect();
    assert_eq!(after, before, "the restarted controller recreated replicas");
    assert_eq!(
        scaling_events(&second, &fixture.service).await,
        Vec::<String>::new(),
        "adopting the same count is no scaling"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_the_document_removes_the_replicas() {
    let fixture = Fixture::new("e2e-remove");
    fixture.write_spec(&fixture.pool_spec(2));
    let controller = RunningController::start(&fixture.run_args(&[]));
    wait_for("2 replicas", Duration::from_secs(30), exactly(&fixture, 2)).await;
    // The file still parses, with no document in it.
    fixture.write_spec("# nothing here any more\n");
    wait_for("0 replicas", Duration::from_secs(30), exactly(&fixture, 0)).await;
    // Forgotten once the controller has seen its last container go (the destroy
    // event may reach it after `docker ps` shows none).
    wait_for(
        "the service to leave the API",
        Duration::from_secs(10),
        || {
            let (_, body) = dockscale_e2e::block(controller.get("/api/v1/services"));
            if body.contains(&fixture.service) {
                Err(body)
            } else {
                Ok(())
            }
        },
    )
    .await;
    controller.stop().await;
}
