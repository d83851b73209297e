//! `dockscale run`, as a library function: wires the spec, Docker, the load balancer,
//! the HTTP server and the controller loop together, and runs until `shutdown`.
//!
//! `main` calls it with Ctrl-C/SIGTERM as the shutdown signal and SIGHUP as the reload
//! signal; end-to-end tests call it with their own ports and a oneshot, like
//! mini-redis's `server::run`. A reload takes the path of a spec file renamed into
//! place: the spec is re-read at once. Under systemd, readiness and state are told to
//! its notify socket ([`crate::serve::systemd`]).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::cli::RunArgs;
use crate::controller::claim::{self, Attempt, Claim, ClaimError, EngineLock, Holder};
use crate::controller::lease::{Lease, Step};
use crate::controller::swarm::{SwarmController, SwarmSettings};
use crate::controller::{Controller, Settings};
use crate::lb::haproxy::managed::ManagedError;
use crate::lb::haproxy::runtime_api::{ApiError, Endpoint};
use crate::lb::haproxy::HaproxyBalancer;
use crate::reconcile::BackoffPolicy;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::swarm::{LeaseError, SwarmApi};
use crate::runtime::{ContainerRuntime, DockerError};
use crate::serve::http::{self, AppState, WriteAccess};
use crate::serve::metrics::Metrics;
use crate::serve::status::StatusHandle;
use crate::serve::systemd;
use crate::spec::frontend::Frontend;
use crate::spec::manifest::{self, SpecErrors};
use crate::spec::Runtime;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("the spec does not validate:\n{0}")]
    Spec(SpecErrors),
    #[error("cannot listen on {addr} (is another dockscale running? choose another --listen)")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Docker(DockerError),
    #[error(transparent)]
    Watch(crate::controller::watch::WatchError),
    #[error(transparent)]
    Haproxy(ManagedError),
    #[error(transparent)]
    ExternalHaproxy(ApiError),
    #[error(
        "another dockscale already drives this Docker engine ({holder}; claim {lock}): \
         stop it first, or start this one with --standby to take over when it stops"
    )]
    Claimed { holder: String, lock: PathBuf },
    #[error(transparent)]
    Claim(ClaimError),
    #[error("cannot make {path} absolute")]
    Resolve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the Docker engine is not a swarm manager ({0}): run `docker swarm init`, or point \
         DOCKER_HOST at a manager"
    )]
    NotSwarmManager(String),
    #[error("the lease on the swarm was lost: another controller may act now; stopping")]
    LeaseLost,
    #[error("cannot read the API token file {path}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the API token file {path} is empty: write the token into it")]
    EmptyToken { path: PathBuf },
    #[error("cannot create the state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the controller until `shutdown` resolves; the replicas keep running after.
