//! The `ScaledService` spec: the user-facing desired state, as fixed in DESIGN.md.
//!
//! These types are the single source of the JSON Schema (`dockscale schema`) and of
//! deserialization. Scalars with units (durations, memory sizes, names) are newtypes that
//! parse once, at the edge, so the rest of the controller never re-parses strings.
//! Cross-field rules (`replicas <= maxReplicas`, unique names) live in [`crate::spec::manifest`],
//! which knows where each value came from; this module must not do any I/O.

pub mod frontend;
pub mod manifest;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use schemars::JsonSchema;

pub use options::{
    Capability, ContainerPath, HostName, Logging, Mount, MountType, Signal, Ulimit, UlimitName,
    User,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The only `apiVersion` this controller understands.
pub const API_VERSION: &str = "dockscale/v1alpha1";
/// The only `kind` this controller understands.
pub const KIND: &str = "ScaledService";

/// One managed service: a set of identical containers ("replicas") kept at a count,
/// optionally behind an HAProxy backend and scaled from its queue.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "ScaledService", extend("additionalProperties" = false))]
pub struct ScaledService {
    /// Must be `dockscale/v1alpha1`.
    pub api_version: ApiVersion,
    /// Must be `ScaledService`.
    pub kind: Kind,
    pub metadata: Metadata,
    pub spec: ServiceSpec,
}

impl ScaledService {
    /// The service's name (`metadata.name`).
    pub fn name(&self) -> &str {
        self.metadata.name.as_str()
    }
}

/// The spec's API version; only `dockscale/v1alpha1` is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[schemars(with = "ApiVersionSchema")]
pub struct ApiVersion;

#[derive(JsonSchema)]
#[allow(dead_code)] // exists only to describe the schema
enum ApiVersionSchema {
    #[serde(rename = "dockscale/v1alpha1")]
    V1Alpha1,
}

impl Serialize for ApiVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(API_VERSION)
    }
}

impl<'de> Deserialize<'de> for ApiVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == API_VERSION {
            Ok(ApiVersion)
        } else {
            Err(serde::de::Error::custom(format!(
                "unsupported apiVersion `{s}`, expected `{API_VERSION}`"
            )))
        }
    }
}

/// The document kind; only `ScaledService` is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[schemars(with = "KindSchema")]
pub struct Kind;

#[derive(JsonSchema)]
#[allow(dead_code)] // exists only to describe the schema
enum KindSchema {
    ScaledService,
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(KIND)
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == KIND {
            Ok(Kind)
        } else {
            Err(serde::de::Error::custom(format!(
                "unsupported kind `{s}`, expected `{KIND}`"
            )))
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// The service name: a DNS label (RFC 1123), unique per controller. Replica
    /// containers are named `<name>-<5 random [a-z0-9]>`.
    pub name: DnsLabel,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// Desired replica count without `autoscale`; with it, the count to start from.
    #[serde(default = "default_replicas", deserialize_with = "count")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: u32,
    /// What one replica is, like a Kubernetes pod template. Changing it rolls the replicas.
    pub template: Template,
    /// Docker network the replicas join; created (bridge driver) when missing.
    #[serde(default = "default_network")]
    pub network: NetworkName,
    /// Put the replicas behind an HAProxy backend. Without it the service is a plain
    /// worker pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Scale the replica count from HAProxy's queue metrics (needs `loadBalancer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
    /// How a template change replaces replicas.
    #[serde(default)]
    pub rollout: Rollout,
    /// Where Swarm may put the tasks (`--runtime swarm` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
}

/// What runs the replicas: containers on one Docker engine, or a Swarm service.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Runtime {
    /// One container per replica on this Docker engine.
    #[default]
    Docker,
    /// One replicated Swarm service per spec, driven through a swarm manager.
    Swarm,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Swarm => "swarm",
        }
    }
}

/// Swarm's placement of the tasks, as `docker service create` takes it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Placement {
    /// Swarm constraint expressions, e.g. `node.role==worker`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Spread the tasks evenly over the values of a node label, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<Preference>,
    /// At most this many tasks of the service on one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<u32>,
}

