//! Capture end to end through weft: a "pod" namespace where `weft
//! init-iptables` wrote its rules and weft runs as the proxy uid (10001),
//! joined by a veth pair to a "node" namespace with remote servers. The
//! test plays the app (in the pod, as root) and the rest of the world (in
//! the node). A request went through weft when it carries the
//! `x-forwarded-for` weft adds; the servers report it.
//!
//! Checked: the app's HTTP, opaque TCP, server-first and TLS connections to
//! remote addresses land on weft's outbound listener and reach their
//! original destination (or, for a known host or a known service's endpoint,
//! the cluster routed to); weft's
//! own upstream connections are not captured again (exactly one outbound
//! connection per connection the app made); inbound connections and a
//! kubelet-style probe reach the app through weft; a skipped port and the
//! admin port bypass it; direct connections to weft's ports are closed and
//! counted. On SIGTERM: an in-flight captured request completes, `/ready`
//! turns 503, inbound connections are still accepted during `drain_delay`,
//! and the app's outbound connections are proxied until weft exits. The
//! config shipped in `deploy/sidecar/` carries a pod's traffic the same way.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::process::{Child, ChildStderr};
use tokio::sync::{mpsc, Semaphore};

use crate::capture_paths::listen;
use crate::cli::{have_tool, into_run};
use crate::netns::{self, link, NetNs};
use crate::process::{signal, wait_for, weft_run};
use crate::support::*;
use crate::tls::Ca;

const POD: &str = "10.198.0.1";
const NODE: &str = "10.198.0.2";
const POD6: &str = "fd00:198::1";
const NODE6: &str = "fd00:198::2";

/// weft's config in the pod: the sidecar's listeners, plus a known service
/// routed by host and a server-first port.
const CONFIG: &str = r#"admin: { address: "0.0.0.0:9901" }
access_log: { enabled: false }
drain_delay: 1h
listeners:
  - name: outbound
    address: 127.0.0.1:15001
    original_destination: true
    traffic_direction: outbound
    cluster: passthrough
    opaque_ports: [3306]
    protocol_detection_timeout: 1h
    routes: &outbound
      - { name: known, match: { authority: { exact: known.test } }, cluster: known }
      - { name: by-destination, match: { original_destination: { endpoint_of: known } }, cluster: known }
      - { name: passthrough, cluster: passthrough }
  - name: outbound6
    address: "[::1]:15001"
    original_destination: true
    traffic_direction: outbound
    cluster: passthrough
    routes: *outbound
  - name: inbound
    address: "[::]:15006"
    original_destination: true
    cluster: local-app
    routes: [ { name: app, cluster: local-app } ]
clusters:
  - { name: passthrough, type: original_destination }
  - { name: local-app, type: original_destination, address_override: 127.0.0.1 }
  - { name: known, endpoints: [ { address: "10.198.0.2:81" } ] }
"#;

/// The pod and node namespaces, with weft running in the pod.
struct Pod {
    pod: NetNs,
    node: NetNs,
    weft: Child,
    log: Lines<BufReader<ChildStderr>>,
    _dir: tempfile::TempDir,
}

