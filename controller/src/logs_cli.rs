//! `dockscale logs NAME`: the logs of a service's replicas, merged, each line prefixed
//! with its replica's name, like `docker compose logs`.
//!
//! It reads the Docker engine directly (bollard), not the controller: logs are the
//! engine's, and they are wanted most when the controller is down. The replicas are the
//! containers labelled `dockscale.managed-by=dockscale` and `dockscale.service=NAME`,
//! running or exited; the warm pool's containers (`NAME-warm-<5>`, paused, outside
//! rotation) are not replicas and are left out. Without `--follow` their lines are
//! sorted by the time Docker received them; with it, lines are printed as they come,
//! and a replica that starts later (a replacement, a scale-up) is followed from its
//! first line, found by the engine's `start` events (subscribed before the list, so
//! none falls in between), and so is a warm container once it is taken, found by its
//! `rename` to a replica's name (its lines from before, while it warmed, included). It
//! only reads: no container is ever changed.
//!
//! The line handling (prefixes, splitting, merging, `--since`) is pure and tested here.

use std::collections::{BTreeSet, HashMap};
use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime};

use bollard::query_parameters::{
    EventsOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::cli::LogsArgs;
use crate::model::replica::{is_warm_name, LABEL_MANAGED_BY, LABEL_SERVICE, MANAGED_BY};

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("cannot reach the Docker engine")]
    Docker(#[source] bollard::errors::Error),
    #[error("cannot list the replicas of `{service}`")]
    List {
        service: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("no replicas of `{0}` (no container labelled dockscale.service={0}); with --follow, dockscale logs waits for them")]
    NoReplicas(String),
    #[error(
        "--since {0:?}: expected a duration (`10m`) or an RFC 3339 time (`2024-05-01T12:00:00Z`)"
    )]
    Since(String),
    #[error("cannot write to stdout")]
    Write(#[source] std::io::Error),
}

/// One replica: its name (without Docker's leading `/`) and id.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Replica {
    id: String,
    name: String,
}

/// One line of a replica's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub replica: String,
    /// When Docker received it (its timestamp, parsed); `None` when unreadable.
    pub at: Option<SystemTime>,
    /// Docker's timestamp as it sent it.
    pub stamp: String,
    pub text: String,
}

/// Prints the logs; returns when done (without `--follow`) or never (with it, until
/// interrupted or the output is closed).
pub async fn run(args: &LogsArgs) -> Result<(), LogsError> {
    let since = match &args.since {
        Some(text) => since_epoch(text, SystemTime::now())?,
        None => 0,
    };
    // No request timeout: a followed log is one request that lasts.
    let docker = Docker::connect_with_defaults()
        .map_err(LogsError::Docker)?
        .with_timeout(Duration::from_secs(365 * 24 * 3600))
        .negotiate_version()
        .await
        .map_err(LogsError::Docker)?;
    let mut out = Output::new();
    if args.follow {
        follow(&docker, args, since, &mut out).await
    } else {
        let replicas = list(&docker, &args.name).await?;
        if replicas.is_empty() {
            return Err(LogsError::NoReplicas(args.name.clone()));
        }
        let reads = replicas
            .iter()
            .map(|r| read_all(&docker, r, since, args.tail));
        let lines = merge(futures::future::join_all(reads).await);
        for line in &lines {
            out.print(line, args.timestamps)?;
        }
        Ok(())
    }
}

/// Follows every replica there is and every one that starts later.
async fn follow(
    docker: &Docker,
    args: &LogsArgs,
    since: i32,
    out: &mut Output,
) -> Result<(), LogsError> {
    let (lines_tx, mut lines_rx) = mpsc::unbounded_channel::<Line>();
    let (found_tx, mut found_rx) = mpsc::unbounded_channel::<Found>();
    let mut followed = BTreeSet::new();
    let watcher = tokio::spawn(watch_starts(docker.clone(), args.name.clone(), found_tx));
    loop {
        tokio::select! {
            Some(found) = found_rx.recv() => {
                if followed.insert(found.replica.id.clone()) {
                    // --tail is for the replicas there were; one that starts later is
                    // new, so all of its lines are shown.
                    let tail = if found.started_later { None } else { args.tail };
                    let lines = lines_tx.clone();
                    tokio::spawn(stream_lines(docker.clone(), found.replica, since, tail, lines));
                }
            }
            Some(line) = lines_rx.recv() => out.print(&line, args.timestamps)?,
            else => break,
        }
    }
    watcher.abort();
    Ok(())
}

/// A replica to follow.
struct Found {
    replica: Replica,
    /// Not in the first list: it started while the logs were followed.
    started_later: bool,
}

