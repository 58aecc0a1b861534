//! Rollout and guard runtime: per-identity memory (windows, hold, rollback), the
//! evaluator that turns schedule + verdict into the share in force at least once a
//! second, rollbacks and resumes (persisted by `crate::runtime::state_dir`), and the
//! `on_rollback` webhook.
//!
//! The decisions themselves are pure (`crate::rollout`); this module feeds them clocks
//! and counts and carries out what they say.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Value};

use crate::admin::history::{Event, Events};
use crate::cohort::{BasisPoints, Variant};
use crate::config::{Config, Route};
use crate::metrics::window::Window;
use crate::rollout::sequential::{self, Sequential, Tally};
use crate::rollout::{
    self, format_rfc3339, threshold_evidence, verdict, Figures, Guard, GuardAction, Method, Reason,
    UnixMillis, Verdict,
};
use crate::runtime::outbound;
use crate::runtime::server::State;
use crate::runtime::state_dir::{self, Stored};

mod fleet_memory;
pub(crate) use fleet_memory::Evidence;
use fleet_memory::FleetMemory;

/// How often guards are judged and schedules re-read.
pub(crate) const EVALUATE_EVERY: Duration = Duration::from_millis(250);
/// How long one webhook delivery attempt may take, connecting included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a webhook is retried before it is given up.
pub(crate) const WEBHOOK_GIVE_UP_AFTER: Duration = Duration::from_secs(120);

/// The wall clock, the one every replica shares (schedules are fleet-wide).
pub fn wall_now() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A rollback in force.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RollbackRecord {
    pub reason: Reason,
    pub at: UnixMillis,
    pub saved: Saved,
}

/// Whether a rollback will survive a restart.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Saved {
    /// It is in `state_dir` (written now, or read from there at start).
    Remembered,
    /// No `state_dir` is set: memory only.
    NoStateDir,
    /// Writing it failed (the reason): memory only, and said so loudly.
    Failed(String),
}

impl Saved {
    pub(crate) fn is_remembered(&self) -> bool {
        matches!(self, Saved::Remembered)
    }
}

/// The changeable part of a route's memory, under one lock.
#[derive(Default)]
struct Remembered {
    rolled_back: Option<RollbackRecord>,
    /// When the last rollback was resumed (rollout routes: the ramp restarts here).
    resumed_at: Option<UnixMillis>,
    /// The step a failing `action = "hold"` guard stays on.
    holding: Option<usize>,
    /// Steps, rollbacks and resumes for the status page's time axis.
    events: Events,
    /// A `method = "sequential"` guard's judge since it (re)started on this identity.
    sequential: Option<SequentialRun>,
    /// The last judgement, for `/routes/{name}/verdict`, the status page and metrics.
    judged: Option<Judged>,
    /// Resumes so far: an evaluation that began before a resume must not act on the
    /// evidence the resume discarded.
    resumes: u64,
    /// When this process last resumed the route (any route, unlike `resumed_at`).
    last_resume: Option<UnixMillis>,
    /// What a guard with a Prometheus source last read of the fleet.
    fleet: FleetMemory,
}

/// A sequential judge and the first metrics period it has not folded in yet.
struct SequentialRun {
    judge: Sequential,
    next_period: u64,
    /// The guard window the periods belong to: a new length means new slot widths,
    /// whose period numbers are not comparable, so the run restarts.
    window: Duration,
}

/// One evaluation's answer (DESIGN §12): the verdict and its evidence against the
/// threshold (1 or more fails), per signal.
#[derive(Debug, Clone)]
pub(crate) struct Judged {
    pub method: &'static str,
    pub verdict: Verdict,
    pub errors: Option<f64>,
    pub latency: Option<f64>,
    pub canary: Figures,
    pub stable: Figures,
    /// Sequential only: the counts since the judge (re)started, canary and stable.
    pub since: Option<(Tally, Tally)>,
    /// Whose counts these are.
    pub evidence: Evidence,
}

impl Judged {
    /// A threshold guard's judgement of `canary` and `stable` over its window.
    fn by_threshold(guard: &Guard, canary: Figures, stable: Figures, evidence: Evidence) -> Judged {
        let (errors, latency) = threshold_evidence(guard, &canary, &stable);
        Judged {
            method: guard.method.as_str(),
            verdict: verdict(guard, &canary, &stable),
            errors,
            latency,
            canary,
            stable,
            since: None,
            evidence,
        }
    }

