//! Listeners with `original_destination: true`: each accepted connection's
//! original destination, the address it was going to before a nat
//! `REDIRECT` sent it to weft (`SO_ORIGINAL_DST`, or `IP6T_SO_ORIGINAL_DST`
//! for IPv6; an IPv4 connection on an IPv6 socket, as a `[::]` listener
//! takes, has an IPv4 one), and what the listener does with it.
//!
//! Guarantees: a connection that was not redirected (someone connected to
//! the listener's port directly) has the listener's own address as its
//! original destination, or none the kernel knows of; forwarding it would
//! connect back to weft, so it is closed and counted in
//! `weft_original_destination_loops_total{listener}`, never forwarded.
//! Original destinations are given in their plain form (an IPv4 address,
//! never an IPv4-mapped IPv6 one).

use std::net::SocketAddr;

use prometheus::IntCounter;
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::Duration;

use crate::config::schema::ListenerConfig;
use crate::telemetry::metrics::Metrics;

/// What a listener with `original_destination: true` needs per connection.
pub struct Capture {
    loops: IntCounter,
    /// Destination ports forwarded as opaque TCP without waiting for bytes.
    opaque_ports: Vec<u16>,
    /// How long an `http` listener waits for a connection's first bytes.
    pub detection_timeout: Duration,
    /// Where an `http` listener forwards connections that are not HTTP.
    pub cluster: Option<String>,
    /// The `idle_timeout` of the connections it forwards.
    pub idle: crate::front::idle::IdleLimit,
}

impl Capture {
    /// `None` for a listener without `original_destination`.
    pub fn new(config: &ListenerConfig, metrics: &Metrics) -> Option<Self> {
        config.original_destination.then(|| Self {
            loops: metrics.original_destination_loops.with_label_values(&[&config.name]),
            // Validation keeps each port within 1..=65535.
            opaque_ports: config
                .opaque_ports
                .iter()
                .filter_map(|&p| u16::try_from(p).ok())
                .collect(),
            detection_timeout: config.protocol_detection_timeout,
            cluster: config.cluster.clone(),
            idle: super::tcp::idle_limit(config, metrics),
        })
    }

    /// The original destination of a connection accepted by `listener`, or
    /// `None` (counted and logged) when it was not redirected.
    pub fn destination(&self, stream: &TcpStream, listener: &str) -> Option<SocketAddr> {
        let local = stream.local_addr().ok().map(plain);
        match original_destination(stream) {
            Ok(destination) if Some(destination) != local => Some(destination),
            found => {
                self.loops.inc();
                let found = found.map_or_else(|e| e.to_string(), |d| d.to_string());
                tracing::debug!(%listener, original_destination = %found, "connection was not redirected to this listener; closed");
                None
            }
        }
    }

    /// Whether connections to `destination` are forwarded as opaque TCP at
    /// once (a server-first protocol: the client waits for the server).
    pub fn is_opaque(&self, destination: SocketAddr) -> bool {
        self.opaque_ports.contains(&destination.port())
    }
}

/// The address `stream` had as its destination before a nat redirect.
pub fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let socket = SockRef::from(stream);
    let ipv4 = match stream.local_addr()? {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    let address = if ipv4 {
        socket.original_dst_v4()?
    } else {
        socket.original_dst_v6()?
    };
    address
        .as_socket()
        .map(plain)
        .ok_or_else(|| std::io::Error::other("not an IP address"))
}

/// `address` with an IPv4-mapped IPv6 address as plain IPv4.
fn plain(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}
