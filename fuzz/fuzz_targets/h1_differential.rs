//! The same request bytes to the own engine (`src/h1/head.rs` as `src/h1/server.rs`
//! runs it) and to hyper's HTTP/1.1 server configured as `src/listener.rs` configures
//! it (httparse underneath, hyper's rules on top). Fails when one would forward what
//! the other rejects, or when both forward but disagree on the request: method,
//! target, fields, body bytes and where the message ends (pipelined requests after it
//! must line up too). Handing the connection over to hyper is always allowed: from
//! there hyper's rules are the ones that apply.
#![no_main]

use cohort_fuzz::hyper_side;
use cohort_fuzz::own::{self, OwnEnd};
use libfuzzer_sys::fuzz_target;

/// `Host` fields in the head at the start of `bytes`, as httparse reads it.
fn hosts(bytes: &[u8]) -> usize {
    let mut fields = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("host"))
            .count(),
        _ => 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let mine = own::run(data, 8);
    if mine.requests.is_empty() && mine.end == OwnEnd::Partial {
        return;
    }
    let theirs = hyper_side::run(data);
    let show = || String::from_utf8_lossy(data).into_owned();
    for (i, o) in mine.requests.iter().enumerate() {
        let Some(h) = theirs.requests.get(i) else {
            panic!(
                "the own engine forwards request {i} that hyper rejects ({:?}; hyper wrote {:?})\n{}",
                theirs.end,
                String::from_utf8_lossy(&theirs.response),
                show()
            );
        };
        assert_eq!(o.method, h.method, "method of request {i}\n{}", show());
        assert_eq!(o.target, h.target, "target of request {i}\n{}", show());
        assert_eq!(
            h.version,
            http::Version::HTTP_11,
            "version of request {i}\n{}",
            show()
        );
        let own_fields =
            cohort_fuzz::fields_by_name(o.fields.iter().map(|(n, v)| (&n[..], &v[..])));
        let hyper_fields =
            cohort_fuzz::fields_by_name(h.fields.iter().map(|(n, v)| (&n[..], &v[..])));
        assert_eq!(
            own_fields,
            hyper_fields,
            "fields of request {i}\n{}",
            show()
        );
        assert!(
            h.body_complete && o.body == h.body,
            "body of request {i}: own {:?}, hyper {:?} (complete: {})\n{}",
            String::from_utf8_lossy(&o.body),
            String::from_utf8_lossy(&h.body),
            h.body_complete,
            show()
        );
    }
    let k = mine.requests.len();
    match mine.end {
        // hyper's rules apply from here on, by design.
        OwnEnd::Handover(_) | OwnEnd::Close | OwnEnd::Limit => {}
        OwnEnd::Reject(status) => {
            // Known and kept: a second `Host` field is a 400 on the own path (RFC 9112
            // §3.2 says MUST); hyper serves it with the first (README "Fuzzing").
            let start = mine.end_offset;
            if status == http::StatusCode::BAD_REQUEST && hosts(&data[start..]) > 1 {
                return;
            }
            if let Some(h) = theirs.requests.get(k) {
                panic!(
                    "the own engine answers {status} to request {k} that hyper serves ({} {})\n{}",
                    h.method,
                    h.target,
                    show()
                );
            }
        }
        OwnEnd::Partial => {
            if let Some(h) = theirs.requests.get(k).filter(|h| h.body_complete) {
                panic!(
                    "hyper serves request {k} ({} {}) that the own engine still waits for\n{}",
                    h.method,
                    h.target,
                    show()
                );
            }
        }
    }
});
