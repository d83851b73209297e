//! `dockscale logs` and `dockscale events`, as a user runs them: the binary of this
//! build next to a controller running in-process, against the real Docker engine.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use dockscale_e2e::process::{dockscale_output, logs_prefixes, Watching};
use dockscale_e2e::{dockscale_bin, sh, wait_for, Fixture, RunningController};

/// The names of the running replicas.
fn running_names(fixture: &Fixture) -> BTreeSet<String> {
    fixture.running().into_iter().map(|c| c.name).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_goes_on_with_the_replica_that_replaces_a_removed_one() {
    let fixture = Fixture::new("e2e-logs");
    fixture.write_spec(&fixture.pool_spec(2));
    let controller = RunningController::start(&fixture.run_args(&[]));
    let (first, _) = wait_for("2 replicas running", Duration::from_secs(30), || {
        let names = running_names(&fixture);
        if names.len() == 2 {
            Ok(names)
        } else {
            Err(names)
        }
    })
    .await;

    let logs = Watching::start(&["logs", &fixture.service, "-f"]);
    for name in &first {
        logs.wait_line(
            &format!("{name}'s start in the followed logs"),
            Duration::from_secs(15),
            |l| l.starts_with(&format!("{name} | dockscale-webapp listening")),
        )
        .await;
    }

    // Removed from outside: dockscale replaces it at once, and the logs follow it.
    let removed = first.iter().next().cloned().expect("a replica");
    sh("docker", &["rm", "-f", &removed]);
    let (replacement, took) = wait_for("a replacement running", Duration::from_secs(30), || {
        let names = running_names(&fixture);
        let new: Vec<String> = names.difference(&first).cloned().collect();
        match new.as_slice() {
            [one] if names.len() == 2 => Ok(one.clone()),
            _ => Err(names),
        }
    })
    .await;
    println!("{removed} replaced by {replacement} in {took:?}");
    let (_, shown) = wait_for(
        "the replacement's start in the followed logs",
        Duration::from_secs(15),
        || {
            let lines = logs.lines();
            let prefix = format!("{replacement} | dockscale-webapp listening");
            if lines.iter().any(|l| l.starts_with(&prefix)) {
                Ok(())
            } else {
                Err(lines)
            }
        },
    )
    .await;
    println!("its first line followed {shown:?} after it ran");
    let lines = logs.lines();
    assert!(
        lines.iter().all(|l| l.split_once(" | ").is_some()),
        "every line is prefixed with its replica: {lines:?}"
    );
    drop(logs);

    // Without --follow: the last line of each replica there is, and it ends.
    let text = dockscale_output(&["logs", &fixture.service, "--tail", "1"]);
    assert_eq!(
        logs_prefixes(&text),
        running_names(&fixture),
        "one line per replica: {text}"
    );
    assert_eq!(text.lines().count(), 2, "{text}");

    // No replicas at all: said, and a failure.
    let out = Command::new(dockscale_bin())
        .args(["logs", &format!("{}-none", fixture.service)])
        .output()
        .expect("dockscale logs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no replicas of"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_watch_prints_each_new_event_and_ends_with_the_controller() {
    let fixture = Fixture::new("e2e-events");
    fixture.write_spec(&fixture.pool_spec(1));
    let controller = RunningController::start(&fixture.run_args(&[]));
    controller.wait_listening().await;
    let addr = controller.listen.to_string();
    let service = fixture.service.clone();

    let watch = Watching::start(&["events", "-w", "--addr", &addr, "-o", "json"]);
    let event = |line: &str| serde_json::from_str::<serde_json::Value>(line).ok();
    let is = |line: &str, reason: &str, message: &str| {
        event(line).is_some_and(|e| {
            e["service"] == service.as_str()
                && e["reason"] == reason
                && e["message"].as_str().is_some_and(|m| m.contains(message))
        })
    };
    watch
        .wait_line(
            "the first replica's creation",
            Duration::from_secs(30),
            |l| is(l, "SuccessfulCreate", "Created replica"),
        )
        .await;

    fixture.write_spec(&fixture.pool_spec(2));
    watch
        .wait_line(
            "the scale-up, as it happens",
            Duration::from_secs(15),
            |l| is(l, "ScalingReplicaSet", "Scaled up from 1 to 2"),
        )
        .await;
    let lines = watch.lines();
    let seqs: Vec<u64> = lines
        .iter()
        .filter_map(|l| event(l)?["seq"].as_u64())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "each event once, in order: {lines:?}"
    );

    // The table, without --watch: the header and this service's events.
    let out = Command::new(dockscale_bin())
        .args(["events", "--addr", &addr])
        .output()
        .expect("dockscale events");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("LAST SEEN"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains(&fixture.service) && l.contains("Scaled up from 1 to 2")),
        "{table}"
    );

    // A controller that stops ends the watch: the stream closes, the command exits.
    controller.stop().await;
    let mut watch = watch;
    let (status, _) = wait_for("the watch to end", Duration::from_secs(10), || match watch
        .try_wait()
    {
        Ok(Some(status)) => Ok(status),
        other => Err(format!("{other:?}")),
    })
    .await;
    assert!(status.success(), "{status}");
}
