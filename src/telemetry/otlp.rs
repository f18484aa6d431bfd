//! Span export over OTLP/HTTP with protobuf bodies
//! (<https://opentelemetry.io/docs/specs/otlp/#otlphttp>): spans are batched
//! by one background task and POSTed as an `ExportTraceServiceRequest` to
//! `{otlp_endpoint}/v1/traces` with `content-type: application/x-protobuf`.
//!
//! Guarantees: requests never wait for export. The queue between requests and
//! the task is bounded ([`QUEUE`] spans); spans that do not fit, and batches
//! the receiver refuses or that time out, are counted in
//! `weft_trace_spans_dropped_total` and not retried (OTLP allows dropping;
//! retrying would let a slow collector pile up memory in the proxy). When the
//! queue's senders are gone (tracing reconfigured), the task exports what is
//! left and ends. Attribute names follow the OpenTelemetry semantic conventions
//! for HTTP where one fits, `weft.*` otherwise.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};

use super::trace::{SpanRecord, TraceMetrics};
use crate::config::trace::{traces_uri, TracingConfig};

/// Spans waiting for export; beyond this they are dropped.
pub const QUEUE: usize = 4096;
/// Spans per export request.
pub const BATCH: usize = 512;
/// A partial batch waits at most this long.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// One export request may take this long before its spans count as dropped.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the exporter task of `config`; spans sent into the returned queue
/// are exported until every sender is dropped.
pub fn spawn(config: &TracingConfig, metrics: TraceMetrics) -> Result<mpsc::Sender<SpanRecord>, String> {
    let uri = traces_uri(&config.otlp_endpoint)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(run(uri, rx, metrics));
    Ok(tx)
}

async fn run(uri: Uri, mut rx: mpsc::Receiver<SpanRecord>, metrics: TraceMetrics) {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let service_name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "weft".to_string());
    let mut batch = Vec::with_capacity(BATCH);
    let mut failing = false;
    loop {
        // Wait for the first span, then gather more until the batch is full
        // or the flush interval has passed.
        let Some(first) = rx.recv().await else {
            return;
        };
        batch.push(first);
        let deadline = Instant::now() + FLUSH_INTERVAL;
        let mut closed = false;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let count = batch.len() as u64;
        let body = encode(&service_name, &batch).encode_to_vec();
        batch.clear();
        match export(&client, &uri, body).await {
            Ok(()) => {
                metrics.exported.inc_by(count);
                if failing {
                    tracing::info!(%uri, "tracing: OTLP export works again");
                    failing = false;
                }
            }
            Err(e) => {
                metrics.dropped.inc_by(count);
                // One warning per outage, not one per batch.
                if !failing {
                    tracing::warn!(%uri, error = %e, "tracing: OTLP export failed; spans are dropped until it works");
                    failing = true;
                }
            }
        }
        if closed {
            return;
        }
    }
}

async fn export(client: &Client<HttpConnector, Full<Bytes>>, uri: &Uri, body: Vec<u8>) -> Result<(), String> {
    let request = Request::post(uri.clone())
        .header(header::CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let send = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        // Drain the (small) partial-success body so the connection is reused.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("receiver answered {status}"))
        }
    };
    tokio::time::timeout(EXPORT_TIMEOUT, send)
        .await
        .unwrap_or_else(|_| Err("timed out".to_string()))
}

