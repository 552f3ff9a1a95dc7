//! `--exec` on Windows: restart only.
//!
//! The command runs under `cmd /S /C`, in a console process group of its
//! own and in a job object ([`Job`]). A restart (or relive's own stop)
//! sends Ctrl-Break to the program's group, waits up to the grace period
//! for every process of the job to exit, ends what is left with
//! `TerminateJobObject`, and only then starts the next copy. There is no
//! `--signal` (argument parsing refuses it). When relive dies, however it
//! dies, its handle to the job closes and the system ends every process in
//! it (`JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`).
//!
//! Type-checked in CI (`cargo check --target x86_64-pc-windows-msvc`), not
//! run: the project has no Windows machine.

use std::os::windows::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

use super::Options;
use crate::output;
use crate::platform::{self, Job, Stop};

/// How often the program is looked at when no other event says so.
const POLL: Duration = Duration::from_millis(500);

/// How often a stopping job is looked at.
const STOP_POLL: Duration = Duration::from_millis(10);

/// The program: the process relive started and the job holding it and
/// whatever it started.
struct Running {
    child: Child,
    job: Job,
    /// Whether the program's end was reported.
    reported: bool,
}

/// The program's state, owned by the supervisor's task.
pub(super) struct State {
    options: Options,
    running: Option<Running>,
    tick: tokio::time::Interval,
}

impl State {
    /// Starts the program.
    pub(super) async fn start(options: Options) -> State {
        let mut state = State { options, running: None, tick: tokio::time::interval(POLL) };
        state.spawn(None);
        state
    }

    /// Waits until the program may have exited: Windows has no SIGCHLD, so
    /// every [`POLL`].
    pub(super) async fn wake(&mut self) {
        self.tick.tick().await;
    }

    fn command(&self, reason: Option<&str>) -> Command {
        let mut command = Command::new("cmd");
        // `/S /C "CMD"`: cmd strips the outer quotes and runs CMD as typed;
        // passed raw, since std's quoting is for programs that parse their
        // command line like the C runtime, which cmd does not.
        command.args(["/S", "/C"]).raw_arg(format!("\"{}\"", self.options.command));
        command.creation_flags(platform::NEW_PROCESS_GROUP);
        command.env("RELIVE_WORKSPACE", &self.options.workspace);
        match &self.options.env {
            Some(env) => command.env("RELIVE_ENV", env),
            None => command.env_remove("RELIVE_ENV"),
        };
        match reason {
            Some(reason) => command.env("RELIVE_CONFIG", reason),
            None => command.env_remove("RELIVE_CONFIG"),
        };
        command
    }

    fn spawn(&mut self, reason: Option<&str>) {
        let started = Job::new().and_then(|job| {
            let child = self.command(reason).spawn()?;
            // Not in the job, the program could outlive a restart: it does
            // not run at all.
            if let Err(e) = job.assign(&child) {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
            Ok(Running { child, job, reported: false })
        });
        match started {
            Ok(running) => {
                output::note(&format!("started `{}` (pid {})", self.options.command, running.child.id()));
                self.running = Some(running);
            }
            Err(e) => output::error(&format!("cannot run `{}`: {e}", self.options.command)),
        }
    }

    /// Reports the program's end once.
    pub(super) fn check(&mut self) {
        let Some(running) = &mut self.running else { return };
        if running.reported {
            return;
        }
        let status = match running.child.try_wait() {
            Ok(None) => return,
            Ok(Some(status)) => status.to_string(),
            Err(_) => "status unknown".to_string(),
        };
        running.reported = true;
        output::note(&format!(
            "`{}` exited ({status}); it starts again at the next config change",
            self.options.command
        ));
        // Nothing of the job left: nothing to stop at the next change.
        if is_empty(&running.job) {
            self.running = None;
        }
    }

    /// Configs `reason` changed: restarts the program.
    pub(super) async fn changed(&mut self, reason: &str) {
        self.check();
        output::note(&format!("config {reason} changed: restarting `{}`", self.options.command));
        self.terminate(Stop::Terminate).await;
        metrics::counter!("relive_child_restarts_total").increment(1);
        self.spawn(Some(reason));
    }

    /// Sends Ctrl-Break to the program, waits up to the grace period for
    /// its job to be empty, then terminates the job. Ctrl-C and Ctrl-Break
    /// both mean "stop" to a console program, so `stop` makes no
    /// difference here.
    pub(super) async fn terminate(&mut self, _stop: Stop) {
        let Some(running) = self.running.take() else { return };
        if !is_empty(&running.job) {
            let _ = platform::ctrl_break(running.child.id());
            if !wait_empty(&running.job, self.options.grace).await {
                output::warn(&format!(
                    "`{}` did not exit within {} ms; ending its process tree",
                    self.options.command,
                    self.options.grace.as_millis()
                ));
                if let Err(e) = running.job.terminate() {
                    output::warn(&format!("cannot end the program's job: {e}"));
                }
                // The bound only guards against a process stuck in the
                // kernel.
                if !wait_empty(&running.job, Duration::from_secs(5)).await {
                    output::warn("the program's processes are still there 5 s after they were ended");
                }
            }
        }
        // Dropped with the job: no zombies to reap on Windows.
    }
}

/// Whether no process of `job` runs; a job that cannot be asked counts as
/// running, so that it is terminated rather than left.
fn is_empty(job: &Job) -> bool {
    job.active().is_ok_and(|n| n == 0)
}

/// Waits up to `timeout` for `job` to be empty.
async fn wait_empty(job: &Job, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if is_empty(job) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(STOP_POLL).await;
    }
}
