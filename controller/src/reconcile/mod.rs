//! The planner: what to do next for one service, as a pure function.
//!
//! [`plan`]`(&Input, &Memory) -> Plan` looks at the desired state, what Docker and
//! HAProxy report, what the controller itself has in flight ([`Memory`]) and the time
//! it is given, and returns [`Action`]s with the notes, counts and memory changes that
//! go with them. It performs no I/O and reads no clock, so every rule here is
//! unit-tested without Docker (`tests.rs`). The executor in [`crate::controller`]
//! applies the plan to the adapters and to [`Memory`].
//!
//! A replica's path through passes, with a load balancer:
//! running → slot assigned in maintenance with weight 0 ("warming") → enabled once its
//! port answers → serving when HAProxy reports it UP → on removal: drain → (no sessions
//! or `drainTimeout`) → slot released to maintenance → container stopped and removed.
//! Weight 0 in maintenance marks a slot dockscale has not enabled yet; a slot in
//! maintenance with a real weight was taken out of rotation by someone else and is
//! reported, never fought over.
//!
//! A pass, step by step (one function each):
//! 1. [`classify`]: sort the listed containers: live, in flight, or to remove; judge
//!    the exits seen for the first time ([`crash_loop`]).
//! 2. [`rotation::match_slots`]: pair replicas with backend slots; free the slots of
//!    replicas that are gone.
//! 3. [`retire::finish_drains`]: the replicas being drained go on to removal.
//! 4. counts, 5. the rollout and its deadline ([`rollout`]), 6. the creates (with the
//!    crash-loop lines), then [`warm_pool::step`]: takes of paused warm containers in
//!    place of those creates, and the pool's own upkeep (warm containers come in
//!    [`Input::warm`], apart from the replicas, and no other step sees them), 7. [`retire::victims`]: what to remove (scale-down, rollout),
//!    each through [`retire::retire`], 8. [`rotation::bring_in`]: the rest into rotation,
//!    and the service's members after them.
//!
//! Members (hand-started containers labelled `dockscale.join=<service>`) come in
//! [`Input::members`], a list apart from the replicas: they take part in steps 2 and 8
//! only. No rule that counts, creates, removes, drains or rolls out ever sees one, so no
//! plan can stop a container that is not dockscale's. A member running on another
//! network than the service's is reported once ([`Note::MemberNetworkMismatch`]).

pub mod canary;
pub mod classify;
pub mod conditions;
pub mod control;
pub mod crash_loop;
pub mod guard;
pub mod history;
pub mod image;
pub mod phase;
pub mod retire;
pub mod rollout;
pub mod rotation;
pub mod swarm;
#[cfg(test)]
mod tests;
pub mod warm_pool;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::backend::{Admin, Backend};
use crate::model::member::Member;
use crate::model::replica::{ContainerId, Health, Replica};
use crate::spec::ServiceSpec;

pub use crash_loop::{BackoffPolicy, ExitRecord, Vacancy, Verdict};
pub use phase::{Memory, Phase, Tracked};
pub use rollout::RolloutProgress;
pub use rotation::probe_targets;

/// A create that was issued but that Docker has not listed yet, after two minutes is
/// assumed lost (the ReplicaSet controller's expectations timeout is five).
pub const CREATE_EXPECTATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How soon to look again while something is moving (warming, draining, creating).
pub const ACTIVE_REQUEUE: Duration = Duration::from_millis(100);
/// A running replica has its address on the service network from its start; one
/// without it this long after its creation was disconnected, and is replaced.
pub const ADDRESS_GRACE: Duration = Duration::from_secs(2);

/// The moment a pass is planned for: a monotonic instant for deadlines and the wall
/// clock for comparing with Docker's timestamps.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub instant: Instant,
    pub unix_ns: i64,
}

/// Limits of the executor that the plan respects.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Docker creates (and removals) in flight at once, per service.
    pub max_parallel: usize,
}

