//! Request and response heads on cohort's own HTTP/1.1 path: parsed in place with
//! httparse, classified, and rewritten for the next hop straight into a byte buffer.
//! The parsing is this path's own; the header rules it writes (which fields are
//! hop-by-hop, what is forwarded) are the request policy's (`crate::request::forward`).
//!
//! Pure: no I/O. A request this path does not handle (see [`Handover`]) is left to
//! hyper, so every rule here can stay small and strict.

use std::io::Write as _;
use std::mem::MaybeUninit;
use std::ops::Range;

use http::{HeaderName, StatusCode};

use crate::request::forward::{is_trailers_only, Field};
pub use crate::request::forward::{BaggageRewrite, Forwarding};
use crate::request::reject::Malformed;
use crate::router::{list_elements, Fields};

/// Header fields this path parses in place; a head with more (up to
/// `listen.max_headers`) goes to hyper.
pub const MAX_FIELDS: usize = 100;

/// Room for a head's parsed fields, left uninitialised: httparse writes only the
/// fields it finds (filling all 100 slots first cost more than parsing a short head).
pub type FieldStorage<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_FIELDS];

/// Empty [`FieldStorage`].
pub fn field_storage<'b>() -> FieldStorage<'b> {
    [const { MaybeUninit::uninit() }; MAX_FIELDS]
}

/// The default `listen.max_header_bytes`: larger request heads are answered 431.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// `listen.max_header_bytes` and `listen.max_headers`, as this path applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Bytes of a request head, final CRLF included.
    pub max_bytes: usize,
    /// Header fields.
    pub max_fields: usize,
}

impl HeadLimits {
    /// The defaults of `listen.max_header_bytes` and `listen.max_headers`.
    pub const DEFAULT: HeadLimits = HeadLimits {
        max_bytes: MAX_REQUEST_HEAD,
        max_fields: MAX_FIELDS,
    };
}

/// Request bodies up to this size are forwarded from the read buffer in one write;
/// larger ones, and chunked ones, are streamed by hyper.
pub const MAX_INLINE_BODY: usize = 16 * 1024;

/// Header fields parsed in place.
#[derive(Clone, Copy)]
pub struct ParsedFields<'h, 'b>(pub &'h [httparse::Header<'b>]);

impl Fields for ParsedFields<'_, '_> {
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name.as_str()))
            .map(|f| f.value)
    }

    fn cookies(&self) -> impl Iterator<Item = &[u8]> {
        self.0
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case("cookie"))
            .map(|f| f.value)
    }

    fn forwarded_for(&self) -> impl DoubleEndedIterator<Item = &[u8]> {
        self.0
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case("x-forwarded-for"))
            .map(|f| f.value)
    }

    fn baggage(&self) -> impl Iterator<Item = &[u8]> {
        self.0
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case("baggage"))
            .map(|f| f.value)
    }
}

/// Why a request goes to hyper instead: rare shapes this path does not implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// HTTP/1.0 keep-alive rules differ.
    Http10,
    /// Absolute-form or asterisk target, or an origin-form one hyper's URI parsing
    /// would not take as it is (see [`is_plain_target`]).
    UnusualTarget,
    /// A chunked, oversized or ambiguous request body: hyper streams it.
    Body,
    /// Protocol upgrade (WebSocket) or `Expect`.
    Upgrade,
    /// More header fields than parsed in place, within `listen.max_headers`.
    ManyFields,
}

/// A request head ready to forward.
pub struct Request<'h, 'b> {
    pub method: &'b str,
    /// Origin-form: path and query.
    pub target: &'b str,
    pub fields: ParsedFields<'h, 'b>,
    /// Bytes of the head, final CRLF included; the body follows.
    pub head_len: usize,
    /// The head as read, for copying kept field lines unchanged.
    head: &'b [u8],
    pub content_length: usize,
    /// The client said `Connection: close`.
    pub close: bool,
    pub host: Option<&'b str>,
    /// The first `x-request-id` value, as sent.
    pub request_id: Option<&'b [u8]>,
    connection: ConnectionOptions<'h, 'b>,
}

