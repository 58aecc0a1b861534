//! Hostile HTTP/1 bytes against a running cohort, and the same bytes against NGINX
//! (issue 17, item 3): ambiguous framing (CL+TE, two lengths, obfuscated
//! `Transfer-Encoding`), obs-fold, bare LF, bad chunk sizes and extensions, smuggling
//! through a keep-alive connection, early 4xx answers with an unread body, and an
//! upgrade the upstream refuses.
//!
//! Each case's bytes go on a raw TCP connection to (a) cohort's own HTTP/1.1 engine,
//! (b) cohort's hyper engine (a connection first handed over by a chunked upload) and
//! (c) NGINX proxying to an equivalent upstream. The upstream ([`Recorder`]) parses
//! what it receives as HTTP/1.1 and records every request it read (method, target, body
//! bytes, or `cut` when its body never ended) and any bytes that were not HTTP; it
//! answers each request with its own request line, so a response ever delivered to the
//! wrong request shows. After each case another client, on a new connection, must be
//! served its own answer.
//!
//! cohort's answers are asserted as a spec ([`Spec`]); NGINX's are measured, and the
//! README's table (`### Hostile HTTP/1 input (cohort vs NGINX)`) must equal what was
//! measured for all three: on a mismatch the test prints the measured table, ready to
//! paste.
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::nginx::{nginx_version, Nginx};
use support::{Config, RawConn, Route, TestCohort};

/// The routed host; any other is unrouted (404).
const HOST: &str = "app.example";

/// A chunked upload: cohort's own path hands the connection to hyper, which serves
/// every later request on it (as in tests/limits.rs).
const UPLOAD: &[u8] = b"POST /up HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";

/// The request another client sends after each case, on a new connection.
const OTHER: &[u8] = b"GET /other HTTP/1.1\r\nHost: app.example\r\n\r\n";

/// How long a connection must stay silent, once it has answered, before a case's
/// answers are taken as all.
const QUIET: Duration = Duration::from_millis(800);

/// How long a case may take to answer at all (every case here is answered, or closed).
const FIRST_ANSWER: Duration = Duration::from_secs(5);

/// Runs (a case on a target) at once: each holds a few sockets on both ends, and an
/// in-process cohort its listeners and runtime, within the usual 1024 open files.
const RUNS_AT_ONCE: usize = 24;

/// Where a case's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// cohort's own HTTP/1.1 engine (a fresh connection).
    Own,
    /// cohort's hyper engine: a connection handed over by a chunked upload first.
    Hyper,
    /// NGINX in front of the same kind of upstream.
    Nginx,
}

/// What cohort must do with a case, on both engines.
#[derive(Debug, Clone)]
enum Spec {
    /// Refused with this status and `connection: close`, the connection closed, nothing
    /// upstream.
    Reject(u16),
    /// Served: these answers, exactly these upstream requests, and whether the
    /// connection closes afterwards.
    Serve {
        answers: &'static [u16],
        upstream: &'static [&'static str],
        closed: bool,
    },
}

/// One attack.
struct Case {
    name: &'static str,
    /// The bytes in a few words, for the README.
    short: &'static str,
    bytes: Vec<u8>,
    /// Sent once the connection has gone quiet after the first bytes (the next bytes
    /// of a body in progress, what a client sends after a refused upgrade).
    then: Option<&'static [u8]>,
    /// The route's `max_body` is 1 KiB (NGINX: `client_max_body_size 1k`).
    small_max_body: bool,
    spec: Spec,
}

fn case(name: &'static str, short: &'static str, bytes: impl AsRef<[u8]>, spec: Spec) -> Case {
    Case {
        name,
        short,
        bytes: bytes.as_ref().to_vec(),
        then: None,
        small_max_body: false,
        spec,
    }
}

