//! A compiled config: routes with their services, clusters with their pools.
//! The live one sits in an `ArcSwap`; a request loads it once and keeps that
//! `Arc` to its end, so a reload never changes a request midway.

use std::collections::HashMap;
use std::sync::Arc;

use std::path::Path;

use crate::cluster::discovery::Discovery;
use crate::cluster::Cluster;
use crate::config::discovery::ResolverConfig;
use crate::config::schema::{ClusterConfig, Config, ListenerConfig, RouteConfig};
use crate::config::{ConfigErrors, Loaded};
use crate::core::body::Body;
use crate::core::extensions::OriginalDestination;
use crate::core::service::HttpService;
use crate::front::limits::StreamLimits;
use crate::front::{Picked, RouteTable};
use crate::route::{self, Action, Route, WeightedSplit};
use crate::stack;
use crate::telemetry::lines::LineWriter;
use crate::telemetry::metrics::{Metrics, RouteMetrics};
use crate::tls;

/// Where a matched request goes.
pub struct Target {
    pub cluster: Arc<str>,
    pub service: HttpService,
    pub metrics: Arc<RouteMetrics>,
}

pub struct RouteEntry {
    pub route: Route,
    pub targets: Vec<Target>,
    /// With a split, indices into `targets` by weight.
    pub split: Option<WeightedSplit>,
    /// The route's own `limits.max_request_body_bytes`.
    pub max_request_body_bytes: Option<u64>,
}

impl AsRef<Route> for RouteEntry {
    fn as_ref(&self) -> &Route {
        &self.route
    }
}

impl RouteEntry {
    /// The target for a request with `headers`: with a sticky split, the
    /// side the request's sticky value hashes to (see `route::sticky`).
    pub fn target(&self, headers: &http::HeaderMap) -> Option<&Target> {
        match &self.split {
            None => self.targets.first(),
            Some(split) => {
                let total = split.total().max(1);
                let sticky = self.route.sticky.as_ref().and_then(|s| s.value(headers));
                let point = match sticky {
                    Some(value) => route::sticky::point(value, total),
                    None => rand::random_range(0..total),
                };
                split.pick(point).and_then(|i| self.targets.get(i))
            }
        }
    }
}

pub struct ListenerRoutes {
    pub routes: Vec<RouteEntry>,
    /// `alt-svc` advertising an HTTP/3 listener (`advertise_http3: true`).
    pub alt_svc: Option<http::HeaderValue>,
    /// Metrics for requests no route matched.
    pub unmatched: Arc<RouteMetrics>,
    /// The listener's per-request `limits` (header count, body, idle timeout).
    pub limits: StreamLimits,
    /// The snapshot's clusters, for routes that match the original
    /// destination against a cluster's endpoints.
    clusters: Vec<Arc<Cluster>>,
}

impl RouteTable for ListenerRoutes {
    fn pick(&self, req: &http::Request<Body>, identity: Option<&str>) -> Option<Picked<'_>> {
        let destination = req.extensions().get::<OriginalDestination>().map(|d| d.0);
        let endpoint_of =
            |c: usize| destination.is_some_and(|d| self.clusters.get(c).is_some_and(|c| c.has_endpoint(d)));
        let (method, path, headers) = (req.method(), req.uri().path(), req.headers());
        let entry = route::find(&self.routes, method, path, headers, identity, &endpoint_of)?;
        let target = entry.target(req.headers())?;
        Some(Picked {
            route: &entry.route.name,
            cluster: &target.cluster,
            service: &target.service,
            metrics: &target.metrics,
            max_request_body_bytes: entry.max_request_body_bytes,
        })
    }

    fn unmatched(&self) -> &RouteMetrics {
        &self.unmatched
    }

    fn alt_svc(&self) -> Option<&http::HeaderValue> {
        self.alt_svc.as_ref()
    }

    fn limits(&self) -> &StreamLimits {
        &self.limits
    }
}

