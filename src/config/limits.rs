//! Limits on what a client or an upstream can make weft hold: the `limits:`
//! sections of listeners, routes and clusters, and the `idle_timeout` of
//! TCP listeners. Every key has a safe default (Envoy's where it has one)
//! and a range; every problem is (key path, message), like the rest of
//! validation.
//!
//! `limits.max_concurrent_streams` covers HTTP/2 and HTTP/3 alike; the old
//! `quic.max_concurrent_streams` is refused with a message naming it.

use serde::{Deserialize, Serialize};
use tokio::time::Duration;

use super::range::{count, optional, within, HOUR, MILLION, MS};
use super::schema::{duration, ClusterConfig, ListenerConfig, ListenerProtocol, RouteConfig};

/// The longest idle timeout (a day): idle TCP connections of databases and
/// long polls may legitimately sit quiet for hours.
pub const DAY: Duration = Duration::from_secs(24 * 3600);
/// The largest body limit, 1 TiB.
pub const MAX_BODY_BYTES: u64 = 1 << 40;

/// Protection against slow or abusive downstream clients.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerLimits {
    /// Upper bound of a request's header block (Envoy's `max_request_headers_kb`);
    /// larger requests get 431. hyper needs at least 8 KiB.
    #[serde(default = "default_max_request_headers_kb")]
    pub max_request_headers_kb: u32,
    /// A client must finish sending its request headers within this time.
    #[serde(default = "default_header_read_timeout", with = "duration")]
    pub header_read_timeout: Duration,
    /// Connections served at once; further ones are accepted and closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Requests one connection may carry (`None`: unlimited); then HTTP/1.1
    /// closes after the last response and HTTP/2 sends GOAWAY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u64>,
    /// Streams open at once on one HTTP/2 or HTTP/3 connection.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// The count of header fields in a request; more get 431.
    #[serde(default = "default_max_request_headers")]
    pub max_request_headers: u32,
    /// The largest request body of the listener's routes that set none
    /// (`None`: unlimited); larger ones get 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
    /// A request or response with no bytes moving for this long is ended.
    #[serde(default = "default_stream_idle_timeout", with = "duration")]
    pub stream_idle_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_request_headers_kb: default_max_request_headers_kb(),
            header_read_timeout: default_header_read_timeout(),
            max_connections: default_max_connections(),
            max_requests_per_connection: None,
            max_concurrent_streams: default_max_concurrent_streams(),
            max_request_headers: default_max_request_headers(),
            max_request_body_bytes: None,
            stream_idle_timeout: default_stream_idle_timeout(),
        }
    }
}

/// A route's own limits, overriding the listener's.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
}

/// Limits on what a cluster's endpoints may send back.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterLimits {
    /// The largest response header block (Envoy's common_http_protocol_options
    /// `max_response_headers_kb`); larger responses get 502.
    #[serde(default = "default_max_response_headers_kb")]
    pub max_response_headers_kb: u32,
}

impl Default for ClusterLimits {
    fn default() -> Self {
        Self {
            max_response_headers_kb: default_max_response_headers_kb(),
        }
    }
}

