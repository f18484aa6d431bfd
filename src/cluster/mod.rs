//! A cluster: a named set of endpoints, a balancing policy, the pooled
//! upstream client that speaks the cluster's protocol to them, and the
//! endpoints' health (latency EWMA, outlier ejection, active health checks,
//! zone-aware routing; see `health.rs`).
//!
//! Guarantees: [`Cluster::pick`] only returns an endpoint that is usable
//! (neither ejected nor failing health checks) unless the cluster is in panic
//! mode, prefers the zone the current zone plan chose, and avoids `exclude`
//! whenever any other usable endpoint exists, even in another zone.

pub mod health;
pub mod health_check;
pub mod monitor;
pub mod overload;
pub mod recent;
pub mod service;
pub mod status;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use http::StatusCode;
use tokio::time::Instant;

use crate::config::schema::{ClusterConfig, ClusterProtocol, LbPolicy, NodeConfig};
use crate::core::error::ErrorKind;
use crate::policy::balancer::{self, PickInput};
use crate::policy::zone::ZoneChoice;
use crate::telemetry::metrics::{Metrics, StatusCounters};
use crate::upstream::{HttpClient, Target};
use health::{ClusterHealth, EndpointHealth};
use overload::ClusterOverload;

pub struct Endpoint {
    /// Address, authority and connection pool.
    pub target: Target,
    pub zone: Option<String>,
    pub weight: u32,
    /// Requests sent and not yet finished (response body fully read or dropped).
    in_flight: AtomicUsize,
    pub upstream_requests: StatusCounters,
    pub health: EndpointHealth,
}

