//! Sick upstreams against a running cohort: each fault gets the right answer and the
//! right metric, and leaves nothing behind: the open file descriptors and resident set
//! are the same before and after a few hundred repetitions. The fault matrix runs
//! cohort in this process (`/proc/self/fd`, `VmRSS`), on cohort's own HTTP/1.1 engine,
//! hyper's (an HTTP/1.1 connection handed over after a chunked upload) and HTTP/2; the
//! long scenarios run the binary (`/proc/PID/fd`). (Single failures, one request each,
//! are in `failures.rs`; this file is about faults that repeat.)
//!
//! One test at a time: they count this process's descriptors and memory.

#[path = "support/process.rs"]
mod process;
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use process::{write_file, Cohort};
use support::{
    client, h2c_client, rss_of, send, AfterReply, Config, FakeUpstream, HttpClient, RawConn,
    RawUpstream, Route, TestCohort, PATIENCE,
};

/// One test at a time: each counts this process's file descriptors and memory (the
/// scenarios that run the binary hold upstreams and clients in this process too).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A cohort process serving `config`, its addresses, and the directory of its config.
struct Running {
    process: Cohort,
    proxy: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start(config: Config) -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write_file(dir.path(), "cohort.toml", &config.to_toml());
        let mut process = Cohort::spawn(&["run", "-c", &file]);
        let (proxy, admin) = process.wait_serving(PATIENCE * 2).await;
        Running {
            process,
            proxy,
            admin,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.proxy)
    }

    fn open_fds(&self) -> usize {
        let dir = format!("/proc/{}/fd", self.process.pid());
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {dir}: {e}"))
            .count()
    }

    fn rss(&self) -> u64 {
        rss_of(self.process.pid())
    }

    async fn series(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = support::get(&format!("http://{}/metrics", self.admin), &[])
            .await
            .text();
        support::prom::Exposition::parse(&text).sum(name, labels)
    }
}

