//! The `weft` binary as an operator runs it: signals reload and drain it, and
//! its stdout carries the access log.
//! Its admin address (port 0 in the config) is read from its start-up log.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStderr, Command};

use crate::support::*;

pub fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Whether process `pid` has a SIGHUP handler installed: bit 0 (signal 1)
/// of `SigCgt` in /proc/PID/status. Until then SIGHUP would kill it.
fn catches_sighup(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let caught = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .map(|mask| u64::from_str_radix(mask.trim(), 16).unwrap())
        .unwrap();
    caught & 1 == 1
}

/// `weft run --config CONFIG` as these tests start it: info logs without
/// colour on a piped stderr, stdout discarded unless the caller pipes it,
/// killed when dropped. `prefix` runs it under another command
/// (`ip netns exec NS ...`).
pub fn weft_run(prefix: &[&str], config: &std::path::Path) -> Command {
    let weft = env!("CARGO_BIN_EXE_weft");
    let mut words = prefix.iter().copied().chain([weft, "run", "--config"]);
    let mut command = Command::new(words.next().unwrap_or(weft));
    command
        .args(words)
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Waits (bounded) for the next stderr line containing `needle`.
pub async fn wait_for(lines: &mut Lines<BufReader<ChildStderr>>, needle: &str) -> String {
    let found = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("weft's stderr ended without a line containing {needle:?}");
    };
    tokio::time::timeout(PATIENCE, found)
        .await
        .unwrap_or_else(|_| panic!("no log line with {needle:?}"))
}

/// Waits (bounded) for the next stderr line containing `needle` and gives
/// the value of its `key` field (`key` ends with `=`: `address=`, `admin=`).
pub async fn wait_for_field(lines: &mut Lines<BufReader<ChildStderr>>, needle: &str, key: &str) -> String {
    let line = wait_for(lines, needle).await;
    line.split_whitespace()
        .find_map(|field| field.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .to_string()
}

#[tokio::test]
async fn sighup_reloads_and_sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.yaml");
    let yaml = "admin: { address: 127.0.0.1:0 }\naccess_log: { enabled: false }\ndrain_delay: 0s\nlisteners:\n  - { name: public, address: 127.0.0.1:0, routes: [ { name: r, direct_response: { status: 200, body: v1 } } ] }\n";
    std::fs::write(&path, yaml).unwrap();
    let mut child = weft_run(&[], &path).spawn().unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let admin = wait_for_field(&mut lines, "weft started", "admin=").await;
    let admin_get = async |path: &str| {
        let (status, text) = get(&h1_client(), &format!("http://{admin}{path}")).await;
        assert_eq!(status, 200, "{path}: {text}");
        text
    };
    let effective_body = async || {
        let config: serde_json::Value = serde_json::from_str(&admin_get("/config").await).unwrap();
        config["listeners"][0]["routes"][0]["direct_response"]["body"].clone()
    };
    let reloads = async |result: &str| {
        let series = format!("weft_config_reloads_total{{result=\"{result}\"}}");
        metric(&admin_get("/metrics").await, &series)
    };
    assert_eq!(effective_body().await, "v1");
    // weft logs that it started a moment before it installs its handlers.
    eventually("weft handles SIGHUP", async || catches_sighup(pid)).await;

    // SIGHUP reloads even an unchanged file, which the file watcher (also
    // running) never does: only the signal can make this reload.
    signal(pid, "HUP");
    wait_for(&mut lines, "config reloaded").await;
    assert_eq!(reloads("ok").await, 1.0);

    // A broken file is refused; a good one is applied.
    std::fs::write(&path, yaml.replace("routes:", "rutes:")).unwrap();
    signal(pid, "HUP");
    let refused = wait_for(&mut lines, "config reload refused").await;
    assert!(refused.contains("weft.yaml:5"), "{refused}");
    assert_eq!(effective_body().await, "v1");
    std::fs::write(&path, yaml.replace("v1", "v2")).unwrap();
    signal(pid, "HUP");
    wait_for(&mut lines, "config reloaded").await;
    assert_eq!(effective_body().await, "v2");

    signal(pid, "TERM");
    wait_for(&mut lines, "draining").await;
    // Keep reading so a chatty drain never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("weft did not exit after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn run_refuses_what_it_cannot_run_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.yaml");
    let listener = "listeners:\n  - name: public\n    address: 127.0.0.1:0\n";
    let cases = [
        (
            format!(
                "admin: {{ address: 127.0.0.1:0 }}\nruntime: {{ worker_threads: 18446744073709551615 }}\n{listener}"
            ),
            "weft.yaml:2: runtime.worker_threads: must be between 1 and 1024",
        ),
        (
            format!("admin: {{ address: 127.0.0.1:0 }}\n{listener}    quic: {{ idle_timeout: 500000000000y }}\n"),
            "weft.yaml:5: listeners[0].quic.idle_timeout: must be between 1ms and 1h",
        ),
    ];
    for (yaml, expected) in cases {
        std::fs::write(&path, yaml).unwrap();
        let run = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["run", "--config"])
            .arg(&path)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(PATIENCE, run)
            .await
            .expect("weft run exits")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}