/// Each item of `reloads` re-reads the spec at once.
pub async fn run(
    args: RunArgs,
    shutdown: impl Future<Output = ()>,
    reloads: impl Stream<Item = ()> + Send + 'static,
) -> Result<(), AppError> {
    let args = resolve_paths(args)?;
    if args.runtime == Runtime::Swarm {
        return run_swarm(args, shutdown).await;
    }
    let loaded = manifest::load_all(&args.paths, Runtime::Docker).map_err(AppError::Spec)?;
    let services = loaded.services;
    let frontends: Vec<Frontend> = loaded.frontends.into_iter().map(|l| l.frontend).collect();
    std::fs::create_dir_all(&args.state_dir).map_err(|source| AppError::StateDir {
        path: args.state_dir.clone(),
        source,
    })?;
    let mut runtime = DockerRuntime::connect().await.map_err(AppError::Docker)?;
    if let Some(dir) = &args.docker_config {
        runtime = runtime.with_docker_config(dir.clone());
    }
    let runtime = Arc::new(runtime);
    runtime.ping().await.map_err(AppError::Docker)?;

    let status = StatusHandle::default();
    let metrics = Arc::new(Metrics::new());

    if args.dry_run {
        // Changes nothing, so it needs no claim on the engine.
        let controller = controller(&args, services, runtime, &status, &metrics)
            .await?
            .with_frontends(frontends);
        let text = controller.dry_run().await.map_err(AppError::Docker)?;
        print!("{text}");
        return Ok(());
    }

    let writes = write_access(&args)?;
    let http = HttpServer::bind(args.listen).await?;
    let local = http.local;
    let engine = runtime.engine_id().await.map_err(AppError::Docker)?;
    let lock_dir = args
        .lock_dir
        .clone()
        .unwrap_or_else(claim::default_lock_dir);
    let mut claim = EngineLock::new(&lock_dir, &engine).map_err(AppError::Claim)?;
    let me = Holder::this_process(
        &local.map_or_else(|| args.listen.to_string(), |a| a.to_string()),
        &args.state_dir,
    );
    // A standby says so from its first answer on.
    if let Attempt::HeldBy(Some(holder)) = claim.try_acquire(&me).map_err(AppError::Claim)? {
        if args.standby {
            status.update(|s| s.standby_for = Some(holder.to_string()));
            // Started as asked: systemd's start is done; the wait is its state.
            systemd::ready(&format!("standby while {holder} drives the Docker engine"));
        }
    }

    let (commands, command_rx) = mpsc::channel(16);
    let http = http.serve(&status, &metrics, Some(commands), writes);

    tokio::pin!(shutdown);
    let claimed = tokio::select! {
        claimed = take_claim(&mut claim, &me, args.standby, &status) => claimed,
        () = &mut shutdown => Ok(false),
    };
    let result = match claimed {
        Ok(true) => {
            tracing::info!(
                engine = %engine,
                lock = %claim.path().display(),
                "claimed the Docker engine"
            );
            match controller(&args, services, runtime, &status, &metrics).await {
                Ok(controller) => {
                    let controller = controller
                        .with_frontends(frontends)
                        .with_rollout_commands(command_rx);
                    let (changes_tx, changes_rx) = mpsc::unbounded_channel();
                    let reloader = tokio::spawn(forward_reloads(reloads, changes_tx.clone()));
                    match crate::controller::watch::watch(&args.paths, changes_tx) {
                        Ok(_watch) => {
                            tracing::info!(
                                paths = ?args.paths,
                                listen = ?local,
                                "dockscale running"
                            );
                            let count = status.read().services.len();
                            systemd::ready(&format!(
                                "driving the Docker engine {engine}: {count} service(s)"
                            ));
                            let stop = async {
                                tokio::select! {
                                    () = &mut shutdown => {}
                                    () = claim.lost() => tracing::error!(
                                        "the claim on the Docker engine was lost: stopping"
                                    ),
                                }
                            };
                            controller.run(changes_rx, stop).await;
                            reloader.abort();
                            Ok(())
                        }
                        Err(e) => {
                            reloader.abort();
                            Err(AppError::Watch(e))
                        }
                    }
                }
                Err(e) => Err(e),
            }
        }
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    };

    systemd::stopping();
    http.stop().await;
    result
}

/// Sends each reload request to the loop as a spec file renamed into place (read at
/// once, like an editor's save).
async fn forward_reloads(
    reloads: impl Stream<Item = ()> + Send + 'static,
    changes: mpsc::UnboundedSender<crate::controller::watch::Change>,
) {
    let mut reloads = std::pin::pin!(reloads);
    while reloads.next().await.is_some() {
        tracing::info!("reload requested: re-reading the spec");
        if changes
            .send(crate::controller::watch::Change::Replaced)
            .is_err()
        {
            return;
        }
    }
}

/// The HTTP server on `--listen`: bound first (a port in use is an error before
/// anything else happens), serving once started, stopped at the end.
struct HttpServer {
    listener: TcpListener,
    local: Option<std::net::SocketAddr>,
}

/// A running [`HttpServer`].
struct ServingHttp {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    async fn bind(addr: std::net::SocketAddr) -> Result<Self, AppError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Listen { addr, source })?;
        let local = listener.local_addr().ok();
        Ok(HttpServer { listener, local })
    }

    fn serve(
        self,
        status: &StatusHandle,
        metrics: &Arc<Metrics>,
        commands: Option<crate::controller::rollouts::CommandSender>,
        writes: WriteAccess,
    ) -> ServingHttp {
        let (stop, mut stopped) = watch::channel(false);
        let state = AppState {
            status: status.clone(),
            metrics: metrics.clone(),
            commands,
            writes,
        };
        let task = tokio::spawn(http::serve(self.listener, state, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
        ServingHttp { stop, task }
    }
}

impl ServingHttp {
    async fn stop(self) {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(Err(e)) => tracing::warn!(error = %crate::report::Chain(&e), "http server"),
            Err(e) => tracing::warn!(error = %e, "http server task"),
            Ok(Ok(())) => {}
        }
    }
}

