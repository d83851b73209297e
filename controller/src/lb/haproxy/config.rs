//! The managed HAProxy's configuration, rendered from the services. Pure.
//!
//! One frontend and one backend per service with a load balancer, each backend a pool
//! of server slots (the HAProxy Kubernetes ingress controller's way): slots are filled
//! and freed at runtime with `set server ... addr` and `state`, keep stickiness cookies
//! (dynamic cookies derived from each server's address) and never take HAProxy 2.6's
//! `del server` paths. A free slot is in maintenance, weight 0, address 0.0.0.0.
//!
//! The configuration's *shape* (services, binds, slot counts, server options) changes
//! only when services change, or when a service may run more replicas than its pool
//! holds ([`BackendConfig::pool_size`]: pools grow, never shrink); other replica changes
//! are runtime commands and never touch it.
//! When the shape does change, the file is rendered with every slot's current address,
//! weight and state written in (HAProxy 2.6 does not restore an IP-literal server's
//! address from the server-state file), so a reload loses no server; the state file
//! then carries over health and drain states.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::frontend::{render_not_found, FrontendConfig};
use super::hold::{HoldConfig, SCRIPT_FILE};
use crate::spec::{HealthCheck, ScaledService, ServerOptions};

/// Prefix of slot names: `slot1`, `slot2`, ...
pub const SLOT_PREFIX: &str = "slot";
/// The stickiness cookie the managed backends insert.
pub const COOKIE_NAME: &str = "DSSERVER";
/// The first line of a rendered file, followed by its shape digest.
const SHAPE_MARKER: &str = "# dockscale-config-shape: ";

/// One service's frontend and backend.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendConfig {
    pub service: String,
    pub backend: String,
    pub bind: Option<SocketAddr>,
    pub port: u16,
    /// Slots in the rendered backend.
    pub slots: u32,
    /// Replicas the service may run at once: the least pool that holds them.
    pub needed: u32,
    pub server: ServerOptions,
    /// The HTTP health check, when the service has one (else checks are TCP connects).
    pub health: Option<HealthCheck>,
    /// Slots in use, by number (1-based), as observed just before rendering.
    pub assigned: BTreeMap<u32, AssignedSlot>,
    /// Scale to zero: requests are held while no server is usable.
    pub hold: Option<HoldConfig>,
}

/// A slot's live settings, written into the file on a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AssignedSlot {
    pub addr: SocketAddrV4,
    pub weight: u32,
    /// In rotation (ready or draining); otherwise it stays in maintenance.
    pub enabled: bool,
}

