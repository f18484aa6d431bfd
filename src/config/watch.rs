//! Tells when the config file may have changed. Directories are watched
//! rather than the file: an editor's rename-over and Kubernetes' ConfigMap
//! update (an atomic swap of the `..data` symlink, which changes the inode
//! behind the watched path) both show up as events in the file's directory.
//! The directory of the file the path currently resolves to is watched as
//! well, so an in-place write behind a symlink is seen too; it is re-aimed
//! after every change. A slow poll backs the watcher up on file systems
//! without notifications. Whether the content really changed is for the
//! caller to decide.

use std::path::{Path, PathBuf};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{Duration, MissedTickBehavior};

fn parent(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Watches the directory of `path` and of the file it resolves to.
struct DirWatch {
    watcher: Option<RecommendedWatcher>,
    resolved_dir: Option<PathBuf>,
}

impl DirWatch {
    fn new(path: &Path, raw_tx: mpsc::Sender<()>) -> Self {
        let dir = parent(path);
        let watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
            // A full channel means a change is already pending: all we need.
            let _ = raw_tx.try_send(());
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; polling only");
                None
            }
        };
        let mut this = Self {
            watcher,
            resolved_dir: None,
        };
        this.follow(path);
        this
    }

    /// Re-aims the second watch at the directory `path` now resolves to.
    fn follow(&mut self, path: &Path) {
        let Some(watcher) = self.watcher.as_mut() else { return };
        let resolved = std::fs::canonicalize(path).ok().map(|p| parent(&p));
        let resolved = resolved.filter(|r| std::fs::canonicalize(parent(path)).ok().as_ref() != Some(r));
        if resolved == self.resolved_dir {
            return;
        }
        if let Some(old) = self.resolved_dir.take() {
            let _ = watcher.unwatch(&old);
        }
        if let Some(new) = resolved {
            if watcher.watch(&new, RecursiveMode::NonRecursive).is_ok() {
                self.resolved_dir = Some(new);
            }
        }
    }
}

/// Returns a receiver that yields each time the file may have changed
/// (debounced). Watching stops when the receiver is dropped.
pub fn watch(path: &Path, poll: Duration) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    let (raw_tx, mut raw_rx) = mpsc::channel::<()>(16);
    let path = path.to_path_buf();
    tokio::spawn(async move {
        let mut dirs = DirWatch::new(&path, raw_tx);
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
            dirs.follow(&path);
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    rx
}
