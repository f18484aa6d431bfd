//! A listener's per-request limits, applied on the front path:
//!
//! - `limits.max_request_headers`: a request with more header fields gets
//!   431 before any route runs. hyper's HTTP/1 server already refuses such
//!   a request itself; HTTP/2 and HTTP/3 have no count of their own.
//! - `limits.max_request_body_bytes` (the route's, else the listener's): a
//!   `Content-Length` over it gets 413 before the upstream is touched; a
//!   body that grows past it while streaming (chunked, HTTP/2 DATA) fails
//!   at the byte that crosses it, which aborts the upstream request, and
//!   the client gets 413 if no response has started (see [`exceeded`]).
//! - `limits.stream_idle_timeout`, by `idle`.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, Request};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus::IntCounter;
use tokio::time::Duration;

use crate::config::schema::ListenerLimits;
use crate::core::body::Body;
use crate::core::error::{BoxError, ErrorKind, Limit, ProxyError};
use crate::telemetry::metrics::Metrics;

/// One listener's limits, as every request on it sees them.
pub struct StreamLimits {
    pub max_request_headers: usize,
    /// For routes that set none.
    pub max_request_body_bytes: Option<u64>,
    pub stream_idle_timeout: Duration,
    /// `weft_stream_idle_timeouts_total` of the listener.
    pub idle_timeouts: IntCounter,
}

impl StreamLimits {
    pub fn new(config: &ListenerLimits, listener: &str, metrics: &Metrics) -> Self {
        Self {
            max_request_headers: config.max_request_headers as usize,
            max_request_body_bytes: config.max_request_body_bytes,
            stream_idle_timeout: config.stream_idle_timeout,
            idle_timeouts: metrics.stream_idle_timeouts.with_label_values(&[listener]),
        }
    }
}

/// 431 for a request with more header fields than the listener allows.
pub fn check_header_count(req: &Request<Body>, limits: &StreamLimits) -> Result<(), ProxyError> {
    let count = req.headers().len();
    if count <= limits.max_request_headers {
        return Ok(());
    }
    let detail = format!("{count} header fields, at most {}", limits.max_request_headers);
    Err(ProxyError::new(ErrorKind::OverLimit(Limit::RequestHeaders), detail))
}

/// Set when a request body went past its limit while streaming (`None`
/// when no body is limited: nothing to allocate per request).
#[derive(Debug, Default)]
pub struct Exceeded(Option<Arc<AtomicBool>>);

impl Exceeded {
    /// The exchange's result, as 413 when the body went past its limit
    /// (the upstream connection reports the aborted body in its own words).
    pub fn blame<T>(&self, result: Result<T, ProxyError>) -> Result<T, ProxyError> {
        match result {
            Err(_) if self.0.as_ref().is_some_and(|flag| flag.load(Ordering::Acquire)) => {
                Err(too_large("the request body went past it"))
            }
            result => result,
        }
    }
}

fn too_large(what: &str) -> ProxyError {
    ProxyError::new(
        ErrorKind::OverLimit(Limit::RequestBody),
        format!("limits.max_request_body_bytes: {what}"),
    )
}

/// Applies `max` bytes to `req`'s body: 413 at once when its
/// `Content-Length` says more; else the body fails past `max` and the
/// returned [`Exceeded`] tells [`Exceeded::blame`] so.
pub fn limit_body(req: Request<Body>, max: Option<u64>) -> Result<(Request<Body>, Exceeded), ProxyError> {
    let Some(max) = max else {
        return Ok((req, Exceeded::default()));
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max) {
        return Err(too_large(&format!("content-length is more than {max}")));
    }
    if req.body().is_end_stream() {
        return Ok((req, Exceeded::default()));
    }
    let flag = Arc::new(AtomicBool::new(false));
    let exceeded = Exceeded(Some(flag.clone()));
    let req = req.map(|inner| {
        LimitedBody {
            inner,
            left: max,
            exceeded: flag,
        }
        .boxed()
    });
    Ok((req, exceeded))
}

struct LimitedBody {
    inner: Body,
    left: u64,
    exceeded: Arc<AtomicBool>,
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            let size = frame.data_ref().map_or(0, |d| d.len() as u64);
            match self.left.checked_sub(size) {
                Some(left) => self.left = left,
                None => {
                    // Set before the upstream connection hears of the failure.
                    self.exceeded.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(
                        "request body larger than limits.max_request_body_bytes".into()
                    )));
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::body;

    fn chunked(parts: &'static [&'static str]) -> Request<Body> {
        let frames = parts
            .iter()
            .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p.as_bytes()))));
        let stream = futures_util::stream::iter(frames.collect::<Vec<_>>());
        Request::new(body::boxed(http_body_util::StreamBody::new(stream)))
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_the_body() {
        let req = Request::post("/")
            .header("content-length", "11")
            .body(body::full("hello world"))
            .unwrap();
        let refused = limit_body(req, Some(10)).unwrap_err();
        assert_eq!(refused.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
        let req = Request::post("/")
            .header("content-length", "10")
            .body(body::full("helloworld"))
            .unwrap();
        assert!(limit_body(req, Some(10)).is_ok());
    }

    #[tokio::test]
    async fn a_streamed_body_fails_at_the_byte_past_the_limit() {
        let (req, exceeded) = limit_body(chunked(&["hello", "world"]), Some(10)).unwrap();
        assert!(req.into_body().collect().await.is_ok());
        assert!(exceeded
            .blame(Err::<(), _>(ProxyError::new(ErrorKind::UpstreamReset, "x")))
            .is_err_and(|e| e.kind() == ErrorKind::UpstreamReset));
        let (req, exceeded) = limit_body(chunked(&["hello", "world!"]), Some(10)).unwrap();
        assert!(req.into_body().collect().await.is_err());
        let blamed = exceeded.blame(Err::<(), _>(ProxyError::new(ErrorKind::BadRequest, "body")));
        assert_eq!(blamed.unwrap_err().status(), http::StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn more_header_fields_than_allowed_get_431() {
        let limits = StreamLimits {
            max_request_headers: 2,
            max_request_body_bytes: None,
            stream_idle_timeout: Duration::from_secs(1),
            idle_timeouts: IntCounter::new("t", "t").unwrap(),
        };
        let mut req = Request::get("/")
            .header("a", "1")
            .header("b", "2")
            .body(body::empty())
            .unwrap();
        assert!(check_header_count(&req, &limits).is_ok());
        req.headers_mut().insert("c", http::HeaderValue::from_static("3"));
        let refused = check_header_count(&req, &limits).unwrap_err();
        assert_eq!(refused.status(), http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
}
