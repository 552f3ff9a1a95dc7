//! Settings: what users set ([`HotReloadConfig`], [`Polling`]) and what the
//! engine runs with (`EngineSettings`, resolved from them). Both the
//! workspace and the engine import this module; the engine never imports
//! the workspace.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::document::Decode;
use crate::envlayer::{EnvLayer, EnvOverrides};
use crate::error::Error;
use crate::history::HistoryConfig;
use crate::paths::PathFilter;
use crate::redact::Redactor;
use crate::sops::Identities;

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

/// Which backend reports file changes, when relive does not poll.
///
/// | platform | [`Backend::Auto`] | also available |
/// | --- | --- | --- |
/// | Linux | inotify, read directly | [`Backend::Portable`] (inotify through `notify`) |
/// | macOS | [`Backend::Portable`]: FSEvents | |
/// | Windows | [`Backend::Portable`]: `ReadDirectoryChangesW` | |
/// | BSDs | [`Backend::Portable`]: kqueue | |
///
/// The two backends differ in how they know that a write is complete. The
/// inotify backend sees the writer's close (`IN_CLOSE_WRITE`) and reads
/// under a read lease, which proves no writer has the file open. The
/// portable backend sees only that something was written: it reads a file
/// once no event came for it for a short quiet window (a few
/// milliseconds), checks that the file's size and modification time did
/// not move during the read, and confirms a read that came back shorter
/// than the file was with a second read (see the crate's "Known
/// problems").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backend {
    /// inotify on Linux, [`Backend::Portable`] elsewhere. On Linux the
    /// environment variable `RELIVE_BACKEND` (`inotify` or `portable`)
    /// overrides the choice: that is how the test suites run a second time
    /// through the portable backend, and how the `relive` command is told.
    #[default]
    Auto,
    /// inotify, read directly: close events and read leases. Linux only;
    /// elsewhere starting the engine fails.
    Inotify,
    /// The platform's native events through the `notify` crate (FSEvents,
    /// `ReadDirectoryChangesW`, kqueue, inotify), with a quiet window
    /// instead of close events and leases.
    Portable,
}

impl Backend {
    /// The backend to run: `Auto` resolved for this platform and the
    /// `RELIVE_BACKEND` variable.
    pub(crate) fn resolve(self) -> Result<Backend, Error> {
        match self {
            Backend::Auto => match std::env::var("RELIVE_BACKEND").ok().filter(|v| !v.is_empty()) {
                Some(value) => Backend::parse(&value),
                None => Ok(Backend::native()),
            },
            Backend::Inotify if !cfg!(target_os = "linux") => {
                Err(Error::Watch("the inotify backend exists only on Linux: use Backend::Portable".to_string()))
            }
            other => Ok(other),
        }
    }

    /// Reads a backend's name (`RELIVE_BACKEND`, the command line).
    fn parse(value: &str) -> Result<Backend, Error> {
        match value {
            "auto" => Ok(Backend::native()),
            "inotify" => Backend::Inotify.resolve(),
            "portable" => Ok(Backend::Portable),
            other => Err(Error::Watch(format!(
                "RELIVE_BACKEND={other:?} is not a backend: expected auto, inotify or portable"
            ))),
        }
    }