/// Everything one pass is planned from.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    pub spec: &'a ServiceSpec,
    /// The replica count to reach (the spec's, or the autoscaler's).
    pub desired: u32,
    pub template_hash: &'a str,
    /// This service's replicas, as listed (its warm containers are not among them).
    pub replicas: Vec<&'a Replica>,
    /// This service's warm containers, as listed ([`Replica::is_warm`]).
    pub warm: Vec<&'a Replica>,
    /// The warm pool's size to keep (0 without `autoscale.warmPool`, or while the
    /// service is deleted).
    pub warm_size: u32,
    /// The hand-started containers that join this service's backend, as listed.
    pub members: Vec<&'a Member>,
    /// Whether the template's image exists locally (observed when creates may be
    /// needed; `true` otherwise).
    pub image_present: bool,
    /// What the controller remembers of the image's pulls.
    pub pull: &'a image::PullState,
    /// The backend, when the spec has a load balancer and HAProxy answered.
    pub backend: Option<&'a Backend>,
    /// Why the backend could not be read, when it could not: the load balancer's
    /// reason (a condition reason) and its words.
    pub backend_error: Option<(&'static str, &'a str)>,
    /// Replicas whose port accepted a connection during this observation.
    pub answering: &'a BTreeSet<ContainerId>,
    pub now: Now,
    pub limits: Limits,
    /// The crash-loop policy the exits are judged by.
    pub backoff: &'a BackoffPolicy,
    /// The template an aborted rollout goes back to (the last one every replica ran),
    /// when it is known and not the current one.
    pub previous: Option<&'a str>,
}

/// Why a replica is removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoveReason {
    /// More replicas than desired.
    ScaleDown,
    /// Replaced by a replica of the new template.
    Rollout,
    /// The container exited (crashed, or was ended from outside).
    Exited { code: Option<i64> },
    /// Docker created it but it never ran.
    NeverStarted,
    /// It runs but lost its address on the service network (`docker network
    /// disconnect`): nothing can reach it there any more.
    NetworkLost,
    /// Docker reported it unhealthy for longer than `unhealthyReplaceAfter`.
    Unhealthy,
}

impl RemoveReason {
    /// A short, bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            RemoveReason::ScaleDown => "scale_down",
            RemoveReason::Rollout => "rollout",
            RemoveReason::Exited { .. } => "exited",
            RemoveReason::NeverStarted => "never_started",
            RemoveReason::NetworkLost => "network_lost",
            RemoveReason::Unhealthy => "unhealthy",
        }
    }
}

/// One step for the executor.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create the service network if it does not exist.
    EnsureNetwork,
    /// Pull the template's image from its registry (in the background; creates wait).
    Pull { image: String },
    /// Create and start one replica of the current template, on a line that carries
    /// `restarts` crashes in a row (0: a fresh line).
    Create { restarts: u32 },
    /// Create and start one replica of the previous template ([`Input::previous`]): an
    /// aborted rollout gives back the old replicas it had retired.
    Restore { restarts: u32 },
    /// Stop (with the grace period) and remove a container.
    Remove {
        id: ContainerId,
        name: String,
        reason: RemoveReason,
    },
    /// Point a free slot at a replica, in maintenance with weight 0.
    AssignSlot {
        id: ContainerId,
        slot: String,
        addr: SocketAddrV4,
    },
    /// Apply the server options and put the slot in rotation.
    Enable { id: ContainerId, slot: String },
    /// Stop sending new sessions to a replica that is being removed.
    Drain {
        id: ContainerId,
        slot: String,
        reason: RemoveReason,
    },
    /// Take a slot out of rotation and free it (maintenance, weight 0).
    Release { slot: String },
    /// The replica behind this slot is gone (it died, or was cut from its network):
    /// take the slot out of rotation and free it, then cut the connections to its
    /// address, so that requests waiting on a replica that vanished without a word are
    /// retried elsewhere instead of waiting for `timeout server`.
    Cut { slot: String, addr: SocketAddrV4 },
    /// Re-apply weight and maxconn to a serving slot whose options drifted.
    Reconfigure { slot: String },
    /// Set a serving slot's weight (a canary's split of the traffic).
    Weigh { slot: String, weight: u16 },
    /// Take a paused or unhealthy replica's slot out of rotation, kept assigned
    /// (maintenance, weight 0): it is enabled again once the replica runs, passes its
    /// health check and answers.
    Suspend { id: ContainerId, slot: String },
    /// Take a paused warm container of the current template in place of a Create:
    /// unpause it and rename it from `warm` to `replica`, on a line that carries
    /// `restarts` crashes in a row. It is then a replica like a created one.
    Take {
        id: ContainerId,
        warm: String,
        replica: String,
        restarts: u32,
    },
    /// Create and start a warm container of the current template.
    CreateWarm,
    /// Pause a warm container whose port answered.
    Pause { id: ContainerId, name: String },
    /// Stop and remove a warm container.
    RemoveWarm {
        id: ContainerId,
        name: String,
        reason: warm_pool::WarmRemoval,
    },
}

