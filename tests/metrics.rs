//! The `/metrics` contract of DESIGN §5, seen from outside: a known mix of real requests
//! through a real cohort, then exact counts per (route, variant, status), histogram
//! buckets, assignment sources, gauges, HELP/TYPE, label hygiene, per-instance
//! recorders, and `promtool check metrics` on the real page.
#[path = "support/process.rs"]
mod process;
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cohort::cohort::{assign, BasisPoints, Variant};
use cohort::rollout::Reason;
use support::prom::Exposition;
use support::{get, Config, FakeUpstream, Route, TestCohort};

/// DESIGN §5 buckets as Prometheus renders them, `+Inf` last.
const BUCKET_LES: [&str; 15] = [
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
    "2.5", "5", "10", "+Inf",
];

const SOURCES: [&str; 7] = [
    "header",
    "cookie",
    "ip",
    "random",
    "override",
    "segment",
    "propagated",
];

/// The first `n` keys `PREFIX-i` that `salt` at `percent` puts in `variant`.
fn keys_for(salt: &str, percent: f64, variant: Variant, n: usize, prefix: &str) -> Vec<String> {
    let bp = BasisPoints::from_percent(percent).expect("valid percent");
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|k| assign(salt, k.as_bytes(), bp).1 == variant)
        .take(n)
        .collect()
}

