//! The planner's rules, pass by pass, without Docker.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use super::image::PullState;
use super::*;
use crate::model::backend::Slot;
use crate::model::member::Member;
use crate::model::replica::{ContainerState, ExitCause, Health};
use crate::spec::{ImagePullPolicy, DEFAULT_UNHEALTHY_REPLACE_AFTER};
use crate::testing::{self, free_slot, member, replica, serving_slot, warming_slot};

const HASH: &str = "new";

/// One service's world: what is listed, what HAProxy shows, what is in flight.
struct World {
    spec: ServiceSpec,
    desired: u32,
    replicas: Vec<Replica>,
    members: Vec<Member>,
    backend: Option<Backend>,
    answering: BTreeSet<ContainerId>,
    image_present: bool,
    pull: PullState,
    memory: Memory,
    policy: BackoffPolicy,
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
            members: Vec::new(),
            backend: lb.then(Backend::default),
            answering: BTreeSet::new(),
            image_present: true,
            pull: PullState::default(),
            memory: Memory {
                network_ready: Some(testing::NET.to_owned()),
                ..Memory::default()
            },
            policy: BackoffPolicy::default(),
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
        self.backend = Some(Backend {
            slots,
            ..Backend::default()
        });
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
            spec: &self.spec,
            desired: self.desired,
            template_hash: HASH,
            replicas: self.replicas.iter().filter(|r| !r.is_warm()).collect(),
            warm: self.replicas.iter().filter(|r| r.is_warm()).collect(),
            warm_size: self
                .spec
                .autoscale
                .as_ref()
                .and_then(|a| a.warm_pool.as_ref())
                .map_or(0, |p| p.size),
            members: self.members.iter().collect(),
            image_present: self.image_present,
            pull: &self.pull,
            backend: self.backend.as_ref(),
            backend_error: None,
            answering: &self.answering,
            now: self.now(),
            limits: Limits { max_parallel: 8 },
            backoff: &self.policy,
            previous: None,
        };
        plan(&input, &self.memory)
    }

    /// A create of `name` in flight since the start.
    fn creating(&mut self, name: &str) {
        self.memory.create_started(name, HASH, 0, self.t0);
    }

    /// Replica `name` on a line that crashed `n` times in a row.
    fn line(&mut self, name: &str, n: u32) {
        self.memory.create_started(name, HASH, n, self.t0);
        self.memory.created(name);
    }

    /// Replica `name` drained by dockscale since the start.
    fn draining(&mut self, name: &str) {
        self.memory.replicas.insert(
            name.to_owned(),
            Tracked {
                phase: Phase::Draining { since: self.t0 },
                restarts: 0,
                hold_reported: false,
                stop_failures: 0,
                exit_judged: false,
            },
        );
    }

    /// The name of the listed container `id`.
    fn name_of(&self, id: &ContainerId) -> Option<String> {
        self.replicas
            .iter()
            .find(|r| &r.id == id)
            .map(|r| r.name.clone())
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
        let name = r.name.clone();
        w.memory.create_started(&name, HASH, 0, w.t0);
        if i >= 5 {
            w.memory.removed(&name);
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
        w.creating(name);
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
    w.memory.create_started("w-00003", HASH, 0, w.t0);
    w.memory.applied(
        &Action::Remove {
            id: ContainerId("id03".into()),
            name: "w-00003".into(),
            reason: RemoveReason::ScaleDown,
        },
        Some("w-00003"),
        w.t0,
    );
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
    }));
    assert_eq!(creates(&plan), 1);
}

#[test]
fn a_container_that_never_started_is_removed_unless_its_create_is_in_flight() {
    let mut w = World::new(testing::spec().replicas(1).build()).with_replicas([1], HASH);
    w.replicas[0].state = ContainerState::Created;
    w.creating("w-00001");
    let plan = w.plan();
    assert!(removed(&plan).is_empty());
    assert_eq!(creates(&plan), 0, "the create in flight counts");
    w.memory.removed("w-00001");
    let plan = w.plan();
    assert_eq!(removed(&plan), vec!["w-00001"]);
    assert_eq!(creates(&plan), 1);
}

#[test]
fn a_missing_image_that_is_never_pulled_creates_nothing_and_says_why() {
    let spec = testing::spec()
        .replicas(2)
        .image("dockscale-webapp:latest", ImagePullPolicy::Never)
        .build();
    let mut w = World::new(spec);
    w.image_present = false;
    let plan = w.plan();
    assert_eq!(creates(&plan), 0);
    assert!(!plan
        .actions
        .iter()
        .any(|a| matches!(a, Action::Pull { .. })));
    assert!(plan.notes.contains(&Note::ImageMissing {
        image: "dockscale-webapp:latest".into()
    }));
}

