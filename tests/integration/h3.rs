//! HTTP/3: an h3 + quinn client gets the same routing, split and errors as
//! HTTP/1/2 clients, 1 MiB bodies pass byte-exact both ways, and weft bridges
//! HTTP/1 clients to `http3` clusters.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use http::Request;

use crate::support::*;
use crate::tls::Ca;

/// A QUIC connection (ALPN `h3`) to `addr`, trusting `ca`; no idle timeout
/// of the client's own: the server's decides.
pub async fn quic_connect(addr: SocketAddr, ca: &std::path::Path) -> (quinn::Endpoint, quinn::Connection) {
    let tls = tls_client_config(ca, None, &[b"h3"]);
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(None);
    client.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    (endpoint, conn)
}

/// A minimal HTTP/3 client: one connection, one request at a time.
pub struct H3Client {
    _endpoint: quinn::Endpoint,
    pub sender: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    /// The QUIC connection under it, for how it was closed.
    pub quic: quinn::Connection,
    /// Ends when the connection has closed.
    pub closed: tokio::task::JoinHandle<()>,
}

impl H3Client {
    pub async fn connect(addr: SocketAddr, ca: &std::path::Path) -> Self {
        let (endpoint, conn) = quic_connect(addr, ca).await;
        let quic = conn.clone();
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn)).await.unwrap();
        let closed = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Self {
            _endpoint: endpoint,
            sender,
            quic,
            closed,
        }
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> (u16, http::HeaderMap, Bytes) {
        self.try_request(method, path, headers, body).await.unwrap()
    }

    /// [`Self::request`], with the stream's or connection's error.
    pub async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(u16, http::HeaderMap, Bytes), h3::error::StreamError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut stream = self.sender.send_request(req.body(()).unwrap()).await?;
        for chunk in body.chunks(64 * 1024) {
            stream.send_data(Bytes::copy_from_slice(chunk)).await?;
        }
        stream.finish().await?;
        let response = stream.recv_response().await?;
        let mut data = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await? {
            while chunk.has_remaining() {
                let part = chunk.chunk();
                data.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
        }
        Ok((
            response.status().as_u16(),
            response.headers().clone(),
            Bytes::from(data),
        ))
    }
}

