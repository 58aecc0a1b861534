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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::engine::drain::{Drain, DrainWatch};
use crate::engine::h1::{self, rewind::Rewind, server::Served};
use crate::engine::proxy::{self, ProxyContext};
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
    let http = Arc::new(Http::new());
    // Every connection task holds a clone; the drain is over when all are dropped.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    // The accept loop watches `shutdown` and passes it on to this worker's connections.
    let connections_drain = Drain::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
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

/// How long a new connection may stay silent before its first bytes (hyper's own
/// header-read timeout takes over from there).
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// The two server protocol stacks, configured once per worker.
struct Http {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl Http {
    fn new() -> Http {
        let mut h1 = http1::Builder::new();
        // Vectored writes cost more than they save for small proxied responses
        // (PERFORMANCE.md); the timer powers hyper's header-read timeout; request heads
        // are limited as on cohort's own path (431 beyond, like Envoy's 60 KiB).
        h1.timer(TokioTimer::new())
            .writev(false)
            .max_buf_size(h1::head::MAX_REQUEST_HEAD);
        Http {
            h1,
            h2: http2::Builder::new(TokioExecutor::new()),
        }
    }
}

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
            let first_bytes = tokio::time::timeout(FIRST_BYTES_TIMEOUT, sniff(&stream));
            let protocol = tokio::select! {
                biased;
                sniffed = first_bytes => match sniffed {
                    Ok(Ok(Some(protocol))) => protocol,
                    // Closed, failed, or silent too long: nothing to serve.
                    _ => return,
                },
                // Nothing sent yet is idle too: the drain closes it at once (NGINX does
                // the same), instead of waiting up to `FIRST_BYTES_TIMEOUT`.
                () = self.drain.draining() => return,
            };
            // hyper's paths are boxed (see `serve_boxed`).
            if protocol == Wire::Http2 {
                return self.serve_boxed(TokioIo::new(stream), protocol).await;
            }
            // HTTP/1.1 on cohort's own path first; hyper takes over what it does not
            // handle.
            let served =
                h1::server::serve(&self.ctx, &self.peer, &mut stream, &mut self.drain).await;
            if let Served::Handover(read) = served {
                let io = TokioIo::new(Rewind::new(read, stream));
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
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
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
        self.serve(TokioIo::new(stream), protocol).await;
    }

    async fn serve<I>(self, io: I, protocol: Wire)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let ctx = self.ctx.clone();
        let peer = self.peer;
        // hyper's path renders the `X-Forwarded-For` element once per connection.
        let client = Arc::new(proxy::Peer::new(peer));
        let service = hyper::service::service_fn(move |req| {
            let ctx = ctx.clone();
            let client = client.clone();
            async move { Ok::<_, Infallible>(proxy::handle(&ctx, req, &client).await) }
        });
        let result = match protocol {
            Wire::Http1 => {
                let conn = self.http.h1.serve_connection(io, service).with_upgrades();
                until_drained(conn, self.drain, |c| c.graceful_shutdown()).await
            }
            Wire::Http2 => {
                let conn = self.http.h2.serve_connection(io, service);
                until_drained(conn, self.drain, |c| c.graceful_shutdown()).await
            }
        };
        if let Err(e) = result {
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
/// flight and close (hyper closes idle keep-alive connections at once).
async fn until_drained<C, E>(
    conn: C,
    mut drain: DrainWatch,
    stop: impl FnOnce(Pin<&mut C>),
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return result,
        () = drain.draining() => stop(conn.as_mut()),
    }
    conn.await
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