/// One placement preference.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Preference {
    /// A node attribute to spread over, e.g. `node.labels.zone`.
    pub spread: String,
}

fn default_replicas() -> u32 {
    1
}

fn default_network() -> NetworkName {
    NetworkName("dockscale".to_owned())
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Template {
    /// The image of every replica. With the default pull policy a missing image is
    /// pulled (credentials from the Docker client configuration) before a replica is
    /// created from it.
    #[schemars(length(min = 1))]
    pub image: String,
    /// When to pull `image`: `IfNotPresent` (default) pulls a missing image once;
    /// `Always` resolves the tag at every spec load and reload (a tag that moved rolls
    /// the replicas, an unchanged one does not); `Never` uses only a local image.
    #[serde(default, skip_serializing_if = "ImagePullPolicy::is_default")]
    pub image_pull_policy: ImagePullPolicy,
    /// Overrides the image's command (its `CMD`); empty keeps the image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<EnvName, String>,
    /// Container port that receives traffic. Required with `loadBalancer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Extra container labels. Keys under `dockscale.` are reserved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: Resources,
    /// How long a replica may take to exit after SIGTERM before it is killed.
    #[serde(default = "default_stop_grace_period")]
    pub stop_grace_period: Duration,
    /// Run Docker's init as PID 1 so that SIGTERM reaches and stops the server.
    #[serde(default = "default_true")]
    pub init: bool,
    /// Filesystems mounted into every replica: host paths, named volumes, tmpfs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// The user (and group) the process runs as, instead of the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    /// The process's working directory, instead of the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<ContainerPath>,
    /// Mount the container's root filesystem read-only: writes go to mounts only.
    #[serde(default, skip_serializing_if = "options::is_false")]
    pub read_only_root_filesystem: bool,
    /// Linux capabilities added to Docker's default set (`NET_ADMIN` or `CAP_NET_ADMIN`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<Capability>,
    /// Capabilities removed from it; `ALL` drops every one (then add back what is needed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<Capability>,
    /// Forbid the process to gain privileges (setuid binaries, file capabilities).
    #[serde(default, skip_serializing_if = "options::is_false")]
    pub no_new_privileges: bool,
    /// Resource limits by `setrlimit` name: `nofile: {soft: 65536, hard: 65536}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<UlimitName, Ulimit>,
    /// Where the replicas' output goes; unset keeps the engine's default driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    /// Extra `/etc/hosts` entries: host name to IP address.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(with = "BTreeMap<String, std::net::IpAddr>")]
    pub extra_hosts: BTreeMap<HostName, std::net::IpAddr>,
    /// A `KEY=VALUE` file (as `docker run --env-file`), relative to the spec file and
    /// read when the spec is loaded; `env` wins over it. Loading merges it into `env`,
    /// so editing the file rolls the replicas on the next reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub env_file: Option<std::path::PathBuf>,
    /// The signal that asks a replica to stop (before `stopGracePeriod` ends in SIGKILL);
    /// unset keeps the image's (SIGTERM by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<Signal>,
    /// Docker's health check of each replica, replacing the image's `HEALTHCHECK`.
    /// A replica with a health check (its own or its image's) is ready only once
    /// Docker reports it healthy, and leaves rotation when it turns unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<ContainerHealthcheck>,
    /// A replica unhealthy this long is drained and replaced (like a failed liveness
    /// probe). Default 30s. Not part of the template hash: changing it rolls nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_replace_after: Option<Duration>,
}

impl Template {
    /// How long a replica may stay unhealthy before it is replaced.
    pub fn unhealthy_replace_after(&self) -> std::time::Duration {
        self.unhealthy_replace_after
            .map_or(DEFAULT_UNHEALTHY_REPLACE_AFTER, Duration::get)
    }
}

/// How long a replica may stay unhealthy when `unhealthyReplaceAfter` is not given.
pub const DEFAULT_UNHEALTHY_REPLACE_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// A container health check that Docker runs inside each replica (`HEALTHCHECK`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerHealthcheck {
    /// The command, run without a shell (exec form): exit 0 is healthy, anything else
    /// unhealthy. Required unless `disable` is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Time between checks.
    #[serde(default = "default_container_check_interval")]
    pub interval: Duration,
    /// A check that takes longer fails.
    #[serde(default = "default_container_check_timeout")]
    pub timeout: Duration,
    /// Failed checks in a row before the replica is unhealthy.
    #[serde(
        default = "default_container_check_retries",
        deserialize_with = "positive_count"
    )]
    #[schemars(range(min = 1, max = 1000))]
    pub retries: u32,
    /// Time to start during which failed checks do not count.
    #[serde(default, skip_serializing_if = "Duration::is_zero")]
    pub start_period: Duration,
    /// Turns off the image's `HEALTHCHECK` (the replicas then report no health).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable: bool,
}

