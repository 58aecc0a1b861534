//! The one exit point of a proxied request: whatever way it ends (a response body
//! read to its end or cut, cohort's own 502/504, a tunnel's 101, a client gone before
//! any response), it is recorded exactly once, from its [`Completion`]: the metrics
//! (DESIGN §1.8), the guard's window, the access log line; an upstream failure on the
//! way also counts its kind and writes the rate-limited warning.

use std::sync::Arc;
use std::time::Instant;

use crate::cohort::Variant;
use crate::metrics::VariantMetrics;
use crate::request::errors::{self, ErrorAnswer};
use crate::request::log::{AccessLog, Causes};
use crate::router::{AssignSource, Decision};
use crate::runtime::snapshot::Snapshot;
use crate::upstream::UpstreamError;

/// Everything needed to count one request once.
pub(crate) struct Completion {
    snap: Arc<Snapshot>,
    route: usize,
    variant: Variant,
    source: AssignSource,
    /// 499 until a response exists: the client left first.
    pub(crate) status: u16,
    start: Instant,
    /// The upstream cut the response body after its headers.
    cut: bool,
    access_log: Option<Box<AccessLog>>,
}

impl Completion {
    pub(crate) fn new(
        snap: Arc<Snapshot>,
        route: usize,
        decision: &Decision,
        start: Instant,
        access_log: Option<Box<AccessLog>>,
    ) -> Completion {
        Completion {
            snap,
            route,
            variant: decision.variant,
            source: decision.source,
            status: 499,
            start,
            cut: false,
            access_log,
        }
    }

    /// The access log line's figures, when the request writes one.
    pub(crate) fn log(&mut self) -> Option<&mut AccessLog> {
        self.access_log.as_deref_mut()
    }

    /// No response from the upstream: counts the failure (metrics, the warning, the
    /// log's kind) and gives the answer cohort sends instead, whose status the request
    /// is recorded with.
    pub(crate) fn failed(&mut self, error: &UpstreamError) -> ErrorAnswer {
        let answer = errors::answer(error);
        self.upstream_failed(error);
        self.status = answer.status.as_u16();
        answer
    }

    /// The upstream broke the response body off after its headers: the client's
    /// response is cut too, and the request keeps the status it was sent with.
    pub(crate) fn cut(&mut self, error: &UpstreamError) {
        self.cut = true;
        self.upstream_failed(error);
    }

    /// Counts the failure of an attempt the policy's retry on another endpoint takes
    /// over: `cohort_upstream_retries_total` and the warning, so a dead endpoint shows
    /// while its siblings answer for it. Not an upstream error of the request
    /// (`cohort_upstream_errors_total` counts the cause of a response cohort could not
    /// get, DESIGN §1.8); the request's status and log line are the retry's.
    pub(crate) fn attempt_failed(&self, error: &UpstreamError) {
        let (route, state) = self.snap.route(self.route);
        let metrics = state.metrics.variant(self.variant);
        upstream_failed(&route.name, self.variant, metrics, error, true);
    }

    /// Counts an upstream failure (metrics, the rate-limited warning) and keeps its
    /// kind for the access log.
    fn upstream_failed(&mut self, error: &UpstreamError) {
        let (route, state) = self.snap.route(self.route);
        let metrics = state.metrics.variant(self.variant);
        upstream_failed(&route.name, self.variant, metrics, error, false);
        if let Some(log) = self.log() {
            log.error = Some(error.kind());
        }
    }

    /// Records the request: metrics and guard window (`RouteState::finished`), then
    /// the access log line.
    pub(crate) fn finish(self) {
        let elapsed = self.start.elapsed();
        let (route, state) = self.snap.route(self.route);
        state.finished(self.variant, self.source, self.status, elapsed, self.cut);
        if let Some(log) = &self.access_log {
            log.write(&route.name, self.variant, self.status, elapsed);
        }
    }
}

/// Counts a request as 499 if it is dropped before a response exists (the client
/// went away while cohort waited for the upstream).
pub(crate) struct Pending(Option<Completion>);

impl Pending {
    pub(crate) fn new(completion: Completion) -> Pending {
        Pending(Some(completion))
    }

    /// See [`Completion::attempt_failed`].
    pub(crate) fn attempt_failed(&self, error: &UpstreamError) {
        if let Some(completion) = &self.0 {
            completion.attempt_failed(error);
        }
    }

    pub(crate) fn take(&mut self) -> Completion {
        // `take` is called once, on the only path that leaves with a response.
        match self.0.take() {
            Some(c) => c,
            None => unreachable!("a request's completion is taken once"),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(completion) = self.0.take() {
            completion.finish();
        }
    }
}

/// The tracing target of the upstream-failure warning (README, Logs).
pub(crate) const UPSTREAM_WARNING_TARGET: &str = "cohort::request_log";

/// Counts an upstream failure and, unless one was written for the same (route,
/// variant, kind) less than [`WarnGate::INTERVAL_MS`] ago, writes a WARN line naming
/// route, variant, endpoint, kind and cause. Written whatever `listen.access_log`
/// says: a refused connection is worth a line even where nobody logs requests. A line
/// after a quiet spell says how many were held back meanwhile (`suppressed`), so a
/// dead upstream under load costs one line a second, not one per request.
///
/// [`WarnGate::INTERVAL_MS`]: crate::request::log::WarnGate::INTERVAL_MS
fn upstream_failed(
    route: &str,
    variant: Variant,
    metrics: &VariantMetrics,
    error: &UpstreamError,
    retried: bool,
) {
    let kind = error.kind();
    if retried {
        metrics.retried(kind);
    } else {
        metrics.upstream_error(kind);
    }
    let Some(suppressed) = metrics.warn_gate(kind).admit(metrics.clock_millis()) else {
        return;
    };
    let message = if retried {
        "upstream attempt failed; retried on another endpoint of the variant"
    } else {
        "upstream request failed"
    };
    // Text through `Display` (`%`): the text format writes `kind=connect`, not
    // `kind="connect"`; JSON gets strings either way. The target is the one the README
    // documents and log filters name, whichever module writes the line.
    tracing::warn!(
        target: UPSTREAM_WARNING_TARGET,
        route = %route,
        variant = %variant.as_str(),
        endpoint = error.authority().map(tracing::field::display),
        kind = %kind.as_str(),
        suppressed = (suppressed > 0).then_some(suppressed),
        error = %Causes(error),
        "{message}"
    );
}
