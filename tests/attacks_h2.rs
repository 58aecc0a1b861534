//! HTTP/2 abuse against a running cohort (DESIGN §10: "HTTP/2 also bounds what a
//! client can make cohort do for nothing"): rapid reset, CONTINUATION floods, resets
//! the server is made to send (MadeYouReset), empty DATA frames, SETTINGS and PING
//! floods. Each attack runs on loopback against a cohort in this process (one worker,
//! as in every test) with fake upstreams counting hits, while a bystander on its own
//! connections keeps sending ordinary HTTP/2 and HTTP/1 requests. Each test asserts
//! what cohort answered, how many requests reached the upstream, that the bystander
//! was served within its deadline throughout, and that this process's resident set
//! stayed bounded; it prints one row of the README's "HTTP/2 abuse" table
//! (`cargo test --test attacks_h2 -- --nocapture --test-threads 1`). Attacks are
//! measured one at a time, whatever the test threads.
mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::h2frames::{self as h2, H2Conn, Outcome};
use support::{Config, FakeUpstream, Route, TestCohort};

/// How long a bystander's request may take while an attack runs.
const DEADLINE: Duration = Duration::from_secs(2);

/// What the resident set of this process (cohort included) may grow by during one
/// attack. An attack that made cohort hold per-frame state would grow it by far more
/// (a few thousand frames of a kilobyte each, or the 40 MB an unread connection could
/// buffer with hyper's default send buffer).
const RSS_GROWTH_LIMIT: u64 = 24 * 1024 * 1024;

/// The path every attack request names, so the upstream hits it caused can be told
/// from the bystander's.
const ATTACK_PATH: &str = "/attack";

/// The route `app` over two fake upstreams, in a config `config` makes.
struct Target {
    cohort: TestCohort,
    stable: FakeUpstream,
    canary: FakeUpstream,
}

impl Target {
    async fn start(config: impl FnOnce(Config) -> Config) -> Target {
        let stable = FakeUpstream::start("stable").await;
        let canary = FakeUpstream::start("canary").await;
        let route = Route::new("app").stable(&stable).canary(&canary);
        let cohort = TestCohort::start(config(Config::new().route(route))).await;
        Target {
            cohort,
            stable,
            canary,
        }
    }

    /// Requests for [`ATTACK_PATH`] the upstreams have seen.
    fn attack_hits(&self) -> usize {
        let mut seen = self.stable.seen();
        seen.extend(self.canary.seen());
        seen.iter()
            .filter(|s| s.uri.starts_with(ATTACK_PATH))
            .count()
    }
}

/// What the bystander saw while an attack ran.
#[derive(Debug, Default)]
struct Watch {
    served: usize,
    failures: Vec<String>,
    slowest: Duration,
    peak_rss: u64,
}

/// Another client, on its own connections: an HTTP/2 (h2c) and an HTTP/1.1 request in
/// turn, every 20 ms, each with [`DEADLINE`]; it also samples this process's RSS.
struct Bystander {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Watch>,
}

impl Bystander {
    async fn start(proxy: SocketAddr) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let clients = [support::h2c_client(), support::client()];
            let mut watch = Watch::default();
            let mut turn = 0;
            // At least one request each way, however short the attack.
            while turn < 2 || !stopped.load(Ordering::SeqCst) {
                let client = &clients[turn % 2];
                turn += 1;
                let request = http::Request::get(format!("http://{proxy}/bystander"))
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let started = Instant::now();
                let answer = tokio::time::timeout(DEADLINE, async {
                    let response = client.request(request).await.map_err(|e| e.to_string())?;
                    let status = response.status().as_u16();
                    let body = response.into_body().collect().await;
                    body.map(|_| status).map_err(|e| e.to_string())
                })
                .await;
                watch.slowest = watch.slowest.max(started.elapsed());
                let protocol = if turn % 2 == 1 { "h2" } else { "http/1.1" };
                match answer {
                    Ok(Ok(200)) => watch.served += 1,
                    Ok(Ok(status)) => watch.failures.push(format!("{protocol}: {status}")),
                    Ok(Err(e)) => watch.failures.push(format!("{protocol}: {e}")),
                    Err(_) => watch
                        .failures
                        .push(format!("{protocol}: over {DEADLINE:?}")),
                }
                watch.peak_rss = watch.peak_rss.max(rss());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            watch
        });
        Bystander { stop, task }
    }

    async fn stop(self) -> Watch {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("bystander")
    }
}

