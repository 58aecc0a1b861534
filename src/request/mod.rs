//! The request policy: every decision about one proxied request that is not wire
//! handling, written once and called by both engines (hyper's in `crate::engine::proxy`, which
//! also serves HTTP/2 and TLS, and cohort's own HTTP/1.1 fast path in `crate::engine::h1`).
//!
//! - [`begin`]: route lookup and the 404, the (variant, source) decision and its
//!   counting, whether cohort draws a request id, the access log's start;
//! - [`retry`]: the one retry on another endpoint of the same variant;
//! - [`errors`]: an upstream failure → (status, metric kind, body), one match;
//! - [`reject`]: a request head neither engine can serve (400, 414, 431) → (status,
//!   body, close), one match, counted as unrouted and logged;
//! - [`record`]: the one exit point (metrics, guard window, access log line, the
//!   upstream-failure warning), body cuts and clients gone before a response included;
//! - [`forward`]: the header rules of both hops (hop-by-hop list, `X-Forwarded-*`,
//!   `X-Cohort-Variant`, the request id, the response decoration), as data both
//!   engines apply: hyper's to a `HeaderMap`, the own path while writing head bytes.
//!
//! What an engine parses and how it writes bytes stays the engine's own.

pub(crate) mod begin;
pub(crate) mod errors;
pub mod forward;
pub mod id;
pub(crate) mod log;
pub(crate) mod record;
pub mod reject;
pub(crate) mod retry;
