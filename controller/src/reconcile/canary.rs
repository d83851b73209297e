//! Canary rollouts, decided from HAProxy's per-server counters. Pure: it is given the
//! step, the clock and the counters, and reads nothing itself.
//!
//! It owns three rules: how many replicas of the new template a share of the traffic
//! takes ([`new_replicas`]), the per-slot weights that give the new servers that share
//! ([`weights`]), and the verdict on a step ([`judge`]): hold, advance, promote, or
//! abort with the figures that failed. It does not act on a verdict (the planner does)
//! and it does not remember anything (the planner's memory does).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::rotation::Live;
use super::{control, Input, Memory, Note, Plan};

pub use crate::model::backend::ServerCounters;
use crate::spec::{Analysis, CanaryStep};

/// One version's figures over a step: the deltas of its servers, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Figures {
    /// Requests answered or failed.
    pub requests: u64,
    /// 5xx responses plus connection and response errors.
    pub errors: u64,
    /// Mean response time, weighted by requests, in milliseconds.
    pub mean_rtime_ms: f64,
    pub check_failures: u64,
}

impl Figures {
    /// Sums servers' deltas.
    pub fn of(deltas: impl IntoIterator<Item = ServerCounters>) -> Figures {
        let mut f = Figures::default();
        let mut weighted = 0.0;
        for c in deltas {
            let requests = c.responses + c.failed;
            f.requests += requests;
            f.errors += c.http_5xx + c.failed;
            f.check_failures += c.check_failures;
            weighted += c.rtime_ms as f64 * requests as f64;
        }
        if f.requests > 0 {
            f.mean_rtime_ms = weighted / f.requests as f64;
        }
        f
    }

    /// Errors per request (0 without requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// What to do with the current step.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Keep the share; look again after this long.
    Hold { recheck_in: Duration },
    /// The step's pause is over and nothing failed: on to step `next`.
    Advance { next: usize },
    /// The last step is over: the new template takes all the traffic.
    Promote,
    /// The new replicas did worse: back to the old ones at once.
    Abort(Failure),
}

impl Verdict {
    /// A short, bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Hold { .. } => "hold",
            Verdict::Advance { .. } => "advance",
            Verdict::Promote => "promote",
            Verdict::Abort(_) => "abort",
        }
    }
}

/// A step's figures as one pass judged them, and its verdict: what the metrics show
/// of a canary, so that they say what the decision was made from.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysed {
    /// The step judged (an index into `rollout.steps`; a guarded rolling update's
    /// batch).
    pub step: usize,
    /// The new template's share of the traffic in the step, in percent (a guarded
    /// rolling update's: of the requests answered).
    pub weight: u8,
    /// The old template's servers since the step's share was reached.
    pub old: Figures,
    /// The new template's servers over the same time.
    pub new: Figures,
    /// Since the step's share was reached.
    pub elapsed: Duration,
    pub verdict: Verdict,
}

impl Analysed {
    /// Requests per second of `figures` over the step so far (0 at its first instant).
    pub fn rate(&self, figures: &Figures) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            figures.requests as f64 / secs
        } else {
            0.0
        }
    }
}

/// The figures a failed analysis found, in words for the event and the condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub message: String,
}

/// New replicas for a `weight`% share of `desired`: rounded up, at least one.
pub fn new_replicas(desired: u32, weight: u8) -> u32 {
    let share = (u64::from(desired) * u64::from(weight)).div_ceil(100);
    u32::try_from(share).unwrap_or(desired).max(1)
}

/// Per-server weights `(old, new)` so that `new_count` new servers together get
/// `share`% of the total against `old_count` old ones, within HAProxy's 1..=256. The
/// closest split is chosen; on a tie, the one with the larger weights.
pub fn weights(share: u8, old_count: u32, new_count: u32, base: u16) -> (u16, u16) {
    if old_count == 0 || new_count == 0 || share == 0 || share >= 100 {
        return (base, base);
    }
    let target = f64::from(share) / 100.0;
    let (old, new) = (f64::from(old_count), f64::from(new_count));
    let mut best = (base, base, f64::INFINITY);
    for wo in 1..=256u16 {
        // new * wn / (new * wn + old * wo) = target
        let ideal = target * old * f64::from(wo) / ((1.0 - target) * new);
        let wn = ideal.round().clamp(1.0, 256.0) as u16;
        let got = new * f64::from(wn) / (new * f64::from(wn) + old * f64::from(wo));
        let error = (got - target).abs();
        if error <= best.2 {
            best = (wo, wn, error);
        }
    }
    (best.0, best.1)
}

