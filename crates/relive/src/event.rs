//! The events relive reports: what changed on disk, what was applied, what
//! was rejected.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::changeset::ChangeSetId;
use crate::error::ConfigError;

/// Something that happened in a watched workspace.
///
/// Events reach subscribers of [`HotReloadManager::subscribe`] and handlers
/// registered by glob or as a [`ReloadHandler`]. Values in
/// [`ConfigChanged`](ChangeEvent::ConfigChanged) are redacted: values under
/// keys that look like secrets (see [`Redactor`]) read `"[redacted]"`.
///
/// [`HotReloadManager::subscribe`]: crate::HotReloadManager::subscribe
/// [`ReloadHandler`]: crate::ReloadHandler
/// [`Redactor`]: crate::Redactor
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ChangeEvent {
    /// A config has a new value, which passed validation and is now live.
    ConfigChanged {
        /// The config's name (`app` for `config/app.toml`).
        config_name: String,
        /// The previous value, redacted. `Null` for the first value.
        old_value: Arc<serde_json::Value>,
        /// The new value, redacted.
        new_value: Arc<serde_json::Value>,
        /// The files the value was merged from, base first.
        files: Arc<[PathBuf]>,
    },
    /// The configs of one change set were applied together: it follows
    /// their [`ConfigChanged`](ChangeEvent::ConfigChanged) events (one per
    /// config, in this order). Every reload that applies anything is a
    /// change set, of one config or of several (a group, a base and its
    /// overlay, a ConfigMap swap, a released
    /// [`Hold`](crate::Hold), a
    /// [`publish_set`](crate::HotReloadManager::publish_set)).
    ChangeSetApplied {
        /// The set's identity, which the history records with each
        /// version.
        id: ChangeSetId,
        /// The configs whose new values are live, in the order of their
        /// `ConfigChanged` events.
        configs: Arc<[String]>,
    },
    /// A watched file was created, modified, deleted or renamed.
    FileChanged {
        /// The file's path.
        path: PathBuf,
        /// What happened to it.
        change_type: ChangeType,
        /// The content hash (xxh3-64) of the new bytes, as the engine
        /// computed it to tell a change from a no-op save; `None` for a
        /// deletion.
        hash: Option<u64>,
    },
    /// A config changed on disk but was not applied; the last good value
    /// stays live.
    ValidationFailed {
        /// The config's name.
        config_name: String,
        /// Why, with file, line and column where known.
        error: Arc<ConfigError>,
    },
    /// A config reload finished and its new value is live.
    ReloadCompleted {
        /// The config's name.
        config_name: String,
        /// From the first filesystem event of the change to the new value
        /// being live.
        duration: Duration,
    },
    /// A handler returned an error or panicked. The watcher goes on.
    HandlerFailed {
        /// The handler's name: its glob pattern, or its type name.
        handler: String,
        /// The error or panic message.
        error: String,
        /// When the handler's error is (or wraps) a [`ConfigError`], that
        /// error, with its file, line and column as structure.
        located: Option<Arc<ConfigError>>,
    },
    /// A file could not be read after bounded retries.
    ReadFailed {
        /// The file's path.
        path: PathBuf,
        /// The last I/O error.
        error: String,
    },
}

impl ChangeEvent {
    /// The config name this event is about, if any.
    pub fn config_name(&self) -> Option<&str> {
        match self {
            ChangeEvent::ConfigChanged { config_name, .. }
            | ChangeEvent::ValidationFailed { config_name, .. }
            | ChangeEvent::ReloadCompleted { config_name, .. } => Some(config_name),
            _ => None,
        }
    }

    /// The file path this event is about, if any.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            ChangeEvent::FileChanged { path, .. } | ChangeEvent::ReadFailed { path, .. } => Some(path),
            _ => None,
        }
    }

    /// A short, stable name for the event's kind (`config_changed`, ...), as
    /// used in metrics labels and JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            ChangeEvent::ConfigChanged { .. } => "config_changed",
            ChangeEvent::ChangeSetApplied { .. } => "change_set_applied",
            ChangeEvent::FileChanged { .. } => "file_changed",
            ChangeEvent::ValidationFailed { .. } => "validation_failed",
            ChangeEvent::ReloadCompleted { .. } => "reload_completed",
            ChangeEvent::HandlerFailed { .. } => "handler_failed",
            ChangeEvent::ReadFailed { .. } => "read_failed",
        }
    }
}

/// What happened to a file.
///
/// The kind is decided by comparing the file's state before and after, not
/// by the raw filesystem events: an editor's atomic save (write a temporary
/// file, rename it over) of an existing file is `Modified`, as the user sees
/// it; a file moved from one watched name to another is `Renamed`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeType {
    /// The file did not exist before.
    Created,
    /// The file's content changed.
    Modified,
    /// The file no longer exists.
    Deleted,
    /// The file was moved here from another watched path, which no longer
    /// exists.
    Renamed {
        /// The old path.
        from: PathBuf,
    },
}

impl ChangeType {
    /// A short, stable name: `created`, `modified`, `deleted`, `renamed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ChangeType::Created => "created",
            ChangeType::Modified => "modified",
            ChangeType::Deleted => "deleted",
            ChangeType::Renamed { .. } => "renamed",
        }
    }
}
