//! HAProxy: the managed process and its configuration, the runtime API client, and
//! the [`crate::lb::LoadBalancer`] implementation over them.
//!
//! - [`runtime_api`]: the admin socket client (one command per connection).
//! - [`stats`]: parsers for its `show servers state`, `show stat`, `show info` replies.
//! - [`config`]: the managed configuration, rendered from the services.
//! - [`frontend`]: the shared frontends in it: binds, TLS, routes.
//! - [`tls`]: the frontends' certificates: found, checked, installed.
//! - [`certs`]: the frontends as served, their certificates kept current (swapped at
//!   runtime when their files change).
//! - [`hold`]: scale to zero: the Lua action that holds requests while a backend has
//!   no usable server, and its counters.
//! - [`managed`]: the managed HAProxy process: start, adopt, reload, supervise.
//! - [`sever`]: this host's TCP connections to a vanished replica cut, so HAProxy
//!   retries their requests elsewhere.
//! - [`balancer`]: [`HaproxyBalancer`], the load balancer the controller drives.

pub mod balancer;
pub mod certs;
pub mod config;
pub mod frontend;
pub mod hold;
pub mod managed;
pub mod runtime_api;
pub mod sever;
pub mod stats;
pub mod tls;

pub use balancer::HaproxyBalancer;
