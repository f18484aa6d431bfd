//! HTTP/3 over QUIC (quinn + h3 + h3-quinn) into the same [`Proxy`] service
//! as HTTP/1 and HTTP/2: one router, one set of layers and metrics.
//!
//! Each connection is served until the listener stops, or until it has
//! carried `limits.max_requests_per_connection` requests; then it gets a
//! graceful GOAWAY naming the first stream id weft will not process (RFC 9114
//! 5.2: that id and above are unprocessed, so a client may retry them on a
//! new connection). Every request stream accepted after the GOAWAY is refused
//! with H3_REQUEST_REJECTED, never served; in-flight requests finish. Once
//! they have, weft waits for the client to close the connection (up to
//! `drain_timeout`, so the last responses are delivered and acknowledged)
//! and then closes it with H3_NO_ERROR. A response body that fails (the
//! stream idle timeout, an upstream reset) resets its stream. Malformed
//! frames, oversized header sections (431 from the h3 crate) and excess
//! streams are refused per stream or per connection by h3/quinn; the
//! listener itself keeps running.

use std::sync::Arc;

use bytes::Bytes;
use h3::server::RequestResolver;
use http::Response;
use quinn::crypto::rustls::QuicServerConfig;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::Service;

use crate::config::schema::ListenerConfig;
use crate::core::body::Body;
use crate::front::Downstream;
use crate::http3::{send_body, H3Body};
use crate::listener::tls::TlsSetup;
use crate::listener::{reached, Phase, Socket, SocketReturn};
use crate::proxy::{Proxy, Shared};
use crate::tls::PeerIdentity;

type Resolver = RequestResolver<h3_quinn::Connection, Bytes>;

/// The QUIC server config of a listener: its TLS (ALPN `h3`) and transport
/// settings; given to a freshly bound endpoint or to one taken over.
pub fn server_config(config: &ListenerConfig, tls: &TlsSetup) -> Result<quinn::ServerConfig, String> {
    let mut crypto = (*tls.config).clone();
    crypto.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = QuicServerConfig::try_from(crypto).map_err(|e| format!("listener {}: {e}", config.name))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.quic.idle_timeout)
        .map_err(|e| format!("listener {}: quic.idle_timeout: {e}", config.name))?;
    transport.max_idle_timeout(Some(idle));
    transport.max_concurrent_bidi_streams(config.limits.max_concurrent_streams.into());
    server.transport_config(Arc::new(transport));
    Ok(server)
}

pub async fn serve(
    config: ListenerConfig,
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    give_back: SocketReturn,
) {
    let name: Arc<str> = Arc::from(config.name.as_str());
    let settings = ConnectionSettings {
        header_bytes: u64::from(config.limits.max_request_headers_kb) * 1024,
        max_requests: config.limits.max_requests_per_connection,
        close_grace: shared.snapshot.load().loaded.config.drain_timeout,
    };
    let counters = crate::listener::ConnectionCounters::new(&shared.metrics, &config.name);
    let mut connections = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            biased;
            _ = reached(&mut phase, Phase::HandedOver) => break,
            incoming = endpoint.accept() => match incoming { Some(i) => i, None => break },
        };
        while connections.try_join_next().is_some() {}
        let open = counters.open();
        let (shared, name, stop) = (shared.clone(), name.clone(), phase.clone());
        connections.spawn(async move {
            let _counted = open;
            match incoming.await {
                Ok(conn) => serve_connection(conn, name, shared, settings, stop).await,
                Err(e) => tracing::debug!(error = %e, "QUIC handshake failed"),
            }
        });
    }
    // A successor takes new connections on the same endpoint; without one,
    // none are taken. Open ones get GOAWAY and drain.
    let handed_over = give_back.give(Socket::Quic(endpoint.clone()));
    if !handed_over {
        endpoint.set_server_config(None);
    }
    while connections.join_next().await.is_some() {}
    if !handed_over {
        endpoint.wait_idle().await;
    }
}

/// What each connection of a listener is served with.
#[derive(Clone, Copy)]
struct ConnectionSettings {
    /// `limits.max_request_headers_kb`, in bytes.
    header_bytes: u64,
    /// `limits.max_requests_per_connection`.
    max_requests: Option<u64>,
    /// How long a drained connection waits for the client to close it
    /// (`drain_timeout`) before weft closes it.
    close_grace: std::time::Duration,
}

