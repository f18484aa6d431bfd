//! Schema and semantic checks of a cluster's endpoint-health sections:
//! `outlier_detection`, `health_check` and `zone_aware`. Kept apart
//! from `schema.rs` so each section is one struct with serde defaults, and a
//! missing key always means the documented default (see docs/config.md, "Endpoint health").
//!
//! Guarantees: every struct denies unknown keys; [`validate_cluster`] returns
//! (key path, message) pairs naming the offending key, like `validate.rs`.
//!
//! Defaults follow Envoy's (`config.cluster.v3.OutlierDetection`,
//! `config.core.v3.HealthCheck`, `common_lb_config.zone_aware_lb_config`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::time::Duration;

use super::range::{count, within, HOUR, MILLION, MS};
use super::schema::{duration, ClusterConfig, ClusterProtocol};

/// `outlier_detection:` on a cluster. Absent means no passive ejection, as in Envoy.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetectionConfig {
    /// 5xx responses (and gateway failures) in a row that eject; 0 disables.
    #[serde(default = "default_consecutive")]
    pub consecutive_5xx: u32,
    /// 502/503/504, connect failures and resets in a row that eject; 0 disables.
    #[serde(default = "default_consecutive")]
    pub consecutive_gateway_failure: u32,
    #[serde(default)]
    pub success_rate: Option<SuccessRateSection>,
    #[serde(default = "default_outlier_interval", with = "duration")]
    pub interval: Duration,
    #[serde(default = "default_base_ejection_time", with = "duration")]
    pub base_ejection_time: Duration,
    #[serde(default = "default_max_ejection_time", with = "duration")]
    pub max_ejection_time: Duration,
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetectionConfig {
    fn default() -> Self {
        Self {
            consecutive_5xx: default_consecutive(),
            consecutive_gateway_failure: default_consecutive(),
            success_rate: None,
            interval: default_outlier_interval(),
            base_ejection_time: default_base_ejection_time(),
            max_ejection_time: default_max_ejection_time(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

/// `outlier_detection.success_rate:`; evaluated once per `interval`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SuccessRateSection {
    #[serde(default = "default_minimum_hosts")]
    pub minimum_hosts: u32,
    #[serde(default = "default_request_volume")]
    pub request_volume: u32,
    #[serde(default = "default_stdev_factor")]
    pub stdev_factor: f64,
}

/// `health_check:` on a cluster: active HTTP GET probes. Absent means none.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub path: String,
    #[serde(default = "default_health_interval", with = "duration")]
    pub interval: Duration,
    #[serde(default = "default_health_timeout", with = "duration")]
    pub timeout: Duration,
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Inclusive ranges written `"200-399"` or a single code `204`.
    #[serde(default = "default_expected_statuses")]
    pub expected_statuses: Vec<StatusRange>,
}

impl HealthCheckConfig {
    pub fn expects(&self, status: u16) -> bool {
        self.expected_statuses.iter().any(|r| r.contains(status))
    }
}

/// An inclusive range of HTTP status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub start: u16,
    pub end: u16,
}

impl StatusRange {
    pub fn contains(&self, status: u16) -> bool {
        (self.start..=self.end).contains(&status)
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl Serialize for StatusRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // YAML gives a bare `204` as a number and `200-399` as a string.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Code(u16),
            Text(String),
        }
        let invalid =
            |text: &str| serde::de::Error::custom(format!("invalid status range \"{text}\" (use \"200-399\" or 204)"));
        match Written::deserialize(d)? {
            Written::Code(code) => Ok(Self { start: code, end: code }),
            Written::Text(text) => {
                let (start, end) = text.split_once('-').unwrap_or((&text, &text));
                match (start.trim().parse(), end.trim().parse()) {
                    (Ok(start), Ok(end)) => Ok(Self { start, end }),
                    _ => Err(invalid(&text)),
                }
            }
        }
    }
}

