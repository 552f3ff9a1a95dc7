//! Exit codes and the error type of the commands.

use std::fmt;
use std::process::ExitCode;

/// How a command ended; see [`EXIT_CODES`](crate::cli::EXIT_CODES).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: success.
    Ok,
    /// 1: validation errors were found.
    Invalid,
    /// 2: a usage error (most are reported by clap itself).
    Usage,
    /// 3: a runtime error.
    Runtime,
    /// 4: a fleet write found another version than it expected, or a
    /// canary in progress; nothing was written.
    Conflict,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(match exit {
            Exit::Ok => 0,
            Exit::Invalid => 1,
            Exit::Usage => 2,
            Exit::Runtime => 3,
            Exit::Conflict => 4,
        })
    }
}

/// An error that ends a command, with the exit code it ends it with.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub exit: Exit,
    /// What went wrong, lowercase, without a trailing period.
    pub message: String,
}

impl Failure {
    /// A runtime error (exit code 3).
    pub fn runtime(message: impl fmt::Display) -> Failure {
        Failure { exit: Exit::Runtime, message: message.to_string() }
    }

    /// An invalid subject (exit code 1), such as a rejected config.
    pub fn invalid(message: impl fmt::Display) -> Failure {
        Failure { exit: Exit::Invalid, message: message.to_string() }
    }
}

impl From<relive::Error> for Failure {
    fn from(error: relive::Error) -> Failure {
        match error {
            relive::Error::Config { .. }
            | relive::Error::History { .. }
            | relive::Error::UnknownVersion { .. }
            | relive::Error::UnknownChangeSet { .. } => Failure::invalid(error),
            _ => Failure::runtime(error),
        }
    }
}

/// The result of a command.
pub type Result<T, E = Failure> = std::result::Result<T, E>;
