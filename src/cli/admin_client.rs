//! The admin-client commands (`set`, `rollback`, `rollout resume`, `status`): where
//! the running instance is (`--admin`, `-c FILE` or the default), one call to its admin
//! listener, and the answer as a line or a table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use http::Method;

use cohort::cohort::BasisPoints;
use cohort::config;

use super::{http_client, in_runtime};

#[derive(clap::Args)]
pub struct AdminArgs {
    /// Admin listener of the running instance: http://HOST:PORT or HOST:PORT [default:
    /// admin.address of the file given with -c, else http://127.0.0.1:9901]
    #[arg(long)]
    admin: Option<String>,
    /// File holding the admin token [default: admin.token_file of the file given with -c]
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// Where an admin-client command calls, and the token file it reads, if any.
pub struct AdminTarget {
    base: String,
    token_file: Option<PathBuf>,
}

impl AdminArgs {
    /// `--admin` and `--token-file` when given; else, when `-c FILE` was given on the
    /// command line, that file's `admin.address` and `admin.token_file` (so a command
    /// run beside an instance needs nothing but its config); else the defaults. A file
    /// given with `-c` must load, whatever the flags say: a typo in its name is an
    /// error, not a silent fallback to another instance.
    fn resolve(self, config_file: Option<&std::path::Path>) -> Result<AdminTarget, String> {
        let from_file = match config_file {
            Some(path) => Some((
                path,
                config::load(path).map_err(|e| e.to_string())?.config.admin,
            )),
            None => None,
        };
        let base = match (self.admin, &from_file) {
            (Some(admin), _) => admin_base(&admin),
            (None, Some((path, admin))) if admin.address.port() == 0 => {
                return Err(format!(
                    "{}: admin.address: {} has no fixed port to call; pass --admin HOST:PORT",
                    path.display(),
                    admin.address
                ))
            }
            (None, Some((_, admin))) => admin_url_for(admin.address),
            (None, None) => DEFAULT_ADMIN_URL.to_owned(),
        };
        let token_file = self
            .token_file
            .or_else(|| from_file.and_then(|(_, admin)| admin.token_file));
        Ok(AdminTarget { base, token_file })
    }
}

/// The admin listener the command line calls when told nothing.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9901";

/// An `--admin` value as a base URL: `http://host:port[/prefix]` as given, and a bare
/// `host:port` (`127.0.0.1:9901`, `[::1]:9901`, `localhost:9901`) as plain http, the
/// only scheme the admin listener speaks.
pub fn admin_base(text: &str) -> String {
    let text = text.trim();
    if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    }
}

