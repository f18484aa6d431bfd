//! Helpers for the side-by-side load benchmark (`bash benches/load/run.sh`);
//! not part of weft itself.
//!
//! ```text
//! benchtool upstream ADDR                      # fast upstream: 200 "ok" on HTTP/1.1 and h2c, one thread
//!                                              # (GET /1m: 1 MiB body; a request body is read and dropped)
//! benchtool idle ADDR N SECS                   # open N keep-alive connections, one request each, then hold them
//! benchtool idle-h2 ADDR N SECS                # the same with N HTTP/2 (prior knowledge) connections
//! benchtool h3load ADDR CA_PEM CONNS STREAMS SECS   # HTTP/3 closed-loop load, prints JSON
//! benchtool udp-echo ADDR                      # UDP upstream: each datagram back to its sender, one thread
//! benchtool udpload ADDR CLIENTS WINDOW BYTES SECS   # UDP closed-loop load, prints JSON
//! benchtool report RAW_TSV                     # Markdown tables from the script's raw figures
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let arg = |i: usize| -> Result<&str, Error> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("missing argument {i}; see the header of examples/benchtool.rs").into())
    };
    match arg(0)? {
        "upstream" => rt.block_on(upstream(arg(1)?.parse()?)),
        "idle" => rt.block_on(idle(arg(1)?.parse()?, arg(2)?.parse()?, arg(3)?.parse()?)),
        "idle-h2" => rt.block_on(idle_h2(arg(1)?.parse()?, arg(2)?.parse()?, arg(3)?.parse()?)),
        "h3load" => rt.block_on(h3load(
            arg(1)?.parse()?,
            arg(2)?,
            arg(3)?.parse()?,
            arg(4)?.parse()?,
            arg(5)?.parse()?,
        )),
        "udp-echo" => udp_echo(arg(1)?.parse()?),
        "udpload" => rt.block_on(udpload(
            arg(1)?.parse()?,
            arg(2)?.parse()?,
            arg(3)?.parse()?,
            arg(4)?.parse()?,
            arg(5)?.parse()?,
        )),
        "report" => report(&std::fs::read_to_string(arg(1)?)?),
        other => Err(format!("unknown command {other:?}").into()),
    }
}

/// The large response body of `GET /1m` (scenario 9).
const LARGE_BODY: usize = 1 << 20;

/// A minimal upstream: every request gets `200 ok` (2 bytes), or 1 MiB for
/// `/1m`, on HTTP/1.1 keep-alive or HTTP/2 prior knowledge, served from one
/// thread. A request body is read to its end and dropped (uploads).
async fn upstream(addr: SocketAddr) -> Result<(), Error> {
    let listener = TcpListener::bind(addr).await?;
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let large = Bytes::from(vec![b'x'; LARGE_BODY]);
    println!("upstream listening on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (builder, large) = (builder.clone(), large.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let large = large.clone();
                async move {
                    let body = if req.uri().path() == "/1m" {
                        large
                    } else {
                        Bytes::from_static(b"ok")
                    };
                    let mut incoming = req.into_body();
                    while !incoming.is_end_stream() {
                        match incoming.frame().await {
                            Some(Ok(_)) => {}
                            _ => break,
                        }
                    }
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(body)))
                }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Opens `n` HTTP/2 connections (prior knowledge), sends one request on
/// each and reads its response, prints `ready N`, then holds them open for
/// `secs`.
async fn idle_h2(addr: SocketAddr, n: usize, secs: u64) -> Result<(), Error> {
    let mut conns = Vec::with_capacity(n);
    let mut ok = 0usize;
    for _ in 0..n {
        let Ok(stream) = TcpStream::connect(addr).await else {
            continue;
        };
        let Ok((mut sender, conn)) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await
        else {
            continue;
        };
        tokio::spawn(conn);
        let req = Request::get(format!("http://{addr}/")).body(Full::new(Bytes::new()))?;
        let answered = tokio::time::timeout(Duration::from_secs(2), async {
            let response = sender.send_request(req).await.ok()?;
            let status = response.status();
            response.into_body().collect().await.ok()?;
            Some(status)
        })
        .await;
        if let Ok(Some(status)) = answered {
            ok += usize::from(status.is_success());
        }
        conns.push(sender);
    }
    println!("ready {ok}");
    tokio::time::sleep(Duration::from_secs(secs)).await;
    drop(conns);
    Ok(())
}

