//! Version history: every version of a config that was applied or
//! rejected, with its content, a diff from the version before, and rollback.
//!
//! # On disk
//!
//! ```text
//! data/history/
//!   .lock                     held (flock) by the one engine that records
//!   <name>/                   `/` in a name is written `%2F`, `%` is `%25`
//!     audit.log               append-only: `<xxh3-64 hex> <json>\n` per record
//!     versions/<n>.json       the documents of version n, bytes as they were
//!     rollback.json           a pending rollback: {"to": n, "hash": ...}
//! ```
//!
//! A version's content file is written to a temp file, fsynced, renamed into
//! place and its directory fsynced *before* its record is appended to the
//! log (and the log fsynced). So a record always points at durable content,
//! and a process killed at any moment leaves a log whose last record is
//! either complete or absent (a torn tail is skipped by readers and cut off
//! by the next writer). A record whose checksum does not match is reported
//! and skipped, never fatal.
//!
//! Retention appends a `prune` record (every version below a floor is gone,
//! except the newest applied one, which is pinned), then deletes the pruned
//! content files; the log is compacted (rewritten whole, atomically) once
//! pruned records outnumber the kept ones.
//!
//! Recording happens on a writer thread of its own, fed by the engine
//! through a channel: the reload path never waits for a disk. The log is
//! opened for each append, not held, so a workspace of many configs holds no
//! descriptor per config.
//!
//! # Private
//!
//! History holds the configs as they were, secrets included. `data/`,
//! `data/history/` and every directory under it are 0700, every file 0600
//! (the lock file too: whoever can open it can take the lock and stop all
//! recording), the mode given at creation whatever the umask; a `data/` or
//! `data/history/` that is wider is narrowed, with a warning.
//!
//! A document whose file resolves (through symlinks) outside the workspace
//! was read with relive's rights, perhaps from a file its writer could not
//! read: its version is recorded, but without its content, its diff or its
//! error message, with a note ([`DocumentInfo::withheld`]); reading that
//! version, or rolling back to it, is an error that says so. The check is
//! made when the version is recorded, a moment after the engine's read.
//!
//! # Writing back
//!
//! A record says where its files go, and a record can be forged or damaged,
//! so [`History::plan`] checks every path before it writes anything: a
//! relative path under `config/`, without `..`, whose existing part resolves
//! (symlinks followed) inside the workspace's `config/`, to a regular file
//! (never a FIFO, a device or a directory) or to a file yet to be created.
//! A symlink that stays inside `config/` (Kubernetes' `..data`) is followed
//! and its target replaced. Anything else is refused with an error naming
//! the config, the version and the path. The new file keeps the mode and
//! owner of the one it replaces; a file that is gone comes back with the
//! mode recorded with the version ([`DocumentInfo::mode`]), or 0600. A
//! record numbered `u64::MAX` leaves no number after it: it is skipped as
//! damaged.

mod diff;
mod log;
mod writer;

use std::fmt;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use diff::{Diff, DiffEntry};
pub(crate) use writer::Recorder;

use crate::ChangeSetId;
use crate::document::{Decode, Document, Parsed, Sources};
use crate::error::{ConfigError, Error, Result};
use crate::format::Format;
use crate::private::{self, Keep};
use crate::redact::Redactor;
use log::{DiffRecord, Status, VersionRecord};

/// The log's file name in a config's history directory.
const LOG: &str = "audit.log";
/// The directory of content files.
const VERSIONS: &str = "versions";
/// A pending rollback.
const MARKER: &str = "rollback.json";
/// Held by the process that records history for a workspace.
const LOCK: &str = ".lock";

