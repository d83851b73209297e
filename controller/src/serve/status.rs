//! The status of each service, kept in memory and served by the HTTP API.
//!
//! Modelled on a Kubernetes Deployment's status: replica counts, conditions with a
//! reason, a message and the time they last changed, and a short list of recent events
//! (repeats of the same event are folded into a count, like `kubectl describe`).
//!
//! Each service's status, the spec errors and the engine's reachability are written by
//! the controller loop alone (the conditions as [`crate::reconcile::conditions`]
//! derives them); two controller-wide fields have writers of their own:
//! `haproxy_reachable`, by the managed HAProxy's supervisor task
//! ([`crate::lb::haproxy::balancer`]), and `standby_for`, by [`crate::app`] while it
//! waits for the claim on the engine. Readers get a snapshot. Nothing here is ever
//! written into the user's spec files.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::reconcile::Counts;

/// Events kept per service.
pub const MAX_EVENTS: usize = 50;

/// The sequence number of the last event recorded or folded, in this process (like a
/// Kubernetes `resourceVersion`: it only grows, across services, so that a watcher
/// needs one cursor, and a service removed and added again never reuses a number).
static EVENT_SEQ: AtomicU64 = AtomicU64::new(0);

fn next_event_seq() -> u64 {
    EVENT_SEQ.fetch_add(1, Ordering::Relaxed) + 1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ConditionType {
    /// At least `desired - maxUnavailable` replicas serve.
    Available,
    /// The replicas are moving toward the spec (or have reached it).
    Progressing,
    /// Replicas cannot be created or keep failing.
    ReplicaFailure,
    /// The last edit of the spec files did not validate; the previous spec is in force.
    SpecInvalid,
    /// The HAProxy backend matches the ready replicas.
    LoadBalancerSynced,
    /// A frontend's certificate files all parse and match their keys (else the last
    /// good copy of each keeps serving).
    CertificatesValid,
    /// The autoscaler has metrics to act on (false: `MetricsUnavailable`, the fallback
    /// holds the count or raises it to `fallback.replicas`).
    ScalingActive,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: ConditionType,
    pub status: bool,
    pub reason: String,
    pub message: String,
    #[serde(with = "rfc3339")]
    pub last_transition_time: SystemTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum EventType {
    Normal,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub reason: String,
    pub message: String,
    pub count: u32,
    #[serde(with = "rfc3339")]
    pub first_time: SystemTime,
    #[serde(with = "rfc3339")]
    pub last_time: SystemTime,
    /// Set anew each time the event is recorded or folded: a watcher that saw every
    /// number up to N has seen every event as it is now.
    pub seq: u64,
}

/// An event with the service it belongs to, as `/api/v1/events` lists them.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEvent {
    pub service: String,
    #[serde(flatten)]
    pub event: Event,
}

/// What the autoscaler last decided, for status.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus {
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// The signals scaled on, comma-separated (`inflight 8/replica, rtime 200ms`).
    pub target: String,
    /// The signal whose recommendation decided (`responseTimeMillis`), `None` without
    /// metrics.
    pub signal: Option<String>,
    pub demand: Option<f64>,
    pub recommendation: Option<u32>,
    pub desired: u32,
    pub reason: String,
    pub message: String,
    #[serde(with = "rfc3339::option")]
    pub last_scale_time: Option<SystemTime>,
    /// `autoscale.schedules`: the window in force and the next to open; left out
    /// without schedules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleStatus>,
}

