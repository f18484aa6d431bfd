//! Limits on what a client or an upstream can make weft hold (docs/config.md,
//! listener `limits`, route `limits`, cluster `limits`, tcp `idle_timeout`):
//! each is driven over real sockets past its limit, and the effect asserted.

use std::sync::atomic::Ordering;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// One `http` listener, `public`, with `limits` and `routes` (YAML flow
/// items), in front of the clusters in `clusters`.
pub async fn weft_with(limits: &str, routes: &str, clusters: &str) -> Weft {
    let listeners =
        format!("  - name: public\n    address: 127.0.0.1:0\n    limits: {{ {limits} }}\n    routes: [ {routes} ]");
    Weft::start(&config(&listeners, clusters)).await
}

/// [`weft_with`] `limits`, one route to the one endpoint at `upstream`.
async fn weft_to(upstream: std::net::SocketAddr, limits: &str) -> Weft {
    weft_with(limits, "{ name: all, cluster: app }", &app(upstream, "")).await
}

/// `app`: a cluster of the one endpoint `upstream`.
pub fn app(upstream: std::net::SocketAddr, settings: &str) -> String {
    format!("  - {{ name: app, endpoints: [ {{ address: {upstream} }} ] {settings} }}")
}

type H2Connection = hyper::client::conn::http2::Connection<TokioIo<TcpStream>, TestBody, TokioExecutor>;

/// One HTTP/2 (prior knowledge) connection to `public`: its request sender
/// and the connection, which the caller drives.
async fn h2_connection(weft: &Weft) -> (hyper::client::conn::http2::SendRequest<TestBody>, H2Connection) {
    let stream = TcpStream::connect(weft.addr("public").await).await.unwrap();
    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap()
}

