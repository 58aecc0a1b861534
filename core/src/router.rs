//! Routing decisions, pure: request head + peer address + routes → route, variant, source.
//!
//! No I/O and no clock: the random key for first-time clients is passed in, so
//! every decision here is reproducible in a unit test.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr};

use http::header::{COOKIE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use crate::baggage;
use crate::cohort::{BasisPoints, Variant};
use crate::config::{canonical_ip, Override, Route, StickySource, COHORT_ID_COOKIE};
use crate::segment::{self, Attributes};

/// Routes ordered for matching: host routes first, then host-less ones; each group by
/// longest `path_prefix` first, ties in file order (DESIGN §1.2).
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    with_host: Vec<usize>,
    without_host: Vec<usize>,
}

impl RouteTable {
    pub fn new(routes: &[Route]) -> RouteTable {
        let mut with_host: Vec<usize> = Vec::new();
        let mut without_host: Vec<usize> = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            if route.host.is_some() {
                with_host.push(i);
            } else {
                without_host.push(i);
            }
        }
        // A stable sort keeps file order among equal prefix lengths.
        let by_prefix_len = |i: &usize| std::cmp::Reverse(routes[*i].path_prefix.len());
        with_host.sort_by_key(by_prefix_len);
        without_host.sort_by_key(by_prefix_len);
        RouteTable {
            with_host,
            without_host,
        }
    }

    /// Index of the route for this host (any case, port allowed) and path, if any.
    #[inline]
    pub fn find(&self, routes: &[Route], host: Option<&str>, path: &str) -> Option<usize> {
        if let Some(host) = host.map(strip_port).filter(|h| !h.is_empty()) {
            let found = self.with_host.iter().copied().find(|&i| {
                let route = &routes[i];
                route
                    .host
                    .as_deref()
                    .is_some_and(|h| h.eq_ignore_ascii_case(host))
                    && path.starts_with(route.path_prefix.as_str())
            });
            if found.is_some() {
                return found;
            }
        }
        self.without_host
            .iter()
            .copied()
            .find(|&i| path.starts_with(routes[i].path_prefix.as_str()))
    }
}

/// The request's host: the URI authority when the request has one (HTTP/2 `:authority`,
/// or an HTTP/1.1 absolute-form target, which RFC 9112 §3.2.2 says wins over `Host`),
/// else the `Host` header.
#[inline]
pub fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(HOST).and_then(|v| v.to_str().ok()))
}

/// `example.com:8080` → `example.com`; `[::1]:8080` → `[::1]`.
#[inline]
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(colon) if host[colon + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..colon],
        _ => host,
    }
}

/// Where a request's variant came from: the `source` label of `cohort_assignments_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AssignSource {
    Header,
    Cookie,
    Ip,
    Random,
    Override,
    /// A `[[routes.segments]]` rule (DESIGN §11).
    Segment,
    /// The `cohort.<follow>` member of a trusted sender's baggage (DESIGN §11).
    Propagated,
}

impl AssignSource {
    pub const ALL: [AssignSource; 7] = [
        AssignSource::Header,
        AssignSource::Cookie,
        AssignSource::Ip,
        AssignSource::Random,
        AssignSource::Override,
        AssignSource::Segment,
        AssignSource::Propagated,
    ];

    /// Whether the request was forced into its variant rather than placed by its
    /// cohort: forced requests say nothing about a variant's health, so the guard
    /// does not count them (DESIGN §11).
    pub fn is_forced(self) -> bool {
        matches!(self, AssignSource::Override | AssignSource::Propagated)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AssignSource::Header => "header",
            AssignSource::Cookie => "cookie",
            AssignSource::Ip => "ip",
            AssignSource::Random => "random",
            AssignSource::Override => "override",
            AssignSource::Segment => "segment",
            AssignSource::Propagated => "propagated",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A peer address in canonical text form, on the stack (the longest IPv6 text is 45 bytes).
pub struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    #[inline]
    pub fn new(ip: IpAddr) -> IpText {
        let mut text = IpText {
            buf: [0; 48],
            len: 0,
        };
        match canonical_ip(ip) {
            IpAddr::V4(v4) => text.push_v4(v4),
            // Display of an IPv6 address never exceeds the buffer, so this cannot fail.
            v6 => {
                let _ = write!(text, "{v6}");
            }
        }
        text
    }

    /// Dotted decimal without the formatting machinery: cohort renders the client's
    /// address for every proxied request (`X-Forwarded-For`).
    fn push_v4(&mut self, ip: Ipv4Addr) {
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                self.push(b'.');
            }
            if octet >= 100 {
                self.push(b'0' + octet / 100);
            }
            if octet >= 10 {
                self.push(b'0' + octet / 10 % 10);
            }
            self.push(b'0' + octet % 10);
        }
    }

    /// At most 15 bytes for IPv4: within the buffer.
    fn push(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A cohort key found in the request, borrowed where possible.
pub enum CohortKey<'a> {
    Borrowed(&'a [u8]),
    Ip(IpText),
}

impl CohortKey<'_> {
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            CohortKey::Borrowed(bytes) => bytes,
            CohortKey::Ip(text) => text.as_bytes(),
        }
    }
}

