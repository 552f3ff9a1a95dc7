//! Latency, throughput and idle-cost benchmark for relive.
//!
//! Run it in release mode (debug builds measure the wrong thing):
//!
//! ```text
//! cargo run --release -p relive --example latency              # full run
//! cargo run --release -p relive --example latency -- --quick   # CI smoke run
//! cargo run --release -p relive --example latency -- --json    # machine-readable
//! cargo run --release -p relive --example latency -- --backends  # inotify against the portable backend
//! ```
//!
//! `--backends` runs, in one process and for each backend (inotify read
//! directly, and the portable backend on `notify`), scenario 1 with the
//! writer in another process and scenario 2, and prints them side by side
//! with the torn values each delivered. Without it, the engine's backend is
//! the default one (`RELIVE_BACKEND` applies).
//!
//! What it measures, each scenario in its own fresh temporary workspace:
//!
//! 1. **write → delivered**: for an in-place write, an editor's atomic save
//!    (hidden temp file + rename) and a Kubernetes ConfigMap `..data`
//!    symlink swap, the time from just before the writer's first system call
//!    to the moment a task awaiting [`relive::ConfigStream::next`] gets the
//!    new value, next to the time of the write alone (the baseline). Each
//!    kind is measured twice: with the writer in this process, and with
//!    the writer in another process (this binary run as `--writer`), as
//!    users' editors and deploy tools are; times across the two processes
//!    are taken from `CLOCK_MONOTONIC`.
//! 2. **burst settle**: 1,000 back-to-back in-place writes; how long after
//!    the last write the final value arrives, how many values were
//!    delivered, and whether any of them was torn.
//! 3. **`Live::load` throughput** while the config is rewritten every ~1 ms,
//!    against a bare `arc_swap::ArcSwap` and a `std::sync::RwLock<Arc<T>>`
//!    under the same writer.
//! 4. **idle CPU**: CPU time the process spends while a started engine sits
//!    idle for 2 s.
//!
//! Targets are printed as PASS/MISS; they never fail the run. The process
//! exits with status 1 if a delivered value is wrong, missing or torn, or if
//! relive read a half-written file during the burst (seen as a
//! `ValidationFailed` event: the bench's type has no defaults, so such a
//! read is rejected instead of delivered).
//! Progress goes to stderr; the report (table or `--json`) to stdout.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Barrier, RwLock};
use std::time::{Duration, Instant};

mod common;

use arc_swap::ArcSwap;
use common::{WriterProcess, mono_ns};
use relive::{Backend, ChangeEvent, HotReloadConfig, Workspace};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

/// Any error, sendable across threads.
type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The result type of every fallible step.
type BoxResult<T> = Result<T, BoxError>;

/// How long an update may take to be delivered before it counts as missing.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Updates made before measuring starts, to warm caches and threads.
const WARMUP: u64 = 5;
/// Writes in one burst.
const BURST_WRITES: u64 = 1_000;
/// How long the engine sits idle while its CPU time is measured.
const IDLE_PERIOD: Duration = Duration::from_secs(2);
/// Kernel clock ticks per second for `/proc/self/stat` (USER_HZ, 100 on
/// every mainstream Linux build).
const CLK_TCK: u64 = 100;

/// The config every scenario watches. `counter` and `check` are written
/// with the same value at the start and at the end of the file, so a value
/// read from a half-written file either fails to deserialize or has
/// `counter != check`.
#[derive(Debug, Clone, Deserialize)]
struct App {
    /// The update number.
    counter: u64,
    /// A label, to give the file some realistic body.
    name: String,
    /// Filler, so a write is more than a few bytes.
    padding: String,
    /// The update number again, written last.
    check: u64,
}

/// `App` with counter `n`, as TOML.
fn toml_doc(n: u64) -> String {
    format!("counter = {n}\nname = \"relive-bench\"\npadding = \"{}\"\ncheck = {n}\n", "x".repeat(200))
}

/// `App` with counter `n`, as JSON.
fn json_doc(n: u64) -> String {
    format!("{{\"counter\": {n}, \"name\": \"relive-bench\", \"padding\": \"{}\", \"check\": {n}}}\n", "x".repeat(200))
}

/// Command-line options.
#[derive(Debug, Clone, Copy)]
struct Opts {
    /// Fewer iterations, for CI smoke runs.
    quick: bool,
    /// Print JSON instead of tables.
    json: bool,
    /// Compare the inotify and portable backends (and nothing else).
    backends: bool,
}

impl Opts {
    /// Parses `--quick`, `--json` and `--help`.
    fn parse() -> BoxResult<Opts> {
        let mut opts = Opts { quick: false, json: false, backends: false };
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--quick" => opts.quick = true,
                "--json" => opts.json = true,
                "--backends" => opts.backends = true,
                "-h" | "--help" => {
                    println!("usage: latency [--quick] [--json] [--backends]");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument `{other}` (try --help)").into()),
            }
        }
        Ok(opts)
    }

    /// Measured updates per write kind.
    fn updates(&self) -> u64 {
        if self.quick { 30 } else { 200 }
    }

    /// Burst runs.
    fn burst_runs(&self) -> usize {
        if self.quick { 2 } else { 5 }
    }

    /// How long each throughput run lasts.
    fn throughput_for(&self) -> Duration {
        if self.quick { Duration::from_millis(250) } else { Duration::from_secs(1) }
    }
}

/// p50, p99, max and count of a set of durations (nearest-rank percentiles).
#[derive(Debug, Clone, Copy)]
struct Stats {
    /// Median.
    p50: Duration,
    /// 99th percentile.
    p99: Duration,
    /// Largest.
    max: Duration,
    /// How many samples.
    count: usize,
}

