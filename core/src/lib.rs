//! cohort-core: the decisions of cohort as pure functions of their inputs. Nothing here
//! reads a clock, a file or a socket: times, counts and file contents are handed in, so
//! every rule is unit-tested directly and the shell (`cohort`) only does I/O.
#![forbid(unsafe_code)]

pub mod baggage;
pub mod client_addr;
pub mod cohort;
pub mod config;
pub mod histogram;
pub mod rollout;
pub mod router;
pub mod segment;
pub mod split_clients;
