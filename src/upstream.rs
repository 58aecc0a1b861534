//! Upstream connections: one pool per worker thread, keyed by endpoint, HTTP/1.1
//! keep-alive with hyper's low-level client connections.
//!
//! A worker's pool is touched only by its own thread, so its mutex is never contended;
//! it exists to keep the request future `Send`. Connections are reused newest first,
//! so a quiet pool shrinks by itself as old connections pass the idle timeout.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::{Endpoint, Timeouts};
use crate::metrics::UpstreamErrorKind;

/// A pooled connection idle longer than this is closed rather than reused. It is kept
/// below the common upstream keep-alive timeouts (Node.js closes after 5 s) so cohort
/// rarely races an upstream that is closing the same connection.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Idle connections kept per endpoint and worker.
pub const MAX_IDLE_PER_ENDPOINT: usize = 1024;

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
    #[error("HTTP handshake with {authority} failed: {source}")]
    Handshake {
        authority: String,
        source: hyper::Error,
    },
    #[error("{authority} closed or reset the connection: {source}")]
    Reset {
        authority: String,
        source: hyper::Error,
    },
    #[error("{authority} sent an invalid HTTP response: {source}")]
    Protocol {
        authority: String,
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// The metric label and, through it, the status code (DESIGN §1 failure table).
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            UpstreamError::NoEndpoints
            | UpstreamError::Resolve { .. }
            | UpstreamError::Connect { .. }
            | UpstreamError::Handshake { .. } => UpstreamErrorKind::Connect,
            UpstreamError::ConnectTimeout { .. } | UpstreamError::ResponseTimeout { .. } => {
                UpstreamErrorKind::Timeout
            }
            UpstreamError::Reset { .. } => UpstreamErrorKind::Reset,
            UpstreamError::Protocol { .. } => UpstreamErrorKind::Protocol,
        }
    }

    /// Whether nothing reached the upstream, so another endpoint may be tried.
    pub fn nothing_sent(&self) -> bool {
        matches!(
            self,
            UpstreamError::Resolve { .. }
                | UpstreamError::Connect { .. }
                | UpstreamError::ConnectTimeout { .. }
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
    idle: Arc<Mutex<HashMap<String, VecDeque<IdleConnection>>>>,
}

/// A connection lent to one request; give it back with [`Pool::give_back`] once the
/// response body has been read to its end.
pub struct Lease {
    pool: Pool,
    authority: Arc<str>,
    sender: SendRequest<SentBody>,
}

impl Pool {
    pub fn new() -> Pool {
        Pool::default()
    }

    fn take_idle(&self, authority: &str) -> Option<SendRequest<SentBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = idle.get_mut(authority)?;
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

    /// Returns a connection whose last response was read completely.
    pub fn give_back(lease: Lease) {
        if lease.sender.is_closed() {
            return;
        }
        let mut idle = lease
            .pool
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let queue = idle.entry(lease.authority.to_string()).or_default();
        if queue.len() >= MAX_IDLE_PER_ENDPOINT {
            // Drop the oldest: it is the likeliest to be closed by the upstream.
            queue.pop_front();
        }
        queue.push_back(IdleConnection {
            sender: lease.sender,
            since: Instant::now(),
        });
    }

    /// Sends `req` to `endpoint`, on an idle connection if one is alive, else a new one.
    ///
    /// On a connect-stage failure the request comes back untouched in the error tuple,
    /// so the caller may try another endpoint.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        authority: &Arc<str>,
        mut req: Request<Incoming>,
        timeouts: &Timeouts,
    ) -> Result<(Response<Incoming>, Lease), (UpstreamError, Option<Request<Incoming>>)> {
        // Idle connections first; one the upstream closed meanwhile hands the request
        // back unsent, and the next one is tried.
        while let Some(mut sender) = self.take_idle(authority) {
            if !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            match self.exchange(&mut sender, authority, req, timeouts).await {
                Ok(resp) => return Ok((resp, self.lease(authority, sender))),
                Err(Exchange::NotSent(back)) => req = back,
                Err(Exchange::Failed(e)) => return Err((e, None)),
            }
        }
        let mut sender = match connect(endpoint, authority, timeouts.connect).await {
            Ok(sender) => sender,
            Err(e) => return Err((e, Some(req))),
        };
        match self.exchange(&mut sender, authority, req, timeouts).await {
            Ok(resp) => Ok((resp, self.lease(authority, sender))),
            Err(Exchange::NotSent(back)) => Err((
                UpstreamError::Connect {
                    authority: authority.to_string(),
                    source: io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the new connection closed before the request was written",
                    ),
                },
                Some(back),
            )),
            Err(Exchange::Failed(e)) => Err((e, None)),
        }
    }

    fn lease(&self, authority: &Arc<str>, sender: SendRequest<SentBody>) -> Lease {
        Lease {
            pool: self.clone(),
            authority: authority.clone(),
            sender,
        }
    }

    /// Sends one request and waits for its response head.
    ///
    /// `timeouts.request` bounds waiting, never working: while the request body flows,
    /// it bounds a stall (neither the client supplies a frame nor the upstream takes
    /// one); once the body is sent, it bounds the wait for the response headers. So an
    /// upload longer than the timeout goes through, and a stuck upstream still gets a
    /// 504 in bounded time.
    async fn exchange(
        &self,
        sender: &mut SendRequest<SentBody>,
        authority: &str,
        req: Request<Incoming>,
        timeouts: &Timeouts,
    ) -> Result<Response<Incoming>, Exchange> {
        let progress = Arc::new(Progress::new());
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
            result = sender.try_send_request(req) => match result {
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
}

/// When a request last made progress upstream: sent, a body frame handed over, or
/// its body finished with. Nanoseconds since `base`, so it fits one atomic.
struct Progress {
    base: Instant,
    nanos: AtomicU64,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            base: Instant::now(),
            nanos: AtomicU64::new(0),
        }
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

impl Body for SentBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if polled.is_ready() {
            self.progress.0.mark();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
            source: e,
        }
    } else {
        UpstreamError::Reset {
            authority,
            source: e,
        }
    }
}

/// Resolves (per connect, so DNS changes and compose service names work), connects
/// with a deadline, and runs the HTTP/1.1 handshake.
async fn connect(
    endpoint: &Endpoint,
    authority: &str,
    timeout: Duration,
) -> Result<SendRequest<SentBody>, UpstreamError> {
    let stream = tokio::time::timeout(timeout, open_tcp(endpoint, authority))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout {
            authority: authority.to_owned(),
            after: timeout,
        })??;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
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
