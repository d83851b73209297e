//! The loop's side of the warm pool: its actions (warm creates, pauses, takes, warm
//! removals) started as background tasks, and their completions applied to the
//! pool's memory ([`crate::reconcile::warm_pool::PoolMemory`]). A take is a replica's
//! create as far as the service's memory goes (`create_started`, then `created` once
//! the unpause and the rename are done). What to do is decided by the pure
//! [`crate::reconcile::warm_pool::step`]; nothing here decides.

use tokio::time::Instant;

use crate::controller::error::error_backoff;
use crate::controller::execute::{create, round_ms, Done, NewEvent};
use crate::controller::Controller;
use crate::lb::LoadBalancer;
use crate::model::replica::{warm_name, ContainerId};
use crate::reconcile::warm_pool::{Busy, WarmRemoval};
use crate::reconcile::Action;
use crate::runtime::{ContainerRuntime, CreateReplica, DockerError};
use crate::serve::status::EventType;

impl<R: ContainerRuntime, L: LoadBalancer> Controller<R, L> {
    /// One of the pool's actions of a plan, started (other actions are not the pool's
    /// and are left alone). No warm create into a network that is not ready.
    pub(super) fn start_warm_task(
        &mut self,
        name: &str,
        action: &Action,
        network_ok: bool,
        events: &mut Vec<NewEvent>,
    ) {
        match action {
            Action::Take {
                id,
                warm,
                replica,
                restarts,
            } => self.start_take(name, id, warm, replica, *restarts),
            Action::CreateWarm if network_ok => self.start_warm_create(name),
            Action::Pause { id, name: warm } => self.start_pause(name, id, warm),
            Action::RemoveWarm {
                id,
                name: warm,
                reason,
            } => self.start_warm_removal(name, id, warm, *reason, events),
            _ => {}
        }
    }

    /// A take: the warm container unpaused and renamed to a replica's name, on a line
    /// that crashed `restarts` times in a row.
    fn start_take(
        &mut self,
        name: &str,
        id: &ContainerId,
        warm: &str,
        replica: &str,
        restarts: u32,
    ) {
        let Some(entry) = self.services.get_mut(name) else {
            return;
        };
        if entry.memory.warm.busy.contains_key(id) {
            return;
        }
        entry.memory.warm.busy.insert(id.clone(), Busy::Taking);
        // A replica's create as far as the planner goes: pending until it
        // is listed under its new name.
        entry
            .memory
            .create_started(replica, &entry.template_hash, restarts, Instant::now());
        let runtime = self.runtime.clone();
        let service = name.to_owned();
        let (id, warm, replica) = (id.clone(), warm.to_owned(), replica.to_owned());
        self.tasks.spawn(async move {
            let started = Instant::now();
            let result = match runtime.unpause(&id).await {
                Ok(()) => runtime.rename(&id, &replica).await,
                Err(e) => Err(e),
            };
            Done::Taken {
                service,
                warm,
                replica,
                id,
                took: started.elapsed(),
                result,
            }
        });
    }

    /// A warm container's create and start, under a fresh warm name.
    fn start_warm_create(&mut self, name: &str) {
        let Some(entry) = self.services.get_mut(name) else {
            return;
        };
        let spec = &entry.spec.spec;
        let mut rng = rand::rng();
        let warm = loop {
            let candidate = warm_name(name, &mut rng);
            if !entry.memory.warm.creating.contains_key(&candidate) {
                break candidate;
            }
        };
        entry
            .memory
            .warm
            .creating
            .insert(warm.clone(), Instant::now());
        let request = CreateReplica {
            name: warm.clone(),
            service: name.to_owned(),
            template_hash: entry.template_hash.clone(),
            created_at_ns: self.settings.clock.now().unix_ns,
            spec: spec.clone(),
        };
        self.tasks.spawn(create(
            self.runtime.clone(),
            request,
            |service, name, result| Done::WarmCreated {
                service,
                name,
                result,
            },
        ));
    }

