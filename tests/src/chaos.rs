//! The chaos soak: dockscale as a child process behind its managed HAProxy, a bounded
//! keep-alive load through the frontend, and one random fault every few seconds from a
//! seeded generator, while an invariant monitor samples the replicas; then a
//! convergence check. [`run`] does it all and returns a [`SoakReport`], which judges
//! (see [`SoakReport::violations`]) and prints itself; it owns no assertion, so that
//! the e2e test and the benchmark share it.
//!
//! # Faults
//! One deck holds every [`FaultKind`] once; it is shuffled with the seed and dealt,
//! and reshuffled when empty, so that a run of one deck (the e2e test's) sees every
//! kind once and a long run (the benchmark's) sees them evenly. The gap from one
//! fault's start to the next is drawn from [`SoakConfig::gap`]. Victims are drawn from
//! the running replicas sorted by name, so a seed replays the same kinds, gaps and
//! choices; the victims themselves depend on what the controller did meanwhile.
//!
//! Left out, on purpose: a replica's own crash (its process exits, or is OOM-killed
//! under its limit) is a crash loop that the controller rightly backs off, per
//! replica, so the convergence deadline would fail correct behaviour; the crash-loop
//! tests cover it. A Docker engine restart is never done to the machine's own engine
//! (issue 14 wants that test against a private engine). A SIGTERM restart of
//! dockscale is what the adoption test does.
//!
//! # Pass and fail
//! - **Requests.** Every failed request fails the soak, except (a) those whose time
//!   (from sending to giving up) overlaps an HAProxy-kill window: from the SIGKILL
//!   until a fresh request through the frontend is answered 200, plus
//!   [`WINDOW_MARGIN`]; they are counted and reported apart; and (b) a response cut
//!   mid-body whose `X-Served-By` names a replica the soak SIGKILLed (`docker kill`,
//!   `docker rm -f`), ending after that kill, at most one per kill (HAProxy cannot
//!   retry a response it has begun to forward); counted.
//! - **Surge.** At every sample, the replicas running (or paused, or restarting) must
//!   be at most `desired + maxSurge + 1`, where `desired` is the highest `replicas`
//!   value in force during the last [`SCALE_DOWN_GRACE`] of the controller's own
//!   running time (time it spent SIGSTOPped or dead does not count: a scale-down
//!   drains and stops its replicas only while the controller runs), and the `+1` is the
//!   replacement in flight: a rollout's old replica drains and stops after the new one
//!   that replaces it serves, and the next new one may start meanwhile. Each `docker
//!   restart`, `docker pause` and `network disconnect` within that same grace adds 1
//!   more: the container comes back (or runs on, unreachable) while a replacement the
//!   controller may have started for it is in flight, and both count until one goes.
//! - **Convergence.** Within [`SoakConfig::converge_within`] of the end of the last
//!   fault: the HAProxy servers in rotation (not in maintenance) are exactly the
//!   running replicas' addresses on the service network and `template.port`, each UP
//!   and not draining; as many replicas run as the final spec asks; each carries the
//!   controller's current `dockscale.template-hash` (from its status API, which
//!   reports the final `replicas`); and no other container with the service's label
//!   exists (nothing exited, created or paused is left over). The state must begin
//!   to hold by the deadline and still hold `STABLE` (1 s) later.
//! - **Replacement.** Within [`SoakConfig::replace_within`] of controller time after
//!   a `docker kill`, `docker stop` or `docker rm -f` of a replica, the replicas
//!   running are back to the `replicas` value in force (issue 14: a container removed
//!   from outside is replaced at once, every time; DESIGN invariant 7). This catches a
//!   back-off on external removals whatever comes after it (a dockscale restart forgets
//!   the back-off, so the convergence check alone can miss it).
//! - **HAProxy.** It serves again within [`SoakConfig::haproxy_recovery_limit`] of
//!   each kill (otherwise the window would excuse everything after it).
//! - **dockscale** never exits on its own, and the load ran.
//!
//! # Cleanup
//! The dockscale child is ended on drop ([`DockscaleProcess`]), the load's tasks and
//! the monitor are aborted on drop, and the fixture's own drops end HAProxy (by pid)
//! and remove containers and network. Nothing is killed by name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::models::NetworkDisconnectRequest;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::haproxy::{children_of, cmdline, is_haproxy_of, read_pid, LbFixture};
use crate::load::{Failure, FailureClass, KeepAliveLoad, LoadReport};
use crate::process::DockscaleProcess;

/// The spec's rollout: one surge replica, none unavailable.
pub const MAX_SURGE: u32 = 1;
const ROLLOUT: &str = "  rollout: {maxSurge: 1, maxUnavailable: 0}\n";

/// How long a higher `replicas` value stays "in force" after a lower one replaced it,
/// in the controller's running time: the spec's `drainTimeout` (5 s) and
/// `stopGracePeriod` (5 s) of [`LbFixture::lb_spec`], and 2 s for the controller to
/// read the change and Docker to report the stop.
pub const SCALE_DOWN_GRACE: Duration = Duration::from_secs(12);

/// Failures this close after an HAProxy-kill window count as inside it: the recovery
/// probe's 200 proves the new HAProxy serves, but a client whose connect raced the
/// new listener (or that still held a socket of the dead one) reports a moment later;
/// 250 ms is ten probe intervals and well under any request's time.
pub const WINDOW_MARGIN: Duration = Duration::from_millis(250);

/// How long the converged state must hold to count.
const STABLE: Duration = Duration::from_secs(1);

/// How long `docker pause` and SIGSTOP last.
const HOLD: Duration = Duration::from_secs(3);

/// How often the monitor samples the replicas.
const SAMPLE_EVERY: Duration = Duration::from_millis(150);

/// How often the recovery probe tries the frontend after an HAProxy kill.
const PROBE_EVERY: Duration = Duration::from_millis(20);

/// The kinds of fault, each something a real host does to a replica, the spec, the
/// controller or the load balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// `docker kill` of a replica (SIGKILL): an operator, or an OOM kill on the host.
    DockerKill,
    /// `docker stop` of a replica (SIGTERM, then SIGKILL after its grace period).
    DockerStop,
    /// `docker rm -f` of a replica: it is SIGKILLed and gone.
    DockerRm,
    /// `docker restart` of a replica: down and up again, same container.
    DockerRestart,
    /// `docker pause` of a replica for 3 s (a frozen cgroup, a stalled disk).
    DockerPause,
    /// `docker network disconnect` of a replica from the service network: it runs
    /// on, unreachable.
    NetworkDisconnect,
    /// A `replicas` edit (the file renamed into place, as editors save).
    ReplicasEdit,
    /// A `replicas` edit written in place: the file truncated, then written in two
    /// parts 20 ms apart, as `cat > spec.yaml`, shell redirections and editors that
    /// keep the file's inode (vim's `backupcopy=yes`) do; dockscale must never act on
    /// the half-written file.
    InPlaceEdit,
    /// A template edit (an env value): a rollout.
    TemplateEdit,
    /// A spec that does not validate, fixed 2–3 s later (the last good spec stays in
    /// force meanwhile; the next edit is valid again).
    InvalidEdit,
    /// SIGKILL of dockscale, and a start with the same command line 0.2–1 s later
    /// (as a service manager restarts a crashed daemon): it adopts its containers and
    /// the running HAProxy.
    DockscaleKill,
    /// SIGSTOP of dockscale for 3 s, then SIGCONT (a stalled host, a debugger).
    DockscaleStop,
    /// SIGKILL of the managed HAProxy, master and workers.
    HaproxyKill,
}

