//! Reloads that change a listener's settings on the same address, one key at
//! a time, each written by an atomic rename: the port never refuses a
//! connection during or after the reload, new connections get the new
//! setting, open ones finish on the old. And a listener task that dies turns
//! `/ready` to 503 and is logged. A reload refused because a bind fails
//! leaves the old listeners serving.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;
use crate::tls::{served_cn, Ca};

/// Keeps opening connections to an address and records every refusal.
struct Prober {
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Prober {
    fn start(addr: SocketAddr) -> Self {
        let (stop, attempts) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let task = tokio::spawn({
            let (stop, attempts) = (stop.clone(), attempts.clone());
            async move {
                let mut refused = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    if let Err(e) = TcpStream::connect(addr).await {
                        refused.push(e.to_string());
                    }
                    attempts.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                refused
            }
        });
        Self { stop, attempts, task }
    }

    /// Stops after a few more attempts and asserts none was refused.
    async fn finish(self) {
        let target = self.attempts.load(Ordering::SeqCst) + 3;
        eventually("the prober connects after the reload", async || {
            self.attempts.load(Ordering::SeqCst) >= target
        })
        .await;
        self.stop.store(true, Ordering::SeqCst);
        let refused = self.task.await.unwrap();
        assert!(refused.is_empty(), "connections refused around the reload: {refused:?}");
    }
}

/// Replaces the config by an atomic rename and reloads it while a prober
/// keeps connecting to `addr`; no connection may be refused.
async fn reload_by_rename(weft: &Weft, yaml: &str, addr: SocketAddr) {
    let prober = Prober::start(addr);
    weft.replace(yaml);
    assert!(weft.app.reload(false).await.unwrap());
    prober.finish().await;
}

/// One listener whose only route answers `body`.
fn listener(name: &str, address: &str, settings: &str, body: &str) -> String {
    format!(
        "  - name: {name}\n    address: {address}\n{settings}    routes:\n      - {{ name: r, direct_response: {{ status: 200, body: {body} }} }}\n"
    )
}

/// Reads what the server sends until it closes (bounded).
async fn read_until_closed(stream: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection was not closed");
    String::from_utf8_lossy(&out).into_owned()
}

async fn connections_accepted(weft: &Weft, listener: &str) -> bool {
    let line = format!("weft_downstream_connections_total{{listener=\"{listener}\"}} 1\n");
    metrics(weft).await.contains(&line)
}

#[tokio::test]
async fn changed_limits_keep_the_port_and_apply_to_new_connections() {
    let yaml = |limits: &str, body: &str| {
        config(
            &listener("public", "127.0.0.1:0", &format!("    limits: {limits}\n"), body),
            "  []",
        )
    };
    let weft = Weft::start(&yaml("{ header_read_timeout: 1h }", "v1")).await;
    let addr = weft.addr("public").await;
    let url = weft.url("public", "/").await;
    // A request under way on the old settings.
    let mut old = TcpStream::connect(addr).await.unwrap();
    old.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n").await.unwrap();
    eventually("the first connection is accepted", async || {
        connections_accepted(&weft, "public").await
    })
    .await;

    // limits.header_read_timeout (and the route's body).
    reload_by_rename(&weft, &yaml("{ header_read_timeout: 200ms }", "v2"), addr).await;
    assert_eq!(weft.addr("public").await, addr);
    assert_eq!(get(&h1_client(), &url).await, (200, "v2".into()));
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        read_until_closed(&mut silent).await,
        "",
        "new connections get the new timeout"
    );
    old.write_all(b"\r\n").await.unwrap();
    let answer = read_until_closed(&mut old).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the old connection finishes its request: {answer}"
    );

    // limits.max_request_headers_kb.
    let big = format!(
        "GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    assert!(raw(addr, big.as_bytes()).await.starts_with("HTTP/1.1 200"));
    reload_by_rename(&weft, &yaml("{ max_request_headers_kb: 8 }", "v3"), addr).await;
    assert!(raw(addr, big.as_bytes()).await.starts_with("HTTP/1.1 431"));

    // limits.max_connections: with one slot a held connection blocks the
    // next; with two, both are served.
    reload_by_rename(&weft, &yaml("{ max_connections: 1 }", "v4"), addr).await;
    reload_by_rename(&weft, &yaml("{ max_connections: 2 }", "v5"), addr).await;
    let (held, second) = (h1_client(), h1_client());
    assert_eq!(get(&held, &url).await, (200, "v5".into()));
    let served = tokio::time::timeout(PATIENCE, get(&second, &url)).await;
    assert_eq!(served.expect("a second connection is served"), (200, "v5".into()));
}

