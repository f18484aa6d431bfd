//! A compiled config: routes with their services, clusters with their pools.
//! The live one sits in an `ArcSwap`; a request loads it once and keeps that
//! `Arc` to its end, so a reload never changes a request midway.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cluster::Cluster;
use crate::config::schema::ListenerProtocol;
use crate::config::Loaded;
use crate::route::{self, Action, Route, WeightedSplit};
use crate::stack::{self, RouteService};
use crate::telemetry::metrics::{Metrics, RouteMetrics};

/// Where a matched request goes.
pub struct Target {
    pub cluster: Arc<str>,
    pub service: RouteService,
    pub metrics: Arc<RouteMetrics>,
}

pub struct RouteEntry {
    pub route: Route,
    pub targets: Vec<Target>,
    /// With a split, indices into `targets` by weight.
    pub split: Option<WeightedSplit>,
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
}

pub struct Snapshot {
    pub loaded: Loaded,
    pub clusters: Vec<Arc<Cluster>>,
    pub listeners: HashMap<String, ListenerRoutes>,
}

impl Snapshot {
    /// Builds from a validated config, reusing clusters of `previous` whose
    /// config did not change (their pools and endpoint state carry over).
    pub fn build(loaded: Loaded, metrics: &Metrics, previous: Option<&Snapshot>) -> Result<Self, String> {
        let config = &loaded.config;
        let clusters: Vec<Arc<Cluster>> = config
            .clusters
            .iter()
            .map(|c| {
                previous
                    .and_then(|p| p.clusters.iter().find(|old| old.serves(c, &config.node)))
                    .cloned()
                    .unwrap_or_else(|| Cluster::new(c, &config.node, metrics))
            })
            .collect();
        let index: HashMap<&str, usize> = config
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), i))
            .collect();
        let mut listeners = HashMap::new();
        for l in config.listeners.iter().filter(|l| l.protocol != ListenerProtocol::Tcp) {
            let mut routes = Vec::with_capacity(l.routes.len());
            for r in &l.routes {
                let route = route::compile(r, &index)
                    .map_err(|e| format!("listener {} route {}: {}: {}", l.name, r.name, e.key, e.message))?;
                let mirror = match (&r.mirror, &route.mirror) {
                    (Some(config), Some(to)) => Some(
                        stack::mirror_layer(
                            &route,
                            config,
                            &clusters[to.shadow],
                            to.noise.map(|n| &clusters[n]),
                            metrics,
                        )
                        .map_err(|e| format!("listener {} route {}: {e}", l.name, r.name))?,
                    ),
                    _ => None,
                };
                let target = |cluster: usize| Target {
                    cluster: clusters[cluster].name.clone(),
                    service: stack::mirrored_target(&route, &clusters[cluster], mirror.as_ref()),
                    metrics: RouteMetrics::new(metrics, &l.name, &route.name, &clusters[cluster].name),
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
                            metrics: RouteMetrics::new(metrics, &l.name, &route.name, ""),
                        }],
                        None,
                    ),
                };
                routes.push(RouteEntry { route, targets, split });
            }
            let unmatched = RouteMetrics::new(metrics, &l.name, "", "");
            let alt_svc = if l.advertise_http3 { alt_svc(config, l) } else { None };
            listeners.insert(
                l.name.clone(),
                ListenerRoutes {
                    routes,
                    alt_svc,
                    unmatched,
                },
            );
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
}

/// `h3=":PORT"` for the HTTP/3 listener serving the same routes as
/// `listener` (or, failing that, the first HTTP/3 listener).
fn alt_svc(
    config: &crate::config::Config,
    listener: &crate::config::schema::ListenerConfig,
) -> Option<http::HeaderValue> {
    let h3: Vec<_> = config
        .listeners
        .iter()
        .filter(|l| l.protocol == ListenerProtocol::Http3)
        .collect();
    let chosen = h3.iter().find(|l| l.routes == listener.routes).or(h3.first())?;
    http::HeaderValue::try_from(format!("h3=\":{}\"; ma=86400", chosen.address.port())).ok()
}
