//! The `Frontend` document: several services behind one address, routed by host name
//! and path prefix, optionally with TLS (like an Ingress). Types only, as fixed in
//! DESIGN.md; the rules across documents (binds claimed twice, routes to services that
//! do not exist, ties) live in [`crate::spec::manifest`], which knows where each value
//! came from. No I/O here: certificate files are read by the load balancer.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ApiVersion, DnsLabel, HttpPath};

/// The only `kind` of a frontend document.
pub const FRONTEND_KIND: &str = "Frontend";

/// Several services behind one address.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "Frontend", extend("additionalProperties" = false))]
pub struct Frontend {
    /// Must be `dockscale/v1alpha1`.
    pub api_version: ApiVersion,
    /// Must be `Frontend`.
    pub kind: FrontendKind,
    pub metadata: FrontendMetadata,
    pub spec: FrontendSpec,
}

impl Frontend {
    pub fn name(&self) -> &str {
        self.metadata.name.as_str()
    }

    /// The routes, most specific first: exact host names before wildcards (longer
    /// suffixes first) before any host, then longer path prefixes first.
    pub fn routes_by_precedence(&self) -> Vec<&Route> {
        let mut routes: Vec<&Route> = self.spec.routes.iter().collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.specificity()));
        routes
    }
}

/// The document kind of a frontend: `Frontend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[schemars(with = "FrontendKindSchema")]
pub struct FrontendKind;

#[derive(JsonSchema)]
#[allow(dead_code)] // exists only to describe the schema
enum FrontendKindSchema {
    Frontend,
}

impl Serialize for FrontendKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(FRONTEND_KIND)
    }
}

impl<'de> Deserialize<'de> for FrontendKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == FRONTEND_KIND {
            Ok(FrontendKind)
        } else {
            Err(serde::de::Error::custom(format!(
                "unsupported kind `{s}`, expected `{FRONTEND_KIND}`"
            )))
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FrontendMetadata {
    /// The frontend's name: a DNS label, unique among frontends.
    pub name: DnsLabel,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FrontendSpec {
    /// Where it listens (HTTPS with `tls`, else plain HTTP).
    #[schemars(length(min = 1))]
    pub bind: Vec<SocketAddr>,
    /// TLS termination: certificates chosen by SNI, ALPN, protocol versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// Plain-HTTP addresses that redirect every request to HTTPS (needs `tls`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redirect_from: Vec<SocketAddr>,
    /// Routes by host name and path prefix; the most specific match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// The service of requests no route matches (else they get a 404).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_service: Option<DnsLabel>,
}

/// TLS termination on a frontend's binds.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tls {
    /// PEM files holding a certificate (with its chain) and its private key, or
    /// directories of them (`*.pem`, `*.crt` with the key in the same file or in a
    /// `.key` file of the same stem). Relative paths are from the spec file's
    /// directory. SNI picks among them by their names; the first is the default.
    #[schemars(length(min = 1))]
    pub certificates: Vec<PathBuf>,
    /// Protocols offered by ALPN, in order of preference.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<AlpnProtocol>,
    /// The oldest TLS version accepted.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// OpenSSL cipher list for TLS 1.2 and older (HAProxy's `ciphers`); default:
    /// Mozilla's "intermediate" list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ciphers: Option<String>,
    /// TLS 1.3 cipher suites (HAProxy's `ciphersuites`); default: OpenSSL's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ciphersuites: Option<String>,
}

fn default_alpn() -> Vec<AlpnProtocol> {
    vec![AlpnProtocol::H2, AlpnProtocol::Http11]
}

/// Mozilla's "intermediate" TLS 1.2 cipher list (ECDHE with AES-GCM or ChaCha20).
pub const INTERMEDIATE_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:\
ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384";

/// A protocol offered by ALPN.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlpnProtocol {
    #[serde(rename = "h2")]
    H2,
    #[serde(rename = "http/1.1")]
    Http11,
}

impl AlpnProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            AlpnProtocol::H2 => "h2",
            AlpnProtocol::Http11 => "http/1.1",
        }
    }
}

