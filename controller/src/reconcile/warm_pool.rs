//! The warm pool of a service (`autoscale.warmPool`), as a pure step of the pass.
//!
//! A warm container is created from the current template under a warm name
//! (`<service>-warm-<5>`, see [`crate::model::replica`]), started, probed until its port
//! answers, then paused: no CPU, its memory kept. It is outside rotation and outside
//! every replica count (the pass hands the planner's other steps the replicas only).
//! A Create of the main plan is replaced by a [`Action::Take`] of a paused container of
//! the current template: unpaused and renamed to a replica name, it then follows the
//! path of any new replica (slot assigned in maintenance, enabled once its port
//! answers, UP). The pool is refilled behind the takes, within the same bound on
//! Docker calls in flight as creates, never while the image or the engine holds
//! creates back, and with a back-off after warm containers that exit, fail to start or
//! do not answer within the rollout's `progressDeadline` (never a tight loop). Warm containers of an older template are removed and
//! replaced; beyond the size, the warming ones go first, then the newest.
//!
//! This module owns [`PoolMemory`] (what the pool has in flight) and the rules above.
//! It performs no I/O and reads no clock; the executor carries its actions out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use std::time::Duration;

use tokio::time::Instant;

use super::crash_loop::BackoffPolicy;
use super::{age_of, Action, Input, Memory, Note, Plan, ACTIVE_REQUEUE, ADDRESS_GRACE};
use crate::model::replica::{taken_name, ContainerId, ContainerState, Replica};
use crate::spec::ServiceSpec;

/// Why a warm container is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarmRemoval {
    /// Of an older template: replaced by one of the current template.
    Outdated,
    /// More warm containers than the pool's size.
    Excess,
    /// It exited, never ran, or lost its address: refilled after a back-off.
    Broken,
    /// Running, but its port did not answer within the rollout's `progressDeadline`
    /// (the time any new replica of the service is given to become ready): refilled
    /// after a back-off, like a broken one.
    NeverAnswered,
    /// A take of it failed half-way: it is not trusted to be taken again.
    Spoiled,
}

impl WarmRemoval {
    /// Whether the pool failed to warm it: its removal counts toward the refill's
    /// back-off.
    pub fn is_failure(self) -> bool {
        matches!(self, WarmRemoval::Broken | WarmRemoval::NeverAnswered)
    }

    /// A short, bounded label for metrics and events.
    pub fn label(self) -> &'static str {
        match self {
            WarmRemoval::Outdated => "outdated",
            WarmRemoval::Excess => "excess",
            WarmRemoval::Broken => "broken",
            WarmRemoval::NeverAnswered => "never_answered",
            WarmRemoval::Spoiled => "spoiled",
        }
    }
}

/// What is in flight for one warm container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    /// Its pause: still the pool's, warming until it is done.
    Pausing,
    /// Its take: a replica already, as far as the pool goes.
    Taking,
    /// Its removal.
    Removing,
}

/// The pool after a pass's observation, for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolCounts {
    /// The size the spec asks for (0 without a pool, or while the service is deleted).
    pub size: u32,
    /// Paused warm containers of the current template, ready to be taken.
    pub ready: u32,
    /// Warm containers being created, started or waiting for their port to answer.
    pub warming: u32,
}

/// What the pool has in flight, kept between passes. Changed by the executor as it
/// carries out the pool's actions and as they complete; read by [`step`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolMemory {
    /// Warm creates in flight, by name, since when.
    pub creating: BTreeMap<String, Instant>,
    /// Warm containers with a pause, a take or a removal in flight.
    pub busy: BTreeMap<ContainerId, Busy>,
    /// Warm containers whose take failed: removed, never taken again.
    pub spoiled: BTreeSet<ContainerId>,
    /// Warm containers seen broken (counted once each toward the back-off).
    pub broken_seen: BTreeSet<ContainerId>,
    /// Warm containers broken or failed to create in a row; reset by a pause.
    pub failures: u32,
    /// No warm create before this (the back-off after `failures`).
    pub refill_after: Option<Instant>,
}

impl PoolMemory {
    /// A warm container broke or a warm create failed: the refill backs off.
    pub fn failed(&mut self, now: Instant, policy: &BackoffPolicy) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = policy.delay(self.failures);
        self.refill_after = Some(now + delay);
        delay
    }

    /// Forgets what it kept of warm containers that are gone (removed from outside,
    /// or taken and renamed): only those still listed are kept.
    pub fn forget_gone(&mut self, listed: &BTreeSet<&ContainerId>) {
        self.spoiled.retain(|id| listed.contains(id));
        self.broken_seen.retain(|id| listed.contains(id));
    }

    /// A warm container answered and was paused: the pool works, the back-off ends.
    pub fn paused(&mut self, id: &ContainerId) {
        self.busy.remove(id);
        self.failures = 0;
        self.refill_after = None;
    }
}

