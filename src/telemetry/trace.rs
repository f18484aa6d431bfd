//! One span per proxied request: the sampling decision, the ids, and the
//! record handed to the OTLP exporter when the request ends.
//!
//! Sampling is parent-based (OpenTelemetry's `ParentBased(TraceIdRatioBased)`,
//! <https://opentelemetry.io/docs/specs/otel/trace/sdk/#sampling>): an
//! incoming sampling decision (W3C `sampled` flag, B3 `sampled`/debug) is kept;
//! otherwise the trace id decides against `tracing.sample_ratio`, so every
//! hop that uses the same ratio agrees on the same trace.
//!
//! Guarantees: context is propagated on every request whether or not tracing
//! is configured. When a request is not recorded, the only work is header
//! parsing, two random ids and the `traceparent` value; span fields are built
//! only for recorded requests, and handing a span over never waits (a full
//! queue drops it and counts `weft_trace_spans_dropped_total`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use http::header::HeaderMap;
use prometheus::{IntCounter, Registry};
use tokio::sync::mpsc;

use super::propagation::{self, Format, Incoming, Outgoing, TraceIdText};
use crate::config::trace::TracingConfig;
use crate::core::error::ErrorKind;

/// Trace metric families, registered with the app's registry.
#[derive(Clone)]
pub struct TraceMetrics {
    pub dropped: IntCounter,
    pub exported: IntCounter,
}

impl TraceMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let dropped = IntCounter::new(
            "weft_trace_spans_dropped_total",
            "Spans lost because the export queue was full or the OTLP receiver failed.",
        )?;
        let exported = IntCounter::new(
            "weft_trace_spans_exported_total",
            "Spans accepted by the OTLP receiver.",
        )?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(exported.clone()))?;
        Ok(Self { dropped, exported })
    }
}

/// Everything a finished span reports; built only for recorded requests.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_span_id: Option<u64>,
    pub trace_state: String,
    pub sampled: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    pub fields: SpanFields,
}

#[derive(Debug, Clone, Default)]
pub struct SpanFields {
    pub listener: String,
    pub protocol: &'static str,
    pub method: String,
    pub path: String,
    pub route: String,
    pub cluster: String,
    pub endpoint: Option<SocketAddr>,
    pub status: u16,
    pub retry_attempts: u32,
    /// Why weft answered itself (`no_route`, `no_endpoint`, `timeout`, …).
    pub reason: Option<String>,
}

impl SpanFields {
    /// `{method} {route}` (OpenTelemetry HTTP server span naming, with weft's
    /// route name as the low-cardinality route), or `{method}` unrouted.
    pub fn span_name(&self) -> String {
        if self.route.is_empty() {
            self.method.clone()
        } else {
            format!("{} {}", self.method, self.route)
        }
    }
}

/// The reason label of an error kind: its name in snake case, so kinds added
/// later (say, an overload rejection) get a reason without touching this.
pub fn reason(kind: ErrorKind) -> String {
    let name = format!("{kind:?}");
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Parent-based sampling: the incoming decision wins; otherwise the trace id
/// (its random low 64 bits) is compared with the ratio.
pub fn should_sample(incoming: Option<bool>, ratio: f64, trace_id: u128) -> bool {
    if let Some(decision) = incoming {
        return decision;
    }
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let bound = (ratio * (u64::MAX as f64)) as u64;
    (trace_id as u64) < bound
}

/// Span export of one config generation: its queue into the exporter task.
pub struct Tracer {
    config: TracingConfig,
    queue: mpsc::Sender<SpanRecord>,
    metrics: TraceMetrics,
}

impl Tracer {
    fn record(&self, span: SpanRecord) {
        if self.queue.try_send(span).is_err() {
            self.metrics.dropped.inc();
        }
    }
}

/// The app's tracing state; survives reloads and swaps the exporter when the
/// `tracing` section changes.
pub struct Tracing {
    current: ArcSwapOption<Tracer>,
    metrics: TraceMetrics,
}

impl Tracing {
    pub fn new(metrics: TraceMetrics) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            metrics,
        }
    }

    /// Applies a config's `tracing` section. An unchanged section keeps the
    /// running exporter; a replaced one flushes what it holds and stops when
    /// the last request using it ends.
    pub fn configure(&self, config: Option<&TracingConfig>) {
        let current = self.current.load();
        if current.as_ref().map(|t| &t.config) == config {
            return;
        }
        let tracer = config.and_then(|c| match super::otlp::spawn(c, self.metrics.clone()) {
            Ok(queue) => Some(Arc::new(Tracer {
                config: c.clone(),
                queue,
                metrics: self.metrics.clone(),
            })),
            Err(e) => {
                tracing::error!(error = %e, "tracing: cannot start the OTLP exporter; spans are not exported");
                None
            }
        });
        self.current.store(tracer);
    }

    /// Reads the request's trace context, decides sampling, and rewrites the
    /// trace headers for the upstream.
    pub fn start(&self, headers: &mut HeaderMap) -> RequestTrace {
        let incoming = propagation::extract(headers);
        let trace_id = match incoming.parent {
            Some((trace_id, _)) => trace_id,
            None => nonzero(rand::random::<u128>),
        };
        // A guard, not a clone: unsampled requests never touch the refcount.
        let tracer = self.current.load();
        let ratio = tracer.as_ref().map_or(0.0, |t| t.config.sample_ratio);
        let sampled = should_sample(incoming.sampled, ratio, trace_id);
        let out = Outgoing {
            trace_id,
            span_id: nonzero(rand::random::<u64>),
            parent_span_id: incoming.parent.map(|(_, span)| span),
            sampled,
        };
        let recording = match tracer.as_ref() {
            Some(tracer) if sampled => Some(Recording {
                tracer: tracer.clone(),
                start: SystemTime::now(),
                trace_state: trace_state(headers, &incoming),
            }),
            _ => None,
        };
        propagation::inject(headers, &incoming, &out);
        RequestTrace { out, recording }
    }
}

