//! Metric names, HELP texts and pre-resolved handles.
//!
//! Each running instance owns its Prometheus recorder (built, never installed
//! globally), so tests can run several instances in one process. Label sets are
//! resolved once per (route, variant) when a snapshot is built, never per request;
//! label values come from config and enums, never from request data.
//!
//! Counters are registered at 0 for every label value known at start (DESIGN §5), so
//! `rate()` and `absent()` alerts work on a fresh instance; only
//! `cohort_requests_total` waits for a status code to occur.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::cohort::Variant;
use crate::metrics::window::{HistorySlot, Window, WindowStats, WINDOW_SECONDS};
use crate::request::log::WarnGate;
use crate::rollout::{Figures, Reason, RolloutState, Verdict};
use crate::router::AssignSource;

mod process;
pub(crate) mod window;

pub const REQUESTS_TOTAL: &str = "cohort_requests_total";
pub const REQUEST_DURATION: &str = "cohort_request_duration_seconds";
pub const UPSTREAM_ERRORS_TOTAL: &str = "cohort_upstream_errors_total";
pub const UPSTREAM_RETRIES_TOTAL: &str = "cohort_upstream_retries_total";
pub const UNROUTED_REQUESTS_TOTAL: &str = "cohort_unrouted_requests_total";
pub const IN_FLIGHT_REQUESTS: &str = "cohort_in_flight_requests";
pub const CANARY_WEIGHT_RATIO: &str = "cohort_canary_weight_ratio";
pub const ASSIGNMENTS_TOTAL: &str = "cohort_assignments_total";
pub const CONFIG_RELOADS_TOTAL: &str = "cohort_config_reloads_total";
pub const CONFIG_GENERATION: &str = "cohort_config_generation";
pub const TLS_HANDSHAKE_ERRORS_TOTAL: &str = "cohort_tls_handshake_errors_total";
pub const ROLLBACKS_TOTAL: &str = "cohort_rollbacks_total";
pub const ROLLOUT_STEP: &str = "cohort_rollout_step";
pub const GUARD_ERROR_RATIO: &str = "cohort_guard_error_ratio";
pub const GUARD_P99_SECONDS: &str = "cohort_guard_p99_seconds";
pub const GUARD_VERDICT: &str = "cohort_guard_verdict";
pub const GUARD_EVIDENCE: &str = "cohort_guard_evidence";
pub use cohort_core::rollout::fleet::{GUARD_DURATION, ROLLOUT_INFO, ROLLOUT_STATE};
pub const GUARD_SOURCE_ERRORS_TOTAL: &str = "cohort_guard_source_errors_total";
/// The signals `cohort_guard_evidence` is labelled with (DESIGN §12).
pub const EVIDENCE_SIGNALS: [&str; 2] = ["errors", "latency"];
pub const BUILD_INFO: &str = "cohort_build_info";
pub const CONNECTIONS_OPEN: &str = "cohort_connections_open";
pub const CONNECTIONS_REJECTED_TOTAL: &str = "cohort_connections_rejected_total";

/// The statuses cohort answers without a route (DESIGN §1, §10): exported at 0 from the
/// start. Others (a 405 hyper might send one day) still count, from their first.
pub const UNROUTED_STATUSES: [u16; 6] = [400, 404, 408, 413, 414, 431];

/// How often buffered histogram samples are folded into their buckets; at 25,000
/// requests a second a quarter second of samples is about 50 KB.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

pub use cohort_core::histogram::DURATION_BUCKETS;

static METADATA: Metadata<'static> = Metadata::new("cohort", Level::INFO, Some("cohort"));

/// Lowest and highest status code a response can carry (the `http` crate's range).
const STATUS_MIN: u16 = 100;
const STATUS_MAX: u16 = 999;

