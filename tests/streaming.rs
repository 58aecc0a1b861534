//! Bodies stream through cohort both ways and are never buffered whole (DESIGN §1.7):
//! a gigabyte in each direction passes while this process's memory stays flat and
//! the sender is never more than the sockets' buffers ahead of the receiver.
//!
//! The fake upstream, cohort and the client all live in this process, so its resident
//! set is the sum of all three: if any of them held the body, the growth would be in
//! the gigabytes. Both tests pause the receiving side for a moment midway; a proxy
//! that read ahead without back-pressure would fill its memory during that pause.
mod support;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::{client, Config, FakeUpstream, PatternBody, PatternCheck, Reply, Route, TestCohort};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Where the receiver stops reading for [`PAUSE`].
const PAUSE_AT: u64 = 256 * MIB;
const PAUSE: Duration = Duration::from_millis(300);

/// Allowed growth of this process's resident set during a transfer. Streaming needs a
/// few hyper buffers per connection (about 400 KiB each at most) and some frames in
/// flight; 64 MiB leaves room for allocator slack and is still 1/16 of the body, so
/// holding even a sixteenth of it would fail.
const RSS_GROWTH_LIMIT: u64 = 64 * MIB;

/// The test measures one transfer at a time: two at once would share the process's
/// memory figure and the two CPUs.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rss() -> u64 {
    support::rss_of(std::process::id())
}

/// The most a sender may run ahead of its receiver when every hop applies
/// back-pressure: what the kernel buffers on the two TCP connections (send and receive
/// buffer each, at their autotuning maxima) plus 16 MiB for hyper's own buffers and
/// frames in flight. Unbounded read-ahead would blow through this during the pause.
fn in_flight_allowance() -> u64 {
    let max_of = |path: &str| -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
            .unwrap_or(8 * MIB)
    };
    let rmem = max_of("/proc/sys/net/ipv4/tcp_rmem");
    let wmem = max_of("/proc/sys/net/ipv4/tcp_wmem");
    2 * (rmem + wmem) + 16 * MIB
}

/// Samples the resident set and the sender's lead every 2 ms until stopped.
struct Gauge {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl Gauge {
    fn start(lead: impl Fn() -> u64 + Send + 'static) -> Gauge {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut peak_rss, mut peak_lead) = (0, 0);
            while !flag.load(Ordering::SeqCst) {
                peak_rss = peak_rss.max(rss());
                peak_lead = peak_lead.max(lead());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (peak_rss, peak_lead)
        });
        Gauge { stop, task }
    }

    /// (peak resident set, peak lead).
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("gauge")
    }
}

