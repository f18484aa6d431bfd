//! A cluster's background work: the outlier detector's timers (ejection
//! returns and the success-rate interval), one active health-check loop per
//! endpoint, and applying the endpoint sets its discovery publishes.
//!
//! Guarantees: the work runs in one tokio task per cluster (plus one per
//! health-checked endpoint) that holds only `Weak` references between steps,
//! so it never keeps a retired cluster or a removed endpoint alive for longer
//! than one probe; dropping the [`Monitor`] (held by the cluster) aborts it
//! and every probe loop. Clusters reused across reloads keep their monitor
//! and state. Health checks follow the endpoint set: a new endpoint gets its
//! probe loop (starting healthy, as Envoy's do once added), a removed one's
//! loop stops, the others keep theirs and their thresholds' progress. It is
//! started explicitly (`Snapshot::start`), never by building a cluster, and
//! not at all when the cluster has neither `outlier_detection`,
//! `health_check` nor `discovery`.
//!
//! Source: Envoy runs the same two timers per cluster (`DetectorImpl`'s
//! interval timer and `HealthCheckerImplBase`'s per-host timers).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::discovery::Published;
use super::endpoints::{Endpoint, EndpointId};
use super::health_check::{first_delay, jittered, probe, HealthCheckState};
use super::Cluster;
use crate::config::health::HealthCheckConfig;

/// A spawned task, aborted on drop.
struct Aborting(JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The cluster's background task; aborted on drop.
pub struct Monitor {
    _task: Aborting,
}

/// What the monitor of one cluster looks after.
struct Work {
    cluster: Weak<Cluster>,
    outlier_wake: Option<Arc<Notify>>,
    set_changed: Arc<Notify>,
    health_check: Option<Arc<HealthCheckConfig>>,
    discovered: Option<watch::Receiver<Published>>,
}

/// Starts the background work of `cluster`, if it has any.
pub fn spawn(cluster: &Arc<Cluster>) -> Option<Monitor> {
    let work = Work {
        cluster: Arc::downgrade(cluster),
        outlier_wake: cluster
            .health
            .has_outlier_detection()
            .then(|| cluster.health.wake.clone()),
        set_changed: cluster.set_changed.clone(),
        health_check: cluster
            .config
            .health_check
            .clone()
            .filter(|_| cluster.http.is_some())
            .map(Arc::new),
        discovered: cluster.discovery.as_ref().map(|d| d.subscribe()),
    };
    if work.outlier_wake.is_none() && work.health_check.is_none() && work.discovered.is_none() {
        return None;
    }
    Some(Monitor {
        _task: Aborting(tokio::spawn(run(work))),
    })
}

/// What woke the monitor.
enum Wake {
    /// An outlier deadline, an ejection or a new set: look at the state again.
    Look,
    /// The discovery published a set.
    Published,
}

async fn run(work: Work) {
    let Work {
        cluster: weak,
        outlier_wake,
        set_changed,
        health_check,
        mut discovered,
    } = work;
    let mut probes: HashMap<EndpointId, Aborting> = HashMap::new();
    // A set published between the cluster's build and this subscription.
    apply_discovered(&weak, discovered.as_mut());
    loop {
        let next = {
            let Some(cluster) = weak.upgrade() else { return };
            if let Some(config) = &health_check {
                follow_health_checks(&cluster, config, &mut probes, &weak);
            }
            match outlier_wake {
                Some(_) => cluster.health.tick(&cluster.endpoints, Instant::now()),
                None => None,
            }
        };
        let outlier_due = async {
            match (next, &outlier_wake) {
                (Some(at), Some(wake)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = wake.notified() => {}
                    }
                }
                (None, Some(wake)) => wake.notified().await,
                (_, None) => std::future::pending().await,
            }
        };
        let published = async {
            let closed = match discovered.as_mut() {
                Some(rx) => rx.changed().await.is_err(),
                None => true,
            };
            if closed {
                // The discovery is gone (or there is none): nothing more comes.
                std::future::pending::<()>().await;
            }
        };
        let woke = tokio::select! {
            _ = outlier_due => Wake::Look,
            _ = set_changed.notified() => Wake::Look,
            _ = published => Wake::Published,
        };
        if let Wake::Published = woke {
            apply_discovered(&weak, discovered.as_mut());
        }
    }
}

/// Applies the discovery's latest set to the cluster (a no-op when unchanged).
fn apply_discovered(cluster: &Weak<Cluster>, discovered: Option<&mut watch::Receiver<Published>>) {
    let (Some(rx), Some(cluster)) = (discovered, cluster.upgrade()) else {
        return;
    };
    rx.mark_unchanged();
    cluster.sync_discovered();
}

/// Starts a probe loop for each endpoint of the set that has none and
/// stops those of endpoints that left it.
fn follow_health_checks(
    cluster: &Cluster,
    config: &Arc<HealthCheckConfig>,
    probes: &mut HashMap<EndpointId, Aborting>,
    weak: &Weak<Cluster>,
) {
    let set = cluster.endpoints();
    probes.retain(|id, _| set.by_id(*id).is_some());
    for endpoint in set.iter() {
        probes.entry(endpoint.id).or_insert_with(|| {
            let task = health_checks(weak.clone(), Arc::downgrade(endpoint), config.clone());
            Aborting(tokio::spawn(task))
        });
    }
}

async fn health_checks(cluster: Weak<Cluster>, endpoint: Weak<Endpoint>, config: Arc<HealthCheckConfig>) {
    let mut state = HealthCheckState::default();
    let mut delay = first_delay(config.interval, &mut rand::rng());
    loop {
        tokio::time::sleep(delay).await;
        let (Some(cluster), Some(endpoint)) = (cluster.upgrade(), endpoint.upgrade()) else {
            return;
        };
        let result = probe(&cluster, &endpoint, &config).await;
        if let Some(healthy) = state.record(result.is_ok(), &config) {
            let detail = result.err().unwrap_or_default();
            cluster.set_healthy(&endpoint, healthy, &detail);
        }
        drop((cluster, endpoint));
        delay = jittered(config.interval, &mut rand::rng());
    }
}
