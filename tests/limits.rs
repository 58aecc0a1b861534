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
/// header list never reaches the upstream (h2 answers 431 itself, uncounted).
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
