//! Kubernetes discovery: the weft binary, pointed by `KUBECONFIG` at the
//! in-test API server (`kube_api.rs`), follows a Service's EndpointSlices
//! while requests flow: slices added, changed and deleted, terminating
//! endpoints drained, zones from the slices, the last set kept while the API
//! server is down, a re-list after `410 Gone`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use super::kube_api::KubeApi;
use super::*;
use crate::cli::have_tool;
use crate::process::{wait_for_field, weft_run};
use crate::tls::Ca;

/// An endpoint's state, as the EndpointSlice controller writes it.
#[derive(Clone, Copy)]
enum Condition {
    Ready,
    /// Shutting down: not ready, still serving, terminating.
    Terminating,
    /// Conditions absent: ready, as the API documents.
    Unset,
}

/// One endpoint of a slice: its addresses, zone and state.
struct Ep<'a>(&'a [&'a Upstream], &'a str, Condition);

/// Slice `name` of Service `service`, its endpoints on port `http` = `port`
/// (after an unrelated `metrics` port, so the name has to pick).
fn slice(name: &str, service: &str, port: u16, endpoints: &[Ep]) -> EndpointSlice {
    let endpoint = |Ep(upstreams, zone, condition): &Ep| {
        let conditions = match condition {
            Condition::Ready => Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            Condition::Terminating => Some(EndpointConditions {
                ready: Some(false),
                serving: Some(true),
                terminating: Some(true),
            }),
            Condition::Unset => None,
        };
        Endpoint {
            addresses: upstreams.iter().map(|u| u.addr.ip().to_string()).collect(),
            zone: Some(zone.to_string()),
            conditions,
            ..Endpoint::default()
        }
    };
    let named_port = |name: &str, number: u16| EndpointPort {
        name: Some(name.into()),
        port: Some(i32::from(number)),
        protocol: Some("TCP".into()),
        ..EndpointPort::default()
    };
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("kubernetes.io/service-name".to_string(), service.to_string())].into()),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(endpoints.iter().map(endpoint).collect()),
        ports: Some(vec![named_port("metrics", 9), named_port("http", port)]),
    }
}

/// Upstreams answering their names, each on its own loopback address
/// (127.0.0.2, .3, ...) and all on one port, as a Service's pods are.
async fn pods(names: &[&'static str]) -> (u16, Vec<Upstream>) {
    'again: loop {
        let first = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for i in 1..names.len() {
            let ip = IpAddr::from([127, 0, 0, 2 + i as u8]);
            match TcpListener::bind(SocketAddr::new(ip, port)).await {
                Ok(listener) => listeners.push(listener),
                Err(_) => continue 'again, // taken on that address: another port
            }
        }
        let upstreams = listeners
            .into_iter()
            .zip(names)
            .map(|(l, name)| named(l, name))
            .collect();
        return (port, upstreams);
    }
}

/// The weft binary run with `KUBECONFIG` naming the test's API server.
struct WeftProcess {
    _child: Child,
    _dir: tempfile::TempDir,
    admin: String,
    public: String,
    /// Every stderr line after start-up.
    log: Arc<parking_lot::Mutex<Vec<String>>>,
}

/// weft's config, written into `dir`: listener `public` routes to cluster
/// `web`, one of `clusters`.
fn weft_yaml(dir: &std::path::Path, clusters: &str) -> std::path::PathBuf {
    let path = dir.join("weft.yaml");
    let listeners = "  - { name: public, address: 127.0.0.1:0, routes: [ { name: all, match: { path_prefix: / }, cluster: web } ] }";
    std::fs::write(&path, format!("drain_delay: 0s\n{}", config(listeners, clusters))).unwrap();
    path
}

