//! cohort: a sidecar reverse proxy for staged rollouts, as a library: [`start`] a
//! [`Running`] instance from a [`config::Loaded`] config. The `cohort` binary
//! (`src/main.rs`, `src/cli/`) is its command line; tests and embedders use this.
//!
//! The pure core decides: [`cohort`] (hashing and assignment), [`rollout`] (schedules,
//! verdicts, time), [`router`] (route matching and the decision) and the config's schema
//! and rules (re-exported by [`config`]) come from the `cohort-core` crate. The shell
//! does I/O: loading a config ([`config::load`]: the core's validation, then the TLS
//! files it names), the server and listeners, the two HTTP/1 engines (hyper's in
//! `engine::proxy`, the own fast path in [`h1`]; `src/engine/`), which take every request decision from
//! one policy module ([`request`]), upstream pools, the runtime (reload, the file
//! watcher, the snapshot, the guard evaluator [`guard`]; `src/runtime/`), the admin
//! listener (`src/admin/`) and metrics (`src/metrics/`). `window` (the sliding windows
//! behind the figures and the guards) is shell: the clock is passed in, but it is state
//! the workers write (atomics, one lane per worker thread), not a function of its inputs.
#![forbid(unsafe_code)]

pub use cohort_core::{baggage, client_addr, cohort, rollout, router, segment, split_clients};

// The folders are the architecture (ARCHITECTURE.md): the request policy, the two
// engines, the upstream pools, the runtime (server, reloads, snapshot, guard), the admin
// listener and metrics; config.rs and tls.rs turn the files a config names into values.
mod admin;
pub mod config;
mod engine;
mod metrics;
pub mod request;
mod runtime;
mod tls;
mod upstream;

// What tests, benches, the binary and embedders reach by name.
pub use admin::status_page;
pub use engine::h1;
pub use request::id as request_id;
pub use runtime::{guard, reload, state_dir};

pub use engine::proxy::ACCESS_LOG_TARGET;
pub use runtime::server::{start, start_with, Running, StartError, StartOptions};
pub use tls::ServerConfigError;
pub use upstream::{Resolve, Resolved, SystemResolver};
