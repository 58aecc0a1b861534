//! Rollout and guard runtime: per-identity memory (windows, hold, rollback), the
//! evaluator that turns schedule + verdict into the share in force at least once a
//! second, rollback persistence in `state_dir`, and the `on_rollback` webhook.
//!
//! The decisions themselves are pure (`crate::rollout`); this module feeds them clocks
//! and counts and carries out what they say.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};

use crate::cohort::{BasisPoints, Variant};
use crate::config::{Config, Route};
use crate::rollout::{
    self, format_rfc3339, verdict, Figures, GuardAction, Reason, UnixMillis, Verdict,
};
use crate::server::State;
use crate::window::Window;

/// How often guards are judged and schedules re-read.
pub const EVALUATE_EVERY: Duration = Duration::from_millis(250);
/// How long a webhook is retried before it is given up.
pub const WEBHOOK_GIVE_UP_AFTER: Duration = Duration::from_secs(120);

/// The wall clock, the one every replica shares (schedules are fleet-wide).
pub fn wall_now() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A rollback as remembered in memory and in `state_dir`.
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackRecord {
    pub reason: Reason,
    pub at: UnixMillis,
}

/// Memory of one rollout identity (route name + salt + start): it survives reloads
/// that keep the identity, and a rollback survives restarts through `state_dir`.
pub struct GuardState {
    pub identity: String,
    pub canary: Window,
    pub stable: Window,
    window_len: Duration,
    rolled_back: Mutex<Option<RollbackRecord>>,
    holding: Mutex<Option<usize>>,
    state_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("nothing to resume: the route is not rolled back")]
    NothingToResume,
    #[error("cannot clear the rollback in {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl GuardState {
    fn new(
        identity: String,
        window_len: Duration,
        lanes: usize,
        state_dir: Option<&Path>,
    ) -> GuardState {
        let state_file = state_dir.map(|dir| dir.join(state_file_name(&identity)));
        let rolled_back = state_file.as_deref().and_then(read_record);
        let seconds = window_len.as_secs().max(1);
        GuardState {
            identity,
            canary: Window::with_lanes(seconds, lanes),
            stable: Window::with_lanes(seconds, lanes),
            window_len,
            rolled_back: Mutex::new(rolled_back),
            holding: Mutex::new(None),
            state_file,
        }
    }

    pub fn rolled_back(&self) -> Option<RollbackRecord> {
        self.rolled_back
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn held_step(&self) -> Option<usize> {
        *self.holding.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_holding(&self, step: Option<usize>) {
        *self.holding.lock().unwrap_or_else(PoisonError::into_inner) = step;
    }

    /// Records a rollback (in memory, then atomically in `state_dir`). Returns false if
    /// it was already rolled back.
    pub fn roll_back(&self, route: &Route, reason: Reason, at: UnixMillis) -> bool {
        {
            let mut slot = self
                .rolled_back
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if slot.is_some() {
                return false;
            }
            *slot = Some(RollbackRecord { reason, at });
        }
        if let Some(path) = &self.state_file {
            let record = json!({
                "route": route.name,
                "salt": route.salt,
                "start": route.rollout.as_ref().map(|r| r.start_text.clone()),
                "reason": reason.as_str(),
                "at": format_rfc3339(at),
                "at_ms": at,
            });
            if let Err(e) = crate::writeback::write_new_atomically(path, &format!("{record}\n")) {
                tracing::error!(route = %route.name, error = %e, "cannot remember the rollback in state_dir; it will not survive a restart");
            }
        }
        true
    }

    /// Clears a rollback and empties the window: a deliberate fresh start.
    pub fn resume(&self) -> Result<(), ResumeError> {
        let mut slot = self
            .rolled_back
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            return Err(ResumeError::NothingToResume);
        }
        if let Some(path) = &self.state_file {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ResumeError::Io {
                        path: path.clone(),
                        source,
                    })
                }
            }
        }
        *slot = None;
        self.set_holding(None);
        self.canary.clear();
        self.stable.clear();
        Ok(())
    }

    pub fn window(&self, variant: Variant) -> &Window {
        match variant {
            Variant::Stable => &self.stable,
            Variant::Canary => &self.canary,
        }
    }
}

/// `rollback-<hash>.json`: one file per identity, named by a hash so any salt works.
fn state_file_name(identity: &str) -> String {
    format!(
        "rollback-{:016x}.json",
        xxhash_rust::xxh3::xxh3_64(identity.as_bytes())
    )
}

