//! The `cohort` command line: parse arguments, load config, run. Nothing else.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use tracing_subscriber::filter::{filter_fn, Targets};
use tracing_subscriber::Layer as _;

use bytes::Bytes;
use http::Method;

use cohort::client;
use cohort::cohort::{assign, BasisPoints};
use cohort::config::{self, DEFAULT_CONFIG_PATH};
use cohort::guard::{offline_memory, offline_share, wall_now};
use cohort::rollout::{describe_guard, describe_rollout, late_start};

#[derive(Parser)]
#[command(
    name = "cohort",
    version,
    about = "A sidecar reverse proxy for staged rollouts: sticky hashed cohorts, per-variant metrics."
)]
struct Cli {
    /// Config file (TOML). set, rollback, status and rollout resume read it only when
    /// given, for the instance's admin.address and admin.token_file
    #[arg(short, long, global = true, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Log format on stderr; the level comes from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Validate the config and print the effective routes.
    Check,
    /// Show which variant a cohort key gets on a route.
    Assign {
        #[arg(long)]
        route: String,
        #[arg(long)]
        key: String,
    },
    /// Set a route's canary percentage on a running instance (written back to its file).
    Set {
        route: String,
        /// 0..100 in 0.01 steps: `10`, `2.5` or `2.5%`.
        #[arg(value_parser = parse_percent)]
        percent: BasisPoints,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Set a route's canary percentage to 0 on a running instance.
    Rollback {
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Progressive rollouts on a running instance.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Show each route's split and per-variant figures of a running instance.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Start built-in demo upstreams and the proxy on loopback, and show the split.
    Demo {
        /// Stop after this long (e.g. "5s"); runs until Ctrl-C without it.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Serve a tiny upstream that answers every request with its name (body and
    /// `x-upstream` header): the stable and canary of docker-compose, or local experiments.
    DemoUpstream {
        /// The name it answers with.
        #[arg(long)]
        name: String,
        /// Address to listen on (`127.0.0.1:0` picks a free port; the log line says which).
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: std::net::SocketAddr,
        /// Status code of every answer (e.g. 500 for a failing canary).
        #[arg(long, default_value = "200", value_parser = parse_status)]
        status: http::StatusCode,
        /// Wait this long before answering (e.g. "50ms").
        #[arg(long, default_value = "0s", value_parser = parse_duration)]
        delay: Duration,
    },
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Clear a rollback (guard or manual) so the rollout follows its schedule again.
    Resume {
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(clap::Args)]
struct AdminArgs {
    /// Admin listener of the running instance: http://HOST:PORT or HOST:PORT [default:
    /// admin.address of the file given with -c, else http://127.0.0.1:9901]
    #[arg(long)]
    admin: Option<String>,
    /// File holding the admin token [default: admin.token_file of the file given with -c]
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// Where an admin-client command calls, and the token file it reads, if any.
struct AdminTarget {
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
            Some(path) => Some((path, config::load(path).map_err(|e| e.to_string())?.admin)),
            None => None,
        };
        let base = match (self.admin, &from_file) {
            (Some(admin), _) => client::admin_base(&admin),
            (None, Some((path, admin))) if admin.address.port() == 0 => {
                return Err(format!(
                    "{}: admin.address: {} has no fixed port to call; pass --admin HOST:PORT",
                    path.display(),
                    admin.address
                ))
            }
            (None, Some((_, admin))) => client::admin_url_for(admin.address),
            (None, None) => client::DEFAULT_ADMIN_URL.to_owned(),
        };
        let token_file = self
            .token_file
            .or_else(|| from_file.and_then(|(_, admin)| admin.token_file));
        Ok(AdminTarget { base, token_file })
    }
}

fn parse_percent(text: &str) -> Result<BasisPoints, String> {
    let number = text.trim().trim_end_matches('%').trim();
    let percent: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a percentage such as 10, 2.5 or 2.5%"))?;
    BasisPoints::from_percent(percent).map_err(|e| e.to_string())
}

/// A final status an upstream can answer with: 1xx are interim answers, not a reply.
fn parse_status(text: &str) -> Result<http::StatusCode, String> {
    text.parse::<u16>()
        .ok()
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| http::StatusCode::from_u16(code).ok())
        .ok_or_else(|| format!("{text:?} is not a final HTTP status code (200..=599)"))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration: {e}"))
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The admin-client commands read a config only when one is named: without `-c`
    // they call the default address, as they always have.
    let admin_config = (matches.value_source("config") == Some(ValueSource::CommandLine))
        .then(|| cli.config.clone());
    let admin_config = admin_config.as_deref();
    init_logging(cli.log_format);
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config),
        Command::Check => check(&cli.config),
        Command::Assign { route, key } => assign_key(&cli.config, &route, &key),
        Command::Demo { duration } => in_runtime(cohort::demo::run(duration)),
        Command::DemoUpstream {
            name,
            listen,
            status,
            delay,
        } => in_runtime(cohort::demo::run_upstream(
            listen,
            cohort::demo::UpstreamSpec {
                name,
                status,
                delay,
            },
        )),
        Command::Set {
            route,
            percent,
            admin,
        } => admin_call(admin, admin_config, |a| {
            change(a, route, Change::Set(percent))
        }),
        Command::Rollback { route, admin } => {
            admin_call(admin, admin_config, |a| change(a, route, Change::Rollback))
        }
        Command::Rollout {
            command: RolloutCommand::Resume { route, admin },
        } => admin_call(admin, admin_config, |a| change(a, route, Change::Resume)),
        Command::Status { admin } => admin_call(admin, admin_config, status),
    }
}

