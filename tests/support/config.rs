//! Configs for the cohort under test, built rather than written as TOML strings:
//! `Config::new().route(Route::new("web").stable(&a).canary(&b).canary_percent(25))`.
//! The listener and the admin API are on ephemeral loopback ports with one worker, as
//! every test wants; what a test adds is what it is about. Methods are named after the
//! config keys of DESIGN §2, §7 and §10. Tests whose point is the TOML text itself
//! (comments kept on write-back, pitfalls, bad configs) write it raw.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use super::upstream::FakeUpstream;

/// A whole config file: top-level keys, `[listen]`, `[admin]` and the routes.
#[derive(Debug, Clone)]
pub struct Config {
    top: Vec<String>,
    listen: Vec<String>,
    listen_tls: Vec<String>,
    admin: Vec<String>,
    routes: Vec<Route>,
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

/// A config with just this route.
impl From<Route> for Config {
    fn from(route: Route) -> Config {
        Config::new().route(route)
    }
}

impl Config {
    /// Listener and admin API on `127.0.0.1:0`, `workers = 1`, no routes yet.
    pub fn new() -> Config {
        Config {
            top: Vec::new(),
            listen: vec![
                "address = \"127.0.0.1:0\"".to_owned(),
                "workers = 1".to_owned(),
            ],
            listen_tls: Vec::new(),
            admin: vec!["address = \"127.0.0.1:0\"".to_owned()],
            routes: Vec::new(),
        }
    }

    /// The top-level `state_dir`.
    pub fn state_dir(mut self, dir: &Path) -> Config {
        self.top.push(format!("state_dir = {}", quoted_path(dir)));
        self
    }

    /// `listen.address` instead of `127.0.0.1:0`.
    pub fn listen_address(mut self, address: &str) -> Config {
        self.listen[0] = format!("address = {}", quoted(address));
        self
    }

    /// No `listen.workers` line: cohort's own default.
    pub fn default_workers(mut self) -> Config {
        self.listen.retain(|line| !line.starts_with("workers = "));
        self
    }

    /// `listen.drain_timeout`, e.g. `"5s"`.
    pub fn drain_timeout(self, duration: &str) -> Config {
        self.listen_key("drain_timeout", &quoted(duration))
    }

    /// `listen.shutdown_delay`, e.g. `"1s"`.
    pub fn shutdown_delay(self, duration: &str) -> Config {
        self.listen_key("shutdown_delay", &quoted(duration))
    }

    /// `listen.variant_header` (`""` turns the response header off).
    pub fn variant_header(self, name: &str) -> Config {
        self.listen_key("variant_header", &quoted(name))
    }

    /// `listen.access_log`.
    pub fn access_log(self, on: bool) -> Config {
        self.listen_key("access_log", &on.to_string())
    }

    /// `listen.trusted_proxies`: hops whose `X-Forwarded-For` is believed (DESIGN §10).
    pub fn trusted_proxies(self, cidrs: &[&str]) -> Config {
        self.listen_key("trusted_proxies", &quoted_list(cidrs))
    }

    /// `listen.max_connections`.
    pub fn max_connections(self, n: usize) -> Config {
        self.listen_key("max_connections", &n.to_string())
    }

    /// `listen.header_timeout`, e.g. `"300ms"`.
    pub fn header_timeout(self, duration: &str) -> Config {
        self.listen_key("header_timeout", &quoted(duration))
    }

    /// `listen.idle_timeout`, e.g. `"500ms"`.
    pub fn idle_timeout(self, duration: &str) -> Config {
        self.listen_key("idle_timeout", &quoted(duration))
    }

    /// `listen.max_header_bytes`.
    pub fn max_header_bytes(self, bytes: usize) -> Config {
        self.listen_key("max_header_bytes", &bytes.to_string())
    }

    /// `listen.max_headers`.
    pub fn max_headers(self, n: usize) -> Config {
        self.listen_key("max_headers", &n.to_string())
    }

