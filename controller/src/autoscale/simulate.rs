//! `dockscale simulate`: replays a recorded load series through the very same
//! [`Autoscaler`] the controller runs, with a simulated clock, so that operators can
//! tune `autoscale.behavior` offline before trusting it.
//!
//! The series is a CSV file with the header `t_seconds,scur,qcur,qtime`, one row per
//! sample, and optionally the columns `rtime` (response time, ms) and `rate` (requests
//! per second) for the `responseTimeMillis` and `requestsPerSecondPerReplica` targets;
//! an empty `scur` or `qcur` cell marks a failed sample (a gap). A replica asked for
//! becomes ready `startup_delay` later; replicas removed are gone at once. The timeline
//! has one row per sample: `t_seconds,demand,recommended,replicas,reason,signal`, where
//! `recommended` is the count the autoscaler asks for, `replicas` the count ready at
//! that time and `signal` the target whose recommendation decided.
//!
//! This module reads the series and replays it; the decisions are the autoscaler's
//! alone, the drawing [`plot`](mod@plot)'s.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::autoscale::plot::{self, Line, PlotError};
use crate::autoscale::Autoscaler;
use crate::model::backend::BackendLoad;
use crate::spec::ScaledService;

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Row {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{path}: the series has no rows")]
    Empty { path: PathBuf },
    #[error("{0}")]
    Service(String),
    #[error(transparent)]
    Plot(#[from] PlotError),
}

/// One sample of a recorded series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeriesRow {
    pub t: Duration,
    /// `None`: the sample failed.
    pub load: Option<BackendLoad>,
}

#[derive(Deserialize)]
struct RawRow {
    t_seconds: f64,
    scur: Option<f64>,
    qcur: Option<f64>,
    qtime: Option<f64>,
    #[serde(default)]
    rtime: Option<f64>,
    #[serde(default)]
    rate: Option<f64>,
}

/// Reads a series file (`t_seconds,scur,qcur,qtime`).
pub fn read_series(path: &Path) -> Result<Vec<SeriesRow>, SimulateError> {
    let text = std::fs::read_to_string(path).map_err(|source| SimulateError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_series(path, &text)
}

pub fn parse_series(path: &Path, text: &str) -> Result<Vec<SeriesRow>, SimulateError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let row_error = |line: u64, message: String| SimulateError::Row {
        path: path.to_owned(),
        line,
        message,
    };
    let headers = reader
        .headers()
        .map_err(|e| row_error(1, e.to_string()))?
        .clone();
    for wanted in ["t_seconds", "scur", "qcur", "qtime"] {
        if !headers.iter().any(|h| h == wanted) {
            return Err(row_error(
                1,
                format!("the header must be `t_seconds,scur,qcur,qtime` (no `{wanted}`)"),
            ));
        }
    }
    let mut rows = Vec::new();
    let mut last = -1.0;
    for record in reader.deserialize::<RawRow>() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, csv::Position::line);
            let message = match e.kind() {
                csv::ErrorKind::Deserialize { err, .. } => format!("{err}"),
                _ => e.to_string(),
            };
            row_error(line, message)
        })?;
        let line = rows.len() as u64 + 2;
        let RawRow {
            t_seconds,
            scur,
            qcur,
            qtime,
            rtime,
            rate,
        } = record;
        if !t_seconds.is_finite() || t_seconds < 0.0 || t_seconds <= last {
            return Err(row_error(
                line,
                format!("t_seconds {t_seconds} must be a number above the previous row's"),
            ));
        }
        last = t_seconds;
        for v in [scur, qcur, qtime, rtime, rate].into_iter().flatten() {
            if !v.is_finite() || v < 0.0 {
                return Err(row_error(line, format!("{v} is not a count or time")));
            }
        }
        let load = match (scur, qcur) {
            (Some(scur), Some(qcur)) => Some(BackendLoad {
                scur,
                qcur,
                qtime_ms: qtime.unwrap_or(0.0),
                rtime_ms: rtime.unwrap_or(0.0),
                rate: rate.unwrap_or(0.0),
            }),
            _ => None,
        };
        rows.push(SeriesRow {
            t: Duration::from_secs_f64(t_seconds),
            load,
        });
    }
    if rows.is_empty() {
        return Err(SimulateError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(rows)
}

/// One row of the timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct TimelineRow {
    pub t: Duration,
    pub demand: Option<f64>,
    pub recommended: u32,
    pub replicas: u32,
    pub reason: &'static str,
    /// The target that decided (`inflightPerReplica`), empty without metrics.
    pub signal: &'static str,
}

/// Picks the service to simulate: `name`, or the only one with `autoscale`.
pub fn pick_service<'a>(
    services: &'a [ScaledService],
    name: Option<&str>,
) -> Result<&'a ScaledService, SimulateError> {
    match name {
        Some(n) => {
            let s = services.iter().find(|s| s.name() == n).ok_or_else(|| {
                SimulateError::Service(format!("no service named `{n}` in the spec"))
            })?;
            if s.spec.autoscale.is_none() {
                return Err(SimulateError::Service(format!(
                    "service `{n}` has no `autoscale` section"
                )));
            }
            Ok(s)
        }
        None => {
            let scaled: Vec<&ScaledService> = services
                .iter()
                .filter(|s| s.spec.autoscale.is_some())
                .collect();
            match scaled.as_slice() {
                [one] => Ok(one),
                [] => Err(SimulateError::Service(
                    "no service in the spec has an `autoscale` section".to_owned(),
                )),
                many => Err(SimulateError::Service(format!(
                    "several services autoscale ({}): choose one with --service",
                    many.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
                ))),
            }
        }
    }
}