fn nonzero<T: Default + PartialEq>(random: impl Fn() -> T) -> T {
    // An all-zero id is invalid in W3C; with 64+ random bits a retry is
    // practically never needed.
    loop {
        let id = random();
        if id != T::default() {
            return id;
        }
    }
}

/// The incoming `tracestate`, joined when split over several headers (W3C
/// section 3.3.1.1 allows that).
fn trace_state(headers: &HeaderMap, incoming: &Incoming) -> String {
    if incoming.format != Format::W3c {
        return String::new();
    }
    let parts: Vec<&str> = headers
        .get_all(&propagation::TRACESTATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    parts.join(",")
}

struct Recording {
    tracer: Arc<Tracer>,
    start: SystemTime,
    trace_state: String,
}

/// The trace of one request in flight.
pub struct RequestTrace {
    out: Outgoing,
    recording: Option<Recording>,
}

impl RequestTrace {
    pub fn trace_id(&self) -> TraceIdText {
        TraceIdText::new(self.out.trace_id)
    }

    /// Ends the span; `fields` runs only when the request is recorded.
    pub fn finish(self, fields: impl FnOnce() -> SpanFields) {
        let Some(recording) = self.recording else {
            return;
        };
        recording.tracer.record(SpanRecord {
            trace_id: self.out.trace_id,
            span_id: self.out.span_id,
            parent_span_id: self.out.parent_span_id,
            trace_state: recording.trace_state,
            sampled: self.out.sampled,
            start: recording.start,
            end: SystemTime::now(),
            fields: fields(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl RequestTrace {
        fn is_recording(&self) -> bool {
            self.recording.is_some()
        }
    }

    #[test]
    fn reasons_are_snake_case_kind_names() {
        assert_eq!(reason(ErrorKind::NoRoute), "no_route");
        assert_eq!(reason(ErrorKind::NoEndpoint), "no_endpoint");
        assert_eq!(reason(ErrorKind::Timeout), "timeout");
        assert_eq!(reason(ErrorKind::ConnectFailed), "connect_failed");
    }

    #[test]
    fn sampling_is_parent_based_then_by_ratio() {
        assert!(should_sample(Some(true), 0.0, 1));
        assert!(!should_sample(Some(false), 1.0, 1));
        assert!(should_sample(None, 1.0, u128::MAX));
        assert!(!should_sample(None, 0.0, 0));
        let sampled = (0..10_000u128)
            .filter(|i| should_sample(None, 0.1, i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)))
            .count();
        assert!((800..1200).contains(&sampled), "{sampled}");
    }

    #[test]
    fn span_names() {
        let mut f = SpanFields {
            method: "GET".into(),
            ..Default::default()
        };
        assert_eq!(f.span_name(), "GET");
        f.route = "api".into();
        assert_eq!(f.span_name(), "GET api");
    }

    #[tokio::test]
    async fn untraced_requests_propagate_without_recording() {
        let tracing = Tracing::new(TraceMetrics::new(&Registry::new()).unwrap());
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let trace = tracing.start(&mut h);
        assert!(!trace.is_recording());
        assert_eq!(trace.trace_id().as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let sent = h.get("traceparent").unwrap().to_str().unwrap();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{sent}");
        assert!(sent.ends_with("-01"));
        assert!(!sent.contains("00f067aa0ba902b7"));
    }
}
