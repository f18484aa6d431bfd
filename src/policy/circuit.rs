//! Circuit breaking: hard per-cluster limits in the manner of Envoy's
//! cluster circuit breakers (`max_connections`, `max_pending_requests`,
//! `max_requests`). Over any of them a request fails at once with
//! [`Overload::Circuit`] (503, `x-weft-overloaded: circuit`); nothing queues.
//!
//! What each limit counts, precisely (the per-endpoint pooled client has
//! no pending queue of its own, so the limits are enforced around it):
//! - `max_requests`: requests of this cluster from admission by this layer
//!   until their response body ends or is dropped (a retry is a new request).
//! - `max_connections`: upstream connections of this cluster that are being
//!   opened or are open, idle pooled ones included; enforced by the
//!   cluster's connector (`upstream::limit`), so a request that needs a new
//!   connection over the limit is refused. A request that finds an idle
//!   pooled connection needs none and is not affected.
//! - `max_pending_requests`: connection attempts in progress. With HTTP/1
//!   each request without an idle connection opens its own, so this is the
//!   number of requests waiting for a connection; with HTTP/2 the requests
//!   waiting for the shared connection count as one.
//!
//! Guarantee: each counter is reserved with a compare-and-swap before the
//! work starts and released by a drop guard, so a limit of N admits exactly
//! N at once, never N+1, under any concurrency.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus::IntCounter;

use crate::config::schema::CircuitBreakerConfig;
use crate::telemetry::metrics::OverloadFamilies;

/// Which circuit breaker limit refused a request; the `limit` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitLimit {
    MaxConnections,
    MaxPendingRequests,
    MaxRequests,
    /// Free file descriptors down to the reserve kept for accept and the
    /// admin port (`policy::descriptors`); refuses new upstream connections.
    FileDescriptors,
}

impl CircuitLimit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxPendingRequests => "max_pending_requests",
            Self::MaxRequests => "max_requests",
            Self::FileDescriptors => "file_descriptors",
        }
    }
}

/// The error a refused request carries through the upstream client, found
/// again by `upstream::connect_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOpen(pub CircuitLimit);

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} reached", self.0.as_str())
    }
}

impl std::error::Error for CircuitOpen {}

/// A counter with a ceiling; `None` means unlimited (still counted).
pub struct Gauge {
    current: AtomicUsize,
    max: Option<usize>,
    refused: IntCounter,
}

impl Gauge {
    fn new(max: Option<usize>, refused: IntCounter) -> Arc<Self> {
        Arc::new(Self {
            current: AtomicUsize::new(0),
            max,
            refused,
        })
    }

    /// Takes one unit if under the ceiling; the unit returns when the guard drops.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let max = self.max.unwrap_or(usize::MAX);
        let taken = self
            .current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .is_ok();
        if !taken {
            self.refused.inc();
        }
        taken.then(|| Slot(self.clone()))
    }

    pub fn current(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }

    /// The ceiling; `None` when unlimited.
    pub fn max(&self) -> Option<usize> {
        self.max
    }

    /// Units refused at the ceiling so far.
    pub fn refused(&self) -> u64 {
        self.refused.get()
    }

    /// Whether the next unit would be refused: the circuit is open.
    pub fn is_full(&self) -> bool {
        self.max.is_some_and(|max| self.current() >= max)
    }
}

/// One unit of a [`Gauge`], given back on drop.
pub struct Slot(Arc<Gauge>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One cluster's circuit breaker counters.
pub struct CircuitBreaker {
    pub requests: Arc<Gauge>,
    pub connections: Arc<Gauge>,
    pub pending: Arc<Gauge>,
    /// New connections refused for want of free descriptors.
    pub descriptors_refused: IntCounter,
}

impl CircuitBreaker {
    pub fn new(config: &CircuitBreakerConfig, cluster: &str, families: &OverloadFamilies) -> Self {
        let refused = |limit: CircuitLimit| families.circuit_open.with_label_values(&[cluster, limit.as_str()]);
        Self {
            requests: Gauge::new(config.max_requests, refused(CircuitLimit::MaxRequests)),
            connections: Gauge::new(config.max_connections, refused(CircuitLimit::MaxConnections)),
            pending: Gauge::new(config.max_pending_requests, refused(CircuitLimit::MaxPendingRequests)),
            descriptors_refused: refused(CircuitLimit::FileDescriptors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::Metrics;

    #[test]
    fn gauge_admits_exactly_its_ceiling() {
        let metrics = Metrics::new().unwrap();
        let config = CircuitBreakerConfig {
            max_requests: Some(3),
            ..CircuitBreakerConfig::default()
        };
        let breaker = CircuitBreaker::new(&config, "c", &metrics.overload);
        let slots: Vec<Slot> = (0..10).filter_map(|_| breaker.requests.try_acquire()).collect();
        assert_eq!(slots.len(), 3);
        drop(slots);
        assert_eq!(breaker.requests.current(), 0);
        assert!(breaker.connections.try_acquire().is_some());
        let open = metrics.overload.circuit_open.with_label_values(&["c", "max_requests"]);
        assert_eq!(open.get(), 7);
    }
}
