//! A service's rollout history: its last [`MAX_REVISIONS`] rollouts, each with its
//! template, strategy, start and end, outcome, and the figures each canary step was
//! judged on. Pure: [`History::record`] is given what a pass decided and the wall
//! clock; the controller keeps one per service, saves it when it changed in a way worth
//! keeping and loads it at start (`controller::history`).
//!
//! A revision opens when a rollout to a template starts (a canary under way, or a
//! rolling update with old replicas left), and closes `promoted` (the canary passed its
//! last step, the rolling update replaced every replica), `aborted` (by its analysis or
//! a command) or `superseded` (the spec moved to another template first). A retried
//! template opens a new revision.

use std::collections::VecDeque;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::canary::{Analysed, Figures, Verdict};
use crate::spec::Strategy;

/// Revisions kept per service.
pub const MAX_REVISIONS: usize = 10;

/// How a rollout ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Promoted,
    Aborted,
    Superseded,
}

/// A figure of the old replicas and of the new ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pair<T> {
    pub old: T,
    pub new: T,
}

/// One canary step as it was judged last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepRecord {
    /// 1 for the first step.
    pub step: usize,
    /// The new template's share of the traffic, in percent.
    pub weight: u8,
    /// Requests answered since the step's share was reached.
    pub requests: Pair<u64>,
    /// Errors per request.
    pub error_ratio: Pair<f64>,
    /// Mean response time (HAProxy's `rtime`), in milliseconds.
    pub response_time_millis: Pair<f64>,
    /// The step's last verdict: `hold` while it runs, then `advance`, `promote` or
    /// `abort`.
    pub verdict: String,
    /// How long the step had run when it was judged, in seconds.
    pub elapsed_seconds: f64,
}

/// One rollout of a template.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Revision {
    pub template_hash: String,
    pub image: String,
    pub strategy: Strategy,
    #[serde(with = "rfc3339")]
    pub started: SystemTime,
    #[serde(default, with = "rfc3339::option")]
    pub finished: Option<SystemTime>,
    /// `None` while under way.
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// Why it was aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub steps: Vec<StepRecord>,
}

/// What one pass decided of the rollout to the spec's template.
#[derive(Clone, Debug)]
pub struct PassFacts<'a> {
    pub template_hash: &'a str,
    pub image: &'a str,
    pub strategy: Strategy,
    /// A rollout to the template is under way after this pass.
    pub under_way: bool,
    /// The rollout was promoted in this pass (the canary's last step passed, every
    /// replica of a rolling update replaced).
    pub promoted: bool,
    /// The rollout was aborted in this pass, with the reason.
    pub aborted: Option<&'a str>,
    /// The canary step judged in this pass, and its weight.
    pub analysed: Option<(&'a Analysed, u8)>,
}

/// What [`History::record`] changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Nothing,
    /// Only the figures of a step that is still running: shown, not worth a write.
    Figures,
    /// A revision opened or closed, or a step was decided: to be saved.
    Durable,
}

/// The last rollouts of one service, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct History {
    pub revisions: VecDeque<Revision>,
    /// The last template every replica ran: what an aborted rollout restores (kept
    /// here so that a controller restarted during a rollout still knows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<Stable>,
}

/// A template every replica ran, with the hash its replicas are labelled with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Stable {
    pub template_hash: String,
    pub template: crate::spec::Template,
}

impl History {
    /// The revision under way, if any.
    pub fn open(&self) -> Option<&Revision> {
        self.revisions.back().filter(|r| r.outcome.is_none())
    }

    /// The last revision, when it is of `hash` and was aborted: the template a
    /// restarted controller keeps holding back.
    pub fn aborted(&self, hash: &str) -> Option<&Revision> {
        self.revisions
            .back()
            .filter(|r| r.template_hash == hash && r.outcome == Some(Outcome::Aborted))
    }

