//! Kubernetes as it really is: the kubelet (root) swaps a ConfigMap's
//! `..data` symlink while the service reads it as another user, who does not
//! own the files and so gets no read lease. This exercises relive's fallback
//! guards, which once lost an update (see `ARCHITECTURE.md`, step 3).

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
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

#[test]
fn an_unprivileged_reader_gets_every_configmap_update() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: the reader would own the files and take leases; nothing to test here");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let config = root.path().join("config");
    fs::create_dir(&config).unwrap();
    publish(&config, 1);
    symlink("..data/app.json", config.join("app.json")).unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "reader_child", "--nocapture", "--test-threads=1"])
        .env("RELIVE_CM_ROOT", root.path())
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
            // The test harness may print `test reader_child ... ` on the
            // same line, so look for the marker anywhere.
            if let Some((_, v)) = line.split_once("RELIVE-VALUE ") {
                let _ = tx.send(v.trim().parse::<i64>().unwrap());
            }
        }
    });
    let wait_for = |n: i64| loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(v) if v == n => return,
            Ok(v) if v < n => continue,
            Ok(v) => panic!("got {v} while waiting for {n}"),
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_child() {
    let Some(root) = std::env::var_os("RELIVE_CM_ROOT") else { return };
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
