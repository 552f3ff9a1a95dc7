//! The filesystem side: an inotify backend that reports raw events (Linux),
//! and the tree scans used at startup, after a queue overflow, and for
//! polling (everywhere).
//!
//! relive drives inotify itself rather than through a cross-platform layer
//! because it needs two things such layers hide: `IN_CLOSE_WRITE`, which
//! says a write is complete, and synchronous access to the kernel's event
//! queue, which lets the engine check, after reading a file, that no write
//! raced with the read (see `Worker::fence` in `engine/mod.rs`).

#[cfg(target_os = "linux")]
use std::collections::HashMap;
#[cfg(target_os = "linux")]
use std::ffi::OsStr;
use std::fs;
#[cfg(target_os = "linux")]
use std::io;
#[cfg(target_os = "linux")]
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

#[cfg(target_os = "linux")]
use inotify::{EventMask, WatchDescriptor, WatchMask};

use crate::paths::PathFilter;

/// What a file looked like, to tell whether it changed without reading it
/// (polling) and to keep alongside its content hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    dev: u64,
}

impl Meta {
    /// The file's size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// How long ago the file was last modified (zero if its time is in the
    /// future).
    pub(crate) fn age(&self) -> std::time::Duration {
        let (secs, nanos) = self.mtime;
        let since_epoch = std::time::Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        now.saturating_sub(since_epoch)
    }

    #[cfg(unix)]
    pub(crate) fn of(m: &fs::Metadata) -> Meta {
        use std::os::unix::fs::MetadataExt;
        Meta {
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        }
    }

    /// Without Unix metadata: the size and the modification time (no
    /// change time, no file identity), which a polling scan and the
    /// portable backend's after-read check compare.
    #[cfg(not(unix))]
    pub(crate) fn of(m: &fs::Metadata) -> Meta {
        let since = |t: std::io::Result<std::time::SystemTime>| {
            t.ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or((0, 0), |d| (d.as_secs() as i64, i64::from(d.subsec_nanos())))
        };
        Meta { len: m.len(), mtime: since(m.modified()), ctime: (0, 0), ino: 0, dev: 0 }
    }
}

#[cfg(target_os = "linux")]
/// One inotify event, with its path resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Raw {
    /// Something happened to `path`.
    Path { path: PathBuf, kind: RawKind, is_dir: bool, cookie: u32 },
    /// The kernel's queue overflowed: events were lost.
    Overflow,
}

#[cfg(target_os = "linux")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawKind {
    Modify,
    CloseWrite,
    Create,
    Delete,
    MovedFrom,
    MovedTo,
    Attrib,
    /// A watched directory itself was deleted or moved.
    SelfGone,
}

#[cfg(target_os = "linux")]
/// Why a watch could not be added.
#[derive(Debug)]
pub(crate) enum AddError {
    /// The kernel's or the configured watch limit was reached.
    Limit(String),
    /// Any other failure (the directory vanished, permissions).
    Io(io::Error),
}

#[cfg(target_os = "linux")]
const MASK: WatchMask = WatchMask::MODIFY
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::DONT_FOLLOW);

#[cfg(target_os = "linux")]
/// An inotify instance with a watch on every wanted directory.
pub(crate) struct Inotify {
    inotify: inotify::Inotify,
    by_wd: HashMap<WatchDescriptor, PathBuf>,
    by_path: HashMap<PathBuf, WatchDescriptor>,
    limit: Option<usize>,
    buf: Vec<u8>,
}