/// Reads until the peer closes (or resets), bounded by [`PATIENCE`].
pub async fn until_closed(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "still open after {PATIENCE:?}; read so far: {:?}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn connections_over_the_limit_are_accepted_closed_and_counted() {
    let upstream = Upstream::text("fine").await;
    // A long header read timeout: the held connection stays open while idle.
    let weft = weft_to(upstream.addr, "max_connections: 1, header_read_timeout: 1h").await;
    let addr = weft.addr("public").await;
    // One kept-alive connection holds the only slot.
    let mut holder = TcpStream::connect(addr).await.unwrap();
    holder.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 256];
    let n = holder.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The next one is closed at once instead of waiting in the backlog.
    let mut over = TcpStream::connect(addr).await.unwrap();
    assert_eq!(until_closed(&mut over).await, "");
    let text = metrics(&weft).await;
    assert_eq!(
        metric(&text, "weft_downstream_connections_overflow_total{listener=\"public\"}"),
        1.0
    );
    // Once the slot is free, new connections are served again.
    drop(holder);
    let url = weft.url("public", "/").await;
    eventually("a connection is served once the slot is free", async || {
        h1_client()
            .request(Request::get(&url).body(full("")).unwrap())
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test]
async fn http1_connections_close_after_max_requests_per_connection() {
    let upstream = Upstream::text("fine").await;
    let weft = weft_to(upstream.addr, "max_requests_per_connection: 2").await;
    let one = "GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    let reply = raw(weft.addr("public").await, one.repeat(3).as_bytes()).await;
    assert_eq!(reply.matches("HTTP/1.1 200").count(), 2, "{reply}");
    let last = reply.rsplit("HTTP/1.1 200").next().unwrap_or_default();
    assert!(last.to_ascii_lowercase().contains("connection: close"), "{reply}");
}

#[tokio::test]
async fn http2_connections_get_goaway_after_max_requests_per_connection() {
    let upstream = Upstream::text("fine").await;
    let weft = weft_to(upstream.addr, "max_requests_per_connection: 2").await;
    let (mut sender, conn) = h2_connection(&weft).await;
    let connection = tokio::spawn(conn);
    for _ in 0..2 {
        let req = Request::get("http://x/").body(full("")).unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    // GOAWAY, then the connection ends: the client's connection task returns.
    let ended = tokio::time::timeout(PATIENCE, connection).await;
    assert!(ended.is_ok(), "the connection is still open after two requests");
}

#[tokio::test]
async fn http2_settings_carry_max_concurrent_streams() {
    let upstream = Upstream::text("fine").await;
    for (limits, expected) in [("", 100), ("max_concurrent_streams: 7", 7)] {
        let weft = weft_to(upstream.addr, limits).await;
        let (mut sender, conn) = h2_connection(&weft).await;
        let mut conn = Box::pin(conn);
        // The server's SETTINGS come before its first response.
        let req = Request::get("http://x/").body(full("")).unwrap();
        let response = tokio::select! {
            response = sender.send_request(req) => response.unwrap(),
            ended = conn.as_mut() => panic!("connection ended: {ended:?}"),
        };
        assert_eq!(response.status(), 200);
        assert_eq!(conn.current_max_send_streams(), expected, "limits: {{ {limits} }}");
    }
}

/// An upstream that reads each request's body before it answers, and
/// reports how each body ended (`Ok(length)` or `Err(why)`) on the channel.
pub async fn reading() -> (Upstream, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (ended, bodies) = tokio::sync::mpsc::unbounded_channel();
    let upstream = Upstream::start(move |req: Request<Incoming>| {
        let ended = ended.clone();
        async move {
            let body = req.into_body().collect().await.map(|b| b.to_bytes().len());
            let _ = ended.send(format!("{body:?}"));
            Response::new(full(format!("{body:?}")))
        }
    })
    .await;
    (upstream, bodies)
}

#[tokio::test]
async fn request_bodies_over_the_limit_get_413() {
    let (upstream, mut bodies) = reading().await;
    let routes = "{ name: big, match: { path_prefix: /big }, cluster: app, limits: { max_request_body_bytes: 1000 } },
                  { name: all, cluster: app }";
    let weft = weft_with("max_request_body_bytes: 10", routes, &app(upstream.addr, "")).await;
    let addr = weft.addr("public").await;
    // Content-Length over the listener's limit: refused before the upstream is touched.
    let declared = raw(
        addr,
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 20\r\n\r\n01234567890123456789",
    )
    .await;
    assert!(declared.starts_with("HTTP/1.1 413"), "{declared}");
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        0,
        "weft connected upstream"
    );
    // A chunked body that grows past it: 413 as no response has started.
    let chunked = raw(
        addr,
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n8\r\n01234567\r\n8\r\n01234567\r\n0\r\n\r\n",
    )
    .await;
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    // ... and the upstream request was aborted, not completed.
    let upstream_saw = tokio::time::timeout(PATIENCE, bodies.recv()).await.unwrap().unwrap();
    assert!(
        upstream_saw.starts_with("Err"),
        "the upstream read a whole body: {upstream_saw}"
    );
    // The route's own limit wins over the listener's; within it, served.
    let big = raw(
        addr,
        b"POST /big HTTP/1.1\r\nhost: x\r\ncontent-length: 20\r\nconnection: close\r\n\r\n01234567890123456789",
    )
    .await;
    assert!(big.starts_with("HTTP/1.1 200") && big.ends_with("Ok(20)"), "{big}");
}

#[tokio::test]
async fn a_body_past_the_limit_after_the_response_started_resets_the_stream() {
    // The upstream answers at once and streams the body back as it comes.
    let upstream = Upstream::echo_body().await;
    let weft = weft_to(upstream.addr, "max_request_body_bytes: 10").await;
    let mut client = TcpStream::connect(weft.addr("public").await).await.unwrap();
    let head = "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n8\r\n01234567\r\n";
    client.write_all(head.as_bytes()).await.unwrap();
    // The response has started (its head and the first chunk echoed) ...
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("01234567") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(PATIENCE, client.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    // ... when the body goes past the limit: the response is cut off.
    client.write_all(b"8\r\n01234567\r\n0\r\n\r\n").await.unwrap();
    let rest = until_closed(&mut client).await;
    assert!(!rest.contains("0\r\n\r\n"), "the response ended normally: {rest}");
}

#[tokio::test]
async fn request_header_count_over_the_limit_gets_431_in_http1_and_http2() {
    let upstream = Upstream::text("fine").await;
    let weft = weft_to(upstream.addr, "max_request_headers: 5").await;
    let url = weft.url("public", "/").await;
    let many = |url: &str, count: usize| {
        let mut req = Request::get(url);
        for i in 0..count {
            req = req.header(format!("x-h{i}"), "v");
        }
        req.body(full("")).unwrap()
    };
    assert_eq!(send(&h1_client(), many(&url, 8)).await.0, 431);
    assert_eq!(send(&h2_client(), many(&url, 8)).await.0, 431);
    assert_eq!(get(&h2_client(), &url).await, (200, "fine".into()));
    // Above hyper's own default of 100, HTTP/1.1 takes what the listener
    // allows (answered by weft: the test upstream has hyper's default).
    let direct = "{ name: all, direct_response: { status: 200, body: fine } }";
    let weft = weft_with("max_request_headers: 150", direct, "  []").await;
    let url = weft.url("public", "/").await;
    assert_eq!(send(&h1_client(), many(&url, 120)).await, (200, "fine".into()));
    assert_eq!(send(&h1_client(), many(&url, 160)).await.0, 431);
}

#[tokio::test]
async fn response_headers_over_the_cluster_limit_get_502() {
    let big = "a".repeat(2000);
    let upstream = Upstream::start(move |_req| {
        let big = big.clone();
        async move { Response::builder().header("x-big", big).body(full("fine")).unwrap() }
    })
    .await;
    for protocol in ["http1", "http2"] {
        let cluster = |limit: &str| app(upstream.addr, &format!(", protocol: {protocol} {limit}"));
        let weft = weft_with(
            "",
            "{ name: all, cluster: app }",
            &cluster(", limits: { max_response_headers_kb: 1 }"),
        )
        .await;
        let (status, body) = get(&h1_client(), &weft.url("public", "/").await).await;
        assert_eq!(status, 502, "{protocol}: {body}");
        // Within the default (60 KiB) the same response goes through.
        let weft = weft_with("", "{ name: all, cluster: app }", &cluster("")).await;
        assert_eq!(
            get(&h1_client(), &weft.url("public", "/").await).await,
            (200, "fine".into()),
            "{protocol}"
        );
    }
}

/// `weft_stream_idle_timeouts_total` of `public`.
async fn stream_idle_timeouts(weft: &Weft) -> f64 {
    metric(
        &metrics(weft).await,
        "weft_stream_idle_timeouts_total{listener=\"public\"}",
    )
}

#[tokio::test]
async fn a_request_body_that_stops_gets_408_and_is_counted() {
    // The upstream waits for the whole body; the route has no timeout.
    let (upstream, _bodies) = reading().await;
    let weft = weft_to(upstream.addr, "stream_idle_timeout: 200ms").await;
    let mut client = TcpStream::connect(weft.addr("public").await).await.unwrap();
    client
        .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\nx")
        .await
        .unwrap();
    let reply = until_closed(&mut client).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert_eq!(stream_idle_timeouts(&weft).await, 1.0);
}

/// An HTTP/1.1 upstream whose one connection answers with headers
/// announcing 10 GB, one byte, then nothing (the socket held open until the
/// task is aborted).
pub async fn stalling() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stalling = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 10000000000\r\n\r\nx";
        stream.write_all(head).await.unwrap();
        std::future::pending::<()>().await;
        drop(stream);
    });
    (addr, stalling)
}

