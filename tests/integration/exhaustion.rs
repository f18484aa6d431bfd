//! weft under resource attacks: a cluster without a circuit breaker still
//! holds at most Envoy's 1,024 requests to a hanging upstream; with a low
//! file-descriptor limit (the `weft` binary), streams to a hanging upstream
//! are refused (503 circuit) before they take the descriptors accept and the
//! admin port need; and an attack that makes one warning per connection
//! (rapid reset) writes a bounded number of log lines, counting the rest in
//! `weft_log_suppressed_total`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::Request;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr};

use crate::h2_abuse::raw::{ending_under, Ending, RawH2, ENHANCE_YOUR_CALM};
use crate::h2_abuse::{rapid_reset, write_until_closed};
use crate::process::{signal, wait_for, wait_for_field, weft_run};
use crate::support::*;

/// A `weft run` child with its stderr lines, its listener's and admin's
/// addresses (both port 0 in the config, read from its log).
struct WeftProcess {
    child: Child,
    lines: Lines<BufReader<ChildStderr>>,
    listener: String,
    admin: String,
}

impl WeftProcess {
    /// Starts weft on `yaml`, its descriptor limit (soft and hard) set to
    /// `nofile` when given.
    async fn start(dir: &std::path::Path, yaml: &str, nofile: Option<u64>) -> Self {
        let path = dir.join("weft.yaml");
        std::fs::write(&path, yaml).unwrap();
        let mut command = weft_run(&[], &path);
        if let Some(n) = nofile {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs here.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                        0 => Ok(()),
                        _ => Err(std::io::Error::last_os_error()),
                    }
                });
            }
        }
        let mut child = command.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let listener = wait_for_field(&mut lines, "listening", "address=").await;
        let admin = wait_for_field(&mut lines, "weft started", "admin=").await;
        Self {
            child,
            lines,
            listener,
            admin,
        }
    }

    /// A GET on the admin port (bounded: at the descriptor limit, accept
    /// fails and the connection would wait in the backlog for ever).
    async fn admin_get(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.admin);
        tokio::time::timeout(PATIENCE, get(&h1_client(), &url))
            .await
            .unwrap_or_else(|_| panic!("no answer from the admin port to {path}"))
    }
}

#[tokio::test]
async fn a_low_descriptor_limit_refuses_upstream_streams_not_accept() {
    let held = HeldUpstream::start("held").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = config(
        "  - name: public
    address: 127.0.0.1:0
    limits: { max_concurrent_streams: 1000 }
    routes:
      - { name: direct, match: { path_prefix: /direct }, direct_response: { status: 200, body: direct } }
      - { name: held, match: { path_prefix: / }, cluster: held }",
        &format!(
            "  - name: held\n    endpoints: [ {{ address: {} }} ]",
            held.upstream.addr
        ),
    );
    // 256 descriptors, 32 of them the reserve: 300 streams to the hanging
    // upstream over two HTTP/2 connections would need 300 upstream ones.
    let weft = WeftProcess::start(dir.path(), &yaml, Some(256)).await;
    let (refused, other) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut streams = tokio::task::JoinSet::new();
    for client in [h2_client(), h2_client()] {
        for _ in 0..150 {
            let (client, refused, other) = (client.clone(), refused.clone(), other.clone());
            let url = format!("http://{}/held", weft.listener);
            streams.spawn(async move {
                let response = client.request(Request::get(url).body(full("")).unwrap()).await.unwrap();
                if refused_by_circuit(&response) {
                    refused.fetch_add(1, Ordering::Relaxed);
                } else {
                    other.fetch_add(1, Ordering::Relaxed);
                }
                response.status().as_u16()
            });
        }
    }
    let open = held.upstream.open.clone();
    let count = |c: &AtomicUsize| c.load(Ordering::Relaxed);
    eventually("every stream is held upstream or answered", async || {
        let (open, refused, other) = (count(&open), count(&refused), count(&other));
        if open + refused + other == 300 {
            Ok(())
        } else {
            Err(format!("{open} held, {refused} refused, {other} other answers"))
        }
    })
    .await;
    assert_eq!(count(&other), 0, "answers other than 503 circuit (connect failures?)");
    assert!(count(&refused) > 0, "no stream was refused");
    assert_eq!(weft.admin_get("/ready").await.0, 200);
    let direct = format!("http://{}/direct", weft.listener);
    let answer = tokio::time::timeout(PATIENCE, get(&h1_client(), &direct)).await;
    assert_eq!(answer.expect("no answer to a new client"), (200, "direct".to_string()));
    let text = weft.admin_get("/metrics").await.1;
    let by_descriptors = metric(
        &text,
        "weft_circuit_open_total{cluster=\"held\",limit=\"file_descriptors\"}",
    );
    assert!(by_descriptors > 0.0, "{text}");
    held.release();
    while let Some(status) = streams.join_next().await {
        assert!([200, 503].contains(&status.unwrap()));
    }
}

