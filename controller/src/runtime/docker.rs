//! The container runtime: the [`ContainerRuntime`] trait and its Docker implementation.
//!
//! A thin adapter over bollard. It lists the containers dockscale owns (by label),
//! creates, starts, stops and removes replicas, ensures networks and streams container
//! events. It decides nothing: what to create or remove comes from [`crate::reconcile`].
//! Every call that changes a container is given its id, and only ids that the list
//! (filtered on `dockscale.managed-by=dockscale`) returned ever reach it. Members
//! (`dockscale.join`, [`crate::model::member`]) are listed apart, as [`Member`]s, and
//! only ever read.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthStatusEnum, HostConfig, HostConfigLogConfig,
    NetworkCreateRequest, NetworkingConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::model::member::{Member, LABEL_JOIN};
use crate::model::replica::{
    replica_labels, ContainerId, ContainerState, ExitCause, Health, Replica, LABEL_CREATED_AT,
    LABEL_MANAGED_BY, LABEL_SERVICE, LABEL_TEMPLATE_HASH, MANAGED_BY,
};

use super::{options, ContainerEvent, ContainerRuntime, CreateReplica, DockerError, PulledImage};

/// [`ContainerRuntime`] over the local Docker engine.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    /// A second client for the event stream, with no request timeout.
    events: Docker,
    /// Where the Docker client configuration (registry credentials) is read from.
    docker_config: Option<std::path::PathBuf>,
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
        Ok(DockerRuntime {
            docker,
            events,
            docker_config: super::pull::config_dir(None),
        })
    }

    /// Connects to the engine at a unix socket path (tests; `run` uses the defaults).
    pub async fn connect_unix(path: &str) -> Result<Self, DockerError> {
        let docker = Docker::connect_with_unix(path, 60, bollard::API_DEFAULT_VERSION)
            .map_err(DockerError::Unavailable)?
            .negotiate_version()
            .await
            .map_err(DockerError::Unavailable)?;
        let events = docker
            .clone()
            .with_timeout(Duration::from_secs(365 * 24 * 3600));
        Ok(DockerRuntime {
            docker,
            events,
            docker_config: super::pull::config_dir(None),
        })
    }

    /// Reads registry credentials from `DIR/config.json` (`--docker-config DIR`)
    /// instead of `$DOCKER_CONFIG` or `~/.docker`.
    pub fn with_docker_config(mut self, dir: std::path::PathBuf) -> Self {
        self.docker_config = Some(dir);
        self
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }
}