    /// This platform's own choice.
    fn native() -> Backend {
        if cfg!(target_os = "linux") { Backend::Inotify } else { Backend::Portable }
    }
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
    /// in it. Default [`DEFAULT_EXCLUDES`](HotReloadConfig::DEFAULT_EXCLUDES):
    /// `**/*.tmp`, `**/*.swp`, `**/*~`, `**/.*`. Ignoring `..data`
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
    /// Which backend reports changes when relive does not poll. Default
    /// [`Backend::Auto`]: inotify on Linux (unless `RELIVE_BACKEND` says
    /// otherwise), the portable backend elsewhere.
    pub backend: Backend,
    /// The most directories relive may watch before it polls instead; the
    /// kernel's limit applies anyway. Default none.
    pub watch_limit: Option<usize>,
    /// Globs over key names whose values are redacted in events, logs and
    /// history diffs (never in stored versions). Default
    /// [`Redactor::DEFAULT_PATTERNS`](crate::Redactor::DEFAULT_PATTERNS).
    pub redact_patterns: Vec<String>,
    /// Age key files (as `age-keygen` writes them) that open SOPS-encrypted
    /// configs, besides those `sops` itself would use: `SOPS_AGE_KEY`,
    /// `SOPS_AGE_KEY_FILE` and the default `sops/age/keys.txt` under the
    /// user's config directory. Default none.
    pub age_key_files: Vec<PathBuf>,
    /// The environment layer: variables such as `RELIVE__SERVER__PORT=8080`
    /// that override file values, above the environment's overlay. `None`
    /// turns it off. Default prefix `RELIVE`, separator `__`. Variables are
    /// read when the engine starts (and at each one-shot load).
    pub env_layer: Option<EnvLayer>,
    /// How long a config made of several files (a base and the overlay for
    /// the environment) waits, after a change to one of them, for the others
    /// to change too, in milliseconds: a deploy, `git checkout` or a
    /// rollback that rewrites both a moment apart is then one version, never
    /// the mix in between. Each further change restarts the wait, up to ten
    /// times it. A config of one file is applied at once. 0 turns it off.
    /// Default 10.
    pub change_set_window_ms: u64,
    /// How long a [`Hold`](crate::Hold) is obeyed, in milliseconds: an
    /// engine ignores an older one (and one whose process is gone), with a
    /// warning, so that a copier that crashed or hangs cannot freeze the
    /// service. Default 30,000.
    pub hold_timeout_ms: u64,
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
            exclude_patterns: HotReloadConfig::DEFAULT_EXCLUDES.map(String::from).to_vec(),
            write_timeout_ms: 2000,
            polling: Polling::Auto,
            poll_interval_ms: 500,
            backend: Backend::Auto,
            watch_limit: None,
            redact_patterns: Redactor::DEFAULT_PATTERNS.map(String::from).to_vec(),
            history: HistoryConfig::default(),
            limits: Limits::default(),
            age_key_files: Vec::new(),
            env_layer: Some(EnvLayer::default()),
            change_set_window_ms: 10,
            hold_timeout_ms: 30_000,
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

/// The workspace's settings file, `relive.toml` at its root: settings that
/// the library, `relive watch`, `show`, `diff` and `history` all honour.
///
/// ```toml
/// [redact]
/// patterns = ["*iban*", "ssn"]   # added to the default patterns
///
/// [limits]
/// max_file_size = 1048576
/// max_depth = 32
/// max_nodes = 100000
///
/// [secrets]
/// age_key_files = ["/etc/relive/age.txt"]   # relative to the workspace
///
/// [env]
/// prefix = "MYAPP"      # MYAPP__SERVER__PORT=8080; `enabled = false` turns it off
/// separator = "__"
/// ```
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    #[serde(default)]
    redact: RedactSection,
    limits: Option<LimitsSection>,
    #[serde(default)]
    secrets: SecretsSection,
    env: Option<EnvSection>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvSection {
    /// `false` turns the layer off.
    enabled: Option<bool>,
    prefix: Option<String>,
    separator: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RedactSection {
    #[serde(default)]
    patterns: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    max_file_size: Option<u64>,
    max_depth: Option<usize>,
    max_nodes: Option<usize>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsSection {
    #[serde(default)]
    age_key_files: Vec<PathBuf>,
}

impl HotReloadConfig {
    /// The defaults, with what `root/relive.toml` says, if it exists.
    pub(crate) fn for_workspace(root: &Path) -> Result<HotReloadConfig, Error> {
        let path = root.join("relive.toml");
        let mut config = HotReloadConfig::default();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(config),
            Err(e) => return Err(Error::Settings { path, message: format!("cannot read: {e}") }),
        };
        let file: SettingsFile = toml::from_str(&text).map_err(|e| {
            let at = e.span().map(|s| crate::format::line_col(&text, s.start));
            let message = match at {
                Some((line, column)) => format!("{line}:{column}: {}", e.message()),
                None => e.message().to_string(),
            };
            Error::Settings { path: path.clone(), message }
        })?;
        for pattern in file.redact.patterns {
            if !config.redact_patterns.contains(&pattern) {
                config.redact_patterns.push(pattern);
            }
        }
        // Checked now, so that a bad pattern names the file.
        Redactor::new(&config.redact_patterns)
            .map_err(|e| Error::Settings { path: path.clone(), message: e.to_string() })?;
        if let Some(limits) = file.limits {
            let l = &mut config.limits;
            l.max_file_size = limits.max_file_size.unwrap_or(l.max_file_size);
            l.max_depth = limits.max_depth.unwrap_or(l.max_depth);
            l.max_nodes = limits.max_nodes.unwrap_or(l.max_nodes);
        }
        config.age_key_files = file.secrets.age_key_files.into_iter().map(|p| root.join(p)).collect();
        if let Some(env) = file.env {
            config.env_layer = match env.enabled {
                Some(false) => None,
                _ => {
                    let d = EnvLayer::default();
                    Some(EnvLayer {
                        prefix: env.prefix.unwrap_or(d.prefix),
                        separator: env.separator.unwrap_or(d.separator),
                    })
                }
            };
        }
        Ok(config)
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
    /// Never `Auto`: resolved for the platform and `RELIVE_BACKEND`.
    pub backend: Backend,
    pub poll_interval: Duration,
    pub quiet: Duration,
    pub write_timeout: Duration,
    /// Counts inotify watches, so only Linux's intake reads it.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub watch_limit: Option<usize>,
    pub change_set_window: Duration,
    pub hold_timeout: Duration,
    /// Limits, identities and secret names for parsing documents.
    pub decode: Decode,
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
            backend: c.backend.resolve()?,
            poll_interval: Duration::from_millis(c.poll_interval_ms.max(1)),
            quiet: Duration::from_millis(c.debounce_ms),
            write_timeout: Duration::from_millis(c.write_timeout_ms),
            watch_limit: c.watch_limit,
            change_set_window: Duration::from_millis(c.change_set_window_ms),
            hold_timeout: Duration::from_millis(c.hold_timeout_ms),
            decode: c.decode()?,
        })
    }
}