impl WeftProcess {
    /// weft with `KUBECONFIG` naming `api`, its context in `context_namespace`.
    async fn start(api: &KubeApi, context_namespace: &str, clusters: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, api.kubeconfig(context_namespace)).unwrap();
        let mut command = weft_run(&[], &weft_yaml(dir.path(), clusters));
        command.env("KUBECONFIG", &kubeconfig);
        Self::spawn(command, dir).await
    }

    /// weft as in a pod: no kubeconfig, `KUBERNETES_SERVICE_HOST`/`_PORT`
    /// naming `api`, and a service-account mount (token, `ca.crt` = `ca`,
    /// `namespace`) at /var/run/secrets/kubernetes.io/serviceaccount, in a
    /// mount namespace of its own so the host's /run is untouched.
    async fn in_pod(api: &KubeApi, ca: &Ca, namespace: &str, clusters: &str) -> Option<Self> {
        Self::in_pod_with(api, clusters, |account| {
            std::fs::write(account.join("token"), super::kube_api::TOKEN).unwrap();
            std::fs::write(account.join("namespace"), namespace).unwrap();
            ca.write(account, "ca.crt");
        })
        .await
    }

    /// [`Self::in_pod`] with the service account's files made by `write_account`
    /// in the directory it is given (copied as they are: a FIFO stays one).
    async fn in_pod_with(api: &KubeApi, clusters: &str, write_account: impl FnOnce(&std::path::Path)) -> Option<Self> {
        if !have_tool("unshare", &["--mount", "true"], "kubernetes in-cluster credentials") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let account = dir.path().join("serviceaccount");
        std::fs::create_dir(&account).unwrap();
        write_account(&account);
        let account = account.to_str().unwrap();
        let mount = "mount -t tmpfs tmpfs /run && mkdir -p /run/secrets/kubernetes.io \
            && cp -r \"$0\" /run/secrets/kubernetes.io/serviceaccount && exec \"$@\"";
        let prefix = ["unshare", "--mount", "sh", "-c", mount, account];
        let mut command = weft_run(&prefix, &weft_yaml(dir.path(), clusters));
        command.env("KUBERNETES_SERVICE_HOST", "127.0.0.1");
        command.env("KUBERNETES_SERVICE_PORT", api.addr.port().to_string());
        command.env_remove("KUBECONFIG").env("HOME", dir.path());
        Some(Self::spawn(command, dir).await)
    }

    async fn spawn(mut command: Command, dir: tempfile::TempDir) -> Self {
        // weft's default log filter: the one whose lines are checked.
        let mut child = command.env_remove("RUST_LOG").spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let public = wait_for_field(&mut lines, "listening", "address=").await;
        let admin = wait_for_field(&mut lines, "weft started", "admin=").await;
        let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let kept = log.clone();
        // Keeps reading so weft never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().push(line);
            }
        });
        Self {
            _child: child,
            _dir: dir,
            admin,
            public: format!("http://{public}/"),
            log,
        }
    }

    async fn clusters(&self) -> Value {
        cluster_status_at(&format!("http://{}/clusters", self.admin), "web").await
    }

    /// The endpoints weft has for `web`, as `/clusters` shows them.
    async fn endpoints(&self) -> Vec<String> {
        addresses_of(&self.clusters().await)
    }

    async fn metric(&self, series: &str) -> f64 {
        let (_, text) = get(&h1_client(), &format!("http://{}/metrics", self.admin)).await;
        metric(&text, series)
    }

    fn log_lines_with(&self, needle: &str) -> usize {
        self.log.lock().iter().filter(|l| l.contains(needle)).count()
    }
}

fn at(upstreams: &[&Upstream]) -> Vec<String> {
    let mut addresses: Vec<String> = upstreams.iter().map(|u| u.addr.to_string()).collect();
    addresses.sort();
    addresses
}

/// Waits until the answers from index `from` on include one from each of `pods`.
async fn until_each_serves(what: &str, traffic: &Traffic, from: usize, pods: &[&str]) {
    eventually(what, async || {
        let seen: std::collections::BTreeSet<String> = traffic.seen.lock()[from..]
            .iter()
            .map(|(_, body)| body.clone())
            .collect();
        let all = pods.iter().all(|pod| seen.contains(*pod));
        all.then_some(()).ok_or(format!("{seen:?}"))
    })
    .await;
}