    /// `listen.h2_max_concurrent_streams`.
    pub fn h2_max_concurrent_streams(self, n: u32) -> Config {
        self.listen_key("h2_max_concurrent_streams", &n.to_string())
    }

    /// `listen.tls = { cert, key }`: the listener speaks TLS with this default certificate.
    pub fn tls(mut self, cert: &Path, key: &Path) -> Config {
        self.listen_tls = vec![
            format!("cert = {}", quoted_path(cert)),
            format!("key = {}", quoted_path(key)),
        ];
        self
    }

    /// `listen.tls.client_ca`: clients must show a certificate from this CA (after
    /// [`Config::tls`]).
    pub fn client_ca(mut self, ca: &Path) -> Config {
        self.listen_tls
            .push(format!("client_ca = {}", quoted_path(ca)));
        self
    }

    /// `admin.address` instead of `127.0.0.1:0`.
    pub fn admin_address(mut self, address: &str) -> Config {
        self.admin[0] = format!("address = {}", quoted(address));
        self
    }

    /// `admin.token_file` (relative to the config file's directory).
    pub fn token_file(mut self, file: &str) -> Config {
        self.admin.push(format!("token_file = {}", quoted(file)));
        self
    }

    pub fn route(mut self, route: Route) -> Config {
        self.routes.push(route);
        self
    }

    fn listen_key(mut self, key: &str, value: &str) -> Config {
        self.listen.push(format!("{key} = {value}"));
        self
    }

    pub fn to_toml(&self) -> String {
        let mut text = String::new();
        for line in &self.top {
            text.push_str(&format!("{line}\n"));
        }
        if !self.top.is_empty() {
            text.push('\n');
        }
        let mut listen = self.listen.clone();
        if !self.listen_tls.is_empty() {
            listen.push(format!("tls = {}", inline_table(&self.listen_tls)));
        }
        text.push_str(&format!("[listen]\n{}\n\n", listen.join("\n")));
        text.push_str(&format!("[admin]\n{}\n\n", self.admin.join("\n")));
        let routes: Vec<String> = self.routes.iter().map(Route::to_toml).collect();
        text.push_str(&routes.join("\n"));
        text
    }

    /// Writes the config to `dir/cohort.toml` and returns that path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("cohort.toml");
        std::fs::write(&path, self.to_toml()).expect("write config");
        path
    }
}

/// One `[[routes]]` block. The salt is `{name}-salt` unless [`Route::salt`] says.
#[derive(Debug, Clone)]
pub struct Route {
    name: String,
    salt: String,
    keys: Vec<String>,
    overrides: Vec<String>,
    timeouts: Vec<String>,
    stable: Option<Vec<String>>,
    canary: Option<Vec<String>>,
    stable_fields: Vec<String>,
    canary_fields: Vec<String>,
    tables: Vec<String>,
}

impl Route {
    pub fn new(name: &str) -> Route {
        Route {
            name: name.to_owned(),
            salt: format!("{name}-salt"),
            keys: Vec::new(),
            overrides: Vec::new(),
            timeouts: Vec::new(),
            stable: None,
            canary: None,
            stable_fields: Vec::new(),
            canary_fields: Vec::new(),
            tables: Vec::new(),
        }
    }

    pub fn salt(mut self, salt: &str) -> Route {
        self.salt = salt.to_owned();
        self
    }

    /// `sticky = [...]`, e.g. `&["header:x-user-id"]`.
    pub fn sticky(self, sources: &[&str]) -> Route {
        self.key("sticky", &quoted_list(sources))
    }

    /// `max_body`, e.g. `"1KiB"`.
    pub fn max_body(self, size: &str) -> Route {
        self.key("max_body", &quoted(size))
    }

    pub fn canary_percent(self, percent: impl Display) -> Route {
        self.key("canary_percent", &percent.to_string())
    }

    pub fn host(self, host: &str) -> Route {
        self.key("host", &quoted(host))
    }

