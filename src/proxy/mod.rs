//! The front of the request path shared by every HTTP listener: load the live
//! snapshot, match a route, rewrite headers, call the route's target service,
//! turn errors into responses (the one rescue step), and record metrics, the
//! access log line and the request's span (W3C trace context, see
//! `telemetry::trace`).

mod early_response;
pub mod headers;
mod upgrade;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Request, Response, Version};
use tokio::time::Instant;
use tower::Service;

use crate::core::body::{self, Body};

use crate::core::error::{ErrorKind, ProxyError};
use crate::core::extensions::{RetryAttempt, ServedBy};
use crate::snapshot::Snapshot;
use crate::telemetry::access_log::{self, AccessRecord};
use crate::telemetry::metrics::{Metrics, Protocol};
use crate::telemetry::trace::SpanFields;
use crate::tls::PeerIdentity;

/// State shared by all listeners and the admin server.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    /// False once draining has begun: `/ready` answers 503.
    pub ready: AtomicBool,
    /// Trace context and span export (`tracing` section).
    pub tracing: crate::telemetry::trace::Tracing,
    /// Requests received on every listener; tells `memory` when load stops.
    pub requests: AtomicU64,
}

/// Who is on the other end of one downstream connection.
pub struct Downstream {
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    pub scheme: &'static str,
    /// The verified client certificate, on mTLS listeners.
    pub identity: Option<PeerIdentity>,
}

#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    downstream: Arc<Downstream>,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>, downstream: Arc<Downstream>) -> Self {
        Self { shared, downstream }
    }
}

/// Any request body works: hyper's for HTTP/1 and HTTP/2, h3's for HTTP/3.
impl<B> Service<Request<B>> for Proxy
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<crate::core::error::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        let downstream = self.downstream.clone();
        let req: Request<Body> = req.map(body::boxed);
        let (req, request_end) = early_response::track(req);
        Box::pin(async move {
            let mut response = handle(shared, downstream, req).await;
            request_end.announce_close(&mut response);
            Ok(response)
        })
    }
}

fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

async fn handle(shared: Arc<Shared>, downstream: Arc<Downstream>, mut req: Request<Body>) -> Response<Body> {
    let start = Instant::now();
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let snapshot = shared.snapshot.load_full();
    let version = req.version();
    let method = req.method().clone();
    // A cheap clone (shared bytes) rather than a String copy of the path.
    let uri = req.uri().clone();
    let path = uri.path();

    // HTTP/2 carries the host in :authority; an HTTP/1.1 upstream needs Host.
    if !req.headers().contains_key(header::HOST) {
        if let Some(host) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    let upgrade = version == Version::HTTP_11 && headers::is_upgrade(req.headers());
    headers::strip_hop_by_hop(req.headers_mut(), upgrade);
    let request_id = headers::set_forwarding(
        req.headers_mut(),
        downstream.peer.ip(),
        downstream.scheme,
        downstream.identity.as_ref().map(|i| i.xfcc.as_str()),
    );
    let trace = shared.tracing.start(req.headers_mut());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let listener = snapshot.listeners.get(&*downstream.listener);
    let entry = listener.and_then(|l| {
        crate::route::find(
            &l.routes,
            &method,
            path,
            req.headers(),
            downstream.identity.as_ref().map(|i| i.id.as_str()),
        )
    });
    let target = entry.and_then(|e| e.target(req.headers()));
    let (route_name, metrics, result) = match (entry, target) {
        (Some(entry), Some(target)) => {
            // Route services are always ready (they never apply backpressure
            // through poll_ready), so `call` without `ready` keeps the future
            // a concrete boxed type.
            let result = target.service.clone().call(req).await;
            (
                &*entry.route.name,
                target.metrics.clone(),
                result.map(|r| (r, &*target.cluster)),
            )
        }
        _ => {
            let unmatched = listener.map(|l| l.unmatched.clone());
            let metrics = match unmatched {
                Some(m) => m,
                None => crate::telemetry::metrics::RouteMetrics::new(&shared.metrics, &downstream.listener, "", ""),
            };
            (
                "",
                metrics,
                Err(ProxyError::new(ErrorKind::NoRoute, format!("{method} {path}"))),
            )
        }
    };

    let error_kind = result.as_ref().err().map(ProxyError::kind);
    let log_access = snapshot.loaded.config.access_log.enabled;
    let (mut response, cluster, error) = match result {
        Ok((response, cluster)) => (response, cluster, None),
        Err(e) => {
            // The text is for the access log only; skip formatting it otherwise.
            let text = log_access.then(|| e.to_string());
            (e.into_response(), "", text)
        }
    };
    let upgraded = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    if upgraded {
        if let Some(on_downstream) = downstream_upgrade {
            let on_upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(upgrade::tunnel(on_downstream, on_upstream));
        }
    } else {
        headers::strip_hop_by_hop(response.headers_mut(), false);
    }

    // The downstream connection's version, whatever the upstream spoke
    // (hyper's HTTP/1 encoder refuses an HTTP/3 response).
    *response.version_mut() = version;
    if let Some(alt_svc) = listener.and_then(|l| l.alt_svc.clone()) {
        response.headers_mut().insert(http::header::ALT_SVC, alt_svc);
    }
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    metrics.record(Protocol::from_version(version), status, elapsed.as_secs_f64());
    let trace_id = trace.trace_id();
    trace.finish(|| SpanFields {
        listener: downstream.listener.to_string(),
        protocol: protocol_name(version),
        method: method.to_string(),
        path: path.to_string(),
        route: route_name.to_string(),
        cluster: target.map(|t| t.cluster.to_string()).unwrap_or_default(),
        endpoint: response.extensions().get::<ServedBy>().map(|s| s.0),
        status,
        retry_attempts: response.extensions().get::<RetryAttempt>().map_or(0, |a| a.0),
        reason: error_kind.map(crate::telemetry::trace::reason),
    });
    if log_access {
        access_log::write(&AccessRecord {
            timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            listener: &downstream.listener,
            protocol: protocol_name(version),
            method: method.as_str(),
            path,
            status,
            route: route_name,
            cluster,
            endpoint: response.extensions().get::<ServedBy>().map(|s| s.0.to_string()),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            request_id: request_id.to_str().unwrap_or(""),
            trace_id: trace_id.as_str(),
            client: downstream.peer.to_string(),
            error,
        });
    }
    response
}

/// Whether the proxy should report ready.
pub fn is_ready(shared: &Shared) -> bool {
    shared.ready.load(Ordering::Relaxed)
}
