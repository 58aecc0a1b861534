//! The rollback path as an SRE meets it in an incident: `POST /routes/{name}/rollback`
//! works on every route at once, in memory, on a read-only config file (a ConfigMap) and
//! beside an unrelated bad edit of the file; it survives a restart through `state_dir`;
//! only a resume clears it, and a resume never returns a failed canary to a later step.
#[path = "support/process.rs"]
mod process;
mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use cohort::guard::wall_now;
use cohort::rollout::format_rfc3339;
use process::{run_to_end, Cohort};
use support::{
    client, get, key_in, send, user_route, Answer, Config, FakeUpstream, Guard, Route, TestCohort,
};

const SALT: &str = "kill-switch";

/// The route "web" under test: sticky on `x-user-id`, salt [`SALT`].
fn web_route(stable: &FakeUpstream, canary: &FakeUpstream) -> Route {
    user_route("web", stable, canary).salt(SALT)
}

/// A config with the one route `web` and, when given, a top-level `state_dir`.
fn config_text(web: Route, state_dir: Option<&Path>) -> String {
    let config = Config::new().route(web);
    match state_dir {
        Some(dir) => config.state_dir(dir),
        None => config,
    }
    .to_toml()
}

async fn admin_post(cohort: &TestCohort, path: &str) -> Answer {
    send(
        &client(),
        "POST",
        &cohort.admin_url(path),
        &[],
        Bytes::new(),
    )
    .await
}

async fn put_percent(cohort: &TestCohort, percent: &str) -> Answer {
    send(
        &client(),
        "PUT",
        &cohort.admin_url("/routes/web/canary"),
        &[("content-type", "application/json")],
        Bytes::from(format!("{{\"percent\": {percent}}}")),
    )
    .await
}

async fn web(cohort: &TestCohort) -> serde_json::Value {
    let answer = get(&cohort.admin_url("/routes"), &[]).await;
    assert_eq!(answer.status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&answer.body).expect("json");
    doc["routes"][0].clone()
}

fn json(answer: &Answer) -> serde_json::Value {
    assert_eq!(answer.status, 200, "{}", answer.text());
    serde_json::from_slice(&answer.body).expect("json")
}

