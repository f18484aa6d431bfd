//! The soak: the real weft binary under mixed traffic and faults for
//! `WEFT_SOAK_SECONDS` (default 60), then checks that nothing broke or
//! leaked. Not part of a plain `cargo test` (it is `#[ignore]`d); run it with
//!
//! ```sh
//! WEFT_SOAK_SECONDS=600 cargo test --test integration soak -- --ignored --nocapture
//! ```
//!
//! Traffic (`traffic.rs`): HTTP/1.1 and h2c over keep-alive connections and
//! a new connection per request, TCP round trips on long-lived and one-shot
//! connections, and clients that disconnect mid-request. Faults: the config
//! is rewritten every few seconds (`child.rs`, `Shape`: routes, an extra
//! listener, a cluster's pool, a listener's socket hand-over, a broken file),
//! one upstream is killed and restarted, one answers slowly (past its route
//! timeout at times), two reset mid-body (HTTP/1.1 and HTTP/2).
//!
//! Checks: weft's stderr never says "panicked" and the process is alive at
//! the end; every request got its answer or an error status weft answers
//! itself, within its route timeout plus a margin (see `traffic::Outcome`;
//! keep-alive clients retry once when their connection closed under a
//! request, as real clients do; a resetting upstream's request that got
//! no status at all fails too, and has a column of its own);
//! resident memory and open descriptors at the end are within 10% of their
//! level after the warm-up, and the runtime's alive tasks are back to that
//! level. Levels are taken with weft quiet (traffic stopped, the canonical
//! config applied, no connection open on either side: pooled upstream
//! connections close after the clusters' `idle_timeout`), so they compare.

mod traffic;
mod upstreams;
mod child;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::time::Duration;

use crate::support::*;
use child::{family_sum, Shape, WeftProcess};
use traffic::{Outcome, Tally};
use upstreams::Upstreams;

/// The config is rewritten every this many seconds.
const RELOAD_EVERY_S: u64 = 3;
/// The flaky upstream is killed once per cycle and restarted 2 s later.
const FLAKY_CYCLE_S: u64 = 6;
/// Final resident memory and descriptors may exceed the warm-up level by this share.
const FLAT: f64 = 0.10;

/// Resources weft holds at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Level {
    rss_kib: u64,
    fds: u64,
    tasks: u64,
}

impl Level {
    async fn of(weft: &WeftProcess) -> Self {
        // The scrape first: its admin connection is closed at the /proc reading.
        let tasks = family_sum(&weft.metrics().await, "weft_runtime_alive_tasks") as u64;
        let usage = weft.usage();
        Self {
            rss_kib: usage.rss_kib,
            fds: usage.fds,
            tasks,
        }
    }

    fn max(self, other: Self) -> Self {
        Self {
            rss_kib: self.rss_kib.max(other.rss_kib),
            fds: self.fds.max(other.fds),
            tasks: self.tasks.max(other.tasks),
        }
    }
}

/// The soak's running state between phases.
struct Soak {
    up: Upstreams,
    weft: WeftProcess,
    tally: Arc<Tally>,
    generation: u64,
    kills: u64,
    peak: Level,
}

impl Soak {
    /// Traffic and faults for `seconds`; returns once every client stopped.
    async fn run(&mut self, seconds: u64) {
        let running = Arc::new(AtomicBool::new(true));
        let mut clients = traffic::start(self.weft.front, self.weft.tcp, &self.tally, &running);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for second in 0..seconds {
            tick.tick().await;
            if second % RELOAD_EVERY_S == 1 {
                self.generation += 1;
                self.weft.write_config(&self.up, Shape::of(self.generation));
            }
            match second % FLAKY_CYCLE_S {
                3 => {
                    self.up.flaky.kill();
                    self.kills += 1;
                }
                5 => self.up.flaky.restart().await,
                _ => {}
            }
            self.peak = self.peak.max(Level::of(&self.weft).await);
        }
        running.store(false, Ordering::SeqCst);
        let stopped = async {
            while let Some(client) = clients.join_next().await {
                client.unwrap();
            }
        };
        tokio::time::timeout(PATIENCE, stopped)
            .await
            .expect("the clients stop within their deadlines");
        if !self.up.flaky.is_running() {
            self.up.flaky.restart().await;
        }
    }

