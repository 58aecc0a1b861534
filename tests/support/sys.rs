//! What a test waits on and reads of the machine: [`PATIENCE`], [`eventually`], the
//! resident set of a process.

use std::time::{Duration, Instant};

/// How long a helper waits for something that should happen at once on loopback.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// Polls `cond` every millisecond until it holds; panics with `what` after [`PATIENCE`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The resident set of process `pid` in bytes (`VmRSS` in `/proc/PID/status`).
pub fn rss_of(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {path}"));
    kib * 1024
}
