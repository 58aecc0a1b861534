//! cohort: a sidecar reverse proxy for staged rollouts, as a library: [`start`] a
//! [`Running`] instance from a [`config::Loaded`] config. The `cohort` binary
//! (`src/main.rs`, `src/cli/`) is its command line; tests and embedders use this.
//!
//! The pure core decides: [`cohort`] (hashing and assignment), [`rollout`] (schedules,
//! verdicts, time), [`router`] (route matching and the decision) and the config's schema
//! and rules (re-exported by [`config`]) come from the `cohort-core` crate. The shell
//! does I/O: loading a config ([`config::load`]: the core's validation, then the TLS
//! files it names), the server and listeners, the two HTTP/1 engines (hyper's in
//! `proxy`, the own fast path in [`h1`]), which take every request decision from one
//! policy module ([`request`]), upstream pools, reload and the file watcher, the guard
//! evaluator ([`guard`]), the admin listener and metrics. `window` (the sliding windows
//! behind the figures and the guards) is shell: the clock is passed in, but it is state
//! the workers write (atomics, one lane per worker thread), not a function of its inputs.
#![forbid(unsafe_code)]

pub use cohort_core::{cohort, rollout, router};

mod admin;
mod charts;
pub mod config;
mod drain;
pub mod guard;
pub mod h1;
mod history;
mod listener;
mod metrics;
mod proxy;
pub mod reload;
pub mod request;
pub mod request_id;
mod request_log;
mod server;
mod snapshot;
pub mod state_dir;
pub mod status_page;
mod tls;
mod upstream;
mod watch;
mod webhook;
mod window;
mod writeback;

pub use proxy::ACCESS_LOG_TARGET;
pub use server::{start, Running, StartError};
pub use tls::ServerConfigError;
