//! One reconcile pass of one service: observe, plan (pure), apply the plan to memory,
//! execute it, and derive the status; and the dry run, which is the same pass without
//! the last three.

use tokio::time::Instant;
use tracing::Instrument;

use crate::controller::autoscaling::follow_autoscaler;
use crate::controller::error::{error_policy, ReconcileError};
use crate::controller::observe::{observe, Observation};
use crate::controller::store::Refresh;
use crate::controller::Controller;
use crate::lb::{LoadBalancer, MemberCounts};
use crate::model::member::Member;
use crate::model::replica::{ContainerId, ContainerState, Replica};
use crate::reconcile::conditions::{self, Context};
use crate::reconcile::{self, Action, ExitRecord, Limits, Plan, Verdict};
use crate::runtime::{ContainerRuntime, DockerError};
use crate::serve::metrics::Metrics;
use crate::serve::status::{ContainerStatus, EventType, MemberStatus};
use crate::spec::ServiceSpec;

impl<R: ContainerRuntime, L: LoadBalancer> Controller<R, L> {
    /// Reconciles every service that is due, from one Docker list.
    pub(super) async fn reconcile_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .services
            .iter()
            .filter(|(_, e)| e.due.is_some_and(|d| d <= now))
            .map(|(n, _)| n.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        for name in &due {
            if let Some(e) = self.services.get_mut(name) {
                e.due = None;
            }
        }
        let listed = match self.refresh_store().await {
            Ok(listed) => {
                self.status.update(|s| s.docker_reachable = true);
                listed
            }
            Err(e) => {
                tracing::error!(error = %crate::report::Chain(&e), "listing containers");
                self.status.update(|s| s.docker_reachable = false);
                let e = ReconcileError::Runtime(e);
                for name in &due {
                    if let Some(entry) = self.services.get_mut(name) {
                        entry.failures += 1;
                        if let Some(after) = error_policy(&e, entry.failures) {
                            entry.wake(Instant::now() + after);
                        }
                    }
                }
                return;
            }
        };
        let members = self.store.members();
        self.make_room_for_members(&members).await;
        let observations = futures::future::join_all(due.iter().filter_map(|name| {
            let entry = self.services.get(name)?;
            Some(observe(
                self.runtime.clone(),
                self.lb.clone(),
                entry,
                &listed,
                &members,
                self.settings.probe_timeout,
            ))
        }))
        .await;
        for (name, observation) in due.iter().zip(observations) {
            let span = tracing::info_span!("reconcile", service = %name);
            self.reconcile_one(name, &listed, &members, observation)
                .instrument(span)
                .await;
        }
    }

    /// More members than ever seen joining a service: its slot pool must leave room
    /// for them too (a reload only when the pool is too small).
    async fn make_room_for_members(&mut self, members: &[Member]) {
        let mut counts = MemberCounts::new();
        for m in members.iter().filter(|m| m.is_running()) {
            *counts.entry(m.service.clone()).or_default() += 1;
        }
        let mut more = false;
        for (service, n) in counts {
            let seen = self.lb_state.members_seen.entry(service).or_default();
            if n > *seen {
                *seen = n;
                more = true;
            }
        }
        if more {
            self.configure_lb().await;
        }
    }

    /// Brings the store up to date: a full list when it may be incomplete, else one
    /// inspect per container that changed since it was read; and the members listed
    /// again when one of them changed.
    async fn refresh_store(&mut self) -> Result<Vec<Replica>, DockerError> {
        match self.store.take_refresh() {
            Refresh::Nothing => {}
            Refresh::List => {
                let started = std::time::Instant::now();
                let listed = self.runtime.list_owned().await;
                self.metrics
                    .docker_list_duration_seconds
                    .observe(started.elapsed().as_secs_f64());
                match listed {
                    Ok(listed) => self.store.listed(listed),
                    Err(e) => {
                        self.store.invalidate();
                        return Err(e);
                    }
                }
            }
            Refresh::Inspect(ids) => {
                let runtime = self.runtime.clone();
                let read =
                    futures::future::join_all(ids.iter().map(|id| runtime.inspect_owned(id))).await;
                self.metrics.docker_inspects_total.inc_by(ids.len() as u64);
                for (id, result) in ids.into_iter().zip(read) {
                    match result {
                        Ok(replica) => self.store.inspected(id, replica),
                        Err(e) => {
                            self.store.invalidate();
                            return Err(e);
                        }
                    }
                }
            }
        }
        if self.store.take_member_list() {
            match self.runtime.list_members().await {
                Ok(members) => self.store.members_listed(members),
                Err(e) => {
                    self.store.invalidate();
                    return Err(e);
                }
            }
        }
        Ok(self.store.replicas(Instant::now()))
    }