/// The schedule windows of an autoscaled service, as of its last decision.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatus {
    /// The window whose floor is in force (the highest, when several are open).
    pub active: Option<ActiveSchedule>,
    /// The next window to open, of any entry.
    pub next: Option<NextSchedule>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveSchedule {
    pub cron: String,
    pub timezone: String,
    /// The floor it holds.
    pub min_replicas: u32,
    #[serde(with = "rfc3339")]
    pub opened: SystemTime,
    /// When it closes, unless the entry opens another window before then.
    #[serde(with = "rfc3339")]
    pub until: SystemTime,
    /// `schedule "0 8 * * 1-5" (Europe/Zurich) holds at least 6 until 18:00 CET`.
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NextSchedule {
    pub cron: String,
    pub timezone: String,
    pub min_replicas: u32,
    #[serde(with = "rfc3339")]
    pub opens: SystemTime,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub name: String,
    /// Bumped on every accepted change of this service's spec.
    pub generation: u64,
    /// The generation the last reconcile worked from.
    pub observed_generation: u64,
    pub template_hash: String,
    pub replicas: Counts,
    /// HAProxy backend, when the service has a load balancer.
    pub backend: Option<String>,
    pub autoscaler: Option<AutoscalerStatus>,
    pub conditions: Vec<Condition>,
    /// Oldest first.
    pub events: VecDeque<Event>,
    #[serde(with = "rfc3339")]
    pub created: SystemTime,
    /// Set once the service's document is removed and its replicas are going away.
    pub deleting: bool,
    /// Replica lines waiting out a crash-loop back-off, soonest first.
    pub back_off: Vec<BackOffStatus>,
    /// Swarm runtime: the service's tasks, by node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskStatus>,
    /// Docker runtime: the live replicas, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerStatus>,
    /// Docker runtime: the hand-started members (`dockscale.join`), apart from the
    /// replicas: never counted in `replicas`, never stopped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// Docker runtime: the warm pool (`autoscale.warmPool`), apart from the replicas:
    /// paused containers never counted in `replicas` nor in rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm_pool: Option<crate::reconcile::warm_pool::PoolCounts>,
    /// Where its rollout stands (`/api/v1/services/NAME/rollout`).
    #[serde(skip)]
    pub rollout: RolloutStatus,
    /// Its last rollouts (`/api/v1/services/NAME/rollout/history`).
    #[serde(skip)]
    pub history: crate::reconcile::history::History,
}

/// Where a service's rollout stands, as `dockscale rollout status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The spec's template.
    pub template_hash: String,
    pub strategy: crate::spec::Strategy,
    /// `settled` (nothing to roll), `progressing`, `paused` (a canary held by
    /// command), `promoted` (a canary past its last step, the rest rolling) or
    /// `aborted`.
    pub state: &'static str,
    /// The canary step in force, 1 for the first.
    pub step: Option<usize>,
    /// The canary's steps.
    pub steps: usize,
    /// The step's share of the traffic, in percent.
    pub weight: Option<u8>,
    pub paused: bool,
    /// How long it has been paused, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_for_seconds: Option<f64>,
    /// The step's figures and verdict as last judged (while it runs: `hold`).
    pub analysis: Option<crate::reconcile::history::StepRecord>,
    /// The aborted template, while it is the spec's, and why it was aborted.
    pub aborted: Option<AbortedRollout>,
}

/// An aborted template.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AbortedRollout {
    pub template_hash: String,
    pub message: String,
}

/// One live replica, as the status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    pub id: String,
    /// Where it stands with the load balancer: `serving`, `warming`, `draining`,
    /// `unhealthy` (Docker's health check fails), `down` (HAProxy's check fails), ...
    pub state: String,
    /// Docker's health verdict (`starting`, `healthy`, `unhealthy`), for a replica
    /// with a health check.
    pub health: Option<String>,
    /// Of the current template.
    pub updated: bool,
    /// The backend slot it holds (`slotN`, a row of HAProxy's stats page).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
}

/// One hand-started member of the service's backend, as the status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub name: String,
    pub id: String,
    /// Docker's state: `running`, `exited`, `paused`, ...
    pub state: String,
    /// Where it stands with the load balancer: `serving`, `warming`, `down`, `held`,
    /// `wrong network` (not on the service's network), `stopped`, ...
    pub serving: String,
    /// Enabled in the backend.
    pub in_rotation: bool,
    /// The backend slot it holds (`slotN`, a row of HAProxy's stats page).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
}

