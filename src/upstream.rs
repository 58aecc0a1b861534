//! Upstream connections: one pool per worker thread, keyed by endpoint, with hyper's
//! low-level client connections: HTTP/1.1 keep-alive (plain or TLS), and HTTP/2 (h2
//! over TLS, h2c over TCP) with one multiplexed connection per endpoint.
//!
//! A worker's pool is touched only by its own thread, so its mutexes are never
//! contended; they exist to keep the request future `Send`. HTTP/1.1 connections are
//! reused newest first, so a quiet pool shrinks by itself as old connections pass the
//! idle timeout. Plain HTTP/1.1 (the hot path) has its own map, keyed by authority, and
//! pays nothing for TLS or HTTP/2.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, HOST, UPGRADE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::{http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::{Endpoint, Timeouts, Transport};
use crate::metrics::UpstreamErrorKind;
use crate::tls::ClientTls;

/// A pooled connection idle longer than this is closed rather than reused. It is kept
/// below the common upstream keep-alive timeouts (Node.js closes after 5 s) so cohort
/// rarely races an upstream that is closing the same connection.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// One endpoint as the pools reach it: the config's endpoint, its authority and, for an
/// `https://` endpoint, its variant's client TLS (built when the config was loaded).
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub endpoint: Endpoint,
    /// `host:port`: the pool key, shared so giving a connection back allocates nothing.
    pub authority: Arc<str>,
    pub tls: Option<Arc<ClientTls>>,
}

impl Target {
    /// `endpoint` of a variant whose `https://` endpoints use `tls`.
    pub fn new(endpoint: &Endpoint, tls: Option<&Arc<ClientTls>>) -> Target {
        Target {
            authority: Arc::from(endpoint.authority()),
            tls: match endpoint.transport {
                Transport::Tls { .. } => tls.cloned(),
                Transport::Http1 | Transport::H2c => None,
            },
            endpoint: endpoint.clone(),
        }
    }

    /// Tells connection pools apart: targets with equal ids may share connections.
    fn transport_id(&self) -> u64 {
        match (&self.endpoint.transport, &self.tls) {
            (Transport::Http1, _) => 0,
            (Transport::H2c, _) => 1,
            (Transport::Tls { .. }, Some(tls)) => tls.id,
            // Without its client config an https:// target never connects (`open`).
            (Transport::Tls { .. }, None) => 2,
        }
    }
}

/// Idle connections kept per endpoint and worker.
pub const MAX_IDLE_PER_ENDPOINT: usize = 1024;

/// A failure's cause from hyper or from cohort's own HTTP/1.1 client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request got no response from its upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no endpoints configured for this variant")]
    NoEndpoints,
    #[error("cannot resolve {authority}: {source}")]
    Resolve {
        authority: String,
        source: io::Error,
    },
    #[error("connecting to {authority} failed: {source}")]
    Connect {
        authority: String,
        source: io::Error,
    },
    #[error("connecting to {authority} timed out after {after:?}")]
    ConnectTimeout { authority: String, after: Duration },
    #[error("no response headers from {authority} within {after:?}")]
    ResponseTimeout { authority: String, after: Duration },
    #[error("TLS handshake with {authority} failed: {source}")]
    Tls {
        authority: String,
        source: io::Error,
    },
    #[error("HTTP handshake with {authority} failed: {source}")]
    Handshake {
        authority: String,
        source: hyper::Error,
    },
    #[error("{authority} closed or reset the connection: {source}")]
    Reset { authority: String, source: BoxError },
    #[error("{authority} sent an invalid HTTP response: {source}")]
    Protocol { authority: String, source: BoxError },
}

impl UpstreamError {
    /// The metric label (DESIGN §1 failure table), from the policy's one error map
    /// (`crate::request::errors`).
    #[inline]
    pub fn kind(&self) -> UpstreamErrorKind {
        crate::request::errors::answer(self).kind
    }

    /// The endpoint the failure happened at (its authority), if one was chosen.
    pub fn authority(&self) -> Option<&str> {
        match self {
            UpstreamError::NoEndpoints => None,
            UpstreamError::Resolve { authority, .. }
            | UpstreamError::Connect { authority, .. }
            | UpstreamError::ConnectTimeout { authority, .. }
            | UpstreamError::ResponseTimeout { authority, .. }
            | UpstreamError::Tls { authority, .. }
            | UpstreamError::Handshake { authority, .. }
            | UpstreamError::Reset { authority, .. }
            | UpstreamError::Protocol { authority, .. } => {
                Some(authority.as_str()).filter(|a| !a.is_empty())
            }
        }
    }

