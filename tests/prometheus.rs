//! The deploy kit against the real Prometheus server (Debian package `prometheus`):
//! Prometheus scrapes a live cohort's `/metrics` every second and evaluates the shipped
//! alert rules (their `for:` shortened to test size). A canary that starts answering 500
//! makes `CohortCanaryErrorRatioHigh` fire; every query of the Grafana dashboard parses
//! and returns data for a cohort under traffic. Prometheus listens on loopback only and
//! is killed when the test ends, pass or fail.
#[path = "support/deploy.rs"]
mod deploy;
#[path = "support/process.rs"]
mod process;
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy::root;
use serde_json::Value;
use support::prometheus::{encode, Prometheus};
use support::{FakeUpstream, Route, TestCohort};

/// Starts Prometheus scraping `target` and evaluating the shipped rules every second,
/// each `for:` set to `for_test`.
async fn prometheus_with_shipped_rules(target: std::net::SocketAddr, for_test: &str) -> Prometheus {
    let rules = std::fs::read_to_string(root().join("config/prometheus/cohort-alerts.yml"))
        .expect("read the rules");
    let rewritten: String = rules
        .lines()
        .map(|line| match line.trim_start().strip_prefix("for: ") {
            Some(_) => {
                let indent = &line[..line.len() - line.trim_start().len()];
                format!("{indent}for: {for_test}\n")
            }
            None => format!("{line}\n"),
        })
        .collect();
    assert_ne!(rules, rewritten, "the rules have no `for:` to shorten");
    Prometheus::start(&[target], Some(&rewritten)).await
}

/// Requests to the proxy, a new user each, about 50 per second, until dropped (or 120 s
/// have passed: the loop is bounded whatever happens to the test).
struct Traffic {
    stop: Arc<AtomicBool>,
}

