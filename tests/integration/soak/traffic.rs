//! The soak's clients and what became of each request. HTTP/1.1 and HTTP/2
//! (h2c, prior knowledge) over pooled keep-alive connections and over a new
//! connection per request; TCP round trips on long-lived and on one-shot
//! connections; and clients that give up halfway on purpose. Every request
//! has a deadline of its route's timeout plus [`MARGIN`]: past it the
//! request counts as a hang.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{timeout, Duration};

use super::child::{ROUTE_TIMEOUT_S, SLOW_ROUTE_TIMEOUT_S};
use super::upstreams::RESET_SENT;
use crate::support::{full, h1_client, h2_client, TestBody};

/// Added to a route's timeout for the client's deadline: weft answers 504
/// at the route timeout, so a request still open after this much more hangs.
pub const MARGIN: Duration = Duration::from_secs(5);
/// A TCP round trip has no route timeout; past this it hangs.
const TCP_DEADLINE: Duration = Duration::from_secs(10);

/// What became of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// The expected answer, byte for byte.
    Ok,
    /// An error status weft answers itself (its body names the cause).
    WeftError(u16, &'static str),
    /// 200 and then the body broke: what a reset mid-body upstream must give.
    CutMidBody,
    /// The client gave up on purpose.
    Abandoned,
    // Failures:
    /// A route whose upstream resets: no status at all (HTTP/1.1: the
    /// connection closed; HTTP/2: RST_STREAM) where README promises 502
    /// (or the head and a cut body). Counted in a column of its own.
    NoStatusOnReset,
    /// No answer within the route timeout plus the margin.
    Hang,
    /// The connection failed or closed before an answer.
    NoAnswer,
    /// A status weft does not explain with one of its error bodies.
    UnexpectedStatus(u16),
    /// 200 with other bytes than the upstream sent.
    WrongBody,
    /// The body broke on a route whose upstream never breaks it.
    BrokenBody,
}

impl Outcome {
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Self::Hang
                | Self::NoAnswer
                | Self::NoStatusOnReset
                | Self::UnexpectedStatus(_)
                | Self::WrongBody
                | Self::BrokenBody
        )
    }
}

/// The start of each error body weft answers itself (README, "Errors weft answers itself").
const WEFT_ERRORS: [&str; 8] = [
    "no route matched",
    "no healthy upstream",
    "upstream connect error",
    "upstream reset or sent an invalid response",
    "upstream request timeout",
    "upstream concurrency limit reached",
    "upstream circuit breaker open",
    "bad request",
];

/// Requests by traffic kind, route and outcome, retries by traffic kind,
/// and the first failures' details.
#[derive(Default)]
pub struct Tally {
    pub counts: Mutex<BTreeMap<(&'static str, &'static str, Outcome), u64>>,
    pub retries: Mutex<BTreeMap<&'static str, u64>>,
    pub failures: Mutex<Vec<String>>,
}

const FAILURES_KEPT: usize = 20;

impl Tally {
    fn add(&self, kind: &'static str, route: &'static str, outcome: Outcome, detail: impl FnOnce() -> String) {
        *self.counts.lock().entry((kind, route, outcome)).or_default() += 1;
        if outcome.is_failure() {
            let mut failures = self.failures.lock();
            if failures.len() < FAILURES_KEPT {
                failures.push(format!("{} {kind} {route}: {outcome:?}: {}", utc_now(), detail()));
            }
        }
    }

    pub fn total(&self, matching: impl Fn(Outcome) -> bool) -> u64 {
        self.counts
            .lock()
            .iter()
            .filter(|((_, _, o), _)| matching(*o))
            .map(|(_, n)| n)
            .sum()
    }
}

/// A route of the front listener and what its upstream answers.
#[derive(Clone, Copy)]
struct Route {
    path: &'static str,
    /// The body of a successful answer; `None`: the request's own body (an
    /// echo) or, for `/gen`, any `gen-N`.
    body: Option<&'static str>,
    timeout_s: u64,
    post: bool,
}

const ROUTES: [Route; 8] = [
    Route::get("/steady", Some("steady")),
    Route::get("/h2", Some("steady-h2")),
    Route::get("/flaky", Some("flaky")),
    Route::get("/reset-h1", None),
    Route::get("/reset-h2", None),
    Route::get("/gen", None),
    Route {
        path: "/slow",
        body: Some("slow"),
        timeout_s: SLOW_ROUTE_TIMEOUT_S,
        post: false,
    },
    Route {
        path: "/upload",
        body: None,
        timeout_s: ROUTE_TIMEOUT_S,
        post: true,
    },
];