/// One Swarm task of a service, as the status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// `<service>.<slot>`.
    pub name: String,
    pub id: String,
    pub node: String,
    /// What Swarm wants of it and where it is: `running`, `pending`, `stopped`, `failed`.
    pub desired: String,
    pub state: String,
    /// Where HAProxy reaches it (node address and published port), once known.
    pub addr: Option<String>,
    /// It is in HAProxy's rotation.
    pub in_rotation: bool,
    pub template_hash: Option<String>,
    pub error: Option<String>,
}

/// A replica line whose replacement waits its crash-loop back-off.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackOffStatus {
    /// The replica that crashed last on this line.
    pub replica: String,
    pub exit_code: Option<i64>,
    /// `own` (its process exited) or `oom` (killed under its memory limit).
    pub cause: String,
    /// How long it ran before it ended.
    pub ran_for_seconds: f64,
    /// Crashes in a row on this line.
    pub restarts: u32,
    #[serde(with = "rfc3339")]
    pub next_replacement: SystemTime,
}

impl ServiceStatus {
    pub fn new(name: &str, now: SystemTime) -> Self {
        ServiceStatus {
            name: name.to_owned(),
            generation: 1,
            observed_generation: 0,
            template_hash: String::new(),
            replicas: Counts::default(),
            backend: None,
            autoscaler: None,
            conditions: Vec::new(),
            events: VecDeque::new(),
            created: now,
            deleting: false,
            back_off: Vec::new(),
            tasks: Vec::new(),
            containers: Vec::new(),
            members: Vec::new(),
            warm_pool: None,
            rollout: RolloutStatus::default(),
            history: Default::default(),
        }
    }

    /// Sets a condition; the transition time moves only when its status flips.
    /// Returns whether the status flipped (or the condition is new).
    pub fn set_condition(
        &mut self,
        kind: ConditionType,
        status: bool,
        reason: &str,
        message: &str,
        now: SystemTime,
    ) -> bool {
        set_condition(&mut self.conditions, kind, status, reason, message, now)
    }

    pub fn condition(&self, kind: ConditionType) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }

    /// Records an event. One that repeats a recent event (same type, reason and
    /// message, as Kubernetes' event correlator keys them) is folded into it: its count
    /// and last time change and it moves to the end, so a retry that alternates with
    /// other events does not flood the history.
    pub fn record(&mut self, kind: EventType, reason: &str, message: String, now: SystemTime) {
        match kind {
            EventType::Normal => tracing::info!(service = %self.name, reason, "{message}"),
            EventType::Warning => tracing::warn!(service = %self.name, reason, "{message}"),
        }
        record(&mut self.events, kind, reason, message, now);
    }
}

/// Sets a condition in a list; the transition time moves only when its status flips.
/// Returns whether the status flipped (or the condition is new).
fn set_condition(
    conditions: &mut Vec<Condition>,
    kind: ConditionType,
    status: bool,
    reason: &str,
    message: &str,
    now: SystemTime,
) -> bool {
    match conditions.iter_mut().find(|c| c.kind == kind) {
        Some(c) => {
            let flipped = c.status != status;
            if flipped {
                c.last_transition_time = now;
            }
            c.status = status;
            c.reason = reason.to_owned();
            c.message = message.to_owned();
            flipped
        }
        None => {
            conditions.push(Condition {
                kind,
                status,
                reason: reason.to_owned(),
                message: message.to_owned(),
                last_transition_time: now,
            });
            conditions.sort_by_key(|c| c.kind);
            true
        }
    }
}

/// Records an event in a history, folding a repeat (same type, reason and message) into
/// the earlier one, which moves to the end.
fn record(
    events: &mut VecDeque<Event>,
    kind: EventType,
    reason: &str,
    message: String,
    now: SystemTime,
) {
    let repeated = events
        .iter()
        .position(|e| e.reason == reason && e.message == message && e.kind == kind);
    if let Some(mut event) = repeated.and_then(|at| events.remove(at)) {
        event.count += 1;
        event.last_time = now;
        event.seq = next_event_seq();
        events.push_back(event);
        return;
    }
    if events.len() == MAX_EVENTS {
        events.pop_front();
    }
    events.push_back(Event {
        kind,
        reason: reason.to_owned(),
        message,
        count: 1,
        first_time: now,
        last_time: now,
        seq: next_event_seq(),
    });
}

