//! Reading ready files, and what the engine knows of each.
//!
//! With the inotify backend, a ready path is read whole under a read lease
//! (`lease.rs`, Linux): the kernel grants one only while no writer has the
//! file open, and holds new writers off until the read is done, so a
//! leased read is never torn. A refused lease means a writer is at work;
//! its close says when to read. Without a lease (the portable backend,
//! other platforms, no right to one) the file's size and modification
//! time are compared before and after the read, and a read they moved
//! under is treated like a refused lease.
//!
//! What was read is then stored against the last known content of the
//! path: its hash decides whether anything happened ([`Stored`]), and a
//! config file's bytes are kept for merging, backups and error locations.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::coalesce::{Coalescer, Ready};
use crate::document::{Decode, Document, Parsed, Sources};
use crate::error::ConfigError;
use crate::event::ChangeType;
#[cfg(target_os = "linux")]
use crate::lease;
use crate::paths::{self, ConfigFile};
use crate::watch::Meta;

/// What a read of a whole file found.
pub(super) struct FileRead {
    /// The bytes, for a config file (at most one byte over the size limit);
    /// other files (templates, assets) are hashed as they are read and not
    /// kept.
    pub bytes: Option<Vec<u8>>,
    /// How many bytes were read.
    pub len: u64,
    /// Their content hash (xxh3-64).
    pub hash: u64,
    /// The file's metadata at the time of the read.
    pub meta: Meta,
    /// A config file over the size limit: not read at all (its hash is of
    /// its metadata), and refused as such when it is parsed.
    pub oversize: bool,
}

/// What to keep of a file's content.
#[derive(Debug, Clone, Copy)]
pub(super) enum Keep {
    /// The bytes, up to this many (one more, to tell that it is over).
    Bytes(u64),
    /// Only the hash: the file is streamed through the hasher.
    Hash,
}

/// One ready path, read (or not).
pub(super) struct Read {
    pub ready: Ready,
    pub result: io::Result<FileRead>,
    /// Whether the read was made under a lease, and so is certainly whole.
    pub leased: bool,
}

/// Config files are kept (their bytes are parsed), up to the size limit;
/// every other file is only hashed.
pub(super) fn keep(config_dir: &Path, path: &Path, max_len: u64) -> Keep {
    match paths::config_file(config_dir, path) {
        Some(_) => Keep::Bytes(max_len),
        None => Keep::Hash,
    }
}

/// What a read attempt found.
enum Attempt {
    /// The content, and whether it was read under a lease.
    Done(FileRead, bool),
    /// A writer has the file open: its close will say when to read.
    Busy,
}

/// How long a refused lease is retried at once before the path goes back
/// to the coalescer: right after a writer's close, the kernel queues
/// `IN_CLOSE_WRITE` (in `__fput`) a moment before it drops the writer's
/// write access, so the first lease attempt of a reader woken by that close
/// can still be refused. Microseconds later it is granted; the coalescer's
/// backoff (5 ms first) is for writers that really keep the file open.
const BUSY_SPIN: [Duration; 5] = [
    Duration::from_micros(5),
    Duration::from_micros(20),
    Duration::from_micros(50),
    Duration::from_micros(100),
    Duration::from_micros(200),
];

/// Reads every ready path, under a lease if `leases`. A path whose writer
/// still has it open (or whose size or modification time moved during an
/// unleased read) goes back to the coalescer (and is dropped from the
/// batch) until its backoff is spent; then it is read without a lease.
pub(super) fn read_ready(
    ready: Vec<Ready>,
    coalescer: &mut Coalescer,
    keep: impl Fn(&Path) -> Keep,
    leases: bool,
) -> Vec<Read> {
    let mut reads = Vec::with_capacity(ready.len());
    for ready in ready {
        let (result, leased) = match read_leased(&ready.path, keep(&ready.path), leases) {
            Ok(Attempt::Done(read, leased)) => (Ok(read), leased),
            // A writer has it open. Its close wakes us; the backoff only
            // matters for a writer that keeps the file open, which is read
            // without a lease once the backoff is spent.
            Ok(Attempt::Busy) if coalescer.retry(&ready.path, ready.attempt, ready.first_seen, Instant::now()) => {
                metrics::counter!("relive_lease_busy_total").increment(1);
                continue;
            }
            Ok(Attempt::Busy) => match read_file(&ready.path, false, keep(&ready.path)) {
                Ok(Attempt::Done(read, _)) => (Ok(read), false),
                Ok(Attempt::Busy) => continue,
                Err(e) => (Err(e), false),
            },
            Err(e) => (Err(e), false),
        };
        reads.push(Read { ready, result, leased });
    }
    reads
}