/// `zone_aware:` on a cluster; only acts when `node.zone` is set.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ZoneAwareSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_min_cluster_size")]
    pub min_cluster_size: u32,
    /// Below this percentage of usable endpoints, health is ignored (panic mode);
    /// applies with or without `node.zone`. 0 disables panic mode.
    #[serde(default = "default_panic_threshold_percent")]
    pub panic_threshold_percent: u32,
}

impl Default for ZoneAwareSection {
    fn default() -> Self {
        Self {
            enabled: true,
            min_cluster_size: default_min_cluster_size(),
            panic_threshold_percent: default_panic_threshold_percent(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_consecutive() -> u32 {
    5
}
fn default_outlier_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_base_ejection_time() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection_time() -> Duration {
    Duration::from_secs(300)
}
fn default_max_ejection_percent() -> u32 {
    10
}
fn default_minimum_hosts() -> u32 {
    5
}
fn default_request_volume() -> u32 {
    100
}
fn default_stdev_factor() -> f64 {
    1.9
}
fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_expected_statuses() -> Vec<StatusRange> {
    vec![StatusRange { start: 200, end: 399 }]
}
fn default_min_cluster_size() -> u32 {
    6
}
fn default_panic_threshold_percent() -> u32 {
    50
}

/// Semantic checks of the health sections of cluster `key` (`clusters[i]`).
pub fn validate_cluster(key: &str, cluster: &ClusterConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if let Some(o) = &cluster.outlier_detection {
        problems.extend(outlier_problems(o));
    }
    if let Some(h) = &cluster.health_check {
        if cluster.protocol == ClusterProtocol::Tcp {
            problems.push((
                "health_check".into(),
                "health checks are HTTP GETs; a tcp cluster cannot have one".into(),
            ));
        }
        problems.extend(health_check_problems(h));
    }
    let zone = &cluster.zone_aware;
    count(
        &mut problems,
        "zone_aware.min_cluster_size".into(),
        zone.min_cluster_size,
        0,
        MILLION,
    );
    count(
        &mut problems,
        "zone_aware.panic_threshold_percent".into(),
        zone.panic_threshold_percent,
        0,
        100,
    );
    problems.into_iter().map(|(k, m)| (format!("{key}.{k}"), m)).collect()
}

/// Problems of an `outlier_detection` section, keyed below the cluster.
fn outlier_problems(o: &OutlierDetectionConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let p = &mut problems;
    count(
        p,
        "outlier_detection.consecutive_5xx".into(),
        o.consecutive_5xx,
        0,
        MILLION,
    );
    let gateway = o.consecutive_gateway_failure;
    count(
        p,
        "outlier_detection.consecutive_gateway_failure".into(),
        gateway,
        0,
        MILLION,
    );
    within(p, "outlier_detection.interval".into(), o.interval, MS, HOUR);
    within(
        p,
        "outlier_detection.base_ejection_time".into(),
        o.base_ejection_time,
        MS,
        HOUR,
    );
    within(
        p,
        "outlier_detection.max_ejection_time".into(),
        o.max_ejection_time,
        MS,
        HOUR,
    );
    if o.max_ejection_time < o.base_ejection_time {
        p.push((
            "outlier_detection.max_ejection_time".into(),
            "must be at least base_ejection_time".into(),
        ));
    }
    count(
        p,
        "outlier_detection.max_ejection_percent".into(),
        o.max_ejection_percent,
        0,
        100,
    );
    if let Some(sr) = &o.success_rate {
        count(
            p,
            "outlier_detection.success_rate.minimum_hosts".into(),
            sr.minimum_hosts,
            1,
            MILLION,
        );
        count(
            p,
            "outlier_detection.success_rate.request_volume".into(),
            sr.request_volume,
            0,
            MILLION,
        );
        within(
            p,
            "outlier_detection.success_rate.stdev_factor".into(),
            sr.stdev_factor,
            0.001,
            1000.0,
        );
    }
    problems
}

/// Problems of a `health_check` section, keyed below the cluster.
fn health_check_problems(h: &HealthCheckConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let p = &mut problems;
    if !h.path.starts_with('/') {
        p.push(("health_check.path".into(), "must start with /".into()));
    }
    within(p, "health_check.interval".into(), h.interval, MS, HOUR);
    within(p, "health_check.timeout".into(), h.timeout, MS, HOUR);
    count(
        p,
        "health_check.unhealthy_threshold".into(),
        h.unhealthy_threshold,
        1,
        MILLION,
    );
    count(
        p,
        "health_check.healthy_threshold".into(),
        h.healthy_threshold,
        1,
        MILLION,
    );
    if h.expected_statuses.is_empty() {
        p.push((
            "health_check.expected_statuses".into(),
            "must list at least one status range".into(),
        ));
    }
    if h.expected_statuses
        .iter()
        .any(|r| r.start < 100 || r.end > 599 || r.start > r.end)
    {
        p.push((
            "health_check.expected_statuses".into(),
            "each range must lie within 100-599 with start <= end".into(),
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::Config;

    fn cluster(extra: &str) -> Result<ClusterConfig, String> {
        let text = format!("clusters:\n  - name: c\n    endpoints: [ {{ address: 127.0.0.1:1 }} ]\n{extra}");
        let config: Config = serde_yaml_ng::from_str(&text).map_err(|e| e.to_string())?;
        Ok(config.clusters[0].clone())
    }

    #[test]
    fn sections_default_when_absent_or_empty() {
        let c = cluster("").unwrap();
        assert_eq!((c.outlier_detection, c.health_check), (None, None));
        assert_eq!(c.zone_aware, ZoneAwareSection::default());
        let c = cluster("    outlier_detection: {}\n    health_check: { path: /healthz }\n").unwrap();
        assert_eq!(c.outlier_detection, Some(OutlierDetectionConfig::default()));
        let h = c.health_check.unwrap();
        assert_eq!(
            (h.interval, h.timeout),
            (Duration::from_secs(5), Duration::from_secs(1))
        );
        assert!(h.expects(200) && h.expects(399) && !h.expects(404) && !h.expects(199));
    }

    #[test]
    fn status_ranges_parse_both_shapes_and_round_trip() {
        let c = cluster("    health_check: { path: /h, expected_statuses: [ \"200-299\", 404 ] }\n").unwrap();
        let h = c.health_check.unwrap();
        assert!(h.expects(250) && h.expects(404) && !h.expects(300));
        let json = serde_json::to_string(&h.expected_statuses).unwrap();
        assert_eq!(json, r#"["200-299","404"]"#);
        let err = cluster("    health_check: { path: /h, expected_statuses: [ \"2xx\" ] }\n").unwrap_err();
        assert!(err.contains("invalid status range \"2xx\""), "{err}");
    }

    #[test]
    fn problems_name_their_keys() {
        let c = cluster(
            "    protocol: tcp
    outlier_detection: { interval: 0s, base_ejection_time: 10s, max_ejection_time: 5s, max_ejection_percent: 101 }
    health_check: { path: health, unhealthy_threshold: 0, expected_statuses: [ \"400-300\" ] }
    zone_aware: { panic_threshold_percent: 150 }
",
        )
        .unwrap();
        let keys: Vec<String> = validate_cluster("clusters[0]", &c)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            [
                "clusters[0].outlier_detection.interval",
                "clusters[0].outlier_detection.max_ejection_time",
                "clusters[0].outlier_detection.max_ejection_percent",
                "clusters[0].health_check",
                "clusters[0].health_check.path",
                "clusters[0].health_check.unhealthy_threshold",
                "clusters[0].health_check.expected_statuses",
                "clusters[0].zone_aware.panic_threshold_percent",
            ]
        );
    }
}