#[tokio::test]
async fn traffic_follows_the_services_endpointslices() {
    let (port, pods) = pods(&["u1", "u2", "u3", "u4", "other"]).await;
    let [u1, u2, u3, u4, other] = &pods[..] else {
        unreachable!()
    };
    let api = KubeApi::start("prod").await;
    // Two slices of the Service, merged; a slice of another Service, ignored.
    api.apply(slice("web-a", "web", port, &[Ep(&[u1], "zone-a", Condition::Ready)]));
    api.apply(slice("web-b", "web", port, &[Ep(&[u2], "zone-b", Condition::Unset)]));
    api.apply(slice(
        "other-a",
        "other",
        port,
        &[Ep(&[other], "zone-a", Condition::Ready)],
    ));
    let clusters = "  - name: web\n    discovery: { kubernetes: { service: web, namespace: prod, port: http } }";
    // The context names another namespace: the configured one wins.
    let weft = WeftProcess::start(&api, "default", clusters).await;
    let status = weft.clusters().await;
    assert_eq!(status["discovery"]["kind"], "kubernetes");
    assert_eq!(status["discovery"]["source"], "kubernetes:prod/web:http");
    assert_eq!(weft.endpoints().await, at(&[u1, u2]));

    let traffic = Traffic::start(weft.public.clone());
    until_each_serves("both slices' endpoints serve", &traffic, 0, &["u1", "u2"]).await;

    // A changed slice: a new endpoint with two addresses, both used.
    api.apply(slice(
        "web-a",
        "web",
        port,
        &[
            Ep(&[u1], "zone-a", Condition::Ready),
            Ep(&[u3, u4], "zone-a", Condition::Ready),
        ],
    ));
    let from = traffic.seen.lock().len();
    until_each_serves("the new endpoint's addresses serve", &traffic, from, &["u3", "u4"]).await;

    // u1 terminating: out of the set, no new requests.
    api.apply(slice(
        "web-a",
        "web",
        port,
        &[
            Ep(&[u1], "zone-a", Condition::Terminating),
            Ep(&[u3, u4], "zone-a", Condition::Ready),
        ],
    ));
    eventually("terminating u1 leaves the set", async || {
        weft.endpoints().await == at(&[u2, u3, u4])
    })
    .await;
    // Traffic sends one request at a time: the answer at this index may be
    // of a request sent before weft dropped u1; every later one was sent after.
    let from = traffic.seen.lock().len() + 1;
    // A deleted slice: its endpoints go.
    api.delete("web-b");
    eventually("the deleted slice's u2 leaves the set", async || {
        weft.endpoints().await == at(&[u3, u4])
    })
    .await;
    let after_delete = traffic.seen.lock().len() + 1;
    eventually("requests flow on u3 and u4", async || {
        traffic.seen.lock().len() > after_delete + 20
    })
    .await;

    let answers = traffic.stop().await;
    assert_all_ok(&answers);
    let late: Vec<&str> = answers[from..].iter().map(|(_, body)| body.as_str()).collect();
    assert!(!late.contains(&"u1"), "terminating u1 got a new request");
    assert!(
        !answers.iter().any(|(_, body)| body == "other"),
        "another Service's slice was used"
    );
    let after: Vec<&str> = answers[after_delete..].iter().map(|(_, body)| body.as_str()).collect();
    assert!(
        !after.contains(&"u2"),
        "u2 of the deleted slice got a request after it left"
    );
    assert_eq!(api.lists(), 1, "one list, then one watch carried every change");
}

#[tokio::test]
async fn the_last_set_stays_while_the_api_server_is_down_and_410_gone_relists() {
    let (port, pods) = pods(&["u1", "u2", "u3"]).await;
    let [u1, u2, u3] = &pods[..] else { unreachable!() };
    let api = KubeApi::start("prod").await;
    api.apply(slice("web-a", "web", port, &[Ep(&[u1], "zone-a", Condition::Ready)]));
    // No namespace: the kubeconfig context's (in a pod, the pod's own).
    let clusters = "  - name: web\n    discovery: { kubernetes: { service: web, port: http } }";
    let weft = WeftProcess::start(&api, "prod", clusters).await;
    assert_eq!(weft.endpoints().await, at(&[u1]));
    let traffic = Traffic::start(weft.public.clone());
    eventually("u1 serves", async || traffic.last_body().as_deref() == Some("u1")).await;
    eventually("weft watches", async || api.open_watches() == 1).await;
    api.bookmark();

    // The watch expires with a change no watch saw: only a re-list finds it.
    assert_eq!(api.lists(), 1);
    api.expire_after(slice("web-a", "web", port, &[Ep(&[u2], "zone-a", Condition::Ready)]));
    eventually("the re-listed u2 serves", async || {
        traffic.last_body().as_deref() == Some("u2")
    })
    .await;
    assert_eq!(api.lists(), 2, "410 Gone made weft list again");
    let errors = "weft_discovery_updates_total{cluster=\"web\",result=\"error\"} ";
    assert_eq!(
        weft.metric(errors).await,
        0.0,
        "an expired watch is routine, not a failure"
    );

    // Down: the last set keeps serving; failures are counted and logged once.
    api.set_down(true);
    eventually("weft counts failed retries", async || weft.metric(errors).await >= 3.0).await;
    let status = weft.clusters().await;
    assert_eq!(status["discovery"]["state"], "failing");
    assert_eq!(weft.endpoints().await, at(&[u2]));
    // One warning for the whole outage, however many retries failed.
    assert_eq!(weft.log_lines_with("discovery failing"), 1, "{:#?}", weft.log.lock());
    let complaints = weft.log_lines_with("WARN") + weft.log_lines_with("ERROR");
    assert_eq!(complaints, 1, "{:#?}", weft.log.lock());
    let during = traffic.seen.lock().len();
    eventually("requests flow during the outage", async || {
        traffic.seen.lock().len() > during + 20
    })
    .await;

    // Back up, with a change made meanwhile.
    api.apply(slice("web-a", "web", port, &[Ep(&[u3], "zone-a", Condition::Ready)]));
    api.set_down(false);
    eventually("u3 serves after the outage", async || {
        traffic.last_body().as_deref() == Some("u3")
    })
    .await;
    eventually("the state is ok again", async || {
        weft.clusters().await["discovery"]["state"] == "ok"
    })
    .await;
    let answers = traffic.stop().await;
    assert_all_ok(&answers);
}