fn default_container_check_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_container_check_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_container_check_retries() -> u32 {
    3
}

/// When a replica's image is pulled from its registry, as in Kubernetes.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImagePullPolicy {
    /// Pull only when the image is not present locally.
    #[default]
    IfNotPresent,
    /// Resolve the tag in its registry at every spec load and reload; replicas follow
    /// the image it names.
    Always,
    /// Never pull: a missing image is `ImageNotFound` until it is built or loaded.
    Never,
}

impl ImagePullPolicy {
    /// Whether this is the default (left out of the serialized template, so that the
    /// template hash of a spec written before the field existed does not change).
    pub fn is_default(&self) -> bool {
        *self == ImagePullPolicy::IfNotPresent
    }
}

fn default_stop_grace_period() -> Duration {
    Duration::from_secs(10)
}

fn default_true() -> bool {
    true
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// Memory limit as a Kubernetes quantity (`64Mi`, `1Gi`, `500M`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// CPU limit in cores (`0.5` is half a core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    /// HAProxy backend name. In external mode it must exist in the user's config.
    pub backend: HaproxyName,
    /// Managed HAProxy only: where this service's frontend listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub bind: Option<SocketAddr>,
    /// Options applied to every server (replica) of the backend.
    #[serde(default)]
    pub server: ServerOptions,
    /// How long a removed replica may keep serving its open sessions before it is cut.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Duration,
    /// An HTTP health check (HAProxy's `option httpchk`), also the readiness gate
    /// before a replica is enabled. Without it both are a TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerOptions {
    /// HAProxy health-checks each server.
    #[serde(default = "default_true")]
    pub check: bool,
    /// Concurrent requests per server; beyond it HAProxy queues in the backend, which is
    /// what the autoscaler measures. Unset means unlimited (and no queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub maxconn: Option<u32>,
    /// Relative share of traffic (HAProxy weight).
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 256))]
    pub weight: u16,
}

fn default_weight() -> u16 {
    100
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            check: true,
            maxconn: None,
            weight: default_weight(),
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Autoscale {
    /// The fewest replicas to run; `0` only with `scaleToZero` (and a load balancer,
    /// whose HAProxy holds the requests that arrive while none runs).
    #[serde(deserialize_with = "count")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: u32,
    #[serde(deserialize_with = "positive_count")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: u32,
    /// One signal to scale on (the original form; `targets` gives several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// Several signals, each giving its own recommendation; the highest wins (the
    /// HPA with several metrics). Give `target` or `targets`, not both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Target>,
    /// Relative change below which nothing is done (`0.1` = 10%): one number for both
    /// directions, or `{scaleUp, scaleDown}`.
    #[serde(default)]
    pub tolerance: Tolerance,
    /// What to do when no good sample arrives (HAProxy unreachable, backend missing).
    /// Unset: hold the count (and still never scale down on missing data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// Windows, opened by a cron expression in a time zone, during which at least
    /// their `minReplicas` run (the highest of the windows in force). They raise the
    /// floor only: the load can take the count higher, never a schedule lower.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<Schedule>,
    #[serde(default)]
    pub behavior: Behavior,
    /// With `minReplicas: 0`: after `idleAfter` without a single request the count
    /// goes to 0; HAProxy then holds new requests while the first replica starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_to_zero: Option<ScaleToZero>,
    /// Replicas kept created, warmed (their port answered) and paused, outside
    /// rotation and outside the replica count: a scale-up unpauses one of them
    /// instead of creating a replica, and the pool is refilled in the background.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_pool: Option<WarmPool>,
}

/// The warm pool: paused containers of the current template, ready to be taken.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmPool {
    /// How many paused containers to keep (at most `maxReplicas`, and at most
    /// [`WarmPool::MAX_SIZE`]). A paused container uses no CPU; its memory is kept.
    #[serde(deserialize_with = "count")]
    #[schemars(range(min = 0, max = 50))]
    pub size: u32,
}

