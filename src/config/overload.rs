//! Schema of the overload-protection keys: `adaptive_concurrency`,
//! `retry_budget` and `circuit_breaker` on a cluster, `retry` on a route.
//! Defaults follow Envoy (adaptive concurrency, retry policy) and linkerd
//! (retry budget); docs/config.md (Overload protection) lists every key with its default.

use serde::{Deserialize, Serialize};
use tokio::time::Duration;

use super::range::{count, optional, within, HOUR, MILLION, MS};
use super::schema::{duration, opt_duration};

/// Envoy's adaptive concurrency filter (gradient controller) settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConcurrencyConfig {
    /// Which percentile of a window's latencies is its sampleRTT (0..=100).
    #[serde(default = "default_sample_aggregate_percentile")]
    pub sample_aggregate_percentile: f64,
    #[serde(default = "default_concurrency_update_interval", with = "duration")]
    pub concurrency_update_interval: Duration,
    #[serde(default = "default_min_rtt_calc_interval", with = "duration")]
    pub min_rtt_calc_interval: Duration,
    #[serde(default = "default_min_rtt_calc_request_count")]
    pub min_rtt_calc_request_count: u32,
    #[serde(default = "default_min_rtt_buffer_percent")]
    pub min_rtt_buffer_percent: f64,
    #[serde(default = "default_jitter_percent")]
    pub jitter_percent: f64,
    /// Concurrency allowed while minRTT is re-measured.
    #[serde(default = "default_min_concurrency")]
    pub min_concurrency: u32,
    /// Floor of the computed limit.
    #[serde(default = "default_min_concurrency")]
    pub min_concurrency_limit: u32,
    #[serde(default = "default_max_concurrency_limit")]
    pub max_concurrency_limit: u32,
}

impl Default for AdaptiveConcurrencyConfig {
    fn default() -> Self {
        Self {
            sample_aggregate_percentile: default_sample_aggregate_percentile(),
            concurrency_update_interval: default_concurrency_update_interval(),
            min_rtt_calc_interval: default_min_rtt_calc_interval(),
            min_rtt_calc_request_count: default_min_rtt_calc_request_count(),
            min_rtt_buffer_percent: default_min_rtt_buffer_percent(),
            jitter_percent: default_jitter_percent(),
            min_concurrency: default_min_concurrency(),
            min_concurrency_limit: default_min_concurrency(),
            max_concurrency_limit: default_max_concurrency_limit(),
        }
    }
}

/// Retries to a cluster stay below `percent` of its requests plus
/// `min_retries_per_second`, both over `window`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    #[serde(default = "default_budget_percent")]
    pub percent: f64,
    #[serde(default = "default_min_retries_per_second")]
    pub min_retries_per_second: u32,
    #[serde(default = "default_budget_window", with = "duration")]
    pub window: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            percent: default_budget_percent(),
            min_retries_per_second: default_min_retries_per_second(),
            window: default_budget_window(),
        }
    }
}

/// Hard per-cluster limits; `None` means unlimited.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Open upstream connections of the cluster (idle pooled ones included).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Connection attempts in progress, i.e. requests waiting for a connection.
    #[serde(default)]
    pub max_pending_requests: Option<usize>,
    /// Requests in flight to the cluster, until their response body ends.
    #[serde(default)]
    pub max_requests: Option<usize>,
}

impl CircuitBreakerConfig {
    /// Envoy's default thresholds, in force for a cluster that sets no
    /// `circuit_breaker`: no cluster can take connections without bound.
    pub const DEFAULTS: Self = Self {
        max_connections: Some(1024),
        max_pending_requests: Some(1024),
        max_requests: Some(1024),
    };
}

/// A route's retry policy (Envoy's `retry_policy`, with weft's replay rule).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries after the first try (Envoy's `num_retries`).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Conditions: connect_failure, reset, 5xx, gateway_error, retriable_4xx,
    /// or a status code written as a string ("503").
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<String>,
    #[serde(default, with = "opt_duration")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Request bodies up to this many bytes are kept so a retry can send them
    /// again; a request whose body outgrew it is not retried.
    #[serde(default = "default_replay_buffer_bytes")]
    pub replay_buffer_bytes: u64,
    /// With true, non-idempotent methods (POST, PATCH, CONNECT) are retried
    /// only after a connect failure, when the upstream never saw them.
    #[serde(default = "yes")]
    pub idempotent_only: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    #[serde(default = "default_backoff_base", with = "duration")]
    pub base: Duration,
    #[serde(default = "default_backoff_max", with = "duration")]
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base: default_backoff_base(),
            max: default_backoff_max(),
        }
    }
}