/// The warm containers to probe: running, with an address, no pause in flight.
pub fn probe_targets(spec: &ServiceSpec, warm: &[&Replica]) -> Vec<(ContainerId, SocketAddrV4)> {
    let Some(port) = spec.template.port else {
        return Vec::new();
    };
    let network = spec.network.as_str();
    warm.iter()
        .filter(|r| r.state == ContainerState::Running)
        .filter_map(|r| Some((r.id.clone(), SocketAddrV4::new(r.ip_on(network)?, port))))
        .collect()
}

/// The pool's step of a pass: takes in place of the plan's creates, pauses, removals
/// and refills, appended to `plan`, and the pool's counts.
pub fn step(input: &Input<'_>, memory: &Memory, plan: &mut Plan) {
    let mut pool = sort_pool(input, &memory.warm, plan);
    let taken = take(&pool.ready, plan);
    pool.ready.drain(..taken);
    remove_excess(input, &memory.warm, &mut pool, plan);
    pause_answering(input, &memory.warm, &pool, plan);
    let have = pool.ready.len() + pool.warming.len() + pool.creating;
    refill(input, memory, have, pool.newly_broken, plan);
    plan.warm = PoolCounts {
        size: input.warm_size,
        ready: pool.ready.len() as u32,
        warming: (pool.warming.len() + pool.creating) as u32,
    };
}

/// The pool as a pass finds it.
struct Sorted<'a> {
    /// Paused, of the current template: to be taken; the longest warm first.
    ready: Vec<&'a Replica>,
    /// Running until its port answers (or its pause is in flight); the oldest first.
    warming: Vec<&'a Replica>,
    /// Warm creates in flight whose container is not listed yet.
    creating: usize,
    /// Broken ones not counted yet: their back-off applies to this pass's refills.
    newly_broken: u32,
}

/// Sorts the listed warm containers: ready, warming, or removed (with why); those
/// with a take or a removal in flight are no longer the pool's.
fn sort_pool<'a>(input: &Input<'a>, pool: &PoolMemory, plan: &mut Plan) -> Sorted<'a> {
    let now = input.now;
    let network = input.spec.network.as_str();
    let mut sorted = Sorted {
        ready: Vec::new(),
        warming: Vec::new(),
        creating: pool
            .creating
            .keys()
            .filter(|name| !input.warm.iter().any(|r| &&r.name == name))
            .count(),
        newly_broken: 0,
    };
    for r in &input.warm {
        match pool.busy.get(&r.id) {
            // A pause in flight (the container may be listed paused already): the
            // pool's, warming still.
            Some(Busy::Pausing) => {
                sorted.warming.push(r);
                continue;
            }
            // A take or a removal in flight: no longer the pool's.
            Some(Busy::Taking | Busy::Removing) => continue,
            None => {}
        }
        let broken = match r.state {
            ContainerState::Exited | ContainerState::Dead => true,
            ContainerState::Created | ContainerState::Restarting => {
                !pool.creating.contains_key(&r.name)
            }
            ContainerState::Running | ContainerState::Paused => {
                r.ip_on(network).is_none() && age_of(r, now) >= ADDRESS_GRACE
            }
            ContainerState::Removing => continue,
        };
        let silent = r.state == ContainerState::Running
            && !input.answering.contains(&r.id)
            && age_of(r, now) >= input.spec.rollout.progress_deadline.get();
        let reason = if broken {
            Some(WarmRemoval::Broken)
        } else if silent {
            Some(WarmRemoval::NeverAnswered)
        } else if pool.spoiled.contains(&r.id) {
            Some(WarmRemoval::Spoiled)
        } else if r.template_hash != input.template_hash {
            Some(WarmRemoval::Outdated)
        } else {
            None
        };
        if (broken || silent) && !pool.broken_seen.contains(&r.id) {
            sorted.newly_broken += 1;
        }
        if let Some(reason) = reason {
            plan.actions.push(Action::RemoveWarm {
                id: r.id.clone(),
                name: r.name.clone(),
                reason,
            });
            continue;
        }
        match r.state {
            ContainerState::Paused => sorted.ready.push(r),
            ContainerState::Running => sorted.warming.push(r),
            // Created, its create call in flight.
            _ => {}
        }
    }
    // The longest warm first: taken, or kept when the pool shrinks.
    sorted
        .ready
        .sort_by_key(|r| (r.created_at_ns, r.name.clone()));
    sorted
        .warming
        .sort_by_key(|r| (r.created_at_ns, r.name.clone()));
    sorted
}

/// Takes in place of the plan's creates, while paused containers last; how many.
fn take(ready: &[&Replica], plan: &mut Plan) -> usize {
    let mut taken = 0;
    for action in plan.actions.iter_mut() {
        let Action::Create { restarts } = *action else {
            continue;
        };
        let Some(r) = ready.get(taken) else {
            break;
        };
        let Some(replica) = taken_name(&r.service, &r.name) else {
            continue;
        };
        *action = Action::Take {
            id: r.id.clone(),
            warm: r.name.clone(),
            replica,
            restarts,
        };
        taken += 1;
    }
    taken
}

