//! Canary rollouts against a real Docker engine and a real HAProxy: the traffic shifted
//! step by step through server weights, measured from the replicas' own answers (their
//! hostnames), and the aborts of a template that fails or is slow, with the requests
//! the clients saw fail meanwhile.
//!
//! Each test runs a bounded, paced keep-alive load on the demo's fast `/` (HAProxy's
//! `rtime` for the old replicas is then 0 ms, as for a real service answering from
//! memory) and samples `show servers state` every 100 ms.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use dockscale_e2e::haproxy::LbFixture;
use dockscale_e2e::load::{FailureClass, KeepAliveLoad};
use dockscale_e2e::{events, template_hash, RunningController};

const REPLICAS: u32 = 4;
/// Eight clients, each waiting 4 ms after each answer: at most about 2,000 requests a
/// second, whatever the backend.
const CLIENTS: usize = 8;
const GAP: Duration = Duration::from_millis(4);
/// No load runs longer than this.
const LOAD_LIMIT: Duration = Duration::from_secs(75);

/// The spec's `rollout:` block of a canary.
fn canary(steps: &str, analysis: &str) -> String {
    format!("  rollout:\n    strategy: canary\n    steps: {steps}\n    analysis: {analysis}\n")
}

/// A spec whose template carries more environment beside `GREETING`.
fn with_env(spec: &str, greeting: &str, env: &str) -> String {
    let plain = format!("env: {{GREETING: \"{greeting}\"}}");
    assert!(spec.contains(&plain), "{spec}");
    spec.replace(&plain, &format!("env: {{GREETING: \"{greeting}\", {env}}}"))
}

fn condition<'a>(status: &'a serde_json::Value, kind: &str) -> Option<&'a serde_json::Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// The service's `dockscale_canary_*` series from `/metrics`: (name without the prefix,
/// its `version` or `verdict` label) -> value.
async fn canary_metrics(
    controller: &RunningController,
    service: &str,
) -> BTreeMap<(String, String), f64> {
    let (code, text) = controller.get("/metrics").await;
    assert_eq!(code, 200, "{text}");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text exposition");
    scrape
        .samples
        .into_iter()
        .filter(|s| s.labels.get("service") == Some(service))
        .filter_map(|s| {
            let name = s.metric.strip_prefix("dockscale_canary_")?.to_owned();
            let label = s
                .labels
                .get("version")
                .or_else(|| s.labels.get("verdict"))
                .unwrap_or("")
                .to_owned();
            let value = match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => return None,
            };
            Some(((name, label), value))
        })
        .collect()
}

/// One series of [`canary_metrics`], 0 when absent.
fn series(metrics: &BTreeMap<(String, String), f64>, name: &str, label: &str) -> f64 {
    metrics
        .get(&(name.to_owned(), label.to_owned()))
        .copied()
        .unwrap_or(0.0)
}

/// The replicas that ran before the template changed.
struct Old {
    ids: BTreeSet<String>,
    names: BTreeSet<String>,
}

impl Old {
    fn of(fixture: &LbFixture) -> Old {
        let running = fixture.running();
        Old {
            ids: running.iter().map(|c| c.id.clone()).collect(),
            names: running.into_iter().map(|c| c.name).collect(),
        }
    }

    /// The addresses the old replicas that still run have now (Docker gives a removed
    /// replica's address to the next one created, so an address says nothing alone).
    fn addrs(&self, fixture: &LbFixture) -> BTreeSet<SocketAddrV4> {
        fixture
            .replica_addrs()
            .into_iter()
            .filter(|(name, _)| self.names.contains(name))
            .map(|(_, addr)| addr)
            .collect()
    }

    /// Whether an answer's `X-Served-By` (the container's hostname: the first 12
    /// characters of its id) names an old replica.
    fn answered(&self, host: &str) -> bool {
        !host.is_empty() && self.ids.iter().any(|id| id.starts_with(host))
    }
}

/// Template hashes of the running replicas.
fn hashes(fixture: &LbFixture) -> BTreeSet<String> {
    fixture
        .running()
        .iter()
        .map(|c| template_hash(&c.id))
        .collect()
}