impl Stats {
    /// Summarizes `samples`; all zero if there are none.
    fn of(samples: &[Duration]) -> Stats {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let rank = |q: f64| -> Duration {
            if sorted.is_empty() {
                return Duration::ZERO;
            }
            let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted[i]
        };
        Stats { p50: rank(0.50), p99: rank(0.99), max: rank(1.0), count: sorted.len() }
    }

    /// As JSON, in microseconds.
    fn to_json(self) -> serde_json::Value {
        json!({ "p50_us": us(self.p50), "p99_us": us(self.p99), "max_us": us(self.max), "count": self.count })
    }
}

/// A duration in microseconds, as a float.
fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// "PASS" or "MISS".
fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

/// A small deterministic pseudo-random source (xorshift64) for the gaps
/// between updates.
struct Jitter(u64);

impl Jitter {
    /// A gap between 2 and 5 ms.
    fn gap(&mut self) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_micros(2_000 + self.0 % 3_001)
    }
}

/// The three ways of changing a config file that are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteKind {
    /// `std::fs::write`: open with truncate, write, close.
    InPlace,
    /// Write `config/.app.toml.tmp-N`, rename it over `config/app.toml`.
    AtomicSave,
    /// Kubernetes ConfigMap: new `..vN` directory, `..data_tmp` symlink
    /// renamed over `..data`, old directory removed.
    ConfigMap,
}

impl WriteKind {
    /// All kinds, in report order.
    const ALL: [WriteKind; 3] = [WriteKind::InPlace, WriteKind::AtomicSave, WriteKind::ConfigMap];

    /// A short label.
    fn label(self) -> &'static str {
        match self {
            WriteKind::InPlace => "in-place write",
            WriteKind::AtomicSave => "atomic save",
            WriteKind::ConfigMap => "ConfigMap swap",
        }
    }

    /// The key used in JSON output.
    fn key(self) -> &'static str {
        match self {
            WriteKind::InPlace => "in_place",
            WriteKind::AtomicSave => "atomic_save",
            WriteKind::ConfigMap => "configmap",
        }
    }
}

/// A fresh temporary workspace holding `config/app.toml` (or the ConfigMap
/// layout of `config/app.json`) at counter 0, which knows how to write
/// update `n` the way its [`WriteKind`] does.
struct Fixture {
    /// Removed on drop.
    dir: tempfile::TempDir,
    /// How updates are written.
    kind: WriteKind,
}

/// When the steps of one update happened.
struct WriteTimes {
    /// The new content is in place: the file is closed (in-place write) or
    /// the rename returned (atomic save, ConfigMap).
    visible: Instant,
    /// The writer's whole sequence is done (for ConfigMap this includes
    /// removing the old version directory).
    done: Instant,
}

/// Writes update `n` of a workspace whose `config/` is `config`, the way
/// `kind` does.
fn write_update(config: &Path, kind: WriteKind, n: u64) -> std::io::Result<WriteTimes> {
    match kind {
        WriteKind::InPlace => {
            fs::write(config.join("app.toml"), toml_doc(n))?;
            let now = Instant::now();
            Ok(WriteTimes { visible: now, done: now })
        }
        WriteKind::AtomicSave => {
            let tmp = config.join(format!(".app.toml.tmp-{n}"));
            fs::write(&tmp, toml_doc(n))?;
            fs::rename(&tmp, config.join("app.toml"))?;
            let now = Instant::now();
            Ok(WriteTimes { visible: now, done: now })
        }
        WriteKind::ConfigMap => {
            // Update n lives in `..v{n+1}`; counter 0 is in `..v1`.
            let version = format!("..v{}", n + 1);
            let dir = config.join(&version);
            fs::create_dir(&dir)?;
            fs::write(dir.join("app.json"), json_doc(n))?;
            symlink(&version, config.join("..data_tmp"))?;
            fs::rename(config.join("..data_tmp"), config.join("..data"))?;
            let visible = Instant::now();
            fs::remove_dir_all(config.join(format!("..v{n}")))?;
            Ok(WriteTimes { visible, done: Instant::now() })
        }
    }
}

/// The writer process (`latency --writer KIND CONFIG_DIR`): for each line
/// `N` on stdin, writes update N and prints `T0 VISIBLE DONE` (monotonic
/// nanoseconds: before the first system call, when the new content was in
/// place, when the writer was done).
fn writer_main(kind: &str, config: &Path) -> BoxResult<()> {
    use std::io::{BufRead, Write};
    let kind = WriteKind::ALL.into_iter().find(|k| k.key() == kind).ok_or("unknown write kind")?;
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let n: u64 = line?.trim().parse()?;
        let base = Instant::now();
        let t0 = mono_ns();
        let times = write_update(config, kind, n)?;
        let ns = |at: Instant| t0 + (at - base).as_nanos() as u64;
        let mut out = stdout.lock();
        writeln!(out, "{t0} {} {}", ns(times.visible), ns(times.done))?;
        out.flush()?;
    }
    Ok(())
}

/// A writer in another process (this bench run as `--writer KIND DIR`).
struct ForeignWriter(WriterProcess);

impl ForeignWriter {
    fn spawn(kind: WriteKind, config: &Path) -> BoxResult<ForeignWriter> {
        Ok(ForeignWriter(WriterProcess::spawn([std::ffi::OsStr::new(kind.key()), config.as_os_str()])?))
    }

    /// Has the writer write update `n`; returns its monotonic times.
    fn write(&mut self, n: u64) -> BoxResult<(u64, u64, u64)> {
        let line = self.0.ask(&n.to_string())?;
        let mut it = line.split_whitespace().map(str::parse::<u64>);
        match (it.next(), it.next(), it.next()) {
            (Some(Ok(t0)), Some(Ok(visible)), Some(Ok(done))) => Ok((t0, visible, done)),
            _ => Err(format!("writer process said {line:?}").into()),
        }
    }
}

