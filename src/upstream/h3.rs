//! HTTP/3 to upstream endpoints (`protocol: http3` clusters): one QUIC
//! connection per endpoint, multiplexing requests, opened on first use and
//! replaced when it closes. The request body streams up while the response
//! streams down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, Uri};
use parking_lot::Mutex;
use quinn::crypto::rustls::QuicClientConfig;
use tokio::time::Duration;

use super::Target;
use crate::config::schema::ClusterConfig;
use crate::core::body::Body;
use crate::core::error::{BoxError, ErrorKind, ProxyError};
use crate::http3::{send_body, H3Body};
use crate::tls;

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;
type RecvStream = h3::client::RequestStream<h3_quinn::RecvStream, Bytes>;

pub struct H3Client {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    sni: Option<String>,
    connect_timeout: Duration,
    /// `limits.max_response_headers_kb`, in bytes: a larger response
    /// header section fails the request (502), as for HTTP/1 and HTTP/2.
    header_bytes: u64,
    connections: Mutex<HashMap<SocketAddr, Sender>>,
}

/// One local UDP socket per cluster that reaches IPv4 and IPv6 endpoints
/// alike, since discovery may bring either family at any time: quinn makes
/// `[::]:0` dual-stack (IPv4 as v4-mapped addresses). IPv4 only where the
/// host has no IPv6.
fn client_endpoint() -> std::io::Result<quinn::Endpoint> {
    let any = |ip: std::net::IpAddr| SocketAddr::new(ip, 0);
    quinn::Endpoint::client(any(std::net::Ipv6Addr::UNSPECIFIED.into()))
        .or_else(|_| quinn::Endpoint::client(any(std::net::Ipv4Addr::UNSPECIFIED.into())))
}

impl H3Client {
    pub fn new(config: &ClusterConfig) -> Result<Self, String> {
        let settings = config.tls.clone().unwrap_or_default();
        let crypto = tls::client_config(&settings, std::path::Path::new("/"), &[b"h3"])?;
        let crypto = QuicClientConfig::try_from(crypto).map_err(|e| e.to_string())?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(quinn::IdleTimeout::try_from(config.idle_timeout).ok());
        client_config.transport_config(Arc::new(transport));
        let endpoint = client_endpoint().map_err(|e| format!("cannot open a UDP socket: {e}"))?;
        Ok(Self {
            endpoint,
            client_config,
            sni: settings.sni,
            connect_timeout: config.connect_timeout,
            header_bytes: u64::from(config.limits.max_response_headers_kb) * 1024,
            connections: Mutex::new(HashMap::new()),
        })
    }

    fn cached(&self, address: SocketAddr) -> Option<Sender> {
        self.connections.lock().get(&address).cloned()
    }

    fn forget(&self, address: SocketAddr) {
        self.connections.lock().remove(&address);
    }

    async fn connect(&self, address: SocketAddr) -> Result<Sender, ProxyError> {
        let connect_failed = |e: String| ProxyError::new(ErrorKind::ConnectFailed, e);
        let name = match &self.sni {
            Some(sni) => sni.clone(),
            None => address.ip().to_string(),
        };
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), address, &name)
            .map_err(|e| connect_failed(e.to_string()))?;
        let conn = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| connect_failed("QUIC handshake timed out".into()))?
            .map_err(|e| connect_failed(e.to_string()))?;
        let (mut driver, sender) = h3::client::builder()
            .max_field_section_size(self.header_bytes)
            .build(h3_quinn::Connection::new(conn))
            .await
            .map_err(|e| connect_failed(e.to_string()))?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        self.connections.lock().insert(address, sender.clone());
        Ok(sender)
    }

    pub async fn send(&self, endpoint: &Target, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let address = endpoint.address;
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let authority = super::authority_from_host(&mut parts.headers, endpoint)?;
        parts.uri = Uri::builder()
            .scheme("https")
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|e| ProxyError::new(ErrorKind::BadRequest, e.to_string()))?;
        parts.version = http::Version::HTTP_3;
        let head = Request::from_parts(parts, ());
        // A cached connection may have closed since; one fresh try then.
        let mut sender = match self.cached(address) {
            Some(s) => s,
            None => self.connect(address).await?,
        };
        let stream = match sender.send_request(head.clone()).await {
            Ok(stream) => stream,
            Err(_) => {
                self.forget(address);
                sender = self.connect(address).await?;
                sender
                    .send_request(head)
                    .await
                    .map_err(|e| ProxyError::new(ErrorKind::UpstreamReset, e.to_string()))?
            }
        };
        let (mut send, mut recv) = stream.split();
        let sending = tokio::spawn(async move {
            let sent = send_body(&mut send, body).await;
            if let Err(e) = &sent {
                tracing::debug!(error = %e, "HTTP/3 request body ended early");
            }
            sent
        });
        let response = response_head(&mut recv, sending).await?;
        Ok(response.map(|()| H3Body::new(recv).boxed()))
    }
}

/// The response head, or the request body's failure when the body fails
/// before the head arrives: the exchange then fails, as hyper's HTTP/1 and
/// HTTP/2 clients fail it (so a body past its limit is a 413, a client's
/// broken body a 400, whatever the upstream would have answered). A body
/// that fails later only resets the stream.
async fn response_head(
    recv: &mut RecvStream,
    mut sending: tokio::task::JoinHandle<Result<(), BoxError>>,
) -> Result<Response<()>, ProxyError> {
    let reset = |e: String| ProxyError::new(ErrorKind::UpstreamReset, e);
    let head = recv.recv_response();
    tokio::pin!(head);
    let mut body_pending = true;
    loop {
        tokio::select! {
            response = &mut head => return response.map_err(|e| reset(e.to_string())),
            sent = &mut sending, if body_pending => match sent {
                Ok(Err(e)) => return Err(reset(format!("the request body failed: {e}"))),
                _ => body_pending = false,
            },
        }
    }
}
