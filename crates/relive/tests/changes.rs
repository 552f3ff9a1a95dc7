//! Files change the way editors, deploy tools and Kubernetes really change
//! them; each scenario must deliver exactly the final content.

// Symlinks as editors and Kubernetes make them are Unix's (Windows needs
// privileges for them); Windows runs the same engine code, type-checked in
// CI, and the portable backend is run on Linux.
#![cfg(unix)]

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::symlink;
use std::time::Duration;

use common::*;
use relive::{ChangeEvent, ChangeType, HotReloadConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_write_delivers_the_new_value() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();
    assert_eq!(stream.current().value, 1);

    // open(O_TRUNC), write, close: what `echo > file` and most programs do.
    t.write("config/app.toml", &app_toml("b", 2));
    let v = next(&mut stream).await;
    assert_eq!((v.name.as_str(), v.value), ("b", 2));
    assert_eq!(stream.current().value, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_save_is_reported_as_a_modification() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();

    for i in 2..5 {
        let tmp = t.path(&format!("config/.app.toml.{i}.tmp"));
        fs::write(&tmp, app_toml("saved", i)).unwrap();
        fs::rename(&tmp, t.path("config/app.toml")).unwrap();
        let v = next(&mut stream).await;
        assert_eq!(v.value, i);
        let (event, _) = event_until(&mut events, |e| is_file_event(e, &t.path("config/app.toml"))).await;
        assert!(
            matches!(event, ChangeEvent::FileChanged { change_type: ChangeType::Modified, .. }),
            "atomic save should be Modified, got {event:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vim_backup_and_rename_is_one_modification() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();

    // vim with `backupcopy=no`: rename the original to a backup, write a new
    // file under the original name, delete the backup.
    let file = t.path("config/app.toml");
    let backup = t.path("config/app.toml~");
    fs::rename(&file, &backup).unwrap();
    fs::write(&file, app_toml("vim", 2)).unwrap();
    fs::remove_file(&backup).unwrap();

    let v = next(&mut stream).await;
    assert_eq!(v.value, 2);
    let (event, before) = event_until(&mut events, |e| is_file_event(e, &file)).await;
    assert!(matches!(event, ChangeEvent::FileChanged { change_type: ChangeType::Modified, .. }), "{event:?}");
    assert!(!before.iter().any(|e| is_file_event(e, &file)), "no separate delete/create: {before:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetbrains_safe_write_delivers_the_final_content() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();

    let file = t.path("config/app.toml");
    let tmp = t.path("config/app.toml___jb_tmp___");
    let old = t.path("config/app.toml___jb_old___");
    fs::write(&tmp, app_toml("jb", 2)).unwrap();
    fs::rename(&file, &old).unwrap();
    fs::rename(&tmp, &file).unwrap();
    fs::remove_file(&old).unwrap();

    let v = next(&mut stream).await;
    assert_eq!((v.name.as_str(), v.value), ("jb", 2));
    let (event, _) = event_until(&mut events, |e| is_file_event(e, &file)).await;
    assert!(matches!(event, ChangeEvent::FileChanged { change_type: ChangeType::Modified, .. }), "{event:?}");
}

/// Lays out a ConfigMap volume the way the kubelet does and returns a
/// function that publishes version `n`.
fn configmap_update(dir: &std::path::Path, n: i64) {
    let version = dir.join(format!("..2026_01_01_v{n}"));
    fs::create_dir(&version).unwrap();
    fs::write(version.join("app.json"), format!(r#"{{"name": "cm", "value": {n}}}"#)).unwrap();
    let tmp = dir.join("..data_tmp");
    symlink(version.file_name().unwrap(), &tmp).unwrap();
    fs::rename(&tmp, dir.join("..data")).unwrap();
    if n > 1 {
        fs::remove_dir_all(dir.join(format!("..2026_01_01_v{}", n - 1))).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_configmap_symlink_swap() {
    let t = TestWs::new(&[]);
    let config = t.path("config");
    configmap_update(&config, 1);
    symlink("..data/app.json", config.join("app.json")).unwrap();

    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();
    assert_eq!(stream.current().value, 1);

    for n in 2..=4 {
        configmap_update(&config, n);
        let v = next(&mut stream).await;
        assert_eq!(v.value, n, "ConfigMap version {n}");
    }
    let (event, _) = event_until(&mut events, |e| is_file_event(e, &config.join("app.json"))).await;
    assert!(matches!(event, ChangeEvent::FileChanged { change_type: ChangeType::Modified, .. }), "{event:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_then_recreate_repeatedly_keeps_watching() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 0))]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();
    let file = t.path("config/app.toml");

    for i in 1..=4 {
        fs::remove_file(&file).unwrap();
        let (deleted, _) = event_until(&mut events, |e| is_file_event(e, &file)).await;
        assert!(matches!(deleted, ChangeEvent::FileChanged { change_type: ChangeType::Deleted, .. }), "{deleted:?}");
        // The last good value stays live while the file is gone.
        assert_eq!(stream.live().load().value, i - 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        fs::write(&file, app_toml("again", i)).unwrap();
        let v = next(&mut stream).await;
        assert_eq!(v.value, i);
        let (created, _) = event_until(&mut events, |e| is_file_event(e, &file)).await;
        assert!(matches!(created, ChangeEvent::FileChanged { change_type: ChangeType::Created, .. }), "{created:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_config_dir_deleted_and_recreated() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();
    let file = t.path("config/app.toml");

    for i in 2..=3 {
        fs::remove_dir_all(t.path("config")).unwrap();
        // The engine has seen the deletion: the value must still be there.
        event_until(&mut events, |e| {
            is_file_event(e, &file) && matches!(e, ChangeEvent::FileChanged { change_type: ChangeType::Deleted, .. })
        })
        .await;
        assert_eq!(stream.live().load().value, i - 1, "last good value survives the deletion");
        fs::create_dir(t.path("config")).unwrap();
        t.write("config/app.toml", &app_toml("back", i));
        let (v, _) = next_until(&mut stream, |v| v.value == i).await;
        assert_eq!(v.name, "back");
    }
}

/// A writer writes the first half, pauses with the file open, then finishes.
/// The half is a valid document that deserializes (the cut is at a line
/// boundary and the missing key has a default), so only waiting for the
/// writer to close protects us.
async fn torn_write(file_name: &str, first: &str, rest: &str, expected_extra: &str) {
    let initial = if file_name.ends_with(".toml") { app_toml("a", 1) } else { "name: a\nvalue: 1\n".to_string() };
    let rel = format!("config/{file_name}");
    let t = TestWs::new(&[(&rel, &initial)]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();

    let mut f = OpenOptions::new().write(true).truncate(true).open(t.path(&rel)).unwrap();
    f.write_all(first.as_bytes()).unwrap();
    f.flush().unwrap();
    // The pause is part of the scenario, not an assertion: during it the
    // half-written file is on disk and complete-looking.
    tokio::time::sleep(Duration::from_millis(400)).await;
    f.write_all(rest.as_bytes()).unwrap();
    drop(f);

    if !inotify_backend(&manager, "a writer that pauses mid-file with the file open is waited for (its close)") {
        // The portable backend sees no closes: the half file may be
        // delivered during the pause (a known problem, in the crate docs),
        // but the whole file must follow it.
        let (v, _) = next_until(&mut stream, |v| v.extra.as_deref() == Some(expected_extra)).await;
        assert_eq!(v.value, 2);
        return;
    }
    let v = next(&mut stream).await;
    assert_eq!(v.extra.as_deref(), Some(expected_extra), "the first value delivered must be the whole file");
    assert_eq!(v.value, 2);
    // And nothing was delivered or rejected for the half file.
    let (_, before) = event_until(&mut events, |e| matches!(e, ChangeEvent::ConfigChanged { .. })).await;
    assert!(!before.iter().any(|e| matches!(e, ChangeEvent::ValidationFailed { .. })), "{before:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_toml_write_is_never_delivered() {
    torn_write("app.toml", "name = \"half\"\nvalue = 2\n", "extra = \"whole\"\n", "whole").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_yaml_write_is_never_delivered() {
    torn_write("app.yaml", "name: half\nvalue: 2\n", "extra: whole\n", "whole").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_never_closes_is_read_after_the_write_timeout() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let config = HotReloadConfig { write_timeout_ms: 300, ..Default::default() };
    let manager = t.ws.start_hot_reload_with_config(config).await.unwrap();
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();

    let mut f = OpenOptions::new().write(true).truncate(true).open(t.path("config/app.toml")).unwrap();
    f.write_all(app_toml("open", 2).as_bytes()).unwrap();
    f.flush().unwrap();
    let started = std::time::Instant::now();
    let v = next(&mut stream).await;
    assert_eq!(v.value, 2);
    // The portable backend sees no closes, so it never waits for one: it
    // reads after its quiet window, and the value above is all it promises.
    if inotify_backend(&manager, "an open writer is waited for until write_timeout_ms") {
        assert!(started.elapsed() >= Duration::from_millis(250), "read before the timeout: {:?}", started.elapsed());
    }
    drop(f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_writes_delivers_the_last_value_and_far_fewer_deliveries() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("burst", 0))]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();

    // Collect deliveries as they happen, so that the receiver never lags.
    let collector = tokio::spawn(async move {
        let mut delivered = Vec::new();
        loop {
            match events.recv().await {
                Ok(ChangeEvent::ConfigChanged { new_value, .. }) => {
                    let value = new_value["value"].as_i64().unwrap();
                    delivered.push(value);
                    if value == 1000 {
                        return delivered;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("event receiver failed: {e}"),
            }
        }
    });
    let file = t.path("config/app.toml");
    let writer = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        for i in 1..=1000 {
            fs::write(&file, app_toml("burst", i)).unwrap();
        }
        started.elapsed()
    });
    let burst = writer.join().unwrap();
    let (last, _) = next_until(&mut stream, |v| v.value == 1000).await;
    assert_eq!(last.name, "burst");
    let delivered = tokio::time::timeout(TIMEOUT, collector).await.unwrap().unwrap();

    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "values go forward only: {delivered:?}");
    assert_eq!(delivered.last(), Some(&1000));
    // A file is read at most once a millisecond while it is being written
    // (plus the first change, read at once): writes that come faster than
    // that are merged. On a machine too loaded to write faster, each write
    // is a change of its own, and that is right too.
    let bound = burst.as_millis() as usize + 3;
    assert!(delivered.len() <= bound, "{} deliveries for 1000 writes in {burst:?}", delivered.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_op_save_delivers_nothing() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1)), ("templates/sentinel.html", "0")]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();
    let file = t.path("config/app.toml");
    let sentinel = t.path("templates/sentinel.html");

    // The engine handles changes in order, so once the sentinel's change is
    // reported, the save before it has been handled too.
    t.write("config/app.toml", &app_toml("a", 1));
    t.write("templates/sentinel.html", "1");
    let (_, before) = event_until(&mut events, |e| is_file_event(e, &sentinel)).await;
    assert!(before.is_empty(), "a byte-identical save reports nothing: {before:#?}");

    // The same data in another layout is a file change, not a config change.
    t.write("config/app.toml", "# comment\nvalue = 1\nname = \"a\"\n");
    t.write("templates/sentinel.html", "2");
    let (_, before) = event_until(&mut events, |e| is_file_event(e, &sentinel)).await;
    assert!(
        matches!(before.as_slice(), [ChangeEvent::FileChanged { path, change_type: ChangeType::Modified, .. }] if *path == file),
        "{before:#?}"
    );

    t.write("config/app.toml", &app_toml("a", 2));
    let v = next(&mut stream).await;
    assert_eq!(v.value, 2, "the first delivery is the real change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_overflow_rescans_and_delivers_what_changed() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1)), ("templates/noise.html", "0")]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();
    let max_queued: usize =
        fs::read_to_string("/proc/sys/fs/inotify/max_queued_events").unwrap().trim().parse().unwrap();

    {
        let _paused = manager.pause();
        // Each write queues a modify and a close: enough to overflow the
        // kernel queue, after which further events are dropped...
        let noise = t.path("templates/noise.html");
        for i in 0..max_queued {
            fs::write(&noise, i.to_string()).unwrap();
        }
        // ...including this one, which only a rescan can find.
        t.write("config/app.toml", &app_toml("after-overflow", 2));
    }
    let v = next(&mut stream).await;
    assert_eq!((v.name.as_str(), v.value), ("after-overflow", 2));
    let noise = t.path("templates/noise.html");
    let (event, _) = event_until(&mut events, |e| is_file_event(e, &noise)).await;
    assert!(matches!(event, ChangeEvent::FileChanged { change_type: ChangeType::Modified, .. }), "{event:?}");
    assert_eq!(fs::read_to_string(&noise).unwrap(), (max_queued - 1).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_deleted_and_renamed_files_are_reported_as_such() {
    let t = TestWs::new(&[("templates/a.html", "a")]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();

    let b = t.path("templates/b.html");
    fs::write(&b, "b").unwrap();
    let (e, _) = event_until(&mut events, |e| is_file_event(e, &b)).await;
    assert!(matches!(e, ChangeEvent::FileChanged { change_type: ChangeType::Created, .. }), "{e:?}");

    let c = t.path("templates/c.html");
    fs::rename(&b, &c).unwrap();
    let (e, _) = event_until(&mut events, |e| is_file_event(e, &c)).await;
    match e {
        ChangeEvent::FileChanged { change_type: ChangeType::Renamed { from }, .. } => assert_eq!(from, b),
        other => panic!("expected a rename, got {other:?}"),
    }

    fs::remove_file(&c).unwrap();
    let (e, before) = event_until(&mut events, |e| is_file_event(e, &c)).await;
    assert!(matches!(e, ChangeEvent::FileChanged { change_type: ChangeType::Deleted, .. }), "{e:?}");
    assert!(!before.iter().any(|e| is_file_event(e, &b)), "the rename source is not reported again: {before:?}");
}

/// Regression: `open(O_TRUNC)` empties a file before the kernel queues its
/// event, so a read during a burst could see an empty file that the fence
/// did not catch, and a type whose fields all have defaults accepted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_truncating_burst_never_delivers_an_empty_file() {
    #[derive(Debug, serde::Deserialize)]
    #[serde(default)]
    struct Defaults {
        counter: u64,
        workers: u32,
    }
    impl Default for Defaults {
        fn default() -> Self {
            Defaults { counter: 0, workers: 1 }
        }
    }
    let doc = |n: u64| format!("counter = {n}\nworkers = 8\n");
    let t = TestWs::new(&[("config/app.toml", &doc(1))]);
    let mut stream = t.ws.config::<Defaults>("app").watch().await.unwrap();
    for round in 0..3u64 {
        let path = t.path("config/app.toml");
        let base = round * 1000;
        let writer = std::thread::spawn(move || {
            for n in 1..=1000 {
                fs::write(&path, doc(base + n)).unwrap();
            }
        });
        let mut delivered = 0;
        loop {
            let v = next(&mut stream).await;
            delivered += 1;
            assert_eq!(v.workers, 8, "a torn (truncated) file was delivered: {v:?}");
            if v.counter == base + 1000 {
                break;
            }
        }
        writer.join().unwrap();
        assert!(delivered <= 1000);
    }
}
