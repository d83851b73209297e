//! Fixture builders on domain types, for unit tests only.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::model::backend::{Admin, Slot};
use crate::model::replica::{ContainerId, ContainerState, Replica};
use crate::spec::{Autoscale, LoadBalancer, Rollout, ScaledService, ServiceSpec};

/// The network test replicas are on.
pub const NET: &str = "dockscale";
/// The port test replicas listen on.
pub const PORT: u16 = 8080;

/// A minimal service: `testing::spec().replicas(3).lb().build()`.
pub struct SpecBuilder {
    spec: ServiceSpec,
}

pub fn spec() -> SpecBuilder {
    let yaml = r#"
template:
  image: dockscale-webapp:latest
  port: 8080
"#;
    let spec: ServiceSpec = serde_saphyr::from_str(yaml).expect("fixture parses");
    SpecBuilder { spec }
}

impl SpecBuilder {
    pub fn replicas(mut self, n: u32) -> Self {
        self.spec.replicas = n;
        self
    }

    pub fn lb(mut self) -> Self {
        self.spec.load_balancer = Some(
            serde_saphyr::from_str::<LoadBalancer>("backend: web\nbind: 127.0.0.1:8080\n")
                .expect("fixture parses"),
        );
        self
    }

    pub fn drain_timeout_secs(mut self, secs: u64) -> Self {
        if let Some(lb) = &mut self.spec.load_balancer {
            lb.drain_timeout = crate::spec::Duration::from_secs(secs);
        }
        self
    }

    pub fn rollout(mut self, max_surge: u32, max_unavailable: u32) -> Self {
        self.spec.rollout = Rollout {
            max_surge,
            max_unavailable,
            ..Rollout::default()
        };
        self
    }

    pub fn autoscale(mut self, min: u32, max: u32) -> Self {
        self.spec.autoscale = Some(
            serde_saphyr::from_str::<Autoscale>(&format!(
                "minReplicas: {min}\nmaxReplicas: {max}\ntarget: {{inflightPerReplica: 8}}\n"
            ))
            .expect("fixture parses"),
        );
        self
    }

    /// `autoscale.warmPool: {size}` (after `autoscale`).
    pub fn warm_pool(mut self, size: u32) -> Self {
        if let Some(a) = &mut self.spec.autoscale {
            a.warm_pool = Some(crate::spec::WarmPool { size });
        }
        self
    }

    pub fn image(mut self, image: &str, policy: crate::spec::ImagePullPolicy) -> Self {
        self.spec.template.image = image.to_owned();
        self.spec.template.image_pull_policy = policy;
        self
    }

    /// A canary rollout: 25% for 10s, then 50% for 10s.
    pub fn canary(mut self) -> Self {
        self.spec.rollout = serde_saphyr::from_str::<Rollout>(
            "strategy: canary\nsteps: [{weight: 25, pause: 10s}, {weight: 50, pause: 10s}]\n",
        )
        .expect("fixture parses");
        self
    }

    pub fn build(self) -> ServiceSpec {
        self.spec
    }

    /// A whole `ScaledService` named `name` with this spec.
    pub fn build_service(self, name: &str) -> ScaledService {
        let yaml = format!(
            "apiVersion: dockscale/v1alpha1\nkind: ScaledService\n\
             metadata: {{name: {name}}}\nspec: {{template: {{image: x}}}}\n"
        );
        let mut service: ScaledService = serde_saphyr::from_str(&yaml).expect("fixture parses");
        service.spec = self.spec;
        service
    }
}

/// A running replica of service `w` numbered `n` (created at second `n`, IP 10.0.0.n).
pub fn replica(n: u8, hash: &str) -> Replica {
    Replica {
        id: ContainerId(format!("id{n:02}")),
        name: format!("w-{n:05}"),
        service: "w".to_owned(),
        template_hash: hash.to_owned(),
        created_at_ns: i64::from(n) * 1_000_000_000,
        state: ContainerState::Running,
        status: "Up 1 second".to_owned(),
        ips: BTreeMap::from([(NET.to_owned(), ip(n))]),
        exit_cause: None,
        health: None,
    }
}

/// A warm container of service `w` numbered `n` (`w-warm-<n>`), in `state`.
pub fn warm(n: u8, hash: &str, state: ContainerState) -> Replica {
    Replica {
        id: ContainerId(format!("warm{n:02}")),
        name: format!("w-warm-{n:05}"),
        status: format!("{state:?}"),
        state,
        ..replica(n, hash)
    }
}

/// A member `s<n>` joining service `w`, running on the test network at address `n`
/// (members and replicas share the address space: give them different `n`).
pub fn member(n: u8) -> crate::model::member::Member {
    crate::model::member::Member {
        id: ContainerId(format!("member{n:02}")),
        name: format!("s{n}"),
        service: "w".to_owned(),
        state: ContainerState::Running,
        ips: BTreeMap::from([(NET.to_owned(), ip(n))]),
        health: None,
    }
}

pub fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

pub fn addr(n: u8) -> SocketAddrV4 {
    SocketAddrV4::new(ip(n), PORT)
}

/// A free slot `web<i>`.
pub fn free_slot(i: u32) -> Slot {
    Slot {
        name: format!("web{i}"),
        addr: None,
        admin: Admin::Maint,
        up: false,
        weight: 0,
        sessions: 0,
    }
}

/// Slot `web<i>` serving replica `n`, UP.
pub fn serving_slot(i: u32, n: u8) -> Slot {
    Slot {
        name: format!("web{i}"),
        addr: Some(addr(n)),
        admin: Admin::Ready,
        up: true,
        weight: 100,
        sessions: 0,
    }
}

/// Slot `web<i>` assigned to replica `n`, waiting to be enabled.
pub fn warming_slot(i: u32, n: u8) -> Slot {
    Slot {
        name: format!("web{i}"),
        addr: Some(addr(n)),
        admin: Admin::Maint,
        up: false,
        weight: 0,
        sessions: 0,
    }
}
