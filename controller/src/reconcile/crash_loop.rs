//! Crash-loop back-off, per replica line, after the kubelet and the ReplicaSet
//! controller. Pure: no I/O, no clock reads.
//!
//! A *line* is the succession of replicas that replace one another: when a replica
//! crashes, its replacement inherits the line's count of crashes in a row (a pod's
//! restart count). Only a replica's own exit is a crash: its process ended, or the
//! kernel killed it for exceeding the template's memory limit. A container that
//! someone else killed, stopped or removed, and one that was found exited without its
//! exit being seen (the engine restarted, or dockscale was not watching), is replaced
//! at once, every time, like a deleted pod, and counts nothing.
//!
//! The back-off holds back one line's replacement and nothing else: another line's
//! replacement, a scale-up (new lines) and a rollout's new replicas (a new template
//! starts fresh lines) go ahead. A template that really crashes still ends with every
//! line backing off: each line's own crashes, no hot loop.
//!
//! The planner judges each exit ([`judge`]) and asks [`assign`] which creates to make;
//! the vacancies and every replica's line count live in the service's
//! [`Memory`](super::phase::Memory).

use std::time::Duration;

use tokio::time::Instant;

use crate::model::replica::ExitCause;

/// The crash-loop policy: the first replacement is immediate, then `base` doubling to
/// `max`; a replica that ran `reset_after` resets its line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackoffPolicy {
    pub base: Duration,
    pub max: Duration,
    /// A replica that ran this long resets its line's count.
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl BackoffPolicy {
    /// The delay before the replacement of a line's `n`th crash in a row (1-based): 0
    /// for the first, then `base`, doubling, capped at `max`.
    pub fn delay(&self, n: u32) -> Duration {
        if n <= 1 {
            return Duration::ZERO;
        }
        let doublings = (n - 2).min(31);
        self.base
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// One replica's end, as reported in events and status.
#[derive(Clone, Debug, PartialEq)]
pub struct ExitRecord {
    pub name: String,
    pub code: Option<i64>,
    pub cause: ExitCause,
    pub ran_for: Duration,
}

impl ExitRecord {
    /// `exited (code 1) after 2.3s`, `was OOM-killed after 4s`, ...
    pub fn describe(&self) -> String {
        let code = self
            .code
            .map_or_else(|| "unknown".to_owned(), |c| c.to_string());
        let ran = humantime::format_duration(Duration::from_millis(
            u64::try_from(self.ran_for.as_millis()).unwrap_or(u64::MAX),
        ));
        match self.cause {
            ExitCause::OutOfMemory => {
                format!("was OOM-killed under its memory limit (code {code}) after running {ran}")
            }
            ExitCause::Own => format!("exited (code {code}) after running {ran}"),
            ExitCause::FailedCreate => "could not be created or started".to_owned(),
            ExitCause::Signalled => format!(
                "was killed, stopped or removed from outside dockscale (code {code}) \
                 after running {ran}"
            ),
            ExitCause::Unknown => format!(
                "was found exited (code {code}) with no exit event seen (the engine restarted, \
                 or dockscale was not watching)"
            ),
        }
    }
}

/// A line whose replica crashed, waiting for its replacement.
#[derive(Clone, Debug, PartialEq)]
pub struct Vacancy {
    /// Crashes in a row on this line, the last one included.
    pub restarts: u32,
    /// The replacement is not created before this.
    pub not_before: Instant,
    /// The template the crashed replica ran: a new template starts fresh lines.
    pub template_hash: String,
    pub last_exit: ExitRecord,
}

/// What became of a replica's end.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The replica crashed: its line waits `delay` (zero for a first crash).
    Crash { restarts: u32, delay: Duration },
    /// Not a crash: the replacement comes at once and counts nothing.
    Replace,
}

/// Judges one replica's end: a crash counts on its line (which carried `line` crashes
/// in a row) and leaves a vacancy that waits its back-off; anything else is replaced
/// at once and leaves none. A replica that ran `reset_after` starts its line afresh.
pub fn judge(
    exit: &ExitRecord,
    line: u32,
    template_hash: &str,
    now: Instant,
    policy: &BackoffPolicy,
) -> (Verdict, Option<Vacancy>) {
    if !exit.cause.is_crash() {
        return (Verdict::Replace, None);
    }
    let line = if exit.ran_for >= policy.reset_after {
        0
    } else {
        line
    };
    let vacancy = vacate(line, exit.clone(), template_hash, now, policy);
    (
        Verdict::Crash {
            restarts: vacancy.restarts,
            delay: vacancy.not_before - now,
        },
        Some(vacancy),
    )
}

/// The vacancy a crash leaves on a line that carried `line` crashes in a row.
fn vacate(
    line: u32,
    last_exit: ExitRecord,
    template_hash: &str,
    now: Instant,
    policy: &BackoffPolicy,
) -> Vacancy {
    let restarts = line.saturating_add(1);
    Vacancy {
        restarts,
        not_before: now + policy.delay(restarts),
        template_hash: template_hash.to_owned(),
        last_exit,
    }
}

/// A create that failed (other than for a missing image or an unreachable engine):
/// its line counts a crash, so that a template that cannot start backs off like one
/// that crashes.
pub fn failed_create(
    name: &str,
    line: u32,
    template_hash: &str,
    now: Instant,
    policy: &BackoffPolicy,
) -> (Duration, Vacancy) {
    let exit = ExitRecord {
        name: name.to_owned(),
        code: None,
        cause: ExitCause::FailedCreate,
        ran_for: Duration::ZERO,
    };
    let vacancy = vacate(line, exit, template_hash, now, policy);
    (vacancy.not_before - now, vacancy)
}

/// Which creates a pass makes, from [`assign`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Assignment {
    /// One entry per create: the crashes in a row its line carries (0: a fresh line).
    pub creates: Vec<u32>,
    /// The vacancies left after these creates (held back, or due but over a bound).
    pub vacant: Vec<Vacancy>,
}

