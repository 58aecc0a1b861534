//! The failure table of DESIGN §1: what a client gets, and what is counted, when an
//! upstream refuses, hangs, dies mid-run, cuts a body or speaks nonsense, and when the
//! client itself leaves early. Plus endpoint choice: round robin and the one retry on
//! the same variant, on both engines.
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use support::{
    client, eventually, get, h2c_client, key_in, refused_addr, send, user_route, Blackhole, Config,
    FakeUpstream, RawConn, RawUpstream, Reply, Route, TestCohort,
};

const REQUESTS: &str = "cohort_requests_total";
const ERRORS: &str = "cohort_upstream_errors_total";
const RETRIES: &str = "cohort_upstream_retries_total";

fn requests<'a>(variant: &'a str, status: &'a str) -> [(&'a str, &'a str); 3] {
    [("route", "app"), ("variant", variant), ("status", status)]
}

fn errors<'a>(variant: &'a str, kind: &'a str) -> [(&'a str, &'a str); 3] {
    [("route", "app"), ("variant", variant), ("kind", kind)]
}

/// The route `app` with explicit endpoint lists.
fn route_with(stable: &[String], canary: &[String]) -> Route {
    Route::new("app")
        .sticky(&["header:x-user-id"])
        .stable_urls(stable)
        .canary_urls(canary)
}

// ---------------------------------------------------------------------------------------
// A canary dies mid-run
// ---------------------------------------------------------------------------------------

struct Outcome {
    want: &'static str,
    started: Instant,
    finished: Instant,
    status: u16,
    variant: Option<String>,
    body: String,
}

