//! When `autoscale.schedules` are in force: pure, the wall-clock time is passed in.
//!
//! An entry opens a window at every time its cron expression matches in its time zone
//! (found by [`croner`], which resolves daylight-saving changes the way cron users
//! expect: a time skipped by the spring change runs at the first instant after it, a
//! time repeated by the autumn change runs once, at its first occurrence), and the
//! window lasts `duration` of elapsed time. The floor in force is the highest
//! `minReplicas` of the windows open; the autoscaler ([`super::Autoscaler`]) raises its
//! minimum to it. This module only tells the windows; it decides no count.

use std::fmt;
use std::time::SystemTime;

use chrono::{DateTime, Utc};

use crate::spec::schedule::TimeZone;
use crate::spec::Schedule;

/// The window that sets the floor now.
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveWindow {
    /// The entry's index in `autoscale.schedules`.
    pub index: usize,
    pub cron: String,
    pub timezone: TimeZone,
    pub min_replicas: u32,
    /// When the latest window of the entry opened.
    pub opened: SystemTime,
    /// When it closes, unless the entry opens another window before then.
    pub until: SystemTime,
}

/// The next window to open, of any entry.
#[derive(Clone, Debug, PartialEq)]
pub struct NextWindow {
    pub index: usize,
    pub cron: String,
    pub timezone: TimeZone,
    pub min_replicas: u32,
    pub opens: SystemTime,
}

/// The schedules at one moment: the window that sets the floor, and the next to open.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Windows {
    pub active: Option<ActiveWindow>,
    pub next: Option<NextWindow>,
}

impl Windows {
    /// The floor in force (`None` outside every window).
    pub fn floor(&self) -> Option<u32> {
        self.active.as_ref().map(|w| w.min_replicas)
    }
}

/// The windows of `schedules` at `now`. Of several windows in force, the one with the
/// highest floor (then the one that lasts longest) sets it.
pub fn windows_at(schedules: &[Schedule], now: SystemTime) -> Windows {
    let now_utc = DateTime::<Utc>::from(now);
    let mut windows = Windows::default();
    for (index, s) in schedules.iter().enumerate() {
        let tz = s.timezone.tz();
        let here = now_utc.with_timezone(&tz);
        let cron = s.cron.cron();
        // A duration too long for chrono (beyond any real use) lasts for ever.
        let length = chrono::Duration::from_std(s.duration.get()).unwrap_or(chrono::Duration::MAX);
        if let Ok(opened) = cron.find_previous_occurrence(&here, true) {
            let until = opened
                .to_utc()
                .checked_add_signed(length)
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            if until > now_utc {
                let candidate = ActiveWindow {
                    index,
                    cron: s.cron.to_string(),
                    timezone: s.timezone,
                    min_replicas: s.min_replicas,
                    opened: opened.to_utc().into(),
                    until: until.into(),
                };
                let better = windows.active.as_ref().is_none_or(|a| {
                    (candidate.min_replicas, candidate.until) > (a.min_replicas, a.until)
                });
                if better {
                    windows.active = Some(candidate);
                }
            }
        }
        if let Ok(opens) = cron.find_next_occurrence(&here, false) {
            let opens: SystemTime = opens.to_utc().into();
            let better = windows.next.as_ref().is_none_or(|n| {
                opens < n.opens || (opens == n.opens && s.min_replicas > n.min_replicas)
            });
            if better {
                windows.next = Some(NextWindow {
                    index,
                    cron: s.cron.to_string(),
                    timezone: s.timezone,
                    min_replicas: s.min_replicas,
                    opens,
                });
            }
        }
    }
    windows
}

/// `t` in `tz` as a person reads it next to `now`: `18:00 CET` on the same local day,
/// else with the date (`2024-01-02 08:00 CET`).
pub fn local_time(t: SystemTime, tz: TimeZone, now: SystemTime) -> String {
    let tz = tz.tz();
    let at = DateTime::<Utc>::from(t).with_timezone(&tz);
    let today = DateTime::<Utc>::from(now).with_timezone(&tz).date_naive();
    if at.date_naive() == today {
        at.format("%H:%M %Z").to_string()
    } else {
        at.format("%Y-%m-%d %H:%M %Z").to_string()
    }
}

