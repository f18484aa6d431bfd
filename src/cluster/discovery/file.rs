//! File discovery (Envoy's file-based EDS, in weft's format): a YAML or JSON
//! document `endpoints: [ { address, zone, weight } ]`, watched the way the
//! config file is (`config::watch`: in-place edits, rename-overs and
//! ConfigMap `..data` symlink swaps, with a slow poll behind them).
//!
//! Every change event re-reads the file; an unreadable or invalid file is a
//! failed look (the last set stays) and is retried with backoff even when no
//! event comes. An empty `endpoints` list is a real answer: whoever writes
//! the file may scale the cluster to nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::time::Duration;

use super::Shared;
use crate::cluster::endpoints::EndpointSpec;
use crate::config::discovery::parse_endpoints_file;
use crate::config::files::{read_regular_text, MAX_ENDPOINTS_BYTES};
use crate::policy::discovery::{RefreshConfig, RefreshSchedule, SourceState};

/// The watcher's poll, behind its change notifications (as for the config).
const POLL: Duration = Duration::from_secs(2);
/// Retries of a failing file: from about half a second up to this.
const RETRY: RefreshConfig = RefreshConfig {
    refresh: Duration::from_secs(30),
    min_refresh: Duration::from_millis(500),
};

pub(super) async fn run(shared: Arc<Shared>, path: PathBuf) {
    let mut schedule = RefreshSchedule::new(RETRY);
    let mut changes = crate::config::watch::watch(&path, POLL);
    loop {
        let step = shared.report(read(&path).await, None, &mut schedule);
        let changed = if schedule.state() == SourceState::Failing {
            tokio::select! {
                changed = changes.changed() => changed,
                _ = tokio::time::sleep_until(step.next) => Some(()),
            }
        } else {
            changes.changed().await
        };
        if changed.is_none() {
            return;
        }
    }
}

async fn read(path: &Path) -> Result<Vec<EndpointSpec>, String> {
    let owned = path.to_path_buf();
    let text = tokio::task::spawn_blocking(move || read_regular_text(&owned, MAX_ENDPOINTS_BYTES))
        .await
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))??;
    let endpoints = parse_endpoints_file(path, &text).map_err(|e| e.to_string())?;
    Ok(endpoints.iter().map(EndpointSpec::from).collect())
}
