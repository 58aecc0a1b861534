//! HTTP/1.1 on the wire, both hops: keep-alive, pipelining, framing (Content-Length,
//! chunked, close-delimited, bodiless statuses, HEAD), interim responses, upgrades,
//! header hygiene and limits, and the stale pooled connection. Every client here
//! writes and reads raw bytes, and the upstreams that need exact framing are written
//! at the byte level too, so nothing normalises what crosses cohort.
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{
    key_in, pattern_byte, user_route, Config, FakeUpstream, PatternCheck, RawConn, RawResponse,
    RawUpstream, Reply, Route, TestCohort, PATIENCE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REQUESTS: &str = "cohort_requests_total";
const ERRORS: &str = "cohort_upstream_errors_total";

fn errors(kind: &str) -> [(&str, &str); 3] {
    [("route", "app"), ("variant", "stable"), ("kind", kind)]
}

fn requests(status: &str) -> [(&str, &str); 3] {
    [("route", "app"), ("variant", "stable"), ("status", status)]
}

/// A route named `app` whose only variant is one upstream URL (canary at 0 %).
fn route_to(url: &str) -> Route {
    Route::new("app").stable_urls(&[url])
}

/// A GET on the keep-alive connection, as a client library would write it.
fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: app.example\r\n\r\n")
}

// ---------------------------------------------------------------------------------------
// An upstream written at the byte level
// ---------------------------------------------------------------------------------------

/// What a [`WireUpstream`] does once it wrote a reply.
#[derive(Debug, Clone, Copy)]
enum Then {
    /// Reads the next request on the same connection.
    KeepOpen,
    /// Closes the connection (FIN) after this long, without a word about it before.
    Close(Duration),
}

/// One request as a [`WireUpstream`] read it off the wire.
#[derive(Debug, Clone)]
struct WireRequest {
    /// The request line and headers, CRLFs included.
    head: String,
    /// The body, de-chunked if it came chunked.
    body: Vec<u8>,
}

impl WireRequest {
    /// `METHOD target` of the request line.
    fn line(&self) -> String {
        self.head.split(' ').take(2).collect::<Vec<_>>().join(" ")
    }

    fn target(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }

    fn method(&self) -> &str {
        self.head.split(' ').next().unwrap_or("")
    }
}

type Script = dyn Fn(&WireRequest) -> (Vec<u8>, Then) + Send + Sync;

/// An HTTP/1.1 server that reads requests one after the other on each connection
/// (bodies by Content-Length or chunked) and answers each with whatever bytes its
/// script returns, verbatim: any framing, any headers, any misbehaviour.
struct WireUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<WireRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WireUpstream {
    async fn start(
        script: impl Fn(&WireRequest) -> (Vec<u8>, Then) + Send + Sync + 'static,
    ) -> WireUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let task = {
            let (accepted, requests) = (accepted.clone(), requests.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve_wire(stream, script.clone(), requests.clone()));
                }
            })
        };
        WireUpstream {
            addr,
            accepted,
            requests,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// TCP connections accepted so far.
    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<WireRequest> {
        self.requests.lock().expect("requests lock").clone()
    }
}

impl Drop for WireUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_wire(
    mut stream: TcpStream,
    script: Arc<Script>,
    requests: Arc<Mutex<Vec<WireRequest>>>,
) {
    let mut buf = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut buf).await {
        requests
            .lock()
            .expect("requests lock")
            .push(request.clone());
        let (reply, then) = script(&request);
        if stream.write_all(&reply).await.is_err() {
            return;
        }
        if let Then::Close(after) = then {
            tokio::time::sleep(after).await;
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Reads more bytes into `buf`; false on EOF or error.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Takes one CRLF-terminated line off `buf` (without the CRLF).
async fn take_line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 2);
            return Some(line);
        }
        if !read_more(stream, buf).await {
            return None;
        }
    }
}

/// Takes exactly `n` bytes off `buf`.
async fn take_bytes(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
    while buf.len() < n {
        if !read_more(stream, buf).await {
            return None;
        }
    }
    Some(buf.drain(..n).collect())
}

/// The first value of `name` in a message head, any case.
fn head_header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<WireRequest> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if !read_more(stream, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let mut body = Vec::new();
    let chunked = head_header(&head, "transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let size_line = take_line(stream, buf).await?;
            let size =
                usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16).ok()?;
            if size == 0 {
                // Trailer fields, up to the empty line.
                while !take_line(stream, buf).await?.is_empty() {}
                break;
            }
            body.extend(take_bytes(stream, buf, size).await?);
            take_bytes(stream, buf, 2).await?;
        }
    } else if let Some(len) = head_header(&head, "content-length") {
        body = take_bytes(stream, buf, len.parse().ok()?).await?;
    }
    Some(WireRequest { head, body })
}

