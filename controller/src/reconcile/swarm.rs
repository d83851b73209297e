//! One pass of a service on Swarm, planned: what to ask of Swarm (create the service,
//! change its spec, change its count) and which tasks HAProxy sends traffic to. Pure:
//! same input, same plan.
//!
//! Swarm picks the nodes, replaces tasks that end and rolls updates; what is left to
//! dockscale is the count, the spec, and rotation: a task enters HAProxy only once it
//! runs on a ready node, has its published port, and answers there; it leaves as soon
//! as Swarm means to stop it (drained, so its requests finish), or at once when it
//! ended, failed or its node went down (cut, so the requests waiting on it are retried
//! elsewhere).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddrV4;

use crate::model::backend::{Admin, Backend, Slot};
use crate::model::replica::ContainerId;
use crate::runtime::swarm::{SwarmNode, SwarmService, SwarmTask, TaskPhase, UpdateState};

use crate::serve::status::ConditionType;
use crate::spec::ServiceSpec;

use super::{Action, Counts, RemoveReason};

/// What one pass sees of a service on Swarm.
pub struct SwarmInput<'a> {
    pub desired: u32,
    pub template_hash: &'a str,
    pub spec_hash: &'a str,
    pub service: Option<&'a SwarmService>,
    pub tasks: &'a [SwarmTask],
    pub nodes: &'a BTreeMap<String, SwarmNode>,
    /// `None` without a load balancer; `Some(None)` when the backend could not be read.
    pub backend: Option<Option<&'a Backend>>,
    /// Tasks whose address accepted a connection in this pass.
    pub answering: &'a BTreeSet<ContainerId>,
    /// A spec whose Swarm update was rolled back: not asked for again until it changes.
    pub rolled_back: Option<&'a str>,
}

/// What to ask of Swarm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceChange {
    Nothing,
    Create,
    /// A new spec (template, placement or rollout), at the desired count.
    Respec,
    /// Only the count.
    Scale {
        from: u32,
        to: u32,
    },
    /// A service of that name exists and is not dockscale's: never touched.
    NameTaken,
}

/// The plan of one pass.
#[derive(Clone, Debug, PartialEq)]
pub struct SwarmPlan {
    pub change: ServiceChange,
    pub actions: Vec<Action>,
    pub counts: Counts,
    /// Swarm's rolling update, when one is under way or just ended.
    pub update: Option<UpdateState>,
    /// The latest error Swarm gave a task of the current template, if any failed.
    pub task_error: Option<String>,
    /// Tasks in rotation (their slot enabled) after this pass's steps.
    pub serving: BTreeSet<String>,
}

/// A condition of a service on Swarm, derived from its plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmCondition {
    pub kind: ConditionType,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
    /// Worth an event when it flips.
    pub event: bool,
    pub warning: bool,
}