    /// The same failure for each request that waited on one shared connection attempt:
    /// same kind and message (the source itself cannot be cloned).
    fn shared_copy(&self) -> UpstreamError {
        let io_copy = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
        match self {
            UpstreamError::NoEndpoints => UpstreamError::NoEndpoints,
            UpstreamError::Resolve { authority, source } => UpstreamError::Resolve {
                authority: authority.clone(),
                source: io_copy(source),
            },
            UpstreamError::Connect { authority, source } => UpstreamError::Connect {
                authority: authority.clone(),
                source: io_copy(source),
            },
            UpstreamError::Tls { authority, source } => UpstreamError::Tls {
                authority: authority.clone(),
                source: io_copy(source),
            },
            UpstreamError::ConnectTimeout { authority, after } => UpstreamError::ConnectTimeout {
                authority: authority.clone(),
                after: *after,
            },
            // An HTTP/2 handshake failure is a connect failure (DESIGN §1 table).
            other => UpstreamError::Connect {
                authority: other.authority().unwrap_or_default().to_owned(),
                source: io::Error::other(other.to_string()),
            },
        }
    }

    /// Whether nothing reached the upstream, so another endpoint may be tried.
    pub fn nothing_sent(&self) -> bool {
        matches!(
            self,
            UpstreamError::Resolve { .. }
                | UpstreamError::Connect { .. }
                | UpstreamError::ConnectTimeout { .. }
                | UpstreamError::Tls { .. }
                | UpstreamError::Handshake { .. }
        )
    }
}

struct IdleConnection {
    sender: SendRequest<SentBody>,
    since: Instant,
}

/// A worker's upstream connections.
#[derive(Clone, Default)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

#[derive(Default)]
struct PoolInner {
    /// Plain HTTP/1.1, keyed by authority (the snapshot's shared `Arc<str>`, so giving
    /// a connection back allocates no key).
    idle: Mutex<HashMap<Arc<str>, VecDeque<IdleConnection>>>,
    /// TLS and HTTP/2 connections, keyed by authority and transport settings, so
    /// variants with different TLS settings never share a connection.
    keyed: Mutex<Keyed>,
}

#[derive(Default)]
struct Keyed {
    idle: HashMap<PoolKey, VecDeque<IdleConnection>>,
    h2: HashMap<PoolKey, H2Slot>,
}

/// An endpoint's HTTP/2 connection, or the one attempt to open it that concurrent
/// requests wait for together (so a burst opens one connection, not one each).
enum H2Slot {
    Ready(http2::SendRequest<SentBody>),
    Connecting(Arc<H2Attempt>),
}

type H2Attempt = tokio::sync::OnceCell<Result<http2::SendRequest<SentBody>, Arc<UpstreamError>>>;

