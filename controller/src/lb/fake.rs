//! An in-memory [`LoadBalancer`] for unit tests of whole controller passes: HAProxy
//! backends of `slotN` servers, changed exactly as the runtime-API commands of
//! [`crate::lb::haproxy::balancer`] change them.
//!
//! - `assign`: `state maint`, `weight 0`, `addr` (out of rotation, pointed at the replica);
//! - `enable`: `weight`, `maxconn`, (`health up` with checks), `state ready`;
//! - `reconfigure`: `weight`, `maxconn`; `drain`: `state drain`;
//! - `suspend`: `state maint`, `weight 0` (the address stays);
//! - `release`: `state maint`, `weight 0`, address cleared.
//!
//! A server is UP when it is in rotation (ready or drain) and, with health checks on,
//! its address belongs to a container the [`FakeRuntime`] says answers (or the health
//! a test set for that address). Sessions per server are set by the test, to hold a
//! drain open; the backend's load is the test's script, for the autoscaler.
//!
//! Managed mode by default: `configure` creates each service's backend with the pool
//! [`crate::lb::haproxy::config::slots_for`] gives it, grows a pool that is too small (a reload, reported as
//! [`PoolGrown`]) and drops the backends no service names; [`FakeBalancer::reloads`]
//! counts what a managed HAProxy would reload for. [`FakeBalancer::external`] is an
//! external HAProxy instead: its backends are declared up front and `configure`
//! changes nothing.
//!
//! Scripting: [`FakeBalancer::restart`] (HAProxy lost its runtime state: every slot
//! free, [`LoadBalancer::restarts`] bumped), [`FakeBalancer::set_reachable`],
//! [`FakeBalancer::refuse_next`], and operator commands that take a server out of
//! rotation behind dockscale's back. Every call and scripted change goes to the
//! [`Journal`] shared with the fake runtime, in order; [`rotation_violations`] replays
//! it to check that no container was stopped while its server was in rotation.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::lb::haproxy::config::{pool_for, slots_needed, SLOT_PREFIX};
use crate::lb::{LbError, LbErrorKind, LoadBalancer, MemberCounts};
use crate::model::backend::ServerCounters;
use crate::model::backend::{Admin, Backend, BackendLoad, Holds, PoolGrown, Slot};
use crate::runtime::fake::{Call, FakeRuntime, Journal};
use crate::spec::{ScaledService, ServerOptions};

/// One call to the load balancer, or one change from outside, as journaled.
#[derive(Clone, Debug, PartialEq)]
pub enum LbCall {
    /// The backends asked for.
    Configure(Vec<String>),
    Backend(String),
    Load(String),
    Assign {
        backend: String,
        slot: String,
        addr: SocketAddrV4,
    },
    Enable {
        backend: String,
        slot: String,
    },
    Reconfigure {
        backend: String,
        slot: String,
    },
    Drain {
        backend: String,
        slot: String,
    },
    Suspend {
        backend: String,
        slot: String,
    },
    Release {
        backend: String,
        slot: String,
    },
    /// The connections to a vanished replica's address cut.
    Sever {
        addr: SocketAddrV4,
    },
    /// HAProxy restarted: every slot free.
    Restarted,
    /// A reload dropped these backends (managed mode: no service names them).
    BackendsRemoved(Vec<String>),
    /// Someone else set a server's state (`disable server`, `set server ... state`).
    Operator {
        backend: String,
        slot: String,
        admin: Admin,
    },
}

impl LbCall {
    /// Whether the call changes a server (what HAProxy's `set server` commands do).
    pub fn is_command(&self) -> bool {
        matches!(
            self,
            LbCall::Assign { .. }
                | LbCall::Enable { .. }
                | LbCall::Reconfigure { .. }
                | LbCall::Drain { .. }
                | LbCall::Suspend { .. }
                | LbCall::Release { .. }
        )
    }

    /// The slot a command is about.
    pub fn slot(&self) -> Option<(&str, &str)> {
        match self {
            LbCall::Assign { backend, slot, .. }
            | LbCall::Enable { backend, slot }
            | LbCall::Reconfigure { backend, slot }
            | LbCall::Drain { backend, slot }
            | LbCall::Suspend { backend, slot }
            | LbCall::Release { backend, slot }
            | LbCall::Operator { backend, slot, .. } => Some((backend, slot)),
            _ => None,
        }
    }
}

