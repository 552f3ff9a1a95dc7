//! The crate's one error type, and the located template error it carries.

use std::fmt;
use std::path::PathBuf;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in a relive-web call.
///
/// [`Forbidden`](Error::Forbidden) and [`NotFound`](Error::NotFound) are the
/// answers of [`resolve`](crate::resolve) to a request; a server maps them
/// to 403 (or 404, to say less) and 404.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A template failed to compile or to render.
    #[error("{0}")]
    Template(TemplateError),
    /// A request path tried to leave the static root, or is malformed.
    #[error("forbidden request path {path:?}: {reason}")]
    Forbidden {
        /// The request path as given.
        path: String,
        /// Why it was refused (`parent directory segment`, `escapes the static root`, ...).
        reason: &'static str,
    },
    /// No file answers the request path.
    #[error("not found: {path:?}")]
    NotFound {
        /// The request path as given.
        path: String,
    },
    /// Reading a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A host name given to [`Access::with_host`](crate::Access::with_host)
    /// is not one.
    #[error("cannot allow host {name:?}: {reason}")]
    InvalidHost {
        /// The name as given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The core library refused a call (registering a handler, starting the engine).
    #[error(transparent)]
    Relive(#[from] relive::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}

/// A template error located in its file: `templates/index.html:3:14: ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// The template's name: its path under `templates/`, with `/`.
    pub name: String,
    /// The template's file (`<workspace>/templates/<name>`).
    pub file: PathBuf,
    /// The line, from 1.
    pub line: usize,
    /// The column in characters, from 1; 1 when minijinja gives no span.
    pub column: usize,
    /// What is wrong, as minijinja says it (`syntax error: unexpected end of input, ...`).
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
    }
}

impl std::error::Error for TemplateError {}
