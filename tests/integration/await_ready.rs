//! `weft await`, the `postStart` hook of pods without native sidecars: it
//! returns 0 only once `/ready` answers 200, and 1 when the timeout passes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{Response, StatusCode};
use tokio::process::Command;

use crate::cli::{into_run, Run};
use crate::support::{config, full, Upstream, Weft};

async fn weft_await(admin: std::net::SocketAddr, timeout: &str) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "await",
            &format!("--admin-address={admin}"),
            &format!("--timeout={timeout}"),
        ])
        .output()
        .await
        .unwrap();
    into_run(output)
}

/// An admin stand-in answering 503 to the first `not_ready` polls, then 200.
async fn admin_ready_after(not_ready: usize) -> (Upstream, Arc<AtomicUsize>) {
    let polls = Arc::new(AtomicUsize::new(0));
    let seen = polls.clone();
    let server = Upstream::start(move |req| {
        let seen = seen.clone();
        async move {
            assert_eq!(req.uri().path(), "/ready");
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let status = if n < not_ready {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            Response::builder().status(status).body(full("")).unwrap()
        }
    })
    .await;
    (server, polls)
}

#[tokio::test]
async fn waits_through_503_until_ready() {
    let (server, polls) = admin_ready_after(3).await;
    let run = weft_await(server.addr, "60s").await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(polls.load(Ordering::SeqCst), 4, "returned before /ready said 200");
}

#[tokio::test]
async fn gives_up_after_the_timeout_saying_what_it_saw() {
    let (server, polls) = admin_ready_after(usize::MAX).await;
    let run = weft_await(server.addr, "1s").await;
    assert_eq!(run.code, 1);
    let expected = format!(
        "weft await: http://{}/ready not ready after 1s (last: status 503)\n",
        server.addr
    );
    assert_eq!(run.stderr, expected);
    assert!(polls.load(Ordering::SeqCst) >= 2, "it polled again before giving up");
}

#[tokio::test]
async fn returns_once_weft_itself_is_ready() {
    let weft = Weft::start(&config(
        "  - { name: l, address: 127.0.0.1:0, routes: [ { name: r, direct_response: { status: 200 } } ] }",
        "  []",
    ))
    .await;
    let run = weft_await(weft.app.admin_addr(), "60s").await;
    assert_eq!(run.code, 0, "{}", run.stderr);
}