impl Fixture {
    /// Creates the workspace with the initial value (counter 0).
    fn new(kind: WriteKind) -> BoxResult<Fixture> {
        let dir = tempfile::Builder::new().prefix("relive-bench-").tempdir()?;
        let config = dir.path().join("config");
        fs::create_dir(&config)?;
        match kind {
            WriteKind::InPlace | WriteKind::AtomicSave => fs::write(config.join("app.toml"), toml_doc(0))?,
            WriteKind::ConfigMap => {
                fs::create_dir(config.join("..v1"))?;
                fs::write(config.join("..v1/app.json"), json_doc(0))?;
                symlink("..v1", config.join("..data"))?;
                symlink("..data/app.json", config.join("app.json"))?;
            }
        }
        Ok(Fixture { dir, kind })
    }

    /// The workspace root.
    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `config/`.
    fn config(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// Writes update `n` (n ≥ 1).
    fn write(&self, n: u64) -> std::io::Result<WriteTimes> {
        write_update(&self.config(), self.kind, n)
    }
}

/// One value a stream delivered, and when.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    /// The value's `counter`.
    counter: u64,
    /// The value's `check`.
    check: u64,
    /// Whether the body (`name`, `padding`) is what every update writes.
    whole: bool,
    /// When `next()` returned it.
    at: Instant,
    /// The same moment in monotonic nanoseconds (see [`mono_ns`]).
    at_ns: u64,
}

/// A running engine watching `app` in a fixture's workspace, with a task
/// that forwards every value `ConfigStream::next()` returns.
struct Watched {
    /// Stops the engine.
    manager: relive::HotReloadManager,
    /// The forwarding task; ends when the engine stops.
    reader: tokio::task::JoinHandle<()>,
    /// What the task forwards.
    deliveries: Receiver<Delivery>,
}

/// Starts relive on `root` and spawns the task awaiting `next()`.
async fn watch(root: &Path, backend: Backend) -> BoxResult<Watched> {
    let ws = Workspace::new(root);
    let manager = ws.start_hot_reload_with_config(HotReloadConfig { backend, ..Default::default() }).await?;
    let mut stream = ws.config::<App>("app").watch().await?;
    if stream.current().counter != 0 {
        return Err(format!("initial counter is {}, expected 0", stream.current().counter).into());
    }
    let (tx, deliveries) = std::sync::mpsc::channel();
    let reader = tokio::spawn(async move {
        while let Some(value) = stream.next().await {
            let at = Instant::now();
            let at_ns = mono_ns();
            let whole = value.name == "relive-bench" && value.padding.len() == 200;
            if tx.send(Delivery { counter: value.counter, check: value.check, whole, at, at_ns }).is_err() {
                break;
            }
        }
    });
    Ok(Watched { manager, reader, deliveries })
}

/// Results of one write kind.
#[derive(Debug)]
struct LatencyResult {
    /// Which writes.
    kind: WriteKind,
    /// Whether the writer was another process.
    foreign: bool,
    /// t0 → value returned by `next()`.
    delivered: Vec<Duration>,
    /// t0 → the writer's sequence is done (the baseline).
    write: Vec<Duration>,
    /// New content in place → value returned by `next()`: relive's own share.
    after_visible: Vec<Duration>,
    /// Values that arrived but were not the one just written.
    mismatched: u64,
    /// Updates not delivered within [`DELIVERY_TIMEOUT`].
    missing: u64,
    /// Delivered values with `counter != check` or a damaged body.
    torn: u64,
}

impl LatencyResult {
    /// The kind, and whose writes.
    fn label(&self) -> String {
        format!("{}{}", self.kind.label(), if self.foreign { " (other process)" } else { "" })
    }
}

/// Scenario 1 for one kind: `WARMUP` + `updates` updates, each awaited;
/// written by this process, or by a writer process when `foreign`.
async fn latency(kind: WriteKind, updates: u64, foreign: bool, backend: Backend) -> BoxResult<LatencyResult> {
    let fixture = Fixture::new(kind)?;
    let Watched { manager, reader, deliveries } = watch(fixture.root(), backend).await?;
    let result = tokio::task::spawn_blocking(move || -> BoxResult<LatencyResult> {
        let mut writer = if foreign { Some(ForeignWriter::spawn(kind, &fixture.config())?) } else { None };
        let mut r = LatencyResult {
            kind,
            foreign,
            delivered: Vec::new(),
            write: Vec::new(),
            after_visible: Vec::new(),
            mismatched: 0,
            missing: 0,
            torn: 0,
        };
        let mut jitter = Jitter(0x9E37_79B9_7F4A_7C15);
        for n in 1..=WARMUP + updates {
            // (t0, visible, done) in monotonic nanoseconds.
            let times = match &mut writer {
                Some(writer) => writer.write(n)?,
                None => {
                    let (base, t0) = (Instant::now(), mono_ns());
                    let times = fixture.write(n)?;
                    let ns = |at: Instant| t0 + (at - base).as_nanos() as u64;
                    (t0, ns(times.visible), ns(times.done))
                }
            };
            let deadline = Instant::now() + DELIVERY_TIMEOUT;
            let arrived = loop {
                match deliveries.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(d) if d.counter == n && d.check == n && d.whole => break Some(d.at_ns),
                    Ok(d) => {
                        eprintln!(
                            "  {}: update {n}: got counter {} check {} whole {}",
                            kind.label(),
                            d.counter,
                            d.check,
                            d.whole
                        );
                        r.mismatched += 1;
                        if d.counter != d.check || !d.whole {
                            r.torn += 1;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => break None,
                    Err(RecvTimeoutError::Disconnected) => return Err("the stream ended early".into()),
                }
            };
            let (t0, visible, done) = times;
            let ns = Duration::from_nanos;
            match arrived {
                Some(t1) if n > WARMUP => {
                    r.delivered.push(ns(t1.saturating_sub(t0)));
                    r.write.push(ns(done - t0));
                    r.after_visible.push(ns(t1.saturating_sub(visible)));
                }
                Some(_) => {}
                None => {
                    eprintln!("  {}: update {n} not delivered within {DELIVERY_TIMEOUT:?}", kind.label());
                    r.missing += 1;
                }
            }
            std::thread::sleep(jitter.gap());
        }
        Ok(r)
    })
    .await??;
    manager.shutdown().await?;
    reader.await?;
    Ok(result)
}

/// Diagnostic for scenario 1: the floor set by the async runtime alone. A
/// plain thread calls `tokio::sync::watch::Sender::send_replace` (what
/// relive's engine thread does to publish a value) and a task awaiting
/// `changed()` records when it wakes. Same gaps and warm-up as scenario 1.
async fn wake_floor(samples: u64) -> BoxResult<Vec<Duration>> {
    let (tx, mut rx) = tokio::sync::watch::channel(0u64);
    let (woke_tx, woke) = std::sync::mpsc::channel();
    let task = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let at = Instant::now();
            let value = *rx.borrow_and_update();
            if woke_tx.send((value, at)).is_err() {
                break;
            }
        }
    });
    let out = tokio::task::spawn_blocking(move || -> BoxResult<Vec<Duration>> {
        let mut out = Vec::new();
        let mut jitter = Jitter(0x9E37_79B9_7F4A_7C15);
        for n in 1..=WARMUP + samples {
            let t0 = Instant::now();
            tx.send_replace(n);
            let (value, at) = woke.recv_timeout(DELIVERY_TIMEOUT)?;
            if value != n {
                return Err(format!("wake floor: got {value}, expected {n}").into());
            }
            if n > WARMUP {
                out.push(at.saturating_duration_since(t0));
            }
            std::thread::sleep(jitter.gap());
        }
        Ok(out)
    })
    .await??;
    task.await?;
    Ok(out)
}