    /// The plan of one service's pass from the Docker list and its observation. Pure
    /// but for the clock read: the dry run and the real pass share it.
    fn plan(
        &self,
        name: &str,
        listed: &[Replica],
        members: &[Member],
        observed: &Observation,
    ) -> Option<Plan> {
        let entry = self.services.get(name)?;
        let input = reconcile::Input {
            spec: &entry.spec.spec,
            desired: entry.desired(),
            template_hash: &entry.template_hash,
            replicas: listed
                .iter()
                .filter(|r| r.service == name && !r.is_warm())
                .collect(),
            warm: listed
                .iter()
                .filter(|r| r.service == name && r.is_warm())
                .collect(),
            warm_size: entry.warm_size(),
            members: members.iter().filter(|m| m.service == name).collect(),
            image_present: observed.image_present,
            pull: &entry.pull,
            backend: observed.backend.as_ref().ok(),
            backend_error: observed
                .backend
                .as_ref()
                .err()
                .map(|e| (e.reason(), e.message.as_str())),
            answering: &observed.answering,
            now: self.settings.clock.now(),
            limits: Limits {
                max_parallel: self.settings.max_parallel,
            },
            backoff: &self.settings.crash_backoff,
            previous: entry.previous_template(),
        };
        Some(reconcile::plan(&input, &entry.memory))
    }

    async fn reconcile_one(
        &mut self,
        name: &str,
        listed: &[Replica],
        members: &[Member],
        observed: Observation,
    ) {
        let _timer = self.metrics.reconcile_timer(name);
        self.follow_autoscaler(name, listed);
        if let Some(entry) = self.services.get_mut(name) {
            entry.adopt_until_resolved(listed);
        }
        let Some(plan) = self.plan(name, listed, members, &observed) else {
            return;
        };
        tracing::debug!(actions = ?plan.actions, counts = ?plan.counts, "planned");
        self.record_rollout(name, &plan);
        if let Some(entry) = self.services.get_mut(name) {
            entry.memory.apply_plan(&plan);
            if entry.settled(&plan) {
                if let Some(writer) = &self.history_writer {
                    writer.keep(name, &entry.history);
                }
            }
            let warm: std::collections::BTreeSet<&ContainerId> = listed
                .iter()
                .filter(|r| r.service == name && r.is_warm())
                .map(|r| &r.id)
                .collect();
            entry.memory.warm.forget_gone(&warm);
        }
        self.report_exits(name, &plan);
        self.leave_old_backends(name, listed).await;
        let mut errors = self.execute(name, &plan).await;
        // A backend that could not be read is a failed pass too: it is looked at again
        // as its cause says (HAProxy restarting: within 2 s), not at the next resync.
        if let Err(e) = &observed.backend {
            if e.kind != crate::lb::LbErrorKind::NotInUse {
                errors.push(ReconcileError::LoadBalancer(e.clone()));
            }
        }

        let Some(entry) = self.services.get_mut(name) else {
            return;
        };
        if errors.is_empty() {
            entry.failures = 0;
        } else {
            entry.failures += 1;
        }
        let result = if errors.is_empty() { "ok" } else { "error" };
        self.metrics
            .reconcile_total
            .with_label_values(&[name, result])
            .inc();
        for e in &errors {
            self.metrics
                .reconcile_errors_total
                .with_label_values(&[name, e.label()])
                .inc();
        }
        let counts = plan.counts;
        for (gauge, value) in [
            (&self.metrics.replicas_desired, counts.desired),
            (&self.metrics.replicas_current, counts.current),
            (&self.metrics.replicas_ready, counts.ready),
            (&self.metrics.replicas_updated, counts.updated),
        ] {
            gauge.with_label_values(&[name]).set(i64::from(value));
        }
        report_canary(&self.metrics, name, &entry.spec.spec, &plan);
        self.metrics.warm_pool(name, &plan.warm);
        let in_rotation = plan.members.iter().filter(|m| m.in_rotation).count();
        self.metrics
            .members_in_rotation
            .with_label_values(&[name])
            .set(i64::try_from(in_rotation).unwrap_or(i64::MAX));
        // The slowest cause decides; in motion, the plan's requeue unless an error asks
        // to wait longer.
        let backoff = errors
            .iter()
            .filter_map(|e| error_policy(e, entry.failures))
            .max();
        let requeue = match (plan.requeue_after, backoff) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(after) = requeue {
            entry.wake(Instant::now() + after);
        }
        let replicas = listed.iter().filter(|r| r.service == name).count();
        let finished = entry.deleting
            && replicas == 0
            && entry.memory.creating().next().is_none()
            && !entry
                .memory
                .replicas
                .values()
                .any(|t| t.phase == reconcile::Phase::Stopping);
        self.update_status(name, &plan, &errors);
        self.publish_rollout(name, &plan);
        if finished {
            tracing::info!(service = name, "service removed");
            self.services.remove(name);
            self.status.update(|s| s.services.remove(name));
            self.metrics.forget_service(name);
            self.configure_lb().await;
        }
    }

