//! docker-compose.yml cannot run here (no Docker engine), so it is checked statically:
//! it parses, every file it references exists, the cohort config it mounts is valid,
//! and `promtool check config` accepts the Prometheus config it mounts.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml"))
        .expect("read docker-compose.yml");
    serde_yaml::from_str(&text).expect("docker-compose.yml is valid YAML")
}

/// `./config/x.toml:/etc/...:ro` → host path of every bind mount of a service.
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

#[test]
fn compose_file_has_cohort_two_upstreams_and_prometheus() {
    let doc = compose();
    let services = doc["services"].as_mapping().expect("services mapping");
    for name in ["cohort", "stable", "canary", "prometheus"] {
        assert!(services.contains_key(name), "service {name} is missing");
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
fn mounted_cohort_config_is_valid_and_its_upstreams_are_services() {
    let doc = compose();
    let cohort = &doc["services"]["cohort"];
    let (config_path, _) = mounted_files(cohort)
        .into_iter()
        .find(|(host, _)| host.extension().is_some_and(|e| e == "toml"))
        .expect("cohort mounts a .toml config");
    let config = cohort::config::load(&config_path).unwrap_or_else(|e| panic!("{e}"));
    let services = doc["services"].as_mapping().expect("services");
    for route in &config.routes {
        for endpoint in route.stable.endpoints.iter().chain(&route.canary.endpoints) {
            assert!(
                services.contains_key(endpoint.host.as_str()),
                "endpoint {endpoint} names no compose service"
            );
        }
    }
    assert!(
        !config.admin.address.ip().is_loopback(),
        "Prometheus in another container must reach the admin listener"
    );
}

#[test]
fn prometheus_config_passes_promtool_and_scrapes_cohort() {
    let doc = compose();
    let (prom_config, _) = mounted_files(&doc["services"]["prometheus"])
        .into_iter()
        .find(|(host, _)| host.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .expect("prometheus mounts a yml config");
    let output = Command::new("promtool")
        .args(["check", "config"])
        .arg(&prom_config)
        .output()
        .expect("promtool is missing: install the Debian package `prometheus` (scripts/test does)");
    assert!(
        output.status.success(),
        "promtool rejected {}:\n{}{}",
        prom_config.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let prom: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&prom_config).expect("read")).expect("yaml");
    let targets: Vec<&str> = prom["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_sequence()
        .expect("targets")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(targets, ["cohort:9901"]);
}

#[test]
fn shipped_example_config_passes_validation() {
    let path = root().join("config/cohort.toml");
    cohort::config::load(Path::new(&path)).unwrap_or_else(|e| panic!("{e}"));
}