/// Scrapes `/metrics` until `ready` holds (the count of a request lands when the server
/// finishes its response body, which may be just after the client has read it).
async fn scrape_until(cohort: &TestCohort, ready: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = cohort.metrics().await;
        let exp = Exposition::parse(&text);
        if ready(&exp) {
            return exp;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never reached the expected state:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An address on which nothing listens (connects are refused).
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

/// Two routes: `web` (10 %, header then cookie keys; canary answers 500 after 30 ms) and
/// `api` (100 %, keyed by peer IP; canary answers 503).
struct Mix {
    cohort: TestCohort,
    _upstreams: [FakeUpstream; 4],
}

async fn start_mix() -> Mix {
    let web_stable = FakeUpstream::start("web-stable").await;
    let web_canary = FakeUpstream::start("web-canary").await;
    let api_stable = FakeUpstream::start("api-stable").await;
    let api_canary = FakeUpstream::start("api-canary").await;
    web_canary.set_status(500);
    web_canary.set_delay(Duration::from_millis(30));
    api_canary.set_status(503);
    let config = Config::new()
        .route(
            Route::new("web")
                .stable(&web_stable)
                .canary(&web_canary)
                .path_prefix("/web")
                .sticky(&["header:x-user-id", "cookie:session"])
                .canary_percent(10),
        )
        .route(
            Route::new("api")
                .stable(&api_stable)
                .canary(&api_canary)
                .path_prefix("/api")
                .sticky(&["ip"])
                .canary_percent(100),
        );
    Mix {
        cohort: TestCohort::start(config).await,
        _upstreams: [web_stable, web_canary, api_stable, api_canary],
    }
}

fn requests_map(exp: &Exposition) -> BTreeMap<(String, String, String), f64> {
    exp.series("cohort_requests_total")
        .map(|s| {
            let l = |k: &str| {
                s.label(k)
                    .unwrap_or_else(|| panic!("{s:?} lacks {k}"))
                    .to_owned()
            };
            ((l("route"), l("variant"), l("status")), s.value)
        })
        .collect()
}

fn key3(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.to_owned(), b.to_owned(), c.to_owned())
}

#[tokio::test]
async fn a_known_mix_of_requests_is_counted_exactly() {
    let mix = start_mix().await;
    let cohort = &mix.cohort;
    let web = |path: &str| cohort.url(&format!("/web{path}"));

    // web, keyed by header: 7 stable (200), 3 canary (500).
    let stable_keys = keys_for("web-salt", 10.0, Variant::Stable, 10, "h");
    let canary_keys = keys_for("web-salt", 10.0, Variant::Canary, 4, "h");
    for key in &stable_keys[..7] {
        let a = get(&web("/a"), &[("x-user-id", key)]).await;
        assert_eq!((a.status, a.variant()), (200, Some("stable")), "key {key}");
    }
    for key in &canary_keys[..3] {
        let a = get(&web("/a"), &[("x-user-id", key)]).await;
        assert_eq!((a.status, a.variant()), (500, Some("canary")), "key {key}");
    }
    // web, keyed by the `session` cookie: 2 stable, 1 canary; by `cohort_id`: 1 stable.
    for key in &stable_keys[7..9] {
        let cookie = format!("session={key}");
        assert_eq!(get(&web("/b"), &[("cookie", &cookie)]).await.status, 200);
    }
    let cookie = format!("session={}", canary_keys[3]);
    assert_eq!(get(&web("/b"), &[("cookie", &cookie)]).await.status, 500);
    let cookie = format!("cohort_id={}", stable_keys[9]);
    assert_eq!(get(&web("/c"), &[("cookie", &cookie)]).await.status, 200);
    // web, no key at all: random draws; the response says where each went.
    let (mut random_stable, mut random_canary) = (0.0, 0.0);
    for _ in 0..6 {
        let a = get(&web("/d"), &[]).await;
        assert!(
            a.header("set-cookie")
                .is_some_and(|c| c.starts_with("cohort_id=")),
            "a keyless client gets a cohort_id cookie"
        );
        match a.variant() {
            Some("stable") => random_stable += 1.0,
            Some("canary") => random_canary += 1.0,
            other => panic!("no variant header: {other:?}"),
        }
    }
    // api, keyed by peer IP, 100 % canary (503): 5 requests.
    for _ in 0..5 {
        let a = get(&cohort.url("/api/x"), &[]).await;
        assert_eq!((a.status, a.variant()), (503, Some("canary")));
    }
    // No route: counted apart.
    assert_eq!(get(&cohort.url("/nowhere"), &[]).await.status, 404);

    let total = 7.0 + 3.0 + 2.0 + 1.0 + 1.0 + 6.0 + 5.0;
    let exp = scrape_until(cohort, |e| {
        e.sum("cohort_requests_total", &[]) >= total
            && e.sum("cohort_unrouted_requests_total", &[]) >= 1.0
    })
    .await;

    // cohort_requests_total: exactly these series, exactly these counts.
    let web_stable = 7.0 + 2.0 + 1.0 + random_stable;
    let web_canary = 3.0 + 1.0 + random_canary;
    let mut expected = BTreeMap::new();
    expected.insert(key3("web", "stable", "200"), web_stable);
    if web_canary > 0.0 {
        expected.insert(key3("web", "canary", "500"), web_canary);
    }
    expected.insert(key3("api", "canary", "503"), 5.0);
    assert_eq!(requests_map(&exp), expected);
    assert_eq!(
        exp.value("cohort_unrouted_requests_total", &[("status", "404")]),
        1.0
    );

    // The duration histogram: one observation per request, the DESIGN buckets.
    let per_variant = [
        ("web", "stable", web_stable),
        ("web", "canary", web_canary),
        ("api", "stable", 0.0),
        ("api", "canary", 5.0),
    ];
    for (route, variant, count) in per_variant {
        let labels = [("route", route), ("variant", variant)];
        assert_eq!(
            exp.value("cohort_request_duration_seconds_count", &labels),
            count,
            "{route}/{variant} _count"
        );
        let buckets: Vec<_> = exp
            .series("cohort_request_duration_seconds_bucket")
            .filter(|s| s.has(&labels))
            .collect();
        let les: Vec<&str> = buckets.iter().map(|s| s.label("le").unwrap()).collect();
        assert_eq!(les, BUCKET_LES, "{route}/{variant} buckets");
        assert!(
            buckets.windows(2).all(|w| w[0].value <= w[1].value),
            "{route}/{variant} buckets are cumulative: {buckets:?}"
        );
        assert_eq!(buckets.last().unwrap().value, count, "+Inf == _count");
        let sum = exp.value("cohort_request_duration_seconds_sum", &labels);
        assert!(
            sum >= 0.0 && (count > 0.0 || sum == 0.0),
            "{route}/{variant} _sum {sum}"
        );
    }
    // The web canary waited 30 ms upstream, so none of its requests fits in 25 ms.
    let slow = [("route", "web"), ("variant", "canary"), ("le", "0.025")];
    assert_eq!(
        exp.value("cohort_request_duration_seconds_bucket", &slow),
        0.0
    );
    assert!(
        exp.value(
            "cohort_request_duration_seconds_sum",
            &[("route", "web"), ("variant", "canary")]
        ) >= 0.03 * web_canary
    );

    // Assignments, by source: every (route, variant, source) series, exactly.
    let mut expected_sources: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    for route in ["web", "api"] {
        for variant in ["stable", "canary"] {
            for source in SOURCES {
                expected_sources.insert(key3(route, variant, source), 0.0);
            }
        }
    }
    expected_sources.insert(key3("web", "stable", "header"), 7.0);
    expected_sources.insert(key3("web", "canary", "header"), 3.0);
    expected_sources.insert(key3("web", "stable", "cookie"), 3.0);
    expected_sources.insert(key3("web", "canary", "cookie"), 1.0);
    expected_sources.insert(key3("web", "stable", "random"), random_stable);
    expected_sources.insert(key3("web", "canary", "random"), random_canary);
    expected_sources.insert(key3("api", "canary", "ip"), 5.0);
    let sources: BTreeMap<_, _> = exp
        .series("cohort_assignments_total")
        .map(|s| {
            let l = |k: &str| s.label(k).unwrap().to_owned();
            ((l("route"), l("variant"), l("source")), s.value)
        })
        .collect();
    assert_eq!(sources, expected_sources);

    // Gauges and instance-wide series.
    assert_eq!(
        exp.value("cohort_canary_weight_ratio", &[("route", "web")]),
        0.1
    );
    assert_eq!(
        exp.value("cohort_canary_weight_ratio", &[("route", "api")]),
        1.0
    );
    for route in ["web", "api"] {
        for variant in ["stable", "canary"] {
            let labels = [("route", route), ("variant", variant)];
            assert_eq!(exp.value("cohort_in_flight_requests", &labels), 0.0);
        }
    }
    assert_eq!(exp.value("cohort_config_generation", &[]), 1.0);
    assert_eq!(
        exp.value("cohort_config_reloads_total", &[("result", "ok")]),
        0.0
    );
    assert_eq!(
        exp.value("cohort_config_reloads_total", &[("result", "error")]),
        0.0
    );
    assert_eq!(exp.value("cohort_tls_handshake_errors_total", &[]), 0.0);
    // Upstream 5xx answers are responses, not upstream errors.
    assert_eq!(exp.sum("cohort_upstream_errors_total", &[]), 0.0);

    mix.cohort.shutdown().await;
}

#[tokio::test]
async fn cohorts_own_502_counts_once_under_its_variant() {
    let stable = FakeUpstream::start("stable").await;
    let down = closed_port_url();
    let config = Config::new().route(
        Route::new("r")
            .sticky(&["header:x-user-id"])
            .canary_percent(100)
            .stable(&stable)
            .canary_urls(&[down]),
    );
    let cohort = TestCohort::start(config).await;
    for _ in 0..2 {
        let a = get(&cohort.url("/"), &[("x-user-id", "k")]).await;
        assert_eq!((a.status, a.variant()), (502, Some("canary")));
    }
    let exp = scrape_until(&cohort, |e| e.sum("cohort_requests_total", &[]) >= 2.0).await;
    let mut expected = BTreeMap::new();
    expected.insert(key3("r", "canary", "502"), 2.0);
    assert_eq!(requests_map(&exp), expected);
    let canary = [("route", "r"), ("variant", "canary")];
    let kind = |k: &'static str| [canary[0], canary[1], ("kind", k)];
    assert_eq!(
        exp.value("cohort_upstream_errors_total", &kind("connect")),
        2.0
    );
    for other in ["timeout", "reset", "tls", "protocol"] {
        assert_eq!(exp.value("cohort_upstream_errors_total", &kind(other)), 0.0);
    }
    assert_eq!(
        exp.value("cohort_request_duration_seconds_count", &canary),
        2.0
    );
    assert_eq!(stable.hits(), 0, "never falls over to the other variant");
    cohort.shutdown().await;
}

#[tokio::test]
async fn in_flight_gauge_rises_during_a_request_and_returns_to_zero() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    stable.set_delay(Duration::from_millis(600));
    let cohort = TestCohort::start(
        Route::new("r")
            .stable(&stable)
            .canary(&canary)
            .canary_percent(0),
    )
    .await;
    let url = cohort.url("/slow");
    let request = tokio::spawn(async move { get(&url, &[("x-user-id", "u")]).await.status });
    let stable_labels = [("route", "r"), ("variant", "stable")];
    let exp = scrape_until(&cohort, |e| {
        e.get("cohort_in_flight_requests", &stable_labels) == Some(1.0)
    })
    .await;
    assert_eq!(
        exp.get(
            "cohort_requests_total",
            &[("route", "r"), ("variant", "stable"), ("status", "200")]
        ),
        None,
        "not counted before it ends"
    );
    assert_eq!(request.await.expect("request task"), 200);
    let exp = scrape_until(&cohort, |e| e.sum("cohort_requests_total", &[]) >= 1.0).await;
    assert_eq!(exp.value("cohort_in_flight_requests", &stable_labels), 0.0);
    let sum = exp.value("cohort_request_duration_seconds_sum", &stable_labels);
    assert!(
        sum >= 0.6,
        "the duration includes the upstream's 600 ms: {sum}"
    );
    cohort.shutdown().await;
}

