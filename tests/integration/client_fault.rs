//! A client cannot make weft blame a healthy upstream: a malformed or
//! truncated request body is answered 400 (or not at all when the client is
//! gone), never retried, and counted nowhere against the endpoint, so no
//! number of such requests ejects it.

use std::sync::atomic::Ordering;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// Reads the whole body (whatever becomes of it), then answers "ok".
async fn reading_upstream() -> Upstream {
    Upstream::start(|req: Request<Incoming>| async move {
        let _ = req.into_body().collect().await;
        Response::new(full("ok"))
    })
    .await
}

const CHUNKED: &str = "POST / HTTP/1.1\r\nhost: app.example\r\ntransfer-encoding: chunked\r\n\r\n";

/// Sends a body shorter than its Content-Length, then stops sending; returns
/// whatever weft answers before it closes.
async fn truncated(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "POST / HTTP/1.1\r\nhost: app.example\r\ncontent-length: 1000000\r\n\r\n0123456789";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn bad_request_bodies_are_the_clients_fault_and_eject_no_endpoint() {
    for protocol in ["http1", "http2"] {
        let upstreams = [reading_upstream().await, reading_upstream().await];
        let yaml = config(
            "  - name: public
    address: 127.0.0.1:0
    routes:
      - { name: all, cluster: app, retry: { retry_on: [reset, gateway_error], max_retries: 2, idempotent_only: false } }",
            &format!(
                "  - name: app
    protocol: {protocol}
    outlier_detection: {{ consecutive_gateway_failure: 3 }}
    endpoints: [ {{ address: {} }}, {{ address: {} }} ]",
                upstreams[0].addr, upstreams[1].addr
            ),
        );
        let weft = Weft::start(&yaml).await;
        let addr = weft.addr("public").await;
        let mut sent = 0;
        for _ in 0..4 {
            for chunk_size in ["zz", "ffffffffffffffffff", "-5"] {
                let reply = raw(addr, format!("{CHUNKED}{chunk_size}\r\nhello\r\n0\r\n\r\n").as_bytes()).await;
                assert!(
                    reply.starts_with("HTTP/1.1 400"),
                    "{protocol}, chunk size {chunk_size}: {reply}"
                );
                sent += 1;
            }
            let reply = truncated(addr).await;
            assert!(
                reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
                "{protocol}, truncated body: {reply}"
            );
            sent += 1;
        }

        let (_, body) = get(&h1_client(), &weft.admin("/clusters")).await;
        let clusters: Value = serde_json::from_str(&body).unwrap();
        for endpoint in clusters[0]["endpoints"].as_array().unwrap() {
            assert_eq!(endpoint["ejected"], false, "{protocol}: {body}");
            assert_eq!(endpoint["times_ejected"], 0, "{protocol}: {body}");
        }
        assert_eq!(clusters[0]["recent"]["errors"], 0, "{protocol}: {body}");
        let text = metrics(&weft).await;
        for family in [
            "weft_outlier_ejections_total",
            "weft_upstream_requests_total",
            "weft_retries_total",
        ] {
            let counted = text
                .lines()
                .filter(|l| l.starts_with(family) && l.contains("cluster=\"app\""))
                .any(|l| !l.ends_with(" 0"));
            assert!(!counted, "{protocol}: {family} counted a client's bad body:\n{text}");
        }
        if protocol == "http1" {
            // Each bad body's upstream connection was closed, not reused: every
            // request needed a new one (and none was retried on another).
            let opened: usize = upstreams.iter().map(|u| u.connections.load(Ordering::SeqCst)).sum();
            assert_eq!(opened, sent, "upstream connections opened for {sent} bad requests");
        }
        // Both endpoints still serve.
        let client = h1_client();
        for _ in 0..4 {
            assert_eq!(get(&client, &weft.url("public", "/").await).await, (200, "ok".into()));
        }
    }
}
