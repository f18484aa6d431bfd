//! Per-cluster and per-endpoint health state shared by the request path and
//! the cluster's background monitor: the latency EWMA, outlier ejections,
//! active health-check status, and the zone plan derived from them.
//!
//! Guarantees:
//! - The request path reads only atomics, one uncontended mutex per endpoint
//!   (the EWMA) and the zone plan through an `ArcSwap`; the plan is recomputed
//!   only when an endpoint's usability changes, never per request (Envoy
//!   likewise regenerates its locality structures on host-set changes).
//! - Every ejection, return, health change and entry to or exit from panic
//!   mode is one log line and moves its metric.
//! - Plan recomputation is serialised and reads the endpoint set inside the
//!   lock, so the stored plan always reflects the latest set and endpoint
//!   states even when a change races a set update.
//! - Outlier state is keyed by endpoint id, so it follows set updates
//!   ([`ClusterHealth::follow`]): a result or an event for an endpoint that
//!   has left the set is ignored.
//!
//! Source: Envoy "Outlier detection", "Health checking" and "Zone aware
//! routing" architecture docs; tower `load::PeakEwma` for the latency model.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::StatusCode;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

use super::endpoints::{Endpoint, EndpointSet};
use crate::config::schema::{ClusterConfig, NodeConfig};
use crate::core::error::ErrorKind;
use crate::policy::ewma::PeakEwma;
use crate::policy::outlier::{Outcome, OutlierDetector, OutlierEvent};
use crate::policy::zone::{ZoneAwareConfig, ZonePlan, ZoneRouting};
use crate::telemetry::health::{ClusterHealthMetrics, EndpointHealthMetrics, HealthMetrics};

/// Stands in for an endpoint's latency before its first response: linkerd2-proxy's default.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How quickly the latency estimate forgets (linkerd2-proxy's default decay).
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// One endpoint's health, as the balancer sees it.
pub struct EndpointHealth {
    ewma: Mutex<PeakEwma>,
    ejected: AtomicBool,
    /// Active health-check verdict; true without a `health_check` section.
    healthy: AtomicBool,
    metrics: EndpointHealthMetrics,
}