/// The weights HAProxy gives the old and the new servers in rotation (sorted): one
/// traffic split.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Split {
    old: Vec<u32>,
    new: Vec<u32>,
}

impl Split {
    fn of(rotation: &BTreeMap<SocketAddrV4, u32>, old_addrs: &BTreeSet<SocketAddrV4>) -> Split {
        let mut split = Split {
            old: Vec::new(),
            new: Vec::new(),
        };
        for (addr, weight) in rotation {
            if old_addrs.contains(addr) {
                split.old.push(*weight);
            } else {
                split.new.push(*weight);
            }
        }
        split.old.sort_unstable();
        split.new.sort_unstable();
        split
    }

    /// The new servers' share of the total weight, in percent.
    fn new_share(&self) -> f64 {
        let new: u32 = self.new.iter().sum();
        let all = new + self.old.iter().sum::<u32>();
        if all == 0 {
            0.0
        } else {
            100.0 * f64::from(new) / f64::from(all)
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let weights = |w: &[u32]| {
            let first = w.first().copied().unwrap_or(0);
            if w.iter().all(|x| *x == first) {
                format!("{}x{first}", w.len())
            } else {
                format!("{w:?}")
            }
        };
        write!(f, "old {} new {}", weights(&self.old), weights(&self.new))
    }
}

/// Answers counted while one split held.
#[derive(Debug, Default)]
struct Measured {
    old: u64,
    new: u64,
    held: Duration,
}

impl Measured {
    fn new_share(&self) -> f64 {
        let all = self.old + self.new;
        if all == 0 {
            0.0
        } else {
            100.0 * self.new as f64 / all as f64
        }
    }
}

/// Samples HAProxy's rotation and the load's answers; the answers between two samples
/// that saw the same split are that split's.
struct Splits {
    seen: Vec<Split>,
    measured: BTreeMap<Split, Measured>,
    last: Option<(Split, BTreeMap<String, u64>, Instant)>,
}

impl Splits {
    fn new() -> Self {
        Splits {
            seen: Vec::new(),
            measured: BTreeMap::new(),
            last: None,
        }
    }

