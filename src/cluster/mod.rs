//! A cluster: a named set of endpoints, a balancing policy, the pooled
//! upstream client that speaks the cluster's protocol to them, and the
//! endpoints' health (latency EWMA, outlier ejection, active health checks,
//! zone-aware routing; see `health.rs`). The set is fixed (`endpoints`) or
//! discovered (`discovery/`), and replaced whole on each change. A cluster
//! of `type: original_destination` has no endpoints: it sends each request
//! to its own original destination (see `original_destination.rs`).
//!
//! Guarantees: [`Cluster::pick`] only returns an endpoint that is usable
//! (neither ejected nor failing health checks) unless the cluster is in panic
//! mode, prefers the zone the current zone plan chose, and avoids `exclude`
//! whenever any other usable endpoint exists, even in another zone. A pick
//! reads the endpoint set with one atomic load, whatever its size or how
//! often it changes. [`Cluster::update_endpoints`] is a diff (see
//! `endpoints.rs`): endpoints that stay keep their pool and health state,
//! and the outlier detector, zone plan and monitor follow the new set.

pub mod discovery;
pub mod endpoints;
pub mod health;
pub mod health_check;
pub mod monitor;
pub mod original_destination;
pub mod overload;
pub mod recent;
pub mod service;
pub mod status;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use http::StatusCode;
use prometheus::IntGauge;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::discovery::ResolverConfig;
use crate::config::schema::{ClusterConfig, ClusterProtocol, LbPolicy, NodeConfig};
use crate::core::error::ErrorKind;
use crate::policy::balancer::{self, PickInput};
use crate::policy::zone::ZoneChoice;
use crate::telemetry::metrics::Metrics;
use crate::upstream::HttpClient;
use endpoints::EndpointFactory;
pub use endpoints::{Endpoint, EndpointId, EndpointSet, EndpointSpec, InFlight, SetChange};
use health::ClusterHealth;
use overload::ClusterOverload;

/// One attempt on an endpoint, from send to response headers.
///
/// If the attempt is dropped unfinished (route timeout, client gone), the time
/// it ran still goes into the endpoint's latency estimate: otherwise an
/// endpoint that hangs would never report a sample, its estimate would decay,
/// and `p2c_ewma` would send it more traffic. Such an attempt is not an
/// outlier-detection failure, as a client going away is not the endpoint's fault.
pub struct Attempt {
    cluster: Arc<Cluster>,
    endpoint: Arc<Endpoint>,
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
            self.cluster.record_attempt(&self.endpoint, self.started, result);
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.finished {
            self.endpoint.health.observe_abandoned(self.started, Instant::now());
        }
    }
}

/// The `source` of endpoints listed in the config.
const STATIC_SOURCE: &str = "static";

pub struct Cluster {
    pub name: Arc<str>,
    pub config: ClusterConfig,
    /// The node section this cluster was built for (zone-aware routing reads it).
    pub node: NodeConfig,
    endpoints: ArcSwap<EndpointSet>,
    factory: EndpointFactory,
    /// Serialises set updates, so each diff starts from the set before it.
    updating: parking_lot::Mutex<()>,
    /// Wakes the monitor to follow a new set (health checks start and stop).
    set_changed: Arc<Notify>,
    endpoint_count: IntGauge,
    /// Where the endpoints come from, when they are not fixed.
    pub discovery: Option<Arc<discovery::Discovery>>,
    round_robin: AtomicU64,
    /// `None` for tcp and udp clusters.
    pub http: Option<HttpClient>,
    pub health: ClusterHealth,
    /// Error rate and latency percentiles of recent attempts, for `/clusters`.
    pub recent: recent::RecentRequests,
    /// Background outlier timers, health checks and discovery updates; stopped when the cluster drops.
    monitor: OnceLock<monitor::Monitor>,
    /// Overload protection state, shared by every route to this cluster.
    pub overload: ClusterOverload,
    /// `Some` for `type: original_destination`: no endpoints; each request
    /// goes to its own original destination.
    pub original_destination: Option<original_destination::OriginalDestinations>,
}