/// Why talking to an upstream failed: the `kind` label of `cohort_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Reset,
    Tls,
    Protocol,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 5] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Reset,
        UpstreamErrorKind::Tls,
        UpstreamErrorKind::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Tls => "tls",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One instance's recorder plus the handles that do not depend on routes.
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    unrouted: StatusCounters,
    reloads_ok: Counter,
    reloads_error: Counter,
    generation: Gauge,
    tls_handshake_errors: Counter,
    /// Open client connections, counted for `listen.max_connections` across workers.
    connections: AtomicUsize,
    connections_open: Gauge,
    connections_rejected: Counter,
    /// The `process_*` families, read when `/metrics` is rendered.
    process: process::Collector,
    /// One-minute windows per (route, variant), each with its 15-minute history; they
    /// outlive snapshots so a reload does not reset the figures or the charts.
    windows: Mutex<HashMap<(String, Variant), Arc<Window>>>,
    /// The upstream-failure warnings' gates per (route, variant), one per error kind;
    /// kept across snapshots too, so a reload during an outage neither adds a line nor
    /// loses the count held back.
    warn_gates: Mutex<HashMap<(String, Variant), Arc<WarnGates>>>,
    /// `cohort_rollout_info` per rollout identity ever run: 1 for those in the config
    /// in force, 0 for the rest (fleet queries match `== 1`).
    rollout_info: Mutex<HashMap<[String; 3], Gauge>>,
    /// Lanes of each window: one per proxy worker.
    lanes: usize,
    clock: Clock,
}

/// Whole seconds since the instance started: the clock of the windows.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn now(&self) -> u64 {
        self.0.elapsed().as_secs()
    }

    /// Milliseconds since the instance started (the upstream-failure warnings' clock).
    pub fn millis(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The wall time of `second` on this clock, given the wall time now: how the
    /// history's slots are placed next to wall-clock events.
    pub fn wall_at(
        &self,
        second: u64,
        wall_now: crate::rollout::UnixMillis,
    ) -> crate::rollout::UnixMillis {
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let started = wall_now.saturating_sub(millis(self.0.elapsed()));
        started.saturating_add(millis(Duration::from_secs(second)))
    }
}

impl Metrics {
    /// Metrics whose windows have one lane (a single proxy worker, or tests).
    pub fn new() -> Metrics {
        Metrics::with_lanes(1)
    }

