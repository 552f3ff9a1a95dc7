//! `relive fleet`: the real binary against a real etcd started by the
//! tests (relive-fleet's harness), with real agents and `relive watch`.

// The harness (tests/common) stops relive with SIGTERM and watches its
// processes with kill(2): Unix's. On Windows the CLI is type-checked in CI.
#![cfg(unix)]

mod common;
#[path = "../../relive-fleet/tests/common/mod.rs"]
mod etcd;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Run, TIMEOUT, Ws, wait_until};
use etcd::Etcd;
use serde_json::Value;

const PREFIX: &str = "app";

/// `relive fleet --endpoints E --prefix app ARGS`, run in `ws`.
fn fleet(ws: &Ws, etcd: &Etcd, args: &[&str]) -> Run {
    let endpoint = etcd.endpoint();
    let mut all = vec!["fleet", "--endpoints", endpoint.as_str(), "--prefix", PREFIX];
    all.extend_from_slice(args);
    ws.run(&all)
}

/// Runs a fleet command that must succeed; returns its stdout.
fn ok(ws: &Ws, etcd: &Etcd, args: &[&str]) -> String {
    let run = fleet(ws, etcd, args);
    assert_eq!(run.code(), 0, "relive fleet {args:?}: {}{}", run.stdout(), run.stderr());
    run.stdout()
}

