//! The `cohort` binary as users and scripts run it (DESIGN §6): `check`, `assign`,
//! `demo`, and `run` (also the default) with its signal handling, exit codes and logs.
//! Every child process is killed when its test ends, pass or fail.
#[path = "support/process.rs"]
mod process;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort::cohort::{assign, BasisPoints};
use http_body_util::Full;
use process::{run_in, run_to_end, write_file, Cohort};
use support::{get, send, user_route, Config, FakeUpstream, Guard, RawConn, Route};

const QUICK: Duration = Duration::from_secs(20);

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn describe(out: &std::process::Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout_of(out),
        stderr_of(out)
    )
}

/// A valid config with two routes pointing at (unused) loopback ports.
fn two_routes() -> Config {
    Config::new()
        .route(
            Route::new("web")
                .path_prefix("/")
                .sticky(&["header:x-user-id", "cookie:session", "ip"])
                .salt("web-v1")
                .canary_percent(2.5)
                .stable_urls(&["http://127.0.0.1:9001", "http://127.0.0.1:9003"])
                .canary_urls(&["http://127.0.0.1:9002"]),
        )
        .route(
            Route::new("api")
                .host("api.example.com")
                .path_prefix("/v1")
                .salt("api-v7")
                .canary_percent(10)
                .stable_urls(&["http://127.0.0.1:9101"])
                .canary_urls(&["http://127.0.0.1:9102"]),
        )
}

// ---------------------------------------------------------------------------------------
// cohort check
// ---------------------------------------------------------------------------------------

#[test]
fn check_prints_the_effective_routes_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "cohort.toml", &two_routes().to_toml());
    let out = run_to_end(&["check", "-c", &file], QUICK);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = stdout_of(&out);
    let web = stdout
        .lines()
        .find(|l| l.contains("\"web\""))
        .unwrap_or_else(|| panic!("no line for route web:\n{stdout}"));
    for part in [
        "canary=2.5%",
        "salt=\"web-v1\"",
        "path_prefix=/",
        "header:x-user-id",
        "cookie:session",
        "http://127.0.0.1:9001",
        "http://127.0.0.1:9003",
        "http://127.0.0.1:9002",
    ] {
        assert!(web.contains(part), "{part:?} missing from {web:?}");
    }
    let api = stdout
        .lines()
        .find(|l| l.contains("\"api\""))
        .unwrap_or_else(|| panic!("no line for route api:\n{stdout}"));
    for part in [
        "canary=10%",
        "api.example.com",
        "/v1",
        "http://127.0.0.1:9101",
    ] {
        assert!(api.contains(part), "{part:?} missing from {api:?}");
    }
}

#[test]
fn check_accepts_the_shipped_config() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/config/cohort.toml");
    assert!(
        Path::new(file).is_file(),
        "the repository ships no config/cohort.toml (DESIGN §2 names it the default)"
    );
    let out = run_to_end(&["check", "-c", file], QUICK);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stdout_of(&out).lines().any(|l| l.starts_with("route ")),
        "{}",
        describe(&out)
    );
}

#[test]
fn check_without_c_reads_config_cohort_toml_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(Some(dir.path()), &["check"], QUICK);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr_of(&out).contains("config/cohort.toml"),
        "{}",
        describe(&out)
    );
    std::fs::create_dir(dir.path().join("config")).unwrap();
    write_file(
        &dir.path().join("config"),
        "cohort.toml",
        &two_routes().to_toml(),
    );
    let out = run_in(Some(dir.path()), &["check"], QUICK);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

/// `check` refuses what `run` refuses: an admin token file that cannot be read or is
/// empty stops both, with the file, the key and the reason.
#[test]
fn check_and_run_refuse_a_missing_or_empty_admin_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let with_token = two_routes().token_file("token");
    let file = write_file(dir.path(), "cohort.toml", &with_token.to_toml());
    for (content, reason) in [(None, "cannot read"), (Some("  \n"), "is empty")] {
        if let Some(content) = content {
            write_file(dir.path(), "token", content);
        }
        for command in ["check", "run"] {
            let out = run_to_end(&[command, "-c", &file], QUICK);
            assert_eq!(out.status.code(), Some(1), "{command}: {}", describe(&out));
            let stderr = stderr_of(&out);
            assert!(
                stderr.contains("cohort.toml: admin.token_file:") && stderr.contains(reason),
                "{command}, {reason}: {}",
                describe(&out)
            );
        }
    }
    write_file(dir.path(), "token", "tok-1\n");
    let out = run_to_end(&["check", "-c", &file], QUICK);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn check_reports_every_problem_as_file_key_reason_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "bad.toml",
        r#"
[[routes]]
name = "a"
salt = "s"
canary_percent = 100.5
stable = { endpoints = ["http://127.0.0.1:1"] }
canary = { endpoints = ["http://127.0.0.1:2"] }

[[routes]]
name = "a"
sticky = ["bogus"]
stable = { endpoints = ["ftp://nowhere"] }
"#,
    );
    let out = run_to_end(&["check", "-c", &file], QUICK);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(stdout_of(&out), "", "nothing on stdout for a bad file");
    let stderr = stderr_of(&out);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.contains(&format!("{file}: routes[0].canary_percent: 100.5 is above 100").as_str()),
        "{stderr}"
    );
    for key in [
        "routes[1].name",
        "routes[1].salt",
        "routes[1].sticky[0]",
        "routes[1].stable.endpoints[0]",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{file}: {key}: "))),
            "no `{file}: {key}: reason` line in:\n{stderr}"
        );
    }
    for line in &lines {
        let rest = line
            .strip_prefix(&format!("{file}: "))
            .unwrap_or_else(|| panic!("line does not name the file: {line:?}"));
        let (_key, reason) = rest
            .split_once(": ")
            .unwrap_or_else(|| panic!("no `key: reason` in {line:?}"));
        assert!(!reason.trim().is_empty(), "{line:?}");
    }
}

