//! Secrets through the whole pipeline: a SOPS file encrypted by the real
//! `sops` with a key from the real `age-keygen` is decrypted before it is
//! merged, validated and typed like any config; its encrypted values are
//! secrets whatever their keys are called; nothing relive writes or shows
//! holds them in clear.
//!
//! The binaries must be on PATH (`scripts/install-deps` installs them); the
//! tests fail, not skip, without them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use relive::{ChangeEvent, ConfigErrorKind, HotReloadConfig, REDACTED, Workspace};
use serde::Deserialize;

/// `sops encrypt` of `plain` (named `name`, for its format) to `key`.
fn encrypt(name: &str, plain: &str, key: &Key) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), plain).unwrap();
    let out = Command::new(binary("sops"))
        .current_dir(dir.path())
        .env("SOPS_DISABLE_VERSION_CHECK", "1")
        .env_remove("SOPS_AGE_KEY")
        .env_remove("SOPS_AGE_KEY_FILE")
        .env("XDG_CONFIG_HOME", dir.path().join("none"))
        .args(["encrypt", "--age", &key.recipient, name])
        .output()
        .unwrap();
    assert!(out.status.success(), "sops encrypt failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The database config: `opaque` and `replicas` match no secret key name,
/// but they are encrypted, so they are secrets.
#[derive(Debug, Deserialize, PartialEq)]
struct Db {
    host: String,
    opaque: String,
    replicas: Vec<String>,
}

const CLEAR_1: &str = "zq-clear-one-7781";
const CLEAR_2: &str = "zq-clear-two-5519";

fn db_yaml(opaque: &str) -> String {
    format!("host: db.internal\nopaque: {opaque}\nreplicas:\n  - r1-{opaque}\n")
}

fn workspace_with(key: &Key, files: &[(&str, &str)]) -> (TestWs, Workspace) {
    let t = TestWs::new(files);
    let config = HotReloadConfig { age_key_files: vec![key.file.clone()], ..Default::default() };
    let ws = t.ws.clone().with_config(config);
    (t, ws)
}

/// Every file under `dir`, read whole.
fn everything_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sops_file_is_decrypted_typed_and_reloaded_and_its_values_are_secrets() {
    let key = Key::generate();
    let (t, ws) = workspace_with(&key, &[("config/db.yaml", &encrypt("db.yaml", &db_yaml(CLEAR_1), &key))]);
    let manager = ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut db = ws.watch_config_changes::<Db>("db").await.unwrap();
    assert_eq!(db.current().opaque, CLEAR_1, "decrypted before it is merged and typed");
    assert_eq!(db.current().host, "db.internal");

    // An edit while running (what `sops edit` leaves behind): one reload.
    t.write("config/db.yaml", &encrypt("db.yaml", &db_yaml(CLEAR_2), &key));
    assert_eq!(next(&mut db).await.opaque, CLEAR_2);
    let (event, _) = event_until(&mut events, |e| matches!(e, ChangeEvent::ConfigChanged { .. })).await;
    let ChangeEvent::ConfigChanged { old_value, new_value, .. } = &event else { unreachable!() };
    // Encrypted values are secrets whatever their keys are called.
    assert_eq!(new_value["opaque"], REDACTED);
    assert_eq!(new_value["replicas"][0], REDACTED);
    assert_eq!(old_value["opaque"], REDACTED);
    let shown = format!("{event:?}");
    for clear in [CLEAR_1, CLEAR_2] {
        assert!(!shown.contains(clear), "{clear} in the event: {shown}");
    }

    manager.flush_history().await.unwrap();
    // History keeps the files as they are on disk: encrypted.
    let history = ws.history("db").unwrap();
    assert_eq!(history.len(), 2);
    let diff = history[1].diff.to_string();
    assert!(diff.contains(REDACTED), "{diff}");
    for (path, bytes) in everything_under(&t.path("data")) {
        let text = String::from_utf8_lossy(&bytes);
        for clear in [CLEAR_1, CLEAR_2] {
            assert!(!text.contains(clear), "{clear} in clear in {}", path.display());
        }
    }
    let version = ws.version("db", 2).unwrap();
    assert!(String::from_utf8_lossy(version.documents[0].bytes()).contains("ENC[AES256_GCM,"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_file_or_a_missing_key_is_rejected_and_the_last_good_value_stays() {
    let key = Key::generate();
    let good = encrypt("db.yaml", &db_yaml(CLEAR_1), &key);
    let (t, ws) = workspace_with(&key, &[("config/db.yaml", &good)]);
    let manager = ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let db = ws.watch_config_changes::<Db>("db").await.unwrap();

    // One byte of the encrypted `opaque` changed: its tag fails.
    let line = good.lines().find(|l| l.starts_with("opaque: ENC[")).unwrap();
    let data = line.find("data:").unwrap() + 5;
    let mut tampered_line = line.to_string();
    let flipped = if &line[data..data + 1] == "A" { "B" } else { "A" };
    tampered_line.replace_range(data..data + 1, flipped);
    t.write("config/db.yaml", &good.replace(line, &tampered_line));
    let (event, _) = event_until(&mut events, |e| matches!(e, ChangeEvent::ValidationFailed { .. })).await;
    let ChangeEvent::ValidationFailed { error, .. } = event else { unreachable!() };
    assert_eq!(error.kind(), ConfigErrorKind::Decrypt, "{error}");
    assert_eq!(error.key(), Some("opaque"), "{error}");
    assert_eq!(error.file(), Some(t.path("config/db.yaml").as_path()));
    let expected_line = good.lines().position(|l| l == line).unwrap() + 1;
    assert_eq!(error.line(), Some(expected_line), "{error}");
    assert_eq!(db.current().opaque, CLEAR_1, "the last good value stays");

    // Encrypted to somebody else: the error names who can open it.
    let other = Key::generate();
    t.write("config/db.yaml", &encrypt("db.yaml", &db_yaml(CLEAR_2), &other));
    let (event, _) = event_until(&mut events, |e| matches!(e, ChangeEvent::ValidationFailed { .. })).await;
    let ChangeEvent::ValidationFailed { error, .. } = event else { unreachable!() };
    assert!(error.to_string().contains(&other.recipient), "{error}");
    assert_eq!(db.current().opaque, CLEAR_1);
}

#[derive(Debug, Deserialize)]
struct Typed {
    #[allow(dead_code)]
    opaque: u16,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_about_a_secret_never_quotes_it() {
    let key = Key::generate();
    let (_t, ws) = workspace_with(&key, &[("config/db.yaml", &encrypt("db.yaml", &db_yaml(CLEAR_1), &key))]);
    // `opaque` is a string that is not a u16: serde's message would quote it.
    let error = ws.watch_config_changes::<Typed>("db").await.unwrap_err().to_string();
    assert!(!error.contains(CLEAR_1), "{error}");
    assert!(error.contains("invalid type") && error.contains("opaque"), "{error}");
    // A secret by name, in clear: the same.
    let t = TestWs::new(&[("config/app.toml", "db_password = \"hunter2-zz\"\n")]);
    #[derive(Debug, Deserialize)]
    struct App {
        #[allow(dead_code)]
        db_password: u32,
    }
    let error = t.ws.watch_config_changes::<App>("app").await.unwrap_err().to_string();
    assert!(!error.contains("hunter2"), "{error}");
}

#[test]
fn a_one_shot_load_decrypts_and_shows_the_value_redacted() {
    let key = Key::generate();
    let (_t, ws) = workspace_with(&key, &[("config/db.yaml", &encrypt("db.yaml", &db_yaml(CLEAR_1), &key))]);
    let loaded = ws.load("db").unwrap();
    assert_eq!(loaded.value()["opaque"], CLEAR_1);
    let shown = loaded.redacted_value().to_string();
    assert!(!shown.contains(CLEAR_1), "{shown}");
    // sops encrypts every value unless told otherwise: all are secrets.
    assert_eq!(loaded.secret_paths(), ["/host", "/opaque", "/replicas/0"]);
}
