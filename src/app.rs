//! A running weft: shared state, admin server, listeners, and the reload and
//! shutdown procedures (drain delay, then inbound before outbound listeners).
//! `main` and the integration tests both drive this.
//!
//! Reload reads the config file only when asked (SIGHUP) or when the file
//! watcher says it may have changed, and applies it only when its bytes
//! differ from the last ones tried: a file is applied, or refused and
//! reported, once per content.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Mutex, Notify};
use tokio::time::Duration;

use crate::config::schema::TrafficDirection;
use crate::config::{self, Digest, Loaded};
use crate::listener::{Health, ListenerSet};
use crate::proxy::Shared;
use crate::snapshot::Snapshot;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::lines::{self, LineWriter};
use crate::telemetry::metrics::Metrics;

/// Lines (access log, mismatch log) that may wait for the line writer; a
/// burst beyond this drops access log lines (counted) rather than waiting.
const LINES_QUEUED: usize = 8192;
/// How long shutdown waits for queued log lines to be written.
const LINES_FLUSH_TIMEOUT: tokio::time::Duration = tokio::time::Duration::from_secs(2);
/// How long a start or reload waits for new discoveries' first look.
const DISCOVERY_WARM_UP: tokio::time::Duration = tokio::time::Duration::from_secs(5);

pub struct App {
    pub shared: Arc<Shared>,
    listeners: Mutex<ListenerSet>,
    admin_addr: SocketAddr,
    stop_admin: watch::Sender<bool>,
    /// Listeners whose task died; `/ready` answers 503 while there are any.
    health: Arc<Health>,
    /// What the last load or reload read: the file's digest, or why it could
    /// not be read. The same outcome again is neither applied nor reported.
    last_read: Mutex<Result<Digest, std::io::ErrorKind>>,
    /// Times the config file has been read for a reload.
    reads: AtomicU64,
    /// The file watcher's count of checks, once it runs.
    watch_checks: parking_lot::Mutex<Option<Arc<AtomicU64>>>,
    /// The one writer of log lines (started here, flushed on shutdown).
    lines: LineWriter,
    /// Ends a shutdown's drain delay early.
    delay_cut: Notify,
}

