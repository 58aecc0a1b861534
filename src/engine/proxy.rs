//! hyper's engine: serves what cohort's own HTTP/1.1 path hands over, HTTP/2 and TLS.
//! One request's journey, the decisions taken by the request policy
//! (`crate::request`): pick route → pick variant → pick endpoint (one retry on the
//! same variant) → forward → record once when the response body ends or is cut.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::metrics::Metrics;
use crate::request::forward::{self, Forwarding};
use crate::request::id::{RequestId, X_REQUEST_ID};
use crate::request::log::Causes;
use crate::request::record::{Completion, Pending};
use crate::request::reject::{self, Malformed};
use crate::request::{begin, retry};
use crate::router::{self, Decision};
use crate::runtime::snapshot::{SharedSnapshot, Snapshot};
use crate::upstream::{BoxError, IdleWatch, Lease, Pool, Progress, Stall, UpstreamError};

/// What every request on one worker shares.
pub struct ProxyContext {
    pub snapshot: SharedSnapshot,
    pub metrics: Arc<Metrics>,
    pub pool: Pool,
    /// Plain HTTP/1.1 upstream connections of cohort's own client (`crate::engine::h1`).
    pub h1_pool: crate::engine::h1::upstream::Pool,
    /// `http` or `https`: the listener's scheme, for `X-Forwarded-Proto` and cookies.
    pub scheme: &'static str,
    /// The listener's limits (`listen.*`, read at start only).
    pub limits: crate::config::Limits,
}

/// A client connection's address, with its `X-Forwarded-For` text made once (hyper's
/// path; cohort's own HTTP/1.1 path writes the text per request, see `h1::server`).
pub struct Peer {
    pub addr: SocketAddr,
    pub forwarded_for: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            forwarded_for: forward::peer_value(addr.ip()),
        }
    }
}

