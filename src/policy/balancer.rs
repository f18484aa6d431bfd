//! Endpoint choice for `p2c_ewma`, `round_robin`, `random` and
//! `least_request`, honouring endpoint weights. Pure functions over a view of
//! the endpoints (time and rng come in as arguments) so they are tested
//! without sockets or clocks.
//!
//! Guarantees: an endpoint is only chosen if it is in `scope` (the zone the
//! zone plan chose), has a non-zero weight and is `available()` (neither
//! ejected nor failing health checks) unless the cluster is in panic mode;
//! `exclude` (the endpoint a retry just failed on) is only returned when it is
//! the sole such endpoint.
//!
//! `least_request` follows Envoy's default: power of two weighted-random
//! choices, keeping the one with fewer requests in flight per unit of weight.
//! `p2c_ewma` is the same choice on peak-EWMA latency times (in-flight + 1),
//! tower's `load::PeakEwma` with `p2c::Balance` (see `ewma.rs`).

use rand::Rng;
use tokio::time::Instant;

use super::ewma;
use crate::config::schema::LbPolicy;

/// What the balancer needs to know of one endpoint.
pub trait Candidate {
    fn weight(&self) -> u32;
    fn in_flight(&self) -> usize;
    /// False while ejected or failing health checks.
    fn available(&self) -> bool {
        true
    }
    /// Cost of one more request for `p2c_ewma`; without a latency estimate,
    /// just the queue length.
    fn latency_load(&self, _now: Instant) -> f64 {
        self.in_flight() as f64 + 1.0
    }
}

/// The per-request inputs of a pick besides the endpoints.
#[derive(Debug, Clone, Copy)]
pub struct PickInput {
    /// Round-robin position.
    pub counter: u64,
    /// Avoid this endpoint when another one is eligible (retries).
    pub exclude: Option<usize>,
    pub now: Instant,
    /// Panic mode: unavailable endpoints are eligible too.
    pub ignore_health: bool,
}

/// Picks an endpoint index among those `scope` allows.
pub fn pick<C: Candidate, R: Rng>(
    policy: LbPolicy,
    endpoints: &[C],
    scope: impl Fn(usize) -> bool,
    input: PickInput,
    rng: &mut R,
) -> Option<usize> {
    let eligible =
        |i: usize| scope(i) && endpoints[i].weight() > 0 && (input.ignore_health || endpoints[i].available());
    let exclude = input.exclude;
    match policy {
        LbPolicy::P2cEwma => {
            let weight_of = |i: usize| if eligible(i) { endpoints[i].weight() } else { 0 };
            let load = |i: usize| endpoints[i].latency_load(input.now);
            ewma::p2c_pick_weighted_by(endpoints.len(), weight_of, exclude, load, rng)
        }
        LbPolicy::RoundRobin => weighted_point(endpoints, avoiding(eligible, exclude, endpoints.len()), input.counter),
        LbPolicy::Random => weighted_random(endpoints, avoiding(eligible, exclude, endpoints.len()), rng),
        LbPolicy::LeastRequest => least_request(endpoints, avoiding(eligible, exclude, endpoints.len()), rng),
    }
}

/// `eligible` without `exclude`, unless `exclude` is the only eligible
/// endpoint: the endpoint a retry just failed on is still better than none.
fn avoiding(eligible: impl Fn(usize) -> bool, exclude: Option<usize>, len: usize) -> impl Fn(usize) -> bool {
    let any_other = (0..len).any(|i| eligible(i) && Some(i) != exclude);
    move |i| eligible(i) && (!any_other || Some(i) != exclude)
}

/// Two weighted-random choices; the one with fewer requests in flight per
/// unit of weight wins.
fn least_request<C: Candidate, R: Rng>(endpoints: &[C], filter: impl Fn(usize) -> bool, rng: &mut R) -> Option<usize> {
    let a = weighted_random(endpoints, &filter, rng)?;
    let b = weighted_random(endpoints, &filter, rng)?;
    let load = |i: usize| (endpoints[i].in_flight() as f64 + 1.0) / f64::from(endpoints[i].weight());
    Some(if load(b) < load(a) { b } else { a })
}

fn total_weight<C: Candidate>(endpoints: &[C], filter: impl Fn(usize) -> bool) -> u64 {
    (0..endpoints.len())
        .filter(|i| filter(*i))
        .map(|i| u64::from(endpoints[i].weight()))
        .sum()
}

