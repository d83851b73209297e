//! A real image registry for the pull tests: Debian's `docker-registry` (the CNCF
//! distribution registry) started on 127.0.0.1:<free port> with its own config and
//! storage in a temporary directory, optionally behind htpasswd authentication.
//!
//! Docker pulls from and pushes to a 127.0.0.0/8 registry over plain HTTP without any
//! setting, so nothing here touches the engine's configuration; and every name the
//! tests pull is on this registry: no pull ever leaves the machine. Images are tagged
//! and pushed with the Docker API. Dropping the registry (also on panic) ends its
//! process by pid and removes every local tag it made or that a pull of it left.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, CreateContainerOptionsBuilder, PushImageOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;

use crate::{free_port, sh, unique, wait_until, WEBAPP_IMAGE};

/// Debian's package installs the registry here (`scripts/prepare` installs it).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A user of an authenticating registry.
#[derive(Clone, Debug)]
pub struct Login {
    pub user: String,
    pub password: String,
}

/// A running registry, ended on drop.
pub struct Registry {
    /// `127.0.0.1:<port>`: the registry part of the image names.
    pub host: String,
    pub login: Option<Login>,
    dir: tempfile::TempDir,
    process: Child,
    /// Local references this registry's images were tagged or pulled under.
    refs: Mutex<Vec<String>>,
    docker: Docker,
}

impl Registry {
    /// A registry anyone may pull from.
    pub async fn start() -> Registry {
        Registry::launch(None).await
    }

    /// A registry that wants `user`'s password (htpasswd, bcrypt).
    pub async fn with_login(user: &str, password: &str) -> Registry {
        Registry::launch(Some(Login {
            user: user.to_owned(),
            password: password.to_owned(),
        }))
        .await
    }

