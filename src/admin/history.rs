//! The status page's last 15 minutes of one route: per variant the request rate, error
//! ratio and p99 in 15-second slots (read from the one-minute windows, which keep them;
//! see [`crate::metrics::window`]), and the events that belong on the charts' time axis: rollout
//! steps, share changes, rollbacks and resumes, in a small ring per route identity.
//!
//! Served as `GET /routes/{name}/history` and drawn by [`crate::admin::charts`]. It is not part
//! of `/routes`: 120 points per route would make that document, which scripts poll and
//! which answers every change, ten times heavier for a picture only the page draws.

use std::collections::VecDeque;

use serde_json::{json, Value};

use crate::cohort::BasisPoints;
use crate::metrics::window::{quantile, HistorySlot, HISTORY_SLOTS, HISTORY_SLOT_SECONDS};
use crate::rollout::{format_rfc3339, Effective, Reason, RolloutState, UnixMillis};

/// Events a route keeps: far more than 15 minutes of steps and rollbacks normally hold.
pub const EVENTS_KEPT: usize = 32;

/// What happened to a route's share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A rollout moved to another step.
    Step,
    /// The share changed without a step change (`cohort set`, an edited config).
    Percent,
    /// The canary's share went to 0: a guard's verdict or a manual rollback.
    Rollback,
    /// A rollback was cleared.
    Resume,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Step => "step",
            EventKind::Percent => "percent",
            EventKind::Rollback => "rollback",
            EventKind::Resume => "resume",
        }
    }
}

/// One event on a route's time axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at: UnixMillis,
    pub kind: EventKind,
    /// The rollout step (0-based) in force from this event on; for a rollback, the one
    /// it ended.
    pub step: Option<usize>,
    /// The share in force from this event on; for a rollback, the one it ended.
    pub percent: Option<BasisPoints>,
    pub reason: Option<Reason>,
}

/// The event ring of one route identity. Rollbacks and resumes are recorded where they
/// happen (`crate::runtime::guard`); steps and share changes are noticed by comparing what
/// `RouteState::refresh` computes with what was in force before.
#[derive(Debug, Default)]
pub struct Events {
    ring: VecDeque<Event>,
    /// The step and share last seen in force outside a rollback; `None` until the first
    /// look, which is a baseline, not an event.
    in_force: Option<(Option<usize>, BasisPoints)>,
}

impl Events {
    fn push(&mut self, event: Event) {
        if self.ring.len() == EVENTS_KEPT {
            self.ring.pop_front();
        }
        self.ring.push_back(event);
    }

    /// A rollback at `at`, ending the step and share last seen in force.
    pub fn rolled_back(&mut self, reason: Reason, at: UnixMillis) {
        let (step, percent) = self.in_force.map_or((None, None), |(s, p)| (s, Some(p)));
        self.push(Event {
            at,
            kind: EventKind::Rollback,
            step,
            percent,
            reason: Some(reason),
        });
    }

    /// A resume at `at`; the step it restarts at follows as a step event.
    pub fn resumed(&mut self, at: UnixMillis) {
        self.push(Event {
            at,
            kind: EventKind::Resume,
            step: None,
            percent: None,
            reason: None,
        });
    }

    /// What is in force at `at`, as computed by a refresh. Nothing is noted while the
    /// route is rolled back (the rollback event says it all), by the memory's word or
    /// the computation's: a refresh that read the memory just before a rollback or a
    /// resume must not pass for a step.
    pub fn observe(&mut self, effective: &Effective, rolled_back: bool, at: UnixMillis) {
        if rolled_back || effective.state == RolloutState::RolledBack {
            return;
        }
        let now = (effective.step, effective.share);
        let Some((step, share)) = self.in_force.replace(now) else {
            return;
        };
        let kind = if effective.step.is_some() && effective.step != step {
            EventKind::Step
        } else if effective.share != share {
            EventKind::Percent
        } else {
            return;
        };
        self.push(Event {
            at,
            kind,
            step: effective.step,
            percent: Some(effective.share),
            reason: None,
        });
    }

    /// The events kept, oldest first.
    pub fn list(&self) -> Vec<Event> {
        self.ring.iter().cloned().collect()
    }
}

/// One variant's history slots as chart points: the start of each slot in wall time
/// (`wall` maps the windows' clock to it), its requests, rate, error ratio and p99
/// (`null` without requests: no traffic is not a zero error ratio). The slot still
/// filling at `clock_now` has its rate over the seconds it has had.
fn points(slots: &[HistorySlot], clock_now: u64, wall: &dyn Fn(u64) -> UnixMillis) -> Value {
    slots
        .iter()
        .map(|slot| {
            let counts = &slot.counts;
            let seconds = clock_now
                .saturating_sub(slot.start)
                .saturating_add(1)
                .min(HISTORY_SLOT_SECONDS);
            json!({
                "t": format_rfc3339(wall(slot.start)),
                "requests": counts.requests,
                "rate": counts.requests as f64 / seconds as f64,
                "error_ratio": (counts.requests > 0)
                    .then(|| counts.errors as f64 / counts.requests as f64),
                "p99_seconds": quantile(0.99, &counts.histogram),
            })
        })
        .collect()
}

fn event_json(event: &Event) -> Value {
    json!({
        "at": format_rfc3339(event.at),
        "kind": event.kind.as_str(),
        "step": event.step,
        "percent": event.percent,
        "reason": event.reason.map(Reason::as_str),
    })
}