impl Traffic {
    fn start(cohort: &TestCohort) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let url = cohort.url("/");
        let flag = stop.clone();
        tokio::spawn(async move {
            let client = support::client();
            let started = Instant::now();
            let mut user = 0u64;
            while !flag.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(120) {
                let key = format!("user-{user}");
                let request = http::Request::get(url.as_str())
                    .header("x-user-id", key)
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .expect("request");
                if let Ok(response) = client.request(request).await {
                    use http_body_util::BodyExt as _;
                    let _ = response.into_body().collect().await;
                }
                user += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Traffic { stop }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Waits (bounded) until `promql` returns at least one series.
async fn wait_for_data(prometheus: &Prometheus, promql: &str, bound: Duration) -> Vec<Value> {
    let deadline = Instant::now() + bound;
    loop {
        let result = prometheus.query(promql).await;
        if !result.is_empty() {
            return result;
        }
        assert!(
            Instant::now() < deadline,
            "no data for {promql} within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn firing<'a>(alerts: &'a [Value], name: &str) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
        .collect()
}

/// The dashboard's per-variant error ratio query.
fn dashboard_error_ratio(model: &Value) -> String {
    model["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["title"] == "Error ratio by variant")
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .find_map(|t| t["expr"].as_str().map(str::to_owned))
        .expect("an error ratio panel")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_fires_cohort_canary_error_ratio_high_in_prometheus() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(
        Route::new("web")
            .stable(&stable)
            .canary(&canary)
            .canary_percent(50),
    )
    .await;
    let prometheus = prometheus_with_shipped_rules(cohort.admin, "2s").await;
    let _traffic = Traffic::start(&cohort);

    // Healthy first: Prometheus sees the canary's traffic, and nothing fires.
    wait_for_data(
        &prometheus,
        "sum(rate(cohort_requests_total{route=\"web\",variant=\"canary\"}[1m])) > 0",
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let alerts = prometheus.alerts().await;
    assert!(
        firing(&alerts, "CohortCanaryErrorRatioHigh").is_empty(),
        "fired on a healthy canary: {alerts:?}"
    );
    // Every shipped rule evaluates without error against cohort's real series.
    let groups = prometheus.api("rules").await;
    for rule in groups["groups"][0]["rules"].as_array().expect("rules") {
        assert_eq!(rule["health"], "ok", "{rule}");
    }

    canary.set_status(500);
    let started = Instant::now();
    let alert = loop {
        let alerts = prometheus.alerts().await;
        if let Some(alert) = firing(&alerts, "CohortCanaryErrorRatioHigh").first() {
            break (*alert).clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "CohortCanaryErrorRatioHigh did not fire within 60 s; alerts: {alerts:?}\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(alert["labels"]["route"], "web", "{alert}");
    assert_eq!(alert["labels"]["severity"], "page", "{alert}");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("Canary of route web answers")),
        "{alert}"
    );
    // Stable kept answering 200: its side does not look like the canary's.
    let stable_errors = prometheus
        .query("sum(rate(cohort_requests_total{route=\"web\",variant=\"stable\",status=~\"5..\"}[1m])) > 0")
        .await;
    assert!(stable_errors.is_empty(), "{stable_errors:?}");
    cohort.shutdown().await;
}

/// Every PromQL expression of the Grafana dashboard, with the dashboard's variables
/// filled in as Grafana would (`$route`, and `$__rate_interval` as a 30 s window),
/// parses in Prometheus and returns data for a route under a rollout with traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_prometheus_scraping_cohort() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    // The canary a little slower, so the latency panels have two distinct lines.
    canary.set_delay(Duration::from_millis(5));
    // A rollout started an hour ago, now at its second step (50 %): rollout step and
    // state series exist, as they would during a real ramp.
    let start = cohort::rollout::format_rfc3339(cohort::guard::wall_now() - 3600 * 1000);
    let web =
        Route::new("web")
            .stable(&stable)
            .canary(&canary)
            .rollout(&start, &[10, 50, 100], "50m");
    let cohort = TestCohort::start(web).await;
    let prometheus = prometheus_with_shipped_rules(cohort.admin, "2s").await;
    let _traffic = Traffic::start(&cohort);

    // The route variable: Grafana's label_values(cohort_requests_total, route).
    wait_for_data(
        &prometheus,
        "sum by (variant) (rate(cohort_requests_total{route=\"web\"}[30s])) > 0",
        Duration::from_secs(30),
    )
    .await;
    let routes = prometheus
        .api(&format!(
            "label/route/values?{}={}",
            encode("match[]"),
            encode("cohort_requests_total")
        ))
        .await;
    assert_eq!(routes, serde_json::json!(["web"]));

    let model: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("config/grafana/dashboards/cohort.json"))
            .expect("read dashboard"),
    )
    .expect("dashboard JSON");
    let mut checked = 0;
    for panel in model["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            let promql = expr
                .replace("$__rate_interval", "30s")
                .replace("$__interval", "30s")
                .replace("$route", "web");
            assert!(!promql.contains('$'), "a variable left in {promql}");
            let what = format!("{} / {}", panel["title"], target["refId"]);
            let result = wait_for_data(&prometheus, &promql, Duration::from_secs(20)).await;
            // Per-variant queries show both variants: stable and canary side by side.
            if expr.contains("by (variant") {
                let variants: std::collections::BTreeSet<&str> = result
                    .iter()
                    .filter_map(|s| s["metric"]["variant"].as_str())
                    .collect();
                assert_eq!(
                    variants,
                    ["canary", "stable"].into_iter().collect(),
                    "{what}: {result:?}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} queries");

    // Spot checks on the values: the canary weight is the rollout's step, the canary is
    // the slower variant at p50, and the error ratio of each variant is 0, not absent.
    let weight = prometheus
        .query("max(cohort_canary_weight_ratio{route=\"web\"})")
        .await;
    assert_eq!(weight[0]["value"][1], "0.5", "{weight:?}");
    let step = prometheus
        .query("max(cohort_rollout_step{route=\"web\"})")
        .await;
    assert_eq!(step[0]["value"][1], "1", "{step:?}");
    let by_variant = |result: Vec<Value>| -> std::collections::BTreeMap<String, f64> {
        result
            .iter()
            .map(|s| {
                let variant = s["metric"]["variant"].as_str().unwrap_or("?").to_owned();
                let value = s["value"][1].as_str().and_then(|v| v.parse().ok());
                (variant, value.unwrap_or(f64::NAN))
            })
            .collect()
    };
    let p50 = by_variant(
        prometheus
            .query("histogram_quantile(0.5, sum by (variant, le) (rate(cohort_request_duration_seconds_bucket{route=\"web\"}[30s])))")
            .await,
    );
    assert!(p50["canary"] > p50["stable"], "{p50:?}");
    let errors = by_variant(
        prometheus
            .query(
                &dashboard_error_ratio(&model)
                    .replace("$__rate_interval", "30s")
                    .replace("$route", "web"),
            )
            .await,
    );
    assert_eq!(
        errors.values().copied().collect::<Vec<_>>(),
        [0.0, 0.0],
        "{errors:?}"
    );
    cohort.shutdown().await;
}
