//! The planner: what to do next for one service, as a pure function.
//!
//! `plan(&Input, &Memory) -> Plan` looks at the desired state, what Docker and HAProxy
//! report, what the controller itself has in flight ([`Memory`]) and the time it is
//! given, and returns [`Action`]s. It performs no I/O and reads no clock, so every rule
//! here is unit-tested without Docker (see the tests at the bottom). The executor in
//! [`crate::controller`] applies the actions and records what it started in [`Memory`].
//!
//! A replica's path through a pass, with a load balancer:
//! running → slot assigned in maintenance with weight 0 ("warming") → enabled once its
//! port answers → serving when HAProxy reports it UP → on removal: drain → (no sessions
//! or `drainTimeout`) → slot released to maintenance → container stopped and removed.
//! Weight 0 in maintenance marks a slot dockscale has not enabled yet; a slot in
//! maintenance with a real weight was taken out of rotation by someone else and is
//! reported, never fought over.

pub mod crash_loop;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddrV4;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::backend::{Admin, Backend, Slot};
use crate::model::replica::{ContainerId, ContainerState, Replica};
use crate::reconcile::crash_loop::CrashLines;
pub use crate::reconcile::crash_loop::{BackoffPolicy, ExitRecord, Vacancy, Verdict};
use crate::spec::ServiceSpec;

/// A create that was issued but that Docker has not listed yet, after two minutes is
/// assumed lost (the ReplicaSet controller's expectations timeout is five).
pub const CREATE_EXPECTATION_TIMEOUT: Duration = Duration::from_secs(120);
/// A running replica has its address on the service network from its start; one
/// without it this long after its creation was disconnected, and is replaced.
pub const ADDRESS_GRACE: Duration = Duration::from_secs(2);
/// How soon to look again while something is moving (warming, draining, creating).
pub const ACTIVE_REQUEUE: Duration = Duration::from_millis(100);

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
    pub service: &'a str,
    pub spec: &'a ServiceSpec,
    /// The replica count to reach (the spec's, or the autoscaler's).
    pub desired: u32,
    pub template_hash: &'a str,
    /// This service's containers, as listed.
    pub replicas: Vec<&'a Replica>,
    /// Whether the template's image exists locally (nothing is ever pulled).
    pub image_present: bool,
    /// The backend, when the spec has a load balancer and HAProxy answered.
    pub backend: Option<&'a Backend>,
    /// Why the backend could not be read, when it could not.
    pub backend_error: Option<&'a str>,
    /// Replicas whose port accepted a connection during this observation.
    pub answering: &'a BTreeSet<ContainerId>,
    pub now: Now,
    pub limits: Limits,
}

/// What the controller itself has in flight for a service. Written only by the
/// executor, read by the planner.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    /// Creates issued and not yet listed by Docker, by container name.
    pub creating: BTreeMap<String, PendingCreate>,
    /// Containers whose stop/remove is in flight.
    pub removing: BTreeSet<ContainerId>,
    /// Replicas being drained, since when.
    pub draining: BTreeMap<ContainerId, Instant>,
    /// Crash-loop back-off per replica line.
    pub lines: CrashLines,
    /// The network that was last ensured.
    pub network_ready: Option<String>,
    pub rollout: Option<RolloutProgress>,
    /// Operator holds already reported, so each is reported once.
    pub reported_holds: BTreeSet<ContainerId>,
}

#[derive(Clone, Debug)]
pub struct PendingCreate {
    pub template_hash: String,
    pub since: Instant,
}

/// Looks at every replica seen exited for the first time, before the pass is planned,
/// so that the pass removing it already holds its line's replacement back. Returns the
/// exits looked at, each with its verdict.
pub fn record_exits(
    memory: &mut Memory,
    replicas: &[&Replica],
    now: Now,
    policy: &BackoffPolicy,
) -> Vec<(ExitRecord, Verdict)> {
    let present: BTreeSet<&ContainerId> = replicas.iter().map(|r| &r.id).collect();
    memory.lines.forget_gone(&present);
    let mut recorded = Vec::new();
    for r in replicas {
        let exited = matches!(r.state, ContainerState::Exited | ContainerState::Dead);
        // Without a cause yet, its verdict waits for its `die` event.
        let (true, Some(cause)) = (exited, r.exit_cause) else {
            continue;
        };
        if memory.removing.contains(&r.id) {
            continue;
        }
        let exit = ExitRecord {
            name: r.name.clone(),
            code: r.exit_code(),
            cause,
            ran_for: age_of(r, now),
        };
        if let Some(verdict) =
            memory
                .lines
                .exited(&r.id, exit.clone(), &r.template_hash, now.instant, policy)
        {
            recorded.push((exit, verdict));
        }
    }
    recorded
}

/// Progress of a rollout to a template hash, for the progress deadline.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutProgress {
    pub template_hash: String,
    pub started: Instant,
    pub last_progress: Instant,
    /// Best ready-updated count seen, and fewest old replicas seen.
    pub ready_updated: u32,
    pub old_left: u32,
    pub complete: bool,
}

/// Why a replica is removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoveReason {
    /// More replicas than desired.
    ScaleDown,
    /// Replaced by a replica of the new template.
    Rollout,
    /// The container exited on its own (crashed, or was killed from outside).
    Exited { code: Option<i64> },
    /// Docker created it but it never ran.
    NeverStarted,
    /// It runs but lost its address on the service network (`docker network
    /// disconnect`): nothing can reach it there any more.
    NetworkLost,
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
        }
    }
}

/// One step for the executor.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create the service network if it does not exist.
    EnsureNetwork,
    /// Create and start one replica of the current template, on a line that carries
    /// `restarts` crashes in a row (0: a fresh line).
    Create { restarts: u32 },
    /// Stop (with the grace period) and remove a container.
    Remove {
        id: ContainerId,
        name: String,
        reason: RemoveReason,
        /// How long it has existed, for the crash-loop backoff.
        age: Duration,
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
    /// Re-apply weight and maxconn to a serving slot whose options drifted.
    Reconfigure { slot: String },
    /// Take a paused replica's slot out of rotation, kept assigned (maintenance, weight
    /// 0): it is enabled again once the replica runs and answers.
    Suspend { id: ContainerId, slot: String },
}

/// Problems and facts worth a condition or an event.
#[derive(Clone, Debug, PartialEq)]
pub enum Note {
    ImageMissing {
        image: String,
    },
    /// Replica lines whose replacement waits its back-off, soonest first.
    CrashLoopBackOff {
        held: Vec<Vacancy>,
    },
    NoFreeSlot {
        backend: String,
        waiting: usize,
    },
    OperatorHold {
        id: ContainerId,
        name: String,
        slot: String,
        admin: Admin,
    },
    BackendUnavailable {
        reason: String,
    },
    RolloutStalled {
        template_hash: String,
    },
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

#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub notes: Vec<Note>,
    pub counts: Counts,
    /// Look again this soon, because something is in motion.
    pub requeue_after: Option<Duration>,
    /// The rollout progress to remember.
    pub rollout: Option<RolloutProgress>,
    /// The crash-loop vacancies left after this pass's creates, when it planned creates.
    pub vacant: Option<Vec<Vacancy>>,
}

