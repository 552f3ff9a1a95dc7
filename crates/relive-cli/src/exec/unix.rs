//! `--exec` on Unix: the program in a process group of its own, signals,
//! and (on Linux) relive as its subreaper.
//!
//! A simple command (words and quotes only: `./server --port 80`, `nginx
//! -g "daemon off;"`) is run directly, so the process relive starts *is*
//! the program; anything else runs as `sh -c CMD`. Debian's `/bin/sh`
//! (dash) forks the last command of `sh -c` instead of becoming it, so
//! there the shell stands between relive and the program.
//!
//! Either way the program runs in a process group of its own, and the group
//! is what relive keeps track of: a restart sends SIGTERM to the group,
//! waits up to the grace period for the group to be *empty* (not only for
//! its first process to exit), SIGKILLs whatever is left of it and waits
//! again, and only then starts the next copy. `--signal` goes to the
//! program itself when it was run directly, and to the group when a shell
//! runs it. On Linux relive is a subreaper (`PR_SET_CHILD_SUBREAPER`), so
//! processes the program leaves behind are reparented to relive and reaped
//! by it ([`crate::reap`]); those outside the group (a daemon that called
//! `setsid`) get the same SIGTERM, grace period and SIGKILL after the
//! group. Other Unixes (macOS) have no subreaper: what leaves the group
//! there is not relive's to find.
//!
//! If relive itself is killed with SIGKILL, the Linux kernel kills the
//! process it started (`PR_SET_PDEATHSIG`), but not the rest of its group: a
//! shell between relive and the program dies and leaves the program
//! running, as does anything the program started. Elsewhere nothing is
//! killed.

use std::time::Duration;

use rustix::process::{Pid, Signal};

use super::Options;
use crate::output;
use crate::platform::Stop;
use crate::reap;

/// The signal that passes on a request to stop relive.
fn stop_signal(stop: Stop) -> Signal {
    match stop {
        Stop::Interrupt => Signal::INT,
        Stop::Terminate => Signal::TERM,
    }
}

/// How the command is run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Run {
    /// A simple command, executed without a shell: these are its words.
    Direct(Vec<String>),
    /// Anything else, by `sh -c`.
    Shell,
}

impl Run {
    fn of(command: &str) -> Run {
        simple_command(command).map_or(Run::Shell, Run::Direct)
    }
}

/// Words a shell gives a meaning to when they come first: a command that
/// starts with one of them is left to the shell.
const SHELL_WORDS: &[&str] = &[
    "!", "{", "}", "case", "do", "done", "elif", "else", "esac", "fi", "for", "if", "in", "then", "until", "while",
    ".", ":", "alias", "bg", "break", "cd", "command", "continue", "eval", "exit", "export", "false", "fg", "getopts",
    "hash", "jobs", "kill", "local", "read", "readonly", "return", "set", "shift", "source", "test", "times", "trap",
    "true", "type", "ulimit", "umask", "unalias", "unset", "wait",
];

/// The words of `command` if it is a simple command that `sh -c` would run
/// as one program with these arguments: words separated by blanks, quoted
/// with `'...'` or `"..."` (without `$`, `` ` `` or `\` inside), with no
/// expansion, redirection, pipe, list, assignment or comment. A leading
/// `exec` is dropped. `None` for anything else.
fn simple_command(command: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => w.push(c),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '"' => break,
                        '$' | '`' | '\\' => return None,
                        c => w.push(c),
                    }
                }
            }
            // Expansions, redirections, pipes and lists, globs, escapes,
            // and what is special at the start of a word (`#`, `~`).
            '$' | '`' | '\\' | '|' | '&' | ';' | '<' | '>' | '(' | ')' | '*' | '?' | '[' | '\n' | '\r' => return None,
            '#' | '~' if word.is_none() => return None,
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    if words.first().is_some_and(|w| w == "exec") {
        words.remove(0);
    }
    let first = words.first()?;
    // `NAME=value cmd` sets a variable; a reserved word or builtin needs
    // the shell.
    if first.contains('=') || first.is_empty() || SHELL_WORDS.contains(&first.as_str()) || first.starts_with('-') {
        return None;
    }
    Some(words)
}

/// The program's process group: its first process (the one relive
/// started, whose pid is the group's id) and whether it has exited.
#[derive(Debug)]
struct Running {
    pid: Pid,
    /// The first process's exit status, once it has been reaped.
    status: Option<std::process::ExitStatus>,
    /// Whether the program's end was reported.
    reported: bool,
}

/// The program's state, owned by the supervisor's task.
pub(super) struct State {
    options: Options,
    run: Run,
    running: Option<Running>,
    /// SIGCHLD: a child exited (or stopped).
    sigchld: Option<tokio::signal::unix::Signal>,
    /// The safety net under SIGCHLD, which coalesces.
    tick: tokio::time::Interval,
}