/// The version in `pushed server: version N ...` (or `canary ...: version N`).
fn version_in(stdout: &str) -> u64 {
    let after = stdout.split("version ").nth(1).unwrap_or_else(|| panic!("no version in {stdout:?}"));
    after.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

fn status_json(ws: &Ws, etcd: &Etcd) -> Value {
    serde_json::from_str(&ok(ws, etcd, &["status", "--json"])).expect("status --json is JSON")
}

/// Waits until `relive fleet status --json` has `instance`'s row for
/// `server` at `version` in `state`; returns that row.
fn wait_row(ws: &Ws, etcd: &Etcd, instance: &str, version: u64, state: &str) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let status = status_json(ws, etcd);
        let row = status["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["instance"] == instance && r["config"] == "server")
            .cloned();
        if let Some(row) = row.filter(|r| r["version"] == version && r["state"] == state) {
            return row;
        }
        assert!(Instant::now() < deadline, "{instance} not {state} at {version} within {TIMEOUT:?}: {status:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `relive fleet agent`, stopped with SIGTERM on drop.
struct AgentProc {
    child: Option<Child>,
    log: tempfile::NamedTempFile,
}

impl AgentProc {
    fn start(ws: &Ws, etcd: &Etcd, dir: &Path, instance: &str) -> AgentProc {
        AgentProc::start_with(ws, etcd, dir, instance, &[])
    }

    /// An agent with `extra` arguments.
    fn start_with(ws: &Ws, etcd: &Etcd, dir: &Path, instance: &str, extra: &[&str]) -> AgentProc {
        let log = tempfile::NamedTempFile::new().unwrap();
        let dir = dir.to_str().unwrap();
        let endpoint = etcd.endpoint();
        let mut args =
            vec!["fleet", "--endpoints", &endpoint, "--prefix", PREFIX, "agent", dir, "--instance", instance];
        args.extend_from_slice(extra);
        let child = ws
            .relive(&args)
            .arg("--host")
            .arg("test-host")
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("spawn relive fleet agent");
        AgentProc { child: Some(child), log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// SIGTERM, then the exit code (bounded wait).
    fn terminate(&mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        common::signal(child.id(), rustix::process::Signal::TERM);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "the agent did not exit after SIGTERM: {}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl AgentProc {
    /// SIGKILL, like a crash: no clean shutdown, the status stays.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn a_push_reaches_an_agent_whose_file_relive_watch_follows() {
    let etcd = Etcd::start();
    let ws = Ws::new();
    ws.write("server.toml", "port = 1\n");
    let out = ok(&ws, &etcd, &["push", "server", "server.toml"]);
    assert!(out.starts_with("pushed server: version ") && out.contains("(new)"), "{out}");
    let v1 = version_in(&out);

    // The agent writes into a workspace that `relive watch` follows.
    let site = Ws::new();
    let mut agent = AgentProc::start(&ws, &etcd, site.root(), "web-1");
    let row = wait_row(&ws, &etcd, "web-1", v1, "SYNCED");
    assert_eq!(site.read("config/server.toml"), "port = 1\n");
    let mut watch = site.watch(&[]);

    ws.write("server.toml", "port = 2\n");
    let v2 = version_in(&ok(&ws, &etcd, &["push", "server", "server.toml", "--expect", &v1.to_string()]));
    let changed = watch.wait_kind("config_changed", "server");
    assert_eq!(changed["new"]["port"], 2, "{changed}");
    wait_row(&ws, &etcd, "web-1", v2, "SYNCED");
    assert_eq!(site.read("config/server.toml"), "port = 2\n");

    // The JSON shape.
    for key in ["instance", "host", "config", "version", "target", "state", "canary", "error", "at"] {
        assert!(row.get(key).is_some(), "no `{key}` in {row}");
    }
    assert_eq!((row["host"].as_str(), row["canary"].as_bool()), (Some("test-host"), Some(false)));
    let status = status_json(&ws, &etcd);
    assert!(status["revision"].as_u64().unwrap() >= v2);
    assert_eq!(status["configs"][0]["config"], "server");
    assert_eq!(status["configs"][0]["version"], v2);
    assert!(status["configs"][0]["canary"].is_null());

    // The table.
    let table = ok(&ws, &etcd, &["status", "server"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["INSTANCE", "HOST", "CONFIG", "VERSION", "TARGET", "STATE"]);
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row, ["web-1", "test-host", "server", &v2.to_string(), &v2.to_string(), "SYNCED"]);
    assert!(!table.contains('\u{1b}'), "no colours when not on a terminal: {table:?}");

    assert_eq!(agent.terminate(), 0, "{}", agent.log());
    assert!(agent.log().contains(&format!("applied server version {v2}")), "{}", agent.log());
    let status = status_json(&ws, &etcd);
    assert_eq!(status["instances"], serde_json::json!([]), "a clean stop withdraws the status at once");
    assert_eq!(site.read("config/server.toml"), "port = 2\n", "the file stays");
    assert_eq!(watch.terminate(), 0);
}

#[test]
fn a_push_checks_the_file_and_a_conflict_exits_4_with_what_to_do() {
    let etcd = Etcd::start();
    let ws = Ws::new();
    ws.write("server.toml", "port = 1\n");
    let v1 = version_in(&ok(&ws, &etcd, &["push", "server", "server.toml", "--expect", "0"]));
    ws.write("server.toml", "port = 2\n");
    let v2 = version_in(&ok(&ws, &etcd, &["push", "server", "server.toml", "--expect", &v1.to_string()]));
    let out = ok(&ws, &etcd, &["push", "server", "server.toml", "--expect", &v2.to_string()]);
    assert_eq!(out.trim(), format!("unchanged server: already version {v2}"));

    // Without --expect, an existing config is not replaced by accident...
    ws.write("server.toml", "port = 9\n");
    let run = fleet(&ws, &etcd, &["push", "server", "server.toml"]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    let says =
        format!("server exists (version {v2}): review it (`relive fleet show server`), then write with --expect {v2}");
    assert!(run.stderr().contains(&says), "{}", run.stderr());
    // ...and what to review is one command away: the document as pushed.
    let show = fleet(&ws, &etcd, &["show", "server"]);
    assert_eq!((show.code(), show.stdout()), (0, "port = 2\n".to_string()));
    assert!(show.stderr().contains(&format!("server version {v2} (toml)")), "{}", show.stderr());
    assert_eq!(ok(&ws, &etcd, &["show", "server", &v1.to_string()]), "port = 1\n");

    // A second operator who read version v1.
    ws.write("server.toml", "port = 3\n");
    let run = fleet(&ws, &etcd, &["push", "server", "server.toml", "--expect", &v1.to_string()]);
    assert_eq!(run.code(), 4, "{}", run.stderr());
    let err = run.stderr();
    assert!(
        err.contains(&format!("conflict: /app/configs/server is at version {v2}, but this push expected version {v1}")),
        "{err}"
    );
    assert!(err.contains("nothing was written") && err.contains(&format!("--expect {v2}")), "{err}");

    // Local checks: syntax, then the schema beside the file.
    ws.write("server.toml", "port = 1\nhost = \n");
    let run = fleet(&ws, &etcd, &["push", "server", "server.toml"]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert!(run.stdout().starts_with("server.toml:2:"), "file:line:col: {}", run.stdout());
    ws.write("server.toml", "port = 70000\n");
    ws.write("server.schema.json", r#"{"properties": {"port": {"type": "integer", "maximum": 65535}}}"#);
    let run = fleet(&ws, &etcd, &["push", "server", "server.toml"]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert!(run.stdout().starts_with("server.toml:1:1: 70000 is greater than"), "{}", run.stdout());
    assert!(run.stdout().contains("(at `port`)"), "{}", run.stdout());
    assert!(run.stderr().contains("not published: 1 error"), "{}", run.stderr());
    let versions: Value = serde_json::from_str(&ok(&ws, &etcd, &["versions", "server", "--json"])).unwrap();
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2, "nothing was published: {versions}");

    let run = ws.run(&["fleet", "--endpoints", &etcd.endpoint(), "status"]);
    assert_eq!(run.code(), 2, "no prefix is a usage error");
    assert!(run.stderr().contains("--prefix"), "{}", run.stderr());
    let run = fleet(&ws, &etcd, &["push", "server", "server.toml", "--canary", "0%"]);
    assert_eq!(run.code(), 2);
    let nobody = format!("http://{}", etcd::free_port());
    let run = ws.run(&["fleet", "--endpoints", &nobody, "--prefix", PREFIX, "--timeout-ms", "2000", "status"]);
    assert_eq!(run.code(), 3);
    assert!(run.stderr().contains(&format!("etcd at {nobody}: could not")), "{}", run.stderr());
    assert!(run.stderr().contains("is etcd running there?"), "{}", run.stderr());
}

#[test]
fn a_canary_through_the_cli_then_promote() {
    let etcd = Etcd::start();
    let ws = Ws::new();
    ws.write("server.toml", "port = 1\n");
    let v1 = version_in(&ok(&ws, &etcd, &["push", "server", "server.toml"]));
    let (site_a, site_b) = (Ws::new(), Ws::new());
    let _a = AgentProc::start(&ws, &etcd, site_a.root(), "a");
    let _b = AgentProc::start(&ws, &etcd, site_b.root(), "b");
    wait_row(&ws, &etcd, "a", v1, "SYNCED");
    wait_row(&ws, &etcd, "b", v1, "SYNCED");

    ws.write("server.toml", "port = 2\n");
    let out =
        ok(&ws, &etcd, &["push", "server", "server.toml", "--canary-instances", "b", "--expect", &v1.to_string()]);
    assert!(out.starts_with("canary server: version ") && out.contains(" on b "), "{out}");
    let canary = version_in(&out);
    let row = wait_row(&ws, &etcd, "b", canary, "SYNCED");
    assert_eq!((row["target"].as_u64(), row["canary"].as_bool()), (Some(canary), Some(true)));
    assert_eq!(site_b.read("config/server.toml"), "port = 2\n");
    // `a` answers a later config, so it has seen the canary key too.
    ws.write("other.toml", "x = 1\n");
    let barrier = version_in(&ok(&ws, &etcd, &["push", "other", "other.toml"]));
    wait_until("a to answer `other`", || {
        status_json(&ws, &etcd)["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["instance"] == "a" && r["config"] == "other" && r["version"] == barrier)
    });
    assert_eq!(site_a.read("config/server.toml"), "port = 1\n", "the canary reaches b only");
    let row = wait_row(&ws, &etcd, "a", v1, "SYNCED");
    assert_eq!(row["canary"], false);
    let table = ok(&ws, &etcd, &["status", "server"]);
    assert!(table.contains(&format!("{canary} (canary)")), "{table}");
    assert!(table.contains(&format!("canary server: version {canary} on b (others at {v1})")), "{table}");

    ws.write("server.toml", "port = 3\n");
    let run = fleet(&ws, &etcd, &["push", "server", "server.toml", "--expect", &v1.to_string()]);
    assert_eq!(run.code(), 4);
    assert!(run.stderr().contains("a canary of server is in progress"), "{}", run.stderr());

    let out = ok(&ws, &etcd, &["promote", "server"]);
    let promoted = version_in(&out);
    assert!(out.contains(&format!("was canary version {canary}")), "{out}");
    wait_row(&ws, &etcd, "a", promoted, "SYNCED");
    wait_row(&ws, &etcd, "b", promoted, "SYNCED");
    assert_eq!(site_a.read("config/server.toml"), "port = 2\n");
    let run = fleet(&ws, &etcd, &["abort", "server"]);
    assert_eq!((run.code(), run.stderr().contains("no canary of server is in progress")), (1, true));
}

#[test]
fn rollback_to_an_earlier_version_and_the_versions_list() {
    let etcd = Etcd::start();
    let ws = Ws::new();
    let mut versions = Vec::new();
    for port in 1..=3 {
        ws.write("server.toml", &format!("port = {port}\n"));
        let expect = versions.last().map_or("0".to_string(), u64::to_string);
        versions.push(version_in(&ok(&ws, &etcd, &["push", "server", "server.toml", "--expect", &expect])));
    }
    let to = versions[0].to_string();
    let run = fleet(&ws, &etcd, &["rollback", "server", "--to", &to]);
    assert_eq!(run.code(), 2, "a rollback, too, says which version it replaces: {}", run.stderr());
    let out = ok(&ws, &etcd, &["rollback", "server", "--to", &to, "--expect", &versions[2].to_string()]);
    assert!(out.starts_with(&format!("rolled back to {}'s document; pushed server: version ", versions[0])), "{out}");
    let back = version_in(out.split("; ").nth(1).unwrap());
    let list = ok(&ws, &etcd, &["versions", "server"]);
    let numbers: Vec<u64> =
        list.lines().skip(1).map(|l| l.split_whitespace().next().unwrap().parse().unwrap()).collect();
    assert_eq!(numbers, [back, versions[2], versions[1], versions[0]]);
    assert!(list.lines().nth(1).unwrap().ends_with("current"), "{list}");

    // A revision that is not a version of server.
    ws.write("other.toml", "x = 1\n");
    let other = version_in(&ok(&ws, &etcd, &["push", "other", "other.toml"]));
    let run = fleet(&ws, &etcd, &["rollback", "server", "--to", &other.to_string(), "--force"]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert!(run.stderr().contains(&format!("revision {other} is not a version of server")), "{}", run.stderr());
}

#[test]
fn completions_include_the_fleet_commands() {
    let ws = Ws::new();
    let run = ws.run(&["completions", "bash"]);
    assert_eq!(run.code(), 0);
    let script = run.stdout();
    assert!(script.contains("fleet") && script.contains("--canary-instances"), "bash completions");
    let help = ws.run(&["fleet", "push", "--help"]).stdout();
    assert!(help.contains("4  conflict"), "{help}");
}

#[test]
fn push_wait_exits_0_once_all_applied_and_1_with_the_reason_when_one_rejects() {
    let etcd = Etcd::start();
    let ws = Ws::new();
    ws.write("server.toml", "port = 1\nworkers = 1\n");
    let v1 = version_in(&ok(&ws, &etcd, &["push", "server", "server.toml"]));
    // Two instances: an agent, which checks syntax only, and a service
    // whose stream refuses `workers = 0`.
    let site = Ws::new();
    let _agent = AgentProc::start(&ws, &etcd, site.root(), "agent");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let service = Ws::new();
    let (_source, _stream) = rt.block_on(async {
        let w = relive::Workspace::new(service.root());
        let source = etcd::source(&etcd.endpoint(), PREFIX, "service").start(&w).await.unwrap();
        let stream = w
            .config::<Value>("server")
            .validate(|v: &Value| {
                if v["workers"] == 0 {
                    Err(relive::ValidationError::at("workers", "must be at least 1"))
                } else {
                    Ok(())
                }
            })
            .watch()
            .await
            .unwrap();
        (source, stream)
    });
    wait_row(&ws, &etcd, "agent", v1, "SYNCED");
    wait_row(&ws, &etcd, "service", v1, "SYNCED");

    ws.write("server.toml", "port = 2\nworkers = 2\n");
    let out = ok(&ws, &etcd, &["push", "server", "server.toml", "--wait", "30", "--expect", &v1.to_string()]);
    let v2 = version_in(&out);
    assert!(out.contains(&format!("server version {v2}: 2 applied, 0 rejected")), "{out}");

    ws.write("server.toml", "port = 3\nworkers = 0\n");
    let run = fleet(&ws, &etcd, &["push", "server", "server.toml", "--wait", "30", "--expect", &v2.to_string()]);
    let v3 = version_in(&run.stdout());
    assert_eq!(run.code(), 1, "{}{}", run.stdout(), run.stderr());
    assert!(run.stdout().contains(&format!("server version {v3}: 1 applied, 1 rejected")), "{}", run.stdout());
    let reason = format!("service rejected server version {v3}: ");
    assert!(run.stderr().contains(&reason) && run.stderr().contains("must be at least 1"), "{}", run.stderr());
    let row = wait_row(&ws, &etcd, "service", v2, "REJECTED");
    assert_eq!(row["target"].as_u64(), Some(v3));

    // An instance that died (SIGKILL: its status stays until its lease
    // expires, 60 s here) never answers: the wait ends at its limit.
    let crashed = Ws::new();
    let mut agent = AgentProc::start_with(&ws, &etcd, crashed.root(), "crashed", &["--lease-ttl", "60"]);
    wait_row(&ws, &etcd, "crashed", v3, "SYNCED");
    agent.kill();
    ws.write("server.toml", "port = 4\nworkers = 4\n");
    let run = fleet(&ws, &etcd, &["push", "server", "server.toml", "--wait", "1", "--force"]);
    assert_eq!(run.code(), 3, "{}{}", run.stdout(), run.stderr());
    let v4 = version_in(&run.stdout());
    let says = format!("server version {v4}: 1 of 3 instances did not answer within 1 s: crashed");
    assert!(run.stderr().contains(&says), "{}", run.stderr());
}

#[test]
fn two_operators_pushing_at_once_with_default_flags_never_overwrite_each_other() {
    let etcd = Etcd::start();
    let ws = Ws::new();
    ws.write("a.toml", "by = \"a\"\n");
    ws.write("b.toml", "by = \"b\"\n");
    for round in 0..10 {
        let name = format!("race{round}");
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| fleet(&ws, &etcd, &["push", &name, "a.toml"]));
            let b = s.spawn(|| fleet(&ws, &etcd, &["push", &name, "b.toml"]));
            (a.join().unwrap(), b.join().unwrap())
        });
        let (won, lost, doc) = match (a.code(), b.code()) {
            (0, _) => (&a, &b, "by = \"a\"\n"),
            (_, 0) => (&b, &a, "by = \"b\"\n"),
            codes => panic!("round {round}: nobody won {codes:?}: {}{}", a.stderr(), b.stderr()),
        };
        // The loser either lost the race inside etcd (4) or came second and
        // was told the config exists (2); both say why, neither wrote.
        assert!(matches!(lost.code(), 2 | 4), "round {round}: {} {}", lost.code(), lost.stderr());
        assert!(lost.stderr().contains("conflict") || lost.stderr().contains("exists"), "{}", lost.stderr());
        let version = version_in(&won.stdout());
        assert_eq!(ok(&ws, &etcd, &["show", &name, &version.to_string()]), doc);
        let versions: Value = serde_json::from_str(&ok(&ws, &etcd, &["versions", &name, "--json"])).unwrap();
        assert_eq!(versions["versions"].as_array().unwrap().len(), 1, "round {round}: one version: {versions}");
    }
}

/// Whether `text` holds a character that acts on a terminal: ESC (and the
/// rest of C0 but newline), DEL, C1, or a bidirectional control.
fn has_terminal_control(text: &str) -> bool {
    text.chars().any(|c| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    })
}

#[test]
fn fleet_status_escapes_control_characters_written_to_etcd() {
    let etcd = Etcd::start();
    let ws = Ws::new();
    ws.write("server.toml", "port = 1\n");
    let v1 = version_in(&ok(&ws, &etcd, &["push", "server", "server.toml"]));
    // Anyone who can write to etcd writes an instance's status, and a
    // canary, with escape sequences and a right-to-left override.
    let layout = relive_fleet::Layout::new(PREFIX).unwrap();
    let status = serde_json::json!({
        "instance": "web-1\u{1b}[2J",
        "host": "evil\u{1b}]0;pwned\u{7}\u{202e}txt.exe",
        "config": "server",
        "version": v1,
        "applied_version": null,
        "state": "rejected",
        "error": "bad\u{1b}[2J\u{9b}31m\u{2066}",
        "at": "2026-01-01T00:00:00Z",
    });
    let canary = serde_json::json!({
        "value": "# relive-format: toml\nport = 2\n",
        "instances": ["web-2\u{1b}[2J"],
        "base_version": v1,
        "percent": null,
        "by": "\u{1b}[31meve\u{202e}",
        "at": "2026-01-01T00:00:00Z\u{1b}[2J",
    });
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut client = etcd.client().await;
        client.put(layout.status_key("web-1", "server").unwrap(), status.to_string(), None).await.unwrap();
        client.put(layout.canary_key("server").unwrap(), canary.to_string(), None).await.unwrap();
    });

    let table = ok(&ws, &etcd, &["status"]);
    assert!(!has_terminal_control(&table), "raw controls in the status: {table:?}");
    assert!(table.contains("web-1\\u{1b}[2J"), "escaped, still readable: {table}");
    assert!(table.contains("evil\\u{1b}]0;pwned\\u{7}\\u{202e}txt.exe"), "{table}");
    assert!(table.contains("bad\\u{1b}[2J\\u{9b}31m\\u{2066}"), "{table}");
    assert!(table.contains("on web-2\\u{1b}[2J (others at"), "{table}");
    assert!(table.contains("by \\u{1b}[31meve\\u{202e} at"), "{table}");
    let header = table.lines().next().unwrap();
    let row = table.lines().nth(1).unwrap();
    assert_eq!(header.find("HOST"), row.find("evil"), "the columns still line up:\n{table}");

    // JSON keeps the values, escaped as JSON.
    let json = ok(&ws, &etcd, &["status", "--json"]);
    assert!(!has_terminal_control(&json), "raw controls in the JSON: {json:?}");
    let parsed: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["instances"][0]["host"], status["host"], "{parsed:#}");
    assert_eq!(parsed["instances"][0]["error"], status["error"], "{parsed:#}");
    let versions = ok(&ws, &etcd, &["versions", "server", "--json"]);
    assert!(!has_terminal_control(&versions), "{versions:?}");
    let versions = ok(&ws, &etcd, &["versions", "server"]);
    assert!(!has_terminal_control(&versions), "{versions:?}");
}

/// `relive ARGS` in `ws` with `env`, to completion (bounded).
fn run_env(ws: &Ws, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = ws.relive(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn relive");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    Run(rx.recv_timeout(TIMEOUT).unwrap_or_else(|_| panic!("relive {args:?} did not finish")).expect("output"))
}

/// The README's "A secured cluster", step by step: its certificate script
/// run as written, etcd with TLS and client certificates, authentication
/// on, `relive fleet roles`, a push as the operator, an agent as its
/// instance, and who wrote what in `status` and `versions`.
#[test]
fn a_secured_cluster_as_the_readme_sets_it_up() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let section = readme.split("### A secured cluster").nth(1).expect("the README's section");
    let script = section.split("```sh\n").nth(1).unwrap().split("\netcd ").next().unwrap();
    assert!(script.contains("openssl x509 -req"), "{script}");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("sh").arg("-ec").arg(script).current_dir(dir.path()).output().unwrap();
    assert!(out.status.success(), "the README's certificates: {}", String::from_utf8_lossy(&out.stderr));
    let pki = etcd::Pki::at(dir);
    let etcd = Etcd::start_tls(&pki, &[]);
    // etcdctl user add root, grant-role root root, auth enable.
    tokio::runtime::Runtime::new().unwrap().block_on(etcd.enable_auth());

    let ws = Ws::new();
    ws.write("server.toml", "port = 1\n");
    let file = |name: &str| pki.dir().join(name).to_str().unwrap().to_string();
    let (ca, endpoint) = (file("ca.crt"), etcd.endpoint());
    let common =
        [("RELIVE_FLEET_PREFIX", "shop"), ("RELIVE_ETCD_ENDPOINTS", endpoint.as_str()), ("RELIVE_ETCD_CACERT", &ca)];
    let (root_crt, root_key) = (file("root.crt"), file("root.key"));
    let roles = run_env(
        &ws,
        &["fleet", "roles", "--cert", &root_crt, "--key", &root_key, "--operator", "alice", "--instance", "web-1"],
        &common,
    );
    assert_eq!(roles.code(), 0, "{}{}", roles.stdout(), roles.stderr());
    let out = roles.stdout();
    assert!(out.contains("role shop-operator: reads and writes configs/, canary/ and rollout/"), "{out}");
    assert!(
        out.contains("role shop-instance-web-1: reads canary/ and configs/; writes instances/web-1/ only"),
        "{out}"
    );
    assert!(out.contains("user alice: created") && out.contains("user shop-instance-web-1: created"), "{out}");

    let (alice_crt, alice_key) = (file("alice.crt"), file("alice.key"));
    let mut as_alice = common.to_vec();
    as_alice.extend([("RELIVE_ETCD_CERT", alice_crt.as_str()), ("RELIVE_ETCD_KEY", alice_key.as_str())]);
    let pushed = run_env(&ws, &["fleet", "push", "server", "server.toml", "--expect", "0"], &as_alice);
    assert_eq!(pushed.code(), 0, "{}{}", pushed.stdout(), pushed.stderr());
    let v1 = version_in(&pushed.stdout());

    // The agent, as its instance's user.
    let agent_dir = tempfile::tempdir().unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let (web_crt, web_key) = (file("shop-instance-web-1.crt"), file("shop-instance-web-1.key"));
    let mut cmd = ws.relive(&[
        "fleet",
        "agent",
        agent_dir.path().to_str().unwrap(),
        "--instance",
        "web-1",
        "--cert",
        &web_crt,
        "--key",
        &web_key,
    ]);
    for (k, v) in &as_alice {
        cmd.env(k, v);
    }
    let child = cmd.stdin(Stdio::null()).stdout(log.reopen().unwrap()).stderr(log.reopen().unwrap()).spawn().unwrap();
    let mut agent = AgentProc { child: Some(child), log };
    let written = agent_dir.path().join("config/server.toml");
    wait_until("the agent writes server.toml", || std::fs::read_to_string(&written).is_ok_and(|t| t == "port = 1\n"));

    let status = run_env(&ws, &["fleet", "status"], &as_alice);
    assert_eq!(status.code(), 0, "{}", status.stderr());
    assert!(status.stdout().contains(&format!("server version {v1} by O=shop,CN=alice@")), "{}", status.stdout());
    let versions = run_env(&ws, &["fleet", "versions", "server"], &as_alice);
    let text = versions.stdout();
    assert!(text.lines().next().unwrap().contains("BY") && text.contains("O=shop,CN=alice@"), "{text}");

    // The instance's certificate cannot push.
    let mut as_web = common.to_vec();
    as_web.extend([("RELIVE_ETCD_CERT", web_crt.as_str()), ("RELIVE_ETCD_KEY", web_key.as_str())]);
    ws.write("server2.toml", "port = 2\n");
    let refused = run_env(&ws, &["fleet", "push", "server", "server2.toml", "--force"], &as_web);
    assert_eq!(refused.code(), 3, "{}", refused.stderr());
    assert!(
        refused.stderr().contains("permission denied") && refused.stderr().contains("relive fleet roles"),
        "{}",
        refused.stderr()
    );
    assert_eq!(agent.terminate(), 0, "{}", agent.log());
}

/// A password goes in clear to another machine only with
/// --insecure-plaintext, and never comes from an argument.
#[test]
fn a_password_in_clear_to_another_machine_needs_insecure_plaintext() {
    let ws = Ws::new();
    let args = ["fleet", "--endpoints", "http://192.0.2.1:2379", "--prefix", "shop", "--user", "bob", "status"];
    let run = run_env(&ws, &args, &[("RELIVE_ETCD_PASSWORD", "s3cret")]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(
        run.stderr().contains("in clear to http://192.0.2.1:2379") && run.stderr().contains("--insecure-plaintext"),
        "{}",
        run.stderr()
    );
    assert!(!run.stderr().contains("s3cret"));
    let run = run_env(&ws, &args, &[]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(run.stderr().contains("--password-file FILE or set RELIVE_ETCD_PASSWORD"), "{}", run.stderr());
    let mut insist = args.to_vec();
    insist.splice(1..1, ["--insecure-plaintext", "--timeout-ms", "300"]);
    let run = run_env(&ws, &insist, &[("RELIVE_ETCD_PASSWORD", "s3cret")]);
    assert_eq!(run.code(), 3, "tried, and nobody answered: {}", run.stderr());
}

#[test]
fn a_hostile_document_put_straight_into_etcd_is_one_rejection_per_agent_and_the_agent_lives() {
    // Past `relive fleet push` (which checks locally): an alias bomb, deep
    // nesting and a 9 MiB document put with a plain etcd put. Before the
    // limits, the alias bomb killed every agent, at each restart too.
    let etcd = Etcd::start_with(&[etcd::LARGE_REQUESTS]);
    let ws = Ws::new();
    ws.write("server.toml", "port = 1\n");
    let mut applied = version_in(&ok(&ws, &etcd, &["push", "server", "server.toml"]));
    let site = Ws::new();
    let mut agent = AgentProc::start(&ws, &etcd, site.root(), "web-1");
    wait_row(&ws, &etcd, "web-1", applied, "SYNCED");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = relive_fleet::Layout::new(PREFIX).unwrap().config_key("server").unwrap();
    let put = |format: relive::Format, document: &[u8]| -> u64 {
        let value = relive_fleet::layout::encode_config(format, document);
        rt.block_on(async {
            let mut client = etcd.client().await;
            client.put(key.clone(), value, None).await.expect("put").header().unwrap().revision() as u64
        })
    };
    for (n, (limit, format, document)) in etcd::hostile_documents().into_iter().enumerate() {
        let version = put(format, &document);
        let row = wait_row(&ws, &etcd, "web-1", applied, "REJECTED");
        assert_eq!(row["target"].as_u64(), Some(version), "{limit}: {row}");
        let error = row["error"].as_str().unwrap_or_default();
        assert!(error.contains(limit) && error.len() < 1000, "{limit}: {row}");
        let child = agent.child.as_mut().unwrap();
        assert!(child.try_wait().unwrap().is_none(), "{limit}: the agent died: {}", agent.log());
        assert_eq!(site.read("config/server.toml"), format!("port = {}\n", n + 1), "{limit}: the file is left alone");

        let port = n + 2;
        applied = put(relive::Format::Toml, format!("port = {port}\n").as_bytes());
        wait_row(&ws, &etcd, "web-1", applied, "SYNCED");
        assert_eq!(site.read("config/server.toml"), format!("port = {port}\n"), "{limit}: the next good push applies");
    }
    assert_eq!(agent.terminate(), 0, "{}", agent.log());
}

#[test]
fn status_check_fails_while_an_instance_is_stale_or_rejected() {
    let etcd = Etcd::start();
    let ws = Ws::new();
    ws.write("server.toml", "port = 1\n");
    let v1 = version_in(&ok(&ws, &etcd, &["push", "server", "server.toml"]));
    let layout = relive_fleet::Layout::new(PREFIX).unwrap();
    let put_status = |version: u64, applied: Option<u64>, state: &str| {
        let status = serde_json::json!({
            "instance": "web-1", "host": "h", "config": "server", "version": version,
            "applied_version": applied, "state": state, "error": null, "at": "2026-01-01T00:00:00Z",
        });
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let mut client = etcd.client().await;
            client.put(layout.status_key("web-1", "server").unwrap(), status.to_string(), None).await.unwrap();
        });
    };
    // In sync: --check passes.
    put_status(v1, Some(v1), "applied");
    assert_eq!(fleet(&ws, &etcd, &["status", "--check"]).code(), 0);
    // A new version nobody answered yet: STALE.
    ws.write("server.toml", "port = 2\n");
    let v2 = version_in(&ok(&ws, &etcd, &["push", "server", "server.toml", "--expect", &v1.to_string()]));
    let run = fleet(&ws, &etcd, &["status", "--check"]);
    assert_eq!(run.code(), 1, "{}{}", run.stdout(), run.stderr());
    assert!(
        run.stdout().contains("STALE") && run.stderr().contains("1 instance(s) REJECTED or STALE"),
        "{}",
        run.stderr()
    );
    assert_eq!(fleet(&ws, &etcd, &["status"]).code(), 0, "without --check, status only shows");
    // Rejected: fails too, in JSON as well.
    put_status(v2, Some(v1), "rejected");
    assert_eq!(fleet(&ws, &etcd, &["status", "--check", "--json"]).code(), 1);
    put_status(v2, Some(v2), "applied");
    assert_eq!(fleet(&ws, &etcd, &["status", "--check"]).code(), 0);
}

/// Agents `web-1`..`web-N` (with `labels[i]`, if any) on config `server` at
/// `port = 1`; returns them, their directories and the version.
fn agents_on_v1(ws: &Ws, etcd: &Etcd, labels: &[&str]) -> (Vec<AgentProc>, Vec<tempfile::TempDir>, u64) {
    ws.write("server.toml", "port = 1\n");
    let v1 = version_in(&ok(ws, etcd, &["push", "server", "server.toml"]));
    let (mut agents, mut dirs) = (Vec::new(), Vec::new());
    for (i, label) in labels.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let id = format!("web-{}", i + 1);
        let extra: Vec<&str> = if label.is_empty() { vec![] } else { vec!["--label", label] };
        agents.push(AgentProc::start_with(ws, etcd, dir.path(), &id, &extra));
        dirs.push(dir);
    }
    for i in 0..labels.len() {
        wait_row(ws, etcd, &format!("web-{}", i + 1), v1, "SYNCED");
    }
    (agents, dirs, v1)
}

/// The words of a shell command line: split at blanks outside single
/// quotes (all the README's examples need).
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.chars() {
        match c {
            '\'' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// An HTTP server on 127.0.0.1:0 that answers 200 to everything; counts
/// the requests.
fn healthz() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
        }
    });
    (port, hits)
}

fn rollout_json(ws: &Ws, etcd: &Etcd) -> Value {
    serde_json::from_str(&ok(ws, etcd, &["rollout", "status", "server", "--json"])).expect("rollout status --json")
}

/// Whether a rollout of `server` exists and bakes.
fn baking(ws: &Ws, etcd: &Etcd) -> bool {
    let run = fleet(ws, etcd, &["rollout", "status", "server", "--json"]);
    run.code() == 0 && serde_json::from_str::<Value>(&run.stdout()).unwrap()["phase"] == "baking"
}

/// A `relive fleet push --waves ...` running as a child, its output in a
/// file.
fn spawn_fleet(ws: &Ws, etcd: &Etcd, args: &[&str]) -> (Child, tempfile::NamedTempFile) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let endpoint = etcd.endpoint();
    let mut all = vec!["fleet", "--endpoints", endpoint.as_str(), "--prefix", PREFIX];
    all.extend_from_slice(args);
    let child = ws
        .relive(&all)
        .stdin(Stdio::null())
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    (child, log)
}

