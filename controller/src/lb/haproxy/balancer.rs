//! [`HaproxyBalancer`]: the [`LoadBalancer`] the controller drives, over the runtime
//! API, in managed or external mode.
//!
//! Both modes fill the backend's `slotN` servers at runtime; they differ in who owns
//! the configuration. Managed: dockscale renders it, starts HAProxy on the first
//! service with a load balancer, reloads it when services change and restarts it when
//! it dies. External: the user's HAProxy must declare the backends and their slots
//! (`manifests/haproxy.cfg`); a missing backend is an error on that service alone.
//!
//! A supervisor task asks HAProxy for its pid every second, and watches the managed
//! master through a pidfd, so that its death is noticed at once. A new pid that is not the
//! worker of our own reload means the runtime state was lost (a restart, or someone
//! else's reload without a state file): it bumps the
//! [`LoadBalancer::restarts`] counter and the controller restores every server at once.
//! It also keeps `/readyz`'s HAProxy check current.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::certs::Frontends;
use super::config::{slot_number, AssignedSlot, BackendConfig, ManagedConfig};
use super::frontend::FrontendConfig;
use super::managed::{ManagedError, ManagedHaproxy, Paths, ProcessWatch, Started};
use super::runtime_api::{AdminState, ApiError, Endpoint, Refusal, RuntimeApi};
use crate::lb::{LbError, LbErrorKind, LoadBalancer, MemberCounts};
use crate::model::backend::{Admin, Backend, BackendLoad, Holds, PoolGrown, Slot};
use crate::serve::metrics::Metrics;
use crate::serve::status::StatusHandle;
use crate::spec::frontend::Frontend;
use crate::spec::{ScaledService, ServerOptions};

/// How often the supervisor looks at HAProxy.
pub const SUPERVISE_EVERY: Duration = Duration::from_secs(1);

enum Mode {
    Managed(Box<ManagedHaproxy>),
    External,
}

struct Inner {
    api: RuntimeApi,
    mode: Mode,
    /// The backends last configured (managed mode starts HAProxy again with them).
    backends: Mutex<Vec<BackendConfig>>,
    /// The slots in rotation as last observed, by backend: a HAProxy that died is
    /// started again with them written in, so it serves from its first second.
    last_seen: Mutex<BTreeMap<String, BTreeMap<u32, AssignedSlot>>>,
    /// Backend ids by name, for `show stat` (names can be shared with a frontend).
    ids: Mutex<BTreeMap<String, u32>>,
    /// The worker last seen (or reloaded into by us): another one means HAProxy
    /// restarted behind our back and lost its runtime state.
    worker_pid: Mutex<Option<u32>>,
    restarts: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    status: StatusHandle,
    /// Managed mode: the shared frontends and their certificates.
    frontends: Mutex<Frontends>,
    /// Their configurations as last rendered (a restart renders them again).
    frontend_configs: Mutex<Vec<FrontendConfig>>,
}

/// HAProxy as the controller's load balancer.
pub struct HaproxyBalancer {
    inner: Arc<Inner>,
    supervisor: JoinHandle<()>,
}

impl Drop for HaproxyBalancer {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

impl HaproxyBalancer {
    /// Managed mode: HAProxy from PATH, its files in `state_dir`, its Prometheus
    /// exporter on `exporter`. Starts (or adopts) it on the first `configure` with a
    /// service that has a load balancer.
    pub fn managed(
        state_dir: &Path,
        exporter: SocketAddr,
        metrics: Arc<Metrics>,
        status: StatusHandle,
    ) -> Result<Self, ManagedError> {
        let paths = Paths::new(state_dir);
        let api = api_for(ManagedHaproxy::endpoint(&paths), &metrics);
        let managed = ManagedHaproxy::new(state_dir, exporter, api.clone())?;
        Ok(Self::with_mode(
            api,
            Mode::Managed(Box::new(managed)),
            metrics,
            status,
        ))
    }

    /// External mode: the HAProxy listening on `endpoint`, which must answer now.
    pub async fn external(
        endpoint: Endpoint,
        metrics: Arc<Metrics>,
        status: StatusHandle,
    ) -> Result<Self, ApiError> {
        let api = api_for(endpoint, &metrics);
        let info = api.info().await?;
        tracing::info!(
            endpoint = %api.endpoint(),
            version = %info.version,
            pid = info.pid,
            "driving an external HAProxy"
        );
        Ok(Self::with_mode(api, Mode::External, metrics, status))
    }