/// Proxies one request. Never fails: every problem becomes a response.
pub async fn handle(
    ctx: &ProxyContext,
    mut req: Request<Incoming>,
    client: &Peer,
) -> Response<ProxyBody> {
    let peer = client.addr;
    // What hyper's parser lets through and the policy refuses (two `Host` fields, a
    // transfer coding other than `chunked`), answered as the own engine would.
    if let Some(malformed) = reject::fields(req.version(), req.headers()) {
        let answer = reject::rejected(&ctx.metrics, peer, malformed);
        return rejection_response(answer, req.version());
    }
    if req.version() == Version::HTTP_2 {
        if let Some(malformed) = h2_head_over_limits(&req, &ctx.limits) {
            let answer = reject::rejected(&ctx.metrics, peer, malformed);
            return rejection_response(answer, req.version());
        }
    }
    let start = Instant::now();
    let snap = ctx.snapshot.load_full();
    let host = router::request_host(req.uri(), req.headers());
    let path = req.uri().path();
    let Some(index) = begin::find_route(&ctx.metrics, &snap, host, path) else {
        return local_response(StatusCode::NOT_FOUND, begin::NO_ROUTE_BODY);
    };
    let (route, state) = snap.route(index);
    let client_ip = begin::client_addr(&snap, peer.ip(), req.headers());
    let decision = begin::decide(route, state, req.headers(), client_ip);
    let variant = decision.variant;
    let client_id = req.headers().get(&X_REQUEST_ID).map(HeaderValue::as_bytes);
    let drawn = begin::draws_request_id(client_id).then(RequestId::generate);
    let method = || req.method().clone();
    let access_log = begin::access_log(
        &snap,
        method,
        path,
        peer,
        client_ip,
        &decision,
        client_id,
        drawn.as_ref(),
    );
    // From here on the request is counted exactly once, even if the client leaves.
    let mut pending = Pending::new(Completion::new(
        snap.clone(),
        index,
        &decision,
        start,
        access_log,
    ));

    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| reject::body_too_large(route, length)) {
        return body_too_large(ctx, &snap, &decision, req.version(), pending.take());
    }
    let version = req.version();
    let upgrade = req.version() == Version::HTTP_11 && forward::is_upgrade_request(req.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let upstream_req = {
        let fwd = Forwarding::new(
            route,
            client_ip,
            ctx.scheme,
            &decision,
            drawn.as_ref(),
            req.headers(),
        );
        prepare_upstream_request(req, &fwd, client)
    };

    let progress = Progress::new();
    progress.limit_body(route.max_body);
    let mut endpoints = state.endpoints(variant);
    // The endpoint the request went to last, for the access log.
    let mut reached = None;
    let result = match endpoints.next() {
        None => Err(UpstreamError::NoEndpoints),
        Some(target) => {
            reached = Some(&target.authority);
            let timeouts = &route.timeouts;
            match ctx
                .pool
                .send(target, upstream_req, timeouts, &progress)
                .await
            {
                Ok(ok) => Ok(ok),
                Err((first_error, req)) => {
                    let again =
                        retry::another_endpoint(&first_error, &target.endpoint, &mut endpoints);
                    match (again, req) {
                        (Some(target), Some(req)) => {
                            pending.attempt_failed(&first_error);
                            reached = Some(&target.authority);
                            ctx.pool
                                .send(target, req, timeouts, &progress)
                                .await
                                .map_err(|(e, _)| e)
                        }
                        _ => Err(first_error),
                    }
                }
            }
        }
    };

    // No await from here on: the request cannot be dropped before it is counted.
    let mut completion = pending.take();
    let over_limit = result.is_err() && progress.body_over_limit();
    let invalid_body = result.is_err() && progress.client_body_invalid();
    let client_gone = result.is_err() && progress.client_gone_mid_body();
    let client_stalled = result.is_err() && progress.client_stalled();
    if let Some(log) = completion.log() {
        log.endpoint = reached.cloned();
        log.progress = Some(progress.clone());
    }
    let mut response = match result {
        Ok((mut resp, lease)) => {
            let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            forward::remove_hop_by_hop(resp.headers_mut(), switching && upgrade);
            match downstream_upgrade {
                Some(downstream) if switching => {
                    let upstream = hyper::upgrade::on(&mut resp);
                    tokio::spawn(tunnel(downstream, upstream));
                    drop(lease);
                    resp.map(|_| ProxyBody::empty())
                }
                _ => {
                    let idle = IdleWatch::new(progress, route.timeouts.idle, reached.cloned());
                    resp.map(|body| ProxyBody::upstream(body, lease, idle))
                }
            }
        }
        // A chunked body grew past `max_body`: the upstream request was aborted before
        // any response; the client gets the policy's 413 (and HTTP/1 closes).
        Err(_) if over_limit => too_large_response(version),
        // The client stopped sending its body for `timeouts.idle`: its 408, and no
        // upstream error (the upstream request was aborted, not failed).
        Err(_) if client_stalled => {
            rejection_response(reject::answer(Malformed::BodyStalled), version)
        }
        // The client's body framing broke (a bad chunk size), or the client hung up
        // mid-body: its doing, not the upstream's. The policy's 400, counted under the
        // route and variant (as 499 when nobody is left to read it, below).
        Err(_) if invalid_body || client_gone => {
            rejection_response(reject::answer(Malformed::InvalidBody), version)
        }
        Err(e) => {
            let answer = completion.failed(&e);
            local_response(answer.status, answer.body)
        }
    };

    forward::decorate_response(
        response.headers_mut(),
        forward::variant_header(&snap, variant),
        forward::cohort_cookie(&decision, ctx.scheme),
    );
    // 499: the client left before any response (DESIGN §1.8).
    completion.status = if client_gone {
        499
    } else {
        response.status().as_u16()
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // A tunnel has no end the metrics could wait for: count it when the 101 leaves.
        completion.finish();
    } else {
        response.body_mut().completion = Some(completion);
    }
    response
}

