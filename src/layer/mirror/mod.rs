//! Traffic mirroring with response comparison (`mirror:` on a route): a
//! sampled copy of each selected request goes to a shadow cluster, and with
//! `compare:` the shadow's answer is compared with the primary's and the
//! pair counted as match, mismatch or noise.
//!
//! Guarantees, all in service of "the shadow costs the client nothing":
//! - the primary request, response and error are passed through unchanged;
//!   bodies are copied by a tee while streaming (`tee.rs`), never held back;
//! - the shadow is sent from a spawned task once the primary has been handed
//!   to its cluster (with a body: once the primary has read all of it), and
//!   its answer never reaches the client;
//! - at most `max_in_flight` shadows per route run at once; a request over
//!   that is counted `dropped` and not mirrored (no queue); each shadow,
//!   comparison included, ends by the route's timeout (default 10 s), so a
//!   hanging shadow cluster frees its slot;
//! - request bodies over `max_body_bytes` are not mirrored, and response
//!   bodies are buffered for comparison only up to it (`skipped_large`);
//! - shadow requests carry `x-weft-shadow: true`;
//! - a mismatch is shown by `/compare` (the last few per route) and, with
//!   `compare.log`, appended to the mismatch log as one whole JSON line, at
//!   most `sample_per_second` a second, by the app's one line writer (never
//!   on a runtime worker, never interleaved with another record).
//!
//! The parts: `layer.rs` is the request path (selection, tees, starting the
//! shadow), `shadow.rs` the shadow task (sending the copies, comparing them
//! with `compare.rs` and `json_diff.rs`), `report.rs` the mismatch report,
//! and this file the route's mirror state built from its config.
//!
//! Like Envoy's `request_mirror_policies`, but the answer is compared rather
//! than thrown away (after Twitter's Diffy).

pub mod compare;
pub mod json_diff;
mod layer;
mod report;
mod shadow;
mod tee;

use std::sync::Arc;

use http::Method;
use tokio::sync::Semaphore;
use tokio::time::Duration;

use crate::config::mirror::MirrorConfig;
use crate::core::service::HttpService;
use crate::telemetry::lines::LineWriter;
use crate::telemetry::mirror::RouteCompare;
use compare::CompareSpec;
pub use layer::Mirror;
use report::MismatchLog;

/// How long a shadow may take when its route has no timeout.
pub const DEFAULT_SHADOW_DEADLINE: Duration = Duration::from_secs(10);

/// Marks a mirrored copy, so the new service can skip side effects.
pub const SHADOW_HEADER: &str = "x-weft-shadow";

/// Checks a `mirror:` section beyond its schema; errors name the key below `mirror`.
pub fn check(config: &MirrorConfig) -> Result<(), (String, String)> {
    let err = |key: String, message: String| Err((key, message));
    if !(0.0..=100.0).contains(&config.percent) {
        return err("percent".into(), "must be between 0 and 100".into());
    }
    if config.max_in_flight == 0 {
        return err("max_in_flight".into(), "must be at least 1".into());
    }
    for (i, m) in config.methods.iter().enumerate() {
        if Method::from_bytes(m.as_bytes()).is_err() || m.to_ascii_uppercase() != *m {
            return err(
                format!("methods[{i}]"),
                format!("{m:?} is not an upper-case HTTP method"),
            );
        }
    }
    if let Some(compare) = &config.compare {
        if let Err((key, message)) = CompareSpec::compile(compare) {
            return err(format!("compare.{key}"), message);
        }
        let rate = compare.log.as_ref().map_or(1.0, |l| l.sample_per_second);
        if !rate.is_finite() || rate < 0.0 {
            return err("compare.log.sample_per_second".into(), "must be 0 or more".into());
        }
    }
    Ok(())
}

/// Where a mirror sends its copies.
pub struct ShadowTargets {
    pub cluster: Arc<str>,
    pub shadow: HttpService,
    /// The second copy of the old version, for telling noise from mismatches.
    pub noise: Option<HttpService>,
    pub deadline: Duration,
}

#[derive(Clone)]
pub struct MirrorLayer {
    state: Arc<MirrorState>,
}

struct MirrorState {
    route: Arc<str>,
    targets: ShadowTargets,
    methods: Vec<Method>,
    percent: f64,
    max_body_bytes: usize,
    in_flight: Arc<Semaphore>,
    compare: Option<CompareSpec>,
    metrics: Arc<RouteCompare>,
    log: Option<MismatchLog>,
}

impl MirrorLayer {
    pub fn new(
        route: &str,
        config: &MirrorConfig,
        targets: ShadowTargets,
        metrics: Arc<RouteCompare>,
        lines: &LineWriter,
    ) -> Result<Self, String> {
        check(config).map_err(|(key, message)| format!("mirror.{key}: {message}"))?;
        let compare = config
            .compare
            .as_ref()
            .map(CompareSpec::compile)
            .transpose()
            .map_err(|(key, message)| format!("mirror.compare.{key}: {message}"))?;
        let log = config
            .compare
            .as_ref()
            .and_then(|c| c.log.as_ref())
            .map(|l| MismatchLog::new(l, lines.clone()));
        Ok(Self {
            state: Arc::new(MirrorState {
                route: Arc::from(route),
                targets,
                methods: config
                    .methods
                    .iter()
                    .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                    .collect(),
                percent: config.percent,
                max_body_bytes: usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX),
                in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
                compare,
                metrics,
                log,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::service::HttpService;

    /// A mirror layer on route `r` sending its shadows to `shadow` (cluster
    /// `next`), and the route's compare board.
    pub(in crate::layer::mirror) fn layer_with(
        config: &MirrorConfig,
        shadow: HttpService,
        deadline: Duration,
    ) -> (MirrorLayer, Arc<RouteCompare>) {
        let metrics = crate::telemetry::metrics::Metrics::new().unwrap();
        let board = metrics.mirror.route("r", "next");
        let targets = ShadowTargets {
            cluster: Arc::from("next"),
            shadow,
            noise: None,
            deadline,
        };
        // No writer runs: these tests log no mismatches.
        let (lines, _writer) = crate::telemetry::lines::channel(1);
        let layer = MirrorLayer::new("r", config, targets, board.clone(), &lines).unwrap();
        (layer, board)
    }

    #[test]
    fn check_names_the_bad_key() {
        let bad = |yaml: &str| check(&serde_yaml_ng::from_str(yaml).unwrap()).unwrap_err().0;
        assert_eq!(bad("{ cluster: n, percent: 101 }"), "percent");
        assert_eq!(bad("{ cluster: n, max_in_flight: 0 }"), "max_in_flight");
        assert_eq!(bad("{ cluster: n, methods: [get] }"), "methods[0]");
        assert_eq!(
            bad("{ cluster: n, compare: { ignore_json_paths: [nope] } }"),
            "compare.ignore_json_paths[0]"
        );
    }
}
