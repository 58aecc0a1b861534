//! What the request path writes to the log, for both engines: the access log line,
//! the warning gate and the error text of the upstream-failure warning, which the
//! request policy's exit point (`crate::request::record`) writes.
//!
//! Values are plain: numbers as numbers (durations in milliseconds, at most three
//! decimals), text as text, and a field that does not apply is left out rather than
//! written as `None`.

use std::error::Error;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::cohort::Variant;
use crate::config::canonical_ip;
use crate::metrics::UpstreamErrorKind;
use crate::router::AssignSource;
use crate::upstream::Progress;

/// The tracing target of access log lines (`listen.access_log`), always written as JSON.
pub const ACCESS_LOG_TARGET: &str = "cohort::access";

/// Lets at most one warning through per interval for one (route, variant, kind), and
/// counts the ones it holds back. Lock-free: two atomics beside the metric handles,
/// read and written only when an upstream fails.
#[derive(Default)]
pub struct WarnGate {
    /// When the last line was let through, in milliseconds on the metrics clock, plus
    /// one (0: never).
    last: AtomicU64,
    /// Lines held back since then.
    suppressed: AtomicU64,
}

impl WarnGate {
    /// At most one line per this many milliseconds.
    pub const INTERVAL_MS: u64 = 1000;

    /// `Some(n)` when a line may be written at `now_ms`, `n` being how many were held
    /// back since the last one; `None` (and one more held back) otherwise.
    pub fn admit(&self, now_ms: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last - 1) >= Self::INTERVAL_MS;
        // Of concurrent failures that find the line due, one wins the exchange.
        if due
            && self
                .last
                .compare_exchange(
                    last,
                    now_ms.saturating_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// An error and its causes, `: `-separated, each once: a message that already ends
/// with its source's text (thiserror's `{source}`) does not repeat it, and one that
/// does not (hyper's) gets it appended.
pub struct Causes<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only failures get here, so building the text is not on the hot path.
        let mut text = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let more = cause.to_string();
            if !more.is_empty() && !text.ends_with(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            source = cause.source();
        }
        f.write_str(&text)
    }
}

/// What the access log line needs beyond the request's counters: kept, in one heap
/// block, only when `listen.access_log` is on, so the figures only the line shows
/// cost a request nothing otherwise.
pub(crate) struct AccessLog {
    method: Method,
    path: String,
    peer: SocketAddr,
    /// The client's address (DESIGN §10): the peer's IP, or what trusted proxies said.
    client: IpAddr,
    source: AssignSource,
    request_id: String,
    /// The authority of the endpoint the request went to, if one was chosen.
    pub(crate) endpoint: Option<Arc<str>>,
    /// Why the upstream failed, if it did.
    pub(crate) error: Option<UpstreamErrorKind>,
    /// Request body bytes forwarded upstream: counted here by cohort's own engine...
    pub(crate) request_body_bytes: u64,
    /// ... and as hyper's upstream connection takes them on hyper's.
    pub(crate) progress: Option<Arc<Progress>>,
    /// Response body bytes sent to the client (cohort's own error text included).
    pub(crate) response_body_bytes: u64,
}

impl AccessLog {
    pub(crate) fn new(
        method: Method,
        path: &str,
        peer: SocketAddr,
        client: IpAddr,
        source: AssignSource,
        request_id: &[u8],
    ) -> AccessLog {
        AccessLog {
            method,
            path: path.to_owned(),
            peer,
            client,
            source,
            request_id: String::from_utf8_lossy(request_id).into_owned(),
            endpoint: None,
            error: None,
            request_body_bytes: 0,
            progress: None,
            response_body_bytes: 0,
        }
    }

    /// Writes the line (JSON, target [`ACCESS_LOG_TARGET`]) for a request that ended
    /// with `status` after `elapsed`.
    pub(crate) fn write(&self, route: &str, variant: Variant, status: u16, elapsed: Duration) {
        let request_body_bytes =
            self.request_body_bytes + self.progress.as_ref().map_or(0, |p| p.body_bytes());
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            route,
            variant = variant.as_str(),
            source = self.source.as_str(),
            method = self.method.as_str(),
            path = self.path.as_str(),
            status,
            duration_ms = millis(elapsed),
            peer = %self.peer,
            client = %canonical_ip(self.client),
            endpoint = self.endpoint.as_deref(),
            error_kind = self.error.map(UpstreamErrorKind::as_str),
            request_body_bytes,
            response_body_bytes = self.response_body_bytes,
            request_id = self.request_id.as_str(),
        );
    }
}

/// Milliseconds with at most three decimals (whole microseconds): a float of whole
/// microseconds divided by 1000 prints as its shortest round-trip form, which has
/// at most three decimals.
pub fn millis(elapsed: Duration) -> f64 {
    // Microseconds fit a f64 exactly for 285 years.
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::UpstreamError;

    #[test]
    fn one_line_per_interval_then_the_count_held_back() {
        let gate = WarnGate::default();
        assert_eq!(gate.admit(0), Some(0));
        for t in [1, 10, 500, 999] {
            assert_eq!(gate.admit(t), None, "at {t} ms");
        }
        assert_eq!(gate.admit(1000), Some(4));
        assert_eq!(gate.admit(1999), None);
        assert_eq!(gate.admit(5000), Some(1));
        assert_eq!(gate.admit(6500), Some(0));
    }

    #[test]
    fn a_clock_going_nowhere_does_not_open_the_gate() {
        let gate = WarnGate::default();
        assert_eq!(gate.admit(7), Some(0));
        assert_eq!(gate.admit(3), None);
        assert_eq!(gate.admit(u64::MAX), Some(1));
        assert_eq!(gate.admit(u64::MAX), None);
    }

    #[test]
    fn milliseconds_have_at_most_three_decimals() {
        for micros in [0u64, 1, 999, 1234, 16_789, 123_456_789, 1_000_001] {
            let text = millis(Duration::from_nanos(micros * 1000 + 417)).to_string();
            let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
            assert!(decimals <= 3, "{micros} µs → {text}");
        }
        assert_eq!(millis(Duration::from_micros(1234)), 1.234);
        let json = serde_json::to_string(&millis(Duration::from_nanos(16_789_123))).unwrap();
        assert_eq!(json, "16.789");
    }

    #[derive(Debug)]
    struct Plain(&'static str, Option<Box<Plain>>);

    impl fmt::Display for Plain {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Plain {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn causes_are_listed_once_each() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = UpstreamError::Connect {
            authority: "127.0.0.1:9".into(),
            source: io,
        };
        assert_eq!(
            Causes(&e).to_string(),
            "connecting to 127.0.0.1:9 failed: refused"
        );
        let hidden = Plain("connection error", Some(Box::new(Plain("reset", None))));
        assert_eq!(Causes(&hidden).to_string(), "connection error: reset");
    }
}
