//! Tells when the config file may have changed. The file's directory is
//! watched rather than the file: an editor's rename-over and Kubernetes'
//! ConfigMap update (an atomic swap of the `..data` symlink, which changes the
//! inode behind the watched path) both show up as events in the directory. A
//! slow poll backs the watcher up on file systems without notifications.
//! Whether the content really changed is decided by the caller.

use std::path::Path;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{Duration, MissedTickBehavior};

/// Returns a receiver that yields a unit each time the file may have changed
/// (debounced), and the watcher, which must be kept alive.
pub fn watch(path: &Path, poll: Duration) -> (mpsc::Receiver<()>, Option<notify::RecommendedWatcher>) {
    let (tx, rx) = mpsc::channel(1);
    let (raw_tx, mut raw_rx) = mpsc::channel::<()>(16);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        // Full channel: a change is already pending, which is all we need.
        let _ = raw_tx.try_send(());
    })
    .and_then(|mut w| w.watch(dir, RecursiveMode::NonRecursive).map(|()| w));
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; polling only");
            None
        }
    };
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = raw_rx.recv() => {
                    if event.is_none() { return; }
                    // Editors and kubelet write in several steps; let them finish.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while raw_rx.try_recv().is_ok() {}
                }
                _ = ticker.tick() => {}
            }
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    (rx, watcher)
}
