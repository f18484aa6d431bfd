//! Adaptive concurrency limit: Envoy's gradient controller as a pure state machine.
//!
//! Source: Envoy's "Adaptive Concurrency" filter docs and `gradient_controller.cc`, with the
//! epoch rule of envoyproxy/envoy#11579 and the floor rule of #10647. It measures the upstream's
//! uncongested latency (minRTT) with concurrency pinned to `min_concurrency`, then each update
//! interval sets `gradient = clamp(minRTT * (1 + buffer) / sampleRTT, 0.5, 2.0)`, `limit = old *
//! gradient`, `new = limit + sqrt(limit)` within `[min_concurrency_limit, max_concurrency_limit]`.
//!
//! Guarantees: `limit()` stays in that range, except during a measurement, when it is
//! `min_concurrency`; no panics (the config is sanitised), no clock reads, no global rng, at most
//! `MAX_SAMPLES_PER_WINDOW` latencies kept. Call `record` per completed request and `tick` at
//! least once per update interval: windows roll and periodic measurements start in `tick`, which
//! has the rng; a measurement ends in `record`, on the sample that completes it, as in Envoy.
//!
//! Decisions: after a measurement the limit resumes from its pre-measurement value, as Envoy's
//! source does (`deferred_limit_value_`); restarting from `min_concurrency` would discard learnt
//! capacity and throttle healthy traffic while it regrows, whereas a slower upstream halves a
//! resumed limit in one window anyway. minRTT is re-measured early after 5 windows in a row at the
//! floor (Envoy) and, beyond Envoy, after 5 windows in a row with sampleRTT under half of minRTT:
//! otherwise a minRTT learnt during a sustained slowdown stays inflated after recovery until the
//! periodic timer, leaving the limiter blind to any new slowdown below the inflation factor. The
//! probe concurrency is `min_concurrency` even above the computed limit (recent Envoy probes at
//! the smaller). sampleRTT is a nearest-rank percentile; Envoy approximates it from a histogram.

use rand::Rng;
use tokio::time::{Duration, Instant};

use crate::config::schema::AdaptiveConcurrencyConfig;

/// Envoy's count of windows in a row at the floor that suggests a wrong minRTT; reused for the
/// stale-high rule so that one noisy window cannot trigger either.
const WINDOWS_BEFORE_REMEASURE: u32 = 5;
/// A sampleRTT this far below minRTT cannot be queueing noise: the baseline is stale-high.
const STALE_MIN_RTT_RATIO: f64 = 0.5;
/// Bounds memory when `tick` is late or traffic is heavy; later samples overwrite earlier ones,
/// so the percentile reflects the most recent completions.
const MAX_SAMPLES_PER_WINDOW: usize = 4096;
/// Caps configured intervals so deadlines stay representable as `Instant`s.
const MAX_INTERVAL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Envoy clamps the gradient so one noisy window cannot swing the limit more than 2x.
const MIN_GRADIENT: f64 = 0.5;
const MAX_GRADIENT: f64 = 2.0;

/// Tuning of a [`GradientController`]; percentages are 0..=100, defaults are Envoy's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradientConfig {
    pub sample_aggregate_percentile: f64,
    pub concurrency_update_interval: Duration,
    pub min_rtt_calc_interval: Duration,
    pub min_rtt_calc_request_count: u32,
    pub min_rtt_buffer_percent: f64,
    pub jitter_percent: f64,
    /// The concurrency allowed while minRTT is being measured.
    pub min_concurrency: u32,
    /// The floor of the computed limit.
    pub min_concurrency_limit: u32,
    pub max_concurrency_limit: u32,
}

impl Default for GradientConfig {
    fn default() -> Self {
        Self {
            sample_aggregate_percentile: 50.0,
            concurrency_update_interval: Duration::from_millis(100),
            min_rtt_calc_interval: Duration::from_secs(60),
            min_rtt_calc_request_count: 50,
            min_rtt_buffer_percent: 25.0,
            jitter_percent: 15.0,
            min_concurrency: 3,
            min_concurrency_limit: 3,
            max_concurrency_limit: 1000,
        }
    }
}

