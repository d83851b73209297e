//! A dockscale service as a Swarm service spec (pure): the template, the count, the
//! port published in host mode, placement, and Swarm's rolling update from `rollout`.

use std::collections::HashMap;

use bollard::models::{
    EndpointPortConfig, EndpointPortConfigPublishModeEnum, EndpointSpec, Limit,
    NetworkAttachmentConfig, ResourceObject, ServiceSpec as SwarmSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, ServiceSpecRollbackConfig,
    ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecRollbackConfigOrderEnum,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, TaskSpec, TaskSpecContainerSpec, TaskSpecLogDriver,
    TaskSpecPlacement, TaskSpecPlacementPreferences, TaskSpecPlacementSpread, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};

use super::LABEL_SPEC_HASH;
use crate::model::replica::{LABEL_MANAGED_BY, LABEL_SERVICE, LABEL_TEMPLATE_HASH, MANAGED_BY};
use crate::runtime::options;
use crate::spec::ScaledService;

/// The Swarm service spec of a dockscale service: `replicas` tasks of its template,
/// labelled as dockscale's, publishing the template's port in host mode on a port
/// Swarm picks, with Swarm's rolling update mapped from `rollout`. Pure.
pub fn service_spec(
    service: &ScaledService,
    replicas: u32,
    template_hash: &str,
    spec_hash: &str,
) -> SwarmSpec {
    let spec = &service.spec;
    let t = &spec.template;
    let name = service.name();
    let mut task_labels: HashMap<String, String> = t
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    task_labels.insert(LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned());
    task_labels.insert(LABEL_SERVICE.to_owned(), name.to_owned());
    task_labels.insert(LABEL_TEMPLATE_HASH.to_owned(), template_hash.to_owned());
    let mut labels = HashMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_SERVICE.to_owned(), name.to_owned()),
        (LABEL_TEMPLATE_HASH.to_owned(), template_hash.to_owned()),
        (LABEL_SPEC_HASH.to_owned(), spec_hash.to_owned()),
    ]);
    labels.extend(t.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    let limits = Limit {
        nano_cpus: t.resources.cpus.map(|c| (c.get() * 1e9) as i64),
        memory_bytes: t.resources.memory.map(|m| m.bytes() as i64),
        ..Default::default()
    };
    let reservations = ResourceObject {
        nano_cpus: limits.nano_cpus,
        memory_bytes: limits.memory_bytes,
        ..Default::default()
    };
    let placement = spec.placement.as_ref().map(|p| TaskSpecPlacement {
        constraints: Some(p.constraints.clone()).filter(|c| !c.is_empty()),
        preferences: Some(
            p.preferences
                .iter()
                .map(|pref| TaskSpecPlacementPreferences {
                    spread: Some(TaskSpecPlacementSpread {
                        spread_descriptor: Some(pref.spread.clone()),
                    }),
                })
                .collect::<Vec<_>>(),
        )
        .filter(|p| !p.is_empty()),
        max_replicas: p.max_replicas_per_node.map(i64::from),
        ..Default::default()
    });
    let grace = t.stop_grace_period.get();
    SwarmSpec {
        name: Some(name.to_owned()),
        labels: Some(labels),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(t.image.clone()),
                // Swarm replaces a task that turns unhealthy by itself.
                health_check: t.healthcheck.as_ref().map(crate::runtime::health_config),
                labels: Some(task_labels),
                // `command` replaces the image's CMD, as in docker mode.
                args: Some(t.command.clone()).filter(|c| !c.is_empty()),
                env: Some(
                    t.env
                        .iter()
                        .map(|(k, v)| format!("{}={v}", k.as_str()))
                        .collect(),
                ),
                stop_grace_period: Some(i64::try_from(grace.as_nanos()).unwrap_or(i64::MAX)),
                init: Some(t.init),
                mounts: options::mounts(t),
                user: t.user.as_ref().map(|u| u.as_str().to_owned()),
                dir: t.working_dir.as_ref().map(|d| d.as_str().to_owned()),
                read_only: t.read_only_root_filesystem.then_some(true),
                capability_add: options::capabilities(&t.cap_add),
                capability_drop: options::capabilities(&t.cap_drop),
                ulimits: options::ulimits(t),
                hosts: hosts(t),
                stop_signal: t.stop_signal.as_ref().map(|s| s.as_str().to_owned()),
                ..Default::default()
            }),
            log_driver: options::logging(t).map(|(name, options)| TaskSpecLogDriver {
                name: Some(name),
                options: Some(options).filter(|o| !o.is_empty()),
            }),
            resources: Some(TaskSpecResources {
                limits: Some(limits),
                reservations: Some(reservations),
                ..Default::default()
            }),
            // Swarm replaces a task that ends; a crash-looping one every second.
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                delay: Some(1_000_000_000),
                max_attempts: Some(0),
                window: None,
            }),
            placement,
            networks: Some(vec![NetworkAttachmentConfig {
                target: Some(spec.network.as_str().to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(i64::from(replicas)),
            }),
            ..Default::default()
        }),
        update_config: Some(update_config(service)),
        rollback_config: Some(rollback_config(service)),
        endpoint_spec: Some(EndpointSpec {
            ports: t.port.map(|port| {
                vec![EndpointPortConfig {
                    target_port: Some(i64::from(port)),
                    publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `extraHosts` as a task takes them: `/etc/hosts` lines, `IP host`.
fn hosts(t: &crate::spec::Template) -> Option<Vec<String>> {
    let hosts: Vec<String> = t
        .extra_hosts
        .iter()
        .map(|(host, ip)| format!("{ip} {host}"))
        .collect();
    (!hosts.is_empty()).then_some(hosts)
}

/// How many tasks Swarm replaces at once, and in which order: start-first (a new task
/// before an old one stops) when no ready replica may be missing, else stop-first.
fn parallelism_and_order(service: &ScaledService) -> (i64, bool) {
    let r = &service.spec.rollout;
    if r.max_unavailable == 0 {
        (i64::from(r.max_surge.max(1)), true)
    } else {
        (i64::from(r.max_unavailable), false)
    }
}

/// How long Swarm watches a new task before it counts the update of it a success: long
/// enough for its port to answer and HAProxy's checks to pass (rise 2 at 1 s).
fn monitor_nanos() -> i64 {
    5_000_000_000
}

fn update_config(service: &ScaledService) -> ServiceSpecUpdateConfig {
    let (parallelism, start_first) = parallelism_and_order(service);
    ServiceSpecUpdateConfig {
        parallelism: Some(parallelism),
        delay: Some(0),
        failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
        monitor: Some(monitor_nanos()),
        max_failure_ratio: Some(0.0),
        order: Some(if start_first {
            ServiceSpecUpdateConfigOrderEnum::START_FIRST
        } else {
            ServiceSpecUpdateConfigOrderEnum::STOP_FIRST
        }),
    }
}

fn rollback_config(service: &ScaledService) -> ServiceSpecRollbackConfig {
    let (parallelism, start_first) = parallelism_and_order(service);
    ServiceSpecRollbackConfig {
        parallelism: Some(parallelism),
        delay: Some(0),
        failure_action: Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE),
        monitor: Some(monitor_nanos()),
        max_failure_ratio: Some(0.0),
        order: Some(if start_first {
            ServiceSpecRollbackConfigOrderEnum::START_FIRST
        } else {
            ServiceSpecRollbackConfigOrderEnum::STOP_FIRST
        }),
    }
}

/// The hash of what dockscale puts in a Swarm service besides the count: the template
/// hash, the placement and the rollout (Swarm's update settings come from it).
pub fn spec_hash(service: &ScaledService, template_hash: &str) -> String {
    use sha2::{Digest, Sha256};
    let canonical = serde_json::json!({
        "template": template_hash,
        "placement": service.spec.placement,
        "rollout": service.spec.rollout,
    });
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    digest[..5].iter().map(|b| format!("{b:02x}")).collect()
}

/// The spec Swarm holds with only its count changed.
pub fn with_replicas(spec: &SwarmSpec, replicas: u32) -> SwarmSpec {
    let mut spec = spec.clone();
    spec.mode = Some(ServiceSpecMode {
        replicated: Some(ServiceSpecModeReplicated {
            replicas: Some(i64::from(replicas)),
        }),
        ..Default::default()
    });
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> ScaledService {
        let loaded =
            crate::spec::manifest::parse_str(std::path::Path::new("s.yaml"), yaml).expect("valid");
        loaded.into_iter().next().expect("one").service
    }

    const WEB: &str = "apiVersion: dockscale/v1alpha1
kind: ScaledService
metadata: {name: web}
spec:
  replicas: 3
  template:
    image: img:1
    command: [serve, --fast]
    env: {A: b}
    port: 8080
    resources: {memory: 64Mi, cpus: 0.5}
    stopGracePeriod: 7s
  placement:
    constraints: [node.role==worker]
    preferences: [{spread: node.labels.zone}]
    maxReplicasPerNode: 2
  loadBalancer: {backend: web}
";

    #[test]
    fn the_swarm_spec_carries_the_template_labels_ports_and_placement() {
        let s = service(WEB);
        let spec = service_spec(&s, 3, "abc", "def");
        assert_eq!(spec.name.as_deref(), Some("web"));
        let labels = spec.labels.as_ref().expect("labels");
        assert_eq!(labels[LABEL_MANAGED_BY], MANAGED_BY);
        assert_eq!(labels[LABEL_SPEC_HASH], "def");
        let task = spec.task_template.as_ref().expect("task");
        let c = task.container_spec.as_ref().expect("container");
        assert_eq!(c.image.as_deref(), Some("img:1"));
        assert_eq!(
            c.args.as_deref(),
            Some(&["serve".to_owned(), "--fast".to_owned()][..])
        );
        assert_eq!(c.env.as_deref(), Some(&["A=b".to_owned()][..]));
        assert_eq!(c.stop_grace_period, Some(7_000_000_000));
        assert_eq!(
            c.labels.as_ref().expect("labels")[LABEL_TEMPLATE_HASH],
            "abc"
        );
        let limits = task
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .expect("limits");
        assert_eq!(limits.memory_bytes, Some(64 * 1024 * 1024));
        assert_eq!(limits.nano_cpus, Some(500_000_000));
        let placement = task.placement.as_ref().expect("placement");
        assert_eq!(placement.max_replicas, Some(2));
        assert_eq!(
            placement.constraints.as_deref(),
            Some(&["node.role==worker".to_owned()][..])
        );
        let ports = spec
            .endpoint_spec
            .as_ref()
            .and_then(|e| e.ports.as_ref())
            .expect("ports");
        assert_eq!(ports[0].target_port, Some(8080));
        assert_eq!(ports[0].published_port, None, "Swarm picks the host port");
        assert_eq!(
            ports[0].publish_mode,
            Some(EndpointPortConfigPublishModeEnum::HOST)
        );
        let replicas = spec
            .mode
            .as_ref()
            .and_then(|m| m.replicated.as_ref())
            .and_then(|r| r.replicas);
        assert_eq!(replicas, Some(3));
    }

    #[test]
    fn the_template_options_reach_the_task() {
        let s = service(&WEB.replace(
            "    stopGracePeriod: 7s\n",
            "    stopGracePeriod: 7s
    mounts:
      - {type: bind, source: /srv/static, target: /www, readOnly: true}
      - {type: volume, source: cache, target: /cache}
      - {type: tmpfs, target: /tmp, size: 64Mi}
    user: \"1000:1000\"
    workingDir: /app
    readOnlyRootFilesystem: true
    capAdd: [net_admin]
    capDrop: [ALL]
    ulimits: {nofile: {soft: 1024, hard: 4096}}
    logging: {driver: json-file, options: {max-size: 10m}}
    extraHosts: {db.internal: 192.0.2.10}
    stopSignal: QUIT
",
        ));
        let task = service_spec(&s, 1, "a", "b").task_template.expect("task");
        let c = task.container_spec.expect("container");
        let mounts = c.mounts.expect("mounts");
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[0].typ, Some(bollard::models::MountType::BIND));
        assert_eq!(mounts[0].source.as_deref(), Some("/srv/static"));
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(mounts[1].typ, Some(bollard::models::MountType::VOLUME));
        let tmpfs = mounts[2].tmpfs_options.as_ref().expect("tmpfs options");
        assert_eq!(tmpfs.size_bytes, Some(64 << 20));
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.dir.as_deref(), Some("/app"));
        assert_eq!(c.read_only, Some(true));
        assert_eq!(c.capability_add, Some(vec!["CAP_NET_ADMIN".to_owned()]));
        assert_eq!(c.capability_drop, Some(vec!["ALL".to_owned()]));
        let ulimits = c.ulimits.expect("ulimits");
        assert_eq!(ulimits[0].name.as_deref(), Some("nofile"));
        assert_eq!((ulimits[0].soft, ulimits[0].hard), (Some(1024), Some(4096)));
        assert_eq!(c.hosts, Some(vec!["192.0.2.10 db.internal".to_owned()]));
        assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
        let log = task.log_driver.expect("log driver");
        assert_eq!(log.name.as_deref(), Some("json-file"));
        assert_eq!(log.options.expect("options")["max-size"], "10m");
    }

    #[test]
    fn a_template_without_options_sets_none_of_them() {
        let task = service_spec(&service(WEB), 1, "a", "b")
            .task_template
            .expect("task");
        assert_eq!(task.log_driver, None);
        let c = task.container_spec.expect("container");
        assert_eq!(
            (c.mounts, c.user, c.dir, c.read_only),
            (None, None, None, None)
        );
        assert_eq!((c.hosts, c.ulimits, c.stop_signal), (None, None, None));
    }

    #[test]
    fn a_rollout_without_unavailability_starts_new_tasks_first() {
        let s = service(WEB);
        let update = service_spec(&s, 3, "a", "b").update_config.expect("update");
        assert_eq!(
            update.order,
            Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST)
        );
        assert_eq!(update.parallelism, Some(1));
        assert_eq!(
            update.failure_action,
            Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK)
        );
        let stop_first = service(&WEB.replace(
            "  loadBalancer",
            "  rollout: {maxSurge: 0, maxUnavailable: 2}\n  loadBalancer",
        ));
        let update = service_spec(&stop_first, 3, "a", "b")
            .update_config
            .expect("update");
        assert_eq!(
            update.order,
            Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST)
        );
        assert_eq!(update.parallelism, Some(2));
    }

    #[test]
    fn the_spec_hash_follows_placement_and_rollout_but_not_the_count() {
        let s = service(WEB);
        let other = service(&WEB.replace("maxReplicasPerNode: 2", "maxReplicasPerNode: 3"));
        let scaled = service(&WEB.replace("replicas: 3", "replicas: 5"));
        assert_ne!(spec_hash(&s, "t"), spec_hash(&other, "t"));
        assert_eq!(spec_hash(&s, "t"), spec_hash(&scaled, "t"));
        assert_ne!(spec_hash(&s, "t"), spec_hash(&s, "u"));
    }

    #[test]
    fn scaling_changes_only_the_count() {
        let s = service(WEB);
        let spec = service_spec(&s, 3, "a", "b");
        let scaled = with_replicas(&spec, 7);
        assert_eq!(
            scaled
                .mode
                .as_ref()
                .and_then(|m| m.replicated.as_ref())
                .and_then(|r| r.replicas),
            Some(7)
        );
        assert_eq!(scaled.task_template, spec.task_template);
        assert_eq!(scaled.labels, spec.labels);
    }
}
