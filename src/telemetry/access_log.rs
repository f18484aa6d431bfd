//! One JSON line per request on stdout (Envoy's access log, in JSON). Each
//! line carries the request's W3C trace id, so logs join with traces.

use std::io::Write;

use serde::Serialize;

#[derive(Serialize)]
pub struct AccessRecord<'a> {
    pub timestamp: String,
    pub listener: &'a str,
    pub protocol: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
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

pub fn write(record: &AccessRecord<'_>) {
    let Ok(mut line) = serde_json::to_vec(record) else {
        return;
    };
    line.push(b'\n');
    // A closed stdout must not take the proxy down; the line is lost.
    let _ = std::io::stdout().lock().write_all(&line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_the_trace_id() {
        let record = AccessRecord {
            timestamp: "t".into(),
            listener: "public",
            protocol: "HTTP/1.1",
            method: "GET",
            path: "/",
            status: 200,
            route: "r",
            cluster: "c",
            endpoint: None,
            duration_ms: 1.0,
            request_id: "id",
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
            client: "127.0.0.1:1".into(),
            error: None,
        };
        let line: serde_json::Value = serde_json::to_value(&record).unwrap();
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(line.get("error").is_none());
    }
}
