//! One JSON line per request on stdout (Envoy's access log, in JSON). Each
//! line carries the request's W3C trace id, so logs join with traces.
//!
//! A request only serializes its line and hands it to the line writer
//! (`telemetry::lines`), which writes it from its own thread: a request never
//! takes the stdout lock or waits for output. When the writer is a full
//! channel behind, the line is dropped and counted in
//! `weft_access_log_dropped_total`.

use prometheus::IntCounter;
use serde::Serialize;

use super::lines::{LineWriter, Sink};

#[derive(Serialize)]
pub struct AccessRecord<'a> {
    pub timestamp: String,
    pub listener: &'a str,
    pub protocol: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// The HTTP status, also when a gRPC client got its error as a
    /// `grpc-status` (in a 200 answer).
    pub status: u16,
    /// The `grpc-status` weft answered a gRPC request with itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u8>,
    pub route: &'a str,
    pub cluster: &'a str,
    pub endpoint: Option<String>,
    pub duration_ms: f64,
    pub request_id: &'a str,
    /// W3C trace id (32 hex digits), to join the line with its trace.
    pub trace_id: &'a str,
    pub client: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where access log lines go, and the count of those that could not.
#[derive(Clone)]
pub struct AccessLog {
    lines: LineWriter,
    dropped: IntCounter,
}

impl AccessLog {
    pub fn new(lines: LineWriter, dropped: IntCounter) -> Self {
        Self { lines, dropped }
    }

    /// Hands the record's line to the writer without waiting.
    pub fn write(&self, record: &AccessRecord<'_>) {
        // Most lines fit, so the buffer is sized once.
        let mut line = Vec::with_capacity(512);
        if serde_json::to_writer(&mut line, record).is_err() {
            return;
        }
        line.push(b'\n');
        if !self.lines.try_write(Sink::Stdout, line) {
            self.dropped.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord<'static> {
        AccessRecord {
            timestamp: "t".into(),
            listener: "public",
            protocol: "HTTP/1.1",
            method: "GET",
            path: "/",
            status: 200,
            grpc_status: None,
            route: "r",
            cluster: "c",
            endpoint: None,
            duration_ms: 1.0,
            request_id: "id",
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
            client: "127.0.0.1:1".into(),
            error: None,
        }
    }

    #[test]
    fn lines_carry_the_trace_id() {
        let line: serde_json::Value = serde_json::to_value(record()).unwrap();
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(line.get("error").is_none());
    }

    #[tokio::test]
    async fn a_full_writer_counts_the_lines_it_drops() {
        let metrics = crate::telemetry::metrics::Metrics::new().unwrap();
        let (lines, writer) = super::super::lines::channel(3);
        let log = AccessLog::new(lines.clone(), metrics.access_log_dropped.clone());
        for _ in 0..5 {
            log.write(&record());
        }
        assert_eq!(metrics.access_log_dropped.get(), 2);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text.contains("weft_access_log_dropped_total 2"), "{text}");
        let out = super::super::lines::Captured::default();
        writer.with_stdout(out.clone()).start().unwrap();
        lines.flush().await;
        let written = out.text();
        assert_eq!(written.lines().count(), 3);
        for line in written.lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(record["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        }
    }
}
