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

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::proxy::{self, ProxyContext};
use crate::tls::{ServerTls, HANDSHAKE_TIMEOUT};

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

/// Starts one worker thread serving `listener` (through `tls` when set) until
/// `shutdown` turns true, then drains its connections for up to `drain`.
pub fn spawn_worker(
    id: usize,
    listener: std::net::TcpListener,
    ctx: ProxyContext,
    tls: Option<Arc<ServerTls>>,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("cohort-worker-{id}"))
        .spawn(move || {
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
            runtime.block_on(serve(listener, Arc::new(ctx), tls, shutdown, drain));
        })
}

async fn serve(
    listener: std::net::TcpListener,
    ctx: Arc<ProxyContext>,
    tls: Option<Arc<ServerTls>>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the listener with the runtime");
            return;
        }
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    if let Some(tls) = &tls {
                        let watcher = graceful.watcher();
                        tokio::spawn(serve_tls(tls.acceptor(), builder.clone(), watcher, ctx.clone(), stream, peer));
                        continue;
                    }
                    let ctx = ctx.clone();
                    let service = hyper::service::service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(proxy::handle(&ctx, req, peer).await) }
                    });
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::trace!(%peer, error = %e, "client connection ended with an error");
                        }
                    });
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
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(?drain, "drain timeout reached; closing the remaining connections");
        }
    }
}

/// Completes a client's TLS handshake, then serves the connection like a plain one. A
/// failed or stalled handshake is counted and the connection closed: it never reaches
/// the router.
async fn serve_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    builder: auto::Builder<TokioExecutor>,
    watcher: Watcher,
    ctx: Arc<ProxyContext>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            ctx.metrics.tls_handshake_error();
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            ctx.metrics.tls_handshake_error();
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(proxy::handle(&ctx, req, peer).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::trace!(%peer, error = %e, "client connection ended with an error");
    }
}
