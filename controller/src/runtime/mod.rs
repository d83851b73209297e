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

use crate::model::member::Member;
use crate::model::replica::{ContainerId, Replica};
use crate::spec::{HealthCheck, ServiceSpec};

pub mod docker;
#[cfg(test)]
pub mod fake;
pub mod options;
pub mod pull;
pub mod swarm;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine")]
    Unavailable(#[source] BollardError),
    #[error(
        "image `{image}` is not present locally (imagePullPolicy: Never): build or load it first"
    )]
    ImageNotFound { image: String },
    /// The engine could not pull the image; `message` is the registry's answer as the
    /// engine relays it (`unauthorized: ...`, `manifest unknown`, a refused connection).
    #[error("cannot pull image `{image}`: {message}")]
    PullFailed { image: String, message: String },
    #[error("the network `{network}` does not exist (removed since it was ensured)")]
    NetworkNotFound { network: String },
    /// A bind mount's source is not on the engine's host: every create fails alike
    /// until someone creates it (or fixes `mounts`).
    #[error("bind mount source `{path}` does not exist on the engine's host: create it or fix spec.template.mounts")]
    BindSourceNotFound { path: String },
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

    /// The engine's refusal of a create whose bind source is missing (Docker 20.10
    /// answers 400 `invalid mount config for type "bind": bind source path does not
    /// exist: /srv/x`), as [`DockerError::BindSourceNotFound`].
    pub(crate) fn bind_source_missing(self) -> Self {
        const SAID: &str = "bind source path does not exist";
        match self {
            DockerError::Api {
                status: 400,
                ref message,
                ..
            } if message.contains(SAID) => {
                let path = message
                    .split_once(SAID)
                    .map(|(_, rest)| rest.trim_start_matches(':').trim())
                    .unwrap_or_default();
                DockerError::BindSourceNotFound {
                    path: path.to_owned(),
                }
            }
            other => other,
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
            DockerError::PullFailed { .. } => "image_pull_failed",
            DockerError::NetworkNotFound { .. } => "network_not_found",
            DockerError::BindSourceNotFound { .. } => "bind_source_not_found",
            DockerError::Api { .. } => "docker_api",
        }
    }
}

/// An image as a pull left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledImage {
    /// The local image ID (`sha256:...`) the reference now names.
    pub id: String,
    /// Bytes of the layers downloaded (0 when every layer was there already).
    pub downloaded_bytes: u64,
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

/// An event about a container: its own (owned containers and members only), or a
/// network's `connect`/`disconnect` of it (any container: the network's event does not
/// carry the container's labels, so the controller keeps those of its own replicas and
/// members).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    /// Docker's action: `start`, `die`, `destroy`, `oom`, `kill`, `disconnect`, ...
    pub action: String,
    pub id: ContainerId,
    /// The replica's service, from its labels; `None` for a network's event.
    pub service: Option<String>,
    /// For `die`: the exit code Docker reports.
    pub exit_code: Option<i64>,
    /// The container is a hand-started member (`dockscale.join`), not a replica; its
    /// `service` is the label's value.
    pub member: bool,
}

/// The container operations the controller needs.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Every container carrying `dockscale.managed-by=dockscale`, in any state.
    fn list_owned(&self) -> impl Future<Output = Result<Vec<Replica>, DockerError>> + Send;

    /// Every container labelled `dockscale.join` that is not dockscale's own, in any
    /// state: the hand-started members. Read only; nothing stops or removes them.
    fn list_members(&self) -> impl Future<Output = Result<Vec<Member>, DockerError>> + Send;

    /// One owned container, fresh; `None` when it is gone (or not dockscale's).
    fn inspect_owned(
        &self,
        id: &ContainerId,
    ) -> impl Future<Output = Result<Option<Replica>, DockerError>> + Send;

    /// Creates a bridge network when none of that name exists.
    fn ensure_network(&self, name: &str) -> impl Future<Output = Result<(), DockerError>> + Send;

    fn image_present(&self, image: &str) -> impl Future<Output = Result<bool, DockerError>> + Send;

    /// Pulls `image` from its registry with the credentials of the Docker client
    /// configuration, and returns the image ID the reference names afterwards. A tag
    /// that did not move downloads no layer.
    fn pull_image(
        &self,
        image: &str,
    ) -> impl Future<Output = Result<PulledImage, DockerError>> + Send;

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

    /// Freezes a running container's processes (`docker pause`): no CPU, its memory
    /// and address kept. The warm pool keeps its containers so.
    fn pause(&self, id: &ContainerId) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// Thaws a paused container (`docker unpause`); one already running is not an
    /// error.
    fn unpause(&self, id: &ContainerId) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// Renames a container (`docker rename`): a warm container taken becomes a replica
    /// by its name.
    fn rename(
        &self,
        id: &ContainerId,
        name: &str,
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

    /// Which of these replicas answer `probe` on their address now (the readiness gate
    /// before a server is enabled), each given `timeout` (a TCP connect) or the health
    /// check's own.
    fn answering(
        &self,
        targets: Vec<(ContainerId, SocketAddrV4)>,
        probe: &Probe,
        timeout: Duration,
    ) -> impl Future<Output = BTreeSet<ContainerId>> + Send;
}