/// weft with one HTTP/3 listener, `quic`, with `settings` (flow-mapping
/// keys, such as `limits: {...}`) and `routes` (flow items), in front of
/// `clusters`; its certificate's CA is `ca`.
pub struct H3Weft {
    pub app: Arc<weft::app::App>,
    pub addr: SocketAddr,
    pub ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl H3Weft {
    pub async fn start(settings: &str, routes: &str, clusters: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("h3-weft-ca");
        ca.leaf(dir.path(), "server", "server", None);
        let ca_path = ca.write(dir.path(), "ca.pem");
        let listener = format!(
            "  - {{ name: quic, address: 127.0.0.1:0, protocol: http3, {settings} tls: {{ cert: server.pem, key: server.key }}, routes: [ {routes} ] }}"
        );
        let app = start_in(dir.path(), &config(&listener, clusters)).await;
        let addr = app.listener_addr("quic").await.unwrap();
        Self {
            app,
            addr,
            ca: ca_path,
            _dir: dir,
        }
    }

    pub async fn client(&self) -> H3Client {
        H3Client::connect(self.addr, &self.ca).await
    }
}

#[tokio::test]
async fn http3_client_gets_routing_split_errors_and_large_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("h3-ca");
    ca.leaf(dir.path(), "server", "server", None);
    let ca_path = ca.write(dir.path(), "ca.pem");
    let stable = Upstream::text("stable").await;
    let canary = Upstream::text("canary").await;
    let echo = Upstream::echo_body().await;
    let dead = refused_addr();
    let routes = "      - { name: echo, match: { path_prefix: /echo }, cluster: echo }
      - { name: dead, match: { path_prefix: /dead }, cluster: dead }
      - { name: canary, match: { headers: [ { name: x-canary, exact: \"1\" } ] }, cluster: canary }
      - { name: split, match: { path_prefix: /app }, split: [ { cluster: stable, weight: 50 }, { cluster: canary, weight: 50 } ] }";
    let yaml = config(
        &format!(
            "  - name: quic\n    address: 127.0.0.1:0\n    protocol: http3\n    tls: {{ cert: server.pem, key: server.key }}\n    routes:\n{routes}"
        ),
        &format!(
            "  - {{ name: stable, endpoints: [ {{ address: {} }} ] }}\n  - {{ name: canary, endpoints: [ {{ address: {} }} ] }}\n  - {{ name: echo, endpoints: [ {{ address: {} }} ] }}\n  - {{ name: dead, endpoints: [ {{ address: {} }} ] }}",
            stable.addr, canary.addr, echo.addr, dead.addr
        ),
    );
    let app = start_in(dir.path(), &yaml).await;
    let mut client = H3Client::connect(app.listener_addr("quic").await.unwrap(), &ca_path).await;

    let (status, _, body) = client.request("GET", "/x", &[("x-canary", "1")], Bytes::new()).await;
    assert_eq!((status, &body[..]), (200, &b"canary"[..]));
    let (status, _, body) = client.request("GET", "/nowhere", &[], Bytes::new()).await;
    assert_eq!(status, 404, "{body:?}");
    let (status, _, _) = client.request("GET", "/dead", &[], Bytes::new()).await;
    assert_eq!(status, 503);
    let mut canary_count = 0;
    for _ in 0..200 {
        let (status, _, body) = client.request("GET", "/app", &[], Bytes::new()).await;
        assert_eq!(status, 200);
        canary_count += usize::from(&body[..] == b"canary");
    }
    assert!((40..=160).contains(&canary_count), "canary got {canary_count} of 200");

    let data: Bytes = (0..(1 << 20) + 17).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
    let (status, _, body) = client.request("POST", "/echo", &[], data.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), data.len());
    assert!(body == data, "1 MiB body differs after the round trip");

    let text = metrics_of(&app).await;
    assert!(
        text.contains("weft_requests_total{cluster=\"canary\",listener=\"quic\",protocol=\"http3\",route=\"canary\",status=\"200\"} 1"),
        "{text}"
    );
}

/// `alt-svc` names the HTTP/3 listener's configured port, so the port must be
/// fixed: the test runs in a network namespace of its own, where no other
/// test can hold it.
#[test]
fn tls_listener_advertises_the_http3_listener_on_its_port() {
    in_network_namespace(|| async {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("alt-svc-ca");
        ca.leaf(dir.path(), "server", "server", None);
        let ca_path = ca.write(dir.path(), "ca.pem");
        let routes = "[ { name: ok, direct_response: { status: 200, body: over-h3 } } ]";
        let yaml = config(
            &format!(
                "  - {{ name: quic, address: 127.0.0.1:4433, protocol: http3, tls: {{ cert: server.pem, key: server.key }}, routes: {routes} }}
  - {{ name: tls, address: 127.0.0.1:0, advertise_http3: true, tls: {{ cert: server.pem, key: server.key }}, routes: {routes} }}"
            ),
            "  []",
        );
        let app = start_in(dir.path(), &yaml).await;
        let tls_port = app.listener_addr("tls").await.unwrap().port();
        let https = https_client(tls_client_config(&ca_path, None, &[]), false);
        let response = https
            .request(
                Request::get(format!("https://localhost:{tls_port}/"))
                    .body(full(""))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.headers()["alt-svc"], "h3=\":4433\"; ma=86400");
        // The advertised port is where HTTP/3 is served.
        let mut client = H3Client::connect("127.0.0.1:4433".parse().unwrap(), &ca_path).await;
        let (status, _, body) = client.request("GET", "/", &[], Bytes::new()).await;
        assert_eq!((status, &body[..]), (200, &b"over-h3"[..]));
    });
}

#[tokio::test]
async fn http3_oversized_headers_get_431_and_the_listener_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("h3-limits-ca");
    ca.leaf(dir.path(), "server", "server", None);
    let ca_path = ca.write(dir.path(), "ca.pem");
    let yaml = config(
        "  - name: quic\n    address: 127.0.0.1:0\n    protocol: http3\n    limits: { max_request_headers_kb: 8 }\n    tls: { cert: server.pem, key: server.key }\n    routes: [ { name: ok, direct_response: { status: 200, body: fine } } ]",
        "  []",
    );
    let app = start_in(dir.path(), &yaml).await;
    let addr = app.listener_addr("quic").await.unwrap();
    let mut client = H3Client::connect(addr, &ca_path).await;
    let big = "x".repeat(16 * 1024);
    let (status, _, _) = client.request("GET", "/", &[("x-big", &big)], Bytes::new()).await;
    assert_eq!(status, 431);
    // The same connection and new ones are still served.
    assert_eq!(client.request("GET", "/", &[], Bytes::new()).await.0, 200);
    let mut fresh = H3Client::connect(addr, &ca_path).await;
    assert_eq!(
        fresh.request("GET", "/", &[], Bytes::new()).await.2,
        Bytes::from_static(b"fine")
    );
}

#[tokio::test]
async fn http3_connections_get_the_listener_stream_and_header_count_limits() {
    use futures_util::FutureExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("h3-streams-ca");
    ca.leaf(dir.path(), "server", "server", None);
    let ca_path = ca.write(dir.path(), "ca.pem");
    let yaml = config(
        "  - name: quic\n    address: 127.0.0.1:0\n    protocol: http3\n    limits: { max_concurrent_streams: 1, max_request_headers: 5 }\n    tls: { cert: server.pem, key: server.key }\n    routes: [ { name: ok, direct_response: { status: 200, body: fine } } ]",
        "  []",
    );
    let app = start_in(dir.path(), &yaml).await;
    let addr = app.listener_addr("quic").await.unwrap();
    let mut client = H3Client::connect(addr, &ca_path).await;
    let many: Vec<(String, &str)> = (0..8).map(|i| (format!("x-h{i}"), "v")).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(client.request("GET", "/", &many, Bytes::new()).await.0, 431);
    assert_eq!(client.request("GET", "/", &[], Bytes::new()).await.0, 200);
    // The stream credit the handshake gave: one request stream at a time.
    let tls = tls_client_config(&ca_path, None, &[b"h3"]);
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    let first = conn.open_bi().now_or_never();
    assert!(matches!(first, Some(Ok(_))), "the first stream opens at once");
    assert!(
        conn.open_bi().now_or_never().is_none(),
        "a second stream opened at once"
    );
}

#[tokio::test]
async fn http3_drain_lets_in_flight_requests_finish() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("h3-drain-ca");
    ca.leaf(dir.path(), "server", "server", None);
    let ca_path = ca.write(dir.path(), "ca.pem");
    let mut slow = HeldUpstream::start("finished").await;
    let yaml = config(
        "  - name: quic\n    address: 127.0.0.1:0\n    protocol: http3\n    tls: { cert: server.pem, key: server.key }\n    routes: [ { name: slow, cluster: slow } ]",
        &format!("  - {{ name: slow, endpoints: [ {{ address: {} }} ] }}", slow.upstream.addr),
    );
    let app = start_in(dir.path(), &yaml).await;
    let mut client = H3Client::connect(app.listener_addr("quic").await.unwrap(), &ca_path).await;
    let request = client.request("GET", "/", &[], Bytes::new());
    let drain = async {
        slow.arrived().await;
        let shutdown = app.shutdown();
        let release = async {
            // Answered only once the drain has begun (ready turned 503).
            let ready = format!("http://{}/ready", app.admin_addr());
            eventually("/ready turns 503", async || get(&h1_client(), &ready).await.0 == 503).await;
            slow.release();
        };
        tokio::join!(shutdown, release);
    };
    let ((status, _, body), _) = tokio::join!(request, drain);
    assert_eq!((status, &body[..]), (200, &b"finished"[..]));
}

pub async fn metrics_of(app: &weft::app::App) -> String {
    get(&h1_client(), &format!("http://{}/metrics", app.admin_addr()))
        .await
        .1
}

#[tokio::test]
async fn http1_client_to_http3_cluster_bridges_bodies() {
    // One weft's HTTP/3 listener is the upstream of another's http3
    // cluster: HTTP/1.1 in, HTTP/3 across, HTTP/1.1 to the echo server, and
    // back. Two instances, so the second's config can name the first's
    // bound port.
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("bridge-ca");
    ca.leaf(dir.path(), "server", "server", None);
    ca.write(dir.path(), "ca.pem");
    let echo = Upstream::echo_body().await;
    let back = start_in(
        dir.path(),
        &config(
            "  - name: quic\n    address: 127.0.0.1:0\n    protocol: http3\n    tls: { cert: server.pem, key: server.key }\n    routes: [ { name: to-echo, cluster: echo } ]",
            &format!("  - {{ name: echo, endpoints: [ {{ address: {} }} ] }}", echo.addr),
        ),
    )
    .await;
    let quic = back.listener_addr("quic").await.unwrap();
    let front = start_in(
        dir.path(),
        &config(
            "  - name: plain\n    address: 127.0.0.1:0\n    routes: [ { name: over-h3, cluster: via-h3 } ]",
            &format!("  - {{ name: via-h3, protocol: http3, tls: {{ ca: ca.pem, sni: localhost }}, endpoints: [ {{ address: {quic} }} ] }}"),
        ),
    )
    .await;
    let url = format!("http://{}/bridge", front.listener_addr("plain").await.unwrap());
    let data: Bytes = (0..(1 << 20)).map(|i| (i % 253) as u8).collect::<Vec<u8>>().into();
    let response = h1_client()
        .request(Request::post(&url).body(full(data.clone())).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    use http_body_util::BodyExt;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body == data, "body differs after HTTP/1 -> HTTP/3 -> HTTP/1");
    let text = metrics_of(&back).await;
    assert!(
        text.contains("weft_requests_total{cluster=\"echo\",listener=\"quic\",protocol=\"http3\",route=\"to-echo\",status=\"200\"} 1"),
        "{text}"
    );
}

/// An http3 cluster's endpoints may arrive by discovery in either address
/// family: one local socket reaches both.
#[tokio::test]
async fn http3_cluster_reaches_discovered_ipv4_and_ipv6_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("families-ca");
    ca.leaf(dir.path(), "server", "server", None);
    ca.write(dir.path(), "ca.pem");
    let h3_listener = |name: &str, address: &str| {
        format!("  - {{ name: {name}, address: \"{address}\", protocol: http3, tls: {{ cert: server.pem, key: server.key }}, routes: [ {{ name: {name}, direct_response: {{ status: 200, body: {name} }} }} ] }}")
    };
    let listeners = [h3_listener("v4", "127.0.0.1:0"), h3_listener("v6", "[::1]:0")].join("\n");
    let back = start_in(dir.path(), &config(&listeners, "  []")).await;
    let mut endpoints = String::from("endpoints:\n");
    for name in ["v4", "v6"] {
        let address = back.listener_addr(name).await.unwrap();
        endpoints.push_str(&format!("  - {{ address: \"{address}\" }}\n"));
    }
    std::fs::write(dir.path().join("endpoints.yaml"), endpoints).unwrap();
    let front = start_in(
        dir.path(),
        &config(
            "  - { name: plain, address: 127.0.0.1:0, routes: [ { name: over-h3, cluster: via-h3 } ] }",
            "  - { name: via-h3, protocol: http3, lb: round_robin, tls: { ca: ca.pem, sni: localhost }, discovery: { file: { path: endpoints.yaml } } }",
        ),
    )
    .await;
    let url = format!("http://{}/", front.listener_addr("plain").await.unwrap());
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(get(&h1_client(), &url).await);
    }
    answers.sort();
    answers.dedup();
    assert_eq!(answers, [(200, "v4".to_string()), (200, "v6".to_string())]);
}

