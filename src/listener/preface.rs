//! Tells HTTP/2 with prior knowledge from HTTP/1.x by the first bytes a
//! client sends (the HTTP/2 connection preface, RFC 9113 §3.4), and hands the
//! bytes read back to the protocol's server through [`Prefixed`]. On captured
//! connections, which may speak anything, [`detect`] also tells a TLS
//! ClientHello and any other protocol (opaque TCP) from HTTP, within a time
//! limit: a client that says nothing may be waiting for the server to speak.
//!
//! Why not hyper-util's auto builder: its connection future holds the HTTP/1
//! and HTTP/2 servers side by side, so every idle HTTP/1.1 connection carried
//! (and copied into its task) the size of an HTTP/2 one. Deciding first lets
//! a connection hold only the server it speaks.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::{Duration, Instant};

/// The HTTP/2 client connection preface.
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Reads until the bytes either are the HTTP/2 preface or cannot become it
/// (at most 24 bytes; fewer at end of stream, which counts as HTTP/1).
pub async fn sniff<I: AsyncRead + Unpin>(mut io: I) -> io::Result<(Protocol, Prefixed<I>)> {
    let mut buf = [0u8; 24];
    let mut len = 0;
    let protocol = loop {
        let n = io.read(&mut buf[len..]).await?;
        len += n;
        if n == 0 || buf[..len] != H2_PREFACE[..len] {
            break Protocol::Http1;
        }
        if len == H2_PREFACE.len() {
            break Protocol::Http2;
        }
    };
    Ok((protocol, Prefixed::new(buf, len, io)))
}

/// What a captured connection's first bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http(Protocol),
    /// A TLS record carrying a handshake (the ClientHello): forwarded as is.
    Tls,
    /// Anything else, or nothing within the time limit.
    Opaque,
}

/// The longest HTTP/1 method token [`detect`] waits for (`PROPPATCH` has 9).
const MAX_METHOD: usize = 20;

