//! One plain-TCP client connection on cohort's own HTTP/1.1 path: read a request,
//! route it, write it to a pooled upstream connection, stream the response back;
//! repeat while the client keeps the connection alive. Every decision on the way
//! (route and 404, variant, retry, error answer, recording) is the request policy's
//! (`crate::request`); this file does the wire.
//!
//! Bytes go from socket to socket through worker-owned buffers; heads are parsed in
//! place and rewritten in one pass, so a keep-alive request costs four syscalls and no
//! header map. A request this path does not handle hands the whole connection, with
//! the bytes already read, to hyper ([`Served::Handover`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::buffers::{self, Lent};
use super::chunked::{ChunkedScanner, Scan};
use super::head::{self, Decoration, Framing, ParsedRequest, ParsedResponse};
use super::upstream::Conn;
use crate::cohort::Variant;
use crate::config::Route;
use crate::engine::drain::DrainWatch;
use crate::engine::proxy::ProxyContext;
use crate::engine::write_stall::waited_too_long;
use crate::request::errors::ErrorAnswer;
use crate::request::forward::{self, Forwarding};
use crate::request::id::RequestId;
use crate::request::record::{Completion, Pending};
use crate::request::{begin, reject, retry};
use crate::router::IpText;
use crate::runtime::snapshot::{RouteState, Snapshot};
use crate::upstream::{Target, UpstreamError};

/// How a connection left this path.
pub enum Served {
    /// It is over: closed by either side, failed, or drained.
    Closed,
    /// hyper serves the rest of it, starting with these bytes already read.
    Handover(Vec<u8>),
}

/// How long a connection cohort closes keeps draining what the client still sends.
const LINGER: Duration = Duration::from_secs(2);

/// Response heads larger than this are an upstream protocol error.
const MAX_HEAD: usize = 64 * 1024;

/// Serves `client` until it closes, fails, drains, or needs hyper.
///
/// A plain function around an `async move` block, like `Connection::serve_plain`: an
/// `async fn` keeps a second copy of its arguments in its state.
#[allow(clippy::manual_async_fn)] // an `async fn` would double the arguments (above)
pub fn serve<'a>(
    ctx: &'a ProxyContext,
    peer: &'a SocketAddr,
    client: &'a mut TcpStream,
    drain: &'a mut DrainWatch,
) -> impl Future<Output = Served> + Send + 'a {
    async move {
        // Bytes of the next request(s) already read; `None` while idle.
        let mut pending: Option<Lent> = None;
        // One timer for the connection's life, carrying whichever deadline applies: the
        // keep-alive while idle, the head's once one has started, the upstream's while
        // a response is awaited. Moving a registered timer later is one atomic
        // exchange, where a new timer per wait took the timer wheel's lock to register
        // and again to cancel.
        // `listen.idle_timeout` closes a connection with no request in flight, so clients
        // that vanished without a FIN do not hold sockets forever; a head that has
        // started must be whole within `listen.header_timeout` (408 otherwise).
        let limits = &ctx.limits;
        let timer = tokio::time::sleep(limits.idle_timeout);
        tokio::pin!(timer);
        loop {
            if pending.is_none() {
                // Idle: wait holding no buffer, so an idle connection costs its socket only.
                timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + limits.idle_timeout);
                tokio::select! {
                    biased;
                    ready = readable(client) => if ready.is_err() {
                        return Served::Closed;
                    },
                    () = drain.draining() => return Served::Closed,
                    () = &mut timer => return Served::Closed,
                }
            }
            // The response, as one boxed future built in this block: `ready` and `out` end
            // here, before any await (a value still in scope at an await, even one moved
            // from, takes room in every connection's state, idle ones included).
            let respond: Pin<Box<dyn Future<Output = bool> + Send + '_>> = {
                // Set when a head has started: from then on it must complete in bounded time.
                let mut head_started = false;
                let (ready, out) = loop {
                    if let Some(buf) = pending.as_ref().filter(|b| !b.is_empty()) {
                        let mut out = Lent::take();
                        // A request that took more than one read started when its head
                        // deadline was set: that instant is the timer's, less the timeout
                        // (read back rather than kept in every connection's state).
                        let arrived = if head_started {
                            timer
                                .deadline()
                                .into_std()
                                .checked_sub(limits.header_timeout)
                        } else {
                            None
                        };
                        match prepare(ctx, *peer, buf, arrived, &mut out) {
                            Step::Partial => {}
                            Step::Handover => return handover(pending),
                            Step::Ready(ready) => break (ready, out),
                        }
                        if !head_started {
                            // The connection's one timer carries the head deadline too (no
                            // second timer in every connection's state).
                            head_started = true;
                            timer
                                .as_mut()
                                .reset(tokio::time::Instant::now() + limits.header_timeout);
                        }
                    }
                    let read = read_some(client, &mut pending);
                    let n = if head_started {
                        tokio::select! {
                            biased;
                            n = read => n,
                            () = &mut timer => break head_timed_out(ctx, *peer, &pending),
                        }
                    } else {
                        read.await
                    };
                    match n {
                        Ok(0) | Err(_) => return Served::Closed,
                        Ok(_) => {}
                    }
                };
                let (consumed, close) = match &ready {
                    Ready::Local { consumed, close } => (*consumed, *close),
                    Ready::Forward(forward) => (forward.consumed, forward.close),
                };
                if let Some(buf) = pending.as_mut() {
                    buf.consume(consumed);
                }
                if pending.as_ref().is_some_and(|b| b.is_empty()) {
                    // Nothing pipelined behind it: the buffer goes back before the wait.
                    pending = None;
                }
                match ready {
                    Ready::Forward(forward) => {
                        let draining = drain.is_draining();
                        // Only the request's own bytes wait for the upstream, not a 16 KiB
                        // buffer.
                        let request = out.to_vec();
                        drop(out);
                        Box::pin(forward.run(ctx, client, request, draining, timer.as_mut()))
                    }
                    Ready::Local { .. } => {
                        let client = &mut *client;
                        let (timer, after) = (timer.as_mut(), ctx.limits.idle_timeout);
                        Box::pin(async move {
                            write_or_stall(client, &out, timer, after).await && !close
                        })
                    }
                }
            };
            let keep_alive = respond.await;
            if !keep_alive || drain.is_draining() {
                drop(pending);
                close_after_response(client, drain).await;
                return Served::Closed;
            }
        }
    }
}