impl Cluster {
    /// Builds the cluster with the config's endpoints, or with the last set
    /// `discovery` found; its background work waits for [`Cluster::start`].
    pub fn new(
        config: &ClusterConfig,
        node: &NodeConfig,
        metrics: &Metrics,
        discovery: Option<Arc<discovery::Discovery>>,
    ) -> Arc<Self> {
        let factory = EndpointFactory {
            cluster: Arc::from(config.name.as_str()),
            idle_timeout: config.idle_timeout,
            upstream_requests: metrics.upstream_requests.clone(),
            health: metrics.health.clone(),
        };
        let (specs, source) = match &discovery {
            Some(d) => (
                d.published().endpoints.map(|l| l.to_vec()).unwrap_or_default(),
                d.source().clone(),
            ),
            None => (
                config.endpoints.iter().map(EndpointSpec::from).collect(),
                Arc::from(STATIC_SOURCE),
            ),
        };
        let (set, _) = EndpointSet::default().updated(&specs, &source, &factory, Instant::now());
        let endpoint_count = metrics.discovery.endpoints(&config.name);
        endpoint_count.set(set.len() as i64);
        let overload = ClusterOverload::new(config, &metrics.overload);
        let http = match config.protocol {
            ClusterProtocol::Tcp | ClusterProtocol::Udp => None,
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
        let health_config = config
            .is_original_destination()
            .then(|| original_destination::health_config(config));
        let original_destination = config
            .is_original_destination()
            .then(|| original_destination::OriginalDestinations::new(config, overload.connection_limits()));
        Arc::new(Self {
            name: factory.cluster.clone(),
            config: config.clone(),
            node: node.clone(),
            health: ClusterHealth::new(health_config.as_ref().unwrap_or(config), node, &metrics.health, &set),
            endpoints: ArcSwap::from_pointee(set),
            factory,
            updating: parking_lot::Mutex::new(()),
            set_changed: Arc::new(Notify::new()),
            endpoint_count,
            discovery,
            round_robin: AtomicU64::new(0),
            http,
            recent: recent::RecentRequests::default(),
            monitor: OnceLock::new(),
            overload,
            original_destination,
        })
    }

    /// Starts the background work (the discovery, outlier timers, health
    /// checks, following discovered sets) once; must run on the tokio runtime.
    pub fn start(self: &Arc<Self>) {
        if let Some(discovery) = &self.discovery {
            discovery.start();
        }
        if self.monitor.get().is_none() {
            if let Some(monitor) = monitor::spawn(self) {
                // Only the app starts clusters, one reload at a time.
                let _ = self.monitor.set(monitor);
            }
        }
    }

    /// Whether a reload may keep this cluster (and its pools, health state
    /// and discovery).
    pub fn serves(&self, config: &ClusterConfig, node: &NodeConfig, resolver: Option<&ResolverConfig>) -> bool {
        self.config == *config
            && self.node == *node
            && self.discovery.as_ref().is_none_or(|d| d.serves(config, resolver))
    }

    /// Whether `address` is one of the cluster's endpoints now.
    pub fn has_endpoint(&self, address: std::net::SocketAddr) -> bool {
        self.endpoints().iter().any(|e| e.target.address == address)
    }

    pub fn lb(&self) -> LbPolicy {
        self.config.lb
    }

    /// The endpoint set now in force (one atomic load).
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.endpoints.load()
    }

    /// Makes the set the one `specs` describe, as a diff (see `endpoints.rs`);
    /// endpoints it adds are marked as coming from `source`.
    pub fn update_endpoints(&self, specs: &[EndpointSpec], source: &Arc<str>) -> SetChange {
        let _serialised = self.updating.lock();
        let (next, change) = self
            .endpoints
            .load()
            .updated(specs, source, &self.factory, Instant::now());
        if change.added.is_empty() && change.removed.is_empty() {
            return change;
        }
        let total = next.len();
        let staying: std::collections::HashSet<_> = next.iter().map(|e| e.target.address).collect();
        self.endpoints.store(Arc::new(next));
        self.health.follow(&self.endpoints);
        self.endpoint_count.set(total as i64);
        for gone in change.removed.iter().filter(|e| !staying.contains(&e.target.address)) {
            self.factory
                .health
                .forget_endpoint(&self.name, &gone.target.address.to_string());
        }
        self.set_changed.notify_one();
        tracing::info!(
            cluster = %self.name,
            added = change.added.len(),
            removed = change.removed.len(),
            total,
            "endpoint set updated"
        );
        change
    }

