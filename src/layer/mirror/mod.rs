//! Traffic mirroring with response comparison (`mirror:` on a route, issue
//! 6): a sampled copy of each selected request goes to a shadow cluster, and
//! with `compare:` the shadow's answer is compared with the primary's and
//! the pair counted as match, mismatch or noise (see `compare.rs`).
//!
//! Guarantees, all in service of "the shadow costs the client nothing":
//! - the primary request, response and error are passed through unchanged;
//!   bodies are copied by a tee while streaming (`tee.rs`), never held back;
//! - the shadow is sent from a spawned task once the primary has been handed
//!   to its cluster (with a body: once the primary has read all of it), and
//!   its answer never reaches the client;
//! - at most `max_in_flight` shadows per route run at once; a request over
//!   that is counted `dropped` and not mirrored (no queue); each shadow,
//!   comparison included, ends by the route's timeout (default 10 s), so a
//!   hanging shadow cluster frees its slot;
//! - request bodies over `max_body_bytes` are not mirrored, and response
//!   bodies are buffered for comparison only up to it (`skipped_large`);
//! - shadow requests carry `x-weft-shadow: true`.
//!
//! Like Envoy's `request_mirror_policies`, but the answer is compared rather
//! than thrown away (after Twitter's Diffy).

pub mod compare;
pub mod json_diff;
mod tee;

use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use prometheus::Histogram;
use serde::Serialize;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Duration, Instant};
use tower::{Layer, Service};

use crate::config::mirror::MirrorConfig;
use crate::core::body::{self, Body};
use crate::core::error::ProxyError;
use crate::core::service::HttpService;
use crate::core::service::ResponseFuture;
use crate::telemetry::mirror::{MirrorResult, RouteCompare};
use compare::{classify, CompareSpec, Differences, LogLimiter, Observed};
use tee::{copy_body, BodyCopy, Teed};

/// How long a shadow may take when its route has no timeout.
pub const DEFAULT_SHADOW_DEADLINE: Duration = Duration::from_secs(10);

/// Marks a mirrored copy, so the new service can skip side effects.
pub const SHADOW_HEADER: &str = "x-weft-shadow";

/// Checks a `mirror:` section beyond its schema; errors name the key below `mirror`.
pub fn check(config: &MirrorConfig) -> Result<(), (String, String)> {
    let err = |key: String, message: String| Err((key, message));
    if !(0.0..=100.0).contains(&config.percent) {
        return err("percent".into(), "must be between 0 and 100".into());
    }
    if config.max_in_flight == 0 {
        return err("max_in_flight".into(), "must be at least 1".into());
    }
    for (i, m) in config.methods.iter().enumerate() {
        if Method::from_bytes(m.as_bytes()).is_err() || m.to_ascii_uppercase() != *m {
            return err(
                format!("methods[{i}]"),
                format!("{m:?} is not an upper-case HTTP method"),
            );
        }
    }
    if let Some(compare) = &config.compare {
        if let Err((key, message)) = CompareSpec::compile(compare) {
            return err(format!("compare.{key}"), message);
        }
        let rate = compare.log.as_ref().map_or(1.0, |l| l.sample_per_second);
        if !rate.is_finite() || rate < 0.0 {
            return err("compare.log.sample_per_second".into(), "must be 0 or more".into());
        }
    }
    Ok(())
}

/// Where a mirror sends its copies.
pub struct ShadowTargets {
    pub cluster: Arc<str>,
    pub shadow: HttpService,
    /// The second copy of the old version, for telling noise from mismatches.
    pub noise: Option<HttpService>,
    pub deadline: Duration,
}

#[derive(Clone)]
pub struct MirrorLayer {
    state: Arc<MirrorState>,
}

struct MirrorState {
    route: Arc<str>,
    targets: ShadowTargets,
    methods: Vec<Method>,
    percent: f64,
    max_body_bytes: usize,
    in_flight: Arc<Semaphore>,
    compare: Option<CompareSpec>,
    metrics: Arc<RouteCompare>,
    log: Option<MismatchLog>,
}

struct MismatchLog {
    path: PathBuf,
    limiter: Mutex<LogLimiter>,
}

impl MirrorLayer {
    pub fn new(
        route: &str,
        config: &MirrorConfig,
        targets: ShadowTargets,
        metrics: Arc<RouteCompare>,
    ) -> Result<Self, String> {
        check(config).map_err(|(key, message)| format!("mirror.{key}: {message}"))?;
        let compare = config
            .compare
            .as_ref()
            .map(CompareSpec::compile)
            .transpose()
            .map_err(|(key, message)| format!("mirror.compare.{key}: {message}"))?;
        let log = config
            .compare
            .as_ref()
            .and_then(|c| c.log.as_ref())
            .map(|l| MismatchLog {
                path: l.path.clone(),
                limiter: Mutex::new(LogLimiter::new(l.sample_per_second, Instant::now())),
            });
        Ok(Self {
            state: Arc::new(MirrorState {
                route: Arc::from(route),
                targets,
                methods: config
                    .methods
                    .iter()
                    .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                    .collect(),
                percent: config.percent,
                max_body_bytes: usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX),
                in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
                compare,
                metrics,
                log,
            }),
        })
    }
}

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
        Box::pin(async move {
            // The shadow starts only once the primary is on its way.
            let _ = dispatched_tx.send(());
            let result = primary.await;
            state.metrics.primary_duration.observe(started.elapsed().as_secs_f64());
            let (result, seen) = match result {
                Ok(response) if state.compare.is_some() => {
                    let (response, body) = copy_body(response, state.max_body_bytes);
                    let seen = (response.status().as_u16(), response.headers().clone(), body);
                    (Ok(response), seen)
                }
                Ok(response) => {
                    let seen = (
                        response.status().as_u16(),
                        HeaderMap::new(),
                        BodyCopy::Ready(Bytes::new()),
                    );
                    (Ok(response), seen)
                }
                Err(e) => {
                    let seen = (e.status().as_u16(), HeaderMap::new(), BodyCopy::Ready(Bytes::new()));
                    (Err(e), seen)
                }
            };
            // The shadow task may have finished already (shadow failed).
            let _ = seen_tx.send(seen);
            result
        })
    }
}

