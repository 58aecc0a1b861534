//! The sequential judge's math checked exactly, and its promises proved by simulation
//! against the threshold guard (DESIGN §12): false alarms under identical variants,
//! requests to detection for canaries that are worse.

use super::*;
use crate::histogram::Counts;
use crate::rollout::{verdict, Figures, Guard, GuardAction, Method, Verdict};

fn settings(alpha: f64) -> Settings {
    Settings {
        alpha,
        min_effect: DEFAULT_MIN_EFFECT,
        latency_over: None,
    }
}

fn tally(requests: u64, errors: u64) -> Tally {
    Tally {
        requests,
        errors,
        slow: 0,
    }
}

/// The likelihood-ratio factor has mean exactly 1 under H0 (and below 1 for a better
/// canary): the fact the whole anytime bound rests on, computed over the binomial pmf.
#[test]
fn each_factor_is_fair_under_the_null_and_favourable_for_a_better_canary() {
    let k = 12u64;
    for pi0 in [0.01, 0.1, 0.5, 0.9] {
        for odds in [1.01f64, 2.0, 11.0, 1000.0] {
            let mean = |pi: f64| -> f64 {
                (0..=k)
                    .map(|x| {
                        let choose = (0..x).fold(1.0, |c, i| c * (k - i) as f64 / (i + 1) as f64);
                        let pmf = choose * pi.powi(x as i32) * (1.0 - pi).powi((k - x) as i32);
                        pmf * odds.powi(x as i32) / (1.0 - pi0 + odds * pi0).powi(k as i32)
                    })
                    .sum()
            };
            assert!((mean(pi0) - 1.0).abs() < 1e-9, "pi0 {pi0} odds {odds}");
            assert!(mean(pi0 * 0.5) < 1.0, "a better canary must lose evidence");
        }
    }
}

#[test]
fn a_canary_failing_every_request_fails_fast_and_says_errors() {
    let mut judge = Sequential::new(settings(0.01));
    let mut seconds = 0;
    while judge.failed().is_none() {
        judge.update(&tally(5, 5), &tally(95, 1));
        seconds += 1;
        assert!(seconds < 10, "not failed after {seconds} s");
    }
    assert_eq!(judge.judge(50), Judgement::Fail(Signal::Errors));
    assert!(judge.errors().ratio() >= 1.0);
    // Final: healthy buckets afterwards do not undo a rejection.
    for _ in 0..100 {
        judge.update(&tally(5, 0), &tally(95, 0));
    }
    assert_eq!(judge.judge(50), Judgement::Fail(Signal::Errors));
}

#[test]
fn inconclusive_below_min_requests_then_pass_without_evidence_against() {
    let mut judge = Sequential::new(settings(0.01));
    assert_eq!(judge.judge(50), Judgement::Inconclusive);
    for _ in 0..9 {
        judge.update(&tally(5, 0), &tally(95, 1));
    }
    assert_eq!(judge.canary.requests, 45);
    assert_eq!(judge.judge(50), Judgement::Inconclusive);
    judge.update(&tally(5, 0), &tally(95, 1));
    assert_eq!(judge.judge(50), Judgement::Pass);
    assert!(
        judge.errors().ratio() < 0.0,
        "a clean canary's evidence falls"
    );
}

#[test]
fn slow_requests_are_a_signal_of_their_own() {
    let mut judge = Sequential::new(Settings {
        latency_over: Some(Duration::from_millis(250)),
        ..settings(0.01)
    });
    let slow = |requests, slow| Tally {
        requests,
        errors: 0,
        slow,
    };
    for _ in 0..30 {
        judge.update(&slow(10, 5), &slow(90, 1));
    }
    assert_eq!(judge.judge(50), Judgement::Fail(Signal::Latency));
    // Two signals share alpha: each must reach 2/α.
    assert!((judge.errors().log_threshold - (2.0f64 / 0.01).ln()).abs() < 1e-12);
    assert!(
        judge.errors().ratio() <= 0.0,
        "no errors, no error evidence"
    );
    assert!(judge.latency().is_some_and(|e| e.ratio() >= 1.0));
}

