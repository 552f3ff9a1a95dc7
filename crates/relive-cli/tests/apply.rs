//! `relive apply SRC_DIR`: a directory of configs installed as one change
//! set, seen so by a running `relive watch`; checked whole before anything
//! is written.

// Unix only: the tests check modes and owners kept, symlinks and FIFOs in
// SRC_DIR, and the shared helpers signal `relive watch` children.
#![cfg(unix)]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::Ws;
use serde_json::{Value, json};

fn put(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// Every file under `config/`, relative, sorted: what a failed apply must
/// leave as it was (no temp file either).
fn listing(ws: &Ws) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![ws.path("config")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(ws.root()).unwrap().display().to_string();
                out.push((rel, fs::read_to_string(&path).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn apply_of_two_configs_is_one_change_set_for_a_running_watch_over_twenty_rounds() {
    let ws = Ws::new();
    ws.write("config/a.toml", "round = 1\n");
    ws.write("config/b.toml", "round = 1\n");
    let mut watch = ws.watch(&[]);
    let src = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for n in 2..=21 {
        put(src.path(), "a.toml", &format!("round = {n}\n"));
        put(src.path(), "b.toml", &format!("round = {n}\n"));
        let from = watch.stdout_seen.len();
        let run = ws.run(&["apply", src.path().to_str().unwrap()]);
        assert_eq!(run.code(), 0, "{}", run.stderr());
        let set = watch.wait_event(|e| e["kind"] == "change_set_applied");
        let mut configs: Vec<&str> = set["configs"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        configs.sort();
        assert_eq!(
            configs,
            ["a", "b"],
            "round {n}: both configs in one change set, never one alone: {:#?} {}",
            &watch.stdout_seen[from..],
            run.stderr()
        );
        // Everything the watcher said since the apply began: both values
        // of this round, nothing of a mix, no rejection.
        let events: Vec<Value> = watch.stdout_seen[from..].iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        let changed: Vec<&Value> = events.iter().filter(|e| e["kind"] == "config_changed").collect();
        assert_eq!(changed.len(), 2, "round {n}: {events:#?}");
        assert!(changed.iter().all(|e| e["new"]["round"] == n), "round {n}: {events:#?}");
        assert!(events.iter().all(|e| e["kind"] != "validation_failed"), "round {n}: {events:#?}");
        let id = set["change_set"].as_str().unwrap().to_string();
        assert!(run.stderr().contains(&format!("applied as change set {id}")), "{}", run.stderr());
        ids.push(id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 20, "one change set per round");

    // The history agrees: each round is one version of each config, with
    // the round's id.
    let run = ws.run(&["history", "--json", "--limit", "20"]);
    let sets: Vec<Value> = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(sets.len(), 20);
    for (set, id) in sets.iter().zip(ids.iter().rev()) {
        assert_eq!((&set["id"], &set["configs"]), (&json!(id), &json!(["a", "b"])), "{set:#}");
    }
    assert_eq!(watch.terminate(), 0);
}

#[test]
fn apply_with_one_broken_file_writes_nothing() {
    let ws = Ws::new();
    ws.write("config/a.toml", "round = 1\n");
    ws.write("config/b.toml", "round = 1\n");
    let before = listing(&ws);
    let src = tempfile::tempdir().unwrap();
    put(src.path(), "a.toml", "round = 2\n");
    put(src.path(), "b.toml", "round = \n");
    put(src.path(), "new.yaml", "round: 2\n");
    let run = ws.run(&["apply", src.path().to_str().unwrap()]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    let b = src.path().join("b.toml");
    assert!(
        run.stderr().contains(&format!("{}:1:9: ", b.display())),
        "located at the file, line and column: {}",
        run.stderr()
    );
    assert!(run.stderr().contains("nothing was written"), "{}", run.stderr());
    assert_eq!(listing(&ws), before, "nothing written, no temp file left");
}

#[test]
fn hostile_entries_of_the_source_are_refused_and_nothing_is_written() {
    let ws = Ws::new();
    ws.write("config/a.toml", "round = 1\n");
    let before = listing(&ws);
    let outside = tempfile::tempdir().unwrap();
    put(outside.path(), "secret.toml", "password = \"hunter2\"\n");
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    put(s, "a.toml", "round = 2\n");
    std::os::unix::fs::symlink(outside.path().join("secret.toml"), s.join("leak.toml")).unwrap();
    std::os::unix::fs::symlink(s.join("missing.toml"), s.join("dangling.toml")).unwrap();
    let status = std::process::Command::new("mkfifo").arg(s.join("fifo.toml")).status().unwrap();
    assert!(status.success());
    put(s, "notes.txt", "not a config\n");
    put(s, "app.toml.bak", "round = 0\n");
    // Deeper than the default limits: refused by the parser's budget, not
    // by a stack overflow.
    put(s, "deep.json", &format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)));
    let run = ws.run(&["apply", s.to_str().unwrap()]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    let err = run.stderr();
    for name in ["leak.toml", "dangling.toml", "fifo.toml", "notes.txt", "app.toml.bak", "deep.json"] {
        assert!(err.contains(&format!("{}:", s.join(name).display())), "{name} is refused by name: {err}");
    }
    assert!(err.contains("outside the source directory") && err.contains("not a regular file"), "{err}");
    assert!(!err.contains("hunter2"), "never quotes what a link points at: {err}");
    assert!(err.contains("6 problem(s) found; nothing was written"), "{err}");
    assert_eq!(listing(&ws), before);
}

#[test]
fn apply_keeps_modes_and_owners_makes_new_files_private_and_deletes_only_when_asked() {
    const NOBODY: u32 = 65534;
    let ws = Ws::new();
    ws.write("config/a.toml", "round = 1\n");
    ws.write("config/old.toml", "round = 1\n");
    let a = ws.path("config/a.toml");
    fs::set_permissions(&a, fs::Permissions::from_mode(0o640)).unwrap();
    // CI runs as root: the file belongs to someone else, and keeps its
    // owner. As another user, only the mode can be checked.
    let root = rustix::process::geteuid().is_root();
    if root {
        std::os::unix::fs::chown(&a, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let owner = |path: &Path| {
        let meta = fs::symlink_metadata(path).unwrap();
        (meta.mode() & 0o7777, meta.uid(), meta.gid())
    };
    let a_before = owner(&a);
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    put(s, "a.toml", "round = 2\n");
    put(s, "db/main.production.yaml", "round: 2\n");
    // A ConfigMap-style source: the visible name links into `..data`
    // inside the directory, which is followed.
    put(s, "..2026_12_01/e.toml", "round = 2\n");
    std::os::unix::fs::symlink("..2026_12_01", s.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/e.toml", s.join("e.toml")).unwrap();

    let before = listing(&ws);
    let run = ws.run(&["apply", "--dry-run", "--delete", s.to_str().unwrap()]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(
        run.stdout(),
        "modify config/a.toml\ncreate config/db/main.production.yaml\ncreate config/e.toml\ndelete config/old.toml\n"
    );
    assert_eq!(listing(&ws), before, "a dry run writes nothing");

    let run = ws.run(&["apply", s.to_str().unwrap()]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(ws.read("config/a.toml"), "round = 2\n");
    assert_eq!(owner(&a), a_before, "mode, owner and group kept");
    let created = ws.path("config/db/main.production.yaml");
    assert_eq!(owner(&created).0, 0o600, "a new file is private");
    assert_eq!(owner(&ws.path("config/db")).0 & 0o777, 0o700, "a new directory too");
    assert!(fs::symlink_metadata(ws.path("config/e.toml")).unwrap().is_file(), "the link's content, not the link");
    assert_eq!(ws.read("config/e.toml"), "round = 2\n");
    assert!(ws.path("config/old.toml").exists(), "left alone without --delete");

    let run = ws.run(&["apply", "--delete", s.to_str().unwrap()]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(run.stdout(), "delete config/old.toml\n");
    assert!(!ws.path("config/old.toml").exists());
    let run = ws.run(&["apply", s.to_str().unwrap()]);
    assert_eq!((run.code(), run.stdout().as_str()), (0, ""), "{}", run.stderr());
}

#[test]
fn a_change_the_watcher_rejects_exits_one_and_names_the_config() {
    let ws = Ws::new();
    ws.write("config/a.toml", "round = 1\n");
    ws.write("config/a.schema.json", r#"{"properties": {"round": {"type": "integer"}}}"#);
    ws.write("config/b.toml", "round = 1\n");
    let mut watch = ws.watch(&[]);
    let src = tempfile::tempdir().unwrap();
    // Each file parses, but `a` breaks its schema: the watcher rejects it.
    put(src.path(), "a.toml", "round = \"two\"\n");
    put(src.path(), "b.toml", "round = 2\n");
    let run = ws.run(&["apply", src.path().to_str().unwrap()]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert!(run.stderr().contains("rejected change set"), "{}", run.stderr());
    assert!(run.stderr().contains("config `a`"), "{}", run.stderr());
    assert!(run.stderr().contains("config/a.toml:1:"), "located: {}", run.stderr());
    watch.wait_kind("validation_failed", "a");
    assert_eq!(ws.read("config/a.toml"), "round = \"two\"\n", "the files stay written");
    assert_eq!(watch.terminate(), 0);
}
