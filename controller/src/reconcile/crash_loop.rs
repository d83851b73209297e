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
//! The planner asks [`CrashLines::assign`] which creates to make; the executor applies
//! the answer and records each exit with [`CrashLines::exited`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::model::replica::{ContainerId, ExitCause};

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
            ExitCause::OutOfMemory => format!(
                "was OOM-killed under its memory limit (code {code}) after running {ran}"
            ),
            ExitCause::Own => format!("exited (code {code}) after running {ran}"),
            ExitCause::Signalled => format!(
                "was killed, stopped or removed from outside dockscale (code {code}) after running {ran}"
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

/// What became of an exit that [`CrashLines::exited`] looked at.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The replica crashed: its line waits `delay` (zero for a first crash).
    Crash { restarts: u32, delay: Duration },
    /// Not a crash: the replacement comes at once and counts nothing.
    Replace,
}

/// The crash-loop state of one service's lines.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CrashLines {
    /// Crashes in a row of the line each replica (or create in flight) belongs to, by
    /// container name; absent means none.
    pub restarts: BTreeMap<String, u32>,
    /// Lines whose replica crashed and whose replacement waits or is due.
    pub vacant: Vec<Vacancy>,
    /// Exits already looked at, so that each is counted once however many passes see it.
    pub seen: BTreeSet<ContainerId>,
}

/// Which creates a pass makes, from [`CrashLines::assign`].
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

impl CrashLines {
    /// Looks at one replica's exit, once per container: a crash counts on its line and
    /// leaves a vacancy that waits its back-off; anything else is replaced at once.
    /// `None` when this exit was already looked at.
    pub fn exited(
        &mut self,
        id: &ContainerId,
        exit: ExitRecord,
        template_hash: &str,
        now: Instant,
        policy: &BackoffPolicy,
    ) -> Option<Verdict> {
        if !self.seen.insert(id.clone()) {
            return None;
        }
        let inherited = self.restarts.remove(&exit.name).unwrap_or(0);
        if !exit.cause.is_crash() {
            return Some(Verdict::Replace);
        }
        let line = if exit.ran_for >= policy.reset_after {
            0
        } else {
            inherited
        };
        Some(self.vacate(line, exit, template_hash, now, policy))
    }

    /// A create that failed (other than a missing image): its line counts a crash, so
    /// that a template that cannot start backs off like one that crashes.
    pub fn create_failed(
        &mut self,
        name: &str,
        template_hash: &str,
        now: Instant,
        policy: &BackoffPolicy,
    ) -> Duration {
        let inherited = self.restarts.remove(name).unwrap_or(0);
        let exit = ExitRecord {
            name: name.to_owned(),
            code: None,
            cause: ExitCause::Own,
            ran_for: Duration::ZERO,
        };
        match self.vacate(inherited, exit, template_hash, now, policy) {
            Verdict::Crash { delay, .. } => delay,
            Verdict::Replace => Duration::ZERO,
        }
    }

    fn vacate(
        &mut self,
        line: u32,
        exit: ExitRecord,
        template_hash: &str,
        now: Instant,
        policy: &BackoffPolicy,
    ) -> Verdict {
        let restarts = line.saturating_add(1);
        let delay = policy.delay(restarts);
        self.vacant.push(Vacancy {
            restarts,
            not_before: now + delay,
            template_hash: template_hash.to_owned(),
            last_exit: exit,
        });
        Verdict::Crash { restarts, delay }
    }

    /// Forgets the exits of containers that are gone (`present` lists the service's
    /// containers), so the set does not grow.
    pub fn forget_gone(&mut self, present: &BTreeSet<&ContainerId>) {
        self.seen.retain(|id| present.contains(id));
    }