    /// The backends the service left: the servers pointing at its replicas leave
    /// rotation (an external HAProxy keeps a backend the spec no longer names; managed
    /// mode drops it at its reload). A backend that is gone is forgotten; one that
    /// cannot be read now is tried again next pass.
    async fn leave_old_backends(&mut self, name: &str, listed: &[Replica]) {
        let Some(entry) = self.services.get(name) else {
            return;
        };
        if entry.left_backends.is_empty() {
            return;
        }
        let ours: std::collections::BTreeSet<std::net::Ipv4Addr> = listed
            .iter()
            .filter(|r| r.service == name)
            .flat_map(|r| r.ips.values().copied())
            .collect();
        let mut done = Vec::new();
        for backend in entry.left_backends.clone() {
            match self.lb.backend(&backend).await {
                Ok(b) => {
                    for slot in &b.slots {
                        let in_rotation = slot.admin != crate::model::backend::Admin::Maint;
                        let ours = slot.addr.is_some_and(|a| ours.contains(a.ip()));
                        if in_rotation && ours {
                            if let Err(e) = self.lb.release(&backend, &slot.name).await {
                                tracing::warn!(
                                    error = %crate::report::Chain(&e),
                                    %backend,
                                    slot = %slot.name,
                                    "releasing a server of a backend the service left"
                                );
                            }
                        }
                    }
                    tracing::info!(
                        service = name,
                        %backend,
                        "left the backend: its servers are out of rotation"
                    );
                    done.push(backend);
                }
                Err(e) if e.kind == crate::lb::LbErrorKind::Unreachable => {}
                Err(_) => done.push(backend),
            }
        }
        if let Some(entry) = self.services.get_mut(name) {
            entry.left_backends.retain(|b| !done.contains(b));
        }
    }

    /// The service's autoscaler follows its spec, starting from what runs.
    fn follow_autoscaler(&mut self, name: &str, listed: &[Replica]) {
        let started = self.started.elapsed();
        let Some(entry) = self.services.get_mut(name) else {
            return;
        };
        let running = listed
            .iter()
            .filter(|r| r.service == name && !r.is_warm() && r.state == ContainerState::Running)
            .count() as u32;
        follow_autoscaler(&mut entry.autoscaler, &entry.spec.spec, running, started);
    }

    /// The exits the plan judged: events and metrics.
    fn report_exits(&self, name: &str, plan: &Plan) {
        if plan.exits.is_empty() {
            return;
        }
        for judged in &plan.exits {
            self.metrics
                .replica_exits_total
                .with_label_values(&[name, judged.exit.cause.label()])
                .inc();
            if matches!(judged.verdict, Verdict::Crash { .. }) {
                self.metrics
                    .container_restarts_total
                    .with_label_values(&[name])
                    .inc();
            }
        }
        let now = self.settings.clock.wall();
        self.status.update(|s| {
            if let Some(svc) = s.services.get_mut(name) {
                for judged in &plan.exits {
                    let (kind, reason, message) = exit_event(&judged.exit, &judged.verdict);
                    svc.record(kind, reason, message, now);
                }
            }
        });
    }

