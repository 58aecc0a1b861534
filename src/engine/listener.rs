//! The proxy listener and its worker threads.
//!
//! Each worker is one OS thread with a current-thread tokio runtime, its own upstream
//! pool, and a clone of the one listening socket; nothing but the snapshot and the
//! metric handles is shared between workers (see PERFORMANCE.md, "Beyond one core").
//! On a TLS listener each accepted connection first completes its handshake in its own
//! task; one that fails is counted and closed, and never reaches the router.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::config::Limits;
use crate::engine::drain::{Drain, DrainWatch};
use crate::engine::h1::{self, rewind::Rewind, server::Served};
use crate::engine::proxy::{self, ProxyContext};
use crate::engine::write_stall::WriteStall;
use crate::request::reject::{self, Malformed};
use crate::tls::HANDSHAKE_TIMEOUT;

/// Pending connections the kernel queues for us; sized for bursts of thousands.
const BACKLOG: i32 = 4096;

/// Binds a listening socket the way servers should: `SO_REUSEADDR` (restarts do not
/// wait for TIME_WAIT), a deep backlog, non-blocking for tokio.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The number of proxy workers for a `listen.workers` setting (0 = one per usable CPU).
pub fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Starts one worker thread serving `listener` (through TLS when `tls`) until
/// `shutdown` turns true, then drains its connections for up to `listen.drain_timeout`.
pub fn spawn_worker(
    id: usize,
    listener: std::net::TcpListener,
    ctx: ProxyContext,
    tls: bool,
    shutdown: watch::Receiver<bool>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("cohort-worker-{id}"))
        .spawn(move || {
            // This worker's requests are counted in its own lane of every window.
            crate::metrics::window::enter_lane(id);
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(worker = id, error = %e, "cannot start a worker runtime");
                    return;
                }
            };
            runtime.block_on(serve(listener, Arc::new(ctx), tls, shutdown));
        })
}

async fn serve(
    listener: std::net::TcpListener,
    ctx: Arc<ProxyContext>,
    tls: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the listener with the runtime");
            return;
        }
    };
    let http = Arc::new(Http::new(&ctx.limits));
    // Every connection task holds a clone; the drain is over when all are dropped.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    // The accept loop watches `shutdown` and passes it on to this worker's connections.
    let connections_drain = Drain::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Over `listen.max_connections`: closed at once, counted.
                    if !ctx.metrics.open_connection(ctx.limits.max_connections) {
                        tracing::debug!(%peer, "listen.max_connections reached; connection closed");
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let conn = Connection {
                        http: http.clone(),
                        ctx: ctx.clone(),
                        peer,
                        drain: connections_drain.watch(),
                        _open: open.clone(),
                    };
                    if !tls {
                        tokio::spawn(conn.serve_plain(stream));
                    } else if let Some(server) = ctx.snapshot.load().credentials.server_tls.clone() {
                        // The certificates of the snapshot in force when accepted.
                        let acceptor = tokio_rustls::TlsAcceptor::from(server);
                        tokio::spawn(conn.serve_tls(acceptor, stream));
                    } else {
                        // Unreachable: a reload keeps `listen.tls` on a TLS listener.
                        // Never fall back to plain text; close the connection.
                        tracing::error!(%peer, "no TLS settings in force on a TLS listener");
                    }
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    connections_drain.begin();
    drop(listener);
    drop(open);
    // Read now, from the config in force: `listen.drain_timeout` is not a start-only
    // setting (DESIGN §3), so a reload since the start applies to this drain.
    let drain = ctx.snapshot.load().config.listen.drain_timeout;
    tokio::select! {
        _ = all_closed.recv() => {}
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(drain_timeout = %humantime::format_duration(drain), "drain timeout reached; closing the remaining connections");
        }
    }
}