async fn start_cohort(stable: &FakeUpstream, canary: &FakeUpstream) -> TestCohort {
    // 1 GiB bodies, over the 10 MiB default `max_body`.
    let route = Route::new("app")
        .stable(stable)
        .canary(canary)
        .max_body("2GiB");
    let cohort = TestCohort::start(route).await;
    // Warm up: connections, pools and buffers exist before the baseline is taken.
    stable.set_reply(Reply::Pattern { len: 4 * MIB });
    let warm = support::get(&cohort.url("/warm-up"), &[]).await;
    assert_eq!(warm.body.len() as u64, 4 * MIB);
    cohort
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_download_streams_through_in_bounded_memory() {
    let _one = ONE_AT_A_TIME.lock().await;
    let stable = Arc::new(FakeUpstream::start("stable").await);
    let canary = FakeUpstream::start("canary").await;
    let cohort = start_cohort(&stable, &canary).await;
    stable.set_reply(Reply::Pattern { len: GIB });
    let sent_before = stable.body_bytes_sent();

    let baseline = rss();
    let received = Arc::new(AtomicU64::new(0));
    let gauge = Gauge::start({
        let (stable, received) = (stable.clone(), received.clone());
        move || {
            (stable.body_bytes_sent() - sent_before).saturating_sub(received.load(Ordering::SeqCst))
        }
    });

    let started = Instant::now();
    let resp = client()
        .request(
            Request::get(cohort.url("/big"))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("response headers");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-cohort-variant"], "stable");
    assert_eq!(resp.headers()[CONTENT_LENGTH], GIB.to_string().as_str());
    // Read frame by frame, checking each against the pattern and keeping nothing.
    let mut body = resp.into_body();
    let mut check = PatternCheck::default();
    let mut paused = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the body arrives uncut");
        let Ok(data) = frame.into_data() else {
            continue;
        };
        check.feed(&data);
        received.fetch_add(data.len() as u64, Ordering::SeqCst);
        if !paused && check.offset >= PAUSE_AT {
            paused = true;
            tokio::time::sleep(PAUSE).await;
        }
    }
    let took = started.elapsed();
    let (peak_rss, peak_lead) = gauge.finish().await;
    eprintln!(
        "download: 1 GiB in {took:?} ({:.0} MiB/s), RSS {} → peak {} MiB, upstream lead ≤ {} MiB",
        GIB as f64 / MIB as f64 / took.as_secs_f64(),
        baseline / MIB,
        peak_rss / MIB,
        peak_lead / MIB
    );

    assert_eq!(check.offset, GIB, "every byte arrived");
    assert!(check.ok, "the bytes arrived in order and intact");
    assert!(
        peak_rss.saturating_sub(baseline) < RSS_GROWTH_LIMIT,
        "resident set grew by {} MiB",
        peak_rss.saturating_sub(baseline) / MIB
    );
    assert!(
        peak_lead <= in_flight_allowance(),
        "the upstream ran {} MiB ahead of the client (allowed {} MiB)",
        peak_lead / MIB,
        in_flight_allowance() / MIB
    );
    assert_eq!(
        cohort
            .series_eventually(
                "cohort_requests_total",
                &[("route", "app"), ("variant", "stable"), ("status", "200")],
                2.0
            )
            .await,
        2.0
    );
    cohort.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_upload_streams_through_in_bounded_memory() {
    let _one = ONE_AT_A_TIME.lock().await;
    let stable = Arc::new(FakeUpstream::start("stable").await);
    let canary = FakeUpstream::start("canary").await;
    let cohort = start_cohort(&stable, &canary).await;
    stable.set_reply(Reply::Name);
    stable.pause_reading(PAUSE_AT, PAUSE);
    let read_before = stable.body_bytes_read();

    let baseline = rss();
    let produced = Arc::new(AtomicU64::new(0));
    let gauge = Gauge::start({
        let (stable, produced) = (stable.clone(), produced.clone());
        move || {
            produced
                .load(Ordering::SeqCst)
                .saturating_sub(stable.body_bytes_read() - read_before)
        }
    });

    // A chunked upload of unknown length, produced one frame at a time as the
    // connection takes it.
    let stream = tokio::net::TcpStream::connect(cohort.proxy)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let started = Instant::now();
    let resp = sender
        .send_request(
            Request::post("/upload")
                .header(HOST, "app.example")
                .body(PatternBody::new(GIB, false).with_counter(produced.clone()))
                .expect("request"),
        )
        .await
        .expect("response");
    let took = started.elapsed();
    let (peak_rss, peak_lead) = gauge.finish().await;
    let status = resp.status();
    let text = resp.into_body().collect().await.expect("body").to_bytes();
    eprintln!(
        "upload: 1 GiB in {took:?} ({:.0} MiB/s), RSS {} → peak {} MiB, client lead ≤ {} MiB",
        GIB as f64 / MIB as f64 / took.as_secs_f64(),
        baseline / MIB,
        peak_rss / MIB,
        peak_lead / MIB
    );

    assert_eq!(status, 200, "{text:?}");
    assert_eq!(&text[..], b"stable");
    let seen = stable.last_seen();
    assert_eq!(seen.body_len, GIB, "every byte arrived");
    assert!(
        seen.body_is_pattern,
        "the bytes arrived in order and intact"
    );
    assert!(
        seen.headers.get(CONTENT_LENGTH).is_none(),
        "an upload of unknown length stays chunked"
    );
    assert!(
        peak_rss.saturating_sub(baseline) < RSS_GROWTH_LIMIT,
        "resident set grew by {} MiB",
        peak_rss.saturating_sub(baseline) / MIB
    );
    assert!(
        peak_lead <= in_flight_allowance(),
        "the client ran {} MiB ahead of the upstream (allowed {} MiB)",
        peak_lead / MIB,
        in_flight_allowance() / MIB
    );
    cohort.shutdown().await;
}

/// A request body that trickles: `chunks` small frames, one every `every`.
struct TrickleBody {
    chunks: usize,
    every: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl TrickleBody {
    fn new(chunks: usize, every: Duration) -> TrickleBody {
        TrickleBody {
            chunks,
            every,
            timer: Box::pin(tokio::time::sleep(every)),
        }
    }
}

impl http_body::Body for TrickleBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.chunks == 0 {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(self.timer.as_mut().poll(cx));
        let next = tokio::time::Instant::now() + self.every;
        self.timer.as_mut().reset(next);
        self.chunks -= 1;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
            b"0123456789",
        )))))
    }
}