#[tokio::test]
async fn a_canary_stopped_mid_run_fails_alone_and_stable_never_notices() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(user_route("app", &stable, &canary).canary_percent(50)).await;
    let users = [
        ("stable", key_in("stable", "app-salt", 50.0, "user")),
        ("canary", key_in("canary", "app-salt", 50.0, "user")),
    ];

    // A client sending a steady mix, one request after the other on a kept-alive
    // connection, until told to stop.
    let sent = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let driver = {
        let (sent, done, url) = (sent.clone(), done.clone(), cohort.url("/work"));
        let users = users.clone();
        tokio::spawn(async move {
            let http = client();
            let mut outcomes = Vec::new();
            for n in 0.. {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let (want, user) = &users[n % 2];
                let started = Instant::now();
                let answer = send(&http, "GET", &url, &[("x-user-id", user)], Bytes::new()).await;
                outcomes.push(Outcome {
                    want,
                    started,
                    finished: Instant::now(),
                    status: answer.status,
                    variant: answer.variant().map(str::to_owned),
                    body: answer.text(),
                });
                sent.fetch_add(1, Ordering::SeqCst);
            }
            outcomes
        })
    };

    eventually("40 requests before the stop", || {
        sent.load(Ordering::SeqCst) >= 40
    })
    .await;
    let stop_began = Instant::now();
    canary.stop_and_wait().await;
    let stopped = Instant::now();
    let at_stop = sent.load(Ordering::SeqCst);
    eventually("80 requests after the stop", || {
        sent.load(Ordering::SeqCst) >= at_stop + 80
    })
    .await;
    done.store(true, Ordering::SeqCst);
    let outcomes = driver.await.expect("driver");

    let (mut stable_ok, mut canary_502, mut canary_after) = (0, 0, 0);
    for o in &outcomes {
        assert_eq!(
            o.variant.as_deref(),
            Some(o.want),
            "{} {}",
            o.status,
            o.body
        );
        if o.want == "stable" {
            assert_eq!(
                (o.status, o.body.as_str()),
                (200, "stable"),
                "a stable request failed"
            );
            stable_ok += 1;
            continue;
        }
        if o.status == 502 {
            canary_502 += 1;
        }
        if o.finished < stop_began {
            assert_eq!(o.status, 200, "canary failed before it was stopped");
        } else if o.started >= stopped {
            canary_after += 1;
            assert_eq!(o.status, 502, "canary request after the stop: {}", o.body);
            assert!(o.body.contains("connection failed"), "{}", o.body);
        }
    }
    assert!(
        canary_after >= 40,
        "{canary_after} canary requests after the stop"
    );
    assert_eq!(
        cohort
            .series_eventually(REQUESTS, &requests("canary", "502"), canary_502 as f64)
            .await,
        canary_502 as f64
    );
    let connect = cohort.series(ERRORS, &errors("canary", "connect")).await;
    let reset = cohort.series(ERRORS, &errors("canary", "reset")).await;
    assert!(
        connect >= canary_after as f64,
        "{connect} connect errors for {canary_after} requests after the stop"
    );
    assert_eq!(
        connect + reset,
        canary_502 as f64,
        "each 502 has its cause counted once (a request caught by the stop itself may be a reset)"
    );
    assert_eq!(
        cohort
            .series_eventually(REQUESTS, &requests("stable", "200"), stable_ok as f64)
            .await,
        stable_ok as f64
    );
    for kind in ["connect", "timeout", "reset", "tls", "protocol"] {
        assert_eq!(cohort.series(ERRORS, &errors("stable", kind)).await, 0.0);
    }

    // A restarted canary serves again (nothing in cohort stays broken).
    let revived = FakeUpstream::restart_on("canary", canary.addr).await;
    let answer = get(&cohort.url("/work"), &[("x-user-id", &users[1].1)]).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "canary"));
    assert_eq!(revived.hits(), 1);
    cohort.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_upstream_slower_than_the_request_timeout_gets_504() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    stable.set_delay(Duration::from_secs(1));
    let cohort = TestCohort::start(
        Config::new().drain_timeout("1s").route(
            Route::new("app")
                .stable(&stable)
                .canary(&canary)
                .request_timeout("200ms"),
        ),
    )
    .await;

    let started = Instant::now();
    let answer = get(&cohort.url("/slow"), &[]).await;
    let took = started.elapsed();
    assert_eq!(answer.status, 504);
    assert_eq!(answer.variant(), Some("stable"));
    assert!(answer.text().contains("timed out"), "{}", answer.text());
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(900),
        "answered after {took:?}"
    );
    assert_eq!(stable.hits(), 1, "the request did reach the upstream");
    assert_eq!(
        cohort
            .series_eventually(REQUESTS, &requests("stable", "504"), 1.0)
            .await,
        1.0
    );
    assert_eq!(
        cohort.series(ERRORS, &errors("stable", "timeout")).await,
        1.0
    );
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_connect_that_hangs_gets_504_or_the_other_endpoint() {
    let blackhole = Blackhole::start();
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;

    // The only endpoint never completes the handshake.
    let cohort =
        TestCohort::start(route_with(&[blackhole.url()], &[canary.url()]).connect_timeout("200ms"))
            .await;
    let started = Instant::now();
    let answer = get(&cohort.url("/"), &[]).await;
    let took = started.elapsed();
    assert_eq!(answer.status, 504, "{}", answer.text());
    assert_eq!(answer.variant(), Some("stable"));
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(900),
        "answered after {took:?}"
    );
    assert_eq!(
        cohort
            .series_eventually(REQUESTS, &requests("stable", "504"), 1.0)
            .await,
        1.0
    );
    assert_eq!(
        cohort.series(ERRORS, &errors("stable", "timeout")).await,
        1.0
    );
    assert_eq!(canary.hits(), 0, "never the other variant");
    cohort.shutdown().await;

    // Beside a working endpoint, a hanging one costs one connect timeout, not the request.
    let cohort = TestCohort::start(
        route_with(&[blackhole.url(), stable.url()], &[canary.url()]).connect_timeout("200ms"),
    )
    .await;
    for _ in 0..2 {
        let answer = get(&cohort.url("/"), &[]).await;
        assert_eq!((answer.status, answer.text().as_str()), (200, "stable"));
    }
    assert_eq!(stable.hits(), 2);
    assert_eq!(canary.hits(), 0);
    cohort.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Endpoint choice
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_refusing_endpoint_is_retried_on_its_sibling_never_on_the_other_variant() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(
        route_with(
            &[format!("http://{}", refused_addr()), stable.url()],
            &[
                format!("http://{}", refused_addr()),
                format!("http://{}", refused_addr()),
            ],
        )
        .canary_percent(50),
    )
    .await;
    let stable_user = key_in("stable", "app-salt", 50.0, "user");
    let canary_user = key_in("canary", "app-salt", 50.0, "user");

    // Round robin starts every other request on the refusing endpoint.
    for _ in 0..10 {
        let answer = get(&cohort.url("/"), &[("x-user-id", &stable_user)]).await;
        assert_eq!((answer.status, answer.text().as_str()), (200, "stable"));
        assert_eq!(answer.variant(), Some("stable"));
    }
    assert_eq!(stable.hits(), 10);

    // Every canary endpoint refuses: 502 for the canary, the stable upstream untouched.
    for _ in 0..4 {
        let answer = get(&cohort.url("/"), &[("x-user-id", &canary_user)]).await;
        assert_eq!(answer.status, 502);
        assert_eq!(answer.variant(), Some("canary"));
    }
    assert_eq!(stable.hits(), 10, "never the other variant");
    assert_eq!(canary.hits(), 0);
    assert_eq!(
        cohort
            .series_eventually(REQUESTS, &requests("canary", "502"), 4.0)
            .await,
        4.0
    );
    assert_eq!(
        cohort.series(ERRORS, &errors("canary", "connect")).await,
        4.0
    );
    assert_eq!(
        cohort
            .series_eventually(REQUESTS, &requests("stable", "200"), 10.0)
            .await,
        10.0
    );
    // The refusals the retry took over are counted apart: half the stable requests
    // (their clients got 200s), and each canary request's first attempt.
    assert_eq!(
        cohort.series(RETRIES, &errors("stable", "connect")).await,
        5.0
    );
    assert_eq!(
        cohort.series(RETRIES, &errors("canary", "connect")).await,
        4.0
    );
    assert_eq!(
        cohort.series(ERRORS, &errors("stable", "connect")).await,
        0.0
    );
    cohort.shutdown().await;
}