#[test]
fn check_names_the_key_of_an_unknown_field_and_the_line_of_a_syntax_error() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = write_file(
        dir.path(),
        "unknown.toml",
        "[[routes]]\nname = \"a\"\nsalt = \"s\"\nstable = { endpoints = [\"http://127.0.0.1:1\"] }\ncanary_percnt = 5\n",
    );
    let out = run_to_end(&["check", "-c", &unknown], QUICK);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr_of(&out).starts_with(&format!("{unknown}: routes[0].canary_percnt: ")),
        "{}",
        describe(&out)
    );

    let syntax = write_file(dir.path(), "syntax.toml", "[listen\naddress = 1\n");
    let out = run_to_end(&["check", "-c", &syntax], QUICK);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr_of(&out).starts_with(&format!("{syntax}: ")),
        "{}",
        describe(&out)
    );
}

#[test]
fn check_names_a_missing_or_unreadable_file_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap();
    // A directory and a non-UTF-8 file cannot be read as a config, even by root.
    let directory = dir.path().join("a-directory.toml");
    std::fs::create_dir(&directory).unwrap();
    let binary = dir.path().join("binary.toml");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x80]).unwrap();
    for file in [
        missing,
        directory.to_str().unwrap(),
        binary.to_str().unwrap(),
    ] {
        let out = run_to_end(&["check", "-c", file], QUICK);
        assert_eq!(out.status.code(), Some(1), "{file}: {}", describe(&out));
        assert!(
            stderr_of(&out).starts_with(&format!("{file}: ")),
            "the error names the file: {}",
            describe(&out)
        );
        assert_eq!(stdout_of(&out), "");
    }
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "cohort.toml", &two_routes().to_toml());
    let cases: [&[&str]; 7] = [
        &["frobnicate"],
        &["check", "--bogus"],
        &["check", "-c"],
        &["assign", "-c", &file, "--route", "web"],
        &["assign", "-c", &file, "--key", "alice"],
        &["demo", "--duration", "soon"],
        &["--log-format", "xml", "check", "-c", &file],
    ];
    for args in cases {
        let out = run_to_end(args, QUICK);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(!stderr_of(&out).is_empty(), "{args:?} says what is wrong");
    }
}

// ---------------------------------------------------------------------------------------
// cohort assign
// ---------------------------------------------------------------------------------------

#[test]
fn assign_prints_route_key_bucket_variant_like_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "cohort.toml", &two_routes().to_toml());
    let bp = BasisPoints::from_percent(2.5).unwrap();
    let canary_key = (0..)
        .map(|i| format!("u{i}"))
        .find(|k| assign("web-v1", k.as_bytes(), bp).1.as_str() == "canary")
        .unwrap();
    let mut variants = Vec::new();
    for key in ["alice", "bob", "user 42", "été", canary_key.as_str()] {
        let out = run_to_end(
            &["assign", "-c", &file, "--route", "web", "--key", key],
            QUICK,
        );
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let (bucket, variant) = assign("web-v1", key.as_bytes(), bp);
        assert_eq!(
            stdout_of(&out),
            format!("route=web key={key} bucket={bucket} variant={variant}\n")
        );
        variants.push(variant);
    }
    assert!(variants.iter().any(|v| v.as_str() == "canary"));
    assert!(variants.iter().any(|v| v.as_str() == "stable"));
    // The second route, with its own salt and percentage.
    let out = run_to_end(
        &["assign", "-c", &file, "--route", "api", "--key", "alice"],
        QUICK,
    );
    let (bucket, variant) = assign("api-v7", b"alice", BasisPoints::from_percent(10.0).unwrap());
    assert_eq!(
        stdout_of(&out),
        format!("route=api key=alice bucket={bucket} variant={variant}\n")
    );
}

#[test]
fn assign_takes_request_attributes_and_names_the_rule_that_decided() {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "beta.txt", "# beta customers\nacme\n");
    let config = Config::new().route(
        Route::new("web")
            .salt("web-v1")
            .trusted(&["10.0.0.0/8"])
            .segment("header:x-team", &["qa"], "canary")
            .segment_file("cookie:customer", &dir.path().join("beta.txt"), "canary")
            .stable_urls(&["http://127.0.0.1:9001"])
            .canary_urls(&["http://127.0.0.1:9002"]),
    );
    let file = write_file(dir.path(), "cohort.toml", &config.to_toml());
    let bucket = assign("web-v1", b"alice", BasisPoints::ZERO).0;
    let cases: [(&[&str], String); 4] = [
        (&[], format!("bucket={bucket} variant=stable\n")),
        (
            &["--header", "x-team=qa"],
            format!("bucket={bucket} variant=canary decided_by=segments[0]\n"),
        ),
        (
            &["--cookie", "customer=acme"],
            format!("bucket={bucket} variant=canary decided_by=segments[1]\n"),
        ),
        (
            &["--ip", "10.1.1.1", "--header", "x-cohort-variant=canary"],
            "bucket=- variant=canary decided_by=override\n".to_owned(),
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec!["assign", "-c", &file, "--route", "web", "--key", "alice"];
        args.extend_from_slice(extra);
        let out = run_to_end(&args, QUICK);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        assert_eq!(
            stdout_of(&out),
            format!("route=web key=alice {want}"),
            "{extra:?}"
        );
    }
    let out = run_to_end(
        &[
            "assign", "-c", &file, "--route", "web", "--key", "a", "--ip", "nope",
        ],
        QUICK,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr_of(&out).contains("not an IP address"),
        "{}",
        describe(&out)
    );
    // `check` lists the rules.
    let out = run_to_end(&["check", "-c", &file], QUICK);
    let text = stdout_of(&out);
    assert!(
        text.contains("  segments[0]: header:x-team -> canary (1 value)"),
        "{text}"
    );
    assert!(
        text.contains("  segments[1]: cookie:customer -> canary (1 value, from "),
        "{text}"
    );
}

