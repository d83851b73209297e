//! Pulling an image through the Docker engine: the reference split as the docker CLI
//! splits it, the registry credentials from the Docker client configuration
//! (`DIR/config.json`: `auths`, credential helpers), and the engine's progress stream
//! read to its end with the bytes of the downloaded layers summed.
//!
//! It decides nothing (when to pull is [`crate::reconcile::image`]'s) and keeps no
//! state; a credential that cannot be read is logged and the pull goes on without one
//! (the registry's refusal is then the error the user sees).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::Docker;
use docker_credential::DockerCredential;
use futures::StreamExt;

use super::{DockerError, PulledImage};

/// The Docker Hub's key in `config.json`, for images named without a registry.
const DOCKER_HUB: &str = "https://index.docker.io/v1/";

/// An image reference in its parts: `registry/repository` and a tag or digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// The registry host (`127.0.0.1:5000`), `None` for the Docker Hub.
    pub registry: Option<String>,
    /// The name without tag or digest, registry included (`127.0.0.1:5000/webapp`).
    pub name: String,
    /// `v1`, or a digest `sha256:...`; `latest` when the reference names neither.
    pub tag: String,
}

impl Reference {
    /// Splits `image` as Docker does: the first path component is a registry when it
    /// has a `.` or a `:` or is `localhost`; a tag follows the last `:` after the last
    /// `/`; a digest follows `@`.
    pub fn parse(image: &str) -> Reference {
        let (name, tag) = match image.split_once('@') {
            Some((name, digest)) => (name, digest.to_owned()),
            None => match image.rsplit_once(':') {
                Some((name, tag)) if !tag.contains('/') => (name, tag.to_owned()),
                _ => (image, "latest".to_owned()),
            },
        };
        let registry = name.split_once('/').and_then(|(first, _)| {
            (first.contains('.') || first.contains(':') || first == "localhost")
                .then(|| first.to_owned())
        });
        Reference {
            registry,
            name: name.to_owned(),
            tag,
        }
    }

    /// The key of the registry's entry in `config.json`.
    pub fn server(&self) -> &str {
        self.registry.as_deref().unwrap_or(DOCKER_HUB)
    }
}

/// The directory of the Docker client configuration: `--docker-config DIR`, else
/// `$DOCKER_CONFIG`, else `~/.docker` (as the docker CLI looks for it).
pub fn config_dir(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("DOCKER_CONFIG").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
}

/// The credentials `DIR/config.json` holds for the image's registry, if any.
pub fn credentials(dir: Option<&Path>, reference: &Reference) -> Option<DockerCredentials> {
    let path = dir?.join("config.json");
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the Docker client configuration");
            return None;
        }
    };
    let server = reference.server();
    let found =
        docker_credential::get_credential_from_reader(std::io::BufReader::new(file), server);
    match found {
        Ok(DockerCredential::UsernamePassword(username, password)) => Some(DockerCredentials {
            username: Some(username),
            password: Some(password),
            serveraddress: Some(server.to_owned()),
            ..Default::default()
        }),
        Ok(DockerCredential::IdentityToken(token)) => Some(DockerCredentials {
            identitytoken: Some(token),
            serveraddress: Some(server.to_owned()),
            ..Default::default()
        }),
        Err(docker_credential::CredentialRetrievalError::NoCredentialConfigured) => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), server, error = %e, "cannot read the registry's credentials; pulling without");
            None
        }
    }
}

/// The layers of one pull: the largest total each reported while downloading.
#[derive(Default)]
struct Progress {
    layers: BTreeMap<String, u64>,
}