/// The same rule on hyper's engine: HTTP/2 requests (h2c) never reach cohort's own
/// HTTP/1.1 path, so this is the retry of `crate::proxy`, taken from the one policy.
#[tokio::test]
async fn over_http2_a_refusing_endpoint_is_retried_on_its_sibling_never_on_the_other_variant() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(
        route_with(
            &[
                format!("http://{}", refused_addr()),
                format!("http://{}", refused_addr()),
            ],
            &[format!("http://{}", refused_addr()), canary.url()],
        )
        .canary_percent(50),
    )
    .await;
    let stable_user = key_in("stable", "app-salt", 50.0, "user");
    let canary_user = key_in("canary", "app-salt", 50.0, "user");
    let h2 = h2c_client();

    // Round robin starts every other request on the refusing canary endpoint; each is
    // answered by the live one of the same variant.
    for _ in 0..10 {
        let answer = send(
            &h2,
            "GET",
            &cohort.url("/"),
            &[("x-user-id", &canary_user)],
            Bytes::new(),
        )
        .await;
        assert_eq!((answer.status, answer.text().as_str()), (200, "canary"));
        assert_eq!(answer.variant(), Some("canary"));
    }
    assert_eq!(canary.hits(), 10);
    assert_eq!(stable.hits(), 0, "never the other variant");

    // Every stable endpoint refuses: 502 for stable users, the canary untouched, and
    // each failed request counted once as a connect error.
    for _ in 0..4 {
        let answer = send(
            &h2,
            "GET",
            &cohort.url("/"),
            &[("x-user-id", &stable_user)],
            Bytes::new(),
        )
        .await;
        assert_eq!(answer.status, 502);
        assert_eq!(answer.variant(), Some("stable"));
    }
    assert_eq!(canary.hits(), 10, "never the other variant");
    assert_eq!(stable.hits(), 0);
    assert_eq!(
        cohort
            .series_eventually(REQUESTS, &requests("stable", "502"), 4.0)
            .await,
        4.0
    );
    assert_eq!(
        cohort.series(ERRORS, &errors("stable", "connect")).await,
        4.0
    );
    assert_eq!(
        cohort
            .series_eventually(REQUESTS, &requests("canary", "200"), 10.0)
            .await,
        10.0
    );
    // A refusal the retry made good is not a failed request (DESIGN §1.8 counts the
    // cause of a response cohort could not get), on either engine.
    assert_eq!(
        cohort.series(ERRORS, &errors("canary", "connect")).await,
        0.0
    );
    assert_eq!(
        cohort.series(RETRIES, &errors("canary", "connect")).await,
        5.0
    );
    assert_eq!(
        cohort.series(RETRIES, &errors("stable", "connect")).await,
        4.0
    );
    cohort.shutdown().await;
}

