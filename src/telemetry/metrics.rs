//! The app-owned Prometheus registry and metric families. Families are
//! registered once at start-up and survive config reloads; handles with fixed
//! labels are resolved when a config snapshot is built, so a request only
//! resolves its `status` label (through a small cache, see [`StatusCounters`]).

use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
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
    /// Access log lines dropped because the line writer's queue was full.
    pub access_log_dropped: IntCounter,
    /// Connections closed because their original destination was the
    /// listener itself: not redirected, so forwarding would loop back.
    pub original_destination_loops: IntCounterVec,
    /// Connections accepted and closed at once over `limits.max_connections`.
    pub downstream_connections_overflow: IntCounterVec,
    /// Requests or responses ended by `limits.stream_idle_timeout`.
    pub stream_idle_timeouts: IntCounterVec,
    /// TCP connections closed by a listener's `idle_timeout`.
    pub tcp_idle_timeouts: IntCounterVec,
    /// HTTP/2 connections closed for flooding control frames.
    pub downstream_h2_floods: IntCounterVec,
    pub health: super::health::HealthMetrics,
    pub discovery: super::discovery::DiscoveryFamilies,
    pub mirror: super::mirror::MirrorMetrics,
    pub overload: OverloadFamilies,
    pub trace: super::trace::TraceMetrics,
    pub udp: super::udp::UdpMetrics,
}

/// Families of the overload protections (adaptive concurrency, retries,
/// circuit breaking), all labelled by cluster.
#[derive(Clone)]
pub struct OverloadFamilies {
    pub concurrency_limit: IntGaugeVec,
    pub concurrency_in_flight: IntGaugeVec,
    pub concurrency_rejections: IntCounterVec,
    pub min_rtt_seconds: GaugeVec,
    pub retries: IntCounterVec,
    pub retry_budget_exhausted: IntCounterVec,
    /// Also labelled by `limit` (max_connections, max_pending_requests, max_requests).
    pub circuit_open: IntCounterVec,
}