#[test]
fn assign_on_an_unknown_route_or_a_bad_config_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "cohort.toml", &two_routes().to_toml());
    let out = run_to_end(
        &["assign", "-c", &file, "--route", "nope", "--key", "k"],
        QUICK,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(stdout_of(&out), "");
    assert!(stderr_of(&out).contains("nope"), "{}", describe(&out));

    let bad = write_file(dir.path(), "bad.toml", "[[routes]]\nname = \"web\"\n");
    let out = run_to_end(
        &["assign", "-c", &bad, "--route", "web", "--key", "k"],
        QUICK,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr_of(&out).contains(&format!("{bad}: routes[0].")),
        "{}",
        describe(&out)
    );
}

// ---------------------------------------------------------------------------------------
// cohort demo
// ---------------------------------------------------------------------------------------

#[test]
fn demo_runs_for_its_duration_prints_the_split_and_where_to_look() {
    let started = Instant::now();
    let out = run_to_end(&["demo", "--duration", "2s"], Duration::from_secs(30));
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        took >= Duration::from_millis(1900),
        "stopped early: {took:?}"
    );
    let stdout = stdout_of(&out);
    // The live split lines: `stable N  canary N  (x.y % canary)`.
    let split_lines = stdout
        .lines()
        .filter(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.len() >= 4
                && words[0] == "stable"
                && words[1].parse::<u64>().is_ok()
                && words[2] == "canary"
                && words[3].parse::<u64>().is_ok()
                && l.contains("% canary")
        })
        .count();
    assert!(split_lines >= 1, "no split line:\n{stdout}");
    assert!(stdout.contains("proxy"), "{stdout}");
    assert!(stdout.contains("http://127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("/metrics"), "{stdout}");
    assert!(stdout.contains("/assign?route=demo"), "{stdout}");
    assert!(stdout.contains("status page"), "{stdout}");
}

/// Without `--duration` the demo runs until Ctrl-C, and one Ctrl-C at any moment stops
/// it: its traffic loop spends most of its time between requests, where a stop listener
/// made per request would miss the signal. A duration longer than the clock can count
/// is no deadline at all (it used to panic adding it to the clock).
#[tokio::test]
async fn demo_stops_on_the_first_ctrl_c() {
    for args in [
        &["demo"][..],
        &["demo", "--duration", "10000000000000000000s"],
    ] {
        let mut demo = Cohort::spawn(args);
        demo.wait_stdout("the split so far", Duration::from_secs(30))
            .await;
        // A split line: the loop has been going for over a second.
        demo.wait_stdout("% canary)", Duration::from_secs(10)).await;
        let lines_before = demo.stdout().lines().count();
        demo.signal("INT");
        let status = demo.exit_within(Duration::from_secs(5)).await;
        assert_eq!(
            status.code(),
            Some(0),
            "{args:?}: stderr:\n{}",
            demo.stderr()
        );
        let (stdout, _) = demo.take_output();
        assert!(
            stdout.lines().count() > lines_before,
            "{args:?}: the final split is printed:\n{stdout}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// cohort run
// ---------------------------------------------------------------------------------------

/// A config serving one route at 0 % (everything to `stable`) on ephemeral ports.
fn served_config(stable: &FakeUpstream, canary: &FakeUpstream) -> Config {
    Config::new().route(user_route("r", stable, canary).canary_percent(0))
}

/// `config` written to `dir/cohort.toml`.
fn served(dir: &Path, config: Config) -> String {
    write_file(dir, "cohort.toml", &config.to_toml())
}

/// [`served`] with `listen.drain_timeout` set.
fn serve_config(dir: &Path, stable: &FakeUpstream, canary: &FakeUpstream, drain: &str) -> String {
    served(dir, served_config(stable, canary).drain_timeout(drain))
}

/// The status of a GET, or `None` if no HTTP answer came (connection refused or cut).
async fn status_of(url: &str) -> Option<u16> {
    status_within(url, Duration::from_secs(5)).await
}

/// [`status_of`], waiting up to `limit` for the answer.
async fn status_within(url: &str, limit: Duration) -> Option<u16> {
    let req = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    match tokio::time::timeout(limit, support::client().request(req)).await {
        Ok(Ok(resp)) => Some(resp.status().as_u16()),
        _ => None,
    }
}

async fn wait_hits(upstream: &FakeUpstream, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.hits() < n {
        assert!(
            Instant::now() < deadline,
            "the upstream never saw request {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn refused_within(addr: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts connections {limit:?} after the signal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_in_flight_request_and_exits_0() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    stable.set_delay(Duration::from_secs(1));
    let dir = tempfile::tempdir().unwrap();
    let file = serve_config(dir.path(), &stable, &canary, "5s");
    let mut cohort = Cohort::spawn(&["run", "-c", &file, "--log-format", "json"]);
    let (proxy, admin) = cohort.wait_serving(QUICK).await;
    assert_eq!(
        status_of(&format!("http://{admin}/readyz")).await,
        Some(200)
    );

    let url = format!("http://{proxy}/slow");
    let in_flight = tokio::spawn(async move { get(&url, &[("x-user-id", "u")]).await });
    wait_hits(&stable, 1).await;
    let signalled = Instant::now();
    cohort.signal("TERM");

    // Not ready from the moment the drain begins (the admin listener still answers).
    let deadline = Instant::now() + Duration::from_millis(800);
    loop {
        let ready = status_of(&format!("http://{admin}/readyz")).await;
        if ready == Some(503) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz still {ready:?} during the drain"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    refused_within(proxy, Duration::from_millis(800)).await;
    assert!(!in_flight.is_finished(), "the upstream takes 1 s to answer");

    let answer = in_flight.await.expect("request task");
    assert_eq!((answer.status, answer.text().as_str()), (200, "stable"));
    let status = cohort.exit_within(Duration::from_secs(5)).await;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", cohort.stderr());
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?}, past drain_timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_subcommand_serves_like_run() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let file = serve_config(dir.path(), &stable, &canary, "5s");
    let mut cohort = Cohort::spawn(&["-c", &file]);
    let (proxy, admin) = cohort.wait_serving(QUICK).await;
    let answer = get(&format!("http://{proxy}/"), &[("x-user-id", "u")]).await;
    assert_eq!((answer.status, answer.variant()), (200, Some("stable")));
    assert_eq!(
        status_of(&format!("http://{admin}/healthz")).await,
        Some(200)
    );
    cohort.signal("TERM");
    let status = cohort.exit_within(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", cohort.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_a_long_drain_exits_at_once() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    stable.set_delay(Duration::from_secs(30));
    let dir = tempfile::tempdir().unwrap();
    let file = serve_config(dir.path(), &stable, &canary, "60s");
    let mut cohort = Cohort::spawn(&["run", "-c", &file, "--log-format", "json"]);
    let (proxy, _admin) = cohort.wait_serving(QUICK).await;
    let url = format!("http://{proxy}/stuck");
    // The client waits as long as the upstream does: the drain stays open meanwhile.
    let _in_flight =
        tokio::spawn(async move { status_within(&url, Duration::from_secs(40)).await });
    wait_hits(&stable, 1).await;

    cohort.signal("TERM");
    cohort
        .wait_stderr("stop signal received", Duration::from_secs(5))
        .await;
    // The drain is now waiting on a request that takes 30 s (drain_timeout 60 s).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        cohort.try_exit().is_none(),
        "exited before the second signal"
    );
    let second = Instant::now();
    cohort.signal("TERM");
    let status = cohort.exit_within(Duration::from_secs(5)).await;
    let took = second.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the second signal took {took:?} to act"
    );
    assert!(
        !status.success(),
        "a cut drain is not a clean exit: {status}"
    );
}

/// Idle connections would hold a drain open until `drain_timeout`; SIGTERM closes them
/// at once: keep-alive ones on cohort's HTTP/1.1 path and on hyper's (HTTP/2 here), and
/// one that has not sent its first byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_connections_at_once() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let file = serve_config(dir.path(), &stable, &canary, "30s");
    let mut cohort = Cohort::spawn(&["run", "-c", &file]);
    let (proxy, _admin) = cohort.wait_serving(QUICK).await;

    let mut http1 = RawConn::connect(proxy).await;
    http1
        .write(b"GET /a HTTP/1.1\r\nHost: t\r\nx-user-id: u\r\n\r\n")
        .await;
    assert_eq!(http1.read_response(false).await.status, 200);
    // hyper's client keeps its HTTP/2 connection open, idle, after the answer.
    let http2 = support::h2c_client();
    let answer = send(
        &http2,
        "GET",
        &format!("http://{proxy}/b"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, 200);

    // Connected, nothing sent yet: idle too.
    let mut silent = RawConn::connect(proxy).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let signalled = Instant::now();
    cohort.signal("TERM");
    for (conn, what) in [(&mut http1, "idle HTTP/1.1"), (&mut silent, "silent")] {
        assert!(
            conn.closed_within(Duration::from_secs(2)).await,
            "the {what} connection was still open 2 s after SIGTERM"
        );
    }
    let status = cohort.exit_within(Duration::from_secs(10)).await;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", cohort.stderr());
    assert!(
        took < Duration::from_secs(3),
        "exit took {took:?}: an idle connection held the drain (drain_timeout 30 s)"
    );
    drop(http2);
}

/// [`serve_config`] (drain 5 s) with `listen.shutdown_delay` set.
fn serve_config_with_delay(
    dir: &Path,
    stable: &FakeUpstream,
    canary: &FakeUpstream,
    delay: &str,
) -> String {
    let config = served_config(stable, canary)
        .drain_timeout("5s")
        .shutdown_delay(delay);
    served(dir, config)
}

/// One GET on `conn`; the answer must be the stable upstream's 200, keeping the
/// connection open (no `Connection: close` while the delay runs).
async fn served_on(conn: &mut RawConn, what: &str) {
    conn.write(b"GET /during-delay HTTP/1.1\r\nHost: t\r\nx-user-id: u\r\n\r\n")
        .await;
    let answer = conn.read_response(false).await;
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (200, "stable"),
        "{what}"
    );
    assert_eq!(answer.header("connection"), None, "{what}: {answer:?}");
}

/// DESIGN §6 on Kubernetes: the endpoint of a terminating pod is removed only after
/// SIGTERM, so clients keep arriving for a few seconds. With `shutdown_delay`, `/readyz`
/// answers 503 at once, yet new connections are accepted and served (and keep-alive ones
/// too) until the delay is over; then the listener closes, the drain runs, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delay_keeps_accepting_after_sigterm_then_stops() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let file = serve_config_with_delay(dir.path(), &stable, &canary, "2s");
    let mut cohort = Cohort::spawn(&["run", "-c", &file]);
    let (proxy, admin) = cohort.wait_serving(QUICK).await;
    let mut kept_alive = RawConn::connect(proxy).await;
    served_on(&mut kept_alive, "before the signal").await;

    let signalled = Instant::now();
    cohort.signal("TERM");
    let readyz = format!("http://{admin}/readyz");
    loop {
        let ready = status_of(&readyz).await;
        if ready == Some(503) {
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_millis(500),
            "readyz still {ready:?} {:?} after SIGTERM",
            signalled.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // For 1.5 s of the 2 s delay: new connections, each served, and the old one.
    let mut fresh = 0;
    while signalled.elapsed() < Duration::from_millis(1500) {
        let mut conn = RawConn::connect(proxy).await;
        served_on(
            &mut conn,
            &format!(
                "new connection {} ms after SIGTERM",
                signalled.elapsed().as_millis()
            ),
        )
        .await;
        fresh += 1;
        served_on(
            &mut kept_alive,
            "the keep-alive connection during the delay",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(fresh >= 5, "only {fresh} new connections in 1.5 s");
    assert_eq!(status_of(&readyz).await, Some(503), "still not ready");
    assert!(cohort.try_exit().is_none(), "exited during the delay");

    // Then the listener closes and the process exits cleanly.
    refused_within(proxy, Duration::from_secs(3)).await;
    let refused_after = signalled.elapsed();
    assert!(
        refused_after >= Duration::from_millis(1900),
        "refused {refused_after:?} after SIGTERM, before the 2 s delay was over"
    );
    assert!(
        kept_alive.closed_within(Duration::from_secs(2)).await,
        "the idle keep-alive connection is closed by the drain"
    );
    let status = cohort.exit_within(Duration::from_secs(5)).await;
    let stderr = cohort.stderr();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(stderr.contains("shutdown delay"), "{stderr}");
    assert!(stderr.contains("shutdown delay over"), "{stderr}");
}

/// A second signal ends the process at once, during the delay as during the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_the_shutdown_delay_exits_at_once() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let file = serve_config_with_delay(dir.path(), &stable, &canary, "60s");
    let mut cohort = Cohort::spawn(&["run", "-c", &file]);
    let (proxy, _admin) = cohort.wait_serving(QUICK).await;
    cohort.signal("TERM");
    cohort
        .wait_stderr("shutdown delay", Duration::from_secs(5))
        .await;
    let answer = get(&format!("http://{proxy}/"), &[("x-user-id", "u")]).await;
    assert_eq!(answer.status, 200, "serving during the delay");
    let second = Instant::now();
    cohort.signal("TERM");
    let status = cohort.exit_within(Duration::from_secs(5)).await;
    assert!(
        second.elapsed() < Duration::from_secs(2),
        "the second signal took {:?} to act",
        second.elapsed()
    );
    assert!(
        !status.success(),
        "a cut stop is not a clean exit: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_the_wait_for_a_stuck_request() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    stable.set_delay(Duration::from_secs(30));
    let dir = tempfile::tempdir().unwrap();
    let file = serve_config(dir.path(), &stable, &canary, "1s");
    let mut cohort = Cohort::spawn(&["run", "-c", &file, "--log-format", "json"]);
    let (proxy, _admin) = cohort.wait_serving(QUICK).await;
    let url = format!("http://{proxy}/stuck");
    let in_flight = tokio::spawn(async move { status_of(&url).await });
    wait_hits(&stable, 1).await;

    let signalled = Instant::now();
    cohort.signal("TERM");
    let status = cohort.exit_within(Duration::from_secs(6)).await;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", cohort.stderr());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "drain_timeout = 1s, exit after {took:?}"
    );
    assert_eq!(in_flight.await.unwrap(), None, "the stuck request was cut");
}

/// `listen.drain_timeout` is not a start-only setting (DESIGN §3): a reload that
/// shortens it bounds the next drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_drain_timeout() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    stable.set_delay(Duration::from_secs(30));
    let dir = tempfile::tempdir().unwrap();
    let file = serve_config(dir.path(), &stable, &canary, "60s");
    let mut cohort = Cohort::spawn(&["run", "-c", &file]);
    let (proxy, admin) = cohort.wait_serving(QUICK).await;
    serve_config(dir.path(), &stable, &canary, "1s");
    wait_reloaded(&cohort, admin).await;
    let url = format!("http://{proxy}/stuck");
    let in_flight = tokio::spawn(async move { status_within(&url, Duration::from_secs(40)).await });
    wait_hits(&stable, 1).await;

    let signalled = Instant::now();
    cohort.signal("TERM");
    let status = cohort.exit_within(Duration::from_secs(10)).await;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", cohort.stderr());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "drain_timeout reloaded to 1s (from 60s), exit after {took:?}"
    );
    assert_eq!(in_flight.await.unwrap(), None, "the stuck request was cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_json_lines_to_stderr() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let file = serve_config(dir.path(), &stable, &canary, "5s");
    let mut cohort = Cohort::spawn(&["--log-format", "json", "run", "-c", &file]);
    let (proxy, _admin) = cohort.wait_serving(QUICK).await;
    assert_eq!(status_of(&format!("http://{proxy}/")).await, Some(200));
    cohort.signal("TERM");
    let status = cohort.exit_within(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0));
    let (stdout, stderr) = cohort.take_output();
    assert_eq!(stdout, "", "logs never go to stdout");
    let mut messages = Vec::new();
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert!(value["timestamp"].is_string(), "{line}");
        assert!(value["level"].is_string(), "{line}");
        messages.push(value["fields"]["message"].as_str().unwrap_or("").to_owned());
    }
    assert!(
        messages.iter().any(|m| m == "cohort is serving"),
        "{messages:?}"
    );
    assert!(
        messages.len() >= 2,
        "startup and shutdown are logged: {messages:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let file = serve_config(dir.path(), &stable, &canary, "5s");
    let mut cohort = Cohort::spawn(&["run", "-c", &file]);
    cohort.wait_serving(QUICK).await;
    cohort.signal("TERM");
    cohort.exit_within(Duration::from_secs(5)).await;
    let (_, stderr) = cohort.take_output();
    assert!(
        !stderr.contains('\u{1b}'),
        "escape codes in piped logs (kubectl logs, journald, files):\n{stderr:?}"
    );
}

#[test]
fn run_with_an_invalid_config_exits_1_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write_file(
        dir.path(),
        "bad.toml",
        "[[routes]]\nname = \"r\"\nsalt = \"s\"\ncanary_percent = -1\nstable = { endpoints = [\"http://127.0.0.1:1\"] }\n",
    );
    let out = run_to_end(&["run", "-c", &bad], QUICK);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr_of(&out).contains(&format!("{bad}: routes[0].canary_percent: ")),
        "{}",
        describe(&out)
    );
}

#[test]
fn run_exits_1_when_its_address_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new()
        .listen_address(&addr.to_string())
        .default_workers()
        .route(
            Route::new("r")
                .salt("s")
                .stable_urls(&["http://127.0.0.1:1"]),
        );
    let file = write_file(dir.path(), "cohort.toml", &config.to_toml());
    let out = run_to_end(&["run", "-c", &file], QUICK);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        process::strip_ansi(&stderr_of(&out)).contains("listen.address"),
        "{}",
        describe(&out)
    );
    drop(taken);
}

