//! A keep-alive load through HAProxy that classifies every failed request.
//!
//! Each client is a `reqwest` client with its own connection pool (HTTP/1.1, no
//! proxy), so it keeps one connection to the frontend open as a browser or a service
//! mesh does; a connection that HAProxy closes is replaced by the pool. Every request
//! is timed, and a failure keeps its class, its start and end and, for a body cut
//! after the headers, the replica that served it (`X-Served-By`), so that a caller can
//! judge failures against what happened meanwhile (see [`crate::chaos`]). Successes
//! are counted by the replica that answered them too, so that a caller can tell which
//! share of the traffic each replica (or each version) took.
//!
//! The load is bounded: it stops at its deadline or when asked, whichever is first,
//! and its tasks are aborted when it is dropped. It owns no judgement: it counts.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many failures keep a printable description (and the first of each class).
pub const FAILURE_SAMPLES: usize = 20;

/// Failures kept with their times; beyond this only counters grow (a service at zero
/// replicas fails thousands of requests a second, and the counters say enough).
const FAILURES_KEPT: usize = 2_000_000;

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureClass {
    /// An HTTP 5xx status (HAProxy's 503 when no server is up, 502, 504).
    Status5xx,
    /// An HTTP 4xx status.
    Status4xx,
    /// Any other status that is not 200.
    StatusOther,
    /// The frontend refused the connection, or reset it before it was established
    /// (nothing listening, or a listener that died with the connection in its
    /// backlog: HAProxy is down).
    Refused,
    /// No complete answer within the client timeout.
    Timeout,
    /// The connection closed or was reset after the request was sent, before a status
    /// line came back.
    NoResponse,
    /// The status line and headers came, then the connection closed before the whole
    /// body did.
    MidBody,
    /// Anything else (the error is in the sample).
    Other,
}

impl FailureClass {
    pub const ALL: [FailureClass; 8] = [
        FailureClass::Status5xx,
        FailureClass::Status4xx,
        FailureClass::StatusOther,
        FailureClass::Refused,
        FailureClass::Timeout,
        FailureClass::NoResponse,
        FailureClass::MidBody,
        FailureClass::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FailureClass::Status5xx => "HTTP 5xx",
            FailureClass::Status4xx => "HTTP 4xx",
            FailureClass::StatusOther => "HTTP other",
            FailureClass::Refused => "connect refused/reset",
            FailureClass::Timeout => "timeout",
            FailureClass::NoResponse => "closed before response",
            FailureClass::MidBody => "cut mid-body",
            FailureClass::Other => "other",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One failed request.
#[derive(Clone, Debug)]
pub struct Failure {
    pub class: FailureClass,
    /// When the request was sent (a pooled connection was asked for).
    pub start: Instant,
    /// When it was given up.
    pub end: Instant,
    /// The replica that sent the headers (`X-Served-By`, the container's hostname,
    /// which Docker sets to the first 12 characters of its id), when known.
    pub served_by: Option<String>,
}

/// A failure in words, for the test output.
#[derive(Clone, Debug)]
pub struct FailureSample {
    pub class: FailureClass,
    /// Since the load started.
    pub at: Duration,
    pub detail: String,
}

impl fmt::Display for FailureSample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "+{:.3}s {}: {}",
            self.at.as_secs_f64(),
            self.class,
            self.detail
        )
    }
}

/// What a load saw.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub ok: u64,
    /// Successful requests by the replica that answered them (`X-Served-By`).
    pub served: BTreeMap<String, u64>,
    /// Failed requests by class.
    pub failed: BTreeMap<FailureClass, u64>,
    /// Every failure with its times (up to a bound; `failed` counts all).
    pub failures: Vec<Failure>,
    /// The first failures, and the first of each class, in words.
    pub samples: Vec<FailureSample>,
    pub started: Option<Instant>,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    pub fn requests(&self) -> u64 {
        self.ok + self.failed_total()
    }
}

#[derive(Default)]
struct Tally {
    failed: BTreeMap<FailureClass, u64>,
    failures: Vec<Failure>,
    samples: Vec<FailureSample>,
}