/// Ends a connection cohort closes after a response: FIN first, then read and discard
/// what the client still sends for a moment (NGINX's lingering close). Closing a socket
/// with unread bytes in it sends a reset, and a reset can destroy the response the
/// client has not read yet (a 400 answering a request with a large body, a response
/// ended by `Connection: close` with more requests pipelined behind it). A drain that
/// is under way does not wait for it.
///
/// Boxed, and built in a plain function: rare, and `Box::pin(f()).await` inside an
/// `async fn` would still reserve room for the unboxed future in every connection's
/// state, idle ones included.
fn close_after_response<'a>(
    client: &'a mut TcpStream,
    drain: &'a mut DrainWatch,
) -> Pin<Box<impl Future<Output = ()> + 'a>> {
    Box::pin(async move {
        if client.shutdown().await.is_err() {
            return;
        }
        let mut sink = Lent::take();
        let discard = async {
            loop {
                sink.clear();
                match client.read_buf(&mut *sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(LINGER, discard) => {}
            () = drain.draining() => {}
        }
    })
}

/// The answer to a head that did not arrive whole within `listen.header_timeout`: the
/// policy's 408, counted, then close (everything read goes with it).
#[cold]
fn head_timed_out(ctx: &ProxyContext, peer: SocketAddr, pending: &Option<Lent>) -> (Ready, Lent) {
    let answer = reject::rejected(&ctx.metrics, peer, reject::Malformed::HeadTimeout);
    let mut out = Lent::take();
    let plain = Decoration::plain(answer.close);
    head::write_local_response(answer.status, answer.body, &plain, &mut out);
    let consumed = pending.as_ref().map_or(0, |b| b.len());
    (
        Ready::Local {
            consumed,
            close: answer.close,
        },
        out,
    )
}

fn handover(pending: Option<Lent>) -> Served {
    Served::Handover(pending.map(Lent::into_vec).unwrap_or_default())
}

/// Waits until `stream` has bytes, an end or an error to read. The waker waits in the
/// socket's own reader slot; `TcpStream::readable` queues a waiter in a locked list
/// and takes the lock again to unqueue it, per wait. (Plain functions returning
/// futures, here and in `read_some`: an `async fn` would keep its arguments twice in
/// every connection's state.)
fn readable(stream: &TcpStream) -> impl Future<Output = io::Result<()>> + Send + '_ {
    std::future::poll_fn(move |cx| stream.poll_read_ready(cx))
}

