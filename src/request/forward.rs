//! The header rules of both hops (DESIGN §1.7), defined once and applied by both
//! engines: hyper's to a `HeaderMap` (the functions here), cohort's own HTTP/1.1 path
//! while it writes head bytes (`crate::engine::h1::head`, from the same [`Field`]s,
//! [`HOP_BY_HOP`] list and [`Forwarding`] decision).
//!
//! - hop-by-hop fields never cross cohort in either direction: the [`HOP_BY_HOP`] list
//!   and whatever `Connection` names, except `TE: trailers` (gRPC) and, on an upgrade,
//!   `Upgrade` with `Connection: upgrade`;
//! - the forwarded request gets `X-Forwarded-For` appended with the peer,
//!   `X-Forwarded-Proto` and `X-Forwarded-Host` set, `X-Cohort-Variant` set to the
//!   decision (replacing the client's), a drawn `X-Request-Id` when the client sent
//!   none, split `Cookie` lines folded, the override header removed when the
//!   client is not trusted to send it, and `baggage` rewritten when the route
//!   propagates its variant or an untrusted client sent `cohort.*` members;
//! - the response gets the variant header (`listen.variant_header`) and, for a client
//!   that sent no key, the `cohort_id` cookie.

use std::net::IpAddr;

use http::header::{CONNECTION, COOKIE, SET_COOKIE, TE, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::baggage;
use crate::cohort::Variant;
use crate::config::Route;
use crate::request::id::RequestId;
use crate::router::{self, Decision, Fields, IpText, BAGGAGE};
use crate::runtime::snapshot::Snapshot;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_COHORT_VARIANT: HeaderName = HeaderName::from_static("x-cohort-variant");

/// The header fields these rules name, recognised once per field: by length first, so
/// most names are told apart without comparing a byte (cohort's own path classifies
/// every field of every head with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Connection,
    KeepAlive,
    ProxyConnection,
    TransferEncoding,
    Te,
    Trailer,
    Upgrade,
    ProxyAuthorization,
    ProxyAuthenticate,
    ContentLength,
    Host,
    Expect,
    Cookie,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    XCohortVariant,
    XRequestId,
    Baggage,
    Other,
}

/// Declares the hop-by-hop list once: the array both engines strip, and the predicate
/// the own path tests each field with, generated from the same names.
macro_rules! hop_by_hop {
    ($($field:ident),+ $(,)?) => {
        /// Fields that never cross cohort in either direction (DESIGN §1.7), besides
        /// whatever a `Connection` field names; `TE: trailers` and, on upgrades,
        /// `Upgrade` are the exceptions each engine makes.
        pub(crate) const HOP_BY_HOP: [Field; [$(Field::$field),+].len()] = [$(Field::$field),+];

        impl Field {
            /// One of [`HOP_BY_HOP`].
            #[inline]
            pub(crate) fn is_hop_by_hop(self) -> bool {
                matches!(self, $(Field::$field)|+)
            }
        }
    };
}

hop_by_hop!(
    Connection,
    KeepAlive,
    ProxyConnection,
    TransferEncoding,
    Te,
    Trailer,
    Upgrade,
    ProxyAuthorization,
    ProxyAuthenticate,
);

impl Field {
    #[inline]
    pub(crate) fn of(name: &str) -> Field {
        Field::of_bytes(name.as_bytes())
    }

    /// Dispatches on length and first letter, then compares once. `| 0x20` lowercases
    /// a letter and leaves `-` alone; no other byte of a valid field name (a token, as
    /// httparse checks) can turn into a lowercase letter or `-` that way.
    #[inline]
    pub(crate) fn of_bytes(name: &[u8]) -> Field {
        let is = |known: &[u8]| name.iter().zip(known).all(|(&b, &k)| b | 0x20 == k);
        let Some(&first) = name.first() else {
            return Field::Other;
        };
        match (name.len(), first | 0x20) {
            (2, b't') if is(b"te") => Field::Te,
            (4, b'h') if is(b"host") => Field::Host,
            (6, b'c') if is(b"cookie") => Field::Cookie,
            (6, b'e') if is(b"expect") => Field::Expect,
            (7, b'b') if is(b"baggage") => Field::Baggage,
            (7, b't') if is(b"trailer") => Field::Trailer,
            (7, b'u') if is(b"upgrade") => Field::Upgrade,
            (10, b'c') if is(b"connection") => Field::Connection,
            (10, b'k') if is(b"keep-alive") => Field::KeepAlive,
            (12, b'x') if is(b"x-request-id") => Field::XRequestId,
            (14, b'c') if is(b"content-length") => Field::ContentLength,
            (15, b'x') if is(b"x-forwarded-for") => Field::XForwardedFor,
            (16, b'p') if is(b"proxy-connection") => Field::ProxyConnection,
            (16, b'x') if is(b"x-forwarded-host") => Field::XForwardedHost,
            (16, b'x') if is(b"x-cohort-variant") => Field::XCohortVariant,
            (17, b't') if is(b"transfer-encoding") => Field::TransferEncoding,
            (17, b'x') if is(b"x-forwarded-proto") => Field::XForwardedProto,
            (18, b'p') if is(b"proxy-authenticate") => Field::ProxyAuthenticate,
            (19, b'p') if is(b"proxy-authorization") => Field::ProxyAuthorization,
            _ => Field::Other,
        }
    }