async fn serve_connection(
    conn: quinn::Connection,
    listener: Arc<str>,
    shared: Arc<Shared>,
    settings: ConnectionSettings,
    mut stop: watch::Receiver<Phase>,
) {
    let peer = conn.remote_address();
    let identity = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().and_then(|c| PeerIdentity::from_der(c)));
    let downstream = Arc::new(Downstream {
        listener,
        peer,
        scheme: "https",
        identity,
        original_destination: None,
    });
    let quic = conn.clone();
    let mut h3 = match h3::server::builder()
        .max_field_section_size(settings.header_bytes)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await
    {
        Ok(h3) => h3,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "HTTP/3 connection set-up failed");
            return;
        }
    };
    let mut requests = JoinSet::new();
    let mut draining = false;
    let mut accepted: u64 = 0;
    // Armed once draining and the last request is done: how long the
    // client gets to close the connection itself.
    let grace = tokio::time::sleep(settings.close_grace);
    tokio::pin!(grace);
    let mut grace_armed = false;
    loop {
        if draining && requests.is_empty() && !grace_armed {
            grace_armed = true;
            grace.as_mut().reset(tokio::time::Instant::now() + settings.close_grace);
        }
        tokio::select! {
            _ = reached(&mut stop, Phase::HandedOver), if !draining => {
                draining = true;
                goaway(&mut h3, peer).await;
            }
            Some(_) = requests.join_next(), if draining => {}
            _ = &mut grace, if grace_armed => break,
            next = h3.accept() => match next {
                Ok(Some(resolver)) if draining => {
                    // The GOAWAY named this stream's id (or a lower one).
                    requests.spawn(refuse_request(resolver));
                }
                Ok(Some(resolver)) => {
                    while requests.try_join_next().is_some() {}
                    requests.spawn(serve_request(resolver, Proxy::new(shared.clone(), downstream.clone())));
                    accepted += 1;
                    if settings.max_requests.is_some_and(|max| accepted >= max) {
                        draining = true;
                        goaway(&mut h3, peer).await;
                    }
                }
                // The client sent GOAWAY and its requests are done, or it
                // closed the connection.
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "HTTP/3 connection ended");
                    break;
                }
            },
        }
    }
    while requests.join_next().await.is_some() {}
    quic.close(H3_NO_ERROR, b"");
}

/// HTTP/3's application error code for a graceful close (RFC 9114 8.1).
const H3_NO_ERROR: quinn::VarInt = quinn::VarInt::from_u32(0x100);

/// GOAWAY naming the stream id after the last request accepted: the first
/// one weft will not process (h3's `shutdown(n)` names the last accepted id
/// plus `n` streams, or stream 0 when none was accepted). h3 still hands
/// over a stream with exactly that id; the accept loop refuses it.
async fn goaway(h3: &mut h3::server::Connection<h3_quinn::Connection, Bytes>, peer: std::net::SocketAddr) {
    if let Err(e) = h3.shutdown(1).await {
        tracing::debug!(%peer, error = %e, "HTTP/3 shutdown");
    }
}

/// Refuses a request stream at or past the GOAWAY's id, unprocessed, so the
/// client may retry it elsewhere.
async fn refuse_request(resolver: Resolver) {
    match resolver.resolve_request().await {
        Ok((_, mut stream)) => {
            stream.stop_sending(h3::error::Code::H3_REQUEST_REJECTED);
            stream.stop_stream(h3::error::Code::H3_REQUEST_REJECTED);
        }
        Err(e) => tracing::debug!(error = %e, "HTTP/3 request after GOAWAY"),
    }
}

async fn serve_request(resolver: Resolver, mut proxy: Proxy) {
    let (request, stream) = match resolver.resolve_request().await {
        Ok(pair) => pair,
        Err(e) => {
            // h3 already answered (431) or reset the stream (malformed).
            tracing::debug!(error = %e, "HTTP/3 request refused");
            return;
        }
    };
    let (mut send, recv) = stream.split();
    let request = request.map(|()| H3Body::new(recv));
    let response: Response<Body> = match proxy.call(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    if let Err(e) = send.send_response(Response::from_parts(parts, ())).await {
        tracing::debug!(error = %e, "HTTP/3 response headers not sent");
        return;
    }
    if let Err(e) = send_body(&mut send, body).await {
        tracing::debug!(error = %e, "HTTP/3 response body ended early");
    }
}
