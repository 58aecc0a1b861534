//! cohort: a sidecar reverse proxy for staged rollouts.
//!
//! The pure core ([`cohort`], [`config`], [`router`], [`window`]) decides; the shell
//! ([`server`], [`listener`], [`proxy`], [`upstream`], [`admin`], [`metrics`]) does I/O.
//! The command line is the binary's (`src/main.rs`, `src/cli/`).

pub mod admin;
pub mod charts;
pub mod cohort;
pub mod config;
pub mod drain;
pub mod guard;
pub mod h1;
pub mod headers;
pub mod history;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod request_id;
pub mod request_log;
pub mod rollout;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod state_dir;
pub mod status_page;
pub mod tls;
pub mod upstream;
pub mod watch;
mod webhook;
pub mod window;
pub mod writeback;

pub use proxy::ACCESS_LOG_TARGET;
pub use server::{start, Running, StartError};
