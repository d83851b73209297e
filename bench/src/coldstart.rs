//! Cold starts: the first requests to a service at zero replicas with a warm pool
//! (`autoscale.warmPool`) and without one, against the floor of a plain `docker run`
//! of the same image and a wait for its port; and the scale-up of a load step with a
//! pool and without. Only when named (`bench/run --only coldstart`); its own file,
//! `bench/COLDSTART.md`.
//!
//! The rounds alternate (with a pool, without, the floor) so that the machine's drift
//! falls on all three alike; before each round both services are at zero (no replica
//! running or draining, no server in the backend, the pool full). Every request is a
//! fresh connection through the managed HAProxy; an answer other than 200, or none,
//! counts as lost.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dockscale_e2e::{try_http_get, try_sh, wait_until};

use crate::measure::fmt_stats;
use crate::world::{reached, start_hey, Dockscale, Spec, World, POLL};

/// Concurrent requests sent at zero in each round.
const BURST: usize = 8;

fn zero_spec(pool: Option<u32>) -> Spec {
    let mut spec = Spec::lb(0);
    spec.extra = format!(
        "  autoscale:
    minReplicas: 0
    maxReplicas: 3
    target: {{inflightPerReplica: 8}}
    scaleToZero: {{idleAfter: 2s, activationTimeout: 30s}}
{}",
        pool_line(pool)
    );
    spec.extra_args = vec!["--metrics-interval".to_owned(), "1s".to_owned()];
    spec
}

fn step_spec(pool: Option<u32>) -> Spec {
    let mut spec = Spec::lb(1);
    spec.maxconn = 4;
    spec.extra = format!(
        "  autoscale:
    minReplicas: 1
    maxReplicas: 6
    target: {{inflightPerReplica: 4}}
    behavior:
      scaleUp:   {{stabilizationWindow: 0s, maxStep: 5, period: 6s}}
      scaleDown: {{stabilizationWindow: 60s, maxStep: 2, period: 6s}}
{}",
        pool_line(pool)
    );
    spec.extra_args = vec!["--metrics-interval".to_owned(), "1s".to_owned()];
    spec
}

fn pool_line(pool: Option<u32>) -> String {
    pool.map(|n| format!("    warmPool: {{size: {n}}}\n"))
        .unwrap_or_default()
}

/// The service's warm pool as its status shows it: (ready, warming); (0, 0) without.
async fn pool_counts(d: &Dockscale) -> (u64, u64) {
    let s = d.status().await;
    let p = &s["warmPool"];
    (
        p["ready"].as_u64().unwrap_or(0),
        p["warming"].as_u64().unwrap_or(0),
    )
}

/// Waits until the service is at zero: nothing desired, running or draining, no
/// server in the backend, and its pool (of `pool`) full and paused.
async fn at_zero(d: &Dockscale, pool: u64) -> anyhow::Result<()> {
    let check = || async {
        let s = d.status().await;
        let r = &s["replicas"];
        let seen = (
            r["desired"].as_u64(),
            r["current"].as_u64(),
            r["terminating"].as_u64(),
            d.serving().await,
            pool_counts(d).await,
        );
        reached(seen, (Some(0), Some(0), Some(0), 0, (pool, 0)))
    };
    wait_until("at zero", Duration::from_secs(90), POLL, check).await?;
    Ok(())
}

