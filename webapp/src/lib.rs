//! The demo backend: a tiny HTTP server that says which replica answered.
//!
//! dockscale's demo and end-to-end tests put replicas of it behind HAProxy. It owns
//! this HTTP surface:
//! - any path but `/healthz` answers `200` with one `key: value` per line:
//!   `hostname`, `session`, `count` and, when `GREETING` is set, `greeting`. The
//!   session is the `DSSESSION` cookie (set on the first request); `count` is how many
//!   requests this replica has served for it.
//! - `/healthz` answers `200 ok`.
//! - `?delay=<ms>` on any request (at most 60000) answers that much later, so load
//!   queues in HAProxy; a bad value is a `400` that says why.
//! - every response carries the hostname in `X-Served-By`.
//!
//! Knobs, all read from the environment at start ([`Config::from_lookup`]). An invalid
//! value stops the process at start with a message naming the variable and the value.
//! - `PORT` (default 8080): the port served on all interfaces.
//! - `GREETING`: an extra `greeting` line in every answer.
//! - `LOG_REQUESTS=1` (or `true`): one stdout line per request.
//! - `FAIL_RATE` (a number from 0 to 1, default 0): that share of the requests to any
//!   path but `/healthz` is answered `500` with a body that says it was injected (and
//!   still `X-Served-By`). A counter decides, not chance: see [`fault::FailRate`]. With
//!   `0.5` the 2nd, 4th, 6th… request fails; of the first N, `floor(N × rate)` do. A
//!   failed request counts no session and sets no cookie.
//! - `EXTRA_LATENCY_MS` (at most 60000, default 0): added to every answer but
//!   `/healthz`'s (on top of any `?delay=`; to `500`s and `400`s as well). `/healthz`
//!   stays fast on purpose: a canary's latency analysis compares the response times of
//!   real requests, and a slow health check would fail the replica's probes instead.
//! - `HEALTH_FAIL_FILE=<path>`: `/healthz` answers `503` (body: why) while a file (or
//!   anything) exists at that path, checked on every request; `200 ok` otherwise. Other
//!   paths keep answering. If the path's existence cannot be told (a directory on the
//!   way that the server's uid cannot search) it answers `503` too, saying why, so a
//!   test that mounted the flag directory wrongly sees it at once.
//! - `EXIT_AFTER_MS` with `EXIT_CODE` (0-255, default 1): the process exits with that
//!   code that long after it starts listening, without finishing requests: a crash
//!   for crash-loop tests. Logged on stderr when it fires.
//! - `ALLOCATE_MB`: before listening, the process allocates and writes that many MiB and
//!   holds them, so a replica with a smaller memory limit is OOM-killed. Logged on
//!   stderr before and after.
//!
//! `dockscale-webapp check` is the image's health probe (it has no shell or curl):
//! it GETs `http://127.0.0.1:$PORT/healthz` with a 2 s timeout and exits 0 on a `2xx`,
//! 1 otherwise (see [`probe`]). The image declares no `HEALTHCHECK`, so containers
//! report no health unless asked to, e.g. by a spec's
//! `template.healthcheck: {command: ["/dockscale-webapp", "check"]}`.
//!
//! It knows nothing of Docker or HAProxy, and reads the environment only through
//! [`Config::from_lookup`].
//!
//! Layout:
//! - this file: [`Config`], the [`router`] and [`run`], which serves a bound listener
//!   until a shutdown future completes, then finishes the requests in flight.
//! - [`session`]: the per-session counters and the cookie.
//! - [`fault`]: `FAIL_RATE`'s schedule and `ALLOCATE_MB`'s ballast.
//! - [`probe`]: the `GET /healthz` behind `dockscale-webapp check`.
//! - [`fs`]: `dockscale-webapp fs read|write|statfs PATH`, which looks at a mount
//!   from inside the container (for the tests of `template.mounts`).

pub mod fault;
pub mod fs;
pub mod probe;
pub mod session;

