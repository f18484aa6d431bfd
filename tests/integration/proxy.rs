//! Routing, splitting, header rewriting and protocol bridging through weft.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

use crate::support::*;

fn routes_to(upstreams: &[(&str, &Upstream)], protocol: &str) -> String {
    upstreams
        .iter()
        .map(|(name, u)| {
            format!(
                "  - {{ name: {name}, protocol: {protocol}, endpoints: [ {{ address: {} }} ] }}\n",
                u.addr
            )
        })
        .collect()
}

#[tokio::test]
async fn header_routing_split_direct_response_and_404() {
    let stable = Upstream::text("stable").await;
    let canary = Upstream::text("canary").await;
    let yaml = config(
        "  - name: public
    address: 127.0.0.1:0
    routes:
      - { name: health, match: { path_exact: /healthz }, direct_response: { status: 200, body: \"ok\\n\" } }
      - name: canary-by-header
        match: { path_prefix: /, headers: [ { name: x-canary, exact: \"1\" } ] }
        cluster: web-canary
      - name: split
        match: { path_prefix: /app }
        split: [ { cluster: web-stable, weight: 90 }, { cluster: web-canary, weight: 10 } ]",
        &routes_to(&[("web-stable", &stable), ("web-canary", &canary)], "http1"),
    );
    let weft = Weft::start(&yaml).await;
    let client = h1_client();

    assert_eq!(
        get(&client, &weft.url("public", "/healthz").await).await,
        (200, "ok\n".into())
    );
    let req = Request::get(weft.url("public", "/app").await)
        .header("x-canary", "1")
        .body(full(""))
        .unwrap();
    assert_eq!(send(&client, req).await, (200, "canary".into()));
    let (status, body) = get(&client, &weft.url("public", "/nothing-here").await).await;
    assert_eq!(status, 404);
    assert!(body.contains("no route"), "{body}");

    let mut canary_count = 0;
    for _ in 0..1000 {
        let (status, body) = get(&client, &weft.url("public", "/app/x").await).await;
        assert_eq!(status, 200);
        canary_count += usize::from(body == "canary");
    }
    // 10% of 1000, binomial sd about 9.5: a 6 sd window never flakes.
    assert!((45..=155).contains(&canary_count), "canary got {canary_count} of 1000");

    let text = metrics(&weft).await;
    assert!(
        text.contains(
            r#"weft_requests_total{cluster="web-canary",listener="public",protocol="http1",route="split",status="200"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"weft_requests_total{cluster="",listener="public",protocol="http1",route="",status="404"} 1"#),
        "{text}"
    );
    assert!(text.contains("weft_request_duration_seconds_bucket"), "{text}");
    assert!(
        text.contains("weft_upstream_requests_total{cluster=\"web-stable\""),
        "{text}"
    );
}

#[tokio::test]
async fn forwarding_headers_request_id_and_hop_by_hop() {
    let upstream = Upstream::echo_headers().await;
    let yaml = config(
        "  - { name: public, address: 127.0.0.1:0, routes: [ { name: all, cluster: app } ] }",
        &routes_to(&[("app", &upstream)], "http1"),
    );
    let weft = Weft::start(&yaml).await;
    let client = h1_client();
    let req = Request::get(weft.url("public", "/x").await)
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "10.1.2.3")
        .body(full(""))
        .unwrap();
    let (status, seen) = send(&client, req).await;
    assert_eq!(status, 200);
    assert!(seen.contains("x-forwarded-for: 10.1.2.3, 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(seen.contains("x-request-id: "), "{seen}");
    assert!(!seen.contains("x-private"), "{seen}");
    assert!(!seen.contains("keep-alive"), "{seen}");

    let req = Request::get(weft.url("public", "/x").await)
        .header("x-request-id", "req-42")
        .body(full(""))
        .unwrap();
    let (_, seen) = send(&client, req).await;
    assert!(seen.contains("x-request-id: req-42\n"), "{seen}");
}

#[tokio::test]
async fn http2_downstream_to_http1_upstream_and_back() {
    let h1_upstream = Upstream::echo_headers().await;
    let h2_upstream = Upstream::echo_headers().await;
    let yaml = config(
        "  - name: public
    address: 127.0.0.1:0
    routes:
      - { name: to-h2, match: { path_prefix: /h2 }, cluster: speaks-h2 }
      - { name: to-h1, cluster: speaks-h1 }",
        &format!(
            "{}{}",
            routes_to(&[("speaks-h1", &h1_upstream)], "http1"),
            routes_to(&[("speaks-h2", &h2_upstream)], "http2")
        ),
    );
    let weft = Weft::start(&yaml).await;
    let (status, seen) = get(&h2_client(), &weft.url("public", "/h1").await).await;
    assert_eq!(status, 200);
    assert!(seen.starts_with("GET /h1 HTTP/1.1\n"), "{seen}");
    // The HTTP/2 :authority becomes the HTTP/1.1 Host.
    assert!(seen.contains(&format!("host: {}", weft.addr("public").await)), "{seen}");
    let (status, seen) = get(&h1_client(), &weft.url("public", "/h2").await).await;
    assert_eq!(status, 200);
    assert!(seen.starts_with("GET /h2 HTTP/2.0\n"), "{seen}");
}

/// A body that arrives in many chunks, with no length known up front.
fn chunked(data: &Bytes, trailers: Option<http::HeaderMap>) -> TestBody {
    let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = data
        .chunks(7919)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    if let Some(t) = trailers {
        frames.push(Ok(Frame::trailers(t)));
    }
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

#[tokio::test]
async fn upstream_connections_are_reused_whatever_the_response_framing() {
    let upstream = Upstream::start(|req: Request<Incoming>| async move {
        match req.uri().path() {
            "/chunked" => Response::new(chunked(&Bytes::from_static(b"no length known"), None)),
            "/empty" => Response::builder().status(204).body(full("")).unwrap(),
            _ => Response::new(full("sized")),
        }
    })
    .await;
    for protocol in ["http1", "http2"] {
        let yaml = config(
            "  - { name: public, address: 127.0.0.1:0, routes: [ { name: all, cluster: app } ] }",
            &routes_to(&[("app", &upstream)], protocol),
        );
        let weft = Weft::start(&yaml).await;
        let before = upstream.connections.load(std::sync::atomic::Ordering::SeqCst);
        let client = h1_client();
        for path in [
            "/chunked", "/sized", "/empty", "/chunked", "/empty", "/sized", "/chunked",
        ] {
            let (status, body) = get(&client, &weft.url("public", path).await).await;
            assert!(status == 200 || status == 204, "{protocol} {path}: {status} {body}");
        }
        let opened = upstream.connections.load(std::sync::atomic::Ordering::SeqCst) - before;
        assert_eq!(
            opened, 1,
            "{protocol}: one upstream connection serves sequential requests"
        );
    }
}

#[tokio::test]
async fn large_chunked_bodies_pass_byte_exact_both_ways() {
    let upstream = Upstream::echo_body().await;
    for (protocol, client) in [("http1", h1_client()), ("http2", h2_client())] {
        let yaml = config(
            "  - { name: public, address: 127.0.0.1:0, routes: [ { name: all, cluster: app } ] }",
            &routes_to(&[("app", &upstream)], protocol),
        );
        let weft = Weft::start(&yaml).await;
        let data: Bytes = (0..(3 << 20) / 4)
            .flat_map(|i: u32| i.to_le_bytes())
            .collect::<Vec<u8>>()
            .into();
        let req = Request::post(weft.url("public", "/upload").await)
            .body(chunked(&data, None))
            .unwrap();
        let response = client.request(req).await.unwrap();
        assert_eq!(response.status(), 200);
        let got = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), data.len(), "{protocol}");
        assert!(got == data, "{protocol}: body differs");
    }
}

#[tokio::test]
async fn grpc_style_trailers_pass_over_http2() {
    let upstream = Upstream::start(|req: Request<Incoming>| async move {
        let te = req
            .headers()
            .get("te")
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("x-upstream-saw-te", te.parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
            Ok(Frame::trailers(trailers)),
        ];
        Response::builder()
            .header("content-type", "application/grpc")
            .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
            .unwrap()
    })
    .await;
    let yaml = config(
        "  - { name: public, address: 127.0.0.1:0, routes: [ { name: all, cluster: grpc } ] }",
        &routes_to(&[("grpc", &upstream)], "http2"),
    );
    let weft = Weft::start(&yaml).await;
    let mut request_trailers = http::HeaderMap::new();
    request_trailers.insert("x-client-trailer", "1".parse().unwrap());
    let req = Request::post(weft.url("public", "/pkg.Service/Method").await)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(chunked(&Bytes::from_static(b"\0\0\0\0\x00"), Some(request_trailers)))
        .unwrap();
    let response = h2_client().request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers must pass through");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("x-upstream-saw-te").unwrap(), "trailers");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start(|mut req: Request<Incoming>| async move {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = hyper_util::rt::TokioIo::new(upgraded);
            let mut buf = [0u8; 64];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        switching_to_websocket()
    })
    .await;
    let yaml = config(
        "  - { name: public, address: 127.0.0.1:0, routes: [ { name: all, cluster: ws } ] }",
        &routes_to(&[("ws", &upstream)], "http1"),
    );
    let weft = Weft::start(&yaml).await;
    let mut stream = tokio::net::TcpStream::connect(weft.addr("public").await).await.unwrap();
    stream
        .write_all(b"GET /chat HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    stream.write_all(b"ping over the tunnel").await.unwrap();
    let mut echoed = [0u8; 20];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping over the tunnel");
}
