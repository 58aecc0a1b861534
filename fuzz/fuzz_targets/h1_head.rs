//! The own engine's request head: parse + classify (`src/h1/head.rs`) and the
//! forwarded-head rewrite (`write_upstream_request`, with the rules of
//! `src/request/forward.rs`), over every pipelined request as `src/h1/server.rs`
//! consumes them.
//!
//! Checks: a head that is ready was `Partial` at every shorter prefix and does not
//! change with bytes after it; the rewritten head parses (httparse, as an upstream
//! would) to exactly itself, with the same method and target, HTTP/1.1, and the fields
//! a reference model of the forwarding rules predicts: hop-by-hop fields and whatever
//! `Connection` names dropped, `TE: trailers` kept, cookies folded, `X-Forwarded-*`,
//! `X-Cohort-Variant` and a drawn `X-Request-Id` set once, the body framed by the same
//! single Content-Length.
#![no_main]

use cohort::h1::head::{self, BaggageRewrite, Forwarding, ParsedRequest, Request};
use cohort::request_id::RequestId;
use http::HeaderName;
use libfuzzer_sys::fuzz_target;

const HOP_BY_HOP: [&str; 9] = [
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

/// Stands for the drawn request id's value (random) in the expected fields.
const DRAWN: &[u8] = b"<drawn uuid>";

const OVERRIDES: [&str; 4] = ["x-cohort-variant", "x-user-id", "cookie", "x-forwarded-for"];

fn trim_blanks(v: &[u8]) -> &[u8] {
    let start = v.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    let end = v.len()
        - v[start..]
            .iter()
            .rev()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
    &v[start..end]
}

fn lower(b: &[u8]) -> Vec<u8> {
    b.to_ascii_lowercase()
}

/// The fields the next hop must get for `req`, in order (names lowercase).
fn expected_fields(
    req: &Request<'_, '_>,
    fwd: &Forwarding<'_>,
    peer: &[u8],
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let fields = req.fields.0;
    let named: Vec<Vec<u8>> = fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("connection"))
        .flat_map(|f| f.value.split(|&b| b == b','))
        .map(|t| lower(t.trim_ascii()))
        .filter(|t| !t.is_empty())
        // A hop-by-hop name in `Connection` adds nothing: its own rule decides (so
        // `TE: trailers` named there stays, as on hyper's path).
        .filter(|t| !HOP_BY_HOP.iter().any(|h| h.as_bytes() == &t[..]))
        .collect();
    let dropped = |name: &[u8], value: &[u8]| {
        let name = lower(name);
        let fixed = match &name[..] {
            b"te" => !value.trim_ascii().eq_ignore_ascii_case(b"trailers"),
            b"x-forwarded-proto" | b"x-forwarded-host" | b"x-cohort-variant" => true,
            b"x-request-id" => fwd.request_id.is_some(),
            n => HOP_BY_HOP.iter().any(|h| h.as_bytes() == n),
        };
        fixed
            || named.contains(&name)
            || fwd
                .untrusted_override
                .is_some_and(|h| h.as_str().as_bytes() == &name[..])
    };
    let cookies: Vec<&[u8]> = fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("cookie"))
        .map(|f| f.value)
        .collect();
    let mut out = Vec::new();
    let mut forwarded_for: Vec<&[u8]> = Vec::new();
    let mut cookie_written = false;
    for f in fields {
        if dropped(f.name.as_bytes(), f.value) {
            continue;
        }
        match &lower(f.name.as_bytes())[..] {
            b"x-forwarded-for" => forwarded_for.push(f.value),
            b"cookie" if !cookie_written => {
                cookie_written = true;
                out.push((b"cookie".to_vec(), cookies.join(&b"; "[..])));
            }
            b"cookie" => {}
            name => out.push((name.to_vec(), f.value.to_vec())),
        }
    }
    let mut xff: Vec<u8> = Vec::new();
    for v in forwarded_for {
        xff.extend_from_slice(v);
        xff.extend_from_slice(b", ");
    }
    xff.extend_from_slice(peer);
    out.push((b"x-forwarded-for".to_vec(), xff));
    out.push((b"x-forwarded-proto".to_vec(), fwd.proto.as_bytes().to_vec()));
    if let Some(host) = req.host {
        out.push((b"x-forwarded-host".to_vec(), host.as_bytes().to_vec()));
    }
    out.push((
        b"x-cohort-variant".to_vec(),
        fwd.variant.as_bytes().to_vec(),
    ));
    if fwd.request_id.is_some() {
        out.push((b"x-request-id".to_vec(), DRAWN.to_vec()));
    }
    out
}

