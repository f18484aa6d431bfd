//! Test harness: real weft (in-process `App`), real hyper upstreams and
//! clients, all on 127.0.0.1 with ports the kernel picks (weft binds port 0
//! and the tests read the bound address back; nothing reserves a port by
//! binding and dropping it). The one bounded poll (`eventually`), the one TLS
//! client set-up and the signals tests wait on instead of sleeping live here.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use weft::app::App;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;

/// An upstream's `101 Switching Protocols` to a WebSocket handshake.
pub fn switching_to_websocket() -> http::Response<TestBody> {
    http::Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(full(""))
        .unwrap()
}

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// An upstream HTTP/1.1 + HTTP/2 server running `handler`; stops on drop.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Connections open now (accepted and not yet closed by either side).
    pub open: Arc<AtomicUsize>,
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
        Self::serve(TcpListener::bind("127.0.0.1:0").await.unwrap(), handler)
    }

    /// [`Upstream::start`] on a listener the test bound itself.
    pub fn serve<F, Fut>(listener: TcpListener, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (accepted, open_now) = (connections.clone(), open.clone());
        let task = tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                open_now.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let open_now = open_now.clone();
                tokio::spawn(async move {
                    let _ = conn.await;
                    open_now.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            connections,
            open,
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

    /// Replaces the config file by an atomic rename, as editors and kubectl do.
    pub fn replace(&self, bytes: impl AsRef<[u8]>) {
        let next = self.path.with_extension("yaml.next");
        std::fs::write(&next, bytes).unwrap();
        std::fs::rename(&next, &self.path).unwrap();
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

/// weft with one listener, `public`, sending every request to cluster `app`:
/// `upstream` spoken to in `protocol` (`http1`, `http2`).
pub async fn weft_in_front_of(upstream: SocketAddr, protocol: &str) -> Weft {
    let yaml = config(
        "  - { name: public, address: 127.0.0.1:0, routes: [ { name: all, cluster: app } ] }",
        &format!("  - {{ name: app, protocol: {protocol}, endpoints: [ {{ address: {upstream} }} ] }}"),
    );
    Weft::start(&yaml).await
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

/// The bound of every wait in these tests: long enough for a loaded
/// two-core machine, reached only when the awaited thing never happens.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// What a check given to [`eventually`] returns: `bool`, or `Result` whose
/// error describes what the check saw instead (it goes in the failure).
pub trait Outcome {
    type Value;
    fn into_result(self) -> Result<Self::Value, String>;
}

impl Outcome for bool {
    type Value = ();
    fn into_result(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err(String::new())
        }
    }
}

impl<T> Outcome for Result<T, String> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self
    }
}

/// Polls `check` every 20 ms until it holds and returns its value; fails the
/// test, naming `what` and what the last check saw, after [`PATIENCE`].
pub async fn eventually<O: Outcome>(what: &str, mut check: impl AsyncFnMut() -> O) -> O::Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match check().await.into_result() {
            Ok(value) => return value,
            Err(seen) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not so after {PATIENCE:?}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The value of the sample whose line starts with `series` (name and
/// labels); fails the test when weft does not export that series.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// A loopback address where connections are refused: a socket bound but not
/// listening, held while this lives so no other test can be given its port.
pub struct RefusedAddr {
    pub addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

pub fn refused_addr() -> RefusedAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    RefusedAddr {
        addr: socket.local_addr().unwrap(),
        _socket: socket,
    }
}

/// An upstream answering `body` that tells the test when each request has
/// arrived and holds every answer until [`HeldUpstream::release`]: for tests
/// that act while a request is surely in flight.
pub struct HeldUpstream {
    pub upstream: Upstream,
    arrivals: mpsc::UnboundedReceiver<()>,
    gate: Arc<Semaphore>,
}

impl HeldUpstream {
    pub async fn start(body: &'static str) -> Self {
        let (arrived, arrivals) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(0));
        let held = gate.clone();
        let upstream = Upstream::start(move |_req| {
            let (arrived, held) = (arrived.clone(), held.clone());
            async move {
                let _ = arrived.send(());
                // Closed by `release`: every waiter goes on.
                let _ = held.acquire().await;
                Response::new(full(body))
            }
        })
        .await;
        Self {
            upstream,
            arrivals,
            gate,
        }
    }

    /// Waits (bounded) until the next request has reached the upstream.
    pub async fn arrived(&mut self) {
        tokio::time::timeout(PATIENCE, self.arrivals.recv())
            .await
            .expect("no request reached the upstream")
            .expect("upstream gone");
    }

    /// Lets every held request, and all later ones, be answered.
    pub fn release(&self) {
        self.gate.close();
    }
}

/// A rustls client config trusting the CA certificates in the PEM file `ca`,
/// presenting `identity` (certificate and key files) when given, offering
/// `alpn`.
pub fn tls_client_config(ca: &Path, identity: Option<(&Path, &Path)>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(weft::tls::crypto())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, TestBody>;

/// A hyper client over TLS with `config`, speaking HTTP/1.1 or (with
/// `http2`) HTTP/2 only; the connector sets the ALPN list itself.
pub fn https_client(mut config: rustls::ClientConfig, http2: bool) -> HttpsClient {
    config.alpn_protocols.clear();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if http2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    Client::builder(TokioExecutor::new()).http2_only(http2).build(connector)
}

/// Runs `test` on a thread of its own inside a new network namespace where
/// only loopback is up, so it can use fixed ports that no other test can
/// hold (for what weft only reads from its config, such as the port that
/// `alt-svc` advertises). Needs CAP_SYS_ADMIN, as the tests have.
pub fn in_network_namespace<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's network namespace;
        // threads it starts (the runtime's) inherit it.
        let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(unshared, 0, "unshare: {}", std::io::Error::last_os_error());
        loopback_up();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(test());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// `ip link set lo up` in the calling thread's network namespace.
fn loopback_up() {
    // SAFETY: a plain socket and two interface-flag ioctls on a zeroed,
    // NUL-terminated `ifreq`.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut request: libc::ifreq = std::mem::zeroed();
        for (to, from) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *to = *from as libc::c_char;
        }
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request), 0);
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &request),
            0,
            "lo up: {}",
            std::io::Error::last_os_error()
        );
        libc::close(fd);
    }
}
