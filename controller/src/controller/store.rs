//! What the controller knows of its containers between two full Docker lists, kept
//! the way a Kubernetes informer keeps its store.
//!
//! A full list (`GET /containers/json`, every owned container) costs the engine work
//! in proportion to the containers it has, and a burst of creates triggers a reconcile
//! pass per finished create: listing every time competes with the creates themselves
//! for the engine (on the 2-core bench machine, a list every 120 ms made a burst of 50
//! creates 5–8% slower). So the store is filled by a full list when it is not known to
//! be complete (at start, at every resync, after the event stream broke), and between
//! lists only the containers something happened to are read again, one inspect each:
//! those a Docker event named and those dockscale just created or removed. A `die`
//! event is applied as it comes (the process is gone), without a read. A change that
//! neither an event nor dockscale caused is seen at the next resync.
//!
//! The store also keeps what the events said of a container's end, which no list or
//! inspect can tell: whether someone signalled it before it died (`kill`), or the
//! kernel OOM-killed it, so that only a replica's own exit counts as a crash.
//!
//! Hand-started members (`dockscale.join`) are kept apart from the replicas: they are
//! few, so any event of one (or a full list) lists them all again with one filtered
//! call, and a member's `die` makes it exited at once, as a replica's does.
//!
//! This module decides what to read; the controller does the reading.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::model::member::Member;
use crate::model::replica::{ContainerId, ContainerState, ExitCause, Replica};

/// Above this many containers to read again, one list is cheaper than the inspects.
pub const RELIST_ABOVE: usize = 16;

/// A `kill` explains a `die` that follows within this long (`docker stop` waits the
/// grace period before its SIGKILL). An older one was a signal the replica survived
/// (a SIGHUP to reload, say).
pub const SIGNAL_EXPLAINS_EXIT_FOR: Duration = Duration::from_secs(60);

/// An exit a read found before its `die` event (the engine's answer to a create or an
/// inspect can overtake the event stream) is explained by the event within this long.
pub const EXIT_EVENT_GRACE: Duration = Duration::from_secs(1);

/// What an event said of a container before its `die`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    Killed(Instant),
    OutOfMemory,
}

/// What the next pass has to read from Docker before it plans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refresh {
    /// Nothing changed since the last read.
    Nothing,
    /// These containers changed; the rest of the store is current.
    Inspect(Vec<ContainerId>),
    /// The store is incomplete or stale: list everything.
    List,
}

/// The owned containers as last read.
#[derive(Debug, Default)]
pub struct ReplicaStore {
    replicas: BTreeMap<ContainerId, Replica>,
    /// A full list was read and no event was lost since.
    complete: bool,
    /// Containers changed since they were last read.
    dirty: BTreeSet<ContainerId>,
    /// Signals and OOM kills seen since a container last started.
    signals: BTreeMap<ContainerId, Signal>,
    /// Exits reported by `die` events, with their cause. They win over a list that still
    /// shows the container running a moment after its process died.
    exits: BTreeMap<ContainerId, (Option<i64>, ExitCause)>,
    /// Exits a read found without their `die` event yet, since when.
    unexplained: BTreeMap<ContainerId, Instant>,
    /// Unix ns since the event stream has been connected without a break; `None`
    /// while it is down. A container created since then has its `die` delivered.
    events_since_ns: Option<i64>,
    /// Containers read running since the stream was connected: their `die` is
    /// delivered too (an adopted replica that crashes later, say).
    seen_running: BTreeSet<ContainerId>,
    /// The hand-started members, as last listed.
    members: BTreeMap<ContainerId, Member>,
    /// Something happened to a member (or the store is incomplete): list them again.
    members_stale: bool,
    /// Members whose `die` was seen since they last started.
    member_exits: BTreeSet<ContainerId>,
}

impl ReplicaStore {
    /// An empty store: the first pass lists.
    pub fn new() -> Self {
        ReplicaStore {
            members_stale: true,
            ..Self::default()
        }
    }

    /// The next pass lists everything (a resync, a broken event stream, an error).
    pub fn invalidate(&mut self) {
        self.complete = false;
        self.members_stale = true;
    }