    /// Counts, conditions and events after a pass, derived by
    /// [`conditions::derive`] and written into the service's status.
    fn update_status(&mut self, name: &str, plan: &Plan, errors: &[ReconcileError]) {
        let Some(entry) = self.services.get_mut(name) else {
            return;
        };
        let wall = self.settings.clock.wall();
        let last_desired = entry.last_desired.replace(plan.counts.desired);
        let lb_errors: Vec<String> = errors
            .iter()
            .filter(|e| matches!(e, ReconcileError::LoadBalancer(_)))
            .map(|e| crate::report::chain(e))
            .collect();
        let ctx = Context {
            spec: &entry.spec.spec,
            template_hash: &entry.template_hash,
            memory: &entry.memory,
            create_error: entry
                .create_error
                .as_ref()
                .map(|(reason, message)| (*reason, message.as_str())),
            lb_config_error: self.lb_state.error.as_deref(),
            lb_errors: &lb_errors,
            last_desired,
            now: Instant::now(),
            wall,
        };
        let backend = entry
            .spec
            .spec
            .load_balancer
            .as_ref()
            .map(|l| l.backend.to_string());
        let hash = entry.template_hash.clone();
        self.status.update(|s| {
            let Some(svc) = s.services.get_mut(name) else {
                return;
            };
            let update = conditions::derive(plan, &ctx, svc);
            svc.observed_generation = svc.generation;
            svc.template_hash = hash;
            svc.replicas = plan.counts;
            svc.containers = plan
                .replicas
                .iter()
                .map(|r| ContainerStatus {
                    name: r.name.clone(),
                    id: r.id.short().to_owned(),
                    state: r.serving.to_owned(),
                    health: r.health.map(|h| h.as_str().to_owned()),
                    updated: r.updated,
                    slot: r.slot.clone(),
                })
                .collect();
            svc.members = plan.members.iter().map(member_status).collect();
            svc.warm_pool = (plan.warm != Default::default()).then_some(plan.warm);
            svc.backend = backend;
            update.apply(svc, wall);
        });
    }

    /// Observes once and describes what the next pass would do for every service,
    /// without executing anything (`dockscale run --dry-run`).
    pub async fn dry_run(mut self) -> Result<String, DockerError> {
        let listed = self.runtime.list_owned().await?;
        self.store.listed(listed);
        let members = self.runtime.list_members().await?;
        self.store.members_listed(members);
        let listed = self.store.replicas(Instant::now());
        let members = self.store.members();
        let mut out = String::new();
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            let Some(entry) = self.services.get(&name) else {
                continue;
            };
            let observed = observe(
                self.runtime.clone(),
                self.lb.clone(),
                entry,
                &listed,
                &members,
                self.settings.probe_timeout,
            )
            .await;
            self.follow_autoscaler(&name, &listed);
            let Some(plan) = self.plan(&name, &listed, &members, &observed) else {
                continue;
            };
            let backend = self.services.get(&name).and_then(|e| {
                e.spec
                    .spec
                    .load_balancer
                    .as_ref()
                    .map(|l| l.backend.to_string())
            });
            out.push_str(&describe_plan(&name, backend.as_deref(), &plan, &listed));
        }
        Ok(out)
    }
}

/// A canary's step, the figures it was judged on and its verdicts, as the plan has
/// them: metrics (never a second reading of HAProxy). The figures of an abort stay
/// while the aborted template is the spec's, to show why.
fn report_canary(m: &Metrics, name: &str, spec: &ServiceSpec, plan: &Plan) {
    let aborted = plan.aborted.is_some();
    let in_force = plan
        .canary
        .as_ref()
        .filter(|c| !c.promoted && !aborted)
        .and_then(|c| Some((c.step, spec.rollout.steps.get(c.step)?)));
    let (step, weight) = in_force.map_or((0, 0.0), |(i, s)| {
        (
            i64::try_from(i + 1).unwrap_or(i64::MAX),
            f64::from(s.weight) / 100.0,
        )
    });
    m.canary_step.with_label_values(&[name]).set(step);
    m.canary_weight_ratio.with_label_values(&[name]).set(weight);
    m.canary_aborted
        .with_label_values(&[name])
        .set(i64::from(aborted));
    match &plan.canary_analysis {
        Some(a) => {
            if !matches!(a.verdict, reconcile::canary::Verdict::Hold { .. }) {
                m.canary_verdicts_total
                    .with_label_values(&[name, a.verdict.label()])
                    .inc();
            }
            m.canary_figures(name, Some(a));
        }
        None if aborted => {}
        None => m.canary_figures(name, None),
    }
}

