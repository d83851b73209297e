//! dockscale on Swarm against what Swarm users have today, on swarms of private
//! engines (the e2e suite's [`dockscale_e2e::swarm`]): 0 → N tasks serving through
//! HAProxy against `docker service scale` alone (until running); a killed task and a
//! lost node out of rotation against a 15 s task-list poll (Traefik's Swarm provider's
//! default `refreshSeconds`), measured side by side on the same faults; failed
//! requests during a rolling update under load.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use dockscale::lb::haproxy::runtime_api::RuntimeApi;
use dockscale_e2e::haproxy::{in_rotation, LbFixture, Load};
use dockscale_e2e::process::DockscaleProcess;
use dockscale_e2e::swarm::{Swarm, SWARM_IMAGE};
use rand::Rng;

use crate::secs;

/// Traefik's Swarm provider lists tasks this often by default.
const POLL_PERIOD: Duration = Duration::from_secs(15);

/// The servers in rotation and UP.
async fn up(api: &RuntimeApi, backend: &str) -> BTreeSet<SocketAddrV4> {
    api.servers_state(backend)
        .await
        .map(|s| in_rotation(&s))
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, up)| *up)
        .map(|(a, _)| a)
        .collect()
}

/// Waits until HAProxy serves exactly the `n` running tasks; how long it took.
async fn serving(
    f: &LbFixture,
    swarm: &Swarm,
    n: usize,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let api = f.api();
    let start = Instant::now();
    loop {
        let tasks = swarm.task_addrs(&f.service).await;
        if tasks.len() == n && up(&api, &f.backend).await == tasks {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("{n} tasks not serving after {limit:?}: {tasks:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `service` (a plain Swarm service) has `n` running tasks.
async fn running(swarm: &Swarm, service: &str, n: usize) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while swarm.task_addrs(service).await.len() != n {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("{service}: {n} tasks not running after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(start.elapsed())
}

/// A task-list poller every [`POLL_PERIOD`] from a random phase: how long after `from`
/// its first poll no longer lists `addr` as a running task.
async fn poller_sees_gone(
    swarm: &Swarm,
    service: &str,
    addr: SocketAddrV4,
    from: Instant,
) -> Duration {
    let phase = rand::rng().random_range(0..POLL_PERIOD.as_millis() as u64);
    tokio::time::sleep(Duration::from_millis(phase)).await;
    loop {
        if !swarm.task_addrs(service).await.contains(&addr) {
            return from.elapsed();
        }
        tokio::time::sleep(POLL_PERIOD).await;
    }
}

/// The e2e spec on the swarm's image, at a tenth of a CPU per task: Swarm reserves
/// what `resources` asks, and 10 tasks at the e2e's quarter would not fit 2 cores.
fn spec(f: &LbFixture, replicas: u32, greeting: &str) -> String {
    dockscale_e2e::swarm::on_swarm(&f.lb_spec(replicas, greeting, ""))
        .replace("cpus: 0.25", "cpus: 0.1")
}

fn controller(bin: &Path, f: &LbFixture, swarm: &Swarm) -> DockscaleProcess {
    let mut args = f.lb_run_args(&["--runtime", "swarm"]);
    args.remove(0);
    DockscaleProcess::spawn_with_env(
        bin,
        args,
        f.dir.path().join("dockscale.log"),
        vec![("DOCKER_HOST".to_owned(), swarm.docker_host())],
    )
}

/// Runs the Swarm section; `quick`: one repetition.
pub async fn swarm(dockscale: &Path, quick: bool) -> anyhow::Result<String> {
    let bin = std::fs::canonicalize(dockscale)?;
    let reps = if quick { 1 } else { 3 };
    let n = 10;
    let one = Swarm::single("bench1");
    let f = LbFixture::new("bench-swarm");
    f.write_spec(&spec(&f, 0, "one"));
    let dockscale = controller(&bin, &f, &one);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 0 -> N: dockscale (until HAProxy serves them) and docker service scale alone
    // (until running).
    let plain = format!("{}-plain", f.service);
    one.manager.docker(&[
        "service",
        "create",
        "--detach",
        "--name",
        &plain,
        "--replicas",
        "0",
        "--publish",
        "mode=host,target=8080",
        SWARM_IMAGE,
    ]);
    let (mut scaled, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        f.write_spec(&spec(&f, n, "one"));
        scaled.push(serving(&f, &one, n as usize, Duration::from_secs(120)).await?);
        f.write_spec(&spec(&f, 0, "one"));
        serving(&f, &one, 0, Duration::from_secs(120)).await?;
        let start = Instant::now();
        one.manager
            .docker(&["service", "scale", "--detach", &format!("{plain}={n}")]);
        running(&one, &plain, n as usize).await?;
        theirs.push(start.elapsed());
        one.manager
            .docker(&["service", "scale", "--detach", &format!("{plain}=0")]);
        running(&one, &plain, 0).await?;
    }
    one.manager.docker(&["service", "rm", &plain]);

    // A killed task: out of rotation (dockscale) against a 15 s poll seeing it gone.
    f.write_spec(&spec(&f, 4, "one"));
    serving(&f, &one, 4, Duration::from_secs(60)).await?;
    let api = f.api();
    let (mut out, mut polled) = (Vec::new(), Vec::new());
    let label = format!("label=dockscale.service={}", f.service);
    for _ in 0..reps {
        let before = one.task_addrs(&f.service).await;
        let victim = one.manager.docker(&["ps", "-q", "--filter", &label]);
        let Some(victim) = victim.split_whitespace().next().map(str::to_owned) else {
            bail!("no task container to kill");
        };
        let port = one.manager.docker(&[
            "inspect",
            "--format",
            "{{range $p, $b := .NetworkSettings.Ports}}{{range $b}}{{.HostPort}} {{end}}{{end}}",
            &victim,
        ]);
        // One binding per address family: the same port twice.
        let Some(addr) = port
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .map(|p| SocketAddrV4::new(one.manager.node_addr(), p))
            .filter(|a| before.contains(a))
        else {
            bail!("the killed task's address is not known: {port:?}");
        };
        let killed = Instant::now();
        one.manager.docker(&["kill", &victim]);
        let poll = poller_sees_gone(&one, &f.service, addr, killed);
        let out_of_rotation = async {
            while up(&api, &f.backend).await.contains(&addr) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            killed.elapsed()
        };
        let (gone, seen) = tokio::join!(out_of_rotation, poll);
        out.push(gone);
        polled.push(seen);
        serving(&f, &one, 4, Duration::from_secs(60)).await?;
    }

    // A rolling update of 4 tasks under load.
    let load = Load::start(f.bind, "/", 8, Duration::from_secs(120));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    f.write_spec(&spec(&f, 4, "two"));
    loop {
        let tasks = one.task_addrs(&f.service).await;
        let body = dockscale_e2e::try_http_get(f.bind, "/")
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        if body.contains("two") && tasks.len() == 4 && up(&api, &f.backend).await == tasks {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the rolling update did not finish");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rolled = started.elapsed();
    let rolling = load.finish().await;
    // dockscale first: it would start the HAProxy the fixture ends again.
    drop(dockscale);
    drop(f);
    drop(one);

    // A lost node: its tasks out of rotation against a 15 s poll seeing them gone.
    let mut two = Swarm::two_nodes("bench2");
    let f = LbFixture::new("bench-swarm2");
    f.write_spec(&spec(&f, 6, "one").replace(
        "  loadBalancer:",
        "  placement: {preferences: [{spread: node.id}]}\n  loadBalancer:",
    ));
    let dockscale = controller(&bin, &f, &two);
    serving(&f, &two, 6, Duration::from_secs(120)).await?;
    let worker = two.workers[0].node_addr();
    let on_worker: Vec<SocketAddrV4> = two
        .task_addrs(&f.service)
        .await
        .into_iter()
        .filter(|a| *a.ip() == worker)
        .collect();
    let api = f.api();
    let load = Load::start(f.bind, "/", 8, Duration::from_secs(120));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The worker's engine, out of the swarm's hands: stopped on a thread of its own
    // (its stop waits), dropped (and swept) at the end.
    let mut worker_engine = two.workers.pop();
    let lost = Instant::now();
    let stop = tokio::task::spawn_blocking(move || {
        if let Some(e) = worker_engine.as_mut() {
            e.stop();
        }
        worker_engine
    });
    let Some(probe) = on_worker.first().copied() else {
        bail!("Swarm put no task on the worker");
    };
    let poll = poller_sees_gone(&two, &f.service, probe, lost);
    let node_out = async {
        loop {
            let up_now = up(&api, &f.backend).await;
            if on_worker.iter().all(|a| !up_now.contains(a)) {
                return lost.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (stopped, node_out, node_polled) = tokio::join!(stop, node_out, poll);
    let _worker_engine = stopped?;
    serving(&f, &two, 6, Duration::from_secs(120)).await?;
    let back = lost.elapsed();
    let node_load = load.finish().await;
    drop(dockscale);
    drop(f);

    let mut s = String::new();
    let _ = writeln!(s, "## Swarm\n");
    let _ = writeln!(
        s,
        "`dockscale run --runtime swarm` on a one-node swarm and a two-node swarm of \
         private engines on this machine, {reps} repetition(s); medians with min–max. The \
         baseline poller lists the tasks every 15 s from a random phase, as Traefik's \
         Swarm provider does by default.\n"
    );
    let _ = writeln!(s, "| figure | dockscale | baseline |\n| --- | --- | --- |");
    let _ = writeln!(
        s,
        "| 0 → {n} tasks | {} serving through HAProxy | {} running (`docker service scale`, no load balancer) |",
        secs(&scaled),
        secs(&theirs)
    );
    let _ = writeln!(
        s,
        "| a task's container killed → out of rotation | {} | {} (15 s poll sees it gone) |",
        secs(&out),
        secs(&polled)
    );
    let _ = writeln!(
        s,
        "| worker engine stopped → its {} tasks out of rotation | {} | {} (15 s poll sees one gone) |",
        on_worker.len(),
        secs(&[node_out]),
        secs(&[node_polled])
    );
    let _ = writeln!(
        s,
        "| ... 6 tasks serving again | {}; {} of {} requests failed | |",
        secs(&[back]),
        node_load.failed,
        node_load.ok + node_load.failed
    );
    let _ = writeln!(
        s,
        "| rolling update of 4 tasks under load (8 clients) | {}; {} of {} requests failed | |",
        secs(&[rolled]),
        rolling.failed,
        rolling.ok + rolling.failed
    );
    Ok(s)
}
