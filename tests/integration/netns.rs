//! Network namespaces for tests that need their own network (root only):
//! created fresh, joined by veth pairs, entered by a thread to make sockets
//! there, and deleted on drop, even when the test panics.

#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::cli::have_tool;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A unique short name (interface names take at most 15 bytes).
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// Whether namespaces can be made here (root and `ip`); under CI they must.
pub fn available(test: &str) -> bool {
    have_tool("ip", &["netns", "list"], test)
}

/// A network namespace, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new() -> NetNs {
        let name = unique("weft-t");
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The command prefix that runs a program inside.
    pub fn exec(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }

    /// Runs a command inside; it must succeed.
    pub fn run(&self, args: &[&str]) {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "in {}: {args:?}", self.name);
    }

    /// Runs `f` on a thread that has joined this namespace: sockets it makes
    /// live here whichever thread uses them later.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only, with a namespace file we hold open.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of each veth pair, and so the pair.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Joins two namespaces with a veth pair and gives each end its addresses
/// (CIDRs, IPv4 or IPv6; IPv6 without duplicate address detection).
pub fn link(a: &NetNs, a_addrs: &[&str], b: &NetNs, b_addrs: &[&str]) {
    let (a_if, b_if) = (unique("va"), unique("vb"));
    ip(&[
        "link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if, "netns", &b.name,
    ]);
    // Up before the addresses: an IPv6 address added to a link that is down
    // answers no neighbour solicitation at first, so the first connection
    // to it waits for a SYN retransmit (a second).
    for (ns, dev, addrs) in [(a, &a_if, a_addrs), (b, &b_if, b_addrs)] {
        ns.run(&["ip", "link", "set", dev, "up"]);
        for addr in addrs {
            let mut args = vec!["ip", "addr", "add", addr, "dev", dev];
            if addr.contains(':') {
                args.push("nodad");
            }
            ns.run(&args);
        }
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?}");
}
