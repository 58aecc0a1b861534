//! The duration histogram's buckets and the arithmetic on bucket counts that every
//! figure cohort shows or judges is derived from: sums over a window and the quantile
//! interpolated as Prometheus' `histogram_quantile` does.

/// Histogram buckets of `cohort_request_duration_seconds`, in seconds (DESIGN §5).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One count per finite bucket, plus the `+Inf` overflow.
pub const HISTOGRAM_LEN: usize = DURATION_BUCKETS.len() + 1;

/// The index of the bucket whose upper bound is `seconds`, if one is: a latency limit
/// judged from the histogram (`latency_over`) must be a bound, or it would be rounded.
pub fn bound_index(seconds: f64) -> Option<usize> {
    DURATION_BUCKETS
        .iter()
        .position(|bound| (bound - seconds).abs() < 1e-9)
}

/// The count of requests slower than the bucket bound at `index` (all the buckets above
/// it, `+Inf` included).
pub fn slower_than(index: usize, counts: &[u64; HISTOGRAM_LEN]) -> u64 {
    counts[index + 1..].iter().sum()
}

/// Raw sums over a window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub histogram: [u64; HISTOGRAM_LEN],
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
    fn slow_requests_are_counted_above_a_bound() {
        assert_eq!(bound_index(0.25), Some(8));
        assert_eq!(bound_index(0.3), None, "not a bound");
        let mut counts = [0u64; HISTOGRAM_LEN];
        counts[8] = 7; // 100–250 ms: not slower than 250 ms
        counts[9] = 2;
        counts[HISTOGRAM_LEN - 1] = 1;
        assert_eq!(slower_than(8, &counts), 3);
        assert_eq!(slower_than(DURATION_BUCKETS.len() - 1, &counts), 1);
    }
}
