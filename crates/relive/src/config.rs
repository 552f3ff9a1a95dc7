//! Settings: what users set ([`HotReloadConfig`], [`Polling`]) and what the
//! engine runs with (`EngineSettings`, resolved from them). Both the
//! workspace and the engine import this module; the engine never imports
//! the workspace.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Error;
use crate::history::HistoryConfig;
use crate::paths::PathFilter;
use crate::redact::Redactor;

/// Whether to poll instead of using kernel events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Polling {
    /// Use kernel events; poll (with a warning) on filesystems that give
    /// none (NFS, SMB, 9P, FUSE) and when the watch limit or the limit on inotify instances
    /// (`fs.inotify.max_user_instances`) is reached.
    #[default]
    Auto,
    /// Always poll.
    Always,
    /// Never poll: running out of watches is an error.
    Never,
}

/// Settings of the hot reload engine.
///
/// Build it with struct update syntax:
///
/// ```
/// let config = relive::HotReloadConfig {
///     debounce_ms: 200,
///     backup_on_change: true,
///     ..Default::default()
/// };
/// ```
#[derive(Debug, Clone)]
pub struct HotReloadConfig {
    /// Globs (relative to the root) of the files to watch. Default:
    /// `config/**/*.{toml,yaml,yml,json}`, `templates/**/*`, `static/**/*`.
    pub watch_patterns: Vec<String>,
    /// The quiet period, in milliseconds, after which a change is read when
    /// relive cannot see that a write completed: when polling. With kernel
    /// events relive knows (the writer closed the file or renamed it into
    /// place) and delivers at once. Default 500.
    pub debounce_ms: u64,
    /// Run the validators before applying a value. Values must still
    /// deserialize into their type. Default true.
    pub validate_before_reload: bool,
    /// Copy the previous content of a changed config file to
    /// `data/backups/configs/<timestamp>_<file>`. Default false.
    pub backup_on_change: bool,
    /// Globs of paths to ignore; a match on a directory ignores everything
    /// in it. Default `**/*.tmp`, `**/*.swp`, `**/.*`. Ignoring `..data`
    /// does not hide a Kubernetes ConfigMap update: relive re-reads the
    /// symlinks next to any directory or symlink that changes.
    pub exclude_patterns: Vec<String>,
    /// How long to wait, in milliseconds, for a writer that modified a file
    /// and has not closed it before reading it anyway. Default 2000.
    pub write_timeout_ms: u64,
    /// When to poll. Default [`Polling::Auto`].
    pub polling: Polling,
    /// Time between scans when polling, in milliseconds. Default 500.
    pub poll_interval_ms: u64,
    /// The most directories relive may watch before it polls instead; the
    /// kernel's limit applies anyway. Default none.
    pub watch_limit: Option<usize>,
    /// Globs over key names whose values are redacted in events, logs and
    /// history diffs (never in stored versions). Default
    /// [`Redactor::DEFAULT_PATTERNS`](crate::Redactor::DEFAULT_PATTERNS).
    pub redact_patterns: Vec<String>,
    /// Bounds on what a config file may be, checked before its text reaches
    /// a parser. See [`Limits`].
    pub limits: Limits,
    /// The version history under `data/history/`: on by default, the newest
    /// 100 versions of each config for up to 30 days. See
    /// [`Workspace::history`](crate::Workspace::history).
    pub history: HistoryConfig,
}

impl Default for HotReloadConfig {
    fn default() -> HotReloadConfig {
        HotReloadConfig {
            watch_patterns: [
                "config/**/*.toml",
                "config/**/*.yaml",
                "config/**/*.yml",
                "config/**/*.json",
                "templates/**/*",
                "static/**/*",
            ]
            .map(String::from)
            .to_vec(),
            debounce_ms: 500,
            validate_before_reload: true,
            backup_on_change: false,
            exclude_patterns: ["**/*.tmp", "**/*.swp", "**/.*"].map(String::from).to_vec(),
            write_timeout_ms: 2000,
            polling: Polling::Auto,
            poll_interval_ms: 500,
            watch_limit: None,
            redact_patterns: Redactor::DEFAULT_PATTERNS.map(String::from).to_vec(),
            history: HistoryConfig::default(),
            limits: Limits::default(),
        }
    }
}

/// Bounds on what a config document may be.
///
/// A config file is input like any other: it may be huge, nested without
/// end, or a YAML alias bomb (a few kilobytes that expand to billions of
/// values). relive checks these limits before and while it parses, so a
/// hostile document is rejected (a [`ConfigErrorKind::Limit`] error, with
/// file, line and column where known) in about the time it takes to read
/// it, with bounded memory, and the last good value stays live. The same
/// limits apply to documents that do not come from files
/// ([`HotReloadManager::publish`](crate::HotReloadManager::publish), etcd).
///
/// [`ConfigErrorKind::Limit`]: crate::ConfigErrorKind::Limit
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest document, in bytes. A larger file is not read at all.
    /// It also caps the text (strings and keys) one parse may build, which
    /// only a YAML alias of a long string can exceed: each copy is one
    /// value but costs its whole length. Default 8 MiB.
    pub max_file_size: u64,
    /// How deep collections may nest (`[[[...]]]`, maps of maps). YAML flow
    /// collections are checked by a linear scan before the parser sees the
    /// text. The JSON parser stops at 128 levels and the TOML parser at
    /// about 80 whatever this says (a limit error too). Default 64.
    pub max_depth: usize,
    /// The most values (scalars and collections) one document may build,
    /// counting every expansion of a YAML alias: the bound on the work and
    /// memory of one parse. Default 1,000,000.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_file_size: 8 << 20, max_depth: 64, max_nodes: 1_000_000 }
    }
}

/// Everything the engine needs, resolved from a [`HotReloadConfig`].
pub(crate) struct EngineSettings {
    pub root: PathBuf,
    pub config_dir: PathBuf,
    pub data_dir: PathBuf,
    pub env: Option<String>,
    pub filter: PathFilter,
    pub redactor: Redactor,
    pub validate: bool,
    pub backup: bool,
    /// `None` when history is off.
    pub history: Option<HistoryConfig>,
    pub polling: Polling,
    pub poll_interval: Duration,
    pub quiet: Duration,
    pub write_timeout: Duration,
    pub watch_limit: Option<usize>,
    pub limits: Limits,
}

impl EngineSettings {
    pub(crate) fn new(
        root: &Path,
        config_dir: PathBuf,
        data_dir: PathBuf,
        env: Option<String>,
        c: &HotReloadConfig,
    ) -> Result<EngineSettings, Error> {
        Ok(EngineSettings {
            root: root.to_path_buf(),
            config_dir,
            data_dir,
            env,
            filter: PathFilter::new(root, &c.watch_patterns, &c.exclude_patterns)?,
            redactor: Redactor::new(&c.redact_patterns)?,
            validate: c.validate_before_reload,
            backup: c.backup_on_change,
            history: c.history.enabled.then(|| c.history.clone()),
            polling: c.polling,
            poll_interval: Duration::from_millis(c.poll_interval_ms.max(1)),
            quiet: Duration::from_millis(c.debounce_ms),
            write_timeout: Duration::from_millis(c.write_timeout_ms),
            watch_limit: c.watch_limit,
            limits: c.limits,
        })
    }
}