/// Two configurations that work but surprise later are named at startup: an admin API
/// off loopback without a token (changes through it are refused), and a guard without
/// `state_dir` (a rollback would not survive a restart). A plain config warns of neither.
#[tokio::test]
async fn startup_warns_of_an_open_admin_api_and_a_guard_without_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let route = Route::new("r")
        .salt("s")
        .stable_urls(&["http://127.0.0.1:1"])
        .canary_urls(&["http://127.0.0.1:2"]);
    let warned = Config::new()
        .admin_address("0.0.0.0:0")
        .route(route.clone().guard(Guard::new().max_error_ratio(0.5)))
        .to_toml();
    let quiet = Config::new().route(route).to_toml();
    for (name, text, warns) in [("warned.toml", warned, true), ("quiet.toml", quiet, false)] {
        let file = write_file(dir.path(), name, &text);
        let mut cohort = Cohort::spawn(&["run", "-c", &file]);
        cohort.wait_serving(QUICK).await;
        let stderr = process::strip_ansi(&cohort.stderr());
        for warning in [
            "the admin listener is off loopback without admin.token_file",
            "no state_dir is set: a rollback will not survive a restart",
        ] {
            assert_eq!(
                stderr.contains(warning),
                warns,
                "{name}: {warning:?}\n{stderr}"
            );
        }
        cohort.signal("TERM");
        cohort.exit_within(QUICK).await;
    }
}