/// The HTTP/2 connection preface a prior-knowledge client starts with.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The two server protocol stacks, configured once per worker.
struct Http {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl Http {
    fn new(limits: &Limits) -> Http {
        let mut h1 = http1::Builder::new();
        // Vectored writes cost more than they save for small proxied responses
        // (PERFORMANCE.md); the timer powers hyper's header-read timeout; request heads
        // are limited as on cohort's own path (431 beyond). hyper's header-read timeout
        // runs from when it starts reading a head, so it also ends an idle keep-alive
        // connection: on this engine a connection idle between requests is closed after
        // the shorter of `header_timeout` and `idle_timeout`.
        h1.timer(TokioTimer::new())
            .writev(false)
            .header_read_timeout(limits.header_timeout.min(limits.idle_timeout))
            .max_buf_size(limits.max_header_bytes)
            .max_headers(limits.max_headers);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        // What each knob bounds, and what a client sees past it, is measured by
        // tests/attacks_h2.rs and tabled in the README ("HTTP/2 abuse"). Values are set
        // here even where they equal h2's or hyper's default, so an upgrade that changes
        // a default does not change cohort.
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(h2_header_list_size(limits.max_header_bytes))
            .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
            .max_send_buf_size(H2_MAX_SEND_BUF);
        Http { h1, h2 }
    }
}

/// Streams a client resets before cohort accepted them (rapid reset, CVE-2023-44487):
/// at this many at once, GOAWAY ENHANCE_YOUR_CALM and close. h2's default, pinned.
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// Streams cohort itself resets for a client's protocol errors over a connection's life
/// (MadeYouReset, CVE-2025-8671: a zero WINDOW_UPDATE, DATA beyond `content-length` or on
/// a closed stream, a malformed header block): one more is GOAWAY ENHANCE_YOUR_CALM.
/// h2 counts the streams it refuses over `h2_max_concurrent_streams` here too. hyper's
/// default is 1024; a well-behaved client makes none (it waits for a free stream; only
/// streams it opened before cohort's SETTINGS arrived can be refused), and each can have
/// cost an upstream request, so cohort allows far fewer.
const H2_MAX_LOCAL_ERROR_RESETS: usize = 100;

/// Response bytes hyper buffers per stream for a client that does not read (hyper's
/// default is 400 KB: 40 MB a connection at 100 streams). 64 KiB is four full frames,
/// and the upstream's own connection holds the rest until the client reads.
const H2_MAX_SEND_BUF: usize = 64 * 1024;

/// The header list size HTTP/2 advertises and enforces itself (the
/// SETTINGS_MAX_HEADER_LIST_SIZE setting, RFC 9113 §6.5.2): twice `max_header_bytes`.
/// A list between the two reaches cohort, whose request policy answers 431 and counts it
/// (`proxy::handle`); h2 answers a larger one 431 itself, unseen and uncounted, and ends
/// the connection with a GOAWAY for a header block that keeps growing past it
/// (COMPRESSION_ERROR once it stops buffering the block, ENHANCE_YOUR_CALM for too many
/// CONTINUATION frames or a list over four times its limit).
fn h2_header_list_size(max_header_bytes: usize) -> u32 {
    u32::try_from(max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX)
}

/// How long an idle HTTP/2 connection may take to complete its close (the client's
/// answer to the GOAWAY's PING, RFC 9113 §6.8) before it is cut.
const H2_IDLE_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// One accepted client connection and what serving it needs.
struct Connection {
    http: Arc<Http>,
    ctx: Arc<ProxyContext>,
    /// The client's address.
    peer: SocketAddr,
    drain: DrainWatch,
    /// Dropped when the connection ends; the drain waits for every one.
    _open: mpsc::Sender<()>,
}

/// A connection counts in `cohort_connections_open` from its accept (see `serve`) to
/// here (a drop, not a field: every connection's state stays as small as it was).
impl Drop for Connection {
    fn drop(&mut self) {
        self.ctx.metrics.close_connection();
    }
}

impl Connection {
    /// Tells HTTP/2 prior knowledge from HTTP/1.x by peeking at the first bytes, so
    /// nothing is buffered for the connection before it speaks (an idle client costs
    /// its task and socket only), then serves it.
    ///
    /// A plain function around an `async move` block: an `async fn` keeps a second
    /// copy of its arguments in its state for its whole life (rust-lang/rust#62958),
    /// and this state is what every connection, idle ones included, costs.
    #[allow(clippy::manual_async_fn)] // an `async fn` would double the arguments (above)
    fn serve_plain(mut self, mut stream: TcpStream) -> impl Future<Output = ()> + Send {
        async move {
            let idle = self.ctx.limits.idle_timeout;
            let first_bytes = tokio::time::timeout(idle, sniff(&stream));
            let protocol = tokio::select! {
                biased;
                sniffed = first_bytes => match sniffed {
                    Ok(Ok(Some(protocol))) => protocol,
                    // Closed, failed, or silent too long: nothing to serve.
                    _ => return,
                },
                // Nothing sent yet is idle too: the drain closes it at once (NGINX does
                // the same), instead of waiting up to `listen.idle_timeout`.
                () = self.drain.draining() => return,
            };
            // hyper's paths are boxed (see `serve_boxed`).
            if protocol == Wire::Http2 {
                return self.serve_boxed(stream, protocol).await;
            }
            // HTTP/1.1 on cohort's own path first; hyper takes over what it does not
            // handle.
            let served =
                h1::server::serve(&self.ctx, &self.peer, &mut stream, &mut self.drain).await;
            if let Served::Handover(read) = served {
                let io = Rewind::new(read, stream);
                self.serve_boxed(io, Wire::Http1).await;
            }
        }
    }

