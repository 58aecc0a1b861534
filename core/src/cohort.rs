//! Cohort assignment: the pure function from (salt, key, percentage) to a variant.
//!
//! Everything here is deterministic and free of I/O, clocks and globals, so every
//! replica of cohort, before and after a restart, puts the same key in the same
//! variant. The hash and its seed are part of the user-facing contract (DESIGN §1.5):
//! changing either would silently reshuffle every user of every running rollout.

use std::fmt;

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// Number of buckets a key can fall into: one bucket per 0.01 % of traffic.
pub const BUCKETS: u16 = 10_000;

/// Separates salt from key in the hashed bytes, so ("ab", "c") and ("a", "bc") differ.
const SEPARATOR: u8 = 0x00;

/// Keys and salts up to this many bytes in total are hashed from a stack buffer in
/// one shot; longer ones go through the streaming hasher (same result, more work).
const ONE_SHOT_LIMIT: usize = 256;

/// The two arms of an experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variant {
    Stable,
    Canary,
}

impl Variant {
    pub const ALL: [Variant; 2] = [Variant::Stable, Variant::Canary];

    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Stable => "stable",
            Variant::Canary => "canary",
        }
    }

    /// Parses the exact lowercase names used on the wire (override header, cookie).
    pub fn from_name(name: &[u8]) -> Option<Variant> {
        match name {
            b"stable" => Some(Variant::Stable),
            b"canary" => Some(Variant::Canary),
            _ => None,
        }
    }

    /// Index for per-variant arrays (`[T; 2]`).
    pub fn index(self) -> usize {
        match self {
            Variant::Stable => 0,
            Variant::Canary => 1,
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A canary share in integer basis points (0..=10000, i.e. 0.00 %..=100.00 %).
///
/// Percentages are converted once, when a config is validated; every request
/// compares integers only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BasisPoints(u16);

/// Why a number is not a valid percentage.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PercentError {
    #[error("{0} is not a number")]
    NotANumber(f64),
    #[error("{0} is below 0")]
    Negative(f64),
    #[error("{0} is above 100")]
    AboveHundred(f64),
    #[error("{0} is finer than the 0.01 step")]
    TooFine(f64),
}

impl BasisPoints {
    pub const ZERO: BasisPoints = BasisPoints(0);
    pub const FULL: BasisPoints = BasisPoints(BUCKETS);

    /// Converts a percentage (e.g. `2.5` for 2.5 %) exactly as DESIGN §2 says:
    /// `bp = round(p × 100)`, rejected if it is not a 0.01 step (beyond 1e-6 of float noise).
    pub fn from_percent(percent: f64) -> Result<BasisPoints, PercentError> {
        if !percent.is_finite() {
            return Err(PercentError::NotANumber(percent));
        }
        if percent < 0.0 {
            return Err(PercentError::Negative(percent));
        }
        if percent > 100.0 {
            return Err(PercentError::AboveHundred(percent));
        }
        let scaled = percent * 100.0;
        let rounded = scaled.round();
        if (scaled - rounded).abs() > 1e-6 {
            return Err(PercentError::TooFine(percent));
        }
        // In 0..=10000 after the range checks above, so the cast is exact.
        Ok(BasisPoints(rounded as u16))
    }

    pub fn from_raw(bp: u16) -> Option<BasisPoints> {
        (bp <= BUCKETS).then_some(BasisPoints(bp))
    }

    pub fn get(self) -> u16 {
        self.0
    }

    /// As a percentage (`250` → `2.5`).
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    /// As a ratio in 0..=1, for the `cohort_canary_weight_ratio` gauge.
    pub fn ratio(self) -> f64 {
        f64::from(self.0) / f64::from(BUCKETS)
    }
}

impl serde::Serialize for BasisPoints {
    /// As a JSON/TOML percentage: an integer when whole (`10`), else a float (`2.5`),
    /// the way the config file writes it.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 % 100 == 0 {
            s.serialize_u64(u64::from(self.0 / 100))
        } else {
            s.serialize_f64(self.percent())
        }
    }
}

impl fmt::Display for BasisPoints {
    /// Shortest exact form: `10`, `2.5`, `0.25`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / 100;
        let frac = self.0 % 100;
        match frac {
            0 => write!(f, "{whole}"),
            f2 if f2 % 10 == 0 => write!(f, "{whole}.{}", f2 / 10),
            f2 => write!(f, "{whole}.{f2:02}"),
        }
    }
}

