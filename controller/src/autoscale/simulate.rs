//! `dockscale simulate`: replays a recorded load series through the very same
//! [`Autoscaler`] the controller runs, with a simulated clock, so that operators can
//! tune `autoscale.behavior` offline before trusting it.
//!
//! The series is a CSV file with the header `t_seconds,scur,qcur,qtime`, one row per
//! sample, and optionally the columns `rtime` (response time, ms) and `rate` (requests
//! per second) for the `responseTimeMillis` and `requestsPerSecondPerReplica` targets;
//! an empty `scur` or `qcur` cell marks a failed sample (a gap). A replica asked for
//! becomes ready `startup_delay` later; replicas removed are gone at once. The series
//! runs on the wall clock from `start` (the sample at `t_seconds` is taken at `start +
//! t_seconds`), which is what `autoscale.schedules` are read against. The timeline
//! has one row per sample:
//! `t_seconds,demand,recommended,replicas,reason,signal,schedule_floor`, where
//! `recommended` is the count the autoscaler asks for, `replicas` the count ready at
//! that time, `signal` what decided (a target, or `schedule` when a window's floor
//! did) and `schedule_floor` the floor of the schedule window in force (0 outside).
//!
//! This module reads the series and replays it; the decisions are the autoscaler's
//! alone, the drawing [`plot`](mod@plot)'s.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

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
                requests: 0,
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
    /// What decided (`inflightPerReplica`, `schedule`), empty without metrics.
    pub signal: &'static str,
    /// The floor of the schedule window in force, 0 outside every window.
    pub schedule_floor: u32,
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

/// Where the series starts on the wall clock unless told: Monday 2024-01-01 00:00 UTC,
/// fixed so that a replay never depends on the day it runs.
pub const DEFAULT_START: &str = "2024-01-01T00:00:00Z";

/// Replays `series` through the autoscaler of `service`, the series' `t_seconds`
/// counted from `start` on the wall clock.
pub fn simulate(
    service: &ScaledService,
    series: &[SeriesRow],
    startup_delay: Duration,
    start: SystemTime,
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
        let decision = autoscaler.observe(row.t, start + row.t, row.load);
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
            signal: decision.decided_by().unwrap_or(""),
            schedule_floor: decision.schedule_floor().unwrap_or(0),
        });
    }
    Ok(timeline)
}

/// The timeline as CSV.
pub fn to_csv(timeline: &[TimelineRow]) -> String {
    let mut out =
        String::from("t_seconds,demand,recommended,replicas,reason,signal,schedule_floor\n");
    for r in timeline {
        let demand = r.demand.map(|d| format!("{d:.2}")).unwrap_or_default();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{},{demand},{},{},{},{},{}",
            format_seconds(r.t),
            r.recommended,
            r.replicas,
            r.reason,
            r.signal,
            r.schedule_floor
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

/// Draws demand, the recommendation and the ready replicas over time as an SVG, and
/// the schedule floor when `schedules` is set.
pub fn plot(
    path: &Path,
    title: &str,
    timeline: &[TimelineRow],
    schedules: bool,
) -> Result<(), SimulateError> {
    let line = |label, value: fn(&TimelineRow) -> Option<f64>| Line {
        label,
        points: timeline
            .iter()
            .filter_map(|r| Some((r.t.as_secs_f64(), value(r)?)))
            .collect(),
    };
    let mut lines = vec![
        line("demand (scur + qcur, averaged)", |r| r.demand),
        line("recommended", |r| Some(f64::from(r.recommended))),
        line("ready replicas", |r| Some(f64::from(r.replicas))),
    ];
    if schedules {
        lines.push(line("schedule floor", |r| {
            Some(f64::from(r.schedule_floor))
        }));
    }
    Ok(plot::timeline(path, title, &lines)?)
}

/// Reads `--start`: an RFC 3339 time (`2024-01-01T07:55:00+01:00`).
pub fn parse_start(text: &str) -> Result<SystemTime, String> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.to_utc().into())
        .map_err(|e| {
            format!(
                "invalid start `{text}`: {e} (an RFC 3339 time such as 2024-01-01T07:55:00+01:00)"
            )
        })
}