/// Same shape of verdict (and, when ready, the same head).
fn same_verdict(a: &ParsedRequest<'_, '_>, b: &ParsedRequest<'_, '_>) -> bool {
    match (a, b) {
        (ParsedRequest::Partial, ParsedRequest::Partial) => true,
        (ParsedRequest::Handover(x), ParsedRequest::Handover(y)) => x == y,
        (ParsedRequest::Reject(x), ParsedRequest::Reject(y)) => x == y,
        (ParsedRequest::Ready(x), ParsedRequest::Ready(y)) => {
            (
                x.method,
                x.target,
                x.head_len,
                x.content_length,
                x.close,
                x.host,
            ) == (
                y.method,
                y.target,
                y.head_len,
                y.content_length,
                y.close,
                y.host,
            )
        }
        _ => false,
    }
}

fn check_one(buf: &[u8], flags: u8, drawn: &RequestId) -> Option<usize> {
    let mut storage = head::field_storage();
    let parsed = head::parse_request(buf, &mut storage);
    // A complete verdict does not change with whatever follows the head.
    if !matches!(parsed, ParsedRequest::Partial) {
        let mut longer = buf.to_vec();
        longer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let mut storage2 = head::field_storage();
        let again = head::parse_request(&longer, &mut storage2);
        assert!(
            same_verdict(&parsed, &again),
            "bytes after the head changed the verdict"
        );
    }
    let ParsedRequest::Ready(req) = parsed else {
        return None;
    };
    assert!(req.head_len <= buf.len());
    assert!(req.target.starts_with('/'));
    assert!(req.content_length <= head::MAX_INLINE_BODY);
    assert!(buf[..req.head_len].ends_with(b"\n"));
    // Every shorter prefix of a ready head is only incomplete: a client writing its
    // head in pieces gets the same answer.
    let step = (req.head_len / 64).max(1);
    for k in (0..req.head_len)
        .step_by(step)
        .chain(req.head_len.saturating_sub(3)..req.head_len)
    {
        let mut s = head::field_storage();
        assert!(
            matches!(
                head::parse_request(&buf[..k], &mut s),
                ParsedRequest::Partial
            ),
            "a {k}-byte prefix of a {}-byte head is not partial",
            req.head_len
        );
    }
    let override_name = HeaderName::from_static(OVERRIDES[usize::from(flags >> 1 & 3)]);
    let fwd = Forwarding {
        proto: if flags & 16 == 0 { "http" } else { "https" },
        variant: "canary",
        untrusted_override: (flags & 1 == 1).then_some(&override_name),
        request_id: (flags & 8 == 8).then_some(drawn),
        baggage: BaggageRewrite::Keep,
    };
    let peer: &[u8] = if flags & 32 == 0 {
        b"192.0.2.7"
    } else {
        b"2001:db8::7"
    };
    let mut out = Vec::new();
    head::write_upstream_request(&req, &fwd, peer, &mut out);

    // The upstream's view of the rewritten head.
    let mut fields = [httparse::EMPTY_HEADER; 256];
    let mut up = httparse::Request::new(&mut fields);
    let n = match up.parse(&out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "the forwarded head does not parse: {other:?}\n{}",
            String::from_utf8_lossy(&out)
        ),
    };
    assert_eq!(
        n,
        out.len(),
        "the forwarded head ends early: {}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(up.method, Some(req.method));
    assert_eq!(up.path, Some(req.target));
    assert_eq!(up.version, Some(1));
    let want = expected_fields(&req, &fwd, peer);
    let mut got: Vec<(Vec<u8>, Vec<u8>)> = up
        .headers
        .iter()
        .map(|h| (lower(h.name.as_bytes()), h.value.to_vec()))
        .collect();
    // The upstream reads values without surrounding blanks (a folded cookie may end
    // in "; ").
    let want: Vec<(Vec<u8>, Vec<u8>)> = want
        .into_iter()
        .map(|(n, v)| (n, trim_blanks(&v).to_vec()))
        .collect();
    if fwd.request_id.is_some() {
        if let Some((_, value)) = got.last_mut() {
            let uuid =
                value.len() == 36 && value.iter().all(|&b| b == b'-' || b.is_ascii_hexdigit());
            assert!(uuid, "the drawn id is not a UUID: {value:?}");
            *value = DRAWN.to_vec();
        }
    }
    assert_eq!(
        got,
        want,
        "forwarded fields differ from the rules\n{}",
        String::from_utf8_lossy(&out)
    );
    // The body is framed as the client framed it: one Content-Length or none (zero).
    let lengths: Vec<&[u8]> = up
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| h.value)
        .collect();
    match lengths[..] {
        [] => assert_eq!(req.content_length, 0),
        [v] => assert_eq!(
            std::str::from_utf8(v.trim_ascii())
                .ok()
                .and_then(|v| v.parse::<usize>().ok()),
            Some(req.content_length)
        ),
        _ => panic!("several Content-Length fields forwarded"),
    }
    (buf.len() >= req.message_len() && !req.close).then(|| req.message_len())
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut buf)) = data.split_first() else {
        return;
    };
    let drawn = RequestId::generate();
    // Pipelined requests, consumed as the server consumes them.
    for _ in 0..8 {
        match check_one(buf, flags, &drawn) {
            Some(len) if len > 0 => buf = &buf[len..],
            _ => break,
        }
    }
});
