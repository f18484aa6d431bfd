//! An HTTP/2 upstream whose response head, first DATA and RST_STREAM reach
//! weft together: the failure is found before anything went downstream, so
//! HTTP/1.1 and HTTP/2 clients get 502 (README, "Errors weft answers
//! itself") rather than a closed connection or a reset stream.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::h2_abuse::raw::frame;
use crate::support::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

/// Answers every request stream in one write: HEADERS (`:status 200`, HPACK
/// static index 8), a DATA frame, and RST_STREAM(INTERNAL_ERROR).
fn head_data_reset(stream: u32) -> Vec<u8> {
    let mut out = frame(HEADERS, END_HEADERS, stream, &[0x88]);
    out.extend(frame(0x0, 0, stream, b"partial"));
    out.extend(frame(RST_STREAM, 0, stream, &2u32.to_be_bytes()));
    out
}

/// A raw HTTP/2 (prior knowledge) upstream answering with `head_data_reset`.
async fn resetting_h2_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

async fn serve(mut stream: TcpStream) {
    let mut preface = [0u8; PREFACE.len()];
    if stream.read_exact(&mut preface).await.is_err() || preface != PREFACE {
        return;
    }
    if stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.is_err() {
        return;
    }
    let mut header = [0u8; 9];
    while stream.read_exact(&mut header).await.is_ok() {
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let (kind, flags) = (header[3], header[4]);
        let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).await.is_err() {
            return;
        }
        let reply = match kind {
            SETTINGS if flags & ACK == 0 => frame(SETTINGS, ACK, 0, &[]),
            HEADERS => head_data_reset(id),
            _ => continue,
        };
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_reset_right_behind_the_head_is_a_502() {
    let upstream = resetting_h2_upstream().await;
    let weft = weft_in_front_of(upstream, "http2").await;
    let addr = weft.addr("public").await;
    let reply = raw(
        addr,
        b"GET /reset HTTP/1.1\r\nhost: app.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 502"), "HTTP/1.1 client got: {reply:?}");
    assert!(
        reply.contains("upstream reset or sent an invalid response"),
        "{reply:?}"
    );
    let (status, body) = get(&h2_client(), &format!("http://{addr}/reset")).await;
    assert_eq!(status, 502, "HTTP/2 client got: {body:?}");
    assert!(body.contains("upstream reset or sent an invalid response"), "{body:?}");
}
