//! The start of a proxied request (DESIGN §1.2–1.5): route lookup (no route → 404,
//! counted as unrouted), the (variant, source) decision and its counting, whether
//! cohort draws the request id, and the access log's record when it is on. The
//! engine hands in what it parsed (host, path, header fields, the TCP peer), and the
//! client's address is derived here once (DESIGN §10) for everything that judges a client.

use std::net::{IpAddr, SocketAddr};

use http::{Method, StatusCode};

use crate::config::Route;
use crate::metrics::Metrics;
use crate::request::id::{self, RequestId};
use crate::request::log::AccessLog;
use crate::router::{self, Decision, Fields};
use crate::runtime::snapshot::{RouteState, Snapshot};

/// The body of the 404 for a request no route matches.
pub(crate) const NO_ROUTE_BODY: &str = "no route matches this request\n";

/// The index of the route for (`host`, `path`) in `snap`; `None`, counted as an
/// unrouted 404 (send [`NO_ROUTE_BODY`]), when no route matches.
#[inline]
pub(crate) fn find_route(
    metrics: &Metrics,
    snap: &Snapshot,
    host: Option<&str>,
    path: &str,
) -> Option<usize> {
    let found = snap.table.find(&snap.config.routes, host, path);
    if found.is_none() {
        metrics.unrouted(StatusCode::NOT_FOUND.as_u16());
    }
    found
}

/// The client's address: the TCP `peer`, or, when `listen.trusted_proxies` holds it,
/// the address its `X-Forwarded-For` names (`cohort_core::client_addr`). It is what the
/// `ip` key, `override.trusted` and the access log judge. With no trusted proxies (the
/// default) nothing is read; otherwise the walk is bounded and allocates nothing.
#[inline]
pub(crate) fn client_addr(snap: &Snapshot, peer: IpAddr, fields: &impl Fields) -> IpAddr {
    let trusted = &snap.config.listen.trusted_proxies;
    if trusted.is_empty() {
        return peer;
    }
    crate::client_addr::client_addr(peer, trusted, fields.forwarded_for())
}

/// Decides the request's variant and counts it: the assignment by source, and the
/// request in flight (until [`record`](super::record) finishes it).
#[inline]
pub(crate) fn decide(
    route: &Route,
    state: &RouteState,
    fields: &impl Fields,
    client: IpAddr,
) -> Decision {
    let decision = router::decide(route, state.share(), fields, client, draw_key);
    let variant_metrics = state.metrics.variant(decision.variant);
    variant_metrics.assigned(decision.source);
    variant_metrics.started();
    decision
}

/// A fresh random cohort key for a client that sent none: 128 random bits in hex.
pub(crate) fn draw_key() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// Whether cohort draws a request id: the client's own (`client_id`, the first
/// `x-request-id`) passes through unchanged unless it is blank, and a request without
/// one gets one drawn, forwarded upstream whether or not anything is logged (Envoy's
/// behaviour).
#[inline]
pub(crate) fn draws_request_id(client_id: Option<&[u8]>) -> bool {
    !client_id.is_some_and(id::usable)
}

/// The access log's record of the request when `listen.access_log` is on (one heap
/// block, so the figures only the line shows cost nothing otherwise); `method` is
/// asked for only then. The line shows both the TCP `peer` and the `client` address.
#[inline]
#[allow(clippy::too_many_arguments)] // what one line records, each from the engine
pub(crate) fn access_log(
    snap: &Snapshot,
    method: impl FnOnce() -> Method,
    path: &str,
    peer: SocketAddr,
    client: IpAddr,
    decision: &Decision,
    client_id: Option<&[u8]>,
    drawn_id: Option<&RequestId>,
) -> Option<Box<AccessLog>> {
    snap.config.listen.access_log.then(|| {
        let id = match drawn_id {
            Some(drawn) => drawn.as_bytes(),
            None => client_id.unwrap_or_default(),
        };
        Box::new(AccessLog::new(
            method(),
            path,
            peer,
            client,
            decision.source,
            id,
        ))
    })
}
