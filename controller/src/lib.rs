//! dockscale: a Kubernetes-style reconciliation controller for a Docker host behind
//! HAProxy.
//!
//! # Layout
//! Folders by role: what the user writes, what adapters and planner share, the pure
//! decisions, the loop that applies them, the adapters, and what is shown.
//! - [`spec`]: the `ScaledService` types (source of the JSON Schema), their units,
//!   [`spec::options`] (the template's mounts and process options),
//!   [`spec::schedule`] (`autoscale.schedules`: cron expressions and time zones), and
//!   [`spec::manifest`]: reading spec files (and env files) into validated services with
//!   located errors.
//! - [`model`]: what the planner and the adapters share: [`model::replica`] (ownership
//!   labels, names, the template hash) and [`model::backend`] (slots, load).
//! - [`reconcile`]: the pure planner (desired + observed + in flight → actions), in
//!   its steps ([`reconcile::classify`], [`reconcile::rotation`], [`reconcile::retire`],
//!   [`reconcile::rollout`], [`reconcile::crash_loop`]: the back-off per replica
//!   line, [`reconcile::warm_pool`]: paused containers taken in place of creates), with [`reconcile::phase`] (what is in flight, one phase per replica) and
//!   [`reconcile::conditions`] (the status a pass leaves).
//! - [`autoscale`]: the pure autoscaler (HPA algorithm) from HAProxy's load,
//!   [`autoscale::schedule`], the schedule windows in force at a wall-clock time,
//!   [`autoscale::simulate`], a recorded series replayed through it, and
//!   [`autoscale::plot`], the timeline as an SVG (shared with the benchmark).
//! - [`controller`]: the loop: triggers, services, events, the pass (observe, plan,
//!   execute, status), the autoscaling tick, errors and their retry; with
//!   [`controller::warm_pool`] (the warm pool's actions and completions),
//!   [`controller::store`] (the owned containers between two Docker lists),
//!   [`controller::watch`] (the spec file watch) and [`controller::claim`] (one
//!   controller per engine), and, in tests, the scenarios that drive whole passes
//!   against the fakes; [`controller::swarm`], the loop on Docker Swarm, and
//!   [`controller::lease`], one controller per swarm.
//! - [`runtime`]: the container runtime trait, [`runtime::docker`] over bollard,
//!   [`runtime::options`] (the template's options as bollard types, for both),
//!   [`runtime::swarm`] (a swarm manager's services, tasks, nodes and the lease), and
//!   (tests only) `runtime::fake`, an in-memory engine.
//! - [`lb`]: the load balancer trait, (tests only) `lb::fake`, an in-memory HAProxy,
//!   and [`lb::haproxy`]: the runtime API client, the managed process, its
//!   configuration, the scale-to-zero hold (a Lua action and its counters), the
//!   cutting of a vanished replica's connections and the balancer over them.
//! - [`serve`]: the status kept per service, the Prometheus metrics, the HTTP server,
//!   and [`serve::systemd`], readiness and state told to systemd.
//! - [`status_cli`]: `dockscale status`, the table and describe views.
//! - [`rollout_cli`]: `dockscale rollout status|pause|resume|abort|retry|history NAME`.
//! - [`events_cli`]: `dockscale events [-w]`, every service's events from the API.
//! - [`logs_cli`]: `dockscale logs NAME [-f]`, the replicas' logs merged, from Docker.
//! - [`version`]: the version and git revision of this build.
//! - [`report`]: an error and its causes on one line.
//! - [`app`]: `dockscale run` as a function: everything wired together.
//! - [`cli`]: the command line.
//! - `testing` (tests only): fixture builders on domain types.

pub mod app;
pub mod autoscale;
pub mod cli;
pub mod controller;
pub mod events_cli;
pub mod lb;
pub mod logs_cli;
pub mod model;
pub mod reconcile;
pub mod report;
pub mod rollout_cli;
pub mod runtime;
pub mod serve;
pub mod spec;
pub mod status_cli;
#[cfg(test)]
mod testing;
pub mod version;

/// The JSON Schema of a `ScaledService` document, as `dockscale schema` prints it.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(spec::ScaledService);
    // Serializing a `serde_json::Value`-backed schema cannot fail.
    let mut text = serde_json::to_string_pretty(&schema).expect("schema serializes");
    text.push('\n');
    text
}

/// The JSON Schema of a `Frontend` document (`dockscale schema --kind Frontend`).
pub fn frontend_schema_json() -> String {
    let schema = schemars::schema_for!(spec::frontend::Frontend);
    let mut text = serde_json::to_string_pretty(&schema).expect("schema serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_frontend_schema_is_the_generated_one() {
        let committed = include_str!("../../crds/frontend.schema.json");
        assert!(
            committed == super::frontend_schema_json(),
            "crds/frontend.schema.json is stale: run \
             `cargo run -- schema --kind Frontend > crds/frontend.schema.json`"
        );
    }

    #[test]
    fn the_committed_schema_is_the_generated_one() {
        let committed = include_str!("../../crds/scaledservice.schema.json");
        assert!(
            committed == super::schema_json(),
            "crds/scaledservice.schema.json is stale: run \
             `cargo run -- schema > crds/scaledservice.schema.json`"
        );
    }
}
