//! Whether a service's image is ready for its creates, and when to pull it: the pull
//! policy (`template.imagePullPolicy`) as a pure decision over what the controller
//! remembers of its pulls ([`PullState`]) and the time it is given.
//!
//! Pulls themselves run in the executor as background tasks; this module only says
//! when one is due, when the creates wait for one, and how long a failed pull backs
//! off (1 s doubling to 5 min, like kubelet's `ImagePullBackOff`). It reads no clock.

use std::time::Duration;

use tokio::time::Instant;

use crate::spec::ImagePullPolicy;

/// The first back-off after a failed pull.
pub const PULL_BACKOFF_START: Duration = Duration::from_secs(1);
/// The longest back-off between two pulls of an image that fails.
pub const PULL_BACKOFF_CAP: Duration = Duration::from_secs(300);

/// What the controller remembers of one service's pulls. Reset by a template change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PullState {
    /// `Always`: the tag is to be resolved in its registry (at a spec load or reload).
    pub resolve_wanted: bool,
    /// The image ID the last successful pull gave.
    pub resolved: Option<String>,
    /// A pull in flight, since then.
    pub in_flight: Option<Instant>,
    /// Failed pulls in a row.
    pub failures: u32,
    /// After a failure: no pull before then.
    pub retry_at: Option<Instant>,
    /// The last failure, as the registry (through Docker) put it.
    pub last_error: Option<String>,
}

impl PullState {
    /// The state of a service whose template was just loaded: `Always` resolves first.
    pub fn loaded(policy: ImagePullPolicy) -> Self {
        PullState {
            resolve_wanted: policy == ImagePullPolicy::Always,
            ..PullState::default()
        }
    }

    /// A pull was started.
    pub fn started(&mut self, now: Instant) {
        self.in_flight = Some(now);
    }

    /// A pull gave `image_id`: the back-off is reset.
    pub fn succeeded(&mut self, image_id: String) {
        *self = PullState {
            resolved: Some(image_id),
            ..PullState::default()
        };
    }

    /// A pull failed: the next one waits its back-off, which it returns.
    pub fn failed(&mut self, message: String, now: Instant) -> Duration {
        self.in_flight = None;
        self.failures += 1;
        let delay = pull_backoff(self.failures);
        self.retry_at = Some(now + delay);
        self.last_error = Some(message);
        delay
    }
}

/// 1 s doubling to 5 min: the wait after the `failures`th failed pull in a row.
pub fn pull_backoff(failures: u32) -> Duration {
    PULL_BACKOFF_START
        .checked_mul(1 << failures.saturating_sub(1).min(16))
        .unwrap_or(PULL_BACKOFF_CAP)
        .min(PULL_BACKOFF_CAP)
}

/// What the image means for this pass.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageStep {
    /// Creates may go ahead.
    Ready,
    /// `Never`, and the image is not there: nothing is created.
    Missing,
    /// Start a pull now (creates wait for it).
    Pull,
    /// A pull is in flight: creates wait for its completion, which wakes the pass.
    Pulling,
    /// The last pull failed: creates wait, and the next pull is due at `until`.
    BackOff { until: Instant, message: String },
}

impl ImageStep {
    /// Whether creates wait for the image.
    pub fn holds_creates(&self) -> bool {
        !matches!(self, ImageStep::Ready)
    }
}

/// The image's step for a pass that wants `creates` new replicas, with the image
/// `present` locally (as observed when creates may be needed).
pub fn step(
    policy: ImagePullPolicy,
    present: bool,
    creates: u32,
    state: &PullState,
    now: Instant,
) -> ImageStep {
    let resolving = policy == ImagePullPolicy::Always && state.resolve_wanted;
    if !resolving && (creates == 0 || present) {
        return ImageStep::Ready;
    }
    if policy == ImagePullPolicy::Never {
        return ImageStep::Missing;
    }
    if state.in_flight.is_some() {
        return ImageStep::Pulling;
    }
    match state.retry_at {
        Some(until) if until > now => ImageStep::BackOff {
            until,
            message: state.last_error.clone().unwrap_or_default(),
        },
        _ => ImageStep::Pull,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ImagePullPolicy::{Always, IfNotPresent, Never};

    fn now() -> Instant {
        Instant::now()
    }

    #[test]
    fn a_present_image_or_no_create_needs_no_pull() {
        let state = PullState::default();
        assert_eq!(step(IfNotPresent, true, 3, &state, now()), ImageStep::Ready);
        assert_eq!(
            step(IfNotPresent, false, 0, &state, now()),
            ImageStep::Ready
        );
        assert_eq!(step(Never, true, 3, &state, now()), ImageStep::Ready);
    }

    #[test]
    fn a_missing_image_is_pulled_unless_the_policy_is_never() {
        let state = PullState::default();
        assert_eq!(step(IfNotPresent, false, 1, &state, now()), ImageStep::Pull);
        assert_eq!(step(Always, false, 1, &state, now()), ImageStep::Pull);
        assert_eq!(step(Never, false, 1, &state, now()), ImageStep::Missing);
    }

    #[test]
    fn creates_wait_for_the_pull_in_flight_and_no_second_one_starts() {
        let t = now();
        let mut state = PullState::default();
        state.started(t);
        let s = step(IfNotPresent, false, 2, &state, t + Duration::from_secs(30));
        assert_eq!(s, ImageStep::Pulling);
        assert!(s.holds_creates());
    }

    #[test]
    fn a_failed_pull_backs_off_from_one_second_doubling_to_five_minutes() {
        let delays: Vec<u64> = (1..=12).map(|n| pull_backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(pull_backoff(u32::MAX), PULL_BACKOFF_CAP);
    }

    #[test]
    fn a_failed_pull_is_tried_again_only_after_its_back_off() {
        let t = now();
        let mut state = PullState::default();
        state.started(t);
        let delay = state.failed("unauthorized: authentication required".into(), t);
        assert_eq!(delay, Duration::from_secs(1));
        let held = step(
            IfNotPresent,
            false,
            1,
            &state,
            t + Duration::from_millis(500),
        );
        assert_eq!(
            held,
            ImageStep::BackOff {
                until: t + Duration::from_secs(1),
                message: "unauthorized: authentication required".into()
            }
        );
        let due = step(IfNotPresent, false, 1, &state, t + Duration::from_secs(1));
        assert_eq!(due, ImageStep::Pull);
        state.started(t + Duration::from_secs(1));
        let delay = state.failed("again".into(), t + Duration::from_secs(1));
        assert_eq!(delay, Duration::from_secs(2), "doubled");
    }

    #[test]
    fn a_successful_pull_resets_the_back_off() {
        let t = now();
        let mut state = PullState::default();
        state.failed("x".into(), t);
        state.failed("x".into(), t);
        state.succeeded("sha256:abc".into());
        assert_eq!(state.failures, 0);
        assert_eq!(state.retry_at, None);
        assert_eq!(state.resolved.as_deref(), Some("sha256:abc"));
        state.failed("x".into(), t);
        assert_eq!(state.retry_at, Some(t + PULL_BACKOFF_START));
    }

    #[test]
    fn always_resolves_its_tag_at_load_even_with_every_replica_running() {
        let state = PullState::loaded(Always);
        assert_eq!(step(Always, true, 0, &state, now()), ImageStep::Pull);
        let mut resolved = state.clone();
        resolved.succeeded("sha256:abc".into());
        assert_eq!(step(Always, true, 0, &resolved, now()), ImageStep::Ready);
        assert!(!PullState::loaded(IfNotPresent).resolve_wanted);
    }
}
