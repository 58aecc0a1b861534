//! Idle plain HTTP/1.1 upstream connections of one worker, for cohort's own client.
//!
//! Reused newest first, so a quiet pool shrinks by itself as old connections pass the
//! idle timeout; an idle connection is a bare socket, no buffer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::net::TcpStream;

use crate::upstream::{IDLE_TIMEOUT, MAX_IDLE_PER_ENDPOINT};

/// A connection to one endpoint, lent to one request at a time.
pub struct Conn {
    pub stream: TcpStream,
    /// It carried an earlier request, so the upstream may have closed it meanwhile.
    pub reused: bool,
    key: Arc<str>,
}

impl Conn {
    pub fn new(stream: TcpStream, key: &Arc<str>) -> Conn {
        Conn {
            stream,
            reused: false,
            key: key.clone(),
        }
    }

    /// The endpoint's authority, the pool key.
    pub fn key(&self) -> &Arc<str> {
        &self.key
    }
}

struct Idle {
    stream: TcpStream,
    since: Instant,
}

/// A worker's idle connections by endpoint authority. Only the worker's own thread
/// touches it; the mutex is never contended and keeps request futures `Send`. Keys
/// come from the config, not from clients, so a fast unkeyed hash is safe (SipHash
/// cost about 500 instructions per request here, measured with callgrind).
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<Arc<str>, Vec<Idle>, foldhash::fast::FixedState>>,
}

impl Pool {
    /// The newest idle connection to `key` that is young enough to trust.
    pub fn checkout(&self, key: &Arc<str>) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = idle.get_mut(key)?;
        let conn = queue.pop()?;
        if conn.since.elapsed() > IDLE_TIMEOUT {
            // Everything older than the newest is older still.
            queue.clear();
            return None;
        }
        Some(Conn {
            stream: conn.stream,
            reused: true,
            key: key.clone(),
        })
    }

    /// Keeps a connection whose last response was read to its end.
    pub fn checkin(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = idle.entry(conn.key).or_default();
        if queue.len() >= MAX_IDLE_PER_ENDPOINT {
            // The oldest is the likeliest to be closed by the upstream.
            queue.remove(0);
        }
        queue.push(Idle {
            stream: conn.stream,
            since: Instant::now(),
        });
    }
}