/// A `200` with a Content-Length body.
fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers every request with its own `METHOD target`, keeping the connection open.
fn echo(req: &WireRequest) -> (Vec<u8>, Then) {
    (ok(&req.line()), Then::KeepOpen)
}

// ---------------------------------------------------------------------------------------
// Keep-alive and pipelining on the client connection
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn keep_alive_requests_are_answered_in_order_over_one_upstream_connection() {
    let upstream = WireUpstream::start(echo).await;
    let cohort = TestCohort::start(route_to(&upstream.url())).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    for n in 0..6 {
        conn.write(get(&format!("/r{n}?n={n}")).as_bytes()).await;
        let answer = conn.read_response(false).await;
        assert_eq!(answer.status, 200, "request {n}: {}", answer.text());
        assert_eq!(answer.text(), format!("GET /r{n}?n={n}"));
        let length = answer.body.len().to_string();
        assert_eq!(answer.header("content-length"), Some(length.as_str()));
    }
    let seen: Vec<String> = upstream.requests().iter().map(WireRequest::line).collect();
    let want: Vec<String> = (0..6).map(|n| format!("GET /r{n}?n={n}")).collect();
    assert_eq!(seen, want, "the upstream saw each request once, in order");
    assert_eq!(
        upstream.connections(),
        1,
        "six sequential requests share one kept-alive upstream connection"
    );
    cohort.shutdown().await;
}

// The idle and header timeouts (`listen.idle_timeout`, `listen.header_timeout`) are
// pinned on both engines in `tests/limits.rs`; a stalled head, once closed without a
// word, is answered 408 there.

#[tokio::test]
async fn pipelined_requests_in_one_write_are_answered_in_order_on_the_same_connection() {
    let upstream = WireUpstream::start(echo).await;
    let cohort = TestCohort::start(route_to(&upstream.url())).await;
    let mut conn = RawConn::connect(cohort.proxy).await;

    conn.write(format!("{}{}", get("/one"), get("/two")).as_bytes())
        .await;
    for want in ["GET /one", "GET /two"] {
        let answer = conn.read_response(false).await;
        assert_eq!((answer.status, answer.text().as_str()), (200, want));
    }

    // Three more in one write, a POST with a body in the middle of them.
    conn.write(
        format!(
            "{}POST /four HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\n\r\nhello{}",
            get("/three"),
            get("/five")
        )
        .as_bytes(),
    )
    .await;
    for want in ["GET /three", "POST /four", "GET /five"] {
        let answer = conn.read_response(false).await;
        assert_eq!((answer.status, answer.text().as_str()), (200, want));
    }
    let seen = upstream.requests();
    let lines: Vec<String> = seen.iter().map(WireRequest::line).collect();
    assert_eq!(
        lines,
        [
            "GET /one",
            "GET /two",
            "GET /three",
            "POST /four",
            "GET /five"
        ]
    );
    assert_eq!(seen[3].body, b"hello");
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_client_asking_for_connection_close_gets_it_and_the_connection_ends() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(b"GET /bye HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n")
        .await;
    let answer = conn.read_response(false).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "stable"));
    assert!(
        answer
            .all("connection")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("close")),
        "{:?}",
        answer.headers
    );
    assert_eq!(
        conn.read_until_close().await,
        b"",
        "nothing follows the response but the close"
    );

    // The client's `Connection: close` is about its own hop: the upstream never saw
    // it, and cohort keeps its upstream connection for the next client.
    assert!(stable.last_seen().headers.get("connection").is_none());
    let mut next = RawConn::connect(cohort.proxy).await;
    next.write(get("/next").as_bytes()).await;
    assert_eq!(next.read_response(false).await.status, 200);
    assert_eq!(stable.connections(), 1);
    cohort.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Response framing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn chunked_upstream_responses_arrive_complete_and_the_connection_goes_on() {
    let big = "x".repeat(20_000);
    let multi_body = format!("hello abcdefghijklmnopqrstuvwxyz{big}");
    let upstream = WireUpstream::start({
        let big = big.clone();
        move |req| {
            let reply = match req.target() {
                "/single" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                              5\r\nhello\r\n0\r\n\r\n"
                    .to_owned(),
                // Several chunks: an extension, an upper-case size, a large one.
                "/multi" => format!(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                     5\r\nhello\r\n1;name=value\r\n \r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n\
                     {:x}\r\n{big}\r\n0\r\n\r\n",
                    big.len()
                ),
                _ => String::from_utf8(ok("plain")).expect("ascii"),
            };
            (reply.into_bytes(), Then::KeepOpen)
        }
    })
    .await;
    let cohort = TestCohort::start(route_to(&upstream.url())).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(get("/single").as_bytes()).await;
    let single = conn.read_response(false).await;
    assert_eq!((single.status, single.text().as_str()), (200, "hello"));

    conn.write(get("/multi").as_bytes()).await;
    let multi = conn.read_response(false).await;
    assert_eq!(multi.status, 200);
    assert_eq!(multi.text(), multi_body);

    conn.write(get("/plain").as_bytes()).await;
    let plain = conn.read_response(false).await;
    assert_eq!((plain.status, plain.text().as_str()), (200, "plain"));
    assert_eq!(
        upstream.connections(),
        1,
        "each chunked body was read to its exact end, so the connection was reused"
    );
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_close_delimited_upstream_response_reaches_the_client_whole() {
    let upstream = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nthe whole body, ended by the close",
    )
    .await;
    let cohort = TestCohort::start(route_to(&upstream.url())).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(get("/eof").as_bytes()).await;
    let answer = conn.read_response(false).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "the whole body, ended by the close");
    let framed = answer.header("content-length").is_some()
        || answer
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if framed {
        // Re-framed for the client: the client connection can go on.
        conn.write(get("/eof-again").as_bytes()).await;
        let again = conn.read_response(false).await;
        assert_eq!(again.text(), "the whole body, ended by the close");
    } else {
        // Close-delimited to the client too: `read_response` read up to the close.
        assert_eq!(conn.read_until_close().await, b"");
    }
    assert_eq!(
        cohort
            .series_eventually(REQUESTS, &requests("200"), if framed { 2.0 } else { 1.0 })
            .await,
        if framed { 2.0 } else { 1.0 },
        "an upstream close that ends the body is no error"
    );
    assert_eq!(cohort.series(ERRORS, &errors("reset")).await, 0.0);
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_head_response_has_the_upstreams_content_length_and_no_body() {
    let upstream = WireUpstream::start(|req| {
        let reply = if req.method() == "HEAD" {
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n".to_vec()
        } else {
            ok("hello")
        };
        (reply, Then::KeepOpen)
    })
    .await;
    let cohort = TestCohort::start(route_to(&upstream.url())).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(b"HEAD /file HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .await;
    let head = conn.read_response(true).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("5"));
    assert!(head.header("transfer-encoding").is_none());

    // Had any body bytes followed the HEAD answer, this response would not parse.
    conn.write(get("/file").as_bytes()).await;
    let full = conn.read_response(false).await;
    assert_eq!((full.status, full.text().as_str()), (200, "hello"));
    let methods: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.method().to_owned())
        .collect();
    assert_eq!(methods, ["HEAD", "GET"]);
    assert_eq!(
        upstream.connections(),
        1,
        "cohort did not wait for body bytes after the HEAD answer"
    );
    cohort.shutdown().await;
}

