//! `autoscale.schedules`: windows, opened by a cron expression in a time zone, during
//! which the autoscaler keeps at least a number of replicas.
//!
//! The cron expression and the time zone are parsed once, here, at the edge (with
//! [`croner`] and [`chrono_tz`]): a bad one is a deserialization error located at the
//! value. Rules across fields (a zero duration, a floor above `maxReplicas`) are
//! [`crate::spec::manifest`]'s. When the windows are in force is
//! [`crate::autoscale::schedule`]'s; this module does no I/O and reads no clock.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{positive_count, Duration};

/// One scheduled window: from every time `cron` matches (in `timezone`), for
/// `duration`, the autoscaler keeps at least `minReplicas`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Schedule {
    /// When a window opens: a standard 5-field cron expression (minute, hour, day of
    /// month, month, day of week), e.g. `0 8 * * 1-5` for 08:00 on weekdays.
    pub cron: CronExpr,
    /// The IANA time zone the expression is read in (`Europe/Zurich`). Default: UTC.
    #[serde(default)]
    pub timezone: TimeZone,
    /// How long each window lasts (elapsed time, so a window over a daylight-saving
    /// change still lasts exactly this long).
    pub duration: Duration,
    /// The floor inside the window: the autoscaler keeps at least this many replicas
    /// (never more than `maxReplicas`). Outside every window `minReplicas` applies.
    #[serde(deserialize_with = "positive_count")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: u32,
}

/// A standard cron expression of 5 fields (no seconds, no year), or a nickname such as
/// `@daily`. Day-of-week 0 and 7 are Sunday; names (`MON`, `JAN`) are accepted.
#[derive(Clone, Debug, JsonSchema)]
#[schemars(with = "String")]
pub struct CronExpr {
    text: String,
    cron: croner::Cron,
}

/// The fields of a cron expression, in order, as messages name them.
const FIELDS: [&str; 5] = ["minute", "hour", "day of month", "month", "day of week"];

impl CronExpr {
    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn cron(&self) -> &croner::Cron {
        &self.cron
    }

    fn parser() -> croner::parser::CronParser {
        croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build()
    }
}

impl PartialEq for CronExpr {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl FromStr for CronExpr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim();
        let invalid = |why: String| format!("invalid cron expression `{text}`: {why}");
        if text.is_empty() {
            return Err(
                "invalid cron expression ``: it is empty (5 fields: minute hour day-of-month \
                 month day-of-week, e.g. `0 8 * * 1-5`)"
                    .to_owned(),
            );
        }
        let fields: Vec<&str> = text.split_whitespace().collect();
        if !text.starts_with('@') && fields.len() != 5 {
            return Err(invalid(format!(
                "it has {} field{}, a cron expression has 5: minute hour day-of-month month \
                 day-of-week (e.g. `0 8 * * 1-5`; no seconds field)",
                fields.len(),
                if fields.len() == 1 { "" } else { "s" }
            )));
        }
        let parser = Self::parser();
        let cron = parser.parse(text).map_err(|e| {
            // Name the field at fault: the first that does not parse on its own, the
            // others left at `*`.
            let culprit = (fields.len() == 5)
                .then(|| {
                    (0..5).find(|&i| {
                        let alone: Vec<&str> = (0..5)
                            .map(|j| if j == i { fields[i] } else { "*" })
                            .collect();
                        parser.parse(&alone.join(" ")).is_err()
                    })
                })
                .flatten();
            match culprit {
                Some(i) => invalid(format!(
                    "the {} field `{}` is wrong ({})",
                    FIELDS[i],
                    fields[i],
                    cron_error_text(&e)
                )),
                None => invalid(cron_error_text(&e)),
            }
        })?;
        // One that parses may still match no date at all (`0 0 30 2 *`): its windows
        // would never open, and every search for one would walk millennia.
        let origin = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
        if cron.find_next_occurrence(&origin, false).is_err() {
            return Err(invalid(
                "it matches no date (a day that its months do not have?)".to_owned(),
            ));
        }
        Ok(CronExpr {
            text: text.to_owned(),
            cron,
        })
    }
}

