//! What operators see: `/metrics` in the Prometheus text format, scraped by a real
//! Prometheus server, `dockscale status`, and `/readyz`.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dockscale_e2e::haproxy::{ExternalHaproxy, LbFixture};
use dockscale_e2e::{free_port, http_get, sh, wait_for, Fixture, RunningController};

async fn two_replicas(fixture: &Fixture, controller: &RunningController) {
    controller.wait_listening().await;
    wait_for("2 ready", Duration::from_secs(60), || {
        let (_, body) =
            dockscale_e2e::block(controller.get(&format!("/api/v1/services/{}", fixture.service)));
        let s: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if s["replicas"]["ready"] == 2 {
            Ok(())
        } else {
            Err(body)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_as_prometheus_text_and_carry_the_documented_series() {
    let fixture = Fixture::new("e2e-metrics");
    fixture.write_spec(&fixture.pool_spec(2));
    let controller = RunningController::start(&fixture.run_args(&[]));
    two_replicas(&fixture, &controller).await;

    let (code, text) = controller.get("/metrics").await;
    assert_eq!(code, 200);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text exposition");
    let for_service: BTreeSet<&str> = scrape
        .samples
        .iter()
        .filter(|s| s.labels.get("service") == Some(fixture.service.as_str()))
        .map(|s| s.metric.as_str())
        .collect();
    for name in [
        "dockscale_replicas_desired",
        "dockscale_replicas_current",
        "dockscale_replicas_ready",
        "dockscale_replicas_updated",
        "dockscale_reconcile_total",
        "dockscale_reconcile_duration_seconds_count",
        "dockscale_container_starts_total",
    ] {
        assert!(
            for_service.contains(name),
            "{name} missing for the service: {for_service:?}"
        );
    }
    let all: BTreeSet<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for name in [
        "dockscale_spec_reloads_total",
        "dockscale_spec_valid",
        "dockscale_build_info",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(all.contains(name), "{name} missing");
    }
    let ready = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "dockscale_replicas_ready"
                && s.labels.get("service") == Some(fixture.service.as_str())
        })
        .expect("ready gauge");
    assert!(
        matches!(ready.value, prometheus_parse::Value::Gauge(v) if v == 2.0),
        "{:?}",
        ready.value
    );
    controller.stop().await;
}

/// A Prometheus server on loopback with a temporary config and data directory,
/// ended by pid on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: dockscale
    static_configs:
      - targets: ['{target}']
"
            ),
        )
        .expect("write config");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start prometheus (apt-get install prometheus): {e}")
            });
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_the_ready_replicas() {
    let fixture = Fixture::new("e2e-prom");
    fixture.write_spec(&fixture.pool_spec(2));
    let controller = RunningController::start(&fixture.run_args(&[]));
    two_replicas(&fixture, &controller).await;
    let prometheus = Prometheus::start(controller.listen);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], prometheus.port));
    let query = format!(
        "/api/v1/query?query=dockscale_replicas_ready%7Bservice%3D%22{}%22%7D",
        fixture.service
    );
    let (value, took) = wait_for(
        "Prometheus to scrape the ready count",
        Duration::from_secs(60),
        || {
            let answer = tokio::net::TcpStream::connect(addr);
            if dockscale_e2e::block(answer).is_err() {
                return Err("not listening yet".to_owned());
            }
            let (_, body) = dockscale_e2e::block(http_get(addr, &query));
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|_| body.clone())?;
            match v["data"]["result"][0]["value"][1].as_str() {
                Some(value) => Ok(value.to_owned()),
                None => Err(body),
            }
        },
    )
    .await;
    println!("Prometheus has dockscale_replicas_ready = {value} after {took:?}");
    assert_eq!(value, "2");
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dockscale_status_shows_the_numbers_conditions_and_events() {
    let fixture = Fixture::new("e2e-status");
    fixture.write_spec(&fixture.pool_spec(2));
    let controller = RunningController::start(&fixture.run_args(&[]));
    two_replicas(&fixture, &controller).await;
    let bin = dockscale_e2e::dockscale_bin();
    let bin = bin.to_str().expect("utf-8 path");
    let addr = controller.listen.to_string();

    let table = sh(bin, &["status", "--addr", &addr]);
    println!("{table}");
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "SERVICE",
            "DESIRED",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AUTOSCALE",
            "AGE",
            "LAST",
            "EVENT"
        ],
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with(&fixture.service))
        .unwrap_or_else(|| panic!("no row for the service: {table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[1..6], ["2", "2/2", "2", "True", "-"], "{row}");

    let json = sh(bin, &["status", "--addr", &addr, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let svc = v["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == fixture.service.as_str()))
        .expect("the service in the JSON");
    assert_eq!(svc["replicas"]["ready"], 2);

    let describe = sh(bin, &["status", &fixture.service, "--addr", &addr]);
    println!("{describe}");
    assert!(
        describe.contains("Replicas:       2 desired | 2 updated | 2 current | 2 ready"),
        "{describe}"
    );
    let available = describe
        .lines()
        .find(|l| l.trim_start().starts_with("Available "))
        .unwrap_or_else(|| panic!("no Available condition: {describe}"));
    assert_eq!(
        available.split_whitespace().nth(1),
        Some("True"),
        "{available}"
    );
    assert!(describe.contains("SuccessfulCreate"), "{describe}");

    let missing = Command::new(bin)
        .args(["status", "no-such-service", "--addr", &addr])
        .output()
        .expect("run");
    assert!(!missing.status.success());
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(
        said.contains("no service named `no-such-service`"),
        "{said}"
    );
    controller.stop().await;
    let unreachable = Command::new(bin)
        .args(["status", "--addr", &addr])
        .output()
        .expect("run");
    assert!(!unreachable.status.success());
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach dockscale"));
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_turns_unready_when_the_haproxy_socket_is_gone() {
    let fixture = LbFixture::new("e2e-readyz");
    let config = dockscale_e2e::haproxy::external_config(fixture.bind, &fixture.backend);
    let haproxy = ExternalHaproxy::start(&config).await;
    fixture.write_spec(&fixture.lb_spec(1, "hello", ""));
    let socket = haproxy.socket.display().to_string();
    let controller =
        RunningController::start(&fixture.run_args(&["--haproxy-socket", socket.as_str()]));
    controller.wait_listening().await;
    wait_for("ready", Duration::from_secs(30), || {
        let (code, body) = dockscale_e2e::block(controller.get("/readyz"));
        if code == 200 {
            Ok(())
        } else {
            Err(body)
        }
    })
    .await;
    drop(haproxy);
    let (body, took) = wait_for("unready", Duration::from_secs(15), || {
        let (code, body) = dockscale_e2e::block(controller.get("/readyz"));
        if code == 503 {
            Ok(body)
        } else {
            Err(code)
        }
    })
    .await;
    println!("/readyz unready {took:?} after HAProxy went away: {body}");
    assert!(body.contains("haproxy socket not answering"), "{body}");
    let (code, _) = controller.get("/healthz").await;
    assert_eq!(code, 200, "alive while unready");
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_refuses_a_listen_port_in_use() {
    let fixture = Fixture::new("e2e-port");
    fixture.write_spec(&fixture.pool_spec(1));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let mut args = fixture.run_args(&[]);
    let at = args.iter().position(|a| a == "--listen").expect("--listen") + 1;
    args[at] = addr.clone();
    args.remove(0);
    let out = Command::new(dockscale_e2e::dockscale_bin())
        .args(&args)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(
        fixture.containers().is_empty(),
        "nothing may start when the port is taken"
    );
}
