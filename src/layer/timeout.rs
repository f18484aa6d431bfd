//! Route timeout: if the inner service has not produced response headers
//! within the deadline, the request fails with [`ErrorKind::Timeout`] (504).
//! The deadline covers every try, so retries (inside this layer) cannot
//! stretch a request past it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::Duration;
use tower::{Layer, Service};

use crate::error::{ErrorKind, ProxyError};

#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer(Duration);

impl TimeoutLayer {
    pub fn new(timeout: Duration) -> Self {
        Self(timeout)
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout { inner, timeout: self.0 }
    }
}

#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, Req> Service<Req> for Timeout<S>
where
    S: Service<Req, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, ProxyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let timeout = self.timeout;
        let response = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(timeout, response).await {
                Ok(result) => result,
                Err(_) => Err(ProxyError::new(
                    ErrorKind::Timeout,
                    format!("no response within {}", humantime::format_duration(timeout)),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{service_fn, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn expires_slow_responses_only() {
        let slow = service_fn(|delay: u64| async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            Ok::<_, ProxyError>(delay)
        });
        let svc = TimeoutLayer::new(Duration::from_millis(100)).layer(slow);
        assert_eq!(svc.clone().oneshot(99).await.unwrap(), 99);
        let err = svc.oneshot(101).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
    }
}