/// A shared frontend (`kind: Frontend`): its certificates, their condition, its events.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendStatus {
    pub name: String,
    pub binds: Vec<String>,
    pub certificates: Vec<CertificateStatus>,
    pub conditions: Vec<Condition>,
    /// Oldest first.
    pub events: VecDeque<Event>,
}

impl FrontendStatus {
    pub fn set_condition(
        &mut self,
        kind: ConditionType,
        status: bool,
        reason: &str,
        message: &str,
        now: SystemTime,
    ) -> bool {
        set_condition(&mut self.conditions, kind, status, reason, message, now)
    }

    pub fn record(&mut self, kind: EventType, reason: &str, message: String, now: SystemTime) {
        match kind {
            EventType::Normal => tracing::info!(frontend = %self.name, reason, "{message}"),
            EventType::Warning => tracing::warn!(frontend = %self.name, reason, "{message}"),
        }
        record(&mut self.events, kind, reason, message, now);
    }
}

/// One certificate a frontend serves.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// The certificate file, as the spec names it (or as found in its directory).
    pub file: String,
    /// The names SNI picks it by.
    pub names: Vec<String>,
    #[serde(with = "rfc3339")]
    pub not_after: SystemTime,
    /// Why the file on disk is not what is served, while it is not.
    pub error: Option<String>,
}

/// The controller-wide status, shared read-only with the HTTP server.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerStatus {
    pub services: BTreeMap<String, ServiceStatus>,
    /// The last spec load error, while the files do not validate.
    pub spec_errors: Vec<String>,
    pub spec_loaded: bool,
    pub docker_reachable: bool,
    /// `None` when no service needs HAProxy.
    pub haproxy_reachable: Option<bool>,
    /// Set while this controller waits (`--standby`) for the one that drives the engine.
    pub standby_for: Option<String>,
    /// The shared frontends, by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub frontends: BTreeMap<String, FrontendStatus>,
}

impl ControllerStatus {
    /// The spec loaded at start: every service in it, with a fresh status.
    pub fn loaded(&mut self, names: impl IntoIterator<Item = String>, now: SystemTime) {
        self.spec_loaded = true;
        for name in names {
            let status = ServiceStatus::new(&name, now);
            self.services.insert(name, status);
        }
    }

    /// Every service's events recorded or folded after `seq`, in the order they
    /// happened (by sequence number).
    pub fn events_after(&self, seq: u64) -> Vec<ServiceEvent> {
        let mut events: Vec<ServiceEvent> = self
            .services
            .values()
            .flat_map(|svc| {
                svc.events
                    .iter()
                    .filter(move |e| e.seq > seq)
                    .map(|e| ServiceEvent {
                        service: svc.name.clone(),
                        event: e.clone(),
                    })
            })
            .collect();
        events.sort_by_key(|e| e.event.seq);
        events
    }
}

/// A cloneable handle on the status: the writers the module documentation names
/// update it, the HTTP server reads snapshots, and watchers (`/api/v1/events?watch=true`) are woken by every write.
#[derive(Clone, Debug, Default)]
pub struct StatusHandle {
    status: Arc<RwLock<ControllerStatus>>,
    changed: Arc<Notify>,
}

impl StatusHandle {
    pub fn read(&self) -> ControllerStatus {
        // A writer that panicked leaves the data as it was; reading it is still fine.
        self.status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn update<T>(&self, f: impl FnOnce(&mut ControllerStatus) -> T) -> T {
        let result = {
            let mut guard = self.status.write().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        };
        self.changed.notify_waiters();
        result
    }

    /// Resolves at the next [`Self::update`] after it was created, or after it was
    /// `enable`d: enable it before reading, and no update between the read and the
    /// wait is missed.
    pub fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }
}