/// One burst run.
#[derive(Debug)]
struct BurstRun {
    /// End of the last write → final value returned by `next()`; `None` if
    /// it never arrived.
    settle: Option<Duration>,
    /// How long the 1,000 writes took.
    writing: Duration,
    /// Values delivered to the stream.
    delivered: usize,
    /// Delivered values with `counter != check` or a damaged body.
    torn: usize,
    /// Delivered values not greater than the one before.
    out_of_order: usize,
    /// `ValidationFailed` / `ReadFailed` events (a half-written file that
    /// was read would show up here).
    rejected: u64,
    /// Events lost because the event receiver lagged.
    lagged: u64,
}

/// Scenario 2: one burst of [`BURST_WRITES`] back-to-back in-place writes.
async fn burst(backend: Backend) -> BoxResult<BurstRun> {
    let fixture = Fixture::new(WriteKind::InPlace)?;
    let Watched { manager, reader, deliveries } = watch(fixture.root(), backend).await?;
    let mut events = manager.subscribe();
    let rejected = Arc::new(AtomicU64::new(0));
    let lagged = Arc::new(AtomicU64::new(0));
    let (rej, lag) = (Arc::clone(&rejected), Arc::clone(&lagged));
    let event_task = tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(ChangeEvent::ValidationFailed { error, .. }) => {
                    if rej.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("  burst: rejected (a half-written file was read?): {error}");
                    }
                }
                Ok(ChangeEvent::ReadFailed { error, .. }) => {
                    if rej.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("  burst: read failed: {error}");
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    lag.fetch_add(n, Ordering::Relaxed);
                }
                Err(RecvError::Closed) => break,
            }
        }
    });
    let path = fixture.config().join("app.toml");
    let (got, settle, writing, fixture) = tokio::task::spawn_blocking(move || -> BoxResult<_> {
        let start = Instant::now();
        for n in 1..=BURST_WRITES {
            fs::write(&path, toml_doc(n))?;
        }
        let end = Instant::now();
        let mut got = Vec::new();
        let mut settle = None;
        let deadline = end + DELIVERY_TIMEOUT;
        while settle.is_none() {
            match deliveries.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(d) => {
                    if d.counter == BURST_WRITES {
                        settle = Some(d.at.saturating_duration_since(end));
                    }
                    got.push(d);
                }
                Err(_) => break,
            }
        }
        // Anything after the final value would be a bug too: collect it.
        std::thread::sleep(Duration::from_millis(50));
        got.extend(deliveries.try_iter());
        Ok((got, settle, end - start, fixture))
    })
    .await??;
    manager.shutdown().await?;
    reader.await?;
    event_task.await?;
    // Only now: removing the workspace while the engine runs is a change
    // of its own (the config's files are gone), which the event task
    // would count as a rejection.
    drop(fixture);
    let torn = got.iter().filter(|d| d.counter != d.check || !d.whole).count();
    let out_of_order = got.windows(2).filter(|w| w[1].counter <= w[0].counter).count();
    Ok(BurstRun {
        settle,
        writing,
        delivered: got.len(),
        torn,
        out_of_order,
        rejected: rejected.load(Ordering::Relaxed),
        lagged: lagged.load(Ordering::Relaxed),
    })
}

/// Reads one field through a shared value, the way a hot path would.
trait Reader: Send + Sync {
    /// Loads the current value and returns its counter.
    fn read(&self) -> u64;
}

impl Reader for relive::Live<App> {
    #[inline]
    fn read(&self) -> u64 {
        self.load().counter
    }
}

impl Reader for ArcSwap<App> {
    #[inline]
    fn read(&self) -> u64 {
        self.load().counter
    }
}

impl Reader for RwLock<Arc<App>> {
    #[inline]
    fn read(&self) -> u64 {
        self.read().map(|g| g.counter).unwrap_or(0)
    }
}