#[tokio::test]
async fn endpoints_of_a_variant_take_turns() {
    let a = FakeUpstream::start("a").await;
    let b = FakeUpstream::start("b").await;
    let c = FakeUpstream::start("c").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(route_with(&[a.url(), b.url(), c.url()], &[canary.url()])).await;
    let http = client();
    let mut order = Vec::new();
    for _ in 0..30 {
        let answer = send(&http, "GET", &cohort.url("/"), &[], Bytes::new()).await;
        assert_eq!(answer.status, 200);
        order.push(answer.text());
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (10, 10, 10), "{order:?}");
    for (i, name) in order.iter().enumerate() {
        assert_eq!(name, &order[i % 3], "a strict rotation: {order:?}");
    }
    assert_eq!(canary.hits(), 0);
    cohort.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Upstreams that break the response
// ---------------------------------------------------------------------------------------

/// Sends a GET and reads the body to its end or its cut: (status, variant, bytes, cut).
async fn get_streamed(url: &str) -> (u16, Option<String>, usize, bool) {
    let resp = client()
        .request(
            Request::get(url)
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("response headers");
    let status = resp.status().as_u16();
    let variant = resp
        .headers()
        .get("x-cohort-variant")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let mut body = resp.into_body();
    let mut received = 0;
    loop {
        match body.frame().await {
            None => return (status, variant, received, false),
            Some(Err(_)) => return (status, variant, received, true),
            Some(Ok(frame)) => received += frame.data_ref().map_or(0, Bytes::len),
        }
    }
}

#[tokio::test]
async fn an_upstream_cutting_the_body_after_its_headers_cuts_the_client_stream() {
    for promised in [None, Some(1_048_576)] {
        let stable = FakeUpstream::start("stable").await;
        let canary = FakeUpstream::start("canary").await;
        stable.set_reply(Reply::CutBody {
            sent: 64 * 1024,
            promised,
        });
        let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;

        let (status, variant, received, cut) = get_streamed(&cohort.url("/file")).await;
        assert_eq!(status, 200, "the headers had already left ({promised:?})");
        assert_eq!(variant.as_deref(), Some("stable"));
        assert!(
            cut,
            "the client must see a cut stream, not a clean end ({promised:?})"
        );
        assert!(received <= 64 * 1024, "{received}");
        assert_eq!(
            cohort
                .series_eventually(ERRORS, &errors("stable", "reset"), 1.0)
                .await,
            1.0,
            "{promised:?}"
        );
        assert_eq!(
            cohort
                .series_eventually(REQUESTS, &requests("stable", "200"), 1.0)
                .await,
            1.0,
            "a cut stream keeps its status"
        );

        // The broken connection is not reused: the next request is served normally.
        stable.set_reply(Reply::Name);
        let answer = get(&cohort.url("/again"), &[]).await;
        assert_eq!((answer.status, answer.text().as_str()), (200, "stable"));
        cohort.shutdown().await;
    }
}

#[tokio::test]
async fn an_upstream_closing_before_its_headers_gets_502_reset() {
    let closer = RawUpstream::start(b"").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(route_with(&[closer.url()], &[canary.url()])).await;

    let answer = get(&cohort.url("/"), &[]).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.variant(), Some("stable"));
    assert!(
        answer.text().contains("closed the connection"),
        "{}",
        answer.text()
    );
    assert_eq!(
        closer.connections(),
        1,
        "a request that was sent is not retried"
    );
    assert_eq!(
        cohort
            .series_eventually(ERRORS, &errors("stable", "reset"), 1.0)
            .await,
        1.0
    );
    assert_eq!(
        cohort.series(ERRORS, &errors("stable", "connect")).await,
        0.0
    );
    assert_eq!(
        cohort
            .series_eventually(REQUESTS, &requests("stable", "502"), 1.0)
            .await,
        1.0
    );
    cohort.shutdown().await;
}

#[tokio::test]
async fn an_upstream_speaking_invalid_http_gets_502_protocol() {
    let babbler = RawUpstream::start(b"SMTP ready, not HTTP at all\r\n\r\n").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(route_with(&[babbler.url()], &[canary.url()])).await;

    let answer = get(&cohort.url("/"), &[]).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.variant(), Some("stable"));
    assert!(answer.text().contains("invalid"), "{}", answer.text());
    assert_eq!(
        cohort
            .series_eventually(ERRORS, &errors("stable", "protocol"), 1.0)
            .await,
        1.0
    );
    cohort.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Clients that leave early
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_gone_before_the_response_headers_counts_as_499() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    stable.set_delay(Duration::from_secs(10));
    let cohort = TestCohort::start(
        Config::new()
            .drain_timeout("1s")
            .route(Route::new("app").stable(&stable).canary(&canary)),
    )
    .await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(b"GET /slow HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .await;
    eventually("the upstream got the request", || stable.hits() == 1).await;
    drop(conn);

    assert_eq!(
        cohort
            .series_eventually(REQUESTS, &requests("stable", "499"), 1.0)
            .await,
        1.0,
        "counted when the client left, not when the upstream would have answered"
    );
    assert_eq!(
        cohort
            .series(
                "cohort_in_flight_requests",
                &[("route", "app"), ("variant", "stable")]
            )
            .await,
        0.0
    );
    assert_eq!(
        cohort.series(REQUESTS, &requests("stable", "200")).await,
        0.0
    );
    cohort.shutdown().await;
}

#[tokio::test]
async fn an_h2_stream_cancelled_before_the_response_headers_counts_as_499() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    stable.set_delay(Duration::from_secs(10));
    let cohort = TestCohort::start(
        Config::new()
            .drain_timeout("1s")
            .route(Route::new("app").stable(&stable).canary(&canary)),
    )
    .await;

    let h2 = h2c_client();
    let request = h2.request(
        Request::get(cohort.url("/slow"))
            .body(Full::new(Bytes::new()))
            .expect("request"),
    );
    tokio::select! {
        _ = request => panic!("the upstream answered despite its delay"),
        _ = eventually("the upstream got the request", || stable.hits() == 1) => {}
    }
    // The request future is dropped here: the client resets the stream, the
    // connection stays open.
    assert_eq!(
        cohort
            .series_eventually(REQUESTS, &requests("stable", "499"), 1.0)
            .await,
        1.0
    );
    drop(h2);
    cohort.shutdown().await;
}
