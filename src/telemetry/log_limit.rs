//! Rate limits on log lines. An attack (one rapid-reset connection after
//! another, accept failures at the descriptor limit) cannot flood stderr:
//! each kind of WARN or ERROR line (its module, the `target`) is written in
//! bursts of at most [`BURST`] and [`LINES_PER_SECOND`] on average; the rest
//! are dropped and counted in `weft_log_suppressed_total{kind}`. Lines below
//! WARN are not limited (they are off unless `RUST_LOG` asks for them).
//!
//! [`LogLimiter`] (a token bucket, also the mirror mismatch log's) and
//! [`LogRate`] (one per kind) are the pure cores, time given by the caller;
//! [`RateLimitedLog`] is the `tracing` filter that applies them to stderr.

use std::collections::HashMap;
use std::sync::LazyLock;

use parking_lot::Mutex;
use prometheus::IntCounterVec;
use tokio::time::Instant;
use tracing::{Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// Lines of one kind written per second on average.
pub const LINES_PER_SECOND: f64 = 1.0;
/// Lines of one kind written at once before the average applies.
pub const BURST: f64 = 10.0;
/// Kinds tracked at once; beyond this, new kinds share one bucket (`other`),
/// so neither memory nor the metric's label count can grow without bound.
const MAX_KINDS: usize = 256;

/// Lines suppressed by the limit, by kind; registered in every app's
/// registry by `Metrics::new` (one logger serves the whole process).
pub static SUPPRESSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        prometheus::Opts::new(
            "weft_log_suppressed_total",
            "Warning and error log lines not written because their kind passed its rate limit.",
        ),
        &["kind"],
    )
    .expect("valid metric") // ok: the name and label are valid constants
});

/// Token bucket: `per_second` lines on average, bursts of up to `burst`.
#[derive(Debug)]
pub struct LogLimiter {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl LogLimiter {
    /// Bursts of up to one second's worth (at least one line).
    pub fn new(per_second: f64, now: Instant) -> Self {
        Self::with_burst(per_second, per_second.max(1.0), now)
    }

    pub fn with_burst(per_second: f64, burst: f64, now: Instant) -> Self {
        Self {
            per_second,
            burst,
            tokens: burst,
            last: now,
        }
    }

    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One [`LogLimiter`] per kind of line.
#[derive(Debug)]
pub struct LogRate {
    per_second: f64,
    burst: f64,
    kinds: HashMap<String, LogLimiter>,
}

impl LogRate {
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self {
            per_second,
            burst,
            kinds: HashMap::new(),
        }
    }

    /// Whether a line of `kind` at `now` may be written.
    pub fn admit(&mut self, kind: &str, now: Instant) -> bool {
        let full = self.kinds.len() >= MAX_KINDS && !self.kinds.contains_key(kind);
        let key = if full { "other" } else { kind };
        let (per_second, burst) = (self.per_second, self.burst);
        self.kinds
            .entry(key.to_string())
            .or_insert_with(|| LogLimiter::with_burst(per_second, burst, now))
            .allow(now)
    }
}

/// A `tracing` filter over the stderr log: WARN and ERROR events pass
/// while their kind (target) is within [`LogRate`]; the others pass always.
pub struct RateLimitedLog {
    rate: Mutex<LogRate>,
}

impl Default for RateLimitedLog {
    fn default() -> Self {
        Self {
            rate: Mutex::new(LogRate::new(LINES_PER_SECOND, BURST)),
        }
    }
}

impl<S> Filter<S> for RateLimitedLog {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, _cx: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN {
            return true;
        }
        let admitted = self.rate.lock().admit(meta.target(), Instant::now());
        if !admitted {
            SUPPRESSED.with_label_values(&[meta.target()]).inc();
        }
        admitted
    }
}

/// Installs the process's log: lines to stderr as `RUST_LOG` says (else as
/// `default_filter` says), WARN and ERROR rate-limited per kind.
pub fn init_stderr_log(default_filter: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{filter::FilterExt, EnvFilter, Layer};
    let levels = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(levels.and(RateLimitedLog::default()));
    tracing_subscriber::registry().with(layer).init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Duration;

    #[test]
    fn log_limiter_allows_the_configured_rate() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(2.0, start);
        let allowed = (0..100)
            .filter(|i| limiter.allow(start + Duration::from_millis(i * 50)))
            .count();
        // 2 at once, then 2 per second over 4.95 s.
        assert!((10..=12).contains(&allowed), "{allowed}");
    }

    #[test]
    fn each_kind_gets_its_own_burst_then_the_average() {
        let start = Instant::now();
        let mut rate = LogRate::new(1.0, 3.0);
        let written = (0..10).filter(|_| rate.admit("h2", start)).count();
        assert_eq!(written, 3);
        assert!(rate.admit("weft::listener", start), "another kind has its own budget");
        assert!(!rate.admit("h2", start + Duration::from_millis(999)));
        assert!(
            rate.admit("h2", start + Duration::from_secs(1)),
            "one more after a second"
        );
        let later = start + Duration::from_secs(60);
        assert_eq!(
            (0..10).filter(|_| rate.admit("h2", later)).count(),
            3,
            "the burst refills, no more"
        );
    }

    #[test]
    fn kinds_beyond_the_cap_share_one_budget() {
        let now = Instant::now();
        let mut rate = LogRate::new(1.0, 1.0);
        for i in 0..MAX_KINDS {
            assert!(rate.admit(&format!("k{i}"), now));
        }
        assert!(rate.admit("new-1", now));
        assert!(!rate.admit("new-2", now), "shares the `other` budget");
        assert_eq!(rate.kinds.len(), MAX_KINDS + 1);
    }
}
