//! The only place layers and steps are composed. A route target is boxed at
//! the route edge so the rest of the proxy sees one concrete service type and
//! generic stacks never nest deeply (short compile times).
//!
//! Per request: [`front`] (the front path's steps from `front`: header
//! rewriting, trace context, route match, error rescue, upgrades, metrics,
//! span, access log; `proxy::Proxy` runs it) -> route timeout (capped by
//! `grpc-timeout`) -> retry
//! (route policy, cluster budget, per-try timeout) -> per try: circuit
//! breaker `max_requests` -> adaptive concurrency -> cluster (endpoint pick +
//! pooled upstream client, whose connector enforces the connection limits).
//! The overload layers sit inside retry so that every try is admitted on its
//! own, and their rejections reach retry as errors it never retries.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service};

use crate::cluster::{service::ClusterService, Cluster};
use crate::config::mirror::MirrorConfig;
use crate::core::body::Body;
use crate::core::error::{is_grpc, plain_response, ErrorKind, ProxyError};
use crate::core::service::HttpService;
use crate::front::idle::{self, IdleClock};
use crate::front::limits::{self, StreamLimits};
use crate::front::record::{self, Exchange};
use crate::front::{answer, early_response, headers, upgrade, Downstream, Picked, RouteTable};
use crate::layer::admission::AdmissionLayer;
use crate::layer::mirror::{MirrorLayer, ShadowTargets, DEFAULT_SHADOW_DEADLINE};
use crate::layer::retry::RetryLayer;
use crate::layer::timeout::TimeoutLayer;
use crate::route::Route;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::lines::LineWriter;
use crate::telemetry::metrics::{Metrics, Protocol, RouteMetrics};
use crate::telemetry::trace::Tracing;

/// What the front path needs besides the request, borrowed from the app's
/// shared state and the request's config snapshot.
pub struct Front<'a, T> {
    pub downstream: &'a Downstream,
    /// The listener's routes in the request's snapshot (`None`: the
    /// listener is gone from it).
    pub routes: Option<&'a T>,
    pub metrics: &'a Metrics,
    pub tracing: &'a Tracing,
    /// Present when the access log is on.
    pub access_log: Option<&'a AccessLog>,
}

/// One request's front path: the steps of `front`, in order (see its
/// module docs). Never fails: every error is answered.
pub async fn front<T: RouteTable>(context: Front<'_, T>, req: Request<Body>) -> Response<Body> {
    let start = Instant::now();
    let Front { downstream, routes, .. } = context;
    let identity = downstream.identity.as_ref();
    let (mut req, request_end) = early_response::track(req);
    // Counted before weft adds headers of its own.
    let counted = routes.map_or(Ok(()), |r| limits::check_header_count(&req, r.limits()));
    let host = headers::settle_host(&mut req);
    let grpc = is_grpc(req.headers());
    downstream.tag_original_destination(&mut req);
    let downstream_upgrade = upgrade::prepare(&mut req);
    let client_cert = identity.map(|i| i.xfcc.as_str());
    let request_id = headers::set_forwarding(req.headers_mut(), downstream.peer.ip(), downstream.scheme, client_cert);
    let trace = context.tracing.start(req.headers_mut());
    let (version, method) = (req.version(), req.method().clone());
    // A cheap clone (shared bytes) rather than a String copy of the path.
    let uri = req.uri().clone();
    let picked = match host {
        Ok(()) => routes.and_then(|r| r.pick(&req, identity.map(|i| i.id.as_str()))),
        Err(_) => None,
    };
    let result = match (&picked, host, counted) {
        (_, _, Err(e)) => Err(e),
        (Some(picked), _, _) => route_call(picked, routes.map(T::limits), req).await,
        (None, Err(e), _) => Err(e),
        (None, Ok(()), _) => Err(ProxyError::new(ErrorKind::NoRoute, format!("{method} {}", uri.path()))),
    };
    let (mut response, failure) = answer::rescue(result, context.access_log.is_some(), grpc);
    upgrade::finish(&mut response, downstream_upgrade, routes.map(T::limits));
    answer::finish_headers(&mut response, version, routes.and_then(T::alt_svc));
    request_end.announce_close(&mut response);

    let elapsed = start.elapsed();
    let protocol = Protocol::from_version(version);
    let status = record::http_status(&response, failure.as_ref());
    match (&picked, routes) {
        (Some(picked), _) => picked.metrics.record(protocol, status, elapsed.as_secs_f64()),
        (None, Some(routes)) => routes.unmatched().record(protocol, status, elapsed.as_secs_f64()),
        // The listener is gone from this snapshot (a reload removed it).
        (None, None) => RouteMetrics::new(context.metrics, &downstream.listener, "", "").record(
            protocol,
            status,
            elapsed.as_secs_f64(),
        ),
    }
    let exchange = Exchange {
        downstream,
        version,
        method: &method,
        path: uri.path(),
        request_id: &request_id,
        route: picked.as_ref().map_or("", |p| p.route),
        cluster: picked.as_ref().map_or("", |p| p.cluster),
        elapsed,
    };
    record::report(&exchange, trace, &response, failure.as_ref(), context.access_log);
    response
}