use std::future::Future;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::fault::{FailRate, MIB};
use crate::session::Sessions;

/// The port served when `PORT` is not set; the image `EXPOSE`s it.
pub const DEFAULT_PORT: u16 = 8080;
/// The longest `?delay=` accepted, in milliseconds.
pub const MAX_DELAY_MS: u64 = 60_000;
/// The response header that names the replica, so tests need not parse bodies.
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
/// The longest `EXTRA_LATENCY_MS` accepted: like `?delay=`, more only hangs tests.
pub const MAX_EXTRA_LATENCY_MS: u64 = MAX_DELAY_MS;
/// The health endpoint's path: the one `FAIL_RATE` and `EXTRA_LATENCY_MS` spare.
pub const HEALTHZ: &str = "/healthz";
/// How many sessions one replica remembers (see [`Sessions`]).
const SESSION_CAPACITY: usize = 100_000;

/// What the server is told by its environment.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `PORT`: where `main` binds on all interfaces, and what `check` probes. [`run`]
    /// takes a bound listener instead, so tests can bind port 0.
    pub port: u16,
    /// Shown in every answer: in a container it is the container's hostname, which is
    /// what tells replicas apart.
    pub hostname: String,
    /// `GREETING`: shows that the spec's `template.env` reached the replica.
    pub greeting: Option<String>,
    /// `LOG_REQUESTS=1`: one stdout line per request. Off by default, as load tests
    /// would drown the replica's log.
    pub log_requests: bool,
    /// `FAIL_RATE`: the share of requests (but `/healthz`) answered `500`, for tests of
    /// error-rate analysis and of HAProxy's retries.
    pub fail_rate: FailRate,
    /// `EXTRA_LATENCY_MS`: added to every answer but `/healthz`'s, for tests of latency
    /// analysis; zero by default.
    pub extra_latency: Duration,
    /// `HEALTH_FAIL_FILE`: `/healthz` fails while this path exists, so a test can make a
    /// running replica unhealthy and healthy again without restarting it.
    pub health_fail_file: Option<PathBuf>,
    /// `EXIT_AFTER_MS`: how long after it starts listening the process exits, for tests
    /// of crash-loop back-off.
    pub exit_after: Option<Duration>,
    /// `EXIT_CODE` (default 1): the code of that exit.
    pub exit_code: u8,
    /// `ALLOCATE_MB`: MiB allocated and written at start, for tests of OOM detection.
    pub allocate_mib: usize,
}

/// Why the environment gives no [`Config`]. Each message names the variable and the
/// value, as `main` prints it as the reason the process did not start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("PORT must be a port number (0-65535), got {0:?}")]
    Port(String),
    #[error(
        "FAIL_RATE must be a number from 0 to 1 (the share of requests answered 500), got {0:?}"
    )]
    FailRate(String),
    #[error(
        "EXTRA_LATENCY_MS must be a whole number of milliseconds (0-{MAX_EXTRA_LATENCY_MS}), \
         got {0:?}"
    )]
    ExtraLatency(String),
    #[error("HEALTH_FAIL_FILE must be a file path, got {0:?}")]
    HealthFailFile(String),
    #[error("EXIT_AFTER_MS must be a whole number of milliseconds, got {0:?}")]
    ExitAfter(String),
    #[error("EXIT_CODE must be an exit code (0-255), got {0:?}")]
    ExitCode(String),
    #[error("ALLOCATE_MB must be a whole number of MiB that memory can address, got {0:?}")]
    AllocateMb(String),
}

