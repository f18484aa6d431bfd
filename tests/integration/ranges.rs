//! What `weft check` accepts, `weft run` runs: every numeric and duration key
//! at the top of its range (docs/config.md, Ranges) starts, serves mirrored,
//! retried, split and timed requests and UDP datagrams, and drains.

use crate::support::*;

#[tokio::test]
async fn every_key_at_the_top_of_its_range_runs() {
    let primary = Upstream::text("app").await;
    let shadow = Upstream::text("app").await;
    let echo = crate::udp::UdpEndpoint::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "admin: {{ address: 127.0.0.1:0 }}
access_log: {{ enabled: false }}
drain_timeout: 1h
drain_delay: 1h
node: {{ zone: a, callers: {{ a: 1000000 }} }}
listeners:
  - name: public
    address: 127.0.0.1:0
    limits:
      {{ max_request_headers_kb: 8192, header_read_timeout: 1h, max_connections: 1000000,
        max_requests_per_connection: 1000000000, max_concurrent_streams: 10000, max_request_headers: 10000,
        max_request_body_bytes: 1099511627776, stream_idle_timeout: 24h }}
    quic: {{ idle_timeout: 1h }}
    routes:
      - name: split
        match: {{ path_prefix: /split }}
        split: [ {{ cluster: app, weight: 1000000 }}, {{ cluster: shadow, weight: 1000000 }} ]
      - name: main
        cluster: app
        timeout: 1h
        limits: {{ max_request_body_bytes: 1099511627776 }}
        retry: {{ max_retries: 100, per_try_timeout: 1h, backoff: {{ base: 1h, max: 1h }}, replay_buffer_bytes: 67108864 }}
        mirror:
          cluster: shadow
          percent: 100
          max_body_bytes: 67108864
          max_in_flight: 10000
          compare: {{ log: {{ path: mismatches.log, sample_per_second: 10000 }} }}
  - name: datagrams
    address: 127.0.0.1:0
    protocol: udp
    cluster: echo
    udp: {{ idle_timeout: 1h, max_sessions: 1000000, max_datagram_bytes: 65527 }}
  - name: captured
    address: 127.0.0.1:0
    original_destination: true
    opaque_ports: [ 65535 ]
    protocol_detection_timeout: 1h
    idle_timeout: 24h
    cluster: passthrough
    routes: [ {{ name: passthrough, cluster: passthrough }} ]
clusters:
  - {{ name: passthrough, type: original_destination, port_override: 65535 }}
  - name: app
    connect_timeout: 1h
    idle_timeout: 1h
    limits: {{ max_response_headers_kb: 8192 }}
    endpoints: [ {{ address: {app}, weight: 1000000, zone: a }} ]
    outlier_detection:
      {{ consecutive_5xx: 1000000, consecutive_gateway_failure: 1000000, interval: 1h, base_ejection_time: 1h,
        max_ejection_time: 1h, max_ejection_percent: 100,
        success_rate: {{ minimum_hosts: 1000000, request_volume: 1000000, stdev_factor: 1000 }} }}
    health_check: {{ path: /, interval: 1h, timeout: 1h, unhealthy_threshold: 1000000, healthy_threshold: 1000000 }}
    zone_aware: {{ min_cluster_size: 1000000, panic_threshold_percent: 100 }}
    adaptive_concurrency:
      {{ sample_aggregate_percentile: 100, concurrency_update_interval: 1h, min_rtt_calc_interval: 1h,
        min_rtt_calc_request_count: 1000000, min_rtt_buffer_percent: 1000, jitter_percent: 100,
        min_concurrency: 1000000, min_concurrency_limit: 1000000, max_concurrency_limit: 1000000 }}
    retry_budget: {{ percent: 1000, min_retries_per_second: 1000000, window: 1h }}
    circuit_breaker: {{ max_connections: 1000000, max_pending_requests: 1000000, max_requests: 1000000 }}
  - name: shadow
    endpoints: [ {{ address: {shadow} }} ]
  - name: echo
    protocol: udp
    endpoints: [ {{ address: {echo}, weight: 1000000 }} ]
",
        app = primary.addr,
        shadow = shadow.addr,
        echo = echo.addr
    );
    let app = start_in(dir.path(), &yaml).await;
    let weft = Weft {
        path: dir.path().join("weft.yaml"),
        app,
        dir,
    };
    let client = h1_client();
    let base = format!("http://{}", weft.addr("public").await);
    let big_header = "a".repeat(100_000);
    for _ in 0..3 {
        let req = http::Request::get(format!("{base}/"))
            .header("x-big", &big_header)
            .body(full(""))
            .unwrap();
        assert_eq!(send(&client, req).await, (200, "app".into()));
        assert_eq!(get(&client, &format!("{base}/split")).await, (200, "app".into()));
    }
    let compared = r#"weft_mirror_results_total{cluster="shadow",result="match",route="main"} 3"#;
    eventually("the mirrored answers are compared", async || {
        metrics(&weft).await.contains(compared)
    })
    .await;
    let udp = crate::udp::Client::new(weft.addr("datagrams").await).await;
    let largest_ipv4 = vec![7u8; 65_507];
    assert!(udp.ask(&largest_ipv4).await == largest_ipv4);
    drop(client);
    weft.app.shutdown().await;
}
