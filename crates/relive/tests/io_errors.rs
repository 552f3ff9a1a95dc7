//! Transient read errors are retried with bounded exponential backoff; the
//! final failure is reported. Root reads any file whatever its mode, so the
//! scenarios run in a child process as `nobody`.

// Modes and `nobody` are Unix's.
#![cfg(unix)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use relive::{ChangeEvent, ConfigErrorKind};

const NOBODY: u32 = 65534;

/// Runs test `name` in a child process as `nobody` when we are root (see
/// [`rerun_as`]).
fn in_unprivileged_child(name: &str) -> bool {
    rerun_as(name, NOBODY)
}

fn set_mode(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_file_is_retried_then_reported() {
    if in_unprivileged_child("an_unreadable_file_is_retried_then_reported") {
        return;
    }
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let stream = t.ws.watch_config_changes::<App>("app").await.unwrap();
    let file = t.path("config/app.toml");

    let started;
    {
        // Paused, so that the engine's first read sees the file unreadable.
        let _paused = manager.pause();
        t.write("config/app.toml", &app_toml("locked", 2));
        set_mode(&file, 0o000);
        started = Instant::now();
    }
    let (event, _) = event_until(&mut events, |e| matches!(e, ChangeEvent::ReadFailed { .. })).await;
    let elapsed = started.elapsed();
    let ChangeEvent::ReadFailed { path, error } = event else { unreachable!() };
    assert_eq!(path, file);
    assert!(error.contains("ermission denied"), "{error}");
    // The default backoff waits 5 + 10 + 20 + ... ms, about a second in all,
    // before it gives up: a failure reported sooner was not retried.
    assert!(elapsed >= Duration::from_millis(900), "gave up after {elapsed:?}");
    let (event, _) = event_until(&mut events, |e| matches!(e, ChangeEvent::ValidationFailed { .. })).await;
    let ChangeEvent::ValidationFailed { error, .. } = event else { unreachable!() };
    assert_eq!(error.kind(), ConfigErrorKind::Io);
    assert_eq!(stream.live().load().value, 1, "the last good value stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_briefly_unreadable_file_is_delivered_once_readable() {
    if in_unprivileged_child("a_briefly_unreadable_file_is_delivered_once_readable") {
        return;
    }
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();
    let file = t.path("config/app.toml");
    {
        let _paused = manager.pause();
        t.write("config/app.toml", &app_toml("brief", 2));
        set_mode(&file, 0o000);
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    set_mode(&file, 0o644);
    let v = next(&mut stream).await;
    assert_eq!((v.name.as_str(), v.value), ("brief", 2));
    while let Ok(event) = events.try_recv() {
        assert!(!matches!(event, ChangeEvent::ReadFailed { .. } | ChangeEvent::ValidationFailed { .. }), "{event:?}");
    }
}