    pub fn path_prefix(self, prefix: &str) -> Route {
        self.key("path_prefix", &quoted(prefix))
    }

    /// The route's own certificate, served by SNI for its `host`: `tls = { cert, key }`.
    pub fn tls(self, cert: &Path, key: &Path) -> Route {
        let fields = [
            format!("cert = {}", quoted_path(cert)),
            format!("key = {}", quoted_path(key)),
        ];
        self.key("tls", &inline_table(&fields))
    }

    /// `override.header`: the request header that forces a variant.
    pub fn override_header(mut self, name: &str) -> Route {
        self.overrides.push(format!("header = {}", quoted(name)));
        self
    }

    /// `override.trusted`: the peers whose override (and baggage) is believed.
    pub fn trusted(mut self, cidrs: &[&str]) -> Route {
        self.overrides
            .push(format!("trusted = {}", quoted_list(cidrs)));
        self
    }

    /// `timeouts.connect`, e.g. `"200ms"`.
    pub fn connect_timeout(mut self, duration: &str) -> Route {
        self.timeouts
            .push(format!("connect = {}", quoted(duration)));
        self
    }

    /// `timeouts.request`: how long to wait for the response headers.
    pub fn request_timeout(mut self, duration: &str) -> Route {
        self.timeouts
            .push(format!("request = {}", quoted(duration)));
        self
    }

    /// `timeouts.idle`: how long a body may go without a byte moving either way.
    pub fn stream_idle_timeout(mut self, duration: &str) -> Route {
        self.timeouts.push(format!("idle = {}", quoted(duration)));
        self
    }

    /// The stable variant: `upstream` as its one endpoint.
    pub fn stable(self, upstream: &FakeUpstream) -> Route {
        self.stable_urls(&[&upstream.url()])
    }

    /// The canary variant: `upstream` as its one endpoint.
    pub fn canary(self, upstream: &FakeUpstream) -> Route {
        self.canary_urls(&[&upstream.url()])
    }

    /// The stable variant with these endpoint URLs.
    pub fn stable_urls(mut self, urls: &[impl AsRef<str>]) -> Route {
        self.stable = Some(urls.iter().map(|u| u.as_ref().to_owned()).collect());
        self
    }

    /// The canary variant with these endpoint URLs.
    pub fn canary_urls(mut self, urls: &[impl AsRef<str>]) -> Route {
        self.canary = Some(urls.iter().map(|u| u.as_ref().to_owned()).collect());
        self
    }

    /// The stable variant's `protocol` (e.g. `h2c`); empty leaves the default.
    pub fn stable_protocol(mut self, protocol: &str) -> Route {
        if !protocol.is_empty() {
            self.stable_fields
                .push(format!("protocol = {}", quoted(protocol)));
        }
        self
    }

    /// Like [`Route::stable_protocol`], for the canary variant.
    pub fn canary_protocol(mut self, protocol: &str) -> Route {
        if !protocol.is_empty() {
            self.canary_fields
                .push(format!("protocol = {}", quoted(protocol)));
        }
        self
    }

    /// The stable variant's `tls`, for its `https://` endpoints.
    pub fn stable_tls(mut self, tls: UpstreamTls) -> Route {
        self.stable_fields.push(tls.to_toml());
        self
    }

    /// Like [`Route::stable_tls`], for the canary variant.
    pub fn canary_tls(mut self, tls: UpstreamTls) -> Route {
        self.canary_fields.push(tls.to_toml());
        self
    }

    /// `[routes.rollout]`: from `start` (RFC 3339), one step of `steps` (percentages)
    /// each `step_every`.
    pub fn rollout(mut self, start: &str, steps: &[u32], step_every: &str) -> Route {
        let steps: Vec<String> = steps.iter().map(u32::to_string).collect();
        self.tables.push(format!(
            "[routes.rollout]\nstart = {}\nsteps = [{}]\nstep_every = {}\n",
            quoted(start),
            steps.join(", "),
            quoted(step_every)
        ));
        self
    }

