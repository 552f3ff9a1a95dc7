//! The writer thread: records what the engine sends, off the reload path.
//!
//! Nothing here can fail the engine: a history that cannot be written is
//! logged and retried at the next version.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::sync::oneshot;

use super::log::{
    self, DiffRecord, DocumentRecord, ErrorRecord, LogRecord, PruneRecord, ReadLog, Status, Stored, VersionRecord,
};
use super::{
    Attempt, Diff, DiffEntry, HistoryConfig, LOCK, LOG, MARKER, Marker, VERSIONS, VersionStatus, config_dir, retention,
    rfc3339, write_atomic,
};
use crate::document::{Decode, Document, Parsed, Sources};
use crate::error::{ConfigError, ConfigErrorKind};
use crate::private::{self, sync_dir};
use crate::redact::Redactor;

/// How long a new engine waits for the previous holder of the history lock
/// (an engine of this workspace still shutting down) before it gives up
/// recording.
const LOCK_WAIT: Duration = Duration::from_secs(2);

enum Job {
    Record(Box<Attempt>),
    Flush(oneshot::Sender<()>),
}

/// The engine's handle on the writer thread. Dropping it records what is
/// queued, then stops the thread.
pub(crate) struct Recorder {
    tx: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    clock: fn() -> SystemTime,
}

impl Recorder {
    pub(crate) fn start(
        root: PathBuf,
        env: Option<String>,
        config: HistoryConfig,
        redactor: Redactor,
    ) -> io::Result<Recorder> {
        let (tx, rx) = std::sync::mpsc::channel();
        let clock = config.clock;
        let writer = Writer { root, env, config, redactor, lock: Lock::Unknown, stores: HashMap::new() };
        let thread = std::thread::Builder::new().name("relive-history".into()).spawn(move || writer.run(rx))?;
        Ok(Recorder { tx: Some(tx), thread: Some(thread), clock })
    }

    /// Queues a version; returns at once.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        name: &str,
        documents: Vec<Document>,
        value: Option<Arc<Value>>,
        secrets: crate::document::SecretPaths,
        error: Option<crate::ConfigError>,
        published: bool,
        change_set: Option<crate::ChangeSetId>,
    ) {
        // A version over the limits is recorded without its bytes, dropped
        // here rather than queued: the writer may be behind, and each such
        // file can be max_file_size (more, read up to the limit) of junk.
        let over_limits = error.as_ref().is_some_and(|e| e.kind() == ConfigErrorKind::Limit);
        let (documents, over_limits) = if over_limits {
            let lens = documents.iter().map(|d| d.bytes().len() as u64).collect();
            let empty = documents.iter().map(|d| Document::new(d.origin(), d.format(), Vec::new())).collect();
            (empty, Some(lens))
        } else {
            (documents, None)
        };
        let attempt = Attempt {
            name: name.to_string(),
            documents,
            value,
            secrets,
            error,
            published,
            change_set,
            time: (self.clock)(),
            over_limits,
        };
        if let Some(tx) = &self.tx {
            let _ = tx.send(Job::Record(Box::new(attempt)));
        }
    }

    /// Replies on `reply` once everything queued before is recorded.
    pub(crate) fn flush(&self, reply: oneshot::Sender<()>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Job::Flush(reply));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

enum Lock {
    Unknown,
    /// The lock lasts as long as the file is open.
    Held {
        _file: File,
    },
    Unavailable,
}

