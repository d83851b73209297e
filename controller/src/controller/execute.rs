//! Carrying a plan out, and the completions of what it started.
//!
//! Load-balancer steps run inline, in the plan's order (a server leaves rotation before
//! its container stops); Docker creates and stops run as background tasks whose
//! completions (`Done`) come back to the loop. Each action carried out is applied to
//! the service's memory, each completion too: nothing else changes it. The warm pool's
//! actions and their completions are in [`super::warm_pool`].

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::controller::error::{error_backoff, runtime_policy, ReconcileError};
use crate::controller::Controller;
use crate::lb::{LbError, LoadBalancer};
use crate::model::replica::{replica_name, ContainerId};
use crate::reconcile::{Action, Plan, RemoveReason};
use crate::runtime::{ContainerRuntime, CreateReplica, DockerError, PulledImage};
use crate::serve::status::EventType;

/// A Docker operation started by the loop, as it finished.
pub(crate) enum Done {
    Created {
        service: String,
        name: String,
        result: Result<ContainerId, DockerError>,
    },
    Removed {
        service: String,
        name: String,
        id: ContainerId,
        result: Result<(), DockerError>,
    },
    Pulled {
        service: String,
        image: String,
        took: Duration,
        result: Result<PulledImage, DockerError>,
    },
    /// A warm container was created and started.
    WarmCreated {
        service: String,
        name: String,
        result: Result<ContainerId, DockerError>,
    },
    /// A warm container's pause.
    Paused {
        service: String,
        name: String,
        id: ContainerId,
        result: Result<(), DockerError>,
    },
    /// A take: the warm container unpaused and renamed to a replica name.
    Taken {
        service: String,
        warm: String,
        replica: String,
        id: ContainerId,
        took: Duration,
        result: Result<(), DockerError>,
    },
    /// A warm container stopped and removed.
    WarmRemoved {
        service: String,
        id: ContainerId,
        result: Result<(), DockerError>,
    },
}