fn member_filter() -> HashMap<&'static str, Vec<String>> {
    HashMap::from([("label", vec![LABEL_JOIN.to_owned()])])
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

    async fn list_members(&self) -> Result<Vec<Member>, DockerError> {
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&member_filter())
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| DockerError::from_bollard("list members", e))?;
        Ok(summaries
            .into_iter()
            .filter_map(member_from_summary)
            .collect())
    }

    async fn inspect_owned(&self, id: &ContainerId) -> Result<Option<Replica>, DockerError> {
        match self.docker.inspect_container(&id.0, None).await {
            Ok(inspected) => Ok(replica_from_inspect(inspected)),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(DockerError::from_bollard("inspect container", e)),
        }
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

    async fn pull_image(&self, image: &str) -> Result<PulledImage, DockerError> {
        let reference = super::pull::Reference::parse(image);
        let credentials = super::pull::credentials(self.docker_config.as_deref(), &reference);
        tracing::info!(
            image,
            with_credentials = credentials.is_some(),
            "pulling image"
        );
        // No request timeout: a large image takes as long as it takes.
        super::pull::pull(&self.events, image, credentials).await
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
                // A create answers 404 for a missing image and for a missing network.
                DockerError::Api {
                    status: 404,
                    message,
                    ..
                } if message.contains("network") => DockerError::NetworkNotFound {
                    network: request.spec.network.to_string(),
                },
                e if e.status() == Some(404) => DockerError::ImageNotFound { image },
                e => e.bind_source_missing(),
            })?;
        let id = ContainerId(created.id);
        if let Err(e) = self.docker.start_container(&id.0, None).await {
            let error = DockerError::from_bollard("start container", e);
            // Do not leave a never-started container behind; it would count as a replica.
            let options = RemoveContainerOptionsBuilder::default().force(true).build();
            if let Err(cleanup) = self.docker.remove_container(&id.0, Some(options)).await {
                tracing::warn!(
                    container = %id,
                    error = %crate::report::Chain(&cleanup),
                    "removing a container that failed to start"
                );
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

    async fn pause(&self, id: &ContainerId) -> Result<(), DockerError> {
        self.docker
            .pause_container(&id.0)
            .await
            .map_err(|e| DockerError::from_bollard("pause container", e))
    }

    async fn unpause(&self, id: &ContainerId) -> Result<(), DockerError> {
        match self.docker.unpause_container(&id.0).await {
            Ok(()) => Ok(()),
            // 409 "is not paused": running already, which is what was asked.
            Err(BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("not paused") => Ok(()),
            Err(e) => Err(DockerError::from_bollard("unpause container", e)),
        }
    }

    async fn rename(&self, id: &ContainerId, name: &str) -> Result<(), DockerError> {
        let options = RenameContainerOptionsBuilder::default().name(name).build();
        self.docker
            .rename_container(&id.0, options)
            .await
            .map_err(|e| DockerError::from_bollard("rename container", e))
    }

    fn events(&self) -> BoxStream<'static, Result<ContainerEvent, DockerError>> {
        // No label filter: it would apply to the networks' events too, and a network's
        // labels are not its containers'. Owned containers are picked out below.
        let mut filters = HashMap::new();
        filters.insert("type", vec!["container".to_owned(), "network".to_owned()]);
        filters.insert(
            "event",
            [
                "start",
                "die",
                "destroy",
                "oom",
                "stop",
                "kill",
                "pause",
                "unpause",
                "rename",
                "connect",
                "disconnect",
                // Matches `health_status: healthy` and the others (Docker matches
                // this one by prefix).
                "health_status",
            ]
            .map(String::from)
            .to_vec(),
        );
        // Replayed from a second back: a change between this call and the first poll
        // of the stream (when the request is sent) is delivered all the same.
        let since = std::time::SystemTime::now()
            .checked_sub(Duration::from_secs(1))
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()));
        let mut options = EventsOptionsBuilder::default().filters(&filters);
        if let Some(since) = &since {
            options = options.since(since);
        }
        let options = options.build();
        self.events
            .events(Some(options))
            .filter_map(|item| async move {
                match item {
                    Ok(message) => {
                        let actor = message.actor?;
                        let attributes = actor.attributes.unwrap_or_default();
                        let network_event =
                            message.typ == Some(bollard::models::EventMessageTypeEnum::NETWORK);
                        if network_event {
                            return Some(Ok(ContainerEvent {
                                action: message.action?,
                                id: ContainerId(attributes.get("container")?.clone()),
                                service: None,
                                exit_code: None,
                                member: false,
                            }));
                        }
                        let owned = attributes.get(LABEL_MANAGED_BY).map(String::as_str)
                            == Some(MANAGED_BY);
                        // A member's event wakes the service its label names; any other
                        // container's is none of dockscale's business.
                        let service = match owned {
                            true => attributes.get(LABEL_SERVICE)?,
                            false => attributes.get(LABEL_JOIN)?,
                        };
                        Some(Ok(ContainerEvent {
                            action: message.action?,
                            id: ContainerId(actor.id?),
                            service: Some(service.clone()),
                            exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
                            member: !owned,
                        }))
                    }
                    Err(e) => Some(Err(DockerError::from_bollard("stream events", e))),
                }
            })
            .boxed()
    }

    async fn answering(
        &self,
        targets: Vec<(ContainerId, std::net::SocketAddrV4)>,
        probe: &super::Probe,
        timeout: Duration,
    ) -> std::collections::BTreeSet<ContainerId> {
        super::probe_answering(targets, probe, timeout).await
    }

    async fn engine_id(&self) -> Result<String, DockerError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| DockerError::from_bollard("info", e))?;
        Ok(info.id.unwrap_or_default())
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
        healthcheck: template.healthcheck.as_ref().map(super::health_config),
        user: template.user.as_ref().map(|u| u.as_str().to_owned()),
        working_dir: template.working_dir.as_ref().map(|d| d.as_str().to_owned()),
        stop_signal: template.stop_signal.as_ref().map(|s| s.as_str().to_owned()),
        host_config: Some(HostConfig {
            init: Some(template.init),
            mounts: options::mounts(template),
            readonly_rootfs: template.read_only_root_filesystem.then_some(true),
            cap_add: options::capabilities(&template.cap_add),
            cap_drop: options::capabilities(&template.cap_drop),
            security_opt: template
                .no_new_privileges
                .then(|| vec!["no-new-privileges".to_owned()]),
            ulimits: options::ulimits(template),
            log_config: options::logging(template).map(|(driver, config)| HostConfigLogConfig {
                typ: Some(driver),
                config: Some(config).filter(|c| !c.is_empty()),
            }),
            extra_hosts: extra_hosts(template),
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

/// `/etc/hosts` entries as a create takes them: `host:ip`.
fn extra_hosts(t: &crate::spec::Template) -> Option<Vec<String>> {
    let hosts: Vec<String> = t
        .extra_hosts
        .iter()
        .map(|(host, ip)| format!("{host}:{ip}"))
        .collect();
    (!hosts.is_empty()).then_some(hosts)
}

/// What a list and an inspect both say of a container.
struct Seen {
    id: Option<String>,
    name: Option<String>,
    labels: HashMap<String, String>,
    /// Docker's own creation time, for a container without our label.
    created_ns: Option<i64>,
    state: ContainerState,
    status: String,
    networks: Option<HashMap<String, EndpointSettings>>,
    /// The kernel OOM-killed it (an inspect says so; a list does not).
    oom_killed: bool,
    health: Option<Health>,
}

/// A replica from what Docker says of a container, `None` when it is not dockscale's.
fn replica_from(seen: Seen) -> Option<Replica> {
    // The list is filtered on the label already; check again, since touching an
    // unowned container is the one thing dockscale must never do.
    if seen.labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY) {
        return None;
    }
    let service = seen.labels.get(LABEL_SERVICE)?.clone();
    let created_at_ns = seen
        .labels
        .get(LABEL_CREATED_AT)
        .and_then(|v| v.parse().ok())
        .or(seen.created_ns)
        .unwrap_or(0);
    let ips: BTreeMap<String, Ipv4Addr> = seen
        .networks
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(net, endpoint)| {
            let ip = endpoint.ip_address.filter(|ip| !ip.is_empty())?;
            Some((net, ip.parse().ok()?))
        })
        .collect();
    Some(Replica {
        id: ContainerId(seen.id?),
        name: seen.name?.trim_start_matches('/').to_owned(),
        service,
        template_hash: seen
            .labels
            .get(LABEL_TEMPLATE_HASH)
            .cloned()
            .unwrap_or_default(),
        created_at_ns,
        exit_cause: matches!(seen.state, ContainerState::Exited | ContainerState::Dead).then(
            || {
                if seen.oom_killed {
                    ExitCause::OutOfMemory
                } else {
                    ExitCause::Unknown
                }
            },
        ),
        health: seen
            .health
            .filter(|_| seen.state == ContainerState::Running),
        state: seen.state,
        status: seen.status,
        ips,
    })
}