/// One throughput run.
#[derive(Debug)]
struct ThroughputRun {
    /// What was read.
    name: &'static str,
    /// Loads per second, per reader thread.
    per_thread: Vec<f64>,
    /// Updates the writer made during the run.
    writes: u64,
    /// How many distinct counters the readers saw change to (reloads that
    /// reached readers).
    seen_changes: u64,
}

impl ThroughputRun {
    /// Mean loads per second per reader thread.
    fn mean(&self) -> f64 {
        self.per_thread.iter().sum::<f64>() / self.per_thread.len().max(1) as f64
    }
}

/// Runs 2 reader threads on `target` for `run_for` while `write` is called
/// every ~1 ms with increasing counters on another thread.
fn hammer<R: Reader + 'static>(
    name: &'static str,
    target: Arc<R>,
    run_for: Duration,
    write: impl Fn(u64) -> BoxResult<()> + Send + 'static,
) -> BoxResult<ThroughputRun> {
    const READERS: usize = 2;
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(READERS + 2));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (target, stop, barrier) = (Arc::clone(&target), Arc::clone(&stop), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut ops = 0u64;
                let mut last = target.read();
                let mut changes = 0u64;
                barrier.wait();
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..256 {
                        let v = std::hint::black_box(target.read());
                        if v != last {
                            last = v;
                            changes += 1;
                        }
                    }
                    ops += 256;
                }
                (ops as f64 / start.elapsed().as_secs_f64(), changes)
            })
        })
        .collect();
    let (wstop, wbarrier) = (Arc::clone(&stop), Arc::clone(&barrier));
    let writer = std::thread::spawn(move || -> BoxResult<u64> {
        wbarrier.wait();
        let mut n = 0;
        while !wstop.load(Ordering::Relaxed) {
            n += 1;
            write(n)?;
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(n)
    });
    barrier.wait();
    std::thread::sleep(run_for);
    stop.store(true, Ordering::Relaxed);
    let mut per_thread = Vec::new();
    let mut seen_changes = 0;
    for r in readers {
        let (rate, changes) = r.join().map_err(|_| "reader thread panicked")?;
        per_thread.push(rate);
        seen_changes = seen_changes.max(changes);
    }
    let writes = writer.join().map_err(|_| "writer thread panicked")??;
    Ok(ThroughputRun { name, per_thread, writes, seen_changes })
}

/// Scenario 3: `Live::load` against `ArcSwap::load` and `RwLock::read`.
///
/// For `Live` the writer rewrites `config/app.toml` and relive's engine
/// reloads it. For the baselines the writer does the same file write, reads
/// the file back, parses it and stores the new value itself, so the CPU
/// spent next to the readers is comparable.
async fn throughput(run_for: Duration) -> BoxResult<Vec<ThroughputRun>> {
    let mut runs = Vec::new();

    let fixture = Fixture::new(WriteKind::InPlace)?;
    let ws = Workspace::new(fixture.root());
    let manager = ws.start_hot_reload().await?;
    let live = Arc::new(ws.config::<App>("app").live().await?);
    let path = fixture.config().join("app.toml");
    let run = tokio::task::spawn_blocking(move || {
        hammer("Live::load", live, run_for, move |n| Ok(fs::write(&path, toml_doc(n))?))
    })
    .await??;
    runs.push(run);
    manager.shutdown().await?;

    /// Writes update `n` to `path`, reads it back and parses it.
    fn reload(path: &Path, n: u64) -> BoxResult<Arc<App>> {
        fs::write(path, toml_doc(n))?;
        Ok(Arc::new(toml::from_str(&fs::read_to_string(path)?)?))
    }

    let path = fixture.config().join("app.toml");
    let swap = Arc::new(ArcSwap::new(reload(&path, 0)?));
    let target = Arc::clone(&swap);
    let run = tokio::task::spawn_blocking(move || {
        hammer("ArcSwap::load", target, run_for, move |n| {
            swap.store(reload(&path, n)?);
            Ok(())
        })
    })
    .await??;
    runs.push(run);

    let path = fixture.config().join("app.toml");
    let lock = Arc::new(RwLock::new(reload(&path, 0)?));
    let target = Arc::clone(&lock);
    let run = tokio::task::spawn_blocking(move || {
        hammer("RwLock::read", target, run_for, move |n| {
            let value = reload(&path, n)?;
            *lock.write().map_err(|_| "poisoned")? = value;
            Ok(())
        })
    })
    .await??;
    runs.push(run);
    Ok(runs)
}

/// CPU time of the whole process and of each live thread.
struct CpuSample {
    /// utime + stime of the process (includes exited threads), in ticks.
    process_ticks: u64,
    /// Per thread id: (name, nanoseconds on CPU) from `schedstat`.
    threads: HashMap<u32, (String, u64)>,
}