impl FaultKind {
    pub const ALL: [FaultKind; 13] = [
        FaultKind::DockerKill,
        FaultKind::DockerStop,
        FaultKind::DockerRm,
        FaultKind::DockerRestart,
        FaultKind::DockerPause,
        FaultKind::NetworkDisconnect,
        FaultKind::ReplicasEdit,
        FaultKind::InPlaceEdit,
        FaultKind::TemplateEdit,
        FaultKind::InvalidEdit,
        FaultKind::DockscaleKill,
        FaultKind::DockscaleStop,
        FaultKind::HaproxyKill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::DockerKill => "docker kill",
            FaultKind::DockerStop => "docker stop",
            FaultKind::DockerRm => "docker rm -f",
            FaultKind::DockerRestart => "docker restart",
            FaultKind::DockerPause => "docker pause 3s",
            FaultKind::NetworkDisconnect => "network disconnect",
            FaultKind::ReplicasEdit => "replicas edit",
            FaultKind::InPlaceEdit => "in-place replicas edit",
            FaultKind::TemplateEdit => "template edit",
            FaultKind::InvalidEdit => "invalid edit",
            FaultKind::DockscaleKill => "dockscale SIGKILL+restart",
            FaultKind::DockscaleStop => "dockscale SIGSTOP 3s",
            FaultKind::HaproxyKill => "HAProxy SIGKILL",
        }
    }

    /// Whether the fault takes a replica away for good (it must be replaced).
    pub fn removes_replica(self) -> bool {
        matches!(
            self,
            FaultKind::DockerKill | FaultKind::DockerStop | FaultKind::DockerRm
        )
    }

    /// Whether the fault SIGKILLs a replica's process (a response it was sending may
    /// be cut mid-body).
    pub fn sigkills_replica(self) -> bool {
        matches!(self, FaultKind::DockerKill | FaultKind::DockerRm)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a soak does and how long.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    /// Replays the faults' kinds, order, gaps and choices.
    pub seed: u64,
    /// At most this many faults...
    pub faults: usize,
    /// ...started within this long after the first.
    pub fault_phase: Duration,
    /// From one fault's start to the next one's.
    pub gap: RangeInclusive<Duration>,
    /// Steady load before the first fault.
    pub lead: Duration,
    /// `replicas` at the start...
    pub replicas: u32,
    /// ...and the values edits choose from.
    pub replicas_range: RangeInclusive<u32>,
    /// Keep-alive clients.
    pub clients: usize,
    /// What they GET (`?delay=` keeps a few requests in flight at every replica).
    pub path: String,
    /// A request is a failure after this long (a paused replica holds its requests
    /// for 3 s: that is latency, not failure).
    pub client_timeout: Duration,
    /// The convergence deadline after the last fault.
    pub converge_within: Duration,
    /// After a replica is killed, stopped or removed, the replicas must be back to the
    /// desired count within this much controller time.
    pub replace_within: Duration,
    /// An HAProxy kill's window closes by this long at the latest.
    pub haproxy_recovery_limit: Duration,
    /// Flags added to `dockscale run` (the soak itself adds none: the defaults are
    /// what it checks).
    pub dockscale_args: Vec<String>,
}

impl SoakConfig {
    /// The e2e suite's soak: one deck (every kind once), 4–8 s apart: about 75 s of
    /// faults.
    pub fn ci(seed: u64) -> Self {
        SoakConfig {
            seed,
            faults: FaultKind::ALL.len(),
            fault_phase: Duration::from_secs(100),
            gap: Duration::from_secs(4)..=Duration::from_secs(8),
            lead: Duration::from_secs(3),
            replicas: 4,
            replicas_range: 3..=5,
            clients: 8,
            path: "/?delay=20".to_owned(),
            client_timeout: Duration::from_secs(10),
            converge_within: Duration::from_secs(10),
            replace_within: Duration::from_secs(10),
            haproxy_recovery_limit: Duration::from_secs(15),
            dockscale_args: Vec::new(),
        }
    }

    /// The benchmark's soak: about 10 minutes, 4–8 s apart (about 7 decks).
    pub fn bench(seed: u64) -> Self {
        SoakConfig {
            faults: 100,
            fault_phase: Duration::from_secs(570),
            lead: Duration::from_secs(5),
            ..SoakConfig::ci(seed)
        }
    }

    /// `SOAK_SEED` from the environment (to replay a run), else a random one.
    pub fn seed_from_env() -> u64 {
        match std::env::var("SOAK_SEED") {
            Ok(s) => s
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("SOAK_SEED must be a number, got {s:?}")),
            Err(_) => rand::random(),
        }
    }
}

/// One fault as it happened.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    pub kind: FaultKind,
    /// Since the soak's origin (the load's start).
    pub at: Duration,
    /// How long its action took (a pause or a SIGSTOP lasts 3 s).
    pub took: Duration,
    /// What it was done to, in words.
    pub target: String,
    /// The replica's container id, for replica faults.
    pub victim_id: Option<String>,
    /// Something that did not go as planned (no replica to hit, an unpause refused
    /// because dockscale removed the container meanwhile, ...). Not a failure.
    pub note: Option<String>,
    start: Instant,
    end: Instant,
}

impl fmt::Display for FaultRecord {
    /// One line of a fault timeline: when, what, to what, how long, and its note.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "+{:8.3}s {:<26} {:<34} took {:.2}s",
            self.at.as_secs_f64(),
            self.kind.name(),
            self.target,
            self.took.as_secs_f64()
        )?;
        if let Some(note) = &self.note {
            write!(f, " ({note})")?;
        }
        Ok(())
    }
}

/// An HAProxy kill and its recovery.
#[derive(Clone, Debug)]
pub struct HaproxyWindow {
    pub killed: Instant,
    /// When a fresh request through the frontend was first answered 200 again.
    pub recovered: Option<Instant>,
    /// The pids SIGKILLed, master first.
    pub pids: Vec<i32>,
    /// The master's pid once it serves again.
    pub new_master: Option<i32>,
}

impl HaproxyWindow {
    pub fn recovery(&self) -> Option<Duration> {
        self.recovered.map(|r| r.duration_since(self.killed))
    }

    /// The window failures are excused in: to recovery (or the limit) plus the margin.
    fn covers(&self, f: &Failure, limit: Duration) -> bool {
        let end = self.recovered.unwrap_or(self.killed + limit) + WINDOW_MARGIN;
        f.end >= self.killed && f.start <= end
    }
}

/// A failed request that fails the soak, for the report.
#[derive(Clone, Debug)]
pub struct OutsideFailure {
    /// Since the soak's origin.
    pub sent: Duration,
    pub ended: Duration,
    pub class: FailureClass,
    pub served_by: Option<String>,
}

/// What the invariant monitor saw.
#[derive(Clone, Debug, Default)]
pub struct MonitorReport {
    pub samples: u64,
    /// Samples that failed to list containers.
    pub errors: u64,
    /// The highest replica count seen, the `replicas` value in force then, the bound
    /// then and when.
    pub highest: u32,
    pub desired_at_highest: u32,
    pub bound_at_highest: u32,
    pub highest_at: Duration,
    /// Samples over the bound, and the first of them in words.
    pub over: u64,
    pub over_samples: Vec<String>,
    /// (since origin, replicas counted, bound) whenever the count changed.
    pub changes: Vec<(Duration, u32, u32)>,
    /// Every sample: when, and the replicas counted.
    pub series: Vec<(Instant, u32)>,
}

/// What a soak saw, and its verdict.
#[derive(Debug)]
pub struct SoakReport {
    pub seed: u64,
    pub timeline: Vec<FaultRecord>,
    pub load: LoadReport,
    /// Failed requests that fail the soak, by class.
    pub outside: BTreeMap<FailureClass, u64>,
    /// The first of them: (since origin, class, replica).
    pub outside_samples: Vec<OutsideFailure>,
    /// Failed requests inside HAProxy-kill windows, by class.
    pub inside_windows: BTreeMap<FailureClass, u64>,
    /// Responses cut mid-body by a SIGKILL of their replica.
    pub allowed_cuts: u64,
    pub windows: Vec<HaproxyWindow>,
    /// Each replica killed, stopped or removed: the fault, and how long (in controller
    /// time) until the replicas were back to the desired count, if they were.
    pub replacements: Vec<(Duration, FaultKind, String, Option<Duration>)>,
    pub monitor: MonitorReport,
    /// Time from the end of the last fault to convergence, or what was still off.
    pub convergence: Result<Duration, String>,
    /// The `replicas` value at the end.
    pub final_replicas: u32,
    /// When the last fault ended, since origin.
    pub last_fault_end: Duration,
    /// Everything that fails the soak (empty: it passed).
    pub violations: Vec<String>,
    /// dockscale's warnings and errors and the end of its log.
    pub log_tail: String,
    origin: Instant,
}

