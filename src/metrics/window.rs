//! A sliding window of one (route, variant)'s outcomes: requests, errors and a duration
//! histogram in a fixed number of fixed-width time slots (no allocation per request,
//! bounded memory). The one-minute window feeds `/routes` and the status figures; guards
//! judge their own windows. The clock is passed in.
//!
//! A window has one lane of slots per proxy worker, summed when read (DESIGN §7): each
//! worker thread writes only its own lane, so moving a slot to a new second never races
//! another writer and no count is lost.
//!
//! The one-minute window also keeps the status page's 15-minute history
//! ([`Window::with_history`]) without a second record per request: a request is counted
//! once, in its one-second slot; when the worker reuses that slot a minute later, it first
//! adds the slot's old counts into the 15-second history slot they belong to. A reader
//! adds the seconds still in one-second slots (not yet folded) to the folded ones, so the
//! history is exact and shares its numbers with the figures.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

pub use cohort_core::histogram::{quantile, Counts, DURATION_BUCKETS, HISTOGRAM_LEN};

pub const WINDOW_SECONDS: u64 = 60;
/// Most slots a window has; longer windows get wider slots.
pub const MAX_SLOTS: u64 = 60;
/// Slots of the history: 60 of [`HISTORY_SLOT_SECONDS`], the last 15 minutes.
pub const HISTORY_SLOTS: u64 = 60;
/// Seconds per history slot.
pub const HISTORY_SLOT_SECONDS: u64 = 15;

#[derive(Default)]
struct Slot {
    /// The slot period this slot holds, plus one (0 marks a never-used slot).
    second: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    histogram: [AtomicU64; HISTOGRAM_LEN],
}

/// One 15-second slot of the history, folded from one-second slots. Counts are 32-bit:
/// half the memory of a [`Slot`], and a worker would need 280 million requests a second
/// to overflow one (they saturate rather than wrap).
#[derive(Default)]
struct Span {
    /// The history period this span holds, plus one (0 marks a never-used span).
    period: AtomicU32,
    requests: AtomicU32,
    errors: AtomicU32,
    histogram: [AtomicU32; HISTOGRAM_LEN],
}

impl Slot {
    fn read(&self) -> Counts {
        Counts {
            requests: self.requests.load(Relaxed),
            errors: self.errors.load(Relaxed),
            histogram: std::array::from_fn(|i| self.histogram[i].load(Relaxed)),
        }
    }
}

impl Span {
    fn read(&self) -> Counts {
        Counts {
            requests: u64::from(self.requests.load(Relaxed)),
            errors: u64::from(self.errors.load(Relaxed)),
            histogram: std::array::from_fn(|i| u64::from(self.histogram[i].load(Relaxed))),
        }
    }
}

/// One worker's slots, and its history spans (none for windows without history).
struct Lane {
    slots: Box<[Slot]>,
    history: Box<[Span]>,
}

/// Figures over the window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowStats {
    pub requests: u64,
    pub errors: u64,
    /// Requests per second over the window.
    pub rate: f64,
    /// errors / requests, `None` without requests.
    pub error_ratio: Option<f64>,
    /// Interpolated from the histogram buckets as Prometheus' `histogram_quantile` does.
    pub p99_seconds: Option<f64>,
}

/// The counts of one history slot: `start` is its first second on the window's clock.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HistorySlot {
    pub start: u64,
    pub counts: Counts,
}

pub struct Window {
    /// One lane of slots per worker.
    lanes: Box<[Lane]>,
    /// Slots per lane.
    len: u64,
    /// Seconds per slot.
    width: u64,
}

thread_local! {
    /// The lane this thread records into: its worker index (0 elsewhere).
    static LANE: Cell<usize> = const { Cell::new(0) };
}

/// Makes the calling thread record into lane `worker` of every window (called once by
/// each proxy worker thread as it starts).
pub fn enter_lane(worker: usize) {
    LANE.with(|lane| lane.set(worker));
}

impl Default for Window {
    /// The one-minute window: 60 one-second slots.
    fn default() -> Self {
        Window::covering(WINDOW_SECONDS)
    }
}

impl Window {
    /// A window covering at least `seconds` (at least 1) in at most [`MAX_SLOTS`] slots,
    /// with one lane.
    pub fn covering(seconds: u64) -> Window {
        Window::with_lanes(seconds, 1)
    }

