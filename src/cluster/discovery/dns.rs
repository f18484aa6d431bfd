//! DNS discovery (Envoy's STRICT_DNS): every A and AAAA record of a name is
//! an endpoint on the configured port, re-resolved every `refresh`, sooner
//! when the records' TTL is shorter, never more often than `min_refresh`.
//!
//! The resolver is hickory's, configured like a pod's: `/etc/resolv.conf`
//! with its search domains and `ndots`; the top-level `resolver.servers`
//! replaces only its name servers. Its answer cache is cleared before every
//! look, so each refresh asks the servers (the TTL already decides how soon
//! that is). An answer with no address counts as a failure, so a name that
//! blinks out of DNS keeps its last set.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_resolver::config::{ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::Record;
use hickory_resolver::TokioResolver;
use tokio::time::Duration;

use super::Shared;
use crate::cluster::endpoints::EndpointSpec;
use crate::config::discovery::DnsDiscovery;
use crate::policy::discovery::{RefreshConfig, RefreshSchedule};

const RESOLV_CONF: &str = "/etc/resolv.conf";

pub(super) async fn run(shared: Arc<Shared>, config: DnsDiscovery, servers: Vec<SocketAddr>) {
    let mut schedule = RefreshSchedule::new(RefreshConfig {
        refresh: config.refresh,
        min_refresh: config.min_refresh,
    });
    let mut resolver: Option<TokioResolver> = None;
    loop {
        let looked = match &resolver {
            Some(r) => look(r, &config).await,
            None => match build(&servers).await {
                Ok(r) => look(resolver.insert(r), &config).await,
                Err(e) => Err(e),
            },
        };
        let (found, ttl) = match looked {
            Ok((specs, ttl)) => (Ok(specs), ttl),
            Err(e) => (Err(e), None),
        };
        let step = shared.report(found, ttl, &mut schedule);
        tokio::time::sleep_until(step.next).await;
    }
}

/// The resolver of `/etc/resolv.conf`, with `servers` (each `ip:port`) as
/// its name servers when given.
async fn build(servers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let system = tokio::fs::read(RESOLV_CONF).await;
    let (config, options) = resolver_config(system.as_deref().ok(), servers)?;
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

/// What the resolver is built from: `resolv_conf` (the file's bytes, if it
/// could be read) with its name servers replaced by `servers` when any.
pub(super) fn resolver_config(
    resolv_conf: Option<&[u8]>,
    servers: &[SocketAddr],
) -> Result<(ResolverConfig, ResolverOpts), String> {
    let parsed = resolv_conf.map(hickory_resolver::system_conf::parse_resolv_conf);
    let (config, mut options) = match (parsed, servers.is_empty()) {
        (Some(Ok(system)), true) => system,
        (None, true) => {
            return Err(format!(
                "cannot read {RESOLV_CONF} and no resolver.servers are configured"
            ))
        }
        (Some(Err(e)), true) => return Err(format!("{RESOLV_CONF}: {e}")),
        (parsed, false) => {
            // Without a usable file (for example one naming no name server):
            // no search domains, the resolver's default options.
            let (domain, search, options) = match parsed {
                Some(Ok((config, options))) => {
                    let (domain, search, _) = config.into_parts();
                    (domain, search, options)
                }
                _ => (None, Vec::new(), ResolverOpts::default()),
            };
            let name_servers = servers.iter().map(|s| name_server(*s)).collect();
            (ResolverConfig::from_parts(domain, search, name_servers), options)
        }
    };
    // Both families, asked in parallel; either may be missing.
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    Ok((config, options))
}

fn name_server(address: SocketAddr) -> NameServerConfig {
    let on_port = |mut connection: ConnectionConfig| {
        connection.port = address.port();
        connection
    };
    NameServerConfig::new(
        address.ip(),
        true,
        vec![on_port(ConnectionConfig::udp()), on_port(ConnectionConfig::tcp())],
    )
}

/// One resolution: the endpoints and the shortest TTL of the address records.
async fn look(
    resolver: &TokioResolver,
    config: &DnsDiscovery,
) -> Result<(Vec<EndpointSpec>, Option<Duration>), String> {
    resolver.clear_cache();
    let answer = resolver
        .lookup_ip(config.name.as_str())
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", config.name))?;
    answer_endpoints(answer.as_lookup().answers(), config)
}

/// What one answer gives: an endpoint on the configured port for every A
/// and AAAA record (CNAMEs and other records are passed over), and the
/// shortest TTL among those records. An answer with no address is an error.
pub fn answer_endpoints(
    answers: &[Record],
    config: &DnsDiscovery,
) -> Result<(Vec<EndpointSpec>, Option<Duration>), String> {
    let addresses = || answers.iter().filter(|r| r.data.ip_addr().is_some());
    let ttl = addresses()
        .map(|r| r.ttl)
        .min()
        .map(|secs| Duration::from_secs(u64::from(secs)));
    let specs: Vec<EndpointSpec> = addresses()
        .filter_map(|r| r.data.ip_addr())
        .map(|ip| EndpointSpec {
            address: SocketAddr::new(ip, config.port),
            zone: config.zone.clone(),
            weight: 1,
        })
        .collect();
    if specs.is_empty() {
        return Err(format!("{} has no A or AAAA records", config.name));
    }
    Ok((specs, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_servers_replace_only_the_name_servers() {
        let text = b"search prod.svc.cluster.local svc.cluster.local\noptions ndots:5\nnameserver 10.96.0.10\n";
        let servers: Vec<SocketAddr> = vec!["127.0.0.1:5353".parse().unwrap()];
        let (config, options) = resolver_config(Some(text), &servers).unwrap();
        let search: Vec<String> = config.search().iter().map(|n| n.to_string()).collect();
        assert_eq!(search, ["prod.svc.cluster.local", "svc.cluster.local"]);
        assert_eq!(options.ndots, 5);
        assert_eq!(options.ip_strategy, LookupIpStrategy::Ipv4AndIpv6);
        let ns = &config.name_servers()[0];
        assert_eq!(config.name_servers().len(), 1);
        assert_eq!(ns.ip, servers[0].ip());
        assert!(ns.connections.iter().all(|c| c.port == 5353));

        // Without override, the file's own server and options.
        let (config, options) = resolver_config(Some(text), &[]).unwrap();
        assert_eq!(config.name_servers()[0].ip.to_string(), "10.96.0.10");
        assert_eq!(options.ndots, 5);
        // No file: only configured servers will do.
        assert!(resolver_config(None, &[]).is_err());
        let (config, options) = resolver_config(None, &servers).unwrap();
        assert!(config.search().is_empty());
        assert_eq!((config.name_servers().len(), options.ndots), (1, 1));
    }
}
