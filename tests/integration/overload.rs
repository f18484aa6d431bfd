//! Overload protection through a real weft: adaptive concurrency, retries
//! under a budget, circuit breaker limits, per-try and gRPC timeouts.
//! Waits are `eventually` polls; nothing asserts on wall-clock durations.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::support::*;

fn one_route(route_extra: &str) -> String {
    format!(
        "  - name: public
    address: 127.0.0.1:0
    routes:
      - {{ name: r, match: {{ path_prefix: / }}, cluster: c{route_extra} }}"
    )
}

fn cluster(endpoints: &[std::net::SocketAddr], extra: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|a| format!("{{ address: {a} }}")).collect();
    format!("  - name: c\n    endpoints: [ {} ]\n{extra}", list.join(", "))
}

/// An upstream that counts requests and answers after `delay_ms`.
async fn delayed_upstream(delay_ms: Arc<AtomicU64>, hits: Arc<AtomicUsize>) -> Upstream {
    Upstream::start(move |_req| {
        let (delay_ms, hits) = (delay_ms.clone(), hits.clone());
        async move {
            hits.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(delay_ms.load(Ordering::Relaxed))).await;
            Response::new(full("ok"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_limit_falls_for_a_slow_upstream_rejects_fast_and_recovers() {
    let delay_ms = Arc::new(AtomicU64::new(5));
    let hits = Arc::new(AtomicUsize::new(0));
    let upstream = delayed_upstream(delay_ms.clone(), hits.clone()).await;
    let yaml = config(
        &one_route(""),
        &cluster(
            &[upstream.addr],
            "    adaptive_concurrency: { concurrency_update_interval: 50ms, min_rtt_calc_request_count: 10, min_concurrency: 2, min_concurrency_limit: 2, max_concurrency_limit: 40, jitter_percent: 0 }\n",
        ),
    );
    let weft = Weft::start(&yaml).await;
    let url = weft.url("public", "/").await;
    let stop = Arc::new(AtomicBool::new(false));
    let rejected = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..30 {
        let (url, stop, rejected, served) = (url.clone(), stop.clone(), rejected.clone(), served.clone());
        clients.push(tokio::spawn(async move {
            let client = h1_client();
            while !stop.load(Ordering::Relaxed) {
                let response = client
                    .request(Request::get(&url).body(full("")).unwrap())
                    .await
                    .unwrap();
                if response.status() == StatusCode::SERVICE_UNAVAILABLE {
                    assert_eq!(response.headers()["x-weft-overloaded"], "concurrency");
                    rejected.fetch_add(1, Ordering::Relaxed);
                    // Rejections are instant; pausing keeps 30 clients from spinning.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                } else {
                    assert_eq!(response.status(), StatusCode::OK);
                    served.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let limit = async || metric(&metrics(&weft).await, "weft_concurrency_limit{cluster=\"c\"}");

    eventually("the limit grows to 20", async || limit().await >= 20.0).await;
    // A slowdown far beyond what a loaded test machine adds on its own, so
    // the minRTT measured before it cannot hide it.
    delay_ms.store(400, Ordering::Relaxed);
    eventually("the limit falls to 5", async || limit().await <= 5.0).await;
    eventually("weft rejects", async || rejected.load(Ordering::Relaxed) > 0).await;
    delay_ms.store(5, Ordering::Relaxed);
    eventually("the limit recovers to 20", async || limit().await >= 20.0).await;

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    // Rejected requests were answered by weft alone: never queued and sent later.
    assert_eq!(hits.load(Ordering::Relaxed), served.load(Ordering::Relaxed));
    let text = metrics(&weft).await;
    assert!(
        metric(&text, "weft_concurrency_rejections_total{cluster=\"c\"}") > 0.0,
        "{text}"
    );
    assert!(metric(&text, "weft_min_rtt_seconds{cluster=\"c\"}") > 0.0, "{text}");
    assert!(text.contains("weft_concurrency_in_flight{cluster=\"c\"}"), "{text}");
}

/// Accepts connections and closes them at once: every request on it fails
/// as a reset.
async fn resetting_upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_reset_first_try_succeeds_on_another_endpoint() {
    let (bad, bad_task) = resetting_upstream().await;
    let retried = Arc::new(AtomicUsize::new(0));
    let seen = retried.clone();
    let good = Upstream::start(move |req: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            if req.headers().get("x-weft-retry-attempt").is_some_and(|v| v == "1") {
                seen.fetch_add(1, Ordering::Relaxed);
            }
            Response::new(full("good"))
        }
    })
    .await;
    let yaml = config(
        &one_route(", retry: { max_retries: 1, retry_on: [reset] }"),
        // Round robin keeps sending first tries to the bad endpoint (p2c_ewma
        // would learn to avoid it, leaving nothing to retry).
        &cluster(&[bad, good.addr], "    lb: round_robin\n"),
    );
    let weft = Weft::start(&yaml).await;
    let client = h1_client();
    for _ in 0..10 {
        assert_eq!(get(&client, &weft.url("public", "/").await).await, (200, "good".into()));
    }
    // Round robin sends every other first try to the resetting endpoint.
    assert!(
        retried.load(Ordering::Relaxed) >= 4,
        "{}",
        retried.load(Ordering::Relaxed)
    );
    let text = metrics(&weft).await;
    assert_eq!(
        metric(&text, "weft_retries_total{cluster=\"c\"}") as usize,
        retried.load(Ordering::Relaxed)
    );
    bad_task.abort();
}

#[tokio::test]
async fn a_failing_upstream_sees_no_more_retries_than_the_budget_allows() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let upstream = Upstream::start(move |_req| {
        counter.fetch_add(1, Ordering::Relaxed);
        async move {
            let mut response = Response::new(full("down"));
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
        }
    })
    .await;
    let yaml = config(
        &one_route(", retry: { max_retries: 3, retry_on: [\"503\"], backoff: { base: 1ms, max: 1ms } }"),
        &cluster(
            &[upstream.addr],
            "    retry_budget: { percent: 20, min_retries_per_second: 1, window: 10s }\n",
        ),
    );
    let weft = Weft::start(&yaml).await;
    let client = h1_client();
    let url = weft.url("public", "/").await;
    let requests = 100;
    for _ in 0..requests {
        assert_eq!(get(&client, &url).await.0, 503);
    }
    // 20% of 100 requests plus 1/s over the 10 s window; without a budget
    // the upstream would see 400 requests.
    let hits = hits.load(Ordering::Relaxed);
    assert!(hits <= requests + 20 + 10, "{hits} upstream requests");
    assert!(hits > requests, "no retries at all");
    let text = metrics(&weft).await;
    assert_eq!(
        metric(&text, "weft_retries_total{cluster=\"c\"}") as usize,
        hits - requests
    );
    assert!(
        metric(&text, "weft_retry_budget_exhausted_total{cluster=\"c\"}") > 0.0,
        "{text}"
    );
}

#[tokio::test]
async fn overloaded_responses_are_not_retried_but_plain_503s_are() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let upstream = Upstream::start(move |req: Request<Incoming>| {
        counter.fetch_add(1, Ordering::Relaxed);
        async move {
            let mut response = Response::new(full("busy"));
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            if req.uri().path() == "/overloaded" {
                response
                    .headers_mut()
                    .insert("x-weft-overloaded", "concurrency".parse().unwrap());
            }
            response
        }
    })
    .await;
    let yaml = config(
        &one_route(", retry: { max_retries: 2, retry_on: [\"503\"], backoff: { base: 1ms, max: 1ms } }"),
        &cluster(&[upstream.addr], ""),
    );
    let weft = Weft::start(&yaml).await;
    let client = h1_client();
    assert_eq!(get(&client, &weft.url("public", "/overloaded").await).await.0, 503);
    assert_eq!(hits.swap(0, Ordering::Relaxed), 1);
    assert_eq!(get(&client, &weft.url("public", "/plain").await).await.0, 503);
    assert_eq!(hits.swap(0, Ordering::Relaxed), 3);
    // A retry from the hop before is not retried again here.
    let req = Request::get(weft.url("public", "/plain").await)
        .header("x-weft-retry-attempt", "1")
        .body(full(""))
        .unwrap();
    assert_eq!(send(&client, req).await.0, 503);
    assert_eq!(hits.load(Ordering::Relaxed), 1);
}

/// Sends `n` concurrent requests to an upstream that holds every request
/// until the rejected ones are back; returns (served, rejected, upstream hits).
async fn concurrent_against_held_upstream(circuit: &str, n: usize) -> (usize, usize, usize) {
    let gate = Arc::new(Semaphore::new(0));
    let hits = Arc::new(AtomicUsize::new(0));
    let (held, counter) = (gate.clone(), hits.clone());
    let upstream = Upstream::start(move |_req| {
        let (held, counter) = (held.clone(), counter.clone());
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            let _ = held.acquire().await.unwrap();
            Response::new(full("ok"))
        }
    })
    .await;
    let yaml = config(
        &one_route(""),
        &cluster(&[upstream.addr], &format!("    circuit_breaker: {circuit}\n")),
    );
    let weft = Weft::start(&yaml).await;
    let url = weft.url("public", "/").await;
    let rejected = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (url, rejected) = (url.clone(), rejected.clone());
            tokio::spawn(async move {
                let client = h1_client();
                let response = client
                    .request(Request::get(&url).body(full("")).unwrap())
                    .await
                    .unwrap();
                if response.status() == StatusCode::SERVICE_UNAVAILABLE {
                    assert_eq!(response.headers()["x-weft-overloaded"], "circuit");
                    rejected.fetch_add(1, Ordering::Relaxed);
                }
                response.status()
            })
        })
        .collect();
    // Every request is either held by the upstream or already rejected; none
    // can be admitted later, so the counts are final.
    eventually("every request is served or rejected", async || {
        hits.load(Ordering::Relaxed) + rejected.load(Ordering::Relaxed) == n
    })
    .await;
    gate.add_permits(n);
    let mut served = 0;
    for t in tasks {
        served += usize::from(t.await.unwrap() == StatusCode::OK);
    }
    let text = metrics(&weft).await;
    assert!(text.contains("weft_circuit_open_total{cluster=\"c\""), "{text}");
    (served, rejected.load(Ordering::Relaxed), hits.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_limits_hold_exactly() {
    assert_eq!(
        concurrent_against_held_upstream("{ max_requests: 3 }", 12).await,
        (3, 9, 3)
    );
    assert_eq!(
        concurrent_against_held_upstream("{ max_connections: 4 }", 12).await,
        (4, 8, 4)
    );
}

#[tokio::test]
async fn per_try_timeout_retries_a_hung_try_and_grpc_timeout_caps_the_route() {
    let first = Arc::new(AtomicBool::new(true));
    let upstream = Upstream::start(move |req: Request<Incoming>| {
        let first = first.clone();
        async move {
            let hang = req.uri().path() == "/grpc" || first.swap(false, Ordering::Relaxed);
            if hang {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Response::new(full("ok"))
        }
    })
    .await;
    let routes = "  - name: public
    address: 127.0.0.1:0
    routes:
      - { name: grpc, match: { path_prefix: /grpc }, cluster: c, timeout: 20s }
      - { name: r, match: { path_prefix: / }, cluster: c, retry: { max_retries: 1, retry_on: [gateway_error], per_try_timeout: 200ms } }";
    let weft = Weft::start(&config(routes, &cluster(&[upstream.addr], ""))).await;
    let client = h1_client();
    assert_eq!(get(&client, &weft.url("public", "/").await).await, (200, "ok".into()));
    let req = Request::post(weft.url("public", "/grpc").await)
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "200m")
        .body(full(""))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("grpc-timeout did not cap the 20 s route timeout")
        .unwrap();
    // A gRPC client gets the timeout as DEADLINE_EXCEEDED.
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "4");
}

/// Reads each request in full (through the end of its chunked body), then
/// closes without answering: the try fails as a reset after it has consumed
/// the whole body. Counts the requests it swallowed.
async fn swallowing_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let swallowed = Arc::new(AtomicUsize::new(0));
    let count = swallowed.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.ends_with(b"0\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    (addr, swallowed, task)
}

#[tokio::test]
async fn a_chunked_body_is_replayed_in_full_on_the_retry() {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;

    let (bad, swallowed, bad_task) = swallowing_upstream().await;
    let echo = Upstream::echo_body().await;
    let yaml = config(
        &one_route(", retry: { max_retries: 1, retry_on: [reset], idempotent_only: false }"),
        // Round robin from the first endpoint: every first try goes to the
        // swallowing one (each retry's pick advances the counter past it).
        &cluster(&[bad, echo.addr], "    lb: round_robin\n"),
    );
    let weft = Weft::start(&yaml).await;
    let client = h1_client();
    let requests = 4;
    for i in 0..requests {
        let chunks: Vec<Result<Frame<bytes::Bytes>, BoxError>> = ["first ", "second ", "third"]
            .iter()
            .map(|c| Ok(Frame::data(bytes::Bytes::from_static(c.as_bytes()))))
            .collect();
        let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
        let req = Request::post(weft.url("public", "/").await).body(body).unwrap();
        assert_eq!(
            send(&client, req).await,
            (200, "first second third".into()),
            "request {i}"
        );
    }
    // Every first try read the whole body before failing, and every request
    // was retried once.
    assert_eq!(swallowed.load(Ordering::Relaxed), requests);
    let text = metrics(&weft).await;
    assert_eq!(
        metric(&text, "weft_retries_total{cluster=\"c\"}"),
        requests as f64,
        "{text}"
    );
    bad_task.abort();
}

/// `GET /clusters` as JSON: the cluster `c`'s overload section.
async fn overload_status(weft: &Weft) -> serde_json::Value {
    let (_, body) = get(&h1_client(), &weft.admin("/clusters")).await;
    let clusters: serde_json::Value = serde_json::from_str(&body).unwrap();
    clusters[0]["overload"].clone()
}

/// One circuit breaker limit as `/clusters` shows it.
fn circuit_limit(max: serde_json::Value, current: usize, open: bool, rejections: u64) -> serde_json::Value {
    serde_json::json!({ "max": max, "current": current, "open": open, "rejections": rejections })
}

#[tokio::test]
async fn clusters_json_shows_the_concurrency_limit_and_each_circuit_limit() {
    let mut held = HeldUpstream::start("ok").await;
    let yaml = config(
        &one_route(""),
        &cluster(
            &[held.upstream.addr],
            "    adaptive_concurrency: { min_rtt_calc_request_count: 1, min_concurrency: 3, min_concurrency_limit: 7, jitter_percent: 0 }
    circuit_breaker: { max_requests: 1, max_connections: 10 }\n",
        ),
    );
    let weft = Weft::start(&yaml).await;
    let url = weft.url("public", "/").await;
    let first = tokio::spawn({
        let url = url.clone();
        async move { get(&h1_client(), &url).await }
    });
    held.arrived().await;
    let refused = h1_client()
        .request(Request::get(&url).body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(refused.headers()["x-weft-overloaded"], "circuit");

    let busy = overload_status(&weft).await;
    let concurrency = &busy["concurrency"];
    assert_eq!(
        (
            &concurrency["limit"],
            &concurrency["in_flight"],
            &concurrency["rejections"]
        ),
        (&3.into(), &1.into(), &0.into()),
        "{busy}"
    );
    assert_eq!(concurrency["measuring_min_rtt"], true, "{busy}");
    assert!(concurrency["min_rtt_ms"].is_null(), "{busy}");
    let circuit = &busy["circuit"];
    assert_eq!(circuit["max_requests"], circuit_limit(1.into(), 1, true, 1), "{busy}");
    assert_eq!(
        circuit["max_connections"],
        circuit_limit(10.into(), 1, false, 0),
        "{busy}"
    );
    let unlimited = circuit_limit(serde_json::Value::Null, 0, false, 0);
    assert_eq!(circuit["max_pending_requests"], unlimited, "{busy}");

    held.release();
    assert_eq!(first.await.unwrap(), (200, "ok".into()));
    // Slots return as the response body is dropped, just after its last byte.
    let idle = eventually("the slots return", async || {
        let idle = overload_status(&weft).await;
        let returned = idle["concurrency"]["in_flight"] == 0 && idle["circuit"]["max_requests"]["current"] == 0;
        if returned {
            Ok(idle)
        } else {
            Err(idle.to_string())
        }
    })
    .await;
    // The one sample measured minRTT and restored the configured floor.
    assert_eq!(
        (&idle["concurrency"]["limit"], &idle["concurrency"]["measuring_min_rtt"]),
        (&7.into(), &false.into()),
        "{idle}"
    );
    assert!(
        idle["concurrency"]["min_rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{idle}"
    );
    assert_eq!(
        idle["circuit"]["max_requests"],
        circuit_limit(1.into(), 0, false, 1),
        "{idle}"
    );
}
