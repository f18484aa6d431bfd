//! What `/clusters` shows of a cluster: each endpoint's load, health-check
//! verdict, ejection state and latency estimate, the zone plan in force, and
//! the cluster's recent error rate and latency percentiles.
//! A read-only view; building it takes the same locks a request does, briefly.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::Serialize;
use tokio::time::Instant;

use super::health::routing_name;
use super::Cluster;
use crate::config::schema::{ClusterProtocol, LbPolicy};

#[derive(Serialize)]
pub struct ClusterStatus {
    pub name: String,
    pub protocol: ClusterProtocol,
    pub lb: LbPolicy,
    pub zone_routing: ZoneStatus,
    /// Error rate and latency percentiles of recent attempts.
    pub recent: super::recent::RecentSummary,
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Serialize)]
pub struct ZoneStatus {
    pub local_zone: Option<String>,
    /// "all_local", "spill", "unzoned" or "panic".
    pub routing: &'static str,
    /// Fraction of requests kept in the local zone.
    pub local_share: f64,
    /// Fraction of requests sent to each other zone.
    pub remote_shares: BTreeMap<String, f64>,
}

#[derive(Serialize)]
pub struct EndpointStatus {
    pub address: String,
    pub zone: Option<String>,
    pub weight: u32,
    pub in_flight: usize,
    /// Active health-check verdict: "healthy" or "unhealthy".
    pub health: &'static str,
    pub ejected: bool,
    /// Milliseconds until an ejected endpoint returns.
    pub returns_in_ms: Option<u64>,
    pub times_ejected: u32,
    /// Peak-EWMA latency estimate used by `p2c_ewma`.
    pub latency_ewma_ms: f64,
}

impl Cluster {
    pub fn status(&self) -> ClusterStatus {
        let now = Instant::now();
        let plan = self.health.plan();
        ClusterStatus {
            name: self.name.to_string(),
            protocol: self.config.protocol,
            lb: self.config.lb,
            zone_routing: ZoneStatus {
                local_zone: self.health.local_zone().map(str::to_string),
                routing: routing_name(plan.routing()),
                local_share: plan.local_share(),
                remote_shares: plan.remote_shares().map(|(z, s)| (z.to_string(), s)).collect(),
            },
            recent: self.recent.summary(now),
            endpoints: self
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let returns_at = self.health.ejected_until(i).filter(|_| e.health.is_ejected());
                    EndpointStatus {
                        address: e.target.address.to_string(),
                        zone: e.zone.clone(),
                        weight: e.weight,
                        in_flight: e.in_flight.load(Ordering::Relaxed),
                        health: if e.health.is_healthy() { "healthy" } else { "unhealthy" },
                        ejected: e.health.is_ejected(),
                        returns_in_ms: returns_at.map(|at| at.saturating_duration_since(now).as_millis() as u64),
                        times_ejected: self.health.times_ejected(i),
                        latency_ewma_ms: e.health.latency_estimate(now).as_secs_f64() * 1000.0,
                    }
                })
                .collect(),
        }
    }
}
