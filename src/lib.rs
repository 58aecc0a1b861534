//! cohort: a sidecar reverse proxy for staged rollouts.
pub mod cohort;
pub mod config;
pub mod router;
