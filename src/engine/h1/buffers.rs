//! Read buffers lent to a connection only while it has bytes to handle.
//!
//! An idle keep-alive connection holds no buffer at all (NGINX's keepalive handler
//! does the same), and a busy worker reuses a small stack of them instead of asking
//! the allocator for 16 KiB per request. Each worker thread has its own stack.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Capacity of a lent buffer: a typical head and body, and the unit of a body copy.
pub const SIZE: usize = 16 * 1024;

/// Free buffers a worker keeps; more are freed.
const KEEP: usize = 64;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer lent from the worker's stack; it goes back when dropped.
pub struct Lent(Vec<u8>);

impl Lent {
    /// An empty buffer of at least [`SIZE`] bytes of capacity.
    pub fn take() -> Lent {
        let free = FREE.try_with(|f| f.borrow_mut().pop()).ok().flatten();
        Lent(free.unwrap_or_else(|| Vec::with_capacity(SIZE)))
    }

    /// The bytes, owned, for a caller that keeps them (the buffer is not given back).
    pub fn into_vec(mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }

    /// Drops the first `n` bytes, keeping the rest at the start.
    pub fn consume(&mut self, n: usize) {
        if n >= self.0.len() {
            self.0.clear();
        } else {
            self.0.drain(..n);
        }
    }
}

impl Deref for Lent {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        // A buffer that grew for a large head is not kept: the stack stays SIZE-sized.
        if buf.capacity() != SIZE {
            return;
        }
        buf.clear();
        let _ = FREE.try_with(|f| {
            let mut free = f.borrow_mut();
            if free.len() < KEEP {
                free.push(buf);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_go_back_empty_and_are_reused() {
        let mut a = Lent::take();
        a.extend_from_slice(b"hello");
        let ptr = a.as_ptr();
        drop(a);
        let b = Lent::take();
        assert!(b.is_empty());
        assert_eq!(b.as_ptr(), ptr, "the same allocation comes back");
        assert!(b.capacity() >= SIZE);
    }

    fn kept() -> usize {
        FREE.with(|f| f.borrow().len())
    }

    #[test]
    fn grown_buffers_are_freed_not_kept() {
        // Each test runs on its own thread, so it starts with an empty stack.
        let mut grown = Lent::take();
        grown.reserve(SIZE * 2);
        drop(grown);
        assert_eq!(kept(), 0);
        drop(Lent::take());
        assert_eq!(kept(), 1);
    }

    #[test]
    fn a_handed_over_buffer_is_not_given_back() {
        let mut a = Lent::take();
        a.extend_from_slice(b"GET");
        assert_eq!(a.into_vec(), b"GET");
        assert_eq!(kept(), 0);
    }

    #[test]
    fn consume_keeps_the_rest_at_the_start() {
        let mut a = Lent::take();
        a.extend_from_slice(b"GET /a\r\n\r\nGET /b");
        a.consume(10);
        assert_eq!(&a[..], b"GET /b");
        a.consume(100);
        assert!(a.is_empty());
    }
}
