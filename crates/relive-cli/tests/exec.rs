//! `relive watch --exec`: the program and everything it starts, against the
//! real binary with real child processes (shell scripts the tests write).
//!
//! Every program writes its pid (`$$`) to a file; a process counts as
//! running while it exists and is not a zombie. Issue 13: with Debian's
//! `/bin/sh` (dash), `sh -c ./server.sh` forks the script instead of
//! becoming it, so relive's child was the shell, not the program.

// Linux's: processes are read from /proc, and the checks rely on relive
// being a subreaper, the parent-death signal and PID namespaces. On macOS
// and Windows the CLI is type-checked in CI.
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::{TIMEOUT, Ws, wait_until};

/// Writes an executable `/bin/sh` script `name` into the workspace.
fn script(ws: &Ws, name: &str, body: &str) {
    ws.write(name, &format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(ws.path(name), std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The pids written, one a line, to `file`.
fn pids(ws: &Ws, file: &str) -> Vec<u32> {
    ws.read(file).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The state letter of process `pid` (`R`, `S`, `Z`, ...), if it exists.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name in parentheses may hold spaces; the state follows it.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether `pid` exists (`kill -0`) and is not a zombie.
fn running(pid: u32) -> bool {
    common::alive(pid) && state(pid).is_some_and(|s| s != 'Z')
}

fn count_running(pids: &[u32]) -> usize {
    pids.iter().filter(|&&p| running(p)).count()
}

/// The children of `pid` (all its threads'), from /proc.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    out
}

fn zombie_children(pid: u32) -> usize {
    children(pid).into_iter().filter(|&c| state(c) == Some('Z')).count()
}

#[test]
fn a_restart_kills_a_program_that_ignores_sigterm_before_the_next_start() {
    let ws = Ws::new();
    ws.write("config/app.toml", "port = 1\n");
    script(&ws, "server.sh", "trap '' TERM\necho $$ >> pids.txt\nwhile :; do sleep 0.05; done");
    let mut watch = ws.watch(&["--exec", "./server.sh", "--grace-ms", "300", "--no-history"]);
    wait_until("the first start", || pids(&ws, "pids.txt").len() == 1);
    let first = pids(&ws, "pids.txt")[0];
    assert!(running(first));

    ws.write("config/app.toml", "port = 2\n");
    watch.wait_kind("config_changed", "app");
    wait_until("the restart", || pids(&ws, "pids.txt").len() == 2);
    // The first copy ignored SIGTERM: it was killed after the grace period,
    // and reaped, before the second started.
    assert!(!common::alive(first), "the first copy is still there after the restart");
    let all = pids(&ws, "pids.txt");
    assert_eq!(count_running(&all), 1, "exactly one copy runs: {all:?}");
    watch.wait_stderr(|l| l.contains("did not exit within 300 ms"));

    assert_eq!(watch.terminate(), 0);
    wait_until("no copy to run after relive exits", || count_running(&all) == 0);
}

#[test]
fn a_restart_and_the_exit_end_the_programs_grandchildren() {
    let ws = Ws::new();
    ws.write("config/app.toml", "port = 1\n");
    // The program dies of SIGTERM; the process it started ignores it.
    script(
        &ws,
        "forker.sh",
        "sh -c 'trap \"\" TERM; echo $$ >> grandchildren.txt; while :; do sleep 0.05; done' &\n\
         echo $$ >> pids.txt\nwait",
    );
    let mut watch = ws.watch(&["--exec", "./forker.sh", "--grace-ms", "300", "--no-history"]);
    wait_until("the first start", || pids(&ws, "pids.txt").len() == 1 && pids(&ws, "grandchildren.txt").len() == 1);
    let grandchild = pids(&ws, "grandchildren.txt")[0];
    assert!(running(grandchild));

    ws.write("config/app.toml", "port = 2\n");
    watch.wait_kind("config_changed", "app");
    wait_until("the restart", || pids(&ws, "pids.txt").len() == 2);
    assert!(!common::alive(grandchild), "the first program's grandchild is still there after the restart");
    wait_until("the second grandchild", || pids(&ws, "grandchildren.txt").len() == 2);

    assert_eq!(watch.terminate(), 0);
    let all: Vec<u32> = pids(&ws, "pids.txt").into_iter().chain(pids(&ws, "grandchildren.txt")).collect();
    wait_until("nothing of the program to run after relive exits", || count_running(&all) == 0);
}

#[test]
fn a_restart_and_the_exit_end_what_the_program_daemonized() {
    let ws = Ws::new();
    ws.write("config/app.toml", "port = 1\n");
    // `setsid` takes the daemon out of the program's group and session.
    // When the program dies at the restart, relive (the subreaper) adopts
    // it.
    script(
        &ws,
        "daemonizer.sh",
        "setsid sh -c 'trap \"\" TERM; echo $$ >> daemons.txt; while :; do sleep 0.05; done' &\n\
         echo $$ >> pids.txt\nexec sleep 600",
    );
    let mut watch = ws.watch(&["--exec", "./daemonizer.sh", "--grace-ms", "300", "--no-history"]);
    wait_until("the first daemon", || pids(&ws, "daemons.txt").len() == 1);
    let daemon = pids(&ws, "daemons.txt")[0];

    ws.write("config/app.toml", "port = 2\n");
    watch.wait_kind("config_changed", "app");
    wait_until("the restart", || pids(&ws, "pids.txt").len() == 2);
    assert!(!common::alive(daemon), "the first program's daemon is still there after the restart");
    wait_until("the second daemon", || pids(&ws, "daemons.txt").len() == 2);

    assert_eq!(watch.terminate(), 0);
    let all: Vec<u32> = pids(&ws, "pids.txt").into_iter().chain(pids(&ws, "daemons.txt")).collect();
    wait_until("nothing of the program to run after relive exits", || count_running(&all) == 0);
}

#[test]
fn a_program_run_directly_dies_with_relive_even_by_sigkill() {
    let ws = Ws::new();
    ws.write("config/app.toml", "port = 1\n");
    script(&ws, "server.sh", "trap '' TERM\necho $$ >> pids.txt\nwhile :; do sleep 0.05; done");
    let watch = ws.watch(&["--exec", "./server.sh", "--no-history"]);
    wait_until("the first start", || pids(&ws, "pids.txt").len() == 1);
    let program = pids(&ws, "pids.txt")[0];
    // No clean stop: the kernel sends the parent-death signal.
    common::signal(watch.pid(), rustix::process::Signal::KILL);
    wait_until("the program to die with relive", || !running(program));
}

/// `--signal HUP` to a program that writes a line on HUP: each change is one
/// line, from the one copy that ever started.
fn signal_reaches(command: &str, relive_ignores_hup: bool) {
    let ws = Ws::new();
    ws.write("config/app.yaml", "level: info\n");
    script(&ws, "reloader.sh", "trap 'echo hup >> hups.txt' HUP\necho $$ >> pids.txt\nwhile :; do sleep 0.05; done");
    let args = ["--exec", command, "--signal", "HUP", "--no-history"];
    let mut watch = if relive_ignores_hup { ws.watch_ignoring_hup(&args) } else { ws.watch(&args) };
    wait_until("the first start", || pids(&ws, "pids.txt").len() == 1);
    let program = pids(&ws, "pids.txt")[0];

    ws.write("config/app.yaml", "level: debug\n");
    watch.wait_kind("config_changed", "app");
    wait_until("the program to see SIGHUP", || ws.read("hups.txt").lines().count() == 1);
    ws.write("config/app.yaml", "level: warn\n");
    watch.wait_kind("config_changed", "app");
    wait_until("the program to see the second SIGHUP", || ws.read("hups.txt").lines().count() == 2);
    assert_eq!(pids(&ws, "pids.txt"), [program], "signalled, never started again");
    assert!(running(program));

    assert_eq!(watch.terminate(), 0);
    wait_until("the program to stop with relive", || !running(program));
}

#[test]
fn signal_reaches_a_program_given_as_a_simple_command() {
    signal_reaches("./reloader.sh", false);
}

#[test]
fn signal_reaches_a_program_run_by_a_compound_command() {
    signal_reaches("cd . && ./reloader.sh", false);
}

/// relive started under `nohup` (SIGHUP ignored, which exec keeps): the
/// program still gets `--signal HUP`. Before, it inherited the ignored
/// disposition, its shell could not trap it, and nothing reloaded; found
/// when CI ran under `nohup` and the two tests above failed.
#[test]
fn signal_reaches_a_program_when_relive_was_started_ignoring_it() {
    signal_reaches("./reloader.sh", true);
    signal_reaches("cd . && ./reloader.sh", true);
}

/// `unshare --pid --fork --mount-proc relive ARGS`: relive is PID 1 of a
/// new PID namespace, as in a container.
struct Pid1 {
    unshare: Child,
    stderr: Receiver<String>,
    seen: Vec<String>,
}

impl Pid1 {
    fn start(ws: &Ws, args: &[&str]) -> Pid1 {
        let mut unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", env!("CARGO_BIN_EXE_relive")])
            .args(args)
            .current_dir(ws.root())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn unshare");
        let (tx, stderr) = std::sync::mpsc::channel();
        let pipe = unshare.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut pid1 = Pid1 { unshare, stderr, seen: Vec::new() };
        let deadline = Instant::now() + TIMEOUT;
        while !pid1.seen.iter().any(|l| l.starts_with("relive: watching ")) {
            let left = deadline.saturating_duration_since(Instant::now());
            match pid1.stderr.recv_timeout(left) {
                Ok(line) => pid1.seen.push(line),
                Err(_) => panic!("relive did not start as PID 1 within {TIMEOUT:?}: {:?}", pid1.seen),
            }
        }
        pid1
    }

    /// relive's pid outside the namespace: unshare's only child.
    fn relive(&self) -> u32 {
        let children = children(self.unshare.id());
        assert_eq!(children.len(), 1, "unshare has one child, relive: {children:?}");
        children[0]
    }
}

impl Drop for Pid1 {
    fn drop(&mut self) {
        // relive is PID 1 of the namespace: when it ends, the kernel kills
        // everything else in it.
        for relive in children(self.unshare.id()) {
            common::signal(relive, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.unshare.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

/// How many orphans may be waiting to be reaped at any moment: the ones
/// that exited since relive last looked.
const FEW: usize = 3;

#[test]
fn as_pid_1_relive_reaps_the_orphans_its_program_leaves() {
    let ws = Ws::new();
    ws.write("config/app.toml", "port = 1\n");
    // Each round's `sh -c` exits before its `sleep`, which is orphaned.
    script(&ws, "orphaner.sh", "while :; do sh -c 'sleep 1 & echo x >> orphans.txt'; sleep 0.02; done");
    let pid1 = Pid1::start(&ws, &["watch", "--no-history", "--exec", "./orphaner.sh"]);
    let relive = pid1.relive();
    // The orphans are relive's: it is the namespace's init.
    wait_until("relive to adopt orphans", || children(relive).len() > FEW + 1);
    wait_until("60 orphans", || ws.read("orphans.txt").lines().count() >= 60);
    wait_until("relive to reap them", || zombie_children(relive) <= FEW);
}

#[test]
fn as_pid_1_relive_reaps_orphans_that_are_not_its_programs() {
    let ws = Ws::new();
    ws.write("config/app.toml", "port = 1\n");
    // No --exec: the orphans come from `nsenter` (as from `docker exec`),
    // and the kernel gives them to the namespace's PID 1.
    let pid1 = Pid1::start(&ws, &["watch", "--no-history"]);
    let relive = pid1.relive();
    for _ in 0..10 {
        let status = Command::new("nsenter")
            .args(["--target", &relive.to_string(), "--pid", "--", "sh", "-c", "sleep 2 & exit 0"])
            .status()
            .expect("nsenter");
        assert!(status.success());
    }
    wait_until("relive to adopt the orphans", || children(relive).len() > FEW);
    wait_until("relive to reap them once they exit", || children(relive).is_empty());
}