    /// Whether the members are to be listed again now. Taking it clears it.
    pub fn take_member_list(&mut self) -> bool {
        std::mem::take(&mut self.members_stale)
    }

    /// The members, listed: the store's members become exactly these.
    pub fn members_listed(&mut self, members: Vec<Member>) {
        self.members = members.into_iter().map(|m| (m.id.clone(), m)).collect();
        let known = &self.members;
        self.member_exits.retain(|id| known.contains_key(id));
    }

    /// Something happened to a member: the next pass lists the members again.
    pub fn member_touched(&mut self) {
        self.members_stale = true;
    }

    /// A member's `die`: out of rotation now, whatever a list a moment later says.
    pub fn member_exited(&mut self, id: &ContainerId) {
        self.member_exits.insert(id.clone());
        self.members_stale = true;
    }

    /// A member (re)started.
    pub fn member_started(&mut self, id: &ContainerId) {
        self.member_exits.remove(id);
        self.members_stale = true;
    }

    /// The service a known member joins.
    pub fn member_service_of(&self, id: &ContainerId) -> Option<&str> {
        self.members.get(id).map(|m| m.service.as_str())
    }

    /// The members as the planner reads them: one whose `die` was seen is exited,
    /// without an address.
    pub fn members(&self) -> Vec<Member> {
        self.members
            .values()
            .map(|m| {
                let mut m = m.clone();
                if self.member_exits.contains(&m.id) {
                    m.state = ContainerState::Exited;
                    m.ips.clear();
                }
                m
            })
            .collect()
    }

    /// The event stream is connected (again) from `unix_ns` on.
    pub fn events_connected(&mut self, unix_ns: i64) {
        self.events_since_ns = Some(unix_ns);
    }

    /// The event stream broke: what happened meanwhile is learnt from the next list,
    /// without events.
    pub fn events_lost(&mut self) {
        self.events_since_ns = None;
        self.seen_running.clear();
        self.invalidate();
    }

    /// A container was read: while events flow, one read running will have its `die`.
    fn saw(&mut self, r: &Replica) {
        if self.events_since_ns.is_some() && r.state == ContainerState::Running {
            self.seen_running.insert(r.id.clone());
        }
    }

    /// Something happened to this container: read it again before the next plan.
    pub fn touch(&mut self, id: ContainerId) {
        self.dirty.insert(id);
    }

    /// Someone sent the container a signal (`kill` event: `docker kill`, `docker stop`,
    /// `docker rm -f`, the engine stopping, or dockscale's own stop).
    pub fn signalled(&mut self, id: &ContainerId, now: Instant) {
        if self.signals.get(id) != Some(&Signal::OutOfMemory) {
            self.signals.insert(id.clone(), Signal::Killed(now));
        }
    }

    /// The kernel OOM-killed a process of the container (`oom` event).
    pub fn oom_killed(&mut self, id: &ContainerId) {
        self.signals.insert(id.clone(), Signal::OutOfMemory);
    }

    /// The container (re)started: what was said of its last end no longer applies.
    pub fn started(&mut self, id: ContainerId) {
        self.signals.remove(&id);
        self.exits.remove(&id);
        self.touch(id);
    }

    /// Docker reported the container's process gone (`die`): it is exited from now on,
    /// without reading it again (an inspect waits on the container's lock, which the
    /// engine holds while it tears the container down). Its cause is what the events
    /// said before: a recent signal, an OOM kill, or else its own doing.
    pub fn exited(&mut self, id: &ContainerId, code: Option<i64>, now: Instant) {
        let cause = match self.signals.remove(id) {
            Some(Signal::OutOfMemory) => ExitCause::OutOfMemory,
            Some(Signal::Killed(at))
                if now.saturating_duration_since(at) <= SIGNAL_EXPLAINS_EXIT_FOR =>
            {
                ExitCause::Signalled
            }
            Some(Signal::Killed(_)) | None => ExitCause::Own,
        };
        self.exits.insert(id.clone(), (code, cause));
    }