impl App {
    /// Binds the admin address and every listener of `loaded`.
    pub async fn start(loaded: Loaded) -> Result<Arc<Self>, String> {
        let metrics = Metrics::new().map_err(|e| format!("metrics: {e}"))?;
        let (lines, writer) = lines::channel(LINES_QUEUED);
        writer
            .start()
            .map_err(|e| format!("cannot start the log line writer: {e}"))?;
        let digest = loaded.digest;
        let snapshot = Snapshot::build(loaded, &metrics, &lines, None).map_err(|e| e.to_string())?;
        snapshot.start();
        snapshot.warm(DISCOVERY_WARM_UP).await;
        let admin_address = snapshot.loaded.config.admin.address;
        let listeners_config = snapshot.loaded.config.listeners.clone();
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            tracing: crate::telemetry::trace::Tracing::new(metrics.trace.clone()),
            access_log: AccessLog::new(lines.clone(), metrics.access_log_dropped.clone()),
            metrics,
            ready: true.into(),
            requests: 0.into(),
        });
        shared
            .tracing
            .configure(shared.snapshot.load().loaded.config.tracing.as_ref());
        let admin = crate::admin::bind(admin_address)
            .await
            .map_err(|e| format!("admin: cannot bind {admin_address}: {e}"))?;
        let admin_addr = admin.local_addr().unwrap_or(admin_address);
        let (stop_admin, admin_stopped) = watch::channel(false);
        let health = Arc::new(Health::default());
        let mut listeners = ListenerSet::new(health.clone());
        let base = shared.snapshot.load().loaded.base_dir.clone();
        listeners.reconcile(&listeners_config, &base, &shared).await?;
        tokio::spawn(crate::admin::serve(
            admin,
            shared.clone(),
            health.clone(),
            admin_stopped,
        ));
        crate::memory::spawn_trimmer(&shared);
        if listeners_config.is_empty() {
            tracing::warn!(file = %shared.snapshot.load().loaded.path.display(), "the config has no listeners: nothing but the admin address will listen");
        }
        tracing::info!(admin = %admin_addr, "weft started");
        Ok(Arc::new(Self {
            shared,
            listeners: Mutex::new(listeners),
            admin_addr,
            stop_admin,
            health,
            last_read: Mutex::new(Ok(digest)),
            reads: AtomicU64::new(0),
            watch_checks: parking_lot::Mutex::new(None),
            lines,
            delay_cut: Notify::new(),
        }))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub async fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.lock().await.local_addr(name)
    }

    pub fn config_path(&self) -> PathBuf {
        self.shared.snapshot.load().loaded.path.clone()
    }

    /// Reloads from the config file if its bytes changed since the last try
    /// (or always, with `force`). On any error the running config stays.
    pub async fn reload(&self, force: bool) -> Result<bool, String> {
        let path = self.config_path();
        let mut last = self.last_read.lock().await;
        self.reads.fetch_add(1, Ordering::Relaxed);
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || config::read(&path))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        };
        let outcome = read.as_deref().map(Digest::of).map_err(std::io::Error::kind);
        if !force && *last == outcome {
            return Ok(false);
        }
        *last = outcome;
        let result = match read {
            Ok(bytes) => self.apply(&path, bytes).await,
            Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
        };
        let label = if result.is_ok() { "ok" } else { "error" };
        self.shared.metrics.config_reloads.with_label_values(&[label]).inc();
        match &result {
            Ok(()) => tracing::info!(file = %path.display(), "config reloaded"),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "config reload refused; the previous config keeps serving")
            }
        }
        result.map(|()| true)
    }

    async fn apply(&self, path: &Path, bytes: Vec<u8>) -> Result<(), String> {
        let previous = self.shared.snapshot.load_full();
        let snapshot = {
            let (path, previous) = (path.to_path_buf(), previous.clone());
            let (metrics, lines) = (self.shared.metrics.clone(), self.lines.clone());
            // Parsing and compiling (regexes, certificates, endpoints files)
            // run off the worker threads: a pathological file delays only
            // its own reload, never traffic.
            tokio::task::spawn_blocking(move || build_reload(&path, &bytes, &metrics, &lines, &previous))
                .await
                .map_err(|e| format!("config reload failed: {e}"))??
        };
        let snapshot = Arc::new(snapshot);
        snapshot.start();
        snapshot.warm(DISCOVERY_WARM_UP).await;
        let wanted = snapshot.loaded.config.listeners.clone();
        self.shared.snapshot.store(snapshot);
        let mut listeners = self.listeners.lock().await;
        let base = self.shared.snapshot.load().loaded.base_dir.clone();
        if let Err(e) = listeners.reconcile(&wanted, &base, &self.shared).await {
            self.shared.snapshot.store(previous);
            return Err(e);
        }
        let current = self.shared.snapshot.load();
        for gone in previous.clusters.iter().filter(|c| current.cluster(&c.name).is_none()) {
            self.shared.metrics.discovery.forget_cluster(&gone.name);
        }
        self.shared
            .tracing
            .configure(self.shared.snapshot.load().loaded.config.tracing.as_ref());
        Ok(())
    }

    /// Reloads whenever the config file may have changed (see
    /// `config::watch`; `poll` is its metadata poll). The watcher lives as
    /// long as the returned task.
    pub fn spawn_watcher(self: &Arc<Self>, poll: tokio::time::Duration) -> tokio::task::JoinHandle<()> {
        let app = self.clone();
        let mut watch = config::watch::watch(&app.config_path(), poll);
        *self.watch_checks.lock() = Some(watch.checks());
        tokio::spawn(async move {
            while watch.changed().await.is_some() {
                let _ = app.reload(false).await;
            }
        })
    }

    /// Times the config file has been read for a reload.
    pub fn config_reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Times the file watcher has looked at the config file's metadata (0
    /// before it runs): tells how long it has watched an idle file.
    pub fn config_checks(&self) -> u64 {
        self.watch_checks
            .lock()
            .as_ref()
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Ends the drain delay of a shutdown at once (or of the next one).
    pub fn end_drain_delay(&self) {
        self.delay_cut.notify_one();
    }

    /// Listeners whose task died (see `/ready`).
    pub fn listeners_down(&self) -> Vec<String> {
        self.health.down()
    }

    /// Ends a listener's task at once, as a panic in it would; for tests of
    /// what follows (an error log, `/ready` 503, a reload restarting it).
    #[doc(hidden)]
    pub async fn kill_listener(&self, name: &str) -> bool {
        self.listeners.lock().await.kill(name)
    }

    /// Turns `/ready` to 503 and drains at once (SIGINT).
    pub async fn shutdown(&self) {
        self.shutdown_after(Duration::ZERO).await;
    }

    /// Turns `/ready` to 503 at once, keeps every listener accepting for
    /// `delay` (while the pod is taken out of its Services' endpoints; ended
    /// early by [`App::end_drain_delay`]), then drains: inbound listeners
    /// (all but `traffic_direction: outbound`) stop accepting and their
    /// requests finish, then the outbound ones do, so connections the app
    /// opens while it shuts down are proxied to the end. The drain takes at
    /// most the drain timeout; then log lines still queued are written.
    pub async fn shutdown_after(&self, delay: Duration) {
        self.shared.ready.store(false, Ordering::Relaxed);
        if !delay.is_zero() {
            tracing::info!(delay = %humantime::format_duration(delay), "not ready; accepting until the drain delay is over");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.delay_cut.notified() => tracing::info!("drain delay ended early"),
            }
        }
        let timeout = self.shared.snapshot.load().loaded.config.drain_timeout;
        tracing::info!(timeout = %humantime::format_duration(timeout), "draining");
        let mut listeners = self.listeners.lock().await;
        let drain = async {
            listeners
                .drain_where(|l| l.traffic_direction != TrafficDirection::Outbound)
                .await;
            listeners.drain().await;
        };
        if tokio::time::timeout(timeout, drain).await.is_err() {
            tracing::warn!("drain timeout reached; closing remaining connections");
        }
        if tokio::time::timeout(LINES_FLUSH_TIMEOUT, self.lines.flush())
            .await
            .is_err()
        {
            tracing::warn!("log lines still queued at exit are lost");
        }
        let _ = self.stop_admin.send(true);
    }
}

/// Parses `bytes` and builds the snapshot a reload would swap in (blocking).
/// An empty or comment-only file is refused: it is usually a truncated
/// write (a ConfigMap gone wrong), and applying it would close every port.
fn build_reload(
    path: &Path,
    bytes: &[u8],
    metrics: &Metrics,
    lines: &LineWriter,
    previous: &Snapshot,
) -> Result<Snapshot, String> {
    if config::decode(path, bytes).is_ok_and(config::files::is_blank) {
        return Err(format!(
            "{}: the file is empty or only comments; refusing it (it would close every listener)",
            path.display()
        ));
    }
    let loaded = config::parse_bytes(path, bytes).map_err(|e| e.to_string())?;
    if loaded.config.admin != previous.loaded.config.admin {
        tracing::warn!("admin.address changes take effect on restart");
    }
    Snapshot::build(loaded, metrics, lines, Some(previous)).map_err(|e| e.to_string())
}
