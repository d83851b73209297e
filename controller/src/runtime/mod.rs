//! The container runtime as the controller sees it: the [`ContainerRuntime`] trait, the
//! events it streams and its error. The Docker implementation is [`docker`].
//!
//! The controller reaches containers only through this trait, so that a test can put
//! an in-memory runtime in its place. Nothing here decides what to create or remove.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddrV4;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use futures::stream::BoxStream;

use crate::model::replica::{ContainerId, Replica};
use crate::spec::ServiceSpec;

pub mod docker;
#[cfg(test)]
pub mod fake;
pub mod swarm;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine")]
    Unavailable(#[source] BollardError),
    #[error(
        "image `{image}` is not present locally (dockscale never pulls): build or load it first"
    )]
    ImageNotFound { image: String },
    #[error("the network `{network}` does not exist (removed since it was ensured)")]
    NetworkNotFound { network: String },
    #[error("docker refused {action}: {message}")]
    Api {
        action: &'static str,
        status: u16,
        message: String,
    },
}

impl DockerError {
    pub(crate) fn from_bollard(action: &'static str, e: BollardError) -> Self {
        match e {
            BollardError::DockerResponseServerError {
                status_code,
                message,
            } => DockerError::Api {
                action,
                status: status_code,
                message,
            },
            other => DockerError::Unavailable(other),
        }
    }

    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            DockerError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A short, bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DockerError::Unavailable(_) => "docker_unavailable",
            DockerError::ImageNotFound { .. } => "image_not_found",
            DockerError::NetworkNotFound { .. } => "network_not_found",
            DockerError::Api { .. } => "docker_api",
        }
    }
}

/// What one new replica is.
#[derive(Clone, Debug)]
pub struct CreateReplica {
    pub name: String,
    pub service: String,
    pub template_hash: String,
    pub created_at_ns: i64,
    pub spec: ServiceSpec,
}

/// An event about a container: its own (owned containers only), or a network's
/// `connect`/`disconnect` of it (any container: the network's event does not carry
/// the container's labels, so the controller keeps those of its own replicas).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    /// Docker's action: `start`, `die`, `destroy`, `oom`, `kill`, `disconnect`, ...
    pub action: String,
    pub id: ContainerId,
    /// The replica's service, from its labels; `None` for a network's event.
    pub service: Option<String>,
    /// For `die`: the exit code Docker reports.
    pub exit_code: Option<i64>,
}

/// The container operations the controller needs.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Every container carrying `dockscale.managed-by=dockscale`, in any state.
    fn list_owned(&self) -> impl Future<Output = Result<Vec<Replica>, DockerError>> + Send;

    /// One owned container, fresh; `None` when it is gone (or not dockscale's).
    fn inspect_owned(
        &self,
        id: &ContainerId,
    ) -> impl Future<Output = Result<Option<Replica>, DockerError>> + Send;

    /// Creates a bridge network when none of that name exists.
    fn ensure_network(&self, name: &str) -> impl Future<Output = Result<(), DockerError>> + Send;

    fn image_present(&self, image: &str) -> impl Future<Output = Result<bool, DockerError>> + Send;

    /// Creates and starts a replica. A container that was created but failed to start
    /// is removed again before the error is returned.
    fn create_and_start(
        &self,
        request: CreateReplica,
    ) -> impl Future<Output = Result<ContainerId, DockerError>> + Send;

    /// Stops a replica with SIGTERM and `grace` before SIGKILL, then removes it. A
    /// container that is already gone is not an error.
    fn stop_and_remove(
        &self,
        id: &ContainerId,
        grace: Duration,
    ) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// Events of owned containers, from shortly before the call on (so that a list
    /// taken after subscribing misses nothing in between: list-then-watch). The stream
    /// ends when the connection breaks; the caller reconnects and lists again.
    fn events(&self) -> BoxStream<'static, Result<ContainerEvent, DockerError>>;

    /// Whether the engine answers.
    fn ping(&self) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// The engine's own id (`docker info`'s `ID`), stable across its restarts: what a
    /// controller claims.
    fn engine_id(&self) -> impl Future<Output = Result<String, DockerError>> + Send;

    /// Which of these replicas answer on their address now (the readiness gate before a
    /// server is enabled), each given `timeout`.
    fn answering(
        &self,
        targets: Vec<(ContainerId, SocketAddrV4)>,
        timeout: Duration,
    ) -> impl Future<Output = BTreeSet<ContainerId>> + Send;
}

/// Which of these addresses accept a TCP connection within `timeout`, all at once.
pub async fn tcp_answering(
    targets: Vec<(ContainerId, SocketAddrV4)>,
    timeout: Duration,
) -> BTreeSet<ContainerId> {
    let checks = targets.into_iter().map(|(id, addr)| async move {
        let connect = tokio::net::TcpStream::connect(addr);
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(_)) => Some(id),
            _ => None,
        }
    });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect()
}
