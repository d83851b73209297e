//! What the planner and the adapters share: replicas as observed and backends with
//! their slots. Plain data, no I/O; adapters build these, the planner reads them.

pub mod backend;
pub mod replica;
