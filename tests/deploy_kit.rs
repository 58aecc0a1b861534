//! The deploy kit users copy (DESIGN §13), checked with the tools it is written for:
//! `cohort demo-upstream` as a real process, the Prometheus alert rules with
//! `promtool check rules` and their `promtool test rules` unit tests, the Grafana
//! dashboard as a dashboard model, and the Kubernetes manifests with
//! `kubernetes-validate` and `cohort check`. The live Prometheus checks (an alert that
//! fires, every dashboard query answering) are in tests/prometheus.rs.
#[path = "support/deploy.rs"]
mod deploy;
#[path = "support/process.rs"]
mod process;
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use deploy::{promtool, root};
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

// ---------------------------------------------------------------------------------------
// Prometheus alert rules
// ---------------------------------------------------------------------------------------

const ALERTS: [&str; 4] = [
    "CohortCanaryErrorRatioHigh",
    "CohortCanaryLatencyHigh",
    "CohortRolledBack",
    "CohortConfigReloadFailed",
];

#[test]
fn alert_rules_pass_promtool_check_rules() {
    let dir = root().join("config/prometheus");
    let out = promtool(&dir, &["check", "rules", "cohort-alerts.yml"]);
    assert!(out.contains("SUCCESS: 4 rules found"), "{out}");
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(dir.join("cohort-alerts.yml")).expect("read rules"),
    )
    .expect("yaml");
    let names: BTreeSet<&str> = rules["groups"][0]["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert_eq!(names, ALERTS.into_iter().collect());
}

/// The unit tests next to the rules: each alert fires where it should and stays quiet
/// where it should not (promtool fails on any missing or extra alert).
#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let dir = root().join("config/prometheus");
    let out = promtool(&dir, &["test", "rules", "cohort-alerts.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let tests = std::fs::read_to_string(dir.join("cohort-alerts.test.yml")).expect("read");
    for alert in ALERTS {
        let fires = tests
            .split("alertname: ")
            .skip(1)
            .filter(|case| case.starts_with(alert))
            .collect::<Vec<_>>();
        assert!(
            fires.iter().any(|c| c.contains("exp_labels")),
            "{alert} has no case where it fires"
        );
        assert!(
            fires.iter().any(|c| c.contains("exp_alerts: []")),
            "{alert} has no case where it must not fire"
        );
    }
}

/// Every metric name the rules use is one cohort exports (DESIGN §5, §7): a typo in a
/// rule is otherwise an alert that never fires.
#[tokio::test]
async fn alert_rules_use_metrics_cohort_exports() {
    let rules = std::fs::read_to_string(root().join("config/prometheus/cohort-alerts.yml"))
        .expect("read rules");
    let exported = exported_metric_names().await;
    for name in metric_names_in(&rules) {
        assert!(
            exported.contains(&name),
            "the rules use {name}, which cohort does not export"
        );
    }
}

/// `cohort_…` identifiers in a text (PromQL, JSON), without histogram suffixes.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("cohort_") && w.len() > "cohort_".len())
        .map(str::to_owned)
        .collect()
}

/// Metric names on the `/metrics` page of a cohort with a rollout, a guard and traffic
/// (histogram series as `_bucket`, `_sum`, `_count`, and the histogram's own name, which
/// descriptions use).
async fn exported_metric_names() -> BTreeSet<String> {
    let stable = support::FakeUpstream::start("stable").await;
    let canary = support::FakeUpstream::start("canary").await;
    let extra =
        "[routes.rollout]\nstart = \"2026-01-01T00:00:00Z\"\nsteps = [50]\nstep_every = \"1h\"\n\
                 [routes.guard]\nwindow = \"30s\"\nmin_requests = 50\nmax_error_ratio = 0.5\n";
    let cohort = support::TestCohort::start(&support::route("web", &stable, &canary, extra)).await;
    for user in 0..20 {
        let user = format!("user-{user}");
        support::get(&cohort.url("/"), &[("x-user-id", &user)]).await;
    }
    let page = cohort.metrics().await;
    cohort.shutdown().await;
    let mut names: BTreeSet<String> = page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let histograms: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_suffix("_bucket").map(str::to_owned))
        .collect();
    names.extend(histograms);
    names
}

