//! Keeping a request body so a retry can send it again.
//!
//! Only bodies whose declared length (Content-Length, or an ended stream)
//! fits the replay buffer are read ahead; others stream through untouched
//! and their request is not retried. Reading an undeclared-length body ahead
//! could deadlock a client that waits for a response before sending more
//! (gRPC streaming), and keeping a copy while streaming could not replay a
//! connect failure, whose body the client already consumed and dropped.

use bytes::Bytes;
use http::HeaderMap;
use http_body::Body as _;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use crate::body::{self, Body};
use crate::error::{BoxError, ErrorKind, ProxyError};

/// A fully read request body that can be turned into a body again and again.
pub struct ReplayBody {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl ReplayBody {
    pub fn body(&self) -> Body {
        match &self.trailers {
            None if self.data.is_empty() => body::empty(),
            None => body::full(self.data.clone()),
            Some(trailers) => {
                let frames = [Frame::data(self.data.clone()), Frame::trailers(trailers.clone())];
                StreamBody::new(futures_util::stream::iter(frames.map(Ok::<_, BoxError>))).boxed()
            }
        }
    }
}

/// Reads `body` if its declared length is at most `limit` bytes; otherwise
/// gives it back unread.
pub async fn read_if_small(body: Body, limit: u64) -> Result<Result<ReplayBody, Body>, ProxyError> {
    let fits = body.is_end_stream() || body.size_hint().upper().is_some_and(|n| n <= limit);
    if !fits {
        return Ok(Err(body));
    }
    let collected = body.collect().await.map_err(|e| {
        ProxyError::new(
            ErrorKind::BadRequest,
            format!("reading the request body: {}", crate::error::error_chain(&*e)),
        )
    })?;
    let trailers = collected.trailers().cloned();
    Ok(Ok(ReplayBody {
        data: collected.to_bytes(),
        trailers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_bodies_replay_and_large_ones_pass_through() {
        let Ok(replay) = read_if_small(body::full("hello"), 5).await.unwrap() else {
            panic!("5 bytes fit a 5-byte buffer");
        };
        for _ in 0..2 {
            assert_eq!(replay.body().collect().await.unwrap().to_bytes(), "hello");
        }
        let Err(streamed) = read_if_small(body::full("hello!"), 5).await.unwrap() else {
            panic!("6 bytes do not fit");
        };
        assert_eq!(streamed.collect().await.unwrap().to_bytes(), "hello!");
        assert!(read_if_small(body::empty(), 0).await.unwrap().is_ok());
    }
}