/// Replays `series` through the autoscaler of `service`.
pub fn simulate(
    service: &ScaledService,
    series: &[SeriesRow],
    startup_delay: Duration,
) -> Result<Vec<TimelineRow>, SimulateError> {
    let config = service.spec.autoscale.as_ref().ok_or_else(|| {
        SimulateError::Service(format!(
            "service `{}` has no `autoscale` section",
            service.name()
        ))
    })?;
    let origin = series.first().map_or(Duration::ZERO, |r| r.t);
    let mut autoscaler = Autoscaler::new(config, service.spec.replicas, origin);
    let mut ready = autoscaler.desired();
    // Replicas asked for and not ready yet: when each becomes ready.
    let mut starting: VecDeque<Duration> = VecDeque::new();
    let mut timeline = Vec::with_capacity(series.len());
    for row in series {
        while starting.front().is_some_and(|at| *at <= row.t) {
            starting.pop_front();
            ready += 1;
        }
        let decision = autoscaler.observe(row.t, row.load);
        let asked = ready + starting.len() as u32;
        if decision.desired > asked {
            for _ in asked..decision.desired {
                starting.push_back(row.t + startup_delay);
            }
        } else if decision.desired < asked {
            // Replicas still starting are cancelled first, then ready ones removed.
            let mut excess = asked - decision.desired;
            while excess > 0 && starting.pop_back().is_some() {
                excess -= 1;
            }
            ready -= excess.min(ready);
        }
        if startup_delay.is_zero() {
            while starting.pop_front().is_some() {
                ready += 1;
            }
        }
        timeline.push(TimelineRow {
            t: row.t,
            demand: decision.demand,
            recommended: decision.desired,
            replicas: ready,
            reason: decision.reason.as_str(),
            signal: decision.signal.map_or("", |t| t.name()),
        });
    }
    Ok(timeline)
}

/// The timeline as CSV.
pub fn to_csv(timeline: &[TimelineRow]) -> String {
    let mut out = String::from("t_seconds,demand,recommended,replicas,reason,signal\n");
    for r in timeline {
        let demand = r.demand.map(|d| format!("{d:.2}")).unwrap_or_default();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{},{demand},{},{},{},{}",
            format_seconds(r.t),
            r.recommended,
            r.replicas,
            r.reason,
            r.signal
        );
    }
    out
}

fn format_seconds(t: Duration) -> String {
    let s = t.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s:.3}").trim_end_matches('0').to_owned()
    }
}

