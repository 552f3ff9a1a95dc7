//! Child processes: started so that they die with relive, and reaped
//! whoever their parent was.
//!
//! relive reaps *every* child it has, with `waitpid(-1)`: the program run
//! by `--exec`, and orphans, which the kernel gives to relive when it is a
//! subreaper (`--exec` makes it one, so that a process the program
//! double-forked is still found) or PID 1 (in a container). The exit status
//! of a process started by [`spawn`] is kept for whoever started it; others
//! are discarded. relive starts no other children: code that starts one
//! in this process without [`spawn`] would find it reaped already.
//!
//! Unix only (Windows runs the program in a job object instead, see
//! [`crate::platform`]). The subreaper and the parent-death signal are
//! Linux's; on macOS [`become_subreaper`] does nothing and [`adopted`] is
//! empty.

use std::collections::HashMap;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use rustix::process::{Pid, Signal, WaitOptions};

/// The processes started by [`spawn`], with their exit status once reaped.
static OWNED: Mutex<Option<HashMap<i32, Option<ExitStatus>>>> = Mutex::new(None);

fn owned() -> MutexGuard<'static, Option<HashMap<i32, Option<ExitStatus>>>> {
    OWNED.lock().unwrap_or_else(|e| e.into_inner())
}

type Job = Box<dyn FnOnce() + Send>;

/// The thread every child is started from. The kernel sends the
/// parent-death signal when the *thread* that forked the child ends, not
/// the process: a runtime's worker or blocking thread may end while relive
/// goes on, and would kill the program with it. This one lives as long as
/// relive.
fn spawner() -> &'static mpsc::Sender<Job> {
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("relive-spawn".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("cannot start a thread");
        tx
    })
}

/// Starts `command` in a process group of its own, on Linux with SIGKILL as
/// its parent-death signal: if relive is killed (SIGKILL, a crash) the
/// kernel kills the process it started. Returns its pid, which is also its
/// process group; its exit status is kept for [`take_status`].
pub async fn spawn(mut command: Command) -> io::Result<Pid> {
    command.process_group(0);
    #[cfg(target_os = "linux")]
    die_with_relive(&mut command);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        // Registered under the lock that reaping takes, so that a program
        // that exits at once is not reaped as an orphan.
        let mut owned = owned();
        let result = command.spawn().map(|child| {
            let pid = child.id() as i32;
            owned.get_or_insert_with(HashMap::new).insert(pid, None);
            // The std handle is dropped unwaited: the status comes from
            // `reap`.
            pid
        });
        drop(owned);
        let _ = tx.send(result);
    });
    spawner().send(job).map_err(|_| io::Error::other("the spawning thread is gone"))?;
    let pid = rx.await.map_err(|_| io::Error::other("the spawning thread is gone"))??;
    Pid::from_raw(pid).ok_or_else(|| io::Error::other("the kernel returned pid 0"))
}

/// Gives `signals` their default action in the process `command` starts.
///
/// A signal ignored in relive stays ignored in what it starts, through
/// exec, and a shell cannot even trap a signal it was started ignoring.
/// Under `nohup` (SIGHUP ignored), `--signal HUP` therefore reached a
/// program that never saw it: every change was "signalled" and nothing
/// reloaded. The signals relive sends its program (`--signal`'s, and SIGTERM
/// and SIGINT to stop it) must arrive.
pub fn deliver(command: &mut Command, signals: &[Signal]) {
    let raw: Vec<i32> = signals.iter().map(|s| s.as_raw()).collect();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe work is allowed: it reads a vector allocated
    // before the fork and calls signal(2), which is async-signal-safe, and
    // builds an io::Error from errno, which does not allocate.
    unsafe {
        command.pre_exec(move || {
            for &signal in &raw {
                if libc::signal(signal, libc::SIG_DFL) == libc::SIG_ERR {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Sets SIGKILL as the parent-death signal of the process `command` starts.
/// Linux only: macOS has no parent-death signal, so there a relive killed
/// with SIGKILL leaves its program running.
#[cfg(target_os = "linux")]
fn die_with_relive(command: &mut Command) {
    let parent = rustix::process::getpid();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe work is allowed. It makes two system calls
    // through rustix (prctl and getppid), which neither allocate nor lock,
    // and builds an io::Error from a raw errno, which does not allocate.
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // relive died before the prctl: nobody would ever stop us.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::from_raw_os_error(rustix::io::Errno::SRCH.raw_os_error()));
            }
            Ok(())
        });
    }
}

/// Reaps every child that has exited, keeping the status of those started
/// by [`spawn`].
pub fn reap() {
    let mut owned = owned();
    loop {
        // `wait`, not `waitpid(None)`: that is `waitpid(0)`, relive's own
        // process group only.
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some((pid, status))) => {
                let pid = pid.as_raw_nonzero().get();
                if let Some(slot) = owned.as_mut().and_then(|o| o.get_mut(&pid)) {
                    *slot = Some(ExitStatus::from_raw(status.as_raw()));
                }
            }
            // None: children, none exited; ECHILD: no children.
            Ok(None) | Err(_) => return,
        }
    }
}