fn read_record(path: &Path) -> Option<RollbackRecord> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            // A damaged record still means "this canary failed": stay rolled back.
            tracing::warn!(file = %path.display(), error = %e, "unreadable rollback record; treating the rollout as rolled back");
            return Some(RollbackRecord {
                reason: Reason::Manual,
                at: 0,
            });
        }
    };
    Some(RollbackRecord {
        reason: value["reason"]
            .as_str()
            .and_then(Reason::parse)
            .unwrap_or(Reason::Manual),
        at: value["at_ms"].as_i64().unwrap_or(0),
    })
}

/// All identities' memory, keyed by identity.
#[derive(Default)]
pub struct Guards {
    by_identity: Mutex<HashMap<String, Arc<GuardState>>>,
    /// Lanes of each guard window: one per proxy worker (0 counts as 1).
    lanes: usize,
}

impl Guards {
    /// Guard memory whose windows have a lane per proxy worker.
    pub fn with_lanes(workers: usize) -> Guards {
        Guards {
            by_identity: Mutex::default(),
            lanes: workers,
        }
    }

    /// The memory for `route`, if it has a rollout or a guard; created on first use
    /// (reading a remembered rollback from `state_dir`).
    pub fn for_route(&self, route: &Route, state_dir: Option<&Path>) -> Option<Arc<GuardState>> {
        if route.rollout.is_none() && route.guard.is_none() {
            return None;
        }
        let identity = route.rollout_identity();
        let window_len = route
            .guard
            .as_ref()
            .map_or(crate::config::DEFAULT_GUARD_WINDOW, |g| g.window);
        let mut map = self
            .by_identity
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let state = map
            .entry(identity.clone())
            .and_modify(|existing| {
                if existing.window_len != window_len {
                    // A new window length needs new buckets; the rollback stays.
                    let fresh =
                        GuardState::new(identity.clone(), window_len, self.lanes, state_dir);
                    *fresh
                        .rolled_back
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = existing.rolled_back();
                    *existing = Arc::new(fresh);
                }
            })
            .or_insert_with(|| {
                Arc::new(GuardState::new(
                    identity.clone(),
                    window_len,
                    self.lanes,
                    state_dir,
                ))
            });
        Some(state.clone())
    }

    /// Forgets identities the config no longer has (their rollbacks stay on disk).
    pub fn retain(&self, config: &Config) {
        let live: Vec<String> = config.routes.iter().map(Route::rollout_identity).collect();
        self.by_identity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|identity, _| live.contains(identity));
    }
}

/// Rolls a route back by hand (`POST /routes/{name}/rollback` on a rollout route):
/// a guard rollback with reason `manual`; the config file is not touched.
/// `mono` is the metrics clock the windows run on.
pub fn manual_rollback(
    route: &Route,
    route_state: &crate::snapshot::RouteState,
    now: UnixMillis,
    mono: u64,
) {
    let Some(memory) = route_state.guard_state() else {
        return;
    };
    if memory.roll_back(route, Reason::Manual, now) {
        let canary = Figures::from_counts(&memory.canary.counts(mono));
        let stable = Figures::from_counts(&memory.stable.counts(mono));
        announce_rollback(route, route_state, Reason::Manual, now, &canary, &stable);
    }
    route_state.refresh(route, now);
}

/// Judges every guard and re-reads every schedule, at least once a second.
pub async fn evaluate_forever(state: Arc<State>) {
    let mut tick = tokio::time::interval(EVALUATE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        evaluate_once(&state, wall_now());
    }
}

/// One pass over the current snapshot at wall time `now`.
pub fn evaluate_once(state: &State, now: UnixMillis) {
    let snap = state.snapshot.load_full();
    let mono = state.metrics.clock().now();
    for (route, route_state) in snap.config.routes.iter().zip(&snap.routes) {
        let Some(memory) = route_state.guard_state() else {
            continue;
        };
        if let Some(guard) = &route.guard {
            let canary = Figures::from_counts(&memory.canary.counts(mono));
            let stable = Figures::from_counts(&memory.stable.counts(mono));
            route_state.metrics.guard_figures(&canary, &stable);
            let judged = verdict(guard, &canary, &stable);
            let scheduled = route.rollout.as_ref().and_then(|r| r.position(now).step);
            match (guard.action, judged) {
                (GuardAction::Rollback, Verdict::Fail(reason))
                    if memory.roll_back(route, reason, now) =>
                {
                    announce_rollback(route, route_state, reason, now, &canary, &stable);
                }
                (GuardAction::Hold, Verdict::Fail(reason)) if memory.held_step().is_none() => {
                    let at = route_state.step().or(scheduled);
                    tracing::warn!(route = %route.name, reason = reason.as_str(), step = ?at, "guard failing: holding the current step");
                    memory.set_holding(at.or(Some(0)));
                }
                (GuardAction::Hold, Verdict::Pass) if memory.held_step().is_some() => {
                    tracing::info!(route = %route.name, "guard passes again: following the schedule");
                    memory.set_holding(None);
                }
                _ => {}
            }
        }
        route_state.refresh(route, now);
    }
}

