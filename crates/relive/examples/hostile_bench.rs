//! What a hostile file costs a running engine, and what it costs the other
//! configs while it is being rejected.
//!
//! Run it in release mode (debug builds measure the wrong thing):
//!
//! ```text
//! cargo run --release -p relive --example hostile_bench              # full run
//! cargo run --release -p relive --example hostile_bench -- --quick   # CI smoke run
//! ```
//!
//! For each hostile file of issue 13 (a 60 KB YAML alias bomb, 100 KB of
//! nested YAML flow collections, a 100 MB JSON document, a FIFO), in a child
//! process of its own so that its peak memory is its own:
//!
//! 1. **reject**: the time from the file being renamed into `config/` to
//!    the engine's `ValidationFailed` (or `ReadFailed`) event for it, and
//!    the process's peak resident memory (`VmHWM`) against the peak of the
//!    same engine before the file came. The baseline is the time the same
//!    engine takes to apply a small good file of the same config.
//! 2. **latency**: the write → delivered time of an unrelated config's
//!    change, written by another process (this binary run as `--writer`;
//!    times from `CLOCK_MONOTONIC`), with no hostile file (the baseline),
//!    then while the hostile file is renamed into place again and again,
//!    each time rejected anew (two variants alternate, so no rename is a
//!    no-op).
//!
//! Figures are printed as p50/p99 and as ratios to the baseline of the
//! same run. The process exits with status 1 if a hostile file is applied
//! instead of rejected, or an update of the other config is lost.

mod common;

use std::fs;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{WriterProcess, mono_ns};
use relive::{ChangeEvent, Workspace};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// Any error, sendable across threads.
type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The result type of every fallible step.
type BoxResult<T> = Result<T, BoxError>;

/// How long an event or value may take before it counts as missing.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The hostile files, by name.
const CASES: [&str; 4] = ["alias-bomb", "deep-yaml", "huge-json", "fifo"];

#[derive(Debug, Deserialize)]
struct Other {
    value: u64,
}

/// This process's peak resident memory, in KiB (`VmHWM`).
fn peak_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The file name a case is written under.
fn file_name(case: &str) -> &'static str {
    match case {
        "alias-bomb" | "deep-yaml" => "evil.yaml",
        "huge-json" => "evil.json",
        _ => "evil.toml",
    }
}

/// Writes variant `v` of a case's hostile file to `path`, in pieces: the
/// bench's own peak memory must not include a 100 MB document.
fn write_hostile(case: &str, v: &str, quick: bool, path: &Path) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(fs::File::create(path)?);
    match case {
        // 60 KB: 6,000 items referenced 6,000 times, 36 million values.
        "alias-bomb" => {
            let items: Vec<String> = (0..6000).map(|i| format!("x{i}")).collect();
            write!(out, "v: {v}\nbase: &a [{}]\nrefs: [{}]\n", items.join(","), vec!["*a"; 6000].join(","))?;
        }
        // 100 KB of `[`.
        "deep-yaml" => write!(out, "v: {v}\na: {}{}\n", "[".repeat(50_000), "]".repeat(50_000))?,
        // 100 MB (16 MB in a quick run) of valid JSON.
        _ => {
            let size: usize = if quick { 16 << 20 } else { 100 << 20 };
            let item = "\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\",";
            write!(out, "{{\"v\": \"{v}\", \"items\": [")?;
            for _ in 0..size / item.len() {
                out.write_all(item.as_bytes())?;
            }
            write!(out, "\"end\"]}}")?;
        }
    }
    out.flush()
}

/// A prepared hostile file, put in place by a rename: no I/O on the hot
/// path, and the engine sees a new file each time.
struct Hostile {
    target: PathBuf,
    staging: PathBuf,
    variants: Option<[PathBuf; 2]>,
    round: u64,
}

