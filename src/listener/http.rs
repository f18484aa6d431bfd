//! HTTP/1.1 and HTTP/2 (prior knowledge, detected by the connection preface)
//! on one port, served by hyper-util's auto connection builder into the shared
//! [`Proxy`] service.
//!
//! Downstream limits: the header block size (431 beyond it, from hyper), a
//! header-read timeout for slow clients, and a cap on open connections.

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::schema::ListenerConfig;
use crate::listener::tls::TlsSetup;
use crate::listener::{accept_tcp, ConnectionCounters};
use crate::proxy::{Downstream, Proxy, Shared};
use crate::tls::PeerIdentity;

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
    tls: Option<TlsSetup>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = Arc::new(builder(&config));
    let acceptor = tls.as_ref().map(TlsSetup::acceptor);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(config.limits.max_connections));
    let name: Arc<str> = Arc::from(config.name.as_str());
    let counters = ConnectionCounters::new(&shared.metrics, &config.name);
    let handshake_timeout = config.limits.header_read_timeout;
    while let Some((stream, peer, permit)) = accept_tcp(&listener, &slots, &mut stop, &name).await {
        let _ = stream.set_nodelay(true);
        let open = counters.open();
        let (shared, builder, name, acceptor) = (shared.clone(), builder.clone(), name.clone(), acceptor.clone());
        // Watch before the handshake so a drain waits for it too.
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match acceptor {
                None => {
                    let downstream = Arc::new(Downstream {
                        listener: name,
                        peer,
                        scheme: "http",
                        identity: None,
                    });
                    serve_connection(&builder, stream, downstream, shared, watcher).await;
                }
                Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let identity = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| PeerIdentity::from_der(c));
                        let downstream = Arc::new(Downstream {
                            listener: name,
                            peer,
                            scheme: "https",
                            identity,
                        });
                        serve_connection(&builder, tls, downstream, shared, watcher).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
            drop((open, permit));
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    downstream: Arc<Downstream>,
    shared: Arc<Shared>,
    watcher: Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = downstream.peer;
    let service = TowerToHyperService::new(Proxy::new(shared, downstream));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
