//! One cluster's overload state, shared by every route to it and kept
//! across reloads with its `Cluster`: the adaptive concurrency limiter, the
//! circuit breaker's counters and the retry budget. The layers that enforce
//! them (`layer::admission`, `layer::retry`) only hold references.
//!
//! The adaptive concurrency limiter admits a request only while the
//! cluster's in-flight requests are under the limit computed by the gradient
//! controller (`policy::gradient`, after Envoy's adaptive concurrency
//! filter). Admission, counting and controller updates happen under one
//! lock, so the in-flight count never exceeds the limit in force at
//! admission. The controller is ticked from the request path (it checks
//! itself whether an update interval has passed), so no background task
//! outlives the cluster.
//!
//! Latency samples are time to response headers. Requests cancelled before
//! headers (per-try or route timeout, client gone) are sampled with the time
//! they waited: otherwise a slowdown past the timeouts would produce no
//! samples and the limit would never fall.

use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use prometheus::{Gauge, IntCounter, IntGauge};
use serde::Serialize;

use crate::config::schema::{AdaptiveConcurrencyConfig, CircuitBreakerConfig, ClusterConfig, RetryBudgetConfig};
use crate::policy::circuit::CircuitBreaker;
use crate::policy::gradient::GradientController;
use crate::policy::retry_budget::RetryBudget;
use crate::telemetry::metrics::OverloadFamilies;
use crate::upstream::limit::ConnectionLimits;

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
            circuit: Some(Arc::new(CircuitBreaker::new(
                config
                    .circuit_breaker
                    .as_ref()
                    .unwrap_or(&CircuitBreakerConfig::DEFAULTS),
                name,
                families,
            ))),
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

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::time::Instant;

struct LimiterState {
    controller: GradientController,
    in_flight: u32,
    rng: SmallRng,
}

struct LimiterMetrics {
    limit: IntGauge,
    in_flight: IntGauge,
    rejections: IntCounter,
    min_rtt: Gauge,
}

/// One cluster's adaptive concurrency limiter.
pub struct ConcurrencyLimiter {
    state: Mutex<LimiterState>,
    metrics: LimiterMetrics,
}

impl ConcurrencyLimiter {
    pub fn new(config: &AdaptiveConcurrencyConfig, cluster: &str, families: &OverloadFamilies) -> Self {
        let mut rng = SmallRng::from_rng(&mut rand::rng());
        let controller = GradientController::new(config.into(), Instant::now(), &mut rng);
        let limiter = Self {
            state: Mutex::new(LimiterState {
                controller,
                in_flight: 0,
                rng,
            }),
            metrics: LimiterMetrics {
                limit: families.concurrency_limit.with_label_values(&[cluster]),
                in_flight: families.concurrency_in_flight.with_label_values(&[cluster]),
                rejections: families.concurrency_rejections.with_label_values(&[cluster]),
                min_rtt: families.min_rtt_seconds.with_label_values(&[cluster]),
            },
        };
        limiter.publish(&limiter.lock());
        limiter
    }

    /// The limit in force now (for tests and the admin view).
    pub fn limit(&self) -> u32 {
        self.lock().controller.limit()
    }

    /// The limiter as `/clusters` shows it.
    pub fn status(&self) -> ConcurrencyStatus {
        let state = self.lock();
        ConcurrencyStatus {
            limit: state.controller.limit(),
            in_flight: state.in_flight,
            min_rtt_ms: state.controller.min_rtt().map(|d| d.as_secs_f64() * 1000.0),
            measuring_min_rtt: state.controller.in_min_rtt_measurement(),
            rejections: self.metrics.rejections.get(),
        }
    }

    /// Admits a request if the cluster is under its limit.
    pub fn try_acquire(self: &Arc<Self>, now: Instant) -> Option<Permit> {
        let mut state = self.lock();
        let LimiterState { controller, rng, .. } = &mut *state;
        controller.tick(now, rng);
        let admitted = state.controller.admits(state.in_flight);
        if admitted {
            state.in_flight += 1;
        } else {
            self.metrics.rejections.inc();
        }
        self.publish(&state);
        admitted.then(|| Permit {
            limiter: self.clone(),
            admitted_at: now,
            sampled: false,
        })
    }

    fn lock(&self) -> MutexGuard<'_, LimiterState> {
        self.state.lock()
    }

    fn publish(&self, state: &LimiterState) {
        self.metrics.limit.set(i64::from(state.controller.limit()));
        self.metrics.in_flight.set(i64::from(state.in_flight));
        if let Some(min_rtt) = state.controller.min_rtt() {
            self.metrics.min_rtt.set(min_rtt.as_secs_f64());
        }
    }
}

/// One cluster's adaptive concurrency limiter at one moment.
#[derive(Debug, Serialize)]
pub struct ConcurrencyStatus {
    /// The limit in force.
    pub limit: u32,
    /// Requests admitted and not yet finished.
    pub in_flight: u32,
    /// The latency the limit is measured against; absent until first measured.
    pub min_rtt_ms: Option<f64>,
    /// Whether the limiter is (re)measuring minRTT at `min_concurrency` now.
    pub measuring_min_rtt: bool,
    /// Requests refused over the limit since the cluster was built.
    pub rejections: u64,
}

/// One admitted request's slot; released on drop.
pub struct Permit {
    limiter: Arc<ConcurrencyLimiter>,
    admitted_at: Instant,
    sampled: bool,
}

impl Permit {
    /// Feeds the controller the request's latency up to `now`.
    pub fn sample(&mut self, now: Instant) {
        self.sampled = true;
        let mut state = self.limiter.lock();
        self.record(&mut state, now);
        self.limiter.publish(&state);
    }

    /// For outcomes that say nothing about the upstream's speed.
    pub fn skip_sample(&mut self) {
        self.sampled = true;
    }

    fn record(&self, state: &mut LimiterState, now: Instant) {
        let latency = now.saturating_duration_since(self.admitted_at);
        state.controller.record(now, latency);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.limiter.lock();
        if !self.sampled {
            // Cancelled before headers: the wait so far is the best estimate.
            self.record(&mut state, Instant::now());
        }
        state.in_flight = state.in_flight.saturating_sub(1);
        self.limiter.publish(&state);
    }
}

/// One cluster's retry budget and retry counters, shared by all its routes.
pub struct RetryState {
    budget: Mutex<RetryBudget>,
    retries: IntCounter,
    exhausted: IntCounter,
}

impl RetryState {
    pub fn new(config: &RetryBudgetConfig, cluster: &str, families: &OverloadFamilies) -> Self {
        Self {
            budget: Mutex::new(RetryBudget::new(config.into(), Instant::now())),
            retries: families.retries.with_label_values(&[cluster]),
            exhausted: families.retry_budget_exhausted.with_label_values(&[cluster]),
        }
    }

    pub fn budget(&self) -> MutexGuard<'_, RetryBudget> {
        self.budget.lock()
    }

    pub fn count_retry(&self) {
        self.retries.inc();
    }

    pub fn count_exhausted(&self) {
        self.exhausted.inc();
    }
}
