//! The client's address (DESIGN §10): the TCP peer, or, when the peer is one of
//! `listen.trusted_proxies`, the address those proxies recorded in `X-Forwarded-For`.
//!
//! The walk, from the right (the entry the nearest proxy appended) leftwards:
//! - the walk starts at the peer; it happens only when the peer is trusted, so a
//!   client that reaches cohort directly cannot choose its address by sending the header;
//! - each address inside `trusted_proxies` was written by a trusted hop about its own
//!   peer, so the walk moves past it; the first address outside them is the client;
//! - when every address is trusted, the leftmost one is the client;
//! - an entry that is not an IP address ends the walk: the address right of it (the
//!   peer, when it is the rightmost entry) is the client, since nothing left of a
//!   broken entry can be told apart from what a client made up;
//! - several `X-Forwarded-For` lines are one list, in order (RFC 9110 §5.3), and empty
//!   elements (`a,,b`, a blank line) are skipped (RFC 9110 §5.6.1).
//!
//! Entry forms, as NGINX's realip and Envoy's XFF handling accept them: `192.0.2.7`,
//! `192.0.2.7:5000`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:5000`, spaces and
//! tabs around each. An IPv4-mapped IPv6 address is the IPv4 address (as
//! [`canonical_ip`] makes it). Anything else (`unknown`, a hostname, a zone id, a
//! quoted RFC 7239 node) is not an IP address.
//!
//! Bounded work: at most [`MAX_HOPS`] entries are examined, each at most
//! [`MAX_ENTRY_LEN`] bytes read, whatever the header's size. A walk that reaches the cap
//! with every address trusted ends on the last address it examined, as if it were the
//! leftmost. No allocation: the caller hands the field values in as borrowed bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::config::canonical_ip;

/// Entries (empty ones included) examined from the right before the walk stops. Real
/// chains have a handful of hops; twenty is far beyond any deployment's and keeps a
/// request with thousands of entries from costing more than a short one.
pub const MAX_HOPS: usize = 20;

/// The longest entry read, spaces included: `[` + 45 bytes of IPv6 text + `]:65535`
/// is 53; longer text is not an address, and is not scanned to its end.
pub const MAX_ENTRY_LEN: usize = 64;

/// Whether `ip` is inside one of `nets` (IPv4-mapped IPv6 as IPv4). A linear scan: the
/// list is a handful of CIDRs.
#[inline]
pub fn is_trusted(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical_ip(ip);
    nets.iter().any(|net| net.contains(&ip))
}

/// The client's address for a request from `peer` whose `X-Forwarded-For` field values
/// are `lines`, in the order received (see the module documentation). With no
/// `trusted` networks, or a peer outside them, `lines` is not read and the peer is the
/// client, unchanged.
pub fn client_addr<'a, I>(peer: IpAddr, trusted: &[IpNet], lines: I) -> IpAddr
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: DoubleEndedIterator,
{
    if trusted.is_empty() || !is_trusted(trusted, peer) {
        return peer;
    }
    let mut client = peer;
    let mut examined = 0;
    for line in lines.into_iter().rev() {
        let mut rest = line;
        loop {
            if examined == MAX_HOPS {
                return client;
            }
            examined += 1;
            let Some((entry, left)) = last_entry(rest) else {
                // An entry too long to be an address.
                return client;
            };
            let entry = entry.trim_ascii();
            if !entry.is_empty() {
                let Some(ip) = parse_entry(entry) else {
                    return client;
                };
                client = ip;
                if !is_trusted(trusted, ip) {
                    return ip;
                }
            }
            match left {
                Some(left) => rest = left,
                None => break,
            }
        }
    }
    client
}

/// Splits `line` at its last comma: (the entry right of it, what is left of it, `None`
/// when there is no comma). `None` when the entry is longer than [`MAX_ENTRY_LEN`],
/// found without reading further than that.
#[inline]
fn last_entry(line: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let window = line.len().saturating_sub(MAX_ENTRY_LEN + 1);
    match line[window..].iter().rposition(|&b| b == b',') {
        Some(at) => {
            let comma = window + at;
            Some((&line[comma + 1..], Some(&line[..comma])))
        }
        None if line.len() <= MAX_ENTRY_LEN => Some((line, None)),
        None => None,
    }
}

/// One trimmed, non-empty entry as an address (see the module documentation for the forms).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    if let Some(bracketed) = text.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']')?;
        if !after.is_empty() && !after.strip_prefix(':').is_some_and(is_port) {
            return None;
        }
        return inside
            .parse::<Ipv6Addr>()
            .ok()
            .map(|v6| canonical_ip(v6.into()));
    }
    // Exactly one colon: IPv4 with a port. More: bare IPv6 (a port needs brackets).
    let ip = match text.split_once(':') {
        Some((v4, port)) if !port.contains(':') => {
            if !is_port(port) {
                return None;
            }
            IpAddr::V4(v4.parse::<Ipv4Addr>().ok()?)
        }
        _ => text.parse::<IpAddr>().ok()?,
    };
    Some(canonical_ip(ip))
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests;
