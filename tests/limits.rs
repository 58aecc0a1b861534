//! The listener's limits and a route's `max_body` (DESIGN §10), on both HTTP/1 engines
//! (cohort's own path for plain requests; hyper's on a connection handed over after a
//! chunked upload) and on HTTP/2: what the client receives, that nothing reached the
//! upstream, and the metric. Timeouts are short so the suite stays fast.
mod support;

use std::time::Duration;

use support::{Config, FakeUpstream, RawConn, RawUpstream, Route, TestCohort};

const UNROUTED: &str = "cohort_unrouted_requests_total";

/// A chunked upload: cohort's own path hands the connection to hyper, which serves
/// every later request on it.
const UPLOAD: &str = "POST /up HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";

/// Which HTTP/1 engine a connection is served by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Own,
    Hyper,
}

const ENGINES: [Engine; 2] = [Engine::Own, Engine::Hyper];

struct Setup {
    cohort: TestCohort,
    stable: FakeUpstream,
    canary: FakeUpstream,
}

impl Setup {
    async fn start(config: impl FnOnce(Config) -> Config) -> Setup {
        Setup::with_route(|route| route, config).await
    }

    /// The route `app` as `route` makes it, in the config `config` makes.
    async fn with_route(
        route: impl FnOnce(Route) -> Route,
        config: impl FnOnce(Config) -> Config,
    ) -> Setup {
        let stable = FakeUpstream::start("stable").await;
        let canary = FakeUpstream::start("canary").await;
        let route = route(Route::new("app").stable(&stable).canary(&canary));
        let cohort = TestCohort::start(config(Config::new().route(route))).await;
        Setup {
            cohort,
            stable,
            canary,
        }
    }

    /// A connection served by `engine`, and the upstream hits it took to get there.
    async fn connect(&self, engine: Engine) -> (RawConn, usize) {
        let mut conn = RawConn::connect(self.cohort.proxy).await;
        if engine == Engine::Own {
            return (conn, 0);
        }
        conn.write(UPLOAD.as_bytes()).await;
        assert_eq!(conn.read_response(false).await.status, 200, "the upload");
        (conn, 1)
    }

    fn hits(&self) -> usize {
        self.stable.hits() + self.canary.hits()
    }

    async fn shutdown(self) {
        self.cohort.shutdown().await;
    }
}

/// A head that starts and then stalls (slowloris) is answered 408 `header_timeout`
/// after it started, and the connection closed; nothing goes upstream; counted as an
/// unrouted 408. (Before `header_timeout` existed, both engines closed it after 30 s
/// without a word, and `tests/http1_wire.rs` pinned that silence.)
#[tokio::test]
async fn a_stalled_head_gets_408_then_close_on_both_engines() {
    let setup = Setup::start(|c| c.header_timeout("300ms").idle_timeout("10s")).await;
    for (i, engine) in ENGINES.into_iter().enumerate() {
        let (mut conn, hits) = setup.connect(engine).await;
        let started = std::time::Instant::now();
        conn.write(b"GET /slow HTTP/1.1\r\nHost: app.example\r\n")
            .await;
        let answer = conn.read_response(false).await;
        let waited = started.elapsed();
        assert_eq!(answer.status, 408, "{engine:?}: {}", answer.text());
        assert_eq!(answer.header("connection"), Some("close"), "{engine:?}");
        assert_eq!(
            answer.text(),
            "request head not received in time\n",
            "{engine:?}"
        );
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
            "{engine:?}: answered after {waited:?}"
        );
        assert!(
            conn.closed_within(Duration::from_secs(2)).await,
            "{engine:?}: closed after the 408"
        );
        assert_eq!(setup.hits(), hits, "{engine:?}: nothing more went upstream");
        let want = (i + 1) as f64;
        assert_eq!(
            setup
                .cohort
                .series_eventually(UNROUTED, &[("status", "408")], want)
                .await,
            want,
            "{engine:?}"
        );
    }
    setup.shutdown().await;
}