/// Waits until `stream` is readable, then reads into `buf` (lent only now). A read
/// shorter than the space marks the socket drained, so the next wait costs no syscall.
#[allow(clippy::manual_async_fn)] // an `async fn` would double the arguments (above)
fn read_some<'a>(
    stream: &'a mut TcpStream,
    buf: &'a mut Option<Lent>,
) -> impl Future<Output = io::Result<usize>> + Send + 'a {
    async move {
        readable(stream).await?;
        let buf = buf.get_or_insert_with(Lent::take);
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(buffers::SIZE);
        }
        stream.read_buf(&mut **buf).await
    }
}

/// What to do with the bytes read so far.
enum Step {
    /// The request is not complete yet.
    Partial,
    /// hyper takes the connection over.
    Handover,
    Ready(Ready),
}

/// A complete request, handled: `consumed` of the bytes read were its own.
enum Ready {
    /// A response cohort makes itself is in the output buffer.
    Local { consumed: usize, close: bool },
    /// The upstream request is in the output buffer.
    Forward(Forward),
}

/// Parses, routes and rewrites the request at the start of `buf` (no I/O).
/// `arrived`: when the request's first bytes were read, if that was before this call
/// (durations run from there, DESIGN §1.8); `None` for now.
fn prepare(
    ctx: &ProxyContext,
    peer: SocketAddr,
    buf: &[u8],
    arrived: Option<Instant>,
    out: &mut Vec<u8>,
) -> Step {
    let mut storage = head::field_storage();
    let limits = head::HeadLimits {
        max_bytes: ctx.limits.max_header_bytes,
        max_fields: ctx.limits.max_headers,
    };
    let req = match head::parse_request_within(buf, &mut storage, limits) {
        ParsedRequest::Partial => return Step::Partial,
        ParsedRequest::Handover(_) => return Step::Handover,
        ParsedRequest::Reject(malformed) => {
            // The policy's answer, counted and logged; it closes the connection, so
            // everything read is taken with it.
            let answer = reject::rejected(&ctx.metrics, peer, malformed);
            let plain = Decoration::plain(answer.close);
            head::write_local_response(answer.status, answer.body, &plain, out);
            return Step::Ready(Ready::Local {
                consumed: buf.len(),
                close: answer.close,
            });
        }
        ParsedRequest::Ready(req) => req,
    };
    if buf.len() < req.message_len() {
        return Step::Partial;
    }
    let start = arrived.unwrap_or_else(Instant::now);
    let snap = ctx.snapshot.load_full();
    let path = req.target.split('?').next().unwrap_or("/");
    let Some(index) = begin::find_route(&ctx.metrics, &snap, req.host, path) else {
        let plain = Decoration::plain(req.close);
        head::write_local_response(StatusCode::NOT_FOUND, begin::NO_ROUTE_BODY, &plain, out);
        return Step::Ready(Ready::Local {
            consumed: req.message_len(),
            close: req.close,
        });
    };
    let (route, state) = snap.route(index);
    if !state.plain_http1() {
        return Step::Handover;
    }
    let ip = peer.ip();
    let client = begin::client_addr(&snap, ip, &req.fields);
    let decision = begin::decide(route, state, &req.fields, client);
    // A drawn id lives on the stack and is written straight into the upstream head.
    // (Initialised in place only when drawn: no `Option<RequestId>` moved around.)
    let drawn_id;
    let drawn = if begin::draws_request_id(req.request_id) {
        drawn_id = RequestId::generate();
        Some(&drawn_id)
    } else {
        None
    };
    let method = || Method::from_bytes(req.method.as_bytes()).unwrap_or(Method::GET);
    let mut access_log = begin::access_log(
        &snap,
        method,
        path,
        peer,
        client,
        &decision,
        req.request_id,
        drawn,
    );
    if let Some(log) = &mut access_log {
        // The body leaves in the same write as the head; a failure that sent nothing
        // takes it back (`Forward::run`).
        log.request_body_bytes = req.content_length as u64;
    }
    // Rendered per request rather than kept per connection: a few dozen instructions
    // for an IPv4 address, where keeping it cost every idle connection 40 bytes of
    // state and a heap block.
    let peer_text = IpText::new(ip);
    let forwarding = Forwarding::new(route, client, ctx.scheme, &decision, drawn, &req.fields);
    head::write_upstream_request(&req, &forwarding, peer_text.as_bytes(), out);
    out.extend_from_slice(&buf[req.head_len..req.message_len()]);
    let completion = Completion::new(snap.clone(), index, &decision, start, access_log);
    if reject::body_too_large(route, req.content_length as u64) {
        // Read whole already (this path's bodies are small), but refused: the policy's
        // 413, counted under the route and variant, then close.
        out.clear();
        let answer = reject::answer(reject::Malformed::BodyTooLarge);
        let cookie = forward::cohort_cookie(&decision, ctx.scheme);
        let deco = Decoration {
            variant_header: forward::variant_header(&snap, decision.variant),
            set_cookie: cookie.as_ref().map(http::HeaderValue::as_bytes),
            close: answer.close,
        };
        head::write_local_response(answer.status, answer.body, &deco, out);
        let mut completion = completion;
        completion.status = answer.status.as_u16();
        if let Some(log) = completion.log() {
            log.request_body_bytes = 0;
            log.response_body_bytes = answer.body.len() as u64;
        }
        completion.finish();
        return Step::Ready(Ready::Local {
            consumed: req.message_len(),
            close: answer.close,
        });
    }
    Step::Ready(Ready::Forward(Forward {
        route: index,
        variant: decision.variant,
        set_cookie: forward::cohort_cookie(&decision, ctx.scheme),
        // From here on the request is counted exactly once, even if the client leaves.
        pending: Pending::new(completion),
        snap,
        consumed: req.message_len(),
        head_request: req.is_head(),
        // Safe to send again after a reused connection turned out closed.
        idempotent: matches!(req.method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE"),
        close: req.close,
    }))
}

/// A routed request on its way upstream.
struct Forward {
    snap: Arc<Snapshot>,
    route: usize,
    variant: Variant,
    set_cookie: Option<http::HeaderValue>,
    pending: Pending,
    consumed: usize,
    head_request: bool,
    idempotent: bool,
    close: bool,
}

/// Why a request got no upstream response.
enum Failure {
    Upstream(UpstreamError),
    /// The client closed its connection while cohort waited (499).
    ClientGone,
}

impl From<UpstreamError> for Failure {
    fn from(e: UpstreamError) -> Failure {
        Failure::Upstream(e)
    }
}

/// The upstream's final response head, read into `buf` (which may hold body bytes
/// after it), and the client's version of it in `head`.
struct Answer {
    buf: Lent,
    head: Lent,
    fin: Final,
}

/// What the rest of the exchange needs to know of a final response head.
struct Final {
    status: u16,
    head_len: usize,
    framing: Framing,
    reusable: bool,
}

impl Forward {
    /// Sends `request` upstream and the response to `client`; `true` when the client
    /// connection may carry another request.
    async fn run(
        mut self,
        ctx: &ProxyContext,
        client: &mut TcpStream,
        request: Vec<u8>,
        draining: bool,
        mut timer: Pin<&mut Sleep>,
    ) -> bool {
        let snap = self.snap.clone();
        let (route, state) = snap.route(self.route);
        let deco = Decoration {
            variant_header: forward::variant_header(&snap, self.variant),
            set_cookie: self.set_cookie.as_ref().map(http::HeaderValue::as_bytes),
            close: self.close || draining,
        };
        // The connection's one timer, lent to the wait for the response head, then to
        // the body's idle timeout.
        let mut client_watch = ClientWatch {
            client: &*client,
            timer: timer.as_mut(),
        };
        let exchanged = self
            .exchange(ctx, route, state, &request, &mut client_watch, &deco)
            .await;
        drop(request);
        let (conn, mut answer) = match exchanged {
            Ok(ok) => ok,
            // The pending completion counts 499 as it drops.
            Err(Failure::ClientGone) => return false,
            Err(Failure::Upstream(e)) => {
                let mut completion = self.pending.take();
                let ErrorAnswer { status, body, .. } = completion.failed(&e);
                let mut out = Lent::take();
                head::write_local_response(status, body, &deco, &mut out);
                let written =
                    write_or_stall(client, &out, timer.as_mut(), ctx.limits.idle_timeout).await;
                if let Some(log) = completion.log() {
                    log.endpoint = e.authority().map(Arc::from);
                    if e.nothing_sent() {
                        log.request_body_bytes = 0;
                    }
                    if written {
                        log.response_body_bytes = body.len() as u64;
                    }
                }
                completion.finish();
                return written && !deco.close;
            }
        };
        let fin = &answer.fin;
        let mut completion = self.pending.take();
        completion.status = fin.status;
        if let Some(log) = completion.log() {
            log.endpoint = Some(conn.key().clone());
        }
        let mut body = Body::new(fin.framing);
        let idle = Idle {
            timer,
            after: route.timeouts.idle,
            write_after: ctx.limits.idle_timeout,
        };
        let relay = relay_body(
            conn,
            &mut answer.buf,
            fin,
            client,
            &mut answer.head,
            &mut body,
            idle,
        )
        .await;
        if let Some(log) = completion.log() {
            log.response_body_bytes = body.payload(fin.framing);
        }
        let keep_alive = match relay {
            Relayed::Complete(conn) => {
                if let Some(conn) = conn.filter(|_| fin.reusable) {
                    ctx.h1_pool.checkin(conn);
                }
                fin.framing != Framing::UntilClose
            }
            Relayed::UpstreamCut(error) => {
                completion.cut(&error);
                false
            }
            Relayed::ClientGone => false,
        };
        completion.finish();
        keep_alive && !deco.close
    }

    /// Gets a connection (pooled, else new; another endpoint of the variant if the
    /// first cannot be reached), sends the request and reads the final response head
    /// (see [`Answer`]).
    async fn exchange(
        &self,
        ctx: &ProxyContext,
        route: &Route,
        state: &RouteState,
        request: &[u8],
        client_watch: &mut ClientWatch<'_>,
        deco: &Decoration<'_>,
    ) -> Result<(Conn, Answer), Failure> {
        let timeouts = &route.timeouts;
        let mut endpoints = state.endpoints(self.variant);
        let Some(first) = endpoints.next() else {
            return Err(UpstreamError::NoEndpoints.into());
        };
        let mut target = first;
        let mut conn = match ctx.h1_pool.checkout(&first.authority) {
            Some(conn) => conn,
            None => {
                connect_or_sibling(
                    ctx,
                    &mut target,
                    &mut endpoints,
                    timeouts.connect,
                    &self.pending,
                )
                .await?
            }
        };
        loop {
            let head_request = self.head_request;
            match attempt(
                &mut conn,
                request,
                timeouts.request,
                head_request,
                client_watch,
                deco,
            )
            .await
            {
                Ok(answer) => return Ok((conn, answer)),
                // A kept connection the upstream had closed meanwhile: once more on a
                // new one, when the request cannot have been acted on or may repeat.
                Err(Attempt::Stale { written, error })
                    if conn.reused && (!written || self.idempotent) =>
                {
                    tracing::trace!(%error, "pooled upstream connection was closed; retrying");
                    // The endpoint may be gone with its connections: then the policy's
                    // retry applies as to any refused connect.
                    conn = connect_or_sibling(
                        ctx,
                        &mut target,
                        &mut endpoints,
                        timeouts.connect,
                        &self.pending,
                    )
                    .await?;
                }
                Err(Attempt::Stale { error, .. }) => {
                    return Err(UpstreamError::Reset {
                        authority: target.authority.to_string(),
                        source: Box::new(error),
                    }
                    .into())
                }
                Err(Attempt::Failed(failure)) => return Err(failure),
            }
        }
    }
}

/// A new connection to `target`, or, when that fails with nothing sent, the policy's one
/// retry: another endpoint of the same variant (`target` becomes it), on one of its
/// pooled connections when it has one; the failure is counted (`pending`) either way. (A new connection each time would grow the pool
/// by one per retry while an endpoint is down.)
async fn connect_or_sibling<'a>(
    ctx: &ProxyContext,
    target: &mut &'a Target,
    endpoints: &mut impl Iterator<Item = &'a Target>,
    timeout: Duration,
    pending: &Pending,
) -> Result<Conn, UpstreamError> {
    match connect(ctx, target, timeout).await {
        Ok(conn) => Ok(conn),
        Err(e) => match retry::another_endpoint(&e, &target.endpoint, endpoints) {
            Some(other) => {
                pending.attempt_failed(&e);
                *target = other;
                match ctx.h1_pool.checkout(&other.authority) {
                    Some(conn) => Ok(conn),
                    None => connect(ctx, other, timeout).await,
                }
            }
            None => Err(e),
        },
    }
}

