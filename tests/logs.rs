//! What cohort writes to its log on the request path, read from the real binary's
//! stderr: the upstream-failure warning (rate-limited per route, variant and kind),
//! the access log line's fields, and the request id it forwards upstream. On both
//! engines: cohort's own HTTP/1.1 one (an HTTP/1.1 client, a route whose endpoints are
//! all plain HTTP/1.1) and hyper's (an HTTP/2 client, or a route with h2c endpoints).
#[path = "support/process.rs"]
mod process;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use process::{write_file, Cohort};
use serde_json::Value;
use support::{
    client, h2c_client, refused_addr, send, Answer, Config, FakeUpstream, HttpClient, Reply, Route,
};

const QUICK: Duration = Duration::from_secs(20);

/// A config with these routes and `listen.access_log` when `access_log`, written to
/// `dir/cohort.toml`.
fn config(dir: &std::path::Path, access_log: bool, routes: Vec<Route>) -> String {
    let mut config = Config::new();
    if access_log {
        config = config.access_log(true);
    }
    let config = routes.into_iter().fold(config, Config::route);
    write_file(dir, "cohort.toml", &config.to_toml())
}

/// A route on `prefix` sending everything to `stable` (`protocol` e.g. `h2c`, or empty).
fn route_to(name: &str, prefix: &str, stable: &str, protocol: &str) -> Route {
    Route::new(name)
        .path_prefix(prefix)
        .sticky(&["header:x-user-id"])
        .canary_percent(0)
        .stable_urls(&[stable])
        .stable_protocol(protocol)
}

/// The JSON lines of `stderr` that `keep` selects.
fn json_lines(stderr: &str, keep: impl Fn(&Value) -> bool) -> Vec<(String, Value)> {
    stderr
        .lines()
        .filter_map(|l| Some((l.to_owned(), serde_json::from_str::<Value>(l).ok()?)))
        .filter(|(_, v)| keep(v))
        .collect()
}

fn is_failure_warning(v: &Value) -> bool {
    v["level"] == "WARN" && v["fields"]["message"] == "upstream request failed"
}

fn is_access(v: &Value) -> bool {
    v["target"] == "cohort::access"
}

