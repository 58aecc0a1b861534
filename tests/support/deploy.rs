//! Checks shared by the deploy kit's tests (docker-compose, Kubernetes, Prometheus): a
//! config written for a container, checked by the real binary on this machine.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{run_to_end, strip_ansi, Cohort};

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cohort check` on `toml`, a config written for a container, after replacing
/// each container path in `paths` (e.g. `/var/lib/cohort`) by a host path, so the
/// state_dir and token file checks run against real files. Returns the check's stdout;
/// fails the test with cohort's own message when it rejects the config.
pub fn cohort_check_container_config(toml: &str, paths: &[(&str, &Path)]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = toml.to_owned();
    for (container, host) in paths {
        let host = host.to_str().expect("utf-8 temp path");
        assert!(
            text.contains(container),
            "the config names no {container}:\n{toml}"
        );
        text = text.replace(container, host);
    }
    let path = dir.path().join("cohort.toml");
    std::fs::write(&path, &text).expect("write config");
    let out = run_to_end(
        &["check", "-c", path.to_str().expect("utf-8 temp path")],
        Duration::from_secs(20),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cohort check rejected the config ({}):\n{}{}\n--- config as checked ---\n{text}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `promtool ARGS` in `dir` and fails the test with its output unless it succeeds.
/// A missing promtool fails the test: scripts/test installs it (Debian `prometheus`).
pub fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install the Debian package `prometheus` \
                 (scripts/test does)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

/// The address a `cohort demo-upstream` process logged in its start line.
pub async fn demo_upstream_address(upstream: &mut Cohort) -> std::net::SocketAddr {
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