/// Opens a new connection to an endpoint (boxed: rare on a warm pool, and its state
/// should not widen every request's future).
async fn connect(
    ctx: &ProxyContext,
    target: &Target,
    timeout: Duration,
) -> Result<Conn, UpstreamError> {
    let key = &target.authority;
    let resolver = ctx.pool.resolver();
    let connecting = crate::upstream::connect_tcp(&target.endpoint, key, resolver, timeout);
    let stream = Box::pin(connecting).await?;
    Ok(Conn::new(stream, key))
}

enum Attempt {
    /// The connection failed before any response byte.
    Stale {
        written: bool,
        error: io::Error,
    },
    Failed(Failure),
}

/// What a wait for the upstream watches besides the upstream: the client, for a
/// hang-up, and the client connection's one timer, moved to the request's deadline (a
/// timer of its own would take the timer wheel's lock to register and again to cancel,
/// every request).
struct ClientWatch<'a> {
    client: &'a TcpStream,
    timer: Pin<&'a mut Sleep>,
}

/// One try on one connection: write the request, wait for the final response head
/// (bounded by the request timeout, watching the client for a hang-up).
async fn attempt(
    conn: &mut Conn,
    request: &[u8],
    timeout: Duration,
    head_request: bool,
    client_watch: &mut ClientWatch<'_>,
    deco: &Decoration<'_>,
) -> Result<Answer, Attempt> {
    if let Err(error) = conn.stream.write_all(request).await {
        return Err(Attempt::Stale {
            written: false,
            error,
        });
    }
    client_watch
        .timer
        .as_mut()
        .reset(tokio::time::Instant::now() + timeout);
    let mut watch_client = true;
    let mut buf: Option<Lent> = None;
    loop {
        let read = tokio::select! {
            biased;
            read = read_some(&mut conn.stream, &mut buf) => read,
            gone = client_gone(client_watch.client), if watch_client => {
                if gone {
                    return Err(Attempt::Failed(Failure::ClientGone));
                }
                // The client pipelined its next request: it is still there.
                watch_client = false;
                continue;
            }
            () = client_watch.timer.as_mut() => {
                return Err(Attempt::Failed(UpstreamError::ResponseTimeout {
                    authority: conn.key().to_string(),
                    after: timeout,
                }.into()));
            }
        };
        let seen = buf.as_ref().map_or(0, |b| b.len());
        let n = match read {
            Ok(n) => n,
            Err(error) if seen == 0 => {
                return Err(Attempt::Stale {
                    written: true,
                    error,
                })
            }
            Err(e) => return Err(failed_reset(conn, &e.to_string())),
        };
        if n == 0 {
            if seen == 0 {
                let error = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before any response byte",
                );
                return Err(Attempt::Stale {
                    written: true,
                    error,
                });
            }
            return Err(failed_reset(
                conn,
                "closed in the middle of the response head",
            ));
        }
        let Some(b) = buf.as_mut() else {
            continue;
        };
        // Interim 1xx heads are skipped; the final head is rewritten for the client.
        loop {
            // Lent only now: a request waiting for its upstream holds no buffer.
            let mut head = Lent::take();
            match client_head(b, head_request, deco, &mut head) {
                HeadStep::Partial if b.len() >= MAX_HEAD => {
                    return Err(failed_protocol(conn, "response head too large"))
                }
                HeadStep::Partial => break,
                HeadStep::Interim(n) => b.consume(n),
                HeadStep::Invalid(why) => return Err(failed_protocol(conn, why)),
                HeadStep::Final(fin) => {
                    let buf = buf.take().unwrap_or_else(Lent::take);
                    return Ok(Answer { buf, head, fin });
                }
            }
        }
    }
}

