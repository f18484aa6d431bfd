//! HTTP/1.1 and HTTP/2 on one port (HTTP/2 told apart by its connection
//! preface, in plain text and over TLS alike), served by hyper's HTTP/1 or
//! HTTP/2 connection into the shared [`Proxy`] service.
//!
//! Downstream limits: the header block size and the header count (431
//! beyond them, from hyper for HTTP/1.1), a header-read timeout for slow
//! clients (also bounding the wait for a new connection's first bytes, and
//! then again for the rest of its first request's headers), a cap on open
//! connections, the HTTP/2 streams open at once (SETTINGS_MAX_CONCURRENT_STREAMS),
//! the requests one connection may carry (see `request_budget`), and HTTP/2's
//! abuse bounds (rapid reset, reset provocation, HPACK table, send buffer per
//! stream, and control frame floods: see `h2_flood`).
//!
//! Each connection's task holds only the server of its own protocol (see
//! `preface`); an HTTP/2 connection is boxed. Drain: once the listener stops
//! accepting, every connection is asked to shut down gracefully (HTTP/2
//! GOAWAY, HTTP/1.1 close after the current response) and `serve` returns
//! once all have ended. After a hand-over ([`Phase::HandedOver`]) a
//! connection that has not sent its request yet (or is still in its TLS
//! handshake) gets that one request served, on the old settings; when
//! closing ([`Phase::Closing`]) it is closed at once.
//!
//! With `original_destination` (captured connections, which may speak
//! anything): a connection to one of the `opaque_ports` is forwarded as TCP
//! at once; any other is served as HTTP when its first bytes are HTTP/1 or
//! the HTTP/2 preface within `protocol_detection_timeout`, else forwarded as
//! TCP (TLS, other protocols, silence) to the listener's `cluster`.

use std::sync::Arc;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Duration;
use tokio_rustls::TlsAcceptor;

use crate::config::schema::ListenerConfig;
use crate::core::executor::Http2Executor;
use crate::front::Downstream;
use crate::listener::h2_flood::FloodGuard;
use crate::listener::original_destination::Capture;
use crate::listener::preface::{detect, sniff, Detected, Prefixed, Protocol};
use crate::listener::request_budget::{self, Budgeted, RequestBudget};
use crate::listener::tcp::forward;
use crate::listener::tls::TlsSetup;
use crate::listener::{accept_tcp, reached, ConnectionCounters, Phase, Socket, SocketReturn};
use crate::proxy::{Proxy, Shared};
use crate::telemetry::metrics::Metrics;
use crate::tls::PeerIdentity;

// HTTP/2 abuse bounds, set explicitly rather than inherited from h2's
// defaults (docs/config.md, "Built-in bounds"). Beyond the first two, h2
// ends the connection with GOAWAY ENHANCE_YOUR_CALM.

/// Streams a client may reset before weft has accepted them (rapid reset,
/// CVE-2023-44487): a HEADERS + RST_STREAM loop trips it within one read.
const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams weft may reset for errors the client provokes on them
/// ("MadeYouReset", CVE-2025-8671).
const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// The HPACK dynamic table weft keeps per connection (the RFC's default); a
/// client's table size update beyond it ends the connection (GOAWAY
/// PROTOCOL_ERROR, h2's code for HPACK errors).
const H2_HEADER_TABLE_SIZE: u32 = 4096;
/// Response bytes queued per stream beyond the client's flow-control window:
/// a slow reader holds at most this (plus the window) per stream.
const H2_MAX_SEND_BUF_SIZE: usize = 400 * 1024;

/// The HTTP/1 and HTTP/2 servers of one listener, with its limits.
pub struct Servers {
    http1: http1::Builder,
    /// For connections that start after a hand-over: one request, then close.
    http1_once: http1::Builder,
    http2: http2::Builder<Http2Executor>,
    header_read_timeout: Duration,
    max_requests_per_connection: Option<u64>,
    /// `weft_downstream_h2_flood_total` of the listener.
    h2_floods: prometheus::IntCounter,
}

impl Servers {
    pub fn new(config: &ListenerConfig, metrics: &Metrics) -> Self {
        let header_bytes = (config.limits.max_request_headers_kb as usize * 1024).max(8192);
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(config.limits.header_read_timeout)
            .max_buf_size(header_bytes);
        // hyper's default is 100 on the stack; another count costs a heap
        // allocation per request, so it is set only when it differs.
        let max_headers = config.limits.max_request_headers as usize;
        if max_headers != 100 {
            http1.max_headers(max_headers);
        }
        let mut http1_once = http1.clone();
        http1_once.keep_alive(false);
        let mut http2 = http2::Builder::new(Http2Executor);
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(config.limits.max_concurrent_streams)
            .header_table_size(H2_HEADER_TABLE_SIZE)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS)
            .max_send_buf_size(H2_MAX_SEND_BUF_SIZE);
        Self {
            http1,
            http1_once,
            http2,
            header_read_timeout: config.limits.header_read_timeout,
            max_requests_per_connection: config.limits.max_requests_per_connection,
            h2_floods: metrics.downstream_h2_floods.with_label_values(&[&config.name]),
        }
    }
}

