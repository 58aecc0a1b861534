use std::net::IpAddr;

use http::HeaderMap;

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn cidrs(list: &[&str]) -> ValueSet {
    let values = list
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("values[{i}]"), *v));
    ValueSet::parse(&SegmentMatch::Ip, values).expect("test CIDRs")
}

fn exact(on: &SegmentMatch, list: &[&str]) -> ValueSet {
    let values = list
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("values[{i}]"), *v));
    ValueSet::parse(on, values).expect("test values")
}

fn segment(on: &str, values: ValueSet, variant: Variant) -> Segment {
    Segment {
        on: SegmentMatch::parse(on).expect("test match"),
        variant,
        values: Vec::new(),
        values_file: None,
        set: Arc::new(values),
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    map
}

#[test]
fn matches_are_parsed_and_named_back() {
    for text in ["header:x-team", "cookie:beta", "key", "ip"] {
        assert_eq!(
            SegmentMatch::parse(text).map(|m| m.to_string()),
            Ok(text.to_owned())
        );
    }
    for bad in [
        "",
        "header:",
        "header:a b",
        "cookie:",
        "cookie:a;b",
        "query:x",
        "Key",
    ] {
        assert!(SegmentMatch::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn cidr_sets_hold_exactly_their_addresses() {
    let set = match cidrs(&[
        "10.0.0.0/8",
        "192.0.2.7",
        "10.1.0.0/16",
        "2001:db8::/32",
        "::1",
    ]) {
        ValueSet::Cidrs(set) => set,
        ValueSet::Exact(_) => panic!("ip values are CIDRs"),
    };
    assert_eq!(set.len, 5, "the count is of CIDRs as written");
    assert_eq!(set.v4.len(), 2, "10.1/16 merged into 10/8");
    for inside in [
        "10.0.0.0",
        "10.255.255.255",
        "192.0.2.7",
        "2001:db8::1",
        "::1",
        "::ffff:10.2.3.4",
    ] {
        assert!(set.contains(ip(inside)), "{inside}");
    }
    for outside in [
        "9.255.255.255",
        "11.0.0.0",
        "192.0.2.6",
        "192.0.2.8",
        "2001:db9::",
        "::2",
    ] {
        assert!(!set.contains(ip(outside)), "{outside}");
    }
}

#[test]
fn adjacent_and_whole_space_ranges_merge_without_overflow() {
    let set = match cidrs(&["0.0.0.0/1", "128.0.0.0/1", "255.255.255.255", "::/0"]) {
        ValueSet::Cidrs(set) => set,
        ValueSet::Exact(_) => panic!("ip values are CIDRs"),
    };
    assert_eq!(set.v4, vec![(0, u32::MAX)]);
    assert_eq!(set.v6, vec![(0, u128::MAX)]);
    assert!(set.contains(ip("255.255.255.255")) && set.contains(ip("::")));
}

#[test]
fn a_bad_cidr_names_its_place() {
    let err = ValueSet::parse(
        &SegmentMatch::Ip,
        file_values("10.0.0.0/8\n# office\n\n10.0.0/33\n"),
    )
    .expect_err("bad CIDR");
    assert!(err.starts_with("line 4: "), "{err}");
}

#[test]
fn a_value_no_request_can_carry_is_refused() {
    let err = ValueSet::parse(&SegmentMatch::Key, file_values("ok\nbad\u{1}value\n"))
        .expect_err("control character");
    assert!(err.starts_with("line 2: "), "{err}");
}

#[test]
fn values_files_skip_comments_and_blank_lines_and_trim() {
    let values: Vec<_> = file_values("# beta customers\n  acme \n\n\tglobex\n#x\n").collect();
    assert_eq!(
        values,
        vec![
            ("line 2".to_owned(), "acme"),
            ("line 4".to_owned(), "globex")
        ]
    );
}

#[test]
fn each_kind_of_rule_reads_its_own_attribute() {
    let team = SegmentMatch::parse("header:x-team").expect("match");
    let beta = SegmentMatch::parse("cookie:beta").expect("match");
    let rules = [
        segment(
            "header:x-team",
            exact(&team, &["qa", "dev"]),
            Variant::Canary,
        ),
        segment("cookie:beta", exact(&beta, &["yes"]), Variant::Canary),
        segment(
            "key",
            exact(&SegmentMatch::Key, &["vip-1"]),
            Variant::Stable,
        ),
        segment("ip", cidrs(&["203.0.113.0/24"]), Variant::Stable),
    ];
    let outside = ip("198.51.100.1");
    let case = |h: &HeaderMap, key: Option<&[u8]>, client: IpAddr| {
        first_match(
            &rules,
            &Attributes {
                fields: h,
                key,
                client: Some(client),
            },
        )
    };
    let none = headers(&[]);
    assert_eq!(case(&none, None, outside), None);
    assert_eq!(
        case(&headers(&[("x-team", " qa ")]), None, outside),
        Some((0, Variant::Canary))
    );
    assert_eq!(
        case(&headers(&[("x-team", "QA")]), None, outside),
        None,
        "values are exact"
    );
    assert_eq!(
        case(&headers(&[("cookie", "a=1; beta=yes")]), None, outside),
        Some((1, Variant::Canary))
    );
    assert_eq!(
        case(&none, Some(b"vip-1"), outside),
        Some((2, Variant::Stable))
    );
    assert_eq!(
        case(&none, None, ip("203.0.113.9")),
        Some((3, Variant::Stable))
    );
    // Order decides between two matching rules.
    let both = headers(&[("x-team", "dev")]);
    assert_eq!(
        case(&both, Some(b"vip-1"), ip("203.0.113.9")),
        Some((0, Variant::Canary))
    );
}

#[test]
fn a_hundred_thousand_values_are_one_lookup() {
    let key = SegmentMatch::Key;
    let lines: String = (0..100_000).map(|i| format!("customer-{i}\n")).collect();
    let set = ValueSet::parse(&key, file_values(&lines)).expect("values");
    assert_eq!(set.len(), 100_000);
    assert!(set.contains(b"customer-99999"));
    assert!(!set.contains(b"customer-100000"));
    let nets: String = (0..100_000u32)
        .map(|i| format!("{}/32\n", std::net::Ipv4Addr::from(0x0a00_0000 + i * 2)))
        .collect();
    let set = ValueSet::parse(&SegmentMatch::Ip, file_values(&nets)).expect("CIDRs");
    let ValueSet::Cidrs(set) = set else {
        panic!("ip values are CIDRs")
    };
    assert!(set.contains(ip("10.0.0.2")) && !set.contains(ip("10.0.0.3")));
}

#[test]
fn file_values_add_to_inline_ones() {
    let mut set = cidrs(&["10.0.0.0/8"]);
    set.extend(cidrs(&["192.0.2.0/24"]));
    assert_eq!(set.len(), 2);
    let ValueSet::Cidrs(cidr) = &set else {
        panic!("ip values are CIDRs")
    };
    assert!(cidr.contains(ip("10.9.9.9")) && cidr.contains(ip("192.0.2.1")));
    let mut words = exact(&SegmentMatch::Key, &["a"]);
    words.extend(exact(&SegmentMatch::Key, &["b", "a"]));
    assert_eq!(words.len(), 2);
}