pub struct Snapshot {
    pub loaded: Loaded,
    pub clusters: Vec<Arc<Cluster>>,
    pub listeners: HashMap<String, ListenerRoutes>,
}

impl Snapshot {
    /// Builds from a loaded config in one compile-and-validate pass (see
    /// [`check`]), reusing clusters of `previous` whose config did not
    /// change (their pools and endpoint state carry over). Mirrors log
    /// their mismatches through `lines`.
    pub fn build(
        loaded: Loaded,
        metrics: &Metrics,
        lines: &LineWriter,
        previous: Option<&Snapshot>,
    ) -> Result<Self, ConfigErrors> {
        let compiled = compile(&loaded)?;
        let config = &loaded.config;
        let resolver = config.resolver.as_ref();
        let clusters: Vec<Arc<Cluster>> = config
            .clusters
            .iter()
            .map(|c| {
                let kept = previous.and_then(|p| p.clusters.iter().find(|old| old.serves(c, &config.node, resolver)));
                kept.cloned().unwrap_or_else(|| {
                    // A rebuilt cluster keeps an unchanged discovery (its task and last set).
                    let discovery = c.discovery.as_ref().map(|d| {
                        previous
                            .and_then(|p| p.discovery_serving(c, resolver))
                            .unwrap_or_else(|| Discovery::new(&c.name, d, resolver, metrics))
                    });
                    Cluster::new(c, &config.node, metrics, discovery)
                })
            })
            .collect();
        let mut listeners = HashMap::new();
        let mut problems = Vec::new();
        for (i, (l, routes)) in config.listeners.iter().zip(compiled).enumerate() {
            let Some(routes) = routes else { continue };
            let mut entries = Vec::with_capacity(routes.len());
            for (j, (r, route)) in l.routes.iter().zip(routes).enumerate() {
                match route_entry(r, route, &l.name, &clusters, metrics, lines) {
                    Ok(entry) => entries.push(entry),
                    Err(message) => problems.push((format!("listeners[{i}].routes[{j}].mirror"), message)),
                }
            }
            let unmatched = RouteMetrics::new(metrics, &l.name, "", "");
            let alt_svc = if l.advertise_http3 { alt_svc(config, l) } else { None };
            listeners.insert(
                l.name.clone(),
                ListenerRoutes {
                    routes: entries,
                    alt_svc,
                    unmatched,
                    limits: StreamLimits::new(&l.limits, &l.name, metrics),
                    clusters: clusters.clone(),
                },
            );
        }
        if !problems.is_empty() {
            return Err(loaded.errors(problems));
        }
        Ok(Self {
            loaded,
            clusters,
            listeners,
        })
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.iter().find(|c| &*c.name == name)
    }

    /// Starts every cluster's background work (discovery, outlier timers,
    /// health checks) that is not running yet; clusters kept from the
    /// previous snapshot keep theirs.
    pub fn start(&self) {
        for cluster in &self.clusters {
            cluster.start();
        }
    }

    /// Waits, at most `limit`, until every discovery of this snapshot has
    /// looked once, and gives each cluster the set found: a started or
    /// reloaded weft then serves discovered clusters from its first request
    /// (Envoy's cluster warming). A discovery that keeps failing does not
    /// hold the start up longer than `limit`.
    pub async fn warm(&self, limit: tokio::time::Duration) {
        let looks = self
            .clusters
            .iter()
            .filter_map(|c| Some(c.discovery.as_ref()?.first_look()));
        let _ = tokio::time::timeout(limit, futures_util::future::join_all(looks)).await;
        for cluster in &self.clusters {
            cluster.sync_discovered();
        }
    }

    /// A discovery of this snapshot that a cluster configured as `config` may keep.
    fn discovery_serving(&self, config: &ClusterConfig, resolver: Option<&ResolverConfig>) -> Option<Arc<Discovery>> {
        self.clusters
            .iter()
            .filter_map(|c| c.discovery.as_ref())
            .find(|d| d.serves(config, resolver))
            .cloned()
    }
}

