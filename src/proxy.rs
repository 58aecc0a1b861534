//! One request's journey: pick route → pick variant → pick endpoint → forward →
//! record once when the response leaves.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, SET_COOKIE};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::cohort::Variant;
use crate::headers::{self, X_COHORT_VARIANT};
use crate::metrics::Metrics;
use crate::request_id::{self, RequestId, X_REQUEST_ID};
pub(crate) use crate::request_log::AccessLog;
use crate::request_log::{self, Causes};
use crate::router::{self, AssignSource, Decision};
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::upstream::{Lease, Pool, Progress, UpstreamError};

/// What every request on one worker shares.
pub struct ProxyContext {
    pub snapshot: SharedSnapshot,
    pub metrics: Arc<Metrics>,
    pub pool: Pool,
    /// Plain HTTP/1.1 upstream connections of cohort's own client (`crate::h1`).
    pub h1_pool: crate::h1::upstream::Pool,
    /// `http` or `https`: the listener's scheme, for `X-Forwarded-Proto` and cookies.
    pub scheme: &'static str,
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
            forwarded_for: headers::peer_value(addr.ip()),
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
    let start = Instant::now();
    let snap = ctx.snapshot.load_full();
    let host = router::request_host(req.uri(), req.headers());
    let Some(index) = snap.table.find(&snap.config.routes, host, req.uri().path()) else {
        ctx.metrics.unrouted(StatusCode::NOT_FOUND.as_u16());
        return local_response(StatusCode::NOT_FOUND, "no route matches this request\n");
    };
    let (route, state) = snap.route(index);
    let decision = router::decide(route, state.share(), req.headers(), peer.ip(), draw_key);
    let variant = decision.variant;
    let variant_metrics = state.metrics.variant(variant);
    variant_metrics.assigned(decision.source);
    variant_metrics.started();
    // The client's id passes through unchanged; a request without one gets one drawn
    // here, forwarded upstream whether or not anything is logged (Envoy's behaviour).
    let drawn = match req.headers().get(&X_REQUEST_ID) {
        Some(id) if request_id::usable(id.as_bytes()) => None,
        _ => Some(RequestId::generate()),
    };
    let access_log = snap.config.listen.access_log.then(|| {
        let id = match &drawn {
            Some(id) => id.as_bytes(),
            None => req
                .headers()
                .get(&X_REQUEST_ID)
                .map_or(&[][..], |v| v.as_bytes()),
        };
        Box::new(AccessLog::new(
            req.method().clone(),
            req.uri().path(),
            peer,
            decision.source,
            id,
        ))
    });
    // From here on the request is counted exactly once, even if the client leaves.
    let mut pending = Pending::new(Completion::new(
        snap.clone(),
        index,
        &decision,
        start,
        access_log,
    ));

    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade_request(req.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let upstream_req = prepare_upstream_request(req, route, &decision, client, ctx.scheme, drawn);

    let progress = Progress::new();
    let mut endpoints = state.endpoints(variant);
    // The endpoint the request went to last, for the access log.
    let mut reached = None;
    let result = match endpoints.next() {
        None => Err(UpstreamError::NoEndpoints),
        Some((endpoint, authority)) => {
            reached = Some(authority);
            let timeouts = &route.timeouts;
            match ctx
                .pool
                .send(endpoint, authority, upstream_req, timeouts, &progress)
                .await
            {
                Ok(ok) => Ok(ok),
                // Nothing reached the first endpoint: one retry on another endpoint of
                // the same variant. Never the other variant; that would corrupt the
                // experiment.
                Err((first_error, Some(req))) if first_error.nothing_sent() => {
                    match endpoints.next().filter(|(e, _)| e != endpoint) {
                        Some((endpoint, authority)) => {
                            reached = Some(authority);
                            ctx.pool
                                .send(endpoint, authority, req, timeouts, &progress)
                                .await
                                .map_err(|(e, _)| e)
                        }
                        None => Err(first_error),
                    }
                }
                Err((e, _)) => Err(e),
            }
        }
    };

    // No await from here on: the request cannot be dropped before it is counted.
    let mut completion = pending.take();
    if let Some(log) = completion.log() {
        log.endpoint = reached.cloned();
        log.progress = Some(progress);
    }
    let mut response = match result {
        Ok((mut resp, lease)) => {
            let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            headers::remove_hop_by_hop(resp.headers_mut(), switching && upgrade);
            match downstream_upgrade {
                Some(downstream) if switching => {
                    let upstream = hyper::upgrade::on(&mut resp);
                    tokio::spawn(tunnel(downstream, upstream));
                    drop(lease);
                    resp.map(|_| ProxyBody::empty())
                }
                _ => resp.map(|body| ProxyBody::upstream(body, lease, reached.cloned())),
            }
        }
        Err(e) => {
            completion.upstream_failed(&e);
            local_response(error_status(e.kind()), error_body(&e))
        }
    };

    decorate_response(&mut response, &snap, variant, &decision, ctx.scheme);
    completion.status = response.status().as_u16();
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // A tunnel has no end the metrics could wait for: count it when the 101 leaves.
        completion.finish();
    } else {
        response.body_mut().completion = Some(completion);
    }
    response
}

