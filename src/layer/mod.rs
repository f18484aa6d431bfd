//! Tower layers on the request path. Each is composed in `crate::stack` only.
//! [`ClusterOverload`] holds the per-cluster state of the overload layers, so
//! it lives (and survives config reloads) with its `Cluster`.

pub mod adaptive_concurrency;
pub mod circuit_breaker;
pub mod mirror;
pub mod retry;
pub mod timeout;

use std::sync::Arc;

use crate::config::schema::ClusterConfig;
use crate::telemetry::metrics::OverloadFamilies;
use adaptive_concurrency::ConcurrencyLimiter;
use circuit_breaker::connector::ConnectionLimits;
use circuit_breaker::CircuitBreaker;
use retry::RetryState;

/// One cluster's adaptive concurrency limiter, circuit breaker and retry budget.
pub struct ClusterOverload {
    pub concurrency: Option<Arc<ConcurrencyLimiter>>,
    pub circuit: Option<Arc<CircuitBreaker>>,
    /// Always present: a route with `retry` gets the default budget unless
    /// the cluster sets its own, so retries never go unbudgeted.
    pub retry: Arc<RetryState>,
}

impl ClusterOverload {
    pub fn new(config: &ClusterConfig, families: &OverloadFamilies) -> Self {
        let name = config.name.as_str();
        Self {
            concurrency: config
                .adaptive_concurrency
                .as_ref()
                .map(|c| Arc::new(ConcurrencyLimiter::new(c, name, families))),
            circuit: config
                .circuit_breaker
                .as_ref()
                .map(|c| Arc::new(CircuitBreaker::new(c, name, families))),
            retry: Arc::new(RetryState::new(
                &config.retry_budget.clone().unwrap_or_default(),
                name,
                families,
            )),
        }
    }

    /// The connector's limits, when the cluster has a circuit breaker.
    pub fn connection_limits(&self) -> Option<ConnectionLimits> {
        self.circuit.as_deref().map(ConnectionLimits::new)
    }
}
