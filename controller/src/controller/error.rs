//! The errors of a reconcile pass, and how soon each is retried: a synchronous
//! [`error_policy`] that matches on the cause, like kube-runtime's `error_policy`.
//! One service's failure never holds another back: each service keeps its own count
//! of failures in a row.

use std::time::Duration;

use crate::lb::{LbError, LbErrorKind};
use crate::runtime::DockerError;

/// What failed in a pass.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A Docker call (the list of containers, mostly).
    #[error(transparent)]
    Runtime(#[from] DockerError),
    #[error("cannot ensure the network {network}")]
    Network {
        network: String,
        #[source]
        source: DockerError,
    },
    /// A load-balancer command or read.
    #[error(transparent)]
    LoadBalancer(#[from] LbError),
}

impl ReconcileError {
    /// The metric label (`dockscale_reconcile_errors_total{kind}`).
    pub fn label(&self) -> &'static str {
        match self {
            ReconcileError::Runtime(e) | ReconcileError::Network { source: e, .. } => e.kind(),
            ReconcileError::LoadBalancer(e) => e.reason(),
        }
    }
}

/// When to look again after `e`, the `failures`th failure in a row of this service;
/// `None`: not before something changes (the spec, the image, the next resync).
///
/// - An engine that does not answer is asked again within 2 s ([`engine_backoff`]):
///   an engine restart takes seconds, and the replicas come back only once dockscale
///   sees it answer.
/// - An HAProxy that does not answer (it is being restarted) is asked again as soon.
/// - A missing image waits for a change: nothing is created until it is there.
/// - What a person has to fix (a backend missing from an external HAProxy, a
///   configuration HAProxy rejects, a refusal) backs off from 500 ms to a minute.
pub fn error_policy(e: &ReconcileError, failures: u32) -> Option<Duration> {
    match e {
        ReconcileError::Runtime(e) | ReconcileError::Network { source: e, .. } => {
            runtime_policy(e, failures)
        }
        ReconcileError::LoadBalancer(e) if e.kind == LbErrorKind::Unreachable => {
            Some(engine_backoff(failures))
        }
        ReconcileError::LoadBalancer(_) => Some(error_backoff(failures)),
    }
}

/// [`error_policy`] for a Docker error (a failed create waits by it too).
pub fn runtime_policy(e: &DockerError, failures: u32) -> Option<Duration> {
    match e {
        DockerError::Unavailable(_) => Some(engine_backoff(failures)),
        DockerError::ImageNotFound { .. } => None,
        DockerError::NetworkNotFound { .. }
        | DockerError::BindSourceNotFound { .. }
        | DockerError::Api { .. }
        | DockerError::PullFailed { .. } => Some(error_backoff(failures)),
    }
}

/// 500 ms doubling to one minute.
pub fn error_backoff(failures: u32) -> Duration {
    Duration::from_millis(500)
        .checked_mul(1 << failures.min(16))
        .unwrap_or(Duration::MAX)
        .min(Duration::from_secs(60))
}

/// 250 ms doubling to 2 s: for a peer that is expected back within seconds (the
/// engine after a restart, its event stream, a restarting HAProxy). Each retry is one
/// cheap request.
pub fn engine_backoff(failures: u32) -> Duration {
    Duration::from_millis(250)
        .checked_mul(1 << failures.min(8))
        .unwrap_or(Duration::MAX)
        .min(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> DockerError {
        DockerError::Unavailable(bollard::errors::Error::SocketNotFoundError(
            "/nonexistent/docker.sock".into(),
        ))
    }

    #[test]
    fn each_cause_chooses_its_retry() {
        let engine = ReconcileError::Runtime(unavailable());
        assert_eq!(error_policy(&engine, 1), Some(Duration::from_millis(500)));
        assert_eq!(
            error_policy(&engine, 10),
            Some(Duration::from_secs(2)),
            "capped at 2s"
        );
        let image = ReconcileError::Runtime(DockerError::ImageNotFound {
            image: "x:1".into(),
        });
        assert_eq!(error_policy(&image, 3), None, "waits for a change");
        let haproxy = ReconcileError::LoadBalancer(LbError::new(LbErrorKind::Unreachable, "gone"));
        assert_eq!(error_policy(&haproxy, 10), Some(Duration::from_secs(2)));
        let missing =
            ReconcileError::LoadBalancer(LbError::new(LbErrorKind::BackendMissing, "no web"));
        assert_eq!(error_policy(&missing, 0), Some(Duration::from_millis(500)));
        assert_eq!(error_policy(&missing, 20), Some(Duration::from_secs(60)));
        let api = ReconcileError::Runtime(DockerError::Api {
            action: "list containers",
            status: 500,
            message: "boom".into(),
        });
        assert_eq!(error_policy(&api, 2), Some(Duration::from_secs(2)));
    }

    #[test]
    fn errors_name_their_metric_label() {
        assert_eq!(
            ReconcileError::Runtime(unavailable()).label(),
            "docker_unavailable"
        );
        let lb = ReconcileError::LoadBalancer(LbError::new(LbErrorKind::Refused, "no"));
        assert_eq!(lb.label(), "HaproxyRefused");
    }
}
