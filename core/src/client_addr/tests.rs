use std::net::IpAddr;

use ipnet::IpNet;

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|n| n.parse().unwrap()).collect()
}

/// The client for `peer` with these `X-Forwarded-For` lines, behind proxies in 10/8
/// and fd00::/8.
fn walk(peer: &str, lines: &[&str]) -> IpAddr {
    let trusted = nets(&["10.0.0.0/8", "fd00::/8"]);
    client_addr(ip(peer), &trusted, lines.iter().map(|l| l.as_bytes()))
}

#[test]
fn no_trusted_proxies_means_the_peer_whatever_the_header_says() {
    let lines = ["203.0.113.9"];
    let got = client_addr(ip("10.0.0.1"), &[], lines.iter().map(|l| l.as_bytes()));
    assert_eq!(got, ip("10.0.0.1"));
}

#[test]
fn an_untrusted_peer_cannot_spoof_its_address() {
    assert_eq!(walk("198.51.100.4", &["203.0.113.9"]), ip("198.51.100.4"));
    assert_eq!(
        walk("198.51.100.4", &["10.0.0.1, 203.0.113.9"]),
        ip("198.51.100.4")
    );
    // Even an entry naming a trusted proxy changes nothing.
    assert_eq!(walk("198.51.100.4", &["10.0.0.1"]), ip("198.51.100.4"));
}

#[test]
fn a_trusted_peer_without_the_header_is_the_client() {
    assert_eq!(walk("10.0.0.1", &[]), ip("10.0.0.1"));
    assert_eq!(walk("10.0.0.1", &[""]), ip("10.0.0.1"));
    assert_eq!(walk("10.0.0.1", &["  ,  , "]), ip("10.0.0.1"));
}

#[test]
fn the_first_untrusted_address_from_the_right_is_the_client() {
    assert_eq!(walk("10.0.0.1", &["203.0.113.9"]), ip("203.0.113.9"));
    assert_eq!(
        walk("10.0.0.1", &["1.1.1.1, 203.0.113.9, 10.2.3.4, 10.0.0.7"]),
        ip("203.0.113.9")
    );
    // What the client wrote left of its own address is never read as its address.
    assert_eq!(
        walk("10.0.0.1", &["10.9.9.9, 203.0.113.9, 10.2.3.4"]),
        ip("203.0.113.9")
    );
}

#[test]
fn all_trusted_gives_the_leftmost() {
    assert_eq!(walk("10.0.0.1", &["10.1.1.1, 10.2.2.2"]), ip("10.1.1.1"));
    assert_eq!(walk("10.0.0.1", &["10.1.1.1", "10.2.2.2"]), ip("10.1.1.1"));
}

#[test]
fn an_entry_that_is_not_an_address_ends_the_walk() {
    // The address right of it is the client.
    assert_eq!(
        walk("10.0.0.1", &["203.0.113.9, unknown, 10.2.3.4"]),
        ip("10.2.3.4")
    );
    // The rightmost entry broken: the peer.
    assert_eq!(walk("10.0.0.1", &["203.0.113.9, garbage"]), ip("10.0.0.1"));
    for broken in [
        "example.com",
        "1.2.3",
        "1.2.3.4.5",
        "256.1.1.1",
        "1.2.3.4:",
        "1.2.3.4:http",
        "1.2.3.4:123456",
        "\"[2001:db8::1]\"",
        "[2001:db8::1",
        "[2001:db8::1]x",
        "[1.2.3.4]",
        "fe80::1%eth0",
        "2001:db8::1:80:",
        "1.2.3.4 5.6.7.8",
        "for=192.0.2.60",
        "\u{e9}",
    ] {
        let line = format!("203.0.113.9, {broken}, 10.2.3.4");
        assert_eq!(walk("10.0.0.1", &[&line]), ip("10.2.3.4"), "{broken}");
    }
}

#[test]
fn invalid_utf8_ends_the_walk() {
    let trusted = nets(&["10.0.0.0/8"]);
    let lines: [&[u8]; 1] = [b"203.0.113.9, \xff\xfe, 10.2.3.4"];
    assert_eq!(client_addr(ip("10.0.0.1"), &trusted, lines), ip("10.2.3.4"));
}

#[test]
fn empty_elements_and_whitespace_are_skipped() {
    assert_eq!(
        walk("10.0.0.1", &[" 203.0.113.9 ,, \t,"]),
        ip("203.0.113.9")
    );
    assert_eq!(
        walk("10.0.0.1", &["203.0.113.9", "", "  "]),
        ip("203.0.113.9")
    );
    assert_eq!(walk("10.0.0.1", &["\t203.0.113.9\t"]), ip("203.0.113.9"));
}

#[test]
fn several_lines_are_one_list_in_order() {
    // The last line holds the nearest hops.
    assert_eq!(
        walk(
            "10.0.0.1",
            &["198.51.100.1", "203.0.113.9, 10.3.3.3", "10.4.4.4"]
        ),
        ip("203.0.113.9")
    );
    assert_eq!(
        walk("10.0.0.1", &["198.51.100.1", "10.3.3.3", "10.4.4.4"]),
        ip("198.51.100.1")
    );
}

