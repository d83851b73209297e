//! `dockscale status`: the running controller's status API, printed like `kubectl get`
//! (a table), `kubectl describe` (one service) or as JSON.
//!
//! The formatting functions are pure (they take the JSON and the time) and tested
//! here; only [`run`] talks to the controller.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "cannot reach dockscale at http://{addr} \
         (is `dockscale run` running with --listen {addr}?)"
    )]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: reqwest::Error,
    },
    #[error("no service named `{0}` (see `dockscale status` for the list)")]
    NotFound(String),
    #[error("unexpected answer from http://{addr}{path}: {message}")]
    Answer {
        addr: SocketAddr,
        path: String,
        message: String,
    },
}

/// Output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// A table (or a describe view with NAME).
    Table,
    /// The status API's JSON.
    Json,
}

/// Fetches and renders the status; the text to print.
pub async fn run(
    addr: SocketAddr,
    name: Option<&str>,
    output: Output,
) -> Result<String, StatusError> {
    let path = match name {
        Some(n) => format!("/api/v1/services/{n}"),
        None => "/api/v1/services".to_owned(),
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|source| StatusError::Unreachable { addr, source })?;
    let response = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .map_err(|source| StatusError::Unreachable { addr, source })?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(StatusError::NotFound(name.unwrap_or_default().to_owned()));
    }
    let answer = |message: String| StatusError::Answer {
        addr,
        path: path.clone(),
        message,
    };
    if !response.status().is_success() {
        return Err(answer(format!("HTTP {}", response.status())));
    }
    let body: Value = response.json().await.map_err(|e| answer(e.to_string()))?;
    let now = SystemTime::now();
    Ok(match (output, name) {
        (Output::Json, _) => {
            let mut text =
                serde_json::to_string_pretty(&body).map_err(|e| answer(e.to_string()))?;
            text.push('\n');
            text
        }
        (Output::Table, Some(_)) => describe(&body, now),
        (Output::Table, None) => {
            let services = body["services"].as_array().cloned().unwrap_or_default();
            let mut text = table(&services, now);
            // The shared frontends, when the spec has any (an older controller without
            // the endpoint: none shown).
            let frontends = match client
                .get(format!("http://{addr}/api/v1/frontends"))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                _ => None,
            };
            if let Some(list) = frontends
                .as_ref()
                .and_then(|f| f["frontends"].as_array())
                .filter(|f| !f.is_empty())
            {
                text.push('\n');
                text.push_str(&frontends_table(list, now));
            }
            if let Some(errors) = body["specErrors"].as_array().filter(|e| !e.is_empty()) {
                text.push_str(
                    "\nThe spec files do not validate; the last good spec is in force:\n",
                );
                for e in errors {
                    let _ = writeln!(text, "  {}", e.as_str().unwrap_or_default());
                }
            }
            text
        }
    })
}

/// A kubectl-style age: `45s`, `3m`, `2h`, `5d`.
pub fn age(since: Option<&str>, now: SystemTime) -> String {
    let Some(t) = since.and_then(|s| humantime::parse_rfc3339(s).ok()) else {
        return "-".to_owned();
    };
    let secs = now.duration_since(t).unwrap_or_default().as_secs();
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn num(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string())
}

fn autoscale_column(svc: &Value) -> String {
    let a = &svc["autoscaler"];
    if a.is_null() {
        return "-".to_owned();
    }
    let mut column = format!(
        "{}/{}-{} {}",
        num(&a["desired"]),
        num(&a["minReplicas"]),
        num(&a["maxReplicas"]),
        a["target"].as_str().unwrap_or("")
    );
    let floor = &a["schedule"]["active"]["minReplicas"];
    if !floor.is_null() {
        let _ = write!(column, ", schedule floor {}", num(floor));
    }
    let pool = &svc["warmPool"];
    if !pool.is_null() {
        let _ = write!(
            column,
            ", warm {}/{}",
            num(&pool["ready"]),
            num(&pool["size"])
        );
        if pool["warming"].as_u64().is_some_and(|n| n > 0) {
            let _ = write!(column, " (+{} warming)", num(&pool["warming"]));
        }
    }
    column
}

fn condition<'a>(svc: &'a Value, kind: &str) -> Option<&'a Value> {
    svc["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// A condition's status as a table shows it: `True`, `False`, or `-` without it.
fn condition_status(of: &Value, kind: &str) -> &'static str {
    condition(of, kind).map_or("-", |c| if c["status"] == true { "True" } else { "False" })
}