/// Waits for a child to exit; its code.
fn exit_code(child: &mut Child, log: &tempfile::NamedTempFile) -> i32 {
    let deadline = Instant::now() + TIMEOUT * 2;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        let log = std::fs::read_to_string(log.path()).unwrap_or_default();
        assert!(Instant::now() < deadline, "the command did not end: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The README's "Progressive rollouts", as written, with a 1 s bake: agents
/// with labels, a push in label and percent waves with a curl gate, then
/// the rollout's status.
#[test]
fn a_progressive_rollout_as_the_readme_runs_it() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let section = readme.split("### Progressive rollouts").nth(1).expect("the README's section");
    let script = section.split("```sh\n").nth(1).unwrap().split("```").next().unwrap().replace("\\\n", " ");
    let line = |start: &str| {
        let line = script.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("{start} in {script}"));
        shell_words(line.split(" #").next().unwrap())
    };
    let agent = line("relive fleet agent");
    assert_eq!(agent[agent.len() - 2..], ["--label", "zone=a"]);
    let push = line("relive fleet push");

    let etcd = Etcd::start();
    let ws = Ws::new();
    let (_agents, dirs, v1) = agents_on_v1(&ws, &etcd, &["zone=a", "zone=a", "zone=b", "zone=b"]);
    let (port, hits) = healthz();
    ws.write("server.toml", "port = 2\n");
    let v1 = v1.to_string();
    let args: Vec<String> = push[2..]
        .iter()
        .map(|w| match w.as_str() {
            "42" => v1.clone(),
            "5m" => "1s".to_string(),
            w => w.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}")),
        })
        .collect();
    assert!(args.contains(&"zone=a,50%,100%".to_string()) && args.contains(&"--gate".to_string()), "{args:?}");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(&ws, &etcd, &args);
    assert!(out.contains("wave 1/3 (zone=a): 2 instances: web-1, web-2"), "{out}");
    assert!(out.contains("wave 2/3 (50%): 2 instances: web-1, web-2"), "{out}");
    assert!(out.contains("wave 3/3 (100%): 4 instances: web-1, web-2, web-3, web-4"), "{out}");
    assert!(out.contains("done: server promoted to every instance as version"), "{out}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 3, "the gate ran after each bake");
    for dir in &dirs {
        let file = dir.path().join("config/server.toml");
        wait_until("every agent writes the new version", || {
            std::fs::read_to_string(&file).is_ok_and(|t| t == "port = 2\n")
        });
    }
    let status = ok(&ws, &etcd, &line("relive fleet rollout")[2..].iter().map(String::as_str).collect::<Vec<_>>());
    assert!(status.starts_with("rollout of server: done") && status.contains("promoted   version"), "{status}");
    assert_eq!(rollout_json(&ws, &etcd)["phase"], "done");
}