/// A running keep-alive load; see the module documentation.
pub struct KeepAliveLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    served: Arc<Mutex<BTreeMap<String, u64>>>,
    tally: Arc<Mutex<Tally>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl KeepAliveLoad {
    /// Starts `clients` clients, each sending GETs of `url` one after the other on its
    /// own keep-alive connection, each request given up after `timeout`, until
    /// stopped or `limit` has passed.
    pub fn start(url: &str, clients: usize, timeout: Duration, limit: Duration) -> Self {
        KeepAliveLoad::paced(url, clients, Duration::ZERO, timeout, limit)
    }

    /// Like [`KeepAliveLoad::start`], each client waiting `gap` after each answer: a
    /// load whose rate is bounded (at most `clients / gap` requests a second) against
    /// a backend that answers at once.
    pub fn paced(
        url: &str,
        clients: usize,
        gap: Duration,
        timeout: Duration,
        limit: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let served = Arc::new(Mutex::new(BTreeMap::new()));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let started = Instant::now();
        let handles = (0..clients)
            .map(|_| {
                let client = reqwest::Client::builder()
                    .http1_only()
                    .no_proxy()
                    .pool_max_idle_per_host(1)
                    .timeout(timeout)
                    .build()
                    .expect("an HTTP client (no TLS, no proxy: nothing can fail)");
                let (stop, ok, served, tally, url) = (
                    stop.clone(),
                    ok.clone(),
                    served.clone(),
                    tally.clone(),
                    url.to_owned(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                        let start = Instant::now();
                        match request(&client, &url).await {
                            Ok(by) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                let by = by.unwrap_or_default();
                                *served.lock().expect("served lock").entry(by).or_default() += 1;
                            }
                            Err((class, served_by, detail)) => {
                                let end = Instant::now();
                                record(&tally, started, class, start, end, served_by, detail);
                                // A refused connect returns at once: do not spin on a
                                // frontend that is down.
                                if class == FailureClass::Refused {
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                            }
                        }
                        if !gap.is_zero() {
                            tokio::time::sleep(gap).await;
                        }
                    }
                })
            })
            .collect();
        KeepAliveLoad {
            stop,
            ok,
            served,
            tally,
            handles,
            started,
        }
    }

    /// Successful requests so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Successful requests so far, by the replica that answered (`X-Served-By`; an
    /// empty name for an answer without it).
    pub fn served(&self) -> BTreeMap<String, u64> {
        self.served.lock().expect("served lock").clone()
    }

    /// Failed requests so far.
    pub fn failed(&self) -> u64 {
        self.tally.lock().expect("tally lock").failed.values().sum()
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Stops the clients, waits for their last requests and returns the figures.
    pub async fn finish(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for h in std::mem::take(&mut self.handles) {
            let _ = h.await;
        }
        let tally = std::mem::take(&mut *self.tally.lock().expect("tally lock"));
        LoadReport {
            ok: self.ok.load(Ordering::Relaxed),
            served: self.served(),
            failed: tally.failed,
            failures: tally.failures,
            samples: tally.samples,
            started: Some(self.started),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for KeepAliveLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in &self.handles {
            h.abort();
        }
    }
}

fn record(
    tally: &Mutex<Tally>,
    started: Instant,
    class: FailureClass,
    start: Instant,
    end: Instant,
    served_by: Option<String>,
    detail: String,
) {
    let mut t = tally.lock().expect("tally lock");
    let count = t.failed.entry(class).or_default();
    *count += 1;
    let first_of_class = *count == 1;
    if t.samples.len() < FAILURE_SAMPLES || first_of_class {
        let detail = match &served_by {
            Some(r) => format!("{detail} (served by {r})"),
            None => detail,
        };
        t.samples.push(FailureSample {
            class,
            at: end.duration_since(started),
            detail,
        });
    }
    if t.failures.len() < FAILURES_KEPT {
        t.failures.push(Failure {
            class,
            start,
            end,
            served_by,
        });
    }
}

/// One GET: `Ok` for a 200 with its whole body (with the replica that answered it),
/// else the class, the replica that answered (when headers came) and a description.
async fn request(
    client: &reqwest::Client,
    url: &str,
) -> Result<Option<String>, (FailureClass, Option<String>, String)> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| (classify_send(&e), None, chain(&e)))?;
    let status = response.status();
    let served_by = response
        .headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The body is read in every case, so that the connection can be reused.
    let body = response.bytes().await;
    match body {
        Err(e) => {
            let class = if e.is_timeout() {
                FailureClass::Timeout
            } else {
                FailureClass::MidBody
            };
            Err((
                class,
                served_by,
                format!("HTTP {status}, then {}", chain(&e)),
            ))
        }
        Ok(_) if status == reqwest::StatusCode::OK => Ok(served_by),
        Ok(body) => {
            let class = if status.is_server_error() {
                FailureClass::Status5xx
            } else if status.is_client_error() {
                FailureClass::Status4xx
            } else {
                FailureClass::StatusOther
            };
            let first = String::from_utf8_lossy(&body)
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(80)
                .collect::<String>();
            Err((class, served_by, format!("HTTP {status} {first}")))
        }
    }
}