    /// Applies the last set the cluster's discovery found, if any (a no-op
    /// when the cluster already has it).
    pub fn sync_discovered(&self) {
        let Some(published) = self.discovery.as_ref().map(|d| d.published()) else {
            return;
        };
        if let Some(specs) = &published.endpoints {
            self.update_endpoints(specs, &published.source);
        }
    }

    /// Chooses an endpoint, avoiding endpoint `exclude` when another is available.
    pub fn pick(&self, exclude: Option<EndpointId>) -> Option<Arc<Endpoint>> {
        let set = self.endpoints.load();
        let endpoints: &[Arc<Endpoint>] = &set;
        let plan = self.health.plan();
        let mut rng = rand::rng();
        let input = PickInput {
            counter: self.round_robin.fetch_add(1, Ordering::Relaxed),
            exclude: exclude.and_then(|id| set.position(id)),
            now: Instant::now(),
            ignore_health: plan.ignores_health(),
        };
        let zone = match plan.pick(&mut rng) {
            ZoneChoice::Any => None,
            ZoneChoice::Local => self.health.local_zone(),
            ZoneChoice::Remote(zone) => Some(zone),
        };
        let zone_of = |i: usize| endpoints[i].zone.as_deref().unwrap_or("");
        let in_zone = |i: usize| zone.is_none_or(|z| zone_of(i) == z);
        let picked = balancer::pick(self.lb(), endpoints, in_zone, input, &mut rng);
        let picked = match picked {
            Some(i) if zone.is_none() || Some(i) != input.exclude => Some(i),
            // The chosen zone has no usable endpoint (the plan lags a state
            // change by a moment) or only the one a retry must avoid: any zone
            // beats failing the request.
            _ => balancer::pick(self.lb(), endpoints, |_| true, input, &mut rng).or(picked),
        };
        let endpoint = endpoints.get(picked?)?;
        self.health.note_routed(endpoint.zone.as_deref());
        Some(endpoint.clone())
    }

    /// Starts timing one attempt on `endpoint`; see [`Attempt`].
    pub fn start_attempt(self: &Arc<Self>, endpoint: &Arc<Endpoint>) -> Attempt {
        Attempt {
            cluster: self.clone(),
            endpoint: endpoint.clone(),
            started: Instant::now(),
            finished: false,
        }
    }

    /// Feeds the result of one attempt on `endpoint`, started at `started`,
    /// into its latency estimate and the outlier detector.
    pub fn record_attempt(&self, endpoint: &Endpoint, started: Instant, result: Result<StatusCode, ErrorKind>) {
        let now = Instant::now();
        self.recent.record(recent::Sample {
            at: now,
            latency: now.saturating_duration_since(started),
            error: result.map_or(true, |s| s.is_server_error()),
        });
        self.health
            .record_attempt(&self.endpoints, endpoint, started, now, result);
    }

    /// [`Cluster::record_attempt`] for a tcp connection: only the connect
    /// is judged (a refused or timed-out connect is a gateway failure, as in Envoy).
    pub fn record_connect(&self, endpoint: &Endpoint, started: Instant, connected: bool) {
        let result = if connected {
            Ok(StatusCode::OK)
        } else {
            Err(ErrorKind::ConnectFailed)
        };
        self.record_attempt(endpoint, started, result);
    }

    /// Records an active health-check verdict change of `endpoint`.
    pub fn set_healthy(&self, endpoint: &Endpoint, healthy: bool, detail: &str) {
        self.health.set_healthy(&self.endpoints, endpoint, healthy, detail);
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
        Cluster::new(&config.clusters[0], &config.node, &Metrics::new().unwrap(), None)
    }

