//! Progressive rollouts and their guard, the pure parts: the schedule as a function of
//! (config, time), and the verdict as a function of bucket counts. No clocks are read
//! here; callers pass the time in, so every replica computes the same step and tests
//! run on a fake clock.

use std::fmt;
use std::time::Duration;

use crate::cohort::BasisPoints;
use crate::histogram::{quantile, Counts};

pub mod fleet;
pub mod sequential;

/// Wall-clock time as milliseconds since the Unix epoch (UTC).
pub type UnixMillis = i64;

/// `[routes.rollout]`: ramp through `steps`, one every `step_every`, from `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub start: UnixMillis,
    /// The `start` exactly as written, part of the rollout's identity.
    pub start_text: String,
    pub steps: Vec<BasisPoints>,
    pub step_every: Duration,
}

/// Where a schedule stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Index of the step in force; `None` before `start`.
    pub step: Option<usize>,
    /// When the next step begins; `None` on the last step.
    pub next_at: Option<UnixMillis>,
}

impl Rollout {
    /// The step in force at `now`: 0 before `start`, then `steps[floor((now − start) /
    /// step_every)]`, the last step after that (DESIGN §7).
    pub fn position(&self, now: UnixMillis) -> Position {
        self.position_from(self.start, now)
    }

    /// Where the ramp begins: `start`, or the moment of a later resume, from which the
    /// ramp restarts at `steps[0]` (DESIGN §7: a resume never returns a failed canary
    /// to a later step). A resume before `start` leaves the schedule as it is.
    pub fn origin(&self, resumed_at: Option<UnixMillis>) -> UnixMillis {
        resumed_at.map_or(self.start, |at| at.max(self.start))
    }

    /// The step in force at `now` for a ramp that begins at `origin`.
    pub fn position_from(&self, origin: UnixMillis, now: UnixMillis) -> Position {
        let every = self.step_every.as_millis().max(1) as i128;
        if now < origin {
            return Position {
                step: None,
                next_at: Some(origin),
            };
        }
        let elapsed = i128::from(now) - i128::from(origin);
        let raw = elapsed / every;
        let last = self.steps.len().saturating_sub(1);
        let step = usize::try_from(raw).map_or(last, |s| s.min(last));
        let next_at = (step < last).then(|| {
            let at = i128::from(origin) + (step as i128 + 1) * every;
            i64::try_from(at).unwrap_or(i64::MAX)
        });
        Position {
            step: Some(step),
            next_at,
        }
    }

    /// The scheduled canary share at `now`.
    pub fn percent_at(&self, now: UnixMillis) -> BasisPoints {
        self.share_of(self.position(now).step)
    }

    pub fn share_of(&self, step: Option<usize>) -> BasisPoints {
        step.and_then(|s| self.steps.get(s).copied())
            .unwrap_or(BasisPoints::ZERO)
    }

    pub fn last_step(&self) -> usize {
        self.steps.len().saturating_sub(1)
    }
}

/// What a guard does when its verdict fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardAction {
    Rollback,
    Hold,
}

/// `[routes.guard]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    pub window: Duration,
    pub min_requests: u64,
    pub max_error_ratio: Option<f64>,
    pub max_error_ratio_vs_stable: Option<f64>,
    pub max_p99: Option<Duration>,
    pub action: GuardAction,
    pub on_rollback: Option<String>,
    /// How the canary is judged: fixed limits over the window, or sequentially.
    pub method: Method,
    /// Whose counts are judged: this replica's, or the fleet's from Prometheus.
    pub source: Source,
}

/// `source` of `[routes.guard]` (DESIGN §12).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Source {
    /// This replica's own counts.
    #[default]
    Local,
    /// The fleet's counts, read from Prometheus' HTTP API at this base URL (`http://`,
    /// no trailing slash); this replica's own counts whenever Prometheus cannot answer.
    Prometheus { url: String },
}

