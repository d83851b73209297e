//! The HTTP server: metrics, health and the status API.
//!
//! It reads the shared [`StatusHandle`] and the metrics registry; it never changes the
//! controller's state. `/healthz` answers while the process runs; `/readyz` only when
//! Docker answers, the spec is loaded and HAProxy (when used) answers its socket.
//!
//! `/api/v1/events?watch=true` streams events as they happen, one JSON object per line
//! (like a Kubernetes watch); such streams end when the server is asked to stop, so a
//! watcher never holds up a shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::serve::metrics::Metrics;
use crate::serve::status::StatusHandle;

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub status: StatusHandle,
    pub metrics: Arc<Metrics>,
}

/// The handlers' state and the server's stop, which ends event watches.
#[derive(Clone)]
struct Shared {
    app: AppState,
    stopping: watch::Receiver<bool>,
}

fn routes(shared: Shared) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/services", get(services))
        .route("/api/v1/services/{name}", get(service))
        .route("/api/v1/frontends", get(frontends))
        .route("/api/v1/frontends/{name}", get(frontend))
        .route("/api/v1/events", get(events))
        .route("/api/v1/version", get(version))
        .with_state(shared)
}

/// Serves until `shutdown` resolves; event watches end then.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopping) = watch::channel(false);
    let router = routes(Shared {
        app: state,
        stopping,
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await
}

async fn metrics(State(Shared { app: state, .. }): State<Shared>) -> Response {
    match state.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(Shared { app: state, .. }): State<Shared>) -> Response {
    let status = state.status.read();
    let mut problems = Vec::new();
    let standby;
    if let Some(holder) = &status.standby_for {
        standby = format!("standby while another dockscale drives the engine ({holder})");
        problems.push(standby.as_str());
    }
    if !status.spec_loaded {
        problems.push("spec not loaded");
    }
    if !status.docker_reachable {
        problems.push("docker not reachable");
    }
    if status.haproxy_reachable == Some(false) {
        problems.push("haproxy socket not answering");
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_owned()).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join(", ")),
        )
            .into_response()
    }
}

async fn services(State(Shared { app: state, .. }): State<Shared>) -> Response {
    let status = state.status.read();
    Json(serde_json::json!({
        "services": status.services.values().collect::<Vec<_>>(),
        "specErrors": status.spec_errors,
    }))
    .into_response()
}

async fn service(
    State(Shared { app: state, .. }): State<Shared>,
    Path(name): Path<String>,
) -> Response {
    let status = state.status.read();
    match status.services.get(&name) {
        Some(svc) => Json(svc).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("no service named `{name}`") })),
        )
            .into_response(),
    }
}

async fn frontends(State(Shared { app: state, .. }): State<Shared>) -> Response {
    let status = state.status.read();
    Json(serde_json::json!({
        "frontends": status.frontends.values().collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn frontend(
    State(Shared { app: state, .. }): State<Shared>,
    Path(name): Path<String>,
) -> Response {
    let status = state.status.read();
    match status.frontends.get(&name) {
        Some(f) => Json(f).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("no frontend named `{name}`") })),
        )
            .into_response(),
    }
}

async fn version() -> Response {
    Json(crate::version::build_info()).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct EventsQuery {
    /// Stream the events, then every new or folded one, as JSON lines.
    #[serde(default)]
    watch: bool,
}

/// Every service's events in the order they happened; with `watch=true`, a stream of
/// them that goes on with each new one.
async fn events(State(shared): State<Shared>, Query(query): Query<EventsQuery>) -> Response {
    if !query.watch {
        let events = shared.app.status.read().events_after(0);
        return Json(serde_json::json!({ "events": events })).into_response();
    }
    let stream = futures::stream::unfold((shared, 0u64), |(mut shared, cursor)| async move {
        loop {
            let status = shared.app.status.clone();
            let changed = status.changed();
            tokio::pin!(changed);
            // Enabled before the read: an event recorded in between still wakes it.
            changed.as_mut().enable();
            let events = status.read().events_after(cursor);
            if let Some(last) = events.last().map(|e| e.event.seq) {
                let mut lines = String::new();
                for event in &events {
                    // An event is strings, numbers and timestamps: it always serializes.
                    if let Ok(line) = serde_json::to_string(event) {
                        lines.push_str(&line);
                        lines.push('\n');
                    }
                }
                return Some((Ok::<_, Infallible>(Bytes::from(lines)), (shared, last)));
            }
            tokio::select! {
                () = &mut changed => {}
                _ = shared.stopping.wait_for(|stop| *stop) => return None,
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}
