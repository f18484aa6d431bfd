//! The set of running listeners, reconciled against each new config.
//!
//! Guarantees:
//! - A listener whose socket-level settings did not change keeps running
//!   untouched. Routes and `advertise_http3` are read per request from the
//!   live snapshot, so changing them changes nothing here.
//! - A changed listener on the same address (and kind of socket: TCP for
//!   `http` and `tcp`, QUIC for `http3`, UDP for `udp`) keeps its bound
//!   socket: the old task stops accepting and hands the socket to a new task
//!   with the new settings, so the port never refuses a connection (they
//!   wait in the kernel's backlog for the moment of the hand-over). New
//!   connections get the new settings; open ones finish on the old (see
//!   [`Phase::HandedOver`]). A `udp` listener's sessions end at the
//!   hand-over (its datagrams wait in the socket's buffer meanwhile), so
//!   each client's next datagram starts a session with the new settings. The socket is
//!   found by name and address, or, for a fixed port, by address alone (a
//!   renamed listener, two listeners swapping addresses, a port 0 replaced
//!   by the port it got).
//! - A refused reload leaves the old listeners serving. Certificates are
//!   loaded and free addresses bound before anything is stopped; a listener
//!   whose address a newly bound one needs (stopped first, as the kernel
//!   requires, and its socket closed before the bind) is started again on
//!   its address with its old settings if that bind fails.
//! - A listener task that dies (panics, or ends without being told to) is
//!   logged and listed in [`Health`], which turns `/ready` to 503 until a
//!   reload starts the listener again.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};

use super::{h3, http, tcp, tls, udp, Phase, Socket, SocketReturn};
use crate::config::schema::{ListenerConfig, ListenerProtocol};
use crate::proxy::Shared;

/// A bound listening socket with its TLS set-up.
enum Bound {
    Tcp(TcpListener, Option<tls::TlsSetup>),
    Quic(quinn::Endpoint, tls::TlsSetup),
    Udp(tokio::net::UdpSocket),
}

/// A listener's TLS (and QUIC server config), made before any socket is
/// bound or handed over, so that a bad certificate refuses the config.
enum Prepared {
    Tcp(Option<tls::TlsSetup>),
    Quic(tls::TlsSetup, quinn::ServerConfig),
    Udp,
}

impl Prepared {
    fn new(config: &ListenerConfig, base: &Path) -> Result<Self, String> {
        if config.protocol == ListenerProtocol::Udp {
            return Ok(Self::Udp);
        }
        if config.protocol != ListenerProtocol::Http3 {
            return Ok(Self::Tcp(tls::prepare(config, base, tls::ALPN_TCP)?));
        }
        let tls = tls::prepare(config, base, &[b"h3"])?
            .ok_or_else(|| format!("listener {}: http3 needs tls", config.name))?;
        let server = h3::server_config(config, &tls)?;
        Ok(Self::Quic(tls, server))
    }

    async fn bind(self, config: &ListenerConfig) -> Result<Bound, String> {
        let address = config.address;
        match self {
            Self::Tcp(tls) => {
                let socket = TcpListener::bind(address)
                    .await
                    .map_err(|e| format!("listener {}: cannot bind {address}: {e}", config.name))?;
                Ok(Bound::Tcp(socket, tls))
            }
            Self::Quic(tls, server) => {
                let endpoint = quinn::Endpoint::server(server, address)
                    .map_err(|e| format!("listener {}: cannot bind udp {address}: {e}", config.name))?;
                Ok(Bound::Quic(endpoint, tls))
            }
            Self::Udp => {
                let socket = tokio::net::UdpSocket::bind(address)
                    .await
                    .map_err(|e| format!("listener {}: cannot bind udp {address}: {e}", config.name))?;
                Ok(Bound::Udp(socket))
            }
        }
    }

    /// Takes over a predecessor's socket; `Err` if it is of the other
    /// transport (then it is closed).
    fn adopt(self, socket: Socket) -> Result<Bound, Box<Self>> {
        match (self, socket) {
            (Self::Tcp(tls), Socket::Tcp(socket)) => Ok(Bound::Tcp(socket, tls)),
            (Self::Quic(tls, server), Socket::Quic(endpoint)) => {
                // New QUIC connections get the new transport settings and TLS;
                // open ones keep theirs.
                endpoint.set_server_config(Some(server));
                Ok(Bound::Quic(endpoint, tls))
            }
            (Self::Udp, Socket::Udp(socket)) => Ok(Bound::Udp(socket)),
            (prepared, _) => Err(Box::new(prepared)),
        }
    }
}

