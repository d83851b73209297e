//! Rollout commands on the fakes: a paused canary holds its step past its pause and
//! goes on when resumed, an abort by command takes the path of a failed analysis, an
//! aborted template is retried on command, and the history records each rollout and
//! survives a restart of the controller (which keeps holding an aborted template).

use super::canary::{split, traffic, under_traffic};
use super::*;
use crate::reconcile::history::Outcome;
use crate::serve::status::RolloutStatus;

fn rollout(w: &World, service: &str) -> RolloutStatus {
    w.status(service).map(|s| s.rollout).unwrap_or_default()
}

fn outcomes(w: &World, service: &str) -> Vec<Option<Outcome>> {
    w.status(service)
        .map(|s| s.history.revisions.iter().map(|r| r.outcome).collect())
        .unwrap_or_default()
}

pub(super) fn applied(reply: CommandReply) -> String {
    match reply {
        CommandReply::Applied(message) => message,
        other => panic!("not applied: {other:?}"),
    }
}

pub(super) fn refused(reply: CommandReply) -> String {
    match reply {
        CommandReply::Refused(message) => message,
        other => panic!("not refused: {other:?}"),
    }
}

/// Runs traffic every 500ms for `d`.
async fn traffic_for(w: &World, old: &BTreeSet<ContainerId>, d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        traffic(w, old, false);
        tokio::time::sleep(ms(500)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_paused_canary_holds_its_step_past_its_pause_and_goes_on_when_resumed() {
    let spec = svc("web").replicas(4).lb().canary();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 4, secs(5)).await;
    let old = w.running_ids("web");

    w.edit(&[spec.version(2)]);
    w.until("the canary under way", secs(5), |w| {
        rollout(w, "web").state == "progressing"
    })
    .await;
    let message = applied(w.command("web", RolloutCommand::Pause).await);
    assert!(message.contains("paused at step 1 (25%)"), "{message}");
    assert!(
        refused(w.command("web", RolloutCommand::Pause).await).contains("paused already"),
        "a second pause"
    );

    // Three times the step's 10s pause: the step holds, its analysis goes on.
    let m = w.metrics.clone();
    let start = Instant::now();
    let mut split_seen = false;
    while start.elapsed() < secs(30) {
        traffic(&w, &old, false);
        split_seen |= split(&w, &old);
        assert_eq!(m.canary_step.with_label_values(&["web"]).get(), 1);
        tokio::time::sleep(ms(500)).await;
    }
    assert!(
        split_seen,
        "the step's share was never given to the new server"
    );
    let status = rollout(&w, "web");
    assert_eq!(
        (status.state, status.step, status.weight, status.paused),
        ("paused", Some(1), Some(25), true)
    );
    assert!(status.paused_for_seconds.is_some_and(|s| s >= 25.0));
    let analysis = status.analysis.expect("the analysis goes on while paused");
    assert_eq!((analysis.step, analysis.verdict.as_str()), (1, "hold"));
    assert!(analysis.requests.new > 0 && analysis.elapsed_seconds > 20.0);
    assert_eq!(w.events_with("web", "CanaryStep").len(), 1);
    assert_eq!(
        m.canary_verdicts_total
            .with_label_values(&["web", "advance"])
            .get(),
        0,
        "a paused step advanced"
    );

    applied(w.command("web", RolloutCommand::Resume).await);
    under_traffic(&w, &old, false, secs(60), |w| {
        w.converged("web", 4) && w.running_ids("web").is_disjoint(&old)
    })
    .await;
    assert_eq!(w.events_with("web", "CanaryStep").len(), 2);
    assert_eq!(w.events_with("web", "RolloutPaused").len(), 1);
    assert_eq!(w.events_with("web", "RolloutResumed").len(), 1);
    assert_eq!(outcomes(&w, "web"), [Some(Outcome::Promoted)]);
    let revision = w.status("web").expect("status").history.revisions[0].clone();
    let steps: Vec<(usize, u8, &str)> = revision
        .steps
        .iter()
        .map(|s| (s.step, s.weight, s.verdict.as_str()))
        .collect();
    assert_eq!(steps, [(1, 25, "advance"), (2, 50, "promote")]);
    assert!(revision.steps[0].elapsed_seconds >= 25.0, "{revision:?}");
    let commands = |c: &str, o: &str| {
        m.rollout_commands_total
            .with_label_values(&["web", c, o])
            .get()
    };
    assert_eq!(
        (
            commands("pause", "applied"),
            commands("pause", "refused"),
            commands("resume", "applied")
        ),
        (1, 1, 1)
    );
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn an_abort_by_command_takes_the_old_replicas_back_and_a_retry_rolls_the_template_again() {
    let spec = svc("web").replicas(4).lb().canary();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 4, secs(5)).await;
    let old = w.running_ids("web");
    let serving = w.serving("web");

    w.edit(&[spec.clone().version(2)]);
    under_traffic(&w, &old, false, secs(10), |w| {
        !w.events_with("web", "CanaryStep").is_empty()
    })
    .await;
    traffic_for(&w, &old, secs(2)).await;
    applied(w.command("web", RolloutCommand::Abort).await);
    under_traffic(&w, &old, false, secs(30), |w| w.running_ids("web") == old).await;
    w.assert_aborted("web", "aborted by command");
    assert_eq!(w.serving("web"), serving);
    assert!(
        w.lb.slots("web")
            .iter()
            .filter(|s| s.in_rotation())
            .all(|s| s.weight == 100),
        "old replicas not back at full weight"
    );
    // Like a failed analysis: held back.
    traffic_for(&w, &old, secs(20)).await;
    assert_eq!(
        w.running_ids("web"),
        old,
        "the aborted template was retried"
    );
    let status = rollout(&w, "web");
    assert_eq!(status.state, "aborted");
    let aborted_status = status.aborted.expect("the aborted template");
    assert!(aborted_status.message.contains("aborted by command"));
    assert!(
        status.analysis.is_some_and(|a| a.verdict == "abort"),
        "the figures it was aborted on stay"
    );
    for c in [RolloutCommand::Pause, RolloutCommand::Abort] {
        assert!(refused(w.command("web", c).await).contains("was aborted"));
    }

    applied(w.command("web", RolloutCommand::Retry).await);
    under_traffic(&w, &old, false, secs(60), |w| {
        w.converged("web", 4) && w.running_ids("web").is_disjoint(&old)
    })
    .await;
    assert_eq!(w.events_with("web", "RolloutRetried").len(), 1);
    assert_eq!(
        outcomes(&w, "web"),
        [Some(Outcome::Aborted), Some(Outcome::Promoted)]
    );
    assert!(refused(w.command("web", RolloutCommand::Retry).await).contains("nothing to retry"));
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn commands_that_do_not_apply_are_refused_and_an_unknown_service_is_not_found() {
    let spec = svc("web").replicas(2).lb().canary();
    let w = World::new(&[spec, svc("plain").replicas(1)]).start();
    w.converge("web", 2, secs(5)).await;
    for c in RolloutCommand::ALL {
        let message = refused(w.command("web", c).await);
        assert!(
            message.contains("no canary under way") || message.contains("nothing to retry"),
            "{c:?}: {message}"
        );
    }
    assert!(refused(w.command("plain", RolloutCommand::Pause).await).contains("strategy rolling"));
    assert_eq!(
        w.command("nosuch", RolloutCommand::Pause).await,
        CommandReply::NotFound
    );
    assert_eq!(rollout(&w, "web").state, "settled");
    assert!(outcomes(&w, "web").is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_history_and_an_abort_survive_a_restart_of_the_controller() {
    let spec = svc("web").replicas(4).lb().canary();
    let mut w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 4, secs(5)).await;
    let old = w.running_ids("web");
    w.edit(&[spec.clone().version(2)]);
    under_traffic(&w, &old, true, secs(30), |w| {
        w.running_ids("web") == old && !w.events_with("web", "RolloutAborted").is_empty()
    })
    .await;
    let before = w.status("web").expect("status").history;
    assert_eq!(outcomes(&w, "web"), [Some(Outcome::Aborted)]);

    w.stop_controller().await;
    w.start_controller();
    traffic_for(&w, &old, secs(20)).await;
    assert_eq!(
        w.running_ids("web"),
        old,
        "a restart rolled the aborted template"
    );
    assert_eq!(w.status("web").expect("status").history, before);
    let status = rollout(&w, "web");
    assert_eq!(status.state, "aborted");
    assert!(
        status
            .aborted
            .is_some_and(|a| a.message.contains("new 5xx 50.0% vs old 0.0%")),
        "the abort's reason, read back"
    );
    applied(w.command("web", RolloutCommand::Retry).await);
    w.until("the retried canary's first step", secs(10), |w| {
        rollout(w, "web").state == "progressing"
    })
    .await;
    assert_eq!(
        outcomes(&w, "web"),
        [Some(Outcome::Aborted), None],
        "the retry is a revision under way"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rolling_update_is_recorded_promoted_and_one_overtaken_by_an_edit_superseded() {
    let spec = svc("web").replicas(3).lb();
    let w = World::new(std::slice::from_ref(&spec)).start();
    w.converge("web", 3, secs(5)).await;
    assert!(
        outcomes(&w, "web").is_empty(),
        "a first start is no rollout"
    );

    w.edit(&[spec.clone().version(2)]);
    w.converge("web", 3, secs(30)).await;
    assert_eq!(outcomes(&w, "web"), [Some(Outcome::Promoted)]);
    let revision = w.status("web").expect("status").history.revisions[0].clone();
    assert_eq!(revision.strategy, crate::spec::Strategy::Rolling);
    assert!(revision.finished.is_some() && revision.steps.is_empty());

    // An edit while the next rollout is under way supersedes it.
    w.edit(&[spec.clone().version(3)]);
    w.until("the rollout to version 3 under way", secs(5), |w| {
        outcomes(w, "web").len() == 2
    })
    .await;
    w.edit(&[spec.version(4)]);
    w.converge("web", 3, secs(30)).await;
    assert_eq!(
        outcomes(&w, "web"),
        [
            Some(Outcome::Promoted),
            Some(Outcome::Superseded),
            Some(Outcome::Promoted)
        ]
    );
}
