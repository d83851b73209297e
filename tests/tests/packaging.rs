//! dockscale as it is shipped: completions, man pages and the version of the binary;
//! the binary run the way systemd runs it (notify socket, SIGHUP, SIGTERM with
//! `KillMode=process`); the container image, validating and driving an external
//! HAProxy; the compose file. The Debian package itself is built, linted, installed and
//! purged by `scripts/package` (CI runs it), since installing is not a test's to do
//! side by side with others.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use dockscale_e2e::get_with_cookies;
use dockscale_e2e::haproxy::{
    external_config, hostname_of, in_rotation, servers, ExternalHaproxy, LbFixture,
};
use dockscale_e2e::process::{dockscale_output, DockscaleProcess};
use dockscale_e2e::{
    dockscale_bin, free_port, http_get, sh, sh_quiet, unique, user_command, wait_for,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_owned()
}

#[test]
fn completions_are_generated_for_bash_zsh_and_fish() {
    let bash = dockscale_output(&["completions", "bash"]);
    assert!(bash.contains("complete -F _dockscale"), "{bash}");
    let zsh = dockscale_output(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef dockscale"), "{zsh}");
    let fish = dockscale_output(&["completions", "fish"]);
    assert!(fish.contains("complete -c dockscale"), "{fish}");
    for script in [&bash, &zsh, &fish] {
        for sub in ["run", "logs", "events", "version", "completions"] {
            assert!(
                script.contains(sub),
                "{sub} missing from a completion script"
            );
        }
    }
    // The bash script parses.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dockscale.bash");
    std::fs::write(&path, &bash).expect("write");
    sh("bash", &["-n", &path.display().to_string()]);
}

#[test]
fn man_pages_are_written_for_the_command_and_each_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listed = dockscale_output(&["man", &dir.path().display().to_string()]);
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for page in [
        "dockscale.1",
        "dockscale-run.1",
        "dockscale-logs.1",
        "dockscale-events.1",
    ] {
        assert!(names.iter().any(|n| n == page), "{page} missing: {names:?}");
    }
    assert_eq!(listed.lines().count(), names.len(), "{listed}");
    let run = std::fs::read_to_string(dir.path().join("dockscale-run.1")).expect("read");
    assert!(run.contains(".TH dockscale-run 1"), "{run}");
    assert!(
        run.contains("state\\-dir"),
        "the flags are documented: {run}"
    );
    assert!(run.contains("dockscale run"), "synopsis as typed: {run}");
}

#[test]
fn the_version_names_the_git_revision_it_was_built_from() {
    let long = dockscale_output(&["--version"]);
    let json: serde_json::Value =
        serde_json::from_str(&dockscale_output(&["version", "-o", "json"])).expect("version JSON");
    let revision = json["gitRevision"].as_str().expect("a revision").to_owned();
    assert_eq!(
        long.trim(),
        format!(
            "dockscale {} (git {revision})",
            json["version"].as_str().unwrap_or("?")
        )
    );
    assert_eq!(dockscale_output(&["version"]), long);
    // Built from a git checkout (CI's clone, a developer's tree): its HEAD, unless
    // HEAD moved after this build.
    if let Some(head) = sh_quiet(
        "git",
        &[
            "-C",
            &repo().display().to_string(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    ) {
        assert_eq!(revision, head.trim());
    }
}

/// A unix datagram socket standing in for systemd's notify socket.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        NotifySocket {
            socket,
            path,
            _dir: dir,
        }
    }

    /// Every message received within `timeout` after the first one that `until`
    /// matches (or all of them, when none does).
    fn receive_until(&self, timeout: Duration, until: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = until(&message);
                got.push(message);
                if done {
                    break;
                }
            }
        }
        got
    }
}

