//! Images pulled from a real registry (Debian's `docker-registry` on 127.0.0.1, see
//! `dockscale_e2e::registry`): a missing image pulled then served through HAProxy,
//! wrong credentials backed off as `ImagePullBackOff`, a new tag rolled under load,
//! and `Always` rolling only for a moved tag. Every name pulled here is on the test's
//! own loopback registry.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dockscale_e2e::haproxy::{LbFixture, Load};
use dockscale_e2e::registry::Registry;
use dockscale_e2e::{
    block, sh_quiet, try_http_get, wait_for, Fixture, RunningController, WEBAPP_IMAGE,
};

fn condition<'a>(status: &'a serde_json::Value, kind: &str) -> Option<&'a serde_json::Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// The spec `text` with the demo image replaced by `image`, pulled by `policy`.
fn with_image(text: &str, image: &str, policy: &str) -> String {
    let out = text
        .replace(
            &format!("image: {WEBAPP_IMAGE}"),
            &format!("image: {image}"),
        )
        .replace(
            "imagePullPolicy: Never",
            &format!("imagePullPolicy: {policy}"),
        );
    assert!(out.contains(image) && out.contains(policy), "{out}");
    out
}

/// `dockscale_image_pulls_total{result}` as the controller serves it.
async fn pulls(controller: &RunningController, result: &str) -> u64 {
    let (_, body) = controller.get("/metrics").await;
    let wanted = format!("dockscale_image_pulls_total{{result=\"{result}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&wanted))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the frontend answers 200; returns how long that took from `since`.
async fn first_served(fixture: &LbFixture, since: Instant) -> Duration {
    wait_for(
        "a request served",
        Duration::from_secs(90),
        || match block(try_http_get(fixture.bind, "/")) {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    since.elapsed()
}

fn ids(fixture: &Fixture) -> BTreeSet<String> {
    fixture.running().into_iter().map(|c| c.id).collect()
}

/// The image IDs the running replicas run (one removed meanwhile is left out).
fn image_ids(fixture: &Fixture) -> BTreeSet<String> {
    fixture
        .running()
        .iter()
        .filter_map(|c| sh_quiet("docker", &["inspect", "--format", "{{.Image}}", &c.id]))
        .map(|id| id.trim().to_owned())
        .collect()
}

/// The service's status, once the controller serves it.
fn status_of(controller: &RunningController, service: &str) -> Option<serde_json::Value> {
    let (code, body) = block(controller.get(&format!("/api/v1/services/{service}")));
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_is_pulled_from_the_registry_and_served_through_haproxy() {
    let registry = Registry::start().await;
    let image = format!("{}:v1", registry.repository("e2e-pull"));
    registry.push(WEBAPP_IMAGE, &image).await;
    assert!(registry.local_id(&image).await.is_none(), "still local");

    let pulled = LbFixture::new("e2e-pull");
    pulled.write_spec(&with_image(
        &pulled.lb_spec(2, "pulled", ""),
        &image,
        "IfNotPresent",
    ));
    let config = registry.docker_config("nobody", "unused");
    let config = config.display().to_string();
    let started = Instant::now();
    let controller =
        RunningController::start(&pulled.lb_run_args(&["--docker-config", config.as_str()]));
    let pulled_took = first_served(&pulled, started).await;
    pulled.serving(2).await;
    let status = controller.service_status(&pulled.service).await;
    let events = status["events"].to_string();
    assert!(events.contains("Pulling image"), "{events}");
    assert!(events.contains("Successfully pulled image"), "{events}");
    assert_eq!(pulls(&controller, "ok").await, 1);
    assert_eq!(pulls(&controller, "error").await, 0);
    controller.stop().await;

    // The same spec with the image already there.
    let local = LbFixture::new("e2e-local");
    local.write_spec(&local.lb_spec(2, "local", ""));
    let started = Instant::now();
    let controller = RunningController::start(&local.lb_run_args(&[]));
    let local_took = first_served(&local, started).await;
    controller.stop().await;
    println!(
        "time to the first request served: pulled image {pulled_took:?}, local image \
         {local_took:?} (pull overhead {:?})",
        pulled_took.saturating_sub(local_took)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_are_image_pull_back_off_with_the_registrys_message() {
    let registry = Registry::with_login("e2e", "right-password").await;
    let image = format!("{}:v1", registry.repository("e2e-auth"));
    registry.push(WEBAPP_IMAGE, &image).await;

    let fixture = Fixture::new("e2e-auth");
    let spec = with_image(&fixture.pool_spec(1), &image, "IfNotPresent");
    fixture.write_spec(&spec);
    let config = registry.docker_config("e2e", "wrong-password");
    let config_arg = config.display().to_string();
    let controller =
        RunningController::start(&fixture.run_args(&["--docker-config", config_arg.as_str()]));
    controller.wait_listening().await;
    let started = Instant::now();
    let (message, took) = wait_for("ImagePullBackOff", Duration::from_secs(30), || {
        let s = status_of(&controller, &fixture.service).unwrap_or_default();
        match condition(&s, "ReplicaFailure") {
            Some(c) if c["status"] == true && c["reason"] == "ImagePullBackOff" => {
                Ok(c["message"].as_str().unwrap_or_default().to_owned())
            }
            _ => Err(s["conditions"].clone()),
        }
    })
    .await;
    println!("ImagePullBackOff in {took:?}: {message}");
    assert!(
        message.contains("unauthorized") || message.contains("authentication required"),
        "not the registry's words: {message}"
    );
    // About 10 s of back-off (1 s, 2 s, 4 s, ...): a handful of pulls, no hot loop.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(started.elapsed())).await;
    let failed = pulls(&controller, "error").await;
    println!("{failed} failed pulls in {:?}", started.elapsed());
    assert!((2..=6).contains(&failed), "{failed} pulls in 10 s");
    assert!(fixture.containers().is_empty(), "created without the image");

    // The right password: the next pull (its back-off at most 16 s away) succeeds.
    let right = registry.docker_config("e2e", "right-password");
    std::fs::copy(right.join("config.json"), config.join("config.json")).expect("copy");
    let (_, took) = wait_for("the replica after the fix", Duration::from_secs(40), || {
        let running = fixture.running().len();
        if running == 1 {
            Ok(())
        } else {
            Err(running)
        }
    })
    .await;
    println!("served {took:?} after the credentials were fixed");
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_tag_is_pulled_and_rolled_under_load_without_a_failed_request() {
    let registry = Registry::start().await;
    let repository = registry.repository("e2e-tag");
    let (v1, v2) = (format!("{repository}:v1"), format!("{repository}:v2"));
    registry.push(WEBAPP_IMAGE, &v1).await;
    registry.variant(&v2).await;
    registry.push(&v2, &v2).await;

    let fixture = LbFixture::new("e2e-tag");
    let rollout = "  rollout: {maxSurge: 1, maxUnavailable: 0}\n";
    let spec = fixture.lb_spec(4, "tags", rollout);
    fixture.write_spec(&with_image(&spec, &v1, "IfNotPresent"));
    let config = registry.docker_config("nobody", "unused");
    let config = config.display().to_string();
    let controller =
        RunningController::start(&fixture.lb_run_args(&["--docker-config", config.as_str()]));
    fixture.serving(4).await;
    let old = ids(&fixture);

    let load = Load::start(fixture.bind, "/?delay=5", 16, Duration::from_secs(120));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    fixture.write_spec(&with_image(&spec, &v2, "IfNotPresent"));
    let v2_id = wait_for("v2 pulled", Duration::from_secs(60), || {
        block(registry.local_id(&v2)).ok_or("not yet")
    })
    .await
    .0;
    let (_, took) = wait_for("rolled to v2", Duration::from_secs(120), || {
        let running = ids(&fixture);
        let images = image_ids(&fixture);
        if running.len() == 4
            && running.is_disjoint(&old)
            && images == BTreeSet::from([v2_id.clone()])
        {
            Ok(())
        } else {
            Err((running.len(), images))
        }
    })
    .await;
    fixture.serving(4).await;
    println!(
        "new tag pulled and rolled over 4 replicas in {:?} ({took:?})",
        started.elapsed()
    );
    load.finish_without_failures("a rollout to a pulled tag")
        .await;
    assert_eq!(pulls(&controller, "ok").await, 2, "v1 once, v2 once");
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn always_rolls_nothing_for_an_unchanged_digest_and_rolls_a_moved_tag() {
    let registry = Registry::start().await;
    let image = format!("{}:stable", registry.repository("e2e-always"));
    registry.push(WEBAPP_IMAGE, &image).await;

    let fixture = LbFixture::new("e2e-always");
    let spec = with_image(&fixture.lb_spec(2, "always", ""), &image, "Always");
    fixture.write_spec(&spec);
    let config = registry.docker_config("nobody", "unused");
    let config = config.display().to_string();
    let controller =
        RunningController::start(&fixture.lb_run_args(&["--docker-config", config.as_str()]));
    fixture.serving(2).await;
    let old = ids(&fixture);
    assert_eq!(pulls(&controller, "ok").await, 1);

    // The spec written again (a reload): the tag is resolved again, to the same image.
    fixture.write_spec(&spec);
    wait_for("resolved again", Duration::from_secs(30), || {
        match block(pulls(&controller, "ok")) {
            2 => Ok(()),
            n => Err(n),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ids(&fixture), old, "an unchanged tag rolled the replicas");

    // The tag moves to a new image in the registry; the next reload rolls to it.
    registry.variant(&image).await;
    let moved = registry.local_id(&image).await.expect("the variant");
    registry.push(&image, &image).await;
    fixture.write_spec(&spec);
    let (_, took) = wait_for("rolled to the moved tag", Duration::from_secs(90), || {
        let running = ids(&fixture);
        let images = image_ids(&fixture);
        if running.len() == 2
            && running.is_disjoint(&old)
            && images == BTreeSet::from([moved.clone()])
        {
            Ok(())
        } else {
            Err((running.len(), images))
        }
    })
    .await;
    println!("moved tag rolled in {took:?}");
    fixture.serving(2).await;
    controller.stop().await;
}