/// Rewrites the client's request for the upstream hop (DESIGN §1.7).
fn prepare_upstream_request(
    req: Request<Incoming>,
    route: &crate::config::Route,
    decision: &Decision,
    client: &Peer,
    scheme: &'static str,
    drawn_id: Option<RequestId>,
) -> Request<Incoming> {
    let peer = client.addr;
    let (mut parts, body) = req.into_parts();
    let upgrade = parts.version == Version::HTTP_11 && headers::is_upgrade_request(&parts.headers);
    let authority = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let headers = &mut parts.headers;
    headers::remove_hop_by_hop(headers, upgrade);
    if let Some(ovr) = &route.override_ {
        if !ovr.trusts(peer.ip()) {
            headers.remove(&ovr.header);
        }
    }
    // The target's authority (HTTP/2 `:authority`, an absolute-form HTTP/1.1 target)
    // is the host the request is for; the upstream hop carries it as `Host`
    // (RFC 9112 §3.2.2, RFC 9113 §8.3.1). Otherwise `Host` passes through unchanged.
    if let Some(authority) = &authority {
        headers.insert(HOST, authority.clone());
    }
    let forwarded_host = headers.get(HOST).cloned();
    headers::set_forwarded(headers, &client.forwarded_for, scheme, forwarded_host);
    headers::fold_cookies(headers);
    headers.insert(
        X_COHORT_VARIANT.clone(),
        HeaderValue::from_static(decision.variant.as_str()),
    );
    if let Some(id) = drawn_id {
        // Hex digits and hyphens: always a valid header value.
        if let Ok(value) = HeaderValue::from_bytes(id.as_bytes()) {
            headers.insert(X_REQUEST_ID.clone(), value);
        }
    }
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

fn decorate_response(
    response: &mut Response<ProxyBody>,
    snap: &Snapshot,
    variant: Variant,
    decision: &Decision,
    scheme: &str,
) {
    let headers = response.headers_mut();
    if let Some(name) = &snap.config.listen.variant_header {
        headers.insert(name.clone(), HeaderValue::from_static(variant.as_str()));
    }
    if let Some(key) = &decision.new_cohort_id {
        if let Some(cookie) = router::cohort_id_cookie(key, scheme == "https") {
            headers.append(SET_COOKIE, cookie);
        }
    }
}

/// A fresh random cohort key for a client that sent none: 128 random bits in hex.
pub(crate) fn draw_key() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// The status of a request its upstream failed (DESIGN §1 failure table).
pub(crate) fn error_status(kind: crate::metrics::UpstreamErrorKind) -> StatusCode {
    match kind {
        crate::metrics::UpstreamErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    }
}

pub(crate) fn error_body(e: &UpstreamError) -> &'static str {
    use crate::metrics::UpstreamErrorKind as K;
    match e.kind() {
        K::Connect => "upstream unavailable: connection failed\n",
        K::Timeout => "upstream timed out\n",
        K::Reset => "upstream closed the connection before a complete response\n",
        K::Tls => "upstream TLS handshake failed\n",
        K::Protocol => "upstream sent an invalid response\n",
    }
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

/// Everything needed to count one request once.
pub(crate) struct Completion {
    snap: Arc<Snapshot>,
    route: usize,
    variant: Variant,
    source: AssignSource,
    /// 499 until a response exists: the client left first.
    pub(crate) status: u16,
    start: Instant,
    /// The upstream cut the response body after its headers.
    pub(crate) cut: bool,
    access_log: Option<Box<AccessLog>>,
}

impl Completion {
    pub(crate) fn new(
        snap: Arc<Snapshot>,
        route: usize,
        decision: &Decision,
        start: Instant,
        access_log: Option<Box<AccessLog>>,
    ) -> Completion {
        Completion {
            snap,
            route,
            variant: decision.variant,
            source: decision.source,
            status: 499,
            start,
            cut: false,
            access_log,
        }
    }

    /// The access log line's figures, when the request writes one.
    pub(crate) fn log(&mut self) -> Option<&mut AccessLog> {
        self.access_log.as_deref_mut()
    }

    /// Counts an upstream failure (metrics, the rate-limited warning) and keeps its
    /// kind for the access log: both engines' one call when an upstream fails.
    pub(crate) fn upstream_failed(&mut self, error: &UpstreamError) {
        let (route, state) = self.snap.route(self.route);
        let metrics = state.metrics.variant(self.variant);
        request_log::upstream_failed(&route.name, self.variant, metrics, error);
        if let Some(log) = self.log() {
            log.error = Some(error.kind());
        }
    }

    pub(crate) fn finish(self) {
        let elapsed = self.start.elapsed();
        let (route, state) = self.snap.route(self.route);
        state.finished(self.variant, self.source, self.status, elapsed, self.cut);
        if let Some(log) = &self.access_log {
            log.write(&route.name, self.variant, self.status, elapsed);
        }
    }
}

/// The tracing target of access log lines (`listen.access_log`), always written as JSON.
pub const ACCESS_LOG_TARGET: &str = "cohort::access";

/// Counts a request as 499 if its future is dropped before a response exists
/// (the client went away while cohort waited for the upstream).
pub(crate) struct Pending(Option<Completion>);

impl Pending {
    pub(crate) fn new(completion: Completion) -> Pending {
        Pending(Some(completion))
    }

    pub(crate) fn take(&mut self) -> Completion {
        // `take` is called once, on the only path that leaves `handle` with a response.
        match self.0.take() {
            Some(c) => c,
            None => unreachable!("a request's completion is taken once"),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(completion) = self.0.take() {
            completion.finish();
        }
    }
}

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
        /// The endpoint's authority, for the warning if it cuts the body.
        endpoint: Option<Arc<str>>,
    },
    Local(Option<Bytes>),
}

impl ProxyBody {
    /// `lease` is the HTTP/1.1 connection to give back at the end (HTTP/2 ones are shared).
    fn upstream(body: Incoming, lease: Option<Lease>, endpoint: Option<Arc<str>>) -> ProxyBody {
        ProxyBody {
            inner: Inner::Upstream {
                body,
                lease,
                endpoint,
            },
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
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream { body, .. } => Pin::new(body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(None) => {
                this.return_connection();
                this.finish();
            }
            Poll::Ready(Some(Err(e))) => {
                // The upstream cut the body after its headers: the client's stream is
                // cut too (hyper closes it), and the request keeps its status.
                if let Some(c) = &mut this.completion {
                    c.cut = true;
                    let endpoint = match &this.inner {
                        Inner::Upstream { endpoint, .. } => endpoint.as_deref(),
                        Inner::Local(_) => None,
                    };
                    let error = UpstreamError::Reset {
                        authority: endpoint.unwrap_or_default().to_owned(),
                        source: Causes(e).to_string().into(),
                    };
                    c.upstream_failed(&error);
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
        polled
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