/// The exit status of `pid`, started by [`spawn`], once it has been
/// reaped; `pid` is forgotten then.
pub fn take_status(pid: Pid) -> Option<ExitStatus> {
    reap();
    let mut owned = owned();
    let map = owned.as_mut()?;
    let status = (*map.get(&pid.as_raw_nonzero().get())?)?;
    map.remove(&pid.as_raw_nonzero().get());
    Some(status)
}

/// Whether process group `pgid` has no process left, zombies included
/// (they leave the group when they are reaped, so this reaps first).
pub fn group_is_empty(pgid: Pid) -> bool {
    reap();
    rustix::process::test_kill_process_group(pgid) == Err(rustix::io::Errno::SRCH)
}

/// relive's children that it did not start: orphans of its descendants
/// (their parents died, or they daemonized), which the kernel reparented
/// to relive as their subreaper. Read from `/proc/self/task/*/children`;
/// empty when `/proc` is not this PID namespace's (it would name other
/// processes) or has no `children` files.
pub fn adopted() -> Vec<Pid> {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let ours = std::fs::read_link("/proc/self").ok().and_then(|p| p.to_str()?.parse::<i32>().ok()) == Some(me);
    if !ours {
        return Vec::new();
    }
    let owned = owned();
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            if !owned.as_ref().is_some_and(|o| o.contains_key(&pid)) {
                pids.extend(Pid::from_raw(pid));
            }
        }
    }
    pids
}

/// The process group of `pid`, from `/proc` (`getpgid` cannot say "a
/// group outside this namespace", which `/proc` gives as 0).
pub fn group_of(pid: Pid) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).ok()?;
    // After the name in parentheses: state, ppid, pgrp.
    stat.rsplit_once(')')?.1.split_whitespace().nth(2)?.parse().ok()
}

/// Whether `pid` is gone: reaped, or never there.
pub fn is_gone(pid: Pid) -> bool {
    reap();
    rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH)
}

/// Makes relive the reaper of the orphans of its descendants, so that a
/// process its program double-forked is still its child.
#[cfg(target_os = "linux")]
pub fn become_subreaper() -> io::Result<()> {
    Ok(rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?)
}

/// Nothing to do: other Unixes (macOS) have no subreaper. Orphans of the
/// program go to init (launchd) instead of relive, and [`adopted`] finds
/// none (it needs Linux's `/proc`), so what leaves the program's process
/// group is not stopped at a restart; the README says so.
#[cfg(not(target_os = "linux"))]
pub fn become_subreaper() -> io::Result<()> {
    Ok(())
}

/// Whether relive is PID 1 (of a container, or a PID namespace): every
/// orphan in it is relive's to reap.
pub fn is_init() -> bool {
    rustix::process::getpid().as_raw_nonzero().get() == 1
}

/// How often children are reaped when no SIGCHLD said so; a safety net,
/// since signals of one kind coalesce.
pub const POLL: Duration = Duration::from_millis(500);

/// Reaps orphans until the runtime ends: for PID 1, on each SIGCHLD and
/// every [`POLL`].
pub async fn reap_forever() {
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = async { match &mut sigchld { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
            _ = tick.tick() => {}
        }
        reap();
    }
}
