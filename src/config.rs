//! Loading a config: read the file, parse and validate its text
//! ([`cohort_core::config`], pure), then read every file it names and build what TLS
//! needs. [`load`] and [`parse`] return a [`Loaded`] config or every problem found.
//!
//! A certificate, key or CA that cannot be used is reported like an invalid value: the
//! file, the key naming it and the reason (`cohort.toml: listen.tls.key: /etc/…/key.pem:
//! does not match the certificate in …`). Files are read once the text is valid.

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

// The schema, the rules and the validated types live in the core; the shell adds the
// files. (This module's own `parse` stands in for the core's: it reads the files too.)
pub use cohort_core::config::*;

use crate::cohort::Variant;
use crate::tls::{self, ClientSettings, ClientTls, ServerCert};

/// A validated config with every file it names read and built: what cohort runs.
/// Compared whole, so a changed certificate is a new config though the text is not.
/// Reads as its [`Config`].
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub config: Config,
    pub tls: TlsMaterial,
}

impl Deref for Loaded {
    type Target = Config;

    #[inline]
    fn deref(&self) -> &Config {
        &self.config
    }
}

/// The TLS files a config names, read, checked and built.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsMaterial {
    /// `listen.tls`'s certificate.
    pub listener: Option<ServerCert>,
    /// Per route, in the order of `config.routes`.
    pub routes: Vec<RouteTls>,
}

/// One route's TLS material.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteTls {
    /// The certificate served by SNI for the route's `host`.
    pub sni: Option<ServerCert>,
    /// Each variant's client config for its `https://` endpoints, when it has any
    /// (by [`Variant::index`]).
    pub clients: [Option<Arc<ClientTls>>; 2],
}

impl Loaded {
    /// The client TLS of `variant` of route `index`, for its `https://` endpoints.
    pub fn client_tls(&self, index: usize, variant: Variant) -> Option<&Arc<ClientTls>> {
        self.tls.routes.get(index)?.clients[variant.index()].as_ref()
    }
}

/// Reads, validates and loads a config file.
pub fn load(file: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| ConfigError::file(file, format!("cannot read the file: {e}")))?;
    parse(&text, file)
}

/// Validates config text and reads the files it names. `file` names it in errors and
/// anchors relative paths.
pub fn parse(text: &str, file: &Path) -> Result<Loaded, ConfigError> {
    read_files(cohort_core::config::parse(text, file)?)
}

/// Reads the files a validated config names (its certificates, keys and CAs, its
/// segments' values files) and builds what TLS needs from them.
pub fn read_files(mut config: Config) -> Result<Loaded, ConfigError> {
    config.load_values_files(|path| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    })?;
    let file = config.source.as_path();
    let mut issues = Vec::new();
    let tls = read_tls(&config, &mut issues);
    if !issues.is_empty() {
        return Err(ConfigError {
            file: file.to_path_buf(),
            issues,
        });
    }
    for warning in config.warnings() {
        tracing::warn!(file = %file.display(), key = %warning.key(), "{warning}");
    }
    Ok(Loaded { config, tls })
}

/// Reads every certificate, key and CA the config names, in file order; a file that
/// cannot be used is an issue under the key that names it.
fn read_tls(config: &Config, issues: &mut Vec<ConfigIssue>) -> TlsMaterial {
    let listener = config
        .listen
        .tls
        .as_ref()
        .and_then(|t| server_cert("listen.tls", t, issues));
    let routes = config
        .routes
        .iter()
        .enumerate()
        .map(|(i, route)| {
            let key = format!("routes[{i}]");
            let sni = route
                .tls
                .as_ref()
                .and_then(|t| server_cert(&format!("{key}.tls"), t, issues));
            let client = |variant: &str, upstream: &Upstream, issues: &mut Vec<ConfigIssue>| {
                client_tls(&format!("{key}.{variant}"), upstream, issues)
            };
            RouteTls {
                sni,
                clients: [
                    client("stable", &route.stable, issues),
                    client("canary", &route.canary, issues),
                ],
            }
        })
        .collect();
    TlsMaterial { listener, routes }
}

/// A listener certificate: `listen.tls` or a route's `tls`.
fn server_cert(key: &str, tls: &ServerTls, issues: &mut Vec<ConfigIssue>) -> Option<ServerCert> {
    match tls::load_server_material(&tls.cert, &tls.key, tls.client_ca.as_deref()) {
        Ok(material) => Some(ServerCert {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            client_ca: tls.client_ca.clone(),
            material,
        }),
        Err(e) => {
            let field = if e.path == tls.cert {
                "cert"
            } else if tls.client_ca.as_deref() == Some(e.path.as_path()) {
                "client_ca"
            } else {
                "key"
            };
            issues.push(ConfigIssue {
                key: format!("{key}.{field}"),
                reason: e.to_string(),
            });
            None
        }
    }
}

/// Reads a variant's TLS files and builds its client config, when it has `https://`
/// endpoints.
fn client_tls(
    key: &str,
    upstream: &Upstream,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Arc<ClientTls>> {
    let https = |e: &Endpoint| matches!(e.transport, Transport::Tls { .. });
    if !upstream.endpoints.iter().any(https) {
        return None;
    }
    let settings = upstream.tls.as_ref();
    let client = ClientSettings {
        ca: settings.and_then(|t| t.ca.clone()),
        client_cert: settings.and_then(|t| t.client_cert.clone()),
        client_key: settings.and_then(|t| t.client_key.clone()),
        insecure_skip_verify: settings.is_some_and(|t| t.insecure_skip_verify),
        h2: upstream.protocol == Protocol::H2,
    };
    let server_name = settings.and_then(|t| t.server_name.as_deref());
    match ClientTls::build(&client, server_name) {
        Ok(tls) => Some(Arc::new(tls)),
        Err(e) => {
            let field = [
                (&client.ca, "ca"),
                (&client.client_cert, "client_cert"),
                (&client.client_key, "client_key"),
            ]
            .into_iter()
            .find(|(path, _)| path.as_deref() == Some(e.path.as_path()))
            .map_or(key.to_owned(), |(_, name)| format!("{key}.tls.{name}"));
            issues.push(ConfigIssue {
                key: field,
                reason: e.to_string(),
            });
            None
        }
    }
}