#[test]
fn ports_are_ignored() {
    assert_eq!(walk("10.0.0.1", &["203.0.113.9:51234"]), ip("203.0.113.9"));
    assert_eq!(walk("10.0.0.1", &["[2001:db8::7]:443"]), ip("2001:db8::7"));
    assert_eq!(walk("10.0.0.1", &["[2001:db8::7]"]), ip("2001:db8::7"));
    // Trusted hops with ports are still trusted.
    assert_eq!(
        walk("10.0.0.1", &["203.0.113.9, 10.0.0.2:8080, [fd00::1]:80"]),
        ip("203.0.113.9")
    );
}

#[test]
fn ipv6_peers_and_entries() {
    assert_eq!(walk("fd00::5", &["2001:db8::1"]), ip("2001:db8::1"));
    assert_eq!(
        walk("fd00::5", &["2001:db8::1, fd00::9"]),
        ip("2001:db8::1")
    );
    assert_eq!(walk("2001:db8::5", &["2001:db8::1"]), ip("2001:db8::5"));
    // A full-length address.
    assert_eq!(
        walk(
            "fd00::5",
            &["ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"]
        ),
        ip("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255")
    );
}

#[test]
fn ipv4_mapped_addresses_are_ipv4() {
    // A mapped peer inside an IPv4 network is trusted.
    assert_eq!(walk("::ffff:10.0.0.1", &["203.0.113.9"]), ip("203.0.113.9"));
    // A mapped entry is written as IPv4 and judged as IPv4.
    assert_eq!(walk("10.0.0.1", &["::ffff:203.0.113.9"]), ip("203.0.113.9"));
    assert_eq!(
        walk("10.0.0.1", &["203.0.113.9, [::ffff:10.1.1.1]:80"]),
        ip("203.0.113.9")
    );
}

#[test]
fn single_addresses_and_ipv6_trusted_sets() {
    let trusted = nets(&["127.0.0.1/32", "::1/128"]);
    let lines: [&[u8]; 1] = [b"192.0.2.1, 127.0.0.1"];
    assert_eq!(client_addr(ip("::1"), &trusted, lines), ip("192.0.2.1"));
    assert_eq!(
        client_addr(ip("127.0.0.2"), &trusted, lines),
        ip("127.0.0.2")
    );
}

#[test]
fn the_walk_examines_at_most_max_hops_entries() {
    // 25 trusted hops left of... nothing: the 20th from the right is where it stops.
    let hops: Vec<String> = (1..=25).map(|i| format!("10.0.0.{i}")).collect();
    let line = hops.join(", ");
    assert_eq!(walk("10.0.0.1", &[&line]), ip("10.0.0.6"));
    // The client within the cap is found; beyond it, not.
    let mut within = vec!["203.0.113.9".to_owned()];
    within.extend((1..MAX_HOPS).map(|i| format!("10.0.1.{i}")));
    assert_eq!(walk("10.0.0.1", &[&within.join(",")]), ip("203.0.113.9"));
    let mut beyond = vec!["203.0.113.9".to_owned()];
    beyond.extend((1..=MAX_HOPS).map(|i| format!("10.0.1.{i}")));
    assert_eq!(walk("10.0.0.1", &[&beyond.join(",")]), ip("10.0.1.1"));
    // Empty elements count: a header of commas costs no more than twenty entries.
    let commas = ",".repeat(100_000);
    assert_eq!(
        walk("10.0.0.1", &[&format!("203.0.113.9{commas}")]),
        ip("10.0.0.1")
    );
    // Many lines too.
    let many: Vec<&str> = std::iter::repeat("10.9.9.9").take(10_000).collect();
    assert_eq!(walk("10.0.0.1", &many), ip("10.9.9.9"));
}

#[test]
fn a_very_long_entry_is_not_scanned_to_its_end() {
    let long = format!("203.0.113.9, {}", " ".repeat(100_000));
    assert_eq!(walk("10.0.0.1", &[&long]), ip("10.0.0.1"));
    let long = format!("{}1.2.3.4", "x".repeat(100_000));
    assert_eq!(walk("10.0.0.1", &[&long]), ip("10.0.0.1"));
    // Long padding inside the bound is fine.
    let padded = format!("{}203.0.113.9", " ".repeat(MAX_ENTRY_LEN - 11));
    assert_eq!(walk("10.0.0.1", &[&padded]), ip("203.0.113.9"));
    let padded = format!("{}203.0.113.9", " ".repeat(MAX_ENTRY_LEN - 10));
    assert_eq!(walk("10.0.0.1", &[&padded]), ip("10.0.0.1"));
}

#[test]
fn is_trusted_canonicalises() {
    let trusted = nets(&["10.0.0.0/8"]);
    assert!(is_trusted(&trusted, ip("::ffff:10.1.2.3")));
    assert!(!is_trusted(&trusted, ip("11.0.0.1")));
    assert!(!is_trusted(&[], ip("10.0.0.1")));
}