impl WarmPool {
    /// The largest pool: each warm container holds its memory while it waits.
    pub const MAX_SIZE: u32 = 50;
}

/// Scale to zero: when to go there, and how long a request waits for the way back.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleToZero {
    /// How long the backend must see no request at all (none in flight, none new)
    /// before the last replica is drained and removed.
    #[serde(default = "default_idle_after")]
    pub idle_after: Duration,
    /// How long HAProxy holds a request while no replica is ready; past it the
    /// request is answered 503 with `Retry-After`. At most 60s (the managed
    /// HAProxy's client timeout).
    #[serde(default = "default_activation_timeout")]
    pub activation_timeout: Duration,
}

fn default_idle_after() -> Duration {
    Duration::from_secs(300)
}

fn default_activation_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for ScaleToZero {
    fn default() -> Self {
        ScaleToZero {
            idle_after: default_idle_after(),
            activation_timeout: default_activation_timeout(),
        }
    }
}

impl Autoscale {
    /// Scale to zero is on: `minReplicas: 0` with `scaleToZero`.
    pub fn scales_to_zero(&self) -> Option<&ScaleToZero> {
        self.scale_to_zero
            .as_ref()
            .filter(|_| self.min_replicas == 0)
    }

    /// The fewest replicas the load-driven part of the autoscaler goes down to: zero
    /// is reached only through idleness, never through a low load.
    pub fn load_floor(&self) -> u32 {
        self.min_replicas.max(1)
    }

    /// The signals to scale on: `targets`, or the single `target`.
    pub fn signals(&self) -> Vec<Target> {
        match self.target {
            Some(t) if self.targets.is_empty() => vec![t],
            _ => self.targets.clone(),
        }
    }
}

fn default_tolerance() -> f64 {
    0.1
}

/// The tolerance band: a single number means both directions.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq)]
#[serde(untagged)]
pub enum Tolerance {
    Both(#[schemars(range(min = 0.0, max = 1.0))] f64),
    PerDirection(DirectionalTolerance),
}

/// A tolerance per direction: scale up eagerly, down reluctantly (or the other way).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectionalTolerance {
    /// Ratios of metric to target above 1 by at most this much change nothing.
    #[serde(default = "default_tolerance")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub scale_up: f64,
    /// Ratios below 1 by at most this much change nothing.
    #[serde(default = "default_tolerance")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub scale_down: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance::Both(default_tolerance())
    }
}

impl Tolerance {
    /// How far above 1 the metric-to-target ratio may go before scaling up.
    pub fn scale_up(self) -> f64 {
        match self {
            Tolerance::Both(t) => t,
            Tolerance::PerDirection(d) => d.scale_up,
        }
    }

    /// How far below 1 the ratio may go before scaling down.
    pub fn scale_down(self) -> f64 {
        match self {
            Tolerance::Both(t) => t,
            Tolerance::PerDirection(d) => d.scale_down,
        }
    }
}

/// Stale metrics: after `after` without a good sample, hold the count, or go up to
/// `replicas` when that is higher. Never down, never to zero.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fallback {
    /// How long without a good sample before the fallback applies.
    pub after: Duration,
    /// The count to run while blind, if higher than the current one; unset holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: Option<u32>,
}

