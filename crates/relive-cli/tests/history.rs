//! `relive history`, `show`, `diff` and `rollback` against the history a
//! running `relive watch` records.

// The harness (tests/common) stops relive with SIGTERM and watches its
// processes with kill(2): Unix's. On Windows the CLI is type-checked in CI.
#![cfg(unix)]

mod common;

use common::{Watch, Ws, wait_until};
use serde_json::{Value, json};

/// `relive history NAME --json`, once it has `count` versions.
fn history_with(ws: &Ws, name: &str, count: usize) -> Vec<Value> {
    let mut entries = Vec::new();
    wait_until(&format!("{count} versions of {name}"), || {
        let run = ws.run(&["history", name, "--json"]);
        assert_eq!(run.code(), 0, "{}", run.stderr());
        entries = serde_json::from_str::<Vec<Value>>(&run.stdout()).expect("history JSON");
        entries.len() >= count
    });
    assert_eq!(entries.len(), count, "{entries:#?}");
    entries
}

/// Starts a watcher on `config/app.toml` and makes versions with `port`
/// 1, 2 and 3, the third after a rejected edit.
fn three_versions(ws: &Ws) -> Watch {
    ws.write("config/app.toml", "port = 1\npassword = \"one\"\n");
    let mut watch = ws.watch(&[]);
    ws.write("config/app.toml", "port = 2\npassword = \"two\"\n");
    watch.wait_kind("config_changed", "app");
    ws.write("config/app.toml", "port = \n");
    watch.wait_kind("validation_failed", "app");
    ws.write("config/app.toml", "port = 3\npassword = \"two\"\n");
    watch.wait_kind("config_changed", "app");
    watch
}

