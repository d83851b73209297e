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
//! It knows nothing of Docker or HAProxy, and reads the environment only through
//! [`Config::from_lookup`].
//!
//! Layout:
//! - this file: [`Config`], the [`router`] and [`run`], which serves a bound listener
//!   until a shutdown future completes, then finishes the requests in flight.
//! - [`session`]: the per-session counters and the cookie.

pub mod session;

use std::future::Future;
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

use crate::session::Sessions;

/// The port served when `PORT` is not set; the image `EXPOSE`s it.
pub const DEFAULT_PORT: u16 = 8080;
/// The longest `?delay=` accepted, in milliseconds.
pub const MAX_DELAY_MS: u64 = 60_000;
/// The response header that names the replica, so tests need not parse bodies.
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
/// How many sessions one replica remembers (see [`Sessions`]).
const SESSION_CAPACITY: usize = 100_000;

/// What the server is told by its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `PORT`: where `main` binds on all interfaces. [`run`] takes a bound listener
    /// instead, so tests can bind port 0.
    pub port: u16,
    /// Shown in every answer: in a container it is the container's hostname, which is
    /// what tells replicas apart.
    pub hostname: String,
    /// `GREETING`: shows that the spec's `template.env` reached the replica.
    pub greeting: Option<String>,
    /// `LOG_REQUESTS=1`: one stdout line per request. Off by default, as load tests
    /// would drown the replica's log.
    pub log_requests: bool,
}

/// Why the environment gives no [`Config`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("PORT must be a port number (0-65535), got {0:?}")]
    Port(String),
}

impl Config {
    /// Reads `PORT`, `GREETING`, `LOG_REQUESTS` and, when the system gives no hostname,
    /// `HOSTNAME`, through `lookup` (`|name| std::env::var(name).ok()` in `main`).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let port = match lookup("PORT") {
            None => DEFAULT_PORT,
            Some(raw) => raw.trim().parse().map_err(|_| ConfigError::Port(raw))?,
        };
        let hostname = gethostname::gethostname()
            .into_string()
            .ok()
            .filter(|name| !name.is_empty())
            .or_else(|| lookup("HOSTNAME").filter(|name| !name.is_empty()))
            .unwrap_or_else(|| "unknown".to_owned());
        Ok(Self {
            port,
            hostname,
            greeting: lookup("GREETING"),
            log_requests: lookup("LOG_REQUESTS").is_some_and(|v| v == "1" || v == "true"),
        })
    }
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
    };
    Router::new()
        .route("/healthz", get(healthz))
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
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn hello(State(state): State<AppState>, headers: HeaderMap) -> Response {
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

/// Applies `?delay=`, names the replica in `X-Served-By` and logs if asked to.
async fn delay_and_tag(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let logged = state
        .config
        .log_requests
        .then(|| format!("{} {}", request.method(), request.uri()));
    let mut response = match requested_delay(request.uri()) {
        Ok(delay) => {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            next.run(request).await
        }
        Err(error) => (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
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
    fn a_bad_port_is_an_error_naming_the_value() {
        let error = Config::from_lookup(|name| (name == "PORT").then(|| "http".into()));
        assert_eq!(
            error.unwrap_err().to_string(),
            r#"PORT must be a port number (0-65535), got "http""#
        );
    }
}