/// Reads one series from a running instance's /metrics.
async fn admin_series(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = get(&format!("http://{admin}/metrics"), &[]).await.text();
    support::series_value(&text, name, labels)
}

/// Waits (5 s at most) until the instance serves generation 2: the edited file applied.
async fn wait_reloaded(cohort: &Cohort, admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin_series(admin, "cohort_config_generation", &[]).await < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the edited file was not reloaded; stderr:\n{}",
            cohort.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `listen.shutdown_delay` is read when the signal comes, so a reload changes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_shutdown_delay() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let file = serve_config_with_delay(dir.path(), &stable, &canary, "60s");
    let mut cohort = Cohort::spawn(&["run", "-c", &file]);
    let (proxy, admin) = cohort.wait_serving(QUICK).await;
    serve_config_with_delay(dir.path(), &stable, &canary, "0s");
    wait_reloaded(&cohort, admin).await;
    let signalled = Instant::now();
    cohort.signal("TERM");
    refused_within(proxy, Duration::from_millis(800)).await;
    let status = cohort.exit_within(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", cohort.stderr());
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "the 60 s delay of the first config still applied"
    );
}

#[tokio::test]
async fn sighup_reloads_the_config_file() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let file = serve_config(dir.path(), &stable, &canary, "5s");
    let mut cohort = Cohort::spawn(&["run", "-c", &file]);
    let (_proxy, admin) = cohort.wait_serving(QUICK).await;
    // The file is unchanged, so no file event reloads it: only the signal can.
    assert_eq!(
        admin_series(admin, "cohort_config_reloads_total", &[("result", "ok")]).await,
        0.0
    );
    cohort.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(2);
    while admin_series(admin, "cohort_config_reloads_total", &[("result", "ok")]).await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload; stderr:\n{}",
            cohort.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Unchanged config: the generation stays.
    assert_eq!(
        admin_series(admin, "cohort_config_generation", &[]).await,
        1.0
    );
    cohort.signal("TERM");
    assert_eq!(
        cohort.exit_within(Duration::from_secs(5)).await.code(),
        Some(0)
    );
}

