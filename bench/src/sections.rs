//! The comparisons: worker pool, convergence, backend changes, failure reaction,
//! autoscaling and controller cost. Each returns its Markdown section.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use dockscale::autoscale::plot::{self, Line};
use dockscale_e2e::haproxy::backend_qcur;
use dockscale_e2e::{remove_by_label, try_http_get, try_sh, wait_until, WEBAPP_IMAGE as IMAGE};
use futures::StreamExt;

use crate::measure::{fmt_stats, parse_wrk, proc_usage, WrkReport};
use crate::world::{reached, running, start_hey, Dockscale, PlainHaproxy, Spec, World, POLL};
use crate::{median_secs, secs};

async fn scale_to_zero(d: &Dockscale) -> anyhow::Result<()> {
    d.set_replicas(0)?;
    let empty = || async { reached((d.running(), d.serving().await), (0, 0)) };
    wait_until("scale to 0", Duration::from_secs(180), POLL, empty).await?;
    Ok(())
}

// 1. Convergence ---------------------------------------------------------------------

async fn floor(world: &World, n: u32, tag: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let docker = world.docker.clone();
    let names: Vec<String> = (0..n)
        .map(|i| format!("{}-floor{tag}-{i}", world.id))
        .collect();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(names.clone())
        .map(|name| {
            let docker = docker.clone();
            let network = world.network.clone();
            let run = world.id.clone();
            async move {
                let body = ContainerCreateBody {
                    image: Some(IMAGE.to_owned()),
                    labels: Some([("dockscale-bench.run".to_owned(), run)].into()),
                    host_config: Some(HostConfig {
                        init: Some(true),
                        memory: Some(32 << 20),
                        network_mode: Some(network),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let options = CreateContainerOptionsBuilder::default().name(&name).build();
                let created = docker.create_container(Some(options), body).await?;
                docker.start_container(&created.id, None).await?;
                Ok(())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let took = start.elapsed();
    for r in results {
        r?;
    }
    for name in names {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = docker.remove_container(&name, Some(options)).await;
    }
    Ok(took)
}

fn compose(world: &World, n: u32) -> anyhow::Result<Duration> {
    let file = world.dir.path().join("docker-compose.yml");
    std::fs::write(
        &file,
        format!(
            "version: \"2.4\"
services:
  web:
    image: {IMAGE}
    init: true
    mem_limit: 32m
    labels:
      dockscale-bench.run: {run}
    networks: [net]
networks:
  net:
    external: true
    name: {net}
",
            run = world.id,
            net = world.network
        ),
    )?;
    let project = format!("{}compose", world.id.replace('-', ""));
    let file = file.display().to_string();
    let scale = format!("web={n}");
    let start = Instant::now();
    try_sh(
        "docker-compose",
        &["-p", &project, "-f", &file, "up", "-d", "--scale", &scale],
    )?;
    let took = start.elapsed();
    let running = running(&format!("label=com.docker.compose.project={project}"))?;
    try_sh(
        "docker-compose",
        &["-p", &project, "-f", &file, "down", "-t", "2"],
    )?;
    if running != n as usize {
        bail!("docker-compose started {running} of {n}");
    }
    Ok(took)
}

pub async fn convergence(world: &mut World, sizes: &[u32], reps: usize) -> anyhow::Result<String> {
    let service = world.service("conv");
    let d = world.dockscale(&service, Spec::lb(0)).await?;
    let mut out = String::from(
        "## 1. Convergence\n\
         \n\
         From the spec edit (`replicas: 0` → N) until N servers are UP in HAProxy's backend, \
         against `docker-compose up -d --scale web=N` (until it returns, containers running) and \
         the raw floor: N creates and starts straight through the Docker API (bollard), 8 in \
         parallel, same image, network, limits and init.\n\
         \n\
         | N | dockscale (serving via HAProxy) | raw floor (running) | docker-compose (running) | \
         dockscale / floor | dockscale / compose |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for &n in sizes {
        let (mut ds, mut fl, mut co) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..reps {
            d.set_replicas(n)?;
            let took = d.wait_serving(n as usize, Duration::from_secs(300)).await?;
            ds.push(took);
            scale_to_zero(&d).await?;
            fl.push(floor(world, n, &format!("{n}r{rep}")).await?);
            co.push(compose(world, n)?);
            println!(
                "convergence N={n} rep {rep}: dockscale {took:?}, floor {:?}, compose {:?}",
                fl[rep], co[rep]
            );
        }
        let _ = writeln!(
            out,
            "| {n} | {} | {} | {} | {:.2}x | {:.2}x |",
            secs(&ds),
            secs(&fl),
            secs(&co),
            median_secs(&ds) / median_secs(&fl),
            median_secs(&ds) / median_secs(&co)
        );
    }
    world.stop_dockscale(&d);
    Ok(out)
}

/// `docker run -d` of the demo image `n` times, 8 at a time, as a shell user would
/// (`seq N | xargs -P8 -I{} docker run -d ...`); the time until the last one returns.
fn docker_run_parallel(world: &World, n: u32, tag: &str) -> anyhow::Result<Duration> {
    let prefix = format!("{}-run{tag}", world.id);
    let script = format!(
        "seq {n} | xargs -P8 -I{{}} docker run -d --init --network {net} --memory 32m --label \
         dockscale-bench.run={run} --name {prefix}-{{}} {IMAGE} >/dev/null",
        net = world.network,
        run = world.id,
    );
    let start = Instant::now();
    try_sh("bash", &["-c", &script])?;
    let took = start.elapsed();
    let running = running(&format!("name={prefix}-"))?;
    remove_by_label(&format!("dockscale-bench.run={}", world.id))?;
    if running != n as usize {
        bail!("docker run started {running} of {n}");
    }
    Ok(took)
}

/// A worker pool (no load balancer) scaled 0 → N: from the spec edit until dockscale's
/// status reports N ready (running) replicas, against N `docker run -d`, 8 in parallel.
pub async fn pool(world: &mut World, n: u32, reps: usize) -> anyhow::Result<String> {
    let service = world.service("pool");
    let d = world.dockscale(&service, Spec::pool(0)).await?;
    let (mut ds, mut dr, mut fl) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        d.set_replicas(n)?;
        let ready = || async {
            reached(
                d.status().await["replicas"]["ready"].as_u64(),
                Some(u64::from(n)),
            )
        };
        let (_, took) = wait_until("N ready", Duration::from_secs(300), POLL, ready).await?;
        if d.running() != n as usize {
            bail!(
                "dockscale reported {n} ready but Docker runs {}",
                d.running()
            );
        }
        ds.push(took);
        scale_to_zero(&d).await?;
        dr.push(docker_run_parallel(world, n, &format!("{n}r{rep}"))?);
        fl.push(floor(world, n, &format!("pool{n}r{rep}")).await?);
        println!(
            "pool N={n} rep {rep}: dockscale {took:?}, docker run -P8 {:?}, raw floor {:?}",
            dr[rep], fl[rep]
        );
    }
    world.stop_dockscale(&d);
    Ok(format!(
        "## 0. Worker pool\n\
         \n\
         A service without a load balancer scaled from `replicas: 0` to {n} (spec edit) until \
         dockscale's status reports {n} ready (running) replicas, against `seq {n} | xargs -P8 \
         -I{{}} docker run -d --init --network NET --memory 32m dockscale-webapp:latest` until \
         the last `docker run` returns, and the raw floor of section 1 (creates and starts \
         straight through the Docker API, 8 in parallel).\n\
         \n\
         | N | dockscale | docker run -d, 8 in parallel | raw floor | dockscale / docker run | \
         dockscale / floor |\n\
         | --- | --- | --- | --- | --- | --- |\n\
         | {n} | {} | {} | {} | {:.2}x | {:.2}x |\n",
        secs(&ds),
        secs(&dr),
        secs(&fl),
        median_secs(&ds) / median_secs(&dr),
        median_secs(&ds) / median_secs(&fl)
    ))
}

// 2. Backend changes under load -----------------------------------------------------------

fn wrk(target: std::net::SocketAddr, secs: u64) -> anyhow::Result<std::process::Child> {
    Command::new("wrk")
        .args([
            "-t2",
            "-c32",
            &format!("-d{secs}s"),
            "--latency",
            &format!("http://{target}/"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting wrk (apt-get install wrk)")
}

fn finish_wrk(child: std::process::Child) -> anyhow::Result<WrkReport> {
    let out = child.wait_with_output()?;
    Ok(parse_wrk(&String::from_utf8_lossy(&out.stdout)))
}

fn row(name: &str, reports: &[WrkReport]) -> String {
    let f = |g: fn(&WrkReport) -> f64, digits| {
        fmt_stats(&reports.iter().map(g).collect::<Vec<_>>(), digits)
    };
    format!(
        "| {name} | {} | {} | {} | {} |",
        f(|r| r.requests as f64, 0),
        f(|r| r.failed as f64, 0),
        f(|r| r.p50_ms, 2),
        f(|r| r.p99_ms, 2)
    )
}

pub async fn backend_changes(world: &mut World, reps: usize, secs: u64) -> anyhow::Result<String> {
    let every = Duration::from_secs_f64(secs as f64 / 12.0);
    // dockscale: edit replicas 4 -> 5 -> 4 ... ten times.
    let service = world.service("churn");
    let d = world.dockscale(&service, Spec::lb(4)).await?;
    d.wait_serving(4, Duration::from_secs(60)).await?;
    let bind = d.bind().context("a bind")?;
    let mut runtime_api = Vec::new();
    for _ in 0..reps {
        let load = wrk(bind, secs)?;
        for i in 0..10 {
            tokio::time::sleep(every).await;
            d.set_replicas(if i % 2 == 0 { 5 } else { 4 })?;
        }
        runtime_api.push(finish_wrk(load)?);
    }
    world.stop_dockscale(&d);

    // The classic path: regenerate haproxy.cfg from the members, reload the master.
    let h = PlainHaproxy::new(world, "reload", "check inter 2s fall 3")?;
    let mut members = Vec::new();
    let mut next = 0;
    let mut add = |world: &World, members: &mut Vec<(String, String)>| -> anyhow::Result<()> {
        next += 1;
        let name = format!("{}-rl{next}", world.id);
        world.run_container(&name)?;
        let ip = world.container_ip(&name)?;
        members.push((name, ip));
        Ok(())
    };
    for _ in 0..4 {
        add(world, &mut members)?;
    }
    h.start(&members).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut control = Vec::new();
    let mut reload = Vec::new();
    for _ in 0..reps {
        control.push(finish_wrk(wrk(h.bind, secs)?)?);
        let load = wrk(h.bind, secs)?;
        for i in 0..10 {
            tokio::time::sleep(every).await;
            if i % 2 == 0 {
                add(world, &mut members)?;
                tokio::time::sleep(Duration::from_millis(300)).await; // the app listens
                h.reload(&members)?;
            } else {
                // Out of the configuration first, then stopped: the careful order.
                let (name, _) = members.remove(0);
                h.reload(&members)?;
                tokio::time::sleep(Duration::from_millis(200)).await;
                try_sh("docker", &["rm", "-f", &name])?;
            }
        }
        reload.push(finish_wrk(load)?);
    }
    h.stop();
    let mut out = format!(
        "## 2. Backend changes under load\n\
         \n\
         wrk, 2 threads, 32 connections, {secs} s per run, while the backend membership changes \
         10 times (add one, remove one). dockscale: `replicas` edited 4 → 5 → 4 ...; the runtime \
         API changes slots, HAProxy is never reloaded. Reload path: `haproxy.cfg` regenerated \
         from the member list and the master-worker HAProxy reloaded (SIGUSR2) for every change, \
         a removed member taken out of the file before it is stopped, with the same `retries 3`, \
         `option redispatch`, `retry-on`. Control: the same HAProxy, no change. Failed = non-2xx \
         responses plus socket errors.\n\
         \n\
         | path | requests | failed | p50 latency (ms) | p99 latency (ms) |\n\
         | --- | --- | --- | --- | --- |\n"
    );
    let _ = writeln!(out, "{}", row("dockscale (runtime API)", &runtime_api));
    let _ = writeln!(out, "{}", row("regenerate + reload", &reload));
    let _ = writeln!(out, "{}", row("control (no change)", &control));
    Ok(out)
}

// 3. Failure reaction ------------------------------------------------------------------------

pub async fn failure(world: &mut World, reps: usize) -> anyhow::Result<String> {
    let service = world.service("kill");
    let d = world.dockscale(&service, Spec::lb(3)).await?;
    let bind = d.bind().context("a bind")?;
    let (mut ds_time, mut ds_failed, mut ds_p99) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        d.wait_serving(3, Duration::from_secs(60)).await?;
        let load = wrk(bind, 8)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let servers = d.api().servers_state(&d.backend()).await?;
        let victim_ip = servers
            .iter()
            .find(|s| s.running() && !s.addr.is_unspecified())
            .map(|s| s.addr.to_string())
            .context("a serving server")?;
        let victim = try_sh(
            "docker",
            &[
                "ps",
                "-q",
                "--filter",
                &format!("label=dockscale.service={}", d.service),
            ],
        )?
        .split_whitespace()
        .find(|id| world.container_ip(id).ok().as_deref() == Some(victim_ip.as_str()))
        .map(str::to_owned)
        .context("the victim's container")?;
        let killed = Instant::now();
        try_sh("docker", &["kill", &victim])?;
        loop {
            let servers = d.api().servers_state(&d.backend()).await?;
            let still = servers
                .iter()
                .any(|s| s.addr.to_string() == victim_ip && s.running() && !s.in_maintenance());
            if !still {
                break;
            }
            if killed.elapsed() > Duration::from_secs(30) {
                bail!("the killed replica stayed in rotation");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ds_time.push(killed.elapsed());
        let report = finish_wrk(load)?;
        ds_failed.push(report.failed as f64);
        ds_p99.push(report.p99_ms);
    }
    world.stop_dockscale(&d);

    // HAProxy's health checks alone.
    let h = PlainHaproxy::new(world, "checks", "check inter 2s fall 3")?;
    let mut members = Vec::new();
    for i in 0..3 {
        let name = format!("{}-hc{i}", world.id);
        world.run_container(&name)?;
        members.push((name.clone(), world.container_ip(&name)?));
    }
    h.start(&members).await?;
    let (mut hc_time, mut hc_failed, mut hc_p99) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let load = wrk(h.bind, 20)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (victim, victim_ip) = members[0].clone();
        let killed = Instant::now();
        try_sh("docker", &["kill", &victim])?;
        loop {
            let servers = h.api().servers_state("be").await?;
            let up = servers
                .iter()
                .any(|s| s.addr.to_string() == victim_ip && s.running());
            if !up {
                break;
            }
            if killed.elapsed() > Duration::from_secs(30) {
                bail!("HAProxy never marked the killed server down");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        hc_time.push(killed.elapsed());
        let report = finish_wrk(load)?;
        hc_failed.push(report.failed as f64);
        hc_p99.push(report.p99_ms);
        // Replace the member for the next repetition.
        try_sh("docker", &["rm", "-f", &victim])?;
        members.remove(0);
        let name = format!("{}-hcr{rep}", world.id);
        world.run_container(&name)?;
        members.push((name.clone(), world.container_ip(&name)?));
        h.reload(&members)?;
    }
    h.stop();
    let mut out = String::from(
        "## 3. Failure reaction\n\
         \n\
         `docker kill` of one of 3 replicas under wrk load (32 connections): time from the kill \
         until HAProxy stops sending the server traffic (polled every 10 ms through the runtime \
         API), and the failed requests of that run. dockscale takes the server out on Docker's \
         `die` event; the baseline relies on HAProxy's health checks (`check inter 2s fall 3`). \
         Both HAProxys retry a request elsewhere after `timeout connect 500ms` (a dead \
         container's address goes silent), so traffic sent to the dead server shows as latency \
         (p99 of the run: dockscale's wrk runs 8 s, the baseline's 20 s) rather than as \
         failures.\n\
         \n\
         | path | out of rotation after | failed requests | p99 latency (ms) |\n\
         | --- | --- | --- | --- |\n",
    );
    let _ = writeln!(
        out,
        "| dockscale (die event) | {} | {} | {} |",
        secs(&ds_time),
        fmt_stats(&ds_failed, 0),
        fmt_stats(&ds_p99, 1)
    );
    let _ = writeln!(
        out,
        "| HAProxy checks alone | {} | {} | {} |",
        secs(&hc_time),
        fmt_stats(&hc_failed, 0),
        fmt_stats(&hc_p99, 1)
    );
    Ok(out)
}

// 4. Autoscaling ------------------------------------------------------------------------------

struct Point {
    t: f64,
    demand: f64,
    qcur: f64,
    ready: f64,
    desired: f64,
}

pub async fn autoscale(world: &mut World, plot: &Path, quick: bool) -> anyhow::Result<String> {
    let service = world.service("auto");
    let mut spec = Spec::lb(1);
    spec.maxconn = 4;
    spec.extra = "  autoscale:
    minReplicas: 1
    maxReplicas: 10
    target: {inflightPerReplica: 4}
    behavior:
      scaleUp:   {stabilizationWindow: 0s,  maxStep: 4, period: 6s}
      scaleDown: {stabilizationWindow: 20s, maxStep: 2, period: 6s}
"
    .to_owned();
    spec.extra_args = vec!["--metrics-interval".to_owned(), "1s".to_owned()];
    let d = world.dockscale(&service, spec).await?;
    d.wait_serving(1, Duration::from_secs(60)).await?;
    let load_secs = if quick { 20 } else { 40 };
    let concurrency = 32;
    let needed = 8.0; // 32 in flight at 4 per replica
    let bind = d.bind().context("a bind")?;
    let start = Instant::now();
    let hey = start_hey(bind, load_secs, concurrency, "/?delay=200")?;
    let mut points = Vec::new();
    let mut settled = None;
    while start.elapsed() < Duration::from_secs(load_secs + 90) {
        let s = d.status().await;
        let p = Point {
            t: start.elapsed().as_secs_f64(),
            demand: s["autoscaler"]["demand"].as_f64().unwrap_or(0.0),
            qcur: backend_qcur(&d.api(), &d.backend()).await as f64,
            ready: s["replicas"]["ready"].as_f64().unwrap_or(0.0),
            desired: s["replicas"]["desired"].as_f64().unwrap_or(0.0),
        };
        let done = p.t > load_secs as f64 + 2.0 && p.desired == 1.0 && p.ready == 1.0;
        points.push(p);
        if done {
            settled = Some(start.elapsed().as_secs_f64() - load_secs as f64);
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let hey = hey.wait_with_output()?;
    let hey_text = String::from_utf8_lossy(&hey.stdout);
    let ok: u64 = hey_text
        .lines()
        .find_map(|l| l.trim().strip_prefix("[200]"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let total: u64 = hey_text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix('[')?;
            let (_, count) = rest.split_once(']')?;
            count.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    let errors: u64 = hey_text
        .split("Error distribution:")
        .nth(1)
        .map(|tail| {
            tail.lines()
                .filter_map(|l| {
                    l.trim()
                        .strip_prefix('[')?
                        .split_once(']')?
                        .0
                        .parse::<u64>()
                        .ok()
                })
                .sum()
        })
        .unwrap_or(0);
    world.stop_dockscale(&d);

    let enough = points.iter().find(|p| p.ready >= needed).map(|p| p.t);
    let drained = enough.and_then(|e| {
        points
            .iter()
            .find(|p| p.t >= e && p.qcur <= 1.0)
            .map(|p| p.t)
    });
    let in_load: Vec<f64> = points
        .iter()
        .filter(|p| p.t <= load_secs as f64)
        .map(|p| p.desired)
        .collect();
    let moves: Vec<f64> = in_load
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|d| *d != 0.0)
        .map(f64::signum)
        .collect();
    let oscillations = moves.windows(2).filter(|w| w[0] != w[1]).count();
    draw(plot, &points, load_secs as f64)?;

    let f = |v: Option<f64>| v.map_or("never".to_owned(), |s| format!("{s:.1} s"));
    let mut out = format!(
        "## 4. Autoscaling response\n\
         \n\
         A load step of {concurrency} concurrent 200 ms requests (`hey -z {load_secs}s -c \
         {concurrency} .../?delay=200`) on 1 replica with `maxconn: 4`, `inflightPerReplica: 4` \
         (so {needed} replicas are enough), scale-up period 6 s, scale-down window 20 s, sampled \
         every second. Timeline: [`autoscale.svg`](autoscale.svg).\n\
         \n\
         | figure | value |\n\
         | --- | --- |\n"
    );
    let _ = writeln!(
        out,
        "| load step → {needed} replicas ready | {} |",
        f(enough)
    );
    let _ = writeln!(
        out,
        "| load step → queue back near zero (qcur ≤ 1) | {} |",
        f(drained)
    );
    let _ = writeln!(
        out,
        "| load stop → back to 1 replica (settling) | {} |",
        f(settled)
    );
    let _ = writeln!(
        out,
        "| direction changes of the replica count under load | {oscillations} |"
    );
    let _ = writeln!(
        out,
        "| requests: 200 / total / client errors | {ok} / {total} / {errors} |"
    );
    let _ = writeln!(
        out,
        "\n<details><summary>timeline (t, demand, qcur, ready, desired)</summary>\n\n```"
    );
    for p in &points {
        let _ = writeln!(
            out,
            "{:.0},{:.1},{:.0},{:.0},{:.0}",
            p.t, p.demand, p.qcur, p.ready, p.desired
        );
    }
    let _ = writeln!(out, "```\n</details>\n");
    Ok(out)
}

/// The timeline as `autoscale.svg`, drawn as `dockscale simulate --plot` draws its own.
fn draw(path: &Path, points: &[Point], load_end: f64) -> anyhow::Result<()> {
    let line = |label, value: fn(&Point) -> f64| Line {
        label,
        points: points.iter().map(|p| (p.t, value(p))).collect(),
    };
    let lines = [
        line("demand (scur + qcur, averaged)", |p| p.demand),
        line("queue (qcur)", |p| p.qcur),
        line("ready replicas", |p| p.ready),
    ];
    let title = format!("load step of 32 slow requests, 0–{load_end:.0} s");
    plot::timeline(path, &title, &lines)?;
    Ok(())
}

// 5. Controller cost ----------------------------------------------------------------------------

fn histogram(metrics: &str, name: &str, labels: &str) -> (f64, f64) {
    let find = |suffix: &str| {
        let prefix = format!("{name}_{suffix}{labels} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (find("sum"), find("count"))
}

pub async fn cost(world: &mut World, sizes: &[u32]) -> anyhow::Result<String> {
    let window = Duration::from_secs(20);
    let mut out = format!(
        "## 5. Controller cost\n\
         \n\
         dockscale idle with N replicas of a worker-pool service (no load balancer, `memory: \
         16Mi`, `--sync-period 1s`, so a full no-change reconcile pass every second), over a \
         {}-second window after convergence: resident memory, CPU share (user + system time over \
         wall time, of one core), and the mean duration of a no-change reconcile pass: the Docker \
         list it starts with (`dockscale_docker_list_duration_seconds`) plus observe/plan/execute \
         (`dockscale_reconcile_duration_seconds`).\n\
         \n\
         | replicas | RSS (MiB) | CPU (% of a core) | no-change reconcile pass (ms) | converge 0 \
         → N |\n\
         | --- | --- | --- | --- | --- |\n",
        window.as_secs()
    );
    for &n in sizes {
        let service = world.service(&format!("cost{n}"));
        let mut spec = Spec::pool(n);
        spec.memory = "16Mi";
        spec.extra_args = vec!["--sync-period".to_owned(), "1s".to_owned()];
        let started = Instant::now();
        let d = world.dockscale(&service, spec).await?;
        let running = || async { reached(d.running(), n as usize) };
        wait_until("N running", Duration::from_secs(600), POLL, running).await?;
        let converged = started.elapsed();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let m0 = try_http_get(d.listen, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default();
        let (_, cpu0) = proc_usage(d.pid).context("dockscale's /proc")?;
        let t0 = Instant::now();
        tokio::time::sleep(window).await;
        let (rss, cpu1) = proc_usage(d.pid).context("dockscale's /proc")?;
        let wall = t0.elapsed();
        let m1 = try_http_get(d.listen, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default();
        let labels = format!("{{service=\"{service}\"}}");
        let (s0, c0) = histogram(&m0, "dockscale_reconcile_duration_seconds", &labels);
        let (s1, c1) = histogram(&m1, "dockscale_reconcile_duration_seconds", &labels);
        let (l0, lc0) = histogram(&m0, "dockscale_docker_list_duration_seconds", "");
        let (l1, lc1) = histogram(&m1, "dockscale_docker_list_duration_seconds", "");
        let list_ms = if lc1 > lc0 {
            (l1 - l0) / (lc1 - lc0) * 1000.0
        } else {
            f64::NAN
        };
        let pass_ms = if c1 > c0 {
            (s1 - s0) / (c1 - c0) * 1000.0
        } else {
            f64::NAN
        };
        let cpu = (cpu1 - cpu0).as_secs_f64() / wall.as_secs_f64() * 100.0;
        println!(
            "cost N={n}: rss {:.1} MiB, cpu {cpu:.2}%, \
             list {list_ms:.2} ms + pass {pass_ms:.2} ms over {} passes",
            rss as f64 / 1048576.0,
            c1 - c0
        );
        let _ = writeln!(
            out,
            "| {n} | {:.1} | {cpu:.2} | {:.2} = {list_ms:.2} list + {pass_ms:.2} plan/execute \
             ({:.0} passes) | {:.1} s |",
            rss as f64 / 1_048_576.0,
            list_ms + pass_ms,
            c1 - c0,
            converged.as_secs_f64()
        );
        world.stop_dockscale(&d);
    }
    Ok(out)
}