// ---------------------------------------------------------------------------------------
// The Grafana dashboard
// ---------------------------------------------------------------------------------------

fn dashboard() -> serde_json::Value {
    let path = root().join("config/grafana/dashboards/cohort.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("read dashboard"))
        .expect("the dashboard is JSON")
}

/// What Grafana needs to load the file as a dashboard: the model's top-level fields,
/// panels with unique ids, a grid position inside the 24 columns, a datasource and
/// targets with unique refIds, and the two template variables the queries use.
#[test]
fn dashboard_is_a_valid_grafana_model() {
    let model = dashboard();
    assert_eq!(model["uid"], "cohort");
    assert!(model["title"].as_str().is_some_and(|t| !t.is_empty()));
    let schema = model["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(model["time"]["from"].is_string() && model["time"]["to"].is_string());

    let variables = model["templating"]["list"].as_array().expect("templating");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    let route = variable("route");
    assert_eq!(route["type"], "query");
    assert_eq!(
        route["query"]["query"],
        "label_values(cohort_requests_total, route)"
    );
    assert_eq!(route["datasource"]["uid"], "${datasource}");

    let panels = model["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for panel in panels {
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} repeats");
        let title = panel["title"].as_str().expect("title");
        let grid = &panel["gridPos"];
        let (x, y, w, h) = (
            grid["x"].as_u64().expect("x"),
            grid["y"].as_u64().expect("y"),
            grid["w"].as_u64().expect("w"),
            grid["h"].as_u64().expect("h"),
        );
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: gridPos {grid}");
        // No two panels cover the same grid cell.
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            ["timeseries", "stat"].contains(&panel["type"].as_str().unwrap_or("")),
            "{title}: type {}",
            panel["type"]
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        let mut refs = BTreeSet::new();
        for target in targets {
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| !e.trim().is_empty()),
                "{title}: a target without expr"
            );
            assert!(refs.insert(target["refId"].as_str().expect("refId")));
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
}

/// §13's figures are all there: per-variant request rate, error ratio, p50 and p99,
/// canary weight and rollout step over time, rollbacks, reloads.
#[test]
fn dashboard_shows_the_figures_of_design_13() {
    let exprs: Vec<String> = dashboard_exprs();
    let has = |what: &str, pred: &dyn Fn(&str) -> bool| {
        assert!(exprs.iter().any(|e| pred(e)), "no panel shows {what}");
    };
    let per_variant = |e: &str| e.contains("by (variant");
    has("the request rate per variant", &|e| {
        per_variant(e) && e.contains("rate(cohort_requests_total") && !e.contains("5..")
    });
    has("the error ratio per variant", &|e| {
        per_variant(e) && e.contains("status=~\"5..\"") && e.contains('/')
    });
    has("p50 per variant", &|e| {
        per_variant(e) && e.starts_with("histogram_quantile(0.5,")
    });
    has("p99 per variant", &|e| {
        per_variant(e) && e.starts_with("histogram_quantile(0.99,")
    });
    has("the canary weight", &|e| {
        e.contains("cohort_canary_weight_ratio")
    });
    has("the rollout step", &|e| e.contains("cohort_rollout_step"));
    has("rollbacks", &|e| e.contains("cohort_rollbacks_total"));
    has("reloads", &|e| e.contains("cohort_config_reloads_total"));
}

/// Every query of the dashboard, as written in the JSON.
pub fn dashboard_exprs() -> Vec<String> {
    let model = dashboard();
    model["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn dashboard_uses_metrics_cohort_exports() {
    let exported = exported_metric_names().await;
    let text = std::fs::read_to_string(root().join("config/grafana/dashboards/cohort.json"))
        .expect("read");
    for name in metric_names_in(&text) {
        assert!(
            exported.contains(&name),
            "the dashboard uses {name}, which cohort does not export"
        );
    }
}