#[tokio::test]
async fn no_content_and_not_modified_carry_no_body_and_the_connection_stays_usable() {
    let upstream = WireUpstream::start(|req| {
        let reply = match req.target() {
            "/204" => b"HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n".to_vec(),
            "/304" => b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n".to_vec(),
            // The length of the representation the client already has: no body follows.
            "/304-with-length" => {
                b"HTTP/1.1 304 Not Modified\r\nETag: \"v2\"\r\nContent-Length: 5\r\n\r\n".to_vec()
            }
            _ => ok("after"),
        };
        (reply, Then::KeepOpen)
    })
    .await;
    let cohort = TestCohort::start(route_to(&upstream.url())).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    for (path, status) in [("/204", 204), ("/304", 304), ("/304-with-length", 304)] {
        conn.write(get(path).as_bytes()).await;
        let answer = conn.read_response(false).await;
        assert_eq!(answer.status, status, "{path}");
        assert!(
            answer.header("transfer-encoding").is_none(),
            "{path}: {:?}",
            answer.headers
        );
        // The next response on the connection must start right after this head.
        conn.write(get("/after").as_bytes()).await;
        let after = conn.read_response(false).await;
        assert_eq!(
            (after.status, after.text().as_str()),
            (200, "after"),
            "after {path}"
        );
    }
    assert_eq!(
        upstream.connections(),
        1,
        "a bodiless response leaves the upstream connection reusable"
    );
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_three_megabyte_content_length_body_arrives_byte_exact() {
    const LEN: u64 = 3 * 1024 * 1024;
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    stable.set_reply(Reply::Pattern { len: LEN });
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(get("/big").as_bytes()).await;
    let answer = conn.read_response(false).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-length"), Some("3145728"));
    let mut check = PatternCheck::default();
    check.feed(&answer.body);
    assert_eq!(check.offset, LEN);
    assert!(
        check.ok,
        "the body bytes differ from what the upstream sent"
    );
    assert_eq!(answer.body[LEN as usize - 1], pattern_byte(LEN - 1));

    stable.set_reply(Reply::Name);
    conn.write(get("/small").as_bytes()).await;
    let next = conn.read_response(false).await;
    assert_eq!((next.status, next.text().as_str()), (200, "stable"));
    cohort.shutdown().await;
}

#[tokio::test]
async fn an_upstream_body_shorter_than_its_content_length_cuts_the_client_connection() {
    let upstream =
        RawUpstream::start(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").await;
    let cohort = TestCohort::start(route_to(&upstream.url())).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(get("/short").as_bytes()).await;
    let (status, headers) = conn.read_head().await;
    assert_eq!(status, 200, "the head had already left");
    let rest = conn.read_until_close().await;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    match header("content-length") {
        Some(len) => {
            assert_eq!(len, "100");
            assert_eq!(
                rest, b"0123456789",
                "the client got what there was, then the cut"
            );
        }
        None => {
            assert!(
                header("transfer-encoding").is_some_and(|te| te.contains("chunked")),
                "{headers:?}"
            );
            assert!(
                !rest.ends_with(b"0\r\n\r\n"),
                "a cut chunked body must not end cleanly: {:?}",
                String::from_utf8_lossy(&rest)
            );
        }
    }
    assert_eq!(
        cohort
            .series_eventually(ERRORS, &errors("reset"), 1.0)
            .await,
        1.0
    );
    assert_eq!(
        cohort
            .series_eventually(REQUESTS, &requests("200"), 1.0)
            .await,
        1.0,
        "a cut stream keeps its status"
    );
    cohort.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Header hygiene on the wire
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn hop_by_hop_headers_of_a_response_stop_at_cohort_and_end_to_end_ones_pass() {
    let upstream = WireUpstream::start(|_| {
        (
            b"HTTP/1.1 200 OK\r\n\
              Content-Length: 2\r\n\
              Connection: x-private\r\n\
              X-Private: 1\r\n\
              Keep-Alive: timeout=5\r\n\
              Proxy-Connection: keep-alive\r\n\
              Upgrade: foo\r\n\
              x-end: kept\r\n\
              \r\n\
              ok"
            .to_vec(),
            Then::KeepOpen,
        )
    })
    .await;
    let cohort = TestCohort::start(route_to(&upstream.url())).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(get("/").as_bytes()).await;
    let answer = conn.read_response(false).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "ok"));
    for name in ["x-private", "keep-alive", "proxy-connection", "upgrade"] {
        assert!(
            answer.header(name).is_none(),
            "{name} reached the client: {:?}",
            answer.headers
        );
    }
    // cohort may speak for its own hop, never repeat the upstream's.
    for value in answer.all("connection") {
        assert!(
            value.eq_ignore_ascii_case("keep-alive") || value.eq_ignore_ascii_case("close"),
            "connection: {value}"
        );
    }
    assert_eq!(answer.all("x-end"), ["kept"]);
    assert_eq!(answer.all("x-cohort-variant"), ["stable"]);
    cohort.shutdown().await;
}

#[tokio::test]
async fn the_upstream_gets_a_clean_forwarded_request_with_target_method_and_body_unchanged() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(
        b"GET /a/b?x=1&y=%20 HTTP/1.1\r\n\
          Host: App.Example.com:8080\r\n\
          Connection: X-Named-Hop\r\n\
          X-Named-Hop: 1\r\n\
          Keep-Alive: timeout=5\r\n\
          Proxy-Connection: keep-alive\r\n\
          TE: trailers\r\n\
          Trailer: x-sum\r\n\
          Upgrade: h2c\r\n\
          Proxy-Authorization: Basic YTpi\r\n\
          X-Forwarded-For: 203.0.113.1\r\n\
          x-forwarded-for: 198.51.100.2\r\n\
          X-Forwarded-Proto: https\r\n\
          X-Forwarded-Host: spoofed.example\r\n\
          X-Cohort-Variant: canary\r\n\
          X-End: kept\r\n\
          \r\n",
    )
    .await;
    let answer = conn.read_response(false).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "stable"));

    let seen = stable.last_seen();
    assert_eq!(seen.method, "GET");
    assert_eq!(
        seen.uri, "/a/b?x=1&y=%20",
        "the target goes upstream unchanged"
    );
    for name in [
        "connection",
        "x-named-hop",
        "keep-alive",
        "proxy-connection",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "transfer-encoding",
    ] {
        assert!(
            seen.headers.get(name).is_none(),
            "{name} reached the upstream"
        );
    }
    assert_eq!(seen.one("te"), Some("trailers"));
    assert_eq!(seen.one("host"), Some("App.Example.com:8080"));
    assert_eq!(
        seen.all("x-forwarded-for"),
        ["203.0.113.1, 198.51.100.2, 127.0.0.1"],
        "folded into one line, the peer appended"
    );
    assert_eq!(seen.one("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.one("x-forwarded-host"), Some("App.Example.com:8080"));
    assert_eq!(
        seen.one("x-cohort-variant"),
        Some("stable"),
        "the decision replaces what the client claimed"
    );
    assert_eq!(seen.one("x-end"), Some("kept"));

    // Other methods on the same connection, one with a Content-Length body.
    conn.write(
        b"PUT /items/7?v=2 HTTP/1.1\r\nHost: app.example\r\nContent-Length: 13\r\n\r\nexactly this.",
    )
    .await;
    assert_eq!(conn.read_response(false).await.status, 200);
    let put = stable.last_seen();
    assert_eq!(
        (put.method.as_str(), put.uri.as_str()),
        ("PUT", "/items/7?v=2")
    );
    assert_eq!(&put.body[..], b"exactly this.");
    assert_eq!(put.body_len, 13);
    assert_eq!(put.one("content-length"), Some("13"));
    assert!(put.headers.get("transfer-encoding").is_none());

    for method in ["DELETE", "OPTIONS"] {
        conn.write(format!("{method} /items/7 HTTP/1.1\r\nHost: app.example\r\n\r\n").as_bytes())
            .await;
        assert_eq!(conn.read_response(false).await.status, 200, "{method}");
        let seen = stable.last_seen();
        assert_eq!(
            (seen.method.as_str(), seen.uri.as_str()),
            (method, "/items/7")
        );
        assert_eq!(seen.body_len, 0);
    }
    assert_eq!(stable.hits(), 4);
    assert_eq!(canary.hits(), 0);
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_chunked_upload_after_two_gets_arrives_whole_and_the_connection_goes_on() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    for path in ["/first", "/second"] {
        conn.write(get(path).as_bytes()).await;
        assert_eq!(conn.read_response(false).await.status, 200, "{path}");
    }

    // 100,000 pattern bytes in chunks of uneven sizes, with an extension on one.
    let body: Vec<u8> = (0..100_000u64).map(pattern_byte).collect();
    let mut wire =
        b"POST /upload HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    let mut offset = 0;
    for (i, size) in [1usize, 7, 4096, 16_384, 65_536].iter().cycle().enumerate() {
        if offset == body.len() {
            break;
        }
        let size = (*size).min(body.len() - offset);
        let extension = if i == 2 { ";ext=1" } else { "" };
        wire.extend_from_slice(format!("{size:X}{extension}\r\n").as_bytes());
        wire.extend_from_slice(&body[offset..offset + size]);
        wire.extend_from_slice(b"\r\n");
        offset += size;
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    conn.write(&wire).await;
    let answer = conn.read_response(false).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "stable"));
    let seen = stable.last_seen();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body_len, 100_000);
    assert!(seen.body_is_pattern, "the upload arrived altered");

    conn.write(get("/after").as_bytes()).await;
    let after = conn.read_response(false).await;
    assert_eq!((after.status, after.text().as_str()), (200, "stable"));
    assert_eq!(stable.last_seen().uri, "/after");
    assert_eq!(stable.hits(), 4);
    cohort.shutdown().await;
}

