//! The raw TOML schema: what serde reads, before any rule is checked. Unknown keys are
//! errors; a syntax or type error names the key path and the line.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) listen: RawListen,
    #[serde(default)]
    pub(crate) admin: RawAdmin,
    pub(crate) state_dir: Option<String>,
    #[serde(default)]
    pub(crate) routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListen {
    #[serde(default = "default_listen_address")]
    pub(crate) address: String,
    #[serde(default)]
    pub(crate) workers: usize,
    pub(crate) drain_timeout: Option<String>,
    pub(crate) shutdown_delay: Option<String>,
    pub(crate) variant_header: Option<String>,
    #[serde(default)]
    pub(crate) access_log: bool,
    pub(crate) tls: Option<RawServerTls>,
    #[serde(default)]
    pub(crate) trusted_proxies: Vec<String>,
    // Limits (DESIGN §10); absent = the default in `model::Limits`.
    pub(crate) max_connections: Option<i64>,
    pub(crate) header_timeout: Option<String>,
    pub(crate) idle_timeout: Option<String>,
    pub(crate) max_header_bytes: Option<RawSize>,
    pub(crate) max_headers: Option<i64>,
    pub(crate) h2_max_concurrent_streams: Option<i64>,
}

/// A size in bytes: a TOML integer, or text with a unit such as "10MiB".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawSize {
    Bytes(i64),
    Text(String),
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
            trusted_proxies: Vec::new(),
            max_connections: None,
            header_timeout: None,
            idle_timeout: None,
            max_header_bytes: None,
            max_headers: None,
            h2_max_concurrent_streams: None,
        }
    }
}

fn default_listen_address() -> String {
    "0.0.0.0:8080".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    #[serde(default = "default_admin_address")]
    pub(crate) address: String,
    pub(crate) token_file: Option<String>,
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
pub(crate) struct RawServerTls {
    pub(crate) cert: String,
    pub(crate) key: String,
    pub(crate) client_ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) name: String,
    pub(crate) host: Option<String>,
    pub(crate) tls: Option<RawServerTls>,
    #[serde(default = "default_path_prefix")]
    pub(crate) path_prefix: String,
    #[serde(default)]
    pub(crate) sticky: Vec<String>,
    pub(crate) salt: Option<String>,
    #[serde(default)]
    pub(crate) canary_percent: Percent,
    pub(crate) stable: Option<RawVariant>,
    pub(crate) canary: Option<RawVariant>,
    #[serde(rename = "override")]
    pub(crate) override_: Option<RawOverride>,
    #[serde(default)]
    pub(crate) timeouts: RawTimeouts,
    pub(crate) rollout: Option<RawRollout>,
    pub(crate) guard: Option<RawGuard>,
    pub(crate) max_body: Option<RawSize>,
    // Targeting and the call chain (DESIGN §11).
    #[serde(default)]
    pub(crate) segments: Vec<RawSegment>,
    pub(crate) propagate: Option<String>,
    pub(crate) follow: Option<String>,
    pub(crate) hash: Option<String>,
    pub(crate) nginx_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSegment {
    #[serde(rename = "match")]
    pub(crate) on: String,
    #[serde(default)]
    pub(crate) values: Vec<String>,
    pub(crate) values_file: Option<String>,
    pub(crate) variant: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRollout {
    /// RFC 3339, as a string or a TOML date-time.
    pub(crate) start: toml::Value,
    pub(crate) steps: Vec<Percent>,
    pub(crate) step_every: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGuard {
    pub(crate) window: Option<String>,
    pub(crate) min_requests: Option<u64>,
    pub(crate) max_error_ratio: Option<f64>,
    pub(crate) max_error_ratio_vs_stable: Option<f64>,
    pub(crate) max_p99: Option<String>,
    pub(crate) action: Option<String>,
    pub(crate) on_rollback: Option<String>,
    pub(crate) method: Option<String>,
    pub(crate) alpha: Option<f64>,
    pub(crate) min_effect: Option<f64>,
    pub(crate) latency_over: Option<String>,
    pub(crate) source: Option<RawSource>,
}

/// `source = { prometheus = URL }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSource {
    pub(crate) prometheus: String,
}

fn default_path_prefix() -> String {
    "/".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVariant {
    #[serde(default)]
    pub(crate) endpoints: Vec<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    pub(crate) ca: Option<String>,
    pub(crate) server_name: Option<String>,
    pub(crate) client_cert: Option<String>,
    pub(crate) client_key: Option<String>,
    #[serde(default)]
    pub(crate) insecure_skip_verify: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOverride {
    pub(crate) header: Option<String>,
    pub(crate) cookie: Option<String>,
    #[serde(default)]
    pub(crate) trusted: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub(crate) connect: Option<String>,
    pub(crate) request: Option<String>,
    pub(crate) idle: Option<String>,
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

pub(crate) fn parse_raw(text: &str, file: &Path) -> Result<RawConfig, ConfigError> {
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