/// The access log as an operator reads it: weft's stdout, from a
/// multi-threaded runtime serving many requests at once. Every request
/// leaves one line, every line is whole JSON, and lines still queued when
/// weft is told to stop are written before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_leaves_one_whole_access_log_line_on_stdout() {
    const REQUESTS: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.yaml");
    let yaml = "admin: { address: 127.0.0.1:0 }\nruntime: { worker_threads: 4 }\nlisteners:\n  - { name: public, address: 127.0.0.1:0, routes: [ { name: r, direct_response: { status: 200, body: ok } } ] }\n";
    std::fs::write(&path, yaml).unwrap();
    let mut child = weft_run(&[], &path).stdout(Stdio::piped()).spawn().unwrap();
    let pid = child.id().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let access_log = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(line) = stdout.next_line().await.unwrap() {
            lines.push(line);
        }
        lines
    });
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // The listener's bound address (port 0 in the config).
    let addr = wait_for_field(&mut lines, "listening", "address=").await;
    // Signal handlers are installed before this line.
    wait_for(&mut lines, "weft started").await;

    let client = h1_client();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        let request = http::Request::get(format!("http://{addr}/item"))
            .header("x-request-id", format!("req-{i}"))
            .body(full(""))
            .unwrap();
        let client = client.clone();
        requests.spawn(async move { send(&client, request).await.0 });
    }
    assert!(requests.join_all().await.iter().all(|&status| status == 200));

    signal(pid, "TERM");
    wait_for(&mut lines, "draining").await;
    // Keep reading so a chatty drain never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("weft did not exit after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let access_log = access_log.await.unwrap();
    let mut ids = std::collections::HashSet::new();
    for line in &access_log {
        let record: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: a broken line: {line}"));
        assert_eq!(
            (record["status"].as_u64(), record["route"].as_str()),
            (Some(200), Some("r")),
            "{line}"
        );
        ids.insert(record["request_id"].as_str().unwrap().to_string());
    }
    assert_eq!(access_log.len(), REQUESTS);
    assert_eq!(ids, (0..REQUESTS).map(|i| format!("req-{i}")).collect());
}

/// A request whose route chose a cluster and whose upstream then failed:
/// the access log line on stdout and `weft_requests_total` name the cluster,
/// and the line names the endpoint the request went to.
#[tokio::test]
async fn an_upstream_failure_is_recorded_under_its_cluster_and_endpoint() {
    let dead = refused_addr();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.yaml");
    let yaml = format!(
        "admin: {{ address: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: public, address: 127.0.0.1:0, routes: [ {{ name: r, cluster: backend }} ] }}\nclusters:\n  - {{ name: backend, endpoints: [ {{ address: {} }} ] }}\n",
        dead.addr
    );
    std::fs::write(&path, yaml).unwrap();
    let mut child = weft_run(&[], &path).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = wait_for_field(&mut lines, "listening", "address=").await;
    let admin = wait_for_field(&mut lines, "weft started", "admin=").await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let (status, _) = get(&h1_client(), &format!("http://{addr}/x")).await;
    assert_eq!(status, 503);
    let line = tokio::time::timeout(PATIENCE, stdout.next_line())
        .await
        .expect("no access log line")
        .unwrap()
        .unwrap();
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["status"], 503, "{line}");
    assert_eq!(record["route"], "r", "{line}");
    assert_eq!(record["cluster"], "backend", "{line}");
    assert_eq!(record["endpoint"], dead.addr.to_string(), "{line}");
    assert!(
        record["error"].as_str().is_some_and(|e| e.contains("ConnectFailed")),
        "{line}"
    );
    let (_, text) = get(&h1_client(), &format!("http://{admin}/metrics")).await;
    let series =
        "weft_requests_total{cluster=\"backend\",listener=\"public\",protocol=\"http1\",route=\"r\",status=\"503\"}";
    assert_eq!(metric(&text, series), 1.0);
}
