//! Checks on an upstream's answer before weft forwards it: an answer no
//! client should get becomes an upstream error (502, counted against the
//! endpoint) while not one byte of it has been sent downstream.
//!
//! - A status outside 100-599 (HTTP/1.1 allows any three digits; RFC 9110
//!   section 15 defines only these classes).
//! - `101 Switching Protocols` to a request that did not ask to upgrade:
//!   the connection would then carry something the client never agreed to.
//! - A response framed by both `Content-Length` and `Transfer-Encoding`
//!   (RFC 9112 section 6.1: "ought to be handled as an error"; it is the
//!   shape of response splitting).
//! - A body that fails at once (an invalid chunk size right behind the
//!   headers): hyper's server would drop such a response unsent and close
//!   the client's connection without a byte. The body is polled once,
//!   without waiting; a frame that is ready is kept and sent first, and a
//!   body that fails only later can only cut the response short.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::core::body::{self, Body};
use crate::core::error::{BoxError, ErrorKind, ProxyError};

/// `response` if weft may forward it; `asked_upgrade` says whether the
/// request carried `Upgrade`.
pub fn check(response: Response<Body>, asked_upgrade: bool) -> Result<Response<Body>, ProxyError> {
    let status = response.status();
    if !(100..=599).contains(&status.as_u16()) {
        return Err(invalid(format!("status {} is outside 100-599", status.as_u16())));
    }
    if status == StatusCode::SWITCHING_PROTOCOLS && !asked_upgrade {
        return Err(invalid(
            "101 Switching Protocols to a request that did not ask to upgrade".into(),
        ));
    }
    let headers = response.headers();
    if headers.contains_key(header::CONTENT_LENGTH) && headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(invalid("response has both Content-Length and Transfer-Encoding".into()));
    }
    first_frame(response)
}

fn invalid(detail: String) -> ProxyError {
    ProxyError::new(ErrorKind::UpstreamReset, detail)
}

/// Polls the body once without waiting (see the module docs).
fn first_frame(response: Response<Body>) -> Result<Response<Body>, ProxyError> {
    let (parts, mut rest) = response.into_parts();
    if rest.is_end_stream() {
        return Ok(Response::from_parts(parts, rest));
    }
    let mut cx = Context::from_waker(Waker::noop());
    let body = match Pin::new(&mut rest).poll_frame(&mut cx) {
        Poll::Ready(Some(Err(e))) => return Err(ProxyError::caused_by(ErrorKind::UpstreamReset, "response body", e)),
        Poll::Ready(Some(Ok(frame))) => Prepended {
            first: Some(frame),
            rest,
        }
        .boxed(),
        Poll::Ready(None) => body::empty(),
        // The real waker is registered by the next poll, hyper's.
        Poll::Pending => rest,
    };
    Ok(Response::from_parts(parts, body))
}

/// A body whose first frame was already taken off it.
struct Prepended {
    first: Option<Frame<Bytes>>,
    rest: Body,
}

impl HttpBody for Prepended {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.first.take() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let first = self
            .first
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + first);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + first);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::StreamBody;

    fn response(
        status: u16,
        headers: &[(&'static str, &str)],
        frames: Vec<Result<Frame<Bytes>, BoxError>>,
    ) -> Response<Body> {
        let mut response = Response::new(StreamBody::new(stream::iter(frames)).boxed());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            response.headers_mut().insert(*k, v.parse().unwrap());
        }
        response
    }

    fn data(text: &'static str) -> Result<Frame<Bytes>, BoxError> {
        Ok(Frame::data(Bytes::from_static(text.as_bytes())))
    }

    #[tokio::test]
    async fn a_ready_first_frame_is_kept_and_sent_first() {
        let ok = check(response(200, &[], vec![data("ab"), data("cd")]), false).unwrap();
        let bytes = ok.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abcd");
    }

    #[test]
    fn odd_answers_are_upstream_errors() {
        let odd = [
            check(response(600, &[], vec![]), false),
            check(response(101, &[], vec![]), false),
            check(
                response(
                    200,
                    &[("content-length", "2"), ("transfer-encoding", "chunked")],
                    vec![data("ab")],
                ),
                false,
            ),
            check(response(200, &[], vec![Err("invalid chunk size line".into())]), false),
        ];
        for result in odd {
            assert_eq!(result.unwrap_err().kind(), ErrorKind::UpstreamReset);
        }
        assert!(check(response(101, &[], vec![]), true).is_ok());
        assert!(check(response(599, &[], vec![]), false).is_ok());
    }
}
