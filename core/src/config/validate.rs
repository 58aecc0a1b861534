//! The rules: raw schema in, [`Config`] or every problem found out. Pure: paths are
//! resolved against the config file's directory but never read.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

use super::model::*;
use super::schema::*;
use super::{ConfigError, ConfigIssue, ConfigWarning};
use std::sync::Arc;

use crate::cohort::{BasisPoints, Variant};
use crate::rollout::{self, sequential, Guard, GuardAction, Method, Rollout, Source};
use crate::router::is_token;
use crate::segment::{Segment, SegmentMatch, ValueSet};
use crate::split_clients::{KeyTemplate, KEY_PLACEHOLDER};

/// Checks every rule on `raw`, read from `file`: the config, or every problem found.
pub(crate) fn validate(raw: RawConfig, file: &Path) -> Result<Config, ConfigError> {
    let mut v = Validator {
        file,
        issues: Vec::new(),
        warnings: Vec::new(),
    };
    let mut config = v.config(raw);
    if v.issues.is_empty() {
        config.warnings = v.warnings;
        Ok(config)
    } else {
        Err(ConfigError {
            file: file.to_path_buf(),
            issues: v.issues,
        })
    }
}

struct Validator<'a> {
    file: &'a Path,
    issues: Vec<ConfigIssue>,
    warnings: Vec<ConfigWarning>,
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
            warnings: Vec::new(),
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
        let limits = self.limits(&raw);
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
            trusted_proxies: self.nets("listen.trusted_proxies", &raw.trusted_proxies),
            limits,
        }
    }

    /// The listener's limits (DESIGN §10): each absent one takes its default; each
    /// given one must be at least 1 (a zero would refuse everything) and within a
    /// bound that keeps deadlines and buffers representable.
    fn limits(&mut self, raw: &RawListen) -> Limits {
        let defaults = Limits::default();
        let mut count = |key: &str, value: Option<i64>, default: usize, max: usize| {
            let Some(value) = value else {
                return default;
            };
            match usize::try_from(value) {
                Ok(n) if (1..=max).contains(&n) => n,
                _ => {
                    self.fail(key, format!("must be between 1 and {max}"));
                    default
                }
            }
        };
        let max_connections = count(
            "listen.max_connections",
            raw.max_connections,
            defaults.max_connections,
            MAX_CONNECTIONS_BOUND,
        );
        let max_headers = count(
            "listen.max_headers",
            raw.max_headers,
            defaults.max_headers,
            MAX_HEADERS_BOUND,
        );
        let streams = count(
            "listen.h2_max_concurrent_streams",
            raw.h2_max_concurrent_streams,
            defaults.h2_max_concurrent_streams as usize,
            MAX_CONCURRENT_STREAMS_BOUND as usize,
        );
        let mut timeout = |key: &str, text: &Option<String>, default: Duration| {
            let Some(text) = text else {
                return default;
            };
            let d = self.positive_duration(key, text);
            if d > MAX_CONNECTION_TIMEOUT {
                self.fail(key, "must be at most 1h");
            }
            d
        };
        let header_timeout = timeout(
            "listen.header_timeout",
            &raw.header_timeout,
            defaults.header_timeout,
        );
        let idle_timeout = timeout(
            "listen.idle_timeout",
            &raw.idle_timeout,
            defaults.idle_timeout,
        );
        let max_header_bytes =
            raw.max_header_bytes
                .as_ref()
                .map_or(defaults.max_header_bytes, |size| {
                    let key = "listen.max_header_bytes";
                    let bytes = self.size(key, size);
                    match usize::try_from(bytes) {
                        Ok(n) if (MIN_HEADER_BYTES..=MAX_HEADER_BYTES_BOUND).contains(&n) => n,
                        _ => {
                            self.fail(key, "must be between 8KiB (8192) and 1MiB (1048576)");
                            defaults.max_header_bytes
                        }
                    }
                });
        Limits {
            max_connections,
            header_timeout,
            idle_timeout,
            max_header_bytes,
            max_headers,
            h2_max_concurrent_streams: u32::try_from(streams)
                .unwrap_or(defaults.h2_max_concurrent_streams),
        }
    }

    /// A size: a whole number of bytes, or text such as "512KiB", "10MiB", "1GB"
    /// (binary units KiB, MiB, GiB, TiB; decimal kB, KB, MB, GB, TB; B or none: bytes).
    /// Must be greater than zero.
    fn size(&mut self, key: &str, raw: &RawSize) -> u64 {
        let parsed = match raw {
            RawSize::Bytes(n) => u64::try_from(*n).ok(),
            RawSize::Text(text) => parse_size(text),
        };
        match parsed {
            Some(n) if n > 0 => n,
            _ => {
                let shown = match raw {
                    RawSize::Bytes(n) => n.to_string(),
                    RawSize::Text(t) => format!("{t:?}"),
                };
                self.fail(
                    key,
                    format!("{shown} is not a size greater than zero, such as 65536 or \"10MiB\""),
                );
                0
            }
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
        let max_body = raw.max_body.map_or(DEFAULT_MAX_BODY, |size| {
            let key = format!("{key}.max_body");
            let bytes = self.size(&key, &size);
            if bytes > MAX_BODY_BOUND {
                self.fail(key, "must be at most 1TiB");
            }
            bytes
        });
        let guard = raw
            .guard
            .and_then(|g| self.guard(&format!("{key}.guard"), g, rollout.is_some()));
        let segments = raw
            .segments
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| self.segment(&format!("{key}.segments[{i}]"), s))
            .collect();
        let propagate = raw
            .propagate
            .filter(|name| self.baggage_name(&format!("{key}.propagate"), name));
        let follow = raw
            .follow
            .filter(|name| self.baggage_name(&format!("{key}.follow"), name));
        let hash = self.hash(key, raw.hash.as_deref(), raw.nginx_key);
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
            max_body,
            segments,
            propagate,
            follow,
            hash,
        })
    }

    fn segment(&mut self, key: &str, raw: RawSegment) -> Option<Segment> {
        let on = match SegmentMatch::parse(&raw.on) {
            Ok(on) => on,
            Err(reason) => {
                self.fail(format!("{key}.match"), reason);
                return None;
            }
        };
        let Some(variant) = Variant::from_name(raw.variant.as_bytes()) else {
            self.fail(
                format!("{key}.variant"),
                format!("{:?} is neither \"stable\" nor \"canary\"", raw.variant),
            );
            return None;
        };
        if raw.values.is_empty() && raw.values_file.is_none() {
            self.fail(key, "needs values or a values_file");
            return None;
        }
        let inline = raw
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("values[{i}]"), v.trim()));
        let set = match ValueSet::parse(&on, inline) {
            Ok(set) => set,
            Err(reason) => {
                self.fail(key, reason);
                return None;
            }
        };
        Some(Segment {
            on,
            variant,
            values: raw.values,
            values_file: raw.values_file.map(|p| self.resolve(&p)),
            set: Arc::new(set),
        })
    }

    /// The NAME of a `cohort.<NAME>` baggage member: a token.
    fn baggage_name(&mut self, key: &str, name: &str) -> bool {
        let ok = is_token(name);
        if !ok {
            self.fail(
                key,
                format!("{name:?} must be a token (letters, digits and !#$%&'*+-.^_`|~)"),
            );
        }
        ok
    }

    fn hash(&mut self, key: &str, hash: Option<&str>, nginx_key: Option<String>) -> Hash {
        match (hash.unwrap_or("xxh3"), nginx_key) {
            ("xxh3", None) => Hash::Xxh3,
            ("xxh3", Some(_)) => {
                self.fail(format!("{key}.nginx_key"), "needs hash = \"nginx\"");
                Hash::Xxh3
            }
            ("nginx", None) => Hash::Nginx {
                nginx_key: KeyTemplate::new(KEY_PLACEHOLDER.to_owned()),
            },
            ("nginx", Some(template)) => {
                if !template.contains(KEY_PLACEHOLDER) {
                    self.fail(
                        format!("{key}.nginx_key"),
                        format!("{template:?} must contain {KEY_PLACEHOLDER}, where the cohort key goes"),
                    );
                }
                Hash::Nginx {
                    nginx_key: KeyTemplate::new(template),
                }
            }
            (other, _) => {
                self.fail(
                    format!("{key}.hash"),
                    format!("{other:?} is neither \"xxh3\" nor \"nginx\""),
                );
                Hash::Xxh3
            }
        }
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
        let has_limits =
            max_error_ratio.is_some() || max_error_ratio_vs_stable.is_some() || max_p99.is_some();
        let method = match raw.method.as_deref() {
            None | Some("threshold") => {
                if !has_limits {
                    self.fail(
                        key,
                        "needs at least one of max_error_ratio, max_error_ratio_vs_stable, max_p99",
                    );
                }
                for (name, set) in [
                    ("alpha", raw.alpha.is_some()),
                    ("min_effect", raw.min_effect.is_some()),
                    ("latency_over", raw.latency_over.is_some()),
                ] {
                    if set {
                        self.fail(
                            format!("{key}.{name}"),
                            "belongs to method = \"sequential\"",
                        );
                    }
                }
                Method::Threshold
            }
            Some("sequential") => {
                if has_limits {
                    // One judge per guard: fixed limits and evidence would answer
                    // different questions under one verdict.
                    self.fail(
                        key,
                        "method = \"sequential\" judges by evidence against stable; max_error_ratio, max_error_ratio_vs_stable and max_p99 belong to method = \"threshold\"",
                    );
                }
                let holds = raw.action.as_deref() == Some("hold") && has_rollout;
                let settings = (raw.alpha, raw.min_effect, raw.latency_over.as_deref());
                self.sequential(key, settings, holds)
            }
            Some(other) => {
                self.fail(
                    format!("{key}.method"),
                    format!("unknown method {other:?} (use \"threshold\" or \"sequential\")"),
                );
                Method::Threshold
            }
        };
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
        let source = match raw.source {
            None => Source::Local,
            Some(source) => self.prometheus(&format!("{key}.source.prometheus"), source.prometheus),
        };
        (self.issues.len() == before).then_some(Guard {
            source,
            window,
            min_requests: raw.min_requests.unwrap_or(DEFAULT_GUARD_MIN_REQUESTS),
            max_error_ratio,
            max_error_ratio_vs_stable,
            max_p99,
            action,
            on_rollback: raw.on_rollback,
            method,
        })
    }

    /// `source = { prometheus = URL }`: Prometheus' base URL, `http://` (the guard asks
    /// its HTTP API under it, so a path prefix such as `/prometheus` is kept).
    fn prometheus(&mut self, key: &str, url: String) -> Source {
        let parsed = url.parse::<http::Uri>().ok().filter(|u| {
            u.scheme_str() == Some("http") && u.authority().is_some() && u.query().is_none()
        });
        if parsed.is_none() {
            self.fail(
                key,
                format!("{url:?} must be Prometheus' http:// base URL, such as \"http://prometheus:9090\""),
            );
        }
        Source::Prometheus {
            url: url.trim_end_matches('/').to_owned(),
        }
    }

    /// The settings of `method = "sequential"` (DESIGN §12).
    fn sequential(
        &mut self,
        key: &str,
        (alpha, min_effect, latency_over): (Option<f64>, Option<f64>, Option<&str>),
        holds: bool,
    ) -> Method {
        let alpha = alpha.unwrap_or(sequential::DEFAULT_ALPHA);
        if !(alpha > 0.0 && alpha < 1.0) {
            self.fail(
                format!("{key}.alpha"),
                format!("{alpha} must be above 0 and below 1"),
            );
        }
        let min_effect = min_effect.unwrap_or(sequential::DEFAULT_MIN_EFFECT);
        if !(min_effect > 0.0 && min_effect <= 1.0) {
            self.fail(
                format!("{key}.min_effect"),
                format!("{min_effect} must be an error-ratio increase above 0, at most 1"),
            );
        }
        let latency_over = latency_over.map(|text| {
            let at = format!("{key}.latency_over");
            let d = self.positive_duration(&at, text);
            // Slow requests are counted from the duration histogram, so the limit must
            // be one of its bucket bounds: anything else would be silently rounded.
            let seconds = d.as_secs_f64();
            if !d.is_zero() && crate::histogram::bound_index(seconds).is_none() {
                let bounds: Vec<String> = crate::histogram::DURATION_BUCKETS
                    .iter()
                    .map(|b| format!("{}ms", b * 1000.0))
                    .collect();
                self.fail(
                    at,
                    format!(
                        "{text:?} must be a bound of the duration histogram: one of {}",
                        bounds.join(", ")
                    ),
                );
            }
            d
        });
        if holds {
            // A sequential test's fail is final until it restarts; a hold would never end.
            self.fail(
                format!("{key}.action"),
                "method = \"sequential\" fails for good once it has the evidence; use \"rollback\"",
            );
        }
        Method::Sequential(sequential::Settings {
            alpha,
            min_effect,
            latency_over,
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
            if !is_token(name) {
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
        let before = self.issues.len();
        let tls = raw.tls.map(|t| self.upstream_tls(&format!("{key}.tls"), t));
        if tls.is_some() && !endpoints.is_empty() && !any_https {
            self.fail(
                format!("{key}.tls"),
                "applies to https:// endpoints, and this variant has none",
            );
        }
        // The shell logs it each time it loads the config.
        let verifies_nothing = tls.as_ref().is_some_and(|t| t.insecure_skip_verify);
        if any_https && verifies_nothing && self.issues.len() == before {
            self.warnings.push(ConfigWarning::InsecureSkipVerify {
                key: format!("{key}.tls.insecure_skip_verify"),
            });
        }
        let endpoints = endpoints
            .into_iter()
            .enumerate()
            .map(|(i, (mut endpoint, https))| {
                endpoint.transport = match (https, protocol) {
                    (false, Protocol::Http1) => Transport::Http1,
                    (false, Protocol::H2c) => Transport::H2c,
                    (false, Protocol::H2) => {
                        self.fail(
                            format!("{key}.endpoints[{i}]"),
                            "protocol = \"h2\" needs an https:// endpoint (use \"h2c\" for HTTP/2 without TLS)",
                        );
                        Transport::Http1
                    }
                    (true, Protocol::H2c) => {
                        self.fail(
                            format!("{key}.endpoints[{i}]"),
                            "protocol = \"h2c\" is HTTP/2 without TLS and needs an http:// endpoint (use \"h2\" for https://)",
                        );
                        Transport::Http1
                    }
                    (true, Protocol::Http1) => Transport::Tls { h2: false },
                    (true, Protocol::H2) => Transport::Tls { h2: true },
                };
                endpoint
            })
            .collect();
        Upstream {
            endpoints,
            protocol,
            tls,
        }
    }

    fn upstream_tls(&mut self, key: &str, raw: RawUpstreamTls) -> UpstreamTls {
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
            // The rule rustls applies to SNI names, from its types crate (no TLS in here).
            let ok = rustls_pki_types::ServerName::try_from(name.as_str()).is_ok();
            if !ok {
                self.fail(
                    format!("{key}.server_name"),
                    format!("{name:?} is not a DNS name or IP address"),
                );
            }
            ok
        });
        UpstreamTls {
            ca: raw.ca.map(|p| self.resolve(&p)),
            server_name,
            client_cert: raw.client_cert.map(|p| self.resolve(&p)),
            client_key: raw.client_key.map(|p| self.resolve(&p)),
            insecure_skip_verify: raw.insecure_skip_verify,
        }
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
        Some(ServerTls {
            cert: self.resolve(&raw.cert),
            key: self.resolve(&raw.key),
            client_ca: raw.client_ca.map(|p| self.resolve(&p)),
        })
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
        if !is_token(&cookie) {
            self.fail(
                format!("{key}.cookie"),
                format!("{cookie:?} is not a valid cookie name"),
            );
        }
        let trusted = self.nets(&format!("{key}.trusted"), &raw.trusted);
        Override {
            header,
            cookie,
            trusted,
        }
    }

    /// A list of CIDRs or single addresses (`override.trusted`, `listen.trusted_proxies`).
    fn nets(&mut self, key: &str, list: &[String]) -> Vec<IpNet> {
        let mut nets = Vec::with_capacity(list.len());
        for (i, cidr) in list.iter().enumerate() {
            match parse_net(cidr) {
                Some(net) => nets.push(net),
                None => self.fail(
                    format!("{key}[{i}]"),
                    format!("{cidr:?} is not a CIDR such as \"10.0.0.0/8\" or an IP address"),
                ),
            }
        }
        nets
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
            idle: timeout("idle", raw.idle, defaults.idle),
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

/// Bytes in a size text such as "10MiB" or "64 KB"; `None` if it is not one.
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let unit: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    number.checked_mul(unit)
}
