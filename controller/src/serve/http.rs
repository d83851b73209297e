//! The HTTP server: metrics, health and the status API.
//!
//! It reads the shared [`StatusHandle`] and the metrics registry; it never changes the
//! controller's state. `/healthz` answers while the process runs; `/readyz` only when
//! Docker answers, the spec is loaded and HAProxy (when used) answers its socket.
//!
//! `/api/v1/events?watch=true` streams events as they happen, one JSON object per line
//! (like a Kubernetes watch); such streams end when the server is asked to stop, so a
//! watcher never holds up a shutdown.
//!
//! The write endpoints, `POST /api/v1/services/NAME/rollout/{pause,resume,abort,retry}`,
//! change nothing here either: they enqueue the command to the controller loop and
//! answer with its outcome (200, 409 when it does not apply, 404 for no such service).
//! Who may call them is [`WriteAccess`]: anyone on a loopback `--listen`; with
//! `--api-token-file`, whoever sends its token as a bearer token (compared in constant
//! time, 401 otherwise); on another address without a token file, nobody (403).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::controller::rollouts::{CommandReply, CommandRequest, CommandSender};
use crate::reconcile::control::RolloutCommand;
use crate::serve::metrics::Metrics;
use crate::serve::status::StatusHandle;

/// How long a write endpoint waits for the controller loop's answer.
const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the handlers read, and where commands go.
#[derive(Clone)]
pub struct AppState {
    pub status: StatusHandle,
    pub metrics: Arc<Metrics>,
    /// The controller loop's rollout commands; none where the runtime has no canary
    /// rollouts (Swarm).
    pub commands: Option<CommandSender>,
    pub writes: WriteAccess,
}

/// Who may call the write endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteAccess {
    /// Anyone who reaches the listen address: a loopback one, without a token file.
    Loopback,
    /// Whoever sends this token (`Authorization: Bearer TOKEN`).
    Token(Vec<u8>),
    /// Nobody: the listen address is not loopback and no token file was given.
    Refused { listen: std::net::SocketAddr },
}

impl WriteAccess {
    /// The access a `--listen` address and a token (from `--api-token-file`) give.
    pub fn of(listen: std::net::SocketAddr, token: Option<Vec<u8>>) -> WriteAccess {
        match token {
            Some(token) => WriteAccess::Token(token),
            None if listen.ip().is_loopback() => WriteAccess::Loopback,
            None => WriteAccess::Refused { listen },
        }
    }

    /// `Err` with the status and the reason when these headers may not write.
    fn check(&self, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str, String)> {
        match self {
            WriteAccess::Loopback => Ok(()),
            WriteAccess::Token(token) => {
                let sent = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim);
                match sent {
                    // Digests of both, compared in constant time: a comparison of the
                    // tokens themselves would end early on a length that differs.
                    Some(sent)
                        if bool::from(
                            Sha256::digest(sent.as_bytes()).ct_eq(&Sha256::digest(token)),
                        ) =>
                    {
                        Ok(())
                    }
                    Some(_) => Err((
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "wrong API token".to_owned(),
                    )),
                    None => Err((
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "this endpoint needs the API token (`Authorization: Bearer TOKEN`; \
                         `dockscale rollout --token-file PATH` or DOCKSCALE_API_TOKEN)"
                            .to_owned(),
                    )),
                }
            }
            WriteAccess::Refused { listen } => Err((
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "write endpoints are served on a loopback --listen only, and {listen} is \
                     not one: start dockscale with --api-token-file PATH to serve them here"
                ),
            )),
        }
    }
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
        .route("/api/v1/services/{name}/rollout", get(rollout))
        .route(
            "/api/v1/services/{name}/rollout/history",
            get(rollout_history),
        )
        .route(
            "/api/v1/services/{name}/rollout/{command}",
            post(rollout_command),
        )
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

/// 404 with a clear message.
fn no_service(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no service named `{name}` (see `dockscale status` for the list)"),
    )
}

fn error(code: StatusCode, message: String) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Where the service's rollout stands.
async fn rollout(
    State(Shared { app: state, .. }): State<Shared>,
    Path(name): Path<String>,
) -> Response {
    let status = state.status.read();
    match status.services.get(&name) {
        Some(svc) => {
            let mut body = serde_json::json!(svc.rollout);
            body["service"] = serde_json::json!(name);
            Json(body).into_response()
        }
        None => no_service(&name),
    }
}

/// The service's last rollouts, oldest first.
async fn rollout_history(
    State(Shared { app: state, .. }): State<Shared>,
    Path(name): Path<String>,
) -> Response {
    let status = state.status.read();
    match status.services.get(&name) {
        Some(svc) => Json(serde_json::json!({
            "service": name,
            "revisions": svc.history.revisions,
        }))
        .into_response(),
        None => no_service(&name),
    }
}