/// Settings of the version history (see [`Workspace::history`]).
///
/// ```
/// use std::time::Duration;
///
/// let config = relive::HotReloadConfig {
///     history: relive::HistoryConfig {
///         max_versions: 20,
///         max_age: Some(Duration::from_secs(7 * 24 * 3600)),
///         ..Default::default()
///     },
///     ..Default::default()
/// };
/// ```
///
/// [`Workspace::history`]: crate::Workspace::history
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    /// Record every applied and rejected version under `data/history/`.
    /// Default true.
    pub enabled: bool,
    /// The most versions (applied and rejected) kept per config; older ones
    /// are pruned. The newest version, and the newest applied one, are
    /// never pruned. Default 100.
    pub max_versions: usize,
    /// Versions older than this are pruned (never the newest, nor the
    /// newest applied one). `None` keeps versions whatever their age.
    /// Default 30 days.
    pub max_age: Option<Duration>,
    /// The clock that stamps versions and judges their age. Tests replace it.
    #[doc(hidden)]
    pub clock: fn() -> SystemTime,
}

impl Default for HistoryConfig {
    fn default() -> HistoryConfig {
        HistoryConfig {
            enabled: true,
            max_versions: 100,
            max_age: Some(Duration::from_secs(30 * 24 * 3600)),
            clock: SystemTime::now,
        }
    }
}

/// Whether a version was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VersionStatus {
    /// It passed validation and became the live value.
    Applied,
    /// It was tried and rejected; the value before it stayed live.
    Rejected,
}

/// One document of a version, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DocumentInfo {
    /// The file it was read from (for a published version, the origin the
    /// publisher gave).
    pub origin: PathBuf,
    /// Its format.
    pub format: Format,
    /// Its length in bytes.
    pub len: u64,
    /// The sha256 of its bytes, in hex; empty when the content is
    /// [`withheld`](DocumentInfo::withheld).
    pub sha256: String,
    /// Why its content was not stored, if it was not: a file that resolves
    /// (through a symlink) outside the workspace is recorded without its
    /// content, its diff or its error message.
    pub withheld: Option<String>,
    /// The file's permission bits when the version was recorded: what a
    /// rollback that recreates the file gives it. `None` for a published
    /// version, or one recorded by an older relive.
    pub mode: Option<u32>,
}

/// One version of a config, as the audit trail shows it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HistoryEntry {
    /// The version number: 1, 2, 3… per config, applied and rejected
    /// versions alike.
    pub version: u64,
    /// Applied or rejected.
    pub status: VersionStatus,
    /// When it was applied or rejected.
    pub time: SystemTime,
    /// The environment whose overlay was merged, if any.
    pub env: Option<String>,
    /// The sha256 (hex) of the stored content: the same documents always
    /// have the same hash.
    pub hash: String,
    /// The documents, base first.
    pub documents: Vec<DocumentInfo>,
    /// What changed from the applied version before it (for the first
    /// version, from an empty object), redacted. Empty for a rejected
    /// version that did not parse.
    pub diff: Diff,
    /// Set when the version is a rollback to that earlier version.
    pub rollback_of: Option<u64>,
    /// Why it was rejected, with file, line and column where known.
    pub error: Option<ConfigError>,
    /// Fed by [`HotReloadManager::publish`](crate::HotReloadManager::publish),
    /// not read from files. Such versions cannot be rolled back to.
    pub published: bool,
    /// The change set it was applied (or rejected) in: the versions of
    /// several configs that went live together share it
    /// ([`Workspace::change_sets`](crate::Workspace::change_sets) groups
    /// them). `None` for versions recorded before relive had change sets.
    pub change_set: Option<ChangeSetId>,
}

impl HistoryEntry {
    /// True if the version was applied.
    pub fn is_applied(&self) -> bool {
        self.status == VersionStatus::Applied
    }

    /// The files it came from, base first.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.documents.iter().map(|d| d.origin.as_path())
    }
}

/// A version with its content: the record, the documents as they were on
/// disk (secrets included: stored versions are never redacted), and the
/// merged value.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Version {
    /// The record.
    pub entry: HistoryEntry,
    /// The documents, bytes exactly as they were, base first.
    pub documents: Vec<Document>,
    /// The merged value, or `None` if a document does not parse (a
    /// rejected version can be broken) or is encrypted with no key at hand.
    /// Decrypted secrets included: show it with
    /// [`redacted_value`](Version::redacted_value).
    pub value: Option<Value>,
    /// The paths of the values that were encrypted or referenced.
    secrets: crate::document::SecretPaths,
}