impl SoakReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    pub fn faults_by_kind(&self) -> BTreeMap<FaultKind, usize> {
        let mut counts: BTreeMap<FaultKind, usize> = BTreeMap::new();
        for f in &self.timeline {
            *counts.entry(f.kind).or_default() += 1;
        }
        counts
    }

    /// HAProxy recovery times, in the order of the kills.
    pub fn recoveries(&self) -> Vec<Option<Duration>> {
        self.windows.iter().map(HaproxyWindow::recovery).collect()
    }

    pub fn outside_total(&self) -> u64 {
        self.outside.values().sum()
    }

    pub fn inside_total(&self) -> u64 {
        self.inside_windows.values().sum()
    }

    /// Prints the report and, when it failed, dockscale's log tail; then panics with
    /// the violations.
    pub fn assert_passed(&self) {
        println!("{self}");
        if !self.passed() {
            println!("--- dockscale's log ---\n{}", self.log_tail);
            panic!(
                "the soak failed (replay: SOAK_SEED={}):\n- {}",
                self.seed,
                self.violations.join("\n- ")
            );
        }
    }
}

fn classes(map: &BTreeMap<FailureClass, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter()
        .map(|(c, n)| format!("{n} {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "soak seed {} (replay: SOAK_SEED={})",
            self.seed, self.seed
        )?;
        writeln!(f, "fault timeline:")?;
        for r in &self.timeline {
            writeln!(f, "  {r}")?;
        }
        let by_kind: Vec<String> = self
            .faults_by_kind()
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        writeln!(
            f,
            "faults: {} ({})",
            self.timeline.len(),
            by_kind.join(", ")
        )?;
        writeln!(
            f,
            "requests: {} ({} ok) in {:.1}s",
            self.load.requests(),
            self.load.ok,
            self.load.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "failed: {} in all ({}); outside HAProxy-kill windows: {} ({}); inside them: {} ({}); \
             allowed mid-body cuts by replica SIGKILLs: {}",
            self.load.failed_total(),
            classes(&self.load.failed),
            self.outside_total(),
            classes(&self.outside),
            self.inside_total(),
            classes(&self.inside_windows),
            self.allowed_cuts
        )?;
        for o in &self.outside_samples {
            write!(
                f,
                "  outside: {} sent +{:.3}s, given up +{:.3}s",
                o.class,
                o.sent.as_secs_f64(),
                o.ended.as_secs_f64()
            )?;
            if let Some(by) = &o.served_by {
                write!(f, ", served by {by}")?;
            }
            // The faults done while it was in flight (or just before it was sent).
            let during: Vec<String> = self
                .timeline
                .iter()
                .filter(|r| r.at + Duration::from_secs(1) >= o.sent && r.at <= o.ended)
                .map(|r| format!("{} {} at +{:.3}s", r.kind, r.target, r.at.as_secs_f64()))
                .collect();
            if !during.is_empty() {
                write!(f, "; in flight during: {}", during.join(", "))?;
            }
            writeln!(f)?;
        }
        if !self.load.samples.is_empty() {
            writeln!(f, "first failures:")?;
            for s in &self.load.samples {
                writeln!(f, "  {s}")?;
            }
        }
        for w in &self.windows {
            let at = w.killed.duration_since(self.origin).as_secs_f64();
            match w.recovery() {
                Some(r) => writeln!(
                    f,
                    "HAProxy SIGKILL at +{at:.3}s (pids {:?}): \
                     serving again after {:.3}s (master {})",
                    w.pids,
                    r.as_secs_f64(),
                    w.new_master.map_or("?".to_owned(), |p| p.to_string())
                )?,
                None => writeln!(
                    f,
                    "HAProxy SIGKILL at +{at:.3}s (pids {:?}): not serving again",
                    w.pids
                )?,
            }
        }
        for (at, kind, target, took) in &self.replacements {
            match took {
                Some(t) => writeln!(
                    f,
                    "{kind} of {target} at +{:.3}s: back to the desired count after {:.3}s",
                    at.as_secs_f64(),
                    t.as_secs_f64()
                )?,
                None => writeln!(
                    f,
                    "{kind} of {target} at +{:.3}s: NOT back to the desired count",
                    at.as_secs_f64()
                )?,
            }
        }
        let m = &self.monitor;
        writeln!(
            f,
            "replicas: highest {} for desired {} (bound {}) at +{:.1}s; \
             {} samples over the bound of {} ({} listing errors)",
            m.highest,
            m.desired_at_highest,
            m.bound_at_highest,
            m.highest_at.as_secs_f64(),
            m.over,
            m.samples,
            m.errors
        )?;
        for s in &m.over_samples {
            writeln!(f, "  over: {s}")?;
        }
        let changes: Vec<String> = m
            .changes
            .iter()
            .take(400)
            .map(|(at, n, bound)| format!("+{:.1}s {n}/{bound}", at.as_secs_f64()))
            .collect();
        writeln!(f, "replica count/bound changes: {}", changes.join(" "))?;
        match &self.convergence {
            Ok(took) => writeln!(
                f,
                "converged on {} replicas {:.3}s after the last fault ended (+{:.3}s)",
                self.final_replicas,
                took.as_secs_f64(),
                self.last_fault_end.as_secs_f64()
            )?,
            Err(off) => writeln!(
                f,
                "NOT converged on {} replicas after the last fault ended (+{:.3}s): {off}",
                self.final_replicas,
                self.last_fault_end.as_secs_f64()
            )?,
        }
        if self.violations.is_empty() {
            writeln!(f, "verdict: passed")?;
        } else {
            writeln!(f, "verdict: FAILED")?;
            for v in &self.violations {
                writeln!(f, "  - {v}")?;
            }
        }
        Ok(())
    }
}

/// The `replicas` values written and when dockscale could not act, shared by the
/// fault loop and the monitor.
#[derive(Debug, Default)]
struct Ledger {
    /// (since, value), in order.
    desired: Vec<(Instant, u32)>,
    /// When dockscale was dead or SIGSTOPped: (from, until).
    down: Vec<(Instant, Option<Instant>)>,
    /// When a replica was restarted, paused or disconnected: it may come back, or run
    /// on, beside its replacement.
    returns: Vec<Instant>,
}

impl Ledger {
    /// Time between `from` and `to` during which dockscale was running.
    fn controller_time(&self, from: Instant, to: Instant) -> Duration {
        let mut total = to.saturating_duration_since(from);
        for (a, b) in &self.down {
            let a = (*a).max(from);
            let b = b.unwrap_or(to).min(to);
            total = total.saturating_sub(b.saturating_duration_since(a));
        }
        total
    }

    /// The value in force at `t`.
    fn desired_at(&self, t: Instant) -> u32 {
        self.desired
            .iter()
            .take_while(|(since, _)| *since <= t)
            .last()
            .map_or(0, |(_, v)| *v)
    }

    /// The highest value in force within the last [`SCALE_DOWN_GRACE`] of controller
    /// time before `t`.
    fn recent_desired(&self, t: Instant) -> u32 {
        let mut highest = 0;
        for (i, (since, value)) in self.desired.iter().enumerate() {
            if *since > t {
                break;
            }
            let recent = match self.desired.get(i + 1) {
                Some((next, _)) if *next <= t => self.controller_time(*next, t) < SCALE_DOWN_GRACE,
                _ => true,
            };
            if recent {
                highest = highest.max(*value);
            }
        }
        highest
    }