#[tokio::test]
async fn warnings_of_one_kind_are_rate_limited_and_counted() {
    let upstream = Upstream::text("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = config(
        "  - { name: public, address: 127.0.0.1:0, routes: [ { name: all, match: { path_prefix: / }, cluster: backend } ] }",
        &format!("  - name: backend\n    endpoints: [ {{ address: {} }} ]", upstream.addr),
    );
    let mut weft = WeftProcess::start(dir.path(), &yaml, None).await;
    // Each rapid-reset connection makes h2 warn once as it sends GOAWAY.
    const ATTACKS: usize = 30;
    for _ in 0..ATTACKS {
        let RawH2 { mut reader, writer } = RawH2::connect(weft.listener.parse().unwrap()).await;
        let attack = write_until_closed(writer, rapid_reset(&weft.listener));
        assert_eq!(
            ending_under(&mut reader, attack).await,
            Ending::GoAway(ENHANCE_YOUR_CALM)
        );
    }
    let series = "weft_log_suppressed_total{kind=\"h2::proto::streams::recv\"}";
    let suppressed = metric(&weft.admin_get("/metrics").await.1, series) as usize;
    // A reload's line marks the end of what the attack made weft write.
    signal(weft.child.id().unwrap(), "HUP");
    let mut written = 0;
    loop {
        let line = wait_for(&mut weft.lines, "").await;
        if line.contains("reached limit") {
            written += 1;
        }
        if line.contains("config reloaded") || line.contains("config reload refused") {
            break;
        }
    }
    assert!(written <= 10, "{written} warnings written");
    assert_eq!(
        written + suppressed,
        ATTACKS,
        "{written} written, {suppressed} suppressed"
    );
}

#[tokio::test]
async fn a_cluster_without_circuit_breaker_gets_envoys_1024_requests() {
    let held = HeldUpstream::start("held").await;
    let yaml = config(
        "  - { name: public, address: 127.0.0.1:0, limits: { max_concurrent_streams: 1000 }, routes: [ { name: all, match: { path_prefix: / }, cluster: held } ] }",
        &format!("  - name: held\n    endpoints: [ {{ address: {} }} ]", held.upstream.addr),
    );
    let weft = Weft::start(&yaml).await;
    let url = weft.url("public", "/").await;
    // 1,100 requests held at once, over six HTTP/2 connections (at most 200
    // streams each), sent in waves of 128 that each wait for their upstream
    // connections (a thousand connects at once overflow the upstream's
    // accept backlog, and the retried SYNs would outlast the connect timeout).
    let clients: Vec<_> = (0..6).map(|_| h2_client()).collect();
    let refused = Arc::new(AtomicUsize::new(0));
    let mut requests = tokio::task::JoinSet::new();
    let open = held.upstream.open.clone();
    for wave in (0..1100).collect::<Vec<usize>>().chunks(128) {
        for &i in wave {
            let (client, refused, url) = (clients[i % 6].clone(), refused.clone(), url.clone());
            requests.spawn(async move {
                let response = client.request(Request::get(url).body(full("")).unwrap()).await.unwrap();
                if refused_by_circuit(&response) {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let sent = wave[wave.len() - 1] + 1;
        eventually("each request held upstream or refused", async || {
            let (open, refused) = (open.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
            if open + refused == sent {
                Ok(())
            } else {
                Err(format!("{open} held, {refused} refused of {sent}"))
            }
        })
        .await;
    }
    assert_eq!(
        (open.load(Ordering::Relaxed), refused.load(Ordering::Relaxed)),
        (1024, 76)
    );
    let text = metrics(&weft).await;
    assert_eq!(
        metric(
            &text,
            "weft_circuit_open_total{cluster=\"held\",limit=\"max_requests\"}"
        ),
        76.0
    );
    held.release();
    while let Some(done) = requests.join_next().await {
        done.unwrap();
    }
}

/// A 503 that weft's circuit breaker answered (`x-weft-overloaded: circuit`).
fn refused_by_circuit<B>(response: &http::Response<B>) -> bool {
    let circuit = response
        .headers()
        .get("x-weft-overloaded")
        .is_some_and(|v| v == "circuit");
    response.status() == 503 && circuit
}