impl Config {
    /// Reads every knob of the crate docs and, when the system gives no hostname,
    /// `HOSTNAME`, through `lookup` (`|name| std::env::var(name).ok()` in `main`).
    ///
    /// An unset variable takes its default; a set one, even empty, must be valid.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let millis = |raw: &str| raw.parse().ok().map(Duration::from_millis);
        let hostname = gethostname::gethostname()
            .into_string()
            .ok()
            .filter(|name| !name.is_empty())
            .or_else(|| lookup("HOSTNAME").filter(|name| !name.is_empty()))
            .unwrap_or_else(|| "unknown".to_owned());
        Ok(Self {
            port: knob(&lookup, "PORT", |raw| raw.parse().ok(), ConfigError::Port)?
                .unwrap_or(DEFAULT_PORT),
            hostname,
            greeting: lookup("GREETING"),
            log_requests: lookup("LOG_REQUESTS").is_some_and(|v| v == "1" || v == "true"),
            fail_rate: knob(
                &lookup,
                "FAIL_RATE",
                |raw| FailRate::new(raw.parse().ok()?),
                ConfigError::FailRate,
            )?
            .unwrap_or_default(),
            extra_latency: knob(
                &lookup,
                "EXTRA_LATENCY_MS",
                |raw| millis(raw).filter(|d| d.as_millis() <= u128::from(MAX_EXTRA_LATENCY_MS)),
                ConfigError::ExtraLatency,
            )?
            .unwrap_or_default(),
            // Not trimmed: a path may end in a space, however unwise.
            health_fail_file: match lookup("HEALTH_FAIL_FILE") {
                None => None,
                Some(raw) if raw.is_empty() => return Err(ConfigError::HealthFailFile(raw)),
                Some(raw) => Some(PathBuf::from(raw)),
            },
            exit_after: knob(&lookup, "EXIT_AFTER_MS", millis, ConfigError::ExitAfter)?,
            exit_code: knob(
                &lookup,
                "EXIT_CODE",
                |raw| raw.parse().ok(),
                ConfigError::ExitCode,
            )?
            .unwrap_or(1),
            allocate_mib: knob(
                &lookup,
                "ALLOCATE_MB",
                |raw| {
                    let mib: usize = raw.parse().ok()?;
                    mib.checked_mul(MIB).map(|_| mib)
                },
                ConfigError::AllocateMb,
            )?
            .unwrap_or(0),
        })
    }

    /// The fault knobs that are on, as `NAME=value` words for a start-up log line.
    pub fn faults(&self) -> Vec<String> {
        let mut on = Vec::new();
        if self.fail_rate.get() > 0.0 {
            on.push(format!("FAIL_RATE={}", self.fail_rate));
        }
        if !self.extra_latency.is_zero() {
            on.push(format!(
                "EXTRA_LATENCY_MS={}",
                self.extra_latency.as_millis()
            ));
        }
        if let Some(path) = &self.health_fail_file {
            on.push(format!("HEALTH_FAIL_FILE={}", path.display()));
        }
        if let Some(after) = self.exit_after {
            on.push(format!(
                "EXIT_AFTER_MS={} EXIT_CODE={}",
                after.as_millis(),
                self.exit_code
            ));
        }
        if self.allocate_mib > 0 {
            on.push(format!("ALLOCATE_MB={}", self.allocate_mib));
        }
        on
    }
}

/// The variable `name` through `lookup`, parsed (after trimming blanks) by `parse`:
/// `None` when unset, `error` of the raw value when `parse` refuses it.
fn knob<T>(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
    parse: impl FnOnce(&str) -> Option<T>,
    error: fn(String) -> ConfigError,
) -> Result<Option<T>, ConfigError> {
    lookup(name)
        .map(|raw| parse(raw.trim()).ok_or_else(|| error(raw)))
        .transpose()
}

/// Serves `listener` until `shutdown` completes, then stops accepting and returns once
/// the requests in flight (including delayed ones) have been answered.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(config))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The whole HTTP surface described in the crate docs.
pub fn router(config: Config) -> Router {
    let served_by = HeaderValue::try_from(config.hostname.as_str())
        .unwrap_or_else(|_| HeaderValue::from_static("invalid-hostname"));
    let state = AppState {
        config: Arc::new(config),
        served_by,
        sessions: Arc::new(Mutex::new(Sessions::with_capacity(SESSION_CAPACITY))),
        fallback_requests: Arc::new(AtomicU64::new(0)),
    };
    Router::new()
        .route(HEALTHZ, get(healthz))
        .fallback(hello)
        .layer(middleware::from_fn_with_state(state.clone(), delay_and_tag))
        .with_state(state)
}