/// The checks of a loaded config that need the modules after `config`:
/// TLS files load, routes compile (paths, regexes, cluster references,
/// mirrors) and send only to HTTP clusters. `weft check` runs this; a run
/// or reload runs it inside [`Snapshot::build`].
pub fn check(loaded: &Loaded) -> Result<(), ConfigErrors> {
    compile(loaded).map(|_| ())
}

/// Each listener's compiled routes (`None` for tcp and udp listeners), or every
/// problem found, keyed.
fn compile(loaded: &Loaded) -> Result<Vec<Option<Vec<Route>>>, ConfigErrors> {
    let config = &loaded.config;
    let mut problems = crate::config::problems(config);
    problems.extend(tls_problems(config));
    problems.extend(crate::config::discovery::file_problems(config));
    let index: HashMap<&str, usize> = config
        .clusters
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    let mut compiled = Vec::with_capacity(config.listeners.len());
    for (i, l) in config.listeners.iter().enumerate() {
        if l.protocol.is_l4() {
            compiled.push(None);
            continue;
        }
        let mut routes = Vec::with_capacity(l.routes.len());
        for (j, r) in l.routes.iter().enumerate() {
            let key = format!("listeners[{i}].routes[{j}]");
            match route::compile(r, &index) {
                Err(e) => problems.push((format!("{key}.{}", e.key), e.message)),
                Ok(route) => {
                    problems.extend(route_problems(&key, l, &route, config));
                    routes.push(route);
                }
            }
        }
        compiled.push(Some(routes));
    }
    if problems.is_empty() {
        Ok(compiled)
    } else {
        Err(loaded.errors(problems))
    }
}

/// Problems of a compiled route's clusters on listener `l`: each must speak
/// HTTP, and original destinations (a cluster of that type, a match on one)
/// need a listener that reads them.
fn route_problems(key: &str, l: &ListenerConfig, route: &Route, config: &Config) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for cluster in route.clusters().map(|c| &config.clusters[c]) {
        if !cluster.protocol.is_http() {
            problems.push((
                format!("{key}.cluster"),
                format!(
                    "cluster {:?} speaks {}, not HTTP",
                    cluster.name,
                    cluster.protocol.as_str()
                ),
            ));
        }
        if let Some(why) = crate::config::original_destination::reachable(l, cluster) {
            problems.push((format!("{key}.cluster"), why));
        }
    }
    if let Some(c) = route.matches_endpoints_of() {
        let key = format!("{key}.match.original_destination");
        if !l.original_destination {
            problems.push((key.clone(), "needs original_destination: true on the listener".into()));
        }
        if config.clusters[c].is_original_destination() {
            let name = &config.clusters[c].name;
            problems.push((
                format!("{key}.endpoint_of"),
                format!("cluster {name:?} is of type original_destination and has no endpoints"),
            ));
        }
    }
    problems
}

/// Certificates and keys of listeners and clusters that do not load.
fn tls_problems(config: &Config) -> Vec<(String, String)> {
    let root = Path::new("/");
    let mut problems = Vec::new();
    for (i, c) in config.clusters.iter().enumerate() {
        if let Some(tls) = c.tls.as_ref().filter(|_| c.protocol.is_http()) {
            if let Err(e) = tls::client_config(tls, root, &[]) {
                problems.push((format!("clusters[{i}].tls"), e));
            }
        }
    }
    for (i, l) in config.listeners.iter().enumerate() {
        if let Some(tls) = l.tls.as_ref().filter(|_| !l.protocol.is_l4()) {
            let loaded =
                tls::CertStore::load(tls, root).and_then(|store| tls::server_config(tls, Arc::new(store), root, &[]));
            if let Err(e) = loaded {
                problems.push((format!("listeners[{i}].tls"), e));
            }
        }
    }
    problems
}

