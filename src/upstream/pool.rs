//! One endpoint's upstream connections: a LIFO stack of idle HTTP/1.1
//! connections and one shared HTTP/2 connection, on hyper's connection-level
//! client (`hyper::client::conn`).
//!
//! Guarantees:
//! - An HTTP/1.1 connection goes back to the stack only when its response
//!   body has been read to the end; one abandoned mid-body is closed (hyper
//!   cannot reuse it). The most recently used connection is taken first, so
//!   a burst's extra connections age out instead of being kept warm.
//! - Idle connections close after the cluster's `idle_timeout`: expired ones
//!   are dropped whenever the stack is touched, and a sweeper task (alive
//!   only while the stack holds connections) closes the rest.
//! - A request that hyper hands back unsent (the pooled connection closed
//!   under it) is sent again on another connection, as hyper-util's pooled
//!   client does; a request that may have reached the upstream never is.
//! - Concurrent first requests to an HTTP/2 endpoint share one connect.
//!
//! Why not hyper-util's pooled client: it keys the pool by URI (a SipHash map
//! behind a mutex), spawns a task per HTTP/1 response to return the
//! connection and accounted for a quarter of the instructions of a proxied
//! request in callgrind; the endpoint already is the key.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use parking_lot::Mutex;
use tokio::time::{Duration, Instant};

use crate::core::body::Body;