/// One autoscaling signal: exactly one key.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Target {
    /// Requests in flight (being served plus queued) per replica.
    InflightPerReplica(#[schemars(range(min = 0.1))] f64),
    /// HAProxy's average queue time (`qtime`) to hold, in milliseconds.
    QueueTimeMillis(#[schemars(range(min = 1))] u32),
    /// HAProxy's average backend response time (`rtime`) to hold, in milliseconds.
    ResponseTimeMillis(#[schemars(range(min = 1))] u32),
    /// Requests per second (the backend's `rate`) per replica.
    RequestsPerSecondPerReplica(#[schemars(range(min = 0.1))] f64),
}

impl Target {
    /// The signal's name as written in the spec; used in messages and the status.
    pub fn name(self) -> &'static str {
        match self {
            Target::InflightPerReplica(_) => "inflightPerReplica",
            Target::QueueTimeMillis(_) => "queueTimeMillis",
            Target::ResponseTimeMillis(_) => "responseTimeMillis",
            Target::RequestsPerSecondPerReplica(_) => "requestsPerSecondPerReplica",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Target::InflightPerReplica(n) => write!(f, "inflight {n}/replica"),
            Target::QueueTimeMillis(ms) => write!(f, "qtime {ms}ms"),
            Target::ResponseTimeMillis(ms) => write!(f, "rtime {ms}ms"),
            Target::RequestsPerSecondPerReplica(n) => write!(f, "rate {n}/s/replica"),
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Behavior {
    #[serde(default = "ScalingRules::default_up")]
    pub scale_up: ScalingRules,
    #[serde(default = "ScalingRules::default_down")]
    pub scale_down: ScalingRules,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            scale_up: ScalingRules::default_up(),
            scale_down: ScalingRules::default_down(),
        }
    }
}

/// Rules for one direction of scaling, after the Kubernetes HPA's `behavior`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScalingRules {
    /// Look back this far and act on the most conservative recommendation seen.
    pub stabilization_window: Duration,
    /// At most this many replicas added (or removed) per `period`.
    #[serde(deserialize_with = "positive_count")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_step: u32,
    /// The rate-limit period for `maxStep`, and the window the demand is averaged over.
    pub period: Duration,
}

impl ScalingRules {
    fn default_up() -> Self {
        ScalingRules {
            stabilization_window: Duration::from_secs(0),
            max_step: 4,
            period: Duration::from_secs(15),
        }
    }

    fn default_down() -> Self {
        ScalingRules {
            stabilization_window: Duration::from_secs(60),
            max_step: 1,
            period: Duration::from_secs(30),
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rollout {
    /// Replicas that may exist above the desired count while rolling.
    #[serde(default = "default_max_surge", deserialize_with = "count")]
    #[schemars(range(max = 1000))]
    pub max_surge: u32,
    /// Ready replicas that may be missing below the desired count while rolling.
    #[serde(default, deserialize_with = "count")]
    #[schemars(range(max = 1000))]
    pub max_unavailable: u32,
    /// A rollout with no progress for this long stops and is reported as failed.
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline: Duration,
    /// `rolling` (the default) replaces replicas `maxSurge` at a time; `canary` shifts
    /// traffic to the new template step by step through HAProxy weights (it needs a
    /// `loadBalancer`).
    #[serde(default, skip_serializing_if = "Strategy::is_rolling")]
    pub strategy: Strategy,
    /// Canary only: the shares of traffic the new template gets, each held for its
    /// pause, in increasing order; after the last one the new template takes it all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<CanaryStep>,
    /// Compares new replicas with old ones from HAProxy's counters and aborts the
    /// rollout when the new ones do worse. Canary rollouts always analyse (with these
    /// defaults when absent); a rolling one only when this is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
}

/// How a new template replaces the old one.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Strategy {
    #[default]
    Rolling,
    Canary,
}

impl Strategy {
    pub fn is_rolling(&self) -> bool {
        *self == Strategy::Rolling
    }
}

/// One canary step: the new template's share of traffic, held for `pause`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanaryStep {
    /// Percent of the traffic sent to the new template (1 to 99).
    #[schemars(range(min = 1, max = 99))]
    pub weight: u8,
    /// How long the share is held (and analysed) before the next step.
    pub pause: Duration,
}

/// Thresholds a new template's replicas must stay within, compared with the old ones.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Analysis {
    /// How often the counters are compared.
    #[serde(default = "Analysis::default_interval")]
    pub interval: Duration,
    /// Requests the new replicas must have answered before a verdict: fewer tell
    /// nothing, so a step holds until they are reached.
    #[serde(default = "Analysis::default_min_requests")]
    #[schemars(range(min = 1))]
    pub min_requests: u64,
    /// Highest error rate (5xx, connection and response errors per request) of the new
    /// replicas, as a fraction (`0.01` = 1%), above the old replicas' own.
    #[serde(default = "Analysis::default_max_error_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: f64,
    /// Highest ratio of the new replicas' mean response time to the old ones'.
    #[serde(default = "Analysis::default_max_response_time_ratio")]
    #[schemars(range(min = 1.0))]
    pub max_response_time_ratio: f64,
}

impl Analysis {
    fn default_interval() -> Duration {
        Duration::from_secs(10)
    }
    fn default_min_requests() -> u64 {
        100
    }
    fn default_max_error_rate() -> f64 {
        0.01
    }
    fn default_max_response_time_ratio() -> f64 {
        1.5
    }
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            interval: Analysis::default_interval(),
            min_requests: Analysis::default_min_requests(),
            max_error_rate: Analysis::default_max_error_rate(),
            max_response_time_ratio: Analysis::default_max_response_time_ratio(),
        }
    }
}

