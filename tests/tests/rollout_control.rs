//! Rollout control against a real Docker engine and a real HAProxy, through the
//! `dockscale rollout` command line on a token-protected listen: a canary paused at
//! its first step holds its weights past the step's pause, is resumed and promoted; a
//! second one is aborted by command; the history shows both with their outcomes and
//! survives a restart of the controller (which keeps the aborted template held back);
//! a write without the token gets 401.
//!
//! A light, bounded, paced keep-alive load runs throughout (2 clients, 10 ms apart).

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use clap::Parser;
use dockscale::cli::{Cli, Command};
use dockscale::rollout_cli::RolloutError;
use dockscale_e2e::haproxy::LbFixture;
use dockscale_e2e::load::KeepAliveLoad;
use dockscale_e2e::{wait_for, RunningController};

const REPLICAS: usize = 3;
/// Each step's pause: the paused step is held well past it.
const STEP_PAUSE: Duration = Duration::from_secs(2);
const TOKEN: &str = "s3cret-rollout-token";

fn rollout_spec() -> String {
    "  rollout:\n    strategy: canary\n    steps: [{weight: 30, pause: 2s}, {weight: 60, pause: 2s}]\n    \
     analysis: {interval: 500ms, minRequests: 20}\n"
        .to_owned()
}

/// `dockscale rollout ACTION NAME --addr ... --token-file ... [more]`, in-process.
async fn rollout(
    controller: &RunningController,
    token_file: &std::path::Path,
    action: &str,
    name: &str,
    more: &[&str],
) -> Result<String, RolloutError> {
    let addr = controller.listen.to_string();
    let token = token_file.display().to_string();
    let mut args = vec![
        "dockscale",
        "rollout",
        action,
        name,
        "--addr",
        &addr,
        "--token-file",
        &token,
    ];
    args.extend_from_slice(more);
    let Command::Rollout { action } = Cli::try_parse_from(args).expect("valid arguments").command
    else {
        panic!("not a rollout command");
    };
    dockscale::rollout_cli::run(&action).await
}

/// Waits until `n` replicas, all of them `ids` when given, serve at weight 100.
async fn settled_on(fixture: &LbFixture, n: usize, ids: Option<&BTreeSet<String>>, within: u64) {
    wait_for(
        "the replicas serving at full weight",
        Duration::from_secs(within),
        || {
            let rotation = dockscale_e2e::block(fixture.taking_requests());
            let running = fixture.running();
            let ok = rotation.len() == n
                && running.len() == n
                && rotation.values().all(|w| *w == 100)
                && ids.is_none_or(|ids| running.iter().all(|c| ids.contains(&c.id)));
            if ok {
                Ok(())
            } else {
                Err((rotation, running.len()))
            }
        },
    )
    .await;
}

async fn rollout_json(controller: &RunningController, name: &str) -> serde_json::Value {
    let (code, body) = controller
        .get(&format!("/api/v1/services/{name}/rollout"))
        .await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("rollout JSON")
}

async fn history_json(controller: &RunningController, name: &str) -> serde_json::Value {
    let (code, body) = controller
        .get(&format!("/api/v1/services/{name}/rollout/history"))
        .await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("history JSON")
}