impl Hostile {
    fn new(root: &Path, case: &str, quick: bool) -> BoxResult<Hostile> {
        let staging = root.join("staging");
        fs::create_dir_all(&staging)?;
        let variants = if case == "fifo" {
            None
        } else {
            let (pa, pb) = (staging.join("a"), staging.join("b"));
            write_hostile(case, "a", quick, &pa)?;
            write_hostile(case, "b", quick, &pb)?;
            Some([pa, pb])
        };
        Ok(Hostile { target: root.join("config").join(file_name(case)), staging, variants, round: 0 })
    }

    /// Renames the next variant (a hard link to it, or a new FIFO) over the
    /// target.
    fn put(&mut self) -> BoxResult<()> {
        self.round += 1;
        let tmp = self.staging.join(format!("next{}", self.round));
        match &self.variants {
            Some(variants) => fs::hard_link(&variants[(self.round % 2) as usize], &tmp)?,
            None => mkfifo(&tmp)?,
        }
        fs::rename(&tmp, &self.target)?;
        Ok(())
    }

    /// Whether `event` is the engine's rejection of the hostile file.
    fn is_rejection(&self, event: &ChangeEvent) -> bool {
        match event {
            ChangeEvent::ValidationFailed { config_name, .. } => config_name == "evil",
            ChangeEvent::ReadFailed { path, .. } => *path == self.target,
            _ => false,
        }
    }

    fn is_applied(&self, event: &ChangeEvent) -> bool {
        matches!(event, ChangeEvent::ConfigChanged { config_name, .. } if config_name == "evil")
    }
}

/// Waits for an event `pred` accepts; lagging is fine (a busy engine sends
/// many events).
async fn wait_event(
    rx: &mut broadcast::Receiver<ChangeEvent>,
    pred: impl Fn(&ChangeEvent) -> bool,
) -> BoxResult<ChangeEvent> {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            match rx.recv().await {
                Ok(event) if pred(&event) => return Ok(event),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => return Err(BoxError::from(e.to_string())),
            }
        }
    })
    .await
    .map_err(|_| BoxError::from("no such event within the timeout"))?
}

/// The writer process (`hostile_bench --writer CONFIG_DIR`): for each line
/// `N` on stdin, writes `value = N` to `other.toml` in place and prints the
/// monotonic time just before the write.
fn writer_main(config: &Path) -> BoxResult<()> {
    let path = config.join("other.toml");
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let n: u64 = line?.trim().parse()?;
        let t0 = mono_ns();
        fs::write(&path, format!("value = {n}\n"))?;
        let mut out = stdout.lock();
        writeln!(out, "{t0}")?;
        out.flush()?;
    }
    Ok(())
}

/// A writer in another process (this bench run as `--writer CONFIG`).
struct Writer(WriterProcess);

impl Writer {
    fn spawn(config: &Path) -> BoxResult<Writer> {
        Ok(Writer(WriterProcess::spawn([config])?))
    }

    /// Has the writer write `n`; returns when it started, in monotonic ns.
    fn write(&mut self, n: u64) -> BoxResult<u64> {
        Ok(self.0.ask(&n.to_string())?.parse()?)
    }
}

/// Write → delivered times of `other`, `updates` of them from `first`.
fn latencies(
    writer: &mut Writer,
    delivered: &std::sync::mpsc::Receiver<(u64, u64)>,
    first: u64,
    updates: u64,
) -> BoxResult<Vec<Duration>> {
    let mut out = Vec::new();
    for n in first..first + updates {
        let t0 = writer.write(n)?;
        let deadline = Instant::now() + TIMEOUT;
        let t1 = loop {
            match delivered.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((value, at)) if value == n => break at,
                Ok(_) => {}
                Err(_) => return Err(format!("update {n} of the other config was not delivered").into()),
            }
        };
        out.push(Duration::from_nanos(t1.saturating_sub(t0)));
        // Writes spaced like a person's or a deploy tool's, not a burst.
        std::thread::sleep(Duration::from_millis(5 + n % 7));
    }
    Ok(out)
}

