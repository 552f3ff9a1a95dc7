//! `relive`: hot reload for programs in any language, config checks for CI,
//! and the version history of every config.
//!
//! This binary is a thin layer over the `relive` library: argument parsing
//! is in [`cli`], each command in its own module, and the library does the
//! watching, parsing, merging and locating of errors.
//!
//! # Known problems
//!
//! - `watch --exec`: a restart or exit stops the program's process group
//!   and waits until it is empty, then the processes the program left
//!   outside it that relive adopted as their subreaper ([`exec`]). A
//!   process that left the group while its parent still runs is not
//!   relive's child and is not found (until its parent dies). As PID 1,
//!   relive does not end adopted processes at a restart, since every
//!   orphan of the container is adopted. Finding them needs `/proc` of
//!   relive's own PID namespace.
//! - If relive is killed with SIGKILL (or dies of a signal it does not
//!   handle, such as SIGHUP when its terminal closes), the kernel sends
//!   SIGKILL to the process relive started (`PR_SET_PDEATHSIG`) and to
//!   nothing else: a program run under `sh -c` and the program's own
//!   children keep running.
//! - relive reaps every child it has (it must, as a subreaper and as PID 1);
//!   code in this process that started a child of its own without
//!   `reap::spawn` would find it reaped already.
//! - The subreaper, the parent-death signal and PID 1 reaping are Linux's.
//!   On macOS what the program double-forks is not stopped at a restart,
//!   and a relive killed with SIGKILL leaves its program running. On
//!   Windows `--exec` restarts only (no `--signal`), through a job object
//!   ([`platform`]); a process the program starts in the instant before it
//!   is put in the job is outside it. macOS and Windows are type-checked in
//!   CI, not run.

#![deny(missing_docs)]

mod app;
mod apply;
mod backoff;
mod check;
mod cli;
mod exec;
mod exit;
mod fleet;
mod history;
mod inventory;
mod output;
mod platform;
mod progress;
#[cfg(unix)]
mod reap;
mod schema;
mod serve;
mod telemetry;
mod watch;
mod webhook;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // clap exits with 2 on a usage error and 0 for --help and --version.
    let cli = cli::Cli::parse();
    app::run(cli).into()
}