/// One server slot as the fake HAProxy keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeSlot {
    pub name: String,
    pub addr: Option<SocketAddrV4>,
    pub admin: Admin,
    pub weight: u32,
    pub maxconn: Option<u32>,
    pub check: bool,
    /// Sessions being served and queued on this server.
    pub sessions: u32,
    /// Its cumulative counters, as a test scripts them.
    pub counters: ServerCounters,
}

impl FakeSlot {
    fn free(n: u32) -> Self {
        FakeSlot {
            name: format!("{SLOT_PREFIX}{n}"),
            addr: None,
            admin: Admin::Maint,
            weight: 0,
            maxconn: None,
            check: true,
            sessions: 0,
            counters: ServerCounters::default(),
        }
    }

    pub fn in_rotation(&self) -> bool {
        self.admin != Admin::Maint && self.addr.is_some()
    }
}

struct Haproxy {
    backends: BTreeMap<String, Vec<FakeSlot>>,
    /// External mode: the user's configuration declares the backends; `configure`
    /// changes nothing.
    external: bool,
    reachable: bool,
    refuse: u32,
    load: BTreeMap<String, BackendLoad>,
    /// Requests held per backend (scale to zero), as a test scripts them.
    holds: BTreeMap<String, Holds>,
    /// Health a test set for an address, over what the runtime says.
    health: BTreeMap<SocketAddrV4, bool>,
    configures: usize,
    /// Configurations that changed HAProxy's shape (backends added or removed, a pool
    /// grown): what the managed HAProxy reloads for.
    reloads: usize,
    /// Servers ready and UP per backend after each command.
    ready_history: Vec<(Instant, String, usize)>,
}

/// The in-memory HAProxy. Share it as `Arc<FakeBalancer>`.
pub struct FakeBalancer {
    haproxy: Mutex<Haproxy>,
    runtime: Option<Arc<FakeRuntime>>,
    journal: Journal,
    restarts: watch::Sender<u64>,
}

