//! The validated config: what cohort runs on. Only [`super::parse`] builds a [`Config`],
//! so every value here has passed its rules. TLS settings are paths and flags; the shell
//! reads the files they name.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use serde::Serialize;

use super::ConfigWarning;
use crate::cohort::BasisPoints;
use crate::rollout::{Guard, GuardAction, Method, Rollout};
use crate::segment::{Segment, ValueSet};
use crate::split_clients::KeyTemplate;

pub const DEFAULT_CONFIG_PATH: &str = "config/cohort.toml";
pub const DEFAULT_OVERRIDE_HEADER: &str = "x-cohort-variant";
pub const DEFAULT_OVERRIDE_COOKIE: &str = "cohort_variant";
pub const DEFAULT_VARIANT_HEADER: &str = "x-cohort-variant";
pub const COHORT_ID_COOKIE: &str = "cohort_id";

/// A fully validated config. Built only by [`parse`](super::parse).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// The file it came from; relative paths in it resolve against its directory.
    #[serde(skip)]
    pub source: PathBuf,
    pub listen: Listen,
    pub admin: Admin,
    pub state_dir: Option<PathBuf>,
    pub routes: Vec<Route>,
    /// What the log should warn about (the shell logs them when it loads the config).
    #[serde(skip)]
    pub(crate) warnings: Vec<ConfigWarning>,
}

impl Config {
    /// Valid settings worth a warning, in file order.
    pub fn warnings(&self) -> &[ConfigWarning] {
        &self.warnings
    }

    /// Every file the config names besides itself (certificates, keys, CAs, the admin
    /// token, segments' values files), each once, in file order: what the shell reads with the config, and
    /// watches beside it, so a change to any of them is a reload.
    pub fn named_files(&self) -> Vec<&Path> {
        fn server(tls: &ServerTls) -> [Option<&Path>; 3] {
            [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()]
                .map(|p| p.map(PathBuf::as_path))
        }
        fn upstream(tls: &UpstreamTls) -> [Option<&Path>; 3] {
            [
                tls.ca.as_deref(),
                tls.client_cert.as_deref(),
                tls.client_key.as_deref(),
            ]
        }
        let mut files: Vec<&Path> = Vec::new();
        let listen = self.listen.tls.iter().flat_map(server);
        let token = self.admin.token_file.as_deref();
        let routes = self.routes.iter().flat_map(|route| {
            let sni = route.tls.iter().flat_map(server);
            let variants = [&route.stable, &route.canary]
                .into_iter()
                .flat_map(|u| u.tls.iter().flat_map(upstream));
            let values = route
                .segments
                .iter()
                .map(|segment| segment.values_file.as_deref());
            sni.chain(variants).chain(values)
        });
        for file in listen.chain([token]).chain(routes).flatten() {
            if !files.contains(&file) {
                files.push(file);
            }
        }
        files
    }