/// The driving process is killed (SIGKILL) while a wave bakes; a second
/// rollout is refused meanwhile; `rollout resume` from another process
/// finishes it.
#[test]
fn a_rollout_whose_driver_is_killed_mid_bake_is_resumed_from_another_process() {
    let etcd = Etcd::start();
    let ws = Ws::new();
    let (_agents, _dirs, v1) = agents_on_v1(&ws, &etcd, &["", "", ""]);
    ws.write("server.toml", "port = 2\n");
    let v1 = v1.to_string();
    let push = ["push", "server", "server.toml", "--expect", &v1, "--waves", "1,100%", "--bake", "5s"];
    let (mut driver, log) = spawn_fleet(&ws, &etcd, &push);
    wait_until("the first wave to bake", || baking(&ws, &etcd));
    driver.kill().unwrap();
    driver.wait().unwrap();
    let baking = rollout_json(&ws, &etcd);
    assert_eq!((baking["phase"].as_str(), baking["wave"].as_u64()), (Some("baking"), Some(0)), "{baking:#}");

    let second = fleet(&ws, &etcd, &push);
    assert_eq!(second.code(), 4, "{}{}", second.stdout(), second.stderr());
    assert!(second.stderr().contains("a rollout of server is in progress (wave 1 of 2"), "{}", second.stderr());

    let resumed = fleet(&ws, &etcd, &["rollout", "resume", "server"]);
    let out = resumed.stdout();
    assert_eq!(
        resumed.code(),
        0,
        "{out}{}\nfirst driver: {}",
        resumed.stderr(),
        std::fs::read_to_string(log.path()).unwrap()
    );
    assert!(out.contains("resuming the rollout of server: wave 1/2 (1) baking"), "{out}");
    assert!(out.contains("wave 2/2 (100%): 3 instances") && out.contains("done: server promoted"), "{out}");
    let version = rollout_json(&ws, &etcd)["version"].as_u64().unwrap();
    for id in ["web-1", "web-2", "web-3"] {
        wait_row(&ws, &etcd, id, version, "SYNCED");
    }
}

