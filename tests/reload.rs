//! Live control: file changes (in place, write-then-rename, Kubernetes ConfigMap symlink
//! swaps), the admin API with write-back, validation before the swap, persistence.
mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort::cohort::{assign, BasisPoints};
use support::{client, get, send, FakeUpstream, TestCohort};

/// Bound the issue states for a file change to take effect, with the margin left to
/// the test machine: applies happen about 100 ms after the last write.
const APPLY_BOUND: Duration = Duration::from_secs(2);

fn config_text(stable: &FakeUpstream, canary: &FakeUpstream, percent: &str) -> String {
    format!(
        r#"# cohort test config: this comment must survive write-back
[listen]
address = "127.0.0.1:0"
workers = 1

[admin]
address = "127.0.0.1:0"

[[routes]]
name = "web"
sticky = ["header:x-user-id"]
salt = "reload-test"
canary_percent = {percent}   # the knob under test
stable = {{ endpoints = ["{}"] }}
canary = {{ endpoints = ["{}"] }}
"#,
        stable.url(),
        canary.url()
    )
}

/// `text` (a [`config_text`]) with `admin.token_file = "{file}"`.
fn with_token_file(text: &str, file: &str) -> String {
    let admin = "[admin]\naddress = \"127.0.0.1:0\"";
    assert!(text.contains(admin), "no admin section in:\n{text}");
    text.replace(admin, &format!("{admin}\ntoken_file = \"{file}\""))
}

async fn routes(cohort: &TestCohort) -> serde_json::Value {
    let answer = get(&cohort.admin_url("/routes"), &[]).await;
    assert_eq!(answer.status, 200);
    serde_json::from_slice(&answer.body).expect("routes JSON")
}

async fn generation(cohort: &TestCohort) -> u64 {
    routes(cohort).await["generation"]
        .as_u64()
        .expect("generation")
}

async fn percent(cohort: &TestCohort) -> f64 {
    routes(cohort).await["routes"][0]["canary_percent"]
        .as_f64()
        .expect("percent")
}

