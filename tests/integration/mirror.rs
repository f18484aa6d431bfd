//! Mirroring with comparison and sticky splits, against real
//! upstreams: what the shadow receives, how pairs are classified, that a
//! hanging shadow costs the client nothing, and that sticky users stay put.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use serde_json::Value;

use crate::support::*;

/// Answers every request with `body` as JSON, counting requests and shadow-marked ones.
struct JsonUpstream {
    upstream: Upstream,
    requests: Arc<AtomicU64>,
    shadow_marked: Arc<AtomicU64>,
}

async fn json_upstream(body: impl Fn(u64) -> String + Send + Sync + 'static) -> JsonUpstream {
    let requests = Arc::new(AtomicU64::new(0));
    let shadow_marked = Arc::new(AtomicU64::new(0));
    let body = Arc::new(body);
    let (r, s) = (requests.clone(), shadow_marked.clone());
    let upstream = Upstream::start(move |req: Request<Incoming>| {
        let n = r.fetch_add(1, Ordering::SeqCst);
        if req.headers().get("x-weft-shadow").is_some_and(|v| v == "true") {
            s.fetch_add(1, Ordering::SeqCst);
        }
        let text = body(n);
        async move {
            Response::builder()
                .header("content-type", "application/json")
                .body(full(text))
                .unwrap()
        }
    })
    .await;
    JsonUpstream {
        upstream,
        requests,
        shadow_marked,
    }
}

fn cluster(name: &str, u: &Upstream) -> String {
    format!("  - {{ name: {name}, endpoints: [ {{ address: {} }} ] }}\n", u.addr)
}

/// One listener `web` with the given routes.
fn listener(routes: &str) -> String {
    format!("  - name: web\n    address: 127.0.0.1:0\n    routes:\n{routes}")
}

/// The `/compare` entry of `route` once its results add up to `expected`.
async fn results(weft: &Weft, route: &str, expected: u64) -> Value {
    eventually(&format!("the results of {route} add up to {expected}"), async || {
        let report: Value = serde_json::from_str(&get(&h1_client(), &weft.admin("/compare")).await.1).unwrap();
        let entry = report
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["route"] == route)
            .cloned()
            .ok_or_else(|| report.to_string())?;
        let total: u64 = entry["results"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        if total >= expected {
            Ok(entry)
        } else {
            Err(entry.to_string())
        }
    })
    .await
}

async fn get_n(weft: &Weft, path: &str, n: usize, expect_body: &str) {
    let client = h1_client();
    let url = weft.url("web", path).await;
    for _ in 0..n {
        assert_eq!(get(&client, &url).await, (200, expect_body.to_string()));
    }
}

