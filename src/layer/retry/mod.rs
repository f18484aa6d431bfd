//! Retries: a tower layer that sends a request again, to another endpoint
//! when the cluster has one, when a try fails in a way the route's
//! policy (`policy::retry`) names, and only while the cluster's retry budget (`policy::retry_budget`) allows.
//!
//! Sources: Envoy's route retry policy (`num_retries`, `retry_on`,
//! `per_try_timeout`, `x-envoy-attempt-count`), Finagle/linkerd retry
//! budgets, and the AWS Architecture Blog's "Exponential Backoff And Jitter"
//! for the delays (`policy::backoff`).
//!
//! Guarantees:
//! - At most `max_retries` retries after the first try, each preceded by a
//!   full-jitter backoff delay and each counted against the budget, which
//!   counts every original request (not retries) once. When the budget says
//!   no, the last outcome is returned and `weft_retry_budget_exhausted_total`
//!   counts it.
//! - Retries never multiply across hops: a retried try carries
//!   `x-weft-retry-attempt: N` (N = 1, 2, ...). A request that arrives with
//!   that header set to anything but "0" is a retry by the hop before, and
//!   this hop forwards it (header unchanged) without retrying it.
//! - Responses with `x-weft-overloaded` and weft's own overload rejections
//!   are never retried.
//! - Only requests whose body can be sent again in full are retried
//!   ([`replay`]): bodies up to `replay_buffer_bytes`, or larger ones no try
//!   has read yet. Upgrade requests are never retried.
//! - `per_try_timeout` bounds each try; the route timeout (outside this
//!   layer) bounds all of them together.

pub mod replay;
mod tape;

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::cluster::overload::RetryState;
use crate::core::body::Body;
use crate::core::error::{ErrorKind, ProxyError, OVERLOADED_HEADER};
use crate::core::extensions::{EndpointHint, RetryAttempt};
use crate::core::service::HttpService;
use crate::core::service::ResponseFuture;
use crate::policy::backoff;
use crate::policy::retry::RetryPolicy;

/// Set on retried tries; see the module docs for the rule.
pub const RETRY_ATTEMPT_HEADER: &str = "x-weft-retry-attempt";

#[derive(Clone)]
pub struct RetryLayer {
    policy: Arc<RetryPolicy>,
    state: Arc<RetryState>,
}

impl RetryLayer {
    pub fn new(policy: Arc<RetryPolicy>, state: Arc<RetryState>) -> Self {
        Self { policy, state }
    }
}

impl Layer<HttpService> for RetryLayer {
    type Service = Retry;
    fn layer(&self, inner: HttpService) -> Retry {
        Retry {
            inner,
            policy: self.policy.clone(),
            state: self.state.clone(),
        }
    }
}

/// Wraps the per-try stack (already boxed, so tries clone it cheaply).
#[derive(Clone)]
pub struct Retry {
    inner: HttpService,
    policy: Arc<RetryPolicy>,
    state: Arc<RetryState>,
}

impl Service<Request<Body>> for Retry {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let retry = self.clone();
        Box::pin(async move { retry.run(req).await })
    }
}

/// How one try ended, as far as retrying is concerned.
enum Verdict {
    Done(Result<Response<Body>, ProxyError>),
    Retry(Result<Response<Body>, ProxyError>),
}

impl Retry {
    async fn run(self, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        self.state.budget().record_request(Instant::now());
        let may_retry = self.policy.max_retries > 0
            && !is_retry_from_previous_hop(req.headers())
            && !req.headers().contains_key(header::UPGRADE);
        if !may_retry {
            return self.try_once(req).await;
        }
        let (parts, body) = req.into_parts();
        let body = replay::prepare(body, self.policy.replay_buffer_bytes).await?;
        let mut exclude = None;
        let mut retries = 0u32;
        loop {
            let hint = EndpointHint {
                exclude,
                picked: Arc::new(OnceLock::new()),
            };
            let req = try_request(&parts, body.body(), retries, hint.clone());
            let outcome = self.judge(&parts, self.try_once(req).await);
            let last = match outcome {
                Verdict::Done(result) => return with_attempt(result, retries),
                Verdict::Retry(result) if retries >= self.policy.max_retries || !body.can_replay() => {
                    return with_attempt(result, retries)
                }
                Verdict::Retry(result) => result,
            };
            if !self.state.budget().try_withdraw(Instant::now()) {
                self.state.count_exhausted();
                return with_attempt(last, retries);
            }
            // The failed response's body is dropped here, releasing its slots.
            drop(last);
            retries += 1;
            self.state.count_retry();
            exclude = hint.picked.get().copied().or(exclude);
            let delay = backoff::delay(&self.policy.backoff, retries, &mut rand::rng());
            tokio::time::sleep(delay).await;
        }
    }

    async fn try_once(&self, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let response = self.inner.clone().call(req);
        let Some(limit) = self.policy.per_try_timeout else {
            return response.await;
        };
        tokio::time::timeout(limit, response).await.unwrap_or_else(|_| {
            Err(ProxyError::new(
                ErrorKind::Timeout,
                format!("per_try_timeout of {} expired", humantime::format_duration(limit)),
            ))
        })
    }

    fn judge(&self, parts: &Parts, result: Result<Response<Body>, ProxyError>) -> Verdict {
        let retry = match &result {
            Ok(response) => {
                !response.headers().contains_key(OVERLOADED_HEADER)
                    && self.policy.retries_status(&parts.method, response.status().as_u16())
            }
            Err(error) => self.policy.retries_error(&parts.method, error),
        };
        if retry {
            Verdict::Retry(result)
        } else {
            Verdict::Done(result)
        }
    }
}

fn is_retry_from_previous_hop(headers: &HeaderMap) -> bool {
    headers
        .get(RETRY_ATTEMPT_HEADER)
        .is_some_and(|value| value.as_bytes() != b"0")
}

/// Tells the front (span, logs) how many retries the answer took.
fn with_attempt(result: Result<Response<Body>, ProxyError>, retries: u32) -> Result<Response<Body>, ProxyError> {
    result.map(|mut response| {
        if retries > 0 {
            response.extensions_mut().insert(RetryAttempt(retries));
        }
        response
    })
}

fn try_request(parts: &Parts, body: Body, retries: u32, hint: EndpointHint) -> Request<Body> {
    let mut req = Request::from_parts(parts.clone(), body);
    if retries > 0 {
        req.headers_mut()
            .insert(RETRY_ATTEMPT_HEADER, HeaderValue::from(retries));
    }
    req.extensions_mut().insert(hint);
    req
}

#[cfg(test)]
mod tests;