impl H2Slot {
    fn is_closed(&self) -> bool {
        match self {
            H2Slot::Ready(sender) => sender.is_closed(),
            H2Slot::Connecting(_) => false,
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    authority: Arc<str>,
    transport: u64,
}

/// Where a lent HTTP/1.1 connection goes back to.
enum Slot {
    Plain(Arc<str>),
    Keyed(PoolKey),
}

/// An HTTP/1.1 connection lent to one request; give it back with [`Pool::give_back`]
/// once the response body has been read to its end. (HTTP/2 connections are shared,
/// never lent.)
pub struct Lease {
    pool: Pool,
    slot: Slot,
    sender: SendRequest<SentBody>,
}

/// Pops the newest live connection of a queue.
fn pop_live(queue: &mut VecDeque<IdleConnection>) -> Option<SendRequest<SentBody>> {
    let now = Instant::now();
    while let Some(conn) = queue.pop_back() {
        if conn.sender.is_closed() || now.duration_since(conn.since) > IDLE_TIMEOUT {
            continue;
        }
        return Some(conn.sender);
    }
    // Everything left is older than what we popped; nothing reusable remains.
    queue.clear();
    None
}

fn push_idle(queue: &mut VecDeque<IdleConnection>, sender: SendRequest<SentBody>) {
    if queue.len() >= MAX_IDLE_PER_ENDPOINT {
        // Drop the oldest: it is the likeliest to be closed by the upstream.
        queue.pop_front();
    }
    queue.push_back(IdleConnection {
        sender,
        since: Instant::now(),
    });
}

impl Pool {
    pub fn new() -> Pool {
        Pool::default()
    }

    fn keyed(&self) -> std::sync::MutexGuard<'_, Keyed> {
        self.inner
            .keyed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn take_idle(&self, slot: &Slot) -> Option<SendRequest<SentBody>> {
        match slot {
            Slot::Plain(authority) => {
                let mut idle = self
                    .inner
                    .idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                pop_live(idle.get_mut(&**authority)?)
            }
            Slot::Keyed(key) => pop_live(self.keyed().idle.get_mut(key)?),
        }
    }

    /// Returns a connection whose last response was read completely.
    pub fn give_back(lease: Lease) {
        if lease.sender.is_closed() {
            return;
        }
        match lease.slot {
            Slot::Plain(authority) => {
                let mut idle = lease
                    .pool
                    .inner
                    .idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                push_idle(idle.entry(authority).or_default(), lease.sender);
            }
            Slot::Keyed(key) => {
                let mut keyed = lease.pool.keyed();
                push_idle(keyed.idle.entry(key).or_default(), lease.sender);
            }
        }
    }

    /// Sends `req` to `endpoint`: HTTP/1.1 on an idle connection if one is alive, else
    /// a new one; HTTP/2 on the endpoint's shared connection, opened when missing or
    /// closed. HTTP/1.1 responses come with the [`Lease`] of their connection.
    ///
    /// On a connect-stage failure the request comes back untouched in the error tuple,
    /// so the caller may try another endpoint.
    pub async fn send(
        &self,
        target: &Target,
        req: Request<Incoming>,
        timeouts: &Timeouts,
        progress: &Arc<Progress>,
    ) -> Result<(Response<Incoming>, Option<Lease>), (UpstreamError, Option<Request<Incoming>>)>
    {
        let authority = &target.authority;
        let slot = match &target.endpoint.transport {
            Transport::Http1 => Slot::Plain(authority.clone()),
            transport => {
                let key = PoolKey {
                    authority: authority.clone(),
                    transport: target.transport_id(),
                };
                if transport.is_h2() {
                    // Boxed: the HTTP/2 path's state would otherwise widen every
                    // request's future, and hyper keeps one such slot per client
                    // connection for its whole life, idle or not.
                    let sending = self.send_h2(key, target, req, timeouts, progress);
                    return Box::pin(sending).await.map(|resp| (resp, None));
                }
                Slot::Keyed(key)
            }
        };
        self.send_h1(slot, target, req, timeouts, progress)
            .await
            .map(|(resp, lease)| (resp, Some(lease)))
    }

    async fn send_h1(
        &self,
        slot: Slot,
        target: &Target,
        mut req: Request<Incoming>,
        timeouts: &Timeouts,
        progress: &Arc<Progress>,
    ) -> Result<(Response<Incoming>, Lease), (UpstreamError, Option<Request<Incoming>>)> {
        let authority = &*target.authority;
        // Idle connections first; one the upstream closed meanwhile hands the request
        // back unsent, and the next one is tried.
        while let Some(mut sender) = self.take_idle(&slot) {
            if !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            match exchange(authority, req, timeouts, progress, |r| {
                sender.try_send_request(r)
            })
            .await
            {
                Ok(resp) => return Ok((resp, self.lease(slot, sender))),
                Err(Exchange::NotSent(back)) => req = back,
                Err(Exchange::Failed(e)) => return Err((e, None)),
            }
        }
        // Boxed for the same reason: connecting (TCP, TLS, handshake) is rare on a warm
        // pool, and its large state should not sit in every request's future.
        let mut sender = match Box::pin(connect(target, timeouts.connect)).await {
            Ok(sender) => sender,
            Err(e) => return Err((e, Some(req))),
        };
        match exchange(authority, req, timeouts, progress, |r| {
            sender.try_send_request(r)
        })
        .await
        {
            Ok(resp) => Ok((resp, self.lease(slot, sender))),
            Err(Exchange::NotSent(back)) => Err((closed_before_sending(authority), Some(back))),
            Err(Exchange::Failed(e)) => Err((e, None)),
        }
    }

    /// One multiplexed HTTP/2 connection per endpoint (and TLS settings) and worker,
    /// replaced when it closes.
    async fn send_h2(
        &self,
        key: PoolKey,
        target: &Target,
        req: Request<Incoming>,
        timeouts: &Timeouts,
        progress: &Arc<Progress>,
    ) -> Result<Response<Incoming>, (UpstreamError, Option<Request<Incoming>>)> {
        let authority = &*target.authority;
        let mut req = to_h2(req, &target.endpoint);
        let mut fresh = false;
        // At most two rounds: the shared connection, then a new one if it had closed.
        loop {
            let mut sender = match self.h2_connection(&key, target, timeouts).await {
                Ok((sender, opened)) => {
                    fresh |= opened;
                    sender
                }
                Err(e) => return Err((e, Some(req))),
            };
            if sender.ready().await.is_err() {
                self.forget_h2(&key, &sender);
                if fresh {
                    return Err((closed_before_sending(authority), Some(req)));
                }
                fresh = true;
                continue;
            }
            match exchange(authority, req, timeouts, progress, |r| {
                sender.try_send_request(r)
            })
            .await
            {
                Ok(resp) => return Ok(resp),
                Err(Exchange::NotSent(back)) if !fresh => {
                    self.forget_h2(&key, &sender);
                    req = back;
                    fresh = true;
                }
                Err(Exchange::NotSent(back)) => {
                    return Err((closed_before_sending(authority), Some(back)))
                }
                Err(Exchange::Failed(e)) => return Err((e, None)),
            }
        }
    }

    /// The endpoint's live HTTP/2 connection, opening it if needed; `true` when this
    /// call waited for a new one.
    async fn h2_connection(
        &self,
        key: &PoolKey,
        target: &Target,
        timeouts: &Timeouts,
    ) -> Result<(http2::SendRequest<SentBody>, bool), UpstreamError> {
        let attempt = {
            let mut keyed = self.keyed();
            match keyed.h2.get(key) {
                Some(H2Slot::Ready(sender)) if !sender.is_closed() => {
                    return Ok((sender.clone(), false))
                }
                Some(H2Slot::Connecting(attempt)) => attempt.clone(),
                _ => {
                    // Connections of endpoints that left the config, or closed, go.
                    keyed.h2.retain(|_, slot| !slot.is_closed());
                    let attempt = Arc::new(H2Attempt::new());
                    keyed
                        .h2
                        .insert(key.clone(), H2Slot::Connecting(attempt.clone()));
                    attempt
                }
            }
        };
        let result = attempt
            .get_or_init(|| async {
                let result = connect_h2(target, timeouts.connect)
                    .await
                    .map_err(Arc::new);
                let mut keyed = self.keyed();
                let ours = matches!(keyed.h2.get(key), Some(H2Slot::Connecting(a)) if Arc::ptr_eq(a, &attempt));
                if ours {
                    match &result {
                        Ok(sender) => {
                            keyed.h2.insert(key.clone(), H2Slot::Ready(sender.clone()));
                        }
                        Err(_) => {
                            keyed.h2.remove(key);
                        }
                    }
                }
                result
            })
            .await;
        match result {
            Ok(sender) => Ok((sender.clone(), true)),
            Err(e) => Err(e.shared_copy()),
        }
    }

    /// Drops the endpoint's connection if it is still `sender`'s.
    fn forget_h2(&self, key: &PoolKey, sender: &http2::SendRequest<SentBody>) {
        let mut keyed = self.keyed();
        if let Some(H2Slot::Ready(current)) = keyed.h2.get(key) {
            if current.is_closed() || sender.is_closed() {
                keyed.h2.remove(key);
            }
        }
    }

    fn lease(&self, slot: Slot, sender: SendRequest<SentBody>) -> Lease {
        Lease {
            pool: self.clone(),
            slot,
            sender,
        }
    }
}

fn closed_before_sending(authority: &str) -> UpstreamError {
    UpstreamError::Connect {
        authority: authority.to_owned(),
        source: io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the new connection closed before the request was written",
        ),
    }
}

/// An HTTP/2 request carries scheme and authority in its URI (`:scheme`,
/// `:authority`): the authority is the client's `Host`, which passes through, and
/// connection-specific headers, which HTTP/2 forbids, go.
fn to_h2(mut req: Request<Incoming>, endpoint: &Endpoint) -> Request<Incoming> {
    if req.version() == Version::HTTP_2 {
        // Already rewritten (a retry on another endpoint of the variant).
        return req;
    }
    let scheme = match endpoint.transport {
        Transport::Tls { .. } => Scheme::HTTPS,
        Transport::Http1 | Transport::H2c => Scheme::HTTP,
    };
    let headers = req.headers_mut();
    let authority = headers
        .remove(HOST)
        .and_then(|host| Authority::try_from(host.as_bytes()).ok())
        .or_else(|| Authority::try_from(endpoint.authority()).ok());
    headers.remove(CONNECTION);
    headers.remove(UPGRADE);
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = authority;
    parts.path_and_query = Some(
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_2;
    req
}

/// Sends one request and waits for its response head.
///
/// `timeouts.request` bounds waiting, never working: while the request body flows,
/// it bounds a stall (neither the client supplies a frame nor the upstream takes
/// one); once the body is sent, it bounds the wait for the response headers. So an
/// upload longer than the timeout goes through, and a stuck upstream still gets a
/// 504 in bounded time.
async fn exchange<F, Fut>(
    authority: &str,
    req: Request<Incoming>,
    timeouts: &Timeouts,
    progress: &Arc<Progress>,
    send: F,
) -> Result<Response<Incoming>, Exchange>
where
    F: FnOnce(Request<SentBody>) -> Fut,
    Fut: Future<Output = Result<Response<Incoming>, TrySendError<Request<SentBody>>>>,
{
    // The stall clock starts now, for this attempt (a retry starts it again).
    progress.mark();
    let req = req.map(|body| SentBody {
        inner: body,
        progress: MarkOnDrop(progress.clone()),
    });
    let stalled = async {
        loop {
            let last = progress.last();
            tokio::time::sleep_until((last + timeouts.request).into()).await;
            if progress.last() == last {
                return;
            }
        }
    };
    tokio::select! {
        // An upstream may answer before the body is in (an early 413); both work.
        biased;
        result = send(req) => match result {
            Ok(resp) => Ok(resp),
            Err(mut e) => match e.take_message() {
                Some(req) => Err(Exchange::NotSent(req.map(SentBody::into_inner))),
                None => Err(Exchange::Failed(classify(authority, e.into_error()))),
            },
        },
        () = stalled => Err(Exchange::Failed(UpstreamError::ResponseTimeout {
            authority: authority.to_owned(),
            after: timeouts.request,
        })),
    }
}

/// A request's progress upstream, one per request on hyper's engine: when it last
/// moved (sent, a body frame handed over, or its body finished with; nanoseconds since
/// `base`, so it fits one atomic), and how many request body bytes the upstream
/// connection took (for the access log).
pub struct Progress {
    base: Instant,
    nanos: AtomicU64,
    body_bytes: AtomicU64,
    /// The route's `max_body`: a body that grows beyond it is aborted.
    max_body: AtomicU64,
    /// How the client's body failed, if it did: [`BODY_OK`], [`BODY_INVALID`] or
    /// [`BODY_CLIENT_GONE`].
    client_body: AtomicU8,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress {
            base: Instant::now(),
            nanos: AtomicU64::new(0),
            body_bytes: AtomicU64::new(0),
            max_body: AtomicU64::new(u64::MAX),
            client_body: AtomicU8::new(BODY_OK),
        })
    }

