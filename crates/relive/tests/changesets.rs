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

// Groups: `server` and `proxy` must agree (the proxy targets the server's
// port). Every writer below writes both, round after round; a validator
// refuses any mix, so a mix delivered or a ValidationFailed means the two
// were not one change.

#[derive(Debug, Deserialize)]
struct Server {
    port: u32,
}

#[derive(Debug, Deserialize)]
struct Proxy {
    target: u32,
}

#[derive(Debug, Deserialize)]
struct Net {
    server: Server,
    proxy: Proxy,
}

const ROUNDS: u32 = 20;

fn server(n: u32) -> String {
    format!("port = {n}\n")
}

fn proxy(n: u32) -> String {
    format!("# the server's port\ntarget = {n}\n")
}

/// The workspace with a window wide enough for a loaded machine (see
/// [`prod`]).
fn windowed(t: &TestWs) -> Workspace {
    t.ws.clone().with_config(HotReloadConfig { change_set_window_ms: 250, ..Default::default() })
}

/// What a test watches: the group, each member on its own, and every
/// event.
struct Watched {
    net: relive::ConfigStream<Net>,
    server: relive::Live<Server>,
    proxy: relive::Live<Proxy>,
    events: tokio::sync::broadcast::Receiver<ChangeEvent>,
    _manager: relive::HotReloadManager,
}

async fn watch_net(ws: &Workspace) -> Watched {
    let manager = ws.start_hot_reload().await.unwrap();
    let events = manager.subscribe();
    let net = ws
        .group::<Net>(["server", "proxy"])
        .validate(|n: &Net| {
            if n.server.port == n.proxy.target {
                Ok(())
            } else {
                Err(relive::ValidationError::at(
                    "proxy.target",
                    format!("a mix: {} and {}", n.server.port, n.proxy.target),
                ))
            }
        })
        .watch()
        .await
        .unwrap();
    let server = ws.config::<Server>("server").live().await.unwrap();
    let proxy = ws.config::<Proxy>("proxy").live().await.unwrap();
    Watched { net, server, proxy, events, _manager: manager }
}

/// Runs the rounds: `write(n)` writes set `n`; each set is delivered (or
/// coalesced into a later one, the last always delivered) and never a mix.
async fn rounds(w: &mut Watched, write: impl Fn(u32)) {
    let mut sets = Vec::new();
    for n in 1..=ROUNDS {
        write(n);
        let (value, _) = next_until(&mut w.net, |v| v.server.port >= n).await;
        assert_eq!(value.proxy.target, value.server.port, "round {n}: a mix delivered");
        // The members' own subscribers had the set before the group's.
        assert_eq!((w.server.load().port, w.proxy.load().target), (value.server.port, value.server.port), "round {n}");
        sets.push(value.server.port);
    }
    assert_eq!(sets.last(), Some(&ROUNDS), "the last set is delivered");
    while let Ok(event) = w.events.try_recv() {
        assert!(!matches!(event, ChangeEvent::ValidationFailed { .. }), "a mix was validated: {event:?}");
    }
}