/// Waits until the canary of the spec just written is under way.
async fn under_way(controller: &RunningController, name: &str) {
    let started = Instant::now();
    loop {
        let r = rollout_json(controller, name).await;
        if r["state"] == "progressing" {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no canary under way: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ids of the running replicas.
fn ids(fixture: &LbFixture) -> BTreeSet<String> {
    fixture.running().into_iter().map(|c| c.id).collect()
}

/// A POST to a write endpoint with this `Authorization` header: its status code.
async fn post(controller: &RunningController, path: &str, auth: Option<&str>) -> u16 {
    controller.post(path, auth).await.0
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_is_paused_resumed_and_promoted_then_another_aborted_by_command_with_its_history_kept(
) {
    let fixture = LbFixture::new("e2e-rollctl");
    let name = fixture.service.clone();
    let token_file = fixture.dir.path().join("api-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write the token");
    let token_arg = token_file.display().to_string();
    let args = fixture.lb_run_args(&["--api-token-file", &token_arg]);
    fixture.write_spec(&fixture.lb_spec(REPLICAS as u32, "v1", &rollout_spec()));
    let controller = RunningController::start(&args);
    settled_on(&fixture, REPLICAS, None, 60).await;
    let v1 = ids(&fixture);

    // Writes need the token; reads do not.
    let pause = format!("/api/v1/services/{name}/rollout/pause");
    assert_eq!(post(&controller, &pause, None).await, 401);
    assert_eq!(post(&controller, &pause, Some("Bearer wrong")).await, 401);
    let refused = rollout(&controller, &token_file, "pause", &name, &[]).await;
    assert!(
        matches!(&refused, Err(RolloutError::Refused(m)) if m.contains("no canary under way")),
        "a pause with nothing under way: {refused:?}"
    );
    assert_eq!(
        post(
            &controller,
            "/api/v1/services/nosuch/rollout/pause",
            Some(&format!("Bearer {TOKEN}"))
        )
        .await,
        404
    );

    let url = format!("http://{}/", fixture.bind);
    let load = KeepAliveLoad::paced(
        &url,
        2,
        Duration::from_millis(10),
        Duration::from_secs(10),
        Duration::from_secs(50),
    );

    // 1. Paused at step 1: its share holds past the step's pause.
    fixture.write_spec(&fixture.lb_spec(REPLICAS as u32, "v2", &rollout_spec()));
    under_way(&controller, &name).await;
    let said = rollout(&controller, &token_file, "pause", &name, &[])
        .await
        .expect("paused");
    assert!(said.contains("paused at step 1 (30%)"), "{said}");
    let share_at = Instant::now();
    // No old replica leaves during the canary's steps: their addresses hold.
    let old_addrs = addrs_of(&fixture, &v1);
    let split = loop {
        let rotation = fixture.taking_requests().await;
        let new: u32 = rotation
            .iter()
            .filter(|(a, _)| !old_addrs.contains(a))
            .map(|(_, w)| *w)
            .sum();
        let share = 100.0 * f64::from(new) / f64::from(rotation.values().sum::<u32>().max(1));
        // One new replica (ceil(3 x 30%)), weighed to the step's share.
        if rotation.len() == REPLICAS + 1 && (share - 30.0).abs() < 2.0 {
            break rotation;
        }
        assert!(
            share_at.elapsed() < Duration::from_secs(20),
            "the paused step's new replica never took its share: {rotation:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let held_from = Instant::now();
    let hold = 3 * STEP_PAUSE;
    while held_from.elapsed() < hold {
        let rotation = fixture.taking_requests().await;
        assert_eq!(rotation, split, "the paused step's weights moved");
        let r = rollout_json(&controller, &name).await;
        assert_eq!(
            (
                r["state"].as_str(),
                r["step"].as_u64(),
                r["weight"].as_u64()
            ),
            (Some("paused"), Some(1), Some(30)),
            "{r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = rollout(&controller, &token_file, "status", &name, &[])
        .await
        .expect("status");
    println!(
        "paused step held {:.1?} (its pause: {STEP_PAUSE:?}), weights {split:?}\n{status}",
        held_from.elapsed()
    );
    assert!(status.contains("State:     paused"), "{status}");
    let r = rollout_json(&controller, &name).await;
    assert!(
        r["analysis"]["requests"]["new"].as_u64().unwrap_or(0) > 0,
        "the analysis goes on while paused: {r}"
    );

    let resumed_at = Instant::now();
    rollout(&controller, &token_file, "resume", &name, &[])
        .await
        .expect("resumed");
    wait_for(
        "the canary promoted and every replica new",
        Duration::from_secs(30),
        || {
            let running = ids(&fixture);
            let rotation = dockscale_e2e::block(fixture.taking_requests());
            if running.len() == REPLICAS
                && running.is_disjoint(&v1)
                && rotation.len() == REPLICAS
                && rotation.values().all(|w| *w == 100)
            {
                Ok(())
            } else {
                Err((running.len(), rotation))
            }
        },
    )
    .await;
    println!(
        "resumed: every replica new and at weight 100 {:.1?} after the resume",
        resumed_at.elapsed()
    );
    let v2 = ids(&fixture);

    // 2. Aborted by command in its first step.
    fixture.write_spec(&fixture.lb_spec(REPLICAS as u32, "v3", &rollout_spec()));
    under_way(&controller, &name).await;
    wait_for("the canary's first share", Duration::from_secs(20), || {
        let rotation = dockscale_e2e::block(fixture.taking_requests());
        if rotation.len() == REPLICAS + 1 {
            Ok(())
        } else {
            Err(rotation)
        }
    })
    .await;
    let aborted_at = Instant::now();
    rollout(&controller, &token_file, "abort", &name, &[])
        .await
        .expect("aborted");
    settled_on(&fixture, REPLICAS, Some(&v2), 20).await;
    println!(
        "aborted by command: the old replicas alone at weight 100 {:.1?} after the command",
        aborted_at.elapsed()
    );
    let svc = controller.service_status(&name).await;
    let events: Vec<String> = svc["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reason"] == "RolloutAborted")
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(events.len(), 1, "{}", svc["events"]);
    assert!(events[0].contains("aborted by command"), "{}", events[0]);
    let progressing = svc["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Progressing")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (
            progressing["status"].as_bool(),
            progressing["reason"].as_str()
        ),
        (Some(false), Some("RolloutAborted")),
        "{progressing}"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.finish().await;
    println!(
        "load: {} ok, {} failed ({:?})",
        report.ok,
        report.failed_total(),
        report.failed
    );
    assert!(report.ok > 500, "the load ran: {} ok", report.ok);
    assert_eq!(report.failed_total(), 0, "{:#?}", report.samples);

    let v3_spec = fixture.lb_spec(REPLICAS as u32, "v3", &rollout_spec());
    assert_eq!(
        std::fs::read_to_string(fixture.spec_path()).expect("the spec"),
        v3_spec,
        "the spec file was rewritten"
    );

    // 3. The history: both rollouts, with their outcomes and figures.
    let text = rollout(&controller, &token_file, "history", &name, &[])
        .await
        .expect("history");
    println!("{text}");
    let history = history_json(&controller, &name).await;
    let revisions = history["revisions"].as_array().cloned().unwrap_or_default();
    let outcomes: Vec<&str> = revisions
        .iter()
        .map(|r| r["outcome"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(outcomes, ["promoted", "aborted"], "{history}");
    let steps = revisions[0]["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(steps.len(), 2, "{history}");
    assert!(
        steps[0]["elapsedSeconds"].as_f64().unwrap_or(0.0) >= hold.as_secs_f64(),
        "the paused step's figures cover its hold: {}",
        steps[0]
    );
    assert!(steps
        .iter()
        .all(|s| s["requests"]["new"].as_u64().unwrap_or(0) > 0));
    assert!(
        revisions[1]["message"]
            .as_str()
            .is_some_and(|m| m.contains("aborted by command")),
        "{history}"
    );
    let file = fixture
        .state_dir()
        .join("rollouts")
        .join(format!("{name}.json"));
    assert!(file.exists(), "no history file at {}", file.display());

    // 4. A restart: the history is read back, the aborted template stays held back.
    controller.stop().await;
    let controller = RunningController::start(&args);
    controller.wait_listening().await;
    wait_for(
        "the restarted controller's first pass",
        Duration::from_secs(20),
        || {
            let r =
                dockscale_e2e::block(controller.get(&format!("/api/v1/services/{name}/rollout")));
            if r.0 == 200 && r.1.contains("\"state\":\"aborted\"") {
                Ok(())
            } else {
                Err(r)
            }
        },
    )
    .await;
    assert_eq!(history_json(&controller, &name).await, history);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        ids(&fixture),
        v2,
        "the restarted controller rolled the aborted template"
    );
    assert_eq!(post(&controller, &pause, None).await, 401);
    controller.stop().await;
}

/// The addresses the replicas in `ids` have now.
fn addrs_of(fixture: &LbFixture, ids: &BTreeSet<String>) -> BTreeSet<SocketAddrV4> {
    let names: BTreeSet<String> = fixture
        .running()
        .into_iter()
        .filter(|c| ids.contains(&c.id))
        .map(|c| c.name)
        .collect();
    fixture
        .replica_addrs()
        .into_iter()
        .filter(|(n, _)| names.contains(n))
        .map(|(_, a)| a)
        .collect()
}
