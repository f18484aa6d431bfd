//! Zone-aware routing: decides, per request, whether to stay in the caller's
//! zone or cross to another, following Envoy's zone aware routing.
//!
//! The goal is to keep as much traffic in the local zone as possible while
//! every upstream endpoint still sees about the same request rate. With
//! `caller_share[z]` the fraction of callers (proxies like this one) in zone
//! `z` and `healthy_share[z]` the fraction of healthy endpoints in `z`:
//! - `healthy_share[local] >= caller_share[local]` (and local has a healthy
//!   endpoint): everything stays local ([`ZoneRouting::AllLocal`]).
//! - otherwise a fraction `healthy_share[local] / caller_share[local]` stays
//!   local (0 if the local zone has no healthy endpoint) and the rest is split
//!   across the other zones in proportion to their residual capacity
//!   `healthy_share[z] - caller_share[z]` where positive ([`ZoneRouting::Spill`]).
//!   A local deficit implies a surplus elsewhere, so "no residual anywhere"
//!   only arises from rounding; the rest is then split by `healthy_share[z]`.
//!   If no other zone has a healthy endpoint, everything stays local.
//!
//! Preconditions, checked in this order (as Envoy's `hostsToUse` does):
//! 1. Panic: `healthy * 100 < panic_threshold_percent * total` (or no
//!    endpoints at all), unless the threshold is 0 (panic mode off): every
//!    pick is [`ZoneChoice::Any`] and health is ignored ([`ZoneRouting::Panic`]).
//! 2. [`ZoneRouting::Unzoned`] — any pick is [`ZoneChoice::Any`] among
//!    *healthy* endpoints — when routing is disabled, `local_zone` is empty,
//!    nothing is healthy, fewer than `min_cluster_size` endpoints are
//!    healthy, or callers were given but none is in `local_zone`. Envoy treats
//!    a small cluster this way rather than as panic, so a 3-endpoint cluster
//!    with one bad endpoint still avoids it.
//!
//! Empty `callers` (or all counts zero) means callers are spread like the
//! cluster's configured endpoints, healthy or not. Endpoints whose zone is
//! empty form an unnamed remote zone `""` that is never local.
//!
//! Guarantees: `local_share() + Σ remote shares == 1` for routing plans; a pick
//! borrows the zone name from the plan and never allocates; `AllLocal` picks
//! do not touch the rng.
//!
//! Source: Envoy docs "Zone aware routing" (intro/arch_overview/upstream/
//! load_balancing/zone_aware) and `source/common/upstream/load_balancer_impl.cc`
//! (`regenerateLocalityRoutingStructures`, `earlyExitNonLocalityRouting`,
//! `tryChooseLocalLocalityHosts`, `calculateLocalityPercentage`). Shares are
//! kept as f64 rather than Envoy's 1/10000 integers.

use crate::config::health::ZoneAwareSection;
use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneAwareConfig {
    pub enabled: bool,
    /// Minimum number of *healthy* endpoints for zone routing (Envoy's
    /// `min_cluster_size`).
    pub min_cluster_size: u32,
    /// Values above 100 act as 100; 0 disables panic routing.
    pub panic_threshold_percent: u32,
}

impl Default for ZoneAwareConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_cluster_size: 6,
            panic_threshold_percent: 50,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneRouting {
    /// Too few healthy endpoints: use every endpoint, ignoring health.
    Panic,
    /// No zone preference: use every healthy endpoint.
    Unzoned,
    /// Every request stays in the local zone.
    AllLocal,
    /// Part of the traffic stays local, the rest crosses zones.
    Spill,
}

/// Where one request should go. `Remote` borrows its zone name from the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneChoice<'a> {
    Local,
    Remote(&'a str),
    Any,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ZonePlan {
    routing: ZoneRouting,
    local_share: f64,
    /// Remote zones with their share of *all* picks, in first-seen order.
    remote: Vec<(String, f64)>,
}

#[derive(Debug)]
struct ZoneTally<'a> {
    name: &'a str,
    callers: u64,
    endpoints: u64,
    healthy: u64,
}

/// The totals a zone's counts are shares of.
#[derive(Debug, Clone, Copy)]
struct Totals {
    callers: u64,
    healthy: u64,
}

impl Totals {
    fn callers(&self, t: &ZoneTally<'_>) -> f64 {
        t.callers as f64 / self.callers as f64
    }

