//! Errors: one type for fatal engine errors ([`Error`]) and one for the
//! recoverable problems a config can have ([`ConfigError`]).
//!
//! A [`ConfigError`] never stops the watcher: it is reported (as a
//! [`ChangeEvent::ValidationFailed`](crate::ChangeEvent::ValidationFailed)) and
//! the last good value stays live. An [`Error`] is returned from a call that
//! could not do what was asked.

use std::fmt;
use std::path::{Path, PathBuf};

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from a call into relive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The config could not be loaded or did not validate.
    #[error("config `{name}`: {error}")]
    Config {
        /// The config's name.
        name: String,
        /// What is wrong with it.
        error: Box<ConfigError>,
    },
    /// An I/O error on a path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A glob pattern did not parse.
    #[error("invalid pattern `{pattern}`: {message}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// Why it is invalid.
        message: String,
    },
    /// No workspace was found by [`Workspace::discover`](crate::Workspace::discover).
    #[error("no workspace found: set RELIVE_WORKSPACE or run inside a directory with relive.toml or config/ (searched up from {})", start.display())]
    NoWorkspace {
        /// Where the search started.
        start: PathBuf,
    },
    /// The workspace's settings file (`relive.toml`) is invalid.
    #[error("{}: {message}", path.display())]
    Settings {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column where known.
        message: String,
    },
    /// Hot reload is already running for this workspace, with its own
    /// settings.
    #[error("hot reload is already running for this workspace; use Workspace::manager to reach it")]
    AlreadyRunning,
    /// The hot reload engine has stopped.
    #[error("hot reload engine has stopped")]
    Stopped,
    /// The file watcher could not be set up.
    #[error("watcher: {0}")]
    Watch(String),
    /// A config's history could not be read, or a version in it is not
    /// usable for what was asked.
    #[error("history of `{name}`: {message}")]
    History {
        /// The config's name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A group was asked for in a way that cannot work (no member, a
    /// member named twice).
    #[error("group {members:?}: {message}")]
    Group {
        /// The members as given.
        members: Vec<String>,
        /// What is wrong.
        message: String,
    },
    /// Another process holds the workspace
    /// ([`Workspace::hold`](crate::Workspace::hold)).
    #[error("{}: the workspace is held by process {pid}", path.display())]
    Held {
        /// The hold file.
        path: PathBuf,
        /// The holder's pid (0 if it has not written it yet).
        pid: u32,
    },
    /// The history of a config has no such version (never recorded, or
    /// pruned).
    #[error("config `{name}` has no version {version} in its history")]
    UnknownVersion {
        /// The config's name.
        name: String,
        /// The version asked for.
        version: u64,
    },
    /// No version in any config's history has this change-set id (never
    /// recorded, or pruned).
    #[error("no change set {id} in the history")]
    UnknownChangeSet {
        /// The id asked for.
        id: crate::ChangeSetId,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}

/// What kind of problem a [`ConfigError`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Io,
    /// The file is not valid TOML, YAML or JSON.
    Syntax,
    /// The file parsed, but its data does not fit the target type.
    Type,
    /// A validator rejected the value.
    Invalid,
    /// Two files claim the same role (e.g. `app.toml` and `app.json`).
    Ambiguous,
    /// No file for the config exists.
    Missing,
    /// A SOPS-encrypted document could not be decrypted or failed its
    /// integrity check (no matching age identity, a tampered value or MAC,
    /// a file half-encrypted by hand).
    Decrypt,
    /// The document is over one of the [`Limits`](crate::Limits): too
    /// large, nested too deep, or too many values (YAML aliases expanded).
    Limit,
}

/// A problem with one config: a syntax error, a value of the wrong type, a
/// validator's rejection, an unreadable or ambiguous file.
///
/// It names the file, and the line and column where they are known (1-based),
/// and the key path (`server.port`, `hosts[2]`) where one applies. Its
/// `Display` is the conventional `file:line:col: message` form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    kind: ConfigErrorKind,
    message: String,
    file: Option<PathBuf>,
    line: Option<usize>,
    column: Option<usize>,
    key: Option<String>,
}

impl ConfigError {
    /// Creates an error of `kind` with `message` and no location.
    pub fn new(kind: ConfigErrorKind, message: impl Into<String>) -> ConfigError {
        ConfigError { kind, message: message.into(), file: None, line: None, column: None, key: None }
    }

    /// Sets the file the error is in.
    pub fn with_file(mut self, file: impl Into<PathBuf>) -> ConfigError {
        self.file = Some(file.into());
        self
    }

    /// Sets the 1-based line and column of the error.
    pub fn with_position(mut self, line: usize, column: usize) -> ConfigError {
        self.line = Some(line);
        self.column = Some(column);
        self
    }

    /// The same error, its message led by `prefix` (its location kept).
    pub(crate) fn prefixed(mut self, prefix: &str) -> ConfigError {
        self.message = format!("{prefix}{}", self.message);
        self
    }

    /// The same error, of another kind.
    pub(crate) fn with_kind(mut self, kind: ConfigErrorKind) -> ConfigError {
        self.kind = kind;
        self
    }

    /// Sets the key path the error is about, such as `server.port`.
    pub fn with_key(mut self, key: impl Into<String>) -> ConfigError {
        self.key = Some(key.into());
        self
    }

    /// What kind of problem this is.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }

    /// The message, without location.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The file the error is in, when known.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The 1-based line, when known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The 1-based column, when known.
    pub fn column(&self) -> Option<usize> {
        self.column
    }

    /// The key path (`server.port`, `hosts[2]`), when the error is about one.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}:", file.display())?;
            if let (Some(line), Some(col)) = (self.line, self.column) {
                write!(f, "{line}:{col}:")?;
            }
            f.write_str(" ")?;
        }
        f.write_str(&self.message)?;
        if let Some(key) = &self.key {
            write!(f, " (at `{key}`)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A validator's rejection of a config value.
///
/// Validators return it from [`Validate::validate`](crate::Validate::validate)
/// or from a closure given to
/// [`ConfigBuilder::validate`](crate::ConfigBuilder::validate). Anything that
/// implements `Display` converts into one; [`ValidationError::at`] names the
/// offending key so relive can point at its file, line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub(crate) message: String,
    pub(crate) key: Option<String>,
}

impl ValidationError {
    /// A rejection with `message`.
    pub fn new(message: impl Into<String>) -> ValidationError {
        ValidationError { message: message.into(), key: None }
    }

    /// A rejection of the value at `key` (dotted path, `a.b[2].c`).
    pub fn at(key: impl Into<String>, message: impl Into<String>) -> ValidationError {
        ValidationError { message: message.into(), key: Some(key.into()) }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{key}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ValidationError {}

impl From<String> for ValidationError {
    fn from(message: String) -> ValidationError {
        ValidationError::new(message)
    }
}

impl From<&str> for ValidationError {
    fn from(message: &str) -> ValidationError {
        ValidationError::new(message)
    }
}