#[tokio::test]
async fn set_rollback_and_status_talk_to_a_running_instance() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let config = served_config(&stable, &canary)
        .drain_timeout("5s")
        .token_file("token");
    let file = write_file(dir.path(), "cohort.toml", &config.to_toml());
    let token_file = write_file(dir.path(), "token", "tok-123\n");
    let mut cohort = Cohort::spawn(&["run", "-c", &file]);
    let (_proxy, admin) = cohort.wait_serving(QUICK).await;
    let admin_url = format!("http://{admin}");

    let out = run_to_end(
        &[
            "set",
            "r",
            "2.5%",
            "--admin",
            &admin_url,
            "--token-file",
            &token_file,
        ],
        QUICK,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "route r: canary 2.5%\n"
    );
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains("canary_percent = 2.5"));

    let out = run_to_end(&["status", "--admin", &admin_url], QUICK);
    assert_eq!(out.status.code(), Some(0));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.starts_with("ROUTE"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("r ") && l.contains("2.5") && l.contains("canary")),
        "{table}"
    );

    // Without the token: refused, exit 1, the reason on stderr, nothing changed.
    let out = run_to_end(&["set", "r", "50", "--admin", &admin_url], QUICK);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_to_end(
        &[
            "set",
            "nope",
            "5",
            "--admin",
            &admin_url,
            "--token-file",
            &token_file,
        ],
        QUICK,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no route named \"nope\""));
    let out = run_to_end(&["set", "r", "100.5", "--admin", &admin_url], QUICK);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad percentage is a usage error"
    );

    let out = run_to_end(
        &[
            "rollback",
            "r",
            "--admin",
            &admin_url,
            "--token-file",
            &token_file,
        ],
        QUICK,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The kill switch acts in memory and leaves the file as it was (DESIGN §4).
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "route r: canary 0% (rolled back: manual, in memory only: no state_dir is set)\n"
    );
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains("canary_percent = 2.5"));
    // A `set` while rolled back is written, and waits for the resume.
    let out = run_to_end(
        &[
            "set",
            "r",
            "5",
            "--admin",
            &admin_url,
            "--token-file",
            &token_file,
        ],
        QUICK,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "route r: canary 0% (rolled back: manual, in memory only: no state_dir is set; 5% applies after `cohort rollout resume r`)\n"
    );
    let out = run_to_end(
        &[
            "rollout",
            "resume",
            "r",
            "--admin",
            &admin_url,
            "--token-file",
            &token_file,
        ],
        QUICK,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "route r: canary 5%\n");

    let out = run_to_end(&["status", "--admin", "http://127.0.0.1:1"], QUICK);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unreachable instance is a failed call"
    );
    cohort.signal("TERM");
    assert_eq!(
        cohort.exit_within(Duration::from_secs(5)).await.code(),
        Some(0)
    );
}

