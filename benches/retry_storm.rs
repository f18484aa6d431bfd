//! The retry-storm benchmark: `cargo bench --bench retry_storm`.
//!
//! On loopback, in one process: a client fleet sends requests at a fixed
//! rate (open loop: a slow answer never slows the senders) to weft, which
//! routes them to service A; A calls its dependency B through weft. B has a
//! fixed number of workers and queues the rest, like a thread-pool server;
//! its work is not cancelled when a caller gives up. For a period B's
//! service time jumps 10x, which drops its capacity below the offered load.
//!
//! The scenario runs three times with identical routes, retry policies and
//! timeouts: "off" (plain retries with an unlimited budget, no concurrency
//! limit), "retry budget only" (default budgets, no concurrency limit) and
//! "on" (adaptive concurrency on both clusters, default retry budgets). A is mesh-aware in one way only: when weft refused its call to
//! B for overload, A passes `x-weft-overloaded` on, so the front weft does
//! not retry it. It does not propagate `x-weft-retry-attempt`.
//!
//! Reported per run: goodput (successful requests per second, over the run
//! and during the slowdown), p50/p99 latency of successful requests, the
//! share of requests rejected fast (503 with `x-weft-overloaded`), the share
//! that failed otherwise (errors, timeouts), the retries weft sent (to A
//! and B together) per client request, and the recovery time: from B healing until every later 250 ms bucket of
//! sent requests has at least 95% successes. The Markdown table is printed
//! and written to `target/retry_storm.md`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Duration, Instant};
use weft::app::App;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Requests per second the client fleet offers.
const RATE: u64 = 400;
const WARM_UP: Duration = Duration::from_secs(3);
const SLOWDOWN: Duration = Duration::from_secs(6);
const HEALED: Duration = Duration::from_secs(6);
/// B's capacity is WORKERS / service time: 3200 rps normally, 320 rps slowed.
const B_WORKERS: usize = 16;
const B_SERVICE_TIME: Duration = Duration::from_millis(5);
const SLOWDOWN_FACTOR: u32 = 10;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
const BUCKET: Duration = Duration::from_millis(250);
const RECOVERED_SUCCESS_RATIO: f64 = 0.95;

#[derive(Clone, Copy, PartialEq)]
enum Outcome {
    Served,
    Rejected,
    Failed,
}

struct Sample {
    sent_at: Duration,
    latency: Duration,
    outcome: Outcome,
}

/// Serves `handler` on `listener` until the process ends.
fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            tokio::spawn(builder.serve_connection(TokioIo::new(stream), service).into_owned());
        }
    });
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

struct ServiceB {
    slow: AtomicBool,
    workers: Semaphore,
}

async fn start_b(b: Arc<ServiceB>) -> Result<SocketAddr, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    serve(listener, move |_req| {
        let b = b.clone();
        async move {
            // Work runs to its end even if the caller gives up, as in most servers.
            let work = tokio::spawn(async move {
                let Ok(_worker) = b.workers.acquire().await else {
                    return;
                };
                let factor = if b.slow.load(Ordering::Relaxed) {
                    SLOWDOWN_FACTOR
                } else {
                    1
                };
                tokio::time::sleep(B_SERVICE_TIME * factor).await;
            });
            match work.await {
                Ok(()) => status(StatusCode::OK),
                Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR),
            }
        }
    });
    Ok(addr)
}

/// Service A: answers once its call to B (through weft) answers. B's URL is
/// weft's egress listener, known only once weft runs, hence the `OnceLock`.
async fn start_a(b_url: Arc<OnceLock<String>>) -> Result<SocketAddr, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    serve(listener, move |_req| {
        let (client, b_url) = (client.clone(), b_url.clone());
        async move {
            let Some(Ok(req)) = b_url.get().map(|url| Request::get(url.as_str()).body(Empty::new())) else {
                return status(StatusCode::INTERNAL_SERVER_ERROR);
            };
            let Ok(answer) = client.request(req).await else {
                return status(StatusCode::BAD_GATEWAY);
            };
            let code = answer.status();
            let overloaded = answer.headers().get("x-weft-overloaded").cloned();
            let _ = answer.into_body().collect().await;
            let mut response = status(code);
            if let Some(value) = overloaded {
                response.headers_mut().insert("x-weft-overloaded", value);
            }
            response
        }
    });
    Ok(addr)
}

