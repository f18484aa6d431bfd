//! HTTP/3 plumbing shared by the QUIC listener and the `http3` upstream
//! client: request and response bodies cross between h3 streams and the one
//! body type of the proxy, frame by frame (data and trailers), without
//! buffering whole messages.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use h3::error::StreamError;
use http::HeaderMap;
use http_body::Frame;
use http_body_util::BodyExt;
use parking_lot::Mutex;

use crate::core::body::Body;
use crate::core::error::BoxError;

/// The receiving half of an h3 request stream (server side: the request
/// body; client side: the response body).
pub trait RecvHalf: Send + Unpin + 'static {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>>;
    fn poll_trailers(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<HeaderMap>, StreamError>>;
}

/// The sending half of an h3 request stream.
pub trait SendHalf: Send {
    fn send_data(&mut self, data: Bytes) -> impl Future<Output = Result<(), StreamError>> + Send;
    fn send_trailers(&mut self, trailers: HeaderMap) -> impl Future<Output = Result<(), StreamError>> + Send;
    fn finish(&mut self) -> impl Future<Output = Result<(), StreamError>> + Send;
    /// Ends the stream with `H3_INTERNAL_ERROR`, so the peer sees the message
    /// cut off (dropping a quinn stream would finish it as if complete).
    fn reset(&mut self);
}

macro_rules! h3_halves {
    ($module:ident) => {
        impl RecvHalf for h3::$module::RequestStream<h3_quinn::RecvStream, Bytes> {
            fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
                self.poll_recv_data(cx)
                    .map_ok(|data| data.map(|mut b| b.copy_to_bytes(b.remaining())))
            }
            fn poll_trailers(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<HeaderMap>, StreamError>> {
                self.poll_recv_trailers(cx)
            }
        }

        impl SendHalf for h3::$module::RequestStream<h3_quinn::SendStream<Bytes>, Bytes> {
            fn send_data(&mut self, data: Bytes) -> impl Future<Output = Result<(), StreamError>> + Send {
                h3::$module::RequestStream::send_data(self, data)
            }
            fn send_trailers(&mut self, trailers: HeaderMap) -> impl Future<Output = Result<(), StreamError>> + Send {
                h3::$module::RequestStream::send_trailers(self, trailers)
            }
            fn finish(&mut self) -> impl Future<Output = Result<(), StreamError>> + Send {
                h3::$module::RequestStream::finish(self)
            }
            fn reset(&mut self) {
                self.stop_stream(h3::error::Code::H3_INTERNAL_ERROR)
            }
        }
    };
}

h3_halves!(server);
h3_halves!(client);

/// A body read from an h3 stream: its data frames, then its trailers.
pub struct H3Body<R> {
    // A Mutex only to make the body `Sync` (the proxy's body type requires
    // it); `get_mut` never locks.
    stream: Mutex<R>,
    data_done: bool,
    finished: bool,
}

impl<R: RecvHalf> H3Body<R> {
    pub fn new(stream: R) -> Self {
        Self {
            stream: Mutex::new(stream),
            data_done: false,
            finished: false,
        }
    }

    pub fn boxed(self) -> Body {
        BodyExt::boxed(self)
    }
}

impl<R: RecvHalf> http_body::Body for H3Body<R> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        let stream = this.stream.get_mut();
        if !this.data_done {
            match stream.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Poll::Ready(Ok(None)) => this.data_done = true,
                Poll::Ready(Err(e)) => {
                    this.finished = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
        let trailers = std::task::ready!(stream.poll_trailers(cx));
        this.finished = true;
        match trailers {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}

/// Streams `body` into `stream` frame by frame, then finishes the stream;
/// a body that fails resets it (a response cut off by the stream idle
/// timeout, a request body past its limit).
pub async fn send_body<S: SendHalf>(stream: &mut S, mut body: Body) -> Result<(), BoxError> {
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                stream.reset();
                return Err(e);
            }
        };
        match frame.into_data() {
            Ok(data) => {
                if !data.is_empty() {
                    stream.send_data(data).await?;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    stream.send_trailers(trailers).await?;
                    // Trailers end the message; `finish` would send nothing new.
                    return Ok(());
                }
            }
        }
    }
    stream.finish().await?;
    Ok(())
}