/// A command to the service's rollout, enqueued to the controller loop; its answer.
async fn rollout_command(
    State(Shared { app: state, .. }): State<Shared>,
    Path((name, command)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(command) = RolloutCommand::parse(&command) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no rollout command `{command}` (pause, resume, abort or retry)"),
        );
    };
    let known = state.status.read().services.contains_key(&name);
    let count = |outcome: &str| {
        // Only services of the spec are labels: the name in the path is anyone's.
        if known {
            state
                .metrics
                .rollout_commands_total
                .with_label_values(&[&name, command.label(), outcome])
                .inc();
        }
    };
    if let Err((code, outcome, message)) = state.writes.check(&headers) {
        count(outcome);
        return error(code, message);
    }
    let Some(commands) = &state.commands else {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "rollout commands are served by the docker runtime only".to_owned(),
        );
    };
    let (reply, answer) = oneshot::channel();
    let request = CommandRequest {
        service: name.clone(),
        command,
        reply,
    };
    let unavailable = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the controller loop did not take the command (it is stopping, or busy): try again"
                .to_owned(),
        )
    };
    if commands.send(request).await.is_err() {
        return unavailable();
    }
    match tokio::time::timeout(COMMAND_TIMEOUT, answer).await {
        Ok(Ok(CommandReply::Applied(message))) => Json(serde_json::json!({
            "service": name,
            "command": command.label(),
            "outcome": "applied",
            "message": message,
        }))
        .into_response(),
        Ok(Ok(CommandReply::Refused(message))) => error(StatusCode::CONFLICT, message),
        Ok(Ok(CommandReply::NotFound)) => no_service(&name),
        Ok(Err(_)) | Err(_) => unavailable(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::status::ServiceStatus;
    use std::net::SocketAddr;

    #[test]
    fn writes_are_open_on_loopback_token_bound_with_a_token_and_refused_elsewhere() {
        let loopback: SocketAddr = "127.0.0.1:9180".parse().expect("an address");
        let any: SocketAddr = "0.0.0.0:9180".parse().expect("an address");
        assert_eq!(WriteAccess::of(loopback, None), WriteAccess::Loopback);
        assert_eq!(
            WriteAccess::of(any, None),
            WriteAccess::Refused { listen: any }
        );
        assert_eq!(
            WriteAccess::of(any, Some(b"t".to_vec())),
            WriteAccess::Token(b"t".to_vec())
        );
        assert_eq!(
            WriteAccess::of(loopback, Some(b"t".to_vec())),
            WriteAccess::Token(b"t".to_vec()),
            "a token file protects a loopback listen too"
        );
    }

    /// Serves the API with `writes`, a service `web`, and a loop that answers every
    /// command with `reply`; returns the address.
    async fn server(writes: WriteAccess, reply: CommandReply) -> SocketAddr {
        let status = StatusHandle::default();
        status.update(|s| {
            s.services.insert(
                "web".to_owned(),
                ServiceStatus::new("web", std::time::SystemTime::UNIX_EPOCH),
            );
        });
        let (commands, mut requests) = tokio::sync::mpsc::channel::<CommandRequest>(4);
        tokio::spawn(async move {
            while let Some(r) = requests.recv().await {
                let _ = r.reply.send(reply.clone());
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("an address");
        let state = AppState {
            status,
            metrics: Arc::new(Metrics::new()),
            commands: Some(commands),
            writes,
        };
        tokio::spawn(serve(listener, state, std::future::pending()));
        addr
    }

    async fn post(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("a client");
        let mut request = client.post(format!("http://{addr}{path}"));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.expect("answers");
        let code = response.status().as_u16();
        (code, response.json().await.expect("JSON"))
    }

    #[tokio::test]
    async fn a_token_protected_listen_answers_401_without_the_right_token() {
        let addr = server(
            WriteAccess::Token(b"right".to_vec()),
            CommandReply::Applied("paused".to_owned()),
        )
        .await;
        let path = "/api/v1/services/web/rollout/pause";
        let (code, body) = post(addr, path, None).await;
        assert_eq!(code, 401);
        assert!(body["error"]
            .as_str()
            .is_some_and(|e| e.contains("API token")));
        assert_eq!(post(addr, path, Some("wrong")).await.0, 401);
        assert_eq!(post(addr, path, Some("righ")).await.0, 401);
        let (code, body) = post(addr, path, Some("right")).await;
        assert_eq!((code, body["outcome"].as_str()), (200, Some("applied")));
        // Reads need no token.
        let read = reqwest::get(format!("http://{addr}/api/v1/services/web/rollout"))
            .await
            .expect("answers");
        assert_eq!(read.status().as_u16(), 200);
    }

    #[tokio::test]
    async fn writes_on_a_listen_that_is_not_loopback_without_a_token_answer_403() {
        let listen: SocketAddr = "0.0.0.0:9180".parse().expect("an address");
        let addr = server(
            WriteAccess::Refused { listen },
            CommandReply::Applied("paused".to_owned()),
        )
        .await;
        let (code, body) = post(addr, "/api/v1/services/web/rollout/abort", None).await;
        assert_eq!(code, 403);
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("0.0.0.0:9180 is not one") && error.contains("--api-token-file"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn refusals_unknown_services_and_unknown_commands_have_their_status() {
        let addr = server(
            WriteAccess::Loopback,
            CommandReply::Refused("the canary is not paused".to_owned()),
        )
        .await;
        let (code, body) = post(addr, "/api/v1/services/web/rollout/resume", None).await;
        assert_eq!(
            (code, body["error"].as_str()),
            (409, Some("the canary is not paused"))
        );
        let (code, body) = post(addr, "/api/v1/services/web/rollout/restart", None).await;
        assert_eq!(code, 404);
        assert!(body["error"]
            .as_str()
            .is_some_and(|e| e.contains("pause, resume")));
        for path in [
            "/api/v1/services/nosuch/rollout",
            "/api/v1/services/nosuch/rollout/history",
        ] {
            let r = reqwest::get(format!("http://{addr}{path}"))
                .await
                .expect("answers");
            assert_eq!(r.status().as_u16(), 404, "{path}");
            let body: serde_json::Value = r.json().await.expect("JSON");
            assert!(body["error"]
                .as_str()
                .is_some_and(|e| e.contains("no service named `nosuch`")));
        }
    }
}