impl Rollout {
    /// The analysis that guards this rollout, if any: always for a canary.
    pub fn guard(&self) -> Option<Analysis> {
        match self.strategy {
            Strategy::Canary => Some(self.analysis.unwrap_or_default()),
            Strategy::Rolling => self.analysis,
        }
    }
}

fn default_max_surge() -> u32 {
    1
}

fn default_progress_deadline() -> Duration {
    Duration::from_secs(120)
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            max_surge: default_max_surge(),
            max_unavailable: 0,
            progress_deadline: default_progress_deadline(),
            strategy: Strategy::Rolling,
            steps: Vec::new(),
            analysis: None,
        }
    }
}

/// A replica count: a whole number from 0 to 1000, with a message that says so.
fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    bounded_count(d, 0)
}

/// A count that must be at least 1.
fn positive_count<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    bounded_count(d, 1)
}

fn bounded_count<'de, D: Deserializer<'de>>(d: D, min: i64) -> Result<u32, D::Error> {
    const MAX: i64 = 1000;
    let v = i64::deserialize(d).map_err(|_: D::Error| {
        serde::de::Error::custom(format!("expected a whole number from {min} to {MAX}"))
    })?;
    if (min..=MAX).contains(&v) {
        // In range 0..=1000, so it fits a u32.
        Ok(v as u32)
    } else {
        Err(serde::de::Error::custom(format!(
            "{v} is out of range: expected a whole number from {min} to {MAX}"
        )))
    }
}

/// Implements `Deserialize` through `FromStr` for string newtypes, so the parse error
/// becomes the located YAML error.
macro_rules! deserialize_from_str {
    ($ty:ty) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

// After the macro: the option types parse through it too.
pub mod options;
pub mod schedule;

pub use schedule::Schedule;

/// A DNS label (RFC 1123): 1–63 characters of `[a-z0-9-]`, starting and ending with an
/// alphanumeric.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[schemars(with = "String", extend("pattern" = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
pub struct DnsLabel(String);

impl DnsLabel {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DnsLabel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let valid = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if valid {
            Ok(DnsLabel(s.to_owned()))
        } else {
            Err(format!(
                "`{s}` is not a DNS label: use 1-63 lowercase letters, digits and '-', \
                 starting and ending with a letter or digit"
            ))
        }
    }
}

impl fmt::Display for DnsLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

deserialize_from_str!(DnsLabel);

/// A Docker network name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[schemars(with = "String", extend("pattern" = "^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$"))]
pub struct NetworkName(String);

