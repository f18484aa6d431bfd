//! Endpoint health through a real weft: outlier ejection and return, p2c_ewma
//! avoiding a slow endpoint, zone-aware routing and failover, active health
//! checks. Time-dependent checks poll with `eventually` instead of asserting
//! on wall-clock durations.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;

use crate::support::*;

/// An upstream answering `name` with 200, or `failure` while `failing` is set.
/// With `only_path`, only that path fails (a health-check endpoint).
async fn toggled(
    name: &'static str,
    failure: StatusCode,
    failing: Arc<AtomicBool>,
    only_path: Option<&'static str>,
) -> Upstream {
    Upstream::start(move |req: Request<Incoming>| {
        let failing = failing.clone();
        async move {
            let applies = only_path.is_none_or(|p| req.uri().path() == p);
            let status = if applies && failing.load(Ordering::SeqCst) {
                failure
            } else {
                StatusCode::OK
            };
            Response::builder().status(status).body(full(name)).unwrap()
        }
    })
    .await
}

fn endpoint_lines(endpoints: &[(&Upstream, &str)]) -> String {
    endpoints
        .iter()
        .map(|(u, zone)| format!("      - {{ address: {}, zone: {zone} }}\n", u.addr))
        .collect()
}

const LISTENER: &str = "  - name: public
    address: 127.0.0.1:0
    routes:
      - { name: all, match: { path_prefix: / }, cluster: c }";

async fn clusters(weft: &Weft) -> Value {
    let (_, body) = get(&h1_client(), &weft.admin("/clusters")).await;
    serde_json::from_str(&body).unwrap()
}