/// A compiled route with its target services (and its mirror, if any).
fn route_entry(
    r: &RouteConfig,
    route: Route,
    listener: &str,
    clusters: &[Arc<Cluster>],
    metrics: &Metrics,
    lines: &LineWriter,
) -> Result<RouteEntry, String> {
    let mirror = match (&r.mirror, &route.mirror) {
        (Some(config), Some(to)) => Some(stack::mirror_layer(
            &route,
            config,
            &clusters[to.shadow],
            to.noise.map(|n| &clusters[n]),
            metrics,
            lines,
        )?),
        _ => None,
    };
    let target = |cluster: usize| Target {
        cluster: clusters[cluster].name.clone(),
        service: stack::mirrored_target(&route, &clusters[cluster], mirror.as_ref()),
        metrics: RouteMetrics::new(metrics, listener, &route.name, &clusters[cluster].name),
    };
    let (targets, split) = match &route.action {
        Action::Cluster(c) => (vec![target(*c)], None),
        Action::Split(split) => {
            let targets: Vec<Target> = split.clusters().map(target).collect();
            let by_target = WeightedSplit::new(
                r.split
                    .iter()
                    .flatten()
                    .filter(|s| s.weight > 0)
                    .enumerate()
                    .map(|(i, s)| (i, s.weight)),
            );
            (targets, Some(by_target))
        }
        Action::Direct { status, body } => (
            vec![Target {
                cluster: Arc::from(""),
                service: stack::direct_target(*status, body.clone()),
                metrics: RouteMetrics::new(metrics, listener, &route.name, ""),
            }],
            None,
        ),
    };
    let max_request_body_bytes = r.limits.max_request_body_bytes;
    Ok(RouteEntry {
        route,
        targets,
        split,
        max_request_body_bytes,
    })
}

