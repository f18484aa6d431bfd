//! `limits.stream_idle_timeout` (Envoy's name): a request or response with
//! no bytes moving for that long is ended, whatever the route's `timeout`
//! (which bounds only the wait for response headers, and may be absent).
//!
//! One [`IdleClock`] per stream notes the last time a frame moved either
//! way. Until the response headers arrive, [`until_idle`] races the
//! route's service against the clock: expiry drops the exchange (the
//! upstream request is aborted) and the client gets 408. The request body
//! and then the response body are [`IdleBody`]s: a body whose inner body
//! has nothing for the timeout, while nothing else moved either, fails;
//! failing the request body aborts the upstream request, failing the
//! response body resets the downstream stream (HTTP/2, HTTP/3) or closes
//! the connection (HTTP/1.1), since the response has started.
//!
//! The same clock times byte streams copied both ways ([`copy_until_idle`]):
//! a TCP listener's connections under its `idle_timeout` (see
//! `listener::tcp`) and an HTTP/1.1 upgrade's tunnel after the 101 under
//! `limits.stream_idle_timeout` (see `upgrade`), as Envoy applies it to
//! upgraded streams. Each expiry is counted once per stream.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Duration, Instant, Sleep};

use crate::core::body::Body;
use crate::core::error::{BoxError, ErrorKind, Limit, ProxyError};

/// When bytes last moved on one stream or connection.
pub struct IdleClock {
    start: Instant,
    /// Milliseconds from `start` to the last activity.
    last: AtomicU64,
    timeout: Duration,
    expired: AtomicBool,
    counter: IntCounter,
}

impl IdleClock {
    /// A clock that starts now, to share; `counter` counts its expiry.
    pub fn new(timeout: Duration, counter: IntCounter) -> Arc<Self> {
        Arc::new(Self::unshared(timeout, counter))
    }

    /// A clock that starts now, for one body to own.
    pub fn unshared(timeout: Duration, counter: IntCounter) -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
            timeout,
            expired: AtomicBool::new(false),
            counter,
        }
    }

    /// Notes that bytes moved now.
    pub fn touch(&self) {
        let since = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(since, Ordering::Relaxed);
    }

    fn deadline(&self) -> Instant {
        self.start + Duration::from_millis(self.last.load(Ordering::Relaxed)) + self.timeout
    }

    /// Whether the stream has been idle for the timeout; the first time it
    /// is seen so, it is counted.
    fn check(&self, now: Instant) -> bool {
        let idle = now >= self.deadline();
        if idle && !self.expired.swap(true, Ordering::Relaxed) {
            self.counter.inc();
        }
        idle
    }

    /// Resolves once nothing has moved for the timeout.
    pub async fn idle(&self) {
        loop {
            let deadline = self.deadline();
            tokio::time::sleep_until(deadline).await;
            if self.check(Instant::now()) {
                return;
            }
        }
    }
}

/// Runs `exchange` (the wait for response headers) until it answers or the
/// stream goes idle, which is a 408 ([`Limit::StreamIdle`]).
pub async fn until_idle<T>(
    clock: &IdleClock,
    exchange: impl Future<Output = Result<T, ProxyError>>,
) -> Result<T, ProxyError> {
    let idle = || {
        ProxyError::new(
            ErrorKind::OverLimit(Limit::StreamIdle),
            format!("no bytes moved for {}", humantime::format_duration(clock.timeout)),
        )
    };
    tokio::select! {
        // The exchange first: no random branch order to draw per poll.
        biased;
        // A request body that went idle fails the exchange in the upstream
        // connection's words; it is the idle timeout all the same.
        answer = exchange => answer.map_err(|e| if clock.expired.load(Ordering::Relaxed) { idle() } else { e }),
        _ = clock.idle() => Err(idle()),
    }
}

/// The clock a body watches: its own, or one shared with the other
/// direction's body (a request body still streaming beside the response).
/// Owning it saves an allocation on every bodiless request.
pub enum HeldClock {
    Own(IdleClock),
    Shared(Arc<IdleClock>),
}

impl std::ops::Deref for HeldClock {
    type Target = IdleClock;
    fn deref(&self) -> &IdleClock {
        match self {
            HeldClock::Own(clock) => clock,
            HeldClock::Shared(clock) => clock,
        }
    }
}

impl From<IdleClock> for HeldClock {
    fn from(clock: IdleClock) -> Self {
        HeldClock::Own(clock)
    }
}

impl From<Arc<IdleClock>> for HeldClock {
    fn from(clock: Arc<IdleClock>) -> Self {
        HeldClock::Shared(clock)
    }
}

/// `inner`, touching `clock` with every frame and failing once the stream
/// has been idle for its timeout while this body waited.
pub fn watched(inner: Body, clock: impl Into<HeldClock>) -> Body {
    if inner.is_end_stream() {
        return inner;
    }
    IdleBody {
        inner,
        clock: clock.into(),
        timer: None,
    }
    .boxed()
}

