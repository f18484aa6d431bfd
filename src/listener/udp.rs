//! UDP proxying with per-client sessions. A session is one client address:
//! its first datagram picks an endpoint of the listener's cluster with the
//! cluster's balancer (health, ejections and zone plan included) and opens
//! one UDP socket connected to it; every later datagram of the client goes
//! out of that socket, and what the endpoint sends back goes to that client
//! alone (a connected socket receives from its endpoint only).
//!
//! Guarantees:
//! - Datagrams are forwarded whole, one for one; one larger than
//!   `udp.max_datagram_bytes` (either direction) is dropped and counted.
//! - A session ends after `udp.idle_timeout` without a datagram in either
//!   direction; beyond `udp.max_sessions`, datagrams from new clients are
//!   dropped and counted (see `policy::udp_session`).
//! - An endpoint that answers ICMP port unreachable (ECONNREFUSED on the
//!   connected socket) fails an attempt for outlier detection and the
//!   session ends, so the client's next datagram picks an endpoint anew; a
//!   session's first reply is a successful attempt, its latency the time
//!   from the first datagram to that reply. A session without replies (a
//!   one-way protocol such as statsd) records nothing.
//! - Each session holds its endpoint as in flight, so `least_request` and
//!   `p2c_ewma` balance open sessions.
//! - When told to stop or to hand its socket over (a changed listener on the
//!   same address), the socket is read no more and every session ends; once
//!   every session's task has finished, the socket goes to the successor
//!   (or closes), so no reply of an old session can leave from it later.

use std::cell::RefCell;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use crate::cluster::{Cluster, Endpoint, InFlight};
use crate::config::schema::ListenerConfig;
use crate::config::udp::{UdpListenerConfig, MAX_DATAGRAM_BYTES};
use crate::listener::{reached, Phase, Socket, SocketReturn};
use crate::policy::udp_session::SessionTable;
use crate::proxy::Shared;
use crate::telemetry::udp::UdpListenerMetrics;

thread_local! {
    /// Where endpoint replies are received: one buffer per worker thread,
    /// not one per session (a session's task borrows it only between two
    /// non-blocking calls).
    static REPLY_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM_BYTES + 1]);
}

pub async fn serve(
    config: ListenerConfig,
    socket: UdpSocket,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    give_back: SocketReturn,
) {
    let settings = config.udp.clone().unwrap_or_default();
    let mut listener = Listener {
        relay: Arc::new(Relay {
            downstream: socket,
            metrics: shared.metrics.udp.listener(&config.name),
            sessions: Mutex::new(SessionTable::new(settings.idle_timeout, settings.max_sessions)),
            max_datagram: settings.max_datagram_bytes,
        }),
        cluster: config.cluster.clone().unwrap_or_default(),
        settings,
        shared,
        readers: JoinSet::new(),
        next_id: 0,
    };
    tokio::select! {
        _ = reached(&mut phase, Phase::HandedOver) => {}
        _ = listener.run() => {}
    }
    let Listener { relay, mut readers, .. } = listener;
    let ended = relay.sessions.lock().drain();
    drop(ended);
    readers.shutdown().await;
    // Every session's task has ended, so the socket is this task's alone.
    if let Some(relay) = Arc::into_inner(relay) {
        give_back.give(Socket::Udp(relay.downstream));
    }
}

/// What the listener and every session's reply task share.
struct Relay {
    downstream: UdpSocket,
    metrics: UdpListenerMetrics,
    sessions: Mutex<SessionTable<Session>>,
    max_datagram: usize,
}

impl Relay {
    /// Ends `client`'s session if it is still session `id` (not a newer one).
    fn end(&self, client: &SocketAddr, id: u64) {
        let mut sessions = self.sessions.lock();
        let ended = match sessions.peek(client) {
            Some(s) if s.id == id => sessions.remove(client),
            _ => None,
        };
        drop(sessions);
        drop(ended);
    }
}

struct Listener {
    relay: Arc<Relay>,
    /// Looked up per new session, so a reload's new endpoints apply to new sessions.
    cluster: String,
    settings: UdpListenerConfig,
    shared: Arc<Shared>,
    readers: JoinSet<()>,
    next_id: u64,
}