#[tokio::test]
async fn http3_requests_get_trace_context() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("h3-trace-ca");
    ca.leaf(dir.path(), "server", "server", None);
    let ca_path = ca.write(dir.path(), "ca.pem");
    let upstream = Upstream::echo_headers().await;
    let yaml = config(
        "  - name: quic\n    address: 127.0.0.1:0\n    protocol: http3\n    tls: { cert: server.pem, key: server.key }\n    routes:\n      - { name: all, cluster: web }",
        &format!("  - {{ name: web, endpoints: [ {{ address: {} }} ] }}", upstream.addr),
    );
    let app = start_in(dir.path(), &yaml).await;
    let mut client = H3Client::connect(app.listener_addr("quic").await.unwrap(), &ca_path).await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, _, body) = client
        .request(
            "GET",
            "/",
            &[("traceparent", incoming), ("tracestate", "v=1")],
            Bytes::new(),
        )
        .await;
    assert_eq!(status, 200);
    let body = String::from_utf8_lossy(&body);
    let sent = body
        .lines()
        .find_map(|l| l.strip_prefix("traceparent: "))
        .unwrap_or_else(|| panic!("{body}"));
    assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{sent}");
    assert!(sent.ends_with("-01") && !sent.contains("00f067aa0ba902b7"), "{sent}");
    assert!(body.contains("tracestate: v=1"), "{body}");
}