/// Draws demand, the recommendation and the ready replicas over time as an SVG.
pub fn plot(path: &Path, title: &str, timeline: &[TimelineRow]) -> Result<(), SimulateError> {
    let line = |label, value: fn(&TimelineRow) -> Option<f64>| Line {
        label,
        points: timeline
            .iter()
            .filter_map(|r| Some((r.t.as_secs_f64(), value(r)?)))
            .collect(),
    };
    let lines = [
        line("demand (scur + qcur, averaged)", |r| r.demand),
        line("recommended", |r| Some(f64::from(r.recommended))),
        line("ready replicas", |r| Some(f64::from(r.replicas))),
    ];
    Ok(plot::timeline(path, title, &lines)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/series")
            .join(name)
    }

    fn service() -> ScaledService {
        service_from("autoscale.yaml")
    }

    fn service_from(spec: &str) -> ScaledService {
        let loaded = crate::spec::manifest::load(&[testdata(spec)]).expect("spec loads");
        loaded[0].service.clone()
    }

    /// Each committed series gives its committed timeline. Regenerate after a
    /// deliberate change of the algorithm with `DOCKSCALE_BLESS=1 cargo test`, and
    /// read the diff before committing it.
    #[test]
    fn committed_series_give_their_expected_timelines() {
        let series = [
            ("autoscale.yaml", "step"),
            ("autoscale.yaml", "spike"),
            ("autoscale.yaml", "sine"),
            ("autoscale.yaml", "gaps"),
            ("signals.yaml", "signals"),
            ("signals.yaml", "outage"),
        ];
        for (spec, name) in series {
            let service = service_from(spec);
            let series = read_series(&testdata(&format!("{name}.csv"))).expect("series");
            let timeline = simulate(&service, &series, Duration::from_secs(5)).expect("simulates");
            let csv = to_csv(&timeline);
            let expected_path = testdata(&format!("{name}.expected.csv"));
            if std::env::var_os("DOCKSCALE_BLESS").is_some() {
                std::fs::write(&expected_path, &csv).expect("bless");
            }
            let expected = std::fs::read_to_string(&expected_path).expect("expected timeline");
            assert!(csv == expected, "{name}: the timeline changed:\n{csv}");
        }
    }

    #[test]
    fn a_step_is_followed_and_gaps_never_scale_down() {
        let service = service();
        let step = simulate(
            &service,
            &read_series(&testdata("step.csv")).expect("s"),
            Duration::from_secs(5),
        )
        .expect("simulates");
        assert_eq!(
            step.last().map(|r| r.replicas),
            Some(1),
            "back to the minimum"
        );
        // 60 in flight needs 7.5 replicas: 7 is within the 10% tolerance.
        assert_eq!(
            step.iter().map(|r| r.replicas).max(),
            Some(7),
            "up to what 60 in flight needs"
        );
        let gaps = read_series(&testdata("gaps.csv")).expect("series");
        let timeline = simulate(&service, &gaps, Duration::from_secs(5)).expect("simulates");
        for (row, sample) in timeline.windows(2).zip(gaps.iter().skip(1)) {
            if sample.load.is_none() {
                assert!(
                    row[1].recommended >= row[0].recommended,
                    "scaled down on a gap at {:?}",
                    sample.t
                );
            }
        }
    }

    #[test]
    fn each_signal_decides_in_turn_and_is_named() {
        let service = service_from("signals.yaml");
        let series = read_series(&testdata("signals.csv")).expect("series");
        let timeline = simulate(&service, &series, Duration::from_secs(5)).expect("simulates");
        let at = |secs: u64| {
            timeline
                .iter()
                .find(|r| r.t == Duration::from_secs(secs))
                .expect("a row at that time")
        };
        // 16 in flight: 2 replicas, decided by the in-flight target.
        assert_eq!(
            (at(50).recommended, at(50).signal),
            (2, "inflightPerReplica")
        );
        // 300 requests per second at 50 per replica: 6.
        assert_eq!(
            (at(120).recommended, at(120).signal),
            (6, "requestsPerSecondPerReplica")
        );
        // The response time over its target scales up on its own.
        let slow = timeline
            .iter()
            .find(|r| r.t >= Duration::from_secs(300) && r.reason == "ScaledUp")
            .expect("scales up on the response time");
        assert_eq!(slow.signal, "responseTimeMillis", "{slow:?}");
    }

    #[test]
    fn an_outage_goes_to_the_fallback_count_and_never_down() {
        let service = service_from("signals.yaml");
        let series = read_series(&testdata("outage.csv")).expect("series");
        let timeline = simulate(&service, &series, Duration::from_secs(5)).expect("simulates");
        let outage: Vec<&TimelineRow> = timeline
            .iter()
            .filter(|r| (60..150).contains(&r.t.as_secs()))
            .collect();
        assert!(outage
            .windows(2)
            .all(|w| w[1].recommended >= w[0].recommended));
        let fallback = outage
            .iter()
            .find(|r| r.reason == "MetricsUnavailable")
            .expect("the fallback applies");
        // Last good sample at 58 s, fallback.after 30 s.
        assert_eq!((fallback.t.as_secs(), fallback.recommended), (88, 4));
        assert_eq!(
            timeline.last().map(|r| r.recommended),
            Some(2),
            "back down after"
        );
    }

    #[test]
    fn replicas_become_ready_after_the_startup_delay() {
        let service = service();
        let series: Vec<SeriesRow> = (0..10)
            .map(|i| SeriesRow {
                t: Duration::from_secs(2 * i),
                load: Some(BackendLoad {
                    scur: 32.0,
                    qcur: 0.0,
                    qtime_ms: 0.0,
                    rtime_ms: 0.0,
                    rate: 0.0,
                }),
            })
            .collect();
        let timeline = simulate(&service, &series, Duration::from_secs(5)).expect("simulates");
        assert_eq!(timeline[0].recommended, 4);
        assert_eq!(
            timeline.iter().map(|r| r.replicas).collect::<Vec<_>>(),
            [1, 1, 1, 4, 4, 4, 4, 4, 4, 4]
        );
    }

    #[test]
    fn malformed_series_are_located_errors() {
        let p = Path::new("load.csv");
        let err = parse_series(p, "t,scur\n1,2\n").expect_err("bad header");
        assert!(
            err.to_string().starts_with("load.csv:1: the header"),
            "{err}"
        );
        let err =
            parse_series(p, "t_seconds,scur,qcur,qtime\n0,1,0,0\n2,x,0,0\n").expect_err("bad cell");
        assert!(err.to_string().starts_with("load.csv:3:"), "{err}");
        let err =
            parse_series(p, "t_seconds,scur,qcur,qtime\n2,1,0,0\n2,1,0,0\n").expect_err("time");
        assert!(
            err.to_string().starts_with("load.csv:3: t_seconds"),
            "{err}"
        );
        let err = parse_series(p, "t_seconds,scur,qcur,qtime\n").expect_err("empty");
        assert_eq!(err.to_string(), "load.csv: the series has no rows");
        let gaps = parse_series(p, "t_seconds,scur,qcur,qtime\n0,,,\n").expect("a gap row");
        assert_eq!(gaps[0].load, None);
    }
}
