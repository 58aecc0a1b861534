//! Shared scenario helpers for integration tests, all on 127.0.0.1 ephemeral ports, one
//! file a concern; this file only re-exports them, so a test writes `support::get`.
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

mod cohort;
mod config;
pub mod h2frames;
mod http;
pub mod nginx;
mod pattern;
pub mod prom;
pub mod prometheus;
mod sys;
mod upstream;
mod wire;

pub use self::cohort::*;
pub use self::config::*;
pub use self::http::*;
pub use self::pattern::*;
pub use self::prom::{promtool_check_metrics, series_value};
pub use self::sys::*;
pub use self::upstream::*;
pub use self::wire::*;