/// Reads a captured connection's first bytes until they are HTTP/1 (a
/// method token and a space), the HTTP/2 preface, a TLS handshake record, or
/// none of these; bytes that are still undecided at end of stream or after
/// `within` are opaque. The bytes read are handed back through [`Prefixed`].
pub async fn detect<I: AsyncRead + Unpin>(mut io: I, within: Duration) -> io::Result<(Detected, Prefixed<I>)> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 24];
    let mut len = 0;
    let detected = loop {
        if let Some(detected) = classify(&buf[..len]) {
            break detected;
        }
        match tokio::time::timeout_at(deadline, io.read(&mut buf[len..])).await {
            Ok(Ok(0)) | Err(_) => break Detected::Opaque,
            Ok(Ok(n)) => len += n,
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok((detected, Prefixed::new(buf, len, io)))
}

/// What `bytes` (the first of a connection) are, or `None` while more could
/// still change the answer.
fn classify(bytes: &[u8]) -> Option<Detected> {
    match bytes {
        [] => None,
        // A TLS handshake record: content type 22, protocol version 3.x.
        [0x16] => None,
        [0x16, 0x03, ..] => Some(Detected::Tls),
        _ if H2_PREFACE.starts_with(bytes) => {
            (bytes.len() == H2_PREFACE.len()).then_some(Detected::Http(Protocol::Http2))
        }
        _ => match bytes.iter().position(|b| !b.is_ascii_uppercase()) {
            None if bytes.len() <= MAX_METHOD => None,
            Some(i) if i > 0 && bytes[i] == b' ' => Some(Detected::Http(Protocol::Http1)),
            _ => Some(Detected::Opaque),
        },
    }
}

/// An IO that first yields the bytes already read from it.
pub struct Prefixed<I> {
    prefix: [u8; 24],
    start: usize,
    end: usize,
    io: I,
}

impl<I> Prefixed<I> {
    pub fn new(prefix: [u8; 24], len: usize, io: I) -> Self {
        Self {
            prefix,
            start: 0,
            end: len.min(24),
            io,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.start < self.end {
            let n = (self.end - self.start).min(buf.remaining());
            let start = self.start;
            buf.put_slice(&self.prefix[start..start + n]);
            self.start += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn sniffed(chunks: &[&[u8]]) -> (Protocol, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(4096);
        for chunk in chunks {
            client.write_all(chunk).await.unwrap();
        }
        drop(client);
        let (protocol, mut io) = sniff(server).await.unwrap();
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        (protocol, all)
    }

    #[tokio::test]
    async fn tells_the_protocols_apart_and_loses_no_byte() {
        let h1 = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        assert_eq!(sniffed(&[h1]).await, (Protocol::Http1, h1.to_vec()));
        let mut h2 = H2_PREFACE.to_vec();
        h2.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
        assert_eq!(sniffed(&[&h2]).await, (Protocol::Http2, h2.clone()));
        // The preface split over reads, and a near miss.
        assert_eq!(sniffed(&[b"PRI * HT", &h2[8..]]).await, (Protocol::Http2, h2.clone()));
        let near = b"PRI * HTTP/1.1\r\n\r\n";
        assert_eq!(sniffed(&[near]).await, (Protocol::Http1, near.to_vec()));
        // A client that closes early is HTTP/1 (hyper then sees the end).
        assert_eq!(sniffed(&[b"PRI"]).await, (Protocol::Http1, b"PRI".to_vec()));
        assert_eq!(sniffed(&[]).await, (Protocol::Http1, Vec::new()));
    }

    /// What `detect` says of `chunks` (followed, with `close`, by the end of
    /// stream; else by silence), and the bytes it hands on.
    async fn detected(chunks: &[&[u8]], close: bool) -> (Detected, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(4096);
        for chunk in chunks {
            client.write_all(chunk).await.unwrap();
        }
        let client = if close {
            drop(client);
            None
        } else {
            Some(client)
        };
        let (detected, mut io) = detect(server, Duration::from_secs(3600)).await.unwrap();
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        (detected, all)
    }

    #[tokio::test(start_paused = true)]
    async fn detects_http_tls_and_opaque_streams_and_loses_no_byte() {
        use Detected::*;
        let h1 = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        assert_eq!(detected(&[h1], false).await, (Http(Protocol::Http1), h1.to_vec()));
        assert_eq!(
            detected(&[b"OPT", b"IONS * HTTP/1.1\r\n"], false).await.0,
            Http(Protocol::Http1)
        );
        let mut h2 = H2_PREFACE.to_vec();
        h2.extend_from_slice(b"\x00\x00\x00\x04");
        assert_eq!(
            detected(&[&h2[..5], &h2[5..]], false).await,
            (Http(Protocol::Http2), h2.clone())
        );
        // A near miss of the preface is an HTTP/1 request line.
        assert_eq!(detected(&[b"PRI * HTTP/1.1\r\n"], false).await.0, Http(Protocol::Http1));
        let hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03";
        assert_eq!(
            detected(&[&hello[..1], &hello[1..]], false).await,
            (Tls, hello.to_vec())
        );
        for opaque in [
            &b"\x00\x01binary"[..],
            b"get / HTTP/1.1",
            b"HELO",
            b"\x16\x01",
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZ ",
        ] {
            assert_eq!(
                detected(&[opaque], opaque == b"HELO").await,
                (Opaque, opaque.to_vec()),
                "{opaque:?}"
            );
        }
        // Nothing at all, or an undecided start, at the end of stream.
        assert_eq!(detected(&[], true).await, (Opaque, Vec::new()));
        assert_eq!(detected(&[b"GE"], true).await, (Opaque, b"GE".to_vec()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_opaque_once_the_time_is_up() {
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(b"GE").await.unwrap();
        let detecting = tokio::spawn(detect(server, Duration::from_millis(500)));
        tokio::time::sleep(Duration::from_millis(499)).await;
        assert!(!detecting.is_finished());
        let (detected, mut io) = detecting.await.unwrap().unwrap();
        assert_eq!(detected, Detected::Opaque);
        client.write_all(b"T /").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET /");
    }
}
