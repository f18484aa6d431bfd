//! A response that goes out before its HTTP/1.x request body was read to
//! the end (an upstream or weft answering 503 before a large upload is in)
//! ends the connection: hyper's server closes it after the response rather
//! than read the rest of the body. The response says so with
//! `connection: close`, as Envoy's does, so the client does not send its
//! next request onto a closing connection. HTTP/2 and HTTP/3 end only the
//! stream and are left alone, as are upgrades.
//!
//! An HTTP/1.x request whose body ends in trailers ends the connection too:
//! hyper ends a trailer section only at a CRLF line and takes a bare LF as
//! part of a trailer, so the bytes after one may be a request to a parser in
//! front of weft (which ends lines at LF) and part of the trailers to weft.
//! Reading nothing more from such a connection keeps the two from answering
//! different requests.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::core::body::Body;
use crate::core::error::BoxError;

/// Whether the request body has been read to its end; `None` when that
/// does not matter (not HTTP/1.x, or no body).
pub struct RequestEnd(Option<Arc<AtomicBool>>);

/// Watches `req`'s body for its end.
pub fn track(req: Request<Body>) -> (Request<Body>, RequestEnd) {
    let http1 = matches!(req.version(), Version::HTTP_10 | Version::HTTP_11);
    if !http1 || req.body().is_end_stream() {
        return (req, RequestEnd(None));
    }
    let ended = Arc::new(AtomicBool::new(false));
    let flag = ended.clone();
    let req = req.map(|inner| {
        EndWatch {
            inner,
            ended: flag,
            trailers: false,
        }
        .boxed()
    });
    (req, RequestEnd(Some(ended)))
}

impl RequestEnd {
    /// Adds `connection: close` to `response` if the request body is unread.
    pub fn announce_close(&self, response: &mut Response<Body>) {
        let unread = self.0.as_ref().is_some_and(|ended| !ended.load(Ordering::Acquire));
        if unread && response.status() != StatusCode::SWITCHING_PROTOCOLS {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

struct EndWatch {
    inner: Body,
    ended: Arc<AtomicBool>,
    /// The body had trailers: it never counts as read (see the module doc).
    trailers: bool,
}

impl HttpBody for EndWatch {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // A sized body is done with its last byte; a chunked one when it says so.
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(frame))) => {
                self.trailers |= frame.is_trailers();
                self.inner.is_end_stream()
            }
            _ => false,
        };
        if ended && !self.trailers {
            self.ended.store(true, Ordering::Release);
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

    fn post(version: Version) -> Request<Body> {
        let mut req = Request::new(body::full("abc"));
        *req.version_mut() = version;
        req
    }

    fn closes(end: &RequestEnd) -> bool {
        let mut response = Response::new(body::empty());
        end.announce_close(&mut response);
        response.headers().get(header::CONNECTION).is_some_and(|v| v == "close")
    }

    #[tokio::test]
    async fn only_an_unread_http1_body_closes_the_connection() {
        let (req, end) = track(post(Version::HTTP_11));
        assert!(closes(&end));
        req.into_body().collect().await.unwrap();
        assert!(!closes(&end));
        let (_req, end) = track(post(Version::HTTP_2));
        assert!(!closes(&end));
        let (_req, end) = track(Request::new(body::empty()));
        assert!(!closes(&end));
    }

    #[tokio::test]
    async fn a_body_with_trailers_ends_the_connection() {
        let frames = [Frame::data(Bytes::from("abc")), Frame::trailers(http::HeaderMap::new())];
        let stream = futures_util::stream::iter(frames.map(Ok::<_, BoxError>));
        let mut req = Request::new(body::boxed(http_body_util::StreamBody::new(stream)));
        *req.version_mut() = Version::HTTP_11;
        let (req, end) = track(req);
        req.into_body().collect().await.unwrap();
        assert!(closes(&end));
    }
}
