//! What a pass reads besides the Docker list: the service's backend, which warming
//! replicas, members and warm containers answer on their port, and whether its image
//! is present. Reads only.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::controller::services::Entry;
use crate::lb::{LbError, LbErrorKind, LoadBalancer};
use crate::model::backend::Backend;
use crate::model::member::Member;
use crate::model::replica::{ContainerId, Replica};
use crate::reconcile;
use crate::runtime::ContainerRuntime;

/// One service's observation.
pub(crate) struct Observation {
    pub backend: Result<Backend, LbError>,
    /// Replicas and members whose port accepted a connection.
    pub answering: BTreeSet<ContainerId>,
    pub image_present: bool,
}

pub(crate) async fn observe<R: ContainerRuntime, L: LoadBalancer>(
    runtime: Arc<R>,
    lb: Arc<L>,
    entry: &Entry,
    listed: &[Replica],
    members: &[Member],
    probe_timeout: Duration,
) -> Observation {
    let name = entry.spec.name();
    let spec = &entry.spec.spec;
    let replicas: Vec<&Replica> = listed
        .iter()
        .filter(|r| r.service == name && !r.is_warm())
        .collect();
    let warm: Vec<&Replica> = listed
        .iter()
        .filter(|r| r.service == name && r.is_warm() && !entry.memory.warm.busy.contains_key(&r.id))
        .collect();
    let members: Vec<&Member> = members.iter().filter(|m| m.service == name).collect();
    let backend = match &spec.load_balancer {
        Some(l) => lb.backend(l.backend.as_str()).await,
        None => Err(LbError::new(
            LbErrorKind::NotInUse,
            "the service has no load balancer",
        )),
    };
    // The warm containers are probed whatever the backend says: they are not in it.
    let mut targets = reconcile::warm_pool::probe_targets(spec, &warm);
    if let Ok(b) = &backend {
        targets.extend(reconcile::probe_targets(spec, &replicas, &members, b));
    }
    let answering = if targets.is_empty() {
        BTreeSet::new()
    } else {
        let probe = crate::runtime::Probe::of(spec);
        runtime.answering(targets, &probe, probe_timeout).await
    };
    // Only ask Docker about the image when a create may be needed.
    let running_current = replicas
        .iter()
        .filter(|r| r.template_hash == entry.template_hash)
        .count() as u32;
    let creating = entry.memory.creating().count() as u32;
    let warm_current = listed
        .iter()
        .filter(|r| r.service == name && r.is_warm() && r.template_hash == entry.template_hash)
        .count()
        + entry.memory.warm.creating.len();
    let pool_full = warm_current >= entry.warm_size() as usize;
    let image_present = if running_current + creating >= entry.desired() && pool_full {
        true
    } else {
        // Unknown: let the create try and report what Docker says.
        runtime
            .image_present(&spec.template.image)
            .await
            .unwrap_or(true)
    };
    Observation {
        backend,
        answering,
        image_present,
    }
}