#[tokio::test]
async fn twenty_kilobytes_of_request_headers_are_proxied_whole() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;

    let cookie = format!("session={}", "c".repeat(12_000));
    let mut request =
        format!("GET /big-head HTTP/1.1\r\nHost: app.example\r\nCookie: {cookie}\r\n");
    for n in 0..40 {
        request.push_str(&format!("X-Filler-{n}: {}\r\n", "f".repeat(200)));
    }
    request.push_str("\r\n");
    assert!(request.len() > 20_000, "{}", request.len());

    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(request.as_bytes()).await;
    let answer = conn.read_response(false).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "stable"));
    let seen = stable.last_seen();
    assert_eq!(seen.one("cookie"), Some(cookie.as_str()));
    assert_eq!(seen.one("x-filler-39").map(str::len), Some(200));
    cohort.shutdown().await;
}

/// Sends `request` while reading, so a server that answers before it has read
/// everything (and closes) cannot fail the write; returns the status of the answer.
async fn status_of_a_refusal(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.split();
    let read_status_line = async {
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while !got.windows(2).any(|w| w == b"\r\n") {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        got
    };
    let send = async {
        // A server refusing early may close before taking it all; that is its right.
        let _ = writer.write_all(request).await;
    };
    let (_, status_line) =
        tokio::time::timeout(PATIENCE, async { tokio::join!(send, read_status_line) })
            .await
            .expect("no answer in time");
    let text = String::from_utf8_lossy(&status_line).into_owned();
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"))
}

/// A request whose head alone could exhaust cohort's memory is refused by cohort
/// itself: the upstream is never even connected to.
#[tokio::test]
async fn a_request_head_beyond_the_limit_is_refused_without_touching_the_upstream() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;

    let request = format!(
        "GET /huge HTTP/1.1\r\nHost: app.example\r\nX-Huge: {}\r\n\r\n",
        "h".repeat(512 * 1024)
    );
    let status = status_of_a_refusal(cohort.proxy, request.as_bytes()).await;
    assert!(status == 431 || status == 400, "status {status}");
    assert_eq!(stable.connections() + canary.connections(), 0);
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_request_with_a_hundred_kilobyte_header_line_is_refused_before_any_upstream() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;

    let request = format!(
        "GET /huge HTTP/1.1\r\nHost: app.example\r\nX-Huge: {}\r\n\r\n",
        "h".repeat(100 * 1024)
    );
    let status = status_of_a_refusal(cohort.proxy, request.as_bytes()).await;
    assert!(status == 431 || status == 400, "status {status}");
    assert_eq!(stable.hits() + canary.hits(), 0);
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_body_arriving_after_its_head_is_waited_for_and_forwarded_whole() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;

    let body = "x".repeat(10_000);
    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(
        format!(
            "POST /upload HTTP/1.1\r\nHost: app.example\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.write(&body.as_bytes()[..4_000]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.write(&body.as_bytes()[4_000..]).await;
    let answer = conn.read_response(false).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = stable.last_seen();
    assert_eq!((seen.method.as_str(), seen.body_len), ("POST", 10_000));
    assert_eq!(&seen.body[..], body.as_bytes());

    // Its duration runs from the head's arrival (DESIGN §1.8), so it holds both 100 ms
    // waits for the body (samples are folded into the histogram every 250 ms).
    let labels = [("route", "app"), ("variant", "stable")];
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut sum = 0.0;
    while sum < 0.15 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        sum = cohort
            .series("cohort_request_duration_seconds_sum", &labels)
            .await;
    }
    assert!(sum >= 0.15, "duration sum {sum} s");

    // The connection goes on.
    conn.write(get("/after").as_bytes()).await;
    assert_eq!(conn.read_response(false).await.status, 200);
    cohort.shutdown().await;
}

/// A client still sending when cohort answers and closes (a rejected head followed by a
/// large body) must still read the answer: cohort drains before it closes, instead of
/// closing with unread bytes, which makes the kernel reset the connection and throw away
/// the response the client has not read yet.
#[tokio::test]
async fn a_client_still_sending_when_cohort_closes_reads_the_whole_answer() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;

    let stream = TcpStream::connect(cohort.proxy).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        let mut junk = b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n".to_vec();
        junk.resize(4 * 1024 * 1024, b'x');
        // cohort stops parsing after the head; the rest may or may not be taken.
        let _ = writer.write_all(&junk).await;
        writer
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, reader.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        matches!(read, Ok(Ok(_))),
        "reading the answer failed: {read:?}; got {text:?}"
    );
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.ends_with("invalid HTTP/1.1 request\n"), "{text}");
    drop(sender.await);
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_malformed_request_gets_400_is_counted_unrouted_and_ends_the_connection() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(b"GET / HTTP/1.1\r\nHost: app.example\r\nBad Header Name: x\r\n\r\n")
        .await;
    let answer = conn.read_response(false).await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert_eq!(answer.header("connection"), Some("close"));
    let rest = conn.read_until_close().await;
    assert!(rest.is_empty(), "nothing follows the 400: {rest:?}");
    assert_eq!(
        cohort
            .series_eventually("cohort_unrouted_requests_total", &[("status", "400")], 1.0)
            .await,
        1.0
    );
    assert_eq!(stable.hits() + canary.hits(), 0);
    cohort.shutdown().await;
}

