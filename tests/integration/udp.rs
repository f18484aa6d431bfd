//! UDP listeners through a real weft: real UDP endpoints and clients on
//! loopback, one client socket per session. Waits are for replies or for
//! metrics to move (`eventually`), never fixed sleeps; a client resends only
//! where its first datagram may meet an endpoint that refuses, as a UDP
//! client would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::support::*;

/// A UDP endpoint answering each datagram with `reply(datagram, sender)`;
/// stops on drop.
pub struct UdpEndpoint {
    pub addr: SocketAddr,
    /// Datagrams received so far.
    received: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for UdpEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UdpEndpoint {
    async fn start(reply: impl Fn(&[u8], SocketAddr) -> Vec<u8> + Send + 'static) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let counted = received.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0; 65_536];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                counted.fetch_add(1, Ordering::SeqCst);
                socket.send_to(&reply(&buf[..len], from), from).await.unwrap();
            }
        });
        Self { addr, received, task }
    }

    pub async fn echo() -> Self {
        Self::start(|datagram, _| datagram.to_vec()).await
    }

    /// Answers `NAME SENDER PAYLOAD`: which endpoint answered, and the
    /// address the datagram came from (the session's upstream socket).
    async fn named(name: &'static str) -> Self {
        Self::start(move |datagram, from| {
            let mut reply = format!("{name} {from} ").into_bytes();
            reply.extend_from_slice(datagram);
            reply
        })
        .await
    }
}

/// A reply of a [`UdpEndpoint::named`] endpoint.
#[derive(Debug, PartialEq, Eq)]
struct Named {
    endpoint: String,
    /// The session's upstream socket, as the endpoint saw it.
    from: String,
    payload: String,
}

fn named(reply: &[u8]) -> Named {
    let text = String::from_utf8(reply.to_vec()).unwrap();
    let mut parts = text.splitn(3, ' ');
    let mut next = || parts.next().unwrap_or_default().to_string();
    Named {
        endpoint: next(),
        from: next(),
        payload: next(),
    }
}

/// A UDP client with an address of its own (so a session of its own).
/// Tests keep every client open while they count sessions: a closed
/// client's port may be given to the next one, which would then find the
/// closed one's session.
pub struct Client {
    socket: UdpSocket,
}

impl Client {
    pub async fn new(to: SocketAddr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(to).await.unwrap();
        Self { socket }
    }

    async fn send(&self, datagram: &[u8]) {
        self.socket.send(datagram).await.unwrap();
    }

    async fn recv_within(&self, wait: Duration) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0; 65_536];
        let len = tokio::time::timeout(wait, self.socket.recv(&mut buf))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        buf.truncate(len);
        Ok(buf)
    }

    /// Sends `datagram` and waits for the reply.
    pub async fn ask(&self, datagram: &[u8]) -> Vec<u8> {
        self.send(datagram).await;
        self.recv_within(PATIENCE).await.expect("no reply through weft")
    }

    /// Sends `datagram` every 100 ms until a reply comes.
    async fn ask_until_answered(&self, datagram: &[u8]) -> Vec<u8> {
        eventually("a reply through weft", async || {
            self.send(datagram).await;
            self.recv_within(Duration::from_millis(100))
                .await
                .map_err(|e| e.to_string())
        })
        .await
    }
}

fn udp_listener(name: &str, cluster: &str, udp: &str) -> String {
    format!("  - {{ name: {name}, address: 127.0.0.1:0, protocol: udp, cluster: {cluster}, udp: {{ {udp} }} }}\n")
}

fn udp_cluster(name: &str, extra: &str, endpoints: &[(SocketAddr, &str)]) -> String {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|(addr, zone)| format!("{{ address: {addr}, zone: {zone} }}"))
        .collect();
    format!(
        "  - {{ name: {name}, protocol: udp, {extra} endpoints: [ {} ] }}\n",
        endpoints.join(", ")
    )
}

async fn udp_metric(weft: &Weft, series: &str) -> f64 {
    metric(&metrics(weft).await, series)
}

