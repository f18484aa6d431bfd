//! The `udp:` section of a `protocol: udp` listener (how long an idle
//! client session lives, how many sessions may exist, the largest datagram
//! forwarded) and the checks that tie udp listeners to `protocol: udp`
//! clusters.
//!
//! Guarantees: a missing key means the documented default; every problem is
//! (key path, message), like the rest of validation.

use serde::{Deserialize, Serialize};
use tokio::time::Duration;

use super::range::{count, within, HOUR, MILLION, MS};
use super::schema::{duration, ClusterConfig, ClusterProtocol, ListenerConfig, ListenerProtocol};

/// The largest UDP payload over IPv6 (65535 minus the 8-byte UDP header);
/// over IPv4 it is 65507, the default.
pub const MAX_DATAGRAM_BYTES: usize = 65_527;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UdpListenerConfig {
    /// A session ends after this long without a datagram in either direction.
    #[serde(default = "default_idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
    /// Sessions at once; datagrams from further new clients are dropped.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Larger datagrams (either direction) are dropped, never truncated.
    #[serde(default = "default_max_datagram_bytes")]
    pub max_datagram_bytes: usize,
}

impl Default for UdpListenerConfig {
    fn default() -> Self {
        Self {
            idle_timeout: default_idle_timeout(),
            max_sessions: default_max_sessions(),
            max_datagram_bytes: default_max_datagram_bytes(),
        }
    }
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_sessions() -> usize {
    10_000
}
fn default_max_datagram_bytes() -> usize {
    65_507
}

/// The ranges of a listener's `udp:` keys, and that only udp listeners have one.
pub fn validate_listener(key: &str, listener: &ListenerConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let Some(udp) = &listener.udp else {
        return problems;
    };
    if listener.protocol != ListenerProtocol::Udp {
        problems.push((format!("{key}.udp"), "udp settings are for udp listeners".into()));
        return problems;
    }
    let key = format!("{key}.udp");
    within(&mut problems, format!("{key}.idle_timeout"), udp.idle_timeout, MS, HOUR);
    count(
        &mut problems,
        format!("{key}.max_sessions"),
        udp.max_sessions,
        1,
        MILLION,
    );
    let most = MAX_DATAGRAM_BYTES as u64;
    count(
        &mut problems,
        format!("{key}.max_datagram_bytes"),
        udp.max_datagram_bytes,
        1,
        most,
    );
    problems
}

/// What a udp cluster cannot have: TLS, HTTP health checks (as for tcp
/// clusters) and the HTTP overload protections.
pub fn validate_cluster(key: &str, cluster: &ClusterConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if cluster.protocol != ClusterProtocol::Udp {
        return problems;
    }
    let mut problem = |sub: &str, message: &str| problems.push((format!("{key}.{sub}"), message.to_string()));
    if cluster.tls.is_some() {
        problem("tls", "tls is for http1, http2 and http3 clusters");
    }
    if cluster.health_check.is_some() {
        problem(
            "health_check",
            "health checks are HTTP GETs; a udp cluster cannot have one (outlier detection applies)",
        );
    }
    if cluster.adaptive_concurrency.is_some() || cluster.retry_budget.is_some() || cluster.circuit_breaker.is_some() {
        problem(
            "protocol",
            "adaptive_concurrency, retry_budget and circuit_breaker apply to HTTP clusters only",
        );
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::Config;

    fn problems(text: &str) -> Vec<(String, String)> {
        let config: Config = serde_yaml_ng::from_str(text).unwrap();
        let mut found = validate_listener("listeners[0]", &config.listeners[0]);
        found.extend(validate_cluster("clusters[0]", &config.clusters[0]));
        found
    }

    /// What `weft check` prints for a config, one line per error.
    fn check(text: &str) -> Vec<String> {
        let loaded = crate::config::parse(std::path::Path::new("weft.yaml"), text).unwrap();
        let found = crate::config::problems(&loaded.config);
        loaded.errors(found).0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn udp_listeners_need_a_udp_cluster_and_no_routes() {
        let errors = check(
            "listeners:
  - name: dns
    address: 127.0.0.1:5353
    protocol: udp
    cluster: web
  - name: statsd
    address: 127.0.0.1:5353
    protocol: udp
    cluster: metrics
    routes: [ { name: r, cluster: web } ]
  - { name: dns-tcp, address: 127.0.0.1:5353, protocol: tcp, cluster: db }
  - { name: lost, address: 127.0.0.1:5354, protocol: udp, cluster: metric }
clusters:
  - name: web
    endpoints: [ { address: 127.0.0.1:9001 } ]
  - name: metrics
    protocol: udp
    tls: {}
    endpoints: [ { address: 127.0.0.1:8125 } ]
  - { name: db, protocol: tcp, endpoints: [ { address: 127.0.0.1:5432 } ] }
",
        );
        assert_eq!(
            errors,
            [
                r#"weft.yaml:5: listeners[0].cluster: cluster "web" must have protocol: udp to serve a udp listener"#,
                "weft.yaml:7: listeners[1].address: address 127.0.0.1:5353 is already in use by another listener or admin",
                "weft.yaml:10: listeners[1].routes: a udp listener has no routes; use cluster",
                r#"weft.yaml:12: listeners[3].cluster: no cluster named "metric" (did you mean "metrics"?)"#,
                "weft.yaml:18: clusters[1].tls: tls is for http1, http2 and http3 clusters",
            ]
        );
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let udp = UdpListenerConfig::default();
        assert_eq!(udp.idle_timeout, Duration::from_secs(30));
        assert_eq!((udp.max_sessions, udp.max_datagram_bytes), (10_000, 65_507));
        let parsed: UdpListenerConfig = serde_yaml_ng::from_str("{ max_sessions: 5 }").unwrap();
        assert_eq!(parsed.max_sessions, 5);
        assert_eq!(parsed.idle_timeout, Duration::from_secs(30));
    }

    #[test]
    fn ranges_and_misplaced_sections_are_named_by_key() {
        let found = problems(
            "listeners:
  - name: dns
    address: 127.0.0.1:5353
    protocol: udp
    cluster: dns
    udp: { idle_timeout: 0s, max_sessions: 0, max_datagram_bytes: 70000 }
clusters:
  - { name: dns, protocol: udp, health_check: { path: /h }, circuit_breaker: {} }
",
        );
        let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "listeners[0].udp.idle_timeout",
                "listeners[0].udp.max_sessions",
                "listeners[0].udp.max_datagram_bytes",
                "clusters[0].health_check",
                "clusters[0].protocol",
            ]
        );
        let misplaced = problems(
            "listeners:
  - { name: web, address: 127.0.0.1:80, udp: { max_sessions: 5 } }
clusters:
  - { name: web }
",
        );
        assert_eq!(misplaced[0].0, "listeners[0].udp");
    }
}
