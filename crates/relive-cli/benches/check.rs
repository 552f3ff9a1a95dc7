//! How long `relive check` takes on a workspace of 1,000 config files.
//!
//! Run with `cargo bench -p relive-cli --bench check` (a release build). It
//! writes a workspace of TOML, YAML and JSON configs of about 1 KB each,
//! with overlays for two environments and JSON Schemas for some, runs the
//! real binary on it several times, and prints the wall-clock times. The
//! goal is under one second.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const FILES: usize = 1000;
const RUNS: usize = 7;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = generate(dir.path());
    let relive = env!("CARGO_BIN_EXE_relive");
    let mut times: Vec<Duration> = Vec::new();
    let mut timings = String::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let output = Command::new(relive)
            .args(["check", "--timings"])
            .arg(dir.path())
            .env_remove("RELIVE_ENV")
            .output()
            .expect("run relive check");
        times.push(started.elapsed());
        assert!(output.status.success(), "check failed: {}", String::from_utf8_lossy(&output.stdout));
        timings = String::from_utf8_lossy(&output.stderr).into_owned();
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "relive check on {files} config files ({RUNS} runs): min {:.1} ms, median {:.1} ms, max {:.1} ms",
        ms(times[0]),
        ms(times[RUNS / 2]),
        ms(times[RUNS - 1])
    );
    print!("last run: {timings}");
}

/// Writes the workspace; returns how many config files it has.
fn generate(root: &Path) -> usize {
    let config = root.join("config");
    let mut written = 0;
    let mut i = 0;
    while written < FILES {
        let dir = config.join(format!("svc{:02}", i % 20));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let name = format!("c{i:04}");
        let (ext, text) = match i % 3 {
            0 => ("toml", toml(i)),
            1 => ("yaml", yaml(i)),
            _ => ("json", json(i)),
        };
        std::fs::write(dir.join(format!("{name}.{ext}")), text).expect("write");
        written += 1;
        // A fifth of the configs have overlays for staging and production.
        if i % 5 == 0 && written + 2 <= FILES {
            std::fs::write(dir.join(format!("{name}.staging.toml")), "[server]\nworkers = 2\n").expect("write");
            std::fs::write(dir.join(format!("{name}.production.toml")), "[server]\nworkers = 16\n").expect("write");
            written += 2;
        }
        // A tenth have a schema.
        if i % 10 == 0 {
            std::fs::write(dir.join(format!("{name}.schema.json")), SCHEMA).expect("write");
        }
        i += 1;
    }
    written
}

const SCHEMA: &str = r#"{
  "type": "object",
  "required": ["server"],
  "properties": {
    "server": {
      "type": "object",
      "properties": {
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "workers": {"type": "integer", "minimum": 1}
      }
    },
    "features": {"type": "array", "items": {"type": "string"}}
  }
}"#;

fn toml(i: usize) -> String {
    let mut s = format!("[server]\nport = {}\nworkers = 4\nhost = \"svc{i}.internal\"\n\n[limits]\n", 1000 + i);
    for k in 0..20 {
        let _ = writeln!(s, "limit_{k} = {}", k * i);
    }
    s.push_str("\nfeatures = [\"a\", \"b\", \"c\"]\n");
    s
}

fn yaml(i: usize) -> String {
    let mut s = format!("server:\n  port: {}\n  workers: 4\n  host: svc{i}.internal\nlimits:\n", 1000 + i);
    for k in 0..20 {
        let _ = writeln!(s, "  limit_{k}: {}", k * i);
    }
    s.push_str("features: [a, b, c]\n");
    s
}

fn json(i: usize) -> String {
    let limits: Vec<String> = (0..20).map(|k| format!("\"limit_{k}\": {}", k * i)).collect();
    format!(
        "{{\n  \"server\": {{\"port\": {}, \"workers\": 4, \"host\": \"svc{i}.internal\"}},\n  \"limits\": {{{}}},\n  \"features\": [\"a\", \"b\", \"c\"]\n}}\n",
        1000 + i,
        limits.join(", ")
    )
}