/// RFC 3339 timestamps for `SystemTime` in JSON.
mod rfc3339 {
    use std::time::SystemTime;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_seconds(*t))
    }

    pub mod option {
        use std::time::SystemTime;

        use serde::Serializer;

        pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_flips() {
        let t0 = SystemTime::UNIX_EPOCH;
        let t1 = t0 + Duration::from_secs(5);
        let t2 = t0 + Duration::from_secs(9);
        let mut s = ServiceStatus::new("w", t0);
        assert!(s.set_condition(ConditionType::Available, true, "A", "m", t0));
        assert!(!s.set_condition(ConditionType::Available, true, "B", "m2", t1));
        let c = s.condition(ConditionType::Available).expect("set");
        assert_eq!((c.reason.as_str(), c.last_transition_time), ("B", t0));
        assert!(s.set_condition(ConditionType::Available, false, "C", "m3", t2));
        assert_eq!(
            s.condition(ConditionType::Available)
                .expect("set")
                .last_transition_time,
            t2
        );
    }

    #[test]
    fn the_warm_pool_shows_in_the_status_json_only_when_there_is_one() {
        let mut s = ServiceStatus::new("w", SystemTime::UNIX_EPOCH);
        let json = serde_json::to_value(&s).expect("serializes");
        assert!(json.get("warmPool").is_none(), "{json}");
        s.warm_pool = Some(crate::reconcile::warm_pool::PoolCounts {
            size: 2,
            ready: 1,
            warming: 1,
        });
        let json = serde_json::to_value(&s).expect("serializes");
        assert_eq!(
            json["warmPool"],
            serde_json::json!({"size": 2, "ready": 1, "warming": 1})
        );
        assert_eq!(json["replicas"]["current"], 0, "never counted as replicas");
    }

    #[test]
    fn repeated_events_fold_and_old_ones_fall_off() {
        let t = SystemTime::UNIX_EPOCH;
        let mut s = ServiceStatus::new("w", t);
        s.record(EventType::Warning, "BackOff", "again".into(), t);
        s.record(EventType::Warning, "BackOff", "again".into(), t);
        assert_eq!(s.events.len(), 1);
        assert_eq!(s.events[0].count, 2);
        for i in 0..(MAX_EVENTS + 5) {
            s.record(EventType::Normal, "Created", format!("replica {i}"), t);
        }
        assert_eq!(s.events.len(), MAX_EVENTS);
        assert_eq!(
            s.events.back().map(|e| e.message.as_str()),
            Some("replica 54")
        );
    }

    #[test]
    fn a_folded_event_comes_after_the_events_it_was_folded_past() {
        let t = SystemTime::UNIX_EPOCH;
        let status = StatusHandle::default();
        status.update(|c| {
            for name in ["a", "b"] {
                c.services.insert(name.into(), ServiceStatus::new(name, t));
            }
        });
        let record = |svc: &str, reason: &str| {
            status.update(|c| {
                if let Some(s) = c.services.get_mut(svc) {
                    s.record(EventType::Normal, reason, format!("{reason} {svc}"), t);
                }
            })
        };
        record("a", "Created");
        let cursor = status.read().events_after(0).last().map(|e| e.event.seq);
        record("b", "Created");
        record("a", "Scaled");
        record("a", "Created");
        let after: Vec<(String, String, u32)> = status
            .read()
            .events_after(cursor.unwrap_or_default())
            .into_iter()
            .map(|e| (e.service, e.event.reason, e.event.count))
            .collect();
        assert_eq!(
            after,
            [
                ("b".into(), "Created".into(), 1),
                ("a".into(), "Scaled".into(), 1),
                ("a".into(), "Created".into(), 2),
            ]
        );
    }

    #[tokio::test]
    async fn an_update_wakes_a_watcher_that_enabled_its_wait_before_reading() {
        let status = StatusHandle::default();
        let changed = status.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let _ = status.read();
        status.update(|c| c.spec_loaded = true);
        tokio::time::timeout(std::time::Duration::from_secs(1), changed)
            .await
            .expect("woken by the update");
    }
}