/// The URL that reaches, from this machine, an admin listener bound to `addr` (a
/// config's `admin.address`). An unspecified address (`0.0.0.0`, `[::]`) listens on
/// every interface, so it is called on loopback of the same family: connecting to the
/// unspecified address itself works on Linux only, and says nothing to a reader.
pub fn admin_url_for(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// Runs an admin-client command against the instance `args` and `-c` point at; a
/// config that does not load is a failed call (exit 1), reported as `cohort check` does.
pub fn admin_call<F>(
    args: AdminArgs,
    config_file: Option<&std::path::Path>,
    command: impl FnOnce(AdminTarget) -> F,
) -> ExitCode
where
    F: std::future::Future<Output = ExitCode>,
{
    match args.resolve(config_file) {
        Ok(target) => in_runtime(command(target)),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// What `set`, `rollback` and `rollout resume` ask of a running instance.
pub enum Change {
    Set(BasisPoints),
    Rollback,
    Resume,
}

pub async fn change(admin: AdminTarget, route: String, what: Change) -> ExitCode {
    let token = match admin
        .token_file
        .as_deref()
        .map(cohort::reload::read_token_file)
        .transpose()
    {
        Ok(token) => token,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer.as_str()));
    }
    let encoded = encode_path_segment(&route);
    let (method, path, body) = match what {
        Change::Set(bp) => (
            Method::PUT,
            format!("/routes/{encoded}/canary"),
            format!("{{\"percent\": {bp}}}"),
        ),
        Change::Rollback => (
            Method::POST,
            format!("/routes/{encoded}/rollback"),
            String::new(),
        ),
        Change::Resume => (
            Method::POST,
            format!("/routes/{encoded}/resume"),
            String::new(),
        ),
    };
    let state = match admin_json(&admin.base, method, &path, &headers, Bytes::from(body)).await {
        Ok(state) => state,
        Err(reason) => {
            eprintln!("{reason}");
            return ExitCode::from(1);
        }
    };
    let percent = |value: &serde_json::Value| {
        value
            .as_f64()
            .and_then(|p| BasisPoints::from_percent(p).ok())
            .map_or_else(|| "?".to_owned(), |bp| bp.to_string())
    };
    let rolled_back = &state["rolled_back"];
    let note = if let Some(reason) = rolled_back["reason"].as_str() {
        let kept = match (
            rolled_back["remembered"].as_bool(),
            rolled_back["not_remembered_because"].as_str(),
        ) {
            (Some(true), _) => "remembered in state_dir".to_owned(),
            (_, Some(why)) => {
                eprintln!(
                    "warning: the rollback is in force but will not survive a restart: {why}"
                );
                format!("in memory only: {why}")
            }
            _ => "in memory only: no state_dir is set".to_owned(),
        };
        let mut note = format!(" (rolled back: {reason}, {kept}");
        if matches!(what, Change::Set(_)) {
            note.push_str(&format!(
                "; {}% applies after `cohort rollout resume {route}`",
                percent(&state["configured_percent"])
            ));
        }
        note + ")"
    } else {
        state["rollout"]["state"]
            .as_str()
            .map(|s| format!(" (rollout {s})"))
            .unwrap_or_default()
    };
    out!(
        "route {route}: canary {}%{note}",
        percent(&state["canary_percent"])
    );
    ExitCode::SUCCESS
}

pub async fn status(admin: AdminTarget) -> ExitCode {
    match admin_json(&admin.base, Method::GET, "/routes", &[], Bytes::new()).await {
        Ok(routes) => {
            out!("{}", super::status_table::table(&routes).trim_end());
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("{reason}");
            ExitCode::from(1)
        }
    }
}

/// One admin call whose 2xx answer is JSON; anything else becomes the line to print.
async fn admin_json(
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<serde_json::Value, String> {
    let answer = http_client::call(base, method, path, headers, body)
        .await
        .map_err(|e| format!("{e:#}"))?;
    if !answer.status.is_success() {
        return Err(format!("{}: {}", answer.status, answer.text().trim_end()));
    }
    serde_json::from_slice(&answer.body)
        .map_err(|e| format!("{base}{path} did not answer JSON: {e}"))
}

/// Route names are letters, digits, `-`, `_` and `.` (validated), so they go into a
/// path as they are; anything else is percent-encoded for safety.
fn encode_path_segment(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_values_without_a_scheme_are_plain_http() {
        for (given, base) in [
            ("127.0.0.1:9901", "http://127.0.0.1:9901"),
            (" [::1]:9901 ", "http://[::1]:9901"),
            ("localhost:9901", "http://localhost:9901"),
            ("http://127.0.0.1:9901", "http://127.0.0.1:9901"),
            ("http://10.0.0.7:9901/cohort", "http://10.0.0.7:9901/cohort"),
            // Kept as given, so `call` can say that only http:// is supported.
            ("https://10.0.0.7:9901", "https://10.0.0.7:9901"),
        ] {
            assert_eq!(admin_base(given), base, "{given}");
        }
    }

    #[test]
    fn an_unspecified_admin_address_is_called_on_loopback() {
        let url = |addr: &str| admin_url_for(addr.parse().expect("socket address"));
        assert_eq!(url("0.0.0.0:9901"), "http://127.0.0.1:9901");
        assert_eq!(url("[::]:9901"), "http://[::1]:9901");
        assert_eq!(url("127.0.0.1:9901"), "http://127.0.0.1:9901");
        assert_eq!(url("10.1.2.3:9000"), "http://10.1.2.3:9000");
        assert_eq!(url("[2001:db8::5]:9901"), "http://[2001:db8::5]:9901");
    }
}
