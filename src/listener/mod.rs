//! The set of running listeners, reconciled against each new config: new
//! listeners are bound, removed or changed ones stop accepting and drain,
//! unchanged ones keep running untouched (their connections never notice).

pub mod h3;
pub mod http;
mod preface;
pub mod tcp;
pub mod tls;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::schema::{ListenerConfig, ListenerProtocol};
use crate::proxy::Shared;

/// A bound listening socket with its TLS set-up.
pub enum Bound {
    Tcp(TcpListener, Option<tls::TlsSetup>),
    Quic(quinn::Endpoint, tls::TlsSetup),
}

impl Bound {
    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        match self {
            Bound::Tcp(s, _) => s.local_addr(),
            Bound::Quic(e, _) => e.local_addr(),
        }
    }

    fn tls(&self) -> Option<&tls::TlsSetup> {
        match self {
            Bound::Tcp(_, tls) => tls.as_ref(),
            Bound::Quic(_, tls) => Some(tls),
        }
    }
}

/// Prepares TLS (so a bad certificate refuses the config) and binds.
async fn bind(config: &ListenerConfig, base: &Path) -> Result<Bound, String> {
    if config.protocol == ListenerProtocol::Http3 {
        let tls = tls::prepare(config, base, &[b"h3"])?
            .ok_or_else(|| format!("listener {}: http3 needs tls", config.name))?;
        let endpoint = h3::bind(config, &tls)?;
        return Ok(Bound::Quic(endpoint, tls));
    }
    let tls = tls::prepare(config, base, tls::ALPN_TCP)?;
    let socket = TcpListener::bind(config.address)
        .await
        .map_err(|e| format!("listener {}: cannot bind {}: {e}", config.name, config.address))?;
    Ok(Bound::Tcp(socket, tls))
}

/// A listener's connection metrics: accepted in total, and open now.
#[derive(Clone)]
pub struct ConnectionCounters {
    accepted: prometheus::IntCounter,
    active: prometheus::IntGauge,
}

impl ConnectionCounters {
    pub fn new(metrics: &crate::telemetry::metrics::Metrics, listener: &str) -> Self {
        Self {
            accepted: metrics.downstream_connections.with_label_values(&[listener]),
            active: metrics.downstream_connections_active.with_label_values(&[listener]),
        }
    }

    /// Counts one accepted connection, open until the guard drops.
    pub fn open(&self) -> OpenConnection {
        self.accepted.inc();
        self.active.inc();
        OpenConnection(self.active.clone())
    }
}

/// Keeps a connection counted as open.
pub struct OpenConnection(prometheus::IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Waits for a free connection slot, then for a connection; `None` once
/// `stop` turns true. Accept errors (usually EMFILE) back off briefly
/// instead of spinning.
pub async fn accept_tcp(
    listener: &TcpListener,
    slots: &Arc<tokio::sync::Semaphore>,
    stop: &mut watch::Receiver<bool>,
    name: &str,
) -> Option<(
    tokio::net::TcpStream,
    std::net::SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
)> {
    let permit = tokio::select! {
        _ = stopped(stop) => return None,
        permit = slots.clone().acquire_owned() => permit.ok()?,
    };
    loop {
        tokio::select! {
            _ = stopped(stop) => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => return Some((stream, peer, permit)),
                Err(e) => {
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(tokio::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

struct Running {
    config: ListenerConfig,
    /// The bound address (differs from the configured one for port 0).
    local: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Default)]
pub struct ListenerSet {
    running: HashMap<String, Running>,
    /// Listeners told to stop and still draining.
    draining: Vec<JoinHandle<()>>,
}

impl ListenerSet {
    /// Binds every listener of `wanted` that is not already running with the
    /// same settings. Nothing is started or stopped when a bind fails, unless
    /// the failing listener replaces one on the same address (which must be
    /// closed before its address can be bound again).
    pub async fn reconcile(
        &mut self,
        wanted: &[ListenerConfig],
        base: &Path,
        shared: &Arc<Shared>,
    ) -> Result<(), String> {
        let mut to_stop: Vec<String> = self
            .running
            .iter()
            .filter(|(name, r)| !wanted.iter().any(|w| &w.name == *name && same_socket(w, &r.config)))
            .map(|(name, _)| name.clone())
            .collect();
        let to_start: Vec<&ListenerConfig> = wanted
            .iter()
            .filter(|w| self.running.get(&w.name).is_none_or(|r| !same_socket(&r.config, w)))
            .collect();
        // Listeners whose address is reused by a starting one stop first.
        let (now, later): (Vec<String>, Vec<String>) = to_stop.drain(..).partition(|name| {
            self.running
                .get(name)
                .is_some_and(|r| to_start.iter().any(|w| w.address == r.config.address))
        });
        for name in now {
            self.stop(&name);
        }
        let mut bound = Vec::new();
        for config in to_start {
            bound.push((config.clone(), bind(config, base).await?));
        }
        for name in later {
            self.stop(&name);
        }
        for (config, socket) in bound {
            tracing::info!(listener = %config.name, address = %config.address, protocol = ?config.protocol, "listening");
            self.start(config, socket, shared);
        }
        Ok(())
    }

    fn start(&mut self, config: ListenerConfig, socket: Bound, shared: &Arc<Shared>) {
        let local = socket.local_addr().unwrap_or(config.address);
        let (stop, stopped) = watch::channel(false);
        if let Some(tls) = socket.tls() {
            tls::watch_certificates(tls.store.clone(), &config.name, &shared.metrics, stopped.clone());
        }
        let task = match socket {
            Bound::Tcp(socket, tls) if config.protocol == ListenerProtocol::Tcp => {
                drop(tls);
                tokio::spawn(tcp::serve(config.clone(), socket, shared.clone(), stopped))
            }
            Bound::Tcp(socket, tls) => tokio::spawn(http::serve(config.clone(), socket, tls, shared.clone(), stopped)),
            Bound::Quic(endpoint, _) => tokio::spawn(h3::serve(config.clone(), endpoint, shared.clone(), stopped)),
        };
        self.running.insert(
            config.name.clone(),
            Running {
                config,
                local,
                stop,
                task,
            },
        );
    }

    fn stop(&mut self, name: &str) {
        if let Some(r) = self.running.remove(name) {
            tracing::info!(listener = %name, "listener stopping");
            let _ = r.stop.send(true);
            self.draining.push(r.task);
        }
        self.draining.retain(|t| !t.is_finished());
    }

    /// Stops every listener and waits for their connections to finish.
    pub async fn drain(&mut self) {
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            self.stop(&name);
        }
        for task in self.draining.drain(..) {
            let _ = task.await;
        }
    }

    /// The bound address of a running listener.
    pub fn local_addr(&self, name: &str) -> Option<std::net::SocketAddr> {
        self.running.get(name).map(|r| r.local)
    }
}

/// Whether a running listener can keep serving `b`'s settings: everything
/// but the routes must match. Requests read their routes from the live
/// snapshot, so a route edit (a canary weight step, say) needs no rebind,
/// and rebinding would race the old socket's close for the address.
fn same_socket(a: &ListenerConfig, b: &ListenerConfig) -> bool {
    let without_routes = |c: &ListenerConfig| ListenerConfig {
        routes: Vec::new(),
        ..c.clone()
    };
    without_routes(a) == without_routes(b)
}
