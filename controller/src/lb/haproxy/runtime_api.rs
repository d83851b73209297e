//! A client for HAProxy's runtime API (the "stats socket" in admin level).
//!
//! No maintained crate drives the admin socket (the one published is a read-only
//! client from 2022), so this is a small module of our own. Each command opens its own
//! connection, writes one line and reads the reply until HAProxy closes the
//! connection: the API's non-interactive mode, which needs no prompt parsing and cannot
//! leave a half-read reply behind for the next command. Over a unix socket a command
//! costs well under a millisecond.
//!
//! HAProxy answers in text and reports errors in that text, not with a status:
//! [`RuntimeApi::command`] returns the raw reply, and the typed helpers decide what a
//! success looks like (`set server ... state` answers nothing; `set server ... addr`
//! answers "IP changed from ..." or "no need to change ..."), so an error always
//! carries HAProxy's own message. Parsers for `show servers state` and `show stat` are
//! in [`super::stats`].
//!
//! This module only talks; it must not decide anything about replicas.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::stats::{self, ParseError, ServerState, StatRow};

/// Longest a command may take, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Replies larger than this are refused (a `show stat` of a few hundred servers is
/// well under 1 MiB).
const MAX_REPLY: usize = 16 << 20;

/// Where the runtime API listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    /// `HOST:PORT` is TCP, anything else a unix socket path.
    pub fn parse(text: &str) -> Endpoint {
        let looks_tcp = !text.contains('/')
            && text
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if looks_tcp {
            Endpoint::Tcp(text.to_owned())
        } else {
            Endpoint::Unix(PathBuf::from(text))
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => f.write_str(a),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the HAProxy runtime API at {endpoint}")]
    Connect {
        endpoint: Endpoint,
        #[source]
        source: std::io::Error,
    },
    #[error("HAProxy runtime API at {endpoint}: `{command}` failed")]
    Io {
        endpoint: Endpoint,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HAProxy runtime API at {endpoint}: `{command}` timed out after {timeout:?}")]
    Timeout {
        endpoint: Endpoint,
        command: String,
        timeout: Duration,
    },
    /// HAProxy answered with an error message.
    #[error("HAProxy refused `{command}`: {message}")]
    Refused {
        command: String,
        message: String,
        /// What the message says, read once here.
        refusal: Refusal,
    },
    #[error("HAProxy's reply to `{command}` is not understood")]
    Parse {
        command: String,
        #[source]
        source: ParseError,
    },
}

/// What an HAProxy error reply means, for the refusals that matter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `No such backend.` / `Can't find backend.`
    NoSuchBackend,
    /// `No such server.`
    NoSuchServer,
    Other,
}

impl Refusal {
    /// HAProxy's reply text is read here and only here.
    fn of(message: &str) -> Self {
        if message.starts_with("No such backend") || message.starts_with("Can't find backend") {
            Refusal::NoSuchBackend
        } else if message.starts_with("No such server") {
            Refusal::NoSuchServer
        } else {
            Refusal::Other
        }
    }
}

impl ApiError {
    /// A short label for metrics and condition reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Connect { .. } => "unreachable",
            ApiError::Io { .. } => "io",
            ApiError::Timeout { .. } => "timeout",
            ApiError::Refused {
                refusal: Refusal::NoSuchBackend,
                ..
            } => "no_such_backend",
            ApiError::Refused {
                refusal: Refusal::NoSuchServer,
                ..
            } => "no_such_server",
            ApiError::Refused { .. } => "refused",
            ApiError::Parse { .. } => "parse",
        }
    }

    /// Whether HAProxy itself could not be reached (as opposed to refusing).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ApiError::Connect { .. } | ApiError::Io { .. } | ApiError::Timeout { .. }
        )
    }
}

/// Told about every command: its bounded label, its result (`ok` or an error kind)
/// and how long it took. The controller counts them in metrics.
pub type Observer = Arc<dyn Fn(&'static str, &'static str, Duration) + Send + Sync>;

/// A server's administrative state, as `set server ... state` sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminState {
    Ready,
    Drain,
    Maint,
}

impl AdminState {
    fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

/// Facts from `show info` that tell one HAProxy process from the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub uptime_sec: u64,
    pub version: String,
}

#[derive(Clone)]
pub struct RuntimeApi {
    endpoint: Endpoint,
    timeout: Duration,
    observer: Option<Observer>,
}