fn unreachable() -> LbError {
    LbError::new(
        LbErrorKind::Unreachable,
        "cannot reach HAProxy's runtime API: connection refused (fake)",
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data; a test that panicked elsewhere leaves nothing half-written.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeBalancer {
    /// A balancer whose health checks ask `runtime` which addresses answer, writing to
    /// its journal.
    pub fn new(runtime: Arc<FakeRuntime>) -> Self {
        let journal = runtime.journal();
        Self::build(Some(runtime), journal)
    }

    /// An external HAProxy whose configuration declares these backends with this many
    /// slots each; `configure` only checks, like the real external mode.
    pub fn external(runtime: Arc<FakeRuntime>, backends: &[(&str, u32)]) -> Self {
        let lb = Self::new(runtime);
        {
            let mut h = lb.haproxy();
            h.external = true;
            for (name, slots) in backends {
                h.backends.insert(
                    (*name).to_owned(),
                    (1..=*slots).map(FakeSlot::free).collect(),
                );
            }
        }
        lb
    }

    /// A balancer whose servers are UP unless the test says otherwise.
    pub fn standalone() -> Self {
        Self::build(None, Journal::default())
    }

    fn build(runtime: Option<Arc<FakeRuntime>>, journal: Journal) -> Self {
        let (restarts, _) = watch::channel(0);
        FakeBalancer {
            haproxy: Mutex::new(Haproxy {
                backends: BTreeMap::new(),
                external: false,
                reachable: true,
                refuse: 0,
                load: BTreeMap::new(),
                holds: BTreeMap::new(),
                health: BTreeMap::new(),
                configures: 0,
                reloads: 0,
                ready_history: Vec::new(),
            }),
            runtime,
            journal,
            restarts,
        }
    }

    fn haproxy(&self) -> MutexGuard<'_, Haproxy> {
        lock(&self.haproxy)
    }

    pub fn journal(&self) -> Journal {
        self.journal.clone()
    }

    // --- what HAProxy has ----------------------------------------------------------

    /// The backend's slots, in order.
    pub fn slots(&self, backend: &str) -> Vec<FakeSlot> {
        self.haproxy()
            .backends
            .get(backend)
            .cloned()
            .unwrap_or_default()
    }

    pub fn backends(&self) -> Vec<String> {
        self.haproxy().backends.keys().cloned().collect()
    }

    /// Whether HAProxy would send a new session to this server now: ready and UP.
    fn serves(&self, slot: &FakeSlot, health: &BTreeMap<SocketAddrV4, bool>) -> bool {
        slot.admin == Admin::Ready && self.up(slot, health)
    }

    fn up(&self, slot: &FakeSlot, health: &BTreeMap<SocketAddrV4, bool>) -> bool {
        let Some(addr) = slot.addr.filter(|_| slot.admin != Admin::Maint) else {
            return false;
        };
        if !slot.check {
            return true;
        }
        match (health.get(&addr), &self.runtime) {
            (Some(h), _) => *h,
            (None, Some(rt)) => rt.answers(addr),
            (None, None) => true,
        }
    }

    /// The addresses HAProxy sends new sessions to: ready and UP.
    pub fn serving(&self, backend: &str) -> Vec<SocketAddrV4> {
        let h = self.haproxy();
        h.backends
            .get(backend)
            .into_iter()
            .flatten()
            .filter(|s| self.serves(s, &h.health))
            .filter_map(|s| s.addr)
            .collect()
    }

    /// The addresses in rotation at all (ready or draining), UP or not.
    pub fn in_rotation(&self, backend: &str) -> Vec<SocketAddrV4> {
        self.slots(backend)
            .into_iter()
            .filter(FakeSlot::in_rotation)
            .filter_map(|s| s.addr)
            .collect()
    }

    /// How many times `configure` was called.
    pub fn configures(&self) -> usize {
        self.haproxy().configures
    }

    /// How many configurations changed HAProxy's shape (a managed HAProxy reloads for
    /// each); a replica change never should.
    pub fn reloads(&self) -> usize {
        self.haproxy().reloads
    }

    /// The fewest and most servers ready and UP in `backend` after any command at or
    /// after `since`.
    pub fn ready_range(&self, backend: &str, since: Instant) -> Option<(usize, usize)> {
        let h = self.haproxy();
        let seen = h
            .ready_history
            .iter()
            .filter(|(at, b, _)| *at >= since && b == backend)
            .map(|(_, _, n)| *n);
        let (min, max) = seen.fold((usize::MAX, 0), |(lo, hi), n| (lo.min(n), hi.max(n)));
        (max > 0 || min != usize::MAX).then_some((min, max))
    }

    // --- scripting -----------------------------------------------------------------

    /// Sessions on the server of `addr` (a drain waits for them).
    /// Adds to the counters of the server pointing at `addr` (the requests it answered,
    /// the errors among them), as HAProxy's `show stat` would count them.
    pub fn count(&self, addr: SocketAddrV4, responses: u64, http_5xx: u64, rtime_ms: u64) {
        for slots in self.haproxy().backends.values_mut() {
            for s in slots.iter_mut().filter(|s| s.addr == Some(addr)) {
                s.counters.responses += responses;
                s.counters.http_5xx += http_5xx;
                s.counters.rtime_ms = rtime_ms;
            }
        }
    }

    pub fn set_sessions(&self, addr: SocketAddrV4, sessions: u32) {
        for slots in self.haproxy().backends.values_mut() {
            for s in slots.iter_mut().filter(|s| s.addr == Some(addr)) {
                s.sessions = sessions;
            }
        }
    }

    /// The health HAProxy's checks report for `addr`, over the runtime's answer;
    /// `None` goes back to the runtime's.
    pub fn set_health(&self, addr: SocketAddrV4, up: Option<bool>) {
        let mut h = self.haproxy();
        match up {
            Some(up) => h.health.insert(addr, up),
            None => h.health.remove(&addr),
        };
    }

    /// What `holds` reports for the backend from now on.
    pub fn set_holds(&self, backend: &str, holds: Holds) {
        self.haproxy().holds.insert(backend.to_owned(), holds);
    }

    /// What `load` reports for the backend from now on.
    pub fn set_load(&self, backend: &str, load: BackendLoad) {
        self.haproxy().load.insert(backend.to_owned(), load);
    }

    /// HAProxy restarted without its runtime state: every slot is free again (its
    /// configuration declares them so), and the restart is announced.
    pub fn restart(&self) {
        self.journal.record(Call::Lb(LbCall::Restarted));
        {
            let mut h = self.haproxy();
            for slots in h.backends.values_mut() {
                let n = slots.len();
                *slots = (1..=n as u32).map(FakeSlot::free).collect();
            }
            h.record_ready(self);
        }
        self.restarts.send_modify(|n| *n += 1);
    }

    /// While unreachable, every call fails as a refused connection does.
    pub fn set_reachable(&self, reachable: bool) {
        self.journal.record(Call::Outside(format!(
            "haproxy {}",
            if reachable {
                "reachable"
            } else {
                "unreachable"
            }
        )));
        self.haproxy().reachable = reachable;
    }

    /// The next `n` server commands are refused.
    pub fn refuse_next(&self, n: u32) {
        self.haproxy().refuse += n;
    }

    /// An operator sets a server's state by hand (`disable server`, `set server ...
    /// state drain`), keeping its weight.
    pub fn operator_sets(&self, backend: &str, slot: &str, admin: Admin) {
        self.journal.record(Call::Lb(LbCall::Operator {
            backend: backend.to_owned(),
            slot: slot.to_owned(),
            admin,
        }));
        let mut h = self.haproxy();
        if let Some(s) = h
            .backends
            .get_mut(backend)
            .and_then(|b| b.iter_mut().find(|s| s.name == slot))
        {
            s.admin = admin;
        }
        h.record_ready(self);
    }

    /// Applies a server command as HAProxy would, or fails as it would.
    fn command(&self, call: LbCall, apply: impl FnOnce(&mut FakeSlot)) -> Result<(), LbError> {
        self.journal.record(Call::Lb(call.clone()));
        let mut h = self.haproxy();
        if !h.reachable {
            return Err(unreachable());
        }
        if h.refuse > 0 {
            h.refuse -= 1;
            return Err(LbError::new(
                LbErrorKind::Refused,
                format!("HAProxy refused {call:?} (scripted)"),
            ));
        }
        let Some((backend, slot)) = call.slot() else {
            return Ok(());
        };
        let Some(slots) = h.backends.get_mut(backend) else {
            return Err(LbError::new(
                LbErrorKind::BackendMissing,
                format!("HAProxy has no backend `{backend}`"),
            ));
        };
        let Some(s) = slots.iter_mut().find(|s| s.name == slot) else {
            return Err(LbError::new(
                LbErrorKind::ServerMissing,
                format!("no such server `{backend}/{slot}`"),
            ));
        };
        apply(s);
        h.record_ready(self);
        Ok(())
    }
}

impl Haproxy {
    fn record_ready(&mut self, lb: &FakeBalancer) {
        let now = Instant::now();
        let counts: Vec<(String, usize)> = self
            .backends
            .iter()
            .map(|(b, slots)| {
                let n = slots.iter().filter(|s| lb.serves(s, &self.health)).count();
                (b.clone(), n)
            })
            .collect();
        for (b, n) in counts {
            self.ready_history.push((now, b, n));
        }
    }
}

/// Replays the journal: every stop of a container whose address a server still had
/// in rotation (ready or draining) at that moment, described. Empty when invariant 2
/// held throughout.
pub fn rotation_violations(journal: &Journal) -> Vec<String> {
    let mut slots: BTreeMap<(String, String), (Option<SocketAddrV4>, Admin)> = BTreeMap::new();
    let mut violations = Vec::new();
    for entry in journal.entries() {
        match &entry.call {
            Call::Lb(LbCall::Restarted) => slots.clear(),
            Call::Lb(LbCall::BackendsRemoved(gone)) => slots.retain(|(b, _), _| !gone.contains(b)),
            Call::Lb(call) => {
                let Some((b, s)) = call.slot() else { continue };
                let key = (b.to_owned(), s.to_owned());
                let (addr, admin) = slots.get(&key).copied().unwrap_or((None, Admin::Maint));
                let next = match call {
                    LbCall::Assign { addr, .. } => (Some(*addr), Admin::Maint),
                    LbCall::Enable { .. } => (addr, Admin::Ready),
                    LbCall::Drain { .. } => (addr, Admin::Drain),
                    LbCall::Suspend { .. } => (addr, Admin::Maint),
                    LbCall::Release { .. } => (None, Admin::Maint),
                    LbCall::Operator { admin, .. } => (addr, *admin),
                    _ => (addr, admin),
                };
                slots.insert(key, next);
            }
            Call::Stop { name, addrs, .. } => {
                let ips: Vec<Ipv4Addr> = addrs.clone();
                for ((b, s), (addr, admin)) in &slots {
                    if let Some(addr) = addr.filter(|a| ips.contains(a.ip())) {
                        if *admin != Admin::Maint {
                            violations.push(format!(
                                "{name} stopped at {:?} while {b}/{s} ({addr}) was {admin:?}",
                                entry.at
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    violations
}

impl LoadBalancer for FakeBalancer {
    async fn configure(
        &self,
        services: &[ScaledService],
        members: &MemberCounts,
        _frontends: &[crate::spec::frontend::Frontend],
    ) -> Result<Vec<PoolGrown>, LbError> {
        let wanted: Vec<&ScaledService> = services
            .iter()
            .filter(|s| s.spec.load_balancer.is_some())
            .collect();
        self.journal.record(Call::Lb(LbCall::Configure(
            wanted
                .iter()
                .filter_map(|s| s.spec.load_balancer.as_ref())
                .map(|l| l.backend.to_string())
                .collect(),
        )));
        let mut h = self.haproxy();
        h.configures += 1;
        if !h.reachable {
            return Err(unreachable());
        }
        if h.external {
            return Ok(Vec::new());
        }
        let before: Vec<String> = h.backends.keys().cloned().collect();
        let mut grown = Vec::new();
        let mut backends = BTreeMap::new();
        for service in wanted {
            let Some(lb) = &service.spec.load_balancer else {
                continue;
            };
            let name = lb.backend.to_string();
            let mut slots = h.backends.remove(&name).unwrap_or_default();
            let members = members.get(service.name()).copied().unwrap_or(0);
            let needed = slots_needed(service) + members;
            let have = slots.len() as u32;
            if have == 0 || have < needed {
                let to = pool_for(needed).max(have);
                slots.extend((have + 1..=to).map(FakeSlot::free));
                if have > 0 {
                    grown.push(PoolGrown {
                        service: service.name().to_owned(),
                        backend: name.clone(),
                        from: have,
                        to,
                        needed,
                    });
                }
            }
            backends.insert(name, slots);
        }
        // Managed mode: a backend no service names is gone after the reload.
        if !before.iter().eq(backends.keys()) || !grown.is_empty() {
            h.reloads += 1;
        }
        let removed: Vec<String> = before
            .into_iter()
            .filter(|b| !backends.contains_key(b))
            .collect();
        if !removed.is_empty() {
            self.journal
                .record(Call::Lb(LbCall::BackendsRemoved(removed)));
        }
        h.backends = backends;
        Ok(grown)
    }

    async fn backend(&self, backend: &str) -> Result<Backend, LbError> {
        self.journal
            .record(Call::Lb(LbCall::Backend(backend.to_owned())));
        let h = self.haproxy();
        if !h.reachable {
            return Err(unreachable());
        }
        let Some(slots) = h.backends.get(backend) else {
            let hint = if h.external {
                " (declare it in your haproxy.cfg with `slotN` servers: see manifests/haproxy.cfg)"
            } else {
                ""
            };
            return Err(LbError::new(
                LbErrorKind::BackendMissing,
                format!("HAProxy has no backend `{backend}`{hint}"),
            ));
        };
        if slots.is_empty() {
            return Err(LbError::new(
                LbErrorKind::NoSlots,
                format!("backend `{backend}` has no `slotN` servers for replicas"),
            ));
        }
        Ok(Backend {
            slots: slots
                .iter()
                .map(|s| Slot {
                    name: s.name.clone(),
                    addr: s.addr,
                    admin: s.admin,
                    up: self.up(s, &h.health),
                    weight: s.weight,
                    sessions: s.sessions,
                })
                .collect(),
            counters: slots.iter().map(|s| (s.name.clone(), s.counters)).collect(),
        })
    }

    async fn assign(&self, backend: &str, slot: &str, addr: SocketAddrV4) -> Result<(), LbError> {
        let call = LbCall::Assign {
            backend: backend.to_owned(),
            slot: slot.to_owned(),
            addr,
        };
        self.command(call, |s| {
            s.admin = Admin::Maint;
            s.weight = 0;
            s.addr = Some(addr);
            s.sessions = 0;
        })
    }

    async fn enable(
        &self,
        backend: &str,
        slot: &str,
        options: &ServerOptions,
    ) -> Result<(), LbError> {
        let call = LbCall::Enable {
            backend: backend.to_owned(),
            slot: slot.to_owned(),
        };
        self.command(call, |s| {
            s.weight = u32::from(options.weight);
            s.maxconn = options.maxconn.or(s.maxconn);
            s.check = options.check;
            s.admin = Admin::Ready;
        })
    }

    async fn reconfigure(
        &self,
        backend: &str,
        slot: &str,
        options: &ServerOptions,
    ) -> Result<(), LbError> {
        let call = LbCall::Reconfigure {
            backend: backend.to_owned(),
            slot: slot.to_owned(),
        };
        self.command(call, |s| {
            s.weight = u32::from(options.weight);
            s.maxconn = options.maxconn.or(s.maxconn);
        })
    }

    async fn drain(&self, backend: &str, slot: &str) -> Result<(), LbError> {
        let call = LbCall::Drain {
            backend: backend.to_owned(),
            slot: slot.to_owned(),
        };
        self.command(call, |s| s.admin = Admin::Drain)
    }

    async fn suspend(&self, backend: &str, slot: &str) -> Result<(), LbError> {
        let call = LbCall::Suspend {
            backend: backend.to_owned(),
            slot: slot.to_owned(),
        };
        self.command(call, |s| {
            s.admin = Admin::Maint;
            s.weight = 0;
        })
    }

    async fn release(&self, backend: &str, slot: &str) -> Result<(), LbError> {
        let call = LbCall::Release {
            backend: backend.to_owned(),
            slot: slot.to_owned(),
        };
        self.command(call, |s| {
            s.admin = Admin::Maint;
            s.weight = 0;
            s.addr = None;
        })
    }

    async fn sever(&self, addr: SocketAddrV4) -> Result<usize, LbError> {
        // Host-side: no HAProxy command, nothing refused; there are no real sockets.
        self.journal.record(Call::Lb(LbCall::Sever { addr }));
        Ok(0)
    }

    async fn load(&self, backend: &str) -> Result<BackendLoad, LbError> {
        self.journal
            .record(Call::Lb(LbCall::Load(backend.to_owned())));
        let h = self.haproxy();
        if !h.reachable {
            return Err(unreachable());
        }
        let Some(slots) = h.backends.get(backend) else {
            return Err(LbError::new(
                LbErrorKind::BackendMissing,
                format!("HAProxy has no backend `{backend}`"),
            ));
        };
        Ok(h.load.get(backend).copied().unwrap_or_else(|| BackendLoad {
            scur: slots.iter().map(|s| f64::from(s.sessions)).sum(),
            ..BackendLoad::default()
        }))
    }

    async fn holds(&self) -> Result<BTreeMap<String, Holds>, LbError> {
        let h = self.haproxy();
        if !h.reachable {
            return Err(unreachable());
        }
        Ok(h.holds.clone())
    }

    async fn healthy(&self) -> Option<bool> {
        Some(self.haproxy().reachable)
    }

    fn restarts(&self) -> Option<watch::Receiver<u64>> {
        Some(self.restarts.subscribe())
    }
}
