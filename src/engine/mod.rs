//! The two HTTP engines and the listener in front of them. The listener accepts,
//! terminates TLS and tells HTTP/1 from HTTP/2; plain HTTP/1.1 goes to the own fast path
//! ([`h1`]: heads parsed in place, lent buffers), everything else (HTTP/2, TLS,
//! upgrades, what the fast path hands over) to hyper's ([`proxy`]). Both take every
//! request decision from `crate::request`; they own only the wire.

pub(crate) mod drain;
pub mod h1;
pub(crate) mod listener;
pub(crate) mod proxy;
pub(crate) mod write_stall;
