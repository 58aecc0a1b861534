//! The one file watcher: the config file and every file it names (certificates, keys,
//! CAs, the admin token). It watches their directories, so editor renames and
//! Kubernetes ConfigMap and Secret `..data` symlink swaps are seen, and turns each burst
//! of events into one reload ([`Control::reload`]), which re-reads all of them and
//! swaps one snapshot, or rejects the lot and keeps the one in force. After every new
//! snapshot (a reload from any trigger) it follows the files the config now names.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::runtime::reload::{Control, Trigger};

/// File events are applied this long after the last event of a burst...
const DEBOUNCE_QUIET: Duration = Duration::from_millis(100);
/// ...and never later than this after its first.
const DEBOUNCE_MAX: Duration = Duration::from_millis(500);

/// Starts watching; `None` when the platform has no watcher, after a warning saying how
/// to reload instead. A directory that cannot be watched (yet) is tried again every
/// [`RETRY_EVERY`] (see [`Dirs::follow`]).
pub(crate) fn spawn(control: Arc<Control>) -> Option<tokio::task::JoinHandle<()>> {
    let (tx, events) = mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if !matches!(event.kind, notify::EventKind::Access(_)) {
                let _ = tx.send(());
            }
        }
    });
    let watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; use SIGHUP or the admin API to reload");
            return None;
        }
    };
    let mut dirs = Dirs {
        watcher,
        config_dir: dir_of(control.path()),
        named: BTreeSet::new(),
        missing: BTreeSet::new(),
    };
    dirs.follow(&control);
    Some(tokio::spawn(run(dirs, events, control)))
}

async fn run(mut dirs: Dirs, mut events: mpsc::UnboundedReceiver<()>, control: Arc<Control>) {
    let mut retry = tokio::time::interval(RETRY_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => {
                if event.is_none() {
                    return;
                }
                debounce(&mut events).await;
                // Errors are logged and counted inside; the snapshot in force keeps serving.
                let _ = control.reload(Trigger::File).await;
            }
            () = control.applied() => {}
            _ = retry.tick(), if !dirs.missing.is_empty() => {
                if dirs.follow(&control) {
                    // Whatever changed there while it was not watched applies now.
                    let _ = control.reload(Trigger::File).await;
                }
                continue;
            }
        }
        dirs.follow(&control);
    }
}

/// Called after the first event of a burst: returns [`DEBOUNCE_QUIET`] after the last
/// event, and never later than [`DEBOUNCE_MAX`] after the first.
async fn debounce(events: &mut mpsc::UnboundedReceiver<()>) {
    let first = tokio::time::Instant::now();
    let latest = first + DEBOUNCE_MAX;
    let mut quiet_until = first + DEBOUNCE_QUIET;
    loop {
        tokio::select! {
            more = events.recv() => match more {
                Some(()) => quiet_until = tokio::time::Instant::now() + DEBOUNCE_QUIET,
                None => return,
            },
            _ = tokio::time::sleep_until(quiet_until.min(latest)) => return,
        }
    }
}

/// How often a directory that could not be watched is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// The watched directories: the config file's, always, and those of the files the
/// config in force names.
struct Dirs {
    watcher: RecommendedWatcher,
    config_dir: PathBuf,
    named: BTreeSet<PathBuf>,
    /// Wanted directories without a watch now (it failed: the directory is gone, or
    /// the system's watch limit is reached), tried again every [`RETRY_EVERY`].
    missing: BTreeSet<PathBuf>,
}

impl Dirs {
    /// Watches the config file's directory and those of the files the config in force
    /// names, and no others. Every wanted directory is (re)watched each time: a
    /// directory deleted and made again has lost its watch with the old one, and
    /// watching a watched directory again is a no-op. Returns whether a directory that
    /// had no watch has one again.
    fn follow(&mut self, control: &Control) -> bool {
        let snapshot = control.snapshot();
        let named: BTreeSet<PathBuf> = snapshot
            .config
            .named_files()
            .into_iter()
            .map(dir_of)
            .filter(|dir| *dir != self.config_dir)
            .collect();
        for dir in self.named.difference(&named) {
            let _ = self.watcher.unwatch(dir);
        }
        self.named = named;
        let mut recovered = false;
        let wanted = std::iter::once(self.config_dir.clone()).chain(self.named.iter().cloned());
        let mut missing = BTreeSet::new();
        for dir in wanted {
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) if self.missing.contains(&dir) => {
                    tracing::info!(dir = %dir.display(), "watching the directory again; its changes apply at once");
                    recovered = true;
                }
                Ok(()) => {}
                Err(e) => {
                    if !self.missing.contains(&dir) {
                        let what = if dir == self.config_dir {
                            "cannot watch the config directory"
                        } else {
                            "cannot watch a directory of files the config names"
                        };
                        tracing::warn!(dir = %dir.display(), error = %e, "{what}; trying again every {}s (SIGHUP or the admin API reload meanwhile)", RETRY_EVERY.as_secs());
                    }
                    missing.insert(dir);
                }
            }
        }
        self.missing = missing;
        recovered
    }
}

fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
