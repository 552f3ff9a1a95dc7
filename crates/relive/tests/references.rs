//! Secret references: `${file:PATH}` and `${env:NAME}` string values are
//! replaced by a file's content or a variable's value, are secrets
//! (redacted in events and history), and a referenced file that changes,
//! wherever it is (a Kubernetes Secret's `..data` swap included), is a new
//! value of every config that references it.

// Secrets swapped by symlink, as Kubernetes does, are Unix's; Windows runs
// the same engine code, type-checked in CI.
#![cfg(unix)]

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;

use common::*;
use relive::{ChangeEvent, ConfigErrorKind, REDACTED};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Db {
    url: String,
    user: String,
    home: String,
}

/// A Kubernetes Secret volume: `db-password` → `..data/db-password` →
/// `..<version>/db-password`, updated by swapping `..data`.
fn secret_volume(dir: &Path, version: u32, password: &str) {
    let versioned = dir.join(format!("..v{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    std::fs::write(versioned.join("db-password"), format!("{password}\n")).unwrap();
    let tmp = dir.join("..data_tmp");
    symlink(format!("..v{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join("db-password").exists() {
        symlink("..data/db-password", dir.join("db-password")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_file_outside_the_workspace_is_a_new_value_and_never_shown() {
    let secrets = tempfile::tempdir().unwrap();
    secret_volume(secrets.path(), 1, "s3cr3t-one-41");
    let password = secrets.path().join("db-password");
    let t = TestWs::new(&[(
        "config/db.toml",
        &format!("url = \"${{file:{}}}\"\nuser = \"app\"\nhome = \"${{env:PATH}}\"\n", password.display()),
    )]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut db = t.ws.watch_config_changes::<Db>("db").await.unwrap();
    assert_eq!(db.current().url, "s3cr3t-one-41", "the file's content, trailing newline trimmed");
    assert_eq!(db.current().home, std::env::var("PATH").unwrap());
    assert_eq!(db.current().user, "app");

    // Kubernetes rotates the Secret: a new version directory, `..data`
    // swapped. Every config that references it gets the new value.
    secret_volume(secrets.path(), 2, "s3cr3t-two-42");
    assert_eq!(next(&mut db).await.url, "s3cr3t-two-42");
    let (event, _) = event_until(&mut events, |e| matches!(e, ChangeEvent::ConfigChanged { .. })).await;
    let ChangeEvent::ConfigChanged { old_value, new_value, .. } = &event else { unreachable!() };
    assert_eq!(new_value["url"], REDACTED, "a referenced value is a secret whatever its key");
    assert_eq!(new_value["home"], REDACTED);
    assert_eq!(old_value["url"], REDACTED);
    assert_eq!(new_value["user"], "app");

    // History records the reference, never the value.
    manager.flush_history().await.unwrap();
    for entry in std::fs::read_dir(t.path("data/history/db/versions")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("${file:"), "{text}");
    }
    let history = t.ws.history("db").unwrap();
    assert!(history.iter().all(|e| !e.diff.to_string().contains("s3cr3t")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_reference_is_a_located_error_until_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first\n").unwrap();
    let t = TestWs::new(&[(
        "config/db.toml",
        &format!("user = \"app\"\nhome = \"h\"\nurl = \"${{file:{}}}\"\n", token.display()),
    )]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut db = t.ws.watch_config_changes::<Db>("db").await.unwrap();
    assert_eq!(db.current().url, "first");

    std::fs::remove_file(&token).unwrap();
    let (event, _) = event_until(&mut events, |e| matches!(e, ChangeEvent::ValidationFailed { .. })).await;
    let ChangeEvent::ValidationFailed { error, .. } = event else { unreachable!() };
    assert_eq!(error.kind(), ConfigErrorKind::Missing, "{error}");
    assert_eq!((error.key(), error.line()), (Some("url"), Some(3)), "{error}");
    assert!(error.to_string().contains(&token.display().to_string()), "{error}");
    assert_eq!(db.current().url, "first", "not an empty string: the last good value stays");

    std::fs::write(&token, "second\n").unwrap();
    assert_eq!(next(&mut db).await.url, "second");

    // An unset variable is an error naming it.
    t.write("config/db.toml", "user = \"app\"\nhome = \"${env:RELIVE_TEST_UNSET_VARIABLE_7}\"\nurl = \"u\"\n");
    let (event, _) = event_until(&mut events, |e| matches!(e, ChangeEvent::ValidationFailed { .. })).await;
    let ChangeEvent::ValidationFailed { error, .. } = event else { unreachable!() };
    assert!(error.to_string().contains("RELIVE_TEST_UNSET_VARIABLE_7 is not set"), "{error}");
    assert_eq!(error.line(), Some(2));
}
