//! Raw TCP proxying: each accepted connection is joined to an endpoint of the
//! listener's cluster, or for an original-destination cluster to the
//! connection's original destination, and bytes flow both ways, with
//! half-close passed on (one side's FIN becomes a shutdown of the other
//! side's write half). [`forward`] also carries the connections an `http`
//! listener with original destinations finds are not HTTP.
//!
//! A connection with no bytes moving either way for the listener's
//! `idle_timeout` (default 1 hour, as Envoy's tcp_proxy) is closed, both
//! sides, and counted in `weft_tcp_idle_timeouts_total{listener}`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::cluster::{Cluster, InFlight};
use crate::config::limits::DEFAULT_TCP_IDLE_TIMEOUT;
use crate::config::schema::ListenerConfig;
use crate::front::idle::{self, CopyEnd, IdleLimit};
use crate::listener::original_destination::Capture;
use crate::listener::{accept_tcp, ConnectionCounters, Phase, Socket, SocketReturn};
use crate::proxy::Shared;

pub async fn serve(
    config: ListenerConfig,
    listener: TcpListener,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    give_back: SocketReturn,
) {
    let slots = Arc::new(Semaphore::new(config.limits.max_connections));
    let cluster_name = config.cluster.clone().unwrap_or_default();
    let counters = ConnectionCounters::new(&shared.metrics, &config.name);
    let capture = Capture::new(&config, &shared.metrics);
    let idle = idle_limit(&config, &shared.metrics);
    let mut connections = JoinSet::new();
    while let Some((inbound, peer, permit)) = accept_tcp(&listener, &slots, &mut phase, &counters, &config.name).await {
        let destination = match &capture {
            None => None,
            Some(capture) => match capture.destination(&inbound, &config.name) {
                Some(destination) => Some(destination),
                None => continue,
            },
        };
        let open = counters.open();
        let _ = inbound.set_nodelay(true);
        // The cluster is looked up per connection so a reload that changes
        // its endpoints applies to new connections.
        let cluster = shared.snapshot.load().cluster(&cluster_name).cloned();
        while connections.try_join_next().is_some() {}
        let idle = idle.clone();
        connections.spawn(async move {
            let _counted = (open, permit);
            if let Err(why) = forward(inbound, cluster, destination, &idle).await {
                tracing::debug!(%peer, why, "tcp connection ended");
            }
        });
    }
    give_back.give(Socket::Tcp(listener));
    // Established streams have no request boundary to drain at; let them run
    // to their end (SIGTERM's drain timeout bounds the wait).
    while connections.join_next().await.is_some() {}
}

/// A listener's `idle_timeout`, with its counter.
pub fn idle_limit(config: &ListenerConfig, metrics: &crate::telemetry::metrics::Metrics) -> IdleLimit {
    IdleLimit {
        timeout: config.idle_timeout.unwrap_or(DEFAULT_TCP_IDLE_TIMEOUT),
        expired: metrics.tcp_idle_timeouts.with_label_values(&[&config.name]),
    }
}

/// Joins `inbound` to `cluster`: to `destination` (the connection's
/// original destination) for an original-destination cluster, else to an
/// endpoint the cluster picks; then copies both ways until both ends
/// closed, or until no bytes moved for `idle`'s timeout.
pub async fn forward<I>(
    inbound: I,
    cluster: Option<Arc<Cluster>>,
    destination: Option<SocketAddr>,
    idle: &IdleLimit,
) -> Result<(), &'static str>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let cluster = cluster.ok_or("cluster is gone")?;
    let (outbound, _in_flight) = match (&cluster.original_destination, destination) {
        (Some(destinations), Some(destination)) => {
            let address = destinations.address(destination);
            (connect(address, &cluster).await?, None)
        }
        (Some(_), None) => return Err("no original destination"),
        (None, _) => {
            let (outbound, in_flight) = connect_endpoint(&cluster).await?;
            (outbound, Some(in_flight))
        }
    };
    idle::copy_until_idle(inbound, outbound, idle)
        .await
        .map_err(CopyEnd::as_str)
}

/// Connects to an endpoint the cluster picks; the connect counts towards
/// the endpoint's health, the connection as in flight until it is dropped.
async fn connect_endpoint(cluster: &Arc<Cluster>) -> Result<(TcpStream, InFlight), &'static str> {
    let endpoint = cluster.pick(None).ok_or("no endpoint")?;
    let in_flight = endpoint.start_request();
    let started = tokio::time::Instant::now();
    let connected = connect(endpoint.target.address, cluster).await;
    cluster.record_connect(&endpoint, started, connected.is_ok());
    Ok((connected?, in_flight))
}

/// A TCP connection to `address` within the cluster's connect timeout.
async fn connect(address: SocketAddr, cluster: &Cluster) -> Result<TcpStream, &'static str> {
    let connected = tokio::time::timeout(cluster.config.connect_timeout, TcpStream::connect(address)).await;
    let outbound = connected
        .map_err(|_| "connect timeout")?
        .map_err(|_| "connect failed")?;
    let _ = outbound.set_nodelay(true);
    Ok(outbound)
}