    /// The field's name in lowercase (`""` for [`Field::Other`]).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Field::Connection => "connection",
            Field::KeepAlive => "keep-alive",
            Field::ProxyConnection => "proxy-connection",
            Field::TransferEncoding => "transfer-encoding",
            Field::Te => "te",
            Field::Trailer => "trailer",
            Field::Upgrade => "upgrade",
            Field::ProxyAuthorization => "proxy-authorization",
            Field::ProxyAuthenticate => "proxy-authenticate",
            Field::ContentLength => "content-length",
            Field::Host => "host",
            Field::Expect => "expect",
            Field::Cookie => "cookie",
            Field::XForwardedFor => "x-forwarded-for",
            Field::XForwardedProto => "x-forwarded-proto",
            Field::XForwardedHost => "x-forwarded-host",
            Field::XCohortVariant => "x-cohort-variant",
            Field::XRequestId => "x-request-id",
            Field::Baggage => "baggage",
            Field::Other => "",
        }
    }
}

/// A `TE` value that survives the hop: exactly `trailers` (gRPC needs it).
#[inline]
pub fn is_trailers_only(te: &[u8]) -> bool {
    te.trim_ascii().eq_ignore_ascii_case(b"trailers")
}

/// What the upstream hop adds to or removes from a request beyond the fixed rules:
/// the policy's decisions, which each engine writes in its own way.
pub struct Forwarding<'a> {
    /// `X-Forwarded-Proto`: the listener's scheme.
    pub proto: &'static str,
    /// `X-Cohort-Variant`.
    pub variant: &'static str,
    /// The override header, when the client is not trusted to send it.
    pub untrusted_override: Option<&'a HeaderName>,
    /// `X-Request-Id`, drawn by cohort when the client sent none it could use; the
    /// client's own passes through as it came.
    pub request_id: Option<&'a RequestId>,
    /// What becomes of the client's `baggage` (DESIGN §11).
    pub baggage: BaggageRewrite,
}

/// The `baggage` field the upstream gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaggageRewrite {
    /// The client's, as it came (or none): nothing of cohort's to set or remove.
    Keep,
    /// This value in place of every `baggage` field the client sent.
    Replace(HeaderValue),
    /// No `baggage` field: the client's held only `cohort.*` members it may not send.
    Remove,
}

impl BaggageRewrite {
    /// The route's `propagate` member set to the decided variant, and, from a client
    /// outside `override.trusted`, every `cohort.*` member removed, so a client cannot
    /// steer a next hop that follows this one. Without either, the field is not even
    /// parsed.
    #[inline]
    fn new(route: &Route, trusted: bool, variant: Variant, fields: &impl Fields) -> BaggageRewrite {
        let strip_cohort = !trusted && baggage::has_cohort_member(fields.baggage());
        if route.propagate.is_none() && !strip_cohort {
            return BaggageRewrite::Keep;
        }
        let rewrite = baggage::Rewrite {
            strip_cohort: !trusted,
            set: route.propagate.as_deref().map(|name| (name, variant)),
        };
        match baggage::rewrite(fields.baggage(), rewrite) {
            // Members are kept as the client sent them: valid field bytes.
            Some(value) => HeaderValue::from_bytes(&value)
                .map_or(BaggageRewrite::Keep, BaggageRewrite::Replace),
            None => BaggageRewrite::Remove,
        }
    }

    /// Whether the client's own `baggage` fields go upstream as they came.
    #[inline]
    pub(crate) fn keeps_the_clients(&self) -> bool {
        matches!(self, BaggageRewrite::Keep)
    }
}

impl<'a> Forwarding<'a> {
    #[inline]
    pub(crate) fn new(
        route: &'a Route,
        client: IpAddr,
        proto: &'static str,
        decision: &Decision,
        request_id: Option<&'a RequestId>,
        fields: &impl Fields,
    ) -> Forwarding<'a> {
        let trusted = route.override_.as_ref().is_some_and(|o| o.trusts(client));
        Forwarding {
            proto,
            variant: decision.variant.as_str(),
            untrusted_override: route
                .override_
                .as_ref()
                .filter(|_| !trusted)
                .map(|o| &o.header),
            request_id,
            baggage: BaggageRewrite::new(route, trusted, decision.variant, fields),
        }
    }
}

/// The variant header every response with a chosen variant carries
/// (`listen.variant_header`; `None` when it is turned off).
#[inline]
pub(crate) fn variant_header(
    snap: &Snapshot,
    variant: Variant,
) -> Option<(&HeaderName, &'static str)> {
    snap.config
        .listen
        .variant_header
        .as_ref()
        .map(|name| (name, variant.as_str()))
}