fn failed_reset(conn: &Conn, why: &str) -> Attempt {
    Attempt::Failed(Failure::Upstream(UpstreamError::Reset {
        authority: conn.key().to_string(),
        source: why.into(),
    }))
}

fn failed_protocol(conn: &Conn, why: &str) -> Attempt {
    Attempt::Failed(Failure::Upstream(UpstreamError::Protocol {
        authority: conn.key().to_string(),
        source: why.into(),
    }))
}

enum HeadStep {
    Partial,
    Interim(usize),
    Invalid(&'static str),
    Final(Final),
}

/// Parses the upstream's response head in `buf` and writes the client's into `out`.
fn client_head(
    buf: &[u8],
    head_request: bool,
    deco: &Decoration<'_>,
    out: &mut Vec<u8>,
) -> HeadStep {
    let mut storage = head::field_storage();
    match head::parse_response(buf, &mut storage, head_request) {
        ParsedResponse::Partial => HeadStep::Partial,
        ParsedResponse::Interim(n) => HeadStep::Interim(n),
        ParsedResponse::Invalid(why) => HeadStep::Invalid(why),
        ParsedResponse::Ready(resp) => {
            head::write_client_response(&resp, deco, out);
            HeadStep::Final(Final {
                status: resp.status,
                head_len: resp.head_len,
                framing: resp.framing,
                reusable: resp.reusable,
            })
        }
    }
}

/// Resolves when the client hangs up (`true`) or sends more bytes (`false`).
async fn client_gone(client: &TcpStream) -> bool {
    let mut one = [0u8; 1];
    let mut one = tokio::io::ReadBuf::new(&mut one);
    // Polled like `readable` above: no waiter queued per wait.
    let peeked = std::future::poll_fn(|cx| client.poll_peek(cx, &mut one)).await;
    !matches!(peeked, Ok(n) if n > 0)
}

enum Relayed {
    /// The body reached the client whole; the connection, unless it must close.
    Complete(Option<Conn>),
    /// The upstream broke the body off (reset, early close, broken chunked framing).
    /// Boxed: rare, and every response's future holds room for the largest variant.
    UpstreamCut(Box<UpstreamError>),
    ClientGone,
}

/// The stream idle timeout (`timeouts.idle`) of a response body, on the client
/// connection's one timer.
struct Idle<'a> {
    timer: Pin<&'a mut Sleep>,
    after: Duration,
    /// `listen.idle_timeout`: how long a write may wait for a client that stopped
    /// reading (see [`write_or_stall`]).
    write_after: Duration,
}

