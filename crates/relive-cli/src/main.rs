//! `relive`: hot reload for programs in any language, config checks for CI,
//! and the version history of every config.
//!
//! This binary is a thin layer over the `relive` library: argument parsing
//! is in [`cli`], each command in its own module, and the library does the
//! watching, parsing, merging and locating of errors.

#![deny(missing_docs)]

mod app;
mod backoff;
mod check;
mod cli;
mod exec;
mod exit;
mod fleet;
mod history;
mod inventory;
mod output;
mod progress;
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