/// Semantic checks of a cluster's overload keys, as (key below the cluster, message).
pub fn check_cluster(
    adaptive: Option<&AdaptiveConcurrencyConfig>,
    budget: Option<&RetryBudgetConfig>,
    circuit: Option<&CircuitBreakerConfig>,
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let p = &mut problems;
    if let Some(a) = adaptive {
        let key = |k: &str| format!("adaptive_concurrency.{k}");
        within(
            p,
            key("sample_aggregate_percentile"),
            a.sample_aggregate_percentile,
            0.0,
            100.0,
        );
        within(
            p,
            key("concurrency_update_interval"),
            a.concurrency_update_interval,
            MS,
            HOUR,
        );
        within(p, key("min_rtt_calc_interval"), a.min_rtt_calc_interval, MS, HOUR);
        count(
            p,
            key("min_rtt_calc_request_count"),
            a.min_rtt_calc_request_count,
            1,
            MILLION,
        );
        within(p, key("min_rtt_buffer_percent"), a.min_rtt_buffer_percent, 0.0, 1000.0);
        within(p, key("jitter_percent"), a.jitter_percent, 0.0, 100.0);
        count(p, key("min_concurrency"), a.min_concurrency, 1, MILLION);
        count(p, key("min_concurrency_limit"), a.min_concurrency_limit, 1, MILLION);
        count(p, key("max_concurrency_limit"), a.max_concurrency_limit, 1, MILLION);
        if a.max_concurrency_limit < a.min_concurrency_limit {
            p.push((
                key("max_concurrency_limit"),
                "must be at least min_concurrency_limit".into(),
            ));
        }
    }
    if let Some(b) = budget {
        within(p, "retry_budget.percent".into(), b.percent, 0.0, 1000.0);
        count(
            p,
            "retry_budget.min_retries_per_second".into(),
            b.min_retries_per_second,
            0,
            MILLION,
        );
        within(p, "retry_budget.window".into(), b.window, MS, HOUR);
    }
    if let Some(c) = circuit {
        for (name, limit) in [
            ("max_connections", c.max_connections),
            ("max_pending_requests", c.max_pending_requests),
            ("max_requests", c.max_requests),
        ] {
            let limit = limit.map(|n| u64::try_from(n).unwrap_or(u64::MAX));
            optional(p, format!("circuit_breaker.{name}"), limit, 1, MILLION);
        }
    }
    problems
}

/// Ranges of a route's `retry` keys, as (key below the route, message).
pub fn check_retry(r: &RetryConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let p = &mut problems;
    count(p, "retry.max_retries".into(), r.max_retries, 0, 100);
    optional(p, "retry.per_try_timeout".into(), r.per_try_timeout, MS, HOUR);
    within(p, "retry.backoff.base".into(), r.backoff.base, Duration::ZERO, HOUR);
    within(p, "retry.backoff.max".into(), r.backoff.max, Duration::ZERO, HOUR);
    count(
        p,
        "retry.replay_buffer_bytes".into(),
        r.replay_buffer_bytes,
        0,
        64 << 20,
    );
    problems
}

fn yes() -> bool {
    true
}
fn default_sample_aggregate_percentile() -> f64 {
    50.0
}
fn default_concurrency_update_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_min_rtt_calc_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_min_rtt_calc_request_count() -> u32 {
    50
}
fn default_min_rtt_buffer_percent() -> f64 {
    25.0
}
fn default_jitter_percent() -> f64 {
    15.0
}
fn default_min_concurrency() -> u32 {
    3
}
fn default_max_concurrency_limit() -> u32 {
    1000
}
fn default_budget_percent() -> f64 {
    20.0
}
fn default_min_retries_per_second() -> u32 {
    10
}
fn default_budget_window() -> Duration {
    Duration::from_secs(10)
}
fn default_max_retries() -> u32 {
    1
}
fn default_retry_on() -> Vec<String> {
    vec!["connect_failure".into(), "reset".into(), "gateway_error".into()]
}
fn default_replay_buffer_bytes() -> u64 {
    64 * 1024
}
fn default_backoff_base() -> Duration {
    Duration::from_millis(25)
}
fn default_backoff_max() -> Duration {
    Duration::from_millis(250)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_sections_parse_and_defaults_fill_in() {
        let retry: RetryConfig = serde_yaml_ng::from_str(
            "{ max_retries: 2, retry_on: [connect_failure, reset, \"503\", gateway_error], per_try_timeout: 1s, backoff: { base: 25ms, max: 250ms } }",
        )
        .unwrap();
        assert_eq!(retry.max_retries, 2);
        assert_eq!(retry.per_try_timeout, Some(Duration::from_secs(1)));
        assert_eq!(retry.replay_buffer_bytes, 65536);
        assert!(retry.idempotent_only);
        let budget: RetryBudgetConfig =
            serde_yaml_ng::from_str("{ percent: 20, min_retries_per_second: 10, window: 10s }").unwrap();
        assert_eq!(budget, RetryBudgetConfig::default());
        let ac: AdaptiveConcurrencyConfig = serde_yaml_ng::from_str("{ min_concurrency: 5 }").unwrap();
        assert_eq!(ac.min_concurrency, 5);
        assert_eq!(ac.min_concurrency_limit, 3);
        assert!(serde_yaml_ng::from_str::<CircuitBreakerConfig>("{ max_conections: 1 }").is_err());
    }

    #[test]
    fn nonsense_values_are_reported_by_key() {
        let ac: AdaptiveConcurrencyConfig =
            serde_yaml_ng::from_str("{ sample_aggregate_percentile: 120, max_concurrency_limit: 2 }").unwrap();
        let circuit: CircuitBreakerConfig = serde_yaml_ng::from_str("{ max_requests: 0 }").unwrap();
        let keys: Vec<String> = check_cluster(Some(&ac), None, Some(&circuit))
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(
            keys,
            [
                "adaptive_concurrency.sample_aggregate_percentile",
                "adaptive_concurrency.max_concurrency_limit",
                "circuit_breaker.max_requests"
            ]
        );
    }
}
