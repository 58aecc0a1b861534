//! The immutable runtime state a request needs, swapped as one unit.
//!
//! A request loads the current [`Snapshot`] once and finishes on it, whatever
//! reloads happen meanwhile. Everything derived from the config (route table,
//! metric handles, endpoint authorities) is computed here, once per config.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::cohort::{BasisPoints, Variant};
use crate::config::{Config, Endpoint, Route};
use crate::metrics::{Metrics, RouteMetrics};
use crate::router::RouteTable;

pub struct Snapshot {
    pub config: Arc<Config>,
    pub table: RouteTable,
    pub routes: Vec<RouteState>,
    pub generation: u64,
}

/// Per-route runtime state, parallel to `config.routes`.
pub struct RouteState {
    pub metrics: RouteMetrics,
    variants: [VariantEndpoints; 2],
}

/// A variant's endpoints with their pool keys, and the round-robin cursor.
struct VariantEndpoints {
    endpoints: Vec<(Endpoint, Arc<str>)>,
    next: AtomicUsize,
}

impl Snapshot {
    pub fn build(config: Arc<Config>, generation: u64, metrics: &Metrics) -> Snapshot {
        let routes = config
            .routes
            .iter()
            .map(|route| {
                let route_metrics = metrics.route(&route.name);
                route_metrics.weight.set(route.canary_bp.ratio());
                let endpoints = |v: Variant| VariantEndpoints {
                    endpoints: variant_upstream(route, v)
                        .iter()
                        .map(|e| (e.clone(), Arc::from(e.authority())))
                        .collect(),
                    next: AtomicUsize::new(0),
                };
                RouteState {
                    metrics: route_metrics,
                    variants: [endpoints(Variant::Stable), endpoints(Variant::Canary)],
                }
            })
            .collect();
        metrics.set_generation(generation);
        Snapshot {
            table: RouteTable::new(&config.routes),
            config,
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
}

fn variant_upstream(route: &Route, variant: Variant) -> &[Endpoint] {
    match variant {
        Variant::Stable => &route.stable.endpoints,
        Variant::Canary => &route.canary.endpoints,
    }
}

impl RouteState {
    /// Endpoints of `variant` in round-robin order starting at the next one, for one
    /// request: the first is used, the second is the retry after a connect failure.
    pub fn endpoints(&self, variant: Variant) -> impl Iterator<Item = &(Endpoint, Arc<str>)> {
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

/// The route's canary share in force. One place, so later features (schedules,
/// guards) change it for every reader at once.
pub fn canary_share(route: &Route) -> BasisPoints {
    route.canary_bp
}

/// The swap point shared by every worker, the admin listener and reloads.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;