/// Beyond the size: the warming ones go first (they still use CPU), then the newest.
/// A create in flight counts until its container is listed (then it is counted as
/// listed).
fn remove_excess(input: &Input<'_>, pool: &PoolMemory, sorted: &mut Sorted<'_>, plan: &mut Plan) {
    let have = sorted.ready.len() + sorted.warming.len() + sorted.creating;
    let mut over = have.saturating_sub(input.warm_size as usize);
    let mut removed = BTreeSet::new();
    let candidates = sorted
        .warming
        .iter()
        .rev()
        .filter(|r| !pool.busy.contains_key(&r.id))
        .chain(sorted.ready.iter().rev());
    for r in candidates {
        if over == 0 {
            break;
        }
        over -= 1;
        removed.insert(r.id.clone());
        plan.actions.push(Action::RemoveWarm {
            id: r.id.clone(),
            name: r.name.clone(),
            reason: WarmRemoval::Excess,
        });
    }
    sorted.ready.retain(|r| !removed.contains(&r.id));
    sorted.warming.retain(|r| !removed.contains(&r.id));
}

/// Pauses of the warming ones whose port answered; the others are polled.
fn pause_answering(input: &Input<'_>, pool: &PoolMemory, sorted: &Sorted<'_>, plan: &mut Plan) {
    for r in &sorted.warming {
        if pool.busy.contains_key(&r.id) {
            continue;
        }
        if input.answering.contains(&r.id) {
            plan.actions.push(Action::Pause {
                id: r.id.clone(),
                name: r.name.clone(),
            });
        } else {
            plan.requeue(ACTIVE_REQUEUE);
        }
    }
}

/// Refills up to the size, after the plan's own creates and within the bound on
/// calls in flight; held by the back-off after failures (this pass's broken ones
/// included).
fn refill(input: &Input<'_>, memory: &Memory, have: usize, newly_broken: u32, plan: &mut Plan) {
    let pool = &memory.warm;
    let missing = (input.warm_size as usize).saturating_sub(have);
    if missing == 0 || !refill_allowed(input, memory, plan) {
        return;
    }
    let in_flight = memory.creating().count()
        + pool.creating.len()
        + plan
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Create { .. } | Action::Take { .. }))
            .count();
    let room = input.limits.max_parallel.saturating_sub(in_flight);
    let now = input.now.instant;
    let refill_after = match newly_broken {
        0 => pool.refill_after,
        n => Some(now + input.backoff.delay(pool.failures.saturating_add(n))),
    };
    match refill_after.filter(|at| *at > now) {
        Some(at) => plan.requeue(at - now),
        None => {
            for _ in 0..missing.min(room) {
                plan.actions.push(Action::CreateWarm);
            }
        }
    }
}

/// Whether warm creates may start: not while the image is missing or being pulled,
/// nor while creates are held after a failure every create would share.
fn refill_allowed(input: &Input<'_>, memory: &Memory, plan: &Plan) -> bool {
    let image_waits = plan
        .actions
        .iter()
        .any(|a| matches!(a, Action::Pull { .. }))
        || plan.notes.iter().any(|n| {
            matches!(
                n,
                Note::ImageMissing { .. }
                    | Note::ImagePulling { .. }
                    | Note::ImagePullBackOff { .. }
            )
        });
    let held = memory
        .creates_held_until
        .is_some_and(|at| at > input.now.instant);
    input.image_present && !image_waits && !held
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_kept_of_a_warm_container_goes_with_it() {
        let (a, b) = (ContainerId("a".into()), ContainerId("b".into()));
        let mut pool = PoolMemory::default();
        pool.spoiled.insert(a.clone());
        pool.broken_seen.insert(b.clone());
        pool.forget_gone(&BTreeSet::from([&a]));
        assert_eq!(pool.spoiled, BTreeSet::from([a]));
        assert!(pool.broken_seen.is_empty());
    }

    #[test]
    fn the_refill_backs_off_after_failures_and_a_pause_ends_it() {
        let policy = BackoffPolicy::default();
        let now = Instant::now();
        let mut pool = PoolMemory::default();
        assert_eq!(
            pool.failed(now, &policy),
            Duration::ZERO,
            "the first at once"
        );
        assert_eq!(pool.failed(now, &policy), policy.base);
        assert_eq!(pool.failed(now, &policy), policy.base * 2);
        assert_eq!(pool.refill_after, Some(now + policy.base * 2));
        let id = ContainerId("a".into());
        pool.busy.insert(id.clone(), Busy::Pausing);
        pool.paused(&id);
        assert_eq!((pool.failures, pool.refill_after), (0, None));
        assert!(pool.busy.is_empty());
    }
}
