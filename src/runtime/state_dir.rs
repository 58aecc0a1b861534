//! What a replica remembers in `state_dir` across restarts: one small JSON file per
//! rollout identity (route name + salt, + `start` under a rollout) saying that its
//! canary was rolled back, or when that rollback was resumed. Written atomically (temp
//! file + rename), so a crash never leaves half a record.
//!
//! A record that cannot be read or parsed counts as a rollback: a damaged file must
//! never send users back to a canary that failed.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::config::Route;
use crate::rollout::{format_rfc3339, Reason, UnixMillis};

/// The last word on one identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// The canary is at 0 % until a resume.
    RolledBack { reason: Reason, at: UnixMillis },
    /// The rollback was resumed at `at`: a rollout's ramp restarts at its first step
    /// from then (DESIGN §7).
    Resumed { at: UnixMillis },
}

/// `state_dir` is not usable: cohort refuses to start (and `check` fails) with this.
#[derive(Debug, thiserror::Error)]
#[error("state_dir: {} {reason}", dir.display())]
pub struct StateDirError {
    pub dir: PathBuf,
    pub reason: String,
}

/// Checks that `dir` is a directory cohort can write records into, creating it (and
/// its parents) when missing, as `mkdir -p` would. A probe file is written and removed,
/// so a read-only mount (`EROFS`, a ConfigMap) is found at start, not at the first
/// rollback. A directory without write permission bits is refused even for root, who
/// could write there anyway: the mode says the operator did not mean it.
pub fn check(dir: &Path) -> Result<(), StateDirError> {
    let error = |reason: String| StateDirError {
        dir: dir.to_path_buf(),
        reason,
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .map_err(|e| error(format!("does not exist and cannot be created: {e}")))?;
    }
    let metadata = std::fs::metadata(dir).map_err(|e| error(format!("cannot be read: {e}")))?;
    if !metadata.is_dir() {
        return Err(error("is not a directory".to_owned()));
    }
    if metadata.permissions().readonly() {
        return Err(error(
            "has no write permission; rollbacks could not be remembered".to_owned(),
        ));
    }
    let probe = dir.join(format!(".cohort-probe-{}", std::process::id()));
    crate::runtime::writeback::write_new_atomically(&probe, "probe\n").map_err(|e| {
        error(format!(
            "is not writable; rollbacks could not be remembered: {e}"
        ))
    })?;
    std::fs::remove_file(&probe).map_err(|e| {
        error(format!(
            "cannot remove the probe file {}: {e}",
            probe.display()
        ))
    })?;
    Ok(())
}

/// `rollback-<hash>.json`: one file per identity, named by a hash so any salt works.
/// The name stays the same for a resumed record, which replaces the rollback.
pub(crate) fn file_for(dir: &Path, identity: &str) -> PathBuf {
    dir.join(format!(
        "rollback-{:016x}.json",
        xxhash_rust::xxh3::xxh3_64(identity.as_bytes())
    ))
}

/// The record at `path`; `None` when there is none.
pub(crate) fn read(path: &Path) -> Option<Stored> {
    let damaged = |why: String| {
        tracing::warn!(file = %path.display(), error = %why, "unreadable state record; treating the canary as rolled back");
        Some(Stored::RolledBack {
            reason: Reason::Manual,
            at: 0,
        })
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return damaged(e.to_string()),
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(value) => Some(parse(&value)),
        Err(e) => damaged(e.to_string()),
    }
}

/// A record's meaning. Records written before resumes were remembered carry no
/// `state`: they are rollbacks.
fn parse(value: &Value) -> Stored {
    if value["state"] == "resumed" {
        if let Some(at) = value["resumed_at_ms"].as_i64() {
            return Stored::Resumed { at };
        }
    }
    Stored::RolledBack {
        reason: value["reason"]
            .as_str()
            .and_then(Reason::parse)
            .unwrap_or(Reason::Manual),
        at: value["at_ms"].as_i64().unwrap_or(0),
    }
}

/// Writes `stored` for `route` atomically at `path`.
pub(crate) fn write(path: &Path, route: &Route, stored: Stored) -> Result<(), String> {
    let start = route.rollout.as_ref().map(|r| r.start_text.clone());
    let record = match stored {
        Stored::RolledBack { reason, at } => json!({
            "state": "rolled_back",
            "route": route.name,
            "salt": route.salt,
            "start": start,
            "reason": reason.as_str(),
            "at": format_rfc3339(at),
            "at_ms": at,
        }),
        Stored::Resumed { at } => json!({
            "state": "resumed",
            "route": route.name,
            "salt": route.salt,
            "start": start,
            "resumed_at": format_rfc3339(at),
            "resumed_at_ms": at,
        }),
    };
    crate::runtime::writeback::write_new_atomically(path, &format!("{record}\n"))
        .map_err(|e| e.to_string())
}

/// Removes the record at `path`; a missing one is fine.
pub(crate) fn clear(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_without_a_state_are_rollbacks_and_resumes_need_their_time() {
        let old = json!({"route": "shop", "reason": "p99", "at_ms": 5});
        assert_eq!(
            parse(&old),
            Stored::RolledBack {
                reason: Reason::P99,
                at: 5
            }
        );
        let resumed = json!({"state": "resumed", "resumed_at_ms": 9});
        assert_eq!(parse(&resumed), Stored::Resumed { at: 9 });
        // A "resumed" record without its time is damaged: stay rolled back.
        let broken = json!({"state": "resumed"});
        assert!(matches!(parse(&broken), Stored::RolledBack { .. }));
    }

    #[test]
    fn a_damaged_record_counts_as_a_rollback() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rollback-x.json");
        assert_eq!(read(&path), None);
        std::fs::write(&path, "{not json").expect("write");
        assert!(matches!(read(&path), Some(Stored::RolledBack { .. })));
    }

    #[test]
    fn state_dir_must_be_a_writable_directory() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().expect("tempdir");
        let missing = root.path().join("a/b");
        check(&missing).expect("a missing directory is created");
        assert!(missing.is_dir());
        assert_eq!(
            std::fs::read_dir(&missing).expect("dir").count(),
            0,
            "no probe left"
        );

        let file = root.path().join("file");
        std::fs::write(&file, "x").expect("write");
        let err = check(&file).expect_err("a file is not a directory");
        assert!(err.to_string().contains("is not a directory"), "{err}");

        let locked = root.path().join("locked");
        std::fs::create_dir(&locked).expect("mkdir");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        let err = check(&locked).expect_err("no write permission");
        assert!(err.to_string().contains("no write permission"), "{err}");
    }
}