    async fn launch(login: Option<Login>) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: run scripts/prepare (apt-get install docker-registry)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(&config, registry_config(dir.path(), &host, login.as_ref()))
            .expect("write the registry config");
        if let Some(login) = &login {
            let line = sh("htpasswd", &["-Bbn", &login.user, &login.password]);
            std::fs::write(dir.path().join("htpasswd"), line.trim_end()).expect("write htpasswd");
        }
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let process = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {REGISTRY_BIN}: {e}"));
        let registry = Registry {
            host,
            login,
            dir,
            process,
            refs: Mutex::new(Vec::new()),
            docker: Docker::connect_with_defaults().expect("docker client"),
        };
        registry.wait_ready().await;
        registry
    }

    async fn wait_ready(&self) {
        let addr: SocketAddr = self.host.parse().expect("registry address");
        let ready = wait_until(
            "the registry to answer /v2/",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || async move {
                match crate::try_http_get(addr, "/v2/").await {
                    Ok((200 | 401, _)) => Ok(()),
                    Ok((code, body)) => Err(format!("{code} {body}")),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await;
        if let Err(e) = ready {
            panic!("{e}; its log:\n{}", self.log());
        }
    }

    /// The registry's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `127.0.0.1:<port>/<repo>`, with a unique repository name.
    pub fn repository(&self, prefix: &str) -> String {
        format!("{}/{}", self.host, unique(prefix))
    }

    fn credentials(&self) -> Option<DockerCredentials> {
        self.login.as_ref().map(|l| DockerCredentials {
            username: Some(l.user.clone()),
            password: Some(l.password.clone()),
            serveraddress: Some(self.host.clone()),
            ..Default::default()
        })
    }

    /// Pushes the local image `local` as `reference` (`<host>/<repo>:<tag>`), then
    /// removes the local tag, so that whoever wants it must pull it.
    pub async fn push(&self, local: &str, reference: &str) {
        let (repo, tag) = reference.rsplit_once(':').expect("a tagged reference");
        self.remember(reference);
        let options = TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        self.docker
            .tag_image(local, Some(options))
            .await
            .unwrap_or_else(|e| panic!("tag {local} as {reference}: {e}"));
        let options = PushImageOptionsBuilder::default().tag(tag).build();
        let mut pushing = self
            .docker
            .push_image(repo, Some(options), self.credentials());
        while let Some(item) = pushing.next().await {
            if let Err(e) = item {
                panic!("push {reference}: {e}; the registry's log:\n{}", self.log());
            }
        }
        self.untag(reference).await;
    }

    /// A new image (a new ID) with the demo image's layers: the demo image with a
    /// label, committed from a container that never runs. Tagged `reference`.
    pub async fn variant(&self, reference: &str) {
        self.remember(reference);
        let name = unique("e2e-variant");
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let body = ContainerCreateBody {
            image: Some(WEBAPP_IMAGE.to_owned()),
            ..Default::default()
        };
        self.docker
            .create_container(Some(options), body)
            .await
            .unwrap_or_else(|e| panic!("create {name} from {WEBAPP_IMAGE}: {e}"));
        let (repo, tag) = reference.rsplit_once(':').expect("a tagged reference");
        let change = format!("LABEL dockscale-e2e.variant={name}");
        let options = CommitContainerOptionsBuilder::default()
            .container(&name)
            .repo(repo)
            .tag(tag)
            .changes(&change)
            .build();
        let committed = self
            .docker
            .commit_container(options, bollard::models::ContainerConfig::default())
            .await;
        let remove = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = self.docker.remove_container(&name, Some(remove)).await;
        committed.unwrap_or_else(|e| panic!("commit {name} as {reference}: {e}"));
    }

    /// The local image ID `reference` names, if it is present.
    pub async fn local_id(&self, reference: &str) -> Option<String> {
        self.docker.inspect_image(reference).await.ok()?.id
    }

    /// Removes a local tag (the image stays while another tag or a container has it).
    pub async fn untag(&self, reference: &str) {
        let options = RemoveImageOptionsBuilder::default().noprune(false).build();
        let _ = self
            .docker
            .remove_image(reference, Some(options), None)
            .await;
    }

    /// A Docker client configuration directory whose `config.json` logs in to this
    /// registry with `password` (the registry's own, or a wrong one).
    pub fn docker_config(&self, user: &str, password: &str) -> PathBuf {
        let dir = self
            .dir
            .path()
            .join(format!("docker-config-{}", unique("c")));
        std::fs::create_dir_all(&dir).expect("docker config dir");
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let config = serde_json::json!({"auths": {self.host.clone(): {"auth": auth}}});
        std::fs::write(dir.join("config.json"), config.to_string()).expect("config.json");
        dir
    }

    fn remember(&self, reference: &str) {
        self.refs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(reference.to_owned());
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Our own child, by pid.
        let _ = self.process.kill();
        let _ = self.process.wait();
        let refs = std::mem::take(&mut *self.refs.lock().unwrap_or_else(|e| e.into_inner()));
        for reference in refs {
            let _ = crate::sh_quiet("docker", &["rmi", &reference]);
        }
        // A pull or push also leaves `<host>/<repo>@sha256:...` on the image: an image
        // whose tag moved keeps it after its tag went.
        let listed = crate::sh_quiet(
            "docker",
            &[
                "images",
                "--digests",
                "--format",
                "{{.Repository}}@{{.Digest}}",
            ],
        )
        .unwrap_or_default();
        let ours = format!("{}/", self.host);
        for reference in listed.lines().filter(|l| l.starts_with(&ours)) {
            let _ = crate::sh_quiet("docker", &["rmi", reference]);
        }
    }
}

/// The registry's configuration: loopback only, storage in `dir`, htpasswd with a
/// login.
fn registry_config(dir: &Path, host: &str, login: Option<&Login>) -> String {
    let storage = dir.join("storage");
    let mut config = format!(
        "version: 0.1\n\
         log:\n  level: info\n  accesslog: {{disabled: true}}\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete: {{enabled: true}}\n\
         http:\n  addr: {host}\n  debug: {{addr: \"\"}}\n",
        storage.display()
    );
    if login.is_some() {
        config.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: dockscale-e2e\n    path: {}\n",
            dir.join("htpasswd").display()
        ));
    }
    config
}