impl Pod {
    /// Starts weft with `config`; `None` (after saying why) where
    /// namespaces or tools are missing.
    async fn start(test: &str, config: &str) -> Option<Pod> {
        let tools = ["iptables-nft-save", "setpriv"];
        if !(netns::available(test) && tools.iter().all(|t| have_tool(t, &["--version"], test))) {
            return None;
        }
        let (pod, node) = (NetNs::new(), NetNs::new());
        let (pod_addrs, node_addrs) = (
            [format!("{POD}/24"), format!("{POD6}/64")],
            [format!("{NODE}/24"), format!("{NODE6}/64")],
        );
        link(
            &pod,
            &pod_addrs.iter().map(String::as_str).collect::<Vec<_>>(),
            &node,
            &node_addrs.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let init = into_run(
            std::process::Command::new("ip")
                .args(["netns", "exec", &pod.name, env!("CARGO_BIN_EXE_weft"), "init-iptables"])
                .arg("--skip-inbound-ports=2222")
                .output()
                .unwrap(),
        );
        assert_eq!(init.code, 0, "{}", init.stderr);
        // weft runs as the proxy uid, which must be able to read its config.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.yaml");
        std::fs::write(&path, config).unwrap();
        for (file, mode) in [(dir.path(), 0o755), (path.as_path(), 0o644)] {
            std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        }
        let as_proxy_user = ["setpriv", "--reuid=10001", "--regid=10001", "--clear-groups"];
        let prefix = [&["ip", "netns", "exec", pod.name.as_str()][..], &as_proxy_user[..]].concat();
        let mut weft = weft_run(&prefix, &path).spawn().unwrap();
        let mut log = BufReader::new(weft.stderr.take().unwrap()).lines();
        wait_for(&mut log, "weft started").await;
        Some(Pod {
            pod,
            node,
            weft,
            log,
            _dir: dir,
        })
    }

    /// The value of one series of weft's metrics (0 when absent).
    async fn metric(&self, series: &str) -> f64 {
        let (status, text) = get_from(&self.pod, "127.0.0.1:9901", "admin", "/metrics").await;
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Connections weft accepted on `listener`.
    async fn accepted(&self, listener: &str) -> f64 {
        self.metric(&format!("weft_downstream_connections_total{{listener=\"{listener}\"}}"))
            .await
    }
}

/// A TCP connection from `ns` to `to`.
async fn connect_from(ns: &NetNs, to: &str) -> std::io::Result<TcpStream> {
    let to: SocketAddr = to.parse().unwrap();
    let socket = ns.enter(move || {
        if to.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .unwrap()
    });
    socket.connect(to).await
}

/// GET `path` with `Host: host` on a new connection from `ns` to `to`.
async fn get_from(ns: &NetNs, to: &str, host: &str, path: &str) -> (u16, String) {
    let stream = connect_from(ns, to)
        .await
        .unwrap_or_else(|e| panic!("connect {to}: {e}"));
    get_on(stream, host, path).await
}

/// GET `path` with `Host: host` on `stream`.
async fn get_on(stream: TcpStream, host: &str, path: &str) -> (u16, String) {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let req = Request::get(path).header("host", host).body(full("")).unwrap();
    let response = sender.send_request(req).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// GET `http://{authority}{path}` over HTTP/2 by prior knowledge on a new
/// connection from `ns` to `to`.
async fn get_h2_from(ns: &NetNs, to: &str, authority: &str, path: &str) -> (u16, String) {
    let stream = connect_from(ns, to).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let req = Request::get(format!("http://{authority}{path}"))
        .body(full(""))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// An HTTP server on `listener` answering `NAME host=HOST xff=X-FORWARDED-FOR`
/// (and ` over h2` for HTTP/2 requests, whose host is their `:authority`).
fn reporter(listener: TcpListener, name: &'static str) -> Upstream {
    Upstream::serve(listener, move |req: Request<Incoming>| async move {
        let header = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_string());
        let host = header("host").or_else(|| Some(req.uri().authority()?.to_string()));
        let xff = header("x-forwarded-for");
        let h2 = if req.version() == http::Version::HTTP_2 {
            " over h2"
        } else {
            ""
        };
        let [host, xff] = [host, xff].map(|v| v.unwrap_or_else(|| "-".into()));
        Response::new(full(format!("{name} host={host} xff={xff}{h2}")))
    })
}

/// One listener in `ns` on `addr`.
fn listener(ns: &NetNs, addr: &'static str) -> TcpListener {
    listen(ns, &[("", addr)]).pop().unwrap().1
}

/// A TCP server on `listener` that writes `greeting` first (if any), then
/// echoes what it reads.
fn tcp_server(listener: TcpListener, greeting: &'static [u8]) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                stream.write_all(greeting).await.unwrap();
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    })
}

/// A TLS echo server on `listener` with a certificate for `localhost` from
/// `ca` (made in `dir`).
fn tls_echo(listener: TcpListener, ca: &Ca, dir: &std::path::Path) -> tokio::task::JoinHandle<()> {
    let (cert, key) = ca.leaf(dir, "remote", "remote", None);
    let config = rustls::ServerConfig::builder_with_provider(weft::tls::crypto())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            CertificateDer::pem_file_iter(&cert)
                .unwrap()
                .map(Result::unwrap)
                .collect(),
            PrivateKeyDer::from_pem_file(&key).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let (mut read, mut write) = tokio::io::split(tls);
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    })
}

/// Reads from `stream` until `expected.len()` bytes arrived.
async fn read_exactly(stream: &mut (impl AsyncReadExt + Unpin), expected: &[u8]) {
    let mut buf = vec![0; expected.len()];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut buf))
        .await
        .expect("no answer")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&buf), String::from_utf8_lossy(expected));
}

