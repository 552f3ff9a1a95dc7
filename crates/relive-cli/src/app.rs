//! Runs a parsed command line: sets up colours and the runtime, dispatches,
//! and turns failures into messages and exit codes.

use clap::CommandFactory;

use crate::cli::{Cli, Color, Command};
use crate::exit::{Exit, Failure};
use crate::output;

/// Runs the command and returns its exit code.
pub fn run(cli: Cli) -> Exit {
    match cli.color {
        Color::Auto => {}
        Color::Always => anstream::ColorChoice::Always.write_global(),
        Color::Never => anstream::ColorChoice::Never.write_global(),
    }
    crate::telemetry::init_logs();
    match dispatch(cli.command) {
        Ok(exit) => exit,
        Err(Failure { exit, message }) => {
            output::error(&message);
            exit
        }
    }
}

fn dispatch(command: Command) -> Result<Exit, Failure> {
    if let Command::Completions(args) = &command {
        let mut cmd = Cli::command();
        clap_complete::generate(args.shell, &mut cmd, "relive", &mut std::io::stdout());
        return Ok(Exit::Ok);
    }
    // `check` loads each config once and needs no engine or runtime.
    let command = match command {
        Command::Check(args) => return crate::check::run(args),
        command => command,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        // As PID 1 (in a container), every orphan is relive's to reap, and
        // nobody else would. Windows has no orphans to reap.
        #[cfg(unix)]
        if crate::reap::is_init() {
            tokio::spawn(crate::reap::reap_forever());
        }
        match command {
            Command::Watch(args) => crate::watch::run(args).await,
            Command::History(args) => crate::history::history(args).await,
            Command::Show(args) => crate::history::show(args).await,
            Command::Diff(args) => crate::history::diff(args).await,
            Command::Rollback(args) => crate::history::rollback(args).await,
            Command::Apply(args) => crate::apply::run(args).await,
            Command::Serve(args) => crate::serve::run(args).await,
            Command::Fleet(args) => crate::fleet::run(args).await,
            Command::Completions(_) | Command::Check(_) => unreachable!("handled above"),
        }
    })
}

/// Opens the workspace at `dir`, or the one found from the current
/// directory, with `env` (or RELIVE_ENV) as its environment.
pub fn workspace(dir: Option<&std::path::Path>, env: Option<&str>) -> Result<relive::Workspace, Failure> {
    let ws = match dir {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(Failure::runtime(format!("{}: not a directory", dir.display())));
            }
            relive::Workspace::new(dir)
        }
        None => relive::Workspace::discover()?,
    };
    Ok(match env {
        Some(env) => ws.with_env(env),
        None => ws,
    })
}
