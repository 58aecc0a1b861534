//! The test pattern: large bodies generated ([`PatternBody`]) and checked
//! ([`PatternCheck`]) frame by frame, never held whole.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The pattern repeats every `PATTERN_PERIOD` bytes, a prime, so a lost, repeated or
/// reordered chunk of any power-of-two size shows up as a mismatch.
pub const PATTERN_PERIOD: usize = 65_521;

/// Frames a [`PatternBody`] yields, at most.
pub const PATTERN_FRAME: usize = 16 * 1024;

/// The byte at `offset` of every pattern body.
pub fn pattern_byte(offset: u64) -> u8 {
    let i = offset % PATTERN_PERIOD as u64;
    (i.wrapping_mul(31).wrapping_add(i >> 8) % 251) as u8
}

/// Two periods back to back, so any frame is one zero-copy slice of it.
fn pattern_twice() -> &'static Bytes {
    static TWICE: OnceLock<Bytes> = OnceLock::new();
    TWICE.get_or_init(|| {
        Bytes::from(
            (0..2 * PATTERN_PERIOD as u64)
                .map(pattern_byte)
                .collect::<Vec<u8>>(),
        )
    })
}

/// `len` bytes of the pattern, produced one frame at a time as the reader polls: memory
/// use stays one frame, however long the body.
pub struct PatternBody {
    offset: u64,
    remaining: u64,
    exact: bool,
    produced: Option<Arc<AtomicU64>>,
}

impl PatternBody {
    /// With `exact`, the size is announced (`Content-Length`); without, it is chunked.
    pub fn new(len: u64, exact: bool) -> PatternBody {
        PatternBody {
            offset: 0,
            remaining: len,
            exact,
            produced: None,
        }
    }

    /// Adds every produced byte to `counter`.
    pub fn with_counter(mut self, counter: Arc<AtomicU64>) -> PatternBody {
        self.produced = Some(counter);
        self
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(PATTERN_FRAME as u64) as usize;
        let start = (self.offset % PATTERN_PERIOD as u64) as usize;
        let frame = pattern_twice().slice(start..start + n);
        self.offset += n as u64;
        self.remaining -= n as u64;
        if let Some(counter) = &self.produced {
            counter.fetch_add(n as u64, Ordering::SeqCst);
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

/// Checks bytes against the pattern as they arrive, keeping nothing but the offset.
#[derive(Debug, Clone)]
pub struct PatternCheck {
    pub offset: u64,
    pub ok: bool,
}

impl Default for PatternCheck {
    fn default() -> Self {
        PatternCheck {
            offset: 0,
            ok: true,
        }
    }
}

impl PatternCheck {
    pub fn feed(&mut self, mut data: &[u8]) {
        let twice = pattern_twice();
        while !data.is_empty() {
            let start = (self.offset % PATTERN_PERIOD as u64) as usize;
            let n = data.len().min(PATTERN_PERIOD);
            // Slice comparison is a memcmp: fast even in a debug build.
            if data[..n] != twice[start..start + n] {
                self.ok = false;
            }
            self.offset += n as u64;
            data = &data[n..];
        }
    }
}