    /// [`Connection::serve`] on the heap. hyper's connection state is large, and a
    /// connection task is as large as its largest state, idle ones included; building
    /// the box in a plain function keeps the unboxed future out of the caller's state
    /// (`Box::pin(self.serve(..)).await` inside an `async fn` reserves room for it).
    fn serve_boxed<I>(self, io: I, protocol: Wire) -> Pin<Box<impl Future<Output = ()>>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Box::pin(self.serve(io, protocol))
    }

    /// Completes a client's TLS handshake, then serves the connection in the protocol
    /// ALPN chose. A failed or stalled handshake is counted and the connection closed:
    /// it never reaches the router.
    async fn serve_tls(self, acceptor: tokio_rustls::TlsAcceptor, stream: TcpStream) {
        let peer = self.peer;
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                self.ctx.metrics.tls_handshake_error();
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                self.ctx.metrics.tls_handshake_error();
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let protocol = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            Wire::Http2
        } else {
            Wire::Http1
        };
        self.serve(stream, protocol).await;
    }

    async fn serve<I>(mut self, io: I, protocol: Wire)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let ctx = self.ctx.clone();
        let peer = self.peer;
        let io = WriteStall::new(io, self.ctx.limits.idle_timeout);
        // hyper's path renders the `X-Forwarded-For` element once per connection.
        let client = Arc::new(proxy::Peer::new(peer));
        let result = match protocol {
            Wire::Http1 => {
                let service = hyper::service::service_fn(move |req| {
                    let ctx = ctx.clone();
                    let client = client.clone();
                    async move { Ok::<_, Infallible>(proxy::handle(&ctx, req, &client).await) }
                });
                let io = HeadWatch::new(io);
                let watch = io.state.clone();
                let conn = self.http.h1.serve_connection(TokioIo::new(io), service);
                let conn = conn.with_upgrades();
                let ended = |result: &Result<(), hyper::Error>| {
                    // hyper gave up on a head: answered 408 by the IO as hyper drops it,
                    // unless nothing of a next request had arrived (an idle connection).
                    if result.as_ref().is_err_and(hyper::Error::is_timeout) {
                        watch.head_timed_out();
                    }
                };
                let result =
                    until_drained(conn, &mut self.drain, |c| c.graceful_shutdown(), ended).await;
                if watch.answer.load(Ordering::Relaxed) {
                    reject::rejected(&self.ctx.metrics, peer, Malformed::HeadTimeout);
                }
                result
            }
            Wire::Http2 => {
                let activity = Arc::new(Activity::new());
                let streams = activity.clone();
                let service = hyper::service::service_fn(move |req| {
                    let ctx = ctx.clone();
                    let client = client.clone();
                    let stream = InFlight::enter(&streams);
                    async move {
                        let response = proxy::handle(&ctx, req, &client).await;
                        Ok::<_, Infallible>(response.map(|body| InFlightBody {
                            body,
                            stream,
                            holding: false,
                        }))
                    }
                });
                let conn = self.http.h2.serve_connection(TokioIo::new(io), service);
                let idle = self.ctx.limits.idle_timeout;
                let stop = |c: Pin<&mut _>| http2::Connection::graceful_shutdown(c);
                until_idle_or_drained(conn, &mut self.drain, &activity, idle, stop).await
            }
        };
        if let Err(e) = result {
            if protocol == Wire::Http1 && e.is_timeout() {
                return;
            }
            match malformed(&e).filter(|_| protocol == Wire::Http1) {
                // hyper has answered it already, with the policy's status, and closes;
                // the policy counts and logs it as it does for cohort's own path.
                Some(malformed) => {
                    reject::rejected(&self.ctx.metrics, peer, malformed);
                }
                None => tracing::trace!(%peer, error = %e, "client connection ended with an error"),
            }
        }
    }
}

