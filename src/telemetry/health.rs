//! Metric families of endpoint health: outlier ejections, ejection and
//! health-check state per endpoint, zone routing and panic mode.
//!
//! Like the rest of `metrics.rs`, families are registered once per app and
//! handles with fixed labels are resolved when a cluster is built, so the
//! request path only increments pre-resolved counters.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct HealthMetrics {
    outlier_ejections: IntCounterVec,
    endpoint_ejected: IntGaugeVec,
    endpoint_healthy: IntGaugeVec,
    zone_routed_requests: IntCounterVec,
    cluster_panic: IntGaugeVec,
    cluster_panics: IntCounterVec,
}

fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: M) -> prometheus::Result<M> {
    registry.register(Box::new(m.clone()))?;
    Ok(m)
}

impl HealthMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
        };
        Ok(Self {
            outlier_ejections: counter(
                "weft_outlier_ejections_total",
                "Endpoints ejected by outlier detection, by reason.",
                &["cluster", "reason"],
            )?,
            endpoint_ejected: gauge(
                "weft_endpoint_ejected",
                "1 while outlier detection has the endpoint ejected.",
                &["cluster", "endpoint"],
            )?,
            endpoint_healthy: gauge(
                "weft_endpoint_healthy",
                "0 while active health checks mark the endpoint unhealthy.",
                &["cluster", "endpoint"],
            )?,
            zone_routed_requests: counter(
                "weft_zone_routed_requests_total",
                "Requests sent to an endpoint in the local zone or another one (only with node.zone).",
                &["cluster", "locality"],
            )?,
            cluster_panic: gauge(
                "weft_cluster_panic",
                "1 while too few endpoints are usable and health is ignored (panic mode).",
                &["cluster"],
            )?,
            cluster_panics: counter(
                "weft_zone_panic_total",
                "Times the cluster entered panic mode.",
                &["cluster"],
            )?,
        })
    }

    pub fn cluster(&self, cluster: &str) -> ClusterHealthMetrics {
        ClusterHealthMetrics {
            ejections: EJECT_REASONS.map(|reason| self.outlier_ejections.with_label_values(&[cluster, reason])),
            routed_local: self.zone_routed_requests.with_label_values(&[cluster, "local"]),
            routed_remote: self.zone_routed_requests.with_label_values(&[cluster, "remote"]),
            panic: self.cluster_panic.with_label_values(&[cluster]),
            panics: self.cluster_panics.with_label_values(&[cluster]),
        }
    }

    pub fn endpoint(&self, cluster: &str, endpoint: &str) -> EndpointHealthMetrics {
        let ejected = self.endpoint_ejected.with_label_values(&[cluster, endpoint]);
        let healthy = self.endpoint_healthy.with_label_values(&[cluster, endpoint]);
        // A rebuilt cluster starts fresh; the series may still hold the old state.
        ejected.set(0);
        healthy.set(1);
        EndpointHealthMetrics { ejected, healthy }
    }

    /// Drops the series of an endpoint that left its cluster's set.
    pub fn forget_endpoint(&self, cluster: &str, endpoint: &str) {
        let _ = self.endpoint_ejected.remove_label_values(&[cluster, endpoint]);
        let _ = self.endpoint_healthy.remove_label_values(&[cluster, endpoint]);
    }
}

/// The `reason` label values of `weft_outlier_ejections_total` (Envoy's
/// outlier detection types).
pub const EJECT_REASONS: [&str; 3] = ["consecutive_5xx", "consecutive_gateway_failure", "success_rate"];

pub struct ClusterHealthMetrics {
    ejections: [IntCounter; 3],
    pub routed_local: IntCounter,
    pub routed_remote: IntCounter,
    pub panic: IntGauge,
    pub panics: IntCounter,
}

impl ClusterHealthMetrics {
    /// The ejection counter for `reason`, one of [`EJECT_REASONS`].
    pub fn ejection(&self, reason: &str) -> Option<&IntCounter> {
        let i = EJECT_REASONS.iter().position(|r| *r == reason)?;
        self.ejections.get(i)
    }
}

pub struct EndpointHealthMetrics {
    pub ejected: IntGauge,
    pub healthy: IntGauge,
}
