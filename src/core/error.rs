//! Errors on the request path carry where they came from and whether the
//! request may safely be retried; [`ProxyError::into_response`] is the single
//! place that maps them to status codes (the "rescue" step).

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use crate::core::body::{self, Body};

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No route matched the request.
    NoRoute,
    /// The request itself is unacceptable.
    BadRequest,
    /// The cluster has no endpoint to send to.
    NoEndpoint,
    /// Connecting to the chosen endpoint failed or timed out.
    ConnectFailed,
    /// The upstream reset the connection or sent something that is not HTTP.
    UpstreamReset,
    /// The route timeout or a per-try timeout expired.
    Timeout,
    /// weft refused the request to protect the upstream; never sent.
    Overloaded(Overload),
    /// The client went past one of the listener's or route's limits.
    OverLimit(Limit),
}

/// Which downstream limit a request went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `limits.max_request_headers`: 431.
    RequestHeaders,
    /// `limits.max_request_body_bytes`: 413.
    RequestBody,
    /// `limits.stream_idle_timeout` before a response started: 408.
    StreamIdle,
}

/// Which protection refused a request; the value of `x-weft-overloaded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    /// Over the adaptive concurrency limit.
    Concurrency,
    /// Over a circuit breaker limit.
    Circuit,
}

impl Overload {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Concurrency => "concurrency",
            Self::Circuit => "circuit",
        }
    }
}

/// Marks responses weft refused for overload; a weft one hop downstream
/// never retries them (retrying would feed the overload).
pub const OVERLOADED_HEADER: &str = "x-weft-overloaded";

/// Whether a request is gRPC: its content type is `application/grpc` or
/// one of its `application/grpc+...` variants.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// gRPC status codes weft answers with (grpc/doc/statuscodes.md).
pub const GRPC_DEADLINE_EXCEEDED: u8 = 4;
pub const GRPC_UNIMPLEMENTED: u8 = 12;
pub const GRPC_INTERNAL: u8 = 13;
pub const GRPC_UNAVAILABLE: u8 = 14;

/// An error on the request path: what went wrong (`kind`, which also says
/// where: the client, weft itself or the upstream), a short context, and
/// the underlying error as its `source()`.
#[derive(Debug)]
pub struct ProxyError {
    kind: ErrorKind,
    detail: String,
    source: Option<BoxError>,
    /// The endpoint the request was sent to, when one was picked.
    endpoint: Option<SocketAddr>,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            source: None,
            endpoint: None,
        }
    }

    /// An error of `kind` caused by `source`, described by `detail`.
    pub fn caused_by(kind: ErrorKind, detail: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            source: Some(source.into()),
            endpoint: None,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The same error, naming the endpoint the request went to.
    pub fn at_endpoint(mut self, endpoint: SocketAddr) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// The endpoint the failed request went to, when one was picked.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    /// Whether sending the request again cannot do harm twice: only when the
    /// upstream never saw it. (Overload rejections are never sent, but the
    /// retry layer still refuses to retry them: that would add load.)
    pub fn retry_safe(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::ConnectFailed | ErrorKind::NoEndpoint | ErrorKind::Overloaded(_)
        )
    }

    pub fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::NoEndpoint | ErrorKind::ConnectFailed | ErrorKind::Overloaded(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::UpstreamReset => StatusCode::BAD_GATEWAY,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::OverLimit(Limit::RequestHeaders) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::OverLimit(Limit::RequestBody) => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::OverLimit(Limit::StreamIdle) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The gRPC status a gRPC client gets for this error (as Envoy maps
    /// HTTP statuses): UNIMPLEMENTED for no route, UNAVAILABLE for the
    /// 503 class, DEADLINE_EXCEEDED for timeouts, INTERNAL otherwise.
    pub fn grpc_status(&self) -> u8 {
        match self.kind {
            ErrorKind::NoRoute => GRPC_UNIMPLEMENTED,
            ErrorKind::NoEndpoint | ErrorKind::ConnectFailed | ErrorKind::Overloaded(_) => GRPC_UNAVAILABLE,
            ErrorKind::Timeout | ErrorKind::OverLimit(Limit::StreamIdle) => GRPC_DEADLINE_EXCEEDED,
            ErrorKind::BadRequest | ErrorKind::UpstreamReset | ErrorKind::OverLimit(_) => GRPC_INTERNAL,
        }
    }

    /// What went wrong in a few words, the start of every error answer.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            ErrorKind::NoRoute => "no route matched",
            ErrorKind::BadRequest => "bad request",
            ErrorKind::NoEndpoint => "no healthy upstream",
            ErrorKind::ConnectFailed => "upstream connect error",
            ErrorKind::UpstreamReset => "upstream reset or sent an invalid response",
            ErrorKind::Timeout => "upstream request timeout",
            ErrorKind::Overloaded(Overload::Concurrency) => "upstream concurrency limit reached",
            ErrorKind::Overloaded(Overload::Circuit) => "upstream circuit breaker open",
            ErrorKind::OverLimit(Limit::RequestHeaders) => "too many request headers",
            ErrorKind::OverLimit(Limit::RequestBody) => "request body too large",
            ErrorKind::OverLimit(Limit::StreamIdle) => "stream idle timeout",
        }
    }

    /// The short plain-text answer weft gives in place of an upstream response.
    pub fn into_response(self) -> Response<Body> {
        let reason = self.reason();
        let detail = self.describe();
        let text = if detail.is_empty() {
            format!("{reason}\n")
        } else {
            format!("{reason}: {detail}\n")
        };
        let mut response = plain_response(self.status(), Bytes::from(text));
        if let ErrorKind::Overloaded(overload) = self.kind {
            response
                .headers_mut()
                .insert(OVERLOADED_HEADER, HeaderValue::from_static(overload.as_str()));
        }
        response
    }

    /// The gRPC "trailers-only" answer for a gRPC request: HTTP 200 with
    /// `grpc-status` and `grpc-message` in the headers and no body.
    pub fn into_grpc_response(self) -> Response<Body> {
        let detail = self.describe();
        let message = if detail.is_empty() {
            self.reason().to_string()
        } else {
            format!("{}: {detail}", self.reason())
        };
        let mut response = Response::new(body::empty());
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(u16::from(self.grpc_status())));
        if let Ok(message) = HeaderValue::from_str(&grpc_percent_encode(&message)) {
            headers.insert("grpc-message", message);
        }
        if let ErrorKind::Overloaded(overload) = self.kind {
            headers.insert(OVERLOADED_HEADER, HeaderValue::from_static(overload.as_str()));
        }
        response
    }
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII,
/// and `%` itself (gRPC over HTTP/2, "Responses").
fn grpc_percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl ProxyError {
    /// The context and every source on one line, for error bodies and logs.
    pub fn describe(&self) -> String {
        let mut text = self.detail.clone();
        let mut source = std::error::Error::source(self);
        while let Some(inner) = source {
            let part = inner.to_string();
            if !text.contains(&part) {
                if !text.is_empty() {
                    text.push_str(": ");
                }
                text.push_str(&part);
            }
            source = inner.source();
        }
        text
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.detail)
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A response weft writes itself (errors, direct responses).
pub fn plain_response(status: StatusCode, text: Bytes) -> Response<Body> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