struct Writer {
    root: PathBuf,
    env: Option<String>,
    config: HistoryConfig,
    redactor: Redactor,
    lock: Lock,
    stores: HashMap<String, Store>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Job>) {
        while let Ok(job) = rx.recv() {
            match job {
                Job::Record(attempt) => self.record(*attempt),
                Job::Flush(reply) => {
                    let _ = reply.send(());
                }
            }
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Takes the workspace's history lock, so that two engines (in two
    /// processes, or two environments of one workspace) never number
    /// versions over each other.
    fn locked(&mut self) -> bool {
        if let Lock::Unknown = self.lock {
            let dir = self.data_dir().join("history");
            self.lock = match take_lock(&self.data_dir(), &dir) {
                Ok(Some(file)) => Lock::Held { _file: file },
                Ok(None) => {
                    tracing::warn!(dir = %dir.display(), "another engine records history for this workspace; this one does not");
                    Lock::Unavailable
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot lock the history; not recording versions");
                    Lock::Unavailable
                }
            };
        }
        matches!(self.lock, Lock::Held { .. })
    }

    fn record(&mut self, attempt: Attempt) {
        if !self.locked() {
            return;
        }
        let name = attempt.name.clone();
        if !self.stores.contains_key(&name) {
            match Store::open(&self.root, &self.data_dir(), &name) {
                Ok(mut store) => {
                    // A crash between a version and its pruning left one
                    // too many.
                    let ctx = Ctx { root: &self.root, env: &self.env, config: &self.config, redactor: &self.redactor };
                    if let Err(e) = store.retain(&ctx) {
                        tracing::warn!(config = %name, error = %e, "cannot prune the history");
                    }
                    self.stores.insert(name.clone(), store);
                }
                Err(e) => {
                    tracing::warn!(config = %name, error = %e, "cannot open the history; version not recorded");
                    return;
                }
            }
        }
        let store = self.stores.get_mut(&name).expect("opened above");
        let ctx = Ctx { root: &self.root, env: &self.env, config: &self.config, redactor: &self.redactor };
        if let Err(e) = store.record(attempt, &ctx) {
            tracing::warn!(config = %name, error = %e, "cannot record a version in the history");
            // Read it again from disk next time: what is there is the truth.
            self.stores.remove(&name);
        }
    }
}

/// Takes the lock in `dir` (`data/history`), making `data/` and `dir`
/// private first: whoever can open the lock file can take it, and so stop
/// all recording.
fn take_lock(data_dir: &Path, dir: &Path) -> io::Result<Option<File>> {
    private::narrow_dir(data_dir)?;
    if !dir.is_dir() {
        private::create_private_dir(dir)?;
        // Make `data/history` itself survive a power loss.
        for d in dir.ancestors().skip(1).take(2) {
            sync_dir(d)?;
        }
    }
    private::narrow_dir(dir)?;
    let file = private::with_mode(OpenOptions::new().create(true).truncate(false).write(true), private::FILE_MODE)
        .open(dir.join(LOCK))?;
    if private::mode_of(&file.metadata()?) & 0o077 != 0 {
        // Made by an older relive.
        private::set_mode(&file, private::FILE_MODE)?;
    }
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match try_lock(&file)? {
            true => return Ok(Some(file)),
            false if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            false => return Ok(None),
        }
    }
}

/// Takes an exclusive lock on `file` without waiting: false if another
/// holds it.
#[cfg(unix)]
pub(super) fn try_lock(file: &fs::File) -> std::io::Result<bool> {
    match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Takes an exclusive lock on `file` without waiting: false if another
/// holds it. (`File::try_lock`: Rust 1.89 on Windows.)
#[cfg(not(unix))]
pub(super) fn try_lock(file: &fs::File) -> std::io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(fs::TryLockError::WouldBlock) => Ok(false),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

struct Ctx<'a> {
    root: &'a Path,
    env: &'a Option<String>,
    config: &'a HistoryConfig,
    redactor: &'a Redactor,
}

/// What the writer knows of one config's history. The log is opened for
/// each append, not held: a workspace of many configs must not hold a
/// descriptor for each.
struct Store {
    dir: PathBuf,
    /// Versions not pruned, oldest first.
    live: Vec<(u64, VersionStatus, SystemTime)>,
    max_version: u64,
    /// Complete lines in the log, pruned records included.
    lines: usize,
    /// The newest record: status, hash and error, to skip a repeat.
    last: Option<(Status, String, Option<String>)>,
    /// The newest applied version's value: the base of diffs, and how a
    /// no-op is recognised.
    applied: Option<Arc<Value>>,
    /// The secret paths of `applied`.
    applied_secrets: crate::document::SecretPaths,
    /// The newest applied version's content was withheld: the next diff
    /// is from nothing, so that its values do not show through.
    applied_withheld: bool,
}