/// The gate's time limit is the plan's, kept in etcd: a rollout started
/// with `--gate-timeout 1s` and resumed by another process stops when its
/// gate runs past 1 s (the resuming process used to give it 60 s, and a
/// gate that hangs for 30 s then passed).
#[test]
fn a_resumed_rollout_runs_its_gate_with_the_time_limit_it_was_started_with() {
    let etcd = Etcd::start();
    let ws = Ws::new();
    let (_agents, _dirs, v1) = agents_on_v1(&ws, &etcd, &["", ""]);
    ws.write("server.toml", "port = 2\n");
    let v1 = v1.to_string();
    let push = [
        "push",
        "server",
        "server.toml",
        "--expect",
        &v1,
        "--waves",
        "1,100%",
        "--bake",
        "3s",
        "--gate",
        "sleep 30",
        "--gate-timeout",
        "1s",
    ];
    let (mut driver, _log) = spawn_fleet(&ws, &etcd, &push);
    wait_until("the first wave to bake", || baking(&ws, &etcd));
    driver.kill().unwrap();
    driver.wait().unwrap();
    assert_eq!(rollout_json(&ws, &etcd)["plan"]["gate_timeout_ms"], 1000);

    let resumed = fleet(&ws, &etcd, &["rollout", "resume", "server"]);
    assert_eq!(resumed.code(), 1, "{}{}", resumed.stdout(), resumed.stderr());
    let reason = "the gate failed after wave 1: no exit within 1s";
    assert!(resumed.stderr().contains(reason), "{}", resumed.stderr());
    assert_eq!(rollout_json(&ws, &etcd)["phase"], "stopped");
}