/// The verdict on `steps[step]`, begun at `since`, given the old and new replicas'
/// figures since then. Any threshold broken aborts at once, once the new replicas
/// answered `minRequests` (check failures need no minimum). Otherwise the step holds
/// until its pause is over, then advances (or promotes after the last step); a step
/// that ends with fewer requests than `minRequests` moves on unjudged.
pub fn judge(
    steps: &[CanaryStep],
    step: usize,
    analysis: &Analysis,
    since: Instant,
    now: Instant,
    old: &Figures,
    new: &Figures,
) -> Verdict {
    if let Some(failure) = failed(analysis, old, new) {
        return Verdict::Abort(failure);
    }
    let pause = steps.get(step).map_or(Duration::ZERO, |s| s.pause.get());
    let elapsed = now.saturating_duration_since(since);
    if elapsed < pause {
        let recheck_in = (pause - elapsed).min(analysis.interval.get());
        return Verdict::Hold { recheck_in };
    }
    if step + 1 < steps.len() {
        Verdict::Advance { next: step + 1 }
    } else {
        Verdict::Promote
    }
}

/// The resolution of HAProxy's `rtime`, in milliseconds.
const RTIME_RESOLUTION_MS: f64 = 1.0;

/// The first threshold the new replicas break, compared with the old ones.
pub fn failed(analysis: &Analysis, old: &Figures, new: &Figures) -> Option<Failure> {
    if new.check_failures > old.check_failures {
        return Some(Failure {
            message: format!(
                "new replicas failed {} health checks vs {} for the old ones",
                new.check_failures, old.check_failures
            ),
        });
    }
    if new.requests < analysis.min_requests {
        return None;
    }
    let (new_rate, old_rate) = (new.error_rate(), old.error_rate());
    if new_rate > old_rate + analysis.max_error_rate {
        return Some(Failure {
            message: format!(
                "new 5xx {:.1}% vs old {:.1}% over {} requests",
                new_rate * 100.0,
                old_rate * 100.0,
                thousands(new.requests)
            ),
        });
    }
    if old.requests > 0 {
        // HAProxy's `rtime` is a whole number of milliseconds: a service answering in
        // well under one shows 0 or 1 from one server to the next. Below that
        // resolution a ratio means nothing (1 ms against 0.4 ms is not "2.5x slower"),
        // so the old mean counts as at least 1 ms and the new one must be more than
        // 1 ms slower as well as `maxResponseTimeRatio` times slower.
        let ratio = new.mean_rtime_ms / old.mean_rtime_ms.max(RTIME_RESOLUTION_MS);
        let slower = new.mean_rtime_ms - old.mean_rtime_ms > RTIME_RESOLUTION_MS;
        if slower && ratio > analysis.max_response_time_ratio {
            return Some(Failure {
                message: format!(
                    "new mean response time {:.0}ms vs old {:.0}ms ({ratio:.1}x, at most {}x) \
                     over {} requests",
                    new.mean_rtime_ms,
                    old.mean_rtime_ms,
                    analysis.max_response_time_ratio,
                    thousands(new.requests)
                ),
            });
        }
    }
    None
}

/// A canary rollout followed through its steps (kept in the planner's memory).
#[derive(Clone, Debug, PartialEq)]
pub struct CanaryProgress {
    pub template_hash: String,
    /// The step in force (an index into `rollout.steps`).
    pub step: usize,
    /// When the step's share was reached (its replicas ready), with every server's
    /// counters then: `None` while its replicas start.
    pub since: Option<(Instant, BTreeMap<String, ServerCounters>)>,
    /// All steps passed: the rest is a rolling update.
    pub promoted: bool,
    /// Paused by command (`dockscale rollout pause`) since then: the step holds (its
    /// analysis goes on, and may still abort) until resumed.
    pub paused_since: Option<Instant>,
    /// Aborted by command (`dockscale rollout abort`): the next pass aborts it, as a
    /// failed analysis would.
    pub abort_requested: bool,
    /// A guarded rolling update ([`super::guard`]): the new replicas whose batch passed
    /// its watch (0 for a canary).
    pub passed: u32,
    /// A guarded rolling update: the new replicas ready when the batch under watch
    /// began (they pass together).
    pub watching: u32,
}

