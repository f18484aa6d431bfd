//! `Host` by RFC 9112 section 3.2 and RFC 9113 section 8.3.1, over raw
//! sockets: an HTTP/1.1 request needs exactly one `Host` line, and the
//! request's own authority (an absolute-form target, HTTP/2's `:authority`)
//! wins over `Host` and is the host the upstream sees.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// weft in front of an upstream that answers the headers it saw.
async fn weft_before_echo() -> (Weft, Upstream) {
    let upstream = Upstream::echo_headers().await;
    let weft = Weft::start(&config(
        "  - { name: public, address: 127.0.0.1:0, routes: [ { name: all, cluster: echo } ] }",
        &format!("  - {{ name: echo, endpoints: [ {{ address: {} }} ] }}", upstream.addr),
    ))
    .await;
    (weft, upstream)
}

/// The `host` line the upstream echoed in `answer`.
fn seen_host(answer: &str) -> Option<&str> {
    let start = answer.find("\nhost: ")? + "\nhost: ".len();
    let len = answer[start..].find('\n')?;
    Some(&answer[start..start + len])
}

#[tokio::test]
async fn http1_requests_need_exactly_one_host() {
    let (weft, _upstream) = weft_before_echo().await;
    let addr = weft.addr("public").await;
    let missing = raw(addr, b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(missing.starts_with("HTTP/1.1 400"), "{missing}");
    let twice = raw(
        addr,
        b"GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(twice.starts_with("HTTP/1.1 400"), "{twice}");
    let once = raw(addr, b"GET /x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n").await;
    assert!(once.starts_with("HTTP/1.1 200"), "{once}");
    assert_eq!(seen_host(&once), Some("a.example"), "{once}");
    // HTTP/1.0 has no Host requirement.
    let http10 = raw(addr, b"GET /x HTTP/1.0\r\n\r\n").await;
    assert!(http10.starts_with("HTTP/1.0 200"), "{http10}");
}

#[tokio::test]
async fn an_absolute_form_target_wins_over_host() {
    let (weft, _upstream) = weft_before_echo().await;
    let answer = raw(
        weft.addr("public").await,
        b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(seen_host(&answer), Some("a.example"), "{answer}");
}

/// An HPACK "literal header field without indexing, new name" (RFC 7541
/// section 6.2.2), lengths under 127, no Huffman coding.
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0);
    block.push(name.len() as u8);
    block.extend_from_slice(name.as_bytes());
    block.push(value.len() as u8);
    block.extend_from_slice(value.as_bytes());
}

/// Sends one HTTP/2 GET (prior knowledge) with `:authority` and a
/// differing `host`, and returns what came back until the upstream's echo
/// of `host` arrived.
async fn h2_get_with_two_hosts(addr: SocketAddr, authority: &str, host: &str) -> String {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/x"),
        (":authority", authority),
        ("host", host),
    ] {
        literal(&mut block, name, value);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
    let len = block.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    // HEADERS with END_STREAM | END_HEADERS on stream 1.
    out.extend_from_slice(&[1, 0x5, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&out).await.unwrap();
    let mut seen = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&chunk[..n]);
            if seen_host(&String::from_utf8_lossy(&seen)).is_some() {
                return;
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("no echo of the request");
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn http2_authority_wins_over_host_and_becomes_the_http1_host() {
    let (weft, _upstream) = weft_before_echo().await;
    let answer = h2_get_with_two_hosts(weft.addr("public").await, "a.example", "b.example").await;
    assert_eq!(seen_host(&answer), Some("a.example"), "{answer}");
}