    /// Adds each segment's `values_file` to its values. `read` hands in a file's text
    /// (the shell reads it); a file that cannot be read or holds a bad value fails the
    /// whole config, naming the key, so a reload keeps the old values serving.
    pub fn load_values_files(
        &mut self,
        mut read: impl FnMut(&Path) -> Result<String, String>,
    ) -> Result<(), super::ConfigError> {
        let mut issues = Vec::new();
        for (r, route) in self.routes.iter_mut().enumerate() {
            for (s, segment) in route.segments.iter_mut().enumerate() {
                let Some(path) = segment.values_file.as_deref() else {
                    continue;
                };
                let key = format!("routes[{r}].segments[{s}].values_file");
                let loaded = read(path).and_then(|text| {
                    ValueSet::parse(&segment.on, crate::segment::file_values(&text))
                        .map_err(|e| format!("{}: {e}", path.display()))
                });
                match loaded {
                    Ok(values) => {
                        let mut set = ValueSet::clone(&segment.set);
                        set.extend(values);
                        segment.set = std::sync::Arc::new(set);
                    }
                    Err(reason) => issues.push(super::ConfigIssue { key, reason }),
                }
            }
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(super::ConfigError {
                file: self.source.clone(),
                issues,
            })
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listen {
    pub address: SocketAddr,
    /// Proxy worker threads; 0 = one per CPU the process may use.
    pub workers: usize,
    #[serde(serialize_with = "ser_duration")]
    pub drain_timeout: Duration,
    /// How long cohort keeps accepting and serving after SIGTERM, with `/readyz` at
    /// 503, before the drain begins: the time an orchestrator needs to stop sending
    /// new connections (Kubernetes starts removing a terminating pod's endpoints with
    /// the signal; it takes seconds to propagate). Read when the signal arrives, so a
    /// reload changes it.
    #[serde(serialize_with = "ser_duration")]
    pub shutdown_delay: Duration,
    /// Response header naming the variant; `None` when set to `""`.
    #[serde(serialize_with = "ser_opt_header")]
    pub variant_header: Option<HeaderName>,
    pub access_log: bool,
    /// Whether the listener speaks TLS is read at start only; its files are re-read.
    pub tls: Option<ServerTls>,
    /// Hops whose `X-Forwarded-For` is believed (DESIGN §10): the client's address is
    /// derived from it when the TCP peer is inside one (`crate::client_addr`).
    #[serde(serialize_with = "ser_nets")]
    pub trusted_proxies: Vec<IpNet>,
    /// What one client may hold and send (DESIGN §10); read at start only.
    #[serde(flatten)]
    pub limits: Limits,
}

/// `listen.max_connections`, `header_timeout`, `idle_timeout`, `max_header_bytes`,
/// `max_headers`, `h2_max_concurrent_streams`: the listener's limits, each with a safe
/// default. The engines build their connection settings from them once, at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Open client connections per instance; a new one beyond it is closed at once.
    pub max_connections: usize,
    /// A request head must arrive whole within this after its first byte: 408, close.
    #[serde(serialize_with = "ser_duration")]
    pub header_timeout: Duration,
    /// A connection with no request in flight (before its first, between keep-alive
    /// requests) is closed after this.
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// A larger request head: 431 (HTTP/2: the header list size).
    pub max_header_bytes: usize,
    /// More header fields in a request head: 431.
    pub max_headers: usize,
    /// Concurrent streams an HTTP/2 client may open.
    pub h2_max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            h2_max_concurrent_streams: 100,
        }
    }
}

/// Bounds of the limits (`validate` names them in its messages).
pub const MAX_CONNECTIONS_BOUND: usize = 1_000_000;
/// Smallest `max_header_bytes`: hyper's read buffer cannot be smaller.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;
pub const MAX_HEADER_BYTES_BOUND: usize = 1024 * 1024;
pub const MAX_HEADERS_BOUND: usize = 1000;
pub const MAX_CONCURRENT_STREAMS_BOUND: u32 = 10_000;
/// Longest `header_timeout` / `idle_timeout`.
pub const MAX_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3600);
/// The default `max_body` of a route.
pub const DEFAULT_MAX_BODY: u64 = 10 * 1024 * 1024;
/// Largest `max_body`.
pub const MAX_BODY_BOUND: u64 = 1 << 40;

/// `listen.tls`, or a route's `tls` (served by SNI for its `host`): the files of a
/// certificate chain and key, which the shell reads and checks when it loads the config.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate chaining to this CA (mTLS); listen.tls only.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Admin {
    pub address: SocketAddr,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    pub name: String,
    /// Lowercase, without port.
    pub host: Option<String>,
    /// The certificate served for `host` (by SNI) on a TLS listener.
    pub tls: Option<ServerTls>,
    pub path_prefix: String,
    pub sticky: Vec<StickySource>,
    pub salt: String,
    #[serde(rename = "canary_percent")]
    pub canary_bp: BasisPoints,
    pub stable: Upstream,
    pub canary: Upstream,
    #[serde(rename = "override")]
    pub override_: Option<Override>,
    pub timeouts: Timeouts,
    #[serde(serialize_with = "ser_rollout")]
    pub rollout: Option<Rollout>,
    #[serde(serialize_with = "ser_guard")]
    pub guard: Option<Guard>,
    /// Request bodies above this many bytes: 413 (DESIGN §10).
    pub max_body: u64,
    /// Rules tried before the percentage, in order (DESIGN §11).
    pub segments: Vec<Segment>,
    /// `cohort.<NAME>` set in the forwarded request's W3C baggage.
    pub propagate: Option<String>,
    /// `cohort.<NAME>` of the inbound baggage, believed from `override.trusted` peers.
    pub follow: Option<String>,
    /// How keys become buckets.
    #[serde(flatten)]
    pub hash: Hash,
}