    fn with_mode(api: RuntimeApi, mode: Mode, metrics: Arc<Metrics>, status: StatusHandle) -> Self {
        let (restarts, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            api,
            mode,
            backends: Mutex::new(Vec::new()),
            last_seen: Mutex::new(BTreeMap::new()),
            ids: Mutex::new(BTreeMap::new()),
            worker_pid: Mutex::new(None),
            restarts,
            metrics,
            status,
            frontends: Mutex::new(Frontends::default()),
            frontend_configs: Mutex::new(Vec::new()),
        });
        let supervisor = tokio::spawn(supervise(inner.clone()));
        HaproxyBalancer { inner, supervisor }
    }

    /// The runtime API endpoint in use.
    pub fn endpoint(&self) -> &Endpoint {
        self.inner.api.endpoint()
    }
}

fn api_for(endpoint: Endpoint, metrics: &Arc<Metrics>) -> RuntimeApi {
    let metrics = metrics.clone();
    RuntimeApi::new(endpoint).with_observer(Arc::new(move |command, result, took| {
        metrics
            .haproxy_commands_total
            .with_label_values(&[command, result])
            .inc();
        metrics
            .haproxy_command_duration_seconds
            .with_label_values(&[command])
            .observe(took.as_secs_f64());
    }))
}

fn lb_error(e: ApiError) -> LbError {
    let kind = match &e {
        ApiError::Connect { .. } | ApiError::Io { .. } | ApiError::Timeout { .. } => {
            LbErrorKind::Unreachable
        }
        ApiError::Refused { refusal, .. } => match refusal {
            Refusal::NoSuchBackend => LbErrorKind::BackendMissing,
            Refusal::NoSuchServer => LbErrorKind::ServerMissing,
            Refusal::Other => LbErrorKind::Refused,
        },
        ApiError::Parse { .. } => LbErrorKind::Unreadable,
    };
    LbError::new(kind, crate::report::chain(&e))
}

impl Inner {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        // The data is plain values; a panic elsewhere leaves nothing half-written.
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running pool of a backend (its number of slots) and the slots in use, as the
    /// configuration would write them; `None` when HAProxy does not answer for it.
    async fn live_pool(&self, backend: &str) -> Option<(u32, BTreeMap<u32, AssignedSlot>)> {
        let servers = self.api.servers_state(backend).await.ok()?;
        let pool = servers
            .iter()
            .filter_map(|s| slot_number(&s.name))
            .max()
            .unwrap_or(0);
        let assigned = servers
            .into_iter()
            .filter_map(|s| {
                let n = slot_number(&s.name)?;
                if s.addr.is_unspecified() || s.port == 0 {
                    return None;
                }
                Some((
                    n,
                    AssignedSlot {
                        addr: SocketAddrV4::new(s.addr, s.port),
                        weight: s.user_weight,
                        enabled: !s.in_maintenance(),
                    },
                ))
            })
            .collect();
        Some((pool, assigned))
    }