    /// `[routes.guard]`.
    pub fn guard(mut self, guard: Guard) -> Route {
        self.tables
            .push(format!("[routes.guard]\n{}\n", guard.lines.join("\n")));
        self
    }

    /// A `[[routes.segments]]` rule with inline `values`.
    pub fn segment(mut self, on: &str, values: &[&str], variant: &str) -> Route {
        self.tables.push(format!(
            "[[routes.segments]]\nmatch = {}\nvalues = {}\nvariant = {}\n",
            quoted(on),
            quoted_list(values),
            quoted(variant)
        ));
        self
    }

    /// A `[[routes.segments]]` rule reading its values from `file`.
    pub fn segment_file(mut self, on: &str, file: &Path, variant: &str) -> Route {
        self.tables.push(format!(
            "[[routes.segments]]\nmatch = {}\nvalues_file = {}\nvariant = {}\n",
            quoted(on),
            quoted_path(file),
            quoted(variant)
        ));
        self
    }

    /// `propagate`: the baggage member `cohort.<name>` set on forwarded requests.
    pub fn propagate(self, name: &str) -> Route {
        self.key("propagate", &quoted(name))
    }

    /// `follow`: the baggage member `cohort.<name>` believed from trusted peers.
    pub fn follow(self, name: &str) -> Route {
        self.key("follow", &quoted(name))
    }

    /// `hash = "nginx"` with `nginx_key`.
    pub fn nginx_hash(self, nginx_key: &str) -> Route {
        self.key("hash", &quoted("nginx"))
            .key("nginx_key", &quoted(nginx_key))
    }

    fn key(mut self, key: &str, value: &str) -> Route {
        self.keys.push(format!("{key} = {value}"));
        self
    }

    pub fn to_toml(&self) -> String {
        let mut text = format!(
            "[[routes]]\nname = {}\nsalt = {}\n",
            quoted(&self.name),
            quoted(&self.salt)
        );
        for line in &self.keys {
            text.push_str(&format!("{line}\n"));
        }
        if !self.overrides.is_empty() {
            text.push_str(&format!("override = {}\n", inline_table(&self.overrides)));
        }
        if !self.timeouts.is_empty() {
            text.push_str(&format!("timeouts = {}\n", inline_table(&self.timeouts)));
        }
        if let Some(urls) = &self.stable {
            text.push_str(&variant_line("stable", urls, &self.stable_fields));
        }
        if let Some(urls) = &self.canary {
            text.push_str(&variant_line("canary", urls, &self.canary_fields));
        }
        for table in &self.tables {
            text.push_str(&format!("{table}\n"));
        }
        text
    }
}

/// The route `name` from `stable` to `canary`, users keyed by their `x-user-id` header:
/// the shape most scenarios start from, e.g. `user_route("app", &s, &c).canary_percent(50)`.
pub fn user_route(name: &str, stable: &FakeUpstream, canary: &FakeUpstream) -> Route {
    Route::new(name)
        .sticky(&["header:x-user-id"])
        .stable(stable)
        .canary(canary)
}

/// A variant's `tls`, for cohort as a TLS client of its `https://` endpoints:
/// `UpstreamTls::new().ca(&pki.ca_path()).server_name("api.internal")`.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTls {
    fields: Vec<String>,
}

impl UpstreamTls {
    pub fn new() -> UpstreamTls {
        UpstreamTls::default()
    }

    /// `ca`: the CA file the endpoint's certificate must chain to.
    pub fn ca(mut self, ca: &Path) -> UpstreamTls {
        self.fields.push(format!("ca = {}", quoted_path(ca)));
        self
    }

    /// `server_name`: the name checked, and sent by SNI, instead of the URL's host.
    pub fn server_name(mut self, name: &str) -> UpstreamTls {
        self.fields.push(format!("server_name = {}", quoted(name)));
        self
    }