/// How a route turns a key into a bucket (DESIGN §1.5, §11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "hash", rename_all = "lowercase")]
pub enum Hash {
    /// XXH3-64 over `salt ‖ 0x00 ‖ key`: cohort's own.
    Xxh3,
    /// NGINX `split_clients` over `nginx_key` with `${key}` replaced.
    Nginx { nginx_key: KeyTemplate },
}

impl Hash {
    /// The name `hash` takes in the config.
    pub fn as_str(&self) -> &'static str {
        match self {
            Hash::Xxh3 => "xxh3",
            Hash::Nginx { .. } => "nginx",
        }
    }
}

impl Route {
    /// The key's bucket and variant at canary share `canary`, by the route's hash.
    #[inline]
    pub fn assign(&self, key: &[u8], canary: BasisPoints) -> (u16, crate::cohort::Variant) {
        match &self.hash {
            Hash::Xxh3 => crate::cohort::assign(&self.salt, key, canary),
            Hash::Nginx { nginx_key } => nginx_key.assign(key, canary),
        }
    }

    /// The rollout identity as `cohort_rollout_info` labels it: route, salt, and the
    /// rollout's `start` as written (empty without a rollout).
    pub fn identity_labels(&self) -> [String; 3] {
        [
            self.name.clone(),
            self.salt.clone(),
            self.rollout
                .as_ref()
                .map_or_else(String::new, |r| r.start_text.clone()),
        ]
    }

    /// Prometheus' base URL when the route's guard judges the fleet's counts.
    pub fn fleet_source(&self) -> Option<&str> {
        self.guard.as_ref()?.source.prometheus()
    }

    /// What a guard's rollback belongs to: route name + salt (+ `start` for a rollout),
    /// so a new rollout (new salt or start) starts clean.
    pub fn rollout_identity(&self) -> String {
        match &self.rollout {
            Some(r) => format!("{}\u{0}{}\u{0}{}", self.name, self.salt, r.start_text),
            None => format!("{}\u{0}{}", self.name, self.salt),
        }
    }
}

pub const DEFAULT_GUARD_WINDOW: Duration = Duration::from_secs(30);
pub const DEFAULT_GUARD_MIN_REQUESTS: u64 = 50;
/// Longest guard window: windows are bounded, fixed-size buckets.
pub const MAX_GUARD_WINDOW: Duration = Duration::from_secs(3600);
/// Longest `timeouts.connect` / `timeouts.request` / `timeouts.idle`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Most worker threads `listen.workers` may ask for (each holds per-route metric lanes).
pub const MAX_WORKERS: usize = 1024;

/// Where a cohort key may come from, in the route's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickySource {
    Header(HeaderName),
    Cookie(String),
    Ip,
}

impl fmt::Display for StickySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StickySource::Header(name) => write!(f, "header:{name}"),
            StickySource::Cookie(name) => write!(f, "cookie:{name}"),
            StickySource::Ip => f.write_str("ip"),
        }
    }
}

impl Serialize for StickySource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One variant's upstream: its endpoints, tried round robin.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Upstream {
    pub endpoints: Vec<Endpoint>,
    pub protocol: Protocol,
    pub tls: Option<UpstreamTls>,
}

impl Upstream {
    pub(crate) fn empty() -> Upstream {
        Upstream {
            endpoints: vec![],
            protocol: Protocol::Http1,
            tls: None,
        }
    }
}

/// How cohort speaks to a variant's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1, pooled keep-alive connections (the default).
    Http1,
    /// HTTP/2 over TLS (ALPN `h2`), for `https://` endpoints.
    H2,
    /// HTTP/2 with prior knowledge over plain TCP, for `http://` endpoints.
    H2c,
}

/// A variant's `tls` settings for its `https://` endpoints (paths resolved).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamTls {
    pub ca: Option<PathBuf>,
    pub server_name: Option<String>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub insecure_skip_verify: bool,
}

/// An `http://` or `https://` `host:port` endpoint. The host is resolved when
/// connecting, so docker-compose service names and DNS changes work.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub transport: Transport,
}

/// What runs over the TCP connection to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Plain HTTP/1.1: the hot path.
    Http1,
    /// HTTP/2 with prior knowledge over plain TCP.
    H2c,
    /// TLS (the variant's `tls` settings, built by the shell), then HTTP/1.1 or, with
    /// `h2` (ALPN `h2`), HTTP/2.
    Tls { h2: bool },
}