    /// Managed mode: make the running HAProxy serve exactly `backends`.
    async fn apply(
        &self,
        managed: &ManagedHaproxy,
        mut backends: Vec<BackendConfig>,
        frontends: Vec<FrontendConfig>,
    ) -> Result<Vec<PoolGrown>, LbError> {
        let err = |e: ManagedError| LbError::new(e.kind(), crate::report::chain(&e));
        let configured: BTreeMap<String, u32> = Self::lock(&self.backends)
            .iter()
            .map(|b| (b.backend.clone(), b.slots))
            .collect();
        let mut grown = Vec::new();
        for b in &mut backends {
            // What HAProxy runs, or else what it was last given (it may not answer now).
            let running = match self.live_pool(&b.backend).await {
                Some((pool, assigned)) => {
                    b.assigned = assigned;
                    Some(pool)
                }
                None => configured.get(&b.backend).copied(),
            };
            b.slots = b.pool_size(running);
            if let Some(from) = running.filter(|&r| r > 0 && r < b.slots) {
                grown.push(PoolGrown {
                    service: b.service.clone(),
                    backend: b.backend.clone(),
                    from,
                    to: b.slots,
                    needed: b.needed,
                });
            }
        }
        let config = managed
            .config(backends.clone())
            .with_frontends(frontends.clone());
        *Self::lock(&self.frontend_configs) = frontends.clone();
        if managed.master_pid().is_none() {
            if backends.is_empty() && frontends.is_empty() {
                // Nothing to serve and nothing running: start nothing.
                *Self::lock(&self.backends) = backends;
                return Ok(Vec::new());
            }
            match managed.start(&config).await.map_err(err)? {
                Started::Fresh => tracing::info!("managed HAProxy started"),
                Started::Adopted => tracing::info!("managed HAProxy adopted"),
            }
        }
        if managed.running_shape().as_deref() != Some(config.shape().as_str()) {
            let reason = if grown.is_empty() {
                tracing::info!(
                    backends = ?backends.iter().map(|b| &b.backend).collect::<Vec<_>>(),
                    "services changed: reloading HAProxy with the current servers written in"
                );
                "services_changed"
            } else {
                for g in &grown {
                    tracing::warn!(
                        service = %g.service,
                        backend = %g.backend,
                        from = g.from,
                        to = g.to,
                        "{} replicas at once do not fit the slot pool: growing it, HAProxy \
                         reloaded with the current servers written in",
                        g.needed
                    );
                }
                "slot_pool_grown"
            };
            let result = managed.reload(&config).await.map_err(err);
            self.metrics
                .haproxy_reloads_total
                .with_label_values(&[if result.is_ok() { reason } else { "failed" }])
                .inc();
            result?;
            Self::lock(&self.ids).clear();
            // The new worker is ours: not a restart to recover from.
            if let Ok(info) = self.api.info().await {
                *Self::lock(&self.worker_pid) = Some(info.pid);
            }
        } else {
            grown.clear();
        }
        for b in &mut backends {
            b.assigned.clear();
        }
        *Self::lock(&self.backends) = backends;
        Ok(grown)
    }

    async fn backend_id(&self, backend: &str) -> Result<u32, LbError> {
        if let Some(id) = Self::lock(&self.ids).get(backend) {
            return Ok(*id);
        }
        let servers = self
            .api
            .servers_state(backend)
            .await
            .map_err(|e| self.missing(backend, e))?;
        let id = servers
            .first()
            .map(|s| s.backend_id)
            .ok_or_else(|| self.no_slots(backend))?;
        Self::lock(&self.ids).insert(backend.to_owned(), id);
        Ok(id)
    }

    fn missing(&self, backend: &str, e: ApiError) -> LbError {
        if let ApiError::Refused {
            refusal: Refusal::NoSuchBackend,
            ..
        } = &e
        {
            let hint = match self.mode {
                Mode::External => {
                    " (declare it in your haproxy.cfg with `slotN` servers: see \
                     manifests/haproxy.cfg)"
                }
                Mode::Managed(_) => "",
            };
            return LbError::new(
                LbErrorKind::BackendMissing,
                format!("HAProxy has no backend `{backend}`{hint}"),
            );
        }
        lb_error(e)
    }

    fn no_slots(&self, backend: &str) -> LbError {
        LbError::new(
            LbErrorKind::NoSlots,
            format!(
                "backend `{backend}` has no `slotN` servers for replicas: declare them, e.g. \
                 `server-template slot 1-32 0.0.0.0:8080 disabled weight 0 check` \
                 (see manifests/haproxy.cfg)"
            ),
        )
    }
}

impl Inner {
    /// Installs the frontends' certificates; their configurations.
    fn install_frontends(
        &self,
        managed: &ManagedHaproxy,
        frontends: &[Frontend],
        backends: BTreeMap<String, String>,
    ) -> Vec<FrontendConfig> {
        Self::lock(&self.frontends).install(
            &managed.paths().dir,
            frontends,
            backends,
            &self.status,
            &self.metrics,
        )
    }

    /// Certificates whose files changed are swapped into the running HAProxy through
    /// the runtime API (no reload); certificates added or removed install the
    /// frontends again (a reload).
    async fn refresh_certificates(&self, managed: &ManagedHaproxy) {
        let changes = Self::lock(&self.frontends).changes(&self.status, &self.metrics);
        for swap in changes.swaps {
            let file = swap.file.display().to_string();
            let result = match self.api.set_ssl_cert(&file, &swap.pem).await {
                Ok(()) => self.api.commit_ssl_cert(&file).await,
                Err(e) => Err(e),
            };
            if result.is_err() {
                let _ = self.api.abort_ssl_cert(&file).await;
            }
            let result = result.map_err(|e| crate::report::chain(&e));
            Self::lock(&self.frontends).swapped(swap, result, &self.status, &self.metrics);
        }
        if changes.reinstall {
            tracing::info!("certificates added or removed: installing the frontends again");
            let (specs, names) = {
                let f = Self::lock(&self.frontends);
                (f.specs(), f.backends())
            };
            let configs = self.install_frontends(managed, &specs, names);
            let backends = Self::lock(&self.backends).clone();
            if let Err(e) = self.apply(managed, backends, configs).await {
                tracing::error!(error = %e.message, "reloading HAProxy for new certificates");
            }
        }
    }
}

