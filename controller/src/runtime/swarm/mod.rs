//! Docker Swarm through a manager's API (bollard): dockscale's services, their tasks,
//! the nodes, the lease record, and the events that say something changed.
//!
//! Swarm decides where a task runs and replaces a task that ends; dockscale decides
//! how many tasks there are, what they run, and which of them HAProxy sends traffic
//! to. This module reads and writes Swarm objects and maps the spec onto a Swarm
//! service spec ([`service_spec`], pure); it decides nothing.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};

use bollard::models::{
    ConfigSpec, NetworkCreateRequest, NodeState, ServiceSpec as SwarmSpec,
    ServiceUpdateStatusStateEnum, TaskState,
};
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectServiceOptions, ListNodesOptions, ListServicesOptionsBuilder,
    ListTasksOptionsBuilder, UpdateConfigOptionsBuilder, UpdateServiceOptionsBuilder,
};
use bollard::Docker;
use futures::stream::{BoxStream, StreamExt};

use crate::model::replica::{LABEL_MANAGED_BY, LABEL_SERVICE, LABEL_TEMPLATE_HASH, MANAGED_BY};
use crate::runtime::DockerError;

mod spec;

pub use spec::{service_spec, spec_hash, with_replicas};

/// On a Swarm service: the hash of everything dockscale put in its spec but the count
/// (template, network, placement, rollout), to tell a spec change from a scale.
pub const LABEL_SPEC_HASH: &str = "dockscale.spec-hash";
/// The name of the Swarm config whose labels hold the controllers' lease.
pub const LEASE_NAME: &str = "dockscale-lease";
const LEASE_HOLDER: &str = "dockscale.lease.holder";
const LEASE_RENEWED: &str = "dockscale.lease.renewed-ms";

/// A Swarm service of the spec's name, as read.
#[derive(Clone, Debug, PartialEq)]
pub struct SwarmService {
    pub id: String,
    pub name: String,
    /// Swarm's version index: an update must name it (optimistic concurrency).
    pub version: u64,
    pub replicas: u32,
    /// Carries `dockscale.managed-by=dockscale`; any other service is never touched.
    pub managed: bool,
    pub spec_hash: Option<String>,
    pub template_hash: Option<String>,
    pub update: Option<UpdateStatus>,
    /// The spec as Swarm holds it, to change only its count.
    pub spec: SwarmSpec,
}

/// Where Swarm's own rolling update stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

/// One task of a service, as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmTask {
    pub id: String,
    /// `<service>.<slot>`, as `docker service ps` shows it.
    pub name: String,
    pub node_id: Option<String>,
    pub desired: TaskPhase,
    pub state: TaskPhase,
    /// From the task's container labels: the template it runs.
    pub template_hash: Option<String>,
    /// The host port Swarm published the template's port on (host mode).
    pub published_port: Option<u16>,
    /// Swarm's words when it failed or was rejected.
    pub error: Option<String>,
    pub container_id: Option<String>,
    /// When its state last changed (RFC 3339, as Swarm says it).
    pub since: String,
}

/// A task's state, coarsened to what rotation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TaskPhase {
    /// New through starting: not running yet.
    Pending,
    Running,
    /// Complete or shut down: it ended as asked.
    Stopped,
    /// Failed, rejected or orphaned (its node went away).
    Failed,
}

impl TaskPhase {
    fn of(state: Option<TaskState>) -> TaskPhase {
        match state {
            Some(TaskState::RUNNING) => TaskPhase::Running,
            Some(TaskState::COMPLETE | TaskState::SHUTDOWN | TaskState::REMOVE) => {
                TaskPhase::Stopped
            }
            Some(TaskState::FAILED | TaskState::REJECTED | TaskState::ORPHANED) => {
                TaskPhase::Failed
            }
            _ => TaskPhase::Pending,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskPhase::Pending => "pending",
            TaskPhase::Running => "running",
            TaskPhase::Stopped => "stopped",
            TaskPhase::Failed => "failed",
        }
    }
}

/// A node of the swarm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmNode {
    pub id: String,
    pub hostname: String,
    /// The address it advertises: where its published ports answer.
    pub addr: Option<Ipv4Addr>,
    /// Its state is `ready` (Swarm hears its heartbeats).
    pub ready: bool,
}