const fn serve(answers: &'static [u16], upstream: &'static [&'static str], closed: bool) -> Spec {
    Spec::Serve {
        answers,
        upstream,
        closed,
    }
}

/// A plain request first on the connection, so a smuggling attempt rides a keep-alive
/// connection whose upstream connection is pooled.
const FIRST: &str = "GET /first HTTP/1.1\r\nHost: app.example\r\n\r\n";

/// A hidden request: the upstream must never read it as one.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: app.example\r\n\r\n";

fn cases() -> Vec<Case> {
    let post = |path: &str, fields: &str, body: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: {HOST}\r\n{fields}\r\n{body}")
    };
    let chunked = |path: &str, body: &str| post(path, "Transfer-Encoding: chunked\r\n", body);
    // CL.TE: a front end reading Content-Length sends all of it; one reading chunked
    // stops at `0` and takes the rest as the next request.
    let cl_te_body = format!("0\r\n\r\n{SMUGGLED}");
    // TE.CL: the hidden request is chunk data; Content-Length would end the body early.
    let te_cl_body = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let unrouted_body = SMUGGLED;
    let over_max_body = format!("{SMUGGLED}{}", "x".repeat(2000 - SMUGGLED.len()));
    let mut cases = vec![
        case(
            "cl-te",
            "`Content-Length: 3` + `Transfer-Encoding: chunked`",
            post(
                "/cl-te",
                "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            serve(&[200], &["POST /cl-te [3]"], true),
        ),
        case(
            "two-cl",
            "`Content-Length: 3` + `Content-Length: 4`",
            post(
                "/two-cl",
                "Content-Length: 3\r\nContent-Length: 4\r\n",
                "abcd",
            ),
            Spec::Reject(400),
        ),
        case(
            "cl-list",
            "`Content-Length: 3, 3`",
            post("/cl-list", "Content-Length: 3, 3\r\n", "abc"),
            Spec::Reject(400),
        ),
        case(
            "cl-plus",
            "`Content-Length: +3`",
            post("/cl-plus", "Content-Length: +3\r\n", "abc"),
            Spec::Reject(400),
        ),
        case(
            "te-gzip",
            "`Transfer-Encoding: gzip`",
            post("/te-gzip", "Transfer-Encoding: gzip\r\n", "abc"),
            Spec::Reject(400),
        ),
        case(
            "te-space-colon",
            "`Transfer-Encoding : chunked`",
            post(
                "/te-space",
                "Transfer-Encoding : chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            Spec::Reject(400),
        ),
        case(
            "te-xchunked",
            "`Transfer-Encoding: xchunked`",
            post(
                "/te-x",
                "Transfer-Encoding: xchunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            Spec::Reject(400),
        ),
        case(
            "te-chunked-identity",
            "`Transfer-Encoding: chunked, identity`",
            post(
                "/te-ci",
                "Transfer-Encoding: chunked, identity\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            Spec::Reject(400),
        ),
        case(
            "te-identity-chunked",
            "`Transfer-Encoding: identity, chunked`",
            post(
                "/te-ic",
                "Transfer-Encoding: identity, chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            Spec::Reject(400),
        ),
        case(
            "te-tab",
            "`Transfer-Encoding:<HT>chunked`",
            post(
                "/te-tab",
                "Transfer-Encoding:\tchunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            serve(&[200], &["POST /te-tab [3]"], false),
        ),
        case(
            "te-vtab",
            "`Transfer-Encoding:<VT>chunked`",
            post(
                "/te-vtab",
                "Transfer-Encoding:\x0bchunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            Spec::Reject(400),
        ),
        case(
            "te-two-lines",
            "`Transfer-Encoding: gzip` + `Transfer-Encoding: chunked`",
            post(
                "/te-two",
                "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            Spec::Reject(400),
        ),
        case(
            "te-obs-fold",
            "`Transfer-Encoding:` then `<SP>chunked` (obs-fold)",
            post(
                "/te-fold",
                "Transfer-Encoding:\r\n chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            Spec::Reject(400),
        ),
        case(
            "obs-fold",
            "`X-A: 1` then `<HT>folded`",
            format!("GET /fold HTTP/1.1\r\nHost: {HOST}\r\nX-A: 1\r\n\tfolded\r\n\r\n"),
            Spec::Reject(400),
        ),
        case(
            "nul-in-value",
            "`X-A: a<NUL>b`",
            format!("GET /nul HTTP/1.1\r\nHost: {HOST}\r\nX-A: a\0b\r\n\r\n"),
            Spec::Reject(400),
        ),
        case(
            "http09",
            "`GET /` (HTTP/0.9: no version, no fields)",
            "GET /\r\n\r\n",
            Spec::Reject(400),
        ),
        case(
            "te-http10",
            "HTTP/1.0, `Transfer-Encoding: chunked`, keep-alive, then a GET",
            format!(
                "POST /te10 HTTP/1.0\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\
                 Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n{SMUGGLED}"
            ),
            Spec::Reject(400),
        ),
        case(
            "bare-lf",
            "two GETs, every line ending in a bare LF",
            format!(
                "GET /lf1 HTTP/1.1\nHost: {HOST}\n\nGET /lf2 HTTP/1.1\nHost: {HOST}\n\n"
            ),
            serve(&[200, 200], &["GET /lf1", "GET /lf2"], false),
        ),
        case(
            "bare-cr",
            "a GET whose lines end in a bare CR",
            format!("GET /cr HTTP/1.1\rHost: {HOST}\r\r"),
            Spec::Reject(400),
        ),
        case(
            "absolute-form",
            "`GET http://other.example/` with `Host: app.example`",
            format!("GET http://other.example/abs HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
            serve(&[404], &[], false),
        ),
        case(
            "bare-lf-chunks",
            "chunked body with bare-LF chunk lines",
            chunked("/lf-chunks", "3\nabc\n0\n\n"),
            Spec::Reject(400),
        ),
        case(
            "chunk-nonhex",
            "chunk size `zz`",
            chunked("/nonhex", "zz\r\nabc\r\n0\r\n\r\n"),
            Spec::Reject(400),
        ),
        case(
            "chunk-negative",
            "chunk size `-1`",
            chunked("/negative", "-1\r\nabc\r\n0\r\n\r\n"),
            Spec::Reject(400),
        ),
        case(
            "chunk-0x",
            "chunk size `0x3`",
            chunked("/hex-prefix", "0x3\r\nabc\r\n0\r\n\r\n"),
            Spec::Reject(400),
        ),
        case(
            "chunk-overflow",
            "chunk size `1` + 16 × `0` (over u64)",
            chunked("/overflow", "10000000000000000\r\nabc\r\n0\r\n\r\n"),
            Spec::Reject(400),
        ),
        case(
            "chunk-leading-space",
            "chunk size `<SP>3`",
            chunked("/lead-space", " 3\r\nabc\r\n0\r\n\r\n"),
            Spec::Reject(400),
        ),
        Case {
            then: Some(b"zz\r\nabc\r\n0\r\n\r\n"),
            ..case(
                "chunk-bad-later",
                "chunk `3` (the upstream gets the head), then, once quiet, chunk size `zz`",
                chunked("/bad-later", "3\r\nabc\r\n"),
                serve(&[400], &["POST /bad-later [cut]"], true),
            )
        },
        case(
            "chunk-trailing-space",
            "chunk size `3<SP>`",
            chunked("/trail-space", "3 \r\nabc\r\n0\r\n\r\n"),
            serve(&[200], &["POST /trail-space [3]"], false),
        ),
        case(
            "chunk-ext",
            "chunk `3;name=value`",
            chunked("/ext", "3;name=value\r\nabc\r\n0\r\n\r\n"),
            serve(&[200], &["POST /ext [3]"], false),
        ),
        case(
            "chunk-trailers",
            "chunked body ending in a trailer field `X-T: 1`",
            chunked("/trailers", "3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"),
            serve(&[200], &["POST /trailers [3]"], false),
        ),
        case(
            "chunk-ext-huge",
            "chunk `3;` + 64 KiB of extension",
            chunked(
                "/ext-huge",
                &format!("3;{}\r\nabc\r\n0\r\n\r\n", "a".repeat(64 * 1024)),
            ),
            Spec::Reject(400),
        ),
        case(
            "smuggle-cl-te",
            "after a GET on the same connection, CL.TE: `CL` = whole body, chunked `0`, \
             then `GET /smuggled`",
            FIRST.to_owned()
                + &post(
                "/cl-te-smuggle",
                &format!(
                    "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                    cl_te_body.len()
                ),
                &cl_te_body,
            ),
            serve(&[200, 200], &["GET /first", "POST /cl-te-smuggle"], true),
        ),
        case(
            "smuggle-te-cl",
            "after a GET on the same connection, TE.CL: `GET /smuggled` as chunk data, \
             `Content-Length: 4`",
            FIRST.to_owned()
                + &post(
                "/te-cl-smuggle",
                "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                &te_cl_body,
            ),
            serve(&[200, 200], &["GET /first", "POST /te-cl-smuggle [45]"], true),
        ),
        case(
            "smuggle-te-space",
            "after a GET on the same connection, `Transfer-Encoding : chunked` + `CL`, \
             `GET /smuggled` after `0`",
            FIRST.to_owned()
                + &post(
                "/te-space-smuggle",
                &format!(
                    "Content-Length: {}\r\nTransfer-Encoding : chunked\r\n",
                    cl_te_body.len()
                ),
                &cl_te_body,
            ),
            serve(&[200, 400], &["GET /first"], true),
        ),
        case(
            "unrouted-body",
            "404 (unrouted host), `Content-Length` body = `GET /smuggled`",
            format!(
                "POST /nowhere HTTP/1.1\r\nHost: other.example\r\nContent-Length: {}\r\n\r\n{unrouted_body}",
                unrouted_body.len()
            ),
            serve(&[404], &[], false),
        ),
        case(
            "max-body-413",
            "`Content-Length: 2000` over `max_body` 1 KiB, body starts `GET /smuggled`",
            post("/big", "Content-Length: 2000\r\n", &over_max_body),
            Spec::Reject(413),
        ),
    ];
    cases.push(case(
        "expect-413",
        "`Content-Length: 2000` over `max_body`, `Expect: 100-continue`, no body",
        post(
            "/expect",
            "Content-Length: 2000\r\nExpect: 100-continue\r\n",
            "",
        ),
        Spec::Reject(413),
    ));
    for case in &mut cases {
        if matches!(case.name, "max-body-413" | "expect-413") {
            case.small_max_body = true;
        }
    }
    let mut upgrade = case(
        "upgrade-200",
        "`Upgrade: websocket`, upstream answers 200; then a WebSocket frame",
        format!(
            "GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
        serve(&[200, 400], &["GET /ws"], true),
    );
    // A masked text frame "hello": bytes a tunnel would pass on raw.
    upgrade.then = Some(b"\x81\x85\x01\x02\x03\x04\x69\x67\x6f\x68\x6e");
    cases.push(upgrade);
    cases
}

// ---------------------------------------------------------------------------------
// The upstream.

/// An HTTP/1.1 upstream that records what it reads: each request as `METHOD target`,
/// ` [n]` with its body's length, ` [cut]` when the body never ended; `raw: ...` for
/// bytes that are not a request. It answers each request `200` with its request line as
/// the body, keeping the connection open.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    /// Request heads read, bodies ended or not.
    heads: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let heads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (record, count) = (seen.clone(), heads.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(record_connection(stream, record.clone(), count.clone()));
            }
        });
        Recorder {
            addr,
            seen,
            heads,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits (bounded) until every request head read has its record: a body still
    /// arriving, or a cut the upstream has not noticed yet, is settled first.
    async fn settled(&self) {
        let deadline = Instant::now() + support::PATIENCE;
        loop {
            let records = self
                .seen
                .lock()
                .expect("seen lock")
                .iter()
                .filter(|s| !s.starts_with("raw: "))
                .count();
            let heads = self.heads.load(std::sync::atomic::Ordering::SeqCst);
            if records >= heads || Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// What it read, leaving out the test's own requests (`/up`, `/other`).
    fn seen(&self) -> Vec<String> {
        self.seen
            .lock()
            .expect("seen lock")
            .iter()
            .filter(|s| !s.starts_with("POST /up ") && !s.starts_with("GET /other"))
            .cloned()
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads requests off one upstream connection until it ends or holds something else.
async fn record_connection(
    mut stream: TcpStream,
    seen: Arc<Mutex<Vec<String>>>,
    heads: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let push = |s: String| seen.lock().expect("seen lock").push(s);
    loop {
        let Some(head_end) = fill_until(&mut stream, &mut buf, |b| find(b, b"\r\n\r\n")).await
        else {
            if !buf.is_empty() {
                push(format!("raw: {}", printable(&buf)));
            }
            return;
        };
        let head_len = head_end + 4;
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut fields);
        if !matches!(
            req.parse(&buf[..head_len]),
            Ok(httparse::Status::Complete(_))
        ) {
            push(format!("raw: {}", printable(&buf)));
            return;
        }
        let line = format!("{} {}", req.method.unwrap_or(""), req.path.unwrap_or(""));
        heads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let value = |name: &str| {
            req.headers
                .iter()
                .find(|f| f.name.eq_ignore_ascii_case(name))
                .map(|f| String::from_utf8_lossy(f.value).trim().to_ascii_lowercase())
        };
        let chunked = value("transfer-encoding").is_some_and(|te| te.ends_with("chunked"));
        let length = value("content-length").and_then(|v| v.parse::<usize>().ok());
        let close = value("connection").is_some_and(|c| c.contains("close"));
        buf.drain(..head_len);
        let body = if chunked {
            read_chunked(&mut stream, &mut buf).await
        } else {
            let n = length.unwrap_or(0);
            let read = fill_until(&mut stream, &mut buf, |b| (b.len() >= n).then_some(n)).await;
            if read.is_some() {
                buf.drain(..n);
            }
            read
        };
        match body {
            None => {
                push(format!("{line} [cut]"));
                return;
            }
            Some(0) => push(line.clone()),
            Some(n) => push(format!("{line} [{n}]")),
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{line}",
            line.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// Reads into `buf` until `done` finds what it wants; `None` at EOF or error first.
async fn fill_until(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> Option<usize>,
) -> Option<usize> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(found) = done(buf) {
            return Some(found);
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A strict chunked body (CRLF lines, hex sizes, extensions ignored, no trailers
/// expected but skipped): its payload length, `None` if the connection ended first or
/// the framing is broken.
async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut total = 0;
    loop {
        let end = fill_until(stream, buf, |b| find(b, b"\r\n")).await?;
        let line = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 2);
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            // Trailer fields, up to the empty line.
            loop {
                let end = fill_until(stream, buf, |b| find(b, b"\r\n")).await?;
                buf.drain(..end + 2);
                if end == 0 {
                    return Some(total);
                }
            }
        }
        fill_until(stream, buf, |b| (b.len() >= size + 2).then_some(0)).await?;
        if &buf[size..size + 2] != b"\r\n" {
            return None;
        }
        buf.drain(..size + 2);
        total += size;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The first bytes of `bytes`, escaped.
fn printable(bytes: &[u8]) -> String {
    bytes[..bytes.len().min(24)]
        .escape_ascii()
        .to_string()
        .replace('|', "\\x7c")
}

// ---------------------------------------------------------------------------------
// One case against one target.

/// What one target did with one case.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    /// The statuses answered, in order.
    answers: Vec<u16>,
    /// Bytes received that were not an HTTP/1 response.
    stray_bytes: usize,
    /// The last response said `connection: close`.
    last_says_close: bool,
    /// The connection was closed by the server.
    closed: bool,
    /// What the upstream read.
    upstream: Vec<String>,
    /// Another client, on new connections, got its own answer afterwards.
    others_served: bool,
    /// `cohort_upstream_errors_total`, all kinds (cohort only): hostile client bytes
    /// must never count against the upstream a canary guard judges.
    upstream_errors: u64,
}

impl Outcome {
    /// The README's cell.
    fn cell(&self) -> String {
        let mut answers: Vec<String> = self.answers.iter().map(u16::to_string).collect();
        if self.stray_bytes > 0 {
            answers.push(format!("{} bytes without a status line", self.stray_bytes));
        }
        let answered = if answers.is_empty() {
            if self.closed { "closed" } else { "no answer" }.to_owned()
        } else {
            let state = if self.closed { "closed" } else { "open" };
            format!("{}, {state}", answers.join(" + "))
        };
        let upstream = if self.upstream.is_empty() {
            "none".to_owned()
        } else {
            format!("`{}`", self.upstream.join("`, `"))
        };
        let others = if self.others_served {
            ""
        } else {
            "; another client NOT served"
        };
        format!("{answered}; upstream: {upstream}{others}")
    }
}

/// Everything a server sends until it closes (true) or, after waiting up to `first`
/// for a first byte, stays quiet for [`QUIET`] (false); bounded overall.
async fn collect(stream: &mut TcpStream, into: &mut Vec<u8>, first: Duration) -> bool {
    let deadline = Instant::now() + first + Duration::from_secs(5);
    let mut chunk = [0u8; 16 * 1024];
    let mut wait = first;
    while Instant::now() < deadline {
        let read = tokio::time::timeout(wait, stream.read(&mut chunk)).await;
        wait = QUIET;
        match read {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(n)) => into.extend_from_slice(&chunk[..n]),
        }
    }
    false
}

/// The statuses of the HTTP/1 responses in `bytes` (bodies framed by `Content-Length`,
/// chunked, or to the end; these tests send no HEAD), and how many bytes are not part
/// of one (an HTTP/0.9-style answer: a body without a status line), and whether the
/// last one said `connection: close`.
fn statuses(mut bytes: &[u8]) -> (Vec<u16>, usize, bool) {
    let mut found = Vec::new();
    let mut says_close = false;
    while bytes.starts_with(b"HTTP/1.") {
        let Some(end) = find(bytes, b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        found.push(status);
        bytes = &bytes[end + 4..];
        let field = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_ascii_lowercase())
            })
        };
        says_close = field("connection").is_some_and(|c| c.contains("close"));
        if field("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
            let Some(n) = chunked_len(bytes) else { break };
            bytes = &bytes[n..];
        } else if let Some(n) = field("content-length").and_then(|v| v.parse::<usize>().ok()) {
            bytes = &bytes[n.min(bytes.len())..];
        } else if !matches!(status, 100..=199 | 204 | 304) {
            bytes = &[];
        }
    }
    (found, bytes.len(), says_close)
}

/// The length of the chunked body at the start of `bytes`, trailers included; `None`
/// if it is not all there.
fn chunked_len(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let end = at + find(&bytes[at..], b"\r\n")?;
        let line = std::str::from_utf8(&bytes[at..end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        at = end + 2;
        if size == 0 {
            // Trailer fields, up to the empty line.
            loop {
                let end = at + find(&bytes[at..], b"\r\n")?;
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Some(at);
                }
            }
        }
        at += size + 2;
        if at > bytes.len() {
            return None;
        }
    }
}

/// Whether a new client on `addr` (through hyper's engine when `hyper`) gets the
/// answer to its own request.
async fn other_served(addr: SocketAddr, hyper: bool) -> bool {
    let mut conn = RawConn::connect(addr).await;
    if hyper {
        conn.write(UPLOAD).await;
        if conn.read_response(false).await.status != 200 {
            return false;
        }
    }
    conn.write(OTHER).await;
    let answer = conn.read_response(false).await;
    answer.status == 200 && answer.text() == "GET /other"
}

/// Sends `case` to `addr` as `target` and records what happened.
async fn attack(case: &Case, target: Target, addr: SocketAddr, upstream: &Recorder) -> Outcome {
    let mut conn = RawConn::connect(addr).await;
    if target == Target::Hyper {
        conn.write(UPLOAD).await;
        assert_eq!(conn.read_response(false).await.status, 200, "the upload");
    }
    // Everything read of the upload's response is gone: from here the stream is raw.
    let stream = &mut conn.stream;
    let mut received = Vec::new();
    // A failed write is a server that closed early: what it answered still counts.
    let _ = stream.write_all(&case.bytes).await;
    // A case that sends more later may be waiting for it (a body in progress): its
    // first answer may be none.
    let first = if case.then.is_some() {
        QUIET
    } else {
        FIRST_ANSWER
    };
    let mut closed = collect(stream, &mut received, first).await;
    if let (Some(then), false) = (case.then, closed) {
        let _ = stream.write_all(then).await;
        closed = collect(stream, &mut received, FIRST_ANSWER).await;
    }
    // Another client, while this connection is still open if it is: on cohort through
    // both engines (each has its own upstream pool), on NGINX once.
    let others_served = match target {
        Target::Nginx => other_served(addr, false).await,
        Target::Own | Target::Hyper => {
            other_served(addr, false).await && other_served(addr, true).await
        }
    };
    drop(conn);
    upstream.settled().await;
    let (answers, stray_bytes, last_says_close) = statuses(&received);
    Outcome {
        answers,
        stray_bytes,
        last_says_close,
        closed,
        upstream: upstream.seen(),
        others_served,
        upstream_errors: 0,
    }
}

/// `cohort_upstream_errors_total` of route `app`, every kind and variant.
async fn upstream_errors(cohort: &TestCohort) -> u64 {
    let text = cohort.metrics().await;
    let mut total = 0.0;
    for kind in ["connect", "timeout", "reset", "tls", "protocol"] {
        for variant in ["stable", "canary"] {
            let labels = [("route", "app"), ("variant", variant), ("kind", kind)];
            total += support::series_value(&text, "cohort_upstream_errors_total", &labels);
        }
    }
    total as u64
}

/// A cohort for one case on one engine, in front of its own [`Recorder`].
async fn cohort_for(case: &Case) -> (TestCohort, Recorder) {
    let upstream = Recorder::start().await;
    let mut route = Route::new("app")
        .host(HOST)
        .stable_urls(&[upstream.url()])
        .request_timeout("3s");
    if case.small_max_body {
        route = route.max_body("1KiB");
    }
    (
        TestCohort::start(Config::new().route(route)).await,
        upstream,
    )
}

/// The NGINX equivalent of [`cohort_for`] for every case at once: one port each, its
/// own upstream (keep-alive pool, HTTP/1.1, `Host` passed through, as cohort does), an
/// unrouted host answered 404 by a default server.
fn nginx_for(cases: &[Case], upstreams: &[Recorder]) -> Nginx {
    Nginx::start(cases.len(), |ports| {
        let mut http = String::new();
        for (i, ((case, upstream), port)) in cases.iter().zip(upstreams).zip(ports).enumerate() {
            let max_body = if case.small_max_body { "1k" } else { "10m" };
            http.push_str(&format!(
                "    upstream case{i} {{ server {addr}; keepalive 8; }}\n\
                 \x20   server {{ listen 127.0.0.1:{port} default_server; return 404; }}\n\
                 \x20   server {{\n\
                 \x20       listen 127.0.0.1:{port};\n\
                 \x20       server_name {HOST};\n\
                 \x20       client_max_body_size {max_body};\n\
                 \x20       location / {{\n\
                 \x20           proxy_pass http://case{i};\n\
                 \x20           proxy_http_version 1.1;\n\
                 \x20           proxy_set_header Connection \"\";\n\
                 \x20           proxy_set_header Host $http_host;\n\
                 \x20       }}\n\
                 \x20   }}\n",
                addr = upstream.addr,
            ));
        }
        http
    })
}

/// The three outcomes of every case.
struct Measured {
    rows: Vec<(&'static str, &'static str, [Outcome; 3])>,
    nginx: String,
}

impl Measured {
    /// The README table.
    fn table(&self) -> String {
        let mut table = format!(
            "| case | bytes (short) | cohort own engine | cohort hyper engine | NGINX {} |\n\
             | --- | --- | --- | --- | --- |\n",
            self.nginx
        );
        for (name, short, [own, hyper, nginx]) in &self.rows {
            table.push_str(&format!(
                "| {name} | {short} | {} | {} | {} |\n",
                own.cell(),
                hyper.cell(),
                nginx.cell()
            ));
        }
        table
    }
}

async fn measure() -> Measured {
    let nginx_version = nginx_version();
    let cases = Arc::new(cases());
    let mut nginx_upstreams = Vec::new();
    for _ in cases.iter() {
        nginx_upstreams.push(Recorder::start().await);
    }
    let nginx = nginx_for(&cases, &nginx_upstreams);
    let nginx_ports = nginx_ports(&nginx, cases.len());
    let nginx_upstreams = Arc::new(nginx_upstreams);
    let at_once = Arc::new(tokio::sync::Semaphore::new(RUNS_AT_ONCE));
    let mut runs = tokio::task::JoinSet::new();
    for i in 0..cases.len() {
        for target in [Target::Own, Target::Hyper, Target::Nginx] {
            let cases = cases.clone();
            let nginx_upstreams = nginx_upstreams.clone();
            let nginx_port = nginx_ports[i];
            let at_once = at_once.clone();
            runs.spawn(async move {
                let _turn = at_once.acquire_owned().await.expect("semaphore");
                let case = &cases[i];
                let outcome = match target {
                    Target::Nginx => {
                        let addr = SocketAddr::from(([127, 0, 0, 1], nginx_port));
                        attack(case, target, addr, &nginx_upstreams[i]).await
                    }
                    Target::Own | Target::Hyper => {
                        let (cohort, upstream) = cohort_for(case).await;
                        let mut outcome = attack(case, target, cohort.proxy, &upstream).await;
                        outcome.upstream_errors = upstream_errors(&cohort).await;
                        cohort.shutdown().await;
                        outcome
                    }
                };
                (i, target, outcome)
            });
        }
    }
    let mut outcomes: Vec<[Option<Outcome>; 3]> = vec![[None, None, None]; cases.len()];
    while let Some(done) = runs.join_next().await {
        let (i, target, outcome) = done.expect("a run panicked");
        outcomes[i][target as usize] = Some(outcome);
    }
    drop(nginx);
    let rows = cases
        .iter()
        .zip(outcomes)
        .map(|(case, [own, hyper, nginx])| {
            let all = [own, hyper, nginx].map(|o| o.expect("every run reports"));
            (case.name, case.short, all)
        })
        .collect();
    Measured {
        rows,
        nginx: nginx_version,
    }
}

/// The ports [`nginx_for`] listens on, in case order, read back from its config.
fn nginx_ports(nginx: &Nginx, n: usize) -> Vec<u16> {
    let conf = std::fs::read_to_string(nginx.dir().join("nginx.conf")).expect("nginx.conf");
    let ports: Vec<u16> = conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("listen 127.0.0.1:"))
        .filter(|l| l.ends_with(';'))
        .filter_map(|l| l.trim_end_matches(';').parse().ok())
        .collect();
    assert_eq!(ports.len(), n, "one routed listener per case in {conf}");
    ports
}

/// The table in README.md's `### Hostile HTTP/1 input (cohort vs NGINX)` subsection.
fn readme_table() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("\n### Hostile HTTP/1 input (cohort vs NGINX)\n")
        .nth(1)
        .map(|rest| rest.split("\n#").next().unwrap_or(rest))
        .unwrap_or("");
    section
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// One test at a time: the other's cohorts would count in the RSS one measures.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every case against both engines and NGINX: cohort's answers are the spec, NGINX's
/// are measured, and the README's table is what was measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_http1_bytes_against_cohort_and_nginx() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let measured = measure().await;
    let specs: Vec<Spec> = cases().into_iter().map(|c| c.spec).collect();
    let mut failures = Vec::new();
    // NGINX is measured, not judged: its column only has to match the README.
    for ((name, _, [own, hyper, _nginx]), spec) in measured.rows.iter().zip(&specs) {
        for (engine, outcome) in [("own", own), ("hyper", hyper)] {
            let mut fail = |why: String| failures.push(format!("{name} ({engine}): {why}"));
            if outcome
                .upstream
                .iter()
                .any(|r| r.starts_with("GET /smuggled"))
            {
                fail(format!(
                    "the upstream read the smuggled request: {outcome:?}"
                ));
            }
            if outcome.stray_bytes != 0 {
                fail(format!(
                    "{} bytes were not an HTTP/1 response",
                    outcome.stray_bytes
                ));
            }
            if outcome.upstream_errors != 0 {
                fail(format!(
                    "counted {} upstream errors for the client's bytes",
                    outcome.upstream_errors
                ));
            }
            if !outcome.others_served {
                fail("another client was not served its own answer".to_owned());
            }
            match spec {
                Spec::Reject(status) => {
                    if outcome.answers != [*status] || !outcome.closed {
                        fail(format!("want {status} and close, got {}", outcome.cell()));
                    }
                    if !outcome.last_says_close {
                        fail("the refusal did not say `connection: close`".to_owned());
                    }
                    if !outcome.upstream.is_empty() {
                        fail(format!("want nothing upstream, got {:?}", outcome.upstream));
                    }
                }
                Spec::Serve {
                    answers,
                    upstream,
                    closed,
                } => {
                    if outcome.answers != *answers || outcome.closed != *closed {
                        fail(format!(
                            "want {answers:?} and closed = {closed}, got {}",
                            outcome.cell()
                        ));
                    }
                    if outcome.upstream != *upstream {
                        fail(format!(
                            "want upstream {upstream:?}, got {:?}",
                            outcome.upstream
                        ));
                    }
                }
            }
        }
        if own != hyper {
            failures.push(format!(
                "{name}: the engines disagree: own {} / hyper {}",
                own.cell(),
                hyper.cell()
            ));
        }
    }
    let table = measured.table();
    if readme_table() != table {
        failures.push(format!(
            "README.md's table under `### Hostile HTTP/1 input (cohort vs NGINX)` is not \
             what was measured; the measured table:\n\n{table}"
        ));
    }
    assert!(
        failures.is_empty(),
        "{}\n\nmeasured in {:?}:\n\n{table}",
        failures.join("\n"),
        started.elapsed()
    );
}

/// Every case, over and over on 2,000 connections (both engines, 32 at a time): the
/// process's resident memory stays bounded, cohort's open-connection gauge returns to
/// 0, and a normal request is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_hostile_connections_leave_nothing_behind() {
    const CONNECTIONS: usize = 2000;
    const AT_ONCE: usize = 32;
    let _alone = ONE_AT_A_TIME.lock().await;
    let upstream = Recorder::start().await;
    let route = Route::new("app")
        .host(HOST)
        .stable_urls(&[upstream.url()])
        .request_timeout("2s");
    let cohort = TestCohort::start(Config::new().route(route)).await;
    let proxy = cohort.proxy;
    let cases: Arc<Vec<Vec<u8>>> = Arc::new(
        cases()
            .into_iter()
            .map(|c| [c.bytes, c.then.unwrap_or_default().to_vec()].concat())
            .collect(),
    );
    let round = |from: usize, to: usize| {
        let cases = cases.clone();
        async move {
            let mut runs = tokio::task::JoinSet::new();
            for n in from..to {
                if runs.len() >= AT_ONCE {
                    if let Some(done) = runs.join_next().await {
                        done.expect("a connection panicked");
                    }
                }
                let cases = cases.clone();
                runs.spawn(async move {
                    let bytes = &cases[n % cases.len()];
                    let mut stream = TcpStream::connect(proxy).await.expect("connect");
                    if (n / cases.len()) % 2 == 1 {
                        let _ = stream.write_all(UPLOAD).await;
                    }
                    let _ = stream.write_all(bytes).await;
                    // Read what comes for a moment, then hang up whatever the state.
                    let mut sink = [0u8; 16 * 1024];
                    let until = tokio::time::Instant::now() + Duration::from_millis(150);
                    while let Ok(Ok(n)) =
                        tokio::time::timeout_at(until, stream.read(&mut sink)).await
                    {
                        if n == 0 {
                            break;
                        }
                    }
                });
            }
            while let Some(r) = runs.join_next().await {
                r.expect("a connection panicked");
            }
        }
    };
    let pid = std::process::id();
    // A first round warms allocator pools, upstream pools and buffers.
    round(0, 200).await;
    let before = support::rss_of(pid);
    let started = Instant::now();
    round(200, 200 + CONNECTIONS).await;
    let elapsed = started.elapsed();
    let after = support::rss_of(pid);
    assert_eq!(
        cohort
            .series_eventually("cohort_connections_open", &[], 0.0)
            .await,
        0.0,
        "every connection closed"
    );
    let grown = after.saturating_sub(before);
    eprintln!(
        "{CONNECTIONS} hostile connections in {elapsed:?}: RSS {} KiB -> {} KiB (+{} KiB)",
        before / 1024,
        after / 1024,
        grown / 1024
    );
    assert!(
        grown < 16 * 1024 * 1024,
        "RSS grew by {} KiB over {CONNECTIONS} connections",
        grown / 1024
    );
    assert!(
        upstream
            .seen()
            .iter()
            .all(|r| !r.starts_with("GET /smuggled")),
        "the upstream read a smuggled request"
    );
    assert!(other_served(proxy, false).await && other_served(proxy, true).await);
    cohort.shutdown().await;
}

/// A malformed chunked body is the client's fault: 400 with `connection: close`,
/// counted under its route and variant as a 400, and never as an upstream error (a
/// client could otherwise push a canary's error ratio up and trip its guard).
#[tokio::test]
async fn a_malformed_chunked_body_counts_as_the_routes_400_not_an_upstream_error() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let upstream = Recorder::start().await;
    let route = Route::new("app").host(HOST).stable_urls(&[upstream.url()]);
    let cohort = TestCohort::start(Config::new().route(route)).await;
    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(b"POST /bad HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
        .await;
    let answer = conn.read_response(false).await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert_eq!(answer.text(), "invalid request body framing\n");
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(conn.closed_within(Duration::from_secs(2)).await);
    let labels = [("route", "app"), ("variant", "stable"), ("status", "400")];
    assert_eq!(
        cohort
            .series_eventually("cohort_requests_total", &labels, 1.0)
            .await,
        1.0
    );
    assert_eq!(upstream_errors(&cohort).await, 0);
    cohort.shutdown().await;
}

/// A client that hangs up in the middle of a streamed body (chunked, or a
/// `Content-Length` larger than cohort's own path buffers) has left: counted as 499
/// under its route and variant, never as an upstream error.
#[tokio::test]
async fn a_client_gone_mid_body_counts_as_499_not_an_upstream_error() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let upstream = Recorder::start().await;
    let route = Route::new("app").host(HOST).stable_urls(&[upstream.url()]);
    let cohort = TestCohort::start(Config::new().route(route)).await;
    let heads = [
        "POST /gone HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"
            .to_owned(),
        format!(
            "POST /gone HTTP/1.1\r\nHost: app.example\r\nContent-Length: {}\r\n\r\nab",
            1 << 20
        ),
    ];
    for (i, head) in heads.iter().enumerate() {
        let mut conn = RawConn::connect(cohort.proxy).await;
        conn.write(head.as_bytes()).await;
        // The upstream has the request (head and the first bytes) before the client goes.
        support::eventually("the upstream reads the head", || {
            upstream.heads.load(std::sync::atomic::Ordering::SeqCst) > i
        })
        .await;
        drop(conn);
        let labels = [("route", "app"), ("variant", "stable"), ("status", "499")];
        let want = (i + 1) as f64;
        assert_eq!(
            cohort
                .series_eventually("cohort_requests_total", &labels, want)
                .await,
            want,
            "{head:?}\n{}",
            cohort.metrics().await
        );
        assert_eq!(upstream_errors(&cohort).await, 0, "{head:?}");
    }
    cohort.shutdown().await;
}
