//! A cluster: a named set of endpoints, a balancing policy, and the pooled
//! upstream client that speaks the cluster's protocol to them.

pub mod balancer;
pub mod service;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use http::uri::Authority;
use serde::Serialize;

use crate::config::schema::{ClusterConfig, ClusterProtocol, LbPolicy};
use crate::layer::ClusterOverload;
use crate::telemetry::metrics::{Metrics, StatusCounters};
use crate::upstream::HttpClient;

pub struct Endpoint {
    pub address: SocketAddr,
    pub authority: Authority,
    pub zone: Option<String>,
    pub weight: u32,
    /// Requests sent and not yet finished (response body fully read or dropped).
    in_flight: AtomicUsize,
    pub upstream_requests: StatusCounters,
}

impl balancer::Candidate for Arc<Endpoint> {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts a request as in flight on its endpoint until dropped.
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Endpoint {
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

pub struct Cluster {
    pub name: Arc<str>,
    pub config: ClusterConfig,
    pub endpoints: Vec<Arc<Endpoint>>,
    round_robin: AtomicU64,
    /// `None` for tcp clusters.
    pub http: Option<HttpClient>,
    /// Overload protection state, shared by every route to this cluster.
    pub overload: ClusterOverload,
}

impl Cluster {
    pub fn new(config: &ClusterConfig, metrics: &Metrics) -> Self {
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| {
                let address = e.address.to_string();
                Arc::new(Endpoint {
                    address: e.address,
                    // A socket address is always a valid authority.
                    authority: Authority::try_from(address.as_str())
                        .unwrap_or_else(|_| Authority::from_static("invalid")),
                    zone: e.zone.clone(),
                    weight: e.weight,
                    in_flight: AtomicUsize::new(0),
                    upstream_requests: StatusCounters::new(&metrics.upstream_requests, &[&config.name, &address]),
                })
            })
            .collect();
        let overload = ClusterOverload::new(config, &metrics.overload);
        let http = match config.protocol {
            ClusterProtocol::Tcp => None,
            ClusterProtocol::Http1 | ClusterProtocol::Http2 => {
                Some(HttpClient::new(config, overload.connection_limits()))
            }
        };
        Self {
            name: Arc::from(config.name.as_str()),
            config: config.clone(),
            endpoints,
            round_robin: AtomicU64::new(0),
            http,
            overload,
        }
    }

    pub fn lb(&self) -> LbPolicy {
        self.config.lb
    }

    /// Chooses an endpoint, avoiding `exclude` when another is available.
    pub fn pick(&self, exclude: Option<usize>) -> Option<usize> {
        let counter = self.round_robin.fetch_add(1, Ordering::Relaxed);
        balancer::pick(self.lb(), &self.endpoints, counter, exclude, &mut rand::rng())
    }

    /// What `/clusters` shows.
    pub fn status(&self) -> ClusterStatus {
        ClusterStatus {
            name: self.name.to_string(),
            protocol: self.config.protocol,
            lb: self.config.lb,
            endpoints: self
                .endpoints
                .iter()
                .map(|e| EndpointStatus {
                    address: e.address.to_string(),
                    zone: e.zone.clone(),
                    weight: e.weight,
                    in_flight: e.in_flight.load(Ordering::Relaxed),
                    health: "healthy",
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
pub struct ClusterStatus {
    pub name: String,
    pub protocol: ClusterProtocol,
    pub lb: LbPolicy,
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Serialize)]
pub struct EndpointStatus {
    pub address: String,
    pub zone: Option<String>,
    pub weight: u32,
    pub in_flight: usize,
    pub health: &'static str,
}