/// A leased read, retried for a few hundred microseconds while the lease is
/// refused (see [`BUSY_SPIN`]).
fn read_leased(path: &Path, keep: Keep, lease: bool) -> io::Result<Attempt> {
    let mut attempt = read_file(path, lease, keep)?;
    for pause in BUSY_SPIN {
        if !matches!(attempt, Attempt::Busy) {
            break;
        }
        std::thread::sleep(pause);
        attempt = read_file(path, lease, keep)?;
    }
    Ok(attempt)
}

/// Reads a file found by the first scan: under a lease if it can, as it is
/// if a writer has it open (its close will deliver the whole file; a known
/// problem). `None` if it could not be read at all.
pub(super) fn read_at_start(path: &Path, keep: Keep, lease: bool) -> io::Result<Option<FileRead>> {
    let read = match read_file(path, lease, keep)? {
        Attempt::Busy => read_file(path, false, keep)?,
        done => done,
    };
    Ok(match read {
        Attempt::Done(read, _) => Some(read),
        Attempt::Busy => None,
    })
}

/// Reads a whole file (following symlinks) and its metadata, under a read
/// lease when `lease` is set and leases work here (see `lease.rs`).
///
/// Only regular files are read. A FIFO, socket or device (or a symlink to
/// one) is refused before it is opened for reading, and on Unix the open
/// itself never blocks (`O_NONBLOCK`), so a FIFO swapped in between the
/// check and the open cannot hang the engine either.
///
/// A read without a lease is checked afterwards: if the file's size or
/// modification time is not what it was when the read began (or the read
/// did not find as many bytes as the file had), a writer was at work, and
/// the answer is [`Attempt::Busy`].
/// Where a read lease would be held on Linux: none, and (unlike `()`) not
/// `Copy`, so that dropping it reads the same on every platform.
#[cfg(not(target_os = "linux"))]
struct NoLease;