/// A plan as an operator reads it: one line per action.
pub fn describe_plan(
    service: &str,
    backend: Option<&str>,
    plan: &Plan,
    listed: &[Replica],
) -> String {
    use std::fmt::Write;
    let c = plan.counts;
    let mut out = format!(
        "{service}: desired {}, current {}, ready {}, up-to-date {}\n",
        c.desired, c.current, c.ready, c.updated
    );
    if plan.warm.size > 0 {
        let w = plan.warm;
        let _ = writeln!(
            out,
            "  warm pool: size {}, ready {}, warming {}",
            w.size, w.ready, w.warming
        );
    }
    let name_of = |id: &ContainerId| {
        listed
            .iter()
            .find(|r| &r.id == id)
            .map_or_else(|| id.to_string(), |r| r.name.clone())
    };
    let backend = backend.unwrap_or("-");
    let mut creates = 0;
    for action in &plan.actions {
        // Writing to a String cannot fail.
        let _ = match action {
            Action::EnsureNetwork => writeln!(out, "  create network (if missing)"),
            Action::Pull { image } => writeln!(out, "  pull image {image}"),
            Action::Create { .. } => {
                creates += 1;
                Ok(())
            }
            Action::Restore { .. } => writeln!(
                out,
                "  create a replica of the previous template (the rollout was aborted)"
            ),
            Action::Remove { name, reason, .. } => {
                writeln!(out, "  stop and remove {name} ({reason:?})")
            }
            Action::AssignSlot { id, slot, addr } => writeln!(
                out,
                "  add server {backend}/{slot} -> {addr} for {} (maintenance, weight 0)",
                name_of(id)
            ),
            Action::Enable { id, slot } => {
                writeln!(out, "  enable server {backend}/{slot} ({})", name_of(id))
            }
            Action::Drain { id, slot, reason } => writeln!(
                out,
                "  drain server {backend}/{slot} ({}, {reason:?})",
                name_of(id)
            ),
            Action::Cut { slot, addr } => writeln!(
                out,
                "  release server {backend}/{slot} and cut its connections to {addr} (its replica \
                 is gone)"
            ),
            Action::Release { slot } => {
                writeln!(
                    out,
                    "  release server {backend}/{slot} (maintenance, freed)"
                )
            }
            Action::Reconfigure { slot } => {
                writeln!(out, "  re-apply weight and maxconn to {backend}/{slot}")
            }
            Action::Weigh { slot, weight } => {
                writeln!(
                    out,
                    "  set weight {weight} on {backend}/{slot} (canary split)"
                )
            }
            Action::Suspend { id, slot } => writeln!(
                out,
                "  suspend server {backend}/{slot} ({}, paused: maintenance until it runs again)",
                name_of(id)
            ),
            Action::Take { warm, replica, .. } => writeln!(
                out,
                "  take warm {warm} as replica {replica} (unpause, rename)"
            ),
            Action::CreateWarm => {
                writeln!(out, "  create a warm container (paused once it answers)")
            }
            Action::Pause { name, .. } => writeln!(out, "  pause warm {name} (its port answered)"),
            Action::RemoveWarm { name, reason, .. } => {
                writeln!(out, "  stop and remove warm {name} ({})", reason.label())
            }
        };
    }
    if creates > 0 {
        let _ = writeln!(out, "  create {creates} replica(s)");
    }
    for note in &plan.notes {
        let _ = writeln!(out, "  note: {note:?}");
    }
    if plan.actions.is_empty() {
        out.push_str("  nothing to do\n");
    }
    out
}

/// A member as the service's status lists it.
fn member_status(m: &reconcile::MemberView) -> MemberStatus {
    MemberStatus {
        name: m.name.clone(),
        id: m.id.short().to_owned(),
        state: format!("{:?}", m.state).to_lowercase(),
        serving: m.serving.to_owned(),
        in_rotation: m.in_rotation,
        slot: m.slot.clone(),
    }
}

/// The event of an exit the crash-loop lines looked at.
fn exit_event(exit: &ExitRecord, verdict: &Verdict) -> (EventType, &'static str, String) {
    let name = &exit.name;
    let what = exit.describe();
    match verdict {
        Verdict::Replace => (
            EventType::Warning,
            "ReplicaStopped",
            format!("Replica {name} {what}; replacing it at once (not a crash)"),
        ),
        Verdict::Crash { delay, .. } if delay.is_zero() => (
            EventType::Warning,
            "ReplicaExited",
            format!("Replica {name} {what}; replacing it"),
        ),
        Verdict::Crash { restarts, delay } => (
            EventType::Warning,
            "BackOff",
            format!(
                "Replica {name} {what}: {restarts} crashes in a row on its line; back-off {} \
                 before replacing it (other replicas are not held back)",
                humantime::format_duration(*delay)
            ),
        ),
    }
}
