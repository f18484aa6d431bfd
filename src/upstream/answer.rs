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
//! - A body that fails among the frames already received with the head
//!   (an invalid chunk size right behind the headers; an HTTP/2 upstream's
//!   HEADERS, DATA and RST_STREAM read together). hyper's server queues the
//!   head and then polls the body in the same turn; a failure there drops
//!   the queued head unsent (HTTP/2: the RST_STREAM clears the stream's
//!   send queue; HTTP/1.1: the connection closes with the head still in its
//!   write buffer), so the client would get no status at all. The body is
//!   therefore read ahead without waiting, up to [`READ_AHEAD`] bytes: the
//!   frames that are ready are kept and sent first. A failure that arrives
//!   only after that (a moment later, in a packet of its own) is held back
//!   for [`HOLD`] before the body fails: the downstream connection's task,
//!   woken when the head was queued, writes the head meanwhile (HTTP/2),
//!   or hyper's HTTP/1.1 server flushes it while the body waits. One turn
//!   of the scheduler was not enough: on the multi-threaded runtime an idle
//!   worker steals the stream's task and resets the stream while the
//!   connection's task has not run yet (2 heads lost in 10 minutes of the
//!   soak). Such a failure then only cuts the response short.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::time::{Duration, Sleep};

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
    // Transfer-Encoding first: most responses have none, so one lookup.
    if headers.contains_key(header::TRANSFER_ENCODING) && headers.contains_key(header::CONTENT_LENGTH) {
        return Err(invalid("response has both Content-Length and Transfer-Encoding".into()));
    }
    read_ahead(response)
}

fn invalid(detail: String) -> ProxyError {
    ProxyError::new(ErrorKind::UpstreamReset, detail)
}

/// How many body bytes that are already there weft reads ahead: the initial
/// HTTP/2 stream window (RFC 9113 section 6.9.2), so all an HTTP/2 upstream
/// may send before weft reads, and a small bound on what a request holds.
pub const READ_AHEAD: usize = 65_535;

/// How long a body failure after the head is held back (see the module
/// docs): long enough for a busy runtime to run the connection's task, and
/// nothing next to the failure it delays (an upstream that broke mid-answer).
pub const HOLD: Duration = Duration::from_millis(50);

/// Reads the frames that are ready without waiting (see the module docs).
fn read_ahead(response: Response<Body>) -> Result<Response<Body>, ProxyError> {
    let (parts, mut rest) = response.into_parts();
    let mut cx = Context::from_waker(Waker::noop());
    let mut ready = Ready::default();
    let mut bytes = 0;
    let mut ended = rest.is_end_stream();
    while !ended && bytes < READ_AHEAD {
        match Pin::new(&mut rest).poll_frame(&mut cx) {
            Poll::Ready(Some(Err(e))) => {
                return Err(ProxyError::caused_by(ErrorKind::UpstreamReset, "response body", e))
            }
            Poll::Ready(Some(Ok(frame))) => {
                bytes += frame.data_ref().map_or(0, Bytes::len);
                ready.push(frame);
                ended = rest.is_end_stream();
            }
            Poll::Ready(None) => ended = true,
            // The real waker is registered by the next poll, hyper's.
            Poll::Pending => break,
        }
    }
    if ready.is_empty() && ended {
        return Ok(Response::from_parts(parts, body::empty()));
    }
    // A body that ended is not polled again.
    let rest = if ended { body::empty() } else { rest };
    let body = ReadAhead {
        ready,
        rest,
        held: Held::NotYet,
    };
    Ok(Response::from_parts(parts, body.boxed()))
}

/// Frames read ahead, in order. Most responses that are ready at once are
/// one frame, kept inline: the queue allocates only from the second.
#[derive(Default)]
struct Ready {
    first: Option<Frame<Bytes>>,
    more: VecDeque<Frame<Bytes>>,
}

impl Ready {
    fn push(&mut self, frame: Frame<Bytes>) {
        if self.first.is_none() && self.more.is_empty() {
            self.first = Some(frame);
        } else {
            self.more.push_back(frame);
        }
    }

    fn pop(&mut self) -> Option<Frame<Bytes>> {
        self.first.take().or_else(|| self.more.pop_front())
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.more.is_empty()
    }

    fn data_bytes(&self) -> u64 {
        let sizes = self.first.iter().chain(&self.more).filter_map(Frame::data_ref);
        sizes.map(|d| d.len() as u64).sum()
    }
}

/// A body whose first frames were already taken off it, and whose failure
/// is held back for [`HOLD`] (see the module docs).
struct ReadAhead {
    ready: Ready,
    rest: Body,
    held: Held,
}

/// Where the body's failure is.
enum Held {
    /// None seen yet.
    NotYet,
    /// Seen and held back until the timer fires.
    Holding(BoxError, Pin<Box<Sleep>>),
    /// Given out.
    Done,
}

impl HttpBody for ReadAhead {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.ready.pop() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Held::Holding(_, timer) = &mut self.held {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if let Held::Holding(e, _) = std::mem::replace(&mut self.held, Held::Done) {
                return Poll::Ready(Some(Err(e)));
            }
        }
        match Pin::new(&mut self.rest).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) if matches!(self.held, Held::NotYet) => {
                let mut timer = Box::pin(tokio::time::sleep(HOLD));
                // Registers the waker; a zero hold would be ready at once.
                if timer.as_mut().poll(cx).is_ready() {
                    self.held = Held::Done;
                    return Poll::Ready(Some(Err(e)));
                }
                self.held = Held::Holding(e, timer);
                Poll::Pending
            }
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && !matches!(self.held, Held::Holding(..)) && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let ready = self.ready.data_bytes();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + ready);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + ready);
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
    async fn ready_frames_are_kept_and_sent_first() {
        let ok = check(response(200, &[], vec![data("ab"), data("cd")]), false).unwrap();
        assert_eq!(ok.body().size_hint().exact(), Some(4));
        let bytes = ok.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abcd");
    }

    #[test]
    fn a_failure_right_behind_ready_frames_is_an_upstream_error() {
        let failed = check(response(200, &[], vec![data("ab"), Err("reset".into())]), false);
        assert_eq!(failed.unwrap_err().kind(), ErrorKind::UpstreamReset);
    }

    #[tokio::test]
    async fn reading_ahead_stops_at_its_bound() {
        static BIG: [u8; READ_AHEAD] = [b'x'; READ_AHEAD];
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(&BIG))),
            Err("reset after the bound".into()),
        ];
        let ok = check(response(200, &[], frames), false).unwrap();
        assert!(ok.into_body().collect().await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_after_the_read_ahead_is_held_back() {
        // Nothing ready at first: the failure comes on a later poll.
        let mut stalled_once = false;
        let body = http_body_util::StreamBody::new(stream::poll_fn(move |cx| {
            if !std::mem::replace(&mut stalled_once, true) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(Some(Err::<Frame<Bytes>, BoxError>("reset".into())))
        }));
        let ok = check(Response::new(body.boxed()), false).unwrap();
        let mut body = ok.into_body();
        let started = tokio::time::Instant::now();
        let failed = body.frame().await.unwrap().unwrap_err();
        assert_eq!(failed.to_string(), "reset");
        assert_eq!(started.elapsed(), HOLD);
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