/// The `/clusters` entry of the endpoint at `addr` in cluster `c`.
async fn endpoint_status(weft: &Weft, addr: std::net::SocketAddr) -> Value {
    let all = clusters(weft).await;
    all[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .cloned()
        .unwrap()
}

/// Waits (bounded) until `done` holds for the `/clusters` entry of `addr`.
async fn wait_for(weft: &Weft, addr: std::net::SocketAddr, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    eventually(&format!("{addr} becomes {what}"), async || {
        let status = endpoint_status(weft, addr).await;
        if done(&status) {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    })
    .await
}

/// Sends `n` GETs; returns (bodies of 200s, statuses of the rest).
async fn send_many(weft: &Weft, n: usize) -> (Vec<String>, Vec<u16>) {
    let client = h1_client();
    let url = weft.url("public", "/").await;
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    for _ in 0..n {
        match get(&client, &url).await {
            (200, body) => ok.push(body),
            (status, _) => failed.push(status),
        }
    }
    (ok, failed)
}

#[tokio::test]
async fn failing_endpoint_is_ejected_after_threshold_and_returns() {
    let good = Upstream::text("good").await;
    let bad = toggled("bad", StatusCode::INTERNAL_SERVER_ERROR, Arc::new(true.into()), None).await;
    let yaml = config(
        LISTENER,
        &format!(
            "  - name: c
    lb: round_robin
    outlier_detection: {{ consecutive_5xx: 3, interval: 100ms, base_ejection_time: 1s, max_ejection_time: 5s, max_ejection_percent: 50 }}
    endpoints:
{}",
            endpoint_lines(&[(&good, "zone-a"), (&bad, "zone-a")])
        ),
    );
    let weft = Weft::start(&yaml).await;

    let (ok, failed) = send_many(&weft, 20).await;
    assert_eq!(failed, [500, 500, 500], "exactly the threshold reaches the client");
    assert!(ok.iter().all(|b| b == "good"));
    let status = endpoint_status(&weft, bad.addr).await;
    assert_eq!(status["ejected"], true, "{status}");
    assert!(
        status["returns_in_ms"].as_u64().is_some_and(|ms| ms <= 1000),
        "{status}"
    );
    let text = metrics(&weft).await;
    assert!(
        text.contains(r#"weft_outlier_ejections_total{cluster="c",reason="consecutive_5xx"} 1"#),
        "{text}"
    );
    let gauge = format!(r#"weft_endpoint_ejected{{cluster="c",endpoint="{}"}} 1"#, bad.addr);
    assert!(text.contains(&gauge), "{text}");

    // Back after base_ejection_time, then ejected again by its next failures.
    let status = wait_for(&weft, bad.addr, "returned", |s| s["ejected"] == false).await;
    assert_eq!(status["returns_in_ms"], Value::Null);
    let (_, failed) = send_many(&weft, 20).await;
    assert_eq!(failed, [500, 500, 500], "it got traffic again");
    assert_eq!(endpoint_status(&weft, bad.addr).await["times_ejected"], 2);
}

#[tokio::test]
async fn slow_endpoint_gets_a_small_share_under_p2c_ewma() {
    let fast1 = Upstream::text("fast").await;
    let fast2 = Upstream::text("fast").await;
    let slow = Upstream::start(|_req| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Response::new(full("slow"))
    })
    .await;
    let yaml = config(
        LISTENER,
        &format!(
            "  - name: c\n    endpoints:\n{}",
            endpoint_lines(&[(&fast1, "z"), (&slow, "z"), (&fast2, "z")])
        ),
    );
    let weft = Weft::start(&yaml).await;
    let (ok, failed) = send_many(&weft, 300).await;
    assert!(failed.is_empty(), "{failed:?}");
    let slow_count = ok.iter().filter(|b| *b == "slow").count();
    // round_robin would give it 100; p2c_ewma shuns it after its first answer.
    assert!(slow_count < 15, "slow endpoint got {slow_count} of 300");
    let status = endpoint_status(&weft, slow.addr).await;
    assert!(status["latency_ewma_ms"].as_f64().unwrap() > 50.0, "{status}");
}

#[tokio::test]
async fn endpoint_that_hangs_past_the_route_timeout_is_shunned_by_p2c_ewma() {
    let fast = Upstream::text("fast").await;
    let hanging = Upstream::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(full("late"))
    })
    .await;
    let yaml = config(
        "  - name: public
    address: 127.0.0.1:0
    routes:
      - { name: all, match: { path_prefix: / }, cluster: c, timeout: 100ms }",
        &format!(
            "  - name: c\n    endpoints:\n{}",
            endpoint_lines(&[(&fast, "z"), (&hanging, "z")])
        ),
    );
    let weft = Weft::start(&yaml).await;
    let (ok, failed) = send_many(&weft, 100).await;
    // Timed-out attempts still report how long they ran, so the hanging
    // endpoint's estimate jumps instead of silently decaying.
    assert!(failed.len() <= 5 && failed.iter().all(|s| *s == 504), "{failed:?}");
    assert!(ok.len() >= 95);
}

#[tokio::test]
async fn zone_aware_routing_stays_local_and_fails_over_to_the_other_zone() {
    let zone_a_failing = Arc::new(AtomicBool::new(false));
    let mut a = Vec::new();
    let mut b = Vec::new();
    for _ in 0..3 {
        a.push(toggled("zone-a", StatusCode::SERVICE_UNAVAILABLE, zone_a_failing.clone(), None).await);
        b.push(Upstream::text("zone-b").await);
    }
    let endpoints: Vec<(&Upstream, &str)> = a
        .iter()
        .map(|u| (u, "zone-a"))
        .chain(b.iter().map(|u| (u, "zone-b")))
        .collect();
    let yaml = format!(
        "node: {{ zone: zone-a }}\n{}",
        config(
            LISTENER,
            &format!(
                "  - name: c
    zone_aware: {{ min_cluster_size: 3 }}
    outlier_detection: {{ consecutive_5xx: 2, consecutive_gateway_failure: 2, base_ejection_time: 60s, max_ejection_time: 60s, max_ejection_percent: 50 }}
    endpoints:
{}",
                endpoint_lines(&endpoints)
            )
        )
    );
    let weft = Weft::start(&yaml).await;

    let (ok, failed) = send_many(&weft, 1000).await;
    assert!(failed.is_empty(), "{failed:?}");
    let local = ok.iter().filter(|b| *b == "zone-a").count();
    assert!(local >= 990, "only {local} of 1000 stayed in zone-a");
    let text = metrics(&weft).await;
    let routed_local = format!(r#"weft_zone_routed_requests_total{{cluster="c",locality="local"}} {local}"#);
    assert!(text.contains(&routed_local), "{text}");
    assert_eq!(clusters(&weft).await[0]["zone_routing"]["routing"], "all_local");

    // zone-a breaks: each of its endpoints fails twice, is ejected, and the
    // rest of the traffic moves to zone-b.
    zone_a_failing.store(true, Ordering::SeqCst);
    let (ok, failed) = send_many(&weft, 300).await;
    assert!(failed.len() <= 6 && failed.iter().all(|s| *s == 503), "{failed:?}");
    assert!(ok[ok.len() - 100..].iter().all(|b| b == "zone-b"));
    let status = clusters(&weft).await;
    assert_eq!(status[0]["zone_routing"]["routing"], "spill", "{status}");
    assert_eq!(status[0]["zone_routing"]["local_share"], 0.0, "{status}");
    for u in &a {
        assert_eq!(endpoint_status(&weft, u.addr).await["ejected"], true);
    }
    let text = metrics(&weft).await;
    assert!(
        text.contains(r#"weft_zone_routed_requests_total{cluster="c",locality="remote"}"#),
        "{text}"
    );
    assert!(text.contains(r#"weft_cluster_panic{cluster="c"} 0"#), "{text}");
}

#[tokio::test]
async fn active_health_check_takes_a_failing_endpoint_out_and_brings_it_back() {
    let flaky_failing = Arc::new(AtomicBool::new(false));
    let steady = Upstream::text("steady").await;
    let flaky = toggled(
        "flaky",
        StatusCode::SERVICE_UNAVAILABLE,
        flaky_failing.clone(),
        Some("/health"),
    )
    .await;
    let yaml = config(
        LISTENER,
        &format!(
            "  - name: c
    lb: round_robin
    health_check: {{ path: /health, interval: 100ms, timeout: 500ms, unhealthy_threshold: 2, healthy_threshold: 2 }}
    endpoints:
{}",
            endpoint_lines(&[(&steady, "z"), (&flaky, "z")])
        ),
    );
    let weft = Weft::start(&yaml).await;
    let (ok, _) = send_many(&weft, 10).await;
    assert!(ok.iter().any(|b| b == "flaky"));

    flaky_failing.store(true, Ordering::SeqCst);
    wait_for(&weft, flaky.addr, "unhealthy", |s| s["health"] == "unhealthy").await;
    let (ok, failed) = send_many(&weft, 50).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok.iter().all(|b| b == "steady"), "an unhealthy endpoint got traffic");
    let gauge = format!(r#"weft_endpoint_healthy{{cluster="c",endpoint="{}"}} 0"#, flaky.addr);
    assert!(metrics(&weft).await.contains(&gauge));

    flaky_failing.store(false, Ordering::SeqCst);
    wait_for(&weft, flaky.addr, "healthy", |s| s["health"] == "healthy").await;
    let (ok, _) = send_many(&weft, 10).await;
    assert!(
        ok.iter().any(|b| b == "flaky"),
        "a recovered endpoint gets traffic again"
    );
}

#[tokio::test]
async fn tcp_cluster_ejects_an_endpoint_that_refuses_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live_addr = live.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = live.accept().await {
            tokio::spawn(async move { s.write_all(b"live").await });
        }
    });
    let dead = refused_addr();
    let dead_addr = dead.addr;
    let yaml = format!(
        "admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: db, address: 127.0.0.1:0, protocol: tcp, cluster: db }}
clusters:
  - name: db
    protocol: tcp
    lb: round_robin
    outlier_detection: {{ consecutive_gateway_failure: 2, base_ejection_time: 60s, max_ejection_percent: 50 }}
    endpoints: [ {{ address: {live_addr} }}, {{ address: {dead_addr} }} ]
"
    );
    let weft = Weft::start(&yaml).await;
    let mut refused = 0;
    for _ in 0..20 {
        let mut client = tokio::net::TcpStream::connect(weft.addr("db").await).await.unwrap();
        let mut reply = String::new();
        let _ = client.read_to_string(&mut reply).await;
        refused += usize::from(reply != "live");
    }
    assert_eq!(refused, 2, "only the failures that caused the ejection");
    assert_eq!(endpoint_status(&weft, dead_addr).await["ejected"], true);
}

#[tokio::test]
async fn reload_keeps_state_of_unchanged_clusters_and_stops_monitors_of_replaced_ones() {
    use parking_lot::Mutex;
    use std::collections::HashMap;

    let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let counted = hits.clone();
    let probed = Upstream::start(move |req: Request<Incoming>| {
        *counted.lock().entry(req.uri().path().to_string()).or_default() += 1;
        async { Response::new(full("probed")) }
    })
    .await;
    let good = Upstream::text("good").await;
    let bad = toggled("bad", StatusCode::BAD_GATEWAY, Arc::new(true.into()), None).await;
    let clusters_yaml = |health_path: &str| {
        format!(
            "  - name: c
    lb: round_robin
    outlier_detection: {{ consecutive_gateway_failure: 1, base_ejection_time: 60s, max_ejection_percent: 50 }}
    endpoints:
{}  - name: probed
    health_check: {{ path: {health_path}, interval: 50ms }}
    endpoints: [ {{ address: {} }} ]",
            endpoint_lines(&[(&good, "z"), (&bad, "z")]),
            probed.addr
        )
    };
    let weft = Weft::start(&config(LISTENER, &clusters_yaml("/old"))).await;
    send_many(&weft, 4).await;
    assert_eq!(endpoint_status(&weft, bad.addr).await["ejected"], true);
    let count = |path: &str| hits.lock().get(path).copied().unwrap_or(0);
    eventually("the first monitor probes /old", async || count("/old") >= 2).await;

    // Only the probed cluster changes: c keeps its ejection, probed restarts.
    weft.write(&config(LISTENER, &clusters_yaml("/new")));
    assert!(weft.app.reload(false).await.unwrap());
    assert_eq!(endpoint_status(&weft, bad.addr).await["ejected"], true);
    eventually("the new monitor probes /new", async || count("/new") >= 2).await;
    // The new monitor's probes are the clock: by its fifth more, one with the
    // same interval left running would have probed too.
    let old_probes = count("/old");
    let new_probes = count("/new");
    eventually("the new monitor probes five more times", async || {
        count("/new") >= new_probes + 5
    })
    .await;
    assert_eq!(
        count("/old"),
        old_probes,
        "the replaced cluster still probes: {:?}",
        hits.lock()
    );
}

#[test]
fn weft_zone_overrides_node_zone() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.yaml");
    let check = |zone: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_weft"));
        command.args(["check", "--config", demo]).env_remove("WEFT_ZONE");
        if let Some(zone) = zone {
            command.env("WEFT_ZONE", zone);
        }
        String::from_utf8(command.output().unwrap().stdout).unwrap()
    };
    assert!(check(None).contains("node.zone zone-a"), "{}", check(None));
    assert!(check(Some("zone-b")).contains("node.zone zone-b"));
}
