//! A cluster's endpoints: each [`Endpoint`] with its connection pool,
//! in-flight count and health, the [`EndpointSet`] a cluster serves from
//! (replaced whole on every change, read with one atomic load), and the diff
//! that builds the next set from what a source reports.
//!
//! Guarantees:
//! - An endpoint is identified by address and zone. [`EndpointSet::updated`]
//!   carries the very same `Arc<Endpoint>` over for every reported endpoint
//!   already in the set (pool, peak-EWMA, ejection and health state, id; a
//!   changed weight is applied in place); new ones start fresh and usable;
//!   removed ones are only dropped from the set, so requests holding them
//!   finish, and their pool closes its connections when the last holder lets go.
//! - Endpoint ids are unique for the life of the process and never reused,
//!   so an id held across a set change (a retry's "avoid this one") never
//!   names another endpoint.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::time::{Duration, Instant};

use super::health::EndpointHealth;
use crate::config::schema::EndpointConfig;
use crate::policy::balancer;
use crate::telemetry::health::HealthMetrics;
use crate::telemetry::metrics::StatusCounters;
use crate::upstream::Target;

/// A process-wide endpoint id (see the module guarantees).
pub type EndpointId = usize;

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// One endpoint as a source reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointSpec {
    pub address: SocketAddr,
    pub zone: Option<String>,
    pub weight: u32,
}

impl From<&EndpointConfig> for EndpointSpec {
    fn from(e: &EndpointConfig) -> Self {
        Self {
            address: e.address,
            zone: e.zone.clone(),
            weight: e.weight,
        }
    }
}

pub struct Endpoint {
    pub id: EndpointId,
    /// Address, authority and connection pool.
    pub target: Target,
    pub zone: Option<String>,
    weight: AtomicU32,
    /// Where the endpoint came from: `static`, `dns:NAME:PORT` or `file:PATH`.
    pub source: Arc<str>,
    /// Requests sent and not yet finished (response body fully read or dropped).
    in_flight: AtomicUsize,
    pub upstream_requests: StatusCounters,
    pub health: EndpointHealth,
}

impl Endpoint {
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

impl balancer::Candidate for Arc<Endpoint> {
    fn weight(&self) -> u32 {
        Endpoint::weight(self)
    }
    fn in_flight(&self) -> usize {
        Endpoint::in_flight(self)
    }
    fn available(&self) -> bool {
        self.health.available()
    }
    fn latency_load(&self, now: Instant) -> f64 {
        self.health.load(now, Endpoint::in_flight(self))
    }
}

/// Counts a request as in flight on its endpoint until dropped.
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a cluster needs to build endpoints: its name, pool settings and metric families.
pub struct EndpointFactory {
    pub cluster: Arc<str>,
    pub idle_timeout: Duration,
    pub upstream_requests: prometheus::IntCounterVec,
    pub health: HealthMetrics,
}

impl EndpointFactory {
    pub fn build(&self, spec: &EndpointSpec, source: &Arc<str>, now: Instant) -> Arc<Endpoint> {
        let address = spec.address.to_string();
        Arc::new(Endpoint {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            target: Target::new(spec.address, self.idle_timeout),
            zone: spec.zone.clone(),
            weight: AtomicU32::new(spec.weight),
            source: source.clone(),
            in_flight: AtomicUsize::new(0),
            upstream_requests: StatusCounters::new(&self.upstream_requests, &[&self.cluster, &address]),
            health: EndpointHealth::new(self.health.endpoint(&self.cluster, &address), now),
        })
    }
}

/// The endpoints a cluster picks from, in the order their source listed them.
#[derive(Default)]
pub struct EndpointSet {
    endpoints: Vec<Arc<Endpoint>>,
}

/// What changed between two sets.
#[derive(Default)]
pub struct SetChange {
    pub added: Vec<Arc<Endpoint>>,
    pub removed: Vec<Arc<Endpoint>>,
    /// Endpoints kept whose weight changed.
    pub reweighted: usize,
}

impl SetChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.reweighted == 0
    }
}

impl std::ops::Deref for EndpointSet {
    type Target = [Arc<Endpoint>];
    fn deref(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }
}

