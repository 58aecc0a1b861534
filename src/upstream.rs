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
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
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
use tokio::time::Sleep;

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
    /// The response body stalled after its headers: no byte either way for the
    /// route's `timeouts.idle`.
    #[error("no response body bytes from {authority} for {after:?} (timeouts.idle)")]
    IdleTimeout { authority: String, after: Duration },
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
            | UpstreamError::IdleTimeout { authority, .. }
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
    /// How new connections find their endpoint's addresses (shared by all workers).
    resolver: Resolver,
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

    /// A pool whose new connections resolve endpoint names with `resolver`.
    pub fn with_resolver(resolver: Resolver) -> Pool {
        Pool {
            inner: Arc::new(PoolInner {
                resolver,
                ..PoolInner::default()
            }),
        }
    }

    /// The resolver new connections use (cohort's own HTTP/1.1 client shares it).
    pub fn resolver(&self) -> &Resolver {
        &self.inner.resolver
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
        let resolver = &self.inner.resolver;
        let mut sender = match Box::pin(connect(target, resolver, timeouts.connect)).await {
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
                let result = connect_h2(target, &self.inner.resolver, timeouts.connect)
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
        idle: IdleTimer::new(timeouts.idle),
    });
    let stalled = async {
        let mut since = progress.last();
        loop {
            tokio::time::sleep_until((since + timeouts.request).into()).await;
            let last = progress.last();
            if last != since {
                since = last;
            } else if progress.awaiting_client() {
                // The client, not the upstream, is slow: the body's own idle timeout
                // (`timeouts.idle`) judges that, and answers 408.
                since = Instant::now();
            } else {
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

/// A request's progress, one per request on hyper's engine: when it last moved (sent,
/// a request body frame handed over, its body finished with, or a response body frame
/// relayed; nanoseconds since `base`, so it fits one atomic), and how many request body
/// bytes the upstream connection took (for the access log).
pub struct Progress {
    base: Instant,
    nanos: AtomicU64,
    body_bytes: AtomicU64,
    /// The route's `max_body`: a body that grows beyond it is aborted.
    max_body: AtomicU64,
    /// The request body waits for the client to send more.
    awaiting_client: AtomicBool,
    /// The request body was aborted: the client sent nothing for `timeouts.idle`.
    client_stalled: AtomicBool,
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
            awaiting_client: AtomicBool::new(false),
            client_stalled: AtomicBool::new(false),
            client_body: AtomicU8::new(BODY_OK),
        })
    }

    /// Whether the request body was aborted because the client stopped sending it for
    /// the route's `timeouts.idle` (answered 408 when no response has started).
    pub fn client_stalled(&self) -> bool {
        self.client_stalled.load(Ordering::Relaxed)
    }

    /// Whether the request body, not finished, waits for the client.
    fn awaiting_client(&self) -> bool {
        self.awaiting_client.load(Ordering::Relaxed)
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
/// hyper never polls a body that is empty from the start). A client that sends nothing
/// more for `timeouts.idle` while nothing moves the other way either has the body
/// aborted (the upstream request with it).
struct SentBody {
    inner: Incoming,
    progress: MarkOnDrop,
    idle: IdleTimer,
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

/// A request body aborted because its client sent nothing for `timeouts.idle`.
#[derive(Debug)]
struct BodyStalled;

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client sent no request body bytes for the route's timeouts.idle")
    }
}

impl std::error::Error for BodyStalled {}

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
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let progress = &this.progress.0;
        progress
            .awaiting_client
            .store(polled.is_pending(), Ordering::Relaxed);
        if polled.is_pending() && this.idle.poll_expired(progress, cx).is_ready() {
            progress.client_stalled.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(Box::new(BodyStalled))));
        }
        if let Poll::Ready(frame) = &polled {
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

/// The stream idle timeout (`timeouts.idle`) as a deadline a body polls: `after` past
/// the last time its request's [`Progress`] moved, in either direction. The timer is
/// made the first time the body waits, so a body that never waits costs none.
struct IdleTimer {
    after: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    fn new(after: Duration) -> IdleTimer {
        IdleTimer { after, sleep: None }
    }

    /// Ready once nothing has moved for `after`; otherwise wakes `cx` when it might.
    fn poll_expired(&mut self, progress: &Progress, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let deadline = tokio::time::Instant::from_std(progress.last() + self.after);
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if sleep.deadline() != deadline {
                // Moving a registered timer later costs an atomic, not the wheel's lock.
                sleep.as_mut().reset(deadline);
            }
            std::task::ready!(sleep.as_mut().poll(cx));
            // Expired, unless something moved while the timer ran: then wait again.
            if progress.last() + self.after <= deadline.into_std() {
                return Poll::Ready(());
            }
        }
    }
}

