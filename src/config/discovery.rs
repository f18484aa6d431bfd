//! Schema and checks of service discovery: a cluster's `discovery` block
//! (`dns` or `file`), the top-level `resolver` section, and the format of an
//! endpoints file (`endpoints: [ { address, zone, weight } ]`, YAML or JSON).
//!
//! Guarantees: every struct denies unknown keys; [`validate_cluster`] returns
//! (key path, message) pairs like `validate.rs`; [`parse_endpoints_file`]
//! names the endpoints file, line and key of what is wrong in it, and
//! refuses what a static cluster's `endpoints` would refuse (a weight of 0).
//! A `kubernetes` block is accepted by the schema but refused by
//! [`validate_cluster`] as not supported yet.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::time::Duration;

use super::lines::LineIndex;
use super::range::{count, within, HOUR, MS};
use super::schema::{duration, ClusterConfig, EndpointConfig};
use super::{keyed_errors, yaml_error, ConfigErrors};

/// `discovery:` on a cluster: where its endpoints come from, instead of `endpoints`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsDiscovery>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileDiscovery>,
    /// Reserved for EndpointSlice discovery; refused by `weft check` for now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<serde_yaml_ng::Value>,
}

impl DiscoveryConfig {
    /// The kind's name, for `/clusters` and logs.
    pub fn kind(&self) -> &'static str {
        match (&self.dns, &self.file) {
            (Some(_), _) => "dns",
            (None, Some(_)) => "file",
            (None, None) => "kubernetes",
        }
    }
}

/// `discovery.dns`: every A and AAAA record of `name` is an endpoint on `port`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsDiscovery {
    pub name: String,
    pub port: u16,
    /// Re-resolve at least this often.
    #[serde(default = "default_refresh", with = "duration")]
    pub refresh: Duration,
    /// Re-resolve at most this often, however short the records' TTL.
    #[serde(default = "default_min_refresh", with = "duration")]
    pub min_refresh: Duration,
    /// The zone of every endpoint found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// `discovery.file`: a watched endpoints file, relative to the config file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileDiscovery {
    pub path: PathBuf,
}

/// Top-level `resolver:`: DNS servers to ask instead of `/etc/resolv.conf`'s.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResolverConfig {
    /// Each `ip:port`.
    #[serde(default)]
    pub servers: Vec<SocketAddr>,
}

/// The document an endpoints file holds.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct EndpointsFile {
    endpoints: Vec<EndpointConfig>,
}

fn default_refresh() -> Duration {
    Duration::from_secs(5)
}
fn default_min_refresh() -> Duration {
    Duration::from_secs(1)
}

/// Semantic checks of cluster `key`'s endpoint source (`clusters[i]`): exactly
/// one of `endpoints` and `discovery` (neither for an original-destination
/// cluster), and a well-formed discovery block.
pub fn validate_cluster(key: &str, cluster: &ClusterConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut problem = |k: &str, message: String| problems.push((format!("{key}.{k}"), message));
    let Some(discovery) = &cluster.discovery else {
        // An original-destination cluster has neither (see `original_destination`).
        if cluster.endpoints.is_empty() && !cluster.is_original_destination() {
            problem(
                "endpoints",
                "a cluster needs endpoints, a discovery block or type: original_destination".into(),
            );
        }
        return problems;
    };
    if !cluster.endpoints.is_empty() {
        problem("discovery", "a cluster takes endpoints or discovery, not both".into());
    }
    let kinds = [
        discovery.dns.is_some(),
        discovery.file.is_some(),
        discovery.kubernetes.is_some(),
    ];
    match kinds.iter().filter(|k| **k).count() {
        0 => problem("discovery", "needs one of dns or file".into()),
        1 => {}
        _ => problem("discovery", "takes exactly one of dns or file".into()),
    }
    if discovery.kubernetes.is_some() {
        problem(
            "discovery.kubernetes",
            "kubernetes discovery is not supported yet; use dns or file".into(),
        );
    }
    if let Some(dns) = &discovery.dns {
        if let Err(e) = check_dns_name(&dns.name) {
            problem("discovery.dns.name", e);
        }
        if dns.refresh < dns.min_refresh {
            problem("discovery.dns.refresh", "must be at least min_refresh".into());
        }
        let dns_key = |k: &str| format!("{key}.discovery.dns.{k}");
        count(&mut problems, dns_key("port"), dns.port, 1, 65_535);
        within(&mut problems, dns_key("refresh"), dns.refresh, MS, HOUR);
        within(&mut problems, dns_key("min_refresh"), dns.min_refresh, MS, HOUR);
    }
    problems
}

