//! Pooled upstream HTTP/1.1 and HTTP/2 connections, one pool per endpoint
//! (see [`pool`]); plain text (HTTP/2 by prior knowledge) or TLS with the
//! cluster's `tls` settings (ALPN asks for the cluster's protocol).
//!
//! Every exchange, whatever the protocol, has its request body watched (a
//! failure of it is the client's, see [`request_body`]) and its answer
//! checked before it goes downstream (see [`answer`]). HTTP/1.1 requests
//! carry `Host`; HTTP/2 and HTTP/3 requests carry the client's host as
//! `:authority` and no `Host` (RFC 9113 section 8.3.1, RFC 9114 section 4.3.1).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioTimer;
use rustls::pki_types::ServerName;
use tower::{Service, ServiceExt};

use crate::config::schema::{ClusterConfig, ClusterProtocol};
use crate::core::body::{self, Body};
use crate::core::error::{BoxError, ErrorKind, Overload, ProxyError};
use crate::core::executor::Http2Executor;
use crate::policy::circuit::CircuitOpen;
use crate::tls;
use limit::{ConnectionLimits, LimitedConnector};

pub mod answer;
pub mod descriptors;
pub mod h3;
pub mod limit;
pub mod pool;
pub mod request_body;

use pool::{ConnectionPool, PooledBody};

/// Where one endpoint's requests go: its address, the authority its URIs
/// and `Host` name, and its pooled connections (HTTP/1.1 and HTTP/2).
pub struct Target {
    pub address: SocketAddr,
    pub authority: Authority,
    pub pool: Arc<ConnectionPool>,
}

impl Target {
    pub fn new(address: SocketAddr, idle_timeout: tokio::time::Duration) -> Self {
        Self {
            address,
            // A socket address is always a valid authority.
            authority: Authority::try_from(address.to_string().as_str())
                .unwrap_or_else(|_| Authority::from_static("invalid")),
            pool: Arc::new(ConnectionPool::new(idle_timeout)),
        }
    }
}

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

    pub async fn send(&self, endpoint: &Target, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let asked_upgrade = req.headers().contains_key(header::UPGRADE);
        let (req, watch) = request_body::watch(req);
        let result = match self {
            Self::Tcp(client) => client.send(endpoint, req).await,
            // Boxed: the HTTP/3 future is large, and every request's future
            // would otherwise carry (and copy) its size.
            Self::Quic(client) => Box::pin(client.send(endpoint, req)).await,
        };
        watch
            .blame(result)
            .and_then(|response| answer::check(response, asked_upgrade))
    }
}

/// The `:authority` of an HTTP/2 or HTTP/3 request: the client's `Host`,
/// which is removed (a `Host` that differs from `:authority` makes strict
/// servers refuse the request), or the endpoint's address without one.
pub fn authority_from_host(headers: &mut http::HeaderMap, endpoint: &Target) -> Result<Authority, ProxyError> {
    match headers.remove(header::HOST) {
        Some(host) => Authority::try_from(host.as_bytes())
            .map_err(|e| ProxyError::new(ErrorKind::BadRequest, format!("invalid Host header: {e}"))),
        None => Ok(endpoint.authority.clone()),
    }
}