/// Which listeners are down: their task died while it should have been
/// serving. `/ready` answers 503 while any is.
#[derive(Default)]
pub struct Health(Mutex<HealthState>);

#[derive(Default)]
struct HealthState {
    /// The generation of each listener that should be serving now.
    serving: HashMap<String, u64>,
    down: BTreeSet<String>,
}

impl Health {
    /// Names of the listeners that are down.
    pub fn down(&self) -> Vec<String> {
        self.0.lock().down.iter().cloned().collect()
    }

    fn serving(&self, name: &str, generation: u64) {
        let mut state = self.0.lock();
        state.serving.insert(name.to_string(), generation);
        state.down.remove(name);
    }

    /// Moves `generation` of `name` to `phase`; from then on its end is no death.
    fn retire(&self, name: &str, generation: u64, stop: &watch::Sender<Phase>, phase: Phase) {
        let mut state = self.0.lock();
        stop.send_replace(phase);
        if state.serving.get(name) == Some(&generation) {
            state.serving.remove(name);
        }
    }

    /// Whether `generation` of `name` counted as serving; if so it is down now.
    fn died(&self, name: &str, generation: u64) -> bool {
        let mut state = self.0.lock();
        let serving = state.serving.get(name) == Some(&generation);
        if serving {
            state.down.insert(name.to_string());
        }
        serving
    }

    /// Forgets listeners that are no longer configured.
    fn keep_only(&self, names: &HashSet<&str>) {
        self.0.lock().down.retain(|n| names.contains(n.as_str()));
    }
}

struct Running {
    config: ListenerConfig,
    generation: u64,
    /// The bound address (differs from the configured one for port 0).
    local: SocketAddr,
    stop: watch::Sender<Phase>,
    /// The socket, once the task has stopped accepting and a successor asked for it.
    socket: oneshot::Receiver<Socket>,
    /// The supervisor: ends after the listener's task has.
    task: JoinHandle<()>,
    /// The listener's own task.
    serve: AbortHandle,
}

/// What a reconcile does, decided before anything is touched.
#[derive(Default)]
struct Plan<'a> {
    /// Changed listeners and the running listener whose socket each takes.
    takeovers: Vec<(&'a ListenerConfig, String)>,
    /// Listeners bound afresh.
    binds: Vec<&'a ListenerConfig>,
    /// Running listeners to close before the binds (they hold an address a
    /// bind needs), and after the new ones started.
    close_first: Vec<String>,
    close_after: Vec<String>,
}

/// A listener closed for a bind, and how to start it again should the bind fail.
struct Restore {
    config: ListenerConfig,
    local: SocketAddr,
    /// Its TLS made again before it was closed (the files may have changed since it started).
    prepared: Result<Prepared, String>,
}

/// A listener told to stop, until its connections have finished.
struct Stopping {
    stop: watch::Sender<Phase>,
    task: JoinHandle<()>,
}

pub struct ListenerSet {
    running: HashMap<String, Running>,
    stopping: Vec<Stopping>,
    health: Arc<Health>,
    generations: u64,
}

impl ListenerSet {
    pub fn new(health: Arc<Health>) -> Self {
        Self {
            running: HashMap::new(),
            stopping: Vec::new(),
            health,
            generations: 0,
        }
    }

    /// Makes the running listeners those of `wanted` (see the module doc).
    pub async fn reconcile(
        &mut self,
        wanted: &[ListenerConfig],
        base: &Path,
        shared: &Arc<Shared>,
    ) -> Result<(), String> {
        let plan = self.plan(wanted);
        // Everything that can fail without touching a running listener is
        // done first: TLS, and the binds of addresses no listener holds.
        let mut takeovers = Vec::with_capacity(plan.takeovers.len());
        for (w, donor) in plan.takeovers {
            takeovers.push((w, donor, Prepared::new(w, base)?));
        }
        let (mut bound, mut blocked) = (Vec::with_capacity(plan.binds.len()), Vec::new());
        for w in plan.binds {
            let prepared = Prepared::new(w, base)?;
            match plan
                .close_first
                .iter()
                .any(|n| self.running.get(n).is_some_and(|r| conflicts(r, w)))
            {
                true => blocked.push((w, prepared)),
                false => bound.push((w, prepared.bind(w).await?)),
            }
        }
        bound.extend(self.close_and_bind(&plan.close_first, blocked, base, shared).await?);
        self.take_over(takeovers, base, shared).await?;
        for name in &plan.close_after {
            self.stop(name);
        }
        for (w, socket) in bound {
            // With port 0 in the config, the log shows the port the OS chose.
            let address = local_addr(&socket, w.address);
            tracing::info!(listener = %w.name, %address, protocol = ?w.protocol, "listening");
            self.start(w.clone(), socket, shared);
        }
        self.health.keep_only(&wanted.iter().map(|w| w.name.as_str()).collect());
        Ok(())
    }

