//! Schema and checks of service discovery: a cluster's `discovery` block
//! (`dns`, `file` or `kubernetes`), the top-level `resolver` section, and the format of an
//! endpoints file (`endpoints: [ { address, zone, weight } ]`, YAML or JSON).
//!
//! Guarantees: every struct denies unknown keys; [`validate_cluster`] returns
//! (key path, message) pairs like `validate.rs`; [`parse_endpoints_file`]
//! names the endpoints file, line and key of what is wrong in it, and
//! refuses what a static cluster's `endpoints` would refuse (a weight of 0);
//! a `kubernetes` block names a valid Service (DNS-1035 label), namespace
//! (DNS-1123 label) and port (a DNS-1123 label or 1 to 65535), as the API
//! server itself would require.

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesDiscovery>,
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

/// `discovery.kubernetes`: the ready endpoints of a Service's EndpointSlices.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesDiscovery {
    /// The Service: slices labelled `kubernetes.io/service-name: <service>`.
    pub service: String,
    /// Default: the pod's own namespace (the service-account mount), or the
    /// kubeconfig context's outside a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub port: KubernetesPort,
}

/// The port of a Service's endpoints: a port name from the slices, or a number.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum KubernetesPort {
    /// The endpoints' port number itself (the Service's `targetPort`).
    Number(u32),
    /// The slices' port of this name (the Service's `ports[].name`).
    Name(String),
}

impl std::fmt::Display for KubernetesPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubernetesPort::Number(n) => write!(f, "{n}"),
            KubernetesPort::Name(name) => f.write_str(name),
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
        0 => problem("discovery", "needs one of dns, file or kubernetes".into()),
        1 => {}
        _ => problem("discovery", "takes exactly one of dns, file or kubernetes".into()),
    }
    if let Some(kubernetes) = &discovery.kubernetes {
        for (k, e) in kubernetes_problems(kubernetes) {
            problem(&format!("discovery.kubernetes.{k}"), e);
        }
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
    if let Some(KubernetesPort::Number(n)) = discovery.kubernetes.as_ref().map(|k| &k.port) {
        count(&mut problems, format!("{key}.discovery.kubernetes.port"), *n, 1, 65_535);
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

/// What is wrong in a `kubernetes` block, as (key, message).
fn kubernetes_problems(config: &KubernetesDiscovery) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if let Err(e) = check_k8s_label(&config.service, true) {
        problems.push(("service", format!("a Service name {e}")));
    }
    if let Some(Err(e)) = config.namespace.as_deref().map(|n| check_k8s_label(n, false)) {
        problems.push(("namespace", format!("a namespace {e}")));
    }
    match &config.port {
        // A number's range is checked with every other range (`validate_cluster`).
        KubernetesPort::Number(_) => {}
        KubernetesPort::Name(name) => {
            if let Err(e) = check_k8s_label(name, false) {
                problems.push(("port", format!("a port name {e}")));
            }
        }
    }
    problems
}

/// Checks a Kubernetes name: a DNS-1123 label (1 to 63 lowercase letters,
/// digits or `-`, starting and ending with a letter or digit), which must
/// also start with a letter when `dns_1035` (a DNS-1035 label, as Service
/// names are).
pub fn check_k8s_label(name: &str, dns_1035: bool) -> Result<(), String> {
    let kind = if dns_1035 { "DNS-1035" } else { "DNS-1123" };
    let fail = |why: &str| Err(format!("must be a {kind} label: {name:?} {why}"));
    if name.is_empty() || name.len() > 63 {
        return fail("is not 1 to 63 characters");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return fail(&format!(
            "has {c:?}; only lowercase letters, digits and '-' are allowed"
        ));
    }
    let first = name.chars().next().unwrap_or('-');
    if dns_1035 && !first.is_ascii_lowercase() {
        return fail("does not start with a letter");
    }
    if first == '-' || name.ends_with('-') {
        return fail("starts or ends with '-'");
    }
    Ok(())
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
    let text = super::files::read_regular_text(path, super::files::MAX_ENDPOINTS_BYTES)?;
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
    fn kubernetes_names_are_checked_as_the_api_server_does() {
        for good in ["payments", "a", "web-2", &"a".repeat(63)] {
            assert_eq!(check_k8s_label(good, true), Ok(()), "{good}");
        }
        for bad in ["", "2web", "-web", "web-", "Web", "web.prod", "we_b", &"a".repeat(64)] {
            assert!(check_k8s_label(bad, true).is_err(), "{bad}");
        }
        // DNS-1123 (namespaces, port names) allows a leading digit.
        assert_eq!(check_k8s_label("2web", false), Ok(()));
        assert!(check_k8s_label("2web-", false).is_err());

        let block = |yaml: &str| serde_yaml_ng::from_str::<KubernetesDiscovery>(yaml).unwrap();
        let ok = block("{ service: payments, namespace: prod, port: http }");
        assert_eq!(ok.port, KubernetesPort::Name("http".into()));
        assert!(kubernetes_problems(&ok).is_empty());
        assert_eq!(block("{ service: p, port: 8080 }").port, KubernetesPort::Number(8080));
        let bad = block("{ service: Payments, namespace: prod_1, port: Http }");
        let keys: Vec<&str> = kubernetes_problems(&bad).iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["service", "namespace", "port"]);
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
