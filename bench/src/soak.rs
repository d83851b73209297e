//! The chaos soak as a benchmark (issue 14): the e2e suite's harness
//! ([`dockscale_e2e::chaos`]) run for about ten minutes against the release build,
//! its figures as a Markdown section. A soak that fails is a result, not an error: the
//! section says what failed.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use dockscale_e2e::chaos::{self, SoakConfig, SoakReport};
use dockscale_e2e::haproxy::LbFixture;
use dockscale_e2e::load::FailureClass;

use crate::secs;

/// Runs the soak (`quick`: the e2e suite's size, one deck of faults) and returns its
/// section.
pub async fn soak(dockscale: &Path, quick: bool) -> anyhow::Result<String> {
    let bin = std::fs::canonicalize(dockscale)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dockscale.display()))?;
    let seed = SoakConfig::seed_from_env();
    let config = if quick {
        SoakConfig::ci(seed)
    } else {
        SoakConfig::bench(seed)
    };
    let fixture = LbFixture::new("bench-soak");
    let report = chaos::run(&fixture, &bin, &config).await;
    println!("{report}");
    if !report.passed() {
        println!("--- dockscale's log ---\n{}", report.log_tail);
    }
    Ok(section(&report, &config))
}

fn classes(map: &std::collections::BTreeMap<FailureClass, u64>) -> String {
    let total: u64 = map.values().sum();
    if total == 0 {
        return "0".to_owned();
    }
    let parts: Vec<String> = map.iter().map(|(c, n)| format!("{n} {c}")).collect();
    format!("{total} ({})", parts.join(", "))
}

fn section(r: &SoakReport, config: &SoakConfig) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## 6. Chaos soak\n");
    let _ = writeln!(
        s,
        "Seed {seed} (`SOAK_SEED={seed} bench/run --only soak` replays the faults). dockscale's \
         default flags, {} keep-alive clients GETting `{}` through the managed HAProxy, \
         `replicas: {}`, `rollout: {{maxSurge: 1, maxUnavailable: 0}}`, one fault every \
         {:?}–{:?}.\n",
        config.clients,
        config.path,
        config.replicas,
        config.gap.start(),
        config.gap.end(),
        seed = r.seed,
    );
    let by_kind: Vec<String> = r
        .faults_by_kind()
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let recoveries: Vec<Duration> = r.recoveries().into_iter().flatten().collect();
    let replaced: Vec<Duration> = r.replacements.iter().filter_map(|(.., t)| *t).collect();
    let not_replaced = r.replacements.iter().filter(|(.., t)| t.is_none()).count();
    let m = &r.monitor;
    let rows = [
        (
            "faults".to_owned(),
            format!("{} ({})", r.timeline.len(), by_kind.join(", ")),
        ),
        (
            "requests".to_owned(),
            format!("{} ({} ok)", r.load.requests(), r.load.ok),
        ),
        (
            "failed outside HAProxy-kill windows".to_owned(),
            classes(&r.outside),
        ),
        (
            "failed inside HAProxy-kill windows".to_owned(),
            classes(&r.inside_windows),
        ),
        (
            "cut mid-body by a SIGKILL of their replica (allowed)".to_owned(),
            r.allowed_cuts.to_string(),
        ),
        (
            format!(
                "HAProxy serving again after a SIGKILL ({} kills)",
                r.windows.len()
            ),
            format!(
                "{}{}",
                secs(&recoveries),
                if recoveries.len() < r.windows.len() {
                    format!(", {} never", r.windows.len() - recoveries.len())
                } else {
                    String::new()
                }
            ),
        ),
        (
            format!(
                "back to the desired count after a kill, stop or rm -f ({})",
                r.replacements.len()
            ),
            format!(
                "{}{}",
                secs(&replaced),
                if not_replaced > 0 {
                    format!(", {not_replaced} not within {:?}", config.replace_within)
                } else {
                    String::new()
                }
            ),
        ),
        (
            "converged after the last fault".to_owned(),
            match &r.convergence {
                Ok(t) => format!("{:.2} s", t.as_secs_f64()),
                Err(off) => format!("not within {:?}: {off}", config.converge_within),
            },
        ),
        (
            "highest replica count".to_owned(),
            format!(
                "{} for desired {} (bound {}); {} of {} samples over the bound",
                m.highest, m.desired_at_highest, m.bound_at_highest, m.over, m.samples
            ),
        ),
        (
            "verdict".to_owned(),
            if r.passed() {
                "passed".to_owned()
            } else {
                format!("FAILED: {}", r.violations.join("; "))
            },
        ),
    ];
    let _ = writeln!(s, "| figure | value |\n| --- | --- |");
    for (name, value) in rows {
        let _ = writeln!(s, "| {name} | {} |", value.replace('|', "\\|"));
    }
    let _ = writeln!(s, "\n<details><summary>Fault timeline</summary>\n\n```");
    for f in &r.timeline {
        let _ = writeln!(s, "{f}");
    }
    let _ = writeln!(s, "```\n\n</details>");
    s
}
