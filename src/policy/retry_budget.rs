//! Retry budget: caps retries at a fraction of recent requests plus a small fixed reserve.
//!
//! Source: Finagle's `RetryBudget` and linkerd2-proxy's retry budget (`tower::retry::budget`), the
//! same idea as Envoy's `retry_budget` circuit breaker: retries are allowed only while they stay a
//! bounded share of traffic, so a failing upstream sees at most `1 + percent/100` times its
//! normal load instead of `1 + max_retries` times.
//!
//! Guarantee: a withdrawal succeeds iff
//! `retries_in_window + 1 <= percent/100 * requests_in_window + min_retries_per_second * window_secs`,
//! where the window is a ring of `BUCKETS_PER_WINDOW` time buckets aligned to the budget's creation
//! time. The window therefore covers between `(BUCKETS_PER_WINDOW - 1) / BUCKETS_PER_WINDOW` of
//! `window` and all of it; over any bucket-aligned span of one `window` the inequality holds for the
//! span's own totals. Each call is O(`BUCKETS_PER_WINDOW`), allocates nothing, reads no clock and
//! never panics.
//!
//! Call `record_request` once per original request, not per retry, so that retries cannot fund
//! further retries.

use tokio::time::{Duration, Instant};

use crate::config::schema::RetryBudgetConfig as RetryBudgetSection;

const BUCKETS_PER_WINDOW: usize = 10;
/// Keeps bucket arithmetic away from division by zero for a zero or tiny window.
const MIN_BUCKET_WIDTH: Duration = Duration::from_millis(1);

/// Tuning of a [`RetryBudget`]; defaults are linkerd's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries allowed as a percentage of requests in the window.
    pub percent: f64,
    /// A reserve so that low-traffic callers can still retry.
    pub min_retries_per_second: u32,
    pub window: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            percent: 20.0,
            min_retries_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

impl From<&RetryBudgetSection> for RetryBudgetConfig {
    fn from(c: &RetryBudgetSection) -> Self {
        Self {
            percent: c.percent,
            min_retries_per_second: c.min_retries_per_second,
            window: c.window,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which bucket-width period since `origin` these counts belong to; a stale period means the
    /// counts have slid out of the window.
    period: u64,
    requests: u64,
    retries: u64,
}

/// Sliding-window retry budget shared by the requests to one upstream.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    retry_ratio: f64,
    reserve: f64,
    bucket_width: Duration,
    origin: Instant,
    buckets: [Bucket; BUCKETS_PER_WINDOW],
}

impl RetryBudget {
    pub fn new(config: RetryBudgetConfig, now: Instant) -> Self {
        // NaN or negative would silently deny every retry, reserve included.
        let percent = if config.percent.is_nan() {
            0.0
        } else {
            config.percent.max(0.0)
        };
        Self {
            retry_ratio: percent / 100.0,
            reserve: f64::from(config.min_retries_per_second) * config.window.as_secs_f64(),
            bucket_width: (config.window / BUCKETS_PER_WINDOW as u32).max(MIN_BUCKET_WIDTH),
            origin: now,
            buckets: [Bucket::default(); BUCKETS_PER_WINDOW],
        }
    }

    /// Counts an original request towards the budget.
    pub fn record_request(&mut self, now: Instant) {
        let bucket = self.current_bucket(now);
        bucket.requests = bucket.requests.saturating_add(1);
    }

    /// Whether a retry may be sent now; a `true` answer counts the retry.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let period = self.period_at(now);
        let (requests, retries) = self
            .buckets
            .iter()
            .filter(|bucket| in_window(bucket.period, period))
            .fold((0u64, 0u64), |(requests, retries), bucket| {
                (
                    requests.saturating_add(bucket.requests),
                    retries.saturating_add(bucket.retries),
                )
            });
        let allowance = self.retry_ratio * requests as f64 + self.reserve;
        if retries.saturating_add(1) as f64 > allowance {
            return false;
        }
        let bucket = self.current_bucket(now);
        bucket.retries = bucket.retries.saturating_add(1);
        true
    }

