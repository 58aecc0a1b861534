//! NGINX-compatible cohorts (DESIGN §11, `hash = "nginx"`): the variant NGINX's
//! `split_clients "<nginx_key>" $variant { P% canary; * stable; }` picks for a key,
//! so a team moving from NGINX keeps every user where they were.
//!
//! NGINX hashes the key string with its own MurmurHash2 (`ngx_murmur_hash2`, seed =
//! length) and compares the 32-bit hash with a boundary it computes once per part:
//! `P` (in hundredths of a percent) × 0xffffffff / 10000, truncated. The first part
//! whose boundary is above the hash wins; canary is listed first. Both formulas are
//! reproduced bit for bit: `tests/nginx_split.rs` checks them against the real NGINX.
//!
//! Cohort's ends are exact where NGINX's are not: 0 % sends nobody to the canary (in
//! NGINX a `0%` part means "the rest") and 100 % sends everybody (NGINX's boundary
//! leaves the single hash 0xffffffff out).

use crate::cohort::{BasisPoints, Variant, BUCKETS};

/// What `nginx_key` must contain: the place of the cohort key in the hashed string.
pub const KEY_PLACEHOLDER: &str = "${key}";

const M: u32 = 0x5bd1e995;

/// `ngx_murmur_hash2`: MurmurHash2 with the length as seed, little-endian blocks.
pub fn murmur_hash2(data: &[u8]) -> u32 {
    // NGINX seeds with `0 ^ len` in 32 bits.
    let mut h: u32 = data.len() as u32;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        if let Some(&b) = tail.get(2) {
            h ^= u32::from(b) << 16;
        }
        if let Some(&b) = tail.get(1) {
            h ^= u32::from(b) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The hash below which NGINX picks the first part, for a first part of `bp`.
fn boundary(bp: u16) -> u64 {
    u64::from(bp) * u64::from(u32::MAX) / u64::from(BUCKETS)
}

/// The bucket (0..10000) of an NGINX hash: the canary takes the key at `bp` exactly
/// when `bucket < bp`, as in cohort's own hash, so `/assign` reads the same way.
///
/// `hash < boundary(bp)` ⇔ `bp ≥ ⌈(hash + 1) × 10000 / 0xffffffff⌉`; the bucket is
/// that least `bp` minus one. The one hash NGINX never gives the canary (0xffffffff)
/// lands in the last bucket, so that 100 % is everybody.
pub fn bucket(hash: u32) -> u16 {
    let max = u64::from(u32::MAX);
    let least_bp = (u64::from(hash) + 1) * u64::from(BUCKETS);
    let least_bp = least_bp.div_ceil(max);
    // least_bp is 1..=10001; the clamp puts 0xffffffff into bucket 9999.
    (least_bp - 1).min(u64::from(BUCKETS - 1)) as u16
}

/// The string NGINX hashes: `nginx_key` with `${key}` replaced by the key's bytes.
pub fn hashed_string(template: &str, key: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut rest = template;
    while let Some(at) = rest.find(KEY_PLACEHOLDER) {
        out.extend_from_slice(&rest.as_bytes()[..at]);
        out.extend_from_slice(key);
        rest = &rest[at + KEY_PLACEHOLDER.len()..];
    }
    out.extend_from_slice(rest.as_bytes());
}

/// Hashed strings up to this many bytes are built on the stack: the hot path
/// allocates nothing for the usual key.
const STACK_LIMIT: usize = 256;

/// A route's `nginx_key`, split once at `${key}` when the config is read, so a
/// request only copies the pieces and its key together and hashes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    text: String,
    /// The text between the placeholders: one more piece than placeholders.
    pieces: Vec<Box<[u8]>>,
}

impl KeyTemplate {
    pub fn new(text: String) -> KeyTemplate {
        let pieces = text
            .split(KEY_PLACEHOLDER)
            .map(|piece| Box::from(piece.as_bytes()))
            .collect();
        KeyTemplate { text, pieces }
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// NGINX's hash of the template with each `${key}` replaced by `key`.
    #[inline]
    pub fn hash(&self, key: &[u8]) -> u32 {
        let literal: usize = self.pieces.iter().map(|p| p.len()).sum();
        let len = literal + (self.pieces.len() - 1) * key.len();
        if len > STACK_LIMIT {
            let mut text = Vec::with_capacity(len);
            hashed_string(&self.text, key, &mut text);
            return murmur_hash2(&text);
        }
        let mut buf = [0u8; STACK_LIMIT];
        let mut at = 0;
        for (i, piece) in self.pieces.iter().enumerate() {
            if i > 0 {
                buf[at..at + key.len()].copy_from_slice(key);
                at += key.len();
            }
            buf[at..at + piece.len()].copy_from_slice(piece);
            at += piece.len();
        }
        murmur_hash2(&buf[..at])
    }

    /// The NGINX-compatible assignment: (bucket, variant) for `key`.
    #[inline]
    pub fn assign(&self, key: &[u8], canary: BasisPoints) -> (u16, Variant) {
        let bucket = bucket(self.hash(key));
        let variant = if bucket < canary.get() {
            Variant::Canary
        } else {
            Variant::Stable
        };
        (bucket, variant)
    }
}

impl serde::Serialize for KeyTemplate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl std::fmt::Display for KeyTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether NGINX itself would pick the canary (its boundary, its ends): for tests
/// that compare the two formulas.
pub fn nginx_picks_canary(hash: u32, bp: u16) -> bool {
    bp != 0 && u64::from(hash) < boundary(bp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tail length (0..=3 bytes after the 4-byte blocks) takes its own path.
    #[test]
    fn murmur_hash2_is_nginx_s() {
        assert_eq!(murmur_hash2(b""), 0);
        let a = murmur_hash2(b"a");
        let ab = murmur_hash2(b"ab");
        let abc = murmur_hash2(b"abc");
        let abcd = murmur_hash2(b"abcd");
        let all = [a, ab, abc, abcd];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
        // Pinned: any change here reshuffles every user migrated from NGINX.
        assert_eq!(
            [a, ab, abc, abcd, murmur_hash2(b"user-42AAA")],
            GOLDEN,
            "golden MurmurHash2 values changed"
        );
    }

    /// Computed by NGINX's C function compiled on its own; `tests/nginx_split.rs` checks
    /// thousands more keys against the real NGINX.
    const GOLDEN: [u32; 5] = [0x92685f5e, 0x1aa14063, 0x13577c9b, 0x26873021, 0xe59f21b2];

    #[test]
    fn the_bucket_rule_equals_nginx_s_boundary_for_every_percentage() {
        let hashes = [
            0u32,
            1,
            429_496,
            429_497,
            u32::MAX / 2,
            u32::MAX - 1,
            u32::MAX,
        ];
        let mut x: u32 = 0x1234_5678;
        let mut sample: Vec<u32> = hashes.to_vec();
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            sample.push(x);
        }
        for hash in sample {
            let b = bucket(hash);
            assert!(b < BUCKETS);
            for bp in 1..BUCKETS {
                assert_eq!(
                    b < bp,
                    nginx_picks_canary(hash, bp),
                    "hash {hash:#x} at {bp} bp"
                );
            }
            assert!(b < BUCKETS, "100 % is everybody");
        }
    }

    #[test]
    fn the_key_goes_where_the_placeholder_is_every_time() {
        let mut out = Vec::new();
        hashed_string("${key}AAA", b"u1", &mut out);
        assert_eq!(out, b"u1AAA");
        hashed_string("a${key}b${key}", b"k", &mut out);
        assert_eq!(out, b"akbk");
        hashed_string("${key}", b"", &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_template_hashes_the_string_it_stands_for_at_any_length() {
        let mut text = Vec::new();
        for (template, key) in [
            ("${key}AAA", "k".repeat(300)),
            ("a${key}b${key}", "user-1".to_owned()),
            ("${key}", String::new()),
            ("no placeholder", "x".to_owned()),
        ] {
            hashed_string(template, key.as_bytes(), &mut text);
            let compiled = KeyTemplate::new(template.to_owned());
            assert_eq!(
                compiled.hash(key.as_bytes()),
                murmur_hash2(&text),
                "{template}"
            );
        }
    }

    #[test]
    fn raising_the_percentage_only_adds_users() {
        let bp = |p| BasisPoints::from_raw(p).unwrap_or_default();
        let template = KeyTemplate::new("${key}".to_owned());
        for i in 0..5000u32 {
            let key = format!("user-{i}");
            let (_, low) = template.assign(key.as_bytes(), bp(1000));
            let (_, high) = template.assign(key.as_bytes(), bp(2500));
            assert!(low == Variant::Stable || high == Variant::Canary);
            assert_eq!(template.assign(key.as_bytes(), bp(0)).1, Variant::Stable);
            assert_eq!(
                template.assign(key.as_bytes(), bp(10000)).1,
                Variant::Canary
            );
        }
    }
}
