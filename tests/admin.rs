//! The admin listener of DESIGN §4, driven over real sockets: health and readiness
//! (including the flip to 503 when shutdown begins), the effective config, the route
//! view with live figures, and `/assign`.
mod support;

use std::time::{Duration, Instant};

use cohort::cohort::{assign, BasisPoints};
use serde_json::Value;
use support::{get, user_route, Config, FakeUpstream, Route, TestCohort};

async fn json(url: &str) -> Value {
    let answer = get(url, &[]).await;
    assert_eq!(answer.status, 200, "GET {url}: {}", answer.text());
    assert!(
        answer
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "GET {url} content-type: {:?}",
        answer.header("content-type")
    );
    serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("GET {url} is not JSON ({e}): {}", answer.text()))
}

/// A cohort with route `r` (stable + canary) at `percent`, keyed by `x-user-id`.
async fn start(percent: &str) -> (TestCohort, FakeUpstream, FakeUpstream) {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(user_route("r", &stable, &canary).canary_percent(percent)).await;
    (cohort, stable, canary)
}

#[tokio::test]
async fn healthz_answers_200_and_unknown_paths_404() {
    let (cohort, _s, _c) = start("10").await;
    let health = get(&cohort.admin_url("/healthz"), &[]).await;
    assert_eq!(health.status, 200);
    assert_eq!(get(&cohort.admin_url("/readyz"), &[]).await.status, 200);
    for path in ["/nope", "/healthz/x", "/metricsx", "/routes/r/unknown"] {
        assert_eq!(
            get(&cohort.admin_url(path), &[]).await.status,
            404,
            "{path}"
        );
    }
    let metrics = get(&cohort.admin_url("/metrics"), &[]).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "Prometheus text content type: {:?}",
        metrics.header("content-type")
    );
    cohort.shutdown().await;
}

#[tokio::test]
async fn readyz_turns_503_once_shutdown_begins_while_a_request_drains() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    stable.set_delay(Duration::from_millis(1500));
    let mut cohort = TestCohort::start(
        Config::new().drain_timeout("10s").route(
            Route::new("r")
                .stable(&stable)
                .canary(&canary)
                .canary_percent(0),
        ),
    )
    .await;
    assert_eq!(get(&cohort.admin_url("/readyz"), &[]).await.status, 200);

    let url = cohort.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url, &[("x-user-id", "u")]).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while stable.hits() == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let running = cohort.running.take().expect("running");
    running.begin_shutdown();
    let ready = get(&cohort.admin_url("/readyz"), &[]).await;
    assert_eq!(
        ready.status,
        503,
        "readyz during the drain: {}",
        ready.text()
    );
    assert_eq!(
        get(&cohort.admin_url("/healthz"), &[]).await.status,
        200,
        "healthz stays 200 while the process runs"
    );
    // The proxy listener stops accepting soon after.
    let deadline = Instant::now() + Duration::from_secs(2);
    while tokio::net::TcpStream::connect(cohort.proxy).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the proxy still accepts connections after shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "the in-flight request was still waiting for the upstream"
    );

    let answer = in_flight.await.expect("request task");
    assert_eq!((answer.status, answer.text().as_str()), (200, "stable"));
    tokio::time::timeout(Duration::from_secs(5), running.wait())
        .await
        .expect("the drain ends once the last request is done");
}