/// [`DEFAULT_START`] as a time.
pub fn default_start() -> SystemTime {
    // A constant that parses (checked by a test).
    parse_start(DEFAULT_START).unwrap_or(SystemTime::UNIX_EPOCH)
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
            ("autoscale.yaml", "step", DEFAULT_START),
            ("autoscale.yaml", "spike", DEFAULT_START),
            ("autoscale.yaml", "sine", DEFAULT_START),
            ("autoscale.yaml", "gaps", DEFAULT_START),
            ("signals.yaml", "signals", DEFAULT_START),
            ("signals.yaml", "outage", DEFAULT_START),
            ("schedule.yaml", "weekday", WEEKDAY_START),
        ];
        for (spec, name, start) in series {
            let service = service_from(spec);
            let series = read_series(&testdata(&format!("{name}.csv"))).expect("series");
            let start = parse_start(start).expect("a start");
            let timeline =
                simulate(&service, &series, Duration::from_secs(5), start).expect("simulates");
            let csv = to_csv(&timeline);
            let expected_path = testdata(&format!("{name}.expected.csv"));
            if std::env::var_os("DOCKSCALE_BLESS").is_some() {
                std::fs::write(&expected_path, &csv).expect("bless");
            }
            let expected = std::fs::read_to_string(&expected_path).expect("expected timeline");
            assert!(csv == expected, "{name}: the timeline changed:\n{csv}");
        }
    }

    /// weekday.csv starts on Monday 2024-01-08 at 07:50 in Zurich.
    const WEEKDAY_START: &str = "2024-01-08T07:50:00+01:00";

    #[test]
    fn a_weekday_window_lifts_the_floor_the_load_goes_beyond_it_and_its_end_is_gradual() {
        let service = service_from("schedule.yaml");
        let series = read_series(&testdata("weekday.csv")).expect("series");
        let start = parse_start(WEEKDAY_START).expect("a start");
        let timeline = simulate(&service, &series, Duration::from_secs(5), start).expect("runs");
        let at = |secs: u64| {
            timeline
                .iter()
                .find(|r| r.t == Duration::from_secs(secs))
                .expect("a row at that time")
        };
        // 07:59:55: 6 in flight, one replica, no window.
        assert_eq!((at(595).recommended, at(595).schedule_floor), (1, 0));
        // 08:00 sharp: the floor, decided by the schedule, at once.
        let opened = at(600);
        assert_eq!(
            (
                opened.recommended,
                opened.reason,
                opened.signal,
                opened.schedule_floor
            ),
            (4, "ScaledUp", "schedule", 4)
        );
        // The ramp up to 20 in flight stays under the floor's 32.
        assert!((600..1200)
            .step_by(5)
            .all(|t| at(t).recommended == 4 && at(t).schedule_floor == 4));
        // 56 in flight from 08:10: 7 replicas, decided by the load.
        let peak = at(1795);
        assert_eq!((peak.recommended, peak.signal), (7, "inflightPerReplica"));
        // 12 in flight from 08:20: down to the floor, and no lower inside the window.
        let inside: Vec<&TimelineRow> = timeline
            .iter()
            .filter(|r| (1800..2400).contains(&r.t.as_secs()))
            .collect();
        assert!(inside.iter().all(|r| r.recommended >= 4));
        assert_eq!(at(2395).reason, "AtScheduleFloor");
        // 08:30: the window ends; the floor's recommendations hold for the 60 s
        // scale-down window, then at most 2 per 20 s, to the 2 replicas 12 needs.
        assert!((2400..2455)
            .step_by(5)
            .all(|t| at(t).recommended == 4 && at(t).schedule_floor == 0));
        assert_eq!(at(2460).recommended, 2);
        assert_eq!(timeline.last().map(|r| r.recommended), Some(2));

        // The same Saturday morning: no window opens.
        let saturday = parse_start("2024-01-13T07:50:00+01:00").expect("a start");
        let weekend = simulate(&service, &series, Duration::from_secs(5), saturday).expect("runs");
        assert!(weekend.iter().all(|r| r.schedule_floor == 0));
        assert_eq!(
            weekend
                .iter()
                .find(|r| r.t.as_secs() == 600)
                .map(|r| r.recommended),
            Some(1)
        );
    }

    #[test]
    fn the_start_is_an_rfc3339_time_and_the_default_one_parses() {
        assert_eq!(
            default_start(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200)
        );
        assert_eq!(
            parse_start("2024-01-08T07:50:00+01:00").ok(),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_696_600))
        );
        let err = parse_start("monday").expect_err("not a time");
        assert!(err.starts_with("invalid start `monday`"), "{err}");
    }

    #[test]
    fn a_step_is_followed_and_gaps_never_scale_down() {
        let service = service();
        let step = simulate(
            &service,
            &read_series(&testdata("step.csv")).expect("s"),
            Duration::from_secs(5),
            default_start(),
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
        let timeline =
            simulate(&service, &gaps, Duration::from_secs(5), default_start()).expect("simulates");
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
        let timeline = simulate(&service, &series, Duration::from_secs(5), default_start())
            .expect("simulates");
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
        let timeline = simulate(&service, &series, Duration::from_secs(5), default_start())
            .expect("simulates");
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
                    requests: 0,
                }),
            })
            .collect();
        let timeline = simulate(&service, &series, Duration::from_secs(5), default_start())
            .expect("simulates");
        assert_eq!(timeline[0].recommended, 4);
        assert_eq!(
            timeline.iter().map(|r| r.replicas).collect::<Vec<_>>(),
            [1, 1, 1, 4, 4, 4, 4, 4, 4, 4]
        );
    }

    #[test]
    fn a_service_that_scales_to_zero_idles_down_and_wakes_on_the_next_request() {
        let mut service = service();
        let a = service.spec.autoscale.as_mut().expect("autoscale");
        a.min_replicas = 0;
        a.scale_to_zero = Some(crate::spec::ScaleToZero {
            idle_after: crate::spec::Duration::from_secs(20),
            activation_timeout: crate::spec::Duration::from_secs(10),
        });
        let at = |scur: f64| {
            Some(BackendLoad {
                scur,
                ..BackendLoad::default()
            })
        };
        // Idle for a minute (a recorded series has no request counter: nothing in
        // flight and no rate is idleness), then 4 requests in flight.
        let series: Vec<SeriesRow> = (0..40)
            .map(|i| SeriesRow {
                t: Duration::from_secs(2 * i),
                load: at(if i < 30 { 0.0 } else { 4.0 }),
            })
            .collect();
        let timeline =
            simulate(&service, &series, Duration::ZERO, default_start()).expect("simulates");
        let zero = timeline
            .iter()
            .position(|r| r.recommended == 0)
            .expect("goes to zero");
        assert_eq!(timeline[zero].t, Duration::from_secs(20));
        assert_eq!(timeline[zero].reason, "ScaledToZero");
        assert!(timeline[zero + 1..30]
            .iter()
            .all(|r| (r.recommended, r.reason) == (0, "Idle")));
        assert_eq!(
            (timeline[30].recommended, timeline[30].reason),
            (1, "Woken")
        );
        assert_eq!(timeline[30].replicas, 1);
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
