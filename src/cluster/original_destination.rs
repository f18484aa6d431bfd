//! Where a cluster of `type: original_destination` sends: not to an
//! endpoint it picks, but to each request's or connection's own original
//! destination (the address it had before the nat redirect), with the
//! cluster's `address_override` and `port_override` applied.
//!
//! Guarantees: an HTTP/2 request goes on as HTTP/2 when the cluster's
//! `protocol` is the default `http1` (the app chose the protocol its
//! destination speaks, and gRPC needs HTTP/2); HTTP requests to the same
//! destination share one connection pool, which is dropped once no request has used it for the cluster's
//! `idle_timeout` (its idle connections have closed by then), so the set of
//! pools follows the destinations in use rather than growing forever. No
//! endpoint health applies here: balancing, outlier detection, health checks
//! and zone plans choose among endpoints, and there is nothing to choose.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::time::{Duration, Instant};

use crate::config::health::ZoneAwareSection;
use crate::config::schema::{ClusterConfig, ClusterProtocol};
use crate::upstream::limit::ConnectionLimits;
use crate::upstream::{HttpClient, Target};

pub struct OriginalDestinations {
    address_override: Option<IpAddr>,
    port_override: Option<u16>,
    idle_timeout: Duration,
    pools: Mutex<Pools>,
    /// With `protocol: http1`: the client for requests that came as HTTP/2.
    http2: Option<HttpClient>,
}

struct Pools {
    /// Each destination's target and when a request last took it.
    by_address: HashMap<SocketAddr, (Arc<Target>, Instant)>,
    next_sweep: Instant,
}

impl OriginalDestinations {
    /// `limits`: the circuit breaker's connection limits, shared with the
    /// cluster's own client.
    pub fn new(config: &ClusterConfig, limits: Option<ConnectionLimits>) -> Self {
        let http2 = (config.protocol == ClusterProtocol::Http1)
            .then(|| {
                let config = ClusterConfig {
                    protocol: ClusterProtocol::Http2,
                    ..config.clone()
                };
                HttpClient::new(&config, limits)
                    .inspect_err(
                        |e| tracing::error!(cluster = %config.name, error = %e, "cannot build the HTTP/2 client"),
                    )
                    .ok()
            })
            .flatten();
        Self {
            http2,
            address_override: config.address_override,
            // Validation keeps the port within 1..=65535.
            port_override: config.port_override.and_then(|p| u16::try_from(p).ok()),
            idle_timeout: config.idle_timeout,
            pools: Mutex::new(Pools {
                by_address: HashMap::new(),
                next_sweep: Instant::now() + config.idle_timeout,
            }),
        }
    }

    /// The client for a request of `version` when the cluster's own client
    /// speaks HTTP/1.1 (see the module doc); `None`: the cluster's own.
    pub fn client_for(&self, version: http::Version) -> Option<&HttpClient> {
        self.http2.as_ref().filter(|_| version == http::Version::HTTP_2)
    }

    /// Where a connection whose original destination is `original` goes.
    pub fn address(&self, original: SocketAddr) -> SocketAddr {
        SocketAddr::new(
            self.address_override.unwrap_or(original.ip()),
            self.port_override.unwrap_or(original.port()),
        )
    }

    /// The pooled HTTP target for a request whose original destination is `original`.
    pub fn target(&self, original: SocketAddr) -> Arc<Target> {
        let address = self.address(original);
        let now = Instant::now();
        let mut pools = self.pools.lock();
        if now >= pools.next_sweep {
            let idle_timeout = self.idle_timeout;
            pools.by_address.retain(|_, (target, used)| {
                Arc::strong_count(target) > 1 || now.saturating_duration_since(*used) < idle_timeout
            });
            pools.next_sweep = now + idle_timeout;
        }
        let (target, used) = pools
            .by_address
            .entry(address)
            .or_insert_with(|| (Arc::new(Target::new(address, self.idle_timeout)), now));
        *used = now;
        target.clone()
    }
}

/// The config an original-destination cluster's endpoint health is built
/// from: no zone plan and no panic mode, which its empty endpoint set would
/// otherwise be in (and report, in `weft_cluster_panic`, forever).
pub fn health_config(config: &ClusterConfig) -> ClusterConfig {
    ClusterConfig {
        zone_aware: ZoneAwareSection {
            enabled: false,
            panic_threshold_percent: 0,
            ..config.zone_aware.clone()
        },
        ..config.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl OriginalDestinations {
        fn pools(&self) -> usize {
            self.pools.lock().by_address.len()
        }
    }

    fn cluster(extra: &str) -> OriginalDestinations {
        let text = format!("{{ name: c, type: original_destination, idle_timeout: 10s{extra} }}");
        OriginalDestinations::new(&serde_yaml_ng::from_str(&text).unwrap(), None)
    }

    #[test]
    fn overrides_replace_the_address_or_the_port() {
        let original: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        assert_eq!(cluster("").address(original), original);
        let local = cluster(", address_override: 127.0.0.1");
        assert_eq!(local.address(original), "127.0.0.1:8080".parse().unwrap());
        let both = cluster(", address_override: '::1', port_override: 9000");
        assert_eq!(both.address(original), "[::1]:9000".parse().unwrap());
    }

    #[test]
    fn an_original_destination_cluster_is_in_no_panic_mode() {
        let metrics = crate::telemetry::metrics::Metrics::new().unwrap();
        let config = serde_yaml_ng::from_str("{ name: passthrough, type: original_destination }").unwrap();
        let c = crate::cluster::Cluster::new(&config, &Default::default(), &metrics, None);
        assert_eq!(c.status().zone_routing.routing, "unzoned");
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text.contains("weft_cluster_panic{cluster=\"passthrough\"} 0"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn one_pool_per_destination_dropped_once_unused_for_the_idle_timeout() {
        let c = cluster("");
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let first = c.target(a);
        assert!(
            Arc::ptr_eq(&first, &c.target(a)),
            "the same destination shares its pool"
        );
        drop(c.target(b));
        assert_eq!(c.pools(), 2);
        tokio::time::advance(Duration::from_secs(11)).await;
        // Sweeps on the next use: b went unused; a is still held by a request.
        drop(c.target("10.0.0.3:80".parse().unwrap()));
        assert_eq!(c.pools(), 2);
        assert!(Arc::ptr_eq(&first, &c.target(a)));
        drop(first);
        tokio::time::advance(Duration::from_secs(11)).await;
        drop(c.target(a));
        assert_eq!(c.pools(), 1, "only the destination just used is left");
    }
}
