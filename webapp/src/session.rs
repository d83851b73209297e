//! Per-session request counters, kept in this process's memory only.
//!
//! A session is named by the `DSSESSION` cookie. Counters are per replica on purpose,
//! like the classic HAProxy lab's Node app: a client whose requests are not sticky
//! sees its count start again whenever another replica answers. This module owns the
//! counter store and the cookie's name and shape; it must not do I/O.

use std::collections::HashMap;

use axum::http::{header, HeaderMap, HeaderValue};

/// The cookie that names a session.
pub const COOKIE: &str = "DSSESSION";

/// Longest session id accepted from a client, so a hostile cookie cannot grow memory.
const MAX_ID_LEN: usize = 64;

/// Request counts per session id, bounded in size.
///
/// Clients that never send the cookie back (load generators) start a new session on
/// every request, so the store forgets the least recently seen half of its sessions
/// whenever it grows past its capacity.
#[derive(Debug)]
pub struct Sessions {
    counts: HashMap<String, Entry>,
    /// Bumped on every hit; an entry's `last_seen` is the tick of its latest hit, so
    /// ticks are unique per entry and order entries by recency.
    tick: u64,
    capacity: usize,
}

#[derive(Debug)]
struct Entry {
    count: u64,
    last_seen: u64,
}

impl Sessions {
    /// A store that holds at most `capacity` sessions (at least 2).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            counts: HashMap::new(),
            tick: 0,
            capacity: capacity.max(2),
        }
    }

    /// Counts one request of session `id` and returns the session's count so far.
    ///
    /// An id this replica has never seen (new, or first served by another replica)
    /// starts at 1.
    pub fn hit(&mut self, id: &str) -> u64 {
        self.tick += 1;
        let tick = self.tick;
        let count = match self.counts.get_mut(id) {
            Some(entry) => {
                entry.count += 1;
                entry.last_seen = tick;
                entry.count
            }
            None => {
                let entry = Entry {
                    count: 1,
                    last_seen: tick,
                };
                self.counts.insert(id.to_owned(), entry);
                1
            }
        };
        if self.counts.len() > self.capacity {
            // Ticks are unique, so at most `capacity / 2` entries are newer than this;
            // the session just counted (`last_seen == tick`) always stays.
            let oldest_kept = tick.saturating_sub((self.capacity / 2) as u64);
            self.counts.retain(|_, entry| entry.last_seen > oldest_kept);
        }
        count
    }

    /// How many sessions are remembered.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether no session is remembered.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// A fresh random session id: 16 lowercase hex digits.
pub fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The session id in the request's `Cookie` headers, if there is a well-formed one.
///
/// Ids are accepted only as 1 to 64 characters of `[A-Za-z0-9_-]`, so what is echoed
/// back in the body and kept in memory is always short and plain.
pub fn id_from_headers(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, id)| id)
        .filter(|id| is_valid_id(id))
}

/// The `Set-Cookie` value that starts session `id`.
pub fn set_cookie(id: &str) -> HeaderValue {
    // Infallible for the ids this crate makes and accepts: they are plain ASCII
    // (`new_id` is hex, `id_from_headers` checks the alphabet).
    HeaderValue::try_from(format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax"))
        .expect("session ids are plain ASCII")
}

fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie_headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                header::COOKIE,
                HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn counts_increment_per_session_and_independently() {
        let mut sessions = Sessions::with_capacity(100);
        assert_eq!(sessions.hit("a"), 1);
        assert_eq!(sessions.hit("a"), 2);
        assert_eq!(sessions.hit("b"), 1);
        assert_eq!(sessions.hit("a"), 3);
        assert_eq!(sessions.hit("b"), 2);
    }

    #[test]
    fn growing_past_capacity_forgets_the_least_recently_seen() {
        let mut sessions = Sessions::with_capacity(4);
        for id in ["a", "b", "c", "d"] {
            sessions.hit(id);
        }
        sessions.hit("a"); // a is now the most recent of the four
        sessions.hit("e"); // over capacity: keep the 2 most recent, e and a
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions.hit("a"), 3);
        assert_eq!(sessions.hit("b"), 1, "b was forgotten");
    }

    #[test]
    fn new_ids_are_hex_and_accepted_back() {
        let id = new_id();
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        let headers = cookie_headers(&[&format!("{COOKIE}={id}")]);
        assert_eq!(id_from_headers(&headers), Some(id.as_str()));
    }

    #[test]
    fn session_cookie_is_found_among_other_cookies_and_headers() {
        let headers = cookie_headers(&["theme=dark", "x=1; DSSESSION=abc-123_Z; y=2"]);
        assert_eq!(id_from_headers(&headers), Some("abc-123_Z"));
    }

    #[test]
    fn malformed_session_ids_are_ignored() {
        let too_long = format!("{COOKIE}={}", "a".repeat(65));
        for value in ["DSSESSION=", "DSSESSION=a b", "DSSESSION=é", "OTHER=abc"] {
            assert_eq!(id_from_headers(&cookie_headers(&[value])), None, "{value}");
        }
        assert_eq!(id_from_headers(&cookie_headers(&[&too_long])), None);
    }

    #[test]
    fn set_cookie_scopes_the_session_to_the_whole_site() {
        assert_eq!(
            set_cookie("abc"),
            "DSSESSION=abc; Path=/; HttpOnly; SameSite=Lax"
        );
    }
}
