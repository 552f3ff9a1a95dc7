//! What decrypting a SOPS file costs, against parsing the same file in
//! clear, in one run.
//!
//! ```text
//! cargo run --release -p relive --example sops_bench              # full run
//! cargo run --release -p relive --example sops_bench -- --quick   # CI smoke run
//! ```
//!
//! A YAML config of 50 values (10 services of a string, a URL, an int, a
//! float and a bool) is encrypted by the real `sops` binary to a key made
//! by `age-keygen` (both must be on PATH: `scripts/install-deps`). Then,
//! alternating so that both see the same machine at the same moments:
//!
//! - **clear**: the plaintext file parsed into a `serde_json::Value`, as
//!   relive's YAML parser does (`serde_yaml_ng`);
//! - **sops, data key cached**: [`relive::sops::sniff`] then
//!   [`relive::sops::decrypt`], as an engine that recognises a SOPS file
//!   before parsing it (so that it parses it once) would do on a reload: the
//!   file parsed in order, 50 values decrypted with AES-256-GCM, the MAC
//!   checked; the age data key comes from the identities' cache;
//! - **sops, data key unwrapped**: the same with fresh identities, so the
//!   data key is unwrapped with age too (two X25519 multiplications): the
//!   first load of a file, or the first after `sops rotate`.
//!
//! The same 50 values are measured as YAML, then as JSON. Printed: p50 and
//! p99 of each, what decryption adds at p99 (the issue's
//! target: at most 1 ms, PASS/MISS), and the ratio. The process exits with
//! status 1 if the decrypted value differs from the clear one.
//!
//! Then the way users run it: **write → delivered** through a running
//! engine, for the same YAML file in clear and encrypted (each update a new
//! version, prepared beforehand: `sops` takes tens of milliseconds), written
//! in place by another process (this binary run as `--writer`), alternating
//! clear and SOPS updates, with times from `CLOCK_MONOTONIC` on both sides.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{WriterProcess, mono_ns};
use relive::Format;
use relive::sops::{self, Identities};
use serde_json::Value;

/// Any error.
type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The issue's bound on what decryption adds at p99.
const TARGET_ADDED_P99: Duration = Duration::from_millis(1);

/// A YAML config of 50 values.
fn config() -> String {
    let mut out = String::from("services:\n");
    for i in 0..10 {
        out.push_str(&format!(
            "  - name: service-{i:03}\n    url: https://user:pw{i}@svc{i:03}.internal.example:8443/api\n    \
             port: {}\n    ratio: {}.25\n    enabled: {}\n",
            8000 + i,
            i,
            i % 2 == 0
        ));
    }
    out
}

