//! TLS termination for a listener: builds the acceptor from the listener's
//! `tls` section and keeps its certificates fresh. Certificate files are
//! watched (the same directory watch + poll as the config file, so mesh CA
//! and cert-manager rotations are seen); a rotated pair is served to new
//! connections, while a broken one is logged, counted, and the old one
//! keeps serving.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Duration;
use tokio_rustls::TlsAcceptor;

use crate::config::schema::ListenerConfig;
use crate::listener::Phase;
use crate::telemetry::metrics::Metrics;
use crate::tls::{self, CertStore};

/// ALPN for HTTP listeners over TCP.
pub const ALPN_TCP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// How often certificate files are re-read when no file event arrives.
const CERT_POLL: Duration = Duration::from_secs(5);

pub struct TlsSetup {
    pub store: Arc<CertStore>,
    pub config: Arc<rustls::ServerConfig>,
}

impl TlsSetup {
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }
}

/// Loads the listener's certificates and builds its server config.
pub fn prepare(config: &ListenerConfig, base: &Path, alpn: &[&[u8]]) -> Result<Option<TlsSetup>, String> {
    let Some(tls) = &config.tls else { return Ok(None) };
    let context = |e: String| format!("listener {}: tls: {e}", config.name);
    let store = Arc::new(CertStore::load(tls, base).map_err(context)?);
    let server = tls::server_config(tls, store.clone(), base, alpn).map_err(context)?;
    Ok(Some(TlsSetup {
        store,
        config: Arc::new(server),
    }))
}

/// Reloads `store` whenever one of its files may have changed, until `stop`.
pub fn watch_certificates(store: Arc<CertStore>, listener: &str, metrics: &Metrics, mut stop: watch::Receiver<Phase>) {
    let ok = metrics.tls_certificate_reloads.with_label_values(&[listener, "ok"]);
    let error = metrics.tls_certificate_reloads.with_label_values(&[listener, "error"]);
    let listener = listener.to_string();
    let mut changes: Vec<_> = store
        .files()
        .iter()
        .map(|f| crate::config::watch::watch(f, CERT_POLL))
        .collect();
    tokio::spawn(async move {
        loop {
            let any_change = futures_util::future::select_all(changes.iter_mut().map(|c| Box::pin(c.changed())));
            tokio::select! {
                _ = crate::listener::reached(&mut stop, Phase::HandedOver) => return,
                (change, _, _) = any_change => if change.is_none() { return },
            }
            // Reading and parsing the files is blocking work: off the workers.
            let reloading = store.clone();
            let (changed, errors) = tokio::task::spawn_blocking(move || reloading.reload())
                .await
                .unwrap_or_else(|e| (0, vec![format!("certificate reload failed: {e}")]));
            if changed > 0 {
                ok.inc();
            }
            if !errors.is_empty() {
                error.inc();
                for e in errors {
                    tracing::error!(%listener, error = %e, "certificate reload failed; the previous certificate keeps serving");
                }
            }
        }
    });
}