/// The request line and headers of the shadow copy.
#[derive(Clone)]
struct ShadowHead {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl ShadowHead {
    fn of(req: &Request<Body>) -> Self {
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
type PrimarySeen = (u16, HeaderMap, BodyCopy);

/// Everything the shadow task needs of one request.
struct ShadowJob {
    /// Holds one of `max_in_flight` slots until the task ends.
    permit: OwnedSemaphorePermit,
    head: ShadowHead,
    request_copy: BodyCopy,
    /// Fires when the primary is first polled; dropped if it never is.
    dispatched: oneshot::Receiver<()>,
    primary: oneshot::Receiver<PrimarySeen>,
}

async fn shadow_side(state: Arc<MirrorState>, job: ShadowJob) {
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
    let limit = state.max_body_bytes;
    let shadow = fetch(
        &state.targets.shadow,
        head.request(request_body.clone()),
        limit,
        deadline,
        Some(&state.metrics.shadow_duration),
    );
    let noise = async {
        match (&state.targets.noise, &state.compare) {
            (Some(noise), Some(_)) => Some(fetch(noise, head.request(request_body), limit, deadline, None).await),
            _ => None,
        }
    };
    let (shadow, noise) = tokio::join!(shadow, noise);
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
    let differences = spec.differences(&primary, &shadow);
    let noise = match noise {
        Some(Fetched::Complete(copy)) => Some(spec.differences(&primary, &copy)),
        _ => None,
    };
    let result = classify(&differences, noise.as_ref());
    if result == MirrorResult::Mismatch {
        let explained = Differences::default();
        let shown = differences.without_noise(noise.as_ref().unwrap_or(&explained));
        state.report_mismatch(&head, primary.status, shadow.status, shown);
    }
    Some(result)
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

/// One mismatch, as logged and shown by `/compare`.
#[derive(Serialize)]
struct MismatchRecord<'a> {
    time: String,
    route: &'a str,
    cluster: &'a str,
    method: &'a str,
    path: &'a str,
    primary_status: u16,
    shadow_status: u16,
    differences: Differences,
}

impl MirrorState {
    fn report_mismatch(&self, head: &ShadowHead, primary_status: u16, shadow_status: u16, differences: Differences) {
        let record = MismatchRecord {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            route: &self.route,
            cluster: &self.targets.cluster,
            method: head.method.as_str(),
            path: head.uri.path(),
            primary_status,
            shadow_status,
            differences: differences.truncated(),
        };
        let Ok(value) = serde_json::to_value(&record) else {
            return;
        };
        if let Some(log) = &self.log {
            if log.limiter.lock().allow(Instant::now()) {
                append_line(&log.path, &value);
            }
        }
        self.metrics.remember(value);
    }
}

/// Appends one JSON line. Blocking, but only on this background task and at
/// most `sample_per_second` times a second.
fn append_line(path: &std::path::Path, value: &serde_json::Value) {
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| writeln!(file, "{value}"));
    if let Err(e) = written {
        tracing::warn!(file = %path.display(), error = %e, "cannot write the mismatch log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_follows_methods_percent_and_declared_size() {
        let config: MirrorConfig =
            serde_yaml_ng::from_str("{ cluster: next, percent: 25, max_body_bytes: 10 }").unwrap();
        let shadow: HttpService = HttpService::boxing(tower::service_fn(|_req| async {
            Ok::<_, ProxyError>(Response::new(body::empty()))
        }));
        let metrics = crate::telemetry::metrics::Metrics::new().unwrap();
        let targets = ShadowTargets {
            cluster: Arc::from("next"),
            shadow,
            noise: None,
            deadline: DEFAULT_SHADOW_DEADLINE,
        };
        let layer = MirrorLayer::new("r", &config, targets, metrics.mirror.route("r", "next")).unwrap();
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

    #[tokio::test(start_paused = true)]
    async fn a_hanging_shadow_leaves_the_primary_alone_and_frees_its_slot_at_the_deadline() {
        use tower::ServiceExt;
        let hanging: HttpService = HttpService::boxing(tower::service_fn(|_req| {
            std::future::pending::<Result<Response<Body>, ProxyError>>()
        }));
        let metrics = crate::telemetry::metrics::Metrics::new().unwrap();
        let board = metrics.mirror.route("r", "next");
        let config: MirrorConfig = serde_yaml_ng::from_str("{ cluster: next, max_in_flight: 1 }").unwrap();
        let targets = ShadowTargets {
            cluster: Arc::from("next"),
            shadow: hanging,
            noise: None,
            deadline: Duration::from_secs(1),
        };
        let layer = MirrorLayer::new("r", &config, targets, board.clone()).unwrap();
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

    #[test]
    fn check_names_the_bad_key() {
        let bad = |yaml: &str| check(&serde_yaml_ng::from_str(yaml).unwrap()).unwrap_err().0;
        assert_eq!(bad("{ cluster: n, percent: 101 }"), "percent");
        assert_eq!(bad("{ cluster: n, max_in_flight: 0 }"), "max_in_flight");
        assert_eq!(bad("{ cluster: n, methods: [get] }"), "methods[0]");
        assert_eq!(
            bad("{ cluster: n, compare: { ignore_json_paths: [nope] } }"),
            "compare.ignore_json_paths[0]"
        );
    }
}
