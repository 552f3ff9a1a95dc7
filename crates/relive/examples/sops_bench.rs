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

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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

fn main() -> BoxResult<()> {
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
    Ok(())
}
