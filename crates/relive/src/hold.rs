//! The hold: a file, `data/hold`, that tells the engine to read and apply
//! nothing until it is gone, so that a tool copying several files in
//! (`relive apply`) gets them applied as one change set rather than one
//! by one.
//!
//! It is a file rather than a call so that it works across processes: the
//! engine runs in the service, the copier is another program. The file is
//! created exclusively (`O_EXCL`, mode 0600) and holds the holder's pid
//! and a token; the engine looks at it before each step that would read
//! files. A hold whose holder is dead, or which is older than
//! [`hold_timeout_ms`](crate::HotReloadConfig::hold_timeout_ms), is
//! ignored with a warning: a copier that crashed must not freeze the
//! service.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::{Duration, SystemTime};

use crate::changeset::ChangeSetId;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::private;

/// The hold file's name under `data/`.
pub(crate) const HOLD_FILE: &str = "hold";

/// The file a holder replaces (temp + rename) just before it removes the
/// hold: an engine that never saw a short hold still learns, from the
/// change, that one came and went, and takes what was written under it as
/// one change set. Needed where events arrive late (the portable backend,
/// polling); with inotify the queue read after the look already has them.
pub(crate) const RELEASED_FILE: &str = "hold.released";

/// What identifies the last release: the marker's inode (a rename makes a
/// new one) and modification time. `None` while there is none.
pub(crate) fn release_stamp(data_dir: &Path) -> Option<(u64, SystemTime, u64)> {
    let meta = fs::symlink_metadata(data_dir.join(RELEASED_FILE)).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let ino = 0;
    Some((ino, meta.modified().ok()?, meta.len()))
}

/// The most of the hold file that is read: a pid and a token.
const MAX_LEN: u64 = 128;

/// A hold on a workspace's engine, from
/// [`Workspace::hold`](crate::Workspace::hold): while it exists, the
/// engine reads and validates nothing and keeps every change pending; when
/// it is dropped (or [`release`](Hold::release)d), everything pending is
/// applied as one change set, groups whole or not at all.
///
/// It works across processes (it is the file `data/hold`), and bounds
/// itself: an engine ignores a hold whose process is gone or which is
/// older than [`hold_timeout_ms`](crate::HotReloadConfig::hold_timeout_ms)
/// (30 s by default). Keep it for the copies, not longer. Only files are
/// held: [`publish`](crate::HotReloadManager::publish) and
/// [`publish_set`](crate::HotReloadManager::publish_set) apply at once.
#[derive(Debug)]
pub struct Hold {
    path: PathBuf,
    content: String,
    /// The engine of this process, if one runs, to wake at once on release
    /// (other processes' engines notice within a few milliseconds).
    engine: Weak<Engine>,
    released: bool,
}

/// What the hold file says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HoldState {
    /// No hold.
    Free,
    /// Held by a live process, within the bound.
    Held {
        /// The holder's pid.
        pid: u32,
    },
    /// A hold to ignore, and why.
    Stale {
        /// What the file says, to warn once per stale hold.
        content: String,
        /// Why it is ignored.
        reason: String,
    },
}

impl Hold {
    /// Takes the hold on the workspace whose data directory is `data_dir`.
    pub(crate) fn take(data_dir: &Path, timeout: Duration, engine: Weak<Engine>) -> Result<Hold> {
        private::narrow_dir(data_dir).map_err(|e| Error::io(data_dir, e))?;
        let path = data_dir.join(HOLD_FILE);
        let content = format!("{} {}\n", std::process::id(), ChangeSetId::next());
        // Twice at most: once, and once more after clearing a stale hold.
        for _ in 0..2 {
            let created =
                private::with_mode(OpenOptions::new().write(true).create_new(true), private::FILE_MODE).open(&path);
            match created {
                Ok(mut file) => {
                    let written = file.write_all(content.as_bytes()).and_then(|()| file.sync_all());
                    if let Err(e) = written {
                        let _ = fs::remove_file(&path);
                        return Err(Error::io(&path, e));
                    }
                    return Ok(Hold { path, content, engine, released: false });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match state(&path, timeout, SystemTime::now()) {
                    HoldState::Held { pid } => return Err(Error::Held { path, pid }),
                    HoldState::Stale { reason, .. } => {
                        tracing::warn!(path = %path.display(), reason, "clearing a stale hold");
                        match fs::remove_file(&path) {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                            Err(e) => return Err(Error::io(&path, e)),
                        }
                    }
                    HoldState::Free => {}
                },
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        // Another process took it in between.
        match state(&path, timeout, SystemTime::now()) {
            HoldState::Held { pid } => Err(Error::Held { path, pid }),
            _ => Err(Error::io(&path, io::Error::new(io::ErrorKind::AlreadyExists, "the hold keeps changing hands"))),
        }
    }

    /// The hold file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Releases the hold: the engine applies what is pending as one change
    /// set. The same as dropping it, with the error if the file could not
    /// be removed.
    pub fn release(mut self) -> Result<()> {
        self.remove()
    }

    fn remove(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.released, true) {
            return Ok(());
        }
        // Only our own hold: a stale one cleared and taken by another
        // process since is theirs.
        let ours = read_bounded(&self.path).is_ok_and(|c| c == self.content);
        let removed = if ours {
            // Before the removal: an engine that finds the hold gone has
            // already a new marker to compare.
            if let Some(dir) = self.path.parent() {
                let marker = dir.join(RELEASED_FILE);
                if let Err(e) = private::replace_file(&marker, self.content.as_bytes(), private::Keep::PRIVATE) {
                    tracing::warn!(path = %marker.display(), error = %e, "cannot mark the hold's release");
                }
            }
            match fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(&self.path, e)),
                _ => Ok(()),
            }
        } else {
            Ok(())
        };
        if let Some(engine) = self.engine.upgrade() {
            engine.nudge();
        }
        removed
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!(error = %e, "cannot release the hold");
        }
    }
}