#[tokio::test]
async fn config_shows_the_effective_config_as_json() {
    let stable = FakeUpstream::start("stable").await;
    let stable2 = FakeUpstream::start("stable2").await;
    let canary = FakeUpstream::start("canary").await;
    let checkout = Route::new("checkout")
        .stable(&stable)
        .canary(&canary)
        .path_prefix("/checkout")
        .sticky(&["header:x-user-id", "cookie:session", "ip"])
        .canary_percent(2.5)
        .trusted(&["127.0.0.0/8"])
        .connect_timeout("250ms")
        .request_timeout("3s");
    let search = Route::new("search")
        .host("Shop.Example.com")
        .salt("search-v1")
        .canary_percent(10)
        .stable_urls(&[stable.url(), stable2.url()])
        .canary(&canary);
    let config = Config::new()
        .drain_timeout("7s")
        .route(checkout)
        .route(search);
    let cohort = TestCohort::start(config).await;
    let config = json(&cohort.admin_url("/config")).await;

    assert_eq!(config["listen"]["drain_timeout"], "7s");
    assert_eq!(config["listen"]["variant_header"], "x-cohort-variant");
    assert!(config["listen"]["address"].is_string());
    assert!(config["admin"]["address"].is_string());
    let routes = config["routes"].as_array().expect("routes array");
    assert_eq!(routes.len(), 2);

    let checkout = &routes[0];
    assert_eq!(checkout["name"], "checkout");
    assert_eq!(checkout["salt"], "checkout-salt");
    assert_eq!(checkout["path_prefix"], "/checkout");
    assert!(checkout["canary_percent"].is_number(), "{checkout}");
    assert_eq!(checkout["canary_percent"].as_f64(), Some(2.5));
    assert_eq!(
        checkout["sticky"],
        serde_json::json!(["header:x-user-id", "cookie:session", "ip"])
    );
    assert_eq!(
        checkout["stable"]["endpoints"],
        serde_json::json!([stable.url()])
    );
    assert_eq!(
        checkout["canary"]["endpoints"],
        serde_json::json!([canary.url()])
    );
    assert_eq!(checkout["override"]["header"], "x-cohort-variant");
    assert_eq!(
        checkout["override"]["trusted"],
        serde_json::json!(["127.0.0.0/8"])
    );
    assert_eq!(checkout["timeouts"]["connect"], "250ms");
    assert_eq!(checkout["timeouts"]["request"], "3s");

    let search = &routes[1];
    assert_eq!(search["name"], "search");
    assert_eq!(search["host"], "shop.example.com", "hosts are lowercased");
    // A whole percentage is written as an integer, like the config file.
    assert_eq!(search["canary_percent"], serde_json::json!(10));
    assert_eq!(
        search["stable"]["endpoints"],
        serde_json::json!([stable.url(), stable2.url()])
    );
    cohort.shutdown().await;
}