impl Version {
    /// The merged value with every secret redacted: under `redactor`'s key
    /// names, and every value that was encrypted or referenced. What to
    /// show.
    pub fn redacted_value(&self, redactor: &Redactor) -> Option<Value> {
        self.value.as_ref().map(|v| redactor.redact_secrets(v, &self.secrets))
    }
}

/// A problem found while reading a history: a record skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryWarning {
    /// The log file.
    pub path: PathBuf,
    /// The 1-based line of the record.
    pub line: usize,
    /// True for a record cut short at the end of the log, which a write
    /// interrupted by a crash leaves. Such a record is absent, not damaged.
    pub truncated: bool,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for HistoryWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
    }
}

/// The recorded history of one config, read from disk.
///
/// Opening it reads the audit log only; content is read by
/// [`version`](History::version). It needs no running engine: it works
/// from another process (a CLI) while an engine records.
#[derive(Debug, Clone)]
pub struct History {
    name: String,
    root: PathBuf,
    dir: PathBuf,
    entries: Vec<HistoryEntry>,
    warnings: Vec<HistoryWarning>,
    /// How stored documents are parsed again: the workspace's limits and
    /// age identities, so that a SOPS version has a value.
    decode: Decode,
}

impl History {
    /// Reads the history of config `name` in the workspace at `root`. A
    /// config with no history has an empty one. Skipped records are logged
    /// and listed in [`warnings`](History::warnings).
    pub(crate) fn open(root: &Path, name: &str) -> Result<History> {
        let dir = config_dir(&root.join("data"), name)?;
        let path = dir.join(LOG);
        let read = log::read(&path).map_err(|e| Error::io(&path, e))?;
        for warning in &read.warnings {
            tracing::warn!(config = name, %warning, "history record skipped");
        }
        let entries = read.versions.iter().map(|r| entry(root, r)).collect();
        Ok(History {
            name: name.to_string(),
            root: root.to_path_buf(),
            dir,
            entries,
            warnings: read.warnings,
            decode: Decode::default(),
        })
    }

    /// The same history, parsing stored documents with `decode`.
    pub(crate) fn with_decode(mut self, decode: Decode) -> History {
        self.decode = decode;
        self
    }

    /// The config's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directory the history is stored in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every version kept, oldest first.
    pub fn entries(&self) -> &[HistoryEntry] {
        &self.entries
    }

    /// Records that were skipped because they were corrupt or truncated.
    pub fn warnings(&self) -> &[HistoryWarning] {
        &self.warnings
    }

    /// The record of version `n`, if kept.
    pub fn entry(&self, n: u64) -> Option<&HistoryEntry> {
        self.entries.iter().find(|e| e.version == n)
    }

    /// The newest version.
    pub fn latest(&self) -> Option<&HistoryEntry> {
        self.entries.last()
    }

    /// The newest applied version: what is live, unless the files changed
    /// since.
    pub fn latest_applied(&self) -> Option<&HistoryEntry> {
        self.entries.iter().rev().find(|e| e.is_applied())
    }

    /// Version `n` with its content, checked against its hash. A version
    /// whose content was withheld (a file that resolves outside the
    /// workspace) is an error that says so.
    pub fn version(&self, n: u64) -> Result<Version> {
        self.load(n).map(|(version, _)| version)
    }

