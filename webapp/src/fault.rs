//! Misbehaviour on purpose: the knobs that let dockscale's tests see a replica fail.
//!
//! This module owns the deterministic schedule of `FAIL_RATE`'s `500`s and the memory
//! ballast of `ALLOCATE_MB`. It reads no environment (see [`crate::Config`]) and does no
//! I/O; `main` acts on `EXIT_AFTER_MS`, the `/healthz` handler on `HEALTH_FAIL_FILE`.

use std::collections::TryReserveError;
use std::fmt;

/// One mebibyte, the unit of `ALLOCATE_MB`.
pub const MIB: usize = 1 << 20;

/// The share of requests answered `500`, from 0 (never, the default) to 1 (always).
///
/// The schedule is a counter, not a random draw, so that a test over N requests can
/// expect an exact figure: request `n` (counted from 0) fails when
/// `floor((n + 1) × rate) > floor(n × rate)`. Of the first N requests exactly
/// `floor(N × rate)` fail (up to floating-point rounding), and of any N consecutive
/// ones `floor` or `ceil` of `N × rate`; failures are spread evenly, the first being
/// request `ceil(1 / rate)` counted from 1 (with `0.5`: the 2nd, 4th, 6th, …).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FailRate(f64);

impl FailRate {
    /// `rate` if it is a share (a finite number from 0 to 1).
    pub fn new(rate: f64) -> Option<Self> {
        (0.0..=1.0).contains(&rate).then_some(Self(rate))
    }

    /// The share, from 0 to 1.
    pub fn get(self) -> f64 {
        self.0
    }

    /// Whether request `n` (counted from 0) is to be answered `500`.
    pub fn fails(self, n: u64) -> bool {
        // Exact for n below 2^53, far beyond what a test replica serves.
        let share_of = |count: u64| (count as f64 * self.0).floor();
        share_of(n.saturating_add(1)) > share_of(n)
    }
}

impl fmt::Display for FailRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `mib` MiB of memory, every byte written, so that the kernel charges all of it to
/// the process (and its container's memory cgroup) at once.
///
/// Memory that is only reserved costs nothing until it is touched: without the writes
/// a replica with a smaller memory limit would not be OOM-killed. Keep the result alive
/// for as long as the memory is to stay in use.
pub fn ballast(mib: usize) -> Result<Vec<u8>, TryReserveError> {
    // A size past `usize` saturates, and reserving that much fails like any excess.
    let bytes = mib.saturating_mul(MIB);
    let mut ballast = Vec::new();
    ballast.try_reserve_exact(bytes)?;
    ballast.resize(bytes, 0xA5);
    // The bytes are never read: keep the optimizer from dropping the writes.
    Ok(std::hint::black_box(ballast))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failures_among_first(rate: f64, requests: u64) -> u64 {
        let rate = FailRate::new(rate).unwrap();
        (0..requests).filter(|&n| rate.fails(n)).count() as u64
    }

    #[test]
    fn a_fail_rate_is_a_share_from_0_to_1() {
        for good in [0.0, 0.25, 1.0] {
            assert_eq!(FailRate::new(good).map(FailRate::get), Some(good));
        }
        for bad in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
            assert_eq!(FailRate::new(bad), None, "{bad}");
        }
        assert_eq!(FailRate::default().get(), 0.0);
    }

    #[test]
    fn the_first_n_requests_hold_floor_of_n_times_rate_failures() {
        for rate in [0.0, 0.01, 0.1, 0.25, 0.3, 0.5, 0.7, 0.999, 1.0] {
            for requests in [1, 7, 10, 100, 1000] {
                let expected = (requests as f64 * rate).floor() as u64;
                let got = failures_among_first(rate, requests);
                assert!(
                    got.abs_diff(expected) <= 1 && (rate != 0.0 || got == 0),
                    "rate {rate}, {requests} requests: {got} failures, expected {expected}"
                );
            }
        }
        assert_eq!(failures_among_first(0.25, 20), 5);
        assert_eq!(failures_among_first(1.0, 20), 20);
    }

    #[test]
    fn a_half_fail_rate_fails_every_second_request() {
        let rate = FailRate::new(0.5).unwrap();
        let schedule: Vec<bool> = (0..6).map(|n| rate.fails(n)).collect();
        assert_eq!(schedule, [false, true, false, true, false, true]);
    }

    #[test]
    fn failures_are_spread_evenly() {
        let rate = FailRate::new(0.1).unwrap();
        let failing: Vec<u64> = (0..40).filter(|&n| rate.fails(n)).collect();
        assert_eq!(failing, [9, 19, 29, 39]);
    }

    #[test]
    fn ballast_holds_the_mebibytes_asked_for_all_written() {
        let ballast = ballast(2).unwrap();
        assert_eq!(ballast.len(), 2 * MIB);
        assert!(ballast.iter().all(|&b| b == 0xA5));
        assert!(super::ballast(0).unwrap().is_empty());
    }

    #[test]
    fn an_impossible_ballast_is_an_error_not_an_abort() {
        assert!(ballast(usize::MAX / MIB).is_err());
    }
}
