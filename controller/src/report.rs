//! An error and its causes on one line, for logs, status messages and the CLI.
//!
//! Errors here say what failed in their own words and keep what caused it as their
//! `source()`, never both (so that a chain prints each cause once: a Docker error used
//! to read `cannot reach the Docker engine: X: cannot reach the Docker engine: X: X`).
//! [`Chain`] prints the whole chain, `: `-separated, as anyhow's `{:#}` does.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources. A cause whose words the text
/// already ends with is not repeated (some libraries put their source in their own
/// message, as hyper's client errors do).
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let said = cause.to_string();
            if !text.ends_with(&said) {
                text.push_str(": ");
                text.push_str(&said);
            }
            source = cause.source();
        }
        f.write_str(&text)
    }
}

/// The chain of `e` as a string.
pub fn chain(e: &dyn Error) -> String {
    Chain(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read the spec")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_printed_once() {
        let e = Outer(std::io::Error::other("disk gone"));
        assert_eq!(chain(&e), "cannot read the spec: disk gone");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Wrapper(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("the engine: client error (Connect)")]
    struct Repeating(#[source] Wrapper);

    #[test]
    fn a_cause_already_said_is_not_repeated() {
        let e = Repeating(Wrapper(std::io::Error::other("Connection refused")));
        assert_eq!(
            chain(&e),
            "the engine: client error (Connect): Connection refused"
        );
    }
}