/// A connection cohort handed to hyper (here after a chunked upload) is parsed by hyper
/// from then on; what hyper rejects is counted like what cohort's own path rejects.
#[tokio::test]
async fn a_request_hyper_cannot_parse_is_counted_unrouted_with_its_status() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;
    let upload = "POST /up HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let too_many_fields: String = (0..120).map(|i| format!("x-f{i}: {i}\r\n")).collect();
    let cases = [
        (
            "400",
            "GET / HTTP/1.1\r\nHost: app.example\r\nBad Header Name: x\r\n\r\n".to_owned(),
        ),
        (
            "431",
            format!("GET / HTTP/1.1\r\nHost: app.example\r\n{too_many_fields}\r\n"),
        ),
    ];
    for (status, bad) in cases {
        let mut conn = RawConn::connect(cohort.proxy).await;
        conn.write(upload.as_bytes()).await;
        assert_eq!(conn.read_response(false).await.status, 200);
        conn.write(bad.as_bytes()).await;
        let answer = conn.read_response(false).await;
        assert_eq!(answer.status.to_string(), status, "{}", answer.text());
        assert_eq!(
            cohort
                .series_eventually("cohort_unrouted_requests_total", &[("status", status)], 1.0)
                .await,
            1.0,
            "{status}"
        );
    }
    assert_eq!(
        stable.hits() + canary.hits(),
        2,
        "only the two uploads went upstream"
    );
    cohort.shutdown().await;
}