impl Assignment {
    /// The held-back vacancies, soonest first.
    pub fn held(&self, now: Instant) -> impl Iterator<Item = &Vacancy> {
        self.vacant.iter().filter(move |v| v.not_before > now)
    }
}

/// The creates of a pass that is `wanted` replicas of template `hash` short, at most
/// `room` of them now: due vacancies are filled first (the replacement inherits its
/// line), a vacancy still backing off holds its place (one create fewer), the rest are
/// fresh lines. Vacancies of another template, or beyond what is missing, are dropped:
/// a new template and a lower count start afresh.
pub fn assign(vacant: &[Vacancy], wanted: u32, room: u32, hash: &str, now: Instant) -> Assignment {
    let mut lines: Vec<&Vacancy> = vacant.iter().filter(|v| v.template_hash == hash).collect();
    lines.sort_by_key(|v| v.not_before);
    let (due, held): (Vec<&Vacancy>, Vec<&Vacancy>) =
        lines.into_iter().partition(|v| v.not_before <= now);
    let wanted = wanted as usize;
    let use_due = due.len().min(wanted);
    let keep_held = held.len().min(wanted - use_due);
    let fresh = wanted - use_due - keep_held;
    let mut creates: Vec<u32> = due[..use_due].iter().map(|v| v.restarts).collect();
    creates.extend(std::iter::repeat_n(0, fresh));
    creates.truncate(room as usize);
    let filled = use_due.min(creates.len());
    let vacant = due[filled..use_due]
        .iter()
        .chain(&held[..keep_held])
        .map(|v| (*v).clone())
        .collect();
    Assignment { creates, vacant }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BackoffPolicy {
        BackoffPolicy::default()
    }

    fn exit(name: &str, cause: ExitCause, ran_secs: u64) -> ExitRecord {
        ExitRecord {
            name: name.to_owned(),
            code: Some(1),
            cause,
            ran_for: Duration::from_secs(ran_secs),
        }
    }

    #[test]
    fn backoff_doubles_from_the_base_to_the_cap() {
        let delays: Vec<u64> = (1..=8).map(|n| policy().delay(n).as_secs()).collect();
        assert_eq!(delays, vec![0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(policy().delay(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn only_a_replicas_own_exit_or_an_oom_kill_is_a_crash() {
        let t = Instant::now();
        for cause in [ExitCause::Signalled, ExitCause::Unknown] {
            let (verdict, vacancy) = judge(&exit("w-a", cause, 1), 3, "h", t, &policy());
            assert_eq!((verdict, vacancy), (Verdict::Replace, None), "{cause:?}");
        }
        for cause in [ExitCause::Own, ExitCause::OutOfMemory] {
            let (verdict, vacancy) = judge(&exit("w-a", cause, 1), 0, "h", t, &policy());
            assert_eq!(
                verdict,
                Verdict::Crash {
                    restarts: 1,
                    delay: Duration::ZERO
                },
                "{cause:?}"
            );
            assert_eq!(vacancy.map(|v| v.restarts), Some(1));
        }
    }

    #[test]
    fn a_line_counts_its_crashes_and_a_long_run_resets_it() {
        let t = Instant::now();
        let (verdict, vacancy) = judge(&exit("w-b", ExitCause::Own, 5), 3, "h", t, &policy());
        assert_eq!(
            verdict,
            Verdict::Crash {
                restarts: 4,
                delay: Duration::from_secs(40)
            }
        );
        assert_eq!(
            vacancy.map(|v| v.not_before),
            Some(t + Duration::from_secs(40))
        );
        let (verdict, _) = judge(&exit("w-c", ExitCause::Own, 601), 3, "h", t, &policy());
        assert_eq!(
            verdict,
            Verdict::Crash {
                restarts: 1,
                delay: Duration::ZERO
            }
        );
    }

    fn vacancy(restarts: u32, at: Instant, hash: &str) -> Vacancy {
        Vacancy {
            restarts,
            not_before: at,
            template_hash: hash.to_owned(),
            last_exit: exit("w-x", ExitCause::Own, 1),
        }
    }

    #[test]
    fn a_backing_off_line_holds_only_its_own_place() {
        let t = Instant::now();
        let later = t + Duration::from_secs(20);
        let vacant = vec![vacancy(3, later, "h")];
        // Three replicas missing (one crash-looping, two removed from outside): two
        // fresh creates now, the crashing line waits.
        let a = assign(&vacant, 3, 8, "h", t);
        assert_eq!(a.creates, vec![0, 0]);
        assert_eq!(a.vacant, vacant);
        assert_eq!(a.held(t).count(), 1);
        // Once due, the replacement inherits the line.
        let a = assign(&vacant, 1, 8, "h", later);
        assert_eq!(a.creates, vec![3]);
        assert!(a.vacant.is_empty());
    }

    #[test]
    fn a_scale_up_is_never_held_back_by_a_back_off() {
        let t = Instant::now();
        let vacant = vec![
            vacancy(4, t + Duration::from_secs(60), "h"),
            vacancy(2, t + Duration::from_secs(10), "h"),
        ];
        // Desired went up by 4 while two lines back off: 4 fresh creates.
        let a = assign(&vacant, 6, 8, "h", t);
        assert_eq!(a.creates, vec![0; 4]);
        assert_eq!(a.vacant.len(), 2);
    }

    #[test]
    fn a_new_template_starts_fresh_lines() {
        let t = Instant::now();
        let vacant = vec![vacancy(5, t + Duration::from_secs(300), "old")];
        let a = assign(&vacant, 2, 8, "new", t);
        assert_eq!(a.creates, vec![0, 0]);
        assert!(a.vacant.is_empty(), "the old template's vacancy is dropped");
    }

    #[test]
    fn vacancies_beyond_what_is_missing_are_dropped() {
        let t = Instant::now();
        let vacant = vec![
            vacancy(2, t + Duration::from_secs(10), "h"),
            vacancy(3, t + Duration::from_secs(20), "h"),
        ];
        // The count fell: only one replica is missing now.
        let a = assign(&vacant, 1, 8, "h", t);
        assert!(a.creates.is_empty());
        assert_eq!(a.vacant.len(), 1);
        assert_eq!(a.vacant[0].restarts, 2, "the soonest line is kept");
        assert_eq!(assign(&vacant, 0, 8, "h", t).vacant, Vec::new());
    }

    #[test]
    fn creates_over_the_parallel_bound_keep_their_vacancies() {
        let t = Instant::now();
        let vacant = vec![vacancy(2, t, "h"), vacancy(3, t, "h")];
        let a = assign(&vacant, 4, 1, "h", t);
        assert_eq!(a.creates, vec![2]);
        assert_eq!(a.vacant.len(), 1, "the second due line waits for room");
        assert_eq!(a.vacant[0].restarts, 3);
    }

    #[test]
    fn a_failed_create_backs_its_line_off() {
        let t = Instant::now();
        assert_eq!(failed_create("w-a", 0, "h", t, &policy()).0, Duration::ZERO);
        let (delay, vacancy) = failed_create("w-b", 1, "h", t, &policy());
        assert_eq!(delay, Duration::from_secs(10));
        assert_eq!(vacancy.restarts, 2);
    }
}