fn default_max_request_headers_kb() -> u32 {
    60
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_concurrent_streams() -> u32 {
    100
}
fn default_max_request_headers() -> u32 {
    100
}
fn default_stream_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_max_response_headers_kb() -> u32 {
    60
}

/// The idle timeout of a TCP listener's connections when it sets none (Envoy's tcp_proxy).
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = HOUR;

/// The largest request body `route` takes on `listener` (`None`: unlimited).
pub fn max_request_body_bytes(listener: &ListenerConfig, route: &RouteConfig) -> Option<u64> {
    route
        .limits
        .max_request_body_bytes
        .or(listener.limits.max_request_body_bytes)
}

/// The ranges of a listener's `limits:` and `idle_timeout`, where they apply.
pub fn validate_listener(key: &str, l: &ListenerConfig) -> Vec<(String, String)> {
    let mut p = Vec::new();
    let limits = &l.limits;
    let k = |sub: &str| format!("{key}.limits.{sub}");
    count(
        &mut p,
        k("max_request_headers_kb"),
        limits.max_request_headers_kb,
        8,
        8192,
    );
    within(&mut p, k("header_read_timeout"), limits.header_read_timeout, MS, HOUR);
    count(&mut p, k("max_connections"), limits.max_connections, 1, MILLION);
    let per_connection = limits.max_requests_per_connection;
    optional(
        &mut p,
        k("max_requests_per_connection"),
        per_connection,
        1,
        MILLION * 1000,
    );
    count(
        &mut p,
        k("max_concurrent_streams"),
        limits.max_concurrent_streams,
        1,
        10_000,
    );
    count(&mut p, k("max_request_headers"), limits.max_request_headers, 1, 10_000);
    let body = limits.max_request_body_bytes;
    optional(&mut p, k("max_request_body_bytes"), body, 0, MAX_BODY_BYTES);
    within(&mut p, k("stream_idle_timeout"), limits.stream_idle_timeout, MS, DAY);
    if l.quic.max_concurrent_streams.is_some() {
        p.push((
            format!("{key}.quic.max_concurrent_streams"),
            "moved to limits.max_concurrent_streams (it applies to HTTP/2 and HTTP/3 alike)".into(),
        ));
    }
    if let Some(idle) = l.idle_timeout {
        let forwards =
            l.protocol == ListenerProtocol::Tcp || (l.protocol == ListenerProtocol::Http && l.original_destination);
        if forwards {
            within(&mut p, format!("{key}.idle_timeout"), idle, MS, DAY);
        } else {
            p.push((
                format!("{key}.idle_timeout"),
                "idle_timeout is for tcp listeners (and the opaque TCP of http listeners with original_destination); udp listeners have udp.idle_timeout, http3 listeners quic.idle_timeout".into(),
            ));
        }
    }
    for (j, r) in l.routes.iter().enumerate() {
        let body = r.limits.max_request_body_bytes;
        let key = format!("{key}.routes[{j}].limits.max_request_body_bytes");
        optional(&mut p, key, body, 0, MAX_BODY_BYTES);
    }
    p
}

/// The range of a cluster's `limits:`.
pub fn validate_cluster(key: &str, c: &ClusterConfig) -> Vec<(String, String)> {
    let mut p = Vec::new();
    let kb = c.limits.max_response_headers_kb;
    count(&mut p, format!("{key}.limits.max_response_headers_kb"), kb, 1, 8192);
    p
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn errors(yaml: &str) -> Vec<String> {
        let loaded = crate::config::parse(Path::new("weft.yaml"), yaml).unwrap();
        let errors = loaded.errors(crate::config::problems(&loaded.config));
        errors.0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_old_quic_stream_key_is_refused_naming_the_new_one() {
        let yaml = "listeners:\n  - name: q\n    address: 127.0.0.1:1\n    protocol: http3\n    tls: { cert: a, key: b }\n    quic: { max_concurrent_streams: 5 }\n";
        let errors = errors(yaml);
        let moved = "weft.yaml:6: listeners[0].quic.max_concurrent_streams: moved to limits.max_concurrent_streams";
        assert!(errors.iter().any(|e| e.starts_with(moved)), "{errors:?}");
    }

    #[test]
    fn idle_timeout_is_refused_where_it_means_nothing() {
        let yaml = "listeners:\n  - name: h\n    address: 127.0.0.1:1\n    idle_timeout: 5s\n";
        let errors = errors(yaml);
        let refused = "weft.yaml:4: listeners[0].idle_timeout: idle_timeout is for tcp listeners";
        assert!(errors.iter().any(|e| e.starts_with(refused)), "{errors:?}");
    }

    #[test]
    fn a_route_limit_overrides_the_listener_one() {
        let yaml = "listeners:\n  - name: h\n    address: 127.0.0.1:1\n    limits: { max_request_body_bytes: 10 }\n    routes:\n      - { name: a, direct_response: { status: 200 } }\n      - { name: b, direct_response: { status: 200 }, limits: { max_request_body_bytes: 20 } }\n";
        let config = crate::config::parse(Path::new("weft.yaml"), yaml).unwrap().config;
        let l = &config.listeners[0];
        assert_eq!(super::max_request_body_bytes(l, &l.routes[0]), Some(10));
        assert_eq!(super::max_request_body_bytes(l, &l.routes[1]), Some(20));
    }
}