impl Action {
    /// The container the action concerns, if it concerns one.
    pub fn container(&self) -> Option<&ContainerId> {
        match self {
            Action::Remove { id, .. }
            | Action::AssignSlot { id, .. }
            | Action::Enable { id, .. }
            | Action::Drain { id, .. }
            | Action::Suspend { id, .. }
            | Action::Take { id, .. }
            | Action::Pause { id, .. }
            | Action::RemoveWarm { id, .. } => Some(id),
            Action::EnsureNetwork
            | Action::Pull { .. }
            | Action::Create { .. }
            | Action::Restore { .. }
            | Action::Release { .. }
            | Action::Cut { .. }
            | Action::Reconfigure { .. }
            | Action::Weigh { .. }
            | Action::CreateWarm => None,
        }
    }
}

/// Problems and facts worth a condition or an event.
#[derive(Clone, Debug, PartialEq)]
pub enum Note {
    ImageMissing {
        image: String,
    },
    /// The image is being pulled; creates wait for it.
    ImagePulling {
        image: String,
    },
    /// The last pull failed; the next one is due after its back-off.
    ImagePullBackOff {
        image: String,
        message: String,
        retry_in: Duration,
    },
    /// Replica lines whose replacement waits its back-off, soonest first.
    CrashLoopBackOff {
        held: Vec<Vacancy>,
    },
    NoFreeSlot {
        backend: String,
        waiting: usize,
    },
    /// A server someone else took out of rotation (reported once).
    OperatorHold {
        name: String,
        slot: String,
        admin: Admin,
    },
    BackendUnavailable {
        reason: &'static str,
        message: String,
    },
    RolloutStalled {
        template_hash: String,
    },
    /// A canary step's share was reached: its pause and analysis start.
    CanaryStep {
        step: usize,
        weight: u8,
        new_replicas: u32,
    },
    /// A batch of a guarded rolling update is ready: its watch starts.
    GuardBatch {
        batch: usize,
        /// New replicas ready, with the batches before it.
        new_ready: u32,
        desired: u32,
    },
    /// The canary analysis failed: the new template is drained and removed.
    RolloutAborted {
        template_hash: String,
        message: String,
    },
    /// A running member that is not on the service's network: nothing in the backend
    /// can reach it (reported once per container).
    MemberNetworkMismatch {
        name: String,
        id: ContainerId,
        /// The networks it is on.
        on: Vec<String>,
        /// The service's network, where it must be.
        network: String,
    },
}

/// An exit seen for the first time, and how it was judged.
#[derive(Clone, Debug, PartialEq)]
pub struct JudgedExit {
    pub exit: ExitRecord,
    pub verdict: Verdict,
}