#[tokio::test]
async fn tls_added_and_changed_keeps_the_port() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("reload-ca");
    ca.leaf(dir.path(), "first", "first", None);
    ca.leaf(dir.path(), "second", "second", None);
    let ca_path = ca.write(dir.path(), "ca.pem");
    let yaml = |settings: &str| config(&listener("public", "127.0.0.1:0", settings, "ok"), "  []");
    let app = start_in(dir.path(), &yaml("")).await;
    let weft = Weft {
        path: dir.path().join("weft.yaml"),
        app,
        dir,
    };
    let addr = weft.addr("public").await;
    assert_eq!(get(&h1_client(), &format!("http://{addr}/")).await.0, 200);
    reload_by_rename(&weft, &yaml("    tls: { cert: first.pem, key: first.key }\n"), addr).await;
    assert_eq!(served_cn(addr, &ca_path).await, "first");
    reload_by_rename(&weft, &yaml("    tls: { cert: second.pem, key: second.key }\n"), addr).await;
    assert_eq!(served_cn(addr, &ca_path).await, "second");
    assert_eq!(weft.addr("public").await, addr);
}

/// A TCP upstream that greets every connection with `name` and closes.
async fn greeter(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(name.as_bytes()).await;
        }
    });
    addr
}

#[tokio::test]
async fn protocol_and_cluster_changes_keep_the_port() {
    let (a, b) = (greeter("from a").await, greeter("from b").await);
    let clusters = format!(
        "  - {{ name: a, protocol: tcp, endpoints: [ {{ address: {a} }} ] }}\n  - {{ name: b, protocol: tcp, endpoints: [ {{ address: {b} }} ] }}"
    );
    let http = config(&listener("edge", "127.0.0.1:0", "", "http"), &clusters);
    let tcp = |cluster: &str| {
        config(
            &format!("  - {{ name: edge, address: 127.0.0.1:0, protocol: tcp, cluster: {cluster} }}"),
            &clusters,
        )
    };
    let weft = Weft::start(&http).await;
    let addr = weft.addr("edge").await;
    let url = format!("http://{addr}/");
    assert_eq!(get(&h1_client(), &url).await, (200, "http".into()));
    reload_by_rename(&weft, &tcp("a"), addr).await;
    assert_eq!(
        read_until_closed(&mut TcpStream::connect(addr).await.unwrap()).await,
        "from a"
    );
    reload_by_rename(&weft, &tcp("b"), addr).await;
    assert_eq!(
        read_until_closed(&mut TcpStream::connect(addr).await.unwrap()).await,
        "from b"
    );
    reload_by_rename(&weft, &http, addr).await;
    assert_eq!(get(&h1_client(), &url).await, (200, "http".into()));
}

