//! Reporting a mismatch: the record `/compare` shows and, with `log:`, the
//! line appended to the mismatch log.
//!
//! Guarantees: each record is serialized whole before it is handed to the
//! app's line writer (`telemetry::lines`), which alone writes the file, so
//! concurrent shadows' records never interleave and no runtime worker blocks
//! on the file; at most `sample_per_second` records a second are logged; a
//! record that finds the writer's queue full is not logged (with a warning)
//! and never waits, and `/compare` and the metrics still count it.

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

use super::compare::{Differences, LogLimiter};
use super::shadow::ShadowHead;
use super::MirrorState;
use crate::config::mirror::CompareLogConfig;
use crate::telemetry::lines::{LineWriter, Sink};

/// Where a route's mismatches are logged, and how often.
pub(super) struct MismatchLog {
    sink: Sink,
    limiter: Mutex<LogLimiter>,
    lines: LineWriter,
}

impl MismatchLog {
    pub(super) fn new(config: &CompareLogConfig, lines: LineWriter) -> Self {
        Self {
            sink: Sink::File(Arc::<Path>::from(config.path.as_path())),
            limiter: Mutex::new(LogLimiter::new(config.sample_per_second, Instant::now())),
            lines,
        }
    }

    fn allows(&self, now: Instant) -> bool {
        self.limiter.lock().allow(now)
    }
}

/// One mismatch, as logged and shown by `/compare`.
#[derive(Serialize)]
struct MismatchRecord<'a> {
    time: String,
    route: &'a str,
    cluster: &'a str,
    method: &'a str,
    path: &'a str,
    primary_status: u16,
    shadow_status: u16,
    differences: Differences,
}

impl MirrorState {
    pub(super) fn report_mismatch(
        &self,
        head: &ShadowHead,
        primary_status: u16,
        shadow_status: u16,
        differences: Differences,
    ) {
        let record = MismatchRecord {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            route: &self.route,
            cluster: &self.targets.cluster,
            method: head.method.as_str(),
            path: head.uri.path(),
            primary_status,
            shadow_status,
            differences: differences.truncated(),
        };
        let Ok(value) = serde_json::to_value(&record) else {
            return;
        };
        if let Some(log) = self.log.as_ref().filter(|log| log.allows(Instant::now())) {
            let mut line = value.to_string().into_bytes();
            line.push(b'\n');
            if !log.lines.try_write(log.sink.clone(), line) {
                tracing::warn!(route = %self.route, "mismatch not logged: the log line writer is behind");
            }
        }
        self.metrics.remember(value);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use http::{Request, Response};
    use tower::{Layer, Service};

    use super::super::{MirrorLayer, ShadowTargets, DEFAULT_SHADOW_DEADLINE};
    use crate::config::mirror::MirrorConfig;
    use crate::core::body::{self, Body};
    use crate::core::error::ProxyError;
    use crate::core::service::HttpService;
    use crate::telemetry::lines;
    use crate::telemetry::mirror::MirrorResult;

    /// A JSON object of `fields` numbered fields, all set to `value`.
    fn document(fields: usize, value: u32) -> String {
        let fields: Vec<String> = (0..fields).map(|i| format!("\"field{i}\":{value}")).collect();
        format!("{{{}}}", fields.join(","))
    }

    fn answering(text: String) -> HttpService {
        HttpService::boxing(tower::service_fn(move |_req: Request<Body>| {
            let text = text.clone();
            async move { Ok::<_, ProxyError>(Response::new(body::full(text))) }
        }))
    }

    /// Many shadows differ at once on several worker threads: each record is
    /// one whole line of the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_mismatches_are_logged_one_whole_line_each() {
        const REQUESTS: usize = 200;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mismatches.jsonl");
        let yaml = format!(
            "{{ cluster: next, max_in_flight: {REQUESTS}, compare: {{ log: {{ path: {}, sample_per_second: 1000000 }} }} }}",
            path.display()
        );
        let config: MirrorConfig = serde_yaml_ng::from_str(&yaml).unwrap();
        let metrics = crate::telemetry::metrics::Metrics::new().unwrap();
        let board = metrics.mirror.route("r", "next");
        let targets = ShadowTargets {
            cluster: "next".into(),
            shadow: answering(document(20, 2)),
            noise: None,
            deadline: DEFAULT_SHADOW_DEADLINE,
        };
        // Room for every record: none may be dropped here.
        let (lines, writer) = lines::channel(REQUESTS);
        writer.start().unwrap();
        let layer = MirrorLayer::new("r", &config, targets, board.clone(), &lines).unwrap();
        let mirrored = HttpService::new(layer.layer(answering(document(20, 1))));
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..REQUESTS {
            let request = Request::get(format!("/item/{i}")).body(body::empty()).unwrap();
            let response = mirrored.clone().call(request);
            requests.spawn(async move {
                let response = response.await.unwrap();
                http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
            });
        }
        requests.join_all().await;
        // Each shadow holds an in-flight slot until it has reported.
        let all_slots = u32::try_from(REQUESTS).unwrap();
        let _done = layer.state.in_flight.acquire_many(all_slots).await.unwrap();
        assert_eq!(board.count(MirrorResult::Mismatch), REQUESTS as u64);
        lines.flush().await;
        let text = std::fs::read_to_string(&path).unwrap();
        let mut paths = HashSet::new();
        for line in text.lines() {
            let record: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: a broken line: {line}"));
            assert_eq!(record["differences"]["body"].as_array().map(Vec::len), Some(20));
            paths.insert(record["path"].as_str().unwrap().to_string());
        }
        assert_eq!(paths.len(), REQUESTS, "one line per mismatch");
        assert_eq!(text.lines().count(), REQUESTS);
    }
}
