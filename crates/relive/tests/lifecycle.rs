//! Starting, sharing and stopping the engine.

mod common;

use common::*;
use relive::Error;

fn engine_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|t| {
            let comm = t.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm).is_ok_and(|c| c.trim() == "relive-engine")
        })
        .count()
}

// One test, so that no other test's engine thread is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_engine_per_workspace_and_shutdown_stops_it() {
    let before = engine_threads();
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1)), ("config/other.toml", &app_toml("o", 1))]);
    assert!(t.ws.manager().is_none());
    let manager = t.ws.start_hot_reload().await.unwrap();
    assert!(t.ws.manager().is_some());
    let config = relive::HotReloadConfig::default();
    assert!(matches!(t.ws.start_hot_reload_with_config(config).await, Err(Error::AlreadyRunning)));
    // Asking for the defaults again reaches the running engine.
    let again = t.ws.start_hot_reload().await.unwrap();
    let clone = t.ws.clone();
    let mut app = clone.watch_config_changes::<App>("app").await.unwrap();
    let mut other = t.ws.watch_config_changes::<App>("other").await.unwrap();
    let mut app2 = app.subscribe();
    // The portable backend's watcher thread (notify's) is started from the
    // engine's and carries its name until it names itself, a moment later.
    eventually("one watcher serves every stream", || engine_threads() == before + 1).await;
    drop(again);

    t.write("config/app.toml", &app_toml("a", 2));
    assert_eq!(next(&mut app).await.value, 2);
    assert_eq!(next(&mut app2).await.value, 2);
    t.write("config/other.toml", &app_toml("o", 2));
    assert_eq!(next(&mut other).await.value, 2);

    let live = app.live();
    manager.shutdown().await.unwrap();
    assert_eq!(engine_threads(), before, "the engine thread is gone");
    assert!(app.next().await.is_none(), "streams end");
    assert_eq!(live.load().value, 2, "Live keeps the last value");

    // A stream asked for after shutdown starts a new engine.
    let mut again = t.ws.watch_config_changes::<App>("app").await.unwrap();
    t.write("config/app.toml", &app_toml("a", 3));
    assert_eq!(next(&mut again).await.value, 3);
}
