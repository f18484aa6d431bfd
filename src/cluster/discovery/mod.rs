//! Service discovery: a cluster's endpoints found in DNS (`dns.rs`), in a
//! watched file (`file.rs`) or in a Service's Kubernetes EndpointSlices
//! (`kubernetes.rs`) instead of the config.
//!
//! A [`Discovery`] is one source for one cluster. Its task looks (resolves,
//! reads), publishes each new good set on a `watch` channel, and the
//! cluster's monitor applies it as a diff (`Cluster::update_endpoints`). A
//! source only reports whole sets of [`EndpointSpec`]s (address, zone,
//! weight), so any source that can list its endpoints fits; the Kubernetes
//! one reports the endpoints that are ready and not terminating (a
//! terminating endpoint leaves the set: it gets no new requests and
//! finishes the ones it has).
//!
//! Guarantees:
//! - A failed look (resolution error, no records, unreadable or invalid
//!   file, lost EndpointSlice watch) never replaces the last good set: the cluster keeps serving it.
//!   The source retries with backoff (`policy::discovery`), logs once per
//!   change of state (starting, ok, failing) and counts every look in
//!   `weft_discovery_updates_total{result}`.
//! - The task starts on [`Discovery::start`], never when built, and stops
//!   when the last holder drops the `Discovery`. A reload reuses the
//!   `Discovery` of a cluster whose discovery block (and, for DNS, the
//!   `resolver` section) did not change, so its task and last set carry on
//!   even when the cluster itself is rebuilt; a changed block starts a new one.

mod dns;
mod file;
mod kubernetes;

pub use dns::answer_endpoints;
pub use kubernetes::ready_endpoints;

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant};

use super::endpoints::EndpointSpec;
use crate::config::discovery::{DiscoveryConfig, ResolverConfig};
use crate::config::schema::ClusterConfig;
use crate::policy::discovery::{Outcome, RefreshSchedule, SourceState, Step};
use crate::telemetry::discovery::DiscoveryMetrics;
use crate::telemetry::metrics::Metrics;

/// What a discovery has found so far.
#[derive(Clone)]
pub struct Published {
    /// The last good set, sorted; `None` until a look succeeds.
    pub endpoints: Option<Arc<[EndpointSpec]>>,
    /// Where the endpoints come from, e.g. `dns:web.default.svc:8080`.
    pub source: Arc<str>,
}

/// `/clusters`' view of a cluster's discovery.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DiscoveryStatus {
    /// `static`, `dns`, `file` or `kubernetes`.
    pub kind: &'static str,
    pub source: String,
    /// `starting`, `ok` or `failing` (`static` clusters: `ok`).
    pub state: &'static str,
    /// When the last look finished (RFC 3339), and its result: `ok` (a new
    /// set), `unchanged` or `error`.
    pub last_update: Option<String>,
    pub last_result: Option<&'static str>,
    pub last_error: Option<String>,
    /// When a look last succeeded (`ok` or `unchanged`).
    pub last_success: Option<String>,
}

impl DiscoveryStatus {
    /// The status of a cluster with fixed endpoints.
    pub fn fixed() -> Self {
        Self {
            kind: "static",
            source: "static".into(),
            state: SourceState::Ok.as_str(),
            last_update: None,
            last_result: None,
            last_error: None,
            last_success: None,
        }
    }
}

/// The state a discovery task shares with its `Discovery`.
struct Shared {
    cluster: Arc<str>,
    source: Arc<str>,
    published: watch::Sender<Published>,
    status: parking_lot::Mutex<DiscoveryStatus>,
    metrics: DiscoveryMetrics,
    /// True once the first look has finished, either way.
    looked: watch::Sender<bool>,
}

