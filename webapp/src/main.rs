//! `dockscale-webapp`: reads its environment, binds `0.0.0.0:$PORT` and serves until
//! SIGTERM or SIGINT, then finishes the requests in flight and exits 0.
//!
//! `dockscale-webapp fs read|write|statfs PATH` looks at a mount from inside the
//! container (see the library's `fs`).
//!
//! `dockscale-webapp check` instead probes `http://127.0.0.1:$PORT/healthz` once and
//! exits 0 on a `2xx`, 1 otherwise: the image's health-check command.
//!
//! Environment: `PORT` (default 8080), `GREETING`, `LOG_REQUESTS=1`, `HOSTNAME` (only
//! if the system has no hostname), and the fault knobs `FAIL_RATE`, `EXTRA_LATENCY_MS`,
//! `HEALTH_FAIL_FILE`, `EXIT_AFTER_MS`/`EXIT_CODE` and `ALLOCATE_MB`. See the library
//! docs for what each does; an invalid value stops the process before it listens.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use dockscale_webapp::{fault, probe, run, Config};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "usage: dockscale-webapp [check | fs read|write|statfs PATH]";

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let config = Config::from_lookup(|name| std::env::var(name).ok())?;
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next()) {
        (None, _) => serve(config).await,
        (Some(command), None) if command == "check" => Ok(check(config.port).await),
        (Some(command), Some(op)) if command == "fs" => {
            let rest: Vec<_> = std::iter::once(op).chain(args).collect();
            Ok(fs_command(&rest))
        }
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
    // Held until `main` returns, so the memory stays charged to the process.
    let _ballast = allocate(config.allocate_mib)?;
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
    if let Some(after) = config.exit_after {
        tokio::spawn(exit_after(after, config.exit_code));
    }
    run(listener, config, shutdown).await?;
    println!("dockscale-webapp stopped");
    Ok(ExitCode::SUCCESS)
}

/// `ALLOCATE_MB`: the ballast, logged before (an OOM kill may follow) and after.
fn allocate(mib: usize) -> anyhow::Result<Vec<u8>> {
    if mib == 0 {
        return Ok(Vec::new());
    }
    eprintln!("dockscale-webapp: ALLOCATE_MB={mib}: allocating and writing {mib} MiB");
    let ballast =
        fault::ballast(mib).with_context(|| format!("cannot allocate ALLOCATE_MB={mib} MiB"))?;
    eprintln!("dockscale-webapp: ALLOCATE_MB={mib}: holding {mib} MiB");
    Ok(ballast)
}

/// `EXIT_AFTER_MS`: exits the whole process with `code` once `after` has passed,
/// dropping the requests in flight, as a crash would.
async fn exit_after(after: Duration, code: u8) {
    tokio::time::sleep(after).await;
    eprintln!(
        "dockscale-webapp: EXIT_AFTER_MS={} elapsed, exiting with code {code}",
        after.as_millis()
    );
    std::process::exit(code.into());
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

/// `fs`: prints what [`fs::run`] says, or its error on stderr with exit code 1.
fn fs_command(args: &[std::ffi::OsString]) -> ExitCode {
    match dockscale_webapp::fs::run(args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
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
