//! Replicas and backend slots (steps 2 and 8 of a pass): which slot serves which
//! replica, where each live replica stands with the load balancer, and bringing the
//! ones that are not in rotation yet into it. Pure.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddrV4;
use std::time::Duration;

use crate::model::backend::{Admin, Backend, Slot};
use crate::model::replica::{ContainerId, ContainerState, Health, Replica};
use crate::spec::ServiceSpec;

use super::{Action, Input, Memory, Note, Plan, ACTIVE_REQUEUE};

/// Where a live replica stands with the load balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serving<'s> {
    /// No load balancer: running (and healthy, with a health check) means ready.
    Plain,
    /// No load balancer, and its container health check does not pass (yet).
    Unready,
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
    /// In rotation, but Docker's health check reports the container unhealthy.
    HealthFailing(&'s Slot),
}

impl Serving<'_> {
    pub fn is_ready(self) -> bool {
        matches!(self, Serving::Plain | Serving::Ready(_))
    }

    /// Removal order among replicas of equal template: not serving first.
    pub fn removal_rank(self) -> u8 {
        match self {
            Serving::Unassigned | Serving::Unknown | Serving::Unready => 0,
            Serving::Warming(_) | Serving::Held(_) | Serving::Paused(_) => 1,
            Serving::Unhealthy(_) | Serving::HealthFailing(_) => 2,
            Serving::Draining(_) => 3,
            Serving::Plain | Serving::Ready(_) => 4,
        }
    }
}

impl Serving<'_> {
    /// A word for status.
    pub fn label(self) -> &'static str {
        match self {
            Serving::Plain => "running",
            Serving::Unready => "not ready",
            Serving::Unknown => "unknown",
            Serving::Unassigned => "starting",
            Serving::Warming(_) => "warming",
            Serving::Ready(_) => "serving",
            Serving::Unhealthy(_) => "down",
            Serving::Held(_) => "held",
            Serving::Draining(_) => "draining",
            Serving::Paused(_) => "paused",
            Serving::HealthFailing(_) => "unhealthy",
        }
    }
}

/// A live replica with where it stands.
pub struct Live<'a, 's> {
    pub replica: &'a Replica,
    pub serving: Serving<'s>,
    /// Of the current template.
    pub updated: bool,
}

impl Live<'_, '_> {
    pub fn view(&self) -> super::ReplicaView {
        super::ReplicaView {
            name: self.replica.name.clone(),
            id: self.replica.id.clone(),
            serving: self.serving.label(),
            health: self.replica.health,
            updated: self.updated,
        }
    }
}

/// Replicas paired with slots, and the free slots.
#[derive(Default)]
pub struct Matched<'s> {
    pub slot_of: HashMap<ContainerId, &'s Slot>,
    pub free: Vec<&'s Slot>,
}

/// The replica's address on the service network, at the template's port.
fn addr_of(spec: &ServiceSpec, r: &Replica) -> Option<SocketAddrV4> {
    let port = spec.template.port.unwrap_or(0);
    r.ip_on(spec.network.as_str())
        .map(|ip| SocketAddrV4::new(ip, port))
}

/// Step 2: pairs live replicas with the slots pointing at them. A slot in rotation
/// that no live replica has the address of is cut at once; two slots for one replica
/// keep the one most in service.
pub fn match_slots<'s>(input: &Input<'s>, live: &[&Replica], plan: &mut Plan) -> Matched<'s> {
    let mut matched = Matched::default();
    let (Some(_), Some(backend)) = (input.spec.load_balancer.as_ref(), input.backend) else {
        return matched;
    };
    let by_addr: HashMap<SocketAddrV4, &Replica> = live
        .iter()
        .filter_map(|r| Some((addr_of(input.spec, r)?, *r)))
        .collect();
    let release = |plan: &mut Plan, slot: &Slot| {
        plan.actions.push(Action::Release {
            slot: slot.name.clone(),
        });
    };
    for slot in &backend.slots {
        match slot.addr.and_then(|a| by_addr.get(&a)) {
            Some(r) => match matched.slot_of.get(&r.id) {
                Some(kept) if admin_rank(kept.admin) >= admin_rank(slot.admin) => {
                    release(plan, slot);
                }
                Some(kept) => {
                    release(plan, kept);
                    matched.slot_of.insert(r.id.clone(), slot);
                }
                None => {
                    matched.slot_of.insert(r.id.clone(), slot);
                }
            },
            // In rotation, but no live replica has that address: a replica that died,
            // was cut from its network, or drift. Out of rotation at once, and its
            // connections cut.
            None if slot.admin != Admin::Maint => match slot.addr {
                Some(addr) => plan.actions.push(Action::Cut {
                    slot: slot.name.clone(),
                    addr,
                }),
                None => release(plan, slot),
            },
            None => matched.free.push(slot),
        }
    }
    matched
}

