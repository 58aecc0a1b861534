//! The sequential (anytime-valid) canary judge of DESIGN §12: a mixture sequential
//! probability ratio test on the canary's share of bad outcomes (errors, and with
//! `latency_over` slow requests), fed one time bucket at a time. Pure: the caller hands
//! in each bucket's counts.
//!
//! # The test
//!
//! In bucket b the canary served `n_c` requests and stable `n_s`; `x` of the bucket's
//! `k` bad outcomes were the canary's. Conditional on the counts, and with each
//! variant's bad outcomes a Poisson count at rate λ per request, `x ~ Binomial(k, π)`
//! with `π = θπ₀ / (1 − π₀ + θπ₀)`, `π₀ = n_c / (n_c + n_s)` and `θ = λ_c / λ_s`. H0 is
//! "the canary is no worse" (θ ≤ 1); the likelihood ratio of θ against θ = 1 is
//!
//! ```text
//! LR_b(θ) = θ^x / (1 − π₀ + θπ₀)^k
//! ```
//!
//! and `E_t = Σ_j w_j Π_{b ≤ t} LR_b(θ_{j,b})`, a fixed-weight mixture over "experts" j.
//! Under θ = 1, `E[θ^x] = (1 − π₀ + θπ₀)^k` (the binomial's generating function), so
//! each factor has mean exactly 1; for θ < 1 (canary better) x is stochastically
//! smaller and θ^x, increasing for θ ≥ 1, has mean below 1; with per-request Bernoulli
//! outcomes x is hypergeometric, and Hoeffding (1963, Thm 4) bounds the mean of the
//! convex θ^x by the binomial's. So E is a non-negative supermartingale starting at 1
//! under H0, whatever the split does from bucket to bucket (π₀ is that bucket's own),
//! and Ville's inequality gives `P(sup_t E_t ≥ 1/α) ≤ α`: judged after every bucket,
//! forever, a canary no worse than stable fails with probability at most α.
//!
//! Expert j's odds ratio is chosen before bucket b is seen (predictably), which keeps
//! every product a supermartingale: `θ_{j,b} = 1 + m_j · min_effect / p̂_b`, where
//! `p̂_b` is stable's bad-outcome ratio over the buckets before b (with a prior of one
//! bad outcome in 100 requests) and `m_j ∈ {1, 2, 4, 8, 16, 32}`, equal weights: the
//! mixture bets on an absolute increase of `min_effect` or more over stable's ratio.
//!
//! A long healthy stretch drives every product towards 0, and a canary that goes bad
//! later would have to climb out of that hole. So the mixture is also over start
//! times: a new set of experts starts every [`EPOCH_BUCKETS`] buckets (epoch k, weight
//! `6 / (π² (k + 1)²)`, the weights summing to 1). Each epoch's products are test
//! supermartingales (1 until they start), so the weighted sum is one too. Epochs not
//! started yet and epochs older than the last [`KEPT_EPOCHS`] are left out of the sum:
//! leaving out non-negative terms only lowers E, so the bound still holds.

use std::time::Duration;

/// Multiples of `min_effect` the mixture's experts bet on, equal weights.
pub const MULTIPLES: [f64; 6] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0];
/// Buckets per epoch: a fresh set of experts starts this often (10 minutes of
/// one-second buckets).
pub const EPOCH_BUCKETS: u64 = 600;
/// Epochs whose experts are kept (the last hour of one-second buckets).
pub const KEPT_EPOCHS: usize = 6;
/// Prior of the stable ratio estimate: one bad outcome in this many requests.
const PRIOR_REQUESTS: f64 = 100.0;
/// Odds ratios are kept in a range where a single bucket cannot overflow anything.
const MAX_ODDS: f64 = 1000.0;
/// Smallest odds ratio an expert bets on: above 1, or it would test nothing.
const MIN_ODDS: f64 = 1.01;

/// The settings of `method = "sequential"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Bound on ever failing a canary no worse than stable.
    pub alpha: f64,
    /// Smallest absolute increase over stable's ratio the mixture bets on.
    pub min_effect: f64,
    /// A request slower than this is "slow"; `None` leaves latency unjudged.
    pub latency_over: Option<Duration>,
}