/// weft with a direct 200 route over HTTP/3 and two requests per
/// connection; a QUIC idle timeout far beyond any test, so only the GOAWAY
/// closes a connection.
pub async fn two_requests_per_connection() -> H3Weft {
    let direct = "{ name: ok, direct_response: { status: 200, body: fine } }";
    H3Weft::start(
        "limits: { max_requests_per_connection: 2 }, quic: { idle_timeout: 1h },",
        direct,
        "  []",
    )
    .await
}

#[tokio::test]
async fn http3_connections_get_goaway_after_max_requests_per_connection() {
    let weft = two_requests_per_connection().await;
    let mut client = weft.client().await;
    for _ in 0..2 {
        assert_eq!(client.request("GET", "/", &[], Bytes::new()).await.0, 200);
    }
    // GOAWAY, then the connection closes once its requests are done ...
    let closed = tokio::time::timeout(PATIENCE, &mut client.closed).await;
    assert!(closed.is_ok(), "the connection is still open after two requests");
    // ... gracefully: an application close with H3_NO_ERROR ...
    match client.quic.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(0x100), "{close:?}")
        }
        other => panic!("closed with {other:?}"),
    }
    // ... so a third request is not served on it ...
    let third = client.try_request("GET", "/", &[], Bytes::new()).await;
    assert!(third.is_err(), "a third request was served: {third:?}");
    // ... and the client reconnects.
    let mut again = weft.client().await;
    assert_eq!(again.request("GET", "/", &[], Bytes::new()).await.0, 200);
}

