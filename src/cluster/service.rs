//! The endpoint edge of the stack: pick an endpoint of the cluster, send the
//! request over the cluster's pooled client, count the result and feed it to
//! the endpoint's latency estimate and the cluster's outlier detector (a
//! failure that is the client's, a bad request body, is counted nowhere).
//! An original-destination cluster picks nothing: it sends each request to
//! the request's original destination (see `original_destination`), over
//! that destination's pool, and keeps no endpoint health.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body_util::BodyExt;
use tower::Service;

use super::Cluster;
use crate::core::body::Body;
use crate::core::error::{ErrorKind, ProxyError};
use crate::core::extensions::{EndpointHint, OriginalDestination, ServedBy};
use crate::core::service::ResponseFuture;

#[derive(Clone)]
pub struct ClusterService {
    cluster: Arc<Cluster>,
}

impl ClusterService {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }
}

impl Service<Request<Body>> for ClusterService {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let cluster = self.cluster.clone();
        if cluster.original_destination.is_some() {
            return Box::pin(send_to_original_destination(cluster, req));
        }
        let hint = req.extensions().get::<EndpointHint>().cloned();
        Box::pin(async move {
            let Some(http) = cluster.http.as_ref() else {
                return Err(ProxyError::new(
                    ErrorKind::NoEndpoint,
                    format!("cluster {} does not speak HTTP", cluster.name),
                ));
            };
            let endpoint = cluster.pick(hint.as_ref().and_then(|h| h.exclude)).ok_or_else(|| {
                ProxyError::new(
                    ErrorKind::NoEndpoint,
                    format!("cluster {} has no available endpoint", cluster.name),
                )
            })?;
            if let Some(hint) = &hint {
                let _ = hint.picked.set(endpoint.id);
            }
            let in_flight = endpoint.start_request();
            let attempt = cluster.start_attempt(&endpoint);
            let result = http.send(&endpoint.target, req).await;
            attempt.finish(result.as_ref().map(|r| r.status()).map_err(|e| e.kind()));
            match result {
                Ok(response) => {
                    endpoint.upstream_requests.inc(response.status().as_u16());
                    let mut response = response.map(|body| {
                        // The request stays in flight until its body is done.
                        body.map_err(move |e| {
                            let _ = &in_flight;
                            e
                        })
                        .boxed()
                    });
                    response.extensions_mut().insert(ServedBy(endpoint.target.address));
                    Ok(response)
                }
                Err(e) => {
                    // A client's bad request is not the endpoint's error.
                    if e.kind() != ErrorKind::BadRequest {
                        endpoint.upstream_requests.inc(e.status().as_u16());
                    }
                    Err(e.at_endpoint(endpoint.target.address))
                }
            }
        })
    }
}

/// Sends `req` to its original destination (the request extension the
/// listener set), with the cluster's overrides.
async fn send_to_original_destination(cluster: Arc<Cluster>, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let no_endpoint = |why: &str| ProxyError::new(ErrorKind::NoEndpoint, format!("cluster {}: {why}", cluster.name));
    let (Some(http), Some(destinations)) = (cluster.http.as_ref(), cluster.original_destination.as_ref()) else {
        return Err(no_endpoint("does not speak HTTP"));
    };
    let Some(&OriginalDestination(original)) = req.extensions().get::<OriginalDestination>() else {
        return Err(no_endpoint("the request has no original destination"));
    };
    let target = destinations.target(original);
    let http = destinations.client_for(req.version()).unwrap_or(http);
    let mut response = http.send(&target, req).await?;
    response.extensions_mut().insert(ServedBy(target.address));
    // The target (its pool) counts as in use until the body is done.
    Ok(response.map(|body| crate::core::body::hold_until_dropped(body, target)))
}