/// Who may call the write endpoints: the token of `--api-token-file` (its content,
/// surrounding whitespace trimmed), or the listen address decides.
fn write_access(args: &RunArgs) -> Result<WriteAccess, AppError> {
    let token = match &args.api_token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| AppError::TokenFile {
                path: path.clone(),
                source,
            })?;
            let token = text.trim();
            if token.is_empty() {
                return Err(AppError::EmptyToken { path: path.clone() });
            }
            Some(token.as_bytes().to_vec())
        }
        None => None,
    };
    Ok(WriteAccess::of(args.listen, token))
}

/// Takes the claim on the engine. Held by another: an error naming it, or with
/// `standby`, waits (shown by `/readyz`) until it is free. `Ok(true)` once held.
async fn take_claim(
    claim: &mut EngineLock,
    me: &Holder,
    standby: bool,
    status: &StatusHandle,
) -> Result<bool, AppError> {
    let mut announced = None;
    loop {
        match claim.try_acquire(me).map_err(AppError::Claim)? {
            Attempt::Acquired => {
                if status.update(|s| s.standby_for.take()).is_some() {
                    systemd::status("took over the Docker engine");
                }
                return Ok(true);
            }
            Attempt::HeldBy(holder) if !standby => {
                // The holder may not have written its name yet: look once more.
                let holder = match holder {
                    Some(h) => Some(h),
                    None => {
                        tokio::time::sleep(claim::STANDBY_POLL).await;
                        match claim.try_acquire(me).map_err(AppError::Claim)? {
                            Attempt::Acquired => return Ok(true),
                            Attempt::HeldBy(h) => h,
                        }
                    }
                };
                return Err(AppError::Claimed {
                    holder: holder.map_or_else(|| "holder unknown".to_owned(), |h| h.to_string()),
                    lock: claim.path().to_owned(),
                });
            }
            Attempt::HeldBy(holder) => {
                let who = holder.map_or_else(|| "holder unknown".to_owned(), |h| h.to_string());
                if announced.as_ref() != Some(&who) {
                    tracing::info!(
                        holder = %who,
                        "standby: another dockscale drives the Docker engine; \
                         taking over when it stops"
                    );
                    status.update(|s| s.standby_for = Some(who.clone()));
                    systemd::ready(&format!("standby while {who} drives the Docker engine"));
                    announced = Some(who);
                }
                tokio::time::sleep(claim::STANDBY_POLL).await;
            }
        }
    }
}

/// The load balancer the flags ask for and the controller over it.
async fn controller(
    args: &RunArgs,
    services: Vec<manifest::LoadedService>,
    runtime: Arc<DockerRuntime>,
    status: &StatusHandle,
    metrics: &Arc<Metrics>,
) -> Result<Controller<DockerRuntime, HaproxyBalancer>, AppError> {
    // The first read of the spec counts like every later one.
    metrics.spec_reloads_total.with_label_values(&["ok"]).inc();
    metrics.spec_valid.set(1);
    let settings = Settings {
        paths: args.paths.clone(),
        history_dir: Some(crate::controller::rollouts::history_dir(&args.state_dir)),
        sync_period: args.sync_period.get(),
        metrics_interval: args.metrics_interval.get(),
        max_parallel: usize::from(args.max_parallel),
        crash_backoff: BackoffPolicy {
            base: args.crash_backoff_base.get(),
            max: args.crash_backoff_max.get(),
            reset_after: args.crash_backoff_reset.get(),
        },
        ..Settings::default()
    };
    let lb = load_balancer(args, &services, status, metrics).await?;
    Ok(Controller::new(
        settings,
        services,
        runtime,
        Arc::new(lb),
        status.clone(),
        metrics.clone(),
    ))
}

/// The HAProxy the flags ask for: external through its socket, or managed.
async fn load_balancer(
    args: &RunArgs,
    services: &[manifest::LoadedService],
    status: &StatusHandle,
    metrics: &Arc<Metrics>,
) -> Result<HaproxyBalancer, AppError> {
    match &args.haproxy_socket {
        Some(socket) => {
            HaproxyBalancer::external(Endpoint::parse(socket), metrics.clone(), status.clone())
                .await
                .map_err(AppError::ExternalHaproxy)
        }
        None => {
            let needs_haproxy = services
                .iter()
                .any(|l| l.service.spec.load_balancer.is_some());
            if needs_haproxy {
                crate::lb::haproxy::managed::locate().map_err(AppError::Haproxy)?;
            }
            HaproxyBalancer::managed(
                &args.state_dir,
                args.haproxy_exporter,
                metrics.clone(),
                status.clone(),
            )
            .map_err(AppError::Haproxy)
        }
    }
}

