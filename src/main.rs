//! The `cohort` command line: parse the arguments and dispatch to [`cli`], where the
//! commands' work is. Nothing else.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use cohort::cohort::BasisPoints;
use cohort::config::DEFAULT_CONFIG_PATH;

mod cli;

use cli::admin_client::{admin_call, change, status, AdminArgs, Change};
use cli::logging::{init_logging, LogFormat};
use cli::{demo, in_runtime, offline, serve};

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
        /// A request header segments or overrides read, `NAME=VALUE` (repeatable).
        #[arg(long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
        /// A request cookie, `NAME=VALUE` (repeatable).
        #[arg(long = "cookie", value_name = "NAME=VALUE")]
        cookies: Vec<String>,
        /// The client address, for `ip` segments and `override.trusted`.
        #[arg(long)]
        ip: Option<String>,
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
        Command::Run => serve::run(&cli.config),
        Command::Check => offline::check(&cli.config),
        Command::Assign {
            route,
            key,
            headers,
            cookies,
            ip,
        } => offline::assign_key(
            &cli.config,
            &route,
            &key,
            &offline::Attributes {
                headers,
                cookies,
                ip,
            },
        ),
        Command::Demo { duration } => in_runtime(demo::run(duration)),
        Command::DemoUpstream {
            name,
            listen,
            status,
            delay,
        } => in_runtime(demo::run_upstream(
            listen,
            demo::UpstreamSpec {
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