/// An upstream that answers each request and then closes the connection without saying
/// so (no `Connection: close`): every pooled connection goes stale right after use.
#[tokio::test]
async fn an_upstream_closing_each_keep_alive_connection_costs_no_request() {
    let _serial = SERIAL.lock().await;
    let upstream = RawUpstream::start(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let cohort = Running::start(Config::from(
        Route::new("app").stable_urls(&[upstream.url()]),
    ))
    .await;
    let warm = client();
    let answer = send(&warm, "GET", &cohort.url(), &[], Bytes::new()).await;
    assert_eq!(answer.status, 200);
    let fds_before = cohort.open_fds();

    // The own HTTP/1.1 engine (an HTTP/1.1 client) and hyper's (HTTP/2 prior knowledge).
    for (engine, http) in [("own", client()), ("hyper", h2c_client())] {
        for i in 0..200 {
            let answer = send(&http, "GET", &cohort.url(), &[], Bytes::new()).await;
            assert_eq!(
                (answer.status, answer.text().as_str()),
                (200, "ok"),
                "{engine} engine, request {i}"
            );
        }
    }
    let errors = cohort
        .series("cohort_upstream_errors_total", &[("route", "app")])
        .await;
    assert_eq!(
        errors, 0.0,
        "a stale pooled connection is no upstream error"
    );
    drop(warm);
    assert!(
        upstream.connections() >= 400,
        "one upstream connection per request: {}",
        upstream.connections()
    );
    // Every stale connection was closed: the count settles where it started.
    let deadline = Instant::now() + PATIENCE;
    while cohort.open_fds() > fds_before + 2 {
        assert!(
            Instant::now() < deadline,
            "open fds {} -> {}",
            fds_before,
            cohort.open_fds()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One of two stable endpoints goes down and comes back every second for a minute: a
/// refused connection, also the one replacing a pooled connection the endpoint took
/// down with it, is retried on its sibling, so clients see 200s; what does fail (a
/// request the endpoint took and then dropped) is a 502 counted as such; open fds and
/// memory are flat afterwards.
#[tokio::test]
async fn an_endpoint_flapping_every_second_for_a_minute_beside_a_healthy_one() {
    let _serial = SERIAL.lock().await;
    let healthy = FakeUpstream::start("healthy").await;
    let flapping = FakeUpstream::start("flapping").await;
    let flapping_addr: SocketAddr = flapping
        .url()
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let cohort = Running::start(Config::from(
        Route::new("app").stable_urls(&[flapping.url(), healthy.url()]),
    ))
    .await;
    for _ in 0..20 {
        assert_eq!(support::get(&cohort.url(), &[]).await.status, 200);
    }
    let (fds_before, rss_before) = (cohort.open_fds(), cohort.rss());

    let done = Arc::new(AtomicBool::new(false));
    let flapper = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut up = Some(flapping);
            let mut flaps = 0;
            while !done.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                up = match up.take() {
                    Some(running) => {
                        running.stop_and_wait().await;
                        None
                    }
                    None => Some(FakeUpstream::restart_on("flapping", flapping_addr).await),
                };
                flaps += 1;
            }
            flaps
        })
    };
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let url = cohort.url();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (done, ok, failed, url) = (done.clone(), ok.clone(), failed.clone(), url.clone());
            tokio::spawn(async move {
                let http = client();
                while !done.load(Ordering::SeqCst) {
                    let answer = send(&http, "GET", &url, &[], Bytes::new()).await;
                    match answer.status {
                        200 => ok.fetch_add(1, Ordering::SeqCst),
                        502 => failed.fetch_add(1, Ordering::SeqCst),
                        other => panic!("unexpected {other}: {}", answer.text()),
                    };
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(
        std::env::var("FLAP_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    ))
    .await;
    done.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("client");
    }
    let flaps = flapper.await.expect("flapper");
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    let mut by_kind = Vec::new();
    for kind in ["connect", "timeout", "reset", "protocol"] {
        let labels = [("route", "app"), ("kind", kind)];
        let n = cohort.series("cohort_upstream_errors_total", &labels).await;
        by_kind.push(format!("{kind}={n}"));
    }
    eprintln!(
        "{flaps} flaps: {ok} answered 200, {failed} 502 ({})",
        by_kind.join(" ")
    );
    for line in cohort
        .process
        .stderr()
        .lines()
        .filter(|l| l.contains("failed"))
        .take(6)
    {
        eprintln!("{line}");
    }
    assert!(flaps >= 50, "the endpoint flapped {flaps} times");
    // The endpoint's connections die with it: a pooled one found closed is replaced,
    // and when the endpoint refuses the new connection, the sibling serves (one 502
    // per flap before that was fixed). A request the endpoint had taken when it went
    // away can still fail; that is rare.
    assert!(
        ok >= 1000 && failed * 10 < flaps,
        "{ok} ok, {failed} failed over {flaps} flaps"
    );
    let counted = cohort
        .series(
            "cohort_requests_total",
            &[("route", "app"), ("status", "502")],
        )
        .await;
    assert_eq!(counted, failed as f64, "every 502 a client saw is counted");

    // Afterwards: every request answered, nothing left open, memory flat.
    for _ in 0..20 {
        assert_eq!(support::get(&cohort.url(), &[]).await.status, 200);
    }
    let deadline = Instant::now() + PATIENCE;
    while cohort.open_fds() > fds_before + 4 {
        if Instant::now() >= deadline {
            // Where they go, when `ss` is there to say (diagnostics only).
            let ss = std::process::Command::new("ss").arg("-tanpH").output();
            let text = ss.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            let pid = format!("pid={},", cohort.process.pid());
            let mut by: std::collections::BTreeMap<String, usize> = Default::default();
            for line in text
                .iter()
                .flat_map(|t| t.lines())
                .filter(|l| l.contains(&pid))
            {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if let [state, _, _, _, peer, ..] = fields[..] {
                    *by.entry(format!("{state} {peer}")).or_default() += 1;
                }
            }
            panic!("open fds {} -> {}: {by:?}", fds_before, cohort.open_fds());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_after = cohort.rss();
    assert!(
        rss_after < rss_before + rss_before / 5 + 2 * 1024 * 1024,
        "RSS {rss_before} -> {rss_after}"
    );
}

// -------------------------------------------------------------------------------------
// The fault matrix, in this process
// -------------------------------------------------------------------------------------

const REQUESTS: &str = "cohort_requests_total";
const ERRORS: &str = "cohort_upstream_errors_total";

/// Repetitions of each fault on each engine (a leak of one descriptor or one buffer per
/// request shows far above the noise).
const REPEATS: usize = 300;
/// Requests in flight at once: the stalls take a timeout each.
const CONCURRENCY: usize = 30;

/// A chunked upload: cohort's own path hands the connection to hyper, which serves
/// every later request on it (the `up` route, to a healthy upstream).
const UPLOAD: &[u8] =
    b"POST /up HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";

/// Which engine serves the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    /// cohort's own HTTP/1.1 path (a plain HTTP/1.1 request).
    Own,
    /// hyper's, on an HTTP/1.1 connection handed over after a chunked upload.
    HyperH1,
    /// hyper's, HTTP/2 (prior knowledge).
    H2,
}

const ENGINES: [Engine; 3] = [Engine::Own, Engine::HyperH1, Engine::H2];

/// What a client got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Got {
    /// A whole response with this status.
    Whole(u16),
    /// This status, then the body ended early: HTTP/1 closed before its end, HTTP/2
    /// reset.
    Cut(u16),
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

fn rss() -> u64 {
    rss_of(std::process::id())
}

/// This process's descriptors and memory, to compare after the repetitions.
struct Footprint {
    fds: usize,
    rss: u64,
}

impl Footprint {
    fn now() -> Footprint {
        Footprint {
            fds: open_fds(),
            rss: rss(),
        }
    }

    /// Descriptors settle back (within a few: the clients' pools) and memory stays
    /// within a fifth plus 4 MiB (allocator caches), else the test fails with `what`.
    async fn assert_flat(&self, what: &str) {
        let deadline = Instant::now() + PATIENCE;
        while open_fds() > self.fds + 8 {
            assert!(
                Instant::now() < deadline,
                "{what}: open fds {} -> {}",
                self.fds,
                open_fds()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after = rss();
        assert!(
            after < self.rss + self.rss / 5 + 4 * 1024 * 1024,
            "{what}: RSS {} -> {after}",
            self.rss
        );
        eprintln!(
            "{what}: fds {} -> {}, RSS {} KiB -> {} KiB",
            self.fds,
            open_fds(),
            self.rss / 1024,
            after / 1024
        );
    }
}

/// A cohort in this process with two routes: `app` (`/`) to the sick upstream at
/// `sick`, and `up` (`/up`, for the uploads that hand a connection to hyper) to a
/// healthy one.
struct Matrix {
    cohort: TestCohort,
    _healthy: FakeUpstream,
    own: HttpClient,
    h2: HttpClient,
}

impl Matrix {
    async fn start(sick: &str, route: impl FnOnce(Route) -> Route) -> Matrix {
        Matrix::start_with(sick, route, cohort::StartOptions::new()).await
    }

    async fn start_with(
        sick: &str,
        route: impl FnOnce(Route) -> Route,
        options: cohort::StartOptions,
    ) -> Matrix {
        let healthy = FakeUpstream::start("healthy").await;
        let up = Route::new("up").path_prefix("/up").stable(&healthy);
        let app = route(Route::new("app").stable_urls(&[sick]));
        let config = Config::new().drain_timeout("1s").route(up).route(app);
        Matrix {
            cohort: TestCohort::start_with(config, options).await,
            _healthy: healthy,
            own: client(),
            h2: h2c_client(),
        }
    }

    /// `GET /` through `engine`.
    async fn get(&self, engine: Engine) -> Got {
        match engine {
            Engine::Own => fetch(&self.own, &self.cohort.url("/")).await,
            Engine::H2 => fetch(&self.h2, &self.cohort.url("/")).await,
            Engine::HyperH1 => {
                let mut conn = self.handed_over().await;
                // `close`, so the end of every answer is the end of the connection.
                let get = b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n";
                conn.write(get).await;
                read_got(&mut conn).await
            }
        }
    }

    /// A connection cohort's own path has handed to hyper.
    async fn handed_over(&self) -> RawConn {
        let mut conn = RawConn::connect(self.cohort.proxy).await;
        conn.write(UPLOAD).await;
        assert_eq!(conn.read_response(false).await.status, 200, "the upload");
        conn
    }

    /// `n` requests through `engine`, `CONCURRENCY` at a time; what each got.
    async fn repeat(self: &Arc<Self>, engine: Engine, n: usize) -> Vec<Got> {
        let mut got = Vec::with_capacity(n);
        for round in 0..n.div_ceil(CONCURRENCY) {
            let batch = CONCURRENCY.min(n - round * CONCURRENCY);
            let tasks: Vec<_> = (0..batch)
                .map(|_| {
                    let matrix = self.clone();
                    tokio::spawn(async move { matrix.get(engine).await })
                })
                .collect();
            for task in tasks {
                got.push(task.await.expect("request task"));
            }
        }
        got
    }

    /// The sum of the series of `name` that carry `labels` (others may vary).
    async fn series(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.cohort.metrics().await;
        support::prom::Exposition::parse(&text).sum(name, labels)
    }

    /// [`Matrix::series`] once it equals `want`, or its last value after [`PATIENCE`]
    /// (a request is counted when its body ends on cohort's side, a moment after the
    /// client has seen it).
    async fn series_eventually(&self, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.series(name, labels).await;
            if value == want || Instant::now() >= deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every series the route's upstream errors have, by kind.
    async fn errors_by_kind(&self) -> Vec<(String, f64)> {
        let mut by_kind = Vec::new();
        for kind in ["connect", "timeout", "reset", "tls", "protocol"] {
            let n = self
                .series(ERRORS, &[("route", "app"), ("kind", kind)])
                .await;
            by_kind.push((kind.to_owned(), n));
        }
        by_kind
    }
}

/// One GET on a hyper client: the status, and whether the body came whole.
async fn fetch(http: &HttpClient, url: &str) -> Got {
    let req = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(PATIENCE, http.request(req))
        .await
        .unwrap_or_else(|_| panic!("no response head from {url} in time"))
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(PATIENCE, resp.into_body().collect())
        .await
        .unwrap_or_else(|_| panic!("the body from {url} neither ended nor broke in time"));
    match body {
        Ok(_) => Got::Whole(status),
        Err(_) => Got::Cut(status),
    }
}

/// The one response on a raw HTTP/1.1 connection that closes after it: whole (by
/// `Content-Length`), or cut by a close before its end.
async fn read_got(conn: &mut RawConn) -> Got {
    let (status, headers) = conn.read_head().await;
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .expect("a content-length");
    let rest = conn.read_until_close().await;
    if rest.len() < length {
        Got::Cut(status)
    } else {
        Got::Whole(status)
    }
}

/// Asserts every client got `want`.
fn assert_all(got: &[Got], want: Got, what: &str) {
    let odd: Vec<_> = got.iter().filter(|g| **g != want).collect();
    assert!(
        odd.is_empty(),
        "{what}: {} of {} were not {want:?}: {:?}",
        odd.len(),
        got.len(),
        &odd[..odd.len().min(5)]
    );
}

/// A response head promising 100 bytes, and 10 of them.
const HEAD_AND_SOME: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789";

/// One fault on every engine: `REPEATS` requests each, every client gets `want`, each
/// counted once with `counted` as its status and once under `kind`, no other upstream
/// error, and descriptors and memory flat afterwards. `upstream_open` says how many
/// connections the sick upstream still has open (none may stay behind).
async fn fault(
    name: &str,
    matrix: Matrix,
    want: Got,
    counted: &str,
    kind: &str,
    upstream_open: impl Fn() -> usize,
) {
    let matrix = Arc::new(matrix);
    // Warm: pools, buffers and allocator arenas as a steady state has them.
    for engine in ENGINES {
        assert_all(&matrix.repeat(engine, CONCURRENCY).await, want, name);
    }
    let before = Footprint::now();
    for engine in ENGINES {
        let got = matrix.repeat(engine, REPEATS).await;
        assert_all(&got, want, &format!("{name}, {engine:?}"));
    }
    let total = (REPEATS + CONCURRENCY) * ENGINES.len();
    let counted_as = [("route", "app"), ("status", counted)];
    let requests = matrix
        .series_eventually(REQUESTS, &counted_as, total as f64)
        .await;
    assert_eq!(
        requests, total as f64,
        "{name}: counted with status {counted}"
    );
    for (k, n) in matrix.errors_by_kind().await {
        let expected = if k == kind { total as f64 } else { 0.0 };
        assert_eq!(n, expected, "{name}: upstream errors of kind {k}");
    }
    let deadline = Instant::now() + PATIENCE;
    while upstream_open() > 0 {
        assert!(
            Instant::now() < deadline,
            "{name}: cohort left {} upstream connections open",
            upstream_open()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    before.assert_flat(name).await;
    if let Ok(matrix) = Arc::try_unwrap(matrix) {
        matrix.cohort.shutdown().await;
    }
}

/// Headers, 10 of 100 promised body bytes, then a TCP reset: the client's stream is
/// cut after the status it already has (200), counted as a 200 and `kind="reset"`.
#[tokio::test]
async fn an_upstream_resetting_mid_body_cuts_each_stream_and_leaks_nothing() {
    let _serial = SERIAL.lock().await;
    let sick = RawUpstream::start_then(HEAD_AND_SOME, AfterReply::Reset).await;
    let matrix = Matrix::start(&sick.url(), |r| r).await;
    let open = || sick.open_connections();
    fault(
        "reset mid-body",
        matrix,
        Got::Cut(200),
        "200",
        "reset",
        open,
    )
    .await;
}

/// Reads the request and answers nothing: 504 after `timeouts.request`,
/// `kind="timeout"`, and the stalled upstream connection closed.
#[tokio::test]
async fn an_upstream_stalling_before_its_headers_gets_504_each_time() {
    let _serial = SERIAL.lock().await;
    let sick = RawUpstream::start_then(b"", AfterReply::Hold).await;
    let matrix = Matrix::start(&sick.url(), |r| r.request_timeout("200ms")).await;
    let open = || sick.open_connections();
    fault(
        "stall before headers",
        matrix,
        Got::Whole(504),
        "504",
        "timeout",
        open,
    )
    .await;
}

/// Headers, 10 of 100 promised body bytes, then silence with the connection open: after
/// `timeouts.idle` the client's stream is cut (HTTP/1 closed, HTTP/2 reset), counted as
/// the 200 it was and `kind="timeout"`; the upstream connection is closed. (Before
/// `timeouts.idle` the client waited for ever.)
#[tokio::test]
async fn an_upstream_stalling_mid_body_is_cut_after_the_idle_timeout() {
    let _serial = SERIAL.lock().await;
    let sick = RawUpstream::start_then(HEAD_AND_SOME, AfterReply::Hold).await;
    let matrix = Matrix::start(&sick.url(), |r| {
        r.request_timeout("5s").stream_idle_timeout("200ms")
    })
    .await;
    let open = || sick.open_connections();
    fault(
        "stall mid-body",
        matrix,
        Got::Cut(200),
        "200",
        "timeout",
        open,
    )
    .await;
}

/// The same stall from an HTTP/2 upstream (h2c): the stalled stream is reset alone
/// after `timeouts.idle`, each time, and the one shared upstream connection carries
/// every request (a stall must not cost the other streams their connection).
#[tokio::test]
async fn an_h2_upstream_stream_stalling_mid_body_is_reset_alone() {
    let _serial = SERIAL.lock().await;
    let upstream = FakeUpstream::start("h2c").await;
    upstream.set_reply(support::Reply::StallBody {
        sent: 10,
        promised: 100,
    });
    let matrix = Matrix::start(&upstream.url(), |r| {
        r.stable_protocol("h2c").stream_idle_timeout("200ms")
    })
    .await;
    fault(
        "h2c stall mid-body",
        matrix,
        Got::Cut(200),
        "200",
        "timeout",
        || 0,
    )
    .await;
    // One worker: one HTTP/2 connection to the upstream, for every request.
    assert_eq!(upstream.connections(), 1, "upstream connections");
    assert_eq!(upstream.hits(), (REPEATS + CONCURRENCY) * ENGINES.len());
}

/// A reply that is not HTTP: 502, `kind="protocol"`.
#[tokio::test]
async fn an_upstream_answering_garbage_gets_502_protocol_each_time() {
    let _serial = SERIAL.lock().await;
    let sick = RawUpstream::start(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
    let matrix = Matrix::start(&sick.url(), |r| r).await;
    let open = || sick.open_connections();
    fault("garbage", matrix, Got::Whole(502), "502", "protocol", open).await;
}

/// The idle timeout measures silence, not length: a body that keeps moving (a byte
/// every 100 ms for a second, longer than the 300 ms idle timeout five times over)
/// arrives whole on every engine.
#[tokio::test]
async fn a_slow_body_that_keeps_moving_is_not_cut() {
    let _serial = SERIAL.lock().await;
    let upstream = FakeUpstream::start("slow").await;
    upstream.set_reply(support::Reply::Drip {
        len: 10,
        every: Duration::from_millis(100),
    });
    let matrix = Matrix::start(&upstream.url(), |r| r.stream_idle_timeout("300ms")).await;
    for engine in ENGINES {
        assert_eq!(matrix.get(engine).await, Got::Whole(200), "{engine:?}");
    }
    for (kind, n) in matrix.errors_by_kind().await {
        assert_eq!(n, 0.0, "upstream errors of kind {kind}");
    }
    matrix.cohort.shutdown().await;
}

/// A client that starts a chunked upload and stops sending: hyper's engine (both
/// HTTP/1.1 and HTTP/2; cohort's own path reads a body whole within `header_timeout`)
/// answers 408 after `timeouts.idle`, counted under the route as a 408 and not as an
/// upstream error (it was the client), and the upstream request is abandoned.
#[tokio::test]
async fn a_client_upload_that_stalls_gets_408_and_blames_no_upstream() {
    let _serial = SERIAL.lock().await;
    let upstream = FakeUpstream::start("patient").await;
    let matrix = Matrix::start(&upstream.url(), |r| {
        r.request_timeout("30s").stream_idle_timeout("300ms")
    })
    .await;
    let before = Footprint::now();
    const ROUNDS: usize = 20;
    for _ in 0..ROUNDS {
        // HTTP/1.1, on a connection hyper serves.
        let mut conn = matrix.handed_over().await;
        conn.write(b"POST /stall HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await;
        let started = Instant::now();
        let answer = conn.read_response(false).await;
        assert_eq!(answer.status, 408, "{}", answer.text());
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert!(conn.closed_within(PATIENCE).await, "closed after the 408");

        // HTTP/2: the body stream stays open and silent.
        assert_eq!(h2_stalled_upload(&matrix.cohort).await, 408);
    }
    let labels = [("route", "app"), ("status", "408")];
    let counted = matrix
        .series_eventually(REQUESTS, &labels, (2 * ROUNDS) as f64)
        .await;
    assert_eq!(counted, (2 * ROUNDS) as f64);
    for (kind, n) in matrix.errors_by_kind().await {
        assert_eq!(n, 0.0, "upstream errors of kind {kind}");
    }
    before.assert_flat("stalled uploads").await;
    matrix.cohort.shutdown().await;
}

/// Sends a POST over HTTP/2 whose body sends 5 bytes and then nothing (its sender
/// kept open); the status cohort answers.
async fn h2_stalled_upload(cohort: &TestCohort) -> u16 {
    let tcp = tokio::net::TcpStream::connect(cohort.proxy)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
    tx.send(Ok(Frame::data(Bytes::from_static(b"hello"))))
        .await
        .expect("first frame");
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = http::Request::post(cohort.url("/stall"))
        .body(body)
        .expect("request");
    let resp = tokio::time::timeout(PATIENCE, sender.send_request(req))
        .await
        .expect("an answer in time")
        .expect("response");
    let status = resp.status().as_u16();
    drop(tx);
    drop(sender);
    driver.abort();
    status
}

// -------------------------------------------------------------------------------------
// A hostname that stops resolving
// -------------------------------------------------------------------------------------

/// The test's resolver: `svc.test` is 127.0.0.1 while `resolving` is set, and no such
/// name otherwise; counts the questions.
#[derive(Clone, Default)]
struct FlakyDns {
    resolving: Arc<AtomicBool>,
    asked: Arc<AtomicUsize>,
}

impl cohort::Resolve for FlakyDns {
    fn resolve(&self, host: &str, port: u16) -> cohort::Resolved {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let answer = if host == "svc.test" && self.resolving.load(Ordering::SeqCst) {
            Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host}: no such name (the test's resolver)"),
            ))
        };
        Box::pin(async move { answer })
    }
}

/// What cohort logs, captured once for this test binary (cohort's workers are threads
/// of their own, so only a global subscriber sees their lines).
fn captured_logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(logs))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        logs
    })
}

struct LogWriter(&'static Mutex<Vec<u8>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs_text() -> String {
    String::from_utf8_lossy(&captured_logs().lock().expect("log lock")).into_owned()
}

/// `http://svc.test:PORT` through the test's resolver. While the name resolves,
/// everything works; when it stops, pooled connections keep serving and new ones go to
/// the last good address (as Envoy's `strict_dns` keeps its hosts), so even an upstream
/// restart in the middle of the outage costs no request; it is logged once. Nothing
/// grows over a few hundred requests.
#[tokio::test]
async fn a_name_that_stops_resolving_keeps_its_last_good_addresses() {
    let _serial = SERIAL.lock().await;
    captured_logs();
    let upstream = FakeUpstream::start("named").await;
    let dns = FlakyDns::default();
    dns.resolving.store(true, Ordering::SeqCst);
    let url = format!("http://svc.test:{}", upstream.addr.port());
    let options = cohort::StartOptions::new().resolver(dns.clone());
    let matrix = Arc::new(Matrix::start_with(&url, |r| r, options).await);
    for engine in ENGINES {
        assert_all(
            &matrix.repeat(engine, CONCURRENCY).await,
            Got::Whole(200),
            "resolving",
        );
    }
    assert!(
        dns.asked.load(Ordering::SeqCst) > 0,
        "the resolver was asked"
    );

    dns.resolving.store(false, Ordering::SeqCst);
    let before = Footprint::now();
    // The upstream restarts on the same address: every pooled connection is gone.
    let addr = upstream.addr;
    upstream.stop_and_wait().await;
    let upstream = FakeUpstream::restart_on("named", addr).await;
    let asked = dns.asked.load(Ordering::SeqCst);
    for engine in ENGINES {
        let got = matrix.repeat(engine, REPEATS).await;
        assert_all(&got, Got::Whole(200), &format!("not resolving, {engine:?}"));
    }
    assert!(
        dns.asked.load(Ordering::SeqCst) > asked,
        "new connections asked the resolver"
    );
    assert!(upstream.hits() >= REPEATS * ENGINES.len());
    for (kind, n) in matrix.errors_by_kind().await {
        assert_eq!(n, 0.0, "upstream errors of kind {kind}");
    }
    let logs = logs_text();
    let stale = logs
        .lines()
        .filter(|l| l.contains("no longer resolves") && l.contains("svc.test"))
        .count();
    assert_eq!(stale, 1, "the outage is logged once:\n{logs}");
    before.assert_flat("name not resolving").await;

    dns.resolving.store(true, Ordering::SeqCst);
    assert_eq!(matrix.get(Engine::Own).await, Got::Whole(200));
    if let Ok(matrix) = Arc::try_unwrap(matrix) {
        matrix.cohort.shutdown().await;
    }
}

/// A name that has never resolved has no last good address: 502, counted as
/// `kind="connect"`, the warning naming the endpoint and why (`cannot resolve
/// svc.test:PORT`); once the name resolves, requests go through again. Nothing grows
/// meanwhile.
#[tokio::test]
async fn a_name_that_never_resolved_gets_502_connect_and_recovers() {
    let _serial = SERIAL.lock().await;
    captured_logs();
    let upstream = FakeUpstream::start("named").await;
    let dns = FlakyDns::default();
    let url = format!("http://svc.test:{}", upstream.addr.port());
    let options = cohort::StartOptions::new().resolver(dns.clone());
    let matrix = Matrix::start_with(&url, |r| r, options).await;
    let matrix = Arc::new(matrix);
    for engine in ENGINES {
        assert_all(
            &matrix.repeat(engine, CONCURRENCY).await,
            Got::Whole(502),
            "warm",
        );
    }
    let before = Footprint::now();
    for engine in ENGINES {
        let got = matrix.repeat(engine, REPEATS).await;
        assert_all(
            &got,
            Got::Whole(502),
            &format!("never resolved, {engine:?}"),
        );
    }
    let total = ((REPEATS + CONCURRENCY) * ENGINES.len()) as f64;
    let connect = [("route", "app"), ("kind", "connect")];
    assert_eq!(matrix.series(ERRORS, &connect).await, total);
    let counted = [("route", "app"), ("status", "502")];
    assert_eq!(
        matrix.series_eventually(REQUESTS, &counted, total).await,
        total
    );
    assert_eq!(upstream.hits(), 0);
    let reason = format!("cannot resolve svc.test:{}", upstream.addr.port());
    let logs = logs_text();
    assert!(
        logs.lines().any(|l| l.contains("upstream request failed")
            && l.contains("kind=connect")
            && l.contains(&reason)),
        "a warning naming {reason:?}:\n{logs}"
    );
    before.assert_flat("name never resolved").await;

    dns.resolving.store(true, Ordering::SeqCst);
    for engine in ENGINES {
        assert_eq!(
            matrix.get(engine).await,
            Got::Whole(200),
            "{engine:?} recovered"
        );
    }
    if let Ok(matrix) = Arc::try_unwrap(matrix) {
        matrix.cohort.shutdown().await;
    }
}
