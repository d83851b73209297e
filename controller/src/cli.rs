//! The command line, as fixed in DESIGN.md. Every flag documents its default.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::spec::{Duration, Runtime};

#[derive(Parser, Debug)]
#[command(
    name = "dockscale",
    version = crate::version::LONG,
    about = "Keeps Docker replicas at the count a spec file asks for, behind HAProxy",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller on spec files or directories.
    Run(RunArgs),
    /// Check spec files; print `file:line:col: message` per error and exit 1 on any.
    Validate {
        /// Spec files or directories (`*.yaml`, `*.yml`).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Check for this runtime too: a field that means nothing there is an error.
        #[arg(long, value_enum, default_value_t = Runtime::Docker)]
        runtime: Runtime,
    },
    /// Print the JSON Schema of a spec document.
    Schema {
        /// The document kind.
        #[arg(long, value_enum, default_value_t = SchemaKind::ScaledService)]
        kind: SchemaKind,
    },
    /// Show the services of a running controller (a table), or one service's
    /// conditions and events.
    Status {
        /// One service to describe.
        name: Option<String>,
        /// Address of the controller's HTTP server (its --listen).
        #[arg(long, default_value = "127.0.0.1:9180")]
        addr: SocketAddr,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = crate::status_cli::Output::Table)]
        output: crate::status_cli::Output,
    },
    /// Control and inspect a service's rollout (a canary) through the controller's
    /// HTTP API.
    Rollout {
        #[command(subcommand)]
        action: crate::rollout_cli::RolloutAction,
    },
    /// Replay a recorded load series through the autoscaler; print the timeline as CSV
    /// (`t_seconds,demand,recommended,replicas,reason,signal,schedule_floor`).
    Simulate {
        /// The spec file (or directory) with the service.
        spec: PathBuf,
        /// The series: CSV `t_seconds,scur,qcur,qtime`, one row per sample; an empty
        /// cell is a failed sample.
        #[arg(long)]
        series: PathBuf,
        /// The service to simulate. Default: the only one with `autoscale`.
        #[arg(long)]
        service: Option<String>,
        /// How long a new replica takes to become ready.
        #[arg(long, default_value = "5s")]
        startup_delay: Duration,
        /// Also draw demand and replicas over time into this SVG file (and the
        /// schedule floor, for a service with `autoscale.schedules`).
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
        /// Where the series starts on the wall clock (RFC 3339): the sample at
        /// `t_seconds` is taken at START + t_seconds, and `autoscale.schedules` are
        /// read against that time. The default is a fixed Monday midnight UTC, so a
        /// replay never depends on the day it runs.
        #[arg(
            long,
            value_name = "RFC3339",
            default_value = crate::autoscale::simulate::DEFAULT_START,
            value_parser = crate::autoscale::simulate::parse_start
        )]
        start: std::time::SystemTime,
    },
    /// Print a service's replicas' logs, merged, each line prefixed with its replica.
    ///
    /// Read from the Docker engine (`DOCKER_HOST`, else /var/run/docker.sock), not
    /// from the controller, so it works while no controller runs. With --follow, the
    /// replicas that start later (replacements, scale-ups) are followed too.
    Logs(LogsArgs),
    /// Print the events of every service of a running controller, oldest first.
    ///
    /// Read from its /api/v1/events; with --watch, from /api/v1/events?watch=true, a
    /// stream that ends when the controller stops.
    Events {
        /// Keep printing events as they happen, until interrupted.
        #[arg(short, long)]
        watch: bool,
        /// Address of the controller's HTTP server (its --listen).
        #[arg(long, default_value = "127.0.0.1:9180")]
        addr: SocketAddr,
        /// Output format: a table, or one JSON object per event and line.
        #[arg(short, long, value_enum, default_value_t = crate::status_cli::Output::Table)]
        output: crate::status_cli::Output,
    },
    /// Print the version and the git revision of this build.
    Version {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = crate::status_cli::Output::Table)]
        output: crate::status_cli::Output,
    },
    /// Print a shell completion script.
    ///
    /// bash: source it, or put it in /usr/share/bash-completion/completions/dockscale;
    /// zsh: `_dockscale` in a directory of $fpath; fish: ~/.config/fish/completions/.
    /// The Debian package installs all three.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (dockscale.1 and one per subcommand) into a directory.
    Man {
        /// The directory (created if missing).
        dir: PathBuf,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct LogsArgs {
    /// The service (`metadata.name`).
    pub name: String,

    /// Keep printing new lines, and the lines of replicas that start later, until
    /// interrupted.
    #[arg(short, long)]
    pub follow: bool,

    /// Only lines since this long ago (`10m`, `90s`) or this time (RFC 3339,
    /// `2024-05-01T12:00:00Z`). Default: every line Docker kept.
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,

    /// Only the last N lines of each replica. Default: all.
    #[arg(long, value_name = "N")]
    pub tail: Option<u64>,

    /// Prefix every line with the time Docker received it.
    #[arg(short, long)]
    pub timestamps: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Spec files or directories to read (directories: `*.yaml`/`*.yml`, files
    /// without a dockscale document are skipped).
    #[arg(default_value = ".")]
    pub paths: Vec<PathBuf>,

    /// Where the managed HAProxy's config, socket and pid file live.
    #[arg(long, default_value = ".dockscale")]
    pub state_dir: PathBuf,

    /// Reconcile every service (and re-read the spec) at least this often.
    #[arg(long, default_value = "10s")]
    pub sync_period: Duration,

    /// Address of the HTTP server (metrics, health, status API).
    #[arg(long, default_value = "127.0.0.1:9180")]
    pub listen: SocketAddr,

    /// A file holding the API token: the write endpoints (`dockscale rollout pause`,
    /// ...) then need it as a bearer token. Without it they are served on a loopback
    /// --listen only (elsewhere they answer 403). Default: none.
    #[arg(long, value_name = "PATH")]
    pub api_token_file: Option<PathBuf>,

    /// Drive an existing HAProxy through this runtime API socket (a unix socket path
    /// or HOST:PORT) instead of starting one. Default: managed HAProxy.
    #[arg(long, value_name = "PATH|HOST:PORT")]
    pub haproxy_socket: Option<String>,

    /// Managed HAProxy only: where its Prometheus exporter listens (`/metrics`, and the
    /// stats page at `/stats`).
    #[arg(long, default_value = "127.0.0.1:9181")]
    pub haproxy_exporter: SocketAddr,

    /// How often the autoscaler samples HAProxy's backend statistics.
    #[arg(long, default_value = "2s")]
    pub metrics_interval: Duration,

    /// Docker creates in flight at once, per service.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_parallel: u16,

    /// First back-off before replacing a replica that keeps exiting (then doubling).
    #[arg(long, default_value = "10s")]
    pub crash_backoff_base: Duration,

    /// Longest back-off before replacing a replica that keeps exiting.
    #[arg(long, default_value = "5m")]
    pub crash_backoff_max: Duration,

    /// A replica that ran this long resets the crash back-off.
    #[arg(long, default_value = "10m")]
    pub crash_backoff_reset: Duration,

    /// Where the claim on the Docker engine lives: a controller that finds the engine
    /// claimed by another (in the same directory) exits naming it, or waits with
    /// --standby. Every dockscale driving one engine must use the same directory.
    /// Default: /run/dockscale as root, else $XDG_RUNTIME_DIR/dockscale.
    #[arg(long, value_name = "DIR")]
    pub lock_dir: Option<PathBuf>,

    /// When another dockscale drives the engine, wait and take over once it stops or
    /// dies (checked every 200ms) instead of exiting.
    #[arg(long)]
    pub standby: bool,

    /// What runs the replicas: `docker` (containers on this engine) or `swarm` (one
    /// Swarm service per spec, through the swarm manager DOCKER_HOST points at).
    #[arg(long, value_enum, default_value_t = Runtime::Docker)]
    pub runtime: Runtime,

    /// Swarm runtime: a standby controller takes over this long after the leader's
    /// lease stopped moving (the leader stops acting after two thirds of it).
    #[arg(long, default_value = "15s")]
    pub lease_duration: Duration,

    /// The Docker client configuration directory whose `config.json` holds the
    /// registry credentials (`auths`, credential helpers) for image pulls, as the docker
    /// CLI reads it. Default: $DOCKER_CONFIG, else ~/.docker.
    #[arg(long, value_name = "DIR")]
    pub docker_config: Option<PathBuf>,

    /// Observe once, print the plan for every service and exit without changing
    /// anything.
    #[arg(long)]
    pub dry_run: bool,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_version_names_the_git_revision() {
        let version = Cli::command().render_version();
        assert!(version.contains(crate::version::GIT_REVISION), "{version}");
    }

    #[test]
    fn logs_takes_the_flags_of_docker_compose_logs() {
        let cli = Cli::try_parse_from([
            "dockscale",
            "logs",
            "webapp",
            "-f",
            "--since",
            "10m",
            "--tail",
            "5",
        ])
        .expect("parses");
        let Command::Logs(args) = cli.command else {
            panic!("not logs");
        };
        assert_eq!(args.name, "webapp");
        assert!(args.follow);
        assert_eq!(args.since.as_deref(), Some("10m"));
        assert_eq!(args.tail, Some(5));
    }

    #[test]
    fn run_defaults_match_the_design() {
        let cli = Cli::try_parse_from(["dockscale", "run"]).expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert_eq!(args.paths, vec![PathBuf::from(".")]);
        assert_eq!(args.state_dir, PathBuf::from(".dockscale"));
        assert_eq!(args.listen.to_string(), "127.0.0.1:9180");
        assert_eq!(args.sync_period, Duration::from_secs(10));
        assert!(args.haproxy_socket.is_none());
        assert_eq!(args.runtime, Runtime::Docker);
        assert_eq!(args.lease_duration, Duration::from_secs(15));
    }
}

/// The kinds of spec documents, for `dockscale schema --kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaKind {
    #[value(name = "ScaledService")]
    ScaledService,
    #[value(name = "Frontend")]
    Frontend,
}
