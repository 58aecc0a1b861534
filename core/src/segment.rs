//! Segments (DESIGN §11): ordered rules that put chosen groups (a team, a list of beta
//! customers, an office network) into a variant before any percentage.
//!
//! Each rule is one lookup whatever its size: exact values in a hash set, CIDRs as
//! sorted, merged address ranges searched by bisection. A 100,000-line values file
//! costs the hot path the same as a two-value list.

use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderName;
use ipnet::IpNet;
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::cohort::Variant;
use crate::config::{canonical_ip, parse_net};
use crate::router::{cookie, is_token, Fields};

/// What a segment compares with its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentMatch {
    /// The first value of a header, surrounding whitespace trimmed.
    Header(HeaderName),
    /// The raw value of the first cookie of that name.
    Cookie(String),
    /// The request's cohort key (what the route's `sticky` sources found).
    Key,
    /// The client address (DESIGN §10), against CIDRs.
    Ip,
}

impl SegmentMatch {
    /// `header:NAME`, `cookie:NAME`, `key` or `ip`.
    pub fn parse(text: &str) -> Result<SegmentMatch, String> {
        let unknown =
            || format!("{text:?} is not a segment match (header:NAME, cookie:NAME, key or ip)");
        match text.split_once(':') {
            None if text == "key" => Ok(SegmentMatch::Key),
            None if text == "ip" => Ok(SegmentMatch::Ip),
            None => Err(unknown()),
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(SegmentMatch::Header)
                .map_err(|_| format!("{name:?} is not a header name")),
            Some(("cookie", name)) if is_token(name) => Ok(SegmentMatch::Cookie(name.to_owned())),
            Some(("cookie", name)) => Err(format!("{name:?} is not a cookie name")),
            Some(_) => Err(unknown()),
        }
    }
}

impl fmt::Display for SegmentMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SegmentMatch::Header(name) => write!(f, "header:{name}"),
            SegmentMatch::Cookie(name) => write!(f, "cookie:{name}"),
            SegmentMatch::Key => f.write_str("key"),
            SegmentMatch::Ip => f.write_str("ip"),
        }
    }
}

impl Serialize for SegmentMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The values of one segment: exact byte strings, or address ranges for `ip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSet {
    /// XXH3 with a fixed seed: the values come from the operator, and a lookup (all a
    /// client can cause) inserts nothing, so there is no flooding to defend against.
    Exact(HashSet<Box<[u8]>, BuildHasherDefault<ValueHasher>>),
    Cidrs(CidrSet),
}

impl ValueSet {
    pub fn len(&self) -> usize {
        match self {
            ValueSet::Exact(set) => set.len(),
            ValueSet::Cidrs(set) => set.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as written (one per line or list entry) for `on`: CIDRs (or bare
    /// addresses) for `ip`, exact strings otherwise. Each comes with its place, which
    /// errors name (`line 12`, `values[3]`).
    pub fn parse<'a>(
        on: &SegmentMatch,
        values: impl Iterator<Item = (String, &'a str)>,
    ) -> Result<ValueSet, String> {
        match on {
            SegmentMatch::Ip => {
                let mut nets = Vec::new();
                for (place, value) in values {
                    let net = parse_net(value)
                        .ok_or_else(|| format!("{place}: {value:?} is not a CIDR or IP address"))?;
                    nets.push(net);
                }
                Ok(ValueSet::Cidrs(CidrSet::new(&nets)))
            }
            _ => {
                let mut set = HashSet::with_hasher(BuildHasherDefault::default());
                for (place, value) in values {
                    // No request can carry such a value: a typo or a binary file.
                    if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                        return Err(format!("{place}: {value:?} holds a control character"));
                    }
                    set.insert(Box::<[u8]>::from(value.as_bytes()));
                }
                Ok(ValueSet::Exact(set))
            }
        }
    }

    /// Adds `other`'s values (a segment's `values` and its `values_file` together).
    pub fn extend(&mut self, other: ValueSet) {
        match (self, other) {
            (ValueSet::Exact(a), ValueSet::Exact(b)) => a.extend(b),
            (ValueSet::Cidrs(a), ValueSet::Cidrs(b)) => {
                let len = a.len + b.len;
                *a = CidrSet::from_ranges(
                    a.v4.iter().chain(&b.v4).copied(),
                    a.v6.iter().chain(&b.v6).copied(),
                );
                a.len = len;
            }
            // Both sides come from the same `match`, so they are of the same kind.
            _ => {}
        }
    }

    fn contains(&self, value: &[u8]) -> bool {
        match self {
            ValueSet::Exact(set) => set.contains(value),
            ValueSet::Cidrs(_) => false,
        }
    }
}

/// Hashes a value with one call of XXH3 over its bytes, seeded with its length (what
/// `Hash for [u8]` writes first): the streaming XXH3 hasher costs several times more
/// for the short values segments hold, and every request with a key pays it.
#[derive(Debug, Default, Clone, Copy)]
pub struct ValueHasher(u64);

impl Hasher for ValueHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxh3_64_with_seed(bytes, self.0);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.0 ^= n as u64;
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// The lines of a values file: one value per line, surrounding whitespace trimmed,
/// blank lines and `#` comments (whole line) skipped. Yields (`line N`, value).
pub fn file_values(text: &str) -> impl Iterator<Item = (String, &str)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let line = line.trim();
        (!line.is_empty() && !line.starts_with('#')).then(|| (format!("line {}", i + 1), line))
    })
}

