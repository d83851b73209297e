//! What dockscale has in flight for one service: one [`Phase`] per replica it has
//! touched, keyed by container name (a replica has its name before Docker gives it an
//! id), and the service-wide facts the planner needs: the crash-loop vacancies, the
//! network last ensured, the rollout followed.
//!
//! It changes in two ways only: by applying a plan ([`Memory::apply_plan`] for what the
//! plan decided, [`Memory::applied`] for each action the executor carried out) and by
//! the completions of Docker operations ([`Memory::created`],
//! [`Memory::create_failed`], [`Memory::removed`]). The planner reads it. What a
//! replica is doing *now* (UP in HAProxy, running) is observed each pass, never kept
//! here: this holds only what dockscale itself started and must remember.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use super::crash_loop::{self, BackoffPolicy, Vacancy};
use super::rollout::RolloutProgress;
use super::{Action, Note, Plan};
use crate::model::replica::ContainerId;

/// A replica's lifecycle, as far as dockscale has taken it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Its create call is in flight (the engine may list it `created` meanwhile).
    Creating {
        since: Instant,
        template_hash: String,
    },
    /// Created and started; not in the backend yet.
    Starting,
    /// Its slot is assigned (maintenance, weight 0), waiting for its port to answer.
    Warming,
    /// Enabled in the backend.
    Serving,
    /// Out of rotation for new sessions, before its removal.
    Draining { since: Instant },
    /// Its stop and removal are in flight.
    Stopping,
    /// Its stop or removal failed: tried again from `retry_at`, not in a hot loop.
    StopFailed { retry_at: Instant },
    /// Seen exited; its end was judged. It is removed next.
    Exited,
}

/// One replica as dockscale remembers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    pub phase: Phase,
    /// Crashes in a row on this replica's line (it inherited them at its create).
    pub restarts: u32,
    /// Its server was found held by someone else, and that was reported.
    pub hold_reported: bool,
    /// Failed stops or removals in a row.
    pub stop_failures: u32,
    /// Its exit was judged (counted once however many passes see it).
    pub exit_judged: bool,
}

impl Tracked {
    fn new(phase: Phase) -> Self {
        Tracked {
            phase,
            restarts: 0,
            hold_reported: false,
            stop_failures: 0,
            exit_judged: false,
        }
    }
}

/// What dockscale has in flight for a service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Memory {
    pub replicas: BTreeMap<String, Tracked>,
    /// Crash-loop lines whose replacement waits or is due, soonest first.
    pub vacant: Vec<Vacancy>,
    /// The network that was last ensured.
    pub network_ready: Option<String>,
    pub rollout: Option<RolloutProgress>,
    /// The canary rollout followed, step by step.
    pub canary: Option<super::canary::CanaryProgress>,
    /// A template whose canary analysis failed: not rolled out again until the spec
    /// changes (to another template hash).
    pub aborted_template: Option<String>,
    /// Creates failed for a reason not the replicas' own (the engine went away, the
    /// network vanished): no create before this.
    pub creates_held_until: Option<Instant>,
    /// Such create failures in a row, for the next hold.
    pub create_failures: u32,
    /// Replicas Docker reports unhealthy, by name, and since when (as first seen by a
    /// pass): past `unhealthyReplaceAfter` they are replaced.
    pub unhealthy_since: BTreeMap<String, Instant>,
    /// Members reported on the wrong network (once per container).
    pub misplaced_members: BTreeSet<ContainerId>,
    /// The warm pool's work in flight.
    pub warm: super::warm_pool::PoolMemory,
}

impl Memory {
    pub fn phase(&self, name: &str) -> Option<&Phase> {
        self.replicas.get(name).map(|t| &t.phase)
    }

    /// Its stop and removal are in flight.
    pub fn is_stopping(&self, name: &str) -> bool {
        self.phase(name) == Some(&Phase::Stopping)
    }

    /// When a replica whose stop failed is tried again.
    pub fn stop_retry_at(&self, name: &str) -> Option<Instant> {
        match self.phase(name) {
            Some(Phase::StopFailed { retry_at }) => Some(*retry_at),
            _ => None,
        }
    }

    /// Failed stops or removals in a row of a replica.
    pub fn stop_failures(&self, name: &str) -> u32 {
        self.replicas.get(name).map_or(0, |t| t.stop_failures)
    }

