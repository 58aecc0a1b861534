use super::*;

fn storage<'b>() -> FieldStorage<'b> {
    field_storage()
}

fn handover(raw: &str) -> Option<Handover> {
    let mut s = storage();
    match parse_request(raw.as_bytes(), &mut s) {
        ParsedRequest::Handover(h) => Some(h),
        _ => None,
    }
}

/// The upstream head for `raw` as text.
fn upstream(raw: &str, untrusted_override: Option<&HeaderName>) -> String {
    upstream_with_id(raw, untrusted_override, None)
}

/// The upstream head for `raw` as text, with `drawn` as cohort's request id.
fn upstream_with_id(
    raw: &str,
    untrusted_override: Option<&HeaderName>,
    drawn: Option<&crate::request::id::RequestId>,
) -> String {
    upstream_with(raw, untrusted_override, drawn, BaggageRewrite::Keep)
}

/// The upstream head for `raw` as text, with every policy decision given.
fn upstream_with(
    raw: &str,
    untrusted_override: Option<&HeaderName>,
    drawn: Option<&crate::request::id::RequestId>,
    baggage: BaggageRewrite,
) -> String {
    let mut s = storage();
    let ParsedRequest::Ready(req) = parse_request(raw.as_bytes(), &mut s) else {
        panic!("not a forwardable request: {raw:?}");
    };
    let mut out = Vec::new();
    let fwd = Forwarding {
        proto: "http",
        variant: "canary",
        untrusted_override,
        request_id: drawn,
        baggage,
    };
    write_upstream_request(&req, &fwd, b"192.0.2.7", &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn a_plain_request_is_ready_with_its_length_and_host() {
    let raw = "POST /a?b=1 HTTP/1.1\r\nHost: shop\r\nContent-Length: 3\r\n\r\nabcGET";
    let mut s = storage();
    let ParsedRequest::Ready(req) = parse_request(raw.as_bytes(), &mut s) else {
        panic!("not ready");
    };
    assert_eq!(
        (req.method, req.target, req.host),
        ("POST", "/a?b=1", Some("shop"))
    );
    assert_eq!(req.content_length, 3);
    assert_eq!(
        req.message_len(),
        raw.len() - 3,
        "the next request's bytes are not this one's"
    );
    assert!(!req.close);
}

#[test]
fn an_incomplete_head_asks_for_more() {
    let mut s = storage();
    assert!(matches!(
        parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n", &mut s),
        ParsedRequest::Partial
    ));
}

#[test]
fn rare_shapes_go_to_hyper() {
    assert_eq!(handover("GET / HTTP/1.0\r\n\r\n"), Some(Handover::Http10));
    assert_eq!(
        handover("GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n"),
        Some(Handover::UnusualTarget)
    );
    assert_eq!(
        handover("OPTIONS * HTTP/1.1\r\n\r\n"),
        Some(Handover::UnusualTarget)
    );
    assert_eq!(
        handover("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Some(Handover::Body)
    );
    assert_eq!(
        handover("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
        Some(Handover::Body)
    );
    assert_eq!(
        handover("POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n"),
        Some(Handover::Body)
    );
    assert_eq!(
        handover(&format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_INLINE_BODY + 1
        )),
        Some(Handover::Body)
    );
    assert_eq!(
        handover("GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
        Some(Handover::Upgrade)
    );
    assert_eq!(
        handover("PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"),
        Some(Handover::Upgrade)
    );
}

fn rejected(raw: &str) -> Option<Malformed> {
    let mut s = storage();
    match parse_request(raw.as_bytes(), &mut s) {
        ParsedRequest::Reject(malformed) => Some(malformed),
        _ => None,
    }
}

#[test]
fn invalid_requests_are_refused_as_invalid_or_too_large() {
    let bad = Some(Malformed::InvalidRequest);
    let too_large = Some(Malformed::HeadTooLarge);
    assert_eq!(
        rejected("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        bad
    );
    assert_eq!(rejected("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"), bad);
    assert_eq!(rejected("GET / HTTP/1.1\r\nX: a\u{1}b\r\n\r\n"), bad);
    let huge = format!(
        "GET / HTTP/1.1\r\nX-Huge: {}\r\n\r\n",
        "h".repeat(MAX_REQUEST_HEAD)
    );
    assert_eq!(rejected(&huge), too_large, "complete but too large");
    assert_eq!(
        rejected(&huge[..huge.len() - 4]),
        too_large,
        "incomplete and too large"
    );
    let many: String = (0..=MAX_FIELDS).map(|i| format!("x-{i}: 1\r\n")).collect();
    assert_eq!(
        rejected(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
        Some(Malformed::TooManyHeaders)
    );
}

/// A request line that alone is over the head limit has a target too long (414, as
/// hyper answers); a long line further down makes the head too large (431).
#[test]
fn a_request_line_over_the_limit_is_a_uri_too_long() {
    let long = format!("GET /{} HTTP/1.1\r\n", "u".repeat(MAX_REQUEST_HEAD));
    assert_eq!(rejected(&long), Some(Malformed::UriTooLong), "incomplete");
    let complete = format!("{long}Host: a\r\n\r\n");
    assert_eq!(rejected(&complete), Some(Malformed::UriTooLong), "complete");
    let long_field = format!("GET / HTTP/1.1\r\nX-Long: {}", "h".repeat(MAX_REQUEST_HEAD));
    assert_eq!(rejected(&long_field), Some(Malformed::HeadTooLarge));
}

#[test]
fn connection_close_is_noticed() {
    let mut s = storage();
    let raw = b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n";
    let ParsedRequest::Ready(req) = parse_request(raw, &mut s) else {
        panic!("not ready");
    };
    assert!(req.close);
}

#[test]
fn upstream_head_drops_hop_by_hop_and_sets_forwarding_fields() {
    let head = upstream(
        "GET /p?q=%20 HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, X-Hop\r\n\
         X-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic x\r\nTE: trailers\r\n\
         X-Forwarded-For: 203.0.113.1\r\nx-forwarded-for: 198.51.100.2\r\n\
         X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nX-Cohort-Variant: stable\r\n\
         X-End: kept\r\n\r\n",
        None,
    );
    assert_eq!(
        head,
        "GET /p?q=%20 HTTP/1.1\r\nHost: shop.example\r\nTE: trailers\r\nX-End: kept\r\n\
         x-forwarded-for: 203.0.113.1, 198.51.100.2, 192.0.2.7\r\nx-forwarded-proto: http\r\n\
         x-forwarded-host: shop.example\r\nx-cohort-variant: canary\r\n\r\n"
    );
}

#[test]
fn te_other_than_trailers_is_dropped() {
    let head = upstream("GET / HTTP/1.1\r\nTE: gzip\r\n\r\n", None);
    assert!(!head.to_ascii_lowercase().contains("\r\nte:"), "{head}");
}

#[test]
fn without_host_no_forwarded_host_is_sent() {
    let head = upstream("GET / HTTP/1.1\r\n\r\n", None);
    assert!(!head.contains("x-forwarded-host"), "{head}");
    assert!(head.contains("x-forwarded-for: 192.0.2.7\r\n"), "{head}");
}

#[test]
fn split_cookies_are_folded_and_untrusted_overrides_dropped() {
    let header = HeaderName::from_static("x-force");
    let head = upstream(
        "GET / HTTP/1.1\r\nCookie: a=1\r\nX-Force: canary\r\ncookie: b=2\r\n\r\n",
        Some(&header),
    );
    assert!(head.contains("cookie: a=1; b=2\r\n"), "{head}");
    assert_eq!(head.matches("ookie:").count(), 1, "{head}");
    assert!(!head.contains("X-Force"), "{head}");
}

fn response(raw: &str, head_request: bool) -> (u16, Framing, bool, usize) {
    let mut s = storage();
    match parse_response(raw.as_bytes(), &mut s, head_request) {
        ParsedResponse::Ready(r) => (r.status, r.framing, r.reusable, r.head_len),
        ParsedResponse::Interim(n) => (100, Framing::Empty, true, n),
        ParsedResponse::Partial => panic!("partial"),
        ParsedResponse::Invalid(why) => panic!("invalid: {why}"),
    }
}

fn invalid(raw: &str) -> &'static str {
    let mut s = storage();
    match parse_response(raw.as_bytes(), &mut s, false) {
        ParsedResponse::Invalid(why) => why,
        _ => panic!("accepted: {raw:?}"),
    }
}

#[test]
fn response_framing_follows_rfc_9112() {
    let r = |raw: &str| {
        let (status, framing, reusable, _) = response(raw, false);
        (status, framing, reusable)
    };
    assert_eq!(
        r("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        (200, Framing::Length(5), true)
    );
    assert_eq!(
        r("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        (200, Framing::Chunked, true)
    );
    assert_eq!(
        r("HTTP/1.1 200 OK\r\n\r\n"),
        (200, Framing::UntilClose, false)
    );
    assert_eq!(
        r("HTTP/1.1 204 No Content\r\n\r\n"),
        (204, Framing::Empty, true)
    );
    assert_eq!(
        r("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
        (304, Framing::Empty, true)
    );
    assert_eq!(
        r("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"),
        (200, Framing::Length(5), false)
    );
    assert_eq!(
        r("HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n"),
        (200, Framing::Length(5), false)
    );
    assert_eq!(
        r("HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n"),
        (200, Framing::Length(5), true)
    );
    assert_eq!(
        r("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
        (200, Framing::Chunked, false)
    );
    let (_, framing, reusable, _) = response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
    assert_eq!((framing, reusable), (Framing::Empty, true));
}

#[test]
fn interim_responses_are_skipped_and_101_refused() {
    let raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
    assert_eq!(response(raw, false), (100, Framing::Empty, true, 25));
    assert!(invalid("HTTP/1.1 101 Switching Protocols\r\n\r\n").contains("101"));
}

#[test]
fn broken_framing_is_invalid() {
    invalid("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
    invalid("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n");
    invalid("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
    invalid("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n");
    invalid("HTTP/1.1 2000 OK\r\n\r\n");
}

fn client_head(raw: &str, deco: &Decoration<'_>) -> String {
    let mut s = storage();
    let ParsedResponse::Ready(resp) = parse_response(raw.as_bytes(), &mut s, false) else {
        panic!("not ready");
    };
    let mut out = Vec::new();
    write_client_response(&resp, deco, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn client_head_drops_hop_by_hop_keeps_framing_and_adds_decorations() {
    let variant_header = HeaderName::from_static("x-variant");
    let deco = Decoration {
        variant_header: Some((&variant_header, "stable")),
        set_cookie: Some(b"cohort_id=abc; Path=/"),
        close: true,
    };
    let head = client_head(
        "HTTP/1.1 201 Created\r\nConnection: x-private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\n\
         Upgrade: foo\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nX-Variant: canary\r\n\
         X-End: kept\r\n\r\n",
        &deco,
    );
    assert_eq!(
        head,
        "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-End: kept\r\n\
         x-variant: stable\r\nset-cookie: cohort_id=abc; Path=/\r\nconnection: close\r\n\r\n"
    );
    let plain = client_head(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
        &Decoration::plain(false),
    );
    assert_eq!(plain, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
    // A body delimited by the close of the connection: the client is told so.
    let until_close = client_head("HTTP/1.1 200 OK\r\n\r\n", &Decoration::plain(false));
    assert_eq!(until_close, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
}

#[test]
fn local_responses_are_complete_messages() {
    let mut out = Vec::new();
    let deco = Decoration::plain(false);
    write_local_response(StatusCode::BAD_GATEWAY, "upstream down\n", &deco, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: 14\r\n\r\nupstream down\n"
    );
}

#[test]
fn content_lengths_are_digits_only() {
    assert_eq!(parse_length(b" 42 "), Some(42));
    assert_eq!(parse_length(b"18446744073709551615"), None, "20 digits");
    assert_eq!(parse_length(b"1,1"), None);
    assert_eq!(parse_length(b""), None);
}

#[test]
fn every_field_a_long_connection_list_names_is_dropped() {
    // More options than are held inline: the rest are still honoured.
    let names: Vec<String> = (0..12).map(|i| format!("x-opt-{i}")).collect();
    let mut raw = format!(
        "GET / HTTP/1.1\r\nConnection: keep-alive, {}\r\n",
        names.join(", ")
    );
    for name in &names {
        raw.push_str(&format!("{name}: 1\r\n"));
    }
    raw.push_str("X-Kept: 1\r\n\r\n");
    let head = upstream(&raw, None);
    for name in &names {
        assert!(!head.contains(name.as_str()), "{name} in {head}");
    }
    assert!(head.contains("X-Kept: 1\r\n"), "{head}");
    // Case does not matter, and a named field may come before `Connection`.
    let head = upstream(
        "GET / HTTP/1.1\r\nX-Early: 1\r\nconnection: X-EARLY\r\nX-Late: 2\r\n\r\n",
        None,
    );
    assert!(!head.contains("X-Early"), "{head}");
    assert!(head.contains("X-Late: 2\r\n"), "{head}");
}

#[test]
fn kept_field_lines_pass_as_read_and_always_end_in_crlf() {
    // Unusual but valid spacing and empty values go through byte for byte.
    let head = upstream(
        "GET / HTTP/1.1\r\nHost:shop\r\nX-A:  1 \t\r\nX-Empty:\r\nX-Blank:   \r\nKeep-Alive: 1\r\nX-B: 2\r\n\r\n",
        None,
    );
    assert!(
        head.starts_with(
            "GET / HTTP/1.1\r\nHost:shop\r\nX-A:  1 \t\r\nX-Empty:\r\nX-Blank:   \r\nX-B: 2\r\n"
        ),
        "{head:?}"
    );
    // Bare LF line ends (httparse accepts them) are rewritten: the next hop gets CRLF.
    let head = upstream("GET / HTTP/1.1\nHost: shop\nX-A: 1\r\nX-B: 2\n\n", None);
    assert!(
        head.starts_with("GET / HTTP/1.1\r\nHost: shop\r\nX-A: 1\r\nX-B: 2\r\n"),
        "{head:?}"
    );
    assert!(!head.replace("\r\n", "").contains('\n'), "{head:?}");
    let resp = client_head(
        "HTTP/1.1 200 OK\nServer: up\r\nX-Empty:\r\nContent-Length: 0\n\n",
        &Decoration::plain(false),
    );
    assert_eq!(
        resp,
        "HTTP/1.1 200 OK\r\nServer: up\r\nX-Empty:\r\nContent-Length: 0\r\n\r\n"
    );
}

#[test]
fn the_status_line_goes_out_as_http_1_1() {
    let plain = Decoration::plain(false);
    let head = client_head("HTTP/1.1 404 Not Here\r\nContent-Length: 0\r\n\r\n", &plain);
    assert!(head.starts_with("HTTP/1.1 404 Not Here\r\n"), "{head:?}");
    let head = client_head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", &plain);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
    let head = client_head("HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", &plain);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
}

#[test]
fn the_first_request_id_is_read_and_passes_through_unchanged() {
    let raw = "GET / HTTP/1.1\r\nHost: a\r\nX-Request-ID: Abc-1\r\nx-request-id: second\r\n\r\n";
    let mut s = storage();
    let ParsedRequest::Ready(req) = parse_request(raw.as_bytes(), &mut s) else {
        panic!("not ready");
    };
    assert_eq!(req.request_id, Some(&b"Abc-1"[..]));
    let head = upstream(raw, None);
    assert!(
        head.contains("X-Request-ID: Abc-1\r\nx-request-id: second\r\n"),
        "{head}"
    );
    let mut none = storage();
    let ParsedRequest::Ready(req) = parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &mut none)
    else {
        panic!("not ready");
    };
    assert_eq!(req.request_id, None);
}

#[test]
fn a_drawn_request_id_is_written_and_replaces_a_blank_one() {
    let id = crate::request::id::RequestId::from_bits(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    let head = upstream_with_id("GET / HTTP/1.1\r\nHost: a\r\n\r\n", None, Some(&id));
    assert!(
        head.ends_with("x-cohort-variant: canary\r\nx-request-id: 01234567-89ab-4def-8123-456789abcdef\r\n\r\n"),
        "{head}"
    );
    let head = upstream_with_id(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id:  \r\nAccept: */*\r\n\r\n",
        None,
        Some(&id),
    );
    assert_eq!(head.matches("x-request-id").count(), 1, "{head}");
    assert!(!head.contains("X-Request-Id"), "{head}");
    assert!(head.contains("Accept: */*\r\n"), "{head}");
}

// Found by fuzzing (fuzz/, `h1_head` and `h1_differential`): each input is the one the
// fuzzer reported, reduced.

#[test]
fn empty_cookie_lines_fold_as_hyper_folds_them() {
    // h1_head: an empty first `Cookie` line lost its separator here but kept it on
    // hyper's path (`forward::fold_cookies`), so the engines forwarded different bytes.
    let raw = "GET / HTTP/1.1\r\nHost: a\r\nCookie: \r\nCookie: cohort_id=b\r\nCookie: \r\n\r\n";
    let head = upstream(raw, None);
    let mut map = http::HeaderMap::new();
    for value in ["", "cohort_id=b", ""] {
        map.append(http::header::COOKIE, http::HeaderValue::from_static(value));
    }
    crate::request::forward::fold_cookies(&mut map);
    let folded = map[http::header::COOKIE].to_str().unwrap();
    assert_eq!(folded, "; cohort_id=b; ");
    assert!(
        head.contains(&format!("\r\ncookie: {folded}\r\n")),
        "{head}"
    );
}

#[test]
fn a_target_with_a_fragment_goes_to_hyper() {
    // h1_differential: `GET /a#frag` was forwarded with its fragment here, while
    // hyper's URI parsing drops it (upstream target `/a`): the engines disagreed.
    assert_eq!(
        handover("GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n"),
        Some(Handover::UnusualTarget)
    );
    assert_eq!(
        handover("GET /a?b=1#c HTTP/1.1\r\nHost: a\r\n\r\n"),
        Some(Handover::UnusualTarget)
    );
}

#[test]
fn a_target_hyper_would_refuse_goes_to_hyper() {
    // h1_differential: `POST /u`p` was forwarded here while hyper answers "invalid URI"
    // (400): the `http` crate refuses some bytes httparse takes.
    for target in ["/u`p", "/a<b", "/a>b", "/a?q=\"x\"", "/a?q=<", "/caf\u{e9}"] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(handover(&raw), Some(Handover::UnusualTarget), "{target}");
    }
    // What hyper takes as it is stays here: braces and quotes in the path, a backtick,
    // `|` and `^` in the query.
    for target in ["/a{\"b\"}|^~!$&'()*+,;=:@", "/a?b=`|^{}/?", "/", "/?"] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut s = storage();
        assert!(
            matches!(
                parse_request(raw.as_bytes(), &mut s),
                ParsedRequest::Ready(_)
            ),
            "{target}"
        );
    }
}

#[test]
fn configured_head_limits_refuse_or_hand_over() {
    let parse = |raw: &str, limits: HeadLimits| {
        let mut storage = field_storage();
        match parse_request_within(raw.as_bytes(), &mut storage, limits) {
            ParsedRequest::Reject(m) => Err(Some(m)),
            ParsedRequest::Handover(h) => Ok(Some(h)),
            ParsedRequest::Ready(_) => Ok(None),
            ParsedRequest::Partial => Err(None),
        }
    };
    let fields = |n: usize| -> String {
        let many: String = (0..n).map(|i| format!("x-{i}: 1\r\n")).collect();
        format!("GET / HTTP/1.1\r\n{many}\r\n")
    };
    let few = HeadLimits {
        max_bytes: 8192,
        max_fields: 10,
    };
    assert_eq!(parse(&fields(10), few), Ok(None));
    assert_eq!(
        parse(&fields(11), few),
        Err(Some(Malformed::TooManyHeaders))
    );
    let many = HeadLimits {
        max_bytes: MAX_REQUEST_HEAD,
        max_fields: 150,
    };
    assert_eq!(parse(&fields(120), many), Ok(Some(Handover::ManyFields)));
    let big = format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "b".repeat(9000));
    assert_eq!(parse(&big, few), Err(Some(Malformed::HeadTooLarge)));
    assert_eq!(parse(&big, HeadLimits::DEFAULT), Ok(None));
}

#[test]
fn baggage_is_kept_replaced_or_removed_as_the_policy_says() {
    let raw = "GET / HTTP/1.1\r\nHost: a\r\nbaggage: a=1\r\nBaggage: cohort.x=canary\r\n\r\n";
    let kept = upstream(raw, None);
    assert!(
        kept.contains("baggage: a=1\r\nBaggage: cohort.x=canary\r\n"),
        "{kept}"
    );
    let value = http::HeaderValue::from_static("a=1,cohort.x=stable");
    let replaced = upstream_with(raw, None, None, BaggageRewrite::Replace(value));
    assert_eq!(replaced.matches("aggage:").count(), 1, "{replaced}");
    assert!(
        replaced.contains("\r\nbaggage: a=1,cohort.x=stable\r\n"),
        "{replaced}"
    );
    let removed = upstream_with(raw, None, None, BaggageRewrite::Remove);
    assert!(
        !removed.to_ascii_lowercase().contains("baggage"),
        "{removed}"
    );
}

/// Found by the h1_head fuzz target: with more than eight options in `Connection`
/// (the overflow path), a hop-by-hop name among them (`te`) removed `TE: trailers`,
/// which hyper's path and the own path with fewer options keep.
#[test]
fn te_trailers_named_among_many_connection_options_is_kept() {
    let options: Vec<String> = (0..9).map(|i| format!("x-opt-{i}")).collect();
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: {}, te\r\nx-opt-3: gone\r\nTE: trailers\r\n\r\n",
        options.join(", ")
    );
    let head = upstream(&raw, None);
    assert!(head.contains("\r\nTE: trailers\r\n"), "{head}");
    assert!(!head.contains("x-opt-3"), "{head}");
}