fn rss() -> u64 {
    support::rss_of(std::process::id())
}

/// One attack's measurements.
struct Measured {
    outcome: Outcome,
    /// Attack frames the client managed to write.
    written: usize,
    attack_hits: usize,
    watch: Watch,
    rss_growth: u64,
    took: Duration,
}

impl Measured {
    /// Asserts what every attack must keep: the bystander served on time throughout,
    /// and the resident set bounded.
    fn assert_bounded(&self, name: &str) {
        assert!(
            self.watch.failures.is_empty(),
            "{name}: the bystander failed: {:?}",
            self.watch.failures
        );
        assert!(self.watch.served >= 2, "{name}: the bystander was served");
        assert!(
            self.rss_growth < RSS_GROWTH_LIMIT,
            "{name}: the resident set grew by {} MiB",
            self.rss_growth >> 20
        );
    }

    /// The attack ended in GOAWAY `ENHANCE_YOUR_CALM`, bounded: its README row printed
    /// and [`Measured::assert_bounded`] held.
    fn calmed(&self, name: &str) {
        self.row(name, "GOAWAY ENHANCE_YOUR_CALM");
        self.assert_bounded(name);
        assert_eq!(
            self.outcome.goaway.map(|(_, code)| code),
            Some(h2::ENHANCE_YOUR_CALM),
            "{name}"
        );
    }

    /// Prints the README table's row.
    fn row(&self, name: &str, what: &str) {
        println!(
            "| {name} | {what} | {} | {} served, slowest {} ms, 0 failed | +{:.1} MiB |",
            self.attack_hits,
            self.watch.served,
            self.watch.slowest.as_millis(),
            self.rss_growth as f64 / (1024.0 * 1024.0),
        );
        println!(
            "   ({name}: {} frames written in {} ms; {} (last stream {}); {} RST_STREAM; closed: {})",
            self.written,
            self.took.as_millis(),
            self.outcome.goaway_name(),
            self.outcome.goaway.map_or(0, |(last, _)| last),
            self.outcome.count(h2::RST_STREAM),
            self.outcome.closed,
        );
    }
}

/// One attack at a time in this process: the resident set is the whole process's, so
/// attacks measured side by side would count each other's memory (and the bystander's
/// deadline, each other's load).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `attack` against `target` while a bystander watches.
async fn under_attack<F, Fut>(target: &Target, attack: F) -> Measured
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: Future<Output = (Outcome, usize)>,
{
    let _alone = ONE_AT_A_TIME.lock().await;
    let proxy = target.cohort.proxy;
    let bystander = Bystander::start(proxy).await;
    // Warm: the bystander's connections and the upstream pools exist before the baseline.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss();
    let started = Instant::now();
    let (outcome, written) = attack(proxy).await;
    let took = started.elapsed();
    // The bystander goes on a moment after the attack, when late work would show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let watch = bystander.stop().await;
    let rss_growth = watch.peak_rss.max(rss()).saturating_sub(before);
    Measured {
        outcome,
        written,
        attack_hits: target.attack_hits(),
        watch,
        rss_growth,
        took,
    }
}

/// Floods a fresh connection with `frames` (read between batches), then reads what is
/// left until the server closes or is quiet for a second.
async fn flood(
    proxy: SocketAddr,
    frames: impl IntoIterator<Item = Vec<u8>>,
    batch: usize,
) -> (Outcome, usize) {
    let mut conn = H2Conn::handshake(proxy).await;
    let mut outcome = Outcome::default();
    let written = conn
        .flood(frames, batch, true, Duration::from_secs(5), &mut outcome)
        .await;
    conn.finish(&mut outcome, Duration::from_secs(1)).await;
    (outcome, written)
}

fn get() -> Vec<(&'static str, &'static str)> {
    h2::request_fields("GET", ATTACK_PATH)
}

fn post() -> Vec<(&'static str, &'static str)> {
    h2::request_fields("POST", ATTACK_PATH)
}

/// Client stream ids: 1, 3, 5, …
fn stream_ids(n: u32) -> impl Iterator<Item = u32> {
    (0..n).map(|i| 1 + 2 * i)
}

