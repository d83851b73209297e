//! Scale to zero on HAProxy's side: the Lua action that holds a request while its
//! backend has no usable server (`hold.lua`, written into the state directory and
//! loaded by the managed configuration), the line that calls it in a backend, and the
//! parser of its counters (`dockscale holds` on the admin socket). Pure, but for
//! writing the script.
//!
//! Why Lua: HAProxy 2.6 answers 503 at once when a backend has no usable server;
//! queueing (`timeout queue`) applies only to servers that are up and full. An
//! `http-request` Lua action can yield (`core.msleep`) inside the request's analysis
//! without blocking the worker, see a server come up (`nbsrv`), and answer a clear 503
//! of its own (`txn:done` with a reply) past a deadline. Guarded by `nbsrv lt 1`, it
//! costs nothing while servers are up; nothing in the configuration changes between
//! zero and one replica, so neither direction reloads HAProxy.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::model::backend::Holds;

/// The script, as written into the state directory.
pub const SCRIPT: &str = include_str!("hold.lua");
/// Its file name in the state directory.
pub const SCRIPT_FILE: &str = "dockscale-hold.lua";
/// The runtime API command the script registers.
pub const COMMAND: &str = "dockscale holds";

/// How one backend holds requests: for how long, and what a timed-out one is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldConfig {
    pub timeout: Duration,
}

impl HoldConfig {
    /// The `Retry-After` of the 503 past the timeout, in whole seconds (at least 1):
    /// by then a replica that starts at all has had as long again to do it.
    pub fn retry_after_secs(&self) -> u64 {
        self.timeout.as_secs_f64().ceil().max(1.0) as u64
    }

    /// The backend's line that calls the action while no server is usable.
    pub fn render(&self) -> String {
        format!(
            "    http-request lua.dockscale_hold {} {} if {{ nbsrv lt 1 }}\n",
            self.timeout.as_millis(),
            self.retry_after_secs()
        )
    }
}

/// Writes the script into `dir` (the state directory).
pub fn write_script(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(SCRIPT_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|t| t == SCRIPT) {
        return Ok(());
    }
    let tmp = dir.join(format!("{SCRIPT_FILE}.new"));
    std::fs::write(&tmp, SCRIPT)?;
    std::fs::rename(tmp, path)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Parses the reply of `dockscale holds`: one line per backend,
/// `<backend> <waiting> <held> <released> <timed_out> <ms,ms,...|->`.
pub fn parse(reply: &str) -> Result<BTreeMap<String, Holds>, ParseError> {
    let mut out = BTreeMap::new();
    for (n, line) in reply.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let err = |message: String| ParseError {
            line: n + 1,
            message,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [backend, waiting, held, released, timed_out, times] = fields[..] else {
            return Err(err(format!("{} fields, expected 6", fields.len())));
        };
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| err(format!("`{v}` is not a count")))
        };
        let hold_seconds = if times == "-" {
            Vec::new()
        } else {
            times
                .split(',')
                .map(|t| {
                    t.parse::<f64>()
                        .ok()
                        .filter(|ms| ms.is_finite() && *ms >= 0.0)
                        .map(|ms| ms / 1000.0)
                        .ok_or_else(|| err(format!("`{t}` is not a time in milliseconds")))
                })
                .collect::<Result<_, _>>()?
        };
        out.insert(
            backend.to_owned(),
            Holds {
                waiting: u32::try_from(num(waiting)?).unwrap_or(u32::MAX),
                held: num(held)?,
                released: num(released)?,
                timed_out: num(timed_out)?,
                hold_seconds,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counters_and_hold_times_are_read_per_backend() {
        let holds = parse("web 2 9 6 1 742.5,12.5\napi 0 1 1 0 -\n\n").expect("parses");
        assert_eq!(holds.len(), 2);
        let web = &holds["web"];
        assert_eq!(
            (web.waiting, web.held, web.released, web.timed_out),
            (2, 9, 6, 1)
        );
        assert_eq!(web.hold_seconds, [0.7425, 0.0125]);
        assert!(holds["api"].hold_seconds.is_empty());
        assert!(parse("").expect("nothing held yet").is_empty());
    }

    #[test]
    fn a_malformed_line_is_an_error_with_its_line() {
        assert_eq!(
            parse("web 1 2 3\n").expect_err("short").to_string(),
            "line 1: 4 fields, expected 6"
        );
        assert_eq!(
            parse("web 0 1 1 0 -\nweb x 1 1 0 -\n")
                .expect_err("not a count")
                .to_string(),
            "line 2: `x` is not a count"
        );
        assert!(parse("web 0 1 1 0 1,nope\n").is_err());
    }

    #[test]
    fn the_backend_line_holds_for_the_timeout_and_says_when_to_retry() {
        let h = HoldConfig {
            timeout: Duration::from_millis(2500),
        };
        assert_eq!(
            h.render(),
            "    http-request lua.dockscale_hold 2500 3 if { nbsrv lt 1 }\n"
        );
        let short = HoldConfig {
            timeout: Duration::from_millis(200),
        };
        assert_eq!(short.retry_after_secs(), 1);
    }

    #[test]
    fn the_script_is_written_once_and_rewritten_when_it_differs() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_script(dir.path()).expect("writes");
        let path = dir.path().join(SCRIPT_FILE);
        assert_eq!(std::fs::read_to_string(&path).expect("reads"), SCRIPT);
        std::fs::write(&path, "-- old").expect("overwrite");
        write_script(dir.path()).expect("writes again");
        assert_eq!(std::fs::read_to_string(&path).expect("reads"), SCRIPT);
    }
}
