//! Who broke an exchange: the request body is watched on its way upstream.
//!
//! A request body fails because of the client (a malformed chunk size, a
//! body shorter than its `Content-Length`, a client that went away or reset
//! its stream) or of weft, never because of the upstream. The upstream
//! connection then reports that failure in its own words (hyper's HTTP/1
//! client as a body error, its HTTP/2 client as the stream reset it sent),
//! so the error it returns cannot be trusted to say who was at fault; the
//! watch records the body's own failure as it happens.
//!
//! Guarantee: when [`Watch::blame`] sees a failed exchange whose request
//! body failed, the result is a [`ErrorKind::BadRequest`] (400), which the
//! cluster never counts against the endpoint and the retry layer never
//! retries. The upstream connection the body was on is not reused: hyper's
//! HTTP/1 client closes a connection whose request body failed, and its
//! HTTP/2 client resets the stream.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::core::body::Body;
use crate::core::error::{BoxError, ErrorKind, ProxyError};

/// What the watched body saw: its failure, if it failed.
pub struct Watch {
    /// `None` for a body that was complete to begin with.
    failure: Option<Arc<OnceLock<String>>>,
}

/// Wraps `req`'s body so a failure of it is recorded in the returned [`Watch`].
/// A body that is already complete (a GET's) cannot fail and is left as it is.
pub fn watch(req: Request<Body>) -> (Request<Body>, Watch) {
    if req.body().is_end_stream() {
        return (req, Watch { failure: None });
    }
    let failure = Arc::new(OnceLock::new());
    let watch = Watch {
        failure: Some(failure.clone()),
    };
    let req = req.map(|inner| WatchedBody { inner, failure }.boxed());
    (req, watch)
}

impl Watch {
    /// The exchange's result, with a failure blamed on the client when the
    /// request body failed (whatever the upstream connection reported).
    pub fn blame<T>(&self, result: Result<T, ProxyError>) -> Result<T, ProxyError> {
        match (result, self.failure.as_deref().and_then(OnceLock::get)) {
            (Err(_), Some(cause)) => Err(ProxyError::new(
                ErrorKind::BadRequest,
                format!("reading the request body: {cause}"),
            )),
            (result, _) => result,
        }
    }
}

struct WatchedBody {
    inner: Body,
    failure: Arc<OnceLock<String>>,
}

impl HttpBody for WatchedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled {
            // Recorded before the upstream connection hears of it.
            let _ = self.failure.set(e.to_string());
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
    use futures_util::stream;
    use http_body_util::StreamBody;

    fn failing_body() -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Err("invalid chunk size".into()),
        ];
        StreamBody::new(stream::iter(frames)).boxed()
    }

    #[tokio::test]
    async fn a_failed_body_turns_any_failure_into_a_bad_request() {
        let (req, watch) = watch(Request::new(failing_body()));
        let reset = || Err::<(), _>(ProxyError::new(ErrorKind::UpstreamReset, "broken pipe"));
        // Before the body failed, the upstream's error stands.
        assert_eq!(watch.blame(reset()).unwrap_err().kind(), ErrorKind::UpstreamReset);
        assert!(req.into_body().collect().await.is_err());
        let blamed = watch.blame(reset()).unwrap_err();
        assert_eq!(blamed.kind(), ErrorKind::BadRequest);
        assert!(
            blamed.describe().contains("invalid chunk size"),
            "{}",
            blamed.describe()
        );
        // A response that came before the body failed is still the response.
        assert!(watch.blame(Ok::<_, ProxyError>(())).is_ok());
    }
}
