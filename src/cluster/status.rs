//! What `/clusters` shows of a cluster: each endpoint's source, load,
//! health-check verdict, ejection state and latency estimate, the zone plan
//! in force, where the endpoints come from (discovery kind, last update and
//! its result), the cluster's recent error rate and latency percentiles, and
//! its overload protection (adaptive concurrency limit and circuit breaker
//! limits).
//! A read-only view; building it takes the same locks a request does, briefly.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio::time::Instant;

use super::discovery::DiscoveryStatus;
use super::health::routing_name;
use super::overload::ConcurrencyStatus;
use super::Cluster;
use crate::config::schema::{ClusterProtocol, LbPolicy};
use crate::policy::circuit::{CircuitBreaker, Gauge};

#[derive(Serialize)]
pub struct ClusterStatus {
    pub name: String,
    pub protocol: ClusterProtocol,
    pub lb: LbPolicy,
    pub zone_routing: ZoneStatus,
    /// Where the endpoints come from and how the last look went.
    pub discovery: DiscoveryStatus,
    /// Error rate and latency percentiles of recent attempts.
    pub recent: super::recent::RecentSummary,
    pub overload: OverloadStatus,
    pub endpoints: Vec<EndpointStatus>,
}

/// The cluster's overload protection; each part is `null` when not configured.
#[derive(Serialize)]
pub struct OverloadStatus {
    pub concurrency: Option<ConcurrencyStatus>,
    pub circuit: Option<CircuitStatus>,
}

/// Each circuit breaker limit, named as in the config and in
/// `weft_circuit_open_total`'s `limit` label.
#[derive(Serialize)]
pub struct CircuitStatus {
    pub max_connections: LimitStatus,
    pub max_pending_requests: LimitStatus,
    pub max_requests: LimitStatus,
}

#[derive(Serialize)]
pub struct LimitStatus {
    /// The configured ceiling; `null` when unlimited.
    pub max: Option<usize>,
    /// Units in use now.
    pub current: usize,
    /// At the ceiling: the next request that needs a unit is refused.
    pub open: bool,
    /// Requests refused at this limit so far.
    pub rejections: u64,
}

impl LimitStatus {
    fn of(gauge: &Gauge) -> Self {
        Self {
            max: gauge.max(),
            current: gauge.current(),
            open: gauge.is_full(),
            rejections: gauge.refused(),
        }
    }
}

impl CircuitStatus {
    fn of(breaker: &CircuitBreaker) -> Self {
        Self {
            max_connections: LimitStatus::of(&breaker.connections),
            max_pending_requests: LimitStatus::of(&breaker.pending),
            max_requests: LimitStatus::of(&breaker.requests),
        }
    }
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
    /// `static`, or the discovery source that found it (`dns:NAME:PORT`, `file:PATH`).
    pub source: String,
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
            discovery: self
                .discovery
                .as_ref()
                .map_or_else(DiscoveryStatus::fixed, |d| d.status()),
            recent: self.recent.summary(now),
            overload: OverloadStatus {
                concurrency: self.overload.concurrency.as_ref().map(|c| c.status()),
                circuit: self.overload.circuit.as_deref().map(CircuitStatus::of),
            },
            endpoints: self
                .endpoints()
                .iter()
                .map(|e| {
                    let returns_at = self.health.ejected_until(e.id).filter(|_| e.health.is_ejected());
                    EndpointStatus {
                        address: e.target.address.to_string(),
                        source: e.source.to_string(),
                        zone: e.zone.clone(),
                        weight: e.weight(),
                        in_flight: e.in_flight(),
                        health: if e.health.is_healthy() { "healthy" } else { "unhealthy" },
                        ejected: e.health.is_ejected(),
                        returns_in_ms: returns_at.map(|at| at.saturating_duration_since(now).as_millis() as u64),
                        times_ejected: self.health.times_ejected(e.id),
                        latency_ewma_ms: e.health.latency_estimate(now).as_secs_f64() * 1000.0,
                    }
                })
                .collect(),
        }
    }
}
