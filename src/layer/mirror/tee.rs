//! A body that streams through unchanged while keeping a copy of its data
//! up to a limit, for the mirror: the request body is copied for the shadow
//! and the primary response body for comparison, without ever delaying,
//! altering or failing the stream itself.
//!
//! Guarantees: frames pass through in order and untouched (trailers and
//! errors too); the copy never holds more than `limit` bytes; the receiver
//! learns [`Teed::Complete`] once the stream has ended, [`Teed::TooLarge`] as
//! soon as the limit is passed (so a waiting shadow can give up early), and
//! sees the sender dropped if the stream fails or is abandoned unfinished;
//! [`copy_body`] skips the tee for a body known to be empty.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::oneshot;

use http::{Request, Response};

use crate::core::body::{self, Body};
use crate::core::error::BoxError;

#[derive(Debug)]
pub enum Teed {
    Complete(Bytes),
    TooLarge,
}

pub struct TeeBody {
    inner: Body,
    copy: BytesMut,
    limit: usize,
    done: Option<oneshot::Sender<Teed>>,
}

impl TeeBody {
    pub fn new(inner: Body, limit: usize) -> (Self, oneshot::Receiver<Teed>) {
        let (done, rx) = oneshot::channel();
        let tee = Self {
            inner,
            copy: BytesMut::new(),
            limit,
            done: Some(done),
        };
        (tee, rx)
    }

    fn finish(&mut self, outcome: Teed) {
        if let Some(done) = self.done.take() {
            // The receiver may be gone (shadow gave up); nothing to tell then.
            let _ = done.send(outcome);
        }
    }
}

impl http_body::Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(data), Some(_)) = (frame.data_ref(), &this.done) {
                    if this.copy.len() + data.len() > this.limit {
                        this.copy = BytesMut::new();
                        this.finish(Teed::TooLarge);
                    } else {
                        this.copy.extend_from_slice(data);
                    }
                }
            }
            Some(Err(_)) => this.done = None,
            None => {
                let copy = this.copy.split().freeze();
                this.finish(Teed::Complete(copy));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TeeBody {
    fn drop(&mut self) {
        // hyper stops polling once `is_end_stream` says so, without asking
        // for the final `None`: the copy is complete all the same.
        if self.inner.is_end_stream() {
            let copy = self.copy.split().freeze();
            self.finish(Teed::Complete(copy));
        }
    }
}

/// A body copy in the making.
pub enum BodyCopy {
    Ready(Bytes),
    Teed(oneshot::Receiver<Teed>),
}

/// Puts a tee on a request's or response's body unless it is known empty.
pub fn copy_body<M>(message: M, limit: usize) -> (M, BodyCopy)
where
    M: HasBody,
{
    if message.body_ref().is_end_stream() {
        return (message, BodyCopy::Ready(Bytes::new()));
    }
    let mut message = message;
    let (tee, rx) = TeeBody::new(std::mem::replace(message.body_mut_ref(), body::empty()), limit);
    *message.body_mut_ref() = tee.boxed();
    (message, BodyCopy::Teed(rx))
}

/// Requests and responses alike, for [`copy_body`].
pub trait HasBody {
    fn body_ref(&self) -> &Body;
    fn body_mut_ref(&mut self) -> &mut Body;
}

impl HasBody for Request<Body> {
    fn body_ref(&self) -> &Body {
        self.body()
    }
    fn body_mut_ref(&mut self) -> &mut Body {
        self.body_mut()
    }
}

impl HasBody for Response<Body> {
    fn body_ref(&self) -> &Body {
        self.body()
    }
    fn body_mut_ref(&mut self) -> &mut Body {
        self.body_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn chunks(parts: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    #[tokio::test]
    async fn streams_unchanged_and_copies_within_the_limit() {
        let (tee, rx) = TeeBody::new(chunks(&["ab", "cd"]), 4);
        let out = tee.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"abcd");
        assert!(matches!(rx.await, Ok(Teed::Complete(b)) if &b[..] == b"abcd"));
    }

    #[tokio::test]
    async fn past_the_limit_the_copy_is_abandoned_not_the_stream() {
        let (tee, rx) = TeeBody::new(chunks(&["ab", "cd", "ef"]), 3);
        let out = tee.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"abcdef");
        assert!(matches!(rx.await, Ok(Teed::TooLarge)));
    }

    #[tokio::test]
    async fn an_unfinished_stream_completes_nothing() {
        let (tee, rx) = TeeBody::new(chunks(&["ab", "cd"]), 10);
        drop(tee);
        assert!(rx.await.is_err());
    }
}
