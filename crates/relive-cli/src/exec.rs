//! `--exec CMD`: runs a program and restarts (or signals) it after each
//! config change that validated.
//!
//! The program runs as `sh -c CMD` in a process group of its own, so that a
//! restart stops everything it started: SIGTERM to the group, then SIGKILL
//! to the group if it has not exited within the grace period. `--signal`
//! goes to the program alone. A task owns the program's state; the event
//! loop only sends it requests, so a slow shutdown never delays events.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::sync::mpsc;

use crate::cli;
use crate::output;

/// What the program is run with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The shell command.
    pub command: String,
    /// Signal instead of restarting.
    pub signal: Option<cli::Signal>,
    /// How long the program has to exit after a stop signal.
    pub grace: Duration,
    /// The workspace root, passed as RELIVE_WORKSPACE.
    pub workspace: PathBuf,
    /// The environment, passed as RELIVE_ENV.
    pub env: Option<String>,
}

enum Request {
    /// Configs changed and validated.
    Changed(String),
    /// Stop the program with this signal and end.
    Stop(Signal),
}

/// The running program's supervisor.
pub struct Supervisor {
    tx: mpsc::UnboundedSender<Request>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    /// Starts the program and its supervisor.
    pub fn start(options: Options) -> Supervisor {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(supervise(options, rx));
        Supervisor { tx, task }
    }

    /// Config `name` changed and its new value is live: restart or signal.
    pub fn changed(&self, name: &str) {
        let _ = self.tx.send(Request::Changed(name.to_string()));
    }

    /// Passes `signal` on to the program, waits for it to exit (killing it
    /// after the grace period), and ends the supervisor.
    pub async fn stop(self, signal: Signal) {
        let _ = self.tx.send(Request::Stop(signal));
        let _ = self.task.await;
    }
}

/// A started program: its generation (to match exit reports) and pid,
/// which is also its process group.
#[derive(Debug, Clone, Copy)]
struct Running {
    generation: u64,
    pid: Pid,
}

struct State {
    options: Options,
    generation: u64,
    running: Option<Running>,
    exits_tx: mpsc::UnboundedSender<(u64, std::process::ExitStatus)>,
    exits: mpsc::UnboundedReceiver<(u64, std::process::ExitStatus)>,
}

async fn supervise(options: Options, mut rx: mpsc::UnboundedReceiver<Request>) {
    let (exits_tx, exits) = mpsc::unbounded_channel();
    let mut state = State { options, generation: 0, running: None, exits_tx, exits };
    state.spawn(None);
    loop {
        tokio::select! {
            request = rx.recv() => {
                let Some(Request::Changed(first)) = request else {
                    let signal = match request { Some(Request::Stop(signal)) => signal, _ => Signal::TERM };
                    state.terminate(signal).await;
                    return;
                };
                // A burst of changes (several configs in one save, an
                // overlay and its base) is one restart.
                let mut names = BTreeSet::from([first]);
                while let Ok(request) = rx.try_recv() {
                    match request {
                        Request::Changed(name) => {
                            names.insert(name);
                        }
                        Request::Stop(signal) => {
                            state.terminate(signal).await;
                            return;
                        }
                    }
                }
                let reason = names.into_iter().collect::<Vec<_>>().join(",");
                state.changed(&reason).await;
            }
            Some((generation, status)) = state.exits.recv() => state.exited(generation, status),
        }
    }
}

impl State {
    fn spawn(&mut self, reason: Option<&str>) {
        self.generation += 1;
        let mut command = tokio::process::Command::new("sh");
        command.arg("-c").arg(&self.options.command).process_group(0).kill_on_drop(true);
        command.env("RELIVE_WORKSPACE", &self.options.workspace);
        match &self.options.env {
            Some(env) => command.env("RELIVE_ENV", env),
            None => command.env_remove("RELIVE_ENV"),
        };
        match reason {
            Some(reason) => command.env("RELIVE_CONFIG", reason),
            None => command.env_remove("RELIVE_CONFIG"),
        };
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                output::error(&format!("cannot run `{}`: {e}", self.options.command));
                return;
            }
        };
        let Some(pid) = child.id().and_then(|id| Pid::from_raw(id as i32)) else { return };
        output::note(&format!("started `{}` (pid {})", self.options.command, pid.as_raw_nonzero()));
        self.running = Some(Running { generation: self.generation, pid });
        let generation = self.generation;
        let exits = self.exits_tx.clone();
        tokio::spawn(async move {
            if let Ok(status) = child.wait().await {
                let _ = exits.send((generation, status));
            }
        });
    }

    fn exited(&mut self, generation: u64, status: std::process::ExitStatus) {
        if self.running.is_some_and(|r| r.generation == generation) {
            self.running = None;
            output::note(&format!(
                "`{}` exited ({status}); it starts again at the next config change",
                self.options.command
            ));
        }
    }

    async fn changed(&mut self, reason: &str) {
        match (self.options.signal, self.running) {
            (Some(signal), Some(running)) => {
                match rustix::process::kill_process(running.pid, signal.signal) {
                    Ok(()) => output::note(&format!(
                        "config {reason} changed: sent SIG{} to pid {}",
                        signal.name,
                        running.pid.as_raw_nonzero()
                    )),
                    Err(e) => output::warn(&format!("cannot signal pid {}: {e}", running.pid.as_raw_nonzero())),
                }
                metrics::counter!("relive_child_signals_total").increment(1);
            }
            _ => {
                output::note(&format!("config {reason} changed: restarting `{}`", self.options.command));
                self.terminate(Signal::TERM).await;
                metrics::counter!("relive_child_restarts_total").increment(1);
                self.spawn(Some(reason));
            }
        }
    }

    /// Sends `signal` to the program's group and waits up to the grace
    /// period for the program to exit; then kills the group.
    async fn terminate(&mut self, signal: Signal) {
        let Some(running) = self.running.take() else { return };
        let _ = rustix::process::kill_process_group(running.pid, signal);
        let deadline = tokio::time::Instant::now() + self.options.grace;
        if self.wait_for(running.generation, deadline).await {
            return;
        }
        output::warn(&format!(
            "pid {} did not exit within {} ms; killing it",
            running.pid.as_raw_nonzero(),
            self.options.grace.as_millis()
        ));
        let _ = rustix::process::kill_process_group(running.pid, Signal::KILL);
        // SIGKILL cannot be caught; the bound only guards against a process
        // stuck in the kernel.
        self.wait_for(running.generation, tokio::time::Instant::now() + Duration::from_secs(5)).await;
    }

    /// Waits until generation `generation` has exited, or `deadline`.
    async fn wait_for(&mut self, generation: u64, deadline: tokio::time::Instant) -> bool {
        loop {
            match tokio::time::timeout_at(deadline, self.exits.recv()).await {
                Ok(Some((g, _))) if g == generation => return true,
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return false,
            }
        }
    }
}
