//! Trace context and span export: propagation of W3C and B3 context over
//! HTTP/1.1 and HTTP/2 (the upstream echoes what it received), and a real
//! OTLP/HTTP receiver decoding weft's protobuf export with the
//! opentelemetry-proto types.

use std::sync::Arc;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use prost::Message;

use crate::support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver keeping every span it is sent.
struct Receiver {
    server: Upstream,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    async fn start() -> Self {
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let store = spans.clone();
        let server = Upstream::start(move |req: Request<Incoming>| {
            let store = store.clone();
            async move {
                assert_eq!(req.uri().path(), "/v1/traces");
                assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let export = ExportTraceServiceRequest::decode(body).unwrap();
                for rs in export.resource_spans {
                    let service = &rs.resource.unwrap().attributes[0];
                    assert_eq!(service.key, "service.name");
                    for ss in rs.scope_spans {
                        store.lock().extend(ss.spans);
                    }
                }
                Response::new(full(""))
            }
        })
        .await;
        Self { server, spans }
    }

    /// Waits (bounded) until `n` spans have arrived.
    async fn spans(&self, n: usize) -> Vec<Span> {
        eventually(&format!("{n} spans arrive"), async || {
            let spans = self.spans.lock().clone();
            if spans.len() >= n {
                Ok(spans)
            } else {
                Err(format!("{spans:?}"))
            }
        })
        .await
    }
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("{key}: {other:?} in {span:?}"),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(Value::IntValue(i)) => *i,
        other => panic!("{key}: {other:?} in {span:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A header's value in an `Upstream::echo_headers` body.
fn echoed<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

/// (trace id, parent id, flags) of a traceparent the upstream received.
fn traceparent(body: &str) -> (String, String, String) {
    let value = echoed(body, "traceparent").unwrap_or_else(|| panic!("no traceparent in {body}"));
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// weft with one route `api` on /api to `web` (the upstream), `tracing`
/// appended; `down` and the first endpoint of `flaky` refuse connections for
/// as long as the returned addresses live.
async fn weft_with(upstream: &Upstream, tracing: &str) -> (Weft, [RefusedAddr; 2]) {
    let refused = [refused_addr(), refused_addr()];
    let yaml = config(
        "  - name: public
    address: 127.0.0.1:0
    routes:
      - { name: api, match: { path_prefix: /api }, cluster: web }
      - { name: flaky, match: { path_prefix: /flaky }, cluster: flaky, retry: { max_retries: 1, retry_on: [connect_failure] } }
      - { name: down, match: { path_prefix: /down }, cluster: down }",
        &format!(
            "  - {{ name: web, endpoints: [ {{ address: {} }} ] }}\n  - {{ name: down, endpoints: [ {{ address: {} }} ] }}\n  - {{ name: flaky, lb: round_robin, endpoints: [ {{ address: {} }}, {{ address: {} }} ] }}\n",
            upstream.addr, refused[0].addr, refused[1].addr, upstream.addr
        ),
    );
    (Weft::start(&format!("{yaml}{tracing}\n")).await, refused)
}

async fn get_with(client: &Client<HttpConnector, TestBody>, url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(client, req.body(full("")).unwrap()).await
}

#[tokio::test]
async fn propagation_over_http1_and_http2() {
    let upstream = Upstream::echo_headers().await;
    let (weft, _refused) = weft_with(&upstream, "").await;
    let url = weft.url("public", "/api").await;
    for client in [h1_client(), h2_client()] {
        // A valid context: same trace, weft's own span as parent, tracestate kept.
        let incoming = format!("00-{TRACE}-{PARENT}-01");
        let (status, body) = get_with(&client, &url, &[("traceparent", &incoming), ("tracestate", "vendor=x")]).await;
        assert_eq!(status, 200);
        let (trace, parent, flags) = traceparent(&body);
        assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"), "{body}");
        assert_ne!(parent, PARENT);
        assert_eq!(echoed(&body, "tracestate"), Some("vendor=x"));

        // An invalid one (uppercase hex) is replaced by a new trace, never forwarded.
        let invalid = format!("00-{}-{PARENT}-01", TRACE.to_uppercase());
        let (_, body) = get_with(&client, &url, &[("traceparent", &invalid), ("tracestate", "vendor=x")]).await;
        let (trace, _, _) = traceparent(&body);
        assert_ne!(trace, TRACE.to_uppercase());
        assert_ne!(trace, TRACE);
        assert_eq!(trace.len(), 32);
        assert!(!body.contains(&invalid), "{body}");
        assert_eq!(echoed(&body, "tracestate"), None, "{body}");

        // B3 multi only: the trace continues, the B3 headers name weft's span.
        let (_, body) = get_with(
            &client,
            &url,
            &[("x-b3-traceid", TRACE), ("x-b3-spanid", PARENT), ("x-b3-sampled", "1")],
        )
        .await;
        let (trace, parent, flags) = traceparent(&body);
        assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"), "{body}");
        assert_eq!(echoed(&body, "x-b3-traceid"), Some(TRACE));
        assert_eq!(echoed(&body, "x-b3-spanid"), Some(parent.as_str()));
        assert_eq!(echoed(&body, "x-b3-parentspanid"), Some(PARENT));

        // B3 single with a 64-bit trace id, unsampled.
        let (_, body) = get_with(&client, &url, &[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-0")]).await;
        let (trace, parent, flags) = traceparent(&body);
        assert_eq!(trace, "0000000000000000a3ce929d0e0e4736");
        assert_eq!(flags, "00");
        assert_eq!(
            echoed(&body, "b3"),
            Some(format!("{trace}-{parent}-0-{PARENT}").as_str()),
            "{body}"
        );

        // Nothing: a new trace; without tracing configured it is not sampled.
        let (_, body) = get(&client, &url).await;
        let (trace, _, flags) = traceparent(&body);
        assert_ne!(trace, "0".repeat(32));
        assert_eq!(flags, "00");
    }
}

#[tokio::test]
async fn spans_of_proxied_retried_and_rejected_requests() {
    let receiver = Receiver::start().await;
    let upstream = Upstream::echo_headers().await;
    let tracing = format!(
        "tracing: {{ otlp_endpoint: http://{}, sample_ratio: 1.0 }}",
        receiver.server.addr
    );
    let (weft, _refused) = weft_with(&upstream, &tracing).await;
    let client = h2_client();

    // Proxied: a child of the incoming span, parent of what the upstream got.
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let (status, body) = get_with(
        &client,
        &weft.url("public", "/api/items").await,
        &[("traceparent", &incoming), ("tracestate", "vendor=x")],
    )
    .await;
    assert_eq!(status, 200);
    let (_, upstream_parent, _) = traceparent(&body);
    let spans = receiver.spans(1).await;
    let span = &spans[0];
    assert_eq!(span.name, "GET api");
    assert_eq!(hex(&span.trace_id), TRACE);
    assert_eq!(hex(&span.parent_span_id), PARENT);
    assert_eq!(hex(&span.span_id), upstream_parent);
    assert_eq!(span.trace_state, "vendor=x");
    assert_eq!(text(span, "weft.route"), "api");
    assert_eq!(text(span, "weft.cluster"), "web");
    assert_eq!(text(span, "weft.endpoint"), upstream.addr.to_string());
    assert_eq!(text(span, "weft.listener"), "public");
    assert_eq!(text(span, "url.path"), "/api/items");
    assert_eq!(text(span, "network.protocol.version"), "2");
    assert_eq!(int(span, "http.response.status_code"), 200);
    assert_eq!(int(span, "weft.retry_attempts"), 0);
    assert!(attr(span, "weft.reason").is_none());
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);

    // A retry by the hop before (x-weft-retry-attempt from the client): the
    // span counts this hop's own retries only, and there were none.
    let (status, _) = get_with(
        &client,
        &weft.url("public", "/api/again").await,
        &[("x-weft-retry-attempt", "2")],
    )
    .await;
    assert_eq!(status, 200);
    let spans = receiver.spans(2).await;
    let retried = spans.iter().find(|s| text(s, "url.path") == "/api/again").unwrap();
    assert_eq!(int(retried, "weft.retry_attempts"), 0);
    assert!(retried.parent_span_id.is_empty(), "a new trace is a root span");

    // Rejected by weft: no route (404) and an endpoint that refuses (503).
    let (status, _) = get(&client, &weft.url("public", "/nowhere").await).await;
    assert_eq!(status, 404);
    let (status, _) = get(&client, &weft.url("public", "/down").await).await;
    assert_eq!(status, 503);
    let spans = receiver.spans(4).await;
    let no_route = spans.iter().find(|s| text(s, "url.path") == "/nowhere").unwrap();
    assert_eq!(no_route.name, "GET");
    assert_eq!(text(no_route, "weft.reason"), "no_route");
    assert_eq!(text(no_route, "weft.route"), "");
    assert_eq!(int(no_route, "http.response.status_code"), 404);
    let down = spans.iter().find(|s| text(s, "url.path") == "/down").unwrap();
    assert_eq!(down.name, "GET down");
    assert_eq!(text(down, "weft.cluster"), "down");
    assert_eq!(text(down, "weft.reason"), "connect_failed");
    assert_eq!(int(down, "http.response.status_code"), 503);
    // 5xx marks the span as an error (OpenTelemetry HTTP conventions).
    assert_eq!(down.status.as_ref().unwrap().code, 2);

    // A real retry: round robin sends first tries to the dead endpoint (the
    // retry's own pick advances it too, so both do); the retry layer moves
    // each to the live one, and the span says so.
    for path in ["/flaky/1", "/flaky/2"] {
        assert_eq!(get(&client, &weft.url("public", path).await).await.0, 200);
    }
    let spans = receiver.spans(6).await;
    let flaky: Vec<_> = spans
        .iter()
        .filter(|s| text(s, "url.path").starts_with("/flaky"))
        .collect();
    assert_eq!(flaky.len(), 2);
    let attempts: Vec<i64> = flaky.iter().map(|s| int(s, "weft.retry_attempts")).collect();
    assert!(attempts.contains(&1), "{attempts:?}");

    // The receiver has the spans before weft has its answer: poll the counter.
    wait_for_metric(&weft, "weft_trace_spans_exported_total 6").await;
}

async fn wait_for_metric(weft: &Weft, line: &str) {
    eventually(&format!("/metrics shows {line:?}"), async || {
        metrics(weft).await.contains(line)
    })
    .await;
}

#[tokio::test]
async fn sampling_is_parent_based_and_failed_exports_count_as_dropped() {
    let upstream = Upstream::echo_headers().await;
    // Nothing listens at the endpoint: every export fails.
    let collector = refused_addr();
    let tracing = format!(
        "tracing: {{ otlp_endpoint: http://{}, sample_ratio: 0.0 }}",
        collector.addr
    );
    let (weft, _refused) = weft_with(&upstream, &tracing).await;
    let client = h1_client();
    let url = weft.url("public", "/api").await;

    // Ratio 0: a new trace is not sampled, and says so upstream.
    let (_, body) = get(&client, &url).await;
    assert_eq!(traceparent(&body).2, "00");
    // A sampled parent keeps its trace sampled whatever the ratio.
    let (_, body) = get_with(&client, &url, &[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))]).await;
    assert_eq!(traceparent(&body).2, "01");

    // Only the sampled span was recorded, and the export of it failed.
    wait_for_metric(&weft, "weft_trace_spans_dropped_total 1").await;
}
