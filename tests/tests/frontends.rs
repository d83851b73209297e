//! Shared frontends (`kind: Frontend`): two services behind one address, routed by host
//! and path; TLS with certificates chosen by SNI, a redirect from HTTP, HTTP/2 by ALPN;
//! a certificate file replaced on disk swapped into the running HAProxy without a
//! reload and without a failed request; a broken one reported while the old one serves.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dockscale_e2e::haproxy::{LbFixture, Load};
use dockscale_e2e::tls::{replace_file, TestCa};
use dockscale_e2e::{free_port, get_host, RunningController};

/// Two services (`a` and `b`, from two fixtures for their names, networks and cleanup)
/// without binds of their own, in the first fixture's spec file with `frontend`.
struct TwoServices {
    a: LbFixture,
    b: LbFixture,
}

impl TwoServices {
    fn new() -> Self {
        TwoServices {
            a: LbFixture::new("e2e-fe-a"),
            b: LbFixture::new("e2e-fe-b"),
        }
    }

    /// Both services (2 replicas each, greetings `alpha` and `beta`) and a frontend.
    fn write(&self, frontend: &str) {
        let routed = |f: &LbFixture, greeting: &str| {
            f.lb_spec(2, greeting, "")
                .replace(&format!("    bind: {}\n", f.bind), "")
        };
        let text = format!(
            "{}---\n{}---\n{frontend}",
            routed(&self.a, "alpha"),
            routed(&self.b, "beta")
        );
        self.a.write_spec(&text);
    }

    fn frontend(&self, name: &str, body: &str) -> String {
        format!(
            "apiVersion: dockscale/v1alpha1\nkind: Frontend\nmetadata: {{name: {name}}}\n\
             spec:\n{body}"
        )
    }
}

fn greeting(body: &str) -> Option<&str> {
    body.lines().find_map(|l| l.strip_prefix("greeting: "))
}