    /// Applies the canonical config, waits until no connection is open on
    /// either side of weft, and takes its level.
    async fn quiet_level(&mut self) -> Level {
        self.generation += 1;
        self.weft.write_config(&self.up, Shape::canonical(self.generation));
        let (url, expected) = (
            format!("http://{}/gen", self.weft.front),
            format!("gen-{}", self.generation),
        );
        eventually("the canonical config serves", async || {
            let (_, body) = get(&h1_client(), &url).await;
            if body == expected {
                Ok(())
            } else {
                Err(body)
            }
        })
        .await;
        eventually("no connection open to or from weft", async || {
            let downstream = family_sum(&self.weft.metrics().await, "weft_downstream_connections_active");
            let upstream = self.up.open();
            if downstream == 0.0 && upstream == 0 {
                Ok(())
            } else {
                Err(format!("{downstream} downstream, {upstream} upstream"))
            }
        })
        .await;
        Level::of(&self.weft).await
    }
}

fn soak_seconds() -> u64 {
    std::env::var("WEFT_SOAK_SECONDS").map_or(60, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("WEFT_SOAK_SECONDS={s:?}: a number of seconds"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of WEFT_SOAK_SECONDS (default 60); .ci/run runs it with --ignored"]
async fn weft_survives_mixed_traffic_reloads_and_faults_without_leaks() {
    let seconds = soak_seconds().max(20);
    let warm_up = (seconds / 6).clamp(10, 60);
    let half = (seconds - warm_up) / 2;
    let up = Upstreams::start().await;
    let weft = WeftProcess::start(&up).await;
    let mut soak = Soak {
        up,
        weft,
        tally: Arc::new(Tally::default()),
        generation: 0,
        kills: 0,
        peak: Level::default(),
    };
    soak.run(warm_up).await;
    let start = soak.quiet_level().await;
    soak.run(half).await;
    let middle = soak.quiet_level().await;
    soak.run(half).await;
    let mut end = soak.quiet_level().await;
    // Tasks that end on their own (a drained listener generation) get the
    // time they need; a leaked one never ends.
    let mut tasks_back = async || {
        end = Level::of(&soak.weft).await;
        end.tasks <= start.tasks
    };
    let tasks_back = tokio::time::timeout(PATIENCE, async {
        while !tasks_back().await {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .is_ok();

    let metrics = soak.weft.metrics().await;
    println!("{}", summary(&soak, seconds, warm_up, [start, middle, end], &metrics));
    let problems = problems(&mut soak, start, end, tasks_back);
    if !problems.is_empty() {
        println!("weft's last stderr lines:");
        for line in &soak.weft.log.lock().tail {
            println!("  {line}");
        }
    }
    assert!(problems.is_empty(), "the soak failed:\n{}", problems.join("\n"));
    let status = soak.weft.terminate().await;
    assert!(status.success(), "weft exited with {status:?} after SIGTERM");
}

/// What went wrong: panics, weft gone, failed requests, growth from the
/// level after the warm-up to the end.
fn problems(soak: &mut Soak, start: Level, end: Level, tasks_back: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let panics = soak.weft.log.lock().panics.clone();
    if !panics.is_empty() {
        problems.push(format!("weft panicked: {panics:?}"));
    }
    if !soak.weft.alive() {
        problems.push("weft is not running".to_string());
    }
    let failures = soak.tally.total(Outcome::is_failure);
    if failures > 0 {
        problems.push(format!("{failures} requests failed: {:#?}", soak.tally.failures.lock()));
    }
    let grown = |what: &str, from: u64, to: u64| {
        (to as f64 > from as f64 * (1.0 + FLAT)).then(|| format!("{what} grew from {from} to {to}"))
    };
    problems.extend(grown("resident memory (KiB)", start.rss_kib, end.rss_kib));
    problems.extend(grown("open descriptors", start.fds, end.fds));
    if !tasks_back {
        problems.push(format!(
            "alive tasks {} after the warm-up, {} at the end",
            start.tasks, end.tasks
        ));
    }
    problems
}

/// The summary table: requests by traffic kind, errors by cause, levels.
fn summary(soak: &Soak, seconds: u64, warm_up: u64, levels: [Level; 3], metrics: &str) -> String {
    let mut out = String::new();
    let binary = env!("CARGO_BIN_EXE_weft");
    let build = if binary.contains("/release/") {
        "release"
    } else {
        "debug"
    };
    let _ = writeln!(
        out,
        "\nsoak: {seconds} s ({warm_up} s warm-up), weft {build} build ({binary})\n"
    );
    let counts = soak.tally.counts.lock();
    let _ = writeln!(
        out,
        "| traffic | requests | ok | weft error status | reset upstream: cut mid-body | reset upstream: no status | given up (on purpose) | failed | retried (keep-alive closed) |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let retries = soak.tally.retries.lock();
    let mut kinds: Vec<&str> = counts.keys().map(|(kind, ..)| *kind).collect();
    kinds.dedup();
    for kind in kinds {
        let sum = |f: &dyn Fn(Outcome) -> bool| -> u64 {
            counts
                .iter()
                .filter(|((k, _, o), _)| *k == kind && f(*o))
                .map(|(_, n)| n)
                .sum()
        };
        let _ = writeln!(
            out,
            "| {kind} | {} | {} | {} | {} | {} | {} | {} | {} |",
            sum(&|_| true),
            sum(&|o| o == Outcome::Ok),
            sum(&|o| matches!(o, Outcome::WeftError(..))),
            sum(&|o| o == Outcome::CutMidBody),
            sum(&|o| o == Outcome::NoStatusOnReset),
            sum(&|o| o == Outcome::Abandoned),
            sum(&Outcome::is_failure),
            retries.get(kind).copied().unwrap_or(0),
        );
    }
    let _ = writeln!(out, "\n| errors by cause (route: outcome) | requests |\n| --- | ---: |");
    let mut causes = std::collections::BTreeMap::<String, u64>::new();
    for ((_, route, outcome), n) in counts.iter() {
        if !matches!(outcome, Outcome::Ok | Outcome::Abandoned) {
            *causes.entry(format!("{route}: {outcome:?}")).or_default() += n;
        }
    }
    for (cause, n) in causes {
        let _ = writeln!(out, "| {cause} | {n} |");
    }
    let _ = writeln!(
        out,
        "\n| weft | RSS MiB | open fds | alive tasks |\n| --- | ---: | ---: | ---: |"
    );
    let names = ["start (after warm-up, quiet)", "middle (quiet)", "end (quiet)"];
    let peak = ("peak under traffic (sampled each second)", soak.peak);
    for (name, level) in names.into_iter().zip(levels).chain([peak]) {
        let mib = level.rss_kib as f64 / 1024.0;
        let _ = writeln!(out, "| {name} | {mib:.1} | {} | {} |", level.fds, level.tasks);
    }
    let log = soak.weft.log.lock();
    let _ = writeln!(
        out,
        "\nconfig generations written: {}; reloads applied {}, refused {}; flaky upstream killed {} times; \
weft stderr: {} WARN, {} ERROR lines, {} panics",
        soak.generation,
        family_sum(metrics, "weft_config_reloads_total{result=\"ok\"}"),
        family_sum(metrics, "weft_config_reloads_total{result=\"error\"}"),
        soak.kills,
        log.warnings,
        log.errors,
        log.panics.len(),
    );
    out
}