/// Streams the response: the head in `out` with the body bytes already in `buf`
/// (after `head_len`), then the rest as it arrives, one buffer at a time. `body`
/// tracks the body's framing (the caller's, so it can read the payload relayed). An
/// upstream that sends nothing for `idle.after` has the body cut (the request body
/// went whole with the head, so only the response can stall here).
async fn relay_body(
    mut conn: Conn,
    buf: &mut Lent,
    fin: &Final,
    client: &mut TcpStream,
    out: &mut Lent,
    body: &mut Body,
    mut idle: Idle<'_>,
) -> Relayed {
    let mut clean = true;
    let first = &buf[fin.head_len..];
    match body.take(first) {
        Ok(n) => {
            clean &= n == first.len();
            out.extend_from_slice(&first[..n]);
        }
        Err(e) => return cut(&conn, &e),
    }
    if !write_or_stall(client, out, idle.timer.as_mut(), idle.write_after).await {
        return Relayed::ClientGone;
    }
    while !body.done() {
        buf.clear();
        // Moving the registered timer later is one atomic, so once per read is cheap;
        // a body that came whole with its head never gets here.
        let deadline = tokio::time::Instant::now() + idle.after;
        idle.timer.as_mut().reset(deadline);
        let read = tokio::select! {
            biased;
            read = conn.stream.read_buf(&mut **buf) => read,
            () = idle.timer.as_mut() => {
                return Relayed::UpstreamCut(Box::new(UpstreamError::IdleTimeout {
                    authority: conn.key().to_string(),
                    after: idle.after,
                }));
            }
        };
        let n = match read {
            Ok(n) => n,
            Err(e) => return cut(&conn, &e),
        };
        if n == 0 {
            if fin.framing == Framing::UntilClose {
                return Relayed::Complete(None);
            }
            return cut(&conn, &"closed in the middle of the response body");
        }
        let taken = match body.take(buf) {
            Ok(taken) => taken,
            Err(e) => return cut(&conn, &e),
        };
        clean &= taken == n;
        if !write_or_stall(client, &buf[..taken], idle.timer.as_mut(), idle.write_after).await {
            return Relayed::ClientGone;
        }
    }
    // Bytes past the end of the body: the upstream is confused; do not reuse it.
    Relayed::Complete(clean.then_some(conn))
}