/// croner's message, without its prefixes (`Component error: `).
fn cron_error_text(e: &croner::errors::CronError) -> String {
    let text = e.to_string();
    let text = text
        .strip_prefix("Component error: ")
        .or_else(|| text.strip_prefix("Invalid pattern: "))
        .unwrap_or(&text)
        .trim_end_matches('.')
        .to_owned();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for CronExpr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for CronExpr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An IANA time zone name (`Europe/Zurich`, `America/New_York`, `UTC`), from the
/// database chrono-tz ships.
#[derive(Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(with = "String")]
pub struct TimeZone(chrono_tz::Tz);

impl TimeZone {
    pub fn tz(self) -> chrono_tz::Tz {
        self.0
    }
}

impl Default for TimeZone {
    fn default() -> Self {
        TimeZone(chrono_tz::Tz::UTC)
    }
}

impl FromStr for TimeZone {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.trim()
            .parse::<chrono_tz::Tz>()
            .map(TimeZone)
            .map_err(|_| {
                format!(
                    "unknown time zone `{s}`: give an IANA name such as `Europe/Zurich`, \
                 `America/New_York` or `UTC` (names are case-sensitive)"
                )
            })
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

impl<'de> Deserialize<'de> for TimeZone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for TimeZone {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_expressions_and_nicknames_parse() {
        for text in [
            "0 8 * * 1-5",
            "*/15 9-17 * * MON-FRI",
            "0 0 1 JAN *",
            "@daily",
            "0 0 29 2 *",
        ] {
            let cron: CronExpr = text.parse().expect(text);
            assert_eq!(cron.as_str(), text);
        }
    }

    #[test]
    fn a_bad_expression_says_what_is_wrong() {
        let err = "0 8 * *".parse::<CronExpr>().expect_err("4 fields");
        assert!(
            err.contains("it has 4 fields, a cron expression has 5"),
            "{err}"
        );
        let err = "0 0 8 * * 1-5".parse::<CronExpr>().expect_err("seconds");
        assert!(err.contains("it has 6 fields"), "{err}");
        let err = "0 25 * * *".parse::<CronExpr>().expect_err("hour 25");
        assert!(err.contains("the hour field `25` is wrong"), "{err}");
        let err = "0 8 * * MON-FUN"
            .parse::<CronExpr>()
            .expect_err("a bad day");
        assert!(err.contains("the day of week field"), "{err}");
        let err = "*/0 * * * *".parse::<CronExpr>().expect_err("step 0");
        assert!(
            err.ends_with("the minute field `*/0` is wrong (step cannot be zero)"),
            "{err}"
        );
        let err = "0 0 30 2 *".parse::<CronExpr>().expect_err("February 30");
        assert!(
            err.ends_with("it matches no date (a day that its months do not have?)"),
            "{err}"
        );
        let err = " ".parse::<CronExpr>().expect_err("empty");
        assert!(err.contains("it is empty"), "{err}");
    }

    #[test]
    fn time_zones_are_iana_names_and_default_to_utc() {
        assert_eq!(TimeZone::default().to_string(), "UTC");
        let tz: TimeZone = "Europe/Zurich".parse().expect("a zone");
        assert_eq!(tz.to_string(), "Europe/Zurich");
        let err = "Europe/Zürich".parse::<TimeZone>().expect_err("unknown");
        assert!(
            err.starts_with("unknown time zone `Europe/Zürich`"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod hostile {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(256))]

        /// Any text is an expression or an error that names it; never a panic.
        #[test]
        fn any_text_is_a_cron_expression_or_an_error(text in "\\PC{0,40}") {
            if let Err(e) = text.parse::<CronExpr>() {
                proptest::prop_assert!(e.starts_with("invalid cron expression"), "{e}");
            }
            let _ = text.parse::<TimeZone>();
        }

        /// Fields made of cron's own characters, where the parser's corners are.
        #[test]
        fn cron_like_fields_never_panic_and_parsed_ones_can_be_searched(
            fields in proptest::collection::vec("[0-9*/,#LW?+-]{1,6}", 5)
        ) {
            let text = fields.join(" ");
            if let Ok(cron) = text.parse::<CronExpr>() {
                let now = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
                proptest::prop_assert!(cron.cron().find_next_occurrence(&now, false).is_ok());
            }
        }
    }
}