/// How a response body on hyper's engine stalled (see [`IdleWatch`]).
pub enum Stall {
    /// The upstream sent nothing for `timeouts.idle`: the stream is cut and counted
    /// (`kind="timeout"`).
    Upstream(UpstreamError),
    /// The request body still waits for the client, which sent nothing for as long:
    /// the stream ends, and the upstream is not blamed.
    Client,
}

/// The stream idle timeout of a response body on hyper's engine (HTTP/2, and HTTP/1
/// connections handed over): the body calls [`IdleWatch::moved`] for each frame it
/// relays and [`IdleWatch::poll_stalled`] while it waits for the upstream. Request body
/// frames count as movement too (a bidirectional stream is idle only when both are).
pub struct IdleWatch {
    progress: Arc<Progress>,
    timer: IdleTimer,
    authority: Option<Arc<str>>,
}

impl IdleWatch {
    pub fn new(progress: Arc<Progress>, after: Duration, authority: Option<Arc<str>>) -> IdleWatch {
        // The response headers are out: the idle clock starts from them.
        progress.mark();
        IdleWatch {
            progress,
            timer: IdleTimer::new(after),
            authority,
        }
    }

    /// The endpoint the response comes from.
    pub fn authority(&self) -> Option<&str> {
        self.authority.as_deref()
    }

    /// A response body frame went by.
    #[inline]
    pub fn moved(&self) {
        self.progress.mark();
    }

    /// Whether the request body was aborted for its client's stall (then a response
    /// body error that follows is the client's doing, not the upstream's).
    pub fn client_stalled(&self) -> bool {
        self.progress.client_stalled()
    }

