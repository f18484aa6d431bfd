//! Differential check of weft's HTTP/1.1 request framing: generated request
//! streams (`streams`) go to a real weft listener in front of an upstream
//! that records every request it receives; a second parser (`model`, built
//! on `httparse`) reads the same bytes. The upstream must see exactly the
//! requests the model sees, in order and with the same bodies, up to the
//! point where weft refuses (a 4xx, or the connection closes): weft never
//! forwards a request the model does not see, never splits a body
//! differently, and accepts every stream whose framing is plain.

mod model;
mod streams;

use std::cell::RefCell;
use std::net::SocketAddr;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use proptest::test_runner::{TestCaseError, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::properties::cases;
use crate::support::*;
use model::End;

/// What the upstream received.
#[derive(Debug)]
enum Seen {
    Whole(model::Request),
    /// The request arrived but its body ended in an error.
    Aborted,
}

/// An upstream that reports every request it receives, then answers 200.
async fn recording_upstream() -> (Upstream, mpsc::UnboundedReceiver<Seen>) {
    let (seen, received) = mpsc::unbounded_channel();
    let upstream = Upstream::start(move |req: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            let method = req.method().to_string();
            let path = req.uri().path_and_query().map_or("", |p| p.as_str()).to_string();
            let report = match req.into_body().collect().await {
                Ok(body) => Seen::Whole(model::Request {
                    method,
                    path,
                    body: body.to_bytes().to_vec(),
                }),
                Err(_) => Seen::Aborted,
            };
            let _ = seen.send(report);
            Response::new(full("ok"))
        }
    })
    .await;
    (upstream, received)
}

/// Writes `bytes` (then ends the write side if `finish`) and reads until
/// weft closes; a reset counts as a close.
async fn exchange(addr: SocketAddr, bytes: &[u8], finish: bool) -> Result<Vec<u8>, String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    // weft may refuse and close before it has read everything.
    if stream.write_all(bytes).await.is_ok() && finish {
        let _ = stream.shutdown().await;
    }
    let mut reply = Vec::new();
    match tokio::time::timeout(PATIENCE, stream.read_to_end(&mut reply)).await {
        Ok(_) => Ok(reply),
        Err(_) => Err(format!(
            "weft neither answered nor closed within {PATIENCE:?}; it answered {:?}",
            String::from_utf8_lossy(&reply)
        )),
    }
}

/// The status of each whole response in `reply`.
fn statuses(mut reply: &[u8]) -> Vec<u16> {
    let mut found = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head)) = response.parse(reply) else {
            return found;
        };
        let length = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok());
        let Some(end) = length.map(|n| head + n).filter(|end| *end <= reply.len()) else {
            return found;
        };
        found.push(response.code.unwrap_or(0));
        reply = &reply[end..];
    }
}

/// Sends one stream as case `case` and compares what the upstream saw with
/// what the model reads.
async fn check(
    addr: SocketAddr,
    stream: &streams::Stream,
    case: u32,
    received: &mut mpsc::UnboundedReceiver<Seen>,
) -> Result<(), String> {
    let bytes = stream.bytes(case);
    let (expected, end) = model::read(&bytes);
    if stream.plain && end != End::Closed {
        return Err(format!("the model reads a plain stream as {end:?}: {expected:?}"));
    }
    let reply = exchange(addr, &bytes, end == End::Incomplete).await?;
    let statuses = statuses(&reply);

    // Requests of earlier cases (an aborted body, a failed case being
    // shrunk) may still arrive; each case counts its own.
    let own = format!("/{:04}/", case % 10_000);
    let mut forwarded = Vec::new();
    while let Ok(seen) = received.try_recv() {
        match seen {
            Seen::Whole(request) if request.path.starts_with(&own) => forwarded.push(request),
            Seen::Whole(_) | Seen::Aborted => {}
        }
    }
    let agreed = forwarded.len() <= expected.len() && forwarded[..] == expected[..forwarded.len()];
    let answered = statuses.iter().enumerate().all(|(i, s)| {
        if i < forwarded.len() {
            *s == 200
        } else {
            i == forwarded.len() && *s >= 400
        }
    });
    let accepted_plain = !stream.plain || forwarded.len() == expected.len() && statuses == vec![200; expected.len()];
    if agreed && answered && accepted_plain {
        return Ok(());
    }
    Err(format!(
        "weft forwarded {forwarded:#?}\nand answered {statuses:?}: {:?};\nthe model reads {expected:#?}\nthen {end:?}\nfrom {:?}",
        String::from_utf8_lossy(&reply),
        String::from_utf8_lossy(&bytes)
    ))
}

/// weft with one route to `upstream`. The header read timeout is out of
/// reach, so a weft still waiting for a request the model says is not there
/// fails the test instead of closing after a while.
async fn weft_before(upstream: &Upstream) -> Weft {
    let yaml = config(
        "  - { name: public, address: 127.0.0.1:0, limits: { header_read_timeout: 1h }, routes: [ { name: all, cluster: app } ] }",
        &format!("  - {{ name: app, endpoints: [ {{ address: {} }} ] }}", upstream.addr),
    );
    Weft::start(&yaml).await
}

#[test]
fn weft_frames_requests_as_a_second_parser_does() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (weft, _upstream, received) = runtime.block_on(async {
        let (upstream, received) = recording_upstream().await;
        (weft_before(&upstream).await, upstream, received)
    });
    let addr = runtime.block_on(weft.addr("public"));
    let received = RefCell::new(received);
    let case = RefCell::new(0u32);
    let mut runner = TestRunner::new(cases(256));
    let result = runner.run(&streams::stream(), |stream| {
        *case.borrow_mut() += 1;
        let n = *case.borrow();
        runtime
            .block_on(check(addr, &stream, n, &mut received.borrow_mut()))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// hyper's client sends a GET body of unknown length as no body unless told
/// it is chunked: the body was lost and the connection closed unread.
#[tokio::test]
async fn a_chunked_get_body_reaches_the_upstream_and_the_next_request_is_served() {
    let (upstream, mut received) = recording_upstream().await;
    let weft = weft_before(&upstream).await;
    let reply = raw(
        weft.addr("public").await,
        b"GET /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(reply.as_bytes()), [200, 200], "{reply}");
    let mut seen = Vec::new();
    while let Ok(Seen::Whole(request)) = received.try_recv() {
        seen.push((request.method, request.path, String::from_utf8(request.body).unwrap()));
    }
    let expected = [("GET", "/a", "abc"), ("GET", "/b", "")].map(|(m, p, b)| (m.into(), p.into(), b.into()));
    assert_eq!(seen, expected);
}

/// hyper ends a trailer section only at CRLF CRLF: after `X-Sum: 1\n` it
/// reads the request that follows as more trailers, where a parser that
/// ends lines at LF (in a proxy in front of weft) sees a request. weft ends
/// the connection after a request with trailers, so the two never answer
/// different requests: nothing after the trailers is served.
#[tokio::test]
async fn a_request_with_trailers_ends_its_connection() {
    let (upstream, mut received) = recording_upstream().await;
    let weft = weft_before(&upstream).await;
    let reply = raw(
        weft.addr("public").await,
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 1\n\r\n\
GET /hidden HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(reply.as_bytes()), [200], "{reply}");
    assert!(reply.contains("connection: close"), "{reply}");
    let mut paths = Vec::new();
    while let Ok(Seen::Whole(request)) = received.try_recv() {
        paths.push(request.path);
    }
    assert_eq!(paths, ["/a"]);
}