/// An event for the service's status.
pub(super) type NewEvent = (EventType, &'static str, String);

impl<R: ContainerRuntime, L: LoadBalancer> Controller<R, L> {
    /// Applies a plan: load-balancer steps first, then Docker operations as background
    /// tasks. Returns what failed.
    pub(super) async fn execute(&mut self, name: &str, plan: &Plan) -> Vec<ReconcileError> {
        let mut events = Vec::new();
        let errors = self.apply_inline(name, plan, &mut events).await;
        self.start_tasks(name, plan, &mut events);
        if !events.is_empty() {
            let now = self.settings.clock.wall();
            self.status.update(|s| {
                if let Some(svc) = s.services.get_mut(name) {
                    for (kind, reason, message) in events {
                        svc.record(kind, reason, message, now);
                    }
                }
            });
        }
        errors
    }

    /// The plan's load-balancer steps and its network, in order; each step carried
    /// out is applied to memory.
    async fn apply_inline(
        &mut self,
        name: &str,
        plan: &Plan,
        events: &mut Vec<NewEvent>,
    ) -> Vec<ReconcileError> {
        let mut errors = Vec::new();
        let Some(entry) = self.services.get_mut(name) else {
            return errors;
        };
        let spec = &entry.spec.spec;
        let backend = spec
            .load_balancer
            .as_ref()
            .map(|lb| lb.backend.to_string())
            .unwrap_or_default();
        let options = spec.load_balancer.as_ref().map(|lb| lb.server.clone());
        let name_of = |id: &ContainerId| self.store.name_of(id).map(str::to_owned);
        // A slot whose assignment failed in this pass is not enabled after it: it may
        // still hold another address.
        let mut unassigned: BTreeSet<&str> = BTreeSet::new();
        for action in &plan.actions {
            let result: Result<(), LbError> = match action {
                Action::Enable { slot, .. } if unassigned.contains(slot.as_str()) => continue,
                Action::Release { slot } => self.lb.release(&backend, slot).await,
                Action::Cut { slot, addr } => cut(self.lb.as_ref(), &backend, slot, *addr).await,
                Action::Drain { slot, reason, id } => {
                    let r = self.lb.drain(&backend, slot).await;
                    let fresh = name_of(id)
                        .as_deref()
                        .is_none_or(|n| entry.memory.draining_since(n).is_none());
                    if r.is_ok() && fresh {
                        events.push((
                            EventType::Normal,
                            "Draining",
                            format!(
                                "Draining {backend}/{slot} ({reason:?}) \
                                 before removing its replica"
                            ),
                        ));
                    }
                    r
                }
                Action::AssignSlot { slot, addr, .. } => {
                    let r = self.lb.assign(&backend, slot, *addr).await;
                    if r.is_err() {
                        unassigned.insert(slot);
                    }
                    r
                }
                Action::Enable { slot, .. } => match &options {
                    Some(o) => self.lb.enable(&backend, slot, o).await,
                    None => Ok(()),
                },
                Action::Reconfigure { slot } => match &options {
                    Some(o) => self.lb.reconfigure(&backend, slot, o).await,
                    None => Ok(()),
                },
                Action::Weigh { slot, weight } => match &options {
                    Some(o) => {
                        let o = crate::spec::ServerOptions {
                            weight: *weight,
                            ..o.clone()
                        };
                        self.lb.reconfigure(&backend, slot, &o).await
                    }
                    None => Ok(()),
                },
                Action::Suspend { slot, .. } => self.lb.suspend(&backend, slot).await,
                Action::EnsureNetwork => {
                    match self.runtime.ensure_network(spec.network.as_str()).await {
                        Ok(()) => entry.memory.network_ready = Some(spec.network.to_string()),
                        Err(source) => errors.push(ReconcileError::Network {
                            network: spec.network.to_string(),
                            source,
                        }),
                    }
                    continue;
                }
                Action::Pull { .. }
                | Action::Create { .. }
                | Action::Restore { .. }
                | Action::Remove { .. }
                | Action::Take { .. }
                | Action::CreateWarm
                | Action::Pause { .. }
                | Action::RemoveWarm { .. } => continue,
            };
            match result {
                Ok(()) => {
                    let replica = action.container().and_then(name_of);
                    entry
                        .memory
                        .applied(action, replica.as_deref(), Instant::now());
                }
                Err(e) => {
                    tracing::warn!(
                        error = %crate::report::Chain(&e),
                        ?action,
                        "load balancer step failed"
                    );
                    errors.push(e.into());
                }
            }
        }
        errors
    }

    /// The plan's creates and removals, as background tasks. Nothing is created into a
    /// network that could not be ensured (the creates of this pass are lost then: their
    /// lines start afresh, and nothing is created meanwhile).
    fn start_tasks(&mut self, name: &str, plan: &Plan, events: &mut Vec<NewEvent>) {
        let Some(entry) = self.services.get(name) else {
            return;
        };
        let network_ok =
            entry.memory.network_ready.as_deref() == Some(entry.spec.spec.network.as_str());
        for action in &plan.actions {
            match action {
                Action::Pull { image } => self.start_pull(name, image, events),
                Action::Create { restarts } if network_ok => {
                    self.start_create(name, *restarts, false)
                }
                Action::Restore { restarts } if network_ok => {
                    self.start_create(name, *restarts, true)
                }
                Action::Remove { .. } => self.start_removal(name, action, events),
                _ => self.start_warm_task(name, action, network_ok, events),
            }
        }
    }

    /// An image pull in the background.
    fn start_pull(&mut self, name: &str, image: &str, events: &mut Vec<NewEvent>) {
        let Some(entry) = self.services.get_mut(name) else {
            return;
        };
        entry.pull.started(Instant::now());
        events.push((
            EventType::Normal,
            "Pulling",
            format!("Pulling image {image}"),
        ));
        let runtime = self.runtime.clone();
        let (service, image) = (name.to_owned(), image.to_owned());
        self.tasks.spawn(async move {
            let started = Instant::now();
            let result = runtime.pull_image(&image).await;
            Done::Pulled {
                service,
                image,
                took: started.elapsed(),
                result,
            }
        });
    }

    /// A replica's create, on a line that crashed `restarts` times in a row: of the
    /// spec's template, or with `restore` of the template an aborted rollout replaced
    /// (the planner asks for one only when it is known).
    fn start_create(&mut self, name: &str, restarts: u32, restore: bool) {
        let Some(entry) = self.services.get_mut(name) else {
            return;
        };
        let spec = &entry.spec.spec;
        let (spec, template_hash) = match (restore, &entry.history.stable) {
            (true, Some(stable)) => {
                let spec = crate::spec::ServiceSpec {
                    template: stable.template.clone(),
                    ..spec.clone()
                };
                (std::borrow::Cow::Owned(spec), &stable.template_hash)
            }
            (true, None) => return,
            (false, _) => (std::borrow::Cow::Borrowed(spec), &entry.template_hash),
        };
        let mut rng = rand::rng();
        let replica = loop {
            let candidate = replica_name(name, &mut rng);
            if entry.memory.phase(&candidate).is_none() {
                break candidate;
            }
        };
        entry
            .memory
            .create_started(&replica, template_hash, restarts, Instant::now());
        let request = CreateReplica {
            name: replica,
            service: name.to_owned(),
            template_hash: template_hash.clone(),
            created_at_ns: self.settings.clock.now().unix_ns,
            spec: spec.into_owned(),
        };
        self.tasks.spawn(create(
            self.runtime.clone(),
            request,
            |service, name, result| Done::Created {
                service,
                name,
                result,
            },
        ));
    }

    /// A replica's stop and removal (once: not while it is stopping already).
    fn start_removal(&mut self, name: &str, action: &Action, events: &mut Vec<NewEvent>) {
        let Action::Remove {
            id,
            name: replica,
            reason,
        } = action
        else {
            return;
        };
        let Some(entry) = self.services.get_mut(name) else {
            return;
        };
        if entry.memory.is_stopping(replica) {
            return;
        }
        entry.memory.applied(action, Some(replica), Instant::now());
        self.metrics
            .container_stops_total
            .with_label_values(&[name, reason.label()])
            .inc();
        let spec = &entry.spec.spec;
        events.extend(removal_event(replica, reason, &spec.network));
        let runtime = self.runtime.clone();
        let service = name.to_owned();
        let (id, replica) = (id.clone(), replica.clone());
        let grace = spec.template.stop_grace_period.get();
        self.tasks.spawn(async move {
            let result = runtime.stop_and_remove(&id, grace).await;
            Done::Removed {
                service,
                name: replica,
                id,
                result,
            }
        });
    }

    pub(super) fn on_task(&mut self, done: Result<Done, tokio::task::JoinError>) {
        match done {
            Ok(done) => self.finished(done),
            Err(e) => tracing::error!(error = %e, "a docker task failed"),
        }
    }

    /// A Docker operation finished: its service's memory learns it, and the service
    /// looks again at once.
    fn finished(&mut self, done: Done) {
        let (service, event) = match done {
            Done::Created {
                service,
                name,
                result,
            } => {
                let event = self.create_finished(&service, &name, result);
                (service, event)
            }
            Done::Removed {
                service,
                name,
                id,
                result,
            } => {
                let event = self.removal_finished(&service, &name, id, result);
                (service, event)
            }
            Done::Pulled {
                service,
                image,
                took,
                result,
            } => {
                let event = self.pull_finished(&service, &image, took, result);
                (service, event)
            }
            done @ (Done::WarmCreated { .. }
            | Done::Paused { .. }
            | Done::Taken { .. }
            | Done::WarmRemoved { .. }) => self.warm_finished(done),
        };
        let Some(event) = event else {
            return;
        };
        let wall = self.settings.clock.wall();
        self.status.update(|s| {
            if let Some(svc) = s.services.get_mut(&service) {
                svc.record(event.0, event.1, event.2, wall);
            }
        });
    }

    fn create_finished(
        &mut self,
        service: &str,
        name: &str,
        result: Result<ContainerId, DockerError>,
    ) -> Option<NewEvent> {
        let entry = self.services.get_mut(service)?;
        entry.wake(Instant::now());
        match &result {
            Ok(id) => self.store.touch(id.clone()),
            // A failed create may leave a container behind: read everything.
            Err(_) => self.store.invalidate(),
        }
        let result_label = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .container_starts_total
            .with_label_values(&[service, result_label])
            .inc();
        Some(match result {
            Ok(id) => {
                entry.memory.created(name);
                entry.create_error = None;
                (
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("Created replica {name} ({id})"),
                )
            }
            Err(e) => {
                // A replica that cannot start counts as a crash of its line. A missing
                // image, a missing network or bind source, or an engine gone away is not
                // its doing: every create would fail alike, so creates wait, with
                // back-off (a missing network is ensured again first).
                let crash = !matches!(
                    e,
                    DockerError::ImageNotFound { .. }
                        | DockerError::Unavailable(_)
                        | DockerError::NetworkNotFound { .. }
                        | DockerError::BindSourceNotFound { .. }
                );
                let now = Instant::now();
                let delay = entry.memory.create_failed(
                    name,
                    &entry.template_hash,
                    crash,
                    now,
                    &self.settings.crash_backoff,
                );
                if !crash {
                    if matches!(e, DockerError::NetworkNotFound { .. }) {
                        entry.memory.network_ready = None;
                    }
                    let wait = runtime_policy(&e, entry.memory.create_failures + 1)
                        .unwrap_or(Duration::from_secs(1));
                    entry.memory.hold_creates(now + wait);
                }
                let held = matches!(e, DockerError::BindSourceNotFound { .. })
                    .then_some(entry.memory.creates_held_until)
                    .flatten();
                let delay = delay.or_else(|| held.map(|at| at.saturating_duration_since(now)));
                let (reason, message) = failed_create_event(name, &e, delay);
                entry.create_error = Some((reason, message.clone()));
                (EventType::Warning, reason, message)
            }
        })
    }

    /// A pull ended: the image is ready (for `Always`, the replicas follow the image ID
    /// it gave), or the next pull waits its back-off.
    fn pull_finished(
        &mut self,
        service: &str,
        image: &str,
        took: Duration,
        result: Result<PulledImage, DockerError>,
    ) -> Option<NewEvent> {
        let result_label = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .image_pulls_total
            .with_label_values(&[result_label])
            .inc();
        self.metrics
            .image_pull_duration_seconds
            .observe(took.as_secs_f64());
        let entry = self.services.get_mut(service)?;
        if entry.spec.spec.template.image != image || entry.pull.in_flight.is_none() {
            // The template changed while it was pulled: its own pull decides.
            return None;
        }
        entry.wake(Instant::now());
        let took_text = humantime::format_duration(round_ms(took));
        match result {
            Ok(pulled) => {
                tracing::info!(
                    image,
                    id = %pulled.id,
                    downloaded_bytes = pulled.downloaded_bytes,
                    took = %took_text,
                    "pulled image"
                );
                let id = pulled.id.clone();
                entry.pull.succeeded(pulled.id);
                if entry.rehash() {
                    tracing::info!(image, %id, template_hash = %entry.template_hash, "the image's tag names a new image: rolling the replicas");
                }
                Some((
                    EventType::Normal,
                    "Pulled",
                    format!(
                        "Successfully pulled image {image} in {took_text} ({} downloaded; image                          ID {})",
                        human_bytes(pulled.downloaded_bytes),
                        short_id(&id)
                    ),
                ))
            }
            Err(e) => {
                let message = match &e {
                    DockerError::PullFailed { message, .. } => message.clone(),
                    other => crate::report::chain(other),
                };
                let delay = entry.pull.failed(message.clone(), Instant::now());
                tracing::warn!(image, error = %message, back_off = %humantime::format_duration(delay), "image pull failed");
                Some((
                    EventType::Warning,
                    "Failed",
                    format!(
                        "Failed to pull image {image}: {message}; back-off {} before the next                          pull",
                        humantime::format_duration(delay)
                    ),
                ))
            }
        }
    }

    fn removal_finished(
        &mut self,
        service: &str,
        name: &str,
        id: ContainerId,
        result: Result<(), DockerError>,
    ) -> Option<NewEvent> {
        let entry = self.services.get_mut(service)?;
        self.store.touch(id);
        let Err(e) = result else {
            entry.memory.removed(name);
            entry.wake(Instant::now());
            return None;
        };
        // Tried again with a back-off of its own, not in a hot loop.
        let retry_at = Instant::now() + error_backoff(entry.memory.stop_failures(name));
        entry.memory.removal_failed(name, retry_at);
        entry.wake(retry_at);
        let message = format!(
            "Failed to remove replica {name}: {}",
            crate::report::chain(&e)
        );
        Some((EventType::Warning, "FailedDelete", message))
    }

    /// Lets Docker operations in flight finish (a create half done would leave a
    /// container to clean up), for a few seconds at most.
    pub(super) async fn shutdown(&mut self) {
        tracing::info!(
            in_flight = self.tasks.len(),
            "stopping the controller; replicas keep running"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(Ok(done))) => self.finished(done),
                Ok(Some(Err(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        self.tasks.abort_all();
        if let Some(writer) = self.history_writer.take() {
            writer.flush(Duration::from_secs(5)).await;
        }
    }
}

/// A duration to the millisecond, for messages.
pub(super) fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// `12.3 MB`: bytes as a person reads them.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `sha256:0123456789ab`: an image ID shortened as `docker images` does.
fn short_id(id: &str) -> &str {
    let end = id.find(':').map_or(12, |i| i + 13).min(id.len());
    &id[..end]
}

/// A vanished replica's slot: out of rotation first, then its connections cut.
async fn cut<L: LoadBalancer>(
    lb: &L,
    backend: &str,
    slot: &str,
    addr: std::net::SocketAddrV4,
) -> Result<(), LbError> {
    lb.release(backend, slot).await?;
    let cut = lb.sever(addr).await?;
    if cut > 0 {
        tracing::info!(
            %addr,
            cut,
            "cut the connections to a vanished replica; their requests are retried elsewhere"
        );
    }
    Ok(())
}

/// The event of a removal (an exit is reported when it is judged, not here).
fn removal_event(
    replica: &str,
    reason: &RemoveReason,
    network: &crate::spec::NetworkName,
) -> Option<(EventType, &'static str, String)> {
    match reason {
        RemoveReason::Exited { .. } => None,
        RemoveReason::NetworkLost => Some((
            EventType::Warning,
            "NetworkLost",
            format!("Replica {replica} lost its address on network {network}: replacing it"),
        )),
        RemoveReason::NeverStarted => Some((
            EventType::Warning,
            "NeverStarted",
            format!("Removing replica {replica}: it was created but never ran"),
        )),
        RemoveReason::Unhealthy => Some((
            EventType::Warning,
            "Unhealthy",
            format!(
                "Replica {replica} stayed unhealthy (its container health check fails) \
                 past unhealthyReplaceAfter: replacing it"
            ),
        )),
        RemoveReason::ScaleDown | RemoveReason::Rollout => Some((
            EventType::Normal,
            "SuccessfulDelete",
            format!("Removing replica {replica} ({reason:?})"),
        )),
    }
}

/// The reason and message of a failed create, with the line's back-off when it was a
/// crash.
fn failed_create_event(
    name: &str,
    e: &DockerError,
    delay: Option<Duration>,
) -> (&'static str, String) {
    match (e, delay) {
        (DockerError::ImageNotFound { image }, _) => (
            "ImageNotFound",
            format!(
                "image `{image}` is not present locally (imagePullPolicy: Never): build or load \
                 it"
            ),
        ),
        (e @ DockerError::BindSourceNotFound { .. }, delay) => (
            "BindSourceNotFound",
            format!(
                "Failed to create replica {name}: {}{}",
                crate::report::chain(e),
                delay
                    .map(|d| format!("; retrying in {}", humantime::format_duration(d)))
                    .unwrap_or_default()
            ),
        ),
        (e, Some(delay)) => (
            "FailedCreate",
            format!(
                "Failed to create replica {name}: {}; retrying in {}",
                crate::report::chain(e),
                humantime::format_duration(delay)
            ),
        ),
        (e, None) => (
            "FailedCreate",
            format!(
                "Failed to create replica {name}: {}",
                crate::report::chain(e)
            ),
        ),
    }
}

/// A create as a background task: the container of `request` created and started,
/// reported as `done` says (a replica's, or a warm container's).
pub(super) async fn create<R: ContainerRuntime>(
    runtime: std::sync::Arc<R>,
    request: CreateReplica,
    done: impl FnOnce(String, String, Result<ContainerId, crate::runtime::DockerError>) -> Done,
) -> Done {
    let (service, name) = (request.service.clone(), request.name.clone());
    let result = runtime.create_and_start(request).await;
    done(service, name, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_sizes_and_image_ids_read_as_docker_shows_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3_090_000), "3.1 MB");
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(
            short_id("sha256:6b745bf3ed95aaaaaaaaaaaaaaaa"),
            "sha256:6b745bf3ed95"
        );
        assert_eq!(short_id("abc"), "abc");
    }
}