    /// Version `n`, and its documents' origins as recorded (relative to the
    /// workspace root, unless the record says otherwise).
    fn load(&self, n: u64) -> Result<(Version, Vec<PathBuf>)> {
        let entry = self.entry(n).ok_or_else(|| Error::UnknownVersion { name: self.name.clone(), version: n })?;
        let path = self.dir.join(VERSIONS).join(format!("{n}.json"));
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => self.error(format!("the content of version {n} is missing")),
            _ => Error::io(&path, e),
        })?;
        if log::sha256_hex(&bytes) != entry.hash {
            return Err(self.error(format!("the content of version {n} does not match its hash")));
        }
        let content: log::Content = serde_json::from_slice(&bytes)
            .map_err(|e| self.error(format!("the content of version {n} is unreadable: {e}")))?;
        let mut documents = Vec::new();
        let mut origins = Vec::new();
        for doc in content.documents {
            if let Some(why) = &doc.withheld {
                return Err(self.error(format!("the content of version {n} was not stored: {why}")));
            }
            let (Some(format), Some(bytes)) = (log::format_from_name(&doc.format), doc.bytes()) else {
                return Err(self.error(format!("the content of version {n} is unreadable")));
            };
            documents.push(Document::new(resolve(&self.root, &doc.origin, entry.published), format, bytes));
            origins.push(doc.origin);
        }
        // A version rejected because its files were gone has no value.
        let gone = documents.is_empty() && !entry.is_applied();
        let sources = documents
            .iter()
            .map(|d| Parsed::parse(d.clone(), &self.decode))
            .collect::<std::result::Result<Vec<_>, _>>()
            .ok()
            .filter(|_| !gone)
            .map(|docs| Sources { docs, ..Sources::default() });
        let value = sources.as_ref().map(Sources::merge);
        let secrets = sources.map(|s| s.secrets()).unwrap_or_default();
        Ok((Version { entry: entry.clone(), documents, value, secrets }, origins))
    }

    /// The diff from version `a` to version `b`, redacted by `redactor`.
    pub fn diff(&self, a: u64, b: u64, redactor: &Redactor) -> Result<Diff> {
        let version = |n: u64| {
            let version = self.version(n)?;
            match &version.value {
                Some(_) => Ok(version),
                None => {
                    Err(self.error(format!("version {n} has no value: it does not parse, or cannot be decrypted here")))
                }
            }
        };
        let (a, b) = (version(a)?, version(b)?);
        let secrets = a.secrets.iter().chain(b.secrets.iter()).cloned().collect();
        Ok(Diff::between_secrets(
            a.value.as_ref().expect("checked"),
            b.value.as_ref().expect("checked"),
            redactor,
            &secrets,
        ))
    }

    fn error(&self, message: String) -> Error {
        Error::History { name: self.name.clone(), message }
    }

    /// Checks everything about restoring version `n` (its status, its
    /// content, every path it writes) and returns what to write, without
    /// writing anything; `None` if the files hold its content already. So a
    /// rollback of several configs is refused whole, before any file moves.
    pub(crate) fn plan(&self, n: u64) -> Result<Option<WriteBack>> {
        let (target, origins) = self.load(n)?;
        if !target.entry.is_applied() {
            return Err(self.error(format!("version {n} was rejected; only applied versions can be restored")));
        }
        if target.entry.published {
            return Err(self.error(format!("version {n} was published, not read from files; publish it again")));
        }
        let writes = origins
            .iter()
            .zip(&target.documents)
            .zip(&target.entry.documents)
            .map(|((origin, doc), info)| Ok((self.target(n, origin, info.mode)?, doc.clone())))
            .collect::<Result<Vec<_>>>()?;
        let unchanged = writes.iter().all(|(t, d)| t.current.as_deref() == Some(&d.bytes()[..]));
        if unchanged {
            return Ok(None);
        }
        let changes_value = match self.latest_applied() {
            Some(latest) if latest.version == n => false,
            Some(latest) => self.version(latest.version).ok().and_then(|v| v.value) != target.value,
            None => true,
        };
        Ok(Some(WriteBack {
            name: self.name.clone(),
            n,
            hash: target.entry.hash.clone(),
            dir: self.dir.clone(),
            writes,
            changes_value,
        }))
    }

    /// Where the document of version `n` recorded as `origin` may be
    /// written back, and how.
    ///
    /// The rule: a relative path under `config/` with no `..`, whose
    /// existing part resolves (through symlinks) inside the workspace's
    /// `config/`; an existing file must be a regular file (never a FIFO that
    /// would block, nor a directory). A symlink that stays inside
    /// `config/` (Kubernetes' `..data`) is followed and its target
    /// replaced. The new file keeps the mode and owner of the one it
    /// replaces; a file that is gone comes back with the mode recorded with
    /// the version, or 0600.
    fn target(&self, n: u64, origin: &Path, mode: Option<u32>) -> Result<Target> {
        let refuse =
            |why: &str| self.error(format!("version {n}: refusing to write `{}` back: {why}", origin.display()));
        let mut parts = origin.components();
        let under_config = parts.next() == Some(Component::Normal("config".as_ref()))
            && parts.clone().next().is_some()
            && parts.all(|c| matches!(c, Component::Normal(_)));
        if !under_config {
            return Err(refuse("only relative paths under config/, without `..`, are written"));
        }
        let config = self.root.join("config");
        if !config.exists() {
            private::create_private_dir(&config).map_err(|e| Error::io(&config, e))?;
        }
        let real_config = fs::canonicalize(&config).map_err(|e| Error::io(&config, e))?;
        let lexical = self.root.join(origin);
        // The nearest part of the path that exists, and what is left.
        let mut existing = lexical.as_path();
        let mut rest = Vec::new();
        while fs::symlink_metadata(existing).is_err() {
            rest.push(existing.file_name().expect("a path under config/ has names"));
            existing = existing.parent().expect("config/ exists");
        }
        let real = fs::canonicalize(existing).map_err(|_| refuse("it is a symlink that points nowhere"))?;
        if !real.starts_with(&real_config) {
            return Err(refuse("it resolves outside config/"));
        }
        if !rest.is_empty() {
            if !fs::metadata(&real).is_ok_and(|m| m.is_dir()) {
                return Err(refuse("a part of it is not a directory"));
            }
            let path = rest.iter().rev().fold(real, |path, name| path.join(name));
            // Permission bits only: a record (forged, perhaps) never makes a
            // set-user-id file.
            let keep = Keep { mode: mode.map_or(private::FILE_MODE, |m| m & 0o777), owner: None };
            return Ok(Target { path, keep, current: None });
        }
        let meta = fs::metadata(&real).map_err(|e| Error::io(&real, e))?;
        if !meta.is_file() {
            return Err(refuse("it is not a regular file"));
        }
        let current = fs::read(&real).map_err(|e| Error::io(&real, e))?;
        #[cfg(unix)]
        let owner = {
            use std::os::unix::fs::MetadataExt;
            Some((meta.uid(), meta.gid()))
        };
        #[cfg(not(unix))]
        let owner = None;
        let keep = Keep { mode: private::mode_of(&meta), owner };
        Ok(Target { path: real, keep, current: Some(current) })
    }
}