/// `run --runtime swarm`: the same spec as Swarm services, one controller per swarm by
/// a lease kept in the swarm; a second one waits as a standby.
async fn run_swarm(args: RunArgs, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    let loaded = manifest::load_all(&args.paths, Runtime::Swarm).map_err(AppError::Spec)?;
    let services = loaded.services;
    let frontends: Vec<Frontend> = loaded.frontends.into_iter().map(|l| l.frontend).collect();
    std::fs::create_dir_all(&args.state_dir).map_err(|source| AppError::StateDir {
        path: args.state_dir.clone(),
        source,
    })?;
    let api = Arc::new(SwarmApi::connect().map_err(AppError::Docker)?);
    api.ping().await.map_err(AppError::Docker)?;
    let swarm = api
        .swarm_id()
        .await
        .map_err(|e| AppError::NotSwarmManager(crate::report::chain(&e)))?;
    let status = StatusHandle::default();
    let metrics = Arc::new(Metrics::new());
    let settings = SwarmSettings {
        paths: args.paths.clone(),
        sync_period: args.sync_period.get(),
        metrics_interval: args.metrics_interval.get(),
        probe_timeout: std::time::Duration::from_millis(200),
        debounce: std::time::Duration::from_millis(100),
        clock: crate::controller::clock::Clock::System,
    };
    metrics.spec_reloads_total.with_label_values(&["ok"]).inc();
    metrics.spec_valid.set(1);
    if args.dry_run {
        let lb = load_balancer(&args, &services, &status, &metrics).await?;
        let controller =
            SwarmController::new(settings, services, api, Arc::new(lb), status, metrics)
                .with_frontends(frontends);
        print!("{}", controller.dry_run().await.map_err(AppError::Docker)?);
        return Ok(());
    }
    let http = HttpServer::bind(args.listen).await?;
    let local = http.local;
    let http = http.serve(&status, &metrics, None, write_access(&args)?);
    let me = format!(
        "{}:{} pid {}",
        hostname(),
        local.map_or_else(|| args.listen.to_string(), |a| a.to_string()),
        std::process::id()
    );
    let mut lease = Lease::new(&me, args.lease_duration.get());
    tokio::pin!(shutdown);
    let result = tokio::select! {
        held = acquire_lease(&api, &mut lease, &status) => match held {
            Ok(()) => {
                tracing::info!(swarm = %swarm, holder = %me, "holding the swarm's lease");
                let api = api.clone();
                let spec = (services, frontends);
                lead(&args, spec, settings, api, lease, &status, &metrics, &mut shutdown).await
            }
            Err(e) => Err(e),
        },
        () = &mut shutdown => Ok(()),
    };
    http.stop().await;
    result
}

/// Waits until this controller holds the swarm's lease; a standby says whom it waits
/// for in `/readyz`.
async fn acquire_lease(
    api: &SwarmApi,
    lease: &mut Lease,
    status: &StatusHandle,
) -> Result<(), AppError> {
    let mut announced: Option<String> = None;
    loop {
        let now = tokio::time::Instant::now();
        let record = api.lease().await;
        let attempt = match record {
            Err(e) => {
                tracing::warn!(error = %crate::report::Chain(&e), "reading the swarm's lease");
                None
            }
            Ok(record) => match lease.decide(record.as_ref(), now) {
                Step::Create => Some(api.create_lease(lease_holder(lease), wall_ms()).await),
                Step::Renew | Step::TakeOver => match &record {
                    Some(r) => Some(api.write_lease(r, lease_holder(lease), wall_ms()).await),
                    None => None,
                },
                Step::Wait { holder } => {
                    if announced.as_ref() != Some(&holder) {
                        tracing::info!(
                            %holder,
                            "standby: another dockscale leads this swarm; \
                             taking over when its lease lapses"
                        );
                        status.update(|s| s.standby_for = Some(holder.clone()));
                        systemd::ready(&format!("standby while {holder} leads the swarm"));
                        announced = Some(holder);
                    }
                    None
                }
            },
        };
        match attempt {
            Some(Ok(())) => {
                lease.written(now);
                status.update(|s| s.standby_for = None);
                return Ok(());
            }
            Some(Err(LeaseError::Conflict)) => lease.lost(),
            Some(Err(LeaseError::Docker(e))) => {
                tracing::warn!(error = %crate::report::Chain(&e), "writing the swarm's lease");
            }
            None => {}
        }
        tokio::time::sleep(lease.period()).await;
    }
}

