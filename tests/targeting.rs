//! Targeting and the call chain (DESIGN §11) against a running cohort: segments on both
//! HTTP/1 engines and HTTP/2, values files reloaded when they change (and a bad one
//! rejected while the old values keep serving), `/assign` naming the rule, and the
//! variant carried from one cohort to the next through W3C baggage by an application
//! that only copies its inbound `baggage` header to its outbound call.
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::{
    client, get, h2c_client, key_in, send, Config, FakeUpstream, RawConn, Route, TestCohort,
};
use tokio::net::TcpListener;

const ASSIGNED: &str = "cohort_assignments_total";

/// The route `app` keyed by `x-user-id`, at 0 %: only segments send anyone to the canary.
fn app_route(stable: &FakeUpstream, canary: &FakeUpstream) -> Route {
    Route::new("app")
        .sticky(&["header:x-user-id"])
        .stable(stable)
        .canary(canary)
}

/// The three paths a request can take through cohort.
#[derive(Debug, Clone, Copy)]
enum Engine {
    /// Cohort's own HTTP/1.1 path.
    Own,
    /// Hyper's HTTP/1.1 engine: a connection handed over after a chunked upload.
    Hyper,
    /// HTTP/2 (h2c).
    H2,
}

const ENGINES: [Engine; 3] = [Engine::Own, Engine::Hyper, Engine::H2];

/// The variant that answered a plain GET with these headers on `engine`.
async fn variant_on(
    engine: Engine,
    cohort: &TestCohort,
    headers: &[(&str, &str)],
) -> Option<String> {
    match engine {
        Engine::Own => get(&cohort.url("/"), headers)
            .await
            .variant()
            .map(str::to_owned),
        Engine::H2 => send(
            &h2c_client(),
            "GET",
            &cohort.url("/"),
            headers,
            Bytes::new(),
        )
        .await
        .variant()
        .map(str::to_owned),
        Engine::Hyper => {
            let mut conn = RawConn::connect(cohort.proxy).await;
            conn.write(
                b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            )
            .await;
            assert_eq!(conn.read_response(false).await.status, 200, "the upload");
            let mut head = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            conn.write(head.as_bytes()).await;
            let answer = conn.read_response(false).await;
            answer.header("x-cohort-variant").map(str::to_owned)
        }
    }
}

/// The variant that answered a plain GET with these headers on every engine: all three
/// must agree.
async fn variant_on_every_engine(cohort: &TestCohort, headers: &[(&str, &str)]) -> String {
    let mut variants = Vec::new();
    for engine in ENGINES {
        variants.push(variant_on(engine, cohort, headers).await);
    }
    assert!(
        variants.iter().all(|v| v == &variants[0]),
        "the engines disagree for {headers:?}: own, hyper, h2 = {variants:?}"
    );
    variants[0].clone().expect("a variant header")
}

/// The baggage rewrite is one policy: on every engine a client's own `cohort.*` members
/// are removed (it is not trusted) and the route's member set to the decided variant,
/// the other members kept as sent.
#[tokio::test]
async fn baggage_is_rewritten_alike_on_every_engine() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let route = app_route(&stable, &canary)
        .canary_percent(50)
        .propagate("rel")
        .trusted(&["10.0.0.0/8"]);
    let cohort = TestCohort::start(route).await;
    let forged = [
        ("x-user-id", "alice"),
        ("baggage", "cohort.rel=canary,tenant=acme"),
        ("baggage", "COHORT.other=stable;p=1"),
    ];
    for engine in ENGINES {
        let variant = variant_on(engine, &cohort, &forged)
            .await
            .expect("a variant");
        let upstream = if variant == "canary" {
            &canary
        } else {
            &stable
        };
        let seen = upstream.last_seen();
        assert_eq!(
            seen.all("baggage"),
            [format!("tenant=acme,cohort.rel={variant}")],
            "{engine:?}"
        );
    }
    cohort.shutdown().await;
}