#[tokio::test]
async fn a_response_that_stalls_after_its_headers_is_ended() {
    let (addr, stalling) = stalling().await;
    let weft = weft_to(addr, "stream_idle_timeout: 200ms").await;
    let response = h1_client()
        .request(Request::get(weft.url("public", "/").await).body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect()).await;
    assert!(matches!(body, Ok(Err(_))), "the stalled body did not end: {body:?}");
    assert_eq!(stream_idle_timeouts(&weft).await, 1.0);
    stalling.abort();
}

#[tokio::test]
async fn idle_tcp_connections_are_closed_and_counted() {
    // An echo upstream.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = listener.local_addr().unwrap();
    let echoing = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    let yaml = config(
        "  - { name: raw, address: 127.0.0.1:0, protocol: tcp, cluster: echo, idle_timeout: 200ms }",
        &format!("  - {{ name: echo, protocol: tcp, endpoints: [ {{ address: {echo} }} ] }}"),
    );
    let weft = Weft::start(&yaml).await;
    let mut client = TcpStream::connect(weft.addr("raw").await).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    // Then nothing moves: weft closes the connection.
    assert_eq!(until_closed(&mut client).await, "");
    let text = metrics(&weft).await;
    assert_eq!(metric(&text, "weft_tcp_idle_timeouts_total{listener=\"raw\"}"), 1.0);
    echoing.abort();
}