/// A TLS protocol version, as HAProxy names them.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsVersion {
    #[serde(rename = "TLSv1.0")]
    Tls10,
    #[serde(rename = "TLSv1.1")]
    Tls11,
    #[default]
    #[serde(rename = "TLSv1.2")]
    Tls12,
    #[serde(rename = "TLSv1.3")]
    Tls13,
}

impl TlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls10 => "TLSv1.0",
            TlsVersion::Tls11 => "TLSv1.1",
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        }
    }
}

/// One route: requests whose host and path match go to `service`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// An exact host name (`shop.example.com`) or a wildcard (`*.example.com`: any
    /// name under it). Without it, any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostPattern>,
    /// A path prefix, matched on whole segments: `/v1` matches `/v1` and `/v1/x`, not
    /// `/v10`. Without it, any path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<HttpPath>,
    /// The service: one with a `loadBalancer` and no `bind` of its own.
    pub service: DnsLabel,
}

impl Route {
    /// Orders routes: the host first (exact, then wildcards by length, then none),
    /// then the path prefix's length. Two routes of equal specificity and equal
    /// matches are a validation error.
    pub fn specificity(&self) -> (u8, usize, usize) {
        let (rank, len) = match &self.host {
            Some(HostPattern::Exact(h)) => (2, h.len()),
            Some(HostPattern::Wildcard(suffix)) => (1, suffix.len()),
            None => (0, 0),
        };
        let path = self
            .path_prefix
            .as_ref()
            .map_or(0, |p| p.as_str().trim_end_matches('/').len());
        (rank, len, path)
    }

    /// What the route matches, normalised: two routes with the same key are a tie.
    pub fn key(&self) -> (Option<String>, String) {
        let path = self
            .path_prefix
            .as_ref()
            .map_or("", |p| p.as_str().trim_end_matches('/'))
            .to_owned();
        (self.host.as_ref().map(|h| h.to_string()), path)
    }
}

/// A host name to match: exact, or `*.` and a suffix.
#[derive(Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(with = "String")]
pub enum HostPattern {
    /// Lowercase.
    Exact(String),
    /// The suffix with its leading dot (`.example.com`), lowercase.
    Wildcard(String),
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!(
                "`{s}` is not a host name: DNS labels separated by dots, or `*.` and one \
                 (`*.example.com`)"
            ));
        }
        Ok(if wildcard {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

impl Serialize for HostPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_are_exact_names_or_one_leading_wildcard() {
        assert_eq!(
            "Shop.Example.com".parse::<HostPattern>(),
            Ok(HostPattern::Exact("shop.example.com".into()))
        );
        assert_eq!(
            "*.api.example.com".parse::<HostPattern>(),
            Ok(HostPattern::Wildcard(".api.example.com".into()))
        );
        for bad in [
            "", "*", "*.", "a..b", "-a.b", "a.*.b", "a b", "a_b.c", "*.*.b",
        ] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn routes_are_ordered_exact_host_then_wildcard_then_any_then_longer_paths() {
        let route = |host: Option<&str>, path: Option<&str>| Route {
            host: host.map(|h| h.parse().expect("host")),
            path_prefix: path.map(|p| p.parse().expect("path")),
            service: "s".parse().expect("name"),
        };
        let mut routes = [
            route(None, Some("/v1")),
            route(Some("*.example.com"), None),
            route(Some("a.example.com"), None),
            route(Some("*.api.example.com"), None),
            route(Some("a.example.com"), Some("/v1/")),
            route(None, None),
        ];
        routes.sort_by_key(|r| std::cmp::Reverse(r.specificity()));
        let keys: Vec<_> = routes.iter().map(Route::key).collect();
        assert_eq!(
            keys,
            [
                (Some("a.example.com".into()), "/v1".into()),
                (Some("a.example.com".into()), String::new()),
                (Some("*.api.example.com".into()), String::new()),
                (Some("*.example.com".into()), String::new()),
                (None, "/v1".into()),
                (None, String::new()),
            ]
        );
    }
}