/// Runs one exchange under `clock`: the request body (if any is still to
/// come) and the response body are watched, and the wait for the response
/// headers is bounded by [`until_idle`]. A bodiless request's clock is
/// owned by the response body.
pub async fn watched_exchange<F>(
    clock: IdleClock,
    req: Request<Body>,
    call: impl FnOnce(Request<Body>) -> F,
) -> Result<Response<Body>, ProxyError>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    if req.body().is_end_stream() {
        let response = until_idle(&clock, call(req)).await?;
        return Ok(response.map(|body| watched(body, clock)));
    }
    let clock = Arc::new(clock);
    let req = req.map(|body| watched(body, clock.clone()));
    let response = until_idle(&clock, call(req)).await?;
    Ok(response.map(|body| watched(body, clock)))
}

struct IdleBody {
    inner: Body,
    clock: HeldClock,
    /// Made the first time the inner body waits.
    timer: Option<Pin<Box<Sleep>>>,
}

impl HttpBody for IdleBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if polled.is_ready() {
            self.clock.touch();
            return polled;
        }
        loop {
            let deadline = self.clock.deadline();
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Activity elsewhere (the other direction) may have moved the deadline.
            if self.clock.check(Instant::now()) {
                let message = format!(
                    "stream idle timeout: no bytes moved for {}",
                    humantime::format_duration(self.clock.timeout)
                );
                return Poll::Ready(Some(Err(message.into())));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a [`copy_until_idle`] ended other than by both ends closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyEnd {
    /// A read or write failed (a reset, a broken pipe).
    Error,
    /// No bytes moved either way for the timeout.
    Idle,
}

impl CopyEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyEnd::Error => "stream error",
            CopyEnd::Idle => "idle timeout",
        }
    }
}

/// An idle timeout for byte streams, with the counter of its expiries.
#[derive(Clone)]
pub struct IdleLimit {
    pub timeout: Duration,
    pub expired: IntCounter,
}

/// Copies bytes both ways between `a` and `b` (one side's end of stream
/// becomes a shutdown of the other's write half) until both ends closed,
/// or until no bytes moved either way for `limit`'s timeout, which its
/// counter counts. Dropping the streams on return closes both.
pub async fn copy_until_idle<A, B>(a: A, b: B, limit: &IdleLimit) -> Result<(), CopyEnd>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let clock = IdleClock::new(limit.timeout, limit.expired.clone());
    let mut a = Touching::new(a, &clock);
    let mut b = Touching::new(b, &clock);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut a, &mut b) => copied.map(drop).map_err(|_| CopyEnd::Error),
        _ = clock.idle() => Err(CopyEnd::Idle),
    }
}

/// A stream that notes on `clock` every read that brought bytes.
struct Touching<I> {
    io: I,
    clock: Arc<IdleClock>,
}

impl<I> Touching<I> {
    fn new(io: I, clock: &Arc<IdleClock>) -> Self {
        Self {
            io,
            clock: clock.clone(),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Touching<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Touching<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
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
    use crate::core::body;

    fn counter() -> IntCounter {
        IntCounter::new("idle_test", "test").unwrap()
    }

    /// A body that sends one frame, then nothing ever again.
    fn stalling() -> Body {
        let frames = futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"a")))]);
        let stalled = futures_util::StreamExt::chain(frames, futures_util::stream::pending());
        body::boxed(http_body_util::StreamBody::new(stalled))
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_timeout_and_is_counted_once() {
        let counter = counter();
        let clock = IdleClock::new(Duration::from_secs(300), counter.clone());
        let mut body = watched(stalling(), clock.clone());
        assert!(body.frame().await.unwrap().is_ok());
        let started = Instant::now();
        let failed = body.frame().await.unwrap().unwrap_err();
        assert!(failed.to_string().contains("stream idle timeout"), "{failed}");
        assert_eq!(started.elapsed(), Duration::from_secs(300));
        assert!(until_idle(&clock, std::future::pending::<Result<(), ProxyError>>())
            .await
            .is_err());
        assert_eq!(counter.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn activity_on_the_stream_pushes_the_deadline() {
        let clock = IdleClock::new(Duration::from_secs(10), counter());
        let started = Instant::now();
        let toucher = clock.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(8)).await;
            toucher.touch();
        });
        let exchange = until_idle(&clock, std::future::pending::<Result<(), ProxyError>>());
        let error = exchange.await.unwrap_err();
        assert_eq!(error.status(), http::StatusCode::REQUEST_TIMEOUT);
        assert_eq!(started.elapsed(), Duration::from_secs(18));
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_ends_once_nothing_moved_either_way_for_the_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let counter = counter();
        let (mut client, a) = tokio::io::duplex(64);
        let (b, mut server) = tokio::io::duplex(64);
        let started = Instant::now();
        let limit = IdleLimit {
            timeout: Duration::from_secs(10),
            expired: counter.clone(),
        };
        let copy = tokio::spawn(async move { copy_until_idle(a, b, &limit).await });
        // Bytes one way at 8 s, the other way at 16 s: each pushes the deadline.
        tokio::time::sleep(Duration::from_secs(8)).await;
        client.write_all(b"up").await.unwrap();
        let mut buf = [0u8; 2];
        server.read_exact(&mut buf).await.unwrap();
        tokio::time::sleep(Duration::from_secs(8)).await;
        server.write_all(b"dn").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(copy.await.unwrap(), Err(CopyEnd::Idle));
        assert_eq!(started.elapsed(), Duration::from_secs(26));
        assert_eq!(counter.get(), 1);
        // Both ends were dropped, so both peers see the end.
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
    }
}