/// A connection with no request in flight is closed after `idle_timeout`, without a
/// word (no 408: nothing of a next request had arrived), before its first request and
/// between keep-alive requests. On hyper's engine the idle wait is bounded by the
/// shorter of `header_timeout` and `idle_timeout` (hyper has one timer for both).
#[tokio::test]
async fn an_idle_connection_is_closed_silently_after_idle_timeout() {
    let setup = Setup::start(|c| c.header_timeout("5s").idle_timeout("400ms")).await;
    // Before its first request (own path: nothing sent yet).
    let mut conn = RawConn::connect(setup.cohort.proxy).await;
    assert!(
        !conn.closed_within(Duration::from_millis(200)).await,
        "open at first"
    );
    assert!(
        conn.closed_within(Duration::from_secs(2)).await,
        "closed when idle before a request"
    );
    for engine in ENGINES {
        let (mut conn, _) = setup.connect(engine).await;
        conn.write(b"GET /once HTTP/1.1\r\nHost: app.example\r\n\r\n")
            .await;
        assert_eq!(conn.read_response(false).await.status, 200, "{engine:?}");
        assert!(
            !conn.closed_within(Duration::from_millis(200)).await,
            "{engine:?}: closed too early"
        );
        assert!(
            conn.closed_within(Duration::from_secs(2)).await,
            "{engine:?}: still open when idle"
        );
    }
    assert_eq!(
        setup.cohort.series(UNROUTED, &[("status", "408")]).await,
        0.0,
        "an idle connection is not a timed-out request"
    );
    setup.shutdown().await;
}

/// A request head over `max_header_bytes` is answered 431 and the connection closed on
/// both engines; nothing goes upstream; counted as an unrouted 431.
#[tokio::test]
async fn a_head_over_max_header_bytes_gets_431_on_both_engines() {
    let setup = Setup::start(|c| c.max_header_bytes(8192)).await;
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: app.example\r\nx-big: {}\r\n\r\n",
        "b".repeat(10_000)
    );
    for (i, engine) in ENGINES.into_iter().enumerate() {
        let (mut conn, hits) = setup.connect(engine).await;
        conn.write(big.as_bytes()).await;
        let answer = conn.read_response(false).await;
        assert_eq!(answer.status, 431, "{engine:?}: {}", answer.text());
        assert_eq!(answer.header("connection"), Some("close"), "{engine:?}");
        assert_eq!(setup.hits(), hits, "{engine:?}: nothing more went upstream");
        let want = (i + 1) as f64;
        assert_eq!(
            setup
                .cohort
                .series_eventually(UNROUTED, &[("status", "431")], want)
                .await,
            want,
            "{engine:?}"
        );
    }
    // Within the limit: served.
    let (mut conn, _) = setup.connect(Engine::Own).await;
    let fits = format!(
        "GET /fits HTTP/1.1\r\nHost: app.example\r\nx-big: {}\r\n\r\n",
        "b".repeat(6_000)
    );
    conn.write(fits.as_bytes()).await;
    assert_eq!(conn.read_response(false).await.status, 200);
    setup.shutdown().await;
}

fn with_fields(n: usize) -> String {
    let fields: String = (0..n).map(|i| format!("x-f{i}: {i}\r\n")).collect();
    format!("GET /fields HTTP/1.1\r\nHost: app.example\r\n{fields}\r\n")
}

/// More than `max_headers` header fields: 431 and close on both engines, nothing
/// upstream, an unrouted 431. (`Host` counts as a field.)
#[tokio::test]
async fn more_fields_than_max_headers_get_431_on_both_engines() {
    let setup = Setup::start(|c| c.max_headers(10)).await;
    for (i, engine) in ENGINES.into_iter().enumerate() {
        let (mut conn, hits) = setup.connect(engine).await;
        conn.write(with_fields(12).as_bytes()).await;
        let answer = conn.read_response(false).await;
        assert_eq!(answer.status, 431, "{engine:?}: {}", answer.text());
        assert_eq!(answer.header("connection"), Some("close"), "{engine:?}");
        assert_eq!(setup.hits(), hits, "{engine:?}: nothing more went upstream");
        let want = (i + 1) as f64;
        assert_eq!(
            setup
                .cohort
                .series_eventually(UNROUTED, &[("status", "431")], want)
                .await,
            want,
            "{engine:?}"
        );
    }
    let (mut conn, _) = setup.connect(Engine::Own).await;
    conn.write(with_fields(8).as_bytes()).await;
    assert_eq!(
        conn.read_response(false).await.status,
        200,
        "within the limit"
    );
    setup.shutdown().await;
}

