//! Retry delays: capped exponential backoff with full jitter.
//!
//! Source: Marc Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog (2015), the
//! "Full Jitter" variant: `sleep = random_between(0, min(cap, base * 2^attempt))`. Full jitter
//! spreads retries of many clients over the whole interval, so they do not arrive in synchronised
//! waves at a recovering upstream.
//!
//! Guarantee: `delay` returns a uniformly random duration in
//! `[0, min(max, base * 2^(attempt - 1))]` for every `attempt`, with no overflow or panic for any
//! input, and draws randomness only from the caller's `rng`.

use rand::Rng;
use tokio::time::Duration;

/// Tuning of [`delay`]; defaults are linkerd's retry backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The ceiling of the first retry's delay.
    pub base: Duration,
    /// The ceiling of every retry's delay.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

/// The delay before retry number `attempt` (1 for the first retry; 0 is treated as 1).
pub fn delay<R: Rng + ?Sized>(config: &BackoffConfig, attempt: u32, rng: &mut R) -> Duration {
    let ceiling = ceiling(config, attempt);
    // Nanosecond resolution up to ~584 years is far finer and longer than any retry delay.
    let ceiling_nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=ceiling_nanos))
}

/// `min(max, base * 2^(attempt - 1))` without overflowing for large attempts.
fn ceiling(config: &BackoffConfig, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1);
    1u32.checked_shl(doublings)
        .and_then(|factor| config.base.checked_mul(factor))
        .map_or(config.max, |exponential| exponential.min(config.max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let config = BackoffConfig::default();
        let ceilings: Vec<Duration> = (0..=6).map(|attempt| ceiling(&config, attempt)).collect();
        assert_eq!(ceilings, [ms(25), ms(25), ms(50), ms(100), ms(200), ms(250), ms(250)]);
        assert_eq!(ceiling(&config, u32::MAX), ms(250));
    }

    #[test]
    fn delays_stay_within_bounds_for_attempts_1_to_64() {
        let config = BackoffConfig::default();
        let mut rng = SmallRng::seed_from_u64(3);
        for attempt in 1..=64u32 {
            let bound = if attempt >= 5 {
                ms(250)
            } else {
                ms(25) * (1 << (attempt - 1))
            };
            for _ in 0..200 {
                assert!(delay(&config, attempt, &mut rng) <= bound, "attempt {attempt}");
            }
        }
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        let config = BackoffConfig {
            base: Duration::MAX,
            max: Duration::MAX,
        };
        let mut rng = SmallRng::seed_from_u64(4);
        for attempt in [0, 1, 2, 64, u32::MAX] {
            let _ = delay(&config, attempt, &mut rng);
        }
        let zero = BackoffConfig {
            base: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(delay(&zero, 10, &mut rng), Duration::ZERO);
    }

    #[test]
    fn delays_are_roughly_uniform() {
        let config = BackoffConfig::default();
        let mut rng = SmallRng::seed_from_u64(5);
        let draws = 20_000;
        let mut histogram = [0u32; 10];
        let mut total = Duration::ZERO;
        for _ in 0..draws {
            let sample = delay(&config, 8, &mut rng);
            total += sample;
            let decile = (sample.as_nanos() * 10 / ms(250).as_nanos()).min(9) as usize;
            histogram[decile] += 1;
        }
        let expected = draws / 10;
        for count in histogram {
            assert!(count.abs_diff(expected) < expected / 10, "{histogram:?}");
        }
        let mean = total / draws;
        assert!(mean > ms(120) && mean < ms(130), "{mean:?}");
    }
}