/// Checks of the top-level `resolver` section.
pub fn validate_resolver(resolver: Option<&ResolverConfig>) -> Vec<(String, String)> {
    match resolver {
        Some(r) if r.servers.is_empty() => vec![(
            "resolver.servers".into(),
            "needs at least one ip:port (or leave resolver out to use /etc/resolv.conf)".into(),
        )],
        _ => Vec::new(),
    }
}

/// Checks `name` is a DNS name weft can ask for: dot-separated labels of
/// 1 to 63 letters, digits, `-` or `_`, not starting or ending with `-`,
/// 253 characters at most (a final `.` marks it fully qualified).
pub fn check_dns_name(name: &str) -> Result<(), String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() {
        return Err("must not be empty".into());
    }
    if bare.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{name:?} is an IP address; use endpoints for fixed addresses"));
    }
    for label in bare.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{name:?}: each label must be 1 to 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("{name:?}: {c:?} is not allowed in a DNS name"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("{name:?}: a label must not start or end with '-'"));
        }
    }
    Ok(())
}

/// Parses the text of endpoints file `path`; errors name that file, line and key.
pub fn parse_endpoints_file(path: &Path, text: &str) -> Result<Vec<EndpointConfig>, ConfigErrors> {
    // The line index is a second parse: built only to place an error.
    let file: EndpointsFile =
        serde_yaml_ng::from_str(text).map_err(|e| ConfigErrors(vec![yaml_error(path, &e, &LineIndex::build(text))]))?;
    let problems: Vec<(String, String)> = file
        .endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| e.weight == 0)
        .map(|(i, _)| (format!("endpoints[{i}].weight"), "must be at least 1".to_string()))
        .collect();
    if problems.is_empty() {
        Ok(file.endpoints)
    } else {
        Err(keyed_errors(path, &LineIndex::build(text), problems))
    }
}

/// Reads and parses endpoints file `path` (blocking: for `weft check` and
/// the config pass, not for a worker thread).
pub fn read_endpoints_file(path: &Path) -> Result<Vec<EndpointConfig>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    parse_endpoints_file(path, &text).map_err(|e| e.to_string())
}

/// The endpoints files named by `config`'s clusters, as (key path, problem)
/// for each that is missing or does not parse.
pub fn file_problems(config: &super::Config) -> Vec<(String, String)> {
    config
        .clusters
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let file = c.discovery.as_ref()?.file.as_ref()?;
            let problem = read_endpoints_file(&file.path).err()?;
            Some((format!("clusters[{i}].discovery.file.path"), problem))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_are_checked_label_by_label() {
        for good in [
            "web",
            "web.default.svc.cluster.local",
            "web.default.svc.cluster.local.",
            "_http._tcp.x",
            "a-b.c",
        ] {
            assert_eq!(check_dns_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "web..local",
            "-web.local",
            "web-.local",
            "we b.local",
            "10.0.0.1",
            "a/b",
        ] {
            assert!(check_dns_name(bad).is_err(), "{bad}");
        }
        assert!(check_dns_name(&format!("{}.local", "a".repeat(64))).is_err());
        assert!(check_dns_name(&["abc"; 70].join(".")).is_err());
    }

    #[test]
    fn endpoints_file_errors_name_file_line_and_key() {
        let path = Path::new("eps.yaml");
        let good = "endpoints:\n  - { address: 127.0.0.1:1, zone: a }\n  - { address: 127.0.0.1:2, weight: 3 }\n";
        let endpoints = parse_endpoints_file(path, good).unwrap();
        assert_eq!(endpoints.len(), 2);
        assert_eq!((endpoints[0].zone.as_deref(), endpoints[1].weight), (Some("a"), 3));
        let json = r#"{"endpoints": [{"address": "127.0.0.1:9"}]}"#;
        assert_eq!(parse_endpoints_file(path, json).unwrap()[0].weight, 1);

        let bad_address = "endpoints:\n  - { address: 127.0.0.1:1 }\n  - { address: nowhere }\n";
        let e = parse_endpoints_file(path, bad_address).unwrap_err().to_string();
        assert!(e.starts_with("eps.yaml:3: endpoints[1].address: "), "{e}");
        let zero = "endpoints:\n  - { address: 127.0.0.1:1 }\n  - address: 127.0.0.1:2\n    weight: 0\n";
        let e = parse_endpoints_file(path, zero).unwrap_err().to_string();
        assert_eq!(e, "eps.yaml:4: endpoints[1].weight: must be at least 1");
        let unknown = "endpoint: []\n";
        let e = parse_endpoints_file(path, unknown).unwrap_err().to_string();
        assert!(e.contains("unknown field `endpoint`"), "{e}");
    }
}
