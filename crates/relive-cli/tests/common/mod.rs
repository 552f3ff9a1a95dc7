//! Helpers for running the real `relive` binary against temp workspaces.
//! Every wait is bounded; children are stopped when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any single wait in these tests may take.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A temp workspace.
pub struct Ws {
    dir: tempfile::TempDir,
}

impl Ws {
    /// An empty workspace with a `config/` directory.
    pub fn new() -> Ws {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("config")).expect("config dir");
        Ws { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `rel` (relative to the root) atomically, as editors do.
    pub fn write(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let tmp = path.with_extension("relive-test-tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    /// `relive ARGS` with the workspace as the current directory and a
    /// clean environment.
    pub fn relive(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_relive"));
        cmd.args(args)
            .current_dir(self.root())
            .env_remove("RELIVE_ENV")
            .env_remove("RELIVE_WORKSPACE")
            .env("NO_COLOR", "1");
        cmd
    }

    /// Runs `relive ARGS` to completion (bounded).
    pub fn run(&self, args: &[&str]) -> Run {
        let child = self.relive(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn relive");
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(TIMEOUT) {
            Ok(output) => Run(output.expect("relive output")),
            Err(_) => {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                panic!("relive {args:?} did not finish within {TIMEOUT:?}");
            }
        }
    }

    /// Starts `relive watch --json ARGS` and waits until it watches.
    pub fn watch(&self, args: &[&str]) -> Watch {
        let mut all = vec!["watch", "--json"];
        all.extend_from_slice(args);
        self.watch_command(self.relive(&all))
    }

    /// `relive watch --json ARGS` started as `nohup` would start it: with
    /// SIGHUP ignored (`trap '' HUP`, then exec), a disposition relive
    /// inherits.
    pub fn watch_ignoring_hup(&self, args: &[&str]) -> Watch {
        // The environment `relive` gives relive, for the shell to pass on.
        let env = self.relive(&[]);
        let mut words = vec!["-c", "trap '' HUP; exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_relive"), "watch", "--json"];
        words.extend_from_slice(args);
        let mut sh = Command::new("sh");
        sh.args(&words).current_dir(self.root());
        for (key, value) in env.get_envs() {
            match value {
                Some(value) => sh.env(key, value),
                None => sh.env_remove(key),
            };
        }
        self.watch_command(sh)
    }

    fn watch_command(&self, mut command: Command) -> Watch {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn relive watch");
        let stdout = lines(child.stdout.take().expect("stdout"));
        let stderr = lines(child.stderr.take().expect("stderr"));
        let mut watch = Watch { child: Some(child), stdout, stderr, stderr_seen: Vec::new(), stdout_seen: Vec::new() };
        watch.wait_stderr(|line| line.starts_with("relive: watching "));
        watch
    }
}

fn lines(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A finished run.
pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().expect("exit code")
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
}

/// A running `relive watch --json`.
pub struct Watch {
    child: Option<Child>,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    pub stderr_seen: Vec<String>,
    /// Every stdout line read so far.
    pub stdout_seen: Vec<String>,
}

impl Watch {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The next JSON event that matches `pred`, skipping others.
    pub fn wait_event(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    self.stdout_seen.push(line.clone());
                    let event: Value =
                        serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
                    if pred(&event) {
                        return event;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no matching event within {TIMEOUT:?}; stderr: {:?}", self.drain_stderr())
                }
                Err(RecvTimeoutError::Disconnected) => panic!("relive watch ended; stderr: {:?}", self.drain_stderr()),
            }
        }
    }

    /// The next event of `kind` about config `config`.
    pub fn wait_kind(&mut self, kind: &str, config: &str) -> Value {
        self.wait_event(|e| e["kind"] == kind && e["config"] == config)
    }

    /// Waits for a stderr line matching `pred`.
    pub fn wait_stderr(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no matching stderr line within {TIMEOUT:?}; saw {:?}", self.stderr_seen),
            }
        }
    }

    /// Everything it printed, stdout then stderr (after it exited: all of
    /// it; the reader threads end with the pipes).
    pub fn all_output(&mut self) -> String {
        while let Ok(line) = self.stdout.recv_timeout(Duration::from_millis(200)) {
            self.stdout_seen.push(line);
        }
        self.drain_stderr();
        format!("{}\n{}", self.stdout_seen.join("\n"), self.stderr_seen.join("\n"))
    }

    fn drain_stderr(&mut self) -> Vec<String> {
        while let Ok(line) = self.stderr.try_recv() {
            self.stderr_seen.push(line);
        }
        self.stderr_seen.clone()
    }

    /// Sends SIGTERM and waits (bounded) for relive to exit; returns its
    /// exit code.
    pub fn terminate(&mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        signal(child.id(), rustix::process::Signal::TERM);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("relive watch did not exit within {TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.child.is_some() {
            // SIGTERM first, so that relive stops the program it runs.
            let mut child = self.child.take().expect("child");
            signal(child.id(), rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// True while a process with `pid` exists.
pub fn alive(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32).is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
}

/// Polls `cond` every 10 ms until it holds, for at most [`TIMEOUT`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