/// What hyper's HTTP/1 server found malformed in a request head, as the request policy
/// names it, or `None` for errors it answers nothing to. hyper answers these itself
/// (its `on_error`: 400, 431 for a head too large, 414 for a URI too long), with the
/// status `reject::answer` gives for the same kind.
fn malformed(e: &hyper::Error) -> Option<Malformed> {
    if !e.is_parse() || e.is_parse_version_h2() || e.is_parse_status() {
        return None;
    }
    if e.is_parse_too_large() {
        // hyper's error kinds tell 431 from 414 only through their text.
        return Some(if e.to_string().contains("URI too long") {
            Malformed::UriTooLong
        } else {
            Malformed::HeadTooLarge
        });
    }
    Some(Malformed::InvalidRequest)
}

/// A waker for the one write made without waiting ([`HeadWatch`]'s drop).
struct NoWake;

impl std::task::Wake for NoWake {
    fn wake(self: Arc<Self>) {}
}

/// Which HTTP a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Http1,
    Http2,
}

/// Peeks until the first bytes tell the protocol; `None` if the client closed first.
async fn sniff(stream: &TcpStream) -> io::Result<Option<Wire>> {
    let mut head = [0u8; H2_PREFACE.len()];
    loop {
        // Polled in place: `TcpStream::peek` would queue a waiter node in this state.
        let mut unread = tokio::io::ReadBuf::new(&mut head);
        let n = std::future::poll_fn(|cx| stream.poll_peek(cx, &mut unread)).await?;
        if n == 0 {
            return Ok(None);
        }
        if head[..n] != H2_PREFACE[..n] {
            return Ok(Some(Wire::Http1));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some(Wire::Http2));
        }
        // Part of the preface so far: peek returns at once while data is waiting, so
        // give the rest a moment to arrive instead of spinning.
        preface_pause().await;
    }
}

/// The pause between peeks at a partial HTTP/2 preface: rare, so its timer is boxed
/// (in a plain function, so the unboxed timer takes no room in `sniff`'s state).
fn preface_pause() -> Pin<Box<tokio::time::Sleep>> {
    Box::pin(tokio::time::sleep(Duration::from_millis(1)))
}

/// Drives a connection to its end; when shutdown begins, asks it to finish what is in
/// flight and close (hyper closes idle keep-alive connections at once). `ended` sees
/// the result while the connection (and its IO) still exists.
async fn until_drained<C, E>(
    conn: C,
    drain: &mut DrainWatch,
    stop: impl FnOnce(Pin<&mut C>),
    ended: impl FnOnce(&Result<(), E>),
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = drain.draining() => {
            stop(conn.as_mut());
            conn.as_mut().await
        }
    };
    ended(&result);
    result
}