#[test]
fn history_lists_a_series_of_edits() {
    let ws = Ws::new();
    let _watch = three_versions(&ws);
    let entries = history_with(&ws, "app", 4);
    let statuses: Vec<&str> = entries.iter().map(|e| e["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["applied", "applied", "rejected", "applied"]);
    let versions: Vec<u64> = entries.iter().map(|e| e["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, [1, 2, 3, 4]);
    assert_eq!(entries[1]["diff"][1], serde_json::json!({"op": "change", "path": "/port", "old": 1, "new": 2}));
    assert_eq!(entries[1]["diff"][0]["old"], "[redacted]", "secrets are redacted in diffs");
    assert_eq!(entries[2]["error"]["line"], 1);
    assert_eq!(entries[2]["error"]["column"], 8);

    let text = ws.run(&["history", "app"]).stdout();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("* 4  ") && lines[0].contains("applied") && lines[0].ends_with("~/port"), "{text}");
    assert!(
        lines[1].starts_with("  3  ")
            && lines[1].contains("rejected")
            && lines[1].ends_with("config/app.toml:1:8: string values must be quoted, expected literal string"),
        "{text}"
    );

    // show: the merged value, redacted; --raw: the file as it was.
    let run = ws.run(&["show", "app", "2"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let value: Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(value, serde_json::json!({"port": 2, "password": "[redacted]"}));
    assert_eq!(ws.run(&["show", "app", "2", "--raw"]).stdout(), "port = 2\npassword = \"two\"\n");
    assert_eq!(ws.run(&["show", "app", "3", "--raw"]).stdout(), "port = \n");

    // diff: from version 1 to the newest applied.
    let run = ws.run(&["diff", "app", "1"]);
    assert_eq!(run.stdout(), "~ /password: \"[redacted]\" -> \"[redacted]\"\n~ /port: 1 -> 3\n");
    assert_eq!(ws.run(&["diff", "app", "2", "4"]).stdout(), "~ /port: 2 -> 3\n");

    let run = ws.run(&["show", "app", "99"]);
    assert_eq!(run.code(), 1);
    let run = ws.run(&["history", "nothing", "--json"]);
    assert_eq!((run.code(), run.stdout().trim()), (0, "[]"));
}

#[test]
fn rollback_is_picked_up_by_a_running_watch() {
    let ws = Ws::new();
    let mut watch = three_versions(&ws);
    history_with(&ws, "app", 4);

    // By default: back to the version before the newest change.
    let run = ws.run(&["rollback", "app"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(run.stderr().contains("rolled back to version 2"), "{}", run.stderr());
    let changed = watch.wait_kind("config_changed", "app");
    assert_eq!(changed["new"]["port"], 2);
    assert_eq!(ws.read("config/app.toml"), "port = 2\npassword = \"two\"\n");
    let entries = history_with(&ws, "app", 5);
    assert_eq!((entries[4]["status"].as_str(), entries[4]["rollback_of"].as_u64()), (Some("applied"), Some(2)));

    // Again: a step further back, not an undo of the rollback.
    let run = ws.run(&["rollback", "app"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let changed = watch.wait_kind("config_changed", "app");
    assert_eq!(changed["new"]["port"], 1);
    let entries = history_with(&ws, "app", 6);
    assert_eq!(entries[5]["rollback_of"], 1);

    // To a chosen version; a rejected or unknown one is refused.
    let run = ws.run(&["rollback", "app", "--to", "4"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(watch.wait_kind("config_changed", "app")["new"]["port"], 3);
    let run = ws.run(&["rollback", "app", "--to", "3"]);
    assert_eq!(run.code(), 1);
    assert!(run.stderr().contains("rejected"), "{}", run.stderr());
    assert_eq!(ws.run(&["rollback", "app", "--to", "99"]).code(), 1);
    assert_eq!(watch.terminate(), 0);
}

#[test]
fn check_records_no_history() {
    let ws = Ws::new();
    ws.write("config/app.toml", "port = 1\n");
    assert_eq!(ws.run(&["check"]).code(), 0);
    assert!(!ws.path("data").exists(), "check must not write to data/");
}

#[test]
fn show_without_a_version_is_the_value_now_with_its_layers_and_the_workspace_s_patterns() {
    let ws = Ws::new();
    // No watcher ever ran here: there is no history, and show still works.
    ws.write(
        "config/pay.toml",
        "port = 1\niban = \"DE89-clear-iban\"\n[db]\nurl = \"postgres://app:pw-in-url@db/main\"\n",
    );
    ws.write("config/pay.prod.toml", "port = 2\n");
    ws.write("relive.toml", "[redact]\npatterns = [\"*iban*\"]\n");
    let run = ws.relive(&["show", "pay", "--json"]).env("RELIVE_ENV", "prod").output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{stderr}");
    let shown: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown["value"]["port"], 2, "the overlay wins: {shown}");
    assert_eq!(shown["value"]["iban"], "[redacted]", "relive.toml's pattern is honoured: {shown}");
    assert_eq!(shown["value"]["db"]["url"], "postgres://app:[redacted]@db/main");
    assert_eq!(shown["layers"]["/port"]["origin"], "config/pay.prod.toml", "{shown}");
    assert_eq!(shown["layers"]["/port"]["line"], 1);
    assert_eq!(shown["layers"]["/db/url"]["origin"], "config/pay.toml");
    assert_eq!(shown["layers"]["/db/url"]["line"], 4);
    for leaked in ["DE89-clear-iban", "pw-in-url"] {
        assert!(!stdout.contains(leaked) && !stderr.contains(leaked), "{leaked}");
    }

    // In text: the value on stdout, where each value came from on stderr.
    let run = ws.relive(&["show", "pay"]).env("RELIVE_ENV", "prod").output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("/port  ← config/pay.prod.toml:1"), "{stderr}");
    assert!(stderr.contains("/iban  ← config/pay.toml:2"), "{stderr}");

    // A broken relive.toml is an error naming it, not silently ignored.
    ws.write("relive.toml", "[redact]\npaterns = [\"x\"]\n");
    let run = ws.run(&["show", "pay"]);
    assert_ne!(run.code(), 0);
    assert!(run.stderr().contains("relive.toml") && run.stderr().contains("paterns"), "{}", run.stderr());
}

/// `relive history --json` without NAME: the change sets, newest first.
fn change_sets(ws: &Ws) -> Vec<Value> {
    let run = ws.run(&["history", "--json"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    serde_json::from_str(&run.stdout()).expect("change sets JSON")
}

/// Starts a watcher on configs `a` and `b` (round 1) and applies round 2
/// of both as one change set; returns the set's id.
fn two_configs_in_one_change_set(ws: &Ws) -> (Watch, String) {
    ws.write("config/a.toml", "round = 1\n");
    ws.write("config/b.toml", "round = 1\n");
    let mut watch = ws.watch(&[]);
    ws.write("src/a.toml", "round = 2\n");
    ws.write("src/b.toml", "round = 2\n");
    let run = ws.run(&["apply", "src"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let set = watch.wait_event(|e| e["kind"] == "change_set_applied");
    (watch, set["change_set"].as_str().unwrap().to_string())
}

#[test]
fn a_change_set_of_two_configs_is_one_group_in_history() {
    let ws = Ws::new();
    let (mut watch, id) = two_configs_in_one_change_set(&ws);
    let sets = change_sets(&ws);
    let newest = &sets[0];
    assert_eq!((&newest["id"], &newest["configs"], &newest["applied"]), (&json!(id), &json!(["a", "b"]), &json!(true)));
    let versions = newest["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "one version per config: {newest:#}");
    for v in versions {
        assert_eq!(v["change_set"], json!(id));
        assert_eq!(v["diff"][0], json!({"op": "change", "path": "/round", "old": 1, "new": 2}));
    }

    // As text: one header for the set, its versions under it.
    let text = ws.run(&["history"]).stdout();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with(&format!("change set {id}  ")) && lines[0].ends_with("  a, b"), "{text}");
    assert!(lines[1].starts_with("  a  ") && lines[1].contains("applied") && lines[1].ends_with("~/round"), "{text}");
    assert!(lines[2].starts_with("  b  ") && lines[2].ends_with("~/round"), "{text}");
    assert!(lines[3].starts_with("change set "), "the next set has a header of its own: {text}");

    // One config's history names the set and its partner.
    let run = ws.run(&["history", "a", "--json"]);
    let entries: Vec<Value> = serde_json::from_str(&run.stdout()).unwrap();
    let last = entries.last().unwrap();
    assert_eq!(last["change_set"], json!(id));
    assert_eq!(last["partners"], json!([{"config": "b", "version": versions[1]["version"]}]));
    let text = ws.run(&["history", "a"]).stdout();
    let first = text.lines().next().unwrap();
    assert!(first.contains(&id) && first.contains("(with b 2)"), "{text}");
    assert_eq!(watch.terminate(), 0);
}

#[test]
fn rollback_by_change_set_restores_both_configs_in_one_change_set() {
    let ws = Ws::new();
    let (mut watch, id) = two_configs_in_one_change_set(&ws);

    // Undo the set: both back to round 1, as one change set.
    let from = watch.stdout_seen.len();
    let run = ws.run(&["rollback", "--change-set", &id]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(run.stderr().contains(&format!("change set {id} undone")), "{}", run.stderr());
    let set = watch.wait_event(|e| e["kind"] == "change_set_applied");
    assert_eq!(set["configs"].as_array().unwrap().len(), 2, "one change set of both: {set}");
    let events: Vec<Value> = watch.stdout_seen[from..].iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let changed: Vec<&Value> = events.iter().filter(|e| e["kind"] == "config_changed").collect();
    assert_eq!(changed.len(), 2, "{events:#?}");
    assert!(changed.iter().all(|e| e["new"]["round"] == 1), "{events:#?}");
    assert_eq!((ws.read("config/a.toml"), ws.read("config/b.toml")), ("round = 1\n".into(), "round = 1\n".into()));

    // One new version per config, sharing the rollback's id, each a
    // rollback to version 1.
    let undo = set["change_set"].as_str().unwrap();
    let newest = &change_sets(&ws)[0];
    assert_eq!((&newest["id"], &newest["configs"]), (&json!(undo), &json!(["a", "b"])));
    for v in newest["versions"].as_array().unwrap() {
        assert_eq!((&v["version"], &v["rollback_of"], &v["change_set"]), (&json!(3), &json!(1), &json!(undo)));
    }

    // And back to the set's own versions.
    let run = ws.run(&["rollback", "--to-change-set", &id]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let set = watch.wait_event(|e| e["kind"] == "change_set_applied");
    assert_eq!(set["configs"].as_array().unwrap().len(), 2, "{set}");
    assert_eq!(ws.read("config/a.toml"), "round = 2\n");

    // An unknown set, or one given with a config name, is refused.
    let run = ws.run(&["rollback", "--change-set", "0000000000000001"]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert!(run.stderr().contains("no change set 0000000000000001"), "{}", run.stderr());
    assert_eq!(ws.run(&["rollback", "a", "--change-set", &id]).code(), 2);
    assert_eq!(watch.terminate(), 0);
}
