//! HTTP/1.1 and HTTP/2 (prior knowledge, detected by the connection preface)
//! on one port, served by hyper-util's auto connection builder into the shared
//! [`Proxy`] service.
//!
//! Downstream limits: the header block size (431 beyond it, from hyper), a
//! header-read timeout for slow clients, and a cap on open connections.

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::schema::ListenerConfig;
use crate::proxy::{Downstream, Proxy, Shared};

pub fn builder(config: &ListenerConfig) -> auto::Builder<TokioExecutor> {
    let header_bytes = (config.limits.max_request_headers_kb as usize * 1024).max(8192);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.limits.header_read_timeout)
        .max_buf_size(header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Accepts until `stop` turns true, then lets open connections finish
/// gracefully (HTTP/2 GOAWAY, HTTP/1.1 close after the current response).
pub async fn serve(
    config: ListenerConfig,
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = builder(&config);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(config.limits.max_connections));
    let name: Arc<str> = Arc::from(config.name.as_str());
    let active = shared
        .metrics
        .downstream_connections_active
        .with_label_values(&[&config.name]);
    let accepted = shared.metrics.downstream_connections.with_label_values(&[&config.name]);
    loop {
        let permit = tokio::select! {
            _ = crate::listener::stopped(&mut stop) => break,
            permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = crate::listener::stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE: back off briefly instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(tokio::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        accepted.inc();
        active.inc();
        let downstream = Arc::new(Downstream {
            listener: name.clone(),
            peer,
            scheme: "http",
        });
        let service = TowerToHyperService::new(Proxy::new(shared.clone(), downstream));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let active = active.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            active.dec();
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
