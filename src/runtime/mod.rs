//! What runs beside the engines: the server that starts and stops them ([`server`]),
//! the one place changes are applied ([`reload`]) and the snapshot it swaps
//! ([`snapshot`]), the one file watcher ([`watch`]), the config write-back
//! ([`writeback`]), the rollout/guard evaluator and each route's memory ([`guard`],
//! its fleet source [`fleet`], their HTTP calls [`outbound`]) and what survives a
//! restart ([`state_dir`]).

pub(crate) mod fleet;
pub mod guard;
pub(crate) mod outbound;
pub mod reload;
pub(crate) mod server;
pub(crate) mod snapshot;
pub mod state_dir;
pub(crate) mod watch;
pub(crate) mod writeback;
