//! An operator's commands to a canary rollout (`dockscale rollout pause|resume|abort|
//! retry`), as pure inputs to the planner: [`apply`] checks that a command applies to
//! what the service's [`Memory`] holds and changes that memory, or refuses it with the
//! reason. The planner then acts on it in its next pass ([`super::canary::step`]: a
//! paused canary holds its step, an abort takes the path of a failed analysis, a
//! retried template starts again from its first step).
//!
//! It performs no I/O and reads no clock (the instant is given); the controller loop
//! receives the commands and calls it, and never decides anything itself.

use tokio::time::Instant;

use super::canary::CanaryProgress;
use super::Memory;
use crate::spec::{ServiceSpec, Strategy};

/// A command to a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutCommand {
    /// Hold the canary's current step: no step advances; the analysis goes on.
    Pause,
    /// Let a paused canary go on.
    Resume,
    /// Abort the canary, as a failed analysis would.
    Abort,
    /// Roll the aborted template out again, from its first step.
    Retry,
}

impl RolloutCommand {
    pub const ALL: [RolloutCommand; 4] = [
        RolloutCommand::Pause,
        RolloutCommand::Resume,
        RolloutCommand::Abort,
        RolloutCommand::Retry,
    ];

    /// A short, bounded label (metrics, URLs).
    pub fn label(self) -> &'static str {
        match self {
            RolloutCommand::Pause => "pause",
            RolloutCommand::Resume => "resume",
            RolloutCommand::Abort => "abort",
            RolloutCommand::Retry => "retry",
        }
    }

    /// The command named `name` (`pause`, `resume`, `abort`, `retry`).
    pub fn parse(name: &str) -> Option<RolloutCommand> {
        Self::ALL.into_iter().find(|c| c.label() == name)
    }
}

/// The message of the abort a command asked for (the `RolloutAborted` event's).
pub const ABORTED_BY_COMMAND: &str = "aborted by command (`dockscale rollout abort`)";

/// A command applied: what to tell the operator, and the event to record.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The event's reason (`RolloutPaused`, ...).
    pub reason: &'static str,
    /// One sentence, for the answer and the event.
    pub message: String,
}

/// A command that does not apply to where the rollout stands, and why.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Applies `command` to the memory of a service whose spec is `spec` and whose
/// current template is `hash`, at `now`.
pub fn apply(
    command: RolloutCommand,
    memory: &mut Memory,
    spec: &ServiceSpec,
    hash: &str,
    now: Instant,
) -> Result<Applied, Refused> {
    let kind = kind_of(spec);
    match command {
        RolloutCommand::Pause => {
            let canary = under_way(memory, spec, hash, "paused")?;
            if canary.paused_since.is_some() {
                return Err(Refused(format!(
                    "the {kind} of template {hash} is paused already, at {}",
                    stage(spec, canary.step)
                )));
            }
            canary.paused_since = Some(now);
            Ok(Applied {
                reason: "RolloutPaused",
                message: format!(
                    "{} of template {hash} paused at {}: the {} holds, its analysis goes \
                     on; `dockscale rollout resume` lets it go on",
                    capitalized(kind),
                    stage_with_weight(spec, canary.step),
                    if guarded_rolling(spec) {
                        "batch"
                    } else {
                        "step"
                    },
                ),
            })
        }
        RolloutCommand::Resume => {
            let canary = under_way(memory, spec, hash, "resumed")?;
            if canary.paused_since.take().is_none() {
                return Err(Refused(format!(
                    "the {kind} of template {hash} is not paused (at {})",
                    stage(spec, canary.step)
                )));
            }
            Ok(Applied {
                reason: "RolloutResumed",
                message: format!(
                    "{} of template {hash} resumed at {}",
                    capitalized(kind),
                    stage_with_weight(spec, canary.step)
                ),
            })
        }
        RolloutCommand::Abort => {
            let canary = under_way(memory, spec, hash, "aborted")?;
            if canary.abort_requested {
                return Err(Refused(format!(
                    "the {kind} of template {hash} is being aborted already"
                )));
            }
            canary.abort_requested = true;
            Ok(Applied {
                reason: "RolloutAbortRequested",
                message: format!(
                    "Abort of the {kind} of template {hash} requested at {}: the old \
                     replicas take all the traffic back",
                    stage(spec, canary.step)
                ),
            })
        }
        RolloutCommand::Retry => {
            if memory.aborted_template.as_deref() != Some(hash) {
                return Err(Refused(format!(
                    "nothing to retry: template {hash} was not aborted{}",
                    match &memory.canary {
                        Some(c) if c.template_hash == hash && !c.promoted => {
                            if guarded_rolling(spec) {
                                " (its rolling update is under way)"
                            } else {
                                " (its canary is under way)"
                            }
                        }
                        _ => "",
                    }
                )));
            }
            memory.aborted_template = None;
            memory.canary = None;
            Ok(Applied {
                reason: "RolloutRetried",
                message: if guarded_rolling(spec) {
                    format!("Template {hash} is rolled out again, from its first batch")
                } else {
                    format!(
                        "Template {hash} is rolled out again, from the first step of its canary"
                    )
                },
            })
        }
    }
}

