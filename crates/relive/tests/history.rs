//! Version history: versions and diffs, rejected versions, retention,
//! rollback (in process and across processes), crash safety under kill -9,
//! damaged logs, and secrets.

// Modes, the umask, FIFOs and kill -9 are Unix's.
#![cfg(unix)]

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use relive::{
    ChangeEvent, ConfigErrorKind, ConfigStream, DiffEntry, Error, Format, HistoryConfig, HotReloadConfig,
    HotReloadManager, REDACTED, VersionStatus,
};
use serde_json::json;

async fn start(t: &TestWs, history: HistoryConfig) -> (HotReloadManager, ConfigStream<App>) {
    let config = HotReloadConfig { history, ..Default::default() };
    let manager = t.ws.start_hot_reload_with_config(config).await.unwrap();
    let stream = t.ws.watch_config_changes::<App>("app").await.unwrap();
    (manager, stream)
}

/// Replaces `rel` the way editors save: temp file, then rename.
fn save(t: &TestWs, rel: &str, content: &str) {
    let tmp = t.path(&format!("{rel}.tmp"));
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, t.path(rel)).unwrap();
}

fn versions(t: &TestWs) -> Vec<u64> {
    t.ws.history("app").unwrap().iter().map(|e| e.version).collect()
}

fn history_dir(t: &TestWs) -> PathBuf {
    t.path("data/history/app")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_make_numbered_versions_with_diffs_and_no_ops_make_none() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let (manager, mut stream) = start(&t, HistoryConfig::default()).await;
    manager.flush_history().await.unwrap();
    assert_eq!(versions(&t), [1]);

    t.write("config/app.toml", &app_toml("a", 2));
    assert_eq!(next(&mut stream).await.value, 2);
    // A no-op save (same bytes) and a reformat (same data) change nothing...
    t.write("config/app.toml", &app_toml("a", 2));
    t.write("config/app.toml", "# a comment\nname = 'a'\nvalue   = 2\n");
    // ...so the next real change is version 3.
    t.write("config/app.toml", "name = \"a\"\nvalue = 2\nextra = \"x\"\n");
    let (v, _) = next_until(&mut stream, |a| a.extra.is_some()).await;
    assert_eq!(v.extra.as_deref(), Some("x"));
    manager.flush_history().await.unwrap();

    let history = t.ws.history("app").unwrap();
    assert_eq!(history.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2, 3]);
    for e in &history {
        assert_eq!(e.status, VersionStatus::Applied);
        assert_eq!(e.hash.len(), 64);
        assert_eq!(e.files().collect::<Vec<_>>(), [t.path("config/app.toml")]);
        assert_eq!(e.documents[0].format, Format::Toml);
        assert_eq!(e.env, None);
        assert_eq!(e.rollback_of, None);
        assert!(e.time <= SystemTime::now());
    }
    // The first version's diff is from nothing.
    assert_eq!(history[0].diff.added().collect::<Vec<_>>(), ["/name", "/value"]);
    assert_eq!(history[1].diff.entries(), [DiffEntry::Changed { path: "/value".into(), old: json!(1), new: json!(2) }]);
    assert_eq!(history[2].diff.entries(), [DiffEntry::Added { path: "/extra".into(), value: json!("x") }]);
    assert_eq!(t.ws.diff("app", 1, 3).unwrap().len(), 2);

    // Stored content is the bytes as they were on disk.
    let v1 = t.ws.version("app", 1).unwrap();
    assert_eq!(&v1.documents[0].bytes()[..], app_toml("a", 1).as_bytes());
    assert_eq!(v1.value, Some(json!({"name": "a", "value": 1})));
    assert!(matches!(t.ws.version("app", 9), Err(Error::UnknownVersion { version: 9, .. })));

    // A restart with unchanged files adds nothing.
    manager.shutdown().await.unwrap();
    drop(stream);
    let manager = t.ws.start_hot_reload().await.unwrap();
    manager.flush_history().await.unwrap();
    assert_eq!(versions(&t), [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlays_and_environment_are_recorded() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1)), ("config/app.prod.toml", "value = 7\n")]);
    let ws = t.ws.clone().with_env("prod");
    let manager = ws.start_hot_reload().await.unwrap();
    manager.flush_history().await.unwrap();
    let history = ws.history("app").unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].env.as_deref(), Some("prod"));
    assert_eq!(history[0].files().collect::<Vec<_>>(), [t.path("config/app.toml"), t.path("config/app.prod.toml")]);
    assert_eq!(ws.version("app", 1).unwrap().value, Some(json!({"name": "a", "value": 7})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_versions_are_recorded_with_their_error_and_position() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut stream =
        t.ws.config::<App>("app")
            .validate(
                |a: &App| if a.value < 0 { Err(relive::ValidationError::at("value", "must be >= 0")) } else { Ok(()) },
            )
            .watch()
            .await
            .unwrap();

    // A syntax error: no value, no diff.
    t.write("config/app.toml", "name = \"a\"\nvalue = \n");
    event_until(&mut events, |e| matches!(e, ChangeEvent::ValidationFailed { .. })).await;
    // A validator's rejection: a value and a diff.
    t.write("config/app.toml", "name = \"a\"\nvalue = -1\n");
    event_until(&mut events, |e| matches!(e, ChangeEvent::ValidationFailed { .. })).await;
    t.write("config/app.toml", &app_toml("a", 2));
    assert_eq!(next(&mut stream).await.value, 2);
    manager.flush_history().await.unwrap();

    let history = t.ws.history("app").unwrap();
    let statuses: Vec<_> = history.iter().map(|e| (e.version, e.status)).collect();
    use VersionStatus::*;
    assert_eq!(statuses, [(1, Applied), (2, Rejected), (3, Rejected), (4, Applied)]);

    let syntax = history[1].error.as_ref().unwrap();
    assert_eq!(syntax.kind(), ConfigErrorKind::Syntax);
    assert_eq!(syntax.file(), Some(t.path("config/app.toml").as_path()));
    assert_eq!(syntax.line(), Some(2));
    assert!(syntax.column().is_some());
    assert!(syntax.to_string().starts_with(&format!("{}:2:", t.path("config/app.toml").display())), "{syntax}");
    assert!(history[1].diff.is_empty());
    let broken = t.ws.version("app", 2).unwrap();
    assert_eq!(&broken.documents[0].bytes()[..], b"name = \"a\"\nvalue = \n");
    assert_eq!(broken.value, None);

    let invalid = history[2].error.as_ref().unwrap();
    assert_eq!(invalid.kind(), ConfigErrorKind::Invalid);
    assert_eq!((invalid.line(), invalid.column(), invalid.key()), (Some(2), Some(1), Some("value")));
    assert_eq!(
        history[2].diff.entries(),
        [DiffEntry::Changed { path: "/value".into(), old: json!(1), new: json!(-1) }]
    );
    // The diff of an applied version is from the applied one before it.
    assert_eq!(history[3].diff.entries(), [DiffEntry::Changed { path: "/value".into(), old: json!(1), new: json!(2) }]);

    // A rejected version cannot be rolled back to.
    let err = t.ws.rollback("app", 2).await.unwrap_err();
    assert!(matches!(err, Error::History { .. }), "{err}");
    assert!(err.to_string().contains("rejected"), "{err}");

    // Files that go away are a rejected version with no documents.
    fs::remove_file(t.path("config/app.toml")).unwrap();
    event_until(&mut events, |e| matches!(e, ChangeEvent::ValidationFailed { .. })).await;
    manager.flush_history().await.unwrap();
    let gone = t.ws.history("app").unwrap().pop().unwrap();
    assert_eq!((gone.version, gone.status), (5, Rejected));
    assert_eq!(gone.error.as_ref().unwrap().kind(), ConfigErrorKind::Missing);
    assert!(gone.documents.is_empty());
    assert_eq!(t.ws.version("app", 5).unwrap().value, None);
    // A rollback restores the file. The value that stayed live comes back:
    // nothing to deliver and no new version, and the marker is consumed.
    t.ws.rollback("app", 4).await.unwrap();
    assert_eq!(fs::read_to_string(t.path("config/app.toml")).unwrap(), app_toml("a", 2));
    eventually("the marker to be consumed", || !t.path("data/history/app/rollback.json").exists()).await;
    manager.flush_history().await.unwrap();
    assert_eq!(t.ws.history("app").unwrap().len(), 5);
    assert_eq!(stream.live().load().value, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_count_keeps_the_newest() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let (manager, mut stream) = start(&t, HistoryConfig { max_versions: 3, ..Default::default() }).await;
    for i in 2..=7 {
        save(&t, "config/app.toml", &app_toml("a", i));
        next_until(&mut stream, |a| a.value == i).await;
    }
    manager.flush_history().await.unwrap();
    assert_eq!(versions(&t), [5, 6, 7]);
    assert!(matches!(t.ws.version("app", 4), Err(Error::UnknownVersion { version: 4, .. })));
    let mut files: Vec<_> = fs::read_dir(history_dir(&t).join("versions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["5.json", "6.json", "7.json"]);
    assert_eq!(t.ws.version("app", 7).unwrap().value, Some(json!({"name": "a", "value": 7})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_compacted_as_versions_are_pruned() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 0))]);
    let (manager, mut stream) = start(&t, HistoryConfig { max_versions: 2, ..Default::default() }).await;
    for i in 1..=60 {
        save(&t, "config/app.toml", &app_toml("a", i));
        next_until(&mut stream, |a| a.value == i).await;
    }
    manager.flush_history().await.unwrap();
    assert_eq!(versions(&t), [60, 61]);
    let log = fs::read_to_string(history_dir(&t).join("audit.log")).unwrap();
    // Two versions and the prune records since the last compaction.
    assert!(log.lines().count() <= 2 * 2 + 32 + 1, "{} lines", log.lines().count());
    assert_eq!(fs::read_dir(history_dir(&t).join("versions")).unwrap().count(), 2);
    assert!(t.ws.open_history("app").unwrap().warnings().is_empty());
    assert_eq!(t.ws.diff("app", 60, 61).unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_live_version_among_rejected_ones() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let (manager, _stream) = start(&t, HistoryConfig { max_versions: 2, ..Default::default() }).await;
    let mut events = manager.subscribe();
    for i in 0..4 {
        t.write("config/app.toml", &format!("broken {i}"));
        event_until(&mut events, |e| matches!(e, ChangeEvent::ValidationFailed { .. })).await;
    }
    manager.flush_history().await.unwrap();
    let history = t.ws.history("app").unwrap();
    assert_eq!(
        history.iter().map(|e| (e.version, e.status)).collect::<Vec<_>>(),
        [(1, VersionStatus::Applied), (5, VersionStatus::Rejected)]
    );
    // The live value can still be restored.
    t.ws.rollback("app", 1).await.unwrap();
    assert_eq!(fs::read_to_string(t.path("config/app.toml")).unwrap(), app_toml("a", 1));
}

/// The clock of `retention_by_age_prunes_old_versions`: real time plus an
/// offset the test moves.
static OFFSET: AtomicU64 = AtomicU64::new(0);

fn shifted_clock() -> SystemTime {
    SystemTime::now() + Duration::from_secs(OFFSET.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_prunes_old_versions() {
    const DAY: u64 = 24 * 3600;
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let history =
        HistoryConfig { max_age: Some(Duration::from_secs(7 * DAY)), clock: shifted_clock, ..Default::default() };
    let (manager, mut stream) = start(&t, history).await;
    save(&t, "config/app.toml", &app_toml("a", 2));
    next(&mut stream).await;
    manager.flush_history().await.unwrap();
    assert_eq!(versions(&t), [1, 2]);

    // Five days on, nothing is old enough.
    OFFSET.store(5 * DAY, Ordering::SeqCst);
    save(&t, "config/app.toml", &app_toml("a", 3));
    next(&mut stream).await;
    manager.flush_history().await.unwrap();
    assert_eq!(versions(&t), [1, 2, 3]);

    // Ten days on, the first two are.
    OFFSET.store(10 * DAY, Ordering::SeqCst);
    save(&t, "config/app.toml", &app_toml("a", 4));
    next(&mut stream).await;
    manager.flush_history().await.unwrap();
    assert_eq!(versions(&t), [3, 4]);
    let entries = t.ws.history("app").unwrap();
    assert!(entries[1].time > SystemTime::now() + Duration::from_secs(9 * DAY));

    // A month on, everything is old, but the newest version stays.
    OFFSET.store(40 * DAY, Ordering::SeqCst);
    save(&t, "config/app.toml", &app_toml("a", 5));
    next(&mut stream).await;
    manager.flush_history().await.unwrap();
    assert_eq!(versions(&t), [5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_the_content_and_is_recorded() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let (manager, mut stream) = start(&t, HistoryConfig::default()).await;
    for i in 2..=3 {
        save(&t, "config/app.toml", &app_toml("a", i));
        next_until(&mut stream, |a| a.value == i).await;
    }
    let live = stream.live();

    t.ws.rollback("app", 1).await.unwrap();
    // With the engine in this process, rollback returns once it applied.
    assert_eq!(live.load().value, 1);
    assert_eq!(next(&mut stream).await.value, 1);
    assert_eq!(fs::read_to_string(t.path("config/app.toml")).unwrap(), app_toml("a", 1));
    manager.flush_history().await.unwrap();

    let history = t.ws.history("app").unwrap();
    let last = history.last().unwrap();
    assert_eq!((last.version, last.status, last.rollback_of), (4, VersionStatus::Applied, Some(1)));
    assert_eq!(last.hash, history[0].hash);
    assert!(!history_dir(&t).join("rollback.json").exists(), "the marker is consumed");
    // No temp file is left next to the config.
    let names: Vec<_> = fs::read_dir(t.path("config")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["app.toml"]);

    // A rollback to what is on disk writes nothing and records nothing.
    t.ws.rollback("app", 4).await.unwrap();
    t.ws.rollback("app", 1).await.unwrap();
    assert!(matches!(t.ws.rollback("app", 99).await, Err(Error::UnknownVersion { version: 99, .. })));
    save(&t, "config/app.toml", &app_toml("a", 5));
    next(&mut stream).await;
    manager.flush_history().await.unwrap();
    assert_eq!(versions(&t), [1, 2, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_that_the_engine_rejects_is_an_error_and_recorded() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();
    save(&t, "config/app.toml", &app_toml("a", 2));
    next(&mut stream).await;
    // A validator added since makes version 1 invalid.
    let _strict =
        t.ws.config::<App>("app")
            .validate(|a: &App| if a.value < 2 { Err("value must be at least 2") } else { Ok(()) })
            .watch()
            .await
            .unwrap();
    let err = t.ws.rollback("app", 1).await.unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    manager.flush_history().await.unwrap();
    let last = t.ws.history("app").unwrap().pop().unwrap();
    assert_eq!((last.version, last.status, last.rollback_of), (3, VersionStatus::Rejected, Some(1)));
    assert!(!history_dir(&t).join("rollback.json").exists());
}

/// A rollback by a process with no engine (what `relive rollback` does)
/// reaches the engine of this one. The child half rolls back; the parent
/// half checks that its engine applied and recorded it.
#[test]
fn rollback_from_another_process() {
    const NAME: &str = "rollback_from_another_process";
    if let Some(root) = child_arg(NAME) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(relive::Workspace::new(root).rollback("app", 1)).unwrap();
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
        let (manager, mut stream) = start(&t, HistoryConfig::default()).await;
        save(&t, "config/app.toml", &app_toml("a", 2));
        next(&mut stream).await;
        // What `relive history` would show before someone picks a version.
        manager.flush_history().await.unwrap();

        assert_child_passed(&child(NAME, t.dir.path()).output().unwrap());

        assert_eq!(next(&mut stream).await.value, 1);
        manager.flush_history().await.unwrap();
        let last = t.ws.history("app").unwrap().pop().unwrap();
        assert_eq!((last.version, last.rollback_of), (3, Some(1)));
        assert!(!history_dir(&t).join("rollback.json").exists());
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_without_an_engine_is_recorded_when_one_starts() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let (manager, mut stream) = start(&t, HistoryConfig::default()).await;
    save(&t, "config/app.toml", &app_toml("a", 2));
    next(&mut stream).await;
    manager.shutdown().await.unwrap();

    t.ws.rollback("app", 1).await.unwrap();
    assert!(history_dir(&t).join("rollback.json").exists());
    let manager = t.ws.start_hot_reload().await.unwrap();
    manager.flush_history().await.unwrap();
    let last = t.ws.history("app").unwrap().pop().unwrap();
    assert_eq!((last.version, last.rollback_of), (3, Some(1)));
    assert!(!history_dir(&t).join("rollback.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_redacted_in_diffs_but_stored_in_versions() {
    let first = "name = \"a\"\nvalue = 1\n[db]\npassword = \"hunter2\"\nhost = \"h1\"\n";
    let second = "name = \"a\"\nvalue = 1\n[db]\npassword = \"correct-horse\"\nhost = \"h2\"\napi_key = \"k-123\"\n";
    let t = TestWs::new(&[("config/app.toml", first)]);
    let (manager, _stream) = start(&t, HistoryConfig::default()).await;
    let mut events = manager.subscribe();
    save(&t, "config/app.toml", second);
    event_until(&mut events, |e| matches!(e, ChangeEvent::ConfigChanged { .. })).await;
    manager.flush_history().await.unwrap();

    let history = t.ws.history("app").unwrap();
    let diff = &history[1].diff;
    assert_eq!(
        diff.get("/db/password"),
        Some(&DiffEntry::Changed { path: "/db/password".into(), old: json!(REDACTED), new: json!(REDACTED) })
    );
    assert_eq!(diff.get("/db/api_key"), Some(&DiffEntry::Added { path: "/db/api_key".into(), value: json!(REDACTED) }));
    assert_eq!(
        diff.get("/db/host"),
        Some(&DiffEntry::Changed { path: "/db/host".into(), old: json!("h1"), new: json!("h2") })
    );
    for text in [format!("{:?}", history), t.ws.diff("app", 1, 2).unwrap().to_string()] {
        for secret in ["hunter2", "correct-horse", "k-123"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
    // Neither the audit log holds them.
    let log = fs::read_to_string(history_dir(&t).join("audit.log")).unwrap();
    assert!(!log.contains("hunter2") && !log.contains("correct-horse"), "{log}");

    // The stored versions are the real content.
    let v2 = t.ws.version("app", 2).unwrap();
    assert_eq!(&v2.documents[0].bytes()[..], second.as_bytes());
    assert_eq!(v2.value.unwrap()["db"]["password"], json!("correct-horse"));
    assert_eq!(t.ws.version("app", 1).unwrap().value.unwrap()["db"]["password"], json!("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_versions_are_recorded_but_not_rolled_back() {
    let t = TestWs::new(&[]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let doc = |v: i64| {
        relive::Document::new("etcd:/svc/app", Format::Json, format!(r#"{{"name":"r","value":{v}}}"#).into_bytes())
    };
    manager.publish("app", vec![doc(1)]).await.unwrap();
    manager.publish("app", vec![doc(2)]).await.unwrap();
    assert!(
        manager
            .publish("app", vec![relive::Document::new("etcd:/svc/app", Format::Json, b"{".to_vec())])
            .await
            .is_err()
    );
    manager.flush_history().await.unwrap();
    let history = t.ws.history("app").unwrap();
    assert_eq!(history.len(), 3);
    assert!(history.iter().all(|e| e.published));
    assert_eq!(history[0].files().collect::<Vec<_>>(), [Path::new("etcd:/svc/app")]);
    assert_eq!(history[2].status, VersionStatus::Rejected);
    let err = t.ws.rollback("app", 1).await.unwrap_err();
    assert!(err.to_string().contains("published"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_can_be_turned_off() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let (manager, mut stream) = start(&t, HistoryConfig { enabled: false, ..Default::default() }).await;
    save(&t, "config/app.toml", &app_toml("a", 2));
    next(&mut stream).await;
    manager.flush_history().await.unwrap();
    assert!(!t.path("data/history").exists());
    assert!(t.ws.history("app").unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_truncated_records_are_skipped_with_warnings() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let (manager, mut stream) = start(&t, HistoryConfig::default()).await;
    for i in 2..=4 {
        save(&t, "config/app.toml", &app_toml("a", i));
        next_until(&mut stream, |a| a.value == i).await;
    }
    manager.shutdown().await.unwrap();
    drop(stream);

    // Flip a byte inside record 2, add a line of garbage, and leave half a
    // record at the end, as a crash mid-append would.
    let log = history_dir(&t).join("audit.log");
    let mut bytes = fs::read(&log).unwrap();
    let lines: Vec<usize> = bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i).collect();
    assert_eq!(lines.len(), 4);
    bytes[lines[0] + 40] ^= 0x20;
    let fourth = bytes[lines[2] + 1..=lines[3]].to_vec();
    bytes.truncate(lines[2] + 1);
    bytes.extend_from_slice(b"not a record at all\n");
    bytes.extend_from_slice(&fourth);
    bytes.extend_from_slice(&fourth[..fourth.len() / 2]);
    fs::write(&log, &bytes).unwrap();

    let history = t.ws.open_history("app").unwrap();
    assert_eq!(history.entries().iter().map(|e| e.version).collect::<Vec<_>>(), [1, 3, 4]);
    let warnings = history.warnings();
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    assert_eq!((warnings[0].line, warnings[0].truncated), (2, false));
    assert!(warnings[0].message.contains("checksum"), "{}", warnings[0]);
    assert_eq!((warnings[1].line, warnings[1].truncated), (4, false));
    assert_eq!((warnings[2].line, warnings[2].truncated), (6, true));
    assert!(warnings[2].to_string().starts_with(&format!("{}:6: truncated", log.display())), "{}", warnings[2]);
    // Reading is not writing: the file is as it was.
    assert_eq!(fs::read(&log).unwrap(), bytes);

    // An engine cuts the torn tail off before it appends, and numbers on.
    let (manager, mut stream) = start(&t, HistoryConfig::default()).await;
    save(&t, "config/app.toml", &app_toml("a", 5));
    next_until(&mut stream, |a| a.value == 5).await;
    manager.flush_history().await.unwrap();
    let history = t.ws.open_history("app").unwrap();
    assert_eq!(history.entries().iter().map(|e| e.version).collect::<Vec<_>>(), [1, 3, 4, 5]);
    assert_eq!(history.warnings().len(), 2);
    assert!(history.warnings().iter().all(|w| !w.truncated));
    assert_eq!(
        history.entries()[3].diff.entries(),
        [DiffEntry::Changed { path: "/value".into(), old: json!(4), new: json!(5) }]
    );
    assert!(fs::read(&log).unwrap().ends_with(b"\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_content_file_is_an_error_not_a_wrong_answer() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let (manager, _stream) = start(&t, HistoryConfig::default()).await;
    manager.flush_history().await.unwrap();
    let content = history_dir(&t).join("versions/1.json");
    let mut file = fs::OpenOptions::new().append(true).open(&content).unwrap();
    file.write_all(b" ").unwrap();
    let err = t.ws.version("app", 1).unwrap_err();
    assert!(err.to_string().contains("does not match its hash"), "{err}");
    fs::remove_file(&content).unwrap();
    let err = t.ws.version("app", 1).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

/// An engine with history is killed (SIGKILL) at random moments while it
/// records; after each kill the history opens, with at most a torn last
/// record, and an engine picks up from whatever is left.
#[test]
fn kill_nine_at_random_moments_leaves_a_history_that_opens() {
    const NAME: &str = "kill_nine_at_random_moments_leaves_a_history_that_opens";
    if let Some(root) = child_arg(NAME) {
        // The child half: edits as fast as they are applied, until killed.
        history_writer(&root);
    }
    const ROUNDS: usize = 200;
    let t = TestWs::new(&[("config/app.toml", &app_toml("k", 0))]);
    // xorshift, seeded from the clock; the seed is printed to replay a failure.
    let mut seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("seed {seed}");
    let started = Instant::now();
    let (mut newest, mut torn, mut delays) = (0, 0, Vec::new());
    // Traces of kills that landed mid-write: content with no record yet,
    // a temp file not renamed yet.
    let (mut unrecorded, mut temp, mut progressed) = (0, 0, 0);
    for round in 0..ROUNDS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_micros(2_000 + seed % 60_000);
        delays.push(delay);
        let mut writer = child(NAME, t.dir.path())
            .env_remove("RELIVE_ENV")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The delay picks the moment of the kill; nothing is asserted on it.
        std::thread::sleep(delay);
        writer.kill().unwrap(); // SIGKILL
        writer.wait().unwrap();

        let history = t.ws.open_history("app").unwrap_or_else(|e| panic!("round {round}: history does not open: {e}"));
        for w in history.warnings() {
            assert!(w.truncated, "round {round}: only a torn last record is allowed, got {w}");
        }
        torn += history.warnings().len();
        let numbers: Vec<u64> = history.entries().iter().map(|e| e.version).collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "round {round}: not contiguous: {numbers:?}");
        // A kill between a version and its pruning leaves one extra.
        assert!(numbers.len() <= 21, "round {round}: retention: {numbers:?}");
        let last = numbers.last().copied().unwrap_or(0);
        assert!(last >= newest, "round {round}: version {newest} disappeared ({numbers:?})");
        progressed += usize::from(last > newest);
        newest = last;
        for file in fs::read_dir(history_dir(&t).join("versions")).into_iter().flatten() {
            let name = file.unwrap().file_name().into_string().unwrap();
            unrecorded += usize::from(name == format!("{}.json", last + 1));
            temp += usize::from(name.ends_with(".tmp"));
        }
        for entry in history.entries() {
            let version = history
                .version(entry.version)
                .unwrap_or_else(|e| panic!("round {round}: version {}: {e}", entry.version));
            assert!(version.value.is_some(), "round {round}: version {} has no value", entry.version);
        }
    }
    println!(
        "{ROUNDS} kills in {:?} (mean delay {:?}): newest version {newest}, {progressed} rounds recorded versions; \
         kills left {torn} torn records, {unrecorded} unrecorded contents, {temp} temp files",
        started.elapsed(),
        delays.iter().sum::<Duration>() / ROUNDS as u32
    );
    assert!(newest >= ROUNDS as u64, "the writer made too little progress to test anything: {newest}");
    // Whatever the kills left, an engine picks up from it.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let manager = t.ws.start_hot_reload().await.unwrap();
        let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();
        let value = stream.current().value + 1;
        save(&t, "config/app.toml", &app_toml("k", value));
        next_until(&mut stream, |a| a.value == value).await;
        manager.flush_history().await.unwrap();
    });
    let history = t.ws.open_history("app").unwrap();
    assert!(history.warnings().is_empty(), "{:?}", history.warnings());
    assert!(history.latest().unwrap().version > newest);
}

/// The child half of `kill_nine_at_random_moments_leaves_a_history_that_opens`:
/// an engine with history, and edits as fast as they are applied. It never
/// returns: the parent kills it.
fn history_writer(root: &Path) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async move {
        let ws = relive::Workspace::new(root);
        let config =
            HotReloadConfig { history: HistoryConfig { max_versions: 20, ..Default::default() }, ..Default::default() };
        let _manager = ws.start_hot_reload_with_config(config).await.unwrap();
        let mut stream = ws.watch_config_changes::<App>("app").await.unwrap();
        let file = root.join("config/app.toml");
        let tmp = root.join("config/app.toml.tmp");
        let mut value = stream.current().value;
        loop {
            value += 1;
            fs::write(&tmp, app_toml("k", value)).unwrap();
            fs::rename(&tmp, &file).unwrap();
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            while stream.current().value != value {
                tokio::time::timeout_at(deadline, stream.next()).await.unwrap().unwrap();
            }
        }
    })
}

// History must not be a way in, nor a way out: what it writes is private,
// what it writes back stays inside `config/`, and a forged or damaged record
// is refused, never obeyed.

/// Appends version `version` of config `name` to its history by hand, the
/// way the on-disk format says (see the `history` module docs): a content
/// file of one document with `origin` and `text`, and a checksummed record
/// that points at it. A forged record is as valid as a real one.
fn forge(t: &TestWs, name: &str, version: u64, origin: &str, text: &str) {
    use sha2::{Digest, Sha256};
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let dir = t.path(&format!("data/history/{name}"));
    fs::create_dir_all(dir.join("versions")).unwrap();
    let content =
        serde_json::to_vec(&json!({"documents": [{"origin": origin, "format": "toml", "text": text}]})).unwrap();
    fs::write(dir.join(format!("versions/{version}.json")), &content).unwrap();
    let record = json!({
        "type": "version", "version": version, "status": "applied", "time": "2026-01-01T00:00:00.000000Z",
        "env": null, "hash": hex(&Sha256::digest(&content)),
        "documents": [{"origin": origin, "format": "toml", "len": text.len(), "sha256": hex(&Sha256::digest(text))}],
        "diff": [],
    })
    .to_string();
    let line = format!("{:016x} {record}\n", xxhash_rust::xxh3::xxh3_64(record.as_bytes()));
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("audit.log"))
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_writes_only_inside_config() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), t.path("config/link")).unwrap();
    fs::write(outside.path().join("target.toml"), "untouched\n").unwrap();
    std::os::unix::fs::symlink(outside.path().join("target.toml"), t.path("config/linked.toml")).unwrap();
    // Reading a FIFO to compare it would block the rollback forever.
    let fifo = t.path("config/fifo.toml");
    common::mkfifo(&fifo, 0o600);
    let evil = outside.path().join("evil.sh");
    let escapes = [
        evil.display().to_string(),
        format!("config/../../{}/evil.sh", outside.path().strip_prefix("/").unwrap().display()),
        "../evil.sh".to_string(),
        "data/history/app/rollback.json".to_string(),
        "config/link/evil.sh".to_string(),
        "config/linked.toml".to_string(),
        "config/fifo.toml".to_string(),
        "config/fifo.toml/below.toml".to_string(),
    ];
    for (i, origin) in escapes.iter().enumerate() {
        let version = i as u64 + 1;
        forge(&t, "app", version, origin, "#!/bin/sh\necho pwned\n");
        let err = t.ws.rollback("app", version).await.unwrap_err().to_string();
        for part in ["`app`", &format!("version {version}"), origin.as_str()] {
            assert!(err.contains(part), "{origin}: the error names {part}: {err}");
        }
    }
    assert!(!evil.exists(), "a history record wrote outside the workspace");
    assert!(!t.path("evil.sh").exists() && !t.path("data/evil.sh").exists());
    assert_eq!(fs::read_to_string(outside.path().join("target.toml")).unwrap(), "untouched\n");
    assert!(!history_dir(&t).join("rollback.json").exists(), "nothing is written for a refused rollback");

    // What stays inside config/ is restored, a new subdirectory included.
    forge(&t, "app", 10, "config/app.toml", &app_toml("back", 10));
    forge(&t, "app", 11, "config/sub/dir/app.toml", &app_toml("new", 11));
    t.ws.rollback("app", 10).await.unwrap();
    assert_eq!(fs::read_to_string(t.path("config/app.toml")).unwrap(), app_toml("back", 10));
    t.ws.rollback("app", 11).await.unwrap();
    assert_eq!(fs::read_to_string(t.path("config/sub/dir/app.toml")).unwrap(), app_toml("new", 11));
    // A record with no mode (forged, or from an older relive): private.
    let mode = |rel: &str| {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(t.path(rel)).unwrap().permissions().mode() & 0o7777
    };
    assert_eq!(mode("config/sub/dir/app.toml"), 0o600);
    assert_eq!((mode("config/sub"), mode("config/sub/dir")), (0o700, 0o700));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_numbered_u64_max_is_skipped_as_damaged() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    forge(&t, "app", 1, "config/app.toml", &app_toml("a", 1));
    forge(&t, "app", u64::MAX, "config/app.toml", &app_toml("a", 1));
    let history = t.ws.open_history("app").unwrap();
    assert_eq!(history.entries().iter().map(|e| e.version).collect::<Vec<_>>(), [1]);
    assert_eq!(history.warnings().len(), 1, "{:?}", history.warnings());
    assert!(history.warnings()[0].message.contains(&u64::MAX.to_string()), "{}", history.warnings()[0]);

    // The writer numbers on from the last good record: no overflow, no
    // wrapped number. (Forged records are dated 2026-01-01: no pruning by age.)
    let (manager, mut stream) = start(&t, HistoryConfig { max_age: None, ..Default::default() }).await;
    save(&t, "config/app.toml", &app_toml("a", 2));
    next_until(&mut stream, |a| a.value == 2).await;
    manager.flush_history().await.unwrap();
    assert_eq!(versions(&t), [1, 2]);
}

/// Every directory under `dir` (itself included) and every file, with its
/// permission bits.
fn modes_under(dir: &Path) -> Vec<(PathBuf, bool, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = vec![(dir.to_path_buf(), true, fs::metadata(dir).unwrap().permissions().mode() & 0o7777)];
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        if meta.is_dir() {
            out.extend(modes_under(&entry.path()));
        } else {
            out.push((entry.path(), false, meta.permissions().mode() & 0o7777));
        }
    }
    out
}

/// Under umask 0, an engine records versions and a rollback runs; then
/// everything under `data/` is private: directories 0700, files 0600, and
/// the `data/` that was 0755 is narrowed.
#[test]
fn files_under_data_are_private_whatever_the_umask() {
    const NAME: &str = "files_under_data_are_private_whatever_the_umask";
    if let Some(root) = child_arg(NAME) {
        rustix::process::umask(rustix::fs::Mode::empty());
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            // Backups too: they hold a config's old secrets.
            let config = relive::HotReloadConfig { backup_on_change: true, ..Default::default() };
            let ws = relive::Workspace::new(&root).with_config(config);
            let manager = ws.start_hot_reload().await.unwrap();
            let mut stream = ws.watch_config_changes::<App>("app").await.unwrap();
            fs::write(root.join("config/app.toml"), app_toml("a", 2)).unwrap();
            next_until(&mut stream, |a| a.value == 2).await;
            manager.flush_history().await.unwrap();
            ws.rollback("app", 1).await.unwrap();
            manager.flush_history().await.unwrap();
            assert_eq!(ws.history("app").unwrap().len(), 3);
            manager.shutdown().await.unwrap();
        });
        return;
    }
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(t.path("data"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_child_passed(&child(NAME, t.dir.path()).output().unwrap());
    let modes = modes_under(&t.path("data"));
    assert!(modes.iter().any(|(p, _, _)| p.ends_with(".lock")), "{modes:?}");
    assert!(modes.iter().any(|(p, _, _)| p.ends_with("audit.log")), "{modes:?}");
    assert!(modes.iter().any(|(p, _, _)| p.to_string_lossy().contains("backups/configs/")), "{modes:?}");
    for (path, dir, mode) in modes {
        assert_eq!(mode, if dir { 0o700 } else { 0o600 }, "{} is {mode:o}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_keeps_the_mode_and_owner_of_the_file_it_replaces() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    const NOBODY: u32 = 65534;
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let file = t.path("config/app.toml");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let root = rustix::process::geteuid().is_root();
    if root {
        std::os::unix::fs::chown(&file, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let owner = |path: &Path| {
        let meta = fs::metadata(path).unwrap();
        (meta.permissions().mode() & 0o7777, meta.uid(), meta.gid())
    };
    let before = owner(&file);
    let (manager, mut stream) = start(&t, HistoryConfig::default()).await;
    save(&t, "config/app.toml", &app_toml("a", 2));
    next_until(&mut stream, |a| a.value == 2).await;
    // The editor's save made a file of its own: give it the same mode and
    // owner again, as an editor that keeps them does.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    if root {
        std::os::unix::fs::chown(&file, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    manager.flush_history().await.unwrap();
    t.ws.rollback("app", 1).await.unwrap();
    assert_eq!(fs::read_to_string(&file).unwrap(), app_toml("a", 1));
    assert_eq!(owner(&file), before, "mode, owner and group are kept");

    // A file that is gone comes back with the mode its version had.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
    save(&t, "config/app.toml", &app_toml("a", 3));
    fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
    next_until(&mut stream, |a| a.value == 3).await;
    manager.flush_history().await.unwrap();
    let v3 = t.ws.history("app").unwrap().last().unwrap().version;
    save(&t, "config/app.toml", &app_toml("a", 4));
    next_until(&mut stream, |a| a.value == 4).await;
    fs::remove_file(&file).unwrap();
    manager.flush_history().await.unwrap();
    t.ws.rollback("app", v3).await.unwrap();
    assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o7777, 0o640);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_symlinked_outside_the_workspace_is_recorded_without_its_content() {
    let secret = "name = \"root-only-marker\"\nvalue = 7\npassword = \"hunter2\"\n";
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret.toml"), secret).unwrap();
    let t = TestWs::new(&[("shared/inside.toml", &app_toml("inside-marker", 1))]);
    std::os::unix::fs::symlink(outside.path().join("secret.toml"), t.path("config/app.toml")).unwrap();
    // A link that stays inside the workspace (as Kubernetes' `..data` does)
    // is recorded as usual.
    std::os::unix::fs::symlink("../shared/inside.toml", t.path("config/inside.toml")).unwrap();
    let manager = t.ws.start_hot_reload().await.unwrap();
    let stream = t.ws.watch_config_changes::<App>("app").await.unwrap();
    assert_eq!(stream.current().value, 7, "the config itself is read");
    let _inside = t.ws.watch_config_changes::<App>("inside").await.unwrap();
    manager.flush_history().await.unwrap();

    let history = t.ws.history("app").unwrap();
    assert_eq!(history.len(), 1, "the version is on record");
    assert!(history[0].diff.is_empty(), "{}", history[0].diff);
    let err = t.ws.version("app", 1).unwrap_err().to_string();
    assert!(err.contains("outside the workspace"), "{err}");
    assert!(t.ws.rollback("app", 1).await.is_err());
    assert_eq!(&t.ws.version("inside", 1).unwrap().documents[0].bytes()[..], app_toml("inside-marker", 1).as_bytes());
    for (path, dir, _) in modes_under(&t.path("data")) {
        if !dir {
            let text = String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned();
            assert!(!text.contains("root-only-marker") && !text.contains("hunter2"), "{}: {text}", path.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_configs_do_not_hold_three_hundred_descriptors() {
    const CONFIGS: usize = 300;
    let files: Vec<(String, String)> =
        (0..CONFIGS).map(|i| (format!("config/c{i}.toml"), app_toml(&format!("c{i}"), i as i64))).collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    let t = TestWs::new(&refs);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut streams = Vec::new();
    for i in 0..CONFIGS {
        streams.push(t.ws.watch_config_changes::<App>(&format!("c{i}")).await.unwrap());
    }
    manager.flush_history().await.unwrap();
    for i in (0..CONFIGS).step_by(37) {
        assert_eq!(t.ws.history(&format!("c{i}")).unwrap().len(), 1, "config c{i} is recorded");
    }
    // Descriptors of this process open on this workspace's logs (other
    // tests run in this process too: only ours are counted).
    let ours = fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(t.dir.path()) && target.ends_with("audit.log"))
        .count();
    assert!(ours <= 16, "{ours} audit logs held open for {CONFIGS} configs");
}

/// The newest change set's configs and versions, as `(config, version)`.
fn newest_set(t: &TestWs) -> (Option<relive::ChangeSetId>, Vec<(String, u64)>) {
    let set = t.ws.change_sets(1).unwrap().pop().expect("a change set");
    (set.id, set.members.iter().map(|m| (m.config.clone(), m.entry.version)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_by_change_set_is_one_change_set_with_one_version_per_config() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1)), ("config/other.toml", &app_toml("o", 1))]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut app = t.ws.watch_config_changes::<App>("app").await.unwrap();
    let mut other = t.ws.watch_config_changes::<App>("other").await.unwrap();
    {
        let _hold = t.ws.hold().unwrap();
        save(&t, "config/app.toml", &app_toml("a", 2));
        save(&t, "config/other.toml", &app_toml("o", 2));
    }
    let set_of_both = |e: &ChangeEvent| matches!(e, ChangeEvent::ChangeSetApplied { configs, .. } if configs.iter().any(|c| c == "app" || c == "other"));
    event_until(&mut events, set_of_both).await;
    next_until(&mut app, |a| a.value == 2).await;
    next_until(&mut other, |a| a.value == 2).await;
    manager.flush_history().await.unwrap();
    let (id, members) = newest_set(&t);
    let id = id.expect("recorded with its id");
    assert_eq!(members, [("app".to_string(), 2), ("other".to_string(), 2)]);
    let entry = t.ws.history("app").unwrap().pop().unwrap();
    assert_eq!(entry.change_set, Some(id));

    // Undo it: both configs back to version 1, as one change set, one new
    // version each, sharing the rollback's id.
    let restored = t.ws.rollback_change_set(id).await.unwrap();
    assert_eq!(restored, [("app".to_string(), 1), ("other".to_string(), 1)]);
    let (applied, _) = event_until(&mut events, set_of_both).await;
    let ChangeEvent::ChangeSetApplied { id: undo, configs } = applied else { unreachable!() };
    let mut configs = configs.to_vec();
    configs.sort();
    assert_eq!(configs, ["app", "other"], "one change set, never one config alone");
    assert_eq!((app.live().load().value, other.live().load().value), (1, 1));
    manager.flush_history().await.unwrap();
    assert_eq!(newest_set(&t), (Some(undo), vec![("app".to_string(), 3), ("other".to_string(), 3)]));
    for name in ["app", "other"] {
        let last = t.ws.history(name).unwrap().pop().unwrap();
        assert_eq!((last.rollback_of, last.change_set), (Some(1), Some(undo)), "{name}");
    }

    // Back to the set's own versions, the same way.
    assert_eq!(t.ws.restore_change_set(id).await.unwrap(), [("app".to_string(), 2), ("other".to_string(), 2)]);
    assert_eq!((app.live().load().value, other.live().load().value), (2, 2));
    manager.flush_history().await.unwrap();
    let (again, members) = newest_set(&t);
    assert_eq!(members, [("app".to_string(), 4), ("other".to_string(), 4)]);
    assert!(again != Some(undo) && again != Some(id));

    let unknown: relive::ChangeSetId = "1".parse().unwrap();
    assert!(matches!(t.ws.rollback_change_set(unknown).await, Err(Error::UnknownChangeSet { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undoing_a_change_set_that_created_a_config_writes_nothing() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut app = t.ws.watch_config_changes::<App>("app").await.unwrap();
    {
        let _hold = t.ws.hold().unwrap();
        save(&t, "config/app.toml", &app_toml("a", 2));
        t.write("config/new.toml", &app_toml("n", 1));
    }
    next_until(&mut app, |a| a.value == 2).await;
    manager.flush_history().await.unwrap();
    let set = t.ws.change_sets(1).unwrap().pop().unwrap();
    assert_eq!(set.configs().collect::<Vec<_>>(), ["app", "new"]);
    let err = t.ws.rollback_change_set(set.id.unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("no applied version before change set"), "{err}");
    assert_eq!(fs::read_to_string(t.path("config/app.toml")).unwrap(), app_toml("a", 2), "nothing written");
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_written_before_change_sets_still_reads() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1)), ("config/db/main.toml", &app_toml("d", 1))]);
    // Records as relive wrote them before change sets: no `change_set`.
    forge(&t, "app", 1, "config/app.toml", &app_toml("a", 1));
    forge(&t, "db%2Fmain", 1, "config/db/main.toml", &app_toml("d", 1));
    let history = t.ws.history("app").unwrap();
    assert_eq!((history.len(), history[0].change_set), (1, None));
    // Each old version is a set of its own, without an id.
    let sets = t.ws.change_sets(10).unwrap();
    let mut alone: Vec<(Option<relive::ChangeSetId>, Vec<&str>)> =
        sets.iter().map(|s| (s.id, s.configs().collect())).collect();
    alone.sort();
    assert_eq!(alone, [(None, vec!["app"]), (None, vec!["db/main"])]);

    // New versions after them carry ids, and the old ones still roll back
    // (kept whatever their age: they were forged in January).
    let (manager, mut stream) = start(&t, HistoryConfig { max_age: None, ..Default::default() }).await;
    save(&t, "config/app.toml", &app_toml("a", 2));
    next_until(&mut stream, |a| a.value == 2).await;
    manager.flush_history().await.unwrap();
    let history = t.ws.history("app").unwrap();
    assert_eq!(history.iter().map(|e| e.change_set.is_some()).collect::<Vec<_>>(), [false, true]);
    assert_eq!(t.ws.change_sets(10).unwrap()[0].configs().collect::<Vec<_>>(), ["app"]);
    t.ws.rollback("app", 1).await.unwrap();
    assert_eq!(stream.live().load().value, 1);
}
