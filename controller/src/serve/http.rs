//! The HTTP server: metrics, health and the status API.
//!
//! It reads the shared [`StatusHandle`] and the metrics registry; it never changes the
//! controller's state. `/healthz` answers while the process runs; `/readyz` only when
//! Docker answers, the spec is loaded and HAProxy (when used) answers its socket.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::serve::metrics::Metrics;
use crate::serve::status::StatusHandle;

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub status: StatusHandle,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/services", get(services))
        .route("/api/v1/services/{name}", get(service))
        .with_state(state)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(state): State<AppState>) -> Response {
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

async fn readyz(State(state): State<AppState>) -> Response {
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

async fn services(State(state): State<AppState>) -> Response {
    let status = state.status.read();
    Json(serde_json::json!({
        "services": status.services.values().collect::<Vec<_>>(),
        "specErrors": status.spec_errors,
    }))
    .into_response()
}

async fn service(State(state): State<AppState>, Path(name): Path<String>) -> Response {
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
