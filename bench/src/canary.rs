//! A canary rollout and a rolling update guarded by the same analysis against a plain
//! rolling update of the same template, under the same paced keep-alive load through
//! the managed HAProxy (the e2e suite's [`dockscale_e2e::load::KeepAliveLoad`]): failed
//! requests and time to full promotion for a good template; for a template that answers
//! half its requests 500 (`FAIL_RATE=0.5`), the requests failed before the abort
//! against those a plain rolling update fails in the same window, nothing noticing.
//!
//! One service of 4 replicas, driven by a `dockscale run` child process of the build
//! measured; each repetition rolls a good template out each way, then a bad one each
//! way, and puts a good template back after each bad one that was not aborted.
//! Every wait is bounded; the fixture removes what it made.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use dockscale_e2e::haproxy::LbFixture;
use dockscale_e2e::load::{KeepAliveLoad, LoadReport};
use dockscale_e2e::process::DockscaleProcess;

use crate::secs;

const REPLICAS: usize = 4;
/// Eight clients, each waiting 4 ms after each answer.
const CLIENTS: usize = 8;
const GAP: Duration = Duration::from_millis(4);
/// How long after the edit the failed requests of a bad template are counted, for the
/// canary and for the rolling update alike.
const WINDOW: Duration = Duration::from_secs(20);
const STEPS: &str = "[{weight: 20, pause: 5s}, {weight: 50, pause: 5s}]";
const ANALYSIS: &str = "{interval: 2s, minRequests: 50}";
const FAIL_RATE: &str = "FAIL_RATE: \"0.5\"";

fn canary_rollout() -> String {
    format!("  rollout:\n    strategy: canary\n    steps: {STEPS}\n    analysis: {ANALYSIS}\n")
}

fn rolling_rollout() -> String {
    "  rollout: {maxSurge: 1, maxUnavailable: 0}\n".to_owned()
}

fn guarded_rollout() -> String {
    format!("  rollout: {{maxSurge: 1, maxUnavailable: 0, analysis: {ANALYSIS}}}\n")
}

/// The spec with this greeting (the template), this rollout and, when `failing`, half
/// the requests answered 500.
fn spec(f: &LbFixture, greeting: &str, rollout: &str, failing: bool) -> String {
    let text = f.lb_spec(REPLICAS as u32, greeting, rollout);
    if failing {
        text.replace(
            &format!("env: {{GREETING: \"{greeting}\"}}"),
            &format!("env: {{GREETING: \"{greeting}\", {FAIL_RATE}}}"),
        )
    } else {
        text
    }
}

/// The running replicas' ids.
fn running(f: &LbFixture) -> BTreeSet<String> {
    f.running().into_iter().map(|c| c.id).collect()
}

/// Whether only the replicas `expected` says (by id) run and serve: `REPLICAS` of
/// them, every server taking requests at weight 100.
async fn settled(f: &LbFixture, expected: impl Fn(&BTreeSet<String>) -> bool) -> bool {
    let ids = running(f);
    if ids.len() != REPLICAS || !expected(&ids) {
        return false;
    }
    let Ok(servers) = f.api().servers_state(&f.backend).await else {
        return false;
    };
    let taking: Vec<u32> = servers
        .iter()
        .filter(|s| s.running() && !s.draining())
        .map(|s| s.user_weight)
        .collect();
    taking.len() == REPLICAS && taking.iter().all(|w| *w == 100)
}

