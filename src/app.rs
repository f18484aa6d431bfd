//! A running weft: shared state, admin server, listeners, and the reload and
//! drain procedures. `main` and the integration tests both drive this.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Mutex};

use crate::config::{self, Loaded};
use crate::listener::ListenerSet;
use crate::proxy::Shared;
use crate::snapshot::Snapshot;
use crate::telemetry::metrics::Metrics;

pub struct App {
    pub shared: Arc<Shared>,
    listeners: Mutex<ListenerSet>,
    admin_addr: SocketAddr,
    stop_admin: watch::Sender<bool>,
    /// The file text last tried, so an unchanged file is not reloaded again.
    last_text: Mutex<Option<String>>,
}

impl App {
    /// Binds the admin address and every listener of `loaded`.
    pub async fn start(loaded: Loaded) -> Result<Arc<Self>, String> {
        let metrics = Metrics::new().map_err(|e| format!("metrics: {e}"))?;
        let text = std::fs::read_to_string(&loaded.path).ok();
        let snapshot = Snapshot::build(loaded, &metrics, None).map_err(|e| e.to_string())?;
        snapshot.start();
        let admin_address = snapshot.loaded.config.admin.address;
        let listeners_config = snapshot.loaded.config.listeners.clone();
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            tracing: crate::telemetry::trace::Tracing::new(metrics.trace.clone()),
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
        let mut listeners = ListenerSet::default();
        let base = shared.snapshot.load().loaded.base_dir.clone();
        listeners.reconcile(&listeners_config, &base, &shared).await?;
        tokio::spawn(crate::admin::serve(admin, shared.clone(), admin_stopped));
        crate::memory::spawn_trimmer(&shared);
        tracing::info!(admin = %admin_addr, "weft started");
        Ok(Arc::new(Self {
            shared,
            listeners: Mutex::new(listeners),
            admin_addr,
            stop_admin,
            last_text: Mutex::new(text),
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

    /// Reloads from the config file if its text changed since the last try
    /// (or always, with `force`). On any error the running config stays.
    pub async fn reload(&self, force: bool) -> Result<bool, String> {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: cannot read: {e}", path.display()));
        let mut last = self.last_text.lock().await;
        if let Ok(text) = &text {
            if !force && last.as_deref() == Some(text.as_str()) {
                return Ok(false);
            }
            *last = Some(text.clone());
        }
        let result = match text {
            Ok(text) => self.apply(&path, &text).await,
            Err(e) => Err(e),
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

    async fn apply(&self, path: &Path, text: &str) -> Result<(), String> {
        let loaded = config::parse(path, text).map_err(|e| e.to_string())?;
        let previous = self.shared.snapshot.load_full();
        if loaded.config.admin != previous.loaded.config.admin {
            tracing::warn!("admin.address changes take effect on restart");
        }
        let snapshot = Snapshot::build(loaded, &self.shared.metrics, Some(&previous)).map_err(|e| e.to_string())?;
        let snapshot = Arc::new(snapshot);
        snapshot.start();
        let wanted = snapshot.loaded.config.listeners.clone();
        self.shared.snapshot.store(snapshot);
        let mut listeners = self.listeners.lock().await;
        let base = self.shared.snapshot.load().loaded.base_dir.clone();
        if let Err(e) = listeners.reconcile(&wanted, &base, &self.shared).await {
            self.shared.snapshot.store(previous);
            return Err(e);
        }
        self.shared
            .tracing
            .configure(self.shared.snapshot.load().loaded.config.tracing.as_ref());
        Ok(())
    }

    /// Reloads whenever the config file's directory changes (or every `poll`).
    /// The watcher lives as long as the returned task.
    pub fn spawn_watcher(self: &Arc<Self>, poll: tokio::time::Duration) -> tokio::task::JoinHandle<()> {
        let app = self.clone();
        tokio::spawn(async move {
            let mut changes = config::watch::watch(&app.config_path(), poll);
            while changes.recv().await.is_some() {
                let _ = app.reload(false).await;
            }
        })
    }

    /// Turns `/ready` to 503, stops accepting, and waits up to the drain
    /// timeout for in-flight requests to finish.
    pub async fn shutdown(&self) {
        self.shared.ready.store(false, Ordering::Relaxed);
        let timeout = self.shared.snapshot.load().loaded.config.drain_timeout;
        tracing::info!(timeout = %humantime::format_duration(timeout), "draining");
        let mut listeners = self.listeners.lock().await;
        if tokio::time::timeout(timeout, listeners.drain()).await.is_err() {
            tracing::warn!("drain timeout reached; closing remaining connections");
        }
        let _ = self.stop_admin.send(true);
    }
}