#[cfg(target_os = "linux")]
impl Inotify {
    pub(crate) fn new(limit: Option<usize>) -> io::Result<Inotify> {
        Ok(Inotify {
            inotify: inotify::Inotify::init()?,
            by_wd: HashMap::new(),
            by_path: HashMap::new(),
            limit,
            // Room for many events per read: a burst is drained in few
            // system calls.
            buf: vec![0; 64 * 1024],
        })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    pub(crate) fn watch_count(&self) -> usize {
        self.by_path.len()
    }

    /// Watches `dir` and every wanted directory below it. Returns the
    /// directories newly watched.
    pub(crate) fn watch_tree(&mut self, dir: &Path, filter: &PathFilter) -> Result<Vec<PathBuf>, AddError> {
        let mut added = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            if !filter.wants_dir(&dir) {
                continue;
            }
            match self.watch_dir(&dir) {
                Ok(true) => added.push(dir.clone()),
                Ok(false) => {}
                // The directory vanished while we walked: its parent's
                // watch reports that.
                Err(AddError::Io(e)) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        Ok(added)
    }

    fn watch_dir(&mut self, dir: &Path) -> Result<bool, AddError> {
        if self.by_path.contains_key(dir) {
            return Ok(false);
        }
        if let Some(limit) = self.limit {
            if self.by_path.len() >= limit {
                return Err(AddError::Limit(format!("the configured limit of {limit} watches was reached")));
            }
        }
        match self.inotify.watches().add(dir, MASK) {
            Ok(wd) => {
                // Re-adding a watch for an inode already watched under
                // another path returns the same descriptor; keep the newest.
                if let Some(old) = self.by_wd.insert(wd.clone(), dir.to_path_buf()) {
                    self.by_path.remove(&old);
                }
                self.by_path.insert(dir.to_path_buf(), wd);
                Ok(true)
            }
            Err(e) if e.raw_os_error() == Some(28) => Err(AddError::Limit(
                "the kernel's inotify watch limit (fs.inotify.max_user_watches) was reached".to_string(),
            )),
            Err(e) => Err(AddError::Io(e)),
        }
    }

    /// Forgets `dir` and everything below it (their watches are gone or
    /// going: the kernel drops a watch when its directory is deleted).
    pub(crate) fn forget_tree(&mut self, dir: &Path) {
        let gone: Vec<PathBuf> = self.by_path.keys().filter(|p| p.starts_with(dir)).cloned().collect();
        for path in gone {
            if let Some(wd) = self.by_path.remove(&path) {
                self.by_wd.remove(&wd);
                // The directory may have moved rather than vanished; stop
                // watching it under a name we no longer track.
                let _ = self.inotify.watches().remove(wd);
            }
        }
    }

    /// Appends every event available now, without blocking. Returns how
    /// many were read.
    pub(crate) fn read(&mut self, out: &mut Vec<Raw>) -> io::Result<usize> {
        let mut count = 0;
        loop {
            let events = match self.inotify.read_events(&mut self.buf) {
                Ok(events) => events,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(count),
                Err(e) => return Err(e),
            };
            let mut ignored = Vec::new();
            let mut any = false;
            for event in events {
                any = true;
                count += 1;
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    out.push(Raw::Overflow);
                    continue;
                }
                if event.mask.contains(EventMask::IGNORED) {
                    ignored.push(event.wd.clone());
                    continue;
                }
                let Some(dir) = self.by_wd.get(&event.wd) else { continue };
                let (path, kind) = match classify(event.mask, event.name) {
                    Some((RawKind::SelfGone, _)) => (dir.clone(), RawKind::SelfGone),
                    Some((kind, Some(name))) => (dir.join(name), kind),
                    _ => continue,
                };
                out.push(Raw::Path { path, kind, is_dir: event.mask.contains(EventMask::ISDIR), cookie: event.cookie });
            }
            for wd in ignored {
                if let Some(path) = self.by_wd.remove(&wd) {
                    if self.by_path.get(&path) == Some(&wd) {
                        self.by_path.remove(&path);
                    }
                }
            }
            if !any {
                return Ok(count);
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn classify(mask: EventMask, name: Option<&OsStr>) -> Option<(RawKind, Option<&OsStr>)> {
    let kind = if mask.contains(EventMask::CLOSE_WRITE) {
        RawKind::CloseWrite
    } else if mask.contains(EventMask::MODIFY) {
        RawKind::Modify
    } else if mask.contains(EventMask::CREATE) {
        RawKind::Create
    } else if mask.contains(EventMask::DELETE) {
        RawKind::Delete
    } else if mask.contains(EventMask::MOVED_FROM) {
        RawKind::MovedFrom
    } else if mask.contains(EventMask::MOVED_TO) {
        RawKind::MovedTo
    } else if mask.contains(EventMask::ATTRIB) {
        RawKind::Attrib
    } else if mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF) {
        RawKind::SelfGone
    } else {
        return None;
    };
    Some((kind, name))
}

/// Every tracked file under the filter's watched directories, with its
/// metadata (symlinks followed, so a Kubernetes `..data` swap shows as a
/// change of the linked files).
pub(crate) fn scan(root: &Path, filter: &PathFilter) -> Vec<(PathBuf, Meta)> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if !filter.wants_dir(&dir) {
            continue;
        }
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(file_type) = entry.file_type() else { continue };
            if file_type.is_dir() {
                stack.push(path);
            } else if filter.is_tracked(&path) {
                // Follow symlinks; a dangling one is no file.
                if let Ok(meta) = fs::metadata(&path) {
                    if meta.is_file() {
                        files.push((path, Meta::of(&meta)));
                    }
                }
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
}

/// Why a filesystem gives no change events, if it is one of those: network
/// and FUSE filesystems see only changes made through this machine. Known
/// on Linux only (by `statfs`'s magic numbers); elsewhere `None`, a known
/// problem.
#[cfg(not(target_os = "linux"))]
pub(crate) fn eventless_filesystem(_path: &Path) -> Option<&'static str> {
    None
}

/// Why a filesystem gives no change events, if it is one of those: network
/// and FUSE filesystems see only changes made through this machine.
#[cfg(target_os = "linux")]
pub(crate) fn eventless_filesystem(path: &Path) -> Option<&'static str> {
    let stat = rustix::fs::statfs(path).ok()?;
    // The magic numbers are from linux/magic.h and the filesystems' sources.
    #[allow(clippy::unnecessary_cast)]
    let name = match stat.f_type as i64 as u32 {
        0x6969 => "NFS",
        0x517B => "SMB",
        0xFF53_4D42 => "CIFS",
        0xFE53_4D42 => "SMB2",
        0x0102_1997 => "9P",
        0x6573_5546 => "FUSE",
        0x00C3_6400 => "Ceph",
        0x5346_414F => "AFS",
        0x0BD0_0BD0 => "Lustre",
        0x4750_4653 => "GPFS",
        _ => return None,
    };
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_temp_dir_is_not_eventless() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(eventless_filesystem(dir.path()), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn configured_watch_limit_is_reported_as_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["config/a", "config/b", "templates"] {
            fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let filter = PathFilter::new(dir.path(), &["config/**/*".into(), "templates/**/*".into()], &[]).unwrap();
        let mut inotify = Inotify::new(Some(2)).unwrap();
        match inotify.watch_tree(dir.path(), &filter) {
            Err(AddError::Limit(msg)) => assert!(msg.contains("limit of 2"), "{msg}"),
            other => panic!("expected a limit error, got {other:?}"),
        }
        let mut unlimited = Inotify::new(None).unwrap();
        let added = unlimited.watch_tree(dir.path(), &filter).unwrap();
        // The root, config, config/a, config/b and templates.
        assert_eq!(added.len(), 5, "{added:?}");
    }
}
