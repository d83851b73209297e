//! The container runtime: the [`ContainerRuntime`] trait and its Docker implementation.
//!
//! A thin adapter over bollard. It lists the containers dockscale owns (by label),
//! creates, starts, stops and removes replicas, ensures networks and streams container
//! events. It decides nothing: what to create or remove comes from [`crate::plan`].
//! Every call that changes a container is given its id, and only ids that the list
//! (filtered on `dockscale.managed-by=dockscale`) returned ever reach it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
    RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::replica::{
    replica_labels, ContainerId, ContainerState, Replica, LABEL_CREATED_AT, LABEL_MANAGED_BY,
    LABEL_SERVICE, LABEL_TEMPLATE_HASH, MANAGED_BY,
};
use crate::spec::ServiceSpec;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine: {0}")]
    Unavailable(#[source] BollardError),
    #[error(
        "image `{image}` is not present locally (dockscale never pulls): build or load it first"
    )]
    ImageNotFound { image: String },
    #[error("docker refused {action}: {message}")]
    Api {
        action: &'static str,
        status: u16,
        message: String,
    },
}

impl DockerError {
    fn from_bollard(action: &'static str, e: BollardError) -> Self {
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

    fn status(&self) -> Option<u16> {
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

/// A container event for an owned container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    /// Docker's action: `start`, `die`, `destroy`, `oom`, ...
    pub action: String,
    pub id: ContainerId,
    pub service: String,
    /// For `die`: the exit code Docker reports.
    pub exit_code: Option<i64>,
}

/// The container operations the controller needs.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Every container carrying `dockscale.managed-by=dockscale`, in any state.
    fn list_owned(&self) -> impl Future<Output = Result<Vec<Replica>, DockerError>> + Send;

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

    /// Events of owned containers, as they happen. The stream ends when the connection
    /// breaks; the caller reconnects and resyncs.
    fn events(&self) -> BoxStream<'static, Result<ContainerEvent, DockerError>>;

    /// Whether the engine answers.
    fn ping(&self) -> impl Future<Output = Result<(), DockerError>> + Send;
}

/// [`ContainerRuntime`] over the local Docker engine.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    /// A second client for the event stream, with no request timeout.
    events: Docker,
}

impl DockerRuntime {
    /// Connects with Docker's defaults (`DOCKER_HOST`, else `/var/run/docker.sock`) and
    /// negotiates the API version down to the engine's.
    pub async fn connect() -> Result<Self, DockerError> {
        let docker = Docker::connect_with_defaults()
            .map_err(DockerError::Unavailable)?
            .with_timeout(Duration::from_secs(60))
            .negotiate_version()
            .await
            .map_err(DockerError::Unavailable)?;
        let events = docker
            .clone()
            .with_timeout(Duration::from_secs(365 * 24 * 3600));
        Ok(DockerRuntime { docker, events })
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }
}

fn owned_filter() -> HashMap<&'static str, Vec<String>> {
    HashMap::from([("label", vec![format!("{LABEL_MANAGED_BY}={MANAGED_BY}")])])
}