#[tokio::test]
async fn routes_lists_each_route_with_figures_that_move_after_traffic() {
    let (cohort, _stable, canary) = start("50").await;
    canary.set_status(500);
    let routes_url = cohort.admin_url("/routes");

    let before = json(&routes_url).await;
    assert_eq!(before["generation"], 1);
    let r = &before["routes"][0];
    assert_eq!(r["name"], "r");
    assert_eq!(r["salt"], "r-salt");
    assert_eq!(r["canary_percent"].as_f64(), Some(50.0));
    assert_eq!(
        r["stable"]["endpoints"][0].as_str(),
        Some(_stable.url().as_str())
    );
    assert_eq!(
        r["canary"]["endpoints"][0].as_str(),
        Some(canary.url().as_str())
    );
    for variant in ["stable", "canary"] {
        let v = &r[variant];
        assert_eq!(v["requests"], 0, "{variant}: {v}");
        assert_eq!(v["request_rate"].as_f64(), Some(0.0), "{variant}: {v}");
        assert!(
            v["error_ratio"].is_null(),
            "{variant}: no ratio without requests: {v}"
        );
        assert!(
            v["p99_seconds"].is_null(),
            "{variant}: no p99 without requests: {v}"
        );
    }

    let bp = BasisPoints::from_percent(50.0).unwrap();
    let (mut n_stable, mut n_canary) = (0u64, 0u64);
    for i in 0..12 {
        let key = format!("user-{i}");
        let variant = assign("r-salt", key.as_bytes(), bp).1;
        let answer = get(&cohort.url("/"), &[("x-user-id", &key)]).await;
        assert_eq!(answer.variant(), Some(variant.as_str()));
        match variant.as_str() {
            "stable" => n_stable += 1,
            _ => n_canary += 1,
        }
    }
    assert!(n_stable > 0 && n_canary > 0, "both variants got traffic");

    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let after = json(&routes_url).await;
        let r = &after["routes"][0];
        if r["stable"]["requests"] == n_stable && r["canary"]["requests"] == n_canary {
            break after;
        }
        assert!(
            Instant::now() < deadline,
            "figures never caught up: {after}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let r = &after["routes"][0];
    let stable = &r["stable"];
    assert!(stable["request_rate"].as_f64().unwrap() > 0.0, "{stable}");
    assert_eq!(stable["error_ratio"].as_f64(), Some(0.0), "{stable}");
    let p99 = stable["p99_seconds"].as_f64().expect("stable p99");
    assert!(p99 > 0.0 && p99 <= 10.0, "{stable}");
    let canary = &r["canary"];
    assert!(canary["request_rate"].as_f64().unwrap() > 0.0, "{canary}");
    assert_eq!(
        canary["error_ratio"].as_f64(),
        Some(1.0),
        "every canary answer was 500: {canary}"
    );
    assert!(canary["p99_seconds"].as_f64().is_some(), "{canary}");
    cohort.shutdown().await;
}

#[tokio::test]
async fn assign_answers_like_the_library() {
    let (cohort, _s, _c) = start("2.5").await;
    let bp = BasisPoints::from_percent(2.5).unwrap();
    // (query value as sent, key as decoded)
    let keys = [
        ("alice", "alice"),
        ("user-42", "user-42"),
        ("user%2042%26x%3D1", "user 42&x=1"),
        ("a+b", "a b"),
        ("%C3%A9t%C3%A9", "été"),
        ("%2B%25", "+%"),
    ];
    // Also some keys that land in the canary at 2.5 %.
    let canary_keys: Vec<String> = (0..)
        .map(|i| format!("k{i}"))
        .filter(|k| assign("r-salt", k.as_bytes(), bp).1.as_str() == "canary")
        .take(2)
        .collect();
    let all = keys
        .iter()
        .map(|(q, k)| (q.to_string(), k.to_string()))
        .chain(canary_keys.iter().map(|k| (k.clone(), k.clone())));
    let mut saw_canary = false;
    for (query, key) in all {
        let answer = json(&cohort.admin_url(&format!("/assign?route=r&key={query}"))).await;
        let (bucket, variant) = assign("r-salt", key.as_bytes(), bp);
        saw_canary |= variant.as_str() == "canary";
        assert_eq!(
            answer,
            serde_json::json!({
                "route": "r",
                "key": key,
                "bucket": bucket,
                "variant": variant.as_str(),
                "decided_by": "percentage",
            }),
            "query key={query}"
        );
    }
    assert!(saw_canary);
    // Parameter order does not matter.
    let answer = json(&cohort.admin_url("/assign?key=alice&route=r")).await;
    assert_eq!(answer["key"], "alice");
    cohort.shutdown().await;
}

#[tokio::test]
async fn assign_rejects_missing_parameters_and_unknown_routes() {
    let (cohort, _s, _c) = start("10").await;
    for query in ["", "?route=r", "?key=alice", "?rout=r&key=alice"] {
        let answer = get(&cohort.admin_url(&format!("/assign{query}")), &[]).await;
        assert_eq!(answer.status, 400, "/assign{query}: {}", answer.text());
        assert!(!answer.text().trim().is_empty(), "a 400 says why");
    }
    let answer = get(&cohort.admin_url("/assign?route=nope&key=alice"), &[]).await;
    assert_eq!(answer.status, 404, "{}", answer.text());
    cohort.shutdown().await;
}

#[tokio::test]
async fn assign_leaves_a_malformed_escape_alone() {
    let (cohort, _s, _c) = start("10").await;
    // `%+1` is no escape: form decoding turns `+` into a space and keeps `%` as it is.
    let answer = json(&cohort.admin_url("/assign?route=r&key=%+1")).await;
    assert_eq!(answer["key"], "% 1");
    cohort.shutdown().await;
}
