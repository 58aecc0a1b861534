//! The example config shipped in `config/cohort.toml` works when a user uncomments its
//! `state_dir` line: the line must stay at the top level, before the first `[table]`,
//! or TOML files the key under that table and validation rejects it as unknown.
#[path = "support/process.rs"]
mod process;

use std::path::{Path, PathBuf};
use std::time::Duration;

fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/cohort.toml")
}

/// The shipped config with its one `# state_dir = …` line uncommented, pointing at `dir`.
fn with_state_dir(dir: &Path) -> String {
    let text = std::fs::read_to_string(shipped()).expect("read config/cohort.toml");
    let commented = text
        .lines()
        .filter(|line| line.starts_with("# state_dir = "))
        .count();
    assert_eq!(
        commented, 1,
        "config/cohort.toml should hold one `# state_dir = …` line"
    );
    let value = toml::Value::String(dir.display().to_string());
    text.lines()
        .map(|line| {
            if line.starts_with("# state_dir = ") {
                format!("state_dir = {value}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn uncommented_state_dir_is_a_top_level_key() {
    let state = tempfile::tempdir().expect("temp dir");
    // Parsed as if it were the shipped file, so its relative paths resolve as shipped.
    let config = cohort::config::parse(&with_state_dir(state.path()), &shipped())
        .unwrap_or_else(|e| panic!("config/cohort.toml with state_dir uncommented:\n{e}"));
    assert_eq!(config.state_dir.as_deref(), Some(state.path()));
}

#[test]
fn cohort_check_accepts_the_shipped_config_with_state_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("create the state dir");
    let copy = dir.path().join("cohort.toml");
    std::fs::write(&copy, with_state_dir(&state)).expect("write the copy");
    let out = process::run_to_end(
        &["check", "-c", copy.to_str().expect("utf-8 temp path")],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "cohort check failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