impl LoadBalancer for HaproxyBalancer {
    async fn configure(
        &self,
        services: &[ScaledService],
        members: &MemberCounts,
        frontends: &[Frontend],
    ) -> Result<Vec<PoolGrown>, LbError> {
        let backends: Vec<BackendConfig> = services
            .iter()
            .filter_map(|s| {
                let members = members.get(s.name()).copied().unwrap_or(0);
                Some(BackendConfig::of(s)?.with_members(members))
            })
            .collect();
        match &self.inner.mode {
            Mode::Managed(managed) => {
                let names = backends
                    .iter()
                    .map(|b| (b.service.clone(), b.backend.clone()))
                    .collect();
                let configs = self.inner.install_frontends(managed, frontends, names);
                self.inner.apply(managed, backends, configs).await
            }
            Mode::External => {
                if !frontends.is_empty() {
                    tracing::error!(
                        "Frontend documents need the managed HAProxy (its configuration is \
                         dockscale's): declare the routes in your own haproxy.cfg instead"
                    );
                }
                let present = self.inner.api.backends().await.map_err(lb_error)?;
                for b in &backends {
                    if !present.contains(&b.backend) {
                        tracing::error!(
                            service = %b.service,
                            backend = %b.backend,
                            "the external HAProxy has no such backend"
                        );
                    }
                }
                *Inner::lock(&self.inner.backends) = backends;
                Ok(Vec::new())
            }
        }
    }

    async fn backend(&self, backend: &str) -> Result<Backend, LbError> {
        let inner = &self.inner;
        let servers = inner
            .api
            .servers_state(backend)
            .await
            .map_err(|e| inner.missing(backend, e))?;
        let mut slots: Vec<(u32, &super::stats::ServerState)> = servers
            .iter()
            .filter_map(|s| Some((slot_number(&s.name)?, s)))
            .collect();
        if slots.is_empty() {
            return Err(inner.no_slots(backend));
        }
        slots.sort_by_key(|(n, _)| *n);
        let id = slots[0].1.backend_id;
        Inner::lock(&inner.ids).insert(backend.to_owned(), id);
        let serving: BTreeMap<u32, AssignedSlot> = slots
            .iter()
            .filter(|(_, s)| s.running() && !s.addr.is_unspecified() && s.port != 0)
            .map(|(n, s)| {
                let slot = AssignedSlot {
                    addr: SocketAddrV4::new(s.addr, s.port),
                    weight: s.user_weight,
                    enabled: true,
                };
                (*n, slot)
            })
            .collect();
        Inner::lock(&inner.last_seen).insert(backend.to_owned(), serving);
        let rows = inner.api.stat(id).await.map_err(lb_error)?;
        let sessions: BTreeMap<&str, u32> = rows
            .iter()
            .filter(|r| r.pxname == backend && !r.is_backend())
            .map(|r| {
                let n = r.scur.unwrap_or(0) + r.qcur.unwrap_or(0);
                (r.svname.as_str(), u32::try_from(n).unwrap_or(u32::MAX))
            })
            .collect();
        let counters = rows
            .iter()
            .filter(|r| r.pxname == backend && !r.is_backend())
            .map(|r| (r.svname.clone(), r.counters()))
            .collect();
        Ok(Backend {
            counters,
            slots: slots
                .into_iter()
                .map(|(_, s)| Slot {
                    name: s.name.clone(),
                    addr: (!s.addr.is_unspecified() && s.port != 0)
                        .then(|| SocketAddrV4::new(s.addr, s.port)),
                    admin: if s.in_maintenance() {
                        Admin::Maint
                    } else if s.draining() {
                        Admin::Drain
                    } else {
                        Admin::Ready
                    },
                    up: s.running(),
                    weight: s.user_weight,
                    sessions: sessions.get(s.name.as_str()).copied().unwrap_or(0),
                })
                .collect(),
        })
    }

    async fn assign(&self, backend: &str, slot: &str, addr: SocketAddrV4) -> Result<(), LbError> {
        let api = &self.inner.api;
        api.set_server_state(backend, slot, AdminState::Maint)
            .await
            .map_err(lb_error)?;
        api.set_server_weight(backend, slot, 0)
            .await
            .map_err(lb_error)?;
        api.set_server_addr(backend, slot, addr)
            .await
            .map_err(lb_error)
    }