    pub fn draining_since(&self, name: &str) -> Option<Instant> {
        match self.phase(name) {
            Some(Phase::Draining { since }) => Some(*since),
            _ => None,
        }
    }

    /// The creates in flight: name, since when, template hash.
    pub fn creating(&self) -> impl Iterator<Item = (&str, Instant, &str)> {
        self.replicas.iter().filter_map(|(name, t)| match &t.phase {
            Phase::Creating {
                since,
                template_hash,
            } => Some((name.as_str(), *since, template_hash.as_str())),
            _ => None,
        })
    }

    pub fn is_creating(&self, name: &str) -> bool {
        matches!(self.phase(name), Some(Phase::Creating { .. }))
    }

    /// Crashes in a row on a replica's line.
    pub fn restarts(&self, name: &str) -> u32 {
        self.replicas.get(name).map_or(0, |t| t.restarts)
    }

    pub fn hold_reported(&self, name: &str) -> bool {
        self.replicas.get(name).is_some_and(|t| t.hold_reported)
    }

    /// Since when a replica has been seen unhealthy, if it is.
    pub fn unhealthy_since(&self, name: &str) -> Option<Instant> {
        self.unhealthy_since.get(name).copied()
    }

    /// Whether a member on the wrong network was reported already.
    pub fn misplaced_reported(&self, id: &ContainerId) -> bool {
        self.misplaced_members.contains(id)
    }

    pub fn exit_judged(&self, name: &str) -> bool {
        self.replicas.get(name).is_some_and(|t| t.exit_judged)
    }

    /// What the plan decided for the service as a whole: the exits it judged, the
    /// crash-loop vacancies, the rollout it follows, the holds it reported and the
    /// replicas it found gone.
    pub fn apply_plan(&mut self, plan: &Plan) {
        for judged in &plan.exits {
            let t = self
                .replicas
                .entry(judged.exit.name.clone())
                .or_insert_with(|| Tracked::new(Phase::Exited));
            t.exit_judged = true;
            if t.phase != Phase::Stopping {
                t.phase = Phase::Exited;
            }
        }
        self.vacant = plan.vacant.clone();
        self.rollout = plan.rollout.clone();
        self.canary = plan.canary.clone();
        self.aborted_template = plan.aborted.clone();
        self.unhealthy_since = plan.unhealthy_since.clone();
        for note in &plan.notes {
            match note {
                Note::OperatorHold { name, .. } => self.track(name, None).hold_reported = true,
                Note::MemberNetworkMismatch { id, .. } => {
                    self.misplaced_members.insert(id.clone());
                }
                _ => {}
            }
        }
        for name in &plan.forget {
            self.replicas.remove(name);
        }
    }

    /// An action of a plan, carried out. `name` is the replica it concerns (the
    /// executor resolves the plan's container ids); `None` for service-wide actions.
    pub fn applied(&mut self, action: &Action, name: Option<&str>, now: Instant) {
        let phase = match action {
            Action::AssignSlot { .. } | Action::Suspend { .. } => Phase::Warming,
            Action::Enable { .. } => Phase::Serving,
            Action::Drain { .. } => match name.and_then(|n| self.draining_since(n)) {
                Some(since) => Phase::Draining { since },
                None => Phase::Draining { since: now },
            },
            Action::Remove { .. } => Phase::Stopping,
            Action::EnsureNetwork
            | Action::Pull { .. }
            | Action::Create { .. }
            | Action::Restore { .. }
            | Action::Release { .. }
            | Action::Cut { .. }
            | Action::Reconfigure { .. }
            | Action::Weigh { .. }
            | Action::Take { .. }
            | Action::CreateWarm
            | Action::Pause { .. }
            | Action::RemoveWarm { .. } => return,
        };
        if let Some(name) = name {
            self.track(name, Some(phase));
        }
    }

    /// A create was started under `name`, on a line carrying `restarts` crashes.
    pub fn create_started(&mut self, name: &str, template_hash: &str, restarts: u32, now: Instant) {
        let t = self.track(
            name,
            Some(Phase::Creating {
                since: now,
                template_hash: template_hash.to_owned(),
            }),
        );
        t.restarts = restarts;
    }

