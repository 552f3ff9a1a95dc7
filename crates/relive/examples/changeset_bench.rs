//! Latency of a change set: write → delivered for a two-member group
//! (`server` and `proxy`, validated together) against a single config, in
//! the same run, with the writer in another process and the engine's
//! default settings (`change_set_window_ms` = 10).
//!
//! ```text
//! cargo run --release -p relive --example changeset_bench
//! cargo run --release -p relive --example changeset_bench -- --rounds 50   # quicker
//! ```
//!
//! Rounds alternate: the writer process rewrites `single.toml` in place, or
//! `server.toml` then `proxy.toml` in place, back to back. The time runs
//! from just before the writer's first system call (`CLOCK_MONOTONIC`, one
//! clock for both processes) to the moment a task awaiting
//! `ConfigStream::next` has the new value: for the group, the group's
//! stream, whose value is both members. A group's change waits out the
//! window after its last write, so it costs about the window more than a
//! single config, which is not delayed. The run fails if a mix is ever
//! delivered or refused.

use std::fs;
use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

mod common;

use common::{BoxError, WriterProcess, mono_ns};
use relive::{ChangeEvent, Workspace};
use serde::Deserialize;
use tokio::sync::mpsc;

#[derive(Debug, Deserialize)]
struct Single {
    n: u64,
}

#[derive(Debug, Deserialize)]
struct Server {
    port: u64,
}

#[derive(Debug, Deserialize)]
struct Proxy {
    target: u64,
}

#[derive(Debug, Deserialize)]
struct Net {
    server: Server,
    proxy: Proxy,
}

/// In the writer process: `single N` or `pair N` on stdin; writes, then
/// answers the monotonic time taken just before the first write.
fn writer_main(config: &Path) -> Result<(), BoxError> {
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let (what, n) = line.split_once(' ').ok_or("bad command")?;
        let t0 = mono_ns();
        match what {
            "single" => fs::write(config.join("single.toml"), format!("n = {n}\n"))?,
            "pair" => {
                fs::write(config.join("server.toml"), format!("port = {n}\n"))?;
                fs::write(config.join("proxy.toml"), format!("target = {n}\n"))?;
            }
            _ => return Err("bad command".into()),
        }
        println!("{t0}");
    }
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--writer") {
        return writer_main(Path::new(args.get(2).ok_or("usage: --writer CONFIG_DIR")?));
    }
    let rounds: u64 = match args.iter().position(|a| a == "--rounds") {
        Some(i) => args.get(i + 1).ok_or("--rounds N")?.parse()?,
        None => 200,
    };
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; run with --release for meaningful numbers");
    }
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    fs::create_dir(&config)?;
    fs::write(config.join("single.toml"), "n = 0\n")?;
    fs::write(config.join("server.toml"), "port = 0\n")?;
    fs::write(config.join("proxy.toml"), "target = 0\n")?;
    let ws = Workspace::new(dir.path());
    let window = ws.settings()?.change_set_window_ms;
    let manager = ws.start_hot_reload().await?;
    let mut events = manager.subscribe();
    let mut single = ws.config::<Single>("single").watch().await?;
    let mut net = ws
        .group::<Net>(["server", "proxy"])
        .validate(|n: &Net| if n.server.port == n.proxy.target { Ok(()) } else { Err("a mix") })
        .watch()
        .await?;
    // Arrival times, taken by tasks that only await the streams.
    let (single_tx, mut single_rx) = mpsc::unbounded_channel();
    let (net_tx, mut net_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(v) = single.next().await {
            let _ = single_tx.send((v.n, mono_ns()));
        }
    });
    tokio::spawn(async move {
        while let Some(v) = net.next().await {
            let _ = net_tx.send((v.server.port, v.proxy.target, mono_ns()));
        }
    });
    let mut writer = WriterProcess::spawn([config.as_os_str()])?;
    let (mut single_ns, mut pair_ns) = (Vec::new(), Vec::new());
    let warmup = 5;
    for n in 1..=(rounds + warmup) {
        for pair in [false, true] {
            let t0: u64 = writer.ask(&format!("{} {n}", if pair { "pair" } else { "single" }))?.parse()?;
            let t1 = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    if pair {
                        let (port, target, at) = net_rx.recv().await.ok_or("stream ended")?;
                        if port != target {
                            return Err::<u64, BoxError>(format!("a mix delivered: {port} and {target}").into());
                        }
                        if port == n {
                            return Ok(at);
                        }
                    } else {
                        let (v, at) = single_rx.recv().await.ok_or("stream ended")?;
                        if v == n {
                            return Ok(at);
                        }
                    }
                }
            })
            .await
            .map_err(|_| format!("round {n}: not delivered within 5 s"))??;
            if n > warmup {
                if pair { &mut pair_ns } else { &mut single_ns }.push(t1.saturating_sub(t0));
            }
        }
    }
    while let Ok(event) = events.try_recv() {
        if let ChangeEvent::ValidationFailed { config_name, error } = event {
            return Err(format!("a mix was refused: {config_name}: {error}").into());
        }
    }
    single_ns.sort_unstable();
    pair_ns.sort_unstable();
    println!("write → delivered, writer in another process, {rounds} rounds each, change_set_window_ms = {window}");
    println!("{:<34} {:>10} {:>10} {:>10}", "", "p50 µs", "p90 µs", "p99 µs");
    for (label, v) in [("single config (one file)", &single_ns), ("two-member group (two files)", &pair_ns)] {
        println!("{label:<34} {:>10.0} {:>10.0} {:>10.0}", percentile(v, 0.5), percentile(v, 0.9), percentile(v, 0.99));
    }
    println!("ratio of medians (group / single): {:.1}×", percentile(&pair_ns, 0.5) / percentile(&single_ns, 0.5));
    manager.shutdown().await?;
    Ok(())
}
