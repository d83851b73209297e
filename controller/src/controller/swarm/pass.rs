//! One pass of a service on Swarm: read the service, its tasks and the backend, probe,
//! plan (pure), ask Swarm and HAProxy for what the plan says; the removal of a service
//! whose document went away; the dry run.

use super::report::note_rollback;
use super::*;

impl<L: LoadBalancer> SwarmController<L> {
    /// One pass over every service, from one list of the nodes.
    pub(super) async fn pass_all(&mut self) {
        let nodes = match self.api.nodes().await {
            Ok(nodes) => {
                self.status.update(|s| s.docker_reachable = true);
                nodes
            }
            Err(e) => {
                tracing::error!(error = %crate::report::Chain(&e), "listing the swarm's nodes");
                self.status.update(|s| s.docker_reachable = false);
                return;
            }
        };
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            let _timer = self.metrics.reconcile_timer(&name);
            let result = self.pass(&name, &nodes).await;
            let label = if result.is_ok() { "ok" } else { "error" };
            self.metrics
                .reconcile_total
                .with_label_values(&[&name, label])
                .inc();
            if let Err(e) = result {
                let error = crate::report::Chain(&e);
                tracing::warn!(service = %name, %error, "swarm pass failed");
                self.metrics
                    .reconcile_errors_total
                    .with_label_values(&[&name, e.kind()])
                    .inc();
                let now = self.settings.clock.wall();
                let message = crate::report::chain(&e);
                self.status.update(|s| {
                    if let Some(svc) = s.services.get_mut(&name) {
                        svc.set_condition(
                            ConditionType::ReplicaFailure,
                            true,
                            "SwarmError",
                            &message,
                            now,
                        );
                    }
                });
            }
        }
    }

    /// One pass of one service: read, plan, act, report.
    pub(super) async fn pass(
        &mut self,
        name: &str,
        nodes: &BTreeMap<String, SwarmNode>,
    ) -> Result<(), DockerError> {
        let (service, tasks) = self.read(name).await?;
        if self.services.get(name).is_some_and(|e| e.deleting) {
            return self.remove(name, service.as_ref(), &tasks, nodes).await;
        }
        self.follow_autoscaler(name, &tasks);
        if let Some(entry) = self.services.get_mut(name) {
            note_rollback(
                entry,
                service.as_ref(),
                &self.status,
                self.settings.clock.wall(),
            );
        }
        let Some((planned, backend_error)) = self.plan(name, service.as_ref(), &tasks, nodes).await
        else {
            return Ok(());
        };
        tracing::debug!(change = ?planned.change, actions = ?planned.actions, "planned");
        let lb_errors = self.rotate(name, &planned.actions).await;
        self.change(name, &planned, service.as_ref()).await?;
        self.report(name, &planned, &tasks, nodes, backend_error.or(lb_errors));
        Ok(())
    }

    /// The service of that name and, when it is dockscale's, its tasks.
    pub(super) async fn read(
        &self,
        name: &str,
    ) -> Result<(Option<SwarmService>, Vec<SwarmTask>), DockerError> {
        let service = self.api.service(name).await?;
        let tasks = match &service {
            Some(s) if s.managed => self.api.tasks(&s.id).await?,
            _ => Vec::new(),
        };
        Ok((service, tasks))
    }

    /// Reads the backend, probes the tasks that may serve, and plans. Also returns why
    /// the backend could not be read.
    pub(super) async fn plan(
        &self,
        name: &str,
        service: Option<&SwarmService>,
        tasks: &[SwarmTask],
        nodes: &BTreeMap<String, SwarmNode>,
    ) -> Option<(SwarmPlan, Option<String>)> {
        let entry = self.services.get(name)?;
        let backend: Option<Result<Backend, LbError>> = match &entry.service.spec.load_balancer {
            Some(lb) => Some(self.lb.backend(lb.backend.as_str()).await),
            None => None,
        };
        let probe = plan::to_probe(tasks, nodes, backend.as_ref().and_then(|b| b.as_ref().ok()));
        let how = crate::runtime::Probe::of(&entry.service.spec);
        let answering =
            crate::runtime::probe_answering(probe, &how, self.settings.probe_timeout).await;
        let input = SwarmInput {
            desired: entry.desired(),
            template_hash: &entry.template_hash,
            spec_hash: &entry.spec_hash,
            service,
            tasks,
            nodes,
            backend: backend.as_ref().map(|b| b.as_ref().ok()),
            answering: &answering,
            rolled_back: entry.rolled_back.as_deref(),
        };
        let backend_error = match &backend {
            Some(Err(e)) => Some(e.to_string()),
            _ => None,
        };
        Some((plan::plan(&input), backend_error))
    }

    /// Reads once and describes what the next pass would do for every service, without
    /// changing anything (`dockscale run --runtime swarm --dry-run`).
    pub async fn dry_run(mut self) -> Result<String, DockerError> {
        use std::fmt::Write;
        let nodes = self.api.nodes().await?;
        let mut out = String::new();
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            let (service, tasks) = self.read(&name).await?;
            self.follow_autoscaler(&name, &tasks);
            let Some((planned, _)) = self.plan(&name, service.as_ref(), &tasks, &nodes).await
            else {
                continue;
            };
            let c = planned.counts;
            let _ = writeln!(
                out,
                "{name}: desired {}, running {}, ready {}, up-to-date {}",
                c.desired, c.current, c.ready, c.updated
            );
            let _ = match &planned.change {
                ServiceChange::Nothing => Ok(()),
                ServiceChange::Create => writeln!(out, "  create the Swarm service"),
                ServiceChange::Respec => writeln!(
                    out,
                    "  update the Swarm service's spec (Swarm rolls its tasks)"
                ),
                ServiceChange::Scale { from, to } => {
                    writeln!(out, "  scale the Swarm service from {from} to {to}")
                }
                ServiceChange::NameTaken => writeln!(
                    out,
                    "  a Swarm service of this name is not dockscale's: left alone"
                ),
            };
            for action in &planned.actions {
                let _ = writeln!(out, "  {action:?}");
            }
            if planned.change == ServiceChange::Nothing && planned.actions.is_empty() {
                out.push_str("  nothing to do\n");
            }
        }
        Ok(out)
    }

    /// Asks Swarm for what the plan says.
    pub(super) async fn change(
        &mut self,
        name: &str,
        planned: &SwarmPlan,
        service: Option<&SwarmService>,
    ) -> Result<(), DockerError> {
        let Some(entry) = self.services.get_mut(name) else {
            return Ok(());
        };
        let desired = entry.desired();
        let wall = self.settings.clock.wall();
        let event = match (&planned.change, service) {
            (ServiceChange::Create, _) => {
                self.api
                    .ensure_overlay(entry.service.spec.network.as_str())
                    .await?;
                let spec = service_spec(
                    &entry.service,
                    desired,
                    &entry.template_hash,
                    &entry.spec_hash,
                );
                let id = self.api.create_service(spec).await?;
                entry.sent = Some(entry.spec_hash.clone());
                Some((
                    EventType::Normal,
                    "ServiceCreated",
                    format!("Created Swarm service {name} ({id}) with {desired} task(s)"),
                ))
            }
            (ServiceChange::Respec, Some(s)) => {
                let spec = service_spec(
                    &entry.service,
                    desired,
                    &entry.template_hash,
                    &entry.spec_hash,
                );
                self.api.update_service(&s.id, s.version, spec).await?;
                entry.sent = Some(entry.spec_hash.clone());
                Some((
                    EventType::Normal,
                    "RolloutStarted",
                    format!(
                        "Swarm rolls the service to template {} ({desired} task(s))",
                        entry.template_hash
                    ),
                ))
            }
            (ServiceChange::Scale { from, to }, Some(s)) => {
                self.api
                    .update_service(&s.id, s.version, with_replicas(&s.spec, *to))
                    .await?;
                Some((
                    EventType::Normal,
                    "ScalingReplicaSet",
                    format!("Scaled the Swarm service from {from} to {to} task(s)"),
                ))
            }
            _ => None,
        };
        if let Some((kind, reason, message)) = event {
            self.status.update(|s| {
                if let Some(svc) = s.services.get_mut(name) {
                    svc.record(kind, reason, message, wall);
                }
            });
        }
        Ok(())
    }

    /// Carries out the load-balancer steps, in order. Returns the first failure.
    pub(super) async fn rotate(&mut self, name: &str, actions: &[Action]) -> Option<String> {
        let entry = self.services.get_mut(name)?;
        let lb = entry.service.spec.load_balancer.as_ref()?;
        let backend = lb.backend.to_string();
        let options = lb.server.clone();
        let mut failed: Option<String> = None;
        let mut unassigned: BTreeSet<&str> = BTreeSet::new();
        let mut events = Vec::new();
        for action in actions {
            let result = match action {
                Action::Enable { slot, .. } if unassigned.contains(slot.as_str()) => continue,
                Action::AssignSlot { slot, addr, .. } => {
                    let r = self.lb.assign(&backend, slot, *addr).await;
                    if r.is_err() {
                        unassigned.insert(slot);
                    }
                    r
                }
                Action::Enable { slot, .. } => self.lb.enable(&backend, slot, &options).await,
                Action::Drain { id, slot, .. } => {
                    let r = self.lb.drain(&backend, slot).await;
                    if r.is_ok() && entry.announced.insert(id.0.clone()) {
                        events.push(format!(
                            "Draining {backend}/{slot}: Swarm is stopping task {}",
                            id.short()
                        ));
                    }
                    r
                }
                Action::Release { slot } => self.lb.release(&backend, slot).await,
                Action::Cut { slot, addr } => match self.lb.release(&backend, slot).await {
                    Ok(()) => self.lb.sever(*addr).await.map(|_| ()),
                    Err(e) => Err(e),
                },
                _ => continue,
            };
            if let Err(e) = result {
                let error = crate::report::Chain(&e);
                tracing::warn!(%error, ?action, "load balancer step failed");
                failed.get_or_insert_with(|| e.to_string());
            }
        }
        if !events.is_empty() {
            let wall = self.settings.clock.wall();
            self.status.update(|s| {
                if let Some(svc) = s.services.get_mut(name) {
                    for message in events {
                        svc.record(EventType::Normal, "Draining", message, wall);
                    }
                }
            });
        }
        failed
    }

    /// The service's document went away: its servers out of rotation, then the Swarm
    /// service removed (Swarm stops its tasks with their grace period).
    pub(super) async fn remove(
        &mut self,
        name: &str,
        service: Option<&SwarmService>,
        tasks: &[SwarmTask],
        nodes: &BTreeMap<String, SwarmNode>,
    ) -> Result<(), DockerError> {
        if let Some(lb) = self
            .services
            .get(name)
            .and_then(|e| e.service.spec.load_balancer.clone())
        {
            let ours: BTreeSet<_> = tasks.iter().filter_map(|t| t.addr(nodes)).collect();
            if let Ok(b) = self.lb.backend(lb.backend.as_str()).await {
                for slot in b
                    .slots
                    .iter()
                    .filter(|s| s.addr.is_some_and(|a| ours.contains(&a)))
                {
                    let _ = self.lb.release(lb.backend.as_str(), &slot.name).await;
                }
            }
        }
        if let Some(s) = service.filter(|s| s.managed) {
            self.api.remove_service(&s.id).await?;
            tracing::info!(service = name, "removed the Swarm service");
        }
        self.services.remove(name);
        self.status.update(|s| s.services.remove(name));
        self.metrics.forget_service(name);
        self.configure_lb().await;
        Ok(())
    }
}