impl Request<'_, '_> {
    /// Bytes of the whole message: head and body.
    pub fn message_len(&self) -> usize {
        self.head_len + self.content_length
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

// Returned by value once per head; boxing the large variant would allocate per request.
#[allow(clippy::large_enum_variant)]
pub enum ParsedRequest<'h, 'b> {
    /// The head is not complete yet.
    Partial,
    Handover(Handover),
    /// Not a valid request: the request policy answers it (`crate::request::reject`),
    /// and the connection closes.
    Reject(Malformed),
    Ready(Request<'h, 'b>),
}

/// Parses and classifies the request head at the start of `buf`, with the default
/// limits.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    storage: &'h mut [MaybeUninit<httparse::Header<'b>>],
) -> ParsedRequest<'h, 'b> {
    parse_request_within(buf, storage, HeadLimits::DEFAULT)
}

/// Parses and classifies the request head at the start of `buf`: a head over
/// `limits.max_bytes` is 431 (414 if its request line alone is), one with more than
/// `limits.max_fields` fields 431; more fields than this path parses in place, but
/// within the limit, go to hyper.
pub fn parse_request_within<'h, 'b>(
    buf: &'b [u8],
    storage: &'h mut [MaybeUninit<httparse::Header<'b>>],
    limits: HeadLimits,
) -> ParsedRequest<'h, 'b> {
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, storage) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_bytes => {
            return ParsedRequest::Reject(too_large(buf, limits.max_bytes))
        }
        Ok(httparse::Status::Partial) => return ParsedRequest::Partial,
        Err(httparse::Error::TooManyHeaders) if limits.max_fields > MAX_FIELDS => {
            return ParsedRequest::Handover(Handover::ManyFields)
        }
        Err(httparse::Error::TooManyHeaders) => {
            return ParsedRequest::Reject(Malformed::TooManyHeaders)
        }
        Err(_) => return ParsedRequest::Reject(Malformed::InvalidRequest),
    };
    if head_len > limits.max_bytes {
        return ParsedRequest::Reject(too_large(buf, limits.max_bytes));
    }
    if req.headers.len() > limits.max_fields {
        return ParsedRequest::Reject(Malformed::TooManyHeaders);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return ParsedRequest::Reject(Malformed::InvalidRequest);
    };
    if version != 1 {
        return ParsedRequest::Handover(Handover::Http10);
    }
    if !target.starts_with('/') || !is_plain_target(target.as_bytes()) {
        return ParsedRequest::Handover(Handover::UnusualTarget);
    }
    let fields: &'h [httparse::Header<'b>] = req.headers;
    let mut content_length = None;
    let mut close = false;
    let mut host = None;
    let mut request_id = None;
    let mut connection = ConnectionOptions::new(fields);
    for field in fields {
        match Field::of(field.name) {
            Field::ContentLength => {
                let Some(n) = parse_length(field.value).filter(|_| content_length.is_none()) else {
                    return ParsedRequest::Handover(Handover::Body);
                };
                content_length = Some(n);
            }
            Field::TransferEncoding => return ParsedRequest::Handover(Handover::Body),
            Field::Host => {
                if host.is_some() {
                    return ParsedRequest::Reject(Malformed::InvalidRequest);
                }
                host = std::str::from_utf8(field.value).ok();
            }
            Field::Connection => {
                for token in list_elements(field.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        return ParsedRequest::Handover(Handover::Upgrade);
                    }
                    connection.add(token);
                }
            }
            Field::Upgrade | Field::Expect => return ParsedRequest::Handover(Handover::Upgrade),
            Field::XRequestId if request_id.is_none() => request_id = Some(field.value),
            _ => {}
        }
    }
    let content_length = match content_length {
        None => 0,
        Some(n) => match usize::try_from(n) {
            Ok(n) if n <= MAX_INLINE_BODY => n,
            _ => return ParsedRequest::Handover(Handover::Body),
        },
    };
    ParsedRequest::Ready(Request {
        method,
        target,
        fields: ParsedFields(fields),
        head_len,
        head: &buf[..head_len],
        content_length,
        close,
        host,
        request_id,
        connection,
    })
}

/// What is too large in a head over `max_bytes`: the request line alone (its target:
/// 414, as hyper answers), or the head (431).
#[cold]
fn too_large(buf: &[u8], max_bytes: usize) -> Malformed {
    let limit = buf.len().min(max_bytes);
    if buf[..limit].contains(&b'\n') {
        Malformed::HeadTooLarge
    } else {
        Malformed::UriTooLong
    }
}

