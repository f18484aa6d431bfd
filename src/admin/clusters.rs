//! `/clusters`: each cluster's status (see `cluster::status`) and, for a udp
//! cluster, the UDP listeners that send to it with their sessions (open,
//! started, the cap) and datagram counts, read from the `weft_udp_*`
//! metrics, so serving it adds no work to the datagram path.

use serde::Serialize;

use crate::cluster::status::ClusterStatus;
use crate::config::schema::ListenerProtocol;
use crate::proxy::Shared;
use crate::telemetry::udp::DirectionCounters;

#[derive(Serialize)]
pub struct ClusterView {
    #[serde(flatten)]
    pub status: ClusterStatus,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub udp_listeners: Vec<UdpListenerView>,
}

#[derive(Serialize)]
pub struct UdpListenerView {
    pub name: String,
    /// As configured (port 0 stays 0).
    pub address: String,
    pub sessions_active: i64,
    pub sessions_total: u64,
    pub max_sessions: usize,
    pub idle_timeout_ms: u64,
    /// From clients, to endpoints.
    pub downstream: DatagramCounts,
    /// From endpoints, back to clients.
    pub upstream: DatagramCounts,
}

#[derive(Serialize)]
pub struct DatagramCounts {
    pub forwarded: u64,
    pub dropped: u64,
    pub bytes: u64,
}

impl From<&DirectionCounters> for DatagramCounts {
    fn from(c: &DirectionCounters) -> Self {
        Self {
            forwarded: c.forwarded.get(),
            dropped: c.dropped.get(),
            bytes: c.bytes.get(),
        }
    }
}

pub fn collect(shared: &Shared) -> Vec<ClusterView> {
    let snapshot = shared.snapshot.load();
    let listeners = &snapshot.loaded.config.listeners;
    snapshot
        .clusters
        .iter()
        .map(|c| ClusterView {
            status: c.status(),
            udp_listeners: listeners
                .iter()
                .filter(|l| l.protocol == ListenerProtocol::Udp && l.cluster.as_deref() == Some(&*c.name))
                .map(|l| {
                    let metrics = shared.metrics.udp.listener(&l.name);
                    let settings = l.udp.clone().unwrap_or_default();
                    UdpListenerView {
                        name: l.name.clone(),
                        address: l.address.to_string(),
                        sessions_active: metrics.sessions_active.get(),
                        sessions_total: metrics.sessions_total.get(),
                        max_sessions: settings.max_sessions,
                        idle_timeout_ms: settings.idle_timeout.as_millis() as u64,
                        downstream: DatagramCounts::from(&metrics.downstream),
                        upstream: DatagramCounts::from(&metrics.upstream),
                    }
                })
                .collect(),
        })
        .collect()
}
