//! Closes a downstream HTTP/2 connection that floods control frames, which
//! h2 answers without limit: [`FloodGuard`] wraps the connection's plaintext
//! stream (inside TLS, so h2 over TLS and prior-knowledge h2c alike; HTTP/1.1
//! connections are never wrapped) and reads the frame headers going by
//! each way (see `h2_frames`).
//!
//! Inbound, each non-ACK PING, non-ACK SETTINGS and empty DATA frame without
//! END_STREAM is spent from the connection's [`ControlFrameBudget`] (the
//! policy and its numbers are there); each HEADERS frame weft sends gives
//! one back, and so does each `CREDIT_BYTES` (4 KiB) of DATA payload it sends
//! (bytes, not frames: a client that makes weft send 1-byte DATA frames
//! earns next to nothing). The read that overdraws the budget fails, and so does every
//! read and write after it, so hyper drops the connection at once (h2 ends
//! its streams; the frames of that read are never handed to h2). Before
//! that, when the bytes h2 has written so far end at a frame boundary, a
//! GOAWAY with ENHANCE_YOUR_CALM is written in one try (its last stream id is
//! the highest of the client's HEADERS frames in the reads handed to h2);
//! after a half-written frame
//! (the socket's buffer was full: a large response under way, or a client
//! that does not read) the connection is just closed. Each
//! such connection counts in `weft_downstream_h2_flood_total{listener}` and
//! logs a warning (rate-limited like every warning).
//!
//! Cost: per read and per write, one step per frame header in the bytes
//! (payloads are passed over by their length), a clock read only for a
//! frame that spends the budget, no allocation.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::front::Downstream;
use crate::listener::h2_frames::{
    goaway, FrameHead, FrameScanner, ACK, DATA, END_STREAM, ENHANCE_YOUR_CALM, HEADERS, PING, SETTINGS,
};
use crate::listener::preface::H2_PREFACE;
use crate::policy::control_frames::ControlFrameBudget;

/// An HTTP/2 server connection's IO (from the client's preface on) that
/// fails once the client floods control frames.
pub struct FloodGuard<I> {
    io: I,
    inbound: FrameScanner,
    outbound: FrameScanner,
    budget: ControlFrameBudget,
    /// The highest stream id of the client's HEADERS frames handed to h2.
    last_stream: u32,
    flooded: bool,
    floods: IntCounter,
    downstream: Arc<Downstream>,
}

impl<I> FloodGuard<I> {
    /// `io` yields the client's connection preface first; `floods` is the
    /// listener's flood counter.
    pub fn new(io: I, floods: IntCounter, downstream: Arc<Downstream>) -> Self {
        Self {
            io,
            // The preface is 24 bytes; a constant that fits.
            inbound: FrameScanner::after(H2_PREFACE.len() as u32),
            outbound: FrameScanner::after(0),
            budget: ControlFrameBudget::new(Instant::now()),
            last_stream: 0,
            flooded: false,
            floods,
            downstream,
        }
    }

    /// Scans bytes the client sent; true once they spend the budget. The
    /// HEADERS of a read that overdraws count for nothing: that read never
    /// reaches h2, so the GOAWAY must not name its streams.
    fn received(&mut self, bytes: &[u8]) -> bool {
        let budget = &mut self.budget;
        let mut highest = self.last_stream;
        let mut now = None;
        let mut over = false;
        self.inbound.scan(bytes, |head| {
            if head.kind == HEADERS {
                highest = highest.max(head.stream);
            } else if costs_budget(head) && !over {
                over = !budget.spend(*now.get_or_insert_with(Instant::now));
            }
        });
        if !over {
            self.last_stream = highest;
        }
        over
    }

    /// Scans bytes h2 wrote.
    fn sent(&mut self, bytes: &[u8]) {
        let budget = &mut self.budget;
        self.outbound.scan(bytes, |head| {
            if head.kind == DATA {
                budget.credit_data(head.len);
            } else if head.kind == HEADERS {
                budget.credit();
            }
        });
    }