#[tokio::test]
async fn identical_backends_only_match_and_shadows_are_marked() {
    let body = r#"{"a":1,"items":[{"id":1}]}"#;
    let old = json_upstream(move |_| body.into()).await;
    let new = json_upstream(move |_| body.into()).await;
    let routes = "      - name: api
        match: { path_prefix: / }
        cluster: old
        mirror: { cluster: new, compare: { headers: [content-type], body: json } }";
    let clusters = cluster("old", &old.upstream) + &cluster("new", &new.upstream);
    let weft = Weft::start(&config(&listener(routes), &clusters)).await;
    get_n(&weft, "/x", 20, body).await;
    let entry = results(&weft, "api", 20).await;
    assert_eq!(entry["results"]["match"], 20, "{entry}");
    assert_eq!(entry["requests"], 20);
    assert_eq!(old.shadow_marked.load(Ordering::SeqCst), 0);
    assert_eq!(new.shadow_marked.load(Ordering::SeqCst), 20);
    let text = metrics(&weft).await;
    assert!(
        text.contains(r#"weft_mirror_requests_total{cluster="new",route="api"} 20"#),
        "{text}"
    );
    assert!(
        text.contains(r#"weft_mirror_results_total{cluster="new",result="match",route="api"} 20"#),
        "{text}"
    );
    assert!(
        text.contains(r#"weft_mirror_duration_seconds_count{side="shadow"} 20"#),
        "{text}"
    );
    assert!(
        text.contains(r#"weft_mirror_duration_seconds_count{side="primary"} 20"#),
        "{text}"
    );
}

#[tokio::test]
async fn one_differing_field_is_a_mismatch_naming_its_path_unless_ignored() {
    let old =
        json_upstream(|n| format!(r#"{{"user":{{"tier":1}},"generated_at":{n},"items":[{{"etag":"a{n}"}}]}}"#)).await;
    let new = json_upstream(|n| {
        format!(
            r#"{{"user":{{"tier":2}},"generated_at":{},"items":[{{"etag":"b{n}"}}]}}"#,
            n + 7
        )
    })
    .await;
    let routes = "      - name: strict
        match: { path_prefix: /strict }
        cluster: old
        mirror:
          cluster: new
          compare: { ignore_json_paths: [\"$.generated_at\", \"$.items[*].etag\"], log: { path: mismatches.jsonl, sample_per_second: 1000 } }
      - name: lenient
        match: { path_prefix: /lenient }
        cluster: old
        mirror: { cluster: new, compare: { ignore_json_paths: [\"$.generated_at\", \"$.items[*].etag\", \"$.user.tier\"] } }";
    let clusters = cluster("old", &old.upstream) + &cluster("new", &new.upstream);
    let weft = Weft::start(&config(&listener(routes), &clusters)).await;
    let client = h1_client();
    for path in ["/strict", "/lenient"] {
        for _ in 0..10 {
            let (status, body) = get(&client, &weft.url("web", path).await).await;
            assert_eq!(status, 200);
            assert!(
                body.contains(r#""tier":1"#),
                "the client gets the primary's answer: {body}"
            );
        }
    }
    let strict = results(&weft, "strict", 10).await;
    assert_eq!(strict["results"]["mismatch"], 10, "{strict}");
    let last = &strict["recent_mismatches"][0];
    assert_eq!(last["method"], "GET");
    assert_eq!(last["path"], "/strict");
    assert_eq!(last["differences"]["body"][0]["path"], "$.user.tier", "{last}");
    assert_eq!(last["differences"]["body"][0]["primary"], 1);
    assert_eq!(last["differences"]["body"][0]["shadow"], 2);
    assert_eq!(last["differences"]["body"].as_array().unwrap().len(), 1, "{last}");
    let lenient = results(&weft, "lenient", 10).await;
    assert_eq!(lenient["results"]["match"], 10, "{lenient}");
    let log = std::fs::read_to_string(weft.dir.path().join("mismatches.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 10);
    let line: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(line["primary_status"], 200);
    assert_eq!(line["differences"]["body"][0]["path"], "$.user.tier");
}

#[tokio::test]
async fn differences_between_two_old_copies_are_noise() {
    // `nonce` differs on every answer of every copy; `id` is stable.
    let old = json_upstream(|n| format!(r#"{{"id":1,"nonce":{n}}}"#)).await;
    let old_copy = json_upstream(|n| format!(r#"{{"id":1,"nonce":{}}}"#, n + 1000)).await;
    let new = json_upstream(|n| format!(r#"{{"id":1,"nonce":{}}}"#, n + 2000)).await;
    let routes = "      - name: api
        match: { path_prefix: / }
        cluster: old
        mirror: { cluster: new, compare: { noise_cluster: old-copy } }";
    let clusters =
        cluster("old", &old.upstream) + &cluster("old-copy", &old_copy.upstream) + &cluster("new", &new.upstream);
    let weft = Weft::start(&config(&listener(routes), &clusters)).await;
    let client = h1_client();
    for _ in 0..10 {
        assert_eq!(get(&client, &weft.url("web", "/").await).await.0, 200);
    }
    let entry = results(&weft, "api", 10).await;
    assert_eq!(entry["results"]["noise"], 10, "{entry}");
    assert_eq!(entry["results"]["mismatch"], 0);
    assert_eq!(old_copy.requests.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn a_hanging_shadow_costs_the_client_nothing_and_extra_shadows_are_dropped() {
    let old = Upstream::text("old").await;
    let hanging = Upstream::start(|_req| async {
        std::future::pending::<()>().await;
        Response::new(full(""))
    })
    .await;
    let routes = "      - { name: plain, match: { path_prefix: /plain }, cluster: old, timeout: 30s }
      - name: mirrored
        match: { path_prefix: /mirrored }
        cluster: old
        timeout: 30s
        mirror: { cluster: hanging, max_in_flight: 2, compare: { body: exact } }";
    let clusters = cluster("old", &old) + &cluster("hanging", &hanging);
    let weft = Weft::start(&config(&listener(routes), &clusters)).await;
    let client = h1_client();
    // The same requests with and without a mirror: every one completes well
    // within a deadline far shorter than the shadow's 30 s.
    for path in ["/plain", "/mirrored"] {
        let url = weft.url("web", path).await;
        for _ in 0..20 {
            let answer = tokio::time::timeout(Duration::from_secs(5), get(&client, &url)).await;
            assert_eq!(answer.expect("primary delayed by the shadow"), (200, "old".into()));
        }
    }
    let entry = results(&weft, "mirrored", 18).await;
    assert_eq!(entry["requests"], 20);
    assert_eq!(entry["results"]["dropped"], 18, "{entry}");
    let compared: u64 = ["match", "mismatch", "noise", "shadow_error"]
        .iter()
        .map(|r| entry["results"][r].as_u64().unwrap())
        .sum();
    assert_eq!(compared, 0, "the two in-flight shadows still hang: {entry}");
}

#[tokio::test]
async fn writes_are_mirrored_only_when_listed_and_carry_their_body() {
    let old = Upstream::echo_body().await;
    let new_bodies = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let seen = new_bodies.clone();
    let new = Upstream::start(move |req: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            use http_body_util::BodyExt;
            let body = req.into_body().collect().await.unwrap().to_bytes();
            seen.lock().push(String::from_utf8_lossy(&body).into_owned());
            Response::new(full(body))
        }
    })
    .await;
    let routes = "      - { name: reads, match: { path_prefix: /reads }, cluster: old, mirror: { cluster: new } }
      - { name: writes, match: { path_prefix: /writes }, cluster: old, mirror: { cluster: new, methods: [POST], max_body_bytes: 1KiB, compare: { body: exact } } }";
    let clusters = cluster("old", &old) + &cluster("new", &new);
    let weft = Weft::start(&config(&listener(routes), &clusters)).await;
    let client = h1_client();
    let post = |path: String, body: &'static str| Request::post(path).body(full(body)).unwrap();
    for _ in 0..5 {
        let url = weft.url("web", "/reads").await;
        assert_eq!(
            send(&client, post(url, "not mirrored")).await,
            (200, "not mirrored".into())
        );
    }
    let url = weft.url("web", "/writes").await;
    assert_eq!(send(&client, post(url.clone(), "hello")).await, (200, "hello".into()));
    let big = "x".repeat(2000).leak();
    assert_eq!(
        send(&client, post(url, big)).await.1.len(),
        2000,
        "a large body still reaches the primary"
    );
    // A chunked body (no content-length) that outgrows the limit: the
    // primary still gets every byte, the shadow is abandoned.
    use http_body_util::{BodyExt, StreamBody};
    let frames: Vec<Result<hyper::body::Frame<bytes::Bytes>, BoxError>> = (0..3)
        .map(|_| Ok(hyper::body::Frame::data(bytes::Bytes::from(vec![b'z'; 600]))))
        .collect();
    let chunked = Request::post(weft.url("web", "/writes").await)
        .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        .unwrap();
    assert_eq!(send(&client, chunked).await.1.len(), 1800);
    let entry = results(&weft, "writes", 2).await;
    assert_eq!(entry["results"]["match"], 1, "{entry}");
    assert_eq!(entry["results"]["skipped_large"], 1, "{entry}");
    assert_eq!(*new_bodies.lock(), ["hello"]);
    let report: Value = serde_json::from_str(&get(&client, &weft.admin("/compare")).await.1).unwrap();
    let reads = report
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["route"] == "reads")
        .unwrap();
    assert_eq!(reads["requests"], 0, "POST is not mirrored by default");
}

#[tokio::test]
async fn large_primary_bodies_stream_whole_and_are_skipped() {
    let big: &'static str = "y".repeat(5000).leak();
    let old = Upstream::text(big).await;
    let new = Upstream::text(big).await;
    let routes = "      - { name: api, match: { path_prefix: / }, cluster: old, mirror: { cluster: new, max_body_bytes: 1000, compare: { body: exact } } }";
    let clusters = cluster("old", &old) + &cluster("new", &new);
    let weft = Weft::start(&config(&listener(routes), &clusters)).await;
    get_n(&weft, "/", 3, big).await;
    let entry = results(&weft, "api", 3).await;
    assert_eq!(entry["results"]["skipped_large"], 3, "{entry}");
}

#[tokio::test]
async fn sticky_split_keeps_each_user_on_one_side() {
    let stable = Upstream::text("stable").await;
    let canary = Upstream::text("canary").await;
    let routes = "      - name: split
        match: { path_prefix: / }
        split: [ { cluster: stable, weight: 50 }, { cluster: canary, weight: 50 } ]
        sticky: { header: x-user-id }";
    let clusters = cluster("stable", &stable) + &cluster("canary", &canary);
    let weft = Weft::start(&config(&listener(routes), &clusters)).await;
    let client = h1_client();
    let url = weft.url("web", "/").await;
    let mut canary_users = 0;
    for user in 0..100 {
        let mut sides = std::collections::HashSet::new();
        for _ in 0..10 {
            let req = Request::get(&url)
                .header("x-user-id", format!("user-{user}"))
                .body(full(""))
                .unwrap();
            let (status, side) = send(&client, req).await;
            assert_eq!(status, 200);
            sides.insert(side);
        }
        assert_eq!(sides.len(), 1, "user-{user} flipped between {sides:?}");
        canary_users += usize::from(sides.contains("canary"));
    }
    assert!(
        (30..=70).contains(&canary_users),
        "{canary_users} of 100 users on a 50% canary"
    );
    // Without the header, requests split at random: both sides show up.
    let mut sides = std::collections::HashSet::new();
    for _ in 0..100 {
        sides.insert(get(&client, &url).await.1);
    }
    assert_eq!(sides.len(), 2);
}

#[tokio::test]
async fn clusters_report_recent_error_rate_and_latency_percentiles() {
    let good = Upstream::text("good").await;
    let bad = Upstream::start(|_req| async {
        let mut response = Response::new(full("bad"));
        *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        response
    })
    .await;
    let routes = "      - { name: good, match: { path_prefix: /good }, cluster: good }
      - { name: bad, match: { path_prefix: /bad }, cluster: bad }";
    let clusters = cluster("good", &good) + &cluster("bad", &bad);
    let weft = Weft::start(&config(&listener(routes), &clusters)).await;
    let client = h1_client();
    for path in ["/good", "/bad"] {
        for _ in 0..10 {
            get(&client, &weft.url("web", path).await).await;
        }
    }
    let status: Value = serde_json::from_str(&get(&client, &weft.admin("/clusters")).await.1).unwrap();
    let recent = |name: &str| {
        let c = status.as_array().unwrap().iter().find(|c| c["name"] == name).unwrap();
        c["recent"].clone()
    };
    assert_eq!(recent("good")["requests"], 10);
    assert_eq!(recent("good")["error_rate"], 0.0);
    assert_eq!(recent("bad")["error_rate"], 1.0);
    assert!(recent("good")["p99_ms"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn a_weight_step_reloads_without_rebinding_the_listener() {
    let stable = Upstream::text("stable").await;
    let canary = Upstream::text("canary").await;
    let routes = |canary_weight: u32| {
        format!(
            "      - name: split
        match: {{ path_prefix: / }}
        split: [ {{ cluster: stable, weight: {} }}, {{ cluster: canary, weight: {canary_weight} }} ]
        sticky: {{ header: x-user-id }}",
            100 - canary_weight
        )
    };
    let clusters = cluster("stable", &stable) + &cluster("canary", &canary);
    let weft = Weft::start(&config(&listener(&routes(0)), &clusters)).await;
    let before = weft.addr("web").await;
    get_n(&weft, "/", 5, "stable").await;
    weft.write(&config(&listener(&routes(100)), &clusters));
    assert_eq!(weft.app.reload(false).await, Ok(true));
    assert_eq!(
        weft.addr("web").await,
        before,
        "a route edit must not rebind the socket"
    );
    get_n(&weft, "/", 5, "canary").await;
}
