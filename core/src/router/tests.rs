use std::path::Path;

use http::HeaderName;

use super::*;
use crate::cohort;
use crate::config;

fn routes(text: &str) -> Vec<Route> {
    config::parse(text, Path::new("test.toml"))
        .unwrap_or_else(|e| panic!("{e}"))
        .routes
}

fn route_block(name: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nsalt = \"s\"\nstable = {{ endpoints = [\"http://127.0.0.1:1\"] }}\n{extra}\n"
    )
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

#[test]
fn longest_prefix_wins_and_ties_keep_file_order() {
    let rs = routes(
        &[
            route_block("root", "path_prefix = \"/\""),
            route_block("api", "path_prefix = \"/api\""),
            route_block("api-v2", "path_prefix = \"/api/v2\""),
            route_block("api-dup", "path_prefix = \"/api\""),
        ]
        .concat(),
    );
    let table = RouteTable::new(&rs);
    let name = |path: &str| table.find(&rs, None, path).map(|i| rs[i].name.as_str());
    assert_eq!(name("/"), Some("root"));
    assert_eq!(name("/apix"), Some("api"), "byte prefix, as documented");
    assert_eq!(name("/api/v2/users"), Some("api-v2"));
    assert_eq!(name("/api/v1"), Some("api"));
    assert_eq!(name("/other"), Some("root"));
}

#[test]
fn host_routes_come_first_case_insensitive_without_port() {
    let rs = routes(
        &[
            route_block("any", "path_prefix = \"/\""),
            route_block(
                "shop",
                "host = \"shop.example.com\"\npath_prefix = \"/checkout\"",
            ),
            route_block("v6", "host = \"[::1]\""),
        ]
        .concat(),
    );
    let table = RouteTable::new(&rs);
    let name =
        |host: Option<&str>, path: &str| table.find(&rs, host, path).map(|i| rs[i].name.as_str());
    assert_eq!(
        name(Some("SHOP.example.com:8443"), "/checkout/1"),
        Some("shop")
    );
    assert_eq!(
        name(Some("shop.example.com"), "/about"),
        Some("any"),
        "falls back to host-less routes"
    );
    assert_eq!(name(Some("other.example.com"), "/checkout"), Some("any"));
    assert_eq!(name(None, "/checkout"), Some("any"));
    assert_eq!(name(Some("[::1]:8080"), "/x"), Some("v6"));
}

#[test]
fn no_route_means_none() {
    let rs = routes(&route_block("api", "path_prefix = \"/api\""));
    let table = RouteTable::new(&rs);
    assert_eq!(table.find(&rs, None, "/"), None);
    assert_eq!(table.find(&rs, Some("x"), "/ap"), None);
}

#[test]
fn host_comes_from_the_authority_then_the_host_header() {
    let uri: Uri = "http://from-authority:81/x".parse().unwrap();
    assert_eq!(
        request_host(&uri, &HeaderMap::new()),
        Some("from-authority:81")
    );
    assert_eq!(
        request_host(&uri, &headers(&[("host", "from-header")])),
        Some("from-authority:81"),
        "an absolute-form target wins over Host (RFC 9112 §3.2.2)"
    );
    let origin_form: Uri = "/x".parse().unwrap();
    assert_eq!(
        request_host(&origin_form, &headers(&[("host", "from-header")])),
        Some("from-header")
    );
    let origin: Uri = "/x".parse().unwrap();
    assert_eq!(request_host(&origin, &HeaderMap::new()), None);
}

#[test]
fn key_sources_are_tried_in_order() {
    let rs = routes(&route_block(
        "r",
        "sticky = [\"header:x-user-id\", \"cookie:session\", \"ip\"]",
    ));
    let sticky = &rs[0].sticky;
    let key = |h: &HeaderMap| {
        find_key(sticky, h, PEER)
            .map(|(k, s)| (String::from_utf8(k.as_bytes().to_vec()).unwrap(), s))
    };
    assert_eq!(
        key(&headers(&[
            ("x-user-id", "  alice "),
            ("cookie", "session=s1")
        ])),
        Some(("alice".into(), AssignSource::Header))
    );
    assert_eq!(
        key(&headers(&[
            ("x-user-id", "   "),
            ("cookie", "a=1; session=s1")
        ])),
        Some(("s1".into(), AssignSource::Cookie)),
        "an empty header is skipped"
    );
    assert_eq!(
        key(&HeaderMap::new()),
        Some(("192.0.2.7".into(), AssignSource::Ip))
    );
}