    /// What to read now. Taking the work clears it: a change reported while the read
    /// is under way marks the container again, for the pass after.
    pub fn take_refresh(&mut self) -> Refresh {
        if !self.complete || self.dirty.len() > RELIST_ABOVE {
            self.dirty.clear();
            return Refresh::List;
        }
        if self.dirty.is_empty() {
            return Refresh::Nothing;
        }
        Refresh::Inspect(std::mem::take(&mut self.dirty).into_iter().collect())
    }

    /// A full list: the store becomes exactly that.
    pub fn listed(&mut self, replicas: Vec<Replica>) {
        for r in &replicas {
            self.saw(r);
        }
        self.replicas = replicas.into_iter().map(|r| (r.id.clone(), r)).collect();
        self.complete = true;
        let known = &self.replicas;
        self.signals.retain(|id, _| known.contains_key(id));
        self.exits.retain(|id, _| known.contains_key(id));
        self.unexplained.retain(|id, _| known.contains_key(id));
        self.seen_running.retain(|id| known.contains_key(id));
    }

    /// One container read again: `None` means it is gone.
    pub fn inspected(&mut self, id: ContainerId, replica: Option<Replica>) {
        match replica {
            Some(r) => {
                self.saw(&r);
                self.replicas.insert(id, r);
            }
            None => {
                self.replicas.remove(&id);
                self.signals.remove(&id);
                self.exits.remove(&id);
                self.unexplained.remove(&id);
                self.seen_running.remove(&id);
            }
        }
    }

    /// The name of a known container.
    pub fn name_of(&self, id: &ContainerId) -> Option<&str> {
        self.replicas.get(id).map(|r| r.name.as_str())
    }

    /// The service of a known container.
    pub fn service_of(&self, id: &ContainerId) -> Option<&str> {
        self.replicas.get(id).map(|r| r.service.as_str())
    }