impl Source {
    pub fn prometheus(&self) -> Option<&str> {
        match self {
            Source::Local => None,
            Source::Prometheus { url } => Some(url),
        }
    }
}

/// `method` of `[routes.guard]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// DESIGN §7's fixed limits over the window.
    Threshold,
    /// DESIGN §12's anytime-valid comparison with stable.
    Sequential(sequential::Settings),
}

impl Method {
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Threshold => "threshold",
            Method::Sequential(_) => "sequential",
        }
    }
}

/// Why a canary was rolled back: the `reason` label of `cohort_rollbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    ErrorRatio,
    ErrorRatioVsStable,
    P99,
    Manual,
    SequentialErrors,
    SequentialLatency,
    /// Another replica of the same rollout rolled back, seen through the fleet source.
    Adopted,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::ErrorRatio,
        Reason::ErrorRatioVsStable,
        Reason::P99,
        Reason::Manual,
        Reason::SequentialErrors,
        Reason::SequentialLatency,
        Reason::Adopted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ErrorRatio => "error_ratio",
            Reason::ErrorRatioVsStable => "error_ratio_vs_stable",
            Reason::P99 => "p99",
            Reason::Manual => "manual",
            Reason::SequentialErrors => "sequential_errors",
            Reason::SequentialLatency => "sequential_latency",
            Reason::Adopted => "adopted",
        }
    }

    pub fn parse(text: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Figures of one variant over the guard window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Figures {
    pub requests: u64,
    pub errors: u64,
    pub error_ratio: Option<f64>,
    pub p99_seconds: Option<f64>,
}

impl Figures {
    /// Figures of a sequential judge's counts: no histogram, so no p99.
    pub fn from_tally(tally: &sequential::Tally) -> Figures {
        Figures {
            requests: tally.requests,
            errors: tally.errors,
            error_ratio: (tally.requests > 0).then(|| tally.errors as f64 / tally.requests as f64),
            p99_seconds: None,
        }
    }

    pub fn from_counts(counts: &Counts) -> Figures {
        Figures {
            requests: counts.requests,
            errors: counts.errors,
            error_ratio: (counts.requests > 0)
                .then(|| counts.errors as f64 / counts.requests as f64),
            p99_seconds: quantile(0.99, &counts.histogram),
        }
    }
}

/// The guard's judgement of one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Fewer canary requests than `min_requests`: no judgement.
    TooFewRequests,
    Pass,
    Fail(Reason),
}

impl Verdict {
    /// The three answers of DESIGN §12: `pass`, `fail`, `inconclusive`.
    pub const LABELS: [&'static str; 3] = ["pass", "fail", "inconclusive"];

    pub fn label(&self) -> &'static str {
        match self {
            Verdict::TooFewRequests => "inconclusive",
            Verdict::Pass => "pass",
            Verdict::Fail(_) => "fail",
        }
    }

    /// A sequential judge's answer as a guard verdict.
    pub fn from_sequential(judgement: sequential::Judgement) -> Verdict {
        match judgement {
            sequential::Judgement::Pass => Verdict::Pass,
            sequential::Judgement::Inconclusive => Verdict::TooFewRequests,
            sequential::Judgement::Fail(sequential::Signal::Errors) => {
                Verdict::Fail(Reason::SequentialErrors)
            }
            sequential::Judgement::Fail(sequential::Signal::Latency) => {
                Verdict::Fail(Reason::SequentialLatency)
            }
        }
    }
}

