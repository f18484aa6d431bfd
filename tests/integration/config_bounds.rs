//! Bounds on what a config makes weft read and parse: a document nested
//! 100,000 deep is refused by its depth; a certificate path that is not a
//! regular file (`/dev/urandom`) is refused at once with its key; an empty
//! or comment-only file is refused on reload (the old config keeps
//! serving), and a start-up without listeners says that nothing will listen.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::cli::into_run;
use crate::process::{wait_for, weft_run};
use crate::support::*;

/// `weft check` on `yaml`, bounded by [`PATIENCE`]: a check that reads or
/// parses without end fails the test instead of hanging it.
async fn check(dir: &std::path::Path, yaml: &[u8]) -> crate::cli::Run {
    let path = dir.join("weft.yaml");
    std::fs::write(&path, yaml).unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["check", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("weft check did not finish")
        .unwrap();
    into_run(output)
}

#[tokio::test]
async fn a_document_nested_100k_deep_is_refused_by_its_depth() {
    let dir = tempfile::tempdir().unwrap();
    let deep = format!("listeners: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let run = check(dir.path(), deep.as_bytes()).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("weft.yaml:1:") && run.stderr.contains("deeper than 64 levels"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn a_certificate_that_is_not_a_regular_file_is_refused_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "admin: { address: 127.0.0.1:0 }
listeners:
  - name: public
    address: 127.0.0.1:0
    tls: { cert: /dev/urandom, key: /dev/urandom }
    routes: [ { name: r, direct_response: { status: 200 } } ]
";
    let run = check(dir.path(), yaml.as_bytes()).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("weft.yaml:5: listeners[0].tls: /dev/urandom: cannot read: not a regular file"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn an_empty_or_comment_only_file_is_refused_on_reload() {
    let yaml = config(
        "  - { name: public, address: 127.0.0.1:0, routes: [ { name: r, direct_response: { status: 200, body: still } } ] }",
        "  []",
    );
    let weft = Weft::start(&yaml).await;
    let url = weft.url("public", "/").await;
    for blank in ["", "# truncated\n\n  # by a bad rollout\n---\n"] {
        weft.write(blank);
        let refused = weft.app.reload(true).await.unwrap_err();
        assert!(refused.contains("empty or only comments"), "{refused}");
        assert_eq!(get(&h1_client(), &url).await, (200, "still".to_string()));
    }
    let text = metrics(&weft).await;
    assert_eq!(metric(&text, "weft_config_reloads_total{result=\"error\"}"), 2.0);
}

#[tokio::test]
async fn a_start_without_listeners_says_nothing_will_listen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.yaml");
    std::fs::write(&path, "# only a comment\nadmin: { address: 127.0.0.1:0 }\n").unwrap();
    let mut child = weft_run(&[], &path).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = wait_for(&mut lines, "nothing but the admin address will listen").await;
    assert!(line.contains("WARN"), "{line}");
    child.kill().await.unwrap();
}
