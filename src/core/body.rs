//! The one body type every layer speaks: a boxed stream of frames, so request
//! and response bodies (data and trailers) stream through without buffering.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

use crate::core::error::BoxError;

pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// Boxes any body whose errors can be boxed (hyper's `Incoming`, mostly).
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// Keeps `guard` alive as long as the body: a slot or count tied to a
/// response is released when the body has been read to its end (hyper then
/// drops it) or abandoned.
pub fn hold_until_dropped<G: Send + Sync + 'static>(body: Body, guard: G) -> Body {
    body.map_err(move |e| {
        let _ = &guard;
        e
    })
    .boxed()
}