fn announce_rollback(
    route: &Route,
    route_state: &crate::snapshot::RouteState,
    reason: Reason,
    now: UnixMillis,
    canary: &Figures,
    stable: &Figures,
) {
    route_state.metrics.rolled_back(reason);
    tracing::error!(
        route = %route.name,
        reason = reason.as_str(),
        canary_requests = canary.requests,
        canary_errors = canary.errors,
        canary_error_ratio = ?canary.error_ratio,
        canary_p99_seconds = ?canary.p99_seconds,
        "canary rolled back to 0 %"
    );
    let Some(url) = route.guard.as_ref().and_then(|g| g.on_rollback.clone()) else {
        return;
    };
    let step = route.rollout.as_ref().and_then(|r| r.position(now).step);
    let percent = route
        .rollout
        .as_ref()
        .map_or(route.canary_bp, |r| r.share_of(step));
    let body = webhook_body(route, reason, step, percent, now, canary, stable);
    tokio::spawn(deliver_webhook(url, body, route.name.clone()));
}

/// The `on_rollback` body of DESIGN §7.
pub fn webhook_body(
    route: &Route,
    reason: Reason,
    step: Option<usize>,
    percent: BasisPoints,
    at: UnixMillis,
    canary: &Figures,
    stable: &Figures,
) -> Value {
    let figures = |f: &Figures| {
        json!({
            "requests": f.requests,
            "errors": f.errors,
            "error_ratio": f.error_ratio,
            "p99_seconds": f.p99_seconds,
        })
    };
    json!({
        "route": route.name,
        "salt": route.salt,
        "start": route.rollout.as_ref().map(|r| r.start_text.clone()),
        "reason": reason.as_str(),
        "step": step,
        "percent": percent.percent(),
        "at": format_rfc3339(at),
        "canary": figures(canary),
        "stable": figures(stable),
    })
}

/// POSTs the webhook, retrying with exponential backoff (0.5 s, 1 s, 2 s … at most
/// 30 s apart) until it is accepted (2xx) or [`WEBHOOK_GIVE_UP_AFTER`] has passed.
pub async fn deliver_webhook(url: String, body: Value, route: String) {
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(_) => return,
    };
    let base = format!(
        "http://{}",
        uri.authority().map(|a| a.as_str()).unwrap_or_default()
    );
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let payload = Bytes::from(body.to_string());
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1u32;
    loop {
        let result = crate::client::call(
            &base,
            Method::POST,
            &path,
            &[("content-type", "application/json")],
            payload.clone(),
        )
        .await;
        match result {
            Ok(answer) if answer.status.is_success() => {
                tracing::info!(%route, attempt, "on_rollback webhook delivered");
                return;
            }
            Ok(answer) => {
                tracing::warn!(%route, attempt, status = %answer.status, "on_rollback webhook refused; retrying")
            }
            Err(e) => {
                tracing::warn!(%route, attempt, error = %e, "on_rollback webhook failed; retrying")
            }
        }
        if started.elapsed() + delay > WEBHOOK_GIVE_UP_AFTER {
            tracing::error!(%route, attempt, "on_rollback webhook given up");
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
        attempt += 1;
    }
}

/// The effective share of a route for tools that run without a live instance
/// (`cohort assign`): the schedule at `now`, or 0 if `state_dir` remembers a rollback.
pub fn offline_share(route: &Route, config: &Config, now: UnixMillis) -> BasisPoints {
    let rolled_back = (route.rollout.is_some() || route.guard.is_some())
        && config.state_dir.as_deref().is_some_and(|dir| {
            dir.join(state_file_name(&route.rollout_identity()))
                .exists()
        });
    rollout::effective(
        route.rollout.as_ref(),
        route.canary_bp,
        now,
        None,
        rolled_back,
    )
    .share
}