impl Transport {
    /// Whether connections speak HTTP/2 (one multiplexed connection per endpoint).
    pub fn is_h2(&self) -> bool {
        match self {
            Transport::Http1 => false,
            Transport::H2c => true,
            Transport::Tls { h2 } => *h2,
        }
    }
}

impl Endpoint {
    /// `host:port`, with IPv6 literals bracketed; also the pool key.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.transport {
            Transport::Tls { .. } => "https",
            Transport::Http1 | Transport::H2c => "http",
        };
        write!(f, "{scheme}://{}", self.authority())
    }
}

impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Override {
    #[serde(serialize_with = "ser_header")]
    pub header: HeaderName,
    pub cookie: String,
    #[serde(serialize_with = "ser_nets")]
    pub trusted: Vec<IpNet>,
}

impl Override {
    #[inline]
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = canonical_ip(peer);
        self.trusted.iter().any(|net| net.contains(&peer))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Timeouts {
    #[serde(serialize_with = "ser_duration")]
    pub connect: Duration,
    /// Time allowed until the upstream's response headers arrive.
    #[serde(serialize_with = "ser_duration")]
    pub request: Duration,
    /// The stream idle timeout: how long a request or response body may go without a
    /// byte moving before cohort ends the stream (a stalled upload: 408; a response
    /// body stalled after its headers: the client's stream is cut, `kind="timeout"`).
    /// Envoy's `stream_idle_timeout`, with its default; never off (a long-poll or SSE
    /// route that is quiet for longer sets a longer one, up to 24h).
    #[serde(serialize_with = "ser_duration")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(1),
            request: Duration::from_secs(30),
            idle: Duration::from_secs(5 * 60),
        }
    }
}

pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `listen.shutdown_delay`. Endpoint removal propagates in seconds; an hour is
/// far beyond any orchestrator's grace period, so more is a typo (`"30m"` for `"30s"`).
pub const MAX_SHUTDOWN_DELAY: Duration = Duration::from_secs(3600);

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.7`) are treated as the IPv4 address.
#[inline]
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// A CIDR (`10.0.0.0/8`) or a single address (a /32 or /128), host bits cleared: what
/// `override.trusted`, `listen.trusted_proxies` and `ip` segments hold.
pub fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .ok()
        .map(|net| net.trunc())
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

fn ser_header<S: serde::Serializer>(h: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(h.as_str())
}

fn ser_opt_header<S: serde::Serializer>(h: &Option<HeaderName>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(h.as_ref().map_or("", HeaderName::as_str))
}

fn ser_rollout<S: serde::Serializer>(r: &Option<Rollout>, s: S) -> Result<S::Ok, S::Error> {
    match r {
        None => s.serialize_none(),
        Some(r) => {
            // `BasisPoints` writes itself as /routes does: `1`, `0.5`.
            serde::Serialize::serialize(
                &serde_json::json!({
                    "start": r.start_text,
                    "steps": r.steps,
                    "step_every": humantime::format_duration(r.step_every).to_string(),
                }),
                s,
            )
        }
    }
}

fn ser_guard<S: serde::Serializer>(g: &Option<Guard>, s: S) -> Result<S::Ok, S::Error> {
    match g {
        None => s.serialize_none(),
        Some(g) => serde::Serialize::serialize(
            &serde_json::json!({
                "window": humantime::format_duration(g.window).to_string(),
                "min_requests": g.min_requests,
                "max_error_ratio": g.max_error_ratio,
                "max_error_ratio_vs_stable": g.max_error_ratio_vs_stable,
                "max_p99": g.max_p99.map(|d| humantime::format_duration(d).to_string()),
                "action": match g.action { GuardAction::Rollback => "rollback", GuardAction::Hold => "hold" },
                "on_rollback": g.on_rollback,
                "method": g.method.as_str(),
                "alpha": match g.method { Method::Sequential(s) => Some(s.alpha), Method::Threshold => None },
                "min_effect": match g.method { Method::Sequential(s) => Some(s.min_effect), Method::Threshold => None },
                "latency_over": match g.method {
                    Method::Sequential(s) => s.latency_over.map(|d| humantime::format_duration(d).to_string()),
                    Method::Threshold => None,
                },
                "source": g.source.prometheus().map(|url| serde_json::json!({ "prometheus": url })),
            }),
            s,
        ),
    }
}

fn ser_nets<S: serde::Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(nets.iter().map(ToString::to_string))
}