/// Reads `/proc/self/stat` and `/proc/self/task/*/{comm,schedstat}`.
fn cpu_sample() -> BoxResult<CpuSample> {
    let stat = fs::read_to_string("/proc/self/stat")?;
    let after = stat.rsplit_once(')').ok_or("unexpected /proc/self/stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks = |i: usize| -> BoxResult<u64> { Ok(fields.get(i).ok_or("short /proc/self/stat")?.parse()?) };
    let process_ticks = ticks(11)? + ticks(12)?;
    let mut threads = HashMap::new();
    for entry in fs::read_dir("/proc/self/task")? {
        let entry = entry?;
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        // A thread may exit between listing and reading: skip it.
        let (Ok(comm), Ok(sched)) =
            (fs::read_to_string(entry.path().join("comm")), fs::read_to_string(entry.path().join("schedstat")))
        else {
            continue;
        };
        let ns = sched.split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or(0);
        threads.insert(tid, (comm.trim().to_string(), ns));
    }
    Ok(CpuSample { process_ticks, threads })
}

/// Scenario 4 result.
#[derive(Debug)]
struct IdleResult {
    /// Process CPU (utime+stime) during the idle period.
    process: Duration,
    /// Sum over threads alive at both samples, from `schedstat`.
    threads: Duration,
    /// The engine thread's share.
    engine: Duration,
    /// Engine threads alive during the measurement (should be 1).
    engine_threads: usize,
}

/// Scenario 4: CPU time while a started engine with one subscriber idles.
async fn idle() -> BoxResult<IdleResult> {
    let fixture = Fixture::new(WriteKind::InPlace)?;
    let ws = Workspace::new(fixture.root());
    let manager = ws.start_hot_reload().await?;
    let stream = ws.config::<App>("app").watch().await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cpu_sample()?;
    tokio::time::sleep(IDLE_PERIOD).await;
    let after = cpu_sample()?;
    drop(stream);
    manager.shutdown().await?;
    let mut threads = 0;
    let mut engine = 0;
    let mut engine_threads = 0;
    for (tid, (name, ns)) in &after.threads {
        let Some((_, old)) = before.threads.get(tid) else { continue };
        let used = ns.saturating_sub(*old);
        threads += used;
        if name == "relive-engine" {
            engine += used;
            engine_threads += 1;
        }
    }
    let ticks = after.process_ticks.saturating_sub(before.process_ticks);
    Ok(IdleResult {
        process: Duration::from_nanos(ticks * 1_000_000_000 / CLK_TCK),
        threads: Duration::from_nanos(threads),
        engine: Duration::from_nanos(engine),
        engine_threads,
    })
}

/// The CPU model and logical CPU count.
fn machine() -> (String, usize) {
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    (model, std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0))
}

/// Everything measured, and whether the run is sound.
struct Report {
    /// Scenario 1, per kind.
    latency: Vec<LatencyResult>,
    /// Scenario 1 diagnostic: thread → task wake-up through a tokio watch
    /// channel.
    wake: Vec<Duration>,
    /// Scenario 2, per run.
    bursts: Vec<BurstRun>,
    /// Scenario 3: Live, ArcSwap, RwLock.
    throughput: Vec<ThroughputRun>,
    /// Scenario 4.
    idle: IdleResult,
}

/// Latency targets: p50 and p99.
const TARGET_P50: Duration = Duration::from_micros(500);
/// See [`TARGET_P50`].
const TARGET_P99: Duration = Duration::from_millis(2);
/// Burst target: final value within this long of the last write.
const TARGET_SETTLE: Duration = Duration::from_millis(5);
/// Idle target: at most this much CPU over [`IDLE_PERIOD`] counts as ~0.
const TARGET_IDLE: Duration = Duration::from_millis(10);