/// The versions of several configs that were applied (or rejected)
/// together, as the history shows them: one per config, sharing one
/// [`ChangeSetId`].
///
/// ```no_run
/// # fn f(ws: relive::Workspace) -> relive::Result<()> {
/// for set in ws.change_sets(10)? {
///     let configs: Vec<&str> = set.configs().collect();
///     println!("{:?} {}", set.id, configs.join(", "));
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChangeSet {
    /// Its id; `None` for a version recorded before relive had change
    /// sets, which is a set of its own.
    pub id: Option<ChangeSetId>,
    /// Its versions, by config name.
    pub members: Vec<ChangeSetMember>,
}

/// One config's version in a [`ChangeSet`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChangeSetMember {
    /// The config's name.
    pub config: String,
    /// Its version.
    pub entry: HistoryEntry,
}

impl ChangeSet {
    /// When it was applied: the newest of its versions' times.
    pub fn time(&self) -> SystemTime {
        self.members.iter().map(|m| m.entry.time).max().unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// The configs it changed, by name.
    pub fn configs(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|m| m.config.as_str())
    }

    /// True if every version in it was applied.
    pub fn is_applied(&self) -> bool {
        self.members.iter().all(|m| m.entry.is_applied())
    }

    /// The version of config `name` in it.
    pub fn member(&self, name: &str) -> Option<&HistoryEntry> {
        self.members.iter().find(|m| m.config == name).map(|m| &m.entry)
    }
}

