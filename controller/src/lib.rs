//! dockscale: a Kubernetes-style reconciliation controller for a Docker host behind
//! HAProxy.
//!
//! # Layout
//! - [`spec`]: the `ScaledService` types, source of the JSON Schema.
//! - [`manifest`]: reading spec files into validated services, with located errors.
//! - [`replica`]: the ownership labels, replica names and template hash.
//! - [`autoscale`]: the pure autoscaler (HPA algorithm) from HAProxy's load.
//! - [`plan`]: the pure planner: desired + observed + in-flight state → actions.
//! - [`docker`]: the container runtime trait and its bollard implementation.
//! - [`lb`]: the load balancer trait the controller drives.
//! - [`store`]: the owned containers between two Docker lists (an informer's store).
//! - [`controller`]: the loop: triggers, observation, execution, status.
//! - [`simulate`]: `dockscale simulate`: a recorded series through the autoscaler.
//! - [`status`]: conditions, events and counts per service, served over HTTP.
//! - [`status_cli`]: `dockscale status`, the table and describe views.
//! - [`watch`]: the spec file watch (parent directories, for rename-replaced files).
//! - [`metrics`]: the Prometheus collectors.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz` and the status API.
//! - [`claim`]: one controller per Docker engine (the claim a running controller holds).
//! - [`app`]: `dockscale run` as a function: everything wired together.
//! - [`cli`]: the command line.

pub mod app;
pub mod autoscale;
pub mod claim;
pub mod cli;
pub mod controller;
pub mod docker;
pub mod haproxy;
pub mod http;
pub mod lb;
pub mod manifest;
pub mod metrics;
pub mod plan;
pub mod replica;
pub mod simulate;
pub mod spec;
pub mod status;
pub mod status_cli;
pub mod store;
#[cfg(test)]
mod testing;
pub mod watch;

/// The JSON Schema of a `ScaledService` document, as `dockscale schema` prints it.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(spec::ScaledService);
    // Serializing a `serde_json::Value`-backed schema cannot fail.
    let mut text = serde_json::to_string_pretty(&schema).expect("schema serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_schema_is_the_generated_one() {
        let committed = include_str!("../../crds/scaledservice.schema.json");
        assert!(
            committed == super::schema_json(),
            "crds/scaledservice.schema.json is stale: run `cargo run -- schema > crds/scaledservice.schema.json`"
        );
    }
}
