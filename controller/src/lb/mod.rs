//! The load balancer as the controller sees it: the [`LoadBalancer`] trait.
//!
//! The planner works on [`Backend`]s of [`Slot`](crate::model::backend::Slot)s; this
//! trait reads them and applies the slot operations the planner asks for. The HAProxy
//! runtime-API implementation lives in [`crate::lb::haproxy`]; this module holds only
//! the contract, so that the controller loop does not depend on how a backend is
//! reached.

#[cfg(test)]
pub mod fake;
pub mod haproxy;

use std::future::Future;
use std::net::SocketAddrV4;

use crate::model::backend::{Backend, BackendLoad, Holds, PoolGrown};
use crate::spec::frontend::Frontend;
use crate::spec::{ScaledService, ServerOptions};

/// What went wrong with the load balancer: the kind decides the retry
/// ([`crate::controller::error::error_policy`]) and names the condition reason and the
/// metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LbErrorKind {
    /// It does not answer (its socket is gone, or a command timed out).
    Unreachable,
    /// The backend is not in its configuration (external mode: the user's to fix).
    BackendMissing,
    /// The backend has no `slotN` servers for replicas.
    NoSlots,
    /// A slot named in a command does not exist.
    ServerMissing,
    /// It answered a command with an error.
    Refused,
    /// Its reply could not be read.
    Unreadable,
    /// Managed mode: HAProxy is not installed.
    Missing,
    /// Managed mode: the generated configuration was rejected.
    ConfigInvalid,
    /// Managed mode: HAProxy could not be started (or its files written).
    StartFailed,
    /// Managed mode: a reload did not finish.
    ReloadFailed,
    /// This controller runs without a load balancer.
    NotInUse,
}

impl LbErrorKind {
    /// The condition reason and metric label.
    pub fn reason(self) -> &'static str {
        match self {
            LbErrorKind::Unreachable => "HaproxyUnreachable",
            LbErrorKind::BackendMissing => "BackendMissing",
            LbErrorKind::NoSlots => "BackendHasNoSlots",
            LbErrorKind::ServerMissing => "ServerMissing",
            LbErrorKind::Refused => "HaproxyRefused",
            LbErrorKind::Unreadable => "HaproxyReplyUnreadable",
            LbErrorKind::Missing => "HaproxyMissing",
            LbErrorKind::ConfigInvalid => "HaproxyConfigInvalid",
            LbErrorKind::StartFailed => "HaproxyStartFailed",
            LbErrorKind::ReloadFailed => "HaproxyReloadFailed",
            LbErrorKind::NotInUse => "NoLoadBalancer",
        }
    }
}

/// A load balancer failure, as the controller reports it: its kind, and the adapter's
/// words (with their causes).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct LbError {
    pub kind: LbErrorKind,
    pub message: String,
}

impl LbError {
    pub fn new(kind: LbErrorKind, message: impl Into<String>) -> Self {
        LbError {
            kind,
            message: message.into(),
        }
    }

    /// The condition reason and metric label.
    pub fn reason(&self) -> &'static str {
        self.kind.reason()
    }
}

/// The most hand-started members seen at once per service (by service name), for which
/// its slot pool leaves room.
pub type MemberCounts = std::collections::BTreeMap<String, u32>;

