//! What the controller shows the world: the status it keeps, the Prometheus metrics and
//! the HTTP server that serves both. Readers only: the controller loop writes status.

pub mod http;
pub mod metrics;
pub mod status;