impl CanaryProgress {
    /// The first step of the rollout to `hash`, not begun.
    pub fn new(hash: &str) -> Self {
        CanaryProgress {
            template_hash: hash.to_owned(),
            step: 0,
            since: None,
            promoted: false,
            paused_since: None,
            abort_requested: false,
            passed: 0,
            watching: 0,
        }
    }
}

/// What the canary asks of this pass: how many new replicas, and the weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    /// New replicas to run (beyond it they are removed; old ones stay).
    pub new_target: u32,
    /// Per-server weights `(old, new)`.
    pub weights: (u16, u16),
}

/// Step 5b: where a canary rollout stands, and the shape it asks of this pass. `None`
/// when no canary is under way (not a canary, nothing old left, or promoted): the pass
/// is then a plain rolling update. An aborted template keeps no new replicas and the
/// old ones at full weight until the spec changes.
pub fn step(input: &Input<'_>, memory: &Memory, lives: &[Live], plan: &mut Plan) -> Option<Shape> {
    let spec = input.spec;
    let rollout = &spec.rollout;
    let base = spec.load_balancer.as_ref()?.server.weight;
    let analysis = rollout.guard()?;
    let hash = input.template_hash;
    let old: Vec<&Live> = lives.iter().filter(|l| !l.updated).collect();
    if memory.aborted_template.as_deref() == Some(hash) {
        plan.aborted = Some(hash.to_owned());
        return Some(Shape {
            new_target: 0,
            weights: (base, base),
        });
    }
    if old.is_empty() || rollout.strategy != crate::spec::Strategy::Canary {
        return None;
    }
    let mut progress = match &memory.canary {
        Some(c) if c.template_hash == hash => c.clone(),
        _ => CanaryProgress {
            promoted: rollout.steps.is_empty(),
            ..CanaryProgress::new(hash)
        },
    };
    if progress.promoted {
        plan.canary = Some(progress);
        return None;
    }
    let weight = rollout.steps[progress.step].weight;
    let new_target = new_replicas(input.desired, weight);
    let ready_new = lives
        .iter()
        .filter(|l| l.updated && l.serving.is_ready())
        .count() as u32;
    let ready_old = old.iter().filter(|l| l.serving.is_ready()).count() as u32;
    let shape = Shape {
        new_target,
        weights: weights(weight, ready_old.max(1), ready_new.max(1), base),
    };
    let counters = input.backend.map(|b| &b.counters);
    if progress.abort_requested && progress.since.is_none() {
        // Asked before the step's share was reached: nothing judged yet to show.
        return Some(abort(
            hash,
            base,
            control::ABORTED_BY_COMMAND.to_owned(),
            plan,
        ));
    }
    match (&progress.since, counters) {
        (None, Some(now_counters)) if ready_new >= new_target => {
            progress.since = Some((input.now.instant, now_counters.clone()));
            plan.notes.push(Note::CanaryStep {
                step: progress.step + 1,
                weight,
                new_replicas: new_target,
            });
            plan.requeue(analysis.interval.get());
        }
        (Some((since, start)), Some(now_counters)) => {
            let (old, new) = versions_since(lives, start, now_counters);
            let verdict = if progress.abort_requested {
                Verdict::Abort(Failure {
                    message: control::ABORTED_BY_COMMAND.to_owned(),
                })
            } else {
                let verdict = judge(
                    &rollout.steps,
                    progress.step,
                    &analysis,
                    *since,
                    input.now.instant,
                    &old,
                    &new,
                );
                hold_while_paused(verdict, progress.paused_since.is_some(), &analysis)
            };
            plan.canary_analysis = Some(Analysed {
                step: progress.step,
                weight,
                old,
                new,
                elapsed: input.now.instant.saturating_duration_since(*since),
                verdict: verdict.clone(),
            });
            match verdict {
                Verdict::Hold { recheck_in } => plan.requeue(recheck_in),
                Verdict::Advance { next } => {
                    progress.step = next;
                    progress.since = None;
                    plan.requeue(super::ACTIVE_REQUEUE);
                }
                Verdict::Promote => {
                    progress.promoted = true;
                    plan.canary = Some(progress);
                    return None;
                }
                Verdict::Abort(failure) => return Some(abort(hash, base, failure.message, plan)),
            }
        }
        _ => plan.requeue(super::ACTIVE_REQUEUE),
    }
    plan.canary = Some(progress);
    Some(shape)
}