    /// Metrics whose one-minute windows have a lane per proxy worker.
    pub fn with_lanes(workers: usize) -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(REQUEST_DURATION.to_owned()),
                &DURATION_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(GUARD_DURATION.to_owned()),
                    &DURATION_BUCKETS,
                )
            })
            .map(PrometheusBuilder::build_recorder)
            // The bucket list is a non-empty constant, so this branch is never taken;
            // falling back keeps the constructor infallible without an unwrap.
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        describe(&recorder);
        let handle = recorder.handle();
        let recorder = Arc::new(recorder);
        let reload = |result: &'static str| {
            recorder.register_counter(
                &Key::from_parts(CONFIG_RELOADS_TOTAL, vec![Label::new("result", result)]),
                &METADATA,
            )
        };
        recorder
            .register_gauge(
                &Key::from_parts(
                    BUILD_INFO,
                    vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
                ),
                &METADATA,
            )
            .set(1.0);
        let unrouted = StatusCounters::new(recorder.clone(), UNROUTED_REQUESTS_TOTAL, vec![]);
        for status in UNROUTED_STATUSES {
            unrouted.register(status);
        }
        // Every series without request labels is registered up front, so dashboards
        // see it (at 0) before the first event.
        Metrics {
            unrouted,
            reloads_ok: reload("ok"),
            reloads_error: reload("error"),
            generation: recorder
                .register_gauge(&Key::from_static_name(CONFIG_GENERATION), &METADATA),
            tls_handshake_errors: recorder.register_counter(
                &Key::from_static_name(TLS_HANDSHAKE_ERRORS_TOTAL),
                &METADATA,
            ),
            connections: AtomicUsize::new(0),
            connections_open: recorder
                .register_gauge(&Key::from_static_name(CONNECTIONS_OPEN), &METADATA),
            connections_rejected: recorder.register_counter(
                &Key::from_static_name(CONNECTIONS_REJECTED_TOTAL),
                &METADATA,
            ),
            process: process::Collector::new(),
            recorder,
            handle,
            windows: Mutex::new(HashMap::new()),
            warn_gates: Mutex::new(HashMap::new()),
            rollout_info: Mutex::new(HashMap::new()),
            lanes: workers,
            clock: Clock(Instant::now()),
        }
    }

    /// The Prometheus text exposition of everything recorded so far, and the process
    /// figures as they are now.
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        self.process.render(&mut text);
        text
    }

    /// Housekeeping the exporter needs now and then (histogram buffers).
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    pub fn unrouted(&self, status: u16) {
        self.unrouted.increment(status);
    }

    pub fn tls_handshake_error(&self) {
        self.tls_handshake_errors.increment(1);
    }

    /// Counts a new client connection in, unless `max` are open already: then it is
    /// counted in `cohort_connections_rejected_total` and `false` says close it. Each
    /// `true` is matched by one [`Metrics::close_connection`].
    pub fn open_connection(&self, max: usize) -> bool {
        if self.connections.fetch_add(1, Ordering::Relaxed) >= max {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            self.connections_rejected.increment(1);
            return false;
        }
        self.connections_open.increment(1.0);
        true
    }

    /// Counts a client connection that [`Metrics::open_connection`] let in out.
    pub fn close_connection(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
        self.connections_open.decrement(1.0);
    }

    pub fn reload(&self, ok: bool) {
        if ok {
            self.reloads_ok.increment(1);
        } else {
            self.reloads_error.increment(1);
        }
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn set_generation(&self, generation: u64) {
        self.generation.set(generation as f64);
    }

    /// `cohort_rollout_info{route,salt,start}`: 1 for each identity in `current`
    /// (route, salt, rollout `start` as written or empty), 0 for every one set before
    /// and gone now, so a replica that moved to a new rollout stops lending the old one
    /// its counts at its next scrape.
    pub fn rollout_identities(&self, current: &[[String; 3]]) {
        let mut info = self
            .rollout_info
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for identity in current {
            info.entry(identity.clone()).or_insert_with(|| {
                let [route, salt, start] = identity.clone();
                self.recorder.register_gauge(
                    &Key::from_parts(
                        ROLLOUT_INFO,
                        vec![
                            Label::new("route", route),
                            Label::new("salt", salt),
                            Label::new("start", start),
                        ],
                    ),
                    &METADATA,
                )
            });
        }
        for (identity, gauge) in info.iter() {
            gauge.set(if current.contains(identity) { 1.0 } else { 0.0 });
        }
    }

    /// Handles for one route; built when a snapshot is built. Every route gets its
    /// rollback counters and its one-hot state (a manual rollback works on any route,
    /// and `cohort_rollout_state{state="rolled_back"}` is what alerts watch); `guarded`
    /// routes (with a rollout or a guard) also get the step and guard series.
    /// `fleet` routes (a guard with a Prometheus source) also export what the guard
    /// judges, for the other replicas to read.
    pub fn route(&self, route: &str, guarded: bool, fleet: bool) -> RouteMetrics {
        let route_label = || Label::new("route", route.to_owned());
        let variant = |v: Variant| {
            let window = self
                .windows
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry((route.to_owned(), v))
                .or_insert_with(|| Arc::new(Window::with_history(WINDOW_SECONDS, self.lanes)))
                .clone();
            let warn_gates = self
                .warn_gates
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry((route.to_owned(), v))
                .or_default()
                .clone();
            VariantMetrics::new(&self.recorder, route, v, window, warn_gates, self.clock)
        };
        RouteMetrics {
            weight: self.recorder.register_gauge(
                &Key::from_parts(CANARY_WEIGHT_RATIO, vec![route_label()]),
                &METADATA,
            ),
            variants: [variant(Variant::Stable), variant(Variant::Canary)],
            rollbacks: Reason::ALL.map(|r| {
                self.recorder.register_counter(
                    &Key::from_parts(
                        ROLLBACKS_TOTAL,
                        vec![route_label(), Label::new("reason", r.as_str())],
                    ),
                    &METADATA,
                )
            }),
            states: RolloutState::ALL.map(|s| {
                self.recorder.register_gauge(
                    &Key::from_parts(
                        ROLLOUT_STATE,
                        vec![route_label(), Label::new("state", s.as_str())],
                    ),
                    &METADATA,
                )
            }),
            guarded: guarded.then(|| self.guarded(route)),
            fleet: fleet.then(|| self.fleet(route)),
        }
    }

    fn fleet(&self, route: &str) -> FleetMetrics {
        let duration = |variant: Variant, outcome: &'static str| {
            self.recorder.register_histogram(
                &Key::from_parts(
                    GUARD_DURATION,
                    vec![
                        Label::new("route", route.to_owned()),
                        Label::new("variant", variant.as_str()),
                        Label::new("outcome", outcome),
                    ],
                ),
                &METADATA,
            )
        };
        FleetMetrics {
            judged: Variant::ALL.map(|v| [duration(v, "ok"), duration(v, "error")]),
            source_errors: self.recorder.register_counter(
                &Key::from_parts(
                    GUARD_SOURCE_ERRORS_TOTAL,
                    vec![Label::new("route", route.to_owned())],
                ),
                &METADATA,
            ),
        }
    }

    fn guarded(&self, route: &str) -> GuardedMetrics {
        let labels = |extra: Option<(&'static str, &'static str)>| {
            let mut labels = vec![Label::new("route", route.to_owned())];
            labels.extend(extra.map(|(k, v)| Label::new(k, v)));
            labels
        };
        let gauge = |name: &'static str, extra| {
            self.recorder
                .register_gauge(&Key::from_parts(name, labels(extra)), &METADATA)
        };
        GuardedMetrics {
            step: gauge(ROLLOUT_STEP, None),
            error_ratio: Variant::ALL
                .map(|v| gauge(GUARD_ERROR_RATIO, Some(("variant", v.as_str())))),
            p99: Variant::ALL.map(|v| gauge(GUARD_P99_SECONDS, Some(("variant", v.as_str())))),
            verdict: Verdict::LABELS.map(|v| gauge(GUARD_VERDICT, Some(("verdict", v)))),
            evidence: EVIDENCE_SIGNALS.map(|s| gauge(GUARD_EVIDENCE, Some(("signal", s)))),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn describe(r: &PrometheusRecorder) {
    let counter = |name: &'static str, help: &'static str| {
        r.describe_counter(KeyName::from_const_str(name), None, help.into())
    };
    let gauge = |name: &'static str, help: &'static str| {
        r.describe_gauge(KeyName::from_const_str(name), None, help.into())
    };
    counter(
        REQUESTS_TOTAL,
        "Responses sent for routed requests, by route, variant and status code (cohort's own 502/504 included; 499 = client left before response headers).",
    );
    r.describe_histogram(
        KeyName::from_const_str(REQUEST_DURATION),
        Some(metrics::Unit::Seconds),
        "Time from the request head arriving to the response body ending, by route and variant."
            .into(),
    );
    counter(
        UPSTREAM_ERRORS_TOTAL,
        "Failures talking to an upstream, by route, variant and kind (connect, timeout, reset, tls, protocol).",
    );
    counter(
        UPSTREAM_RETRIES_TOTAL,
        "Failed upstream attempts retried on another endpoint of the same variant, by route, variant and the failure's kind; the request itself may have succeeded.",
    );
    counter(
        UNROUTED_REQUESTS_TOTAL,
        "Requests answered without a route, by status code (404 no route; 400, 408, 413, 414, 431 for a request that could not be read or was refused before routing).",
    );
    gauge(
        IN_FLIGHT_REQUESTS,
        "Requests currently being proxied, by route and variant.",
    );
    gauge(
        CANARY_WEIGHT_RATIO,
        "Share of cohorts currently assigned to the canary, by route (0..1).",
    );
    counter(
        ASSIGNMENTS_TOTAL,
        "Variant assignments, by route, variant and where the cohort key came from (header, cookie, ip, random, override).",
    );
    counter(
        CONFIG_RELOADS_TOTAL,
        "Config reload attempts, by result (ok, error).",
    );
    gauge(
        CONFIG_GENERATION,
        "Generation of the config in force; increases with every applied change.",
    );
    counter(
        TLS_HANDSHAKE_ERRORS_TOTAL,
        "Failed TLS handshakes with downstream clients.",
    );
    gauge(
        CONNECTIONS_OPEN,
        "Open client connections on the proxy listener.",
    );
    counter(
        CONNECTIONS_REJECTED_TOTAL,
        "Client connections closed at once because listen.max_connections were open.",
    );
    gauge(
        BUILD_INFO,
        "Always 1; the version label names the running cohort's version.",
    );
    counter(
        ROLLBACKS_TOTAL,
        "Canary rollbacks, by route and reason (error_ratio, error_ratio_vs_stable, p99, manual, sequential_errors, sequential_latency; adopted = another replica of the same rollout had rolled back).",
    );
    gauge(
        ROLLOUT_INFO,
        "1 for the rollout identity (route, salt, start; start empty without a rollout) a route runs now, 0 for identities it ran before.",
    );
    r.describe_histogram(
        KeyName::from_const_str(GUARD_DURATION),
        Some(metrics::Unit::Seconds),
        "Requests a fleet guard judges (forced ones excluded), by route, variant and outcome (error = 5xx or cut after headers); what every replica reads from Prometheus.".into(),
    );
    counter(
        GUARD_SOURCE_ERRORS_TOTAL,
        "Fleet guard reads from Prometheus that failed, by route; the guard judged local counts instead.",
    );
    gauge(
        ROLLOUT_STEP,
        "0-based index of the rollout step in force, by route (-1 before start).",
    );
    gauge(
        ROLLOUT_STATE,
        "Rollout state by route: 1 for the state in force (pending, ramping, holding, complete, rolled_back), 0 for the others.",
    );
    gauge(
        GUARD_ERROR_RATIO,
        "Error ratio the guard judged over its window, by route and variant.",
    );
    gauge(
        GUARD_P99_SECONDS,
        "p99 latency the guard judged over its window, by route and variant (interpolated from the histogram buckets).",
    );
    gauge(
        GUARD_VERDICT,
        "The guard's verdict by route: 1 for the one in force (pass, fail, inconclusive), 0 for the others; all 0 before the first judgement.",
    );
    gauge(
        GUARD_EVIDENCE,
        "The guard's evidence against its threshold by route and signal (errors, latency); 1 or more fails. Sequential: ln E / ln(1/alpha), ln(2/alpha) with latency_over; threshold: observed / limit.",
    );
}

/// Handles of one route.
pub struct RouteMetrics {
    pub weight: Gauge,
    variants: [VariantMetrics; 2],
    /// `cohort_rollbacks_total`, one per reason in `Reason::ALL`'s order.
    rollbacks: [Counter; Reason::ALL.len()],
    /// One-hot `cohort_rollout_state`, in `RolloutState::ALL`'s order: a plain route is
    /// `complete`, or `rolled_back` after a manual rollback.
    states: [Gauge; RolloutState::ALL.len()],
    guarded: Option<GuardedMetrics>,
    fleet: Option<FleetMetrics>,
}

/// The series of a guard with a Prometheus source (DESIGN §12).
struct FleetMetrics {
    /// `cohort_guard_duration_seconds` by [variant][ok, error].
    judged: [[Histogram; 2]; 2],
    source_errors: Counter,
}

/// Rollout and guard series of one route (DESIGN §7).
struct GuardedMetrics {
    step: Gauge,
    error_ratio: [Gauge; 2],
    p99: [Gauge; 2],
    /// One-hot `cohort_guard_verdict`, in `Verdict::LABELS`' order.
    verdict: [Gauge; 3],
    /// `cohort_guard_evidence`, in `EVIDENCE_SIGNALS`' order.
    evidence: [Gauge; 2],
}

impl RouteMetrics {
    pub fn variant(&self, v: Variant) -> &VariantMetrics {
        &self.variants[v.index()]
    }

    /// The one-hot `cohort_rollout_state` and, on guarded routes, `cohort_rollout_step`
    /// (−1 before start).
    pub fn rollout(&self, step: Option<usize>, state: RolloutState) {
        for (gauge, s) in self.states.iter().zip(RolloutState::ALL) {
            gauge.set(if s == state { 1.0 } else { 0.0 });
        }
        if let Some(g) = &self.guarded {
            g.step.set(step.map_or(-1.0, |s| s as f64));
        }
    }

    /// One request the guard judges, for the fleet (routes with a fleet guard only).
    pub fn judged(&self, variant: Variant, error: bool, seconds: f64) {
        if let Some(f) = &self.fleet {
            f.judged[variant.index()][usize::from(error)].record(seconds);
        }
    }

    /// A fleet read that failed: the guard judged local counts.
    pub fn source_error(&self) {
        if let Some(f) = &self.fleet {
            f.source_errors.increment(1);
        }
    }

    pub fn rolled_back(&self, reason: Reason) {
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            self.rollbacks[i].increment(1);
        }
    }

    /// The figures the guard judged, as gauges (NaN-free: 0 without traffic).
    pub fn guard_figures(&self, canary: &Figures, stable: &Figures) {
        if let Some(g) = &self.guarded {
            for (v, f) in [(Variant::Stable, stable), (Variant::Canary, canary)] {
                g.error_ratio[v.index()].set(f.error_ratio.unwrap_or(0.0));
                g.p99[v.index()].set(f.p99_seconds.unwrap_or(0.0));
            }
        }
    }
}