    /// Closes the listeners `close` and binds `blocked` on the addresses
    /// they held; if a bind fails, starts the closed ones again.
    async fn close_and_bind<'a>(
        &mut self,
        close: &[String],
        blocked: Vec<(&'a ListenerConfig, Prepared)>,
        base: &Path,
        shared: &Arc<Shared>,
    ) -> Result<Vec<(&'a ListenerConfig, Bound)>, String> {
        let restores = self.restores(close, base);
        for name in close {
            self.close_now(name).await;
        }
        let mut bound = Vec::with_capacity(blocked.len());
        for (w, prepared) in blocked {
            match prepared.bind(w).await {
                Ok(socket) => bound.push((w, socket)),
                Err(e) => {
                    // The sockets bound so far may hold the addresses to restore.
                    drop(bound);
                    return Err(self.restore(restores, shared, e).await);
                }
            }
        }
        Ok(bound)
    }

    /// What restarts each of `names` on its address, should a bind that
    /// needs their addresses fail: its config and TLS, and the address it had.
    fn restores(&self, names: &[String], base: &Path) -> Vec<Restore> {
        let restore = |r: &Running| Restore {
            config: r.config.clone(),
            local: r.local,
            prepared: Prepared::new(&r.config, base),
        };
        names.iter().filter_map(|n| self.running.get(n)).map(restore).collect()
    }

    /// Restarts the listeners closed for a bind that then failed with
    /// `error`, each with its old settings on the address it had; the error
    /// names any that could not be.
    async fn restore(&mut self, restores: Vec<Restore>, shared: &Arc<Shared>, error: String) -> String {
        let mut error = error;
        for Restore {
            config,
            local,
            prepared,
        } in restores
        {
            let at_local = ListenerConfig {
                address: local,
                ..config.clone()
            };
            let bound = match prepared {
                Ok(prepared) => prepared.bind(&at_local).await,
                Err(e) => Err(e),
            };
            match bound {
                Ok(socket) => {
                    tracing::warn!(listener = %config.name, address = %local, "listening again after a refused reload");
                    self.start(config, socket, shared);
                }
                Err(e) => {
                    tracing::error!(listener = %config.name, error = %e, "listener could not be restarted after a refused reload");
                    error = format!("{error}; and then {e}");
                }
            }
        }
        error
    }

    /// Closes a listener for good, like [`ListenerSet::stop`], but returns
    /// only once its socket is closed, so that its address can be bound.
    async fn close_now(&mut self, name: &str) {
        let Some(r) = self.running.remove(name) else { return };
        tracing::info!(listener = %name, "listener stopping");
        self.health.retire(name, r.generation, &r.stop, Phase::Closing);
        // The task gives its socket back once it has stopped accepting
        // (nothing if it died), and it is dropped here.
        if let Ok(Socket::Quic(endpoint)) = r.socket.await {
            // Its task keeps the endpoint for the open connections; it takes no new ones.
            endpoint.set_server_config(None);
        }
        self.stopping.push(Stopping {
            stop: r.stop,
            task: r.task,
        });
    }