impl Plan {
    fn requeue(&mut self, after: Duration) {
        self.requeue_after = Some(self.requeue_after.map_or(after, |d| d.min(after)));
    }
}

/// Where a live replica stands with the load balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Serving<'s> {
    /// No load balancer: running means ready.
    Plain,
    /// HAProxy could not be read: readiness unknown, treated as not ready.
    Unknown,
    Unassigned,
    Warming(&'s Slot),
    Ready(&'s Slot),
    /// In rotation but HAProxy's checks say DOWN.
    Unhealthy(&'s Slot),
    /// Taken out of rotation by someone else.
    Held(&'s Slot),
    /// Being drained by dockscale.
    Draining(&'s Slot),
    /// In rotation, but its container is paused (`docker pause`).
    Paused(&'s Slot),
}

impl Serving<'_> {
    fn is_ready(self) -> bool {
        matches!(self, Serving::Plain | Serving::Ready(_))
    }

    /// Removal order among replicas of equal template: not serving first.
    fn removal_rank(self) -> u8 {
        match self {
            Serving::Unassigned | Serving::Unknown => 0,
            Serving::Warming(_) | Serving::Held(_) | Serving::Paused(_) => 1,
            Serving::Unhealthy(_) => 2,
            Serving::Draining(_) => 3,
            Serving::Plain | Serving::Ready(_) => 4,
        }
    }
}

struct Live<'a, 's> {
    replica: &'a Replica,
    serving: Serving<'s>,
    updated: bool,
}

/// Plans one pass for one service. Pure: same input, same plan.
pub fn plan(input: &Input<'_>, memory: &Memory) -> Plan {
    let mut plan = Plan::default();
    let now = input.now;
    let spec = input.spec;
    let lb = spec.load_balancer.as_ref();
    let network = spec.network.as_str();

    if memory.network_ready.as_deref() != Some(network) {
        plan.actions.push(Action::EnsureNetwork);
    }
    if let (Some(_), None) = (lb, input.backend) {
        plan.notes.push(Note::BackendUnavailable {
            reason: input.backend_error.unwrap_or("not observed").to_owned(),
        });
    }

    // 1. Sort the listed containers: live, in flight, or failed.
    let mut live: Vec<&Replica> = Vec::new();
    let mut removing = 0u32;
    // Exited, its cause not known yet (its `die` event is on its way): it holds its
    // place until the verdict, so that its line's back-off applies to its replacement.
    let mut awaiting_new = 0u32;
    let mut awaiting_old = 0u32;
    for r in &input.replicas {
        if memory.removing.contains(&r.id) {
            removing += 1;
            continue;
        }
        let age = age_of(r, now);
        match r.state {
            ContainerState::Running | ContainerState::Paused
                if r.ip_on(network).is_none() && age >= ADDRESS_GRACE =>
            {
                plan.actions.push(Action::Remove {
                    id: r.id.clone(),
                    name: r.name.clone(),
                    reason: RemoveReason::NetworkLost,
                    age,
                });
            }
            ContainerState::Running | ContainerState::Paused => live.push(r),
            ContainerState::Removing => removing += 1,
            ContainerState::Created | ContainerState::Restarting
                if memory.creating.contains_key(&r.name) => {}
            ContainerState::Created | ContainerState::Restarting => {
                plan.actions.push(Action::Remove {
                    id: r.id.clone(),
                    name: r.name.clone(),
                    reason: RemoveReason::NeverStarted,
                    age,
                });
            }
            ContainerState::Exited | ContainerState::Dead if r.exit_cause.is_none() => {
                if r.template_hash == input.template_hash {
                    awaiting_new += 1;
                } else {
                    awaiting_old += 1;
                }
                plan.requeue(ACTIVE_REQUEUE);
            }
            ContainerState::Exited | ContainerState::Dead => {
                plan.actions.push(Action::Remove {
                    id: r.id.clone(),
                    name: r.name.clone(),
                    reason: RemoveReason::Exited {
                        code: r.exit_code(),
                    },
                    age,
                });
            }
        }
    }
    let pending: Vec<(&String, &PendingCreate)> = memory
        .creating
        .iter()
        .filter(|(name, p)| {
            now.instant.saturating_duration_since(p.since) < CREATE_EXPECTATION_TIMEOUT
                && !live.iter().any(|r| &r.name == *name)
        })
        .collect();
    // Every create task counts against the parallelism bound until it has also
    // started its container: a created-but-not-started container is still work in
    // flight for the engine.
    let pending_in_flight = memory.creating.len();
    // The executor wakes the service when a create task finishes, so creates in flight
    // need no polling (which would only compete with the engine for its list calls);
    // an expectation that never resolves is looked at again when it expires.
    if let Some(oldest) = pending.iter().map(|(_, p)| p.since).min() {
        plan.requeue((oldest + CREATE_EXPECTATION_TIMEOUT).saturating_duration_since(now.instant));
    }

    // 2. Match replicas with backend slots.
    let port = spec.template.port.unwrap_or(0);
    let addr_of = |r: &Replica| r.ip_on(network).map(|ip| SocketAddrV4::new(ip, port));
    let mut slot_of: HashMap<&ContainerId, &Slot> = HashMap::new();
    let mut free_slots: Vec<&Slot> = Vec::new();
    if let (Some(_), Some(backend)) = (lb, input.backend) {
        let mut by_addr: HashMap<SocketAddrV4, &Replica> = HashMap::new();
        for r in &live {
            if let Some(addr) = addr_of(r) {
                by_addr.insert(addr, r);
            }
        }
        for slot in &backend.slots {
            match slot.addr.and_then(|a| by_addr.get(&a)) {
                Some(r) => {
                    // Two slots for one replica: keep the one most in service.
                    match slot_of.get(&r.id) {
                        Some(kept) if admin_rank(kept.admin) >= admin_rank(slot.admin) => {
                            plan.actions.push(Action::Release {
                                slot: slot.name.clone(),
                            });
                        }
                        Some(kept) => {
                            plan.actions.push(Action::Release {
                                slot: kept.name.clone(),
                            });
                            slot_of.insert(&r.id, slot);
                        }
                        None => {
                            slot_of.insert(&r.id, slot);
                        }
                    }
                }
                None if slot.admin != Admin::Maint => {
                    // In rotation, but no live replica has that address: a replica
                    // that died, or drift. Out of rotation at once.
                    plan.actions.push(Action::Release {
                        slot: slot.name.clone(),
                    });
                }
                None => free_slots.push(slot),
            }
        }
    }

    let mut lives: Vec<Live> = live
        .iter()
        .map(|r| {
            let serving = match (lb, input.backend) {
                (None, _) => Serving::Plain,
                (Some(_), None) => Serving::Unknown,
                (Some(_), Some(_)) => match slot_of.get(&r.id) {
                    None => Serving::Unassigned,
                    Some(slot) => match slot.admin {
                        Admin::Maint if slot.weight == 0 => Serving::Warming(slot),
                        Admin::Maint => Serving::Held(slot),
                        Admin::Drain if memory.draining.contains_key(&r.id) => {
                            Serving::Draining(slot)
                        }
                        Admin::Drain => Serving::Held(slot),
                        Admin::Ready if r.state == ContainerState::Paused => Serving::Paused(slot),
                        Admin::Ready if slot.up => Serving::Ready(slot),
                        Admin::Ready => Serving::Unhealthy(slot),
                    },
                },
            };
            Live {
                replica: r,
                serving,
                updated: r.template_hash == input.template_hash,
            }
        })
        .collect();

    // 3. Replicas being drained: finish what was started.
    let drain_timeout = lb.map(|l| l.drain_timeout.get()).unwrap_or_default();
    let mut draining_count = 0u32;
    lives.retain(|l| {
        let Some(since) = memory.draining.get(&l.replica.id) else {
            return true;
        };
        draining_count += 1;
        let reason = if l.updated {
            RemoveReason::ScaleDown
        } else {
            RemoveReason::Rollout
        };
        let remove = Action::Remove {
            id: l.replica.id.clone(),
            name: l.replica.name.clone(),
            reason: reason.clone(),
            age: age_of(l.replica, now),
        };
        match l.serving {
            Serving::Plain | Serving::Unassigned => plan.actions.push(remove),
            // HAProxy unreadable: the server may still be in rotation, so wait.
            Serving::Unknown => plan.requeue(ACTIVE_REQUEUE),
            Serving::Ready(slot) | Serving::Unhealthy(slot) | Serving::Paused(slot) => {
                plan.actions.push(Action::Drain {
                    id: l.replica.id.clone(),
                    slot: slot.name.clone(),
                    reason,
                });
                plan.requeue(ACTIVE_REQUEUE);
            }
            Serving::Warming(slot) | Serving::Held(slot) if slot.admin == Admin::Maint => {
                plan.actions.push(Action::Release {
                    slot: slot.name.clone(),
                });
                plan.actions.push(remove);
            }
            Serving::Warming(slot) | Serving::Held(slot) | Serving::Draining(slot) => {
                let elapsed = now.instant.saturating_duration_since(*since);
                if slot.sessions == 0 || elapsed >= drain_timeout {
                    plan.actions.push(Action::Release {
                        slot: slot.name.clone(),
                    });
                    plan.actions.push(remove);
                } else {
                    plan.requeue(ACTIVE_REQUEUE.min(drain_timeout - elapsed));
                }
            }
        }
        false
    });

    // 4. Counts.
    let desired = input.desired;
    let pending_new = pending
        .iter()
        .filter(|(_, p)| p.template_hash == input.template_hash)
        .count() as u32;
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
    plan.counts = Counts {
        desired,
        current: live_new + live_old,
        ready: ready_new + ready_old,
        updated: live_new,
        ready_updated: ready_new,
        pending: pending.len() as u32,
        terminating: draining_count + removing,
    };

    // 5. Rollout progress and its deadline.
    let rollout = track_rollout(input, memory, live_old, ready_new);
    let stalled = rollout.as_ref().is_some_and(|r| {
        !r.complete
            && now.instant.saturating_duration_since(r.last_progress)
                > spec.rollout.progress_deadline.get()
    });
    if stalled {
        plan.notes.push(Note::RolloutStalled {
            template_hash: input.template_hash.to_owned(),
        });
    }
    plan.rollout = rollout;

    // 6. How many to create.
    let new_total = live_new + pending_new + awaiting_new;
    let total = live_new + live_old + pending.len() as u32 + awaiting_new + awaiting_old;
    let creates = if live_old > 0 {
        let max_total = desired.saturating_add(spec.rollout.max_surge);
        let room = max_total.saturating_sub(total);
        let wanted = desired.saturating_sub(new_total);
        if stalled {
            0
        } else {
            room.min(wanted)
        }
    } else {
        desired.saturating_sub(new_total)
    };
    if creates > 0 && !input.image_present {
        plan.notes.push(Note::ImageMissing {
            image: spec.template.image.clone(),
        });
    } else if !stalled {
        // Creates beyond the bound wait for one in flight to finish, which wakes the
        // pass. A line backing off holds its own place only.
        let room = input.limits.max_parallel.saturating_sub(pending_in_flight) as u32;
        let assignment = memory
            .lines
            .assign(creates, room, input.template_hash, now.instant);
        let held: Vec<Vacancy> = assignment.held(now.instant).cloned().collect();
        if let Some(first) = held.first() {
            plan.requeue(first.not_before - now.instant);
            plan.notes.push(Note::CrashLoopBackOff { held });
        }
        for restarts in assignment.creates {
            plan.actions.push(Action::Create { restarts });
        }
        plan.vacant = Some(assignment.vacant);
    }

    // 7. What to remove.
    let mut victims: Vec<(usize, RemoveReason)> = Vec::new();
    let order = |lives: &[Live], pick: &dyn Fn(&Live) -> bool| -> Vec<usize> {
        let mut idx: Vec<usize> = (0..lives.len()).filter(|&i| pick(&lives[i])).collect();
        // Not serving first, then newest first.
        idx.sort_by_key(|&i| {
            (
                lives[i].serving.removal_rank(),
                std::cmp::Reverse(lives[i].replica.created_at_ns),
                lives[i].replica.name.clone(),
            )
        });
        idx
    };
    if live_old == 0 {
        // Creates in flight are not counted: a replica that serves is never removed
        // for one that may yet fail to start. Extra arrivals are trimmed when listed.
        let excess = live_new.saturating_sub(desired) as usize;
        for i in order(&lives, &|l| l.updated).into_iter().take(excess) {
            victims.push((i, RemoveReason::ScaleDown));
        }
    } else {
        // A rollout: old replicas go as far as availability allows. Ones that do not
        // serve cost nothing; serving ones only while enough others serve.
        let min_available = desired.saturating_sub(spec.rollout.max_unavailable);
        let mut ready = ready_new + ready_old;
        for i in order(&lives, &|l| !l.updated) {
            let serving = lives[i].serving.is_ready();
            if serving && ready <= min_available {
                break;
            }
            if serving {
                ready -= 1;
            }
            victims.push((i, RemoveReason::Rollout));
        }
        // The desired count fell during the rollout: extra updated replicas go too.
        let excess_new = live_new.saturating_sub(desired) as usize;
        for i in order(&lives, &|l| l.updated).into_iter().take(excess_new) {
            victims.push((i, RemoveReason::ScaleDown));
        }
    }
    let victim_set: BTreeSet<usize> = victims.iter().map(|(i, _)| *i).collect();
    for (i, reason) in victims {
        let l = &lives[i];
        let remove = Action::Remove {
            id: l.replica.id.clone(),
            name: l.replica.name.clone(),
            reason: reason.clone(),
            age: age_of(l.replica, now),
        };
        match l.serving {
            Serving::Plain | Serving::Unassigned => plan.actions.push(remove),
            Serving::Unknown => plan.requeue(ACTIVE_REQUEUE),
            Serving::Warming(slot) | Serving::Held(slot) if slot.admin == Admin::Maint => {
                plan.actions.push(Action::Release {
                    slot: slot.name.clone(),
                });
                plan.actions.push(remove);
            }
            Serving::Ready(slot)
            | Serving::Unhealthy(slot)
            | Serving::Held(slot)
            | Serving::Warming(slot)
            | Serving::Draining(slot)
            | Serving::Paused(slot) => {
                plan.actions.push(Action::Drain {
                    id: l.replica.id.clone(),
                    slot: slot.name.clone(),
                    reason,
                });
                plan.requeue(ACTIVE_REQUEUE);
            }
        }
    }

    // 8. Bring the remaining replicas into rotation.
    if let (Some(lb), Some(_)) = (lb, input.backend) {
        let mut free = free_slots.into_iter();
        let mut waiting_for_slot = 0usize;
        for (i, l) in lives.iter().enumerate() {
            if victim_set.contains(&i) {
                continue;
            }
            match l.serving {
                Serving::Unassigned => match (addr_of(l.replica), free.next()) {
                    (Some(addr), Some(slot)) => {
                        plan.actions.push(Action::AssignSlot {
                            id: l.replica.id.clone(),
                            slot: slot.name.clone(),
                            addr,
                        });
                        // It enters in maintenance either way; if its port already
                        // answers, it is enabled right after, in this pass.
                        if input.answering.contains(&l.replica.id) {
                            plan.actions.push(Action::Enable {
                                id: l.replica.id.clone(),
                                slot: slot.name.clone(),
                            });
                        }
                        plan.requeue(ACTIVE_REQUEUE);
                    }
                    (Some(_), None) => waiting_for_slot += 1,
                    // Running but without an address yet: look again shortly.
                    (None, _) => plan.requeue(ACTIVE_REQUEUE),
                },
                Serving::Warming(slot) => {
                    if input.answering.contains(&l.replica.id) {
                        plan.actions.push(Action::Enable {
                            id: l.replica.id.clone(),
                            slot: slot.name.clone(),
                        });
                    }
                    plan.requeue(ACTIVE_REQUEUE);
                }
                Serving::Ready(slot) | Serving::Unhealthy(slot) => {
                    if slot.weight != u32::from(lb.server.weight) {
                        plan.actions.push(Action::Reconfigure {
                            slot: slot.name.clone(),
                        });
                    }
                    if matches!(l.serving, Serving::Unhealthy(_)) {
                        plan.requeue(Duration::from_secs(1));
                    }
                }
                Serving::Held(slot) => {
                    if !memory.reported_holds.contains(&l.replica.id) {
                        plan.notes.push(Note::OperatorHold {
                            id: l.replica.id.clone(),
                            name: l.replica.name.clone(),
                            slot: slot.name.clone(),
                            admin: slot.admin,
                        });
                    }
                }
                Serving::Paused(slot) => plan.actions.push(Action::Suspend {
                    id: l.replica.id.clone(),
                    slot: slot.name.clone(),
                }),
                Serving::Plain | Serving::Unknown | Serving::Draining(_) => {}
            }
        }
        if waiting_for_slot > 0 {
            plan.notes.push(Note::NoFreeSlot {
                backend: lb.backend.to_string(),
                waiting: waiting_for_slot,
            });
        }
    }
    plan
}

/// Ready first, then drain, then maintenance.
fn admin_rank(admin: Admin) -> u8 {
    match admin {
        Admin::Ready => 2,
        Admin::Drain => 1,
        Admin::Maint => 0,
    }
}

fn age_of(r: &Replica, now: Now) -> Duration {
    let ns = now.unix_ns.saturating_sub(r.created_at_ns).max(0);
    Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}

/// Follows the rollout to the current template: started when old replicas exist,
/// progressing while ready updated replicas grow or old ones shrink, complete when
/// no old replica is left and all desired are ready.
fn track_rollout(
    input: &Input<'_>,
    memory: &Memory,
    live_old: u32,
    ready_new: u32,
) -> Option<RolloutProgress> {
    let now = input.now.instant;
    let complete = live_old == 0 && ready_new >= input.desired;
    match &memory.rollout {
        Some(r) if r.template_hash == input.template_hash => {
            let mut next = r.clone();
            if ready_new > r.ready_updated || live_old < r.old_left {
                next.last_progress = now;
            }
            next.ready_updated = next.ready_updated.max(ready_new);
            next.old_left = next.old_left.min(live_old);
            next.complete = r.complete || complete;
            Some(next)
        }
        // A new template (or the first look after start) with replicas to replace.
        _ if live_old > 0 => Some(RolloutProgress {
            template_hash: input.template_hash.to_owned(),
            started: now,
            last_progress: now,
            ready_updated: ready_new,
            old_left: live_old,
            complete: false,
        }),
        _ => None,
    }
}

/// The replicas whose port should be probed before this pass is planned: those whose
/// slot is assigned and waiting to be enabled.
pub fn probe_targets(
    spec: &ServiceSpec,
    replicas: &[&Replica],
    backend: &Backend,
) -> Vec<(ContainerId, SocketAddrV4)> {
    let Some(port) = spec.template.port else {
        return Vec::new();
    };
    // Warming servers and replicas not in the backend yet: a replica that already
    // answers is enabled in the same pass that gives it a slot.
    let placed: BTreeSet<SocketAddrV4> = backend
        .slots
        .iter()
        .filter(|s| !(s.admin == Admin::Maint && s.weight == 0))
        .filter_map(|s| s.addr)
        .collect();
    replicas
        .iter()
        .filter(|r| r.state == ContainerState::Running)
        .filter_map(|r| {
            let addr = SocketAddrV4::new(r.ip_on(spec.network.as_str())?, port);
            (!placed.contains(&addr)).then(|| (r.id.clone(), addr))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::replica::ExitCause;
    use crate::testing::{self, free_slot, replica, serving_slot, warming_slot};

    const HASH: &str = "new";

    /// One service's world: what is listed, what HAProxy shows, what is in flight.
    struct World {
        spec: ServiceSpec,
        desired: u32,
        replicas: Vec<Replica>,
        backend: Option<Backend>,
        answering: BTreeSet<ContainerId>,
        image_present: bool,
        memory: Memory,
        t0: Instant,
        at: Duration,
    }

    impl World {
        fn new(spec: ServiceSpec) -> Self {
            let lb = spec.load_balancer.is_some();
            World {
                desired: spec.replicas,
                spec,
                replicas: Vec::new(),
                backend: lb.then(Backend::default),
                answering: BTreeSet::new(),
                image_present: true,
                memory: Memory {
                    network_ready: Some(testing::NET.to_owned()),
                    ..Memory::default()
                },
                t0: Instant::now(),
                at: Duration::ZERO,
            }
        }

        fn with_replicas(mut self, ns: impl IntoIterator<Item = u8>, hash: &str) -> Self {
            self.replicas
                .extend(ns.into_iter().map(|n| replica(n, hash)));
            self
        }

        fn with_slots(mut self, slots: Vec<Slot>) -> Self {
            self.backend = Some(Backend { slots });
            self
        }

        fn now(&self) -> Now {
            Now {
                instant: self.t0 + self.at,
                unix_ns: 100_000_000_000 + self.at.as_nanos() as i64,
            }
        }

        fn plan(&self) -> Plan {
            let input = Input {
                service: "w",
                spec: &self.spec,
                desired: self.desired,
                template_hash: HASH,
                replicas: self.replicas.iter().collect(),
                image_present: self.image_present,
                backend: self.backend.as_ref(),
                backend_error: None,
                answering: &self.answering,
                now: self.now(),
                limits: Limits { max_parallel: 8 },
            };
            plan(&input, &self.memory)
        }
    }

    fn creates(plan: &Plan) -> usize {
        plan.actions
            .iter()
            .filter(|a| matches!(a, Action::Create { .. }))
            .count()
    }

    fn removed(plan: &Plan) -> Vec<&str> {
        plan.actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    fn drained(plan: &Plan) -> Vec<&str> {
        plan.actions
            .iter()
            .filter_map(|a| match a {
                Action::Drain { slot, .. } => Some(slot.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn creates_the_missing_replicas() {
        let w = World::new(testing::spec().replicas(3).build()).with_replicas([1], HASH);
        let plan = w.plan();
        assert_eq!(creates(&plan), 2);
        assert!(removed(&plan).is_empty());
        assert_eq!(plan.counts.current, 1);
        assert_eq!(plan.counts.ready, 1);
    }

    #[test]
    fn ensures_the_network_once() {
        let mut w = World::new(testing::spec().replicas(1).build());
        w.memory.network_ready = None;
        assert_eq!(w.plan().actions[0], Action::EnsureNetwork);
        w.memory.network_ready = Some(testing::NET.to_owned());
        assert!(!w.plan().actions.contains(&Action::EnsureNetwork));
    }

    #[test]
    fn creates_in_parallel_but_bounded() {
        let w = World::new(testing::spec().replicas(20).build());
        let plan = w.plan();
        assert_eq!(creates(&plan), 8);
        // No polling while they run: a finishing create wakes the pass.
        assert_eq!(plan.requeue_after, None);
    }

    #[test]
    fn the_bound_holds_while_created_containers_are_still_starting() {
        let mut w = World::new(testing::spec().replicas(20).build()).with_replicas(1..=8, HASH);
        for (i, r) in w.replicas.iter_mut().enumerate() {
            r.state = ContainerState::Created;
            w.memory.creating.insert(
                r.name.clone(),
                PendingCreate {
                    template_hash: HASH.into(),
                    since: w.t0,
                },
            );
            if i >= 5 {
                w.memory.creating.remove(&r.name);
                r.state = ContainerState::Running;
            }
        }
        // 5 creates still starting (listed as created): only 3 more may begin.
        let plan = w.plan();
        assert_eq!(creates(&plan), 3);
        // Their finishing wakes the pass; the plan only asks to look again when the
        // oldest expectation would expire.
        assert_eq!(plan.requeue_after, Some(CREATE_EXPECTATION_TIMEOUT));
    }

    #[test]
    fn creates_in_flight_are_expected_so_a_burst_of_events_never_creates_twice() {
        let mut w = World::new(testing::spec().replicas(3).build()).with_replicas([1], HASH);
        for name in ["w-aaaaa", "w-bbbbb"] {
            w.memory.creating.insert(
                name.to_owned(),
                PendingCreate {
                    template_hash: HASH.to_owned(),
                    since: w.t0,
                },
            );
        }
        // However many times the pass runs before Docker lists them: no new creates.
        for _ in 0..5 {
            assert_eq!(creates(&w.plan()), 0);
        }
        // An expectation that Docker never fulfilled expires.
        w.at = CREATE_EXPECTATION_TIMEOUT + Duration::from_secs(1);
        assert_eq!(creates(&w.plan()), 2);
    }

    #[test]
    fn scale_down_removes_the_newest_first() {
        let mut w = World::new(testing::spec().replicas(5).build()).with_replicas(1..=5, HASH);
        w.desired = 2;
        let plan = w.plan();
        assert_eq!(removed(&plan), vec!["w-00005", "w-00004", "w-00003"]);
        assert!(plan.actions.iter().all(|a| matches!(
            a,
            Action::Remove {
                reason: RemoveReason::ScaleDown,
                ..
            }
        )));
    }

    #[test]
    fn replicas_being_removed_are_not_counted_or_removed_twice() {
        let mut w = World::new(testing::spec().replicas(2).build()).with_replicas(1..=3, HASH);
        w.memory.removing.insert(ContainerId("id03".into()));
        let plan = w.plan();
        assert!(plan.actions.is_empty(), "{:?}", plan.actions);
        assert_eq!(plan.counts.current, 2);
        assert_eq!(plan.counts.terminating, 1);
    }

    #[test]
    fn an_exited_replica_is_removed_and_replaced() {
        let mut w = World::new(testing::spec().replicas(2).build()).with_replicas(1..=2, HASH);
        w.replicas[1].state = ContainerState::Exited;
        w.replicas[1].status = "Exited (137) 1 second ago".into();
        w.replicas[1].exit_cause = Some(ExitCause::Signalled);
        let plan = w.plan();
        assert_eq!(removed(&plan), vec!["w-00002"]);
        assert!(plan.actions.contains(&Action::Remove {
            id: ContainerId("id02".into()),
            name: "w-00002".into(),
            reason: RemoveReason::Exited { code: Some(137) },
            age: Duration::from_secs(98),
        }));
        assert_eq!(creates(&plan), 1);
    }

    #[test]
    fn a_container_that_never_started_is_removed_unless_its_create_is_in_flight() {
        let mut w = World::new(testing::spec().replicas(1).build()).with_replicas([1], HASH);
        w.replicas[0].state = ContainerState::Created;
        w.memory.creating.insert(
            "w-00001".into(),
            PendingCreate {
                template_hash: HASH.into(),
                since: w.t0,
            },
        );
        let plan = w.plan();
        assert!(removed(&plan).is_empty());
        assert_eq!(creates(&plan), 0, "the create in flight counts");
        w.memory.creating.clear();
        let plan = w.plan();
        assert_eq!(removed(&plan), vec!["w-00001"]);
        assert_eq!(creates(&plan), 1);
    }

    #[test]
    fn a_missing_image_creates_nothing_and_says_why() {
        let mut w = World::new(testing::spec().replicas(2).build());
        w.image_present = false;
        let plan = w.plan();
        assert_eq!(creates(&plan), 0);
        assert!(plan.notes.contains(&Note::ImageMissing {
            image: "dockscale-webapp:latest".into()
        }));
    }

    #[test]
    fn a_running_replica_gets_a_free_slot_in_maintenance() {
        let w = World::new(testing::spec().replicas(1).lb().build())
            .with_replicas([1], HASH)
            .with_slots(vec![free_slot(1), free_slot(2)]);
        let plan = w.plan();
        assert_eq!(
            plan.actions,
            vec![Action::AssignSlot {
                id: ContainerId("id01".into()),
                slot: "web1".into(),
                addr: testing::addr(1),
            }]
        );
        assert_eq!(plan.counts.ready, 0, "not ready before HAProxy says UP");
    }

    #[test]
    fn a_warming_slot_is_enabled_only_once_the_port_answers() {
        let mut w = World::new(testing::spec().replicas(1).lb().build())
            .with_replicas([1], HASH)
            .with_slots(vec![warming_slot(1, 1)]);
        assert!(w.plan().actions.is_empty());
        assert_eq!(w.plan().requeue_after, Some(ACTIVE_REQUEUE));
        w.answering.insert(ContainerId("id01".into()));
        assert_eq!(
            w.plan().actions,
            vec![Action::Enable {
                id: ContainerId("id01".into()),
                slot: "web1".into()
            }]
        );
    }

    #[test]
    fn a_replica_that_already_answers_is_enabled_in_the_pass_that_gives_it_a_slot() {
        let mut w = World::new(testing::spec().replicas(1).lb().build())
            .with_replicas([1], HASH)
            .with_slots(vec![free_slot(1)]);
        w.answering.insert(ContainerId("id01".into()));
        assert_eq!(
            w.plan().actions,
            vec![
                Action::AssignSlot {
                    id: ContainerId("id01".into()),
                    slot: "web1".into(),
                    addr: testing::addr(1),
                },
                Action::Enable {
                    id: ContainerId("id01".into()),
                    slot: "web1".into()
                }
            ]
        );
    }

    #[test]
    fn probe_targets_are_the_replicas_not_in_rotation() {
        let spec = testing::spec().replicas(3).lb().build();
        let replicas = [replica(1, HASH), replica(2, HASH), replica(3, HASH)];
        let backend = Backend {
            slots: vec![serving_slot(1, 1), warming_slot(2, 2), free_slot(3)],
        };
        let refs: Vec<&Replica> = replicas.iter().collect();
        assert_eq!(
            probe_targets(&spec, &refs, &backend),
            vec![
                (ContainerId("id02".into()), testing::addr(2)),
                (ContainerId("id03".into()), testing::addr(3)),
            ]
        );
    }

    #[test]
    fn scale_down_drains_before_stopping() {
        let mut w = World::new(testing::spec().replicas(2).lb().build())
            .with_replicas(1..=2, HASH)
            .with_slots(vec![serving_slot(1, 1), serving_slot(2, 2)]);
        w.desired = 1;
        let plan = w.plan();
        assert_eq!(drained(&plan), vec!["web2"]);
        assert!(removed(&plan).is_empty(), "nothing stops while in rotation");
        assert_eq!(plan.counts.ready, 2);
    }

    #[test]
    fn a_drained_replica_is_released_then_removed_once_idle() {
        let mut w = World::new(testing::spec().replicas(2).lb().build())
            .with_replicas(1..=2, HASH)
            .with_slots(vec![serving_slot(1, 1), serving_slot(2, 2)]);
        w.desired = 1;
        w.memory.draining.insert(ContainerId("id02".into()), w.t0);
        let slots = &mut w.backend.as_mut().expect("backend").slots;
        slots[1].admin = Admin::Drain;
        slots[1].sessions = 3;
        let busy = w.plan();
        assert!(removed(&busy).is_empty(), "sessions still open");
        assert_eq!(busy.counts.current, 1);
        assert_eq!(busy.counts.terminating, 1);

        w.backend.as_mut().expect("backend").slots[1].sessions = 0;
        let idle = w.plan();
        assert_eq!(
            idle.actions,
            vec![
                Action::Release {
                    slot: "web2".into()
                },
                Action::Remove {
                    id: ContainerId("id02".into()),
                    name: "w-00002".into(),
                    reason: RemoveReason::ScaleDown,
                    age: Duration::from_secs(98),
                },
            ],
            "out of rotation before the stop"
        );
    }

    #[test]
    fn a_drain_is_cut_short_after_the_drain_timeout() {
        let mut w = World::new(
            testing::spec()
                .replicas(1)
                .lb()
                .drain_timeout_secs(5)
                .build(),
        )
        .with_replicas(1..=2, HASH)
        .with_slots(vec![serving_slot(1, 1), serving_slot(2, 2)]);
        w.memory.draining.insert(ContainerId("id02".into()), w.t0);
        let slots = &mut w.backend.as_mut().expect("backend").slots;
        slots[1].admin = Admin::Drain;
        slots[1].sessions = 7;
        w.at = Duration::from_secs(4);
        assert!(removed(&w.plan()).is_empty());
        w.at = Duration::from_secs(5);
        assert_eq!(removed(&w.plan()), vec!["w-00002"]);
    }

    #[test]
    fn a_server_in_rotation_without_a_live_replica_is_released_at_once() {
        // A replica died: Docker lists it exited, without an address.
        let mut w = World::new(testing::spec().replicas(2).lb().build())
            .with_replicas(1..=2, HASH)
            .with_slots(vec![serving_slot(1, 1), serving_slot(2, 2)]);
        w.replicas[1].state = ContainerState::Exited;
        w.replicas[1].ips.clear();
        w.replicas[1].exit_cause = Some(ExitCause::Own);
        let plan = w.plan();
        assert!(plan.actions.contains(&Action::Release {
            slot: "web2".into()
        }));
        assert_eq!(removed(&plan), vec!["w-00002"]);
        assert_eq!(creates(&plan), 1);
    }

    #[test]
    fn an_exit_whose_cause_is_not_known_yet_holds_its_place_and_leaves_rotation() {
        let mut w = World::new(testing::spec().replicas(2).lb().build())
            .with_replicas(1..=2, HASH)
            .with_slots(vec![serving_slot(1, 1), serving_slot(2, 2)]);
        w.replicas[1].state = ContainerState::Exited;
        w.replicas[1].ips.clear();
        w.replicas[1].exit_cause = None;
        let plan = w.plan();
        assert_eq!(
            plan.actions,
            vec![Action::Release {
                slot: "web2".into()
            }],
            "out of rotation now; removed and replaced once its cause is known"
        );
        assert_eq!(plan.requeue_after, Some(ACTIVE_REQUEUE));
    }

    #[test]
    fn a_server_held_in_maintenance_by_an_operator_is_reported_once_and_left_alone() {
        let mut held = serving_slot(2, 2);
        held.admin = Admin::Maint;
        held.up = false;
        let mut w = World::new(testing::spec().replicas(2).lb().build())
            .with_replicas(1..=2, HASH)
            .with_slots(vec![serving_slot(1, 1), held]);
        let plan = w.plan();
        assert!(plan.actions.is_empty(), "{:?}", plan.actions);
        assert_eq!(
            plan.notes,
            vec![Note::OperatorHold {
                id: ContainerId("id02".into()),
                name: "w-00002".into(),
                slot: "web2".into(),
                admin: Admin::Maint
            }]
        );
        assert_eq!(plan.counts.ready, 1);
        w.memory.reported_holds.insert(ContainerId("id02".into()));
        assert!(w.plan().notes.is_empty());
    }

    #[test]
    fn nothing_is_stopped_while_haproxy_cannot_be_read() {
        let mut w = World::new(testing::spec().replicas(1).lb().build()).with_replicas(1..=2, HASH);
        w.backend = None;
        let plan = w.plan();
        assert!(removed(&plan).is_empty());
        assert!(drained(&plan).is_empty());
        assert!(matches!(plan.notes[0], Note::BackendUnavailable { .. }));
    }

    #[test]
    fn a_slot_shortage_is_reported() {
        let w = World::new(testing::spec().replicas(2).lb().build())
            .with_replicas(1..=2, HASH)
            .with_slots(vec![free_slot(1)]);
        let plan = w.plan();
        assert_eq!(plan.actions.len(), 1);
        assert!(plan.notes.contains(&Note::NoFreeSlot {
            backend: "web".into(),
            waiting: 1
        }));
    }

    /// Steps a rollout the way the executor and HAProxy would, one pass at a time, and
    /// returns the ready count after every pass.
    fn roll(mut w: World, passes: usize) -> (World, Vec<u32>) {
        let mut ready_seen = Vec::new();
        let mut next_n = 100u8;
        for _ in 0..passes {
            let plan = w.plan();
            ready_seen.push(plan.counts.ready);
            w.memory.rollout = plan.rollout;
            for action in plan.actions {
                let slots = &mut w.backend.as_mut().expect("backend").slots;
                match action {
                    Action::Create { .. } => {
                        next_n += 1;
                        w.replicas.push(replica(next_n, HASH));
                        w.answering.insert(ContainerId(format!("id{next_n:02}")));
                    }
                    Action::AssignSlot { slot, addr, .. } => {
                        let s = slots.iter_mut().find(|s| s.name == slot).expect("slot");
                        s.addr = Some(addr);
                    }
                    Action::Enable { slot, .. } => {
                        let s = slots.iter_mut().find(|s| s.name == slot).expect("slot");
                        s.admin = Admin::Ready;
                        s.weight = 100;
                        s.up = true;
                    }
                    Action::Drain { id, slot, .. } => {
                        let s = slots.iter_mut().find(|s| s.name == slot).expect("slot");
                        s.admin = Admin::Drain;
                        w.memory.draining.insert(id, w.t0);
                    }
                    Action::Release { slot } => {
                        let s = slots.iter_mut().find(|s| s.name == slot).expect("slot");
                        *s = free_slot(s.name[3..].parse().expect("slot number"));
                    }
                    Action::Remove { id, .. } => {
                        w.replicas.retain(|r| r.id != id);
                        w.memory.draining.remove(&id);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            w.at += Duration::from_secs(1);
        }
        (w, ready_seen)
    }

    fn rolling_world(replicas: u8, surge: u32, unavailable: u32) -> World {
        let spec = testing::spec()
            .replicas(u32::from(replicas))
            .lb()
            .rollout(surge, unavailable)
            .build();
        let slots = (1..=u32::from(replicas))
            .map(|i| serving_slot(i, i as u8))
            .chain((u32::from(replicas) + 1..=16).map(free_slot))
            .collect();
        World::new(spec)
            .with_replicas(1..=replicas, "old")
            .with_slots(slots)
    }

    #[test]
    fn a_rollout_with_surge_one_never_drops_below_desired_ready() {
        let (w, ready) = roll(rolling_world(4, 1, 0), 40);
        assert!(ready.iter().all(|&r| r >= 4), "ready over time: {ready:?}");
        assert_eq!(w.replicas.len(), 4);
        assert!(w.replicas.iter().all(|r| r.template_hash == HASH));
        assert!(w.plan().rollout.expect("tracked").complete);
    }

    #[test]
    fn a_rollout_with_max_unavailable_keeps_desired_minus_that_ready() {
        let (w, ready) = roll(rolling_world(6, 0, 2), 40);
        assert!(ready.iter().all(|&r| r >= 4), "ready over time: {ready:?}");
        assert_eq!(w.replicas.len(), 6);
        assert!(w.replicas.iter().all(|r| r.template_hash == HASH));
    }

    #[test]
    fn a_rollout_creates_one_surge_replica_and_keeps_the_old_until_it_serves() {
        let w = rolling_world(3, 1, 0);
        let plan = w.plan();
        assert_eq!(creates(&plan), 1);
        assert!(drained(&plan).is_empty());
        assert!(removed(&plan).is_empty());
    }

    #[test]
    fn a_rollout_that_makes_no_progress_stops_after_the_deadline() {
        let mut w = rolling_world(2, 1, 0);
        // The new replica runs but never answers: it stays warming.
        w.replicas.push(replica(50, HASH));
        w.backend
            .as_mut()
            .expect("backend")
            .slots
            .push(warming_slot(20, 50));
        w.memory.rollout = w.plan().rollout;
        w.at = Duration::from_secs(121);
        let plan = w.plan();
        assert!(plan.notes.contains(&Note::RolloutStalled {
            template_hash: HASH.into()
        }));
        assert_eq!(creates(&plan), 0);
        assert!(drained(&plan).is_empty(), "old replicas keep serving");
    }

    fn exited(n: u8, cause: ExitCause) -> Replica {
        let mut r = replica(n, HASH);
        r.state = ContainerState::Exited;
        r.status = Replica::exited_status(Some(1));
        r.ips.clear();
        r.exit_cause = Some(cause);
        r
    }

    /// Records the exits the way the loop does before it plans, and returns the
    /// verdicts.
    fn record(w: &mut World, policy: &BackoffPolicy) -> Vec<Verdict> {
        let now = w.now();
        let refs: Vec<&Replica> = w.replicas.iter().collect();
        record_exits(&mut w.memory, &refs, now, policy)
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// What the executor keeps of a plan's creates: the vacancies left, and the line
    /// each create joins (the new replicas are numbered from `first`).
    fn apply_creates(w: &mut World, plan: &Plan, first: u8) {
        if let Some(vacant) = &plan.vacant {
            w.memory.lines.vacant = vacant.clone();
        }
        let mut n = first;
        for action in &plan.actions {
            if let Action::Create { restarts } = action {
                w.memory
                    .lines
                    .restarts
                    .insert(format!("w-{n:05}"), *restarts);
                n += 1;
            }
        }
    }

    // Regression: five replicas removed from outside within a minute were counted as one
    // service-wide crash loop (`5 exits in a row; back-off 1m 20s`) that held back every
    // create, and the service sat at zero replicas.
    #[test]
    fn replicas_killed_from_outside_are_all_replaced_at_once() {
        let mut w = World::new(testing::spec().replicas(5).build());
        w.replicas = (1..=5).map(|n| exited(n, ExitCause::Signalled)).collect();
        let verdicts = record(&mut w, &BackoffPolicy::default());
        assert_eq!(verdicts, vec![Verdict::Replace; 5]);
        let plan = w.plan();
        assert_eq!(creates(&plan), 5, "{:?}", plan.actions);
        assert_eq!(removed(&plan).len(), 5);
        assert!(!plan
            .notes
            .iter()
            .any(|n| matches!(n, Note::CrashLoopBackOff { .. })));
        // Found exited without the exit seen (the engine restarted): replaced too.
        let mut w = World::new(testing::spec().replicas(3).build());
        w.replicas = (1..=3).map(|n| exited(n, ExitCause::Unknown)).collect();
        assert_eq!(
            record(&mut w, &BackoffPolicy::default()),
            vec![Verdict::Replace; 3]
        );
        assert_eq!(creates(&w.plan()), 3);
    }

    #[test]
    fn one_crash_looping_replica_never_holds_back_another_replacement_or_a_scale_up() {
        let mut w = World::new(testing::spec().replicas(3).build()).with_replicas([1], HASH);
        // Replica 2's line has crashed 3 times already; replica 3 was killed from outside.
        w.memory.lines.restarts.insert("w-00002".into(), 3);
        w.replicas.push(exited(2, ExitCause::Own));
        w.replicas.push(exited(3, ExitCause::Signalled));
        let verdicts = record(&mut w, &BackoffPolicy::default());
        assert_eq!(
            verdicts,
            vec![
                Verdict::Crash {
                    restarts: 4,
                    delay: Duration::from_secs(40)
                },
                Verdict::Replace
            ]
        );
        let plan = w.plan();
        assert_eq!(
            creates(&plan),
            1,
            "the killed replica's replacement goes ahead"
        );
        match plan
            .notes
            .iter()
            .find(|n| matches!(n, Note::CrashLoopBackOff { .. }))
        {
            Some(Note::CrashLoopBackOff { held }) => {
                assert_eq!(held.len(), 1);
                assert_eq!(held[0].last_exit.name, "w-00002");
            }
            other => panic!("no back-off note: {other:?}"),
        }
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(40)));
        apply_creates(&mut w, &plan, 10);
        w.replicas = vec![replica(1, HASH), replica(10, HASH)];
        // A scale-up meanwhile: the new replicas are fresh lines, created at once.
        w.desired = 6;
        let plan = w.plan();
        assert_eq!(
            plan.actions
                .iter()
                .filter(|a| matches!(a, Action::Create { restarts: 0 }))
                .count(),
            3,
            "{:?}",
            plan.actions
        );
        // When the back-off ends, the crashed line's replacement inherits its count.
        apply_creates(&mut w, &plan, 11);
        w.replicas
            .extend([replica(11, HASH), replica(12, HASH), replica(13, HASH)]);
        w.at = Duration::from_secs(40);
        assert_eq!(w.plan().actions, vec![Action::Create { restarts: 4 }]);
    }

    // Regression: the exit used to be counted only when its removal was executed, after
    // the same pass had already created the replacement, so every other replacement
    // skipped its back-off.
    #[test]
    fn the_pass_that_removes_a_crashed_replica_already_backs_its_line_off() {
        let mut w = World::new(testing::spec().replicas(1).build());
        let policy = BackoffPolicy {
            base: Duration::from_secs(1),
            ..BackoffPolicy::default()
        };
        let mut delays = Vec::new();
        for n in 1..=4u8 {
            // The line's current replica crashes.
            w.replicas = vec![exited(n, ExitCause::Own)];
            let verdicts = record(&mut w, &policy);
            let [Verdict::Crash { restarts, delay }] = verdicts[..] else {
                panic!("{verdicts:?}");
            };
            assert_eq!(restarts, u32::from(n));
            delays.push(delay);
            // Counted once, however many passes see it.
            assert!(record(&mut w, &policy).is_empty());
            let plan = w.plan();
            assert_eq!(
                creates(&plan),
                usize::from(delay.is_zero()),
                "pass {n}: {:?}",
                plan.actions
            );
            // Once the back-off is over, the replacement joins the line.
            w.at += delay;
            let plan = w.plan();
            assert_eq!(
                plan.actions.last(),
                Some(&Action::Create {
                    restarts: u32::from(n)
                })
            );
            apply_creates(&mut w, &plan, n + 1);
        }
        assert_eq!(
            delays,
            [0, 1, 2, 4].map(Duration::from_secs).to_vec(),
            "0 for the first crash, then the base doubling"
        );
    }

    #[test]
    fn a_new_template_is_not_held_back_by_the_old_ones_crash_loop() {
        let mut w = World::new(testing::spec().replicas(2).build());
        let mut old = exited(1, ExitCause::Own);
        old.template_hash = "old".into();
        w.memory.lines.restarts.insert("w-00001".into(), 5);
        w.replicas = vec![old];
        assert!(matches!(
            record(&mut w, &BackoffPolicy::default())[..],
            [Verdict::Crash { .. }]
        ));
        assert_eq!(creates(&w.plan()), 2);
    }

    #[test]
    fn a_replica_that_lost_its_network_address_is_replaced() {
        let mut w = World::new(testing::spec().replicas(2).lb().build())
            .with_replicas(1..=2, HASH)
            .with_slots(vec![serving_slot(1, 1), serving_slot(2, 2)]);
        w.replicas[1].ips.clear();
        let plan = w.plan();
        assert!(
            plan.actions.contains(&Action::Release {
                slot: "web2".into()
            }),
            "out of rotation first"
        );
        assert_eq!(removed(&plan), vec!["w-00002"]);
        assert_eq!(creates(&plan), 1);
        // A replica just created may not be listed with its address yet.
        let mut young = World::new(testing::spec().replicas(1).build());
        let mut r = replica(1, HASH);
        r.ips.clear();
        r.created_at_ns = young.now().unix_ns - 500_000_000;
        young.replicas = vec![r];
        assert!(removed(&young.plan()).is_empty());
    }

    #[test]
    fn a_paused_replica_leaves_rotation_and_comes_back_once_it_answers() {
        let mut w = World::new(testing::spec().replicas(2).lb().build())
            .with_replicas(1..=2, HASH)
            .with_slots(vec![serving_slot(1, 1), serving_slot(2, 2)]);
        w.replicas[1].state = ContainerState::Paused;
        let plan = w.plan();
        assert_eq!(
            plan.actions,
            vec![Action::Suspend {
                id: ContainerId("id02".into()),
                slot: "web2".into()
            }]
        );
        assert_eq!(plan.counts.ready, 1);
        // Suspended: maintenance, weight 0, still assigned: the warming path enables it
        // once it runs and answers again.
        w.backend.as_mut().expect("backend").slots[1] = warming_slot(2, 2);
        w.replicas[1].state = ContainerState::Running;
        w.answering.insert(ContainerId("id02".into()));
        assert_eq!(
            w.plan().actions,
            vec![Action::Enable {
                id: ContainerId("id02".into()),
                slot: "web2".into()
            }]
        );
    }
}