/// A QUIC connection to an `http3` listener, with an HTTP/3 client driving it.
async fn quic_connect(addr: SocketAddr, ca: &Path) -> (quinn::Endpoint, quinn::Connection) {
    let tls = tls_client_config(ca, None, &[b"h3"]);
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(60).try_into().unwrap()));
    client.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut driver, _sender) = h3::client::new(h3_quinn::Connection::new(conn.clone())).await.unwrap();
    tokio::spawn(async move {
        let _sender = _sender;
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    (endpoint, conn)
}

fn quic_cn(conn: &quinn::Connection) -> String {
    let certs = conn.peer_identity().unwrap();
    let certs = certs
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .unwrap();
    weft::tls::PeerIdentity::from_der(&certs[0]).unwrap().id
}

#[tokio::test]
async fn quic_settings_tls_and_advertise_http3_apply_without_rebinding() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("reload-h3-ca");
    ca.leaf(dir.path(), "first", "first", None);
    ca.leaf(dir.path(), "second", "second", None);
    let ca_path = ca.write(dir.path(), "ca.pem");
    // A fixed port: alt-svc names the configured one.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let yaml = |streams: u32, quic: &str, cert: &str, advertise: bool| {
        let h3 = format!(
            "    protocol: http3\n    tls: {{ cert: {cert}.pem, key: {cert}.key }}\n    limits: {{ max_concurrent_streams: {streams} }}\n    quic: {quic}\n"
        );
        let web = format!("    advertise_http3: {advertise}\n");
        let listeners = listener("quic", &udp.to_string(), &h3, "h3") + &listener("web", "127.0.0.1:0", &web, "web");
        config(&listeners, "  []")
    };
    let app = start_in(dir.path(), &yaml(1, "{}", "first", false)).await;
    let weft = Weft {
        path: dir.path().join("weft.yaml"),
        app,
        dir,
    };
    let (quic, web) = (weft.addr("quic").await, weft.addr("web").await);

    // limits.max_concurrent_streams: a second stream opens at once only with 2.
    let next = yaml(2, "{}", "first", false);
    reload_by_rename(&weft, &next, web).await;
    assert_eq!(weft.addr("quic").await, quic);
    let (_client, conn) = quic_connect(quic, &ca_path).await;
    let (_a, _b) = tokio::time::timeout(PATIENCE, async {
        (conn.open_bi().await.unwrap(), conn.open_bi().await.unwrap())
    })
    .await
    .expect("two concurrent streams allowed");

    // quic.idle_timeout: an idle connection is closed after the new timeout.
    let next = yaml(2, "{ idle_timeout: 300ms }", "first", false);
    reload_by_rename(&weft, &next, web).await;
    let (_client, conn) = quic_connect(quic, &ca_path).await;
    let closed = tokio::time::timeout(PATIENCE, conn.closed()).await;
    assert!(matches!(closed, Ok(quinn::ConnectionError::TimedOut)), "{closed:?}");

    // tls on the http3 listener.
    assert_eq!(quic_cn(&quic_connect(quic, &ca_path).await.1), "first");
    let next = yaml(2, "{ idle_timeout: 300ms }", "second", false);
    reload_by_rename(&weft, &next, web).await;
    assert_eq!(quic_cn(&quic_connect(quic, &ca_path).await.1), "second");

    // advertise_http3 on the TCP listener.
    let url = format!("http://{web}/");
    let plain = h1_client()
        .request(http::Request::get(&url).body(full("")).unwrap())
        .await
        .unwrap();
    assert!(plain.headers().get("alt-svc").is_none());
    let next = yaml(2, "{ idle_timeout: 300ms }", "second", true);
    reload_by_rename(&weft, &next, web).await;
    let advertised = h1_client()
        .request(http::Request::get(&url).body(full("")).unwrap())
        .await
        .unwrap();
    let expected = format!("h3=\":{}\"; ma=86400", quic.port());
    assert_eq!(advertised.headers().get("alt-svc").unwrap(), expected.as_str());
    assert_eq!((weft.addr("quic").await, weft.addr("web").await), (quic, web));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn renamed_and_swapped_listeners_keep_their_sockets() {
    let (p1, p2) = (free_port(), free_port());
    let two = |first: (&str, u16), second: (&str, u16)| {
        let address = |port: u16| format!("127.0.0.1:{port}");
        let listeners =
            listener(first.0, &address(first.1), "", first.0) + &listener(second.0, &address(second.1), "", second.0);
        config(&listeners, "  []")
    };
    let weft = Weft::start(&two(("a", p1), ("b", p2))).await;
    let (a1, a2): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{p1}").parse().unwrap(),
        format!("127.0.0.1:{p2}").parse().unwrap(),
    );
    let body_at = async |addr: SocketAddr| get(&h1_client(), &format!("http://{addr}/")).await.1;
    assert_eq!((body_at(a1).await, body_at(a2).await), ("a".into(), "b".into()));

    // name: a renamed listener keeps the socket of its address.
    reload_by_rename(&weft, &two(("renamed", p1), ("b", p2)), a1).await;
    assert_eq!(body_at(a1).await, "renamed");
    assert_eq!(weft.addr("renamed").await, a1);

    // address: two listeners swap addresses, each taking the other's socket.
    let prober = Prober::start(a2);
    reload_by_rename(&weft, &two(("renamed", p2), ("b", p1)), a1).await;
    prober.finish().await;
    assert_eq!((body_at(a1).await, body_at(a2).await), ("b".into(), "renamed".into()));
}