/// DESIGN §5's table: (name, type).
const FAMILIES: [(&str, &str); 10] = [
    ("cohort_requests_total", "counter"),
    ("cohort_request_duration_seconds", "histogram"),
    ("cohort_upstream_errors_total", "counter"),
    ("cohort_unrouted_requests_total", "counter"),
    ("cohort_in_flight_requests", "gauge"),
    ("cohort_canary_weight_ratio", "gauge"),
    ("cohort_assignments_total", "counter"),
    ("cohort_config_reloads_total", "counter"),
    ("cohort_config_generation", "gauge"),
    ("cohort_tls_handshake_errors_total", "counter"),
];

/// A cohort with a working route, a route whose canary is down, and one request of
/// each kind (routed 200, routed 5xx, cohort's own 502, unrouted 404).
async fn start_busy() -> (TestCohort, FakeUpstream, FakeUpstream) {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    canary.set_status(503);
    let down = closed_port_url();
    let config = Config::new()
        .route(
            Route::new("r")
                .stable(&stable)
                .canary(&canary)
                .path_prefix("/r")
                .sticky(&["header:x-user-id"])
                .canary_percent(50),
        )
        .route(
            Route::new("down")
                .path_prefix("/down")
                .salt("d")
                .stable_urls(&[down]),
        );
    let cohort = TestCohort::start(config).await;
    let s = keys_for("r-salt", 50.0, Variant::Stable, 1, "k").remove(0);
    let c = keys_for("r-salt", 50.0, Variant::Canary, 1, "k").remove(0);
    assert_eq!(
        get(&cohort.url("/r/1"), &[("x-user-id", &s)]).await.status,
        200
    );
    assert_eq!(
        get(&cohort.url("/r/2"), &[("x-user-id", &c)]).await.status,
        503
    );
    assert_eq!(get(&cohort.url("/down"), &[]).await.status, 502);
    assert_eq!(get(&cohort.url("/elsewhere"), &[]).await.status, 404);
    scrape_until(&cohort, |e| e.sum("cohort_requests_total", &[]) >= 3.0).await;
    (cohort, stable, canary)
}