#[tokio::test]
async fn a_slow_upload_is_not_cut_by_the_wait_for_response_headers() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    // The upstream answers as soon as the body is in; the client needs ~800 ms to
    // send it, four times the time cohort allows for response headers.
    let cohort = TestCohort::start(
        Route::new("app")
            .stable(&stable)
            .canary(&canary)
            .request_timeout("200ms"),
    )
    .await;

    let stream = tokio::net::TcpStream::connect(cohort.proxy)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let started = Instant::now();
    let resp = sender
        .send_request(
            Request::post("/upload")
                .header(HOST, "app.example")
                .body(TrickleBody::new(8, Duration::from_millis(100)))
                .expect("request"),
        )
        .await
        .expect("response");
    let took = started.elapsed();
    assert_eq!(resp.status(), 200, "after {took:?}");
    assert!(took >= Duration::from_millis(790), "{took:?}");
    assert_eq!(stable.last_seen().body_len, 80);

    // The wait for headers still counts once the body is sent.
    stable.set_delay(Duration::from_secs(1));
    let resp = sender
        .send_request(
            Request::post("/upload")
                .header(HOST, "app.example")
                .body(TrickleBody::new(3, Duration::from_millis(100)))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), 504);
    cohort.shutdown().await;
}

#[tokio::test]
async fn an_upstream_that_stops_reading_an_upload_gets_504_after_the_timeout() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    // The upstream takes the request head, then reads nothing for 5 s.
    stable.set_delay(Duration::from_secs(5));
    let cohort = TestCohort::start(
        Config::new().drain_timeout("1s").route(
            Route::new("app")
                .stable(&stable)
                .canary(&canary)
                .request_timeout("300ms")
                // A 1 GiB upload, over the 10 MiB default.
                .max_body("2GiB"),
        ),
    )
    .await;

    let stream = tokio::net::TcpStream::connect(cohort.proxy)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let produced = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    // Far more than the socket buffers between cohort and a peer that does not read.
    let resp = sender
        .send_request(
            Request::post("/upload")
                .header(HOST, "app.example")
                .body(PatternBody::new(GIB, true).with_counter(produced.clone()))
                .expect("request"),
        )
        .await
        .expect("response");
    let took = started.elapsed();
    assert_eq!(resp.status(), 504, "after {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "a stalled upload is bounded: {took:?}"
    );
    assert!(
        produced.load(Ordering::SeqCst) < GIB,
        "the upload stalled before its end"
    );
    assert_eq!(
        cohort
            .series_eventually(
                "cohort_upstream_errors_total",
                &[("route", "app"), ("variant", "stable"), ("kind", "timeout")],
                1.0
            )
            .await,
        1.0
    );
    cohort.shutdown().await;
}
