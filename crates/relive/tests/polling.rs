//! Polling: forced, and as the fallback when the watch limit or the limit
//! on inotify instances is reached.

mod common;

use common::*;
use relive::{HotReloadConfig, Polling, WatcherMode};

fn polling_config() -> HotReloadConfig {
    HotReloadConfig { poll_interval_ms: 20, debounce_ms: 50, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_polling_sees_writes_creates_and_deletes() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let config = HotReloadConfig { polling: Polling::Always, ..polling_config() };
    let manager = t.ws.start_hot_reload_with_config(config).await.unwrap();
    assert!(matches!(manager.watcher_mode(), WatcherMode::Polling { .. }), "{:?}", manager.watcher_mode());
    let mut events = manager.subscribe();
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();

    t.write("config/app.toml", &app_toml("polled", 2));
    assert_eq!(next(&mut stream).await.value, 2);

    let file = t.path("templates/new.html");
    std::fs::write(&file, "x").unwrap();
    let (event, _) = event_until(&mut events, |e| is_file_event(e, &file)).await;
    assert!(format!("{event:?}").contains("Created"), "{event:?}");
    std::fs::remove_file(&file).unwrap();
    let (event, _) = event_until(&mut events, |e| is_file_event(e, &file)).await;
    assert!(format!("{event:?}").contains("Deleted"), "{event:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaching_the_watch_limit_falls_back_to_polling() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let config = HotReloadConfig { watch_limit: Some(2), ..polling_config() };
    if !inotify_backend_configured("watch_limit counts inotify watches") {
        return;
    }
    let manager = t.ws.start_hot_reload_with_config(config).await.unwrap();
    match manager.watcher_mode() {
        WatcherMode::Polling { reason, .. } => assert!(reason.contains("limit of 2"), "{reason}"),
        other => panic!("expected polling, got {other:?}"),
    }
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();
    t.write("config/app.toml", &app_toml("b", 2));
    assert_eq!(next(&mut stream).await.value, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_directory_past_the_limit_switches_to_polling_without_losing_changes() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    // The root, config, templates, static: four watches fit; a fifth does not.
    let config = HotReloadConfig { watch_limit: Some(4), ..polling_config() };
    if !inotify_backend_configured("watch_limit counts inotify watches") {
        return;
    }
    let manager = t.ws.start_hot_reload_with_config(config).await.unwrap();
    assert!(matches!(manager.watcher_mode(), WatcherMode::Events { watches: 4 }), "{:?}", manager.watcher_mode());
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();

    std::fs::create_dir(t.path("config/more")).unwrap();
    eventually("the switch to polling", || matches!(manager.watcher_mode(), WatcherMode::Polling { .. })).await;
    t.write("config/app.toml", &app_toml("b", 2));
    assert_eq!(next(&mut stream).await.value, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_polling_makes_the_limit_an_error() {
    let t = TestWs::new(&[]);
    let config = HotReloadConfig { watch_limit: Some(1), polling: Polling::Never, ..Default::default() };
    if !inotify_backend_configured("watch_limit counts inotify watches") {
        return;
    }
    let error = t.ws.start_hot_reload_with_config(config).await.unwrap_err();
    assert!(error.to_string().contains("limit of 1"), "{error}");
}

/// A user of its own for the instance-limit test: the limit counts every
/// inotify instance of a user, so this test must not share one with others.
#[cfg(target_os = "linux")]
const INSTANCE_LIMIT_UID: u32 = 61_517;

// inotify instances, and their limit, are Linux's.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaching_the_inotify_instance_limit_falls_back_to_polling() {
    const NAME: &str = "reaching_the_inotify_instance_limit_falls_back_to_polling";
    // fs.inotify.max_user_instances is per user and root's is shared with
    // every other test: run as a user of its own, in a child process.
    if !inotify_backend_configured("the limit on inotify instances") {
        return;
    }
    if rerun_as(NAME, INSTANCE_LIMIT_UID) {
        return;
    }
    // Take every inotify instance this user may have.
    let mut held = Vec::new();
    loop {
        match rustix::fs::inotify::init(rustix::fs::inotify::CreateFlags::CLOEXEC) {
            Ok(fd) => held.push(fd),
            Err(e) => {
                assert_eq!(e, rustix::io::Errno::MFILE, "after {} instances", held.len());
                break;
            }
        }
    }
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let manager = t.ws.start_hot_reload_with_config(polling_config()).await.unwrap();
    match manager.watcher_mode() {
        WatcherMode::Polling { reason, .. } => assert!(reason.contains("max_user_instances"), "{reason}"),
        other => panic!("expected polling, got {other:?}"),
    }
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();
    t.write("config/app.toml", &app_toml("b", 2));
    assert_eq!(next(&mut stream).await.value, 2);
    drop(held);
}
