//! Kubernetes as it really is: the kubelet (root) swaps a ConfigMap's
//! `..data` symlink while the service reads it as another user, who does not
//! own the files and so gets no read lease. This exercises relive's fallback
//! guards, which once lost an update (see `ARCHITECTURE.md`, step 3).

// Another user, modes and symlinks are Unix's.
#![cfg(unix)]

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

const NOBODY: u32 = 65534;
const UPDATES: i64 = 20;

fn publish(dir: &Path, n: i64) {
    let version = dir.join(format!("..v{n}"));
    fs::create_dir(&version).unwrap();
    fs::write(version.join("app.json"), format!(r#"{{"name": "cm", "value": {n}}}"#)).unwrap();
    let tmp = dir.join("..data_tmp");
    symlink(version.file_name().unwrap(), &tmp).unwrap();
    fs::rename(&tmp, dir.join("..data")).unwrap();
    // The kubelet cleans up the old version a moment after the swap.
    std::thread::sleep(Duration::from_millis(5));
    if n > 1 {
        fs::remove_dir_all(dir.join(format!("..v{}", n - 1))).unwrap();
    }
}

/// What the reader child prints, read by the parent.
enum Line {
    Value(i64),
    /// The test harness's summary: the child ran its one test.
    Passed,
}

/// The parent (root, the kubelet) publishes `UPDATES` versions; the child
/// (`nobody`, the service) must see every one. Only root can play both
/// parts, so anyone else fails here rather than pass having checked
/// nothing: CI runs as root.
#[test]
fn an_unprivileged_reader_gets_every_configmap_update() {
    const NAME: &str = "an_unprivileged_reader_gets_every_configmap_update";
    if let Some(root) = common::child_arg(NAME) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(reader(&root));
        return;
    }
    assert!(
        rustix::process::geteuid().is_root(),
        "this test plays the kubelet (root) and a service that does not own the files (nobody): run it as root"
    );
    let root = tempfile::tempdir().unwrap();
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let config = root.path().join("config");
    fs::create_dir(&config).unwrap();
    publish(&config, 1);
    symlink("..data/app.json", config.join("app.json")).unwrap();

    let mut child = common::child(NAME, root.path())
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The test harness may print `test NAME ... ` on the same line,
            // so look for the marker anywhere.
            if let Some((_, v)) = line.split_once("RELIVE-VALUE ") {
                let _ = tx.send(Line::Value(v.trim().parse::<i64>().unwrap()));
            } else if line.contains("1 passed") {
                let _ = tx.send(Line::Passed);
            }
        }
    });
    let wait_for = |n: i64| loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Line::Value(v)) if v == n => return,
            Ok(Line::Value(v)) if v < n => continue,
            Ok(Line::Value(v)) => panic!("got {v} while waiting for {n}"),
            Ok(Line::Passed) => panic!("the reader ended while waiting for {n}"),
            Err(_) => panic!("update {n} was not delivered"),
        }
    };
    wait_for(1);
    for n in 2..=UPDATES {
        publish(&config, n);
        wait_for(n);
    }
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).is_ok_and(|line| matches!(line, Line::Passed)),
        "the reader did not run its test"
    );
}

/// The child half: the service, as `nobody`, prints every value it gets.
async fn reader(root: &Path) {
    #[derive(serde::Deserialize)]
    struct App {
        value: i64,
    }
    let ws = relive::Workspace::new(root);
    // A slow validator (one that does I/O, say) keeps the engine busy while
    // the kubelet removes the old version directory, which re-checks the
    // symlinks before the value is committed.
    let slow = |_: &App| {
        std::thread::sleep(Duration::from_millis(30));
        Ok::<(), &str>(())
    };
    let mut stream = ws.config::<App>("app").validate(slow).watch().await.unwrap();
    println!("RELIVE-VALUE {}", stream.current().value);
    while stream.current().value < UPDATES {
        let v = tokio::time::timeout(Duration::from_secs(20), stream.next()).await.unwrap().unwrap();
        println!("RELIVE-VALUE {}", v.value);
    }
}
