//! Invalid input is never delivered, errors point at file, line and column,
//! and the last good value stays live.

mod common;

use std::fs;
use std::sync::Arc;

use common::*;
use relive::{ChangeEvent, ConfigErrorKind, Document, Error, Format, HotReloadConfig, ValidationError, Workspace};
use serde::Deserialize;

fn validation_error(event: &ChangeEvent) -> Option<Arc<relive::ConfigError>> {
    match event {
        ChangeEvent::ValidationFailed { error, .. } => Some(Arc::clone(error)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syntax_error_keeps_the_last_good_value_and_names_file_line_column() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("good", 1))]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();
    let live = stream.live();

    t.write("config/app.toml", "name = \"bad\"\nvalue = 2\nthis is not toml\n");
    let (event, _) = event_until(&mut events, |e| validation_error(e).is_some()).await;
    let error = validation_error(&event).unwrap();
    assert_eq!(error.kind(), ConfigErrorKind::Syntax);
    assert_eq!(error.file(), Some(t.path("config/app.toml").as_path()));
    assert_eq!(error.line(), Some(3), "{error}");
    assert!(error.column().is_some(), "{error}");
    assert!(error.to_string().starts_with(&format!("{}:3:", t.path("config/app.toml").display())), "{error}");
    assert_eq!(live.load().name, "good", "the last good value stays live");

    t.write("config/app.toml", &app_toml("fixed", 3));
    let v = next(&mut stream).await;
    assert_eq!((v.name.as_str(), v.value), ("fixed", 3), "the broken value was never delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_errors_point_at_the_offending_key() {
    let t = TestWs::new(&[("config/app.yaml", "name: good\nvalue: 1\n")]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let stream = t.ws.watch_config_changes::<App>("app").await.unwrap();

    t.write("config/app.yaml", "name: good\nvalue: not-a-number\n");
    let (event, _) = event_until(&mut events, |e| validation_error(e).is_some()).await;
    let error = validation_error(&event).unwrap();
    assert_eq!(error.kind(), ConfigErrorKind::Type);
    assert_eq!(error.key(), Some("value"));
    assert_eq!((error.line(), error.column()), (Some(2), Some(1)), "{error}");
    assert!(error.message().contains("invalid type"), "{error}");
    assert_eq!(stream.live().load().value, 1);
}

#[derive(Debug, Deserialize)]
struct Server {
    port: u16,
    workers: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validators_reject_and_their_key_is_located_in_the_overlay_that_set_it() {
    let t = TestWs::new(&[
        ("config/server.toml", "port = 8080\nworkers = 4\n"),
        ("config/server.production.json", "{\n  \"workers\": 8\n}\n"),
    ]);
    let ws = t.ws.clone().with_env("production");
    let manager = ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut stream = ws
        .config::<Server>("server")
        .validate(
            |s: &Server| {
                if s.workers == 0 { Err(ValidationError::at("workers", "must be at least 1")) } else { Ok(()) }
            },
        )
        .watch()
        .await
        .unwrap();
    assert_eq!((stream.current().port, stream.current().workers), (8080, 8), "the overlay is merged over the base");

    t.write("config/server.production.json", "{\n  \"workers\": 0\n}\n");
    let (event, _) = event_until(&mut events, |e| validation_error(e).is_some()).await;
    let error = validation_error(&event).unwrap();
    assert_eq!(error.kind(), ConfigErrorKind::Invalid);
    assert_eq!(error.file(), Some(t.path("config/server.production.json").as_path()));
    assert_eq!((error.line(), error.column()), (Some(2), Some(3)), "{error}");
    assert!(error.to_string().contains("must be at least 1"), "{error}");

    // While the overlay is broken, a base change cannot apply either.
    t.write("config/server.toml", "port = 9090\nworkers = 1\n");
    event_until(&mut events, |e| validation_error(e).is_some()).await;
    assert_eq!(stream.live().load().port, 8080);
    // Fixing the overlay applies the merge of both files.
    t.write("config/server.production.json", "{\"workers\": 8}");
    let v = next(&mut stream).await;
    assert_eq!((v.port, v.workers), (9090, 8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_accepts_a_value_or_none_gets_it() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let lenient = t.ws.config::<App>("app").watch().await.unwrap();
    let strict = t.ws.config::<App>("app").validate(|a: &App| if a.value > 10 { Err("too big") } else { Ok(()) });
    let strict = strict.watch().await.unwrap();

    t.write("config/app.toml", &app_toml("a", 11));
    event_until(&mut events, |e| validation_error(e).is_some()).await;
    assert_eq!(lenient.live().load().value, 1, "the lenient subscriber did not get a value the strict one rejected");
    assert_eq!(strict.live().load().value, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_at_startup_is_an_error_unless_a_default_is_given() {
    let t = TestWs::new(&[("config/app.json", "{\"name\": \"x\",\n \"value\": }")]);
    match t.ws.watch_config_changes::<App>("app").await {
        Err(Error::Config { name, error }) => {
            assert_eq!(name, "app");
            assert_eq!(error.kind(), ConfigErrorKind::Syntax);
            assert_eq!(error.line(), Some(2), "{error}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    let missing = t.ws.watch_config_changes::<App>("nope").await.unwrap_err();
    assert!(missing.to_string().contains("no file for config `nope`"), "{missing}");

    let default = App { name: "default".into(), value: -1, extra: None };
    let mut stream = t.ws.config::<App>("app").default_value(default).watch().await.unwrap();
    assert_eq!(stream.current().name, "default");
    t.write("config/app.json", r#"{"name": "first good", "value": 1}"#);
    assert_eq!(next(&mut stream).await.name, "first good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_base_files_in_different_formats_is_an_error_that_says_so() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1)), ("config/app.json", r#"{"name":"b","value":2}"#)]);
    let error = t.ws.watch_config_changes::<App>("app").await.unwrap_err();
    let Error::Config { error, .. } = &error else { panic!("{error:?}") };
    assert_eq!(error.kind(), ConfigErrorKind::Ambiguous);
    assert!(error.message().contains("app.json") && error.message().contains("app.toml"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_redacted_in_events() {
    let t = TestWs::new(&[("config/db.toml", "host = \"h\"\npassword = \"hunter2\"\n[service]\napi_token = \"t0\"\n")]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    t.write("config/db.toml", "host = \"h2\"\npassword = \"hunter3\"\n[service]\napi_token = \"t1\"\n");
    let (event, _) = event_until(&mut events, |e| matches!(e, ChangeEvent::ConfigChanged { .. })).await;
    let ChangeEvent::ConfigChanged { old_value, new_value, .. } = event else { unreachable!() };
    assert_eq!(new_value["host"], "h2");
    assert_eq!(new_value["password"], relive::REDACTED);
    assert_eq!(new_value["service"]["api_token"], relive::REDACTED);
    assert_eq!(old_value["password"], relive::REDACTED);
    let shown = format!("{old_value:?}{new_value:?}");
    assert!(!shown.contains("hunter") && !shown.contains("t0") && !shown.contains("\"t1\""), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_on_change_keeps_the_previous_file() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("v1", 1))]);
    let config = HotReloadConfig { backup_on_change: true, ..Default::default() };
    let _manager = t.ws.start_hot_reload_with_config(config).await.unwrap();
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();
    t.write("config/app.toml", &app_toml("v2", 2));
    next(&mut stream).await;
    let dir = t.path("data/backups/configs");
    let backups: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let name = backups[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(name.ends_with("_app.toml") && name.starts_with("20"), "{name}");
    assert_eq!(fs::read_to_string(&backups[0]).unwrap(), app_toml("v1", 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_sources_feed_the_same_pipeline() {
    let t = TestWs::new(&[]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let doc = |s: &str| Document::new("etcd:/svc/app", Format::Json, s.as_bytes().to_vec());
    assert!(manager.publish("app", vec![doc(r#"{"name": "remote", "value": 1}"#)]).await.unwrap());
    assert!(
        !manager.publish("app", vec![doc(r#"{"value": 1, "name": "remote"}"#)]).await.unwrap(),
        "the same value again changes nothing"
    );
    let stream = t.ws.config::<App>("app").validate(|a: &App| if a.value < 0 { Err("negative") } else { Ok(()) });
    let mut stream = { stream.watch() }.await.unwrap();
    assert_eq!(stream.current().name, "remote");

    let rejected = manager.publish("app", vec![doc(r#"{"name": "remote", "value": -1}"#)]).await.unwrap_err();
    assert!(rejected.to_string().contains("negative"), "{rejected}");
    let broken = manager.publish("app", vec![doc("{\"name\": ")]).await.unwrap_err();
    assert!(broken.to_string().contains("etcd:/svc/app:1:"), "{broken}");
    assert_eq!(stream.live().load().value, 1);

    // A subscriber that comes later and rejects the live value gets an error
    // located in the published document.
    let strict = t
        .ws
        .config::<App>("app")
        .validate(|a: &App| if a.value < 2 { Err(relive::ValidationError::at("value", "too small")) } else { Ok(()) });
    let error = strict.watch().await.unwrap_err();
    let Error::Config { error, .. } = &error else { panic!("{error:?}") };
    assert_eq!(error.file(), Some(std::path::Path::new("etcd:/svc/app")), "{error}");
    // The live value came from the latest accepted document, `{"value": 1, ...}`.
    assert_eq!((error.line(), error.column()), (Some(1), Some(2)), "{error}");
    assert_eq!(manager.workspace().root(), t.ws.root());

    let overlay = Document::new("etcd:/svc/app.production", Format::Yaml, b"value: 5\n".to_vec());
    manager.publish("app", vec![doc(r#"{"name": "remote", "value": 1}"#), overlay]).await.unwrap();
    let v = next(&mut stream).await;
    assert_eq!((v.name.as_str(), v.value), ("remote", 5));
}

#[test]
fn discover_walks_up_to_a_workspace() {
    let t = TestWs::new(&[]);
    let nested = t.path("templates/deep/er");
    fs::create_dir_all(&nested).unwrap();
    // Run in a child process: the current directory and environment are
    // process-wide.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "discover_child", "--nocapture"])
        .current_dir(&nested)
        .env("RELIVE_DISCOVER_EXPECT", t.dir.path())
        .env_remove("RELIVE_WORKSPACE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn discover_child() {
    let Some(expected) = std::env::var_os("RELIVE_DISCOVER_EXPECT") else { return };
    let ws = Workspace::discover().unwrap();
    assert_eq!(ws.root(), std::path::Path::new(&expected));
}
