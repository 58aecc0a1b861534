//! The HTML status page (`GET /` on the admin listener, DESIGN §4) of a real cohort with
//! live traffic: the figures of `/routes` and the charts of `/routes/{name}/history` are
//! on the page as served over HTTP, and a real browser (headless Chromium) renders them.
//! The screenshots are kept at `target/status-page.png` and
//! `target/status-page-charts.png` for people to look at.
//!
//! Chromium comes from the Debian package `chromium` (`scripts/test` installs it). A
//! missing browser fails this test; it never skips.
mod support;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use support::{client, get, key_in, send, Config, FakeUpstream, Route, TestCohort, PATIENCE};

/// How long one Chromium run may take before it is killed and the test fails.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// One browser at a time: two tests each starting Chromium twice on two cores made
/// every run slow enough to flirt with the timeout.
static BROWSER: Mutex<()> = Mutex::new(());

/// The window of the first test's screenshot; the charts test uses a taller one, so both
/// route cards fit.
const WINDOW: (u32, u32) = (1280, 900);
const CHARTS_WINDOW: (u32, u32) = (1280, 1200);

const CHECKOUT_SALT: &str = "checkout-v2";
/// Config text with markup in it: the page must show it as text.
const SEARCH_SALT: &str = "search<v3>&co";

/// A cohort with two routes: `checkout` (10 %, gets traffic) and `search` (2.5 %, idle).
async fn start() -> (TestCohort, [FakeUpstream; 4]) {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let search_stable = FakeUpstream::start("search-stable").await;
    let search_canary = FakeUpstream::start("search-canary").await;
    let config = Config::new()
        .route(
            Route::new("checkout")
                .path_prefix("/")
                .sticky(&["header:x-user-id", "cookie:session", "ip"])
                .salt(CHECKOUT_SALT)
                .canary_percent(10)
                .stable(&stable)
                .canary(&canary),
        )
        .route(
            Route::new("search")
                .host("shop.example.com")
                .path_prefix("/search")
                .sticky(&["cookie:session"])
                .salt(SEARCH_SALT)
                .canary_percent(2.5)
                .stable(&search_stable)
                .canary(&search_canary),
        );
    let cohort = TestCohort::start(config).await;
    (cohort, [stable, canary, search_stable, search_canary])
}

/// 30 stable requests (200), 40 canary requests of which 10 answer 500 (25 % errors).
async fn drive_traffic(cohort: &TestCohort, stable: &FakeUpstream, canary: &FakeUpstream) {
    let stable_key = key_in("stable", CHECKOUT_SALT, 10.0, "user");
    let canary_key = key_in("canary", CHECKOUT_SALT, 10.0, "user");
    // A slower canary, so its p99 stands apart from the stable one.
    canary.set_delay(Duration::from_millis(20));
    for _ in 0..30 {
        let answer = get(&cohort.url("/cart"), &[("x-user-id", &stable_key)]).await;
        assert_eq!(answer.variant(), Some("stable"));
    }
    for i in 0..40 {
        canary.set_status(if i % 4 == 3 { 500 } else { 200 });
        let answer = get(&cohort.url("/cart"), &[("x-user-id", &canary_key)]).await;
        assert_eq!(answer.variant(), Some("canary"));
    }
    assert_eq!((stable.hits(), canary.hits()), (30, 40));
}

async fn routes_json(cohort: &TestCohort) -> Value {
    admin_json(cohort, "/routes").await
}

async fn admin_json(cohort: &TestCohort, path: &str) -> Value {
    let answer = get(&cohort.admin_url(path), &[]).await;
    assert_eq!(answer.status, 200, "{path}: {}", answer.text());
    serde_json::from_slice(&answer.body).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// What the status page draws: `/routes` with each route's `/routes/{name}/history`
/// as its `"history"`.
async fn page_json(cohort: &TestCohort) -> Value {
    let mut doc = routes_json(cohort).await;
    let names: Vec<String> = doc["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| r["name"].as_str().expect("a name").to_owned())
        .collect();
    for (i, name) in names.iter().enumerate() {
        doc["routes"][i]["history"] = admin_json(cohort, &format!("/routes/{name}/history")).await;
    }
    doc
}

/// `/routes` once every request sent is counted (metrics are recorded when a response
/// body ends on cohort's side, a moment after the client has read it).
async fn counted_routes(cohort: &TestCohort) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let doc = routes_json(cohort).await;
        let checkout = &doc["routes"][0];
        if checkout["stable"]["requests"] == 30 && checkout["canary"]["requests"] == 40 {
            return doc;
        }
        assert!(Instant::now() < deadline, "traffic never counted: {doc}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The slice of `page` from the card of `route` to the end of that card.
fn card<'a>(page: &'a str, route: &str) -> &'a str {
    let start = page
        .find(&format!("data-route=\"{route}\""))
        .unwrap_or_else(|| panic!("no card for route {route}:\n{page}"));
    let card = &page[start..];
    &card[..card.find("</section>").expect("card end")]
}

/// The slice of `card` holding the table row of `variant`.
fn row<'a>(card: &'a str, variant: &str) -> &'a str {
    let start = card
        .find(&format!("<tr class=\"{variant}\">"))
        .unwrap_or_else(|| panic!("no {variant} row in:\n{card}"));
    let row = &card[start..];
    &row[..row.find("</tr>").expect("row end")]
}