/// The histories of every config recorded under `root/data/history/`, by
/// name (configs since removed included).
pub(crate) fn open_all(root: &Path) -> Result<Vec<History>> {
    let dir = root.join("data").join("history");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        // Directories only (never the lock file), and only names that
        // `config_dir` makes: anything else was not written by relive.
        let Some(name) = entry.file_name().to_str().and_then(config_name) else { continue };
        if entry.file_type().is_ok_and(|t| t.is_dir())
            && config_dir(&root.join("data"), &name).is_ok_and(|d| d == entry.path())
        {
            names.push(name);
        }
    }
    names.sort();
    names.iter().map(|name| History::open(root, name)).collect()
}

/// True if an engine holds the history lock of the workspace at `root`:
/// one records its history now. The lock is tried and let go at once; an
/// engine starting in that instant waits for it (`LOCK_WAIT`).
pub(crate) fn recording(root: &Path) -> bool {
    let path = root.join("data").join("history").join(LOCK);
    // Never created here, never a blocking open.
    let Ok(file) = crate::engine::open_nonblocking(&path) else { return false };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    !writer::try_lock(&file).unwrap_or(false)
}

/// The config name a history directory's name stands for: the inverse of
/// [`config_dir`]'s escaping (`%2F` is `/`, `%25` is `%`).
fn config_name(dir_name: &str) -> Option<String> {
    let mut out = String::with_capacity(dir_name.len());
    let mut rest = dir_name;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 3) {
            Some("2F") => out.push('/'),
            Some("25") => out.push('%'),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// Every version of `histories` grouped by change set, newest set first,
/// at most `limit` sets. A version without an id is a set of its own.
pub(crate) fn group(histories: &[History], limit: usize) -> Vec<ChangeSet> {
    let mut sets: std::collections::HashMap<ChangeSetId, ChangeSet> = std::collections::HashMap::new();
    let mut alone = Vec::new();
    for history in histories {
        for entry in history.entries() {
            let member = ChangeSetMember { config: history.name().to_string(), entry: entry.clone() };
            match entry.change_set {
                Some(id) => sets
                    .entry(id)
                    .or_insert_with(|| ChangeSet { id: Some(id), members: Vec::new() })
                    .members
                    .push(member),
                None => alone.push(ChangeSet { id: None, members: vec![member] }),
            }
        }
    }
    let mut all: Vec<ChangeSet> = sets.into_values().chain(alone).collect();
    for set in &mut all {
        set.members.sort_by(|a, b| a.config.cmp(&b.config).then(a.entry.version.cmp(&b.entry.version)));
    }
    // Ids increase in the order sets were made; times order the sets
    // without one among them.
    all.sort_by(|a, b| b.time().cmp(&a.time()).then(b.id.cmp(&a.id)));
    all.truncate(limit);
    all
}

/// Where and how one file of a rollback is written.
struct Target {
    /// Resolved: no symlink in it.
    path: PathBuf,
    keep: Keep,
    /// What is there now.
    current: Option<Vec<u8>>,
}

/// A rollback of one config, checked by [`History::plan`] and ready to
/// write.
pub(crate) struct WriteBack {
    name: String,
    n: u64,
    hash: String,
    dir: PathBuf,
    writes: Vec<(Target, Document)>,
    /// Whether the value differs from the newest applied version's: if
    /// not, an engine records nothing and says nothing when it comes back.
    pub(crate) changes_value: bool,
}

impl WriteBack {
    /// Leaves the marker for the engine, then replaces each file
    /// atomically, keeping its mode and owner.
    pub(crate) fn write(&self) -> Result<()> {
        let n = self.n;
        let error = |message: String| Error::History { name: self.name.clone(), message };
        // Which engine applies the files, and when, is unknown here (another
        // process, or the next one started): the marker tells it. It is
        // consumed when the content comes back, as a new version or as the
        // value already live.
        let marker = Marker { to: n, hash: self.hash.clone(), time: rfc3339(SystemTime::now()) };
        let bytes = serde_json::to_vec(&marker).expect("marker serializes");
        write_atomic(&self.dir.join(MARKER), &bytes).map_err(|e| Error::io(self.dir.join(MARKER), e))?;
        for (t, doc) in &self.writes {
            if let Some(parent) = t.path.parent() {
                private::create_private_dir(parent).map_err(|e| Error::io(parent, e))?;
            }
            private::replace_file(&t.path, doc.bytes(), t.keep).map_err(|e| match t.keep.owner {
                Some((uid, gid)) if e.kind() == std::io::ErrorKind::PermissionDenied => error(format!(
                    "version {n}: cannot keep the owner (uid {uid}, gid {gid}) of {}: {e}",
                    t.path.display()
                )),
                _ => Error::io(&t.path, e),
            })?;
        }
        Ok(())
    }

    /// The config's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

/// A pending rollback, left by [`WriteBack::write`] for whichever engine
/// applies the restored files, in this process or another.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    to: u64,
    hash: String,
    time: String,
}

/// The history directory of config `name` under `data_dir`.
pub(crate) fn config_dir(data_dir: &Path, name: &str) -> Result<PathBuf> {
    let valid = !name.is_empty()
        && name.split('/').all(|part| !part.is_empty() && !part.starts_with('.'))
        && !name.contains(['\\', '\0']);
    if !valid {
        return Err(Error::History { name: name.to_string(), message: "invalid config name".to_string() });
    }
    Ok(data_dir.join("history").join(name.replace('%', "%25").replace('/', "%2F")))
}

fn resolve(root: &Path, origin: &Path, published: bool) -> PathBuf {
    if published || origin.is_absolute() { origin.to_path_buf() } else { root.join(origin) }
}

fn entry(root: &Path, r: &VersionRecord) -> HistoryEntry {
    HistoryEntry {
        version: r.version,
        status: match r.status {
            Status::Applied => VersionStatus::Applied,
            Status::Rejected => VersionStatus::Rejected,
        },
        time: humantime::parse_rfc3339_weak(&r.time).unwrap_or(SystemTime::UNIX_EPOCH),
        env: r.env.clone(),
        hash: r.hash.clone(),
        documents: r
            .documents
            .iter()
            .map(|d| DocumentInfo {
                origin: resolve(root, &d.origin, r.published),
                format: log::format_from_name(&d.format).unwrap_or(Format::Json),
                len: d.len,
                sha256: d.sha256.clone(),
                withheld: d.withheld.clone(),
                mode: d.mode,
            })
            .collect(),
        diff: Diff::from_entries(
            r.diff
                .iter()
                .map(|d| match d.clone() {
                    DiffRecord::Add { path, value } => DiffEntry::Added { path, value },
                    DiffRecord::Remove { path, value } => DiffEntry::Removed { path, value },
                    DiffRecord::Change { path, old, new } => DiffEntry::Changed { path, old, new },
                })
                .collect(),
        ),
        rollback_of: r.rollback_of,
        error: r.error.as_ref().map(log::ErrorRecord::to_error),
        published: r.published,
        change_set: r.change_set.map(ChangeSetId::from_u64),
    }
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}

/// Writes `bytes` to a private file (0600) at `path` under `data/` so that
/// a crash leaves the old file or the new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    private::replace_file(path, bytes, Keep::PRIVATE)
}