#[tokio::test]
async fn segments_place_their_groups_before_the_percentage_on_every_engine() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let route = app_route(&stable, &canary)
        .canary_percent(100)
        .segment("header:x-team", &["qa", "dev"], "canary")
        .segment("cookie:beta", &["no"], "stable")
        .segment("key", &["vip-1"], "stable")
        .segment("ip", &["127.0.0.0/8"], "canary");
    let cohort = TestCohort::start(route).await;
    // At 100 % the canary takes everyone, except whom a `stable` rule keeps out.
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("x-team", "qa"), ("cookie", "beta=no")], "canary"),
        (&[("cookie", "a=1; beta=no")], "stable"),
        (&[("x-user-id", "vip-1")], "stable"),
        (&[("x-user-id", "someone")], "canary"),
    ];
    for (headers, want) in cases {
        assert_eq!(
            variant_on_every_engine(&cohort, headers).await,
            want,
            "{headers:?}"
        );
    }
    let placed = cohort
        .series(
            ASSIGNED,
            &[
                ("route", "app"),
                ("variant", "stable"),
                ("source", "segment"),
            ],
        )
        .await;
    assert_eq!(
        placed, 6.0,
        "two stable cases on three engines count as segment"
    );
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_values_file_change_applies_within_two_seconds_and_a_bad_one_keeps_the_old() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let lists = tempfile::tempdir().expect("tempdir");
    let file = lists.path().join("beta-customers.txt");
    std::fs::write(&file, "# beta customers\nacme\n").expect("values file");
    let route = app_route(&stable, &canary).segment_file("header:x-customer", &file, "canary");
    let cohort = TestCohort::start(route).await;
    let acme = [("x-customer", "acme")];
    let globex = [("x-customer", "globex")];
    assert_eq!(get(&cohort.url("/"), &acme).await.variant(), Some("canary"));
    assert_eq!(
        get(&cohort.url("/"), &globex).await.variant(),
        Some("stable")
    );

    // A ConfigMap-style update: a new file renamed over the old one.
    replace(&file, "acme\nglobex\n");
    let applied = until(Duration::from_secs(2), || async {
        get(&cohort.url("/"), &globex).await.variant() == Some("canary")
    })
    .await;
    assert!(applied, "the new values file was not applied within 2 s");

    // A bad line rejects the reload: counted, and the previous values keep serving.
    let errors_before = reload_errors(&cohort).await;
    replace(&file, "acme\nglobex\n\u{1}initech\n");
    let rejected = until(Duration::from_secs(2), || async {
        reload_errors(&cohort).await > errors_before
    })
    .await;
    assert!(
        rejected,
        "a bad values file must be counted as a failed reload"
    );
    assert_eq!(
        get(&cohort.url("/"), &globex).await.variant(),
        Some("canary")
    );
    cohort.shutdown().await;
}

/// Writes `text` to a temporary file beside `path` and renames it over `path`.
/// A directory of named files that is deleted (its watch goes with it) and made
/// again is watched again: its new files apply within the watcher's retry interval
/// (5 s) without a SIGHUP. Before, its changes waited for a SIGHUP or another reload.
#[tokio::test]
async fn a_values_directory_deleted_and_made_again_is_watched_again() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let lists = tempfile::tempdir().expect("tempdir");
    let dir = lists.path().join("lists");
    std::fs::create_dir(&dir).expect("values dir");
    let file = dir.join("beta-customers.txt");
    std::fs::write(&file, "acme\n").expect("values file");
    let route = app_route(&stable, &canary).segment_file("header:x-customer", &file, "canary");
    let cohort = TestCohort::start(route).await;
    let globex = [("x-customer", "globex")];
    assert_eq!(
        get(&cohort.url("/"), &globex).await.variant(),
        Some("stable")
    );

    std::fs::remove_dir_all(&dir).expect("delete the directory");
    // The reload its deletion triggers is rejected (the file is gone): the old list
    // keeps serving.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        get(&cohort.url("/"), &globex).await.variant(),
        Some("stable")
    );
    std::fs::create_dir(&dir).expect("the directory again");
    std::fs::write(&file, "acme\nglobex\n").expect("values file");
    let made = std::time::Instant::now();
    let applied = until(Duration::from_secs(8), || async {
        get(&cohort.url("/"), &globex).await.variant() == Some("canary")
    })
    .await;
    assert!(
        applied,
        "the new list never applied (the directory was not watched again)"
    );
    println!(
        "applied {:?} after the directory was made again",
        made.elapsed()
    );
    cohort.shutdown().await;
}

