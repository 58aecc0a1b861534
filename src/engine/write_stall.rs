//! The bound on a client that stops reading (`listen.idle_timeout`, like NGINX's
//! `send_timeout`): a connection whose client has taken none of the bytes cohort has
//! for it for that long is closed, so it cannot hold its upstream requests, their
//! connections and buffers for ever. cohort's own HTTP/1 path applies it with
//! `h1::server`'s connection timer; hyper's connections (HTTP/2, TLS, connections
//! handed over) get their IO wrapped in a [`WriteStall`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// An IO whose writes fail with `TimedOut` once one has waited `after` without a byte
/// taken. The timer is made the first time a write waits, and moved only when a new
/// wait begins, so a client that keeps up costs no clock read.
pub(crate) struct WriteStall<I> {
    io: I,
    after: Duration,
    /// The deadline of the wait in progress, if one is.
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl<I> WriteStall<I> {
    pub(crate) fn new(io: I, after: Duration) -> WriteStall<I> {
        WriteStall {
            io,
            after,
            timer: None,
            waiting: false,
        }
    }

    /// What a write that made no progress answers: still waiting, or, past the
    /// deadline, the error that ends the connection.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let after = self.after;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        if waited_too_long(timer.as_mut(), &mut self.waiting, after, cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no bytes for listen.idle_timeout",
            )));
        }
        Poll::Pending
    }

    fn moved<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => self.stalled(cx),
            ready => {
                self.waiting = false;
                ready
            }
        }
    }
}

/// The rule both engines apply to a write that made no progress (hyper's through
/// [`WriteStall`], cohort's own path with its connection's one timer): the wait starts
/// (`timer` moved to `after` from now) unless one is already `waiting`; `true` once it
/// has lasted `after`, else `cx` is woken when it might have. Any progress in between
/// is the caller's to note by clearing `waiting`.
pub(crate) fn waited_too_long(
    mut timer: Pin<&mut Sleep>,
    waiting: &mut bool,
    after: Duration,
    cx: &mut Context<'_>,
) -> bool {
    if !*waiting {
        timer.as_mut().reset(tokio::time::Instant::now() + after);
        *waiting = true;
    }
    timer.poll(cx).is_ready()
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteStall<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteStall<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.moved(polled, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.moved(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.moved(polled, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.moved(polled, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A peer that never reads: writes fill the pipe, then wait, then fail after
    /// `after`; a peer that reads slowly, but within `after` each time, is served.
    #[tokio::test]
    async fn a_write_waiting_longer_than_after_fails() {
        let after = Duration::from_millis(300);
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut io = WriteStall::new(ours, after);
        let started = std::time::Instant::now();
        let error = io.write_all(&[0u8; 4096]).await.expect_err("nobody reads");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(waited >= after && waited < after * 4, "{waited:?}");

        // A reader taking 512 bytes every 200 ms (under `after`) is never cut.
        let mut io = WriteStall::new(io.io, after);
        let reader = tokio::spawn(async move {
            let mut chunk = [0u8; 512];
            let mut total = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                match theirs.read(&mut chunk).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
            }
        });
        io.write_all(&[0u8; 3072])
            .await
            .expect("a slow reader is served");
        drop(io);
        assert!(reader.await.expect("reader") >= 3072);
    }
}
