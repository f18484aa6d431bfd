//! The `weft` command: run, check, demo, and the Kubernetes helpers
//! init-iptables, inject and await.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weft::app::App;
use weft::config;

#[derive(Parser)]
#[command(name = "weft", version, about = "A service-mesh sidecar proxy")]
struct Cli {
    /// Config file (default: $WEFT_CONFIG, then config/weft.yaml).
    #[arg(long, global = true, env = "WEFT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the config file and exit.
    Check,
    /// Start demo backends and weft in front of them (config/demo.yaml).
    Demo,
    /// Write the nat rules that send a pod's TCP traffic through weft (an init container).
    InitIptables(weft::capture::InitIptablesArgs),
    /// Add weft to Kubernetes manifests (or remove it with --uninject).
    Inject(Box<weft::inject::InjectArgs>),
    /// Wait until weft's admin /ready answers 200.
    Await(weft::await_ready::AwaitArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = cli.config.clone().unwrap_or_else(|| PathBuf::from("config/weft.yaml"));
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => check(&path),
        Command::Run => run(&path, false),
        Command::InitIptables(args) => weft::capture::main(&args),
        Command::Inject(args) => weft::inject::main(&args),
        Command::Await(args) => weft::await_ready::main(&args),
        Command::Demo => {
            let path = match cli.config {
                Some(p) => p,
                None => match weft::demo::config_path() {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("demo: {e}");
                        return ExitCode::FAILURE;
                    }
                },
            };
            run(&path, true)
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match config::load(path).and_then(|loaded| weft::snapshot::check(&loaded).map(|()| loaded)) {
        Ok(loaded) => {
            let c = &loaded.config;
            let routes: usize = c.listeners.iter().map(|l| l.routes.len()).sum();
            // The zone may come from WEFT_ZONE rather than the file, so say which one applies.
            let zone = c
                .node
                .zone
                .as_deref()
                .map(|z| format!(", node.zone {z}"))
                .unwrap_or_default();
            println!(
                "{}: ok ({} listeners, {} routes, {} clusters{zone})",
                path.display(),
                c.listeners.len(),
                routes,
                c.clusters.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    // Logs go to stderr; stdout carries the access log. kube logs every
    // failed API request and watch at error level; weft's discovery logs
    // once per change of state (with the error) instead.
    weft::telemetry::log_limit::init_stderr_log("info,kube_client=off,kube_runtime=off");
}

fn run(path: &Path, demo: bool) -> ExitCode {
    init_logging();
    match weft::upstream::descriptors::raise_limit() {
        Ok((limit, reserve)) => {
            tracing::info!(
                limit,
                reserve,
                "file descriptors: the reserve is kept from upstream connections"
            )
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
    // The whole check first: the runtime below is sized by the file.
    let loaded = match config::load(path).and_then(|loaded| weft::snapshot::check(&loaded).map(|()| loaded)) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    // One worker: a current-thread runtime serves everything on the thread
    // that drives it, with no cross-thread wake-ups or work stealing.
    let mut runtime = match loaded.config.runtime.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all();
    let runtime = match runtime.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Installed before "weft started" is logged, so a signal sent as
        // soon as that line appears is handled, never fatal.
        let Some(signals) = Signals::install() else {
            eprintln!("cannot install signal handlers");
            return ExitCode::FAILURE;
        };
        if demo {
            if let Err(e) = weft::demo::start_backends(&loaded.config).await {
                eprintln!("demo: {e}");
                return ExitCode::FAILURE;
            }
        }
        let app = match App::start(loaded).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let mut rotation = None;
        if demo {
            rotation = weft::demo::EndpointRotation::start(&app.shared.snapshot.load().loaded.config).await;
            weft::demo::print_tour(&app).await;
        }
        let code = serve_until_signal(app, signals).await;
        if let Some(rotation) = rotation {
            rotation.stop().await;
        }
        code
    })
}

/// SIGHUP (reload), SIGTERM and SIGINT (drain and exit).
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Option<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Some(Self {
            hup: signal(SignalKind::hangup()).ok()?,
            term: signal(SignalKind::terminate()).ok()?,
            int: signal(SignalKind::interrupt()).ok()?,
        })
    }
}

async fn serve_until_signal(app: std::sync::Arc<App>, signals: Signals) -> ExitCode {
    let Signals {
        mut hup,
        mut term,
        mut int,
    } = signals;
    let watcher = app.spawn_watcher(tokio::time::Duration::from_secs(2));
    // SIGTERM (the kubelet's) keeps accepting for drain_delay; SIGINT (a
    // person's Ctrl-C) drains at once.
    let delay = loop {
        tokio::select! {
            _ = hup.recv() => { let _ = app.reload(true).await; }
            _ = term.recv() => break app.shared.snapshot.load().loaded.config.drain_delay,
            _ = int.recv() => break tokio::time::Duration::ZERO,
        }
    };
    watcher.abort();
    let shutdown = app.shutdown_after(delay);
    tokio::pin!(shutdown);
    // A further SIGTERM or SIGINT ends the drain delay at once.
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = term.recv() => app.end_drain_delay(),
            _ = int.recv() => app.end_drain_delay(),
        }
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