/// `XXH3-64(seed 0)` over `salt ‖ 0x00 ‖ key`, reduced to a bucket in `0..10000`.
///
/// The seed is fixed at 0 on purpose: a random or per-process seed would give each
/// replica and each restart different cohorts.
pub fn bucket(salt: &str, key: &[u8]) -> u16 {
    let total = salt.len() + 1 + key.len();
    let hash = if total <= ONE_SHOT_LIMIT {
        let mut buf = [0u8; ONE_SHOT_LIMIT];
        buf[..salt.len()].copy_from_slice(salt.as_bytes());
        buf[salt.len()] = SEPARATOR;
        buf[salt.len() + 1..total].copy_from_slice(key);
        xxh3_64(&buf[..total])
    } else {
        let mut hasher = Xxh3::new();
        hasher.update(salt.as_bytes());
        hasher.update(&[SEPARATOR]);
        hasher.update(key);
        hasher.digest()
    };
    // The remainder is below 10000, so it always fits in a u16.
    (hash % u64::from(BUCKETS)) as u16
}

/// The variant for a bucket at a given canary share: canary iff `bucket < bp`.
///
/// Invariant (proved in the tests below): for a fixed bucket, raising `bp` can only
/// turn stable into canary, never the reverse, so widening a rollout only adds users.
pub fn variant_for(bucket: u16, canary: BasisPoints) -> Variant {
    if bucket < canary.0 {
        Variant::Canary
    } else {
        Variant::Stable
    }
}