/// Waits until `stderr` holds at least `n` lines that `keep` selects; returns them all.
async fn wait_lines(
    cohort: &Cohort,
    n: usize,
    keep: impl Fn(&Value) -> bool,
) -> Vec<(String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = json_lines(&cohort.stderr(), &keep);
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `text` is a UUID v4 in lowercase hex (`8-4-4-4-12`, version 4, variant 10).
fn is_uuid_v4(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| {
            g.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        && groups[2].starts_with('4')
        && groups[3].starts_with(['8', '9', 'a', 'b'])
}

/// The text of the number after `"duration_ms":` in a raw JSON line.
fn raw_duration(line: &str) -> &str {
    let start = line.find("\"duration_ms\":").expect("a duration_ms field") + 14;
    let rest = &line[start..];
    let end = rest.find([',', '}']).expect("the number ends");
    &rest[..end]
}

/// The engines, as a client reaches them: HTTP/1.1 on a plain route is cohort's own;
/// HTTP/2 goes through hyper's.
fn engines() -> [(&'static str, HttpClient); 2] {
    [
        ("own HTTP/1.1", client()),
        ("hyper, HTTP/2 client", h2c_client()),
    ]
}

// ---------------------------------------------------------------------------------------
// The upstream-failure warning
// ---------------------------------------------------------------------------------------

/// A refused upstream port: one WARN line naming route, variant, endpoint and kind, for
/// a burst of failures within a second; the next line, a second later, says how many
/// were held back. With the access log off (the default): the warning does not
/// depend on it. One route per engine path, so each has its own gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upstream_warns_once_a_second_with_the_count_held_back() {
    const BURST: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let refused: Vec<SocketAddr> = (0..3).map(|_| refused_addr()).collect();
    let routes = vec![
        route_to("own", "/own", &format!("http://{}", refused[0]), ""),
        route_to("viah2", "/viah2", &format!("http://{}", refused[1]), ""),
        route_to("h2c", "/h2c", &format!("http://{}", refused[2]), "h2c"),
    ];
    let file = config(dir.path(), false, routes);
    let mut cohort = Cohort::spawn(&["run", "-c", &file, "--log-format", "json"]);
    let (proxy, _) = cohort.wait_serving(QUICK).await;
    // (route, endpoint, client): the own engine, hyper's for an HTTP/2 client, and
    // hyper's for an HTTP/1.1 client on a route with an h2c endpoint.
    let cases = [
        ("own", refused[0], client()),
        ("viah2", refused[1], h2c_client()),
        ("h2c", refused[2], client()),
    ];
    let burst = |route: &'static str, http: HttpClient, n: usize| async move {
        let url = format!("http://{proxy}/{route}/x");
        let started = Instant::now();
        for _ in 0..n {
            let answer = send(&http, "GET", &url, &[], Bytes::new()).await;
            assert_eq!(answer.status, 502, "{route}: {}", answer.text());
        }
        started.elapsed()
    };

    let mut quick = true;
    for (route, _, http) in &cases {
        quick &= burst(route, http.clone(), BURST).await < Duration::from_millis(900);
    }
    // Lines for the burst are written as each request fails; a moment for the pipe.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = wait_lines(&cohort, cases.len(), is_failure_warning).await;
    for (route, endpoint, _) in &cases {
        let lines: Vec<&Value> = first
            .iter()
            .map(|(_, v)| v)
            .filter(|v| v["fields"]["route"] == *route)
            .collect();
        if quick {
            assert_eq!(lines.len(), 1, "{route}: {}", cohort.stderr());
        }
        let fields = &lines[0]["fields"];
        assert_eq!(fields["variant"], "stable", "{fields}");
        assert_eq!(fields["endpoint"], endpoint.to_string(), "{fields}");
        assert_eq!(fields["kind"], "connect", "{fields}");
        assert!(fields.get("suppressed").is_none(), "{fields}");
        let error = fields["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&endpoint.to_string()) && error.to_lowercase().contains("refused"),
            "{fields}"
        );
    }

    // A second later, one more failure each: its line counts the ones held back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (route, _, http) in &cases {
        burst(route, http.clone(), 1).await;
    }
    let all = wait_lines(&cohort, 2 * cases.len(), is_failure_warning).await;
    for (route, _, _) in &cases {
        let lines: Vec<&Value> = all
            .iter()
            .map(|(_, v)| v)
            .filter(|v| v["fields"]["route"] == *route)
            .collect();
        let held_back: u64 = lines
            .iter()
            .filter_map(|v| v["fields"]["suppressed"].as_u64())
            .sum();
        // However the burst was timed, every failure is a line or counted in one.
        assert_eq!(
            lines.len() as u64 + held_back,
            BURST as u64 + 1,
            "{route}: {}",
            cohort.stderr()
        );
        if quick {
            assert_eq!(lines.len(), 2, "{route}: {}", cohort.stderr());
            assert_eq!(
                lines[1]["fields"]["suppressed"],
                BURST as u64 - 1,
                "{route}"
            );
        }
    }
    cohort.signal("TERM");
    cohort.exit_within(QUICK).await;
}

/// The text format writes the warning's values plainly (`kind=connect`), and no Rust
/// `Debug` wrapping (`Some(..)`, `None`) in any line of the request path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warning_reads_plainly_in_the_text_format() {
    let dir = tempfile::tempdir().unwrap();
    let refused = refused_addr();
    let file = config(
        dir.path(),
        true,
        vec![route_to("shop", "/", &format!("http://{refused}"), "")],
    );
    let mut cohort = Cohort::spawn(&["run", "-c", &file]);
    let (proxy, _) = cohort.wait_serving(QUICK).await;
    let answer = send(
        &client(),
        "GET",
        &format!("http://{proxy}/a"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, 502);
    let stderr = cohort.wait_stderr("cohort::access", QUICK).await;
    let stderr = process::strip_ansi(&stderr);
    let warning = stderr
        .lines()
        .find(|l| l.contains("upstream request failed"))
        .unwrap_or_else(|| panic!("no warning:\n{stderr}"));
    assert!(warning.contains(" WARN "), "{warning}");
    // The target the README documents, whichever module writes the line.
    assert!(warning.contains(" cohort::request_log: "), "{warning}");
    for field in [
        "route=shop".to_owned(),
        "variant=stable".to_owned(),
        format!("endpoint={refused}"),
        "kind=connect".to_owned(),
    ] {
        assert!(warning.contains(&field), "{field} in {warning}");
    }
    assert!(!warning.contains("suppressed"), "{warning}");
    for line in stderr.lines() {
        assert!(!line.contains("Some(") && !line.contains("None"), "{line}");
    }
    cohort.signal("TERM");
    cohort.exit_within(QUICK).await;
}

