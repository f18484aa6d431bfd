//! Listeners: HTTP/1.1 and HTTP/2 (`http`), HTTP/3 (`h3`), raw TCP (`tcp`)
//! and UDP with per-client sessions (`udp`) over sockets bound here, and the set of them that runs, reconciled
//! against each new config (`set`). What every listener task shares lives
//! here: its [`Phase`], how it gives its socket back for a successor, the
//! accept loop with its connection cap, and its connection metrics. Listeners
//! with `original_destination` read each connection's address from before
//! the capture redirect (`original_destination`).

mod h2_flood;
mod h2_frames;
pub mod h3;
pub mod http;
pub mod original_destination;
mod preface;
pub mod request_budget;
mod set;
pub mod tcp;
pub mod tls;
pub mod udp;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

pub use set::{Health, ListenerSet};

/// Where a listener task is in its life; its owner moves it forward through a
/// `watch` channel (a dropped sender counts as `Closing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Serving,
    /// The socket went to a successor with new settings: stop accepting; open
    /// connections finish what they started on the old settings (one that
    /// was accepted but has not sent its request yet still gets it served).
    HandedOver,
    /// Closing for good (listener removed, or weft shutting down): stop
    /// accepting; connections drain, and silent ones are closed.
    Closing,
}

/// Resolves once `phase` has reached `at` (or its sender is gone).
pub async fn reached(phase: &mut watch::Receiver<Phase>, at: Phase) {
    let _ = phase.wait_for(|p| *p >= at).await;
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A bound listening socket, without its TLS set-up.
pub enum Socket {
    Tcp(TcpListener),
    Quic(quinn::Endpoint),
    Udp(tokio::net::UdpSocket),
}

/// Where a listener task puts its socket when it stops accepting: to the
/// successor that asked for it, or nowhere (then the socket closes).
pub struct SocketReturn(oneshot::Sender<Socket>);

impl SocketReturn {
    /// Whether a successor took the socket.
    pub fn give(self, socket: Socket) -> bool {
        self.0.send(socket).is_ok()
    }
}

/// Waits for a connection and takes a connection slot for it; `None` once
/// the listener leaves [`Phase::Serving`] (checked first, so nothing is
/// accepted after that has been seen). A connection beyond the listener's
/// slots (`limits.max_connections`) is accepted and closed at once, and
/// counted, rather than left in the kernel backlog where it would wait
/// unanswered (Envoy's `downstream_cx_overflow`). Accept errors (usually
/// EMFILE) back off briefly instead of spinning. The peer address is in its
/// plain form.
pub async fn accept_tcp(
    listener: &TcpListener,
    slots: &Arc<tokio::sync::Semaphore>,
    phase: &mut watch::Receiver<Phase>,
    counters: &ConnectionCounters,
    name: &str,
) -> Option<(
    tokio::net::TcpStream,
    std::net::SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
)> {
    loop {
        tokio::select! {
            biased;
            _ = reached(phase, Phase::HandedOver) => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        counters.overflow.inc();
                        drop(stream);
                        continue;
                    };
                    // An IPv4 client of a `[::]` listener in its plain form
                    // (`x-forwarded-for`, logs), not IPv4-mapped.
                    return Some((stream, SocketAddr::new(peer.ip().to_canonical(), peer.port()), permit));
                }
                Err(e) => {
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(tokio::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// A listener's connection metrics: accepted in total, open now, and
/// closed at once over the connection limit.
#[derive(Clone)]
pub struct ConnectionCounters {
    accepted: prometheus::IntCounter,
    active: prometheus::IntGauge,
    overflow: prometheus::IntCounter,
}

impl ConnectionCounters {
    pub fn new(metrics: &crate::telemetry::metrics::Metrics, listener: &str) -> Self {
        Self {
            accepted: metrics.downstream_connections.with_label_values(&[listener]),
            active: metrics.downstream_connections_active.with_label_values(&[listener]),
            overflow: metrics.downstream_connections_overflow.with_label_values(&[listener]),
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
