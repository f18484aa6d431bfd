//! Routing: per listener, an ordered list of routes where the first match wins.
//! Each route either names a cluster, splits by weight over several, or
//! answers directly. Cluster references are resolved to indices at compile
//! time, so a request never looks a cluster up by name.

pub mod matcher;
pub mod sticky;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use tokio::time::Duration;

pub use crate::policy::split::WeightedSplit;
use matcher::err;
pub use matcher::{no_original_destination, EndpointOf, MatchError, Matcher};

use crate::config::mirror::MirrorConfig;
use crate::config::schema::RouteConfig;
use crate::policy::retry::RetryPolicy;

#[derive(Debug, Clone)]
pub enum Action {
    /// Index into the snapshot's clusters.
    Cluster(usize),
    Split(WeightedSplit),
    Direct {
        status: StatusCode,
        body: Bytes,
    },
}

#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub matcher: Matcher,
    pub action: Action,
    pub timeout: Option<Duration>,
    pub retry: Option<Arc<RetryPolicy>>,
    /// With a split: the header or cookie that keeps a user on one side.
    pub sticky: Option<sticky::Sticky>,
    /// `mirror:` with its cluster references resolved.
    pub mirror: Option<MirrorTargets>,
}

/// Indices of a mirror's shadow and noise clusters.
#[derive(Debug, Clone, Copy)]
pub struct MirrorTargets {
    pub shadow: usize,
    pub noise: Option<usize>,
}

/// Compiles one route; `clusters` maps names to indices. Errors name the key
/// below the route that is wrong.
pub fn compile(config: &RouteConfig, clusters: &HashMap<&str, usize>) -> Result<Route, MatchError> {
    let mut matcher = Matcher::compile(&config.matcher).map_err(|e| err(format!("match.{}", e.key), e.message))?;
    let lookup = |name: &str, key: String| {
        clusters.get(name).copied().ok_or_else(|| {
            let hint = crate::config::did_you_mean(name, clusters.keys().copied());
            err(key, format!("no cluster named {name:?}{hint}"))
        })
    };
    if let Some(destination) = &config.matcher.original_destination {
        let key = "match.original_destination.endpoint_of".to_string();
        matcher.endpoint_of = Some(lookup(&destination.endpoint_of, key)?);
    }
    let action = compile_action(config, &lookup)?;
    let sticky = match (&config.sticky, &action) {
        (None, _) => None,
        (Some(s), Action::Split(_)) => Some(sticky::Sticky::compile(s)?),
        (Some(_), _) => return Err(err("sticky", "sticky only applies to a route with split")),
    };
    let mirror = config.mirror.as_ref().map(|m| compile_mirror(m, &lookup)).transpose()?;
    if mirror.is_some() && matches!(action, Action::Direct { .. }) {
        return Err(err("mirror", "a direct_response route has nothing to mirror"));
    }
    let retry = config
        .retry
        .as_ref()
        .map(|r| RetryPolicy::compile(r).map_err(|(key, message)| err(format!("retry.{key}"), message)))
        .transpose()?;
    Ok(Route {
        name: Arc::from(config.name.as_str()),
        matcher,
        action,
        timeout: config.timeout,
        sticky,
        mirror,
        retry: retry.map(Arc::new),
    })
}

/// Resolves a cluster name to its index; the error names `key`.
type Lookup<'a> = dyn Fn(&str, String) -> Result<usize, MatchError> + 'a;

/// Exactly one of `cluster`, `split` and `direct_response`.
fn compile_action(config: &RouteConfig, lookup: &Lookup) -> Result<Action, MatchError> {
    match (&config.cluster, &config.split, &config.direct_response) {
        (Some(c), None, None) => Ok(Action::Cluster(lookup(c, "cluster".into())?)),
        (None, Some(split), None) => {
            let mut weights = Vec::with_capacity(split.len());
            for (i, s) in split.iter().enumerate() {
                weights.push((lookup(&s.cluster, format!("split[{i}].cluster"))?, s.weight));
            }
            let split = WeightedSplit::new(weights);
            if split.total() == 0 {
                return Err(err("split", "weights must add up to more than 0"));
            }
            Ok(Action::Split(split))
        }
        (None, None, Some(d)) => {
            let status = StatusCode::from_u16(d.status)
                .ok()
                .filter(|s| (200..=599).contains(&s.as_u16()))
                .ok_or_else(|| {
                    let message = format!("{} is not a status code between 200 and 599", d.status);
                    err("direct_response.status", message)
                })?;
            Ok(Action::Direct {
                status,
                body: Bytes::from(d.body.clone()),
            })
        }
        _ => Err(err("cluster", "set exactly one of cluster, split, direct_response")),
    }
}

/// A `mirror:` section checked, with its shadow and noise clusters resolved.
fn compile_mirror(m: &MirrorConfig, lookup: &Lookup) -> Result<MirrorTargets, MatchError> {
    crate::layer::mirror::check(m).map_err(|(key, message)| err(format!("mirror.{key}"), message))?;
    let noise = m.compare.as_ref().and_then(|c| c.noise_cluster.as_deref());
    Ok(MirrorTargets {
        shadow: lookup(&m.cluster, "mirror.cluster".into())?,
        noise: noise
            .map(|n| lookup(n, "mirror.compare.noise_cluster".into()))
            .transpose()?,
    })
}

impl AsRef<Route> for Route {
    fn as_ref(&self) -> &Route {
        self
    }
}

/// First route whose matcher accepts the request.
pub fn find<'a, T: AsRef<Route>>(
    routes: &'a [T],
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    identity: Option<&str>,
    endpoint_of: EndpointOf,
) -> Option<&'a T> {
    routes
        .iter()
        .find(|r| r.as_ref().matcher.matches(method, path, headers, identity, endpoint_of))
}

impl Route {
    /// The cluster whose endpoints `match.original_destination` names.
    pub fn matches_endpoints_of(&self) -> Option<usize> {
        self.matcher.endpoint_of
    }
}

impl Route {
    /// Every cluster this route sends to: its targets and mirror copies.
    pub fn clusters(&self) -> impl Iterator<Item = usize> + '_ {
        let targets: Vec<usize> = match &self.action {
            Action::Cluster(c) => vec![*c],
            Action::Split(split) => split.clusters().collect(),
            Action::Direct { .. } => Vec::new(),
        };
        let mirrors = self.mirror.iter().flat_map(|m| [Some(m.shadow), m.noise]).flatten();
        targets.into_iter().chain(mirrors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_match_wins_and_references_resolve() {
        let yaml = "[ { name: a, match: { path_prefix: /api }, cluster: x }, { name: b, cluster: y }, { name: c, direct_response: { status: 200 } } ]";
        let configs: Vec<RouteConfig> = serde_yaml_ng::from_str(yaml).unwrap();
        let clusters = HashMap::from([("x", 0), ("y", 1)]);
        let routes: Vec<_> = configs.iter().map(|c| compile(c, &clusters).unwrap()).collect();
        let h = HeaderMap::new();
        let found = |path| {
            &*find(&routes, &Method::GET, path, &h, None, &no_original_destination)
                .unwrap()
                .name
        };
        assert_eq!(found("/api/v1"), "a");
        assert_eq!(found("/other"), "b");
        let bad: RouteConfig = serde_yaml_ng::from_str("{ name: z, cluster: nope }").unwrap();
        assert_eq!(compile(&bad, &clusters).unwrap_err().key, "cluster");
        let both: RouteConfig =
            serde_yaml_ng::from_str("{ name: z, cluster: x, direct_response: { status: 200 } }").unwrap();
        assert!(compile(&both, &clusters).is_err());
    }
}