impl RouteMetrics {
    /// The one-hot verdict (`pass`, `fail` or `inconclusive`) and each signal's evidence
    /// against its threshold (0 for a signal not judged).
    pub fn guard_verdict(&self, verdict: &str, errors: Option<f64>, latency: Option<f64>) {
        if let Some(g) = &self.guarded {
            for (gauge, label) in g.verdict.iter().zip(Verdict::LABELS) {
                gauge.set(if label == verdict { 1.0 } else { 0.0 });
            }
            for (gauge, value) in g.evidence.iter().zip([errors, latency]) {
                gauge.set(value.filter(|v| v.is_finite()).unwrap_or(0.0));
            }
        }
    }
}

/// A (route, variant)'s warning gates, by [`UpstreamErrorKind`].
type WarnGates = [WarnGate; 5];

/// Handles of one (route, variant).
pub struct VariantMetrics {
    requests: StatusCounters,
    duration: Histogram,
    upstream_errors: [Counter; 5],
    /// `cohort_upstream_retries_total`, by upstream error kind.
    retries: [Counter; 5],
    /// One per upstream error kind: at most one warning a second each.
    warn_gates: Arc<WarnGates>,
    in_flight: Gauge,
    assignments: [Counter; AssignSource::ALL.len()],
    window: Arc<Window>,
    clock: Clock,
}

