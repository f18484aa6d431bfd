//! A connector wrapper that enforces `max_connections` and
//! `max_pending_requests` for one cluster's pooled client: it reserves a
//! connection slot and a pending slot before connecting, gives the pending
//! slot back when the attempt ends, and keeps the connection slot inside the
//! returned stream until hyper drops the connection. Refusals fail the
//! connect with [`CircuitOpen`], which the client reports as a connect error
//! and `connect_error` turns into a circuit overload rejection.
//! The pooled client fails a request at once when its connect fails, so a
//! refusal is immediate (no queueing). A new connection is also refused
//! while free file descriptors are down to the reserve kept for accept and
//! the admin port (`upstream::descriptors`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use tower::Service;

use crate::core::error::BoxError;
use crate::policy::circuit::{CircuitBreaker, CircuitLimit, CircuitOpen, Gauge, Slot};

/// Counting limits for a connector; absent when the cluster has no circuit breaker.
#[derive(Clone)]
pub struct ConnectionLimits {
    connections: Arc<Gauge>,
    pending: Arc<Gauge>,
    descriptors_refused: prometheus::IntCounter,
}

impl ConnectionLimits {
    pub fn new(breaker: &CircuitBreaker) -> Self {
        Self {
            connections: breaker.connections.clone(),
            pending: breaker.pending.clone(),
            descriptors_refused: breaker.descriptors_refused.clone(),
        }
    }
}

#[derive(Clone)]
pub struct LimitedConnector<C> {
    inner: C,
    limits: Option<ConnectionLimits>,
}

impl<C> LimitedConnector<C> {
    pub fn new(inner: C, limits: Option<ConnectionLimits>) -> Self {
        Self { inner, limits }
    }
}

impl<C> Service<Uri> for LimitedConnector<C>
where
    C: Service<Uri> + Send + 'static,
    C::Response: Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = Limited<C::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (connection, pending, opening) = match &self.limits {
            None => (None, None, None),
            Some(limits) => {
                let Some(opening) = crate::upstream::descriptors::claim() else {
                    limits.descriptors_refused.inc();
                    return refuse(CircuitLimit::FileDescriptors);
                };
                let Some(connection) = limits.connections.try_acquire() else {
                    return refuse(CircuitLimit::MaxConnections);
                };
                let Some(pending) = limits.pending.try_acquire() else {
                    return refuse(CircuitLimit::MaxPendingRequests);
                };
                (Some(connection), Some(pending), Some(opening))
            }
        };
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let stream = connecting.await.map_err(Into::into)?;
            drop((pending, opening));
            Ok(Limited {
                inner: stream,
                _slot: connection,
            })
        })
    }
}

fn refuse<T: Send + 'static>(limit: CircuitLimit) -> Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>> {
    Box::pin(std::future::ready(Err(Box::new(CircuitOpen(limit)) as BoxError)))
}

/// A connection that holds its `max_connections` slot until dropped.
pub struct Limited<T> {
    inner: T,
    _slot: Option<Slot>,
}

impl<T: Connection> Connection for Limited<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

impl<T: Read + Unpin> Read for Limited<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Limited<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::CircuitBreakerConfig;
    use crate::telemetry::metrics::Metrics;
    use tokio::time::Duration;
    use tower::{service_fn, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn pending_and_open_connections_are_capped_exactly() {
        let metrics = Metrics::new().unwrap();
        let config = CircuitBreakerConfig {
            max_connections: Some(3),
            max_pending_requests: Some(2),
            max_requests: None,
        };
        let breaker = CircuitBreaker::new(&config, "c", &metrics.overload);
        // A slow connect: 100 ms, then a "connection" (a unit stand-in).
        let slow = service_fn(|_uri: Uri| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, BoxError>(())
        });
        let connector = LimitedConnector::new(slow, Some(ConnectionLimits::new(&breaker)));
        let uri = Uri::from_static("http://127.0.0.1:1");
        let first = tokio::spawn(connector.clone().oneshot(uri.clone()));
        let second = tokio::spawn(connector.clone().oneshot(uri.clone()));
        tokio::task::yield_now().await;
        let refused = connector.clone().oneshot(uri.clone()).await.err().unwrap();
        assert_eq!(
            refused.downcast_ref::<CircuitOpen>(),
            Some(&CircuitOpen(CircuitLimit::MaxPendingRequests))
        );
        let held = [first.await.unwrap().unwrap(), second.await.unwrap().unwrap()];
        assert_eq!((breaker.pending.current(), breaker.connections.current()), (0, 2));
        let third = connector.clone().oneshot(uri.clone()).await.unwrap();
        let refused = connector.clone().oneshot(uri.clone()).await.err().unwrap();
        assert_eq!(
            refused.downcast_ref::<CircuitOpen>(),
            Some(&CircuitOpen(CircuitLimit::MaxConnections))
        );
        drop((held, third));
        assert_eq!(breaker.connections.current(), 0);
    }
}