#[test]
fn buckets_without_one_variant_or_without_errors_carry_no_evidence() {
    let mut judge = Sequential::new(settings(0.01));
    let before = judge.errors().log_e;
    assert!((before - (6.0 / std::f64::consts::PI.powi(2)).ln()).abs() < 1e-12);
    judge.update(&tally(10, 10), &tally(0, 0));
    judge.update(&tally(10, 0), &tally(90, 0));
    assert!((judge.errors().log_e - before).abs() < 1e-12);
}

/// The mixture over start times: two hours of a healthy canary must not bury a
/// regression that starts afterwards (a single product sits hundreds of nats deep by then).
#[test]
fn a_canary_that_goes_bad_after_hours_of_health_is_still_caught() {
    let mut rng = Rng(42);
    let mut judge = Sequential::new(settings(0.01));
    for _ in 0..7200 {
        let (e_c, e_s) = (rng.binomial(10, 0.01), rng.binomial(90, 0.01));
        judge.update(&tally(10, e_c), &tally(90, e_s));
    }
    assert_eq!(judge.failed(), None);
    let mut seconds = 0;
    while judge.failed().is_none() {
        let (e_c, e_s) = (rng.binomial(10, 0.06), rng.binomial(90, 0.01));
        judge.update(&tally(10, e_c), &tally(90, e_s));
        seconds += 1;
        // With this seed: 30 s; a single product started at 0 needs 854 s.
        assert!(
            seconds < 120,
            "+5 points not caught 2 min after 2 h of health"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Simulation
// ---------------------------------------------------------------------------------------

/// splitmix64: a tiny, well-mixed generator; fixed seeds make every table reproducible.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform on (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Binomial(n, p) for small p by geometric skips: O(np + 1) draws.
    fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if p <= 0.0 || n == 0 {
            return 0;
        }
        let log_q = (1.0 - p).ln();
        let mut position = 0u64;
        let mut hits = 0u64;
        loop {
            let skip = (self.unit().ln() / log_q).floor() as u64;
            position = position.saturating_add(skip).saturating_add(1);
            if position > n {
                return hits;
            }
            hits += 1;
        }
    }
}

/// One simulated rollout's traffic: `total` requests a second, a fixed 10 % canary
/// share, stable errors at `base` and canary errors at `base + increase`, judged every
/// second for `seconds`.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    total: u64,
    base: f64,
    increase: f64,
    seconds: u64,
}

const CANARY_SHARE: f64 = 0.10;

impl Scenario {
    fn split(&self) -> (u64, u64) {
        let canary = ((self.total as f64) * CANARY_SHARE).round() as u64;
        (canary, self.total - canary)
    }
}

/// When (if) a rollout was failed: canary requests and total requests until then.
#[derive(Debug, Clone, Copy)]
struct Detection {
    canary_requests: u64,
    total_requests: u64,
}

/// The judges compared: the sequential one, and the threshold guard with typical
/// settings (window 30 s, min_requests 50, max_error_ratio 0.05,
/// max_error_ratio_vs_stable 0.02).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Judge {
    Sequential(f64),
    Threshold,
}

fn threshold_guard() -> Guard {
    Guard {
        window: Duration::from_secs(30),
        min_requests: 50,
        max_error_ratio: Some(0.05),
        max_error_ratio_vs_stable: Some(0.02),
        max_p99: None,
        action: GuardAction::Rollback,
        on_rollback: None,
        method: Method::Threshold,
        source: crate::rollout::Source::Local,
    }
}

fn figures(requests: u64, errors: u64) -> Figures {
    Figures::from_counts(&Counts {
        requests,
        errors,
        ..Counts::default()
    })
}

