//! What a replica is as observed: a container dockscale owns, identified by labels.
//!
//! This module owns the ownership contract of DESIGN.md (the `dockscale.*` labels and
//! the `<service>-<5 random [a-z0-9]>` names), the names of the warm pool's containers
//! (`<service>-warm-<5 random [a-z0-9]>`, labelled as replicas are: labels cannot
//! change, so the name alone tells a warm container from a replica) and the template
//! hash. It holds plain data
//! read from Docker; it never calls Docker itself.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

use crate::spec::ServiceSpec;

/// Marks a container as dockscale's. Containers without it are never touched.
pub const LABEL_MANAGED_BY: &str = "dockscale.managed-by";
/// The value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "dockscale";
/// The service a replica belongs to.
pub const LABEL_SERVICE: &str = "dockscale.service";
/// Hash of the template the replica was created from; a change means a rollout.
pub const LABEL_TEMPLATE_HASH: &str = "dockscale.template-hash";
/// Creation time in Unix nanoseconds, set by dockscale: Docker's list API has only
/// whole seconds, and scale-down removes the newest replica first.
pub const LABEL_CREATED_AT: &str = "dockscale.created-at";

/// A Docker container id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerId(pub String);

impl ContainerId {
    /// The 12-character short form, for logs and events.
    pub fn short(&self) -> &str {
        self.0.get(..12).unwrap_or(&self.0)
    }
}

impl std::fmt::Display for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.short())
    }
}

/// A container's state as Docker reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
}

impl ContainerState {
    /// Docker's state string (`docker ps --format {{.State}}`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created" => ContainerState::Created,
            "running" => ContainerState::Running,
            "paused" => ContainerState::Paused,
            "restarting" => ContainerState::Restarting,
            "removing" => ContainerState::Removing,
            "exited" => ContainerState::Exited,
            "dead" => ContainerState::Dead,
            _ => return None,
        })
    }
}

/// Why a container's process ended, as far as dockscale can tell from Docker's events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCause {
    /// Its own process exited: its `die` came with no signal from anyone before it.
    Own,
    /// The kernel killed it for exceeding the template's memory limit (`oom`, then `die`).
    OutOfMemory,
    /// Someone signalled it first (`kill`: `docker kill`, `docker stop`, `docker rm -f`,
    /// or the engine stopping): not the replica's doing.
    Signalled,
    /// Found exited without its `die` having been seen (the event stream was down, or
    /// dockscale was not running).
    Unknown,
    /// It could not be created or started (the engine refused the template).
    FailedCreate,
}

impl ExitCause {
    /// Whether the exit counts toward a crash loop: only the replica's own doing.
    pub fn is_crash(self) -> bool {
        matches!(
            self,
            ExitCause::Own | ExitCause::OutOfMemory | ExitCause::FailedCreate
        )
    }

    /// A short, bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            ExitCause::Own => "own",
            ExitCause::OutOfMemory => "oom",
            ExitCause::Signalled => "signalled",
            ExitCause::Unknown => "unknown",
            ExitCause::FailedCreate => "failed_create",
        }
    }
}

/// What Docker's health check of a container says, for a container that has one (its
/// image's `HEALTHCHECK` or the template's `healthcheck`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// No verdict yet: within its start period, or before its first check.
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    /// From Docker's list status (`Up 3 minutes (healthy)`, `Up 2 seconds (health:
    /// starting)`); `None` for a container without a health check.
    pub fn from_status(status: &str) -> Option<Self> {
        if status.contains("(healthy)") {
            Some(Health::Healthy)
        } else if status.contains("(unhealthy)") {
            Some(Health::Unhealthy)
        } else if status.contains("(health: starting)") {
            Some(Health::Starting)
        } else {
            None
        }
    }

    /// Docker's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// One owned container, as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct Replica {
    pub id: ContainerId,
    pub name: String,
    pub service: String,
    pub template_hash: String,
    /// Unix nanoseconds; from [`LABEL_CREATED_AT`], else Docker's creation second.
    pub created_at_ns: i64,
    pub state: ContainerState,
    /// Docker's human status, e.g. `Exited (137) 3 seconds ago`.
    pub status: String,
    /// Addresses by network name, once running.
    pub ips: BTreeMap<String, Ipv4Addr>,
    /// Why it exited, once it has; `None` for an exited container while its cause is not
    /// known yet (its `die` event, which says, is on its way).
    pub exit_cause: Option<ExitCause>,
    /// Docker's health verdict, for a container with a health check.
    pub health: Option<Health>,
}

impl Replica {
    /// A container of the service's warm pool (named `<service>-warm-<5>`), not a
    /// replica: never counted, never in rotation, until it is taken and renamed.
    pub fn is_warm(&self) -> bool {
        is_warm_name(&self.service, &self.name)
    }

    /// Whether its health check, if it has one, lets it take traffic: only a healthy
    /// verdict does.
    pub fn health_allows_traffic(&self) -> bool {
        self.health.is_none_or(|h| h == Health::Healthy)
    }