/// Threshold evidence against its limits (DESIGN §12 `cohort_guard_evidence`): errors
/// is the largest of canary ratio / `max_error_ratio` and (canary − stable) /
/// `max_error_ratio_vs_stable`, latency is p99 / `max_p99`; 1 or more fails. `None`
/// where no limit is set or nothing was observed.
pub fn threshold_evidence(
    guard: &Guard,
    canary: &Figures,
    stable: &Figures,
) -> (Option<f64>, Option<f64>) {
    let canary_ratio = canary.error_ratio.unwrap_or(0.0);
    let stable_ratio = stable.error_ratio.unwrap_or(0.0);
    // A limit of 0 makes any excess infinitely over it; a large finite figure keeps
    // the gauge and the JSON body plain numbers.
    let over = |value: f64, max: f64| value / max.max(1e-9);
    let absolute = guard.max_error_ratio.map(|max| over(canary_ratio, max));
    let relative = guard
        .max_error_ratio_vs_stable
        .map(|max| over(canary_ratio - stable_ratio, max));
    let errors = match (absolute, relative) {
        (Some(a), Some(r)) => Some(a.max(r)),
        (a, r) => a.or(r),
    };
    let latency = match (guard.max_p99, canary.p99_seconds) {
        (Some(max), Some(p99)) => Some(over(p99, max.as_secs_f64())),
        _ => None,
    };
    (errors, latency)
}

/// Judges the canary against the guard's thresholds, in a fixed order: error ratio,
/// error ratio against stable, p99.
pub fn verdict(guard: &Guard, canary: &Figures, stable: &Figures) -> Verdict {
    if canary.requests < guard.min_requests.max(1) {
        return Verdict::TooFewRequests;
    }
    let canary_ratio = canary.error_ratio.unwrap_or(0.0);
    if guard.max_error_ratio.is_some_and(|max| canary_ratio > max) {
        return Verdict::Fail(Reason::ErrorRatio);
    }
    let stable_ratio = stable.error_ratio.unwrap_or(0.0);
    if guard
        .max_error_ratio_vs_stable
        .is_some_and(|max| canary_ratio - stable_ratio > max)
    {
        return Verdict::Fail(Reason::ErrorRatioVsStable);
    }
    if let (Some(max), Some(p99)) = (guard.max_p99, canary.p99_seconds) {
        if p99 > max.as_secs_f64() {
            return Verdict::Fail(Reason::P99);
        }
    }
    Verdict::Pass
}

/// The five states of `cohort_rollout_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutState {
    Pending,
    Ramping,
    Holding,
    Complete,
    RolledBack,
}

impl RolloutState {
    pub const ALL: [RolloutState; 5] = [
        RolloutState::Pending,
        RolloutState::Ramping,
        RolloutState::Holding,
        RolloutState::Complete,
        RolloutState::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Pending => "pending",
            RolloutState::Ramping => "ramping",
            RolloutState::Holding => "holding",
            RolloutState::Complete => "complete",
            RolloutState::RolledBack => "rolled_back",
        }
    }
}

/// The share in force for a route, given its schedule position and guard memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    pub share: BasisPoints,
    /// The step in force (the held one while holding); `None` before start or without
    /// a rollout.
    pub step: Option<usize>,
    pub state: RolloutState,
}

/// What one replica remembers of a route beyond its config and the clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// The step a failing `action = "hold"` guard stays on.
    pub held_step: Option<usize>,
    /// A rollback (guard or manual) is in force: cleared only by a resume.
    pub rolled_back: bool,
    /// When the last rollback was resumed: the ramp restarts at `steps[0]` from then.
    pub resumed_at: Option<UnixMillis>,
}