/// Replica counts after the pass's observation, for status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub desired: u32,
    /// Running replicas not being removed.
    pub current: u32,
    /// Current replicas serving (UP in HAProxy, or running without a load balancer).
    pub ready: u32,
    /// Current replicas of the current template.
    pub updated: u32,
    /// Ready replicas of the current template.
    pub ready_updated: u32,
    /// Creates in flight.
    pub pending: u32,
    /// Replicas being drained or removed.
    pub terminating: u32,
}

/// What one pass decided.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub notes: Vec<Note>,
    pub counts: Counts,
    /// Look again this soon, because something is in motion.
    pub requeue_after: Option<Duration>,
    /// The exits judged in this pass (they become events).
    pub exits: Vec<JudgedExit>,
    /// The crash-loop vacancies after this pass (its exits in, its creates out).
    pub vacant: Vec<Vacancy>,
    /// The rollout progress to remember.
    pub rollout: Option<RolloutProgress>,
    /// The canary progress to remember.
    pub canary: Option<canary::CanaryProgress>,
    /// The template whose canary was aborted, while it is still the spec's.
    pub aborted: Option<String>,
    /// The canary step's figures and verdict, when this pass judged one.
    pub canary_analysis: Option<canary::Analysed>,
    /// Replicas in memory whose containers are gone: forgotten.
    pub forget: Vec<String>,
    /// The replicas Docker reports unhealthy, and since when (what memory keeps).
    pub unhealthy_since: BTreeMap<String, Instant>,
    /// Every live replica and where it stands, for status.
    pub replicas: Vec<ReplicaView>,
    /// Every member and where it stands, for status (never counted as replicas).
    pub members: Vec<MemberView>,
    /// The warm pool, for status (never counted as replicas).
    pub warm: warm_pool::PoolCounts,
}

/// One live replica as status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaView {
    pub name: String,
    pub id: ContainerId,
    /// Where it stands with the load balancer (`serving`, `warming`, `draining`, ...).
    pub serving: &'static str,
    /// Docker's health verdict, for a replica with a health check.
    pub health: Option<Health>,
    /// Of the current template.
    pub updated: bool,
    /// The backend slot it holds (the row of HAProxy's stats page).
    pub slot: Option<String>,
}

/// One member as status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub name: String,
    pub id: ContainerId,
    /// Docker's state.
    pub state: crate::model::replica::ContainerState,
    /// Where it stands with the load balancer (`serving`, `warming`, `wrong network`,
    /// `stopped`, ...).
    pub serving: &'static str,
    /// Enabled in the backend.
    pub in_rotation: bool,
    /// The backend slot it holds.
    pub slot: Option<String>,
}

impl Plan {
    fn requeue(&mut self, after: Duration) {
        self.requeue_after = Some(self.requeue_after.map_or(after, |d| d.min(after)));
    }
}

