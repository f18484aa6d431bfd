//! Metric families of service discovery: update attempts by result, the
//! endpoints each cluster has, and when its discovery last succeeded.
//!
//! Handles are resolved once per cluster when its discovery (or the cluster)
//! is built; an update only moves pre-resolved series. A cluster deleted by
//! a reload loses its gauges ([`DiscoveryFamilies::forget_cluster`]), so
//! `weft_cluster_endpoints` never reports a cluster that no longer exists.

use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct DiscoveryFamilies {
    updates: IntCounterVec,
    endpoints: IntGaugeVec,
    last_success: GaugeVec,
}

/// The `result` label values of `weft_discovery_updates_total`.
pub const UPDATE_RESULTS: [&str; 3] = ["ok", "error", "unchanged"];

impl DiscoveryFamilies {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let updates = IntCounterVec::new(
            Opts::new(
                "weft_discovery_updates_total",
                "Service discovery lookups by result: ok (a new endpoint set), unchanged, or error (the last set is kept).",
            ),
            &["cluster", "result"],
        )?;
        let endpoints = IntGaugeVec::new(
            Opts::new("weft_cluster_endpoints", "Endpoints a cluster has now."),
            &["cluster"],
        )?;
        let last_success = GaugeVec::new(
            Opts::new(
                "weft_discovery_last_success_timestamp_seconds",
                "Unix time of the cluster's last successful discovery lookup (ok or unchanged).",
            ),
            &["cluster"],
        )?;
        registry.register(Box::new(updates.clone()))?;
        registry.register(Box::new(endpoints.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        Ok(Self {
            updates,
            endpoints,
            last_success,
        })
    }

    /// The gauge of how many endpoints `cluster` has.
    pub fn endpoints(&self, cluster: &str) -> IntGauge {
        self.endpoints.with_label_values(&[cluster])
    }

    /// Removes the gauges of a cluster that no longer exists (its counters
    /// stay, as counters do). Handles still held by the old cluster keep
    /// working but are no longer exported.
    pub fn forget_cluster(&self, cluster: &str) {
        let _ = self.endpoints.remove_label_values(&[cluster]);
        let _ = self.last_success.remove_label_values(&[cluster]);
    }

    /// The series a cluster's discovery moves; every result starts at zero.
    pub fn cluster(&self, cluster: &str) -> DiscoveryMetrics {
        DiscoveryMetrics {
            updates: UPDATE_RESULTS.map(|result| self.updates.with_label_values(&[cluster, result])),
            last_success: self.last_success.with_label_values(&[cluster]),
        }
    }
}

pub struct DiscoveryMetrics {
    /// In the order of [`UPDATE_RESULTS`].
    updates: [IntCounter; 3],
    pub last_success: Gauge,
}

impl DiscoveryMetrics {
    /// Counts one lookup; `result` is one of [`UPDATE_RESULTS`].
    pub fn count(&self, result: &str) {
        if let Some(i) = UPDATE_RESULTS.iter().position(|r| *r == result) {
            self.updates[i].inc();
        }
    }
}