/// The old and the new template's figures from the counters at `start` to
/// `now_counters`: the deltas of the servers each version's live replicas hold.
pub fn versions_since(
    lives: &[Live],
    start: &BTreeMap<String, ServerCounters>,
    now_counters: &BTreeMap<String, ServerCounters>,
) -> (Figures, Figures) {
    let figures = |updated: bool| {
        Figures::of(
            lives
                .iter()
                .filter(|l| l.updated == updated)
                .filter_map(|l| {
                    let slot = l.serving.slot()?;
                    let now = *now_counters.get(&slot.name)?;
                    Some(now.since(start.get(&slot.name).copied().unwrap_or_default()))
                }),
        )
    };
    (figures(false), figures(true))
}

/// A paused canary holds its step: the end of its pause (an advance, a promotion) waits
/// for the resume, while an abort still aborts and the figures are still looked at.
fn hold_while_paused(verdict: Verdict, paused: bool, analysis: &Analysis) -> Verdict {
    match verdict {
        Verdict::Advance { .. } | Verdict::Promote if paused => Verdict::Hold {
            recheck_in: analysis.interval.get(),
        },
        v => v,
    }
}

/// The canary of `hash` aborted (its analysis failed, or a command asked): no new
/// replicas, the old ones at full weight, the template held back until the spec
/// changes or the abort is retried.
fn abort(hash: &str, base: u16, message: String, plan: &mut Plan) -> Shape {
    plan.notes.push(Note::RolloutAborted {
        template_hash: hash.to_owned(),
        message,
    });
    plan.aborted = Some(hash.to_owned());
    plan.canary = None;
    Shape {
        new_target: 0,
        weights: (base, base),
    }
}