/// What retention prunes from `live` (oldest first: version, status, time):
/// the new floor and the versions below it that stay, or `None` if nothing
/// goes.
///
/// It walks from the oldest and prunes while there are more than
/// `max_versions` or the version is older than `max_age`; it stops at the
/// first it keeps, so what goes is always the oldest. The newest version is
/// never pruned, nor the newest applied one (the value that is live): it is
/// pinned, and counts among the kept.
pub(crate) fn retention(
    live: &[(u64, VersionStatus, SystemTime)],
    max_versions: usize,
    max_age: Option<Duration>,
    now: SystemTime,
) -> Option<(u64, Vec<u64>)> {
    let (&(newest, _, _), _) = live.split_last()?;
    let pinned = live.iter().rev().find(|(_, s, _)| *s == VersionStatus::Applied).map(|e| e.0);
    let cutoff = max_age.and_then(|age| now.checked_sub(age));
    let max = max_versions.max(1);
    let mut kept = live.len();
    let mut last_pruned = None;
    for &(version, _, time) in live {
        if Some(version) == pinned {
            continue;
        }
        let too_many = kept > max;
        let too_old = cutoff.is_some_and(|c| time < c);
        if version == newest || !(too_many || too_old) {
            break;
        }
        kept -= 1;
        last_pruned = Some(version);
    }
    let floor = last_pruned? + 1;
    let keep = pinned.filter(|&p| p < floor).into_iter().collect();
    Some((floor, keep))
}

