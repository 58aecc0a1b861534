//! Debouncing for file-watch events, shared by the certificate reloader: one burst of
//! events (an editor's write-then-rename, a Kubernetes `..data` symlink swap) becomes
//! one re-read, with the same timing as config reloads.

use tokio::sync::mpsc;

use crate::reload::{DEBOUNCE_MAX, DEBOUNCE_QUIET};

/// Called after the first event of a burst: returns [`DEBOUNCE_QUIET`] after the last
/// event, and never later than [`DEBOUNCE_MAX`] after the first.
pub async fn debounce(events: &mut mpsc::UnboundedReceiver<()>) {
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