    /// The surge bound at `t` (see the module documentation).
    fn bound(&self, t: Instant) -> u32 {
        let returning = self
            .returns
            .iter()
            .filter(|r| **r <= t && self.controller_time(**r, t) < SCALE_DOWN_GRACE)
            .count() as u32;
        self.recent_desired(t) + MAX_SURGE + 1 + returning
    }
}

/// A container of the service as Docker lists it.
#[derive(Clone, Debug)]
struct Seen {
    id: String,
    name: String,
    state: String,
    template_hash: String,
    /// Its address on the service network, if it is attached.
    ip: Option<Ipv4Addr>,
}

async fn list_service(
    docker: &bollard::Docker,
    service: &str,
    network: &str,
) -> Result<Vec<Seen>, String> {
    let filters = HashMap::from([("label", vec![format!("dockscale.service={service}")])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let listed = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| format!("list containers: {e}"))?;
    let mut seen: Vec<Seen> = listed
        .into_iter()
        .map(|c| {
            let labels = c.labels.unwrap_or_default();
            let ip = c
                .network_settings
                .and_then(|n| n.networks)
                .and_then(|mut n| n.remove(network))
                .and_then(|e| e.ip_address)
                .and_then(|ip| ip.parse().ok());
            Seen {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or_default(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                template_hash: labels
                    .get("dockscale.template-hash")
                    .cloned()
                    .unwrap_or_default(),
                ip,
            }
        })
        .collect();
    seen.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(seen)
}

/// Counted against the surge bound: a paused or restarting replica still holds its
/// place.
fn counts_as_replica(state: &str) -> bool {
    matches!(state, "running" | "paused" | "restarting")
}

/// Samples the replicas until stopped; see the module documentation.
async fn monitor(
    docker: bollard::Docker,
    service: String,
    network: String,
    ledger: Arc<Mutex<Ledger>>,
    origin: Instant,
    stop: Arc<AtomicBool>,
) -> MonitorReport {
    let mut report = MonitorReport::default();
    let mut last: Option<(u32, u32)> = None;
    while !stop.load(Ordering::Relaxed) {
        let listed = list_service(&docker, &service, &network).await;
        let now = Instant::now();
        match listed {
            Err(_) => report.errors += 1,
            Ok(seen) => {
                report.samples += 1;
                let n = seen.iter().filter(|c| counts_as_replica(&c.state)).count() as u32;
                report.series.push((now, n));
                let (desired, bound) = {
                    let l = ledger.lock().expect("ledger lock");
                    (l.desired_at(now), l.bound(now))
                };
                let at = now.duration_since(origin);
                if n > report.highest {
                    report.highest = n;
                    report.desired_at_highest = desired;
                    report.bound_at_highest = bound;
                    report.highest_at = at;
                }
                if n > bound {
                    report.over += 1;
                    if report.over_samples.len() < 20 {
                        let names: Vec<String> = seen
                            .iter()
                            .filter(|c| counts_as_replica(&c.state))
                            .map(|c| format!("{} {}", c.name, c.state))
                            .collect();
                        report.over_samples.push(format!(
                            "+{:.3}s {n} replicas > bound {bound} (desired now {desired}): {}",
                            at.as_secs_f64(),
                            names.join(", ")
                        ));
                    }
                }
                if last != Some((n, bound)) {
                    report.changes.push((at, n, bound));
                    last = Some((n, bound));
                }
            }
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    report
}

/// Aborts a task when dropped (on a panic, the monitor and probes must not outlive
/// the soak).
struct AbortOnDrop<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Option<T> {
        self.0.take()?.await.ok()
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// The spec of the soak's service: the [`LbFixture::lb_spec`] shape with a rolling
/// update of one surge replica and none unavailable.
pub fn spec_text(fixture: &LbFixture, replicas: u32, version: u32) -> String {
    fixture.lb_spec(replicas, &format!("v{version}"), ROLLOUT)
}

/// Ways to break a valid spec; each must fail validation (a unit test checks).
pub const INVALID_EDITS: [&str; 4] = [
    "negative replicas",
    "unknown field",
    "bad duration",
    "YAML syntax",
];

/// `valid` broken in the `which`th way of [`INVALID_EDITS`].
pub fn invalid_text(valid: &str, which: usize) -> String {
    let replicas_line = valid
        .lines()
        .find(|l| l.starts_with("  replicas: "))
        .expect("a replicas line")
        .to_owned();
    let broken = match which % INVALID_EDITS.len() {
        0 => valid.replace(&replicas_line, "  replicas: -1"),
        1 => valid.replace(&replicas_line, &format!("{replicas_line}\n  replicaz: 3")),
        2 => valid.replace("drainTimeout: 5s", "drainTimeout: five seconds"),
        _ => valid.replace("weight: 100}", "weight: 100"),
    };
    assert_ne!(broken, valid, "the spec changed shape: {valid}");
    broken
}

/// Writes `text` over `path` in place: truncated, then two writes 20 ms apart.
async fn write_in_place(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (first, rest) = text.split_at(text.len() / 2);
    file.write_all(first.as_bytes())?;
    file.flush()?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    file.write_all(rest.as_bytes())?;
    file.flush()
}

/// SIGKILLs the managed HAProxy of `state_dir`, master then workers, after checking
/// the pid file's pid is an HAProxy running a configuration of `state_dir`.
fn kill_haproxy(state_dir: &Path) -> Result<Vec<i32>, String> {
    let pidfile = state_dir.join("haproxy.pid");
    let master = read_pid(&pidfile).ok_or_else(|| format!("no pid in {}", pidfile.display()))?;
    if !is_haproxy_of(master, state_dir) {
        return Err(format!(
            "pid {master} is not our HAProxy (command line {:?})",
            cmdline(master)
        ));
    }
    let workers = children_of(master);
    let mut pids = vec![master];
    pids.extend(workers);
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    Ok(pids)
}

/// Probes the frontend until it answers 200 (or the limit passes) and records the
/// recovery in `windows[index]`.
async fn probe_recovery(
    url: String,
    pidfile: std::path::PathBuf,
    windows: Arc<Mutex<Vec<HaproxyWindow>>>,
    index: usize,
    limit: Duration,
) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_millis(500))
        .build()
        .expect("an HTTP client (no TLS, no proxy: nothing can fail)");
    let killed = windows.lock().expect("windows lock")[index].killed;
    while killed.elapsed() < limit {
        if let Ok(r) = client.get(&url).send().await {
            if r.status() == reqwest::StatusCode::OK && r.bytes().await.is_ok() {
                let mut w = windows.lock().expect("windows lock");
                w[index].recovered = Some(Instant::now());
                w[index].new_master = read_pid(&pidfile);
                return;
            }
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

fn between(rng: &mut StdRng, range: &RangeInclusive<Duration>) -> Duration {
    let (lo, hi) = (
        range.start().as_millis() as u64,
        range.end().as_millis() as u64,
    );
    Duration::from_millis(rng.random_range(lo..=hi))
}

/// What a fault was done to.
#[derive(Debug, Default)]
struct Outcome {
    target: String,
    victim_id: Option<String>,
}

/// The soak's moving parts.
struct Soak<'a> {
    fixture: &'a LbFixture,
    config: &'a SoakConfig,
    docker: bollard::Docker,
    process: DockscaleProcess,
    rng: StdRng,
    deck: Vec<FaultKind>,
    ledger: Arc<Mutex<Ledger>>,
    windows: Arc<Mutex<Vec<HaproxyWindow>>>,
    probes: Vec<AbortOnDrop<()>>,
    /// The last valid spec's values.
    replicas: u32,
    version: u32,
    origin: Instant,
    timeline: Vec<FaultRecord>,
    violations: Vec<String>,
}

impl Soak<'_> {
    fn next_kind(&mut self) -> FaultKind {
        if self.deck.is_empty() {
            self.deck = FaultKind::ALL.to_vec();
            self.deck.shuffle(&mut self.rng);
        }
        self.deck.pop().expect("a refilled deck")
    }

    /// Writes a valid spec and records its `replicas` value as in force.
    async fn write_spec(
        &mut self,
        replicas: u32,
        version: u32,
        in_place: bool,
    ) -> Result<(), String> {
        self.ledger
            .lock()
            .expect("ledger lock")
            .desired
            .push((Instant::now(), replicas));
        self.replicas = replicas;
        self.version = version;
        let text = spec_text(self.fixture, replicas, version);
        if in_place {
            write_in_place(&self.fixture.spec_path(), &text)
                .await
                .map_err(|e| format!("in-place write: {e}"))
        } else {
            self.fixture.write_spec(&text);
            Ok(())
        }
    }

    fn other_replicas(&mut self) -> u32 {
        let choices: Vec<u32> = self
            .config
            .replicas_range
            .clone()
            .filter(|n| *n != self.replicas)
            .collect();
        choices[self.rng.random_range(0..choices.len())]
    }

    fn mark_down(&self) {
        self.ledger
            .lock()
            .expect("ledger lock")
            .down
            .push((Instant::now(), None));
    }

    fn mark_up(&self) {
        if let Some(last) = self.ledger.lock().expect("ledger lock").down.last_mut() {
            last.1 = Some(Instant::now());
        }
    }

    /// A running replica, drawn with the seed from the ones running now.
    async fn victim(&mut self) -> Result<Seen, String> {
        let running: Vec<Seen> =
            list_service(&self.docker, &self.fixture.service, &self.fixture.network)
                .await?
                .into_iter()
                .filter(|c| c.state == "running")
                .collect();
        if running.is_empty() {
            return Err("no running replica to hit".to_owned());
        }
        let i = self.rng.random_range(0..running.len());
        Ok(running[i].clone())
    }

    /// Does one fault and records it.
    async fn inject(&mut self, kind: FaultKind) {
        let start = Instant::now();
        let mut outcome = Outcome::default();
        let result = match kind {
            FaultKind::ReplicasEdit
            | FaultKind::InPlaceEdit
            | FaultKind::TemplateEdit
            | FaultKind::InvalidEdit => self.edit_spec(kind, &mut outcome).await,
            FaultKind::DockscaleKill | FaultKind::DockscaleStop => {
                self.hit_controller(kind, &mut outcome).await
            }
            FaultKind::HaproxyKill => self.kill_haproxy(&mut outcome),
            _ => self.hit_replica(kind, &mut outcome).await,
        };
        let end = Instant::now();
        let record = FaultRecord {
            kind,
            at: start.duration_since(self.origin),
            took: end.duration_since(start),
            target: if outcome.target.is_empty() {
                "-".to_owned()
            } else {
                outcome.target
            },
            victim_id: outcome.victim_id,
            note: result.err(),
            start,
            end,
        };
        println!(
            "soak +{:.3}s {} {} ({:.2}s){}",
            record.at.as_secs_f64(),
            record.kind,
            record.target,
            record.took.as_secs_f64(),
            record
                .note
                .as_ref()
                .map_or(String::new(), |n| format!(": {n}"))
        );
        self.timeline.push(record);
        self.check_alive();
    }

    /// `docker kill`, `stop`, `rm -f`, `restart`, `pause` or `network disconnect` of a
    /// running replica.
    async fn hit_replica(&mut self, kind: FaultKind, outcome: &mut Outcome) -> Result<(), String> {
        let victim = self.victim().await?;
        if matches!(
            kind,
            FaultKind::DockerRestart | FaultKind::DockerPause | FaultKind::NetworkDisconnect
        ) {
            self.ledger
                .lock()
                .expect("ledger lock")
                .returns
                .push(Instant::now());
        }
        outcome.target = victim.name.clone();
        outcome.victim_id = Some(victim.id.clone());
        let (docker, id) = (&self.docker, victim.id.as_str());
        let call = async {
            match kind {
                FaultKind::DockerKill => docker.kill_container(id, None).await,
                FaultKind::DockerStop => docker.stop_container(id, None).await,
                FaultKind::DockerRm => {
                    let force = RemoveContainerOptionsBuilder::default().force(true).build();
                    docker.remove_container(id, Some(force)).await
                }
                FaultKind::DockerRestart => docker.restart_container(id, None).await,
                FaultKind::DockerPause => {
                    docker.pause_container(id).await?;
                    tokio::time::sleep(HOLD).await;
                    docker.unpause_container(id).await
                }
                _ => {
                    let request = NetworkDisconnectRequest {
                        container: id.to_owned(),
                        force: Some(false),
                    };
                    docker
                        .disconnect_network(&self.fixture.network, request)
                        .await
                }
            }
        };
        let within = Duration::from_secs(20);
        match tokio::time::timeout(within, call).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{kind}: {e}")),
            Err(_) => Err(format!("{kind} took over {within:?}")),
        }
    }

    /// A `replicas` edit (renamed into place or written in place), a template edit,
    /// or an invalid edit fixed a moment later.
    async fn edit_spec(&mut self, kind: FaultKind, outcome: &mut Outcome) -> Result<(), String> {
        match kind {
            FaultKind::ReplicasEdit | FaultKind::InPlaceEdit => {
                let n = self.other_replicas();
                outcome.target = format!("replicas {} -> {n}", self.replicas);
                let version = self.version;
                self.write_spec(n, version, kind == FaultKind::InPlaceEdit)
                    .await
            }
            FaultKind::TemplateEdit => {
                outcome.target = format!("GREETING v{} -> v{}", self.version, self.version + 1);
                let (replicas, version) = (self.replicas, self.version + 1);
                self.write_spec(replicas, version, false).await
            }
            _ => {
                let which = self.rng.random_range(0..INVALID_EDITS.len());
                let hold = between(
                    &mut self.rng,
                    &(Duration::from_secs(2)..=Duration::from_secs(3)),
                );
                outcome.target = format!(
                    "{}, fixed after {:.1}s",
                    INVALID_EDITS[which],
                    hold.as_secs_f64()
                );
                let valid = spec_text(self.fixture, self.replicas, self.version);
                self.fixture.write_spec(&invalid_text(&valid, which));
                tokio::time::sleep(hold).await;
                self.fixture.write_spec(&valid);
                Ok(())
            }
        }
    }

    /// SIGKILL of dockscale and a restart, or SIGSTOP for a while and SIGCONT.
    async fn hit_controller(
        &mut self,
        kind: FaultKind,
        outcome: &mut Outcome,
    ) -> Result<(), String> {
        let pid = self.process.pid().unwrap_or(0);
        self.mark_down();
        if kind == FaultKind::DockscaleKill {
            let pause = between(
                &mut self.rng,
                &(Duration::from_millis(200)..=Duration::from_millis(1000)),
            );
            outcome.target = format!("pid {pid}, restarted after {:.1}s", pause.as_secs_f64());
            self.process.kill();
            tokio::time::sleep(pause).await;
            self.process.restart();
            self.mark_up();
            self.process
                .wait_listening(Duration::from_secs(20))
                .await
                .map(|_| ())
        } else {
            outcome.target = format!("pid {pid}");
            self.process.suspend();
            tokio::time::sleep(HOLD).await;
            self.process.resume();
            self.mark_up();
            Ok(())
        }
    }

    /// SIGKILL of HAProxy's master and workers; a probe times its recovery.
    fn kill_haproxy(&mut self, outcome: &mut Outcome) -> Result<(), String> {
        let killed = Instant::now();
        let pids = kill_haproxy(&self.fixture.state_dir())?;
        outcome.target = format!("pids {pids:?}");
        let index = {
            let mut w = self.windows.lock().expect("windows lock");
            w.push(HaproxyWindow {
                killed,
                recovered: None,
                pids,
                new_master: None,
            });
            w.len() - 1
        };
        let probe = probe_recovery(
            format!("http://{}/", self.fixture.bind),
            self.fixture.state_dir().join("haproxy.pid"),
            self.windows.clone(),
            index,
            self.config.haproxy_recovery_limit,
        );
        self.probes.push(AbortOnDrop(Some(tokio::spawn(probe))));
        Ok(())
    }

    /// A dockscale that exited on its own is a violation; it is started again (as
    /// its service manager would) so that the soak goes on.
    fn check_alive(&mut self) {
        if let Some(status) = self.process.exited() {
            self.violations.push(format!(
                "dockscale exited on its own at +{:.3}s ({status})",
                self.origin.elapsed().as_secs_f64()
            ));
            self.process.kill();
            self.process.restart();
        }
    }

    /// Whether the world is converged on `self.replicas`; what is off if not.
    async fn converged(&self) -> Result<(), String> {
        let seen = list_service(&self.docker, &self.fixture.service, &self.fixture.network).await?;
        let mut off = Vec::new();
        let leftovers: Vec<String> = seen
            .iter()
            .filter(|c| c.state != "running")
            .map(|c| format!("{} {}", c.name, c.state))
            .collect();
        if !leftovers.is_empty() {
            off.push(format!("left over: {}", leftovers.join(", ")));
        }
        let running: Vec<&Seen> = seen.iter().filter(|c| c.state == "running").collect();
        if running.len() != self.replicas as usize {
            off.push(format!(
                "{} running for {} desired",
                running.len(),
                self.replicas
            ));
        }
        let unattached: Vec<&str> = running
            .iter()
            .filter(|c| c.ip.is_none())
            .map(|c| c.name.as_str())
            .collect();
        if !unattached.is_empty() {
            off.push(format!(
                "running without an address on {}: {}",
                self.fixture.network,
                unattached.join(", ")
            ));
        }
        let replicas: BTreeSet<SocketAddrV4> = running
            .iter()
            .filter_map(|c| c.ip.map(|ip| SocketAddrV4::new(ip, 8080)))
            .collect();
        match self
            .fixture
            .api()
            .servers_state(&self.fixture.backend)
            .await
        {
            Err(e) => off.push(format!("show servers state: {e}")),
            Ok(servers) => {
                let in_rotation: Vec<_> = servers.iter().filter(|s| !s.in_maintenance()).collect();
                let addrs: BTreeSet<SocketAddrV4> = in_rotation
                    .iter()
                    .map(|s| SocketAddrV4::new(s.addr, s.port))
                    .collect();
                let not_up: Vec<String> = in_rotation
                    .iter()
                    .filter(|s| !s.running() || s.draining())
                    .map(|s| format!("{} {}:{}", s.name, s.addr, s.port))
                    .collect();
                if addrs != replicas || in_rotation.len() != replicas.len() {
                    off.push(format!(
                        "rotation {addrs:?} ({} servers) is not the replicas {replicas:?}",
                        in_rotation.len()
                    ));
                }
                if !not_up.is_empty() {
                    off.push(format!("in rotation but not UP: {}", not_up.join(", ")));
                }
            }
        }
        match self.process.service_status(&self.fixture.service).await {
            Err(e) => off.push(format!("status API: {e}")),
            Ok(status) => {
                let hash = status["templateHash"].as_str().unwrap_or_default();
                if status["replicas"]["desired"] != self.replicas {
                    off.push(format!(
                        "the controller's desired is {} (the spec says {})",
                        status["replicas"]["desired"], self.replicas
                    ));
                }
                let stale: Vec<String> = running
                    .iter()
                    .filter(|c| hash.is_empty() || c.template_hash != hash)
                    .map(|c| format!("{} {}", c.name, c.template_hash))
                    .collect();
                if !stale.is_empty() {
                    off.push(format!(
                        "not on the current template {hash:?}: {}",
                        stale.join(", ")
                    ));
                }
            }
        }
        if off.is_empty() {
            Ok(())
        } else {
            Err(off.join("; "))
        }
    }

    /// What the controller's status says is wrong: its conditions that are not as
    /// they should be, and its last warning.
    async fn controller_says(&self) -> String {
        let status = match self.process.service_status(&self.fixture.service).await {
            Ok(s) => s,
            Err(e) => return format!("the status API did not answer: {e}"),
        };
        let healthy =
            |kind: &str| matches!(kind, "Available" | "Progressing" | "LoadBalancerSynced");
        let mut said: Vec<String> = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                let kind = c["type"].as_str().unwrap_or_default();
                c["status"].as_bool() != Some(healthy(kind))
            })
            .map(|c| {
                format!(
                    "{}={} {}: {}",
                    c["type"].as_str().unwrap_or("?"),
                    c["status"],
                    c["reason"].as_str().unwrap_or(""),
                    c["message"].as_str().unwrap_or("")
                )
            })
            .collect();
        let warning = status["events"]
            .as_array()
            .into_iter()
            .flatten()
            .rev()
            .find(|e| e["type"] == "Warning");
        if let Some(w) = warning {
            said.push(format!(
                "last warning: {} {}",
                w["reason"].as_str().unwrap_or(""),
                w["message"].as_str().unwrap_or("")
            ));
        }
        if said.is_empty() {
            "the controller reports nothing wrong".to_owned()
        } else {
            format!("the controller says: {}", said.join("; "))
        }
    }

    /// Polls [`Self::converged`] until it holds, having begun to hold within `within`
    /// and held for [`STABLE`] since (a moment when everything matches, just before
    /// the controller acts on a fault it has not seen yet, is not convergence).
    /// Returns when it began to hold.
    async fn converge(&self, within: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let mut since: Option<Instant> = None;
        loop {
            match self.converged().await {
                Ok(()) => {
                    let began = *since.get_or_insert_with(Instant::now);
                    if began.elapsed() >= STABLE {
                        return Ok(began.duration_since(start));
                    }
                }
                Err(off) => {
                    since = None;
                    if start.elapsed() > within {
                        return Err(format!("{off}; {}", self.controller_says().await));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs the soak against `fixture`'s service with the dockscale binary `bin`.
pub async fn run(fixture: &LbFixture, bin: &Path, config: &SoakConfig) -> SoakReport {
    println!(
        "soak seed {} (replay: SOAK_SEED={}); up to {} faults in {:?}, {:?} apart",
        config.seed, config.seed, config.faults, config.fault_phase, config.gap
    );
    let docker = bollard::Docker::connect_with_defaults()
        .expect("the Docker socket")
        .negotiate_version()
        .await
        .expect("the Docker engine answers");
    let mut args: Vec<String> = fixture.lb_run_args(&[]).into_iter().skip(1).collect();
    args.extend(config.dockscale_args.iter().cloned());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    fixture.write_spec(&spec_text(fixture, config.replicas, 1));
    ledger
        .lock()
        .expect("ledger lock")
        .desired
        .push((Instant::now(), config.replicas));
    let process = DockscaleProcess::spawn(bin, args, fixture.dir.path().join("dockscale.log"));
    let mut soak = Soak {
        fixture,
        config,
        docker: docker.clone(),
        process,
        rng: StdRng::seed_from_u64(config.seed),
        deck: Vec::new(),
        ledger: ledger.clone(),
        windows: Arc::new(Mutex::new(Vec::new())),
        probes: Vec::new(),
        replicas: config.replicas,
        version: 1,
        origin: Instant::now(),
        timeline: Vec::new(),
        violations: Vec::new(),
    };

    let initial = match soak.process.wait_listening(Duration::from_secs(20)).await {
        Ok(_) => soak.converge(Duration::from_secs(60)).await,
        Err(e) => Err(e),
    };
    if let Err(off) = initial {
        soak.violations
            .push(format!("never converged at the start: {off}"));
        let log_tail = soak.process.log_digest(200, 80);
        return SoakReport {
            seed: config.seed,
            timeline: Vec::new(),
            load: LoadReport::default(),
            outside: BTreeMap::new(),
            outside_samples: Vec::new(),
            inside_windows: BTreeMap::new(),
            allowed_cuts: 0,
            windows: Vec::new(),
            replacements: Vec::new(),
            monitor: MonitorReport::default(),
            convergence: Err(off),
            final_replicas: soak.replicas,
            last_fault_end: Duration::ZERO,
            violations: soak.violations,
            log_tail,
            origin: soak.origin,
        };
    }

    // The load's bound: the whole fault phase, convergence and some slack.
    let limit = config.lead
        + config.fault_phase
        + *config.gap.end()
        + config.converge_within
        + Duration::from_secs(60);
    let load = KeepAliveLoad::start(
        &format!("http://{}{}", fixture.bind, config.path),
        config.clients,
        config.client_timeout,
        limit,
    );
    soak.origin = load.started();
    let stop_monitor = Arc::new(AtomicBool::new(false));
    let monitor_task = AbortOnDrop(Some(tokio::spawn(monitor(
        docker,
        fixture.service.clone(),
        fixture.network.clone(),
        ledger,
        soak.origin,
        stop_monitor.clone(),
    ))));

    tokio::time::sleep(config.lead).await;
    let phase_start = Instant::now();
    let mut next = phase_start;
    while soak.timeline.len() < config.faults
        && next.duration_since(phase_start) <= config.fault_phase
    {
        tokio::time::sleep_until(next.into()).await;
        let kind = soak.next_kind();
        let started = Instant::now();
        soak.inject(kind).await;
        next = started + between(&mut soak.rng, &config.gap);
    }
    let last_end = soak.timeline.last().map_or_else(Instant::now, |f| f.end);

    let checked = Instant::now();
    let remaining = config.converge_within.saturating_sub(last_end.elapsed());
    let convergence = soak
        .converge(remaining)
        .await
        .map(|began| (checked + began).duration_since(last_end));
    soak.check_alive();
    // A moment of steady load after convergence: requests must not fail then either.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let load = load.finish().await;
    stop_monitor.store(true, Ordering::Relaxed);
    let monitor = monitor_task.join().await.unwrap_or_default();
    for probe in std::mem::take(&mut soak.probes) {
        let _ = probe.join().await;
    }
    let windows = soak.windows.lock().expect("windows lock").clone();

    judge(soak, load, monitor, windows, convergence, last_end)
}

/// A replica the soak SIGKILLed, which may excuse one response cut mid-body.
#[derive(Clone, Debug)]
struct ReplicaKill {
    at: Instant,
    /// Its container id (`X-Served-By` carries the first 12 characters).
    id: String,
}

/// Failures sorted by the soak's rules.
#[derive(Debug, Default)]
struct Sorted {
    outside: BTreeMap<FailureClass, u64>,
    outside_samples: Vec<OutsideFailure>,
    inside: BTreeMap<FailureClass, u64>,
    allowed_cuts: u64,
}

/// Sorts failures into those inside an HAProxy-kill window, the mid-body cuts a
/// replica SIGKILL explains (one per kill, from the killed replica, ending after the
/// kill) and the rest, which fail the soak.
fn sort_failures(
    failures: &[Failure],
    windows: &[HaproxyWindow],
    kills: &[ReplicaKill],
    limit: Duration,
    origin: Instant,
) -> Sorted {
    let mut sorted = Sorted::default();
    let mut used = vec![false; kills.len()];
    for f in failures {
        if windows.iter().any(|w| w.covers(f, limit)) {
            *sorted.inside.entry(f.class).or_default() += 1;
            continue;
        }
        if f.class == FailureClass::MidBody {
            if let Some(by) = f.served_by.as_deref().filter(|b| !b.is_empty()) {
                let kill = kills
                    .iter()
                    .enumerate()
                    .find(|(i, k)| !used[*i] && f.end >= k.at && k.id.starts_with(by));
                if let Some((i, _)) = kill {
                    used[i] = true;
                    sorted.allowed_cuts += 1;
                    continue;
                }
            }
        }
        *sorted.outside.entry(f.class).or_default() += 1;
        if sorted.outside_samples.len() < 20 {
            sorted.outside_samples.push(OutsideFailure {
                sent: f.start.saturating_duration_since(origin),
                ended: f.end.saturating_duration_since(origin),
                class: f.class,
                served_by: f.served_by.clone(),
            });
        }
    }
    sorted
}

/// How long after `from`, in controller time, the replicas counted first reached the
/// `replicas` value in force, within `limit`.
fn replacement_time(
    series: &[(Instant, u32)],
    ledger: &Ledger,
    from: Instant,
    limit: Duration,
) -> Option<Duration> {
    series
        .iter()
        .filter(|(t, _)| *t >= from)
        .map(|(t, n)| {
            (
                ledger.controller_time(from, *t),
                *n >= ledger.desired_at(*t),
            )
        })
        .take_while(|(took, _)| *took <= limit)
        .find(|(_, enough)| *enough)
        .map(|(took, _)| took)
}

/// Sorts the failures and collects the violations.
fn judge(
    mut soak: Soak<'_>,
    load: LoadReport,
    monitor: MonitorReport,
    windows: Vec<HaproxyWindow>,
    convergence: Result<Duration, String>,
    last_end: Instant,
) -> SoakReport {
    let config = soak.config;
    let origin = soak.origin;
    let kills: Vec<ReplicaKill> = soak
        .timeline
        .iter()
        .filter(|f| f.kind.sigkills_replica() && f.note.is_none())
        .filter_map(|f| {
            Some(ReplicaKill {
                at: f.start,
                id: f.victim_id.clone()?,
            })
        })
        .collect();
    let Sorted {
        mut outside,
        outside_samples,
        inside,
        allowed_cuts,
    } = sort_failures(
        &load.failures,
        &windows,
        &kills,
        config.haproxy_recovery_limit,
        origin,
    );
    // Failures beyond the kept ones cannot be placed: they count against the soak.
    let unplaced = load.failed_total() - load.failures.len() as u64;
    if unplaced > 0 {
        *outside.entry(FailureClass::Other).or_default() += unplaced;
    }

    let replacements: Vec<(Duration, FaultKind, String, Option<Duration>)> = {
        let ledger = soak.ledger.lock().expect("ledger lock");
        soak.timeline
            .iter()
            .filter(|f| f.kind.removes_replica() && f.note.is_none())
            .map(|f| {
                let took = replacement_time(&monitor.series, &ledger, f.end, config.replace_within);
                (f.at, f.kind, f.target.clone(), took)
            })
            .collect()
    };
    let mut violations = std::mem::take(&mut soak.violations);
    for (at, kind, target, took) in &replacements {
        if took.is_none() {
            violations.push(format!(
                "{kind} of {target} at +{:.3}s: \
                 the replicas were not back to the desired count within {:?}",
                at.as_secs_f64(),
                config.replace_within
            ));
        }
    }
    let outside_total: u64 = outside.values().sum();
    if outside_total > 0 {
        violations.push(format!(
            "{outside_total} failed requests outside HAProxy-kill windows ({})",
            classes(&outside)
        ));
    }
    if load.ok < 1000 {
        violations.push(format!("the load barely ran: {} requests ok", load.ok));
    }
    if monitor.over > 0 {
        violations.push(format!(
            "{} samples with more replicas than the bound \
             (desired + maxSurge + 1, +1 per replica restarted, paused or disconnected lately; \
             first: {})",
            monitor.over,
            monitor.over_samples.first().map_or("", String::as_str)
        ));
    }
    for w in &windows {
        if w.recovered.is_none() {
            violations.push(format!(
                "HAProxy killed at +{:.3}s did not serve again within {:?}",
                w.killed.duration_since(origin).as_secs_f64(),
                config.haproxy_recovery_limit
            ));
        }
    }
    if let Err(off) = &convergence {
        violations.push(format!(
            "not converged within {:?} of the last fault: {off}",
            config.converge_within
        ));
    }
    SoakReport {
        seed: config.seed,
        last_fault_end: last_end.saturating_duration_since(origin),
        timeline: std::mem::take(&mut soak.timeline),
        load,
        outside,
        outside_samples,
        inside_windows: inside,
        allowed_cuts,
        windows,
        replacements,
        monitor,
        convergence,
        final_replicas: soak.replicas,
        violations,
        log_tail: soak.process.log_digest(200, 60),
        origin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, secs: f64) -> Instant {
        t0 + Duration::from_secs_f64(secs)
    }

    #[test]
    fn a_lower_replicas_value_takes_over_after_the_grace_in_controller_time() {
        let t0 = Instant::now();
        let ledger = Ledger {
            desired: vec![(t0, 5), (at(t0, 10.0), 3)],
            down: vec![(at(t0, 12.0), Some(at(t0, 15.0)))],
            returns: Vec::new(),
        };
        assert_eq!(ledger.recent_desired(at(t0, 5.0)), 5);
        assert_eq!(
            ledger.recent_desired(at(t0, 21.0)),
            5,
            "9 s of controller time"
        );
        assert_eq!(
            ledger.recent_desired(at(t0, 24.5)),
            5,
            "11.5 s of controller time"
        );
        assert_eq!(
            ledger.recent_desired(at(t0, 25.5)),
            3,
            "12.5 s of controller time"
        );
        assert_eq!(ledger.bound(at(t0, 25.5)), 3 + MAX_SURGE + 1);
        assert_eq!(ledger.desired_at(at(t0, 10.5)), 3);
    }

    #[test]
    fn a_restarted_or_disconnected_replica_raises_the_bound_for_the_grace() {
        let t0 = Instant::now();
        let ledger = Ledger {
            desired: vec![(t0, 4)],
            down: Vec::new(),
            returns: vec![at(t0, 10.0), at(t0, 15.0)],
        };
        assert_eq!(ledger.bound(at(t0, 9.0)), 6);
        assert_eq!(ledger.bound(at(t0, 16.0)), 8);
        assert_eq!(ledger.bound(at(t0, 23.0)), 7);
        assert_eq!(ledger.bound(at(t0, 28.0)), 6);
    }

    #[test]
    fn a_higher_replicas_value_counts_from_its_write() {
        let t0 = Instant::now();
        let ledger = Ledger {
            desired: vec![(t0, 3), (at(t0, 10.0), 5)],
            down: Vec::new(),
            returns: Vec::new(),
        };
        assert_eq!(ledger.recent_desired(at(t0, 9.0)), 3);
        assert_eq!(ledger.recent_desired(at(t0, 10.0)), 5);
        assert_eq!(ledger.recent_desired(at(t0, 100.0)), 5);
    }

    #[test]
    fn a_replacement_is_timed_in_controller_time_until_the_count_is_back() {
        let t0 = Instant::now();
        let ledger = Ledger {
            desired: vec![(t0, 4)],
            down: vec![(at(t0, 11.0), Some(at(t0, 14.0)))],
            returns: Vec::new(),
        };
        let series: Vec<(Instant, u32)> = [(9.0, 4), (10.0, 3), (12.0, 3), (16.0, 4)]
            .iter()
            .map(|(s, n)| (at(t0, *s), *n))
            .collect();
        let limit = Duration::from_secs(10);
        let took = replacement_time(&series, &ledger, at(t0, 10.0), limit).expect("replaced");
        assert!(
            (took.as_secs_f64() - 3.0).abs() < 1e-6,
            "{took:?}: 6 s less 3 s stopped"
        );
        let tight = Duration::from_secs(2);
        assert_eq!(
            replacement_time(&series, &ledger, at(t0, 10.0), tight),
            None
        );
        let none_after = &series[..3];
        assert_eq!(
            replacement_time(none_after, &ledger, at(t0, 10.0), limit),
            None
        );
    }

    #[test]
    fn a_window_covers_failures_overlapping_it_plus_the_margin() {
        let t0 = Instant::now();
        let w = HaproxyWindow {
            killed: at(t0, 10.0),
            recovered: Some(at(t0, 11.0)),
            pids: vec![1],
            new_master: None,
        };
        let f = |s: f64, e: f64| Failure {
            class: FailureClass::Refused,
            start: at(t0, s),
            end: at(t0, e),
            served_by: None,
        };
        let limit = Duration::from_secs(15);
        assert!(w.covers(&f(9.0, 10.1), limit), "in flight at the kill");
        assert!(w.covers(&f(10.5, 10.5), limit));
        assert!(w.covers(&f(11.2, 11.2), limit), "within the margin");
        assert!(!w.covers(&f(11.3, 11.3), limit), "after the margin");
        assert!(!w.covers(&f(9.0, 9.9), limit), "before the kill");
        let open = HaproxyWindow {
            recovered: None,
            ..w
        };
        assert!(open.covers(&f(24.0, 24.0), limit));
        assert!(!open.covers(&f(26.0, 26.0), limit), "the limit closes it");
    }

    #[test]
    fn a_cut_is_excused_once_per_sigkill_of_the_replica_that_sent_it() {
        let t0 = Instant::now();
        let cut = |secs: f64, by: &str| Failure {
            class: FailureClass::MidBody,
            start: at(t0, secs - 0.05),
            end: at(t0, secs),
            served_by: Some(by.to_owned()),
        };
        let kills = [ReplicaKill {
            at: at(t0, 10.0),
            id: "0123456789abcdef".to_owned(),
        }];
        let limit = Duration::from_secs(15);
        let sorted = sort_failures(
            &[
                cut(9.0, "0123456789ab"),   // before the kill
                cut(10.01, "0123456789ab"), // the kill's own cut
                cut(10.02, "0123456789ab"), // a second one
                cut(10.03, "ffffffffffff"), // another replica
            ],
            &[],
            &kills,
            limit,
            t0,
        );
        assert_eq!(sorted.allowed_cuts, 1);
        assert_eq!(sorted.outside.get(&FailureClass::MidBody), Some(&3));
        assert!(sorted.inside.is_empty());
    }

    #[test]
    fn failures_in_a_window_are_counted_apart_and_the_rest_fail() {
        let t0 = Instant::now();
        let window = HaproxyWindow {
            killed: at(t0, 10.0),
            recovered: Some(at(t0, 11.0)),
            pids: vec![1],
            new_master: None,
        };
        let failure = |secs: f64, class| Failure {
            class,
            start: at(t0, secs),
            end: at(t0, secs),
            served_by: None,
        };
        let sorted = sort_failures(
            &[
                failure(10.5, FailureClass::Refused),
                failure(10.6, FailureClass::NoResponse),
                failure(20.0, FailureClass::Status5xx),
            ],
            &[window],
            &[],
            Duration::from_secs(15),
            t0,
        );
        assert_eq!(sorted.inside.values().sum::<u64>(), 2);
        assert_eq!(sorted.outside.get(&FailureClass::Status5xx), Some(&1));
        assert_eq!(sorted.outside_samples.len(), 1);
        assert_eq!(sorted.outside_samples[0].ended, Duration::from_secs(20));
    }

    #[test]
    fn every_invalid_edit_fails_validation_and_the_valid_spec_passes() {
        let fixture = LbFixture::new("unit-soakspec");
        let valid = spec_text(&fixture, 4, 1);
        let path = fixture.spec_path();
        dockscale::spec::manifest::parse_str(&path, &valid).expect("the soak's spec is valid");
        for (i, what) in INVALID_EDITS.iter().enumerate() {
            let text = invalid_text(&valid, i);
            assert!(
                dockscale::spec::manifest::parse_str(&path, &text).is_err(),
                "{what} passed validation:\n{text}"
            );
        }
    }

    #[test]
    fn a_seed_deals_every_kind_once_per_deck() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut deck = FaultKind::ALL.to_vec();
        deck.shuffle(&mut rng);
        let kinds: BTreeSet<FaultKind> = deck.iter().copied().collect();
        assert_eq!(kinds.len(), FaultKind::ALL.len());
        let mut again = FaultKind::ALL.to_vec();
        again.shuffle(&mut StdRng::seed_from_u64(7));
        assert_eq!(deck, again, "a seed replays its order");
    }
}