#[derive(Clone)]
struct AppState {
    config: Arc<Config>,
    /// The hostname as a header value, checked once.
    served_by: HeaderValue,
    sessions: Arc<Mutex<Sessions>>,
    /// How many requests reached [`hello`]: `FAIL_RATE`'s request number.
    fallback_requests: Arc<AtomicU64>,
}

async fn healthz(State(state): State<AppState>) -> Response {
    let Some(path) = &state.config.health_fail_file else {
        return "ok\n".into_response();
    };
    match health_fail_file_state(path).await {
        Ok(false) => "ok\n".into_response(),
        Ok(true) => unhealthy(format!("HEALTH_FAIL_FILE {} exists\n", path.display())),
        Err(error) => unhealthy(format!(
            "cannot tell whether HEALTH_FAIL_FILE {} exists: {error}\n",
            path.display()
        )),
    }
}

/// Whether something exists at `path`; an error when that cannot be told.
async fn health_fail_file_state(path: &Path) -> std::io::Result<bool> {
    match tokio::fs::symlink_metadata(path).await {
        Ok(_) => Ok(true),
        Err(error) if matches!(error.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

fn unhealthy(body: String) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

async fn hello(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let n = state.fallback_requests.fetch_add(1, Ordering::Relaxed);
    if state.config.fail_rate.fails(n) {
        let body = format!(
            "injected failure: FAIL_RATE={} answers this share of requests 500\n",
            state.config.fail_rate
        );
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CACHE_CONTROL, "no-store")],
            body,
        )
            .into_response();
    }
    let (id, new_session) = match session::id_from_headers(&headers) {
        Some(id) => (id.to_owned(), false),
        None => (session::new_id(), true),
    };
    // A panic elsewhere while holding the lock cannot leave a half-counted session
    // (`hit` does no fallible work between its writes), so a poisoned lock is usable.
    let count = state
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .hit(&id);
    let mut body = format!(
        "hostname: {}\nsession: {id}\ncount: {count}\n",
        state.config.hostname
    );
    if let Some(greeting) = &state.config.greeting {
        body.push_str(&format!("greeting: {greeting}\n"));
    }
    let mut response = ([(header::CACHE_CONTROL, "no-store")], body).into_response();
    if new_session {
        response
            .headers_mut()
            .insert(header::SET_COOKIE, session::set_cookie(&id));
    }
    response
}