/// Waits (90 s at most) until [`settled`]; how long it took.
async fn until_settled(
    f: &LbFixture,
    what: &str,
    expected: impl Fn(&BTreeSet<String>) -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !settled(f, &expected).await {
        if start.elapsed() > Duration::from_secs(90) {
            bail!("{what}: not within 90 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(start.elapsed())
}

/// The service's aborts so far, from `dockscale_canary_verdicts_total`.
async fn aborts(d: &DockscaleProcess, service: &str) -> anyhow::Result<u64> {
    let (code, text) = d.get("/metrics").await.map_err(anyhow::Error::msg)?;
    if code != 200 {
        bail!("/metrics answered {code}");
    }
    let wanted = format!("service=\"{service}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("dockscale_canary_verdicts_total{"))
        .filter(|l| l.contains("verdict=\"abort\"") && l.contains(&wanted))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum())
}

fn load(f: &LbFixture) -> KeepAliveLoad {
    let url = format!("http://{}/", f.bind);
    KeepAliveLoad::paced(
        &url,
        CLIENTS,
        GAP,
        Duration::from_secs(10),
        Duration::from_secs(120),
    )
}

/// A good template: how long until every replica is new and serving at full weight,
/// and what the load saw.
async fn good(f: &LbFixture, greeting: &str, rollout: &str) -> anyhow::Result<Good> {
    let old = running(f);
    let load = load(f);
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.write_spec(&spec(f, greeting, rollout, false));
    let took = until_settled(f, "the new template everywhere", |ids| {
        ids.is_disjoint(&old)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(Good {
        took,
        load: load.finish().await,
    })
}

struct Good {
    took: Duration,
    load: LoadReport,
}

struct Bad {
    /// Requests failed within [`WINDOW`] of the edit, and all requests then.
    failed: u64,
    requests: u64,
    /// Canary: edit to the abort (seen on `/metrics`, polled every 100 ms). Rolling:
    /// edit to every replica bad and serving.
    reached: Duration,
    /// Canary: edit to the old replicas alone at full weight again.
    back: Option<Duration>,
}

/// A failing template under an analysis (`rollout`: the canary, or the guarded rolling
/// update): its abort, and the failures in the window.
async fn bad_analysed(
    f: &LbFixture,
    d: &DockscaleProcess,
    greeting: &str,
    rollout: &str,
) -> anyhow::Result<Bad> {
    let old = running(f);
    let before = aborts(d, &f.service).await?;
    let load = load(f);
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.write_spec(&spec(f, greeting, rollout, true));
    let edited = Instant::now();
    let aborted = loop {
        if aborts(d, &f.service).await? > before {
            break edited.elapsed();
        }
        if edited.elapsed() > Duration::from_secs(60) {
            bail!("the failing template was not aborted within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let back = until_settled(f, "the old replicas alone", |ids| *ids == old).await?;
    let back = aborted + back;
    tokio::time::sleep_until((edited + WINDOW).into()).await;
    let report = load.finish().await;
    Ok(window(&report, edited, aborted, Some(back)))
}

/// A failing template rolled out plainly: nothing stops it.
async fn bad_rolling(f: &LbFixture, greeting: &str) -> anyhow::Result<Bad> {
    let old = running(f);
    let load = load(f);
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.write_spec(&spec(f, greeting, &rolling_rollout(), true));
    let edited = Instant::now();
    let rolled = until_settled(f, "the failing template everywhere", |ids| {
        ids.is_disjoint(&old)
    })
    .await?;
    if rolled < WINDOW {
        tokio::time::sleep_until((edited + WINDOW).into()).await;
    }
    let report = load.finish().await;
    Ok(window(&report, edited, rolled, None))
}

/// The failures of requests sent within [`WINDOW`] of `edited`, against all requests
/// of the load (which ends at the window).
fn window(report: &LoadReport, edited: Instant, reached: Duration, back: Option<Duration>) -> Bad {
    let end = edited + WINDOW;
    Bad {
        failed: report
            .failures
            .iter()
            .filter(|x| x.start >= edited && x.start < end)
            .count() as u64,
        requests: report.requests(),
        reached,
        back,
    }
}

/// Runs the canary section (`quick`: one repetition, else two) and returns it.
pub async fn canary(dockscale: &Path, quick: bool) -> anyhow::Result<String> {
    let bin = std::fs::canonicalize(dockscale)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dockscale.display()))?;
    let reps = if quick { 1 } else { 2 };
    let f = LbFixture::new("bench-canary");
    f.write_spec(&spec(&f, "r0", &canary_rollout(), false));
    let mut args = f.lb_run_args(&[]);
    args.remove(0);
    let d = DockscaleProcess::spawn(&bin, args, f.dir.path().join("dockscale.log"));
    until_settled(&f, "the first replicas", |_| true).await?;

    let (mut canaries, mut rollings, mut guardeds) = (Vec::new(), Vec::new(), Vec::new());
    let (mut bad_canaries, mut bad_rollings, mut bad_guardeds) =
        (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        let run = async {
            canaries.push(good(&f, &format!("c{rep}"), &canary_rollout()).await?);
            rollings.push(good(&f, &format!("r{rep}"), &rolling_rollout()).await?);
            guardeds.push(good(&f, &format!("g{rep}"), &guarded_rollout()).await?);
            // Back to the canary strategy: the rollout is not part of the template,
            // so nothing rolls.
            f.write_spec(&spec(&f, &format!("g{rep}"), &canary_rollout(), false));
            tokio::time::sleep(Duration::from_secs(1)).await;
            bad_canaries
                .push(bad_analysed(&f, &d, &format!("bad-c{rep}"), &canary_rollout()).await?);
            // The aborted template's old replicas serve: the guarded rolling update
            // starts from them.
            bad_guardeds
                .push(bad_analysed(&f, &d, &format!("bad-g{rep}"), &guarded_rollout()).await?);
            bad_rollings.push(bad_rolling(&f, &format!("bad-r{rep}")).await?);
            // A good template back, rolled out plainly, then the canary strategy.
            let old = running(&f);
            f.write_spec(&spec(&f, &format!("fixed{rep}"), &rolling_rollout(), false));
            until_settled(&f, "a good template back", |ids| ids.is_disjoint(&old)).await?;
            f.write_spec(&spec(&f, &format!("fixed{rep}"), &canary_rollout(), false));
            tokio::time::sleep(Duration::from_secs(1)).await;
            anyhow::Ok(())
        };
        if let Err(e) = run.await {
            println!("--- dockscale's log ---\n{}", d.log_digest(40, 60));
            return Err(e);
        }
    }
    drop(d);
    drop(f);
    Ok(section(
        reps,
        [&canaries, &guardeds, &rollings],
        [&bad_canaries, &bad_guardeds, &bad_rollings],
    ))
}

/// "a, b" of the repetitions' figures.
fn each<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
    items.iter().map(f).collect::<Vec<_>>().join(", ")
}

fn section(reps: usize, good: [&[Good]; 3], bad: [&[Bad]; 3]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Canary rollout and guarded rolling update against a rolling update\n"
    );
    let _ = writeln!(
        s,
        "{REPLICAS} replicas of the demo behind the managed HAProxy; {CLIENTS} keep-alive \
         clients GET `/`, each waiting {} ms after each answer; {reps} repetition(s) (each \
         figure lists them, or gives the median with min–max). Canary: `steps: {STEPS}`, \
         `analysis: {ANALYSIS}`. Guarded rolling update: `maxSurge: 1, maxUnavailable: 0, \
         analysis: {ANALYSIS}` (each batch of one watched for the interval before an old \
         replica goes). Rolling: `maxSurge: 1, maxUnavailable: 0`, no analysis. The failing \
         template has `{FAIL_RATE}` (its `/healthz` passes, as a real bug's would); its \
         failed requests are counted over the first {} s after the edit, for all three.\n",
        GAP.as_millis(),
        WINDOW.as_secs()
    );
    let _ = writeln!(
        s,
        "| figure | canary | guarded rolling update | rolling update |\n| --- | --- | --- | --- |"
    );
    let took = |g: &[Good]| secs(&g.iter().map(|g| g.took).collect::<Vec<_>>());
    let failed = |g: &[Good]| {
        each(g, |g| {
            format!("{} of {}", g.load.failed_total(), g.load.requests())
        })
    };
    let row = |s: &mut String, figure: &str, cells: [String; 3]| {
        let _ = writeln!(s, "| {figure} | {} |", cells.join(" | "));
    };
    row(
        &mut s,
        "good template: edit → every replica new, serving at full weight",
        good.map(took),
    );
    row(&mut s, "good template: failed requests", good.map(failed));
    let bad_failed = |b: &[Bad]| {
        each(b, |b| {
            format!(
                "{} of {} ({:.1} %)",
                b.failed,
                b.requests,
                100.0 * b.failed as f64 / b.requests.max(1) as f64
            )
        })
    };
    row(
        &mut s,
        &format!(
            "failing template: requests failed in the first {} s",
            WINDOW.as_secs()
        ),
        bad.map(bad_failed),
    );
    let aborted = |b: &[Bad]| {
        format!(
            "aborted {} after the edit; old replicas alone at full weight after {}",
            secs(&b.iter().map(|b| b.reached).collect::<Vec<_>>()),
            secs(&b.iter().filter_map(|b| b.back).collect::<Vec<_>>()),
        )
    };
    row(
        &mut s,
        "failing template: what happened",
        [
            aborted(bad[0]),
            aborted(bad[1]),
            format!(
                "every replica failing {} after the edit; nothing notices",
                secs(&bad[2].iter().map(|b| b.reached).collect::<Vec<_>>())
            ),
        ],
    );
    s
}
