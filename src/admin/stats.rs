//! `/stats`: request and error counters per listener, route and cluster, for
//! the admin page. Computed from the Prometheus metric families at read time
//! (the same numbers `/metrics` shows), so serving it adds no work to requests.
//!
//! Besides the fixed counters, every other family with a `cluster` or `route`
//! label is summed per cluster or route under `families`, so any such counter
//! (concurrency limits, retries, mirror results) reaches the page without
//! changes here.

use std::collections::BTreeMap;

use prometheus::proto::{Metric, MetricFamily, MetricType};
use serde::Serialize;

#[derive(Serialize, Default, Debug)]
pub struct Stats {
    /// Milliseconds since the Unix epoch, so the page can compute rates.
    pub timestamp_ms: u64,
    pub listeners: BTreeMap<String, ListenerStats>,
    pub routes: Vec<RouteStats>,
    pub clusters: BTreeMap<String, ClusterStats>,
}

#[derive(Serialize, Default, Debug, PartialEq)]
pub struct Counts {
    pub requests: u64,
    /// Responses with status 5xx.
    pub errors: u64,
    /// Responses with status 4xx.
    pub client_errors: u64,
    /// For the mean latency over a window: sum and count of
    /// `weft_request_duration_seconds`.
    pub duration_sum_s: f64,
    pub duration_count: u64,
}

#[derive(Serialize, Default, Debug)]
pub struct ListenerStats {
    #[serde(flatten)]
    pub counts: Counts,
    pub connections_active: i64,
    pub connections_total: u64,
}

#[derive(Serialize, Default, Debug)]
pub struct RouteStats {
    pub listener: String,
    /// Empty for requests no route matched.
    pub route: String,
    #[serde(flatten)]
    pub counts: Counts,
    pub families: BTreeMap<String, f64>,
}

#[derive(Serialize, Default, Debug)]
pub struct ClusterStats {
    #[serde(flatten)]
    pub counts: Counts,
    pub families: BTreeMap<String, f64>,
}

const REQUESTS: &str = "weft_requests_total";
const DURATION: &str = "weft_request_duration_seconds";

pub fn collect(metrics: &crate::telemetry::metrics::Metrics) -> Stats {
    let mut stats = from_families(&metrics.registry.gather());
    stats.timestamp_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    stats
}

/// The pure part of [`collect`].
fn from_families(families: &[MetricFamily]) -> Stats {
    let mut tally = Tally::default();
    for family in families {
        for metric in family.get_metric() {
            let value = match family.get_field_type() {
                MetricType::COUNTER => metric.get_counter().get_value(),
                MetricType::GAUGE => metric.get_gauge().get_value(),
                MetricType::HISTOGRAM => metric.get_histogram().get_sample_count() as f64,
                _ => continue,
            };
            tally.add(family.name(), metric, value);
        }
    }
    tally.stats.routes = tally.routes.into_values().collect();
    tally.stats
}

/// [`Stats`] being summed up, with the routes keyed by (listener, route).
#[derive(Default)]
struct Tally {
    stats: Stats,
    routes: BTreeMap<(String, String), RouteStats>,
}

/// The series' value of label `key`, if it has one.
fn label(metric: &Metric, key: &str) -> Option<String> {
    metric
        .get_label()
        .iter()
        .find(|l| l.name() == key)
        .map(|l| l.value().to_string())
}

impl Tally {
    /// Adds one series of family `name`; `value` is its count or level.
    fn add(&mut self, name: &str, metric: &Metric, value: f64) {
        let listener = label(metric, "listener");
        let route = label(metric, "route");
        let cluster = label(metric, "cluster").filter(|c| !c.is_empty());
        match name {
            REQUESTS | DURATION => {
                let add = |counts: &mut Counts| {
                    if name == REQUESTS {
                        let status = label(metric, "status").and_then(|s| s.parse::<u16>().ok());
                        count_requests(counts, status.unwrap_or(0), value as u64);
                    } else {
                        counts.duration_sum_s += metric.get_histogram().get_sample_sum();
                        counts.duration_count += metric.get_histogram().get_sample_count();
                    }
                };
                let listener = listener.unwrap_or_default();
                add(&mut self.stats.listeners.entry(listener.clone()).or_default().counts);
                add(&mut self.route(listener, route.unwrap_or_default()).counts);
                if let Some(cluster) = cluster {
                    add(&mut self.stats.clusters.entry(cluster).or_default().counts);
                }
            }
            "weft_downstream_connections_active" => {
                let entry = self.stats.listeners.entry(listener.unwrap_or_default()).or_default();
                entry.connections_active += value as i64;
            }
            "weft_downstream_connections_total" => {
                let entry = self.stats.listeners.entry(listener.unwrap_or_default()).or_default();
                entry.connections_total += value as u64;
            }
            _ => {
                if let Some(cluster) = cluster {
                    let entry = self.stats.clusters.entry(cluster).or_default();
                    *entry.families.entry(name.to_string()).or_default() += value;
                }
                if let (Some(listener), Some(route)) = (listener, route) {
                    *self
                        .route(listener, route)
                        .families
                        .entry(name.to_string())
                        .or_default() += value;
                }
            }
        }
    }

    fn route(&mut self, listener: String, route: String) -> &mut RouteStats {
        self.routes
            .entry((listener.clone(), route.clone()))
            .or_insert_with(|| RouteStats {
                listener,
                route,
                ..Default::default()
            })
    }
}

fn count_requests(counts: &mut Counts, status: u16, n: u64) {
    counts.requests += n;
    match status {
        500..=599 => counts.errors += n,
        400..=499 => counts.client_errors += n,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::{Metrics, Protocol, RouteMetrics};

    #[test]
    fn sums_requests_per_route_cluster_and_listener() {
        let metrics = Metrics::new().unwrap();
        let web = RouteMetrics::new(&metrics, "public", "api", "web");
        web.record(Protocol::Http1, 200, 0.25);
        web.record(Protocol::Http2, 200, 0.25);
        web.record(Protocol::Http1, 503, 0.0);
        let other = RouteMetrics::new(&metrics, "public", "api", "canary");
        other.record(Protocol::Http3, 404, 0.0);
        RouteMetrics::new(&metrics, "public", "", "").record(Protocol::Http1, 404, 0.0);
        metrics
            .downstream_connections_active
            .with_label_values(&["public"])
            .set(3);
        metrics.health.cluster("web").routed_local.inc_by(7);

        let stats = from_families(&metrics.registry.gather());
        let public = &stats.listeners["public"];
        assert_eq!(public.counts.requests, 5);
        assert_eq!(public.counts.errors, 1);
        assert_eq!(public.counts.client_errors, 2);
        assert_eq!(public.connections_active, 3);
        let api = stats.routes.iter().find(|r| r.route == "api").unwrap();
        assert_eq!((api.counts.requests, api.counts.errors), (4, 1));
        assert_eq!(api.counts.duration_count, 4);
        assert!((api.counts.duration_sum_s - 0.5).abs() < 1e-9);
        let unmatched = stats.routes.iter().find(|r| r.route.is_empty()).unwrap();
        assert_eq!(unmatched.counts.client_errors, 1);
        let web = &stats.clusters["web"];
        assert_eq!((web.counts.requests, web.counts.errors), (3, 1));
        assert_eq!(web.families["weft_zone_routed_requests_total"], 7.0);
        assert!(!stats.clusters.contains_key(""));
    }
}