    /// Decides what [`ListenerSet::reconcile`] does, touching nothing but
    /// the configs of kept listeners and forgetting dead ones.
    fn plan<'a>(&mut self, wanted: &'a [ListenerConfig]) -> Plan<'a> {
        // A dead listener's socket went with its task; it is bound afresh.
        self.running.retain(|_, r| !r.serve.is_finished());
        let mut claimed: HashSet<String> = HashSet::new();
        for w in wanted {
            if let Some(r) = self.running.get_mut(&w.name).filter(|r| same_task(&r.config, w)) {
                r.config = w.clone();
                claimed.insert(w.name.clone());
            }
        }
        let changed: Vec<&ListenerConfig> = wanted.iter().filter(|w| !claimed.contains(&w.name)).collect();
        let mut plan = Plan::default();
        for w in changed {
            match self.donor(w, &claimed) {
                Some(donor) => {
                    claimed.insert(donor.clone());
                    plan.takeovers.push((w, donor));
                }
                None => plan.binds.push(w),
            }
        }
        let closing = self.running.iter().filter(|(n, _)| !claimed.contains(*n));
        for (name, r) in closing {
            match plan.binds.iter().any(|w| conflicts(r, w)) {
                true => plan.close_first.push(name.clone()),
                false => plan.close_after.push(name.clone()),
            }
        }
        plan
    }

    /// Starts each changed listener on its predecessor's socket. Every socket
    /// is taken before any successor starts: two listeners may be swapping
    /// addresses.
    async fn take_over(
        &mut self,
        takeovers: Vec<(&ListenerConfig, String, Prepared)>,
        base: &Path,
        shared: &Arc<Shared>,
    ) -> Result<(), String> {
        let mut sockets = Vec::with_capacity(takeovers.len());
        for (w, donor, prepared) in takeovers {
            sockets.push((w, prepared, self.take_socket(&donor).await));
        }
        for (w, prepared, socket) in sockets {
            let socket = match socket.map(|s| prepared.adopt(s)) {
                Some(Ok(socket)) => socket,
                Some(Err(prepared)) => prepared.bind(w).await?,
                // The predecessor died meanwhile, and its socket with it.
                None => Prepared::new(w, base)?.bind(w).await?,
            };
            tracing::info!(listener = %w.name, address = %w.address, protocol = ?w.protocol, "listening with new settings on the same socket");
            self.start(w.clone(), socket, shared);
        }
        Ok(())
    }

    /// The running listener, not yet claimed, whose socket `wanted` can take:
    /// its own of the same address, else another's of the same fixed address
    /// (configured, or bound for port 0).
    fn donor(&self, wanted: &ListenerConfig, claimed: &HashSet<String>) -> Option<String> {
        // A fixed port may be the one a port-0 listener got: that socket is the one.
        let free = |(name, r): &(&String, &Running)| {
            let address = r.config.address == wanted.address || r.local == wanted.address;
            !claimed.contains(*name) && same_transport(&r.config, wanted) && address
        };
        let own = self.running.get_key_value(&wanted.name).filter(|pair| free(pair));
        let by_address = || {
            self.running
                .iter()
                .find(|pair| wanted.address.port() != 0 && free(pair))
        };
        own.or_else(by_address).map(|(name, _)| name.clone())
    }

    fn start(&mut self, config: ListenerConfig, socket: Bound, shared: &Arc<Shared>) {
        self.generations += 1;
        let generation = self.generations;
        let local = local_addr(&socket, config.address);
        let (stop, phase) = watch::channel(Phase::Serving);
        let (socket_tx, socket_rx) = oneshot::channel();
        let give_back = SocketReturn(socket_tx);
        let serve = match socket {
            Bound::Tcp(socket, tls) => {
                if let Some(tls) = &tls {
                    tls::watch_certificates(tls.store.clone(), &config.name, &shared.metrics, phase.clone());
                }
                if config.protocol == ListenerProtocol::Tcp {
                    tokio::spawn(tcp::serve(config.clone(), socket, shared.clone(), phase, give_back))
                } else {
                    let serving = http::serve(config.clone(), socket, tls, shared.clone(), phase, give_back);
                    tokio::spawn(serving)
                }
            }
            Bound::Quic(endpoint, tls) => {
                tls::watch_certificates(tls.store.clone(), &config.name, &shared.metrics, phase.clone());
                tokio::spawn(h3::serve(config.clone(), endpoint, shared.clone(), phase, give_back))
            }
            Bound::Udp(socket) => tokio::spawn(udp::serve(config.clone(), socket, shared.clone(), phase, give_back)),
        };
        self.health.serving(&config.name, generation);
        let abort = serve.abort_handle();
        let task = tokio::spawn(supervise(config.name.clone(), generation, serve, self.health.clone()));
        self.running.insert(
            config.name.clone(),
            Running {
                config,
                generation,
                local,
                stop,
                socket: socket_rx,
                task,
                serve: abort,
            },
        );
    }

    /// Closes a listener for good: it stops accepting and its connections drain.
    fn stop(&mut self, name: &str) {
        if let Some(r) = self.running.remove(name) {
            tracing::info!(listener = %name, "listener stopping");
            // Dropped first, so the task's socket closes instead of waiting here.
            drop(r.socket);
            self.health.retire(name, r.generation, &r.stop, Phase::Closing);
            self.stopping.push(Stopping {
                stop: r.stop,
                task: r.task,
            });
        }
        self.stopping.retain(|s| !s.task.is_finished());
    }

    /// Stops a listener from accepting and takes its socket for a successor;
    /// `None` if its task died. Its open connections finish on their own.
    async fn take_socket(&mut self, name: &str) -> Option<Socket> {
        let r = self.running.remove(name)?;
        self.health.retire(name, r.generation, &r.stop, Phase::HandedOver);
        let socket = r.socket.await.ok();
        self.stopping.push(Stopping {
            stop: r.stop,
            task: r.task,
        });
        socket
    }

    /// Stops every listener and waits for their connections to finish.
    pub async fn drain(&mut self) {
        self.drain_where(|_| true).await;
    }

    /// Stops the listeners `which` picks and waits for their connections
    /// to finish (and for those of listeners stopped earlier); the others
    /// keep serving.
    pub async fn drain_where(&mut self, which: impl Fn(&ListenerConfig) -> bool) {
        let names: Vec<String> = self
            .running
            .iter()
            .filter(|(_, r)| which(&r.config))
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            self.stop(&name);
        }
        // Listeners that handed their socket over close their silent connections now too.
        for s in &self.stopping {
            s.stop.send_replace(Phase::Closing);
        }
        for s in self.stopping.drain(..) {
            let _ = s.task.await;
        }
    }

    /// The bound address of a running listener.
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.running.get(name).map(|r| r.local)
    }

    /// Ends a listener's task at once, as a panic in it would: for tests of
    /// the supervision. Whether there was such a listener.
    pub fn kill(&self, name: &str) -> bool {
        self.running.get(name).map(|r| r.serve.abort()).is_some()
    }
}

