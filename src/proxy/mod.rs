//! The front service shared by every HTTP listener: for each request it
//! loads the live snapshot once (a reload never changes a request midway)
//! and runs the front path composed in `stack::front` against the
//! listener's routes in that snapshot.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::{Request, Response};
use tower::Service;

use crate::core::body::{self, Body};
use crate::front::Downstream;
use crate::snapshot::Snapshot;
use crate::stack::{self, Front};
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;

/// State shared by all listeners and the admin server.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    /// False once draining has begun: `/ready` answers 503.
    pub ready: AtomicBool,
    /// Trace context and span export (`tracing` section).
    pub tracing: crate::telemetry::trace::Tracing,
    /// Where access log lines go (when `access_log.enabled`).
    pub access_log: AccessLog,
    /// Requests received on every listener; tells `memory` when load stops.
    pub requests: AtomicU64,
}

#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    downstream: Arc<Downstream>,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>, downstream: Arc<Downstream>) -> Self {
        Self { shared, downstream }
    }
}

/// Any request body works: hyper's for HTTP/1 and HTTP/2, h3's for HTTP/3.
impl<B> Service<Request<B>> for Proxy
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<crate::core::error::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        let downstream = self.downstream.clone();
        let req: Request<Body> = req.map(body::boxed);
        Box::pin(async move {
            shared.requests.fetch_add(1, Ordering::Relaxed);
            let snapshot = shared.snapshot.load_full();
            let context = Front {
                downstream: &downstream,
                routes: snapshot.listeners.get(&*downstream.listener),
                metrics: &shared.metrics,
                tracing: &shared.tracing,
                access_log: snapshot.loaded.config.access_log.enabled.then_some(&shared.access_log),
            };
            Ok(stack::front(context, req).await)
        })
    }
}

/// Whether the proxy should report ready.
pub fn is_ready(shared: &Shared) -> bool {
    shared.ready.load(Ordering::Relaxed)
}