/// Slot operations on a backend, and the set of backends to serve.
pub trait LoadBalancer: Send + Sync + 'static {
    /// Makes the load balancer serve exactly these services' backends (managed mode may
    /// regenerate its configuration and reload; external mode only checks they exist).
    /// Called when the services change. A replica change reloads nothing unless the
    /// service may now run more replicas than its backend has slots: the pool then
    /// grows (reported in the result). `members` leaves room in each pool for the
    /// hand-started members seen joining the service. `frontends` are the shared
    /// frontends (`kind: Frontend`) routing to some of them.
    fn configure(
        &self,
        services: &[ScaledService],
        members: &MemberCounts,
        frontends: &[Frontend],
    ) -> impl Future<Output = Result<Vec<PoolGrown>, LbError>> + Send;

    /// The backend's slots, with their state and sessions.
    fn backend(&self, backend: &str) -> impl Future<Output = Result<Backend, LbError>> + Send;

    /// Points a slot at an address, in maintenance with weight 0 (not in rotation).
    fn assign(
        &self,
        backend: &str,
        slot: &str,
        addr: SocketAddrV4,
    ) -> impl Future<Output = Result<(), LbError>> + Send;

    /// Applies the server options (weight, maxconn, health checks) and puts the slot in
    /// rotation.
    fn enable(
        &self,
        backend: &str,
        slot: &str,
        options: &ServerOptions,
    ) -> impl Future<Output = Result<(), LbError>> + Send;

    /// Re-applies the server options to a slot in rotation.
    fn reconfigure(
        &self,
        backend: &str,
        slot: &str,
        options: &ServerOptions,
    ) -> impl Future<Output = Result<(), LbError>> + Send;

    /// Stops new sessions to a slot; open ones finish.
    fn drain(&self, backend: &str, slot: &str) -> impl Future<Output = Result<(), LbError>> + Send;

    /// Takes a slot out of rotation but keeps its address: maintenance, weight 0, as a
    /// slot waiting to be enabled (its replica is paused).
    fn suspend(
        &self,
        backend: &str,
        slot: &str,
    ) -> impl Future<Output = Result<(), LbError>> + Send;

    /// Cuts this host's connections to `addr`, whose replica vanished without a word
    /// (cut from its network, its node gone), so that the load balancer retries the
    /// requests waiting on them elsewhere. Returns how many were cut; 0 where the load
    /// balancer's connections cannot be reached from here.
    fn sever(&self, addr: SocketAddrV4) -> impl Future<Output = Result<usize, LbError>> + Send;

    /// Takes a slot out of rotation and frees it: maintenance, weight 0.
    fn release(
        &self,
        backend: &str,
        slot: &str,
    ) -> impl Future<Output = Result<(), LbError>> + Send;

    /// The backend's current load, for the autoscaler.
    fn load(&self, backend: &str) -> impl Future<Output = Result<BackendLoad, LbError>> + Send;

    /// Scale to zero: the requests held per backend while it has no usable server,
    /// by backend name. Empty where nothing holds requests (no scale-to-zero service,
    /// or a load balancer that cannot).
    fn holds(
        &self,
    ) -> impl Future<Output = Result<std::collections::BTreeMap<String, Holds>, LbError>> + Send
    {
        async { Ok(std::collections::BTreeMap::new()) }
    }

    /// Whether the load balancer answers (for `/readyz`). `None` when none is in use.
    fn healthy(&self) -> impl Future<Output = Option<bool>> + Send;

    /// Bumped each time the load balancer lost its runtime state (HAProxy restarted
    /// or reloaded by someone else): every service should be reconciled at once.
    /// `None` when it never does.
    fn restarts(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// For a controller with no load balancer: services with a `loadBalancer` section get
/// a clear error on their status, the others work.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLoadBalancer;

impl NoLoadBalancer {
    fn error() -> LbError {
        LbError::new(
            LbErrorKind::NotInUse,
            "this controller runs without a load balancer",
        )
    }
}

impl LoadBalancer for NoLoadBalancer {
    async fn configure(
        &self,
        _: &[ScaledService],
        _: &MemberCounts,
        _: &[Frontend],
    ) -> Result<Vec<PoolGrown>, LbError> {
        Ok(Vec::new())
    }
    async fn backend(&self, _: &str) -> Result<Backend, LbError> {
        Err(Self::error())
    }
    async fn assign(&self, _: &str, _: &str, _: SocketAddrV4) -> Result<(), LbError> {
        Err(Self::error())
    }
    async fn enable(&self, _: &str, _: &str, _: &ServerOptions) -> Result<(), LbError> {
        Err(Self::error())
    }
    async fn reconfigure(&self, _: &str, _: &str, _: &ServerOptions) -> Result<(), LbError> {
        Err(Self::error())
    }
    async fn drain(&self, _: &str, _: &str) -> Result<(), LbError> {
        Err(Self::error())
    }
    async fn suspend(&self, _: &str, _: &str) -> Result<(), LbError> {
        Err(Self::error())
    }
    async fn release(&self, _: &str, _: &str) -> Result<(), LbError> {
        Err(Self::error())
    }
    async fn sever(&self, _: SocketAddrV4) -> Result<usize, LbError> {
        Ok(0)
    }
    async fn load(&self, _: &str) -> Result<BackendLoad, LbError> {
        Err(Self::error())
    }
    async fn healthy(&self) -> Option<bool> {
        None
    }
}