impl fmt::Debug for RuntimeApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeApi")
            .field("endpoint", &self.endpoint)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RuntimeApi {
    pub fn new(endpoint: Endpoint) -> Self {
        RuntimeApi {
            endpoint,
            timeout: DEFAULT_TIMEOUT,
            observer: None,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends one command and returns HAProxy's reply as it is. `label` is a bounded
    /// name for the observer (the command without its arguments).
    pub async fn command(&self, label: &'static str, command: &str) -> Result<String, ApiError> {
        self.run(label, command, Ok).await
    }

    /// Sends a command, lets `check` read the reply, and tells the observer the
    /// outcome (so a refusal counts as one, not as a successful exchange).
    async fn run<T>(
        &self,
        label: &'static str,
        command: &str,
        check: impl FnOnce(String) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.exchange(command)).await {
            Ok(r) => r.and_then(check),
            Err(_) => Err(ApiError::Timeout {
                endpoint: self.endpoint.clone(),
                command: command.to_owned(),
                timeout: self.timeout,
            }),
        };
        if let Some(observe) = &self.observer {
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.kind(),
            };
            observe(label, outcome, started.elapsed());
        }
        result
    }

    async fn exchange(&self, command: &str) -> Result<String, ApiError> {
        self.exchange_with(command, None).await
    }

    /// A command, with a payload after it when given (`command <<`, the payload's
    /// lines, an empty line: HAProxy's payload syntax).
    async fn exchange_with(
        &self,
        command: &str,
        payload: Option<&str>,
    ) -> Result<String, ApiError> {
        // A newline inside a command would smuggle in a second one; an empty line
        // inside a payload would end it early and run the rest as commands.
        let payload_ok = payload.is_none_or(|p| !p.lines().any(|l| l.trim().is_empty()));
        if command.contains(['\n', '\r', ';']) || !payload_ok {
            return Err(ApiError::Refused {
                command: command.to_owned(),
                message: "a command may not contain a line break or ';'".to_owned(),
                refusal: Refusal::Other,
            });
        }
        let io_err = |source| ApiError::Io {
            endpoint: self.endpoint.clone(),
            command: command.to_owned(),
            source,
        };
        let connect_err = |source| ApiError::Connect {
            endpoint: self.endpoint.clone(),
            source,
        };
        let reply = match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = UnixStream::connect(path).await.map_err(connect_err)?;
                talk(stream, command, payload).await.map_err(io_err)?
            }
            Endpoint::Tcp(addr) => {
                let stream = TcpStream::connect(addr.as_str())
                    .await
                    .map_err(connect_err)?;
                talk(stream, command, payload).await.map_err(io_err)?
            }
        };
        Ok(reply)
    }

    /// Starts (or updates) the transaction replacing a loaded certificate with `pem`
    /// (its chain and key); nothing is served from it before [`Self::commit_ssl_cert`].
    pub async fn set_ssl_cert(&self, file: &str, pem: &str) -> Result<(), ApiError> {
        let command = format!("set ssl cert {file}");
        let started = Instant::now();
        let result =
            match tokio::time::timeout(self.timeout, self.exchange_with(&command, Some(pem))).await
            {
                Ok(r) => r.and_then(|reply| {
                    if reply.contains("Transaction created")
                        || reply.contains("Transaction updated")
                    {
                        Ok(())
                    } else {
                        Err(refused(&command, reply.trim()))
                    }
                }),
                Err(_) => Err(ApiError::Timeout {
                    endpoint: self.endpoint.clone(),
                    command: command.clone(),
                    timeout: self.timeout,
                }),
            };
        if let Some(observe) = &self.observer {
            let outcome = result.as_ref().map_or_else(ApiError::kind, |_| "ok");
            observe("set_ssl_cert", outcome, started.elapsed());
        }
        result
    }

    /// Serves the certificate of the transaction [`Self::set_ssl_cert`] started.
    pub async fn commit_ssl_cert(&self, file: &str) -> Result<(), ApiError> {
        let command = format!("commit ssl cert {file}");
        self.run("commit_ssl_cert", &command, |reply| {
            if reply.contains("Success!") {
                Ok(())
            } else {
                Err(refused(&command, reply.trim()))
            }
        })
        .await
    }

    /// Drops a transaction that was not committed.
    pub async fn abort_ssl_cert(&self, file: &str) -> Result<(), ApiError> {
        self.command("abort_ssl_cert", &format!("abort ssl cert {file}"))
            .await
            .map(|_| ())
    }

    /// A command that answers nothing on success; any text is HAProxy's error.
    async fn silent(&self, label: &'static str, command: String) -> Result<(), ApiError> {
        self.run(label, &command, |reply| {
            let reply = reply.trim();
            if reply.is_empty() {
                Ok(())
            } else {
                Err(refused(&command, reply))
            }
        })
        .await
    }

    /// `set server <backend>/<server> addr <ip> port <port>`.
    pub async fn set_server_addr(
        &self,
        backend: &str,
        server: &str,
        addr: std::net::SocketAddrV4,
    ) -> Result<(), ApiError> {
        let command = format!(
            "set server {backend}/{server} addr {} port {}",
            addr.ip(),
            addr.port()
        );
        self.address_change(command).await
    }

    /// `set server <backend>/<server> addr 0.0.0.0`: the slot points nowhere.
    pub async fn clear_server_addr(&self, backend: &str, server: &str) -> Result<(), ApiError> {
        self.address_change(format!("set server {backend}/{server} addr 0.0.0.0"))
            .await
    }

    /// An address change answers "IP changed from ... by 'stats socket command'" or
    /// "no need to change the addr, no need to change the port by ..."; anything else
    /// is HAProxy's error.
    async fn address_change(&self, command: String) -> Result<(), ApiError> {
        self.run("set server addr", &command, |reply| {
            let reply = reply.trim();
            if reply.contains("changed") || reply.contains("no need to change") {
                Ok(())
            } else {
                Err(refused(&command, reply))
            }
        })
        .await
    }

    /// `set server <backend>/<server> state ready|drain|maint`.
    pub async fn set_server_state(
        &self,
        backend: &str,
        server: &str,
        state: AdminState,
    ) -> Result<(), ApiError> {
        self.silent(
            "set server state",
            format!("set server {backend}/{server} state {}", state.as_str()),
        )
        .await
    }

    /// `set server <backend>/<server> weight <w>` (absolute).
    pub async fn set_server_weight(
        &self,
        backend: &str,
        server: &str,
        weight: u16,
    ) -> Result<(), ApiError> {
        self.silent(
            "set server weight",
            format!("set server {backend}/{server} weight {weight}"),
        )
        .await
    }

    /// `set server <backend>/<server> health up`: the server counts as passing its
    /// checks (used once the replica was seen answering, so that a reused slot that
    /// checks marked DOWN earlier serves at once instead of after `rise` checks).
    pub async fn set_server_health_up(&self, backend: &str, server: &str) -> Result<(), ApiError> {
        self.silent(
            "set server health",
            format!("set server {backend}/{server} health up"),
        )
        .await
    }

    /// `set maxconn server <backend>/<server> <n>` (0: no limit).
    pub async fn set_server_maxconn(
        &self,
        backend: &str,
        server: &str,
        maxconn: u32,
    ) -> Result<(), ApiError> {
        self.silent(
            "set maxconn server",
            format!("set maxconn server {backend}/{server} {maxconn}"),
        )
        .await
    }

    /// `show servers state <backend>`.
    pub async fn servers_state(&self, backend: &str) -> Result<Vec<ServerState>, ApiError> {
        let command = format!("show servers state {backend}");
        self.run("show servers state", &command, |reply| {
            if reply.trim_start().starts_with("Can't find backend") {
                return Err(refused(&command, reply.trim()));
            }
            stats::parse_servers_state(&reply).map_err(|source| ApiError::Parse {
                command: command.clone(),
                source,
            })
        })
        .await
    }

    /// `show servers state` of every backend, as HAProxy writes its state file.
    pub async fn servers_state_file(&self) -> Result<String, ApiError> {
        self.command("show servers state", "show servers state")
            .await
    }

    /// `show stat <be_id> 6 -1`: the backend's row and its servers' rows.
    pub async fn stat(&self, backend_id: u32) -> Result<Vec<StatRow>, ApiError> {
        let command = format!("show stat {backend_id} 6 -1");
        self.run("show stat", &command, |reply| {
            stats::parse_stat(&reply).map_err(|source| ApiError::Parse {
                command: command.clone(),
                source,
            })
        })
        .await
    }

    /// `show backend`: the names of all backends.
    pub async fn backends(&self) -> Result<Vec<String>, ApiError> {
        let reply = self.command("show backend", "show backend").await?;
        Ok(reply
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect())
    }

    /// `show info`: pid, uptime and version of the answering process.
    pub async fn info(&self) -> Result<ProcessInfo, ApiError> {
        self.run("show info", "show info", |reply| {
            stats::parse_info(&reply).map_err(|source| ApiError::Parse {
                command: "show info".to_owned(),
                source,
            })
        })
        .await
    }
}

