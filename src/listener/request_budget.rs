//! `limits.max_requests_per_connection` (Envoy's name): how many requests
//! one downstream HTTP/1.1 or HTTP/2 connection may carry. The service of
//! each connection is wrapped in [`Budgeted`], which counts its requests;
//! the request that spends the budget says so, and then:
//!
//! - HTTP/1.1: its response carries `connection: close`, so hyper's server
//!   closes the connection after writing it (and the client knows not to
//!   send another request on it);
//! - HTTP/2: the connection's task hears it through [`RequestBudget::spent`]
//!   and shuts the connection down gracefully: GOAWAY, and the streams
//!   already open are still served.
//!
//! Without the limit the wrapper passes requests through untouched.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Request, Response};
use tokio::sync::Notify;
use tower::Service;

use crate::core::body::Body;
use crate::core::error::BoxError;
use crate::proxy::Proxy;

/// The requests one connection may still carry.
pub struct RequestBudget {
    max: u64,
    used: AtomicU64,
    spent: Notify,
}

impl RequestBudget {
    /// `None` when the listener sets no limit.
    pub fn new(max: Option<u64>) -> Option<Arc<Self>> {
        max.map(|max| {
            Arc::new(Self {
                max,
                used: AtomicU64::new(0),
                spent: Notify::new(),
            })
        })
    }

    /// Counts one request; true for the one that spends the budget (and
    /// any after it, which a client may have sent already).
    fn take(&self) -> bool {
        let used = self.used.fetch_add(1, Ordering::Relaxed) + 1;
        let last = used >= self.max;
        if last {
            // A stored permit: the connection task sees it even when it
            // starts waiting only later.
            self.spent.notify_one();
        }
        last
    }

    /// Resolves once the budget is spent.
    pub async fn spent(&self) {
        self.spent.notified().await
    }
}

/// Resolves once `budget` is spent; never without one.
pub async fn spent(budget: Option<&RequestBudget>) {
    match budget {
        Some(budget) => budget.spent().await,
        None => std::future::pending().await,
    }
}

/// The connection's [`Proxy`], counting requests against its budget.
#[derive(Clone)]
pub struct Budgeted {
    pub proxy: Proxy,
    pub budget: Option<Arc<RequestBudget>>,
    /// HTTP/1.x: the last response closes the connection itself.
    pub http1: bool,
    /// HTTP/2: told of each request (a stored permit), so a connection
    /// task can wait for the first one before sending GOAWAY.
    pub arrived: Option<Arc<Notify>>,
}

impl<B> Service<Request<B>> for Budgeted
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = <Proxy as Service<Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request<B>>::poll_ready(&mut self.proxy, cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some(arrived) = &self.arrived {
            arrived.notify_one();
        }
        let last = self.budget.as_ref().is_some_and(|b| b.take());
        let answer = self.proxy.call(req);
        if !(last && self.http1) {
            return answer;
        }
        Box::pin(async move {
            let mut response = answer.await?;
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_request_that_spends_the_budget_says_so_once_waited_for() {
        let budget = RequestBudget::new(Some(2)).unwrap();
        assert!(!budget.take());
        assert!(budget.take());
        // Heard although nobody was waiting when it was spent.
        tokio::time::timeout(tokio::time::Duration::from_secs(5), budget.spent())
            .await
            .unwrap();
        assert!(budget.take(), "requests past the budget count as spent too");
        assert!(RequestBudget::new(None).is_none());
    }
}