/// The slot number of a slot's server name (`slot7` → 7), `None` for other servers.
pub fn slot_number(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(SLOT_PREFIX)?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl BackendConfig {
    /// The frontend and backend of a service, `None` without a load balancer.
    pub fn of(service: &ScaledService) -> Option<Self> {
        let lb = service.spec.load_balancer.as_ref()?;
        Some(BackendConfig {
            service: service.name().to_owned(),
            backend: lb.backend.to_string(),
            bind: lb.bind,
            port: service.spec.template.port.unwrap_or(80),
            slots: slots_for(service),
            needed: slots_needed(service),
            server: lb.server.clone(),
            health: lb.health_check.clone(),
            assigned: BTreeMap::new(),
            hold: service
                .spec
                .autoscale
                .as_ref()
                .and_then(|a| a.scales_to_zero())
                .map(|z| HoldConfig {
                    timeout: z.activation_timeout.get(),
                }),
        })
    }

    /// Room for `members` hand-started members besides the replicas: they need slots
    /// too.
    pub fn with_members(mut self, members: u32) -> Self {
        if members > 0 {
            self.needed = self.needed.saturating_add(members);
            self.slots = pool_for(self.needed);
        }
        self
    }

    /// The pool for this backend given the one HAProxy runs (`None`: not running yet).
    /// A running pool is kept while it holds every replica the service may run: a
    /// smaller count never shrinks it, so scaling down never reloads. It grows, to
    /// [`slots_for`], only when it is too small. Slots in use are always kept.
    pub fn pool_size(&self, running: Option<u32>) -> u32 {
        let highest = self.assigned.keys().max().copied().unwrap_or(0);
        let pool = match running {
            Some(r) if r >= self.needed => r,
            Some(r) => self.slots.max(r),
            None => self.slots,
        };
        pool.max(highest)
    }
}

/// Slots for a new backend: room for the most replicas the service may run at once
/// ([`slots_needed`]), doubled, in steps of 8 and at least 16, so that editing
/// `replicas` seldom outgrows the pool (growing it needs a reload).
pub fn slots_for(service: &ScaledService) -> u32 {
    pool_for(slots_needed(service))
}

/// The pool rendered for `needed` servers at once: doubled, in steps of 8, at least 16.
pub fn pool_for(needed: u32) -> u32 {
    needed
        .saturating_mul(2)
        .max(16)
        .div_ceil(8)
        .saturating_mul(8)
}

/// The most replicas a service may run at once: its count or its autoscaling maximum,
/// plus the rollout surge.
pub fn slots_needed(service: &ScaledService) -> u32 {
    let spec = &service.spec;
    let most = spec
        .autoscale
        .as_ref()
        .map_or(spec.replicas, |a| a.max_replicas.max(spec.replicas));
    most.saturating_add(spec.rollout.max_surge)
}

/// Everything the managed configuration is made of.
#[derive(Clone, Debug, PartialEq)]
pub struct ManagedConfig {
    pub socket: String,
    pub pidfile: String,
    pub state_file: String,
    /// The scale-to-zero Lua script, loaded when a backend holds requests.
    pub lua_script: String,
    /// Where HAProxy's own Prometheus exporter listens (`/metrics`, and `/stats`).
    pub exporter: SocketAddr,
    /// Secret for the dynamic stickiness cookies.
    pub cookie_key: String,
    pub backends: Vec<BackendConfig>,
    /// The shared frontends (`kind: Frontend`).
    pub frontends: Vec<FrontendConfig>,
}

impl ManagedConfig {
    pub fn new(
        state_dir: &Path,
        exporter: SocketAddr,
        cookie_key: &str,
        backends: Vec<BackendConfig>,
    ) -> Self {
        let path = |name: &str| state_dir.join(name).display().to_string();
        ManagedConfig {
            socket: path("haproxy.sock"),
            pidfile: path("haproxy.pid"),
            state_file: path("haproxy.state"),
            lua_script: path(SCRIPT_FILE),
            exporter,
            cookie_key: cookie_key.to_owned(),
            backends,
            frontends: Vec::new(),
        }
    }

    pub fn with_frontends(mut self, frontends: Vec<FrontendConfig>) -> Self {
        self.frontends = frontends;
        self
    }

    /// A digest of everything but the slots' live settings: when it is unchanged the
    /// running HAProxy needs no reload.
    pub fn shape(&self) -> String {
        let mut bare = self.clone();
        for b in &mut bare.backends {
            b.assigned.clear();
        }
        let digest = Sha256::digest(bare.render_body().as_bytes());
        digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
    }

    /// The shape recorded in a rendered file's first line.
    pub fn shape_of(text: &str) -> Option<&str> {
        text.lines().next()?.strip_prefix(SHAPE_MARKER)
    }

    /// The configuration file's text.
    pub fn render(&self) -> String {
        format!("{SHAPE_MARKER}{}\n{}", self.shape(), self.render_body())
    }

    fn render_body(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "\
# Generated by dockscale. Do not edit: it is rewritten when services change.
# Replica changes never touch it; they go through the runtime API socket.
global
    master-worker
    stats socket {socket} mode 600 level admin expose-fd listeners
    stats timeout 30s
    pidfile {pidfile}
    server-state-file {state}
    hard-stop-after 60s
{lua}
defaults
    mode http
    option dontlognull
    # A dead container's address goes silent: a connect to it in the instant before
    # it leaves rotation fails fast and is retried on another server.
    timeout connect 500ms
    timeout client 60s
    timeout server 60s
    timeout queue 60s
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout check 2s
    # A request whose server refused or vanished is retried on another server.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
    # A replica that vanishes without a word (its network cut, its node gone) leaves
    # requests waiting on a dead connection for the whole server timeout: TCP keepalive
    # finds such a connection dead within about 3 s, and its request is retried on
    # another server (empty-response) instead.
    option srvtcpka
    srvtcpka-idle 1s
    srvtcpka-intvl 1s
    srvtcpka-cnt 2
    load-server-state-from-file global

frontend dockscale-haproxy-metrics
    bind {exporter}
    http-request use-service prometheus-exporter if {{ path /metrics }}
    stats enable
    stats uri /stats
    stats refresh 5s
",
            socket = self.socket,
            pidfile = self.pidfile,
            state = self.state_file,
            exporter = self.exporter,
            lua = if self.backends.iter().any(|b| b.hold.is_some()) {
                format!("    lua-load {}\n", self.lua_script)
            } else {
                String::new()
            },
        );
        for b in &self.backends {
            if let Some(bind) = b.bind {
                let _ = write!(
                    out,
                    "
frontend {service}
    bind {bind}
    default_backend {backend}
",
                    service = b.service,
                    backend = b.backend,
                );
            }
            // A failed connect marks the server DOWN at once (and checks it again):
            // the retries of the requests behind it go elsewhere, not to its
            // neighbours in the round robin that died with it (a node going down).
            let check = match (&b.server.check, &b.health) {
                (false, _) => String::new(),
                (true, None) => " check inter 1s fall 2 rise 2 observe layer4 error-limit 1 \
                                 on-error mark-down"
                    .to_owned(),
                (true, Some(h)) => format!(
                    " check inter {}ms fall {} rise {} observe layer4 error-limit 1 \
                     on-error mark-down",
                    h.interval.get().as_millis(),
                    h.fall,
                    h.rise
                ),
            };
            let httpchk = match (&b.server.check, &b.health) {
                (true, Some(h)) => format!(
                    "    option httpchk\n    \
                     http-check send meth {} uri {} ver HTTP/1.1 hdr Host {}\n    \
                     http-check expect status {}\n    \
                     timeout check {}ms\n",
                    h.method.as_str(),
                    h.path,
                    b.service,
                    h.expect_status,
                    h.timeout.get().as_millis()
                ),
                _ => String::new(),
            };
            let maxconn = b
                .server
                .maxconn
                .map(|m| format!(" maxconn {m}"))
                .unwrap_or_default();
            let _ = write!(
                out,
                "
backend {backend}
    balance roundrobin
{hold}    cookie {COOKIE_NAME} insert indirect nocache dynamic
    dynamic-cookie-key {key}
{httpchk}    default-server{check}{maxconn}
",
                backend = b.backend,
                key = self.cookie_key,
                hold = b.hold.map(|h| h.render()).unwrap_or_default(),
            );
            for n in 1..=b.slots {
                let _ = match b.assigned.get(&n) {
                    Some(a) => writeln!(
                        out,
                        "    server {SLOT_PREFIX}{n} {addr} weight {weight}{disabled}",
                        addr = a.addr,
                        weight = a.weight,
                        disabled = if a.enabled { "" } else { " disabled" },
                    ),
                    None => writeln!(
                        out,
                        "    server {SLOT_PREFIX}{n} 0.0.0.0:{port} weight 0 disabled",
                        port = b.port
                    ),
                };
            }
        }
        for f in &self.frontends {
            f.render(&mut out);
        }
        if self.frontends.iter().any(FrontendConfig::needs_not_found) {
            render_not_found(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn slots_cover_the_autoscaling_maximum_and_the_surge_twice() {
        let plain = testing::spec().replicas(3).lb().build_service("web");
        assert_eq!(slots_for(&plain), 16);
        let big = testing::spec().replicas(30).lb().build_service("web");
        assert_eq!(slots_for(&big), 64);
        let scaled = testing::spec()
            .replicas(2)
            .lb()
            .autoscale(1, 10)
            .build_service("web");
        assert_eq!(slots_for(&scaled), 24);
    }

    #[test]
    fn members_seen_join_what_the_pool_must_hold() {
        let fifteen = backend_of(15);
        assert_eq!(fifteen.needed, 16);
        assert_eq!(fifteen.clone().with_members(0), fifteen);
        let with_members = fifteen.with_members(3);
        assert_eq!(with_members.needed, 19);
        assert_eq!(with_members.slots, 40);
        // A running pool of 16 no longer holds them: it grows (one reload).
        assert_eq!(with_members.pool_size(Some(16)), 40);
        // One that holds them is kept.
        assert_eq!(backend_of(2).with_members(3).pool_size(Some(16)), 16);
    }

    fn backend_of(replicas: u32) -> BackendConfig {
        BackendConfig::of(&testing::spec().replicas(replicas).lb().build_service("web"))
            .expect("a load balancer")
    }

    #[test]
    fn a_running_pool_is_kept_while_it_holds_every_replica() {
        // Scaling down never shrinks the pool (a reload), whatever the new count needs.
        assert_eq!(backend_of(0).pool_size(Some(104)), 104);
        assert_eq!(backend_of(2).pool_size(Some(24)), 24);
        // Growing within the pool keeps it: 60 replicas + the surge fit in 104.
        assert_eq!(backend_of(60).pool_size(Some(104)), 104);
        // Exactly full still fits.
        assert_eq!(backend_of(15).pool_size(Some(16)), 16);
    }

    #[test]
    fn a_pool_too_small_grows_to_twice_the_need() {
        let fifty = backend_of(50);
        assert_eq!(fifty.needed, 51);
        assert_eq!(fifty.pool_size(Some(16)), 104);
        assert_eq!(backend_of(16).pool_size(Some(16)), 40);
        // A new backend gets the comfortable size.
        assert_eq!(fifty.pool_size(None), 104);
        assert_eq!(backend_of(0).pool_size(None), 16);
    }

    #[test]
    fn a_pool_never_drops_a_slot_in_use() {
        let mut b = backend_of(1);
        b.assigned.insert(
            40,
            AssignedSlot {
                addr: "10.0.0.9:8080".parse().expect("addr"),
                weight: 100,
                enabled: true,
            },
        );
        assert_eq!(b.pool_size(None), 40);
        assert_eq!(b.pool_size(Some(16)), 40);
    }

    #[test]
    fn the_config_has_a_frontend_and_a_slot_backend_per_service() {
        let service = testing::spec().replicas(2).lb().build_service("web");
        let backend = BackendConfig::of(&service).expect("has a load balancer");
        let cfg = ManagedConfig::new(
            Path::new("/run/ds"),
            "127.0.0.1:9181".parse().expect("addr"),
            "secret",
            vec![backend],
        );
        let text = cfg.render();
        assert!(text.contains("stats socket /run/ds/haproxy.sock mode 600 level admin"));
        assert!(text.contains("server-state-file /run/ds/haproxy.state"));
        assert!(text.contains("frontend web\n    bind 127.0.0.1:8080\n    default_backend web\n"));
        assert!(text.contains(
            "    default-server check inter 1s fall 2 rise 2 \
             observe layer4 error-limit 1 on-error mark-down\n"
        ));
        assert!(text.contains("    server slot1 0.0.0.0:8080 weight 0 disabled\n"));
        assert!(text.contains("    server slot16 0.0.0.0:8080 weight 0 disabled\n"));
        assert!(!text.contains("slot17"));
        assert!(text.contains("cookie DSSERVER insert indirect nocache dynamic"));
        assert!(text.contains("http-request use-service prometheus-exporter if { path /metrics }"));
        assert!(!text.contains("httpchk"), "no HTTP check unless asked for");
    }

    #[test]
    fn an_http_health_check_becomes_httpchk_and_its_timings_the_servers_checks() {
        let mut service = testing::spec().replicas(2).lb().build_service("web");
        let lb = service.spec.load_balancer.as_mut().expect("lb");
        lb.health_check = Some(
            serde_saphyr::from_str(
                "{path: /healthz, method: HEAD, expectStatus: 200-299, interval: 3s, \
                 timeout: 500ms, rise: 1, fall: 4}",
            )
            .expect("a health check"),
        );
        let backend = BackendConfig::of(&service).expect("has a load balancer");
        let text = ManagedConfig::new(
            Path::new("/run/ds"),
            "127.0.0.1:9181".parse().expect("addr"),
            "secret",
            vec![backend],
        )
        .render();
        assert!(
            text.contains(
                "    option httpchk\n    \
             http-check send meth HEAD uri /healthz ver HTTP/1.1 hdr Host web\n    \
             http-check expect status 200-299\n    \
             timeout check 500ms\n    \
             default-server check inter 3000ms fall 4 rise 1 observe layer4 error-limit 1 \
             on-error mark-down\n"
            ),
            "{text}"
        );
    }

    fn config_with(assigned: &[(u32, &str, u32, bool)]) -> ManagedConfig {
        let service = testing::spec().replicas(2).lb().build_service("web");
        let mut backend = BackendConfig::of(&service).expect("has a load balancer");
        for (n, addr, weight, enabled) in assigned {
            backend.assigned.insert(
                *n,
                AssignedSlot {
                    addr: addr.parse().expect("addr"),
                    weight: *weight,
                    enabled: *enabled,
                },
            );
        }
        ManagedConfig::new(
            Path::new("/run/ds"),
            "127.0.0.1:9181".parse().expect("addr"),
            "secret",
            vec![backend],
        )
    }

    #[test]
    fn a_reload_config_carries_every_slots_live_address_and_weight() {
        let text = config_with(&[
            (1, "10.0.0.2:8080", 100, true),
            (3, "10.0.0.4:8080", 0, false),
        ])
        .render();
        assert!(text.contains("    server slot1 10.0.0.2:8080 weight 100\n"));
        assert!(text.contains("    server slot2 0.0.0.0:8080 weight 0 disabled\n"));
        assert!(text.contains("    server slot3 10.0.0.4:8080 weight 0 disabled\n"));
    }

    #[test]
    fn the_shape_ignores_live_slots_but_not_services() {
        let empty = config_with(&[]);
        let busy = config_with(&[(1, "10.0.0.2:8080", 100, true)]);
        assert_eq!(empty.shape(), busy.shape());
        assert_eq!(
            ManagedConfig::shape_of(&busy.render()),
            Some(empty.shape().as_str())
        );
        let mut more = empty.clone();
        more.backends[0].slots = 24;
        assert_ne!(more.shape(), empty.shape());
        let mut no_check = empty.clone();
        no_check.backends[0].server.check = false;
        assert_ne!(no_check.shape(), empty.shape());
    }

    #[test]
    fn a_backend_that_scales_to_zero_holds_requests_while_no_server_is_usable() {
        let mut service = testing::spec()
            .replicas(1)
            .lb()
            .autoscale(1, 4)
            .build_service("web");
        let a = service.spec.autoscale.as_mut().expect("autoscale");
        a.min_replicas = 0;
        a.scale_to_zero = Some(crate::spec::ScaleToZero {
            idle_after: crate::spec::Duration::from_secs(60),
            activation_timeout: crate::spec::Duration::from_secs(5),
        });
        let held = BackendConfig::of(&service).expect("has a load balancer");
        let plain = backend_of(1);
        let cfg = ManagedConfig::new(
            Path::new("/run/ds"),
            "127.0.0.1:9181".parse().expect("addr"),
            "secret",
            vec![held, plain.clone()],
        );
        let text = cfg.render();
        assert!(
            text.contains("    lua-load /run/ds/dockscale-hold.lua\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "backend web\n    balance roundrobin\n    \
                 http-request lua.dockscale_hold 5000 5 if { nbsrv lt 1 }\n"
            ),
            "{text}"
        );
        assert_eq!(text.matches("lua.dockscale_hold").count(), 1, "{text}");
        // Without a backend that holds, no script is loaded.
        let none = ManagedConfig::new(
            Path::new("/run/ds"),
            "127.0.0.1:9181".parse().expect("addr"),
            "secret",
            vec![plain],
        );
        assert!(!none.render().contains("lua"), "{}", none.render());
    }

    #[test]
    fn only_slot_names_have_slot_numbers() {
        assert_eq!(slot_number("slot1"), Some(1));
        assert_eq!(slot_number("slot24"), Some(24));
        for other in [
            "slot", "slot0", "slot01", "slotx", "web1", "static1", "slot-1",
        ] {
            assert_eq!(slot_number(other), None, "{other}");
        }
    }
}