// ---------------------------------------------------------------------------------------
// The access log line and the request id
// ---------------------------------------------------------------------------------------

/// Sends a request and returns the answer; the test matches log lines by request id.
async fn request(
    http: &HttpClient,
    method: &str,
    url: &str,
    id: Option<&str>,
    body: usize,
) -> Answer {
    let headers: Vec<(&str, &str)> = id.map(|id| ("x-request-id", id)).into_iter().collect();
    send(http, method, url, &headers, Bytes::from(vec![b'x'; body])).await
}

/// The access line carrying `id`, waited for.
async fn access_line(cohort: &Cohort, id: &str) -> (String, Value) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = json_lines(&cohort.stderr(), is_access)
            .into_iter()
            .find(|(_, v)| v["fields"]["request_id"] == id);
        if let Some(found) = found {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no access line with request_id {id}:\n{}",
            cohort.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fields every access line shares, checked on `line`.
fn check_common(what: &str, raw: &str, line: &Value) {
    let duration = raw_duration(raw);
    let decimals = duration.split_once('.').map_or(0, |(_, d)| d.len());
    assert!(decimals <= 3, "{what}: duration_ms {duration} in {raw}");
    assert!(duration.parse::<f64>().is_ok(), "{what}: {raw}");
    assert!(
        !raw.contains("Some(") && !raw.contains("None"),
        "{what}: {raw}"
    );
    assert!(line["fields"]["peer"].as_str().is_some(), "{what}: {raw}");
}

/// Every access line names the endpoint, the error kind when there was one, the body
/// bytes each way and the request id; a client's `x-request-id` reaches the upstream
/// unchanged, and a request without one gets a UUID the upstream and the log share.
/// On both engines, and on hyper's with an HTTP/2 upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_carry_endpoint_error_bytes_and_the_request_id_on_both_engines() {
    const BODY: u64 = 1500;
    const UPLOAD: usize = 123;
    let plain = FakeUpstream::start("plain").await;
    let h2c = FakeUpstream::start("h2c").await;
    for upstream in [&plain, &h2c] {
        upstream.set_reply(Reply::Pattern { len: BODY });
    }
    let refused = refused_addr();
    let dir = tempfile::tempdir().unwrap();
    let routes = vec![
        route_to("plain", "/plain", &plain.url(), ""),
        route_to("h2c", "/h2c", &h2c.url(), "h2c"),
        route_to("down", "/down", &format!("http://{refused}"), ""),
    ];
    let file = config(dir.path(), true, routes);
    let mut cohort = Cohort::spawn(&["run", "-c", &file, "--log-format", "json"]);
    let (proxy, _) = cohort.wait_serving(QUICK).await;

    let mut n = 0;
    for (engine, http) in engines() {
        for (route, upstream) in [("plain", &plain), ("h2c", &h2c)] {
            let what = format!("{engine}, route {route}");
            let url = format!("http://{proxy}/{route}/item");

            // The client's id: unchanged upstream and in the log.
            n += 1;
            let id = format!("client-id-{n}");
            let answer = request(&http, "POST", &url, Some(&id), UPLOAD).await;
            assert_eq!(answer.status, 200, "{what}");
            assert_eq!(answer.body.len() as u64, BODY, "{what}");
            let seen = upstream.last_seen();
            assert_eq!(seen.one("x-request-id"), Some(id.as_str()), "{what}");
            assert_eq!(seen.body_len, UPLOAD as u64, "{what}");
            let (raw, line) = access_line(&cohort, &id).await;
            check_common(&what, &raw, &line);
            let fields = &line["fields"];
            assert_eq!(fields["route"], route, "{what}: {raw}");
            assert_eq!(fields["status"], 200, "{what}: {raw}");
            assert_eq!(
                fields["endpoint"],
                upstream.addr.to_string(),
                "{what}: {raw}"
            );
            assert!(fields.get("error_kind").is_none(), "{what}: {raw}");
            assert_eq!(fields["request_body_bytes"], UPLOAD as u64, "{what}: {raw}");
            assert_eq!(fields["response_body_bytes"], BODY, "{what}: {raw}");

            // No id: one is drawn, forwarded, and logged.
            let answer = request(&http, "GET", &url, None, 0).await;
            assert_eq!(answer.status, 200, "{what}");
            let seen = upstream.last_seen();
            let drawn = seen.one("x-request-id").unwrap_or_default().to_owned();
            assert!(is_uuid_v4(&drawn), "{what}: upstream saw {drawn:?}");
            let (raw, line) = access_line(&cohort, &drawn).await;
            check_common(&what, &raw, &line);
            assert_eq!(line["fields"]["request_body_bytes"], 0, "{what}: {raw}");
            assert_eq!(line["fields"]["response_body_bytes"], BODY, "{what}: {raw}");
        }

        // A refused upstream: the endpoint tried, the kind, nothing forwarded, and the
        // bytes of cohort's own 502 text.
        let what = format!("{engine}, refused");
        n += 1;
        let id = format!("client-id-{n}");
        let url = format!("http://{proxy}/down/item");
        let answer = request(&http, "POST", &url, Some(&id), UPLOAD).await;
        assert_eq!(answer.status, 502, "{what}");
        let (raw, line) = access_line(&cohort, &id).await;
        check_common(&what, &raw, &line);
        let fields = &line["fields"];
        assert_eq!(fields["status"], 502, "{what}: {raw}");
        assert_eq!(fields["endpoint"], refused.to_string(), "{what}: {raw}");
        assert_eq!(fields["error_kind"], "connect", "{what}: {raw}");
        assert_eq!(fields["request_body_bytes"], 0, "{what}: {raw}");
        assert_eq!(
            fields["response_body_bytes"],
            answer.body.len() as u64,
            "{what}: {raw}"
        );
    }
    cohort.signal("TERM");
    cohort.exit_within(QUICK).await;
}

