//! Service discovery through a real weft: endpoints from a real DNS server
//! on loopback (`dns.rs`, `dns_server.rs`), from a watched file (`file.rs`)
//! and from Kubernetes EndpointSlices served by an in-test API server
//! (`kubernetes.rs`, `kube_api.rs`), changed while requests flow.

mod dns;
mod dns_server;
mod file;
mod kube_api;
mod kubernetes;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::support::*;

/// Requests sent one after another until stopped, each answer kept as (status, body).
pub struct Traffic {
    stop: Arc<AtomicBool>,
    seen: Arc<parking_lot::Mutex<Vec<(u16, String)>>>,
    task: JoinHandle<()>,
}

impl Traffic {
    pub fn start(url: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (stopping, log) = (stop.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let client = h1_client();
            while !stopping.load(Ordering::SeqCst) {
                let answer = get(&client, &url).await;
                log.lock().push(answer);
            }
        });
        Self { stop, seen, task }
    }

    /// The body of the latest answer.
    pub fn last_body(&self) -> Option<String> {
        self.seen.lock().last().map(|(_, body)| body.clone())
    }

    /// Stops and returns every answer, after at least one more request.
    pub async fn stop(self) -> Vec<(u16, String)> {
        let sent = self.seen.lock().len();
        eventually("one more request went through", async || self.seen.lock().len() > sent).await;
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        std::mem::take(&mut *self.seen.lock())
    }
}

/// Fails the test unless every answer was a 200.
pub fn assert_all_ok(answers: &[(u16, String)]) {
    let failed: Vec<_> = answers.iter().filter(|(status, _)| *status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(5)]
    );
}

/// The `/clusters` entry of cluster `name`.
pub async fn cluster_status(weft: &Weft, name: &str) -> Value {
    cluster_status_at(&weft.admin("/clusters"), name).await
}

/// The entry of cluster `name` in the `/clusters` answer at `url`.
pub async fn cluster_status_at(url: &str, name: &str) -> Value {
    let (_, body) = get(&h1_client(), url).await;
    let all: Value = serde_json::from_str(&body).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no cluster {name} in {all}"))
}

/// The addresses of cluster `name`'s endpoints, as `/clusters` lists them.
pub async fn endpoint_addresses(weft: &Weft, name: &str) -> Vec<String> {
    addresses_of(&cluster_status(weft, name).await)
}

/// The addresses of a `/clusters` entry's endpoints, sorted.
pub fn addresses_of(status: &Value) -> Vec<String> {
    let mut addresses: Vec<String> = status["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect();
    addresses.sort();
    addresses
}

/// An upstream answering `name` to every request.
pub fn named(listener: tokio::net::TcpListener, name: &'static str) -> Upstream {
    Upstream::serve(listener, move |_req| async move { http::Response::new(full(name)) })
}