    /// A sequential judge's answer, shown with the figures `canary` and `stable`.
    fn by_sequential(
        guard: &Guard,
        judge: &Sequential,
        canary: Figures,
        stable: Figures,
        evidence: Evidence,
    ) -> Judged {
        Judged {
            method: guard.method.as_str(),
            verdict: Verdict::from_sequential(judge.judge(guard.min_requests)),
            errors: Some(judge.errors().ratio()),
            latency: judge.latency().map(|e| e.ratio()),
            canary,
            stable,
            since: Some((judge.canary, judge.stable)),
            evidence,
        }
    }
}

/// The guard's outcome windows of one identity.
pub(crate) struct Windows {
    pub canary: Window,
    pub stable: Window,
}

impl Windows {
    /// Windows of `len` (at least a second) with a lane per worker; none without a length.
    fn covering(len: Option<Duration>, lanes: usize) -> Option<Windows> {
        let seconds = len?.as_secs().max(1);
        Some(Windows {
            canary: Window::with_lanes(seconds, lanes),
            stable: Window::with_lanes(seconds, lanes),
        })
    }
}

/// Memory of one route identity (route name + salt, + `start` under a rollout): a
/// rollback (of any route: the kill switch), a resume, a hold, and for routes with a
/// rollout or guard the outcome windows. It survives reloads that keep the identity;
/// rollbacks and resumes survive restarts through `state_dir`.
pub(crate) struct GuardState {
    /// Outcome windows, for routes with a rollout or a guard only: a plain route pays
    /// nothing per request for being able to be rolled back.
    windows: Option<Windows>,
    window_len: Duration,
    /// Shared with the memory this one replaced when a reload changed the windows, so a
    /// rollback can never land on a copy that is about to be dropped.
    memory: Arc<Mutex<Remembered>>,
    state_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ResumeError {
    #[error("nothing to resume: the route is not rolled back")]
    NothingToResume,
    #[error("cannot record the resume in {path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

impl GuardState {
    fn new(
        identity: String,
        window_len: Option<Duration>,
        lanes: usize,
        state_dir: Option<&Path>,
    ) -> GuardState {
        let state_file = state_dir.map(|dir| state_dir::file_for(dir, &identity));
        let mut memory = Remembered::default();
        match state_file.as_deref().and_then(state_dir::read) {
            Some(Stored::RolledBack { reason, at }) => {
                memory.events.rolled_back(reason, at);
                memory.rolled_back = Some(RollbackRecord {
                    reason,
                    at,
                    saved: Saved::Remembered,
                });
            }
            Some(Stored::Resumed { at }) => memory.resumed_at = Some(at),
            None => {}
        }
        GuardState {
            windows: Windows::covering(window_len, lanes),
            window_len: window_len.unwrap_or_default(),
            memory: Arc::new(Mutex::new(memory)),
            state_file,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn rolled_back(&self) -> Option<RollbackRecord> {
        self.lock().rolled_back.clone()
    }

    pub(crate) fn resumed_at(&self) -> Option<UnixMillis> {
        self.lock().resumed_at
    }

    pub(crate) fn held_step(&self) -> Option<usize> {
        self.lock().holding
    }

    fn set_holding(&self, step: Option<usize>) {
        self.lock().holding = step;
    }

    /// What the pure schedule needs to know of this memory.
    pub(crate) fn memory(&self) -> rollout::Memory {
        let memory = self.lock();
        rollout::Memory {
            held_step: memory.holding,
            rolled_back: memory.rolled_back.is_some(),
            resumed_at: memory.resumed_at,
        }
    }

    /// Records a rollback: atomically in `state_dir` when set, and in memory, under the
    /// memory's lock so a concurrent rollback or resume waits for it; a failed write
    /// still puts the rollback in force (memory only, and said so). Returns the new
    /// record, or `None` if the route was already rolled back.
    pub(crate) fn roll_back(
        &self,
        route: &Route,
        reason: Reason,
        at: UnixMillis,
    ) -> Option<RollbackRecord> {
        self.roll_back_unless_resumed(route, reason, at, None)
    }

    /// [`GuardState::roll_back`] for a guard's verdict: nothing if a resume came after
    /// `resumes` was read, since the verdict's evidence is gone.
    fn roll_back_unless_resumed(
        &self,
        route: &Route,
        reason: Reason,
        at: UnixMillis,
        resumes: Option<u64>,
    ) -> Option<RollbackRecord> {
        let mut memory = self.lock();
        if memory.rolled_back.is_some() || resumes.is_some_and(|r| r != memory.resumes) {
            return None;
        }
        let saved = match &self.state_file {
            None => Saved::NoStateDir,
            Some(path) => match state_dir::write(path, route, Stored::RolledBack { reason, at }) {
                Ok(()) => Saved::Remembered,
                Err(e) => {
                    tracing::error!(route = %route.name, error = %e, "cannot remember the rollback in state_dir: it is in force now but will not survive a restart");
                    Saved::Failed(e)
                }
            },
        };
        let record = RollbackRecord { reason, at, saved };
        memory.rolled_back = Some(record.clone());
        memory.events.rolled_back(reason, at);
        Some(record)
    }

    /// Clears a rollback and empties the windows: a deliberate fresh start. On a rollout
    /// route the ramp restarts at its first step from `now`, and that is recorded in
    /// `state_dir` before anything changes in memory: if it cannot be, the rollback stays.
    pub(crate) fn resume(&self, route: &Route, now: UnixMillis) -> Result<(), ResumeError> {
        let mut memory = self.lock();
        if memory.rolled_back.is_none() {
            return Err(ResumeError::NothingToResume);
        }
        let restarts = route.rollout.is_some();
        if let Some(path) = &self.state_file {
            let recorded = if restarts {
                state_dir::write(path, route, Stored::Resumed { at: now })
            } else {
                state_dir::clear(path).map_err(|e| e.to_string())
            };
            recorded.map_err(|reason| ResumeError::Io {
                path: path.clone(),
                reason,
            })?;
        }
        memory.rolled_back = None;
        memory.holding = None;
        // A fresh start for the evidence too: the resumed canary is judged anew.
        memory.sequential = None;
        memory.judged = None;
        memory.fleet = FleetMemory::default();
        memory.resumes += 1;
        memory.last_resume = Some(now);
        memory.events.resumed(now);
        if restarts {
            memory.resumed_at = Some(now);
        }
        if let Some(windows) = &self.windows {
            windows.canary.clear();
            windows.stable.clear();
        }
        Ok(())
    }

    /// Notes the share a refresh computed at `now`, for the time axis of the charts.
    pub(crate) fn observe(&self, effective: &rollout::Effective, now: UnixMillis) {
        let mut memory = self.lock();
        let rolled_back = memory.rolled_back.is_some();
        memory.events.observe(effective, rolled_back, now);
    }

    /// Steps, rollbacks and resumes of this identity, oldest first.
    pub(crate) fn events(&self) -> Vec<Event> {
        self.lock().events.list()
    }

    /// The guard window of `variant`, for routes with a rollout or guard.
    pub(crate) fn window(&self, variant: Variant) -> Option<&Window> {
        let windows = self.windows.as_ref()?;
        Some(match variant {
            Variant::Stable => &windows.stable,
            Variant::Canary => &windows.canary,
        })
    }

    /// The last judgement, with a rollback in force answering `fail` (with the
    /// rollback's reason) until it is resumed (DESIGN §12).
    /// Before the first evaluation it is `inconclusive` with no evidence.
    pub(crate) fn judged(&self, guard: &Guard) -> Judged {
        let memory = self.lock();
        let mut judged = memory.judged.clone().unwrap_or(Judged {
            method: guard.method.as_str(),
            verdict: Verdict::TooFewRequests,
            errors: None,
            latency: None,
            canary: Figures::default(),
            stable: Figures::default(),
            since: None,
            evidence: Evidence::Local,
        });
        if let Some(record) = &memory.rolled_back {
            judged.verdict = Verdict::Fail(record.reason);
        }
        judged
    }

    /// How many resumes this memory has seen: taken before judging, and handed to
    /// [`GuardState::judged_since`], so a resume in between voids the judgement.
    pub(crate) fn resumes(&self) -> u64 {
        self.lock().resumes
    }

    /// Keeps `judged` as the last judgement, unless a resume came after `resumes` was
    /// read (its evidence is gone): `false` then, and the caller acts on nothing.
    fn judged_since(&self, resumes: u64, judged: Judged) -> bool {
        let mut memory = self.lock();
        if memory.resumes != resumes {
            return false;
        }
        memory.judged = Some(judged);
        true
    }

    /// Folds every metrics period that has closed since the last call into the
    /// sequential judge and judges. A period is read once it is a full period old, so
    /// a request finishing on the boundary is not missed; the judge restarts when its
    /// settings change (a reload), and on a resume.
    fn judge_sequentially(
        &self,
        guard: &Guard,
        settings: sequential::Settings,
        (canary, stable): (Figures, Figures),
        mono: u64,
    ) -> Judged {
        let (current, len) = self
            .windows
            .as_ref()
            .map_or((0, 1), |w| w.canary.period_of(mono));
        // Periods before `end` are a full period old: complete.
        let end = current.saturating_sub(1);
        let mut memory = self.lock();
        let run = match &mut memory.sequential {
            Some(run) if run.judge.settings == settings && run.window == self.window_len => run,
            // A new run judges only what happens from now on: evidence seen before its
            // settings were chosen must not count towards it.
            slot => slot.insert(SequentialRun {
                judge: Sequential::new(settings),
                next_period: end,
                window: self.window_len,
            }),
        };
        if let Some(windows) = &self.windows {
            let oldest = current.saturating_sub(len.saturating_sub(1));
            let slow = settings.slow_bucket();
            for period in run.next_period.max(oldest)..end {
                let canary = Tally::from_counts(&windows.canary.period_counts(period), slow);
                let stable = Tally::from_counts(&windows.stable.period_counts(period), slow);
                run.judge.update(&canary, &stable);
            }
            run.next_period = run.next_period.max(end);
        }
        Judged::by_sequential(guard, &run.judge, canary, stable, Evidence::Local)
    }

    /// The figures of both variants over the guard window at metrics time `mono`
    /// (canary, stable); zeros for routes without windows.
    pub(crate) fn figures(&self, mono: u64) -> (Figures, Figures) {
        match &self.windows {
            Some(w) => (
                Figures::from_counts(&w.canary.counts(mono)),
                Figures::from_counts(&w.stable.counts(mono)),
            ),
            None => (Figures::default(), Figures::default()),
        }
    }
}

/// All identities' memory, keyed by identity.
#[derive(Default)]
pub(crate) struct Guards {
    by_identity: Mutex<HashMap<String, Arc<GuardState>>>,
    /// Lanes of each guard window: one per proxy worker (0 counts as 1).
    lanes: usize,
}

impl Guards {
    /// Guard memory whose windows have a lane per proxy worker.
    pub(crate) fn with_lanes(workers: usize) -> Guards {
        Guards {
            by_identity: Mutex::default(),
            lanes: workers,
        }
    }

    /// The memory for `route`, created on first use (reading what `state_dir`
    /// remembers). Every route has one: any route can be rolled back. A rollout first
    /// seen past its first step is announced (`now` places it).
    pub(crate) fn for_route(
        &self,
        route: &Route,
        state_dir: Option<&Path>,
        now: UnixMillis,
    ) -> Arc<GuardState> {
        let identity = route.rollout_identity();
        let window_len = (route.rollout.is_some() || route.guard.is_some()).then(|| {
            route
                .guard
                .as_ref()
                .map_or(crate::config::DEFAULT_GUARD_WINDOW, |g| g.window)
        });
        let mut map = self
            .by_identity
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let state = map
            .entry(identity.clone())
            .and_modify(|existing| {
                let same_windows = existing.windows.is_some() == window_len.is_some()
                    && window_len.map_or(true, |len| len == existing.window_len);
                if !same_windows {
                    // New window lengths need new buckets; the memory itself stays.
                    *existing = Arc::new(GuardState {
                        windows: Windows::covering(window_len, self.lanes),
                        window_len: window_len.unwrap_or_default(),
                        memory: existing.memory.clone(),
                        state_file: existing.state_file.clone(),
                    });
                }
            })
            .or_insert_with(|| {
                let fresh = GuardState::new(identity.clone(), window_len, self.lanes, state_dir);
                announce_late_start(route, &fresh, now);
                Arc::new(fresh)
            });
        state.clone()
    }

    /// Forgets identities the config no longer has (their records stay on disk).
    pub(crate) fn retain(&self, config: &Config) {
        let live: Vec<String> = config.routes.iter().map(Route::rollout_identity).collect();
        self.by_identity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|identity, _| live.contains(identity));
    }
}

/// The warning of DESIGN §7 for a rollout first seen past its first step.
fn announce_late_start(route: &Route, memory: &GuardState, now: UnixMillis) {
    let Some(rollout) = &route.rollout else {
        return;
    };
    let remembered = memory.memory();
    if remembered.rolled_back {
        return;
    }
    if let Some(late) = rollout::late_start(rollout, now, remembered.resumed_at) {
        tracing::warn!(route = %route.name, "rollout {:?} {late}", route.name);
    }
}

/// Rolls a route back by hand (`POST /routes/{name}/rollback`, any route): reason
/// `manual`, in memory at once and in `state_dir`; the config file is not touched, so
/// it works on a read-only ConfigMap. Returns the rollback in force (this one, or an
/// earlier one). `mono` is the metrics clock the windows run on.
pub(crate) fn manual_rollback(
    route: &Route,
    route_state: &crate::runtime::snapshot::RouteState,
    now: UnixMillis,
    mono: u64,
) -> Option<RollbackRecord> {
    let memory = route_state.memory();
    if memory.roll_back(route, Reason::Manual, now).is_some() {
        let (canary, stable) = memory.figures(mono);
        announce_rollback(route, route_state, Reason::Manual, now, &canary, &stable);
    }
    route_state.refresh(route, now);
    memory.rolled_back()
}

/// Judges every guard and re-reads every schedule, at least once a second.
pub(crate) async fn evaluate_forever(state: Arc<State>) {
    let mut tick = tokio::time::interval(EVALUATE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        evaluate_once(&state, wall_now());
    }
}

/// One pass over the current snapshot at wall time `now`.
pub(crate) fn evaluate_once(state: &State, now: UnixMillis) {
    let snap = state.snapshot.load_full();
    let mono = state.metrics.clock().now();
    for (route, route_state) in snap.config.routes.iter().zip(&snap.routes) {
        if let Some(guard) = &route.guard {
            let memory = route_state.memory();
            let resumes = memory.resumes();
            let (local_canary, local_stable) = memory.figures(mono);
            // The local judge runs even while the fleet's is used, so a fallback has
            // its evidence ready.
            let local = judge(memory, guard, local_canary, local_stable, mono);
            let (judgement, peers_rolled_back) = match route.fleet_source() {
                None => (local, 0),
                Some(_) => memory
                    .judge_fleet(guard, tokio::time::Instant::now())
                    .unwrap_or_else(|| {
                        let error = memory
                            .fleet_failing()
                            .unwrap_or_else(|| "no answer from Prometheus yet".to_owned());
                        let evidence = Evidence::Fallback { error };
                        (Judged { evidence, ..local }, 0)
                    }),
            };
            let (canary, stable) = (judgement.canary, judgement.stable);
            route_state.metrics.guard_figures(&canary, &stable);
            let judged = judgement.verdict;
            if !memory.judged_since(resumes, judgement) {
                // A resume discarded the evidence this was judged on: judge afresh at
                // the next tick rather than roll back a route someone just resumed.
                route_state.refresh(route, now);
                continue;
            }
            let shown = memory.judged(guard);
            route_state
                .metrics
                .guard_verdict(shown.verdict.label(), shown.errors, shown.latency);
            // Another replica of this rollout rolled back: so does this one, whatever
            // its own evidence says (DESIGN §12).
            if peers_rolled_back > 0
                && !matches!(judged, Verdict::Fail(_))
                && memory
                    .roll_back_unless_resumed(route, Reason::Adopted, now, Some(resumes))
                    .is_some()
            {
                announce_rollback(route, route_state, Reason::Adopted, now, &canary, &stable);
            }
            match (guard.action, judged) {
                (GuardAction::Rollback, Verdict::Fail(reason))
                    if memory
                        .roll_back_unless_resumed(route, reason, now, Some(resumes))
                        .is_some() =>
                {
                    announce_rollback(route, route_state, reason, now, &canary, &stable);
                }
                (GuardAction::Hold, Verdict::Fail(reason)) if memory.held_step().is_none() => {
                    let scheduled = scheduled_step(route, memory, now);
                    let at = route_state.step().or(scheduled).unwrap_or(0);
                    tracing::warn!(
                        route = %route.name,
                        reason = reason.as_str(),
                        step = at + 1,
                        canary_requests = canary.requests,
                        canary_error_ratio = canary.error_ratio.map(rounded),
                        canary_p99_seconds = canary.p99_seconds.map(rounded),
                        "guard failing: holding the current step"
                    );
                    memory.set_holding(Some(at));
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

/// Judges one route by its guard's method.
fn judge(
    memory: &GuardState,
    guard: &Guard,
    canary: Figures,
    stable: Figures,
    mono: u64,
) -> Judged {
    match guard.method {
        Method::Threshold => Judged::by_threshold(guard, canary, stable, Evidence::Local),
        Method::Sequential(settings) => {
            memory.judge_sequentially(guard, settings, (canary, stable), mono)
        }
    }
}

/// The rollout step the clock says at `now`, counted from the last resume.
fn scheduled_step(route: &Route, memory: &GuardState, now: UnixMillis) -> Option<usize> {
    let rollout = route.rollout.as_ref()?;
    rollout
        .position_from(rollout.origin(memory.resumed_at()), now)
        .step
}

/// A figure for a log line: four decimals are plenty for ratios and seconds.
fn rounded(value: f64) -> f64 {
    (value * 10_000.0).round() / 10_000.0
}

/// Counts, logs and (with `on_rollback`) reports a rollback that has just happened. A
/// guard's rollback is an ERROR (something failed); a manual one a WARN (someone acted).
fn announce_rollback(
    route: &Route,
    route_state: &crate::runtime::snapshot::RouteState,
    reason: Reason,
    now: UnixMillis,
    canary: &Figures,
    stable: &Figures,
) {
    route_state.metrics.rolled_back(reason);
    macro_rules! rollback_line {
        ($level:ident) => {
            tracing::$level!(
                route = %route.name,
                reason = reason.as_str(),
                canary_requests = canary.requests,
                canary_errors = canary.errors,
                canary_error_ratio = canary.error_ratio.map(rounded),
                canary_p99_seconds = canary.p99_seconds.map(rounded),
                stable_error_ratio = stable.error_ratio.map(rounded),
                "canary rolled back to 0 %"
            )
        };
    }
    match reason {
        // Someone acted, or another replica did: this replica saw no failure itself.
        Reason::Manual | Reason::Adopted => rollback_line!(warn),
        _ => rollback_line!(error),
    }
    if reason == Reason::Adopted {
        // The replica that rolled back first reports it; a fleet would otherwise send
        // one webhook per replica.
        return;
    }
    let Some(url) = route.guard.as_ref().and_then(|g| g.on_rollback.clone()) else {
        return;
    };
    let step = scheduled_step(route, route_state.memory(), now);
    let percent = route
        .rollout
        .as_ref()
        .map_or(route.canary_bp, |r| r.share_of(step));
    let body = webhook_body(route, reason, step, percent, now, canary, stable);
    tokio::spawn(deliver_webhook(url, body, route.name.clone()));
}

/// The `on_rollback` body of DESIGN §7.
pub(crate) fn webhook_body(
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
pub(crate) async fn deliver_webhook(url: String, body: Value, route: String) {
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(_) => return,
    };
    let payload = Bytes::from(body.to_string());
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1u32;
    loop {
        let result = outbound::post(&uri, "application/json", payload.clone(), CALL_TIMEOUT).await;
        match result.map(|answer| answer.status) {
            Ok(status) if status.is_success() => {
                tracing::info!(%route, attempt, "on_rollback webhook delivered");
                return;
            }
            Ok(status) => {
                tracing::warn!(%route, attempt, status = %status, "on_rollback webhook refused; retrying")
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

/// What `state_dir` remembers of `route`, for tools that run without a live instance
/// (`cohort check`, `cohort assign`).
pub fn offline_memory(route: &Route, config: &Config) -> rollout::Memory {
    let stored = config
        .state_dir
        .as_deref()
        .and_then(|dir| state_dir::read(&state_dir::file_for(dir, &route.rollout_identity())));
    rollout::Memory {
        held_step: None,
        rolled_back: matches!(stored, Some(Stored::RolledBack { .. })),
        resumed_at: match stored {
            Some(Stored::Resumed { at }) => Some(at),
            _ => None,
        },
    }
}

/// The effective share of a route without a live instance: the schedule at `now`
/// (from the last resume), or 0 if `state_dir` remembers a rollback.
pub fn offline_share(route: &Route, config: &Config, now: UnixMillis) -> BasisPoints {
    rollout::effective(
        route.rollout.as_ref(),
        route.canary_bp,
        now,
        offline_memory(route, config),
    )
    .share
}

#[cfg(test)]
mod tests {
    use super::fleet_memory::FLEET_STALE_AFTER;
    use super::*;
    use crate::rollout::fleet;

    fn route() -> Route {
        let text = "[[routes]]\nname = \"shop\"\nsalt = \"s\"\ncanary_percent = 50\nstable = { endpoints = [\"http://127.0.0.1:1\"] }\ncanary = { endpoints = [\"http://127.0.0.1:2\"] }\n[routes.guard]\nmethod = \"sequential\"\n";
        let config = crate::config::parse(text, Path::new("cohort.toml")).expect("config");
        config.routes[0].clone()
    }

    /// An evaluation that read the memory before a resume must not roll the route back
    /// again on the evidence the resume discarded (nor show its stale verdict).
    #[test]
    fn a_verdict_judged_before_a_resume_is_void() {
        let route = route();
        let memory = GuardState::new(
            route.rollout_identity(),
            Some(Duration::from_secs(30)),
            1,
            None,
        );
        let guard = route.guard.clone().expect("guard");
        assert!(memory
            .roll_back(&route, Reason::SequentialErrors, 1)
            .is_some());
        let before = memory.resumes();
        memory.resume(&route, 2).expect("resume");
        let stale = Judged {
            verdict: Verdict::Fail(Reason::SequentialErrors),
            ..memory.judged(&guard)
        };
        assert!(!memory.judged_since(before, stale));
        assert_eq!(memory.judged(&guard).verdict, Verdict::TooFewRequests);
        assert!(memory
            .roll_back_unless_resumed(&route, Reason::SequentialErrors, 3, Some(before))
            .is_none());
        assert!(memory.rolled_back().is_none());
        // A verdict judged after the resume acts.
        let now = memory.resumes();
        assert!(memory
            .roll_back_unless_resumed(&route, Reason::SequentialErrors, 4, Some(now))
            .is_some());
    }

    /// A fleet read that began before a resume is dropped (its evidence predates the
    /// fresh start), a failed read makes the guard judge locally at once, and a resume
    /// forgets the fleet's reading.
    #[tokio::test]
    async fn fleet_reads_respect_resumes_and_failures() {
        let route = route();
        let guard = route.guard.clone().expect("guard");
        let memory = GuardState::new(
            route.rollout_identity(),
            Some(Duration::from_secs(30)),
            1,
            None,
        );
        let peers = fleet::Peers {
            replicas: 3,
            rolled_back: 1,
        };
        let settings = match guard.method {
            Method::Sequential(settings) => settings,
            Method::Threshold => unreachable!("the test route is sequential"),
        };
        let now = tokio::time::Instant::now();
        assert!(
            memory.judge_fleet(&guard, now).is_none(),
            "nothing read yet"
        );
        let resumes = memory.resumes();
        assert!(memory.fleet_counters(resumes, settings, &[]));
        assert!(memory.fleet_read(resumes, peers, None));
        let (judged, rolled_back) = memory.judge_fleet(&guard, now).expect("a fresh read");
        assert_eq!(judged.evidence, Evidence::Fleet { replicas: 3 });
        assert_eq!(rolled_back, 1);
        assert!(
            memory
                .judge_fleet(&guard, now + FLEET_STALE_AFTER * 2)
                .is_none(),
            "stale"
        );

        assert_eq!(
            memory.fleet_failed("down".into()),
            None,
            "the first failure"
        );
        assert_eq!(memory.fleet_failed("down".into()), Some("down".into()));
        assert!(memory.judge_fleet(&guard, now).is_none(), "judged locally");
        assert_eq!(memory.fleet_failing().as_deref(), Some("down"));

        assert!(memory.roll_back(&route, Reason::Adopted, 1).is_some());
        let before = memory.resumes();
        memory.resume(&route, 2).expect("resume");
        assert_eq!(memory.last_resume(), Some(2));
        assert!(
            !memory.fleet_read(before, peers, None),
            "read began before the resume"
        );
        assert!(!memory.fleet_counters(before, settings, &[]));
        assert!(memory.judge_fleet(&guard, now).is_none());
    }
}