/// A task, aborted on drop.
struct Aborting(JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One cluster's endpoint source.
pub struct Discovery {
    config: DiscoveryConfig,
    /// Only DNS reads it; kept to tell whether a reload changed it.
    resolver: Option<ResolverConfig>,
    shared: Arc<Shared>,
    task: parking_lot::Mutex<Option<Aborting>>,
}

impl Discovery {
    /// The discovery of cluster `cluster` described by `config`; nothing
    /// runs until [`Discovery::start`].
    pub fn new(
        cluster: &str,
        config: &DiscoveryConfig,
        resolver: Option<&ResolverConfig>,
        metrics: &Metrics,
    ) -> Arc<Self> {
        let source: Arc<str> = match (&config.dns, &config.file, &config.kubernetes) {
            (Some(dns), _, _) => Arc::from(format!("dns:{}:{}", dns.name, dns.port)),
            (None, Some(file), _) => Arc::from(format!("file:{}", file.path.display())),
            (None, None, Some(k8s)) => {
                let namespace = k8s.namespace.as_deref().map(|n| format!("{n}/")).unwrap_or_default();
                Arc::from(format!("kubernetes:{namespace}{}:{}", k8s.service, k8s.port))
            }
            (None, None, None) => Arc::from(config.kind()),
        };
        let (published, _) = watch::channel(Published {
            endpoints: None,
            source: source.clone(),
        });
        let status = DiscoveryStatus {
            kind: config.kind(),
            source: source.to_string(),
            state: SourceState::Starting.as_str(),
            ..DiscoveryStatus::fixed()
        };
        Arc::new(Self {
            config: config.clone(),
            resolver: resolver.cloned(),
            shared: Arc::new(Shared {
                cluster: Arc::from(cluster),
                source,
                published,
                status: parking_lot::Mutex::new(status),
                metrics: metrics.discovery.cluster(cluster),
                looked: watch::channel(false).0,
            }),
            task: parking_lot::Mutex::new(None),
        })
    }

    /// Starts looking, once; must run on the tokio runtime.
    pub fn start(&self) {
        let mut task = self.task.lock();
        if task.is_some() {
            return;
        }
        let shared = self.shared.clone();
        let handle = match (&self.config.dns, &self.config.file, &self.config.kubernetes) {
            (Some(dns), _, _) => {
                let servers = self.resolver.as_ref().map(|r| r.servers.clone()).unwrap_or_default();
                tokio::spawn(dns::run(shared, dns.clone(), servers))
            }
            (None, Some(file), _) => tokio::spawn(file::run(shared, file.path.clone())),
            (None, None, Some(k8s)) => tokio::spawn(kubernetes::run(shared, k8s.clone())),
            // `weft check` refuses a block naming no kind; nothing to look at.
            (None, None, None) => return,
        };
        *task = Some(Aborting(handle));
    }

    /// Whether a reload may keep this discovery for cluster config `config`.
    pub fn serves(&self, config: &ClusterConfig, resolver: Option<&ResolverConfig>) -> bool {
        *self.shared.cluster == *config.name
            && config.discovery.as_ref() == Some(&self.config)
            && (self.config.dns.is_none() || self.resolver.as_ref() == resolver)
    }

    pub fn source(&self) -> &Arc<str> {
        &self.shared.source
    }

    /// The last good set (and its source).
    pub fn published(&self) -> Published {
        self.shared.published.borrow().clone()
    }

    /// Wakes on every new set.
    pub fn subscribe(&self) -> watch::Receiver<Published> {
        self.shared.published.subscribe()
    }

    pub fn status(&self) -> DiscoveryStatus {
        self.shared.status.lock().clone()
    }

    /// Waits until the first look has finished (found a set or failed).
    pub async fn first_look(&self) {
        let mut looked = self.shared.looked.subscribe();
        let _ = looked.wait_for(|done| *done).await;
    }
}

fn rfc3339_now() -> String {
    // Wall-clock time on purpose: shown to people and compared with other systems' clocks.
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl Shared {
    /// Publishes what a look found (a failure keeps the last set), counts,
    /// logs changes of state and returns when to look next.
    fn report(
        &self,
        found: Result<Vec<EndpointSpec>, String>,
        ttl: Option<Duration>,
        schedule: &mut RefreshSchedule,
    ) -> Step {
        let (outcome, error) = match found {
            Ok(mut specs) => {
                specs.sort();
                specs.dedup();
                let same = self.published.borrow().endpoints.as_deref() == Some(specs.as_slice());
                if !same {
                    self.published.send_modify(|p| p.endpoints = Some(specs.into()));
                }
                (if same { Outcome::Unchanged } else { Outcome::Changed }, None)
            }
            Err(e) => (Outcome::Failed, Some(e)),
        };
        let step = schedule.record(outcome, ttl, Instant::now(), &mut rand::rng());
        self.metrics.count(outcome.as_str());
        let now = rfc3339_now();
        if outcome != Outcome::Failed {
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.metrics.last_success.set(unix);
        }
        let kept = self.published.borrow().endpoints.as_ref().map_or(0, |e| e.len());
        match (step.entered, &error) {
            (Some(SourceState::Failing), Some(error)) => {
                tracing::warn!(cluster = %self.cluster, source = %self.source, %error, kept, "discovery failing; the last endpoint set stays in force")
            }
            (Some(SourceState::Ok), _) => {
                tracing::info!(cluster = %self.cluster, source = %self.source, endpoints = kept, "discovery ok")
            }
            _ => {}
        }
        let mut status = self.status.lock();
        status.state = schedule.state().as_str();
        status.last_result = Some(outcome.as_str());
        if outcome != Outcome::Failed {
            status.last_success = Some(now.clone());
        }
        status.last_update = Some(now);
        status.last_error = error;
        drop(status);
        self.looked.send_replace(true);
        step
    }
}

#[cfg(test)]
mod tests;
