//! Adaptive concurrency: a tower layer that admits a request to a cluster
//! only while the cluster's in-flight requests are under the limit computed
//! by the gradient controller ([`gradient`], after Envoy's adaptive
//! concurrency filter). Over the limit the request fails at once with
//! [`Overload::Concurrency`] (503, `x-weft-overloaded: concurrency`); it is
//! never queued, because queueing in front of a slow upstream only adds
//! latency and hides the overload from callers.
//!
//! Guarantees: the state is one per cluster, shared by every route to it, and
//! admission, counting and controller updates happen under one lock, so the
//! in-flight count never exceeds the limit in force at admission. A request
//! holds its slot until its response body ends or is dropped. The controller
//! is ticked from the request path (it checks itself whether an update
//! interval has passed), so no background task outlives the cluster.
//!
//! Latency samples are time to response headers. Requests cancelled before
//! headers (per-try or route timeout, client gone) are sampled with the time
//! they waited: otherwise a slowdown past the timeouts would produce no
//! samples and the limit would never fall. Connect failures and overload
//! rejections further in are not sampled: they say nothing about how fast
//! the upstream serves.

pub mod gradient;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use http::{Request, Response};
use prometheus::{Gauge, IntCounter, IntGauge};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::body::{self, Body};
use crate::config::schema::AdaptiveConcurrencyConfig;
use crate::error::{ErrorKind, Overload, ProxyError};
use crate::stack::ResponseFuture;
use crate::telemetry::metrics::OverloadFamilies;
use gradient::{GradientConfig, GradientController};

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
        let controller = GradientController::new(gradient_config(config), Instant::now(), &mut rng);
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
        // The state stays consistent even if a holder panicked: every update
        // is a few plain assignments.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, state: &LimiterState) {
        self.metrics.limit.set(i64::from(state.controller.limit()));
        self.metrics.in_flight.set(i64::from(state.in_flight));
        if let Some(min_rtt) = state.controller.min_rtt() {
            self.metrics.min_rtt.set(min_rtt.as_secs_f64());
        }
    }
}

fn gradient_config(c: &AdaptiveConcurrencyConfig) -> GradientConfig {
    GradientConfig {
        sample_aggregate_percentile: c.sample_aggregate_percentile,
        concurrency_update_interval: c.concurrency_update_interval,
        min_rtt_calc_interval: c.min_rtt_calc_interval,
        min_rtt_calc_request_count: c.min_rtt_calc_request_count,
        min_rtt_buffer_percent: c.min_rtt_buffer_percent,
        jitter_percent: c.jitter_percent,
        min_concurrency: c.min_concurrency,
        min_concurrency_limit: c.min_concurrency_limit,
        max_concurrency_limit: c.max_concurrency_limit,
    }
}

/// One admitted request's slot; released on drop.
pub struct Permit {
    limiter: Arc<ConcurrencyLimiter>,
    admitted_at: Instant,
    sampled: bool,
}

impl Permit {
    /// Feeds the controller the request's latency up to `now`.
    fn sample(&mut self, now: Instant) {
        self.sampled = true;
        let mut state = self.limiter.lock();
        self.record(&mut state, now);
        self.limiter.publish(&state);
    }

