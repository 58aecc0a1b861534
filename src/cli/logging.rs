//! Logging on stderr: `RUST_LOG` read by [`super::log_filter`], the access log as JSON
//! always, everything else as `--log-format` says.

use clap::ValueEnum;
use tracing_subscriber::filter::{filter_fn, Targets};
use tracing_subscriber::Layer as _;

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `RUST_LOG` as `level` or `target=level` pairs (`warn,cohort::access=info`, see
/// `log_filter`). A `Targets` filter rather than `EnvFilter`: it needs no regex engine,
/// whose code and tables would otherwise sit in every sidecar's memory.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let info = || Targets::new().with_default(tracing::level_filters::LevelFilter::INFO);
    let (filter, bad) = match std::env::var("RUST_LOG") {
        Ok(spec) => match super::log_filter::parse(&spec) {
            Ok(filter) => (filter, None),
            Err(e) => (info(), Some((spec, e))),
        },
        Err(_) => (info(), None),
    };
    // Access log lines are JSON in either format (DESIGN §1.8: log shippers parse them);
    // everything else follows --log-format.
    let is_access = |m: &tracing::Metadata<'_>| m.target() == cohort::ACCESS_LOG_TARGET;
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