/// The engine's side: an attempt to record, sent to the writer thread.
pub(crate) struct Attempt {
    pub name: String,
    pub documents: Vec<Document>,
    pub value: Option<Arc<Value>>,
    /// Pointers of the values in `value` that are secret by where they
    /// came from (SOPS): redacted in the diff whatever their keys.
    pub secrets: crate::document::SecretPaths,
    pub error: Option<ConfigError>,
    pub published: bool,
    /// The change set the version was applied (or tried) in, `None` when
    /// it was in none; stored with the version.
    pub change_set: Option<crate::ChangeSetId>,
    pub time: SystemTime,
    /// The documents' lengths, when the version broke a [`Limits`] bound
    /// and their bytes were dropped before queueing: a file rewritten with
    /// megabytes of junk must cost neither memory in the queue nor disk.
    pub over_limits: Option<Vec<u64>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use VersionStatus::{Applied, Rejected};

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retention_by_count_prunes_the_oldest() {
        let live: Vec<_> = (1..=5).map(|v| (v, Applied, t(v))).collect();
        assert_eq!(retention(&live, 5, None, t(10)), None);
        assert_eq!(retention(&live, 3, None, t(10)), Some((3, vec![])));
        assert_eq!(retention(&live, 0, None, t(10)), Some((5, vec![])));
    }

    #[test]
    fn retention_by_age_keeps_the_newest_and_stops_at_the_first_kept() {
        let day = 24 * 3600;
        let live = [(1, Applied, t(0)), (2, Applied, t(day)), (3, Applied, t(10 * day))];
        let week = Some(Duration::from_secs(7 * day));
        assert_eq!(retention(&live, 100, week, t(10 * day)), Some((3, vec![])));
        // Everything is old: the newest stays anyway.
        assert_eq!(retention(&live, 100, week, t(100 * day)), Some((3, vec![])));
        assert_eq!(retention(&live, 100, week, t(3 * day)), None);
        // A clock that went backwards keeps what follows the first young one.
        let live = [(1, Applied, t(10 * day)), (2, Applied, t(0)), (3, Applied, t(10 * day))];
        assert_eq!(retention(&live, 100, week, t(10 * day)), None);
    }

    #[test]
    fn retention_pins_the_newest_applied_version() {
        let live = [(1, Applied, t(1)), (2, Rejected, t(2)), (3, Rejected, t(3)), (4, Rejected, t(4))];
        assert_eq!(retention(&live, 2, None, t(5)), Some((4, vec![1])));
        let live = [(1, Rejected, t(1)), (2, Applied, t(2)), (3, Rejected, t(3)), (4, Rejected, t(4))];
        assert_eq!(retention(&live, 3, None, t(5)), Some((2, vec![])));
        assert_eq!(retention(&live, 2, None, t(5)), Some((4, vec![2])));
    }

    #[test]
    fn config_names_map_to_one_directory_each() {
        let data = Path::new("/w/data");
        assert_eq!(config_dir(data, "app").unwrap(), Path::new("/w/data/history/app"));
        assert_eq!(config_dir(data, "db/main").unwrap(), Path::new("/w/data/history/db%2Fmain"));
        assert_eq!(config_dir(data, "a%2Fb").unwrap(), Path::new("/w/data/history/a%252Fb"));
        for bad in ["", "..", "a/../b", "/abs", "a//b", ".hidden"] {
            assert!(config_dir(data, bad).is_err(), "{bad}");
        }
    }
}
