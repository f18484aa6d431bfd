//! The mirror's request path: the tower service in front of the route's
//! primary service. It picks the requests to mirror, tees their bodies and
//! hands the shadow task (`shadow.rs`) what it needs, then passes the primary
//! through.
//!
//! Guarantees: the primary request, response and error reach the client
//! unchanged, with no second box around the primary future; a request not
//! selected, or over `max_in_flight` (counted `dropped`), costs one random
//! draw and a few header lookups; the shadow is told to start only when the
//! primary future is first polled, and learns the primary's status (and,
//! with `compare:`, its headers and a copy of its body) once it answers.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::shadow::{shadow_side, PrimarySeen, ShadowHead, ShadowJob};
use super::tee::{copy_body, BodyCopy};
use super::{MirrorLayer, MirrorState};
use crate::core::body::Body;
use crate::core::error::ProxyError;
use crate::core::service::ResponseFuture;
use crate::telemetry::mirror::MirrorResult;

impl<S> Layer<S> for MirrorLayer {
    type Service = Mirror<S>;
    fn layer(&self, inner: S) -> Mirror<S> {
        Mirror {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Mirror<S> {
    inner: S,
    state: Arc<MirrorState>,
}

impl MirrorState {
    /// Whether to mirror a request; `roll` is uniform in `0..100`.
    fn selects(&self, method: &Method, headers: &HeaderMap, roll: f64) -> bool {
        let declared_len = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        // An upgrade (WebSocket) is a connection, not a request to replay.
        let upgrade = headers.contains_key(header::UPGRADE);
        self.methods.contains(method)
            && roll < self.percent
            && !upgrade
            && declared_len.is_none_or(|n| n <= self.max_body_bytes)
    }
}

/// The inner service's future is already boxed (weft's `HttpService`), so
/// the primary passes through without a second box.
impl<S> Service<Request<Body>> for Mirror<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError, Future = ResponseFuture>,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let state = self.state.clone();
        if !state.selects(req.method(), req.headers(), rand::random_range(0.0..100.0)) {
            return self.inner.call(req);
        }
        state.metrics.requests.inc();
        let Ok(permit) = state.in_flight.clone().try_acquire_owned() else {
            state.metrics.record(MirrorResult::Dropped);
            return self.inner.call(req);
        };
        let head = ShadowHead::of(&req);
        let (req, request_copy) = copy_body(req, state.max_body_bytes);
        let started = Instant::now();
        let primary: Self::Future = self.inner.call(req);
        let (seen_tx, seen_rx) = oneshot::channel();
        let (dispatched_tx, dispatched_rx) = oneshot::channel();
        let shadow = ShadowJob {
            permit,
            head,
            request_copy,
            dispatched: dispatched_rx,
            primary: seen_rx,
        };
        tokio::spawn(shadow_side(state.clone(), shadow));
        Box::pin(primary_side(state, primary, started, dispatched_tx, seen_tx))
    }
}

/// Runs the primary: tells the shadow it is on its way, times it, and hands
/// the shadow what it answered.
async fn primary_side(
    state: Arc<MirrorState>,
    primary: ResponseFuture,
    started: Instant,
    dispatched: oneshot::Sender<()>,
    seen: oneshot::Sender<PrimarySeen>,
) -> Result<Response<Body>, ProxyError> {
    // The shadow starts only once the primary is on its way.
    let _ = dispatched.send(());
    let result = primary.await;
    state.metrics.primary_duration.observe(started.elapsed().as_secs_f64());
    let (result, observed) = observe_primary(result, state.compare.is_some(), state.max_body_bytes);
    // The shadow task may have finished already (shadow failed).
    let _ = seen.send(observed);
    result
}

/// What the shadow learns of the primary's answer: its status, and with
/// `compare` its headers and a copy of its body (up to `limit`) as well.
fn observe_primary(
    result: Result<Response<Body>, ProxyError>,
    compare: bool,
    limit: usize,
) -> (Result<Response<Body>, ProxyError>, PrimarySeen) {
    let nothing = || (HeaderMap::new(), BodyCopy::Ready(Bytes::new()));
    match result {
        Ok(response) if compare => {
            let (response, body) = copy_body(response, limit);
            let seen = (response.status().as_u16(), response.headers().clone(), body);
            (Ok(response), seen)
        }
        Ok(response) => {
            let (headers, body) = nothing();
            let seen = (response.status().as_u16(), headers, body);
            (Ok(response), seen)
        }
        Err(e) => {
            let (headers, body) = nothing();
            let seen = (e.status().as_u16(), headers, body);
            (Err(e), seen)
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::config::mirror::MirrorConfig;
    use crate::core::service::HttpService;
    use crate::layer::mirror::tests::layer_with;
    use crate::layer::mirror::DEFAULT_SHADOW_DEADLINE;

    #[test]
    fn selection_follows_methods_percent_and_declared_size() {
        let config: MirrorConfig =
            serde_yaml_ng::from_str("{ cluster: next, percent: 25, max_body_bytes: 10 }").unwrap();
        let shadow = HttpService::boxing(tower::service_fn(|_req| async {
            Ok::<_, ProxyError>(Response::new(crate::core::body::empty()))
        }));
        let (layer, _) = layer_with(&config, shadow, DEFAULT_SHADOW_DEADLINE);
        let state = &layer.state;
        let mut headers = HeaderMap::new();
        assert!(state.selects(&Method::GET, &headers, 24.9));
        assert!(!state.selects(&Method::GET, &headers, 25.0));
        assert!(!state.selects(&Method::POST, &headers, 0.0));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("11"));
        assert!(!state.selects(&Method::GET, &headers, 0.0));
        let mut upgrade = HeaderMap::new();
        upgrade.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!state.selects(&Method::GET, &upgrade, 0.0));
    }
}