/// The canary of `hash` under way, or why there is none to be `what`.
fn under_way<'m>(
    memory: &'m mut Memory,
    spec: &ServiceSpec,
    hash: &str,
    what: &str,
) -> Result<&'m mut CanaryProgress, Refused> {
    let kind = kind_of(spec);
    if memory.aborted_template.as_deref() == Some(hash) {
        return Err(Refused(format!(
            "the {kind} of template {hash} was aborted: nothing to be {what} \
             (`dockscale rollout retry` rolls it out again)"
        )));
    }
    if spec.rollout.guard().is_none() {
        return Err(Refused(format!(
            "the service rolls out with strategy rolling and no analysis: only a canary or \
             a rolling update with `rollout.analysis` can be {what}"
        )));
    }
    match memory.canary.as_mut() {
        Some(c) if c.template_hash == hash && c.promoted => Err(Refused(format!(
            "the canary of template {hash} was promoted: its steps are over, nothing to be \
             {what}"
        ))),
        Some(c) if c.template_hash == hash => Ok(c),
        _ => Err(Refused(format!(
            "no {kind} under way: template {hash} is the one that runs, nothing to be {what}"
        ))),
    }
}

/// A rolling update watched by the analysis ([`super::guard`]), not a canary.
fn guarded_rolling(spec: &ServiceSpec) -> bool {
    spec.rollout.strategy == Strategy::Rolling && spec.rollout.analysis.is_some()
}

/// What the commands act on, in words.
fn kind_of(spec: &ServiceSpec) -> &'static str {
    if guarded_rolling(spec) {
        "rolling update"
    } else {
        "canary"
    }
}

