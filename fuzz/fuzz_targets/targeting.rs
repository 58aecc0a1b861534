//! Targeting input (DESIGN §11): W3C `baggage` bytes (`core/src/baggage.rs`) and
//! segment values files (`core/src/segment.rs`).
//!
//! Baggage: reading and rewriting never panic; a rewrite for an untrusted sender leaves
//! no `cohort.*` member but ours; every other member survives in order, byte for byte;
//! ours, when set and within the W3C limits, reads back as the variant set.
//! Values: parsing any text never panics; an `ip` rule holds an address exactly when
//! one of its CIDRs (checked one by one) does, so merging ranges loses or adds nothing.
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use cohort_core::baggage::{self, Rewrite};
use cohort_core::cohort::Variant;
use cohort_core::segment::{file_values, SegmentMatch, ValueSet};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 3] = ["checkout-v2", "x", "a.b"];

#[derive(Arbitrary, Debug)]
struct Input {
    fields: Vec<Vec<u8>>,
    name: u8,
    strip: bool,
    set: Option<bool>,
    values: String,
    probes: Vec<([u8; 16], bool)>,
}

/// The members as the module sees them: split on commas, trimmed, empty ones dropped.
fn members(fields: &[&[u8]]) -> Vec<Vec<u8>> {
    fields
        .iter()
        .flat_map(|f| f.split(|&b| b == b','))
        .map(|m| m.trim_ascii().to_vec())
        .filter(|m| !m.is_empty())
        .collect()
}

fn is_cohort(member: &[u8]) -> bool {
    let key = match member.iter().position(|&b| b == b'=') {
        Some(eq) => member[..eq].trim_ascii(),
        None => return false,
    };
    key.len() >= 7 && key[..7].eq_ignore_ascii_case(b"cohort.")
}

fn check_baggage(input: &Input) {
    let fields: Vec<&[u8]> = input.fields.iter().map(Vec::as_slice).take(4).collect();
    let name = NAMES[usize::from(input.name) % NAMES.len()];
    let _ = baggage::find(|| fields.iter().copied(), name);
    let set = input.set.map(|canary| {
        let variant = if canary { Variant::Canary } else { Variant::Stable };
        (name, variant)
    });
    let rewrite = Rewrite {
        strip_cohort: input.strip,
        set,
    };
    let out = baggage::rewrite(fields.iter().copied(), rewrite).unwrap_or_default();
    let ours = set.map(|(n, v)| format!("cohort.{n}={}", v.as_str()).into_bytes());
    let out_members = members(&[&out]);
    let mut kept: Vec<Vec<u8>> = out_members.clone();
    let ours_written = ours.as_ref().is_some_and(|o| kept.last() == Some(o));
    if ours_written {
        kept.pop();
    }
    let expected: Vec<Vec<u8>> = members(&fields)
        .into_iter()
        .filter(|m| !(input.strip && is_cohort(m)))
        .filter(|m| {
            // A member of our name is replaced.
            let Some((n, _)) = set else { return true };
            let key = m.iter().position(|&b| b == b'=').map(|eq| m[..eq].trim_ascii());
            key.is_none_or(|k| {
                !(k.len() == 7 + n.len()
                    && k[..7].eq_ignore_ascii_case(b"cohort.")
                    && &k[7..] == n.as_bytes())
            })
        })
        .collect();
    assert_eq!(kept, expected, "other members must pass in order, byte for byte");
    if input.strip {
        let stray = kept.iter().filter(|m| is_cohort(m)).count();
        assert_eq!(stray, 0, "an untrusted sender's cohort.* member survived");
    }
    if let (Some((n, v)), true) = (set, ours_written) {
        if out.len() <= baggage::MAX_BYTES && out_members.len() <= baggage::MAX_MEMBERS {
            assert_eq!(baggage::find(|| std::iter::once(out.as_slice()), n), Some(v));
        }
    }
}

fn check_values(input: &Input) {
    let _ = ValueSet::parse(&SegmentMatch::Key, file_values(&input.values));
    let Ok(set) = ValueSet::parse(&SegmentMatch::Ip, file_values(&input.values)) else {
        return;
    };
    let ValueSet::Cidrs(cidrs) = &set else {
        panic!("ip values are CIDRs");
    };
    let nets: Vec<IpNet> = file_values(&input.values)
        .filter_map(|(_, v)| {
            v.parse::<IpNet>()
                .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
                .ok()
        })
        .map(|n| n.trunc())
        .collect();
    for (bytes, v4) in &input.probes {
        let ip = if *v4 {
            IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
        } else {
            IpAddr::from(*bytes)
        };
        let canonical = cohort_core::config::canonical_ip(ip);
        let linear = nets.iter().any(|n| n.contains(&canonical));
        assert_eq!(cidrs.contains(ip), linear, "{ip} against {nets:?}");
    }
}

fuzz_target!(|input: Input| {
    check_baggage(&input);
    check_values(&input);
});