#[test]
fn first_header_value_is_the_key() {
    let rs = routes(&route_block("r", "sticky = [\"header:x-user-id\"]"));
    let h = headers(&[("x-user-id", "first"), ("x-user-id", "second")]);
    let (key, _) = find_key(&rs[0].sticky, &h, PEER).unwrap();
    assert_eq!(key.as_bytes(), b"first");
}

#[test]
fn cookies_are_found_across_split_headers() {
    let h = headers(&[
        ("cookie", "a=1; b=2"),
        ("cookie", "session=abc=def; session=later"),
    ]);
    assert_eq!(
        cookie(&h, "session"),
        Some(&b"abc=def"[..]),
        "raw value, first occurrence"
    );
    assert_eq!(cookie(&h, "b"), Some(&b"2"[..]));
    assert_eq!(cookie(&h, "sess"), None, "names match exactly");
    assert_eq!(cookie(&headers(&[("cookie", "garbage; x")]), "x"), None);
}

#[test]
fn cohort_id_cookie_is_tried_after_the_route_sources() {
    let rs = routes(&route_block("r", "sticky = [\"header:x-user-id\"]"));
    let h = headers(&[("cookie", "cohort_id=abc123")]);
    let (key, source) = find_key(&rs[0].sticky, &h, PEER).unwrap();
    assert_eq!(
        (key.as_bytes(), source),
        (&b"abc123"[..], AssignSource::Cookie)
    );
    let h = headers(&[("cookie", "cohort_id=abc123"), ("x-user-id", "u1")]);
    let (key, source) = find_key(&rs[0].sticky, &h, PEER).unwrap();
    assert_eq!((key.as_bytes(), source), (&b"u1"[..], AssignSource::Header));
}

#[test]
fn ip_keys_are_canonical_text() {
    assert_eq!(
        IpText::new("2001:0db8:0:0::1".parse().unwrap()).as_bytes(),
        b"2001:db8::1"
    );
    assert_eq!(
        IpText::new("::ffff:192.0.2.7".parse().unwrap()).as_bytes(),
        b"192.0.2.7"
    );
    let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
    assert_eq!(IpText::new(longest).as_bytes().len(), 39);
}

/// IPv4 text is rendered by hand (per request): it must be what `Display` writes.
#[test]
fn ipv4_text_matches_display_for_every_octet_width() {
    let octets = [0u8, 1, 9, 10, 42, 99, 100, 109, 110, 199, 200, 250, 255];
    for a in octets {
        for b in octets {
            let ip = std::net::Ipv4Addr::new(a, b, 255 - a, b / 2);
            assert_eq!(
                IpText::new(IpAddr::V4(ip)).as_bytes(),
                ip.to_string().as_bytes(),
                "{ip}"
            );
        }
    }
}

#[test]
fn keyless_clients_get_a_random_key_and_a_cookie() {
    let rs = routes(&route_block(
        "r",
        "canary_percent = 50\ncanary = { endpoints = [\"http://c:1\"] }",
    ));
    let d = decide(&rs[0], rs[0].canary_bp, &HeaderMap::new(), PEER, || {
        "drawn".to_owned()
    });
    assert_eq!(d.source, AssignSource::Random);
    assert_eq!(d.new_cohort_id.as_deref(), Some("drawn"));
    assert_eq!(d.bucket, Some(cohort::bucket("s", b"drawn")));
    // The same key sent back as the cookie lands in the same variant, without a new cookie.
    let again = decide(
        &rs[0],
        rs[0].canary_bp,
        &headers(&[("cookie", "cohort_id=drawn")]),
        PEER,
        || unreachable!("a returning client must not draw a new key"),
    );
    assert_eq!((again.variant, again.new_cohort_id), (d.variant, None));
}

#[test]
fn decision_follows_the_bucket() {
    let rs = routes(&route_block("r", "sticky = [\"header:x-user-id\"]\ncanary_percent = 10\ncanary = { endpoints = [\"http://c:1\"] }"));
    // checkout-v2/alice is a README vector; here the salt is "s".
    let b = cohort::bucket("s", b"alice");
    let d = decide(
        &rs[0],
        BasisPoints::from_raw(b + 1).unwrap(),
        &headers(&[("x-user-id", "alice")]),
        PEER,
        String::new,
    );
    assert_eq!((d.variant, d.bucket), (Variant::Canary, Some(b)));
    let d = decide(
        &rs[0],
        BasisPoints::from_raw(b).unwrap(),
        &headers(&[("x-user-id", "alice")]),
        PEER,
        String::new,
    );
    assert_eq!(d.variant, Variant::Stable);
}