/// Writes the request head for the upstream hop, applying the policy's header rules
/// (`crate::request::forward`): hop-by-hop fields dropped (the fixed list and whatever
/// `Connection` names), `X-Forwarded-*` and `X-Cohort-Variant` set (`peer` is the
/// client's address as an `X-Forwarded-For` element), a drawn `X-Request-Id` added
/// (replacing a blank one), split `Cookie` lines folded, everything else passed through
/// as the client wrote it.
pub fn write_upstream_request(
    req: &Request<'_, '_>,
    fwd: &Forwarding<'_>,
    peer: &[u8],
    out: &mut Vec<u8>,
) {
    let fields = req.fields.0;
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let connection = &req.connection;
    let mut lines = FieldLines::new(req.head);
    let mut forwarded_for = false;
    let mut cookies = 0;
    for field in fields {
        let name = field.name;
        let known = Field::of(name);
        let skip = match known {
            Field::Te => !is_trailers_only(field.value),
            Field::XForwardedProto | Field::XForwardedHost | Field::XCohortVariant => true,
            Field::XRequestId => fwd.request_id.is_some(),
            Field::Baggage => !fwd.baggage.keeps_the_clients(),
            _ => known.is_hop_by_hop(),
        } || connection.names(name)
            || fwd
                .untrusted_override
                .is_some_and(|h| name.eq_ignore_ascii_case(h.as_str()));
        if skip {
            continue;
        }
        match known {
            Field::XForwardedFor => forwarded_for = true,
            Field::Cookie => {
                cookies += 1;
                if cookies == 1 && many(fields, Field::Cookie) {
                    lines.flush(out);
                    write_field(out, b"cookie", &fold(fields, Field::Cookie, b"; "));
                } else if cookies == 1 {
                    lines.keep(field, out);
                }
            }
            _ => lines.keep(field, out),
        }
    }
    lines.flush(out);
    out.extend_from_slice(b"x-forwarded-for: ");
    if forwarded_for {
        for field in fields {
            if Field::of(field.name) == Field::XForwardedFor {
                out.extend_from_slice(field.value);
                out.extend_from_slice(b", ");
            }
        }
    }
    out.extend_from_slice(peer);
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(fwd.proto.as_bytes());
    if let Some(host) = req.host {
        out.extend_from_slice(b"\r\nx-forwarded-host: ");
        out.extend_from_slice(host.as_bytes());
    }
    out.extend_from_slice(b"\r\nx-cohort-variant: ");
    out.extend_from_slice(fwd.variant.as_bytes());
    if let BaggageRewrite::Replace(value) = &fwd.baggage {
        out.extend_from_slice(b"\r\nbaggage: ");
        out.extend_from_slice(value.as_bytes());
    }
    if let Some(id) = fwd.request_id {
        out.extend_from_slice(id.field_line());
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a HEAD request's response, 204, 304.
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A final response head from the upstream.
pub struct Response<'h, 'b> {
    pub status: u16,
    reason: &'b str,
    fields: ParsedFields<'h, 'b>,
    pub head_len: usize,
    /// The head as read, for copying kept field lines unchanged.
    head: &'b [u8],
    pub framing: Framing,
    /// The upstream connection may carry another request after this response.
    pub reusable: bool,
    connection: ConnectionOptions<'h, 'b>,
}

// Returned by value once per head; boxing the large variant would allocate per request.
#[allow(clippy::large_enum_variant)]
pub enum ParsedResponse<'h, 'b> {
    Partial,
    /// An interim 1xx head of this many bytes, to skip.
    Interim(usize),
    Ready(Response<'h, 'b>),
    Invalid(&'static str),
}

/// Parses the response head at the start of `buf`; `head_request` says the request was
/// `HEAD`, whose response has no body whatever its fields say.
pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    storage: &'h mut [MaybeUninit<httparse::Header<'b>>],
    head_request: bool,
) -> ParsedResponse<'h, 'b> {
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, storage);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return ParsedResponse::Partial,
        Err(_) => return ParsedResponse::Invalid("malformed response head"),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return ParsedResponse::Invalid("malformed response head");
    };
    if status == 101 {
        return ParsedResponse::Invalid("101 Switching Protocols without an upgrade request");
    }
    if (100..200).contains(&status) {
        return ParsedResponse::Interim(head_len);
    }
    let reason = resp.reason.unwrap_or("");
    let fields: &'h [httparse::Header<'b>] = resp.headers;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive = false;
    let mut connection = ConnectionOptions::new(fields);
    for field in fields {
        match Field::of(field.name) {
            Field::ContentLength => match parse_length(field.value) {
                Some(n) if length.map_or(true, |l| l == n) => length = Some(n),
                _ => return ParsedResponse::Invalid("invalid or conflicting Content-Length"),
            },
            Field::TransferEncoding => match list_elements(field.value).last() {
                Some(last) if last.eq_ignore_ascii_case(b"chunked") && !chunked => chunked = true,
                _ => return ParsedResponse::Invalid("unsupported Transfer-Encoding"),
            },
            Field::Connection => {
                for token in list_elements(field.value) {
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                    connection.add(token);
                }
            }
            _ => {}
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let reusable = !close
        && (version == 1 || keep_alive)
        && framing != Framing::UntilClose
        // Both framings at once is a smuggling smell: finish this one, then hang up.
        && !(chunked && length.is_some());
    ParsedResponse::Ready(Response {
        status,
        reason,
        fields: ParsedFields(fields),
        head_len,
        head: &buf[..head_len],
        framing,
        reusable,
        connection,
    })
}

/// What cohort adds to every response it sends a client.
pub struct Decoration<'a> {
    /// `listen.variant_header` and the variant.
    pub variant_header: Option<(&'a HeaderName, &'static str)>,
    /// A `Set-Cookie` value keeping a first-time client in its cohort.
    pub set_cookie: Option<&'a [u8]>,
    /// Tell the client the connection closes after this response.
    pub close: bool,
}

