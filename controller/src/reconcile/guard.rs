//! A rolling update guarded by the analysis (`strategy: rolling` with
//! `rollout.analysis`): the new replicas come in batches of up to `maxSurge`, as in a
//! plain rolling update, and each batch, once ready, is watched for
//! `analysis.interval` with the canary's thresholds ([`canary::failed`]) before the old
//! replicas it replaces are retired. A batch that does worse than the old replicas
//! aborts the rollout as a canary does. Pure: it is given the clock and the counters.
//!
//! It owns one rule: how far the old replicas may go down in this pass
//! ([`Gate::old_floor`]), from the new replicas whose batch passed. The rolling update
//! itself (creates within the surge, victims within `maxUnavailable`) stays the
//! planner's, which keeps at least that many old replicas; an abort's way back (the
//! old template restored, the new replicas drained) is the planner's too.
//!
//! Its progress is a [`CanaryProgress`] (so that `dockscale rollout pause|resume|abort`
//! apply to it as to a canary): `step` counts the batches watched, `passed` the new
//! replicas whose batch passed, `since` the start of the batch under watch.

use super::canary::{self, Analysed, CanaryProgress, Failure, Verdict};
use super::rotation::Live;
use super::{control, Input, Memory, Note, Plan, ACTIVE_REQUEUE};
use crate::spec::Strategy;

/// What the guard asks of this pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate {
    /// The old replicas to keep at least: `desired` less the new replicas that passed.
    pub old_floor: u32,
}

/// Step 5c: where a guarded rolling update stands, and how many old replicas it keeps.
/// `None` when none is under way (another strategy, no analysis, nothing old left, an
/// aborted template, or no load balancer to read the figures from). An abort in this
/// pass sets [`Plan::aborted`] with its note and returns `None`: the planner takes
/// the abort's way from there.
pub fn step(input: &Input<'_>, memory: &Memory, lives: &[Live], plan: &mut Plan) -> Option<Gate> {
    let spec = input.spec;
    let rollout = &spec.rollout;
    if rollout.strategy != Strategy::Rolling || spec.load_balancer.is_none() {
        return None;
    }
    let analysis = rollout.guard()?;
    let hash = input.template_hash;
    if memory.aborted_template.as_deref() == Some(hash) || lives.iter().all(|l| l.updated) {
        return None;
    }
    let mut progress = match &memory.canary {
        Some(c) if c.template_hash == hash => c.clone(),
        _ => CanaryProgress::new(hash),
    };
    let ready_new = lives
        .iter()
        .filter(|l| l.updated && l.serving.is_ready())
        .count() as u32;
    let abort = |message: String, plan: &mut Plan| {
        plan.notes.push(Note::RolloutAborted {
            template_hash: hash.to_owned(),
            message,
        });
        plan.aborted = Some(hash.to_owned());
        plan.canary = None;
        None
    };
    let counters = input.backend.map(|b| &b.counters);
    match (&progress.since, counters) {
        _ if progress.abort_requested && progress.since.is_none() => {
            return abort(control::ABORTED_BY_COMMAND.to_owned(), plan);
        }
        (None, Some(now_counters)) if ready_new > progress.passed => {
            // A batch is ready: watch it (with the new replicas before it).
            progress.since = Some((input.now.instant, now_counters.clone()));
            progress.watching = ready_new;
            plan.notes.push(Note::GuardBatch {
                batch: progress.step + 1,
                new_ready: ready_new,
                desired: input.desired,
            });
            plan.requeue(analysis.interval.get());
        }
        (Some((since, start)), Some(now_counters)) => {
            let (old, new) = canary::versions_since(lives, start, now_counters);
            let elapsed = input.now.instant.saturating_duration_since(*since);
            let verdict = if progress.abort_requested {
                Verdict::Abort(Failure {
                    message: control::ABORTED_BY_COMMAND.to_owned(),
                })
            } else if let Some(failure) = canary::failed(&analysis, &old, &new) {
                Verdict::Abort(failure)
            } else if elapsed < analysis.interval.get() || progress.paused_since.is_some() {
                Verdict::Hold {
                    recheck_in: analysis
                        .interval
                        .get()
                        .saturating_sub(elapsed)
                        .max(ACTIVE_REQUEUE),
                }
            } else {
                Verdict::Advance {
                    next: progress.step + 1,
                }
            };
            plan.canary_analysis = Some(Analysed {
                step: progress.step,
                weight: share(&new, &old),
                old,
                new,
                elapsed,
                verdict: verdict.clone(),
            });
            match verdict {
                Verdict::Hold { recheck_in } => plan.requeue(recheck_in),
                Verdict::Advance { next } => {
                    progress.step = next;
                    progress.passed = progress.watching;
                    progress.since = None;
                    plan.requeue(ACTIVE_REQUEUE);
                }
                Verdict::Promote => {}
                Verdict::Abort(failure) => return abort(failure.message, plan),
            }
        }
        // Starting, or HAProxy unreadable: nothing passes meanwhile.
        _ => plan.requeue(ACTIVE_REQUEUE),
    }
    let gate = Gate {
        old_floor: input.desired.saturating_sub(progress.passed),
    };
    plan.canary = Some(progress);
    Some(gate)
}

/// The new replicas' share of the requests both versions answered, in percent.
fn share(new: &canary::Figures, old: &canary::Figures) -> u8 {
    (new.requests * 100)
        .checked_div(new.requests + old.requests)
        .map_or(0, |p| u8::try_from(p).unwrap_or(100))
}
