//! A cluster's background work: the outlier detector's timers (ejection
//! returns and the success-rate interval) and one active health-check loop
//! per endpoint.
//!
//! Guarantees: the work runs in one tokio task per cluster that holds only a
//! `Weak` reference between steps, so it never keeps a retired cluster alive
//! for longer than one probe; dropping the [`Monitor`] (held by the cluster)
//! aborts it. Clusters reused across reloads keep their monitor and state.
//! It is started explicitly (`Snapshot::start`), never by building a
//! cluster, and not at all when the cluster has neither
//! `outlier_detection` nor `health_check`.
//!
//! Source: Envoy runs the same two timers per cluster (`DetectorImpl`'s
//! interval timer and `HealthCheckerImplBase`'s per-host timers).

use std::sync::{Arc, Weak};

use futures_util::future::{join_all, BoxFuture, FutureExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::health_check::{first_delay, jittered, probe, HealthCheckState};
use super::Cluster;
use crate::config::health::HealthCheckConfig;

/// The cluster's background task; aborted on drop.
pub struct Monitor(JoinHandle<()>);

impl Drop for Monitor {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the background work of `cluster`, if it has any.
pub fn spawn(cluster: &Arc<Cluster>) -> Option<Monitor> {
    let weak = Arc::downgrade(cluster);
    let mut work: Vec<BoxFuture<'static, ()>> = Vec::new();
    if cluster.health.has_outlier_detection() {
        work.push(outlier_timers(weak.clone(), cluster.health.wake.clone()).boxed());
    }
    if let Some(config) = cluster.config.health_check.clone().filter(|_| cluster.http.is_some()) {
        let config = Arc::new(config);
        for idx in 0..cluster.endpoints.len() {
            work.push(health_checks(weak.clone(), idx, config.clone()).boxed());
        }
    }
    if work.is_empty() {
        return None;
    }
    Some(Monitor(tokio::spawn(join_all(work).map(drop))))
}

async fn outlier_timers(cluster: Weak<Cluster>, wake: Arc<Notify>) {
    loop {
        let Some(strong) = cluster.upgrade() else { return };
        let next = strong.health.tick(&strong.endpoints, Instant::now());
        drop(strong);
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

async fn health_checks(cluster: Weak<Cluster>, idx: usize, config: Arc<HealthCheckConfig>) {
    let mut state = HealthCheckState::default();
    let mut delay = first_delay(config.interval, &mut rand::rng());
    loop {
        tokio::time::sleep(delay).await;
        let Some(strong) = cluster.upgrade() else { return };
        let result = probe(&strong, idx, &config).await;
        if let Some(healthy) = state.record(result.is_ok(), &config) {
            let detail = result.err().unwrap_or_default();
            strong.health.set_healthy(&strong.endpoints, idx, healthy, &detail);
        }
        drop(strong);
        delay = jittered(config.interval, &mut rand::rng());
    }
}
