//! HTTP/3 GOAWAY at `limits.max_requests_per_connection`, seen on the wire
//! by a raw QUIC client (the h3 client crate hides the GOAWAY's id): the id
//! is past every request weft served (RFC 9114 5.2), and a request on that
//! id is refused with H3_REQUEST_REJECTED, not served; the connection stays
//! open after the last response for the client to close.

use crate::h3::{quic_connect, two_requests_per_connection};
use crate::support::*;

const H3_REQUEST_REJECTED: u32 = 0x10b;

/// One HTTP/3 HEADERS frame for `GET https://localhost/`, QPACK-encoded with
/// the static table only.
fn get_request() -> Vec<u8> {
    // Required insert count 0, base 0; :method GET (17), :scheme https (23),
    // :path / (1) indexed; :authority (0) literal with name reference.
    let mut block = vec![0x00, 0x00, 0xc0 | 17, 0xc0 | 23, 0xc0 | 1, 0x50, 9];
    block.extend_from_slice(b"localhost");
    let mut frame = vec![0x01, u8::try_from(block.len()).unwrap()];
    frame.extend_from_slice(&block);
    frame
}

async fn varint(recv: &mut quinn::RecvStream) -> Option<u64> {
    let mut first = [0u8; 1];
    recv.read_exact(&mut first).await.ok()?;
    let len = 1usize << (first[0] >> 6);
    let mut value = u64::from(first[0] & 0x3f);
    let mut rest = [0u8; 7];
    recv.read_exact(&mut rest[..len - 1]).await.ok()?;
    for b in &rest[..len - 1] {
        value = (value << 8) | u64::from(*b);
    }
    Some(value)
}

/// The stream id of the first GOAWAY on the server's control stream.
async fn goaway_id(conn: quinn::Connection) -> u64 {
    loop {
        let mut recv = conn.accept_uni().await.unwrap();
        if varint(&mut recv).await != Some(0x00) {
            continue; // QPACK encoder/decoder streams
        }
        loop {
            let kind = varint(&mut recv).await.unwrap();
            let len = varint(&mut recv).await.unwrap();
            if kind == 0x07 {
                return varint(&mut recv).await.unwrap();
            }
            let mut payload = vec![0u8; usize::try_from(len).unwrap()];
            recv.read_exact(&mut payload).await.unwrap();
        }
    }
}

/// Sends a GET on a new request stream: its id and the whole response
/// stream, or the stream's error.
async fn get(conn: &quinn::Connection) -> (u64, Result<Vec<u8>, quinn::ReadToEndError>) {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .unwrap_or_else(|e| panic!("the connection closed before a new request: {e}"));
    send.write_all(&get_request()).await.unwrap();
    send.finish().unwrap();
    (send.id().index() * 4, recv.read_to_end(1 << 20).await)
}

#[tokio::test]
async fn http3_goaway_at_max_requests_names_the_first_unserved_stream() {
    let weft = two_requests_per_connection().await;
    let (_endpoint, conn) = quic_connect(weft.addr, &weft.ca).await;
    // The client's control stream: stream type 0, an empty SETTINGS.
    let mut control = conn.open_uni().await.unwrap();
    control.write_all(&[0x00, 0x04, 0x00]).await.unwrap();
    let goaway = tokio::spawn(goaway_id(conn.clone()));
    let mut served = Vec::new();
    for _ in 0..2 {
        let (id, response) = get(&conn).await;
        let response = response.unwrap_or_else(|e| panic!("request on stream {id}: {e}"));
        assert!(!response.is_empty(), "empty response on stream {id}");
        served.push(id);
    }
    let goaway = tokio::time::timeout(PATIENCE, goaway).await.unwrap().unwrap();
    let last = served[1];
    assert!(
        goaway > last,
        "GOAWAY({goaway}) claims served stream {last} unprocessed"
    );
    // After the last response the connection is still open (for the client
    // to close), and a request at the GOAWAY's id is refused unprocessed.
    let (id, third) = get(&conn).await;
    assert_eq!(id, goaway);
    match third {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(code, quinn::VarInt::from_u32(H3_REQUEST_REJECTED))
        }
        other => panic!("request on stream {id} after GOAWAY({goaway}): {other:?}"),
    }
    conn.close(quinn::VarInt::from_u32(0x100), b"");
}
