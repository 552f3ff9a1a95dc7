//! What recording version history costs a reload.
//!
//! ```text
//! cargo run --release -p relive --example history_bench              # full run
//! cargo run --release -p relive --example history_bench -- --quick   # CI smoke run
//! ```
//!
//! Two fresh temporary workspaces, each with a ~10 KB `config/app.json` and
//! a running engine: one with history on (the default), one with it off.
//! Updates alternate between the two, so both see the same machine at the
//! same moments: each is an atomic save (temp file + rename) with a new
//! `counter`, timed from just before the write to the moment a task
//! awaiting `ConfigStream::next()` has the value. Updates are 2–5 ms apart
//! (pseudo-random), the pace of a deploy tool, not of a benchmark loop; the
//! history's writer thread syncs to disk meanwhile, off the reload path.
//!
//! Printed: p50 and p99 of both, the p99 difference (the issue's target:
//! history adds at most 1 ms at p99, PASS/MISS) and the ratio, and how long
//! the history took to catch up after the last update. Then a burst: updates
//! back to back (each awaited, no pause) on the history side, and how long
//! the writer thread needs to record them all (each version is two file
//! fsyncs, a directory fsync and a pruning record once past retention). The process exits
//! with status 1 only if an update is not delivered or a version is missing
//! from the history.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use relive::{HistoryConfig, HotReloadConfig, Workspace};
use serde_json::{Value, json};

/// Any error.
type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How long an update may take before it counts as missing.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(2);
/// The issue's bound on what history adds to a reload at p99.
const TARGET_ADDED_P99: Duration = Duration::from_millis(1);

/// A ~10 KB config whose `counter` is `n`; same length for every `n`.
fn config(n: u64) -> Vec<u8> {
    let services: Vec<Value> = (0..70)
        .map(|i| {
            json!({
                "name": format!("service-{i:03}"),
                "url": format!("https://svc{i:03}.internal.example:8443/api/v1"),
                "timeout_ms": 1500 + i,
                "retries": i % 5,
            })
        })
        .collect();
    let value = json!({
        "counter": format!("{n:012}"),
        "log_level": "info",
        "db": {"host": "db.internal", "port": 5432, "password": "s3cret", "pool": 16},
        "services": services,
    });
    serde_json::to_vec_pretty(&value).expect("serializes")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn fmt(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

struct Side {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    ws: Workspace,
    manager: relive::HotReloadManager,
    stream: relive::ConfigStream<Value>,
    samples: Vec<Duration>,
}

impl Side {
    async fn new(history: bool) -> BoxResult<Side> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().to_path_buf();
        fs::create_dir_all(root.join("config"))?;
        fs::write(root.join("config/app.json"), config(0))?;
        let ws = Workspace::new(&root);
        let settings =
            HotReloadConfig { history: HistoryConfig { enabled: history, ..Default::default() }, ..Default::default() };
        let manager = ws.start_hot_reload_with_config(settings).await?;
        let stream = ws.watch_config_changes::<Value>("app").await?;
        Ok(Side { _dir: dir, root, ws, manager, stream, samples: Vec::new() })
    }

    /// One update; returns how long it took to be delivered.
    async fn update(&mut self, n: u64) -> BoxResult<Duration> {
        let content = config(n);
        let tmp = self.root.join("config/.app.json.tmp");
        let file = self.root.join("config/app.json");
        let want = Value::String(format!("{n:012}"));
        let t0 = Instant::now();
        write_then_rename(&tmp, &file, &content)?;
        let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
        while self.stream.current()["counter"] != want {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(_)) => {}
                _ => return Err(format!("update {n} was not delivered within {DELIVERY_TIMEOUT:?}").into()),
            }
        }
        Ok(t0.elapsed())
    }
}

fn write_then_rename(tmp: &Path, file: &Path, content: &[u8]) -> std::io::Result<()> {
    fs::write(tmp, content)?;
    fs::rename(tmp, file)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> BoxResult<()> {
    let mut quick = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            "--help" | "-h" => {
                println!("usage: history_bench [--quick]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let (updates, warmup) = if quick { (40, 3) } else { (400, 10) };

    let mut on = Side::new(true).await?;
    let mut off = Side::new(false).await?;
    eprintln!("config size: {} bytes; {updates} updates each, alternating", config(0).len());
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for n in 1..=(warmup + updates) {
        for side in [&mut on, &mut off] {
            let took = side.update(n).await?;
            if n > warmup {
                side.samples.push(took);
            }
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            tokio::time::sleep(Duration::from_micros(2_000 + seed % 3_000)).await;
        }
    }
    let caught_up = Instant::now();
    on.manager.flush_history().await?;
    let catch_up = caught_up.elapsed();
    let history = on.ws.history("app")?;
    let expected = 1 + warmup + updates;
    if history.len() as u64 != expected.min(HistoryConfig::default().max_versions as u64) {
        return Err(format!("history has {} versions, expected {expected} (up to retention)", history.len()).into());
    }

    let mut rows = Vec::new();
    for (label, side) in [("history on", &mut on), ("history off", &mut off)] {
        side.samples.sort();
        rows.push((label, percentile(&side.samples, 0.5), percentile(&side.samples, 0.99)));
    }
    println!("relive history bench — {} run, {updates} updates per side", if quick { "quick" } else { "full" });
    println!("{:<12} {:>10} {:>10}", "", "p50", "p99");
    for (label, p50, p99) in &rows {
        println!("{label:<12} {:>10} {:>10}", fmt(*p50), fmt(*p99));
    }
    let (on50, on99) = (rows[0].1, rows[0].2);
    let (off50, off99) = (rows[1].1, rows[1].2);
    let added = on99.saturating_sub(off99);
    println!(
        "added at p99: {} (target ≤ {}: {}); ratio on/off p50 {:.2}, p99 {:.2}",
        fmt(added),
        fmt(TARGET_ADDED_P99),
        if added <= TARGET_ADDED_P99 { "PASS" } else { "MISS" },
        on50.as_secs_f64() / off50.as_secs_f64(),
        on99.as_secs_f64() / off99.as_secs_f64(),
    );
    println!("history caught up {} after the last update; {} versions kept", fmt(catch_up), history.len());

    let burst = if quick { 50 } else { 300 };
    let first = warmup + updates + 1;
    let started = Instant::now();
    for n in first..first + burst {
        on.update(n).await?;
    }
    let delivered = started.elapsed();
    on.manager.flush_history().await?;
    let recorded = started.elapsed();
    let newest = on.ws.open_history("app")?.latest().map_or(0, |e| e.version);
    if newest != first + burst {
        return Err(format!("burst: newest version {newest}, expected {}", first + burst).into());
    }
    println!(
        "burst of {burst}: delivered in {:.1} ms, recorded in {:.1} ms ({:.0} versions/s)",
        delivered.as_secs_f64() * 1e3,
        recorded.as_secs_f64() * 1e3,
        burst as f64 / recorded.as_secs_f64()
    );
    on.manager.shutdown().await?;
    off.manager.shutdown().await?;
    Ok(())
}