/// Calls the picked route's service under the listener's limits: the body
/// size (the route's, else the listener's) and the stream idle timeout,
/// which then goes on watching the response body.
async fn route_call(
    picked: &Picked<'_>,
    listener: Option<&StreamLimits>,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    // Route services are always ready (they never apply backpressure
    // through poll_ready), so `call` without `ready`.
    let Some(listener) = listener else {
        return picked.service.clone().call(req).await;
    };
    let body_limit = picked.max_request_body_bytes.or(listener.max_request_body_bytes);
    let (req, exceeded) = limits::limit_body(req, body_limit)?;
    let clock = IdleClock::unshared(listener.stream_idle_timeout, listener.idle_timeouts.clone());
    let answer = idle::watched_exchange(clock, req, |req| picked.service.clone().call(req)).await;
    exceeded.blame(answer)
}

/// The service that sends a route's requests to one cluster. Each layer
/// present is erased on its own, so absent ones cost nothing per request.
pub fn cluster_target(route: &Route, cluster: &Arc<Cluster>) -> HttpService {
    let overload = &cluster.overload;
    let mut per_try = HttpService::new(ClusterService::new(cluster.clone()));
    if let Some(concurrency) = overload.concurrency.clone() {
        per_try = HttpService::new(AdmissionLayer::new(concurrency).layer(per_try));
    }
    if let Some(circuit) = overload.circuit.as_deref() {
        per_try = HttpService::new(AdmissionLayer::new(circuit.requests.clone()).layer(per_try));
    }
    let mut target = per_try;
    if let Some(policy) = route.retry.clone() {
        target = HttpService::new(RetryLayer::new(policy, overload.retry.clone()).layer(target));
    }
    HttpService::new(TimeoutLayer::new(route.timeout).layer(target))
}

/// [`cluster_target`] behind the route's mirror, when it has one: the
/// mirror sits outside the timeout, so it sees the answer the client gets.
pub fn mirrored_target(route: &Route, cluster: &Arc<Cluster>, mirror: Option<&MirrorLayer>) -> HttpService {
    let target = cluster_target(route, cluster);
    match mirror {
        Some(mirror) => HttpService::new(mirror.layer(target)),
        None => target,
    }
}

/// A route's mirror, shared by all its targets (one `max_in_flight` budget).
/// Shadow and noise copies go straight to their clusters; the mirror's own
/// deadline (the route timeout) bounds them. Mismatch records go to
/// `lines`, the app's one line writer.
pub fn mirror_layer(
    route: &Route,
    config: &MirrorConfig,
    shadow: &Arc<Cluster>,
    noise: Option<&Arc<Cluster>>,
    metrics: &Metrics,
    lines: &LineWriter,
) -> Result<MirrorLayer, String> {
    let targets = ShadowTargets {
        cluster: shadow.name.clone(),
        shadow: HttpService::new(ClusterService::new(shadow.clone())),
        noise: noise.map(|c| HttpService::new(ClusterService::new(c.clone()))),
        deadline: route.timeout.unwrap_or(DEFAULT_SHADOW_DEADLINE),
    };
    let board = metrics.mirror.route(&route.name, &shadow.name);
    MirrorLayer::new(&route.name, config, targets, board, lines)
}

