//! A load balancer's backend as the planner, the autoscaler and the load-balancer
//! adapters all see it: slots (servers) with their state, and the backend's load.
//! Plain data: this module calls nothing and decides nothing.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

/// One HAProxy server slot of the service's backend, as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    /// `None` while the slot points nowhere (0.0.0.0 or port 0).
    pub addr: Option<SocketAddrV4>,
    pub admin: Admin,
    /// HAProxy considers it UP (operational state running, checks passing).
    pub up: bool,
    pub weight: u32,
    /// Sessions being served and requests queued on this server.
    pub sessions: u32,
}

/// A server's administrative state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admin {
    Ready,
    Drain,
    Maint,
}

/// The observed backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub slots: Vec<Slot>,
    /// Each server's cumulative counters, by slot name (what a canary compares).
    pub counters: BTreeMap<String, ServerCounters>,
}

/// A server's cumulative counters, as `show stat` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerCounters {
    /// HTTP responses of every class (`hrsp_1xx` .. `hrsp_other`).
    pub responses: u64,
    /// Responses with a 5xx status (`hrsp_5xx`).
    pub http_5xx: u64,
    /// Connection errors (`econ`) and response errors (`eresp`).
    pub failed: u64,
    /// Mean response time over the last 1024 requests, in milliseconds (`rtime`).
    pub rtime_ms: u64,
    /// Failed health checks (`chkfail`).
    pub check_failures: u64,
}

impl ServerCounters {
    /// What happened between `start` and `self`; a counter that went down (HAProxy
    /// reloaded, the slot was reassigned) counts from zero.
    pub fn since(self, start: ServerCounters) -> ServerCounters {
        let d = |now: u64, then: u64| if now >= then { now - then } else { now };
        ServerCounters {
            responses: d(self.responses, start.responses),
            http_5xx: d(self.http_5xx, start.http_5xx),
            failed: d(self.failed, start.failed),
            rtime_ms: self.rtime_ms,
            check_failures: d(self.check_failures, start.check_failures),
        }
    }
}

/// What the backend is carrying right now, for the autoscaler.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BackendLoad {
    /// Requests being served by the backend's servers.
    pub scur: f64,
    /// Requests queued in the backend (every server at its `maxconn`).
    pub qcur: f64,
    /// Average queue time over the last 1024 requests, in milliseconds.
    pub qtime_ms: f64,
    /// Average backend response time over the last 1024 requests, in milliseconds
    /// (HAProxy's `rtime`: time to the first byte of the answer).
    pub rtime_ms: f64,
    /// Sessions per second over the last second (HAProxy's `rate`). In HTTP mode every
    /// request is a stream of its own on the backend, so this is the request rate.
    pub rate: f64,
    /// Requests the backend received since HAProxy started (`req_tot`, or `stot` for
    /// a TCP backend), held ones included: any change is a request, however short it
    /// was and whether or not a sample saw it in flight (what scale to zero reads).
    pub requests: u64,
}

/// Requests HAProxy holds for one backend while no server is usable (scale to zero),
/// as its Lua action counts them. Counters are cumulative since HAProxy's start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Holds {
    /// Held right now.
    pub waiting: u32,
    /// Held since HAProxy started.
    pub held: u64,
    /// Released to a server that became usable.
    pub released: u64,
    /// Answered 503 (with `Retry-After`) after the activation timeout.
    pub timed_out: u64,
    /// How long each request released since the last reading was held, in seconds
    /// (the reading empties the list on HAProxy's side).
    pub hold_seconds: Vec<f64>,
}

/// A backend whose slot pool was too small for the replicas its service may run at
/// once, grown by a reload (managed mode). Pools never shrink while HAProxy runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolGrown {
    pub service: String,
    pub backend: String,
    pub from: u32,
    pub to: u32,
    /// Replicas the service may run at once (count or maximum, plus the surge).
    pub needed: u32,
}