impl SwarmTask {
    /// Where HAProxy reaches it: its node's address and its published port.
    pub fn addr(&self, nodes: &BTreeMap<String, SwarmNode>) -> Option<SocketAddrV4> {
        let node = nodes.get(self.node_id.as_deref()?)?;
        Some(SocketAddrV4::new(node.addr?, self.published_port?))
    }
}

/// The lease record, as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub id: String,
    pub version: u64,
    pub holder: String,
    /// The holder's wall clock at its last renewal, Unix milliseconds (shown, never
    /// compared across hosts: expiry is judged by how long the version stays put).
    pub renewed_ms: u64,
}

/// A write of the lease that lost: someone else wrote it first.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("another controller wrote the lease first")]
    Conflict,
    #[error(transparent)]
    Docker(#[from] DockerError),
}

/// A Swarm manager's API.
pub struct SwarmApi {
    docker: Docker,
}

impl SwarmApi {
    /// Connects as Docker's own tools do (`DOCKER_HOST`, else the local socket).
    pub fn connect() -> Result<Self, DockerError> {
        let docker = Docker::connect_with_defaults().map_err(DockerError::Unavailable)?;
        Ok(SwarmApi { docker })
    }

    /// The swarm's id, or an error saying why this engine cannot drive one (not in a
    /// swarm, or a worker).
    pub async fn swarm_id(&self) -> Result<String, DockerError> {
        let swarm = self
            .docker
            .inspect_swarm()
            .await
            .map_err(|e| DockerError::from_bollard("inspect the swarm", e))?;
        Ok(swarm.id.unwrap_or_default())
    }