/// An HTTP/2 request head over the listener's limits, as the policy names it (431 on
/// that stream, counted as unrouted, like an HTTP/1 head): more header fields than
/// `max_headers` (pseudo-header fields not counted, as HTTP/1 counts no request line),
/// or a header list over `max_header_bytes` by HTTP/2's own measure (RFC 9113 §6.5.2:
/// each field's name and value plus 32, pseudo-header fields included). h2 lets lists
/// up to twice `max_header_bytes` through to here (`listener::h2_header_list_size`), so
/// that this answer, and its count, are cohort's.
fn h2_head_over_limits<B>(req: &Request<B>, limits: &crate::config::Limits) -> Option<Malformed> {
    let headers = req.headers();
    if headers.len() > limits.max_headers {
        return Some(Malformed::TooManyHeaders);
    }
    /// RFC 9113 §6.5.2's per-field overhead.
    const FIELD: usize = 32;
    let uri = req.uri();
    let pseudo = [
        (":method".len(), req.method().as_str().len()),
        (":scheme".len(), uri.scheme_str().map_or(0, str::len)),
        (
            ":authority".len(),
            uri.authority().map_or(0, |a| a.as_str().len()),
        ),
        (
            ":path".len(),
            uri.path_and_query().map_or(0, |p| p.as_str().len()),
        ),
    ];
    let size = pseudo.iter().map(|(n, v)| n + v + FIELD).sum::<usize>()
        + headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + FIELD)
            .sum::<usize>();
    (size > limits.max_header_bytes).then_some(Malformed::HeadTooLarge)
}

/// The policy's answer to a body over `max_body` (413; on HTTP/1 the connection closes,
/// as the rest of the body is not read).
fn too_large_response(version: Version) -> Response<ProxyBody> {
    rejection_response(reject::answer(Malformed::BodyTooLarge), version)
}

/// A policy rejection as a response: its status and body, and on HTTP/1 the
/// `connection: close` it asks for (HTTP/2 has no such field; the stream ends).
fn rejection_response(answer: reject::Rejection, version: Version) -> Response<ProxyBody> {
    let mut response = local_response(answer.status, answer.body);
    if answer.close && version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The policy's 413 for a body over the route's `max_body`, by its `Content-Length`,
/// before anything goes upstream; counted under the route and variant when it is sent.
/// On HTTP/1 the connection closes (the body is not read).
#[cold]
fn body_too_large(
    ctx: &ProxyContext,
    snap: &Snapshot,
    decision: &Decision,
    version: Version,
    mut completion: Completion,
) -> Response<ProxyBody> {
    let mut response = too_large_response(version);
    forward::decorate_response(
        response.headers_mut(),
        forward::variant_header(snap, decision.variant),
        forward::cohort_cookie(decision, ctx.scheme),
    );
    completion.status = response.status().as_u16();
    if let Some(log) = completion.log() {
        log.request_body_bytes = 0;
    }
    response.body_mut().completion = Some(completion);
    response
}

/// Rewrites the client's request for the upstream hop: the policy's header rules
/// (`crate::request::forward`) on hyper's header map, and the target and version an
/// HTTP/1.1 upstream hop needs.
fn prepare_upstream_request(
    req: Request<Incoming>,
    fwd: &Forwarding<'_>,
    client: &Peer,
) -> Request<Incoming> {
    let (mut parts, body) = req.into_parts();
    let upgrade = parts.version == Version::HTTP_11 && forward::is_upgrade_request(&parts.headers);
    let authority = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let headers = &mut parts.headers;
    forward::remove_hop_by_hop(headers, upgrade);
    // The target's authority (HTTP/2 `:authority`, an absolute-form HTTP/1.1 target)
    // is the host the request is for; the upstream hop carries it as `Host`
    // (RFC 9112 §3.2.2, RFC 9113 §8.3.1). Otherwise `Host` passes through unchanged.
    if let Some(authority) = &authority {
        headers.insert(HOST, authority.clone());
    }
    let forwarded_host = headers.get(HOST).cloned();
    forward::forward_headers(headers, fwd, &client.forwarded_for, forwarded_host);
    // HTTP/1.1 upstreams get origin-form targets; an HTTP/2 or absolute-form request
    // carries scheme and authority in its URI, which `Host` now holds instead.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
    }
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, body)
}

pub fn local_response(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Copies bytes both ways once both sides have switched protocols.
async fn tunnel(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "protocol upgrade failed");
            return;
        }
    };
    let mut downstream = TokioIo::new(downstream);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