/// The figures of the running cohort, checked on a page as served or as a browser's DOM.
fn assert_figures(page: &str, what: &str) {
    assert!(page.contains("<h2>checkout</h2>"), "{what}: route name");
    assert!(page.contains("<h2>search</h2>"), "{what}: route name");
    assert!(
        page.contains("http-equiv=\"refresh\" content=\"5\""),
        "{what}: refresh"
    );

    let checkout = card(page, "checkout");
    assert!(checkout.contains(CHECKOUT_SALT), "{what}: salt");
    assert!(
        checkout.contains(
            "<code>header:x-user-id</code> → <code>cookie:session</code> → <code>ip</code>"
        ),
        "{what}: sticky sources in order"
    );
    assert!(
        checkout.contains("stable <span class=\"pct\">90&nbsp;%</span>"),
        "{what}"
    );
    assert!(
        checkout.contains("canary <span class=\"pct\">10&nbsp;%</span>"),
        "{what}"
    );
    let stable = row(checkout, "stable");
    assert!(
        stable.contains("<td class=\"num requests\">30</td>"),
        "{what}: {stable}"
    );
    assert!(
        stable.contains("<td class=\"num err\">0<span class=\"unit\">%</span></td>"),
        "{what}: {stable}"
    );
    assert!(
        stable.contains("<span class=\"unit\">ms</span>"),
        "{what}: a p99: {stable}"
    );
    let canary = row(checkout, "canary");
    assert!(
        canary.contains("<td class=\"num requests\">40</td>"),
        "{what}: {canary}"
    );
    assert!(
        canary.contains("<td class=\"num err bad\"><span class=\"err\">25<span class=\"unit\">%</span></span></td>"),
        "{what}: 10 of 40 canary requests failed, highlighted: {canary}"
    );
    assert!(
        canary.contains("<span class=\"unit\">ms</span>"),
        "{what}: a p99: {canary}"
    );

    assert!(
        checkout.contains("<span class=\"alert\">error rate above 1 %: canary</span>"),
        "{what}: the failing variant is named in the card's header"
    );

    let search = card(page, "search");
    assert!(
        !search.contains("class=\"alert\""),
        "{what}: an idle route is no alert"
    );
    assert!(
        search.contains("search&lt;v3&gt;&amp;co"),
        "{what}: the salt is escaped: {search}"
    );
    assert!(!page.contains("<v3>"), "{what}: no markup from config");
    assert!(
        search.contains("shop.example.com · path <code>/search</code>"),
        "{what}"
    );
    assert!(
        search.contains("stable <span class=\"pct\">97.5&nbsp;%</span>"),
        "{what}"
    );
    assert!(
        search.contains("canary <span class=\"pct\">2.5&nbsp;%</span>"),
        "{what}"
    );
    for variant in ["stable", "canary"] {
        let idle = row(search, variant);
        assert!(
            idle.contains("<td class=\"num err none\">–</td>"),
            "{what}: no traffic, no error rate: {idle}"
        );
        assert!(
            idle.contains("<td class=\"num p99 none\">–</td>"),
            "{what}: no traffic, no p99: {idle}"
        );
        assert!(
            idle.contains("<td class=\"num requests\">0</td>"),
            "{what}: {idle}"
        );
    }
}

#[tokio::test]
async fn the_status_page_shows_live_figures_and_renders_in_a_browser() {
    let (cohort, [stable, canary, _search_stable, _search_canary]) = start().await;
    drive_traffic(&cohort, &stable, &canary).await;
    let doc = counted_routes(&cohort).await;
    assert!(doc["routes"][1]["canary"]["error_ratio"].is_null());

    // (a) The page as served over HTTP carries the figures of `/routes`.
    let page = get(&cohort.admin_url("/"), &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    assert_figures(&html, "served page");
    assert!(!html.contains("<script"), "the page needs no JavaScript");

    // It is exactly the rendering of `/routes` and the histories: compare with documents
    // fetched in the same second (the request rate's divisor moves with the clock until a
    // minute has passed, and the charts' "now" with every second).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let before = page_json(&cohort).await;
        let html = get(&cohort.admin_url("/"), &[]).await.text();
        let after = page_json(&cohort).await;
        if before == after {
            assert_eq!(html, cohort::status_page::render(&before));
            break;
        }
        assert!(Instant::now() < deadline, "/routes never held still");
    }

    // (b) A real browser renders it.
    let url = cohort.admin_url("/");
    let (png, dom) = browse_async(url, WINDOW).await;
    assert_figures(&dom, "browser DOM");
    assert_png(&png, WINDOW);
    keep_screenshot("status-page.png", &png);

    cohort.shutdown().await;
}