impl Route {
    const fn get(path: &'static str, body: Option<&'static str>) -> Self {
        Self {
            path,
            body,
            timeout_s: ROUTE_TIMEOUT_S,
            post: false,
        }
    }

    fn resets(self) -> bool {
        self.path.starts_with("/reset")
    }

    fn deadline(self) -> Duration {
        Duration::from_secs(self.timeout_s) + MARGIN
    }

    /// The request, and the body an echo must return.
    fn request(self, base: &str, host_header: bool) -> (Request<TestBody>, Bytes) {
        let sent = if self.post {
            Bytes::from(random_bytes(64 * 1024))
        } else {
            Bytes::new()
        };
        let method = if self.post {
            http::Method::POST
        } else {
            http::Method::GET
        };
        let mut builder = Request::builder().method(method).uri(format!("{base}{}", self.path));
        if host_header {
            builder = builder.header(http::header::HOST, "soak");
        }
        (builder.body(full(sent.clone())).unwrap(), sent)
    }

    fn judge(self, status: u16, body: Result<Bytes, String>, sent: &Bytes) -> (Outcome, String) {
        let body = match body {
            Ok(body) => body,
            Err(e) if status == 200 && self.resets() => return (Outcome::CutMidBody, e),
            Err(e) => return (Outcome::BrokenBody, format!("status {status}: {e}")),
        };
        let text = String::from_utf8_lossy(&body);
        if status == 200 {
            let expected = match self.body {
                Some(expected) => body == expected.as_bytes(),
                None if self.post => body == *sent,
                None => self.path == "/gen" && text.starts_with("gen-"),
            };
            let outcome = if expected { Outcome::Ok } else { Outcome::WrongBody };
            // A reset upstream never sends a whole body: one read whole is a failure.
            let outcome = if self.resets() && body.len() >= RESET_SENT {
                Outcome::WrongBody
            } else {
                outcome
            };
            return (outcome, format!("{} bytes", body.len()));
        }
        match WEFT_ERRORS.iter().find(|cause| text.starts_with(**cause)) {
            Some(cause) => (Outcome::WeftError(status, cause), String::new()),
            None => (Outcome::UnexpectedStatus(status), text.chars().take(200).collect()),
        }
    }
}

/// The time of day (UTC) as weft's log lines show it, to line failures up with them.
fn utc_now() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, millis) = (since_epoch.as_secs(), since_epoch.subsec_millis());
    format!(
        "{:02}:{:02}:{:02}.{millis:03}Z",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

fn random_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|_| rand::random::<u8>()).collect()
}

fn pick<T: Copy>(items: &[T]) -> T {
    items[rand::random_range(0..items.len())]
}

/// Reads the whole answer to `response`, as `Route::judge` takes it.
async fn read(response: Result<Response<Incoming>, String>) -> Result<(u16, Result<Bytes, String>), String> {
    let response = response?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| format!("{e:?}"));
    Ok((status, body))
}

/// One request on a new connection (HTTP/1.1, or HTTP/2 by prior knowledge),
/// closed after the answer.
async fn one_shot(addr: SocketAddr, http2: bool, req: Request<TestBody>) -> Result<Response<Incoming>, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let io = TokioIo::new(stream);
    if http2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("{e:?}"))?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| format!("{e:?}"))
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("{e:?}"))?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| format!("{e:?}"))
    }
}

/// How an HTTP worker reaches weft.
#[derive(Clone)]
enum Connection {
    Pooled(Box<Client<HttpConnector, TestBody>>),
    New { http2: bool },
}

/// Whether an error says a keep-alive connection closed under the request
/// before any answer: closed (HTTP/1.1), the stream refused by GOAWAY, or a
/// broken pipe or reset while the request was still being written (HTTP/2:
/// weft closed the connection after its GOAWAY, and the client's unread
/// GOAWAY went with the reset its late bytes caused). What a client sees
/// when it sends just as weft closes the connection (a listener's hand-over
/// on reload). RFC 9110 section 9.2.2 lets a client retry such a request,
/// and browsers do, once, when a reused connection fails before any byte of
/// the answer.
fn closed_under_request(detail: &str) -> bool {
    refused_by_goaway(detail)
        || ["IncompleteMessage", "BrokenPipe", "ConnectionReset"]
            .iter()
            .any(|sign| detail.contains(sign))
}