/// The tracing target of access log lines (`listen.access_log`), always written as JSON.
pub use crate::request::log::ACCESS_LOG_TARGET;

/// The response body sent to the client: the upstream's, streamed, or cohort's own.
/// It records the request's metrics when it ends, fails or is dropped, and hands
/// the upstream connection back to the pool once the body was read to its end.
pub struct ProxyBody {
    inner: Inner,
    completion: Option<Completion>,
}

enum Inner {
    Upstream {
        body: Incoming,
        lease: Option<Lease>,
        /// The stream idle timeout; it knows the endpoint, for the warning if the
        /// upstream cuts the body or stalls.
        idle: IdleWatch,
    },
    Local(Option<Bytes>),
}

/// A response body the upstream left idle for `timeouts.idle`.
#[derive(Debug)]
struct IdleTimedOut;

impl std::fmt::Display for IdleTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no body bytes either way for the route's timeouts.idle")
    }
}

impl std::error::Error for IdleTimedOut {}

impl ProxyBody {
    /// `lease` is the HTTP/1.1 connection to give back at the end (HTTP/2 ones are shared).
    fn upstream(body: Incoming, lease: Option<Lease>, idle: IdleWatch) -> ProxyBody {
        ProxyBody {
            inner: Inner::Upstream { body, lease, idle },
            completion: None,
        }
    }

    pub fn local(bytes: Bytes) -> ProxyBody {
        ProxyBody {
            inner: Inner::Local(Some(bytes)),
            completion: None,
        }
    }

    pub fn empty() -> ProxyBody {
        ProxyBody {
            inner: Inner::Local(None),
            completion: None,
        }
    }

    fn finish(&mut self) {
        if let Some(c) = self.completion.take() {
            c.finish();
        }
    }

    fn return_connection(&mut self) {
        if let Inner::Upstream { lease, .. } = &mut self.inner {
            if let Some(lease) = lease.take() {
                Pool::give_back(lease);
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream { body, idle, .. } => match Pin::new(body).poll_frame(cx) {
                Poll::Pending => match idle.poll_stalled(cx) {
                    Poll::Pending => return Poll::Pending,
                    // Nothing moved either way for `timeouts.idle`: the client's stream
                    // is cut (HTTP/1: closed before the body's end; HTTP/2: reset), and
                    // the request keeps its status. Blamed on the upstream unless the
                    // request body was still waiting for the client.
                    Poll::Ready(stall) => {
                        if let (Stall::Upstream(error), Some(c)) = (stall, &mut this.completion) {
                            c.cut(&error);
                        }
                        this.finish();
                        return Poll::Ready(Some(Err(Box::new(IdleTimedOut))));
                    }
                },
                Poll::Ready(frame) => {
                    idle.moved();
                    Poll::Ready(frame)
                }
            },
        };
        match &polled {
            Poll::Ready(None) => {
                this.return_connection();
                this.finish();
            }
            Poll::Ready(Some(Err(e))) => {
                // The upstream cut the body after its headers: the client's stream is
                // cut too (hyper closes it), and the request keeps its status. (Unless
                // cohort aborted the request itself, its client having stalled.)
                if let (Some(c), Inner::Upstream { idle, .. }) = (&mut this.completion, &this.inner)
                {
                    if !idle.client_stalled() {
                        let error = UpstreamError::Reset {
                            authority: idle.authority().unwrap_or_default().to_owned(),
                            source: Causes(e).to_string().into(),
                        };
                        c.cut(&error);
                    }
                }
                this.finish();
            }
            Poll::Ready(Some(Ok(frame))) => {
                let log = this.completion.as_mut().and_then(Completion::log);
                if let (Some(log), Some(data)) = (log, frame.data_ref()) {
                    log.response_body_bytes += data.len() as u64;
                }
            }
            Poll::Pending => {}
        }
        polled.map(|frame| frame.map(|result| result.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Local(bytes) => bytes.is_none(),
            Inner::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Local(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Inner::Local(None) => SizeHint::with_exact(0),
            Inner::Upstream { body, .. } => body.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper may skip polling a body that says it is already at its end.
        if self.is_end_stream() {
            self.return_connection();
        }
        self.finish();
    }
}
