//! The admin page and `/stats`: the JSON the page reads, and the page itself
//! rendered by a real browser (headless Chromium from Debian's `chromium`
//! package, which `.ci/run` installs). Without it the browser test fails
//! under CI (`CI` set) and, elsewhere, skips saying so.

use std::time::Duration;

use crate::support::*;
use crate::udp::{Client as UdpClient, UdpEndpoint};

async fn weft_with_traffic() -> (Weft, Upstream, UdpEndpoint) {
    let upstream = Upstream::text("hello").await;
    let echo = UdpEndpoint::echo().await;
    let yaml = config(
        "  - name: public
    address: 127.0.0.1:0
    routes:
      - { name: api, match: { path_prefix: /api }, cluster: web }
      - { name: teapot, match: { path_exact: /tea }, direct_response: { status: 503 } }
  - { name: dns, address: 127.0.0.1:0, protocol: udp, cluster: dns }",
        &format!(
            "  - {{ name: web, endpoints: [ {{ address: {}, zone: zone-a }} ], adaptive_concurrency: {{}}, circuit_breaker: {{ max_requests: 100 }} }}\n  - {{ name: dns, protocol: udp, endpoints: [ {{ address: {} }} ] }}\n",
            upstream.addr, echo.addr
        ),
    );
    let weft = Weft::start(&yaml).await;
    let client = h1_client();
    for _ in 0..3 {
        assert_eq!(get(&client, &weft.url("public", "/api").await).await.0, 200);
    }
    assert_eq!(get(&client, &weft.url("public", "/tea").await).await.0, 503);
    assert_eq!(get(&client, &weft.url("public", "/nothing").await).await.0, 404);
    let udp_client = UdpClient::new(weft.addr("dns").await).await;
    assert_eq!(udp_client.ask(b"hello").await, b"hello");
    (weft, upstream, echo)
}

#[tokio::test]
async fn stats_json_counts_requests_and_errors() {
    let (weft, _upstream, _echo) = weft_with_traffic().await;
    let (status, body) = get(&h1_client(), &weft.admin("/stats")).await;
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["listeners"]["public"]["requests"], 5, "{body}");
    assert_eq!(stats["listeners"]["public"]["errors"], 1, "{body}");
    assert_eq!(stats["listeners"]["public"]["client_errors"], 1, "{body}");
    assert_eq!(stats["clusters"]["web"]["requests"], 3, "{body}");
    let routes = stats["routes"].as_array().unwrap();
    let teapot = routes.iter().find(|r| r["route"] == "teapot").unwrap();
    assert_eq!(
        (teapot["requests"].as_u64(), teapot["errors"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(stats["timestamp_ms"].as_u64().unwrap() > 0);

    let (status, page) = get(&h1_client(), &weft.admin("/")).await;
    assert_eq!(status, 200);
    assert!(page.starts_with("<!doctype html>"));
}

/// The command documented in docs/observability.md, with `--dump-dom` in
/// place of `--screenshot`.
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|name| {
        std::process::Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[tokio::test]
async fn admin_page_renders_in_headless_chromium() {
    let Some(browser) = chromium() else {
        let missing = "chromium is not installed (apt-get install chromium; .ci/run does)";
        assert!(std::env::var_os("CI").is_none(), "{missing}");
        println!("SKIPPED admin_page_renders_in_headless_chromium: {missing}");
        return;
    };
    let (weft, upstream, _echo) = weft_with_traffic().await;
    let profile = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(weft.admin("/"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("chromium did not finish in 90 s")
        .unwrap();
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Rendered by the page's script from /config, /clusters and /stats.
    for expected in [
        "<td>public</td>",
        "<td>api</td>",
        "<td>teapot</td>",
        "direct 503",
        "(unmatched)",
        "<h3>web</h3>",
        &format!("<td>{}</td>", upstream.addr),
        "<td>zone-a</td>",
        "endpoints from ",
        "<td>static</td>",
        "healthy",
        "concurrency limit ",
        "max_requests <b><span class=\"ok\">0/100, 0 refused</span></b>",
        // The UDP listener, in the listeners table and under its cluster.
        "<td>udp</td><td class=\"num\">1 sessions</td>",
        "udp listener dns <b>1/10000 sessions, 1 in, 1 back, 0 dropped</b>",
        "updated ",
    ] {
        assert!(dom.contains(expected), "{expected:?} not rendered in:\n{dom}");
    }
    assert!(
        dom.contains("<span id=\"error\"></span>"),
        "the page reported an error:\n{dom}"
    );
}