/// Whether an HTTP/2 stream was refused by a graceful GOAWAY: not processed,
/// safe to retry on any connection (RFC 9113 section 6.8), and HTTP/2
/// clients do. Seen on a new connection too when a listener hands over just
/// as it was accepted.
fn refused_by_goaway(detail: &str) -> bool {
    detail.contains("GoAway(b\"\", NO_ERROR")
}

/// One request, retried once like a real client when a keep-alive
/// connection closed under it or an HTTP/2 stream was refused.
async fn http_request(kind: &'static str, front: SocketAddr, connection: &Connection, route: Route, tally: &Tally) {
    let (mut outcome, mut detail) = http_exchange(front, connection, route).await;
    let retry = match connection {
        Connection::Pooled(_) => closed_under_request(&detail),
        Connection::New { .. } => refused_by_goaway(&detail),
    };
    if outcome == Outcome::NoAnswer && retry {
        *tally.retries.lock().entry(kind).or_default() += 1;
        (outcome, detail) = http_exchange(front, connection, route).await;
    }
    if outcome == Outcome::NoAnswer && route.resets() {
        outcome = Outcome::NoStatusOnReset;
    }
    tally.add(kind, route.path, outcome, || detail);
}

async fn http_exchange(front: SocketAddr, connection: &Connection, route: Route) -> (Outcome, String) {
    let answered = async {
        let (status, body, sent) = match connection {
            Connection::Pooled(client) => {
                let (req, sent) = route.request(&format!("http://{front}"), false);
                let response = client.request(req).await.map_err(|e| format!("{e:?}"));
                let (status, body) = read(response).await?;
                (status, body, sent)
            }
            Connection::New { http2 } => {
                // HTTP/2 takes the authority from the URI, HTTP/1.1 from Host.
                let (req, sent) = if *http2 {
                    route.request(&format!("http://{front}"), false)
                } else {
                    route.request("", true)
                };
                let (status, body) = read(one_shot(front, *http2, req).await).await?;
                (status, body, sent)
            }
        };
        Ok::<_, String>(route.judge(status, body, &sent))
    };
    match timeout(route.deadline(), answered).await {
        Err(_) => (Outcome::Hang, format!("no answer within {:?}", route.deadline())),
        Ok(Err(e)) => (Outcome::NoAnswer, e),
        Ok(Ok(judged)) => judged,
    }
}

/// One TCP round trip of random bytes through the echo listener.
async fn tcp_round_trip(stream: &mut TcpStream) -> (Outcome, String) {
    let sent = random_bytes(rand::random_range(1..16 * 1024));
    let trip = async {
        stream.write_all(&sent).await?;
        let mut back = vec![0; sent.len()];
        stream.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back)
    };
    match timeout(TCP_DEADLINE, trip).await {
        Err(_) => (Outcome::Hang, format!("no echo within {TCP_DEADLINE:?}")),
        Ok(Err(e)) => (Outcome::NoAnswer, e.to_string()),
        Ok(Ok(back)) if back == sent => (Outcome::Ok, String::new()),
        Ok(Ok(_)) => (Outcome::WrongBody, "echo differs".into()),
    }
}

/// Keeps one connection for this many round trips, then opens another.
const TCP_TRIPS_PER_CONNECTION: usize = 50;

async fn tcp_worker(tcp: SocketAddr, keep_alive: bool, tally: Arc<Tally>, running: Arc<AtomicBool>) {
    let kind = if keep_alive { "tcp keep-alive" } else { "tcp new conn" };
    let trips = if keep_alive { TCP_TRIPS_PER_CONNECTION } else { 1 };
    while running.load(Ordering::SeqCst) {
        let mut stream = match timeout(TCP_DEADLINE, TcpStream::connect(tcp)).await {
            Ok(Ok(stream)) => stream,
            failed => {
                tally.add(kind, "echo", Outcome::NoAnswer, || format!("connect: {failed:?}"));
                continue;
            }
        };
        for _ in 0..trips {
            let (outcome, detail) = tcp_round_trip(&mut stream).await;
            tally.add(kind, "echo", outcome, || detail);
            if outcome != Outcome::Ok || !running.load(Ordering::SeqCst) {
                break;
            }
        }
    }
}

