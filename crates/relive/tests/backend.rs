//! Choosing the backend: `HotReloadConfig::backend` and `RELIVE_BACKEND`.

mod common;

use common::*;
use relive::{Backend, HotReloadConfig, WatcherMode};

/// What `notify` uses here.
const NATIVE_API: &str = if cfg!(target_os = "linux") {
    "inotify"
} else if cfg!(target_os = "macos") {
    "FSEvents"
} else if cfg!(windows) {
    "ReadDirectoryChangesW"
} else {
    "kqueue"
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portable_backend_runs_when_asked_and_delivers() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let config = HotReloadConfig { backend: Backend::Portable, ..Default::default() };
    let manager = t.ws.start_hot_reload_with_config(config).await.unwrap();
    match manager.watcher_mode() {
        // The root is watched alone, and config, templates and static
        // recursively (data/ not at all).
        WatcherMode::Portable { api, watches } => assert_eq!((api, watches), (NATIVE_API, 3)),
        other => panic!("expected the portable backend, got {other:?}"),
    }
    let mut events = manager.subscribe();
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();
    t.write("config/app.toml", &app_toml("b", 2));
    assert_eq!(next(&mut stream).await.value, 2);
    // A directory made after the start is watched too.
    std::fs::create_dir(t.path("config/db")).unwrap();
    let file = t.path("config/db/main.toml");
    std::fs::write(&file, app_toml("db", 1)).unwrap();
    event_until(&mut events, |e| is_file_event(e, &file)).await;
    let mut db = t.ws.watch_config_changes::<App>("db/main").await.unwrap();
    t.write("config/db/main.toml", &app_toml("db", 2));
    assert_eq!(next(&mut db).await.value, 2);
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inotify_backend_runs_when_asked_whatever_relive_backend_says() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let config = HotReloadConfig { backend: Backend::Inotify, ..Default::default() };
    let manager = t.ws.start_hot_reload_with_config(config).await.unwrap();
    assert!(matches!(manager.watcher_mode(), WatcherMode::Events { .. }), "{:?}", manager.watcher_mode());
}

/// `Backend::Auto` follows `RELIVE_BACKEND`: this runs in both passes of CI,
/// once without it (inotify) and once with `RELIVE_BACKEND=portable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_follows_relive_backend() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let portable = matches!(manager.watcher_mode(), WatcherMode::Portable { .. });
    let asked = std::env::var("RELIVE_BACKEND").as_deref() == Ok("portable");
    assert_eq!(portable, asked, "RELIVE_BACKEND={:?}: {:?}", std::env::var("RELIVE_BACKEND"), manager.watcher_mode());
}
