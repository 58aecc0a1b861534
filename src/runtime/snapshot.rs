//! The runtime state a request needs, swapped as one unit.
//!
//! A request loads the current [`Snapshot`] once and finishes on it, whatever
//! reloads happen meanwhile. Everything derived from the config (route table,
//! metric handles, endpoint authorities) is computed here, once per config, and never
//! changes after. A few atomics do change in place, without a reload: per route the
//! canary share in force, the rollout step and state (written by the guard evaluator),
//! and each variant's round-robin cursor.

use std::sync::atomic::{AtomicI64, AtomicU16, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::cohort::{BasisPoints, Variant};
use crate::config::{Endpoint, Loaded, Route, Transport};
use crate::metrics::{Metrics, RouteMetrics};
use crate::rollout::{self, RolloutState, UnixMillis};
use crate::router::{AssignSource, RouteTable};
use crate::runtime::guard::{GuardState, Guards};
use crate::upstream::Target;

pub struct Snapshot {
    /// The config with the files it names (reads as its `Config`).
    pub config: Arc<Loaded>,
    /// The listener's TLS and the admin token, from the files the config names.
    pub credentials: Credentials,
    pub table: RouteTable,
    pub routes: Vec<RouteState>,
    pub generation: u64,
}

/// What the listener and the admin API take from the files a config names. Swapped
/// with the rest of the snapshot: there is no other place a certificate or a token is
/// kept, so what serves is always what the config in force names.
#[derive(Clone, Default)]
pub struct Credentials {
    /// `None` without `listen.tls`. Each accepted connection takes the one in force.
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    /// The bearer token mutating admin calls need, when `admin.token_file` is set.
    pub admin_token: Option<Arc<String>>,
}

/// Per-route runtime state, parallel to `config.routes`.
pub struct RouteState {
    pub metrics: RouteMetrics,
    variants: [VariantEndpoints; 2],
    /// The canary share in force, in basis points: `canary_percent`, or the rollout's
    /// step (held, or 0 after a rollback). Requests read it; the evaluator writes it.
    share: AtomicU16,
    /// The rollout step in force, −1 before `start` or without a rollout.
    step: AtomicI64,
    rollout_state: AtomicU8,
    /// What this replica remembers of the route (rollback, resume, hold, guard windows).
    memory: Arc<GuardState>,
    /// Every endpoint of both variants is plain HTTP/1.1: cohort's own client serves
    /// the route (`crate::engine::h1`); otherwise hyper's does.
    plain_http1: bool,
}

/// A variant's endpoints as the pools reach them, and the round-robin cursor.
struct VariantEndpoints {
    endpoints: Vec<Target>,
    next: AtomicUsize,
}

impl Snapshot {
    /// Compiles `config`; `now` places rollout schedules, `guards` holds the memory of
    /// each rollout identity across snapshots.
    pub(crate) fn build(
        config: Arc<Loaded>,
        credentials: Credentials,
        generation: u64,
        metrics: &Metrics,
        guards: &Guards,
        now: UnixMillis,
    ) -> Snapshot {
        guards.retain(&config);
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(index, route)| {
                let route_metrics = metrics.route(
                    &route.name,
                    route.rollout.is_some() || route.guard.is_some(),
                    route.fleet_source().is_some(),
                );
                let endpoints = |v: Variant| VariantEndpoints {
                    endpoints: variant_upstream(route, v)
                        .iter()
                        .map(|e| Target::new(e, config.client_tls(index, v)))
                        .collect(),
                    next: AtomicUsize::new(0),
                };
                let state = RouteState {
                    metrics: route_metrics,
                    variants: [endpoints(Variant::Stable), endpoints(Variant::Canary)],
                    share: AtomicU16::new(route.canary_bp.get()),
                    step: AtomicI64::new(-1),
                    rollout_state: AtomicU8::new(0),
                    memory: guards.for_route(route, config.state_dir.as_deref(), now),
                    plain_http1: [Variant::Stable, Variant::Canary].iter().all(|&v| {
                        variant_upstream(route, v)
                            .iter()
                            .all(|e| e.transport == Transport::Http1)
                    }),
                };
                state.refresh(route, now);
                state
            })
            .collect();
        let identities: Vec<[String; 3]> =
            config.routes.iter().map(Route::identity_labels).collect();
        metrics.rollout_identities(&identities);
        metrics.set_generation(generation);
        Snapshot {
            table: RouteTable::new(&config.routes),
            config,
            credentials,
            routes,
            generation,
        }
    }

    pub fn route(&self, index: usize) -> (&Route, &RouteState) {
        (&self.config.routes[index], &self.routes[index])
    }

    pub fn route_by_name(&self, name: &str) -> Option<&Route> {
        self.config.routes.iter().find(|r| r.name == name)
    }

    pub fn route_index(&self, name: &str) -> Option<usize> {
        self.config.routes.iter().position(|r| r.name == name)
    }
}

