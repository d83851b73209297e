//! Docker's event stream, kept connected: what each event means for the container
//! store and which service it wakes. A broken stream is reconnected within 2 s (an
//! engine restart), and meanwhile every pass lists everything.

use std::time::{Duration, SystemTime};

use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::time::Instant;

use crate::controller::clock::unix_ns;
use crate::controller::error::engine_backoff;
use crate::controller::Controller;
use crate::lb::LoadBalancer;
use crate::runtime::{ContainerEvent, ContainerRuntime, DockerError};

type Events = BoxStream<'static, Result<ContainerEvent, DockerError>>;

/// The event stream, or when to connect it again.
#[derive(Default)]
pub(crate) struct EventFeed {
    stream: Option<Events>,
    retry_at: Option<Instant>,
    /// Broken connections in a row.
    failures: u32,
}

impl EventFeed {
    /// The next event; never, while disconnected.
    pub async fn next(&mut self) -> Option<Result<ContainerEvent, DockerError>> {
        match &mut self.stream {
            Some(stream) => stream.next().await,
            None => futures::future::pending().await,
        }
    }

    /// When to connect again, while disconnected.
    pub fn retry_at(&self) -> Option<Instant> {
        self.stream.is_none().then_some(self.retry_at).flatten()
    }
}

impl<R: ContainerRuntime, L: LoadBalancer> Controller<R, L> {
    /// Subscribes to Docker's events. They are replayed from a second back, so every
    /// container created since then has its `die` delivered (list-then-watch leaves no
    /// gap).
    pub(super) fn connect_events(&mut self, feed: &mut EventFeed) {
        let since = self
            .settings
            .clock
            .wall()
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.store.events_connected(unix_ns(since));
        feed.stream = Some(self.runtime.events());
        feed.retry_at = None;
    }

    /// While disconnected every pass reads everything; once the retry is due, connects
    /// again and reconciles every service (events may have been missed).
    pub(super) fn reconnect_events(&mut self, feed: &mut EventFeed, now: Instant) {
        if feed.stream.is_some() {
            return;
        }
        self.store.invalidate();
        if feed.retry_at.is_none_or(|at| at <= now) {
            self.connect_events(feed);
            self.wake_all();
        }
    }

    /// What the stream yielded: an event, or its end.
    pub(super) fn on_event_item(
        &mut self,
        item: Option<Result<ContainerEvent, DockerError>>,
        feed: &mut EventFeed,
    ) {
        match item {
            Some(Ok(event)) => {
                feed.failures = 0;
                self.on_event(event);
            }
            Some(Err(e)) => {
                tracing::warn!(
                    error = %crate::report::Chain(&e),
                    "docker event stream failed; resyncing"
                );
                feed.failures += 1;
                self.events_lost(feed);
            }
            None => {
                tracing::warn!("docker event stream ended; reconnecting");
                self.events_lost(feed);
            }
        }
    }

    fn events_lost(&mut self, feed: &mut EventFeed) {
        self.store.events_lost();
        feed.stream = None;
        feed.retry_at = Some(Instant::now() + engine_backoff(feed.failures));
    }

    /// An event: the store learns what it says; the service it concerns is woken (at
    /// once for a death or a disconnect, shortly for the rest, so a burst folds into one
    /// pass).
    fn on_event(&mut self, event: ContainerEvent) {
        let now = Instant::now();
        let network_event_of_member = event.service.is_none()
            && self.store.service_of(&event.id).is_none()
            && self.store.member_service_of(&event.id).is_some();
        if event.member || network_event_of_member {
            return self.on_member_event(event, now);
        }
        // A network's event names the container only: it matters if it is ours.
        let Some(service) = event
            .service
            .clone()
            .or_else(|| self.store.service_of(&event.id).map(str::to_owned))
        else {
            return;
        };
        tracing::debug!(
            action = %event.action,
            container = %event.id,
            service = %service,
            "docker event"
        );
        let wake = match event.action.as_str() {
            // React now: the server leaves rotation and a replacement starts.
            "die" => {
                self.store.exited(&event.id, event.exit_code, now);
                Some(now)
            }
            // Signals say who ended the container; the `die` that follows acts.
            "kill" => {
                self.store.signalled(&event.id, now);
                None
            }
            "oom" => {
                self.store.oom_killed(&event.id);
                None
            }
            "stop" => None,
            "start" => {
                self.store.started(event.id.clone());
                Some(now + Duration::from_millis(10))
            }
            // Out of the service network, or its health check changed its verdict
            // (`health_status: unhealthy`): in or out of rotation now.
            action if action == "disconnect" || action.starts_with("health_status") => {
                self.store.touch(event.id.clone());
                Some(now)
            }
            // A short delay folds a burst (start, destroy) into one pass.
            _ => {
                self.store.touch(event.id.clone());
                Some(now + Duration::from_millis(10))
            }
        };
        if let (Some(at), Some(entry)) = (wake, self.services.get_mut(&service)) {
            entry.wake(at);
        }
    }

    /// An event of a hand-started member: the members are listed again, and the
    /// service it joins is woken (at once: a member that died or left the network
    /// leaves rotation now, one that started enters it). Its `die` is applied as it
    /// comes, like a replica's.
    fn on_member_event(&mut self, event: ContainerEvent, now: Instant) {
        let Some(service) = event
            .service
            .clone()
            .or_else(|| self.store.member_service_of(&event.id).map(str::to_owned))
        else {
            return;
        };
        tracing::debug!(
            action = %event.action,
            container = %event.id,
            service = %service,
            "docker event of a member"
        );
        let wake = match event.action.as_str() {
            "die" => {
                self.store.member_exited(&event.id);
                Some(now)
            }
            "start" => {
                self.store.member_started(&event.id);
                Some(now + Duration::from_millis(10))
            }
            "kill" | "oom" => None,
            _ => {
                self.store.member_touched();
                Some(now)
            }
        };
        match (wake, self.services.get_mut(&service)) {
            (Some(at), Some(entry)) => entry.wake(at),
            (Some(_), None) => tracing::debug!(
                container = %event.id,
                service = %service,
                "a container joins a service that does not exist: ignored"
            ),
            (None, _) => {}
        }
    }
}