/// Combines schedule, hold, rollback and resume into the share in force (pure).
///
/// - rolled back → 0, whatever the schedule says, on every route;
/// - holding at step h → `steps[h]` (never beyond the schedule's own step);
/// - otherwise the schedule, counted from the last resume when there was one.
///
/// Without a rollout, `canary_percent` is the plan.
pub fn effective(
    rollout: Option<&Rollout>,
    canary_percent: BasisPoints,
    now: UnixMillis,
    memory: Memory,
) -> Effective {
    let Some(rollout) = rollout else {
        return Effective {
            share: if memory.rolled_back {
                BasisPoints::ZERO
            } else {
                canary_percent
            },
            step: None,
            state: if memory.rolled_back {
                RolloutState::RolledBack
            } else {
                RolloutState::Complete
            },
        };
    };
    let scheduled = rollout
        .position_from(rollout.origin(memory.resumed_at), now)
        .step;
    if memory.rolled_back {
        return Effective {
            share: BasisPoints::ZERO,
            step: scheduled,
            state: RolloutState::RolledBack,
        };
    }
    match (scheduled, memory.held_step) {
        (None, _) => Effective {
            share: BasisPoints::ZERO,
            step: None,
            state: RolloutState::Pending,
        },
        (Some(now_step), Some(held)) if held < now_step => Effective {
            share: rollout.share_of(Some(held)),
            step: Some(held),
            state: RolloutState::Holding,
        },
        (Some(now_step), Some(_)) => Effective {
            share: rollout.share_of(Some(now_step)),
            step: Some(now_step),
            state: RolloutState::Holding,
        },
        (Some(now_step), None) => Effective {
            share: rollout.share_of(Some(now_step)),
            step: Some(now_step),
            state: if now_step >= rollout.last_step() {
                RolloutState::Complete
            } else {
                RolloutState::Ramping
            },
        },
    }
}

/// A rollout first seen already past its first step (a `start` in the past, copied
/// from an example, say): every replica computes that step from the clock, which keeps
/// a fleet consistent, but a human should hear that a later step applies at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LateStart {
    /// How long ago the ramp began (its start, or the last resume).
    pub ago_ms: i64,
    pub resumed: bool,
    /// The 0-based step that applies now.
    pub step: usize,
    pub steps: usize,
    pub share: BasisPoints,
}

/// The late start of `rollout` at `now`, if the step in force is past the first.
pub fn late_start(
    rollout: &Rollout,
    now: UnixMillis,
    resumed_at: Option<UnixMillis>,
) -> Option<LateStart> {
    let origin = rollout.origin(resumed_at);
    let step = rollout.position_from(origin, now).step?;
    (step > 0).then(|| LateStart {
        ago_ms: now.saturating_sub(origin),
        resumed: origin != rollout.start,
        step,
        steps: rollout.steps.len(),
        share: rollout.share_of(Some(step)),
    })
}

impl fmt::Display for LateStart {
    /// `started 26 h ago: step 5 of 5 (100 %) applies now`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ago: step {} of {} ({} %) applies now",
            if self.resumed { "resumed" } else { "started" },
            Elapsed(self.ago_ms),
            self.step + 1,
            self.steps,
            self.share
        )
    }
}

/// A span of time for people, in its largest sensible unit: `45 s`, `12 min`, `26 h`,
/// `9 d` (rounded down; a unit is used from twice its size so `90 min` stays exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed(pub i64);

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.0.max(0) / 1000;
        match seconds {
            s if s < 120 => write!(f, "{s} s"),
            s if s < 2 * 3600 => write!(f, "{} min", s / 60),
            s if s < 3 * 86_400 => write!(f, "{} h", s / 3600),
            s => write!(f, "{} d", s / 86_400),
        }
    }
}