impl VariantMetrics {
    fn new(
        recorder: &Arc<PrometheusRecorder>,
        route: &str,
        variant: Variant,
        window: Arc<Window>,
        warn_gates: Arc<WarnGates>,
        clock: Clock,
    ) -> VariantMetrics {
        let labels = |extra: Option<(&'static str, &'static str)>| {
            let mut labels = vec![
                Label::new("route", route.to_owned()),
                Label::new("variant", variant.as_str()),
            ];
            if let Some((k, v)) = extra {
                labels.push(Label::new(k, v));
            }
            labels
        };
        let counter = |name: &'static str, extra| {
            recorder.register_counter(&Key::from_parts(name, labels(Some(extra))), &METADATA)
        };
        VariantMetrics {
            requests: StatusCounters::new(recorder.clone(), REQUESTS_TOTAL, labels(None)),
            duration: recorder
                .register_histogram(&Key::from_parts(REQUEST_DURATION, labels(None)), &METADATA),
            upstream_errors: UpstreamErrorKind::ALL
                .map(|kind| counter(UPSTREAM_ERRORS_TOTAL, ("kind", kind.as_str()))),
            retries: UpstreamErrorKind::ALL
                .map(|kind| counter(UPSTREAM_RETRIES_TOTAL, ("kind", kind.as_str()))),
            warn_gates,
            in_flight: recorder.register_gauge(
                &Key::from_parts(IN_FLIGHT_REQUESTS, labels(None)),
                &METADATA,
            ),
            assignments: AssignSource::ALL
                .map(|source| counter(ASSIGNMENTS_TOTAL, ("source", source.as_str()))),
            window,
            clock,
        }
    }

    pub fn assigned(&self, source: AssignSource) {
        self.assignments[source.index()].increment(1);
    }

    pub fn started(&self) {
        self.in_flight.increment(1.0);
    }

    /// The response ended (or was cut, or the client left): count it once.
    /// `cut` says the upstream broke the body off after its headers.
    pub fn finished(&self, status: u16, elapsed: Duration, cut: bool) {
        let seconds = elapsed.as_secs_f64();
        self.in_flight.decrement(1.0);
        self.requests.increment(status);
        self.duration.record(seconds);
        self.window
            .record(self.clock.now(), cut || status >= 500, seconds);
    }

    /// Whole seconds on the clock the windows run on.
    pub fn clock_now(&self) -> u64 {
        self.clock.now()
    }

    /// Figures over the last minute.
    pub fn window_stats(&self) -> WindowStats {
        self.window.stats(self.clock.now())
    }

    /// The last 15 minutes in 15-second slots, oldest first, ending at clock time `now`.
    pub fn history(&self, now: u64) -> Vec<HistorySlot> {
        self.window.history(now)
    }

    /// A failed attempt the retry on another endpoint took over.
    pub fn retried(&self, kind: UpstreamErrorKind) {
        self.retries[kind.index()].increment(1);
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind.index()].increment(1);
    }

    /// The gate of the upstream-failure warnings of `kind` (`crate::request::log`).
    pub fn warn_gate(&self, kind: UpstreamErrorKind) -> &WarnGate {
        &self.warn_gates[kind.index()]
    }

    /// Milliseconds on the clock the windows run on.
    pub fn clock_millis(&self) -> u64 {
        self.clock.millis()
    }
}