/// Whether the other end closed `stream` (end of stream or a reset).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0; 1];
    matches!(
        tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn captured_connections_flow_through_weft_to_their_original_destinations() {
    let Some(p) = Pod::start("capture through weft", CONFIG).await else {
        return;
    };
    let _remote = reporter(listener(&p.node, "[::]:80"), "remote");
    let _known = reporter(listener(&p.node, "[::]:81"), "known");
    let _echo = tcp_server(listener(&p.node, "[::]:7000"), b"");
    let _greeter = tcp_server(listener(&p.node, "[::]:3306"), b"220 greeter\r\n");
    // The app listens on loopback only: weft reaches it by the address override.
    let _app = reporter(listener(&p.pod, "127.0.0.1:8080"), "app");
    let _skipped = reporter(listener(&p.pod, "[::]:2222"), "skipped");
    let (ca, certs) = (Ca::new("remote-ca"), tempfile::tempdir().unwrap());
    let _tls = tls_echo(listener(&p.node, "[::]:443"), &ca, certs.path());

    // Outbound HTTP: passed through to the original destination, or routed
    // to a known cluster by host or by an original destination among its
    // endpoints (its endpoint is port 81).
    let (node, node6) = (format!("{NODE}:80"), format!("[{NODE6}]:80"));
    let outbound = [
        (&node, "remote.test", "remote", POD),
        (&node6, "remote.test", "remote", POD6),
        (&node, "known.test", "known", POD),
        (&format!("{NODE}:81"), "other", "known", POD),
    ];
    for (to, host, server, from) in outbound {
        let expected = format!("{server} host={host} xff={from}");
        assert_eq!(get_from(&p.pod, to, host, "/").await, (200, expected), "app to {to}");
    }
    // HTTP/2 (gRPC, say) passes through as HTTP/2.
    let expected = format!("remote host=remote.test xff={POD} over h2");
    assert_eq!(get_h2_from(&p.pod, &node, "remote.test", "/").await, (200, expected));
    // Opaque TCP (the client speaks first), and a server-first protocol on
    // an opaque port: weft does not wait for the client's first bytes.
    let mut echo = connect_from(&p.pod, &format!("{NODE}:7000")).await.unwrap();
    echo.write_all(b"\x00binary\n").await.unwrap();
    read_exactly(&mut echo, b"\x00binary\n").await;
    let mut greeted = connect_from(&p.pod, &format!("{NODE}:3306")).await.unwrap();
    read_exactly(&mut greeted, b"220 greeter\r\n").await;
    greeted.write_all(b"EHLO\r\n").await.unwrap();
    read_exactly(&mut greeted, b"EHLO\r\n").await;
    // TLS is the app's own: passed through, the remote's certificate verified by the app.
    let client = tls_client_config(&ca.write(certs.path(), "ca.pem"), None, &[]);
    let tcp = connect_from(&p.pod, &format!("{NODE}:443")).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"over tls").await.unwrap();
    read_exactly(&mut tls, b"over tls").await;
    // Each of the app's connections reached weft once: weft's own upstream
    // connections (as uid 10001) were not captured again.
    assert_eq!(p.accepted("outbound").await, 7.0);
    assert_eq!(p.accepted("outbound6").await, 1.0);
    for (cluster, route) in [
        ("known", "known"),
        ("known", "by-destination"),
        ("passthrough", "passthrough"),
    ] {
        let series = format!("weft_requests_total{{cluster=\"{cluster}\",listener=\"outbound\",protocol=\"http1\",route=\"{route}\",status=\"200\"}}");
        assert_eq!(p.metric(&series).await, 1.0, "{route}");
    }

    // Inbound: from the node, as the kubelet probes; through weft to the app.
    for to in [format!("{POD}:8080"), format!("[{POD6}]:8080")] {
        let from = if to.starts_with('[') { NODE6 } else { NODE };
        let expected = format!("app host=probe xff={from}");
        assert_eq!(
            get_from(&p.node, &to, "probe", "/healthz").await,
            (200, expected),
            "probe of {to}"
        );
    }
    assert_eq!(p.accepted("inbound").await, 2.0);
    // A skipped port and the admin port bypass weft.
    let skipped = get_from(&p.node, &format!("{POD}:2222"), "direct", "/").await;
    assert_eq!(skipped, (200, "skipped host=direct xff=-".to_string()));
    assert_eq!(
        get_from(&p.node, &format!("{POD}:9901"), "kubelet", "/ready").await.0,
        200
    );
    assert_eq!(p.accepted("inbound").await, 2.0, "bypassing connections reached weft");

    // Direct connections to weft's own ports are closed and counted.
    let loops = |listener: &str| format!("weft_original_destination_loops_total{{listener=\"{listener}\"}}");
    assert_eq!(p.metric(&loops("outbound")).await, 0.0);
    for (ns, to, listener) in [
        (&p.pod, "127.0.0.1:15001", "outbound"),
        (&p.node, "10.198.0.1:15006", "inbound"),
    ] {
        let mut direct = connect_from(ns, to).await.unwrap();
        let _ = direct.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(closed(&mut direct).await, "direct connection to {to} was served");
        assert_eq!(p.metric(&loops(listener)).await, 1.0, "{to}");
    }
}

