//! Admission control: a request either gets a permit at once or is refused
//! at once with an overload error (503 and `x-weft-overloaded`); nothing
//! queues, because queueing in front of a slow upstream only adds latency
//! and hides the overload from callers. The permit is held until the
//! response body ends or is dropped, so a slot counts the whole exchange.
//!
//! Two admitters share this one service: the adaptive concurrency limiter
//! (`cluster::overload::ConcurrencyLimiter`, whose permit also feeds the
//! gradient controller a latency sample when headers arrive) and the circuit
//! breaker's `max_requests` counter (`policy::circuit::Gauge`).

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::cluster::overload::{ConcurrencyLimiter, Permit};
use crate::core::body::{self, Body};
use crate::core::error::{ErrorKind, Overload, ProxyError};
use crate::core::service::ResponseFuture;
use crate::policy::circuit::{CircuitLimit, CircuitOpen, Gauge, Slot};

/// Something that grants or refuses permits without waiting.
pub trait Admit: Send + Sync + 'static {
    type Permit: Send + Sync + 'static;

    /// A permit, or the overload error the request fails with.
    fn admit(self: &Arc<Self>, now: Instant) -> Result<Self::Permit, ProxyError>;

    /// Told how the admitted request ended, up to its response headers.
    fn answered(_permit: &mut Self::Permit, _result: Result<(), &ProxyError>, _now: Instant) {}
}

impl Admit for ConcurrencyLimiter {
    type Permit = Permit;

    fn admit(self: &Arc<Self>, now: Instant) -> Result<Permit, ProxyError> {
        self.try_acquire(now)
            .ok_or_else(|| ProxyError::new(ErrorKind::Overloaded(Overload::Concurrency), ""))
    }

    /// Latency is sampled at response headers; connect failures, overload
    /// rejections further in and a client's bad request body say nothing
    /// about how fast the upstream serves.
    fn answered(permit: &mut Permit, result: Result<(), &ProxyError>, now: Instant) {
        match result {
            Ok(()) => permit.sample(now),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectFailed | ErrorKind::Overloaded(_) | ErrorKind::BadRequest
                ) =>
            {
                permit.skip_sample()
            }
            Err(_) => {}
        }
    }
}

/// The circuit breaker's `max_requests`.
impl Admit for Gauge {
    type Permit = Slot;

    fn admit(self: &Arc<Self>, _now: Instant) -> Result<Slot, ProxyError> {
        self.try_acquire().ok_or_else(|| {
            let open = CircuitOpen(CircuitLimit::MaxRequests);
            ProxyError::new(ErrorKind::Overloaded(Overload::Circuit), open.to_string())
        })
    }
}

pub struct AdmissionLayer<A>(Arc<A>);

impl<A> AdmissionLayer<A> {
    pub fn new(admitter: Arc<A>) -> Self {
        Self(admitter)
    }
}

impl<A> Clone for AdmissionLayer<A> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S, A> Layer<S> for AdmissionLayer<A> {
    type Service = Admission<S, A>;
    fn layer(&self, inner: S) -> Admission<S, A> {
        Admission {
            inner,
            admitter: self.0.clone(),
        }
    }
}

pub struct Admission<S, A> {
    inner: S,
    admitter: Arc<A>,
}

impl<S: Clone, A> Clone for Admission<S, A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            admitter: self.admitter.clone(),
        }
    }
}

// Generic over the request body: naming `Body` (a boxed `dyn Error` type)
// in the bound makes rustc demand `Send` for every lifetime of that error.
impl<S, A, B> Service<Request<B>> for Admission<S, A>
where
    S: Service<Request<B>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
    A: Admit,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut permit = match self.admitter.admit(Instant::now()) {
            Ok(permit) => permit,
            Err(refused) => return Box::pin(std::future::ready(Err(refused))),
        };
        let response = self.inner.call(req);
        Box::pin(async move {
            let result = response.await;
            A::answered(&mut permit, result.as_ref().map(|_| ()), Instant::now());
            Ok(result?.map(|b| body::hold_until_dropped(b, permit)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::AdaptiveConcurrencyConfig;
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
        let svc = AdmissionLayer::new(limiter.clone()).layer(slow);
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
        let svc = AdmissionLayer::new(limiter).layer(hung);
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