fn refused(command: &str, reply: &str) -> ApiError {
    // Keep the first line: HAProxy sometimes appends a usage listing.
    let message = reply.lines().next().unwrap_or("").trim().to_owned();
    ApiError::Refused {
        command: command.to_owned(),
        refusal: Refusal::of(&message),
        message: if message.is_empty() {
            "(empty reply)".to_owned()
        } else {
            message
        },
    }
}

async fn talk<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    command: &str,
    payload: Option<&str>,
) -> std::io::Result<String> {
    stream.write_all(command.as_bytes()).await?;
    match payload {
        Some(payload) => {
            stream.write_all(b" <<\n").await?;
            stream.write_all(payload.trim_end().as_bytes()).await?;
            stream.write_all(b"\n\n").await?;
        }
        None => stream.write_all(b"\n").await?,
    }
    stream.flush().await?;
    let mut reply = Vec::new();
    let mut limited = (&mut stream).take(MAX_REPLY as u64 + 1);
    limited.read_to_end(&mut reply).await?;
    if reply.len() > MAX_REPLY {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "reply larger than 16 MiB",
        ));
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixListener;

    #[test]
    fn host_and_port_is_tcp_and_anything_else_a_socket_path() {
        assert_eq!(
            Endpoint::parse("127.0.0.1:9999"),
            Endpoint::Tcp("127.0.0.1:9999".into())
        );
        assert_eq!(
            Endpoint::parse("localhost:9999"),
            Endpoint::Tcp("localhost:9999".into())
        );
        assert_eq!(
            Endpoint::parse("/run/haproxy/admin.sock"),
            Endpoint::Unix("/run/haproxy/admin.sock".into())
        );
        assert_eq!(
            Endpoint::parse("admin.sock"),
            Endpoint::Unix("admin.sock".into())
        );
    }

    /// A socket that answers each connection's line from a script, the way HAProxy's
    /// non-interactive mode does (reply, then close).
    async fn scripted(
        replies: &'static [(&'static str, &'static str)],
    ) -> (tempfile::TempDir, RuntimeApi) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let _ = BufReader::new(read).read_line(&mut line).await;
                let reply = replies
                    .iter()
                    .find(|(cmd, _)| *cmd == line.trim())
                    .map_or("Unknown command.\n", |(_, r)| r);
                let _ = write.write_all(reply.as_bytes()).await;
            }
        });
        (dir, RuntimeApi::new(Endpoint::Unix(path)))
    }

    #[tokio::test]
    async fn a_silent_command_fails_with_haproxys_own_message() {
        let (_dir, api) = scripted(&[
            ("set server web/slot1 state ready", "\n"),
            ("set server web/nope state ready", "No such server.\n\n"),
        ])
        .await;
        api.set_server_state("web", "slot1", AdminState::Ready)
            .await
            .expect("empty reply is success");
        let err = api
            .set_server_state("web", "nope", AdminState::Ready)
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), "no_such_server");
        assert_eq!(
            err.to_string(),
            "HAProxy refused `set server web/nope state ready`: No such server."
        );
    }

    #[tokio::test]
    async fn an_address_change_succeeds_on_either_confirmation() {
        let (_dir, api) = scripted(&[
            (
                "set server web/slot1 addr 10.0.0.2 port 8080",
                "IP changed from '0.0.0.0' to '10.0.0.2', \
                 no need to change the port by 'stats socket command'\n\n",
            ),
            (
                "set server web/slot2 addr 10.0.0.2 port 8080",
                "no need to change the addr, \
                 no need to change the port by 'stats socket command'\n\n",
            ),
        ])
        .await;
        let addr = "10.0.0.2:8080".parse().expect("addr");
        api.set_server_addr("web", "slot1", addr)
            .await
            .expect("changed");
        api.set_server_addr("web", "slot2", addr)
            .await
            .expect("unchanged");
        let err = api
            .set_server_addr("web", "slot3", addr)
            .await
            .expect_err("unknown");
        assert_eq!(err.kind(), "refused");
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable_and_names_it() {
        let api = RuntimeApi::new(Endpoint::Unix("/nonexistent/dockscale/haproxy.sock".into()));
        let err = api.info().await.expect_err("no socket");
        assert!(err.is_unreachable());
        assert!(err
            .to_string()
            .contains("/nonexistent/dockscale/haproxy.sock"));
    }

    #[tokio::test]
    async fn a_command_cannot_smuggle_a_second_one() {
        let (_dir, api) = scripted(&[]).await;
        let err = api
            .set_server_state("web", "slot1\nshutdown sessions", AdminState::Ready)
            .await
            .expect_err("refused before sending");
        assert_eq!(err.kind(), "refused");
    }

    #[tokio::test]
    async fn a_socket_that_never_answers_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mute.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let api = RuntimeApi::new(Endpoint::Unix(path)).with_timeout(Duration::from_millis(100));
        let err = api.backends().await.expect_err("times out");
        assert_eq!(err.kind(), "timeout");
    }

    #[tokio::test]
    async fn every_command_is_reported_to_the_observer() {
        let (_dir, api) = scripted(&[("show backend", "# name\nweb\napi\n")]).await;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let api = api.with_observer(Arc::new(move |label, result, _| {
            sink.lock().expect("lock").push((label, result));
        }));
        assert_eq!(api.backends().await.expect("ok"), vec!["web", "api"]);
        let _ = api.set_server_weight("web", "slot1", 100).await;
        assert_eq!(
            *seen.lock().expect("lock"),
            vec![("show backend", "ok"), ("set server weight", "refused")]
        );
    }
}