/// One line on where a rollout stands at `now`, for `cohort check`: start, steps, the
/// step in force and when the next comes, e.g. `start 2026-12-01T09:00:00Z, steps
/// 1/5/25/50/100 % every 10m; step 3 of 5 (25 %) in force; next step at
/// 2026-12-01T09:30:00Z (in 4 min)`.
pub fn describe_rollout(rollout: &Rollout, now: UnixMillis, memory: Memory) -> String {
    let steps: Vec<String> = rollout.steps.iter().map(ToString::to_string).collect();
    let mut line = format!(
        "start {}, steps {} % every {}",
        rollout.start_text,
        steps.join("/"),
        humantime_like(rollout.step_every)
    );
    if memory.rolled_back {
        line.push_str("; rolled back: canary 0 % until resumed");
        return line;
    }
    let origin = rollout.origin(memory.resumed_at);
    if origin != rollout.start {
        line.push_str(&format!(
            "; resumed at {}: the ramp restarted at step 1",
            format_rfc3339(origin)
        ));
    }
    let position = rollout.position_from(origin, now);
    match position.step {
        None => line.push_str(&format!(
            "; pending: step 1 ({} %) begins at {} (in {})",
            rollout.share_of(Some(0)),
            format_rfc3339(origin),
            Elapsed(origin.saturating_sub(now))
        )),
        Some(step) => line.push_str(&format!(
            "; step {} of {} ({} %) in force",
            step + 1,
            rollout.steps.len(),
            rollout.share_of(Some(step))
        )),
    }
    match (position.step, position.next_at) {
        (Some(_), Some(next)) => line.push_str(&format!(
            "; next step at {} (in {})",
            format_rfc3339(next),
            Elapsed(next.saturating_sub(now))
        )),
        (Some(_), None) => line.push_str("; last step"),
        (None, _) => {}
    }
    line
}

/// One line on a guard's settings, for `cohort check`.
pub fn describe_guard(guard: &Guard) -> String {
    let mut parts = vec![
        format!(
            "action {}",
            match guard.action {
                GuardAction::Rollback => "rollback",
                GuardAction::Hold => "hold",
            }
        ),
        format!("window {}", humantime_like(guard.window)),
        format!("min_requests {}", guard.min_requests),
    ];
    if let Some(max) = guard.max_error_ratio {
        parts.push(format!("max_error_ratio {max}"));
    }
    if let Some(max) = guard.max_error_ratio_vs_stable {
        parts.push(format!("max_error_ratio_vs_stable {max}"));
    }
    if let Some(max) = guard.max_p99 {
        parts.push(format!("max_p99 {}", humantime_like(max)));
    }
    if let Method::Sequential(settings) = guard.method {
        parts.push(format!(
            "method sequential (alpha {}, min_effect {})",
            settings.alpha, settings.min_effect
        ));
        if let Some(over) = settings.latency_over {
            parts.push(format!("latency_over {}", humantime_like(over)));
        }
    }
    if let Some(url) = &guard.on_rollback {
        parts.push(format!("on_rollback {url}"));
    }
    if let Some(url) = guard.source.prometheus() {
        parts.push(format!("fleet counts from Prometheus at {url}"));
    }
    parts.join(", ")
}

/// A config duration as a person wrote it: `10m`, `30s`, `500ms`, `1h30m`.
fn humantime_like(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut rest = ms;
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// RFC 3339 timestamps
// ---------------------------------------------------------------------------------------

/// Parses an RFC 3339 timestamp (`2026-12-01T09:00:00Z`, `2026-12-01T10:00:00.5+01:00`)
/// into milliseconds since the Unix epoch.
pub fn parse_rfc3339(text: &str) -> Result<UnixMillis, String> {
    let bad = || format!("{text:?} is not an RFC 3339 time such as \"2026-12-01T09:00:00Z\"");
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = text.get(range).ok_or_else(bad)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<i64>().map_err(|_| bad())
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let mut rest = &text[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let scaled: String = frac[..digits]
            .chars()
            .chain("000".chars())
            .take(3)
            .collect();
        millis = scaled.parse().map_err(|_| bad())?;
        rest = &frac[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':' =>
        {
            let hours = num(text.len() - 5..text.len() - 3)?;
            let minutes = num(text.len() - 2..text.len())?;
            if hours > 23 || minutes > 59 {
                return Err(bad());
            }
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (hours * 60 + minutes)
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_minutes * 60;
    Ok(seconds * 1000 + millis)
}

/// Formats milliseconds since the epoch as RFC 3339 UTC (`2026-12-01T09:00:00Z`).
pub fn format_rfc3339(millis: UnixMillis) -> String {
    let seconds = millis.div_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests;
