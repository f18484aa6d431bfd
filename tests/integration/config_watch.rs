//! The config file watcher: an idle weft does not read its config file (not
//! even when others read it), a change is picked up once, and a broken file
//! is reported once, not on every poll.

use tokio::time::Duration;

use crate::support::*;

/// A short poll so that many polls pass quickly.
const POLL: Duration = Duration::from_millis(20);

fn direct(body: &str) -> String {
    config(
        &format!("  - {{ name: public, address: 127.0.0.1:0, routes: [ {{ name: r, direct_response: {{ status: 200, body: {body} }} }} ] }}"),
        "  []",
    )
}

/// Waits until the watcher has looked at the file `n` more times.
async fn polls_pass(weft: &Weft, n: u64) {
    let target = weft.app.config_checks() + n;
    eventually("the watcher polls", async || weft.app.config_checks() >= target).await;
}

/// `weft_config_reloads_total` with `result`.
fn reloads(text: &str, result: &str) -> f64 {
    metric(text, &format!("weft_config_reloads_total{{result=\"{result}\"}}"))
}

#[tokio::test]
async fn an_idle_weft_reads_its_config_only_when_it_changes() {
    let weft = Weft::start(&direct("v1")).await;
    let watcher = weft.app.spawn_watcher(POLL);
    polls_pass(&weft, 2).await;
    // The watcher's first check reads once (the file may have changed since it was loaded).
    let reads = weft.app.config_reads();
    assert!(reads <= 1, "{reads} reads at start");

    // Others reading the file (a backup agent, `cat`) and files written next
    // to it are no change.
    for _ in 0..5 {
        std::fs::read(&weft.path).unwrap();
    }
    std::fs::write(weft.dir.path().join("neighbour.log"), "x").unwrap();
    polls_pass(&weft, 20).await;
    assert_eq!(weft.app.config_reads(), reads, "the idle config file was read again");
    let text = metrics(&weft).await;
    assert_eq!((reloads(&text, "ok"), reloads(&text, "error")), (0.0, 0.0));

    // A change by rename is applied.
    let url = weft.url("public", "/").await;
    weft.replace(direct("v2"));
    eventually("the renamed file is applied", async || {
        get(&h1_client(), &url).await.1 == "v2"
    })
    .await;
    // So is an in-place rewrite of the same length, even within the file
    // system's timestamp granularity.
    weft.write(&direct("v3"));
    eventually("the rewrite is applied", async || {
        get(&h1_client(), &url).await.1 == "v3"
    })
    .await;
    watcher.abort();
}

#[tokio::test]
async fn a_broken_file_is_reported_once() {
    let weft = Weft::start(&direct("v1")).await;
    let watcher = weft.app.spawn_watcher(POLL);
    polls_pass(&weft, 2).await;
    // One invalid byte on line 4 (the listener's).
    let mut broken = direct("v2").into_bytes();
    let at = broken.windows(2).position(|w| w == b"v2").unwrap();
    broken[at] = 0xFF;
    weft.replace(&broken);
    eventually("the broken file is reported", async || {
        reloads(&metrics(&weft).await, "error") == 1.0
    })
    .await;
    let reads = weft.app.config_reads();
    for _ in 0..5 {
        std::fs::read(&weft.path).unwrap();
    }
    polls_pass(&weft, 20).await;
    assert_eq!(reloads(&metrics(&weft).await, "error"), 1.0, "reported more than once");
    assert_eq!(weft.app.config_reads(), reads);

    // The error names file and line; SIGHUP (a forced reload) reports it again.
    let err = weft.app.reload(true).await.unwrap_err();
    assert!(err.contains("weft.yaml:4: invalid UTF-8 at column "), "{err}");
    assert_eq!(reloads(&metrics(&weft).await, "error"), 2.0);
    assert_eq!(get(&h1_client(), &weft.url("public", "/").await).await.1, "v1");

    // A UTF-8 byte-order mark is accepted.
    weft.replace([b"\xEF\xBB\xBF".as_slice(), direct("v2").as_bytes()].concat());
    let url = weft.url("public", "/").await;
    eventually("the file with a BOM is applied", async || {
        get(&h1_client(), &url).await.1 == "v2"
    })
    .await;

    // A second document is refused at its line.
    weft.replace(format!("{}---\n{}", direct("v3"), direct("v4")));
    eventually("the two documents are refused", async || {
        reloads(&metrics(&weft).await, "error") == 3.0
    })
    .await;
    let err = weft.app.reload(true).await.unwrap_err();
    assert!(err.contains("weft.yaml:7: a second YAML document starts here"), "{err}");
    assert_eq!(get(&h1_client(), &url).await.1, "v2");
    watcher.abort();
}