impl OverloadFamilies {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["cluster"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let min_rtt_seconds = GaugeVec::new(
            Opts::new(
                "weft_min_rtt_seconds",
                "The adaptive concurrency limiter's measured minRTT.",
            ),
            &["cluster"],
        )?;
        registry.register(Box::new(min_rtt_seconds.clone()))?;
        Ok(Self {
            concurrency_limit: gauge("weft_concurrency_limit", "The adaptive concurrency limit now in force.")?,
            concurrency_in_flight: gauge(
                "weft_concurrency_in_flight",
                "Requests admitted by the adaptive concurrency limiter and not yet finished.",
            )?,
            concurrency_rejections: counter(
                registry,
                "weft_concurrency_rejections_total",
                "Requests refused over the adaptive concurrency limit.",
                &["cluster"],
            )?,
            min_rtt_seconds,
            retries: counter(registry, "weft_retries_total", "Retries sent.", &["cluster"])?,
            retry_budget_exhausted: counter(
                registry,
                "weft_retry_budget_exhausted_total",
                "Retries not sent because the cluster's retry budget was spent.",
                &["cluster"],
            )?,
            circuit_open: counter(
                registry,
                "weft_circuit_open_total",
                "Requests refused by a circuit breaker limit.",
                &["cluster", "limit"],
            )?,
        })
    }
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
            &["listener", "route", "cluster", "protocol"],
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
        let overload = OverloadFamilies::new(&registry)?;
        let access_log_dropped = IntCounter::new(
            "weft_access_log_dropped_total",
            "Access log lines dropped because the line writer's queue was full.",
        )?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        registry.register(Box::new(super::log_limit::SUPPRESSED.clone()))?;
        registry.register(Box::new(super::runtime::RuntimeCollector::new()?))?;
        Ok(Self {
            overload,
            requests: counter(
                &registry,
                "weft_requests_total",
                "Requests answered, by listener, route, cluster, downstream protocol and status.",
                &["listener", "route", "cluster", "protocol", "status"],
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
            original_destination_loops: counter(
                &registry,
                "weft_original_destination_loops_total",
                "Connections closed because their original destination was the listener itself (not redirected).",
                &["listener"],
            )?,
            downstream_connections: counter(
                &registry,
                "weft_downstream_connections_total",
                "Downstream connections accepted per listener.",
                &["listener"],
            )?,
            downstream_connections_overflow: counter(
                &registry,
                "weft_downstream_connections_overflow_total",
                "Connections accepted and closed at once because the listener had limits.max_connections open.",
                &["listener"],
            )?,
            stream_idle_timeouts: counter(
                &registry,
                "weft_stream_idle_timeouts_total",
                "Requests or responses ended because no bytes moved for limits.stream_idle_timeout.",
                &["listener"],
            )?,
            tcp_idle_timeouts: counter(
                &registry,
                "weft_tcp_idle_timeouts_total",
                "TCP connections closed because no bytes moved for the listener's idle_timeout.",
                &["listener"],
            )?,
            downstream_h2_floods: counter(
                &registry,
                "weft_downstream_h2_flood_total",
                "HTTP/2 connections closed (GOAWAY ENHANCE_YOUR_CALM) for flooding PING, SETTINGS or empty DATA frames.",
                &["listener"],
            )?,
            access_log_dropped,
            health: super::health::HealthMetrics::new(&registry)?,
            discovery: super::discovery::DiscoveryFamilies::new(&registry)?,
            trace: super::trace::TraceMetrics::new(&registry)?,
            mirror: super::mirror::MirrorMetrics::new(&registry)?,
            udp: super::udp::UdpMetrics::new(&registry)?,
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

/// The downstream protocol of a request: the `protocol` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Http3,
}

impl Protocol {
    pub fn from_version(version: http::Version) -> Self {
        match version {
            http::Version::HTTP_2 => Self::Http2,
            http::Version::HTTP_3 => Self::Http3,
            _ => Self::Http1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Http3 => "http3",
        }
    }
}

/// Counters of one label set that differ only by the last labels (an
/// optional protocol, then `status`); each combination's handle is resolved
/// once and then read under an uncontended read lock.
pub struct StatusCounters {
    family: IntCounterVec,
    labels: Vec<String>,
    cache: RwLock<Vec<(Option<Protocol>, u16, IntCounter)>>,
}

impl StatusCounters {
    pub fn new(family: &IntCounterVec, labels: &[&str]) -> Self {
        Self {
            family: family.clone(),
            labels: labels.iter().map(ToString::to_string).collect(),
            cache: RwLock::new(Vec::new()),
        }
    }

    /// For families whose last label is `status`.
    pub fn inc(&self, status: u16) {
        self.inc_for(None, status);
    }

    /// For families whose last labels are `protocol`, `status`.
    pub fn inc_for(&self, protocol: Option<Protocol>, status: u16) {
        if let Some((.., c)) = self
            .cache
            .read()
            .iter()
            .find(|(p, s, _)| *s == status && *p == protocol)
        {
            c.inc();
            return;
        }
        let mut values: Vec<&str> = self.labels.iter().map(String::as_str).collect();
        values.extend(protocol.map(Protocol::as_str));
        let status_text = status.to_string();
        values.push(&status_text);
        let counter = self.family.with_label_values(&values);
        counter.inc();
        self.cache.write().push((protocol, status, counter));
    }
}

/// Pre-resolved handles for one (listener, route, cluster).
pub struct RouteMetrics {
    requests: StatusCounters,
    family: HistogramVec,
    labels: [String; 3],
    /// One histogram per protocol, made on first use.
    durations: [OnceLock<Histogram>; 3],
}

impl RouteMetrics {
    pub fn new(metrics: &Metrics, listener: &str, route: &str, cluster: &str) -> Arc<Self> {
        Arc::new(Self {
            requests: StatusCounters::new(&metrics.requests, &[listener, route, cluster]),
            family: metrics.request_duration.clone(),
            labels: [listener.to_string(), route.to_string(), cluster.to_string()],
            durations: Default::default(),
        })
    }

    /// Counts one answered request and its duration.
    pub fn record(&self, protocol: Protocol, status: u16, seconds: f64) {
        self.requests.inc_for(Some(protocol), status);
        let [listener, route, cluster] = &self.labels;
        self.durations[protocol as usize]
            .get_or_init(|| {
                self.family
                    .with_label_values(&[listener, route, cluster, protocol.as_str()])
            })
            .observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_metrics_count_per_protocol_and_status() {
        let metrics = Metrics::new().unwrap();
        let route = RouteMetrics::new(&metrics, "l", "r", "c");
        route.record(Protocol::Http1, 200, 0.001);
        route.record(Protocol::Http1, 200, 0.001);
        route.record(Protocol::Http3, 503, 0.002);
        assert_eq!(
            metrics
                .requests
                .with_label_values(&["l", "r", "c", "http1", "200"])
                .get(),
            2
        );
        assert_eq!(
            metrics
                .requests
                .with_label_values(&["l", "r", "c", "http3", "503"])
                .get(),
            1
        );
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            text.contains(
                "weft_requests_total{cluster=\"c\",listener=\"l\",protocol=\"http1\",route=\"r\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "weft_request_duration_seconds_count{cluster=\"c\",listener=\"l\",protocol=\"http3\",route=\"r\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn status_counters_count_per_status() {
        let metrics = Metrics::new().unwrap();
        let counters = StatusCounters::new(&metrics.upstream_requests, &["c", "e"]);
        counters.inc(200);
        counters.inc(200);
        counters.inc(503);
        assert_eq!(metrics.upstream_requests.with_label_values(&["c", "e", "200"]).get(), 2);
        assert_eq!(metrics.upstream_requests.with_label_values(&["c", "e", "503"]).get(), 1);
    }
}
