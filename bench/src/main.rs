//! dockscale's benchmarks, side by side with what a user would pick instead, in one run
//! on one machine. `bench/run` builds everything and calls this binary; it prints a
//! table and writes `bench/RESULTS.md` (and `bench/autoscale.svg`).
//!
//! Everything it creates carries a run id (containers, networks, HAProxy and dockscale
//! processes, temporary directories) and is removed on the way out by
//! [`World::cleanup`](world::World::cleanup), which the world's `Drop` calls on an
//! error path too. Processes are ended by pid. Every load is bounded in time.

mod canary;
mod coldstart;
mod measure;
mod soak;
mod swarm;
mod world;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use measure::{median_range, Stats};

#[derive(Parser, Debug)]
#[command(about = "dockscale benchmarks (see bench/README.md)")]
struct Args {
    /// One repetition, small sizes: for development, not for RESULTS.md.
    #[arg(long)]
    quick: bool,
    /// Where to write the results (Markdown).
    #[arg(long, default_value = "bench/RESULTS.md")]
    out: PathBuf,
    /// Where to draw the autoscaling timeline.
    #[arg(long, default_value = "bench/autoscale.svg")]
    plot: PathBuf,
    /// The dockscale binary to measure.
    #[arg(long, default_value = "target/release/dockscale")]
    dockscale: PathBuf,
    /// Only these sections (pool, convergence, backend, failure, autoscale, cost;
    /// and soak, about 10 minutes, swarm, about 3, canary, about 3, and coldstart,
    /// about 3, which run only when named and write SOAK.md, SWARM.md, CANARY.md and
    /// COLDSTART.md beside --out instead).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let reps = if args.quick { 1 } else { 3 };
    let wants = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let mut world = world::World::new(&args.dockscale).await?;
    let started = std::time::Instant::now();
    let mut report = String::new();
    let machine = measure::machine();
    let _ = writeln!(report, "# dockscale benchmark results\n");
    let _ = writeln!(
        report,
        "Command: `bench/run{}`. Date: {}. {} repetition(s) per figure; medians with min–max.\n",
        if args.quick { " --quick" } else { "" },
        measure::today(),
        reps
    );
    let _ = writeln!(report, "## Machine\n\n{machine}\n");
    println!("{machine}");

    if wants("pool") {
        let section = sections::pool(&mut world, 20, reps).await?;
        println!("{section}");
        report.push_str(&section);
    }
    if wants("convergence") {
        let sizes: &[u32] = if args.quick { &[10] } else { &[10, 50] };
        let section = sections::convergence(&mut world, sizes, reps).await?;
        println!("{section}");
        report.push_str(&section);
    }
    if wants("backend") {
        let secs = if args.quick { 10 } else { 20 };
        let section = sections::backend_changes(&mut world, reps, secs).await?;
        println!("{section}");
        report.push_str(&section);
    }
    if wants("failure") {
        let section = sections::failure(&mut world, reps).await?;
        println!("{section}");
        report.push_str(&section);
    }
    if wants("autoscale") {
        let section = sections::autoscale(&mut world, &args.plot, args.quick).await?;
        println!("{section}");
        report.push_str(&section);
    }
    if wants("cost") {
        let sizes: &[u32] = if args.quick { &[0, 20] } else { &[0, 50, 200] };
        let section = sections::cost(&mut world, sizes).await?;
        println!("{section}");
        report.push_str(&section);
    }
    // The soak is not part of the full run (it would add 10 minutes to 18) and keeps
    // its own file, so that `--only soak` leaves RESULTS.md as the last full run wrote it.
    if args.only.iter().any(|o| o == "soak") {
        let soak_started = std::time::Instant::now();
        let section = soak::soak(&args.dockscale, args.quick).await?;
        println!("{section}");
        let path = args.out.with_file_name("SOAK.md");
        let text = format!(
            "# dockscale chaos soak\n\
             \n\
             Command: `bench/run --only soak{}`. Date: {}.\n\
             \n\
             ## Machine\n\
             \n\
             {machine}\n\
             \n\
             {section}\n\
             The soak took {:.0} s.\n",
            if args.quick { " --quick" } else { "" },
            measure::today(),
            soak_started.elapsed().as_secs_f64()
        );
        std::fs::write(&path, text)?;
        println!("written to {}", path.display());
    }
    // Swarm, like the soak, only when named, into a file of its own.
    if args.only.iter().any(|o| o == "swarm") {
        let section = swarm::swarm(&args.dockscale, args.quick).await?;
        println!("{section}");
        let path = args.out.with_file_name("SWARM.md");
        let text = format!(
            "# dockscale on Swarm\n\nCommand: `bench/run --only swarm{}`. Date: {}.\n\n\
             ## Machine\n\n{machine}\n\n{section}",
            if args.quick { " --quick" } else { "" },
            measure::today(),
        );
        std::fs::write(&path, text)?;
        println!("written to {}", path.display());
    }
    // The canary against a rolling update, like the swarm, only when named.
    if args.only.iter().any(|o| o == "canary") {
        let section = canary::canary(&args.dockscale, args.quick).await?;
        println!("{section}");
        let path = args.out.with_file_name("CANARY.md");
        let text = format!(
            "# dockscale canary rollouts\n\nCommand: `bench/run --only canary{}`. Date: {}.\n\n\
             ## Machine\n\n{machine}\n\n{section}",
            if args.quick { " --quick" } else { "" },
            measure::today(),
        );
        std::fs::write(&path, text)?;
        println!("written to {}", path.display());
    }
    // Cold starts with and without the warm pool, like the canary, only when named.
    if args.only.iter().any(|o| o == "coldstart") {
        let section = coldstart::coldstart(&mut world, args.quick).await?;
        println!("{section}");
        let path = args.out.with_file_name("COLDSTART.md");
        let text = format!(
            "# dockscale cold starts and the warm pool\n\nCommand: `bench/run --only \
             coldstart{}`. Date: {}.\n\n## Machine\n\n{machine}\n\n{section}",
            if args.quick { " --quick" } else { "" },
            measure::today(),
        );
        std::fs::write(&path, text)?;
        println!("written to {}", path.display());
    }
    world.cleanup();
    let own_file = ["soak", "swarm", "canary", "coldstart"];
    if args.only.is_empty() || args.only.iter().any(|o| !own_file.contains(&o.as_str())) {
        let _ = writeln!(
            report,
            "\nThe whole run took {:.0} s.",
            started.elapsed().as_secs_f64()
        );
        std::fs::write(&args.out, &report)?;
        println!("written to {}", args.out.display());
    }
    Ok(())
}

mod sections;

/// Formats a duration list as "median (min–max)" in seconds.
fn secs(samples: &[Duration]) -> String {
    let s: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
    match median_range(&s) {
        Some(Stats { median, min, max }) => format!("{median:.2} s ({min:.2}–{max:.2})"),
        None => "-".to_owned(),
    }
}

/// The median of a duration list in seconds (NaN when empty).
fn median_secs(samples: &[Duration]) -> f64 {
    let s: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
    median_range(&s).map_or(f64::NAN, |s| s.median)
}
