//! A fleet guard's memory of what it read from Prometheus (DESIGN §12): written by
//! `crate::runtime::fleet` once a second, judged by the evaluator while fresh. Part of
//! a route's [`GuardState`], under its one lock, so a resume clears it with the rest.

use std::time::Duration;

use super::{GuardState, Judged};
use crate::rollout::fleet;
use crate::rollout::sequential::{self, Sequential};
use crate::rollout::{Figures, Guard, Method, UnixMillis};

/// A fleet guard's reading of Prometheus (DESIGN §12), written by
/// `crate::runtime::fleet` and judged here.
#[derive(Default)]
pub(super) struct FleetMemory {
    /// The last successful read; `None` once a read fails, so the next evaluation
    /// judges local counts at once.
    last: Option<FleetReading>,
    /// A sequential guard's judge on the fleet's increments, and what makes them.
    run: Option<FleetRun>,
    /// Why reads fail, while they do.
    failing: Option<String>,
}

struct FleetReading {
    at: tokio::time::Instant,
    peers: fleet::Peers,
    /// Threshold guards: the fleet's figures over the window.
    window: Option<(Figures, Figures)>,
}

struct FleetRun {
    judge: Sequential,
    differ: fleet::Differencer,
    window: Duration,
}

/// A fleet read older than this is not judged on (the reader is stuck).
pub(super) const FLEET_STALE_AFTER: Duration = Duration::from_secs(5);

/// Whose counts a judgement was made on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Evidence {
    /// This replica's (no fleet source).
    Local,
    /// The fleet's, read from Prometheus: this many replicas run the rollout.
    Fleet { replicas: u64 },
    /// This replica's, because Prometheus could not answer (why).
    Fallback { error: String },
}

impl GuardState {
    /// When this route was last resumed, in this process or (rollout routes) before a
    /// restart: a fleet guard does not adopt rollbacks that were already in force then.
    pub(crate) fn last_resume(&self) -> Option<UnixMillis> {
        let memory = self.lock();
        memory.last_resume.or(memory.resumed_at)
    }

    /// Records a successful fleet read begun before `resumes` resumes (dropped if a
    /// resume came since: its evidence predates the fresh start).
    pub(crate) fn fleet_read(
        &self,
        resumes: u64,
        peers: fleet::Peers,
        window: Option<(Figures, Figures)>,
    ) -> bool {
        let mut memory = self.lock();
        if memory.resumes != resumes {
            return false;
        }
        memory.fleet.last = Some(FleetReading {
            at: tokio::time::Instant::now(),
            peers,
            window,
        });
        memory.fleet.failing.take();
        true
    }

    /// Folds the fleet's counters (an answer to the counters query) into the fleet's
    /// sequential judge, which restarts when its settings or window change.
    pub(crate) fn fleet_counters(
        &self,
        resumes: u64,
        settings: sequential::Settings,
        samples: &[fleet::Sample],
    ) -> bool {
        let mut memory = self.lock();
        if memory.resumes != resumes {
            return false;
        }
        let run = match &mut memory.fleet.run {
            Some(run) if run.judge.settings == settings && run.window == self.window_len => run,
            slot => slot.insert(FleetRun {
                judge: Sequential::new(settings),
                differ: fleet::Differencer::new(),
                window: self.window_len,
            }),
        };
        let (stable, canary) = run.differ.advance(samples, settings.slow_bucket());
        run.judge.update(&canary, &stable);
        true
    }

    /// Records a failed fleet read: judged locally from the next evaluation. Returns
    /// the error it replaces (`None` when reads were fine until now).
    pub(crate) fn fleet_failed(&self, error: String) -> Option<String> {
        let mut memory = self.lock();
        memory.fleet.last = None;
        memory.fleet.failing.replace(error)
    }

    /// Why the last fleet read failed, while reads fail (`None` once one succeeds).
    pub(crate) fn fleet_failing(&self) -> Option<String> {
        self.lock().fleet.failing.clone()
    }

    /// The fleet's judgement at `at`, if a fresh read is in: the verdict on the fleet's
    /// counts, and how many replicas of the rollout are rolled back.
    pub(super) fn judge_fleet(
        &self,
        guard: &Guard,
        at: tokio::time::Instant,
    ) -> Option<(Judged, u64)> {
        let memory = self.lock();
        let reading = memory.fleet.last.as_ref()?;
        if at.saturating_duration_since(reading.at) > FLEET_STALE_AFTER {
            return None;
        }
        let evidence = Evidence::Fleet {
            replicas: reading.peers.replicas,
        };
        let judged = match (guard.method, &reading.window, &memory.fleet.run) {
            (Method::Threshold, Some((canary, stable)), _) => {
                Judged::by_threshold(guard, *canary, *stable, evidence)
            }
            (Method::Sequential(_), _, Some(run)) => {
                let (canary, stable) = (&run.judge.canary, &run.judge.stable);
                let (canary, stable) = (Figures::from_tally(canary), Figures::from_tally(stable));
                Judged::by_sequential(guard, &run.judge, canary, stable, evidence)
            }
            _ => return None,
        };
        Some((judged, reading.peers.rolled_back))
    }
}