/// `1204` as `1,204`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Duration as SpecDuration;

    fn steps() -> Vec<CanaryStep> {
        vec![
            CanaryStep {
                weight: 10,
                pause: SpecDuration::from_secs(60),
            },
            CanaryStep {
                weight: 50,
                pause: SpecDuration::from_secs(120),
            },
        ]
    }

    fn figures(requests: u64, errors: u64, rtime: f64) -> Figures {
        Figures {
            requests,
            errors,
            mean_rtime_ms: rtime,
            check_failures: 0,
        }
    }

    #[test]
    fn a_share_takes_its_replicas_rounded_up_and_at_least_one() {
        assert_eq!(new_replicas(10, 10), 1);
        assert_eq!(new_replicas(3, 10), 1);
        assert_eq!(new_replicas(3, 50), 2);
        assert_eq!(new_replicas(4, 50), 2);
        assert_eq!(new_replicas(1, 1), 1);
    }

    #[test]
    fn weights_give_the_new_servers_their_share_of_the_total() {
        for (share, old, new) in [(10, 3, 1), (50, 3, 2), (25, 4, 1), (1, 1, 1), (99, 1, 1)] {
            let (wo, wn) = weights(share, old, new, 100);
            assert!((1..=256).contains(&wo) && (1..=256).contains(&wn));
            let got = f64::from(new) * f64::from(wn)
                / (f64::from(new) * f64::from(wn) + f64::from(old) * f64::from(wo));
            assert!(
                (got - f64::from(share) / 100.0).abs() < 0.005,
                "{share}% of {old}+{new}: {wo}/{wn} gives {got}"
            );
        }
        assert_eq!(
            weights(10, 0, 2, 100),
            (100, 100),
            "no old server: plain weights"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_holds_for_its_pause_then_advances_and_the_last_promotes() {
        let a = Analysis::default();
        let t0 = Instant::now();
        let good = figures(500, 1, 20.0);
        let hold = judge(
            &steps(),
            0,
            &a,
            t0,
            t0 + Duration::from_secs(55),
            &good,
            &good,
        );
        assert_eq!(
            hold,
            Verdict::Hold {
                recheck_in: Duration::from_secs(5)
            }
        );
        let at = t0 + Duration::from_secs(60);
        assert_eq!(
            judge(&steps(), 0, &a, t0, at, &good, &good),
            Verdict::Advance { next: 1 }
        );
        let end = t0 + Duration::from_secs(120);
        assert_eq!(
            judge(&steps(), 1, &a, t0, end, &good, &good),
            Verdict::Promote
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_version_with_more_errors_aborts_at_once_with_its_figures() {
        let a = Analysis::default();
        let t0 = Instant::now();
        let old = figures(1000, 1, 20.0);
        let new = figures(1204, 144, 20.0);
        let v = judge(&steps(), 0, &a, t0, t0 + Duration::from_secs(1), &old, &new);
        assert_eq!(
            v,
            Verdict::Abort(Failure {
                message: "new 5xx 12.0% vs old 0.1% over 1,204 requests".to_owned()
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn too_few_requests_tell_nothing_and_the_step_moves_on_unjudged() {
        let a = Analysis::default();
        let t0 = Instant::now();
        let bad_but_few = figures(50, 25, 20.0);
        let v = judge(
            &steps(),
            0,
            &a,
            t0,
            t0 + Duration::from_secs(60),
            &figures(0, 0, 0.0),
            &bad_but_few,
        );
        assert_eq!(v, Verdict::Advance { next: 1 });
    }

    #[test]
    fn slow_new_replicas_or_failing_checks_abort() {
        let a = Analysis::default();
        let slow = failed(&a, &figures(1000, 0, 20.0), &figures(200, 0, 40.0));
        assert_eq!(
            slow.map(|f| f.message),
            Some(
                "new mean response time 40ms vs old 20ms (2.0x, at most 1.5x) over 200 requests"
                    .to_owned()
            )
        );
        let checks = Figures {
            check_failures: 3,
            ..Figures::default()
        };
        assert!(failed(&a, &Figures::default(), &checks).is_some());
    }

    // Regression: on a real HAProxy, a good canary of a service answering in under a
    // millisecond was aborted for "new mean response time 1ms vs old 0ms (2.0x)":
    // whole-millisecond `rtime`s of 0 and 1 across the servers made a ratio of noise.
    #[test]
    fn response_times_within_haproxys_millisecond_are_not_a_slowdown() {
        let a = Analysis::default();
        let old = figures(4000, 0, 0.4);
        assert_eq!(failed(&a, &old, &figures(800, 0, 1.0)), None);
        assert_eq!(
            failed(&a, &figures(4000, 0, 1.0), &figures(800, 0, 2.0)),
            None
        );
        let slow = failed(&a, &figures(4000, 0, 0.0), &figures(200, 0, 43.0));
        assert_eq!(
            slow.map(|f| f.message),
            Some(
                "new mean response time 43ms vs old 0ms (43.0x, at most 1.5x) over 200 requests"
                    .to_owned()
            ),
            "old replicas at 0 ms still catch a slow canary"
        );
    }

    #[test]
    fn counters_that_went_down_count_from_zero() {
        let start = ServerCounters {
            responses: 900,
            http_5xx: 9,
            ..ServerCounters::default()
        };
        let now = ServerCounters {
            responses: 40,
            http_5xx: 1,
            ..ServerCounters::default()
        };
        assert_eq!(now.since(start).responses, 40);
        let later = ServerCounters {
            responses: 1000,
            http_5xx: 10,
            ..ServerCounters::default()
        };
        let d = later.since(start);
        assert_eq!((d.responses, d.http_5xx), (100, 1));
        assert_eq!(Figures::of([d]).error_rate(), 0.01);
    }
}