/// Opens `n` HTTP/1.1 connections, sends one keep-alive request on each and
/// reads its response, prints `ready N`, then holds them open for `secs`.
async fn idle(addr: SocketAddr, n: usize, secs: u64) -> Result<(), Error> {
    let mut conns = Vec::with_capacity(n);
    let mut ok = 0usize;
    for _ in 0..n {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            continue;
        };
        if stream
            .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            .await
            .is_err()
        {
            continue;
        }
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        // Headers and the 2-byte body; a short wait is enough on loopback.
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
                Ok(Ok(k)) if k > 0 => got.extend_from_slice(&buf[..k]),
                _ => break,
            }
        }
        if got.starts_with(b"HTTP/1.1 200") {
            ok += 1;
        }
        conns.push(stream);
    }
    println!("ready {ok}");
    tokio::time::sleep(Duration::from_secs(secs)).await;
    drop(conns);
    Ok(())
}

/// Closed-loop HTTP/3 load: `conns` QUIC connections with `streams` requests
/// in flight on each, for `secs` seconds. Prints one JSON object.
async fn h3load(addr: SocketAddr, ca: &str, conns: usize, streams: usize, secs: u64) -> Result<(), Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(weft::tls::crypto())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));

    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    let mut drivers = Vec::new();
    let start = Instant::now();
    for _ in 0..conns {
        let conn = endpoint.connect(addr, "localhost")?.await?;
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
        drivers.push(tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        }));
        for _ in 0..streams {
            let mut sender = sender.clone();
            let (done, failed) = (done.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let req = Request::get("https://localhost/").body(()).expect("request");
                    let ok = async {
                        let mut stream = sender.send_request(req).await.ok()?;
                        stream.finish().await.ok()?;
                        let response = stream.recv_response().await.ok()?;
                        while let Some(mut chunk) = stream.recv_data().await.ok()? {
                            let n = chunk.remaining();
                            chunk.advance(n);
                        }
                        response.status().is_success().then_some(())
                    }
                    .await;
                    match ok {
                        Some(()) => done.fetch_add(1, Ordering::Relaxed),
                        None => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let done = done.load(Ordering::Relaxed);
    println!(
        "{{\"requests\":{done},\"failed\":{},\"seconds\":{elapsed:.3},\"rps\":{:.1}}}",
        failed.load(Ordering::Relaxed),
        done as f64 / elapsed
    );
    for d in drivers {
        d.abort();
    }
    endpoint.close(0u32.into(), b"done");
    Ok(())
}

/// A UDP upstream: sends every datagram back to its sender, with blocking
/// calls on one thread (the cheapest loop, so the proxy is what is measured).
fn udp_echo(addr: SocketAddr) -> Result<(), Error> {
    let socket = std::net::UdpSocket::bind(addr)?;
    println!("udp echo on {addr}");
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = socket.recv_from(&mut buf)?;
        let _ = socket.send_to(&buf[..len], from);
    }
}

/// Closed-loop UDP load: `clients` sockets (so as many sessions through a
/// proxy), each keeping `window` datagrams of `bytes` bytes in flight and
/// sending one more per reply, for `secs` seconds. A datagram lost (no
/// reply within 200 ms) is replaced and counted. Prints one JSON object.
async fn udpload(addr: SocketAddr, clients: usize, window: usize, bytes: usize, secs: u64) -> Result<(), Error> {
    let done = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect(addr).await?;
        let (done, lost) = (done.clone(), lost.clone());
        tasks.push(tokio::spawn(async move {
            let payload = vec![b'x'; bytes];
            let mut buf = vec![0u8; 65_536];
            for _ in 0..window {
                let _ = socket.send(&payload).await;
            }
            while Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await {
                    Ok(Ok(_)) => done.fetch_add(1, Ordering::Relaxed),
                    // Refused (nothing listens yet) or no reply: replace the datagram.
                    Ok(Err(_)) | Err(_) => lost.fetch_add(1, Ordering::Relaxed),
                };
                let _ = socket.send(&payload).await;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let done = done.load(Ordering::Relaxed);
    println!(
        "{{\"round_trips\":{done},\"lost\":{},\"seconds\":{elapsed:.3},\"rps\":{:.1}}}",
        lost.load(Ordering::Relaxed),
        done as f64 / elapsed
    );
    Ok(())
}

/// One scenario's section of the report.
struct Section {
    id: &'static str,
    title: &'static str,
    /// (numerator, denominator candidates, column title); a denominator list
    /// of several candidates means "the best of them".
    ratios: &'static [(&'static str, &'static [&'static str], &'static str)],
}

const PEERS: &[&str] = &["nginx", "haproxy"];
const SECTIONS: &[Section] = &[
    Section {
        id: "s1",
        title: "1. HTTP/1.1 keep-alive, 64 connections, max throughput (wrk)",
        ratios: &[("weft", &["direct"], "weft/direct"), ("weft", PEERS, "weft/best peer")],
    },
    Section {
        id: "s2",
        title: "2. HTTP/2 prior knowledge, 16 connections x 16 streams, max throughput (h2load)",
        ratios: &[("weft", &["direct"], "weft/direct"), ("weft", PEERS, "weft/best peer")],
    },
    Section {
        id: "s3",
        title: "3. HTTP/1.1 at a fixed rate, coordinated-omission-corrected latency (oha -q --latency-correction, 32 connections)",
        ratios: &[("weft", &["direct"], "weft/direct"), ("weft", PEERS, "weft/best peer")],
    },
    Section {
        id: "s4",
        title: "4. Proxy resident memory (VmRSS, all processes)",
        ratios: &[("weft", PEERS, "weft/best peer")],
    },
    Section {
        id: "s5",
        title: "5. TLS (h2 by ALPN, terminated by each proxy with the same certificate) and HTTP/3 through weft, 16 connections x 16 streams (h2load for h2; benchtool h3load for HTTP/3)",
        ratios: &[
            ("weft-tls-h2", &["direct-h2c"], "TLS h2/direct h2c"),
            ("weft-tls-h2", &["nginx-tls-h2", "haproxy-tls-h2"], "weft TLS/best peer TLS"),
            ("weft-h3", &["direct-h2c"], "h3/direct h2c"),
        ],
    },
    Section {
        id: "s6",
        title: "6. weft: outlier detection + adaptive concurrency + zone-aware routing vs a plain route (HTTP/1.1, 64 connections)",
        ratios: &[("weft-health", &["weft-plain"], "health/plain")],
    },
    Section {
        id: "s7",
        title: "7. UDP echo, 16 client sessions x 8 datagrams in flight, 64-byte datagrams (benchtool udpload; nginx stream module `listen ... udp`)",
        ratios: &[("weft", &["direct"], "weft/direct"), ("weft", PEERS, "weft/best peer")],
    },
    Section {
        id: "s8",
        title: "8. Access log on (JSON, to a file) with trace context (`traceparent` on every request) vs off, HTTP/1.1, 64 connections (wrk)",
        ratios: &[("weft-log", &["weft"], "weft on/off"), ("nginx-log", &["nginx"], "nginx on/off")],
    },
    Section {
        id: "s9",
        title: "9. 1 MiB responses (down) and 1 MiB uploads (up), HTTP/1.1, 8 connections (h2load --h1)",
        ratios: &[("weft", &["direct"], "weft/direct"), ("weft", PEERS, "weft/best peer")],
    },
];

fn metric_name(metric: &str) -> (&str, bool) {
    // (label, higher is better)
    match metric {
        "rps" => ("req/s", true),
        "udp_rtps" => ("round trips/s (a datagram each way)", true),
        "udp_cpu_us_per_datagram" => ("proxy CPU us per datagram forwarded", false),
        "udp_lost" => ("datagrams lost (replaced after 200 ms)", false),
        "cpu_s_per_100k" => ("proxy CPU s per 100k requests", false),
        "p50_us" => ("p50 latency, us", false),
        "p99_us" => ("p99 latency, us", false),
        "p99.9_us" => ("p99.9 latency, us", false),
        "added_p50_us" => ("added p50 over direct, us", false),
        "added_p99_us" => ("added p99 over direct, us", false),
        "added_p99.9_us" => ("added p99.9 over direct, us", false),
        "rss_idle_mib" => ("idle, MiB", false),
        "rss_after_load_mib" => ("after load, MiB", false),
        "rss_1000_idle_mib" => ("1000 idle keep-alive connections, MiB", false),
        "rss_1000_idle_h2_mib" => ("1000 idle HTTP/2 connections, MiB", false),
        "down_mibps" => ("1 MiB responses: MiB/s", true),
        "down_cpu_ms_per_mib" => ("1 MiB responses: proxy CPU ms per MiB", false),
        "up_mibps" => ("1 MiB uploads: MiB/s", true),
        "up_cpu_ms_per_mib" => ("1 MiB uploads: proxy CPU ms per MiB", false),
        other => (other, false),
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn fmt_num(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// Markdown tables: per scenario, the median and range of each candidate's
/// repeats, and the ratios named in [`SECTIONS`].
fn report(raw: &str) -> Result<(), Error> {
    // (scenario, metric) -> candidate -> values, in order of first appearance.
    type Series = Vec<(String, Vec<f64>)>;
    let mut data: Vec<((String, String), Series)> = Vec::new();
    let mut order: Vec<(String, Vec<String>)> = Vec::new();
    for line in raw.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let [scenario, candidate, metric, value] = f[..] else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let key = (scenario.to_string(), metric.to_string());
        let idx = match data.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                data.push((key, Vec::new()));
                data.len() - 1
            }
        };
        let series = &mut data[idx].1;
        match series.iter_mut().find(|(c, _)| c == candidate) {
            Some((_, v)) => v.push(value),
            None => series.push((candidate.to_string(), vec![value])),
        }
        let o = match order.iter().position(|(s, _)| s == scenario) {
            Some(i) => i,
            None => {
                order.push((scenario.to_string(), Vec::new()));
                order.len() - 1
            }
        };
        if !order[o].1.iter().any(|c| c == candidate) {
            order[o].1.push(candidate.to_string());
        }
    }
    // Added latency over direct, from the medians.
    let mut derived = Vec::new();
    for ((scenario, metric), series) in &data {
        if scenario != "s3" || !metric.ends_with("_us") {
            continue;
        }
        let Some((_, direct)) = series.iter().find(|(c, _)| c == "direct") else {
            continue;
        };
        let base = median(direct);
        let added: Series = series
            .iter()
            .filter(|(c, _)| c != "direct")
            .map(|(c, v)| (c.clone(), v.iter().map(|x| x - base).collect()))
            .collect();
        derived.push(((scenario.clone(), format!("added_{metric}")), added));
    }
    data.extend(derived);

    for section in SECTIONS {
        let Some((_, candidates)) = order.iter().find(|(s, _)| s == section.id) else {
            continue;
        };
        println!("#### {}\n", section.title);
        let mut head = String::from("| metric |");
        let mut rule = String::from("| --- |");
        for c in candidates {
            head.push_str(&format!(" {c} |"));
            rule.push_str(" ---: |");
        }
        for (_, _, title) in section.ratios {
            head.push_str(&format!(" {title} |"));
            rule.push_str(" ---: |");
        }
        println!("{head}\n{rule}");
        for ((scenario, metric), series) in &data {
            if scenario != section.id {
                continue;
            }
            let (label, higher_better) = metric_name(metric);
            let mut row = format!("| {label} |");
            let med = |c: &str| series.iter().find(|(n, _)| n == c).map(|(_, v)| median(v));
            for c in candidates {
                match series.iter().find(|(n, _)| n == c) {
                    Some((_, v)) if v.len() > 1 => {
                        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        row.push_str(&format!(" {} ({}–{}) |", fmt_num(median(v)), fmt_num(lo), fmt_num(hi)));
                    }
                    Some((_, v)) => row.push_str(&format!(" {} |", fmt_num(median(v)))),
                    None => row.push_str(" – |"),
                }
            }
            for (num, dens, _) in section.ratios {
                let best = dens.iter().filter_map(|d| med(d).map(|m| (*d, m))).reduce(|a, b| {
                    match (higher_better, a.1 >= b.1) {
                        (true, true) | (false, false) => a,
                        _ => b,
                    }
                });
                // Ratios of added latency over direct against direct mean nothing.
                match (med(num), best) {
                    (Some(n), Some((who, d))) if d != 0.0 && !(metric.starts_with("added") && who == "direct") => {
                        let peer = if dens.len() > 1 {
                            format!(" ({who})")
                        } else {
                            String::new()
                        };
                        row.push_str(&format!(" {:.2}x{peer} |", n / d));
                    }
                    _ => row.push_str(" – |"),
                }
            }
            println!("{row}");
        }
        println!();
    }
    Ok(())
}