/// `RUST_LOG` as `level` or `target=level` pairs (`warn,cohort::access=info`, see
/// `log_filter`). A `Targets` filter rather than `EnvFilter`: it needs no regex engine,
/// whose code and tables would otherwise sit in every sidecar's memory.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let info = || Targets::new().with_default(tracing::level_filters::LevelFilter::INFO);
    let (filter, bad) = match std::env::var("RUST_LOG") {
        Ok(spec) => match cohort::log_filter::parse(&spec) {
            Ok(filter) => (filter, None),
            Err(e) => (info(), Some((spec, e))),
        },
        Err(_) => (info(), None),
    };
    // Access log lines are JSON in either format (DESIGN §1.8: log shippers parse them);
    // everything else follows --log-format.
    let is_access = |m: &tracing::Metadata<'_>| m.target() == cohort::proxy::ACCESS_LOG_TARGET;
    let access = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(std::io::stderr)
        .with_filter(filter_fn(is_access));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let not_access = filter_fn(move |m| !is_access(m));
    let registry = tracing_subscriber::registry().with(filter).with(access);
    match format {
        LogFormat::Text => registry.with(layer.with_filter(not_access)).init(),
        LogFormat::Json => registry.with(layer.json().with_filter(not_access)).init(),
    }
    if let Some((spec, e)) = bad {
        tracing::warn!(rust_log = %spec, error = %e, "RUST_LOG is not valid; logging at info");
    }
}

fn load_or_report(path: &std::path::Path) -> Option<config::Config> {
    match config::load(path) {
        Ok(config) => Some(config),
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let Some(config) = load_or_report(path) else {
        return ExitCode::from(1);
    };
    in_runtime(async move {
        let mut stops = cohort::signals::StopSignals::new();
        let running = match cohort::start(config).await {
            Ok(running) => running,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(1);
            }
        };
        stops.next().await;
        tracing::info!("stop signal received");
        tokio::select! {
            _ = running.stop_gracefully() => {
                tracing::info!("drained; bye");
                ExitCode::SUCCESS
            }
            _ = stops.next() => {
                tracing::warn!("second stop signal: exiting without waiting for the delay or the drain");
                // Dropping the runtime would wait for the draining workers; leave now.
                std::process::exit(1)
            }
        }
    })
}