/// A `max_headers` above the fields cohort's own path parses in place (100): a head
/// with more is handed to hyper and forwarded, not refused. (A raw upstream: hyper's
/// own server refuses over 100 fields.)
#[tokio::test]
async fn a_max_headers_above_100_forwards_a_head_with_120_fields() {
    let upstream =
        RawUpstream::start(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .await;
    let route = Route::new("app").stable_urls(&[upstream.url()]);
    let cohort = TestCohort::start(Config::new().max_headers(150).route(route)).await;
    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(with_fields(120).as_bytes()).await;
    let answer = conn.read_response(false).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(upstream.connections(), 1);
    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(with_fields(160).as_bytes()).await;
    assert_eq!(conn.read_response(false).await.status, 431, "over 150");
    assert_eq!(upstream.connections(), 1, "nothing more went upstream");
    cohort.shutdown().await;
}

/// Over `max_connections` open client connections, a new one is closed at once without
/// a byte and counted in `cohort_connections_rejected_total`; `cohort_connections_open`
/// follows the open ones (on either engine), and a slot freed is taken again.
#[tokio::test]
async fn a_connection_over_max_connections_is_closed_at_once_and_counted() {
    let setup = Setup::start(|c| c.max_connections(2)).await;
    let cohort = &setup.cohort;
    assert_eq!(cohort.series("cohort_connections_open", &[]).await, 0.0);
    assert_eq!(
        cohort
            .series("cohort_connections_rejected_total", &[])
            .await,
        0.0
    );
    let mut held = Vec::new();
    for engine in ENGINES {
        let (mut conn, _) = setup.connect(engine).await;
        conn.write(b"GET /held HTTP/1.1\r\nHost: app.example\r\n\r\n")
            .await;
        assert_eq!(conn.read_response(false).await.status, 200, "{engine:?}");
        held.push(conn);
    }
    assert_eq!(
        cohort
            .series_eventually("cohort_connections_open", &[], 2.0)
            .await,
        2.0
    );
    let hits = setup.hits();
    let mut third = RawConn::connect(cohort.proxy).await;
    third
        .write(b"GET /third HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .await;
    assert!(
        third.closed_within(Duration::from_secs(2)).await,
        "the third connection is closed without an answer"
    );
    assert_eq!(
        cohort
            .series_eventually("cohort_connections_rejected_total", &[], 1.0)
            .await,
        1.0
    );
    assert_eq!(setup.hits(), hits, "nothing went upstream");
    drop(held.pop());
    assert_eq!(
        cohort
            .series_eventually("cohort_connections_open", &[], 1.0)
            .await,
        1.0
    );
    let (mut conn, _) = setup.connect(Engine::Own).await;
    conn.write(b"GET /again HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .await;
    assert_eq!(conn.read_response(false).await.status, 200, "a freed slot");
    setup.shutdown().await;
}

/// A request whose `Content-Length` is over its route's `max_body` is answered 413
/// before anything goes upstream, on both engines, and counted under the route and
/// variant (a route was chosen); the connection closes. A body within it is served.
#[tokio::test]
async fn a_body_over_max_body_gets_413_by_content_length_on_both_engines() {
    let setup = Setup::with_route(|route| route.max_body("1KiB"), |config| config).await;
    let post = |len: usize| {
        format!(
            "POST /up HTTP/1.1\r\nHost: app.example\r\nContent-Length: {len}\r\n\r\n{}",
            "x".repeat(len)
        )
    };
    let labels = [("route", "app"), ("variant", "stable"), ("status", "413")];
    for (i, engine) in ENGINES.into_iter().enumerate() {
        let (mut conn, hits) = setup.connect(engine).await;
        conn.write(post(2000).as_bytes()).await;
        let answer = conn.read_response(false).await;
        assert_eq!(answer.status, 413, "{engine:?}: {}", answer.text());
        assert_eq!(answer.text(), "request body too large\n", "{engine:?}");
        assert_eq!(answer.header("connection"), Some("close"), "{engine:?}");
        assert_eq!(
            answer.header("x-cohort-variant"),
            Some("stable"),
            "{engine:?}"
        );
        assert_eq!(setup.hits(), hits, "{engine:?}: nothing more went upstream");
        let want = (i + 1) as f64;
        assert_eq!(
            setup
                .cohort
                .series_eventually("cohort_requests_total", &labels, want)
                .await,
            want,
            "{engine:?}"
        );
    }
    assert_eq!(
        setup.cohort.series(UNROUTED, &[("status", "413")]).await,
        0.0,
        "a routed 413 is not unrouted"
    );
    let (mut conn, _) = setup.connect(Engine::Own).await;
    let hits = setup.hits();
    conn.write(post(1024).as_bytes()).await;
    assert_eq!(conn.read_response(false).await.status, 200, "at the limit");
    assert_eq!(setup.hits(), hits + 1);
    setup.shutdown().await;
}

/// One HTTP/2 request on a prior-knowledge connection: its status, or the error the
/// HTTP/2 layer gave instead.
async fn h2_request(
    proxy: std::net::SocketAddr,
    request: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<u16, String> {
    let stream = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    match sender.send_request(request).await {
        Ok(resp) => Ok(resp.status().as_u16()),
        Err(e) => Err(e.to_string()),
    }
}

/// HTTP/2 takes the same `max_body` (413 by `content-length`, counted under the route
/// and variant) and advertises `max_header_bytes` as its header list size: a larger
/// header list never reaches the upstream (431 on that stream; counted up to twice the
/// limit, beyond which the HTTP/2 layer answers it itself: see `http2_header_lists_over_max_header_bytes_get_431_counted`).
#[tokio::test]
async fn http2_takes_max_body_and_max_header_bytes() {
    let setup = Setup::with_route(
        |route| route.max_body("1KiB"),
        |config| config.max_header_bytes(8192),
    )
    .await;
    let proxy = setup.cohort.proxy;
    let body = bytes::Bytes::from(vec![b'x'; 2000]);
    let post = http::Request::post("http://app.example/up")
        .header("content-length", "2000")
        .body(http_body_util::Full::new(body))
        .expect("request");
    assert_eq!(h2_request(proxy, post).await, Ok(413));
    let labels = [("route", "app"), ("variant", "stable"), ("status", "413")];
    assert_eq!(
        setup
            .cohort
            .series_eventually("cohort_requests_total", &labels, 1.0)
            .await,
        1.0
    );
    let big = http::Request::get("http://app.example/big")
        .header("x-big", "b".repeat(10_000))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    assert_eq!(h2_request(proxy, big).await, Ok(431));
    assert_eq!(setup.hits(), 0, "nothing reached the upstream");
    let small = http::Request::get("http://app.example/small")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    assert_eq!(h2_request(proxy, small).await, Ok(200));
    setup.shutdown().await;
}

/// A chunked body (no `Content-Length`: it streams through hyper's engine) that grows
/// past `max_body` is aborted upstream; with no response started the client gets 413
/// and the connection closes; counted under the route and variant. A chunked body
/// within the limit goes through.
#[tokio::test]
async fn a_chunked_body_growing_past_max_body_is_aborted_with_413() {
    let setup = Setup::with_route(|route| route.max_body("1KiB"), |config| config).await;
    let chunked = |chunks: usize| {
        let mut request =
            "POST /up HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_owned();
        for _ in 0..chunks {
            request.push_str(&format!("1f4\r\n{}\r\n", "x".repeat(500)));
        }
        request.push_str("0\r\n\r\n");
        request
    };
    let mut conn = RawConn::connect(setup.cohort.proxy).await;
    conn.write(chunked(2).as_bytes()).await;
    assert_eq!(conn.read_response(false).await.status, 200, "1000 bytes");
    let mut conn = RawConn::connect(setup.cohort.proxy).await;
    conn.write(chunked(6).as_bytes()).await;
    let answer = conn.read_response(false).await;
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert_eq!(answer.text(), "request body too large\n");
    assert_eq!(answer.header("connection"), Some("close"));
    let labels = [("route", "app"), ("variant", "stable"), ("status", "413")];
    assert_eq!(
        setup
            .cohort
            .series_eventually("cohort_requests_total", &labels, 1.0)
            .await,
        1.0
    );
    setup.shutdown().await;
}

/// Two `Host` fields are a 400 on both engines (RFC 9112 §3.2: a server MUST reject
/// them); hyper's engine used to serve the first (found by the `h1_differential` fuzz
/// target). Nothing goes upstream; counted as an unrouted 400.
#[tokio::test]
async fn two_host_fields_get_400_on_both_engines() {
    let setup = Setup::start(|config| config).await;
    for (i, engine) in ENGINES.into_iter().enumerate() {
        let (mut conn, hits) = setup.connect(engine).await;
        conn.write(b"GET /two HTTP/1.1\r\nHost: app.example\r\nHost: other.example\r\n\r\n")
            .await;
        let answer = conn.read_response(false).await;
        assert_eq!(answer.status, 400, "{engine:?}");
        assert_eq!(setup.hits(), hits, "{engine:?}: nothing went upstream");
        let counted = setup
            .cohort
            .series("cohort_unrouted_requests_total", &[("status", "400")])
            .await;
        assert_eq!(counted, (i + 1) as f64, "{engine:?}");
    }
    setup.shutdown().await;
}

// HTTP/2's side of the limits (DESIGN §10: every limit holds on HTTP/2 too), on raw
// frames where the wire matters (`support::h2frames`), and hyper's HTTP/1 engine behind
// TLS.

use support::h2frames::{self as h2, H2Conn};

/// Reads frames until stream `id`'s response ends (a frame with END_STREAM, or a
/// RST_STREAM); returns them.
async fn h2_response(conn: &mut H2Conn, id: u32) -> Vec<h2::Frame> {
    let mut frames = Vec::new();
    loop {
        let frame = conn
            .read_frame(support::PATIENCE)
            .await
            .unwrap_or_else(|| panic!("stream {id} ended without an answer: {frames:?}"));
        let done = frame.stream == id
            && (frame.kind == h2::RST_STREAM
                || (matches!(frame.kind, h2::HEADERS | h2::DATA)
                    && frame.flags & h2::END_STREAM != 0));
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// An HTTP/2 connection with no stream in flight is closed after `idle_timeout`: GOAWAY
/// NO_ERROR, then the close, before its first request and after its last; a stream in
/// flight longer than `idle_timeout` keeps it open and is answered. While it is open
/// it counts in `cohort_connections_open`, and not once closed.
#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_then_close_after_idle_timeout() {
    let setup = Setup::start(|c| c.idle_timeout("500ms").header_timeout("5s")).await;
    let proxy = setup.cohort.proxy;
    let cohort = &setup.cohort;
    let open = |n: f64| async move {
        cohort
            .series_eventually("cohort_connections_open", &[], n)
            .await
    };

    // Before a first request.
    let mut conn = H2Conn::handshake(proxy).await;
    assert_eq!(open(1.0).await, 1.0, "counted while open");
    let started = std::time::Instant::now();
    let outcome = conn.outcome(Duration::from_secs(5)).await;
    let waited = started.elapsed();
    assert_eq!(
        outcome.goaway.map(|(_, code)| code),
        Some(h2::NO_ERROR),
        "{outcome:?}"
    );
    assert!(outcome.closed, "closed after the GOAWAY");
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    assert_eq!(open(0.0).await, 0.0, "not counted once closed");

    // A stream in flight longer than `idle_timeout` keeps the connection; once it is
    // answered, the connection is idle, and closed `idle_timeout` later.
    setup.stable.set_delay(Duration::from_millis(1200));
    setup.canary.set_delay(Duration::from_millis(1200));
    let mut conn = H2Conn::handshake(proxy).await;
    conn.write(&h2::headers(
        1,
        h2::END_STREAM,
        &h2::request_fields("GET", "/slow"),
    ))
    .await
    .expect("write");
    let answer = h2_response(&mut conn, 1).await;
    assert!(
        answer
            .iter()
            .all(|f| f.kind != h2::GOAWAY && f.kind != h2::RST_STREAM),
        "the slow stream was answered whole: {answer:?}"
    );
    let answered = std::time::Instant::now();
    let outcome = conn.outcome(Duration::from_secs(5)).await;
    let waited = answered.elapsed();
    assert_eq!(outcome.goaway.map(|(_, code)| code), Some(h2::NO_ERROR));
    assert!(outcome.closed);
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "closed {waited:?} after the answer"
    );
    assert_eq!(setup.hits(), 1);
    setup.shutdown().await;
}

/// A client that sends the HTTP/2 preface and nothing more (not even its SETTINGS)
/// holds no stream: it is cut after `idle_timeout` and a short grace.
#[tokio::test]
async fn an_http2_preface_alone_is_closed_after_idle_timeout() {
    let setup = Setup::start(|c| c.idle_timeout("300ms")).await;
    let mut conn = RawConn::connect(setup.cohort.proxy).await;
    conn.write(h2::PREFACE).await;
    let started = std::time::Instant::now();
    conn.read_until_close().await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
    setup.shutdown().await;
}

/// A GET on a fresh HTTP/2 connection with `fields` besides the pseudo-header fields.
fn h2_get(fields: &[(String, String)]) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut request = http::Request::get("http://app.example/h2");
    for (name, value) in fields {
        request = request.header(name.as_str(), value.as_str());
    }
    request
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request")
}

/// More header fields than `max_headers` on HTTP/2: 431 on that stream (the connection
/// stays usable), counted as an unrouted 431, nothing upstream. Pseudo-header fields do
/// not count (HTTP/1 counts no request line either).
#[tokio::test]
async fn more_fields_than_max_headers_get_431_on_http2() {
    let setup = Setup::start(|c| c.max_headers(10)).await;
    let fields = |n: usize| -> Vec<(String, String)> {
        (0..n).map(|i| (format!("x-f{i}"), i.to_string())).collect()
    };
    assert_eq!(
        h2_request(setup.cohort.proxy, h2_get(&fields(11))).await,
        Ok(431)
    );
    assert_eq!(setup.hits(), 0, "nothing went upstream");
    assert_eq!(
        setup
            .cohort
            .series_eventually(UNROUTED, &[("status", "431")], 1.0)
            .await,
        1.0
    );
    assert_eq!(
        h2_request(setup.cohort.proxy, h2_get(&fields(10))).await,
        Ok(200)
    );
    setup.shutdown().await;
}

/// HTTP/2 advertises twice `max_header_bytes` as its header list size. A list over
/// `max_header_bytes` (by RFC 9113's measure: name + value + 32 a field) is answered
/// 431 by cohort and counted as unrouted; one over the advertised size is answered 431
/// by the HTTP/2 layer, uncounted (it never becomes a request); a header block that
/// keeps growing past it ends the connection (here GOAWAY COMPRESSION_ERROR: h2 stops
/// buffering a block it already refused). Nothing reaches the upstream.
#[tokio::test]
async fn http2_header_lists_over_max_header_bytes_get_431_counted() {
    let setup = Setup::start(|c| c.max_header_bytes(8192)).await;
    let proxy = setup.cohort.proxy;
    let first = H2Conn::handshake(proxy).await;
    assert_eq!(
        first.server_setting(h2::SETTINGS_MAX_HEADER_LIST_SIZE),
        Some(16384),
        "advertised: {:?}",
        first.server_settings
    );
    let big = |len: usize| vec![("x-big".to_owned(), "b".repeat(len))];
    // Within, by the RFC's measure: the four pseudo-header fields take 32 + name +
    // value each (~200 bytes here), `x-big` 37 + its value.
    assert_eq!(h2_request(proxy, h2_get(&big(7_900))).await, Ok(200));
    assert_eq!(h2_request(proxy, h2_get(&big(8_000))).await, Ok(431));
    assert_eq!(
        setup
            .cohort
            .series_eventually(UNROUTED, &[("status", "431")], 1.0)
            .await,
        1.0,
        "cohort's 431 is counted"
    );
    assert_eq!(h2_request(proxy, h2_get(&big(20_000))).await, Ok(431));
    assert_eq!(
        setup.cohort.series(UNROUTED, &[("status", "431")]).await,
        1.0,
        "the HTTP/2 layer's own 431 is not (documented)"
    );
    let mut conn = H2Conn::handshake(proxy).await;
    let mut fields = h2::request_fields("GET", "/huge");
    let huge = "h".repeat(15_000);
    let names: Vec<String> = (0..5).map(|i| format!("x-huge-{i}")).collect();
    for name in &names {
        fields.push((name.as_str(), huge.as_str()));
    }
    // 75 KB in one HEADERS frame: over the default 16 KiB frame size, so split.
    let block = h2::hpack(&fields);
    let mut frames = Vec::new();
    for (i, piece) in block.chunks(16_000).enumerate() {
        let last = (i + 1) * 16_000 >= block.len();
        let kind = if i == 0 {
            h2::HEADERS
        } else {
            h2::CONTINUATION
        };
        let flags =
            if last { h2::END_HEADERS } else { 0 } | if i == 0 { h2::END_STREAM } else { 0 };
        frames.extend(h2::frame(kind, flags, 1, piece));
    }
    let _ = conn.write(&frames).await;
    let outcome = conn.outcome(Duration::from_secs(2)).await;
    assert_eq!(
        outcome.goaway.map(|(_, code)| code),
        Some(h2::COMPRESSION_ERROR),
        "{outcome:?}"
    );
    assert_eq!(
        setup.hits(),
        1,
        "only the list within the limit went upstream"
    );
    // A raw connection answers no PING: closed here, it does not hold up the drain.
    drop((conn, first));
    setup.shutdown().await;
}

/// `h2_max_concurrent_streams` is advertised, and a stream beyond it is refused
/// (RST_STREAM REFUSED_STREAM, which a client may retry) while the others are served.
#[tokio::test]
async fn streams_over_h2_max_concurrent_streams_are_refused() {
    let setup = Setup::start(|c| c.h2_max_concurrent_streams(5)).await;
    setup.stable.set_delay(Duration::from_millis(500));
    setup.canary.set_delay(Duration::from_millis(500));
    let mut conn = H2Conn::handshake(setup.cohort.proxy).await;
    assert_eq!(
        conn.server_setting(h2::SETTINGS_MAX_CONCURRENT_STREAMS),
        Some(5)
    );
    // The client acknowledged cohort's SETTINGS in the handshake; give the ACK a moment
    // to be read, so the limit is in force for what follows (RFC 9113 §6.5.3).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let opens: Vec<u8> = (0..6)
        .flat_map(|i| h2::headers(1 + 2 * i, h2::END_STREAM, &h2::request_fields("GET", "/c")))
        .collect();
    conn.write(&opens).await.expect("write");
    let mut refused = Vec::new();
    let mut answered = Vec::new();
    while refused.len() + answered.len() < 6 {
        let frame = conn
            .read_frame(support::PATIENCE)
            .await
            .expect("an answer on every stream");
        if frame.reset() == Some(h2::REFUSED_STREAM) {
            refused.push(frame.stream);
        } else if matches!(frame.kind, h2::HEADERS | h2::DATA) && frame.flags & h2::END_STREAM != 0
        {
            answered.push(frame.stream);
        }
    }
    assert_eq!(refused, vec![11], "the sixth stream is refused");
    assert_eq!(answered.len(), 5);
    assert_eq!(setup.hits(), 5);
    drop(conn);
    setup.shutdown().await;
}

#[path = "support/tls.rs"]
mod tls_support;

/// hyper's HTTP/1 engine behind a TLS listener (every HTTPS client that does not
/// choose h2) holds `header_timeout` (a stalled head: 408, close) and `max_header_bytes`
/// (431, close) as the plain listener does; both counted as unrouted.
#[tokio::test]
async fn http1_over_tls_holds_header_timeout_and_max_header_bytes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = tls_support::Pki::new("limits");
    let leaf = pki.server_leaf("server", &["localhost"]);
    let setup = Setup::start(|c| {
        c.tls(&leaf.cert, &leaf.key)
            .header_timeout("300ms")
            .max_header_bytes(8192)
    })
    .await;
    let config = tls_support::client_config(&pki.ca_path(), &[b"http/1.1"], None);
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(setup.cohort.proxy)
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .expect("TLS handshake")
    };
    // Everything until the close (a reset, or a missing close_notify, ends it too).
    let answer = |mut tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>| async move {
        let mut bytes = Vec::new();
        let read = tokio::time::timeout(support::PATIENCE, tls.read_to_end(&mut bytes)).await;
        assert!(read.is_ok(), "closed within {:?}", support::PATIENCE);
        String::from_utf8_lossy(&bytes).into_owned()
    };

    let mut tls = connect().await;
    tls.write_all(b"GET /slow HTTP/1.1\r\nHost: app.example\r\n")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let text = answer(tls).await;
    assert!(text.starts_with("HTTP/1.1 408 "), "{text:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "answered after {:?}",
        started.elapsed()
    );

    let mut tls = connect().await;
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: app.example\r\nx-big: {}\r\n\r\n",
        "b".repeat(10_000)
    );
    tls.write_all(big.as_bytes()).await.expect("write");
    let text = answer(tls).await;
    assert!(text.starts_with("HTTP/1.1 431 "), "{text:?}");

    assert_eq!(setup.hits(), 0, "nothing went upstream");
    for status in ["408", "431"] {
        assert_eq!(
            setup
                .cohort
                .series_eventually(UNROUTED, &[("status", status)], 1.0)
                .await,
            1.0,
            "{status}"
        );
    }
    setup.shutdown().await;
}