/// Sends every replica of `service` listed, then each one that starts (found by the
/// engine's `start` events, from a second before the list so that none falls between);
/// after the event stream broke, subscribes and lists again. Ends with the receiver.
async fn watch_starts(docker: Docker, service: String, found: mpsc::UnboundedSender<Found>) {
    let filters = HashMap::from([
        ("type", vec!["container".to_owned()]),
        // A start, or the rename of a warm container taken as a replica.
        ("event", vec!["start".to_owned(), "rename".to_owned()]),
        (
            "label",
            vec![
                format!("{LABEL_MANAGED_BY}={MANAGED_BY}"),
                format!("{LABEL_SERVICE}={service}"),
            ],
        ),
    ]);
    let mut first_list = true;
    loop {
        // The request goes out at the first poll, after the list: replayed from a
        // second back, a start in between is delivered all the same.
        let since = SystemTime::now()
            .checked_sub(Duration::from_secs(1))
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or_else(|| "0".to_owned(), |d| d.as_secs().to_string());
        let options = EventsOptionsBuilder::default()
            .filters(&filters)
            .since(&since)
            .build();
        let mut events = docker.events(Some(options));
        match list(&docker, &service).await {
            Ok(replicas) => {
                if replicas.is_empty() && first_list {
                    eprintln!("waiting for replicas of `{service}` to start");
                }
                for replica in replicas {
                    let started_later = !first_list;
                    if found
                        .send(Found {
                            replica,
                            started_later,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                first_list = false;
            }
            Err(e) => eprintln!("error: {}", crate::report::Chain(&e)),
        }
        while let Some(event) = events.next().await {
            let Ok(event) = event else { break };
            let Some(actor) = event.actor else { continue };
            let (Some(id), Some(name)) = (
                actor.id,
                actor.attributes.and_then(|mut a| a.remove("name")),
            ) else {
                continue;
            };
            // The name it has now: a warm one is followed once taken (renamed).
            if is_warm_name(&service, &name) {
                continue;
            }
            let replica = Replica { id, name };
            if found
                .send(Found {
                    replica,
                    started_later: true,
                })
                .is_err()
            {
                return;
            }
        }
        if found.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The replicas of `service`, running or not, oldest first; not its warm containers.
async fn list(docker: &Docker, service: &str) -> Result<Vec<Replica>, LogsError> {
    let filters = HashMap::from([(
        "label",
        vec![
            format!("{LABEL_MANAGED_BY}={MANAGED_BY}"),
            format!("{LABEL_SERVICE}={service}"),
        ],
    )]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let mut summaries = docker
        .list_containers(Some(options))
        .await
        .map_err(|source| LogsError::List {
            service: service.to_owned(),
            source,
        })?;
    summaries.sort_by_key(|s| s.created.unwrap_or_default());
    Ok(summaries
        .into_iter()
        .filter_map(|s| {
            let name = s.names?.first()?.trim_start_matches('/').to_owned();
            (!is_warm_name(service, &name)).then_some(Replica { id: s.id?, name })
        })
        .collect())
}

fn options(follow: bool, since: i32, tail: Option<u64>) -> bollard::query_parameters::LogsOptions {
    LogsOptionsBuilder::default()
        .follow(follow)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .since(since)
        .tail(&tail.map_or_else(|| "all".to_owned(), |n| n.to_string()))
        .build()
}

/// A replica's lines so far (a failed read is said on stderr and gives none).
async fn read_all(docker: &Docker, replica: &Replica, since: i32, tail: Option<u64>) -> Vec<Line> {
    let mut stream = docker.logs(&replica.id, Some(options(false, since, tail)));
    let mut splitter = Splitter::default();
    let mut lines = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => lines.extend(splitter.push(&replica.name, chunk.as_ref())),
            Err(e) => {
                eprintln!(
                    "error: logs of {}: {}",
                    replica.name,
                    crate::report::Chain(&e)
                );
                break;
            }
        }
    }
    lines.extend(splitter.finish(&replica.name));
    lines
}

/// Sends a replica's lines as they come, until its log ends (it stopped).
async fn stream_lines(
    docker: Docker,
    replica: Replica,
    since: i32,
    tail: Option<u64>,
    lines: mpsc::UnboundedSender<Line>,
) {
    let mut stream = docker.logs(&replica.id, Some(options(true, since, tail)));
    let mut splitter = Splitter::default();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        for line in splitter.push(&replica.name, chunk.as_ref()) {
            if lines.send(line).is_err() {
                return;
            }
        }
    }
    if let Some(line) = splitter.finish(&replica.name) {
        let _ = lines.send(line);
    }
}

/// Cuts a log's chunks into lines: Docker frames what a container wrote, which may be
/// part of a line or several.
#[derive(Default)]
struct Splitter {
    pending: Vec<u8>,
}

impl Splitter {
    fn push(&mut self, replica: &str, chunk: &[u8]) -> Vec<Line> {
        self.pending.extend_from_slice(chunk);
        let mut lines = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = self.pending.drain(..=end).collect();
            lines.push(parse_line(replica, &raw[..raw.len() - 1]));
        }
        lines
    }

    /// What is left without a final newline.
    fn finish(&mut self, replica: &str) -> Option<Line> {
        if self.pending.is_empty() {
            return None;
        }
        let raw = std::mem::take(&mut self.pending);
        Some(parse_line(replica, &raw))
    }
}

/// `2024-05-01T12:00:00.123456789Z text` (Docker's `timestamps=true` form) read into
/// its time and text.
fn parse_line(replica: &str, raw: &[u8]) -> Line {
    let text = String::from_utf8_lossy(raw);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    let (stamp, rest) = text.split_once(' ').unwrap_or((text, ""));
    match humantime::parse_rfc3339(stamp) {
        Ok(at) => Line {
            replica: replica.to_owned(),
            at: Some(at),
            stamp: stamp.to_owned(),
            text: rest.to_owned(),
        },
        Err(_) => Line {
            replica: replica.to_owned(),
            at: None,
            stamp: String::new(),
            text: text.to_owned(),
        },
    }
}

/// Every replica's lines in one list, by the time Docker received them (a replica's
/// own order kept among equal times).
pub fn merge(per_replica: Vec<Vec<Line>>) -> Vec<Line> {
    let mut all: Vec<Line> = per_replica.into_iter().flatten().collect();
    all.sort_by_key(|l| l.at);
    all
}

/// `--since`: a duration back from `now`, or a time; Docker wants Unix seconds.
pub fn since_epoch(text: &str, now: SystemTime) -> Result<i32, LogsError> {
    let at = match humantime::parse_duration(text) {
        Ok(ago) => now.checked_sub(ago),
        Err(_) => humantime::parse_rfc3339_weak(text).ok(),
    }
    .ok_or_else(|| LogsError::Since(text.to_owned()))?;
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| LogsError::Since(text.to_owned()))?
        .as_secs();
    i32::try_from(secs).map_err(|_| LogsError::Since(text.to_owned()))
}

/// `webapp-x1y2z | text`, the name coloured on a terminal.
pub fn format_line(line: &Line, timestamps: bool, color: Option<u8>) -> String {
    let name = match color {
        Some(c) => format!("\u{1b}[{c}m{}\u{1b}[0m", line.replica),
        None => line.replica.clone(),
    };
    if timestamps && !line.stamp.is_empty() {
        format!("{name} | {} {}", line.stamp, line.text)
    } else {
        format!("{name} | {}", line.text)
    }
}

/// Standard output, with a colour per replica when it is a terminal (as compose does).
struct Output {
    colors: Option<HashMap<String, u8>>,
}

impl Output {
    fn new() -> Self {
        Output {
            colors: std::io::stdout().is_terminal().then(HashMap::new),
        }
    }

    fn print(&mut self, line: &Line, timestamps: bool) -> Result<(), LogsError> {
        // Cyan, yellow, green, magenta, blue, red: compose's order.
        const PALETTE: [u8; 6] = [36, 33, 32, 35, 34, 31];
        let color = self.colors.as_mut().map(|colors| {
            let next = PALETTE[colors.len() % PALETTE.len()];
            *colors.entry(line.replica.clone()).or_insert(next)
        });
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", format_line(line, timestamps, color))
            .and_then(|()| stdout.flush())
            .map_err(LogsError::Write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).expect("time")
    }

    #[test]
    fn chunks_are_cut_into_lines_with_their_docker_timestamps() {
        let mut s = Splitter::default();
        let first = s.push(
            "w-1",
            b"2024-05-01T12:00:00.5Z hello\n2024-05-01T12:00:01Z par",
        );
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].text, "hello");
        assert_eq!(first[0].at, Some(at("2024-05-01T12:00:00.5Z")));
        let second = s.push("w-1", b"tial\n");
        assert_eq!(second[0].text, "partial");
        assert_eq!(s.finish("w-1"), None);
        s.push("w-1", b"no newline");
        assert_eq!(s.finish("w-1").map(|l| l.text), Some("no newline".into()));
    }

    #[test]
    fn replicas_merge_by_time_even_when_docker_trims_trailing_zeros() {
        // RFC 3339 with nanoseconds drops trailing zeros: `.1Z` is later than `.09Z`
        // although it sorts before it as text.
        let a = vec![parse_line("a", b"2024-05-01T12:00:00.1Z a1")];
        let b = vec![
            parse_line("b", b"2024-05-01T12:00:00.09Z b1"),
            parse_line("b", b"2024-05-01T12:00:00.2Z b2"),
        ];
        let merged: Vec<String> = merge(vec![a, b]).into_iter().map(|l| l.text).collect();
        assert_eq!(merged, ["b1", "a1", "b2"]);
    }

    #[test]
    fn lines_are_prefixed_like_docker_compose_logs() {
        let line = parse_line("webapp-x1y2z", b"2024-05-01T12:00:00Z listening");
        assert_eq!(format_line(&line, false, None), "webapp-x1y2z | listening");
        assert_eq!(
            format_line(&line, true, None),
            "webapp-x1y2z | 2024-05-01T12:00:00Z listening"
        );
        assert_eq!(
            format_line(&line, false, Some(36)),
            "\u{1b}[36mwebapp-x1y2z\u{1b}[0m | listening"
        );
    }

    #[test]
    fn since_takes_a_duration_or_a_time() {
        let now = at("2024-05-01T12:10:00Z");
        let ten_minutes_ago = since_epoch("10m", now).expect("duration");
        assert_eq!(
            ten_minutes_ago,
            since_epoch("2024-05-01T12:00:00Z", now).expect("time")
        );
        assert!(since_epoch("yesterday", now).is_err());
    }
}