    fn zone_of(e: Option<Arc<Endpoint>>) -> String {
        e.unwrap().zone.clone().unwrap()
    }

    /// The position of the picked endpoint in the set.
    fn index(c: &Cluster, e: Option<Arc<Endpoint>>) -> Option<usize> {
        c.endpoints().position(e?.id)
    }

    fn set_healthy(c: &Cluster, i: usize, healthy: bool) {
        let endpoint = c.endpoints()[i].clone();
        c.set_healthy(&endpoint, healthy, "test");
    }

    fn id(c: &Cluster, i: usize) -> EndpointId {
        c.endpoints()[i].id
    }

    #[test]
    fn picks_stay_local_until_the_local_zone_is_unusable() {
        let c = cluster(&["zone-a", "zone-a", "zone-b", "zone-b"]);
        assert!((0..200).all(|_| zone_of(c.pick(None)) == "zone-a"));
        set_healthy(&c, 0, false);
        // Healthy share of zone-a 1/3 against its caller share 1/2: 2/3 stays.
        assert!((0..200).all(|_| index(&c, c.pick(None)) != Some(0)));
        assert!((c.status().zone_routing.local_share - 2.0 / 3.0).abs() < 1e-9);
        set_healthy(&c, 1, false);
        assert!((0..200).all(|_| zone_of(c.pick(None)) == "zone-b"));
        let status = c.status();
        assert_eq!(status.zone_routing.routing, "spill");
        assert_eq!(status.endpoints[0].health, "unhealthy");
    }

    #[test]
    fn an_update_moves_picks_and_the_zone_plan_to_the_new_set() {
        let c = cluster(&["zone-a", "zone-b"]);
        assert!((0..100).all(|_| zone_of(c.pick(None)) == "zone-a"));
        let kept = c.endpoints()[1].clone();
        set_healthy(&c, 1, false);
        let spec = |port: u16| EndpointSpec {
            address: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            zone: Some("zone-b".into()),
            weight: 1,
        };
        // zone-a's only endpoint leaves; zone-b's stays (unhealthy) and one joins.
        let change = c.update_endpoints(&[spec(10_001), spec(20_000)], &Arc::from("test"));
        assert_eq!((change.added.len(), change.removed.len()), (1, 1));
        assert!(Arc::ptr_eq(&c.endpoints()[0], &kept));
        assert!(!kept.health.is_healthy(), "health state carried over");
        // Only the new endpoint is usable; a retry may avoid a removed id safely.
        let removed = change.removed[0].id;
        assert!((0..100).all(|_| c.pick(Some(removed)).unwrap().target.address.port() == 20_000));
        assert_eq!(c.status().zone_routing.local_share, 0.0);
        assert_eq!(c.status().endpoints[1].source, "test");
    }

    #[test]
    fn panic_mode_uses_every_endpoint_and_is_counted() {
        let c = cluster(&["zone-a", "zone-a", "zone-b"]);
        set_healthy(&c, 0, false);
        assert!((0..100).all(|_| index(&c, c.pick(None)) != Some(0)));
        // One usable endpoint of three is under the 50 % panic threshold.
        set_healthy(&c, 2, false);
        assert_eq!(c.status().zone_routing.routing, "panic");
        let picked: std::collections::HashSet<_> = (0..300).filter_map(|_| index(&c, c.pick(None))).collect();
        assert_eq!(picked.len(), 3, "panic mode ignores health");
        set_healthy(&c, 2, true);
        assert_ne!(c.status().zone_routing.routing, "panic");
    }

    #[test]
    fn a_retry_leaves_the_zone_rather_than_repeat_the_failed_endpoint() {
        let c = cluster(&["zone-a", "zone-b", "zone-b"]);
        assert!((0..200).all(|_| index(&c, c.pick(None)) == Some(0)));
        assert!((0..200).all(|_| zone_of(c.pick(Some(id(&c, 0)))) == "zone-b"));
        // With nothing else usable, the excluded endpoint still beats no answer.
        let lonely = cluster(&["zone-a"]);
        assert_eq!(index(&lonely, lonely.pick(Some(id(&lonely, 0)))), Some(0));
    }
}