/// A TCP port free right now: bound, then released for cohort to take.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    listener.local_addr().expect("local address").port()
}

/// DESIGN §6: `set`, `rollback`, `status` and `rollout resume` given `-c FILE` call that
/// file's `admin.address` (an unspecified address on loopback) with the token of its
/// `admin.token_file`; an explicit `--admin` or `--token-file` wins over the file.
#[tokio::test]
async fn admin_commands_find_the_instance_and_its_token_through_c() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = served_config(&stable, &canary)
        .drain_timeout("5s")
        .admin_address(&format!("0.0.0.0:{port}"))
        .token_file("token");
    let file = write_file(dir.path(), "cohort.toml", &config.to_toml());
    write_file(dir.path(), "token", "tok-from-file\n");
    let wrong_token = write_file(dir.path(), "wrong-token", "not-it\n");
    let mut cohort = Cohort::spawn(&["run", "-c", &file]);
    let (_proxy, admin) = cohort.wait_serving(QUICK).await;
    assert_eq!(admin.port(), port);

    // Run from another directory: the token file resolves against the config's.
    let elsewhere = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| run_in(Some(elsewhere.path()), args, QUICK);

    for args in [["status", "-c", &file], ["-c", &file, "status"]] {
        let out = cli(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", describe(&out));
        let table = stdout_of(&out);
        assert!(
            table.starts_with("ROUTE") && table.lines().any(|l| l.starts_with("r ")),
            "{table}"
        );
    }
    // Authorised with the file's token (a missing one is 401), and nothing to resume.
    let out = cli(&["rollout", "resume", "r", "-c", &file]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr_of(&out).contains("409") && stderr_of(&out).contains("nothing to resume"),
        "{}",
        describe(&out)
    );
    // An explicit --token-file wins over the file's: refused, nothing changed.
    let out = cli(&["set", "r", "50", "-c", &file, "--token-file", &wrong_token]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(stderr_of(&out).contains("401"), "{}", describe(&out));
    // An explicit --admin wins over the file's address.
    let out = cli(&["status", "-c", &file, "--admin", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr_of(&out).contains("cannot connect to 127.0.0.1:1"),
        "{}",
        describe(&out)
    );

    let out = cli(&["set", "r", "5", "-c", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(stdout_of(&out), "route r: canary 5%\n");
    let out = cli(&["rollback", "r", "-c", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        stdout_of(&out),
        "route r: canary 0% (rolled back: manual, in memory only: no state_dir is set)\n"
    );

    cohort.signal("TERM");
    assert_eq!(
        cohort.exit_within(Duration::from_secs(5)).await.code(),
        Some(0)
    );
}

/// `--admin HOST:PORT` without a scheme is plain http, like `http://HOST:PORT`.
#[tokio::test]
async fn admin_accepts_host_and_port_without_a_scheme() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let file = serve_config(dir.path(), &stable, &canary, "5s");
    let mut cohort = Cohort::spawn(&["run", "-c", &file]);
    let (_proxy, admin) = cohort.wait_serving(QUICK).await;
    for given in [admin.to_string(), format!("http://{admin}")] {
        let out = run_to_end(&["status", "--admin", &given], QUICK);
        assert_eq!(out.status.code(), Some(0), "{given}: {}", describe(&out));
        assert!(stdout_of(&out).starts_with("ROUTE"), "{}", describe(&out));
        // Loopback without a token file: changes are allowed.
        let out = run_to_end(&["set", "r", "1", "--admin", &given], QUICK);
        assert_eq!(out.status.code(), Some(0), "{given}: {}", describe(&out));
    }
    cohort.signal("TERM");
    assert_eq!(
        cohort.exit_within(Duration::from_secs(5)).await.code(),
        Some(0)
    );
}

/// A `-c` file the admin commands cannot use is a failed call (exit 1) with the reason,
/// never a silent fallback to the default address.
#[test]
fn admin_commands_with_an_unusable_c_file_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap();
    let invalid = write_file(
        dir.path(),
        "invalid.toml",
        "[admin]\naddress = \"nowhere\"\n",
    );
    // The instance's admin port is ephemeral: nothing in the file says where to call.
    let ephemeral = write_file(dir.path(), "ephemeral.toml", &two_routes().to_toml());
    for (args, reason) in [
        (
            vec!["status", "-c", missing],
            format!("{missing}: cannot read the file"),
        ),
        (
            vec!["rollback", "web", "-c", &invalid],
            format!("{invalid}: admin.address: \"nowhere\" is not an IP address"),
        ),
        (
            vec!["set", "web", "5", "-c", &ephemeral],
            format!("{ephemeral}: admin.address: 127.0.0.1:0 has no fixed port"),
        ),
        (
            vec!["rollout", "resume", "web", "-c", missing],
            format!("{missing}: cannot read the file"),
        ),
    ] {
        let out = run_to_end(&args, QUICK);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        assert!(
            stderr_of(&out).contains(&reason),
            "{args:?}: want {reason:?} in {}",
            describe(&out)
        );
        assert_eq!(stdout_of(&out), "", "{args:?}");
    }
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // `cohort check | head -0`: stdout is closed before cohort writes.
    let mut child = std::process::Command::new(process::bin())
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/cohort.toml"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn cohort");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

// ---------------------------------------------------------------------------------------
// Logs: the access log on both HTTP/1.1 engines, RUST_LOG target lists
// ---------------------------------------------------------------------------------------

/// A config with `listen.access_log` on, everything to `stable`.
fn access_log_config(dir: &Path, stable: &FakeUpstream, canary: &FakeUpstream) -> String {
    served(dir, served_config(stable, canary).access_log(true))
}

/// The access log lines (JSON) in `stderr`.
fn access_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "cohort::access")
        .collect()
}

/// One JSON access line per request, on both HTTP/1.1 engines, whatever `--log-format`
/// the other log lines use (DESIGN §1.8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_json_line_per_request_on_both_http1_engines() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let file = access_log_config(dir.path(), &stable, &canary);
    for format in ["text", "json"] {
        let mut cohort = Cohort::spawn(&["run", "-c", &file, "--log-format", format]);
        let (proxy, _admin) = cohort.wait_serving(QUICK).await;

        // A plain GET (cohort's own path), then a chunked upload (handed to hyper).
        let mut conn = support::RawConn::connect(proxy).await;
        conn.write(b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nx-user-id: u1\r\n\r\n")
            .await;
        assert_eq!(conn.read_response(false).await.status, 200);
        conn.write(
            b"POST /upload HTTP/1.1\r\nHost: h\r\nx-user-id: u2\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(conn.read_response(false).await.status, 200);

        let deadline = Instant::now() + Duration::from_secs(5);
        let lines = loop {
            let lines = access_lines(&cohort.stderr());
            if lines.len() >= 2 || Instant::now() > deadline {
                break lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let stderr = cohort.stderr();
        assert_eq!(lines.len(), 2, "{format}: stderr:\n{stderr}");
        for (line, (method, path)) in lines.iter().zip([("GET", "/a"), ("POST", "/upload")]) {
            let fields = &line["fields"];
            assert_eq!(fields["method"], method, "{line}");
            assert_eq!(fields["path"], path, "{line}");
            assert_eq!(fields["route"], "r", "{line}");
            assert_eq!(fields["variant"], "stable", "{line}");
            assert_eq!(fields["source"], "header", "{line}");
            assert_eq!(fields["status"], 200, "{line}");
            assert!(fields["duration_ms"].as_f64().is_some(), "{line}");
        }
        // The other lines keep the chosen format.
        let serving = stderr
            .lines()
            .find(|l| l.contains("cohort is serving"))
            .expect("a serving line");
        let serving_is_json = serde_json::from_str::<serde_json::Value>(serving).is_ok();
        assert_eq!(serving_is_json, format == "json", "{format}: {serving}");
        cohort.signal("TERM");
        cohort.exit_within(QUICK).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_target_lists_select_what_is_logged_and_a_bad_value_falls_back_to_info() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let file = access_log_config(dir.path(), &stable, &canary);

    // The access log switched off by target, everything else at info.
    let env = [("RUST_LOG", "info,cohort::access=off")];
    let mut quiet = Cohort::spawn_with(&["run", "-c", &file, "--log-format", "json"], &env);
    let (proxy, _) = quiet.wait_serving(QUICK).await;
    let answer = get(&format!("http://{proxy}/"), &[("x-user-id", "u")]).await;
    assert_eq!(answer.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        access_lines(&quiet.stderr()).is_empty(),
        "{}",
        quiet.stderr()
    );

    // Values that do not parse (a bad level, EnvFilter's span syntax, a bare word that
    // tracing's own parser would take as a target): a warning, and info logging.
    for value in ["cohort=loud", "cohort[span]=debug", "verbose"] {
        let env = [("RUST_LOG", value)];
        let mut fallback = Cohort::spawn_with(&["run", "-c", &file, "--log-format", "json"], &env);
        let (proxy, _) = fallback.wait_serving(QUICK).await;
        assert!(
            fallback.stderr().contains("RUST_LOG is not valid"),
            "{value}: {}",
            fallback.stderr()
        );
        let answer = get(&format!("http://{proxy}/"), &[("x-user-id", "u")]).await;
        assert_eq!(answer.status, 200);
        fallback.wait_stderr("cohort::access", QUICK).await;
    }

    // A target list alone does not hide errors: a start that fails still says why.
    write_file(dir.path(), "empty-token", "\n");
    let config = served_config(&stable, &canary)
        .access_log(true)
        .token_file("empty-token");
    let failing = write_file(dir.path(), "failing.toml", &config.to_toml());
    let mut failed = Cohort::spawn_with(
        &["run", "-c", &failing],
        &[("RUST_LOG", "cohort::access=info")],
    );
    assert_eq!(failed.exit_within(QUICK).await.code(), Some(1));
    let (_, stderr) = failed.take_output();
    assert!(stderr.contains("admin.token_file"), "{stderr}");
}
