//! Pooled upstream HTTP/1.1 and HTTP/2 connections, one pool per cluster,
//! keyed by endpoint; plain text (HTTP/2 by prior knowledge) or TLS with the
//! cluster's `tls` settings (ALPN asks for the cluster's protocol).

use std::path::Path;

use http::uri::Scheme;
use http::{Request, Response, Uri, Version};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::ServerName;

use crate::body::{self, Body};
use crate::cluster::Endpoint;
use crate::config::schema::{ClusterConfig, ClusterProtocol};
use crate::error::{from_client_error, ErrorKind, ProxyError};
use crate::layer::circuit_breaker::connector::{ConnectionLimits, LimitedConnector};
use crate::tls;

pub mod h3;

/// The client of an HTTP cluster, whatever its protocol.
pub enum HttpClient {
    Tcp(TcpClient),
    Quic(h3::H3Client),
}

impl HttpClient {
    /// Fails only when the cluster's TLS files cannot be loaded (or, for
    /// HTTP/3, no UDP socket can be opened).
    /// `limits` are the cluster circuit breaker's connection limits, if any.
    pub fn new(config: &ClusterConfig, limits: Option<ConnectionLimits>) -> Result<Self, String> {
        match config.protocol {
            ClusterProtocol::Http3 => Ok(Self::Quic(h3::H3Client::new(config)?)),
            _ => Ok(Self::Tcp(TcpClient::new(config, limits)?)),
        }
    }

    pub async fn send(&self, endpoint: &Endpoint, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        match self {
            Self::Tcp(client) => client.send(endpoint, req).await,
            Self::Quic(client) => client.send(endpoint, req).await,
        }
    }
}

/// HTTP/1.1 and HTTP/2 over TCP (optionally TLS), pooled by hyper-util.
#[derive(Clone)]
pub struct TcpClient {
    client: Client<LimitedConnector<HttpsConnector<HttpConnector>>, Body>,
    version: Version,
    scheme: Scheme,
}

impl TcpClient {
    fn new(config: &ClusterConfig, limits: Option<ConnectionLimits>) -> Result<Self, String> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        // The TLS wrapper decides by the URI scheme whether to handshake.
        connector.enforce_http(false);
        let http2 = config.protocol == ClusterProtocol::Http2;
        // ALPN is set by the connector builder (enable_http1/enable_http2).
        let tls = match &config.tls {
            Some(tls) => Some((tls::client_config(tls, Path::new("/"), &[])?, tls.sni.clone())),
            None => None,
        };
        let scheme = if tls.is_some() { Scheme::HTTPS } else { Scheme::HTTP };
        let (tls_config, sni) = tls.unwrap_or_else(|| (tls::unused_client_config(), None));
        let builder = HttpsConnectorBuilder::new().with_tls_config(tls_config).https_or_http();
        let builder = match sni.and_then(|s| ServerName::try_from(s).ok()) {
            Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name)),
            None => builder,
        };
        // These set ALPN to the one protocol the cluster speaks.
        let connector = if http2 {
            builder.enable_http2().wrap_connector(connector)
        } else {
            builder.enable_http1().wrap_connector(connector)
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(http2)
            .build(LimitedConnector::new(connector, limits));
        Ok(Self {
            client,
            version: if http2 { Version::HTTP_2 } else { Version::HTTP_11 },
            scheme,
        })
    }

    /// Sends `req` to `endpoint`, rewriting the URI to point at it and the
    /// version to the cluster's protocol.
    async fn send(&self, endpoint: &Endpoint, mut req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
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