impl Progress {
    fn saw(&mut self, image: &str, info: &bollard::models::CreateImageInfo) {
        let status = info.status.as_deref().unwrap_or("");
        let id = info.id.as_deref().unwrap_or("");
        let total = info
            .progress_detail
            .as_ref()
            .and_then(|p| p.total)
            .and_then(|t| u64::try_from(t).ok());
        match (status, total) {
            ("Downloading", Some(total)) => {
                let layer = self.layers.entry(id.to_owned()).or_default();
                *layer = (*layer).max(total);
            }
            ("Downloading" | "Extracting", _) => {}
            ("Pull complete" | "Already exists", _) => {
                tracing::debug!(image, layer = id, status, "pull progress");
            }
            _ => tracing::info!(image, layer = id, status, "pull progress"),
        }
    }

    fn bytes(&self) -> u64 {
        self.layers.values().sum()
    }
}

/// Pulls `image` with `credentials`, then reads the image ID it names.
pub async fn pull(
    docker: &Docker,
    image: &str,
    credentials: Option<DockerCredentials>,
) -> Result<PulledImage, DockerError> {
    let reference = Reference::parse(image);
    let options = CreateImageOptionsBuilder::default()
        .from_image(&reference.name)
        .tag(&reference.tag)
        .build();
    let failed = |message: String| DockerError::PullFailed {
        image: image.to_owned(),
        message,
    };
    let mut stream = docker.create_image(Some(options), None, credentials);
    let mut progress = Progress::default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => progress.saw(image, &info),
            Err(BollardError::DockerStreamError { error }) => return Err(failed(error)),
            Err(BollardError::DockerResponseServerError { message, .. }) => {
                return Err(failed(message))
            }
            Err(e) => return Err(DockerError::Unavailable(e)),
        }
    }
    let inspected = docker
        .inspect_image(image)
        .await
        .map_err(|e| DockerError::from_bollard("inspect image", e))?;
    Ok(PulledImage {
        id: inspected.id.unwrap_or_default(),
        downloaded_bytes: progress.bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(registry: Option<&str>, name: &str, tag: &str) -> Reference {
        Reference {
            registry: registry.map(str::to_owned),
            name: name.to_owned(),
            tag: tag.to_owned(),
        }
    }

    #[test]
    fn references_split_as_the_docker_cli_splits_them() {
        assert_eq!(
            Reference::parse("127.0.0.1:5000/webapp:v2"),
            reference(Some("127.0.0.1:5000"), "127.0.0.1:5000/webapp", "v2")
        );
        assert_eq!(
            Reference::parse("127.0.0.1:5000/team/webapp"),
            reference(
                Some("127.0.0.1:5000"),
                "127.0.0.1:5000/team/webapp",
                "latest"
            )
        );
        assert_eq!(
            Reference::parse("dockscale-webapp:latest"),
            reference(None, "dockscale-webapp", "latest")
        );
        assert_eq!(
            Reference::parse("localhost/w@sha256:abc"),
            reference(Some("localhost"), "localhost/w", "sha256:abc")
        );
        assert_eq!(Reference::parse("library/redis").server(), DOCKER_HUB);
    }

    #[test]
    fn credentials_come_from_the_auths_of_config_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        // "user:secret"
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths": {"127.0.0.1:5000": {"auth": "dXNlcjpzZWNyZXQ="}}}"#,
        )
        .expect("write");
        let ours = Reference::parse("127.0.0.1:5000/webapp:v1");
        let found = credentials(Some(dir.path()), &ours).expect("credentials");
        assert_eq!(found.username.as_deref(), Some("user"));
        assert_eq!(found.password.as_deref(), Some("secret"));
        assert_eq!(found.serveraddress.as_deref(), Some("127.0.0.1:5000"));
        let other = Reference::parse("127.0.0.1:5001/webapp:v1");
        assert!(credentials(Some(dir.path()), &other).is_none());
        let nowhere = dir.path().join("absent");
        assert!(credentials(Some(&nowhere), &ours).is_none());
    }

    #[test]
    fn the_flag_wins_over_the_environment_for_the_config_dir() {
        let flag = Path::new("/etc/dockscale/docker");
        assert_eq!(config_dir(Some(flag)).as_deref(), Some(flag));
    }
}