impl Listener {
    async fn run(&mut self) {
        let mut buf = vec![0; self.settings.max_datagram_bytes + 1];
        let expiry = tokio::time::sleep(tokio::time::Duration::from_secs(3600));
        tokio::pin!(expiry);
        let mut armed = None;
        loop {
            let next = self.relay.sessions.lock().next_deadline();
            if next != armed {
                if let Some(at) = next {
                    expiry.as_mut().reset(at);
                }
                armed = next;
            }
            // Expiry first: a steady stream of datagrams must not starve it.
            tokio::select! {
                biased;
                () = &mut expiry, if armed.is_some() => {
                    let ended = self.relay.sessions.lock().expire(Instant::now());
                    drop(ended);
                    armed = None;
                }
                received = self.relay.downstream.recv_from(&mut buf) => match received {
                    Ok((len, client)) => self.forward(&buf[..len], client).await,
                    // Errors of an unconnected socket are rare and transient
                    // (ENOMEM); a short pause keeps a lasting one from spinning.
                    Err(e) => {
                        tracing::debug!(error = %e, "udp receive failed");
                        tokio::time::sleep(tokio::time::Duration::from_millis(10)).await;
                    }
                },
            }
        }
    }

    /// Sends one client datagram on through its session, opening one if needed.
    async fn forward(&mut self, datagram: &[u8], client: SocketAddr) {
        let relay = self.relay.clone();
        let counters = &relay.metrics.downstream;
        if datagram.len() > self.settings.max_datagram_bytes {
            tracing::debug!(%client, "udp datagram over max_datagram_bytes dropped");
            counters.dropped.inc();
            return;
        }
        let now = Instant::now();
        let known = relay
            .sessions
            .lock()
            .get(&client, now)
            .map(|s| (s.id, s.upstream.clone()));
        let Some((id, upstream)) = known.or_else(|| self.open(client, now)) else {
            counters.dropped.inc();
            return;
        };
        match upstream.socket.send(datagram).await {
            Ok(_) => counters.forward(datagram.len()),
            Err(e) => {
                counters.dropped.inc();
                if e.kind() == ErrorKind::ConnectionRefused {
                    upstream.refused();
                    relay.end(&client, id);
                }
                tracing::debug!(%client, error = %e, "udp send to endpoint failed");
            }
        }
    }

    /// Opens a session for `client`; `None` (the datagram is dropped) at
    /// `max_sessions`, without a usable endpoint, or without a socket.
    fn open(&mut self, client: SocketAddr, now: Instant) -> Option<(u64, Arc<Upstream>)> {
        if self.relay.sessions.lock().len() >= self.settings.max_sessions {
            tracing::debug!(%client, "udp max_sessions reached; datagram from a new client dropped");
            return None;
        }
        let cluster = self.shared.snapshot.load().cluster(&self.cluster).cloned()?;
        let Some(endpoint) = cluster.pick(None) else {
            tracing::debug!(%client, cluster = %cluster.name, "no endpoint for a udp session");
            return None;
        };
        let socket = connected_socket(endpoint.target.address)
            .map_err(|e| tracing::warn!(endpoint = %endpoint.target.address, error = %e, "cannot open a udp socket"))
            .ok()?;
        while self.readers.try_join_next().is_some() {}
        self.next_id += 1;
        let id = self.next_id;
        let upstream = Arc::new(Upstream {
            socket,
            cluster: cluster.clone(),
            endpoint: endpoint.clone(),
            started: now,
            verdict: AtomicU8::new(UNJUDGED),
        });
        let reader = self
            .readers
            .spawn(relay_replies(self.relay.clone(), client, id, upstream.clone()));
        let metrics = &self.relay.metrics;
        metrics.sessions_total.inc();
        metrics.sessions_active.inc();
        let session = Session {
            id,
            upstream: upstream.clone(),
            reader,
            _in_flight: endpoint.start_request(),
            active: metrics.sessions_active.clone(),
        };
        // Room was checked above, and only this task inserts.
        let _ = self.relay.sessions.lock().insert(client, session, now);
        tracing::debug!(%client, endpoint = %endpoint.target.address, "udp session opened");
        Some((id, upstream))
    }
}