fn capitalized(kind: &str) -> String {
    let mut c = kind.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// `step 2` of a canary, `batch 2` of a rolling update.
fn stage(spec: &ServiceSpec, step: usize) -> String {
    if guarded_rolling(spec) {
        format!("batch {}", step + 1)
    } else {
        format!("step {}", step + 1)
    }
}

/// `step 2 (25%)` of a canary, `batch 2` of a rolling update.
fn stage_with_weight(spec: &ServiceSpec, step: usize) -> String {
    if guarded_rolling(spec) {
        stage(spec, step)
    } else {
        format!("{} ({})", stage(spec, step), step_weight(spec, step))
    }
}

/// `25%` for a step, `-` past the spec's steps.
fn step_weight(spec: &ServiceSpec, step: usize) -> String {
    spec.rollout
        .steps
        .get(step)
        .map_or_else(|| "-".to_owned(), |s| format!("{}%", s.weight))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::canary::CanaryProgress;

    fn canary_spec() -> ServiceSpec {
        crate::testing::spec().replicas(2).lb().canary().build()
    }

    fn under_way_at(step: usize) -> Memory {
        Memory {
            canary: Some(CanaryProgress {
                step,
                ..CanaryProgress::new("h2")
            }),
            ..Memory::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_canary_under_way_is_paused_once_and_resumed_once() {
        let spec = canary_spec();
        let mut m = under_way_at(0);
        let now = Instant::now();
        let paused = apply(RolloutCommand::Pause, &mut m, &spec, "h2", now).expect("pauses");
        assert_eq!(paused.reason, "RolloutPaused");
        assert!(
            paused.message.contains("step 1 (25%)"),
            "{}",
            paused.message
        );
        assert_eq!(m.canary.as_ref().and_then(|c| c.paused_since), Some(now));

        let again = apply(RolloutCommand::Pause, &mut m, &spec, "h2", now);
        assert_eq!(
            again,
            Err(Refused(
                "the canary of template h2 is paused already, at step 1".to_owned()
            ))
        );
        apply(RolloutCommand::Resume, &mut m, &spec, "h2", now).expect("resumes");
        assert_eq!(m.canary.as_ref().and_then(|c| c.paused_since), None);
        let not_paused = apply(RolloutCommand::Resume, &mut m, &spec, "h2", now);
        assert!(
            not_paused.is_err_and(|r| r.0.contains("is not paused")),
            "a resume of a running canary is refused"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_abort_is_asked_of_the_planner_and_a_second_one_is_refused() {
        let spec = canary_spec();
        let mut m = under_way_at(1);
        let now = Instant::now();
        let applied = apply(RolloutCommand::Abort, &mut m, &spec, "h2", now).expect("aborts");
        assert!(applied.message.contains("at step 2"), "{}", applied.message);
        assert!(m.canary.as_ref().is_some_and(|c| c.abort_requested));
        assert!(apply(RolloutCommand::Abort, &mut m, &spec, "h2", now).is_err());
        // Until the planner aborted it, there is nothing to retry.
        assert!(apply(RolloutCommand::Retry, &mut m, &spec, "h2", now)
            .is_err_and(|r| r.0.contains("its canary is under way")));
    }

    #[tokio::test(start_paused = true)]
    async fn an_aborted_template_is_retried_from_its_first_step_and_only_it() {
        let spec = canary_spec();
        let mut m = Memory {
            aborted_template: Some("h2".to_owned()),
            ..Memory::default()
        };
        let now = Instant::now();
        for c in [
            RolloutCommand::Pause,
            RolloutCommand::Resume,
            RolloutCommand::Abort,
        ] {
            let refused = apply(c, &mut m, &spec, "h2", now).expect_err("refused");
            assert!(refused.0.contains("was aborted"), "{c:?}: {refused}");
        }
        assert!(
            apply(RolloutCommand::Retry, &mut m, &spec, "h3", now).is_err(),
            "another template than the aborted one"
        );
        let retried = apply(RolloutCommand::Retry, &mut m, &spec, "h2", now).expect("retries");
        assert_eq!(retried.reason, "RolloutRetried");
        assert_eq!((m.aborted_template, m.canary), (None, None));
    }

    #[tokio::test(start_paused = true)]
    async fn commands_without_a_canary_under_way_are_refused_with_the_reason() {
        let spec = canary_spec();
        let now = Instant::now();
        let mut settled = Memory::default();
        let refused = apply(RolloutCommand::Pause, &mut settled, &spec, "h2", now);
        assert_eq!(
            refused,
            Err(Refused(
                "no canary under way: template h2 is the one that runs, nothing to be paused"
                    .to_owned()
            ))
        );
        let mut promoted = under_way_at(1);
        if let Some(c) = promoted.canary.as_mut() {
            c.promoted = true;
        }
        assert!(
            apply(RolloutCommand::Abort, &mut promoted, &spec, "h2", now)
                .is_err_and(|r| r.0.contains("was promoted"))
        );
        let mut rolling_spec = spec.clone();
        rolling_spec.rollout.strategy = Strategy::Rolling;
        assert!(apply(
            RolloutCommand::Pause,
            &mut under_way_at(0),
            &rolling_spec,
            "h2",
            now
        )
        .is_err_and(|r| r.0.contains("strategy rolling")));
        // A canary of an older template is no canary of this one.
        assert!(apply(
            RolloutCommand::Pause,
            &mut under_way_at(0),
            &spec,
            "h3",
            now
        )
        .is_err());
    }

    #[test]
    fn commands_parse_from_their_labels() {
        for c in RolloutCommand::ALL {
            assert_eq!(RolloutCommand::parse(c.label()), Some(c));
        }
        assert_eq!(RolloutCommand::parse("restart"), None);
    }
}
