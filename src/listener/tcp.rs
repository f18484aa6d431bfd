//! Raw TCP proxying: each accepted connection is joined to an endpoint of the
//! listener's cluster and bytes flow both ways, with half-close passed on
//! (one side's FIN becomes a shutdown of the other side's write half).

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::schema::ListenerConfig;
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
    let mut connections = JoinSet::new();
    while let Some((mut inbound, peer, permit)) = accept_tcp(&listener, &slots, &mut phase, &config.name).await {
        let open = counters.open();
        // The cluster is looked up per connection so a reload that changes
        // its endpoints applies to new connections.
        let cluster = shared.snapshot.load().cluster(&cluster_name).cloned();
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            let _counted = (open, permit);
            let result = async {
                let cluster = cluster.ok_or("cluster is gone")?;
                let endpoint = cluster.pick(None).ok_or("no endpoint")?;
                let _in_flight = endpoint.start_request();
                let started = tokio::time::Instant::now();
                let connected = tokio::time::timeout(
                    cluster.config.connect_timeout,
                    TcpStream::connect(endpoint.target.address),
                )
                .await;
                cluster.record_connect(&endpoint, started, matches!(connected, Ok(Ok(_))));
                let mut outbound = connected
                    .map_err(|_| "connect timeout")?
                    .map_err(|_| "connect failed")?;
                let _ = outbound.set_nodelay(true);
                let _ = inbound.set_nodelay(true);
                tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                    .await
                    .map_err(|_| "stream error")?;
                Ok::<_, &'static str>(())
            }
            .await;
            if let Err(why) = result {
                tracing::debug!(%peer, why, "tcp connection ended");
            }
        });
    }
    give_back.give(Socket::Tcp(listener));
    // Established streams have no request boundary to drain at; let them run
    // to their end (SIGTERM's drain timeout bounds the wait).
    while connections.join_next().await.is_some() {}
}
