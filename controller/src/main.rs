use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use dockscale::cli::{Cli, Command, LogFormat, RunArgs};
use dockscale::status_cli::Output;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { paths, runtime } => {
            match dockscale::spec::manifest::load_all(&paths, runtime) {
                Ok(loaded) if loaded.frontends.is_empty() => {
                    println!("{} service(s) valid", loaded.services.len());
                    ExitCode::SUCCESS
                }
                Ok(loaded) => {
                    println!(
                        "{} service(s) and {} frontend(s) valid",
                        loaded.services.len(),
                        loaded.frontends.len()
                    );
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
            start,
        } => match simulate(
            &spec,
            &series,
            service.as_deref(),
            startup_delay.get(),
            plot.as_deref(),
            start,
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
            match block_on(dockscale::status_cli::run(addr, name.as_deref(), output)) {
                Ok(Ok(text)) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Ok(Err(e)) => failed(&e),
                Err(code) => code,
            }
        }
        Command::Rollout { action } => match block_on(dockscale::rollout_cli::run(&action)) {
            Ok(Ok(text)) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Ok(Err(e)) => failed(&e),
            Err(code) => code,
        },
        Command::Events {
            watch,
            addr,
            output,
        } => match block_on(dockscale::events_cli::run(addr, watch, output)) {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(e)) => failed(&e),
            Err(code) => code,
        },
        Command::Logs(args) => match block_on(dockscale::logs_cli::run(&args)) {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(e)) => failed(&e),
            Err(code) => code,
        },
        Command::Version { output } => {
            match output {
                Output::Table => println!("dockscale {}", dockscale::version::LONG),
                Output::Json => println!("{}", serde_json::json!(dockscale::version::build_info())),
            }
            ExitCode::SUCCESS
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "dockscale",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Man { dir } => match man_pages(&dir) {
            Ok(written) => {
                for path in written {
                    println!("{}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "error: cannot write the man pages into {}: {e}",
                    dir.display()
                );
                ExitCode::FAILURE
            }
        },
        Command::Schema { kind } => {
            let text = match kind {
                dockscale::cli::SchemaKind::ScaledService => dockscale::schema_json(),
                dockscale::cli::SchemaKind::Frontend => dockscale::frontend_schema_json(),
            };
            print!("{text}");
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

/// Runs a command's future on a runtime of its own (one thread: a CLI waits on one
/// server); `Err` is the exit code when no runtime could be started.
fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, ExitCode> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Ok(runtime.block_on(f)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

fn failed(e: &(dyn std::error::Error + 'static)) -> ExitCode {
    eprintln!("error: {}", dockscale::report::Chain(e));
    ExitCode::FAILURE
}

/// `dockscale.1` and `dockscale-<subcommand>.1` for every subcommand, from the clap
/// definitions (what `--help` says, as roff).
fn man_pages(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut command = Cli::command();
    command.build();
    let mut written = Vec::new();
    let mut write = |name: String, page: clap::Command| -> std::io::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut roff = Vec::new();
        clap_mangen::Man::new(page).render(&mut roff)?;
        std::fs::write(&path, roff)?;
        written.push(path);
        Ok(())
    };
    // `help` is clap's own; `dockscale.1` lists it.
    let subcommands = command
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help");
    for sub in subcommands {
        // Built, a subcommand is displayed as `dockscale-run` and synopsized as
        // `dockscale run`.
        write(format!("dockscale-{}", sub.get_name()), sub.clone())?;
    }
    write("dockscale".to_owned(), command)?;
    Ok(written)
}

fn simulate(
    spec: &std::path::Path,
    series: &std::path::Path,
    service: Option<&str>,
    startup_delay: std::time::Duration,
    plot: Option<&std::path::Path>,
    start: std::time::SystemTime,
) -> anyhow::Result<String> {
    use dockscale::autoscale::simulate;
    let services: Vec<_> = dockscale::spec::manifest::load(&[spec.to_owned()])
        .map_err(|e| anyhow::anyhow!("the spec does not validate:\n{e}"))?
        .into_iter()
        .map(|l| l.service)
        .collect();
    let service = simulate::pick_service(&services, service)?;
    let rows = simulate::read_series(series)?;
    let timeline = simulate::simulate(service, &rows, startup_delay, start)?;
    if let Some(path) = plot {
        let title = format!("{}: {}", service.name(), series.display());
        let schedules = service
            .spec
            .autoscale
            .as_ref()
            .is_some_and(|a| !a.schedules.is_empty());
        simulate::plot(path, &title, &timeline, schedules)?;
    }
    Ok(simulate::to_csv(&timeline))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr: stdout carries what a command prints (`--dry-run`'s plan).
    // No colour codes where nobody reads colours (the journal, a log file).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    dockscale::app::run(args, shutdown_signal(), hangups()).await?;
    Ok(())
}

/// SIGHUP, each time (`systemctl reload dockscale`): re-read the spec.
fn hangups() -> impl futures::Stream<Item = ()> + Send + 'static {
    use futures::StreamExt;
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(hangup) => {
            futures::stream::unfold(
                hangup,
                |mut s| async move { s.recv().await.map(|()| ((), s)) },
            )
            .left_stream()
        }
        Err(e) => {
            tracing::warn!(error = %dockscale::report::Chain(&e), "cannot listen for SIGHUP");
            futures::stream::pending().right_stream()
        }
    }
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