/// A member from a listed container: labelled `dockscale.join`, and not dockscale's
/// own (a replica is never a member, whatever its labels).
fn member_from_summary(summary: bollard::models::ContainerSummary) -> Option<Member> {
    let labels = summary.labels.unwrap_or_default();
    if labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY) {
        return None;
    }
    let service = labels.get(LABEL_JOIN)?.clone();
    let state = summary
        .state
        .and_then(|s| ContainerState::parse(s.as_ref()))
        .unwrap_or(ContainerState::Dead);
    let running = matches!(state, ContainerState::Running | ContainerState::Paused);
    Some(Member {
        id: ContainerId(summary.id?),
        name: summary
            .names
            .unwrap_or_default()
            .into_iter()
            .next()?
            .trim_start_matches('/')
            .to_owned(),
        service,
        health: summary
            .status
            .as_deref()
            .and_then(Health::from_status)
            .filter(|_| state == ContainerState::Running),
        state,
        ips: summary
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_iter()
            .filter(|_| running)
            .filter_map(|(net, endpoint)| {
                let ip = endpoint.ip_address.filter(|ip| !ip.is_empty())?;
                Some((net, ip.parse().ok()?))
            })
            .collect(),
    })
}

fn replica_from_summary(summary: bollard::models::ContainerSummary) -> Option<Replica> {
    replica_from(Seen {
        id: summary.id,
        name: summary.names.unwrap_or_default().into_iter().next(),
        labels: summary.labels.unwrap_or_default(),
        created_ns: summary.created.map(|s| s.saturating_mul(1_000_000_000)),
        state: summary
            .state
            .and_then(|s| ContainerState::parse(s.as_ref()))
            .unwrap_or(ContainerState::Dead),
        health: summary.status.as_deref().and_then(Health::from_status),
        status: summary.status.unwrap_or_default(),
        networks: summary.network_settings.and_then(|n| n.networks),
        oom_killed: false,
    })
}