impl HotReloadConfig {
    /// The default [`exclude_patterns`](HotReloadConfig::exclude_patterns):
    /// editors' temporary files and backups, and hidden files (see
    /// [`is_excluded_by_default`](HotReloadConfig::is_excluded_by_default)).
    pub const DEFAULT_EXCLUDES: [&'static str; 4] = ["**/*.tmp", "**/*.swp", "**/*~", "**/.*"];

    /// The default exclude rule as a test of one file name, for code that
    /// lists files itself (relive-web's templates and assets): hidden
    /// files, `*.tmp`, `*.swp` and editors' backups (`name~`).
    pub fn is_excluded_by_default(file_name: &str) -> bool {
        file_name.starts_with('.')
            || file_name.ends_with(".tmp")
            || file_name.ends_with(".swp")
            || file_name.ends_with('~')
    }

    /// What parsing needs: the limits, the age identities (from where
    /// `sops` looks and from [`age_key_files`](HotReloadConfig::age_key_files)),
    /// and the secret key names.
    pub(crate) fn decode(&self) -> Result<Decode, Error> {
        // A key source that cannot be read is a warning, not a failure:
        // plain configs load without keys, and a SOPS file that needed the
        // key says so when it is loaded.
        let mut identities = Identities::from_env().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the age identities sops would use");
            Identities::new()
        });
        for path in &self.age_key_files {
            identities.add_key_file(path).map_err(|e| Error::Watch(format!("cannot use age key file: {e}")))?;
        }
        let env = match &self.env_layer {
            Some(layer) => EnvOverrides::read(
                layer,
                std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
            ),
            None => EnvOverrides::default(),
        };
        Ok(Decode { limits: self.limits, identities, redactor: Redactor::new(&self.redact_patterns)?, env })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_are_read_and_a_wrong_one_is_a_clear_error() {
        assert_eq!(Backend::parse("portable").unwrap(), Backend::Portable);
        assert_eq!(Backend::parse("auto").unwrap(), Backend::native());
        #[cfg(target_os = "linux")]
        assert_eq!(Backend::parse("inotify").unwrap(), Backend::Inotify);
        #[cfg(not(target_os = "linux"))]
        assert!(Backend::parse("inotify").is_err());
        let error = Backend::parse("fsevents").unwrap_err().to_string();
        assert!(error.contains("RELIVE_BACKEND=\"fsevents\"") && error.contains("portable"), "{error}");
    }
}
