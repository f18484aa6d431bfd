//! The mirror's shadow side: one spawned task per mirrored request that
//! sends the copy to the shadow cluster (and, with a `noise_cluster`, a
//! second copy to the old version), waits for the primary's answer, and
//! counts the pair as match, mismatch or noise (`compare.rs`), reporting
//! mismatches.
//!
//! Guarantees: the task holds one of the route's `max_in_flight` slots
//! until it ends, and ends by its deadline (the route's timeout, else
//! [`DEFAULT_SHADOW_DEADLINE`](super::DEFAULT_SHADOW_DEADLINE)) whatever the
//! shadow, noise or primary side do; nothing is sent when the primary never
//! started or never read its whole request body; shadow answers are read
//! only up to `max_body_bytes` and never reach the client; each request
//! counts one result at most (none without `compare:` unless the shadow
//! failed or a body was too large).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Uri, Version};
use http_body_util::BodyExt;
use prometheus::Histogram;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::{timeout_at, Instant};
use tower::Service;

use super::compare::{classify, CompareSpec, Differences, Observed};
use super::tee::{BodyCopy, Teed};
use super::{MirrorState, SHADOW_HEADER};
use crate::core::body::{self, Body};
use crate::core::service::HttpService;
use crate::telemetry::mirror::MirrorResult;

/// The request line and headers of the shadow copy.
#[derive(Clone)]
pub(super) struct ShadowHead {
    pub(super) method: Method,
    pub(super) uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl ShadowHead {
    pub(super) fn of(req: &Request<Body>) -> Self {
        let mut headers = req.headers().clone();
        headers.insert(SHADOW_HEADER, HeaderValue::from_static("true"));
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers,
        }
    }

