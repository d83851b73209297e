//! The controller's clock: tokio's monotonic instant for deadlines, and a wall clock
//! for what is compared with or shown as dates (replica ages from their creation label,
//! status timestamps).
//!
//! In production the wall clock is the system's. Under `tokio::time::pause()` the
//! instant stands still or jumps, and a wall clock that kept running would disagree
//! with it; [`Clock::following_tokio`] derives the wall time from the instant instead,
//! so that a test advancing time advances both.

use std::time::SystemTime;

use tokio::time::Instant;

use crate::reconcile::Now;

#[derive(Clone, Copy, Debug, Default)]
pub enum Clock {
    /// The system's wall clock.
    #[default]
    System,
    /// Wall time = `wall` + (now - `instant`), on tokio's (pausable) clock.
    FollowingTokio { instant: Instant, wall: SystemTime },
}

impl Clock {
    /// A wall clock that moves with tokio's instant, for tests on paused time.
    pub fn following_tokio() -> Self {
        Clock::FollowingTokio {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// A wall clock that reads `wall` now and moves with tokio's instant: a test on
    /// paused time picks the date and hour it runs at (a schedule's window).
    pub fn following_tokio_from(wall: SystemTime) -> Self {
        Clock::FollowingTokio {
            instant: Instant::now(),
            wall,
        }
    }

    pub fn wall(&self) -> SystemTime {
        match self {
            Clock::System => SystemTime::now(),
            Clock::FollowingTokio { instant, wall } => {
                *wall + Instant::now().saturating_duration_since(*instant)
            }
        }
    }

    /// The moment a pass is planned for.
    pub fn now(&self) -> Now {
        Now {
            instant: Instant::now(),
            unix_ns: unix_ns(self.wall()),
        }
    }
}

/// Nanoseconds since the Unix epoch (0 before it, saturated far after it).
pub fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_clock_following_tokio_moves_with_paused_time() {
        let clock = Clock::following_tokio();
        let before = clock.wall();
        tokio::time::advance(Duration::from_secs(90)).await;
        let after = clock.wall();
        assert_eq!(
            after.duration_since(before).ok(),
            Some(Duration::from_secs(90))
        );
    }
}
