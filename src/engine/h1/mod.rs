//! cohort's own HTTP/1.1 path for the common case: plain-TCP clients sending
//! HTTP/1.1 requests with small or no bodies to routes whose variants are plain
//! HTTP/1.1 upstreams.
//!
//! It exists for cost: no header maps, no per-request tasks or channels between a
//! server and a client connection, buffers lent only while bytes are in flight (an
//! idle keep-alive connection holds none), four syscalls per keep-alive request.
//! Everything else (HTTP/1.0, chunked or large request bodies, upgrades, `Expect`,
//! absolute-form targets, TLS or HTTP/2 on either side) is hyper's: a connection that
//! meets such a request is handed over with the bytes already read. A malformed head is
//! answered here, with the request policy's answer (`crate::request::reject`).

pub mod buffers;
pub mod chunked;
pub mod head;
pub mod rewind;
pub mod server;
pub mod upstream;
