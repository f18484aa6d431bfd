//! The admin server: `/metrics` (Prometheus text), `/ready`, `/live`,
//! `/config` (the effective config as JSON) and `/clusters` (endpoints with
//! zone, weight, in-flight requests, health-check verdict, ejection state and
//! latency estimate, plus each cluster's zone routing state, and for udp
//! clusters the UDP listeners that feed them with their sessions), `/stats`
//! (request and error counters per listener, route and cluster), `/compare`
//! (per mirrored route: comparison counts and the last few mismatches) and
//! `/`, the live admin page built on those.

mod clusters;
mod page;
mod stats;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::core::body::{self, Body};
use crate::core::error::plain_response;
use crate::proxy::{is_ready, Shared};

pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    health: Arc<crate::listener::Health>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = tokio::select! {
            _ = crate::listener::stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
        };
        let (shared, health) = (shared.clone(), health.clone());
        let service = service_fn(move |req| {
            let (shared, health) = (shared.clone(), health.clone());
            async move { Ok::<_, Infallible>(respond(&shared, &health, &req)) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

fn json(value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(bytes) => {
            let mut response = Response::new(body::full(bytes));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(e) => plain_response(StatusCode::INTERNAL_SERVER_ERROR, Bytes::from(format!("{e}\n"))),
    }
}

/// `/ready`: 200, or 503 while draining or while a listener is down.
fn ready(shared: &Shared, health: &crate::listener::Health) -> Response<Body> {
    if !is_ready(shared) {
        return plain_response(StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(b"draining\n"));
    }
    match health.down() {
        down if down.is_empty() => plain_response(StatusCode::OK, Bytes::from_static(b"ready\n")),
        down => plain_response(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from(format!("listener down: {}\n", down.join(", "))),
        ),
    }
}

fn respond(shared: &Shared, health: &crate::listener::Health, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain_response(StatusCode::METHOD_NOT_ALLOWED, Bytes::from_static(b"use GET\n"));
    }
    match req.uri().path() {
        "/metrics" => {
            let mut response = Response::new(body::full(shared.metrics.render()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        "/ready" => ready(shared, health),
        "/" => page::response(),
        "/stats" => json(&stats::collect(&shared.metrics)),
        "/live" => plain_response(StatusCode::OK, Bytes::from_static(b"live\n")),
        "/config" => json(&shared.snapshot.load().loaded.config),
        "/clusters" => json(&clusters::collect(shared)),
        "/compare" => json(&shared.metrics.mirror.report()),
        _ => plain_response(
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"admin endpoints: / /metrics /ready /live /config /clusters /stats /compare\n"),
        ),
    }
}