/// Waits until `host` and `path` are answered by the service greeting `expected`.
async fn wait_routed(addr: SocketAddr, host: &str, path: &str, expected: &str) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok((200, _, body)) = get_host(addr, host, path).await {
            if greeting(&body) == Some(expected) {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{host}{path} never reached {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_services_share_one_address_by_host_and_path_and_a_route_edit_fails_no_request_of_the_other(
) {
    let two = TwoServices::new();
    let bind = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let routes = |b_host: &str| {
        two.frontend(
            &format!("{}-fe", two.a.service),
            &format!(
                "  bind: [{bind}]\n  routes:\n\
                 \x20   - {{host: \"{b_host}\", service: {b}}}\n\
                 \x20   - {{pathPrefix: /beta, service: {b}}}\n\
                 \x20 defaultService: {a}\n",
                a = two.a.service,
                b = two.b.service,
            ),
        )
    };
    two.write(&routes("*.beta.example.com"));
    let controller = RunningController::start(&two.a.lb_run_args(&[]));
    controller.wait_listening().await;

    let took = wait_routed(bind, "shop.example.com", "/", "alpha").await;
    println!("default route served after {took:?}");
    wait_routed(bind, "x.beta.example.com", "/", "beta").await;
    wait_routed(bind, "deep.x.beta.example.com", "/", "beta").await;
    wait_routed(bind, "shop.example.com", "/beta", "beta").await;
    wait_routed(bind, "shop.example.com", "/beta/x", "beta").await;
    // Whole segments only, and the host's port does not matter.
    wait_routed(bind, "shop.example.com", "/betamax", "alpha").await;
    wait_routed(bind, "X.Beta.Example.com:8080", "/", "beta").await;

    // A route edit (one reload) under load on the default service: nothing fails.
    let load = Load::start(bind, "/", 8, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reloads_before = reloads(&controller).await;
    let edited = Instant::now();
    two.write(&routes("beta.example.org"));
    let took = wait_routed(bind, "beta.example.org", "/", "beta").await;
    wait_routed(bind, "x.beta.example.com", "/", "alpha").await;
    println!(
        "a route edit took effect {:?} after the write ({took:?} of polling)",
        edited.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load
        .finish_without_failures("a route of the other service edited")
        .await;
    println!("default service under a route edit: {report:?}");
    let reloads_after = reloads(&controller).await;
    assert_eq!(
        reloads_after - reloads_before,
        1.0,
        "one reload for one route edit"
    );
    controller.stop().await;
}

/// `dockscale_haproxy_reloads_total`, all reasons.
async fn reloads(controller: &RunningController) -> f64 {
    let (_, text) = controller.get("/metrics").await;
    text.lines()
        .filter(|l| l.starts_with("dockscale_haproxy_reloads_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The managed HAProxy's worker pid, from its runtime API.
async fn worker_pid(fixture: &LbFixture) -> u32 {
    fixture.api().info().await.expect("show info").pid
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_by_sni_with_redirect_and_h2_and_a_certificate_swapped_on_disk_without_a_reload() {
    let two = TwoServices::new();
    let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let ca = TestCa::new();
    let certs = two.a.dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    let a1 = ca.leaf(&["a.example.com"]);
    let b1 = ca.leaf(&["b.example.com"]);
    // One file with certificate and key, one pair of files.
    std::fs::write(
        certs.join("a.pem"),
        format!("{}{}", a1.cert_pem, a1.key_pem),
    )
    .expect("a.pem");
    std::fs::write(certs.join("b.crt"), &b1.cert_pem).expect("b.crt");
    std::fs::write(certs.join("b.key"), &b1.key_pem).expect("b.key");
    let frontend = two.frontend(
        &format!("{}-tls", two.a.service),
        &format!(
            "  bind: [{https}]\n  redirectFrom: [{http}]\n  tls: {{certificates: [certs/]}}\n\
             \x20 routes: [{{host: b.example.com, service: {b}}}]\n  defaultService: {a}\n",
            a = two.a.service,
            b = two.b.service,
        ),
    );
    two.write(&frontend);
    let controller = RunningController::start(&two.a.lb_run_args(&[]));
    controller.wait_listening().await;
    let client = ca.client();

    // SNI picks the certificate; the route picks the service.
    let started = Instant::now();
    let a = loop {
        match client.get(https, "a.example.com", "/").await {
            Ok(answer) if answer.status == 200 => break answer,
            other => {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "no HTTPS: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(
        a.presented, a1.der,
        "SNI a.example.com gets a's certificate"
    );
    assert_eq!(greeting(&a.body), Some("alpha"));
    let b = client.get(https, "b.example.com", "/").await.expect("b");
    assert_eq!(
        b.presented, b1.der,
        "SNI b.example.com gets b's certificate"
    );
    wait_routed_tls(&client, https, "b.example.com", "beta").await;

    // Plain HTTP redirects to HTTPS on the TLS port.
    let (status, head, _) = get_host(http, "a.example.com", "/x?y=1")
        .await
        .expect("redirect");
    assert_eq!(status, 308, "{head}");
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "location: https://a.example.com:{}/x?y=1",
            https.port()
        )),
        "{head}"
    );

    // HTTP/2 by ALPN.
    let resolve = format!("a.example.com:{}:127.0.0.1", https.port());
    let url = format!("https://a.example.com:{}/", https.port());
    let version = dockscale_e2e::sh(
        "curl",
        &[
            "-sk",
            "--http2",
            "--resolve",
            &resolve,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            &url,
        ],
    );
    assert_eq!(version.trim(), "2", "curl negotiated HTTP/{version}");

    // The certificate file replaced under continuous HTTPS load: served within a second
    // or two, no reload, no failed request.
    let pid = worker_pid(&two.a).await;
    let reloads_before = reloads(&controller).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let a2 = ca.leaf(&["a.example.com"]);
    let new_seen: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop, ok, failed, new_seen) = (
                client.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
                new_seen.clone(),
            );
            let new_der = a2.der.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match client.get(https, "a.example.com", "/").await {
                        Ok(answer) if answer.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if answer.presented == new_der {
                                let mut seen = new_seen.lock().expect("lock");
                                seen.get_or_insert_with(Instant::now);
                            }
                        }
                        other => {
                            eprintln!("failed HTTPS request: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let replaced = Instant::now();
    replace_file(
        &certs.join("a.pem"),
        &format!("{}{}", a2.cert_pem, a2.key_pem),
    );
    let swapped = loop {
        if let Some(at) = *new_seen.lock().expect("lock") {
            break at.duration_since(replaced);
        }
        assert!(
            replaced.elapsed() < Duration::from_secs(15),
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("a replaced certificate was served {swapped:?} after its file was written");

    // A broken certificate: reported, the old one keeps serving.
    std::fs::write(certs.join("b.key"), ca.leaf(&["other.example.com"]).key_pem).expect("b.key");
    let broke = Instant::now();
    let event = loop {
        let (_, body) = controller
            .get(&format!("/api/v1/frontends/{}-tls", two.a.service))
            .await;
        let fe: serde_json::Value = serde_json::from_str(&body).expect("frontend JSON");
        let invalid = fe["events"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["reason"] == "CertificateInvalid")
            .cloned();
        if let Some(event) = invalid {
            let condition = fe["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "CertificatesValid")
                .cloned();
            assert_eq!(
                condition.as_ref().map(|c| c["status"].clone()),
                Some(false.into()),
                "{fe}"
            );
            break event;
        }
        assert!(
            broke.elapsed() < Duration::from_secs(15),
            "no event for a broken certificate: {fe}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("a broken certificate: {}", event["message"]);
    let b = client
        .get(https, "b.example.com", "/")
        .await
        .expect("b still served");
    assert_eq!(b.presented, b1.der, "the old certificate keeps serving");

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("HTTPS requests during the swap: {ok} ok, {failed} failed");
    assert!(ok > 50, "too little load: {ok}");
    assert_eq!(failed, 0, "requests failed during the certificate swap");
    assert_eq!(worker_pid(&two.a).await, pid, "HAProxy was reloaded");
    assert_eq!(
        reloads(&controller).await,
        reloads_before,
        "a reload was counted"
    );
    let (_, metrics) = controller.get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("dockscale_certificate_swaps_total{result=\"ok\"} 1")),
        "{metrics}"
    );
    assert!(
        metrics.contains("dockscale_certificate_expiry_timestamp_seconds{"),
        "{metrics}"
    );
    // `dockscale status` lists the frontend under the services, with its certificates.
    let addr = controller.listen.to_string();
    let table = dockscale_e2e::process::dockscale_output(&["status", "--addr", &addr]);
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("{}-tls", two.a.service)))
        .unwrap_or_else(|| panic!("no frontend row: {table}"));
    assert!(row.contains(&https.to_string()), "{table}");
    assert!(row.contains("2 (expires in"), "two certificates: {table}");
    // The key that does not match, written above, is still on disk.
    assert!(row.contains("False"), "not valid: {table}");
    assert!(row.contains("changed on disk"), "{table}");
    controller.stop().await;
}

async fn wait_routed_tls(
    client: &dockscale_e2e::tls::TlsClient,
    addr: SocketAddr,
    host: &str,
    expected: &str,
) {
    let started = Instant::now();
    loop {
        if let Ok(answer) = client.get(addr, host, "/").await {
            if answer.status == 200 && greeting(&answer.body) == Some(expected) {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{host} never reached {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn the_example_frontend_renders_a_configuration_haproxy_accepts() {
    use dockscale::lb::haproxy::certs::Frontends;
    use dockscale::lb::haproxy::config::{BackendConfig, ManagedConfig};
    dockscale_e2e::haproxy::require_haproxy();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/frontend");
    let loaded = dockscale::spec::manifest::load_all(&[dir], dockscale::spec::Runtime::Docker)
        .expect("the example validates");
    let backends: Vec<BackendConfig> = loaded
        .services
        .iter()
        .filter_map(|l| BackendConfig::of(&l.service))
        .collect();
    let names = backends
        .iter()
        .map(|b| (b.service.clone(), b.backend.clone()))
        .collect();
    let frontends: Vec<_> = loaded.frontends.into_iter().map(|l| l.frontend).collect();
    let state = tempfile::tempdir().expect("state dir");
    let status = dockscale::serve::status::StatusHandle::default();
    let configs = Frontends::default().install(
        state.path(),
        &frontends,
        names,
        &status,
        &dockscale::serve::metrics::Metrics::new(),
    );
    let certificates = configs[0].tls.as_ref().map(|t| t.certificates.len());
    assert_eq!(
        certificates,
        Some(1),
        "the example certificate is installed"
    );
    let text = ManagedConfig::new(
        state.path(),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        "example-key",
        backends,
    )
    .with_frontends(configs)
    .render();
    assert!(text.contains("frontend frontend-public"), "{text}");
    let file = state.path().join("haproxy.cfg");
    std::fs::write(&file, &text).expect("write the configuration");
    let checked = std::process::Command::new("haproxy")
        .args(["-c", "-q", "-f"])
        .arg(&file)
        .output()
        .expect("haproxy -c");
    assert!(
        checked.status.success(),
        "haproxy -c refused the example's configuration:\n{}\n{text}",
        String::from_utf8_lossy(&checked.stderr)
    );
}