    /// Aborts the request body once more than `max` bytes of it went upstream (a
    /// chunked body growing past the route's `max_body`).
    pub fn limit_body(&self, max: u64) {
        self.max_body.store(max, Ordering::Relaxed);
    }

    /// Whether the request body was aborted for growing past its limit.
    pub fn body_over_limit(&self) -> bool {
        self.body_bytes() > self.max_body.load(Ordering::Relaxed)
    }

    /// Whether the request failed because the client's body was malformed (a bad
    /// chunk size or extension), not because of the upstream.
    pub fn client_body_invalid(&self) -> bool {
        self.client_body.load(Ordering::Relaxed) == BODY_INVALID
    }

    /// Whether the request failed because the client hung up in the middle of its
    /// body: it has left (499), the upstream did nothing wrong.
    pub fn client_gone_mid_body(&self) -> bool {
        self.client_body.load(Ordering::Relaxed) == BODY_CLIENT_GONE
    }

    /// Request body bytes handed to the upstream connection so far.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes.load(Ordering::Relaxed)
    }

    fn mark(&self) {
        // Saturates after 584 years; a request does not live that long.
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.store(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

/// The client's request body on its way upstream, marking [`Progress`] as hyper takes
/// its frames and when it is finished with (read to its end, failed, or dropped:
/// hyper never polls a body that is empty from the start).
struct SentBody {
    inner: Incoming,
    progress: MarkOnDrop,
}

/// Marks progress once more when the body is dropped.
struct MarkOnDrop(Arc<Progress>);

impl Drop for MarkOnDrop {
    fn drop(&mut self) {
        self.0.mark();
    }
}

impl SentBody {
    fn into_inner(self) -> Incoming {
        self.inner
    }
}

/// A request body aborted for growing past its route's `max_body`.
#[derive(Debug)]
struct BodyOverLimit;

impl std::fmt::Display for BodyOverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body over the route's max_body")
    }
}