/// Where each live replica stands.
pub fn lives<'a, 's>(
    input: &Input<'_>,
    memory: &Memory,
    live: &[&'a Replica],
    matched: &Matched<'s>,
) -> Vec<Live<'a, 's>> {
    let lb = input.spec.load_balancer.as_ref();
    live.iter()
        .map(|r| {
            let serving = match (lb, input.backend) {
                (None, _) if r.health_allows_traffic() => Serving::Plain,
                (None, _) => Serving::Unready,
                (Some(_), None) => Serving::Unknown,
                (Some(_), Some(_)) => match matched.slot_of.get(&r.id) {
                    None => Serving::Unassigned,
                    Some(slot) => match slot.admin {
                        Admin::Maint if slot.weight == 0 => Serving::Warming(slot),
                        Admin::Maint => Serving::Held(slot),
                        Admin::Drain if memory.draining_since(&r.name).is_some() => {
                            Serving::Draining(slot)
                        }
                        Admin::Drain => Serving::Held(slot),
                        Admin::Ready if r.state == ContainerState::Paused => Serving::Paused(slot),
                        Admin::Ready if r.health == Some(Health::Unhealthy) => {
                            Serving::HealthFailing(slot)
                        }
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
        .collect()
}

/// Step 8: the replicas that stay are brought into rotation: a free slot for each
/// unassigned one, enabled once its port answers (in the same pass when it already
/// does), options re-applied when they drifted, a paused one suspended, an operator's
/// hold reported once.
pub fn bring_in(
    input: &Input<'_>,
    memory: &Memory,
    kept: &[&Live],
    free: Vec<&Slot>,
    plan: &mut Plan,
) {
    let (Some(lb), Some(_)) = (input.spec.load_balancer.as_ref(), input.backend) else {
        return;
    };
    let mut free = free.into_iter();
    let mut waiting_for_slot = 0usize;
    // Enabled only once its port (or HTTP check) answers and Docker's health check,
    // if it has one, reports it healthy.
    let answering =
        |l: &Live| input.answering.contains(&l.replica.id) && l.replica.health_allows_traffic();
    for l in kept {
        let id = l.replica.id.clone();
        match l.serving {
            Serving::Unassigned => match (addr_of(input.spec, l.replica), free.next()) {
                (Some(addr), Some(slot)) => {
                    plan.actions.push(Action::AssignSlot {
                        id: id.clone(),
                        slot: slot.name.clone(),
                        addr,
                    });
                    // It enters in maintenance either way; if its port already
                    // answers, it is enabled right after, in this pass.
                    if answering(l) {
                        plan.actions.push(Action::Enable {
                            id,
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
                if answering(l) {
                    plan.actions.push(Action::Enable {
                        id,
                        slot: slot.name.clone(),
                    });
                }
                // A replica whose health check does not pass yet is woken by Docker's
                // `health_status` event, not polled.
                if l.replica.health_allows_traffic() {
                    plan.requeue(ACTIVE_REQUEUE);
                }
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
                if !memory.hold_reported(&l.replica.name) {
                    plan.notes.push(Note::OperatorHold {
                        name: l.replica.name.clone(),
                        slot: slot.name.clone(),
                        admin: slot.admin,
                    });
                }
            }
            // Out of rotation at once; back in once it runs, is healthy and answers.
            Serving::Paused(slot) | Serving::HealthFailing(slot) => {
                plan.actions.push(Action::Suspend {
                    id,
                    slot: slot.name.clone(),
                });
            }
            Serving::Plain | Serving::Unready | Serving::Unknown | Serving::Draining(_) => {}
        }
    }
    if waiting_for_slot > 0 {
        plan.notes.push(Note::NoFreeSlot {
            backend: lb.backend.to_string(),
            waiting: waiting_for_slot,
        });
    }
}

/// Ready first, then drain, then maintenance.
fn admin_rank(admin: Admin) -> u8 {
    match admin {
        Admin::Ready => 2,
        Admin::Drain => 1,
        Admin::Maint => 0,
    }
}

/// The replicas whose port should be probed before this pass is planned: those whose
/// slot is assigned and waiting to be enabled, and those not in the backend yet (a
/// replica that already answers is enabled in the same pass that gives it a slot).
pub fn probe_targets(
    spec: &ServiceSpec,
    replicas: &[&Replica],
    backend: &Backend,
) -> Vec<(ContainerId, SocketAddrV4)> {
    if spec.template.port.is_none() {
        return Vec::new();
    }
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
            let addr = addr_of(spec, r)?;
            (!placed.contains(&addr)).then(|| (r.id.clone(), addr))
        })
        .collect()
}