    /// For outcomes that say nothing about the upstream's speed.
    fn skip_sample(&mut self) {
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

#[derive(Clone)]
pub struct AdaptiveConcurrencyLayer(Arc<ConcurrencyLimiter>);

impl AdaptiveConcurrencyLayer {
    pub fn new(limiter: Arc<ConcurrencyLimiter>) -> Self {
        Self(limiter)
    }
}

impl<S> Layer<S> for AdaptiveConcurrencyLayer {
    type Service = AdaptiveConcurrency<S>;
    fn layer(&self, inner: S) -> AdaptiveConcurrency<S> {
        AdaptiveConcurrency {
            inner,
            limiter: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AdaptiveConcurrency<S> {
    inner: S,
    limiter: Arc<ConcurrencyLimiter>,
}

// Generic over the request body: naming `Body` (a boxed `dyn Error` type)
// in the bound makes rustc demand `Send` for every lifetime of that error.
impl<S, B> Service<Request<B>> for AdaptiveConcurrency<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(mut permit) = self.limiter.try_acquire(Instant::now()) else {
            return Box::pin(std::future::ready(Err(ProxyError::new(
                ErrorKind::Overloaded(Overload::Concurrency),
                "",
            ))));
        };
        let response = self.inner.call(req);
        Box::pin(async move {
            match response.await {
                Ok(response) => {
                    permit.sample(Instant::now());
                    Ok(response.map(|b| body::hold_until_dropped(b, permit)))
                }
                Err(e) => {
                    if matches!(e.kind(), ErrorKind::ConnectFailed | ErrorKind::Overloaded(_)) {
                        permit.skip_sample();
                    }
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::Metrics;
    use tokio::time::Duration;
    use tower::{service_fn, ServiceExt};

    fn limiter(metrics: &Metrics) -> Arc<ConcurrencyLimiter> {
        let config = AdaptiveConcurrencyConfig {
            min_concurrency: 2,
            ..AdaptiveConcurrencyConfig::default()
        };
        Arc::new(ConcurrencyLimiter::new(&config, "c", &metrics.overload))
    }

    #[tokio::test(start_paused = true)]
    async fn over_the_limit_fails_at_once_and_slots_return_when_bodies_drop() {
        let metrics = Metrics::new().unwrap();
        let limiter = limiter(&metrics);
        let slow = service_fn(|_req: Request<Body>| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, ProxyError>(Response::new(body::empty()))
        });
        let svc = AdaptiveConcurrencyLayer::new(limiter.clone()).layer(slow);
        let req = || Request::new(body::empty());
        // The limiter starts by measuring minRTT at min_concurrency = 2.
        let a = tokio::spawn(svc.clone().oneshot(req()));
        let b = tokio::spawn(svc.clone().oneshot(req()));
        tokio::task::yield_now().await;
        let rejected = svc.clone().oneshot(req()).await.unwrap_err();
        assert_eq!(rejected.kind(), ErrorKind::Overloaded(Overload::Concurrency));
        assert_eq!(rejected.into_response().headers()["x-weft-overloaded"], "concurrency");
        let held = a.await.unwrap().unwrap();
        drop(b.await.unwrap().unwrap());
        // One response body is still alive, so one slot is taken.
        assert_eq!(
            metrics.overload.concurrency_in_flight.with_label_values(&["c"]).get(),
            1
        );
        drop(held);
        assert_eq!(
            metrics.overload.concurrency_in_flight.with_label_values(&["c"]).get(),
            0
        );
        assert_eq!(
            metrics.overload.concurrency_rejections.with_label_values(&["c"]).get(),
            1
        );
        assert_eq!(limiter.limit(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_cancelled_before_headers_are_sampled_with_their_wait() {
        let metrics = Metrics::new().unwrap();
        let config = AdaptiveConcurrencyConfig {
            min_rtt_calc_request_count: 1,
            ..AdaptiveConcurrencyConfig::default()
        };
        let limiter = Arc::new(ConcurrencyLimiter::new(&config, "c", &metrics.overload));
        let hung = service_fn(|_req: Request<Body>| std::future::pending::<Result<Response<Body>, ProxyError>>());
        let svc = AdaptiveConcurrencyLayer::new(limiter).layer(hung);
        let cancelled = tokio::time::timeout(Duration::from_millis(30), svc.oneshot(Request::new(body::empty())));
        assert!(cancelled.await.is_err());
        // The one sample that ends the minRTT measurement is the 30 ms wait.
        let min_rtt = metrics.overload.min_rtt_seconds.with_label_values(&["c"]).get();
        assert!((min_rtt - 0.030).abs() < 1e-9, "{min_rtt}");
        assert_eq!(
            metrics.overload.concurrency_in_flight.with_label_values(&["c"]).get(),
            0
        );
    }
}
