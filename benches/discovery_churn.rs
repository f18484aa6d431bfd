//! The discovery-churn benchmark: `cargo bench --bench discovery_churn`
//! (`DUR=10` sets the seconds per phase; default 5).
//!
//! On loopback, in one process: 1,001 upstreams (hyper, HTTP/1.1, `200 ok`),
//! weft in front of a file-discovered cluster of 1,000 of them, and a
//! closed-loop load of 32 concurrent keep-alive clients at full speed. A
//! writer thread replaces one endpoint of the file every 100 ms (one out, the
//! spare in; rename-over, as a controller writes), so weft re-reads and diffs
//! a 1,000-endpoint set ten times a second.
//!
//! Phases, each `DUR` long: idle (baseline CPU), churn without traffic (the
//! CPU cost of updates: the process's CPU time above idle, less the writer
//! thread's own, per update applied), then traffic without and with churn,
//! twice, alternately (p50/p99 latency and throughput). The Markdown table is
//! printed and written to `target/discovery_churn.md`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::time::{Duration, Instant};
use weft::app::App;

const ENDPOINTS: usize = 1_000;
const CLIENTS: usize = 32;
const CHURN_EVERY: Duration = Duration::from_millis(100);

/// CPU seconds (user + system) of the process, or of the calling thread.
fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

async fn upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    addr
}

fn endpoints_json(addrs: &[std::net::SocketAddr], out: usize) -> String {
    let items: Vec<String> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != out)
        .map(|(_, a)| format!("{{\"address\":\"{a}\"}}"))
        .collect();
    format!("{{\"endpoints\":[{}]}}\n", items.join(","))
}

/// Rewrites the endpoints file every [`CHURN_EVERY`] while `on`; returns
/// the writer thread's CPU seconds when `stop` is set.
fn churn(
    path: std::path::PathBuf,
    addrs: Vec<std::net::SocketAddr>,
    on: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<f64> {
    std::thread::spawn(move || {
        let mut out = 0;
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(CHURN_EVERY);
            if !on.load(Ordering::SeqCst) {
                continue;
            }
            out = (out + 1) % addrs.len();
            let temporary = path.with_extension("tmp");
            std::fs::write(&temporary, endpoints_json(&addrs, out)).unwrap();
            std::fs::rename(&temporary, &path).unwrap();
        }
        cpu_seconds(libc::RUSAGE_THREAD)
    })
}

fn updates_applied(app: &App) -> f64 {
    let text = String::from_utf8(app.shared.metrics.render()).unwrap();
    let series = "weft_discovery_updates_total{cluster=\"pool\",result=\"ok\"} ";
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

struct Load {
    requests: usize,
    errors: usize,
    latencies_us: Vec<u32>,
    seconds: f64,
}

async fn load(url: &str, duration: Duration) -> Load {
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let started = Instant::now();
    let loops = (0..CLIENTS).map(|_| {
        let (client, uri) = (client.clone(), url.parse::<http::Uri>().unwrap());
        tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0);
            while started.elapsed() < duration {
                let sent = Instant::now();
                let ok = match client.get(uri.clone()).await {
                    Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                match ok {
                    true => latencies.push(sent.elapsed().as_micros() as u32),
                    false => errors += 1,
                }
            }
            (latencies, errors)
        })
    });
    let mut all = Load {
        requests: 0,
        errors: 0,
        latencies_us: Vec::new(),
        seconds: 0.0,
    };
    for handle in loops.collect::<Vec<_>>() {
        let (latencies, errors) = handle.await.unwrap();
        all.requests += latencies.len() + errors;
        all.errors += errors;
        all.latencies_us.extend(latencies);
    }
    all.seconds = started.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    all
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).map_or(0.0, |v| f64::from(*v) / 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let phase = Duration::from_secs(std::env::var("DUR").ok().and_then(|d| d.parse().ok()).unwrap_or(5));
    let mut addrs = Vec::with_capacity(ENDPOINTS + 1);
    for _ in 0..=ENDPOINTS {
        addrs.push(upstream().await);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.json");
    std::fs::write(&file, endpoints_json(&addrs, ENDPOINTS)).unwrap();
    let config = dir.path().join("weft.yaml");
    std::fs::write(
        &config,
        "admin: { address: 127.0.0.1:0 }\naccess_log: { enabled: false }\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\n    routes: [ { name: all, match: { path_prefix: / }, cluster: pool } ]\nclusters:\n  - name: pool\n    discovery: { file: { path: endpoints.json } }\n",
    )
    .unwrap();
    let app = App::start(weft::config::load(&config).unwrap()).await.unwrap();
    let url = format!("http://{}/", app.listener_addr("public").await.unwrap());
    let (on, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let writer = churn(file, addrs, on.clone(), stop.clone());

    let cpu = || cpu_seconds(libc::RUSAGE_SELF);
    let (c0, u0) = (cpu(), updates_applied(&app));
    tokio::time::sleep(phase).await;
    let idle_cpu = cpu() - c0;
    on.store(true, Ordering::SeqCst);
    let (c1, u1) = (cpu(), updates_applied(&app));
    tokio::time::sleep(phase).await;
    let churn_cpu = cpu() - c1;
    let updates = updates_applied(&app) - u1;
    on.store(false, Ordering::SeqCst);
    assert_eq!(u0, u1, "no update while idle");

    let mut rows = Vec::new();
    for round in 0..4 {
        let churning = round % 2 == 1;
        on.store(churning, Ordering::SeqCst);
        let before = updates_applied(&app);
        let l = load(&url, phase).await;
        rows.push((churning, updates_applied(&app) - before, l));
    }
    stop.store(true, Ordering::SeqCst);
    let writer_cpu = writer.join().unwrap();

    let mut out = format!(
        "Discovery churn: {ENDPOINTS} file-discovered endpoints, one replaced every {} ms; {CLIENTS} closed-loop HTTP/1.1 clients; {} s phases.\n\n",
        CHURN_EVERY.as_millis(),
        phase.as_secs()
    );
    let per_update_ms = (churn_cpu - idle_cpu - writer_cpu / 3.0) / updates.max(1.0) * 1000.0;
    out += &format!(
        "CPU without traffic: idle {idle_cpu:.3} s, churning {churn_cpu:.3} s ({updates} updates applied; the writer thread used {:.3} s over its three churn phases) -> about {per_update_ms:.2} ms of CPU per update of a 1,000-endpoint set.\n\n",
        writer_cpu
    );
    out +=
        "| phase | updates applied | req/s | p50 ms | p99 ms | errors |\n| --- | ---: | ---: | ---: | ---: | ---: |\n";
    for (churning, updates, l) in &rows {
        out += &format!(
            "| {} | {updates} | {:.0} | {:.3} | {:.3} | {} |\n",
            if *churning { "traffic + churn" } else { "traffic" },
            l.requests as f64 / l.seconds,
            percentile(&l.latencies_us, 0.5),
            percentile(&l.latencies_us, 0.99),
            l.errors
        );
    }
    print!("{out}");
    let _ = std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/target/discovery_churn.md"), &out);
}