/// Log output captured from the test's thread (a current-thread runtime
/// runs weft's tasks there too).
#[derive(Clone, Default)]
struct Captured(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_listener_task_that_dies_turns_ready_to_503_and_is_logged() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let weft = Weft::start(&config(&listener("public", "127.0.0.1:0", "", "ok"), "  []")).await;
    let client = h1_client();
    assert_eq!(get(&client, &weft.admin("/ready")).await, (200, "ready\n".into()));

    assert!(weft.app.kill_listener("public").await);
    eventually("/ready turns 503", async || {
        get(&client, &weft.admin("/ready")).await.0 == 503
    })
    .await;
    assert_eq!(get(&client, &weft.admin("/ready")).await.1, "listener down: public\n");
    assert_eq!(get(&client, &weft.admin("/live")).await.0, 200);
    let logged = String::from_utf8_lossy(&logs.0.lock()).into_owned();
    assert!(
        logged.contains("ERROR") && logged.contains("listener task died") && logged.contains("listener=public"),
        "{logged}"
    );

    // A reload starts it again.
    assert!(weft.app.reload(true).await.unwrap());
    assert_eq!(get(&client, &weft.admin("/ready")).await, (200, "ready\n".into()));
    assert_eq!(get(&client, &weft.url("public", "/").await).await, (200, "ok".into()));
}

/// The body a listener's route answers at `addr`.
async fn body_at(addr: SocketAddr) -> String {
    get(&h1_client(), &format!("http://{addr}/")).await.1
}

#[tokio::test]
async fn a_reload_that_cannot_bind_leaves_the_old_listeners_serving() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap();
    let old = listener("a", "127.0.0.1:0", "", "a") + &listener("b", "127.0.0.1:0", "", "b");
    let weft = Weft::start(&config(&old, "  []")).await;
    let (a, b) = (weft.addr("a").await, weft.addr("b").await);

    // `c` needs the address the test holds; `a` moves from port 0 to the
    // port it got; `b` goes.
    let new = listener("c", &taken.to_string(), "", "c") + &listener("a", &a.to_string(), "", "moved");
    weft.replace(config(&new, "  []"));
    let refused = weft.app.reload(false).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("Address already in use")),
        "{refused:?}"
    );
    assert_eq!((body_at(a).await, body_at(b).await), ("a".into(), "b".into()));
    assert_eq!((weft.addr("a").await, weft.addr("b").await), (a, b));

    // Once the address is free the same config is taken, `a` on its socket.
    drop(held);
    let prober = Prober::start(a);
    weft.app.reload(true).await.unwrap();
    prober.finish().await;
    assert_eq!((body_at(a).await, body_at(taken).await), ("moved".into(), "c".into()));
    assert_eq!(weft.addr("a").await, a);
}

