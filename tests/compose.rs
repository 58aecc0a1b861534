//! docker-compose.yml and the Dockerfile cannot run here (no Docker engine), so they are
//! checked statically and with the real tools they call: the file parses, every file it
//! references exists, each service that runs the cohort image runs a real subcommand
//! (the cohort config passes `cohort check`, the demo upstreams answer as they would in
//! their containers), `promtool check config` accepts the Prometheus config and its
//! rules, and Grafana's provisioning points at the Prometheus service and the dashboard.
#[path = "support/deploy.rs"]
mod deploy;
#[path = "support/process.rs"]
mod process;
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use deploy::{cohort_check_container_config, promtool, root};
use process::{run_to_end, Cohort};
use serde_yaml::Value;

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml"))
        .expect("read docker-compose.yml");
    let mut doc: Value = serde_yaml::from_str(&text).expect("docker-compose.yml is valid YAML");
    // Compose applies `<<:` merge keys (the shared cohort image); so do we.
    doc.apply_merge().expect("merge keys resolve");
    doc
}

fn service<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let service = &doc["services"][name];
    assert!(service.is_mapping(), "service {name} is missing");
    service
}

/// `./config/x.toml:/etc/...:ro` → (host path, container path) of every bind mount of a
/// service; named volumes are left out.
fn mounted_files(service: &Value) -> Vec<(PathBuf, String)> {
    service["volumes"]
        .as_sequence()
        .map(|vols| {
            vols.iter()
                .filter_map(Value::as_str)
                .filter(|v| v.starts_with('.') || v.starts_with('/'))
                .map(|v| {
                    let mut parts = v.splitn(3, ':');
                    let host = parts.next().unwrap_or_default();
                    let target = parts.next().unwrap_or_default().to_owned();
                    (root().join(host), target)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The host file behind `container_path` in `service`: the bind mount of that path or
/// of a directory above it.
fn host_path(service: &Value, container_path: &str) -> PathBuf {
    mounted_files(service)
        .into_iter()
        .filter_map(|(host, target)| {
            let rest = container_path.strip_prefix(target.trim_end_matches('/'))?;
            match rest.strip_prefix('/') {
                _ if rest.is_empty() => Some(host),
                Some(below) => Some(host.join(below)),
                None => None,
            }
        })
        .max_by_key(|p| p.as_os_str().len())
        .unwrap_or_else(|| panic!("nothing is mounted at {container_path}"))
}

fn command(service: &Value) -> Vec<String> {
    service["command"]
        .as_sequence()
        .expect("command is a list")
        .iter()
        .map(|a| a.as_str().expect("string argument").to_owned())
        .collect()
}

/// The value after `flag` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> &'a str {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{args:?} has no {flag}"));
    args.get(at + 1)
        .unwrap_or_else(|| panic!("{flag} without a value in {args:?}"))
}

fn cohort_config_of(doc: &Value) -> (PathBuf, cohort::config::Loaded) {
    let cohort = service(doc, "cohort");
    let args = command(cohort);
    let path = host_path(cohort, flag(&args, "-c"));
    let config = cohort::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    (path, config)
}

#[test]
fn compose_file_has_cohort_two_upstreams_prometheus_and_grafana() {
    let doc = compose();
    for name in ["cohort", "stable", "canary", "prometheus", "grafana"] {
        service(&doc, name);
    }
}

#[test]
fn every_referenced_file_exists() {
    let doc = compose();
    for (name, service) in doc["services"].as_mapping().expect("services") {
        if let Some(build) = service.get("build") {
            let context = root().join(build["context"].as_str().unwrap_or("."));
            let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            assert!(
                context.join(dockerfile).is_file(),
                "{name:?}: {dockerfile} missing"
            );
        }
        for (host, _) in mounted_files(service) {
            assert!(
                host.exists(),
                "{name:?} mounts {} which does not exist",
                host.display()
            );
        }
    }
}

#[test]
fn cohort_service_config_passes_cohort_check_and_its_upstreams_are_services() {
    let doc = compose();
    let (config_path, config) = cohort_config_of(&doc);
    // The state_dir is the named volume cohort-state; a temp dir stands in for it.
    let state = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(&config_path).expect("read config");
    let checked = cohort_check_container_config(&text, &[("/var/lib/cohort", state.path())]);
    assert!(checked.contains("route \"default\""), "{checked}");

    let cohort = service(&doc, "cohort");
    assert!(
        cohort["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .any(|v| v.as_str() == Some("cohort-state:/var/lib/cohort")),
        "state_dir must be on the named volume, or rollbacks die with the container"
    );
    for route in &config.routes {
        for endpoint in route.stable.endpoints.iter().chain(&route.canary.endpoints) {
            let upstream = service(&doc, endpoint.host.as_str());
            let listen = flag(&command(upstream), "--listen").to_owned();
            assert_eq!(
                listen
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok()),
                Some(endpoint.port),
                "endpoint {endpoint}: service {} listens on {listen}",
                endpoint.host
            );
        }
    }
    assert!(
        !config.admin.address.ip().is_loopback(),
        "Prometheus in another container must reach the admin listener"
    );
}

/// Every service built from the Dockerfile runs a subcommand the binary has, with
/// arguments it accepts.
#[test]
fn cohort_image_services_run_real_subcommands() {
    let doc = compose();
    let mut seen = Vec::new();
    for (name, service) in doc["services"].as_mapping().expect("services") {
        if service.get("build").is_none() {
            continue;
        }
        let args = command(service);
        let sub = args.first().expect("a subcommand").clone();
        let help = run_to_end(&[&sub, "--help"], Duration::from_secs(10));
        assert!(
            help.status.success(),
            "{name:?}: `cohort {sub}` is not a subcommand: {}",
            String::from_utf8_lossy(&help.stderr)
        );
        seen.push(sub);
    }
    seen.sort();
    assert_eq!(seen, ["demo-upstream", "demo-upstream", "run"]);
}

/// stable and canary run exactly their compose command (only the port is made
/// ephemeral): each answers with its own name, and stops on SIGTERM with status 0.
#[tokio::test]
async fn upstream_services_answer_with_their_names() {
    let doc = compose();
    for name in ["stable", "canary"] {
        let mut args = command(service(&doc, name));
        let at = args.iter().position(|a| a == "--listen").expect("--listen");
        args[at + 1] = "127.0.0.1:0".to_owned();
        assert_eq!(flag(&args, "--name"), name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut upstream = Cohort::spawn(&args);
        let address = deploy::demo_upstream_address(&mut upstream).await;
        let answer = support::get(&format!("http://{address}/"), &[]).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-upstream"), Some(name));
        assert!(answer.text().contains(name), "{}", answer.text());
        upstream.signal("TERM");
        let status = upstream.exit_within(Duration::from_secs(5)).await;
        assert!(status.success(), "{name}: {status}");
    }
}

#[test]
fn prometheus_config_passes_promtool_loads_the_rules_and_scrapes_cohort() {
    let doc = compose();
    let prometheus = service(&doc, "prometheus");
    let args = command(prometheus);
    let config_flag = args
        .iter()
        .find_map(|a| a.strip_prefix("--config.file="))
        .expect("--config.file");
    let prom_config = host_path(prometheus, config_flag);
    let checked = promtool(
        prom_config.parent().expect("dir"),
        &["check", "config", prom_config.to_str().expect("utf-8")],
    );
    // Rule files are checked with the config: the alert rules are loaded.
    assert!(checked.contains("5 rules found"), "{checked}");

    let prom: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&prom_config).expect("read")).expect("yaml");
    let rule_files: Vec<&str> = prom["rule_files"]
        .as_sequence()
        .expect("rule_files")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(rule_files, ["cohort-alerts.yml"]);
    let targets: Vec<&str> = prom["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_sequence()
        .expect("targets")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let (_, config) = cohort_config_of(&doc);
    assert_eq!(
        targets,
        [format!("cohort:{}", config.admin.address.port())],
        "Prometheus scrapes cohort's admin listener"
    );
}

#[test]
fn grafana_is_provisioned_with_the_prometheus_service_and_the_dashboard() {
    let doc = compose();
    let grafana = service(&doc, "grafana");
    let datasources = host_path(grafana, "/etc/grafana/provisioning/datasources");
    let datasource: Value = serde_yaml::from_str(
        &std::fs::read_to_string(datasources.join("prometheus.yml")).expect("read datasource"),
    )
    .expect("yaml");
    let url = datasource["datasources"][0]["url"].as_str().expect("url");
    assert_eq!(datasource["datasources"][0]["type"], "prometheus");
    let prometheus_port = service(&doc, "prometheus")["ports"][0]
        .as_str()
        .and_then(|p| p.rsplit(':').next())
        .expect("prometheus port");
    assert_eq!(url, format!("http://prometheus:{prometheus_port}"));

    let providers = host_path(grafana, "/etc/grafana/provisioning/dashboards");
    let provider: Value = serde_yaml::from_str(
        &std::fs::read_to_string(providers.join("cohort.yml")).expect("read provider"),
    )
    .expect("yaml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    let dashboard = host_path(grafana, path).join("cohort.json");
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dashboard).expect("read dashboard"))
            .expect("dashboard JSON");
    assert_eq!(model["uid"], "cohort");
    let home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .expect("home dashboard");
    assert!(host_path(grafana, home).is_file(), "{home}");
}

/// The image runs as a numeric non-root user, its default command reads the config
/// where compose and Kubernetes mount it, and its healthcheck is a real cohort call
/// against the admin port the shipped configs use.
#[test]
fn dockerfile_runs_as_non_root_with_a_healthcheck_cohort_can_answer() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    // Continuation lines joined, comments dropped: one instruction per line.
    let joined = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let instruction = |name: &str| -> Vec<String> {
        joined
            .lines()
            .filter_map(|l| l.strip_prefix(name).map(|rest| rest.trim().to_owned()))
            .collect()
    };
    let user = instruction("USER ");
    assert_eq!(user.len(), 1, "one USER instruction: {user:?}");
    let uid: u32 = user[0]
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("USER {} is not numeric", user[0]));
    assert_ne!(uid, 0, "the image must not run as root");

    let health = instruction("HEALTHCHECK ");
    assert_eq!(health.len(), 1, "{health:?}");
    let exec: Vec<String> = serde_json::from_str(
        health[0]
            .split_once("CMD ")
            .map(|(_, cmd)| cmd.trim())
            .expect("HEALTHCHECK ... CMD [...]"),
    )
    .expect("exec form");
    assert_eq!(exec[0], "/usr/local/bin/cohort");
    assert_eq!(exec[1], "status", "{exec:?}");
    let admin = flag(&exec, "--admin");
    let (_, config) = cohort_config_of(&compose());
    assert_eq!(
        admin,
        format!("http://127.0.0.1:{}", config.admin.address.port())
    );
    let cmd = instruction("CMD ");
    assert_eq!(cmd, [r#"["run", "-c", "/etc/cohort/cohort.toml"]"#]);
}

/// The healthcheck's own command against a running cohort: exit 0 while it serves,
/// non-zero when nothing answers.
#[tokio::test]
async fn the_healthcheck_command_tells_a_serving_cohort_from_none() {
    let stable = support::FakeUpstream::start("stable").await;
    let canary = support::FakeUpstream::start("canary").await;
    let cohort =
        support::TestCohort::start(support::Route::new("web").stable(&stable).canary(&canary))
            .await;
    let admin = format!("http://{}", cohort.admin);
    let started = Instant::now();
    // The child calls this process's admin listener: wait for it off the runtime.
    let status = |admin: String| {
        tokio::task::spawn_blocking(move || {
            run_to_end(&["status", "--admin", &admin], Duration::from_secs(15))
        })
    };
    let healthy = status(admin.clone()).await.expect("join");
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    cohort.shutdown().await;
    let down = status(admin).await.expect("join");
    assert!(!down.status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn shipped_example_config_passes_validation() {
    let path = root().join("config/cohort.toml");
    cohort::config::load(Path::new(&path)).unwrap_or_else(|e| panic!("{e}"));
}
