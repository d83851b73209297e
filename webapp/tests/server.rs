//! The server over real loopback HTTP: each test runs its own `run` on port 0 and talks
//! to it with hyper's client, as HAProxy and curl would. The tests of `check` and of the
//! knobs that act on the process (`EXIT_AFTER_MS`, `ALLOCATE_MB`, bad values) run the
//! built binary itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use dockscale_webapp::fault::FailRate;
use dockscale_webapp::{run, Config};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{COOKIE, SET_COOKIE};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server running in this test's runtime, stopped by `shutdown` or on drop.
struct TestServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// What a test reads from one response.
struct Answer {
    status: StatusCode,
    served_by: Option<String>,
    set_cookie: Option<String>,
    body: String,
}

impl Answer {
    /// The value of the body's `key: value` line for `key`.
    fn field(&self, key: &str) -> Option<&str> {
        self.body
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(": "))
    }

    /// The session id this answer started, from its `Set-Cookie`.
    fn new_session(&self) -> Option<&str> {
        let cookie = self.set_cookie.as_deref()?;
        cookie.strip_prefix("DSSESSION=")?.split(';').next()
    }
}

fn config() -> Config {
    Config {
        port: 0,
        hostname: "webapp-test1".into(),
        greeting: Some("hello".into()),
        log_requests: false,
        fail_rate: FailRate::default(),
        extra_latency: Duration::ZERO,
        health_fail_file: None,
        exit_after: None,
        exit_code: 1,
        allocate_mib: 0,
    }
}

/// The binary under test.
const WEBAPP: &str = env!("CARGO_BIN_EXE_dockscale-webapp");