impl balancer::Candidate for Arc<Endpoint> {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
    fn available(&self) -> bool {
        self.health.available()
    }
    fn latency_load(&self, now: Instant) -> f64 {
        self.health.load(now, self.in_flight())
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

/// One attempt on an endpoint, from send to response headers.
///
/// If the attempt is dropped unfinished (route timeout, client gone), the time
/// it ran still goes into the endpoint's latency estimate: otherwise an
/// endpoint that hangs would never report a sample, its estimate would decay,
/// and `p2c_ewma` would send it more traffic. Such an attempt is not an
/// outlier-detection failure, as a client going away is not the endpoint's fault.
pub struct Attempt {
    cluster: Arc<Cluster>,
    idx: usize,
    started: Instant,
    finished: bool,
}

impl Attempt {
    /// Records the attempt, unless it failed through the client's fault (a
    /// bad or truncated request body, [`ErrorKind::BadRequest`]): that says
    /// nothing about the endpoint, so it moves neither its latency estimate,
    /// nor the outlier detector, nor the recent error rate. Otherwise any
    /// client could eject a healthy endpoint.
    pub fn finish(mut self, result: Result<StatusCode, ErrorKind>) {
        self.finished = true;
        if result != Err(ErrorKind::BadRequest) {
            self.cluster.record_attempt(self.idx, self.started, result);
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.finished {
            if let Some(endpoint) = self.cluster.endpoints.get(self.idx) {
                endpoint.health.observe_abandoned(self.started, Instant::now());
            }
        }
    }
}

pub struct Cluster {
    pub name: Arc<str>,
    pub config: ClusterConfig,
    /// The node section this cluster was built for (zone-aware routing reads it).
    pub node: NodeConfig,
    pub endpoints: Vec<Arc<Endpoint>>,
    round_robin: AtomicU64,
    /// `None` for tcp clusters.
    pub http: Option<HttpClient>,
    pub health: ClusterHealth,
    /// Error rate and latency percentiles of recent attempts, for `/clusters`.
    pub recent: recent::RecentRequests,
    /// Background outlier timers and health checks; stopped when the cluster drops.
    monitor: OnceLock<monitor::Monitor>,
    /// Overload protection state, shared by every route to this cluster.
    pub overload: ClusterOverload,
}

impl Cluster {
    /// Builds the cluster; its background work waits for [`Cluster::start`].
    pub fn new(config: &ClusterConfig, node: &NodeConfig, metrics: &Metrics) -> Arc<Self> {
        let now = Instant::now();
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| {
                let address = e.address.to_string();
                Arc::new(Endpoint {
                    target: Target::new(e.address, config.idle_timeout),
                    zone: e.zone.clone(),
                    weight: e.weight,
                    in_flight: AtomicUsize::new(0),
                    upstream_requests: StatusCounters::new(&metrics.upstream_requests, &[&config.name, &address]),
                    health: EndpointHealth::new(metrics.health.endpoint(&config.name, &address), now),
                })
            })
            .collect();
        let overload = ClusterOverload::new(config, &metrics.overload);
        let http = match config.protocol {
            ClusterProtocol::Tcp => None,
            // Validation loaded the same files moments ago; should they have
            // broken since, the cluster answers 503 rather than failing the reload.
            ClusterProtocol::Http1 | ClusterProtocol::Http2 | ClusterProtocol::Http3 => {
                match HttpClient::new(config, overload.connection_limits()) {
                    Ok(client) => Some(client),
                    Err(e) => {
                        tracing::error!(cluster = %config.name, error = %e, "cannot build the upstream client");
                        None
                    }
                }
            }
        };
        Arc::new(Self {
            name: Arc::from(config.name.as_str()),
            config: config.clone(),
            node: node.clone(),
            endpoints,
            round_robin: AtomicU64::new(0),
            http,
            health: ClusterHealth::new(config, node, &metrics.health),
            recent: recent::RecentRequests::default(),
            monitor: OnceLock::new(),
            overload,
        })
    }

    /// Starts the background work (outlier timers, health checks) once;
    /// must run on the tokio runtime.
    pub fn start(self: &Arc<Self>) {
        if self.monitor.get().is_none() {
            if let Some(monitor) = monitor::spawn(self) {
                // Only the app starts clusters, one reload at a time.
                let _ = self.monitor.set(monitor);
            }
        }
    }

    /// Whether a reload may keep this cluster (and its pools and health state).
    pub fn serves(&self, config: &ClusterConfig, node: &NodeConfig) -> bool {
        self.config == *config && self.node == *node
    }

    pub fn lb(&self) -> LbPolicy {
        self.config.lb
    }

    /// Chooses an endpoint, avoiding `exclude` when another is available.
    pub fn pick(&self, exclude: Option<usize>) -> Option<usize> {
        let plan = self.health.plan();
        let mut rng = rand::rng();
        let input = PickInput {
            counter: self.round_robin.fetch_add(1, Ordering::Relaxed),
            exclude,
            now: Instant::now(),
            ignore_health: plan.ignores_health(),
        };
        let zone = match plan.pick(&mut rng) {
            ZoneChoice::Any => None,
            ZoneChoice::Local => self.health.local_zone(),
            ZoneChoice::Remote(zone) => Some(zone),
        };
        let zone_of = |i: usize| self.endpoints[i].zone.as_deref().unwrap_or("");
        let in_zone = |i: usize| zone.is_none_or(|z| zone_of(i) == z);
        let picked = balancer::pick(self.lb(), &self.endpoints, in_zone, input, &mut rng);
        let picked = match picked {
            Some(i) if zone.is_none() || Some(i) != exclude => Some(i),
            // The chosen zone has no usable endpoint (the plan lags a state
            // change by a moment) or only the one a retry must avoid: any zone
            // beats failing the request.
            _ => balancer::pick(self.lb(), &self.endpoints, |_| true, input, &mut rng).or(picked),
        };
        if let Some(i) = picked {
            self.health.note_routed(self.endpoints[i].zone.as_deref());
        }
        picked
    }

    /// Starts timing one attempt on endpoint `idx`; see [`Attempt`].
    pub fn start_attempt(self: &Arc<Self>, idx: usize) -> Attempt {
        Attempt {
            cluster: self.clone(),
            idx,
            started: Instant::now(),
            finished: false,
        }
    }

    /// Feeds the result of one attempt on endpoint `idx`, started at
    /// `started`, into its latency estimate and the outlier detector.
    pub fn record_attempt(&self, idx: usize, started: Instant, result: Result<StatusCode, ErrorKind>) {
        let now = Instant::now();
        self.recent.record(recent::Sample {
            at: now,
            latency: now.saturating_duration_since(started),
            error: result.map_or(true, |s| s.is_server_error()),
        });
        self.health.record_attempt(&self.endpoints, idx, started, now, result);
    }

    /// [`Cluster::record_attempt`] for a tcp connection: only the connect
    /// is judged (a refused or timed-out connect is a gateway failure, as in Envoy).
    pub fn record_connect(&self, idx: usize, started: Instant, connected: bool) {
        let result = if connected {
            Ok(StatusCode::OK)
        } else {
            Err(ErrorKind::ConnectFailed)
        };
        self.record_attempt(idx, started, result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// A cluster with endpoints in `zones`, built outside a runtime (no monitor).
    fn cluster(zones: &[&str]) -> Arc<Cluster> {
        let endpoints: String = zones
            .iter()
            .enumerate()
            .map(|(i, z)| format!("      - {{ address: 127.0.0.1:{}, zone: {z} }}\n", 10_000 + i))
            .collect();
        let text = format!(
            "node: {{ zone: zone-a }}\nclusters:\n  - name: c\n    zone_aware: {{ min_cluster_size: 1 }}\n    endpoints:\n{endpoints}"
        );
        let config: Config = serde_yaml_ng::from_str(&text).unwrap();
        Cluster::new(&config.clusters[0], &config.node, &Metrics::new().unwrap())
    }

    fn zone_of(c: &Cluster, i: Option<usize>) -> &str {
        c.endpoints[i.unwrap()].zone.as_deref().unwrap()
    }

    #[test]
    fn picks_stay_local_until_the_local_zone_is_unusable() {
        let c = cluster(&["zone-a", "zone-a", "zone-b", "zone-b"]);
        assert!((0..200).all(|_| zone_of(&c, c.pick(None)) == "zone-a"));
        c.health.set_healthy(&c.endpoints, 0, false, "test");
        // Healthy share of zone-a 1/3 against its caller share 1/2: 2/3 stays.
        assert!((0..200).all(|_| c.pick(None) != Some(0)));
        assert!((c.status().zone_routing.local_share - 2.0 / 3.0).abs() < 1e-9);
        c.health.set_healthy(&c.endpoints, 1, false, "test");
        assert!((0..200).all(|_| zone_of(&c, c.pick(None)) == "zone-b"));
        let status = c.status();
        assert_eq!(status.zone_routing.routing, "spill");
        assert_eq!(status.endpoints[0].health, "unhealthy");
    }

    #[test]
    fn panic_mode_uses_every_endpoint_and_is_counted() {
        let c = cluster(&["zone-a", "zone-a", "zone-b"]);
        c.health.set_healthy(&c.endpoints, 0, false, "test");
        assert!((0..100).all(|_| c.pick(None) != Some(0)));
        // One usable endpoint of three is under the 50 % panic threshold.
        c.health.set_healthy(&c.endpoints, 2, false, "test");
        assert_eq!(c.status().zone_routing.routing, "panic");
        let picked: std::collections::HashSet<_> = (0..300).filter_map(|_| c.pick(None)).collect();
        assert_eq!(picked.len(), 3, "panic mode ignores health");
        c.health.set_healthy(&c.endpoints, 2, true, "test");
        assert_ne!(c.status().zone_routing.routing, "panic");
    }

    #[test]
    fn a_retry_leaves_the_zone_rather_than_repeat_the_failed_endpoint() {
        let c = cluster(&["zone-a", "zone-b", "zone-b"]);
        assert!((0..200).all(|_| c.pick(None) == Some(0)));
        assert!((0..200).all(|_| zone_of(&c, c.pick(Some(0))) == "zone-b"));
        // With nothing else usable, the excluded endpoint still beats no answer.
        let lonely = cluster(&["zone-a"]);
        assert_eq!(lonely.pick(Some(0)), Some(0));
    }
}
