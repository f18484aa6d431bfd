//! The keys of transparent capture: listeners that read each connection's
//! original destination (its address before the nat redirect), clusters of
//! `type: original_destination` that connect to it, and route matches on it;
//! with their checks, each as (key path, message).
//!
//! The rules: only `tcp` and `http` listeners read original destinations
//! (`http3` is UDP, which the capture rules leave alone); an
//! `original_destination` cluster has no endpoints and so no endpoint health
//! (outlier detection, health checks), and only listeners that read original
//! destinations may send to it; `opaque_ports` apply to `http` listeners that
//! read original destinations (a `tcp` listener forwards every port opaquely).

use serde::{Deserialize, Serialize};

use super::range::{count, within, HOUR, MS};
use super::schema::{ClusterConfig, ListenerConfig, ListenerProtocol};

/// A cluster's `type`; absent means endpoints (`endpoints`, or discovered).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClusterType {
    /// No endpoints: each connection or request goes to its original
    /// destination (with `address_override` and `port_override` applied).
    OriginalDestination,
}

/// `match.original_destination`: the connection's original destination is
/// one of the named cluster's endpoints (its current set).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OriginalDestinationMatch {
    pub endpoint_of: String,
}

/// The largest TCP port.
const MAX_PORT: u64 = 65_535;

impl ClusterConfig {
    pub fn is_original_destination(&self) -> bool {
        self.kind == Some(ClusterType::OriginalDestination)
    }
}

/// Problems of a cluster's `type` and the keys that go with it.
pub fn validate_cluster(key: &str, c: &ClusterConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if let Some(port) = c.port_override {
        count(&mut problems, format!("{key}.port_override"), port, 1, MAX_PORT);
    }
    if !c.is_original_destination() {
        for (set, name) in [
            (c.address_override.is_some(), "address_override"),
            (c.port_override.is_some(), "port_override"),
        ] {
            if set {
                problems.push((
                    format!("{key}.{name}"),
                    "only clusters of type original_destination take overrides".into(),
                ));
            }
        }
        return problems;
    }
    for (set, name) in [
        (!c.endpoints.is_empty(), "endpoints"),
        (c.discovery.is_some(), "discovery"),
    ] {
        if set {
            problems.push((
                format!("{key}.{name}"),
                format!("a cluster of type original_destination has no {name}: it connects to each connection's original destination"),
            ));
        }
    }
    let health = [
        (c.outlier_detection.is_some(), "outlier_detection"),
        (c.health_check.is_some(), "health_check"),
    ];
    for (_, name) in health.iter().filter(|(set, _)| *set) {
        problems.push((
            format!("{key}.{name}"),
            format!("a cluster of type original_destination has no endpoints, so no {name}"),
        ));
    }
    problems
}

/// Problems of a listener's capture keys (ranges included).
pub fn validate_listener(key: &str, l: &ListenerConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    within(
        &mut problems,
        format!("{key}.protocol_detection_timeout"),
        l.protocol_detection_timeout,
        MS,
        HOUR,
    );
    for (i, port) in l.opaque_ports.iter().enumerate() {
        count(&mut problems, format!("{key}.opaque_ports[{i}]"), *port, 1, MAX_PORT);
    }
    if l.original_destination && !matches!(l.protocol, ListenerProtocol::Tcp | ListenerProtocol::Http) {
        problems.push((
            format!("{key}.original_destination"),
            "original_destination is for tcp and http listeners (capture redirects TCP only)".into(),
        ));
    }
    let detects = l.original_destination && l.protocol == ListenerProtocol::Http;
    if !l.opaque_ports.is_empty() && !detects {
        problems.push((
            format!("{key}.opaque_ports"),
            "opaque_ports apply to http listeners with original_destination: true".into(),
        ));
    }
    problems
}

/// Why `listener` may not send to `cluster`, if it may not: an
/// original-destination cluster needs the listener to read original destinations.
pub fn reachable(listener: &ListenerConfig, cluster: &ClusterConfig) -> Option<String> {
    (cluster.is_original_destination() && !listener.original_destination).then(|| {
        format!(
            "cluster {:?} is of type original_destination; its listener needs original_destination: true",
            cluster.name
        )
    })
}