    fn report(&self) {
        self.floods.inc();
        tracing::warn!(
            listener = %self.downstream.listener,
            peer = %self.downstream.peer,
            "HTTP/2 control frame flood (PING, SETTINGS or empty DATA frames): GOAWAY ENHANCE_YOUR_CALM, connection closed"
        );
    }
}

/// Whether a frame the client sent is spent from its budget.
fn costs_budget(head: FrameHead) -> bool {
    match head.kind {
        PING | SETTINGS => head.flags & ACK == 0,
        DATA => head.len == 0 && head.flags & END_STREAM == 0,
        _ => false,
    }
}

fn flood_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "HTTP/2 control frame flood")
}

impl<I: AsyncWrite + Unpin> FloodGuard<I> {
    /// Writes GOAWAY ENHANCE_YOUR_CALM if that splits no frame, in one try.
    fn write_goaway(&mut self, cx: &mut Context<'_>) {
        // The rest of a half-written frame is in h2's buffer, not ours.
        if !self.outbound.at_boundary() {
            return;
        }
        let frame = goaway(self.last_stream, ENHANCE_YOUR_CALM);
        let mut io = Pin::new(&mut self.io);
        if let Poll::Ready(Ok(n)) = io.as_mut().poll_write(cx, &frame) {
            if n == frame.len() {
                // Over TLS the frame may wait in the session's buffer.
                let _ = io.poll_flush(cx);
            }
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for FloodGuard<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.flooded {
            return Poll::Ready(Err(flood_error()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if this.received(&buf.filled()[before..]) {
            this.flooded = true;
            // Counted first: a client that sees the GOAWAY sees the count.
            this.report();
            this.write_goaway(cx);
            return Poll::Ready(Err(flood_error()));
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FloodGuard<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.flooded {
            return Poll::Ready(Err(flood_error()));
        }
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.sent(&buf[..n.min(buf.len())]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.flooded {
            return Poll::Ready(Err(flood_error()));
        }
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for buf in bufs {
            if left == 0 {
                break;
            }
            let k = left.min(buf.len());
            this.sent(&buf[..k]);
            left -= k;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::h2_frames::frame;
    use crate::policy::control_frames::{BURST, CREDIT_BYTES};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A guard on the server end of a pipe, the client end, and the counter.
    fn guarded() -> (FloodGuard<DuplexStream>, DuplexStream, IntCounter) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let floods = IntCounter::new("floods", "test").unwrap();
        let guard = FloodGuard::new(server, floods.clone(), Arc::new(Downstream::example()));
        (guard, client, floods)
    }

    /// The client's preface, SETTINGS and a request on stream 5, then `n`
    /// copies of `unit`.
    fn flood(unit: &[u8], n: u32) -> Vec<u8> {
        let mut bytes = H2_PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[]));
        bytes.extend(frame(HEADERS, 0x5, 5, &[0x82]));
        for _ in 0..n {
            bytes.extend_from_slice(unit);
        }
        bytes
    }

    /// Reads through `guard` until it fails (a flood), or returns the bytes
    /// of a stream that ended without failing.
    async fn read_all(guard: &mut FloodGuard<DuplexStream>) -> Result<Vec<u8>, io::Error> {
        let mut all = Vec::new();
        let mut buf = [0u8; 100];
        loop {
            match guard.read(&mut buf).await? {
                0 => return Ok(all),
                n => all.extend_from_slice(&buf[..n]),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_burst_passes_and_the_frame_after_it_fails_with_goaway() {
        for unit in [
            frame(PING, 0, 0, &[1; 8]),
            frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]),
            frame(DATA, 0, 5, &[]),
        ] {
            // The client's SETTINGS is one of the burst.
            let (mut guard, mut client, floods) = guarded();
            client.write_all(&flood(&unit, BURST - 1)).await.unwrap();
            client.shutdown().await.unwrap();
            assert!(read_all(&mut guard).await.is_ok(), "{unit:?}");
            let (mut guard, mut client, floods_after) = guarded();
            client.write_all(&flood(&unit, BURST)).await.unwrap();
            let error = read_all(&mut guard).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
            let mut goaway = [0u8; 17];
            client.read_exact(&mut goaway).await.unwrap();
            assert_eq!(goaway, super::goaway(5, ENHANCE_YOUR_CALM));
            assert_eq!((floods.get(), floods_after.get()), (0, 1));
            // Reads and writes fail from then on.
            assert!(guard.read(&mut [0; 10]).await.is_err());
            assert!(guard.write(&frame(PING, ACK, 0, &[1; 8])).await.is_err());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_goaway_names_no_stream_of_the_read_that_overdraws() {
        let (mut guard, mut client, _floods) = guarded();
        // Stream 5 reaches h2; stream 7 comes in the read that overdraws.
        let spent = flood(&frame(PING, 0, 0, &[1; 8]), BURST - 1);
        client.write_all(&spent).await.unwrap();
        guard.read_exact(&mut vec![0; spent.len()]).await.unwrap();
        let mut last = frame(HEADERS, 0x5, 7, &[0x82]);
        last.extend(frame(PING, 0, 0, &[1; 8]));
        client.write_all(&last).await.unwrap();
        assert!(guard.read(&mut [0; 100]).await.is_err());
        let mut goaway = [0u8; 17];
        client.read_exact(&mut goaway).await.unwrap();
        assert_eq!(goaway, super::goaway(5, ENHANCE_YOUR_CALM));
    }

    #[tokio::test(start_paused = true)]
    async fn acknowledgements_and_frames_with_a_payload_cost_nothing() {
        let (mut guard, mut client, floods) = guarded();
        let mut unit = frame(PING, ACK, 0, &[1; 8]);
        unit.extend(frame(SETTINGS, ACK, 0, &[]));
        unit.extend(frame(DATA, 0, 5, b"x"));
        unit.extend(frame(DATA, END_STREAM, 7, &[]));
        unit.extend(frame(0x8, 0, 0, &[0, 0, 1, 0]));
        client.write_all(&flood(&unit, 10 * BURST)).await.unwrap();
        client.shutdown().await.unwrap();
        assert!(read_all(&mut guard).await.is_ok());
        assert_eq!(floods.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn frames_weft_sends_earn_pings_back() {
        let (mut guard, mut client, _floods) = guarded();
        let ping = frame(PING, 0, 0, &[1; 8]);
        let spent = flood(&ping, BURST - 1);
        client.write_all(&spent).await.unwrap();
        guard.read_exact(&mut vec![0; spent.len()]).await.unwrap();
        // Each CREDIT_BYTES of DATA written (one frame vectored, split over
        // two slices) allows one more PING; a 1-byte DATA frame does not.
        guard.write_all(&frame(DATA, 0, 5, &[0; 1])).await.unwrap();
        let data = frame(DATA, 0, 5, &vec![0; CREDIT_BYTES as usize]);
        guard.write_all(&data).await.unwrap();
        let (head, rest) = data.split_at(4);
        let slices = [io::IoSlice::new(head), io::IoSlice::new(rest)];
        assert_eq!(guard.write_vectored(&slices).await.unwrap(), data.len());
        client.write_all(&[ping.clone(), ping.clone()].concat()).await.unwrap();
        guard.read_exact(&mut [0; 34]).await.unwrap();
        client.write_all(&ping).await.unwrap();
        assert!(guard.read(&mut [0; 17]).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn no_goaway_splits_a_frame_half_written() {
        let (mut guard, mut client, floods) = guarded();
        let data = frame(DATA, 0, 5, &[9; 100]);
        guard.write_all(&data[..50]).await.unwrap();
        client
            .write_all(&flood(&frame(PING, 0, 0, &[1; 8]), BURST))
            .await
            .unwrap();
        assert!(read_all(&mut guard).await.is_err());
        assert_eq!(floods.get(), 1);
        drop(guard);
        let mut seen = Vec::new();
        client.read_to_end(&mut seen).await.unwrap();
        assert_eq!(seen, &data[..50]);
    }
}