/// The runs: name and the keys added to both clusters.
const MODES: [(&str, &str); 3] = [
    (
        "off: plain retries",
        "    retry_budget: { percent: 100000, min_retries_per_second: 100000, window: 10s }\n",
    ),
    ("retry budget only", ""),
    (
        "on: adaptive concurrency + budget",
        "    adaptive_concurrency: { concurrency_update_interval: 100ms, min_rtt_calc_request_count: 20, min_rtt_calc_interval: 10s }\n",
    ),
];

fn weft_config(a: SocketAddr, b: SocketAddr, protection: &str) -> String {
    format!(
        "admin: {{ address: 127.0.0.1:0 }}
access_log: {{ enabled: false }}
listeners:
  - name: front
    address: 127.0.0.1:0
    routes:
      - {{ name: to-a, match: {{ path_prefix: / }}, cluster: a, timeout: 3s,
           retry: {{ max_retries: 2, retry_on: [5xx], per_try_timeout: 1s }} }}
  - name: egress
    address: 127.0.0.1:0
    routes:
      - {{ name: to-b, match: {{ path_prefix: / }}, cluster: b, timeout: 1s,
           retry: {{ max_retries: 2, retry_on: [5xx], per_try_timeout: 300ms }} }}
clusters:
  - name: a
    endpoints: [ {{ address: {a} }} ]
{protection}  - name: b
    endpoints: [ {{ address: {b} }} ]
{protection}"
    )
}

struct RunResult {
    samples: Vec<Sample>,
    /// Retries weft sent to A and to B together.
    weft_retries: u64,
}

async fn run(protection: &str) -> Result<RunResult, BoxError> {
    let b = Arc::new(ServiceB {
        slow: AtomicBool::new(false),
        workers: Semaphore::new(B_WORKERS),
    });
    let b_addr = start_b(b.clone()).await?;
    let b_url = Arc::new(OnceLock::new());
    let a_addr = start_a(b_url.clone()).await?;

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("weft.yaml");
    std::fs::write(&path, weft_config(a_addr, b_addr, protection))?;
    let loaded = weft::config::load(&path).map_err(|e| e.to_string())?;
    let app = App::start(loaded).await?;
    let egress = app.listener_addr("egress").await.ok_or("no egress listener")?;
    let front = app.listener_addr("front").await.ok_or("no front listener")?;
    let _ = b_url.set(format!("http://{egress}/b"));

    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let url = format!("http://{front}/");
    let start = Instant::now();
    let total = WARM_UP + SLOWDOWN + HEALED;
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / RATE as u32);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = Vec::new();
    let sends = RATE * total.as_secs();
    for _ in 0..sends {
        ticker.tick().await;
        let sent_at = start.elapsed();
        b.slow
            .store((WARM_UP..WARM_UP + SLOWDOWN).contains(&sent_at), Ordering::Relaxed);
        let (client, url) = (client.clone(), url.clone());
        requests.push(tokio::spawn(async move {
            let sent = Instant::now();
            let outcome = match Request::get(url.as_str()).body(Empty::new()) {
                Err(_) => Outcome::Failed,
                Ok(req) => match tokio::time::timeout(CLIENT_TIMEOUT, client.request(req)).await {
                    Ok(Ok(r)) if r.status() == StatusCode::OK => Outcome::Served,
                    Ok(Ok(r)) if r.headers().contains_key("x-weft-overloaded") => Outcome::Rejected,
                    _ => Outcome::Failed,
                },
            };
            Sample {
                sent_at,
                latency: sent.elapsed(),
                outcome,
            }
        }));
    }
    let mut samples = Vec::with_capacity(requests.len());
    for request in requests {
        samples.extend(request.await.ok());
    }
    let retries = &app.shared.metrics.overload.retries;
    let weft_retries = retries.with_label_values(&["a"]).get() + retries.with_label_values(&["b"]).get();
    Ok(RunResult { samples, weft_retries })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn share(samples: &[Sample], outcome: Outcome) -> f64 {
    samples.iter().filter(|s| s.outcome == outcome).count() as f64 / samples.len().max(1) as f64
}