fn net_files() -> [(&'static str, String); 2] {
    [("config/server.toml", server(0)), ("config/proxy.toml", proxy(0))]
}

fn test_ws() -> TestWs {
    let files = net_files();
    TestWs::new(&[(files[0].0, &files[0].1), (files[1].0, &files[1].1)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_written_in_place_are_one_change() {
    let t = test_ws();
    let mut w = watch_net(&windowed(&t)).await;
    rounds(&mut w, |n| {
        t.write("config/server.toml", &server(n));
        t.write("config/proxy.toml", &proxy(n));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_renamed_into_place_are_one_change() {
    let t = test_ws();
    let mut w = watch_net(&windowed(&t)).await;
    rounds(&mut w, |n| {
        write_atomic(&t, "config/proxy.toml", &proxy(n));
        write_atomic(&t, "config/server.toml", &server(n));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_written_by_a_deploy_script_milliseconds_apart_are_one_change() {
    let t = test_ws();
    let mut w = watch_net(&windowed(&t)).await;
    rounds(&mut w, |n| {
        t.write("config/server.toml", &server(n));
        std::thread::sleep(Duration::from_millis(u64::from(n % 5) + 1));
        write_atomic(&t, "config/proxy.toml", &proxy(n));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_copied_under_a_hold_are_one_change() {
    let t = test_ws();
    // No window: the hold alone makes the copies one change.
    let ws = t.ws.clone().with_config(HotReloadConfig { change_set_window_ms: 0, ..Default::default() });
    let mut w = watch_net(&ws).await;
    rounds(&mut w, |n| {
        let hold = ws.hold().unwrap();
        write_atomic(&t, "config/server.toml", &server(n));
        std::thread::sleep(Duration::from_millis(2));
        write_atomic(&t, "config/proxy.toml", &proxy(n));
        drop(hold);
    })
    .await;
}

/// A ConfigMap volume as the kubelet lays it out: `name.toml` →
/// `..data/name.toml`, `..data` → `..<version>`, swapped by a rename.
/// Unix only: ConfigMap volumes are a Linux node's, and the layout needs
/// symlinks, which Windows gives only with a privilege.
#[cfg(unix)]
fn configmap_version(dir: &std::path::Path, n: u32) {
    let version = dir.join(format!("..2026_12_01_v{n}"));
    std::fs::create_dir(&version).unwrap();
    std::fs::write(version.join("server.toml"), server(n)).unwrap();
    std::fs::write(version.join("proxy.toml"), proxy(n)).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if n > 0 {
        std::fs::remove_dir_all(dir.join(format!("..2026_12_01_v{}", n - 1))).unwrap();
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_swap_of_group_members_is_one_change() {
    let t = TestWs::new(&[]);
    let config = t.path("config");
    configmap_version(&config, 0);
    for name in ["server.toml", "proxy.toml"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), config.join(name)).unwrap();
    }
    // The default window: a swap is one step, whatever the window.
    let mut w = watch_net(&t.ws).await;
    rounds(&mut w, |n| configmap_version(&config, n)).await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_swap_is_one_change_set_for_configs_not_in_a_group() {
    let t = TestWs::new(&[]);
    let config = t.path("config");
    configmap_version(&config, 0);
    for name in ["server.toml", "proxy.toml"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), config.join(name)).unwrap();
    }
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let server_live = t.ws.config::<Server>("server").live().await.unwrap();
    let proxy_live = t.ws.config::<Proxy>("proxy").live().await.unwrap();
    for n in 1..=ROUNDS {
        configmap_version(&config, n);
        let mut set = next_set(&mut events).await;
        set.sort();
        assert_eq!(set, ["proxy", "server"], "round {n}: one set for the swap");
        assert_eq!((server_live.load().port, proxy_live.load().target), (n, n), "round {n}");
    }
}

fn toml_doc(name: &str, text: String) -> relive::Document {
    relive::Document::new(format!("etcd/{name}.toml"), relive::Format::Toml, text.into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_set_is_applied_whole_or_not_at_all() {
    let t = test_ws();
    let mut w = watch_net(&t.ws).await;
    let manager = t.ws.manager().unwrap();
    let mut ids = Vec::new();
    for n in 1..=ROUNDS {
        let set = vec![
            ("server".to_string(), vec![toml_doc("server", server(n))]),
            ("proxy".to_string(), vec![toml_doc("proxy", proxy(n))]),
        ];
        ids.push(manager.publish_set(set).await.unwrap().expect("a change"));
        // Applied when publish_set returns.
        let now = w.net.live().load_full();
        assert_eq!((now.server.port, now.proxy.target), (n, n), "round {n}");
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let (value, _) = next_until(&mut w.net, |v| v.server.port == ROUNDS).await;
    assert_eq!(value.proxy.target, ROUNDS);
    while let Ok(event) = w.events.try_recv() {
        assert!(!matches!(event, ChangeEvent::ValidationFailed { .. }), "{event:?}");
    }
    // A set with one bad config is refused whole, naming it.
    let set = vec![
        ("server".to_string(), vec![toml_doc("server", server(99))]),
        ("proxy".to_string(), vec![toml_doc("proxy", "target = \"x\"\n".to_string())]),
    ];
    match manager.publish_set(set).await {
        Err(relive::Error::Config { name, error }) => {
            assert_eq!(name, "proxy");
            assert_eq!(error.line(), Some(1), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.server.load().port, ROUNDS, "the other config of the set is not applied");
    assert_eq!(w.net.live().load().server.port, ROUNDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_mix_is_refused_whole_and_located_on_the_member_the_validator_names() {
    let t = test_ws();
    let mut w = watch_net(&windowed(&t)).await;
    t.write("config/server.toml", &server(7));
    t.write("config/proxy.toml", &proxy(8));
    let (event, _) = event_until(
        &mut w.events,
        |e| matches!(e, ChangeEvent::ValidationFailed { config_name, .. } if config_name == "proxy"),
    )
    .await;
    let ChangeEvent::ValidationFailed { error, .. } = event else { unreachable!() };
    assert_eq!(error.file(), Some(t.path("config/proxy.toml").as_path()), "{error}");
    assert_eq!((error.line(), error.key()), (Some(2), Some("target")), "{error}");
    // Neither member is applied, for its own subscribers or the group's.
    assert_eq!((w.server.load().port, w.proxy.load().target), (0, 0));
    assert_eq!(w.net.live().load().server.port, 0);
    // The fix applies both.
    t.write("config/proxy.toml", &proxy(7));
    let (value, _) = next_until(&mut w.net, |v| v.server.port == 7).await;
    assert_eq!(value.proxy.target, 7);
    assert_eq!((w.server.load().port, w.proxy.load().target), (7, 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_error_in_a_member_is_located_in_that_member_and_refuses_the_group() {
    let t = test_ws();
    let mut w = watch_net(&windowed(&t)).await;
    t.write("config/server.toml", &server(3));
    t.write("config/proxy.toml", "# the server's port\ntarget = \"three\"\n");
    let (event, _) = event_until(
        &mut w.events,
        |e| matches!(e, ChangeEvent::ValidationFailed { config_name, .. } if config_name == "proxy"),
    )
    .await;
    let ChangeEvent::ValidationFailed { error, .. } = event else { unreachable!() };
    assert_eq!(error.file(), Some(t.path("config/proxy.toml").as_path()), "{error}");
    assert_eq!(error.line(), Some(2), "{error}");
    // The server's good value is not applied without its partner.
    let (event, _) = event_until(
        &mut w.events,
        |e| matches!(e, ChangeEvent::ValidationFailed { config_name, .. } if config_name == "server"),
    )
    .await;
    assert!(format!("{event:?}").contains("`proxy`"), "{event:?}");
    assert_eq!((w.server.load().port, w.net.live().load().server.port), (0, 0));
    t.write("config/proxy.toml", &proxy(3));
    next_until(&mut w.net, |v| v.server.port == 3 && v.proxy.target == 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_of_one_file_in_no_group_is_not_delayed_by_the_window() {
    let t = TestWs::new(&[
        ("config/a.toml", &n_toml(0)),
        ("config/server.toml", &server(0)),
        ("config/proxy.toml", &proxy(0)),
    ]);
    // A window far longer than any delivery: a config that waited it
    // would show.
    let window = Duration::from_secs(3);
    let ws = t.ws.clone().with_config(HotReloadConfig { change_set_window_ms: 3000, ..Default::default() });
    let mut w = watch_net(&ws).await;
    let mut a = ws.config::<N>("a").watch().await.unwrap();
    let started = std::time::Instant::now();
    t.write("config/a.toml", &n_toml(1));
    next_until(&mut a, |v| v.n == 1).await;
    assert!(started.elapsed() < window, "a single config waited the window: {:?}", started.elapsed());
    // A group member does wait it (and its partner with it).
    let started = std::time::Instant::now();
    t.write("config/server.toml", &server(1));
    t.write("config/proxy.toml", &proxy(1));
    next_until(&mut w.net, |v| v.server.port == 1).await;
    assert!(started.elapsed() >= window, "the group did not wait the window: {:?}", started.elapsed());
}