#[tokio::test]
async fn every_metric_has_help_and_type() {
    let (cohort, _stable, _canary) = start_busy().await;
    let exp = Exposition::parse(&cohort.metrics().await);
    for (name, kind) in FAMILIES {
        let help = exp.help.get(name).map(String::as_str).unwrap_or("");
        assert!(!help.trim().is_empty(), "{name} has no HELP text");
        assert_eq!(
            exp.types.get(name).map(String::as_str),
            Some(kind),
            "TYPE of {name}"
        );
        assert!(
            exp.samples.iter().any(|s| exp.family_of(&s.name) == name),
            "{name} has no series"
        );
    }
    for sample in &exp.samples {
        let family = exp.family_of(&sample.name);
        assert!(exp.help.contains_key(family), "{} has no HELP", sample.name);
        assert!(
            exp.types.contains_key(family),
            "{} has no TYPE",
            sample.name
        );
        assert!(
            family.starts_with("cohort_") || family.starts_with("process_"),
            "{family} is neither cohort's nor the process collector's"
        );
    }
    cohort.shutdown().await;
}

#[tokio::test]
async fn no_label_ever_carries_request_data() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(
        Route::new("r")
            .stable(&stable)
            .canary(&canary)
            .path_prefix("/r")
            .sticky(&["header:x-user-id", "cookie:session"])
            .canary_percent(50)
            .trusted(&["10.0.0.0/8"]),
    )
    .await;
    const MARKER: &str = "zq7marker";
    let path = format!("/r/{MARKER}-path?{MARKER}=v-{MARKER}");
    let session = format!("session={MARKER}-cookie");
    let user = format!("{MARKER}-user");
    let host = format!("{MARKER}.example");
    let variant = format!("{MARKER}-variant");
    let requests: [(String, Vec<(&str, &str)>); 5] = [
        (path.clone(), vec![("x-user-id", &user)]),
        (path.clone(), vec![("cookie", &session)]),
        (
            path.clone(),
            vec![("host", &host), ("x-cohort-variant", &variant)],
        ),
        (path.clone(), vec![("x-cohort-variant", "canary")]),
        (format!("/{MARKER}-unrouted"), vec![("x-user-id", &user)]),
    ];
    for (path, headers) in &requests {
        get(&cohort.url(path), headers).await;
    }
    let text = cohort.metrics().await;
    let exp = scrape_until(&cohort, |e| e.sum("cohort_requests_total", &[]) >= 4.0).await;
    let text = text + &cohort.metrics().await;
    assert!(
        !text.to_ascii_lowercase().contains(MARKER),
        "request data leaked into /metrics:\n{text}"
    );
    // Every label takes values from a small, fixed set.
    for s in &exp.samples {
        for (name, value) in &s.labels {
            let ok = match name.as_str() {
                "route" => value == "r",
                // cohort_rollout_info: the config's salt, and no rollout start.
                "salt" => value == "r-salt",
                "start" => value.is_empty(),
                "variant" => value == "stable" || value == "canary",
                "status" => value.len() == 3 && value.bytes().all(|b| b.is_ascii_digit()),
                "kind" => {
                    ["connect", "timeout", "reset", "tls", "protocol"].contains(&value.as_str())
                }
                "source" => SOURCES.contains(&value.as_str()),
                "result" => value == "ok" || value == "error",
                "reason" => Reason::ALL.iter().any(|r| r.as_str() == value),
                "version" => value == env!("CARGO_PKG_VERSION"),
                "state" => cohort::rollout::RolloutState::ALL
                    .iter()
                    .any(|state| state.as_str() == value),
                "le" => BUCKET_LES.contains(&value.as_str()),
                _ => false,
            };
            assert!(ok, "unexpected label {name}={value:?} on {}", s.name);
        }
    }
    cohort.shutdown().await;
}