impl EndpointHealth {
    pub fn new(metrics: EndpointHealthMetrics, now: Instant) -> Self {
        Self {
            ewma: Mutex::new(PeakEwma::new(DEFAULT_RTT, EWMA_DECAY, now)),
            ejected: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            metrics,
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Neither ejected nor failing health checks.
    pub fn available(&self) -> bool {
        self.is_healthy() && !self.is_ejected()
    }

    pub fn latency_estimate(&self, now: Instant) -> Duration {
        self.ewma.lock().estimate(now)
    }

    pub fn load(&self, now: Instant, in_flight: usize) -> f64 {
        self.ewma.lock().load(now, in_flight)
    }

    fn observe(&self, now: Instant, rtt: Duration) {
        self.ewma.lock().observe(now, rtt);
    }

    /// An attempt given up at `now` took at least this long: a lower bound
    /// of its latency, which the peak-sensitive estimate takes at once.
    pub fn observe_abandoned(&self, started: Instant, now: Instant) {
        self.observe(now, now.saturating_duration_since(started));
    }
}

/// What a finished attempt on an endpoint tells about its health.
fn outcome_of(result: Result<StatusCode, ErrorKind>) -> Option<Outcome> {
    match result {
        Ok(status) if status.is_server_error() => Some(Outcome::Error5xx(status.as_u16())),
        Ok(_) => Some(Outcome::Success),
        // Envoy's gateway failures: the endpoint could not be reached or broke the exchange.
        Err(ErrorKind::ConnectFailed | ErrorKind::UpstreamReset) => Some(Outcome::GatewayFailure),
        Err(_) => None,
    }
}

pub struct ClusterHealth {
    cluster: Arc<str>,
    local_zone: Option<String>,
    callers: Vec<(String, u64)>,
    zone_config: ZoneAwareConfig,
    outlier: Option<Mutex<OutlierDetector>>,
    plan: ArcSwap<ZonePlan>,
    /// Held while recomputing the plan so concurrent changes cannot store a stale one.
    refreshing: Mutex<()>,
    /// Wakes the monitor when an ejection moves its next deadline earlier.
    pub(super) wake: Arc<Notify>,
    /// A failed attempt counts as this slow in the EWMA, so an endpoint that
    /// fails fast does not look like the fastest one.
    failure_penalty: Duration,
    metrics: ClusterHealthMetrics,
}

impl ClusterHealth {
    pub fn new(config: &ClusterConfig, node: &NodeConfig, metrics: &HealthMetrics, initial: &EndpointSet) -> Self {
        let zone_config = ZoneAwareConfig::from(&config.zone_aware);
        let local_zone = node.zone.clone().filter(|z| !z.is_empty());
        let callers: Vec<(String, u64)> = node.callers.iter().map(|(z, n)| (z.clone(), *n)).collect();
        // Endpoints start usable: health checks and ejections have not spoken yet.
        let all_usable: Vec<(&str, bool)> = initial
            .iter()
            .map(|e| (e.zone.as_deref().unwrap_or(""), true))
            .collect();
        let plan = ZonePlan::compute(local_zone.as_deref().unwrap_or(""), &callers, &all_usable, &zone_config);
        let metrics = metrics.cluster(&config.name);
        metrics.panic.set(i64::from(plan.ignores_health()));
        Self {
            cluster: Arc::from(config.name.as_str()),
            local_zone,
            callers,
            zone_config,
            outlier: config.outlier_detection.as_ref().map(|o| {
                let mut detector = OutlierDetector::new(o.into(), 0);
                detector.set_endpoints(initial.iter().map(|e| e.id));
                Mutex::new(detector)
            }),
            plan: ArcSwap::from_pointee(plan),
            refreshing: Mutex::new(()),
            wake: Arc::new(Notify::new()),
            failure_penalty: config.connect_timeout,
            metrics,
        }
    }

    pub fn local_zone(&self) -> Option<&str> {
        self.local_zone.as_deref()
    }

    pub fn plan(&self) -> arc_swap::Guard<Arc<ZonePlan>> {
        self.plan.load()
    }

    pub fn has_outlier_detection(&self) -> bool {
        self.outlier.is_some()
    }

    /// Counts a pick for `weft_zone_routed_requests_total` (only with a local zone).
    pub fn note_routed(&self, endpoint_zone: Option<&str>) {
        if let Some(local) = self.local_zone() {
            if endpoint_zone == Some(local) {
                self.metrics.routed_local.inc();
            } else {
                self.metrics.routed_remote.inc();
            }
        }
    }

    /// Feeds one finished attempt into the EWMA and the outlier detector.
    pub fn record_attempt(
        &self,
        set: &ArcSwap<EndpointSet>,
        endpoint: &Endpoint,
        started: Instant,
        now: Instant,
        result: Result<StatusCode, ErrorKind>,
    ) {
        let outcome = outcome_of(result);
        let rtt = now.saturating_duration_since(started);
        let rtt = match outcome {
            Some(Outcome::GatewayFailure) => rtt.max(self.failure_penalty),
            _ => rtt,
        };
        endpoint.health.observe(now, rtt);
        let (Some(outlier), Some(outcome)) = (&self.outlier, outcome) else {
            return;
        };
        let ejection = outlier.lock().record(endpoint.id, outcome, now);
        if let Some(ejection) = ejection {
            self.apply(set, &[OutlierEvent::Ejected(ejection)], now);
            self.wake.notify_one();
        }
    }

    /// Runs the outlier detector's timers; returns when it next needs to run.
    pub fn tick(&self, set: &ArcSwap<EndpointSet>, now: Instant) -> Option<Instant> {
        let outlier = self.outlier.as_ref()?;
        let (events, next) = {
            let mut detector = outlier.lock();
            let events = detector.tick(now);
            (events, detector.next_deadline())
        };
        if !events.is_empty() {
            self.apply(set, &events, now);
        }
        next
    }

    /// Makes the outlier detector and the zone plan follow a new endpoint set.
    pub fn follow(&self, set: &ArcSwap<EndpointSet>) {
        if let Some(outlier) = &self.outlier {
            outlier.lock().set_endpoints(set.load().iter().map(|e| e.id));
        }
        self.refresh_plan(set);
    }

    /// When endpoint `id`'s current ejection ends, if it is ejected.
    pub fn ejected_until(&self, id: usize) -> Option<Instant> {
        self.outlier.as_ref()?.lock().ejected_until(id)
    }

    pub fn times_ejected(&self, id: usize) -> u32 {
        self.outlier.as_ref().map_or(0, |o| o.lock().times_ejected(id))
    }

    /// Records an active health-check verdict change.
    pub fn set_healthy(&self, set: &ArcSwap<EndpointSet>, endpoint: &Endpoint, healthy: bool, detail: &str) {
        if endpoint.health.healthy.swap(healthy, Ordering::Relaxed) == healthy {
            return;
        }
        endpoint.health.metrics.healthy.set(i64::from(healthy));
        if healthy {
            tracing::info!(cluster = %self.cluster, endpoint = %endpoint.target.address, "health check passing again; endpoint back in rotation");
        } else {
            tracing::warn!(cluster = %self.cluster, endpoint = %endpoint.target.address, detail, "health check failing; endpoint taken out of rotation");
        }
        self.refresh_plan(set);
    }

    fn apply(&self, set: &ArcSwap<EndpointSet>, events: &[OutlierEvent], now: Instant) {
        let endpoints = set.load();
        for event in events {
            match *event {
                OutlierEvent::Ejected(e) => {
                    let Some(endpoint) = endpoints.by_id(e.endpoint) else {
                        continue;
                    };
                    endpoint.health.ejected.store(true, Ordering::Relaxed);
                    endpoint.health.metrics.ejected.set(1);
                    if let Some(counter) = self.metrics.ejection(e.reason.as_str()) {
                        counter.inc();
                    }
                    let ejection_ms = e.until.saturating_duration_since(now).as_millis();
                    tracing::warn!(cluster = %self.cluster, endpoint = %endpoint.target.address, reason = e.reason.as_str(), ejection_ms, "outlier ejected");
                }
                OutlierEvent::Returned { endpoint } => {
                    let Some(endpoint) = endpoints.by_id(endpoint) else {
                        continue;
                    };
                    endpoint.health.ejected.store(false, Ordering::Relaxed);
                    endpoint.health.metrics.ejected.set(0);
                    tracing::info!(cluster = %self.cluster, endpoint = %endpoint.target.address, "outlier ejection over; endpoint returned");
                }
            }
        }
        drop(endpoints);
        self.refresh_plan(set);
    }

    /// Recomputes the zone plan from the current set's usability.
    pub fn refresh_plan(&self, set: &ArcSwap<EndpointSet>) {
        let _serialised = self.refreshing.lock();
        let endpoints = set.load();
        let usable: Vec<(&str, bool)> = endpoints
            .iter()
            .map(|e| (e.zone.as_deref().unwrap_or(""), e.health.available()))
            .collect();
        let plan = ZonePlan::compute(
            self.local_zone().unwrap_or(""),
            &self.callers,
            &usable,
            &self.zone_config,
        );
        let was_panic = self.plan.load().ignores_health();
        if plan.ignores_health() != was_panic {
            let healthy = usable.iter().filter(|(_, ok)| *ok).count();
            if plan.ignores_health() {
                self.metrics.panics.inc();
                tracing::warn!(cluster = %self.cluster, healthy, total = usable.len(), "panic mode: too few usable endpoints, sending to all of them regardless of health");
            } else {
                tracing::info!(cluster = %self.cluster, healthy, total = usable.len(), "panic mode over");
            }
        }
        self.metrics.panic.set(i64::from(plan.ignores_health()));
        if plan.routing() != self.plan.load().routing() {
            tracing::info!(cluster = %self.cluster, routing = routing_name(plan.routing()), local_share = plan.local_share(), "zone routing changed");
        }
        self.plan.store(Arc::new(plan));
    }
}

/// Stable names for logs and `/clusters`.
pub fn routing_name(routing: ZoneRouting) -> &'static str {
    match routing {
        ZoneRouting::Panic => "panic",
        ZoneRouting::Unzoned => "unzoned",
        ZoneRouting::AllLocal => "all_local",
        ZoneRouting::Spill => "spill",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_envoy_classes() {
        assert_eq!(outcome_of(Ok(StatusCode::OK)), Some(Outcome::Success));
        assert_eq!(outcome_of(Ok(StatusCode::NOT_FOUND)), Some(Outcome::Success));
        assert_eq!(
            outcome_of(Ok(StatusCode::INTERNAL_SERVER_ERROR)),
            Some(Outcome::Error5xx(500))
        );
        assert_eq!(outcome_of(Ok(StatusCode::BAD_GATEWAY)), Some(Outcome::Error5xx(502)));
        assert_eq!(outcome_of(Err(ErrorKind::ConnectFailed)), Some(Outcome::GatewayFailure));
        assert_eq!(outcome_of(Err(ErrorKind::UpstreamReset)), Some(Outcome::GatewayFailure));
        assert_eq!(outcome_of(Err(ErrorKind::BadRequest)), None);
    }
}