fn read_file(path: &Path, lease: bool, keep: Keep) -> io::Result<Attempt> {
    let before = fs::metadata(path)?;
    if !before.is_file() {
        return Err(not_regular(&before));
    }
    let file = open_nonblocking(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    #[cfg(target_os = "linux")]
    let held = match lease.then(|| lease::read_lease(&file)) {
        Some(lease::Lease::Busy) => return Ok(Attempt::Busy),
        Some(lease::Lease::Held(held)) => Some(held),
        Some(lease::Lease::Unsupported) | None => None,
    };
    #[cfg(not(target_os = "linux"))]
    let held: Option<NoLease> = {
        // No platform but Linux has read leases.
        let _ = lease;
        None
    };
    let read = match keep {
        Keep::Bytes(max_len) if meta.len() > max_len => {
            // Over the limit by its size: refused without reading a byte, so
            // a huge file costs what a stat costs. Its metadata stands in
            // for its content in telling one version from the next.
            let at = Meta::of(&meta);
            let hash = xxhash_rust::xxh3::xxh3_64(format!("{at:?}").as_bytes());
            FileRead { bytes: None, len: meta.len(), hash, meta: at, oversize: true }
        }
        Keep::Bytes(max_len) => {
            // Never more than one byte over the size limit, for a file that
            // grows while it is read: the parser refuses such a document
            // without looking at it, and memory stays bounded.
            let cap = max_len.saturating_add(1);
            let mut bytes = Vec::with_capacity(meta.len().min(cap) as usize + 1);
            (&file).take(cap).read_to_end(&mut bytes)?;
            let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
            FileRead { len: bytes.len() as u64, bytes: Some(bytes), hash, meta: Meta::of(&meta), oversize: false }
        }
        Keep::Hash => {
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut len = 0u64;
            // No further than the size it had: a file that grows forever
            // (a log written into static/) cannot hold the engine.
            let mut limited = (&file).take(meta.len());
            loop {
                match limited.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        hasher.update(&buf[..n]);
                        len += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            FileRead { bytes: None, len, hash: hasher.digest(), meta: Meta::of(&meta), oversize: false }
        }
    };
    let leased = held.is_some();
    drop(held);
    if !leased {
        let capped = matches!(keep, Keep::Bytes(max) if read.len > max);
        let after = file.metadata()?;
        if Meta::of(&after) != read.meta || (!capped && read.len != after.len()) {
            return Ok(Attempt::Busy);
        }
    }
    Ok(Attempt::Done(read, leased))
}

/// Opens `path` for reading; on Unix with `O_NONBLOCK`, so that a FIFO
/// swapped in after the caller's check cannot block the open.
pub(crate) fn open_nonblocking(path: &Path) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    options.open(path)
}

fn not_regular(meta: &fs::Metadata) -> io::Error {
    let t = meta.file_type();
    #[cfg(unix)]
    let special = {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            Some("a FIFO")
        } else if t.is_socket() {
            Some("a socket")
        } else if t.is_char_device() || t.is_block_device() {
            Some("a device")
        } else {
            None
        }
    };
    #[cfg(not(unix))]
    let special: Option<&str> = None;
    let what = match special {
        Some(what) => what,
        None if t.is_dir() => "a directory",
        None => "not a regular file",
    };
    io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: only regular files are read"))
}

/// What the engine knows of a tracked file.
struct Known {
    hash: u64,
    meta: Meta,
    /// The bytes, kept for config files only (for merging, backups and
    /// error locations).
    content: Option<Arc<[u8]>>,
    /// Over the size limit, and so not read (see [`FileRead::oversize`]).
    oversize: bool,
    parsed: Option<Result<Parsed, ConfigError>>,
    config: Option<ConfigFile>,
}

/// What storing a read found.
pub(super) enum Stored {
    /// The same bytes as before (a no-op save, a touch): nothing happened.
    Unchanged,
    /// New content.
    Changed {
        change: ChangeType,
        /// The content hash (xxh3) of the new bytes.
        hash: u64,
        /// The configs whose files changed: this file's, and for a rename
        /// the config of the file it replaced.
        configs: Vec<String>,
        /// For a modified config file: its previous bytes (for backups).
        replaced: Option<Arc<[u8]>>,
    },
}

/// What was known of a file that went away.
pub(super) struct Removed {
    /// The config it belonged to.
    pub config: Option<String>,
    /// Its last bytes, for a config file.
    pub content: Option<Arc<[u8]>>,
}

/// Every tracked file the engine has read, and which config each belongs to.
#[derive(Default)]
pub(super) struct Files {
    known: HashMap<PathBuf, Known>,
    /// Config name → its files.
    by_config: BTreeMap<String, BTreeSet<PathBuf>>,
    /// Reads that came back shorter than the file was, by content hash,
    /// waiting for a confirming re-read (see [`Files::suspicious`]).
    suspects: HashMap<PathBuf, u64>,
}