impl std::error::Error for BodyOverLimit {}

impl Body for SentBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(frame) = &polled {
            let progress = &self.progress.0;
            progress.mark();
            if let Some(Err(e)) = frame {
                progress
                    .client_body
                    .store(client_body_failure(e), Ordering::Relaxed);
            }
            if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
                let n = data.len() as u64;
                let total = progress.body_bytes.fetch_add(n, Ordering::Relaxed) + n;
                if total > progress.max_body.load(Ordering::Relaxed) {
                    // The upstream request is aborted (its connection is not reused).
                    return Poll::Ready(Some(Err(Box::new(BodyOverLimit))));
                }
            }
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's body has not failed.
const BODY_OK: u8 = 0;
/// hyper's HTTP/1 decoder refused the client's body framing.
const BODY_INVALID: u8 = 1;
/// The client's connection ended before its body did.
const BODY_CLIENT_GONE: u8 = 2;

/// What a client body error says about the client: hyper's HTTP/1 decoder refusing the
/// framing (`InvalidInput`/`InvalidData` under it), or the connection ending before the
/// body (`UnexpectedEof`). Anything else (an HTTP/2 stream reset) is left as it was.
fn client_body_failure(e: &hyper::Error) -> u8 {
    let kind = std::error::Error::source(e)
        .and_then(|cause| cause.downcast_ref::<io::Error>())
        .map(io::Error::kind);
    match kind {
        Some(io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData) => BODY_INVALID,
        Some(io::ErrorKind::UnexpectedEof) => BODY_CLIENT_GONE,
        _ => BODY_OK,
    }
}