#[test]
fn overrides_work_only_from_trusted_peers() {
    let rs = routes(&route_block(
        "r",
        "override = { trusted = [\"192.0.2.0/24\"] }\ncanary = { endpoints = [\"http://c:1\"] }",
    ));
    let forced = headers(&[("x-cohort-variant", "canary")]);
    let d = decide(&rs[0], BasisPoints::ZERO, &forced, PEER, || "k".into());
    assert_eq!(
        (d.variant, d.source),
        (Variant::Canary, AssignSource::Override)
    );
    let cookie_forced = headers(&[("cookie", "cohort_variant=canary")]);
    let d = decide(&rs[0], BasisPoints::ZERO, &cookie_forced, PEER, || {
        "k".into()
    });
    assert_eq!(
        (d.variant, d.source),
        (Variant::Canary, AssignSource::Override)
    );
    let untrusted: IpAddr = "198.51.100.1".parse().unwrap();
    let d = decide(&rs[0], BasisPoints::ZERO, &forced, untrusted, || "k".into());
    assert_eq!(
        (d.variant, d.source),
        (Variant::Stable, AssignSource::Random)
    );
    let nonsense = headers(&[("x-cohort-variant", "blue")]);
    let d = decide(&rs[0], BasisPoints::ZERO, &nonsense, PEER, || "k".into());
    assert_eq!(
        d.source,
        AssignSource::Random,
        "unknown variant names are ignored"
    );
}

#[test]
fn set_cookie_has_the_documented_attributes() {
    let plain = cohort_id_cookie("abc", false).unwrap();
    assert_eq!(
        plain,
        "cohort_id=abc; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"
    );
    let tls = cohort_id_cookie("abc", true).unwrap();
    assert!(tls.to_str().unwrap().ends_with("; Secure"));
}

fn decide_one(route: &Route, pairs: &[(&str, &str)], client: &str) -> Decision {
    let bp = BasisPoints::from_percent(50.0).expect("50 %");
    let client: IpAddr = client.parse().expect("address");
    decide(route, bp, &headers(pairs), client, || "drawn".to_owned())
}

/// DESIGN §11: override (trusted) > followed baggage (trusted) > first segment > percentage.
#[test]
fn precedence_is_override_then_baggage_then_segment_then_percentage() {
    let rs = routes(&route_block(
        "r",
        r#"sticky = ["header:x-user"]
follow = "rel"
override = { trusted = ["10.0.0.0/8"] }
[[routes.segments]]
match = "header:x-team"
values = ["qa"]
variant = "canary"
[[routes.segments]]
match = "key"
values = ["blocked-user"]
variant = "stable""#,
    ));
    let route = &rs[0];
    let trusted = "10.1.2.3";
    let team = ("x-team", "qa");
    let stable_baggage = ("baggage", "a=1,cohort.rel=stable");
    let forced = ("x-cohort-variant", "stable");

    let d = decide_one(route, &[team, stable_baggage, forced], trusted);
    assert_eq!(
        (d.variant, d.source),
        (Variant::Stable, AssignSource::Override)
    );

    let d = decide_one(route, &[team, stable_baggage], trusted);
    assert_eq!(
        (d.variant, d.source),
        (Variant::Stable, AssignSource::Propagated)
    );
    assert_eq!(d.segment, None);

    // From an untrusted client neither the override nor the baggage counts.
    let d = decide_one(route, &[team, stable_baggage, forced], "192.0.2.1");
    assert_eq!(
        (d.variant, d.source, d.segment),
        (Variant::Canary, AssignSource::Segment, Some(0))
    );

    let d = decide_one(route, &[("x-user", "blocked-user"), team], "192.0.2.1");
    assert_eq!(d.segment, Some(0), "the first matching rule decides");
    let d = decide_one(route, &[("x-user", "blocked-user")], "192.0.2.1");
    assert_eq!(
        (d.variant, d.source, d.segment),
        (Variant::Stable, AssignSource::Segment, Some(1))
    );
    assert!(d.bucket.is_some(), "the bucket is still reported");

    let d = decide_one(route, &[("x-user", "someone")], "192.0.2.1");
    assert_eq!((d.source, d.segment), (AssignSource::Header, None));
}