fn replace(path: &Path, text: &str) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, text).expect("temp file");
    std::fs::rename(&temp, path).expect("rename");
}

async fn until<F, Fut>(limit: Duration, check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn reload_errors(cohort: &TestCohort) -> f64 {
    cohort
        .series("cohort_config_reloads_total", &[("result", "error")])
        .await
}

#[tokio::test]
async fn assign_takes_the_attributes_segments_read_and_names_the_rule() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let route = app_route(&stable, &canary)
        .trusted(&["10.0.0.0/8"])
        .segment("header:x-team", &["qa"], "canary")
        .segment("ip", &["192.0.2.0/24"], "canary");
    let cohort = TestCohort::start(route).await;
    let ask = |query: &'static str| {
        let url = cohort.admin_url(&format!("/assign?route=app&key=alice{query}"));
        async move {
            let answer = get(&url, &[]).await;
            assert_eq!(answer.status, 200, "{query}: {}", answer.text());
            let doc: serde_json::Value = serde_json::from_slice(&answer.body).expect("json");
            (
                doc["variant"].as_str().map(str::to_owned),
                doc["decided_by"].as_str().map(str::to_owned),
            )
        }
    };
    let pair = |v: &str, by: &str| (Some(v.to_owned()), Some(by.to_owned()));
    assert_eq!(ask("").await, pair("stable", "percentage"));
    assert_eq!(
        ask("&header=x-team:qa").await,
        pair("canary", "segments[0]")
    );
    assert_eq!(
        ask("&header=x-team%3Dqa").await,
        pair("canary", "segments[0]")
    );
    assert_eq!(ask("&ip=192.0.2.7").await, pair("canary", "segments[1]"));
    assert_eq!(
        ask("&ip=10.0.0.1&header=x-cohort-variant:stable&header=x-team:qa").await,
        pair("stable", "override")
    );
    let bad = get(
        &cohort.admin_url("/assign?route=app&key=a&ip=not-an-ip"),
        &[],
    )
    .await;
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("not an IP address"), "{}", bad.text());
    // `/routes` shows the rules.
    let routes = get(&cohort.admin_url("/routes"), &[]).await;
    let doc: serde_json::Value = serde_json::from_slice(&routes.body).expect("json");
    let segments = &doc["routes"][0]["segments"];
    assert_eq!(segments[0]["match"], "header:x-team");
    assert_eq!(segments[1]["values_count"], 1);
    // `/config` shows them as written.
    let config = get(&cohort.admin_url("/config"), &[]).await;
    let doc: serde_json::Value = serde_json::from_slice(&config.body).expect("json");
    let route = &doc["routes"][0];
    assert_eq!(route["segments"][0]["match"], "header:x-team");
    assert_eq!(route["segments"][0]["values"], serde_json::json!(["qa"]));
    assert_eq!(route["segments"][1]["variant"], "canary");
    assert_eq!(route["hash"], "xxh3");
    cohort.shutdown().await;
}