fn variant_upstream(route: &Route, variant: Variant) -> &[Endpoint] {
    match variant {
        Variant::Stable => &route.stable.endpoints,
        Variant::Canary => &route.canary.endpoints,
    }
}

impl RouteState {
    /// The canary share in force.
    pub fn share(&self) -> BasisPoints {
        BasisPoints::from_raw(self.share.load(Ordering::Relaxed)).unwrap_or(BasisPoints::ZERO)
    }

    /// Whether cohort's own HTTP/1.1 client can reach every endpoint of the route.
    pub fn plain_http1(&self) -> bool {
        self.plain_http1
    }

    /// The rollout step in force, if a rollout has started.
    pub fn step(&self) -> Option<usize> {
        usize::try_from(self.step.load(Ordering::Relaxed)).ok()
    }

    pub fn rollout_state(&self) -> RolloutState {
        RolloutState::ALL
            .get(usize::from(self.rollout_state.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or(RolloutState::Complete)
    }

    /// The route's memory: every route has one, since any route can be rolled back.
    pub(crate) fn memory(&self) -> &GuardState {
        &self.memory
    }

    /// Recomputes the share in force from schedule, hold and rollback at `now`, and
    /// publishes it to requests and gauges.
    pub fn refresh(&self, route: &Route, now: UnixMillis) {
        let effective = rollout::effective(
            route.rollout.as_ref(),
            route.canary_bp,
            now,
            self.memory.memory(),
        );
        self.share.store(effective.share.get(), Ordering::Relaxed);
        self.memory.observe(&effective, now);
        self.step.store(
            effective
                .step
                .map_or(-1, |s| i64::try_from(s).unwrap_or(i64::MAX)),
            Ordering::Relaxed,
        );
        let state_index = RolloutState::ALL
            .iter()
            .position(|s| *s == effective.state)
            .unwrap_or(0);
        self.rollout_state
            .store(u8::try_from(state_index).unwrap_or(0), Ordering::Relaxed);
        self.metrics.weight.set(effective.share.ratio());
        self.metrics.rollout(effective.step, effective.state);
    }

    /// Counts one finished request: metrics, the minute window, and the guard's window
    /// (forced ones, by override or followed baggage, excluded: they say nothing
    /// about the cohort's health).
    pub fn finished(
        &self,
        variant: Variant,
        source: AssignSource,
        status: u16,
        elapsed: Duration,
        cut: bool,
    ) {
        self.metrics.variant(variant).finished(status, elapsed, cut);
        if let Some(window) = self.memory.window(variant) {
            if !source.is_forced() {
                let now = self.metrics.variant(variant).clock_now();
                let (error, seconds) = (cut || status >= 500, elapsed.as_secs_f64());
                window.record(now, error, seconds);
                self.metrics.judged(variant, error, seconds);
            }
        }
    }

    /// Endpoints of `variant` in round-robin order starting at the next one, for one
    /// request: the first is used, the second is the retry after a connect failure.
    pub fn endpoints(&self, variant: Variant) -> impl Iterator<Item = &Target> {
        let v = &self.variants[variant.index()];
        let n = v.endpoints.len();
        let start = if n > 1 {
            v.next.fetch_add(1, Ordering::Relaxed) % n
        } else {
            0
        };
        (0..n).map(move |i| &v.endpoints[(start + i) % n])
    }
}

/// The swap point shared by every worker, the admin listener and reloads.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;
