//! The template's volumes and options (`mounts`, `readOnlyRootFilesystem`, `envFile`,
//! ...) on a real Docker engine, looked at from inside the replica with the demo
//! image's `dockscale-webapp fs` (it has no shell), and a bind source that does not
//! exist reported and retried with back-off.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use dockscale_e2e::{sh, try_sh, wait_for, Fixture, RunningController, ShError};

/// The fixture's pool spec with `options` added to its template.
fn spec_with(fixture: &Fixture, options: &str) -> String {
    fixture.pool_spec(1).replace(
        "    stopGracePeriod: 5s\n",
        &format!("    stopGracePeriod: 5s\n{options}"),
    )
}

/// `dockscale-webapp fs <op> <path>` inside a container: its output, or its stderr.
fn fs(container: &str, op: &str, path: &str) -> Result<String, String> {
    match try_sh(
        "docker",
        &["exec", container, "/dockscale-webapp", "fs", op, path],
    ) {
        Ok(out) => Ok(out),
        Err(ShError::Failed { stderr, .. }) => Err(stderr),
        Err(e) => panic!("docker exec: {e}"),
    }
}

/// A directory the replica's unprivileged user can read, holding one file.
fn static_dir(root: &Path) -> std::path::PathBuf {
    let dir = root.join("static");
    std::fs::create_dir(&dir).expect("static dir");
    std::fs::write(dir.join("index.txt"), "hello from the host\n").expect("file");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(
        dir.join("index.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    dir
}

fn one_running(fixture: &Fixture) -> impl FnMut() -> Result<String, usize> + '_ {
    move || match fixture.running().as_slice() {
        [one] => Ok(one.name.clone()),
        other => Err(other.len()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_reads_its_read_only_bind_writes_its_sized_tmpfs_and_not_its_read_only_root() {
    let fixture = Fixture::new("e2e-opts");
    let static_dir = static_dir(fixture.dir.path());
    std::fs::write(
        fixture.dir.path().join("app.env"),
        "# from the env file\nFROM_FILE=yes\nGREETING=overridden-by-env\n",
    )
    .expect("env file");
    let spec = spec_with(
        &fixture,
        &format!(
            "    mounts:
      - {{type: bind, source: {}, target: /www, readOnly: true}}
      - {{type: tmpfs, target: /scratch, size: 16Mi}}
    readOnlyRootFilesystem: true
    user: \"65534:65534\"
    workingDir: /www
    capDrop: [ALL]
    noNewPrivileges: true
    ulimits: {{nofile: {{soft: 1024, hard: 2048}}}}
    logging: {{driver: json-file, options: {{max-size: 1m}}}}
    extraHosts: {{db.internal: 192.0.2.10}}
    envFile: app.env
    stopSignal: SIGINT
",
            static_dir.display()
        ),
    );
    fixture.write_spec(&spec);
    let controller = RunningController::start(&fixture.run_args(&[]));
    let (replica, took) = wait_for(
        "1 replica running",
        Duration::from_secs(30),
        one_running(&fixture),
    )
    .await;
    println!("the replica with mounts ran after {took:?}");

    assert_eq!(
        fs(&replica, "read", "/www/index.txt").as_deref(),
        Ok("hello from the host\n")
    );
    let refused = fs(&replica, "write", "/www/new.txt").expect_err("a read-only bind");
    assert!(refused.contains("Read-only file system"), "{refused}");
    assert!(!static_dir.join("new.txt").exists());

    let wrote = fs(&replica, "write", "/scratch/new.txt").expect("the tmpfs is writable");
    assert!(wrote.starts_with("wrote "), "{wrote}");
    let stat = fs(&replica, "statfs", "/scratch").expect("statfs");
    assert!(stat.contains("size: 16777216\n"), "a 16Mi tmpfs: {stat}");

    let root = fs(&replica, "write", "/new.txt").expect_err("a read-only root");
    assert!(root.contains("Read-only file system"), "{root}");

    let format = "{{.Config.User}} {{.Config.WorkingDir}} {{.Config.StopSignal}} \
                  {{json .HostConfig.CapDrop}} {{json .HostConfig.SecurityOpt}} \
                  {{json .HostConfig.ExtraHosts}} {{json .HostConfig.Ulimits}} \
                  {{.HostConfig.LogConfig.Type}} {{json .HostConfig.LogConfig.Config}} \
                  {{json .Config.Env}}";
    let inspected = sh("docker", &["inspect", "--format", format, &replica]);
    for expected in [
        "65534:65534 /www SIGINT ",
        "[\"ALL\"]",
        "[\"no-new-privileges\"]",
        "[\"db.internal:192.0.2.10\"]",
        "{\"Name\":\"nofile\",\"Hard\":2048,\"Soft\":1024}",
        // The engine adds its own defaults (`max-file`) beside ours.
        "json-file {",
        "\"max-size\":\"1m\"",
        "\"FROM_FILE=yes\"",
        "\"GREETING=hello\"",
    ] {
        assert!(inspected.contains(expected), "{expected} in {inspected}");
    }
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_bind_source_is_a_replica_failure_retried_with_back_off_until_it_exists() {
    let fixture = Fixture::new("e2e-nobind");
    let missing = fixture.dir.path().join("not-yet");
    let spec = spec_with(
        &fixture,
        &format!(
            "    mounts: [{{type: bind, source: {}, target: /www, readOnly: true}}]\n",
            missing.display()
        ),
    );
    fixture.write_spec(&spec);
    let controller = RunningController::start(&fixture.run_args(&[]));
    controller.wait_listening().await;
    let path = missing.display().to_string();

    let started = Instant::now();
    let failure = loop {
        // 404 until the first pass registered the service.
        let (code, body) = controller
            .get(&format!("/api/v1/services/{}", fixture.service))
            .await;
        let status: serde_json::Value = match code {
            200 => serde_json::from_str(&body).expect("status JSON"),
            _ => serde_json::Value::Null,
        };
        let failure = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "ReplicaFailure" && c["status"] == true)
            .cloned();
        if let Some(failure) = failure {
            break failure;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no ReplicaFailure: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(failure["reason"], "BindSourceNotFound", "{failure:#}");
    let message = failure["message"].as_str().unwrap_or_default();
    assert!(message.contains(&path), "{message}");

    // Watched for 8 s: the attempts back off (1 s, 2 s, 4 s, ...), not a hot loop.
    let first = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let status = controller.service_status(&fixture.service).await;
    let attempts: u64 = status["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reason"] == "BindSourceNotFound")
        .map(|e| e["count"].as_u64().unwrap_or(1))
        .sum();
    println!(
        "{attempts} create attempts in the {:?} after the first failure",
        first.elapsed()
    );
    assert!(
        (2..=6).contains(&attempts),
        "{attempts} attempts: {status:#}"
    );
    let events = status["events"].to_string();
    assert!(events.contains("retrying in"), "{events}");
    assert!(fixture.containers().is_empty(), "a failed create left one");

    // Once the directory exists, the next attempt creates the replica.
    static_dir(fixture.dir.path());
    std::fs::rename(fixture.dir.path().join("static"), &missing).expect("rename");
    let (_, took) = wait_for(
        "the replica once its bind source exists",
        Duration::from_secs(40),
        one_running(&fixture),
    )
    .await;
    println!("created {took:?} after its bind source appeared");
    controller.stop().await;
}
