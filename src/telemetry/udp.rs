//! Metric families of UDP listeners: sessions open and started, datagrams
//! forwarded or dropped in each direction, and bytes forwarded.
//!
//! `direction` names where a datagram came from: `downstream` for datagrams
//! from clients (sent on to an endpoint), `upstream` for an endpoint's
//! replies (sent back to the session's client). Families are registered
//! once per app; [`UdpMetrics::listener`] resolves one listener's handles
//! (all of them, so every series exists from the start at zero).

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct UdpMetrics {
    sessions_active: IntGaugeVec,
    sessions_total: IntCounterVec,
    datagrams: IntCounterVec,
    bytes: IntCounterVec,
}

/// Where a datagram came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a client, to an endpoint.
    Downstream,
    /// From an endpoint, back to its session's client.
    Upstream,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Downstream => "downstream",
            Self::Upstream => "upstream",
        }
    }
}

/// The counters of one direction.
#[derive(Clone)]
pub struct DirectionCounters {
    pub forwarded: IntCounter,
    pub dropped: IntCounter,
    pub bytes: IntCounter,
}

impl DirectionCounters {
    /// Counts one datagram of `len` bytes sent on.
    pub fn forward(&self, len: usize) {
        self.forwarded.inc();
        self.bytes.inc_by(len as u64);
    }
}

/// One listener's handles.
#[derive(Clone)]
pub struct UdpListenerMetrics {
    pub sessions_active: IntGauge,
    pub sessions_total: IntCounter,
    pub downstream: DirectionCounters,
    pub upstream: DirectionCounters,
}

impl UdpMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let sessions_active = IntGaugeVec::new(
            Opts::new(
                "weft_udp_sessions_active",
                "Open UDP sessions (one per client address).",
            ),
            &["listener"],
        )?;
        let sessions_total = IntCounterVec::new(
            Opts::new("weft_udp_sessions_total", "UDP sessions started."),
            &["listener"],
        )?;
        let datagrams = IntCounterVec::new(
            Opts::new(
                "weft_udp_datagrams_total",
                "UDP datagrams by where they came from (downstream: clients; upstream: endpoints) and whether they were forwarded or dropped.",
            ),
            &["listener", "direction", "result"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "weft_udp_bytes_total",
                "Bytes of UDP datagrams forwarded, by where they came from.",
            ),
            &["listener", "direction"],
        )?;
        registry.register(Box::new(sessions_active.clone()))?;
        registry.register(Box::new(sessions_total.clone()))?;
        registry.register(Box::new(datagrams.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        Ok(Self {
            sessions_active,
            sessions_total,
            datagrams,
            bytes,
        })
    }

    pub fn listener(&self, listener: &str) -> UdpListenerMetrics {
        let direction = |d: Direction| DirectionCounters {
            forwarded: self.datagrams.with_label_values(&[listener, d.as_str(), "forwarded"]),
            dropped: self.datagrams.with_label_values(&[listener, d.as_str(), "dropped"]),
            bytes: self.bytes.with_label_values(&[listener, d.as_str()]),
        };
        UdpListenerMetrics {
            sessions_active: self.sessions_active.with_label_values(&[listener]),
            sessions_total: self.sessions_total.with_label_values(&[listener]),
            downstream: direction(Direction::Downstream),
            upstream: direction(Direction::Upstream),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_series_of_a_listener_exists_at_zero() {
        let metrics = crate::telemetry::metrics::Metrics::new().unwrap();
        let dns = metrics.udp.listener("dns");
        dns.downstream.forward(10);
        let text = String::from_utf8(metrics.render()).unwrap();
        for series in [
            "weft_udp_sessions_active{listener=\"dns\"} 0",
            "weft_udp_sessions_total{listener=\"dns\"} 0",
            "weft_udp_datagrams_total{direction=\"downstream\",listener=\"dns\",result=\"forwarded\"} 1",
            "weft_udp_datagrams_total{direction=\"downstream\",listener=\"dns\",result=\"dropped\"} 0",
            "weft_udp_datagrams_total{direction=\"upstream\",listener=\"dns\",result=\"forwarded\"} 0",
            "weft_udp_datagrams_total{direction=\"upstream\",listener=\"dns\",result=\"dropped\"} 0",
            "weft_udp_bytes_total{direction=\"downstream\",listener=\"dns\"} 10",
            "weft_udp_bytes_total{direction=\"upstream\",listener=\"dns\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing in:\n{text}");
        }
    }
}
