//! Mirror and compare telemetry: the `weft_mirror_*` metric
//! families and the per-route board behind admin `GET /compare` (counts plus
//! the last few mismatches).
//!
//! Guarantees: families are registered once; a route's handles are resolved
//! when a snapshot is built and survive reloads (the board is keyed by route
//! and shadow cluster), so a request never looks up labels; `/compare` counts
//! are read from the same counters Prometheus exports, so the two agree.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};
use serde::Serialize;

/// How many recent mismatches `/compare` keeps per route.
const RECENT_MISMATCHES: usize = 10;

/// What became of one mirrored request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorResult {
    Match,
    Mismatch,
    /// Differed, but only where two copies of the old version also differ.
    Noise,
    /// The shadow failed (connect, reset, timeout) or never got its request body.
    ShadowError,
    /// Over `max_in_flight`: not sent.
    Dropped,
    /// A body was over the buffering limit, so the pair was not compared.
    SkippedLarge,
}

impl MirrorResult {
    pub const ALL: [MirrorResult; 6] = [
        MirrorResult::Match,
        MirrorResult::Mismatch,
        MirrorResult::Noise,
        MirrorResult::ShadowError,
        MirrorResult::Dropped,
        MirrorResult::SkippedLarge,
    ];

    pub fn label(self) -> &'static str {
        match self {
            MirrorResult::Match => "match",
            MirrorResult::Mismatch => "mismatch",
            MirrorResult::Noise => "noise",
            MirrorResult::ShadowError => "shadow_error",
            MirrorResult::Dropped => "dropped",
            MirrorResult::SkippedLarge => "skipped_large",
        }
    }
}

/// Boards by (route, shadow cluster).
type Boards = BTreeMap<(String, String), Arc<RouteCompare>>;

#[derive(Clone)]
pub struct MirrorMetrics {
    requests: IntCounterVec,
    results: IntCounterVec,
    duration: HistogramVec,
    routes: Arc<Mutex<Boards>>,
}

/// Handles and recent mismatches of one (route, shadow cluster).
pub struct RouteCompare {
    pub route: String,
    pub cluster: String,
    pub requests: IntCounter,
    /// One per [`MirrorResult::ALL`], in that order.
    results: Vec<IntCounter>,
    pub primary_duration: Histogram,
    pub shadow_duration: Histogram,
    recent: Mutex<VecDeque<serde_json::Value>>,
}

impl RouteCompare {
    pub fn record(&self, result: MirrorResult) {
        if let Some(i) = MirrorResult::ALL.iter().position(|r| *r == result) {
            self.results[i].inc();
        }
    }

    pub fn count(&self, result: MirrorResult) -> u64 {
        MirrorResult::ALL
            .iter()
            .position(|r| *r == result)
            .map_or(0, |i| self.results[i].get())
    }

    /// Keeps `mismatch` among the last few shown by `/compare`.
    pub fn remember(&self, mismatch: serde_json::Value) {
        let mut recent = self.recent.lock();
        if recent.len() == RECENT_MISMATCHES {
            recent.pop_front();
        }
        recent.push_back(mismatch);
    }

    fn report(&self) -> RouteReport {
        RouteReport {
            route: self.route.clone(),
            cluster: self.cluster.clone(),
            requests: self.requests.get(),
            results: MirrorResult::ALL.iter().map(|r| (r.label(), self.count(*r))).collect(),
            recent_mismatches: self.recent.lock().iter().cloned().collect(),
        }
    }
}

/// One entry of `GET /compare`.
#[derive(Serialize)]
pub struct RouteReport {
    pub route: String,
    pub cluster: String,
    pub requests: u64,
    pub results: BTreeMap<&'static str, u64>,
    /// Oldest first.
    pub recent_mismatches: Vec<serde_json::Value>,
}

impl MirrorMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new("weft_mirror_requests_total", "Requests selected for mirroring."),
            &["route", "cluster"],
        )?;
        let results = IntCounterVec::new(
            Opts::new("weft_mirror_results_total", "Mirrored requests by comparison result."),
            &["route", "cluster", "result"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "weft_mirror_duration_seconds",
                "Time to response headers of mirrored requests, primary and shadow side.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["side"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(results.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self {
            requests,
            results,
            duration,
            routes: Arc::default(),
        })
    }

    /// The handles of (`route`, shadow `cluster`), created on first use.
    pub fn route(&self, route: &str, cluster: &str) -> Arc<RouteCompare> {
        let key = (route.to_string(), cluster.to_string());
        self.routes
            .lock()
            .entry(key)
            .or_insert_with(|| {
                Arc::new(RouteCompare {
                    route: route.to_string(),
                    cluster: cluster.to_string(),
                    requests: self.requests.with_label_values(&[route, cluster]),
                    // Every result series exists from the start, so a rate()
                    // over mismatches sees a zero rather than nothing.
                    results: MirrorResult::ALL
                        .iter()
                        .map(|r| self.results.with_label_values(&[route, cluster, r.label()]))
                        .collect(),
                    primary_duration: self.duration.with_label_values(&["primary"]),
                    shadow_duration: self.duration.with_label_values(&["shadow"]),
                    recent: Mutex::new(VecDeque::new()),
                })
            })
            .clone()
    }

    /// Every mirrored route seen since start, for `GET /compare`.
    pub fn report(&self) -> Vec<RouteReport> {
        let routes: Vec<Arc<RouteCompare>> = self.routes.lock().values().cloned().collect();
        routes.iter().map(|r| r.report()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_on_the_board_and_in_prometheus() {
        let registry = Registry::new();
        let metrics = MirrorMetrics::new(&registry).unwrap();
        let r = metrics.route("api", "next");
        r.requests.inc();
        r.record(MirrorResult::Mismatch);
        for i in 0..12 {
            r.remember(serde_json::json!({ "n": i }));
        }
        assert!(Arc::ptr_eq(&r, &metrics.route("api", "next")));
        let report = &metrics.report()[0];
        assert_eq!(report.results["mismatch"], 1);
        assert_eq!(report.results["match"], 0);
        assert_eq!(report.recent_mismatches.len(), RECENT_MISMATCHES);
        assert_eq!(report.recent_mismatches[0]["n"], 2);
        assert_eq!(metrics.results.with_label_values(&["api", "next", "mismatch"]).get(), 1);
    }
}
