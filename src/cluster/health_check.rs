//! Active health checking: an HTTP GET of the cluster's `health_check.path`
//! on each endpoint, and the threshold logic that turns probe results into a
//! healthy/unhealthy verdict.
//!
//! Guarantees: an endpoint changes state only after `unhealthy_threshold`
//! failed or `healthy_threshold` passed probes in a row (Envoy's semantics);
//! a probe never outlives `timeout`, body included; probe intervals are
//! jittered by ±10 % and the first probe lands uniformly within the first
//! interval, so sidecars started together do not probe in lockstep.
//! Endpoints start healthy (Envoy starts them failed until the first pass; we
//! prefer not to refuse traffic for an interval after every start or reload).
//!
//! Source: Envoy docs "Health checking" (intro/arch_overview/upstream/
//! health_checking) and `config.core.v3.HealthCheck` (`interval_jitter`,
//! `healthy_threshold`, `unhealthy_threshold`, `expected_statuses`).

use http::{header, HeaderValue, Request};
use http_body_util::BodyExt;
use rand::Rng;
use tokio::time::Duration;

use super::{Cluster, Endpoint};
use crate::config::health::HealthCheckConfig;
use crate::core::body;

/// Consecutive-result thresholds of one endpoint's active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckState {
    healthy: bool,
    /// Probes in a row whose result disagrees with `healthy`.
    contrary: u32,
}

impl Default for HealthCheckState {
    fn default() -> Self {
        Self {
            healthy: true,
            contrary: 0,
        }
    }
}

impl HealthCheckState {
    /// Folds in one probe result; returns the new verdict when it changed.
    pub fn record(&mut self, passed: bool, config: &HealthCheckConfig) -> Option<bool> {
        if passed == self.healthy {
            self.contrary = 0;
            return None;
        }
        self.contrary += 1;
        let threshold = if passed {
            config.healthy_threshold
        } else {
            config.unhealthy_threshold
        };
        if self.contrary < threshold.max(1) {
            return None;
        }
        self.healthy = passed;
        self.contrary = 0;
        Some(passed)
    }
}

/// `interval` scaled by a uniform factor in [0.9, 1.1).
pub fn jittered<R: Rng + ?Sized>(interval: Duration, rng: &mut R) -> Duration {
    interval.mul_f64(rng.random_range(0.9..1.1))
}

/// Uniform in [0, interval): where the first probe lands.
pub fn first_delay<R: Rng + ?Sized>(interval: Duration, rng: &mut R) -> Duration {
    interval.mul_f64(rng.random_range(0.0..1.0))
}

/// One probe of `endpoint`; `Err` says why it failed, for the log line.
pub async fn probe(cluster: &Cluster, endpoint: &Endpoint, config: &HealthCheckConfig) -> Result<(), String> {
    let Some(http) = cluster.http.as_ref() else {
        return Err("cluster does not speak HTTP".into());
    };
    let mut request = Request::get(config.path.as_str())
        .body(body::empty())
        .map_err(|e| e.to_string())?;
    request
        .headers_mut()
        .insert(header::USER_AGENT, HeaderValue::from_static("weft-health-check"));
    let exchange = async {
        let response = http.send(&endpoint.target, request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        // Reading the body lets the pooled connection be reused for the next probe.
        response.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(status)
    };
    match tokio::time::timeout(config.timeout, exchange).await {
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(config.timeout)
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(status)) if config.expects(status.as_u16()) => Ok(()),
        Ok(Ok(status)) => Err(format!("unexpected status {}", status.as_u16())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn config(unhealthy: u32, healthy: u32) -> HealthCheckConfig {
        serde_yaml_ng::from_str(&format!(
            "{{ path: /h, unhealthy_threshold: {unhealthy}, healthy_threshold: {healthy} }}"
        ))
        .unwrap()
    }

    #[test]
    fn thresholds_need_results_in_a_row() {
        let config = config(3, 2);
        let mut state = HealthCheckState::default();
        let results: Vec<Option<bool>> = [false, false, true, false, false, false, true, false, true, true]
            .into_iter()
            .map(|passed| state.record(passed, &config))
            .collect();
        assert_eq!(
            results,
            [None, None, None, None, None, Some(false), None, None, None, Some(true)]
        );
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let mut rng = SmallRng::seed_from_u64(1);
        let interval = Duration::from_secs(10);
        for _ in 0..1_000 {
            let d = jittered(interval, &mut rng);
            assert!(d >= Duration::from_secs(9) && d < Duration::from_secs(11), "{d:?}");
            assert!(first_delay(interval, &mut rng) < interval);
        }
    }
}