/// The service's conditions after a pass. Pure.
pub fn conditions(
    spec: &ServiceSpec,
    planned: &SwarmPlan,
    lb_error: Option<&str>,
) -> Vec<SwarmCondition> {
    let c = planned.counts;
    let min = c.desired.saturating_sub(spec.rollout.max_unavailable);
    let cond = |kind, status, reason, message: String| SwarmCondition {
        kind,
        status,
        reason,
        message,
        event: false,
        warning: false,
    };
    let mut out = vec![if c.ready >= min {
        cond(
            ConditionType::Available,
            true,
            "MinimumReplicasAvailable",
            format!("{} of {} tasks ready", c.ready, c.desired),
        )
    } else {
        cond(
            ConditionType::Available,
            false,
            "MinimumReplicasUnavailable",
            format!(
                "{} of {} tasks ready (at least {min} needed)",
                c.ready, c.desired
            ),
        )
    }];
    let progress = format!(
        "{} of {} tasks of the current template ready",
        c.ready_updated, c.desired
    );
    out.push(match planned.update {
        Some(UpdateState::Updating) => cond(
            ConditionType::Progressing,
            true,
            "SwarmUpdating",
            format!("Swarm's rolling update is under way: {progress}"),
        ),
        Some(UpdateState::Paused) => SwarmCondition {
            event: true,
            warning: true,
            ..cond(
                ConditionType::Progressing,
                false,
                "RolloutPaused",
                format!("Swarm paused the update: {progress}"),
            )
        },
        Some(
            UpdateState::RollbackStarted
            | UpdateState::RollbackPaused
            | UpdateState::RollbackCompleted,
        ) => SwarmCondition {
            event: true,
            warning: true,
            ..cond(
                ConditionType::Progressing,
                false,
                "RolloutRolledBack",
                "Swarm rolled the update back: new tasks failed; the previous template serves"
                    .to_owned(),
            )
        },
        _ if c.ready_updated >= c.desired && c.updated == c.current => cond(
            ConditionType::Progressing,
            true,
            "NewReplicaSetAvailable",
            progress,
        ),
        _ => cond(
            ConditionType::Progressing,
            true,
            "ReplicasUpdating",
            progress,
        ),
    });
    out.push(match (&planned.change, &planned.task_error) {
        (ServiceChange::NameTaken, _) => SwarmCondition {
            event: true,
            warning: true,
            ..cond(
                ConditionType::ReplicaFailure,
                true,
                "NameTaken",
                "a Swarm service of this name exists and is not dockscale's: it is left alone"
                    .to_owned(),
            )
        },
        (_, Some(error)) if c.ready_updated < c.desired => SwarmCondition {
            event: true,
            warning: true,
            ..cond(
                ConditionType::ReplicaFailure,
                true,
                "TaskFailed",
                format!("Swarm: {error}"),
            )
        },
        _ => cond(ConditionType::ReplicaFailure, false, "", String::new()),
    });
    if spec.load_balancer.is_some() {
        out.push(match lb_error {
            Some(e) => SwarmCondition {
                event: true,
                warning: true,
                ..cond(
                    ConditionType::LoadBalancerSynced,
                    false,
                    "HaproxyError",
                    e.to_owned(),
                )
            },
            None => cond(
                ConditionType::LoadBalancerSynced,
                true,
                "Synced",
                "HAProxy's servers are the tasks that answer".to_owned(),
            ),
        });
    }
    out
}

/// Where a task stands with Swarm, for rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// Runs, is meant to, on a ready node, with an address: may serve.
    Serving(SocketAddrV4),
    /// Still runs but Swarm is stopping it (scale-down, update): drain.
    Leaving(SocketAddrV4),
    /// Anything else: not in rotation.
    Out,
}

fn standing(task: &SwarmTask, nodes: &BTreeMap<String, SwarmNode>) -> Standing {
    let node_ready = task
        .node_id
        .as_ref()
        .and_then(|n| nodes.get(n))
        .is_some_and(|n| n.ready);
    match (task.state, task.addr(nodes)) {
        (TaskPhase::Running, Some(addr)) if node_ready && task.desired == TaskPhase::Running => {
            Standing::Serving(addr)
        }
        (TaskPhase::Running, Some(addr)) if node_ready => Standing::Leaving(addr),
        _ => Standing::Out,
    }
}

/// The tasks that may serve but are not in rotation yet: their addresses are probed
/// before the pass is planned.
pub fn to_probe(
    tasks: &[SwarmTask],
    nodes: &BTreeMap<String, SwarmNode>,
    backend: Option<&Backend>,
) -> Vec<(ContainerId, SocketAddrV4)> {
    let in_rotation: BTreeSet<SocketAddrV4> = backend
        .iter()
        .flat_map(|b| &b.slots)
        .filter(|s| s.admin == Admin::Ready)
        .filter_map(|s| s.addr)
        .collect();
    tasks
        .iter()
        .filter_map(|t| match standing(t, nodes) {
            Standing::Serving(addr) if !in_rotation.contains(&addr) => {
                Some((ContainerId(t.id.clone()), addr))
            }
            _ => None,
        })
        .collect()
}

