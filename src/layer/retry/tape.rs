//! Replaying a request body of undeclared length (chunked HTTP/1, most gRPC)
//! without reading it ahead: the first try streams it as the client sends
//! it, and every frame read is also recorded, up to the replay buffer size.
//! A later try replays the recorded frames and then continues reading the
//! client's body where the previous try left off.
//!
//! After linkerd2-proxy's `ReplayBody`. The client's body lives in the
//! shared tape, not in a try's body, so a try that never read it (connect
//! failure) leaves it intact. Every body made from one tape sees the same
//! frames in the same order, whichever of them pulled a frame from the
//! client. Once more than `limit` bytes were read, the tape stops recording:
//! [`Tape::can_replay`] turns false and a body that would need the
//! unrecorded frames fails instead of sending a corrupt request.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Frame;
use parking_lot::Mutex;

use crate::core::body::Body;
use crate::core::error::BoxError;

enum Recorded {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Recorded {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            Self::Data(data) => Frame::data(data.clone()),
            Self::Trailers(trailers) => Frame::trailers(trailers.clone()),
        }
    }
}

struct State {
    client: Body,
    recorded: Vec<Recorded>,
    recorded_bytes: u64,
    /// Frames read from the client so far; more than `recorded.len()` once
    /// recording stopped.
    frames_read: usize,
    ended: bool,
    /// Bodies waiting for the client; woken whenever any of them gets a frame.
    waiting: Vec<Waker>,
}

impl State {
    /// Counts a frame read from the client, and records it while the
    /// recording is complete and stays within `limit` bytes.
    fn record(&mut self, frame: &Frame<Bytes>, limit: u64) {
        let fits = self.recorded.len() == self.frames_read;
        let size = frame.data_ref().map_or(0, |d| d.len() as u64);
        if fits && self.recorded_bytes + size <= limit {
            let recorded = match frame.data_ref() {
                Some(data) => Some(Recorded::Data(data.clone())),
                None => frame.trailers_ref().cloned().map(Recorded::Trailers),
            };
            if let Some(recorded) = recorded {
                self.recorded.push(recorded);
                self.recorded_bytes += size;
            }
        }
        self.frames_read += 1;
    }

    /// Wakes `waker` with the next frame any body reads from the client.
    fn wait(&mut self, waker: &Waker) {
        if !self.waiting.iter().any(|w| w.will_wake(waker)) {
            self.waiting.push(waker.clone());
        }
    }
}

/// The shared recording of one request body.
#[derive(Clone)]
pub struct Tape {
    state: Arc<Mutex<State>>,
    limit: u64,
    /// The client body's size as declared before any of it was read; every
    /// try sends the whole body, so each reports this.
    size: SizeHint,
}

impl Tape {
    pub fn new(client: Body, limit: u64) -> Self {
        let size = client.size_hint();
        Self {
            size,
            state: Arc::new(Mutex::new(State {
                client,
                recorded: Vec::new(),
                recorded_bytes: 0,
                frames_read: 0,
                ended: false,
                waiting: Vec::new(),
            })),
            limit,
        }
    }

    /// A body for one try, starting from the first frame.
    pub fn body(&self) -> Body {
        TapeBody {
            tape: self.clone(),
            position: 0,
        }
        .boxed()
    }

    /// Whether a new body would still get every frame.
    pub fn can_replay(&self) -> bool {
        let state = self.state.lock();
        state.recorded.len() == state.frames_read
    }
}

struct TapeBody {
    tape: Tape,
    /// Index of the next frame this body yields.
    position: usize,
}

impl http_body::Body for TapeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let limit = self.tape.limit;
        let position = self.position;
        let mut state = self.tape.state.lock();
        if let Some(recorded) = state.recorded.get(position) {
            let frame = recorded.frame();
            drop(state);
            self.position += 1;
            return Poll::Ready(Some(Ok(frame)));
        }
        if position < state.frames_read {
            return Poll::Ready(Some(Err("request body exceeded the replay buffer".into())));
        }
        if state.ended {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut state.client).poll_frame(cx);
        let frame = match polled {
            Poll::Pending => {
                state.wait(cx.waker());
                return Poll::Pending;
            }
            Poll::Ready(None) => {
                state.ended = true;
                None
            }
            Poll::Ready(Some(Err(e))) => Some(Err(e)),
            Poll::Ready(Some(Ok(frame))) => {
                state.record(&frame, limit);
                Some(Ok(frame))
            }
        };
        // Another body may be waiting for the frame this one just took; it
        // finds it in the recording (or learns it can no longer replay).
        for waker in state.waiting.drain(..) {
            waker.wake();
        }
        let advanced = matches!(frame, Some(Ok(_)));
        drop(state);
        if advanced {
            self.position += 1;
        }
        Poll::Ready(frame)
    }

    fn size_hint(&self) -> SizeHint {
        self.tape.size
    }

    fn is_end_stream(&self) -> bool {
        let state = self.tape.state.lock();
        state.ended && self.position >= state.frames_read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::body;
    use futures_util::stream;
    use http_body_util::StreamBody;

    fn chunked(parts: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(stream::iter(frames)).boxed()
    }

    async fn text(body: Body) -> Result<String, BoxError> {
        let bytes = body.collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn unread_partly_read_and_fully_read_bodies_all_replay() {
        let tape = Tape::new(chunked(&["ab", "cd", "ef"]), 100);
        // A try that never read (connect failure) leaves everything.
        drop(tape.body());
        let mut partial = tape.body();
        let first = partial.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "ab");
        // The next try gets the recorded frame and then the rest of the client's body.
        assert_eq!(text(tape.body()).await.unwrap(), "abcdef");
        // The abandoned try still sees a consistent stream.
        assert_eq!(text(partial).await.unwrap(), "cdef");
        assert!(tape.can_replay());
        assert_eq!(text(tape.body()).await.unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn bodies_over_the_limit_stream_once_and_refuse_replay() {
        let tape = Tape::new(chunked(&["abc", "def", "ghi"]), 4);
        assert_eq!(text(tape.body()).await.unwrap(), "abcdefghi");
        assert!(!tape.can_replay());
        assert!(text(tape.body()).await.is_err());
        let small = Tape::new(body::empty(), 0);
        assert_eq!(text(small.body()).await.unwrap(), "");
        assert!(small.can_replay());
    }
}
