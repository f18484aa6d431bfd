//! A raw HTTP/2 client for abuse tests: frames written by hand (9-byte
//! header + payload, RFC 9113 §4.1) over a plain `TcpStream`, since the
//! `h2` crate's frame layer is not public. Header blocks use HPACK
//! "literal without indexing, new name" only (RFC 7541 §6.2.2), which every
//! decoder must accept and which leaves the dynamic table alone.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::support::PATIENCE;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const CANCEL: u32 = 0x8;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame as read: type, flags, payload.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// The bytes of one frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    assert!(len < 1 << 24, "frame payload too long");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `prefix`-bit prefix, the first byte's other
/// bits set to `first` (RFC 7541 §5.1).
pub fn hpack_int(first: u8, prefix: u32, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// One header field as a literal without indexing, with a new name.
pub fn literal(name: &str, value: &str, out: &mut Vec<u8>) {
    out.push(0x00);
    hpack_int(0, 7, name.len(), out);
    out.extend_from_slice(name.as_bytes());
    hpack_int(0, 7, value.len(), out);
    out.extend_from_slice(value.as_bytes());
}

/// The header block of a GET for `path` on `authority`.
pub fn get_block(authority: &str, path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", authority),
        (":path", path),
    ] {
        literal(name, value, &mut out);
    }
    out
}

/// A client connection past the preface and the SETTINGS exchange.
pub struct RawH2 {
    pub reader: OwnedReadHalf,
    pub writer: OwnedWriteHalf,
}

impl RawH2 {
    /// Connects, sends the preface and empty SETTINGS, waits for the
    /// server's SETTINGS and acknowledges them (so the server's limits are
    /// in force for every frame sent after this).
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (reader, mut writer) = stream.into_split();
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        writer.write_all(&hello).await.unwrap();
        let mut this = Self { reader, writer };
        loop {
            let f = this.read_frame().await.expect("closed before its SETTINGS");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                break;
            }
        }
        this.send(&frame(SETTINGS, ACK, 0, &[])).await;
        this
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` once the server has closed (or reset) the
    /// connection. Bounded by [`PATIENCE`].
    pub async fn read_frame(&mut self) -> Option<Frame> {
        read_frame_from(&mut self.reader).await
    }
}

/// The next frame from `reader`, or `None` once the server has closed;
/// bounded by [`PATIENCE`].
pub async fn read_frame_from(reader: &mut (impl AsyncRead + Unpin)) -> Option<Frame> {
    tokio::time::timeout(PATIENCE, read_frame(reader))
        .await
        .expect("no frame and no close from the server")
}

async fn read_frame(reader: &mut (impl AsyncRead + Unpin)) -> Option<Frame> {
    let mut head = [0u8; 9];
    reader.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    reader.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
        payload,
    })
}

/// How an abusive connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// A GOAWAY with this error code (the connection closed after it).
    GoAway(u32),
    /// Closed without a GOAWAY.
    Closed,
}

/// Reads frames (discarding all but GOAWAY) until the server ends the
/// connection, while `attack` keeps writing; the attack's own end (all sent,
/// or a write error once the server has closed) does not stop the reading.
pub async fn ending_under(
    reader: &mut (impl AsyncRead + Unpin),
    attack: impl std::future::Future<Output = ()>,
) -> Ending {
    let read = async {
        while let Some(f) = read_frame(reader).await {
            if f.kind == GOAWAY {
                let code = u32::from_be_bytes(f.payload[4..8].try_into().unwrap());
                return Ending::GoAway(code);
            }
        }
        Ending::Closed
    };
    let attack = async {
        attack.await;
        std::future::pending::<()>().await;
    };
    let both = async {
        tokio::select! {
            ending = read => ending,
            _ = attack => unreachable!(),
        }
    };
    tokio::time::timeout(PATIENCE, both)
        .await
        .expect("the server neither ended the abusive connection nor closed it")
}