/// HTTP/1.1 and HTTP/2 over TCP (optionally TLS), pooled per endpoint
/// (see [`pool`]).
#[derive(Clone)]
pub struct TcpClient {
    connector: LimitedConnector<HttpsConnector<HttpConnector>>,
    http1: http1::Builder,
    /// `Some` for `http2` clusters.
    http2: Option<http2::Builder<Http2Executor>>,
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
        // `limits.max_response_headers_kb`: a larger header block is an
        // error of the exchange (502), in either protocol.
        let header_bytes = config.limits.max_response_headers_kb as usize * 1024;
        let http2 = http2.then(|| {
            let mut builder = http2::Builder::new(Http2Executor);
            builder
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX));
            builder
        });
        let mut http1 = http1::Builder::new();
        // hyper's default read buffer (about 400 KiB) must hold the largest block allowed.
        http1
            .max_header_size(header_bytes)
            .max_buf_size(header_bytes.max(8192 + 4096 * 100));
        Ok(Self {
            connector: LimitedConnector::new(connector, limits),
            http1,
            http2,
            scheme,
        })
    }

    /// Sends `req` to `endpoint` over one of its pooled connections,
    /// rewriting the URI and version for the cluster's protocol.
    async fn send(&self, endpoint: &Target, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        match &self.http2 {
            Some(builder) => self.send_http2(builder, endpoint, req).await,
            None => self.send_http1(endpoint, req).await,
        }
    }

    async fn send_http1(&self, endpoint: &Target, mut req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        *req.version_mut() = Version::HTTP_11;
        // HTTP/1.1 to an origin takes the origin form (RFC 9112 §3.2.1);
        // requests that arrived over HTTP/1.1 already have it.
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            *req.uri_mut() = Uri::try_from(path).map_err(|e| ProxyError::new(ErrorKind::BadRequest, e.to_string()))?;
        }
        if !req.headers().contains_key(header::HOST) {
            if let Ok(host) = HeaderValue::from_str(endpoint.authority.as_str()) {
                req.headers_mut().insert(header::HOST, host);
            }
        }
        // hyper sends a GET, HEAD or CONNECT body of unknown length (one that
        // came chunked; its `Transfer-Encoding` is hop-by-hop and gone) as no
        // body at all unless the request says chunked.
        let unsized_body = !req.body().is_end_stream() && req.body().size_hint().exact().is_none();
        if unsized_body && !req.headers().contains_key(header::CONTENT_LENGTH) {
            req.headers_mut()
                .insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
        let pool = &endpoint.pool;
        // Each turn takes one idle connection off the stack, so this ends.
        while let Some(mut sender) = pool.take_http1() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(self.pooled(response, pool, sender)),
                Err(mut e) => match e.take_message() {
                    // Unsent: the connection closed under it; try another.
                    Some(unsent) => req = unsent,
                    None => return Err(upstream_error(e.into_error())),
                },
            }
        }
        // Boxed: connecting is rare, and its large future would otherwise be
        // part of (and copied with) every request's.
        let mut sender = Box::pin(self.connect_http1(endpoint)).await?;
        match sender.send_request(req).await {
            Ok(response) => Ok(self.pooled(response, pool, sender)),
            Err(e) => Err(upstream_error(e)),
        }
    }

    async fn connect_http1(&self, endpoint: &Target) -> Result<http1::SendRequest<Body>, ProxyError> {
        let io = self.connect(endpoint).await?;
        let (sender, connection) = self.http1.handshake(io).await.map_err(handshake_error)?;
        tokio::spawn(async move {
            // The connection's own errors reach the request that saw them.
            let _ = connection.with_upgrades().await;
        });
        Ok(sender)
    }

    fn pooled(
        &self,
        response: Response<Incoming>,
        pool: &Arc<ConnectionPool>,
        sender: http1::SendRequest<Body>,
    ) -> Response<Body> {
        // An upgraded connection belongs to the tunnel, never to the pool.
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return response.map(body::boxed);
        }
        PooledBody::wrap(response, pool.clone(), sender).map(body::boxed)
    }

    async fn send_http2(
        &self,
        builder: &http2::Builder<Http2Executor>,
        endpoint: &Target,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let authority = authority_from_host(req.headers_mut(), endpoint)?;
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|e| ProxyError::new(ErrorKind::BadRequest, e.to_string()))?;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
        let connect = || {
            Box::pin(async {
                let io = self.connect(endpoint).await?;
                let (sender, connection) = builder.handshake(io).await.map_err(handshake_error)?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok::<_, ProxyError>(sender)
            })
        };
        let mut sender = endpoint.pool.http2_or_connect(connect).await?;
        match sender.try_send_request(req).await {
            Ok(response) => Ok(response.map(body::boxed)),
            Err(mut e) => match e.take_message() {
                // The shared connection went away (GOAWAY, reset) before the
                // request left: once more on a fresh connection.
                Some(unsent) => {
                    endpoint.pool.forget_closed_http2();
                    let mut sender = endpoint.pool.http2_or_connect(connect).await?;
                    let response = sender.send_request(unsent).await.map_err(upstream_error)?;
                    Ok(response.map(body::boxed))
                }
                None => Err(upstream_error(e.into_error())),
            },
        }
    }

    /// A new transport connection to `endpoint` (TLS when the cluster has it),
    /// within the circuit breaker's connection limits.
    async fn connect(
        &self,
        endpoint: &Target,
    ) -> Result<<LimitedConnector<HttpsConnector<HttpConnector>> as Service<Uri>>::Response, ProxyError> {
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(endpoint.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| ProxyError::new(ErrorKind::BadRequest, e.to_string()))?;
        self.connector.clone().oneshot(uri).await.map_err(connect_error)
    }
}

/// Classifies a failed upstream connect (TCP, TLS or a circuit-breaker refusal).
pub fn connect_error(err: BoxError) -> ProxyError {
    // The cluster's connector refuses connections over the circuit breaker's
    // limits; that is an overload rejection, not a failing upstream.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*err);
    while let Some(inner) = cause {
        if let Some(open) = inner.downcast_ref::<CircuitOpen>() {
            return ProxyError::new(ErrorKind::Overloaded(Overload::Circuit), open.to_string());
        }
        cause = inner.source();
    }
    ProxyError::caused_by(ErrorKind::ConnectFailed, "", err)
}

/// The HTTP/1.1 or HTTP/2 handshake on a fresh connection failed: nothing
/// was sent, so this counts as a failed connect.
pub fn handshake_error(err: hyper::Error) -> ProxyError {
    ProxyError::caused_by(ErrorKind::ConnectFailed, "handshake", err)
}

/// The upstream connection failed while the request was (maybe) on it.
pub fn upstream_error(err: hyper::Error) -> ProxyError {
    ProxyError::caused_by(ErrorKind::UpstreamReset, "", err)
}