/// Counters keyed by status code, created on first use (a status code is bounded,
/// 100..=999, so this never grows without limit).
struct StatusCounters {
    recorder: Arc<PrometheusRecorder>,
    name: &'static str,
    labels: Vec<Label>,
    slots: Box<[OnceLock<Counter>]>,
}

impl StatusCounters {
    fn new(recorder: Arc<PrometheusRecorder>, name: &'static str, labels: Vec<Label>) -> Self {
        let slots = (STATUS_MIN..=STATUS_MAX).map(|_| OnceLock::new()).collect();
        StatusCounters {
            recorder,
            name,
            labels,
            slots,
        }
    }

    fn increment(&self, status: u16) {
        self.register(status).increment(1);
    }

    /// The counter of `status`, registered (at 0) on first use.
    fn register(&self, status: u16) -> &Counter {
        let status = status.clamp(STATUS_MIN, STATUS_MAX);
        let slot = &self.slots[usize::from(status - STATUS_MIN)];
        slot.get_or_init(|| {
            let mut labels = self.labels.clone();
            labels.push(Label::new("status", status.to_string()));
            self.recorder
                .register_counter(&Key::from_parts(self.name, labels), &METADATA)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warning_gates_outlive_a_snapshot() {
        let metrics = Metrics::new();
        let kind = UpstreamErrorKind::Connect;
        let before = metrics.route("r", false, false);
        let gate = before.variant(Variant::Canary).warn_gate(kind);
        assert_eq!(gate.admit(0), Some(0));
        assert_eq!(gate.admit(10), None);
        // A reload builds the route's handles again: same gate, same count held back.
        let after = metrics.route("r", false, false);
        let gate = after.variant(Variant::Canary).warn_gate(kind);
        assert_eq!(gate.admit(20), None);
        assert_eq!(gate.admit(1000), Some(2));
        // Other variants, kinds and routes have their own.
        let other = after.variant(Variant::Stable).warn_gate(kind);
        assert_eq!(other.admit(30), Some(0));
        let timeout = after
            .variant(Variant::Canary)
            .warn_gate(UpstreamErrorKind::Timeout);
        assert_eq!(timeout.admit(40), Some(0));
        let elsewhere = metrics.route("s", false, false);
        assert_eq!(
            elsewhere.variant(Variant::Canary).warn_gate(kind).admit(50),
            Some(0)
        );
    }
}
