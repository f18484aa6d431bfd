//! The endpoint edge of the stack: pick an endpoint of the cluster, send the
//! request over the cluster's pooled client, count the result and feed it to
//! the endpoint's latency estimate and the cluster's outlier detector (a
//! failure that is the client's, a bad request body, is counted nowhere).

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body_util::BodyExt;
use tower::Service;

use super::Cluster;
use crate::core::body::Body;
use crate::core::error::{ErrorKind, ProxyError};
use crate::core::extensions::{EndpointHint, ServedBy};
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