async fn variant_of(cohort: &TestCohort, key: &str) -> String {
    let answer = get(&cohort.url("/"), &[("x-user-id", key)]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.variant().expect("variant header").to_owned()
}

/// The variant `cohort assign` (no live instance, state_dir read) prints for `key`.
fn assign_offline(config: &Path, key: &str) -> String {
    let config = config.display().to_string();
    let out = run_to_end(
        &["assign", "-c", &config, "--route", "web", "--key", key],
        Duration::from_secs(10),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
        .trim_end()
        .rsplit_once("variant=")
        .map(|(_, v)| v.to_owned())
        .unwrap_or_else(|| panic!("no variant in {stdout:?}"))
}

fn set_read_only(path: &Path, read_only: bool) {
    let mode = if read_only { 0o444 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_works_on_a_read_only_file_beside_a_bad_edit_and_after_a_restart() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state_root = tempfile::tempdir().expect("tempdir");
    let state_dir = state_root.path().join("state");
    let path = dir.path().join("cohort.toml");
    let text = config_text(
        web_route(&stable, &canary).canary_percent(25),
        Some(&state_dir),
    );
    std::fs::write(&path, &text).expect("write");
    // A ConfigMap mount: cohort may read the file, never write it.
    set_read_only(&path, true);
    let cohort = TestCohort::start_from(&path, dir).await;
    let canary_user = key_in("canary", SALT, 25.0, "user");
    assert_eq!(variant_of(&cohort, &canary_user).await, "canary");

    // The kill switch: 200, 0 % at once, the file untouched, remembered in state_dir.
    let state = json(&admin_post(&cohort, "/routes/web/rollback").await);
    assert_eq!(state["canary_percent"], 0.0);
    assert_eq!(state["configured_percent"], 25.0);
    assert_eq!(state["rolled_back"]["reason"], "manual");
    assert_eq!(state["rolled_back"]["remembered"], true);
    assert_eq!(variant_of(&cohort, &canary_user).await, "stable");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
    assert_eq!(std::fs::read_dir(&state_dir).expect("state_dir").count(), 1);
    // Shown wherever the share is shown.
    assert_eq!(web(&cohort).await["canary_percent"], 0.0);
    assert_eq!(
        cohort
            .series("cohort_canary_weight_ratio", &[("route", "web")])
            .await,
        0.0
    );
    let assign = get(
        &cohort.admin_url(&format!("/assign?route=web&key={canary_user}")),
        &[],
    )
    .await;
    assert_eq!(json(&assign)["variant"], "stable");
    let page = get(&cohort.admin_url("/"), &[]).await.text();
    assert!(page.contains("rolled back (manual)"), "status page: {page}");
    for (series, labels, want) in [
        (
            "cohort_rollbacks_total",
            &[("route", "web"), ("reason", "manual")][..],
            1.0,
        ),
        (
            "cohort_rollout_state",
            &[("route", "web"), ("state", "rolled_back")][..],
            1.0,
        ),
        (
            "cohort_rollout_state",
            &[("route", "web"), ("state", "complete")][..],
            0.0,
        ),
    ] {
        assert_eq!(
            cohort.series(series, labels).await,
            want,
            "{series} {labels:?}"
        );
    }
    // A rollback is not a reload; a second one changes nothing and still answers 200.
    assert_eq!(cohort.series("cohort_config_generation", &[]).await, 1.0);
    let again = json(&admin_post(&cohort, "/routes/web/rollback").await);
    assert_eq!(again["rolled_back"], state["rolled_back"]);
    // `set` keeps its write-back, and so its 409 on a read-only file.
    let refused = put_percent(&cohort, "50").await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert!(refused.text().contains("read-only"), "{}", refused.text());

    // Resume: the configured share again.
    let resumed = json(&admin_post(&cohort, "/routes/web/resume").await);
    assert_eq!(resumed["canary_percent"], 25.0);
    assert!(resumed["rolled_back"].is_null());
    assert_eq!(variant_of(&cohort, &canary_user).await, "canary");
    assert_eq!(
        cohort
            .series(
                "cohort_rollout_state",
                &[("route", "web"), ("state", "complete")]
            )
            .await,
        1.0
    );
    assert_eq!(std::fs::read_dir(&state_dir).expect("state_dir").count(), 0);
    assert_eq!(admin_post(&cohort, "/routes/web/resume").await.status, 409);

    // Someone breaks an unrelated part of the file on disk: the reload is refused, the
    // running config keeps serving, and the kill switch still works.
    set_read_only(&path, false);
    let broken = format!("{text}\n[[routes]]\nname = \"half-written\"\n");
    std::fs::write(&path, &broken).expect("write");
    cohort
        .wait_series_at_least(
            "cohort_config_reloads_total",
            &[("result", "error")],
            1.0,
            Duration::from_secs(3),
            "the broken file is seen and refused",
        )
        .await;
    let state = json(&admin_post(&cohort, "/routes/web/rollback").await);
    assert_eq!(state["canary_percent"], 0.0);
    assert_eq!(variant_of(&cohort, &canary_user).await, "stable");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), broken);

    // A restart (the file fixed by then) keeps the canary rolled back.
    std::fs::write(&path, &text).expect("write");
    let restarted = cohort.restart().await;
    let state = web(&restarted).await;
    assert_eq!(state["canary_percent"], 0.0);
    assert_eq!(state["rolled_back"]["reason"], "manual");
    assert_eq!(state["rolled_back"]["remembered"], true);
    assert_eq!(variant_of(&restarted, &canary_user).await, "stable");
    let resumed = json(&admin_post(&restarted, "/routes/web/resume").await);
    assert_eq!(resumed["canary_percent"], 25.0);
    restarted.shutdown().await;
}

#[tokio::test]
async fn without_state_dir_the_answer_says_the_rollback_is_in_memory_only() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cohort.toml");
    std::fs::write(
        &path,
        config_text(web_route(&stable, &canary).canary_percent(10), None),
    )
    .expect("write");
    let cohort = TestCohort::start_from(&path, dir).await;
    let state = json(&admin_post(&cohort, "/routes/web/rollback").await);
    assert_eq!(state["canary_percent"], 0.0);
    assert_eq!(state["rolled_back"]["remembered"], false);
    cohort.shutdown().await;
}

