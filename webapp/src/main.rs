//! `dockscale-webapp`: reads its environment, binds `0.0.0.0:$PORT` and serves until
//! SIGTERM or SIGINT, then finishes the requests in flight and exits 0.
//!
//! `dockscale-webapp check` instead probes `http://127.0.0.1:$PORT/healthz` once and
//! exits 0 on a `2xx`, 1 otherwise: the image's health-check command.
//!
//! Environment: `PORT` (default 8080), `GREETING`, `LOG_REQUESTS=1`, `HOSTNAME` (only
//! if the system has no hostname), and the fault knobs `FAIL_RATE`, `EXTRA_LATENCY_MS`
//! and `HEALTH_FAIL_FILE`. See the library docs for what each does; an invalid value
//! stops the process before it listens.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context as _;
use dockscale_webapp::{probe, run, Config};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "usage: dockscale-webapp [check]";

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let config = Config::from_lookup(|name| std::env::var(name).ok())?;
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next()) {
        (None, _) => serve(config).await,
        (Some(command), None) if command == "check" => Ok(check(config.port).await),
        (Some(command), _) => {
            eprintln!("{USAGE}\nunexpected argument {command:?}");
            Ok(ExitCode::from(2))
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let faults = config.faults();
    if !faults.is_empty() {
        eprintln!("dockscale-webapp: faults on: {}", faults.join(" "));
    }
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.port));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    // Handlers are installed before the first request, so an early SIGTERM still
    // shuts down gracefully (and works even as PID 1 without an init).
    let shutdown = shutdown_signal().context("cannot install signal handlers")?;
    println!(
        "dockscale-webapp listening on {} as {}",
        listener.local_addr()?,
        config.hostname
    );
    run(listener, config, shutdown).await?;
    println!("dockscale-webapp stopped");
    Ok(ExitCode::SUCCESS)
}

/// `check`: one probe of this container's own server, reported on one line (Docker
/// keeps a health check's output in the container's health log).
async fn check(port: u16) -> ExitCode {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match probe::healthz(addr, probe::CHECK_TIMEOUT).await {
        Ok(health) if health.is_healthy() => {
            println!("healthy: {}", health.status);
            ExitCode::SUCCESS
        }
        Ok(health) => {
            eprintln!("unhealthy: {}: {}", health.status, health.body);
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("unhealthy: {:#}", anyhow::Error::from(error));
            ExitCode::FAILURE
        }
    }
}

/// Completes on the first SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        println!("dockscale-webapp: {name}, finishing requests in flight");
    })
}
