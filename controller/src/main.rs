use std::process::ExitCode;

use clap::Parser;

use dockscale::cli::{Cli, Command, LogFormat, RunArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { paths, runtime } => {
            match dockscale::spec::manifest::load_for(&paths, runtime) {
                Ok(services) => {
                    println!("{} service(s) valid", services.len());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Simulate {
            spec,
            series,
            service,
            startup_delay,
            plot,
        } => match simulate(
            &spec,
            &series,
            service.as_deref(),
            startup_delay.get(),
            plot.as_deref(),
        ) {
            Ok(csv) => {
                print!("{csv}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}", dockscale::report::chain(e.as_ref()));
                ExitCode::FAILURE
            }
        },
        Command::Status { name, addr, output } => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(dockscale::status_cli::run(addr, name.as_deref(), output)) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}", dockscale::report::Chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Schema => {
            print!("{}", dockscale::schema_json());
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            init_logging(args.log_format);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let said = dockscale::report::chain(e.as_ref());
                    tracing::error!("{said}");
                    eprintln!("error: {said}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn simulate(
    spec: &std::path::Path,
    series: &std::path::Path,
    service: Option<&str>,
    startup_delay: std::time::Duration,
    plot: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    use dockscale::autoscale::simulate;
    let services: Vec<_> = dockscale::spec::manifest::load(&[spec.to_owned()])
        .map_err(|e| anyhow::anyhow!("the spec does not validate:\n{e}"))?
        .into_iter()
        .map(|l| l.service)
        .collect();
    let service = simulate::pick_service(&services, service)?;
    let rows = simulate::read_series(series)?;
    let timeline = simulate::simulate(service, &rows, startup_delay)?;
    if let Some(path) = plot {
        let title = format!("{}: {}", service.name(), series.display());
        simulate::plot(path, &title, &timeline)?;
    }
    Ok(simulate::to_csv(&timeline))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr: stdout carries what a command prints (`--dry-run`'s plan).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    dockscale::app::run(args, shutdown_signal()).await?;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %dockscale::report::Chain(&e), "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown requested");
}