/// The template's health check in Docker's terms (a container's and a Swarm task's
/// `Healthcheck`): the exec form `CMD`, or `NONE` to turn off the image's.
pub fn health_config(check: &crate::spec::ContainerHealthcheck) -> bollard::models::HealthConfig {
    let nanos = |d: crate::spec::Duration| i64::try_from(d.get().as_nanos()).unwrap_or(i64::MAX);
    if check.disable {
        return bollard::models::HealthConfig {
            test: Some(vec!["NONE".to_owned()]),
            ..Default::default()
        };
    }
    let test = std::iter::once("CMD".to_owned())
        .chain(check.command.iter().cloned())
        .collect();
    bollard::models::HealthConfig {
        test: Some(test),
        interval: Some(nanos(check.interval)),
        timeout: Some(nanos(check.timeout)),
        retries: Some(i64::from(check.retries)),
        start_period: Some(nanos(check.start_period)),
        start_interval: None,
    }
}

/// How the readiness gate asks a replica whether it answers: a TCP connect, or the
/// service's HTTP health check (the same request HAProxy's checks send).
#[derive(Clone, Debug, PartialEq)]
pub enum Probe {
    Tcp,
    Http(HealthCheck),
}

impl Probe {
    pub fn of(spec: &ServiceSpec) -> Probe {
        match spec
            .load_balancer
            .as_ref()
            .and_then(|lb| lb.health_check.clone())
        {
            Some(check) => Probe::Http(check),
            None => Probe::Tcp,
        }
    }
}

/// Which of these addresses answer `probe`, all at once.
pub async fn probe_answering(
    targets: Vec<(ContainerId, SocketAddrV4)>,
    probe: &Probe,
    timeout: Duration,
) -> BTreeSet<ContainerId> {
    let check = match probe {
        Probe::Tcp => return tcp_answering(targets, timeout).await,
        Probe::Http(check) => check,
    };
    let client = match reqwest::Client::builder()
        .timeout(check.timeout.get())
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the HTTP probe client");
            return BTreeSet::new();
        }
    };
    let method = reqwest::Method::from_bytes(check.method.as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let checks = targets.into_iter().map(|(id, addr)| {
        let request = client.request(method.clone(), format!("http://{addr}{}", check.path));
        async move {
            match request.send().await {
                Ok(answer) if check.expect_status.contains(answer.status().as_u16()) => Some(id),
                _ => None,
            }
        }
    });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server answering every request with `status`, on a loopback port.
    async fn answering_with(status: u16) -> SocketAddrV4 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let std::net::SocketAddr::V4(addr) = listener.local_addr().expect("addr") else {
            panic!("not IPv4");
        };
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn the_http_probe_passes_only_the_expected_statuses() {
        let ok = answering_with(204).await;
        let failing = answering_with(503).await;
        // Nothing listens there any more.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let std::net::SocketAddr::V4(a) = l.local_addr().expect("addr") else {
                panic!("not IPv4");
            };
            a
        };
        let check: HealthCheck =
            serde_saphyr::from_str("{path: /healthz, expectStatus: 200-299, timeout: 1s}")
                .expect("a health check");
        let targets = vec![
            (ContainerId("ok".into()), ok),
            (ContainerId("failing".into()), failing),
            (ContainerId("closed".into()), closed),
        ];
        let passed =
            probe_answering(targets.clone(), &Probe::Http(check), Duration::from_secs(1)).await;
        assert_eq!(passed, BTreeSet::from([ContainerId("ok".into())]));
        let connected = probe_answering(targets, &Probe::Tcp, Duration::from_secs(1)).await;
        assert_eq!(
            connected,
            BTreeSet::from([ContainerId("ok".into()), ContainerId("failing".into())])
        );
    }
}