/// Waits for a listener's task to end; if it ended while it should have
/// been serving, logs why and marks the listener down.
async fn supervise(name: String, generation: u64, serve: JoinHandle<()>, health: Arc<Health>) {
    let ended = serve.await;
    if !health.died(&name, generation) {
        if let Err(e) = ended {
            tracing::error!(listener = %name, error = %e, "listener task failed while stopping");
        }
        return;
    }
    let why = match ended {
        Ok(()) => "ended".to_string(),
        Err(e) if e.is_panic() => {
            let panic = e.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(ToString::to_string)
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            format!("panicked: {message}")
        }
        Err(e) => e.to_string(),
    };
    tracing::error!(listener = %name, why, "listener task died; its port accepts nothing and /ready answers 503 until a reload restarts it");
}

/// Whether a running listener with settings `a` can serve `b` as it is:
/// everything but what requests read from the live snapshot must match.
fn same_task(a: &ListenerConfig, b: &ListenerConfig) -> bool {
    let socket_level = |c: &ListenerConfig| ListenerConfig {
        routes: Vec::new(),
        advertise_http3: false,
        ..c.clone()
    };
    socket_level(a) == socket_level(b)
}

/// Whether one listener can take the other's socket: both TCP listeners,
/// both QUIC endpoints (`http3`) or both plain UDP sockets (`udp`).
fn same_transport(a: &ListenerConfig, b: &ListenerConfig) -> bool {
    let kind = |c: &ListenerConfig| match c.protocol {
        ListenerProtocol::Http | ListenerProtocol::Tcp => 0,
        ListenerProtocol::Http3 => 1,
        ListenerProtocol::Udp => 2,
    };
    kind(a) == kind(b)
}

/// Whether binding `wanted` needs the address `running` holds.
fn conflicts(running: &Running, wanted: &ListenerConfig) -> bool {
    let (held, asked) = (running.local, wanted.address);
    running.config.protocol.uses_udp() == wanted.protocol.uses_udp()
        && asked.port() != 0
        && held.port() == asked.port()
        && (held.ip() == asked.ip() || held.ip().is_unspecified() || asked.ip().is_unspecified())
}

/// The address `socket` is bound to (`configured` if the OS will not say).
fn local_addr(socket: &Bound, configured: SocketAddr) -> SocketAddr {
    let local = match socket {
        Bound::Tcp(s, _) => s.local_addr(),
        Bound::Quic(e, _) => e.local_addr(),
        Bound::Udp(s) => s.local_addr(),
    };
    local.unwrap_or(configured)
}
