//! The YAML schema: one struct per section, `deny_unknown_fields` everywhere so
//! a misspelt key is an error rather than a silently ignored setting.
//!
//! Each layer owns its own section (for example `ListenerLimits`), so later
//! features add a field and a struct here without touching the others.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::time::Duration;

use super::health::{HealthCheckConfig, OutlierDetectionConfig, ZoneAwareSection};
pub use super::limits::{ClusterLimits, ListenerLimits, RouteLimits};
pub use super::original_destination::{ClusterType, OriginalDestinationMatch};
pub use super::overload::{AdaptiveConcurrencyConfig, CircuitBreakerConfig, RetryBudgetConfig, RetryConfig};

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub access_log: AccessLogConfig,
    #[serde(default)]
    pub node: NodeConfig,
    /// How long in-flight requests may run after SIGTERM before weft exits.
    #[serde(default = "default_drain_timeout", with = "duration")]
    pub drain_timeout: Duration,
    /// After SIGTERM, how long listeners keep accepting (while `/ready`
    /// answers 503 and endpoints stop listing the pod) before the drain.
    #[serde(default = "default_drain_delay", with = "duration")]
    pub drain_delay: Duration,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    /// Span export (OTLP); without it weft only propagates trace context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<super::trace::TracingConfig>,
    /// DNS servers for `discovery.dns`; absent means `/etc/resolv.conf`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<super::discovery::ResolverConfig>,
}

impl Config {
    /// Makes every file path absolute against `base` (the config file's
    /// directory), so later stages need not know where the file was.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        let fix = |p: &mut PathBuf| *p = base.join(&*p);
        for l in &mut self.listeners {
            if let Some(tls) = &mut l.tls {
                tls.cert
                    .iter_mut()
                    .chain(tls.key.iter_mut())
                    .chain(tls.client_ca.iter_mut())
                    .for_each(fix);
                for c in &mut tls.certificates {
                    fix(&mut c.cert);
                    fix(&mut c.key);
                }
            }
            let compare_logs = l
                .routes
                .iter_mut()
                .filter_map(|r| r.mirror.as_mut()?.compare.as_mut()?.log.as_mut());
            compare_logs.for_each(|log| fix(&mut log.path));
        }
        for c in &mut self.clusters {
            if let Some(file) = c.discovery.as_mut().and_then(|d| d.file.as_mut()) {
                fix(&mut file.path);
            }
            if let Some(tls) = &mut c.tls {
                tls.ca
                    .iter_mut()
                    .chain(tls.cert.iter_mut())
                    .chain(tls.key.iter_mut())
                    .for_each(fix);
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub address: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            address: SocketAddr::from(([127, 0, 0, 1], 9901)),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Tokio worker threads; `None` means one per CPU.
    #[serde(default)]
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The zone this weft runs in; `WEFT_ZONE` overrides it.
    #[serde(default)]
    pub zone: Option<String>,
    /// How many instances of the calling service run in each zone, for
    /// zone-aware routing; empty means "spread like each cluster's endpoints".
    #[serde(default)]
    pub callers: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    Http,
    Http3,
    Tcp,
    Udp,
}

impl ListenerProtocol {
    /// Whether the listener binds a UDP socket (`http3` and `udp`).
    pub fn uses_udp(self) -> bool {
        matches!(self, Self::Http3 | Self::Udp)
    }

    /// Whether the listener forwards to one cluster instead of routing (`tcp`, `udp`).
    pub fn is_l4(self) -> bool {
        matches!(self, Self::Tcp | Self::Udp)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    #[serde(default = "default_listener_protocol")]
    pub protocol: ListenerProtocol,
    /// The upstream cluster of a `tcp` or `udp` listener.
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub limits: ListenerLimits,
    /// TLS termination; required for `http3`.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Add `alt-svc: h3=":PORT"` to responses, naming the `http3` listener
    /// with the same routes (else the first `http3` listener).
    #[serde(default)]
    pub advertise_http3: bool,
    /// QUIC transport settings of an `http3` listener.
    #[serde(default)]
    pub quic: QuicConfig,
    /// Session settings of a `udp` listener (defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<super::udp::UdpListenerConfig>,
    /// Read each connection's destination before a nat redirect and route by it.
    #[serde(default)]
    pub original_destination: bool,
    /// With `original_destination` on an `http` listener: destination ports
    /// forwarded as opaque TCP at once (server-first protocols).
    #[serde(default)]
    pub opaque_ports: Vec<u32>,
    /// With `original_destination` on an `http` listener: how long to wait
    /// for a connection's first bytes before forwarding it as opaque TCP.
    #[serde(default = "default_protocol_detection_timeout", with = "duration")]
    pub protocol_detection_timeout: Duration,
    /// `outbound` listeners (the app's own connections) accept until weft exits.
    #[serde(default)]
    pub traffic_direction: TrafficDirection,
    /// TCP listeners: idle connections close after this long (absent: 1h).
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

/// Which way a listener's traffic flows, as Envoy's `traffic_direction`:
/// on shutdown, `outbound` listeners are the last to stop accepting.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TrafficDirection {
    #[default]
    Unspecified,
    Inbound,
    Outbound,
}

/// TLS on a listener. `cert`/`key` is the default certificate; `certificates`
/// adds more, chosen by SNI.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
    /// CA bundle that client certificates must chain to.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a certificate in the handshake.
    #[serde(default)]
    pub require_client_cert: bool,
}

impl ListenerTls {
    /// (cert, key, server names) of every certificate, the default first.
    pub fn certificate_files(&self) -> Vec<(PathBuf, PathBuf, Vec<String>)> {
        let default = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone(), Vec::new())),
            _ => None,
        };
        default
            .into_iter()
            .chain(
                self.certificates
                    .iter()
                    .map(|c| (c.cert.clone(), c.key.clone(), c.server_names.clone())),
            )
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SNI names served with this certificate (`*.example.com` allowed).
    #[serde(default)]
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuicConfig {
    #[serde(default = "default_quic_idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
    /// Refused: moved to `limits.max_concurrent_streams`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<u32>,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            idle_timeout: default_quic_idle_timeout(),
            max_concurrent_streams: None,
        }
    }
}