/// Read access to a request's header fields: routing decides the same way on hyper's
/// `HeaderMap` and on the fields cohort's own HTTP/1.1 parser found in place.
pub trait Fields {
    /// The first value of the field `name`, if present.
    fn first(&self, name: &HeaderName) -> Option<&[u8]>;
    /// Every `Cookie` field value, in order.
    fn cookies(&self) -> impl Iterator<Item = &[u8]>;
    /// Every `X-Forwarded-For` field value, in order (walked from the right:
    /// [`crate::client_addr`]).
    fn forwarded_for(&self) -> impl DoubleEndedIterator<Item = &[u8]>;
    /// Every `baggage` field value, in order ([`crate::baggage`]).
    fn baggage(&self) -> impl Iterator<Item = &[u8]>;
}

impl Fields for HeaderMap {
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        self.get(name).map(HeaderValue::as_bytes)
    }

    fn cookies(&self) -> impl Iterator<Item = &[u8]> {
        self.get_all(COOKIE).iter().map(HeaderValue::as_bytes)
    }

    fn forwarded_for(&self) -> impl DoubleEndedIterator<Item = &[u8]> {
        self.get_all(X_FORWARDED_FOR)
            .iter()
            .map(HeaderValue::as_bytes)
    }

    fn baggage(&self) -> impl Iterator<Item = &[u8]> {
        self.get_all(BAGGAGE).iter().map(HeaderValue::as_bytes)
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// The first present, non-empty key among the route's sources, then `cookie:cohort_id`.
pub fn find_key<'a>(
    sticky: &[StickySource],
    headers: &'a impl Fields,
    peer: IpAddr,
) -> Option<(CohortKey<'a>, AssignSource)> {
    for source in sticky {
        match source {
            StickySource::Header(name) => {
                if let Some(value) = headers.first(name).map(trim) {
                    if !value.is_empty() {
                        return Some((CohortKey::Borrowed(value), AssignSource::Header));
                    }
                }
            }
            StickySource::Cookie(name) => {
                if let Some(value) = cookie(headers, name).filter(|v| !v.is_empty()) {
                    return Some((CohortKey::Borrowed(value), AssignSource::Cookie));
                }
            }
            StickySource::Ip => return Some((CohortKey::Ip(IpText::new(peer)), AssignSource::Ip)),
        }
    }
    cookie(headers, COHORT_ID_COOKIE)
        .filter(|v| !v.is_empty())
        .map(|v| (CohortKey::Borrowed(v), AssignSource::Cookie))
}

/// The raw value of the first cookie called `name` across all `Cookie` headers.
pub fn cookie<'a>(headers: &'a impl Fields, name: &str) -> Option<&'a [u8]> {
    headers.cookies().find_map(|header| {
        header.split(|&b| b == b';').find_map(|pair| {
            let pair = trim(pair);
            let eq = pair.iter().position(|&b| b == b'=')?;
            (trim(&pair[..eq]) == name.as_bytes()).then(|| trim(&pair[eq + 1..]))
        })
    })
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// Whether `text` is an RFC 9110 token (§5.6.2): what a cookie name, a `Connection`
/// option or the NAME of a `cohort.<NAME>` baggage member must be.
pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The elements of a comma-separated field value (RFC 9110 §5.6.1), surrounding
/// whitespace trimmed, empty ones skipped: `Connection` options, `Transfer-Encoding`
/// codings, `baggage` members.
pub fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|element| !element.is_empty())
}

/// The variant a trusted request forces through the override header or cookie.
/// Untrusted peers get `None` whatever they send.
pub fn forced_variant(ovr: &Override, headers: &impl Fields, peer: IpAddr) -> Option<Variant> {
    if !ovr.trusts(peer) {
        return None;
    }
    headers
        .first(&ovr.header)
        .and_then(|v| Variant::from_name(trim(v)))
        .or_else(|| cookie(headers, &ovr.cookie).and_then(Variant::from_name))
}

/// What the router decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub variant: Variant,
    pub source: AssignSource,
    /// The key's bucket, when a key was hashed (not for overrides).
    pub bucket: Option<u16>,
    /// A freshly drawn `cohort_id` the response must set, for clients that sent no key.
    pub new_cohort_id: Option<String>,
    /// The index of the segment that decided, when one did.
    pub segment: Option<usize>,
}

/// Assigns a variant for `route` at canary share `canary`, by DESIGN §11's precedence:
/// a trusted override, then a trusted sender's baggage (`follow`), then the first
/// matching segment, then the percentage. `client` is the client address (§10).
///
/// `draw_key` is called only when the request carries no key at all.
pub fn decide(
    route: &Route,
    canary: BasisPoints,
    headers: &impl Fields,
    client: IpAddr,
    draw_key: impl FnOnce() -> String,
) -> Decision {
    if let Some((variant, source)) = forced(route, headers, client) {
        return Decision::forced(variant, source);
    }
    match find_key(&route.sticky, headers, client) {
        Some((key, source)) => place(route, canary, headers, Some(client), key.as_bytes(), source),
        None => {
            let drawn = draw_key();
            let mut decision = place(
                route,
                canary,
                headers,
                Some(client),
                drawn.as_bytes(),
                AssignSource::Random,
            );
            decision.new_cohort_id = Some(drawn);
            decision
        }
    }
}