    fn request(&self, body: Bytes) -> Request<Body> {
        let mut req = Request::new(body::full(body));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// What the shadow task learns of the primary: status, headers, body copy.
pub(super) type PrimarySeen = (u16, HeaderMap, BodyCopy);

/// Everything the shadow task needs of one request.
pub(super) struct ShadowJob {
    /// Holds one of `max_in_flight` slots until the task ends.
    pub(super) permit: OwnedSemaphorePermit,
    pub(super) head: ShadowHead,
    pub(super) request_copy: BodyCopy,
    /// Fires when the primary is first polled; dropped if it never is.
    pub(super) dispatched: oneshot::Receiver<()>,
    pub(super) primary: oneshot::Receiver<PrimarySeen>,
}

pub(super) async fn shadow_side(state: Arc<MirrorState>, job: ShadowJob) {
    let _permit = job.permit;
    let deadline = Instant::now() + state.targets.deadline;
    // Never polled (the client went away first): nothing was dispatched.
    if !matches!(timeout_at(deadline, job.dispatched).await, Ok(Ok(()))) {
        return;
    }
    if let Some(result) = mirror_once(&state, job.head, job.request_copy, job.primary, deadline).await {
        state.metrics.record(result);
    }
}

/// Sends the shadow (and noise) copy and compares; `None` when there is
/// nothing to count (no `compare:`, or the primary never finished).
async fn mirror_once(
    state: &MirrorState,
    head: ShadowHead,
    request_copy: BodyCopy,
    primary: oneshot::Receiver<PrimarySeen>,
    deadline: Instant,
) -> Option<MirrorResult> {
    let request_body = match finished_copy(request_copy, deadline).await {
        Some(Teed::Complete(bytes)) => bytes,
        Some(Teed::TooLarge) => return Some(MirrorResult::SkippedLarge),
        // The primary never read its whole body: there is no request to replay.
        None => return None,
    };
    let (shadow, noise) = send_copies(state, &head, request_body, deadline).await;
    let shadow = match shadow {
        Fetched::Complete(observed) => observed,
        Fetched::TooLarge => return Some(MirrorResult::SkippedLarge),
        Fetched::Failed => return Some(MirrorResult::ShadowError),
    };
    let spec = state.compare.as_ref()?;
    let (status, headers, body_copy) = timeout_at(deadline, primary).await.ok()?.ok()?;
    let primary = match finished_copy(body_copy, deadline).await? {
        Teed::Complete(body) => Observed { status, headers, body },
        Teed::TooLarge => return Some(MirrorResult::SkippedLarge),
    };
    Some(judge(state, spec, &head, &primary, &shadow, noise))
}

/// Sends the shadow copy and, when comparing with a noise cluster, the
/// noise copy, both at once.
async fn send_copies(
    state: &MirrorState,
    head: &ShadowHead,
    body: Bytes,
    deadline: Instant,
) -> (Fetched, Option<Fetched>) {
    let limit = state.max_body_bytes;
    let shadow = fetch(
        &state.targets.shadow,
        head.request(body.clone()),
        limit,
        deadline,
        Some(&state.metrics.shadow_duration),
    );
    let noise = async {
        match (&state.targets.noise, &state.compare) {
            (Some(noise), Some(_)) => Some(fetch(noise, head.request(body), limit, deadline, None).await),
            _ => None,
        }
    };
    tokio::join!(shadow, noise)
}

/// Classifies the pair, with the noise copy's differences as the baseline,
/// and reports a mismatch.
fn judge(
    state: &MirrorState,
    spec: &CompareSpec,
    head: &ShadowHead,
    primary: &Observed,
    shadow: &Observed,
    noise: Option<Fetched>,
) -> MirrorResult {
    let differences = spec.differences(primary, shadow);
    let noise = match noise {
        Some(Fetched::Complete(copy)) => Some(spec.differences(primary, &copy)),
        _ => None,
    };
    let result = classify(&differences, noise.as_ref());
    if result == MirrorResult::Mismatch {
        let explained = Differences::default();
        let shown = differences.without_noise(noise.as_ref().unwrap_or(&explained));
        state.report_mismatch(head, primary.status, shadow.status, shown);
    }
    result
}

async fn finished_copy(copy: BodyCopy, deadline: Instant) -> Option<Teed> {
    match copy {
        BodyCopy::Ready(bytes) => Some(Teed::Complete(bytes)),
        BodyCopy::Teed(rx) => timeout_at(deadline, rx).await.ok()?.ok(),
    }
}

enum Fetched {
    Complete(Observed),
    TooLarge,
    Failed,
}

/// Sends `req` and reads the answer's body up to `limit`, all by `deadline`.
async fn fetch(
    service: &HttpService,
    req: Request<Body>,
    limit: usize,
    deadline: Instant,
    headers_timer: Option<&Histogram>,
) -> Fetched {
    let started = Instant::now();
    // Route services are always ready (see `proxy`), so `call` without `ready`.
    let response = match timeout_at(deadline, service.clone().call(req)).await {
        Ok(Ok(response)) => response,
        _ => return Fetched::Failed,
    };
    if let Some(timer) = headers_timer {
        timer.observe(started.elapsed().as_secs_f64());
    }
    let (parts, body) = response.into_parts();
    match timeout_at(deadline, collect_limited(body, limit)).await {
        Ok(Ok(Some(body))) => Fetched::Complete(Observed {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }),
        Ok(Ok(None)) => Fetched::TooLarge,
        _ => Fetched::Failed,
    }
}

/// The body's data, or `None` once it passes `limit` (read no further).
async fn collect_limited(mut body: Body, limit: usize) -> Result<Option<Bytes>, crate::core::error::BoxError> {
    let mut data = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Some(chunk) = frame?.data_ref() {
            if data.len() + chunk.len() > limit {
                return Ok(None);
            }
            data.extend_from_slice(chunk);
        }
    }
    Ok(Some(data.freeze()))
}

#[cfg(test)]
mod tests {
    use http::Response;
    use tokio::time::Duration;
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::config::mirror::MirrorConfig;
    use crate::core::error::ProxyError;
    use crate::layer::mirror::tests::layer_with;

    #[tokio::test(start_paused = true)]
    async fn a_hanging_shadow_leaves_the_primary_alone_and_frees_its_slot_at_the_deadline() {
        let hanging: HttpService = HttpService::boxing(tower::service_fn(|_req| {
            std::future::pending::<Result<Response<Body>, ProxyError>>()
        }));
        let config: MirrorConfig = serde_yaml_ng::from_str("{ cluster: next, max_in_flight: 1 }").unwrap();
        let (layer, board) = layer_with(&config, hanging, Duration::from_secs(1));
        let primary = HttpService::boxing(tower::service_fn(|_req: Request<Body>| async {
            Ok(Response::new(body::full("primary")))
        }));
        let mirrored = layer.layer(primary);
        for _ in 0..3 {
            let response = mirrored.clone().oneshot(Request::new(body::empty())).await.unwrap();
            let text = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&text[..], b"primary");
        }
        let count = |r: MirrorResult| board.count(r);
        assert_eq!((board.requests.get(), count(MirrorResult::Dropped)), (3, 2));
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(count(MirrorResult::ShadowError), 1);
        assert_eq!(layer.state.in_flight.available_permits(), 1);
    }
}
