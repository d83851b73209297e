//! What the controller shows the world: the status it keeps, the Prometheus metrics,
//! the HTTP server that serves both, and what systemd is told (readiness, state).
//! Readers only: the controller loop writes status.

pub mod http;
pub mod metrics;
pub mod status;
pub mod systemd;