    /// [`Window::covering`] with one lane per worker (at least one).
    pub fn with_lanes(seconds: u64, lanes: usize) -> Window {
        Window::build(seconds, lanes, 0)
    }

    /// [`Window::with_lanes`] that also keeps the last 15 minutes in
    /// [`HISTORY_SLOTS`] slots ([`Window::history`]). Slots of one second or of a width
    /// dividing [`HISTORY_SLOT_SECONDS`] fold exactly; wider ones would land whole in
    /// the history slot of their first second.
    pub fn with_history(seconds: u64, lanes: usize) -> Window {
        Window::build(seconds, lanes, HISTORY_SLOTS)
    }

    fn build(seconds: u64, lanes: usize, history: u64) -> Window {
        let seconds = seconds.max(1);
        let width = seconds.div_ceil(MAX_SLOTS);
        let len = seconds.div_ceil(width);
        let lane = || Lane {
            slots: (0..len).map(|_| Slot::default()).collect(),
            history: (0..history).map(|_| Span::default()).collect(),
        };
        Window {
            lanes: (0..lanes.max(1)).map(|_| lane()).collect(),
            len,
            width,
        }
    }

    fn len(&self) -> u64 {
        self.len
    }

    /// Records one finished request at `now` (whole seconds of any monotonic clock).
    /// An error is a 5xx status or a response the upstream cut.
    pub fn record(&self, now: u64, error: bool, seconds: f64) {
        let period = now / self.width;
        let lane = &self.lanes[LANE.with(Cell::get) % self.lanes.len()];
        let slot = &lane.slots[(period % self.len()) as usize];
        let tag = period + 1;
        let held = slot.second.load(Relaxed);
        if held != tag {
            // The slot held an older second: move its counts into the history (once a
            // second at most, O(1)), then clear them. Only this thread writes this lane,
            // so nothing recorded meanwhile can be lost (a reader summing at this
            // instant may see the slot half cleared, or missing from the history, once).
            if held != 0 && !lane.history.is_empty() {
                slot.second.store(0, Relaxed);
                self.fold(lane, slot, held - 1);
            }
            slot.requests.store(0, Relaxed);
            slot.errors.store(0, Relaxed);
            for bucket in &slot.histogram {
                bucket.store(0, Relaxed);
            }
            slot.second.store(tag, Relaxed);
        }
        slot.requests.fetch_add(1, Relaxed);
        if error {
            slot.errors.fetch_add(1, Relaxed);
        }
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|&upper| seconds <= upper)
            .unwrap_or(DURATION_BUCKETS.len());
        slot.histogram[bucket].fetch_add(1, Relaxed);
    }

    /// Adds the counts of `slot`, which held `period`, to the history span of its time.
    fn fold(&self, lane: &Lane, slot: &Slot, period: u64) {
        let history_period = period * self.width / HISTORY_SLOT_SECONDS;
        let span = &lane.history[(history_period % lane.history.len() as u64) as usize];
        let tag = u32::try_from(history_period + 1).unwrap_or(u32::MAX);
        let held = span.period.load(Relaxed);
        if held > tag {
            // A newer period holds this span: this second is older than the history.
            return;
        }
        if held < tag {
            span.requests.store(0, Relaxed);
            span.errors.store(0, Relaxed);
            for bucket in &span.histogram {
                bucket.store(0, Relaxed);
            }
            span.period.store(tag, Relaxed);
        }
        let add = |into: &AtomicU32, from: &AtomicU64| {
            let count = u32::try_from(from.load(Relaxed)).unwrap_or(u32::MAX);
            if count > 0 {
                let _ = into.fetch_update(Relaxed, Relaxed, |old| Some(old.saturating_add(count)));
            }
        };
        add(&span.requests, &slot.requests);
        add(&span.errors, &slot.errors);
        for (into, from) in span.histogram.iter().zip(&slot.histogram) {
            add(into, from);
        }
    }

    /// The last 15 minutes ending at `now`, oldest first, one entry per history slot
    /// since the clock's start (at most [`HISTORY_SLOTS`]); empty for windows without
    /// history. Folded spans and the seconds still in one-second slots are added up.
    pub fn history(&self, now: u64) -> Vec<HistorySlot> {
        if self.lanes.iter().all(|lane| lane.history.is_empty()) {
            return Vec::new();
        }
        let current = now / HISTORY_SLOT_SECONDS;
        let oldest = current.saturating_sub(HISTORY_SLOTS - 1);
        let mut slots: Vec<HistorySlot> = (oldest..=current)
            .map(|period| HistorySlot {
                start: period * HISTORY_SLOT_SECONDS,
                counts: Counts::default(),
            })
            .collect();
        let mut add = |period: u64, counts: Counts| {
            let Some(slot) = period
                .checked_sub(oldest)
                .filter(|_| period <= current)
                .and_then(|i| slots.get_mut(i as usize))
            else {
                return;
            };
            slot.counts.requests += counts.requests;
            slot.counts.errors += counts.errors;
            for (sum, count) in slot.counts.histogram.iter_mut().zip(counts.histogram) {
                *sum += count;
            }
        };
        for lane in self.lanes.iter() {
            for span in lane.history.iter() {
                if let Some(period) = span.period.load(Relaxed).checked_sub(1) {
                    add(u64::from(period), span.read());
                }
            }
            for slot in lane.slots.iter() {
                if let Some(period) = slot.second.load(Relaxed).checked_sub(1) {
                    add(period * self.width / HISTORY_SLOT_SECONDS, slot.read());
                }
            }
        }
        slots
    }

    /// Sums over the slots of the last `len` periods, the current one included.
    pub fn counts(&self, now: u64) -> Counts {
        let period = now / self.width;
        let oldest = period.saturating_sub(self.len() - 1) + 1;
        let mut counts = Counts::default();
        for slot in self.lanes.iter().flat_map(|lane| lane.slots.iter()) {
            let tag = slot.second.load(Relaxed);
            if tag < oldest || tag > period + 1 {
                continue;
            }
            counts.requests += slot.requests.load(Relaxed);
            counts.errors += slot.errors.load(Relaxed);
            for (sum, bucket) in counts.histogram.iter_mut().zip(&slot.histogram) {
                *sum += bucket.load(Relaxed);
            }
        }
        counts
    }

    /// The period (slot index in time) that second `now` falls in, and how many past
    /// periods [`Window::period_counts`] can still read.
    pub fn period_of(&self, now: u64) -> (u64, u64) {
        (now / self.width, self.len())
    }

    /// The counts of one period alone, summed over lanes (zeros once its slots hold a
    /// later period): what a sequential guard folds in, one period at a time.
    pub fn period_counts(&self, period: u64) -> Counts {
        let mut counts = Counts::default();
        for lane in self.lanes.iter() {
            let slot = &lane.slots[(period % self.len()) as usize];
            if slot.second.load(Relaxed) != period + 1 {
                continue;
            }
            counts.requests += slot.requests.load(Relaxed);
            counts.errors += slot.errors.load(Relaxed);
            for (sum, bucket) in counts.histogram.iter_mut().zip(&slot.histogram) {
                *sum += bucket.load(Relaxed);
            }
        }
        counts
    }

    /// Forgets everything, history included (a deliberate resume starts a fresh window).
    pub fn clear(&self) {
        for lane in self.lanes.iter() {
            for slot in lane.slots.iter() {
                slot.second.store(0, Relaxed);
            }
            for span in lane.history.iter() {
                span.period.store(0, Relaxed);
            }
        }
    }

    /// Figures over the window ending at `now`.
    pub fn stats(&self, now: u64) -> WindowStats {
        let counts = self.counts(now);
        // Before the window has filled, the rate is over the time there was.
        let span = (now + 1).min(self.len() * self.width) as f64;
        WindowStats {
            requests: counts.requests,
            errors: counts.errors,
            rate: counts.requests as f64 / span,
            error_ratio: (counts.requests > 0)
                .then(|| counts.errors as f64 / counts.requests as f64),
            p99_seconds: quantile(0.99, &counts.histogram),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_record_into_their_own_lanes_and_nothing_is_lost() {
        // Four workers racing through the same 60 seconds at once, each moving slots to
        // new seconds as it goes: with a lane each, every request is still there. (With
        // one shared lane, a worker clearing a slot wipes what another just counted.)
        const PER_WORKER: u64 = 600_000;
        let window = std::sync::Arc::new(Window::with_lanes(60, 4));
        let start = std::sync::Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|worker| {
                let (window, start) = (window.clone(), start.clone());
                std::thread::spawn(move || {
                    enter_lane(worker);
                    start.wait();
                    for i in 0..PER_WORKER {
                        window.record(100 + i / 10_000, i % 10 == 0, 0.001);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("worker thread");
        }
        let counts = window.counts(159);
        assert_eq!(
            (counts.requests, counts.errors),
            (4 * PER_WORKER, 4 * PER_WORKER / 10)
        );
        assert_eq!(counts.histogram.iter().sum::<u64>(), 4 * PER_WORKER);
        window.clear();
        assert_eq!(window.counts(159).requests, 0);
    }

    #[test]
    fn counts_requests_errors_and_rate_over_the_last_minute() {
        let w = Window::default();
        for s in 100..160 {
            w.record(s, s % 10 == 0, 0.002);
        }
        let stats = w.stats(159);
        assert_eq!((stats.requests, stats.errors), (60, 6));
        assert!((stats.rate - 1.0).abs() < 1e-9);
        assert_eq!(stats.error_ratio, Some(0.1));
        // A minute later, the old seconds no longer count.
        assert_eq!(w.stats(219).requests, 0);
        assert_eq!(w.stats(160).requests, 59);
    }

    #[test]
    fn a_reused_slot_forgets_its_old_second() {
        let w = Window::default();
        w.record(5, true, 0.001);
        w.record(65, false, 0.001);
        let stats = w.stats(65);
        assert_eq!((stats.requests, stats.errors), (1, 0));
    }

    #[test]
    fn long_windows_use_wider_slots_and_stay_bounded() {
        let w = Window::covering(300);
        assert_eq!((w.len(), w.width), (60, 5));
        for s in 0..300 {
            w.record(1000 + s, false, 0.001);
        }
        assert_eq!(w.counts(1299).requests, 300);
        // 30 s later the oldest 30 s (six slots) have left the window.
        assert_eq!(w.counts(1329).requests, 270);
        let short = Window::covering(30);
        assert_eq!((short.len(), short.width), (30, 1));
        short.record(5, true, 0.001);
        short.clear();
        assert_eq!(short.counts(5).requests, 0);
    }

    /// (start, requests, errors) of each history slot.
    fn totals(history: &[HistorySlot]) -> Vec<(u64, u64, u64)> {
        history
            .iter()
            .map(|s| (s.start, s.counts.requests, s.counts.errors))
            .collect()
    }

    #[test]
    fn the_history_holds_what_the_minute_counted_in_fifteen_second_slots() {
        let w = Window::with_history(WINDOW_SECONDS, 1);
        // Two requests a second for two minutes, one error every 10 s: the first
        // minute's seconds have been folded into the history as the second minute
        // reused their slots; the second minute's are still in one-second slots.
        for s in 0..120 {
            w.record(s, s % 10 == 0, 0.002);
            w.record(s, false, 0.002);
        }
        let history = w.history(119);
        assert_eq!(history.len(), 8, "slots since the clock started");
        for (i, slot) in history.iter().enumerate() {
            assert_eq!(slot.start, i as u64 * 15);
            assert_eq!(slot.counts.requests, 30, "slot {i}");
            assert_eq!(slot.counts.histogram[2], 30, "1–2.5 ms bucket, slot {i}");
        }
        let errors: u64 = history.iter().map(|s| s.counts.errors).sum();
        assert_eq!(errors, 12);
        // The figures and the history are the same numbers.
        let minute: u64 = history[4..].iter().map(|s| s.counts.requests).sum();
        assert_eq!(minute, w.counts(119).requests);
        // Windows without history have none, and record as before.
        let plain = Window::with_lanes(60, 2);
        plain.record(5, false, 0.001);
        plain.record(70, false, 0.001);
        assert!(plain.history(70).is_empty());
    }

    #[test]
    fn the_history_keeps_fifteen_minutes_and_forgets_what_is_older() {
        let w = Window::with_history(WINDOW_SECONDS, 1);
        w.record(3, true, 0.001);
        // Never reused, the second-3 slot still counts while it is in the 15 minutes...
        assert_eq!(totals(&w.history(899)[..1]), vec![(0, 1, 1)]);
        assert_eq!(w.history(899).len(), 60);
        // ...and drops out after them.
        let later = w.history(900);
        assert_eq!((later[0].start, later.len()), (15, 60));
        assert!(later.iter().all(|s| s.counts.requests == 0));
        // A second folded after a newer one took its span is dropped, not mixed in: the
        // slot of second 6 is reused only at 966, after second 905 (same span) folded.
        let w = Window::with_history(WINDOW_SECONDS, 1);
        w.record(6, false, 0.001);
        w.record(905, false, 0.001);
        w.record(965, false, 0.001); // folds 905 into span 0
        w.record(966, false, 0.001); // folds 6, whose span now holds 905
        let history = w.history(966);
        assert_eq!(history.iter().map(|s| s.counts.requests).sum::<u64>(), 3);
        assert_eq!(history.first().map(|s| s.start), Some(75));
        // Idle for an hour, then one request: the hour-old slot folds into a span whose
        // time is long gone, and the history shows only the new request.
        let w = Window::with_history(WINDOW_SECONDS, 1);
        w.record(10, false, 0.001);
        w.record(3610, false, 0.001); // same one-second slot: folds second 10
        let history = w.history(3610);
        assert_eq!(history.iter().map(|s| s.counts.requests).sum::<u64>(), 1);
        assert_eq!(history.last().map(|s| s.counts.requests), Some(1));
    }

    #[test]
    fn every_lane_folds_into_its_own_history() {
        let w = std::sync::Arc::new(Window::with_history(WINDOW_SECONDS, 3));
        let threads: Vec<_> = (0..3)
            .map(|worker| {
                let w = w.clone();
                std::thread::spawn(move || {
                    enter_lane(worker);
                    for s in 0..180 {
                        w.record(s, worker == 2, 0.03);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("worker thread");
        }
        let history = w.history(179);
        assert_eq!(history.len(), 12);
        assert!(totals(&history)
            .iter()
            .all(|&(_, requests, errors)| (requests, errors) == (45, 15)));
        let p99 = quantile(0.99, &history[0].counts.histogram);
        assert!(p99.is_some_and(|p| p > 0.025 && p <= 0.05), "{p99:?}");
        w.clear();
        assert!(w.history(179).iter().all(|s| s.counts.requests == 0));
    }

    #[test]
    fn p99_of_a_window_sees_the_slow_tail() {
        let w = Window::default();
        for i in 0..1000 {
            w.record(10, false, if i < 980 { 0.003 } else { 0.7 });
        }
        let p99 = w.stats(10).p99_seconds.unwrap();
        assert!(p99 > 0.5 && p99 <= 1.0, "{p99}");
    }

    #[test]
    fn verdict_reads_a_real_window_on_a_fake_clock() {
        use crate::rollout::{verdict, Figures, Guard, GuardAction, Reason, Verdict};
        use std::time::Duration;
        let g = Guard {
            window: Duration::from_secs(30),
            min_requests: 50,
            max_error_ratio: Some(0.05),
            max_error_ratio_vs_stable: Some(0.02),
            max_p99: Some(Duration::from_millis(500)),
            action: GuardAction::Rollback,
            on_rollback: None,
            method: crate::rollout::Method::Threshold,
            source: crate::rollout::Source::Local,
        };
        let (canary, stable) = (Window::covering(30), Window::covering(30));
        for s in 0..30u64 {
            for i in 0..10 {
                canary.record(100 + s, s >= 20 && i < 5, 0.004);
                stable.record(100 + s, false, 0.004);
            }
        }
        let judge = |now| {
            verdict(
                &g,
                &Figures::from_counts(&canary.counts(now)),
                &Figures::from_counts(&stable.counts(now)),
            )
        };
        // Seconds 120..130 had 50 % errors: 50 of 300 is 16.7 %.
        assert_eq!(judge(129), Verdict::Fail(Reason::ErrorRatio));
        // 40 s later the bad seconds have left the window, and so has almost all traffic.
        assert_eq!(judge(169), Verdict::TooFewRequests);
        let f = Figures::from_counts(&canary.counts(129));
        assert_eq!((f.requests, f.errors), (300, 50));
        assert!(f.p99_seconds.expect("p99") <= 0.005);
    }
}