    /// A warm container's pause, once its port answered.
    fn start_pause(&mut self, name: &str, id: &ContainerId, warm: &str) {
        let Some(entry) = self.services.get_mut(name) else {
            return;
        };
        if entry.memory.warm.busy.contains_key(id) {
            return;
        }
        entry.memory.warm.busy.insert(id.clone(), Busy::Pausing);
        let runtime = self.runtime.clone();
        let service = name.to_owned();
        let (id, warm) = (id.clone(), warm.to_owned());
        self.tasks.spawn(async move {
            let result = runtime.pause(&id).await;
            Done::Paused {
                service,
                name: warm,
                id,
                result,
            }
        });
    }

    /// A warm container's removal (thawed first); a failure of the pool counts toward
    /// the refill's back-off, with an event saying which.
    fn start_warm_removal(
        &mut self,
        name: &str,
        id: &ContainerId,
        warm: &str,
        reason: WarmRemoval,
        events: &mut Vec<NewEvent>,
    ) {
        let Some(entry) = self.services.get_mut(name) else {
            return;
        };
        let spec = &entry.spec.spec;
        if entry.memory.warm.busy.contains_key(id) {
            return;
        }
        entry.memory.warm.busy.insert(id.clone(), Busy::Removing);
        let now = Instant::now();
        if reason.is_failure() && entry.memory.warm.broken_seen.insert(id.clone()) {
            let delay = entry.memory.warm.failed(now, &self.settings.crash_backoff);
            let what = match reason {
                WarmRemoval::NeverAnswered => format!(
                    "did not answer on its port within {} (progressDeadline)",
                    humantime::format_duration(spec.rollout.progress_deadline.get())
                ),
                _ => "exited or never ran".to_owned(),
            };
            events.push((
                EventType::Warning,
                "WarmPoolBackOff",
                format!(
                    "Warm container {warm} {what}; refilling the pool after {}",
                    humantime::format_duration(round_ms(delay))
                ),
            ));
        }
        tracing::info!(warm = %warm, reason = reason.label(), "removing a warm container");
        let runtime = self.runtime.clone();
        let service = name.to_owned();
        let id = id.clone();
        let grace = spec.template.stop_grace_period.get();
        self.tasks.spawn(async move {
            // A paused process cannot take its SIGTERM: thawed first (an
            // exited one answers an error, which changes nothing).
            let _ = runtime.unpause(&id).await;
            // A failed removal is tried again here, with a back-off, a few
            // times: the pass would otherwise ask again at once.
            let mut result = runtime.stop_and_remove(&id, grace).await;
            for attempt in 1..=3 {
                if result.is_ok() {
                    break;
                }
                tokio::time::sleep(error_backoff(attempt)).await;
                result = runtime.stop_and_remove(&id, grace).await;
            }
            Done::WarmRemoved {
                service,
                id,
                result,
            }
        });
    }

    /// A warm pool operation finished: the pool's memory learns it, the container is
    /// read again, and the service looks again at once.
    pub(super) fn warm_finished(&mut self, done: Done) -> (String, Option<NewEvent>) {
        let (service, event) = match done {
            Done::WarmCreated {
                service,
                name,
                result,
            } => {
                let event = self.warm_created(&service, &name, result);
                (service, event)
            }
            Done::Paused {
                service,
                name,
                id,
                result,
            } => {
                let event = self.warm_paused(&service, &name, id, result);
                (service, event)
            }
            Done::Taken {
                service,
                warm,
                replica,
                id,
                took,
                result,
            } => {
                let event = self.warm_taken(&service, &warm, &replica, id, took, result);
                (service, event)
            }
            Done::WarmRemoved {
                service,
                id,
                result,
            } => {
                let event = self.warm_removed(&service, id, result);
                (service, event)
            }
            Done::Created { service, .. }
            | Done::Removed { service, .. }
            | Done::Pulled { service, .. } => (service, None),
        };
        if let Some(entry) = self.services.get_mut(&service) {
            entry.wake(Instant::now());
        }
        (service, event)
    }