impl Decoration<'_> {
    /// Nothing added but, with `close`, `connection: close` (404s and rejected heads).
    pub fn plain(close: bool) -> Decoration<'static> {
        Decoration {
            variant_header: None,
            set_cookie: None,
            close,
        }
    }
}

/// Writes the response head for the client: hop-by-hop fields dropped, the framing
/// kept as the upstream sent it (a chunked body passes through verbatim), cohort's own
/// fields added. A body that ends when the connection does means `connection: close`.
pub fn write_client_response(resp: &Response<'_, '_>, deco: &Decoration<'_>, out: &mut Vec<u8>) {
    let fields = resp.fields.0;
    match resp.head.iter().position(|&b| b == b'\n') {
        // An HTTP/1.1 status line is the client's as it came: one copy, no formatting.
        Some(end) if resp.head.starts_with(b"HTTP/1.1 ") && resp.head[end - 1] == b'\r' => {
            out.extend_from_slice(&resp.head[..=end]);
        }
        _ => write_status_line(out, resp.status, resp.reason),
    }
    let connection = &resp.connection;
    let chunked = resp.framing == Framing::Chunked;
    let mut lines = FieldLines::new(resp.head);
    for field in fields {
        let name = field.name;
        let skip = match Field::of(name) {
            // The framing passes through as the upstream sent it.
            Field::TransferEncoding => !chunked,
            Field::ContentLength => chunked,
            known => known.is_hop_by_hop(),
        } || connection.names(name)
            || deco
                .variant_header
                .is_some_and(|(h, _)| name.eq_ignore_ascii_case(h.as_str()));
        if !skip {
            lines.keep(field, out);
        }
    }
    lines.flush(out);
    finish_head(out, deco.close || resp.framing == Framing::UntilClose, deco);
}

/// Writes a response cohort makes itself (404, 502, 504), body included.
pub fn write_local_response(
    status: StatusCode,
    body: &str,
    deco: &Decoration<'_>,
    out: &mut Vec<u8>,
) {
    write_status_line(
        out,
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
    );
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "content-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
        body.len()
    );
    finish_head(out, deco.close, deco);
    out.extend_from_slice(body.as_bytes());
}

fn write_status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
}

