//! Progressive rollouts and guards end to end: a canary that goes bad is rolled back to
//! 0 % by itself, stable users never notice, a restart keeps it rolled back, `resume`
//! clears it; `hold` stays on its step while failing; the webhook is retried.
#[path = "support/process.rs"]
mod process;
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort::guard::wall_now;
use cohort::rollout::format_rfc3339;
use http_body_util::BodyExt;
use support::{client, get, key_in, send, Config, FakeUpstream, Guard, Route, TestCohort};

/// The route "shop" under test: sticky on `x-user-id`, salt "rollout-test".
fn shop(stable: &FakeUpstream, canary: &FakeUpstream) -> Route {
    Route::new("shop")
        .sticky(&["header:x-user-id"])
        .salt("rollout-test")
        .stable(stable)
        .canary(canary)
}

async fn route_state(cohort: &TestCohort) -> serde_json::Value {
    let answer = get(&cohort.admin_url("/routes"), &[]).await;
    assert_eq!(answer.status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&answer.body).expect("json");
    doc["routes"][0].clone()
}

async fn wait_for(
    cohort: &TestCohort,
    what: &str,
    limit: Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let state = route_state(cohort).await;
        if check(&state) {
            return state;
        }
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}; route state: {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a steady stream of keyed requests; counts failures of stable users.
struct Traffic {
    stop: Arc<AtomicBool>,
    stable_failures: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(cohort: &TestCohort) -> Traffic {
        let url = cohort.url("/");
        let stop = Arc::new(AtomicBool::new(false));
        let stable_failures = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(AtomicUsize::new(0));
        let (s, f, n) = (stop.clone(), stable_failures.clone(), sent.clone());
        let task = tokio::spawn(async move {
            let http = client();
            let mut i = 0u64;
            while !s.load(Ordering::SeqCst) {
                i += 1;
                let key = format!("user-{i}");
                let answer = send(&http, "GET", &url, &[("x-user-id", &key)], Bytes::new()).await;
                if answer.variant() == Some("stable") && answer.status != 200 {
                    f.fetch_add(1, Ordering::SeqCst);
                }
                n.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Traffic {
            stop,
            stable_failures,
            sent,
            task,
        }
    }

    async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("traffic task");
        (
            self.sent.load(Ordering::SeqCst),
            self.stable_failures.load(Ordering::SeqCst),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_goes_bad_at_step_two_is_rolled_back_and_stays_rolled_back() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().expect("tempdir");
    // state_dir outlives the first instance's directory: it is what a restart reads.
    let state_root = tempfile::tempdir().expect("tempdir");
    let state_dir = state_root.path().join("state");
    let start = format_rfc3339(wall_now());
    let path = Config::new()
        .state_dir(&state_dir)
        .route(
            shop(&stable, &canary)
                .rollout(&start, &[10, 30, 60, 100], "3s")
                .guard(
                    Guard::new()
                        .window("2s")
                        .min_requests(10)
                        .max_error_ratio(0.2)
                        .action("rollback"),
                ),
        )
        .write(dir.path());
    let cohort = TestCohort::start_from(&path, dir).await;
    let traffic = Traffic::start(&cohort);

    let state = route_state(&cohort).await;
    assert_eq!(state["rollout"]["state"], "ramping");
    assert!(state["rollout"]["next_step_at"].is_string());

    // Step 2 (index 1, 30 %) begins: the canary starts answering 500.
    wait_for(&cohort, "step 2", Duration::from_secs(6), |s| {
        s["rollout"]["step"] == 1
    })
    .await;
    canary.set_status(500);
    let went_bad = Instant::now();
    let rolled = wait_for(&cohort, "the rollback", Duration::from_secs(5), |s| {
        s["canary_percent"] == 0
    })
    .await;
    let took = went_bad.elapsed();
    eprintln!("canary bad -> 0 % in {took:?}");
    assert!(took < Duration::from_secs(2), "rollback took {took:?}");
    assert_eq!(rolled["rollout"]["state"], "rolled_back");
    assert_eq!(rolled["guard"]["rolled_back"]["reason"], "error_ratio");
    // The gauge shows what the guard judged (the bad seconds are still in its window).
    assert!(
        cohort
            .series(
                "cohort_guard_error_ratio",
                &[("route", "shop"), ("variant", "canary")]
            )
            .await
            > 0.2
    );

    // Rolled back means rolled back: later steps do not bring it back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(route_state(&cohort).await["canary_percent"], 0);
    let (sent, stable_failures) = traffic.stop().await;
    assert!(sent > 100, "traffic ran ({sent})");
    assert_eq!(stable_failures, 0, "stable users saw failures");
    let canary_hits_after = canary.hits();
    assert_eq!(
        cohort
            .series(
                "cohort_rollbacks_total",
                &[("route", "shop"), ("reason", "error_ratio")]
            )
            .await,
        1.0
    );
    assert_eq!(
        cohort
            .series(
                "cohort_rollout_state",
                &[("route", "shop"), ("state", "rolled_back")]
            )
            .await,
        1.0
    );
    assert_eq!(
        cohort
            .series(
                "cohort_rollout_state",
                &[("route", "shop"), ("state", "ramping")]
            )
            .await,
        0.0
    );
    assert_eq!(
        cohort
            .series("cohort_canary_weight_ratio", &[("route", "shop")])
            .await,
        0.0
    );
    assert_eq!(
        std::fs::read_dir(&state_dir).expect("state_dir").count(),
        1,
        "one rollback record"
    );
    // Clock steps and rollbacks are not reloads.
    assert_eq!(cohort.series("cohort_config_generation", &[]).await, 1.0);

    // A restart never resumes a failed canary.
    let restarted = cohort.restart().await;
    let state = route_state(&restarted).await;
    assert_eq!(state["canary_percent"], 0);
    assert_eq!(state["rollout"]["state"], "rolled_back");
    for i in 0..50 {
        let answer = get(&restarted.url("/"), &[("x-user-id", &format!("after-{i}"))]).await;
        assert_eq!((answer.status, answer.variant()), (200, Some("stable")));
    }
    assert_eq!(canary.hits(), canary_hits_after);

    // Resume clears it deliberately; the schedule is back in force.
    canary.set_status(200);
    let resumed = send(
        &client(),
        "POST",
        &restarted.admin_url("/routes/shop/resume"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(resumed.status, 200, "{}", resumed.text());
    let state: serde_json::Value = serde_json::from_slice(&resumed.body).expect("json");
    assert_eq!(state["canary_percent"], 10, "the first step again: {state}");
    assert_eq!(state["rollout"]["state"], "ramping");
    // The resume replaced the rollback record: a restart follows the resumed ramp.
    let records: Vec<_> = std::fs::read_dir(&state_dir).expect("state_dir").collect();
    assert_eq!(records.len(), 1);
    let record = std::fs::read_to_string(records[0].as_ref().expect("entry").path()).expect("read");
    assert!(record.contains("\"state\":\"resumed\""), "{record}");
    let again = send(
        &client(),
        "POST",
        &restarted.admin_url("/routes/shop/resume"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(again.status, 409);
    let unknown = send(
        &client(),
        "POST",
        &restarted.admin_url("/routes/nope/resume"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(unknown.status, 404);
    restarted.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_stays_on_its_step_while_failing_and_follows_the_schedule_once_healthy() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    canary.set_status(503);
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let start = format_rfc3339(wall_now());
    let path = Config::new()
        .state_dir(&state_dir)
        .route(
            shop(&stable, &canary)
                .rollout(&start, &[20, 40, 60, 80, 100], "1s")
                .guard(
                    Guard::new()
                        .window("1s")
                        .min_requests(5)
                        .max_error_ratio(0.1)
                        .action("hold"),
                ),
        )
        .write(dir.path());
    let cohort = TestCohort::start_from(&path, dir).await;
    let traffic = Traffic::start(&cohort);

    let held = wait_for(&cohort, "holding", Duration::from_secs(3), |s| {
        s["rollout"]["state"] == "holding"
    })
    .await;
    let held_step = held["rollout"]["step"].as_u64().expect("step");
    // The schedule moves on; the held step does not.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let still = route_state(&cohort).await;
    assert_eq!(still["rollout"]["state"], "holding");
    assert_eq!(still["rollout"]["step"].as_u64(), Some(held_step));
    assert!(
        still["rollout"]["scheduled_step"]
            .as_u64()
            .expect("scheduled")
            > held_step
    );
    assert_eq!(
        cohort
            .series(
                "cohort_rollout_state",
                &[("route", "shop"), ("state", "holding")]
            )
            .await,
        1.0
    );
    assert_eq!(
        cohort
            .series(
                "cohort_rollbacks_total",
                &[("route", "shop"), ("reason", "error_ratio")]
            )
            .await,
        0.0,
        "hold never rolls back"
    );

    canary.set_status(200);
    wait_for(&cohort, "the schedule again", Duration::from_secs(5), |s| {
        s["rollout"]["state"] != "holding" && s["canary_percent"] == 100
    })
    .await;
    let (_, stable_failures) = traffic.stop().await;
    assert_eq!(stable_failures, 0);
    assert_eq!(
        std::fs::read_dir(&state_dir)
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "hold is in memory only"
    );
    cohort.shutdown().await;
}

#[tokio::test]
async fn manual_controls_on_a_rollout_route_and_the_webhook_retried_until_accepted() {
    // A webhook receiver that refuses twice, then accepts.
    let attempts = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook_addr = listener.local_addr().expect("addr");
    let seen = attempts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let body = req.into_body().collect().await.expect("body").to_bytes();
                            let mut list = seen.lock().expect("lock");
                            list.push(serde_json::from_slice(&body).expect("webhook JSON"));
                            let status = if list.len() <= 2 { 500 } else { 204 };
                            let mut resp =
                                http::Response::new(http_body_util::Full::new(Bytes::new()));
                            *resp.status_mut() =
                                http::StatusCode::from_u16(status).expect("status");
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let path = Config::new()
        .state_dir(&state_dir)
        .route(
            shop(&stable, &canary)
                .rollout("2020-01-01T00:00:00Z", &[1, 5, 25], "10m")
                .guard(
                    Guard::new()
                        .max_error_ratio(0.5)
                        .on_rollback(&format!("http://{hook_addr}/hooks/cohort")),
                ),
        )
        .write(dir.path());
    let cohort = TestCohort::start_from(&path, dir).await;
    assert_eq!(
        route_state(&cohort).await["canary_percent"],
        25,
        "long past start: the last step"
    );
    assert_eq!(route_state(&cohort).await["rollout"]["state"], "complete");

    // `set` is refused on a rollout route.
    let put = send(
        &client(),
        "PUT",
        &cohort.admin_url("/routes/shop/canary"),
        &[],
        Bytes::from_static(br#"{"percent": 50}"#),
    )
    .await;
    assert_eq!(put.status, 409);
    assert!(
        put.text().contains("route is under a rollout"),
        "{}",
        put.text()
    );

    // A manual rollback is a guard rollback with reason "manual"; the file is untouched.
    let before = std::fs::read_to_string(&path).expect("read");
    let rollback = send(
        &client(),
        "POST",
        &cohort.admin_url("/routes/shop/rollback"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(rollback.status, 200, "{}", rollback.text());
    let state: serde_json::Value = serde_json::from_slice(&rollback.body).expect("json");
    assert_eq!(state["canary_percent"], 0);
    assert_eq!(std::fs::read_to_string(&path).expect("read"), before);
    assert_eq!(
        cohort
            .series(
                "cohort_rollbacks_total",
                &[("route", "shop"), ("reason", "manual")]
            )
            .await,
        1.0
    );

    let start = Instant::now();
    while attempts.lock().expect("lock").len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the webhook was not retried to success"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let list = attempts.lock().expect("lock").clone();
    assert_eq!(list.len(), 3, "no more attempts after it was accepted");
    let body = &list[2];
    assert_eq!(body["route"], "shop");
    assert_eq!(body["salt"], "rollout-test");
    assert_eq!(body["start"], "2020-01-01T00:00:00Z");
    assert_eq!(body["reason"], "manual");
    assert_eq!(body["step"], 2);
    assert_eq!(body["percent"], 25.0);
    assert!(body["at"].as_str().expect("at").ends_with('Z'));
    assert!(body["canary"]["requests"].is_u64() && body["stable"]["requests"].is_u64());

    // /assign answers with the effective share: a canary user is stable while rolled back.
    let user = key_in("canary", "rollout-test", 25.0, "user");
    let assign_url = cohort.admin_url(&format!("/assign?route=shop&key={user}"));
    let assigned = |answer: support::Answer| -> serde_json::Value {
        assert_eq!(answer.status, 200, "{}", answer.text());
        serde_json::from_slice(&answer.body).expect("json")
    };
    assert_eq!(assigned(get(&assign_url, &[]).await)["variant"], "stable");

    // `cohort rollout resume` (the binary, against this instance's admin API).
    let admin = cohort.admin_url("");
    let out = tokio::task::spawn_blocking(move || {
        process::run_to_end(
            &["rollout", "resume", "shop", "--admin", &admin],
            Duration::from_secs(20),
        )
    })
    .await
    .expect("cli task");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The ramp restarts at its first step from the resume, never at the last (DESIGN §7).
    assert_eq!(route_state(&cohort).await["canary_percent"], 1);
    assert_eq!(route_state(&cohort).await["rollout"]["step"], 0);
    let first_step_user = key_in("canary", "rollout-test", 1.0, "user");
    let first_step_url = cohort.admin_url(&format!("/assign?route=shop&key={first_step_user}"));
    assert_eq!(
        assigned(get(&first_step_url, &[]).await)["variant"],
        "canary"
    );
    // Rollbacks and resumes are not reloads (DESIGN §7).
    assert_eq!(cohort.series("cohort_config_generation", &[]).await, 1.0);
    assert_eq!(
        cohort
            .series("cohort_config_reloads_total", &[("result", "ok")])
            .await,
        0.0
    );
    cohort.shutdown().await;
}

#[tokio::test]
async fn rollout_metrics_pass_promtool() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = Config::new()
        .state_dir(&dir.path().join("state"))
        .route(
            shop(&stable, &canary)
                .rollout("2999-01-01T00:00:00Z", &[1, 5], "1h")
                .guard(Guard::new().max_p99("500ms")),
        )
        .write(dir.path());
    let cohort = TestCohort::start_from(&path, dir).await;
    let state = route_state(&cohort).await;
    assert_eq!(state["rollout"]["state"], "pending");
    assert_eq!(state["canary_percent"], 0);
    assert_eq!(
        cohort
            .series("cohort_rollout_step", &[("route", "shop")])
            .await,
        -1.0
    );
    let metrics = cohort.metrics().await;
    for name in [
        "cohort_rollbacks_total",
        "cohort_rollout_step",
        "cohort_rollout_state",
        "cohort_guard_error_ratio",
        "cohort_guard_p99_seconds",
    ] {
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "{name} lacks HELP"
        );
    }
    let states: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("cohort_rollout_state{"))
        .collect();
    assert_eq!(states.len(), 5, "{states:?}");
    support::promtool_check_metrics(&metrics);
    cohort.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_without_a_rollout_guards_canary_percent() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    canary.set_status(502);
    let dir = tempfile::tempdir().expect("tempdir");
    let state_root = tempfile::tempdir().expect("tempdir");
    let path = Config::new()
        .state_dir(&state_root.path().join("state"))
        .route(
            shop(&stable, &canary).canary_percent(50).guard(
                Guard::new()
                    .window("2s")
                    .min_requests(5)
                    .max_error_ratio_vs_stable(0.1),
            ),
        )
        .write(dir.path());
    let cohort = TestCohort::start_from(&path, dir).await;
    assert_eq!(route_state(&cohort).await["canary_percent"], 50);
    let traffic = Traffic::start(&cohort);
    let rolled = wait_for(&cohort, "the rollback", Duration::from_secs(3), |s| {
        s["canary_percent"] == 0
    })
    .await;
    assert_eq!(
        rolled["guard"]["rolled_back"]["reason"],
        "error_ratio_vs_stable"
    );
    assert!(rolled["rollout"].is_null());
    let (_, stable_failures) = traffic.stop().await;
    assert_eq!(stable_failures, 0);
    assert!(
        std::fs::read_to_string(&path)
            .expect("read")
            .contains("canary_percent = 50"),
        "the file is untouched"
    );
    assert_eq!(
        cohort
            .series(
                "cohort_rollout_state",
                &[("route", "shop"), ("state", "rolled_back")]
            )
            .await,
        1.0
    );

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
    assert_eq!(route_state(&cohort).await["canary_percent"], 50);
    cohort.shutdown().await;
}

/// Sends `n` keyed requests (keys `user-{from}`…) that the canary answers with 502.
async fn canary_failures(cohort: &TestCohort, from: u32, n: u32) {
    let (http, url) = (client(), cohort.url("/"));
    for i in from..from + n {
        let key = format!("user-{i}");
        let answer = send(&http, "GET", &url, &[("x-user-id", &key)], Bytes::new()).await;
        assert_eq!((answer.status, answer.variant()), (502, Some("canary")));
    }
}

/// Waits until `n` reloads have been applied.
async fn applied_reloads(cohort: &TestCohort, n: f64) {
    let what = format!("reload {n} not applied");
    cohort
        .wait_series_at_least(
            "cohort_config_reloads_total",
            &[("result", "ok")],
            n,
            Duration::from_secs(5),
            &what,
        )
        .await;
}

/// The guard's window belongs to the identity (route + salt, + `start` under a rollout):
/// a reload that keeps it keeps the outcomes counted so far; a new salt starts clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_outcomes_survive_a_reload_that_keeps_the_identity() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    canary.set_status(502);
    let dir = tempfile::tempdir().expect("tempdir");
    let state_root = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cohort.toml");
    let guarded = |min_requests: u32, salt: &str| {
        Config::new()
            .state_dir(&state_root.path().join("state"))
            .route(
                shop(&stable, &canary).salt(salt).canary_percent(100).guard(
                    Guard::new()
                        .window("60s")
                        .min_requests(min_requests)
                        .max_error_ratio(0.5),
                ),
            )
            .to_toml()
    };
    std::fs::write(&path, guarded(10, "one")).expect("write");
    let cohort = TestCohort::start_from(&path, dir).await;
    // 6 failures: below min_requests, no verdict.
    canary_failures(&cohort, 0, 6).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(route_state(&cohort).await["canary_percent"], 100);

    // Same identity, min_requests 9: the 6 stay in the window, 4 more make 10.
    std::fs::write(&path, guarded(9, "one")).expect("write");
    applied_reloads(&cohort, 1.0).await;
    canary_failures(&cohort, 6, 4).await;
    let rolled = wait_for(&cohort, "the rollback", Duration::from_secs(2), |s| {
        s["canary_percent"] == 0
    })
    .await;
    assert_eq!(rolled["guard"]["rolled_back"]["reason"], "error_ratio");

    // A new salt is a new identity: no rollback, an empty window (4 failures < 9).
    std::fs::write(&path, guarded(9, "two")).expect("write");
    applied_reloads(&cohort, 2.0).await;
    assert_eq!(route_state(&cohort).await["canary_percent"], 100);
    canary_failures(&cohort, 100, 4).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(route_state(&cohort).await["canary_percent"], 100);
    cohort.shutdown().await;
}

/// Testers forced to the canary by an override are not the guard's business (DESIGN §7):
/// their failures are not counted, so they roll nothing back; and once the canary is
/// rolled back, they still reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_requests_are_not_judged_and_still_reach_a_rolled_back_canary() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    canary.set_status(502);
    let dir = tempfile::tempdir().expect("tempdir");
    let state_root = tempfile::tempdir().expect("tempdir");
    let path = Config::new()
        .state_dir(&state_root.path().join("state"))
        .route(
            shop(&stable, &canary)
                .canary_percent(50)
                .trusted(&["127.0.0.0/8"])
                .guard(
                    Guard::new()
                        .window("10s")
                        .min_requests(5)
                        .max_error_ratio(0.2),
                ),
        )
        .write(dir.path());
    let cohort = TestCohort::start_from(&path, dir).await;
    let http = client();
    // A stable user, forced to the canary: 20 failures the guard must not see.
    let user = key_in("stable", "rollout-test", 50.0, "tester");
    let forced = [("x-user-id", user.as_str()), ("x-cohort-variant", "canary")];
    for _ in 0..20 {
        let answer = send(&http, "GET", &cohort.url("/"), &forced, Bytes::new()).await;
        assert_eq!((answer.status, answer.variant()), (502, Some("canary")));
    }
    // Counted, 20 failures of 20 would roll back within one evaluation (250 ms).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let state = route_state(&cohort).await;
    assert_eq!(state["canary_percent"], 50, "{state}");
    assert!(state["guard"]["rolled_back"].is_null(), "{state}");

    let rollback = send(
        &http,
        "POST",
        &cohort.admin_url("/routes/shop/rollback"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(rollback.status, 200, "{}", rollback.text());
    assert_eq!(route_state(&cohort).await["canary_percent"], 0);
    let answer = send(&http, "GET", &cohort.url("/"), &forced, Bytes::new()).await;
    assert_eq!(
        (answer.status, answer.variant()),
        (502, Some("canary")),
        "a tester still reaches the rolled-back canary"
    );
    let canary_user = key_in("canary", "rollout-test", 50.0, "user");
    let organic = send(
        &http,
        "GET",
        &cohort.url("/"),
        &[("x-user-id", canary_user.as_str())],
        Bytes::new(),
    )
    .await;
    assert_eq!((organic.status, organic.variant()), (200, Some("stable")));
    cohort.shutdown().await;
}