/// One burst at zero: the first request's latency, the slowest, and how many were
/// lost.
async fn burst(bind: SocketAddr) -> (Duration, Duration, usize) {
    let requests: Vec<_> = (0..BURST)
        .map(|_| {
            tokio::spawn(async move {
                let sent = Instant::now();
                let answer = try_http_get(bind, "/").await;
                (answer.map(|(code, _)| code), sent.elapsed())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for r in requests {
        match r.await {
            Ok(a) => answers.push(a),
            Err(_) => answers.push((Err(std::io::Error::other("task")), Duration::ZERO)),
        }
    }
    let first = answers.first().map_or(Duration::ZERO, |(_, t)| *t);
    let slowest = answers.iter().map(|(_, t)| *t).max().unwrap_or_default();
    let lost = answers
        .iter()
        .filter(|(code, _)| !matches!(code, Ok(200)))
        .count();
    (first, slowest, lost)
}

/// The floor: `docker run` of the same image on the same network, until it answers
/// 200 on its port.
async fn floor(world: &World, round: usize) -> anyhow::Result<Duration> {
    let name = format!("{}-coldfloor-{round}", world.id);
    let start = Instant::now();
    world.run_container(&name)?;
    let ip = world.container_ip(&name)?;
    let addr: SocketAddr = format!("{ip}:8080").parse().context("container address")?;
    let answers = || async {
        reached(
            try_http_get(addr, "/").await.ok().map(|(c, _)| c),
            Some(200),
        )
    };
    let result = wait_until(
        "the plain container to answer",
        Duration::from_secs(30),
        Duration::from_millis(5),
        answers,
    )
    .await;
    let took = start.elapsed();
    let _ = try_sh("docker", &["rm", "-f", &name]);
    result?;
    Ok(took)
}

/// A load step on one replica: the time until 6 serve, from the start of the load and
/// from the autoscaler's decision, and the requests that failed.
struct Step {
    decided: Duration,
    enough: Duration,
    requests: u64,
    failed: u64,
}

async fn load_step(world: &mut World, pool: Option<u32>, tag: &str) -> anyhow::Result<Step> {
    let service = world.service(tag);
    let d = world.dockscale(&service, step_spec(pool)).await?;
    d.wait_serving(1, Duration::from_secs(60)).await?;
    if let Some(n) = pool {
        let full = || async { reached(pool_counts(&d).await, (u64::from(n), 0)) };
        wait_until("the pool full", Duration::from_secs(60), POLL, full).await?;
    }
    // The demand is a mean over the scale-up period: both start the load with a
    // period of idle samples behind them, whatever the pool took to fill.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let bind = d.bind().context("a bind")?;
    let load_secs = 12;
    let start = Instant::now();
    let hey = start_hey(bind, load_secs, 24, "/?delay=200")?;
    let mut decided = None;
    let mut enough = None;
    while start.elapsed() < Duration::from_secs(load_secs) && enough.is_none() {
        let s = d.status().await;
        let desired = s["replicas"]["desired"].as_u64().unwrap_or(0);
        if decided.is_none() && desired >= 6 {
            decided = Some(start.elapsed());
        }
        if decided.is_some() && d.serving().await >= 6 {
            enough = Some(start.elapsed());
        }
        tokio::time::sleep(POLL).await;
    }
    let hey = hey.wait_with_output()?;
    let text = String::from_utf8_lossy(&hey.stdout);
    world.stop_dockscale(&d);
    let (requests, failed) = hey_counts(&text);
    let (Some(decided), Some(enough)) = (decided, enough) else {
        bail!("{tag}: 6 replicas not serving within the {load_secs} s of load");
    };
    Ok(Step {
        decided,
        enough,
        requests,
        failed,
    })
}

/// hey's status code distribution and error distribution: (requests, failed).
fn hey_counts(text: &str) -> (u64, u64) {
    let count = |l: &str| -> Option<(String, u64)> {
        let rest = l.trim().strip_prefix('[')?;
        let (code, tail) = rest.split_once(']')?;
        Some((
            code.to_owned(),
            tail.split_whitespace().next()?.parse().ok()?,
        ))
    };
    let (codes, errors) = text.split_once("Error distribution:").unwrap_or((text, ""));
    let codes: Vec<(String, u64)> = codes.lines().filter_map(count).collect();
    let errors: u64 = errors.lines().filter_map(count).map(|(_, n)| n).sum();
    let answered: u64 = codes.iter().map(|(_, n)| n).sum();
    let not_ok: u64 = codes
        .iter()
        .filter(|(c, _)| c != "200")
        .map(|(_, n)| n)
        .sum();
    (answered + errors, not_ok + errors)
}

/// "median (min–max) ms".
fn ms(samples: &[Duration]) -> String {
    let v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    format!("{} ms", fmt_stats(&v, 0))
}

pub async fn coldstart(world: &mut World, quick: bool) -> anyhow::Result<String> {
    let rounds = if quick { 2 } else { 7 };
    let warm_service = world.service("coldwarm");
    let cold_service = world.service("coldcold");
    let warm = world.dockscale(&warm_service, zero_spec(Some(1))).await?;
    let cold = world.dockscale(&cold_service, zero_spec(None)).await?;
    let warm_bind = warm.bind().context("a bind")?;
    let cold_bind = cold.bind().context("a bind")?;
    let (mut warm_first, mut warm_all, mut warm_lost) = (Vec::new(), Vec::new(), 0);
    let (mut cold_first, mut cold_all, mut cold_lost) = (Vec::new(), Vec::new(), 0);
    let mut floors = Vec::new();
    for round in 0..rounds {
        at_zero(&warm, 1).await?;
        at_zero(&cold, 0).await?;
        let (first, slowest, lost) = burst(warm_bind).await;
        warm_first.push(first);
        warm_all.push(slowest);
        warm_lost += lost;
        at_zero(&warm, 1).await?;
        at_zero(&cold, 0).await?;
        let (first, slowest, lost) = burst(cold_bind).await;
        cold_first.push(first);
        cold_all.push(slowest);
        cold_lost += lost;
        at_zero(&warm, 1).await?;
        at_zero(&cold, 0).await?;
        floors.push(floor(world, round).await?);
        println!(
            "coldstart round {}: warm {:.0} ms, cold {:.0} ms, floor {:.0} ms",
            round + 1,
            warm_first[round].as_secs_f64() * 1000.0,
            cold_first[round].as_secs_f64() * 1000.0,
            floors[round].as_secs_f64() * 1000.0
        );
    }
    world.stop_dockscale(&warm);
    world.stop_dockscale(&cold);

    let steps = if quick { 1 } else { 3 };
    let mut with_pool = Vec::new();
    let mut without = Vec::new();
    for i in 0..steps {
        with_pool.push(load_step(world, Some(5), &format!("stepwarm{i}")).await?);
        without.push(load_step(world, None, &format!("stepcold{i}")).await?);
    }

    let requests = rounds * BURST;
    let mut out = format!(
        "## First requests at zero replicas\n\
         \n\
         {rounds} rounds. Each round, at zero (no replica, nothing draining, no server in the \
         backend; with the pool, its one container paused): {BURST} concurrent GETs of `/`, each \
         on a fresh connection through the managed HAProxy, which holds them (`scaleToZero: \
         {{idleAfter: 2s, activationTimeout: 30s}}`) until a replica is UP. *First request*: the \
         latency of the first one sent; *burst*: of the slowest. The floor is a plain `docker \
         run -d --init --memory 32m --network NET` of the same image and GETs of its port every \
         5 ms until one answers 200 (what any start of a container costs, without a controller \
         or a load balancer). Medians with min–max.\n\
         \n\
         | | first request | burst of {BURST} | requests lost |\n\
         | --- | --- | --- | --- |\n"
    );
    let _ = writeln!(
        out,
        "| dockscale, `warmPool: {{size: 1}}` | {} | {} | {warm_lost} of {requests} |",
        ms(&warm_first),
        ms(&warm_all)
    );
    let _ = writeln!(
        out,
        "| dockscale, no pool (cold create) | {} | {} | {cold_lost} of {requests} |",
        ms(&cold_first),
        ms(&cold_all)
    );
    let _ = writeln!(
        out,
        "| floor: `docker run` + wait for the port | {} | - | - |",
        ms(&floors)
    );
    let step_row = |s: &[Step], f: fn(&Step) -> Duration| -> String {
        ms(&s.iter().map(f).collect::<Vec<_>>())
    };
    let _ = write!(
        out,
        "\n## Scale-up of a load step\n\
         \n\
         {steps} repetition(s). One replica serving (`maxconn: 4`, `inflightPerReplica: 4`, \
         scale-up `maxStep: 5`, no stabilization) and idle for 8 s (more than the 6 s period \
         the demand is averaged over), then `hey -z 12s -c 24 .../?delay=200`: 24 \
         requests in flight need 6 replicas, which the autoscaler asks for in one step. \
         *Decision*: from the start of the load until the status desires 6. *To 6 serving*: \
         until 6 servers are UP in HAProxy; *provisioning*: the difference, the part a warm \
         pool shortens (`warmPool: {{size: 5}}`, full before the load starts).\n\
         \n\
         | | decision | to 6 serving | provisioning | failed requests |\n\
         | --- | --- | --- | --- | --- |\n"
    );
    for (what, s) in [
        ("with `warmPool: {size: 5}`", &with_pool),
        ("without a pool", &without),
    ] {
        let (requests, failed) = s
            .iter()
            .fold((0, 0), |(r, f), x| (r + x.requests, f + x.failed));
        let _ = writeln!(
            out,
            "| {what} | {} | {} | {} | {failed} of {requests} |",
            step_row(s, |x| x.decided),
            step_row(s, |x| x.enough),
            step_row(s, |x| x.enough.saturating_sub(x.decided)),
        );
    }
    Ok(out)
}