impl Store {
    /// Opens a config's history for writing: cuts off a torn last record,
    /// and removes content that no record points at (left by a crash).
    fn open(root: &Path, data_dir: &Path, name: &str) -> io::Result<Store> {
        let dir = config_dir(data_dir, name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let versions = dir.join(VERSIONS);
        if !versions.is_dir() {
            private::create_private_dir(&versions)?;
            sync_dir(&dir)?;
            sync_dir(dir.parent().expect("under data/history"))?;
        }
        let path = dir.join(LOG);
        let read = log::read(&path)?;
        for warning in &read.warnings {
            tracing::warn!(config = name, %warning, "history record skipped");
        }
        if let Some(end) = read.torn_at {
            let log = private::append_private(&path)?;
            log.set_len(end)?;
            log.sync_all()?;
        }
        remove_orphans(&versions, &read);
        let live = read
            .versions
            .iter()
            .map(|v| {
                (
                    v.version,
                    public_status(v.status),
                    humantime::parse_rfc3339_weak(&v.time).unwrap_or(SystemTime::UNIX_EPOCH),
                )
            })
            .collect();
        let last =
            read.versions.last().map(|v| (v.status, v.hash.clone(), v.error.as_ref().map(|e| e.display.clone())));
        let applied = read.versions.iter().rev().find(|v| v.status == Status::Applied).and_then(|v| {
            let value = load_value(root, &versions, v);
            // A version whose content was withheld has no value to read:
            // the next diff is from nothing, as it should be.
            let withheld = v.documents.iter().any(|d| d.withheld.is_some());
            if value.is_none() && !withheld {
                tracing::warn!(
                    config = name,
                    version = v.version,
                    "cannot read the last applied version; the next diff is from nothing"
                );
            }
            value.map(Arc::new)
        });
        Ok(Store {
            dir,
            live,
            max_version: read.max_version,
            lines: read.lines,
            last,
            applied,
            applied_secrets: Default::default(),
            applied_withheld: false,
        })
    }

    fn record(&mut self, a: Attempt, ctx: &Ctx<'_>) -> io::Result<()> {
        let real_root = fs::canonicalize(ctx.root);
        let stored: Vec<Stored<'_>> = a
            .documents
            .iter()
            .map(|d| {
                let origin =
                    if a.published { d.origin() } else { d.origin().strip_prefix(ctx.root).unwrap_or(d.origin()) };
                let withheld = match (&real_root, a.published) {
                    _ if a.over_limits.is_some() => Some(OVER_LIMITS.to_string()),
                    (_, true) => None,
                    (Ok(real_root), false) => outside(real_root, d.origin(), origin),
                    (Err(e), false) => Some(format!("the workspace cannot be resolved ({e}); content not stored")),
                };
                Stored { origin: origin.to_path_buf(), doc: d, withheld }
            })
            .collect();
        let withheld = stored.iter().any(|s| s.withheld.is_some());
        let (content, hash) = log::content(&stored);
        let status = if a.error.is_some() { Status::Rejected } else { Status::Applied };
        // A limit's message quotes no content (sizes and limits only), so it
        // is kept; others of a withheld version may quote the file.
        let outside = withheld && a.over_limits.is_none();
        let error = a.error.as_ref().map(|e| if outside { ErrorRecord::of(&withhold(e)) } else { ErrorRecord::of(e) });
        let marker_path = self.dir.join(MARKER);
        let marker = fs::read(&marker_path).ok().and_then(|bytes| serde_json::from_slice::<Marker>(&bytes).ok());
        let rollback_of = marker.filter(|m| m.hash == hash).map(|m| m.to);
        match status {
            // The same value as the live one: the first value after a
            // restart with unchanged files, or files that went back to it
            // (the engine sends those too). A rollback to it is then done,
            // with nothing to record.
            Status::Applied if a.value.is_some() && self.applied.as_deref() == a.value.as_deref() => {
                if rollback_of.is_some() {
                    let _ = fs::remove_file(&marker_path);
                }
                return Ok(());
            }
            Status::Rejected
                if self.last.as_ref().is_some_and(|(s, h, e)| {
                    *s == Status::Rejected && *h == hash && e.as_ref() == error.as_ref().map(|e| &e.display)
                }) =>
            {
                return Ok(());
            }
            _ => {}
        }
        // The reader skips a record numbered u64::MAX, so this cannot
        // overflow; checked all the same, for a log that says otherwise.
        let version = self
            .max_version
            .checked_add(1)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "version numbers exhausted"))?;
        write_atomic(&self.dir.join(VERSIONS).join(format!("{version}.json")), &content)?;
        let diff = match &a.value {
            // A diff shows values: none of content that is not stored.
            Some(_) if withheld => Diff::default(),
            Some(value) => {
                let empty = Value::Object(Default::default());
                let base = self.applied.as_deref().filter(|_| !self.applied_withheld);
                // What was secret on either side is secret in the diff.
                let secrets = self.applied_secrets.iter().chain(a.secrets.iter()).cloned().collect();
                Diff::between_secrets(base.unwrap_or(&empty), value, ctx.redactor, &secrets)
            }
            None => Diff::default(),
        };
        let record = VersionRecord {
            version,
            status,
            time: rfc3339(a.time),
            env: ctx.env.clone(),
            hash: hash.clone(),
            documents: stored
                .iter()
                .enumerate()
                .map(|(i, Stored { origin, doc, withheld })| DocumentRecord {
                    origin: origin.clone(),
                    format: doc.format().name().to_string(),
                    len: a
                        .over_limits
                        .as_ref()
                        .and_then(|lens| lens.get(i).copied())
                        .unwrap_or(doc.bytes().len() as u64),
                    sha256: if withheld.is_some() { String::new() } else { log::sha256_hex(doc.bytes()) },
                    mode: (!a.published && withheld.is_none())
                        .then(|| fs::metadata(doc.origin()).ok())
                        .flatten()
                        .map(|m| private::mode_of(&m)),
                    withheld: withheld.clone(),
                })
                .collect(),
            diff: diff
                .entries()
                .iter()
                .map(|e| match e.clone() {
                    DiffEntry::Added { path, value } => DiffRecord::Add { path, value },
                    DiffEntry::Removed { path, value } => DiffRecord::Remove { path, value },
                    DiffEntry::Changed { path, old, new } => DiffRecord::Change { path, old, new },
                })
                .collect(),
            rollback_of,
            error,
            published: a.published,
            change_set: a.change_set.map(crate::ChangeSetId::get),
        };
        self.append(&LogRecord::Version(Box::new(record.clone())))?;
        if rollback_of.is_some() {
            // The rollback is done (applied or rejected): it is on record.
            let _ = fs::remove_file(&marker_path);
        }
        self.max_version = version;
        self.live.push((version, public_status(status), a.time));
        self.last = Some((status, hash, record.error.map(|e| e.display)));
        if status == Status::Applied {
            self.applied = a.value;
            self.applied_secrets = a.secrets;
            self.applied_withheld = withheld;
        }
        tracing::debug!(version, status = ?status, "version recorded");
        self.retain(ctx)
    }

    fn append(&mut self, record: &LogRecord) -> io::Result<()> {
        let mut log = private::append_private(&self.dir.join(LOG))?;
        log.write_all(&log::encode(record))?;
        log.sync_data()?;
        self.lines += 1;
        Ok(())
    }

    /// Prunes by count and age, then compacts the log if most of it is
    /// pruned records.
    fn retain(&mut self, ctx: &Ctx<'_>) -> io::Result<()> {
        let now = (ctx.config.clock)();
        let Some((floor, keep)) = retention(&self.live, ctx.config.max_versions, ctx.config.max_age, now) else {
            return Ok(());
        };
        let prune = PruneRecord { floor, keep: keep.clone(), time: rfc3339(now) };
        self.append(&LogRecord::Prune(prune.clone()))?;
        let (gone, kept): (Vec<_>, Vec<_>) = self.live.iter().partition(|(v, _, _)| *v < floor && !keep.contains(v));
        self.live = kept;
        for (version, _, _) in gone {
            let _ = fs::remove_file(self.dir.join(VERSIONS).join(format!("{version}.json")));
        }
        if self.lines > 2 * self.live.len() + 32 {
            self.compact(&prune)?;
        }
        Ok(())
    }

    /// Rewrites the log with only what is kept, atomically: a crash leaves
    /// the old log or the new one, and both say the same.
    fn compact(&mut self, prune: &PruneRecord) -> io::Result<()> {
        let path = self.dir.join(LOG);
        let bytes = fs::read(&path)?;
        let mut out = log::encode(&LogRecord::Prune(prune.clone()));
        let mut lines = 1;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let read = log::parse(&path, line);
            if read.versions.iter().any(|v| self.live.iter().any(|(n, _, _)| *n == v.version)) {
                out.extend_from_slice(line);
                lines += 1;
            }
        }
        write_atomic(&path, &out)?;
        self.lines = lines;
        Ok(())
    }
}

