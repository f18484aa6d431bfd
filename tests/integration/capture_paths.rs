//! Where connections really go once `weft init-iptables` has run: a "pod"
//! namespace joined to a "node" namespace by a veth pair, with plain
//! listeners standing in for weft's inbound (15006) and outbound (15001)
//! listeners, the app, weft's admin port and remote servers. Each connection
//! is attributed to the listener that accepts it.
//!
//! Checked, IPv4 and IPv6: the kubelet-like connection from the node to the
//! app's port lands on the inbound port (so probes reach the app through
//! weft); the admin port, skipped ports and skipped subnets bypass capture;
//! the pod's outbound connections land on the outbound port, except loopback,
//! skipped ports and subnets, and connections made as the proxy uid.

use std::net::SocketAddr;
use std::process::Command;

use futures_util::future::select_all;
use tokio::net::{TcpListener, TcpSocket};

use crate::cli::{have_tool, into_run};
use crate::netns::{self, link, NetNs};

const POD: &str = "10.199.0.1";
const NODE: &str = "10.199.0.2";
/// A second subnet on the same link, skipped by the rules.
const POD_SKIPPED: &str = "10.199.1.1";
const NODE_SKIPPED: &str = "10.199.1.2";
const POD6: &str = "fd00:199::1";
const NODE6: &str = "fd00:199::2";

/// Listeners made in `ns`, each with the name a test expects to see.
pub fn listen(ns: &NetNs, specs: &[(&'static str, &'static str)]) -> Vec<(&'static str, TcpListener)> {
    let specs: Vec<(&'static str, &'static str)> = specs.to_vec();
    let std_listeners = ns.enter(move || {
        specs
            .into_iter()
            .map(|(name, addr)| {
                let l = std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                l.set_nonblocking(true).unwrap();
                (name, l)
            })
            .collect::<Vec<_>>()
    });
    std_listeners
        .into_iter()
        .map(|(name, l)| (name, TcpListener::from_std(l).unwrap()))
        .collect()
}

/// Connects from `ns` (optionally from a given source address) to `to`, and
/// names the listener that accepted the connection.
async fn lands_on(
    ns: &NetNs,
    from: Option<&str>,
    to: &str,
    listeners: &[&[(&'static str, TcpListener)]],
) -> &'static str {
    let to: SocketAddr = to.parse().unwrap();
    let from: Option<SocketAddr> = from.map(|ip| format!("{ip}:0").parse().unwrap());
    let socket = ns.enter(move || {
        let socket = if to.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .unwrap();
        if let Some(from) = from {
            socket.bind(from).unwrap();
        }
        socket
    });
    let _stream = socket.connect(to).await.unwrap_or_else(|e| panic!("connect {to}: {e}"));
    first_accept(listeners).await
}

/// The name of the first listener to accept a connection.
async fn first_accept(listeners: &[&[(&'static str, TcpListener)]]) -> &'static str {
    let accepts = listeners.iter().flat_map(|set| set.iter()).map(|(name, l)| {
        Box::pin(async move {
            l.accept().await.unwrap();
            *name
        })
    });
    let (name, _, _) = tokio::time::timeout(std::time::Duration::from_secs(10), select_all(accepts))
        .await
        .unwrap_or_else(|_| panic!("no listener accepted the connection"));
    name
}

/// Connects from `ns` as `uid` in a child process (bash's /dev/tcp).
fn connect_as(ns: &str, uid: u32, ip: &str, port: u16) {
    let uid = uid.to_string();
    let run = into_run(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "setpriv",
                "--reuid",
                &uid,
                "--regid",
                &uid,
                "--clear-groups",
            ])
            .args(["bash", "-c", &format!("exec 3<>/dev/tcp/{ip}/{port}")])
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "connect as uid {uid}: {}", run.stderr);
}

#[tokio::test]
async fn captured_connections_land_on_weft_and_skipped_ones_do_not() {
    let test = "capture paths in network namespaces";
    let tools = ["iptables-nft-save", "setpriv"];
    if !(netns::available(test) && tools.iter().all(|t| have_tool(t, &["--version"], test))) {
        return;
    }
    let (pod, node) = (NetNs::new(), NetNs::new());
    link(
        &pod,
        &[
            &format!("{POD}/24"),
            &format!("{POD_SKIPPED}/24"),
            &format!("{POD6}/64"),
        ],
        &node,
        &[
            &format!("{NODE}/24"),
            &format!("{NODE_SKIPPED}/24"),
            &format!("{NODE6}/64"),
        ],
    );
    let init = into_run(
        Command::new("ip")
            .args(["netns", "exec", &pod.name, env!("CARGO_BIN_EXE_weft"), "init-iptables"])
            .args([
                "--skip-inbound-ports=2222",
                "--skip-outbound-ports=3306",
                "--skip-subnets=10.199.1.0/24",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(init.code, 0, "{}", init.stderr);

    // [::]:port takes IPv4 and IPv6; the outbound redirect goes to loopback.
    let in_pod = listen(
        &pod,
        &[
            ("weft-inbound", "[::]:15006"),
            ("weft-outbound", "127.0.0.1:15001"),
            ("weft-outbound", "[::1]:15001"),
            ("app", "[::]:8080"),
            ("weft-admin", "[::]:9901"),
            ("skipped-port", "[::]:2222"),
        ],
    );
    let in_node = listen(&node, &[("remote", "[::]:80"), ("remote-db", "[::]:3306")]);
    let all: [&[(&'static str, TcpListener)]; 2] = [&in_pod, &in_node];

    // Inbound: from the node (where the kubelet's probes come from).
    for (from, to, expected) in [
        (None, format!("{POD}:8080"), "weft-inbound"),
        (None, format!("[{POD6}]:8080"), "weft-inbound"),
        (None, format!("{POD}:9901"), "weft-admin"),
        (None, format!("[{POD6}]:9901"), "weft-admin"),
        (None, format!("{POD}:2222"), "skipped-port"),
        (Some(NODE_SKIPPED), format!("{POD_SKIPPED}:8080"), "app"),
    ] {
        assert_eq!(
            lands_on(&node, from, &to, &all).await,
            expected,
            "inbound to {to} from {from:?}"
        );
    }
    // Outbound: from the pod, as root (not the proxy uid).
    for (to, expected) in [
        (format!("{NODE}:80"), "weft-outbound"),
        (format!("[{NODE6}]:80"), "weft-outbound"),
        (format!("{NODE}:3306"), "remote-db"),
        (format!("{NODE_SKIPPED}:80"), "remote"),
        ("127.0.0.1:8080".to_string(), "app"),
        (format!("{POD}:8080"), "app"),
    ] {
        assert_eq!(lands_on(&pod, None, &to, &all).await, expected, "outbound to {to}");
    }

    // The proxy uid's own connections leave the pod; anyone else's are captured.
    for (uid, expected) in [(10001, "remote"), (10002, "weft-outbound")] {
        let ns = pod.name.clone();
        let connect = tokio::task::spawn_blocking(move || connect_as(&ns, uid, NODE, 80));
        let name = first_accept(&all).await;
        connect.await.unwrap();
        assert_eq!(name, expected, "connection as uid {uid}");
    }
}
