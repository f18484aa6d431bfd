//! `weft demo`: backends for every endpoint of the demo config, started in
//! this process, so the demo needs nothing else running. An HTTP backend
//! answers with its cluster, version (the cluster name's last part) and zone;
//! `GET /toggle-fail` switches it to answering 500 (health checks included)
//! and back, so an outlier ejection and a zone failover can be triggered by
//! hand. Under `/api/` it answers JSON instead, where version `v2` differs
//! from the others in one field (`$.user.tier`), for the mirror-and-compare
//! demo. A tcp backend echoes, and so does a udp one (each datagram back to
//! its sender). The one file-discovered cluster (`pool`) gets
//! backends on every address it may list, and [`EndpointRotation`] rewrites
//! its endpoints file every few seconds, so endpoints come and go.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, UdpSocket};

use crate::app::App;
use crate::config::schema::{ClusterConfig, ClusterProtocol, Config};

const DEMO_YAML: &str = include_str!("../config/demo.yaml");
const DEMO_ENDPOINTS: &str = include_str!("../config/demo-endpoints.json");

/// Every address the demo's endpoints file lists at some point, with its zone.
const POOL: [(&str, &str); 3] = [
    ("127.0.0.1:9021", "zone-a"),
    ("127.0.0.1:9022", "zone-b"),
    ("127.0.0.1:9023", "zone-a"),
];
/// The sets the endpoints file cycles through (indices into [`POOL`]).
const POOL_SETS: [&[usize]; 4] = [&[0, 1], &[0, 1, 2], &[1, 2], &[2]];
const ROTATE_EVERY: tokio::time::Duration = tokio::time::Duration::from_secs(5);

/// `config/demo.yaml` when run from the repository; otherwise the built-in
/// copy (and its endpoints file), written to a temporary directory so reloads
/// still have a file to watch.
pub fn config_path() -> std::io::Result<PathBuf> {
    let local = PathBuf::from("config/demo.yaml");
    if local.exists() {
        return Ok(local);
    }
    let dir = std::env::temp_dir().join("weft-demo");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("demo-endpoints.json"), DEMO_ENDPOINTS)?;
    let path = dir.join("demo.yaml");
    std::fs::write(&path, DEMO_YAML)?;
    Ok(path)
}

/// Every endpoint of a static cluster, and every [`POOL`] address for a
/// file-discovered one.
fn backends(config: &Config) -> Vec<(&ClusterConfig, SocketAddr, Option<String>)> {
    let mut all = Vec::new();
    for cluster in &config.clusters {
        for endpoint in &cluster.endpoints {
            all.push((cluster, endpoint.address, endpoint.zone.clone()));
        }
        if cluster.discovery.as_ref().is_some_and(|d| d.file.is_some()) {
            for (address, zone) in POOL {
                if let Ok(address) = address.parse() {
                    all.push((cluster, address, Some(zone.to_string())));
                }
            }
        }
    }
    all
}

pub async fn start_backends(config: &Config) -> Result<(), String> {
    for (cluster, address, zone) in backends(config) {
        if cluster.protocol == ClusterProtocol::Udp {
            let socket = UdpSocket::bind(address)
                .await
                .map_err(|e| format!("cannot start demo udp backend on {address}: {e}"))?;
            tokio::spawn(udp_echo(socket));
            continue;
        }
        {
            let socket = TcpListener::bind(address)
                .await
                .map_err(|e| format!("cannot start demo backend on {address}: {e}"))?;
            let zone = zone.unwrap_or_else(|| "none".into());
            let version = cluster.name.rsplit('-').next().unwrap_or(&cluster.name).to_string();
            let identity = format!(
                "cluster={} version={version} zone={zone} endpoint={address}",
                cluster.name
            );
            match cluster.protocol {
                ClusterProtocol::Http1 | ClusterProtocol::Http2 | ClusterProtocol::Http3 => {
                    tokio::spawn(http_backend(socket, identity, version))
                }
                ClusterProtocol::Tcp | ClusterProtocol::Udp => tokio::spawn(echo(socket)),
            };
        }
    }
    Ok(())
}