    /// Records what a pass decided at `now`.
    pub fn record(&mut self, facts: &PassFacts<'_>, now: SystemTime) -> Change {
        // Kept as written: to the millisecond.
        let now = to_millis(now);
        let mut change = Change::Nothing;
        if let Some(open) = self.revisions.back_mut() {
            if open.outcome.is_none() && open.template_hash != facts.template_hash {
                open.outcome = Some(Outcome::Superseded);
                open.finished = Some(now);
                change = Change::Durable;
            }
        }
        let involved = facts.under_way || facts.promoted || facts.aborted.is_some();
        if !involved {
            return change;
        }
        let continues = self
            .open()
            .is_some_and(|r| r.template_hash == facts.template_hash);
        if !continues {
            self.revisions.push_back(Revision {
                template_hash: facts.template_hash.to_owned(),
                image: facts.image.to_owned(),
                strategy: facts.strategy,
                started: now,
                finished: None,
                outcome: None,
                message: None,
                steps: Vec::new(),
            });
            while self.revisions.len() > MAX_REVISIONS {
                self.revisions.pop_front();
            }
            change = Change::Durable;
        }
        let Some(open) = self.revisions.back_mut() else {
            return change;
        };
        if let Some((analysed, weight)) = facts.analysed {
            let record = StepRecord::from_analysed(analysed, weight);
            let decided = !matches!(analysed.verdict, Verdict::Hold { .. });
            match open.steps.iter_mut().find(|s| s.step == record.step) {
                Some(s) if *s == record => {}
                Some(s) => {
                    *s = record;
                    change = more(change, decided);
                }
                None => {
                    open.steps.push(record);
                    open.steps.sort_by_key(|s| s.step);
                    change = Change::Durable;
                }
            }
        }
        if let Some(message) = facts.aborted {
            open.outcome = Some(Outcome::Aborted);
            open.message = Some(message.to_owned());
            open.finished = Some(now);
            change = Change::Durable;
        } else if facts.promoted {
            open.outcome = Some(Outcome::Promoted);
            open.finished = Some(now);
            change = Change::Durable;
        }
        change
    }
}

/// `t` without its sub-millisecond part.
fn to_millis(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => {
            let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(millis)
        }
        Err(_) => t,
    }
}

/// A step's figures changed: durable when its verdict is final.
fn more(change: Change, decided: bool) -> Change {
    match (change, decided) {
        (Change::Durable, _) | (_, true) => Change::Durable,
        _ => Change::Figures,
    }
}

impl StepRecord {
    /// A step as one pass judged it; `weight` is the step's share.
    pub fn from_analysed(a: &Analysed, weight: u8) -> StepRecord {
        let pair = |f: fn(&Figures) -> f64| Pair {
            old: f(&a.old),
            new: f(&a.new),
        };
        StepRecord {
            step: a.step + 1,
            weight,
            requests: Pair {
                old: a.old.requests,
                new: a.new.requests,
            },
            error_ratio: pair(Figures::error_rate),
            response_time_millis: pair(|f| f.mean_rtime_ms),
            verdict: a.verdict.label().to_owned(),
            elapsed_seconds: a.elapsed.as_secs_f64(),
        }
    }
}

