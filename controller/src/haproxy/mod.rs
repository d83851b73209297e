//! HAProxy: the managed process and its configuration, the runtime API client, and
//! the [`crate::lb::LoadBalancer`] implementation over them.

pub mod config;