async fn http_backend(socket: TcpListener, identity: String, version: String) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let failing = Arc::new(AtomicBool::new(false));
    while let Ok((stream, _)) = socket.accept().await {
        let identity = identity.clone();
        let version = version.clone();
        let failing = failing.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let path = req.uri().path();
            let response = if path.starts_with("/api/") {
                api_response(&version, path)
            } else {
                demo_response(&identity, &failing, path)
            };
            async move { Ok::<_, Infallible>(response) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        tokio::spawn(conn);
    }
}

fn demo_response(identity: &str, failing: &AtomicBool, path: &str) -> Response<Full<Bytes>> {
    if path == "/toggle-fail" {
        let now_failing = !failing.fetch_xor(true, Ordering::Relaxed);
        let state = if now_failing { "failing (500)" } else { "healthy" };
        return Response::new(Full::new(Bytes::from(format!("{identity} is now {state}\n"))));
    }
    let mut response = Response::new(Full::new(Bytes::from(format!("{identity} path={path}\n"))));
    if failing.load(Ordering::Relaxed) {
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    }
    response
}

/// The mirror demo's JSON: `generated_at` differs on every answer (the
/// config ignores it), `user.tier` differs only in version v2 (a mismatch).
fn api_response(version: &str, path: &str) -> Response<Full<Bytes>> {
    let tier = if version == "v2" { "Gold" } else { "gold" };
    let generated_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let body = serde_json::json!({
        "path": path,
        "user": { "id": 42, "name": "ada", "tier": tier },
        "generated_at": generated_at,
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

async fn echo(socket: TcpListener) {
    while let Ok((mut stream, _)) = socket.accept().await {
        tokio::spawn(async move {
            let (mut r, mut w) = stream.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// Rewrites the endpoints file of the demo's file-discovered cluster every
/// [`ROTATE_EVERY`] (a write to a temporary file renamed over it, as a
/// controller would), until [`EndpointRotation::stop`] puts the original back.
pub struct EndpointRotation {
    path: PathBuf,
    original: String,
    task: tokio::task::JoinHandle<()>,
}

impl EndpointRotation {
    /// Starts rotating the first file-discovered cluster's endpoints, if any.
    pub async fn start(config: &Config) -> Option<Self> {
        let path = config
            .clusters
            .iter()
            .find_map(|c| Some(c.discovery.as_ref()?.file.as_ref()?.path.clone()))?;
        let original = tokio::fs::read_to_string(&path).await.ok()?;
        let file = path.clone();
        let task = tokio::spawn(async move {
            for set in POOL_SETS.iter().cycle().skip(1) {
                tokio::time::sleep(ROTATE_EVERY).await;
                let endpoints: Vec<_> = set
                    .iter()
                    .map(|&i| serde_json::json!({ "address": POOL[i].0, "zone": POOL[i].1 }))
                    .collect();
                let text = format!("{:#}\n", serde_json::json!({ "endpoints": endpoints }));
                let temporary = file.with_extension("json.tmp");
                let written = tokio::fs::write(&temporary, text).await;
                if written.is_err() || tokio::fs::rename(&temporary, &file).await.is_err() {
                    tracing::warn!(file = %file.display(), "demo: cannot rewrite the endpoints file");
                }
            }
        });
        Some(Self { path, original, task })
    }

    /// Stops rotating and writes the file's original text back.
    pub async fn stop(self) {
        self.task.abort();
        let _ = tokio::fs::write(&self.path, self.original).await;
    }
}

/// Sends every datagram back to where it came from.
async fn udp_echo(socket: UdpSocket) {
    let mut buf = vec![0; 65_536];
    while let Ok((len, from)) = socket.recv_from(&mut buf).await {
        let _ = socket.send_to(&buf[..len], from).await;
    }
}

pub async fn print_tour(app: &App) {
    let public = app
        .listener_addr("public")
        .await
        .map_or_else(|| "127.0.0.1:8080".into(), |a| a.to_string());
    let admin = app.admin_addr();
    println!(
        r#"
weft demo is running. Try:

  # weighted split: about 90% web-stable, 10% web-canary
  for i in $(seq 100); do curl -s http://{public}/; done | cut -d' ' -f1 | sort | uniq -c

  # header routing: x-canary: 1 always reaches web-canary
  curl -s -H 'x-canary: 1' http://{public}/

  # HTTP/2 (prior knowledge) on the same port; a direct response
  curl -s --http2-prior-knowledge http://{public}/healthz

  # raw TCP through the echo listener
  echo hello | nc -q1 127.0.0.1 8081

  # UDP through the echo listener: one session per client address
  echo hello | nc -u -w1 127.0.0.1 8082
  curl -s http://{admin}/metrics | grep weft_udp_

  # zone-aware routing: node.zone is zone-a, so web-stable stays in zone-a
  for i in $(seq 100); do curl -s http://{public}/; done | grep web-stable | cut -d' ' -f3 | sort | uniq -c

  # outlier ejection: make one zone-a backend answer 500, send traffic; after
  # 3 failures weft ejects it for 10s (its health check also turns unhealthy)
  curl -s http://127.0.0.1:9001/toggle-fail
  for i in $(seq 60); do curl -s -o /dev/null -w '%{{http_code}}\n' http://{public}/; done | sort | uniq -c
  curl -s http://{admin}/clusters        # "ejected": true, "returns_in_ms", "health"
  curl -s http://{admin}/metrics | grep -E 'weft_outlier_ejections|weft_endpoint_(ejected|healthy)|weft_zone'

  # zone failover: fail the other two zone-a backends too; traffic spills to zone-b
  curl -s http://127.0.0.1:9002/toggle-fail; curl -s http://127.0.0.1:9003/toggle-fail
  for i in $(seq 60); do curl -s http://{public}/; done | grep web-stable | cut -d' ' -f3 | sort | uniq -c
  # heal them (run each toggle again); health checks bring them back
  for p in 9001 9002 9003; do curl -s http://127.0.0.1:$p/toggle-fail; done

  # mirror and compare: /api/ answers come from api-v1; api-v2 gets a copy
  # and differs in one field, so /compare counts mismatches naming $.user.tier
  for i in $(seq 20); do curl -s -o /dev/null http://{public}/api/users/42; done
  curl -s http://{admin}/compare
  curl -s http://{admin}/metrics | grep weft_mirror_results_total
  tail -n1 /tmp/weft-demo-mismatches.jsonl

  # sticky split: one x-user-id always lands on the same side
  for i in $(seq 20); do curl -s -H 'x-user-id: ada' http://{public}/; done | cut -d' ' -f1 | sort | uniq -c

  # service discovery: cluster "pool" reads its endpoints from config/demo-endpoints.json,
  # which the demo rewrites every 5 s; watch the endpoint set and the answering backend move
  for i in $(seq 15); do curl -s http://{public}/pool | cut -d' ' -f4; sleep 1; done
  watch -n1 "curl -s http://{admin}/metrics | grep -E 'weft_cluster_endpoints|weft_discovery_updates_total' | grep pool"
  curl -s http://{admin}/clusters | grep -B2 -A9 '"kind": "file"'

  # per-cluster error rate and latency percentiles (what examples/rollout.py reads)
  curl -s http://{admin}/clusters | grep -A8 '"recent"'

  # admin
  curl -s http://{admin}/clusters
  curl -s http://{admin}/metrics | grep weft_requests_total
  curl -s http://{admin}/config

Edit config/demo.yaml (for example the split weights) and weft reloads it.
Ctrl-C drains and stops.
"#
    );
}
