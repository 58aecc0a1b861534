//! The config file: its raw TOML schema, and `validate`, the only way to get a [`Config`].
//!
//! Parsing and validation are pure (text in, `Config` or errors out). Every error names
//! the file, the key path and the reason, in the form ops grep for:
//! `config/cohort.toml: routes[0].canary_percent: 100.5 is above 100`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cohort::BasisPoints;
use crate::rollout::{self, Guard, GuardAction, Rollout};
use crate::tls;

pub const DEFAULT_CONFIG_PATH: &str = "config/cohort.toml";
pub const DEFAULT_OVERRIDE_HEADER: &str = "x-cohort-variant";
pub const DEFAULT_OVERRIDE_COOKIE: &str = "cohort_variant";
pub const DEFAULT_VARIANT_HEADER: &str = "x-cohort-variant";
pub const COHORT_ID_COOKIE: &str = "cohort_id";

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// One problem in a config file: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path such as `routes[0].canary_percent`; empty for whole-file problems.
    pub key: String,
    pub reason: String,
}

/// Every problem found in one config file. Displayed one `FILE: key: reason` per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub issues: Vec<ConfigIssue>,
}

impl ConfigError {
    fn single(file: &Path, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            issues: vec![ConfigIssue {
                key: key.into(),
                reason: reason.into(),
            }],
        }
    }

    /// An error about the file as a whole (unreadable, not TOML).
    pub fn file(file: &Path, reason: impl Into<String>) -> ConfigError {
        ConfigError::single(file, "", reason)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if issue.key.is_empty() {
                write!(f, "{}: {}", self.file.display(), issue.reason)?;
            } else {
                write!(
                    f,
                    "{}: {}: {}",
                    self.file.display(),
                    issue.key,
                    issue.reason
                )?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Raw schema: what serde reads. Unknown keys are errors.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    admin: RawAdmin,
    state_dir: Option<String>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    #[serde(default = "default_listen_address")]
    address: String,
    #[serde(default)]
    workers: usize,
    drain_timeout: Option<String>,
    shutdown_delay: Option<String>,
    variant_header: Option<String>,
    #[serde(default)]
    access_log: bool,
    tls: Option<RawServerTls>,
}

impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            address: default_listen_address(),
            workers: 0,
            drain_timeout: None,
            shutdown_delay: None,
            variant_header: None,
            access_log: false,
            tls: None,
        }
    }
}

fn default_listen_address() -> String {
    "0.0.0.0:8080".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "default_admin_address")]
    address: String,
    token_file: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            address: default_admin_address(),
            token_file: None,
        }
    }
}