/// The class of an error raised before any response header came.
fn classify_send(e: &reqwest::Error) -> FailureClass {
    if e.is_timeout() {
        return FailureClass::Timeout;
    }
    let io_kind = io_error_kind(e);
    if e.is_connect() {
        return match io_kind {
            Some(
                std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted,
            ) => FailureClass::Refused,
            Some(std::io::ErrorKind::TimedOut) => FailureClass::Timeout,
            _ => FailureClass::Other,
        };
    }
    let text = chain(e);
    let closed = matches!(
        io_kind,
        Some(
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof
        )
    ) || text.contains("connection closed")
        || text.contains("IncompleteMessage");
    if closed {
        FailureClass::NoResponse
    } else {
        FailureClass::Other
    }
}

/// The kind of the I/O error somewhere in `e`'s sources.
fn io_error_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = s.source();
    }
    None
}

/// An error and its sources, in one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-connection-at-a-time server that answers every request with `reply`
    /// (and then closes when `close` is set).
    async fn server(reply: &'static [u8], close: bool) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if !reply.is_empty() && s.write_all(reply).await.is_err() {
                            return;
                        }
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn one(addr: std::net::SocketAddr) -> LoadReport {
        let load = KeepAliveLoad::start(
            &format!("http://{addr}/"),
            1,
            Duration::from_millis(500),
            Duration::from_millis(300),
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        load.finish().await
    }

    fn only(report: &LoadReport) -> FailureClass {
        assert_eq!(report.ok, 0, "{report:?}");
        assert_eq!(report.failed.len(), 1, "{report:?}");
        *report.failed.keys().next().unwrap()
    }

    #[tokio::test]
    async fn a_200_with_its_body_is_a_success_on_one_connection() {
        let addr = server(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-served-by: abc\r\n\r\nok",
            false,
        )
        .await;
        let load = KeepAliveLoad::start(
            &format!("http://{addr}/"),
            1,
            Duration::from_millis(500),
            Duration::from_millis(300),
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        let report = load.finish().await;
        assert!(report.ok > 10, "{report:?}");
        assert_eq!(report.failed_total(), 0);
        assert_eq!(
            report.served.get("abc").copied(),
            Some(report.ok),
            "{report:?}"
        );
    }

    #[tokio::test]
    async fn failures_are_classified() {
        let addr = server(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 3\r\n\r\nno\n",
            false,
        )
        .await;
        assert_eq!(only(&one(addr).await), FailureClass::Status5xx);

        let addr = server(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(only(&one(addr).await), FailureClass::Status4xx);

        let cut = server(
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\nx-served-by: a1b2c3\r\n\r\nonly part",
            true,
        )
        .await;
        let report = one(cut).await;
        assert_eq!(only(&report), FailureClass::MidBody);
        assert_eq!(report.failures[0].served_by.as_deref(), Some("a1b2c3"));

        let silent_close = server(b"", true).await;
        assert_eq!(only(&one(silent_close).await), FailureClass::NoResponse);

        let hang = server(b"", false).await;
        assert_eq!(only(&one(hang).await), FailureClass::Timeout);

        // A port that was free a moment ago: nothing listens.
        let refused = std::net::SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
        assert_eq!(only(&one(refused).await), FailureClass::Refused);
    }
}
