//! HTTP/2 upstreams get the client's host as `:authority` and no `Host`
//! (RFC 9113 section 8.3.1), checked against a strict third-party server:
//! hypercorn (PyPI, installed by .ci/run), whose python-h2 refuses a request
//! whose `Host` differs from its `:authority`. Under CI a missing hypercorn
//! fails the test; elsewhere it is skipped, saying so.

use std::process::Stdio;

use http::Request;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/integration/peers/hypercorn_h2c.py");

/// hypercorn serving h2c on 127.0.0.1; killed on drop.
struct Hypercorn {
    port: u16,
    _child: Child,
}

/// Starts hypercorn, or `None` (test skipped) when it is not installed outside CI.
async fn hypercorn() -> Option<Hypercorn> {
    let installed = std::process::Command::new("python3")
        .args(["-c", "import hypercorn"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        assert!(
            std::env::var_os("CI").is_none(),
            "hypercorn is not installed (.ci/run installs it with pip)"
        );
        println!("SKIPPED: hypercorn is not installed (python3 -m pip install hypercorn)");
        return None;
    }
    let mut child = Command::new("python3")
        .arg(SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).await.unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("hypercorn printed {line:?}"));
    Some(Hypercorn { port, _child: child })
}

#[tokio::test]
async fn http2_upstreams_get_the_host_as_authority_and_no_host_header() {
    let Some(server) = hypercorn().await else { return };
    let yaml = config(
        "  - name: public
    address: 127.0.0.1:0
    routes:
      - { name: all, cluster: app }",
        &format!(
            "  - {{ name: app, protocol: http2, endpoints: [ {{ address: 127.0.0.1:{} }} ] }}",
            server.port
        ),
    );
    let weft = Weft::start(&yaml).await;
    // HTTP/1.1 downstream: its Host becomes the upstream's :authority.
    let req = Request::get(weft.url("public", "/").await)
        .header("host", "app.example:8080")
        .body(full(""))
        .unwrap();
    assert_eq!(
        send(&h1_client(), req).await,
        (200, "authority=app.example:8080 http_version=2\n".into())
    );
    // HTTP/2 downstream: its :authority goes through unchanged.
    let addr = weft.addr("public").await;
    assert_eq!(
        get(&h2_client(), &weft.url("public", "/").await).await,
        (200, format!("authority={addr} http_version=2\n"))
    );
}
