//! Route timeout: if the inner service has not produced response headers
//! within the deadline, the request fails with [`ErrorKind::Timeout`] (504).
//! The deadline covers every try, so retries (inside this layer) cannot
//! stretch a request past it.
//!
//! For gRPC calls (`content-type: application/grpc...`) an incoming
//! `grpc-timeout` header (gRPC over HTTP/2 spec: up to 8 digits and a unit,
//! H M S m u n) caps the deadline: the caller will have given up by then, so
//! working longer only wastes upstream capacity. Without a route timeout the
//! header alone sets it. An unparsable header is ignored, as gRPC servers do.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, Request};
use tokio::time::Duration;
use tower::{Layer, Service};

use crate::core::error::{ErrorKind, ProxyError};

#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer(Option<Duration>);

impl TimeoutLayer {
    /// `route_timeout` of `None` still honours `grpc-timeout`.
    pub fn new(route_timeout: Option<Duration>) -> Self {
        Self(route_timeout)
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
    timeout: Option<Duration>,
}

/// A boxed response future, as every weft layer returns.
type Boxed<T> = Pin<Box<dyn Future<Output = Result<T, ProxyError>> + Send>>;

impl<S, B, R> Service<Request<B>> for Timeout<S>
where
    S: Service<Request<B>, Response = R, Error = ProxyError, Future = Boxed<R>>,
    R: 'static,
{
    type Response = R;
    type Error = ProxyError;
    type Future = Boxed<R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let timeout = match (self.timeout, grpc_timeout(req.headers())) {
            (Some(route), Some(grpc)) => Some(route.min(grpc)),
            (route, grpc) => route.or(grpc),
        };
        let response = self.inner.call(req);
        // Without a deadline the inner future is the answer: no box, no poll around it.
        let Some(timeout) = timeout else {
            return response;
        };
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

/// The `grpc-timeout` of a gRPC request, if it has a valid one.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    if !crate::core::error::is_grpc(headers) {
        return None;
    }
    parse_grpc_timeout(headers.get("grpc-timeout")?.to_str().ok()?)
}

fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let unit = text.chars().last()?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(value * 3600),
        'M' => Duration::from_secs(value * 60),
        'S' => Duration::from_secs(value),
        'm' => Duration::from_millis(value),
        'u' => Duration::from_micros(value),
        'n' => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{service_fn, ServiceExt};

    fn delayed(delay: u64, grpc_timeout: Option<&str>) -> Request<u64> {
        let mut req = Request::builder().header("content-type", "application/grpc+proto");
        if let Some(t) = grpc_timeout {
            req = req.header("grpc-timeout", t);
        }
        req.body(delay).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn expires_slow_responses_only_and_grpc_timeout_caps_it() {
        let slow = service_fn(|req: Request<u64>| -> Boxed<u64> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(*req.body())).await;
                Ok(*req.body())
            })
        });
        let svc = TimeoutLayer::new(Some(Duration::from_millis(100))).layer(slow);
        assert_eq!(svc.clone().oneshot(delayed(99, None)).await.unwrap(), 99);
        let err = svc.clone().oneshot(delayed(101, None)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        let err = svc.clone().oneshot(delayed(60, Some("50m"))).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        // A longer grpc-timeout does not extend the route timeout.
        assert!(svc.clone().oneshot(delayed(150, Some("1S"))).await.is_err());
        let no_route_timeout = TimeoutLayer::new(None).layer(slow);
        assert!(no_route_timeout
            .clone()
            .oneshot(delayed(60, Some("50m")))
            .await
            .is_err());
        assert_eq!(no_route_timeout.oneshot(delayed(5_000, None)).await.unwrap(), 5_000);
    }

    #[test]
    fn grpc_timeout_units() {
        let parsed: Vec<_> = ["1H", "2M", "3S", "4m", "5u", "6n", "99999999m"]
            .iter()
            .map(|t| parse_grpc_timeout(t))
            .collect();
        assert_eq!(
            parsed,
            [
                Some(Duration::from_secs(3600)),
                Some(Duration::from_secs(120)),
                Some(Duration::from_secs(3)),
                Some(Duration::from_millis(4)),
                Some(Duration::from_micros(5)),
                Some(Duration::from_nanos(6)),
                Some(Duration::from_millis(99_999_999)),
            ]
        );
        for bad in ["", "S", "100", "123456789S", "-1S", "1s", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", "1S".parse().unwrap());
        assert_eq!(grpc_timeout(&headers), None, "not a gRPC call");
    }
}
