//! The accepted range of every numeric and duration key. Each range keeps a
//! value within what the running proxy can use (timers, semaphores, thread
//! counts, sums) without overflow or panic, and within what makes sense for
//! a sidecar; docs/config.md ("Ranges") lists them all, and a test keeps that
//! table and these checks in step. A value outside its range is a problem at
//! its key, like any other mistake.

use tokio::time::Duration;

/// One millisecond: the shortest timeout or interval (tokio's timer resolution).
pub const MS: Duration = Duration::from_millis(1);
/// One hour: the longest timeout or interval.
pub const HOUR: Duration = Duration::from_secs(3600);
/// The largest count (connections, requests, thresholds, weights).
pub const MILLION: u64 = 1_000_000;

/// A value that can be range-checked and shown in a message.
pub trait Bounded: PartialOrd + Copy {
    fn show(self) -> String;
    /// False for values no range holds (NaN, infinities).
    fn is_number(self) -> bool {
        true
    }
}

impl Bounded for u64 {
    fn show(self) -> String {
        self.to_string()
    }
}

impl Bounded for f64 {
    fn show(self) -> String {
        self.to_string()
    }
    fn is_number(self) -> bool {
        self.is_finite()
    }
}

impl Bounded for Duration {
    fn show(self) -> String {
        humantime::format_duration(self).to_string()
    }
}

/// Adds `(key, "must be between MIN and MAX")` to `problems` unless
/// `min <= value <= max`.
pub fn within<T: Bounded>(problems: &mut Vec<(String, String)>, key: String, value: T, min: T, max: T) {
    if !(value.is_number() && min <= value && value <= max) {
        problems.push((key, format!("must be between {} and {}", min.show(), max.show())));
    }
}

/// [`within`] for an integer of any width.
pub fn count(problems: &mut Vec<(String, String)>, key: String, value: impl TryInto<u64>, min: u64, max: u64) {
    within(problems, key, value.try_into().unwrap_or(u64::MAX), min, max);
}

