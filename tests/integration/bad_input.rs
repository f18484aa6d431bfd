//! Bad input and bad upstreams get fast, clear answers; weft keeps serving.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

async fn weft_for(upstream: &str, extra_route: &str, limits: &str) -> Weft {
    let yaml = config(
        &format!(
            "  - name: public
    address: 127.0.0.1:0
    limits: {{ {limits} }}
    routes:
      - {{ name: all, cluster: app {extra_route} }}"
        ),
        &format!("  - {{ name: app, connect_timeout: 500ms, endpoints: [ {{ address: {upstream} }} ] }}"),
    );
    Weft::start(&yaml).await
}

#[tokio::test]
async fn dead_upstream_gives_503() {
    let dead = refused_addr();
    let weft = weft_for(&dead.addr.to_string(), "", "").await;
    let (status, body) = get(&h1_client(), &weft.url("public", "/").await).await;
    assert_eq!(status, 503);
    assert!(body.starts_with("upstream connect error"), "{body}");
    let text = metrics(&weft).await;
    assert!(
        text.contains(&format!(
            "weft_upstream_requests_total{{cluster=\"app\",endpoint=\"{}\",status=\"503\"}} 1",
            dead.addr
        )),
        "{text}"
    );
}

#[tokio::test]
async fn upstream_reset_or_garbage_gives_502() {
    for reply in [&b""[..], &b"this is not http\r\n\r\n"[..]] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
                drop(s);
            }
        });
        let weft = weft_for(&addr.to_string(), "", "").await;
        let (status, body) = get(&h1_client(), &weft.url("public", "/").await).await;
        assert_eq!(status, 502, "{body}");
        task.abort();
    }
}

#[tokio::test]
async fn slow_upstream_gives_504_after_route_timeout() {
    // Never answers.
    let upstream = HeldUpstream::start("too late").await;
    let weft = weft_for(&upstream.upstream.addr.to_string(), ", timeout: 200ms", "").await;
    let (status, body) = get(&h1_client(), &weft.url("public", "/").await).await;
    assert_eq!(status, 504);
    assert!(body.contains("timeout"), "{body}");
}

#[tokio::test]
async fn oversized_headers_get_431_and_weft_keeps_serving() {
    let upstream = Upstream::text("fine").await;
    let weft = weft_for(&upstream.addr.to_string(), "", "max_request_headers_kb: 8").await;
    let addr = weft.addr("public").await;
    let big = "a".repeat(16 * 1024);
    let reply = raw(
        addr,
        format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    // HTTP/2: the header list limit is enforced too.
    let req = Request::get(weft.url("public", "/").await)
        .header("x-big", big.as_str())
        .body(full(""))
        .unwrap();
    let h2 = h2_client().request(req).await;
    assert!(h2.is_err() || h2.as_ref().is_ok_and(|r| r.status() == 431), "{h2:?}");
    assert_eq!(
        get(&h1_client(), &weft.url("public", "/").await).await,
        (200, "fine".into())
    );
}

#[tokio::test]
async fn malformed_request_line_gets_400() {
    let upstream = Upstream::text("fine").await;
    let weft = weft_for(&upstream.addr.to_string(), "", "").await;
    let addr = weft.addr("public").await;
    let reply = raw(addr, b"GET / HTTP/9.9 extra\r\nhost: x\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let reply = raw(addr, b"\x01\x02garbage\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert_eq!(
        get(&h1_client(), &weft.url("public", "/").await).await,
        (200, "fine".into())
    );
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_never_smuggled() {
    // The upstream reports the body it received.
    let upstream = Upstream::start(|req: Request<Incoming>| async move {
        use http_body_util::BodyExt;
        let cl = req.headers().contains_key("content-length");
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Response::new(full(format!("cl={cl} body={}", String::from_utf8_lossy(&body))))
    })
    .await;
    let weft = weft_for(&upstream.addr.to_string(), "", "").await;
    let addr = weft.addr("public").await;
    let attack = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    let reply = raw(addr, attack).await;
    // Either refused outright, or (RFC 9112 section 6.1) framed by
    // Transfer-Encoding alone with Content-Length dropped and the connection
    // closed: never a second request smuggled in.
    let refused = reply.starts_with("HTTP/1.1 400");
    let framed_by_te = reply.contains("cl=false body=hello") && reply.matches("HTTP/1.1").count() == 1;
    assert!(refused || framed_by_te, "{reply}");
}

#[tokio::test]
async fn slow_header_client_is_closed_while_others_are_served() {
    let upstream = Upstream::text("fine").await;
    let weft = weft_for(&upstream.addr.to_string(), "", "header_read_timeout: 300ms").await;
    let addr = weft.addr("public").await;
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    // A client that connects and never sends a byte is held to the same limit.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Others are served while the slow client dawdles.
    for _ in 0..5 {
        assert_eq!(
            get(&h1_client(), &weft.url("public", "/").await).await,
            (200, "fine".into())
        );
    }
    // The slow client is cut off (bounded wait; the limit is generous).
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "connection still open");
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "silent connection still open");
}
