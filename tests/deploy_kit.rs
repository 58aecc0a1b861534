//! The deploy kit users copy (DESIGN §13), checked with the tools it is written for:
//! `cohort demo-upstream` as a real process.
#[path = "support/process.rs"]
mod process;
mod support;

use std::time::{Duration, Instant};

use process::{run_to_end, strip_ansi, Cohort};

// ---------------------------------------------------------------------------------------
// cohort demo-upstream
// ---------------------------------------------------------------------------------------

/// The address a `demo-upstream` logged in its start line.
async fn serving_address(upstream: &mut Cohort) -> std::net::SocketAddr {
    let text = upstream
        .wait_stderr("demo upstream is serving", Duration::from_secs(10))
        .await;
    let line = strip_ansi(
        text.lines()
            .find(|l| l.contains("demo upstream is serving"))
            .expect("the line"),
    );
    let value = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("address="))
        .unwrap_or_else(|| panic!("no address= in {line:?}"));
    value.parse().unwrap_or_else(|e| panic!("{value:?}: {e}"))
}

#[tokio::test]
async fn demo_upstream_answers_with_its_name_status_and_delay_and_stops_on_sigterm() {
    let mut upstream = Cohort::spawn(&[
        "demo-upstream",
        "--name",
        "canary",
        "--listen",
        "127.0.0.1:0",
        "--status",
        "500",
        "--delay",
        "150ms",
    ]);
    let address = serving_address(&mut upstream).await;
    assert!(
        address.ip().is_loopback() && address.port() != 0,
        "{address}"
    );
    let log = upstream.stderr();
    assert!(
        log.contains("status=500") && log.contains("delay=150ms"),
        "{log}"
    );

    let client = support::client();
    for path in ["/", "/checkout/cart?x=1"] {
        let started = Instant::now();
        let answer = support::send(
            &client,
            "GET",
            &format!("http://{address}{path}"),
            &[],
            bytes::Bytes::new(),
        )
        .await;
        let took = started.elapsed();
        assert_eq!(answer.status, 500);
        assert_eq!(answer.header("x-upstream"), Some("canary"));
        assert!(answer.text().contains("canary"), "{}", answer.text());
        assert!(
            took >= Duration::from_millis(150),
            "answered after {took:?}"
        );
        assert!(took < Duration::from_secs(3), "answered after {took:?}");
    }
    // A POST with a body is answered the same way (an upstream takes any request).
    let answer = support::send(
        &client,
        "POST",
        &format!("http://{address}/orders"),
        &[("content-type", "application/json")],
        bytes::Bytes::from_static(b"{\"n\": 1}"),
    )
    .await;
    assert_eq!(answer.status, 500);

    upstream.signal("TERM");
    let status = upstream.exit_within(Duration::from_secs(5)).await;
    assert!(status.success(), "exit {status}\n{}", upstream.stderr());
}

#[tokio::test]
async fn demo_upstream_defaults_to_200_without_delay() {
    let mut upstream = Cohort::spawn(&[
        "demo-upstream",
        "--name",
        "stable",
        "--listen",
        "127.0.0.1:0",
    ]);
    let address = serving_address(&mut upstream).await;
    let answer = support::get(&format!("http://{address}/"), &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-upstream"), Some("stable"));
    upstream.signal("INT");
    assert!(upstream.exit_within(Duration::from_secs(5)).await.success());
}

#[test]
fn demo_upstream_rejects_bad_arguments_as_usage_errors() {
    for args in [
        &["demo-upstream"][..],
        &["demo-upstream", "--name", "x", "--status", "42"],
        &["demo-upstream", "--name", "x", "--status", "abc"],
        &["demo-upstream", "--name", "x", "--delay", "soon"],
        &["demo-upstream", "--name", "x", "--listen", "localhost"],
        &[
            "demo-upstream",
            "--name",
            "bad\nname",
            "--listen",
            "127.0.0.1:0",
        ],
    ] {
        let out = run_to_end(args, Duration::from_secs(10));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn demo_upstream_on_a_taken_port_fails_with_the_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("addr").to_string();
    let out = run_to_end(
        &["demo-upstream", "--name", "x", "--listen", &address],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&address), "{stderr}");
}
