//! Replicas and backend slots (steps 2 and 8 of a pass): which slot serves which
//! replica or member, where each stands with the load balancer, and bringing the ones
//! that are not in rotation yet into it. Pure.
//!
//! Members (hand-started containers labelled `dockscale.join`) take free slots the
//! way replicas do, after them: assigned in maintenance with weight 0, enabled once
//! their port answers, cut when they are gone. They are never drained: nothing here
//! or elsewhere in the planner ever removes one.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddrV4;
use std::time::Duration;

use crate::model::backend::{Admin, Backend, Slot};
use crate::model::member::Member;
use crate::model::replica::{ContainerId, ContainerState, Health, Replica};
use crate::spec::ServiceSpec;

use super::{Action, Input, MemberView, Memory, Note, Plan, ACTIVE_REQUEUE};

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

impl<'s> Serving<'s> {
    /// The slot it holds, if any.
    pub fn slot(self) -> Option<&'s Slot> {
        match self {
            Serving::Plain | Serving::Unready | Serving::Unknown | Serving::Unassigned => None,
            Serving::Warming(s)
            | Serving::Ready(s)
            | Serving::Unhealthy(s)
            | Serving::Held(s)
            | Serving::Draining(s)
            | Serving::Paused(s)
            | Serving::HealthFailing(s) => Some(s),
        }
    }

    /// Enabled in the backend (HAProxy sends it requests while its checks pass).
    pub fn in_rotation(self) -> bool {
        matches!(self, Serving::Ready(_) | Serving::Unhealthy(_))
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
            slot: self.serving.slot().map(|s| s.name.clone()),
        }
    }
}

/// A member with where it stands: on the service network and running, or not.
pub struct MemberLive<'a, 's> {
    pub member: &'a Member,
    /// `None` for a member that is not running on the service network (stopped, or on
    /// another network): it holds no slot.
    pub serving: Option<Serving<'s>>,
}