impl Settings {
    /// The duration-histogram bucket whose bound is `latency_over`: requests in the
    /// buckets above it are slow. `None` leaves latency unjudged (validation makes any
    /// `latency_over` a bound).
    pub fn slow_bucket(&self) -> Option<usize> {
        self.latency_over
            .and_then(|d| crate::histogram::bound_index(d.as_secs_f64()))
    }
}

/// `alpha` unless configured.
pub const DEFAULT_ALPHA: f64 = 0.01;
/// `min_effect` unless configured.
pub const DEFAULT_MIN_EFFECT: f64 = 0.01;

/// One variant's counts in one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    pub requests: u64,
    pub errors: u64,
    /// Requests slower than `latency_over` (0 when latency is not judged).
    pub slow: u64,
}

impl Tally {
    /// The tally of histogram counts: slow are those above `slow_bucket`
    /// ([`Settings::slow_bucket`]), none without one.
    pub fn from_counts(counts: &crate::histogram::Counts, slow_bucket: Option<usize>) -> Tally {
        Tally {
            requests: counts.requests,
            errors: counts.errors,
            slow: slow_bucket.map_or(0, |i| crate::histogram::slower_than(i, &counts.histogram)),
        }
    }

    fn add(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.slow += other.slow;
    }
}

/// The experts that started at one epoch: the log of each one's product.
#[derive(Debug, Clone, PartialEq)]
struct Epoch {
    index: u64,
    log_products: [f64; MULTIPLES.len()],
}

/// `ln` of one expert's weight in epoch `index`: the epoch's `6 / (π² (k + 1)²)`,
/// shared equally by its experts.
fn epoch_log_weight(index: u64) -> f64 {
    let k = index as f64 + 1.0;
    (6.0 / (std::f64::consts::PI * std::f64::consts::PI * k * k)).ln()
        - (MULTIPLES.len() as f64).ln()
}

/// One signal's test: the experts of the kept epochs, and stable's counts so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Test {
    epochs: Vec<Epoch>,
    buckets: u64,
    stable_bad: u64,
    stable_requests: u64,
    /// The e-value has reached 1/α: the test has rejected, and stays rejected.
    rejected: bool,
}

impl Test {
    fn new() -> Test {
        Test {
            epochs: Vec::new(),
            buckets: 0,
            stable_bad: 0,
            stable_requests: 0,
            rejected: false,
        }
    }

    /// Folds in one bucket: `canary_bad` of `canary_requests`, `stable_bad` of
    /// `stable_requests`.
    fn update(&mut self, min_effect: f64, canary: (u64, u64), stable: (u64, u64)) {
        let (canary_bad, canary_requests) = canary;
        let (stable_bad, stable_requests) = stable;
        let bad = canary_bad + stable_bad;
        let requests = canary_requests + stable_requests;
        if self.buckets % EPOCH_BUCKETS == 0 {
            if self.epochs.len() == KEPT_EPOCHS {
                self.epochs.remove(0);
            }
            self.epochs.push(Epoch {
                index: self.buckets / EPOCH_BUCKETS,
                log_products: [0.0; MULTIPLES.len()],
            });
        }
        self.buckets += 1;
        // A bucket without bad outcomes, or with one variant absent, carries no
        // information on the share (every factor is 1).
        if bad > 0 && canary_requests > 0 && stable_requests > 0 {
            let pi0 = canary_requests as f64 / requests as f64;
            let base =
                (self.stable_bad as f64 + 1.0) / (self.stable_requests as f64 + PRIOR_REQUESTS);
            for (j, multiple) in MULTIPLES.into_iter().enumerate() {
                let odds = (1.0 + multiple * min_effect / base).clamp(MIN_ODDS, MAX_ODDS);
                let factor =
                    canary_bad as f64 * odds.ln() - bad as f64 * (1.0 - pi0 + odds * pi0).ln();
                for epoch in &mut self.epochs {
                    epoch.log_products[j] += factor;
                }
            }
        }
        // The estimate moves only after the bucket is judged: that keeps it predictable.
        self.stable_bad += stable_bad;
        self.stable_requests += stable_requests;
    }