/// `bucket` then `variant_for`: the whole assignment of one key.
pub fn assign(salt: &str, key: &[u8], canary: BasisPoints) -> (u16, Variant) {
    let b = bucket(salt, key);
    (b, variant_for(b, canary))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small fixed-seed generator (SplitMix64) so statistical tests are deterministic.
    struct SplitMix64(u64);
    impl SplitMix64 {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn key(&mut self) -> String {
            format!("user-{:016x}", self.next())
        }
    }

    /// Golden vectors: these exact buckets are published in the README. If this test
    /// fails, the change would reshuffle every user of every running rollout.
    /// Computed independently with Python's `xxhash.xxh3_64_intdigest(salt + b"\0" + key) % 10000`.
    pub(crate) const GOLDEN: &[(&str, &str, u16)] = &[
        ("checkout-v2", "alice", 868),
        ("checkout-v2", "bob", 5736),
        ("checkout-v2", "user-42", 573),
        ("checkout-v3", "alice", 9584),
        ("", "", 1883),
        ("salt", "192.0.2.7", 5828),
        ("checkout-v2", "2001:db8::1", 9870),
    ];

    #[test]
    fn golden_vectors_are_pinned() {
        for &(salt, key, expected) in GOLDEN {
            assert_eq!(
                bucket(salt, key.as_bytes()),
                expected,
                "salt={salt:?} key={key:?}"
            );
        }
    }

    #[test]
    fn bucket_is_xxh3_of_salt_nul_key() {
        let direct = xxh3_64(b"checkout-v2\0alice") % 10_000;
        assert_eq!(u64::from(bucket("checkout-v2", b"alice")), direct);
    }

    #[test]
    fn long_inputs_hash_like_short_ones() {
        let salt = "s".repeat(100);
        let key = vec![b'k'; 400];
        let mut joined = salt.as_bytes().to_vec();
        joined.push(0);
        joined.extend_from_slice(&key);
        assert_eq!(
            u64::from(bucket(&salt, &key)),
            xxh3_64(&joined) % 10_000,
            "the streaming path must equal the one-shot definition"
        );
        // Exactly at the one-shot limit and one past it.
        for len in [ONE_SHOT_LIMIT - 2, ONE_SHOT_LIMIT - 1, ONE_SHOT_LIMIT] {
            let key = vec![b'x'; len];
            let mut joined = b"a\0".to_vec();
            joined.extend_from_slice(&key);
            assert_eq!(u64::from(bucket("a", &key)), xxh3_64(&joined) % 10_000);
        }
    }

    #[test]
    fn salt_and_key_boundary_matters() {
        assert_ne!(bucket("ab", b"c"), bucket("a", b"bc"));
    }

    #[test]
    fn canary_share_matches_setting_over_a_million_keys() {
        for percent in [1.0, 10.0, 50.0, 99.99] {
            let bp = BasisPoints::from_percent(percent).expect("valid percent");
            let mut rng = SplitMix64(0xC0_4027);
            let n = 1_000_000;
            let canary = (0..n)
                .filter(|_| {
                    let key = rng.key();
                    assign("share-test", key.as_bytes(), bp).1 == Variant::Canary
                })
                .count();
            let share = canary as f64 * 100.0 / n as f64;
            assert!(
                (share - percent).abs() <= 0.1,
                "at {percent}% the canary got {share:.3}%"
            );
        }
    }

    #[test]
    fn raising_the_percentage_never_moves_a_key_back_to_stable() {
        let mut rng = SplitMix64(7);
        let keys: Vec<String> = (0..20_000).map(|_| rng.key()).collect();
        let steps = [0u16, 1, 100, 250, 1000, 2500, 5000, 9999, 10_000];
        for key in &keys {
            let b = bucket("mono", key.as_bytes());
            let mut was_canary = false;
            for &bp in &steps {
                let now_canary = variant_for(b, BasisPoints(bp)) == Variant::Canary;
                assert!(
                    !was_canary || now_canary,
                    "key {key} left the canary at {bp}bp"
                );
                was_canary = now_canary;
            }
        }
    }

    #[test]
    fn zero_and_hundred_percent_are_absolute() {
        let mut rng = SplitMix64(99);
        for _ in 0..10_000 {
            let key = rng.key();
            assert_eq!(
                assign("x", key.as_bytes(), BasisPoints::ZERO).1,
                Variant::Stable
            );
            assert_eq!(
                assign("x", key.as_bytes(), BasisPoints::FULL).1,
                Variant::Canary
            );
        }
    }

    #[test]
    fn a_new_salt_draws_fresh_cohorts() {
        // At p = 20 %, about p of the old canary stays canary: p² = 4 % of all keys.
        let p = BasisPoints::from_percent(20.0).expect("valid");
        let mut rng = SplitMix64(2026);
        let n = 200_000;
        let (mut old_canary, mut both) = (0usize, 0usize);
        for _ in 0..n {
            let key = rng.key();
            let before = assign("rollout-1", key.as_bytes(), p).1 == Variant::Canary;
            let after = assign("rollout-2", key.as_bytes(), p).1 == Variant::Canary;
            old_canary += usize::from(before);
            both += usize::from(before && after);
        }
        let stay = both as f64 / old_canary as f64;
        let of_all = both as f64 / n as f64;
        assert!(
            (stay - 0.20).abs() < 0.01,
            "{stay:.4} of the old canary stayed"
        );
        assert!(
            (of_all - 0.04).abs() < 0.003,
            "{of_all:.4} of all keys in both"
        );
    }

    #[test]
    fn percent_parsing_follows_the_basis_point_rules() {
        assert_eq!(BasisPoints::from_percent(10.0), Ok(BasisPoints(1000)));
        assert_eq!(BasisPoints::from_percent(2.5), Ok(BasisPoints(250)));
        assert_eq!(BasisPoints::from_percent(0.25), Ok(BasisPoints(25)));
        assert_eq!(BasisPoints::from_percent(0.01), Ok(BasisPoints(1)));
        assert_eq!(BasisPoints::from_percent(99.99), Ok(BasisPoints(9999)));
        assert_eq!(BasisPoints::from_percent(100.0), Ok(BasisPoints(10_000)));
        // 0.1 + 0.2 style float noise is accepted, real sub-step values are not.
        assert_eq!(BasisPoints::from_percent(0.1 + 0.2), Ok(BasisPoints(30)));
        assert_eq!(
            BasisPoints::from_percent(0.001),
            Err(PercentError::TooFine(0.001))
        );
        assert_eq!(
            BasisPoints::from_percent(100.5),
            Err(PercentError::AboveHundred(100.5))
        );
        assert_eq!(
            BasisPoints::from_percent(-1.0),
            Err(PercentError::Negative(-1.0))
        );
        assert!(matches!(
            BasisPoints::from_percent(f64::NAN),
            Err(PercentError::NotANumber(_))
        ));
    }

    #[test]
    fn basis_points_print_in_their_shortest_exact_form() {
        let shown: Vec<String> = [0u16, 1, 25, 250, 1000, 9999, 10_000]
            .iter()
            .map(|&bp| BasisPoints(bp).to_string())
            .collect();
        assert_eq!(shown, ["0", "0.01", "0.25", "2.5", "10", "99.99", "100"]);
    }
}