/// The window as the autoscaler's message names it:
/// `schedule "0 8 * * 1-5" (Europe/Zurich) holds at least 6 until 18:00 CET`.
pub struct Holds<'a> {
    pub window: &'a ActiveWindow,
    pub now: SystemTime,
}

impl fmt::Display for Holds<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.window;
        write!(
            f,
            "schedule \"{}\" ({}) holds at least {} until {}",
            w.cron,
            w.timezone,
            w.min_replicas,
            local_time(w.until, w.timezone, self.now)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedules(yaml: &str) -> Vec<Schedule> {
        serde_saphyr::from_str(yaml).expect("fixture parses")
    }

    /// An RFC 3339 time.
    fn at(text: &str) -> SystemTime {
        DateTime::parse_from_rfc3339(text)
            .expect("an RFC 3339 time")
            .to_utc()
            .into()
    }

    const WEEKDAYS: &str =
        "[{cron: \"0 8 * * 1-5\", timezone: Europe/Zurich, duration: 10h, minReplicas: 6}]";

    #[test]
    fn a_weekday_window_holds_from_eight_to_six_in_its_time_zone() {
        let s = schedules(WEEKDAYS);
        // Monday 2024-01-08, Zurich is UTC+1 in winter.
        assert_eq!(windows_at(&s, at("2024-01-08T06:59:59Z")).floor(), None);
        let w = windows_at(&s, at("2024-01-08T07:00:00Z"));
        assert_eq!(w.floor(), Some(6));
        let active = w.active.expect("in force");
        assert_eq!(active.opened, at("2024-01-08T08:00:00+01:00"));
        assert_eq!(active.until, at("2024-01-08T18:00:00+01:00"));
        assert_eq!(
            Holds {
                window: &active,
                now: at("2024-01-08T07:00:00Z")
            }
            .to_string(),
            "schedule \"0 8 * * 1-5\" (Europe/Zurich) holds at least 6 until 18:00 CET"
        );
        assert_eq!(windows_at(&s, at("2024-01-08T16:59:59Z")).floor(), Some(6));
        assert_eq!(windows_at(&s, at("2024-01-08T17:00:00Z")).floor(), None);
        // In summer (UTC+2) the window follows the local clock.
        assert_eq!(windows_at(&s, at("2024-07-01T06:00:00Z")).floor(), Some(6));
        assert_eq!(windows_at(&s, at("2024-07-01T05:59:00Z")).floor(), None);
    }

    #[test]
    fn no_window_opens_on_the_weekend_and_the_next_one_is_monday() {
        let s = schedules(WEEKDAYS);
        // Saturday 2024-01-13 at noon, Zurich.
        let w = windows_at(&s, at("2024-01-13T12:00:00+01:00"));
        assert_eq!(w.active, None);
        let next = w.next.expect("a next window");
        assert_eq!(next.opens, at("2024-01-15T08:00:00+01:00"));
        assert_eq!(next.min_replicas, 6);
        // Friday's window still closes at 18:00.
        let friday = windows_at(&s, at("2024-01-12T17:59:00+01:00"));
        assert_eq!(friday.floor(), Some(6));
        assert_eq!(
            local_time(
                friday.next.expect("next").opens,
                TimeZone::default(),
                at("2024-01-12T17:59:00+01:00")
            ),
            "2024-01-15 07:00 UTC"
        );
    }

    #[test]
    fn the_highest_floor_of_the_windows_in_force_wins() {
        let s = schedules(
            "[{cron: \"0 8 * * *\", duration: 10h, minReplicas: 3},\
              {cron: \"0 12 * * *\", duration: 1h, minReplicas: 8},\
              {cron: \"0 9 * * *\", duration: 1h, minReplicas: 2}]",
        );
        assert_eq!(windows_at(&s, at("2024-01-08T09:30:00Z")).floor(), Some(3));
        let noon = windows_at(&s, at("2024-01-08T12:30:00Z"));
        assert_eq!(noon.active.as_ref().map(|a| a.index), Some(1));
        assert_eq!(noon.floor(), Some(8));
        assert_eq!(windows_at(&s, at("2024-01-08T13:00:00Z")).floor(), Some(3));
    }

    #[test]
    fn a_window_over_midnight_holds_into_the_next_day() {
        let s = schedules("[{cron: \"0 22 * * 5\", duration: 4h, minReplicas: 2}]");
        // Friday 22:00 UTC to Saturday 02:00.
        assert_eq!(windows_at(&s, at("2024-01-13T01:59:00Z")).floor(), Some(2));
        assert_eq!(windows_at(&s, at("2024-01-13T02:00:00Z")).floor(), None);
    }

    #[test]
    fn daylight_saving_changes_open_windows_as_cron_does() {
        // 02:30 does not exist in Zurich on 2024-03-31 (02:00 → 03:00): the window
        // opens at the first instant after the gap, 03:00 CEST.
        let s = schedules(
            "[{cron: \"30 2 * * *\", timezone: Europe/Zurich, duration: 1h, minReplicas: 4}]",
        );
        let w = windows_at(&s, at("2024-03-31T03:10:00+02:00"));
        let active = w.active.expect("opened after the gap");
        assert_eq!(active.opened, at("2024-03-31T03:00:00+02:00"));
        assert_eq!(active.until, at("2024-03-31T04:00:00+02:00"));
        // 02:30 happens twice on 2024-10-27 (03:00 CEST → 02:00 CET): it opens once,
        // at the first, and lasts one hour of elapsed time.
        let first = at("2024-10-27T02:30:00+02:00");
        let w = windows_at(&s, first);
        assert_eq!(w.active.as_ref().map(|a| a.opened), Some(first));
        let second = at("2024-10-27T02:30:00+01:00");
        let w = windows_at(&s, second);
        assert_eq!(w.active, None, "opened again in the repeated hour");
        assert_eq!(
            w.next.map(|n| n.opens),
            Some(at("2024-10-28T02:30:00+01:00"))
        );
    }

    #[test]
    fn an_every_minute_window_is_in_force_for_its_duration_each_minute() {
        let s = schedules("[{cron: \"* * * * *\", duration: 20s, minReplicas: 3}]");
        assert_eq!(windows_at(&s, at("2024-01-08T10:00:19Z")).floor(), Some(3));
        let w = windows_at(&s, at("2024-01-08T10:00:20Z"));
        assert_eq!(w.floor(), None);
        assert_eq!(w.next.map(|n| n.opens), Some(at("2024-01-08T10:01:00Z")));
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(128))]

        /// Whatever the entries and the moment: the window in force opened at or
        /// before now and closes after it, its floor is the highest of the windows
        /// open, and the next one opens after now.
        #[test]
        fn the_window_in_force_contains_now_and_the_next_is_after_it(
            entries in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "0 8 * * 1-5", "30 2 * * *", "*/7 * * * *", "0 0 29 2 *",
                        "15 9 1 * *", "@hourly", "0 0 * * 5#L", "59 23 L * *",
                    ]),
                    proptest::sample::select(vec![
                        "UTC", "Europe/Zurich", "America/New_York", "Australia/Lord_Howe",
                        "Asia/Kathmandu",
                    ]),
                    1u64..200_000,
                    1u32..20,
                ),
                1..4,
            ),
            // 2000-01-01 to 2100-01-01.
            unix in 946_684_800u64..4_102_444_800,
        ) {
            let yaml: Vec<String> = entries
                .iter()
                .map(|(cron, zone, secs, floor)| {
                    format!(
                        "{{cron: \"{cron}\", timezone: {zone}, duration: {secs}s, \
                         minReplicas: {floor}}}"
                    )
                })
                .collect();
            let s = schedules(&format!("[{}]", yaml.join(", ")));
            let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(unix);
            let w = windows_at(&s, now);
            if let Some(a) = &w.active {
                proptest::prop_assert!(a.opened <= now && now < a.until, "{a:?}");
                let each_alone: Vec<u32> = (0..s.len())
                    .filter_map(|i| windows_at(&s[i..=i], now).floor())
                    .collect();
                proptest::prop_assert_eq!(each_alone.iter().max(), Some(&a.min_replicas));
            }
            let next = w.next.expect("every entry opens again");
            proptest::prop_assert!(next.opens > now, "{next:?}");
        }
    }
}