#[test]
fn a_missing_image_is_pulled_once_before_the_first_create() {
    let mut w = World::new(testing::spec().replicas(2).build());
    w.image_present = false;
    let plan = w.plan();
    assert_eq!(creates(&plan), 0, "creates wait for the pull");
    assert_eq!(
        plan.actions
            .iter()
            .filter(|a| matches!(a, Action::Pull { .. }))
            .count(),
        1
    );
    w.pull.started(w.now().instant);
    let plan = w.plan();
    assert_eq!(creates(&plan), 0);
    assert!(!plan
        .actions
        .iter()
        .any(|a| matches!(a, Action::Pull { .. })));
    assert!(plan.notes.contains(&Note::ImagePulling {
        image: "dockscale-webapp:latest".into()
    }));
    w.pull.succeeded("sha256:1".into());
    w.image_present = true;
    assert_eq!(creates(&w.plan()), 2);
}

#[test]
fn a_failed_pull_holds_the_creates_and_looks_again_after_its_back_off() {
    let mut w = World::new(testing::spec().replicas(1).build());
    w.image_present = false;
    w.pull.failed("unauthorized".into(), w.now().instant);
    w.at = Duration::from_millis(400);
    let plan = w.plan();
    assert_eq!(creates(&plan), 0);
    assert!(!plan
        .actions
        .iter()
        .any(|a| matches!(a, Action::Pull { .. })));
    assert_eq!(plan.requeue_after, Some(Duration::from_millis(600)));
    assert!(plan.notes.iter().any(|n| matches!(
        n,
        Note::ImagePullBackOff { message, .. } if message == "unauthorized"
    )));
    w.at = Duration::from_secs(1);
    assert!(w.plan().actions.contains(&Action::Pull {
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
        ..Backend::default()
    };
    let refs: Vec<&Replica> = replicas.iter().collect();
    assert_eq!(
        probe_targets(&spec, &refs, &[], &backend),
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
    w.draining("w-00002");
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
    w.draining("w-00002");
    let slots = &mut w.backend.as_mut().expect("backend").slots;
    slots[1].admin = Admin::Drain;
    slots[1].sessions = 7;
    w.at = Duration::from_secs(4);
    assert!(removed(&w.plan()).is_empty());
    w.at = Duration::from_secs(5);
    assert_eq!(removed(&w.plan()), vec!["w-00002"]);
}

#[test]
fn a_server_in_rotation_without_a_live_replica_is_cut_at_once() {
    // A replica died: Docker lists it exited, without an address.
    let mut w = World::new(testing::spec().replicas(2).lb().build())
        .with_replicas(1..=2, HASH)
        .with_slots(vec![serving_slot(1, 1), serving_slot(2, 2)]);
    w.replicas[1].state = ContainerState::Exited;
    w.replicas[1].ips.clear();
    w.replicas[1].exit_cause = Some(ExitCause::Own);
    let plan = w.plan();
    assert!(plan.actions.contains(&Action::Cut {
        slot: "web2".into(),
        addr: testing::addr(2),
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
        vec![Action::Cut {
            slot: "web2".into(),
            addr: testing::addr(2),
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
            name: "w-00002".into(),
            slot: "web2".into(),
            admin: Admin::Maint
        }]
    );
    assert_eq!(plan.counts.ready, 1);
    w.memory.apply_plan(&plan);
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
        w.memory.apply_plan(&plan);
        for action in plan.actions {
            let name = action.container().and_then(|id| w.name_of(id));
            w.memory.applied(&action, name.as_deref(), w.t0);
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
                Action::Drain { slot, .. } => {
                    let s = slots.iter_mut().find(|s| s.name == slot).expect("slot");
                    s.admin = Admin::Drain;
                }
                Action::Release { slot } => {
                    let s = slots.iter_mut().find(|s| s.name == slot).expect("slot");
                    *s = free_slot(s.name[3..].parse().expect("slot number"));
                }
                Action::Remove { id, name, .. } => {
                    w.replicas.retain(|r| r.id != id);
                    w.memory.removed(&name);
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
    let first = w.plan();
    w.memory.apply_plan(&first);
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

/// One pass the way the executor applies it: the plan's memory changes, and every
/// create started (the new replicas named `w-<first>`, `w-<first + 1>`, ...; not
/// listed yet). Returns the plan and the verdicts of the exits it judged.
fn pass(w: &mut World, first: u8) -> (Plan, Vec<Verdict>) {
    let plan = w.plan();
    let t = w.now().instant;
    w.memory.apply_plan(&plan);
    let mut n = first;
    for action in &plan.actions {
        if let Action::Create { restarts } = action {
            w.memory
                .create_started(&format!("w-{n:05}"), HASH, *restarts, t);
            n += 1;
        }
    }
    let verdicts = plan.exits.iter().map(|j| j.verdict.clone()).collect();
    (plan, verdicts)
}

/// The creates of `w-<n>` finished, and the replicas run.
fn started(w: &mut World, ns: impl IntoIterator<Item = u8>) {
    for n in ns {
        let name = format!("w-{n:05}");
        w.memory.created(&name);
        w.replicas.push(replica(n, HASH));
    }
}

// Regression: five replicas removed from outside within a minute were counted as one
// service-wide crash loop (`5 exits in a row; back-off 1m 20s`) that held back every
// create, and the service sat at zero replicas.
#[test]
fn replicas_killed_from_outside_are_all_replaced_at_once() {
    let mut w = World::new(testing::spec().replicas(5).build());
    w.replicas = (1..=5).map(|n| exited(n, ExitCause::Signalled)).collect();
    let (plan, verdicts) = pass(&mut w, 10);
    assert_eq!(verdicts, vec![Verdict::Replace; 5]);
    assert_eq!(creates(&plan), 5, "{:?}", plan.actions);
    assert_eq!(removed(&plan).len(), 5);
    assert!(!plan
        .notes
        .iter()
        .any(|n| matches!(n, Note::CrashLoopBackOff { .. })));
    // Found exited without the exit seen (the engine restarted): replaced too.
    let mut w = World::new(testing::spec().replicas(3).build());
    w.replicas = (1..=3).map(|n| exited(n, ExitCause::Unknown)).collect();
    let (plan, verdicts) = pass(&mut w, 10);
    assert_eq!(verdicts, vec![Verdict::Replace; 3]);
    assert_eq!(creates(&plan), 3);
}

#[test]
fn an_exit_is_judged_once_however_many_passes_see_it() {
    let mut w = World::new(testing::spec().replicas(1).build());
    w.replicas = vec![exited(1, ExitCause::Own)];
    let (_, verdicts) = pass(&mut w, 10);
    assert_eq!(verdicts.len(), 1);
    let (plan, verdicts) = pass(&mut w, 11);
    assert!(verdicts.is_empty(), "judged again");
    assert_eq!(
        plan.vacant.len(),
        0,
        "the vacancy went to the first pass's create"
    );
}

#[test]
fn one_crash_looping_replica_never_holds_back_another_replacement_or_a_scale_up() {
    let mut w = World::new(testing::spec().replicas(3).build()).with_replicas([1], HASH);
    // Replica 2's line has crashed 3 times already; replica 3 was killed from outside.
    w.line("w-00002", 3);
    w.replicas.push(exited(2, ExitCause::Own));
    w.replicas.push(exited(3, ExitCause::Signalled));
    let (plan, verdicts) = pass(&mut w, 10);
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
    w.replicas = vec![replica(1, HASH)];
    started(&mut w, [10]);
    // A scale-up meanwhile: the new replicas are fresh lines, created at once.
    w.desired = 6;
    let (plan, _) = pass(&mut w, 11);
    assert_eq!(
        plan.actions
            .iter()
            .filter(|a| matches!(a, Action::Create { restarts: 0 }))
            .count(),
        3,
        "{:?}",
        plan.actions
    );
    started(&mut w, [11, 12, 13]);
    // When the back-off ends, the crashed line's replacement inherits its count.
    w.at = Duration::from_secs(40);
    assert_eq!(w.plan().actions, vec![Action::Create { restarts: 4 }]);
}

// Regression: the exit used to be counted only when its removal was executed, after
// the same pass had already created the replacement, so every other replacement
// skipped its back-off.
#[test]
fn the_pass_that_removes_a_crashed_replica_already_backs_its_line_off() {
    let mut w = World::new(testing::spec().replicas(1).build());
    w.policy = BackoffPolicy {
        base: Duration::from_secs(1),
        ..BackoffPolicy::default()
    };
    let mut delays = Vec::new();
    for n in 1..=4u8 {
        // The line's current replica crashes.
        w.replicas = vec![exited(n, ExitCause::Own)];
        if n > 1 {
            w.memory.created(&format!("w-{n:05}"));
        }
        let (plan, verdicts) = pass(&mut w, n + 1);
        let [Verdict::Crash { restarts, delay }] = verdicts[..] else {
            panic!("{verdicts:?}");
        };
        assert_eq!(restarts, u32::from(n));
        delays.push(delay);
        assert_eq!(
            creates(&plan),
            usize::from(delay.is_zero()),
            "pass {n}: {:?}",
            plan.actions
        );
        if !delay.is_zero() {
            // Once the back-off is over, the replacement joins the line.
            w.at += delay;
            let (plan, verdicts) = pass(&mut w, n + 1);
            assert!(verdicts.is_empty());
            assert_eq!(
                plan.actions.last(),
                Some(&Action::Create {
                    restarts: u32::from(n)
                })
            );
        }
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
    w.line("w-00001", 5);
    w.replicas = vec![old];
    let (plan, verdicts) = pass(&mut w, 10);
    assert!(matches!(verdicts[..], [Verdict::Crash { .. }]));
    assert_eq!(creates(&plan), 2);
}

#[test]
fn a_replica_that_lost_its_network_address_is_replaced() {
    let mut w = World::new(testing::spec().replicas(2).lb().build())
        .with_replicas(1..=2, HASH)
        .with_slots(vec![serving_slot(1, 1), serving_slot(2, 2)]);
    w.replicas[1].ips.clear();
    let plan = w.plan();
    assert!(
        plan.actions.contains(&Action::Cut {
            slot: "web2".into(),
            addr: testing::addr(2),
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

#[test]
fn gone_replicas_are_forgotten_but_creates_and_removals_in_flight_are_not() {
    let mut w = World::new(testing::spec().replicas(1).build()).with_replicas([1], HASH);
    w.line("w-00001", 2);
    w.draining("w-00009");
    w.creating("w-00008");
    w.memory.create_started("w-00007", HASH, 0, w.t0);
    w.memory.applied(
        &Action::Remove {
            id: ContainerId("id07".into()),
            name: "w-00007".into(),
            reason: RemoveReason::ScaleDown,
        },
        Some("w-00007"),
        w.t0,
    );
    assert_eq!(w.plan().forget, vec!["w-00009".to_owned()]);
}

fn enabled(plan: &Plan) -> Vec<&str> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Enable { slot, .. } => Some(slot.as_str()),
            _ => None,
        })
        .collect()
}

fn suspended(plan: &Plan) -> Vec<&str> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Suspend { slot, .. } => Some(slot.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_replica_with_a_health_check_is_enabled_only_once_docker_reports_it_healthy() {
    let mut w = World::new(testing::spec().replicas(1).lb().build())
        .with_replicas([1], HASH)
        .with_slots(vec![warming_slot(1, 1)]);
    w.answering.insert(ContainerId("id01".into()));
    w.replicas[0].health = Some(Health::Starting);
    let plan = w.plan();
    assert!(enabled(&plan).is_empty(), "{:?}", plan.actions);
    assert_eq!(plan.counts.ready, 0);
    assert_eq!(plan.replicas[0].serving, "warming");

    w.replicas[0].health = Some(Health::Unhealthy);
    assert!(enabled(&w.plan()).is_empty());

    w.replicas[0].health = Some(Health::Healthy);
    assert_eq!(enabled(&w.plan()), vec!["web1"]);
}

#[test]
fn a_serving_replica_that_turns_unhealthy_leaves_rotation_in_the_same_pass() {
    let mut w = World::new(testing::spec().replicas(2).lb().build())
        .with_replicas([1, 2], HASH)
        .with_slots(vec![serving_slot(1, 1), serving_slot(2, 2)]);
    w.replicas[1].health = Some(Health::Unhealthy);
    let plan = w.plan();
    assert_eq!(suspended(&plan), vec!["web2"]);
    assert_eq!(plan.counts.ready, 1);
    assert_eq!(plan.replicas[1].serving, "unhealthy");
    // Not replaced yet: it may recover within unhealthyReplaceAfter.
    assert!(removed(&plan).is_empty());
    assert_eq!(creates(&plan), 0);
    assert_eq!(plan.requeue_after, Some(DEFAULT_UNHEALTHY_REPLACE_AFTER));
}

#[test]
fn a_replica_unhealthy_for_unhealthy_replace_after_is_removed_and_its_start_is_remembered() {
    let mut spec = testing::spec().replicas(2).lb().build();
    spec.template.unhealthy_replace_after = Some(crate::spec::Duration::from_secs(10));
    let mut w = World::new(spec)
        .with_replicas([1, 2], HASH)
        .with_slots(vec![serving_slot(1, 1), warming_slot(2, 2)]);
    w.replicas[1].health = Some(Health::Unhealthy);
    let first = w.plan();
    assert_eq!(first.unhealthy_since.get("w-00002"), Some(&w.t0));
    assert!(removed(&first).is_empty());
    w.memory.apply_plan(&first);

    // 4 s on, the clock runs from when it was first seen.
    w.at = Duration::from_secs(4);
    let plan = w.plan();
    assert!(removed(&plan).is_empty());
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(6)));

    // 10 s on: released and removed (it was out of rotation already).
    w.at = Duration::from_secs(10);
    let plan = w.plan();
    assert_eq!(removed(&plan), vec!["w-00002"]);
    assert!(plan.actions.contains(&Action::Remove {
        id: ContainerId("id02".into()),
        name: "w-00002".into(),
        reason: RemoveReason::Unhealthy,
    }));

    // It recovered instead: its clock is forgotten.
    w.replicas[1].health = Some(Health::Healthy);
    let plan = w.plan();
    assert!(removed(&plan).is_empty());
    assert!(plan.unhealthy_since.is_empty());
}

#[test]
fn without_a_load_balancer_a_replica_is_ready_only_when_healthy() {
    let mut w = World::new(testing::spec().replicas(2).build()).with_replicas([1, 2], HASH);
    w.replicas[0].health = Some(Health::Starting);
    w.replicas[1].health = Some(Health::Healthy);
    let plan = w.plan();
    assert_eq!(plan.counts.ready, 1);
    assert_eq!(plan.counts.current, 2);
    assert_eq!(plan.replicas[0].serving, "not ready");
    assert_eq!(creates(&plan), 0);
}

#[test]
fn a_rollout_keeps_the_old_replicas_while_the_new_ones_are_not_healthy() {
    let mut w = World::new(testing::spec().replicas(1).lb().rollout(1, 0).build())
        .with_replicas([1], "old")
        .with_replicas([2], HASH)
        .with_slots(vec![serving_slot(1, 1), warming_slot(2, 2)]);
    w.answering.insert(ContainerId("id02".into()));
    w.replicas[1].health = Some(Health::Starting);
    let plan = w.plan();
    assert!(enabled(&plan).is_empty());
    assert!(drained(&plan).is_empty(), "{:?}", plan.actions);
    assert!(removed(&plan).is_empty());
}

// --- hand-started members (`dockscale.join`) ------------------------------------------

/// The actions of a plan that concern `id`.
fn concerning<'p>(plan: &'p Plan, id: &str) -> Vec<&'p Action> {
    plan.actions
        .iter()
        .filter(|a| a.container().is_some_and(|c| c.0 == id))
        .collect()
}

#[test]
fn a_member_that_answers_gets_a_free_slot_and_is_enabled() {
    let mut w = World::new(testing::spec().replicas(1).lb().build())
        .with_replicas([1], HASH)
        .with_slots(vec![serving_slot(1, 1), free_slot(2)]);
    w.members.push(member(9));
    w.answering.insert(ContainerId("member09".into()));
    let p = w.plan();
    assert_eq!(
        concerning(&p, "member09"),
        vec![
            &Action::AssignSlot {
                id: ContainerId("member09".into()),
                slot: "web2".into(),
                addr: testing::addr(9),
            },
            &Action::Enable {
                id: ContainerId("member09".into()),
                slot: "web2".into(),
            },
        ]
    );
    assert_eq!(p.counts.current, 1, "a member is not a replica");
    assert_eq!(p.members.len(), 1);
    assert_eq!(p.members[0].serving, "starting");
}

#[test]
fn a_member_that_does_not_answer_yet_waits_in_maintenance() {
    let mut w =
        World::new(testing::spec().replicas(0).lb().build()).with_slots(vec![warming_slot(1, 9)]);
    w.desired = 0;
    w.members.push(member(9));
    let p = w.plan();
    assert!(concerning(&p, "member09").is_empty(), "{:?}", p.actions);
    assert_eq!(p.members[0].serving, "warming");
    assert!(!p.members[0].in_rotation);
    w.answering.insert(ContainerId("member09".into()));
    let p = w.plan();
    assert_eq!(
        concerning(&p, "member09"),
        vec![&Action::Enable {
            id: ContainerId("member09".into()),
            slot: "web1".into()
        }]
    );
}

#[test]
fn a_serving_member_is_never_removed_drained_or_counted_whatever_the_scale() {
    for desired in [0, 1, 3] {
        let mut w = World::new(testing::spec().replicas(desired).lb().build())
            .with_replicas(1..=3, HASH)
            .with_slots(vec![
                serving_slot(1, 1),
                serving_slot(2, 2),
                serving_slot(3, 3),
                serving_slot(4, 9),
            ]);
        w.desired = desired;
        w.members.push(member(9));
        let p = w.plan();
        assert!(
            concerning(&p, "member09").is_empty(),
            "desired {desired}: {:?}",
            p.actions
        );
        assert!(!drained(&p).contains(&"web4"), "desired {desired}");
        assert!(!p.actions.iter().any(|a| matches!(
            a,
            Action::Release { slot } | Action::Cut { slot, .. } if slot == "web4"
        )));
        assert_eq!(p.counts.current, 3, "desired {desired}: members uncounted");
        assert_eq!(creates(&p), 0, "desired {desired}");
        assert_eq!(p.members[0].serving, "serving");
        assert!(p.members[0].in_rotation);
        assert_eq!(p.members[0].slot.as_deref(), Some("web4"));
    }
}

#[test]
fn a_member_of_another_template_rolls_nothing() {
    let mut w = World::new(testing::spec().replicas(1).lb().build())
        .with_replicas([1], HASH)
        .with_slots(vec![serving_slot(1, 1), serving_slot(2, 9)]);
    w.members.push(member(9));
    let p = w.plan();
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert!(p.rollout.as_ref().is_none_or(|r| r.complete));
}

#[test]
fn a_member_that_died_has_its_slot_cut() {
    let mut w =
        World::new(testing::spec().replicas(0).lb().build()).with_slots(vec![serving_slot(1, 9)]);
    w.desired = 0;
    let mut gone = member(9);
    gone.state = ContainerState::Exited;
    gone.ips.clear();
    w.members.push(gone);
    let p = w.plan();
    assert_eq!(
        p.actions,
        vec![Action::Cut {
            slot: "web1".into(),
            addr: testing::addr(9)
        }]
    );
    assert_eq!(p.members[0].serving, "stopped");
    // And one that is not listed any more (removed) alike.
    w.members.clear();
    assert_eq!(w.plan().actions, p.actions);
}

#[test]
fn a_paused_member_is_suspended() {
    let mut w =
        World::new(testing::spec().replicas(0).lb().build()).with_slots(vec![serving_slot(1, 9)]);
    w.desired = 0;
    let mut paused = member(9);
    paused.state = ContainerState::Paused;
    w.members.push(paused);
    assert_eq!(
        w.plan().actions,
        vec![Action::Suspend {
            id: ContainerId("member09".into()),
            slot: "web1".into()
        }]
    );
}

#[test]
fn replicas_take_free_slots_before_members() {
    let mut w = World::new(testing::spec().replicas(1).lb().build())
        .with_replicas([1], HASH)
        .with_slots(vec![free_slot(1)]);
    w.members.push(member(9));
    let p = w.plan();
    assert!(p.actions.contains(&Action::AssignSlot {
        id: ContainerId("id01".into()),
        slot: "web1".into(),
        addr: testing::addr(1),
    }));
    assert!(concerning(&p, "member09").is_empty());
    assert!(p.notes.contains(&Note::NoFreeSlot {
        backend: "web".into(),
        waiting: 1
    }));
}

#[test]
fn a_member_on_another_network_is_reported_once_and_gets_no_slot() {
    let mut w = World::new(testing::spec().replicas(0).lb().build()).with_slots(vec![free_slot(1)]);
    w.desired = 0;
    let mut elsewhere = member(9);
    elsewhere.ips = std::collections::BTreeMap::from([("bridge".to_owned(), testing::ip(9))]);
    w.members.push(elsewhere);
    w.answering.insert(ContainerId("member09".into()));
    let p = w.plan();
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(
        p.notes,
        vec![Note::MemberNetworkMismatch {
            name: "s9".into(),
            id: ContainerId("member09".into()),
            on: vec!["bridge".into()],
            network: testing::NET.into(),
        }]
    );
    assert_eq!(p.members[0].serving, "wrong network");
    w.memory.apply_plan(&p);
    assert!(w.plan().notes.is_empty(), "reported once");
}

#[test]
fn probe_targets_include_members_not_in_rotation() {
    let spec = testing::spec().replicas(1).lb().build();
    let replicas = [replica(1, HASH)];
    let members = [member(8), member(9)];
    let backend = Backend {
        slots: vec![serving_slot(1, 1), serving_slot(2, 8)],
        ..Backend::default()
    };
    let refs: Vec<&Replica> = replicas.iter().collect();
    let member_refs: Vec<&Member> = members.iter().collect();
    assert_eq!(
        probe_targets(&spec, &refs, &member_refs, &backend),
        vec![(ContainerId("member09".into()), testing::addr(9))]
    );
}

/// The warm pool's step (`warm_pool.rs`), pass by pass.
mod warm {
    use super::*;
    use crate::reconcile::warm_pool::{Busy, WarmRemoval};
    use crate::testing::warm;

    /// `w` autoscaled 1..4 with a pool of `size`, one replica serving.
    fn pooled(size: u32) -> World {
        let spec = testing::spec().lb().autoscale(1, 4).warm_pool(size).build();
        let mut w =
            World::new(spec).with_slots(vec![serving_slot(1, 1), free_slot(2), free_slot(3)]);
        w.desired = 1;
        w.replicas.push(replica(1, HASH));
        w
    }

    fn count(p: &Plan, pick: impl Fn(&Action) -> bool) -> usize {
        p.actions.iter().filter(|a| pick(a)).count()
    }

    fn warm_creates(p: &Plan) -> usize {
        count(p, |a| matches!(a, Action::CreateWarm))
    }

    #[test]
    fn an_empty_pool_is_filled_to_its_size() {
        let p = pooled(2).plan();
        assert_eq!(warm_creates(&p), 2, "{:?}", p.actions);
        assert_eq!(creates(&p), 0);
    }

    #[test]
    fn no_pool_no_warm_work() {
        let mut w = pooled(2);
        w.spec.autoscale.as_mut().expect("autoscale").warm_pool = None;
        let p = w.plan();
        assert_eq!(warm_creates(&p), 0);
        assert_eq!(p.warm, Default::default());
    }

    #[test]
    fn warm_creates_in_flight_count_toward_the_size() {
        let mut w = pooled(2);
        w.memory.warm.creating.insert("w-warm-aaaaa".into(), w.t0);
        let p = w.plan();
        assert_eq!(warm_creates(&p), 1);
        assert_eq!(p.warm.warming, 1);
    }

    #[test]
    fn a_warm_container_is_paused_once_its_port_answers_and_not_before() {
        let mut w = pooled(1);
        w.replicas.push(warm(5, HASH, ContainerState::Running));
        let p = w.plan();
        assert_eq!(count(&p, |a| matches!(a, Action::Pause { .. })), 0);
        assert_eq!(p.requeue_after, Some(ACTIVE_REQUEUE), "its port is polled");
        assert_eq!((p.warm.ready, p.warm.warming), (0, 1));
        w.answering.insert(ContainerId("warm05".into()));
        let p = w.plan();
        assert_eq!(
            count(
                &p,
                |a| matches!(a, Action::Pause { id, .. } if id.0 == "warm05")
            ),
            1
        );
        assert_eq!(warm_creates(&p), 0, "the pool is full");
    }

    #[test]
    fn a_scale_up_takes_the_longest_warm_container_instead_of_creating_and_refills() {
        let mut w = pooled(2);
        w.replicas.push(warm(6, HASH, ContainerState::Paused));
        w.replicas.push(warm(5, HASH, ContainerState::Paused));
        w.desired = 2;
        let p = w.plan();
        assert_eq!(creates(&p), 0, "{:?}", p.actions);
        let takes: Vec<&Action> = p
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Take { .. }))
            .collect();
        assert_eq!(
            takes,
            [&Action::Take {
                id: ContainerId("warm05".into()),
                warm: "w-warm-00005".into(),
                replica: "w-00005".into(),
                restarts: 0,
            }]
        );
        assert_eq!(warm_creates(&p), 1, "the one taken is replaced");
        assert_eq!((p.warm.ready, p.warm.warming), (1, 0));
    }

    #[test]
    fn beyond_the_pool_a_scale_up_creates_cold() {
        let mut w = pooled(1);
        w.replicas.push(warm(5, HASH, ContainerState::Paused));
        w.desired = 3;
        let p = w.plan();
        assert_eq!(count(&p, |a| matches!(a, Action::Take { .. })), 1);
        assert_eq!(creates(&p), 1);
    }

    #[test]
    fn a_warm_container_being_taken_is_neither_taken_again_nor_counted() {
        let mut w = pooled(1);
        w.replicas.push(warm(5, HASH, ContainerState::Running));
        w.memory
            .warm
            .busy
            .insert(ContainerId("warm05".into()), Busy::Taking);
        w.answering.insert(ContainerId("warm05".into()));
        w.desired = 2;
        w.memory.create_started("w-00005", HASH, 0, w.t0);
        let p = w.plan();
        assert_eq!(
            count(&p, |a| matches!(
                a,
                Action::Take { .. } | Action::Pause { .. }
            )),
            0
        );
        assert_eq!(creates(&p), 0, "the take is the replica's create in flight");
    }

    #[test]
    fn warm_containers_of_an_old_template_are_replaced_and_never_taken() {
        let mut w = pooled(2);
        w.replicas.push(warm(5, "old", ContainerState::Paused));
        w.replicas.push(warm(6, "old", ContainerState::Running));
        w.desired = 2;
        let p = w.plan();
        let outdated = count(&p, |a| {
            matches!(
                a,
                Action::RemoveWarm {
                    reason: WarmRemoval::Outdated,
                    ..
                }
            )
        });
        assert_eq!(outdated, 2);
        assert_eq!(count(&p, |a| matches!(a, Action::Take { .. })), 0);
        assert_eq!(creates(&p), 1, "a cold create");
        assert_eq!(warm_creates(&p), 2);
    }

    #[test]
    fn a_warm_container_that_exited_is_removed_and_refilled_after_a_back_off() {
        let mut w = pooled(1);
        let mut dead = warm(5, HASH, ContainerState::Exited);
        dead.ips.clear();
        w.replicas.push(dead);
        let p = w.plan();
        assert_eq!(
            count(&p, |a| matches!(
                a,
                Action::RemoveWarm {
                    reason: WarmRemoval::Broken,
                    ..
                }
            )),
            1
        );
        // The executor counted its failure when it removed it.
        let policy = w.policy;
        w.memory.warm.failed(w.t0, &policy);
        w.memory.warm.failed(w.t0, &policy);
        w.replicas.retain(|r| !r.is_warm());
        let p = w.plan();
        assert_eq!(warm_creates(&p), 0, "backing off");
        assert_eq!(p.requeue_after, Some(policy.delay(2)));
        w.at = policy.delay(2);
        assert_eq!(warm_creates(&w.plan()), 1);
    }

    #[test]
    fn a_warm_container_whose_port_never_answers_is_removed_at_the_progress_deadline() {
        let mut w = pooled(1);
        let deadline = w.spec.rollout.progress_deadline.get();
        let mut silent = warm(5, HASH, ContainerState::Running);
        silent.created_at_ns = w.now().unix_ns;
        w.replicas.push(silent);
        let never_answered = |p: &Plan| {
            count(p, |a| {
                matches!(
                    a,
                    Action::RemoveWarm {
                        reason: WarmRemoval::NeverAnswered,
                        ..
                    }
                )
            })
        };
        w.at = deadline - Duration::from_secs(1);
        let p = w.plan();
        assert_eq!(never_answered(&p), 0, "still within its deadline");
        assert_eq!(p.requeue_after, Some(ACTIVE_REQUEUE), "its port is polled");
        w.at = deadline;
        let p = w.plan();
        assert_eq!(never_answered(&p), 1, "{:?}", p.actions);
        assert_eq!(p.warm.warming, 0, "no longer counted");
        // Its removal counts toward the refill's back-off: a second one in a row
        // holds the refill planned beside it.
        let policy = w.policy;
        w.memory.warm.failed(w.t0, &policy);
        let p = w.plan();
        assert_eq!(warm_creates(&p), 0, "{:?}", p.actions);
        // One that answers in time is paused, not removed.
        w.answering.insert(ContainerId("warm05".into()));
        let p = w.plan();
        assert_eq!(never_answered(&p), 0);
        assert_eq!(count(&p, |a| matches!(a, Action::Pause { .. })), 1);
    }

    // Regression: a warm container listed before its create call returned was
    // counted twice (listed, and in flight), and a fresh one was removed as excess.
    #[test]
    fn a_warm_container_listed_before_its_create_returns_is_counted_once() {
        let mut w = pooled(2);
        w.replicas.push(warm(5, HASH, ContainerState::Running));
        w.replicas.push(warm(6, HASH, ContainerState::Running));
        w.memory.warm.creating.insert("w-warm-00006".into(), w.t0);
        let p = w.plan();
        assert_eq!(
            count(&p, |a| matches!(a, Action::RemoveWarm { .. })),
            0,
            "{:?}",
            p.actions
        );
        assert_eq!(warm_creates(&p), 0);
        assert_eq!(p.warm.warming, 2);
    }

    // Regression: a warm container listed paused while its pause call had not
    // returned was counted nowhere: a refill was created, and then one removed.
    #[test]
    fn a_warm_container_listed_paused_before_its_pause_returns_still_counts() {
        let mut w = pooled(1);
        w.replicas.push(warm(5, HASH, ContainerState::Paused));
        w.memory
            .warm
            .busy
            .insert(ContainerId("warm05".into()), Busy::Pausing);
        let p = w.plan();
        assert_eq!(warm_creates(&p), 0, "{:?}", p.actions);
        assert_eq!((p.warm.ready, p.warm.warming), (0, 1));
        w.desired = 2;
        assert_eq!(
            count(&w.plan(), |a| matches!(a, Action::Take { .. })),
            0,
            "not taken before its pause is done"
        );
    }

    // Regression: the back-off of a broken warm container was counted when it was
    // removed, after the pass that removed it had already planned its refill.
    #[test]
    fn a_second_broken_warm_container_holds_the_refill_planned_with_its_removal() {
        let mut w = pooled(1);
        let policy = w.policy;
        w.memory.warm.failed(w.t0, &policy);
        let mut dead = warm(5, HASH, ContainerState::Exited);
        dead.ips.clear();
        w.replicas.push(dead);
        let p = w.plan();
        assert_eq!(
            count(&p, |a| matches!(
                a,
                Action::RemoveWarm {
                    reason: WarmRemoval::Broken,
                    ..
                }
            )),
            1
        );
        assert_eq!(warm_creates(&p), 0, "{:?}", p.actions);
        assert_eq!(p.requeue_after, Some(policy.delay(2)));
    }

    #[test]
    fn beyond_its_size_the_warming_ones_go_first_then_the_newest() {
        let mut w = pooled(1);
        w.replicas.push(warm(5, HASH, ContainerState::Paused));
        w.replicas.push(warm(6, HASH, ContainerState::Paused));
        w.replicas.push(warm(7, HASH, ContainerState::Running));
        let p = w.plan();
        let gone: Vec<&str> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::RemoveWarm {
                    name,
                    reason: WarmRemoval::Excess,
                    ..
                } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(gone, ["w-warm-00007", "w-warm-00006"]);
        assert_eq!((p.warm.ready, p.warm.warming), (1, 0));
    }

    #[test]
    fn the_pool_is_never_counted_nor_put_in_rotation() {
        let mut w = pooled(2);
        w.replicas.push(warm(5, HASH, ContainerState::Paused));
        w.replicas.push(warm(6, HASH, ContainerState::Running));
        w.answering.insert(ContainerId("warm06".into()));
        let p = w.plan();
        assert_eq!((p.counts.current, p.counts.ready), (1, 1));
        assert_eq!(p.replicas.len(), 1);
        assert_eq!(count(&p, |a| matches!(a, Action::AssignSlot { .. })), 0);
        assert_eq!(count(&p, |a| matches!(a, Action::Remove { .. })), 0);
    }

    #[test]
    fn refills_wait_while_creates_are_held_and_stay_within_the_parallel_bound() {
        let mut w = pooled(2);
        w.memory.creates_held_until = Some(w.t0 + Duration::from_secs(5));
        assert_eq!(warm_creates(&w.plan()), 0);
        let spec = testing::spec().lb().autoscale(1, 20).warm_pool(12).build();
        let mut w = World::new(spec).with_slots(vec![free_slot(1)]);
        w.desired = 1;
        let p = w.plan();
        assert_eq!(creates(&p), 1);
        assert_eq!(
            warm_creates(&p),
            7,
            "8 in flight at most, the replica's first"
        );
    }
}