#[tokio::test]
async fn set_on_a_route_without_canary_endpoints_is_a_bad_request_before_any_file_check() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cohort.toml");
    let text = Config::new()
        .route(web_route(&stable, &canary).canary_urls(&[] as &[&str]))
        .to_toml();
    std::fs::write(&path, &text).expect("write");
    set_read_only(&path, true);
    let cohort = TestCohort::start_from(&path, dir).await;
    let answer = put_percent(&cohort, "10").await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(
        answer.text().contains("no canary endpoints"),
        "{}",
        answer.text()
    );
    // 0 % is valid for the route; the file is what refuses it.
    assert_eq!(put_percent(&cohort, "0").await.status, 409);
    cohort.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_past_the_schedule_end_restarts_the_ramp_at_its_first_step() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state_root = tempfile::tempdir().expect("tempdir");
    let state_dir = state_root.path().join("state");
    let path = dir.path().join("cohort.toml");
    // Started two hours ago, 10 min a step: the schedule alone says 100 %.
    let start = format_rfc3339(wall_now() - 2 * 3600 * 1000);
    let text = config_text(
        web_route(&stable, &canary).rollout(&start, &[10, 50, 100], "10m"),
        Some(&state_dir),
    );
    std::fs::write(&path, &text).expect("write");
    let cohort = TestCohort::start_from(&path, dir).await;
    assert_eq!(web(&cohort).await["canary_percent"], 100.0);

    let state = json(&admin_post(&cohort, "/routes/web/rollback").await);
    assert_eq!(state["canary_percent"], 0.0);
    assert_eq!(state["rollout"]["state"], "rolled_back");

    let before = wall_now();
    let resumed = json(&admin_post(&cohort, "/routes/web/resume").await);
    assert_eq!(resumed["canary_percent"], 10.0, "{resumed}");
    assert_eq!(resumed["rollout"]["step"], 0);
    assert_eq!(resumed["rollout"]["state"], "ramping");
    let next = resumed["rollout"]["next_step_at"]
        .as_str()
        .and_then(|t| cohort::rollout::parse_rfc3339(t).ok())
        .expect("next_step_at");
    assert!(
        (before + 9 * 60 * 1000..=wall_now() + 10 * 60 * 1000).contains(&next),
        "the next step comes one step_every after the resume: {resumed}"
    );
    // Recorded in state_dir: a restart follows the resumed ramp, not the old schedule.
    let records: Vec<String> = std::fs::read_dir(&state_dir)
        .expect("state_dir")
        .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("record"))
        .collect();
    assert_eq!(records.len(), 1);
    assert!(
        records[0].contains("\"state\":\"resumed\""),
        "{}",
        records[0]
    );

    let restarted = cohort.restart().await;
    let state = web(&restarted).await;
    assert_eq!(state["canary_percent"], 10.0, "{state}");
    assert_eq!(state["rollout"]["step"], 0);
    assert!(state["rollout"]["resumed_at"].is_string(), "{state}");
    // `cohort assign` (no live instance) agrees.
    for variant in ["canary", "stable"] {
        let key = key_in(variant, SALT, 10.0, "user");
        assert_eq!(
            assign_offline(&restarted.config_path, &key),
            variant,
            "{key}"
        );
    }
    restarted.shutdown().await;
}

#[tokio::test]
async fn a_state_dir_that_cannot_be_written_stops_check_and_startup() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let not_a_dir = dir.path().join("plain-file");
    std::fs::write(&not_a_dir, "x").expect("write");
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).expect("mkdir");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    for (state_dir, reason) in [
        (&not_a_dir, "is not a directory"),
        (&locked, "has no write permission"),
    ] {
        let path = dir.path().join("cohort.toml");
        std::fs::write(
            &path,
            config_text(
                web_route(&stable, &canary).canary_percent(10),
                Some(state_dir),
            ),
        )
        .expect("write");
        let file = path.display().to_string();
        for command in ["check", "run"] {
            let out = run_to_end(&[command, "-c", &file], Duration::from_secs(10));
            let stderr = process::strip_ansi(&String::from_utf8_lossy(&out.stderr));
            assert_eq!(out.status.code(), Some(1), "{command}: {stderr}");
            assert!(
                stderr.contains(&format!(
                    "{file}: state_dir: {} {reason}",
                    state_dir.display()
                )),
                "{command}: {stderr}"
            );
        }
    }
}

#[tokio::test]
async fn a_rollout_first_seen_past_its_first_step_is_announced() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cohort.toml");
    let rollout = |start: &str| {
        web_route(&stable, &canary)
            .rollout(start, &[1, 5, 25, 50, 100], "10m")
            .guard(Guard::new().max_error_ratio(0.05))
    };
    let long_ago = format_rfc3339(wall_now() - 26 * 3600 * 1000 - 60_000);
    let text = config_text(rollout(&long_ago), None);
    std::fs::write(&path, &text).expect("write");
    let file = path.display().to_string();
    let warning = "rollout \"web\" started 26 h ago: step 5 of 5 (100 %) applies now";

    // `check` warns, and prints the rollout and the guard.
    let out = run_to_end(&["check", "-c", &file], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(String::from_utf8_lossy(&out.stderr).contains(warning));
    assert!(
        stdout.contains(&format!(
            "  rollout: start {long_ago}, steps 1/5/25/50/100 % every 10m; step 5 of 5 (100 %) in force; last step"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "  guard: action rollback, window 30s, min_requests 50, max_error_ratio 0.05"
        ),
        "{stdout}"
    );

    // Startup warns.
    let mut cohort = Cohort::spawn(&["run", "-c", &file]);
    cohort.wait_serving(Duration::from_secs(10)).await;
    cohort.wait_stderr(warning, Duration::from_secs(5)).await;
    // A reload bringing a new rollout (a new start) that is already late warns again.
    let later = format_rfc3339(wall_now() - 25 * 60 * 1000);
    std::fs::write(&path, config_text(rollout(&later), None)).expect("write");
    cohort
        .wait_stderr(
            "rollout \"web\" started 25 min ago: step 3 of 5 (25 %) applies now",
            Duration::from_secs(5),
        )
        .await;
    cohort.signal("TERM");
    assert_eq!(
        cohort.exit_within(Duration::from_secs(5)).await.code(),
        Some(0)
    );
}
