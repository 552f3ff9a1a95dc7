//! `--exec CMD`: runs a program and restarts (or signals) it after each
//! config change that validated.
//!
//! This module is what every system shares: the options, and a task that
//! owns the program's state, which the event loop only sends requests to
//! (so a slow shutdown never delays events) and which folds a burst of
//! changes into one restart. How the program is started, signalled and
//! stopped is the system's:
//!
//! - Unix ([`unix`]): process groups, signals, the grace period, and on
//!   Linux the subreaper and the parent-death signal.
//! - Windows ([`windows`]): restart only, under `cmd /C`, in a job object.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::cli;
use crate::platform::Stop;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix::State;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows::State;

/// What the program is run with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The shell command.
    pub command: String,
    /// Signal instead of restarting (never set on Windows: `--signal` is
    /// refused there).
    #[cfg_attr(windows, allow(dead_code))]
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
    /// Stop the program the way relive was asked to stop, and end.
    Stop(Stop),
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

    /// Passes `stop` on to the program (SIGINT or SIGTERM to its process
    /// group on Unix, Ctrl-Break on Windows), waits for it to be gone
    /// (killing what is left of it after the grace period), and ends the
    /// supervisor.
    pub async fn stop(self, stop: Stop) {
        let _ = self.tx.send(Request::Stop(stop));
        let _ = self.task.await;
    }
}

async fn supervise(options: Options, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut state = State::start(options).await;
    loop {
        tokio::select! {
            request = rx.recv() => {
                let Some(Request::Changed(first)) = request else {
                    let stop = match request { Some(Request::Stop(stop)) => stop, _ => Stop::Terminate };
                    state.terminate(stop).await;
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
                        Request::Stop(stop) => {
                            state.terminate(stop).await;
                            return;
                        }
                    }
                }
                let reason = names.into_iter().collect::<Vec<_>>().join(",");
                state.changed(&reason).await;
            }
            () = state.wake() => state.check(),
        }
    }
}
