//! Fleet-wide evidence (DESIGN §12, `source = { prometheus = URL }`) against the real
//! Prometheus server (Debian package `prometheus`), scraping three cohort instances
//! every second, each instance getting a third of the traffic:
//!
//! - each instance's own share of a failing canary is too thin for its guard
//!   (`min_requests` is never reached locally, which the test first shows with
//!   Prometheus down: the guards judge local counts, count the failed reads, and do
//!   not roll back); once Prometheus runs, all three roll back on the fleet's counts,
//!   within one scrape plus one evaluation interval of each other;
//! - a replica started after the rollback, with an empty `state_dir`, adopts it
//!   before its first request and never sends a user to the failed canary;
//! - with Prometheus stopped, the guards judge local counts again and count the
//!   failed reads; nothing returns the canary;
//! - a sequential guard judges the fleet's increments, and the three roll back
//!   together too.
//!
//! Prometheus and cohort listen on loopback only; traffic is paced and bounded.
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use support::prometheus::{free_port, Prometheus};
use support::{client, get, key_in, send, Config, FakeUpstream, Guard, Route, TestCohort};

const SALT: &str = "fleet-test";
/// Prometheus' scrape interval and cohort's fleet read interval, both 1 s: replicas
/// roll back within one of each of the first.
const SCRAPE_PLUS_EVALUATION: Duration = Duration::from_secs(2);
/// Scheduling on a shared two-core machine.
const MARGIN: Duration = Duration::from_millis(750);

fn web(stable: &FakeUpstream, canary: &FakeUpstream, guard: Guard) -> Route {
    Route::new("web")
        .sticky(&["header:x-user-id"])
        .salt(SALT)
        .canary_percent(50)
        .stable(stable)
        .canary(canary)
        .guard(guard)
}