/// Times as RFC 3339, to the millisecond.
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use std::time::SystemTime;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn facts(hash: &str) -> PassFacts<'_> {
        PassFacts {
            template_hash: hash,
            image: "webapp:2",
            strategy: Strategy::Canary,
            under_way: true,
            promoted: false,
            aborted: None,
            analysed: None,
        }
    }

    fn analysed(step: usize, verdict: Verdict, new_requests: u64) -> Analysed {
        Analysed {
            step,
            weight: 10,
            old: Figures {
                requests: 900,
                errors: 9,
                mean_rtime_ms: 2.0,
                check_failures: 0,
            },
            new: Figures {
                requests: new_requests,
                errors: 0,
                mean_rtime_ms: 3.0,
                check_failures: 0,
            },
            elapsed: Duration::from_secs(4),
            verdict,
        }
    }

    #[test]
    fn a_canary_is_recorded_step_by_step_and_closed_when_promoted() {
        let mut h = History::default();
        assert_eq!(h.record(&facts("h2"), at(0)), Change::Durable);
        assert_eq!(h.record(&facts("h2"), at(1)), Change::Nothing);
        let hold = analysed(
            0,
            Verdict::Hold {
                recheck_in: Duration::from_secs(1),
            },
            100,
        );
        let step1 = PassFacts {
            analysed: Some((&hold, 25)),
            ..facts("h2")
        };
        assert_eq!(h.record(&step1, at(2)), Change::Durable, "a new step");
        let hold_more = analysed(
            0,
            Verdict::Hold {
                recheck_in: Duration::from_secs(1),
            },
            150,
        );
        let later = PassFacts {
            analysed: Some((&hold_more, 25)),
            ..facts("h2")
        };
        assert_eq!(h.record(&later, at(3)), Change::Figures);
        let advance = analysed(0, Verdict::Advance { next: 1 }, 200);
        let advanced = PassFacts {
            analysed: Some((&advance, 25)),
            ..facts("h2")
        };
        assert_eq!(h.record(&advanced, at(4)), Change::Durable);
        let promote = analysed(1, Verdict::Promote, 400);
        let promoted = PassFacts {
            analysed: Some((&promote, 50)),
            promoted: true,
            under_way: false,
            ..facts("h2")
        };
        assert_eq!(h.record(&promoted, at(9)), Change::Durable);
        assert_eq!(h.revisions.len(), 1);
        let r = &h.revisions[0];
        assert_eq!(r.outcome, Some(Outcome::Promoted));
        assert_eq!((r.started, r.finished), (at(0), Some(at(9))));
        let steps: Vec<(usize, u8, u64, &str)> = r
            .steps
            .iter()
            .map(|s| (s.step, s.weight, s.requests.new, s.verdict.as_str()))
            .collect();
        assert_eq!(steps, [(1, 25, 200, "advance"), (2, 50, 400, "promote")]);
        assert_eq!(
            r.steps[0].error_ratio,
            Pair {
                old: 0.01,
                new: 0.0
            }
        );
        assert_eq!(r.steps[0].response_time_millis, Pair { old: 2.0, new: 3.0 });
        // The rolling rest of a promoted canary opens nothing.
        let after = PassFacts {
            under_way: false,
            ..facts("h2")
        };
        assert_eq!(h.record(&after, at(10)), Change::Nothing);
    }

    #[test]
    fn an_abort_closes_the_revision_and_a_retry_opens_another() {
        let mut h = History::default();
        h.record(&facts("h2"), at(0));
        let aborted = PassFacts {
            aborted: Some("aborted by command"),
            under_way: false,
            ..facts("h2")
        };
        assert_eq!(h.record(&aborted, at(3)), Change::Durable);
        assert_eq!(
            h.aborted("h2").and_then(|r| r.message.as_deref()),
            Some("aborted by command")
        );
        let idle = PassFacts {
            under_way: false,
            ..facts("h2")
        };
        assert_eq!(h.record(&idle, at(4)), Change::Nothing);
        h.record(&facts("h2"), at(5));
        assert_eq!(h.revisions.len(), 2, "a retry is a revision of its own");
        assert!(h.aborted("h2").is_none());
        assert_eq!(h.open().map(|r| r.started), Some(at(5)));
    }

    #[test]
    fn another_template_supersedes_the_rollout_under_way() {
        let mut h = History::default();
        h.record(&facts("h2"), at(0));
        assert_eq!(h.record(&facts("h3"), at(1)), Change::Durable);
        let outcomes: Vec<_> = h
            .revisions
            .iter()
            .map(|r| (r.template_hash.as_str(), r.outcome))
            .collect();
        assert_eq!(
            outcomes,
            [("h2", Some(Outcome::Superseded)), ("h3", None)],
            "superseded as soon as the spec moved on"
        );
        // Back to a settled spec: the open one is superseded too, nothing new opens.
        let settled = PassFacts {
            under_way: false,
            ..facts("h4")
        };
        h.record(&settled, at(2));
        assert_eq!(h.revisions.len(), 2);
        assert!(h.open().is_none());
    }

    #[test]
    fn only_the_last_ten_revisions_are_kept() {
        let mut h = History::default();
        for i in 0..25u64 {
            let hash = format!("h{i}");
            h.record(&facts(&hash), at(i));
        }
        assert_eq!(h.revisions.len(), MAX_REVISIONS);
        assert_eq!(h.revisions[0].template_hash, "h15");
        assert_eq!(h.revisions[9].template_hash, "h24");
    }

    #[test]
    fn a_history_reads_back_what_it_wrote() {
        let mut h = History::default();
        h.record(&facts("h2"), at(0));
        let advance = analysed(0, Verdict::Advance { next: 1 }, 200);
        h.record(
            &PassFacts {
                analysed: Some((&advance, 25)),
                aborted: Some("new 5xx 12.0% vs old 0.1% over 1,204 requests"),
                ..facts("h2")
            },
            at(5),
        );
        let text = serde_json::to_string_pretty(&h).expect("serializes");
        assert!(
            text.contains("\"started\": \"2023-11-14T22:13:20.000Z\""),
            "{text}"
        );
        assert!(text.contains("\"outcome\": \"aborted\""), "{text}");
        let back: History = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, h);
    }
}
