//! The answers to requests cohort cannot read (DESIGN §1 failure table): an engine
//! classifies what its parser saw as a [`Malformed`]; [`answer`] gives the status, the
//! body and whether the connection closes in one exhaustive match (no catch-all arm, so
//! a new kind cannot go unanswered), and [`rejected`] counts it as unrouted and logs it.
//! [`fields`] holds the rules on a parsed head that hyper's parser does not enforce
//! (two `Host` fields, a transfer coding other than `chunked`). A chunked body whose
//! framing breaks after routing is [`Malformed::InvalidBody`]: the client's 400, counted
//! under its route and variant, never an upstream error.
//!
//! The engines write the bytes. Cohort's own path writes the whole answer. hyper writes
//! its own before cohort hears of the error (the same status, `connection: close`, an
//! empty body: hyper has no hook for the body), so on its engine the classification
//! and the counting are the policy's and the body is hyper's.
//!
//! A head that stalls past `listen.header_timeout` is answered 408 and the connection
//! closed on both engines (hyper has no hook for it: the listener writes the answer
//! itself when hyper gives up, see `engine::listener`). A connection that is merely
//! idle (no byte of a next request) is closed without a word after `idle_timeout`.

use std::net::SocketAddr;

use http::StatusCode;

use crate::metrics::Metrics;
use crate::router::list_elements;

/// Why a request cannot be served, as either engine's parser (or [`fields`]) found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Not a valid HTTP/1.1 head: a bad request line, field name or value, two `Host`
    /// fields.
    InvalidRequest,
    /// A `Transfer-Encoding` other than `chunked` alone (`gzip, chunked`, `identity,
    /// chunked`, `chunked` twice): the one coding cohort decodes is `chunked`, and
    /// forwarding the rest as if decoded would hand the upstream a body it reads wrong.
    UnsupportedTransferCoding,
    /// A request body whose framing breaks part way (a chunk size that is not hex, an
    /// oversized chunk extension, bare-LF chunk lines): the client's fault, answered
    /// 400 and never counted as an upstream failure (which a canary's guard judges).
    InvalidBody,
    /// A head over `listen.max_header_bytes` (64 KiB by default).
    HeadTooLarge,
    /// A head with more than `listen.max_headers` fields (100 by default).
    TooManyHeaders,
    /// A request line that alone is over the head limit: its target is too long.
    UriTooLong,
    /// A head started but not complete within `listen.header_timeout`.
    HeadTimeout,
    /// A request body over its route's `max_body`.
    BodyTooLarge,
    /// A request body whose client sent nothing for its route's `timeouts.idle`
    /// before any response (hyper's engine; cohort's own path reads a body whole
    /// within `header_timeout`).
    BodyStalled,
}

impl Malformed {
    /// The status the client is answered with.
    pub fn status(self) -> StatusCode {
        answer(self).status
    }
}

impl Malformed {
    /// Every kind, for tests and for anything that must list them.
    pub const ALL: [Malformed; 9] = [
        Malformed::InvalidRequest,
        Malformed::UnsupportedTransferCoding,
        Malformed::InvalidBody,
        Malformed::HeadTooLarge,
        Malformed::TooManyHeaders,
        Malformed::UriTooLong,
        Malformed::HeadTimeout,
        Malformed::BodyTooLarge,
        Malformed::BodyStalled,
    ];

    /// The `reason` of the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::InvalidRequest => "invalid_request",
            Malformed::UnsupportedTransferCoding => "unsupported_transfer_coding",
            Malformed::InvalidBody => "invalid_body",
            Malformed::HeadTooLarge => "head_too_large",
            Malformed::TooManyHeaders => "too_many_headers",
            Malformed::UriTooLong => "uri_too_long",
            Malformed::HeadTimeout => "head_timeout",
            Malformed::BodyTooLarge => "body_too_large",
            Malformed::BodyStalled => "body_stalled",
        }
    }
}

