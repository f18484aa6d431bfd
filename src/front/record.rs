//! What the front path records of an answered request: its span and its
//! access log line, both built from one [`Exchange`].

use std::net::SocketAddr;

use http::{HeaderValue, Method, Response, Version};
use tokio::time::Duration;

use super::answer::Failure;
use super::Downstream;
use crate::core::body::Body;
use crate::core::extensions::{RetryAttempt, ServedBy};
use crate::telemetry::access_log::{AccessLog, AccessRecord};
use crate::telemetry::trace::{self, RequestTrace, SpanFields};

/// One request as the records see it.
pub struct Exchange<'a> {
    pub downstream: &'a Downstream,
    /// The downstream connection's version.
    pub version: Version,
    pub method: &'a Method,
    pub path: &'a str,
    pub request_id: &'a HeaderValue,
    /// Empty when no route took the request.
    pub route: &'a str,
    /// The chosen target's cluster; empty when no route took the request.
    pub cluster: &'a str,
    /// From the request's arrival to its response headers.
    pub elapsed: Duration,
}

pub fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

/// The span's fields (built only for a recorded request).
pub fn span_fields(exchange: &Exchange<'_>, response: &Response<Body>, failure: Option<&Failure>) -> SpanFields {
    SpanFields {
        listener: exchange.downstream.listener.to_string(),
        protocol: protocol_name(exchange.version),
        method: exchange.method.to_string(),
        path: exchange.path.to_string(),
        route: exchange.route.to_string(),
        cluster: exchange.cluster.to_string(),
        endpoint: endpoint(response, failure),
        status: http_status(response, failure),
        retry_attempts: response.extensions().get::<RetryAttempt>().map_or(0, |a| a.0),
        reason: failure.map(|f| trace::reason(f.kind)),
    }
}

/// Ends the request's span and, with `access_log`, writes its line.
pub fn report(
    exchange: &Exchange<'_>,
    trace: RequestTrace,
    response: &Response<Body>,
    failure: Option<&Failure>,
    access_log: Option<&AccessLog>,
) {
    // The trace id is text only for the access log.
    let trace_id = access_log.map(|_| trace.trace_id());
    trace.finish(|| span_fields(exchange, response, failure));
    if let (Some(log), Some(trace_id)) = (access_log, &trace_id) {
        log.write(&access_record(exchange, response, failure, trace_id.as_str()));
    }
}

/// The status metrics and logs count: the HTTP one, also for a gRPC
/// client answered 200 with a `grpc-status`.
pub fn http_status(response: &Response<Body>, failure: Option<&Failure>) -> u16 {
    failure.map_or(response.status().as_u16(), |f| f.status)
}

/// The endpoint that answered or that the failed request went to.
fn endpoint(response: &Response<Body>, failure: Option<&Failure>) -> Option<SocketAddr> {
    response
        .extensions()
        .get::<ServedBy>()
        .map(|s| s.0)
        .or_else(|| failure.and_then(|f| f.endpoint))
}

/// The access log line of a request. A request weft answered itself shows
/// its error, and still the cluster and endpoint when they were chosen.
pub fn access_record<'a>(
    exchange: &'a Exchange<'a>,
    response: &Response<Body>,
    failure: Option<&'a Failure>,
    trace_id: &'a str,
) -> AccessRecord<'a> {
    AccessRecord {
        timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        listener: &exchange.downstream.listener,
        protocol: protocol_name(exchange.version),
        method: exchange.method.as_str(),
        path: exchange.path,
        status: http_status(response, failure),
        grpc_status: failure.and_then(|f| f.grpc_status),
        route: exchange.route,
        cluster: exchange.cluster,
        endpoint: endpoint(response, failure).map(|e| e.to_string()),
        duration_ms: exchange.elapsed.as_secs_f64() * 1000.0,
        request_id: exchange.request_id.to_str().unwrap_or(""),
        trace_id,
        client: exchange.downstream.peer.to_string(),
        error: failure.and_then(|f| f.text.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::body;
    use crate::core::error::ErrorKind;

    fn served(status: u16) -> Response<Body> {
        let mut response = Response::new(body::empty());
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        response
            .extensions_mut()
            .insert(ServedBy("127.0.0.1:9000".parse().unwrap()));
        response.extensions_mut().insert(RetryAttempt(2));
        response
    }

    #[test]
    fn span_and_log_name_the_route_cluster_endpoint_and_error() {
        let downstream = Downstream::example();
        let id = HeaderValue::from_static("req-1");
        let exchange = Exchange {
            downstream: &downstream,
            version: Version::HTTP_2,
            method: &Method::POST,
            path: "/orders",
            request_id: &id,
            route: "orders",
            cluster: "orders-v2",
            elapsed: Duration::from_millis(3),
        };
        let response = served(201);
        let span = span_fields(&exchange, &response, None);
        assert_eq!(span.span_name(), "POST orders");
        assert_eq!(
            (span.listener.as_str(), span.protocol, span.cluster.as_str()),
            ("public", "HTTP/2", "orders-v2")
        );
        assert_eq!((span.status, span.retry_attempts, span.reason), (201, 2, None));
        assert_eq!(span.endpoint, Some("127.0.0.1:9000".parse().unwrap()));
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let line = access_record(&exchange, &response, None, trace_id);
        let line = serde_json::to_value(&line).unwrap();
        assert_eq!(line["cluster"], "orders-v2");
        assert_eq!(line["endpoint"], "127.0.0.1:9000");
        assert_eq!(line["request_id"], "req-1");
        assert_eq!(line["client"], "127.0.0.1:4000");
        assert_eq!(line["duration_ms"], 3.0);
        assert!(line.get("error").is_none());

        let failure = Failure {
            kind: ErrorKind::ConnectFailed,
            text: Some("upstream connect error".into()),
            status: 503,
            grpc_status: None,
            endpoint: Some("127.0.0.1:9001".parse().unwrap()),
        };
        let response = Response::new(body::empty());
        let span = span_fields(&exchange, &response, Some(&failure));
        assert_eq!(span.cluster, "orders-v2");
        assert_eq!(span.status, 503);
        assert_eq!(span.endpoint, Some("127.0.0.1:9001".parse().unwrap()));
        let line = access_record(&exchange, &response, Some(&failure), trace_id);
        let line = serde_json::to_value(&line).unwrap();
        assert_eq!(line["cluster"], "orders-v2");
        assert_eq!(line["endpoint"], "127.0.0.1:9001");
        assert_eq!(line["status"], 503);
        assert_eq!(line["error"], "upstream connect error");
        assert!(line.get("grpc_status").is_none());
        let grpc = Failure {
            grpc_status: Some(14),
            ..failure
        };
        let line = serde_json::to_value(access_record(&exchange, &response, Some(&grpc), trace_id)).unwrap();
        assert_eq!(
            (line["status"].clone(), line["grpc_status"].clone()),
            (503.into(), 14.into())
        );
    }
}
