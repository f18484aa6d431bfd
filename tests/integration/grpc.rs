//! gRPC clients get weft's own answers as gRPC statuses ("trailers-only":
//! HTTP 200 with `grpc-status` in the headers), checked with a real gRPC
//! client and server (tonic over h2c) and a hand-written unary service.

use std::future::Future;
use std::pin::Pin;

use http::uri::PathAndQuery;
use http_body_util::BodyExt;
use tokio::io::AsyncReadExt;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use crate::support::*;

#[derive(Clone, PartialEq, prost::Message)]
struct Text {
    #[prost(string, tag = "1")]
    text: String,
}

/// The unary method `test.Echo/Say`: answers the text it was sent.
#[derive(Clone)]
struct Say;

impl tonic::server::UnaryService<Text> for Say {
    type Response = Text;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<Text>, Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<Text>) -> Self::Future {
        Box::pin(async move { Ok(tonic::Response::new(request.into_inner())) })
    }
}

/// A gRPC server (HTTP/2) serving `test.Echo/Say`.
async fn echo_server() -> Upstream {
    Upstream::start(|req: http::Request<hyper::body::Incoming>| async move {
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<Text, Text>::default());
        let (parts, body) = grpc.unary(Say, req).await.into_parts();
        // Whole (a unary answer is short), trailers kept: the test body
        // type must be `Sync`, tonic's is not.
        let whole = body.collect().await.unwrap();
        http::Response::from_parts(parts, whole.map_err(|never| match never {}).boxed())
    })
    .await
}

/// An upstream that accepts connections and closes each one as soon as a
/// request arrives on it, without an answer.
async fn resetting_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut first = [0u8; 1];
            let _ = stream.read(&mut first).await;
        }
    });
    addr
}

/// Calls `path` through weft's listener at `addr` with tonic's gRPC
/// client over hyper's HTTP/2 client (tonic's own transport would end a
/// call at its `grpc-timeout` itself, racing weft's answer).
async fn call(
    addr: std::net::SocketAddr,
    path: &'static str,
    timeout: Option<std::time::Duration>,
) -> Result<Text, Status> {
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<tonic::body::Body>();
    let origin: http::Uri = format!("http://{addr}").parse().unwrap();
    let mut client = tonic::client::Grpc::with_origin(h2, origin);
    client.ready().await.unwrap();
    let mut request = tonic::Request::new(Text { text: "hi".into() });
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    let codec = ProstCodec::<Text, Text>::default();
    client
        .unary(request, PathAndQuery::from_static(path), codec)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn weft_answers_grpc_clients_with_grpc_statuses() {
    let server = echo_server().await;
    let held = HeldUpstream::start("never").await;
    let dead = refused_addr();
    let resetting = resetting_upstream().await;
    let routes = "      - { name: echo, match: { path_prefix: /test.Echo/Say }, cluster: echo }
      - { name: slow, match: { path_prefix: /test.Slow/ }, cluster: slow }
      - { name: dead, match: { path_prefix: /test.Dead/ }, cluster: dead }
      - { name: reset, match: { path_prefix: /test.Reset/ }, cluster: reset }";
    let weft = Weft::start(&config(
        &format!("  - name: public\n    address: 127.0.0.1:0\n    routes:\n{routes}"),
        &format!(
            "  - {{ name: echo, protocol: http2, endpoints: [ {{ address: {} }} ] }}\n  - {{ name: slow, endpoints: [ {{ address: {} }} ] }}\n  - {{ name: dead, endpoints: [ {{ address: {} }} ] }}\n  - {{ name: reset, endpoints: [ {{ address: {resetting} }} ] }}",
            server.addr, held.upstream.addr, dead.addr
        ),
    ))
    .await;
    let addr = weft.addr("public").await;

    let said = call(addr, "/test.Echo/Say", None).await.unwrap();
    assert_eq!(said.text, "hi", "the gRPC path itself works");
    let code = async |path, timeout| call(addr, path, timeout).await.unwrap_err();
    let no_route = code("/test.Missing/Say", None).await;
    assert_eq!(no_route.code(), Code::Unimplemented, "{no_route:?}");
    assert!(no_route.message().contains("no route"), "{no_route:?}");
    let unavailable = code("/test.Dead/Say", None).await;
    assert_eq!(unavailable.code(), Code::Unavailable, "{unavailable:?}");
    let expired = code("/test.Slow/Say", Some(std::time::Duration::from_millis(200))).await;
    assert_eq!(expired.code(), Code::DeadlineExceeded, "{expired:?}");
    assert!(
        expired.message().contains("timeout"),
        "weft's answer, not the client's: {expired:?}"
    );
    let reset = code("/test.Reset/Say", None).await;
    assert_eq!(reset.code(), Code::Internal, "{reset:?}");

    // Metrics keep the HTTP-equivalent status.
    let text = metrics(&weft).await;
    for (route, cluster, status) in [
        ("", "", "404"),
        ("dead", "dead", "503"),
        ("slow", "slow", "504"),
        ("reset", "reset", "502"),
    ] {
        let series = format!("weft_requests_total{{cluster=\"{cluster}\",listener=\"public\",protocol=\"http2\",route=\"{route}\",status=\"{status}\"}}");
        assert_eq!(metric(&text, &series), 1.0, "{series}");
    }
}