/// Two requests without an id get two different ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drawn_request_ids_differ_from_request_to_request() {
    let upstream = FakeUpstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let file = config(
        dir.path(),
        false,
        vec![route_to("r", "/", &upstream.url(), "")],
    );
    let mut cohort = Cohort::spawn(&["run", "-c", &file]);
    let (proxy, _) = cohort.wait_serving(QUICK).await;
    let http = client();
    for _ in 0..3 {
        let answer = request(&http, "GET", &format!("http://{proxy}/"), None, 0).await;
        assert_eq!(answer.status, 200);
    }
    let ids: Vec<String> = upstream
        .seen()
        .iter()
        .map(|s| s.one("x-request-id").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|id| is_uuid_v4(id)), "{ids:?}");
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
    cohort.signal("TERM");
    cohort.exit_within(QUICK).await;
}

/// The access line's `client` is the client's address (DESIGN §10): behind a trusted
/// proxy (here the test itself, on 127.0.0.1) the one `X-Forwarded-For` names, else the
/// peer's; `peer` stays the TCP peer. On both engines, and on hyper's with an h2c
/// upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_show_the_client_address_behind_trusted_proxies() {
    let plain = FakeUpstream::start("plain").await;
    let h2c = FakeUpstream::start("h2c").await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new()
        .access_log(true)
        .trusted_proxies(&["127.0.0.1/32"])
        .route(route_to("plain", "/plain", &plain.url(), ""))
        .route(route_to("h2c", "/h2c", &h2c.url(), "h2c"));
    let file = write_file(dir.path(), "cohort.toml", &config.to_toml());
    let mut cohort = Cohort::spawn(&["run", "-c", &file, "--log-format", "json"]);
    let (proxy, _) = cohort.wait_serving(QUICK).await;

    let mut n = 0;
    for (engine, http) in engines() {
        for route in ["plain", "h2c"] {
            let url = format!("http://{proxy}/{route}/item");
            for (xff, client) in [
                (Some("198.51.100.1, 2001:db8::7"), "2001:db8::7"),
                (Some("203.0.113.9:4711, 127.0.0.1"), "203.0.113.9"),
                (None, "127.0.0.1"),
            ] {
                let what = format!("{engine}, route {route}, {xff:?}");
                n += 1;
                let id = format!("client-addr-{n}");
                let mut headers = vec![("x-request-id", id.as_str())];
                headers.extend(xff.map(|xff| ("x-forwarded-for", xff)));
                let answer = send(&http, "GET", &url, &headers, Bytes::new()).await;
                assert_eq!(answer.status, 200, "{what}");
                let (raw, line) = access_line(&cohort, &id).await;
                check_common(&what, &raw, &line);
                assert_eq!(line["fields"]["client"], client, "{what}: {raw}");
                let peer = line["fields"]["peer"].as_str().unwrap_or_default();
                assert!(peer.starts_with("127.0.0.1:"), "{what}: {raw}");
            }
        }
    }
    cohort.signal("TERM");
    cohort.exit_within(QUICK).await;
}
