//! Endpoint choice for `round_robin`, `random` and `least_request`, honouring
//! endpoint weights. Pure functions over a view of the endpoints so they are
//! tested without sockets; `exclude` lets a retry avoid the endpoint that just
//! failed whenever another one is available.
//!
//! `least_request` follows Envoy's default: power of two weighted-random
//! choices, keeping the one with fewer requests in flight per unit of weight.

use rand::Rng;

use crate::config::schema::LbPolicy;

/// What the balancer needs to know of one endpoint.
pub trait Candidate {
    fn weight(&self) -> u32;
    fn in_flight(&self) -> usize;
    /// False while ejected or failing health checks.
    fn available(&self) -> bool {
        true
    }
}

/// Picks an endpoint index; `counter` is the round-robin position.
pub fn pick<C: Candidate, R: Rng>(
    policy: LbPolicy,
    endpoints: &[C],
    counter: u64,
    exclude: Option<usize>,
    rng: &mut R,
) -> Option<usize> {
    let eligible = |i: usize| endpoints[i].available() && endpoints[i].weight() > 0;
    let mut allowed = |i: usize| eligible(i) && Some(i) != exclude;
    let any_other = (0..endpoints.len()).any(&mut allowed);
    // When the excluded endpoint is the only choice, it is still better than none.
    let filter = |i: usize| {
        if any_other {
            eligible(i) && Some(i) != exclude
        } else {
            eligible(i)
        }
    };
    match policy {
        LbPolicy::RoundRobin => weighted_point(endpoints, filter, counter),
        LbPolicy::Random => weighted_random(endpoints, filter, rng),
        LbPolicy::LeastRequest => {
            let a = weighted_random(endpoints, filter, rng)?;
            let b = weighted_random(endpoints, filter, rng)?;
            let load = |i: usize| (endpoints[i].in_flight() as f64 + 1.0) / f64::from(endpoints[i].weight());
            Some(if load(b) < load(a) { b } else { a })
        }
    }
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

    fn shares(policy: LbPolicy, endpoints: &[E], n: u64) -> Vec<u64> {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = vec![0; endpoints.len()];
        for c in 0..n {
            counts[pick(policy, endpoints, c, None, &mut rng).unwrap()] += 1;
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
        for policy in [LbPolicy::RoundRobin, LbPolicy::Random, LbPolicy::LeastRequest] {
            for c in 0..50 {
                let i = pick(policy, &eps, c, Some(1), &mut rng).unwrap();
                assert_eq!(i, 2, "{policy:?}");
            }
        }
        // Excluding the only available endpoint still returns it.
        let one = [E(1, 0, true), E(1, 0, false)];
        assert_eq!(pick(LbPolicy::Random, &one, 0, Some(0), &mut rng), Some(0));
        let none = [E(1, 0, false)];
        assert_eq!(pick(LbPolicy::RoundRobin, &none, 0, None, &mut rng), None);
    }
}
