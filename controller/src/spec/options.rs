//! The volumes and process options of `spec.template` (issue #17): mounts, the user,
//! the working directory, capabilities, ulimits, logging, extra hosts and the stop
//! signal, as DESIGN.md names them.
//!
//! Each scalar is a newtype that parses once, at the edge, so the runtimes map values
//! and never re-check them. Rules that span fields (a bind source must be absolute, a
//! tmpfs has no source, soft <= hard) live in [`crate::spec::manifest`], which knows
//! where each value was written. This module must not do any I/O.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{EnvName, Quantity};

/// One filesystem mounted into every replica.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mount {
    /// `bind` (a host path), `volume` (a named Docker volume) or `tmpfs` (memory).
    #[serde(rename = "type")]
    pub kind: MountType,
    /// A bind's absolute host path, or a volume's name. A tmpfs has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Where it appears inside the container: an absolute path.
    pub target: ContainerPath,
    /// Mount it read-only (bind and volume).
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// A tmpfs's size limit as a quantity (`64Mi`); unset means half the host's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
}

/// The kind of a [`Mount`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    Bind,
    Volume,
    Tmpfs,
}

impl MountType {
    pub fn as_str(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Volume => "volume",
            MountType::Tmpfs => "tmpfs",
        }
    }
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

/// Whether `s` is a Docker volume name (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`, as the engine
/// checks it).
pub fn is_volume_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    s.len() >= 2
        && s.len() <= 255
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// An absolute path inside the container.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[schemars(with = "String", extend("pattern" = "^/"))]
pub struct ContainerPath(String);

impl ContainerPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path without trailing slashes (`/www/` and `/www` are one target).
    pub fn normalized(&self) -> &str {
        let trimmed = self.0.trim_end_matches('/');
        if trimmed.is_empty() {
            "/"
        } else {
            trimmed
        }
    }
}

impl FromStr for ContainerPath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with('/') && !s.contains(['\0', ':', ',']) && s.len() <= 4096 {
            Ok(ContainerPath(s.to_owned()))
        } else {
            Err(format!(
                "`{s}` is not an absolute path inside the container: it starts with '/' \
                 and has no ':' or ','"
            ))
        }
    }
}

impl fmt::Display for ContainerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

deserialize_from_str!(ContainerPath);

/// The Linux capabilities Docker knows (without their `CAP_` prefix), from
/// `capabilities(7)`.
const CAPABILITIES: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// A Linux capability, written `CAP_NET_ADMIN`, `NET_ADMIN` or `net_admin`, or `ALL`.
/// Held (and sent to Docker) as `CAP_NET_ADMIN` or `ALL`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[schemars(with = "String")]
pub struct Capability(String);

impl Capability {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Capability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let upper = s.trim().to_ascii_uppercase();
        if upper == "ALL" {
            return Ok(Capability(upper));
        }
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        if CAPABILITIES.contains(&bare) {
            Ok(Capability(format!("CAP_{bare}")))
        } else {
            Err(format!(
                "`{s}` is not a Linux capability (examples: NET_ADMIN, CAP_SYS_PTRACE, ALL)"
            ))
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

deserialize_from_str!(Capability);

/// The user the process runs as: `name` or `uid`, optionally `:group` or `:gid`.
#[derive(Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(
    with = "String",
    extend("pattern" = "^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")
)]
pub struct User(String);

impl User {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A user or group name (as `useradd` allows, plus uppercase) or a numeric id.
fn is_user_part(s: &str) -> bool {
    let mut bytes = s.bytes();
    (1..=32).contains(&s.len())
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && (!s.bytes().all(|b| b.is_ascii_digit()) || s.parse::<u32>().is_ok())
}

impl FromStr for User {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let valid = match s.split_once(':') {
            Some((user, group)) => is_user_part(user) && is_user_part(group),
            None => is_user_part(s),
        };
        if valid {
            Ok(User(s.to_owned()))
        } else {
            Err(format!(
                "`{s}` is not a user: write `name`, `uid`, `name:group` or `uid:gid` \
                 (e.g. `1000:1000`)"
            ))
        }
    }
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

deserialize_from_str!(User);

/// The resource limits Docker's `--ulimit` takes (`setrlimit(2)` names).
const ULIMITS: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// A ulimit name: `nofile`, `nproc`, `core`, `memlock`, `stack`, ...
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[schemars(with = "String")]
pub struct UlimitName(String);

impl UlimitName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UlimitName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if ULIMITS.contains(&s) {
            Ok(UlimitName(s.to_owned()))
        } else {
            Err(format!(
                "`{s}` is not a ulimit: use one of {}",
                ULIMITS.join(", ")
            ))
        }
    }
}

