//! weft as the soak runs it: the real binary (`CARGO_BIN_EXE_weft`, built by
//! the same `cargo test`: the debug build unless `--release` is given) as a
//! child process, with a config the soak writes and keeps rewriting; its
//! stderr is watched for panics, its resident memory and open descriptors
//! are read from /proc and its runtime's alive tasks from `/metrics`.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

use super::upstreams::Upstreams;
use crate::support::*;

/// What one generation of the config looks like; each reload changes some
/// of it: the body of a direct response (which tells the soak which
/// generation serves), an extra listener added and removed, the slow
/// cluster's `connect_timeout` (a changed cluster gets a new pool, the old
/// one's connections close), the front listener's `max_connections` (a
/// changed listener hands its socket to a new task while its connections
/// finish on the old), and now and then a broken file that must be refused.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub generation: u64,
    pub extra_listener: bool,
    pub slow_connect_timeout_s: u64,
    pub front_max_connections: u32,
    pub broken: bool,
}

impl Shape {
    pub fn of(generation: u64) -> Self {
        Self {
            generation,
            extra_listener: generation % 2 == 1,
            slow_connect_timeout_s: 1 + (generation / 2) % 2,
            front_max_connections: if generation % 3 == 2 { 9999 } else { 10000 },
            broken: generation % 5 == 4,
        }
    }

    /// The shape every measurement is taken in, so they compare.
    pub fn canonical(generation: u64) -> Self {
        Self {
            generation,
            extra_listener: false,
            slow_connect_timeout_s: 1,
            front_max_connections: 10000,
            broken: false,
        }
    }
}

/// Listeners keep port 0 in every generation: an unchanged address keeps its
/// socket (and a changed listener hands it over), whatever port it got.
/// (Writing the bound port instead changes the address: weft then stops the
/// listener and binds again, and that bind can fail on the socket it has
/// not closed yet; see the soak's findings in README.)
///
/// Pooled upstream connections close after this long unused, so a quiet
/// weft holds none and its descriptors and tasks can be compared.
const CLUSTER_IDLE_TIMEOUT: &str = "3s";

/// The route timeout of every proxied route but `slow`'s.
pub const ROUTE_TIMEOUT_S: u64 = 2;
pub const SLOW_ROUTE_TIMEOUT_S: u64 = 1;

fn config_text(up: &Upstreams, shape: Shape) -> String {
    let Shape {
        generation,
        slow_connect_timeout_s,
        front_max_connections,
        ..
    } = shape;
    let t = ROUTE_TIMEOUT_S;
    let mut yaml = format!(
        "admin: {{ address: 127.0.0.1:0 }}
access_log: {{ enabled: false }}
runtime: {{ worker_threads: 2 }}
drain_delay: 0s
listeners:
  - name: front
    address: 127.0.0.1:0
    limits: {{ max_connections: {front_max_connections} }}
    routes:
      - {{ name: gen, match: {{ path_exact: /gen }}, direct_response: {{ status: 200, body: gen-{generation} }} }}
      - {{ name: steady, match: {{ path_prefix: /steady }}, cluster: steady, timeout: {t}s }}
      - {{ name: upload, match: {{ path_prefix: /upload }}, cluster: steady, timeout: {t}s }}
      - {{ name: steady-h2, match: {{ path_prefix: /h2 }}, cluster: steady-h2, timeout: {t}s }}
      - {{ name: slow, match: {{ path_prefix: /slow }}, cluster: slow, timeout: {SLOW_ROUTE_TIMEOUT_S}s }}
      - {{ name: reset, match: {{ path_prefix: /reset-h1 }}, cluster: reset, timeout: {t}s }}
      - {{ name: reset-h2, match: {{ path_prefix: /reset-h2 }}, cluster: reset-h2, timeout: {t}s }}
      - {{ name: flaky, match: {{ path_prefix: /flaky }}, cluster: flaky, timeout: {t}s }}
  - {{ name: echo, address: 127.0.0.1:0, protocol: tcp, cluster: echo }}
"
    );
    if shape.extra_listener {
        yaml.push_str(
            "  - { name: extra, address: 127.0.0.1:0, routes: [ { name: extra, direct_response: { status: 200 } } ] }\n",
        );
    }
    yaml.push_str("clusters:\n");
    let clusters = [
        ("steady", "http1", up.steady.addr, 1),
        ("steady-h2", "http2", up.steady_h2.addr, 1),
        ("slow", "http1", up.slow.addr, slow_connect_timeout_s),
        ("reset", "http1", up.reset.addr, 1),
        ("reset-h2", "http2", up.reset_h2.addr, 1),
        ("flaky", "http1", up.flaky.addr, 1),
        ("echo", "tcp", up.echo.addr, 1),
    ];
    for (name, protocol, addr, connect_timeout_s) in clusters {
        let _ = writeln!(
            yaml,
            "  - {{ name: {name}, protocol: {protocol}, connect_timeout: {connect_timeout_s}s, idle_timeout: {CLUSTER_IDLE_TIMEOUT}, endpoints: [ {{ address: {addr} }} ] }}"
        );
    }
    if shape.broken {
        // An unknown key: refused with file, line and key; the old config serves on.
        yaml = yaml.replacen("    routes:", "    rutes:", 1);
    }
    yaml
}