/// The endpoint owning `point mod total weight` on the weighted line.
fn weighted_point<C: Candidate>(endpoints: &[C], filter: impl Fn(usize) -> bool, point: u64) -> Option<usize> {
    let total = total_weight(endpoints, &filter);
    if total == 0 {
        return None;
    }
    let mut point = point % total;
    for i in (0..endpoints.len()).filter(|i| filter(*i)) {
        let w = u64::from(endpoints[i].weight());
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
}

fn weighted_random<C: Candidate, R: Rng>(
    endpoints: &[C],
    filter: impl Fn(usize) -> bool,
    rng: &mut R,
) -> Option<usize> {
    let total = total_weight(endpoints, &filter);
    if total == 0 {
        return None;
    }
    weighted_point(endpoints, filter, rng.random_range(0..total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    const ALL: [LbPolicy; 4] = [
        LbPolicy::P2cEwma,
        LbPolicy::RoundRobin,
        LbPolicy::Random,
        LbPolicy::LeastRequest,
    ];

    struct E(u32, usize, bool);
    impl Candidate for E {
        fn weight(&self) -> u32 {
            self.0
        }
        fn in_flight(&self) -> usize {
            self.1
        }
        fn available(&self) -> bool {
            self.2
        }
    }

    fn input(counter: u64, exclude: Option<usize>) -> PickInput {
        PickInput {
            counter,
            exclude,
            now: Instant::now(),
            ignore_health: false,
        }
    }

    fn shares(policy: LbPolicy, endpoints: &[E], n: u64) -> Vec<u64> {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = vec![0; endpoints.len()];
        for c in 0..n {
            counts[pick(policy, endpoints, |_| true, input(c, None), &mut rng).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_honours_weights_exactly() {
        let eps = [E(3, 0, true), E(1, 0, true)];
        assert_eq!(shares(LbPolicy::RoundRobin, &eps, 400), vec![300, 100]);
    }

    #[test]
    fn random_honours_weights_roughly() {
        let eps = [E(3, 0, true), E(1, 0, true)];
        let s = shares(LbPolicy::Random, &eps, 10_000);
        assert!((7_200..7_800).contains(&s[0]), "{s:?}");
    }

    #[test]
    fn least_request_prefers_idle_endpoints() {
        let eps = [E(1, 10, true), E(1, 0, true), E(1, 0, true)];
        let s = shares(LbPolicy::LeastRequest, &eps, 3_000);
        // The busy endpoint only wins when drawn twice: about 1/9 of picks.
        assert!(s[0] < 450, "{s:?}");
    }

    #[test]
    fn unavailable_and_excluded_endpoints_are_skipped() {
        let mut rng = SmallRng::seed_from_u64(1);
        let eps = [E(1, 0, false), E(1, 0, true), E(1, 0, true)];
        for policy in ALL {
            for c in 0..50 {
                let i = pick(policy, &eps, |_| true, input(c, Some(1)), &mut rng).unwrap();
                assert_eq!(i, 2, "{policy:?}");
            }
            // Excluding the only available endpoint still returns it.
            let one = [E(1, 0, true), E(1, 0, false)];
            assert_eq!(pick(policy, &one, |_| true, input(0, Some(0)), &mut rng), Some(0));
            let none = [E(1, 0, false)];
            assert_eq!(pick(policy, &none, |_| true, input(0, None), &mut rng), None);
            // Panic mode uses unavailable endpoints rather than failing.
            let panic = PickInput {
                ignore_health: true,
                ..input(0, None)
            };
            assert_eq!(pick(policy, &none, |_| true, panic, &mut rng), Some(0));
        }
    }

    #[test]
    fn scope_limits_every_policy() {
        let mut rng = SmallRng::seed_from_u64(2);
        let eps = [E(1, 0, true), E(5, 0, true), E(1, 0, true), E(1, 0, true)];
        for policy in ALL {
            for c in 0..100 {
                let i = pick(policy, &eps, |i| i >= 2, input(c, None), &mut rng).unwrap();
                assert!(i >= 2, "{policy:?} picked {i}");
            }
            assert_eq!(pick(policy, &eps, |_| false, input(0, None), &mut rng), None);
        }
    }

    #[test]
    fn every_policy_honours_weights() {
        // Equal load per unit of weight, so the two-choice policies fall back
        // to their weighted draw; under real load the feedback does the rest.
        let eps = [E(3, 2, true), E(1, 0, true)];
        for policy in ALL {
            let s = shares(policy, &eps, 10_000);
            assert!((7_000..8_000).contains(&s[0]), "{policy:?} {s:?}");
        }
    }
}