fn in_runtime(work: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    // The control plane (admin listener, signals, demo) needs little: the main thread
    // (no extra thread, stack or allocator arena). The proxy has its own worker threads.
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(work),
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            ExitCode::from(1)
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let Some(config) = load_or_report(path) else {
        return ExitCode::from(1);
    };
    // `run` and a reload read it too, and refuse the config without it.
    if let Err(e) = cohort::reload::read_token(&config) {
        eprintln!("{e}");
        return ExitCode::from(1);
    }
    // `run` refuses to start without a usable state_dir: so does `check`.
    if let Some(dir) = &config.state_dir {
        if let Err(e) = cohort::state_dir::check(dir) {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    let now = wall_now();
    cohort::out!(
        "{}: ok; listen {}, admin {}, {} route(s)",
        path.display(),
        config.listen.address,
        config.admin.address,
        config.routes.len()
    );
    for route in &config.routes {
        let list = |endpoints: &[config::Endpoint]| {
            endpoints
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let sticky: Vec<String> = route.sticky.iter().map(ToString::to_string).collect();
        cohort::out!(
            "route {:?}: host={} path_prefix={} canary={}% salt={:?} sticky=[{}] stable=[{}] canary=[{}]",
            route.name,
            route.host.as_deref().unwrap_or("*"),
            route.path_prefix,
            offline_share(route, &config, wall_now()),
            route.salt,
            sticky.join(", "),
            list(&route.stable.endpoints),
            list(&route.canary.endpoints),
        );
        let memory = offline_memory(route, &config);
        if let Some(rollout) = &route.rollout {
            cohort::out!("  rollout: {}", describe_rollout(rollout, now, memory));
            if !memory.rolled_back {
                if let Some(late) = late_start(rollout, now, memory.resumed_at) {
                    eprintln!("warning: rollout {:?} {late}", route.name);
                }
            }
        } else if memory.rolled_back {
            cohort::out!(
                "  rolled back (remembered in state_dir): canary 0 % until `cohort rollout resume {}`",
                route.name
            );
        }
        if let Some(guard) = &route.guard {
            cohort::out!("  guard: {}", describe_guard(guard));
        }
    }
    ExitCode::SUCCESS
}

fn assign_key(path: &std::path::Path, route_name: &str, key: &str) -> ExitCode {
    let Some(config) = load_or_report(path) else {
        return ExitCode::from(1);
    };
    let Some(route) = config.routes.iter().find(|r| r.name == route_name) else {
        let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        eprintln!(
            "{}: no route named {route_name:?} (routes: {})",
            path.display(),
            names.join(", ")
        );
        return ExitCode::from(1);
    };
    let (bucket, variant) = assign(
        &route.salt,
        key.as_bytes(),
        offline_share(route, &config, wall_now()),
    );
    cohort::out!("route={route_name} key={key} bucket={bucket} variant={variant}");
    ExitCode::SUCCESS
}

/// Runs an admin-client command against the instance `args` and `-c` point at; a
/// config that does not load is a failed call (exit 1), reported as `cohort check` does.
fn admin_call<F>(
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
enum Change {
    Set(BasisPoints),
    Rollback,
    Resume,
}

async fn change(admin: AdminTarget, route: String, what: Change) -> ExitCode {
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
    cohort::out!(
        "route {route}: canary {}%{note}",
        percent(&state["canary_percent"])
    );
    ExitCode::SUCCESS
}

async fn status(admin: AdminTarget) -> ExitCode {
    match admin_json(&admin.base, Method::GET, "/routes", &[], Bytes::new()).await {
        Ok(routes) => {
            cohort::out!("{}", cohort::status_table::table(&routes).trim_end());
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
    let answer = client::call(base, method, path, headers, body)
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
