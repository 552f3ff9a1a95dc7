//! Shared helpers: temp-dir workspaces and bounded waits.
#![allow(dead_code)]

use std::ffi::OsStr;
#[cfg(unix)]
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use relive::{ChangeEvent, ConfigStream, Workspace};
use serde::Deserialize;
use tokio::sync::broadcast;

/// How long any expected event may take. Generous: CI machines stall.
pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct App {
    pub name: String,
    pub value: i64,
    #[serde(default)]
    pub extra: Option<String>,
}

pub struct TestWs {
    pub dir: tempfile::TempDir,
    pub ws: Workspace,
}

impl TestWs {
    pub fn new(files: &[(&str, &str)]) -> TestWs {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["config", "templates", "static", "data"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        for (path, content) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        let ws = Workspace::new(dir.path());
        TestWs { dir, ws }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) {
        std::fs::write(self.path(rel), content).unwrap();
    }
}

pub fn app_toml(name: &str, value: i64) -> String {
    format!("name = \"{name}\"\nvalue = {value}\n")
}

/// The next value, or a panic after `TIMEOUT`.
pub async fn next<T>(stream: &mut ConfigStream<T>) -> Arc<T> {
    tokio::time::timeout(TIMEOUT, stream.next()).await.expect("timed out waiting for a value").expect("stream ended")
}

/// Waits for a value for which `pred` holds; returns it and how many values
/// came before it.
pub async fn next_until<T>(stream: &mut ConfigStream<T>, pred: impl Fn(&T) -> bool) -> (Arc<T>, usize) {
    let mut skipped = 0;
    loop {
        let v = next(stream).await;
        if pred(&v) {
            return (v, skipped);
        }
        skipped += 1;
    }
}

/// Waits for an event for which `pred` holds; returns it and the events
/// before it.
pub async fn event_until(
    rx: &mut broadcast::Receiver<ChangeEvent>,
    pred: impl Fn(&ChangeEvent) -> bool,
) -> (ChangeEvent, Vec<ChangeEvent>) {
    let mut before = Vec::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let event = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for an event; saw {before:#?}"))
            .expect("event channel closed or lagged");
        if pred(&event) {
            return (event, before);
        }
        before.push(event);
    }
}

pub fn is_file_event(event: &ChangeEvent, path: &Path) -> bool {
    matches!(event, ChangeEvent::FileChanged { path: p, .. } if p == path)
}

/// Polls `cond` until it holds, or panics after `TIMEOUT`.
pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Set in a child process started by [`child`] or [`rerun_as`]: the name of
/// the test it runs.
const CHILD: &str = "RELIVE_TEST_CHILD";
/// The argument [`child`] hands to the child.
const CHILD_ARG: &str = "RELIVE_TEST_CHILD_ARG";

/// In a process that [`child`] started for test `name`: the argument it was
/// given. `None` in the parent, which runs the scenario (and starts the
/// child). So a test that needs a second process is one `#[test]` whose two
/// halves both check something; none passes without running its check.
pub fn child_arg(name: &str) -> Option<PathBuf> {
    if std::env::var_os(CHILD)? != name {
        return None;
    }
    Some(std::env::var_os(CHILD_ARG).unwrap_or_default().into())
}

/// A command that runs test `name` of this test binary again, alone, in a
/// child process where [`child_arg`]`(name)` is `arg`.
pub fn child(name: &str, arg: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", name, "--nocapture", "--test-threads=1"]).env(CHILD, name).env(CHILD_ARG, arg);
    command
}

/// Checks that a child started by [`child`] ran its one test and passed.
pub fn assert_child_passed(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("1 passed"), "the child did not run its test:\n{stdout}\n{stderr}");
}

/// Runs test `name` of this test binary again, in a child process as user
/// `uid`, when we are root, and checks that it passed there. Returns true
/// if it did so; false in the child, or when not root, where the caller
/// runs the test's body itself.
#[cfg(unix)]
pub fn rerun_as(name: &str, uid: u32) -> bool {
    if std::env::var_os(CHILD).is_some() || !rustix::process::geteuid().is_root() {
        return false;
    }
    let out = child(name, "").env("TMPDIR", "/tmp").uid(uid).gid(uid).output().unwrap();
    assert_child_passed(&out);
    true
}

/// Makes a FIFO at `path` with `mode` (FIFOs are Unix's). Linux has `mkfifoat`; macOS has no
/// `mkfifoat` in rustix, so there the `mkfifo` command makes it.
#[cfg(unix)]
pub fn mkfifo(path: &Path, mode: u32) {
    #[cfg(target_os = "linux")]
    rustix::fs::mkfifoat(rustix::fs::CWD, path, rustix::fs::Mode::from_raw_mode(mode)).unwrap();
    #[cfg(not(target_os = "linux"))]
    {
        let status = Command::new("mkfifo").arg("-m").arg(format!("{mode:o}")).arg(path).status().unwrap();
        assert!(status.success(), "mkfifo {}: {status}", path.display());
    }
}

/// Whether the engine runs the inotify backend, which sees writers close
/// files and reads under leases. A check of a behaviour that only inotify
/// has (close events, leases, the overflow rescan, inotify's limits) runs
/// when this is true; the second pass of the suites, through the portable
/// backend (`RELIVE_BACKEND=portable`, see `.ci/run`), skips that check
/// and says so on stderr. Every such check runs in the normal pass.
pub fn inotify_backend(manager: &relive::HotReloadManager, check: &str) -> bool {
    match manager.watcher_mode() {
        relive::WatcherMode::Events { .. } => true,
        mode => {
            eprintln!("inotify only, skipped under {mode:?}: {check}");
            false
        }
    }
}

/// The same, before an engine runs: from `RELIVE_BACKEND`, as the library
/// reads it.
pub fn inotify_backend_configured(check: &str) -> bool {
    match std::env::var("RELIVE_BACKEND").as_deref() {
        Ok("portable") => {
            eprintln!("inotify only, skipped under RELIVE_BACKEND=portable: {check}");
            false
        }
        _ => true,
    }
}

/// A binary the tests run (`sops`, `age-keygen`), from PATH; a test that
/// needs one fails, never skips, without it.
pub fn binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not on PATH: run scripts/install-deps (it installs age and sops)"))
}

/// An age key made by `age-keygen` in a temp dir.
pub struct Key {
    pub file: PathBuf,
    pub recipient: String,
    _dir: tempfile::TempDir,
}

impl Key {
    pub fn generate() -> Key {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.txt");
        let out = Command::new(binary("age-keygen")).arg("-o").arg(&file).output().unwrap();
        assert!(out.status.success(), "age-keygen failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(&file).unwrap();
        let recipient = text
            .lines()
            .find_map(|line| line.strip_prefix("# public key: "))
            .expect("age-keygen writes the public key")
            .to_owned();
        Key { file, recipient, _dir: dir }
    }

    /// The key as relive's identities.
    pub fn ids(&self) -> relive::sops::Identities {
        let mut ids = relive::sops::Identities::new();
        ids.add_key_file(&self.file).unwrap();
        ids
    }
}