    /// `client_cert` and `client_key`: cohort's certificate for mTLS upstreams.
    pub fn client_cert(mut self, cert: &Path, key: &Path) -> UpstreamTls {
        self.fields
            .push(format!("client_cert = {}", quoted_path(cert)));
        self.fields
            .push(format!("client_key = {}", quoted_path(key)));
        self
    }

    /// `insecure_skip_verify`.
    pub fn insecure_skip_verify(mut self, skip: bool) -> UpstreamTls {
        self.fields.push(format!("insecure_skip_verify = {skip}"));
        self
    }

    fn to_toml(&self) -> String {
        format!("tls = {}", inline_table(&self.fields))
    }
}

/// A `[routes.guard]` table, one key a method in the order called:
/// `Guard::new().window("2s").min_requests(10).max_error_ratio(0.2)`.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    lines: Vec<String>,
}

impl Guard {
    pub fn new() -> Guard {
        Guard::default()
    }

    /// `window`: the sliding window of outcomes, e.g. `"30s"`.
    pub fn window(self, duration: &str) -> Guard {
        self.key("window", &quoted(duration))
    }

    pub fn min_requests(self, requests: u32) -> Guard {
        self.key("min_requests", &requests.to_string())
    }

    pub fn max_error_ratio(self, ratio: f64) -> Guard {
        self.key("max_error_ratio", &format!("{ratio:?}"))
    }

    pub fn max_error_ratio_vs_stable(self, ratio: f64) -> Guard {
        self.key("max_error_ratio_vs_stable", &format!("{ratio:?}"))
    }

    /// `max_p99`, e.g. `"500ms"`.
    pub fn max_p99(self, duration: &str) -> Guard {
        self.key("max_p99", &quoted(duration))
    }

    /// `action`: `"rollback"` or `"hold"`.
    pub fn action(self, action: &str) -> Guard {
        self.key("action", &quoted(action))
    }

    /// `on_rollback`: the webhook URL.
    pub fn on_rollback(self, url: &str) -> Guard {
        self.key("on_rollback", &quoted(url))
    }

    /// `method`: `"threshold"` or `"sequential"`.
    pub fn method(self, method: &str) -> Guard {
        self.key("method", &quoted(method))
    }

    pub fn alpha(self, alpha: f64) -> Guard {
        self.key("alpha", &format!("{alpha:?}"))
    }

    pub fn min_effect(self, effect: f64) -> Guard {
        self.key("min_effect", &format!("{effect:?}"))
    }

    /// `latency_over`, e.g. `"250ms"`.
    pub fn latency_over(self, duration: &str) -> Guard {
        self.key("latency_over", &quoted(duration))
    }

    /// `source = { prometheus = URL }`: judge the fleet's counts.
    pub fn prometheus(self, url: &str) -> Guard {
        self.key("source", &format!("{{ prometheus = {} }}", quoted(url)))
    }

    fn key(mut self, key: &str, value: &str) -> Guard {
        self.lines.push(format!("{key} = {value}"));
        self
    }
}

/// `stable = { endpoints = ["URL", ...], FIELDS }` and its newline.
fn variant_line(which: &str, urls: &[String], fields: &[String]) -> String {
    let list: Vec<String> = urls.iter().map(|u| quoted(u)).collect();
    let mut table = vec![format!("endpoints = [{}]", list.join(", "))];
    table.extend(fields.iter().cloned());
    format!("{which} = {}\n", inline_table(&table))
}

/// `{ a = 1, b = 2 }`.
fn inline_table(fields: &[String]) -> String {
    format!("{{ {} }}", fields.join(", "))
}

/// `["a", "b"]`.
fn quoted_list(items: &[&str]) -> String {
    let list: Vec<String> = items.iter().map(|s| quoted(s)).collect();
    format!("[{}]", list.join(", "))
}

/// `text` as a TOML basic string.
pub fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `path` as a TOML basic string.
pub fn quoted_path(path: &Path) -> String {
    quoted(path.to_str().expect("utf-8 path"))
}
