//! Sticky key extraction (`src/router.rs`: `find_key`, `cookie`, `forced_variant`,
//! `decide`; the bucket from `core/src/cohort.rs`) from header and cookie bytes, on
//! both engines' views of the same head: the fields the own engine parsed in place and
//! the `HeaderMap` hyper builds. Both must decide alike; a header key is the first
//! such field, trimmed; a cookie key is the first pair of that name across `Cookie`
//! fields, trimmed, without `;`; the variant follows the bucket, and raising the
//! canary share only ever moves users to the canary.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use cohort::cohort::{variant_for, BasisPoints, Variant};
use cohort::config::{Config, Override, StickySource};
use cohort::h1::head::{self, ParsedFields, ParsedRequest};
use cohort::router::{self, AssignSource, Fields};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const HEADERS: [&str; 8] = [
    "x-user-id",
    "X-User-Id",
    "cookie",
    "Cookie",
    "x-cohort-variant",
    "x-session",
    "host",
    "X-SESSION",
];
const COOKIES: [&str; 5] = ["session", "cohort_id", "cohort_variant", "a", "Session"];

#[derive(Arbitrary, Debug)]
enum Source {
    Header(u8),
    Cookie(u8),
    Ip,
}

#[derive(Arbitrary, Debug)]
struct Input {
    sticky: Vec<Source>,
    /// Override header and cookie, and whether the peer is trusted.
    override_: Option<(u8, u8, bool)>,
    fields: Vec<(u8, Vec<u8>)>,
    peer: [u8; 16],
    v6: bool,
    canary: (u16, u16),
}

fn header(i: u8) -> &'static str {
    HEADERS[usize::from(i) % HEADERS.len()]
}

/// A config's header name: validation lowercases it.
fn lowercase_name(name: &str) -> HeaderName {
    HeaderName::from_bytes(name.as_bytes()).expect("a pool name is a valid header name")
}

fn cookie_name(i: u8) -> &'static str {
    COOKIES[usize::from(i) % COOKIES.len()]
}

fn base_route() -> &'static cohort::config::Route {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    &CONFIG
        .get_or_init(|| {
            cohort_fuzz::parse_config(
                r#"
[listen]
address = "127.0.0.1:8080"
[admin]
address = "127.0.0.1:9901"
[[routes]]
name = "r"
salt = "fuzz"
stable = { endpoints = ["http://127.0.0.1:9001"] }
canary = { endpoints = ["http://127.0.0.1:9002"] }
"#,
            )
            .expect("the base config is valid")
        })
        .routes[0]
}

/// The first `name=value` pair called `name` across `cookies`, by a different road:
/// every pair of every field, in order.
fn reference_cookie<'a>(cookies: &[&'a [u8]], name: &str) -> Option<&'a [u8]> {
    cookies
        .iter()
        .flat_map(|c| c.split(|&b| b == b';'))
        .filter_map(|pair| {
            let eq = pair.iter().position(|&b| b == b'=')?;
            Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()))
        })
        .find(|(n, _)| *n == name.as_bytes())
        .map(|(_, v)| v)
}

fuzz_target!(|input: Input| {
    let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
    for (name, value) in &input.fields {
        raw.extend_from_slice(header(*name).as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    let mut storage = head::field_storage();
    let ParsedRequest::Ready(req) = head::parse_request(&raw, &mut storage) else {
        return;
    };
    let parsed: ParsedFields<'_, '_> = req.fields;
    // hyper's view: the same fields in a HeaderMap (a field hyper cannot hold is a
    // request hyper rejects: the differential target's business).
    let mut map = HeaderMap::new();
    for f in parsed.0 {
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) else {
            return;
        };
        map.append(n, v);
    }
    let sticky: Vec<StickySource> = input
        .sticky
        .iter()
        .take(4)
        .map(|s| match s {
            Source::Header(i) => StickySource::Header(lowercase_name(header(*i))),
            Source::Cookie(i) => StickySource::Cookie(cookie_name(*i).to_owned()),
            Source::Ip => StickySource::Ip,
        })
        .collect();
    let peer = if input.v6 {
        IpAddr::V6(Ipv6Addr::from(input.peer))
    } else {
        IpAddr::V4(Ipv4Addr::new(
            input.peer[0],
            input.peer[1],
            input.peer[2],
            input.peer[3],
        ))
    };

    let own = router::find_key(&sticky, &parsed, peer);
    let theirs = router::find_key(&sticky, &map, peer);
    let view = |k: &Option<(router::CohortKey<'_>, AssignSource)>| {
        k.as_ref()
            .map(|(key, source)| (key.as_bytes().to_vec(), *source))
    };
    assert_eq!(view(&own), view(&theirs), "the engines find different keys");

    let cookies: Vec<&[u8]> = parsed.cookies().collect();
    for name in COOKIES {
        let found = router::cookie(&parsed, name);
        assert_eq!(found, router::cookie(&map, name));
        assert_eq!(found, reference_cookie(&cookies, name), "cookie {name}");
        if let Some(v) = found {
            assert!(!v.contains(&b';') && v.trim_ascii() == v);
        }
    }
    match &own {
        Some((key, AssignSource::Header)) => {
            // The first field of one of the route's headers, trimmed.
            let firsts: Vec<&[u8]> = sticky
                .iter()
                .filter_map(|s| match s {
                    StickySource::Header(h) => parsed.first(h).map(<[u8]>::trim_ascii),
                    _ => None,
                })
                .collect();
            assert!(firsts.contains(&key.as_bytes()));
            assert!(!key.as_bytes().is_empty());
        }
        Some((key, AssignSource::Cookie)) => assert!(!key.as_bytes().is_empty()),
        Some((_, AssignSource::Ip)) => assert!(sticky.contains(&StickySource::Ip)),
        Some((_, source)) => panic!("find_key reported {source:?}"),
        None => assert!(!sticky.contains(&StickySource::Ip)),
    }

    let mut route = base_route().clone();
    route.sticky = sticky;
    route.override_ = input.override_.map(|(h, c, trusted)| Override {
        header: lowercase_name(header(h)),
        cookie: cookie_name(c).to_owned(),
        trusted: if trusted {
            vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()]
        } else {
            vec![]
        },
    });
    let (low, high) = (input.canary.0 % 10_001, input.canary.1 % 10_001);
    let (low, high) = (low.min(high), low.max(high));
    let low = BasisPoints::from_raw(low).unwrap();
    let high = BasisPoints::from_raw(high).unwrap();
    let draw = || "drawn-key".to_owned();
    let decided = router::decide(&route, low, &parsed, peer, draw);
    assert_eq!(decided, router::decide(&route, low, &map, peer, draw));
    match decided.bucket {
        Some(bucket) => {
            assert!(bucket < 10_000);
            assert_eq!(decided.variant, variant_for(bucket, low));
            if decided.variant == Variant::Canary {
                assert_eq!(variant_for(bucket, high), Variant::Canary);
            }
        }
        None => assert_eq!(decided.source, AssignSource::Override),
    }
});