/// CVE-2023-44487: thousands of requests, each cancelled by the client at once. The
/// resets reach cohort before it accepted the streams, so none becomes a request; past
/// 20 such streams cohort sends GOAWAY ENHANCE_YOUR_CALM and closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_ends_in_goaway_with_few_upstream_requests() {
    let target = Target::start(|c| c).await;
    let measured = under_attack(&target, |proxy| {
        let frames = stream_ids(5000).flat_map(|id| {
            [
                h2::headers(id, h2::END_STREAM, &get()),
                h2::rst_stream(id, h2::CANCEL),
            ]
        });
        flood(proxy, frames, 200)
    })
    .await;
    let name = "rapid reset (HEADERS + RST_STREAM × 5000)";
    measured.row(name, "GOAWAY ENHANCE_YOUR_CALM");
    measured.assert_bounded(name);
    let (last, code) = measured.outcome.goaway.expect("a GOAWAY");
    assert_eq!(code, h2::ENHANCE_YOUR_CALM, "{last}");
    assert!(measured.outcome.closed, "the connection was closed");
    assert!(
        measured.attack_hits <= 100,
        "{} cancelled requests reached the upstream",
        measured.attack_hits
    );
    target.cohort.shutdown().await;
}

/// Rapid reset paced: each request on its own, its reset a millisecond later, so
/// cohort has accepted the stream (and started its request) before the reset arrives.
/// Each becomes a request cancelled at once (hyper drops its handler, and with it the
/// upstream exchange): at most one upstream request per stream the client opens, as
/// with ordinary requests, and no GOAWAY (no reset stream is left pending).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_rapid_reset_costs_at_most_one_cancelled_request_per_stream() {
    let target = Target::start(|c| c).await;
    let streams = 300;
    let measured = under_attack(&target, |proxy| async move {
        let mut conn = H2Conn::handshake(proxy).await;
        let mut outcome = Outcome::default();
        let mut written = 0;
        let stall = Duration::from_secs(5);
        for id in stream_ids(streams) {
            let open = [h2::headers(id, h2::END_STREAM, &get())];
            written += conn.flood(open, 1, true, stall, &mut outcome).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            let reset = [h2::rst_stream(id, h2::CANCEL)];
            written += conn.flood(reset, 1, true, stall, &mut outcome).await;
            if outcome.goaway.is_some() || outcome.closed {
                break;
            }
        }
        conn.finish(&mut outcome, Duration::from_millis(500)).await;
        (outcome, written)
    })
    .await;
    let name = "rapid reset, paced (RST 1 ms after HEADERS, × 300)";
    measured.row(
        name,
        "no GOAWAY: each stream one request, answered or cancelled",
    );
    measured.assert_bounded(name);
    assert_eq!(measured.outcome.goaway, None);
    assert!(
        measured.attack_hits <= streams as usize,
        "{} upstream requests for {streams} streams",
        measured.attack_hits
    );
    target.cohort.shutdown().await;
}

/// A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION
/// frames without end (each with one small field). h2 allows a header block as many
/// CONTINUATION frames as the header list limit needs (and 25 % more); one more is
/// GOAWAY ENHANCE_YOUR_CALM. Nothing reaches the upstream: the block never completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_ends_in_goaway() {
    let target = Target::start(|c| c).await;
    let measured = under_attack(&target, |proxy| {
        let first = h2::frame(h2::HEADERS, h2::END_STREAM, 1, &h2::hpack(&get()));
        let field = h2::hpack(&[("x-c", "continued")]);
        let frames = std::iter::once(first)
            .chain((0..100_000).map(move |_| h2::frame(h2::CONTINUATION, 0, 1, &field)));
        flood(proxy, frames, 10)
    })
    .await;
    let name = "CONTINUATION flood (small frames, no END_HEADERS)";
    measured.calmed(name);
    assert!(measured.written < 1000, "{} frames taken", measured.written);
    assert_eq!(measured.attack_hits, 0);
    target.cohort.shutdown().await;
}