    /// While the body waits: ready once nothing has moved either way for `timeouts.idle`.
    pub fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<Stall> {
        std::task::ready!(self.timer.poll_expired(&self.progress, cx));
        if self.progress.awaiting_client() {
            return Poll::Ready(Stall::Client);
        }
        Poll::Ready(Stall::Upstream(UpstreamError::IdleTimeout {
            authority: self.authority.as_deref().unwrap_or_default().to_owned(),
            after: self.timer.after,
        }))
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
async fn open(
    target: &Target,
    resolver: &Resolver,
    timeout: Duration,
) -> Result<Io, UpstreamError> {
    let authority = &*target.authority;
    let opening = async {
        let tcp = open_tcp(&target.endpoint, authority, resolver).await?;
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
    resolver: &Resolver,
    timeout: Duration,
) -> Result<SendRequest<SentBody>, UpstreamError> {
    let authority = &*target.authority;
    match open(target, resolver, timeout).await? {
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
    resolver: &Resolver,
    timeout: Duration,
) -> Result<http2::SendRequest<SentBody>, UpstreamError> {
    let authority = &*target.authority;
    match open(target, resolver, timeout).await? {
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
    resolver: &Resolver,
    timeout: Duration,
) -> Result<TcpStream, UpstreamError> {
    let opening = open_tcp(endpoint, authority, resolver);
    within_connect_timeout(timeout, authority, opening).await
}

async fn open_tcp(
    endpoint: &Endpoint,
    authority: &str,
    resolver: &Resolver,
) -> Result<TcpStream, UpstreamError> {
    let addrs = resolver
        .addrs(&endpoint.host, endpoint.port)
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

// -------------------------------------------------------------------------------------
// Resolving endpoint names
// -------------------------------------------------------------------------------------

/// A resolution in flight: the addresses of one `host:port`.
pub type Resolved = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'static>>;

/// How endpoint host names become addresses. Asked for each new upstream connection
/// (never for an IP literal), so DNS changes and compose service names are followed
/// without a reload. The default is the system resolver ([`SystemResolver`]);
/// embedders and tests start cohort with their own (`cohort::start_with`).
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, host: &str, port: u16) -> Resolved;
}

/// The system's resolver (`getaddrinfo`, on tokio's blocking pool): `/etc/hosts`,
/// `resolv.conf`, the search domains a Kubernetes pod is given.
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Resolved {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

/// Names remembered with their last good addresses; a config naming more hosts than
/// this (over its reloads) starts over rather than growing without bound.
const MAX_REMEMBERED_NAMES: usize = 4096;

/// The runtime's resolver: a [`Resolve`] plus each name's last good answer.
///
/// When a name that has resolved stops resolving (an error or no addresses), its last
/// good addresses are used until it resolves again, as Envoy's `strict_dns` keeps its
/// hosts: a DNS outage (a CoreDNS restart, a flaky resolver) must not take down
/// upstreams that are still there. If they are really gone, connecting to them fails
/// and is answered 502 `kind="connect"` as any refused connection. A name that never
/// resolved fails at once (502 `kind="connect"`, the name in the reason). The change
/// both ways is logged once, not per connection.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<ResolverInner>,
}

struct ResolverInner {
    resolve: Arc<dyn Resolve>,
    last_good: Mutex<HashMap<(String, u16), LastGood>>,
}

struct LastGood {
    addrs: Vec<SocketAddr>,
    /// Resolution fails now and these addresses stand in (logged when it started).
    failing: bool,
}

impl Default for Resolver {
    fn default() -> Resolver {
        Resolver::new(Arc::new(SystemResolver))
    }
}

impl Resolver {
    pub fn new(resolve: Arc<dyn Resolve>) -> Resolver {
        Resolver {
            inner: Arc::new(ResolverInner {
                resolve,
                last_good: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The addresses to try for `host:port`, in order.
    pub(crate) async fn addrs(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let answer = match self.inner.resolve.resolve(host, port).await {
            Ok(addrs) if addrs.is_empty() => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the name resolved to no addresses",
            )),
            other => other,
        };
        let mut last_good = self
            .inner
            .last_good
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match answer {
            Ok(addrs) => {
                let key = (host.to_owned(), port);
                if last_good.get(&key).is_some_and(|last| last.failing) {
                    tracing::info!(host, port, "upstream name resolves again");
                }
                if last_good.len() >= MAX_REMEMBERED_NAMES && !last_good.contains_key(&key) {
                    last_good.clear();
                }
                let remembered = LastGood {
                    addrs: addrs.clone(),
                    failing: false,
                };
                last_good.insert(key, remembered);
                Ok(addrs)
            }
            Err(error) => {
                let Some(last) = last_good.get_mut(&(host.to_owned(), port)) else {
                    return Err(error);
                };
                if !last.failing {
                    last.failing = true;
                    tracing::warn!(
                        host,
                        port,
                        %error,
                        addresses = ?last.addrs,
                        "upstream name no longer resolves; using its last good addresses"
                    );
                }
                Ok(last.addrs.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Answers `10.0.0.<n>` while `up`, an error otherwise; counts the questions.
    #[derive(Default)]
    struct Scripted {
        up: AtomicBool,
        asked: AtomicUsize,
    }

    impl Resolve for Arc<Scripted> {
        fn resolve(&self, _host: &str, port: u16) -> Resolved {
            let n = self.asked.fetch_add(1, Ordering::SeqCst) as u8;
            let answer = if self.up.load(Ordering::SeqCst) {
                Ok(vec![SocketAddr::from(([10, 0, 0, n], port))])
            } else {
                Err(io::Error::new(io::ErrorKind::NotFound, "no such name"))
            };
            Box::pin(async move { answer })
        }
    }

    #[tokio::test]
    async fn a_name_that_stops_resolving_keeps_its_last_good_addresses() {
        let script = Arc::new(Scripted::default());
        let resolver = Resolver::new(Arc::new(script.clone()));
        // Never resolved: nothing to fall back on.
        assert!(resolver.addrs("svc", 80).await.is_err());
        script.up.store(true, Ordering::SeqCst);
        let first = resolver.addrs("svc", 80).await.expect("resolves");
        assert_eq!(first, [SocketAddr::from(([10, 0, 0, 1], 80))]);
        script.up.store(false, Ordering::SeqCst);
        assert_eq!(resolver.addrs("svc", 80).await.expect("last good"), first);
        assert_eq!(resolver.addrs("svc", 80).await.expect("still"), first);
        // Another port of the same name has its own memory.
        assert!(resolver.addrs("svc", 81).await.is_err());
        // Resolving again replaces what is remembered.
        script.up.store(true, Ordering::SeqCst);
        let fresh = resolver.addrs("svc", 80).await.expect("resolves");
        assert_eq!(fresh, [SocketAddr::from(([10, 0, 0, 5], 80))]);
        script.up.store(false, Ordering::SeqCst);
        assert_eq!(resolver.addrs("svc", 80).await.expect("last good"), fresh);
        assert_eq!(script.asked.load(Ordering::SeqCst), 7, "asked every time");
    }

    #[tokio::test]
    async fn ip_literals_never_reach_the_resolver() {
        let script = Arc::new(Scripted::default());
        let resolver = Resolver::new(Arc::new(script.clone()));
        let v4 = resolver.addrs("127.0.0.1", 9).await.expect("v4");
        assert_eq!(v4, [SocketAddr::from(([127, 0, 0, 1], 9))]);
        let v6 = resolver.addrs("::1", 9).await.expect("v6");
        assert_eq!(v6, ["[::1]:9".parse::<SocketAddr>().expect("addr")]);
        assert_eq!(script.asked.load(Ordering::SeqCst), 0);
    }
}
