//! One controller per swarm: a lease kept in the swarm itself.
//!
//! The lease is a Swarm config whose labels name its holder; every write names the
//! version it read, so of two controllers writing at once one wins and the other is
//! told its write is out of sequence. As in Kubernetes' leader election, expiry is never
//! judged from the holder's clock: a candidate takes over once the record's version has
//! not moved for a whole lease duration *on its own clock*, and the holder stops acting
//! when it could not renew for two thirds of it, so it has stopped before anyone takes
//! over. [`Lease`] decides (pure, with the clock passed in); the loop in `app` writes.

use std::time::Duration;

use tokio::time::Instant;

use crate::runtime::swarm::LeaseRecord;

/// What to do with the lease now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No record exists: create it, held by us.
    Create,
    /// We hold it: write it again at this version.
    Renew,
    /// Its holder let it lapse: write it as ours at this version.
    TakeOver,
    /// Another holds it and renews it: wait.
    Wait { holder: String },
}

/// The lease as one controller sees it.
#[derive(Debug)]
pub struct Lease {
    me: String,
    duration: Duration,
    /// The version last read and when it was first seen at that version.
    seen: Option<(u64, Instant)>,
    /// When our last write succeeded, while we hold it.
    renewed: Option<Instant>,
}

impl Lease {
    pub fn new(me: &str, duration: Duration) -> Self {
        Lease {
            me: me.to_owned(),
            duration,
            seen: None,
            renewed: None,
        }
    }

    /// Who this controller is in the record.
    pub fn holder(&self) -> &str {
        &self.me
    }

    /// How often the holder renews, and a candidate reads.
    pub fn period(&self) -> Duration {
        self.duration / 5
    }

    /// What to do after reading `record` at `now`.
    pub fn decide(&mut self, record: Option<&LeaseRecord>, now: Instant) -> Step {
        let Some(record) = record else {
            self.seen = None;
            return Step::Create;
        };
        match self.seen {
            Some((version, _)) if version == record.version => {}
            _ => self.seen = Some((record.version, now)),
        }
        if record.holder == self.me && self.renewed.is_some() {
            return Step::Renew;
        }
        let since = self.seen.map_or(now, |(_, at)| at);
        if record.holder.is_empty() || now.duration_since(since) >= self.duration {
            Step::TakeOver
        } else {
            Step::Wait {
                holder: record.holder.clone(),
            }
        }
    }

    /// Our write succeeded at `now`: we hold the lease.
    pub fn written(&mut self, now: Instant) {
        self.renewed = Some(now);
        self.seen = None;
    }

    /// Our write lost to another's: we do not hold it.
    pub fn lost(&mut self) {
        self.renewed = None;
    }

    /// Whether we may act at `now`: we wrote the lease less than two thirds of its
    /// duration ago.
    pub fn held(&self, now: Instant) -> bool {
        self.renewed
            .is_some_and(|at| now.duration_since(at) < self.duration * 2 / 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u64, holder: &str) -> LeaseRecord {
        LeaseRecord {
            id: "cfg".into(),
            version,
            holder: holder.into(),
            renewed_ms: 0,
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn with_no_record_the_first_controller_creates_it() {
        let mut lease = Lease::new("a", D);
        assert_eq!(lease.decide(None, Instant::now()), Step::Create);
    }

    #[test]
    fn a_holder_that_keeps_renewing_is_never_taken_over() {
        let t0 = Instant::now();
        let mut b = Lease::new("b", D);
        for i in 0..20u64 {
            // a renews every 3 s: the version moves.
            let now = t0 + Duration::from_secs(3 * i);
            assert_eq!(
                b.decide(Some(&record(10 + i, "a")), now),
                Step::Wait { holder: "a".into() }
            );
        }
    }

    #[test]
    fn a_lapsed_lease_is_taken_over_a_whole_duration_after_it_last_moved() {
        let t0 = Instant::now();
        let mut b = Lease::new("b", D);
        let r = record(10, "a");
        assert!(matches!(b.decide(Some(&r), t0), Step::Wait { .. }));
        assert!(matches!(
            b.decide(Some(&r), t0 + D - Duration::from_millis(1)),
            Step::Wait { .. }
        ));
        assert_eq!(b.decide(Some(&r), t0 + D), Step::TakeOver);
    }

    #[test]
    fn the_holder_stops_acting_before_anyone_may_take_over() {
        let t0 = Instant::now();
        let mut a = Lease::new("a", D);
        a.written(t0);
        assert!(a.held(t0 + D / 2));
        // Its renewals fail from t0 on; b saw the version at t0 at the earliest.
        assert!(!a.held(t0 + D * 2 / 3));
        let mut b = Lease::new("b", D);
        assert!(matches!(
            b.decide(Some(&record(1, "a")), t0),
            Step::Wait { .. }
        ));
        assert_eq!(b.decide(Some(&record(1, "a")), t0 + D), Step::TakeOver);
    }

    #[test]
    fn the_holder_renews_and_one_that_lost_a_write_no_longer_holds() {
        let t0 = Instant::now();
        let mut a = Lease::new("a", D);
        assert_eq!(a.decide(Some(&record(1, "")), t0), Step::TakeOver);
        a.written(t0);
        assert_eq!(
            a.decide(Some(&record(2, "a")), t0 + a.period()),
            Step::Renew
        );
        a.lost();
        assert!(!a.held(t0 + a.period()));
        assert!(matches!(
            a.decide(Some(&record(3, "b")), t0 + a.period()),
            Step::Wait { .. }
        ));
    }
}