/// The same with empty CONTINUATION frames: they add nothing to the list, so only the
/// frame count can stop them, and it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_continuation_flood_ends_in_goaway() {
    let target = Target::start(|c| c).await;
    let measured = under_attack(&target, |proxy| {
        let first = h2::frame(h2::HEADERS, h2::END_STREAM, 1, &h2::hpack(&get()));
        let frames = std::iter::once(first)
            .chain((0..100_000).map(|_| h2::frame(h2::CONTINUATION, 0, 1, &[])));
        flood(proxy, frames, 10)
    })
    .await;
    let name = "CONTINUATION flood (empty frames)";
    measured.calmed(name);
    assert!(measured.written < 1000, "{} frames taken", measured.written);
    assert_eq!(measured.attack_hits, 0);
    target.cohort.shutdown().await;
}

/// CONTINUATION frames of 16 KiB each (one 16,000-byte field apiece) totalling far past
/// `max_header_bytes`: the list passes h2's own limit, then four times it, where the
/// connection ends; whichever limit comes first, nothing is held past it and nothing
/// reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuations_totalling_past_max_header_bytes_end_in_goaway() {
    let target = Target::start(|c| c).await;
    let measured = under_attack(&target, |proxy| {
        let first = h2::frame(h2::HEADERS, h2::END_STREAM, 1, &h2::hpack(&get()));
        let value = "v".repeat(16_000);
        let frames = std::iter::once(first).chain((0..1000).map(move |i| {
            let name = format!("x-big-{i}");
            h2::frame(h2::CONTINUATION, 0, 1, &h2::hpack(&[(&name, &value)]))
        }));
        flood(proxy, frames, 4)
    })
    .await;
    let name = "CONTINUATION × 16 KiB (past max_header_bytes)";
    measured.calmed(name);
    assert!(measured.written < 100, "{} frames taken", measured.written);
    assert_eq!(measured.attack_hits, 0);
    target.cohort.shutdown().await;
}

/// What a MadeYouReset variant ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ends {
    /// Each offence resets its stream; past `H2_MAX_LOCAL_ERROR_RESETS` (100) such
    /// resets in a connection's life: GOAWAY ENHANCE_YOUR_CALM.
    AfterResets,
    /// h2 takes the first offence as a connection error: GOAWAY with this code at once.
    AtOnce(u32),
}