#[tokio::test]
async fn two_instances_in_one_process_keep_separate_counts() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let route = Route::new("r")
        .stable(&stable)
        .canary(&canary)
        .canary_percent(0);
    let a = TestCohort::start(route.clone()).await;
    let b = TestCohort::start(route.clone()).await;
    for _ in 0..3 {
        assert_eq!(get(&a.url("/"), &[("x-user-id", "u")]).await.status, 200);
    }
    for _ in 0..5 {
        assert_eq!(get(&b.url("/"), &[("x-user-id", "u")]).await.status, 200);
    }
    let labels = [("route", "r"), ("variant", "stable"), ("status", "200")];
    let exp_a = scrape_until(&a, |e| e.sum("cohort_requests_total", &[]) >= 3.0).await;
    let exp_b = scrape_until(&b, |e| e.sum("cohort_requests_total", &[]) >= 5.0).await;
    assert_eq!(exp_a.value("cohort_requests_total", &labels), 3.0);
    assert_eq!(exp_b.value("cohort_requests_total", &labels), 5.0);
    let count = [("route", "r"), ("variant", "stable")];
    assert_eq!(
        exp_a.value("cohort_request_duration_seconds_count", &count),
        3.0
    );
    assert_eq!(
        exp_b.value("cohort_request_duration_seconds_count", &count),
        5.0
    );
    assert_eq!(exp_a.value("cohort_config_generation", &[]), 1.0);
    assert_eq!(exp_b.value("cohort_config_generation", &[]), 1.0);
    // A third instance started now sees nothing of the others' traffic.
    let c = TestCohort::start(route).await;
    let exp_c = Exposition::parse(&c.metrics().await);
    assert_eq!(exp_c.sum("cohort_requests_total", &[]), 0.0);
    assert_eq!(
        exp_c.value("cohort_request_duration_seconds_count", &count),
        0.0
    );
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn promtool_accepts_the_real_metrics_page() {
    let (cohort, _stable, _canary) = start_busy().await;
    let text = cohort.metrics().await;
    cohort.shutdown().await;
    support::promtool_check_metrics(&text);
}