fn default_admin_address() -> String {
    "127.0.0.1:9901".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTls {
    cert: String,
    key: String,
    client_ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    host: Option<String>,
    tls: Option<RawServerTls>,
    #[serde(default = "default_path_prefix")]
    path_prefix: String,
    #[serde(default)]
    sticky: Vec<String>,
    salt: Option<String>,
    #[serde(default)]
    canary_percent: Percent,
    stable: Option<RawVariant>,
    canary: Option<RawVariant>,
    #[serde(rename = "override")]
    override_: Option<RawOverride>,
    #[serde(default)]
    timeouts: RawTimeouts,
    rollout: Option<RawRollout>,
    guard: Option<RawGuard>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    /// RFC 3339, as a string or a TOML date-time.
    start: toml::Value,
    steps: Vec<Percent>,
    step_every: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuard {
    window: Option<String>,
    min_requests: Option<u64>,
    max_error_ratio: Option<f64>,
    max_error_ratio_vs_stable: Option<f64>,
    max_p99: Option<String>,
    action: Option<String>,
    on_rollback: Option<String>,
}

fn default_path_prefix() -> String {
    "/".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariant {
    #[serde(default)]
    endpoints: Vec<String>,
    protocol: Option<String>,
    tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    ca: Option<String>,
    server_name: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    header: Option<String>,
    cookie: Option<String>,
    #[serde(default)]
    trusted: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect: Option<String>,
    request: Option<String>,
}

/// A percentage as written in TOML: an integer (`10`) or a float (`2.5`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percent(pub f64);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number from 0 to 100")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Percent, E> {
                Ok(Percent(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Percent, E> {
                Ok(Percent(v as f64))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Percent, E> {
                Ok(Percent(v))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------
// Validated runtime config
// ---------------------------------------------------------------------------------------

/// A fully validated config. Built only by [`parse`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// The file it came from; relative paths in it resolve against its directory.
    #[serde(skip)]
    pub source: PathBuf,
    pub listen: Listen,
    pub admin: Admin,
    pub state_dir: Option<PathBuf>,
    pub routes: Vec<Route>,
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
}

/// `listen.tls`, or a route's `tls` (served by SNI for its `host`): a certificate
/// chain and key, read and checked at validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate chaining to this CA (mTLS); listen.tls only.
    pub client_ca: Option<PathBuf>,
    #[serde(skip)]
    pub material: tls::Loaded<tls::ServerMaterial>,
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
}

impl Route {
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
/// Longest `timeouts.connect` / `timeouts.request`.
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
    fn empty() -> Upstream {
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Plain HTTP/1.1: the hot path.
    Http1,
    /// HTTP/2 with prior knowledge over plain TCP.
    H2c,
    /// TLS, then HTTP/1.1 or (`h2`) HTTP/2.
    Tls(Arc<ClientTls>),
}

impl Transport {
    /// Tells connection pools apart: endpoints with equal ids may share connections.
    pub fn id(&self) -> u64 {
        match self {
            Transport::Http1 => 0,
            Transport::H2c => 1,
            Transport::Tls(tls) => tls.id,
        }
    }

    /// Whether connections speak HTTP/2 (one multiplexed connection per endpoint).
    pub fn is_h2(&self) -> bool {
        match self {
            Transport::Http1 => false,
            Transport::H2c => true,
            Transport::Tls(tls) => tls.h2,
        }
    }
}

/// A ready TLS client config for one variant's `https://` endpoints.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ClientTls {
    pub config: tls::Loaded<rustls::ClientConfig>,
    /// SNI and the name the certificate must carry; the endpoint's host when `None`.
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
    pub h2: bool,
    /// Files, options and server name in one number ([`Transport::id`]): connections
    /// verified under one set of settings are never lent to another.
    pub id: u64,
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
            Transport::Tls(_) => "https",
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
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(1),
            request: Duration::from_secs(30),
        }
    }
}

pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `listen.shutdown_delay`. Endpoint removal propagates in seconds; an hour is
/// far beyond any orchestrator's grace period, so more is a typo (`"30m"` for `"30s"`).
pub const MAX_SHUTDOWN_DELAY: Duration = Duration::from_secs(3600);

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.7`) are treated as the IPv4 address.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
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
            }),
            s,
        ),
    }
}

fn ser_nets<S: serde::Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(nets.iter().map(ToString::to_string))
}

// ---------------------------------------------------------------------------------------
// Parsing and validation
// ---------------------------------------------------------------------------------------

/// Reads and validates a config file: the one function of this module that does I/O.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| ConfigError::file(file, format!("cannot read the file: {e}")))?;
    parse(&text, file)
}

/// Parses and validates config text. `file` names it in errors and anchors relative paths.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let raw = parse_raw(text, file)?;
    let mut v = Validator {
        file,
        issues: Vec::new(),
    };
    let config = v.config(raw);
    if v.issues.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError {
            file: file.to_path_buf(),
            issues: v.issues,
        })
    }
}

fn parse_raw(text: &str, file: &Path) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_error(text, file, "", &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        toml_error(text, file, &key, e.inner())
    })
}

fn toml_error(text: &str, file: &Path, key: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    let reason = match line {
        Some(line) => format!("{} (line {line})", e.message().trim_end()),
        None => e.message().trim_end().to_owned(),
    };
    ConfigError::single(file, key, reason)
}

struct Validator<'a> {
    file: &'a Path,
    issues: Vec<ConfigIssue>,
}

impl Validator<'_> {
    fn fail(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.issues.push(ConfigIssue {
            key: key.into(),
            reason: reason.into(),
        });
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let listen = self.listen(raw.listen);
        let admin = self.admin(raw.admin);
        let state_dir = raw.state_dir.map(|dir| self.resolve(&dir));
        if raw.routes.is_empty() {
            self.fail("routes", "at least one [[routes]] entry is required");
        }
        let mut names: Vec<String> = Vec::with_capacity(raw.routes.len());
        let mut routes: Vec<Route> = Vec::with_capacity(raw.routes.len());
        for (i, raw_route) in raw.routes.into_iter().enumerate() {
            let key = format!("routes[{i}]");
            let name = raw_route.name.trim().to_owned();
            if names.contains(&name) {
                self.fail(
                    format!("{key}.name"),
                    format!("duplicate route name {name:?}"),
                );
            }
            names.push(name);
            routes.extend(self.route(&key, raw_route));
        }
        if listen.tls.is_none() {
            for (i, route) in routes.iter().enumerate() {
                if route.tls.is_some() {
                    self.fail(
                        format!("routes[{i}].tls"),
                        "needs listen.tls: route certificates are served by SNI on a TLS listener, with listen.tls as the default",
                    );
                }
            }
        }
        Config {
            source: self.file.to_path_buf(),
            listen,
            admin,
            state_dir,
            routes,
        }
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.file
                .parent()
                .unwrap_or_else(|| Path::new(""))
                .join(path)
        }
    }

    fn listen(&mut self, raw: RawListen) -> Listen {
        let address = self.socket_addr("listen.address", &raw.address);
        let drain_timeout = raw
            .drain_timeout
            .map(|d| self.duration("listen.drain_timeout", &d))
            .unwrap_or(DEFAULT_DRAIN_TIMEOUT);
        // Absent or "0s": stop accepting at once, as before the setting existed.
        let shutdown_delay = raw.shutdown_delay.map_or(Duration::ZERO, |d| {
            let delay = self.duration("listen.shutdown_delay", &d);
            if delay > MAX_SHUTDOWN_DELAY {
                self.fail("listen.shutdown_delay", "must be at most 1h");
            }
            delay
        });
        let variant_header = match raw.variant_header.as_deref() {
            None => Some(HeaderName::from_static(DEFAULT_VARIANT_HEADER)),
            Some("") => None,
            Some(name) => self.header_name("listen.variant_header", name),
        };
        let tls = raw.tls.and_then(|t| self.server_tls("listen.tls", t, true));
        if raw.workers > MAX_WORKERS {
            self.fail(
                "listen.workers",
                format!("must be at most {MAX_WORKERS} (0 = one per CPU)"),
            );
        }
        Listen {
            address,
            workers: raw.workers,
            drain_timeout,
            shutdown_delay,
            variant_header,
            access_log: raw.access_log,
            tls,
        }
    }

    fn admin(&mut self, raw: RawAdmin) -> Admin {
        Admin {
            address: self.socket_addr("admin.address", &raw.address),
            token_file: raw.token_file.map(|f| self.resolve(&f)),
        }
    }

    fn route(&mut self, key: &str, raw: RawRoute) -> Option<Route> {
        let before = self.issues.len();
        let name = raw.name.trim().to_owned();
        if name.is_empty() {
            self.fail(format!("{key}.name"), "must not be empty");
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            self.fail(
                format!("{key}.name"),
                format!("{name:?} may contain only letters, digits, '-', '_' and '.'"),
            );
        }
        let host = raw.host.and_then(|h| self.host(&format!("{key}.host"), &h));
        let tls = raw.tls.and_then(|t| {
            if host.is_none() {
                self.fail(
                    format!("{key}.tls"),
                    "needs routes[].host: a route's certificate is served by SNI for its host",
                );
            }
            self.server_tls(&format!("{key}.tls"), t, false)
        });
        if !raw.path_prefix.starts_with('/') {
            self.fail(
                format!("{key}.path_prefix"),
                format!("{:?} must start with '/'", raw.path_prefix),
            );
        }
        let sticky = raw
            .sticky
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.sticky(&format!("{key}.sticky[{i}]"), s))
            .collect();
        let salt = match raw.salt {
            Some(salt) if !salt.is_empty() => salt,
            Some(_) => {
                self.fail(format!("{key}.salt"), "must not be empty");
                String::new()
            }
            None => {
                self.fail(
                    format!("{key}.salt"),
                    "is required (pick a new one per rollout, e.g. \"checkout-v2\")",
                );
                String::new()
            }
        };
        let canary_bp = match BasisPoints::from_percent(raw.canary_percent.0) {
            Ok(bp) => bp,
            Err(e) => {
                self.fail(format!("{key}.canary_percent"), e.to_string());
                BasisPoints::ZERO
            }
        };
        let stable = match raw.stable {
            Some(v) => {
                let upstream = self.upstream(&format!("{key}.stable"), v);
                if upstream.endpoints.is_empty() {
                    self.fail(
                        format!("{key}.stable.endpoints"),
                        "needs at least one endpoint",
                    );
                }
                upstream
            }
            None => {
                self.fail(format!("{key}.stable"), "is required");
                Upstream::empty()
            }
        };
        let canary = match raw.canary {
            Some(v) => self.upstream(&format!("{key}.canary"), v),
            None => Upstream::empty(),
        };
        let rollout = raw
            .rollout
            .and_then(|r| self.rollout(&format!("{key}.rollout"), r));
        if canary.endpoints.is_empty() {
            let widest = rollout
                .as_ref()
                .and_then(|r| r.steps.iter().max().copied())
                .unwrap_or(canary_bp);
            if widest > BasisPoints::ZERO {
                let what = if rollout.is_some() {
                    format!("the rollout reaches {widest}")
                } else {
                    format!("canary_percent is {canary_bp}")
                };
                self.fail(
                    format!("{key}.canary.endpoints"),
                    format!("needs at least one endpoint while {what} (only 0 may go without)"),
                );
            }
        }
        let override_ = raw
            .override_
            .map(|o| self.override_(&format!("{key}.override"), o));
        let timeouts = self.timeouts(&format!("{key}.timeouts"), raw.timeouts);
        let guard = raw
            .guard
            .and_then(|g| self.guard(&format!("{key}.guard"), g, rollout.is_some()));
        (self.issues.len() == before).then_some(Route {
            name,
            host,
            tls,
            path_prefix: raw.path_prefix,
            sticky,
            salt,
            canary_bp,
            stable,
            canary,
            override_,
            timeouts,
            rollout,
            guard,
        })
    }

    fn rollout(&mut self, key: &str, raw: RawRollout) -> Option<Rollout> {
        let before = self.issues.len();
        let start_text = match &raw.start {
            toml::Value::String(text) => text.clone(),
            toml::Value::Datetime(dt) => dt.to_string(),
            other => other.to_string(),
        };
        let start = rollout::parse_rfc3339(&start_text)
            .map_err(|e| self.fail(format!("{key}.start"), e))
            .ok();
        if raw.steps.is_empty() {
            self.fail(format!("{key}.steps"), "needs at least one step");
        }
        let mut steps = Vec::with_capacity(raw.steps.len());
        for (i, p) in raw.steps.iter().enumerate() {
            match BasisPoints::from_percent(p.0) {
                Ok(bp) => {
                    if steps.last().is_some_and(|&prev| bp < prev) {
                        self.fail(
                            format!("{key}.steps[{i}]"),
                            format!("{bp} is below the step before it; steps must not decrease"),
                        );
                    }
                    steps.push(bp);
                }
                Err(e) => self.fail(format!("{key}.steps[{i}]"), e.to_string()),
            }
        }
        let step_every = self.positive_duration(&format!("{key}.step_every"), &raw.step_every);
        (self.issues.len() == before).then_some(Rollout {
            start: start.unwrap_or_default(),
            start_text,
            steps,
            step_every,
        })
    }

    fn guard(&mut self, key: &str, raw: RawGuard, has_rollout: bool) -> Option<Guard> {
        let before = self.issues.len();
        let window = raw
            .window
            .map(|w| self.positive_duration(&format!("{key}.window"), &w))
            .unwrap_or(DEFAULT_GUARD_WINDOW);
        if window > MAX_GUARD_WINDOW {
            self.fail(format!("{key}.window"), "must be at most 1h");
        }
        let mut ratio = |name: &str, value: Option<f64>| {
            if let Some(v) = value {
                if !(0.0..=1.0).contains(&v) {
                    self.fail(
                        format!("{key}.{name}"),
                        format!("{v} is not a ratio from 0 to 1"),
                    );
                }
            }
            value
        };
        let max_error_ratio = ratio("max_error_ratio", raw.max_error_ratio);
        let max_error_ratio_vs_stable =
            ratio("max_error_ratio_vs_stable", raw.max_error_ratio_vs_stable);
        let max_p99 = raw
            .max_p99
            .map(|d| self.positive_duration(&format!("{key}.max_p99"), &d));
        if max_error_ratio.is_none() && max_error_ratio_vs_stable.is_none() && max_p99.is_none() {
            self.fail(
                key,
                "needs at least one of max_error_ratio, max_error_ratio_vs_stable, max_p99",
            );
        }
        let action = match raw.action.as_deref() {
            None | Some("rollback") => GuardAction::Rollback,
            Some("hold") if has_rollout => GuardAction::Hold,
            Some("hold") => {
                self.fail(
                    format!("{key}.action"),
                    "\"hold\" needs a [routes.rollout] to hold a step of; use \"rollback\"",
                );
                GuardAction::Rollback
            }
            Some(other) => {
                self.fail(
                    format!("{key}.action"),
                    format!("unknown action {other:?} (use \"rollback\" or \"hold\")"),
                );
                GuardAction::Rollback
            }
        };
        if let Some(url) = &raw.on_rollback {
            let ok = url
                .parse::<http::Uri>()
                .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
            if !ok {
                self.fail(
                    format!("{key}.on_rollback"),
                    format!("{url:?} must be an http:// URL such as \"http://127.0.0.1:9000/hooks/cohort\""),
                );
            }
        }
        (self.issues.len() == before).then_some(Guard {
            window,
            min_requests: raw.min_requests.unwrap_or(DEFAULT_GUARD_MIN_REQUESTS),
            max_error_ratio,
            max_error_ratio_vs_stable,
            max_p99,
            action,
            on_rollback: raw.on_rollback,
        })
    }

    fn host(&mut self, key: &str, host: &str) -> Option<String> {
        let host = host.trim().to_ascii_lowercase();
        let ipv6_literal = host.starts_with('[') && host.ends_with(']');
        if host.is_empty() || host.contains(['/', ' ']) || (host.contains(':') && !ipv6_literal) {
            self.fail(
                key,
                format!("{host:?} must be a bare host name without port or path"),
            );
            return None;
        }
        Some(host)
    }

    fn sticky(&mut self, key: &str, source: &str) -> Option<StickySource> {
        if source == "ip" {
            return Some(StickySource::Ip);
        }
        if let Some(name) = source.strip_prefix("header:") {
            return self.header_name(key, name).map(StickySource::Header);
        }
        if let Some(name) = source.strip_prefix("cookie:") {
            if name.is_empty() || !name.bytes().all(is_cookie_name_byte) {
                self.fail(key, format!("{name:?} is not a valid cookie name"));
                return None;
            }
            return Some(StickySource::Cookie(name.to_owned()));
        }
        self.fail(
            key,
            format!(
                "unknown sticky source {source:?} (use \"header:NAME\", \"cookie:NAME\" or \"ip\")"
            ),
        );
        None
    }

    fn upstream(&mut self, key: &str, raw: RawVariant) -> Upstream {
        let protocol = match raw.protocol.as_deref() {
            None | Some("http1") => Protocol::Http1,
            Some("h2") => Protocol::H2,
            Some("h2c") => Protocol::H2c,
            Some(other) => {
                self.fail(
                    format!("{key}.protocol"),
                    format!("unknown protocol {other:?} (use \"http1\", \"h2\" or \"h2c\")"),
                );
                Protocol::Http1
            }
        };
        let endpoints: Vec<(Endpoint, bool)> = raw
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, url)| self.endpoint(&format!("{key}.endpoints[{i}]"), url))
            .collect();
        let any_https = endpoints.iter().any(|(_, https)| *https);
        let settings = raw.tls.map(|t| self.upstream_tls(&format!("{key}.tls"), t));
        if settings.is_some() && !endpoints.is_empty() && !any_https {
            self.fail(
                format!("{key}.tls"),
                "applies to https:// endpoints, and this variant has none",
            );
        }
        let client_tls = if any_https {
            self.client_tls(key, settings.as_ref(), protocol)
        } else {
            None
        };
        let endpoints = endpoints
            .into_iter()
            .enumerate()
            .map(|(i, (mut endpoint, https))| {
                endpoint.transport = match (https, protocol, &client_tls) {
                    (false, Protocol::Http1, _) => Transport::Http1,
                    (false, Protocol::H2c, _) => Transport::H2c,
                    (false, Protocol::H2, _) => {
                        self.fail(
                            format!("{key}.endpoints[{i}]"),
                            "protocol = \"h2\" needs an https:// endpoint (use \"h2c\" for HTTP/2 without TLS)",
                        );
                        Transport::Http1
                    }
                    (true, Protocol::H2c, _) => {
                        self.fail(
                            format!("{key}.endpoints[{i}]"),
                            "protocol = \"h2c\" is HTTP/2 without TLS and needs an http:// endpoint (use \"h2\" for https://)",
                        );
                        Transport::Http1
                    }
                    (true, _, Some(tls)) => Transport::Tls(tls.clone()),
                    // The TLS settings were invalid; that issue is already reported.
                    (true, _, None) => Transport::Http1,
                };
                endpoint
            })
            .collect();
        Upstream {
            endpoints,
            protocol,
            tls: settings.map(|(tls, _)| tls),
        }
    }

    fn upstream_tls(
        &mut self,
        key: &str,
        raw: RawUpstreamTls,
    ) -> (UpstreamTls, Option<tls::ClientSettings>) {
        let before = self.issues.len();
        if raw.client_cert.is_some() != raw.client_key.is_some() {
            self.fail(
                key,
                "client_cert and client_key go together: set both for a client certificate, or neither",
            );
        }
        if raw.insecure_skip_verify && raw.ca.is_some() {
            self.fail(
                format!("{key}.insecure_skip_verify"),
                "true skips verification, so ca would be ignored: set one of them",
            );
        }
        let server_name = raw.server_name.filter(|name| {
            let ok = rustls::pki_types::ServerName::try_from(name.as_str()).is_ok();
            if !ok {
                self.fail(
                    format!("{key}.server_name"),
                    format!("{name:?} is not a DNS name or IP address"),
                );
            }
            ok
        });
        let tls = UpstreamTls {
            ca: raw.ca.map(|p| self.resolve(&p)),
            server_name,
            client_cert: raw.client_cert.map(|p| self.resolve(&p)),
            client_key: raw.client_key.map(|p| self.resolve(&p)),
            insecure_skip_verify: raw.insecure_skip_verify,
        };
        let settings = (self.issues.len() == before).then(|| tls::ClientSettings {
            ca: tls.ca.clone(),
            client_cert: tls.client_cert.clone(),
            client_key: tls.client_key.clone(),
            insecure_skip_verify: tls.insecure_skip_verify,
            h2: false,
        });
        (tls, settings)
    }

    /// Reads the variant's TLS files and builds its client config.
    fn client_tls(
        &mut self,
        key: &str,
        settings: Option<&(UpstreamTls, Option<tls::ClientSettings>)>,
        protocol: Protocol,
    ) -> Option<Arc<ClientTls>> {
        let (mut client, server_name) = match settings {
            None => (tls::ClientSettings::default(), None),
            Some((_, None)) => return None,
            Some((tls, Some(client))) => (client.clone(), tls.server_name.clone()),
        };
        client.h2 = protocol == Protocol::H2;
        let config = match tls::client_config(&client) {
            Ok(config) => config,
            Err(e) => {
                let field = [
                    (&client.ca, "ca"),
                    (&client.client_cert, "client_cert"),
                    (&client.client_key, "client_key"),
                ]
                .into_iter()
                .find(|(path, _)| path.as_deref() == Some(e.path.as_path()))
                .map_or(key.to_owned(), |(_, name)| format!("{key}.tls.{name}"));
                self.fail(field, e.to_string());
                return None;
            }
        };
        if client.insecure_skip_verify {
            tracing::warn!(
                file = %self.file.display(),
                key = %format!("{key}.tls.insecure_skip_verify"),
                "TLS certificates of this upstream are NOT verified (insecure_skip_verify = true): anyone on the path can impersonate it"
            );
        }
        let id = {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(&config.fingerprint.to_le_bytes());
            h.update(server_name.as_deref().unwrap_or("").as_bytes());
            // Never 0 or 1, the ids of plain HTTP/1.1 and h2c.
            h.digest() | 2
        };
        let server_name = server_name.and_then(|n| rustls::pki_types::ServerName::try_from(n).ok());
        Some(Arc::new(ClientTls {
            config,
            server_name,
            h2: client.h2,
            id,
        }))
    }

    /// A listener certificate: `listen.tls` (`may_verify_clients`) or a route's `tls`.
    fn server_tls(
        &mut self,
        key: &str,
        raw: RawServerTls,
        may_verify_clients: bool,
    ) -> Option<ServerTls> {
        if raw.client_ca.is_some() && !may_verify_clients {
            self.fail(
                format!("{key}.client_ca"),
                "client certificates are verified for the whole listener: set listen.tls.client_ca",
            );
            return None;
        }
        let cert = self.resolve(&raw.cert);
        let tls_key = self.resolve(&raw.key);
        let client_ca = raw.client_ca.map(|p| self.resolve(&p));
        match tls::load_server_material(&cert, &tls_key, client_ca.as_deref()) {
            Ok(material) => Some(ServerTls {
                cert,
                key: tls_key,
                client_ca,
                material,
            }),
            Err(e) => {
                let field = if e.path == cert {
                    "cert"
                } else if client_ca.as_deref() == Some(e.path.as_path()) {
                    "client_ca"
                } else {
                    "key"
                };
                self.fail(format!("{key}.{field}"), e.to_string());
                None
            }
        }
    }

    /// An endpoint URL, and whether it is `https://`.
    fn endpoint(&mut self, key: &str, url: &str) -> Option<(Endpoint, bool)> {
        let uri: http::Uri = match url.parse() {
            Ok(uri) => uri,
            Err(e) => {
                self.fail(key, format!("{url:?} is not a URL: {e}"));
                return None;
            }
        };
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                self.fail(
                    key,
                    format!(
                        "{url:?} must be an absolute http:// URL such as \"http://127.0.0.1:9001\", or https://"
                    ),
                );
                return None;
            }
        };
        let Some(authority) = uri.authority() else {
            self.fail(key, format!("{url:?} has no host"));
            return None;
        };
        if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
            self.fail(
                key,
                format!(
                    "{url:?}: endpoints carry no path; the request path goes upstream unchanged"
                ),
            );
            return None;
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if host.is_empty() {
            self.fail(key, format!("{url:?} has no host"));
            return None;
        }
        let default_port = if https { 443 } else { 80 };
        Some((
            Endpoint {
                host,
                port: authority.port_u16().unwrap_or(default_port),
                transport: Transport::Http1,
            },
            https,
        ))
    }

    fn override_(&mut self, key: &str, raw: RawOverride) -> Override {
        let header = match raw.header.as_deref() {
            None => HeaderName::from_static(DEFAULT_OVERRIDE_HEADER),
            Some(name) => self
                .header_name(&format!("{key}.header"), name)
                .unwrap_or(HeaderName::from_static(DEFAULT_OVERRIDE_HEADER)),
        };
        let cookie = raw
            .cookie
            .unwrap_or_else(|| DEFAULT_OVERRIDE_COOKIE.to_owned());
        if cookie.is_empty() || !cookie.bytes().all(is_cookie_name_byte) {
            self.fail(
                format!("{key}.cookie"),
                format!("{cookie:?} is not a valid cookie name"),
            );
        }
        let trusted = raw
            .trusted
            .iter()
            .enumerate()
            .filter_map(|(i, cidr)| {
                let parsed = cidr
                    .parse::<IpNet>()
                    .or_else(|_| cidr.parse::<IpAddr>().map(IpNet::from));
                match parsed {
                    Ok(net) => Some(net.trunc()),
                    Err(_) => {
                        self.fail(
                            format!("{key}.trusted[{i}]"),
                            format!(
                                "{cidr:?} is not a CIDR such as \"10.0.0.0/8\" or an IP address"
                            ),
                        );
                        None
                    }
                }
            })
            .collect();
        Override {
            header,
            cookie,
            trusted,
        }
    }

    fn timeouts(&mut self, key: &str, raw: RawTimeouts) -> Timeouts {
        let defaults = Timeouts::default();
        let mut timeout = |name: &str, text: Option<String>, default: Duration| {
            let Some(text) = text else {
                return default;
            };
            let key = format!("{key}.{name}");
            let d = self.positive_duration(&key, &text);
            // Deadlines are `now + timeout`: a bound keeps that sum representable.
            if d > MAX_TIMEOUT {
                self.fail(key, "must be at most 24h");
            }
            d
        };
        Timeouts {
            connect: timeout("connect", raw.connect, defaults.connect),
            request: timeout("request", raw.request, defaults.request),
        }
    }

    fn socket_addr(&mut self, key: &str, text: &str) -> SocketAddr {
        text.parse().unwrap_or_else(|_| {
            self.fail(
                key,
                format!("{text:?} is not an IP address with port, such as \"0.0.0.0:8080\""),
            );
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    fn duration(&mut self, key: &str, text: &str) -> Duration {
        humantime::parse_duration(text).unwrap_or_else(|e| {
            self.fail(
                key,
                format!("{text:?} is not a duration such as \"500ms\" or \"30s\": {e}"),
            );
            Duration::ZERO
        })
    }

    fn positive_duration(&mut self, key: &str, text: &str) -> Duration {
        let before = self.issues.len();
        let d = self.duration(key, text);
        if d.is_zero() && self.issues.len() == before {
            self.fail(key, "must be greater than zero");
        }
        d
    }

    fn header_name(&mut self, key: &str, name: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(name.trim().as_bytes()) {
            Ok(h) if !name.trim().is_empty() => Some(h),
            _ => {
                self.fail(key, format!("{name:?} is not a valid header name"));
                None
            }
        }
    }
}

/// RFC 6265 cookie-name characters (an HTTP token).
fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests;
