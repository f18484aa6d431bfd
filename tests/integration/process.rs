//! The `weft` binary as an operator runs it: signals reload and drain it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (bounded) for a stderr line containing `needle`.
fn wait_for(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    loop {
        match lines.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => continue,
            Err(e) => panic!("no log line with {needle:?}: {e}"),
        }
    }
}

#[test]
fn sighup_reloads_and_sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.yaml");
    let yaml = "admin: { address: 127.0.0.1:0 }\naccess_log: { enabled: false }\nlisteners:\n  - { name: public, address: 127.0.0.1:0, routes: [ { name: r, direct_response: { status: 200, body: v1 } } ] }\n";
    std::fs::write(&path, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    wait_for(&lines, "weft started");

    // A broken file on SIGHUP is refused; a good one is applied.
    std::fs::write(&path, yaml.replace("routes:", "rutes:")).unwrap();
    signal(child.id(), "HUP");
    let refused = wait_for(&lines, "config reload refused");
    assert!(refused.contains("weft.yaml:4"), "{refused}");
    std::fs::write(&path, yaml.replace("v1", "v2")).unwrap();
    signal(child.id(), "HUP");
    wait_for(&lines, "config reloaded");

    signal(child.id(), "TERM");
    wait_for(&lines, "draining");
    let mut status = None;
    for _ in 0..200 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("weft did not exit after SIGTERM");
    });
    assert!(status.success(), "{status:?}");
}