impl State {
    /// Starts the program.
    pub(super) async fn start(options: Options) -> State {
        // Orphans of the program (a daemon it double-forked, a worker whose
        // parent died) become relive's children: found, stopped, reaped.
        if let Err(e) = reap::become_subreaper() {
            output::warn(&format!(
                "cannot become a subreaper ({e}); processes the program leaves are not reaped by relive"
            ));
        }
        let sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
        let tick = tokio::time::interval(reap::POLL);
        let run = Run::of(&options.command);
        let mut state = State { options, run, running: None, sigchld, tick };
        state.spawn(None).await;
        state
    }

    /// Waits until a child may have exited: SIGCHLD, or every
    /// [`reap::POLL`].
    pub(super) async fn wake(&mut self) {
        let sigchld = &mut self.sigchld;
        tokio::select! {
            _ = async { match sigchld { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
            _ = self.tick.tick() => {}
        }
    }

    fn command(&self, reason: Option<&str>) -> std::process::Command {
        let mut command = match &self.run {
            Run::Direct(words) => {
                let mut command = std::process::Command::new(&words[0]);
                command.args(&words[1..]);
                command
            }
            Run::Shell => {
                let mut command = std::process::Command::new("sh");
                command.arg("-c").arg(&self.options.command);
                command
            }
        };
        command.env("RELIVE_WORKSPACE", &self.options.workspace);
        match &self.options.env {
            Some(env) => command.env("RELIVE_ENV", env),
            None => command.env_remove("RELIVE_ENV"),
        };
        match reason {
            Some(reason) => command.env("RELIVE_CONFIG", reason),
            None => command.env_remove("RELIVE_CONFIG"),
        };
        let mut sent = vec![Signal::TERM, Signal::INT];
        sent.extend(self.options.signal.map(|s| s.signal));
        reap::deliver(&mut command, &sent);
        command
    }

    async fn spawn(&mut self, reason: Option<&str>) {
        let mut spawned = reap::spawn(self.command(reason)).await;
        // A script without a `#!` line: the shell runs those.
        if matches!(&spawned, Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOEXEC.raw_os_error())) {
            self.run = Run::Shell;
            spawned = reap::spawn(self.command(reason)).await;
        }
        let pid = match spawned {
            Ok(pid) => pid,
            Err(e) => {
                output::error(&format!("cannot run `{}`: {e}", self.options.command));
                return;
            }
        };
        output::note(&format!("started `{}` (pid {})", self.options.command, pid.as_raw_nonzero()));
        self.running = Some(Running { pid, status: None, reported: false });
    }

    /// Whether the program is still there: the process relive started when
    /// it is the program, the group when a shell started the program.
    fn program_alive(&mut self) -> bool {
        let Some(running) = &mut self.running else { return false };
        if running.status.is_none() {
            running.status = reap::take_status(running.pid);
        }
        match self.run {
            Run::Direct(_) => running.status.is_none(),
            Run::Shell => !reap::group_is_empty(running.pid),
        }
    }

    /// Reaps, and reports the program's end once.
    pub(super) fn check(&mut self) {
        reap::reap();
        if self.running.as_ref().is_none_or(|r| r.reported) || self.program_alive() {
            return;
        }
        let Some(running) = &mut self.running else { return };
        running.reported = true;
        let status = running.status.map_or("status unknown".to_string(), |s| s.to_string());
        output::note(&format!(
            "`{}` exited ({status}); it starts again at the next config change",
            self.options.command
        ));
        // Nothing of the group left: nothing to stop at the next change.
        if reap::group_is_empty(running.pid) {
            self.running = None;
        }
    }

    /// Configs `reason` changed: signals or restarts the program.
    pub(super) async fn changed(&mut self, reason: &str) {
        self.check();
        let alive = self.program_alive();
        match (self.options.signal, &self.running) {
            (Some(signal), Some(running)) if alive => {
                let pid = running.pid;
                let (sent, whom) = match self.run {
                    Run::Direct(_) => (rustix::process::kill_process(pid, signal.signal), "pid"),
                    Run::Shell => (rustix::process::kill_process_group(pid, signal.signal), "process group"),
                };
                match sent {
                    Ok(()) => output::note(&format!(
                        "config {reason} changed: sent SIG{} to {whom} {}",
                        signal.name,
                        pid.as_raw_nonzero()
                    )),
                    Err(e) => output::warn(&format!("cannot signal {whom} {}: {e}", pid.as_raw_nonzero())),
                }
                metrics::counter!("relive_child_signals_total").increment(1);
            }
            _ => {
                output::note(&format!("config {reason} changed: restarting `{}`", self.options.command));
                self.stop(Signal::TERM).await;
                metrics::counter!("relive_child_restarts_total").increment(1);
                self.spawn(Some(reason)).await;
            }
        }
    }

    /// Passes `stop` on to the program and waits for it to be gone: see
    /// [`State::stop`].
    pub(super) async fn terminate(&mut self, stop: Stop) {
        self.stop(stop_signal(stop)).await;
    }

    /// Sends `signal` to the program's group and waits up to the grace
    /// period for the group to be empty; then kills what is left of it.
    /// Then the same for what the program left outside its group.
    async fn stop(&mut self, signal: Signal) {
        if let Some(running) = self.running.take() {
            let pgid = running.pid;
            if !reap::group_is_empty(pgid) {
                let _ = rustix::process::kill_process_group(pgid, signal);
                if !wait_empty(pgid, self.options.grace).await {
                    self.kill(pgid).await;
                }
            }
            // Reaped with its group: its status is nobody's now.
            let _ = reap::take_status(pgid);
        }
        self.end_adopted(signal).await;
    }

    /// Ends what the program left outside its group: processes that
    /// daemonized (`setsid`) or whose parents died, which relive adopted as
    /// their subreaper. As PID 1 relive adopts every orphan of the
    /// container, not only its program's, so it leaves them be (and when PID
    /// 1 exits, the kernel kills them all).
    async fn end_adopted(&self, signal: Signal) {
        if reap::is_init() {
            return;
        }
        let adopted = reap::adopted();
        if adopted.is_empty() {
            return;
        }
        let send = |signal: Signal| {
            for &pid in &adopted {
                // A daemon leads a group of its own: end that group with it.
                let _ = match reap::group_of(pid) {
                    Some(group) if group == pid.as_raw_nonzero().get() => {
                        rustix::process::kill_process_group(pid, signal)
                    }
                    _ => rustix::process::kill_process(pid, signal),
                };
            }
        };
        send(signal);
        if wait_gone(&adopted, self.options.grace).await {
            return;
        }
        output::warn(&format!(
            "{} processes left by `{}` did not exit within {} ms; killing them",
            adopted.len(),
            self.options.command,
            self.options.grace.as_millis()
        ));
        send(Signal::KILL);
        if !wait_gone(&adopted, Duration::from_secs(5)).await {
            output::warn("processes left by the program are still there 5 s after SIGKILL");
        }
    }

    /// Kills what is left of group `pgid` and waits for it to be empty.
    async fn kill(&self, pgid: Pid) {
        output::warn(&format!(
            "`{}` (process group {}) did not exit within {} ms; killing it",
            self.options.command,
            pgid.as_raw_nonzero(),
            self.options.grace.as_millis()
        ));
        let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        // SIGKILL cannot be caught; the bound only guards against a process
        // stuck in the kernel, or orphans that a non-reaping init keeps as
        // zombies.
        if !wait_empty(pgid, Duration::from_secs(5)).await {
            output::warn(&format!("process group {} is not empty 5 s after SIGKILL", pgid.as_raw_nonzero()));
        }
    }
}

impl Drop for State {
    /// relive ends without a clean stop (an error, a panic): nothing of the
    /// program outlives it.
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = rustix::process::kill_process_group(running.pid, Signal::KILL);
        }
    }
}

