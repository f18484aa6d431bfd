//! Tells HTTP/2 with prior knowledge from HTTP/1.x by the first bytes a
//! client sends (the HTTP/2 connection preface, RFC 9113 §3.4), and hands the
//! bytes read back to the protocol's server through [`Prefixed`].
//!
//! Why not hyper-util's auto builder: its connection future holds the HTTP/1
//! and HTTP/2 servers side by side, so every idle HTTP/1.1 connection carried
//! (and copied into its task) the size of an HTTP/2 one. Deciding first lets
//! a connection hold only the server it speaks.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

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
}