/// What weft wrote on stderr that the soak looks at.
#[derive(Default)]
pub struct Log {
    pub panics: Vec<String>,
    pub warnings: u64,
    pub errors: u64,
    /// `listening` and `weft started` lines, for the bound addresses.
    pub start_up: Vec<String>,
    /// The last lines, shown when the soak fails.
    pub tail: VecDeque<String>,
}

const TAIL_LINES: usize = 80;

impl Log {
    fn note(&mut self, line: String) {
        if line.contains("panicked") {
            self.panics.push(line.clone());
        }
        if line.contains(" WARN ") {
            self.warnings += 1;
        }
        if line.contains(" ERROR ") {
            self.errors += 1;
        }
        if line.contains("listening") || line.contains("weft started") {
            self.start_up.push(line.clone());
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// The value of `field=` on the start-up line containing all of `needles`.
    fn field(&self, needles: &[&str], field: &str) -> Option<String> {
        self.start_up
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))?
            .split_whitespace()
            .find_map(|f| f.strip_prefix(field))
            .map(str::to_string)
    }
}

pub struct WeftProcess {
    child: Child,
    pub pid: u32,
    _dir: tempfile::TempDir,
    path: PathBuf,
    pub admin: SocketAddr,
    pub front: SocketAddr,
    pub tcp: SocketAddr,
    pub log: Arc<Mutex<Log>>,
}

impl WeftProcess {
    pub async fn start(up: &Upstreams) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.yaml");
        std::fs::write(&path, config_text(up, Shape::canonical(0))).unwrap();
        let mut child = crate::process::weft_run(&[], &path).spawn().unwrap();
        let pid = child.id().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let writer = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                writer.lock().note(line);
            }
        });
        let addr = |needles: &[&str], field: &str| -> Result<SocketAddr, String> {
            let log = log.lock();
            log.field(needles, field)
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("{:?}", log.tail))
        };
        let admin = eventually("weft started", async || addr(&["weft started"], "admin=")).await;
        let front = eventually("front listening", async || {
            addr(&["listening", "listener=front"], "address=")
        })
        .await;
        let tcp = eventually("echo listening", async || {
            addr(&["listening", "listener=echo"], "address=")
        })
        .await;
        Self {
            child,
            pid,
            _dir: dir,
            path,
            admin,
            front,
            tcp,
            log,
        }
    }

    /// Rewrites the config file (weft's watcher picks it up) in `shape`.
    pub fn write_config(&self, up: &Upstreams, shape: Shape) {
        let text = config_text(up, shape);
        // A rename-over, as kubectl and editors do: weft never reads half a file.
        let next = self.path.with_extension("yaml.next");
        std::fs::write(&next, text).unwrap();
        std::fs::rename(&next, &self.path).unwrap();
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn usage(&self) -> Usage {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map_or(0, |d| d.count() as u64);
        Usage { rss_kib, fds }
    }

    /// `/metrics` on a connection weft closes after the answer (read to its
    /// end), so no admin connection of an earlier scrape is open at a
    /// measurement (a pooled client may keep one or two).
    pub async fn metrics(&self) -> String {
        raw(
            self.admin,
            b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        )
        .await
    }

    /// SIGTERM, then the exit status (weft drains and exits 0).
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        crate::process::signal(self.pid, "TERM");
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("weft did not exit after SIGTERM")
            .unwrap()
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub rss_kib: u64,
    pub fds: u64,
}

/// The sum of every series of `family` (name followed by labels or a space).
pub fn family_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(family))
        .filter(|rest| rest.starts_with('{') || rest.starts_with(' '))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