    /// The creates of a pass that is `wanted` replicas of template `hash` short, at most
    /// `room` of them now: due vacancies are filled first (the replacement inherits its
    /// line), a vacancy still backing off holds its place (one create fewer), the rest
    /// are fresh lines. Vacancies of another template, or beyond what is missing, are
    /// dropped: a new template and a lower count start afresh.
    pub fn assign(&self, wanted: u32, room: u32, hash: &str, now: Instant) -> Assignment {
        let mut lines: Vec<&Vacancy> = self
            .vacant
            .iter()
            .filter(|v| v.template_hash == hash)
            .collect();
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

    fn id(s: &str) -> ContainerId {
        ContainerId(s.to_owned())
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
        let mut lines = CrashLines::default();
        for (n, cause) in [ExitCause::Signalled, ExitCause::Unknown]
            .into_iter()
            .enumerate()
        {
            let name = format!("w-{n}");
            let verdict = lines.exited(&id(&name), exit(&name, cause, 1), "h", t, &policy());
            assert_eq!(verdict, Some(Verdict::Replace), "{cause:?}");
        }
        assert!(lines.vacant.is_empty());
        for (n, cause) in [ExitCause::Own, ExitCause::OutOfMemory]
            .into_iter()
            .enumerate()
        {
            let name = format!("c-{n}");
            let verdict = lines.exited(&id(&name), exit(&name, cause, 1), "h", t, &policy());
            assert_eq!(
                verdict,
                Some(Verdict::Crash {
                    restarts: 1,
                    delay: Duration::ZERO
                }),
                "{cause:?}"
            );
        }
    }

    #[test]
    fn an_exit_is_counted_once_however_many_passes_see_it() {
        let t = Instant::now();
        let mut lines = CrashLines::default();
        let first = lines.exited(&id("a"), exit("w-a", ExitCause::Own, 1), "h", t, &policy());
        assert!(first.is_some());
        let again = lines.exited(&id("a"), exit("w-a", ExitCause::Own, 1), "h", t, &policy());
        assert_eq!(again, None);
        assert_eq!(lines.vacant.len(), 1);
    }

    #[test]
    fn a_replacement_inherits_its_lines_count_and_a_long_run_resets_it() {
        let t = Instant::now();
        let mut lines = CrashLines::default();
        lines.restarts.insert("w-b".into(), 3);
        let verdict = lines.exited(&id("b"), exit("w-b", ExitCause::Own, 5), "h", t, &policy());
        assert_eq!(
            verdict,
            Some(Verdict::Crash {
                restarts: 4,
                delay: Duration::from_secs(40)
            })
        );
        lines.restarts.insert("w-c".into(), 3);
        let verdict = lines.exited(
            &id("c"),
            exit("w-c", ExitCause::Own, 601),
            "h",
            t,
            &policy(),
        );
        assert_eq!(
            verdict,
            Some(Verdict::Crash {
                restarts: 1,
                delay: Duration::ZERO
            })
        );
        // An outside kill forgets the line: the replacement starts fresh.
        lines.restarts.insert("w-d".into(), 5);
        lines.exited(
            &id("d"),
            exit("w-d", ExitCause::Signalled, 5),
            "h",
            t,
            &policy(),
        );
        assert!(!lines.restarts.contains_key("w-d"));
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
        let lines = CrashLines {
            vacant: vec![vacancy(3, later, "h")],
            ..CrashLines::default()
        };
        // Three replicas missing (one crash-looping, two removed from outside): two
        // fresh creates now, the crashing line waits.
        let a = lines.assign(3, 8, "h", t);
        assert_eq!(a.creates, vec![0, 0]);
        assert_eq!(a.vacant, lines.vacant);
        assert_eq!(a.held(t).count(), 1);
        // Once due, the replacement inherits the line.
        let a = lines.assign(1, 8, "h", later);
        assert_eq!(a.creates, vec![3]);
        assert!(a.vacant.is_empty());
    }

    #[test]
    fn a_scale_up_is_never_held_back_by_a_back_off() {
        let t = Instant::now();
        let lines = CrashLines {
            vacant: vec![
                vacancy(4, t + Duration::from_secs(60), "h"),
                vacancy(2, t + Duration::from_secs(10), "h"),
            ],
            ..CrashLines::default()
        };
        // Desired went up by 4 while two lines back off: 4 fresh creates.
        let a = lines.assign(6, 8, "h", t);
        assert_eq!(a.creates, vec![0; 4]);
        assert_eq!(a.vacant.len(), 2);
    }

    #[test]
    fn a_new_template_starts_fresh_lines() {
        let t = Instant::now();
        let lines = CrashLines {
            vacant: vec![vacancy(5, t + Duration::from_secs(300), "old")],
            ..CrashLines::default()
        };
        let a = lines.assign(2, 8, "new", t);
        assert_eq!(a.creates, vec![0, 0]);
        assert!(a.vacant.is_empty(), "the old template's vacancy is dropped");
    }

    #[test]
    fn vacancies_beyond_what_is_missing_are_dropped() {
        let t = Instant::now();
        let lines = CrashLines {
            vacant: vec![
                vacancy(2, t + Duration::from_secs(10), "h"),
                vacancy(3, t + Duration::from_secs(20), "h"),
            ],
            ..CrashLines::default()
        };
        // The count fell: only one replica is missing now.
        let a = lines.assign(1, 8, "h", t);
        assert!(a.creates.is_empty());
        assert_eq!(a.vacant.len(), 1);
        assert_eq!(a.vacant[0].restarts, 2, "the soonest line is kept");
        assert_eq!(lines.assign(0, 8, "h", t).vacant, Vec::new());
    }

    #[test]
    fn creates_over_the_parallel_bound_keep_their_vacancies() {
        let t = Instant::now();
        let lines = CrashLines {
            vacant: vec![vacancy(2, t, "h"), vacancy(3, t, "h")],
            ..CrashLines::default()
        };
        let a = lines.assign(4, 1, "h", t);
        assert_eq!(a.creates, vec![2]);
        assert_eq!(a.vacant.len(), 1, "the second due line waits for room");
        assert_eq!(a.vacant[0].restarts, 3);
    }

    #[test]
    fn a_failed_create_backs_its_line_off() {
        let t = Instant::now();
        let mut lines = CrashLines::default();
        assert_eq!(
            lines.create_failed("w-a", "h", t, &policy()),
            Duration::ZERO
        );
        lines.restarts.insert("w-b".into(), 1);
        assert_eq!(
            lines.create_failed("w-b", "h", t, &policy()),
            Duration::from_secs(10)
        );
        assert_eq!(lines.vacant.len(), 2);
    }
}
