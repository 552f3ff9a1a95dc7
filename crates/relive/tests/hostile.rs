//! Hostile input is normal input: no file, however large, deep, aliased,
//! or however unlike a file, stops the engine. Each gets a located
//! rejection (or is skipped with a warning), the last good value stays, and
//! the other configs keep reloading.

// FIFOs and symlinks to devices are Unix's; Windows runs the same engine
// code, type-checked in CI, and the portable backend is run on Linux.
#![cfg(unix)]

mod common;

use std::os::unix::fs::symlink;

use common::*;
use relive::{ChangeEvent, ConfigErrorKind, HotReloadConfig, Limits};
use serde::Deserialize;

/// A config that must keep reloading while another one is hostile.
#[derive(Debug, Deserialize)]
struct Other {
    value: i64,
}

/// Writes `hostile` as config `evil`, waits for its rejection, and checks
/// that the engine carries on: `evil` keeps its last good value and config
/// `other` still reloads. Returns the rejection.
async fn rejected_and_engine_goes_on(t: &TestWs, rel: &str, hostile: &[u8]) -> relive::ConfigError {
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut evil = t.ws.watch_config_changes::<serde_json::Value>("evil").await.unwrap();
    let mut other = t.ws.watch_config_changes::<Other>("other").await.unwrap();
    let before = evil.current_arc();

    std::fs::write(t.path(rel), hostile).unwrap();
    let (event, _) = event_until(
        &mut events,
        |e| matches!(e, ChangeEvent::ValidationFailed { config_name, .. } if config_name == "evil"),
    )
    .await;
    let ChangeEvent::ValidationFailed { error, .. } = event else { unreachable!() };

    t.write("config/other.toml", "value = 2\n");
    assert_eq!(next(&mut other).await.value, 2, "an unrelated config still reloads");
    assert_eq!(*evil.current_arc(), *before, "the last good value stays");
    t.write(rel, "ok = true\n");
    let _ = &mut evil;
    relive::ConfigError::clone(&error)
}

/// The error of a `ValidationFailed` event, as text.
fn failure(event: &ChangeEvent) -> String {
    match event {
        ChangeEvent::ValidationFailed { error, .. } => error.to_string(),
        other => panic!("not a rejection: {other:?}"),
    }
}

