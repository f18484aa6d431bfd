//! The only place layers are composed. A route target is boxed at the route
//! edge so the rest of the proxy sees one concrete service type and generic
//! stacks never nest deeply (short compile times).
//!
//! Per request: `proxy::Proxy` (route match, header rewriting, metrics, access
//! log, error rescue) -> route timeout (capped by `grpc-timeout`) -> retry
//! (route policy, cluster budget, per-try timeout) -> per try: circuit
//! breaker `max_requests` -> adaptive concurrency -> cluster (endpoint pick +
//! pooled upstream client, whose connector enforces the connection limits).
//! The overload layers sit inside retry so that every try is admitted on its
//! own, and their rejections reach retry as errors it never retries.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower::{service_fn, Layer, Service};

use crate::body::Body;
use crate::cluster::{service::ClusterService, Cluster};
use crate::config::mirror::MirrorConfig;
use crate::error::{plain_response, ProxyError};
use crate::layer::adaptive_concurrency::AdaptiveConcurrencyLayer;
use crate::layer::circuit_breaker::RequestLimitLayer;
use crate::layer::mirror::{MirrorLayer, ShadowTargets, DEFAULT_SHADOW_DEADLINE};
use crate::layer::retry::RetryLayer;
use crate::layer::timeout::TimeoutLayer;
use crate::route::Route;
use crate::telemetry::metrics::Metrics;

pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

/// A type-erased, always-ready service whose clone is a reference-count
/// bump: the proxy and the retry layer clone the service of every request
/// (tower's `call` takes `&mut self`), and tower's `BoxCloneSyncService`
/// paid a heap allocation for each clone, at every boxed edge.
#[derive(Clone)]
pub struct RouteService(Arc<dyn Fn(Request<Body>) -> ResponseFuture + Send + Sync>);

impl RouteService {
    /// Erases `service`, whose future is already boxed (every weft layer's
    /// is), so nothing is boxed twice. It must never apply backpressure
    /// through `poll_ready`: weft's layers reject in `call` instead.
    pub fn new<S>(service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError, Future = ResponseFuture>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        Self(Arc::new(move |req| service.clone().call(req)))
    }

    /// [`RouteService::new`] for a service with any future (boxed here).
    pub fn boxing<S>(service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        Self(Arc::new(move |req| Box::pin(service.clone().call(req))))
    }
}

impl Service<Request<Body>> for RouteService {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> ResponseFuture {
        (self.0)(req)
    }
}

/// The service that sends a route's requests to one cluster. Each layer
/// present is erased on its own, so absent ones cost nothing per request.
pub fn cluster_target(route: &Route, cluster: &Arc<Cluster>) -> RouteService {
    let overload = &cluster.overload;
    let mut per_try = RouteService::new(ClusterService::new(cluster.clone()));
    if let Some(concurrency) = overload.concurrency.clone() {
        per_try = RouteService::new(AdaptiveConcurrencyLayer::new(concurrency).layer(per_try));
    }
    if let Some(circuit) = overload.circuit.as_deref() {
        per_try = RouteService::new(RequestLimitLayer::new(circuit).layer(per_try));
    }
    let mut target = per_try;
    if let Some(policy) = route.retry.clone() {
        target = RouteService::new(RetryLayer::new(policy, overload.retry.clone()).layer(target));
    }
    RouteService::new(TimeoutLayer::new(route.timeout).layer(target))
}

/// [`cluster_target`] behind the route's mirror, when it has one: the
/// mirror sits outside the timeout, so it sees the answer the client gets.
pub fn mirrored_target(route: &Route, cluster: &Arc<Cluster>, mirror: Option<&MirrorLayer>) -> RouteService {
    let target = cluster_target(route, cluster);
    match mirror {
        Some(mirror) => RouteService::new(mirror.layer(target)),
        None => target,
    }
}

/// A route's mirror, shared by all its targets (one `max_in_flight` budget).
/// Shadow and noise copies go straight to their clusters; the mirror's own
/// deadline (the route timeout) bounds them.
pub fn mirror_layer(
    route: &Route,
    config: &MirrorConfig,
    shadow: &Arc<Cluster>,
    noise: Option<&Arc<Cluster>>,
    metrics: &Metrics,
) -> Result<MirrorLayer, String> {
    let targets = ShadowTargets {
        cluster: shadow.name.clone(),
        shadow: RouteService::new(ClusterService::new(shadow.clone())),
        noise: noise.map(|c| RouteService::new(ClusterService::new(c.clone()))),
        deadline: route.timeout.unwrap_or(DEFAULT_SHADOW_DEADLINE),
    };
    let board = metrics.mirror.route(&route.name, &shadow.name);
    MirrorLayer::new(&route.name, config, targets, board)
}

/// The service of a `direct_response` route.
pub fn direct_target(status: StatusCode, body: Bytes) -> RouteService {
    RouteService::boxing(service_fn(move |_req: Request<Body>| {
        let body = body.clone();
        async move { Ok(plain_response(status, body)) }
    }))
}