impl EndpointSet {
    /// Where endpoint `id` is in this set.
    pub fn position(&self, id: EndpointId) -> Option<usize> {
        self.endpoints.iter().position(|e| e.id == id)
    }

    pub fn by_id(&self, id: EndpointId) -> Option<&Arc<Endpoint>> {
        self.endpoints.iter().find(|e| e.id == id)
    }

    /// The set `specs` describe, reusing this set's endpoints (see the
    /// module guarantees); duplicates in `specs` count once. Linear in the
    /// sizes of both sets.
    pub fn updated(
        &self,
        specs: &[EndpointSpec],
        source: &Arc<str>,
        factory: &EndpointFactory,
        now: Instant,
    ) -> (EndpointSet, SetChange) {
        let mut current: HashMap<(SocketAddr, Option<&str>), &Arc<Endpoint>> = self
            .endpoints
            .iter()
            .map(|e| ((e.target.address, e.zone.as_deref()), e))
            .collect();
        let mut seen = HashSet::with_capacity(specs.len());
        let mut change = SetChange::default();
        let mut endpoints: Vec<Arc<Endpoint>> = Vec::with_capacity(specs.len());
        for spec in specs {
            let key = (spec.address, spec.zone.as_deref());
            if !seen.insert(key) {
                continue;
            }
            let endpoint = match current.remove(&key) {
                Some(e) => {
                    if e.weight.swap(spec.weight, Ordering::Relaxed) != spec.weight {
                        change.reweighted += 1;
                    }
                    e.clone()
                }
                None => {
                    let e = factory.build(spec, source, now);
                    change.added.push(e.clone());
                    e
                }
            };
            endpoints.push(endpoint);
        }
        change.removed = self
            .endpoints
            .iter()
            .filter(|e| current.contains_key(&(e.target.address, e.zone.as_deref())))
            .cloned()
            .collect();
        (EndpointSet { endpoints }, change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::Metrics;

    fn factory() -> EndpointFactory {
        let metrics = Metrics::new().unwrap();
        EndpointFactory {
            cluster: Arc::from("c"),
            idle_timeout: Duration::from_secs(60),
            upstream_requests: metrics.upstream_requests.clone(),
            health: metrics.health.clone(),
        }
    }

    fn spec(port: u16, zone: &str, weight: u32) -> EndpointSpec {
        EndpointSpec {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            zone: Some(zone.to_string()),
            weight,
        }
    }

    #[test]
    fn an_update_keeps_the_endpoints_that_stay() {
        let (factory, source, now) = (factory(), Arc::from("test"), Instant::now());
        let (first, change) = EndpointSet::default().updated(
            &[spec(1, "a", 1), spec(2, "a", 1), spec(3, "b", 1)],
            &source,
            &factory,
            now,
        );
        assert_eq!((change.added.len(), change.removed.len()), (3, 0));
        let _held = first[1].start_request();
        // 1 stays (reweighted), 2 goes, 3 changes zone (a different endpoint), 4 joins; 4 twice counts once.
        let specs = [spec(1, "a", 5), spec(3, "c", 1), spec(4, "b", 1), spec(4, "b", 1)];
        let (second, change) = first.updated(&specs, &source, &factory, now);
        assert_eq!(second.len(), 3);
        assert!(Arc::ptr_eq(&second[0], &first[0]), "the same endpoint, pool and health");
        assert_eq!((second[0].weight(), change.reweighted), (5, 1));
        let removed: Vec<u16> = change.removed.iter().map(|e| e.target.address.port()).collect();
        assert_eq!(removed, [2, 3]);
        assert_eq!(change.added.len(), 2);
        assert_eq!(
            change.removed[0].in_flight(),
            1,
            "a removed endpoint still counts its requests"
        );
        assert!(second.iter().all(|e| e.id != first[1].id && e.id != first[2].id));
        assert_eq!(second.position(first[0].id), Some(0));
        let (third, change) = second.updated(&specs, &source, &factory, now);
        assert!(change.is_empty());
        assert!(third.iter().zip(second.iter()).all(|(a, b)| Arc::ptr_eq(a, b)));
    }
}