/// Paced requests to one instance: every `every`, one from a user in the canary and
/// one from a user in stable, until stopped (or 180 s: bounded whatever happens).
struct Paced {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Paced {
    fn start(cohort: &TestCohort, every: Duration) -> Paced {
        let stop = Arc::new(AtomicBool::new(false));
        let (url, flag) = (cohort.url("/"), stop.clone());
        let users = [
            key_in("canary", SALT, 50.0, "user"),
            key_in("stable", SALT, 50.0, "user"),
        ];
        let task = tokio::spawn(async move {
            let http = client();
            let started = Instant::now();
            while !flag.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(180) {
                for user in &users {
                    send(&http, "GET", &url, &[("x-user-id", user)], Bytes::new()).await;
                }
                tokio::time::sleep(every).await;
            }
        });
        Paced { stop, task }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("traffic task");
    }
}

async fn verdict(cohort: &TestCohort) -> (u16, Value) {
    let answer = get(&cohort.admin_url("/routes/web/verdict"), &[]).await;
    let body = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    (answer.status, body)
}

/// Polls every instance's verdict every 50 ms until each answers `fail`; returns
/// when each first did (from `since`) and the body it answered then.
async fn until_all_fail(
    cohorts: &[TestCohort],
    since: Instant,
    bound: Duration,
) -> Vec<(Duration, Value)> {
    let mut failed: Vec<Option<(Duration, Value)>> = vec![None; cohorts.len()];
    while failed.iter().any(Option::is_none) {
        for (cohort, slot) in cohorts.iter().zip(failed.iter_mut()) {
            if slot.is_none() {
                let (status, body) = verdict(cohort).await;
                if status == 503 && body["verdict"] == "fail" {
                    *slot = Some((since.elapsed(), body));
                }
            }
        }
        assert!(
            since.elapsed() < bound,
            "not every instance rolled back within {bound:?}: {failed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    failed.into_iter().flatten().collect()
}

/// The canary requests a sequential fleet judge has counted since it started.
async fn fleet_canary_requests(cohort: &TestCohort) -> u64 {
    let (_, body) = verdict(cohort).await;
    assert_eq!(body["source"]["replicas"], 3, "{body}");
    body["evidence"]["since_start"]["canary"]["requests"]
        .as_u64()
        .unwrap_or(0)
}

/// The canary requests this instance served.
async fn own_canary_requests(cohort: &TestCohort) -> f64 {
    cohort
        .series(
            "cohort_requests_total",
            &[("route", "web"), ("variant", "canary"), ("status", "200")],
        )
        .await
}

/// Waits (within 60 s of `since`) until every instance has rolled back, prints when
/// each did (`what`: after what), and asserts they did within one scrape plus one
/// evaluation interval of each other. Returns each instance's time and verdict body.
async fn roll_back_together(
    cohorts: &[TestCohort],
    since: Instant,
    what: &str,
) -> Vec<(Duration, Value)> {
    let timings = until_all_fail(cohorts, since, Duration::from_secs(60)).await;
    let times = timings.iter().map(|(t, _)| *t);
    let spread = times.clone().max().unwrap_or_default() - times.clone().min().unwrap_or_default();
    println!(
        "fleet rollback {what}: {:?}; spread {spread:?}",
        times.collect::<Vec<_>>()
    );
    assert!(
        spread <= SCRAPE_PLUS_EVALUATION + MARGIN,
        "rolled back {spread:?} apart: {timings:?}"
    );
    timings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_roll_back_together_on_fleet_evidence_none_had_alone() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    canary.set_status(500);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    // Locally each instance sees about 20 canary requests in a 10 s window, under
    // min_requests = 30; the fleet sees about 60.
    let guard = Guard::new()
        .window("10s")
        .min_requests(30)
        .max_error_ratio(0.5)
        .prometheus(&url);
    let mut cohorts = Vec::new();
    for _ in 0..3 {
        cohorts.push(TestCohort::start(web(&stable, &canary, guard.clone())).await);
    }
    let every = Duration::from_millis(500);
    let traffic: Vec<Paced> = cohorts.iter().map(|c| Paced::start(c, every)).collect();

    // Prometheus is not running yet: each guard judges its own thin slice, counts the
    // failed reads, and does not roll back, though every canary answer is a 500.
    let local_phase = Instant::now();
    while local_phase.elapsed() < Duration::from_secs(13) {
        for cohort in &cohorts {
            let (status, body) = verdict(cohort).await;
            assert_eq!(status, 200, "rolled back on local evidence: {body}");
            assert_eq!(body["source"]["kind"], "prometheus", "{body}");
            assert_eq!(body["source"]["judged"], "local", "{body}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for cohort in &cohorts {
        let (_, body) = verdict(cohort).await;
        assert_eq!(body["verdict"], "inconclusive", "{body}");
        let requests = body["canary"]["requests"].as_u64().unwrap_or(0);
        assert!(
            (10..30).contains(&requests),
            "local canary requests in the window: {body}"
        );
        assert!(
            body["source"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("cannot connect")),
            "{body}"
        );
        let errors = cohort
            .series("cohort_guard_source_errors_total", &[("route", "web")])
            .await;
        assert!(errors >= 5.0, "failed reads counted: {errors}");
    }

    // Prometheus starts: the fleet's counts are read, and all three roll back.
    let targets: Vec<_> = cohorts.iter().map(|c| c.admin).collect();
    let started = Instant::now();
    let mut prometheus = Prometheus::start_on(port, &targets, None).await;
    let timings = roll_back_together(&cohorts, started, "after Prometheus started").await;
    let judged_on_fleet = timings
        .iter()
        .filter(|(_, body)| body["reason"] == "error_ratio")
        .count();
    assert!(judged_on_fleet >= 1, "{timings:?}");
    for (_, body) in &timings {
        let reason = body["reason"].as_str().unwrap_or("");
        assert!(reason == "error_ratio" || reason == "adopted", "{body}");
        if reason == "error_ratio" {
            assert_eq!(body["source"]["judged"], "fleet", "{body}");
            assert_eq!(body["source"]["replicas"], 3, "{body}");
            let requests = body["canary"]["requests"].as_u64().unwrap_or(0);
            assert!(requests >= 30, "fleet canary requests: {body}");
        }
    }
    // The series the fleet reads pass promtool: HELP, explicit buckets, counters.
    let text = cohorts[0].metrics().await;
    support::promtool_check_metrics(&text);
    for family in [
        "# TYPE cohort_guard_duration_seconds histogram",
        "# TYPE cohort_guard_source_errors_total counter",
        "# TYPE cohort_rollout_info gauge",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    for cohort in &cohorts {
        let rolled_back = cohort
            .series(
                "cohort_rollout_state",
                &[("route", "web"), ("state", "rolled_back")],
            )
            .await;
        assert_eq!(rolled_back, 1.0);
        let info = cohort
            .series(
                "cohort_rollout_info",
                &[("route", "web"), ("salt", SALT), ("start", "")],
            )
            .await;
        assert_eq!(info, 1.0);
    }

    // Once the fleet's window no longer holds the failure (no canary traffic since),
    // a replica started with an empty state_dir has only the other replicas' word:
    // it adopts their rollback before its first request, and not one user reaches the
    // failed canary through it.
    let drained = Instant::now();
    loop {
        let (_, body) = verdict(&cohorts[0]).await;
        if body["canary"]["requests"].as_u64().unwrap_or(u64::MAX) < 30 {
            break;
        }
        assert!(drained.elapsed() < Duration::from_secs(30), "{body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let state_dir = tempfile::tempdir().expect("tempdir");
    let late = TestCohort::start(Config::new().state_dir(state_dir.path()).route(web(
        &stable,
        &canary,
        guard.clone(),
    )))
    .await;
    let canary_hits = canary.hits();
    let user = key_in("canary", SALT, 50.0, "user");
    for _ in 0..20 {
        let answer = get(&late.url("/"), &[("x-user-id", &user)]).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    assert_eq!(
        canary.hits(),
        canary_hits,
        "the late replica sent users to the canary"
    );
    let (status, body) = verdict(&late).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (503, Some("adopted")),
        "{body}"
    );
    assert_eq!(
        late.series(
            "cohort_rollbacks_total",
            &[("route", "web"), ("reason", "adopted")]
        )
        .await,
        1.0
    );
    // …and remembers it: a restart without Prometheus keeps the canary at 0 %.
    prometheus.stop();
    let late = late.restart().await;
    let (status, body) = verdict(&late).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (503, Some("adopted")),
        "{body}"
    );

    // Prometheus is gone: every guard judges local counts again, counts the failed
    // reads, and stays rolled back.
    let stopped = Instant::now();
    for cohort in &cohorts {
        let before = cohort
            .series("cohort_guard_source_errors_total", &[("route", "web")])
            .await;
        cohort
            .wait_series_at_least(
                "cohort_guard_source_errors_total",
                &[("route", "web")],
                before + 2.0,
                Duration::from_secs(10),
                "failed reads counted after Prometheus stopped",
            )
            .await;
        let (status, body) = verdict(cohort).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["source"]["judged"], "local", "{body}");
    }
    println!(
        "local fallback on every instance within {:?} of Prometheus stopping",
        stopped.elapsed()
    );

    for paced in traffic {
        paced.stop().await;
    }
    late.shutdown().await;
    for cohort in cohorts {
        cohort.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequential_guard_judges_the_fleets_increments() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let port = free_port();
    // With latency_over, the fleet query also asks for that bucket (a regex on `le`).
    let guard = Guard::new()
        .method("sequential")
        .min_requests(10)
        .latency_over("250ms")
        .prometheus(&format!("http://127.0.0.1:{port}"));
    let mut cohorts = Vec::new();
    for _ in 0..3 {
        cohorts.push(TestCohort::start(web(&stable, &canary, guard.clone())).await);
    }
    let targets: Vec<_> = cohorts.iter().map(|c| c.admin).collect();
    let prometheus = Prometheus::start_on(port, &targets, None).await;
    let traffic: Vec<Paced> = cohorts
        .iter()
        .map(|c| Paced::start(c, Duration::from_millis(200)))
        .collect();

    // Healthy: each instance's judge passes on the fleet's counts, more than its own.
    let healthy = Instant::now();
    'healthy: loop {
        assert!(
            healthy.elapsed() < Duration::from_secs(60),
            "no fleet pass within 60 s:\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        for cohort in &cohorts {
            let (status, body) = verdict(cohort).await;
            let since = &body["evidence"]["since_start"]["canary"]["requests"];
            if status != 200
                || body["verdict"] != "pass"
                || body["source"]["judged"] != "fleet"
                || since.as_u64().unwrap_or(0) < 30
            {
                continue 'healthy;
            }
        }
        break;
    }
    // Over the same few seconds, the fleet's judge counts about three times the
    // canary requests this instance served.
    let (fleet_before, own_before) = (
        fleet_canary_requests(&cohorts[0]).await,
        own_canary_requests(&cohorts[0]).await,
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (fleet_after, own_after) = (
        fleet_canary_requests(&cohorts[0]).await,
        own_canary_requests(&cohorts[0]).await,
    );
    let (fleet, own) = (fleet_after - fleet_before, own_after - own_before);
    assert!(
        own > 0.0 && fleet as f64 >= 2.0 * own,
        "over 4 s the fleet judge counted {fleet} canary requests, this instance served {own}"
    );

    canary.set_status(500);
    let failing = Instant::now();
    let timings =
        roll_back_together(&cohorts, failing, "(sequential) after the canary failed").await;
    for (_, body) in &timings {
        let reason = body["reason"].as_str().unwrap_or("");
        assert!(
            reason == "sequential_errors" || reason == "adopted",
            "{body}"
        );
    }

    for paced in traffic {
        paced.stop().await;
    }
    for cohort in cohorts {
        cohort.shutdown().await;
    }
}