/// Runs one rollout under `judge`; `Some` when it was failed within the scenario.
fn rollout(judge: Judge, scenario: &Scenario, rng: &mut Rng) -> Option<Detection> {
    let (n_c, n_s) = scenario.split();
    let mut sequential = match judge {
        Judge::Sequential(alpha) => Some(Sequential::new(settings(alpha))),
        Judge::Threshold => None,
    };
    let guard = threshold_guard();
    // The threshold guard's 30 one-second buckets: (canary errors, stable errors).
    let mut ring = [(0u64, 0u64); 30];
    let mut in_window = (0u64, 0u64, 0u64, 0u64);
    for second in 0..scenario.seconds {
        let e_c = rng.binomial(n_c, scenario.base + scenario.increase);
        let e_s = rng.binomial(n_s, scenario.base);
        let failed = match &mut sequential {
            Some(judge) => {
                judge.update(&tally(n_c, e_c), &tally(n_s, e_s));
                judge.failed().is_some()
            }
            None => {
                let slot = (second % 30) as usize;
                if second >= 30 {
                    let (old_c, old_s) = ring[slot];
                    in_window.0 -= n_c;
                    in_window.1 -= old_c;
                    in_window.2 -= n_s;
                    in_window.3 -= old_s;
                }
                ring[slot] = (e_c, e_s);
                in_window.0 += n_c;
                in_window.1 += e_c;
                in_window.2 += n_s;
                in_window.3 += e_s;
                matches!(
                    verdict(
                        &guard,
                        &figures(in_window.0, in_window.1),
                        &figures(in_window.2, in_window.3)
                    ),
                    Verdict::Fail(_)
                )
            }
        };
        if failed {
            return Some(Detection {
                canary_requests: (second + 1) * n_c,
                total_requests: (second + 1) * scenario.total,
            });
        }
    }
    None
}

/// Outcome of many rollouts of one scenario under one judge.
struct Outcome {
    rollouts: u64,
    detections: Vec<Detection>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.detections.len() as f64 / self.rollouts as f64
    }

    /// The median over all rollouts (undetected ones count as never): `None` when fewer
    /// than half were failed in time.
    fn median(&self, pick: fn(&Detection) -> u64) -> Option<u64> {
        let mut values: Vec<u64> = self.detections.iter().map(pick).collect();
        values.sort_unstable();
        let middle = (self.rollouts as usize).div_ceil(2);
        values.get(middle.checked_sub(1)?).copied()
    }
}

fn simulate(judge: Judge, scenario: &Scenario, rollouts: u64, seed: u64) -> Outcome {
    let mut rng = Rng(seed);
    Outcome {
        rollouts,
        detections: (0..rollouts)
            .filter_map(|_| rollout(judge, scenario, &mut rng))
            .collect(),
    }
}

/// `alpha` plus three binomial standard errors of a rate estimated from `rollouts`.
fn alarm_bound(alpha: f64, rollouts: u64) -> f64 {
    alpha + 3.0 * (alpha * (1.0 - alpha) / rollouts as f64).sqrt()
}

const TRAFFIC: [u64; 3] = [10, 100, 1000];
const BASES: [f64; 3] = [0.001, 0.01, 0.05];
const INCREASES: [f64; 4] = [0.005, 0.01, 0.02, 0.05];