/// A gate that fails stops the rollout: push exits 1 with the reason, every
/// instance is back on the stable version saying why, and what the gate
/// printed is nowhere in etcd.
#[test]
fn a_failing_gate_stops_the_rollout_and_its_output_stays_out_of_etcd() {
    let etcd = Etcd::start();
    let ws = Ws::new();
    let (_agents, _dirs, v1) = agents_on_v1(&ws, &etcd, &["", ""]);
    ws.write("token.txt", "s3cr3t-t0ken\n");
    ws.write("server.toml", "port = 2\n");
    let v1s = v1.to_string();
    let run = fleet(
        &ws,
        &etcd,
        &[
            "push",
            "server",
            "server.toml",
            "--expect",
            &v1s,
            "--waves",
            "1,100%",
            "--bake",
            "200ms",
            "--gate",
            "cat token.txt; exit 3",
        ],
    );
    assert_eq!(run.code(), 1, "{}{}", run.stdout(), run.stderr());
    let reason = "the gate failed after wave 1: exit status: 3";
    assert!(run.stderr().contains(&format!("the rollout of server stopped: {reason}")), "{}", run.stderr());
    assert!(run.stderr().contains("gate stdout: s3cr3t-t0ken"), "shown to the operator: {}", run.stderr());
    let state = rollout_json(&ws, &etcd);
    assert_eq!((state["phase"].as_str(), state["settled"].as_bool()), (Some("stopped"), Some(true)));
    for id in ["web-1", "web-2"] {
        wait_row(&ws, &etcd, id, v1, "SYNCED");
    }
    let first = &state["instances"][0][0];
    let row = wait_row(&ws, &etcd, first.as_str().unwrap(), v1, "SYNCED");
    assert_eq!(row["error"], format!("rollout aborted: {reason}"));
    let dump = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut client = etcd.client().await;
        let all = client.get("", Some(etcd_client::GetOptions::new().with_all_keys())).await.unwrap();
        all.kvs().iter().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()).collect::<Vec<_>>().join("\n")
    });
    assert!(!dump.contains("s3cr3t"), "the gate's output reached etcd");
}

