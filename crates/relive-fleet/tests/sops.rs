//! An encrypted document pushed to etcd stays encrypted there: each
//! instance decrypts it with its own key (SOPS, age), and one without the
//! key rejects it, naming who can open it. Uses the real `sops` and
//! `age-keygen` (scripts/install-deps installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Etcd, eventually};
use relive::{Format, HotReloadConfig, Workspace};
use relive_fleet::layout::encode_config;
use relive_fleet::{AckState, Layout, StatusRecord};
use serde::Deserialize;

const PREFIX: &str = "app";
const WAIT: Duration = Duration::from_secs(20);
const CLEAR: &str = "zz-fleet-secret-8841";

fn binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not on PATH: run scripts/install-deps (it installs age and sops)"))
}

/// An `age-keygen` key at `file`; returns its recipient.
fn keygen(file: &Path) -> String {
    let out = Command::new(binary("age-keygen")).arg("-o").arg(file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(file).unwrap();
    text.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_owned()
}

fn encrypt(plain: &str, recipient: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("db.yaml"), plain).unwrap();
    let out = Command::new(binary("sops"))
        .current_dir(dir.path())
        .env("SOPS_DISABLE_VERSION_CHECK", "1")
        .env("XDG_CONFIG_HOME", dir.path().join("none"))
        .args(["encrypt", "--age", recipient, "db.yaml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[derive(Debug, Deserialize)]
struct Db {
    password: String,
}

/// A workspace for one instance, with `key` as its age identity (or none).
fn workspace(key: Option<&Path>) -> (tempfile::TempDir, Workspace) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let age_key_files = key.map(|k| vec![k.to_path_buf()]).unwrap_or_default();
    // Without one, only where `sops` looks: the key is made by this test,
    // so no key there can open the file.
    let ws = Workspace::new(dir.path()).with_config(HotReloadConfig { age_key_files, ..Default::default() });
    (dir, ws)
}

async fn status(client: &etcd_client::Client, instance: &str, version: u64) -> StatusRecord {
    eventually(&format!("{instance}'s status for version {version}"), WAIT, || {
        let mut client = client.clone();
        async move {
            let key = Layout::new(PREFIX).unwrap().status_key(instance, "db").unwrap();
            let resp = client.get(key, None).await.ok()?;
            let kv = resp.kvs().first()?;
            Some(StatusRecord::from_json(kv.value()).expect("status json")).filter(|s| s.version == version)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instance_decrypts_with_its_own_key_and_etcd_never_holds_the_secret() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("web.txt");
    let recipient = keygen(&key);
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let encrypted = encrypt(&format!("password: {CLEAR}\n"), &recipient);
    let config_key = Layout::new(PREFIX).unwrap().config_key("db").unwrap();
    let put = client.put(config_key.clone(), encode_config(Format::Yaml, &encrypted), None).await.unwrap();
    let version = put.header().unwrap().revision() as u64;

    // The instance with the key: decrypted, typed, acknowledged.
    let (dir, ws) = workspace(Some(&key));
    let _fleet = common::source(&etcd.endpoint(), PREFIX, "web-1").start(&ws).await.unwrap();
    let db = ws.watch_config_changes::<Db>("db").await.unwrap();
    assert_eq!(db.current().password, CLEAR);
    assert_eq!(status(&client, "web-1", version).await.state, AckState::Applied);

    // One without it: rejected, naming the recipient, quoting nothing.
    let (other_dir, other) = workspace(None);
    let _other_fleet = common::source(&etcd.endpoint(), PREFIX, "web-2").start(&other).await.unwrap();
    let rejected = status(&client, "web-2", version).await;
    assert_eq!(rejected.state, AckState::Rejected, "{rejected:?}");
    let error = rejected.error.clone().unwrap_or_default();
    assert!(error.contains(&recipient), "{error}");

    // etcd holds the document as pushed: encrypted; so do the caches.
    let stored = client.get(config_key, None).await.unwrap();
    let stored = String::from_utf8_lossy(stored.kvs()[0].value()).into_owned();
    assert!(stored.contains("ENC[AES256_GCM,") && !stored.contains(CLEAR), "{stored}");
    let everything = client.get("", Some(etcd_client::GetOptions::new().with_all_keys())).await.unwrap();
    for kv in everything.kvs() {
        assert!(!String::from_utf8_lossy(kv.value()).contains(CLEAR), "{} holds the secret", kv.key_str().unwrap());
    }
    for root in [dir.path(), other_dir.path()] {
        let mut stack = vec![root.join("data")];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
                    assert!(!text.contains(CLEAR), "{} holds the secret", path.display());
                }
            }
        }
    }
}

#[test]
fn a_push_without_the_key_checks_the_shape_and_leaves_the_values_sealed() {
    let keys = tempfile::tempdir().unwrap();
    let recipient = keygen(&keys.path().join("operator-has-not-this.txt"));
    let encrypted = encrypt(&format!("password: {CLEAR}\n"), &recipient);
    // No identity here opens it (the key is this test's own): the shape is
    // checked, and each instance will decrypt it with its own key.
    let checked = relive_fleet::Draft::new(Format::Yaml, encrypted.clone()).origin("db.yaml").check().unwrap();
    assert_eq!(checked.sealed(), Some(&[recipient.clone()][..]));
    assert!(checked.value().is_null(), "nothing is decrypted here");

    // A value put back in clear by hand is refused without the key too,
    // and the error does not quote it.
    let text = String::from_utf8(encrypted).unwrap();
    let line = text.lines().find(|l| l.starts_with("password: ENC[")).unwrap();
    let by_hand = text.replace(line, "password: put-back-in-clear");
    let error = relive_fleet::Draft::new(Format::Yaml, by_hand).origin("db.yaml").check().unwrap_err();
    assert_eq!(error.kind(), relive::ConfigErrorKind::Decrypt, "{error}");
    assert_eq!(error.key(), Some("password"), "{error}");
    assert!(!error.to_string().contains("put-back-in-clear"), "{error}");
}