impl Files {
    /// Records a file's new content; says what kind of change it was.
    pub fn store(&mut self, path: &Path, read: FileRead, moved_from: Option<&Path>, config_dir: &Path) -> Stored {
        let FileRead { bytes, hash, meta, oversize, .. } = read;
        let mut configs = Vec::new();
        let change = match self.known.get_mut(path) {
            Some(known) if known.hash == hash => {
                known.meta = meta;
                return Stored::Unchanged;
            }
            Some(_) => ChangeType::Modified,
            None => match moved_from {
                Some(from) if self.known.contains_key(from) && fs::symlink_metadata(from).is_err() => {
                    if let Some(name) = self.remove(from).and_then(|r| r.config) {
                        configs.push(name);
                    }
                    ChangeType::Renamed { from: from.to_path_buf() }
                }
                _ => ChangeType::Created,
            },
        };
        let config = paths::config_file(config_dir, path);
        let replaced = match change {
            ChangeType::Modified => self.known.get(path).and_then(|k| k.content.clone()),
            _ => None,
        };
        if let Some(cf) = &config {
            self.by_config.entry(cf.name.clone()).or_default().insert(path.to_path_buf());
            if !configs.contains(&cf.name) {
                configs.push(cf.name.clone());
            }
        }
        let content: Option<Arc<[u8]>> = config.as_ref().map(|_| bytes.unwrap_or_default().into());
        self.known.insert(path.to_path_buf(), Known { hash, meta, content, oversize, parsed: None, config });
        Stored::Changed { change, hash, configs, replaced }
    }

    /// Forgets a file that went away.
    pub fn remove(&mut self, path: &Path) -> Option<Removed> {
        let old = self.known.remove(path)?;
        self.suspects.remove(path);
        let config = old.config.map(|cf| {
            if let Some(files) = self.by_config.get_mut(&cf.name) {
                files.remove(path);
                if files.is_empty() {
                    self.by_config.remove(&cf.name);
                }
            }
            cf.name
        });
        Some(Removed { config, content: old.content })
    }

    /// True if a read that was not leased must be confirmed before it is
    /// believed.
    ///
    /// `open(O_TRUNC)` empties a file before the kernel queues the event that
    /// says so (ext4 frees the blocks in between), so a read can see a file
    /// that a writer has just truncated and the fence find nothing yet. Such
    /// a read is always shorter than the content before it. A shorter read
    /// is therefore re-read after a short backoff: if the writer was at
    /// work, its events have arrived by then and the path waits for its
    /// close; if the same bytes come back and nothing happened to the path
    /// meanwhile, they are the real content.
    ///
    /// With `settle` (the portable backend, which has no events to say that
    /// a writer is at work), the confirming read must also find the file
    /// unmodified for that long: a writer stalled between its truncation
    /// and its first write leaves a file that is short and silent, but
    /// recently modified.
    pub fn suspicious(&mut self, ready: &Ready, read: &FileRead, settle: Option<Duration>) -> bool {
        let shorter = self.known.get(&ready.path).is_some_and(|k| read.len < k.meta.len());
        if !shorter {
            self.suspects.remove(&ready.path);
            return false;
        }
        let hash = read.hash;
        // A confirming read is a retry that no signal interrupted (any
        // signal for the path resets its attempt to 0): the writer, if
        // there was one, has been silent since. Every truncation reads as
        // the same empty bytes, so an equal hash alone proves nothing.
        let settled = settle.is_none_or(|settle| read.meta.age() >= settle);
        if ready.attempt > 0 && settled && self.suspects.get(&ready.path) == Some(&hash) {
            self.suspects.remove(&ready.path);
            return false;
        }
        self.suspects.insert(ready.path.clone(), hash);
        true
    }

    /// Forgets the parses of config `name`'s files, so that they are parsed
    /// again (a file their secret references read changed).
    pub fn invalidate(&mut self, name: &str) {
        let Some(files) = self.by_config.get(name) else { return };
        for path in files {
            if let Some(known) = self.known.get_mut(path) {
                known.parsed = None;
            }
        }
    }

    /// The files that config `name`'s documents reference (`${file:PATH}`),
    /// found in their text: for a config that failed to load, whose
    /// references must still be watched so that their arrival reloads it.
    pub fn referenced(&self, name: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for path in self.of_config(name) {
            let Some(content) = self.known.get(path).and_then(|k| k.content.as_deref()) else { continue };
            let text = String::from_utf8_lossy(content);
            let base = path.parent().unwrap_or(Path::new("."));
            let mut rest = text.as_ref();
            while let Some(at) = rest.find("${file:") {
                let after = &rest[at + 7..];
                let Some(end) = after.find('}') else { break };
                out.push(base.join(&after[..end]));
                rest = &after[end..];
            }
        }
        out
    }