impl fmt::Display for UlimitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

deserialize_from_str!(UlimitName);

/// One resource limit: the soft limit the process starts with, and the hard ceiling it
/// may raise it to.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ulimit {
    pub soft: u64,
    pub hard: u64,
}

/// Where the replicas' output goes: a Docker logging driver and its options.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Logging {
    /// A logging driver the engine has (`json-file`, `local`, `journald`, `none`, ...).
    pub driver: LogDriver,
    /// The driver's options, e.g. `max-size: 10m` for `json-file`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub options: std::collections::BTreeMap<String, String>,
}

/// A logging driver's name: non-empty, without spaces.
#[derive(Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(with = "String", extend("pattern" = "^[A-Za-z0-9][A-Za-z0-9_./:-]*$"))]
pub struct LogDriver(String);

impl LogDriver {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LogDriver {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut bytes = s.bytes();
        let valid = s.len() <= 255
            && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
            && bytes.all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b':' | b'-')
            });
        if valid {
            Ok(LogDriver(s.to_owned()))
        } else {
            Err(format!(
                "`{s}` is not a logging driver name (examples: json-file, local, journald)"
            ))
        }
    }
}

impl fmt::Display for LogDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

deserialize_from_str!(LogDriver);

/// A host name for `/etc/hosts` (RFC 1123): dot-separated labels of letters, digits
/// and '-'.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[schemars(with = "String")]
pub struct HostName(String);

impl HostName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HostName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if s.len() <= 253 && s.split('.').all(label_ok) {
            Ok(HostName(s.to_owned()))
        } else {
            Err(format!(
                "`{s}` is not a host name: dot-separated labels of letters, digits and '-'"
            ))
        }
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

deserialize_from_str!(HostName);

/// Linux's signal names without `SIG` (`signal(7)`), in number order from 1.
const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

/// Aliases Docker accepts besides [`SIGNALS`].
const SIGNAL_ALIASES: &[&str] = &["IOT", "POLL", "CLD"];

/// The signal that asks a replica to stop: `SIGTERM`, `TERM`, `SIGRTMIN+3` or a number
/// from 1 to 64. Held as `SIGTERM`, or as the number.
#[derive(Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(with = "String")]
pub struct Signal(String);