    fn healthy(&self, t: &ZoneTally<'_>) -> f64 {
        t.healthy as f64 / self.healthy as f64
    }
}

/// Endpoints and callers per zone, in first-seen order, and the callers'
/// total; without caller counts every zone calls in proportion to its
/// endpoints.
fn tally_zones<'a, C: AsRef<str>, E: AsRef<str>>(
    endpoints: &'a [(E, bool)],
    callers: &'a [(C, u64)],
) -> (Vec<ZoneTally<'a>>, u64) {
    let mut zones: Vec<ZoneTally<'_>> = Vec::new();
    for (zone, ok) in endpoints {
        let tally = tally_for(&mut zones, zone.as_ref());
        tally.endpoints += 1;
        tally.healthy += u64::from(*ok);
    }
    let caller_total: u64 = callers.iter().map(|(_, n)| *n).sum();
    if caller_total == 0 {
        for tally in &mut zones {
            tally.callers = tally.endpoints;
        }
        return (zones, endpoints.len() as u64);
    }
    for (zone, n) in callers {
        tally_for(&mut zones, zone.as_ref()).callers += n;
    }
    (zones, caller_total)
}

/// Divides `spill` (the share of all picks that leaves the local zone)
/// among the remote zones with healthy endpoints: by their residual
/// capacity (healthy share above caller share), or by healthy share when
/// none has any. `None` when no remote zone has a healthy endpoint.
fn spill_to_remote(
    zones: &[ZoneTally<'_>],
    local_zone: &str,
    totals: Totals,
    spill: f64,
) -> Option<Vec<(String, f64)>> {
    let remote_zones = || zones.iter().filter(|t| t.name != local_zone && t.healthy > 0);
    let residual = |t: &ZoneTally<'_>| (totals.healthy(t) - totals.callers(t)).max(0.0);
    let total_residual: f64 = remote_zones().map(residual).sum();
    let total_remote_healthy: f64 = remote_zones().map(|t| totals.healthy(t)).sum();
    if total_remote_healthy == 0.0 {
        return None;
    }
    let remote = remote_zones()
        .map(|t| {
            let share = if total_residual > 0.0 {
                residual(t) / total_residual
            } else {
                totals.healthy(t) / total_remote_healthy
            };
            (t.name.to_owned(), spill * share)
        })
        .filter(|(_, share)| *share > 0.0)
        .collect();
    Some(remote)
}

impl ZonePlan {
    pub fn compute<C: AsRef<str>, E: AsRef<str>>(
        local_zone: &str,
        callers: &[(C, u64)],
        endpoints: &[(E, bool)],
        config: &ZoneAwareConfig,
    ) -> ZonePlan {
        let total = endpoints.len() as u64;
        let healthy = endpoints.iter().filter(|(_, ok)| *ok).count() as u64;
        let panic_threshold = u64::from(config.panic_threshold_percent.min(100));
        if panic_threshold > 0 && (total == 0 || healthy * 100 < panic_threshold * total) {
            return Self::without_zones(ZoneRouting::Panic);
        }
        if !config.enabled || local_zone.is_empty() || healthy == 0 || healthy < u64::from(config.min_cluster_size) {
            return Self::without_zones(ZoneRouting::Unzoned);
        }

        let (zones, caller_total) = tally_zones(endpoints, callers);
        let totals = Totals {
            callers: caller_total,
            healthy,
        };
        let (local_callers, local_healthy) = zones
            .iter()
            .find(|t| t.name == local_zone)
            .map_or((0.0, 0.0), |t| (totals.callers(t), totals.healthy(t)));
        if local_callers == 0.0 {
            // Our own zone is missing from the caller set, so the shares describe
            // someone else's view of the mesh; Envoy refuses to route on them.
            return Self::without_zones(ZoneRouting::Unzoned);
        }
        if local_healthy > 0.0 && local_healthy >= local_callers {
            return Self::all_local();
        }
        let local_share = local_healthy / local_callers;
        match spill_to_remote(&zones, local_zone, totals, 1.0 - local_share) {
            Some(remote) => ZonePlan {
                routing: ZoneRouting::Spill,
                local_share,
                remote,
            },
            // Only the local zone can serve; staying there beats failing.
            None => Self::all_local(),
        }
    }

    fn all_local() -> ZonePlan {
        ZonePlan {
            routing: ZoneRouting::AllLocal,
            local_share: 1.0,
            remote: Vec::new(),
        }
    }

    fn without_zones(routing: ZoneRouting) -> ZonePlan {
        ZonePlan {
            routing,
            local_share: 0.0,
            remote: Vec::new(),
        }
    }

    pub fn routing(&self) -> ZoneRouting {
        self.routing
    }

    /// True only in panic, when unhealthy endpoints must be used too.
    pub fn ignores_health(&self) -> bool {
        self.routing == ZoneRouting::Panic
    }

    /// Fraction of picks that return [`ZoneChoice::Local`] (0 for `Panic` and
    /// `Unzoned`, whose picks are all [`ZoneChoice::Any`]).
    pub fn local_share(&self) -> f64 {
        self.local_share
    }

    /// Remote zones that receive traffic, with their fraction of all picks.
    pub fn remote_shares(&self) -> impl Iterator<Item = (&str, f64)> + '_ {
        self.remote.iter().map(|(name, share)| (name.as_str(), *share))
    }

    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> ZoneChoice<'_> {
        match self.routing {
            ZoneRouting::Panic | ZoneRouting::Unzoned => ZoneChoice::Any,
            ZoneRouting::AllLocal => ZoneChoice::Local,
            ZoneRouting::Spill => {
                let mut ticket = rng.random::<f64>();
                if ticket < self.local_share {
                    return ZoneChoice::Local;
                }
                ticket -= self.local_share;
                for (name, share) in &self.remote {
                    if ticket < *share {
                        return ZoneChoice::Remote(name);
                    }
                    ticket -= share;
                }
                // Rounding can leave a sliver past the last bucket.
                self.remote
                    .last()
                    .map_or(ZoneChoice::Local, |(name, _)| ZoneChoice::Remote(name))
            }
        }
    }
}

