//! Step 1 of a pass: the listed containers sorted into live replicas, work in flight
//! and containers to remove, and the exits seen for the first time judged. Pure.

use crate::model::replica::{ContainerState, Replica};

use super::crash_loop::{self, ExitRecord, Vacancy};
use super::{age_of, Action, Input, JudgedExit, Memory, Phase, Plan, RemoveReason};
use super::{ACTIVE_REQUEUE, ADDRESS_GRACE, CREATE_EXPECTATION_TIMEOUT};

/// What step 1 found.
pub struct Sorted<'a> {
    /// Running (or paused) replicas with their address, not being removed.
    pub live: Vec<&'a Replica>,
    /// Containers being removed (by dockscale or the engine).
    pub removing: u32,
    /// Creates in flight that Docker does not list as live yet (expectations).
    pub pending: usize,
    /// Of those, creates of the current template.
    pub pending_new: u32,
    /// Every create call in flight, listed or not: what the parallelism bound counts.
    pub in_flight: usize,
    /// Exited containers whose cause is not known yet (their `die` event is on its
    /// way), of the current template and of others: they hold their place until the
    /// verdict, so that their line's back-off applies to their replacement.
    pub awaiting_new: u32,
    pub awaiting_old: u32,
    /// The crash-loop vacancies, with the ones this pass's crashes left.
    pub vacant: Vec<Vacancy>,
}

impl Sorted<'_> {
    pub fn awaiting(&self) -> u32 {
        self.awaiting_new + self.awaiting_old
    }
}

pub fn classify<'a>(input: &Input<'a>, memory: &Memory, plan: &mut Plan) -> Sorted<'a> {
    let now = input.now;
    let network = input.spec.network.as_str();
    let mut sorted = Sorted {
        live: Vec::new(),
        removing: 0,
        pending: 0,
        pending_new: 0,
        in_flight: 0,
        awaiting_new: 0,
        awaiting_old: 0,
        vacant: memory.vacant.clone(),
    };
    let remove = |plan: &mut Plan, r: &Replica, reason| {
        plan.actions.push(Action::Remove {
            id: r.id.clone(),
            name: r.name.clone(),
            reason,
        });
    };
    for r in &input.replicas {
        if memory.is_stopping(&r.name) {
            sorted.removing += 1;
            continue;
        }
        // A stop that failed is tried again once its back-off is over, not at once.
        if let Some(at) = memory.stop_retry_at(&r.name).filter(|at| *at > now.instant) {
            sorted.removing += 1;
            plan.requeue(at - now.instant);
            continue;
        }
        let age = age_of(r, now);
        match r.state {
            ContainerState::Running | ContainerState::Paused
                if r.ip_on(network).is_none() && age >= ADDRESS_GRACE =>
            {
                remove(plan, r, RemoveReason::NetworkLost);
            }
            ContainerState::Running | ContainerState::Paused => sorted.live.push(r),
            ContainerState::Removing => sorted.removing += 1,
            ContainerState::Created | ContainerState::Restarting if memory.is_creating(&r.name) => {
            }
            ContainerState::Created | ContainerState::Restarting => {
                remove(plan, r, RemoveReason::NeverStarted);
            }
            ContainerState::Exited | ContainerState::Dead => match r.exit_cause {
                None => {
                    if r.template_hash == input.template_hash {
                        sorted.awaiting_new += 1;
                    } else {
                        sorted.awaiting_old += 1;
                    }
                    plan.requeue(ACTIVE_REQUEUE);
                }
                Some(cause) => {
                    if !memory.exit_judged(&r.name) {
                        judge_exit(input, memory, r, cause, &mut sorted, plan);
                    }
                    remove(
                        plan,
                        r,
                        RemoveReason::Exited {
                            code: r.exit_code(),
                        },
                    );
                }
            },
        }
    }

    count_creates(input, memory, &mut sorted, plan);

    // What dockscale remembers of containers that are gone (removed from outside, or
    // never listed again) is forgotten; creates and removals in flight end with their
    // completion.
    for (name, tracked) in &memory.replicas {
        let in_flight = matches!(
            tracked.phase,
            Phase::Creating { .. } | Phase::Stopping | Phase::StopFailed { .. }
        );
        if !in_flight && !input.replicas.iter().any(|r| &r.name == name) {
            plan.forget.push(name.clone());
        }
    }
    sorted
}

/// Creates in flight. The executor wakes the service when a create finishes, so they
/// need no polling (which would only compete with the engine for its list calls); an
/// expectation that never resolves is looked at again when it expires.
fn count_creates(input: &Input<'_>, memory: &Memory, sorted: &mut Sorted<'_>, plan: &mut Plan) {
    let now = input.now;
    let mut oldest = None;
    for (name, since, hash) in memory.creating() {
        sorted.in_flight += 1;
        let expired = now.instant.saturating_duration_since(since) >= CREATE_EXPECTATION_TIMEOUT;
        if expired || sorted.live.iter().any(|r| r.name == name) {
            continue;
        }
        sorted.pending += 1;
        if hash == input.template_hash {
            sorted.pending_new += 1;
        }
        oldest = Some(oldest.map_or(since, |o: tokio::time::Instant| o.min(since)));
    }
    if let Some(oldest) = oldest {
        plan.requeue((oldest + CREATE_EXPECTATION_TIMEOUT).saturating_duration_since(now.instant));
    }
}

/// An exit seen for the first time, judged before the plan goes on, so that the pass
/// removing a crashed replica already holds its line's replacement back.
fn judge_exit(
    input: &Input<'_>,
    memory: &Memory,
    r: &Replica,
    cause: crate::model::replica::ExitCause,
    sorted: &mut Sorted<'_>,
    plan: &mut Plan,
) {
    let exit = ExitRecord {
        name: r.name.clone(),
        code: r.exit_code(),
        cause,
        ran_for: age_of(r, input.now),
    };
    let (verdict, vacancy) = crash_loop::judge(
        &exit,
        memory.restarts(&r.name),
        &r.template_hash,
        input.now.instant,
        input.backoff,
    );
    sorted.vacant.extend(vacancy);
    plan.exits.push(JudgedExit { exit, verdict });
}