/// Why the content of `path` (`origin` in the record) is not stored, if it
/// is not: a file that resolves (through symlinks) outside the workspace
/// was read with relive's rights, and a copy in history would hand it to
/// whoever reads the history. Checked when the version is recorded, so a
/// link swapped between the engine's read and this check can slip
/// through; the history is private (0600 in 0700 directories) all the same.
fn outside(real_root: &Path, path: &Path, origin: &Path) -> Option<String> {
    match fs::canonicalize(path) {
        Ok(real) if real.starts_with(real_root) => None,
        Ok(_) => Some(format!("{} resolves outside the workspace; its content is not stored", origin.display())),
        Err(e) => Some(format!("{} cannot be resolved ({e}); its content is not stored", origin.display())),
    }
}

/// Why the content of a version over the limits is not stored.
const OVER_LIMITS: &str = "over the limits (max_file_size, max_depth, max_nodes); content not stored";

/// An error about a version whose content is withheld, without what it
/// quotes (a parser's message can quote the file's text): its kind and
/// position only.
fn withhold(error: &ConfigError) -> ConfigError {
    let mut out = ConfigError::new(error.kind(), "the file resolves outside the workspace; the message is not stored");
    if let Some(file) = error.file() {
        out = out.with_file(file);
    }
    if let (Some(line), Some(column)) = (error.line(), error.column()) {
        out = out.with_position(line, column);
    }
    out
}