fn ws_with_evil(ext: &str) -> (TestWs, String) {
    let rel = format!("config/evil.{ext}");
    let good = match ext {
        "toml" => "ok = true\n",
        "yaml" => "ok: true\n",
        _ => "{\"ok\": true}\n",
    };
    let t = TestWs::new(&[(rel.as_str(), good), ("config/other.toml", "value = 1\n")]);
    (t, rel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_yaml_alias_bomb_is_rejected_within_the_node_limit() {
    // 60 KB: one anchor of 6,000 items referenced 6,000 times expands to
    // 36 million values. On main this allocated gigabytes.
    let items: Vec<String> = (0..6000).map(|i| format!("x{i}")).collect();
    let refs = vec!["*a"; 6000];
    let bomb = format!("base: &a [{}]\nrefs: [{}]\n", items.join(","), refs.join(","));
    let (t, rel) = ws_with_evil("yaml");
    let error = rejected_and_engine_goes_on(&t, &rel, bomb.as_bytes()).await;
    assert_eq!(error.kind(), ConfigErrorKind::Limit, "{error}");
    assert!(error.to_string().contains("max_nodes"), "{error}");
    assert_eq!(error.file(), Some(t.path(&rel).as_path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_deeply_nested_yaml_is_rejected_before_the_parser_sees_it() {
    // 100 KB of `[`: on main, 5 s in release (quadratic in libyaml's
    // scanner) while every other config waited.
    let deep = format!("a: {}{}\n", "[".repeat(50_000), "]".repeat(50_000));
    let (t, rel) = ws_with_evil("yaml");
    let error = rejected_and_engine_goes_on(&t, &rel, deep.as_bytes()).await;
    assert_eq!(error.kind(), ConfigErrorKind::Limit, "{error}");
    assert!(error.to_string().contains("max_depth"), "{error}");
    // Located at the first bracket too deep: line 1, after `a: ` and 64.
    assert_eq!((error.line(), error.column()), (Some(1), Some(4 + 64)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_is_rejected_in_every_format() {
    for (ext, deep) in [
        ("json", format!("{}{}", "[".repeat(200), "]".repeat(200))),
        ("toml", format!("a = {}{}\n", "[".repeat(200), "]".repeat(200))),
        ("yaml", format!("{}x\n", "- ".repeat(200))),
    ] {
        let (t, rel) = ws_with_evil(ext);
        let error = rejected_and_engine_goes_on(&t, &rel, deep.as_bytes()).await;
        assert!(
            matches!(error.kind(), ConfigErrorKind::Limit | ConfigErrorKind::Syntax),
            "{ext}: {:?} {error}",
            error.kind()
        );
        assert!(error.line().is_some(), "{ext}: located: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_config_over_the_size_limit_is_refused_unparsed() {
    // 9 MiB of valid JSON, over the 8 MiB default.
    let mut big = String::from("{\"items\": [");
    while big.len() < 9 << 20 {
        big.push_str("\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\",");
    }
    big.push_str("\"end\"]}");
    let (t, rel) = ws_with_evil("json");
    let error = rejected_and_engine_goes_on(&t, &rel, big.as_bytes()).await;
    assert_eq!(error.kind(), ConfigErrorKind::Limit, "{error}");
    assert!(error.to_string().contains("max_file_size"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_settable() {
    let t = TestWs::new(&[("config/evil.toml", "a = 1\n"), ("config/other.toml", "value = 1\n")]);
    let limits = Limits { max_depth: 3, max_nodes: 50, ..Limits::default() };
    let ws = t.ws.clone().with_config(HotReloadConfig { limits, ..Default::default() });
    let manager = ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let _evil = ws.watch_config_changes::<serde_json::Value>("evil").await.unwrap();

    t.write("config/evil.toml", "a = [[[[1]]]]\n");
    let (event, _) = event_until(&mut events, |e| matches!(e, ChangeEvent::ValidationFailed { .. })).await;
    assert!(failure(&event).contains("max_depth"), "{event:?}");

    let many: Vec<String> = (0..60).map(|i| i.to_string()).collect();
    t.write("config/evil.toml", &format!("a = [{}]\n", many.join(",")));
    let (event, _) = event_until(&mut events, |e| matches!(e, ChangeEvent::ValidationFailed { .. })).await;
    assert!(failure(&event).contains("max_nodes"), "{event:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_fifo_never_blocks_the_engine() {
    for (rel, how) in [
        ("config/evil.toml", "fifo"),
        ("config/evil.toml", "symlink to fifo"),
        ("static/evil.css", "fifo"),
        ("templates/evil.html", "fifo"),
        ("config/evil.toml", "symlink to /dev/zero"),
    ] {
        let t = TestWs::new(&[("config/other.toml", "value = 1\n")]);
        let manager = t.ws.start_hot_reload().await.unwrap();
        let mut events = manager.subscribe();
        let mut other = t.ws.watch_config_changes::<Other>("other").await.unwrap();
        let path = t.path(rel);
        match how {
            "fifo" => common::mkfifo(&path, 0o644),
            "symlink to fifo" => {
                let fifo = t.path("fifo");
                common::mkfifo(&fifo, 0o644);
                symlink(&fifo, &path).unwrap();
            }
            _ => symlink("/dev/zero", &path).unwrap(),
        }
        // Refused as soon as it is read (a symlink is whole at once; a new
        // FIFO after the write timeout): a located ReadFailed, no hang.
        let (event, _) = event_until(&mut events, |e| matches!(e, ChangeEvent::ReadFailed { .. })).await;
        let ChangeEvent::ReadFailed { path: failed, error } = event else { unreachable!() };
        assert_eq!(failed, path, "{how}");
        assert!(error.contains("only regular files"), "{how}: {error}");
        t.write("config/other.toml", "value = 2\n");
        assert_eq!(next(&mut other).await.value, 2, "{rel} ({how}): the engine goes on");
        manager.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_validator_is_a_rejection_and_the_engine_goes_on() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1)), ("config/other.toml", "value = 1\n")]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut app =
        t.ws.config::<App>("app")
            .validate(|a: &App| {
                if a.value == 13 {
                    panic!("unlucky");
                }
                Ok::<(), String>(())
            })
            .watch()
            .await
            .unwrap();
    let mut other = t.ws.watch_config_changes::<Other>("other").await.unwrap();

    t.write("config/app.toml", &app_toml("a", 13));
    let (event, _) = event_until(&mut events, |e| matches!(e, ChangeEvent::ValidationFailed { .. })).await;
    assert!(failure(&event).contains("panicked: unlucky"), "{event:?}");
    assert_eq!(app.current().value, 1, "the last good value stays");

    t.write("config/other.toml", "value = 2\n");
    assert_eq!(next(&mut other).await.value, 2);
    t.write("config/app.toml", &app_toml("a", 14));
    assert_eq!(next(&mut app).await.value, 14, "the config itself reloads again");
}

/// A `Deserialize` impl that panics on one value.
#[derive(Debug)]
struct Fragile(i64);

impl<'de> Deserialize<'de> for Fragile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Fragile, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            value: i64,
        }
        let raw = Raw::deserialize(d)?;
        assert_ne!(raw.value, 13, "cannot take 13");
        Ok(Fragile(raw.value))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_deserialize_impl_is_a_rejection() {
    let t = TestWs::new(&[("config/app.toml", "value = 1\n")]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut app = t.ws.watch_config_changes::<Fragile>("app").await.unwrap();
    t.write("config/app.toml", "value = 13\n");
    let (event, _) = event_until(&mut events, |e| matches!(e, ChangeEvent::ValidationFailed { .. })).await;
    assert!(failure(&event).contains("cannot take 13"), "{event:?}");
    t.write("config/app.toml", "value = 2\n");
    assert_eq!(next(&mut app).await.0, 2);
}

#[test]
fn a_one_shot_load_applies_the_limits_too() {
    let t = TestWs::new(&[(
        "config/evil.yaml",
        "a: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
    )]);
    let error = t.ws.load("evil").unwrap_err().to_string();
    assert!(error.contains("max_depth"), "{error}");
}

#[test]
fn regression_an_alias_of_a_long_string_is_bounded_by_the_text_it_builds() {
    // Each copy of an alias costs one value but its whole text: 100 copies
    // of a 50 KB string (key or value) are 5 MB from a 55 KB document, and
    // 10,000 copies of a 100 KB one took 2 GB on main. The text a document
    // builds is capped at max_file_size, which a document without aliases
    // can never exceed.
    let limits = Limits { max_file_size: 1 << 20, ..Limits::default() };
    let long = "x".repeat(50_000);
    let refs = vec!["*a"; 100].join(",");
    for doc in [format!("a: &a \"{long}\"\nb: [{refs}]\n"), format!("a: &a\n  ? {long}\n  : 1\nb: [{refs}]\n")] {
        let document = relive::Document::new("config/evil.yaml", relive::Format::Yaml, doc.into_bytes());
        let error = relive::LoadedConfig::from_documents_with(
            "evil",
            vec![document],
            &HotReloadConfig { limits, ..Default::default() },
        )
        .unwrap_err();
        assert_eq!(error.kind(), ConfigErrorKind::Limit, "{error}");
        assert!(error.to_string().contains("bytes of text"), "{error}");
        assert!(error.line().is_some(), "located: {error}");
    }
    // Text the document holds itself is fine up to the limit.
    let document = relive::Document::new(
        "config/ok.yaml",
        relive::Format::Yaml,
        format!("a: \"{}\"\n", "y".repeat(1_000_000)).into_bytes(),
    );
    relive::LoadedConfig::from_documents_with("ok", vec![document], &HotReloadConfig { limits, ..Default::default() })
        .unwrap();
}

/// The bytes under `dir`, recursively.
fn disk_use(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => disk_use(&e.path()),
                    _ => e.metadata().map_or(0, |m| m.len()),
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_version_over_the_limits_is_recorded_without_its_content() {
    // On main each rejection of an oversized file stored the 8 MiB read of
    // it in the history (and queued it in memory first): a file rewritten
    // with junk over and over filled the disk and the writer's queue.
    let (t, rel) = ws_with_evil("json");
    let mut big = String::from("{\"items\": [");
    while big.len() < 9 << 20 {
        big.push_str("\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\",");
    }
    big.push_str("\"end\"]}");
    let error = rejected_and_engine_goes_on(&t, &rel, big.as_bytes()).await;
    assert_eq!(error.kind(), ConfigErrorKind::Limit);
    let manager = t.ws.manager().unwrap();
    manager.flush_history().await.unwrap();
    let history = t.ws.open_history("evil").unwrap();
    let rejected = history.entries().iter().find(|e| !e.is_applied()).expect("the rejection is recorded");
    assert!(rejected.error.as_ref().is_some_and(|e| e.to_string().contains("max_file_size")), "{rejected:?}");
    let doc = &rejected.documents[0];
    assert!(doc.withheld.as_deref().is_some_and(|w| w.contains("over the limits")), "{doc:?}");
    // The file was not even read: its size is in the error.
    assert!(
        rejected.error.as_ref().is_some_and(|e| e.to_string().contains(&format!("{} bytes", big.len()))),
        "{rejected:?}"
    );
    let used = disk_use(&t.path("data/history/evil"));
    assert!(used < 1 << 20, "{used} bytes of history for one small config and one rejection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_file_rewritten_without_pause_is_read_only_now_and_then() {
    // Each rejection of an alias bomb costs the engine thread a millisecond
    // or two; a writer that never stops must not turn that into all of it.
    let items: Vec<String> = (0..3000).map(|i| format!("x{i}")).collect();
    let refs = vec!["*a"; 3000];
    let bomb = format!("base: &a [{}]\nrefs: [{}]\n", items.join(","), refs.join(","));
    let (t, rel) = ws_with_evil("yaml");
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let _evil = t.ws.watch_config_changes::<serde_json::Value>("evil").await.unwrap();
    let mut other = t.ws.watch_config_changes::<Other>("other").await.unwrap();

    // A writer that rewrites it every 5 ms for a second (the pause paces
    // the writer; nothing is asserted on time).
    const WRITES: usize = 200;
    for i in 0..WRITES {
        // Each write different, so that none is a no-op.
        std::fs::write(t.path(&rel), format!("{bomb}# {i}\n")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    t.write("config/other.toml", "value = 2\n");
    assert_eq!(next(&mut other).await.value, 2, "the other config goes on");
    // Count the rejections until none came for half a second (bounded):
    // the last write is read once its cooldown is over.
    let mut rejections = 0;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(std::time::Duration::from_millis(500), events.recv()).await {
            Ok(Ok(ChangeEvent::ValidationFailed { config_name, error })) if config_name == "evil" => {
                assert_eq!(error.kind(), ConfigErrorKind::Limit, "{error}");
                rejections += 1;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => break,
        }
    }
    assert!(rejections >= 1, "the hostile file is rejected");
    assert!(rejections < WRITES / 4, "{rejections} rejections for {WRITES} writes 5 ms apart: read only now and then");
}