/// `h3=":PORT"` for the HTTP/3 listener that `listener` advertises.
fn alt_svc(config: &Config, listener: &ListenerConfig) -> Option<http::HeaderValue> {
    let chosen = crate::config::advertised_http3(config, listener)?;
    http::HeaderValue::try_from(format!("h3=\":{}\"; ma=86400", chosen.address.port())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixture::{messages, BASE};

    fn errors(text: &str) -> Vec<String> {
        let checked = crate::config::parse(Path::new("weft.yaml"), text).and_then(|loaded| check(&loaded));
        messages(checked)
    }

    #[test]
    fn missing_cluster_names_line_key_and_suggestion() {
        let text = BASE.replace("cluster: web-canary", "cluster: web-canery");
        assert_eq!(
            errors(&text),
            vec![
                r#"weft.yaml:6: listeners[0].routes[0].cluster: no cluster named "web-canery" (did you mean "web-canary"?)"#
            ]
        );
    }

    #[test]
    fn routes_cannot_send_to_a_udp_cluster() {
        let text = BASE.replace("    endpoints:", "    protocol: udp\n    endpoints:");
        assert_eq!(
            errors(&text),
            [r#"weft.yaml:6: listeners[0].routes[0].cluster: cluster "web-canary" speaks udp, not HTTP"#]
        );
    }

    #[test]
    fn every_error_is_listed() {
        let text = "listeners:
  - { name: a, address: 127.0.0.1:1, routes: [ { name: r, cluster: x } ] }
  - { name: a, address: 127.0.0.1:2, protocol: tcp }
clusters:
  - { name: c, endpoints: [ { address: 127.0.0.1:3, weight: 0 } ] }
";
        let errs = errors(text);
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert!(errs[0].contains(":2: listeners[0].routes[0].cluster: no cluster named \"x\""));
        assert!(errs
            .iter()
            .any(|e| e.contains(":3: listeners[1].name: duplicate listener name")));
        assert!(errs
            .iter()
            .any(|e| e.contains(":3: listeners[1].cluster: a tcp listener needs")));
        assert!(errs.iter().any(|e| e.contains(":5: clusters[0].endpoints[0].weight")));
    }

    #[test]
    fn discovery_blocks_are_checked_with_line_and_key() {
        let text = "listeners: []
clusters:
  - name: both
    endpoints: [ { address: 127.0.0.1:1 } ]
    discovery: { dns: { name: web.local, port: 80 } }
  - name: bad-name
    discovery: { dns: { name: web..local, port: 80, refresh: 1s, min_refresh: 2s } }
  - name: missing
    discovery: { file: { path: /nonexistent/eps.yaml } }
  - name: k8s
    discovery: { kubernetes: { service: Payments, namespace: prod, port: 70000 } }
  - name: none
resolver: { servers: [] }
";
        let errs = errors(text);
        let expected = [
            ":5: clusters[0].discovery: a cluster takes endpoints or discovery, not both",
            ":7: clusters[1].discovery.dns.name: \"web..local\": each label must be 1 to 63 characters",
            ":7: clusters[1].discovery.dns.refresh: must be at least min_refresh",
            ":9: clusters[2].discovery.file.path: /nonexistent/eps.yaml: cannot read",
            ":11: clusters[3].discovery.kubernetes.service: a Service name must be a DNS-1035 label: \"Payments\" has 'P'",
            ":11: clusters[3].discovery.kubernetes.port: must be between 1 and 65535",
            ":12: clusters[4].endpoints: a cluster needs endpoints, a discovery block or type: original_destination",
            ":13: resolver.servers: needs at least one ip:port",
        ];
        for want in expected {
            assert!(errs.iter().any(|e| e.contains(want)), "missing {want:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), expected.len(), "{errs:#?}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("eps.yaml"),
            "endpoints:\n  - { address: 127.0.0.1:1, weight: 0 }\n",
        )
        .unwrap();
        let config = dir.path().join("weft.yaml");
        let text = "clusters:\n  - name: c\n    discovery: { file: { path: eps.yaml } }\n";
        let loaded = crate::config::parse(&config, text).unwrap();
        let err = check(&loaded).unwrap_err().to_string();
        assert!(err.contains("weft.yaml:3: clusters[0].discovery.file.path: "), "{err}");
        assert!(
            err.contains("eps.yaml:2: endpoints[0].weight: must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn original_destination_keys_are_checked_with_line_and_key() {
        let text = "listeners:
  - { name: plain, address: 127.0.0.1:1, routes: [ { name: r, cluster: passthrough } ] }
  - { name: tcp, address: 127.0.0.1:2, protocol: tcp, cluster: passthrough }
  - { name: h, address: 127.0.0.1:3, cluster: db, opaque_ports: [3306] }
  - name: captured
    address: 127.0.0.1:4
    original_destination: true
    cluster: web
    routes: [ { name: m, match: { original_destination: { endpoint_of: passthrough } }, cluster: web } ]
  - { name: q, address: 127.0.0.1:5, protocol: http3, original_destination: true, tls: { cert: c, key: k } }
  - { name: fine, address: 127.0.0.1:6, original_destination: true, cluster: passthrough, opaque_ports: [3306],
      routes: [ { name: known, match: { authority: { exact: web }, original_destination: { endpoint_of: web } }, cluster: web },
                { name: rest, cluster: passthrough } ] }
  - { name: fine-tcp, address: 127.0.0.1:7, protocol: tcp, original_destination: true, cluster: passthrough }
clusters:
  - { name: passthrough, type: original_destination }
  - { name: web, endpoints: [ { address: 127.0.0.1:9 } ], address_override: 127.0.0.1 }
  - { name: db, protocol: tcp, endpoints: [ { address: 127.0.0.1:10 } ] }
  - { name: both, type: original_destination, endpoints: [ { address: 127.0.0.1:11 } ], port_override: 0,
      health_check: { path: / } }
  - { name: found, type: original_destination, discovery: { dns: { name: web.local, port: 80 } } }
";
        let errs = errors(text);
        let expected = [
            ":2: listeners[0].routes[0].cluster: cluster \"passthrough\" is of type original_destination; its listener needs original_destination: true",
            ":3: listeners[1].cluster: cluster \"passthrough\" is of type original_destination; its listener needs original_destination: true",
            ":4: listeners[2].cluster: only tcp and udp listeners, and http listeners with original_destination: true",
            ":4: listeners[2].opaque_ports: opaque_ports apply to http listeners with original_destination: true",
            ":8: listeners[3].cluster: cluster \"web\" must have protocol: tcp (or type: original_destination) to take the connections that are not HTTP",
            ":9: listeners[3].routes[0].match.original_destination.endpoint_of: cluster \"passthrough\" is of type original_destination and has no endpoints",
            ":10: listeners[4].original_destination: original_destination is for tcp and http listeners",
            ":10: listeners[4].tls: ",
            ":17: clusters[1].address_override: only clusters of type original_destination take overrides",
            ":19: clusters[3].endpoints: a cluster of type original_destination has no endpoints: it connects to each",
            ":19: clusters[3].port_override: must be between 1 and 65535",
            ":20: clusters[3].health_check: a cluster of type original_destination has no endpoints, so no health_check",
            ":21: clusters[4].discovery: a cluster of type original_destination has no discovery",
        ];
        for want in expected {
            assert!(errs.iter().any(|e| e.contains(want)), "missing {want:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), expected.len(), "{errs:#?}");
        let plain_match = BASE.replace(
            "        cluster: web-canary",
            "        match: { original_destination: { endpoint_of: web-canary } }\n        cluster: web-canary",
        );
        assert_eq!(
            errors(&plain_match),
            ["weft.yaml:6: listeners[0].routes[0].match.original_destination: needs original_destination: true on the listener"]
        );
    }

    #[test]
    fn whole_file_errors_name_line_and_key_path() {
        let text = "listeners:
  - name: public
    address: 127.0.0.1:8080
    routes:
      - { name: r, cluster: web, retry: { retry_on: [reset, bogus] } }
clusters:
  - name: web
    endpoints: [ { address: 127.0.0.1:9001 } ]
    adaptive_concurrency: { min_concurrency_limit: 0 }
  - name: db
    protocol: tcp
    endpoints: [ { address: 127.0.0.1:9002 } ]
    circuit_breaker: { max_connections: 10 }
";
        let loaded = crate::config::parse(Path::new("weft.yaml"), text).unwrap();
        let errors = check(&loaded).unwrap_err();
        let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "listeners[0].routes[0].retry.retry_on[1]",
                "clusters[0].adaptive_concurrency.min_concurrency_limit",
                "clusters[1].protocol",
            ],
            "{errors}"
        );
        assert!(errors.0.iter().all(|e| e.line.is_some()), "{errors}");
    }

    #[tokio::test]
    async fn a_listener_picks_the_first_matching_route_and_its_target() {
        let text = "listeners:
  - name: public
    address: 127.0.0.1:8080
    routes:
      - { name: api, match: { path_prefix: /api }, cluster: api }
      - { name: spa, match: { path_prefix: / }, cluster: web }
  - name: private
    address: 127.0.0.1:8081
    routes:
      - { name: admin, match: { path_prefix: /admin }, cluster: web }
clusters:
  - { name: api, endpoints: [ { address: 127.0.0.1:9001 } ] }
  - { name: web, endpoints: [ { address: 127.0.0.1:9002 } ] }
";
        let loaded = crate::config::parse(Path::new("weft.yaml"), text).unwrap();
        let metrics = Metrics::new().unwrap();
        let (lines, _writer) = crate::telemetry::lines::channel(1);
        let snapshot = Snapshot::build(loaded, &metrics, &lines, None).unwrap();
        let pick = |listener: &str, path: &str| {
            let req = http::Request::get(path).body(crate::core::body::empty()).unwrap();
            snapshot.listeners[listener]
                .pick(&req, None)
                .map(|p| format!("{}->{}", p.route, p.cluster))
        };
        assert_eq!(pick("public", "/api/users").as_deref(), Some("api->api"));
        assert_eq!(pick("public", "/index.html").as_deref(), Some("spa->web"));
        assert_eq!(pick("private", "/admin/x").as_deref(), Some("admin->web"));
        assert_eq!(pick("private", "/api/users"), None);
        assert!(snapshot.listeners["public"].alt_svc().is_none());
    }
}