fn sessions_total(listener: &str) -> String {
    format!("weft_udp_sessions_total{{listener=\"{listener}\"}}")
}

fn sessions_active(listener: &str) -> String {
    format!("weft_udp_sessions_active{{listener=\"{listener}\"}}")
}

fn datagrams(listener: &str, direction: &str, result: &str) -> String {
    format!("weft_udp_datagrams_total{{direction=\"{direction}\",listener=\"{listener}\",result=\"{result}\"}}")
}

async fn clusters_json(weft: &Weft) -> Value {
    serde_json::from_str(&get(&h1_client(), &weft.admin("/clusters")).await.1).unwrap()
}

#[tokio::test]
async fn many_clients_each_get_their_own_replies_and_no_one_elses() {
    let echo = UdpEndpoint::echo().await;
    let yaml = config(
        &udp_listener("dns", "dns", ""),
        &udp_cluster("dns", "", &[(echo.addr, "zone-a")]),
    );
    let weft = Weft::start(&yaml).await;
    let addr = weft.addr("dns").await;
    let (clients, rounds) = (40, 25);
    let mut sockets = Vec::new();
    for _ in 0..clients {
        sockets.push(Client::new(addr).await);
    }
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(c, client)| {
            tokio::spawn(async move {
                for r in 0..rounds {
                    let datagram = format!("client {c} datagram {r}");
                    let reply = client.ask(datagram.as_bytes()).await;
                    assert_eq!(String::from_utf8_lossy(&reply), datagram);
                }
                client
            })
        })
        .collect();
    let mut open = Vec::new();
    for task in tasks {
        open.push(task.await.unwrap());
    }
    let text = metrics(&weft).await;
    assert_eq!(metric(&text, &sessions_total("dns")), clients as f64);
    assert_eq!(metric(&text, &sessions_active("dns")), clients as f64);
    let each_way = (clients * rounds) as f64;
    assert_eq!(metric(&text, &datagrams("dns", "downstream", "forwarded")), each_way);
    assert_eq!(metric(&text, &datagrams("dns", "upstream", "forwarded")), each_way);
    assert_eq!(metric(&text, &datagrams("dns", "downstream", "dropped")), 0.0);
    assert_eq!(echo.received.load(Ordering::SeqCst), clients * rounds);
    // /clusters shows the listener under its cluster.
    let listeners = &clusters_json(&weft).await[0]["udp_listeners"];
    assert_eq!(listeners[0]["name"], "dns", "{listeners}");
    assert_eq!(listeners[0]["sessions_active"], clients, "{listeners}");
    assert_eq!(listeners[0]["downstream"]["forwarded"], clients * rounds, "{listeners}");
}

#[tokio::test]
async fn datagrams_of_60_kb_pass_byte_exact_and_oversized_ones_are_dropped() {
    // "grow" makes the endpoint answer with a datagram over the limit.
    let endpoint = UdpEndpoint::start(|datagram, _| match datagram {
        b"grow" => vec![b'g'; 62_000],
        other => other.to_vec(),
    })
    .await;
    let yaml = config(
        &udp_listener("big", "big", "max_datagram_bytes: 61440"),
        &udp_cluster("big", "", &[(endpoint.addr, "zone-a")]),
    );
    let weft = Weft::start(&yaml).await;
    let client = Client::new(weft.addr("big").await).await;
    for i in 0..4u32 {
        let datagram: Vec<u8> = (0..60_000u32)
            .map(|j| (j.wrapping_mul(7).wrapping_add(i)) as u8)
            .collect();
        assert!(client.ask(&datagram).await == datagram, "60 KB datagram {i} changed");
    }
    // Too big from the client: dropped, not truncated, and counted.
    client.send(&vec![b'x'; 62_000]).await;
    eventually("the oversized client datagram is counted", async || {
        udp_metric(&weft, &datagrams("big", "downstream", "dropped")).await == 1.0
    })
    .await;
    // Too big from the endpoint: dropped too; the next reply is the next datagram's.
    client.send(b"grow").await;
    eventually("the oversized reply is counted", async || {
        udp_metric(&weft, &datagrams("big", "upstream", "dropped")).await == 1.0
    })
    .await;
    assert_eq!(client.ask(b"small").await, b"small");
    assert_eq!(
        endpoint.received.load(Ordering::SeqCst),
        6,
        "the oversized datagram reached the endpoint"
    );
    let text = metrics(&weft).await;
    assert_eq!(metric(&text, &datagrams("big", "downstream", "forwarded")), 6.0);
    assert_eq!(
        metric(&text, "weft_udp_bytes_total{direction=\"downstream\",listener=\"big\"}"),
        (4 * 60_000 + 4 + 5) as f64
    );
}

