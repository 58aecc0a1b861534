//! `GET /routes/{name}/verdict` end to end (DESIGN §12): a sequential guard on a real
//! cohort answers `pass` (200) for a healthy canary and `fail` (503) once a canary
//! answering 500 is rolled back, with reason `sequential_errors`, until it is resumed;
//! a canary failing no more than stable passes; a slow canary fails on
//! `sequential_latency`; the metrics say the same; and the
//! Flagger and Argo Rollouts snippets in the README are valid YAML pointing at it.
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use support::{client, get, send, Config, FakeUpstream, Guard, Route, TestCohort};

/// The route "shop": sticky on `x-user-id`, half the users on the canary.
fn shop(stable: &FakeUpstream, canary: &FakeUpstream, guard: Guard) -> Route {
    Route::new("shop")
        .sticky(&["header:x-user-id"])
        .salt("verdict-test")
        .canary_percent(50)
        .stable(stable)
        .canary(canary)
        .guard(guard)
}

/// Keyed requests from `senders` concurrent users until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(cohort: &TestCohort, senders: u64) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..senders)
            .map(|sender| {
                let (url, stop) = (cohort.url("/"), stop.clone());
                tokio::spawn(async move {
                    let http = client();
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        i += 1;
                        let key = format!("user-{sender}-{i}");
                        send(&http, "GET", &url, &[("x-user-id", &key)], Bytes::new()).await;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Traffic { stop, tasks }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("traffic task");
        }
    }
}

/// The verdict endpoint's status and body.
async fn verdict(cohort: &TestCohort, route: &str) -> (u16, Value) {
    let answer = get(&cohort.admin_url(&format!("/routes/{route}/verdict")), &[]).await;
    let body = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    (answer.status, body)
}

/// Polls the verdict until `check` holds, or fails the test after `limit`.
async fn verdict_until(
    cohort: &TestCohort,
    what: &str,
    limit: Duration,
    check: impl Fn(u16, &Value) -> bool,
) -> (u16, Value) {
    let start = Instant::now();
    loop {
        let (status, body) = verdict(cohort, "shop").await;
        if check(status, &body) {
            return (status, body);
        }
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}; last answer {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_passes_and_a_failing_one_fails_until_resumed() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let guard = Guard::new()
        .method("sequential")
        .alpha(0.01)
        .min_effect(0.01)
        .min_requests(20);
    let cohort = TestCohort::start(Config::new().route(shop(&stable, &canary, guard))).await;

    // Before any traffic: too little evidence either way, and that is not a failure.
    let (status, body) = verdict(&cohort, "shop").await;
    assert_eq!(
        (status, body["verdict"].as_str()),
        (200, Some("inconclusive"))
    );
    assert_eq!(body["method"], "sequential");

    let traffic = Traffic::start(&cohort, 2);
    let (status, body) = verdict_until(&cohort, "pass", Duration::from_secs(10), |_, b| {
        b["verdict"] == "pass"
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["route"], "shop");
    assert!(body["evidence"]["since_start"]["canary"]["requests"].as_u64() >= Some(20));
    assert_eq!(body["evidence"]["alpha"], 0.01);
    assert!(
        body["evidence"]["errors"].as_f64().is_some_and(|e| e < 1.0),
        "{body}"
    );
    assert!(body["canary"]["requests"].as_u64() > Some(0), "{body}");
    assert_eq!(
        cohort
            .series_eventually(
                "cohort_guard_verdict",
                &[("route", "shop"), ("verdict", "pass")],
                1.0
            )
            .await,
        1.0
    );
    // Flagger's webhooks POST: the same answer.
    let posted = send(
        &client(),
        "POST",
        &cohort.admin_url("/routes/shop/verdict"),
        &[("content-type", "application/json")],
        Bytes::from_static(b"{\"name\":\"shop\",\"phase\":\"Progressing\"}"),
    )
    .await;
    assert_eq!(posted.status, 200, "{}", posted.text());

    canary.set_status(500);
    let (status, body) = verdict_until(&cohort, "fail", Duration::from_secs(10), |_, b| {
        b["verdict"] == "fail"
    })
    .await;
    assert_eq!(status, 503, "a fail answers 503 so a Flagger webhook fails");
    assert_eq!(body["reason"], "sequential_errors");
    assert!(
        body["evidence"]["errors"]
            .as_f64()
            .is_some_and(|e| e >= 1.0),
        "{body}"
    );
    traffic.stop().await;
    assert_eq!(
        cohort
            .series(
                "cohort_rollbacks_total",
                &[("route", "shop"), ("reason", "sequential_errors")]
            )
            .await,
        1.0
    );
    assert_eq!(
        cohort
            .series_eventually(
                "cohort_guard_verdict",
                &[("route", "shop"), ("verdict", "fail")],
                1.0
            )
            .await,
        1.0
    );
    assert_eq!(
        cohort
            .series(
                "cohort_guard_verdict",
                &[("route", "shop"), ("verdict", "pass")]
            )
            .await,
        0.0,
        "one-hot"
    );
    assert!(
        cohort
            .series(
                "cohort_guard_evidence",
                &[("route", "shop"), ("signal", "errors")]
            )
            .await
            >= 1.0
    );
    // Rolled back: still `fail`, seconds later and with no canary traffic at all.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = verdict(&cohort, "shop").await;
    assert_eq!((status, body["verdict"].as_str()), (503, Some("fail")));

    // The status page shows the verdict and its evidence.
    let page = get(&cohort.admin_url("/"), &[]).await.text();
    assert!(
        page.contains("<div class=\"verdict bad\">verdict: fail (sequential), reason sequential_errors · evidence errors "),
        "{page}"
    );

    // A resume starts the evidence afresh: not a failure any more.
    canary.set_status(200);
    let resumed = send(
        &client(),
        "POST",
        &cohort.admin_url("/routes/shop/resume"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(resumed.status, 200, "{}", resumed.text());
    let (status, body) =
        verdict_until(&cohort, "not fail", Duration::from_secs(3), |s, _| s == 200).await;
    assert_ne!(body["verdict"], "fail", "{body}");
    assert_eq!(status, 200);
    cohort.shutdown().await;
}

/// Both variants failing every request is not the canary's fault: the sequential
/// judge compares with stable, so it passes (and its evidence falls), where a fixed
/// `max_error_ratio` would roll the canary back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_no_worse_than_a_failing_stable_passes() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    stable.set_status(500);
    canary.set_status(500);
    let guard = Guard::new().method("sequential").min_requests(20);
    let cohort = TestCohort::start(Config::new().route(shop(&stable, &canary, guard))).await;
    let traffic = Traffic::start(&cohort, 2);
    let (status, body) = verdict_until(&cohort, "pass", Duration::from_secs(10), |_, b| {
        b["verdict"] == "pass"
    })
    .await;
    // Keep judging a while longer: the evidence only falls.
    tokio::time::sleep(Duration::from_secs(3)).await;
    traffic.stop().await;
    assert_eq!(status, 200);
    let (status, later) = verdict(&cohort, "shop").await;
    assert_eq!(
        (status, later["verdict"].as_str()),
        (200, Some("pass")),
        "{later}"
    );
    let evidence = |b: &Value| b["evidence"]["errors"].as_f64().unwrap_or(f64::NAN);
    assert!(evidence(&later) < 0.0, "{later}");
    assert!(evidence(&later) <= evidence(&body), "{body} then {later}");
    assert!(later["canary"]["error_ratio"] == 1.0, "{later}");
    assert_eq!(
        cohort
            .series(
                "cohort_rollbacks_total",
                &[("route", "shop"), ("reason", "sequential_errors")]
            )
            .await,
        0.0
    );
    cohort.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_canary_fails_on_latency() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    canary.set_delay(Duration::from_millis(300));
    let guard = Guard::new()
        .method("sequential")
        .latency_over("250ms")
        .min_requests(5);
    let cohort = TestCohort::start(Config::new().route(shop(&stable, &canary, guard))).await;
    let traffic = Traffic::start(&cohort, 8);
    let (status, body) = verdict_until(&cohort, "fail", Duration::from_secs(15), |_, b| {
        b["verdict"] == "fail"
    })
    .await;
    traffic.stop().await;
    assert_eq!(status, 503);
    assert_eq!(body["reason"], "sequential_latency", "{body}");
    assert!(
        body["evidence"]["latency"]
            .as_f64()
            .is_some_and(|e| e >= 1.0),
        "{body}"
    );
    assert_eq!(body["evidence"]["latency_over_seconds"], 0.25);
    assert_eq!(
        cohort
            .series(
                "cohort_rollbacks_total",
                &[("route", "shop"), ("reason", "sequential_latency")]
            )
            .await,
        1.0
    );
    cohort.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_guards_answer_too_and_routes_without_a_guard_are_404() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let guarded = shop(
        &stable,
        &canary,
        Guard::new()
            .window("2s")
            .min_requests(5)
            .max_error_ratio(0.5),
    );
    let plain = Route::new("plain")
        .path_prefix("/plain")
        .stable(&stable)
        .canary(&canary);
    let cohort = TestCohort::start(Config::new().route(guarded).route(plain)).await;
    let traffic = Traffic::start(&cohort, 1);
    let (status, body) = verdict_until(&cohort, "pass", Duration::from_secs(5), |_, b| {
        b["verdict"] == "pass"
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["method"], "threshold");
    assert_eq!(body["evidence"]["errors"], 0.0, "no errors: 0 of the limit");
    assert!(
        body["evidence"]["latency"].is_null(),
        "no max_p99, no latency"
    );
    canary.set_status(500);
    let (status, body) = verdict_until(&cohort, "fail", Duration::from_secs(5), |_, b| {
        b["verdict"] == "fail"
    })
    .await;
    traffic.stop().await;
    assert_eq!(status, 503);
    assert_eq!(body["reason"], "error_ratio");

    // `/routes` (what `cohort status` reads) carries the same verdict, and none for a
    // route without a guard.
    let routes = get(&cohort.admin_url("/routes"), &[]).await;
    let doc: Value = serde_json::from_slice(&routes.body).expect("json");
    assert_eq!(doc["routes"][0]["verdict"]["verdict"], "fail");
    assert_eq!(doc["routes"][0]["verdict"]["reason"], "error_ratio");
    assert!(doc["routes"][1]["verdict"].is_null());

    for path in ["/routes/plain/verdict", "/routes/nowhere/verdict"] {
        let answer = get(&cohort.admin_url(path), &[]).await;
        assert_eq!(answer.status, 404, "{path}: {}", answer.text());
    }
    let put = send(
        &client(),
        "PUT",
        &cohort.admin_url("/routes/shop/verdict"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(put.status, 405);
    cohort.shutdown().await;
}

/// The `yaml` code blocks of README.md's `### Statistical judgement` section.
fn readme_yaml_blocks() -> Vec<serde_yaml::Value> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("\n### Statistical judgement\n")
        .nth(1)
        .expect("README.md has a `### Statistical judgement` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let section = section.split("\n### ").next().unwrap_or(section);
    section
        .split("```yaml\n")
        .skip(1)
        .map(|block| {
            let text = block.split("```").next().unwrap_or(block);
            serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{e}:\n{text}"))
        })
        .collect()
}

#[test]
fn the_readme_flagger_and_argo_snippets_are_valid_and_point_at_the_verdict() {
    let blocks = readme_yaml_blocks();
    let kind = |k: &str| {
        blocks
            .iter()
            .find(|b| b["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} snippet in the README"))
    };
    let canary = kind("Canary");
    assert_eq!(canary["apiVersion"], "flagger.app/v1beta1");
    let hooks = canary["spec"]["analysis"]["webhooks"]
        .as_sequence()
        .expect("webhooks");
    let hook = hooks
        .iter()
        .find(|h| h["type"] == "rollout")
        .expect("a rollout webhook");
    let url = hook["url"].as_str().expect("url");
    assert!(
        url.starts_with("http://") && url.ends_with("/routes/checkout/verdict"),
        "{url}"
    );

    let template = kind("AnalysisTemplate");
    assert_eq!(template["apiVersion"], "argoproj.io/v1alpha1");
    let metric = &template["spec"]["metrics"][0];
    assert_eq!(metric["successCondition"], "result.verdict != \"fail\"");
    let web = &metric["provider"]["web"];
    assert!(
        web["url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/routes/{{args.route}}/verdict")),
        "{web:?}"
    );
}
