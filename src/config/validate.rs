//! Checks that go beyond the schema and need nothing but the config itself:
//! unique names, references between sections, protocol combinations, value
//! ranges. Each problem is (key path, message). What needs other modules
//! (TLS files that load, routes that compile) is checked by
//! `snapshot::check`, the pass that also builds them.

use std::collections::{HashMap, HashSet};

use tokio::time::Duration;

use super::range::{count, optional, within, HOUR, MILLION, MS};
use super::schema::{ClusterConfig, ClusterProtocol, Config, ListenerConfig, ListenerProtocol, RouteConfig};

pub fn validate(config: &Config) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let worker_threads = config.runtime.worker_threads;
    optional(
        &mut problems,
        "runtime.worker_threads".into(),
        worker_threads.map(|n| n as u64),
        1,
        1024,
    );
    within(
        &mut problems,
        "drain_timeout".into(),
        config.drain_timeout,
        Duration::ZERO,
        HOUR,
    );
    within(
        &mut problems,
        "drain_delay".into(),
        config.drain_delay,
        Duration::ZERO,
        HOUR,
    );
    for (zone, callers) in &config.node.callers {
        count(&mut problems, format!("node.callers.{zone}"), *callers, 0, MILLION);
    }
    let mut clusters: HashMap<&str, usize> = HashMap::new();
    for (i, c) in config.clusters.iter().enumerate() {
        let key = format!("clusters[{i}]");
        if clusters.insert(c.name.as_str(), i).is_some() {
            problems.push((format!("{key}.name"), format!("duplicate cluster name {:?}", c.name)));
        }
        if c.tls.is_some() {
            if c.protocol == ClusterProtocol::Tcp {
                problems.push((
                    format!("{key}.tls"),
                    "tls is for http1, http2 and http3 clusters".into(),
                ));
            }
        } else if c.protocol == ClusterProtocol::Http3 {
            problems.push((
                format!("{key}.tls"),
                "an http3 cluster needs tls (QUIC is always encrypted)".into(),
            ));
        }
        problems.extend(cluster_ranges(&key, c));
        problems.extend(super::limits::validate_cluster(&key, c));
        problems.extend(super::udp::validate_cluster(&key, c));
        problems.extend(super::health::validate_cluster(&key, c));
        problems.extend(super::discovery::validate_cluster(&key, c));
        problems.extend(super::original_destination::validate_cluster(&key, c));
        let guarded = c.adaptive_concurrency.is_some() || c.retry_budget.is_some() || c.circuit_breaker.is_some();
        if guarded && c.protocol == ClusterProtocol::Tcp {
            problems.push((
                format!("{key}.protocol"),
                "adaptive_concurrency, retry_budget and circuit_breaker apply to HTTP clusters only".into(),
            ));
        }
        for (sub, message) in super::overload::check_cluster(
            c.adaptive_concurrency.as_ref(),
            c.retry_budget.as_ref(),
            c.circuit_breaker.as_ref(),
        ) {
            problems.push((format!("{key}.{sub}"), message));
        }
    }

    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let key = format!("listeners[{i}]");
        if !names.insert(l.name.as_str()) {
            problems.push((format!("{key}.name"), format!("duplicate listener name {:?}", l.name)));
        }
        // Port 0 (any free port, used by tests) can never collide.
        // A UDP listener (http3, udp) may share a TCP listener's port number.
        let udp = l.protocol.uses_udp();
        if l.address.port() != 0 && (!addresses.insert((l.address, udp)) || (!udp && l.address == config.admin.address))
        {
            problems.push((
                format!("{key}.address"),
                format!("address {} is already in use by another listener or admin", l.address),
            ));
        }
        if l.tls.is_some() {
            if l.protocol.is_l4() {
                problems.push((format!("{key}.tls"), "tls is for http and http3 listeners".into()));
            }
        } else if l.protocol == ListenerProtocol::Http3 {
            problems.push((format!("{key}.tls"), "an http3 listener needs tls".into()));
        }
        problems.extend(listener_ranges(&key, l));
        problems.extend(advertising(&key, l, config));
        problems.extend(super::udp::validate_listener(&key, l));
        problems.extend(super::original_destination::validate_listener(&key, l));
        let forwards = l.protocol.is_l4() || (l.protocol == ListenerProtocol::Http && l.original_destination);
        if forwards {
            problems.extend(forwarding_listener(&key, l, config, &clusters));
        } else if l.cluster.is_some() {
            problems.push((
                format!("{key}.cluster"),
                "only tcp and udp listeners, and http listeners with original_destination: true (for connections that are not HTTP), take a cluster; http listeners use routes".into(),
            ));
        }
    }
    problems.extend(super::trace::validate(config.tracing.as_ref()));
    problems.extend(super::discovery::validate_resolver(config.resolver.as_ref()));
    problems
}