/// The always-on proof, small enough for a debug build: under identical variants the
/// sequential judge's false alarms stay within α (+ margin) at every traffic level and
/// base rate, while the threshold guard's at a 5 % base do not; and a canary worse by
/// 2 and 5 points is caught in most rollouts.
#[test]
fn simulated_false_alarms_stay_within_alpha_and_regressions_are_caught() {
    let alpha = 0.05;
    let rollouts = 500;
    let seconds = 300;
    for (i, total) in TRAFFIC.into_iter().enumerate() {
        for (j, base) in BASES.into_iter().enumerate() {
            if total == 1000 && base > 0.01 {
                continue; // the heavy table covers it; the debug build is slow here
            }
            let scenario = Scenario {
                total,
                base,
                increase: 0.0,
                seconds,
            };
            let seed = 1 + (i * 10 + j) as u64;
            let outcome = simulate(Judge::Sequential(alpha), &scenario, rollouts, seed);
            assert!(
                outcome.rate() <= alarm_bound(alpha, rollouts),
                "{total} req/s at base {base}: false alarms {} of {rollouts}",
                outcome.detections.len()
            );
        }
    }
    let noisy = Scenario {
        total: 100,
        base: 0.05,
        increase: 0.0,
        seconds,
    };
    let threshold = simulate(Judge::Threshold, &noisy, rollouts, 7);
    assert!(
        threshold.rate() > 0.5,
        "the threshold guard at a 5 % base should fire on noise: {}",
        threshold.rate()
    );
    for increase in [0.02, 0.05] {
        let bad = Scenario {
            total: 100,
            base: 0.01,
            increase,
            seconds,
        };
        let outcome = simulate(Judge::Sequential(alpha), &bad, rollouts, 11);
        assert!(
            outcome.rate() > 0.8,
            "+{increase} caught in only {} of {rollouts}",
            outcome.detections.len()
        );
    }
}

/// The README's tables: 10,000 rollouts per scenario, each judged every second for 10
/// minutes. Run with
/// `cargo test --release -p cohort-core sequential::tests::tables -- --ignored --nocapture`.
#[test]
#[ignore = "heavy: run in release for the README tables"]
fn tables() {
    let rollouts = 10_000;
    let seconds = 600;
    let alpha = 0.01;
    println!("False alarms under identical variants ({rollouts} rollouts of {seconds} s, canary share 10 %; sequential alpha = {alpha}, min_effect = {DEFAULT_MIN_EFFECT}; bound = alpha + 3 binomial s.e. = {:.4}):\n", alarm_bound(alpha, rollouts));
    println!(
        "| traffic (req/s) | base error ratio | sequential false alarms | threshold false alarms |"
    );
    println!("| --- | --- | --- | --- |");
    let mut seed = 100;
    for total in TRAFFIC {
        for base in BASES {
            let scenario = Scenario {
                total,
                base,
                increase: 0.0,
                seconds,
            };
            seed += 1;
            let sequential = simulate(Judge::Sequential(alpha), &scenario, rollouts, seed);
            let threshold = simulate(Judge::Threshold, &scenario, rollouts, seed);
            println!(
                "| {total} | {:.1} % | {:.2} % ({}) | {:.2} % ({}) |",
                base * 100.0,
                sequential.rate() * 100.0,
                sequential.detections.len(),
                threshold.rate() * 100.0,
                threshold.detections.len()
            );
            assert!(sequential.rate() <= alarm_bound(alpha, rollouts));
        }
    }
    println!("\nDetection over a 1 % base ({rollouts} rollouts of {seconds} s): share of rollouts failed, and median canary / total requests until then (— when fewer than half were failed):\n");
    println!("| traffic (req/s) | canary increase | sequential caught | sequential median canary / total | threshold caught | threshold median canary / total |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let show = |outcome: &Outcome| match (
        outcome.median(|d| d.canary_requests),
        outcome.median(|d| d.total_requests),
    ) {
        (Some(c), Some(t)) => format!("{c} / {t}"),
        _ => "—".to_owned(),
    };
    for total in TRAFFIC {
        for increase in INCREASES {
            let scenario = Scenario {
                total,
                base: 0.01,
                increase,
                seconds,
            };
            seed += 1;
            let sequential = simulate(Judge::Sequential(alpha), &scenario, rollouts, seed);
            let threshold = simulate(Judge::Threshold, &scenario, rollouts, seed);
            println!(
                "| {total} | +{:.1} pt | {:.1} % | {} | {:.1} % | {} |",
                increase * 100.0,
                sequential.rate() * 100.0,
                show(&sequential),
                threshold.rate() * 100.0,
                show(&threshold)
            );
        }
    }
}
