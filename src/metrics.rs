//! Metric names, HELP texts and pre-resolved handles.
//!
//! Each running instance owns its Prometheus recorder (built, never installed
//! globally), so tests can run several instances in one process. Label sets are
//! resolved once per (route, variant) when a snapshot is built, never per request;
//! label values come from config and enums, never from request data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::cohort::Variant;
use crate::rollout::{Figures, Reason, RolloutState};
use crate::router::AssignSource;
use crate::window::{HistorySlot, Window, WindowStats, WINDOW_SECONDS};

pub const REQUESTS_TOTAL: &str = "cohort_requests_total";
pub const REQUEST_DURATION: &str = "cohort_request_duration_seconds";
pub const UPSTREAM_ERRORS_TOTAL: &str = "cohort_upstream_errors_total";
pub const UNROUTED_REQUESTS_TOTAL: &str = "cohort_unrouted_requests_total";
pub const IN_FLIGHT_REQUESTS: &str = "cohort_in_flight_requests";
pub const CANARY_WEIGHT_RATIO: &str = "cohort_canary_weight_ratio";
pub const ASSIGNMENTS_TOTAL: &str = "cohort_assignments_total";
pub const CONFIG_RELOADS_TOTAL: &str = "cohort_config_reloads_total";
pub const CONFIG_GENERATION: &str = "cohort_config_generation";
pub const TLS_HANDSHAKE_ERRORS_TOTAL: &str = "cohort_tls_handshake_errors_total";
pub const ROLLBACKS_TOTAL: &str = "cohort_rollbacks_total";
pub const ROLLOUT_STEP: &str = "cohort_rollout_step";
pub const ROLLOUT_STATE: &str = "cohort_rollout_state";
pub const GUARD_ERROR_RATIO: &str = "cohort_guard_error_ratio";
pub const GUARD_P99_SECONDS: &str = "cohort_guard_p99_seconds";

/// How often buffered histogram samples are folded into their buckets; at 25,000
/// requests a second a quarter second of samples is about 50 KB.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Histogram buckets of `cohort_request_duration_seconds`, in seconds (DESIGN §5).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

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
    /// One-minute windows per (route, variant), each with its 15-minute history; they
    /// outlive snapshots so a reload does not reset the figures or the charts.
    windows: Mutex<HashMap<(String, Variant), Arc<Window>>>,
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
        // Every series without request labels is registered up front, so dashboards
        // see it (at 0) before the first event.
        Metrics {
            unrouted: StatusCounters::new(recorder.clone(), UNROUTED_REQUESTS_TOTAL, vec![]),
            reloads_ok: reload("ok"),
            reloads_error: reload("error"),
            generation: recorder
                .register_gauge(&Key::from_static_name(CONFIG_GENERATION), &METADATA),
            tls_handshake_errors: recorder.register_counter(
                &Key::from_static_name(TLS_HANDSHAKE_ERRORS_TOTAL),
                &METADATA,
            ),
            recorder,
            handle,
            windows: Mutex::new(HashMap::new()),
            lanes: workers,
            clock: Clock(Instant::now()),
        }
    }

    /// The Prometheus text exposition of everything recorded so far.
    pub fn render(&self) -> String {
        self.handle.render()
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

    /// Handles for one route; built when a snapshot is built. `guarded` routes (with a
    /// rollout or a guard) also get the rollout and guard series.
    pub fn route(&self, route: &str, guarded: bool) -> RouteMetrics {
        let route_label = || Label::new("route", route.to_owned());
        let variant = |v: Variant| {
            let window = self
                .windows
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry((route.to_owned(), v))
                .or_insert_with(|| Arc::new(Window::with_history(WINDOW_SECONDS, self.lanes)))
                .clone();
            VariantMetrics::new(&self.recorder, route, v, window, self.clock)
        };
        RouteMetrics {
            weight: self.recorder.register_gauge(
                &Key::from_parts(CANARY_WEIGHT_RATIO, vec![route_label()]),
                &METADATA,
            ),
            variants: [variant(Variant::Stable), variant(Variant::Canary)],
            guarded: guarded.then(|| self.guarded(route)),
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
            rollbacks: Reason::ALL.map(|r| {
                self.recorder.register_counter(
                    &Key::from_parts(ROLLBACKS_TOTAL, labels(Some(("reason", r.as_str())))),
                    &METADATA,
                )
            }),
            step: gauge(ROLLOUT_STEP, None),
            states: RolloutState::ALL.map(|s| gauge(ROLLOUT_STATE, Some(("state", s.as_str())))),
            error_ratio: Variant::ALL
                .map(|v| gauge(GUARD_ERROR_RATIO, Some(("variant", v.as_str())))),
            p99: Variant::ALL.map(|v| gauge(GUARD_P99_SECONDS, Some(("variant", v.as_str())))),
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
        UNROUTED_REQUESTS_TOTAL,
        "Requests answered without a route (404 no route, 400 malformed), by status code.",
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
    counter(
        ROLLBACKS_TOTAL,
        "Canary rollbacks, by route and reason (error_ratio, error_ratio_vs_stable, p99, manual).",
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
}

/// Handles of one route.
pub struct RouteMetrics {
    pub weight: Gauge,
    variants: [VariantMetrics; 2],
    guarded: Option<GuardedMetrics>,
}

/// Rollout and guard series of one route (DESIGN §7).
struct GuardedMetrics {
    rollbacks: [Counter; 4],
    step: Gauge,
    states: [Gauge; 5],
    error_ratio: [Gauge; 2],
    p99: [Gauge; 2],
}

impl RouteMetrics {
    pub fn variant(&self, v: Variant) -> &VariantMetrics {
        &self.variants[v.index()]
    }

    /// `cohort_rollout_step` (−1 before start) and the one-hot `cohort_rollout_state`.
    pub fn rollout(&self, step: Option<usize>, state: RolloutState) {
        if let Some(g) = &self.guarded {
            g.step.set(step.map_or(-1.0, |s| s as f64));
            for (gauge, s) in g.states.iter().zip(RolloutState::ALL) {
                gauge.set(if s == state { 1.0 } else { 0.0 });
            }
        }
    }

    pub fn rolled_back(&self, reason: Reason) {
        if let Some(g) = &self.guarded {
            if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
                g.rollbacks[i].increment(1);
            }
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

/// Handles of one (route, variant).
pub struct VariantMetrics {
    requests: StatusCounters,
    duration: Histogram,
    upstream_errors: [Counter; 5],
    in_flight: Gauge,
    assignments: [Counter; 5],
    window: Arc<Window>,
    clock: Clock,
}

impl VariantMetrics {
    fn new(
        recorder: &Arc<PrometheusRecorder>,
        route: &str,
        variant: Variant,
        window: Arc<Window>,
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

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind.index()].increment(1);
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
        let status = status.clamp(STATUS_MIN, STATUS_MAX);
        let slot = &self.slots[usize::from(status - STATUS_MIN)];
        slot.get_or_init(|| {
            let mut labels = self.labels.clone();
            labels.push(Label::new("status", status.to_string()));
            self.recorder
                .register_counter(&Key::from_parts(self.name, labels), &METADATA)
        })
        .increment(1);
    }
}
