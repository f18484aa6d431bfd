//! Passive health checking: ejects endpoints whose responses mark them as
//! outliers, following Envoy's outlier detection.
//!
//! Detectors (a threshold of 0 disables a consecutive one): `consecutive_5xx`
//! failures of any kind in a row; `consecutive_gateway_failure` 502/503/504s,
//! connect failures or resets in a row (these also count as 5xx); and, once
//! per `interval`, success rate: if at least `minimum_hosts` endpoints had
//! `request_volume` requests in the interval, those of them below
//! `mean - stdev_factor * stdev` (population stdev) are ejected. A success
//! resets both streaks; a streak also resets when it trips and on return.
//!
//! Guarantees:
//! - The cap is never exceeded: an ejection needs `(ejected_count + 1) * 100
//!   <= max_ejection_percent * endpoint_count`, Envoy's check with
//!   `always_eject_one_host` at its default, false (older Envoy docs and gRPC
//!   allow one ejection past the cap; we do not). So at the default 10 %,
//!   clusters of fewer than 10 endpoints never eject.
//! - Ejection time is `min(base_ejection_time * multiplier, max_ejection_time)`.
//!   Each ejection adds 1 to the multiplier until `base * multiplier >= max +
//!   base`; each interval evaluation at least one `interval` after the
//!   endpoint returned takes 1 off while it stays in (Envoy's
//!   `ejectTimeBackoff`), so a host that stays healthy earns back short
//!   ejections. `times_ejected` is a separate lifetime count.
//! - An endpoint is back at exactly `ejected_at + ejection time` (its
//!   `ejected_until`); the ejected count and `Returned` catch up on the next
//!   `tick`, so schedule ticks by `next_deadline`. The first `tick` starts the
//!   first interval. No clock or rng reads; `tick` allocates only its events.
//! - Endpoints are addressed by a key the caller keeps stable while the
//!   endpoint exists (weft's endpoint id), so the set can change under the
//!   detector: [`OutlierDetector::set_endpoints`] keeps the state of the keys
//!   that stay, starts new ones fresh and forgets the rest (an ejected
//!   endpoint that leaves frees its place under the cap). Unknown keys are
//!   ignored everywhere.
//!
//! Not modelled: enforcement percentages, jitter, failure-percentage and
//! local-origin detectors.
//!
//! Source: Envoy docs "Outlier detection" (intro/arch_overview/upstream/
//! outlier), `config.cluster.v3.OutlierDetection`, and
//! `source/common/upstream/outlier_detection_impl.cc` (`ejectHost`,
//! `onIntervalTimer`, `successRateEjectionThreshold`).

use std::collections::BTreeMap;

use crate::config::health::OutlierDetectionConfig;
use tokio::time::{Duration, Instant};

/// Success-rate detector settings (Envoy's `success_rate_*` fields).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuccessRateConfig {
    pub minimum_hosts: u32,
    pub request_volume: u32,
    /// Envoy's `success_rate_stdev_factor / 1000`, e.g. 1.9.
    pub stdev_factor: f64,
}