/// One case, in this (child) process: prints one JSON line.
async fn case_main(case: &str, quick: bool) -> BoxResult<()> {
    let (rejects, updates) = if quick { (3, 20) } else { (20, 200) };
    let dir = tempfile::Builder::new().prefix("relive-hostile-").tempdir()?;
    let root = dir.path();
    let config = root.join("config");
    fs::create_dir(&config)?;
    let name = file_name(case);
    let good_path = config.join(name);
    let good = |n: u64| match Path::new(name).extension().and_then(|e| e.to_str()) {
        Some("yaml") => format!("v: {n}\n"),
        Some("json") => format!("{{\"v\": {n}}}"),
        _ => format!("v = {n}\n"),
    };
    fs::write(&good_path, good(0))?;
    fs::write(config.join("other.toml"), "value = 0\n")?;
    let mut hostile = Hostile::new(root, case, quick)?;
    let bytes = hostile.variants.as_ref().map_or(0, |v| fs::metadata(&v[0]).map_or(0, |m| m.len()));

    let ws = Workspace::new(root);
    let manager = ws.start_hot_reload().await?;
    let mut events = manager.subscribe();
    let _evil = ws.watch_config_changes::<Value>("evil").await?;
    let mut other = ws.watch_config_changes::<Other>("other").await?;
    let (tx, delivered) = std::sync::mpsc::channel();
    let reader = tokio::spawn(async move {
        while let Some(value) = other.next().await {
            if tx.send((value.value, mono_ns())).is_err() {
                break;
            }
        }
    });

    // The baseline of a reject: applying a small good file of the config.
    let mut apply = Vec::new();
    for n in 1..=rejects {
        let tmp = root.join("staging").join(format!("good{n}"));
        fs::write(&tmp, good(n))?;
        let start = Instant::now();
        fs::rename(&tmp, &good_path)?;
        wait_event(
            &mut events,
            |e| matches!(e, ChangeEvent::ConfigChanged { config_name, .. } if config_name == "evil"),
        )
        .await?;
        apply.push(start.elapsed());
    }

    // The baseline latency, and the peak memory so far.
    let mut writer = Writer::spawn(&config)?;
    let baseline = tokio::task::block_in_place(|| latencies(&mut writer, &delivered, 1, updates))?;
    let peak_before = peak_kib();

    // Each hostile file, rejected `rejects` times.
    let mut reject = Vec::new();
    for _ in 0..rejects {
        let start = Instant::now();
        hostile.put()?;
        let event = wait_event(&mut events, |e| hostile.is_rejection(e) || hostile.is_applied(e)).await?;
        if hostile.is_applied(&event) {
            return Err(format!("{case}: the hostile file was applied").into());
        }
        reject.push(start.elapsed());
    }
    let peak_after = peak_kib();

    // The other config's latency while the hostile file comes back again
    // and again, each time rejected.
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let stop = Arc::clone(&stop);
        let mut events = manager.subscribe();
        tokio::spawn(async move {
            let mut fed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if hostile.put().is_err() {
                    break;
                }
                // Next one once this one is rejected: the engine always has
                // a hostile file in hand.
                if wait_event(&mut events, |e| hostile.is_rejection(e)).await.is_err() {
                    break;
                }
                fed += 1;
            }
            fed
        })
    };
    let during = tokio::task::block_in_place(|| latencies(&mut writer, &delivered, updates + 1, updates))?;
    stop.store(true, Ordering::Relaxed);
    let fed = feeder.await?;
    let peak_end = peak_kib();
    drop(writer);
    manager.shutdown().await?;
    reader.await?;

    let ms = |v: &[Duration]| v.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<f64>>();
    println!(
        "{}",
        json!({
            "case": case,
            "bytes": bytes,
            "apply_ms": ms(&apply),
            "reject_ms": ms(&reject),
            "baseline_ms": ms(&baseline),
            "during_ms": ms(&during),
            "rejected_during": fed,
            "peak_before_kib": peak_before,
            "peak_after_kib": peak_after,
            "peak_end_kib": peak_end,
        })
    );
    Ok(())
}

/// The `p`th percentile (0–100) of `values`, nearest rank.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn floats(v: &Value, key: &str) -> Vec<f64> {
    v[key].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
}