/// Accepts while `phase` is [`Phase::Serving`], then gives the socket back
/// and lets open connections finish gracefully (HTTP/2 GOAWAY, HTTP/1.1 close
/// after the current response).
pub async fn serve(
    config: ListenerConfig,
    listener: TcpListener,
    tls: Option<TlsSetup>,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    give_back: SocketReturn,
) {
    let servers = Arc::new(Servers::new(&config, &shared.metrics));
    let acceptor = tls.as_ref().map(TlsSetup::acceptor);
    // Every connection holds a receiver of `alive`, whose `closed()`
    // resolves once the last one has ended.
    let (alive, alive_rx) = watch::channel(());
    let slots = Arc::new(Semaphore::new(config.limits.max_connections));
    let name: Arc<str> = Arc::from(config.name.as_str());
    let counters = ConnectionCounters::new(&shared.metrics, &config.name);
    let capture = Capture::new(&config, &shared.metrics).map(Arc::new);
    while let Some((stream, peer, permit)) = accept_tcp(&listener, &slots, &mut phase, &counters, &name).await {
        let original_destination = match &capture {
            None => None,
            Some(capture) => match capture.destination(&stream, &name) {
                Some(destination) => Some(destination),
                None => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let open = counters.open();
        let (shared, servers, acceptor, capture) = (shared.clone(), servers.clone(), acceptor.clone(), capture.clone());
        let downstream = Downstream {
            listener: name.clone(),
            peer,
            scheme: "http",
            identity: None,
            original_destination,
        };
        // Taken before the handshake so a drain waits for it too.
        let (draining, alive) = (phase.clone(), alive_rx.clone());
        tokio::spawn(async move {
            let _alive = alive;
            let opaque = capture
                .as_ref()
                .zip(original_destination)
                .is_some_and(|(c, d)| c.is_opaque(d));
            // Boxed but for plain HTTP: the state of TLS, of protocol detection
            // and of TCP forwarding is large, and plain connections need not carry its size.
            match (acceptor, capture) {
                (_, Some(capture)) if opaque => Box::pin(forward_opaque(stream, &capture, &downstream, &shared)).await,
                (None, None) => serve_connection(&servers, stream, Arc::new(downstream), shared, draining).await,
                (None, Some(capture)) => {
                    Box::pin(serve_captured(&servers, &capture, stream, downstream, shared, draining)).await
                }
                (Some(acceptor), _) => {
                    Box::pin(serve_tls(&servers, &acceptor, stream, downstream, shared, draining)).await
                }
            }
            drop((open, permit));
        });
    }
    give_back.give(Socket::Tcp(listener));
    drop(alive_rx);
    alive.closed().await;
}

/// Serves one connection over TLS: the handshake (bounded by the header
/// read timeout; closing does not wait for it), then as [`serve_connection`].
async fn serve_tls(
    servers: &Servers,
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    mut downstream: Downstream,
    shared: Arc<Shared>,
    draining: watch::Receiver<Phase>,
) {
    let peer = downstream.peer;
    let handshake = tokio::time::timeout(servers.header_read_timeout, acceptor.accept(stream));
    let mut stopping = draining.clone();
    let result = tokio::select! {
        result = handshake => result,
        _ = reached(&mut stopping, Phase::Closing) => return,
    };
    match result {
        Ok(Ok(tls)) => {
            downstream.scheme = "https";
            downstream.identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| PeerIdentity::from_der(c));
            serve_connection(servers, tls, Arc::new(downstream), shared, draining).await;
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// Serves a captured connection by what its first bytes are (within the
/// listener's `protocol_detection_timeout`): HTTP through the routes,
/// anything else (TLS included, which is the app's own) as opaque TCP.
async fn serve_captured(
    servers: &Servers,
    capture: &Capture,
    stream: TcpStream,
    downstream: Downstream,
    shared: Arc<Shared>,
    mut draining: watch::Receiver<Phase>,
) {
    let peer = downstream.peer;
    let detected = tokio::select! {
        detected = detect(stream, capture.detection_timeout) => detected,
        _ = reached(&mut draining, Phase::Closing) => return,
    };
    match detected {
        Ok((Detected::Http(protocol), io)) => {
            serve_http(servers, protocol, io, Arc::new(downstream), shared, draining).await
        }
        Ok((_, io)) => forward_opaque(io, capture, &downstream, &shared).await,
        Err(e) => tracing::debug!(%peer, error = %e, "connection failed before its first bytes"),
    }
}

/// Forwards a captured connection that is not HTTP to the listener's
/// `cluster`, as a `tcp` listener would; without one it is closed.
async fn forward_opaque<I>(io: I, capture: &Capture, downstream: &Downstream, shared: &Shared)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let cluster = capture
        .cluster
        .as_deref()
        .and_then(|c| shared.snapshot.load().cluster(c).cloned());
    let peer = downstream.peer;
    let result = match cluster {
        Some(cluster) => forward(io, Some(cluster), downstream.original_destination, &capture.idle).await,
        None => Err("not HTTP, and the listener has no cluster for TCP"),
    };
    if let Err(why) = result {
        tracing::debug!(%peer, why, "captured connection ended");
    }
}

/// Serves one connection in the protocol its first bytes show (over TLS
/// too, whatever ALPN said: a client that sends nothing is then bounded by
/// the header read timeout in every case, as hyper-util's auto server did).
/// Closing closes a connection that has not sent its first bytes yet; after
/// a hand-over it gets one request served.
async fn serve_connection<I>(
    servers: &Servers,
    io: I,
    downstream: Arc<Downstream>,
    shared: Arc<Shared>,
    mut draining: watch::Receiver<Phase>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = downstream.peer;
    let first_bytes = tokio::time::timeout(servers.header_read_timeout, sniff(io));
    let sniffed = tokio::select! {
        sniffed = first_bytes => sniffed,
        _ = reached(&mut draining, Phase::Closing) => return,
    };
    let (protocol, io) = match sniffed {
        Ok(Ok(sniffed)) => sniffed,
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "connection failed before a request"),
        Err(_) => return tracing::debug!(%peer, "no request within the header read timeout"),
    };
    serve_http(servers, protocol, io, downstream, shared, draining).await
}

/// Resolves once the connection has received a request (at once if it
/// has already).
async fn first_request(arrived: Option<&Notify>) {
    if let Some(arrived) = arrived {
        arrived.notified().await;
    }
}

/// Serves a connection whose protocol its first bytes told (and which
/// [`Prefixed`] hands back) with hyper, until it ends or drains.
async fn serve_http<I>(
    servers: &Servers,
    protocol: Protocol,
    io: Prefixed<I>,
    downstream: Arc<Downstream>,
    shared: Arc<Shared>,
    mut draining: watch::Receiver<Phase>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = downstream.peer;
    let budget = RequestBudget::new(servers.max_requests_per_connection);
    let arrived = (protocol == Protocol::Http2).then(|| Arc::new(Notify::new()));
    let service = TowerToHyperService::new(Budgeted {
        proxy: Proxy::new(shared, downstream.clone()),
        budget: budget.clone(),
        http1: protocol == Protocol::Http1,
        arrived: arrived.clone(),
    });
    let result = match protocol {
        Protocol::Http1 => {
            // A connection that starts after a hand-over is served one request
            // (and closed after it); a graceful shutdown now would close it unserved.
            let (server, shut_at) = match *draining.borrow() {
                Phase::Serving => (&servers.http1, Phase::HandedOver),
                _ => (&servers.http1_once, Phase::Closing),
            };
            let conn = server.serve_connection(TokioIo::new(io), service).with_upgrades();
            tokio::pin!(conn);
            // The connection first: once polled it has read the sniffed bytes,
            // and hyper's graceful shutdown then still serves that request.
            tokio::select! {
                biased;
                result = conn.as_mut() => result,
                _ = reached(&mut draining, shut_at) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        Protocol::Http2 => {
            // GOAWAY still serves the streams the client has sent, but a client
            // that reads it before sending its first one refuses that request
            // itself (RFC 9113 6.8): as for HTTP/1.1, a connection gets its
            // first request served after a hand-over, and GOAWAY then.
            let mut closing = draining.clone();
            let handed_over = async {
                reached(&mut draining, Phase::HandedOver).await;
                tokio::select! {
                    _ = first_request(arrived.as_deref()) => {}
                    _ = reached(&mut closing, Phase::Closing) => {}
                }
            };
            let io = FloodGuard::new(io, servers.h2_floods.clone(), downstream);
            let mut conn = Box::pin(servers.http2.serve_connection(TokioIo::new(io), service));
            tokio::select! {
                biased;
                result = conn.as_mut() => result,
                _ = handed_over => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                _ = request_budget::spent(budget.as_deref()) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
