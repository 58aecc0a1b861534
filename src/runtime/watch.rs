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

/// Starts watching; `None` when the config file cannot be watched (the platform has no
/// watcher, or its directory is gone), after a warning saying how to reload instead.
pub(crate) fn spawn(control: Arc<Control>) -> Option<tokio::task::JoinHandle<()>> {
    let (tx, events) = mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if !matches!(event.kind, notify::EventKind::Access(_)) {
                let _ = tx.send(());
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; use SIGHUP or the admin API to reload");
            return None;
        }
    };
    let config_dir = dir_of(control.path());
    if let Err(e) = watcher.watch(&config_dir, RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %config_dir.display(), error = %e, "cannot watch the config directory; use SIGHUP or the admin API to reload");
        return None;
    }
    let mut dirs = Dirs {
        watcher,
        config_dir,
        named: BTreeSet::new(),
    };
    dirs.follow(&control);
    Some(tokio::spawn(run(dirs, events, control)))
}

async fn run(mut dirs: Dirs, mut events: mpsc::UnboundedReceiver<()>, control: Arc<Control>) {
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

/// The watched directories: the config file's, always, and those of the files the
/// config in force names.
struct Dirs {
    watcher: RecommendedWatcher,
    config_dir: PathBuf,
    named: BTreeSet<PathBuf>,
}

impl Dirs {
    /// Watches the directories of the files the config in force names, and no others.
    fn follow(&mut self, control: &Control) {
        let snapshot = control.snapshot();
        let wanted: BTreeSet<PathBuf> = snapshot
            .config
            .named_files()
            .into_iter()
            .map(dir_of)
            .filter(|dir| *dir != self.config_dir)
            .collect();
        for dir in self.named.difference(&wanted) {
            let _ = self.watcher.unwatch(dir);
        }
        for dir in wanted.difference(&self.named) {
            if let Err(e) = self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a directory of files the config names; changes in it apply on SIGHUP or the next reload");
            }
        }
        self.named = wanted;
    }
}

fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
