//! Odd upstream answers, written byte by byte by a raw TCP upstream: each
//! becomes a 502 while nothing has reached the client yet; and a response
//! that goes out before the request body was read says `connection: close`.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// What the raw upstream writes for each request path.
fn answer_for(path: &str) -> &'static [u8] {
    match path {
        "/length-and-chunked" => {
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        }
        "/bad-chunk" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        "/status-600" => b"HTTP/1.1 600 Odd\r\ncontent-length: 2\r\n\r\nok",
        "/unasked-101" => b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfine",
    }
}

/// An upstream that reads one request head per connection, writes
/// `answer_for(path)` in one write and holds the connection open.
async fn raw_upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer_one(stream));
        }
    });
    (addr, task)
}

async fn answer_one(mut stream: TcpStream) {
    let head = read_head(&mut stream).await;
    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
    let _ = stream.write_all(answer_for(&path)).await;
    // Held open until weft lets go, so an early close cannot explain anything.
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
}

/// Reads up to the end of a message head (the blank line).
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn odd_upstream_answers_become_502() {
    let (upstream, task) = raw_upstream().await;
    let weft = weft_in_front_of(upstream, "http1").await;
    let addr = weft.addr("public").await;
    for path in ["/length-and-chunked", "/bad-chunk", "/status-600", "/unasked-101"] {
        let reply = raw(
            addr,
            format!("GET {path} HTTP/1.1\r\nhost: app.example\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 502"), "{path}: {reply:?}");
    }
    let reply = raw(
        addr,
        b"GET / HTTP/1.1\r\nhost: app.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    task.abort();
}

/// Sends the head of a large upload and its first 64 KiB, then reads the
/// response head weft answers with before the rest was sent.
async fn early_answer_to_upload(addr: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nhost: app.example\r\ncontent-length: 10000000\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&[b'x'; 64 * 1024]).await.unwrap();
    read_head(&mut stream).await.to_ascii_lowercase()
}

#[tokio::test]
async fn an_answer_before_the_upload_was_read_says_connection_close() {
    // The upstream's own 503, sent without reading the body.
    let upstream = Upstream::start(|_req: Request<Incoming>| async move {
        Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .body(full("busy"))
            .unwrap()
    })
    .await;
    let weft = weft_in_front_of(upstream.addr, "http1").await;
    let head = early_answer_to_upload(weft.addr("public").await).await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");

    // weft's own 503: the upstream refuses connections.
    let refused = refused_addr();
    let weft = weft_in_front_of(refused.addr, "http1").await;
    let head = early_answer_to_upload(weft.addr("public").await).await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
}
