//! `limits.stream_idle_timeout` beyond HTTP/1.1 requests (those are in
//! `limits`): a WebSocket tunnel after its 101, HTTP/2 (h2c prior
//! knowledge) and HTTP/3 streams. A request body that stops gets 408, a
//! response that stalls after its headers has its stream reset while the
//! connection goes on serving, and each expiry is counted in
//! `weft_stream_idle_timeouts_total{listener}`.

use bytes::{Buf, Bytes};
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::h3::{metrics_of, H3Weft};
use crate::limits::{app, reading, stalling, until_closed, weft_with};
use crate::support::*;

const IDLE: &str = "stream_idle_timeout: 200ms";

/// A route to cluster `app`, and one answered by weft itself at `/ok`.
const ROUTES: &str = "{ name: ok, match: { path_prefix: /ok }, direct_response: { status: 200, body: fine } },
                      { name: all, cluster: app }";

fn idle_timeouts(text: &str) -> f64 {
    metric(text, "weft_stream_idle_timeouts_total{listener=\"public\"}")
}

/// An upstream that accepts WebSocket upgrades and echoes what comes
/// through the tunnel; each tunnel's end is reported on the channel.
async fn websocket_echo() -> (Upstream, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let (ended, ends) = tokio::sync::mpsc::unbounded_channel();
    let upstream = Upstream::start(move |mut req: Request<Incoming>| {
        let ended = ended.clone();
        async move {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 64];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = ended.send(());
            });
            switching_to_websocket()
        }
    })
    .await;
    (upstream, ends)
}

#[tokio::test]
async fn an_idle_websocket_tunnel_is_closed_both_sides_and_counted() {
    let (upstream, mut ends) = websocket_echo().await;
    let weft = weft_with(IDLE, ROUTES, &app(upstream.addr, "")).await;
    let mut client = TcpStream::connect(weft.addr("public").await).await.unwrap();
    client
        .write_all(b"GET /chat HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        client.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    // The tunnel carries bytes ...
    client.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    client.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");
    // ... then nothing moves either way: weft closes both connections.
    assert_eq!(until_closed(&mut client).await, "");
    let upstream_end = tokio::time::timeout(PATIENCE, ends.recv()).await;
    assert!(matches!(upstream_end, Ok(Some(()))), "the upstream side is still open");
    assert_eq!(idle_timeouts(&metrics(&weft).await), 1.0);
}

/// An h2c prior-knowledge connection to `weft`'s `public` listener.
async fn h2c(weft: &Weft) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let stream = TcpStream::connect(weft.addr("public").await).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// A request body that sends one byte, then nothing, never ending.
fn stopping_body() -> TestBody {
    let first = futures_util::stream::iter([Ok(http_body::Frame::data(Bytes::from_static(b"x")))]);
    let stopped = futures_util::StreamExt::chain(first, futures_util::stream::pending());
    StreamBody::new(stopped).boxed()
}

#[tokio::test]
async fn http2_a_request_body_that_stops_gets_408_and_is_counted() {
    let (upstream, _bodies) = reading().await;
    let weft = weft_with(IDLE, ROUTES, &app(upstream.addr, "")).await;
    let mut sender = h2c(&weft).await;
    let req = Request::post("http://x/").body(stopping_body()).unwrap();
    let response = tokio::time::timeout(PATIENCE, sender.send_request(req)).await;
    let response = response.expect("no answer to a request whose body stopped").unwrap();
    assert_eq!(response.status(), 408);
    assert_eq!(idle_timeouts(&metrics(&weft).await), 1.0);
}

#[tokio::test]
async fn http2_a_response_that_stalls_has_its_stream_reset() {
    let (addr, stalling) = stalling().await;
    let weft = weft_with(IDLE, ROUTES, &app(addr, "")).await;
    let mut sender = h2c(&weft).await;
    let response = sender
        .send_request(Request::get("http://x/").body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect()).await;
    assert!(matches!(body, Ok(Err(_))), "the stalled body did not end: {body:?}");
    // A stream reset, not the connection: it goes on serving.
    let next = sender
        .send_request(Request::get("http://x/ok").body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(next.status(), 200);
    assert_eq!(idle_timeouts(&metrics(&weft).await), 1.0);
    stalling.abort();
}

fn h3_idle_timeouts(text: &str) -> f64 {
    metric(text, "weft_stream_idle_timeouts_total{listener=\"quic\"}")
}

#[tokio::test]
async fn http3_a_request_body_that_stops_gets_408_and_is_counted() {
    let (upstream, _bodies) = reading().await;
    let weft = H3Weft::start(&format!("limits: {{ {IDLE} }},"), ROUTES, &app(upstream.addr, "")).await;
    let mut client = weft.client().await;
    let req = Request::post("https://localhost/").body(()).unwrap();
    let mut stream = client.sender.send_request(req).await.unwrap();
    stream.send_data(Bytes::from_static(b"x")).await.unwrap();
    let response = tokio::time::timeout(PATIENCE, stream.recv_response()).await;
    let response = response.expect("no answer to a request whose body stopped").unwrap();
    assert_eq!(response.status(), 408);
    assert_eq!(h3_idle_timeouts(&metrics_of(&weft.app).await), 1.0);
}

#[tokio::test]
async fn http3_a_response_that_stalls_has_its_stream_reset() {
    let (addr, stalling) = stalling().await;
    let weft = H3Weft::start(&format!("limits: {{ {IDLE} }},"), ROUTES, &app(addr, "")).await;
    let mut client = weft.client().await;
    let req = Request::get("https://localhost/").body(()).unwrap();
    let mut stream = client.sender.send_request(req).await.unwrap();
    stream.finish().await.unwrap();
    assert_eq!(stream.recv_response().await.unwrap().status(), 200);
    // The one byte sent, then the stream ends in an error, not as if
    // complete (a reset may discard the byte if it arrives unread).
    let ended = tokio::time::timeout(PATIENCE, async {
        let mut received = 0;
        loop {
            match stream.recv_data().await {
                Ok(Some(chunk)) => received += chunk.remaining(),
                Ok(None) => return Ok(received),
                Err(e) => return Err((received, e)),
            }
        }
    })
    .await
    .expect("the stalled body did not end");
    assert!(matches!(ended, Err((0..=1, _))), "the stalled body ended as: {ended:?}");
    // A stream reset, not the connection: it goes on serving.
    assert_eq!(client.request("GET", "/ok", &[], Bytes::new()).await.0, 200);
    assert_eq!(h3_idle_timeouts(&metrics_of(&weft.app).await), 1.0);
    stalling.abort();
}
