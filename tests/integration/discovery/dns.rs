//! DNS discovery against a real DNS server on loopback: records added and
//! removed while traffic flows, state kept for the endpoints that stay, the
//! last set kept while the server is down, the records' TTL honoured, a
//! name with no records answered with 503, and a reload that restarts only
//! the discovery whose block changed.
//!
//! Every endpoint of a DNS cluster shares one port, so the upstreams listen
//! on 127.0.0.1, 127.0.0.2, ... with the same port.

use std::net::{IpAddr, Ipv4Addr};

use http::{Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use super::dns_server::DnsServer;
use super::*;

/// Listeners on 127.0.0.1 .. 127.0.0.n, all on one port.
async fn listeners_on_one_port(n: u8) -> Vec<TcpListener> {
    'port: loop {
        let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for i in 2..=n {
            match TcpListener::bind((Ipv4Addr::new(127, 0, 0, i), port)).await {
                Ok(l) => listeners.push(l),
                // Taken on that address by someone else: try another port.
                Err(_) => continue 'port,
            }
        }
        return listeners;
    }
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn dns_config(dns: &DnsServer, listeners: &str, clusters: &str) -> String {
    format!(
        "resolver: {{ servers: [\"{}\"] }}\n{}",
        dns.addr,
        config(listeners, clusters)
    )
}

const ONE_ROUTE: &str = "  - name: public
    address: 127.0.0.1:0
    routes:
      - { name: all, match: { path_prefix: / }, cluster: web }";

fn metric_of(text: &str, family: &str, cluster: &str, result: Option<&str>) -> f64 {
    let labels = match result {
        Some(r) => format!("{{cluster=\"{cluster}\",result=\"{r}\"}}"),
        None => format!("{{cluster=\"{cluster}\"}}"),
    };
    metric(text, &format!("{family}{labels} "))
}

#[tokio::test]
async fn endpoints_follow_the_records_while_traffic_flows_and_those_that_stay_keep_their_state() {
    let dns = DnsServer::start().await;
    let mut listeners = listeners_on_one_port(4).await.into_iter();
    let port = listeners.as_slice()[0].local_addr().unwrap().port();
    let u1 = named(listeners.next().unwrap(), "u1");
    // u2 fails requests for /fail, so outlier detection can eject it on purpose.
    let u2 = Upstream::serve(listeners.next().unwrap(), |req: http::Request<Incoming>| async move {
        let status = if req.uri().path() == "/fail" {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        Response::builder().status(status).body(full("u2")).unwrap()
    });
    let u3 = named(listeners.next().unwrap(), "u3");
    let u4 = named(listeners.next().unwrap(), "u4");
    dns.set("web", &[ip(1), ip(2), ip(3)], 1).await;
    let clusters = format!(
        "  - name: web
    discovery: {{ dns: {{ name: web.weft.test., port: {port}, refresh: 500ms, min_refresh: 100ms }} }}
    outlier_detection: {{ consecutive_5xx: 2, max_ejection_percent: 50, base_ejection_time: 1h, max_ejection_time: 1h }}"
    );
    let weft = Weft::start(&dns_config(&dns, ONE_ROUTE, &clusters)).await;
    let url = weft.url("public", "/").await;
    let client = h1_client();

    // The start waited for the first resolution: every endpoint is there, marked with its source.
    let status = cluster_status(&weft, "web").await;
    assert_eq!(status["discovery"]["kind"], "dns");
    assert_eq!(status["discovery"]["state"], "ok");
    let source = format!("dns:web.weft.test.:{port}");
    assert_eq!(status["endpoints"].as_array().unwrap().len(), 3);
    assert!(
        status["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["source"] == source.as_str()),
        "{status}"
    );
    assert_eq!(get(&client, &url).await.0, 200);

    // Eject u2 (each failed request on it counts; the others answer 200).
    let fail_url = weft.url("public", "/fail").await;
    let u2_addr = u2.addr.to_string();
    eventually("u2 is ejected", async || {
        get(&client, &fail_url).await;
        let status = cluster_status(&weft, "web").await;
        status["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["address"] == u2_addr.as_str() && e["ejected"] == true)
    })
    .await;
    // Connections closed so far (the traffic below may open more: a request
    // can beat a finished one's connection back to the pool).
    let closed = |u: &Upstream| {
        let open = u.open.load(Ordering::SeqCst);
        u.connections.load(Ordering::SeqCst) - open
    };
    // The balancer may have sent u1 or u3 nothing yet (u2 can be ejected
    // after its first two requests): give each a pooled connection.
    eventually("u1 and u3 have pooled connections", async || {
        assert_eq!(get(&client, &url).await.0, 200);
        u1.open.load(Ordering::SeqCst) > 0 && u3.open.load(Ordering::SeqCst) > 0
    })
    .await;
    let u1_closed = closed(&u1);

    // 127.0.0.3 leaves and 127.0.0.4 joins while requests flow.
    let traffic = Traffic::start(url.clone());
    dns.set("web", &[ip(1), ip(2), ip(4)], 1).await;
    eventually("u4 serves traffic", async || {
        traffic.last_body().as_deref() == Some("u4")
    })
    .await;
    let mut expected = vec![u1.addr.to_string(), u2_addr.clone(), u4.addr.to_string()];
    expected.sort();
    assert_eq!(endpoint_addresses(&weft, "web").await, expected);
    eventually("the removed endpoint's pooled connection closes", async || {
        u3.open.load(Ordering::SeqCst) == 0
    })
    .await;
    let answers = traffic.stop().await;
    assert_all_ok(&answers);
    assert!(
        answers.iter().all(|(_, body)| body != "u2"),
        "the ejected endpoint stays ejected"
    );

    // The endpoints that stayed kept their state: u2's ejection, u1's pooled connection.
    let status = cluster_status(&weft, "web").await;
    let u2_status = status["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == u2_addr.as_str())
        .cloned()
        .unwrap();
    assert_eq!(
        (u2_status["ejected"].clone(), u2_status["times_ejected"].clone()),
        (true.into(), 1.into()),
        "{u2_status}"
    );
    assert_eq!(closed(&u1), u1_closed, "u1 kept its pooled connection");

    let text = metrics(&weft).await;
    assert_eq!(metric_of(&text, "weft_cluster_endpoints", "web", None), 3.0);
    assert!(metric_of(&text, "weft_discovery_updates_total", "web", Some("ok")) >= 2.0);
    assert!(metric_of(&text, "weft_discovery_last_success_timestamp_seconds", "web", None) > 1.7e9);
}

#[tokio::test]
async fn the_ttl_is_honoured_and_the_last_set_stays_while_the_server_is_down() {
    let mut dns = DnsServer::start().await;
    let mut listeners = listeners_on_one_port(2).await.into_iter();
    let port = listeners.as_slice()[0].local_addr().unwrap().port();
    let _u1 = named(listeners.next().unwrap(), "u1");
    let _u2 = named(listeners.next().unwrap(), "u2");
    dns.set("web", &[ip(1)], 1).await;
    // An hour between refreshes: only the records' 1 s TTL can bring a change in sooner.
    let clusters = format!(
        "  - name: web
    discovery: {{ dns: {{ name: web.weft.test., port: {port}, refresh: 1h, min_refresh: 100ms }} }}"
    );
    let weft = Weft::start(&dns_config(&dns, ONE_ROUTE, &clusters)).await;
    let url = weft.url("public", "/").await;
    let client = h1_client();
    assert_eq!(get(&client, &url).await, (200, "u1".into()));

    dns.set("web", &[ip(2)], 1).await;
    eventually("the change is seen within the TTL", async || {
        get(&client, &url).await.1 == "u2"
    })
    .await;

    dns.stop().await;
    eventually("the lookup fails", async || {
        cluster_status(&weft, "web").await["discovery"]["state"] == "failing"
    })
    .await;
    let status = cluster_status(&weft, "web").await;
    assert_eq!(status["discovery"]["last_result"], "error");
    assert!(
        status["discovery"]["last_error"]
            .as_str()
            .unwrap()
            .contains("web.weft.test."),
        "{status}"
    );
    for _ in 0..20 {
        assert_eq!(
            get(&client, &url).await,
            (200, "u2".into()),
            "the last set keeps serving"
        );
    }
    let text = metrics(&weft).await;
    assert!(metric_of(&text, "weft_discovery_updates_total", "web", Some("error")) >= 1.0);
    assert_eq!(metric_of(&text, "weft_cluster_endpoints", "web", None), 1.0);

    dns.set("web", &[ip(1)], 1).await;
    dns.restart().await;
    eventually("the set follows DNS again", async || get(&client, &url).await.1 == "u1").await;
    assert_eq!(cluster_status(&weft, "web").await["discovery"]["state"], "ok");
}

#[tokio::test]
async fn a_name_without_records_answers_503_and_a_reload_restarts_only_changed_discoveries() {
    let dns = DnsServer::start().await;
    let mut listeners = listeners_on_one_port(2).await.into_iter();
    let port = listeners.as_slice()[0].local_addr().unwrap().port();
    let _u1 = named(listeners.next().unwrap(), "u1");
    let _u2 = named(listeners.next().unwrap(), "u2");
    dns.set("a", &[ip(1)], 3600).await;
    dns.set("b", &[ip(1)], 3600).await;
    dns.set("b2", &[ip(2)], 3600).await;
    let listeners = "  - name: public
    address: 127.0.0.1:0
    routes:
      - { name: a, match: { path_prefix: /a }, cluster: a }
      - { name: b, match: { path_prefix: /b }, cluster: b }
      - { name: c, match: { path_prefix: /c }, cluster: c }";
    let cluster = |name: &str, host: &str, extra: &str| {
        format!("  - name: {name}\n    discovery: {{ dns: {{ name: {host}.weft.test., port: {port}, refresh: 1h }} }}\n{extra}")
    };
    let clusters = [
        cluster("a", "a", ""),
        cluster("b", "b", ""),
        cluster("c", "nothing", ""),
    ]
    .join("\n");
    let weft = Weft::start(&dns_config(&dns, listeners, &clusters)).await;
    let client = h1_client();

    // c never had an endpoint.
    let (status, body) = get(&client, &weft.url("public", "/c").await).await;
    assert_eq!(status, 503);
    assert!(body.starts_with("no healthy upstream"), "{body}");
    assert_eq!(cluster_status(&weft, "c").await["discovery"]["state"], "failing");
    let text = metrics(&weft).await;
    assert_eq!(metric_of(&text, "weft_cluster_endpoints", "c", None), 0.0);
    for name in ["a", "b"] {
        assert_eq!(
            metric_of(&text, "weft_discovery_updates_total", name, Some("ok")),
            1.0,
            "{name}"
        );
    }

    // a: another key changes (the cluster is rebuilt, its discovery is not);
    // b: its discovery block changes (a new lookup of another name).
    let clusters = [
        cluster("a", "a", "    lb: random"),
        cluster("b", "b2", ""),
        cluster("c", "nothing", ""),
    ]
    .join("\n");
    weft.write(&dns_config(&dns, listeners, &clusters));
    assert_eq!(weft.app.reload(false).await, Ok(true));
    assert_eq!(get(&client, &weft.url("public", "/a").await).await, (200, "u1".into()));
    assert_eq!(get(&client, &weft.url("public", "/b").await).await, (200, "u2".into()));
    let text = metrics(&weft).await;
    assert_eq!(metric_of(&text, "weft_discovery_updates_total", "a", Some("ok")), 1.0);
    assert_eq!(
        metric_of(&text, "weft_discovery_updates_total", "a", Some("unchanged")),
        0.0,
        "a did not look again"
    );
    assert_eq!(
        metric_of(&text, "weft_discovery_updates_total", "b", Some("ok")),
        2.0,
        "b looked anew"
    );
}
