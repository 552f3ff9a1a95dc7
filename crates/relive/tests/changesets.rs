//! A config made of several files (a base and its environment's overlay)
//! changes as one: a deploy that rewrites both a few milliseconds apart,
//! and a rollback of both, are one version, never the mix in between.

mod common;

use std::time::Duration;

use common::*;
use relive::{ChangeEvent, HotReloadConfig, Workspace};
use serde::Deserialize;

/// The base sets `release`, the overlay `overlay_release`; a value where
/// they differ is a mix that nobody wrote.
#[derive(Debug, Deserialize)]
struct Release {
    release: u32,
    overlay_release: u32,
}

/// The workspace in environment `prod`, with a window wide enough that a
/// loaded test machine cannot stretch the writer's pause past it (the
/// default, 10 ms, is for real deploys; the mechanism is what is tested).
fn prod(t: &TestWs) -> Workspace {
    let config = HotReloadConfig { change_set_window_ms: 250, ..Default::default() };
    t.ws.clone().with_env("prod").with_config(config)
}

fn base(n: u32) -> String {
    format!("release = {n}\noverlay_release = 0\n")
}

fn overlay(n: u32) -> String {
    format!("overlay_release = {n}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_and_overlay_written_milliseconds_apart_are_one_change() {
    let t = TestWs::new(&[("config/app.toml", &base(1)), ("config/app.prod.toml", &overlay(1))]);
    let ws = prod(&t);
    let manager = ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut app = ws
        .config::<Release>("app")
        .validate(|r: &Release| {
            if r.release == r.overlay_release {
                Ok(())
            } else {
                Err(format!("a mix: {} and {}", r.release, r.overlay_release))
            }
        })
        .watch()
        .await
        .unwrap();
    for n in 2..=21 {
        // A deploy script: the base, then the overlay a moment later.
        t.write("config/app.toml", &base(n));
        std::thread::sleep(Duration::from_millis(3));
        t.write("config/app.prod.toml", &overlay(n));
        let (value, _) = next_until(&mut app, |r| r.release == n).await;
        assert_eq!(value.overlay_release, n);
    }
    // Not one rejection of a mix along the way, and each new value closed
    // by its change set, whose ids increase.
    let mut last_set = None;
    let mut changed = false;
    while let Ok(event) = events.try_recv() {
        match event {
            ChangeEvent::ValidationFailed { .. } => panic!("{event:?}"),
            ChangeEvent::ConfigChanged { .. } => changed = true,
            ChangeEvent::ChangeSetApplied { id, configs } => {
                assert!(std::mem::take(&mut changed), "a set with no ConfigChanged before it");
                assert_eq!(&*configs, ["app".to_string()]);
                assert!(last_set < Some(id), "{last_set:?} then {id}");
                last_set = Some(id);
            }
            _ => {}
        }
    }
    assert!(last_set.is_some() && !changed, "every change closed by its set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_of_a_base_and_its_overlay_is_one_version() {
    let t = TestWs::new(&[("config/app.toml", &base(1)), ("config/app.prod.toml", &overlay(1))]);
    let ws = prod(&t);
    let manager = ws.start_hot_reload().await.unwrap();
    let mut app = ws.watch_config_changes::<Release>("app").await.unwrap();
    let live = app.live();
    t.write("config/app.toml", &base(2));
    t.write("config/app.prod.toml", &overlay(2));
    next_until(&mut app, |r| r.release == 2 && r.overlay_release == 2).await;
    manager.flush_history().await.unwrap();
    let before = ws.history("app").unwrap().len();

    for round in 0..5 {
        let target = if round % 2 == 0 { 1 } else { 2 };
        let version = ws
            .history("app")
            .unwrap()
            .iter()
            .find(|e| {
                e.rollback_of.is_none() && {
                    let v = ws.version("app", e.version).unwrap();
                    v.value.as_ref().is_some_and(|v| v["release"] == target && v["overlay_release"] == target)
                }
            })
            .map(|e| e.version)
            .unwrap();
        ws.rollback("app", version).await.unwrap();
        // The rollback returns once the engine applied it.
        let now = live.load_full();
        assert_eq!((now.release, now.overlay_release), (target, target), "round {round}");
        manager.flush_history().await.unwrap();
        let history = ws.history("app").unwrap();
        assert_eq!(history.len(), before + round + 1, "round {round}: one version per rollback: {history:#?}");
        let last = history.last().unwrap();
        assert_eq!(last.rollback_of, Some(version), "round {round}");
    }
}

#[derive(Debug, Deserialize)]
struct N {
    n: u32,
}

fn n_toml(n: u32) -> String {
    format!("n = {n}\n")
}

/// Writes `rel` as an editor or `relive apply` does: a temporary file
/// renamed over it.
fn write_atomic(t: &TestWs, rel: &str, content: &str) {
    let tmp = t.path(&format!("{rel}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, t.path(rel)).unwrap();
}

/// The configs of the next change set.
async fn next_set(events: &mut tokio::sync::broadcast::Receiver<ChangeEvent>) -> Vec<String> {
    let (event, _) = event_until(events, |e| matches!(e, ChangeEvent::ChangeSetApplied { .. })).await;
    let ChangeEvent::ChangeSetApplied { configs, .. } = event else { unreachable!() };
    configs.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_copied_under_a_hold_are_one_change_set() {
    let t = TestWs::new(&[("config/a.toml", &n_toml(0)), ("config/b.toml", &n_toml(0))]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let a = t.ws.config::<N>("a").live().await.unwrap();
    let b = t.ws.config::<N>("b").live().await.unwrap();
    for n in 1..=20 {
        let hold = t.ws.hold().unwrap();
        write_atomic(&t, "config/a.toml", &n_toml(n));
        std::thread::sleep(Duration::from_millis(3));
        t.write("config/b.toml", &n_toml(n));
        std::thread::sleep(Duration::from_millis(3));
        // Held: nothing read yet, whatever the time it took.
        assert_eq!((a.load().n, b.load().n), (n - 1, n - 1), "round {n}");
        drop(hold);
        let mut set = next_set(&mut events).await;
        set.sort();
        assert_eq!(set, ["a", "b"], "round {n}");
        assert_eq!((a.load().n, b.load().n), (n, n), "round {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_hold_does_not_freeze_the_engine() {
    let t = TestWs::new(&[("config/a.toml", &n_toml(0))]);
    let ws = t.ws.clone().with_config(HotReloadConfig { hold_timeout_ms: 300, ..Default::default() });
    let _manager = ws.start_hot_reload().await.unwrap();
    let mut a = ws.config::<N>("a").watch().await.unwrap();
    // A holder that died without releasing: its hold is ignored at once.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    std::fs::write(t.path("data/hold"), format!("{dead} 1\n")).unwrap();
    t.write("config/a.toml", &n_toml(1));
    next_until(&mut a, |v| v.n == 1).await;
    // A live holder (this process) past the bound: ignored once it is.
    std::fs::write(t.path("data/hold"), format!("{} 2\n", std::process::id())).unwrap();
    let written = std::time::Instant::now();
    t.write("config/a.toml", &n_toml(2));
    next_until(&mut a, |v| v.n == 2).await;
    assert!(written.elapsed() >= Duration::from_millis(250), "the live hold was obeyed until its bound");
    // And a new hold clears the stale one.
    let hold = ws.hold().unwrap();
    drop(hold);
    assert!(!t.path("data/hold").exists());
}
