//! Pooled upstream HTTP/1.1 and HTTP/2 (prior knowledge) connections, one
//! pool per cluster, keyed by endpoint.

use http::{Request, Response, Uri, Version};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{self, Body};
use crate::cluster::Endpoint;
use crate::config::schema::{ClusterConfig, ClusterProtocol};
use crate::error::{from_client_error, ErrorKind, ProxyError};
use crate::layer::circuit_breaker::connector::{ConnectionLimits, LimitedConnector};

#[derive(Clone)]
pub struct HttpClient {
    client: Client<LimitedConnector<HttpConnector>, Body>,
    version: Version,
}

impl HttpClient {
    /// `limits` are the cluster circuit breaker's connection limits, if any.
    pub fn new(config: &ClusterConfig, limits: Option<ConnectionLimits>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        let http2 = config.protocol == ClusterProtocol::Http2;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(http2)
            .build(LimitedConnector::new(connector, limits));
        Self {
            client,
            version: if http2 { Version::HTTP_2 } else { Version::HTTP_11 },
        }
    }

    /// Sends `req` to `endpoint`, rewriting the URI to point at it and the
    /// version to the cluster's protocol.
    pub async fn send(&self, endpoint: &Endpoint, mut req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri = Uri::builder()
            .scheme("http")
            .authority(endpoint.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| ProxyError::new(ErrorKind::BadRequest, e.to_string()))?;
        *req.uri_mut() = uri;
        *req.version_mut() = self.version;
        let response = self.client.request(req).await.map_err(from_client_error)?;
        Ok(response.map(body::boxed::<hyper::body::Incoming>))
    }
}
