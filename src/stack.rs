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

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use tower::{service_fn, Layer};

use crate::cluster::{service::ClusterService, Cluster};
use crate::config::mirror::MirrorConfig;
use crate::core::body::Body;
use crate::core::error::plain_response;
use crate::core::service::HttpService;
use crate::layer::admission::AdmissionLayer;
use crate::layer::mirror::{MirrorLayer, ShadowTargets, DEFAULT_SHADOW_DEADLINE};
use crate::layer::retry::RetryLayer;
use crate::layer::timeout::TimeoutLayer;
use crate::route::Route;
use crate::telemetry::metrics::Metrics;

/// The service that sends a route's requests to one cluster. Each layer
/// present is erased on its own, so absent ones cost nothing per request.
pub fn cluster_target(route: &Route, cluster: &Arc<Cluster>) -> HttpService {
    let overload = &cluster.overload;
    let mut per_try = HttpService::new(ClusterService::new(cluster.clone()));
    if let Some(concurrency) = overload.concurrency.clone() {
        per_try = HttpService::new(AdmissionLayer::new(concurrency).layer(per_try));
    }
    if let Some(circuit) = overload.circuit.as_deref() {
        per_try = HttpService::new(AdmissionLayer::new(circuit.requests.clone()).layer(per_try));
    }
    let mut target = per_try;
    if let Some(policy) = route.retry.clone() {
        target = HttpService::new(RetryLayer::new(policy, overload.retry.clone()).layer(target));
    }
    HttpService::new(TimeoutLayer::new(route.timeout).layer(target))
}

/// [`cluster_target`] behind the route's mirror, when it has one: the
/// mirror sits outside the timeout, so it sees the answer the client gets.
pub fn mirrored_target(route: &Route, cluster: &Arc<Cluster>, mirror: Option<&MirrorLayer>) -> HttpService {
    let target = cluster_target(route, cluster);
    match mirror {
        Some(mirror) => HttpService::new(mirror.layer(target)),
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
        shadow: HttpService::new(ClusterService::new(shadow.clone())),
        noise: noise.map(|c| HttpService::new(ClusterService::new(c.clone()))),
        deadline: route.timeout.unwrap_or(DEFAULT_SHADOW_DEADLINE),
    };
    let board = metrics.mirror.route(&route.name, &shadow.name);
    MirrorLayer::new(&route.name, config, targets, board)
}

/// The service of a `direct_response` route.
pub fn direct_target(status: StatusCode, body: Bytes) -> HttpService {
    HttpService::boxing(service_fn(move |_req: Request<Body>| {
        let body = body.clone();
        async move { Ok(plain_response(status, body)) }
    }))
}
