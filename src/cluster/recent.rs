//! A cluster's recent request outcomes for `/clusters`: error rate and
//! latency percentiles over the last minute (at most the last 1024 attempts),
//! so a rollout script can compare a canary cluster with the stable one.
//!
//! Guarantees: recording is O(1) under a short lock (one slot of a fixed
//! ring is overwritten); memory is fixed per cluster; the summary is a pure
//! function of the samples and `now` (nearest-rank percentiles, as in
//! NIST's definition), unit-tested below. An attempt is an error when it got
//! no response or a 5xx, the same rule outlier detection's `consecutive_5xx`
//! uses.

use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::{Duration, Instant};

/// Ring size: enough for stable percentiles, small enough to sort on read.
const CAPACITY: usize = 1024;
/// Older samples are left out of the summary.
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub latency: Duration,
    pub error: bool,
}

#[derive(Default)]
pub struct RecentRequests {
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    samples: Vec<Sample>,
    next: usize,
}

impl RecentRequests {
    pub fn record(&self, sample: Sample) {
        let mut ring = self.ring.lock();
        if ring.samples.len() < CAPACITY {
            ring.samples.push(sample);
        } else {
            let slot = ring.next;
            ring.samples[slot] = sample;
        }
        ring.next = (ring.next + 1) % CAPACITY;
    }

    pub fn summary(&self, now: Instant) -> RecentSummary {
        let samples = self.ring.lock().samples.clone();
        summarize(&samples, now, WINDOW)
    }
}

/// What `/clusters` shows as `recent`.
#[derive(Debug, Serialize, PartialEq)]
pub struct RecentSummary {
    pub window_seconds: u64,
    pub requests: usize,
    pub errors: usize,
    /// errors / requests; 0 without requests.
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

pub fn summarize(samples: &[Sample], now: Instant, window: Duration) -> RecentSummary {
    let recent: Vec<&Sample> = samples
        .iter()
        .filter(|s| now.saturating_duration_since(s.at) <= window)
        .collect();
    let errors = recent.iter().filter(|s| s.error).count();
    let mut latencies: Vec<f64> = recent.iter().map(|s| s.latency.as_secs_f64() * 1000.0).collect();
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        let rank = (p * latencies.len() as f64).ceil() as usize;
        latencies.get(rank.saturating_sub(1)).copied()
    };
    RecentSummary {
        window_seconds: window.as_secs(),
        requests: recent.len(),
        errors,
        error_rate: if recent.is_empty() {
            0.0
        } else {
            errors as f64 / recent.len() as f64
        },
        p50_ms: percentile(0.5),
        p90_ms: percentile(0.9),
        p99_ms: percentile(0.99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_error_rate_over_the_window() {
        let now = Instant::now() + Duration::from_secs(600);
        let mut samples: Vec<Sample> = (1..=100)
            .map(|ms| Sample {
                at: now - Duration::from_secs(1),
                latency: Duration::from_millis(ms),
                error: ms % 10 == 0,
            })
            .collect();
        // Outside the window: ignored.
        samples.push(Sample {
            at: now - Duration::from_secs(120),
            latency: Duration::from_secs(9),
            error: true,
        });
        let s = summarize(&samples, now, WINDOW);
        assert_eq!((s.requests, s.errors), (100, 10));
        assert!((s.error_rate - 0.1).abs() < 1e-9);
        assert_eq!((s.p50_ms, s.p90_ms, s.p99_ms), (Some(50.0), Some(90.0), Some(99.0)));
        let empty = summarize(&[], now, WINDOW);
        assert_eq!((empty.error_rate, empty.p50_ms), (0.0, None));
    }

    #[test]
    fn the_ring_keeps_the_latest_samples() {
        let recent = RecentRequests::default();
        let now = Instant::now();
        for i in 0..(CAPACITY + 10) {
            recent.record(Sample {
                at: now,
                latency: Duration::from_millis(1),
                error: i >= CAPACITY,
            });
        }
        let s = recent.summary(now);
        assert_eq!((s.requests, s.errors), (CAPACITY, 10));
    }
}