/// Idle HTTP/1.1 connections and the shared HTTP/2 connection of one endpoint.
pub struct ConnectionPool {
    idle_timeout: Duration,
    state: Mutex<PoolState>,
    /// Held while connecting to an HTTP/2 endpoint, so concurrent first
    /// requests wait for one connection instead of each opening their own.
    h2_connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct PoolState {
    /// Oldest first; taken from the end.
    idle: Vec<Idle>,
    h2: Option<SharedHttp2>,
    sweeping: bool,
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

struct SharedHttp2 {
    sender: http2::SendRequest<Body>,
    last_used: Instant,
}

impl ConnectionPool {
    pub fn new(idle_timeout: Duration) -> Self {
        Self {
            idle_timeout,
            state: Mutex::default(),
            h2_connecting: tokio::sync::Mutex::const_new(()),
        }
    }

    /// The most recently returned idle HTTP/1.1 connection that can take a
    /// request now. Expired and closed ones are dropped on the way; one
    /// still busy (its request body still uploading after an early
    /// response) stays until it is free or expires.
    pub fn take_http1(&self) -> Option<http1::SendRequest<Body>> {
        let now = Instant::now();
        let mut state = self.state.lock();
        expire(&mut state.idle, now, self.idle_timeout);
        state.idle.retain(|i| !i.sender.is_closed());
        let ready = state.idle.iter().rposition(|i| i.sender.is_ready())?;
        Some(state.idle.remove(ready).sender)
    }

    /// Returns an HTTP/1.1 connection whose response was read to its end.
    pub fn put_http1(self: &Arc<Self>, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut state = self.state.lock();
        expire(&mut state.idle, now, self.idle_timeout);
        state.idle.push(Idle { sender, since: now });
        self.start_sweeper(&mut state);
    }

    /// The endpoint's HTTP/2 connection, if one is open and not expired.
    pub fn http2(&self) -> Option<http2::SendRequest<Body>> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let shared = state.h2.as_mut()?;
        if shared.sender.is_closed() || now.duration_since(shared.last_used) >= self.idle_timeout {
            state.h2 = None;
            return None;
        }
        shared.last_used = now;
        Some(shared.sender.clone())
    }

    /// The endpoint's HTTP/2 connection, opening it with `connect` when
    /// there is none; callers arriving meanwhile wait for the same one.
    pub async fn http2_or_connect<F, Fut, E>(self: &Arc<Self>, connect: F) -> Result<http2::SendRequest<Body>, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<http2::SendRequest<Body>, E>>,
    {
        if let Some(sender) = self.http2() {
            return Ok(sender);
        }
        let _gate = self.h2_connecting.lock().await;
        if let Some(sender) = self.http2() {
            return Ok(sender);
        }
        let sender = connect().await?;
        let mut state = self.state.lock();
        state.h2 = Some(SharedHttp2 {
            sender: sender.clone(),
            last_used: Instant::now(),
        });
        self.start_sweeper(&mut state);
        Ok(sender)
    }

    /// Forgets the shared HTTP/2 connection once it has closed.
    pub fn forget_closed_http2(&self) {
        let mut state = self.state.lock();
        if state.h2.as_ref().is_some_and(|s| s.sender.is_closed()) {
            state.h2 = None;
        }
    }

    fn start_sweeper(self: &Arc<Self>, state: &mut PoolState) {
        if state.sweeping {
            return;
        }
        // Only the request path adds connections, always on the runtime.
        state.sweeping = true;
        tokio::spawn(sweep(Arc::downgrade(self)));
    }
}

/// Drops the idle connections that have waited `idle_timeout` or longer
/// (dropping the last sender makes hyper close the connection).
fn expire(idle: &mut Vec<Idle>, now: Instant, idle_timeout: Duration) {
    let fresh = idle.iter().position(|i| now.duration_since(i.since) < idle_timeout);
    idle.drain(..fresh.unwrap_or(idle.len()));
}

/// Closes expired idle connections (and an expired HTTP/2 connection) while
/// the pool holds any; ends when it holds none or the pool is gone.
async fn sweep(pool: Weak<ConnectionPool>) {
    loop {
        let wake = {
            let Some(pool) = pool.upgrade() else { return };
            let now = Instant::now();
            let timeout = pool.idle_timeout;
            let mut state = pool.state.lock();
            expire(&mut state.idle, now, timeout);
            if state
                .h2
                .as_ref()
                .is_some_and(|h2| now.duration_since(h2.last_used) >= timeout)
            {
                state.h2 = None;
            }
            let oldest = state.idle.first().map(|i| i.since);
            let h2 = state.h2.as_ref().map(|h2| h2.last_used);
            // An idle timeout too large to add never expires: stop watching.
            match oldest.into_iter().chain(h2).min().and_then(|t| t.checked_add(timeout)) {
                Some(wake) => wake,
                None => {
                    state.sweeping = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(wake).await;
    }
}

/// An HTTP/1.1 response body that returns its connection to the pool once
/// read to the end.
pub struct PooledBody {
    body: Incoming,
    release: Option<Release>,
}

struct Release {
    pool: Arc<ConnectionPool>,
    sender: http1::SendRequest<Body>,
}

impl PooledBody {
    /// Wraps `response`'s body; a body that is already complete (no content)
    /// gives the connection back at once.
    pub fn wrap(
        response: Response<Incoming>,
        pool: Arc<ConnectionPool>,
        sender: http1::SendRequest<Body>,
    ) -> Response<PooledBody> {
        let release = Release { pool, sender };
        let mut response = response.map(|body| PooledBody {
            body,
            release: Some(release),
        });
        response.body_mut().release_if_done();
        response
    }

    fn release_if_done(&mut self) {
        if self.body.is_end_stream() {
            self.release();
        }
    }

    fn release(&mut self) {
        if let Some(r) = self.release.take() {
            r.pool.put_http1(r.sender);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            // The end of a chunked body (hyper reports no end ahead of it).
            Poll::Ready(None) => self.release(),
            // The last bytes of a body of known length.
            Poll::Ready(Some(Ok(_))) => self.release_if_done(),
            // A broken body means a broken connection: never reuse it.
            Poll::Ready(Some(Err(_))) => self.release = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    impl ConnectionPool {
        /// Idle HTTP/1.1 connections held.
        fn idle_count(&self) -> usize {
            self.state.lock().idle.len()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_expire_and_the_sweeper_stops() {
        let (sender, _server) = connected_pair().await;
        let pool = Arc::new(ConnectionPool::new(Duration::from_secs(10)));
        pool.put_http1(sender);
        assert_eq!(pool.idle_count(), 1);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(pool.idle_count(), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(pool.idle_count(), 0);
        assert!(!pool.state.lock().sweeping);
        assert!(pool.take_http1().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_newest_open_connection_is_taken_first() {
        let pool = Arc::new(ConnectionPool::new(Duration::from_secs(60)));
        let (old, _s1) = connected_pair().await;
        pool.put_http1(old);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (new, _s2) = connected_pair().await;
        pool.put_http1(new);
        tokio::task::yield_now().await;
        // Take both; the second must be the older one.
        let now = Instant::now();
        let first_since = pool.state.lock().idle.last().map(|i| i.since);
        assert_eq!(first_since, Some(now));
        assert!(pool.take_http1().is_some());
        assert!(pool.take_http1().is_some());
        assert!(pool.take_http1().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_still_busy_is_left_in_place() {
        let pool = Arc::new(ConnectionPool::new(Duration::from_secs(60)));
        let (mut busy, _server) = connected_pair().await;
        // A request the far end never answers keeps the connection busy.
        let pending = busy.send_request(Request::new(crate::core::body::empty()));
        tokio::spawn(pending);
        tokio::task::yield_now().await;
        pool.put_http1(busy);
        assert!(pool.take_http1().is_none());
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_http2_connection_is_shared_while_used_and_closed_once_unused() {
        let pool = Arc::new(ConnectionPool::new(Duration::from_secs(10)));
        let opened = std::cell::Cell::new(0);
        let far_ends = std::cell::RefCell::new(Vec::new());
        let connect = || async {
            opened.set(opened.get() + 1);
            let (client, server) = tokio::io::duplex(1024);
            far_ends.borrow_mut().push(server);
            let (sender, conn) = http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(client),
            )
            .await
            .expect("handshake over a pipe");
            tokio::spawn(conn);
            Ok::<_, hyper::Error>(sender)
        };
        pool.http2_or_connect(connect).await.unwrap();
        // Each use within the idle timeout keeps the one connection.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(9)).await;
            pool.http2_or_connect(connect).await.unwrap();
        }
        assert_eq!(opened.get(), 1);
        // Unused for the idle timeout: the sweeper drops it, the next request connects anew.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(pool.state.lock().h2.is_none());
        pool.http2_or_connect(connect).await.unwrap();
        assert_eq!(opened.get(), 2);
    }

    /// A real HTTP/1.1 client connection over an in-memory duplex pipe (the
    /// far end is held open and never answers).
    async fn connected_pair() -> (http1::SendRequest<Body>, tokio::io::DuplexStream) {
        let (client, server) = tokio::io::duplex(1024);
        let (sender, conn) = http1::handshake(hyper_util::rt::TokioIo::new(client))
            .await
            .expect("handshake over a pipe");
        tokio::spawn(conn);
        (sender, server)
    }
}