impl MemberLive<'_, '_> {
    pub fn view(&self, network: &str) -> MemberView {
        let serving = match (self.serving, self.member.is_running()) {
            (Some(s), _) => s.label(),
            (None, true) if self.member.ip_on(network).is_none() => "wrong network",
            (None, _) => "stopped",
        };
        MemberView {
            name: self.member.name.clone(),
            id: self.member.id.clone(),
            state: self.member.state,
            serving,
            in_rotation: self.serving.is_some_and(Serving::in_rotation),
            slot: self.serving.and_then(Serving::slot).map(|s| s.name.clone()),
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

/// A running member's address on the service network, at the template's port: a
/// member serves what the service's replicas serve, on the same port.
fn member_addr(spec: &ServiceSpec, m: &Member) -> Option<SocketAddrV4> {
    let port = spec.template.port.unwrap_or(0);
    m.ip_on(spec.network.as_str())
        .filter(|_| matches!(m.state, ContainerState::Running | ContainerState::Paused))
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
    let by_addr: HashMap<SocketAddrV4, &ContainerId> = live
        .iter()
        .filter_map(|r| Some((addr_of(input.spec, r)?, &r.id)))
        .chain(
            input
                .members
                .iter()
                .filter_map(|m| Some((member_addr(input.spec, m)?, &m.id))),
        )
        .collect();
    let release = |plan: &mut Plan, slot: &Slot| {
        plan.actions.push(Action::Release {
            slot: slot.name.clone(),
        });
    };
    for slot in &backend.slots {
        match slot.addr.and_then(|a| by_addr.get(&a)) {
            Some(id) => match matched.slot_of.get(*id) {
                Some(kept) if admin_rank(kept.admin) >= admin_rank(slot.admin) => {
                    release(plan, slot);
                }
                Some(kept) => {
                    release(plan, kept);
                    matched.slot_of.insert((*id).clone(), slot);
                }
                None => {
                    matched.slot_of.insert((*id).clone(), slot);
                }
            },
            // In rotation, but no live replica or running member has that address: one
            // that died, was cut from its network, or drift. Out of rotation at once,
            // and its connections cut.
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
    live.iter()
        .map(|r| {
            let container = Standing {
                id: &r.id,
                state: r.state,
                health: r.health,
                draining: memory.draining_since(&r.name).is_some(),
            };
            Live {
                replica: r,
                serving: container.serving(input, matched),
                updated: r.template_hash == input.template_hash,
            }
        })
        .collect()
}

/// Where each member stands: only one running on the service network holds a slot.
pub fn members<'a, 's>(input: &Input<'a>, matched: &Matched<'s>) -> Vec<MemberLive<'a, 's>> {
    input
        .members
        .iter()
        .map(|m| {
            let on_network = member_addr(input.spec, m).is_some();
            let container = Standing {
                id: &m.id,
                state: m.state,
                health: m.health,
                // dockscale never drains a member: a drain is someone else's.
                draining: false,
            };
            MemberLive {
                member: m,
                serving: on_network.then(|| container.serving(input, matched)),
            }
        })
        .collect()
}

/// What the serving of a replica or a member is judged from.
struct Standing<'c> {
    id: &'c ContainerId,
    state: ContainerState,
    health: Option<Health>,
    /// dockscale is draining it.
    draining: bool,
}

impl Standing<'_> {
    fn serving<'s>(&self, input: &Input<'_>, matched: &Matched<'s>) -> Serving<'s> {
        let health_ok = self.health.is_none_or(|h| h == Health::Healthy);
        match (input.spec.load_balancer.as_ref(), input.backend) {
            (None, _) if health_ok => Serving::Plain,
            (None, _) => Serving::Unready,
            (Some(_), None) => Serving::Unknown,
            (Some(_), Some(_)) => match matched.slot_of.get(self.id) {
                None => Serving::Unassigned,
                Some(slot) => match slot.admin {
                    Admin::Maint if slot.weight == 0 => Serving::Warming(slot),
                    Admin::Maint => Serving::Held(slot),
                    Admin::Drain if self.draining => Serving::Draining(slot),
                    Admin::Drain => Serving::Held(slot),
                    Admin::Ready if self.state == ContainerState::Paused => Serving::Paused(slot),
                    Admin::Ready if self.health == Some(Health::Unhealthy) => {
                        Serving::HealthFailing(slot)
                    }
                    Admin::Ready if slot.up => Serving::Ready(slot),
                    Admin::Ready => Serving::Unhealthy(slot),
                },
            },
        }
    }
}

/// One container step 8 brings into rotation: a replica that stays, or a member.
struct Candidate<'c, 's> {
    id: &'c ContainerId,
    name: &'c str,
    addr: Option<SocketAddrV4>,
    /// Its port (or HTTP check) answers.
    answering: bool,
    /// Its Docker health check, if it has one, passes.
    healthy: bool,
    serving: Serving<'s>,
    /// A member: an operator's hold on it is not reported (it is theirs anyway).
    member: bool,
}

/// Step 8: the replicas that stay are brought into rotation: a free slot for each
/// unassigned one, enabled once its port answers (in the same pass when it already
/// does), options re-applied when they drifted, a paused one suspended, an operator's
/// hold reported once.
pub fn bring_in(
    input: &Input<'_>,
    memory: &Memory,
    kept: &[&Live],
    members: &[MemberLive],
    free: Vec<&Slot>,
    weights: Option<(u16, u16)>,
    plan: &mut Plan,
) {
    let updated: BTreeSet<&ContainerId> = kept
        .iter()
        .filter(|l| l.updated)
        .map(|l| &l.replica.id)
        .collect();
    // The weight a slot should have: the spec's, or a canary's split.
    let weight_of = |id: &ContainerId, base: u16| match weights {
        Some((_, new)) if updated.contains(id) => new,
        Some((old, _)) => old,
        None => base,
    };
    let (Some(lb), Some(_)) = (input.spec.load_balancer.as_ref(), input.backend) else {
        return;
    };
    let replicas = kept.iter().map(|l| Candidate {
        id: &l.replica.id,
        name: &l.replica.name,
        addr: addr_of(input.spec, l.replica),
        answering: input.answering.contains(&l.replica.id),
        healthy: l.replica.health_allows_traffic(),
        serving: l.serving,
        member: false,
    });
    // Members after the replicas: a pool short of slots serves the replicas first.
    let members = members.iter().filter_map(|m| {
        Some(Candidate {
            id: &m.member.id,
            name: &m.member.name,
            addr: member_addr(input.spec, m.member),
            answering: input.answering.contains(&m.member.id),
            healthy: m.member.health_allows_traffic(),
            serving: m.serving?,
            member: true,
        })
    });
    let mut free = free.into_iter();
    let mut waiting_for_slot = 0usize;
    // Enabled only once its port (or HTTP check) answers and Docker's health check,
    // if it has one, reports it healthy.
    let answering = |l: &Candidate| l.answering && l.healthy;
    for l in replicas.chain(members) {
        let id = l.id.clone();
        match l.serving {
            Serving::Unassigned => match (l.addr, free.next()) {
                (Some(addr), Some(slot)) => {
                    plan.actions.push(Action::AssignSlot {
                        id: id.clone(),
                        slot: slot.name.clone(),
                        addr,
                    });
                    // It enters in maintenance either way; if its port already
                    // answers, it is enabled right after, in this pass.
                    if answering(&l) {
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
                if answering(&l) {
                    plan.actions.push(Action::Enable {
                        id,
                        slot: slot.name.clone(),
                    });
                }
                // A replica whose health check does not pass yet is woken by Docker's
                // `health_status` event, not polled.
                if l.healthy {
                    plan.requeue(ACTIVE_REQUEUE);
                }
            }
            Serving::Ready(slot) | Serving::Unhealthy(slot) => {
                let weight = if l.member {
                    lb.server.weight
                } else {
                    weight_of(&id, lb.server.weight)
                };
                if slot.weight != u32::from(weight) && weight == lb.server.weight {
                    plan.actions.push(Action::Reconfigure {
                        slot: slot.name.clone(),
                    });
                } else if slot.weight != u32::from(weight) {
                    plan.actions.push(Action::Weigh {
                        slot: slot.name.clone(),
                        weight,
                    });
                }
                if matches!(l.serving, Serving::Unhealthy(_)) {
                    plan.requeue(Duration::from_secs(1));
                }
            }
            Serving::Held(slot) => {
                if !l.member && !memory.hold_reported(l.name) {
                    plan.notes.push(Note::OperatorHold {
                        name: l.name.to_owned(),
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
    members: &[&Member],
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
    let replicas = replicas
        .iter()
        .filter(|r| r.state == ContainerState::Running)
        .filter_map(|r| Some((&r.id, addr_of(spec, r)?)));
    let members = members
        .iter()
        .filter(|m| m.is_running())
        .filter_map(|m| Some((&m.id, member_addr(spec, m)?)));
    replicas
        .chain(members)
        .filter(|(_, addr)| !placed.contains(addr))
        .map(|(id, addr)| (id.clone(), addr))
        .collect()
}