#[tokio::test]
async fn sessions_spread_over_endpoints_by_the_balancer_and_stick_to_theirs() {
    let endpoints = [
        UdpEndpoint::named("a").await,
        UdpEndpoint::named("b").await,
        UdpEndpoint::named("c").await,
    ];
    let addrs: Vec<(SocketAddr, &str)> = endpoints.iter().map(|e| (e.addr, "zone-a")).collect();
    let yaml = config(
        &udp_listener("spread", "spread", ""),
        &udp_cluster("spread", "lb: round_robin,", &addrs),
    );
    let weft = Weft::start(&yaml).await;
    let addr = weft.addr("spread").await;
    let mut sessions_per_endpoint: HashMap<String, usize> = HashMap::new();
    let mut clients = Vec::new();
    for c in 0..30 {
        let client = Client::new(addr).await;
        let first = named(&client.ask(format!("{c}-0").as_bytes()).await);
        for d in 1..4 {
            let reply = named(&client.ask(format!("{c}-{d}").as_bytes()).await);
            // Same endpoint, same upstream socket, for the whole session.
            assert_eq!((&reply.endpoint, &reply.from), (&first.endpoint, &first.from));
            assert_eq!(reply.payload, format!("{c}-{d}"));
        }
        *sessions_per_endpoint.entry(first.endpoint).or_default() += 1;
        clients.push(client);
    }
    let expected: HashMap<String, usize> = ["a", "b", "c"].map(|e| (e.to_string(), 10)).into();
    assert_eq!(sessions_per_endpoint, expected);
    // Each session holds its endpoint as in flight (what least_request and p2c_ewma weigh).
    let in_flight: Vec<u64> = clusters_json(&weft).await[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["in_flight"].as_u64().unwrap())
        .collect();
    assert_eq!(in_flight, [10, 10, 10]);
}