/// The variants' history of one route and its events, as `GET /routes/{name}/history`
/// serves it. `clock_now` is the windows' clock, `wall_now` the wall time at that
/// moment, and `wall` maps the windows' clock to wall time.
pub fn history_json(
    route: &str,
    stable: &[HistorySlot],
    canary: &[HistorySlot],
    events: &[Event],
    clock_now: u64,
    wall_now: UnixMillis,
    wall: &dyn Fn(u64) -> UnixMillis,
) -> Value {
    json!({
        "route": route,
        "slot_seconds": HISTORY_SLOT_SECONDS,
        "slots": HISTORY_SLOTS,
        "now": format_rfc3339(wall_now),
        "stable": points(stable, clock_now, wall),
        "canary": points(canary, clock_now, wall),
        "events": events.iter().map(event_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::window::Counts;

    fn bp(percent: f64) -> BasisPoints {
        BasisPoints::from_percent(percent).expect("a valid percentage")
    }

    fn effective(step: Option<usize>, percent: f64, state: RolloutState) -> Effective {
        Effective {
            share: bp(percent),
            step,
            state,
        }
    }

    #[test]
    fn steps_rollbacks_and_resumes_are_noted_once_each() {
        let mut events = Events::default();
        let ramping = RolloutState::Ramping;
        // The first look is a baseline; looking again at the same thing notes nothing.
        events.observe(&effective(Some(0), 1.0, ramping), false, 1_000);
        events.observe(&effective(Some(0), 1.0, ramping), false, 1_250);
        events.observe(&effective(Some(1), 5.0, ramping), false, 2_000);
        events.rolled_back(Reason::ErrorRatio, 3_000);
        // While rolled back, the schedule moving on is no event.
        events.observe(
            &effective(Some(2), 0.0, RolloutState::RolledBack),
            true,
            3_250,
        );
        // A refresh that computed its share before the rollback landed says nothing.
        events.observe(&effective(Some(1), 5.0, ramping), true, 3_260);
        events.resumed(4_000);
        events.observe(&effective(Some(0), 1.0, ramping), false, 4_000);
        let kinds: Vec<_> = events
            .list()
            .iter()
            .map(|e| (e.at, e.kind, e.step, e.percent, e.reason))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (2_000, EventKind::Step, Some(1), Some(bp(5.0)), None),
                (
                    3_000,
                    EventKind::Rollback,
                    Some(1),
                    Some(bp(5.0)),
                    Some(Reason::ErrorRatio)
                ),
                (4_000, EventKind::Resume, None, None, None),
                (4_000, EventKind::Step, Some(0), Some(bp(1.0)), None),
            ]
        );
    }

    #[test]
    fn a_plain_route_notes_share_changes_and_the_ring_stays_bounded() {
        let mut events = Events::default();
        let complete = RolloutState::Complete;
        events.observe(&effective(None, 10.0, complete), false, 0);
        for i in 1..=100 {
            let percent = if i % 2 == 0 { 10.0 } else { 25.0 };
            events.observe(&effective(None, percent, complete), false, i);
        }
        let list = events.list();
        assert_eq!(list.len(), EVENTS_KEPT);
        assert_eq!(
            list.first().map(|e| e.at),
            Some(100 - EVENTS_KEPT as i64 + 1)
        );
        assert!(list.iter().all(|e| e.kind == EventKind::Percent));
        assert_eq!(list.last().and_then(|e| e.percent), Some(bp(10.0)));
        // A manual rollback of a plain route names the share it ended.
        events.rolled_back(Reason::Manual, 200);
        let json = event_json(events.list().last().expect("an event"));
        assert_eq!(
            json,
            json!({"at": "1970-01-01T00:00:00Z", "kind": "rollback", "step": null,
                   "percent": 10, "reason": "manual"})
        );
    }

    #[test]
    fn points_carry_rates_ratios_and_gaps() {
        let mut busy = Counts {
            requests: 30,
            errors: 3,
            ..Counts::default()
        };
        busy.histogram[2] = 30;
        let slots = [
            HistorySlot {
                start: 0,
                counts: busy,
            },
            HistorySlot {
                start: 15,
                counts: Counts::default(),
            },
            HistorySlot {
                start: 30,
                counts: busy,
            },
        ];
        // The windows' clock started at 2026-12-02T10:00:00Z; it is 34 s later.
        let start = crate::rollout::parse_rfc3339("2026-12-02T10:00:00Z").expect("time");
        let wall = |s: u64| start + s as i64 * 1000;
        let doc = history_json("web", &slots, &[], &[], 34, wall(34), &wall);
        assert_eq!(doc["now"], "2026-12-02T10:00:34Z");
        assert_eq!(doc["slot_seconds"], 15);
        let stable = doc["stable"].as_array().expect("points");
        assert_eq!(stable.len(), 3);
        assert_eq!(stable[0]["t"], "2026-12-02T10:00:00Z");
        assert_eq!(stable[0]["rate"], 2.0);
        assert_eq!(stable[0]["error_ratio"], 0.1);
        let p99 = stable[0]["p99_seconds"].as_f64().expect("a p99");
        assert!((p99 - (0.001 + 0.0015 * 0.99)).abs() < 1e-12);
        // No traffic: a zero rate, and no ratio or p99 at all.
        assert_eq!(stable[1]["rate"], 0.0);
        assert!(stable[1]["error_ratio"].is_null() && stable[1]["p99_seconds"].is_null());
        // The slot still filling: 30 requests in the 5 seconds it has had.
        assert_eq!(stable[2]["rate"], 6.0);
        assert_eq!(doc["canary"], json!([]));
    }
}