/// `dockscale_spec_reloads_total{result="ok"}` of a running controller.
async fn reloads(process: &DockscaleProcess) -> f64 {
    let (_, metrics) = process.get("/metrics").await.expect("metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("dockscale_spec_reloads_total{result=\"ok\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn environ(pid: i32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default())
        .replace('\0', "\n")
}

/// What the unit asks of the binary: `Type=notify` (READY=1 once Docker answered and
/// the spec is loaded, STOPPING=1 on the way out, nobody else speaking for it),
/// `ExecReload` (SIGHUP re-reads the spec at once), and `KillMode=process` (a SIGTERM
/// to the main process only): dockscale exits, and the managed HAProxy and the
/// replicas keep serving. No systemd runs here (PID 1 is not systemd), so the test
/// plays its part: the notify socket and the signals.
#[tokio::test(flavor = "multi_thread")]
async fn run_as_systemd_runs_it_notifies_reloads_and_stops_leaving_haproxy_serving() {
    let fixture = LbFixture::new("e2e-unit");
    fixture.write_spec(&fixture.lb_spec(2, "hello", ""));
    let notify = NotifySocket::bind();
    let args = fixture.lb_run_args(&["--sync-period", "1h"]);
    let log = fixture.dir.path().join("dockscale.log");
    let mut process = DockscaleProcess::spawn_with_env(
        &dockscale_bin(),
        args[1..].to_vec(),
        log,
        vec![("NOTIFY_SOCKET".into(), notify.path.display().to_string())],
    );
    let ready = notify.receive_until(Duration::from_secs(30), |m| m.contains("READY=1"));
    assert!(
        ready
            .iter()
            .any(|m| m.contains("READY=1") && m.contains("STATUS=driving the Docker engine")),
        "no readiness: {ready:?}\n{}",
        process.log_digest(20, 30)
    );

    // Serving through the managed HAProxy.
    let (replicas, _) = wait_for("2 replicas UP in HAProxy", Duration::from_secs(30), || {
        let replicas: BTreeSet<SocketAddrV4> = fixture.replica_addrs().into_values().collect();
        let rotation = dockscale_e2e::block(async {
            match fixture.api().servers_state(&fixture.backend).await {
                Ok(s) => in_rotation(&s),
                Err(_) => BTreeMap::new(),
            }
        });
        let up: BTreeSet<SocketAddrV4> = rotation
            .iter()
            .filter(|(_, u)| **u)
            .map(|(a, _)| *a)
            .collect();
        if replicas.len() == 2 && up == replicas {
            Ok(replicas)
        } else {
            Err((replicas, rotation))
        }
    })
    .await;
    let master = fixture.master_pid().expect("HAProxy's pid");
    assert!(
        !environ(master).contains("NOTIFY_SOCKET="),
        "HAProxy was given the notify socket"
    );

    // SIGHUP: the spec is read again now, not at the (hour-long) resync.
    let before = reloads(&process).await;
    let pid = process.pid().expect("running");
    kill(Pid::from_raw(pid), Signal::SIGHUP).expect("SIGHUP");
    let (_, took) = wait_for("the reload", Duration::from_secs(5), || {
        let now = dockscale_e2e::block(reloads(&process));
        if now > before {
            Ok(())
        } else {
            Err(now)
        }
    })
    .await;
    println!("SIGHUP re-read the spec in {took:?}");
    assert!(process.exited().is_none(), "SIGHUP ended dockscale");

    // SIGTERM, to the main process only.
    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM");
    let stopping = notify.receive_until(Duration::from_secs(15), |m| m.contains("STOPPING=1"));
    assert!(
        stopping.iter().any(|m| m.contains("STOPPING=1")),
        "{stopping:?}"
    );
    let (status, _) = wait_for("dockscale to exit", Duration::from_secs(15), || {
        process.exited().ok_or("running")
    })
    .await;
    assert!(status.success(), "{status}: {}", process.log_digest(20, 20));
    let everything = [ready, stopping].concat();
    assert!(
        everything.iter().all(|m| !m.contains("MAINPID")),
        "someone else spoke for the unit: {everything:?}"
    );

    // What stop leaves: HAProxy (same master) and the replicas, serving.
    assert_eq!(fixture.master_pid(), Some(master));
    assert!(
        Path::new(&format!("/proc/{master}")).exists(),
        "HAProxy ended with dockscale"
    );
    let still: BTreeSet<SocketAddrV4> = fixture.replica_addrs().into_values().collect();
    assert_eq!(still, replicas, "the replicas changed");
    let mut hosts = BTreeSet::new();
    for _ in 0..10 {
        let (code, _, body) = get_with_cookies(fixture.bind, "/", &BTreeMap::new())
            .await
            .expect("a request through HAProxy after dockscale stopped");
        assert_eq!(code, 200, "{body}");
        hosts.insert(hostname_of(&body).expect("hostname"));
    }
    assert_eq!(hosts.len(), 2, "both replicas serve: {hosts:?}");
}

/// An image tag, removed on drop.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = sh_quiet("docker", &["rmi", "-f", &self.0]);
    }
}