    /// Whether config `name` is made of more than one file for `env` (a
    /// base and its overlay, or a file that just went away beside one).
    pub fn is_layered(&self, name: &str, env: Option<&str>) -> bool {
        self.of_config(name)
            .filter(|path| {
                let cf = self.known.get(*path).and_then(|k| k.config.as_ref());
                cf.is_some_and(|cf| cf.env.is_none() || cf.env.as_deref() == env)
            })
            .count()
            > 1
    }

    /// Every config that has files.
    pub fn config_names(&self) -> Vec<String> {
        self.by_config.keys().cloned().collect()
    }

    /// The files of config `name`.
    pub fn of_config(&self, name: &str) -> impl Iterator<Item = &PathBuf> {
        self.by_config.get(name).into_iter().flatten()
    }

    /// The known files under `dir`.
    pub fn under(&self, dir: &Path) -> Vec<PathBuf> {
        self.known.keys().filter(|p| p.starts_with(dir)).cloned().collect()
    }

    /// The known files that a scan did not find.
    pub fn gone(&self, found: &[(PathBuf, Meta)]) -> Vec<PathBuf> {
        let present: BTreeSet<&PathBuf> = found.iter().map(|(p, _)| p).collect();
        self.known.keys().filter(|p| !present.contains(p)).cloned().collect()
    }

    /// Whether `path` is known with exactly this metadata.
    pub fn same_meta(&self, path: &Path, meta: &Meta) -> bool {
        self.known.get(path).is_some_and(|k| k.meta == *meta)
    }

    /// The documents of config `name` from files: the base, then the
    /// overlay for the environment, parsed (once per content).
    pub fn sources(
        &mut self,
        name: &str,
        env: Option<&str>,
        config_dir: &Path,
        decode: &Decode,
    ) -> Result<Sources, ConfigError> {
        let files = self.of_config(name).filter_map(|path| {
            let cf = self.known.get(path)?.config.as_ref()?;
            Some((path.as_path(), cf))
        });
        let chosen = paths::select(name, env, config_dir, files)?;
        let mut docs = Vec::new();
        for path in chosen {
            let known = self.known.get_mut(&path).expect("indexed files are known");
            let oversize = known.oversize.then(|| known.meta.len());
            let parsed = known.parsed.get_or_insert_with(|| {
                if let Some(len) = oversize {
                    let max = decode.limits.max_file_size;
                    let message =
                        format!("{len} bytes, larger than the limit of {max} bytes (max_file_size); not read");
                    return Err(ConfigError::new(crate::error::ConfigErrorKind::Limit, message).with_file(&path));
                }
                let cf = known.config.as_ref().expect("config file");
                let content = known.content.clone().unwrap_or_else(|| Arc::from(&[][..]));
                Parsed::parse(Document::new(&path, cf.format, content), decode)
            });
            docs.push(parsed.clone()?);
        }
        // The environment layer, above the files.
        docs.extend(decode.env.documents(name));
        Ok(Sources { docs, redactor: decode.redactor.clone() })
    }

    /// The documents of config `name` as they are, parsed or not: for the
    /// history of a version that failed to load.
    pub fn documents(&self, name: &str, env: Option<&str>) -> Vec<Document> {
        let mut docs: Vec<(bool, Document)> = Vec::new();
        for path in self.of_config(name) {
            let Some(known) = self.known.get(path) else { continue };
            let Some(cf) = &known.config else { continue };
            let overlay = match &cf.env {
                None => false,
                Some(e) if Some(e.as_str()) == env => true,
                Some(_) => continue,
            };
            let content = known.content.clone().unwrap_or_else(|| Arc::from(&[][..]));
            docs.push((overlay, Document::new(path, cf.format, content)));
        }
        docs.sort_by_key(|(overlay, _)| *overlay);
        docs.into_iter().map(|(_, d)| d).collect()
    }
}