/// From B healing until every later bucket reaches the success ratio.
fn recovery(samples: &[Sample]) -> Option<Duration> {
    let healed = WARM_UP + SLOWDOWN;
    let end = healed + HEALED;
    let buckets = (HEALED.as_millis() / BUCKET.as_millis()) as u32;
    let ratio = |b: u32| {
        let from = healed + BUCKET * b;
        let in_bucket: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.sent_at >= from && s.sent_at < (from + BUCKET).min(end))
            .collect();
        in_bucket.iter().filter(|s| s.outcome == Outcome::Served).count() as f64 / in_bucket.len().max(1) as f64
    };
    let last_bad = (0..buckets).rev().find(|b| ratio(*b) < RECOVERED_SUCCESS_RATIO);
    match last_bad {
        None => Some(Duration::ZERO),
        Some(b) if b + 1 == buckets => None,
        Some(b) => Some(BUCKET * (b + 1)),
    }
}

fn row(mode: &str, result: &RunResult) -> String {
    let samples = &result.samples;
    let mut served: Vec<Duration> = samples
        .iter()
        .filter(|s| s.outcome == Outcome::Served)
        .map(|s| s.latency)
        .collect();
    served.sort();
    let total = WARM_UP + SLOWDOWN + HEALED;
    let slow_window = WARM_UP..WARM_UP + SLOWDOWN;
    let slow_served = samples
        .iter()
        .filter(|s| s.outcome == Outcome::Served && slow_window.contains(&s.sent_at))
        .count();
    let recovered = recovery(samples).map_or_else(
        || format!("not within {} s", HEALED.as_secs()),
        |d| format!("{:.2} s", d.as_secs_f64()),
    );
    format!(
        "| {mode} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1}% | {:.1}% | {:.2} | {recovered} |",
        served.len() as f64 / total.as_secs_f64(),
        slow_served as f64 / SLOWDOWN.as_secs_f64(),
        percentile(&served, 50.0).as_secs_f64() * 1000.0,
        percentile(&served, 99.0).as_secs_f64() * 1000.0,
        share(samples, Outcome::Rejected) * 100.0,
        share(samples, Outcome::Failed) * 100.0,
        result.weft_retries as f64 / samples.len().max(1) as f64,
    )
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut table = format!(
        "Offered load {RATE} rps for {} s; B slowed {SLOWDOWN_FACTOR}x from {} s to {} s (capacity {} -> {} rps).\n\n\
         | protection | goodput (rps) | goodput in slowdown (rps) | p50 served (ms) | p99 served (ms) | rejected | failed | retries per client request | recovery after B heals |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        (WARM_UP + SLOWDOWN + HEALED).as_secs(),
        WARM_UP.as_secs(),
        (WARM_UP + SLOWDOWN).as_secs(),
        B_WORKERS as u128 * 1000 / B_SERVICE_TIME.as_millis(),
        B_WORKERS as u128 * 1000 / (B_SERVICE_TIME.as_millis() * u128::from(SLOWDOWN_FACTOR)),
    );
    for (mode, protection) in MODES {
        eprintln!("running with protection {mode} ...");
        let result = run(protection).await?;
        table.push_str(&row(mode, &result));
        table.push('\n');
        // Abandoned work and pooled connections from the previous run settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!("{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/retry_storm.md");
    std::fs::write(&out, &table)?;
    eprintln!("written to {}", out.display());
    Ok(())
}
