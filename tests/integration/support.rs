//! Test harness: real weft (in-process `App`), real hyper upstreams and
//! clients, all on 127.0.0.1 with ephemeral ports.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use weft::app::App;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// An upstream HTTP/1.1 + HTTP/2 server running `handler`; stops on drop.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                tokio::spawn(conn);
            }
        });
        Self {
            addr,
            connections,
            task,
        }
    }

    /// Answers every request with `text`.
    pub async fn text(text: &'static str) -> Self {
        Self::start(move |_req| async move { Response::new(full(text)) }).await
    }

    /// Answers with the request's method, path and headers as text lines.
    pub async fn echo_headers() -> Self {
        Self::start(|req: Request<Incoming>| async move {
            let mut text = format!("{} {} {:?}\n", req.method(), req.uri().path(), req.version());
            for (k, v) in req.headers() {
                text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            Response::new(full(text))
        })
        .await
    }

    /// Streams the request body back.
    pub async fn echo_body() -> Self {
        Self::start(|req: Request<Incoming>| async move { Response::new(req.into_body().map_err(Into::into).boxed()) })
            .await
    }
}

/// A weft instance started from YAML text written to a temporary directory.
pub struct Weft {
    pub app: Arc<App>,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Weft {
    pub async fn start(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.yaml");
        std::fs::write(&path, yaml).unwrap();
        let loaded = weft::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let app = App::start(loaded).await.unwrap();
        Self { app, dir, path }
    }

    pub async fn addr(&self, listener: &str) -> SocketAddr {
        self.app.listener_addr(listener).await.unwrap()
    }

    pub async fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{path}", self.addr(listener).await)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.app.admin_addr())
    }

    /// Rewrites the config file (the test then reloads or waits for the watcher).
    pub fn write(&self, yaml: &str) {
        std::fs::write(&self.path, yaml).unwrap();
    }
}

/// Starts weft from `yaml` written as `weft.yaml` into `dir`, next to the
/// files (certificates) it names.
pub async fn start_in(dir: &std::path::Path, yaml: &str) -> Arc<App> {
    let path = dir.join("weft.yaml");
    std::fs::write(&path, yaml).unwrap();
    App::start(weft::config::load(&path).unwrap_or_else(|e| panic!("{e}")))
        .await
        .unwrap()
}

/// Base config: admin and listeners on ephemeral ports, no access log.
pub fn config(listeners: &str, clusters: &str) -> String {
    format!("admin: {{ address: 127.0.0.1:0 }}\naccess_log: {{ enabled: false }}\nlisteners:\n{listeners}\nclusters:\n{clusters}\n")
}

pub fn h1_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

pub async fn get(client: &Client<HttpConnector, TestBody>, url: &str) -> (u16, String) {
    let req = Request::get(url).body(full("")).unwrap();
    send(client, req).await
}

pub async fn send(client: &Client<HttpConnector, TestBody>, req: Request<TestBody>) -> (u16, String) {
    let response = client.request(req).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends raw bytes on a new connection and returns everything read until the
/// server closes or `limit` bytes arrive.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn metrics(weft: &Weft) -> String {
    get(&h1_client(), &weft.admin("/metrics")).await.1
}