/// Applies `?delay=` and `EXTRA_LATENCY_MS`, names the replica in `X-Served-By` and
/// logs if asked to.
async fn delay_and_tag(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let logged = state
        .config
        .log_requests
        .then(|| format!("{} {}", request.method(), request.uri()));
    let extra_latency = if request.uri().path() == HEALTHZ {
        Duration::ZERO
    } else {
        state.config.extra_latency
    };
    let mut response = match requested_delay(request.uri()) {
        Ok(delay) => {
            pause(extra_latency + delay.unwrap_or_default()).await;
            next.run(request).await
        }
        Err(error) => {
            pause(extra_latency).await;
            (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response()
        }
    };
    response
        .headers_mut()
        .insert(SERVED_BY, state.served_by.clone());
    if let Some(line) = logged {
        let status = response.status().as_u16();
        println!("{line} {status} {}ms", started.elapsed().as_millis());
    }
    response
}

/// Sleeps for `duration`, without touching the timer when it is zero (most requests).
async fn pause(duration: Duration) {
    if !duration.is_zero() {
        tokio::time::sleep(duration).await;
    }
}

/// Why a `?delay=` cannot be honoured.
#[derive(Debug, thiserror::Error)]
pub enum DelayError {
    #[error("invalid query string: {0}")]
    Query(String),
    #[error("delay must be a whole number of milliseconds, got {0:?}")]
    NotANumber(String),
    #[error("delay must be at most {MAX_DELAY_MS} ms, got {0}")]
    TooLong(u64),
}

#[derive(Deserialize)]
struct DelayParams {
    delay: Option<String>,
}

/// The delay asked for in `uri`'s query, if any.
pub fn requested_delay(uri: &Uri) -> Result<Option<Duration>, DelayError> {
    let params = Query::<DelayParams>::try_from_uri(uri)
        .map_err(|rejection| DelayError::Query(rejection.body_text()))?;
    let Some(raw) = params.0.delay else {
        return Ok(None);
    };
    let millis: u64 = raw.parse().map_err(|_| DelayError::NotANumber(raw))?;
    if millis > MAX_DELAY_MS {
        return Err(DelayError::TooLong(millis));
    }
    Ok(Some(Duration::from_millis(millis)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delay(uri: &str) -> Result<Option<Duration>, DelayError> {
        requested_delay(&uri.parse().unwrap())
    }

    #[test]
    fn delay_is_read_from_the_query_among_other_parameters() {
        assert_eq!(delay("/").unwrap(), None);
        assert_eq!(delay("/?x=1").unwrap(), None);
        assert_eq!(
            delay("/a?x=1&delay=250").unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            delay("/?delay=60000").unwrap(),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn bad_delays_are_refused_with_a_reason() {
        for bad in ["", "-1", "1.5", "soon", "99999999999999999999"] {
            let error = delay(&format!("/?delay={bad}")).unwrap_err();
            assert!(matches!(error, DelayError::NotANumber(_)), "{bad}: {error}");
        }
        let error = delay("/?delay=60001").unwrap_err();
        assert_eq!(
            error.to_string(),
            "delay must be at most 60000 ms, got 60001"
        );
    }

    /// The config of an environment holding only `vars`.
    fn config_of(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn config_defaults_and_overrides() {
        let config = Config::from_lookup(|_| None).unwrap();
        assert_eq!(config.port, DEFAULT_PORT);
        assert_eq!(config.greeting, None);
        assert!(!config.log_requests);
        assert!(!config.hostname.is_empty());

        let config = Config::from_lookup(|name| match name {
            "PORT" => Some("9000".into()),
            "GREETING" => Some("hello".into()),
            "LOG_REQUESTS" => Some("1".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config.port, 9000);
        assert_eq!(config.greeting.as_deref(), Some("hello"));
        assert!(config.log_requests);
    }

    #[test]
    fn fault_knobs_are_off_by_default() {
        let config = config_of(&[]).unwrap();
        assert_eq!(config.fail_rate.get(), 0.0);
        assert_eq!(config.extra_latency, Duration::ZERO);
        assert_eq!(config.health_fail_file, None);
        assert_eq!(config.exit_after, None);
        assert_eq!(config.exit_code, 1);
        assert_eq!(config.allocate_mib, 0);
        assert!(config.faults().is_empty(), "{:?}", config.faults());
    }

    #[test]
    fn fail_rate_is_read_as_a_share() {
        for (raw, rate) in [("0", 0.0), ("0.5", 0.5), (" 0.25 ", 0.25), ("1", 1.0)] {
            let config = config_of(&[("FAIL_RATE", raw)]).unwrap();
            assert_eq!(config.fail_rate.get(), rate, "{raw:?}");
        }
    }

    #[test]
    fn extra_latency_is_read_in_milliseconds_up_to_a_minute() {
        let config = config_of(&[("EXTRA_LATENCY_MS", "250")]).unwrap();
        assert_eq!(config.extra_latency, Duration::from_millis(250));
        let config = config_of(&[("EXTRA_LATENCY_MS", "60000")]).unwrap();
        assert_eq!(config.extra_latency, Duration::from_secs(60));
    }

    #[test]
    fn health_fail_file_is_read_as_a_path() {
        let config = config_of(&[("HEALTH_FAIL_FILE", "/run/flags/unhealthy")]).unwrap();
        assert_eq!(
            config.health_fail_file.as_deref(),
            Some(Path::new("/run/flags/unhealthy"))
        );
    }

    #[test]
    fn exit_after_is_read_in_milliseconds_with_its_exit_code() {
        let config = config_of(&[("EXIT_AFTER_MS", "500")]).unwrap();
        assert_eq!(config.exit_after, Some(Duration::from_millis(500)));
        assert_eq!(config.exit_code, 1, "the default exit code is a failure");

        let config = config_of(&[("EXIT_AFTER_MS", "0"), ("EXIT_CODE", "0")]).unwrap();
        assert_eq!(config.exit_after, Some(Duration::ZERO));
        assert_eq!(config.exit_code, 0);
        let config = config_of(&[("EXIT_AFTER_MS", "10"), ("EXIT_CODE", "255")]).unwrap();
        assert_eq!(config.exit_code, 255);
    }

    #[test]
    fn allocate_mb_is_read_in_mebibytes() {
        let config = config_of(&[("ALLOCATE_MB", "100")]).unwrap();
        assert_eq!(config.allocate_mib, 100);
    }

    #[test]
    fn the_fault_knobs_that_are_on_are_listed_for_the_log() {
        let config = config_of(&[
            ("FAIL_RATE", "0.5"),
            ("EXTRA_LATENCY_MS", "20"),
            ("HEALTH_FAIL_FILE", "/flag"),
            ("EXIT_AFTER_MS", "500"),
            ("EXIT_CODE", "3"),
            ("ALLOCATE_MB", "100"),
        ])
        .unwrap();
        assert_eq!(
            config.faults().join(" "),
            "FAIL_RATE=0.5 EXTRA_LATENCY_MS=20 HEALTH_FAIL_FILE=/flag \
             EXIT_AFTER_MS=500 EXIT_CODE=3 ALLOCATE_MB=100"
        );
    }

    #[test]
    fn a_bad_port_is_an_error_naming_the_value() {
        let error = Config::from_lookup(|name| (name == "PORT").then(|| "http".into()));
        assert_eq!(
            error.unwrap_err().to_string(),
            r#"PORT must be a port number (0-65535), got "http""#
        );
    }

    #[test]
    fn a_bad_value_of_any_knob_is_an_error_naming_the_variable_and_the_value() {
        let bad = [
            ("FAIL_RATE", "1.5"),
            ("FAIL_RATE", "-0.1"),
            ("FAIL_RATE", "50%"),
            ("FAIL_RATE", "NaN"),
            ("FAIL_RATE", "inf"),
            ("FAIL_RATE", ""),
            ("EXTRA_LATENCY_MS", "60001"),
            ("EXTRA_LATENCY_MS", "-5"),
            ("EXTRA_LATENCY_MS", "0.5"),
            ("EXTRA_LATENCY_MS", "1s"),
            ("HEALTH_FAIL_FILE", ""),
            ("EXIT_AFTER_MS", "soon"),
            ("EXIT_AFTER_MS", "-1"),
            ("EXIT_AFTER_MS", ""),
            ("EXIT_CODE", "256"),
            ("EXIT_CODE", "-1"),
            ("EXIT_CODE", "one"),
            ("ALLOCATE_MB", "1.5"),
            ("ALLOCATE_MB", "-1"),
            ("ALLOCATE_MB", "100M"),
            ("ALLOCATE_MB", "18446744073709551615"),
        ];
        for (name, value) in bad {
            let message = match config_of(&[(name, value)]) {
                Ok(config) => panic!("{name}={value:?} was accepted: {config:?}"),
                Err(error) => error.to_string(),
            };
            assert!(
                message.starts_with(&format!("{name} must be ")),
                "{name}={value:?}: {message}"
            );
            assert!(
                message.ends_with(&format!("got {value:?}")),
                "{name}={value:?}: {message}"
            );
        }
    }
}
