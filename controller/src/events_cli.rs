//! `dockscale events [-w]`: every service's events from a running controller's
//! `/api/v1/events`, like `kubectl get events [-w]`.
//!
//! Without `--watch` it prints the events the controller keeps (the last 50 per
//! service), oldest first. With it, it reads `/api/v1/events?watch=true`, a stream of
//! JSON lines that starts with those and goes on with each new event, and each repeat
//! of one (its count raised), until interrupted or the controller stops. Rendering is
//! pure and tested here.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::status_cli::{age, Output};

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("cannot reach dockscale at http://{addr} (is `dockscale run` running with --listen {addr}?)")]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: reqwest::Error,
    },
    #[error("unexpected answer from http://{addr}/api/v1/events: {message}")]
    Answer { addr: SocketAddr, message: String },
    #[error("the event stream from http://{addr} broke")]
    Stream {
        addr: SocketAddr,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot write to stdout")]
    Write(#[source] std::io::Error),
}

/// The table's header.
const HEADER: [&str; 5] = ["LAST SEEN", "SERVICE", "TYPE", "REASON", "MESSAGE"];

/// Prints the events; with `watch`, goes on until the controller stops.
pub async fn run(addr: SocketAddr, watch: bool, output: Output) -> Result<(), EventsError> {
    let mut builder = reqwest::Client::builder().no_proxy();
    if !watch {
        builder = builder.timeout(Duration::from_secs(10));
    }
    let client = builder
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|source| EventsError::Unreachable { addr, source })?;
    let url = if watch {
        format!("http://{addr}/api/v1/events?watch=true")
    } else {
        format!("http://{addr}/api/v1/events")
    };
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|source| EventsError::Unreachable { addr, source })?;
    if !response.status().is_success() {
        return Err(EventsError::Answer {
            addr,
            message: format!("HTTP {}", response.status()),
        });
    }
    if output == Output::Table {
        print(&row_text(&HEADER.map(String::from)))?;
    }
    if !watch {
        let body: Value = response.json().await.map_err(|e| EventsError::Answer {
            addr,
            message: e.to_string(),
        })?;
        let events = body["events"].as_array().cloned().unwrap_or_default();
        for event in &events {
            print(&render(event, output, SystemTime::now()))?;
        }
        return Ok(());
    }
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|source| EventsError::Stream { addr, source })?
    {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            match serde_json::from_slice::<Value>(&line) {
                Ok(event) => print(&render(&event, output, SystemTime::now()))?,
                Err(e) => eprintln!(
                    "error: an event that is not JSON ({e}): {}",
                    String::from_utf8_lossy(&line)
                ),
            }
        }
    }
    Ok(())
}

fn print(text: &str) -> Result<(), EventsError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .map_err(EventsError::Write)
}

/// One event as a table row or a JSON line.
pub fn render(event: &Value, output: Output, now: SystemTime) -> String {
    match output {
        Output::Json => event.to_string(),
        Output::Table => row_text(&row(event, now)),
    }
}

/// `LAST SEEN  SERVICE  TYPE  REASON  MESSAGE`; a repeated event says how often, as
/// kubectl does (`(x3 over 2m)`).
pub fn row(event: &Value, now: SystemTime) -> [String; 5] {
    let text = |key: &str| event[key].as_str().unwrap_or("").to_owned();
    let count = event["count"].as_u64().unwrap_or(1);
    let mut message = text("message");
    if count > 1 {
        message.push_str(&format!(
            " (x{count} over {})",
            age(event["firstTime"].as_str(), now)
        ));
    }
    [
        age(event["lastTime"].as_str(), now),
        text("service"),
        text("type"),
        text("reason"),
        message,
    ]
}

/// Fixed-width columns, so that rows printed one at a time (a watch) still line up.
fn row_text(cells: &[String; 5]) -> String {
    format!(
        "{:<10} {:<20} {:<8} {:<22} {}",
        cells[0], cells[1], cells[2], cells[3], cells[4]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(count: u64) -> Value {
        serde_json::json!({
            "service": "webapp", "type": "Normal", "reason": "SuccessfulCreate",
            "message": "Created replica webapp-abcde (0123456789ab)", "count": count,
            "firstTime": "2024-05-01T12:00:00Z", "lastTime": "2024-05-01T12:01:00Z", "seq": 7
        })
    }

    fn now() -> SystemTime {
        humantime::parse_rfc3339("2024-05-01T12:01:30Z").expect("time")
    }

    #[test]
    fn an_event_reads_like_kubectl_get_events() {
        let text = render(&event(1), Output::Table, now());
        assert_eq!(
            text,
            "30s        webapp               Normal   SuccessfulCreate       Created replica webapp-abcde (0123456789ab)"
        );
    }

    #[test]
    fn a_repeated_event_says_how_often() {
        let [.., message] = row(&event(3), now());
        assert!(message.ends_with("(x3 over 90s)"), "{message}");
    }

    #[test]
    fn json_output_is_the_api_object_on_one_line() {
        let line = render(&event(1), Output::Json, now());
        assert!(!line.contains('\n'));
        assert_eq!(
            serde_json::from_str::<Value>(&line).expect("json"),
            event(1)
        );
    }
}