/// Runs every case in a child process and prints the table.
fn orchestrate(quick: bool) -> BoxResult<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("relive hostile-input bench — {} run, {cpus} CPUs", if quick { "quick" } else { "full" });
    println!(
        "{:<11} {:>9} | {:>20} {:>9} | {:>16} {:>7} | {:>18} {:>18} {:>11}",
        "case",
        "size",
        "reject p50 / p99",
        "÷ apply",
        "peak RSS (Δ)",
        "÷ base",
        "other: base p50/99",
        "during p50/99",
        "÷ base p50"
    );
    let mut failed = false;
    for case in CASES {
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.arg("--case").arg(case);
        if quick {
            cmd.arg("--quick");
        }
        let out = cmd.stderr(std::process::Stdio::inherit()).output()?;
        let line = String::from_utf8_lossy(&out.stdout);
        let Some(r) = line.lines().last().and_then(|l| serde_json::from_str::<Value>(l).ok()) else {
            println!("{case:<11} FAILED ({})", out.status);
            failed = true;
            continue;
        };
        let (apply, reject) = (floats(&r, "apply_ms"), floats(&r, "reject_ms"));
        let (base, during) = (floats(&r, "baseline_ms"), floats(&r, "during_ms"));
        let (before, after) = (r["peak_before_kib"].as_f64().unwrap_or(0.0), r["peak_end_kib"].as_f64().unwrap_or(0.0));
        let bytes = r["bytes"].as_f64().unwrap_or(0.0);
        let size = if bytes == 0.0 { "fifo".to_string() } else { format!("{:.0} KB", bytes / 1e3) };
        println!(
            "{case:<11} {size:>9} | {:>8.2} / {:>7.2} ms {:>8.1}× | {:>6.1} MB (+{:>4.1}) {:>6.2}× | {:>7.2} / {:>6.2} ms {:>7.2} / {:>6.2} ms {:>10.2}×",
            percentile(&reject, 50.0),
            percentile(&reject, 99.0),
            percentile(&reject, 50.0) / percentile(&apply, 50.0),
            after / 1024.0,
            (after - before) / 1024.0,
            after / before,
            percentile(&base, 50.0),
            percentile(&base, 99.0),
            percentile(&during, 50.0),
            percentile(&during, 99.0),
            percentile(&during, 50.0) / percentile(&base, 50.0),
        );
        eprintln!(
            "  {case}: apply p50 {:.2} ms; {} hostile rejections during the latency run; during p99 ÷ base p99 {:.2}×",
            percentile(&apply, 50.0),
            r["rejected_during"],
            percentile(&during, 99.0) / percentile(&base, 99.0),
        );
    }
    if failed {
        return Err("a case failed".into());
    }
    Ok(())
}

fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    match args.first().map(String::as_str) {
        Some("--writer") => writer_main(Path::new(args.get(1).ok_or("--writer CONFIG_DIR")?)),
        Some("--case") => {
            let case = args.get(1).ok_or("--case NAME")?.clone();
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(case_main(&case, quick))
        }
        Some("--help") => {
            println!("usage: hostile_bench [--quick]");
            Ok(())
        }
        _ => {
            let result = orchestrate(quick);
            if let Err(e) = &result {
                eprintln!("hostile_bench: {e}");
                std::process::exit(1);
            }
            result
        }
    }
}

/// Makes a FIFO at `path` (mode 0600). Linux has `mkfifoat`; macOS has
/// none in rustix, so there the `mkfifo` command makes it.
fn mkfifo(path: &std::path::Path) -> BoxResult<()> {
    #[cfg(target_os = "linux")]
    rustix::fs::mkfifoat(rustix::fs::CWD, path, rustix::fs::Mode::from(0o600))?;
    #[cfg(not(target_os = "linux"))]
    {
        let status = std::process::Command::new("mkfifo").arg("-m").arg("600").arg(path).status()?;
        if !status.success() {
            return Err(format!("mkfifo {}: {status}", path.display()).into());
        }
    }
    Ok(())
}
