//! Slow readers do not make weft buffer bodies: a client that stops reading
//! a 256 MiB response (HTTP/1.1 and HTTP/2), and an upstream that stops
//! reading a 256 MiB upload, stall the transfer with weft holding no more
//! than socket buffers, flow-control windows and fixed buffers. Measured as
//! bytes produced by the sender minus bytes taken by the reader, once the
//! sender's production has stopped: a weft that buffered the body would let
//! the sender produce all of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use crate::support::*;

const BODY: u64 = 256 << 20;
const CHUNK: usize = 64 << 10;
/// What weft and the kernel may hold between a stopped reader and the
/// sender: two hops of socket buffers (a few MiB each with autotuning), the
/// HTTP/2 windows and weft's fixed buffers, with room to spare.
const HELD_AT_MOST: u64 = 64 << 20;

/// A `BODY`-byte body produced chunk by chunk, counting what was taken.
fn counted_body(produced: Arc<AtomicU64>) -> TestBody {
    let chunks = futures_util::stream::unfold(0u64, move |sent| {
        let produced = produced.clone();
        async move {
            (sent < BODY).then(|| {
                produced.fetch_add(CHUNK as u64, Ordering::Relaxed);
                let frame: Result<_, BoxError> = Ok(Frame::data(Bytes::from_static(&[b'x'; CHUNK])));
                (frame, sent + CHUNK as u64)
            })
        }
    });
    StreamBody::new(chunks).boxed()
}

/// Waits until `produced` has started and then stopped growing (unchanged
/// over ten polls), then returns it.
async fn stalled(produced: &AtomicU64) -> u64 {
    let (mut last, mut still) = (u64::MAX, 0);
    eventually("the sender stalls", async || {
        let now = produced.load(Ordering::Relaxed);
        still = if now == last { still + 1 } else { 0 };
        last = now;
        now > 0 && still >= 10
    })
    .await;
    last
}

async fn weft_to(upstream: &Upstream) -> Weft {
    let yaml = config(
        "  - { name: public, address: 127.0.0.1:0, routes: [ { name: all, match: { path_prefix: / }, cluster: backend } ] }",
        &format!("  - name: backend\n    endpoints: [ {{ address: {} }} ]", upstream.addr),
    );
    Weft::start(&yaml).await
}

/// A client that reads one frame of a large response and then stops.
async fn download_stalls(
    client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>,
) {
    let produced = Arc::new(AtomicU64::new(0));
    let source = produced.clone();
    let upstream = Upstream::start(move |_req| {
        let produced = source.clone();
        async move { Response::new(counted_body(produced)) }
    })
    .await;
    let weft = weft_to(&upstream).await;
    let response = client
        .request(Request::get(weft.url("public", "/big").await).body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    let held = stalled(&produced).await;
    assert!(
        held < HELD_AT_MOST,
        "the upstream produced {held} bytes for a client that read one frame"
    );
    drop(body);
}

#[tokio::test]
async fn a_client_that_stops_reading_http1_holds_back_the_upstream() {
    download_stalls(h1_client()).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_http2_holds_back_the_upstream() {
    download_stalls(h2_client()).await;
}

#[tokio::test]
async fn an_upstream_that_stops_reading_holds_back_the_client() {
    let upstream = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        // One frame of the upload, then nothing more is read.
        let mut body = req.into_body();
        let _ = body.frame().await;
        std::future::pending::<()>().await;
        drop(body);
        Response::new(full(""))
    })
    .await;
    let weft = weft_to(&upstream).await;
    let sent = Arc::new(AtomicU64::new(0));
    let request = Request::post(weft.url("public", "/upload").await)
        .body(counted_body(sent.clone()))
        .unwrap();
    let upload = tokio::spawn(async move { h1_client().request(request).await });
    let held = stalled(&sent).await;
    assert!(
        held < HELD_AT_MOST,
        "the client sent {held} bytes to an upstream that read one frame"
    );
    upload.abort();
}
