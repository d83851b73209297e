//! What the planner and the adapters share: replicas as observed, hand-started members
//! and backends with their slots. Plain data, no I/O; adapters build these, the planner
//! reads them.

pub mod backend;
pub mod member;
pub mod replica;