/// A service between two cohorts that does what an OpenTelemetry SDK does: it copies
/// its inbound `baggage` to its outbound call, to `next`, and answers with the variant
/// that served that call.
async fn copying_app(next: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("app address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| async move {
                    let mut call = Request::get(format!("http://{next}/back"));
                    for value in req.headers().get_all("baggage") {
                        call = call.header("baggage", value);
                    }
                    let answer = client()
                        .request(call.body(Full::new(Bytes::new())).expect("request"))
                        .await
                        .expect("the call to the back service");
                    let back = answer
                        .headers()
                        .get("x-cohort-variant")
                        .cloned()
                        .unwrap_or(http::HeaderValue::from_static("none"));
                    let _ = answer.into_body().collect().await;
                    let mut resp = Response::new(Full::new(Bytes::from_static(b"app\n")));
                    resp.headers_mut().insert("x-back-variant", back);
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_user_on_the_front_canary_reaches_the_back_canary_through_an_application() {
    let back_stable = FakeUpstream::start("back-stable").await;
    let back_canary = FakeUpstream::start("back-canary").await;
    // The back service follows the release; its own percentage is 0, so only what the
    // front decided can send anyone to its canary. The application calls it from
    // loopback, which it trusts.
    let back = TestCohort::start(
        Route::new("back")
            .follow("checkout-v2")
            .trusted(&["127.0.0.0/8"])
            .stable(&back_stable)
            .canary(&back_canary),
    )
    .await;
    let app = copying_app(back.proxy).await;
    let app_url = format!("http://{app}");
    // The front trusts no one: clients' own cohort.* baggage is removed there.
    let front = TestCohort::start(
        Config::new().route(
            Route::new("front")
                .sticky(&["header:x-user-id"])
                .canary_percent(30)
                .propagate("checkout-v2")
                .stable_urls(&[&app_url])
                .canary_urls(&[&app_url]),
        ),
    )
    .await;
    let mut seen = [0usize; 2];
    for i in 0..40 {
        let user = format!("user-{i}");
        let forged = "cohort.checkout-v2=canary,tenant=acme";
        let headers = [("x-user-id", user.as_str()), ("baggage", forged)];
        let answer = get(&front.url("/"), &headers).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let front_variant = answer.variant().expect("front variant").to_owned();
        let back_variant = answer.header("x-back-variant").expect("back variant");
        assert_eq!(
            back_variant, front_variant,
            "{user} left its release between hops"
        );
        seen[usize::from(front_variant == "canary")] += 1;
    }
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "both variants were exercised: {seen:?}"
    );
    // What the application passed on kept the other members intact.
    let last = back_stable
        .seen()
        .into_iter()
        .chain(back_canary.seen())
        .next()
        .expect("the back service was called");
    let baggage = last
        .one("baggage")
        .expect("baggage reached the back service");
    assert!(
        baggage.starts_with("tenant=acme,cohort.checkout-v2="),
        "{baggage}"
    );
    let followed = back
        .series(
            ASSIGNED,
            &[
                ("route", "back"),
                ("variant", "canary"),
                ("source", "propagated"),
            ],
        )
        .await;
    assert_eq!(followed as usize, seen[1]);
    // A stable user sending its own canary baggage straight to the back service from
    // an address it does not trust moves nothing.
    let strict = TestCohort::start(
        Route::new("back")
            .follow("checkout-v2")
            .trusted(&["10.0.0.0/8"])
            .stable(&back_stable)
            .canary(&back_canary),
    )
    .await;
    let forged = [("baggage", "cohort.checkout-v2=canary")];
    let answer = get(&strict.url("/"), &forged).await;
    assert_eq!(answer.variant(), Some("stable"));
    assert_eq!(
        back_stable.last_seen().one("baggage"),
        None,
        "cohort.* removed"
    );
    let user = key_in("stable", "front-salt", 30.0, "u");
    let answer = get(&front.url("/"), &[("x-user-id", user.as_str())]).await;
    assert_eq!(answer.header("x-back-variant"), Some("stable"));
    strict.shutdown().await;
    front.shutdown().await;
    back.shutdown().await;
}