fn tally_for<'z, 'a>(zones: &'z mut Vec<ZoneTally<'a>>, name: &'a str) -> &'z mut ZoneTally<'a> {
    let pos = match zones.iter().position(|t| t.name == name) {
        Some(pos) => pos,
        None => {
            zones.push(ZoneTally {
                name,
                callers: 0,
                endpoints: 0,
                healthy: 0,
            });
            zones.len() - 1
        }
    };
    &mut zones[pos]
}

impl From<&ZoneAwareSection> for ZoneAwareConfig {
    fn from(c: &ZoneAwareSection) -> Self {
        ZoneAwareConfig {
            enabled: c.enabled,
            min_cluster_size: c.min_cluster_size,
            panic_threshold_percent: c.panic_threshold_percent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    impl ZonePlan {
        /// Fraction of picks that return `ZoneChoice::Remote(zone)`.
        fn remote_share(&self, zone: &str) -> f64 {
            self.remote
                .iter()
                .find(|(name, _)| name == zone)
                .map_or(0.0, |(_, share)| *share)
        }
    }

    const NO_CALLERS: &[(&str, u64)] = &[];

    /// `spec` is (zone, total endpoints, healthy endpoints).
    fn endpoints(spec: &[(&'static str, usize, usize)]) -> Vec<(&'static str, bool)> {
        spec.iter()
            .flat_map(|&(zone, total, ok)| (0..total).map(move |i| (zone, i < ok)))
            .collect()
    }

    fn config(min_cluster_size: u32) -> ZoneAwareConfig {
        ZoneAwareConfig {
            min_cluster_size,
            ..ZoneAwareConfig::default()
        }
    }

    fn approx(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn enough_local_capacity_stays_local() {
        // caller a 3/6 = 0.5, healthy a 2/4 = 0.5: 0.5 >= 0.5.
        let eps = endpoints(&[("a", 2, 2), ("b", 2, 2)]);
        let plan = ZonePlan::compute("a", &[("a".to_string(), 3), ("b".to_string(), 3)], &eps, &config(4));
        assert_eq!(plan.routing(), ZoneRouting::AllLocal);
        assert_eq!(plan.local_share(), 1.0);
        let mut rng = SmallRng::seed_from_u64(1);
        assert!((0..100).all(|_| plan.pick(&mut rng) == ZoneChoice::Local));
    }

    #[test]
    fn unhealthy_local_zone_spills_in_proportion() {
        // a: 1 of 3 healthy, b: 3 of 3 → healthy shares a 1/4, b 3/4; callers
        // 1/2 each. local = (1/4)/(1/2) = 1/2; b's residual 3/4 - 1/2 = 1/4 is
        // the only one, so b takes the other 1/2. Healthy 4 of 6 = 67 % > 50 %.
        let eps = endpoints(&[("a", 3, 1), ("b", 3, 3)]);
        let plan = ZonePlan::compute("a", &[("a", 5), ("b", 5)], &eps, &config(4));
        assert_eq!(plan.routing(), ZoneRouting::Spill);
        assert!(approx(plan.local_share(), 0.5));
        assert!(approx(plan.remote_share("b"), 0.5));
    }

    #[test]
    fn envoy_source_example_three_zones() {
        // load_balancer_impl.cc: local (caller) 40/40/20, upstream 25/50/25.
        // local = 25/40 = 0.625; residuals b 50-40 = 10, c 25-20 = 5, so the
        // remaining 0.375 splits 2:1 → b 0.25, c 0.125.
        let eps = endpoints(&[("a", 2, 2), ("b", 4, 4), ("c", 2, 2)]);
        let plan = ZonePlan::compute("a", &[("a", 4), ("b", 4), ("c", 2)], &eps, &config(6));
        assert!(approx(plan.local_share(), 0.625));
        assert!(approx(plan.remote_share("b"), 0.25));
        assert!(approx(plan.remote_share("c"), 0.125));
    }

    #[test]
    fn envoy_docs_example_callers_in_fewer_zones() {
        // Envoy issue #38758 as documented behaviour: callers in a and b,
        // endpoints evenly in a, b, c → each caller keeps 2/3 local and sends
        // 1/3 to c, the only zone with residual capacity.
        let eps = endpoints(&[("a", 2, 2), ("b", 2, 2), ("c", 2, 2)]);
        let plan = ZonePlan::compute("b", &[("a", 10), ("b", 10)], &eps, &config(6));
        assert!(approx(plan.local_share(), 2.0 / 3.0));
        assert!(approx(plan.remote_share("c"), 1.0 / 3.0));
        assert_eq!(plan.remote_share("a"), 0.0);
    }

    #[test]
    fn panic_below_threshold_ignores_health() {
        let eps = endpoints(&[("a", 5, 2), ("b", 5, 2)]);
        let plan = ZonePlan::compute("a", NO_CALLERS, &eps, &ZoneAwareConfig::default());
        assert_eq!(plan.routing(), ZoneRouting::Panic);
        assert!(plan.ignores_health());
        let mut rng = SmallRng::seed_from_u64(2);
        assert_eq!(plan.pick(&mut rng), ZoneChoice::Any);
        assert_eq!(plan.local_share(), 0.0);
        // Exactly at the threshold is not panic.
        let eps = endpoints(&[("a", 6, 3), ("b", 6, 3)]);
        let plan = ZonePlan::compute("a", NO_CALLERS, &eps, &ZoneAwareConfig::default());
        assert_eq!(plan.routing(), ZoneRouting::AllLocal);
        let empty: &[(&str, bool)] = &[];
        let plan = ZonePlan::compute("a", NO_CALLERS, empty, &ZoneAwareConfig::default());
        assert_eq!(plan.routing(), ZoneRouting::Panic);
        // A threshold of 0 turns panic mode off, for an empty set too.
        let off = ZoneAwareConfig {
            panic_threshold_percent: 0,
            ..ZoneAwareConfig::default()
        };
        assert_eq!(
            ZonePlan::compute("a", NO_CALLERS, empty, &off).routing(),
            ZoneRouting::Unzoned
        );
    }

    #[test]
    fn small_cluster_is_unzoned_but_keeps_health() {
        let eps = endpoints(&[("a", 3, 2), ("b", 2, 2)]);
        let plan = ZonePlan::compute("a", NO_CALLERS, &eps, &ZoneAwareConfig::default());
        assert_eq!(plan.routing(), ZoneRouting::Unzoned);
        assert!(!plan.ignores_health());
        let mut rng = SmallRng::seed_from_u64(3);
        assert_eq!(plan.pick(&mut rng), ZoneChoice::Any);
    }

    #[test]
    fn disabled_missing_zone_or_absent_callers_are_unzoned() {
        let eps = endpoints(&[("a", 4, 4), ("b", 4, 4)]);
        let off = ZoneAwareConfig {
            enabled: false,
            ..ZoneAwareConfig::default()
        };
        assert_eq!(
            ZonePlan::compute("a", NO_CALLERS, &eps, &off).routing(),
            ZoneRouting::Unzoned
        );
        let on = ZoneAwareConfig::default();
        assert_eq!(
            ZonePlan::compute("", NO_CALLERS, &eps, &on).routing(),
            ZoneRouting::Unzoned
        );
        let plan = ZonePlan::compute("a", &[("b", 3)], &eps, &on);
        assert_eq!(plan.routing(), ZoneRouting::Unzoned);
    }

    #[test]
    fn empty_callers_follow_configured_endpoints() {
        // All endpoints count for callers: a 4/8, b 4/8. Healthy: a 2/6, b 4/6.
        // local = (1/3)/(1/2) = 2/3; b's residual 2/3 - 1/2 > 0 takes the rest.
        let eps = endpoints(&[("a", 4, 2), ("b", 4, 4)]);
        let plan = ZonePlan::compute("a", NO_CALLERS, &eps, &ZoneAwareConfig::default());
        assert!(approx(plan.local_share(), 2.0 / 3.0));
        assert!(approx(plan.remote_share("b"), 1.0 / 3.0));
        let zero_counts = [("a", 0), ("b", 0)];
        let same = ZonePlan::compute("a", &zero_counts, &eps, &ZoneAwareConfig::default());
        assert_eq!(same, plan);

        let healthy = endpoints(&[("a", 4, 4), ("b", 4, 4)]);
        let plan = ZonePlan::compute("a", NO_CALLERS, &healthy, &ZoneAwareConfig::default());
        assert_eq!(plan.routing(), ZoneRouting::AllLocal);
    }

    #[test]
    fn local_zone_without_healthy_endpoints_goes_remote() {
        // Healthy: b 4/7, c 3/7; callers a/b/c 1/3 each. Residuals b 4/7 - 1/3
        // = 5/21, c 3/7 - 1/3 = 2/21 → b 5/7, c 2/7 of all traffic.
        let eps = endpoints(&[("a", 3, 0), ("b", 4, 4), ("c", 3, 3)]);
        let plan = ZonePlan::compute("a", &[("a", 1), ("b", 1), ("c", 1)], &eps, &config(6));
        assert_eq!(plan.routing(), ZoneRouting::Spill);
        assert_eq!(plan.local_share(), 0.0);
        assert!(approx(plan.remote_share("b"), 5.0 / 7.0));
        assert!(approx(plan.remote_share("c"), 2.0 / 7.0));
    }

    #[test]
    fn unknown_zone_counts_as_remote() {
        // Healthy a 1/8, b 3/8, unnamed 4/8; callers a 1/2, b 1/2 → local
        // (1/8)/(1/2) = 1/4; b has no residual (3/8 < 1/2), the unnamed zone
        // has 1/2 and so takes all of the remaining 3/4.
        let eps = endpoints(&[("a", 1, 1), ("b", 3, 3), ("", 4, 4)]);
        let plan = ZonePlan::compute("a", &[("a", 1), ("b", 1)], &eps, &config(6));
        assert!(approx(plan.local_share(), 0.25));
        assert!(approx(plan.remote_share(""), 0.75));
        assert_eq!(plan.remote_share("b"), 0.0);
        let mut rng = SmallRng::seed_from_u64(4);
        assert!((0..100).all(|_| plan.pick(&mut rng) != ZoneChoice::Remote("b")));
    }

    #[test]
    fn seeded_picks_match_the_plan() {
        let eps = endpoints(&[("a", 2, 2), ("b", 4, 4), ("c", 2, 2)]);
        let plan = ZonePlan::compute("a", &[("a", 4), ("b", 4), ("c", 2)], &eps, &config(6));
        let mut rng = SmallRng::seed_from_u64(7);
        let (mut local, mut b, mut c) = (0u32, 0u32, 0u32);
        for _ in 0..10_000 {
            match plan.pick(&mut rng) {
                ZoneChoice::Local => local += 1,
                ZoneChoice::Remote("b") => b += 1,
                ZoneChoice::Remote("c") => c += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        let share = |n: u32| f64::from(n) / 10_000.0;
        assert!((share(local) - plan.local_share()).abs() < 0.01, "local {local}");
        assert!((share(b) - plan.remote_share("b")).abs() < 0.01, "b {b}");
        assert!((share(c) - plan.remote_share("c")).abs() < 0.01, "c {c}");
        let total: f64 = plan.local_share() + plan.remote_shares().map(|(_, s)| s).sum::<f64>();
        assert!(approx(total, 1.0));
    }
}