/// Plans one pass for one service. Pure: same input, same plan.
pub fn plan(input: &Input<'_>, memory: &Memory) -> Plan {
    let mut plan = Plan::default();
    let spec = input.spec;
    let lb = spec.load_balancer.as_ref();

    if memory.network_ready.as_deref() != Some(spec.network.as_str()) {
        plan.actions.push(Action::EnsureNetwork);
    }
    if let (Some(_), None) = (lb, input.backend) {
        let (reason, message) = input
            .backend_error
            .unwrap_or(("HaproxyUnreachable", "not observed"));
        plan.notes.push(Note::BackendUnavailable {
            reason,
            message: message.to_owned(),
        });
    }

    // 1. Live, in flight, or to remove; the exits judged.
    let sorted = classify::classify(input, memory, &mut plan);
    // 2.-3. Slots, and the replicas being drained finished.
    let matched = rotation::match_slots(input, &sorted.live, &mut plan);
    let mut lives = rotation::lives(input, memory, &sorted.live, &matched);
    plan.replicas = lives.iter().map(rotation::Live::view).collect();
    let members = rotation::members(input, &matched);
    plan.members = members
        .iter()
        .map(|m| m.view(spec.network.as_str()))
        .collect();
    misplaced_members(input, memory, &mut plan);
    let draining = retire::finish_drains(input, memory, &mut lives, &mut plan);

    // 4. Counts.
    plan.counts = counts(input.desired, &lives, &sorted, draining);

    // 5. Rollout progress, its deadline, and the step of a canary or guarded update.
    let progress = progress(input, memory, &lives, &mut plan);

    // 6. How many to create, on which crash-loop lines; the warm pool takes in place
    // of these creates, and its own upkeep.
    let wanted = wanted(input, &sorted, draining, &progress, &plan);
    plan.vacant = sorted.vacant;
    issue_creates(
        input,
        memory,
        sorted.in_flight,
        wanted,
        progress.stalled,
        &mut plan,
    );
    warm_pool::step(input, memory, &mut plan);

    // 7. What to remove.
    let victims = removals(input, memory, &lives, &progress, &mut plan);

    // 8. Bring the remaining replicas into rotation.
    let kept: Vec<&rotation::Live> = lives
        .iter()
        .enumerate()
        .filter(|(i, _)| !victims.iter().any(|(v, _)| v == i))
        .map(|(_, l)| l)
        .collect();
    let weights = progress.shape.map(|s| s.weights);
    rotation::bring_in(
        input,
        memory,
        &kept,
        &members,
        matched.free,
        weights,
        &mut plan,
    );
    plan
}

/// Step 4: the counts of a pass, from the live replicas and what is in flight.
fn counts(
    desired: u32,
    lives: &[rotation::Live],
    sorted: &classify::Sorted,
    draining: u32,
) -> Counts {
    let live_new = lives.iter().filter(|l| l.updated).count() as u32;
    let live_old = lives.len() as u32 - live_new;
    let ready_new = lives
        .iter()
        .filter(|l| l.updated && l.serving.is_ready())
        .count() as u32;
    let ready_old = lives
        .iter()
        .filter(|l| !l.updated && l.serving.is_ready())
        .count() as u32;
    Counts {
        desired,
        current: live_new + live_old,
        ready: ready_new + ready_old,
        updated: live_new,
        ready_updated: ready_new,
        pending: sorted.pending as u32,
        terminating: draining + sorted.removing,
    }
}

/// Where a pass's rollout stands (step 5).
#[derive(Clone, Copy, Debug)]
struct Progress {
    /// A canary's shape for this pass.
    shape: Option<canary::Shape>,
    /// A guarded rolling update's gate on the old replicas.
    gate: Option<guard::Gate>,
    /// The rollout was aborted: back to the previous template.
    aborted: bool,
    /// Past its progress deadline without progress.
    stalled: bool,
}

/// Step 5: the rollout's progress and its deadline (a paused or canary rollout never
/// stalls), and the step of a canary or of a guarded rolling update.
fn progress(
    input: &Input<'_>,
    memory: &Memory,
    lives: &[rotation::Live],
    plan: &mut Plan,
) -> Progress {
    let c = plan.counts;
    let rollout = rollout::track(
        memory.rollout.as_ref(),
        input.template_hash,
        c.desired,
        c.current - c.updated,
        c.ready_updated,
        input.now.instant,
    );
    let shape = canary::step(input, memory, lives, plan);
    let gate = match shape {
        None => guard::step(input, memory, lives, plan),
        Some(_) => None,
    };
    let paused = plan
        .canary
        .as_ref()
        .is_some_and(|c| c.paused_since.is_some());
    let stalled = shape.is_none()
        && !paused
        && rollout.as_ref().is_some_and(|r| {
            !r.complete
                && input.now.instant.saturating_duration_since(r.last_progress)
                    > input.spec.rollout.progress_deadline.get()
        });
    if stalled {
        plan.notes.push(Note::RolloutStalled {
            template_hash: input.template_hash.to_owned(),
        });
    }
    plan.rollout = rollout;
    Progress {
        shape,
        gate,
        aborted: plan.aborted.is_some(),
        stalled,
    }
}