/// The message of the newest event, cut to a table's column.
fn last_event(of: &Value) -> String {
    of["events"]
        .as_array()
        .and_then(|e| e.last())
        .and_then(|e| e["message"].as_str())
        .map(|m| truncate(m, 60))
        .unwrap_or_default()
}

/// The table of `dockscale status`.
pub fn table(services: &[Value], now: SystemTime) -> String {
    let header = [
        "SERVICE",
        "DESIRED",
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "AUTOSCALE",
        "AGE",
        "LAST EVENT",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for svc in services {
        let available = condition_status(svc, "Available");
        let last_event = last_event(svc);
        rows.push(vec![
            svc["name"].as_str().unwrap_or("?").to_owned(),
            num(&svc["replicas"]["desired"]),
            format!(
                "{}/{}",
                num(&svc["replicas"]["ready"]),
                num(&svc["replicas"]["desired"])
            ),
            num(&svc["replicas"]["updated"]),
            available.to_owned(),
            autoscale_column(svc),
            age(svc["created"].as_str(), now),
            last_event,
        ]);
    }
    columns(&rows)
}

/// The table of the shared frontends under `dockscale status`: binds, certificates
/// (how many, the soonest expiry), whether the files on disk are what is served.
pub fn frontends_table(frontends: &[Value], now: SystemTime) -> String {
    let header = ["FRONTEND", "BINDS", "CERTIFICATES", "VALID", "LAST EVENT"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for f in frontends {
        let binds: Vec<&str> = f["binds"]
            .as_array()
            .map(|b| b.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let certificates = f["certificates"].as_array().cloned().unwrap_or_default();
        let soonest = certificates
            .iter()
            .filter_map(|c| c["notAfter"].as_str())
            .filter_map(|t| humantime::parse_rfc3339(t).ok())
            .min();
        let certs = match soonest {
            None => "-".to_owned(),
            Some(t) => {
                let left = t.duration_since(now).map_or(0, |d| d.as_secs() / 86_400);
                format!("{} (expires in {left}d)", certificates.len())
            }
        };
        let valid = condition_status(f, "CertificatesValid");
        let last_event = last_event(f);
        rows.push(vec![
            f["name"].as_str().unwrap_or("?").to_owned(),
            binds.join(","),
            certs,
            valid.to_owned(),
            last_event,
        ]);
    }
    columns(&rows)
}

/// The describe view of `dockscale status NAME`.
pub fn describe(svc: &Value, now: SystemTime) -> String {
    let mut out = String::new();
    let r = &svc["replicas"];
    let _ = writeln!(
        out,
        "Name:           {}",
        svc["name"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "Backend:        {}",
        svc["backend"].as_str().unwrap_or("<none>")
    );
    let _ = writeln!(
        out,
        "Generation:     {} (observed {})",
        num(&svc["generation"]),
        num(&svc["observedGeneration"])
    );
    let _ = writeln!(
        out,
        "Template hash:  {}",
        svc["templateHash"].as_str().unwrap_or("")
    );
    let _ = writeln!(
        out,
        "Replicas:       {} desired | {} updated | {} current | {} ready | \
         {} starting | {} terminating",
        num(&r["desired"]),
        num(&r["updated"]),
        num(&r["current"]),
        num(&r["ready"]),
        num(&r["pending"]),
        num(&r["terminating"])
    );
    let a = &svc["autoscaler"];
    if !a.is_null() {
        let _ = writeln!(
            out,
            "Autoscaler:     {}..{} replicas, {}; demand {}; desired {} ({})",
            num(&a["minReplicas"]),
            num(&a["maxReplicas"]),
            a["target"].as_str().unwrap_or(""),
            a["demand"]
                .as_f64()
                .map_or("-".to_owned(), |d| format!("{d:.1}")),
            num(&a["desired"]),
            a["reason"].as_str().unwrap_or("")
        );
        let _ = writeln!(
            out,
            "                {}",
            a["message"].as_str().unwrap_or("")
        );
        describe_schedule(&a["schedule"], now, &mut out);
    }
    let pool = &svc["warmPool"];
    if !pool.is_null() {
        let _ = writeln!(
            out,
            "Warm pool:      {} size | {} ready (paused) | {} warming; never counted as \
             replicas",
            num(&pool["size"]),
            num(&pool["ready"]),
            num(&pool["warming"])
        );
    }
    describe_tasks(svc, &mut out);
    describe_containers(svc, &mut out);
    describe_members(svc, &mut out);
    out.push_str("Conditions:\n");
    let mut rows = vec![["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]
        .map(str::to_owned)
        .to_vec()];
    for c in svc["conditions"].as_array().into_iter().flatten() {
        rows.push(vec![
            c["type"].as_str().unwrap_or("").to_owned(),
            if c["status"] == true { "True" } else { "False" }.to_owned(),
            c["reason"].as_str().unwrap_or("").to_owned(),
            age(c["lastTransitionTime"].as_str(), now),
            c["message"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    for line in columns(&rows).lines() {
        let _ = writeln!(out, "  {line}");
    }
    out.push_str("Events:\n");
    let events = svc["events"].as_array().cloned().unwrap_or_default();
    if events.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let mut rows = vec![["TYPE", "REASON", "AGE", "MESSAGE"]
            .map(str::to_owned)
            .to_vec()];
        for e in &events {
            let count = e["count"].as_u64().unwrap_or(1);
            let mut when = age(e["lastTime"].as_str(), now);
            if count > 1 {
                let _ = write!(
                    when,
                    " (x{count} over {})",
                    age(e["firstTime"].as_str(), now)
                );
            }
            rows.push(vec![
                e["type"].as_str().unwrap_or("").to_owned(),
                e["reason"].as_str().unwrap_or("").to_owned(),
                when,
                e["message"].as_str().unwrap_or("").to_owned(),
            ]);
        }
        for line in columns(&rows).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// `autoscale.schedules`: the window in force (its message says until when, in its
/// time zone) and the next to open.
fn describe_schedule(schedule: &Value, now: SystemTime, out: &mut String) {
    if schedule.is_null() {
        return;
    }
    let active = &schedule["active"];
    let first = if active.is_null() {
        "no window in force".to_owned()
    } else {
        active["message"].as_str().unwrap_or("").to_owned()
    };
    let _ = writeln!(out, "Schedule:       {first}");
    let next = &schedule["next"];
    if next.is_null() {
        return;
    }
    let zone = next["timezone"].as_str().unwrap_or("UTC");
    let opens = next["opens"].as_str().unwrap_or("");
    let when = match (
        humantime::parse_rfc3339(opens),
        zone.parse::<crate::spec::schedule::TimeZone>(),
    ) {
        (Ok(t), Ok(tz)) => crate::autoscale::schedule::local_time(t, tz, now),
        _ => opens.to_owned(),
    };
    let _ = writeln!(
        out,
        "                next: at least {} from {when} (schedule \"{}\", {zone})",
        num(&next["minReplicas"]),
        next["cron"].as_str().unwrap_or("")
    );
}

/// Swarm runtime: the service's tasks, by node.
fn describe_tasks(svc: &Value, out: &mut String) {
    let Some(tasks) = svc["tasks"].as_array().filter(|t| !t.is_empty()) else {
        return;
    };
    out.push_str("Tasks:\n");
    let mut rows = vec![[
        "NODE", "TASK", "STATE", "DESIRED", "ADDRESS", "ROTATION", "ERROR",
    ]
    .map(str::to_owned)
    .to_vec()];
    for t in tasks {
        let text = |key: &str| t[key].as_str().unwrap_or("-").to_owned();
        rows.push(vec![
            text("node"),
            text("name"),
            text("state"),
            text("desired"),
            text("addr"),
            if t["inRotation"] == true { "in" } else { "out" }.to_owned(),
            t["error"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    for line in columns(&rows).lines() {
        let _ = writeln!(out, "  {}", line.trim_end());
    }
}

/// Docker runtime: the live replicas, with their health.
fn describe_containers(svc: &Value, out: &mut String) {
    let Some(containers) = svc["containers"].as_array().filter(|c| !c.is_empty()) else {
        return;
    };
    out.push_str("Replicas:\n");
    let mut rows = vec![["NAME", "ID", "STATE", "HEALTH", "TEMPLATE", "SLOT"]
        .map(str::to_owned)
        .to_vec()];
    for c in containers {
        let text = |key: &str| c[key].as_str().unwrap_or("-").to_owned();
        rows.push(vec![
            text("name"),
            text("id"),
            text("state"),
            text("health"),
            if c["updated"] == true {
                "current"
            } else {
                "old"
            }
            .to_owned(),
            text("slot"),
        ]);
    }
    for line in columns(&rows).lines() {
        let _ = writeln!(out, "  {}", line.trim_end());
    }
}

/// The hand-started members, apart from the replicas.
fn describe_members(svc: &Value, out: &mut String) {
    let Some(members) = svc["members"].as_array().filter(|m| !m.is_empty()) else {
        return;
    };
    out.push_str("Members:\n");
    let mut rows = vec![["NAME", "ID", "STATE", "SERVING", "IN ROTATION", "SLOT"]
        .map(str::to_owned)
        .to_vec()];
    for m in members {
        let text = |key: &str| m[key].as_str().unwrap_or("-").to_owned();
        rows.push(vec![
            text("name"),
            text("id"),
            text("state"),
            // `wrong network` reads as one column.
            text("serving").replace(' ', "-"),
            if m["inRotation"] == true { "yes" } else { "no" }.to_owned(),
            text("slot"),
        ]);
    }
    for line in columns(&rows).lines() {
        let _ = writeln!(out, "  {}", line.trim_end());
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

/// Left-aligned columns separated by three spaces (the last one unpadded).
fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).expect("time")
    }

    fn webapp() -> Value {
        serde_json::json!({
            "name": "webapp", "generation": 3, "observedGeneration": 3,
            "templateHash": "ab12cd34ef",
            "backend": "web", "created": "2026-11-24T10:00:00Z", "deleting": false,
            "replicas": {
                "desired": 4, "current": 4, "ready": 3, "updated": 4, "readyUpdated": 3,
                "pending": 0, "terminating": 0
            },
            "autoscaler": {
                "minReplicas": 2, "maxReplicas": 10, "target": "inflight 8/replica",
                "demand": 27.5, "recommendation": 4, "desired": 4, "reason": "ScaledUp",
                "message":
                    "autoscaler: demand 27.5, target 8/replica, recommendation 4: \
                     scaling up from 2 to 4",
                "lastScaleTime": "2026-11-24T10:59:00Z"
            },
            "conditions": [
                {
                    "type": "Available", "status": true, "reason": "MinimumReplicasAvailable",
                    "message": "3 of 4 replicas ready",
                    "lastTransitionTime": "2026-11-24T10:00:05Z"
                },
                {
                    "type": "Progressing", "status": true, "reason": "ReplicasUpdating",
                    "message": "3 of 4 ready", "lastTransitionTime": "2026-11-24T10:59:30Z"
                }
            ],
            "events": [
                {
                    "type": "Normal", "reason": "SuccessfulCreate",
                    "message": "Created replica webapp-x1y2z", "count": 3,
                    "firstTime": "2026-11-24T10:00:01Z", "lastTime": "2026-11-24T10:59:00Z"
                },
                {
                    "type": "Normal", "reason": "Autoscaled",
                    "message": "autoscaler: scaling up from 2 to 4", "count": 1,
                    "firstTime": "2026-11-24T10:59:00Z", "lastTime": "2026-11-24T10:59:00Z"
                }
            ]
        })
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now = at("2026-11-24T12:00:00Z");
        assert_eq!(age(Some("2026-11-24T11:59:15Z"), now), "45s");
        assert_eq!(age(Some("2026-11-24T11:57:00Z"), now), "3m");
        assert_eq!(age(Some("2026-11-24T09:00:00Z"), now), "3h");
        assert_eq!(age(Some("2026-11-19T12:00:00Z"), now), "5d");
        assert_eq!(age(None, now), "-");
        assert_eq!(age(Some("garbage"), now), "-");
    }

    #[test]
    fn the_table_has_one_row_per_service() {
        let pool = serde_json::json!({
            "name": "workers", "created": "2026-11-24T11:00:00Z",
            "replicas": {"desired": 2, "ready": 2, "updated": 2},
            "autoscaler": null, "conditions": [], "events": []
        });
        let text = table(&[webapp(), pool], at("2026-11-24T11:00:00Z"));
        assert_eq!(
            text,
            "SERVICE   DESIRED   READY   UP-TO-DATE   AVAILABLE   AUTOSCALE                   AGE   LAST EVENT\n\
             webapp    4         3/4     4            True        4/2-10 inflight 8/replica   60m   autoscaler: scaling up from 2 to 4\n\
             workers   2         2/2     2            -           -                           0s\n"
        );
    }

    #[test]
    fn describe_and_the_table_show_the_warm_pool_apart_from_the_replicas() {
        let mut svc = webapp();
        svc["warmPool"] = serde_json::json!({"size": 2, "ready": 1, "warming": 1});
        let now = at("2026-11-24T11:00:00Z");
        let text = table(&[svc.clone()], now);
        assert!(
            text.contains("4/2-10 inflight 8/replica, warm 1/2 (+1 warming)"),
            "{text}"
        );
        let text = describe(&svc, now);
        assert!(
            text.contains(
                "Warm pool:      2 size | 1 ready (paused) | 1 warming; never counted as \
                 replicas"
            ),
            "{text}"
        );
        assert!(!table(&[webapp()], now).contains("warm"));
    }

    #[test]
    fn describe_and_the_table_show_the_schedule_window_and_the_next() {
        let mut svc = webapp();
        svc["autoscaler"]["schedule"] = serde_json::json!({
            "active": {
                "cron": "0 8 * * 1-5", "timezone": "Europe/Zurich", "minReplicas": 6,
                "opened": "2026-11-24T07:00:00Z", "until": "2026-11-24T17:00:00Z",
                "message":
                    "schedule \"0 8 * * 1-5\" (Europe/Zurich) holds at least 6 until 18:00 CET"
            },
            "next": {
                "cron": "0 8 * * 1-5", "timezone": "Europe/Zurich", "minReplicas": 6,
                "opens": "2026-11-25T07:00:00Z"
            }
        });
        let now = at("2026-11-24T11:00:00Z");
        let text = describe(&svc, now);
        assert!(
            text.contains(
                "Schedule:       schedule \"0 8 * * 1-5\" (Europe/Zurich) holds at least 6 \
                 until 18:00 CET\n                next: at least 6 from 2026-11-25 08:00 CET \
                 (schedule \"0 8 * * 1-5\", Europe/Zurich)\n"
            ),
            "{text}"
        );
        let table = table(&[svc.clone()], now);
        assert!(
            table.contains("4/2-10 inflight 8/replica, schedule floor 6"),
            "{table}"
        );
        svc["autoscaler"]["schedule"]["active"] = Value::Null;
        let text = describe(&svc, now);
        assert!(
            text.contains("Schedule:       no window in force\n                next:"),
            "{text}"
        );
    }

    #[test]
    fn describe_lists_replicas_with_their_health() {
        let svc = serde_json::json!({
            "name": "web",
            "replicas": {},
            "containers": [
                {"name": "web-abcde", "id": "0123456789ab", "state": "serving",
                 "health": "healthy", "updated": true, "slot": "slot1"},
                {"name": "web-fghij", "id": "ba9876543210", "state": "unhealthy",
                 "health": "unhealthy", "updated": false},
                {"name": "web-klmno", "id": "aaaaaaaaaaaa", "state": "serving",
                 "health": null, "updated": true}
            ]
        });
        let text = describe(&svc, SystemTime::now());
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != "Replicas:")
            .take(5)
            .collect();
        assert_eq!(rows.len(), 5, "{text}");
        assert!(rows[1]
            .split_whitespace()
            .eq(["NAME", "ID", "STATE", "HEALTH", "TEMPLATE", "SLOT"]));
        assert!(rows[2].split_whitespace().eq([
            "web-abcde",
            "0123456789ab",
            "serving",
            "healthy",
            "current",
            "slot1"
        ]));
        assert!(rows[3].split_whitespace().eq([
            "web-fghij",
            "ba9876543210",
            "unhealthy",
            "unhealthy",
            "old",
            "-"
        ]));
        assert!(rows[4].split_whitespace().eq([
            "web-klmno",
            "aaaaaaaaaaaa",
            "serving",
            "-",
            "current",
            "-"
        ]));
    }

    #[test]
    fn describe_lists_members_apart_from_replicas() {
        let svc = serde_json::json!({
            "name": "web",
            "replicas": {},
            "containers": [
                {"name": "web-abcde", "id": "0123456789ab", "state": "serving",
                 "health": null, "updated": true, "slot": "slot1"}
            ],
            "members": [
                {"name": "s3", "id": "cafecafecafe", "state": "running",
                 "serving": "serving", "inRotation": true, "slot": "slot2"},
                {"name": "s4", "id": "beefbeefbeef", "state": "running",
                 "serving": "wrong network", "inRotation": false}
            ]
        });
        let text = describe(&svc, SystemTime::now());
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != "Members:")
            .take(4)
            .collect();
        assert_eq!(rows.len(), 4, "{text}");
        assert!(rows[1]
            .split_whitespace()
            .eq(["NAME", "ID", "STATE", "SERVING", "IN", "ROTATION", "SLOT"]));
        assert!(rows[2].split_whitespace().eq([
            "s3",
            "cafecafecafe",
            "running",
            "serving",
            "yes",
            "slot2"
        ]));
        assert!(rows[3].split_whitespace().eq([
            "s4",
            "beefbeefbeef",
            "running",
            "wrong-network",
            "no",
            "-"
        ]));
        let replicas: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != "Replicas:")
            .take_while(|l| *l != "Members:")
            .collect();
        assert_eq!(replicas.len(), 3, "the members are not replicas: {text}");
    }

    #[test]
    fn describe_lists_swarm_tasks_by_node() {
        let svc = serde_json::json!({
            "name": "web",
            "replicas": {},
            "tasks": [
                {"node": "node-a", "name": "web.1", "state": "running", "desired": "running",
                 "addr": "198.18.0.2:30001", "inRotation": true},
                {"node": "node-b", "name": "web.2", "state": "pending", "desired": "running",
                 "addr": null, "inRotation": false, "error": "no suitable node"}
            ]
        });
        let text = describe(&svc, SystemTime::now());
        let tasks: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != "Tasks:")
            .take(4)
            .collect();
        assert_eq!(tasks[0], "Tasks:");
        assert!(tasks[1].starts_with("  NODE"), "{text}");
        assert!(
            tasks[2].contains("node-a")
                && tasks[2].contains("198.18.0.2:30001")
                && tasks[2].contains(" in"),
            "{text}"
        );
        assert!(
            tasks[3].contains("node-b")
                && tasks[3].contains("out")
                && tasks[3].contains("no suitable node"),
            "{text}"
        );
    }

    #[test]
    fn the_frontends_table_shows_binds_certificates_and_validity() {
        let now = humantime::parse_rfc3339("2026-12-01T00:00:00Z").expect("time");
        let frontends = vec![
            serde_json::json!({
                "name": "public",
                "binds": ["0.0.0.0:443", "0.0.0.0:80"],
                "certificates": [
                    {"file": "a.pem", "names": ["a.example"], "notAfter": "2027-01-01T00:00:00Z"},
                    {"file": "b.pem", "names": ["b.example"], "notAfter": "2026-12-15T00:00:00Z"}
                ],
                "conditions": [{"type": "CertificatesValid", "status": false}],
                "events": [{"message": "Certificate b.pem does not match its key"}]
            }),
            serde_json::json!({"name": "plain", "binds": ["127.0.0.1:8080"], "certificates": []}),
        ];
        let text = frontends_table(&frontends, now);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("FRONTEND"), "{text}");
        assert!(lines[1].contains("0.0.0.0:443,0.0.0.0:80"), "{text}");
        assert!(
            lines[1].contains("2 (expires in 14d)"),
            "the soonest: {text}"
        );
        assert!(lines[1].contains("False"), "{text}");
        assert!(lines[1].contains("does not match its key"), "{text}");
        assert!(lines[2].starts_with("plain"), "{text}");
        assert!(lines[2].contains(" - "), "no certificate: {text}");
    }

    #[test]
    fn describe_shows_conditions_and_events() {
        let text = describe(&webapp(), at("2026-11-24T11:00:00Z"));
        assert!(
            text.starts_with("Name:           webapp\nBackend:        web\n"),
            "{text}"
        );
        assert!(
            text.contains("Replicas:       4 desired | 4 updated | 4 current | 3 ready"),
            "{text}"
        );
        assert!(
            text.contains(
                "Autoscaler:     2..10 replicas, inflight 8/replica; demand 27.5; \
                 desired 4 (ScaledUp)"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "  Available     True     MinimumReplicasAvailable   59m   3 of 4 replicas ready\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "  Normal   SuccessfulCreate   60s (x3 over 59m)   Created replica webapp-x1y2z\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn odd_json_renders_without_panicking() {
        let now = SystemTime::now();
        for v in [
            serde_json::json!(null),
            serde_json::json!({}),
            serde_json::json!({"replicas": 3, "events": "x"}),
        ] {
            let _ = describe(&v, now);
            let _ = table(&[v], now);
        }
    }
}