impl Signal {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `RTMIN`, `RTMIN+n`, `RTMAX`, `RTMAX-n` within Linux's 30 real-time signals.
fn is_realtime(name: &str) -> bool {
    let offset = |rest: &str, sign: char| {
        rest.is_empty()
            || rest
                .strip_prefix(sign)
                .and_then(|n| n.parse::<u8>().ok())
                .is_some_and(|n| (1..=30).contains(&n))
    };
    name.strip_prefix("RTMIN").is_some_and(|r| offset(r, '+'))
        || name.strip_prefix("RTMAX").is_some_and(|r| offset(r, '-'))
}

impl FromStr for Signal {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(n) = s.parse::<u8>() {
            if (1..=64).contains(&n) {
                return Ok(Signal(n.to_string()));
            }
        }
        let upper = s.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        if SIGNALS.contains(&bare) || SIGNAL_ALIASES.contains(&bare) || is_realtime(bare) {
            Ok(Signal(format!("SIG{bare}")))
        } else {
            Err(format!(
                "`{s}` is not a signal: write a name (`SIGTERM`, `TERM`, `SIGQUIT`) or a \
                 number from 1 to 64"
            ))
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

deserialize_from_str!(Signal);

/// The variables of an env file, in order, as `docker run --env-file` reads one:
/// `KEY=VALUE` lines, the value verbatim after the first `=`; blank lines and lines
/// starting with `#` skipped; leading whitespace ignored. A `KEY` line without `=`
/// (which Docker fills from the client's environment) is an error: the controller's
/// environment is not the replicas'. On error: the 1-based line and what is wrong.
pub fn parse_env_file(text: &str) -> Result<Vec<(EnvName, String)>, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut vars = Vec::new();
    for (number, raw) in (1..).zip(text.lines()) {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err((number, format!("`{line}` has no `=`: write KEY=VALUE")));
        };
        if key.contains(char::is_whitespace) {
            return Err((number, format!("variable `{key}` contains whitespace")));
        }
        let name = key.parse::<EnvName>().map_err(|e| (number, e))?;
        vars.push((name, value.to_owned()));
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_env_file_reads_like_dockers_env_file() {
        let text = "# settings\n\nA=1\n  B=two=2\nC=\nD= spaced \r\n";
        let vars = parse_env_file(text).expect("valid");
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            vars,
            [("A", "1"), ("B", "two=2"), ("C", ""), ("D", " spaced ")]
        );
        assert_eq!(parse_env_file("A=1\nB\n").expect_err("no =").0, 2);
        assert_eq!(parse_env_file("\n=1\n").expect_err("no key").0, 2);
        assert!(parse_env_file("A B=1")
            .expect_err("space")
            .1
            .contains("whitespace"));
    }

    #[test]
    fn capabilities_are_read_with_or_without_their_prefix_in_any_case() {
        for text in ["NET_ADMIN", "CAP_NET_ADMIN", "net_admin", "cap_Net_Admin"] {
            assert_eq!(
                text.parse::<Capability>().expect(text).as_str(),
                "CAP_NET_ADMIN"
            );
        }
        assert_eq!("all".parse::<Capability>().expect("all").as_str(), "ALL");
        assert!("NET_FLY".parse::<Capability>().is_err());
        assert!("CAP_".parse::<Capability>().is_err());
    }

    #[test]
    fn users_are_a_name_or_id_with_an_optional_group() {
        for ok in [
            "1000",
            "1000:1000",
            "nobody",
            "www-data:www-data",
            "app:100",
        ] {
            assert!(ok.parse::<User>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            ":",
            "1000:",
            ":1000",
            "a b",
            "a:b:c",
            "-x",
            "99999999999",
        ] {
            assert!(bad.parse::<User>().is_err(), "{bad}");
        }
    }

    #[test]
    fn signals_are_names_with_or_without_sig_or_numbers_up_to_64() {
        for (text, held) in [
            ("SIGTERM", "SIGTERM"),
            ("TERM", "SIGTERM"),
            ("sigquit", "SIGQUIT"),
            ("15", "15"),
            ("64", "64"),
            ("SIGRTMIN+3", "SIGRTMIN+3"),
        ] {
            assert_eq!(text.parse::<Signal>().expect(text).as_str(), held);
        }
        for bad in ["0", "65", "SIGFOO", "", "RTMIN+31", "-1"] {
            assert!(bad.parse::<Signal>().is_err(), "{bad}");
        }
    }

    #[test]
    fn host_names_are_dot_separated_labels() {
        assert!("db.internal".parse::<HostName>().is_ok());
        assert!("db".parse::<HostName>().is_ok());
        for bad in ["", "db..internal", "-db", "db_internal", "a b"] {
            assert!(bad.parse::<HostName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn container_paths_are_absolute() {
        assert!("/www".parse::<ContainerPath>().is_ok());
        assert_eq!(
            "/www/".parse::<ContainerPath>().expect("path").normalized(),
            "/www"
        );
        assert!("www".parse::<ContainerPath>().is_err());
        assert!("/a:b".parse::<ContainerPath>().is_err());
    }

    #[test]
    fn volume_names_follow_the_engines_rule() {
        assert!(is_volume_name("cache"));
        assert!(is_volume_name("my_cache.v1-2"));
        assert!(!is_volume_name("c"));
        assert!(!is_volume_name("/cache"));
        assert!(!is_volume_name("_cache"));
    }
}
