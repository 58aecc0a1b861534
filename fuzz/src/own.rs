//! The own engine's request loop over bytes already read, as `prepare` in
//! `src/h1/server.rs` runs it: parse and classify a head, wait for the whole
//! Content-Length body, forward, consume, parse the next pipelined request; stop at a
//! hand-over to hyper, a rejected head, `Connection: close` or the end of the bytes.

use cohort::h1::head::{self, Handover, ParsedRequest};
use http::StatusCode;

/// A request the own engine would forward (or answer with a local 404: routing
/// happens after this point and is the same for both engines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnRequest {
    /// Where the request starts in the input.
    pub offset: usize,
    pub method: String,
    pub target: String,
    /// Fields as parsed, name as sent.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
    pub close: bool,
}

/// How the loop stopped, at [`OwnRun::end_offset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnEnd {
    /// Waiting for more bytes (an incomplete head or body, or none at all).
    Partial,
    /// hyper takes the connection over, starting at the offset.
    Handover(Handover),
    /// Answered with this status and closed.
    Reject(StatusCode),
    /// The last forwarded request said `Connection: close`.
    Close,
    /// `max_requests` were forwarded; the rest was not looked at.
    Limit,
}

#[derive(Debug, Clone)]
pub struct OwnRun {
    pub requests: Vec<OwnRequest>,
    pub end: OwnEnd,
    pub end_offset: usize,
}

/// Runs the own engine over `input`, at most `max_requests` requests.
pub fn run(input: &[u8], max_requests: usize) -> OwnRun {
    let mut requests = Vec::new();
    let mut offset = 0;
    let end = loop {
        let buf = &input[offset..];
        if requests.len() == max_requests {
            break OwnEnd::Limit;
        }
        if buf.is_empty() {
            break OwnEnd::Partial;
        }
        let mut storage = head::field_storage();
        let req = match head::parse_request(buf, &mut storage) {
            ParsedRequest::Partial => break OwnEnd::Partial,
            ParsedRequest::Handover(why) => break OwnEnd::Handover(why),
            ParsedRequest::Reject(malformed) => break OwnEnd::Reject(malformed.status()),
            ParsedRequest::Ready(req) => req,
        };
        if buf.len() < req.message_len() {
            break OwnEnd::Partial;
        }
        requests.push(OwnRequest {
            offset,
            method: req.method.to_owned(),
            target: req.target.to_owned(),
            fields: req
                .fields
                .0
                .iter()
                .map(|f| (f.name.as_bytes().to_vec(), f.value.to_vec()))
                .collect(),
            body: buf[req.head_len..req.message_len()].to_vec(),
            close: req.close,
        });
        offset += req.message_len();
        if req.close {
            break OwnEnd::Close;
        }
    };
    OwnRun {
        requests,
        end,
        end_offset: offset,
    }
}