/// An app server whose `/slow` answers are held until the semaphore closes;
/// each arrival at `/slow` is announced.
fn held_app(listener: TcpListener) -> (Upstream, mpsc::UnboundedReceiver<()>, Arc<Semaphore>) {
    let (arrived, arrivals) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let held = gate.clone();
    let app = Upstream::serve(listener, move |req: Request<Incoming>| {
        let (arrived, held) = (arrived.clone(), held.clone());
        async move {
            if req.uri().path() == "/slow" {
                let _ = arrived.send(());
                let _ = held.acquire().await;
            }
            Response::new(full(format!("app {}", req.uri().path())))
        }
    });
    (app, arrivals, gate)
}

#[tokio::test]
async fn sigterm_keeps_accepting_for_the_drain_delay_and_proxies_outbound_to_the_end() {
    let Some(mut p) = Pod::start("shutdown under capture", CONFIG).await else {
        return;
    };
    let _remote = reporter(listener(&p.node, "[::]:80"), "remote");
    let (_app, mut arrivals, gate) = held_app(listener(&p.pod, "127.0.0.1:8080"));
    let pod_app = format!("{POD}:8080");
    let remote = format!("{NODE}:80");
    let through_weft = format!("remote host=r xff={POD}");

    // A captured request in flight when SIGTERM arrives.
    let stream = connect_from(&p.node, &pod_app).await.unwrap();
    let in_flight = tokio::spawn(async move { get_on(stream, "app", "/slow").await });
    tokio::time::timeout(PATIENCE, arrivals.recv()).await.unwrap().unwrap();
    let pid = p.weft.id().unwrap();
    signal(pid, "TERM");
    wait_for(&mut p.log, "accepting until the drain delay is over").await;
    let ready = format!("{POD}:9901");
    assert_eq!(get_from(&p.node, &ready, "kubelet", "/ready").await.0, 503);
    // During the delay inbound connections are still accepted, and served.
    assert_eq!(
        get_from(&p.node, &pod_app, "app", "/fast").await,
        (200, "app /fast".into())
    );
    assert_eq!(get_from(&p.pod, &remote, "r", "/").await, (200, through_weft.clone()));

    // SIGINT ends the delay: inbound stops accepting (the request in flight
    // holds the drain open) while the app's outbound connections are still proxied.
    signal(pid, "INT");
    wait_for(&mut p.log, "draining").await;
    eventually("inbound connections are refused", async || {
        connect_from(&p.node, &pod_app).await.is_err()
    })
    .await;
    assert_eq!(get_from(&p.pod, &remote, "r", "/").await, (200, through_weft));
    gate.close();
    assert_eq!(in_flight.await.unwrap(), (200, "app /slow".into()));
    tokio::spawn(async move { while let Ok(Some(_)) = p.log.next_line().await {} });
    let status = tokio::time::timeout(PATIENCE, p.weft.wait())
        .await
        .expect("weft did not exit after its drain")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn the_shipped_sidecar_config_carries_the_pods_traffic() {
    let config_map = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/sidecar/weft-config.yaml");
    let config_map: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(config_map).unwrap()).unwrap();
    let config = config_map["data"]["weft.yaml"].as_str().unwrap();
    let Some(p) = Pod::start("the shipped sidecar config", config).await else {
        return;
    };
    let _remote = reporter(listener(&p.node, "[::]:80"), "remote");
    let _greeter = tcp_server(listener(&p.node, "[::]:3306"), b"220 greeter\r\n");
    let _app = reporter(listener(&p.pod, "127.0.0.1:8080"), "app");

    let out = get_from(&p.pod, &format!("{NODE}:80"), "remote.test", "/").await;
    assert_eq!(out, (200, format!("remote host=remote.test xff={POD}")));
    let mut greeted = connect_from(&p.pod, &format!("{NODE}:3306")).await.unwrap();
    read_exactly(&mut greeted, b"220 greeter\r\n").await;
    let probe = get_from(&p.node, &format!("{POD}:8080"), "probe", "/healthz").await;
    assert_eq!(probe, (200, format!("app host=probe xff={NODE}")));
    assert_eq!(
        get_from(&p.node, &format!("{POD}:9901"), "kubelet", "/ready").await.0,
        200
    );
    let mut direct = connect_from(&p.pod, "127.0.0.1:15001").await.unwrap();
    assert!(closed(&mut direct).await, "a direct connection to 15001 was served");
    assert_eq!(p.accepted("outbound").await, 2.0);
    assert_eq!(p.accepted("inbound").await, 1.0);
}