#[test]
fn a_listener_closed_for_a_bind_that_fails_serves_again() {
    // A namespace of its own: the wildcard address there is loopback only.
    in_network_namespace(|| async {
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let weft = Weft::start(&config(&listener("a", &a.to_string(), "", "a"), "  []")).await;
        assert_eq!(body_at(a).await, "a");
        let refused_with = async |listeners: &str| {
            weft.replace(config(listeners, "  []"));
            let refused = weft.app.reload(false).await;
            assert!(
                refused.as_ref().is_err_and(|e| e.contains("Address already in use")),
                "{refused:?}"
            );
            assert_eq!(body_at(a).await, "a");
            assert_eq!(weft.addr("a").await, a);
        };
        let wide = listener("wide", "0.0.0.0:8080", "", "wide");

        // `wide` needs `a` closed first; `c` cannot bind, so nothing is closed.
        let _held = std::net::TcpListener::bind("127.0.0.3:9090").unwrap();
        refused_with(&(wide.clone() + &listener("c", "127.0.0.3:9090", "", "c"))).await;

        // `wide` needs `a` closed first, and then cannot bind: `a` is started again.
        let _held = std::net::TcpListener::bind("127.0.0.2:8080").unwrap();
        refused_with(&wide).await;
        let ready = get(&h1_client(), &weft.admin("/ready")).await.0;
        assert_eq!(ready, 200);
    });
}

/// An HTTP/2 connection accepted before a hand-over but silent until after
/// it gets its first request served before GOAWAY: a client that read
/// GOAWAY first would refuse the request itself.
#[tokio::test]
async fn an_http2_connection_accepted_before_a_hand_over_gets_its_first_request_served() {
    use crate::h2_abuse::raw::{
        frame, get_block, ACK, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING, PREFACE, SETTINGS,
    };
    let yaml = |timeout: &str| {
        config(
            &listener(
                "public",
                "127.0.0.1:0",
                &format!("    limits: {{ header_read_timeout: {timeout} }}\n"),
                "ok",
            ),
            "  []",
        )
    };
    let weft = Weft::start(&yaml("50m")).await;
    let addr = weft.addr("public").await;
    let stream = TcpStream::connect(addr).await.unwrap();
    eventually("the connection is accepted", async || {
        connections_accepted(&weft, "public").await
    })
    .await;
    reload_by_rename(&weft, &yaml("1h"), addr).await;

    let (mut reader, mut writer) = stream.into_split();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello.extend(frame(PING, 0, 0, b"weft-now"));
    writer.write_all(&hello).await.unwrap();
    // Everything the server sends before acknowledging the PING was sent
    // before it had read a request.
    let mut before_request = Vec::new();
    loop {
        let f = crate::h2_abuse::raw::read_frame_from(&mut reader)
            .await
            .expect("closed early");
        if f.kind == PING && f.flags & ACK != 0 {
            break;
        }
        before_request.push(f.kind);
    }
    assert!(
        !before_request.contains(&GOAWAY),
        "GOAWAY before the first request: {before_request:?}"
    );
    writer.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
    writer
        .write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &get_block("a", "/")))
        .await
        .unwrap();
    // (The final GOAWAY and the close wait for a PING this client never
    // acknowledges: the first GOAWAY is enough.)
    let mut after = Vec::new();
    while !after.contains(&GOAWAY) {
        match crate::h2_abuse::raw::read_frame_from(&mut reader).await {
            Some(f) => after.push(f.kind),
            None => break,
        }
    }
    let (answered, goaway) = (
        after.iter().position(|k| *k == HEADERS),
        after.iter().position(|k| *k == GOAWAY),
    );
    assert!(
        matches!((answered, goaway), (Some(a), Some(g)) if a < g),
        "the request is answered, then GOAWAY: {after:?}"
    );
}