    fn sample(&mut self, split: Split, served: BTreeMap<String, u64>, old: &Old) {
        let now = Instant::now();
        if let Some((prev, before, at)) = &self.last {
            if *prev == split {
                let m = self.measured.entry(split.clone()).or_default();
                m.held += now - *at;
                for (host, n) in &served {
                    let d = n - before.get(host).copied().unwrap_or(0);
                    if old.answered(host) {
                        m.old += d;
                    } else {
                        m.new += d;
                    }
                }
            }
        }
        if !self.seen.contains(&split) {
            self.seen.push(split.clone());
        }
        self.last = Some((split, served, now));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_canary_takes_each_steps_share_of_the_traffic_then_every_replica_without_a_failed_request(
) {
    let fixture = LbFixture::new("e2e-canary");
    let rollout = canary(
        "[{weight: 20, pause: 4s}, {weight: 50, pause: 4s}]",
        "{interval: 1s, minRequests: 50}",
    );
    fixture.write_spec(&fixture.lb_spec(REPLICAS, "v1", &rollout));
    let controller = RunningController::start(&fixture.lb_run_args(&[]));
    fixture.serving(REPLICAS as usize).await;
    let old = Old::of(&fixture);
    let old_hashes = hashes(&fixture);

    let url = format!("http://{}/", fixture.bind);
    let load = KeepAliveLoad::paced(&url, CLIENTS, GAP, Duration::from_secs(10), LOAD_LIMIT);
    tokio::time::sleep(Duration::from_secs(1)).await;
    fixture.write_spec(&fixture.lb_spec(REPLICAS, "v2", &rollout));
    let started = Instant::now();
    let mut splits = Splits::new();
    // The old replicas' addresses, read again whenever the servers in rotation change.
    let (mut known, mut old_addrs) = (BTreeSet::new(), BTreeSet::new());
    // The last canary figures `/metrics` showed in each step: weight ratio, stable and
    // canary requests per second, canary error ratio.
    let mut scraped: BTreeMap<u64, (f64, f64, f64, f64)> = BTreeMap::new();
    let mut scrape_at = Instant::now();
    let promoted = loop {
        if scrape_at.elapsed() >= Duration::from_millis(500) {
            scrape_at = Instant::now();
            let m = canary_metrics(&controller, &fixture.service).await;
            let step = series(&m, "step", "") as u64;
            let canary_rate = series(&m, "requests_per_second", "canary");
            if step > 0 && canary_rate > 0.0 {
                scraped.insert(
                    step,
                    (
                        series(&m, "weight_ratio", ""),
                        series(&m, "requests_per_second", "stable"),
                        canary_rate,
                        series(&m, "error_ratio", "canary"),
                    ),
                );
            }
        }
        let rotation = fixture.taking_requests().await;
        let addrs: BTreeSet<SocketAddrV4> = rotation.keys().copied().collect();
        if addrs != known {
            old_addrs = old.addrs(&fixture);
            known = addrs;
        }
        splits.sample(Split::of(&rotation, &old_addrs), load.served(), &old);
        let running = fixture.running();
        let all_new = running.len() == REPLICAS as usize
            && running.iter().all(|c| !old.ids.contains(&c.id))
            && rotation.len() == REPLICAS as usize
            && rotation.values().all(|w| *w == 100);
        if all_new {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the canary did not finish; splits seen: {:?}",
            splits.seen
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.finish().await;

    println!(
        "good canary: every replica new and in rotation at weight 100 {promoted:.1?} after \
         the edit"
    );
    println!("split (HAProxy weights)       | by weight | answered by new | answers | held");
    for split in &splits.seen {
        let Some(m) = splits.measured.get(split) else {
            continue;
        };
        println!(
            "{:<29} | {:>8.1}% | {:>14.1}% | {:>7} | {:.1?}",
            split.to_string(),
            split.new_share(),
            m.new_share(),
            m.old + m.new,
            m.held
        );
    }
    println!(
        "load: {} ok, {} failed ({:?}); samples {:#?}",
        report.ok,
        report.failed_total(),
        report.failed,
        report.samples
    );

    assert_eq!(
        report.failed_total(),
        0,
        "failed requests during a good canary: {:#?}",
        report.samples
    );
    assert!(report.ok > 2_000, "the load ran: {} ok", report.ok);
    assert!(
        report.served.keys().all(|h| !h.is_empty()),
        "an answer without X-Served-By: {:?}",
        report.served
    );
    // Each step: its replicas (ceil(4 x share)) at the weights that give them the share,
    // held for about the pause, the answers split as the weights say.
    for (weight, new_replicas) in [(20.0, 1), (50.0, 2)] {
        let (split, m) = splits
            .measured
            .iter()
            .filter(|(s, _)| s.old.len() == REPLICAS as usize && s.new.len() == new_replicas)
            .max_by_key(|(_, m)| m.held)
            .unwrap_or_else(|| {
                panic!(
                    "no split with {new_replicas} new servers beside the old ones: {:?}",
                    splits.seen
                )
            });
        println!(
            "step {weight}%: {split}: {:.1}% by weight, {:.1}% of {} answers by the new \
             replicas, held {:.1?}",
            split.new_share(),
            m.new_share(),
            m.old + m.new,
            m.held
        );
        assert!(
            (split.new_share() - weight).abs() < 1.0,
            "step {weight}%: weights {split} give the new servers {:.1}%",
            split.new_share()
        );
        assert!(
            m.held >= Duration::from_secs(3),
            "step {weight}% held only {:?}",
            m.held
        );
        assert!(m.old + m.new > 400, "step {weight}%: too few answers {m:?}");
        assert!(
            (m.new_share() - weight).abs() < 5.0,
            "step {weight}%: the new replicas answered {:.1}% of {} requests",
            m.new_share(),
            m.old + m.new
        );
    }

    // The metrics: each step's weight, and the per-version rates the analysis judged
    // splitting the traffic as the weights do.
    for (step, weight) in [(1, 0.2), (2, 0.5)] {
        let (ratio, stable, canary, errors) = scraped
            .get(&step)
            .copied()
            .unwrap_or_else(|| panic!("no canary figures scraped in step {step}: {scraped:?}"));
        let share = canary / (stable + canary);
        println!(
            "/metrics in step {step}: weight ratio {ratio}, stable {stable:.0} req/s, canary \
             {canary:.0} req/s ({:.1}%), canary error ratio {errors}",
            100.0 * share
        );
        assert_eq!(ratio, weight, "step {step}");
        assert!(
            (share - weight).abs() < 0.05,
            "step {step}: the rates scraped give the canary {share:.3}"
        );
        assert_eq!(errors, 0.0, "step {step}");
    }
    let m = canary_metrics(&controller, &fixture.service).await;
    assert_eq!(
        (
            series(&m, "verdicts_total", "advance"),
            series(&m, "verdicts_total", "promote"),
            series(&m, "verdicts_total", "abort"),
            series(&m, "step", ""),
        ),
        (1.0, 1.0, 0.0, 0.0),
        "{m:?}"
    );

    let now_hashes = hashes(&fixture);
    assert_eq!(
        now_hashes.len(),
        1,
        "replicas of several templates: {now_hashes:?}"
    );
    assert!(
        now_hashes.is_disjoint(&old_hashes),
        "old template still runs: {now_hashes:?}"
    );
    let addrs: BTreeSet<SocketAddrV4> = fixture.replica_addrs().into_values().collect();
    let servers = dockscale_e2e::haproxy::servers(&fixture.api(), &fixture.backend).await;
    let enabled: BTreeSet<SocketAddrV4> = servers
        .iter()
        .filter(|s| !s.in_maintenance())
        .map(|s| SocketAddrV4::new(s.addr, s.port))
        .collect();
    assert_eq!(
        enabled, addrs,
        "HAProxy's servers out of maintenance are not exactly the replicas"
    );
    let status = controller.service_status(&fixture.service).await;
    let steps = events(&status, "CanaryStep");
    assert_eq!(steps.len(), 2, "{}", status["events"]);
    assert!(
        steps[0].contains("20%") && steps[1].contains("50%"),
        "{steps:?}"
    );
    assert!(
        events(&status, "RolloutAborted").is_empty(),
        "{}",
        status["events"]
    );
    controller.stop().await;
}

/// What a bad canary's run saw: when the canary's servers took requests, the events
/// and the load's report.
struct Abort {
    /// The first sample with a new server taking requests.
    entered: Instant,
    /// The first sample after it with none.
    left: Instant,
    /// When the status first showed the step's `CanaryStep` and the `RolloutAborted`.
    step_seen: Instant,
    aborted_seen: Instant,
    aborted: String,
    report: dockscale_e2e::load::LoadReport,
    /// The canary series once the old replicas serve alone again.
    metrics: BTreeMap<(String, String), f64>,
}

/// Changes the template to one with `env` under load, waits for the abort and for the
/// old replicas to serve alone at full weight again, and returns what was seen.
async fn aborted_canary(
    fixture: &LbFixture,
    controller: &RunningController,
    rollout: &str,
    env: &str,
) -> Abort {
    let old = Old::of(fixture);
    // The old replicas keep their addresses: none is removed before the abort.
    let old_addrs = old.addrs(fixture);
    let url = format!("http://{}/", fixture.bind);
    let load = KeepAliveLoad::paced(&url, CLIENTS, GAP, Duration::from_secs(10), LOAD_LIMIT);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bad = with_env(&fixture.lb_spec(REPLICAS, "v2", rollout), "v2", env);
    fixture.write_spec(&bad);
    let started = Instant::now();
    let (mut entered, mut left, mut step_seen, mut aborted_seen) = (None, None, None, None);
    let mut aborted = String::new();
    loop {
        let rotation = fixture.taking_requests().await;
        let now = Instant::now();
        let canary_in = rotation.keys().any(|a| !old_addrs.contains(a));
        if canary_in && entered.is_none() {
            entered = Some(now);
        }
        if !canary_in && entered.is_some() && left.is_none() {
            left = Some(now);
        }
        let status = controller.service_status(&fixture.service).await;
        if step_seen.is_none() && !events(&status, "CanaryStep").is_empty() {
            step_seen = Some(now);
        }
        if let (None, Some(message)) = (aborted_seen, events(&status, "RolloutAborted").pop()) {
            aborted_seen = Some(now);
            aborted = message;
        }
        let back = left.is_some()
            && rotation.len() == REPLICAS as usize
            && rotation.keys().all(|a| old_addrs.contains(a))
            && rotation.values().all(|w| *w == 100)
            && fixture
                .running()
                .into_iter()
                .map(|c| c.id)
                .collect::<BTreeSet<_>>()
                == old.ids;
        if back && aborted_seen.is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "no abort, or the old replicas not back alone at full weight: rotation \
             {rotation:?}, events {}",
            status["events"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The old replicas alone for a while: the aborted template is not tried again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.finish().await;
    let running: BTreeSet<String> = fixture.running().into_iter().map(|c| c.id).collect();
    assert_eq!(running, old.ids, "the aborted template was tried again");
    let status = controller.service_status(&fixture.service).await;
    let progressing = condition(&status, "Progressing").expect("Progressing condition");
    assert_eq!(
        (&progressing["status"], &progressing["reason"]),
        (
            &serde_json::json!(false),
            &serde_json::json!("RolloutAborted")
        ),
        "{progressing}"
    );
    assert_eq!(
        events(&status, "RolloutAborted").len(),
        1,
        "{}",
        status["events"]
    );
    let metrics = canary_metrics(controller, &fixture.service).await;
    assert_eq!(
        (
            series(&metrics, "verdicts_total", "abort"),
            series(&metrics, "verdicts_total", "promote"),
            series(&metrics, "aborted", ""),
            series(&metrics, "step", ""),
        ),
        (1.0, 0.0, 1.0, 0.0),
        "{metrics:?}"
    );
    // The unwraps: the loop above ends only once each was seen.
    Abort {
        entered: entered.expect("seen"),
        left: left.expect("seen"),
        step_seen: step_seen.expect("a CanaryStep event before the abort"),
        aborted_seen: aborted_seen.expect("seen"),
        aborted,
        report,
        metrics,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_answering_half_its_requests_500_is_aborted_within_an_analysis_interval() {
    let fixture = LbFixture::new("e2e-canary-5xx");
    let interval = Duration::from_secs(2);
    let rollout = canary(
        "[{weight: 20, pause: 30s}, {weight: 50, pause: 30s}]",
        "{interval: 2s, minRequests: 50}",
    );
    fixture.write_spec(&fixture.lb_spec(REPLICAS, "v1", &rollout));
    let controller = RunningController::start(&fixture.lb_run_args(&[]));
    fixture.serving(REPLICAS as usize).await;
    let old = Old::of(&fixture);

    let abort = aborted_canary(&fixture, &controller, &rollout, "FAIL_RATE: \"0.5\"").await;
    let report = &abort.report;
    let canary_failed: Vec<_> = report
        .failures
        .iter()
        .filter(|f| f.served_by.as_deref().is_some_and(|h| !old.answered(h)))
        .collect();
    let canary_ok: u64 = report
        .served
        .iter()
        .filter(|(h, _)| !old.answered(h))
        .map(|(_, n)| n)
        .sum();
    let in_step = abort.left - abort.entered;
    let step_to_abort = abort
        .aborted_seen
        .saturating_duration_since(abort.step_seen);
    println!(
        "bad canary (FAIL_RATE=0.5, 20% step): in rotation {in_step:.1?}; CanaryStep to \
         RolloutAborted seen {step_to_abort:.1?} apart (analysis interval {interval:?}); \
         clients saw {} 500s of {} requests ({:.2}%), all from the canary, which answered \
         {} requests ({:.1}% of them 500); event: {}",
        canary_failed.len(),
        report.requests(),
        100.0 * canary_failed.len() as f64 / report.requests() as f64,
        canary_ok + canary_failed.len() as u64,
        100.0 * canary_failed.len() as f64 / (canary_ok + canary_failed.len() as u64) as f64,
        abort.aborted
    );
    assert_eq!(
        report.failed_total(),
        canary_failed.len() as u64,
        "failures other than the canary's 500s: {:#?}",
        report.samples
    );
    assert!(
        report
            .failures
            .iter()
            .all(|f| f.class == FailureClass::Status5xx),
        "{:#?}",
        report.samples
    );
    assert!(
        !canary_failed.is_empty(),
        "the canary never answered: nothing was tested"
    );
    // The requests failed only while the canary took its share: none sent once it had
    // left rotation.
    let last_sent = canary_failed.iter().map(|f| f.start).max().expect("some");
    assert!(
        last_sent <= abort.left,
        "a 500 sent {:?} after the canary left rotation",
        last_sent - abort.left
    );
    assert!(
        step_to_abort <= interval + Duration::from_secs(2),
        "aborted {step_to_abort:?} after the step began (interval {interval:?})"
    );
    assert!(
        in_step <= interval + Duration::from_secs(4),
        "the canary took requests for {in_step:?}"
    );
    let share =
        100.0 * canary_failed.len() as f64 / (canary_ok + canary_failed.len() as u64) as f64;
    assert!(
        (40.0..=60.0).contains(&share),
        "the canary failed {share:.1}% of its requests with FAIL_RATE=0.5"
    );
    let message = &abort.aborted;
    let new_rate: f64 = message
        .split_once("new 5xx ")
        .and_then(|(_, rest)| rest.split_once('%'))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no new 5xx figure in {message:?}"));
    assert!(
        (40.0..=60.0).contains(&new_rate) && message.contains("% vs old 0.0% over "),
        "{message}"
    );
    assert!(message.contains(" requests"), "{message}");
    // The figures that aborted it stay on /metrics.
    let canary_errors = series(&abort.metrics, "error_ratio", "canary");
    let stable_errors = series(&abort.metrics, "error_ratio", "stable");
    println!(
        "/metrics after the abort: error ratio canary {canary_errors}, stable {stable_errors}"
    );
    assert!(
        (0.4..=0.6).contains(&canary_errors) && stable_errors == 0.0,
        "{:?}",
        abort.metrics
    );
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_canary_is_aborted_on_its_response_time_against_fast_old_replicas() {
    let fixture = LbFixture::new("e2e-canary-slow");
    let rollout = canary(
        "[{weight: 20, pause: 30s}, {weight: 50, pause: 30s}]",
        "{interval: 2s, minRequests: 50, maxResponseTimeRatio: 1.5}",
    );
    fixture.write_spec(&fixture.lb_spec(REPLICAS, "v1", &rollout));
    let controller = RunningController::start(&fixture.lb_run_args(&[]));
    fixture.serving(REPLICAS as usize).await;

    let abort = aborted_canary(&fixture, &controller, &rollout, "EXTRA_LATENCY_MS: \"40\"").await;
    let report = &abort.report;
    let step_to_abort = abort
        .aborted_seen
        .saturating_duration_since(abort.step_seen);
    println!(
        "slow canary (EXTRA_LATENCY_MS=40, 20% step): in rotation {:.1?}; CanaryStep to \
         RolloutAborted seen {step_to_abort:.1?} apart; {} requests, {} failed; event: {}",
        abort.left - abort.entered,
        report.requests(),
        report.failed_total(),
        abort.aborted
    );
    assert_eq!(report.failed_total(), 0, "{:#?}", report.samples);
    assert!(
        abort.aborted.contains("new mean response time ") && abort.aborted.contains("at most 1.5x"),
        "{}",
        abort.aborted
    );
    assert!(
        step_to_abort <= Duration::from_secs(6),
        "aborted {step_to_abort:?} after the step began"
    );
    let canary_rtime = series(&abort.metrics, "response_time_seconds", "canary");
    let stable_rtime = series(&abort.metrics, "response_time_seconds", "stable");
    println!("/metrics after the abort: mean response time canary {canary_rtime}s, stable {stable_rtime}s");
    assert!(
        canary_rtime >= 0.02 && stable_rtime < 0.01,
        "{:?}",
        abort.metrics
    );
    controller.stop().await;
}
