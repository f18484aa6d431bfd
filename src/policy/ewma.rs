//! Peak-sensitive EWMA latency load and power-of-two-choices endpoint picking.
//!
//! [`PeakEwma`] keeps a per-endpoint round-trip-time estimate that jumps up to
//! any slower sample at once and only drifts back down over time, so a
//! degrading endpoint is shunned immediately while a recovering one has to
//! prove itself. [`p2c_pick_weighted_by`] uses such a load to choose between
//! two weighted-random candidates, with weights from a function so the
//! balancer can zero out endpoints outside the chosen zone or not usable
//! without allocating.
//!
//! Guarantees:
//! - After `observe(now, rtt)` the estimate at `now` is never below `rtt`.
//! - While idle the estimate decays towards zero as `e^(-elapsed/decay)`, so it
//!   halves every `decay * ln 2`; an idle endpoint is eventually retried.
//! - Observing a zero RTT is indistinguishable from being idle, and the new
//!   estimate is continuous and non-decreasing in the observed RTT.
//! - Picking allocates nothing, calls `load` at most twice, and, when at least
//!   two endpoints have a non-zero weight, compares two distinct endpoints.
//! - An excluded endpoint (the one a retry just failed on) is only returned
//!   when it is the sole endpoint with a non-zero weight.
//!
//! Source: the update rule is tower's `load::PeakEwma` (as used by
//! linkerd2-proxy), itself from Finagle's `PeakEwma`; the choice rule is
//! Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing"
//! (2001), with candidates drawn in proportion to weight and compared on
//! load per unit of weight.

use rand::Rng;
use tokio::time::{Duration, Instant};

/// Peak-sensitive, time-decayed RTT estimate of one endpoint.
#[derive(Debug, Clone)]
pub struct PeakEwma {
    /// Estimate as of `updated_at`, before any idle decay since then.
    rtt_ns: f64,
    updated_at: Instant,
    decay_ns: f64,
}

impl PeakEwma {
    /// `default_rtt` stands in until real samples arrive (and decays like
    /// one), so an unknown endpoint is neither free nor shunned.
    pub fn new(default_rtt: Duration, decay: Duration, now: Instant) -> Self {
        Self {
            rtt_ns: nanos(default_rtt),
            updated_at: now,
            decay_ns: nanos(decay),
        }
    }

    /// Folds in one RTT sample observed at `now`.
    ///
    /// new = max(rtt, old·w + rtt·(1 − w)) with w = e^(−elapsed/decay), which is
    /// tower's "take the peak, else blend" rule written so that the result is
    /// continuous in `rtt`.
    pub fn observe(&mut self, now: Instant, rtt: Duration) {
        let rtt_ns = nanos(rtt);
        let w = self.weight_of_old(now);
        let blended = self.rtt_ns * w + rtt_ns * (1.0 - w);
        self.rtt_ns = blended.max(rtt_ns);
        // Keep the newer stamp if samples arrive out of order, so decay is never
        // applied twice to the same stretch of time.
        if now > self.updated_at {
            self.updated_at = now;
        }
    }