/// `--max-rejected`: with the default (0), one instance of wave 1 that
/// rejects the version stops the rollout and everyone returns to stable;
/// with `--max-rejected 1` the same rejection is let through and the
/// version is promoted, the rejecting instance staying on the old one.
#[test]
fn max_rejected_decides_how_many_rejections_a_rollout_lets_through() {
    let etcd = Etcd::start();
    let ws = Ws::new();
    let (_agents, _dirs, v1) = agents_on_v1(&ws, &etcd, &["zone=a", "zone=b"]);
    // A service in zone a whose stream refuses `port = 2`.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let service = Ws::new();
    let (_source, _stream) = rt.block_on(async {
        let w = relive::Workspace::new(service.root());
        let source =
            etcd::source(&etcd.endpoint(), PREFIX, "picky").label("zone", "a").unwrap().start(&w).await.unwrap();
        let stream = w
            .config::<Value>("server")
            .validate(|v: &Value| {
                if v["port"] == 2 { Err(relive::ValidationError::at("port", "2 is not allowed here")) } else { Ok(()) }
            })
            .watch()
            .await
            .unwrap();
        (source, stream)
    });
    wait_row(&ws, &etcd, "picky", v1, "SYNCED");
    ws.write("server.toml", "port = 2\n");
    let v1s = v1.to_string();
    let push = |max: &str| {
        let args = ["push", "server", "server.toml", "--expect", &v1s, "--waves", "zone=a,100%", "--bake", "200ms"];
        let mut args = args.to_vec();
        if !max.is_empty() {
            args.extend(["--max-rejected", max]);
        }
        fleet(&ws, &etcd, &args)
    };

    let run = push("");
    assert_eq!(run.code(), 1, "{}{}", run.stdout(), run.stderr());
    let why = "picky rejected version";
    assert!(run.stderr().contains(why) && run.stderr().contains("(at most 0 may) during wave 1"), "{}", run.stderr());
    assert!(run.stderr().contains("2 is not allowed here"), "{}", run.stderr());
    for id in ["web-1", "web-2", "picky"] {
        wait_row(&ws, &etcd, id, v1, "SYNCED");
    }

    let run = push("1");
    assert_eq!(run.code(), 0, "{}{}", run.stdout(), run.stderr());
    let out = run.stdout();
    let done = "done: server promoted to every instance as version ";
    let v2: u64 = out
        .split(done)
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| panic!("{done}N in: {out}"));
    for id in ["web-1", "web-2"] {
        wait_row(&ws, &etcd, id, v2, "SYNCED");
    }
    let row = wait_row(&ws, &etcd, "picky", v1, "REJECTED");
    assert_eq!(row["target"].as_u64(), Some(v2));
}