/// A container, removed (`docker rm -f`) on drop.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = sh_quiet("docker", &["rm", "-f", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_validates_and_drives_an_external_haproxy_from_a_container() {
    let image = Image(format!("dockscale:{}", unique("e2e")));
    let build = user_command(repo().join("packaging/build-image.sh"))
        .arg(&image.0)
        .output()
        .expect("run packaging/build-image.sh");
    assert!(
        build.status.success(),
        "the image did not build: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    println!("{}", String::from_utf8_lossy(&build.stdout));

    let fixture = LbFixture::new("e2e-image");
    fixture.write_spec(&fixture.lb_spec(2, "hello", ""));
    let specs = fixture.dir.path().display().to_string();
    let validated = sh(
        "docker",
        &[
            "run",
            "--rm",
            "-v",
            &format!("{specs}:/etc/dockscale:ro"),
            &image.0,
            "validate",
            "/etc/dockscale",
        ],
    );
    assert_eq!(validated.trim(), "1 service(s) valid");

    let haproxy = ExternalHaproxy::start(&external_config(fixture.bind, &fixture.backend)).await;
    let haproxy_dir = haproxy.dir.path().display().to_string();
    let listen = format!("127.0.0.1:{}", free_port());
    let name = unique("e2e-dockscale");
    let container = Container(name.clone());
    sh(
        "docker",
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "host",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-v",
            &format!("{specs}:/etc/dockscale:ro"),
            "-v",
            &format!("{haproxy_dir}:{haproxy_dir}"),
            &image.0,
            "run",
            "/etc/dockscale",
            "--state-dir",
            "/var/lib/dockscale",
            "--lock-dir",
            "/run/dockscale",
            "--haproxy-socket",
            &format!("{haproxy_dir}/admin.sock"),
            "--listen",
            &listen,
        ],
    );
    let addr = listen.parse().expect("address");
    let logs = || sh_quiet("docker", &["logs", "--tail", "30", &name]).unwrap_or_default();
    wait_for(
        "the container's dockscale ready",
        Duration::from_secs(30),
        || {
            let (code, body) = dockscale_e2e::block(async {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(_) => http_get(addr, "/readyz").await,
                    Err(e) => (0, e.to_string()),
                }
            });
            if code == 200 {
                Ok(())
            } else {
                Err(format!("{code} {body}"))
            }
        },
    )
    .await;

    let api = haproxy.api();
    let start = Instant::now();
    loop {
        let replicas: BTreeSet<SocketAddrV4> = fixture.replica_addrs().into_values().collect();
        let rotation = in_rotation(&servers(&api, &fixture.backend).await);
        let up: BTreeSet<SocketAddrV4> = rotation
            .iter()
            .filter(|(_, u)| **u)
            .map(|(a, _)| *a)
            .collect();
        if replicas.len() == 2 && up == replicas {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "rotation {rotation:?}, replicas {replicas:?}; dockscale said:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _, body) = get_with_cookies(fixture.bind, "/", &BTreeMap::new())
        .await
        .expect("a request through the external HAProxy");
    assert_eq!(code, 200, "{body}");
    let (_, version) = http_get(addr, "/api/v1/version").await;
    assert!(version.contains("gitRevision"), "{version}");

    // `docker stop`: SIGTERM to dockscale as PID 1; it exits cleanly, the replicas stay.
    sh("docker", &["stop", "-t", "15", &name]);
    let exit = sh("docker", &["inspect", "-f", "{{.State.ExitCode}}", &name]);
    assert_eq!(exit.trim(), "0", "{}", logs());
    assert_eq!(
        fixture.running().len(),
        2,
        "the replicas outlive the controller"
    );
    drop(container);
    drop(haproxy);
}

#[test]
fn the_compose_file_is_valid() {
    let file = repo().join("packaging/compose.yaml");
    let config = sh(
        "docker-compose",
        &["-f", &file.display().to_string(), "config"],
    );
    assert!(config.contains("network_mode: host"), "{config}");
    assert!(config.contains("/var/run/docker.sock"), "{config}");
}