/// How often a stopping group is looked at.
const STOP_POLL: Duration = Duration::from_millis(10);

/// Waits up to `timeout` for process group `pgid` to be empty.
async fn wait_empty(pgid: Pid, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if reap::group_is_empty(pgid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(STOP_POLL).await;
    }
}

/// Waits up to `timeout` for every process of `pids` to be gone.
async fn wait_gone(pids: &[Pid], timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if pids.iter().all(|&pid| reap::is_gone(pid)) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(STOP_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(command: &str) -> Option<Vec<String>> {
        simple_command(command)
    }

    #[test]
    fn simple_commands_are_run_directly() {
        assert_eq!(words("./server"), Some(vec!["./server".into()]));
        assert_eq!(words("  ./server  --port=80\t-v "), Some(vec!["./server".into(), "--port=80".into(), "-v".into()]));
        assert_eq!(words("nginx -g \"daemon off;\""), Some(vec!["nginx".into(), "-g".into(), "daemon off;".into()]));
        assert_eq!(words("exec ./server 'a b'c \"\""), Some(vec!["./server".into(), "a bc".into(), "".into()]));
        assert_eq!(
            words("python3 -c 'import sys; print(1)'"),
            Some(vec!["python3".into(), "-c".into(), "import sys; print(1)".into()])
        );
        assert_eq!(words("a#b x~y"), Some(vec!["a#b".into(), "x~y".into()]));
    }

    #[test]
    fn anything_a_shell_must_read_goes_to_the_shell() {
        for command in [
            "",
            "   ",
            "cd dir && ./server",
            "./a | ./b",
            "./server &",
            "./server; echo done",
            "./server > log",
            "./server < in",
            "./server $PORT",
            "./server \"$PORT\"",
            "./server `cat port`",
            "./server \\$x",
            "./server *.toml",
            "./server ~/x",
            "./server # comment",
            "PORT=80 ./server",
            "(./server)",
            "{ ./server; }",
            "if true; then ./s; fi",
            "cd dir",
            "exec",
            "'unterminated",
            "\"unterminated",
            "./a\n./b",
            "trap '' TERM",
        ] {
            assert_eq!(words(command), None, "{command:?}");
        }
    }
}