impl Report {
    /// Problems that make the numbers untrustworthy (wrong, missing or torn
    /// values).
    fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.latency {
            if r.mismatched > 0 || r.missing > 0 {
                out.push(format!("{}: {} wrong value(s), {} missing", r.label(), r.mismatched, r.missing));
            }
        }
        for (i, b) in self.bursts.iter().enumerate() {
            if b.settle.is_none() {
                out.push(format!("burst {}: final value never delivered", i + 1));
            }
            if b.torn > 0 || b.out_of_order > 0 || b.rejected > 0 {
                out.push(format!(
                    "burst {}: {} torn value(s) delivered, {} out of order, {} read(s) of a half-written file \
                     (rejected by deserialization or unreadable)",
                    i + 1,
                    b.torn,
                    b.out_of_order,
                    b.rejected
                ));
            }
        }
        out
    }

    /// Settle times of the bursts that completed.
    fn settles(&self) -> Vec<Duration> {
        self.bursts.iter().filter_map(|b| b.settle).collect()
    }

    /// Live/ArcSwap and Live/RwLock mean-throughput ratios.
    fn ratios(&self) -> (f64, f64) {
        let mean = |name: &str| self.throughput.iter().find(|r| r.name == name).map_or(f64::NAN, |r| r.mean());
        let live = mean("Live::load");
        (live / mean("ArcSwap::load"), live / mean("RwLock::read"))
    }

    /// Prints the human-readable tables.
    fn print_table(&self, opts: Opts) {
        let (model, cpus) = machine();
        println!("relive latency bench — {} run, {cpus} CPUs ({model})", if opts.quick { "quick" } else { "full" });
        println!();
        let n = self.latency.first().map_or(0, |r| r.delivered.len() + r.missing as usize);
        println!(
            "1. write → delivered ({n} updates per kind after {WARMUP} warm-up, gap 2–5 ms, timeout {}s)",
            DELIVERY_TIMEOUT.as_secs()
        );
        println!(
            "   {:<30} {:<24} {:>10} {:>10} {:>10} {:>6}  target",
            "kind", "measure", "p50 µs", "p99 µs", "max µs", "count"
        );
        let row = |kind: &str, what: &str, s: Stats, target: &str| {
            let line = format!(
                "   {:<30} {:<24} {:>10.1} {:>10.1} {:>10.1} {:>6}  {}",
                kind,
                what,
                us(s.p50),
                us(s.p99),
                us(s.max),
                s.count,
                target
            );
            println!("{}", line.trim_end());
        };
        for r in &self.latency {
            let d = Stats::of(&r.delivered);
            let w = Stats::of(&r.write);
            let pass = d.count > 0 && d.p50 <= TARGET_P50 && d.p99 <= TARGET_P99;
            row(&r.label(), "write only (baseline)", w, "");
            row("", "write → delivered", d, &format!("p50≤500 p99≤2000  {}", verdict(pass)));
            row("", "visible → delivered", Stats::of(&r.after_visible), "");
            println!(
                "   {:<30} {:<24} {:>9.1}x {:>9.1}x   (delivered ÷ write; wrong {}, missing {})",
                "",
                "ratio",
                us(d.p50) / us(w.p50),
                us(d.p99) / us(w.p99),
                r.mismatched,
                r.missing
            );
        }
        row("(diagnostic)", "tokio watch wake-up", Stats::of(&self.wake), "thread send → task wakes");
        println!();

        let s = Stats::of(&self.settles());
        println!("2. burst settle ({BURST_WRITES} back-to-back in-place writes, {} runs)", self.bursts.len());
        println!(
            "   {:<5} {:>14} {:>16} {:>10} {:>6} {:>13} {:>9} {:>7}",
            "run", "writes took ms", "settle µs", "delivered", "torn", "out of order", "rejected", "lagged"
        );
        for (i, b) in self.bursts.iter().enumerate() {
            println!(
                "   {:<5} {:>14.1} {:>16} {:>10} {:>6} {:>13} {:>9} {:>7}",
                i + 1,
                b.writing.as_secs_f64() * 1e3,
                b.settle.map_or("never".to_string(), |d| format!("{:.1}", us(d))),
                format!("{}/{BURST_WRITES}", b.delivered),
                b.torn,
                b.out_of_order,
                b.rejected,
                b.lagged
            );
        }
        println!(
            "   settle p50 {:.1} µs, max {:.1} µs, count {}   target max ≤ 5000 µs  {}",
            us(s.p50),
            us(s.max),
            s.count,
            verdict(s.count == self.bursts.len() && s.max <= TARGET_SETTLE)
        );
        println!();

        println!("3. load throughput (2 reader threads, writer every ~1 ms, {:?} each)", opts.throughput_for());
        println!(
            "   {:<15} {:>16} {:>14} {:>14} {:>8} {:>14}",
            "reader", "Mops/s/thread", "thread 0", "thread 1", "writes", "changes seen"
        );
        for r in &self.throughput {
            println!(
                "   {:<15} {:>16.1} {:>14.1} {:>14.1} {:>8} {:>14}",
                r.name,
                r.mean() / 1e6,
                r.per_thread.first().copied().unwrap_or(0.0) / 1e6,
                r.per_thread.get(1).copied().unwrap_or(0.0) / 1e6,
                r.writes,
                r.seen_changes
            );
        }
        let (vs_swap, vs_lock) = self.ratios();
        println!("   Live/ArcSwap {vs_swap:.2}x   target ≥ 0.50x  {}", verdict(vs_swap >= 0.5));
        println!("   Live/RwLock  {vs_lock:.2}x   target > 1.00x  {}", verdict(vs_lock > 1.0));
        println!();

        let i = &self.idle;
        println!("4. idle CPU ({}s, engine started, one stream)", IDLE_PERIOD.as_secs());
        println!(
            "   process {:.1} ms (utime+stime, 10 ms ticks); all threads {:.3} ms; engine thread {:.3} ms ({} engine thread(s))",
            i.process.as_secs_f64() * 1e3,
            i.threads.as_secs_f64() * 1e3,
            i.engine.as_secs_f64() * 1e3,
            i.engine_threads
        );
        println!("   target ~0 (≤ 10 ms over 2 s)  {}", verdict(i.threads <= TARGET_IDLE && i.process <= TARGET_IDLE));
    }

    /// The report as JSON.
    fn to_json(&self, opts: Opts) -> serde_json::Value {
        let (model, cpus) = machine();
        let latency: serde_json::Map<String, serde_json::Value> = self
            .latency
            .iter()
            .map(|r| {
                let d = Stats::of(&r.delivered);
                let w = Stats::of(&r.write);
                let value = json!({
                    "write": w.to_json(),
                    "delivered": d.to_json(),
                    "visible_to_delivered": Stats::of(&r.after_visible).to_json(),
                    "ratio_p50": us(d.p50) / us(w.p50),
                    "mismatched": r.mismatched,
                    "missing": r.missing,
                    "target_pass": d.count > 0 && d.p50 <= TARGET_P50 && d.p99 <= TARGET_P99,
                });
                (format!("{}{}", r.kind.key(), if r.foreign { "_out_of_process" } else { "" }), value)
            })
            .collect();
        let settles = Stats::of(&self.settles());
        let (vs_swap, vs_lock) = self.ratios();
        json!({
            "mode": if opts.quick { "quick" } else { "full" },
            "machine": { "cpus": cpus, "model": model },
            "latency": latency,
            "tokio_wake_floor": Stats::of(&self.wake).to_json(),
            "burst": {
                "writes": BURST_WRITES,
                "runs": self.bursts.iter().map(|b| json!({
                    "writing_us": us(b.writing),
                    "settle_us": b.settle.map(us),
                    "delivered": b.delivered,
                    "torn": b.torn,
                    "out_of_order": b.out_of_order,
                    "rejected": b.rejected,
                    "lagged_events": b.lagged,
                })).collect::<Vec<_>>(),
                "settle": settles.to_json(),
                "target_pass": settles.count == self.bursts.len() && settles.max <= TARGET_SETTLE,
            },
            "throughput": {
                "runs": self.throughput.iter().map(|r| json!({
                    "reader": r.name,
                    "ops_per_sec_per_thread": r.per_thread,
                    "mean_ops_per_sec_per_thread": r.mean(),
                    "writes": r.writes,
                    "changes_seen": r.seen_changes,
                })).collect::<Vec<_>>(),
                "live_over_arcswap": vs_swap,
                "live_over_rwlock": vs_lock,
                "target_pass": vs_swap >= 0.5 && vs_lock > 1.0,
            },
            "idle": {
                "period_s": IDLE_PERIOD.as_secs_f64(),
                "process_cpu_us": us(self.idle.process),
                "threads_cpu_us": us(self.idle.threads),
                "engine_cpu_us": us(self.idle.engine),
                "engine_threads": self.idle.engine_threads,
                "target_pass": self.idle.threads <= TARGET_IDLE && self.idle.process <= TARGET_IDLE,
            },
            "failures": self.failures(),
        })
    }
}