/// Step 6: how many replicas to create (or restore), within `desired + maxSurge`.
fn wanted(
    input: &Input<'_>,
    sorted: &classify::Sorted,
    draining: u32,
    progress: &Progress,
    plan: &Plan,
) -> Wanted {
    let c = plan.counts;
    let (desired, live_new) = (c.desired, c.updated);
    let live_old = c.current - c.updated;
    let new_total = live_new + sorted.pending_new + sorted.awaiting_new;
    // Replicas still stopping count against the surge: their containers run until
    // their grace period ends, and a rollout must not outgrow `desired + maxSurge`
    // while old replicas take their time to go.
    let stopping_now = plan
        .actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Remove {
                    reason: RemoveReason::Rollout
                        | RemoveReason::ScaleDown
                        | RemoveReason::NetworkLost
                        | RemoveReason::Unhealthy,
                    ..
                }
            )
        })
        .count() as u32;
    let total = c.current
        + sorted.pending as u32
        + sorted.awaiting()
        + draining
        + sorted.removing
        + stopping_now;
    let max_total = desired.saturating_add(input.spec.rollout.max_surge);
    let (creates, restores) = if progress.aborted {
        // Back to the previous template: its replicas up to `desired`, within the
        // surge (the new ones go as these serve).
        let old_total = live_old
            + (sorted.pending as u32).saturating_sub(sorted.pending_new)
            + sorted.awaiting_old;
        let restores = match input.previous {
            Some(_) => desired
                .saturating_sub(old_total)
                .min(max_total.saturating_sub(total)),
            None => 0,
        };
        (0, restores)
    } else if let Some(shape) = progress.shape {
        (shape.new_target.saturating_sub(new_total), 0)
    } else if live_old > 0 {
        let room = max_total.saturating_sub(total);
        (room.min(desired.saturating_sub(new_total)), 0)
    } else {
        (desired.saturating_sub(new_total), 0)
    };
    Wanted {
        creates,
        restores,
        aborted: progress.aborted,
    }
}

/// Step 7: the replicas to retire (drained, then removed), each with why: beyond the
/// count or the rollout's bounds, or unhealthy past its limit.
fn removals(
    input: &Input<'_>,
    memory: &Memory,
    lives: &[rotation::Live],
    progress: &Progress,
    plan: &mut Plan,
) -> Vec<(usize, RemoveReason)> {
    let c = plan.counts;
    let (desired, live_old, ready) = (c.desired, c.current - c.updated, c.ready);
    let mut victims = match (progress.aborted, progress.shape) {
        // The new replicas go as the old ones serve; without the previous template to
        // restore, as many new ones stay as hold the count.
        (true, _) if input.previous.is_some() => retire::rollback_victims(input, lives, ready),
        (true, _) => retire::canary_victims(lives, desired.saturating_sub(live_old)),
        (false, Some(shape)) => retire::canary_victims(lives, shape.new_target),
        (false, None) => {
            let old_floor = progress.gate.map_or(0, |g| g.old_floor);
            retire::victims(input, lives, ready, live_old.saturating_sub(old_floor))
        }
    };
    for i in retire::unhealthy(input, memory, lives, plan) {
        if !victims.iter().any(|(v, _)| *v == i) {
            victims.push((i, RemoveReason::Unhealthy));
        }
    }
    let drain_timeout = input
        .spec
        .load_balancer
        .as_ref()
        .map(|l| l.drain_timeout.get())
        .unwrap_or_default();
    for (i, reason) in &victims {
        retire::retire(
            &lives[*i],
            reason.clone(),
            None,
            drain_timeout,
            input.now,
            plan,
        );
    }
    victims
}