/// A request line that alone is over the 64 KiB head limit has a target too long: both
/// engines answer 414 and close, and it is counted as an unrouted 414 (cohort's own
/// path answered 431 before the answers were the request policy's).
#[tokio::test]
async fn a_request_target_over_the_head_limit_gets_414_on_both_engines() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: app.example\r\n\r\n",
        "u".repeat(70 * 1024)
    );

    // cohort's own path.
    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(long.as_bytes()).await;
    let answer = conn.read_response(false).await;
    assert_eq!(answer.status, 414, "{}", answer.text());
    assert_eq!(answer.header("connection"), Some("close"));
    assert_eq!(answer.text(), "request target too long\n");

    // hyper's, on a connection handed over after a chunked upload.
    let upload = "POST /up HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(upload.as_bytes()).await;
    assert_eq!(conn.read_response(false).await.status, 200);
    conn.write(long.as_bytes()).await;
    let answer = conn.read_response(false).await;
    assert_eq!(answer.status, 414, "{}", answer.text());
    assert_eq!(answer.header("connection"), Some("close"));

    assert_eq!(
        cohort
            .series_eventually("cohort_unrouted_requests_total", &[("status", "414")], 2.0)
            .await,
        2.0
    );
    assert_eq!(
        stable.hits() + canary.hits(),
        1,
        "only the upload went upstream"
    );
    cohort.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Upstream connections that go away, and unusual upstream answers
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_upstream_closing_an_idle_pooled_connection_never_costs_the_next_client_a_502() {
    // Keep-alive semantics in the response (HTTP/1.1, no `Connection: close`), then
    // the socket closes 50 ms later, as an upstream with a short idle timeout does.
    let upstream =
        WireUpstream::start(|req| (ok(&req.line()), Then::Close(Duration::from_millis(50)))).await;
    let cohort = TestCohort::start(route_to(&upstream.url())).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(get("/first").as_bytes()).await;
    let first = conn.read_response(false).await;
    assert_eq!((first.status, first.text().as_str()), (200, "GET /first"));

    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.write(get("/second").as_bytes()).await;
    let second = conn.read_response(false).await;
    assert_eq!(
        (second.status, second.text().as_str()),
        (200, "GET /second"),
        "a stale pooled connection must not reach the client"
    );
    assert_eq!(upstream.connections(), 2);
    for kind in ["connect", "reset", "protocol"] {
        assert_eq!(cohort.series(ERRORS, &errors(kind)).await, 0.0, "{kind}");
    }
    cohort.shutdown().await;
}