/// MadeYouReset (CVE-2025-8671): frames that make cohort reset a stream the client
/// opened, repeated 3000 times, each on a new stream.
async fn made_you_reset(name: &str, what: &str, ends: Ends, attack: impl Fn(u32) -> Vec<Vec<u8>>) {
    let target = Target::start(|c| c).await;
    let measured = under_attack(&target, |proxy| {
        let frames: Vec<Vec<u8>> = stream_ids(3000).flat_map(attack).collect();
        flood(proxy, frames, 20)
    })
    .await;
    measured.row(name, what);
    measured.assert_bounded(name);
    let (last, code) = measured.outcome.goaway.expect("a GOAWAY");
    match ends {
        Ends::AfterResets => {
            assert_eq!(code, h2::ENHANCE_YOUR_CALM, "{name}");
            // The GOAWAY names the last stream cohort processed: about 100 streams in
            // (0 if none was ever opened). Resets not yet written when the limit is hit
            // are dropped for the GOAWAY, so a fast client sees fewer than 100.
            assert!(last < 2 * 110, "{name}: GOAWAY after stream {last}");
            assert!(measured.outcome.count(h2::RST_STREAM) <= 101, "{name}");
        }
        Ends::AtOnce(want) => {
            assert_eq!(h2::error_name(code), h2::error_name(want), "{name}");
            assert_eq!(last, 1, "{name}: GOAWAY after the first stream");
        }
    }
    assert!(measured.outcome.closed, "{name}: closed");
    assert!(
        measured.attack_hits <= 100,
        "{name}: {} upstream requests",
        measured.attack_hits
    );
    target.cohort.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_you_reset_by_zero_window_updates_ends_in_goaway() {
    made_you_reset(
        "MadeYouReset: WINDOW_UPDATE 0 on an open stream × 3000",
        "GOAWAY PROTOCOL_ERROR at the first",
        Ends::AtOnce(h2::PROTOCOL_ERROR),
        |id| vec![h2::headers(id, 0, &post()), h2::window_update(id, 0)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_you_reset_by_data_beyond_content_length_ends_in_goaway() {
    made_you_reset(
        "MadeYouReset: DATA beyond content-length × 3000",
        "RST_STREAM PROTOCOL_ERROR each (≤ 100), then GOAWAY ENHANCE_YOUR_CALM",
        Ends::AfterResets,
        |id| {
            let mut fields = post();
            fields.push(("content-length", "1"));
            vec![
                h2::headers(id, 0, &fields),
                h2::data(id, h2::END_STREAM, b"xy"),
            ]
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_you_reset_by_data_on_a_half_closed_stream_ends_in_goaway() {
    made_you_reset(
        "MadeYouReset: DATA on a half-closed stream × 3000",
        "GOAWAY PROTOCOL_ERROR at the first",
        Ends::AtOnce(h2::PROTOCOL_ERROR),
        |id| {
            vec![
                h2::headers(id, h2::END_STREAM, &get()),
                h2::data(id, h2::END_STREAM, b"x"),
            ]
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_you_reset_by_malformed_headers_ends_in_goaway() {
    made_you_reset(
        "MadeYouReset: pseudo-header after a field × 3000",
        "RST_STREAM PROTOCOL_ERROR each (≤ 100), then GOAWAY ENHANCE_YOUR_CALM",
        Ends::AfterResets,
        |id| {
            let mut fields = vec![("x-first", "1")];
            fields.extend(get());
            vec![h2::headers(id, h2::END_STREAM, &fields)]
        },
    )
    .await;
}

/// DATA beyond the flow-control window cohort granted: 16 MiB on one stream, written
/// without reading a WINDOW_UPDATE, to an upstream that reads nothing for two seconds
/// (so cohort releases no window meanwhile). The overrun is a connection error (GOAWAY
/// FLOW_CONTROL_ERROR), so it cannot be repeated on that connection; cohort buffers no
/// more than the window it granted (1 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_beyond_the_flow_control_window_ends_in_goaway() {
    let slow = FakeUpstream::start("slow").await;
    slow.set_delay(Duration::from_secs(2));
    let target = Target::start(|c| {
        c.route(
            Route::new("slow")
                .path_prefix(ATTACK_PATH)
                .stable(&slow)
                .canary(&slow),
        )
    })
    .await;
    let measured = under_attack(&target, |proxy| {
        let chunk = vec![b'x'; 16 * 1024];
        let frames = std::iter::once(h2::headers(1, 0, &post()))
            .chain((0..1024).map(move |_| h2::data(1, 0, &chunk)));
        flood(proxy, frames, 8)
    })
    .await;
    let mut measured = measured;
    measured.attack_hits = slow.hits();
    let name = "DATA beyond the flow-control window (16 MiB on one stream)";
    measured.row(name, "GOAWAY FLOW_CONTROL_ERROR at once");
    measured.assert_bounded(name);
    assert_eq!(
        measured
            .outcome
            .goaway
            .map(|(_, code)| h2::error_name(code)),
        Some("FLOW_CONTROL_ERROR")
    );
    assert!(measured.outcome.closed);
    assert!(measured.attack_hits <= 1, "{}", measured.attack_hits);
    target.cohort.shutdown().await;
}

/// Empty DATA frames on one open stream carry nothing and cost no flow control; h2
/// allows 100 in a connection's life, then GOAWAY ENHANCE_YOUR_CALM. The stream's one
/// request reached the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_data_flood_ends_in_goaway() {
    let target = Target::start(|c| c).await;
    let measured = under_attack(&target, |proxy| {
        let frames = std::iter::once(h2::headers(1, 0, &post()))
            .chain((0..100_000).map(|_| h2::data(1, 0, &[])));
        flood(proxy, frames, 50)
    })
    .await;
    let name = "empty DATA × 100000 on one stream";
    measured.calmed(name);
    // h2 ends it at the 101st empty frame; the client wrote ahead of cohort's reading.
    assert!(
        measured.written < 10_000,
        "{} frames taken",
        measured.written
    );
    assert!(measured.attack_hits <= 1, "{}", measured.attack_hits);
    target.cohort.shutdown().await;
}

/// A flood of control frames each asking for an answer (SETTINGS: an ACK; PING: a PING
/// ACK), from a client that reads the answers: one answer per frame, written as the
/// frame is read, nothing held. No GOAWAY: the work is the client's own pace.
async fn control_flood_read(name: &str, frame: Vec<u8>, answer: u8) {
    let target = Target::start(|c| c).await;
    let count = 100_000;
    let measured = under_attack(&target, |proxy| {
        let frames = std::iter::repeat(frame).take(count);
        flood(proxy, frames, 500)
    })
    .await;
    // The SETTINGS sent with the preface is acknowledged too.
    let answers = measured.outcome.acks(answer) - usize::from(answer == h2::SETTINGS);
    measured.row(name, &format!("{answers} ACKs, no GOAWAY"));
    measured.assert_bounded(name);
    assert_eq!(measured.written, count);
    assert_eq!(measured.outcome.goaway, None);
    assert_eq!(answers, count, "one answer per frame");
    assert_eq!(measured.attack_hits, 0);
    target.cohort.shutdown().await;
}

/// The same flood from a client that never reads: h2 holds one unsent answer at a
/// time and reads no further frame until it is written, so once the socket buffers are
/// full cohort stops reading and the client stalls; nothing grows. The connection has
/// no stream in flight, so `idle_timeout` then closes it.
async fn control_flood_unread(name: &str, frame: Vec<u8>) {
    let target = Target::start(|c| c.idle_timeout("1s")).await;
    let measured = under_attack(&target, |proxy| async move {
        let mut conn = H2Conn::handshake(proxy).await;
        let mut outcome = Outcome::default();
        let frames = std::iter::repeat(frame).take(10_000_000);
        let stall = Duration::from_millis(500);
        let written = conn.flood(frames, 1000, false, stall, &mut outcome).await;
        // Stalled: cohort stopped reading. Now wait for the idle close.
        let started = Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            let mut sink = vec![0u8; 1 << 20];
            loop {
                use tokio::io::AsyncReadExt;
                match conn.stream.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        outcome.closed = closed.is_ok();
        println!(
            "   ({name}: closed {} ms after the client stalled)",
            started.elapsed().as_millis()
        );
        (outcome, written)
    })
    .await;
    measured.row(
        name,
        "stops reading once its answers back up; closed by idle_timeout",
    );
    measured.assert_bounded(name);
    assert!(
        measured.written < 10_000_000,
        "cohort stopped reading at some point"
    );
    assert!(measured.outcome.closed, "idle_timeout closed it");
    assert_eq!(measured.attack_hits, 0);
    target.cohort.shutdown().await;
}

fn a_settings_frame() -> Vec<u8> {
    h2::settings(&[(h2::SETTINGS_INITIAL_WINDOW_SIZE, 65_535)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_flood_from_a_reading_client_is_answered_frame_by_frame() {
    control_flood_read(
        "SETTINGS × 100000, client reads",
        a_settings_frame(),
        h2::SETTINGS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_flood_from_a_client_not_reading_stalls_then_closes() {
    control_flood_unread("SETTINGS flood, client never reads", a_settings_frame()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_from_a_reading_client_is_answered_frame_by_frame() {
    control_flood_read(
        "PING × 100000, client reads",
        h2::ping(*b"abcdefgh"),
        h2::PING,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_from_a_client_not_reading_stalls_then_closes() {
    control_flood_unread("PING flood, client never reads", h2::ping(*b"abcdefgh")).await;
}

/// A client that grants the largest flow-control windows, asks for large responses on
/// every stream it may open, and never reads: cohort holds at most `max_send_buf_size`
/// (64 KiB) per stream, where hyper's default (~400 KB) would be 40 MB a connection at
/// 100 streams; the rest waits in the upstream connections (kernel socket buffers). The
/// streams stay in flight, so `idle_timeout` does not apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_not_reading_large_responses_holds_a_bounded_send_buffer() {
    let big = FakeUpstream::start("big").await;
    big.set_reply(support::Reply::Pattern { len: 64 << 20 });
    let target = Target::start(|c| {
        c.route(
            Route::new("big")
                .path_prefix(ATTACK_PATH)
                .stable(&big)
                .canary(&big),
        )
    })
    .await;
    let streams = 100;
    let measured = under_attack(&target, |proxy| async move {
        let mut conn = H2Conn::handshake(proxy).await;
        let mut outcome = Outcome::default();
        // The largest windows a client may grant: flow control holds nothing back, and
        // only what cohort buffers per stream bounds it.
        let windows = [
            h2::settings(&[(h2::SETTINGS_INITIAL_WINDOW_SIZE, (1 << 31) - 1)]),
            h2::window_update(0, (1 << 31) - 1 - 65_535),
        ];
        let opens = windows
            .into_iter()
            .chain(stream_ids(streams).map(|id| h2::headers(id, h2::END_STREAM, &get())));
        let written = conn
            .flood(opens, 100, false, Duration::from_secs(5), &mut outcome)
            .await;
        // Every stream's response is under way and blocked on the client's window.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let held = rss();
        println!(
            "   (slow reader: RSS {} MiB with {streams} streams blocked)",
            held >> 20
        );
        (outcome, written)
    })
    .await;
    let name = "100 streams of 64 MiB responses, client never reads";
    let hits = big.hits();
    println!(
        "| {name} | holds ≤ 64 KiB a stream until the client reads | {hits} | {} served, slowest {} ms, 0 failed | +{:.1} MiB |",
        measured.watch.served,
        measured.watch.slowest.as_millis(),
        measured.rss_growth as f64 / (1024.0 * 1024.0)
    );
    // The general bound does not fit here: the upstream side of each stream holds
    // read buffers too (measured: +38 MiB in all at 64 KiB a stream, +129 MiB with
    // hyper's default send buffer).
    assert!(
        measured.watch.failures.is_empty(),
        "{name}: {:?}",
        measured.watch.failures
    );
    assert!(
        measured.rss_growth < 64 << 20,
        "{name}: the resident set grew by {} MiB",
        measured.rss_growth >> 20
    );
    assert_eq!(
        hits, streams as usize,
        "every stream is one upstream request"
    );
    target.cohort.shutdown().await;
}

/// PRIORITY frames for 100,000 streams the client never opens (RFC 9113 deprecates the
/// scheme, but the frames stay legal): h2 keeps no state for them and answers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_flood_on_idle_streams_is_ignored() {
    let target = Target::start(|c| c).await;
    let count = 100_000u32;
    let measured = under_attack(&target, |proxy| {
        let frames = stream_ids(count).map(|id| h2::priority(id, 0));
        flood(proxy, frames, 500)
    })
    .await;
    let name = "PRIORITY × 100000 on streams never opened";
    measured.row(name, "ignored: no answer, no GOAWAY");
    measured.assert_bounded(name);
    assert_eq!(measured.written, count as usize);
    assert_eq!(measured.outcome.goaway, None);
    assert_eq!(measured.attack_hits, 0);
    target.cohort.shutdown().await;
}

/// Streams opened past `h2_max_concurrent_streams` (a client ignoring the advertised
/// limit): each is refused (RST_STREAM REFUSED_STREAM) and counts with the resets of
/// MadeYouReset; past 100, GOAWAY ENHANCE_YOUR_CALM. Only the streams within the limit
/// reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_concurrency_limit_end_in_goaway() {
    let slow = FakeUpstream::start("slow").await;
    slow.set_delay(Duration::from_secs(2));
    let target = Target::start(|c| {
        c.h2_max_concurrent_streams(2).route(
            Route::new("slow")
                .path_prefix(ATTACK_PATH)
                .stable(&slow)
                .canary(&slow),
        )
    })
    .await;
    let mut measured = under_attack(&target, |proxy| async move {
        let mut conn = H2Conn::handshake(proxy).await;
        // Let cohort read the ACK of its SETTINGS: the limit is in force from then on.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut outcome = Outcome::default();
        let frames = stream_ids(1000).map(|id| h2::headers(id, h2::END_STREAM, &get()));
        let stall = Duration::from_secs(5);
        let written = conn.flood(frames, 10, true, stall, &mut outcome).await;
        conn.finish(&mut outcome, Duration::from_secs(1)).await;
        (outcome, written)
    })
    .await;
    measured.attack_hits = slow.hits();
    let name = "HEADERS past h2_max_concurrent_streams (2) × 1000";
    measured.row(
        name,
        "RST_STREAM REFUSED_STREAM each (≤ 100), then GOAWAY ENHANCE_YOUR_CALM",
    );
    measured.assert_bounded(name);
    assert_eq!(
        measured.outcome.goaway.map(|(_, code)| code),
        Some(h2::ENHANCE_YOUR_CALM)
    );
    assert!(measured.outcome.count(h2::RST_STREAM) <= 101);
    assert!(measured.attack_hits <= 2, "{}", measured.attack_hits);
    target.cohort.shutdown().await;
}