/// Screenshot and DOM of `url` in a window of `size`, off the async runtime.
async fn browse_async(url: String, size: (u32, u32)) -> (Vec<u8>, String) {
    let (png, dom, timings) = tokio::task::spawn_blocking(move || browse(&url, size))
        .await
        .expect("chromium task");
    eprintln!(
        "chromium: screenshot in {:.2?}, DOM dump in {:.2?}",
        timings[0], timings[1]
    );
    (png, dom)
}

/// Keeps a screenshot under `target/` and says where.
fn keep_screenshot(name: &str, png: &[u8]) {
    let kept = target_dir().join(name);
    std::fs::create_dir_all(target_dir()).expect("create target dir");
    std::fs::write(&kept, png).expect("keep screenshot");
    eprintln!("status page screenshot: {}", kept.display());
}

/// The `<svg>` of one chart (`rate`, `error_ratio`, `p99`) in a route card.
fn chart<'a>(card: &'a str, metric: &str) -> &'a str {
    let start = card
        .find(&format!("<svg class=\"chart\" data-metric=\"{metric}\""))
        .unwrap_or_else(|| panic!("no {metric} chart in:\n{card}"));
    let chart = &card[start..];
    &chart[..chart.find("</svg>").expect("chart end")]
}

#[tokio::test]
async fn the_charts_show_both_variants_and_mark_a_rollback() {
    let (cohort, [stable, canary, _search_stable, _search_canary]) = start().await;
    drive_traffic(&cohort, &stable, &canary).await;
    counted_routes(&cohort).await;

    // The kill switch: from now on the canary's users go to stable.
    let rollback = send(
        &client(),
        "POST",
        &cohort.admin_url("/routes/checkout/rollback"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(rollback.status, 200, "{}", rollback.text());
    let canary_key = key_in("canary", CHECKOUT_SALT, 10.0, "user");
    canary.set_status(200);
    for _ in 0..10 {
        let answer = get(&cohort.url("/cart"), &[("x-user-id", &canary_key)]).await;
        assert_eq!(answer.variant(), Some("stable"), "rolled back");
    }

    // `/routes/{name}/history`: the same requests as the figures, in 15-second slots,
    // and the rollback with the share it ended.
    let deadline = Instant::now() + PATIENCE;
    let history = loop {
        let history = admin_json(&cohort, "/routes/checkout/history").await;
        let total = |variant: &str| -> u64 {
            history[variant]
                .as_array()
                .expect("points")
                .iter()
                .filter_map(|p| p["requests"].as_u64())
                .sum()
        };
        if (total("stable"), total("canary")) == (40, 40) {
            break history;
        }
        assert!(
            Instant::now() < deadline,
            "history never counted: {history}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(history["route"], "checkout");
    assert_eq!(history["slot_seconds"], 15);
    let events = history["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{history}");
    assert_eq!(events[0]["kind"], "rollback");
    assert_eq!(events[0]["reason"], "manual");
    assert_eq!(events[0]["percent"], 10);
    assert_eq!(
        events[0]["at"],
        routes_json(&cohort).await["routes"][0]["rolled_back"]["at"],
        "the marker is where the rollback happened"
    );
    // The canary's 10 failures of 40, in whichever slots the requests fell (a slow
    // machine can spread them over two), and its 20 ms delay in its p99.
    let canary_points = history["canary"].as_array().expect("points");
    let errors: f64 = canary_points
        .iter()
        .filter_map(|p| Some(p["error_ratio"].as_f64()? * p["requests"].as_f64()?))
        .sum();
    assert!((errors - 10.0).abs() < 1e-6, "{history}");
    assert!(
        canary_points
            .iter()
            .any(|p| p["p99_seconds"].as_f64() > Some(0.02)),
        "{history}"
    );
    let idle = admin_json(&cohort, "/routes/search/history").await;
    assert!(
        idle["canary"]
            .as_array()
            .expect("points")
            .iter()
            .all(|p| p["error_ratio"].is_null() && p["p99_seconds"].is_null()),
        "no traffic is no error ratio and no p99: {idle}"
    );
    assert_eq!(
        get(&cohort.admin_url("/routes/nope/history"), &[])
            .await
            .status,
        404
    );
    let post = send(
        &client(),
        "POST",
        &cohort.admin_url("/routes/checkout/history"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(post.status, 405);

    // The page in a real browser: three charts per route, a line per variant in each,
    // the rollback marked on every one of them.
    let (png, dom) = browse_async(cohort.admin_url("/"), CHARTS_WINDOW).await;
    let checkout = card(&dom, "checkout");
    assert!(checkout.contains("<div class=\"charts\">"), "{checkout}");
    for metric in ["rate", "error_ratio", "p99"] {
        let svg = chart(checkout, metric);
        for variant in ["stable", "canary"] {
            assert!(
                svg.contains(&format!("<polyline class=\"series {variant}\" points=\"")),
                "{metric}: a {variant} line: {svg}"
            );
        }
        assert!(
            svg.contains("<g class=\"event rollback\"><title>rollback (manual) of 10 % at "),
            "{metric}: the rollback is marked: {svg}"
        );
        assert!(svg.contains(">rollback</text>"), "{metric}: {svg}");
        assert!(svg.contains(">15 min ago</text>") && svg.contains(">now</text>"));
    }
    // The idle route: rates at zero, and no error ratio or p99 to draw.
    let search = card(&dom, "search");
    assert!(chart(search, "rate").contains("<polyline class=\"series canary\""));
    for metric in ["error_ratio", "p99"] {
        let svg = chart(search, metric);
        assert!(
            svg.contains(">no traffic in the last 15 min</text>"),
            "{svg}"
        );
        assert!(!svg.contains("<polyline"), "{metric}: {svg}");
    }
    // The page without charts would still say everything the figures say.
    assert!(checkout.contains("<td class=\"num requests\">40</td>"));
    assert_png(&png, CHARTS_WINDOW);
    keep_screenshot("status-page-charts.png", &png);

    cohort.shutdown().await;
}

/// Asserts a PNG signature, an image header of `size` and more than a blank page's size.
fn assert_png(png: &[u8], size: (u32, u32)) {
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is not a PNG"
    );
    assert_eq!(&png[12..16], b"IHDR", "PNG starts with its header chunk");
    let width = u32::from_be_bytes(png[16..20].try_into().expect("4 bytes"));
    let height = u32::from_be_bytes(png[20..24].try_into().expect("4 bytes"));
    assert_eq!((width, height), size, "the window size");
    // A blank 1280×900 page compresses to a few KB; text, bars and tables take far more.
    assert!(
        png.len() > 20_000,
        "the screenshot is suspiciously small ({} bytes)",
        png.len()
    );
}

/// `target/` of this workspace (honours `CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Takes a screenshot of `url` and dumps its DOM, each in its own headless Chromium run
/// with a fresh profile. Returns the PNG, the DOM and how long each run took.
fn browse(url: &str, size: (u32, u32)) -> (Vec<u8>, String, [Duration; 2]) {
    let _one_at_a_time = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let shot = dir.join("status.png");
    let started = Instant::now();
    let window = format!("--window-size={},{}", size.0, size.1);
    chromium(
        &dir.join("profile-screenshot"),
        &[&format!("--screenshot={}", shot.display()), &window],
        url,
        &dir.join("screenshot.out"),
    );
    let shot_time = started.elapsed();
    assert!(
        shot.exists(),
        "chromium wrote no screenshot at {}",
        shot.display()
    );

    let started = Instant::now();
    let dom_path = dir.join("dom.html");
    chromium(
        &dir.join("profile-dom"),
        &["--dump-dom", &window],
        url,
        &dom_path,
    );
    let dom_time = started.elapsed();
    let dom = std::fs::read_to_string(&dom_path).expect("read DOM dump");
    let png = std::fs::read(&shot).expect("read screenshot");
    (png, dom, [shot_time, dom_time])
}

/// Runs headless Chromium on `url` with `extra` flags, its stdout into `stdout_path`;
/// kills its whole process group and fails if it runs past [`CHROMIUM_TIMEOUT`].
fn chromium(profile: &Path, extra: &[&str], url: &str, stdout_path: &Path) {
    use std::os::unix::process::CommandExt;

    let stdout = std::fs::File::create(stdout_path).expect("create stdout file");
    let stderr_path = stdout_path.with_extension("err");
    let stderr = std::fs::File::create(&stderr_path).expect("create stderr file");
    let mut command = Command::new("chromium");
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Its own process group, so a timeout can end the renderer and helpers too.
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "chromium is not installed: this test needs a real browser. Install the Debian \
             package `chromium` (as root: apt-get update && apt-get install -y chromium), \
             or run scripts/test, which installs it"
        ),
        Err(e) => panic!("could not start chromium: {e}"),
    };
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    let status = loop {
        match child.try_wait().expect("wait for chromium") {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let group = format!("-{}", child.id());
                let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chromium ran longer than {CHROMIUM_TIMEOUT:?} and was killed; stderr:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert!(
        status.success(),
        "chromium failed ({status}); stderr:\n{}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
}