/// The `http3` listener that `listener`'s `alt-svc` names: the one serving
/// the same routes, else the first.
pub fn advertised_http3<'a>(config: &'a Config, listener: &ListenerConfig) -> Option<&'a ListenerConfig> {
    let mut h3 = config
        .listeners
        .iter()
        .filter(|l| l.protocol == ListenerProtocol::Http3);
    let first = h3.clone().next();
    h3.find(|l| l.routes == listener.routes).or(first)
}

/// `advertise_http3` needs an `http3` listener on a fixed port: `alt-svc`
/// carries the port to clients, and port 0 is not one they can reach.
fn advertising(key: &str, l: &ListenerConfig, config: &Config) -> Option<(String, String)> {
    if !l.advertise_http3 {
        return None;
    }
    let message = match advertised_http3(config, l) {
        None => "there is no http3 listener to advertise".to_string(),
        Some(h3) if h3.address.port() == 0 => format!(
            "http3 listener {:?} has port 0; alt-svc needs the fixed port clients will reach",
            h3.name
        ),
        Some(_) => return None,
    };
    Some((format!("{key}.advertise_http3"), message))
}

/// A `tcp` or `udp` listener forwards to one cluster of its own protocol (for
/// `tcp`, or an original-destination cluster) and has no routes; an `http`
/// listener with `original_destination` may forward connections that are
/// not HTTP to such a cluster.
fn forwarding_listener(
    key: &str,
    l: &ListenerConfig,
    config: &Config,
    clusters: &HashMap<&str, usize>,
) -> Vec<(String, String)> {
    let (kind, wanted) = match l.protocol {
        ListenerProtocol::Udp => ("udp", ClusterProtocol::Udp),
        _ => ("tcp", ClusterProtocol::Tcp),
    };
    let mut problems = Vec::new();
    let is_l4 = l.protocol.is_l4();
    if is_l4 && !l.routes.is_empty() {
        problems.push((
            format!("{key}.routes"),
            format!("a {kind} listener has no routes; use cluster"),
        ));
    }
    let forwards =
        |c: &ClusterConfig| c.protocol == wanted || (wanted == ClusterProtocol::Tcp && c.is_original_destination());
    match l.cluster.as_deref().map(|c| (c, clusters.get(c))) {
        None if is_l4 => problems.push((format!("{key}.cluster"), format!("a {kind} listener needs a cluster"))),
        None => {}
        Some((name, None)) => problems.push((
            format!("{key}.cluster"),
            format!(
                "no cluster named {name:?}{}",
                super::did_you_mean(name, clusters.keys().copied())
            ),
        )),
        Some((name, Some(&c))) if !forwards(&config.clusters[c]) => {
            let or_original = if kind == "tcp" {
                " (or type: original_destination)"
            } else {
                ""
            };
            problems.push((
                format!("{key}.cluster"),
                match is_l4 {
                    true => format!("cluster {name:?} must have protocol: {kind}{or_original} to serve a {kind} listener"),
                    false => format!("cluster {name:?} must have protocol: tcp{or_original} to take the connections that are not HTTP"),
                },
            ))
        }
        Some((_, Some(&c))) => {
            let why = super::original_destination::reachable(l, &config.clusters[c]);
            problems.extend(why.map(|why| (format!("{key}.cluster"), why)));
        }
    }
    problems
}

/// Ranges of a cluster's own numeric keys (its sections check theirs).
fn cluster_ranges(key: &str, c: &ClusterConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    within(
        &mut problems,
        format!("{key}.connect_timeout"),
        c.connect_timeout,
        MS,
        HOUR,
    );
    within(&mut problems, format!("{key}.idle_timeout"), c.idle_timeout, MS, HOUR);
    for (j, e) in c.endpoints.iter().enumerate() {
        count(
            &mut problems,
            format!("{key}.endpoints[{j}].weight"),
            e.weight,
            1,
            MILLION,
        );
    }
    problems
}

/// Ranges of a listener's numeric keys and those of its routes.
fn listener_ranges(key: &str, l: &ListenerConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    problems.extend(super::limits::validate_listener(key, l));
    within(
        &mut problems,
        format!("{key}.quic.idle_timeout"),
        l.quic.idle_timeout,
        MS,
        HOUR,
    );
    for (j, r) in l.routes.iter().enumerate() {
        problems.extend(route_ranges(&format!("{key}.routes[{j}]"), r));
    }
    problems
}

fn route_ranges(key: &str, r: &RouteConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    optional(&mut problems, format!("{key}.timeout"), r.timeout, MS, HOUR);
    for (i, s) in r.split.iter().flatten().enumerate() {
        count(&mut problems, format!("{key}.split[{i}].weight"), s.weight, 0, MILLION);
    }
    if let Some(d) = &r.direct_response {
        count(
            &mut problems,
            format!("{key}.direct_response.status"),
            d.status,
            200,
            599,
        );
    }
    let sections = r.retry.iter().flat_map(super::overload::check_retry);
    let sections = sections.chain(r.mirror.iter().flat_map(super::mirror::check));
    problems.extend(sections.map(|(sub, message)| (format!("{key}.{sub}"), message)));
    problems
}