impl NetworkName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NetworkName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut bytes = s.bytes();
        let valid = s.len() <= 128
            && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
            && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid {
            return Err(format!(
                "`{s}` is not a Docker network name: use letters, digits, '_', '.' and '-', \
                 starting with a letter or digit"
            ));
        }
        match s {
            "host" => Err(
                "`host` cannot be a service's network: replicas on the host network \
                 share the host's address and ports, so two replicas of one port cannot both \
                 run and HAProxy cannot tell them apart; give them a bridge network of their \
                 own (the default, `dockscale`)"
                    .to_owned(),
            ),
            "none" => Err(
                "`none` cannot be a service's network: replicas on it have no \
                 address, so nothing can reach them; give them a bridge network of their own \
                 (the default, `dockscale`)"
                    .to_owned(),
            ),
            _ => Ok(NetworkName(s.to_owned())),
        }
    }
}

impl fmt::Display for NetworkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

deserialize_from_str!(NetworkName);

/// An HAProxy proxy or server identifier: letters, digits, `-`, `_`, `.` and `:`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[schemars(with = "String", extend("pattern" = "^[A-Za-z0-9_.:-]{1,64}$"))]
pub struct HaproxyName(String);

impl HaproxyName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HaproxyName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let valid = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if valid {
            Ok(HaproxyName(s.to_owned()))
        } else {
            Err(format!(
                "`{s}` is not an HAProxy name: use 1-64 letters, digits, '_', '.', ':' and '-'"
            ))
        }
    }
}

impl fmt::Display for HaproxyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

deserialize_from_str!(HaproxyName);

/// An environment variable name: non-empty, without `=` or NUL.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[schemars(with = "String")]
pub struct EnvName(String);

impl EnvName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for EnvName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.contains(['=', '\0']) {
            Err(format!(
                "`{s}` is not an environment variable name: it must be non-empty, without '='"
            ))
        } else {
            Ok(EnvName(s.to_owned()))
        }
    }
}

impl fmt::Display for EnvName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

deserialize_from_str!(EnvName);

/// An HTTP health check of every server.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// The path asked for, from `/`.
    pub path: HttpPath,
    #[serde(default)]
    pub method: HttpMethod,
    /// The answers that mean healthy: a status (`200`) or a range (`200-399`).
    #[serde(default)]
    pub expect_status: StatusRange,
    #[serde(default = "default_check_interval")]
    pub interval: Duration,
    #[serde(default = "default_check_timeout")]
    pub timeout: Duration,
    /// Checks in a row that pass before a server is UP.
    #[serde(default = "default_rise", deserialize_with = "positive_count")]
    #[schemars(range(min = 1, max = 1000))]
    pub rise: u32,
    /// Checks in a row that fail before a server is DOWN.
    #[serde(default = "default_fall", deserialize_with = "positive_count")]
    #[schemars(range(min = 1, max = 1000))]
    pub fall: u32,
}

fn default_check_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_rise() -> u32 {
    2
}

fn default_fall() -> u32 {
    3
}

/// The method of a health check.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Get,
    Head,
    Options,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Options => "OPTIONS",
        }
    }
}

/// A request path: starts with `/`, printable ASCII without spaces.
#[derive(Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(with = "String")]
pub struct HttpPath(String);

impl HttpPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HttpPath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with('/') && s.len() <= 1024 && s.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(HttpPath(s.to_owned()))
        } else {
            Err(format!(
                "`{s}` is not a request path: it starts with '/' and has no spaces or \
                 control characters"
            ))
        }
    }
}

impl fmt::Display for HttpPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

deserialize_from_str!(HttpPath);

/// HTTP statuses from `low` to `high`, both included: `200` or `200-399`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(with = "String")]
pub struct StatusRange {
    pub low: u16,
    pub high: u16,
}

impl Default for StatusRange {
    fn default() -> Self {
        StatusRange {
            low: 200,
            high: 399,
        }
    }
}

impl StatusRange {
    pub fn contains(self, status: u16) -> bool {
        (self.low..=self.high).contains(&status)
    }
}