async fn http_worker(
    kind: &'static str,
    front: SocketAddr,
    connection: Connection,
    tally: Arc<Tally>,
    running: Arc<AtomicBool>,
) {
    while running.load(Ordering::SeqCst) {
        http_request(kind, front, &connection, pick(&ROUTES), &tally).await;
    }
}

/// Ways a client gives up halfway; weft must free whatever each held.
#[derive(Clone, Copy)]
enum GiveUp {
    /// HTTP/1.1: a POST declaring 100,000 bytes, 1,000 sent, then gone.
    UploadCut,
    /// HTTP/1.1: a request to the slow route, gone before the answer.
    WaitCut,
    /// HTTP/2: a stream to the slow route cancelled (RST_STREAM).
    StreamCancelled,
    /// TCP: bytes sent, gone without reading the echo.
    TcpCut,
}

async fn give_up(front: SocketAddr, tcp: SocketAddr, h2: &Client<HttpConnector, TestBody>, how: GiveUp) {
    let raw = async |addr: SocketAddr, bytes: &[u8]| {
        if let Ok(mut stream) = TcpStream::connect(addr).await {
            let _ = stream.write_all(bytes).await;
            // Long enough for weft to have read it and asked the upstream.
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..50))).await;
        }
    };
    match how {
        GiveUp::UploadCut => {
            let mut request = b"POST /upload HTTP/1.1\r\nHost: soak\r\nContent-Length: 100000\r\n\r\n".to_vec();
            request.extend(random_bytes(1000));
            raw(front, &request).await;
        }
        GiveUp::WaitCut => raw(front, b"GET /slow HTTP/1.1\r\nHost: soak\r\n\r\n").await,
        GiveUp::TcpCut => raw(tcp, &random_bytes(4096)).await,
        GiveUp::StreamCancelled => {
            let req = Request::get(format!("http://{front}/slow")).body(full("")).unwrap();
            let wait = Duration::from_millis(rand::random_range(1..100));
            let _ = timeout(wait, h2.request(req)).await;
        }
    }
}

async fn give_up_worker(front: SocketAddr, tcp: SocketAddr, tally: Arc<Tally>, running: Arc<AtomicBool>) {
    let h2 = h2_client();
    let ways = [
        (GiveUp::UploadCut, "upload cut"),
        (GiveUp::WaitCut, "wait cut"),
        (GiveUp::StreamCancelled, "h2 stream cancelled"),
        (GiveUp::TcpCut, "tcp cut"),
    ];
    while running.load(Ordering::SeqCst) {
        let (how, name) = pick(&ways);
        give_up(front, tcp, &h2, how).await;
        tally.add("gives up", name, Outcome::Abandoned, String::new);
    }
}

/// Starts every client; they run until `running` turns false.
pub fn start(front: SocketAddr, tcp: SocketAddr, tally: &Arc<Tally>, running: &Arc<AtomicBool>) -> JoinSet<()> {
    let mut workers = JoinSet::new();
    let h1 = h1_client();
    let h2 = h2_client();
    let http: [(&'static str, Connection); 7] = [
        ("http1 keep-alive", Connection::Pooled(Box::new(h1.clone()))),
        ("http1 keep-alive", Connection::Pooled(Box::new(h1))),
        ("http1 new conn", Connection::New { http2: false }),
        // Three workers on one pooled HTTP/2 connection: concurrent streams.
        ("h2c keep-alive", Connection::Pooled(Box::new(h2.clone()))),
        ("h2c keep-alive", Connection::Pooled(Box::new(h2.clone()))),
        ("h2c keep-alive", Connection::Pooled(Box::new(h2))),
        ("h2c new conn", Connection::New { http2: true }),
    ];
    for (kind, connection) in http {
        workers.spawn(http_worker(kind, front, connection, tally.clone(), running.clone()));
    }
    for keep_alive in [true, false] {
        workers.spawn(tcp_worker(tcp, keep_alive, tally.clone(), running.clone()));
    }
    workers.spawn(give_up_worker(front, tcp, tally.clone(), running.clone()));
    workers
}