    async fn enable(
        &self,
        backend: &str,
        slot: &str,
        options: &ServerOptions,
    ) -> Result<(), LbError> {
        self.reconfigure(backend, slot, options).await?;
        let api = &self.inner.api;
        if options.check {
            // The replica was just seen answering: a slot that checks marked DOWN for
            // an earlier replica must not wait `rise` checks for this one.
            api.set_server_health_up(backend, slot)
                .await
                .map_err(lb_error)?;
        }
        api.set_server_state(backend, slot, AdminState::Ready)
            .await
            .map_err(lb_error)
    }

    async fn reconfigure(
        &self,
        backend: &str,
        slot: &str,
        options: &ServerOptions,
    ) -> Result<(), LbError> {
        let api = &self.inner.api;
        api.set_server_weight(backend, slot, options.weight)
            .await
            .map_err(lb_error)?;
        if let Some(maxconn) = options.maxconn {
            api.set_server_maxconn(backend, slot, maxconn)
                .await
                .map_err(lb_error)?;
        }
        Ok(())
    }

    async fn drain(&self, backend: &str, slot: &str) -> Result<(), LbError> {
        self.inner
            .api
            .set_server_state(backend, slot, AdminState::Drain)
            .await
            .map_err(lb_error)
    }

    async fn suspend(&self, backend: &str, slot: &str) -> Result<(), LbError> {
        let api = &self.inner.api;
        api.set_server_state(backend, slot, AdminState::Maint)
            .await
            .map_err(lb_error)?;
        api.set_server_weight(backend, slot, 0)
            .await
            .map_err(lb_error)
    }

    async fn sever(&self, addr: SocketAddrV4) -> Result<usize, LbError> {
        let local = match &self.inner.mode {
            Mode::Managed(_) => true,
            Mode::External => match self.inner.api.endpoint() {
                Endpoint::Unix(_) => true,
                Endpoint::Tcp(at) => {
                    let host = at.rsplit_once(':').map_or(at.as_str(), |(h, _)| h);
                    host == "localhost"
                        || host
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                }
            },
        };
        if !local {
            return Ok(0);
        }
        let cut = tokio::task::spawn_blocking(move || super::sever::sever(addr))
            .await
            .map_err(|e| LbError::new(LbErrorKind::Refused, e.to_string()))?;
        match cut {
            Ok(n) => Ok(n),
            Err(e) => {
                // Without CAP_NET_ADMIN requests on such connections wait for their
                // timeout, as they would without dockscale: worth a warning, once.
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        error = %crate::report::Chain(&e),
                        "cannot cut connections to vanished replicas; their requests wait for \
                         timeout server"
                    );
                });
                Ok(0)
            }
        }
    }

    async fn release(&self, backend: &str, slot: &str) -> Result<(), LbError> {
        let api = &self.inner.api;
        api.set_server_state(backend, slot, AdminState::Maint)
            .await
            .map_err(lb_error)?;
        api.set_server_weight(backend, slot, 0)
            .await
            .map_err(lb_error)?;
        api.clear_server_addr(backend, slot).await.map_err(lb_error)
    }

    async fn load(&self, backend: &str) -> Result<BackendLoad, LbError> {
        let inner = &self.inner;
        let mut id = inner.backend_id(backend).await?;
        let mut rows = inner.api.stat(id).await.map_err(lb_error)?;
        if !rows.iter().any(|r| r.pxname == backend && r.is_backend()) {
            // Ids move when the configuration changes: look the backend up again.
            Inner::lock(&inner.ids).remove(backend);
            id = inner.backend_id(backend).await?;
            rows = inner.api.stat(id).await.map_err(lb_error)?;
        }
        let total = rows
            .iter()
            .find(|r| r.pxname == backend && r.is_backend())
            .ok_or_else(|| {
                LbError::new(
                    LbErrorKind::BackendMissing,
                    format!("HAProxy has no backend `{backend}`"),
                )
            })?;
        // The backend's own scur counts queued streams too: add the servers' instead.
        let serving: u64 = rows
            .iter()
            .filter(|r| r.pxname == backend && !r.is_backend())
            .filter_map(|r| r.scur)
            .sum();
        Ok(BackendLoad {
            scur: serving as f64,
            qcur: total.qcur.unwrap_or(0) as f64,
            qtime_ms: total.qtime.unwrap_or(0) as f64,
            rtime_ms: total.rtime.unwrap_or(0) as f64,
            rate: total.rate.unwrap_or(0) as f64,
            requests: total.req_tot.or(total.stot).unwrap_or(0),
        })
    }

    async fn holds(&self) -> Result<BTreeMap<String, Holds>, LbError> {
        let reply = self
            .inner
            .api
            .command("dockscale holds", super::hold::COMMAND)
            .await
            .map_err(lb_error)?;
        // No script loaded (no service scales to zero, or an external HAProxy without
        // it): the command is unknown, and nothing is held.
        if reply.trim_start().starts_with("Unknown command") {
            return Ok(BTreeMap::new());
        }
        super::hold::parse(&reply).map_err(|e| {
            LbError::new(
                LbErrorKind::Unreadable,
                format!("cannot read `{}`: {e}", super::hold::COMMAND),
            )
        })
    }

    async fn healthy(&self) -> Option<bool> {
        Some(self.inner.api.info().await.is_ok())
    }

    fn restarts(&self) -> Option<watch::Receiver<u64>> {
        Some(self.inner.restarts.subscribe())
    }
}