    pub async fn ping(&self) -> Result<(), DockerError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(DockerError::Unavailable)
    }

    /// The service of that name, whoever made it.
    pub async fn service(&self, name: &str) -> Result<Option<SwarmService>, DockerError> {
        let filters = HashMap::from([("name", vec![name])]);
        let options = ListServicesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let listed = self
            .docker
            .list_services(Some(options))
            .await
            .map_err(|e| DockerError::from_bollard("list services", e))?;
        // The name filter matches prefixes: keep the exact name.
        Ok(listed
            .into_iter()
            .filter_map(read_service)
            .find(|s| s.name == name))
    }

    pub async fn create_service(&self, spec: SwarmSpec) -> Result<String, DockerError> {
        let created = self
            .docker
            .create_service(spec, None)
            .await
            .map_err(|e| DockerError::from_bollard("create service", e))?;
        Ok(created.id.unwrap_or_default())
    }

    /// Replaces the service's spec; `version` is the one it was read at.
    pub async fn update_service(
        &self,
        id: &str,
        version: u64,
        spec: SwarmSpec,
    ) -> Result<(), DockerError> {
        let options = UpdateServiceOptionsBuilder::default()
            .version(i32::try_from(version).unwrap_or(i32::MAX))
            .build();
        self.docker
            .update_service(id, spec, options, None)
            .await
            .map(|_| ())
            .map_err(|e| DockerError::from_bollard("update service", e))
    }

    pub async fn remove_service(&self, id: &str) -> Result<(), DockerError> {
        match self.docker.delete_service(id).await {
            Ok(()) => Ok(()),
            Err(e) => match DockerError::from_bollard("remove service", e) {
                e if e.status() == Some(404) => Ok(()),
                e => Err(e),
            },
        }
    }

    /// The tasks Swarm keeps for the service (its history included).
    pub async fn tasks(&self, service_id: &str) -> Result<Vec<SwarmTask>, DockerError> {
        let filters = HashMap::from([("service", vec![service_id])]);
        let options = ListTasksOptionsBuilder::default().filters(&filters).build();
        let tasks = self
            .docker
            .list_tasks(Some(options))
            .await
            .map_err(|e| DockerError::from_bollard("list tasks", e))?;
        Ok(tasks.into_iter().filter_map(read_task).collect())
    }

    pub async fn nodes(&self) -> Result<BTreeMap<String, SwarmNode>, DockerError> {
        let nodes = self
            .docker
            .list_nodes(None::<ListNodesOptions>)
            .await
            .map_err(|e| DockerError::from_bollard("list nodes", e))?;
        Ok(nodes
            .into_iter()
            .filter_map(|n| {
                let id = n.id?;
                let status = n.status.unwrap_or_default();
                let hostname = n
                    .description
                    .and_then(|d| d.hostname)
                    .unwrap_or_else(|| id.clone());
                Some((
                    id.clone(),
                    SwarmNode {
                        id,
                        hostname,
                        addr: status.addr.and_then(|a| a.parse().ok()),
                        ready: status.state == Some(NodeState::READY),
                    },
                ))
            })
            .collect())
    }

    /// Creates an attachable overlay network when none of that name exists.
    pub async fn ensure_overlay(&self, name: &str) -> Result<(), DockerError> {
        match self
            .docker
            .inspect_network(
                name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => match DockerError::from_bollard("inspect network", e) {
                e if e.status() == Some(404) => {}
                e => return Err(e),
            },
        }
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("overlay".to_owned()),
            attachable: Some(true),
            labels: Some(HashMap::from([(
                LABEL_MANAGED_BY.to_owned(),
                MANAGED_BY.to_owned(),
            )])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => Ok(()),
            // Created meanwhile by someone else: what was asked for exists.
            Err(e) => match DockerError::from_bollard("create network", e) {
                e if e.status() == Some(409) => Ok(()),
                e => Err(e),
            },
        }
    }

    /// A wake-up for every service, node and owned-container event, from now on. Tasks
    /// have no events of their own: a changed task shows as its container's event on
    /// this node, its service's or its node's; the caller lists tasks on each, and
    /// often besides.
    pub fn events(&self) -> BoxStream<'static, Result<String, DockerError>> {
        let filters = HashMap::from([("type", vec!["service", "node", "container"])]);
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        self.docker
            .events(Some(options))
            .filter_map(|item| async move {
                match item {
                    Ok(event) => {
                        let kind = event.typ.map(|t| t.to_string()).unwrap_or_default();
                        let actor = event.actor.unwrap_or_default();
                        let attrs = actor.attributes.unwrap_or_default();
                        if kind == "container" && !attrs.contains_key(LABEL_MANAGED_BY) {
                            return None;
                        }
                        let action = event.action.unwrap_or_default();
                        Some(Ok(format!("{kind} {action}")))
                    }
                    Err(e) => Some(Err(DockerError::from_bollard("watch events", e))),
                }
            })
            .boxed()
    }

    /// The lease record, when one exists.
    pub async fn lease(&self) -> Result<Option<LeaseRecord>, DockerError> {
        match self.docker.inspect_config(LEASE_NAME).await {
            Ok(config) => {
                let labels = config
                    .spec
                    .as_ref()
                    .and_then(|s| s.labels.clone())
                    .unwrap_or_default();
                Ok(Some(LeaseRecord {
                    id: config.id.unwrap_or_default(),
                    version: config.version.and_then(|v| v.index).unwrap_or(0),
                    holder: labels.get(LEASE_HOLDER).cloned().unwrap_or_default(),
                    renewed_ms: labels
                        .get(LEASE_RENEWED)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                }))
            }
            Err(e) => match DockerError::from_bollard("inspect the lease", e) {
                e if e.status() == Some(404) => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Creates the lease record held by `holder`; a conflict when it exists.
    pub async fn create_lease(&self, holder: &str, now_ms: u64) -> Result<(), LeaseError> {
        let spec = ConfigSpec {
            name: Some(LEASE_NAME.to_owned()),
            labels: Some(lease_labels(holder, now_ms)),
            // A config must hold data; the lease is in its labels.
            data: Some(base64_of(b"dockscale controller lease\n")),
            ..Default::default()
        };
        match self.docker.create_config(spec).await {
            Ok(_) => Ok(()),
            Err(e) => match DockerError::from_bollard("create the lease", e) {
                e if e.status() == Some(409) => Err(LeaseError::Conflict),
                e => Err(e.into()),
            },
        }
    }

    /// Writes the lease as held by `holder`, if it is still at `version`.
    pub async fn write_lease(
        &self,
        record: &LeaseRecord,
        holder: &str,
        now_ms: u64,
    ) -> Result<(), LeaseError> {
        // Only the labels of a config may change; the rest is sent back as read.
        let current = self
            .docker
            .inspect_config(&record.id)
            .await
            .map_err(|e| DockerError::from_bollard("inspect the lease", e))?;
        let mut spec = current.spec.unwrap_or_default();
        spec.labels = Some(lease_labels(holder, now_ms));
        let options = UpdateConfigOptionsBuilder::default()
            .version(i64::try_from(record.version).unwrap_or(i64::MAX))
            .build();
        match self.docker.update_config(&record.id, spec, options).await {
            Ok(()) => Ok(()),
            Err(e) => match DockerError::from_bollard("renew the lease", e) {
                DockerError::Api { message, .. } if message.contains("out of sequence") => {
                    Err(LeaseError::Conflict)
                }
                e => Err(e.into()),
            },
        }
    }

    /// Removes the lease record (a leader that stops hands over at once).
    pub async fn release_lease(&self, record: &LeaseRecord) -> Result<(), DockerError> {
        match self.docker.delete_config(&record.id).await {
            Ok(()) => Ok(()),
            Err(e) => match DockerError::from_bollard("release the lease", e) {
                e if e.status() == Some(404) => Ok(()),
                e => Err(e),
            },
        }
    }

    /// One service, fresh (for the status of a task's update).
    pub async fn inspect_service(&self, id: &str) -> Result<Option<SwarmService>, DockerError> {
        match self
            .docker
            .inspect_service(id, None::<InspectServiceOptions>)
            .await
        {
            Ok(s) => Ok(read_service(s)),
            Err(e) => match DockerError::from_bollard("inspect service", e) {
                e if e.status() == Some(404) => Ok(None),
                e => Err(e),
            },
        }
    }
}

fn lease_labels(holder: &str, now_ms: u64) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LEASE_HOLDER.to_owned(), holder.to_owned()),
        (LEASE_RENEWED.to_owned(), now_ms.to_string()),
    ])
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn read_service(s: bollard::models::Service) -> Option<SwarmService> {
    let spec = s.spec?;
    let labels = spec.labels.clone().unwrap_or_default();
    let replicas = spec
        .mode
        .as_ref()
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .unwrap_or(0);
    let update = s.update_status.and_then(|u| {
        let state = match u.state? {
            ServiceUpdateStatusStateEnum::UPDATING => UpdateState::Updating,
            ServiceUpdateStatusStateEnum::PAUSED => UpdateState::Paused,
            ServiceUpdateStatusStateEnum::COMPLETED => UpdateState::Completed,
            ServiceUpdateStatusStateEnum::ROLLBACK_STARTED => UpdateState::RollbackStarted,
            ServiceUpdateStatusStateEnum::ROLLBACK_PAUSED => UpdateState::RollbackPaused,
            ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED => UpdateState::RollbackCompleted,
            ServiceUpdateStatusStateEnum::EMPTY => return None,
        };
        Some(UpdateStatus {
            state,
            message: u.message.unwrap_or_default(),
        })
    });
    Some(SwarmService {
        id: s.id?,
        name: spec.name.clone().unwrap_or_default(),
        version: s.version.and_then(|v| v.index).unwrap_or(0),
        replicas: u32::try_from(replicas).unwrap_or(u32::MAX),
        managed: labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY),
        spec_hash: labels.get(LABEL_SPEC_HASH).cloned(),
        template_hash: labels.get(LABEL_TEMPLATE_HASH).cloned(),
        update,
        spec,
    })
}

fn read_task(t: bollard::models::Task) -> Option<SwarmTask> {
    let id = t.id?;
    let status = t.status.unwrap_or_default();
    let labels = t
        .spec
        .as_ref()
        .and_then(|s| s.container_spec.as_ref())
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let published_port = status
        .port_status
        .as_ref()
        .and_then(|p| p.ports.as_ref())
        .and_then(|ports| ports.iter().find_map(|p| p.published_port))
        .and_then(|p| u16::try_from(p).ok());
    let service = labels.get(LABEL_SERVICE).cloned().unwrap_or_default();
    Some(SwarmTask {
        name: match t.slot {
            Some(slot) => format!("{service}.{slot}"),
            None => format!("{service}.{}", id.get(..12).unwrap_or(&id)),
        },
        id,
        node_id: t.node_id.filter(|n| !n.is_empty()),
        desired: TaskPhase::of(t.desired_state),
        state: TaskPhase::of(status.state),
        template_hash: labels.get(LABEL_TEMPLATE_HASH).cloned(),
        published_port,
        error: status.err.filter(|e| !e.is_empty()),
        container_id: status.container_status.and_then(|c| c.container_id),
        since: status.timestamp.unwrap_or_default(),
    })
}