fn default_quic_idle_timeout() -> Duration {
    Duration::from_secs(30)
}

/// TLS from weft to a cluster's endpoints.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// CA bundle the endpoints' certificates must chain to.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Server name to send and verify; default: the endpoint's IP address.
    #[serde(default)]
    pub sni: Option<String>,
    /// Client certificate and key, for mTLS.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matcher: MatchConfig,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub split: Option<Vec<SplitConfig>>,
    #[serde(default)]
    pub direct_response: Option<DirectResponseConfig>,
    /// Whole-request deadline; expiry gives 504.
    #[serde(default, with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// Copy requests to a shadow cluster and compare answers (docs/migration.md).
    #[serde(default)]
    pub mirror: Option<super::mirror::MirrorConfig>,
    /// With `split`: keep each header or cookie value on one side.
    #[serde(default)]
    pub sticky: Option<StickyConfig>,
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    #[serde(default)]
    pub limits: RouteLimits,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub path_exact: Option<String>,
    #[serde(default)]
    pub path_regex: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub headers: Vec<HeaderMatchConfig>,
    /// The verified client certificate identity (mTLS listeners).
    #[serde(default)]
    pub client_identity: Option<StringMatchConfig>,
    /// The request's host (`:authority` or `Host`) without its port.
    #[serde(default)]
    pub authority: Option<StringMatchConfig>,
    /// The connection's original destination (listeners with `original_destination`).
    #[serde(default)]
    pub original_destination: Option<OriginalDestinationMatch>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StringMatchConfig {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchConfig {
    pub name: String,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub present: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    pub cluster: String,
    pub weight: u32,
}

/// `sticky:` next to `split:`: exactly one of the two keys.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseConfig {
    pub status: u16,
    #[serde(default)]
    pub body: String,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClusterProtocol {
    Http1,
    Http2,
    Http3,
    Tcp,
    Udp,
}

impl ClusterProtocol {
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http1 | Self::Http2 | Self::Http3)
    }

    /// The name written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Http3 => "http3",
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Power of two choices on peak-EWMA latency times (in-flight + 1).
    #[default]
    P2cEwma,
    RoundRobin,
    Random,
    LeastRequest,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    /// `original_destination`: no endpoints; each connection goes where it
    /// was going before the nat redirect.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ClusterType>,
    /// `original_destination` clusters: connect to this IP instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_override: Option<std::net::IpAddr>,
    /// `original_destination` clusters: connect to this port instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_override: Option<u32>,
    #[serde(default = "default_cluster_protocol")]
    pub protocol: ClusterProtocol,
    #[serde(default)]
    pub lb: LbPolicy,
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Idle pooled upstream connections are closed after this long.
    #[serde(default = "default_idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
    /// Fixed endpoints; a cluster has these or `discovery`.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// Where the endpoints come from when they are not fixed (DNS, a watched file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<super::discovery::DiscoveryConfig>,
    #[serde(default)]
    pub tls: Option<ClusterTls>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetectionConfig>,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub zone_aware: ZoneAwareSection,
    #[serde(default)]
    pub adaptive_concurrency: Option<AdaptiveConcurrencyConfig>,
    /// Applies to routes with `retry`; absent means the default budget.
    #[serde(default)]
    pub retry_budget: Option<RetryBudgetConfig>,
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    #[serde(default)]
    pub limits: ClusterLimits,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub address: SocketAddr,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn yes() -> bool {
    true
}
fn default_weight() -> u32 {
    1
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_drain_delay() -> Duration {
    Duration::from_secs(5)
}
fn default_protocol_detection_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_listener_protocol() -> ListenerProtocol {
    ListenerProtocol::Http
}
fn default_cluster_protocol() -> ClusterProtocol {
    ClusterProtocol::Http1
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Durations are written as strings such as "250ms" or "5s" (parsed by `humantime`).
pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use tokio::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}

/// Like [`duration`], for optional keys.
pub mod opt_duration {
    use serde::{Deserializer, Serializer};
    use tokio::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }
}