/// One export request holding `spans`, all from this weft.
pub fn encode(service_name: &str, spans: &[SpanRecord]) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string("service.name", service_name)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "weft".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: spans.iter().map(to_proto).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn to_proto(record: &SpanRecord) -> Span {
    let f = &record.fields;
    let mut attributes = vec![
        string("http.request.method", &f.method),
        string("url.path", &f.path),
        string("network.protocol.name", "http"),
        string("network.protocol.version", f.protocol.trim_start_matches("HTTP/")),
        int("http.response.status_code", i64::from(f.status)),
        string("weft.listener", &f.listener),
        string("weft.route", &f.route),
        string("weft.cluster", &f.cluster),
        int("weft.retry_attempts", i64::from(f.retry_attempts)),
    ];
    if let Some(endpoint) = f.endpoint {
        attributes.push(string("weft.endpoint", &endpoint.to_string()));
        attributes.push(string("server.address", &endpoint.ip().to_string()));
        attributes.push(int("server.port", i64::from(endpoint.port())));
    }
    if let Some(reason) = &f.reason {
        attributes.push(string("weft.reason", reason));
    }
    // OpenTelemetry HTTP conventions: a server span is an error on 5xx only.
    let status = if f.status >= 500 {
        Status {
            code: status::StatusCode::Error as i32,
            message: f.reason.clone().unwrap_or_default(),
        }
    } else {
        Status::default()
    };
    Span {
        trace_id: record.trace_id.to_be_bytes().to_vec(),
        span_id: record.span_id.to_be_bytes().to_vec(),
        parent_span_id: record
            .parent_span_id
            .map(|p| p.to_be_bytes().to_vec())
            .unwrap_or_default(),
        trace_state: record.trace_state.clone(),
        // W3C trace flags in the low byte.
        flags: u32::from(record.sampled),
        name: f.span_name(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: unix_nanos(record.start),
        end_time_unix_nano: unix_nanos(record.end),
        attributes,
        status: Some(status),
        ..Default::default()
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::trace::SpanFields;

    fn record() -> SpanRecord {
        SpanRecord {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: 0x1111111111111111,
            parent_span_id: Some(0x00f067aa0ba902b7),
            trace_state: "a=b".into(),
            sampled: true,
            start: UNIX_EPOCH + Duration::from_secs(1),
            end: UNIX_EPOCH + Duration::from_secs(2),
            fields: SpanFields {
                listener: "public".into(),
                protocol: "HTTP/2",
                method: "GET".into(),
                path: "/x".into(),
                route: "api".into(),
                cluster: "web".into(),
                endpoint: Some("127.0.0.1:9000".parse().unwrap()),
                status: 503,
                retry_attempts: 1,
                reason: Some("no_endpoint".into()),
            },
        }
    }

    fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a any_value::Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn encodes_a_span_that_round_trips() {
        let bytes = encode("weft", &[record()]).encode_to_vec();
        let decoded = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let rs = &decoded.resource_spans[0];
        let service = &rs.resource.as_ref().unwrap().attributes[0];
        assert_eq!(service.key, "service.name");
        let span = &rs.scope_spans[0].spans[0];
        assert_eq!(span.name, "GET api");
        assert_eq!(span.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736u128.to_be_bytes());
        assert_eq!(span.parent_span_id, 0x00f067aa0ba902b7u64.to_be_bytes());
        assert_eq!(span.trace_state, "a=b");
        assert_eq!(span.end_time_unix_nano - span.start_time_unix_nano, 1_000_000_000);
        assert_eq!(
            attr(span, "weft.reason"),
            Some(&any_value::Value::StringValue("no_endpoint".into()))
        );
        assert_eq!(attr(span, "weft.retry_attempts"), Some(&any_value::Value::IntValue(1)));
        assert_eq!(
            attr(span, "network.protocol.version"),
            Some(&any_value::Value::StringValue("2".into()))
        );
        assert_eq!(span.status.as_ref().unwrap().code, status::StatusCode::Error as i32);
    }

    #[test]
    fn root_spans_have_no_parent() {
        let mut r = record();
        r.parent_span_id = None;
        r.fields.status = 200;
        r.fields.reason = None;
        let span = to_proto(&r);
        assert!(span.parent_span_id.is_empty());
        assert_eq!(span.status.unwrap().code, status::StatusCode::Unset as i32);
        assert!(attr(&to_proto(&r), "weft.reason").is_none());
    }
}