    /// Every owned container, as the planner reads them at `now`: a container whose
    /// `die` was seen is exited, with the cause the events gave, whatever the last read
    /// said. One a read found exited first has no cause for a moment, while its `die`
    /// is still due (the stream was up since before it was created); after that, or
    /// when no event can come, its cause is unknown.
    pub fn replicas(&mut self, now: Instant) -> Vec<Replica> {
        let exits = &self.exits;
        self.unexplained.retain(|id, _| !exits.contains_key(id));
        let mut out = Vec::with_capacity(self.replicas.len());
        for r in self.replicas.values() {
            let mut r = r.clone();
            if let Some((code, cause)) = self.exits.get(&r.id) {
                if matches!(r.state, ContainerState::Running | ContainerState::Paused) {
                    r.state = ContainerState::Exited;
                    r.status = Replica::exited_status(*code);
                    r.ips.clear();
                }
                r.exit_cause = Some(*cause);
            } else if r.exit_cause == Some(ExitCause::Unknown) {
                let first_seen = *self.unexplained.entry(r.id.clone()).or_insert(now);
                let event_due = self
                    .events_since_ns
                    .is_some_and(|since| r.created_at_ns >= since)
                    || self.seen_running.contains(&r.id);
                if event_due && now.saturating_duration_since(first_seen) < EXIT_EVENT_GRACE {
                    r.exit_cause = None;
                }
            }
            out.push(r);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(id: &str, state: ContainerState) -> Replica {
        let mut r = crate::testing::replica(1, "h");
        r.id = ContainerId(id.to_owned());
        r.state = state;
        r
    }

    fn id(s: &str) -> ContainerId {
        ContainerId(s.to_owned())
    }

    #[test]
    fn a_new_store_lists_first_and_then_reads_nothing_until_something_happens() {
        let mut store = ReplicaStore::new();
        store.touch(id("a"));
        assert_eq!(store.take_refresh(), Refresh::List);
        store.listed(vec![replica("a", ContainerState::Running)]);
        assert_eq!(store.take_refresh(), Refresh::Nothing);
        assert_eq!(store.replicas(Instant::now()).len(), 1);
    }

    #[test]
    fn touched_containers_are_inspected_once() {
        let mut store = ReplicaStore::new();
        store.listed(vec![]);
        store.touch(id("b"));
        store.touch(id("a"));
        store.touch(id("b"));
        assert_eq!(
            store.take_refresh(),
            Refresh::Inspect(vec![id("a"), id("b")])
        );
        assert_eq!(store.take_refresh(), Refresh::Nothing);
    }

    #[test]
    fn an_inspect_updates_adds_or_removes_one_container() {
        let mut store = ReplicaStore::new();
        store.listed(vec![
            replica("a", ContainerState::Running),
            replica("b", ContainerState::Running),
        ]);
        store.inspected(id("a"), Some(replica("a", ContainerState::Exited)));
        store.inspected(id("b"), None);
        store.inspected(id("c"), Some(replica("c", ContainerState::Running)));
        let states: Vec<(String, ContainerState)> = store
            .replicas(Instant::now())
            .into_iter()
            .map(|r| (r.id.0, r.state))
            .collect();
        assert_eq!(
            states,
            vec![
                ("a".to_owned(), ContainerState::Exited),
                ("c".to_owned(), ContainerState::Running)
            ]
        );
    }

    #[test]
    fn a_die_event_makes_a_known_container_exited_without_a_read() {
        let mut store = ReplicaStore::new();
        let now = Instant::now();
        store.listed(vec![replica("a", ContainerState::Running)]);
        store.exited(&id("a"), Some(137), now);
        store.exited(&id("unknown"), Some(1), now);
        assert_eq!(store.take_refresh(), Refresh::Nothing);
        let replicas = store.replicas(Instant::now());
        assert_eq!(replicas.len(), 1);
        assert_eq!(replicas[0].state, ContainerState::Exited);
        assert_eq!(replicas[0].exit_code(), Some(137));
        assert!(replicas[0].ips.is_empty());
        // A list taken a moment later may still show it running: the event wins.
        store.listed(vec![replica("a", ContainerState::Running)]);
        assert_eq!(
            store.replicas(Instant::now())[0].state,
            ContainerState::Exited
        );
    }

    #[test]
    fn an_exit_read_before_its_die_event_waits_for_the_event_but_not_forever() {
        let mut store = ReplicaStore::new();
        let t = Instant::now();
        store.events_connected(0);
        let mut found = replica("a", ContainerState::Exited);
        found.exit_cause = Some(ExitCause::Unknown);
        store.listed(vec![found.clone()]);
        assert_eq!(store.replicas(t)[0].exit_cause, None, "its die is due");
        store.exited(&id("a"), Some(1), t);
        assert_eq!(store.replicas(t)[0].exit_cause, Some(ExitCause::Own));
        // No event comes: unknown once the grace is over.
        let mut other = found.clone();
        other.id = id("b");
        store.inspected(id("b"), Some(other));
        assert_eq!(store.replicas(t)[1].exit_cause, None);
        assert_eq!(
            store.replicas(t + EXIT_EVENT_GRACE)[1].exit_cause,
            Some(ExitCause::Unknown)
        );
        // Created before the stream was connected (an engine restart, a dockscale
        // start): no event can explain it, so it is unknown at once.
        let mut old = found;
        old.id = id("c");
        store.events_connected(i64::MAX);
        store.inspected(id("c"), Some(old));
        let causes: Vec<_> = store
            .replicas(t)
            .into_iter()
            .map(|r| r.exit_cause)
            .collect();
        assert_eq!(causes[2], Some(ExitCause::Unknown));
    }

    // Found by the in-memory scenarios: an adopted replica (created before the stream
    // was connected) that crashed was taken for an exit nobody saw when a pass woken by
    // its network `disconnect` read it before its `die` came.
    #[test]
    fn an_adopted_replica_read_running_waits_for_its_die_too() {
        let mut store = ReplicaStore::new();
        let t = Instant::now();
        store.events_connected(i64::MAX);
        store.listed(vec![replica("old", ContainerState::Running)]);
        let mut exited = replica("old", ContainerState::Exited);
        exited.exit_cause = Some(ExitCause::Unknown);
        store.inspected(id("old"), Some(exited));
        assert_eq!(store.replicas(t)[0].exit_cause, None, "its die is due");
        store.exited(&id("old"), Some(1), t);
        assert_eq!(store.replicas(t)[0].exit_cause, Some(ExitCause::Own));
    }

    #[test]
    fn the_events_before_a_die_give_its_cause() {
        let mut store = ReplicaStore::new();
        let now = Instant::now();
        let names = ["own", "killed", "oom", "old-signal", "restarted"];
        store.listed(
            names
                .iter()
                .map(|n| replica(n, ContainerState::Running))
                .collect(),
        );
        store.exited(&id("own"), Some(1), now);
        store.signalled(&id("killed"), now);
        store.exited(&id("killed"), Some(137), now + Duration::from_secs(1));
        store.oom_killed(&id("oom"));
        store.signalled(&id("oom"), now);
        store.exited(&id("oom"), Some(137), now);
        store.signalled(&id("old-signal"), now);
        store.exited(&id("old-signal"), Some(2), now + Duration::from_secs(61));
        store.signalled(&id("restarted"), now);
        store.exited(&id("restarted"), Some(143), now);
        store.started(id("restarted"));
        let causes: BTreeMap<String, Option<ExitCause>> = store
            .replicas(Instant::now())
            .into_iter()
            .map(|r| (r.id.0, r.exit_cause))
            .collect();
        assert_eq!(causes["own"], Some(ExitCause::Own));
        assert_eq!(causes["killed"], Some(ExitCause::Signalled));
        assert_eq!(causes["oom"], Some(ExitCause::OutOfMemory));
        assert_eq!(
            causes["old-signal"],
            Some(ExitCause::Own),
            "a survived SIGHUP explains nothing"
        );
        assert_eq!(causes["restarted"], None, "running again");
    }

    fn member(id: &str) -> Member {
        Member {
            id: ContainerId(id.to_owned()),
            name: format!("s-{id}"),
            service: "w".to_owned(),
            state: ContainerState::Running,
            ips: BTreeMap::from([("net".to_owned(), std::net::Ipv4Addr::new(10, 0, 0, 9))]),
            health: None,
        }
    }

    #[test]
    fn members_are_listed_first_and_again_after_an_event_of_one() {
        let mut store = ReplicaStore::new();
        assert!(store.take_member_list());
        store.members_listed(vec![member("m")]);
        assert!(!store.take_member_list());
        assert_eq!(store.member_service_of(&id("m")), Some("w"));
        store.member_touched();
        assert!(store.take_member_list());
        store.invalidate();
        assert!(store.take_member_list(), "a resync lists the members too");
    }

    #[test]
    fn a_members_die_makes_it_exited_until_it_starts_again() {
        let mut store = ReplicaStore::new();
        store.members_listed(vec![member("m")]);
        store.member_exited(&id("m"));
        // A list a moment later may still show it running: the event wins.
        store.members_listed(vec![member("m")]);
        let m = &store.members()[0];
        assert_eq!(m.state, ContainerState::Exited);
        assert!(m.ips.is_empty());
        store.member_started(&id("m"));
        assert_eq!(store.members()[0].state, ContainerState::Running);
    }

    #[test]
    fn a_list_replaces_everything_known() {
        let mut store = ReplicaStore::new();
        store.listed(vec![replica("a", ContainerState::Running)]);
        store.listed(vec![replica("b", ContainerState::Running)]);
        let ids: Vec<String> = store
            .replicas(Instant::now())
            .into_iter()
            .map(|r| r.id.0)
            .collect();
        assert_eq!(ids, vec!["b".to_owned()]);
    }

    #[test]
    fn an_invalidated_store_lists_again() {
        let mut store = ReplicaStore::new();
        store.listed(vec![]);
        store.invalidate();
        store.touch(id("a"));
        assert_eq!(store.take_refresh(), Refresh::List);
        // The list covered the touched container.
        store.listed(vec![]);
        assert_eq!(store.take_refresh(), Refresh::Nothing);
    }

    #[test]
    fn many_changes_at_once_are_one_list() {
        let mut store = ReplicaStore::new();
        store.listed(vec![]);
        for i in 0..=RELIST_ABOVE {
            store.touch(id(&format!("c{i}")));
        }
        assert_eq!(store.take_refresh(), Refresh::List);
        store.listed(vec![]);
        assert_eq!(store.take_refresh(), Refresh::Nothing);
    }
}
