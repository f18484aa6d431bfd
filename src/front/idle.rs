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
//! The same clock times a TCP listener's `idle_timeout` (see `listener::tcp`).
//! Each expiry is counted once per stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus::IntCounter;
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
    /// A clock that starts now; `counter` counts its expiry.
    pub fn new(timeout: Duration, counter: IntCounter) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
            timeout,
            expired: AtomicBool::new(false),
            counter,
        })
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
        // A request body that went idle fails the exchange in the upstream
        // connection's words; it is the idle timeout all the same.
        answer = exchange => answer.map_err(|e| if clock.expired.load(Ordering::Relaxed) { idle() } else { e }),
        _ = clock.idle() => Err(idle()),
    }
}

/// `inner`, touching `clock` with every frame and failing once the stream
/// has been idle for its timeout while this body waited.
pub fn watched(inner: Body, clock: Arc<IdleClock>) -> Body {
    if inner.is_end_stream() {
        return inner;
    }
    IdleBody {
        inner,
        clock,
        timer: None,
    }
    .boxed()
}

struct IdleBody {
    inner: Body,
    clock: Arc<IdleClock>,
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
}