/// Is HAProxy there, and is it the same process as before? Asked every second, and at
/// once when the managed master exits (a pidfd on it): a dead managed HAProxy is
/// started again with its servers within milliseconds, not at the next poll.
async fn supervise(inner: Arc<Inner>) {
    let mut ticker = tokio::time::interval(SUPERVISE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut master: Option<ProcessWatch> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = ended(&master) => {
                if let Some(m) = master.take() {
                    tracing::warn!(pid = m.pid().as_raw(), "the managed HAProxy master exited");
                }
            }
        }
        if let Mode::Managed(managed) = &inner.mode {
            let mut backends = Inner::lock(&inner.backends).clone();
            let serving = !backends.is_empty() || !Inner::lock(&inner.frontend_configs).is_empty();
            if serving && managed.master_pid().is_none() {
                tracing::error!(
                    "the managed HAProxy is gone: starting it again with the servers it had"
                );
                let last_seen = Inner::lock(&inner.last_seen).clone();
                for b in &mut backends {
                    if let Some(slots) = last_seen.get(&b.backend) {
                        b.assigned = slots.clone();
                        if let Some(highest) = slots.keys().max() {
                            b.slots = b.slots.max(*highest);
                        }
                    }
                }
                let frontends = Inner::lock(&inner.frontend_configs).clone();
                let config: ManagedConfig = managed.config(backends).with_frontends(frontends);
                match managed.restart_if_dead(&config).await {
                    Ok(true) => {
                        inner.metrics.haproxy_restarts_total.inc();
                        Inner::lock(&inner.ids).clear();
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %crate::report::Chain(&e), "starting HAProxy again")
                    }
                }
            }
            let pid = managed.master_pid();
            if master.as_ref().map(ProcessWatch::pid) != pid {
                master = pid.and_then(|pid| match ProcessWatch::new(pid) {
                    Ok(watch) => Some(watch),
                    Err(e) => {
                        tracing::warn!(
                            error = %crate::report::Chain(&e),
                            "cannot watch the HAProxy master; polling it"
                        );
                        None
                    }
                });
            }
            if !serving && pid.is_none() {
                inner.status.update(|s| s.haproxy_reachable = None);
                continue;
            }
            if pid.is_some() {
                inner.refresh_certificates(managed).await;
            }
        }
        match inner.api.info().await {
            Ok(info) => {
                inner.status.update(|s| s.haproxy_reachable = Some(true));
                let last_pid = Inner::lock(&inner.worker_pid).replace(info.pid);
                if last_pid.is_some_and(|p| p != info.pid) {
                    tracing::warn!(
                        old = last_pid,
                        new = info.pid,
                        "HAProxy's process changed: restoring every server"
                    );
                    Inner::lock(&inner.ids).clear();
                    inner.restarts.send_modify(|n| *n += 1);
                }
            }
            Err(e) => {
                inner.status.update(|s| s.haproxy_reachable = Some(false));
                tracing::warn!(error = %crate::report::Chain(&e), "HAProxy does not answer");
            }
        }
    }
}

/// Resolves when the watched master ends (never, without one).
async fn ended(master: &Option<ProcessWatch>) {
    match master {
        Some(m) => m.exited().await,
        None => std::future::pending().await,
    }
}