    /// The replica's address on `network`.
    pub fn ip_on(&self, network: &str) -> Option<Ipv4Addr> {
        self.ips.get(network).copied()
    }

    /// The exit code Docker shows in the status of an exited container.
    pub fn exit_code(&self) -> Option<i64> {
        let rest = self.status.strip_prefix("Exited (")?;
        rest.split(')').next()?.parse().ok()
    }

    /// An exited container's status in Docker's list words (`Exited (137)`), for what
    /// was learnt elsewhere than from a list; [`Replica::exit_code`] reads it back.
    pub fn exited_status(code: Option<i64>) -> String {
        format!("Exited ({})", code.unwrap_or(-1))
    }
}

/// The labels of a new replica: ownership first, then the user's (which cannot
/// override ours: validation rejects `dockscale.` keys).
pub fn replica_labels(
    service: &str,
    template_hash: &str,
    created_at_ns: i64,
    user: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels = user.clone();
    labels.insert(LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned());
    labels.insert(LABEL_SERVICE.to_owned(), service.to_owned());
    labels.insert(LABEL_TEMPLATE_HASH.to_owned(), template_hash.to_owned());
    labels.insert(LABEL_CREATED_AT.to_owned(), created_at_ns.to_string());
    labels
}

/// A stable hash of what a replica is: the template and the network it joins. Stable
/// across dockscale versions and restarts (SHA-256 of canonical JSON; maps are sorted),
/// since adoption after a restart compares it with the labels of running containers.
pub fn template_hash(spec: &ServiceSpec) -> String {
    // How long an unhealthy replica is kept is the controller's business, not the
    // container's: changing it rolls nothing.
    let template = crate::spec::Template {
        unhealthy_replace_after: None,
        ..spec.template.clone()
    };
    let canonical = serde_json::json!({
        "template": template,
        "network": spec.network,
    });
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    digest[..5].iter().map(|b| format!("{b:02x}")).collect()
}

/// The template hash of a service whose image is pulled `Always`: the template, the
/// network and the image ID its tag resolved to, so that a tag moved in the registry
/// rolls the replicas and an unchanged one does not.
pub fn template_hash_with_image(spec: &ServiceSpec, image_id: &str) -> String {
    let canonical = serde_json::json!({
        "template": spec.template,
        "network": spec.network,
        "imageId": image_id,
    });
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    digest[..5].iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh replica name, `<service>-<5 random [a-z0-9]>`, as Kubernetes names pods.
pub fn replica_name(service: &str, rng: &mut impl rand::Rng) -> String {
    format!("{service}-{}", suffix(rng))
}

/// A fresh warm container name, `<service>-warm-<5 random [a-z0-9]>`.
pub fn warm_name(service: &str, rng: &mut impl rand::Rng) -> String {
    format!("{service}-warm-{}", suffix(rng))
}

/// The replica name a warm container takes when it is taken: `<service>-warm-abc12`
/// becomes `<service>-abc12`. `None` for a name that is not a warm one of `service`.
pub fn taken_name(service: &str, warm: &str) -> Option<String> {
    let suffix = warm_suffix(service, warm)?;
    Some(format!("{service}-{suffix}"))
}

/// Whether `name` is a warm container's name of `service`. A service named `web-warm`
/// has replicas named `web-warm-<5>`, labelled `web-warm`: not `web`'s warm ones.
pub fn is_warm_name(service: &str, name: &str) -> bool {
    warm_suffix(service, name).is_some()
}

fn warm_suffix<'a>(service: &str, name: &'a str) -> Option<&'a str> {
    let suffix = name.strip_prefix(service)?.strip_prefix("-warm-")?;
    let ours = suffix.len() == 5
        && suffix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    ours.then_some(suffix)
}

