//! What a pass reads besides the Docker list: the service's backend, which warming
//! replicas and members answer on their port, and whether its image is present. Reads
//! only.

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
    let replicas: Vec<&Replica> = listed.iter().filter(|r| r.service == name).collect();
    let members: Vec<&Member> = members.iter().filter(|m| m.service == name).collect();
    let backend = match &spec.load_balancer {
        Some(l) => lb.backend(l.backend.as_str()).await,
        None => Err(LbError::new(
            LbErrorKind::NotInUse,
            "the service has no load balancer",
        )),
    };
    let answering = match &backend {
        Ok(b) => {
            let targets = reconcile::probe_targets(spec, &replicas, &members, b);
            let probe = crate::runtime::Probe::of(spec);
            runtime.answering(targets, &probe, probe_timeout).await
        }
        Err(_) => BTreeSet::new(),
    };
    // Only ask Docker about the image when a create may be needed.
    let running_current = replicas
        .iter()
        .filter(|r| r.template_hash == entry.template_hash)
        .count() as u32;
    let creating = entry.memory.creating().count() as u32;
    let image_present = if running_current + creating >= entry.desired() {
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