impl GradientConfig {
    /// Replaces values that would divide by zero, deadlock admission or make a clamp panic.
    /// NaN percentages act as 0: `f64::max` maps them to 0 and `percentile` ranks NaN first.
    fn sanitized(self) -> Self {
        let min_concurrency_limit = self.min_concurrency_limit.max(1);
        Self {
            sample_aggregate_percentile: self.sample_aggregate_percentile.clamp(0.0, 100.0),
            concurrency_update_interval: self.concurrency_update_interval.min(MAX_INTERVAL),
            min_rtt_calc_interval: self.min_rtt_calc_interval.min(MAX_INTERVAL),
            min_rtt_calc_request_count: self.min_rtt_calc_request_count.max(1),
            min_rtt_buffer_percent: self.min_rtt_buffer_percent.max(0.0),
            jitter_percent: self.jitter_percent.max(0.0),
            min_concurrency: self.min_concurrency.max(1),
            min_concurrency_limit,
            max_concurrency_limit: self.max_concurrency_limit.max(min_concurrency_limit),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    MeasuringMinRtt {
        started_at: Instant,
        limit_to_restore: u32,
        /// Drawn when the measurement starts because `record`, which ends it, has no rng.
        remeasure_after: Duration,
    },
    Adjusting {
        window_ends_at: Instant,
        remeasure_at: Instant,
    },
}

/// Envoy-style adaptive concurrency limiter; the caller counts in-flight requests.
#[derive(Debug, Clone)]
pub struct GradientController {
    config: GradientConfig,
    /// The computed limit; `limit()` overrides it while measuring minRTT.
    computed_limit: u32,
    phase: Phase,
    min_rtt: Option<Duration>,
    samples: Vec<Duration>,
    samples_seen: u64,
    windows_at_floor: u32,
    windows_below_min_rtt: u32,
}

impl GradientController {
    /// Starts in a minRTT measurement, as Envoy does: there is no baseline to compare with yet.
    pub fn new(config: GradientConfig, now: Instant, rng: &mut impl Rng) -> Self {
        let config = config.sanitized();
        Self {
            config,
            computed_limit: config.min_concurrency_limit,
            phase: Phase::MeasuringMinRtt {
                started_at: now,
                limit_to_restore: config.min_concurrency_limit,
                remeasure_after: jittered_remeasure_interval(&config, rng),
            },
            min_rtt: None,
            samples: Vec::new(),
            samples_seen: 0,
            windows_at_floor: 0,
            windows_below_min_rtt: 0,
        }
    }

    pub fn limit(&self) -> u32 {
        match self.phase {
            Phase::MeasuringMinRtt { .. } => self.config.min_concurrency,
            Phase::Adjusting { .. } => self.computed_limit,
        }
    }

    /// Whether a new request may start while `in_flight` requests are outstanding.
    pub fn admits(&self, in_flight: u32) -> bool {
        in_flight < self.limit()
    }

    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    pub fn in_min_rtt_measurement(&self) -> bool {
        matches!(self.phase, Phase::MeasuringMinRtt { .. })
    }

    /// Records the latency of a request that completed at `now`.
    pub fn record(&mut self, now: Instant, latency: Duration) {
        let Phase::MeasuringMinRtt {
            started_at,
            limit_to_restore,
            remeasure_after,
        } = self.phase
        else {
            self.push_sample(latency);
            return;
        };
        // A request sent before the measurement began ran at the old, higher concurrency and
        // would inflate minRTT (envoyproxy/envoy#11579).
        let sent_at = now.checked_sub(latency);
        if sent_at.is_none_or(|sent| sent < started_at) {
            return;
        }
        self.push_sample(latency);
        if self.samples_seen < u64::from(self.config.min_rtt_calc_request_count) {
            return;
        }
        if let Some(measured) = self.take_window_percentile() {
            self.min_rtt = Some(measured);
        }
        self.computed_limit = limit_to_restore;
        self.phase = Phase::Adjusting {
            window_ends_at: later(now, self.config.concurrency_update_interval),
            remeasure_at: later(now, remeasure_after),
        };
    }

    /// Rolls the sample window when it is due and starts minRTT measurements when they are due.
    pub fn tick(&mut self, now: Instant, rng: &mut impl Rng) {
        // Windows do not roll during a measurement: its samples belong to the minRTT.
        let Phase::Adjusting {
            window_ends_at,
            remeasure_at,
        } = self.phase
        else {
            return;
        };
        if now >= remeasure_at {
            self.start_min_rtt_measurement(now, rng);
            return;
        }
        if now < window_ends_at {
            return;
        }
        self.phase = Phase::Adjusting {
            window_ends_at: later(now, self.config.concurrency_update_interval),
            remeasure_at,
        };
        // Idle windows say nothing about the upstream, so they leave the limit alone.
        let (Some(sample_rtt), Some(min_rtt)) = (self.take_window_percentile(), self.min_rtt) else {
            return;
        };
        let old_limit = self.computed_limit;
        self.computed_limit = next_limit(&self.config, old_limit, min_rtt, sample_rtt);

        let floor = self.config.min_concurrency_limit;
        let at_floor = old_limit == floor && self.computed_limit == floor;
        let below_min_rtt = sample_rtt.as_secs_f64() < min_rtt.as_secs_f64() * STALE_MIN_RTT_RATIO;
        self.windows_at_floor = streak(self.windows_at_floor, at_floor);
        self.windows_below_min_rtt = streak(self.windows_below_min_rtt, below_min_rtt);
        if self.windows_at_floor.max(self.windows_below_min_rtt) >= WINDOWS_BEFORE_REMEASURE {
            self.start_min_rtt_measurement(now, rng);
        }
    }

    fn start_min_rtt_measurement(&mut self, now: Instant, rng: &mut impl Rng) {
        self.phase = Phase::MeasuringMinRtt {
            started_at: now,
            limit_to_restore: self.computed_limit,
            remeasure_after: jittered_remeasure_interval(&self.config, rng),
        };
        // Samples taken at the old concurrency would skew the minRTT.
        self.samples.clear();
        self.samples_seen = 0;
        self.windows_at_floor = 0;
        self.windows_below_min_rtt = 0;
    }

    fn push_sample(&mut self, latency: Duration) {
        if self.samples.len() < MAX_SAMPLES_PER_WINDOW {
            self.samples.push(latency);
        } else {
            let slot = (self.samples_seen % MAX_SAMPLES_PER_WINDOW as u64) as usize;
            if let Some(oldest) = self.samples.get_mut(slot) {
                *oldest = latency;
            }
        }
        self.samples_seen = self.samples_seen.saturating_add(1);
    }

    fn take_window_percentile(&mut self) -> Option<Duration> {
        let value = percentile(&mut self.samples, self.config.sample_aggregate_percentile);
        self.samples.clear();
        self.samples_seen = 0;
        value
    }
}

fn streak(count: u32, continues: bool) -> u32 {
    if continues {
        count.saturating_add(1)
    } else {
        0
    }
}

/// Envoy's `calculateNewLimit`.
fn next_limit(config: &GradientConfig, limit: u32, min_rtt: Duration, sample_rtt: Duration) -> u32 {
    let buffered_min_rtt = min_rtt.as_secs_f64() * (1.0 + config.min_rtt_buffer_percent / 100.0);
    let sample_rtt = sample_rtt.as_secs_f64();
    // A zero latency shows no queueing at all, so it earns the largest step up.
    let gradient = if sample_rtt > 0.0 {
        (buffered_min_rtt / sample_rtt).clamp(MIN_GRADIENT, MAX_GRADIENT)
    } else {
        MAX_GRADIENT
    };
    let scaled = f64::from(limit) * gradient;
    // The square root is Envoy's burst headroom; `as` truncates like Envoy's conversion.
    let with_headroom = (scaled + scaled.sqrt()) as u32;
    with_headroom.clamp(config.min_concurrency_limit, config.max_concurrency_limit)
}

/// Spreads re-measurements of many proxies so they do not all throttle an upstream at once.
fn jittered_remeasure_interval(config: &GradientConfig, rng: &mut impl Rng) -> Duration {
    let interval = config.min_rtt_calc_interval;
    let max_jitter_nanos = (interval.as_nanos() as f64 * config.jitter_percent / 100.0).min(u64::MAX as f64) as u64;
    let jitter = Duration::from_nanos(rng.random_range(0..=max_jitter_nanos));
    interval.saturating_add(jitter).min(MAX_INTERVAL)
}

/// Nearest-rank percentile: the smallest sample with at least `percentile`% of samples at or
/// below it. Reorders `samples`.
fn percentile(samples: &mut [Duration], percentile: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let rank = (percentile / 100.0 * samples.len() as f64).ceil() as usize;
    let index = rank.clamp(1, samples.len()) - 1;
    let (_, value, _) = samples.select_nth_unstable(index);
    Some(*value)
}

/// Intervals are capped at `MAX_INTERVAL`, so the fallback is only for clocks near their end.
fn later(now: Instant, after: Duration) -> Instant {
    now.checked_add(after).unwrap_or(now)
}

impl From<&AdaptiveConcurrencyConfig> for GradientConfig {
    fn from(c: &AdaptiveConcurrencyConfig) -> Self {
        GradientConfig {
            sample_aggregate_percentile: c.sample_aggregate_percentile,
            concurrency_update_interval: c.concurrency_update_interval,
            min_rtt_calc_interval: c.min_rtt_calc_interval,
            min_rtt_calc_request_count: c.min_rtt_calc_request_count,
            min_rtt_buffer_percent: c.min_rtt_buffer_percent,
            jitter_percent: c.jitter_percent,
            min_concurrency: c.min_concurrency,
            min_concurrency_limit: c.min_concurrency_limit,
            max_concurrency_limit: c.max_concurrency_limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// A saturated client: every admitted slot is busy, so by Little's law one update interval
    /// completes `limit * interval / latency` requests.
    struct SaturatedClient {
        controller: GradientController,
        rng: SmallRng,
        now: Instant,
    }

    impl SaturatedClient {
        fn new(config: GradientConfig) -> Self {
            let mut rng = SmallRng::seed_from_u64(7);
            let now = Instant::now();
            let controller = GradientController::new(config, now, &mut rng);
            Self { controller, rng, now }
        }

        fn run(&mut self, windows: usize, latency: Duration) {
            let window = self.controller.config.concurrency_update_interval;
            for _ in 0..windows {
                let completions = (u128::from(self.controller.limit()) * window.as_nanos() / latency.as_nanos().max(1))
                    .clamp(1, 500) as u32;
                for i in 1..=completions {
                    self.controller.record(self.now + window * i / completions, latency);
                }
                self.now += window;
                self.controller.tick(self.now, &mut self.rng);
            }
        }

        fn idle_window(&mut self) {
            self.now += self.controller.config.concurrency_update_interval;
            self.controller.tick(self.now, &mut self.rng);
        }

        fn adjusting_limit(&self) -> Option<u32> {
            (!self.controller.in_min_rtt_measurement()).then(|| self.controller.limit())
        }
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let mut samples: Vec<Duration> = [70, 10, 100, 40, 30, 90, 20, 60, 80, 50].map(ms).to_vec();
        for (pct, expected) in [(50.0, 50), (90.0, 90), (91.0, 100), (100.0, 100), (0.0, 10)] {
            assert_eq!(percentile(&mut samples, pct), Some(ms(expected)));
        }
        assert_eq!(percentile(&mut [ms(5)], 99.0), Some(ms(5)));
        assert_eq!(percentile(&mut [], 50.0), None);
    }

    #[test]
    fn next_limit_follows_envoy_formula() {
        let config = GradientConfig::default();
        assert_eq!(next_limit(&config, 100, ms(10), ms(10)), 136); // 125 + sqrt(125)
        assert_eq!(next_limit(&config, 100, ms(10), ms(50)), 57); // 0.25 clamps to 0.5
        assert_eq!(next_limit(&config, 100, ms(10), ms(1)), 214); // 12.5 clamps to 2.0
        assert_eq!(next_limit(&config, 100, ms(10), Duration::ZERO), 214);
        assert_eq!(next_limit(&config, 900, ms(10), ms(1)), 1000);
        assert_eq!(next_limit(&config, 3, ms(10), ms(1000)), 3);
    }

    #[test]
    fn measures_min_rtt_at_min_concurrency_first() {
        let mut rng = SmallRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut controller = GradientController::new(GradientConfig::default(), t0, &mut rng);
        assert!(controller.in_min_rtt_measurement());
        assert_eq!((controller.min_rtt(), controller.limit()), (None, 3));
        assert!(controller.admits(2) && !controller.admits(3));
        // Sent before the measurement began, so it must not count.
        controller.record(t0 + ms(5), ms(10));
        for i in 0..49 {
            controller.record(t0 + ms(20 + i), ms(10));
        }
        assert!(controller.in_min_rtt_measurement());
        controller.record(t0 + ms(100), ms(12));
        assert!(!controller.in_min_rtt_measurement());
        assert_eq!(controller.min_rtt(), Some(ms(10)));
        assert_eq!(controller.limit(), 3);
    }

    #[test]
    fn limit_grows_at_min_rtt_and_shrinks_to_floor_above_buffered_min_rtt() {
        let mut client = SaturatedClient::new(GradientConfig::default());
        let mut previous = 0;
        for _ in 0..30 {
            client.run(1, ms(10));
            if let Some(limit) = client.adjusting_limit() {
                assert!(limit >= previous);
                previous = limit;
            }
        }
        assert_eq!(client.controller.limit(), 1000);
        client.run(100, ms(10));
        assert_eq!(client.controller.limit(), 1000);

        // 2 * minRTT * (1 + 25%) halves the limit each window down to the floor; five windows in
        // a row there start a re-measurement.
        for windows in 1.. {
            client.run(1, ms(25));
            let limit = client.controller.limit();
            assert!(limit < previous || limit == 3, "{previous} -> {limit}");
            previous = limit;
            if client.controller.in_min_rtt_measurement() {
                assert!(windows >= 14, "re-measured after {windows} windows");
                break;
            }
            assert!(windows < 20, "no re-measurement at the floor");
        }
    }

    #[test]
    fn floor_and_ceiling_hold_even_for_degenerate_configs() {
        let narrow = GradientConfig {
            min_concurrency_limit: 7,
            max_concurrency_limit: 40,
            ..GradientConfig::default()
        };
        // Sanitised to floor = ceiling = 50, one-sample measurements, no jitter, a 1-year interval.
        let degenerate = GradientConfig {
            sample_aggregate_percentile: f64::NAN,
            concurrency_update_interval: ms(100),
            min_rtt_calc_interval: Duration::MAX,
            min_rtt_calc_request_count: 0,
            min_rtt_buffer_percent: f64::INFINITY,
            jitter_percent: f64::NAN,
            min_concurrency: 0,
            min_concurrency_limit: 50,
            max_concurrency_limit: 10,
        };
        for (config, bounds) in [(narrow, 7..=40), (degenerate, 50..=50)] {
            let mut client = SaturatedClient::new(config);
            for latency in [ms(10), ms(1), ms(500), Duration::ZERO, ms(2000)] {
                for _ in 0..40 {
                    client.run(1, latency);
                    let limit = client.adjusting_limit().unwrap_or(*bounds.start());
                    assert!(bounds.contains(&limit), "limit {limit}");
                }
            }
        }
    }

    #[test]
    fn remeasure_interval_is_jittered_and_idle_windows_keep_limit() {
        let config = GradientConfig::default();
        let mut rng = SmallRng::seed_from_u64(42);
        let draws: Vec<Duration> = (0..1000)
            .map(|_| jittered_remeasure_interval(&config, &mut rng))
            .collect();
        assert!(draws.iter().all(|d| (ms(60_000)..=ms(69_000)).contains(d)));
        assert!(draws.iter().any(|d| *d < ms(61_000)) && draws.iter().any(|d| *d > ms(68_000)));

        // Through the controller, ticking idle windows: the limit holds until the next
        // measurement, which starts in that range.
        let mut client = SaturatedClient::new(config);
        while client.controller.in_min_rtt_measurement() {
            client.run(1, ms(10));
        }
        // The measurement ended within the last window; the first idle tick rolls the samples
        // that arrived after it.
        let measured_at = client.now;
        client.idle_window();
        let limit = client.adjusting_limit();
        while client.adjusting_limit() == limit {
            client.idle_window();
        }
        assert!(client.controller.in_min_rtt_measurement());
        let waited = client.now - measured_at;
        assert!((ms(59_900)..=ms(69_100)).contains(&waited), "{waited:?}");
    }

    #[test]
    fn recovers_after_sustained_10x_slowdown() {
        let mut client = SaturatedClient::new(GradientConfig::default());
        client.run(50, ms(10));
        let before = client.controller.limit();
        assert_eq!(before, 1000);

        let mut lowest = before;
        for _ in 0..300 {
            client.run(1, ms(100));
            lowest = lowest.min(client.controller.limit());
        }
        assert!(lowest <= 10, "limit only fell to {lowest}");
        // The floor rule re-measured during the slowdown, so the baseline is now inflated.
        assert_eq!(client.controller.min_rtt(), Some(ms(100)));

        let recovered_after = (1..=20).find(|_| {
            client.run(1, ms(10));
            client.controller.min_rtt() == Some(ms(10))
                && client
                    .adjusting_limit()
                    .is_some_and(|limit| f64::from(limit) >= 0.8 * f64::from(before))
        });
        assert!(recovered_after.is_some(), "not recovered in 20 windows");

        // The re-learnt baseline keeps the limiter protective: a 3x slowdown bites at once.
        client.run(5, ms(30));
        assert!(client.controller.limit() < before / 2);
    }
}
