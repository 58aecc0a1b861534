//! A sliding window of one (route, variant)'s outcomes: requests, errors and a duration
//! histogram in a fixed number of fixed-width time slots (no allocation per request,
//! bounded memory). The one-minute window feeds `/routes` and the status figures; guards
//! judge their own windows. The clock is passed in.
//!
//! A window has one lane of slots per proxy worker, summed when read (DESIGN §7): each
//! worker thread writes only its own lane, so moving a slot to a new second never races
//! another writer and no count is lost.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::metrics::DURATION_BUCKETS;

pub const WINDOW_SECONDS: u64 = 60;
/// Most slots a window has; longer windows get wider slots.
pub const MAX_SLOTS: u64 = 60;
/// One count per finite bucket, plus the `+Inf` overflow.
pub const HISTOGRAM_LEN: usize = DURATION_BUCKETS.len() + 1;

#[derive(Default)]
struct Slot {
    /// The slot period this slot holds, plus one (0 marks a never-used slot).
    second: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    histogram: [AtomicU64; HISTOGRAM_LEN],
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

/// Raw sums over a window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub histogram: [u64; HISTOGRAM_LEN],
}

pub struct Window {
    /// One lane of slots per worker.
    lanes: Box<[Box<[Slot]>]>,
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
        let seconds = seconds.max(1);
        let width = seconds.div_ceil(MAX_SLOTS);
        let len = seconds.div_ceil(width);
        let lane = || (0..len).map(|_| Slot::default()).collect();
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
        let slot = &lane[(period % self.len()) as usize];
        let tag = period + 1;
        if slot.second.load(Relaxed) != tag {
            // The slot held an older second: clear its counts. Only this thread writes
            // this lane, so nothing recorded meanwhile can be lost (a reader summing at
            // this instant may see the slot half cleared, once).
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

    /// Sums over the slots of the last `len` periods, the current one included.
    pub fn counts(&self, now: u64) -> Counts {
        let period = now / self.width;
        let oldest = period.saturating_sub(self.len() - 1) + 1;
        let mut counts = Counts::default();
        for slot in self.lanes.iter().flat_map(|lane| lane.iter()) {
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

    /// Forgets everything (a deliberate resume starts a fresh window).
    pub fn clear(&self) {
        for slot in self.lanes.iter().flat_map(|lane| lane.iter()) {
            slot.second.store(0, Relaxed);
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

/// The q-quantile of bucket counts (non-cumulative, last = +Inf), interpolated linearly
/// within the bucket as Prometheus' `histogram_quantile` does: a quantile in the first
/// bucket interpolates from 0, one in the `+Inf` bucket answers the highest finite bound.
pub fn quantile(q: f64, counts: &[u64; HISTOGRAM_LEN]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut cumulative = 0u64;
    for (i, &count) in counts.iter().enumerate() {
        let below = cumulative;
        cumulative += count;
        if (cumulative as f64) >= rank && count > 0 {
            let Some(&upper) = DURATION_BUCKETS.get(i) else {
                return DURATION_BUCKETS.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { DURATION_BUCKETS[i - 1] };
            let into = (rank - below as f64) / count as f64;
            return Some(lower + (upper - lower) * into);
        }
    }
    DURATION_BUCKETS.last().copied()
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

    #[test]
    fn p99_interpolates_like_histogram_quantile() {
        // 100 requests in the 1ms..2.5ms bucket: the 99th is at 99 % of that bucket.
        let mut counts = [0u64; HISTOGRAM_LEN];
        counts[2] = 100;
        let p99 = quantile(0.99, &counts).unwrap();
        assert!((p99 - (0.001 + 0.0015 * 0.99)).abs() < 1e-12, "{p99}");
        // Everything in the first bucket interpolates from zero.
        let mut first = [0u64; HISTOGRAM_LEN];
        first[0] = 10;
        assert!((quantile(0.5, &first).unwrap() - 0.00025).abs() < 1e-12);
        // The +Inf bucket answers the highest finite bound.
        let mut slow = [0u64; HISTOGRAM_LEN];
        slow[HISTOGRAM_LEN - 1] = 5;
        assert_eq!(quantile(0.99, &slow), Some(10.0));
        assert_eq!(quantile(0.99, &[0; HISTOGRAM_LEN]), None);
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
}