// A short-lived return value: boxing the request would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Exchange {
    /// The connection was unusable; the request was not written and comes back.
    NotSent(Request<Incoming>),
    Failed(UpstreamError),
}

fn classify(authority: &str, e: hyper::Error) -> UpstreamError {
    let authority = authority.to_owned();
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        UpstreamError::Protocol {
            authority,
            source: Box::new(e),
        }
    } else if let Some(alert) = tls_cause(&e) {
        // The upstream refused the session after the handshake (TLS 1.3 servers reject
        // a client certificate this way, on the first read).
        UpstreamError::Tls {
            authority,
            source: io::Error::new(io::ErrorKind::ConnectionAborted, alert.to_string()),
        }
    } else {
        UpstreamError::Reset {
            authority,
            source: Box::new(e),
        }
    }
}

/// The TLS error under a hyper error, if a TLS failure caused it.
fn tls_cause(e: &hyper::Error) -> Option<&rustls::Error> {
    let mut cause = std::error::Error::source(e);
    while let Some(err) = cause {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = err
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        cause = err.source();
    }
    None
}

/// A connection's byte stream: TCP, or TLS over TCP.
enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Resolves (per connect, so DNS changes and compose service names work), connects
/// and, for `https://` endpoints, runs the TLS handshake, all within `timeout`.
async fn open(target: &Target, timeout: Duration) -> Result<Io, UpstreamError> {
    let authority = &*target.authority;
    let opening = async {
        let tcp = open_tcp(&target.endpoint, authority).await?;
        match &target.endpoint.transport {
            Transport::Tls { .. } => tls_connect(tcp, target).await.map(|s| Io::Tls(Box::new(s))),
            Transport::Http1 | Transport::H2c => Ok(Io::Tcp(tcp)),
        }
    };
    within_connect_timeout(timeout, authority, opening).await
}