    /// RTT estimate at `now`, including decay towards zero since the last
    /// sample (tower applies the same decay when it reads the load).
    pub fn estimate(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.estimate_ns(now) as u64)
    }

    /// Cost of sending one more request: estimate_ns · (in_flight + 1).
    ///
    /// The `+ 1` makes an idle endpoint's cost its latency rather than zero, so
    /// idle endpoints are still ranked by speed.
    pub fn load(&self, now: Instant, in_flight: usize) -> f64 {
        self.estimate_ns(now) * (in_flight as f64 + 1.0)
    }

    fn estimate_ns(&self, now: Instant) -> f64 {
        self.rtt_ns * self.weight_of_old(now)
    }

    fn weight_of_old(&self, now: Instant) -> f64 {
        let elapsed = nanos(now.saturating_duration_since(self.updated_at));
        if elapsed == 0.0 {
            return 1.0;
        }
        if self.decay_ns == 0.0 {
            // No memory at all: any elapsed time forgets the past completely.
            return 0.0;
        }
        (-elapsed / self.decay_ns).exp()
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// Power of two choices over `len` endpoints: draws two distinct endpoints
/// with probability proportional to `weight_of` and returns the one with the
/// lower `load(i) / weight_of(i)` (ties go to the first draw).
///
/// Weights come from a function, so a caller can zero out ineligible
/// endpoints (another zone, ejected) without building a weight slice per
/// request. `exclude` (the endpoint a retry just failed on) counts as weight
/// zero unless it is the only endpoint with a non-zero weight, in which case
/// it is returned rather than failing the retry outright. Returns `None` when
/// no endpoint has a non-zero weight, and the only candidate when there is
/// exactly one.
pub fn p2c_pick_weighted_by<R: Rng + ?Sized>(
    len: usize,
    weight_of: impl Fn(usize) -> u32,
    exclude: Option<usize>,
    load: impl Fn(usize) -> f64,
    rng: &mut R,
) -> Option<usize> {
    let weight = |i: usize| -> u64 {
        if Some(i) == exclude {
            0
        } else {
            u64::from(weight_of(i))
        }
    };
    let total: u64 = (0..len).map(weight).sum();
    if total == 0 {
        return exclude.filter(|&i| i < len && weight_of(i) > 0);
    }

    let first = draw_weighted(len, total, &weight, None, rng)?;
    let rest = total - weight(first);
    if rest == 0 {
        return Some(first);
    }
    let second = draw_weighted(len, rest, &weight, Some(first), rng)?;

    // Comparing load per unit of weight lets a weight-3 endpoint carry three
    // times the in-flight work before it loses to a weight-1 one, which is
    // what turns weights into traffic shares under feedback.
    let cost = |i: usize| load(i) / f64::from(weight_of(i));
    if cost(second) < cost(first) {
        Some(second)
    } else {
        Some(first)
    }
}

/// Linear scan instead of a prebuilt alias table: endpoint lists are small
/// and change often, and this keeps each pick allocation-free.
fn draw_weighted<R: Rng + ?Sized>(
    len: usize,
    total: u64,
    weight_of: &impl Fn(usize) -> u64,
    skip: Option<usize>,
    rng: &mut R,
) -> Option<usize> {
    let mut ticket = rng.random_range(0..total);
    for i in (0..len).filter(|&i| Some(i) != skip) {
        let w = weight_of(i);
        if ticket < w {
            return Some(i);
        }
        ticket -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use std::collections::VecDeque;

    const MS: Duration = Duration::from_millis(1);

    /// [`p2c_pick_weighted_by`] over a weight slice.
    fn p2c_pick<R: Rng + ?Sized>(weights: &[u32], load: impl Fn(usize) -> f64, rng: &mut R) -> Option<usize> {
        p2c_pick_excluding(weights, None, load, rng)
    }

    fn p2c_pick_excluding<R: Rng + ?Sized>(
        weights: &[u32],
        exclude: Option<usize>,
        load: impl Fn(usize) -> f64,
        rng: &mut R,
    ) -> Option<usize> {
        p2c_pick_weighted_by(weights.len(), |i| weights[i], exclude, load, rng)
    }

    fn close(a: Duration, b: Duration) -> bool {
        (a.as_secs_f64() - b.as_secs_f64()).abs() < 1e-6
    }

    #[test]
    fn peak_is_taken_immediately() {
        let t0 = Instant::now();
        let mut ewma = PeakEwma::new(10 * MS, Duration::from_secs(10), t0);
        let t1 = t0 + MS;
        ewma.observe(t1, 250 * MS);
        assert_eq!(ewma.estimate(t1), 250 * MS);
    }

    #[test]
    fn idle_estimate_halves_after_decay_times_ln2() {
        let t0 = Instant::now();
        let decay = Duration::from_secs(10);
        let mut ewma = PeakEwma::new(10 * MS, decay, t0);
        ewma.observe(t0, 100 * MS);
        let half_life = decay.mul_f64(std::f64::consts::LN_2);
        assert!(close(ewma.estimate(t0 + half_life), 50 * MS));
        assert!(close(ewma.estimate(t0 + half_life * 2), 25 * MS));
    }

    #[test]
    fn lower_sample_blends_by_elapsed_time() {
        let t0 = Instant::now();
        let decay = Duration::from_secs(10);
        let mut ewma = PeakEwma::new(100 * MS, decay, t0);
        let t1 = t0 + decay.mul_f64(std::f64::consts::LN_2);
        ewma.observe(t1, 20 * MS);
        // w = 0.5: 100·0.5 + 20·0.5
        assert!(close(ewma.estimate(t1), 60 * MS));
    }

    #[test]
    fn zero_sample_equals_idle_decay() {
        let t0 = Instant::now();
        let decay = Duration::from_secs(3);
        let idle = PeakEwma::new(80 * MS, decay, t0);
        let mut zero = idle.clone();
        let t1 = t0 + Duration::from_millis(1700);
        zero.observe(t1, Duration::ZERO);
        assert!(close(zero.estimate(t1), idle.estimate(t1)));
        assert!(close(zero.estimate(t1 + MS), idle.estimate(t1 + MS)));
    }

    #[test]
    fn load_scales_with_in_flight_plus_one() {
        let t0 = Instant::now();
        let ewma = PeakEwma::new(10 * MS, Duration::from_secs(10), t0);
        assert_eq!(ewma.load(t0, 0), 10_000_000.0);
        assert_eq!(ewma.load(t0, 3), 40_000_000.0);
    }

    #[test]
    fn zero_decay_forgets_after_any_time() {
        let t0 = Instant::now();
        let ewma = PeakEwma::new(10 * MS, Duration::ZERO, t0);
        assert_eq!(ewma.estimate(t0), 10 * MS);
        assert_eq!(ewma.estimate(t0 + MS), Duration::ZERO);
    }

    #[test]
    fn degenerate_inputs() {
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(p2c_pick(&[], |_| 0.0, &mut rng), None);
        assert_eq!(p2c_pick(&[0, 0, 0], |_| 0.0, &mut rng), None);
        for _ in 0..100 {
            assert_eq!(p2c_pick(&[0, 7, 0], |_| 1.0, &mut rng), Some(1));
        }
    }

    #[test]
    fn candidates_are_distinct() {
        let mut rng = SmallRng::seed_from_u64(2);
        // Were the same index ever drawn twice, endpoint 0 would sometimes win.
        for _ in 0..1_000 {
            let pick = p2c_pick(&[1, 1], |i| [2.0, 1.0][i], &mut rng);
            assert_eq!(pick, Some(1));
        }
    }

    #[test]
    fn exclusion_is_honoured_when_another_endpoint_exists() {
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..1_000 {
            let pick = p2c_pick_excluding(&[1, 1, 1], Some(1), |i| [5.0, 0.0, 5.0][i], &mut rng);
            assert!(matches!(pick, Some(0 | 2)));
            let pick = p2c_pick_excluding(&[0, 1, 1], Some(2), |_| 1.0, &mut rng);
            assert_eq!(pick, Some(1));
        }
        // The failed endpoint is still better than failing the retry outright.
        assert_eq!(p2c_pick_excluding(&[0, 4], Some(1), |_| 1.0, &mut rng), Some(1));
        assert_eq!(p2c_pick_excluding(&[0, 0], Some(1), |_| 1.0, &mut rng), None);
        assert_eq!(p2c_pick_excluding(&[3], Some(9), |_| 1.0, &mut rng), Some(0));
    }

    #[test]
    fn equal_load_per_weight_follows_weights() {
        let mut rng = SmallRng::seed_from_u64(4);
        let weights = [3, 1];
        let mut picks = [0u32; 2];
        for _ in 0..10_000 {
            let load = |i: usize| f64::from(weights[i]);
            if let Some(i) = p2c_pick(&weights, load, &mut rng) {
                picks[i] += 1;
            }
        }
        let share = f64::from(picks[0]) / 10_000.0;
        assert!((share - 0.75).abs() < 0.02, "share {share}");
    }

    /// Closed loop: one request per millisecond, each endpoint answers after
    /// a fixed latency, loads come from PeakEwma and the in-flight count.
    fn simulate(weights: &[u32], latencies: &[Duration], requests: usize, seed: u64) -> Vec<u32> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let t0 = Instant::now();
        let decay = Duration::from_secs(10);
        let mut ewmas: Vec<_> = weights.iter().map(|_| PeakEwma::new(10 * MS, decay, t0)).collect();
        let mut pending: Vec<VecDeque<Instant>> = weights.iter().map(|_| VecDeque::new()).collect();
        let mut picks = vec![0u32; weights.len()];
        for step in 0..requests {
            let now = t0 + MS * step as u32;
            for (i, queue) in pending.iter_mut().enumerate() {
                while queue.front().is_some_and(|&done| done <= now) {
                    let done = queue.pop_front().expect("front exists");
                    ewmas[i].observe(done, latencies[i]);
                }
            }
            let load = |i: usize| ewmas[i].load(now, pending[i].len());
            let pick = p2c_pick(weights, load, &mut rng).expect("weights are positive");
            picks[pick] += 1;
            pending[pick].push_back(now + latencies[pick]);
        }
        picks
    }

    #[test]
    fn slow_endpoint_gets_under_ten_percent() {
        let picks = simulate(&[1, 1, 1], &[10 * MS, 10 * MS, 100 * MS], 10_000, 5);
        let slow_share = f64::from(picks[2]) / 10_000.0;
        assert!(slow_share < 0.10, "picks {picks:?}");
    }

    #[test]
    fn weights_three_to_one_with_equal_latency() {
        let picks = simulate(&[3, 1], &[50 * MS, 50 * MS], 10_000, 6);
        // Equilibrium is (a + 1) / 3 = b + 1 in-flight with a + b ≈ 50, i.e. a
        // share of about 0.77: roughly 3:1, skewed slightly by the `+ 1`.
        let share = f64::from(picks[0]) / 10_000.0;
        assert!((0.70..0.85).contains(&share), "picks {picks:?}");
    }
}
