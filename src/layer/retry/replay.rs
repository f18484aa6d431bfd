//! Keeping a request body so a retry can send it again.
//!
//! Bodies whose declared length (Content-Length, or an ended stream) fits
//! the replay buffer are read ahead and sent from memory. Others stream
//! through a [`Tape`] that records up to the replay buffer as they go:
//! reading an undeclared-length body ahead could deadlock a client that
//! waits for a response before sending more (gRPC streaming). A request
//! whose body outgrew the buffer is not retried (unless no try read any of
//! it, as after a connect failure).

use bytes::Bytes;
use http::HeaderMap;
use http_body::Body as _;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use crate::core::body::{self, Body};
use crate::core::error::{BoxError, ErrorKind, ProxyError};

use super::tape::Tape;

/// A request body that can be turned into a body for each try.
pub enum ReplayBody {
    /// Read in full before the first try.
    Buffered {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    Taped(Tape),
}

impl ReplayBody {
    pub fn body(&self) -> Body {
        let (data, trailers) = match self {
            Self::Taped(tape) => return tape.body(),
            Self::Buffered { data, trailers } => (data, trailers),
        };
        match trailers {
            None if data.is_empty() => body::empty(),
            None => body::full(data.clone()),
            Some(trailers) => {
                let frames = [Frame::data(data.clone()), Frame::trailers(trailers.clone())];
                StreamBody::new(futures_util::stream::iter(frames.map(Ok::<_, BoxError>))).boxed()
            }
        }
    }

    /// Whether another try would get the whole body.
    pub fn can_replay(&self) -> bool {
        match self {
            Self::Buffered { .. } => true,
            Self::Taped(tape) => tape.can_replay(),
        }
    }
}

/// Reads `body` if its declared length is at most `limit` bytes; otherwise
/// puts it on a tape that records up to `limit` bytes.
pub async fn prepare(body: Body, limit: u64) -> Result<ReplayBody, ProxyError> {
    let fits = body.is_end_stream() || body.size_hint().upper().is_some_and(|n| n <= limit);
    if !fits {
        return Ok(ReplayBody::Taped(Tape::new(body, limit)));
    }
    let collected = body
        .collect()
        .await
        .map_err(|e| ProxyError::caused_by(ErrorKind::BadRequest, "reading the request body", e))?;
    let trailers = collected.trailers().cloned();
    Ok(ReplayBody::Buffered {
        data: collected.to_bytes(),
        trailers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_bodies_replay_and_large_ones_stream_once() {
        let replay = prepare(body::full("hello"), 5).await.unwrap();
        assert!(matches!(replay, ReplayBody::Buffered { .. }));
        for _ in 0..2 {
            assert_eq!(replay.body().collect().await.unwrap().to_bytes(), "hello");
        }
        let streamed = prepare(body::full("hello!"), 5).await.unwrap();
        assert!(matches!(streamed, ReplayBody::Taped(_)));
        assert!(streamed.can_replay(), "nothing read yet");
        let sent = streamed.body();
        assert_eq!(sent.size_hint().exact(), Some(6));
        assert_eq!(sent.collect().await.unwrap().to_bytes(), "hello!");
        assert!(!streamed.can_replay());
        assert!(matches!(
            prepare(body::empty(), 0).await.unwrap(),
            ReplayBody::Buffered { .. }
        ));
    }
}