/// Drives an HTTP/2 connection to its end. When shutdown begins, it is asked to finish
/// what is in flight and close (as [`until_drained`]). Once no stream has been in flight
/// for `idle` (`listen.idle_timeout`; from the connection's start if it never had one:
/// a client that sent the preface and nothing else, or a header block that stalled,
/// holds no stream), it is closed the same way, GOAWAY then close, and cut if the client
/// has not completed the close within [`H2_IDLE_CLOSE_GRACE`].
async fn until_idle_or_drained<C>(
    conn: C,
    drain: &mut DrainWatch,
    activity: &Activity,
    idle: Duration,
    stop: impl Fn(Pin<&mut C>),
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let mut conn = std::pin::pin!(conn);
    let mut polls_then = activity.body_polls.load(Ordering::Relaxed);
    loop {
        // While a stream is in flight, look again one `idle` later: the deadline is then
        // at least that far off.
        let wake = activity
            .idle_deadline(idle)
            .unwrap_or_else(|| std::time::Instant::now() + idle);
        tokio::select! {
            result = conn.as_mut() => return result,
            () = drain.draining() => {
                stop(conn.as_mut());
                return conn.as_mut().await;
            }
            () = tokio::time::sleep_until(wake.into()) => {
                let now = std::time::Instant::now();
                let polls = std::mem::replace(
                    &mut polls_then,
                    activity.body_polls.load(Ordering::Relaxed),
                );
                // A response waits for the client's flow-control window, and no
                // response body on the connection moved for a whole `idle`: the client
                // has taken nothing (its socket may still move: PINGs, WINDOW_UPDATEs
                // of 0). The same rule as a write that waits `idle` (`WriteStall`).
                let stalled = activity.holding.load(Ordering::Relaxed) > 0 && polls == polls_then;
                if stalled {
                    tracing::debug!(after = ?idle, "HTTP/2 client took no response bytes for listen.idle_timeout: closing");
                }
                if stalled || activity.idle_deadline(idle).is_some_and(|deadline| deadline <= now) {
                    stop(conn.as_mut());
                    let closed = tokio::time::timeout(H2_IDLE_CLOSE_GRACE, conn.as_mut()).await;
                    return closed.unwrap_or(Ok(()));
                }
            }
        }
    }
}

/// The streams in flight on one HTTP/2 connection, and since when none has been: what
/// `listen.idle_timeout` is judged by. Touched once when a stream starts and once when
/// its response ends; all on the connection's worker thread.
struct Activity {
    started: std::time::Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `started` to when the last stream ended (0: none yet).
    idle_since_ms: AtomicU64,
    /// Polls of the connection's response bodies so far: hyper polls a body only when
    /// the client has room for more, so a count that stands still while a body holds
    /// data is a client taking nothing.
    body_polls: AtomicU64,
    /// Response bodies whose last poll handed hyper data: they wait for the client.
    holding: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: std::time::Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            body_polls: AtomicU64::new(0),
            holding: AtomicUsize::new(0),
        }
    }

    /// When the connection will have been idle for `idle`; `None` while a stream is in
    /// flight.
    fn idle_deadline(&self, idle: Duration) -> Option<std::time::Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.started + since + idle)
    }
}

/// One stream in flight, from the request's arrival to the end of its response body.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let now = u64::try_from(activity.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.idle_since_ms.store(now, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body on an HTTP/2 connection; its stream is in flight while it exists
/// (hyper drops it when the stream ends, is reset, or the connection goes).
struct InFlightBody {
    body: proxy::ProxyBody,
    stream: InFlight,
    /// The last poll handed hyper a data frame: counted in `Activity::holding`.
    holding: bool,
}