/// Writes all of `bytes` to the client: `false` when the client is gone, or has taken
/// none of them for `after` (`listen.idle_timeout`: a client that stops reading must
/// not hold its upstream connection, and its own, for ever; NGINX's `send_timeout`;
/// hyper's connections get the same from `crate::engine::write_stall`). `timer` is
/// moved only when a write has to wait, so a response the socket takes at once costs
/// no clock read; any progress starts the wait afresh.
async fn write_or_stall(
    client: &mut TcpStream,
    bytes: &[u8],
    mut timer: Pin<&mut Sleep>,
    after: Duration,
) -> bool {
    use std::task::Poll;
    use tokio::io::AsyncWrite;
    let mut written = 0;
    let mut waiting = false;
    std::future::poll_fn(|cx| {
        while written < bytes.len() {
            match Pin::new(&mut *client).poll_write(cx, &bytes[written..]) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(false),
                Poll::Ready(Ok(n)) => {
                    written += n;
                    waiting = false;
                }
                Poll::Pending => {
                    if waited_too_long(timer.as_mut(), &mut waiting, after, cx) {
                        tracing::debug!(after = ?after, "the client took no response bytes for listen.idle_timeout: closing");
                        return Poll::Ready(false);
                    }
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(true)
    })
    .await
}

/// The upstream broke the response body off, for `why`.
fn cut(conn: &Conn, why: &dyn std::fmt::Display) -> Relayed {
    Relayed::UpstreamCut(Box::new(UpstreamError::Reset {
        authority: conn.key().to_string(),
        source: format!("response body cut: {why}").into(),
    }))
}

/// Tracks where a response body ends.
enum Body {
    Empty,
    /// Bytes left.
    Length(u64),
    Chunked(ChunkedScanner),
    /// Bytes so far.
    UntilClose(u64),
}

impl Body {
    fn new(framing: Framing) -> Body {
        match framing {
            Framing::Empty => Body::Empty,
            Framing::Length(n) => Body::Length(n),
            Framing::Chunked => Body::Chunked(ChunkedScanner::new()),
            Framing::UntilClose => Body::UntilClose(0),
        }
    }

    /// Payload bytes taken so far of a body with this `framing` (chunked framing not
    /// counted, as on hyper's engine, which decodes it).
    fn payload(&self, framing: Framing) -> u64 {
        match (self, framing) {
            (Body::Length(left), Framing::Length(total)) => total.saturating_sub(*left),
            (Body::Chunked(scanner), _) => scanner.data_bytes(),
            (Body::UntilClose(n), _) => *n,
            _ => 0,
        }
    }

    /// How many of `bytes` belong to the body.
    fn take(&mut self, bytes: &[u8]) -> Result<usize, super::chunked::ChunkedError> {
        Ok(match self {
            Body::Empty => 0,
            Body::Length(left) => {
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                *left -= n as u64;
                n
            }
            Body::Chunked(scanner) => match scanner.feed(bytes)? {
                Scan::More => bytes.len(),
                Scan::End(n) => n,
            },
            Body::UntilClose(seen) => {
                *seen += bytes.len() as u64;
                bytes.len()
            }
        })
    }

    fn done(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Length(left) => *left == 0,
            Body::Chunked(scanner) => scanner.is_done(),
            Body::UntilClose(_) => false,
        }
    }
}
