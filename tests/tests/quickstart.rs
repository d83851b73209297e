//! The README's quick start, exactly as a new user runs it: `scripts/demo` from the
//! repository root with its default flags (relative `--state-dir .dockscale`,
//! `manifests/`, the managed HAProxy on 127.0.0.1:8080, the status API on
//! 127.0.0.1:9180). The demo must answer from its 3 replicas.
//!
//! Regression: with the relative default state dir, the generated `haproxy.cfg` held
//! `stats socket .dockscale/haproxy.sock`, which HAProxy rejects; the demo never served
//! and every test passed, since each gave an absolute temporary state dir.
//!
//! It uses the demo's own fixed names and ports, so it fails at once, saying why, when
//! a demo already runs on this machine; it ends what it started (the demo's dockscale
//! and HAProxy by pid, the demo's containers and network) and removes the state
//! directory if it made it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use dockscale_e2e::haproxy::{end_haproxy, hostname_of, require_haproxy};
use dockscale_e2e::{
    get_with_cookies, http_get, remove_by_label, require_docker, sh, sh_quiet, user_command,
};

/// The demo's services (`manifests/*.yaml`) and network.
const SERVICES: &[&str] = &["webapp", "workers"];
const NETWORK: &str = "dockscale";
/// The demo's frontend, the controller's HTTP server and HAProxy's exporter.
const PORTS: &[u16] = &[8080, 9180, 9181];
/// `scripts/demo` builds dockscale in release first: minutes on a fresh clone.
const START_TIMEOUT: Duration = Duration::from_secs(15 * 60);

struct Demo {
    root: PathBuf,
    child: Child,
    state_dir: PathBuf,
    made_state_dir: bool,
    log: PathBuf,
}

impl Demo {
    fn start(root: &Path) -> Self {
        for port in PORTS {
            assert!(
                std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok(),
                "127.0.0.1:{port} is taken: the quick start needs ports 8080, 9180 and 9181 \
                 (is a demo running? stop it first)"
            );
        }
        for service in SERVICES {
            let label = format!("label=dockscale.service={service}");
            let found = sh("docker", &["ps", "-aq", "--filter", &label]);
            assert!(
                found.trim().is_empty(),
                "containers of the demo's service {service} exist already: stop the demo first"
            );
        }
        let state_dir = root.join(".dockscale");
        let made_state_dir = !state_dir.exists();
        let log =
            std::env::temp_dir().join(format!("dockscale-quickstart-{}.log", std::process::id()));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        // Exactly the README's command, from the repository root.
        let child = user_command("scripts/demo")
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("run scripts/demo");
        Demo {
            root: root.to_owned(),
            child,
            state_dir,
            made_state_dir,
            log,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // `scripts/demo` execs dockscale: the child's pid is dockscale's once it runs.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // dockscale leaves HAProxy and the replicas running on purpose: end them here.
        end_haproxy(&self.state_dir.join("haproxy.pid"), &self.state_dir);
        for service in SERVICES {
            let _ = remove_by_label(&format!("dockscale.service={service}"));
        }
        let _ = sh_quiet("docker", &["network", "rm", NETWORK]);
        if self.made_state_dir {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
        let _ = std::fs::remove_file(&self.log);
        let _ = &self.root;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_quick_start_serves_the_demo_from_three_replicas() {
    require_docker();
    require_haproxy();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(|p| p.canonicalize().ok())
        .expect("the repository root");
    let mut demo = Demo::start(&root);
    let frontend: SocketAddr = ([127, 0, 0, 1], 8080).into();
    let started = Instant::now();

    // The README: `for i in 1 2 3; do curl -s 127.0.0.1:8080/ | head -1; done` shows
    // the replicas' hostnames.
    let none = Default::default();
    let hostnames = loop {
        if let Ok(Some(status)) = demo.child.try_wait() {
            panic!("scripts/demo exited with {status}:\n{}", demo.log_tail());
        }
        let mut seen = BTreeSet::new();
        for _ in 0..12 {
            if let Ok((200, _, body)) = get_with_cookies(frontend, "/", &none).await {
                if let Some(host) = hostname_of(&body) {
                    seen.insert(host);
                }
            }
        }
        if seen.len() == 3 {
            break seen;
        }
        assert!(
            started.elapsed() < START_TIMEOUT,
            "the demo did not answer from 3 replicas on {frontend} within {START_TIMEOUT:?} \
             (seen {seen:?}):\n{}",
            demo.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "quick start: serving from {hostnames:?} {:?} after scripts/demo started",
        started.elapsed()
    );
    let running = sh(
        "docker",
        &["ps", "-q", "--filter", "label=dockscale.service=webapp"],
    );
    assert_eq!(
        running.split_whitespace().count(),
        3,
        "webapp replicas: {running}"
    );

    // The README: `curl -s 127.0.0.1:9180/api/v1/services/webapp | jq .replicas`. The
    // status is written by the pass after the one that enabled the last replica: a
    // moment after it serves.
    let asked = Instant::now();
    loop {
        let (code, body) = http_get(([127, 0, 0, 1], 9180).into(), "/api/v1/services/webapp").await;
        assert_eq!(code, 200, "{body}");
        let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
        if status["replicas"]["ready"] == 3 {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "the status does not show 3 ready replicas: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The state dir was relative; everything HAProxy was given is absolute.
    let config = std::fs::read_to_string(demo.state_dir.join("haproxy.cfg")).expect("haproxy.cfg");
    let socket = demo.state_dir.join("haproxy.sock");
    assert!(
        config.contains(&format!("stats socket {} ", socket.display())),
        "{config}"
    );
}
