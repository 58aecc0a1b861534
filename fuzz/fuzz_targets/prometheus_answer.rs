//! A fleet guard's reading of Prometheus' answers (`core/src/rollout/fleet.rs`): any
//! bytes under any HTTP status parse to samples or to an error, never a panic; what
//! parses sums to counts whose errors never exceed their requests and whose buckets
//! add up, and the differencer's increments obey the same, answer after answer.
#![no_main]

use cohort::rollout::fleet::{self, Differencer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, Vec<u8>, Vec<u8>, Option<u8>)| {
    let (status, first, second, slow) = input;
    let slow = slow.map(|i| usize::from(i) % cohort_core::histogram::DURATION_BUCKETS.len());
    let mut differ = Differencer::new();
    for body in [&first, &second] {
        let Ok(samples) = fleet::parse_vector(status, body) else {
            continue;
        };
        let _ = fleet::peers(&samples);
        let (stable, canary) = fleet::window_counts(&samples);
        for counts in [stable, canary] {
            assert!(counts.errors <= counts.requests);
            assert_eq!(counts.histogram.iter().sum::<u64>(), counts.requests);
        }
        let (stable, canary) = differ.advance(&samples, slow);
        for tally in [stable, canary] {
            assert!(tally.errors <= tally.requests);
            assert!(tally.slow <= tally.requests);
        }
    }
});