#[tokio::test]
async fn sessions_stay_in_the_local_zone() {
    let (local, remote) = (UdpEndpoint::named("local").await, UdpEndpoint::named("remote").await);
    let yaml = format!(
        "node: {{ zone: zone-a }}\n{}",
        config(
            &udp_listener("zoned", "zoned", ""),
            &udp_cluster(
                "zoned",
                "zone_aware: { min_cluster_size: 1 },",
                &[(local.addr, "zone-a"), (remote.addr, "zone-b")]
            ),
        )
    );
    let weft = Weft::start(&yaml).await;
    let addr = weft.addr("zoned").await;
    let mut clients = Vec::new();
    for c in 0..20 {
        let client = Client::new(addr).await;
        assert_eq!(named(&client.ask(format!("{c}").as_bytes()).await).endpoint, "local");
        clients.push(client);
    }
    assert_eq!(remote.received.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_idle_session_ends_after_idle_timeout() {
    let endpoint = UdpEndpoint::named("a").await;
    let yaml = config(
        &udp_listener("idle", "idle", "idle_timeout: 300ms"),
        &udp_cluster("idle", "", &[(endpoint.addr, "zone-a")]),
    );
    let weft = Weft::start(&yaml).await;
    let client = Client::new(weft.addr("idle").await).await;
    assert_eq!(named(&client.ask(b"one").await).payload, "one");
    assert_eq!(udp_metric(&weft, &sessions_total("idle")).await, 1.0);
    eventually("the idle session ends", async || {
        udp_metric(&weft, &sessions_active("idle")).await == 0.0
    })
    .await;
    // The client's next datagram opens a new session.
    assert_eq!(named(&client.ask(b"two").await).payload, "two");
    let text = metrics(&weft).await;
    assert_eq!(metric(&text, &sessions_total("idle")), 2.0);
    assert_eq!(metric(&text, &sessions_active("idle")), 1.0);
}

#[tokio::test]
async fn max_sessions_drops_datagrams_from_new_clients_only() {
    let echo = UdpEndpoint::echo().await;
    let yaml = config(
        &udp_listener("capped", "capped", "max_sessions: 3"),
        &udp_cluster("capped", "", &[(echo.addr, "zone-a")]),
    );
    let weft = Weft::start(&yaml).await;
    let addr = weft.addr("capped").await;
    let mut clients = Vec::new();
    for c in 0..3 {
        let client = Client::new(addr).await;
        assert_eq!(client.ask(format!("{c}").as_bytes()).await, format!("{c}").as_bytes());
        clients.push(client);
    }
    let fourth = Client::new(addr).await;
    fourth.send(b"4").await;
    eventually("the fourth client's datagram is dropped and counted", async || {
        udp_metric(&weft, &datagrams("capped", "downstream", "dropped")).await == 1.0
    })
    .await;
    // The clients with sessions are still served.
    for (c, client) in clients.iter().enumerate() {
        assert_eq!(
            client.ask(format!("again {c}").as_bytes()).await,
            format!("again {c}").as_bytes()
        );
    }
    let text = metrics(&weft).await;
    assert_eq!(metric(&text, &sessions_active("capped")), 3.0);
    assert_eq!(metric(&text, &sessions_total("capped")), 3.0);
    assert_eq!(
        echo.received.load(Ordering::SeqCst),
        6,
        "the fourth client's datagram reached the endpoint"
    );
}

/// A loopback UDP address that answers ICMP port unreachable: a socket bound
/// there but connected elsewhere, so the kernel delivers it nothing from
/// anyone else; held while this lives so no other test is given the port.
struct RefusingUdp {
    addr: SocketAddr,
    _socket: UdpSocket,
}

async fn refusing_udp() -> RefusingUdp {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(socket.local_addr().unwrap()).await.unwrap();
    RefusingUdp {
        addr: socket.local_addr().unwrap(),
        _socket: socket,
    }
}

#[tokio::test]
async fn an_endpoint_answering_port_unreachable_is_ejected() {
    let (a, b, dead) = (
        UdpEndpoint::named("a").await,
        UdpEndpoint::named("b").await,
        refusing_udp().await,
    );
    let yaml = config(
        &udp_listener("dns", "dns", ""),
        &udp_cluster(
            "dns",
            "lb: round_robin, outlier_detection: { consecutive_gateway_failure: 2, base_ejection_time: 300s, max_ejection_percent: 50 },",
            &[(a.addr, "zone-a"), (b.addr, "zone-a"), (dead.addr, "zone-a")],
        ),
    );
    let weft = Weft::start(&yaml).await;
    let addr = weft.addr("dns").await;
    let dead_address = dead.addr.to_string();
    // New clients until the refusing endpoint is ejected; each gets its
    // reply from a live endpoint, after a new session where the first
    // landed on the refusing one.
    let mut clients = Vec::new();
    eventually("the refusing endpoint is ejected", async || {
        let client = Client::new(addr).await;
        let reply = named(&client.ask_until_answered(b"q").await);
        assert!(["a", "b"].contains(&reply.endpoint.as_str()), "{reply:?}");
        clients.push(client);
        let clusters = clusters_json(&weft).await;
        let endpoints = clusters[0]["endpoints"].as_array().unwrap().clone();
        let status = endpoints
            .iter()
            .find(|e| e["address"] == dead_address.as_str())
            .unwrap();
        if status["ejected"] == true {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;
    let text = metrics(&weft).await;
    assert_eq!(
        metric(
            &text,
            "weft_outlier_ejections_total{cluster=\"dns\",reason=\"consecutive_gateway_failure\"}"
        ),
        1.0
    );
    // From now on every new client needs exactly one session.
    let before = metric(&text, &sessions_total("dns"));
    for c in 0..10 {
        let client = Client::new(addr).await;
        let reply = named(&client.ask_until_answered(format!("{c}").as_bytes()).await);
        assert_eq!(reply.payload, format!("{c}"));
        clients.push(client);
    }
    assert_eq!(udp_metric(&weft, &sessions_total("dns")).await - before, 10.0);
}

#[tokio::test]
async fn reload_keeps_the_sessions_of_unchanged_udp_listeners() {
    let (kept, changed) = (UdpEndpoint::named("kept").await, UdpEndpoint::named("changed").await);
    let yaml = |changed_idle: &str| {
        config(
            &format!(
                "{}{}",
                udp_listener("kept", "kept", "idle_timeout: 60s"),
                udp_listener("changed", "changed", &format!("idle_timeout: {changed_idle}"))
            ),
            &format!(
                "{}{}",
                udp_cluster("kept", "", &[(kept.addr, "zone-a")]),
                udp_cluster("changed", "", &[(changed.addr, "zone-a")])
            ),
        )
    };
    let weft = Weft::start(&yaml("60s")).await;
    let (kept_addr, changed_addr) = (weft.addr("kept").await, weft.addr("changed").await);
    let kept_client = Client::new(kept_addr).await;
    let changed_client = Client::new(changed_addr).await;
    let kept_before = named(&kept_client.ask(b"1").await);
    let changed_before = named(&changed_client.ask(b"1").await);

    weft.write(&yaml("59s"));
    assert!(weft.app.reload(false).await.unwrap());
    // The unchanged listener kept its socket and its session (same upstream socket).
    assert_eq!(weft.addr("kept").await, kept_addr);
    let kept_after = named(&kept_client.ask(b"2").await);
    assert_eq!(
        (kept_after.endpoint, kept_after.from),
        (kept_before.endpoint, kept_before.from)
    );
    // The changed one took its predecessor's socket over (same address, no
    // datagram refused) and ended its sessions: the same client now has a new one.
    assert_eq!(weft.addr("changed").await, changed_addr);
    let changed_after = named(&changed_client.ask(b"2").await);
    assert_eq!(changed_after.payload, "2");
    assert_eq!(changed_after.endpoint, changed_before.endpoint);
    let text = metrics(&weft).await;
    assert_eq!(metric(&text, &sessions_total("kept")), 1.0);
    assert_eq!(metric(&text, &sessions_active("kept")), 1.0);
    assert_eq!(metric(&text, &sessions_total("changed")), 2.0);
    assert_eq!(metric(&text, &sessions_active("changed")), 1.0);
}

#[test]
fn drain_stops_reading_and_ends_every_session() {
    // In a network namespace of its own, so no other test can be given the
    // listener's port once weft has closed it.
    in_network_namespace(|| async {
        let echo = UdpEndpoint::echo().await;
        let yaml = config(
            &udp_listener("dns", "dns", ""),
            &udp_cluster("dns", "", &[(echo.addr, "zone-a")]),
        );
        let weft = Weft::start(&yaml).await;
        let client = Client::new(weft.addr("dns").await).await;
        assert_eq!(client.ask(b"hello").await, b"hello");
        let sessions = weft.app.shared.metrics.udp.listener("dns");
        assert_eq!(sessions.sessions_active.get(), 1);
        weft.app.shutdown().await;
        assert_eq!(sessions.sessions_active.get(), 0);
        // The socket is closed: the kernel answers port unreachable.
        client.send(b"late").await;
        let refused = client.recv_within(PATIENCE).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        assert_eq!(echo.received.load(Ordering::SeqCst), 1);
    });
}