/// Address ranges, sorted and merged, so a lookup is one bisection per family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
    /// How many CIDRs were given (before merging): what the status page shows.
    len: usize,
}

impl CidrSet {
    pub fn new(nets: &[IpNet]) -> CidrSet {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net.trunc() {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        let mut set = CidrSet::from_ranges(v4.into_iter(), v6.into_iter());
        set.len = nets.len();
        set
    }

    fn from_ranges(
        v4: impl Iterator<Item = (u32, u32)>,
        v6: impl Iterator<Item = (u128, u128)>,
    ) -> CidrSet {
        CidrSet {
            v4: merged(v4.collect()),
            v6: merged(v6.collect()),
            len: 0,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical_ip(ip) {
            IpAddr::V4(ip) => within(&self.v4, u32::from(ip)),
            IpAddr::V6(ip) => within(&self.v6, u128::from(ip)),
        }
    }
}

/// Sorted, non-overlapping, non-adjacent ranges covering the same addresses.
fn merged<T: Ord + Copy + num_like::Successor>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if last.1.successor().map_or(true, |next| start <= next) => {
                last.1 = last.1.max(end);
            }
            _ => out.push((start, end)),
        }
    }
    out
}

fn within<T: Ord + Copy>(ranges: &[(T, T)], ip: T) -> bool {
    // The last range starting at or before `ip` is the only one that can hold it.
    let after = ranges.partition_point(|&(start, _)| start <= ip);
    after > 0 && ip <= ranges[after - 1].1
}

mod num_like {
    /// `x + 1`, or `None` at the top of the address space.
    pub trait Successor: Sized {
        fn successor(self) -> Option<Self>;
    }
    impl Successor for u32 {
        fn successor(self) -> Option<u32> {
            self.checked_add(1)
        }
    }
    impl Successor for u128 {
        fn successor(self) -> Option<u128> {
            self.checked_add(1)
        }
    }
}

/// One `[[routes.segments]]` rule, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    #[serde(rename = "match")]
    pub on: SegmentMatch,
    #[serde(serialize_with = "variant_name")]
    pub variant: Variant,
    /// The inline `values` as written (what `/config` shows back).
    pub values: Vec<String>,
    /// Where more values come from; read by the shell with the config.
    pub values_file: Option<std::path::PathBuf>,
    /// Every value, inline and from the file: what requests are matched against
    /// (`/config` shows how many).
    #[serde(rename = "values_count", serialize_with = "set_len")]
    pub set: Arc<ValueSet>,
}

fn set_len<S: serde::Serializer>(set: &Arc<ValueSet>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(set.len() as u64)
}

fn variant_name<S: serde::Serializer>(variant: &Variant, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(variant.as_str())
}

/// What a segment needs of a request: its fields, its cohort key and its client address.
pub struct Attributes<'a, F: Fields> {
    pub fields: &'a F,
    pub key: Option<&'a [u8]>,
    /// Always known for a real request; `/assign` may leave it out.
    pub client: Option<IpAddr>,
}

impl Segment {
    /// How many values the rule holds in all.
    pub fn values_count(&self) -> usize {
        self.set.len()
    }

    pub fn matches<F: Fields>(&self, request: &Attributes<'_, F>) -> bool {
        match &self.on {
            SegmentMatch::Header(name) => request
                .fields
                .first(name)
                .is_some_and(|v| self.set.contains(v.trim_ascii())),
            SegmentMatch::Cookie(name) => {
                cookie(request.fields, name).is_some_and(|v| self.set.contains(v))
            }
            SegmentMatch::Key => request.key.is_some_and(|k| self.set.contains(k)),
            SegmentMatch::Ip => match &*self.set {
                ValueSet::Cidrs(cidrs) => request.client.is_some_and(|ip| cidrs.contains(ip)),
                ValueSet::Exact(_) => false,
            },
        }
    }
}

/// The first segment matching the request: its index and variant.
pub fn first_match<F: Fields>(
    segments: &[Segment],
    request: &Attributes<'_, F>,
) -> Option<(usize, Variant)> {
    segments
        .iter()
        .position(|s| s.matches(request))
        .map(|i| (i, segments[i].variant))
}

#[cfg(test)]
mod tests;