/// The service of a `direct_response` route.
pub fn direct_target(status: StatusCode, body: Bytes) -> HttpService {
    HttpService::boxing(service_fn(move |_req: Request<Body>| {
        let body = body.clone();
        async move { Ok(plain_response(status, body)) }
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use http::{HeaderValue, Version};
    use http_body_util::BodyExt;

    use super::*;
    use crate::core::body;
    use crate::telemetry::lines::{self, Captured};

    /// Routes `/api...` to `service` (route `api`, cluster `backend`).
    struct Table {
        service: HttpService,
        routed: Arc<RouteMetrics>,
        unmatched: Arc<RouteMetrics>,
        alt_svc: Option<HeaderValue>,
        limits: StreamLimits,
    }

    impl Table {
        fn new(metrics: &Metrics, service: HttpService) -> Self {
            Self {
                service,
                routed: RouteMetrics::new(metrics, "public", "api", "backend"),
                unmatched: RouteMetrics::new(metrics, "public", "", ""),
                alt_svc: Some(HeaderValue::from_static("h3=\":8443\"")),
                limits: StreamLimits {
                    max_request_headers: 100,
                    max_request_body_bytes: None,
                    stream_idle_timeout: tokio::time::Duration::from_secs(300),
                    idle_timeouts: metrics.stream_idle_timeouts.with_label_values(&["public"]),
                },
            }
        }
    }

    impl RouteTable for Table {
        fn pick(&self, req: &Request<Body>, _identity: Option<&str>) -> Option<Picked<'_>> {
            req.uri().path().starts_with("/api").then_some(Picked {
                route: "api",
                cluster: "backend",
                service: &self.service,
                metrics: &self.routed,
                max_request_body_bytes: None,
            })
        }
        fn unmatched(&self) -> &RouteMetrics {
            &self.unmatched
        }
        fn alt_svc(&self) -> Option<&HeaderValue> {
            self.alt_svc.as_ref()
        }
        fn limits(&self) -> &StreamLimits {
            &self.limits
        }
    }

    /// An upstream that answers what it saw of the request in headers,
    /// over HTTP/2 and with a hop-by-hop header of its own.
    fn reflecting() -> HttpService {
        HttpService::boxing(service_fn(|req: Request<Body>| async move {
            let mut response = Response::new(body::empty());
            *response.version_mut() = Version::HTTP_2;
            for name in ["host", "x-forwarded-for", "x-request-id", "traceparent", "keep-alive"] {
                if let Some(value) = req.headers().get(name) {
                    response.headers_mut().insert(
                        format!("seen-{name}").parse::<http::HeaderName>().unwrap(),
                        value.clone(),
                    );
                }
            }
            response
                .headers_mut()
                .insert("connection", HeaderValue::from_static("close"));
            Ok(response)
        }))
    }

    fn requests_total(metrics: &Metrics, route: &str, cluster: &str, status: &str) -> u64 {
        metrics
            .requests
            .with_label_values(&["public", route, cluster, "http1", status])
            .get()
    }

    #[tokio::test]
    async fn the_front_path_runs_each_step() {
        let metrics = Metrics::new().unwrap();
        let tracing = Tracing::new(metrics.trace.clone());
        let table = Table::new(&metrics, reflecting());
        let downstream = Downstream::example();
        let context = || Front {
            downstream: &downstream,
            routes: Some(&table),
            metrics: &metrics,
            tracing: &tracing,
            access_log: None,
        };
        let request = Request::get("http://api.example/api/x")
            .header("keep-alive", "5")
            .body(body::empty())
            .unwrap();
        let response = front(context(), request).await;
        assert_eq!(response.status(), 200);
        let seen = |name: &str| response.headers().get(format!("seen-{name}")).cloned();
        assert_eq!(seen("host").unwrap(), "api.example");
        assert_eq!(seen("x-forwarded-for").unwrap(), "127.0.0.1");
        assert_eq!(seen("x-request-id").unwrap().len(), 36);
        assert!(seen("traceparent").is_some());
        assert!(
            seen("keep-alive").is_none(),
            "hop-by-hop headers never reach the upstream"
        );
        assert!(response.headers().get("connection").is_none());
        assert_eq!(response.version(), Version::HTTP_11);
        assert_eq!(response.headers()["alt-svc"], "h3=\":8443\"");
        assert_eq!(requests_total(&metrics, "api", "backend", "200"), 1);

        let unrouted = front(
            context(),
            Request::get("/elsewhere")
                .header("host", "api.example")
                .body(body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(unrouted.status(), 404);
        assert_eq!(requests_total(&metrics, "", "", "404"), 1);
    }

    /// Many requests at once on several worker threads: every one leaves
    /// exactly one access log line, and every line is whole JSON.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_requests_each_write_one_whole_access_log_line() {
        const REQUESTS: usize = 400;
        let metrics = Arc::new(Metrics::new().unwrap());
        let tracing = Arc::new(Tracing::new(metrics.trace.clone()));
        let table = Arc::new(Table::new(&metrics, reflecting()));
        let downstream = Arc::new(Downstream::example());
        // Room for every line: none may be dropped here.
        let (lines, writer) = lines::channel(REQUESTS);
        let stdout = Captured::default();
        writer.with_stdout(stdout.clone()).start().unwrap();
        let access_log = Arc::new(AccessLog::new(lines.clone(), metrics.access_log_dropped.clone()));
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..REQUESTS {
            let (metrics, tracing, table, downstream, access_log) = (
                metrics.clone(),
                tracing.clone(),
                table.clone(),
                downstream.clone(),
                access_log.clone(),
            );
            requests.spawn(async move {
                let context = Front {
                    downstream: &downstream,
                    routes: Some(&*table),
                    metrics: &metrics,
                    tracing: &tracing,
                    access_log: Some(&access_log),
                };
                // Every fourth request finds no route.
                let path = if i % 4 == 0 {
                    format!("/none/{i}")
                } else {
                    format!("/api/{i}")
                };
                let request = Request::get(path)
                    .header("host", "api.example")
                    .body(body::empty())
                    .unwrap();
                let response = front(context, request).await;
                response.into_body().collect().await.unwrap();
            });
        }
        requests.join_all().await;
        lines.flush().await;
        assert_eq!(metrics.access_log_dropped.get(), 0);
        let text = stdout.text();
        let mut paths = HashSet::new();
        for line in text.lines() {
            let record: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: a broken line: {line}"));
            let path = record["path"].as_str().unwrap().to_string();
            let routed = path.starts_with("/api/");
            assert_eq!(record["status"], if routed { 200 } else { 404 }, "{line}");
            assert_eq!(record["cluster"], if routed { "backend" } else { "" }, "{line}");
            assert_eq!(record["trace_id"].as_str().map(str::len), Some(32), "{line}");
            paths.insert(path);
        }
        assert_eq!(text.lines().count(), REQUESTS);
        assert_eq!(paths.len(), REQUESTS, "one line per request");
    }
}