/// A request described by hand, as `/assign` and `cohort assign` take it: a cohort
/// key and the attributes rules read (headers, cookies, the client address).
#[derive(Debug, Default)]
pub struct Described {
    headers: HeaderMap,
    client: Option<IpAddr>,
}

impl Described {
    /// `NAME=VALUE` (or `NAME:VALUE`): a request header.
    pub fn header(&mut self, spec: &str) -> Result<(), String> {
        let (name, value) = spec
            .split_once(['=', ':'])
            .ok_or_else(|| format!("header {spec:?} is not NAME=VALUE"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("{:?} is not a header name", name.trim()))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("{value:?} is not a header value"))?;
        self.headers.append(name, value);
        Ok(())
    }

    /// `NAME=VALUE`: a cookie.
    pub fn cookie(&mut self, spec: &str) -> Result<(), String> {
        if !spec.contains('=') || spec.contains(';') {
            return Err(format!("cookie {spec:?} is not NAME=VALUE"));
        }
        let value = HeaderValue::from_str(spec).map_err(|_| format!("{spec:?} is not a cookie"))?;
        self.headers.append(COOKIE, value);
        Ok(())
    }

    /// The client address.
    pub fn ip(&mut self, text: &str) -> Result<(), String> {
        let ip = text
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address"))?;
        self.client = Some(ip);
        Ok(())
    }

    /// The decision for this request with cohort key `key`: the rules of [`decide`].
    /// Without a client address, nothing that judges one (trust, `ip` rules) applies.
    pub fn decide(&self, route: &Route, canary: BasisPoints, key: &[u8]) -> Decision {
        let forced_by = self.client.and_then(|ip| forced(route, &self.headers, ip));
        if let Some((variant, source)) = forced_by {
            return Decision::forced(variant, source);
        }
        place(
            route,
            canary,
            &self.headers,
            self.client,
            key,
            AssignSource::Header,
        )
    }
}

/// The first matching segment's variant, else the percentage's, for a request whose
/// cohort key is `key` (found under `source`, or drawn). A drawn key is nobody's, so
/// `key` segments do not see it. The bucket is reported either way (`/assign` shows it).
fn place(
    route: &Route,
    canary: BasisPoints,
    headers: &impl Fields,
    client: Option<IpAddr>,
    key: &[u8],
    source: AssignSource,
) -> Decision {
    let (bucket, by_percentage) = route.assign(key, canary);
    let segment = if route.segments.is_empty() {
        None
    } else {
        let request = Attributes {
            fields: headers,
            key: (source != AssignSource::Random).then_some(key),
            client,
        };
        segment::first_match(&route.segments, &request)
    };
    let (variant, source, segment) = match segment {
        Some((index, variant)) => (variant, AssignSource::Segment, Some(index)),
        None => (by_percentage, source, None),
    };
    Decision {
        variant,
        source,
        bucket: Some(bucket),
        new_cohort_id: None,
        segment,
    }
}

impl Decision {
    /// A variant forced by a trusted sender: no bucket, no segment, no new key.
    fn forced(variant: Variant, source: AssignSource) -> Decision {
        Decision {
            variant,
            source,
            bucket: None,
            new_cohort_id: None,
            segment: None,
        }
    }

    /// Which rule decided, in the words of the config: `override`, `baggage`,
    /// `segments[N]` or `percentage`.
    pub fn decided_by(&self) -> String {
        match (self.source, self.segment) {
            (AssignSource::Override, _) => "override".to_owned(),
            (AssignSource::Propagated, _) => "baggage".to_owned(),
            (_, Some(index)) => format!("segments[{index}]"),
            _ => "percentage".to_owned(),
        }
    }
}

/// A variant a trusted sender forces: the override header or cookie first, then the
/// route's `follow` baggage member. Untrusted senders force nothing.
fn forced(route: &Route, headers: &impl Fields, client: IpAddr) -> Option<(Variant, AssignSource)> {
    let ovr = route.override_.as_ref()?;
    if let Some(variant) = forced_variant(ovr, headers, client) {
        return Some((variant, AssignSource::Override));
    }
    let name = route.follow.as_deref()?;
    // `forced_variant` already judged the sender; `follow` is believed from the same
    // peers (DESIGN §11: `trusted` is the route's `override.trusted`).
    if !ovr.trusts(client) {
        return None;
    }
    baggage::find(|| headers.baggage(), name).map(|variant| (variant, AssignSource::Propagated))
}

/// The `Set-Cookie` value that keeps a first-time client in its cohort.
pub fn cohort_id_cookie(key: &str, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COHORT_ID_COOKIE}={key}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax{secure}"
    ))
    .ok()
}

#[cfg(test)]
mod tests;
