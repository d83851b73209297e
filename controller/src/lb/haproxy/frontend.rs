//! The shared frontends of the managed configuration (`kind: Frontend`): binds, TLS,
//! the redirect to HTTPS, and the routes to the services' backends. Pure: what it
//! renders is part of the configuration's shape, so adding, removing or changing a
//! route is one reload; certificates are only named here (their files are written by
//! [`super::tls`], and swapped at runtime without a reload).

use std::fmt::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::spec::frontend::{Frontend, HostPattern, INTERMEDIATE_CIPHERS};

/// The backend that answers requests no route matches.
pub const NOT_FOUND_BACKEND: &str = "dockscale-not-found";

/// One frontend as rendered.
#[derive(Clone, Debug, PartialEq)]
pub struct FrontendConfig {
    pub name: String,
    pub binds: Vec<SocketAddr>,
    /// TLS on every address of `binds`, when set.
    pub tls: Option<TlsConfig>,
    /// Plain-HTTP addresses that redirect to HTTPS.
    pub redirect_from: Vec<SocketAddr>,
    /// Most specific first.
    pub routes: Vec<RouteConfig>,
    /// The backend of requests no route matches; `None`: a 404.
    pub default_backend: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TlsConfig {
    /// The crt-list file naming the certificates, the default first.
    pub crt_list: PathBuf,
    /// The certificate files it lists (part of the shape: a certificate added or
    /// removed is a reload; one whose content changes is swapped at runtime).
    pub certificates: Vec<PathBuf>,
    pub alpn: Vec<&'static str>,
    pub min_version: &'static str,
    pub ciphers: String,
    pub ciphersuites: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RouteConfig {
    pub host: Option<HostPattern>,
    /// Without its trailing `/`; `None` (or `/`): any path.
    pub path_prefix: Option<String>,
    pub backend: String,
}

impl FrontendConfig {
    /// The frontend of a document; `backend_of` names each routed service's backend
    /// (validation made sure it has one). `crt_list` is where its certificates are
    /// listed, for a frontend with TLS.
    pub fn of(
        frontend: &Frontend,
        backend_of: impl Fn(&str) -> Option<String>,
        crt_list: PathBuf,
        certificates: Vec<PathBuf>,
    ) -> Self {
        let spec = &frontend.spec;
        let routes = frontend
            .routes_by_precedence()
            .into_iter()
            .filter_map(|r| {
                Some(RouteConfig {
                    host: r.host.clone(),
                    path_prefix: r
                        .path_prefix
                        .as_ref()
                        .map(|p| p.as_str().trim_end_matches('/').to_owned())
                        .filter(|p| !p.is_empty()),
                    backend: backend_of(r.service.as_str())?,
                })
            })
            .collect();
        FrontendConfig {
            name: frontend.name().to_owned(),
            binds: spec.bind.clone(),
            tls: spec.tls.as_ref().map(|t| TlsConfig {
                crt_list,
                certificates,
                alpn: t.alpn.iter().map(|a| a.as_str()).collect(),
                min_version: t.min_version.as_str(),
                ciphers: t
                    .ciphers
                    .clone()
                    .unwrap_or_else(|| INTERMEDIATE_CIPHERS.to_owned()),
                ciphersuites: t.ciphersuites.clone(),
            }),
            redirect_from: spec.redirect_from.clone(),
            routes,
            default_backend: spec
                .default_service
                .as_ref()
                .and_then(|s| backend_of(s.as_str())),
        }
    }

    /// The `frontend` section (named `frontend-<name>`, apart from the services' own).
    pub fn render(&self, out: &mut String) {
        // TLS binds without a certificate cannot listen: they are left out (the
        // frontend's status says why) until one is valid.
        let binds: &[SocketAddr] = match &self.tls {
            Some(tls) if tls.certificates.is_empty() => &[],
            _ => &self.binds,
        };
        if binds.is_empty() && self.redirect_from.is_empty() {
            return;
        }
        let _ = writeln!(out, "\nfrontend frontend-{}", self.name);
        if let Some(tls) = &self.tls {
            for cert in &tls.certificates {
                let _ = writeln!(out, "    # certificate {}", cert.display());
            }
        }
        for bind in binds {
            let _ = match &self.tls {
                Some(tls) => writeln!(out, "    bind {bind} {}", tls.bind_options()),
                None => writeln!(out, "    bind {bind}"),
            };
        }
        for bind in &self.redirect_from {
            let _ = writeln!(out, "    bind {bind}");
        }
        if !self.redirect_from.is_empty() {
            let _ = writeln!(out, "    {}", self.redirect());
        }
        if self.tls.is_some() {
            // Tells the services' applications the request came over HTTPS.
            let _ = writeln!(
                out,
                "    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}"
            );
        }
        if !self.routes.is_empty() {
            // The host without a port, lowercase; HTTP/2's :authority is the Host.
            let _ = writeln!(
                out,
                "    http-request set-var(txn.dockscale_host) req.hdr(host),field(1,:),lower"
            );
        }
        for (i, route) in self.routes.iter().enumerate() {
            let mut conditions = Vec::new();
            match &route.host {
                Some(HostPattern::Exact(h)) => {
                    let _ = writeln!(
                        out,
                        "    acl route{i}_host var(txn.dockscale_host) -m str {h}"
                    );
                    conditions.push(format!("route{i}_host"));
                }
                Some(HostPattern::Wildcard(suffix)) => {
                    let _ = writeln!(
                        out,
                        "    acl route{i}_host var(txn.dockscale_host) -m end {suffix}"
                    );
                    conditions.push(format!("route{i}_host"));
                }
                None => {}
            }
            if let Some(prefix) = &route.path_prefix {
                // Whole segments: `/v1` and `/v1/...`, not `/v10`.
                let _ = writeln!(out, "    acl route{i}_path path {prefix}");
                let _ = writeln!(out, "    acl route{i}_path path_beg {prefix}/");
                conditions.push(format!("route{i}_path"));
            }
            let _ = if conditions.is_empty() {
                writeln!(out, "    use_backend {}", route.backend)
            } else {
                writeln!(
                    out,
                    "    use_backend {} if {}",
                    route.backend,
                    conditions.join(" ")
                )
            };
        }
        let default = self.default_backend.as_deref().unwrap_or(NOT_FOUND_BACKEND);
        let _ = writeln!(out, "    default_backend {default}");
    }

    /// HTTP to HTTPS, on the TLS bind's port (443: the plain `https://host/`).
    fn redirect(&self) -> String {
        match self.binds.first().map(SocketAddr::port) {
            Some(443) | None => {
                "http-request redirect scheme https code 308 unless { ssl_fc }".to_owned()
            }
            Some(port) => format!(
                "http-request redirect location \
                 https://%[req.hdr(host),field(1,:)]:{port}%[capture.req.uri] code 308 \
                 unless {{ ssl_fc }}"
            ),
        }
    }

    /// Whether no route nor default leads anywhere but the 404 backend.
    pub fn needs_not_found(&self) -> bool {
        self.default_backend.is_none()
    }
}

impl TlsConfig {
    fn bind_options(&self) -> String {
        let mut options = format!(
            "ssl crt-list {} alpn {} ssl-min-ver {} ciphers {}",
            self.crt_list.display(),
            self.alpn.join(","),
            self.min_version,
            self.ciphers
        );
        if let Some(suites) = &self.ciphersuites {
            let _ = write!(options, " ciphersuites {suites}");
        }
        options
    }
}

/// The backend answering 404 to requests no route matches.
pub fn render_not_found(out: &mut String) {
    let _ = write!(
        out,
        "
backend {NOT_FOUND_BACKEND}
    http-request return status 404 content-type text/plain string \"no route for this host and path\\n\"
"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::manifest;

    fn frontend(yaml: &str) -> Frontend {
        let text = format!(
            "apiVersion: dockscale/v1alpha1\nkind: ScaledService\nmetadata: {{name: web}}\n\
             spec: {{template: {{image: x, port: 80}}, loadBalancer: {{backend: web-be}}}}\n\
             ---\n\
             apiVersion: dockscale/v1alpha1\nkind: ScaledService\nmetadata: {{name: api}}\n\
             spec: {{template: {{image: x, port: 80}}, loadBalancer: {{backend: api-be}}}}\n\
             ---\n{yaml}"
        );
        let loaded = manifest::parse_all(std::path::Path::new("/etc/dockscale/f.yaml"), &text)
            .expect("valid");
        loaded.frontends[0].frontend.clone()
    }

    fn rendered(f: &Frontend) -> String {
        let backend_of = |s: &str| Some(format!("{s}-be"));
        let config = FrontendConfig::of(
            f,
            backend_of,
            "/state/tls/public.crtlist".into(),
            vec!["/state/tls/public/0.pem".into()],
        );
        let mut out = String::new();
        config.render(&mut out);
        out
    }

    #[test]
    fn routes_render_most_specific_first_with_whole_segment_paths() {
        let f = frontend(
            "apiVersion: dockscale/v1alpha1\nkind: Frontend\nmetadata: {name: public}\n\
             spec:\n  bind: [127.0.0.1:8080]\n  routes:\n\
             \x20   - {pathPrefix: /v1/, service: api}\n\
             \x20   - {host: Shop.Example.com, service: web}\n\
             \x20   - {host: \"*.example.com\", pathPrefix: /v1, service: api}\n\
             \x20 defaultService: web\n",
        );
        let text = rendered(&f);
        let expected = "
frontend frontend-public
    bind 127.0.0.1:8080
    http-request set-var(txn.dockscale_host) req.hdr(host),field(1,:),lower
    acl route0_host var(txn.dockscale_host) -m str shop.example.com
    use_backend web-be if route0_host
    acl route1_host var(txn.dockscale_host) -m end .example.com
    acl route1_path path /v1
    acl route1_path path_beg /v1/
    use_backend api-be if route1_host route1_path
    acl route2_path path /v1
    acl route2_path path_beg /v1/
    use_backend api-be if route2_path
    default_backend web-be
";
        assert_eq!(text, expected);
    }

    #[test]
    fn tls_binds_offer_alpn_and_the_redirect_keeps_the_https_port() {
        let f = frontend(
            "apiVersion: dockscale/v1alpha1\nkind: Frontend\nmetadata: {name: public}\n\
             spec:\n  bind: [127.0.0.1:8443]\n  redirectFrom: [127.0.0.1:8080]\n\
             \x20 tls: {certificates: [certs/]}\n  defaultService: web\n",
        );
        let text = rendered(&f);
        assert!(
            text.contains(
                "    bind 127.0.0.1:8443 ssl crt-list /state/tls/public.crtlist alpn h2,http/1.1 \
                 ssl-min-ver TLSv1.2 ciphers ECDHE-ECDSA-AES128-GCM-SHA256:"
            ),
            "{text}"
        );
        assert!(text.contains("    bind 127.0.0.1:8080\n"), "{text}");
        assert!(
            text.contains(
                "http-request redirect location https://%[req.hdr(host),field(1,:)]:8443\
                 %[capture.req.uri] code 308 unless { ssl_fc }"
            ),
            "{text}"
        );
        assert!(text.ends_with("    default_backend web-be\n"), "{text}");
        assert_eq!(
            f.spec.tls.as_ref().map(|t| t.certificates[0].clone()),
            Some("/etc/dockscale/certs/".into()),
            "relative to the spec file"
        );
    }

    #[test]
    fn a_frontend_without_a_default_sends_the_rest_to_the_404_backend() {
        let f = frontend(
            "apiVersion: dockscale/v1alpha1\nkind: Frontend\nmetadata: {name: public}\n\
             spec:\n  bind: [127.0.0.1:8080]\n  routes: [{host: a.example.com, service: web}]\n",
        );
        let text = rendered(&f);
        assert!(
            text.ends_with(&format!("    default_backend {NOT_FOUND_BACKEND}\n")),
            "{text}"
        );
    }
}
