//! `dockscale-webapp`: reads its environment, binds `0.0.0.0:$PORT` and serves until
//! SIGTERM or SIGINT, then finishes the requests in flight and exits 0.
//!
//! Environment: `PORT` (default 8080), `GREETING`, `LOG_REQUESTS=1`, `HOSTNAME` (only
//! if the system has no hostname), and the fault knobs `FAIL_RATE`, `EXTRA_LATENCY_MS`
//! and `HEALTH_FAIL_FILE`. See the library docs for the HTTP surface and what each knob
//! does; an invalid value stops the process before it listens.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context as _;
use dockscale_webapp::{run, Config};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_lookup(|name| std::env::var(name).ok())?;
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
    Ok(())
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
