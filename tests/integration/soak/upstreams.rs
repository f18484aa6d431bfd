//! The soak's upstreams, real servers on 127.0.0.1: hyper's HTTP/1.1 +
//! HTTP/2 server answering in one [`Manner`], and a TCP echo. Each runs as
//! one task that owns its connections' tasks, so [`Server::kill`] closes the
//! listening socket and every connection at once, as a crashed process
//! would, and [`Server::restart`] serves again on the same address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Duration;

use crate::support::{full, BoxError, TestBody};

/// How an HTTP upstream answers. Every manner streams a POST body back.
#[derive(Clone, Copy)]
pub enum Manner {
    /// At once, with its name as the body.
    Steady(&'static str),
    /// After a random delay up to the given one, with its name.
    Slow(&'static str, Duration),
    /// A third of the requests: the connection closes before any answer;
    /// the rest: 200 with `Content-Length: RESET_DECLARED`, then
    /// `RESET_SENT` bytes and a reset (HTTP/1.1: the connection closes;
    /// HTTP/2: RST_STREAM).
    ResetMidBody,
}

pub const RESET_DECLARED: usize = 256 * 1024;
pub const RESET_SENT: usize = 16 * 1024;

async fn answer(manner: Manner, req: Request<Incoming>) -> Result<Response<TestBody>, BoxError> {
    if req.method() == http::Method::POST {
        return Ok(Response::new(req.into_body().map_err(Into::into).boxed()));
    }
    match manner {
        Manner::Steady(name) => Ok(Response::new(full(name))),
        Manner::Slow(name, longest) => {
            tokio::time::sleep(longest.mul_f64(rand::random::<f64>())).await;
            Ok(Response::new(full(name)))
        }
        Manner::ResetMidBody => {
            if rand::random_ratio(1, 3) {
                return Err("closed before answering".into());
            }
            // The pause lets hyper write the data out before the error
            // aborts the connection or stream (it flushes when the body
            // is pending); without it the bytes die in its buffer.
            let frames = futures_util::stream::unfold(0, |step| async move {
                match step {
                    0 => Some((Ok(Frame::data(Bytes::from(vec![b'r'; RESET_SENT]))), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Some((Err(BoxError::from("reset mid-body")), 2))
                    }
                    _ => None,
                }
            });
            let body = StreamBody::new(frames);
            let mut response = Response::new(body.boxed());
            response
                .headers_mut()
                .insert(http::header::CONTENT_LENGTH, RESET_DECLARED.into());
            Ok(response)
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Http(Manner),
    TcpEcho,
}

/// One upstream server; stops on drop.
pub struct Server {
    pub addr: SocketAddr,
    kind: Kind,
    /// Connections open now (accepted and not yet closed by either side).
    pub open: Arc<AtomicUsize>,
    running: Option<AbortHandle>,
}

impl Server {
    pub async fn http(manner: Manner) -> Self {
        Self::start(Kind::Http(manner)).await
    }

    pub async fn tcp_echo() -> Self {
        Self::start(Kind::TcpEcho).await
    }

    async fn start(kind: Kind) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut server = Self {
            addr: listener.local_addr().unwrap(),
            kind,
            open: Arc::new(AtomicUsize::new(0)),
            running: None,
        };
        server.serve(listener);
        server
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Closes the listening socket and every connection.
    pub fn kill(&mut self) {
        if let Some(task) = self.running.take() {
            task.abort();
        }
    }

    /// Serves again on the same address (the listener sets SO_REUSEADDR,
    /// so connections of the killed one in TIME_WAIT do not block it).
    pub async fn restart(&mut self) {
        self.kill();
        let listener = TcpListener::bind(self.addr)
            .await
            .unwrap_or_else(|e| panic!("rebinding {}: {e}", self.addr));
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        let (kind, open) = (self.kind, self.open.clone());
        let task = tokio::spawn(async move {
            // Dropped with this task when it is aborted: that aborts every
            // connection's task and closes its socket.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    Some(_) = connections.join_next() => {}
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let guard = OpenGuard::new(&open);
                        connections.spawn(async move {
                            let _guard = guard;
                            serve_connection(kind, stream).await;
                        });
                    }
                }
            }
        });
        self.running = Some(task.abort_handle());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn serve_connection(kind: Kind, stream: TcpStream) {
    match kind {
        Kind::Http(manner) => {
            let service = service_fn(move |req| answer(manner, req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
        Kind::TcpEcho => {
            let (mut reader, mut writer) = stream.into_split();
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
        }
    }
}

/// Counts a connection open from accept until its task ends or is aborted.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        Self(open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Every upstream of the soak, one per cluster.
pub struct Upstreams {
    pub steady: Server,
    pub steady_h2: Server,
    pub slow: Server,
    pub reset: Server,
    pub reset_h2: Server,
    /// Killed and restarted while traffic flows.
    pub flaky: Server,
    pub echo: Server,
}

/// The slow upstream's longest delay, above its route's timeout so some
/// requests end in 504.
pub const SLOWEST: Duration = Duration::from_millis(1500);

impl Upstreams {
    pub async fn start() -> Self {
        Self {
            steady: Server::http(Manner::Steady("steady")).await,
            steady_h2: Server::http(Manner::Steady("steady-h2")).await,
            slow: Server::http(Manner::Slow("slow", SLOWEST)).await,
            reset: Server::http(Manner::ResetMidBody).await,
            reset_h2: Server::http(Manner::ResetMidBody).await,
            flaky: Server::http(Manner::Steady("flaky")).await,
            echo: Server::tcp_echo().await,
        }
    }

    /// Connections open to any of them (weft's pools and TCP proxying).
    pub fn open(&self) -> usize {
        [
            &self.steady,
            &self.steady_h2,
            &self.slow,
            &self.reset,
            &self.reset_h2,
            &self.flaky,
            &self.echo,
        ]
        .iter()
        .map(|s| s.open.load(Ordering::SeqCst))
        .sum()
    }
}