/// What the hold file at `path` says at `now`.
pub(crate) fn state(path: &Path, timeout: Duration, now: SystemTime) -> HoldState {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return HoldState::Free,
        Err(e) => return HoldState::Stale { content: String::new(), reason: format!("cannot look at it: {e}") },
    };
    if !meta.is_file() {
        return HoldState::Stale { content: String::new(), reason: "not a regular file".to_string() };
    }
    let content = match read_bounded(path) {
        Ok(content) => content,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return HoldState::Free,
        Err(e) => return HoldState::Stale { content: String::new(), reason: format!("cannot read it: {e}") },
    };
    let age = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).unwrap_or_default();
    if age > timeout {
        let reason = format!("older than the bound ({} ms)", timeout.as_millis());
        return HoldState::Stale { content, reason };
    }
    // A holder writes its pid before anything can see the file empty for
    // long: an empty file is a holder between create and write.
    if content.is_empty() {
        return HoldState::Held { pid: 0 };
    }
    let Some(pid) = content.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()) else {
        return HoldState::Stale { content, reason: "no pid in it".to_string() };
    };
    if !alive(pid) {
        let reason = format!("its process ({pid}) is gone");
        return HoldState::Stale { content, reason };
    }
    HoldState::Held { pid }
}

/// Reads at most [`MAX_LEN`] bytes of the hold file, without blocking on
/// a FIFO put in its place.
fn read_bounded(path: &Path) -> io::Result<String> {
    let file = crate::engine::open_nonblocking(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_LEN).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether process `pid` exists (on this host). Without a way to ask
/// (Windows), every holder is taken as alive and only the age bound
/// applies.
fn alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else { return false };
        // EPERM: it exists, as another user's process.
        !matches!(rustix::process::test_kill_process(pid), Err(rustix::io::Errno::SRCH))
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_is_judged_by_its_holder_and_its_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HOLD_FILE);
        let bound = Duration::from_secs(30);
        assert_eq!(state(&path, bound, SystemTime::now()), HoldState::Free);
        fs::write(&path, format!("{} x\n", std::process::id())).unwrap();
        assert_eq!(state(&path, bound, SystemTime::now()), HoldState::Held { pid: std::process::id() });
        let later = SystemTime::now() + Duration::from_secs(31);
        assert!(matches!(state(&path, bound, later), HoldState::Stale { .. }));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        fs::write(&path, format!("{dead} x\n")).unwrap();
        assert!(
            matches!(state(&path, bound, SystemTime::now()), HoldState::Stale { reason, .. } if reason.contains("gone"))
        );
        fs::write(&path, "junk\n").unwrap();
        assert!(matches!(state(&path, bound, SystemTime::now()), HoldState::Stale { .. }));
    }

    #[test]
    fn a_hold_is_private_exclusive_and_removed_on_release() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let hold = Hold::take(&data, Duration::from_secs(30), Weak::new()).unwrap();
        #[cfg(unix)]
        assert_eq!(private::mode_of(&fs::metadata(hold.path()).unwrap()), 0o600);
        let again = Hold::take(&data, Duration::from_secs(30), Weak::new());
        assert!(matches!(again, Err(Error::Held { pid, .. }) if pid == std::process::id()), "{again:?}");
        let path = hold.path().to_path_buf();
        hold.release().unwrap();
        assert!(!path.exists());
        // A dead holder's hold is cleared and taken.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        fs::write(&path, format!("{dead} x\n")).unwrap();
        let hold = Hold::take(&data, Duration::from_secs(30), Weak::new()).unwrap();
        drop(hold);
        assert!(!path.exists());
    }
}