/// Runs the Swarm controller while the lease is held, renewing it; a lease that could
/// not be renewed in time stops the controller before any standby may act.
#[allow(clippy::too_many_arguments)]
async fn lead(
    args: &RunArgs,
    (services, frontends): (Vec<manifest::LoadedService>, Vec<Frontend>),
    settings: SwarmSettings,
    api: Arc<SwarmApi>,
    mut lease: Lease,
    status: &StatusHandle,
    metrics: &Arc<Metrics>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<(), AppError> {
    let lb = load_balancer(args, &services, status, metrics).await?;
    let controller = SwarmController::new(
        settings,
        services,
        api.clone(),
        Arc::new(lb),
        status.clone(),
        metrics.clone(),
    )
    .with_frontends(frontends);
    let (changes_tx, changes_rx) = mpsc::unbounded_channel();
    let _watch =
        crate::controller::watch::watch(&args.paths, changes_tx).map_err(AppError::Watch)?;
    let (lost_tx, mut lost_rx) = watch::channel(false);
    let me = lease.holder().to_owned();
    let renewer_api = api.clone();
    let renewer = tokio::spawn(async move {
        loop {
            tokio::time::sleep(lease.period()).await;
            let now = tokio::time::Instant::now();
            let written = match renewer_api.lease().await {
                Ok(Some(record)) if lease.decide(Some(&record), now) == Step::Renew => {
                    renewer_api
                        .write_lease(&record, lease_holder(&lease), wall_ms())
                        .await
                }
                Ok(_) => Err(LeaseError::Conflict),
                Err(e) => Err(LeaseError::Docker(e)),
            };
            match written {
                Ok(()) => lease.written(now),
                Err(LeaseError::Conflict) => {
                    lease.lost();
                    let _ = lost_tx.send(true);
                    return lease;
                }
                Err(LeaseError::Docker(e)) => {
                    tracing::warn!(error = %crate::report::Chain(&e), "renewing the swarm's lease");
                }
            }
            if !lease.held(tokio::time::Instant::now()) {
                let _ = lost_tx.send(true);
                return lease;
            }
        }
    });
    let lost = async {
        let _ = lost_rx.wait_for(|lost| *lost).await;
    };
    tracing::info!(paths = ?args.paths, "dockscale running on swarm");
    systemd::ready(&format!(
        "leading the swarm: {} service(s)",
        status.read().services.len()
    ));
    let mut lost_lease = false;
    controller
        .run(changes_rx, async {
            tokio::select! {
                () = shutdown.as_mut() => {}
                () = lost => lost_lease = true,
            }
        })
        .await;
    renewer.abort();
    if lost_lease {
        return Err(AppError::LeaseLost);
    }
    // A clean stop hands over at once: the standby need not wait the lease out.
    if let Ok(Some(record)) = api.lease().await {
        if record.holder == me {
            match api.release_lease(&record).await {
                Ok(()) => tracing::info!("released the swarm's lease"),
                Err(e) => {
                    tracing::warn!(error = %crate::report::Chain(&e), "releasing the swarm's lease")
                }
            }
        }
    }
    Ok(())
}

fn lease_holder(lease: &Lease) -> &str {
    lease.holder()
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Makes the spec paths and the state directory absolute, once, from the directory
/// `run` was started in: every path that reaches HAProxy's configuration is absolute
/// (HAProxy reads `stats socket .dockscale/haproxy.sock` as an address without a port),
/// and nothing depends on the working directory afterwards.
fn resolve_paths(mut args: RunArgs) -> Result<RunArgs, AppError> {
    let absolute = |path: &std::path::Path| {
        std::path::absolute(path).map_err(|source| AppError::Resolve {
            path: path.to_owned(),
            source,
        })
    };
    args.state_dir = absolute(&args.state_dir)?;
    args.docker_config = args.docker_config.as_deref().map(absolute).transpose()?;
    args.paths = args
        .paths
        .iter()
        .map(|p| absolute(p))
        .collect::<Result<_, _>>()?;
    Ok(args)
}