/// cohort's answer to a malformed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rejection {
    /// The status, and the `status` label of `cohort_unrouted_requests_total`.
    pub(crate) status: StatusCode,
    /// A short plain-text body naming the reason.
    pub(crate) body: &'static str,
    /// Close after the answer (`connection: close`): nothing after a head that could
    /// not be read can be trusted to be the start of the next request.
    pub(crate) close: bool,
}

/// The answer to `malformed`.
pub(crate) fn answer(malformed: Malformed) -> Rejection {
    match malformed {
        Malformed::InvalidRequest => Rejection {
            status: StatusCode::BAD_REQUEST,
            body: "invalid HTTP/1.1 request\n",
            close: true,
        },
        // 400 rather than RFC 9112's suggested 501: hyper answers a coding list that
        // does not end in `chunked` 400 itself, before cohort sees the request, and one
        // status for every refused coding is easier to alert on.
        Malformed::UnsupportedTransferCoding => Rejection {
            status: StatusCode::BAD_REQUEST,
            body: "unsupported transfer coding\n",
            close: true,
        },
        // The rest of the body cannot be told from a next request: close.
        Malformed::InvalidBody => Rejection {
            status: StatusCode::BAD_REQUEST,
            body: "invalid request body framing\n",
            close: true,
        },
        Malformed::HeadTooLarge => Rejection {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            body: "request header fields too large\n",
            close: true,
        },
        Malformed::TooManyHeaders => Rejection {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            body: "too many request header fields\n",
            close: true,
        },
        Malformed::UriTooLong => Rejection {
            status: StatusCode::URI_TOO_LONG,
            body: "request target too long\n",
            close: true,
        },
        Malformed::HeadTimeout => Rejection {
            status: StatusCode::REQUEST_TIMEOUT,
            body: "request head not received in time\n",
            close: true,
        },
        Malformed::BodyTooLarge => Rejection {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            body: "request body too large\n",
            close: true,
        },
        // The rest of the body may never come: nothing after it can be read.
        Malformed::BodyStalled => Rejection {
            status: StatusCode::REQUEST_TIMEOUT,
            body: "request body stalled\n",
            close: true,
        },
    }
}

/// What is wrong with a request head's fields that its engine's parser let through, if
/// anything: two `Host` fields (RFC 9112 §3.2: a server MUST answer 400), or a
/// `Transfer-Encoding` other than one `chunked` over all its lines (hyper's parser takes
/// any list whose last element is `chunked`, and would decode only that). Checked by
/// hyper's engine before routing; cohort's own path refuses two `Host` fields while
/// parsing and hands any `Transfer-Encoding` to hyper, so both engines answer alike.
pub(crate) fn fields(version: http::Version, headers: &http::HeaderMap) -> Option<Malformed> {
    if headers.get_all(http::header::HOST).iter().nth(1).is_some() {
        return Some(Malformed::InvalidRequest);
    }
    // HTTP/2 has no `Transfer-Encoding`; its layer refuses the field.
    if version >= http::Version::HTTP_2 {
        return None;
    }
    let mut codings = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| list_elements(value.as_bytes()));
    match (codings.next(), codings.next()) {
        (None, _) => None,
        (Some(only), None) if only.eq_ignore_ascii_case(b"chunked") => None,
        _ => Some(Malformed::UnsupportedTransferCoding),
    }
}

/// Whether a request whose `Content-Length` is `length` is over its route's `max_body`
/// (DESIGN §10): answered [`Malformed::BodyTooLarge`] before anything goes upstream,
/// and counted under the route and variant (a route was chosen), not as unrouted.
pub(crate) fn body_too_large(route: &crate::config::Route, length: u64) -> bool {
    length > route.max_body
}