    fn period_at(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        let period = elapsed / self.bucket_width.as_nanos().max(1);
        u64::try_from(period).unwrap_or(u64::MAX)
    }

    fn current_bucket(&mut self, now: Instant) -> &mut Bucket {
        let period = self.period_at(now);
        let bucket = &mut self.buckets[(period % BUCKETS_PER_WINDOW as u64) as usize];
        if bucket.period != period {
            *bucket = Bucket {
                period,
                ..Bucket::default()
            };
        }
        bucket
    }
}

fn in_window(bucket_period: u64, current_period: u64) -> bool {
    current_period
        .checked_sub(bucket_period)
        .is_some_and(|age| age < BUCKETS_PER_WINDOW as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn failing_upstream_gets_at_most_percent_plus_reserve() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(RetryBudgetConfig::default(), t0);
        // Per aligned 10 s window: (requests, retries allowed).
        let mut per_window = [(0u64, 0u64); 3];
        // 100 rps for 30 s, every attempt fails, up to 2 retries each.
        for i in 0..3000u64 {
            let now = t0 + ms(i * 10);
            let window = &mut per_window[(i / 1000) as usize];
            budget.record_request(now);
            window.0 += 1;
            for _ in 0..2 {
                if !budget.try_withdraw(now) {
                    break;
                }
                window.1 += 1;
            }
        }
        for (requests, retries) in per_window {
            assert_eq!(requests, 1000);
            assert!(retries <= 200 + 100, "{retries} retries");
        }
        let total: u64 = per_window.iter().map(|w| w.1).sum();
        assert!(total <= 600 + 300, "{total} retries");
        // The budget is a cap, not a blanket refusal.
        assert!(total >= 800, "{total} retries");
    }

    #[test]
    fn percent_of_requests_without_reserve() {
        let t0 = Instant::now();
        let config = RetryBudgetConfig {
            min_retries_per_second: 0,
            ..RetryBudgetConfig::default()
        };
        let mut budget = RetryBudget::new(config, t0);
        assert!(!budget.try_withdraw(t0));
        for _ in 0..100 {
            budget.record_request(t0);
        }
        assert_eq!((0..50).filter(|_| budget.try_withdraw(t0)).count(), 20);
    }

    #[test]
    fn reserve_allows_retries_without_traffic() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(RetryBudgetConfig::default(), t0);
        assert_eq!((0..150).filter(|_| budget.try_withdraw(t0)).count(), 100);
    }

    #[test]
    fn old_retries_slide_out_of_the_window() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(RetryBudgetConfig::default(), t0);
        for _ in 0..100 {
            assert!(budget.try_withdraw(t0 + ms(500)));
        }
        assert!(!budget.try_withdraw(t0 + ms(5_000)));
        assert!(!budget.try_withdraw(t0 + ms(9_999)));
        // The bucket holding them (0..1 s) leaves the window at 10 s.
        assert!(budget.try_withdraw(t0 + ms(10_000)));
        assert_eq!((0..150).filter(|_| budget.try_withdraw(t0 + ms(10_000))).count(), 99);
        // A long idle gap clears everything.
        assert_eq!(
            (0..150).filter(|_| budget.try_withdraw(t0 + ms(3_600_000))).count(),
            100
        );
    }

    #[test]
    fn degenerate_configs_do_not_panic() {
        let t0 = Instant::now();
        for config in [
            RetryBudgetConfig {
                window: Duration::ZERO,
                ..RetryBudgetConfig::default()
            },
            RetryBudgetConfig {
                percent: f64::NAN,
                min_retries_per_second: 0,
                window: Duration::MAX,
            },
        ] {
            let mut budget = RetryBudget::new(config, t0);
            budget.record_request(t0 + ms(1));
            let _ = budget.try_withdraw(t0 + ms(1));
        }
    }
}
