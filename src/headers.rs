//! Header hygiene between client and upstream: hop-by-hop removal (RFC 9110 §7.6.1)
//! and the `X-Forwarded-*` family.

use std::net::IpAddr;

use http::header::{CONNECTION, COOKIE, TE, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::router::IpText;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_COHORT_VARIANT: HeaderName = HeaderName::from_static("x-cohort-variant");

/// Headers that never cross cohort in either direction (DESIGN §1.7), besides whatever
/// a `Connection` header names; `TE: trailers` and, on upgrades, `Upgrade` are the
/// exceptions [`remove_hop_by_hop`] makes. cohort's own HTTP/1.1 path uses the same list.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Whether the request asks to switch protocols (WebSocket): `Connection: upgrade`
/// plus an `Upgrade` header.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_has_token(headers, "upgrade")
}

fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Removes hop-by-hop headers: `Connection` and every header it names, plus the fixed
/// list of DESIGN §1.7. `TE: trailers` survives (gRPC needs it). With `keep_upgrade`,
/// `Upgrade` survives and `Connection: upgrade` is put back, so a WebSocket handshake
/// reaches the other side.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(CONNECTION) {
        // Collect first: the names borrow from the map we are about to change.
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .collect();
        for name in named {
            // The fixed list below removes those, with its exceptions: a client that
            // sends `TE: trailers` must also name `TE` in `Connection` (RFC 9110
            // §10.1.4), and an upgrade names `Upgrade`. cohort's own path does the same.
            if !HOP_BY_HOP.contains(&name.as_str()) {
                headers.remove(&name);
            }
        }
        headers.remove(CONNECTION);
    }
    let te_trailers = headers
        .get(TE)
        .is_some_and(|v| is_trailers_only(v.as_bytes()));
    let keep_upgrade = keep_upgrade && headers.contains_key(UPGRADE);
    for name in HOP_BY_HOP {
        let kept = (name == "te" && te_trailers) || (name == "upgrade" && keep_upgrade);
        if !kept {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// A `TE` value that survives the hop: exactly `trailers` (gRPC needs it).
pub fn is_trailers_only(te: &[u8]) -> bool {
    te.trim_ascii().eq_ignore_ascii_case(b"trailers")
}

/// The peer address as an `X-Forwarded-For` element (canonical text), made once per
/// client connection so requests only clone it.
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_bytes(IpText::new(peer).as_bytes())
        .unwrap_or(HeaderValue::from_static("unknown"))
}

/// Appends the peer (see [`peer_value`]) to `X-Forwarded-For` (folding earlier values
/// into one line) and sets `X-Forwarded-Proto` and `X-Forwarded-Host`.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    proto: &'static str,
    host: Option<HeaderValue>,
) {
    let xff = match headers.get(&X_FORWARDED_FOR) {
        None => Some(peer.clone()),
        Some(_) => {
            let mut joined: Vec<u8> = Vec::with_capacity(64);
            for value in headers.get_all(&X_FORWARDED_FOR) {
                joined.extend_from_slice(value.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(peer.as_bytes());
            HeaderValue::from_bytes(&joined).ok()
        }
    };
    if let Some(xff) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), xff);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// HTTP/2 clients may split `Cookie` into one header per cookie; an HTTP/1.1 hop
/// must get them folded back into one line, joined by `; ` (RFC 9113 §8.2.3).
pub fn fold_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined: Vec<u8> = first.as_bytes().to_vec();
    for value in headers.get_all(COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    fn names(m: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = m.keys().map(HeaderName::as_str).collect();
        n.sort_unstable();
        n
    }

    #[test]
    fn removes_fixed_list_and_connection_named_headers_case_insensitively() {
        let mut m = map(&[
            ("Connection", "Keep-Alive, X-Secret-Hop"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("X-Other", "1"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("trailer", "x-checksum"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-authenticate", "Basic"),
            ("x-end-to-end", "kept"),
            ("content-type", "text/plain"),
        ]);
        remove_hop_by_hop(&mut m, false);
        assert_eq!(names(&m), ["content-type", "x-end-to-end"]);
    }

    #[test]
    fn every_listed_hop_by_hop_header_is_removed() {
        let pairs: Vec<(&str, &str)> = HOP_BY_HOP.iter().map(|name| (*name, "x")).collect();
        let mut m = map(&pairs);
        remove_hop_by_hop(&mut m, false);
        assert!(m.is_empty(), "left: {:?}", names(&m));
    }

    #[test]
    fn te_trailers_is_kept_for_grpc() {
        let mut m = map(&[("te", "trailers")]);
        remove_hop_by_hop(&mut m, false);
        assert_eq!(m.get(TE).unwrap(), "trailers");
        let mut m = map(&[("te", "trailers, deflate")]);
        remove_hop_by_hop(&mut m, false);
        assert!(m.get(TE).is_none());
    }

    #[test]
    fn te_trailers_named_in_connection_is_kept() {
        let mut m = map(&[
            ("connection", "TE, x-hop"),
            ("te", "trailers"),
            ("x-hop", "1"),
        ]);
        remove_hop_by_hop(&mut m, false);
        assert_eq!(names(&m), ["te"]);
        assert_eq!(m.get(TE).unwrap(), "trailers");
        let mut m = map(&[("connection", "te"), ("te", "gzip")]);
        remove_hop_by_hop(&mut m, false);
        assert!(m.is_empty(), "left: {:?}", names(&m));
    }

    #[test]
    fn upgrade_survives_on_upgrade_requests() {
        let mut m = map(&[
            ("connection", "Upgrade, x-hop"),
            ("upgrade", "websocket"),
            ("x-hop", "1"),
            ("sec-websocket-key", "abc"),
        ]);
        assert!(is_upgrade_request(&m));
        remove_hop_by_hop(&mut m, true);
        assert_eq!(m.get(UPGRADE).unwrap(), "websocket");
        assert_eq!(m.get(CONNECTION).unwrap(), "upgrade");
        assert!(m.get("x-hop").is_none());
        assert!(m.get("sec-websocket-key").is_some());
    }

    #[test]
    fn upgrade_needs_both_headers() {
        assert!(!is_upgrade_request(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade_request(&map(&[("connection", "upgrade")])));
        assert!(is_upgrade_request(&map(&[
            ("connection", "keep-alive, UPGRADE"),
            ("upgrade", "h2c")
        ])));
    }

    #[test]
    fn forwarded_for_is_appended_and_others_set() {
        let mut m = map(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(
            &mut m,
            &peer_value("::ffff:192.0.2.7".parse().unwrap()),
            "http",
            Some(HeaderValue::from_static("shop.example.com")),
        );
        assert_eq!(m.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(
            m.get(&X_FORWARDED_FOR).unwrap(),
            "203.0.113.1, 198.51.100.2, 192.0.2.7"
        );
        assert_eq!(m.get(&X_FORWARDED_PROTO).unwrap(), "http");
        assert_eq!(m.get(&X_FORWARDED_HOST).unwrap(), "shop.example.com");

        let mut fresh = HeaderMap::new();
        set_forwarded(
            &mut fresh,
            &peer_value("2001:db8::1".parse().unwrap()),
            "http",
            None,
        );
        assert_eq!(fresh.get(&X_FORWARDED_FOR).unwrap(), "2001:db8::1");
        assert!(fresh.get(&X_FORWARDED_HOST).is_none());
    }

    #[test]
    fn split_cookies_are_folded_into_one_line() {
        let mut m = map(&[("cookie", "a=1"), ("cookie", "b=2; c=3")]);
        fold_cookies(&mut m);
        assert_eq!(m.get_all(COOKIE).iter().count(), 1);
        assert_eq!(m.get(COOKIE).unwrap(), "a=1; b=2; c=3");
        let mut single = map(&[("cookie", "a=1")]);
        fold_cookies(&mut single);
        assert_eq!(single.get(COOKIE).unwrap(), "a=1");
    }
}
