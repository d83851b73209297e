//! `dockscale run`, as a library function: wires the spec, Docker, the load balancer,
//! the HTTP server and the controller loop together, and runs until `shutdown`.
//!
//! `main` calls it with Ctrl-C/SIGTERM as the shutdown signal; end-to-end tests call
//! it with their own ports and a oneshot, like mini-redis's `server::run`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::cli::RunArgs;
use crate::controller::{Controller, Settings};
use crate::docker::{ContainerRuntime, DockerError, DockerRuntime};
use crate::haproxy::managed::ManagedError;
use crate::haproxy::runtime_api::{ApiError, Endpoint};
use crate::haproxy::HaproxyBalancer;
use crate::http::{self, AppState};
use crate::manifest::{self, SpecErrors};
use crate::metrics::Metrics;
use crate::plan::BackoffPolicy;
use crate::status::StatusHandle;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("the spec does not validate:\n{0}")]
    Spec(#[source] SpecErrors),
    #[error(
        "cannot listen on {addr}: {source} (is another dockscale running? choose another --listen)"
    )]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Docker(#[source] DockerError),
    #[error("{0}")]
    Watch(#[source] crate::watch::WatchError),
    #[error("{0}")]
    Haproxy(#[source] ManagedError),
    #[error("{0}")]
    ExternalHaproxy(#[source] ApiError),
    #[error("cannot make {path} absolute: {source}")]
    Resolve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the controller until `shutdown` resolves; the replicas keep running after.
pub async fn run(args: RunArgs, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    let args = resolve_paths(args)?;
    let services = manifest::load(&args.paths).map_err(AppError::Spec)?;
    std::fs::create_dir_all(&args.state_dir).map_err(|source| AppError::StateDir {
        path: args.state_dir.clone(),
        source,
    })?;
    let runtime = Arc::new(DockerRuntime::connect().await.map_err(AppError::Docker)?);
    runtime.ping().await.map_err(AppError::Docker)?;

    let status = StatusHandle::default();
    let metrics = Arc::new(Metrics::new());
    // The first read of the spec counts like every later one.
    metrics.spec_reloads_total.with_label_values(&["ok"]).inc();
    metrics.spec_valid.set(1);
    let settings = Settings {
        paths: args.paths.clone(),
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
    let lb = match &args.haproxy_socket {
        Some(socket) => {
            HaproxyBalancer::external(Endpoint::parse(socket), metrics.clone(), status.clone())
                .await
                .map_err(AppError::ExternalHaproxy)?
        }
        None => {
            let needs_haproxy = services
                .iter()
                .any(|l| l.service.spec.load_balancer.is_some());
            if needs_haproxy {
                crate::haproxy::managed::locate().map_err(AppError::Haproxy)?;
            }
            HaproxyBalancer::managed(
                &args.state_dir,
                args.haproxy_exporter,
                metrics.clone(),
                status.clone(),
            )
            .map_err(AppError::Haproxy)?
        }
    };
    let lb = Arc::new(lb);
    let controller = Controller::new(
        settings,
        services,
        runtime,
        lb,
        status.clone(),
        metrics.clone(),
    );

    if args.dry_run {
        let text = controller.dry_run().await.map_err(AppError::Docker)?;
        print!("{text}");
        return Ok(());
    }

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| AppError::Listen {
            addr: args.listen,
            source,
        })?;
    let (changes_tx, changes_rx) = mpsc::unbounded_channel();
    let _watch = crate::watch::watch(&args.paths, changes_tx).map_err(AppError::Watch)?;

    let (stop_http, mut http_stopped) = watch::channel(false);
    let state = AppState {
        status: status.clone(),
        metrics,
    };
    let local = listener.local_addr().ok();
    let server = tokio::spawn(http::serve(listener, state, async move {
        let _ = http_stopped.wait_for(|stop| *stop).await;
    }));
    tracing::info!(paths = ?args.paths, listen = ?local, "dockscale running");

    controller.run(changes_rx, shutdown).await;

    let _ = stop_http.send(true);
    match server.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "http server"),
        Err(e) => tracing::warn!(error = %e, "http server task"),
        Ok(Ok(())) => {}
    }
    Ok(())
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
    args.paths = args
        .paths
        .iter()
        .map(|p| absolute(p))
        .collect::<Result<_, _>>()?;
    Ok(args)
}
