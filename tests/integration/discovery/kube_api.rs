//! A Kubernetes API server for one resource, inside the test: the list and
//! watch protocol of `discovery.k8s.io/v1` EndpointSlices in one namespace,
//! as the real API server speaks it over HTTP/1.1, so weft's real client
//! (kube's watcher) runs against it.
//!
//! - `GET /apis/discovery.k8s.io/v1/namespaces/NS/endpointslices` answers an
//!   `EndpointSliceList` (k8s-openapi types, serialized) of the slices the
//!   `labelSelector` (`key=value`) picks, with the list's resourceVersion.
//! - `?watch=true&resourceVersion=R` streams one JSON event per line:
//!   ADDED/MODIFIED/DELETED for every change after R (kept changes first,
//!   then live ones), BOOKMARK on request, and an ERROR event with a
//!   `Status` of code 410 (reason `Expired`) when R is older than the oldest
//!   version it still has, as after a compaction.
//! - Over HTTPS ([`KubeApi::start_tls`]) or plain HTTP; a request without
//!   the bearer token gets 401; another namespace 404.
//! - "Down" closes every connection, open watches included, and drops new
//!   ones at once, as a crashed API server behind a load balancer does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, Status, WatchEvent};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::support::*;
use crate::tls::Ca;

pub const TOKEN: &str = "weft-test-token";
const SERVICE_LABEL: &str = "kubernetes.io/service-name";

pub struct KubeApi {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
    /// The CA file a kubeconfig names, when serving HTTPS.
    ca: parking_lot::Mutex<Option<PathBuf>>,
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.task.abort();
        self.state.inner.lock().close_all();
    }
}

struct State {
    namespace: String,
    inner: parking_lot::Mutex<Inner>,
    lists: AtomicUsize,
}

#[derive(Default)]
struct Inner {
    version: u64,
    slices: BTreeMap<String, EndpointSlice>,
    /// Every change still kept: (resourceVersion, service label, event line).
    history: Vec<(u64, String, Bytes)>,
    /// A watch from a version before this one is told 410 Gone.
    oldest: u64,
    /// Open watches: the service they select and where their events go.
    watchers: Vec<(String, mpsc::UnboundedSender<Bytes>)>,
    connections: Vec<JoinHandle<()>>,
    down: bool,
}

impl Inner {
    fn close_all(&mut self) {
        self.watchers.clear();
        for connection in self.connections.drain(..) {
            connection.abort();
        }
    }

    /// Sends `line` to the open watches of `service`.
    fn broadcast(&mut self, service: &str, line: &Bytes) {
        self.watchers
            .retain(|(selected, tx)| selected != service || tx.send(line.clone()).is_ok());
    }
}

fn service_of(slice: &EndpointSlice) -> String {
    let labels = slice.metadata.labels.as_ref();
    labels.and_then(|l| l.get(SERVICE_LABEL)).cloned().unwrap_or_default()
}

fn line(event: &impl serde::Serialize) -> Bytes {
    let mut text = serde_json::to_vec(event).unwrap();
    text.push(b'\n');
    Bytes::from(text)
}

impl KubeApi {
    /// Serves plain HTTP (a kubeconfig may name an `http://` server).
    pub async fn start(namespace: &str) -> Self {
        Self::serve(namespace, None).await
    }

    /// Serves HTTPS, as every real API server does, with a certificate for
    /// 127.0.0.1 signed by `ca`.
    pub async fn start_tls(namespace: &str, ca: &Ca, dir: &Path) -> Self {
        let (cert, key) = ca.leaf(dir, "kube-apiserver", "kube-apiserver", None);
        let chain = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let api = Self::serve(namespace, Some(TlsAcceptor::from(Arc::new(config)))).await;
        *api.ca.lock() = Some(ca.write(dir, "kube-ca.pem"));
        api
    }