#[tokio::main]
async fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--writer") {
        let (Some(kind), Some(config)) = (args.get(2), args.get(3)) else {
            return Err("usage: latency --writer KIND CONFIG_DIR".into());
        };
        return writer_main(kind, Path::new(config));
    }
    let opts = Opts::parse()?;
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; run with --release for meaningful numbers");
    }
    if opts.backends {
        return compare_backends(opts).await;
    }
    let mut latency_results = Vec::new();
    for foreign in [false, true] {
        for kind in WriteKind::ALL {
            let whose = if foreign { "another process" } else { "this process" };
            eprintln!("1. {} by {whose}: {} updates…", kind.label(), WARMUP + opts.updates());
            latency_results.push(latency(kind, opts.updates(), foreign, Backend::Auto).await?);
        }
    }
    eprintln!("1. tokio wake-up floor: {} samples…", WARMUP + opts.updates());
    let wake = wake_floor(opts.updates()).await?;
    let mut bursts = Vec::new();
    for i in 0..opts.burst_runs() {
        eprintln!("2. burst run {}/{}…", i + 1, opts.burst_runs());
        bursts.push(burst(Backend::Auto).await?);
    }
    eprintln!("3. throughput…");
    let throughput = throughput(opts.throughput_for()).await?;
    eprintln!("4. idle CPU ({}s)…", IDLE_PERIOD.as_secs());
    let idle = idle().await?;

    let report = Report { latency: latency_results, wake, bursts, throughput, idle };
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json(opts))?);
    } else {
        report.print_table(opts);
    }
    let failures = report.failures();
    if !failures.is_empty() {
        eprintln!();
        eprintln!("FAILED: relive delivered wrong, missing or torn values, or read a half-written file:");
        for f in &failures {
            eprintln!("  - {f}");
        }
        std::process::exit(1);
    }
    Ok(())
}

/// `--backends`: scenario 1 (writer in another process) and scenario 2 for
/// the inotify backend and the portable one, in the same run; exits with
/// status 1 if either delivered a wrong, missing or torn value.
async fn compare_backends(opts: Opts) -> BoxResult<()> {
    let backends = [("inotify", Backend::Inotify), ("portable", Backend::Portable)];
    let mut rows = Vec::new();
    let mut bursts = Vec::new();
    for kind in WriteKind::ALL {
        for (name, backend) in backends {
            eprintln!("1. {} by another process, {name}: {} updates…", kind.label(), WARMUP + opts.updates());
            rows.push((name, latency(kind, opts.updates(), true, backend).await?));
        }
    }
    for (name, backend) in backends {
        for i in 0..opts.burst_runs() {
            eprintln!("2. burst run {}/{}, {name}…", i + 1, opts.burst_runs());
            bursts.push((name, burst(backend).await?));
        }
    }
    let (model, cpus) = machine();
    println!("machine: {cpus} CPUs, {model}");
    println!("1. write → delivered, writer in another process ({} updates each; µs p50 / p99)", opts.updates());
    println!(
        "   {:<16} {:<9} {:>15} {:>21} {:>21} {:>5} {:>8} {:>5}",
        "kind", "backend", "write alone", "write → delivered", "visible → delivered", "torn", "mismatch", "miss"
    );
    let pair = |v: &[Duration]| {
        let s = Stats::of(v);
        format!("{:.0} / {:.0}", us(s.p50), us(s.p99))
    };
    let mut failures = Vec::new();
    for (name, r) in &rows {
        println!(
            "   {:<16} {:<9} {:>15} {:>21} {:>21} {:>5} {:>8} {:>5}",
            r.kind.label(),
            name,
            pair(&r.write),
            pair(&r.delivered),
            pair(&r.after_visible),
            r.torn,
            r.mismatched,
            r.missing
        );
        if r.torn > 0 || r.mismatched > 0 || r.missing > 0 {
            failures.push(format!(
                "{} with {name}: {} torn, {} wrong, {} missing",
                r.kind.label(),
                r.torn,
                r.mismatched,
                r.missing
            ));
        }
    }
    println!();
    println!("2. burst of {BURST_WRITES} in-place writes");
    println!(
        "   {:<9} {:>12} {:>14} {:>10} {:>5} {:>12} {:>9}",
        "backend", "writes took", "settle", "delivered", "torn", "out of order", "rejected"
    );
    for (name, b) in &bursts {
        let settle = b.settle.map_or("never".to_string(), |d| format!("{:.0} µs", us(d)));
        println!(
            "   {:<9} {:>9.0} ms {:>14} {:>10} {:>5} {:>12} {:>9}",
            name,
            b.writing.as_secs_f64() * 1e3,
            settle,
            b.delivered,
            b.torn,
            b.out_of_order,
            b.rejected
        );
        if b.torn > 0 || b.out_of_order > 0 || b.rejected > 0 || b.settle.is_none() {
            failures.push(format!(
                "burst with {name}: {} torn, {} out of order, {} rejected",
                b.torn, b.out_of_order, b.rejected
            ));
        }
    }
    if !failures.is_empty() {
        eprintln!();
        eprintln!("FAILED:");
        for f in &failures {
            eprintln!("  - {f}");
        }
        std::process::exit(1);
    }
    Ok(())
}

/// A symbolic link, as a ConfigMap's `..data` is one. Unix's; Windows (where
/// the benchmarks are type-checked, not run) needs to know a directory's.
fn symlink(target: impl AsRef<Path>, link: impl AsRef<Path>) -> std::io::Result<()> {
    #[cfg(unix)]
    return std::os::unix::fs::symlink(target, link);
    #[cfg(windows)]
    {
        let target = target.as_ref();
        let resolved = link.as_ref().parent().unwrap_or(Path::new(".")).join(target);
        match resolved.is_dir() {
            true => std::os::windows::fs::symlink_dir(target, link),
            false => std::os::windows::fs::symlink_file(target, link),
        }
    }
}
