//! The app-owned Prometheus registry and metric families. Families are
//! registered once at start-up and survive config reloads; handles with fixed
//! labels are resolved when a config snapshot is built, so a request only
//! resolves its `status` label (through a small cache, see [`StatusCounters`]).

use std::sync::{Arc, RwLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_requests: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub downstream_connections_active: IntGaugeVec,
    pub downstream_connections: IntCounterVec,
    pub tls_certificate_reloads: IntCounterVec,
    pub health: super::health::HealthMetrics,
    pub mirror: super::mirror::MirrorMetrics,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let config_reloads = counter(
            &registry,
            "weft_config_reloads_total",
            "Config reload attempts by result.",
            &["result"],
        )?;
        // Both series exist from the start, so alerts on errors see a zero.
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "weft_request_duration_seconds",
                "Time from request to response headers, per route and cluster.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["listener", "route", "cluster"],
        )?;
        registry.register(Box::new(request_duration.clone()))?;
        let downstream_connections_active = IntGaugeVec::new(
            Opts::new(
                "weft_downstream_connections_active",
                "Open downstream connections per listener.",
            ),
            &["listener"],
        )?;
        registry.register(Box::new(downstream_connections_active.clone()))?;
        Ok(Self {
            requests: counter(
                &registry,
                "weft_requests_total",
                "Requests answered, by listener, route, cluster and status.",
                &["listener", "route", "cluster", "status"],
            )?,
            request_duration,
            upstream_requests: counter(
                &registry,
                "weft_upstream_requests_total",
                "Requests sent to upstream endpoints, by status.",
                &["cluster", "endpoint", "status"],
            )?,
            config_reloads,
            tls_certificate_reloads: counter(
                &registry,
                "weft_tls_certificate_reloads_total",
                "Listener certificate reload attempts by result.",
                &["listener", "result"],
            )?,
            downstream_connections_active,
            downstream_connections: counter(
                &registry,
                "weft_downstream_connections_total",
                "Downstream connections accepted per listener.",
                &["listener"],
            )?,
            health: super::health::HealthMetrics::new(&registry)?,
            mirror: super::mirror::MirrorMetrics::new(&registry)?,
            registry,
        })
    }

    /// Prometheus text exposition of every family.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on metric families with invalid
        // names, which `new` would already have refused.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Counters of one label set that differ only by `status`; each status code's
/// handle is resolved once and then read under an uncontended read lock.
pub struct StatusCounters {
    family: IntCounterVec,
    labels: Vec<String>,
    cache: RwLock<Vec<(u16, IntCounter)>>,
}

impl StatusCounters {
    pub fn new(family: &IntCounterVec, labels: &[&str]) -> Self {
        Self {
            family: family.clone(),
            labels: labels.iter().map(ToString::to_string).collect(),
            cache: RwLock::new(Vec::new()),
        }
    }

    pub fn inc(&self, status: u16) {
        if let Ok(cache) = self.cache.read() {
            if let Some((_, c)) = cache.iter().find(|(s, _)| *s == status) {
                c.inc();
                return;
            }
        }
        let mut values: Vec<&str> = self.labels.iter().map(String::as_str).collect();
        let status_text = status.to_string();
        values.push(&status_text);
        let counter = self.family.with_label_values(&values);
        counter.inc();
        if let Ok(mut cache) = self.cache.write() {
            cache.push((status, counter));
        }
    }
}

/// Pre-resolved handles for one (listener, route, cluster).
pub struct RouteMetrics {
    pub requests: StatusCounters,
    pub duration: Histogram,
}

impl RouteMetrics {
    pub fn new(metrics: &Metrics, listener: &str, route: &str, cluster: &str) -> Arc<Self> {
        Arc::new(Self {
            requests: StatusCounters::new(&metrics.requests, &[listener, route, cluster]),
            duration: metrics.request_duration.with_label_values(&[listener, route, cluster]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counters_count_per_status() {
        let metrics = Metrics::new().unwrap();
        let counters = StatusCounters::new(&metrics.requests, &["l", "r", "c"]);
        counters.inc(200);
        counters.inc(200);
        counters.inc(503);
        assert_eq!(metrics.requests.with_label_values(&["l", "r", "c", "200"]).get(), 2);
        assert_eq!(metrics.requests.with_label_values(&["l", "r", "c", "503"]).get(), 1);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            text.contains("weft_requests_total{cluster=\"c\",listener=\"l\",route=\"r\",status=\"200\"} 2"),
            "{text}"
        );
    }
}