/// The in-flight requests of route `app`, both variants.
async fn in_flight(cohort: &TestCohort) -> f64 {
    let mut total = 0.0;
    for variant in ["stable", "canary"] {
        total += cohort
            .series(
                "cohort_in_flight_requests",
                &[("route", "app"), ("variant", variant)],
            )
            .await;
    }
    total
}

/// A client that asks for a large response and then stops reading is let go once it
/// has taken nothing for `idle_timeout` (NGINX's `send_timeout`), on cohort's own
/// HTTP/1 path, on hyper's, and on HTTP/2 (a socket left unread, and a flow-control
/// window never opened): its request ends (counted with the status sent, not against
/// the upstream), and the upstream's response stops being pulled.
/// Before, each such client held an upstream connection and its buffers for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_let_go_after_idle_timeout_on_every_engine() {
    let setup = Setup::start(|c| c.idle_timeout("1s").header_timeout("5s")).await;
    let large = |on: bool| {
        for upstream in [&setup.stable, &setup.canary] {
            upstream.set_reply(if on {
                support::Reply::Pattern { len: 1 << 30 }
            } else {
                support::Reply::Name
            });
        }
    };
    let get = "GET /big HTTP/1.1\r\nHost: app.example\r\n\r\n";
    for engine in ["own", "hyper", "http2", "http2 window"] {
        // Kept open, never read: only cohort may end it.
        let mut _h1 = None;
        let mut _h2 = None;
        match engine {
            "own" | "hyper" => {
                let which = if engine == "own" {
                    Engine::Own
                } else {
                    Engine::Hyper
                };
                let (mut conn, _) = setup.connect(which).await;
                large(true);
                conn.write(get.as_bytes()).await;
                _h1 = Some(conn);
            }
            "http2 window" => {
                // The default windows (64 KiB), never opened further: flow control stops
                // the response, and the socket stays free (the client could read it).
                let mut conn = H2Conn::handshake(setup.cohort.proxy).await;
                large(true);
                let request = h2::headers(1, h2::END_STREAM, &h2::request_fields("GET", "/big"));
                conn.write(&request).await.expect("write");
                _h2 = Some(conn);
            }
            _ => {
                let mut conn = H2Conn::handshake(setup.cohort.proxy).await;
                large(true);
                // The largest windows: flow control holds nothing back, so what stops
                // the response is the client's socket, full because it does not read.
                let max = (1 << 31) - 1;
                conn.write(&h2::settings(&[(h2::SETTINGS_INITIAL_WINDOW_SIZE, max)]))
                    .await
                    .expect("write");
                conn.write(&h2::window_update(0, max - 65_535))
                    .await
                    .expect("write");
                let request = h2::headers(1, h2::END_STREAM, &h2::request_fields("GET", "/big"));
                conn.write(&request).await.expect("write");
                _h2 = Some(conn);
            }
        }
        let asked = std::time::Instant::now();
        // The response starts flowing, then fills every buffer on the way.
        while in_flight(&setup.cohort).await < 1.0 {
            assert!(
                asked.elapsed() < Duration::from_secs(5),
                "{engine}: never in flight"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while in_flight(&setup.cohort).await > 0.0 {
            assert!(
                asked.elapsed() < Duration::from_secs(8),
                "{engine}: still in flight after {:?}",
                asked.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ended = asked.elapsed();
        assert!(
            ended >= Duration::from_secs(1),
            "{engine}: ended after {ended:?}"
        );
        println!("{engine}: a client that stopped reading let go after {ended:?}");
        // Nothing more is pulled from the upstream for it.
        let sent = setup.stable.body_bytes_sent() + setup.canary.body_bytes_sent();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let later = setup.stable.body_bytes_sent() + setup.canary.body_bytes_sent();
        assert_eq!(sent, later, "{engine}: the upstream is still being read");
        assert!(later < 1 << 30, "{engine}: the whole response went");
        large(false);
    }
    // Each request counted once, with the status sent; no upstream was blamed.
    let exp = setup.cohort.metrics().await;
    let ok: f64 = ["stable", "canary"]
        .iter()
        .map(|v| {
            support::series_value(
                &exp,
                "cohort_requests_total",
                &[("route", "app"), ("variant", v), ("status", "200")],
            )
        })
        .sum();
    assert_eq!(ok, 5.0, "the upload and four large responses:\n{exp}");
    for kind in ["connect", "timeout", "reset", "tls", "protocol"] {
        for variant in ["stable", "canary"] {
            let errors = support::series_value(
                &exp,
                "cohort_upstream_errors_total",
                &[("route", "app"), ("variant", variant), ("kind", kind)],
            );
            assert_eq!(errors, 0.0, "{variant} blamed ({kind})");
        }
    }
    setup.shutdown().await;
}
