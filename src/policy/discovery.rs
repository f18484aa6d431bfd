//! When a discovery source looks again, and which outcomes are worth a log
//! line: the pure core of `cluster::discovery`.
//!
//! Guarantees:
//! - After a success the next look is `refresh` away, or the answer's TTL
//!   when that is shorter, but never closer than `min_refresh` (a record
//!   with TTL 0 cannot make weft spin).
//! - After the n-th failure in a row the next look is
//!   `min(refresh, min_refresh * 2^(n-1))` scaled by a random factor in
//!   [0.5, 1] ("equal jitter": never under half the ceiling, so a failing
//!   source is retried soon but sidecars started together spread out); a
//!   success resets the count.
//! - [`Step::entered`] is set exactly when the source's state changes
//!   (starting, ok, failing), so a source failing for an hour logs once.
//! - No clock or rng reads: `now` and the rng are arguments.

use rand::Rng;
use tokio::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshConfig {
    /// The longest wait between looks after a success.
    pub refresh: Duration,
    /// The shortest wait between looks, and the first retry's ceiling.
    pub min_refresh: Duration,
}

/// What one look found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A set different from the last one.
    Changed,
    Unchanged,
    /// Nothing usable: the last good set stays.
    Failed,
}

impl Outcome {
    /// The `result` label of `weft_discovery_updates_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Changed => "ok",
            Outcome::Unchanged => "unchanged",
            Outcome::Failed => "error",
        }
    }
}

/// Where a source stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    /// No look has finished yet.
    Starting,
    Ok,
    Failing,
}

impl SourceState {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Starting => "starting",
            SourceState::Ok => "ok",
            SourceState::Failing => "failing",
        }
    }
}

/// What to do after a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// When to look next.
    pub next: Instant,
    /// The state the source just entered, when it changed.
    pub entered: Option<SourceState>,
}

/// One source's schedule.
#[derive(Debug, Clone)]
pub struct RefreshSchedule {
    config: RefreshConfig,
    state: SourceState,
    failures: u32,
}

impl RefreshSchedule {
    pub fn new(config: RefreshConfig) -> Self {
        Self {
            config,
            state: SourceState::Starting,
            failures: 0,
        }
    }