fn suffix(rng: &mut impl rand::Rng) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_names_are_the_service_and_five_lowercase_alphanumerics() {
        let mut rng = rand::rng();
        for _ in 0..100 {
            let name = replica_name("webapp", &mut rng);
            let suffix = name.strip_prefix("webapp-").expect("prefix");
            assert_eq!(suffix.len(), 5);
            assert!(suffix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        }
    }

    #[test]
    fn a_warm_name_is_told_from_a_replica_name_and_taken_as_one() {
        let mut rng = rand::rng();
        let warm = warm_name("web", &mut rng);
        assert!(is_warm_name("web", &warm), "{warm}");
        let taken = taken_name("web", &warm).expect("a warm name");
        assert_eq!(taken.len(), "web-".len() + 5);
        assert!(!is_warm_name("web", &taken));
        assert_eq!(taken_name("web", &taken), None);
        // A service called `web-warm` has replicas, not `web`'s warm containers.
        assert!(!is_warm_name("web-warm", "web-warm-ab12c"));
        assert!(is_warm_name("web", "web-warm-ab12c"));
        assert!(!is_warm_name("web", "web-warm-AB12C"));
        assert!(!is_warm_name("web", "web-warm-ab12cd"));
    }

    fn spec(template: &str) -> ServiceSpec {
        let text = format!(
            "apiVersion: dockscale/v1alpha1\nkind: ScaledService\nmetadata: {{name: web}}\n\
             spec:\n  template:\n{template}"
        );
        let loaded =
            crate::spec::manifest::parse_str(std::path::Path::new("s.yaml"), &text).expect("valid");
        loaded.into_iter().next().expect("one").service.spec
    }

    const TEMPLATE: &str = "    image: dockscale-webapp:latest\n    command: [serve]\n    \
                            env: {A: b}\n    port: 8080\n    labels: {team: web}\n    \
                            resources: {memory: 64Mi, cpus: 0.5}\n";

    // Pinned from the template hash before `mounts`, `user`, ... existed (the canonical
    // JSON recomputed by hand): replicas created then must not roll on an upgrade.
    #[test]
    fn a_template_without_the_new_options_keeps_its_hash() {
        assert_eq!(template_hash(&spec(TEMPLATE)), "d3d841d1ac");
    }

    #[test]
    fn every_template_option_changes_the_hash() {
        let base = template_hash(&spec(TEMPLATE));
        let options = [
            "mounts: [{type: tmpfs, target: /tmp}]",
            "mounts: [{type: tmpfs, target: /tmp, size: 64Mi}]",
            "mounts: [{type: bind, source: /srv, target: /www, readOnly: true}]",
            "mounts: [{type: volume, source: cache, target: /cache}]",
            "user: \"1000:1000\"",
            "workingDir: /app",
            "readOnlyRootFilesystem: true",
            "capAdd: [NET_ADMIN]",
            "capDrop: [ALL]",
            "noNewPrivileges: true",
            "ulimits: {nofile: {soft: 1024, hard: 2048}}",
            "logging: {driver: local}",
            "logging: {driver: json-file, options: {max-size: 10m}}",
            "extraHosts: {db.internal: 192.0.2.10}",
            "stopSignal: SIGQUIT",
        ];
        let mut seen = std::collections::BTreeSet::from([base.clone()]);
        for option in options {
            let hash = template_hash(&spec(&format!("{TEMPLATE}    {option}\n")));
            assert!(seen.insert(hash), "{option} did not change the hash");
        }
    }

    fn spec_of(yaml: &str) -> ServiceSpec {
        serde_saphyr::from_str(yaml).expect("a spec")
    }

    /// The pull policy came after replicas were labelled with this hash: a spec that
    /// does not set it (or sets the default) must keep its hash, or every running
    /// replica of every existing spec would be rolled on upgrade.
    #[test]
    fn the_default_pull_policy_leaves_the_template_hash_of_existing_specs_alone() {
        let before = spec_of("{template: {image: dockscale-webapp:latest, port: 8080}}");
        let explicit = spec_of(
            "{template: {image: dockscale-webapp:latest, imagePullPolicy: IfNotPresent, \
             port: 8080}}",
        );
        assert_eq!(template_hash(&before), "70a435ade6");
        assert_eq!(template_hash(&explicit), template_hash(&before));
        let always = spec_of(
            "{template: {image: dockscale-webapp:latest, imagePullPolicy: Always, port: 8080}}",
        );
        assert_ne!(template_hash(&always), template_hash(&before));
    }

    #[test]
    fn an_always_image_id_is_part_of_the_hash() {
        let spec = spec_of("{template: {image: r/w:1, imagePullPolicy: Always}}");
        let a = template_hash_with_image(&spec, "sha256:aaa");
        assert_eq!(a, template_hash_with_image(&spec, "sha256:aaa"));
        assert_ne!(a, template_hash_with_image(&spec, "sha256:bbb"));
        assert_ne!(a, template_hash(&spec));
    }

    #[test]
    fn health_is_read_from_the_list_status() {
        assert_eq!(
            Health::from_status("Up 3 minutes (healthy)"),
            Some(Health::Healthy)
        );
        assert_eq!(
            Health::from_status("Up 3 minutes (unhealthy)"),
            Some(Health::Unhealthy)
        );
        assert_eq!(
            Health::from_status("Up 2 seconds (health: starting)"),
            Some(Health::Starting)
        );
        assert_eq!(Health::from_status("Up 3 minutes"), None);
        assert_eq!(Health::from_status("Exited (0) 1 second ago"), None);
    }

    #[test]
    fn exit_code_is_read_from_the_status() {
        let mut r = Replica {
            id: ContainerId("abc".into()),
            name: "w-1".into(),
            service: "w".into(),
            template_hash: "h".into(),
            created_at_ns: 0,
            state: ContainerState::Exited,
            status: "Exited (137) 3 seconds ago".into(),
            ips: BTreeMap::new(),
            exit_cause: Some(ExitCause::Unknown),
            health: None,
        };
        assert_eq!(r.exit_code(), Some(137));
        r.status = "Up 3 seconds".into();
        assert_eq!(r.exit_code(), None);
        r.status = Replica::exited_status(Some(143));
        assert_eq!(r.exit_code(), Some(143));
    }
}