impl http_body::Body for InFlightBody {
    type Data = bytes::Bytes;
    type Error = <proxy::ProxyBody as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = &mut *self;
        let activity = &this.stream.0;
        activity.body_polls.fetch_add(1, Ordering::Relaxed);
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        let holds = matches!(&polled, std::task::Poll::Ready(Some(Ok(frame))) if frame.is_data());
        if holds != this.holding {
            this.holding = holds;
            if holds {
                activity.holding.fetch_add(1, Ordering::Relaxed);
            } else {
                activity.holding.fetch_sub(1, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for InFlightBody {
    fn drop(&mut self) {
        if self.holding {
            self.stream.0.holding.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The IO of a connection hyper serves as HTTP/1, watched for the one answer hyper
/// does not write: when its header-read timeout ends a head that had started, hyper
/// closes without a word; cohort answers 408 (`reject::Malformed::HeadTimeout`) as the
/// IO is dropped. Whether a head had started is whether a byte arrived since cohort
/// last wrote: a timeout with none is an idle keep-alive connection, closed silently.
struct HeadWatch<I: AsyncWrite + Unpin> {
    io: I,
    state: Arc<HeadState>,
}

/// What [`HeadWatch`] shares with the connection's task (one allocation per
/// connection on hyper's engine; cohort's own path does without).
#[derive(Default)]
struct HeadState {
    /// A byte arrived since the last write.
    started: AtomicBool,
    /// hyper gave up on the head; the 408 is to be written.
    answer: AtomicBool,
}

impl HeadState {
    fn head_timed_out(&self) {
        if self.started.load(Ordering::Relaxed) {
            self.answer.store(true, Ordering::Relaxed);
        }
    }
}

impl<I: AsyncWrite + Unpin> HeadWatch<I> {
    fn new(io: I) -> HeadWatch<I> {
        HeadWatch {
            io,
            state: Arc::default(),
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadWatch<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.state.started.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for HeadWatch<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.state.started.store(false, Ordering::Relaxed);
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<I: AsyncWrite + Unpin> Drop for HeadWatch<I> {
    fn drop(&mut self) {
        if !self.state.answer.load(Ordering::Relaxed) {
            return;
        }
        // Best effort, without waiting: a short answer fits an idle socket's send
        // buffer; a client that is not reading loses it, as it would on any server.
        let answer = reject::answer(Malformed::HeadTimeout);
        let mut bytes = Vec::new();
        let plain = h1::head::Decoration::plain(answer.close);
        h1::head::write_local_response(answer.status, answer.body, &plain, &mut bytes);
        let waker = std::task::Waker::from(Arc::new(NoWake));
        let mut cx = std::task::Context::from_waker(&waker);
        let mut io = Pin::new(&mut self.io);
        let mut written = 0;
        while written < bytes.len() {
            match io.as_mut().poll_write(&mut cx, &bytes[written..]) {
                std::task::Poll::Ready(Ok(n)) if n > 0 => written += n,
                _ => return,
            }
        }
        let _ = io.as_mut().poll_flush(&mut cx);
        let _ = io.as_mut().poll_shutdown(&mut cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, F: Future>(_f: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every client connection, idle ones included, costs the state of this future in a
    /// tokio task cell, which is rounded up to a multiple of 128 bytes: a future of up to
    /// about 408 bytes makes a 512-byte cell (measured with massif: 512 at 392 bytes,
    /// 640 at 536). So what is large and rare stays boxed: hyper's connection (over
    /// 3 KB inline), the lingering close, a request's exchange. It is 392 bytes (release);
    /// `async fn serve_plain` would keep a second copy of its arguments (104 bytes), a
    /// `watch::Receiver::changed` waiter for the drain takes 120 (the `drain` module's
    /// watch keeps a slot number instead), the peer's `X-Forwarded-For` text kept per
    /// connection took 40.
    #[test]
    fn a_connection_task_stays_small() {
        const LIMIT: usize = 408;
        let size = future_size(Connection::serve_plain);
        assert!(
            size <= LIMIT,
            "a connection's future is {size} bytes (limit {LIMIT})"
        );
    }
}