    pub fn state(&self) -> SourceState {
        self.state
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Folds in the outcome of a look finished at `now`; `ttl` is the
    /// shortest time-to-live in the answer, when the source has one.
    pub fn record<R: Rng + ?Sized>(
        &mut self,
        outcome: Outcome,
        ttl: Option<Duration>,
        now: Instant,
        rng: &mut R,
    ) -> Step {
        let (state, wait) = match outcome {
            Outcome::Changed | Outcome::Unchanged => {
                self.failures = 0;
                (SourceState::Ok, self.after_success(ttl))
            }
            Outcome::Failed => {
                self.failures = self.failures.saturating_add(1);
                (SourceState::Failing, self.after_failure(rng))
            }
        };
        let entered = (state != self.state).then_some(state);
        self.state = state;
        Step {
            next: now.checked_add(wait).unwrap_or(now),
            entered,
        }
    }

    fn after_success(&self, ttl: Option<Duration>) -> Duration {
        let RefreshConfig { refresh, min_refresh } = self.config;
        ttl.map_or(refresh, |ttl| ttl.min(refresh)).max(min_refresh)
    }

    fn after_failure<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        let RefreshConfig { refresh, min_refresh } = self.config;
        let doublings = self.failures.saturating_sub(1);
        let ceiling = 1u32
            .checked_shl(doublings)
            .and_then(|factor| min_refresh.checked_mul(factor))
            .map_or(refresh, |d| d.min(refresh))
            .max(min_refresh.min(refresh));
        ceiling.mul_f64(rng.random_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    const SEC: Duration = Duration::from_secs(1);

    fn schedule(refresh: u32, min_refresh: u32) -> RefreshSchedule {
        RefreshSchedule::new(RefreshConfig {
            refresh: refresh * SEC,
            min_refresh: min_refresh * SEC,
        })
    }

    #[test]
    fn success_waits_for_refresh_or_a_shorter_ttl_but_not_under_min_refresh() {
        let (t0, mut rng) = (Instant::now(), SmallRng::seed_from_u64(1));
        let mut s = schedule(30, 2);
        let wait = |s: &mut RefreshSchedule, ttl: Option<u32>, rng: &mut SmallRng| {
            s.record(Outcome::Unchanged, ttl.map(|t| t * SEC), t0, rng).next - t0
        };
        assert_eq!(wait(&mut s, None, &mut rng), 30 * SEC);
        assert_eq!(wait(&mut s, Some(300), &mut rng), 30 * SEC);
        assert_eq!(wait(&mut s, Some(7), &mut rng), 7 * SEC);
        assert_eq!(wait(&mut s, Some(0), &mut rng), 2 * SEC);
    }

    #[test]
    fn failures_back_off_with_jitter_up_to_refresh_and_reset_on_success() {
        let (t0, mut rng) = (Instant::now(), SmallRng::seed_from_u64(2));
        let mut s = schedule(10, 1);
        let ceilings: [u32; 7] = [1, 2, 4, 8, 10, 10, 10];
        for (n, ceiling) in ceilings.into_iter().enumerate() {
            let wait = s.record(Outcome::Failed, None, t0, &mut rng).next - t0;
            let ceiling = ceiling * SEC;
            assert!(wait <= ceiling && wait >= ceiling / 2, "failure {}: {wait:?}", n + 1);
        }
        assert_eq!(s.failures(), 7);
        assert_eq!(s.record(Outcome::Changed, None, t0, &mut rng).next - t0, 10 * SEC);
        let wait = s.record(Outcome::Failed, None, t0, &mut rng).next - t0;
        assert!(wait <= SEC, "the count restarted: {wait:?}");
        // Huge failure counts neither overflow nor exceed refresh.
        for _ in 0..100 {
            s.record(Outcome::Failed, None, t0, &mut rng);
        }
        assert!(s.record(Outcome::Failed, None, t0, &mut rng).next - t0 <= 10 * SEC);
    }

    /// A source's loop as the DNS one runs it, on paused time: fails three
    /// times, then answers with a 2 s TTL; the looks happen when scheduled.
    #[tokio::test(start_paused = true)]
    async fn a_loop_on_the_schedule_retries_sooner_and_then_follows_the_ttl() {
        let mut rng = SmallRng::seed_from_u64(4);
        let mut s = schedule(10, 1);
        let t0 = Instant::now();
        let mut looks = Vec::new();
        for n in 0..6 {
            looks.push(Instant::now() - t0);
            let outcome = if n < 3 { Outcome::Failed } else { Outcome::Unchanged };
            let step = s.record(outcome, Some(2 * SEC), Instant::now(), &mut rng);
            tokio::time::sleep_until(step.next).await;
        }
        let gaps: Vec<Duration> = looks.windows(2).map(|w| w[1] - w[0]).collect();
        // Backoff ceilings 1 s, 2 s, 4 s (each at least half of it), then the TTL.
        for (gap, ceiling) in gaps.iter().zip([1, 2, 4]) {
            assert!(*gap <= ceiling * SEC && *gap >= ceiling * SEC / 2, "{gaps:?}");
        }
        assert_eq!(gaps[3..], [2 * SEC, 2 * SEC], "{gaps:?}");
    }

    #[test]
    fn only_changes_of_state_are_reported() {
        let (t0, mut rng) = (Instant::now(), SmallRng::seed_from_u64(3));
        let mut s = schedule(5, 1);
        assert_eq!(s.state(), SourceState::Starting);
        let entered: Vec<Option<SourceState>> = [
            Outcome::Failed,
            Outcome::Failed,
            Outcome::Changed,
            Outcome::Unchanged,
            Outcome::Changed,
            Outcome::Failed,
            Outcome::Failed,
            Outcome::Unchanged,
        ]
        .into_iter()
        .map(|o| s.record(o, None, t0, &mut rng).entered)
        .collect();
        use SourceState::{Failing, Ok};
        assert_eq!(
            entered,
            [Some(Failing), None, Some(Ok), None, None, Some(Failing), None, Some(Ok)]
        );
    }
}