#[tokio::test]
async fn http3_cluster_response_headers_over_the_limit_get_502() {
    // HTTP/1 in, HTTP/3 across to a second weft, HTTP/1 to an upstream
    // whose response has a 2 KB header.
    let big = "a".repeat(2000);
    let upstream = Upstream::start(move |_req| {
        let big = big.clone();
        async move {
            http::Response::builder()
                .header("x-big", big)
                .body(full("fine"))
                .unwrap()
        }
    })
    .await;
    let back = H3Weft::start(
        "",
        "{ name: all, cluster: app }",
        &format!("  - {{ name: app, endpoints: [ {{ address: {} }} ] }}", upstream.addr),
    )
    .await;
    let ca = back.ca.display();
    for (limits, expected) in [(", limits: { max_response_headers_kb: 1 }", 502), ("", 200)] {
        let front = Weft::start(&config(
            "  - { name: plain, address: 127.0.0.1:0, routes: [ { name: over-h3, cluster: via-h3 } ] }",
            &format!(
                "  - {{ name: via-h3, protocol: http3, tls: {{ ca: \"{ca}\", sni: localhost }}, endpoints: [ {{ address: {} }} ] {limits} }}",
                back.addr
            ),
        ))
        .await;
        let (status, body) = get(&h1_client(), &front.url("plain", "/").await).await;
        assert_eq!(status, expected, "limits: {limits:?}: {body}");
    }
}

#[tokio::test]
async fn a_request_body_cut_off_by_a_limit_is_reset_on_an_http3_cluster() {
    // HTTP/1 in with a body past the front's limit, HTTP/3 across to a
    // second weft, HTTP/1 to an upstream that reports how the body ended.
    let (upstream, mut bodies) = crate::limits::reading().await;
    let back = H3Weft::start(
        "",
        "{ name: all, cluster: app }",
        &crate::limits::app(upstream.addr, ""),
    )
    .await;
    let front = Weft::start(&config(
        "  - { name: plain, address: 127.0.0.1:0, limits: { max_request_body_bytes: 10 }, routes: [ { name: over-h3, cluster: via-h3 } ] }",
        &format!(
            "  - {{ name: via-h3, protocol: http3, tls: {{ ca: \"{}\", sni: localhost }}, endpoints: [ {{ address: {} }} ] }}",
            back.ca.display(),
            back.addr
        ),
    ))
    .await;
    use tokio::io::AsyncWriteExt;
    let mut client = tokio::net::TcpStream::connect(front.addr("plain").await).await.unwrap();
    let head = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n8\r\n01234567\r\n";
    client.write_all(head).await.unwrap();
    // The request has crossed to the upstream before the body goes past the
    // limit (a reset ahead of the request's head would discard the request).
    let connected = || upstream.connections.load(std::sync::atomic::Ordering::SeqCst) == 1;
    eventually("the request reaches the upstream", async || connected()).await;
    client.write_all(b"8\r\n01234567\r\n0\r\n\r\n").await.unwrap();
    let reply = crate::limits::until_closed(&mut client).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    // The HTTP/3 stream was reset, not finished as if the 8 bytes were all.
    let upstream_saw = tokio::time::timeout(PATIENCE, bodies.recv()).await.unwrap().unwrap();
    assert!(
        upstream_saw.starts_with("Err"),
        "the upstream read a whole body: {upstream_saw}"
    );
}