fn run(cmd: &mut Command) -> BoxResult<Vec<u8>> {
    let out = cmd.output().map_err(|err| format!("{cmd:?}: {err} (run scripts/install-deps)"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(out.stdout)
}

/// A fresh `age-keygen` key in `dir`: its file and its recipient.
fn keygen(dir: &Path) -> BoxResult<(std::path::PathBuf, String)> {
    let key_file = dir.join("keys.txt");
    run(Command::new("age-keygen").arg("-o").arg(&key_file))?;
    let keys = std::fs::read_to_string(&key_file)?;
    let recipient =
        keys.lines().find_map(|l| l.strip_prefix("# public key: ")).ok_or("age-keygen wrote no public key")?;
    Ok((key_file, recipient.to_owned()))
}

/// `plain`, encrypted by `sops` to `recipient`.
fn encrypt(dir: &Path, name: &str, plain: &str, recipient: &str) -> BoxResult<Vec<u8>> {
    std::fs::write(dir.join(name), plain)?;
    run(Command::new("sops")
        .current_dir(dir)
        .env("SOPS_DISABLE_VERSION_CHECK", "1")
        .args(["encrypt", "--age", recipient, name]))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// The three timings of one file, sorted.
struct Timings {
    clear: Vec<Duration>,
    warm: Vec<Duration>,
    cold: Vec<Duration>,
}

fn parse(format: Format, bytes: &[u8]) -> BoxResult<Value> {
    Ok(match format {
        Format::Json => serde_json::from_slice(bytes)?,
        _ => serde_yaml_ng::from_slice(bytes)?,
    })
}

/// `sniff` then `decrypt`: the path of an engine that recognises a SOPS
/// file before parsing it, so that it is parsed once.
fn load_sops(format: Format, bytes: &[u8], ids: &Identities) -> BoxResult<Value> {
    assert!(sops::sniff(bytes));
    Ok(sops::decrypt(format, bytes, ids)?.into_parts().0)
}

fn measure(format: Format, plain: &[u8], encrypted: &[u8], keys: &str, rounds: usize) -> BoxResult<Timings> {
    let mut ids = Identities::new();
    ids.add_keys(keys)?;
    let decrypted = sops::decrypt(format, encrypted, &ids)?;
    if decrypted.value() != &parse(format, plain)? {
        eprintln!("the decrypted value differs from the clear one");
        std::process::exit(1);
    }
    println!(
        "{}: {} values, {} bytes in clear, {} bytes encrypted; {rounds} rounds",
        format.name(),
        decrypted.secrets().len(),
        plain.len(),
        encrypted.len()
    );
    let mut t = Timings {
        clear: Vec::with_capacity(rounds),
        warm: Vec::with_capacity(rounds),
        cold: Vec::with_capacity(rounds),
    };
    for round in 0..rounds + 50 {
        // Fresh identities have no data key cached: the first load of a
        // file, or the first after `sops rotate`.
        let mut fresh = Identities::new();
        fresh.add_keys(keys)?;
        let t0 = Instant::now();
        std::hint::black_box(parse(format, plain)?);
        let t1 = Instant::now();
        std::hint::black_box(load_sops(format, encrypted, &ids)?);
        let t2 = Instant::now();
        std::hint::black_box(load_sops(format, encrypted, &fresh)?);
        let t3 = Instant::now();
        // The first 50 rounds warm caches and are not counted.
        if round >= 50 {
            t.clear.push(t1 - t0);
            t.warm.push(t2 - t1);
            t.cold.push(t3 - t2);
        }
    }
    t.clear.sort();
    t.warm.sort();
    t.cold.sort();
    Ok(t)
}

fn report(t: &Timings) {
    let row = |name: &str, d: &[Duration]| {
        println!("  {name:<34} p50 {:>10}  p99 {:>10}", micros(percentile(d, 0.5)), micros(percentile(d, 0.99)));
    };
    row("clear: parse", &t.clear);
    row("sops: decrypt, data key cached", &t.warm);
    row("sops: decrypt, data key unwrapped", &t.cold);
    let (c50, c99) = (percentile(&t.clear, 0.5), percentile(&t.clear, 0.99));
    for (name, d) in [("cached", &t.warm), ("unwrapped", &t.cold)] {
        let (s50, s99) = (percentile(d, 0.5), percentile(d, 0.99));
        let added = s99.saturating_sub(c99);
        println!(
            "  {name}: decryption adds {} at p99 ({}; target ≤ 1 ms), ratio p50 {:.1}x, p99 {:.1}x",
            micros(added),
            if added <= TARGET_ADDED_P99 { "PASS" } else { "MISS" },
            s50.as_secs_f64() / c50.as_secs_f64(),
            s99.as_secs_f64() / c99.as_secs_f64()
        );
    }
}

/// The writer process: for each line `SRC DST` on stdin, writes SRC's bytes
/// to DST in place (open with truncate, write, close) and prints the
/// monotonic time just before.
fn writer_main() -> BoxResult<()> {
    use std::io::{BufRead, Write};
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let (src, dst) = line.split_once(' ').ok_or("expected SRC DST")?;
        let bytes = std::fs::read(src)?;
        let t0 = mono_ns();
        std::fs::write(dst, bytes)?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{t0}")?;
        out.flush()?;
    }
    Ok(())
}

/// The 50-value config at version `n` (the version is one more value).
fn versioned(n: usize) -> String {
    format!("version: {n}\n{}", config())
}

/// Write → delivered through an engine: clear and SOPS updates, alternating.
fn engine_latency(
    dir: &Path,
    key_file: &Path,
    recipient: &str,
    updates: usize,
) -> BoxResult<(Vec<Duration>, Vec<Duration>)> {
    let prepared = dir.join("prepared");
    std::fs::create_dir_all(&prepared)?;
    for n in 0..=updates {
        std::fs::write(prepared.join(format!("clear-{n}.yaml")), versioned(n))?;
        std::fs::write(prepared.join(format!("sops-{n}.yaml")), encrypt(dir, "v.yaml", &versioned(n), recipient)?)?;
    }
    let root = dir.join("ws");
    std::fs::create_dir_all(root.join("config"))?;
    std::fs::copy(prepared.join("clear-0.yaml"), root.join("config/clear.yaml"))?;
    std::fs::copy(prepared.join("sops-0.yaml"), root.join("config/secret.yaml"))?;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (tx, rx) = std::sync::mpsc::channel::<(&'static str, u64, u64)>();
    let _guard = rt.enter();
    let config = relive::HotReloadConfig { age_key_files: vec![key_file.to_path_buf()], ..Default::default() };
    let ws = relive::Workspace::new(&root).with_config(config);
    let manager = rt.block_on(ws.start_hot_reload())?;
    for (name, label) in [("clear", "clear"), ("secret", "sops")] {
        let mut stream = rt.block_on(ws.config::<Value>(name).watch())?;
        let tx = tx.clone();
        rt.spawn(async move {
            while let Some(value) = stream.next().await {
                let at = mono_ns();
                let version = value["version"].as_u64().unwrap_or(u64::MAX);
                if tx.send((label, version, at)).is_err() {
                    break;
                }
            }
        });
    }
    let mut writer = WriterProcess::spawn::<[&str; 0], &str>([])?;
    let (mut clear, mut secret) = (Vec::new(), Vec::new());
    for n in 1..=updates {
        for (label, src, dst) in [("clear", "clear", "clear"), ("sops", "sops", "secret")] {
            let line = format!(
                "{} {}",
                prepared.join(format!("{src}-{n}.yaml")).display(),
                root.join(format!("config/{dst}.yaml")).display()
            );
            let t0: u64 = writer.ask(&line)?.parse()?;
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let (got, version, at) =
                    rx.recv_timeout(left).map_err(|_| format!("{label} update {n} was not delivered"))?;
                if got == label && version == n as u64 {
                    let took = Duration::from_nanos(at.saturating_sub(t0));
                    if n > 5 {
                        if label == "clear" { clear.push(took) } else { secret.push(took) }
                    }
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    drop(writer);
    rt.block_on(manager.shutdown())?;
    clear.sort();
    secret.sort();
    Ok((clear, secret))
}

fn main() -> BoxResult<()> {
    if std::env::args().nth(1).as_deref() == Some("--writer") {
        return writer_main();
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 200 } else { 5_000 };
    let dir = tempfile::tempdir()?;
    let (key_file, recipient) = keygen(dir.path())?;
    let keys = std::fs::read_to_string(&key_file)?;

    let yaml = config();
    let json = serde_json::to_string_pretty(&serde_yaml_ng::from_str::<Value>(&yaml)?)?;
    for (name, plain) in [("app.yaml", yaml), ("app.json", json)] {
        let encrypted = encrypt(dir.path(), name, &plain, &recipient)?;
        let format = Format::from_path(Path::new(name)).ok_or("a yaml or json name")?;
        report(&measure(format, plain.as_bytes(), &encrypted, &keys, rounds)?);
    }

    let updates = if quick { 30 } else { 200 };
    let (clear, secret) = engine_latency(dir.path(), &key_file, &recipient, updates)?;
    let (c50, c99, s50, s99) =
        (percentile(&clear, 0.5), percentile(&clear, 0.99), percentile(&secret, 0.5), percentile(&secret, 0.99));
    println!();
    println!(
        "write → delivered through the engine, writer in another process ({} updates each, alternating)",
        clear.len()
    );
    println!("  clear yaml     p50 {:>12}  p99 {:>12}", micros(c50), micros(c99));
    println!("  sops yaml      p50 {:>12}  p99 {:>12}", micros(s50), micros(s99));
    let added = s99.saturating_sub(c99);
    println!(
        "  sops ÷ clear   p50 {:.2}x  p99 {:.2}x; added at p99 {}  (target ≤ 1 ms: {})",
        s50.as_secs_f64() / c50.as_secs_f64(),
        s99.as_secs_f64() / c99.as_secs_f64(),
        micros(added),
        if added <= TARGET_ADDED_P99 { "PASS" } else { "MISS" }
    );
    Ok(())
}
