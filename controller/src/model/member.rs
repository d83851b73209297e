//! What a member is as observed: a container someone started by hand with the label
//! `dockscale.join=<service>`, which joins that service's backend.
//!
//! A member is never a replica: dockscale puts it in rotation while it runs on the
//! service's network and takes it out when it stops, but never stops, removes or
//! replaces it, and never counts it toward the service's replicas. The type is kept
//! apart from [`crate::model::replica::Replica`] so that no code path that stops or
//! removes containers can be handed one. Plain data read from Docker.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::model::replica::{ContainerId, ContainerState, Health};

/// Makes a hand-started container a member of the named service's backend.
pub const LABEL_JOIN: &str = "dockscale.join";

/// One container labelled [`LABEL_JOIN`] (and not dockscale's own), as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub id: ContainerId,
    pub name: String,
    /// The service it joins: the label's value.
    pub service: String,
    pub state: ContainerState,
    /// Addresses by network name, while it runs.
    pub ips: BTreeMap<String, Ipv4Addr>,
    /// Docker's health verdict, for a container with a health check.
    pub health: Option<Health>,
}

impl Member {
    /// Its address on `network`.
    pub fn ip_on(&self, network: &str) -> Option<Ipv4Addr> {
        self.ips.get(network).copied()
    }

    /// Whether it runs: only a running member can be in rotation.
    pub fn is_running(&self) -> bool {
        self.state == ContainerState::Running
    }

    /// Whether its health check, if it has one, lets it take traffic.
    pub fn health_allows_traffic(&self) -> bool {
        self.health.is_none_or(|h| h == Health::Healthy)
    }

    /// The networks it is on, for the event of a member on the wrong one.
    pub fn networks(&self) -> Vec<&str> {
        self.ips.keys().map(String::as_str).collect()
    }
}