/// DESIGN §5: what a production scrape of a fresh instance (no traffic yet) finds. Every
/// counter with known labels is there at 0, so `rate()` and `absent()` alerts work from
/// the first scrape; the build info and the process collector's families are there too.
/// The real binary, so the process figures are its own and its start is recent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_instance_exports_every_known_series_at_zero_and_the_process_figures() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Two unguarded routes: rollbacks are counted on every route, not only guarded ones.
    // Nothing listens upstream; no request is sent.
    let nowhere = ["http://127.0.0.1:9"];
    let config = Config::new()
        .route(
            Route::new("web")
                .path_prefix("/")
                .salt("web-v1")
                .canary_percent(5)
                .stable_urls(&nowhere)
                .canary_urls(&nowhere),
        )
        .route(
            Route::new("api")
                .path_prefix("/api")
                .salt("api-v1")
                .stable_urls(&nowhere),
        );
    let config = process::write_file(dir.path(), "cohort.toml", &config.to_toml());
    let started = std::time::SystemTime::now();
    let mut cohort = process::Cohort::spawn(&["run", "-c", &config]);
    let (_proxy, admin) = cohort.wait_serving(Duration::from_secs(20)).await;
    let answer = get(&format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(answer.status, 200);
    let text = answer.text();
    let exp = Exposition::parse(&text);

    for status in ["400", "404", "408", "413", "414", "431"] {
        let labels = [("status", status)];
        assert_eq!(
            exp.get("cohort_unrouted_requests_total", &labels),
            Some(0.0),
            "unrouted {status}"
        );
    }
    for result in ["ok", "error"] {
        let labels = [("result", result)];
        assert_eq!(
            exp.get("cohort_config_reloads_total", &labels),
            Some(0.0),
            "reloads {result}"
        );
    }
    for route in ["web", "api"] {
        for reason in Reason::ALL {
            let labels = [("route", route), ("reason", reason.as_str())];
            assert_eq!(
                exp.get("cohort_rollbacks_total", &labels),
                Some(0.0),
                "rollbacks {labels:?}"
            );
        }
        for variant in ["stable", "canary"] {
            for kind in ["connect", "timeout", "reset", "tls", "protocol"] {
                let labels = [("route", route), ("variant", variant), ("kind", kind)];
                assert_eq!(
                    exp.get("cohort_upstream_errors_total", &labels),
                    Some(0.0),
                    "upstream errors {labels:?}"
                );
            }
        }
    }
    assert_eq!(exp.sum("cohort_requests_total", &[]), 0.0, "no traffic yet");
    assert_eq!(
        exp.get(
            "cohort_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );

    // The process collector's figures, with plausible values.
    let one = |name: &str| {
        exp.get(name, &[])
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    let rss = one("process_resident_memory_bytes");
    assert!(rss > 1024.0 * 1024.0, "RSS {rss}");
    assert!(one("process_virtual_memory_bytes") >= rss);
    let fds = one("process_open_fds");
    assert!(fds > 3.0, "open fds {fds}");
    assert!(one("process_max_fds") >= fds);
    let cpu = one("process_cpu_seconds_total");
    assert!(cpu >= 0.0, "CPU seconds {cpu}");
    let start = one("process_start_time_seconds");
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs_f64()
    };
    let now = unix(std::time::SystemTime::now());
    // Ticks of 10 ms after a boot time in whole seconds (rounded down): a little slack.
    assert!(
        start >= unix(started) - 2.0 && start <= now + 1.0 && now - start < 60.0,
        "start time {start}, spawned at {}, now {now}",
        unix(started)
    );

    let families = [
        ("cohort_build_info", "gauge"),
        ("cohort_rollbacks_total", "counter"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ];
    for (name, kind) in families {
        let help = exp.help.get(name).map(String::as_str).unwrap_or("");
        assert!(!help.trim().is_empty(), "{name} has no HELP text");
        assert_eq!(
            exp.types.get(name).map(String::as_str),
            Some(kind),
            "{name}"
        );
    }
    support::promtool_check_metrics(&text);

    cohort.signal("TERM");
    let status = cohort.exit_within(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", cohort.stderr());
}