/// `relive fleet rollout abort` from another process: the driving push
/// exits 1 saying who aborted it, and the abort exits 0.
#[test]
fn rollout_abort_returns_the_instances_and_ends_the_driver() {
    let etcd = Etcd::start();
    let ws = Ws::new();
    let (_agents, _dirs, v1) = agents_on_v1(&ws, &etcd, &["", ""]);
    ws.write("server.toml", "port = 2\n");
    let v1s = v1.to_string();
    let (mut driver, log) = spawn_fleet(
        &ws,
        &etcd,
        &["push", "server", "server.toml", "--expect", &v1s, "--waves", "1,100%", "--bake", "10m"],
    );
    wait_until("the first wave to bake", || baking(&ws, &etcd));
    let status = fleet(&ws, &etcd, &["status", "server"]);
    assert!(status.stderr().contains("rollout of server: wave 1/2 (1) baking"), "{}", status.stderr());
    let abort = fleet(&ws, &etcd, &["rollout", "abort", "server"]);
    assert_eq!(abort.code(), 0, "{}{}", abort.stdout(), abort.stderr());
    assert!(abort.stdout().contains("aborted the rollout of server"), "{}", abort.stdout());
    assert_eq!(exit_code(&mut driver, &log), 1);
    let out = std::fs::read_to_string(log.path()).unwrap();
    assert!(out.contains("the rollout of server was aborted: aborted by"), "{out}");
    for id in ["web-1", "web-2"] {
        wait_row(&ws, &etcd, id, v1, "SYNCED");
    }
    assert_eq!(rollout_json(&ws, &etcd)["phase"], "aborted");
}

/// The README's "Fleet change sets" commands, the n-th (from 0), with its
/// version 52 replaced by `rev` and its 60 s wait by 30 s.
fn readme_set_command(n: usize, rev: u64) -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let section = readme.split("### Fleet change sets").nth(1).expect("the README's section");
    let script = section.split("```sh\n").nth(1).unwrap().split("```").next().unwrap();
    let line = script.lines().filter(|l| l.starts_with("relive fleet push --set")).nth(n).expect("the command");
    shell_words(line.split(" #").next().unwrap())[2..]
        .iter()
        .map(|w| match w.as_str() {
            "52" => rev.to_string(),
            "60" => "30".to_string(),
            w => w.to_string(),
        })
        .collect()
}

/// `relive fleet push --set DIR`, as the README runs it: every config under
/// DIR in one transaction, one version for all; an instance that refuses
/// one member refuses the set, and `--wait` says so for both; CAS on each
/// config.
#[test]
fn push_set_publishes_a_directory_as_one_version_applied_whole() {
    let etcd = Etcd::start();
    let ws = Ws::new();
    ws.write("deploy/server.toml", "port = 2000\nworkers = 1\n");
    ws.write("deploy/net/proxy.yaml", "target_port: 2000\n");
    ws.write("deploy/server.schema.json", r#"{"properties": {"port": {"type": "integer", "maximum": 65535}}}"#);
    let first = readme_set_command(0, 0);
    assert_eq!(first, ["push", "--set", "deploy/"]);
    let out = ok(&ws, &etcd, &first.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.starts_with("pushed a change set of 2 configs: version "), "{out}");
    let v1 = version_in(&out);
    assert!(out.contains(&format!("pushed net/proxy: version {v1} (new)")), "{out}");
    assert!(out.contains(&format!("pushed server: version {v1} (new)")), "{out}");

    // A service whose stream refuses `workers = 0`.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let service = Ws::new();
    let (_source, _stream) = rt.block_on(async {
        let w = relive::Workspace::new(service.root());
        let source = etcd::source(&etcd.endpoint(), PREFIX, "service").start(&w).await.unwrap();
        let stream = w
            .config::<Value>("server")
            .validate(|v: &Value| {
                if v["workers"] == 0 {
                    Err(relive::ValidationError::at("workers", "must be at least 1"))
                } else {
                    Ok(())
                }
            })
            .watch()
            .await
            .unwrap();
        (source, stream)
    });
    wait_row(&ws, &etcd, "service", v1, "SYNCED");

    // The schema beside a file is checked; nothing is sent.
    ws.write("deploy/server.toml", "port = 70000\nworkers = 1\n");
    let run = fleet(&ws, &etcd, &["push", "--set", "deploy", "--expect", &v1.to_string()]);
    assert_eq!(run.code(), 1, "{}{}", run.stdout(), run.stderr());
    assert!(run.stdout().contains("server.toml:1:1: 70000 is greater than"), "{}", run.stdout());

    // One member the service refuses: the set is refused there, both
    // configs say so, and the proxy's reason names the server.
    ws.write("deploy/server.toml", "port = 3000\nworkers = 0\n");
    ws.write("deploy/net/proxy.yaml", "target_port: 3000\n");
    let run = fleet(&ws, &etcd, &["push", "--set", "deploy", "--expect", &v1.to_string(), "--wait", "30"]);
    assert_eq!(run.code(), 1, "{}{}", run.stdout(), run.stderr());
    let v2 = version_in(&run.stdout());
    let err = run.stderr();
    assert!(
        err.contains(&format!("service rejected server version {v2}: ")) && err.contains("must be at least 1"),
        "{err}"
    );
    assert!(err.contains(&format!("service rejected net/proxy version {v2}: not applied: server")), "{err}");

    // Compare-and-set on each config: a stale --expect writes nothing.
    ws.write("deploy/server.toml", "port = 3000\nworkers = 3\n");
    let run = fleet(&ws, &etcd, &["push", "--set", "deploy", "--expect", &v1.to_string()]);
    assert_eq!(run.code(), 4, "{}{}", run.stdout(), run.stderr());
    let second = readme_set_command(1, v2);
    assert!(second.contains(&"--wait".to_string()), "{second:?}");
    let out = ok(&ws, &etcd, &second.iter().map(String::as_str).collect::<Vec<_>>());
    let v3 = version_in(&out);
    assert!(out.contains(&format!("server version {v3}: 1 applied, 0 rejected")), "{out}");
    // The proxy's document did not change, but it is in the set again: the
    // service that refused the last set gets both, not a mix.
    assert!(out.contains(&format!("net/proxy version {v3}: 1 applied, 0 rejected")), "{out}");
    let row = wait_row(&ws, &etcd, "service", v3, "SYNCED");
    assert_eq!(row["error"], Value::Null, "{row}");

    // A new member: --expect-each gives its version (0: new).
    ws.write("deploy/cache.json", r#"{"size": 10}"#);
    let run = fleet(&ws, &etcd, &["push", "--set", "deploy", "--expect", &v3.to_string()]);
    assert_eq!(run.code(), 4, "cache is not at {v3}: {}{}", run.stdout(), run.stderr());
    let third = readme_set_command(2, v3);
    assert!(third.ends_with(&["--expect-each".to_string(), "cache=0".to_string()]), "{third:?}");
    let out = ok(&ws, &etcd, &third.iter().map(String::as_str).collect::<Vec<_>>());
    let v4 = version_in(&out);
    assert!(out.contains(&format!("pushed cache: version {v4} (new)")), "{out}");
    assert!(out.contains(&format!("pushed server: version {v4} (was {v3})")), "{out}");
    let run = fleet(&ws, &etcd, &["push", "--set", "deploy", "--expect-each", "nope=1"]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(run.stderr().contains("nope is not in deploy"), "{}", run.stderr());

    let run = fleet(&ws, &etcd, &["push", "server", "deploy/server.toml", "--set", "deploy"]);
    assert_eq!(run.code(), 2, "NAME FILE and --set are one or the other");
}