/// `connecting`, or a connect timeout once `timeout` has passed.
async fn within_connect_timeout<T>(
    timeout: Duration,
    authority: &str,
    connecting: impl Future<Output = Result<T, UpstreamError>>,
) -> Result<T, UpstreamError> {
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| UpstreamError::ConnectTimeout {
            authority: authority.to_owned(),
            after: timeout,
        })?
}

async fn tls_connect(
    tcp: TcpStream,
    target: &Target,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
    let endpoint = &target.endpoint;
    let error = |source: io::Error| UpstreamError::Tls {
        authority: target.authority.to_string(),
        source,
    };
    // Loading a config builds a client for every https:// endpoint; never plain text.
    let Some(tls) = &target.tls else {
        return Err(error(io::Error::other("no TLS client settings")));
    };
    let server_name = match &tls.server_name {
        Some(name) => name.clone(),
        None => rustls::pki_types::ServerName::try_from(endpoint.host.clone()).map_err(|e| {
            error(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{:?} is not a valid TLS server name ({e}); set tls.server_name",
                    endpoint.host
                ),
            ))
        })?,
    };
    tokio_rustls::TlsConnector::from(tls.config.value.clone())
        .connect(server_name, tcp)
        .await
        .map_err(error)
}

/// Opens a new HTTP/1.1 connection (plain or TLS).
async fn connect(
    target: &Target,
    timeout: Duration,
) -> Result<SendRequest<SentBody>, UpstreamError> {
    let authority = &*target.authority;
    match open(target, timeout).await? {
        Io::Tcp(stream) => handshake_h1(stream, authority).await,
        Io::Tls(stream) => handshake_h1(*stream, authority).await,
    }
}

async fn handshake_h1<I>(io: I, authority: &str) -> Result<SendRequest<SentBody>, UpstreamError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Flattened writes: cheaper than writev for small proxied requests (PERFORMANCE.md).
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| UpstreamError::Handshake {
            authority: authority.to_owned(),
            source,
        })?;
    tokio::spawn(async move {
        // Errors here surface on the request that was using the connection.
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// Opens a new HTTP/2 connection: h2c (prior knowledge) or h2 over TLS.
async fn connect_h2(
    target: &Target,
    timeout: Duration,
) -> Result<http2::SendRequest<SentBody>, UpstreamError> {
    let authority = &*target.authority;
    match open(target, timeout).await? {
        Io::Tcp(stream) => handshake_h2(stream, authority).await,
        Io::Tls(stream) => handshake_h2(*stream, authority).await,
    }
}

async fn handshake_h2<I>(
    io: I,
    authority: &str,
) -> Result<http2::SendRequest<SentBody>, UpstreamError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // Notice a dead peer on a quiet connection instead of sending into it.
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .adaptive_window(true)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| UpstreamError::Handshake {
            authority: authority.to_owned(),
            source,
        })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Resolves and connects within `timeout`: a plain TCP connection for cohort's own
/// HTTP/1.1 client.
pub(crate) async fn connect_tcp(
    endpoint: &Endpoint,
    authority: &str,
    timeout: Duration,
) -> Result<TcpStream, UpstreamError> {
    within_connect_timeout(timeout, authority, open_tcp(endpoint, authority)).await
}

async fn open_tcp(endpoint: &Endpoint, authority: &str) -> Result<TcpStream, UpstreamError> {
    let addrs = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|source| UpstreamError::Resolve {
            authority: authority.to_owned(),
            source,
        })?;
    let mut last_error =
        io::Error::new(io::ErrorKind::NotFound, "the name resolved to no addresses");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                // Small requests and responses should leave at once, not wait for an ACK.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last_error = e,
        }
    }
    Err(UpstreamError::Connect {
        authority: authority.to_owned(),
        source: last_error,
    })
}