/// Plans one pass.
pub fn plan(input: &SwarmInput<'_>) -> SwarmPlan {
    let change = service_change(input);
    let mut actions = Vec::new();
    let mut serving = BTreeSet::new();
    let ready = match input.backend {
        None => count_running(input),
        Some(None) => 0,
        Some(Some(backend)) => rotation(input, backend, &mut actions, &mut serving),
    };
    let current_tasks: Vec<&SwarmTask> = input
        .tasks
        .iter()
        .filter(|t| t.desired == TaskPhase::Running)
        .collect();
    let updated = |t: &&SwarmTask| t.template_hash.as_deref() == Some(input.template_hash);
    let ready_updated = match input.backend {
        None => current_tasks
            .iter()
            .filter(|t| t.state == TaskPhase::Running && updated(t))
            .count(),
        Some(None) => 0,
        Some(Some(backend)) => {
            let up: BTreeSet<SocketAddrV4> = backend
                .slots
                .iter()
                .filter(|s| s.admin == Admin::Ready && s.up)
                .filter_map(|s| s.addr)
                .collect();
            current_tasks
                .iter()
                .filter(|t| updated(t))
                .filter(
                    |t| matches!(standing(t, input.nodes), Standing::Serving(a) if up.contains(&a)),
                )
                .count()
        }
    };
    let counts = Counts {
        desired: input.desired,
        current: current_tasks
            .iter()
            .filter(|t| t.state == TaskPhase::Running)
            .count() as u32,
        ready,
        updated: current_tasks.iter().filter(|t| updated(t)).count() as u32,
        ready_updated: ready_updated as u32,
        pending: current_tasks
            .iter()
            .filter(|t| t.state == TaskPhase::Pending)
            .count() as u32,
        terminating: input
            .tasks
            .iter()
            .filter(|t| t.desired != TaskPhase::Running && t.state == TaskPhase::Running)
            .count() as u32,
    };
    let task_error = input
        .tasks
        .iter()
        .filter(|t| t.template_hash.as_deref() == Some(input.template_hash))
        .filter(|t| t.state == TaskPhase::Failed)
        .max_by(|a, b| a.since.cmp(&b.since))
        .and_then(|t| t.error.clone());
    SwarmPlan {
        change,
        actions,
        counts,
        update: input
            .service
            .and_then(|s| s.update.as_ref())
            .map(|u| u.state),
        task_error,
        serving,
    }
}

fn service_change(input: &SwarmInput<'_>) -> ServiceChange {
    let Some(service) = input.service else {
        return ServiceChange::Create;
    };
    if !service.managed {
        return ServiceChange::NameTaken;
    }
    let wanted = input.rolled_back != Some(input.spec_hash);
    if wanted && service.spec_hash.as_deref() != Some(input.spec_hash) {
        return ServiceChange::Respec;
    }
    if service.replicas != input.desired {
        return ServiceChange::Scale {
            from: service.replicas,
            to: input.desired,
        };
    }
    ServiceChange::Nothing
}

fn count_running(input: &SwarmInput<'_>) -> u32 {
    input
        .tasks
        .iter()
        .filter(|t| t.desired == TaskPhase::Running && t.state == TaskPhase::Running)
        .count() as u32
}