/// Runs the binary with `args` and only the environment `vars`, waiting at most
/// `limit` for it to exit.
async fn run_binary(args: &[&str], vars: &[(&str, &str)], limit: Duration) -> Output {
    let child = tokio::process::Command::new(WEBAPP)
        .args(args)
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(limit, child)
        .await
        .expect("the binary did not exit in time")
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A path in the temporary directory that no other test uses, removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(name: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let file = format!("dockscale-webapp-{name}-{}-{nanos}", std::process::id());
        Self(std::env::temp_dir().join(file))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A loopback port that nothing listens on (bound, then released).
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

impl TestServer {
    async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(listener, config, async {
            let _ = stopped.await;
        }));
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self {
            addr,
            stop: Some(stop),
            task,
            client,
        }
    }

    async fn get(&self, path_and_query: &str, session: Option<&str>) -> Answer {
        let mut request = Request::get(format!("http://{}{path_and_query}", self.addr));
        if let Some(id) = session {
            request = request.header(COOKIE, format!("theme=dark; DSSESSION={id}"));
        }
        let response = self
            .client
            .request(request.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &hyper::header::HeaderValue| v.to_str().unwrap().to_owned())
        };
        let (status, served_by, set_cookie) = (
            response.status(),
            header("x-served-by"),
            header(SET_COOKIE.as_str()),
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            served_by,
            set_cookie,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    /// Signals shutdown and returns `run`'s result, waiting at most `limit`.
    async fn shutdown(mut self, limit: Duration) -> std::io::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(limit, &mut self.task)
            .await
            .expect("run did not return in time")
            .unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn answers_name_the_replica_in_header_and_body() {
    let server = TestServer::start(config()).await;
    let answer = server.get("/any/path", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.served_by.as_deref(), Some("webapp-test1"));
    assert_eq!(answer.field("hostname"), Some("webapp-test1"));
    assert_eq!(answer.field("greeting"), Some("hello"));
    assert_eq!(answer.field("count"), Some("1"));
}

#[tokio::test]
async fn greeting_line_is_left_out_when_unset() {
    let server = TestServer::start(Config {
        greeting: None,
        ..config()
    })
    .await;
    let answer = server.get("/", None).await;
    assert_eq!(answer.field("greeting"), None);
    assert_eq!(answer.body.lines().count(), 3, "{}", answer.body);
}

#[tokio::test]
async fn the_session_cookie_counts_requests_per_session() {
    let server = TestServer::start(config()).await;

    let first = server.get("/", None).await;
    let a = first
        .new_session()
        .expect("first request sets a cookie")
        .to_owned();
    assert_eq!(first.field("session"), Some(a.as_str()));
    assert_eq!(first.field("count"), Some("1"));

    let again = server.get("/", Some(&a)).await;
    assert_eq!(again.field("count"), Some("2"));
    assert_eq!(again.set_cookie, None, "a known session keeps its cookie");

    let other = server.get("/", None).await;
    let b = other.new_session().unwrap().to_owned();
    assert_ne!(a, b);
    assert_eq!(other.field("count"), Some("1"));

    assert_eq!(server.get("/", Some(&a)).await.field("count"), Some("3"));
    assert_eq!(server.get("/", Some(&b)).await.field("count"), Some("2"));
}

#[tokio::test]
async fn a_session_started_on_another_replica_is_adopted() {
    let server = TestServer::start(config()).await;
    let answer = server.get("/", Some("fromanotherreplica")).await;
    assert_eq!(answer.field("session"), Some("fromanotherreplica"));
    assert_eq!(answer.field("count"), Some("1"));
    assert_eq!(answer.set_cookie, None);
}

#[tokio::test]
async fn healthz_answers_ok() {
    let server = TestServer::start(config()).await;
    let answer = server.get("/healthz", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "ok\n");
    assert_eq!(answer.set_cookie, None);
    assert_eq!(answer.served_by.as_deref(), Some("webapp-test1"));
}

#[tokio::test]
async fn delay_holds_the_answer_back() {
    let server = TestServer::start(config()).await;
    let started = Instant::now();
    let answer = server.get("/?delay=300", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let started = Instant::now();
    assert_eq!(server.get("/healthz?delay=200", None).await.body, "ok\n");
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn bad_delays_are_a_400_that_says_why() {
    let server = TestServer::start(config()).await;
    let answer = server.get("/?delay=soon", None).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        answer.body.contains("whole number of milliseconds"),
        "{}",
        answer.body
    );

    let answer = server.get("/healthz?delay=60001", None).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.body.contains("at most 60000 ms"), "{}", answer.body);
}

#[tokio::test]
async fn shutdown_finishes_a_request_in_flight_then_stops_listening() {
    let server = TestServer::start(config()).await;
    let addr = server.addr;
    let client = server.client.clone();
    let in_flight = tokio::spawn(async move {
        let request = Request::get(format!("http://{addr}/?delay=500"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = client.request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    server.shutdown(Duration::from_secs(5)).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "returned after {waited:?}"
    );

    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("count: 1"), "{body}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn fail_rate_answers_that_share_of_requests_500_still_naming_the_replica() {
    let server = TestServer::start(Config {
        fail_rate: FailRate::new(0.25).unwrap(),
        ..config()
    })
    .await;
    let mut failed = Vec::new();
    for n in 1..=20 {
        let answer = server.get("/", None).await;
        assert_eq!(answer.served_by.as_deref(), Some("webapp-test1"));
        if answer.status == StatusCode::INTERNAL_SERVER_ERROR {
            assert!(
                answer.body.contains("injected failure: FAIL_RATE=0.25"),
                "{}",
                answer.body
            );
            assert_eq!(
                answer.set_cookie, None,
                "a failed request starts no session"
            );
            failed.push(n);
        } else {
            assert_eq!(answer.status, StatusCode::OK);
        }
    }
    assert_eq!(failed, [4, 8, 12, 16, 20], "every 4th request fails");
}

#[tokio::test]
async fn fail_rate_spares_healthz_and_failed_requests_count_no_session() {
    let server = TestServer::start(Config {
        fail_rate: FailRate::new(0.5).unwrap(),
        ..config()
    })
    .await;
    for _ in 0..4 {
        assert_eq!(server.get("/healthz", None).await.status, StatusCode::OK);
    }
    let first = server.get("/", None).await;
    assert_eq!(
        first.status,
        StatusCode::OK,
        "healthz requests are not counted"
    );
    let id = first.new_session().unwrap().to_owned();
    let failed = server.get("/", Some(&id)).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    let next = server.get("/", Some(&id)).await;
    assert_eq!(next.field("count"), Some("2"), "{}", next.body);
}

#[tokio::test]
async fn extra_latency_is_added_to_every_answer_but_healthz() {
    let server = TestServer::start(Config {
        extra_latency: Duration::from_millis(400),
        ..config()
    })
    .await;
    let started = Instant::now();
    assert_eq!(server.get("/", None).await.status, StatusCode::OK);
    let plain = started.elapsed();
    assert!(plain >= Duration::from_millis(400), "answered in {plain:?}");

    let started = Instant::now();
    server.get("/?delay=200", None).await;
    let delayed = started.elapsed();
    assert!(
        delayed >= Duration::from_millis(600),
        "answered in {delayed:?}"
    );

    let started = Instant::now();
    assert_eq!(server.get("/healthz", None).await.body, "ok\n");
    let health = started.elapsed();
    assert!(
        health < Duration::from_millis(300),
        "healthz took {health:?}"
    );
}

#[tokio::test]
async fn extra_latency_delays_failures_too() {
    let server = TestServer::start(Config {
        fail_rate: FailRate::new(1.0).unwrap(),
        extra_latency: Duration::from_millis(300),
        ..config()
    })
    .await;
    let started = Instant::now();
    let answer = server.get("/", None).await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn healthz_fails_while_the_health_fail_file_exists() {
    let flag = TempPath::new("health-flag");
    let server = TestServer::start(Config {
        health_fail_file: Some(flag.0.clone()),
        ..config()
    })
    .await;
    assert_eq!(server.get("/healthz", None).await.body, "ok\n");

    std::fs::write(&flag.0, b"").unwrap();
    let answer = server.get("/healthz", None).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.body.contains("exists"), "{}", answer.body);
    assert_eq!(answer.served_by.as_deref(), Some("webapp-test1"));
    assert_eq!(
        server.get("/", None).await.status,
        StatusCode::OK,
        "other paths keep answering"
    );

    std::fs::remove_file(&flag.0).unwrap();
    let answer = server.get("/healthz", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "ok\n");
}

#[tokio::test]
async fn check_exits_0_against_a_healthy_server() {
    let server = TestServer::start(config()).await;
    let port = server.addr.port().to_string();
    let output = run_binary(&["check"], &[("PORT", &port)], Duration::from_secs(10)).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("healthy: 200"), "{stdout}");
}

#[tokio::test]
async fn check_exits_1_against_a_closed_port() {
    let port = closed_port().await.to_string();
    let output = run_binary(&["check"], &[("PORT", &port)], Duration::from_secs(10)).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).starts_with("unhealthy: "),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn check_exits_1_while_healthz_fails() {
    let flag = TempPath::new("check-flag");
    std::fs::write(&flag.0, b"").unwrap();
    let server = TestServer::start(Config {
        health_fail_file: Some(flag.0.clone()),
        ..config()
    })
    .await;
    let port = server.addr.port().to_string();
    let output = run_binary(&["check"], &[("PORT", &port)], Duration::from_secs(10)).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("503"), "{}", stderr(&output));
}

#[tokio::test]
async fn check_gives_up_on_a_server_that_does_not_answer() {
    // Accepts connections (the kernel's backlog) but never reads them.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    let started = Instant::now();
    let output = run_binary(&["check"], &[("PORT", &port)], Duration::from_secs(10)).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("no answer"), "{}", stderr(&output));
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(silent);
}

#[tokio::test]
async fn exit_after_ms_exits_with_exit_code_and_says_so() {
    let started = Instant::now();
    let output = run_binary(
        &[],
        &[("PORT", "0"), ("EXIT_AFTER_MS", "300"), ("EXIT_CODE", "7")],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(output.status.code(), Some(7), "{}", stderr(&output));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        stderr(&output).contains("EXIT_AFTER_MS=300 elapsed, exiting with code 7"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn allocate_mb_logs_the_memory_it_holds() {
    let output = run_binary(
        &[],
        &[
            ("PORT", "0"),
            ("ALLOCATE_MB", "16"),
            ("EXIT_AFTER_MS", "100"),
        ],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("ALLOCATE_MB=16: holding 16 MiB"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn a_bad_knob_stops_the_binary_at_start_with_a_message_not_a_panic() {
    for (name, value) in [("FAIL_RATE", "2"), ("EXIT_CODE", "300"), ("PORT", "http")] {
        let output = run_binary(&[], &[(name, value)], Duration::from_secs(10)).await;
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{name}={value}: {message}");
        assert!(
            message.contains(&format!("{name} must be ")) && message.contains(value),
            "{name}={value}: {message}"
        );
        assert!(!message.contains("panicked"), "{message}");
    }
}

#[tokio::test]
async fn an_unknown_argument_is_a_usage_error() {
    let output = run_binary(&["serve"], &[], Duration::from_secs(10)).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("usage: dockscale-webapp [check | fs read|write|statfs PATH]"));
}

#[tokio::test]
async fn fs_writes_and_reads_a_file_and_fails_with_exit_code_1_saying_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("f.txt");
    let file = file.to_str().expect("a UTF-8 path");
    let limit = Duration::from_secs(10);
    let wrote = run_binary(&["fs", "write", file], &[], limit).await;
    assert_eq!(wrote.status.code(), Some(0), "{}", stderr(&wrote));
    let read = run_binary(&["fs", "read", file], &[], limit).await;
    assert_eq!(read.status.code(), Some(0), "{}", stderr(&read));
    assert_eq!(
        String::from_utf8_lossy(&read.stdout),
        "written by dockscale-webapp\n"
    );
    let missing = run_binary(&["fs", "read", "/nonexistent/f"], &[], limit).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("/nonexistent/f: "),
        "{}",
        stderr(&missing)
    );
}