/// The same [`Replica`] as [`replica_from_summary`], from an inspect. Docker's human
/// status is not part of an inspect; it is rebuilt in the list's words (`Up`,
/// `Exited (137)`), which is all the planner reads from it.
fn replica_from_inspect(inspected: bollard::models::ContainerInspectResponse) -> Option<Replica> {
    let docker_state = inspected.state.unwrap_or_default();
    let state = docker_state
        .status
        .and_then(|s| ContainerState::parse(s.as_ref()))
        .unwrap_or(ContainerState::Dead);
    let status = match state {
        ContainerState::Running => "Up".to_owned(),
        ContainerState::Exited => Replica::exited_status(docker_state.exit_code),
        other => format!("{other:?}"),
    };
    let health = docker_state
        .health
        .as_ref()
        .and_then(|h| h.status)
        .and_then(|status| match status {
            HealthStatusEnum::STARTING => Some(Health::Starting),
            HealthStatusEnum::HEALTHY => Some(Health::Healthy),
            HealthStatusEnum::UNHEALTHY => Some(Health::Unhealthy),
            HealthStatusEnum::NONE | HealthStatusEnum::EMPTY => None,
        });
    let created_ns = inspected.created.as_deref().and_then(|c| {
        let created = humantime::parse_rfc3339_weak(c).ok()?;
        let since = created.duration_since(std::time::UNIX_EPOCH).ok()?;
        i64::try_from(since.as_nanos()).ok()
    });
    replica_from(Seen {
        id: inspected.id,
        name: inspected.name,
        labels: inspected.config.and_then(|c| c.labels).unwrap_or_default(),
        created_ns,
        state,
        status,
        networks: inspected.network_settings.and_then(|n| n.networks),
        oom_killed: docker_state.oom_killed.unwrap_or(false),
        health,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspected(json: &str) -> bollard::models::ContainerInspectResponse {
        serde_json::from_str(json).expect("a docker inspect")
    }

    // Captured from `docker inspect` of a replica (Docker 20.10, API 1.41).
    const RUNNING: &str = include_str!("../../testdata/docker-inspect-running.json");
    const EXITED: &str = include_str!("../../testdata/docker-inspect-exited.json");

    // Regression: the error printed the engine's message three times (`cannot reach
    // the Docker engine: connection refused: cannot reach the Docker engine: ...`).
    #[tokio::test]
    async fn an_unreachable_engine_is_reported_once_with_its_cause() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("docker.sock");
        // A socket nobody listens on any more: connections are refused.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let path = path.display().to_string();
        let Err(e) = DockerRuntime::connect_unix(&path).await else {
            panic!("connected to a dead socket");
        };
        let said = crate::report::chain(&e);
        assert_eq!(
            said,
            "cannot reach the Docker engine: Error in the hyper legacy client: client error \
             (Connect): Connection refused (os error 111)"
        );
        assert_eq!(e.kind(), "docker_unavailable");
    }

    fn request(template: &str) -> CreateReplica {
        let text = format!(
            "apiVersion: dockscale/v1alpha1\nkind: ScaledService\nmetadata: {{name: web}}\n\
             spec:\n  template:\n    image: img:1\n{template}"
        );
        let loaded =
            crate::spec::manifest::parse_str(std::path::Path::new("s.yaml"), &text).expect("valid");
        CreateReplica {
            name: "web-abcde".into(),
            service: "web".into(),
            template_hash: "h".into(),
            created_at_ns: 1,
            spec: loaded.into_iter().next().expect("one").service.spec,
        }
    }

    #[test]
    fn the_template_options_map_onto_the_create_request() {
        let body = container_body(&request(
            "    mounts:
      - {type: bind, source: /srv/static, target: /www, readOnly: true}
      - {type: volume, source: cache, target: /cache}
      - {type: tmpfs, target: /tmp, size: 64Mi}
    user: \"1000:1000\"
    workingDir: /app
    readOnlyRootFilesystem: true
    capAdd: [NET_ADMIN]
    capDrop: [cap_mknod]
    noNewPrivileges: true
    ulimits: {nofile: {soft: 65536, hard: 65536}, nproc: {soft: 10, hard: 20}}
    logging: {driver: json-file, options: {max-size: 10m}}
    extraHosts: {db.internal: 192.0.2.10}
    stopSignal: SIGQUIT
",
        ));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(body.working_dir.as_deref(), Some("/app"));
        assert_eq!(body.stop_signal.as_deref(), Some("SIGQUIT"));
        let host = body.host_config.expect("host config");
        let mounts = host.mounts.expect("mounts");
        let bind = &mounts[0];
        assert_eq!(bind.typ, Some(bollard::models::MountType::BIND));
        assert_eq!(
            (bind.source.as_deref(), bind.target.as_deref()),
            (Some("/srv/static"), Some("/www"))
        );
        assert_eq!(bind.read_only, Some(true));
        assert_eq!(mounts[1].typ, Some(bollard::models::MountType::VOLUME));
        assert_eq!(mounts[1].source.as_deref(), Some("cache"));
        assert_eq!(mounts[1].read_only, None);
        assert_eq!(mounts[2].typ, Some(bollard::models::MountType::TMPFS));
        assert_eq!(mounts[2].source, None);
        let size = mounts[2].tmpfs_options.as_ref().and_then(|o| o.size_bytes);
        assert_eq!(size, Some(64 * 1024 * 1024));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.cap_add, Some(vec!["CAP_NET_ADMIN".to_owned()]));
        assert_eq!(host.cap_drop, Some(vec!["CAP_MKNOD".to_owned()]));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_owned()])
        );
        let ulimits = host.ulimits.expect("ulimits");
        let named: Vec<_> = ulimits
            .iter()
            .map(|u| (u.name.as_deref(), u.soft, u.hard))
            .collect();
        assert_eq!(
            named,
            [
                (Some("nofile"), Some(65536), Some(65536)),
                (Some("nproc"), Some(10), Some(20))
            ]
        );
        let log = host.log_config.expect("log config");
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        assert_eq!(log.config.expect("options")["max-size"], "10m");
        assert_eq!(
            host.extra_hosts,
            Some(vec!["db.internal:192.0.2.10".to_owned()])
        );
    }

    #[test]
    fn a_template_without_options_leaves_the_images_defaults() {
        let body = container_body(&request(""));
        assert_eq!(
            (body.user, body.working_dir, body.stop_signal),
            (None, None, None)
        );
        let host = body.host_config.expect("host config");
        assert_eq!((host.mounts, host.ulimits), (None, None));
        assert_eq!((host.readonly_rootfs, host.log_config), (None, None));
        assert_eq!((host.cap_add, host.cap_drop), (None, None));
        assert_eq!((host.security_opt, host.extra_hosts), (None, None));
    }

    #[test]
    fn a_missing_bind_source_is_told_from_other_refusals() {
        // Docker 20.10's answer to a create whose bind source is missing.
        let refused = DockerError::Api {
            action: "create container",
            status: 400,
            message: "invalid mount config for type \"bind\": bind source path does not \
                      exist: /srv/missing"
                .into(),
        };
        match refused.bind_source_missing() {
            DockerError::BindSourceNotFound { path } => assert_eq!(path, "/srv/missing"),
            other => panic!("{other:?}"),
        }
        let other = DockerError::Api {
            action: "create container",
            status: 400,
            message: "invalid mount config".into(),
        };
        assert!(matches!(
            other.bind_source_missing(),
            DockerError::Api { status: 400, .. }
        ));
    }

    #[test]
    fn an_inspected_running_replica_reads_like_a_listed_one() {
        let r = replica_from_inspect(inspected(RUNNING)).expect("an owned replica");
        assert_eq!(r.name, "web-x7k2p");
        assert_eq!(r.service, "web");
        assert_eq!(r.template_hash, "3f9a1c2b7d4e");
        assert_eq!(r.created_at_ns, 1_795_573_822_147_337_391);
        assert_eq!(r.state, ContainerState::Running);
        assert_eq!(r.id.0.len(), 64);
        assert!(r.ip_on("capnet").is_some(), "{:?}", r.ips);
        assert_eq!(r.exit_code(), None);
    }

    #[test]
    fn an_inspected_killed_replica_is_exited_with_its_code_and_no_address() {
        let r = replica_from_inspect(inspected(EXITED)).expect("an owned replica");
        assert_eq!(r.state, ContainerState::Exited);
        assert_eq!(r.exit_code(), Some(137));
        assert_eq!(r.ip_on("capnet"), None);
    }

    #[test]
    fn an_inspected_container_without_the_managed_by_label_is_not_a_replica() {
        let mut foreign = inspected(RUNNING);
        if let Some(labels) = foreign.config.as_mut().and_then(|c| c.labels.as_mut()) {
            labels.remove(LABEL_MANAGED_BY);
        }
        assert_eq!(replica_from_inspect(foreign), None);
        let mut other = inspected(RUNNING);
        if let Some(labels) = other.config.as_mut().and_then(|c| c.labels.as_mut()) {
            labels.insert(LABEL_MANAGED_BY.to_owned(), "someone-else".to_owned());
        }
        assert_eq!(replica_from_inspect(other), None);
    }

    #[test]
    fn the_creation_time_falls_back_to_dockers_own() {
        let mut unlabelled = inspected(RUNNING);
        if let Some(labels) = unlabelled.config.as_mut().and_then(|c| c.labels.as_mut()) {
            labels.remove(LABEL_CREATED_AT);
        }
        let r = replica_from_inspect(unlabelled).expect("an owned replica");
        // 2026-11-25T02:38:23.057125519Z
        assert!(
            r.created_at_ns > 1_795_000_000_000_000_000,
            "{}",
            r.created_at_ns
        );
    }
}
