//! Sick upstreams against a running `cohort` process: each fault gets the right answer
//! and the right metric, and leaves nothing behind: the process's open file descriptors
//! (`/proc/PID/fd`) and resident set are the same before and after. (Single failures —
//! a cut body, garbage, a stall before the headers — are in `failures.rs`; this file is
//! about faults that repeat.)

#[path = "support/process.rs"]
mod process;
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use process::{write_file, Cohort};
use support::{
    client, h2c_client, rss_of, send, Config, FakeUpstream, RawUpstream, Route, PATIENCE,
};

/// A cohort process serving `config`, its addresses, and the directory of its config.
struct Running {
    process: Cohort,
    proxy: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start(config: Config) -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write_file(dir.path(), "cohort.toml", &config.to_toml());
        let mut process = Cohort::spawn(&["run", "-c", &file]);
        let (proxy, admin) = process.wait_serving(PATIENCE * 2).await;
        Running {
            process,
            proxy,
            admin,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.proxy)
    }

    fn open_fds(&self) -> usize {
        let dir = format!("/proc/{}/fd", self.process.pid());
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {dir}: {e}"))
            .count()
    }

    fn rss(&self) -> u64 {
        rss_of(self.process.pid())
    }

    async fn series(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = support::get(&format!("http://{}/metrics", self.admin), &[])
            .await
            .text();
        support::prom::Exposition::parse(&text).sum(name, labels)
    }
}

/// An upstream that answers each request and then closes the connection without saying
/// so (no `Connection: close`): every pooled connection goes stale right after use.
#[tokio::test]
async fn an_upstream_closing_each_keep_alive_connection_costs_no_request() {
    let upstream = RawUpstream::start(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let cohort = Running::start(Config::from(
        Route::new("app").stable_urls(&[upstream.url()]),
    ))
    .await;
    let warm = client();
    let answer = send(&warm, "GET", &cohort.url(), &[], Bytes::new()).await;
    assert_eq!(answer.status, 200);
    let fds_before = cohort.open_fds();

    // The own HTTP/1.1 engine (an HTTP/1.1 client) and hyper's (HTTP/2 prior knowledge).
    for (engine, http) in [("own", client()), ("hyper", h2c_client())] {
        for i in 0..200 {
            let answer = send(&http, "GET", &cohort.url(), &[], Bytes::new()).await;
            assert_eq!(
                (answer.status, answer.text().as_str()),
                (200, "ok"),
                "{engine} engine, request {i}"
            );
        }
    }
    let errors = cohort
        .series("cohort_upstream_errors_total", &[("route", "app")])
        .await;
    assert_eq!(
        errors, 0.0,
        "a stale pooled connection is no upstream error"
    );
    drop(warm);
    assert!(
        upstream.connections() >= 400,
        "one upstream connection per request: {}",
        upstream.connections()
    );
    // Every stale connection was closed: the count settles where it started.
    let deadline = Instant::now() + PATIENCE;
    while cohort.open_fds() > fds_before + 2 {
        assert!(
            Instant::now() < deadline,
            "open fds {} -> {}",
            fds_before,
            cohort.open_fds()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One of two stable endpoints goes down and comes back every second for a minute: a
/// refused connection, also the one replacing a pooled connection the endpoint took
/// down with it, is retried on its sibling, so clients see 200s; what does fail (a
/// request the endpoint took and then dropped) is a 502 counted as such; open fds and
/// memory are flat afterwards.
#[tokio::test]
async fn an_endpoint_flapping_every_second_for_a_minute_beside_a_healthy_one() {
    let healthy = FakeUpstream::start("healthy").await;
    let flapping = FakeUpstream::start("flapping").await;
    let flapping_addr: SocketAddr = flapping
        .url()
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let cohort = Running::start(Config::from(
        Route::new("app").stable_urls(&[flapping.url(), healthy.url()]),
    ))
    .await;
    for _ in 0..20 {
        assert_eq!(support::get(&cohort.url(), &[]).await.status, 200);
    }
    let (fds_before, rss_before) = (cohort.open_fds(), cohort.rss());

    let done = Arc::new(AtomicBool::new(false));
    let flapper = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut up = Some(flapping);
            let mut flaps = 0;
            while !done.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                up = match up.take() {
                    Some(running) => {
                        running.stop_and_wait().await;
                        None
                    }
                    None => Some(FakeUpstream::restart_on("flapping", flapping_addr).await),
                };
                flaps += 1;
            }
            flaps
        })
    };
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let url = cohort.url();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (done, ok, failed, url) = (done.clone(), ok.clone(), failed.clone(), url.clone());
            tokio::spawn(async move {
                let http = client();
                while !done.load(Ordering::SeqCst) {
                    let answer = send(&http, "GET", &url, &[], Bytes::new()).await;
                    match answer.status {
                        200 => ok.fetch_add(1, Ordering::SeqCst),
                        502 => failed.fetch_add(1, Ordering::SeqCst),
                        other => panic!("unexpected {other}: {}", answer.text()),
                    };
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(
        std::env::var("FLAP_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    ))
    .await;
    done.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("client");
    }
    let flaps = flapper.await.expect("flapper");
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    let mut by_kind = Vec::new();
    for kind in ["connect", "timeout", "reset", "protocol"] {
        let labels = [("route", "app"), ("kind", kind)];
        let n = cohort.series("cohort_upstream_errors_total", &labels).await;
        by_kind.push(format!("{kind}={n}"));
    }
    eprintln!(
        "{flaps} flaps: {ok} answered 200, {failed} 502 ({})",
        by_kind.join(" ")
    );
    for line in cohort
        .process
        .stderr()
        .lines()
        .filter(|l| l.contains("failed"))
        .take(6)
    {
        eprintln!("{line}");
    }
    assert!(flaps >= 50, "the endpoint flapped {flaps} times");
    // The endpoint's connections die with it: a pooled one found closed is replaced,
    // and when the endpoint refuses the new connection, the sibling serves (one 502
    // per flap before that was fixed). A request the endpoint had taken when it went
    // away can still fail; that is rare.
    assert!(
        ok >= 1000 && failed * 10 < flaps,
        "{ok} ok, {failed} failed over {flaps} flaps"
    );
    let counted = cohort
        .series(
            "cohort_requests_total",
            &[("route", "app"), ("status", "502")],
        )
        .await;
    assert_eq!(counted, failed as f64, "every 502 a client saw is counted");

    // Afterwards: every request answered, nothing left open, memory flat.
    for _ in 0..20 {
        assert_eq!(support::get(&cohort.url(), &[]).await.status, 200);
    }
    let deadline = Instant::now() + PATIENCE;
    while cohort.open_fds() > fds_before + 4 {
        if Instant::now() >= deadline {
            // Where they go, when `ss` is there to say (diagnostics only).
            let ss = std::process::Command::new("ss").arg("-tanpH").output();
            let text = ss.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            let pid = format!("pid={},", cohort.process.pid());
            let mut by: std::collections::BTreeMap<String, usize> = Default::default();
            for line in text
                .iter()
                .flat_map(|t| t.lines())
                .filter(|l| l.contains(&pid))
            {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if let [state, _, _, _, peer, ..] = fields[..] {
                    *by.entry(format!("{state} {peer}")).or_default() += 1;
                }
            }
            panic!("open fds {} -> {}: {by:?}", fds_before, cohort.open_fds());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_after = cohort.rss();
    assert!(
        rss_after < rss_before + rss_before / 5 + 2 * 1024 * 1024,
        "RSS {rss_before} -> {rss_after}"
    );
}