fn public_status(status: Status) -> VersionStatus {
    match status {
        Status::Applied => VersionStatus::Applied,
        Status::Rejected => VersionStatus::Rejected,
    }
}

/// Removes temp files, content of pruned versions, and content newer than
/// the newest record (a version whose record a crash kept from the log).
fn remove_orphans(versions: &Path, read: &ReadLog) {
    let Ok(entries) = fs::read_dir(versions) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let orphan = match name.strip_suffix(".json").and_then(|n| n.parse::<u64>().ok()) {
            Some(n) => n > read.max_version || (n < read.floor && !read.keep.contains(&n)),
            None => name.ends_with(".tmp"),
        };
        if orphan {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The merged value of a stored version, if its content is intact.
fn load_value(root: &Path, versions: &Path, v: &VersionRecord) -> Option<Value> {
    let bytes = fs::read(versions.join(format!("{}.json", v.version))).ok()?;
    if log::sha256_hex(&bytes) != v.hash {
        return None;
    }
    let content: log::Content = serde_json::from_slice(&bytes).ok()?;
    let docs = content
        .documents
        .iter()
        .map(|d| {
            let format = log::format_from_name(&d.format)?;
            // Without identities: a SOPS version has no clear value here.
            Parsed::parse(Document::new(root.join(&d.origin), format, d.bytes()?), &Decode::default()).ok()
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Sources { docs, ..Sources::default() }.merge())
}