impl ContainerRuntime for DockerRuntime {
    async fn list_owned(&self) -> Result<Vec<Replica>, DockerError> {
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&owned_filter())
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| DockerError::from_bollard("list containers", e))?;
        Ok(summaries
            .into_iter()
            .filter_map(replica_from_summary)
            .collect())
    }

    async fn ensure_network(&self, name: &str) -> Result<(), DockerError> {
        match self.docker.inspect_network(name, None).await {
            Ok(_) => return Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(DockerError::from_bollard("inspect network", e)),
        }
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            labels: Some(HashMap::from([(
                LABEL_MANAGED_BY.to_owned(),
                MANAGED_BY.to_owned(),
            )])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => {
                tracing::info!(network = name, "created network");
                Ok(())
            }
            // Created concurrently by someone else: what we wanted.
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(DockerError::from_bollard("create network", e)),
        }
    }

    async fn image_present(&self, image: &str) -> Result<bool, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(DockerError::from_bollard("inspect image", e)),
        }
    }

    async fn create_and_start(&self, request: CreateReplica) -> Result<ContainerId, DockerError> {
        let image = request.spec.template.image.clone();
        let options = CreateContainerOptionsBuilder::default()
            .name(&request.name)
            .build();
        let created = self
            .docker
            .create_container(Some(options), container_body(&request))
            .await
            .map_err(|e| match DockerError::from_bollard("create container", e) {
                e if e.status() == Some(404) => DockerError::ImageNotFound { image },
                e => e,
            })?;
        let id = ContainerId(created.id);
        if let Err(e) = self.docker.start_container(&id.0, None).await {
            let error = DockerError::from_bollard("start container", e);
            // Do not leave a never-started container behind; it would count as a replica.
            let options = RemoveContainerOptionsBuilder::default().force(true).build();
            if let Err(cleanup) = self.docker.remove_container(&id.0, Some(options)).await {
                tracing::warn!(container = %id, error = %cleanup, "removing a container that failed to start");
            }
            return Err(error);
        }
        Ok(id)
    }

    async fn stop_and_remove(&self, id: &ContainerId, grace: Duration) -> Result<(), DockerError> {
        // Docker takes whole seconds; round up so the grace period is never shortened.
        let secs = i32::try_from(grace.as_millis().div_ceil(1000)).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(secs).build();
        match self.docker.stop_container(&id.0, Some(options)).await {
            // 304: already stopped; 404: already gone.
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => {}
            Err(e) => return Err(DockerError::from_bollard("stop container", e)),
        }
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(&id.0, Some(options)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            // 409: removal already in progress (someone else removes it too).
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(DockerError::from_bollard("remove container", e)),
        }
    }

    fn events(&self) -> BoxStream<'static, Result<ContainerEvent, DockerError>> {
        let mut filters = owned_filter();
        filters.insert("type", vec!["container".to_owned()]);
        filters.insert(
            "event",
            ["start", "die", "destroy", "oom", "stop", "kill"]
                .map(String::from)
                .to_vec(),
        );
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        self.events
            .events(Some(options))
            .filter_map(|item| async move {
                match item {
                    Ok(message) => {
                        let actor = message.actor?;
                        let attributes = actor.attributes.unwrap_or_default();
                        Some(Ok(ContainerEvent {
                            action: message.action?,
                            id: ContainerId(actor.id?),
                            service: attributes.get(LABEL_SERVICE)?.clone(),
                            exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
                        }))
                    }
                    Err(e) => Some(Err(DockerError::from_bollard("stream events", e))),
                }
            })
            .boxed()
    }

    async fn ping(&self) -> Result<(), DockerError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| DockerError::from_bollard("ping", e))
    }
}

/// The create request of a replica: ownership labels, the template, its limits and the
/// service network.
fn container_body(request: &CreateReplica) -> ContainerCreateBody {
    let template = &request.spec.template;
    let network = request.spec.network.as_str().to_owned();
    let labels = replica_labels(
        &request.service,
        &request.template_hash,
        request.created_at_ns,
        &template.labels,
    );
    let env: Vec<String> = template
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let grace = template.stop_grace_period.get().as_millis().div_ceil(1000);
    ContainerCreateBody {
        image: Some(template.image.clone()),
        cmd: (!template.command.is_empty()).then(|| template.command.clone()),
        env: (!env.is_empty()).then_some(env),
        labels: Some(labels.into_iter().collect()),
        stop_timeout: Some(i64::try_from(grace).unwrap_or(i64::MAX)),
        host_config: Some(HostConfig {
            init: Some(template.init),
            memory: template
                .resources
                .memory
                .map(|q| i64::try_from(q.bytes()).unwrap_or(i64::MAX)),
            nano_cpus: template.resources.cpus.map(|c| c.nano_cpus()),
            network_mode: Some(network.clone()),
            // dockscale replaces failed replicas itself, with backoff.
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(network, EndpointSettings::default())])),
        }),
        ..Default::default()
    }
}

fn replica_from_summary(summary: bollard::models::ContainerSummary) -> Option<Replica> {
    let labels = summary.labels.unwrap_or_default();
    // The list is filtered on the label already; check again, since touching an
    // unowned container is the one thing dockscale must never do.
    if labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY) {
        return None;
    }
    let service = labels.get(LABEL_SERVICE)?.clone();
    let name = summary
        .names
        .unwrap_or_default()
        .first()
        .map(|n| n.trim_start_matches('/').to_owned())?;
    let created_at_ns = labels
        .get(LABEL_CREATED_AT)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| summary.created.unwrap_or(0).saturating_mul(1_000_000_000));
    let state = summary
        .state
        .and_then(|s| ContainerState::parse(s.as_ref()))
        .unwrap_or(ContainerState::Dead);
    let ips: BTreeMap<String, Ipv4Addr> = summary
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(net, endpoint)| {
            let ip = endpoint.ip_address.filter(|ip| !ip.is_empty())?;
            Some((net, ip.parse().ok()?))
        })
        .collect();
    Some(Replica {
        id: ContainerId(summary.id?),
        name,
        service,
        template_hash: labels.get(LABEL_TEMPLATE_HASH).cloned().unwrap_or_default(),
        created_at_ns,
        state,
        status: summary.status.unwrap_or_default(),
        ips,
    })
}
