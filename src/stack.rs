//! The only place layers are composed. A route target is boxed at the route
//! edge so the rest of the proxy sees one concrete service type and generic
//! stacks never nest deeply (short compile times).
//!
//! Per request: `proxy::Proxy` (route match, header rewriting, metrics, access
//! log, error rescue) -> route timeout -> cluster (endpoint pick + pooled
//! upstream client).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower::util::BoxCloneSyncService;
use tower::{service_fn, ServiceBuilder};

use crate::body::Body;
use crate::cluster::{service::ClusterService, Cluster};
use crate::error::{plain_response, ProxyError};
use crate::layer::timeout::TimeoutLayer;
use crate::route::Route;

pub type RouteService = BoxCloneSyncService<Request<Body>, Response<Body>, ProxyError>;

/// The service that sends a route's requests to one cluster.
pub fn cluster_target(route: &Route, cluster: &Arc<Cluster>) -> RouteService {
    ServiceBuilder::new()
        .layer(BoxCloneSyncService::layer())
        .option_layer(route.timeout.map(TimeoutLayer::new))
        .service(ClusterService::new(cluster.clone()))
}

/// The service of a `direct_response` route.
pub fn direct_target(status: StatusCode, body: Bytes) -> RouteService {
    BoxCloneSyncService::new(service_fn(move |_req: Request<Body>| {
        let body = body.clone();
        async move { Ok(plain_response(status, body)) }
    }))
}
