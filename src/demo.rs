//! `weft demo`: backends for every endpoint of the demo config, started in
//! this process, so the demo needs nothing else running. An HTTP backend
//! answers with its cluster, version (the cluster name's last part) and zone;
//! a tcp backend echoes.

use std::convert::Infallible;
use std::path::PathBuf;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::app::App;
use crate::config::schema::{ClusterProtocol, Config};

const DEMO_YAML: &str = include_str!("../config/demo.yaml");

/// `config/demo.yaml` when run from the repository; otherwise the built-in
/// copy, written to a temporary file so reloads still have a file to watch.
pub fn config_path() -> std::io::Result<PathBuf> {
    let local = PathBuf::from("config/demo.yaml");
    if local.exists() {
        return Ok(local);
    }
    let path = std::env::temp_dir().join("weft-demo.yaml");
    std::fs::write(&path, DEMO_YAML)?;
    Ok(path)
}

pub async fn start_backends(config: &Config) -> Result<(), String> {
    for cluster in &config.clusters {
        for endpoint in &cluster.endpoints {
            let socket = TcpListener::bind(endpoint.address)
                .await
                .map_err(|e| format!("cannot start demo backend on {}: {e}", endpoint.address))?;
            let zone = endpoint.zone.clone().unwrap_or_else(|| "none".into());
            let version = cluster.name.rsplit('-').next().unwrap_or(&cluster.name).to_string();
            let identity = format!(
                "cluster={} version={version} zone={zone} endpoint={}",
                cluster.name, endpoint.address
            );
            match cluster.protocol {
                ClusterProtocol::Tcp => tokio::spawn(echo(socket)),
                ClusterProtocol::Http1 | ClusterProtocol::Http2 | ClusterProtocol::Http3 => {
                    tokio::spawn(http_backend(socket, identity))
                }
            };
        }
    }
    Ok(())
}

async fn http_backend(socket: TcpListener, identity: String) {
    let builder = auto::Builder::new(TokioExecutor::new());
    while let Ok((stream, _)) = socket.accept().await {
        let identity = identity.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let text = format!("{identity} path={}\n", req.uri().path());
            async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text)))) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        tokio::spawn(conn);
    }
}

async fn echo(socket: TcpListener) {
    while let Ok((mut stream, _)) = socket.accept().await {
        tokio::spawn(async move {
            let (mut r, mut w) = stream.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
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

  # admin
  curl -s http://{admin}/clusters
  curl -s http://{admin}/metrics | grep weft_requests_total
  curl -s http://{admin}/config

Edit config/demo.yaml (for example the split weights) and weft reloads it.
Ctrl-C drains and stops.
"#
    );
}
