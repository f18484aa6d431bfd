//! The front path's steps: what every proxied request goes through before
//! and after its route, each step on its own so that each can be tested
//! alone. `stack::front` composes them, in this order:
//!
//! 1. `early_response::track`: watch an HTTP/1.x request body for its end;
//! 2. `headers::settle_host`: `Host` from the request's authority, which
//!    wins over a `Host` header; an HTTP/1.1 request without exactly one
//!    `Host` is answered 400 at step 7 without a route;
//!    and [`Downstream::tag_original_destination`];
//! 3. `upgrade::prepare`: hop-by-hop headers out (an HTTP/1.1 upgrade keeps
//!    its handshake) and the downstream connection's upgrade taken;
//! 4. `headers::set_forwarding`: `x-forwarded-*`, `x-request-id`;
//! 5. `telemetry::trace`'s `Tracing::start`: trace context in and out;
//! 6. [`RouteTable::pick`], then the target service (the route's stack)
//!    under the listener's and route's `limits` (header count, body size,
//!    stream idle timeout; see `limits` and `idle`);
//! 7. `answer::rescue`: an error becomes its response (the one rescue step;
//!    a gRPC request gets a gRPC trailers-only answer);
//! 8. `upgrade::finish`: a 101 joins the two connections (under the stream
//!    idle timeout), any other response loses its hop-by-hop headers;
//! 9. `answer::finish_headers`: the downstream's HTTP version, `alt-svc`;
//! 10. `early_response`'s `announce_close`: `connection: close` on a
//!     response sent before its HTTP/1.x request body was read;
//! 11. the route's metrics, then `record::report`: the span and the access
//!     log line.
//!
//! Why this module sits before `stack` in the module order: `stack` is the
//! one place where paths are composed, so the steps it composes must come
//! before it. The route table is compiled in `snapshot`, after `stack`;
//! the steps see it only through the [`RouteTable`] trait, which
//! `snapshot::ListenerRoutes` implements, so the composition is generic over
//! it: one instance, no boxing, no dynamic dispatch. `proxy` (after
//! `snapshot`) runs the composition for each request.

pub mod answer;
pub mod early_response;
pub mod headers;
pub mod idle;
pub mod limits;
pub mod record;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request};

use crate::core::body::Body;
use crate::core::extensions::OriginalDestination;
use crate::core::service::HttpService;
use crate::telemetry::metrics::RouteMetrics;
use crate::tls::PeerIdentity;

/// Who is on the other end of one downstream connection.
pub struct Downstream {
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    pub scheme: &'static str,
    /// The verified client certificate, on mTLS listeners.
    pub identity: Option<PeerIdentity>,
    /// Where the connection was going before a nat redirect, on listeners
    /// with `original_destination`.
    pub original_destination: Option<SocketAddr>,
}

impl Downstream {
    /// Tells routing and the original-destination cluster where the
    /// connection was going (the [`OriginalDestination`] extension).
    pub fn tag_original_destination(&self, req: &mut Request<Body>) {
        if let Some(destination) = self.original_destination {
            req.extensions_mut().insert(OriginalDestination(destination));
        }
    }

    /// A plain-HTTP client of listener `public`, for tests.
    #[cfg(test)]
    pub(crate) fn example() -> Self {
        Downstream {
            listener: "public".into(),
            peer: "127.0.0.1:4000".parse().unwrap(),
            scheme: "http",
            identity: None,
            original_destination: None,
        }
    }
}

/// What routing chose for one request.
pub struct Picked<'a> {
    pub route: &'a str,
    pub cluster: &'a str,
    pub service: &'a HttpService,
    pub metrics: &'a RouteMetrics,
    /// The route's own `limits.max_request_body_bytes`.
    pub max_request_body_bytes: Option<u64>,
}

/// One listener's routes, as the front path sees them.
pub trait RouteTable {
    /// The route and target for `req` from a client whose certificate
    /// identity (mTLS) is `identity`; `None` when no route takes it.
    fn pick(&self, req: &Request<Body>, identity: Option<&str>) -> Option<Picked<'_>>;
    /// Metrics of the requests no route took.
    fn unmatched(&self) -> &RouteMetrics;
    /// The `alt-svc` header every response on this listener carries.
    fn alt_svc(&self) -> Option<&HeaderValue>;
    /// The listener's per-request limits.
    fn limits(&self) -> &limits::StreamLimits;
}