    /// Its create call finished: the container exists and was started.
    pub fn created(&mut self, name: &str) {
        self.creates_held_until = None;
        self.create_failures = 0;
        if let Some(t) = self.replicas.get_mut(name) {
            if matches!(t.phase, Phase::Creating { .. }) {
                t.phase = Phase::Starting;
            }
        }
    }

    /// Creates are held until `until`: one failed for a reason that is not the
    /// replica's (a create of any replica would fail alike).
    pub fn hold_creates(&mut self, until: Instant) {
        self.create_failures = self.create_failures.saturating_add(1);
        self.creates_held_until = Some(until);
    }

    /// Its create call failed. A failure of the replica's own (`crash: true`) counts on
    /// its line, which backs off; one that is not its doing (a missing image, an engine
    /// that went away) is forgotten. Returns the back-off of a crash.
    pub fn create_failed(
        &mut self,
        name: &str,
        template_hash: &str,
        crash: bool,
        now: Instant,
        policy: &BackoffPolicy,
    ) -> Option<Duration> {
        let tracked = self.replicas.remove(name);
        let line = tracked.as_ref().map_or(0, |t| t.restarts);
        if !crash {
            return None;
        }
        // The line is the template's the create was for (a restore's is the previous).
        let template_hash = match tracked.map(|t| t.phase) {
            Some(Phase::Creating { template_hash, .. }) => template_hash,
            _ => template_hash.to_owned(),
        };
        let (delay, vacancy) = crash_loop::failed_create(name, line, &template_hash, now, policy);
        self.vacant.push(vacancy);
        Some(delay)
    }

    /// Its stop and removal finished (or the container was gone already).
    pub fn removed(&mut self, name: &str) {
        self.replicas.remove(name);
    }

    /// Its stop or removal failed: tried again from `retry_at`.
    pub fn removal_failed(&mut self, name: &str, retry_at: Instant) {
        let t = self.track(name, Some(Phase::StopFailed { retry_at }));
        t.stop_failures = t.stop_failures.saturating_add(1);
    }

    fn track(&mut self, name: &str, phase: Option<Phase>) -> &mut Tracked {
        let t = self
            .replicas
            .entry(name.to_owned())
            .or_insert_with(|| Tracked::new(Phase::Starting));
        if let Some(phase) = phase {
            t.phase = phase;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::replica::ContainerId;
    use crate::reconcile::RemoveReason;

    fn drain() -> Action {
        Action::Drain {
            id: ContainerId("a".into()),
            slot: "s1".into(),
            reason: RemoveReason::ScaleDown,
        }
    }

    #[test]
    fn a_replica_goes_from_creating_to_stopping_through_what_was_applied() {
        let t0 = Instant::now();
        let mut m = Memory::default();
        m.create_started("w-a", "h", 2, t0);
        assert!(m.is_creating("w-a"));
        assert_eq!(m.restarts("w-a"), 2);
        m.created("w-a");
        assert_eq!(m.phase("w-a"), Some(&Phase::Starting));
        m.applied(&drain(), Some("w-a"), t0);
        // A drain applied again keeps its start.
        m.applied(&drain(), Some("w-a"), t0 + Duration::from_secs(3));
        assert_eq!(m.draining_since("w-a"), Some(t0));
        let remove = Action::Remove {
            id: ContainerId("a".into()),
            name: "w-a".into(),
            reason: RemoveReason::ScaleDown,
        };
        m.applied(&remove, Some("w-a"), t0);
        assert!(m.is_stopping("w-a"));
        assert_eq!(
            m.restarts("w-a"),
            2,
            "the line count stays with the replica"
        );
        m.removed("w-a");
        assert_eq!(m.phase("w-a"), None);
    }

    #[test]
    fn a_failed_create_backs_off_only_when_it_is_the_replicas_doing() {
        let t0 = Instant::now();
        let policy = BackoffPolicy::default();
        let mut m = Memory::default();
        m.create_started("w-a", "h", 1, t0);
        assert_eq!(
            m.create_failed("w-a", "h", true, t0, &policy),
            Some(Duration::from_secs(10))
        );
        assert_eq!(m.vacant.len(), 1);
        m.create_started("w-b", "h", 4, t0);
        assert_eq!(m.create_failed("w-b", "h", false, t0, &policy), None);
        assert_eq!(m.vacant.len(), 1);
        assert!(m.replicas.is_empty());
    }
}