/// Polls until the generation passes `above`; returns how long that took.
async fn wait_generation_above(cohort: &TestCohort, above: u64, bound: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if generation(cohort).await > above {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < bound,
            "the change was not applied within {bound:?} (generation still {above})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn write_in_place(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

/// What editors do: write a temp file beside it, then rename it over the original.
fn write_then_rename(path: &Path, text: &str) {
    let temp = path.with_extension("toml.swp");
    std::fs::write(&temp, text).expect("write temp");
    std::fs::rename(&temp, path).expect("rename");
}

async fn upstreams() -> (FakeUpstream, FakeUpstream) {
    (
        FakeUpstream::start("stable").await,
        FakeUpstream::start("canary").await,
    )
}

async fn start_with_text(text: &str) -> TestCohort {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cohort.toml");
    write_in_place(&path, text);
    TestCohort::start_from(&path, dir).await
}

#[tokio::test]
async fn in_place_and_renamed_file_changes_apply_within_two_seconds() {
    let (stable, canary) = upstreams().await;
    let cohort = start_with_text(&config_text(&stable, &canary, "10")).await;
    let path = cohort.config_path.clone();
    assert_eq!(percent(&cohort).await, 10.0);

    write_in_place(&path, &config_text(&stable, &canary, "20"));
    let took = wait_generation_above(&cohort, 1, APPLY_BOUND).await;
    assert_eq!(percent(&cohort).await, 20.0);
    eprintln!("in-place write applied in {took:?}");

    write_then_rename(&path, &config_text(&stable, &canary, "2.5"));
    let took = wait_generation_above(&cohort, 2, APPLY_BOUND).await;
    assert_eq!(percent(&cohort).await, 2.5);
    eprintln!("write-then-rename applied in {took:?}");

    assert_eq!(
        cohort
            .series("cohort_canary_weight_ratio", &[("route", "web")])
            .await,
        0.025
    );
    assert_eq!(cohort.series("cohort_config_generation", &[]).await, 3.0);
    assert!(
        cohort
            .series("cohort_config_reloads_total", &[("result", "ok")])
            .await
            >= 2.0
    );
    cohort.shutdown().await;
}

/// Kubernetes mounts a ConfigMap as `cohort.toml -> ..data/cohort.toml`, `..data ->
/// ..<timestamp>`, and updates it by re-pointing `..data` atomically.
/// A file that keeps changing (a slow writer, a sync tool) is still read 500 ms after
/// its first change at the latest: the debounce waits for 100 ms of quiet, not forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_keeps_changing_is_reloaded_within_the_debounce_cap() {
    let (stable, canary) = upstreams().await;
    let cohort = start_with_text(&config_text(&stable, &canary, "10")).await;
    let path = cohort.config_path.clone();
    let text = config_text(&stable, &canary, "20");
    // A change every 30 ms for 3 s, each a different byte count so none is skipped.
    let writer = tokio::spawn(async move {
        for i in 0..100 {
            write_in_place(&path, &format!("{text}{}\n", "#".repeat(i + 1)));
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    });
    let took = wait_generation_above(&cohort, 1, Duration::from_millis(1500)).await;
    assert_eq!(percent(&cohort).await, 20.0);
    assert!(
        !writer.is_finished(),
        "the writer was still writing: {took:?}"
    );
    writer.await.expect("writer");
    cohort.shutdown().await;
}

#[tokio::test]
async fn configmap_symlink_swap_applies_within_two_seconds() {
    let (stable, canary) = upstreams().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let publish = |stamp: &str, text: &str| {
        let versioned = root.join(format!("..{stamp}"));
        std::fs::create_dir(&versioned).expect("mkdir");
        std::fs::write(versioned.join("cohort.toml"), text).expect("write");
        let tmp_link = root.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..{stamp}"), &tmp_link).expect("symlink");
        std::fs::rename(&tmp_link, root.join("..data")).expect("swap ..data");
    };
    publish(
        "2026_11_25_10_00_00.1",
        &config_text(&stable, &canary, "10"),
    );
    let path = root.join("cohort.toml");
    std::os::unix::fs::symlink("..data/cohort.toml", &path).expect("symlink");
    let cohort = TestCohort::start_from(&path, dir).await;
    assert_eq!(percent(&cohort).await, 10.0);

    publish(
        "2026_11_25_10_05_00.2",
        &config_text(&stable, &canary, "35"),
    );
    std::fs::remove_dir_all(root.join("..2026_11_25_10_00_00.1")).expect("remove old");
    let took = wait_generation_above(&cohort, 1, APPLY_BOUND).await;
    eprintln!("ConfigMap symlink swap applied in {took:?}");
    assert_eq!(percent(&cohort).await, 35.0);
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_bad_config_is_rejected_counted_and_the_old_one_keeps_serving() {
    let (stable, canary) = upstreams().await;
    let cohort = start_with_text(&config_text(&stable, &canary, "10")).await;
    let path = cohort.config_path.clone();
    let before = cohort
        .series("cohort_config_reloads_total", &[("result", "error")])
        .await;

    write_then_rename(&path, &config_text(&stable, &canary, "100.5"));
    cohort
        .wait_series_at_least(
            "cohort_config_reloads_total",
            &[("result", "error")],
            before + 1.0,
            APPLY_BOUND,
            "the bad config was not noticed",
        )
        .await;
    assert_eq!(generation(&cohort).await, 1);
    assert_eq!(percent(&cohort).await, 10.0);
    let answer = get(&cohort.url("/"), &[("x-user-id", "u1")]).await;
    assert_eq!(answer.status, 200, "the old config keeps serving");

    // An unknown key is just as bad; then a good file applies again.
    write_then_rename(
        &path,
        &config_text(&stable, &canary, "10").replace("workers = 1", "workers = 1\nworkerz = 2"),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(generation(&cohort).await, 1);
    write_then_rename(&path, &config_text(&stable, &canary, "30"));
    wait_generation_above(&cohort, 1, APPLY_BOUND).await;
    assert_eq!(percent(&cohort).await, 30.0);
    cohort.shutdown().await;
}

#[tokio::test]
async fn an_identical_config_keeps_its_generation() {
    let (stable, canary) = upstreams().await;
    let cohort = start_with_text(&config_text(&stable, &canary, "10")).await;
    let path = cohort.config_path.clone();
    // Same meaning, different bytes (a comment): a reload that counts as ok, same generation.
    let text = format!("# touched\n{}", config_text(&stable, &canary, "10"));
    write_then_rename(&path, &text);
    cohort
        .wait_series_at_least(
            "cohort_config_reloads_total",
            &[("result", "ok")],
            1.0,
            APPLY_BOUND,
            "the touched file was not reloaded",
        )
        .await;
    assert_eq!(generation(&cohort).await, 1);
    cohort.shutdown().await;
}

async fn put_percent(
    cohort: &TestCohort,
    route: &str,
    body: &str,
    token: Option<&str>,
) -> support::Answer {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    send(
        &client(),
        "PUT",
        &cohort.admin_url(&format!("/routes/{route}/canary")),
        &headers,
        Bytes::from(body.to_owned()),
    )
    .await
}

#[tokio::test]
async fn admin_api_sets_and_rolls_back_and_writes_the_file_back_with_comments() {
    let (stable, canary) = upstreams().await;
    let cohort = start_with_text(&config_text(&stable, &canary, "10")).await;
    let path = cohort.config_path.clone();

    let answer = put_percent(&cohort, "web", r#"{"percent": 25}"#, None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let state: serde_json::Value = serde_json::from_slice(&answer.body).expect("json");
    assert_eq!(state["name"], "web");
    assert_eq!(state["canary_percent"], 25.0);
    assert_eq!(generation(&cohort).await, 2);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(
        text.contains("canary_percent = 25   # the knob under test"),
        "{text}"
    );
    assert!(text.starts_with("# cohort test config: this comment must survive write-back"));

    let answer = put_percent(&cohort, "web", r#"{"percent": 0.25}"#, None).await;
    assert_eq!(answer.status, 200);
    assert!(std::fs::read_to_string(&path)
        .expect("read")
        .contains("canary_percent = 0.25"));

    let answer = send(
        &client(),
        "POST",
        &cohort.admin_url("/routes/web/rollback"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(percent(&cohort).await, 0.0);
    // A rollback acts in memory: the file keeps the planned share, and it is no reload.
    assert!(std::fs::read_to_string(&path)
        .expect("read")
        .contains("canary_percent = 0.25"));
    // The write-backs are not counted again as file reloads.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(generation(&cohort).await, 3);

    // Bad requests change nothing and say why.
    for (body, reason) in [
        (r#"{"percent": 101}"#, "101 is above 100"),
        (r#"{"percent": "x"}"#, "must be a number"),
        ("nonsense", "must be JSON"),
    ] {
        let answer = put_percent(&cohort, "web", body, None).await;
        assert_eq!(answer.status, 400, "{body}");
        assert!(answer.text().contains(reason), "{}", answer.text());
    }
    let answer = put_percent(&cohort, "nope", r#"{"percent": 5}"#, None).await;
    assert_eq!(answer.status, 404);
    let answer = send(
        &client(),
        "GET",
        &cohort.admin_url("/routes/web/canary"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, 405);
    assert_eq!(generation(&cohort).await, 3);
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_read_only_config_file_answers_409_and_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let (stable, canary) = upstreams().await;
    let cohort = start_with_text(&config_text(&stable, &canary, "10")).await;
    let path = cohort.config_path.clone();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    let before = std::fs::read_to_string(&path).expect("read");
    let answer = put_percent(&cohort, "web", r#"{"percent": 50}"#, None).await;
    assert_eq!(answer.status, 409);
    assert!(answer.text().contains("read-only"), "{}", answer.text());
    assert_eq!(std::fs::read_to_string(&path).expect("read"), before);
    assert_eq!(percent(&cohort).await, 10.0);
    assert_eq!(generation(&cohort).await, 1);
    cohort.shutdown().await;
}

#[tokio::test]
async fn with_a_token_file_changes_need_the_bearer_token() {
    let (stable, canary) = upstreams().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), "  s3cret-token \n").expect("token");
    let path = dir.path().join("cohort.toml");
    write_in_place(
        &path,
        &with_token_file(&config_text(&stable, &canary, "10"), "token"),
    );
    let cohort = TestCohort::start_from(&path, dir).await;
    assert_eq!(
        put_percent(&cohort, "web", r#"{"percent": 5}"#, None)
            .await
            .status,
        401
    );
    assert_eq!(
        put_percent(&cohort, "web", r#"{"percent": 5}"#, Some("wrong"))
            .await
            .status,
        401
    );
    let ok = put_percent(&cohort, "web", r#"{"percent": 5}"#, Some("s3cret-token")).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    // GET endpoints stay open.
    assert_eq!(get(&cohort.admin_url("/routes"), &[]).await.status, 200);
    cohort.shutdown().await;
}

/// A reload is all or nothing: a new config naming a token file that cannot be read is
/// rejected, and the running token keeps guarding the API.
#[tokio::test]
async fn a_reload_naming_an_unreadable_token_file_is_rejected_and_the_token_stays() {
    let (stable, canary) = upstreams().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), "s3cret-token\n").expect("token");
    let path = dir.path().join("cohort.toml");
    let with_token =
        |file: &str, percent: &str| with_token_file(&config_text(&stable, &canary, percent), file);
    write_in_place(&path, &with_token("token", "10"));
    let cohort = TestCohort::start_from(&path, dir).await;

    write_then_rename(&path, &with_token("no-such-token", "30"));
    cohort
        .wait_series_at_least(
            "cohort_config_reloads_total",
            &[("result", "error")],
            1.0,
            APPLY_BOUND,
            "the reload was not tried",
        )
        .await;
    assert_eq!(generation(&cohort).await, 1);
    assert_eq!(percent(&cohort).await, 10.0, "nothing of it applied");
    assert_eq!(
        put_percent(&cohort, "web", r#"{"percent": 5}"#, None)
            .await
            .status,
        401,
        "the API is still guarded"
    );
    cohort.shutdown().await;
}

/// Addresses, worker count and `state_dir` are read at start only: a reload that changes
/// them applies everything else and keeps serving where it was.
#[tokio::test]
async fn a_reload_keeps_the_start_only_settings_and_applies_the_rest() {
    let (stable, canary) = upstreams().await;
    let cohort = start_with_text(&config_text(&stable, &canary, "10")).await;
    let path = cohort.config_path.clone();
    let moved = config_text(&stable, &canary, "30")
        .replace(
            "address = \"127.0.0.1:0\"\nworkers = 1",
            "address = \"127.0.0.1:1\"\nworkers = 2",
        )
        .replace(
            "[admin]\naddress = \"127.0.0.1:0\"",
            "[admin]\naddress = \"127.0.0.1:2\"",
        );
    let moved = format!("state_dir = \"/nonexistent/cohort-state\"\n{moved}");
    assert!(moved.contains("127.0.0.1:1") && moved.contains("127.0.0.1:2"));
    write_then_rename(&path, &moved);
    wait_generation_above(&cohort, 1, APPLY_BOUND).await;
    // The admin API still answers where it started (this very query), and so does the proxy.
    assert_eq!(percent(&cohort).await, 30.0);
    let answer = get(&cohort.url("/"), &[("x-user-id", "u1")]).await;
    assert_eq!(answer.status, 200);
    cohort.shutdown().await;
}

/// A rotated token file (a Kubernetes Secret's symlink swap, here a rename) applies on
/// the next call, with no reload; a token file that becomes empty keeps the last token
/// for authorization, and refuses changes as a reload would.
#[tokio::test]
async fn a_rotated_token_applies_at_once_and_an_emptied_file_keeps_the_last() {
    let (stable, canary) = upstreams().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, "first-token\n").expect("token");
    let path = dir.path().join("cohort.toml");
    write_in_place(
        &path,
        &with_token_file(&config_text(&stable, &canary, "10"), "token"),
    );
    let cohort = TestCohort::start_from(&path, dir).await;
    let running = &cohort;
    let status = |token: &'static str| async move {
        put_percent(running, "web", r#"{"percent": 5}"#, Some(token))
            .await
            .status
    };
    assert_eq!(status("first-token").await, 200);

    write_then_rename(&token_path, "second-token\n");
    assert_eq!(status("second-token").await, 200, "the new token applies");
    assert_eq!(status("first-token").await, 401, "the old one is gone");

    // Emptied: the last token still authorizes, but no change can apply (every change is
    // a new config, and a config with an empty token file is refused, as on reload).
    write_then_rename(&token_path, "  \n");
    let refused = put_percent(running, "web", r#"{"percent": 7}"#, Some("second-token")).await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert!(refused.text().contains("is empty"), "{}", refused.text());
    assert_eq!(status("first-token").await, 401);
    cohort.shutdown().await;
}

#[tokio::test]
async fn an_empty_token_file_stops_startup() {
    let (stable, canary) = upstreams().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), " \n").expect("token");
    let path = dir.path().join("cohort.toml");
    write_in_place(
        &path,
        &with_token_file(&config_text(&stable, &canary, "10"), "token"),
    );
    let config = cohort::config::load(&path).expect("valid");
    let err = cohort::start(config)
        .await
        .err()
        .expect("startup must fail");
    assert!(err.to_string().contains("admin.token_file"), "{err}");
    assert!(err.to_string().contains("is empty"), "{err}");
}

#[tokio::test]
async fn off_loopback_admin_without_token_refuses_changes() {
    let (stable, canary) = upstreams().await;
    let text = config_text(&stable, &canary, "10").replace(
        "[admin]\naddress = \"127.0.0.1:0\"",
        "[admin]\naddress = \"0.0.0.0:0\"",
    );
    let cohort = start_with_text(&text).await;
    let admin = format!("http://127.0.0.1:{}", cohort.admin.port());
    let answer = send(
        &client(),
        "PUT",
        &format!("{admin}/routes/web/canary"),
        &[],
        Bytes::from_static(br#"{"percent": 5}"#),
    )
    .await;
    assert_eq!(answer.status, 403);
    assert!(answer
        .text()
        .contains("set admin.token_file to allow changes from the network"));
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_change_made_through_the_api_survives_a_restart() {
    let (stable, canary) = upstreams().await;
    let cohort = start_with_text(&config_text(&stable, &canary, "10")).await;
    let answer = put_percent(&cohort, "web", r#"{"percent": 42.5}"#, None).await;
    assert_eq!(answer.status, 200);
    let path = cohort.config_path.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let kept = dir.path().join("cohort.toml");
    std::fs::copy(&path, &kept).expect("copy");
    cohort.shutdown().await;

    let restarted = TestCohort::start_from(&kept, dir).await;
    assert_eq!(percent(&restarted).await, 42.5);
    let text = std::fs::read_to_string(&kept).expect("read");
    assert!(text.contains("# cohort test config: this comment must survive write-back"));
    assert!(
        text.contains("canary_percent = 42.5   # the knob under test"),
        "{text}"
    );
    restarted.shutdown().await;
}

#[tokio::test]
async fn upstream_connections_survive_a_reload_that_keeps_the_endpoints() {
    let (stable, canary) = upstreams().await;
    let cohort = start_with_text(&config_text(&stable, &canary, "0")).await;
    let http = client();
    for _ in 0..5 {
        assert_eq!(
            send(
                &http,
                "GET",
                &cohort.url("/"),
                &[("x-user-id", "u")],
                Bytes::new()
            )
            .await
            .status,
            200
        );
    }
    let before = stable.connections();
    write_then_rename(&cohort.config_path, &config_text(&stable, &canary, "0.01"));
    wait_generation_above(&cohort, 1, APPLY_BOUND).await;
    for _ in 0..5 {
        let key = support::key_in("stable", "reload-test", 0.01, "u");
        assert_eq!(
            send(
                &http,
                "GET",
                &cohort.url("/"),
                &[("x-user-id", &key)],
                Bytes::new()
            )
            .await
            .status,
            200
        );
    }
    assert_eq!(
        stable.connections(),
        before,
        "the pool kept its upstream connection"
    );
    cohort.shutdown().await;
}

/// The split changes 200 times through the file and 50 times through the API while a
/// client sends continuously on 4 connections: no request fails, and every response's
/// variant is what the key gets under one of the splits in force during the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_the_split_changes_250_times() {
    let (stable, canary) = upstreams().await;
    let cohort = Arc::new(start_with_text(&config_text(&stable, &canary, "0")).await);
    let path: PathBuf = cohort.config_path.clone();

    // splits[i] is the i-th split in force; `applied` is the newest index known to be
    // applied, `issued` the newest index written or sent.
    let splits: Arc<Mutex<Vec<BasisPoints>>> = Arc::new(Mutex::new(vec![BasisPoints::ZERO]));
    let applied = Arc::new(AtomicUsize::new(0));
    let issued = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));

    let mut clients = Vec::new();
    for worker in 0..4 {
        let (cohort, splits, applied, issued, done) = (
            cohort.clone(),
            splits.clone(),
            applied.clone(),
            issued.clone(),
            done.clone(),
        );
        clients.push(tokio::spawn(async move {
            let http = client();
            let mut sent = 0usize;
            let mut n = 0u64;
            while !done.load(Ordering::SeqCst) {
                n += 1;
                let key = format!("w{worker}-user-{n}");
                let lo = applied.load(Ordering::SeqCst);
                let answer = send(
                    &http,
                    "GET",
                    &cohort.url("/"),
                    &[("x-user-id", &key)],
                    Bytes::new(),
                )
                .await;
                let hi = issued.load(Ordering::SeqCst);
                assert_eq!(
                    answer.status,
                    200,
                    "request {key} failed: {}",
                    answer.text()
                );
                let got = answer.variant().expect("variant header").to_owned();
                let candidates: Vec<BasisPoints> = splits.lock().expect("splits")[lo..=hi].to_vec();
                assert!(
                    candidates
                        .iter()
                        .any(|&bp| assign("reload-test", key.as_bytes(), bp).1.as_str() == got),
                    "{key} got {got}, not what any split in force gave ({candidates:?})"
                );
                sent += 1;
            }
            sent
        }));
    }

    let values = [10.0, 60.0, 0.0, 35.5, 100.0, 5.0];
    let mut apply_times = Vec::new();
    for i in 0..250 {
        let percent = values[i % values.len()];
        let bp = BasisPoints::from_percent(percent).expect("bp");
        let index = {
            let mut list = splits.lock().expect("splits");
            list.push(bp);
            list.len() - 1
        };
        issued.store(index, Ordering::SeqCst);
        if i < 200 {
            let before = generation(&cohort).await;
            let text = config_text(&stable, &canary, &bp.to_string());
            if i % 2 == 0 {
                write_in_place(&path, &text);
            } else {
                write_then_rename(&path, &text);
            }
            apply_times.push(wait_generation_above(&cohort, before, APPLY_BOUND).await);
        } else {
            let answer = put_percent(&cohort, "web", &format!("{{\"percent\": {bp}}}"), None).await;
            assert_eq!(answer.status, 200, "{}", answer.text());
        }
        applied.store(index, Ordering::SeqCst);
    }
    done.store(true, Ordering::SeqCst);
    let mut total = 0;
    for c in clients {
        total += c.await.expect("client task");
    }
    apply_times.sort();
    eprintln!(
        "{total} requests, 0 failed; file change applied in median {:?}, max {:?}",
        apply_times[apply_times.len() / 2],
        apply_times[apply_times.len() - 1]
    );
    assert!(
        total > 250,
        "the clients must have run during the changes ({total})"
    );
    assert_eq!(generation(&cohort).await, 251);
    assert!(canary.hits() > 0 && stable.hits() > 0);
    match Arc::try_unwrap(cohort) {
        Ok(cohort) => cohort.shutdown().await,
        Err(_) => panic!("clients still hold the cohort"),
    }
}