#[tokio::test]
async fn an_unasked_100_continue_from_the_upstream_still_yields_the_final_response() {
    let upstream = WireUpstream::start(|req| {
        let mut reply = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        reply.extend(ok(&req.line()));
        (reply, Then::KeepOpen)
    })
    .await;
    let cohort = TestCohort::start(route_to(&upstream.url())).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    for path in ["/interim", "/interim-again"] {
        conn.write(get(path).as_bytes()).await;
        let (interim, answer) = conn.read_final_response(false).await;
        assert!(interim.iter().all(|s| *s == 100), "{interim:?}");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), format!("GET {path}"));
    }
    assert_eq!(upstream.connections(), 1);
    cohort.shutdown().await;
}

/// RFC 9110 §15.2.2: a `101` answers a request that asked to upgrade; one that did not
/// ask has no protocol to switch to, so the upstream spoke invalid HTTP.
#[tokio::test]
async fn an_upstream_switching_protocols_unasked_gets_502_protocol() {
    let upstream = WireUpstream::start(|_| {
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n"
                .to_vec(),
            Then::KeepOpen,
        )
    })
    .await;
    let cohort = TestCohort::start(route_to(&upstream.url())).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(get("/plain").as_bytes()).await;
    let answer = conn.read_response(false).await;
    assert_eq!(answer.status, 502, "{:?} {}", answer.headers, answer.text());
    assert_eq!(answer.header("x-cohort-variant"), Some("stable"));
    assert_eq!(
        cohort
            .series_eventually(ERRORS, &errors("protocol"), 1.0)
            .await,
        1.0
    );
    assert_eq!(
        cohort
            .series_eventually(REQUESTS, &requests("502"), 1.0)
            .await,
        1.0
    );
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_websocket_upgrade_after_a_plain_request_carries_bytes_both_ways() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(get("/page").as_bytes()).await;
    let page = conn.read_response(false).await;
    assert_eq!((page.status, page.text().as_str()), (200, "stable"));

    conn.write(
        b"GET /chat HTTP/1.1\r\n\
          Host: app.example\r\n\
          Connection: Upgrade\r\n\
          Upgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\
          \r\n",
    )
    .await;
    let switched = conn.read_response(false).await;
    assert_eq!(switched.status, 101, "{:?}", switched.headers);
    assert!(switched
        .header("upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
    assert!(switched
        .header("connection")
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")));
    assert_eq!(switched.header("x-cohort-variant"), Some("stable"));
    let seen = stable.last_seen();
    assert_eq!(seen.uri, "/chat");
    assert_eq!(seen.one("upgrade"), Some("websocket"));

    for message in [
        &b"ping"[..],
        b"through the tunnel",
        &[0u8, 255, 13, 10, 13, 10],
    ] {
        conn.write(message).await;
        assert_eq!(conn.read_exact_bytes(message.len()).await, message);
    }
    assert_eq!(
        cohort
            .series_eventually(REQUESTS, &requests("101"), 1.0)
            .await,
        1.0
    );
    cohort.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// What cohort adds to responses
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_configured_variant_header_names_the_variant_on_the_wire() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let config = Config::new().route(user_route("app", &stable, &canary).canary_percent(50));
    let cohort = TestCohort::start(config.clone().variant_header("X-Arm")).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    for variant in ["stable", "canary"] {
        let user = key_in(variant, "app-salt", 50.0, "user");
        conn.write(
            format!("GET / HTTP/1.1\r\nHost: app.example\r\nX-User-Id: {user}\r\n\r\n").as_bytes(),
        )
        .await;
        let answer = conn.read_response(false).await;
        assert_eq!(answer.text(), variant);
        assert_eq!(answer.all("x-arm"), [variant]);
        assert!(answer.header("x-cohort-variant").is_none());
    }
    cohort.shutdown().await;

    let silent = TestCohort::start(config.variant_header("")).await;
    let answer = support::raw_exchange(
        silent.proxy,
        "GET / HTTP/1.1\r\nHost: app.example\r\nX-User-Id: u\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(answer.header("x-cohort-variant").is_none());
    assert!(answer.header("x-arm").is_none());
    silent.shutdown().await;
}

/// The `Set-Cookie` lines of a response that set `cohort_id`.
fn cohort_cookies(answer: &RawResponse) -> Vec<&str> {
    answer
        .all("set-cookie")
        .into_iter()
        .filter(|c| c.starts_with("cohort_id="))
        .collect()
}

#[tokio::test]
async fn a_keyless_client_gets_one_cohort_cookie_line_beside_the_upstreams() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    stable.set_response_headers(&[("set-cookie", "up=1; Path=/")]);
    canary.set_response_headers(&[("set-cookie", "up=1; Path=/")]);
    let cohort = TestCohort::start(user_route("app", &stable, &canary).canary_percent(50)).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(get("/").as_bytes()).await;
    let first = conn.read_response(false).await;
    assert_eq!(first.status, 200);
    let ours = cohort_cookies(&first);
    assert_eq!(ours.len(), 1, "{:?}", first.headers);
    assert_eq!(
        first.all("set-cookie").len(),
        2,
        "two separate lines, never folded: {:?}",
        first.headers
    );
    assert!(first.all("set-cookie").contains(&"up=1; Path=/"));
    let (pair, attributes) = ours[0].split_once("; ").expect("attributes");
    assert_eq!(
        attributes,
        "Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"
    );
    let key = pair.trim_start_matches("cohort_id=").to_owned();
    let variant = support::expected_variant("app-salt", &key, 50.0);
    assert_eq!(first.header("x-cohort-variant"), Some(variant));

    // With the cookie, on the same connection: the same variant, no new cookie.
    conn.write(
        format!("GET / HTTP/1.1\r\nHost: app.example\r\nCookie: cohort_id={key}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    let again = conn.read_response(false).await;
    assert_eq!(again.header("x-cohort-variant"), Some(variant));
    assert_eq!(again.text(), variant);
    assert!(cohort_cookies(&again).is_empty(), "{:?}", again.headers);

    // A client with a key of its own gets none either.
    conn.write(b"GET / HTTP/1.1\r\nHost: app.example\r\nX-User-Id: someone\r\n\r\n")
        .await;
    let keyed = conn.read_response(false).await;
    assert!(cohort_cookies(&keyed).is_empty(), "{:?}", keyed.headers);
    cohort.shutdown().await;
}
