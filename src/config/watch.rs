//! Tells when a file (the config file, a certificate) has changed, without
//! reading it. Directories are watched rather than the file: an editor's
//! rename-over and Kubernetes' ConfigMap update (an atomic swap of the
//! `..data` symlink, which changes the inode behind the watched path) both
//! show up as events in the file's directory. The directory of the file the
//! path currently resolves to is watched as well, so an in-place write behind
//! a symlink is seen too; it is re-aimed after every check. A slow poll backs
//! the watcher up on file systems without notifications.
//!
//! Guarantees: a change is judged from the metadata of the file the path
//! resolves to (device, inode, length, modification and change times), looked
//! at on each event and each poll tick; opening or reading the file (weft's
//! own reads included) is not an event, so a file nobody writes is never
//! signalled, however often it is read or polled. An event that says the file
//! itself was written is signalled even when its metadata looks the same (a
//! same-length rewrite within the file system's timestamp granularity); the
//! caller then compares the content. A change is signalled once the file
//! has held still for a moment, so a writer caught midway is not read. The
//! first check, at once, always signals (the caller's last read may predate
//! the watch). Watching stops when the [`FileWatch`] is dropped.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use parking_lot::Mutex;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::{Duration, MissedTickBehavior};

/// Editors and kubelet write in several steps; a check waits this long
/// after the first event so that one change is one signal.
const SETTLE: Duration = Duration::from_millis(100);

/// Event hints, ordered: a content hint outranks a metadata one.
const METADATA: u8 = 1;
const CONTENT: u8 = 2;

fn parent(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// What tells one version of a file from another without reading it.
#[derive(Debug, PartialEq, Eq)]
struct Fingerprint {
    device: u64,
    inode: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Fingerprint {
    /// Of the file `path` resolves to; `None` while it cannot be found.
    async fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = tokio::fs::metadata(path).await.ok()?;
        Some(Self {
            device: m.dev(),
            inode: m.ino(),
            len: m.len(),
            modified: (m.mtime(), m.mtime_nsec()),
            changed: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// What the notify callback has seen since the last check.
#[derive(Default)]
struct Seen {
    /// The strongest hint since the last check (0: none).
    hint: AtomicU8,
    /// File names that mean "the file itself": the watched path's and its target's.
    names: Mutex<Vec<OsString>>,
}

impl Seen {
    /// How much `event` says about the file; 0 for opens and reads.
    fn hint(&self, event: &notify::Event) -> u8 {
        let written = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => return 0,
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => true,
            _ => false,
        };
        let names = self.names.lock();
        let about_the_file = event
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| names.iter().any(|name| name == n)));
        if written && about_the_file {
            CONTENT
        } else {
            METADATA
        }
    }
}

/// Watches the directory of `path` and of the file it resolves to.
struct DirWatch {
    watcher: Option<RecommendedWatcher>,
    resolved_dir: Option<PathBuf>,
}

impl DirWatch {
    fn new(path: &Path, seen: Arc<Seen>, wake: mpsc::Sender<()>) -> Self {
        let dir = parent(path);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let hint = event.map_or(METADATA, |e| seen.hint(&e));
            if hint > 0 {
                seen.hint.fetch_max(hint, Ordering::Relaxed);
                // A full channel means a check is already pending: all we need.
                let _ = wake.try_send(());
            }
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the directory; polling only");
                None
            }
        };
        Self {
            watcher,
            resolved_dir: None,
        }
    }

    /// Re-aims the second watch at the directory `path` now resolves to, and
    /// returns the resolved file's name.
    async fn follow(&mut self, path: &Path) -> Option<OsString> {
        let resolved = tokio::fs::canonicalize(path).await.ok();
        let name = resolved.as_ref().and_then(|r| r.file_name()).map(OsString::from);
        let watcher = self.watcher.as_mut()?;
        let own_dir = tokio::fs::canonicalize(parent(path)).await.ok();
        let resolved_dir = resolved.map(|r| parent(&r)).filter(|r| own_dir.as_ref() != Some(r));
        if resolved_dir != self.resolved_dir {
            if let Some(old) = self.resolved_dir.take() {
                let _ = watcher.unwatch(&old);
            }
            if let Some(new) = resolved_dir {
                if watcher.watch(&new, RecursiveMode::NonRecursive).is_ok() {
                    self.resolved_dir = Some(new);
                }
            }
        }
        name
    }
}

/// A watched file: [`FileWatch::changed`] resolves each time it may have changed.
pub struct FileWatch {
    changes: mpsc::Receiver<()>,
    checks: Arc<AtomicU64>,
}

impl FileWatch {
    /// Resolves when the file may have changed; `None` if watching ended.
    pub async fn changed(&mut self) -> Option<()> {
        self.changes.recv().await
    }

    /// How many times the file's metadata has been looked at (each poll tick
    /// and each settled burst of events): how long the watch has been idle.
    pub fn checks(&self) -> Arc<AtomicU64> {
        self.checks.clone()
    }
}

/// Starts watching `path`, polling its metadata every `poll` besides events.
pub fn watch(path: &Path, poll: Duration) -> FileWatch {
    let (tx, changes) = mpsc::channel(1);
    let checks = Arc::new(AtomicU64::new(0));
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    tokio::spawn(run(path, poll, tx, checks.clone()));
    FileWatch { changes, checks }
}

async fn run(path: PathBuf, poll: Duration, tx: mpsc::Sender<()>, checks: Arc<AtomicU64>) {
    let seen = Arc::new(Seen::default());
    let (wake_tx, mut wake) = mpsc::channel::<()>(1);
    // `wake_tx` lives on here too, so `wake` never ends even without a watcher.
    let mut dirs = DirWatch::new(&path, seen.clone(), wake_tx.clone());
    aim(&mut dirs, &path, &seen).await;
    // Unknown at first: the first check (the first tick, at once) always
    // signals, so a change between the caller's own read and the start of
    // this watch is not missed.
    let mut last: Option<Option<Fingerprint>> = None;
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = tx.closed() => return,
            _ = wake.recv() => tokio::time::sleep(SETTLE).await,
            _ = ticker.tick() => {}
        }
        let _ = wake.try_recv();
        let written = seen.hint.swap(0, Ordering::Relaxed) == CONTENT;
        checks.fetch_add(1, Ordering::Relaxed);
        aim(&mut dirs, &path, &seen).await;
        let mut now = Fingerprint::of(&path).await;
        let changed = written || last.as_ref() != Some(&now);
        if changed {
            now = held_still(&path, now).await;
        }
        last = Some(now);
        if changed {
            if let Err(TrySendError::Closed(())) = tx.try_send(()) {
                return;
            }
        }
    }
}

/// Waits until the file's metadata stays the same for one [`SETTLE`] (at
/// most ten), so that a writer caught midway (a truncated or half-written
/// file) is not read; returns the metadata then.
async fn held_still(path: &Path, mut seen: Option<Fingerprint>) -> Option<Fingerprint> {
    for _ in 0..10 {
        tokio::time::sleep(SETTLE).await;
        let again = Fingerprint::of(path).await;
        if again == seen {
            break;
        }
        seen = again;
    }
    seen
}

/// Follows `path` to its current target and names both as "the file".
async fn aim(dirs: &mut DirWatch, path: &Path, seen: &Seen) {
    let resolved = dirs.follow(path).await;
    let own = path.file_name().map(OsString::from);
    *seen.names.lock() = own.into_iter().chain(resolved).collect();
}
