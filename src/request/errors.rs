//! What the client and the metrics see when an upstream fails (DESIGN §1 failure
//! table): one exhaustive match from the typed error to (status, kind, body), no
//! catch-all arm, so a new failure cannot go unmapped.

use http::StatusCode;

use crate::metrics::UpstreamErrorKind;
use crate::upstream::UpstreamError;

/// cohort's own answer to a request its upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ErrorAnswer {
    pub(crate) status: StatusCode,
    /// The `kind` label of `cohort_upstream_errors_total`.
    pub(crate) kind: UpstreamErrorKind,
    /// A short plain-text body naming the reason.
    pub(crate) body: &'static str,
}

const CONNECT: ErrorAnswer = ErrorAnswer {
    status: StatusCode::BAD_GATEWAY,
    kind: UpstreamErrorKind::Connect,
    body: "upstream unavailable: connection failed\n",
};

const TIMEOUT: ErrorAnswer = ErrorAnswer {
    status: StatusCode::GATEWAY_TIMEOUT,
    kind: UpstreamErrorKind::Timeout,
    body: "upstream timed out\n",
};

/// The answer to `error`.
#[inline]
pub(crate) fn answer(error: &UpstreamError) -> ErrorAnswer {
    match error {
        // Nothing reached an upstream that could answer: no endpoint, no address, no
        // connection, no HTTP/2 session.
        UpstreamError::NoEndpoints
        | UpstreamError::Resolve { .. }
        | UpstreamError::Connect { .. }
        | UpstreamError::Handshake { .. } => CONNECT,
        UpstreamError::ConnectTimeout { .. }
        | UpstreamError::ResponseTimeout { .. }
        | UpstreamError::IdleTimeout { .. } => TIMEOUT,
        UpstreamError::Tls { .. } => ErrorAnswer {
            status: StatusCode::BAD_GATEWAY,
            kind: UpstreamErrorKind::Tls,
            body: "upstream TLS handshake failed\n",
        },
        UpstreamError::Reset { .. } => ErrorAnswer {
            status: StatusCode::BAD_GATEWAY,
            kind: UpstreamErrorKind::Reset,
            body: "upstream closed the connection before a complete response\n",
        },
        UpstreamError::Protocol { .. } => ErrorAnswer {
            status: StatusCode::BAD_GATEWAY,
            kind: UpstreamErrorKind::Protocol,
            body: "upstream sent an invalid response\n",
        },
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::time::Duration;

    use super::*;

    fn io_error() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionRefused, "refused")
    }

    #[test]
    fn every_failure_maps_to_the_design_table() {
        let a = || "127.0.0.1:9".to_string();
        let cases = [
            (UpstreamError::NoEndpoints, 502, "connect"),
            (
                UpstreamError::Resolve {
                    authority: a(),
                    source: io_error(),
                },
                502,
                "connect",
            ),
            (
                UpstreamError::Connect {
                    authority: a(),
                    source: io_error(),
                },
                502,
                "connect",
            ),
            (
                UpstreamError::ConnectTimeout {
                    authority: a(),
                    after: Duration::from_secs(1),
                },
                504,
                "timeout",
            ),
            (
                UpstreamError::ResponseTimeout {
                    authority: a(),
                    after: Duration::from_secs(1),
                },
                504,
                "timeout",
            ),
            (
                UpstreamError::IdleTimeout {
                    authority: a(),
                    after: Duration::from_secs(300),
                },
                504,
                "timeout",
            ),
            (
                UpstreamError::Tls {
                    authority: a(),
                    source: io_error(),
                },
                502,
                "tls",
            ),
            (
                UpstreamError::Reset {
                    authority: a(),
                    source: "reset".into(),
                },
                502,
                "reset",
            ),
            (
                UpstreamError::Protocol {
                    authority: a(),
                    source: "bad".into(),
                },
                502,
                "protocol",
            ),
        ];
        for (error, status, kind) in cases {
            let answer = answer(&error);
            assert_eq!(answer.status.as_u16(), status, "{error}");
            assert_eq!(answer.kind.as_str(), kind, "{error}");
            assert_eq!(error.kind(), answer.kind, "{error}");
            assert!(answer.body.ends_with('\n') && answer.body.len() > 10);
        }
    }
}