#[test]
fn a_segment_places_a_keyless_client_and_still_gives_it_a_cohort_id() {
    let rs = routes(&route_block(
        "r",
        "[[routes.segments]]\nmatch = \"ip\"\nvalues = [\"192.0.2.0/24\"]\nvariant = \"canary\"",
    ));
    let d = decide_one(&rs[0], &[], "192.0.2.200");
    assert_eq!(
        (d.variant, d.source),
        (Variant::Canary, AssignSource::Segment)
    );
    assert_eq!(d.new_cohort_id.as_deref(), Some("drawn"));
}

#[test]
fn baggage_is_not_followed_without_follow_or_trust() {
    let no_follow = routes(&route_block(
        "r",
        "override = { trusted = [\"0.0.0.0/0\"] }",
    ));
    let no_trust = routes(&route_block("r", "follow = \"rel\""));
    for route in [&no_follow[0], &no_trust[0]] {
        let d = decide_one(route, &[("baggage", "cohort.rel=canary")], "10.0.0.1");
        assert_ne!(d.source, AssignSource::Propagated);
    }
}

#[test]
fn forced_sources_are_the_override_and_the_baggage() {
    let forced: Vec<_> = AssignSource::ALL
        .into_iter()
        .filter(|s| s.is_forced())
        .collect();
    assert_eq!(forced, [AssignSource::Override, AssignSource::Propagated]);
}

#[test]
fn an_nginx_route_buckets_by_nginx_s_hash() {
    let rs = routes(&route_block(
        "r",
        "sticky = [\"header:x-user\"]\nhash = \"nginx\"\nnginx_key = \"${key}AAA\"",
    ));
    let d = decide_one(&rs[0], &[("x-user", "user-42")], "192.0.2.1");
    let hash = crate::split_clients::murmur_hash2(b"user-42AAA");
    assert_eq!(d.bucket, Some(crate::split_clients::bucket(hash)));
}

#[test]
fn a_described_request_is_decided_by_the_same_rules() {
    let rs = routes(&route_block(
        "r",
        r#"override = { trusted = ["10.0.0.0/8"] }
[[routes.segments]]
match = "cookie:beta"
values = ["yes"]
variant = "canary"
[[routes.segments]]
match = "ip"
values = ["192.0.2.0/24"]
variant = "stable""#,
    ));
    let bp = BasisPoints::from_percent(0.0).expect("0 %");
    let mut beta = Described::default();
    beta.cookie("beta=yes").expect("cookie");
    let d = beta.decide(&rs[0], bp, b"alice");
    assert_eq!(
        (d.variant, d.decided_by().as_str()),
        (Variant::Canary, "segments[0]")
    );
    assert_eq!(d.bucket, Some(cohort::bucket("s", b"alice")));

    let mut office = Described::default();
    office.ip("192.0.2.9").expect("ip");
    assert_eq!(
        office.decide(&rs[0], bp, b"alice").decided_by(),
        "segments[1]"
    );
    assert_eq!(
        Described::default()
            .decide(&rs[0], bp, b"alice")
            .decided_by(),
        "percentage"
    );

    let mut tester = Described::default();
    tester.header("x-cohort-variant=canary").expect("header");
    assert_eq!(
        tester.decide(&rs[0], bp, b"a").decided_by(),
        "percentage",
        "no address: not trusted"
    );
    tester.ip("10.0.0.1").expect("ip");
    assert_eq!(tester.decide(&rs[0], bp, b"a").decided_by(), "override");

    assert!(Described::default().header("novalue").is_err());
    assert!(Described::default().cookie("a=1; b=2").is_err());
    assert!(Described::default().ip("10.0.0.0/8").is_err());
}

#[test]
fn tokens_and_list_elements_follow_rfc_9110() {
    for token in ["checkout-v2", "session", "a.b", "x!#$%&'*+-.^_`|~9"] {
        assert!(is_token(token), "{token}");
    }
    for not in ["", "a b", "a=b", "a,b", "a;b", "é", "a\"b"] {
        assert!(!is_token(not), "{not:?}");
    }
    let elements: Vec<&[u8]> = list_elements(b" keep-alive ,, te,\tx ,").collect();
    assert_eq!(elements, [&b"keep-alive"[..], b"te", b"x"]);
    assert_eq!(list_elements(b" , ").count(), 0);
}
