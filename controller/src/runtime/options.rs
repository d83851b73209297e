//! The template's volumes and process options (`mounts`, `ulimits`, `logging`,
//! `extraHosts`, ...) as bollard's types, shared by the docker and the Swarm runtime.
//! Pure mapping: the values were checked when the spec was loaded.

use std::collections::HashMap;

use bollard::models::{Mount, MountTmpfsOptions, MountType, ResourcesUlimits};

use crate::spec::{self, Template};

/// The template's mounts, as the engine's `Mounts` (for a container's HostConfig and a
/// Swarm task's ContainerSpec alike).
pub fn mounts(t: &Template) -> Option<Vec<Mount>> {
    let mounts: Vec<Mount> = t.mounts.iter().map(mount).collect();
    (!mounts.is_empty()).then_some(mounts)
}

fn mount(m: &spec::Mount) -> Mount {
    let typ = match m.kind {
        spec::MountType::Bind => MountType::BIND,
        spec::MountType::Volume => MountType::VOLUME,
        spec::MountType::Tmpfs => MountType::TMPFS,
    };
    Mount {
        target: Some(m.target.as_str().to_owned()),
        source: m.source.clone(),
        typ: Some(typ),
        read_only: m.read_only.then_some(true),
        tmpfs_options: m.size.map(|size| MountTmpfsOptions {
            size_bytes: Some(i64::try_from(size.bytes()).unwrap_or(i64::MAX)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The template's ulimits, by name.
pub fn ulimits(t: &Template) -> Option<Vec<ResourcesUlimits>> {
    let limit = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let ulimits: Vec<ResourcesUlimits> = t
        .ulimits
        .iter()
        .map(|(name, l)| ResourcesUlimits {
            name: Some(name.as_str().to_owned()),
            soft: Some(limit(l.soft)),
            hard: Some(limit(l.hard)),
        })
        .collect();
    (!ulimits.is_empty()).then_some(ulimits)
}

/// Capabilities as the engine names them (`CAP_NET_ADMIN`, `ALL`).
pub fn capabilities(caps: &[spec::Capability]) -> Option<Vec<String>> {
    (!caps.is_empty()).then(|| caps.iter().map(|c| c.as_str().to_owned()).collect())
}

/// The logging driver and its options.
pub fn logging(t: &Template) -> Option<(String, HashMap<String, String>)> {
    t.logging.as_ref().map(|l| {
        let options = l.options.iter().map(|(k, v)| (k.clone(), v.clone()));
        (l.driver.as_str().to_owned(), options.collect())
    })
}
