//! `cohort run`: serve until SIGTERM or Ctrl-C, then stop gracefully.

use std::path::Path;
use std::process::ExitCode;

use super::signals::StopSignals;
use super::{in_runtime, load_or_report};

pub fn run(path: &Path) -> ExitCode {
    let Some(config) = load_or_report(path) else {
        return ExitCode::from(1);
    };
    in_runtime(async move {
        let mut stops = StopSignals::new();
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