impl FromStr for StatusRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let status = |t: &str| {
            t.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
        };
        let range = match s.split_once('-') {
            Some((a, b)) => status(a).zip(status(b)),
            None => status(s).map(|c| (c, c)),
        };
        match range {
            Some((low, high)) if low <= high => Ok(StatusRange { low, high }),
            _ => Err(format!(
                "`{s}` is not an HTTP status or range: write `200` or `200-399` (100 to 599)"
            )),
        }
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

deserialize_from_str!(StatusRange);

/// A duration written as a string: `500ms`, `10s`, `5m`, `1h30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, JsonSchema)]
#[schemars(
    with = "String",
    extend("pattern" = "^([0-9]+ ?(ns|us|ms|s|m|h|d) ?)+$")
)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Duration(std::time::Duration::from_millis(millis))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    pub const fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // A bare number is ambiguous (seconds? milliseconds?): require a unit.
        if s.trim().bytes().all(|b| b.is_ascii_digit()) && !s.trim().is_empty() && s.trim() != "0" {
            return Err(format!(
                "invalid duration `{s}`: add a unit, e.g. `{s}s` or `{s}ms`"
            ));
        }
        humantime::parse_duration(s)
            .map(Duration)
            .map_err(|e| format!("invalid duration `{s}`: {e} (examples: 500ms, 10s, 5m)"))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

deserialize_from_str!(Duration);

/// A memory size as a Kubernetes quantity: `64Mi`, `1Gi`, `500M`, `1e9`, or plain bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[schemars(
    with = "String",
    extend("pattern" = "^[0-9]+(\\.[0-9]+)?([eE][0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|k|K|M|G|T|P|E)?$")
)]
pub struct Quantity {
    bytes: u64,
}

impl Quantity {
    pub const fn from_bytes(bytes: u64) -> Self {
        Quantity { bytes }
    }

    pub const fn bytes(self) -> u64 {
        self.bytes
    }
}

impl FromStr for Quantity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let invalid = || format!("invalid quantity `{s}` (examples: 64Mi, 1Gi, 500M)");
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, suffix) = t.split_at(split);
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
            return Err(invalid());
        }
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let multiplier: f64 = match suffix {
            "" => 1.0,
            "Ki" => 1024.0,
            "Mi" => 1024.0 * 1024.0,
            "Gi" => 1024.0 * 1024.0 * 1024.0,
            "Ti" => 1024f64.powi(4),
            "Pi" => 1024f64.powi(5),
            "Ei" => 1024f64.powi(6),
            "k" | "K" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "P" => 1e15,
            "E" => 1e18,
            _ => match suffix.strip_prefix(['e', 'E']).map(str::parse::<i32>) {
                Some(Ok(exp)) if (0..=18).contains(&exp) => 10f64.powi(exp),
                _ => return Err(invalid()),
            },
        };
        let bytes = value * multiplier;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(format!("quantity `{s}` is too large"));
        }
        // A fractional byte count rounds up, like Kubernetes does.
        Ok(Quantity {
            bytes: bytes.ceil() as u64,
        })
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("Ti", 1 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ];
        for (unit, size) in UNITS {
            if self.bytes >= size && self.bytes % size == 0 {
                return write!(f, "{}{unit}", self.bytes / size);
            }
        }
        write!(f, "{}", self.bytes)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(bytes) => Ok(Quantity { bytes }),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A CPU limit in cores, above 0 and at most 1024.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, JsonSchema)]
#[schemars(with = "f64", extend("exclusiveMinimum" = 0, "maximum" = 1024))]
pub struct Cpus(f64);

impl Cpus {
    pub fn get(self) -> f64 {
        self.0
    }

    /// Docker's `NanoCpus`.
    pub fn nano_cpus(self) -> i64 {
        (self.0 * 1e9).round() as i64
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if v.is_finite() && v > 0.0 && v <= 1024.0 {
            Ok(Cpus(v))
        } else {
            Err(serde::de::Error::custom(format!(
                "invalid cpus `{v}`: must be above 0 and at most 1024 (0.5 is half a core)"
            )))
        }
    }
}