    async fn serve(namespace: &str, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            namespace: namespace.into(),
            inner: parking_lot::Mutex::new(Inner {
                version: 100,
                ..Inner::default()
            }),
            lists: AtomicUsize::new(0),
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = serving.clone();
                let mut inner = serving.inner.lock();
                if inner.down {
                    continue; // dropped: the connection closes at once
                }
                inner.connections.retain(|c| !c.is_finished());
                let tls = tls.clone();
                inner.connections.push(tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(state.answer(req)) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                            Err(_) => return,
                        },
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                    };
                }));
            }
        });
        let ca = parking_lot::Mutex::new(None);
        Self { addr, state, task, ca }
    }

    /// A kubeconfig for this server whose context's namespace is `namespace`.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        let cluster = match &*self.ca.lock() {
            Some(ca) => format!(
                "{{ server: \"https://{}\", certificate-authority: \"{}\" }}",
                self.addr,
                ca.display()
            ),
            None => format!("{{ server: \"http://{}\" }}", self.addr),
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {cluster}\nusers:\n- name: test\n  user: {{ token: {TOKEN} }}\ncontexts:\n- name: test\n  context: {{ cluster: test, user: test, namespace: {namespace} }}\ncurrent-context: test\n"
        )
    }

    /// Lists answered so far.
    pub fn lists(&self) -> usize {
        self.state.lists.load(Ordering::SeqCst)
    }

    /// Watches open now.
    pub fn open_watches(&self) -> usize {
        let mut inner = self.state.inner.lock();
        inner.watchers.retain(|(_, tx)| !tx.is_closed());
        inner.watchers.len()
    }

    /// Creates or replaces a slice (ADDED or MODIFIED to the watches).
    pub fn apply(&self, mut slice: EndpointSlice) {
        let mut inner = self.state.inner.lock();
        inner.version += 1;
        slice.metadata.resource_version = Some(inner.version.to_string());
        slice.metadata.namespace = Some(self.state.namespace.clone());
        let name = slice.metadata.name.clone().unwrap();
        let service = service_of(&slice);
        let event = match inner.slices.insert(name, slice.clone()) {
            None => WatchEvent::Added(slice),
            Some(_) => WatchEvent::Modified(slice),
        };
        let (version, line) = (inner.version, line(&event));
        inner.history.push((version, service.clone(), line.clone()));
        inner.broadcast(&service, &line);
    }

    /// Deletes a slice (DELETED, with its last state, to the watches).
    pub fn delete(&self, name: &str) {
        let mut inner = self.state.inner.lock();
        inner.version += 1;
        let mut slice = inner.slices.remove(name).unwrap();
        slice.metadata.resource_version = Some(inner.version.to_string());
        let service = service_of(&slice);
        let (version, line) = (inner.version, line(&WatchEvent::Deleted(slice)));
        inner.history.push((version, service.clone(), line.clone()));
        inner.broadcast(&service, &line);
    }

    /// Sends every open watch a BOOKMARK at the current version.
    pub fn bookmark(&self) {
        let inner = self.state.inner.lock();
        let bookmark = json!({
            "type": "BOOKMARK",
            "object": {
                "kind": "EndpointSlice",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": { "resourceVersion": inner.version.to_string() },
            },
        });
        let line = line(&bookmark);
        for (_, tx) in &inner.watchers {
            let _ = tx.send(line.clone());
        }
    }

    /// Compacts the history after `change` is made unseen by any watch: the
    /// open watches get `410 Gone` and end, and only a new list finds the
    /// change.
    pub fn expire_after(&self, change: EndpointSlice) {
        let mut inner = self.state.inner.lock();
        inner.version += 1;
        let mut slice = change;
        slice.metadata.resource_version = Some(inner.version.to_string());
        slice.metadata.namespace = Some(self.state.namespace.clone());
        inner.slices.insert(slice.metadata.name.clone().unwrap(), slice);
        inner.history.clear();
        inner.oldest = inner.version;
        let line = line(&gone(inner.version));
        for (_, tx) in inner.watchers.drain(..) {
            let _ = tx.send(line.clone());
        }
    }

    /// Takes the server down (every connection closed, new ones dropped) or back up.
    pub fn set_down(&self, down: bool) {
        let mut inner = self.state.inner.lock();
        inner.down = down;
        if down {
            inner.close_all();
        }
    }
}

/// The ERROR event the API server sends for a watch from a compacted version.
fn gone(version: u64) -> WatchEvent<EndpointSlice> {
    WatchEvent::ErrorStatus(Status {
        status: Some("Failure".into()),
        message: Some(format!("too old resource version: 1 ({version})")),
        reason: Some("Expired".into()),
        code: Some(410),
        ..Status::default()
    })
}

fn status(code: StatusCode, message: &str) -> Response<TestBody> {
    let body = Status {
        status: Some("Failure".into()),
        message: Some(message.into()),
        code: Some(i32::from(code.as_u16())),
        ..Status::default()
    };
    let mut response = Response::new(full(serde_json::to_vec(&body).unwrap()));
    *response.status_mut() = code;
    response
}

/// Decodes `%XX` escapes of a query value.
fn unescape(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&value[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// A watch's response body: one event line per frame, until the watch is closed.
struct Events(mpsc::UnboundedReceiver<Bytes>);

impl http_body::Body for Events {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}

impl State {
    fn answer(&self, req: Request<Incoming>) -> Response<TestBody> {
        let bearer = format!("Bearer {TOKEN}");
        if req.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes()) != Some(bearer.as_bytes()) {
            return status(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
        let path = format!("/apis/discovery.k8s.io/v1/namespaces/{}/endpointslices", self.namespace);
        if req.method() != http::Method::GET || req.uri().path() != path {
            return status(
                StatusCode::NOT_FOUND,
                "the server could not find the requested resource",
            );
        }
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_string(), unescape(v)))
            .collect();
        let selected = match query.get("labelSelector").map(|s| s.split_once('=')) {
            Some(Some((SERVICE_LABEL, service))) => service.to_string(),
            other => return status(StatusCode::BAD_REQUEST, &format!("unexpected labelSelector {other:?}")),
        };
        let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        if watch {
            let from = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
            self.watch(selected, from)
        } else {
            self.list(&selected)
        }
    }

    fn list(&self, service: &str) -> Response<TestBody> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        let inner = self.inner.lock();
        let list = k8s_openapi::List {
            items: inner
                .slices
                .values()
                .filter(|s| service_of(s) == service)
                .cloned()
                .collect(),
            metadata: ListMeta {
                resource_version: Some(inner.version.to_string()),
                ..ListMeta::default()
            },
        };
        Response::new(full(serde_json::to_vec(&list).unwrap()))
    }

    fn watch(&self, service: String, from: u64) -> Response<TestBody> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.inner.lock();
        if from < inner.oldest {
            let _ = tx.send(line(&gone(inner.version)));
        } else {
            for (version, of, line) in &inner.history {
                if *version > from && *of == service {
                    let _ = tx.send(line.clone());
                }
            }
            inner.watchers.push((service, tx));
        }
        Response::new(Events(rx).boxed())
    }
}