/// [`within`] for an optional value (absent is always fine).
pub fn optional<T: Bounded>(problems: &mut Vec<(String, String)>, key: String, value: Option<T>, min: T, max: T) {
    if let Some(value) = value {
        within(problems, key, value, min, max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_show_both_bounds() {
        let mut problems = Vec::new();
        within(&mut problems, "a".into(), Duration::ZERO, MS, HOUR);
        within(&mut problems, "b".into(), f64::NAN, 0.0, 100.0);
        count(&mut problems, "c".into(), u64::MAX, 1, MILLION);
        count(&mut problems, "ok".into(), 5u32, 1, 5);
        assert_eq!(
            problems,
            [
                ("a".to_string(), "must be between 1ms and 1h".to_string()),
                ("b".to_string(), "must be between 0 and 100".to_string()),
                ("c".to_string(), "must be between 1 and 1000000".to_string()),
            ]
        );
    }

    /// Every numeric and duration key, each set past its range, one per line.
    const ALL_TOO_LARGE: &str = "runtime:
  worker_threads: 100000
drain_timeout: 1000h
drain_delay: 1000h
node:
  callers:
    zone-a: 2000000
tracing:
  otlp_endpoint: http://127.0.0.1:4318
  sample_ratio: 2
listeners:
  - name: l
    address: 127.0.0.1:1
    limits:
      max_request_headers_kb: 100000
      header_read_timeout: 1000h
      max_connections: 2000000
      max_requests_per_connection: 2000000000
      max_concurrent_streams: 100000
      max_request_headers: 100000
      max_request_body_bytes: 2000000000000
      stream_idle_timeout: 1000h
    quic:
      idle_timeout: 1000h
    original_destination: true
    idle_timeout: 1000h
    opaque_ports:
      - 70000
    protocol_detection_timeout: 1000h
    routes:
      - name: r
        cluster: c
        timeout: 1000h
        limits:
          max_request_body_bytes: 2000000000000
        retry:
          max_retries: 1000
          per_try_timeout: 1000h
          backoff:
            base: 1000h
            max: 1000h
          replay_buffer_bytes: 100000000
        mirror:
          cluster: c
          percent: 101
          max_body_bytes: 100000000
          max_in_flight: 100000
          compare:
            log:
              path: x.log
              sample_per_second: 100000
      - name: s
        split:
          - cluster: c
            weight: 2000000
      - name: d
        direct_response:
          status: 600
  - name: u
    address: 127.0.0.1:3
    protocol: udp
    cluster: uc
    udp:
      idle_timeout: 1000h
      max_sessions: 2000000
      max_datagram_bytes: 100000
clusters:
  - name: uc
    protocol: udp
    endpoints:
      - address: 127.0.0.1:4
  - name: c
    connect_timeout: 1000h
    idle_timeout: 1000h
    limits:
      max_response_headers_kb: 100000
    endpoints:
      - address: 127.0.0.1:2
        weight: 2000000
    outlier_detection:
      consecutive_5xx: 2000000
      consecutive_gateway_failure: 2000000
      interval: 1000h
      base_ejection_time: 1000h
      max_ejection_time: 1000h
      max_ejection_percent: 101
      success_rate:
        minimum_hosts: 2000000
        request_volume: 2000000
        stdev_factor: 2000
    health_check:
      path: /h
      interval: 1000h
      timeout: 1000h
      unhealthy_threshold: 2000000
      healthy_threshold: 2000000
    zone_aware:
      min_cluster_size: 2000000
      panic_threshold_percent: 101
    adaptive_concurrency:
      sample_aggregate_percentile: 101
      concurrency_update_interval: 1000h
      min_rtt_calc_interval: 1000h
      min_rtt_calc_request_count: 2000000
      min_rtt_buffer_percent: 2000
      jitter_percent: 101
      min_concurrency: 2000000
      min_concurrency_limit: 2000000
      max_concurrency_limit: 2000000
    retry_budget:
      percent: 2000
      min_retries_per_second: 2000000
      window: 1000h
    circuit_breaker:
      max_connections: 2000000
      max_pending_requests: 2000000
      max_requests: 2000000
  - name: d
    discovery:
      dns:
        name: web.local
        port: 0
        refresh: 1000h
        min_refresh: 1000h
  - name: k
    discovery:
      kubernetes:
        service: web
        port: 70000
  - name: o
    type: original_destination
    port_override: 70000
";

    /// `listeners[0].limits.max_connections` -> `listeners[].limits.max_connections`.
    fn pattern(key: &str) -> String {
        let mut out = String::new();
        let mut in_index = false;
        for c in key.chars() {
            match c {
                '[' => {
                    in_index = true;
                    out.push_str("[]");
                }
                ']' => in_index = false,
                _ if !in_index => out.push(c),
                _ => {}
            }
        }
        match out.strip_prefix("node.callers.") {
            Some(_) => "node.callers.<zone>".to_string(),
            None => out,
        }
    }

    /// The rows of docs/config.md's "Ranges" table: (key, range).
    fn documented() -> Vec<(String, String)> {
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md")).unwrap();
        let table = docs
            .split("\n## Ranges\n")
            .nth(1)
            .expect("docs/config.md has a Ranges section");
        table
            .lines()
            .take_while(|l| !l.starts_with("## "))
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let key = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                Some((key.to_string(), cells.get(2)?.to_string()))
            })
            .collect()
    }

    #[test]
    fn every_range_is_documented_and_reported_at_its_line() {
        let path = std::path::Path::new("weft.yaml");
        let loaded = crate::config::parse(path, ALL_TOO_LARGE).unwrap();
        let errors = loaded.errors(crate::config::problems(&loaded.config));
        let lines: Vec<&str> = ALL_TOO_LARGE.lines().collect();
        let mut checked = Vec::new();
        for e in &errors.0 {
            let line = e.line.and_then(|l| lines.get(l - 1)).expect("every error has a line");
            let leaf = e.key.rsplit(['.', ']']).next().unwrap_or_default();
            assert!(line.contains(leaf), "{e} points at {line:?}");
            let range = e
                .message
                .strip_prefix("must be between ")
                .unwrap_or_else(|| panic!("{e}"));
            checked.push((pattern(&e.key), range.replace(" and ", " to ")));
        }
        checked.sort();
        let mut documented = documented();
        documented.sort();
        assert_eq!(checked, documented);
    }
}