impl Default for SuccessRateConfig {
    fn default() -> Self {
        Self {
            minimum_hosts: 5,
            request_volume: 100,
            stdev_factor: 1.9,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub success_rate: Option<SuccessRateConfig>,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    /// Values above 100 act as 100.
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            success_rate: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

/// Result of one request, as far as outlier detection cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx response; 502, 503 and 504 are treated as [`Outcome::GatewayFailure`].
    Error5xx(u16),
    /// 502/503/504, connect failure, timeout or reset.
    GatewayFailure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EjectReason {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    SuccessRate,
}

impl EjectReason {
    /// Stable label for metrics and logs (Envoy's ejection type names).
    pub fn as_str(self) -> &'static str {
        match self {
            EjectReason::Consecutive5xx => "consecutive_5xx",
            EjectReason::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            EjectReason::SuccessRate => "success_rate",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub endpoint: usize,
    pub reason: EjectReason,
    pub until: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutlierEvent {
    Ejected(Ejection),
    Returned { endpoint: usize },
}

#[derive(Debug, Clone, Default)]
struct EndpointState {
    consecutive_5xx: u32,
    consecutive_gateway_failure: u32,
    interval_requests: u64,
    interval_successes: u64,
    ejected_until: Option<Instant>,
    returned_at: Option<Instant>,
    times_ejected: u32,
    multiplier: u32,
}

/// Outlier state for a set of endpoints, addressed by stable key.
#[derive(Debug, Clone)]
pub struct OutlierDetector {
    config: OutlierConfig,
    /// By key; ordered, so events come in key order.
    endpoints: BTreeMap<usize, EndpointState>,
    ejected_count: usize,
    interval_started: Option<Instant>,
}

impl OutlierDetector {
    /// A detector for the endpoints keyed `0..endpoint_count`.
    pub fn new(config: OutlierConfig, endpoint_count: usize) -> Self {
        Self {
            config,
            endpoints: (0..endpoint_count).map(|k| (k, EndpointState::default())).collect(),
            ejected_count: 0,
            interval_started: None,
        }
    }

    /// Makes `keys` the endpoint set: known keys keep their state, new ones
    /// start fresh, the others are forgotten.
    pub fn set_endpoints(&mut self, keys: impl IntoIterator<Item = usize>) {
        let mut previous = std::mem::take(&mut self.endpoints);
        self.endpoints = keys
            .into_iter()
            .map(|k| (k, previous.remove(&k).unwrap_or_default()))
            .collect();
        let gone_ejected = previous.values().filter(|s| s.ejected_until.is_some()).count();
        self.ejected_count -= gone_ejected;
    }

    /// Records one request outcome; returns the ejection it caused, if any.
    /// Out-of-range indices are ignored.
    pub fn record(&mut self, idx: usize, outcome: Outcome, now: Instant) -> Option<Ejection> {
        let config = self.config;
        let state = self.endpoints.get_mut(&idx)?;
        state.interval_requests += 1;
        let is_gateway = match outcome {
            Outcome::Success => {
                state.interval_successes += 1;
                (state.consecutive_5xx, state.consecutive_gateway_failure) = (0, 0);
                return None;
            }
            Outcome::Error5xx(code) => (502..=504).contains(&code),
            Outcome::GatewayFailure => true,
        };
        state.consecutive_5xx = state.consecutive_5xx.saturating_add(1);
        state.consecutive_gateway_failure = match is_gateway {
            true => state.consecutive_gateway_failure.saturating_add(1),
            false => 0,
        };
        if state.ejected_until.is_some() {
            // Failures while ejected (panic routing) must not extend or stack
            // ejections; counters are cleared when the endpoint returns.
            return None;
        }
        // Gateway first, as Envoy reports it first for the same response.
        let gateway = trips(
            &mut state.consecutive_gateway_failure,
            config.consecutive_gateway_failure,
        );
        let any_5xx = trips(&mut state.consecutive_5xx, config.consecutive_5xx);
        [
            (gateway, EjectReason::ConsecutiveGatewayFailure),
            (any_5xx, EjectReason::Consecutive5xx),
        ]
        .into_iter()
        .filter(|(tripped, _)| *tripped)
        .find_map(|(_, reason)| self.try_eject(idx, reason, now))
    }

    /// Returns endpoints whose ejection is over and, once per `interval`, runs
    /// the success-rate detector and ages ejection multipliers.
    pub fn tick(&mut self, now: Instant) -> Vec<OutlierEvent> {
        let mut events = Vec::new();
        for (&idx, state) in &mut self.endpoints {
            if state.ejected_until.is_some_and(|until| now >= until) {
                state.ejected_until = None;
                state.returned_at = Some(now);
                // A host one failure short of a threshold would otherwise be
                // re-ejected by the first error after returning.
                (state.consecutive_5xx, state.consecutive_gateway_failure) = (0, 0);
                self.ejected_count -= 1;
                events.push(OutlierEvent::Returned { endpoint: idx });
            }
        }

        let Some(started) = self.interval_started else {
            self.interval_started = Some(now);
            return events;
        };
        if now.saturating_duration_since(started) < self.config.interval {
            return events;
        }
        self.interval_started = Some(now);

        if let Some(sr) = self.config.success_rate {
            self.eject_by_success_rate(sr, now, &mut events);
        }
        let interval = self.config.interval;
        for state in self.endpoints.values_mut() {
            state.interval_requests = 0;
            state.interval_successes = 0;
            let healthy_for_an_interval = state.ejected_until.is_none()
                && state
                    .returned_at
                    .is_some_and(|at| now.saturating_duration_since(at) >= interval);
            if healthy_for_an_interval {
                state.multiplier = state.multiplier.saturating_sub(1);
            }
        }
        events
    }

    pub fn ejected_until(&self, idx: usize) -> Option<Instant> {
        self.endpoints.get(&idx)?.ejected_until
    }

    /// Lifetime number of ejections of this endpoint.
    pub fn times_ejected(&self, idx: usize) -> u32 {
        self.endpoints.get(&idx).map_or(0, |s| s.times_ejected)
    }

    /// When `tick` next has work: the earliest return or interval end.
    /// `None` until the first `tick` if nothing is ejected.
    pub fn next_deadline(&self) -> Option<Instant> {
        let next_interval = self.interval_started.and_then(|s| s.checked_add(self.config.interval));
        self.endpoints
            .values()
            .filter_map(|s| s.ejected_until)
            .chain(next_interval)
            .min()
    }

    fn eject_by_success_rate(&mut self, sr: SuccessRateConfig, now: Instant, events: &mut Vec<OutlierEvent>) {
        let volume = u64::from(sr.request_volume).max(1);
        let counted = |s: &EndpointState| s.ejected_until.is_none() && s.interval_requests >= volume;
        // Percent, as Envoy reports it; the threshold is scale-free anyway.
        let rate = |s: &EndpointState| s.interval_successes as f64 * 100.0 / s.interval_requests as f64;
        let (mut n, mut sum, mut sum_sq) = (0usize, 0.0, 0.0);
        for rate in self.endpoints.values().filter(|s| counted(s)).map(rate) {
            n += 1;
            sum += rate;
            sum_sq += rate * rate;
        }
        if n == 0 || n < sr.minimum_hosts as usize {
            return;
        }
        let mean = sum / n as f64;
        let variance = (sum_sq / n as f64 - mean * mean).max(0.0);
        let threshold = mean - sr.stdev_factor * variance.sqrt();
        let below: Vec<usize> = self
            .endpoints
            .iter()
            .filter(|(_, s)| counted(s) && rate(s) < threshold)
            .map(|(&k, _)| k)
            .collect();
        for idx in below {
            events.extend(
                self.try_eject(idx, EjectReason::SuccessRate, now)
                    .map(OutlierEvent::Ejected),
            );
        }
    }

    fn try_eject(&mut self, idx: usize, reason: EjectReason, now: Instant) -> Option<Ejection> {
        let cap = u64::from(self.config.max_ejection_percent.min(100));
        if (self.ejected_count as u64 + 1) * 100 > cap * self.endpoints.len() as u64 {
            return None;
        }
        let base = self.config.base_ejection_time;
        let max = self.config.max_ejection_time;
        let state = self.endpoints.get_mut(&idx)?;
        // Envoy's saturation point: one step past the cap, so a host at the cap
        // needs two healthy intervals before its next ejection gets shorter.
        let grows = base.saturating_mul(state.multiplier) < max.saturating_add(base);
        let multiplier = state.multiplier.saturating_add(u32::from(grows));
        let until = now.checked_add(base.saturating_mul(multiplier).min(max))?;
        state.multiplier = multiplier;
        state.ejected_until = Some(until);
        state.times_ejected = state.times_ejected.saturating_add(1);
        self.ejected_count += 1;
        Some(Ejection {
            endpoint: idx,
            reason,
            until,
        })
    }
}

/// Resets a counter that reached its (non-zero) threshold; true if it did.
fn trips(counter: &mut u32, threshold: u32) -> bool {
    let tripped = threshold > 0 && *counter >= threshold;
    if tripped {
        *counter = 0;
    }
    tripped
}

impl From<&OutlierDetectionConfig> for OutlierConfig {
    fn from(c: &OutlierDetectionConfig) -> Self {
        OutlierConfig {
            consecutive_5xx: c.consecutive_5xx,
            consecutive_gateway_failure: c.consecutive_gateway_failure,
            success_rate: c.success_rate.as_ref().map(|s| SuccessRateConfig {
                minimum_hosts: s.minimum_hosts,
                request_volume: s.request_volume,
                stdev_factor: s.stdev_factor,
            }),
            interval: c.interval,
            base_ejection_time: c.base_ejection_time,
            max_ejection_time: c.max_ejection_time,
            max_ejection_percent: c.max_ejection_percent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl OutlierDetector {
        /// Exact at `now`, even before `tick` has processed the return.
        fn is_ejected(&self, idx: usize, now: Instant) -> bool {
            self.ejected_until(idx).is_some_and(|until| now < until)
        }

        /// Current factor applied to `base_ejection_time` for this endpoint's
        /// latest ejection; decays while it stays healthy.
        fn ejection_multiplier(&self, idx: usize) -> u32 {
            self.endpoints.get(&idx).map_or(0, |s| s.multiplier)
        }

        /// Endpoints ejected and not yet returned by `tick`.
        fn ejected_count(&self) -> usize {
            self.ejected_count
        }
    }

    const SEC: Duration = Duration::from_secs(1);
    const E500: Outcome = Outcome::Error5xx(500);
    const GW: Outcome = Outcome::GatewayFailure;
    const FULL: (u32, u32) = (100, 100);

    /// Default config except for `edit`, with no percent cap unless edited.
    fn detector(endpoints: usize, edit: impl FnOnce(&mut OutlierConfig)) -> OutlierDetector {
        let mut config = OutlierConfig {
            max_ejection_percent: 100,
            ..OutlierConfig::default()
        };
        edit(&mut config);
        OutlierDetector::new(config, endpoints)
    }

    impl OutlierDetector {
        /// Records `n` copies of `o`, returning what the last one caused.
        fn burst(&mut self, i: usize, o: Outcome, n: u32, t: Instant) -> Option<Ejection> {
            (0..n).fold(None, |_, _| self.record(i, o, t))
        }

        /// Per endpoint, (requests, successes) at `t`.
        fn traffic(&mut self, per_endpoint: &[(u32, u32)], t: Instant) {
            for (idx, &(requests, successes)) in per_endpoint.iter().enumerate() {
                for i in 0..requests {
                    let outcome = if i < successes { Outcome::Success } else { E500 };
                    self.record(idx, outcome, t);
                }
            }
        }
    }

    fn returned(events: &[OutlierEvent], endpoint: usize) -> bool {
        events.contains(&OutlierEvent::Returned { endpoint })
    }

    fn reason(e: Option<Ejection>) -> Option<&'static str> {
        e.map(|e| e.reason.as_str())
    }

    #[test]
    fn ejects_after_exactly_n_consecutive_5xx() {
        let t0 = Instant::now();
        let mut d = detector(10, |_| {});
        assert_eq!(d.burst(0, E500, 4, t0), None);
        assert_eq!(d.record(0, Outcome::Success, t0), None);
        assert_eq!(d.burst(0, E500, 4, t0), None);
        assert!(!d.is_ejected(0, t0));
        let ejection = d.record(0, E500, t0).expect("fifth 5xx ejects");
        assert_eq!(ejection.reason.as_str(), "consecutive_5xx");
        assert_eq!(ejection.until, t0 + 30 * SEC);
        assert!(d.is_ejected(0, t0));
        assert_eq!((d.ejected_count(), d.times_ejected(0)), (1, 1));
    }

    #[test]
    fn gateway_failures_count_for_both_detectors() {
        let t0 = Instant::now();
        let mut d = detector(10, |c| c.consecutive_gateway_failure = 3);
        let tripped = d.burst(0, Outcome::Error5xx(503), 3, t0);
        assert_eq!(reason(tripped), Some("consecutive_gateway_failure"));
        // With the gateway detector off, 502s still feed consecutive_5xx.
        let mut d = detector(10, |c| c.consecutive_gateway_failure = 0);
        assert_eq!(d.burst(1, GW, 2, t0), None);
        let tripped = d.burst(1, Outcome::Error5xx(502), 3, t0);
        assert_eq!(reason(tripped), Some("consecutive_5xx"));
        // A plain 500 breaks a gateway streak but not a 5xx streak.
        let mut d = detector(10, |_| {});
        assert_eq!(d.burst(2, GW, 4, t0), None);
        assert_eq!(reason(d.record(2, E500, t0)), Some("consecutive_5xx"));
        // 0 disables a detector.
        let mut d = detector(4, |c| {
            (c.consecutive_5xx, c.consecutive_gateway_failure) = (0, 0);
        });
        assert_eq!(d.burst(0, GW, 1_000, t0), None);
    }

    #[test]
    fn returns_at_exactly_base_ejection_time() {
        let t0 = Instant::now();
        let mut d = detector(10, |_| {});
        assert_eq!(d.next_deadline(), None);
        d.tick(t0);
        assert_eq!(d.next_deadline(), Some(t0 + 10 * SEC));
        d.burst(3, GW, 5, t0).expect("ejected");
        let just_before = t0 + 30 * SEC - Duration::from_nanos(1);
        assert!(d.is_ejected(3, just_before));
        assert!(!returned(&d.tick(just_before), 3));
        assert!(!d.is_ejected(3, t0 + 30 * SEC));
        assert!(returned(&d.tick(t0 + 30 * SEC), 3));
        assert_eq!((d.ejected_count(), d.ejected_until(3)), (0, None));
        assert_eq!((d.record(99, GW, t0), d.is_ejected(99, t0)), (None, false));
    }

    #[test]
    fn ejection_time_grows_is_capped_and_decays() {
        let mut now = Instant::now();
        let mut d = detector(10, |c| c.max_ejection_time = 100 * SEC);
        d.tick(now);
        let mut durations = Vec::new();
        for _ in 0..5 {
            let e = d.burst(0, E500, 5, now).expect("ejected");
            durations.push(e.until - now);
            now = e.until;
            assert!(returned(&d.tick(now), 0));
        }
        assert_eq!(durations, [30, 60, 90, 100, 100].map(|s| s * SEC));
        // Saturates at the first m with 30·m >= 100 + 30, i.e. 5.
        assert_eq!((d.times_ejected(0), d.ejection_multiplier(0)), (5, 5));
        // Evaluations run every 10 s; each one at least an interval after the
        // return takes one off, the one 5 s after it does not.
        let mut multipliers = Vec::new();
        for step in [5, 10, 10, 10, 10, 10] {
            now += step * SEC;
            d.tick(now);
            multipliers.push(d.ejection_multiplier(0));
        }
        assert_eq!(multipliers, [5, 4, 3, 2, 1, 0]);
        let e = d.burst(0, E500, 5, now).expect("sixth");
        assert_eq!(e.until - now, 30 * SEC, "back to base after staying healthy");
        assert_eq!(d.times_ejected(0), 6);
    }

    #[test]
    fn max_ejection_percent_is_never_exceeded() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(OutlierConfig::default(), 10);
        assert!(d.burst(0, E500, 5, t0).is_some());
        for idx in 1..10 {
            assert_eq!(d.burst(idx, E500, 50, t0), None);
        }
        assert_eq!(d.ejected_count(), 1);
        assert_eq!((0..10).filter(|&i| d.is_ejected(i, t0)).count(), 1);
        // Once the first returns, there is room for exactly one more.
        let t1 = t0 + 30 * SEC;
        d.tick(t0);
        d.tick(t1);
        assert!(d.burst(7, E500, 5, t1).is_some());
        assert_eq!(d.burst(8, E500, 5, t1), None);
        // 10 % of 9 endpoints is below one endpoint: nothing may be ejected.
        let mut small = OutlierDetector::new(OutlierConfig::default(), 9);
        assert_eq!(small.burst(0, E500, 50, t0), None);
    }

    /// Success-rate only, with a cap that allows one ejection among 5 or 6.
    fn success_rate_detector(endpoints: usize) -> OutlierDetector {
        detector(endpoints, |c| {
            (c.consecutive_5xx, c.consecutive_gateway_failure) = (0, 0);
            c.success_rate = Some(SuccessRateConfig::default());
            c.max_ejection_percent = 20;
        })
    }

    #[test]
    fn success_rate_ejects_the_outlier() {
        // Envoy's worked example: rates {50, 100, 100, 100, 100} give mean 90,
        // stdev 20, threshold 90 - 1.9·20 = 52, so the 50 % host goes.
        let t0 = Instant::now();
        let mut d = success_rate_detector(5);
        d.tick(t0);
        d.traffic(&[(100, 50), FULL, FULL, FULL, FULL], t0);
        assert!(d.tick(t0 + 9 * SEC).is_empty(), "interval not over yet");
        let expected = Ejection {
            endpoint: 0,
            reason: EjectReason::SuccessRate,
            until: t0 + 40 * SEC,
        };
        assert_eq!(d.tick(t0 + 10 * SEC), [OutlierEvent::Ejected(expected)]);
        assert_eq!(expected.reason.as_str(), "success_rate");
        // Counters were reset: the next interval has no data and ejects nothing.
        assert!(d.tick(t0 + 20 * SEC).is_empty());
    }

    #[test]
    fn success_rate_ignores_hosts_below_request_volume() {
        let t0 = Instant::now();
        let mut d = success_rate_detector(6);
        d.tick(t0);
        d.traffic(&[(99, 0), FULL, FULL, FULL, FULL, FULL], t0);
        assert!(d.tick(t0 + 10 * SEC).is_empty());
        // Only four hosts with enough volume: no evaluation even for a 0 % host.
        let mut d = success_rate_detector(6);
        d.tick(t0);
        d.traffic(&[(100, 0), FULL, FULL, FULL, (99, 99)], t0);
        assert!(d.tick(t0 + 10 * SEC).is_empty());
    }

    #[test]
    fn a_changed_endpoint_set_keeps_state_of_those_that_stay() {
        let t0 = Instant::now();
        // 25 % of 4 endpoints: one ejection at a time.
        let mut d = detector(4, |c| c.max_ejection_percent = 25);
        d.tick(t0);
        assert_eq!(d.burst(2, E500, 4, t0), None, "one failure short of ejection");
        assert!(d.burst(1, E500, 5, t0).is_some());
        // 0 and 3 leave, 7 and 8 join: 1 stays ejected.
        d.set_endpoints([1, 2, 7, 8]);
        assert_eq!(d.endpoints.len(), 4);
        assert!(d.is_ejected(1, t0));
        assert_eq!((d.times_ejected(1), d.ejected_count()), (1, 1));
        assert_eq!(d.record(0, E500, t0), None, "a removed key is ignored");
        // 1 leaves: its place under the cap is free, and 2's streak was kept.
        d.set_endpoints([2, 7, 8, 9]);
        assert_eq!(d.ejected_count(), 0);
        assert_eq!(reason(d.record(2, E500, t0)), Some("consecutive_5xx"));
        assert_eq!((d.times_ejected(7), d.ejected_until(7)), (0, None));
        assert!(returned(&d.tick(t0 + 30 * SEC), 2));
    }

    #[test]
    fn config_defaults_are_the_detector_defaults() {
        let section = crate::config::health::OutlierDetectionConfig::default();
        assert_eq!(OutlierConfig::from(&section), OutlierConfig::default());
    }
}