/// A UDP socket on an ephemeral port of the endpoint's address family,
/// connected to it. Binding and connecting a UDP socket send nothing, so
/// neither blocks.
fn connected_socket(endpoint: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = match endpoint {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(local)?;
    socket.connect(endpoint)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

const UNJUDGED: u8 = 0;
const ANSWERED: u8 = 1;
const REFUSED: u8 = 2;

/// A session's side towards its endpoint.
struct Upstream {
    socket: UdpSocket,
    cluster: Arc<Cluster>,
    endpoint: Arc<Endpoint>,
    /// The session's first datagram.
    started: Instant,
    verdict: AtomicU8,
}

impl Upstream {
    /// The first reply is a successful attempt.
    fn answered(&self) {
        if self.verdict.load(Ordering::Relaxed) == UNJUDGED
            && self
                .verdict
                .compare_exchange(UNJUDGED, ANSWERED, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.cluster.record_connect(&self.endpoint, self.started, true);
        }
    }

    /// ICMP port unreachable: a failed attempt, counted once per session.
    fn refused(&self) {
        if self.verdict.swap(REFUSED, Ordering::Relaxed) != REFUSED {
            self.cluster.record_connect(&self.endpoint, self.started, false);
        }
    }
}

/// An entry of the session table; ending it (drop) stops its reply task.
struct Session {
    id: u64,
    upstream: Arc<Upstream>,
    reader: AbortHandle,
    _in_flight: InFlight,
    active: prometheus::IntGauge,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
        self.active.dec();
    }
}

/// A session's task: sends each datagram from its endpoint back to its client.
async fn relay_replies(relay: Arc<Relay>, client: SocketAddr, id: u64, upstream: Arc<Upstream>) {
    loop {
        if let Err(e) = upstream.socket.readable().await {
            tracing::debug!(%client, error = %e, "udp session socket failed");
            break;
        }
        let delivery = match REPLY_BUFFER.with_borrow_mut(|buf| relay.pass_back(&upstream.socket, buf, client)) {
            Ok(Delivery::Blocked(copy)) => match relay.downstream.send_to(&copy, client).await {
                Ok(len) => Delivery::Sent(len),
                Err(e) => Delivery::Failed(e),
            },
            Ok(delivery) => delivery,
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                upstream.refused();
                break;
            }
            Err(e) => {
                tracing::debug!(%client, error = %e, "udp receive from endpoint failed");
                continue;
            }
        };
        upstream.answered();
        relay.sessions.lock().touch(&client, Instant::now());
        let counters = &relay.metrics.upstream;
        match delivery {
            Delivery::Sent(len) => counters.forward(len),
            Delivery::Failed(e) => {
                tracing::debug!(%client, error = %e, "udp reply to client failed");
                counters.dropped.inc();
            }
            Delivery::Oversized | Delivery::Blocked(_) => counters.dropped.inc(),
        }
    }
    relay.end(&client, id);
}

impl Relay {
    /// Receives one datagram from `from` into `buf` and sends it to
    /// `client` without waiting; `Err` is the receive's error.
    fn pass_back(&self, from: &UdpSocket, buf: &mut [u8], client: SocketAddr) -> std::io::Result<Delivery> {
        let limit = (self.max_datagram + 1).min(buf.len());
        let len = from.try_recv(&mut buf[..limit])?;
        if len > self.max_datagram {
            return Ok(Delivery::Oversized);
        }
        Ok(match self.downstream.try_send_to(&buf[..len], client) {
            Ok(len) => Delivery::Sent(len),
            // The client-facing socket's buffer is full: the caller waits, on a copy.
            Err(e) if e.kind() == ErrorKind::WouldBlock => Delivery::Blocked(buf[..len].to_vec()),
            Err(e) => Delivery::Failed(e),
        })
    }
}

/// What became of one endpoint datagram.
enum Delivery {
    Sent(usize),
    Oversized,
    /// Not sent yet: a copy, to send once the socket has room.
    Blocked(Vec<u8>),
    Failed(std::io::Error),
}