/// The load-balancer steps: slots follow the tasks. Returns the ready count (tasks in
/// rotation that HAProxy reports UP).
fn rotation(
    input: &SwarmInput<'_>,
    backend: &Backend,
    actions: &mut Vec<Action>,
    serving: &mut BTreeSet<String>,
) -> u32 {
    let mut by_addr: HashMap<SocketAddrV4, (&SwarmTask, Standing)> = HashMap::new();
    for t in input.tasks {
        match standing(t, input.nodes) {
            s @ (Standing::Serving(addr) | Standing::Leaving(addr)) => {
                by_addr.insert(addr, (t, s));
            }
            Standing::Out => {}
        }
    }
    let mut placed: BTreeSet<SocketAddrV4> = BTreeSet::new();
    let mut free: Vec<&Slot> = Vec::new();
    let mut ready = 0;
    for slot in &backend.slots {
        let known = slot.addr.and_then(|a| by_addr.get(&a).map(|k| (a, k)));
        match known {
            // Two slots for one address: keep the first.
            Some((addr, _)) if placed.contains(&addr) => {
                actions.push(Action::Release {
                    slot: slot.name.clone(),
                });
            }
            Some((addr, (task, Standing::Serving(_)))) => {
                placed.insert(addr);
                let id = ContainerId(task.id.clone());
                match slot.admin {
                    Admin::Maint if input.answering.contains(&id) => {
                        serving.insert(task.id.clone());
                        actions.push(Action::Enable {
                            id,
                            slot: slot.name.clone(),
                        });
                    }
                    Admin::Ready => {
                        serving.insert(task.id.clone());
                        if slot.up {
                            ready += 1;
                        }
                    }
                    _ => {}
                }
            }
            Some((addr, (task, _))) => {
                placed.insert(addr);
                if slot.admin == Admin::Ready {
                    actions.push(Action::Drain {
                        id: ContainerId(task.id.clone()),
                        slot: slot.name.clone(),
                        reason: if task.template_hash.as_deref() == Some(input.template_hash) {
                            RemoveReason::ScaleDown
                        } else {
                            RemoveReason::Rollout
                        },
                    });
                }
            }
            // No task runs there any more (it ended, failed, or its node is down):
            // out at once, its connections cut.
            None if slot.admin != Admin::Maint => match slot.addr {
                Some(addr) => actions.push(Action::Cut {
                    slot: slot.name.clone(),
                    addr,
                }),
                None => actions.push(Action::Release {
                    slot: slot.name.clone(),
                }),
            },
            None => free.push(slot),
        }
    }
    // Serving tasks without a slot: assigned, and enabled in the same pass when they
    // already answer.
    let mut free = free.into_iter();
    let mut waiting: Vec<&SwarmTask> = input
        .tasks
        .iter()
        .filter(
            |t| matches!(standing(t, input.nodes), Standing::Serving(a) if !placed.contains(&a)),
        )
        .collect();
    waiting.sort_by(|a, b| a.name.cmp(&b.name));
    for task in waiting {
        let (Standing::Serving(addr), Some(slot)) = (standing(task, input.nodes), free.next())
        else {
            break;
        };
        let id = ContainerId(task.id.clone());
        actions.push(Action::AssignSlot {
            id: id.clone(),
            slot: slot.name.clone(),
            addr,
        });
        if input.answering.contains(&id) {
            serving.insert(task.id.clone());
            actions.push(Action::Enable {
                id,
                slot: slot.name.clone(),
            });
        }
    }
    ready
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::runtime::swarm::UpdateStatus;

    fn node(id: &str, last: u8, ready: bool) -> (String, SwarmNode) {
        (
            id.to_owned(),
            SwarmNode {
                id: id.to_owned(),
                hostname: id.to_owned(),
                addr: Some(Ipv4Addr::new(198, 18, 0, last)),
                ready,
            },
        )
    }

    fn task(id: &str, node: &str, port: u16, hash: &str) -> SwarmTask {
        SwarmTask {
            id: id.to_owned(),
            name: format!("web.{id}"),
            node_id: Some(node.to_owned()),
            desired: TaskPhase::Running,
            state: TaskPhase::Running,
            template_hash: Some(hash.to_owned()),
            published_port: Some(port),
            error: None,
            container_id: None,
            since: String::new(),
        }
    }

    fn addr(last: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, last), port)
    }

    fn slot(n: usize, at: Option<SocketAddrV4>, admin: Admin, up: bool) -> Slot {
        Slot {
            name: format!("slot{n}"),
            addr: at,
            admin,
            up,
            weight: if admin == Admin::Maint { 0 } else { 100 },
            sessions: 0,
        }
    }

    fn managed(replicas: u32, spec_hash: &str) -> SwarmService {
        SwarmService {
            id: "svc".into(),
            name: "web".into(),
            version: 7,
            replicas,
            managed: true,
            spec_hash: Some(spec_hash.into()),
            template_hash: Some("t1".into()),
            update: None,
            spec: Default::default(),
        }
    }

    struct Case {
        service: Option<SwarmService>,
        tasks: Vec<SwarmTask>,
        nodes: BTreeMap<String, SwarmNode>,
        backend: Backend,
        answering: BTreeSet<ContainerId>,
        desired: u32,
        rolled_back: Option<String>,
    }

    impl Case {
        fn new() -> Self {
            Case {
                service: Some(managed(2, "s1")),
                tasks: Vec::new(),
                nodes: [node("n1", 2, true), node("n2", 3, true)]
                    .into_iter()
                    .collect(),
                backend: Backend {
                    slots: (1..=4)
                        .map(|n| slot(n, None, Admin::Maint, false))
                        .collect(),
                    ..Backend::default()
                },
                answering: BTreeSet::new(),
                desired: 2,
                rolled_back: None,
            }
        }

        fn plan(&self) -> SwarmPlan {
            plan(&SwarmInput {
                desired: self.desired,
                template_hash: "t1",
                spec_hash: "s1",
                service: self.service.as_ref(),
                tasks: &self.tasks,
                nodes: &self.nodes,
                backend: Some(Some(&self.backend)),
                answering: &self.answering,
                rolled_back: self.rolled_back.as_deref(),
            })
        }
    }

    #[test]
    fn a_missing_service_is_created_and_a_foreign_one_is_never_touched() {
        let mut c = Case::new();
        c.service = None;
        assert_eq!(c.plan().change, ServiceChange::Create);
        let mut foreign = managed(2, "s1");
        foreign.managed = false;
        c.service = Some(foreign);
        c.desired = 5;
        assert_eq!(c.plan().change, ServiceChange::NameTaken);
    }

    #[test]
    fn a_count_change_scales_and_a_spec_change_respecs() {
        let mut c = Case::new();
        c.desired = 4;
        assert_eq!(c.plan().change, ServiceChange::Scale { from: 2, to: 4 });
        c.service = Some(managed(4, "s0"));
        assert_eq!(c.plan().change, ServiceChange::Respec);
        c.service = Some(managed(4, "s1"));
        assert_eq!(c.plan().change, ServiceChange::Nothing);
    }

    #[test]
    fn a_spec_swarm_rolled_back_is_not_asked_for_again_but_the_count_still_follows() {
        let mut c = Case::new();
        let mut service = managed(2, "s0");
        service.update = Some(UpdateStatus {
            state: UpdateState::RollbackCompleted,
            message: "rollback completed".into(),
        });
        c.service = Some(service);
        c.rolled_back = Some("s1".into());
        assert_eq!(c.plan().change, ServiceChange::Nothing);
        c.desired = 3;
        assert_eq!(c.plan().change, ServiceChange::Scale { from: 2, to: 3 });
    }

    #[test]
    fn a_running_task_gets_a_slot_and_is_enabled_only_once_it_answers() {
        let mut c = Case::new();
        c.tasks = vec![task("a", "n1", 30001, "t1")];
        let p = c.plan();
        assert_eq!(
            p.actions,
            vec![Action::AssignSlot {
                id: ContainerId("a".into()),
                slot: "slot1".into(),
                addr: addr(2, 30001)
            }]
        );
        c.answering.insert(ContainerId("a".into()));
        let p = c.plan();
        assert!(p.actions.contains(&Action::Enable {
            id: ContainerId("a".into()),
            slot: "slot1".into()
        }));
        // Assigned and waiting: enabled once it answers.
        c.backend.slots[0] = slot(1, Some(addr(2, 30001)), Admin::Maint, false);
        assert_eq!(
            c.plan().actions,
            vec![Action::Enable {
                id: ContainerId("a".into()),
                slot: "slot1".into()
            }]
        );
    }

    #[test]
    fn a_task_swarm_is_stopping_is_drained_and_one_that_ended_is_cut() {
        let mut c = Case::new();
        let mut leaving = task("a", "n1", 30001, "t1");
        leaving.desired = TaskPhase::Stopped;
        c.tasks = vec![leaving, task("b", "n2", 30002, "t1")];
        c.backend.slots[0] = slot(1, Some(addr(2, 30001)), Admin::Ready, true);
        c.backend.slots[1] = slot(2, Some(addr(3, 30002)), Admin::Ready, true);
        let p = c.plan();
        assert_eq!(
            p.actions,
            vec![Action::Drain {
                id: ContainerId("a".into()),
                slot: "slot1".into(),
                reason: RemoveReason::ScaleDown
            }]
        );
        assert_eq!(p.counts.ready, 1);
        assert_eq!(p.counts.terminating, 1);
        // It ended: the slot, still draining, is cut and freed.
        c.tasks[0].state = TaskPhase::Stopped;
        c.backend.slots[0].admin = Admin::Drain;
        assert_eq!(
            c.plan().actions,
            vec![Action::Cut {
                slot: "slot1".into(),
                addr: addr(2, 30001)
            }]
        );
    }

    #[test]
    fn the_tasks_of_a_node_that_went_down_leave_rotation_at_once() {
        let mut c = Case::new();
        c.tasks = vec![task("a", "n1", 30001, "t1"), task("b", "n2", 30002, "t1")];
        c.backend.slots[0] = slot(1, Some(addr(2, 30001)), Admin::Ready, true);
        c.backend.slots[1] = slot(2, Some(addr(3, 30002)), Admin::Ready, true);
        c.nodes.insert("n2".into(), node("n2", 3, false).1);
        let p = c.plan();
        assert_eq!(
            p.actions,
            vec![Action::Cut {
                slot: "slot2".into(),
                addr: addr(3, 30002)
            }]
        );
        assert_eq!(p.counts.ready, 1);
        assert!(to_probe(&c.tasks, &c.nodes, Some(&c.backend)).is_empty());
    }

    #[test]
    fn counts_tell_the_current_template_from_the_old() {
        let mut c = Case::new();
        c.tasks = vec![task("a", "n1", 30001, "t0"), task("b", "n2", 30002, "t1")];
        let mut pending = task("c", "n1", 30003, "t1");
        pending.state = TaskPhase::Pending;
        pending.published_port = None;
        c.tasks.push(pending);
        let mut failed = task("d", "n1", 30004, "t1");
        failed.state = TaskPhase::Failed;
        failed.desired = TaskPhase::Stopped;
        failed.error = Some("No such image: img:2".into());
        c.tasks.push(failed);
        c.backend.slots[0] = slot(1, Some(addr(2, 30001)), Admin::Ready, true);
        c.backend.slots[1] = slot(2, Some(addr(3, 30002)), Admin::Ready, true);
        let p = c.plan();
        assert_eq!(p.counts.current, 2);
        assert_eq!(p.counts.ready, 2);
        assert_eq!(p.counts.updated, 2);
        assert_eq!(p.counts.ready_updated, 1);
        assert_eq!(p.counts.pending, 1);
        assert_eq!(p.task_error.as_deref(), Some("No such image: img:2"));
    }

    #[test]
    fn without_a_readable_backend_nothing_is_ready_and_no_slot_is_touched() {
        let mut c = Case::new();
        c.tasks = vec![task("a", "n1", 30001, "t1")];
        let p = plan(&SwarmInput {
            desired: 1,
            template_hash: "t1",
            spec_hash: "s1",
            service: c.service.as_ref(),
            tasks: &c.tasks,
            nodes: &c.nodes,
            backend: Some(None),
            answering: &c.answering,
            rolled_back: None,
        });
        assert!(p.actions.is_empty());
        assert_eq!(p.counts.ready, 0);
    }
}