/// The creates a pass wants: of the current template, or (once its rollout was
/// aborted) restores of the previous one.
#[derive(Clone, Copy, Debug)]
struct Wanted {
    creates: u32,
    restores: u32,
    aborted: bool,
}

/// Step 6: the creates, unless the image holds them, a shared failure holds them, or
/// the rollout stalled; each on its crash-loop line, within the parallelism bound
/// (`in_flight` creates are running). Lines backing off are noted and looked at again
/// when due.
fn issue_creates(
    input: &Input<'_>,
    memory: &Memory,
    in_flight: usize,
    wanted: Wanted,
    stalled: bool,
    plan: &mut Plan,
) {
    let now = input.now;
    let Wanted {
        creates,
        restores,
        aborted,
    } = wanted;
    let held = memory.creates_held_until.filter(|at| *at > now.instant);
    let image = image_step(input, creates, plan);
    if creates > 0 && image.holds_creates() {
        // Nothing to create before the image is there: the notes say why.
    } else if let (true, Some(until)) = (creates > 0, held) {
        // The last create failed for a reason every create would share.
        plan.requeue(until - now.instant);
    } else if !stalled {
        // Creates beyond the bound wait for one in flight to finish, which wakes the
        // pass. A line backing off holds its own place only.
        let room = input.limits.max_parallel.saturating_sub(in_flight) as u32;
        let (count, hash) = match input.previous {
            Some(previous) if aborted => (restores, previous),
            _ => (creates, input.template_hash),
        };
        let assignment = crash_loop::assign(&plan.vacant, count, room, hash, now.instant);
        let held: Vec<Vacancy> = assignment.held(now.instant).cloned().collect();
        if let Some(first) = held.first() {
            plan.requeue(first.not_before - now.instant);
            plan.notes.push(Note::CrashLoopBackOff { held });
        }
        for restarts in assignment.creates {
            plan.actions.push(if aborted {
                Action::Restore { restarts }
            } else {
                Action::Create { restarts }
            });
        }
        plan.vacant = assignment.vacant;
    }
}

/// The image's step (see [`image::step`]): a pull to start, or why creates wait.
fn image_step(input: &Input<'_>, creates: u32, plan: &mut Plan) -> image::ImageStep {
    let template = &input.spec.template;
    let step = image::step(
        template.image_pull_policy,
        input.image_present,
        creates,
        input.pull,
        input.now.instant,
    );
    let image = template.image.clone();
    match &step {
        image::ImageStep::Ready => {}
        image::ImageStep::Missing => plan.notes.push(Note::ImageMissing { image }),
        image::ImageStep::Pull => plan.actions.push(Action::Pull { image }),
        image::ImageStep::Pulling => plan.notes.push(Note::ImagePulling { image }),
        image::ImageStep::BackOff { until, message } => {
            let retry_in = until.saturating_duration_since(input.now.instant);
            plan.requeue(retry_in);
            plan.notes.push(Note::ImagePullBackOff {
                image,
                message: message.clone(),
                retry_in,
            });
        }
    }
    step
}

/// Running members on another network than the service's, reported once each.
fn misplaced_members(input: &Input<'_>, memory: &Memory, plan: &mut Plan) {
    let network = input.spec.network.as_str();
    for m in &input.members {
        if m.is_running() && m.ip_on(network).is_none() && !memory.misplaced_reported(&m.id) {
            plan.notes.push(Note::MemberNetworkMismatch {
                name: m.name.clone(),
                id: m.id.clone(),
                on: m.networks().into_iter().map(str::to_owned).collect(),
                network: network.to_owned(),
            });
        }
    }
}

/// How long a replica has existed, from its creation label and the pass's wall clock.
fn age_of(r: &Replica, now: Now) -> Duration {
    let ns = now.unix_ns.saturating_sub(r.created_at_ns).max(0);
    Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}
