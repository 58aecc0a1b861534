//! Configs for the cohort under test, built rather than written as TOML strings:
//! `Config::new().route(Route::new("web").stable(&a).canary(&b).canary_percent(25))`.
//! The listener and the admin API are on ephemeral loopback ports with one worker, as
//! every test wants; what a test adds is what it is about. Tests whose point is the TOML
//! text itself (comments kept on write-back, pitfalls, bad configs) write it raw.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use super::upstream::FakeUpstream;

/// A whole config file: top-level keys, `[listen]`, `[admin]` and the routes.
#[derive(Debug, Clone)]
pub struct Config {
    top: Vec<String>,
    listen: Vec<String>,
    admin: Vec<String>,
    routes: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
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
            admin: vec!["address = \"127.0.0.1:0\"".to_owned()],
            routes: Vec::new(),
        }
    }

    /// The top-level `state_dir`.
    pub fn state_dir(mut self, dir: &Path) -> Config {
        let dir = dir.to_str().expect("utf-8 path");
        self.top.push(format!("state_dir = {}", quoted(dir)));
        self
    }

    /// More `[listen]` lines, e.g. `drain_timeout = "5s"` (empty adds nothing).
    pub fn listen_extra(mut self, lines: &str) -> Config {
        if !lines.is_empty() {
            self.listen.push(lines.to_owned());
        }
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

    /// `admin.address` instead of `127.0.0.1:0`.
    pub fn admin_address(mut self, address: &str) -> Config {
        self.admin[0] = format!("address = {}", quoted(address));
        self
    }

    /// More `[admin]` lines, e.g. `token_file = "token"`.
    pub fn admin_extra(mut self, lines: &str) -> Config {
        if !lines.is_empty() {
            self.admin.push(lines.to_owned());
        }
        self
    }

    pub fn route(mut self, route: Route) -> Config {
        self.routes.push(route.to_toml());
        self
    }

    /// `[[routes]]` blocks written as TOML (for what [`Route`] does not say).
    pub fn routes_toml(mut self, toml: &str) -> Config {
        self.routes.push(toml.to_owned());
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
        text.push_str(&format!("[listen]\n{}\n\n", self.listen.join("\n")));
        text.push_str(&format!("[admin]\n{}\n\n", self.admin.join("\n")));
        text.push_str(&self.routes.join("\n"));
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
    stable: Option<Vec<String>>,
    canary: Option<Vec<String>>,
    stable_fields: Vec<String>,
    canary_fields: Vec<String>,
    extra: Vec<String>,
    tables: Vec<String>,
}

impl Route {
    pub fn new(name: &str) -> Route {
        Route {
            name: name.to_owned(),
            salt: format!("{name}-salt"),
            keys: Vec::new(),
            stable: None,
            canary: None,
            stable_fields: Vec::new(),
            canary_fields: Vec::new(),
            extra: Vec::new(),
            tables: Vec::new(),
        }
    }

    pub fn salt(mut self, salt: &str) -> Route {
        self.salt = salt.to_owned();
        self
    }

    /// `sticky = [...]`, e.g. `&["header:x-user-id"]`.
    pub fn sticky(self, sources: &[&str]) -> Route {
        let list: Vec<String> = sources.iter().map(|s| quoted(s)).collect();
        self.key("sticky", &format!("[{}]", list.join(", ")))
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

    /// The stable variant's `protocol` (e.g. `h2c`); empty leaves the default.
    pub fn stable_protocol(self, protocol: &str) -> Route {
        if protocol.is_empty() {
            return self;
        }
        self.stable_field(&format!("protocol = {}", quoted(protocol)))
    }

    /// More of the stable variant's table after its endpoints, e.g. `tls = { ca = "…" }`
    /// (empty adds nothing).
    pub fn stable_field(mut self, fields: &str) -> Route {
        if !fields.is_empty() {
            self.stable_fields.push(fields.to_owned());
        }
        self
    }

    /// Like [`Route::stable_field`], for the canary variant.
    pub fn canary_field(mut self, fields: &str) -> Route {
        if !fields.is_empty() {
            self.canary_fields.push(fields.to_owned());
        }
        self
    }

    /// The canary variant with these endpoint URLs.
    pub fn canary_urls(mut self, urls: &[impl AsRef<str>]) -> Route {
        self.canary = Some(urls.iter().map(|u| u.as_ref().to_owned()).collect());
        self
    }

    /// A `[routes.rollout]` table with these lines.
    pub fn rollout(self, lines: &str) -> Route {
        self.table("routes.rollout", lines)
    }

    /// A `[routes.guard]` table with these lines.
    pub fn guard(self, lines: &str) -> Route {
        self.table("routes.guard", lines)
    }

    /// A sub-table `[NAME]` of the route with these lines.
    pub fn table(mut self, name: &str, lines: &str) -> Route {
        self.tables.push(format!("[{name}]\n{lines}\n"));
        self
    }

    /// TOML written after the variants, before the tables: keys the builder has no
    /// method for, or tables of its own (empty adds nothing).
    pub fn extra(mut self, toml: &str) -> Route {
        if !toml.is_empty() {
            self.extra.push(toml.to_owned());
        }
        self
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
        if let Some(urls) = &self.stable {
            text.push_str(&variant_line("stable", urls, &self.stable_fields));
        }
        if let Some(urls) = &self.canary {
            text.push_str(&variant_line("canary", urls, &self.canary_fields));
        }
        for block in self.extra.iter().chain(&self.tables) {
            text.push_str(&format!("{block}\n"));
        }
        text
    }
}

/// `stable = { endpoints = ["URL", ...], FIELDS }` and its newline.
fn variant_line(which: &str, urls: &[String], fields: &[String]) -> String {
    let list: Vec<String> = urls.iter().map(|u| quoted(u)).collect();
    let mut table = vec![format!("endpoints = [{}]", list.join(", "))];
    table.extend(fields.iter().cloned());
    format!("{which} = {{ {} }}\n", table.join(", "))
}

/// A `[[routes]]` block with a stable and a canary upstream, `extra` after them.
pub fn route(name: &str, stable: &FakeUpstream, canary: &FakeUpstream, extra: &str) -> String {
    Route::new(name)
        .stable(stable)
        .canary(canary)
        .extra(extra)
        .to_toml()
}

/// `text` as a TOML basic string.
pub fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}
