//! The health probe behind `dockscale-webapp check`: one `GET /healthz` to a replica.
//!
//! The image is `FROM scratch`, with no shell and no curl, so Docker's `HEALTHCHECK`
//! (or a spec's `template.healthcheck.command`) runs this same binary as its own probe.
//! This module owns that request and what counts as healthy; it must not decide exit
//! codes or print (that is `main`'s), so tests can call it directly.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How long `check` waits for the whole answer. Short, so that a hung replica fails
/// its check well within Docker's own default health-check timeout (30 s).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How much of an unhealthy answer's body is kept for the report: Docker stores the
/// probe's output in the container's health log, so it should be one short line.
const BODY_EXCERPT: usize = 200;

/// What `/healthz` answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub status: StatusCode,
    /// The start of the body, trimmed: says why a replica is unhealthy.
    pub body: String,
}

impl Health {
    /// Healthy means any `2xx`, as for Docker's and HAProxy's HTTP checks.
    pub fn is_healthy(&self) -> bool {
        self.status.is_success()
    }
}

/// Why `/healthz` gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer from {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("cannot reach {url}")]
    Request {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("cannot read the answer of {url}")]
    Body {
        url: String,
        #[source]
        source: hyper::Error,
    },
}

/// `GET http://{addr}/healthz`, waiting at most `timeout` for the status and body.
pub async fn healthz(addr: SocketAddr, timeout: Duration) -> Result<Health, ProbeError> {
    let url = format!("http://{addr}/healthz");
    match tokio::time::timeout(timeout, get(&url)).await {
        Ok(answer) => answer,
        Err(_) => Err(ProbeError::Timeout { url, timeout }),
    }
}

async fn get(url: &str) -> Result<Health, ProbeError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    // Infallible: the method is GET and the URL is built from a socket address.
    let request = Request::get(url)
        .body(Empty::new())
        .expect("a GET of an http://ip:port URL is a valid request");
    let response = client
        .request(request)
        .await
        .map_err(|source| ProbeError::Request {
            url: url.to_owned(),
            source,
        })?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|source| ProbeError::Body {
            url: url.to_owned(),
            source,
        })?
        .to_bytes();
    let body = String::from_utf8_lossy(&body[..body.len().min(BODY_EXCERPT)])
        .trim()
        .to_owned();
    Ok(Health { status, body })
}