/// The `Set-Cookie` value keeping a first-time client (no key, one drawn) in its
/// cohort; `Secure` on TLS listeners.
#[inline]
pub(crate) fn cohort_cookie(decision: &Decision, scheme: &str) -> Option<HeaderValue> {
    decision
        .new_cohort_id
        .as_deref()
        .and_then(|key| router::cohort_id_cookie(key, scheme == "https"))
}

// -------------------------------------------------------------------------------------
// The rules on a `HeaderMap` (hyper's engine)
// -------------------------------------------------------------------------------------

/// Whether the request asks to switch protocols (WebSocket): `Connection: upgrade`
/// plus an `Upgrade` header.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_has_token(headers, "upgrade")
}

fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        router::list_elements(value.as_bytes()).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Removes hop-by-hop headers: `Connection` and every header it names, plus
/// [`HOP_BY_HOP`]. `TE: trailers` survives (gRPC needs it). With `keep_upgrade`,
/// `Upgrade` survives and `Connection: upgrade` is put back, so a WebSocket handshake
/// reaches the other side.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(CONNECTION) {
        // Collect first: the names borrow from the map we are about to change.
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| router::list_elements(v.as_bytes()))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in named {
            // The fixed list below removes those, with its exceptions: a client that
            // sends `TE: trailers` must also name `TE` in `Connection` (RFC 9110
            // §10.1.4), and an upgrade names `Upgrade`. cohort's own path does the same.
            if !Field::of(name.as_str()).is_hop_by_hop() {
                headers.remove(&name);
            }
        }
        headers.remove(CONNECTION);
    }
    let te_trailers = headers
        .get(TE)
        .is_some_and(|v| is_trailers_only(v.as_bytes()));
    let keep_upgrade = keep_upgrade && headers.contains_key(UPGRADE);
    for field in HOP_BY_HOP {
        let kept = (field == Field::Te && te_trailers) || (field == Field::Upgrade && keep_upgrade);
        if !kept {
            headers.remove(field.name());
        }
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
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

/// The request rules on hyper's header map, after [`remove_hop_by_hop`]: the
/// untrusted override header removed, `X-Forwarded-*` (`peer` is the connection's
/// [`peer_value`], `host` the `Host` the upstream gets), cookies folded, the variant,
/// a drawn request id.
pub(crate) fn forward_headers(
    headers: &mut HeaderMap,
    fwd: &Forwarding<'_>,
    peer: &HeaderValue,
    host: Option<HeaderValue>,
) {
    if let Some(header) = fwd.untrusted_override {
        headers.remove(header);
    }
    set_forwarded(headers, peer, fwd.proto, host);
    fold_cookies(headers);
    headers.insert(
        X_COHORT_VARIANT.clone(),
        HeaderValue::from_static(fwd.variant),
    );
    match &fwd.baggage {
        BaggageRewrite::Keep => {}
        BaggageRewrite::Replace(value) => {
            headers.insert(BAGGAGE, value.clone());
        }
        BaggageRewrite::Remove => {
            headers.remove(BAGGAGE);
        }
    }
    if let Some(id) = fwd.request_id {
        // Hex digits and hyphens: always a valid header value.
        if let Ok(value) = HeaderValue::from_bytes(id.as_bytes()) {
            headers.insert(crate::request::id::X_REQUEST_ID.clone(), value);
        }
    }
}

/// The response decoration on hyper's header map: the variant header and the
/// `cohort_id` cookie, added beside any `Set-Cookie` the upstream sent.
pub(crate) fn decorate_response(
    headers: &mut HeaderMap,
    variant_header: Option<(&HeaderName, &'static str)>,
    set_cookie: Option<HeaderValue>,
) {
    if let Some((name, variant)) = variant_header {
        headers.insert(name.clone(), HeaderValue::from_static(variant));
    }
    if let Some(cookie) = set_cookie {
        headers.append(SET_COOKIE, cookie);
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
        let pairs: Vec<(&str, &str)> = HOP_BY_HOP.iter().map(|f| (f.name(), "x")).collect();
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

    #[test]
    fn every_field_is_recognised_by_its_name_in_any_case() {
        // The own path classifies wire bytes with `of_bytes`; hyper's removes by
        // `name`: one table, read both ways.
        for field in HOP_BY_HOP {
            assert!(field.is_hop_by_hop());
            assert_eq!(Field::of(field.name()), field);
            assert_eq!(Field::of(&field.name().to_ascii_uppercase()), field);
        }
        for name in [
            "content-length",
            "host",
            "expect",
            "cookie",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-cohort-variant",
            "x-request-id",
            "baggage",
        ] {
            let field = Field::of(name);
            assert_eq!(field.name(), name);
            assert!(!field.is_hop_by_hop(), "{name}");
        }
        for name in ["x-user-id", "tf", "connectiom", "x-forwarded-hosts", ""] {
            assert_eq!(Field::of(name), Field::Other, "{name}");
        }
        assert_eq!(Field::of("Content-LENGTH"), Field::ContentLength);
    }
}