    /// `ln E`: log of the weighted mixture of the kept epochs' experts (before any
    /// bucket, the first epoch's weight alone: `ln(6/π²)`, about −0.5).
    pub fn log_e(&self) -> f64 {
        if self.epochs.is_empty() {
            return epoch_log_weight(0) + (MULTIPLES.len() as f64).ln();
        }
        let terms = || {
            self.epochs.iter().flat_map(|e| {
                let weight = epoch_log_weight(e.index);
                e.log_products.iter().map(move |l| l + weight)
            })
        };
        let max = terms().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = terms().map(|l| (l - max).exp()).sum();
        max + sum.ln()
    }
}

/// The evidence of one signal against its threshold: `ln E / ln(1/α)` (`ln(2/α)` with
/// two signals); 1 or more fails.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evidence {
    pub log_e: f64,
    pub log_threshold: f64,
}

impl Evidence {
    pub fn ratio(&self) -> f64 {
        self.log_e / self.log_threshold
    }
}

/// Which signal a sequential test rejected on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Errors,
    Latency,
}

/// The cumulative state of a sequential judge since it (re)started.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequential {
    pub settings: Settings,
    errors: Test,
    latency: Option<Test>,
    /// Counts since the (re)start.
    pub canary: Tally,
    pub stable: Tally,
    /// The first signal that reached 1/α: final until the judge restarts.
    failed: Option<Signal>,
}

impl Sequential {
    pub fn new(settings: Settings) -> Sequential {
        Sequential {
            settings,
            errors: Test::new(),
            latency: settings.latency_over.map(|_| Test::new()),
            canary: Tally::default(),
            stable: Tally::default(),
            failed: None,
        }
    }

    /// The level each signal's E must reach: `1/α`, or `2/α` when latency is judged
    /// too, so that by a union bound the guard as a whole still errs with probability
    /// at most α (DESIGN §12 promises α for the guard, not per signal).
    fn log_threshold(&self) -> f64 {
        let signals = if self.latency.is_some() { 2.0 } else { 1.0 };
        (signals / self.settings.alpha).ln()
    }

    /// Folds in one bucket (both variants' counts over the same span of time) and
    /// judges: once a signal's E reaches 1/α it fails, for good.
    pub fn update(&mut self, canary: &Tally, stable: &Tally) {
        self.canary.add(canary);
        self.stable.add(stable);
        let effect = self.settings.min_effect;
        self.errors.update(
            effect,
            (canary.errors, canary.requests),
            (stable.errors, stable.requests),
        );
        if let Some(test) = &mut self.latency {
            test.update(
                effect,
                (canary.slow, canary.requests),
                (stable.slow, stable.requests),
            );
        }
        let threshold = self.log_threshold();
        for (test, signal) in [
            (Some(&mut self.errors), Signal::Errors),
            (self.latency.as_mut(), Signal::Latency),
        ] {
            let Some(test) = test else { continue };
            if !test.rejected && test.log_e() >= threshold {
                test.rejected = true;
                self.failed.get_or_insert(signal);
            }
        }
    }

    /// The signal that failed, if one has.
    pub fn failed(&self) -> Option<Signal> {
        self.failed
    }

    /// Errors' evidence against its threshold.
    pub fn errors(&self) -> Evidence {
        Evidence {
            log_e: self.errors.log_e(),
            log_threshold: self.log_threshold(),
        }
    }

    /// Latency's evidence, with `latency_over`.
    pub fn latency(&self) -> Option<Evidence> {
        self.latency.as_ref().map(|t| Evidence {
            log_e: t.log_e(),
            log_threshold: self.log_threshold(),
        })
    }

    /// The judgement: fail once a signal has reached 1/α; otherwise pass when the
    /// canary has served at least `min_requests` since the (re)start, else inconclusive.
    pub fn judge(&self, min_requests: u64) -> Judgement {
        match self.failed {
            Some(signal) => Judgement::Fail(signal),
            None if self.canary.requests >= min_requests.max(1) => Judgement::Pass,
            None => Judgement::Inconclusive,
        }
    }
}

/// A sequential judge's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    Pass,
    Inconclusive,
    Fail(Signal),
}

#[cfg(test)]
mod tests;