/// Counts a malformed request from `peer` in `cohort_unrouted_requests_total` (no
/// route was chosen) and logs it at debug level, then gives its answer. Cold: a
/// well-formed request never comes here.
#[cold]
pub(crate) fn rejected(metrics: &Metrics, peer: SocketAddr, malformed: Malformed) -> Rejection {
    let answer = answer(malformed);
    metrics.unrouted(answer.status.as_u16());
    tracing::debug!(
        %peer,
        status = answer.status.as_u16(),
        reason = malformed.as_str(),
        "malformed request answered (HTTP/1: the connection closes; HTTP/2: the stream ends)"
    );
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{UNROUTED_REQUESTS_TOTAL, UNROUTED_STATUSES};

    #[test]
    fn every_malformed_request_maps_to_the_failure_table() {
        let cases = [
            (Malformed::InvalidRequest, 400, "invalid HTTP/1.1 request\n"),
            (
                Malformed::UnsupportedTransferCoding,
                400,
                "unsupported transfer coding\n",
            ),
            (
                Malformed::InvalidBody,
                400,
                "invalid request body framing\n",
            ),
            (
                Malformed::HeadTooLarge,
                431,
                "request header fields too large\n",
            ),
            (
                Malformed::TooManyHeaders,
                431,
                "too many request header fields\n",
            ),
            (Malformed::UriTooLong, 414, "request target too long\n"),
            (
                Malformed::HeadTimeout,
                408,
                "request head not received in time\n",
            ),
            (Malformed::BodyTooLarge, 413, "request body too large\n"),
            (Malformed::BodyStalled, 408, "request body stalled\n"),
        ];
        assert_eq!(cases.len(), Malformed::ALL.len());
        for (malformed, status, body) in cases {
            let answer = answer(malformed);
            assert_eq!(answer.status.as_u16(), status, "{malformed:?}");
            assert_eq!(answer.body, body, "{malformed:?}");
            assert!(answer.close, "{malformed:?} closes the connection");
            assert!(
                UNROUTED_STATUSES.contains(&status),
                "{malformed:?}: {status} is exported from the start"
            );
        }
    }

    #[test]
    fn only_chunked_alone_is_a_transfer_coding_cohort_takes() {
        let check = |version, values: &[&str]| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::HOST, "app.example".parse().expect("value"));
            for value in values {
                headers.append(
                    http::header::TRANSFER_ENCODING,
                    value.parse().expect("value"),
                );
            }
            fields(version, &headers)
        };
        let v11 = http::Version::HTTP_11;
        let refused = Some(Malformed::UnsupportedTransferCoding);
        assert_eq!(check(v11, &[]), None);
        assert_eq!(check(v11, &["chunked"]), None);
        assert_eq!(check(v11, &["Chunked "]), None);
        assert_eq!(check(v11, &["identity, chunked"]), refused);
        assert_eq!(check(v11, &["gzip", "chunked"]), refused);
        assert_eq!(check(v11, &["chunked", "chunked"]), refused);
        assert_eq!(
            check(v11, &["chunked,"]),
            None,
            "empty list elements are skipped"
        );
        assert_eq!(check(http::Version::HTTP_2, &["gzip, chunked"]), None);
        let mut two_hosts = http::HeaderMap::new();
        two_hosts.append(http::header::HOST, "a".parse().expect("value"));
        two_hosts.append(http::header::HOST, "b".parse().expect("value"));
        assert_eq!(fields(v11, &two_hosts), Some(Malformed::InvalidRequest));
    }

    #[test]
    fn kinds_have_distinct_answers_and_reasons() {
        for a in Malformed::ALL {
            for b in Malformed::ALL.into_iter().filter(|&b| b != a) {
                assert_ne!(answer(a).body, answer(b).body, "{a:?} {b:?}");
                assert_ne!(a.as_str(), b.as_str());
            }
        }
    }

    #[test]
    fn a_rejection_is_counted_as_unrouted_with_its_status() {
        let metrics = Metrics::new();
        let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
        let mut seen = std::collections::HashMap::<u16, u32>::new();
        for malformed in Malformed::ALL {
            let answer = rejected(&metrics, peer, malformed);
            let status = answer.status.as_u16();
            let count = seen.entry(status).or_default();
            *count += 1;
            let series = format!("{UNROUTED_REQUESTS_TOTAL}{{status=\"{status}\"}} {count}");
            let text = metrics.render();
            assert!(text.lines().any(|l| l == series), "{series} in\n{text}");
        }
    }
}
