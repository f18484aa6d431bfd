//! Unit tests of the retry layer against a scripted inner service, with paused time
//! (compiled only under #[cfg(test)], see the `mod tests` line in mod.rs).

use http::StatusCode;
use parking_lot::Mutex;
use tokio::time::Duration;
use tower::{service_fn, ServiceExt};

use super::*;
use crate::config::schema::{RetryBudgetConfig, RetryConfig};
use crate::core::body;
use crate::telemetry::metrics::Metrics;

/// What one scripted try does.
#[derive(Clone, Copy)]
enum Step {
    Status(u16),
    Overloaded,
    Reset,
    Hang,
}

#[derive(Debug, PartialEq)]
struct Seen {
    attempt_header: Option<String>,
    exclude: Option<usize>,
}

struct Harness {
    metrics: Metrics,
    seen: Arc<Mutex<Vec<Seen>>>,
    service: Retry,
}

impl Harness {
    fn new(retry_yaml: &str, budget: RetryBudgetConfig, script: Vec<Step>) -> Self {
        let metrics = Metrics::new().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let log = seen.clone();
        let inner: HttpService = HttpService::boxing(service_fn(move |req: Request<Body>| {
            let (log, script) = (log.clone(), script.clone());
            async move {
                let hint = req.extensions().get::<EndpointHint>().cloned().unwrap_or_default();
                let n = {
                    let mut log = log.lock();
                    log.push(Seen {
                        attempt_header: req
                            .headers()
                            .get(RETRY_ATTEMPT_HEADER)
                            .map(|v| v.to_str().unwrap().to_string()),
                        exclude: hint.exclude,
                    });
                    log.len() - 1
                };
                // Each try "picks" endpoint number n, so exclusions are visible.
                let _ = hint.picked.set(n);
                let mut response = Response::new(body::empty());
                match script.get(n).copied().unwrap_or(Step::Status(200)) {
                    Step::Status(code) => *response.status_mut() = StatusCode::from_u16(code).unwrap(),
                    Step::Overloaded => {
                        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        response
                            .headers_mut()
                            .insert(OVERLOADED_HEADER, HeaderValue::from_static("concurrency"));
                    }
                    Step::Reset => return Err(ProxyError::new(ErrorKind::UpstreamReset, "reset")),
                    Step::Hang => std::future::pending::<()>().await,
                }
                Ok(response)
            }
        }));
        let config: RetryConfig = serde_yaml_ng::from_str(retry_yaml).unwrap();
        let policy = Arc::new(RetryPolicy::compile(&config).unwrap());
        let state = Arc::new(RetryState::new(&budget, "c", &metrics.overload));
        let service = RetryLayer::new(policy, state).layer(inner);
        Self { metrics, seen, service }
    }

    async fn get(&self, headers: &[(&'static str, &str)]) -> Result<u16, ErrorKind> {
        let mut req = Request::get("/").body(body::empty()).unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(*k, HeaderValue::from_str(v).unwrap());
        }
        self.service
            .clone()
            .oneshot(req)
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.kind())
    }

    fn tries(&self) -> usize {
        self.seen.lock().len()
    }

    fn counter(&self, family: &prometheus::IntCounterVec) -> u64 {
        family.with_label_values(&["c"]).get()
    }
}

const TWO_RETRIES: &str = "{ max_retries: 2, retry_on: [reset, \"503\"] }";

#[tokio::test(start_paused = true)]
async fn retries_mark_attempts_and_avoid_the_failed_endpoint() {
    let h = Harness::new(
        TWO_RETRIES,
        RetryBudgetConfig::default(),
        vec![Step::Reset, Step::Status(503), Step::Status(200)],
    );
    assert_eq!(h.get(&[]).await, Ok(200));
    let seen = h.seen.lock();
    let expected = [(None, None), (Some("1"), Some(0)), (Some("2"), Some(1))].map(|(a, e)| Seen {
        attempt_header: a.map(String::from),
        exclude: e,
    });
    assert_eq!(*seen, expected);
    assert_eq!(h.counter(&h.metrics.overload.retries), 2);
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_retries_with_the_last_outcome() {
    let h = Harness::new(TWO_RETRIES, RetryBudgetConfig::default(), vec![Step::Status(503); 5]);
    assert_eq!(h.get(&[]).await, Ok(503));
    assert_eq!(h.tries(), 3);
}

#[tokio::test(start_paused = true)]
async fn overloaded_responses_and_retries_from_the_previous_hop_are_not_retried() {
    let h = Harness::new(TWO_RETRIES, RetryBudgetConfig::default(), vec![Step::Overloaded]);
    assert_eq!(h.get(&[]).await, Ok(503));
    assert_eq!(h.tries(), 1);

    let h = Harness::new(TWO_RETRIES, RetryBudgetConfig::default(), vec![Step::Status(503)]);
    assert_eq!(h.get(&[(RETRY_ATTEMPT_HEADER, "1")]).await, Ok(503));
    assert_eq!(h.tries(), 1);
    // "0" is not a retry.
    let h = Harness::new(TWO_RETRIES, RetryBudgetConfig::default(), vec![Step::Status(503)]);
    assert_eq!(h.get(&[(RETRY_ATTEMPT_HEADER, "0")]).await, Ok(200));
    assert_eq!(h.tries(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_stops_retries_and_counts_it() {
    let budget = RetryBudgetConfig {
        percent: 0.0,
        min_retries_per_second: 0,
        window: Duration::from_secs(10),
    };
    let h = Harness::new(TWO_RETRIES, budget, vec![Step::Status(503); 5]);
    assert_eq!(h.get(&[]).await, Ok(503));
    assert_eq!(h.tries(), 1);
    assert_eq!(h.counter(&h.metrics.overload.retry_budget_exhausted), 1);
    assert_eq!(h.counter(&h.metrics.overload.retries), 0);
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_moves_on_to_the_next_try() {
    let h = Harness::new(
        "{ max_retries: 1, retry_on: [gateway_error], per_try_timeout: 100ms }",
        RetryBudgetConfig::default(),
        vec![Step::Hang, Step::Status(200)],
    );
    let started = Instant::now();
    assert_eq!(h.get(&[]).await, Ok(200));
    assert_eq!(h.tries(), 2);
    // 100 ms per-try timeout plus at most the 25 ms first backoff.
    assert!(
        started.elapsed() <= Duration::from_millis(125),
        "{:?}",
        started.elapsed()
    );

    let h = Harness::new(
        "{ max_retries: 1, retry_on: [reset], per_try_timeout: 100ms }",
        RetryBudgetConfig::default(),
        vec![Step::Hang],
    );
    assert_eq!(h.get(&[]).await, Err(ErrorKind::Timeout));
    assert_eq!(h.tries(), 1);
}
