//! What a pass leaves: the autoscaler followed and ticked, counts, conditions, the task
//! list and events in the status, the gauges.

use super::*;

impl<L: LoadBalancer> SwarmController<L> {
    /// The service's autoscaler follows its spec, starting from the tasks Swarm keeps.
    pub(super) fn follow_autoscaler(&mut self, name: &str, tasks: &[SwarmTask]) {
        let started = self.started.elapsed();
        let Some(entry) = self.services.get_mut(name) else {
            return;
        };
        let running = tasks
            .iter()
            .filter(|t| t.desired == crate::runtime::swarm::TaskPhase::Running)
            .count() as u32;
        crate::controller::autoscaling::follow_autoscaler(
            &mut entry.autoscaler,
            &entry.service.spec,
            running,
            started,
        );
    }

    /// The metrics tick: autoscaled services sample their backend and decide.
    pub(super) async fn autoscale(&mut self) {
        let now = self.started.elapsed();
        let names: Vec<String> = self
            .services
            .iter()
            .filter(|(_, e)| e.autoscaler.is_some() && !e.deleting)
            .map(|(n, _)| n.clone())
            .collect();
        let mut changed = false;
        for name in names {
            let Some(backend) = self
                .services
                .get(&name)
                .and_then(|e| e.service.spec.load_balancer.as_ref())
                .map(|lb| lb.backend.to_string())
            else {
                continue;
            };
            let sample = self.lb.load(&backend).await.ok();
            let Some(entry) = self.services.get_mut(&name) else {
                continue;
            };
            let Some(autoscaler) = entry.autoscaler.as_mut() else {
                continue;
            };
            let wall = self.settings.clock.wall();
            let decision = autoscaler.observe(now, wall, sample);
            let config = autoscaler.config().clone();
            log_decision(&name, &decision, &mut entry.last_reason);
            changed |= decision.changed();
            publish_decision(
                &self.metrics,
                &self.status,
                wall,
                &name,
                &config,
                sample,
                &decision,
            );
        }
        if changed {
            self.pass_all().await;
        }
    }

    /// Counts, conditions and the task list into the status; gauges.
    pub(super) fn report(
        &mut self,
        name: &str,
        planned: &SwarmPlan,
        tasks: &[SwarmTask],
        nodes: &BTreeMap<String, SwarmNode>,
        lb_error: Option<String>,
    ) {
        let Some(entry) = self.services.get_mut(name) else {
            return;
        };
        let counts = planned.counts;
        for (gauge, value) in [
            (&self.metrics.replicas_desired, counts.desired),
            (&self.metrics.replicas_current, counts.current),
            (&self.metrics.replicas_ready, counts.ready),
            (&self.metrics.replicas_updated, counts.updated),
        ] {
            gauge.with_label_values(&[name]).set(i64::from(value));
        }
        let listed = task_statuses(tasks, nodes, planned);
        let conditions = plan::conditions(
            &entry.service.spec,
            planned,
            self.lb_error.as_deref().or(lb_error.as_deref()),
        );
        let update_changed = entry.last_update != planned.update;
        entry.last_update = planned.update;
        let wall = self.settings.clock.wall();
        let backend = entry
            .service
            .spec
            .load_balancer
            .as_ref()
            .map(|l| l.backend.to_string());
        let hash = entry.template_hash.clone();
        self.status.update(|s| {
            let Some(svc) = s.services.get_mut(name) else {
                return;
            };
            svc.observed_generation = svc.generation;
            svc.template_hash = hash;
            svc.replicas = counts;
            svc.backend = backend;
            svc.tasks = listed;
            for c in &conditions {
                if svc.set_condition(c.kind, c.status, c.reason, &c.message, wall) && c.event {
                    let kind = if c.warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    };
                    svc.record(kind, c.reason, c.message.clone(), wall);
                }
            }
            if update_changed {
                if let Some(state) = planned.update {
                    svc.record(
                        EventType::Normal,
                        "SwarmUpdate",
                        format!("Swarm's rolling update: {state:?}"),
                        wall,
                    );
                }
            }
        });
    }
}

/// A rollback Swarm made of the spec dockscale sent: remembered, so that it is not sent
/// again until the spec changes, and told in an event.
pub(super) fn note_rollback(
    entry: &mut Entry,
    service: Option<&SwarmService>,
    status: &StatusHandle,
    wall: std::time::SystemTime,
) {
    let Some(s) = service else {
        return;
    };
    let rolled = matches!(
        s.update.as_ref().map(|u| u.state),
        Some(
            UpdateState::RollbackStarted
                | UpdateState::RollbackCompleted
                | UpdateState::RollbackPaused
        )
    );
    let ours = entry.sent.as_deref() == Some(entry.spec_hash.as_str())
        || s.spec_hash.as_deref() != Some(entry.spec_hash.as_str());
    if rolled && ours && entry.rolled_back.as_deref() != Some(entry.spec_hash.as_str()) {
        entry.rolled_back = Some(entry.spec_hash.clone());
        let message = format!(
            "Swarm rolled back template {}: {}; it is not tried again until the spec changes",
            entry.template_hash,
            s.update.as_ref().map_or("", |u| u.message.as_str())
        );
        tracing::warn!(service = %s.name, "{message}");
        status.update(|st| {
            if let Some(svc) = st.services.get_mut(&s.name) {
                svc.record(EventType::Warning, "RolloutRolledBack", message, wall);
            }
        });
    }
}

pub(super) fn task_statuses(
    tasks: &[SwarmTask],
    nodes: &BTreeMap<String, SwarmNode>,
    planned: &SwarmPlan,
) -> Vec<TaskStatus> {
    let mut listed: Vec<TaskStatus> = tasks
        .iter()
        .filter(|t| {
            t.desired == crate::runtime::swarm::TaskPhase::Running
                || t.state == crate::runtime::swarm::TaskPhase::Running
        })
        .map(|t| TaskStatus {
            name: t.name.clone(),
            id: t.id.get(..12).unwrap_or(&t.id).to_owned(),
            node: t
                .node_id
                .as_ref()
                .and_then(|n| nodes.get(n))
                .map_or_else(|| "-".to_owned(), |n| n.hostname.clone()),
            desired: t.desired.as_str().to_owned(),
            state: t.state.as_str().to_owned(),
            addr: t.addr(nodes).map(|a| a.to_string()),
            in_rotation: planned.serving.contains(&t.id),
            template_hash: t.template_hash.clone(),
            error: t.error.clone(),
        })
        .collect();
    listed.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
    listed
}