fn finish_head(out: &mut Vec<u8>, close: bool, deco: &Decoration<'_>) {
    if let Some((name, variant)) = deco.variant_header {
        write_field(out, name.as_str().as_bytes(), variant.as_bytes());
    }
    if let Some(cookie) = deco.set_cookie {
        write_field(out, b"set-cookie", cookie);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Copies the field lines a head keeps to `out` as they were read, each run of
/// consecutive kept lines in one copy (one or two per head, where writing name, colon,
/// value and CRLF separately took four copies per field).
struct FieldLines<'b> {
    head: &'b [u8],
    /// Kept lines of `head` not copied yet.
    run: Range<usize>,
}

impl<'b> FieldLines<'b> {
    fn new(head: &'b [u8]) -> Self {
        FieldLines { head, run: 0..0 }
    }

    fn keep(&mut self, field: &httparse::Header<'b>, out: &mut Vec<u8>) {
        match self.line_of(field) {
            Some(line) if !self.run.is_empty() && line.start == self.run.end => {
                self.run.end = line.end;
            }
            Some(line) => {
                self.flush(out);
                self.run = line;
            }
            None => {
                self.flush(out);
                write_field(out, field.name.as_bytes(), field.value);
            }
        }
    }

    /// Copies the pending run; call before writing anything else.
    fn flush(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head[self.run.clone()]);
        self.run = 0..0;
    }

    /// Where `field`'s line lies in the head, CRLF included. httparse's name and value
    /// point into the head (an empty value at the line's CR); a line ending in a bare
    /// LF gives `None` and is written anew, so the next hop always gets CRLF.
    fn line_of(&self, field: &httparse::Header<'b>) -> Option<Range<usize>> {
        let base = self.head.as_ptr() as usize;
        let start = (field.name.as_ptr() as usize).checked_sub(base)?;
        let value_end = (field.value.as_ptr() as usize).checked_sub(base)? + field.value.len();
        let rest = self.head.get(value_end..)?;
        if start >= value_end || self.head.get(start + field.name.len()) != Some(&b':') {
            return None;
        }
        let blanks = rest
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        rest[blanks..]
            .starts_with(b"\r\n")
            .then_some(start..value_end + blanks + 2)
    }
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The field names a head's `Connection` fields list (RFC 9110 §7.6.1): a proxy drops
/// those fields. Collected while the head is parsed; names of fixed hop-by-hop fields
/// are left out (they go anyway), so the usual `keep-alive` costs nothing per field.
struct ConnectionOptions<'h, 'b> {
    listed: [&'b [u8]; OPTIONS_HELD],
    len: usize,
    /// More options than `listed` holds (never seen in practice): every field is
    /// looked up in the head's `Connection` values instead.
    overflowed: bool,
    fields: &'h [httparse::Header<'b>],
}

/// Connection options a head's [`ConnectionOptions`] holds without looking again.
const OPTIONS_HELD: usize = 8;

impl<'h, 'b> ConnectionOptions<'h, 'b> {
    /// None yet, for a head with these `fields`.
    fn new(fields: &'h [httparse::Header<'b>]) -> Self {
        ConnectionOptions {
            listed: [&[]; OPTIONS_HELD],
            len: 0,
            overflowed: false,
            fields,
        }
    }

    /// One token of a `Connection` field.
    fn add(&mut self, token: &'b [u8]) {
        if Field::of_bytes(token).is_hop_by_hop() || self.overflowed {
            return;
        }
        if self.len == OPTIONS_HELD {
            self.overflowed = true;
            return;
        }
        self.listed[self.len] = token;
        self.len += 1;
    }

    fn names(&self, name: &str) -> bool {
        let name = name.as_bytes();
        if !self.overflowed {
            return self.listed[..self.len]
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name));
        }
        // The same tokens `add` would have listed: a hop-by-hop name in `Connection`
        // changes nothing (its own rule decides; `TE: trailers` stays).
        self.fields
            .iter()
            .filter(|f| Field::of(f.name) == Field::Connection)
            .flat_map(|f| list_elements(f.value))
            .filter(|t| !Field::of_bytes(t).is_hop_by_hop())
            .any(|t| t.eq_ignore_ascii_case(name))
    }
}

fn many(fields: &[httparse::Header<'_>], known: Field) -> bool {
    fields
        .iter()
        .filter(|f| Field::of(f.name) == known)
        .nth(1)
        .is_some()
}

/// The values of every `known` field joined by `sep`, empty ones included, as
/// `crate::request::forward::fold_cookies` joins them on hyper's path.
fn fold(fields: &[httparse::Header<'_>], known: Field, sep: &[u8]) -> Vec<u8> {
    let mut joined = Vec::new();
    for (i, field) in fields
        .iter()
        .filter(|f| Field::of(f.name) == known)
        .enumerate()
    {
        if i > 0 {
            joined.extend_from_slice(sep);
        }
        joined.extend_from_slice(field.value);
    }
    joined
}

/// Whether hyper's engine would forward `target` byte for byte: httparse takes any
/// visible byte, but hyper's URI parsing (the `http` crate) refuses some (`<`, `>`,
/// `` ` `` in the path, `"` in the query: 400) and drops a `#` fragment. Such a target
/// goes to hyper, so both engines answer it alike; bytes past ASCII too (hyper checks
/// their UTF-8). The sets are `http`'s path and query maps.
fn is_plain_target(target: &[u8]) -> bool {
    const PATH: u8 = 1;
    const QUERY: u8 = 2;
    const CLASSES: [u8; 256] = {
        let mut t = [0; 256];
        let mut b: u8 = 0x21;
        while b < 0x7f {
            let path = !matches!(b, b'#' | b'<' | b'>' | b'`');
            let query = !matches!(b, b'#' | b'<' | b'>' | b'"');
            t[b as usize] = if path { PATH } else { 0 } | if query { QUERY } else { 0 };
            b += 1;
        }
        t
    };
    let query = target
        .iter()
        .position(|&b| b == b'?')
        .unwrap_or(target.len());
    target[..query]
        .iter()
        .all(|&b| CLASSES[usize::from(b)] & PATH != 0)
        && target[query..]
            .iter()
            .all(|&b| CLASSES[usize::from(b)] & QUERY != 0)
}

/// A `Content-Length` value: digits only, no sign, no list (RFC 9110 §8.6).
fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests;