    /// A warm create finished; a failure backs the refill off.
    fn warm_created(
        &mut self,
        service: &str,
        name: &str,
        result: Result<ContainerId, DockerError>,
    ) -> Option<NewEvent> {
        let (now, policy) = (Instant::now(), self.settings.crash_backoff);
        let entry = self.services.get_mut(service)?;
        entry.memory.warm.creating.remove(name);
        match result {
            Ok(id) => {
                self.store.touch(id);
                None
            }
            Err(e) => {
                self.store.invalidate();
                if matches!(e, DockerError::NetworkNotFound { .. }) {
                    entry.memory.network_ready = None;
                }
                let delay = entry.memory.warm.failed(now, &policy);
                Some((
                    EventType::Warning,
                    "FailedCreate",
                    format!(
                        "Failed to create warm container {name}: {}; refilling the pool \
                         after {}",
                        crate::report::chain(&e),
                        humantime::format_duration(round_ms(delay))
                    ),
                ))
            }
        }
    }

    /// A pause finished: the container is ready to be taken, or it goes.
    fn warm_paused(
        &mut self,
        service: &str,
        name: &str,
        id: ContainerId,
        result: Result<(), DockerError>,
    ) -> Option<NewEvent> {
        let (now, policy) = (Instant::now(), self.settings.crash_backoff);
        self.store.touch(id.clone());
        let entry = self.services.get_mut(service)?;
        match result {
            Ok(()) => {
                entry.memory.warm.paused(&id);
                None
            }
            Err(e) => {
                // Not tried again in a loop: it goes, and the pool backs off.
                entry.memory.warm.busy.remove(&id);
                entry.memory.warm.spoiled.insert(id);
                let delay = entry.memory.warm.failed(now, &policy);
                Some((
                    EventType::Warning,
                    "FailedPause",
                    format!(
                        "Failed to pause warm container {name}: {}; replacing it after {}",
                        crate::report::chain(&e),
                        humantime::format_duration(round_ms(delay))
                    ),
                ))
            }
        }
    }

    /// A take finished: a replica now, or a cold create follows.
    fn warm_taken(
        &mut self,
        service: &str,
        warm: &str,
        replica: &str,
        id: ContainerId,
        took: std::time::Duration,
        result: Result<(), DockerError>,
    ) -> Option<NewEvent> {
        let (now, policy) = (Instant::now(), self.settings.crash_backoff);
        self.store.touch(id.clone());
        let entry = self.services.get_mut(service)?;
        entry.memory.warm.busy.remove(&id);
        let event = match result {
            Ok(()) => {
                entry.memory.created(replica);
                self.metrics
                    .warm_pool_takes_total
                    .with_label_values(&[service])
                    .inc();
                tracing::info!(%warm, %replica, took = ?took, "took a warm container");
                (
                    EventType::Normal,
                    "TookWarm",
                    format!(
                        "Took warm container {warm} as replica {replica} ({id}; \
                         unpaused and renamed in {})",
                        humantime::format_duration(round_ms(took))
                    ),
                )
            }
            Err(e) => {
                // Its line is not the replica's fault: a cold create follows.
                let hash = entry.template_hash.clone();
                entry
                    .memory
                    .create_failed(replica, &hash, false, now, &policy);
                entry.memory.warm.spoiled.insert(id);
                (
                    EventType::Warning,
                    "FailedTake",
                    format!(
                        "Failed to take warm container {warm}: {}; creating a replica \
                         instead",
                        crate::report::chain(&e)
                    ),
                )
            }
        };
        Some(event)
    }

    /// A warm removal finished.
    fn warm_removed(
        &mut self,
        service: &str,
        id: ContainerId,
        result: Result<(), DockerError>,
    ) -> Option<NewEvent> {
        self.store.touch(id.clone());
        let entry = self.services.get_mut(service)?;
        entry.memory.warm.busy.remove(&id);
        match result {
            Ok(()) => {
                entry.memory.warm.spoiled.remove(&id);
                entry.memory.warm.broken_seen.remove(&id);
                None
            }
            Err(e) => Some((
                EventType::Warning,
                "FailedDelete",
                format!(
                    "Failed to remove warm container {id}: {}",
                    crate::report::chain(&e)
                ),
            )),
        }
    }
}