#[tokio::test]
async fn zones_from_the_slices_keep_requests_in_the_local_zone() {
    let (port, pods) = pods(&["a1", "a2", "b1", "b2"]).await;
    let [a1, a2, b1, b2] = &pods[..] else { unreachable!() };
    // HTTPS, as in a cluster: kube's rustls client (ring) checks the server
    // against the kubeconfig's certificate-authority.
    let certs = tempfile::tempdir().unwrap();
    let api = KubeApi::start_tls("prod", &Ca::new("kube-ca"), certs.path()).await;
    api.apply(slice(
        "web-a",
        "web",
        port,
        &[
            Ep(&[a1], "zone-a", Condition::Ready),
            Ep(&[b1], "zone-b", Condition::Ready),
        ],
    ));
    api.apply(slice(
        "web-b",
        "web",
        port,
        &[
            Ep(&[a2], "zone-a", Condition::Ready),
            Ep(&[b2], "zone-b", Condition::Ready),
        ],
    ));
    let clusters = "  - name: web\n    zone_aware: { min_cluster_size: 2 }\n    discovery: { kubernetes: { service: web, namespace: prod, port: http } }\nnode: { zone: zone-a, callers: { zone-a: 1, zone-b: 1 } }";
    let weft = WeftProcess::start(&api, "prod", clusters).await;
    assert_eq!(weft.endpoints().await, at(&[a1, a2, b1, b2]));
    let zones: Vec<Value> = weft.clusters().await["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["zone"].clone())
        .collect();
    assert_eq!(zones.iter().filter(|z| **z == "zone-a").count(), 2, "{zones:?}");
    assert_eq!(weft.clusters().await["zone_routing"]["routing"], "all_local");

    let client = h1_client();
    let mut served = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..60 {
        let (status, body) = get(&client, &weft.public).await;
        assert_eq!(status, 200);
        *served.entry(body).or_default() += 1;
    }
    let remote = served.get("b1").unwrap_or(&0) + served.get("b2").unwrap_or(&0);
    assert_eq!(remote, 0, "requests left the local zone: {served:?}");
    assert_eq!(served.len(), 2, "both local endpoints serve: {served:?}");
}

#[tokio::test]
async fn in_a_pod_the_service_account_gives_credentials_and_namespace() {
    let (port, pods) = pods(&["u1"]).await;
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster-ca");
    let api = KubeApi::start_tls("team-a", &ca, certs.path()).await;
    api.apply(slice(
        "web-a",
        "web",
        port,
        &[Ep(&[&pods[0]], "zone-a", Condition::Ready)],
    ));
    // No namespace: the service account's (the server serves only team-a).
    let clusters = "  - name: web\n    discovery: { kubernetes: { service: web, port: http } }";
    let Some(weft) = WeftProcess::in_pod(&api, &ca, "team-a", clusters).await else {
        return;
    };
    assert_eq!(weft.endpoints().await, at(&[&pods[0]]));
    assert_eq!(get(&h1_client(), &weft.public).await, (200, "u1".to_string()));
}

#[tokio::test]
async fn a_service_account_token_that_is_a_fifo_fails_discovery_instead_of_hanging_it() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster-ca");
    let api = KubeApi::start_tls("team-a", &ca, certs.path()).await;
    let clusters = "  - name: web\n    discovery: { kubernetes: { service: web, port: http } }";
    let in_pod = WeftProcess::in_pod_with(&api, clusters, |account| {
        std::fs::write(account.join("namespace"), "team-a").unwrap();
        ca.write(account, "ca.crt");
        // A token nobody ever writes: reading it whole would wait forever.
        let status = std::process::Command::new("mkfifo")
            .arg(account.join("token"))
            .status()
            .unwrap();
        assert!(status.success());
    });
    let Some(weft) = in_pod.await else {
        return;
    };
    let errors = "weft_discovery_updates_total{cluster=\"web\",result=\"error\"} ";
    eventually("the refused token is counted as a failure", async || {
        weft.metric(errors).await >= 1.0
    })
    .await;
    // The error names the file and why.
    let status = weft.clusters().await;
    let error = status["discovery"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("serviceaccount/token: not a regular file"), "{status}");
    assert_eq!(weft.endpoints().await, Vec::<String>::new());
}
