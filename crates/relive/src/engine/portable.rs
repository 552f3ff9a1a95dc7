//! The portable backend: the platform's own change events through the
//! `notify` crate (FSEvents on macOS, `ReadDirectoryChangesW` on Windows,
//! kqueue on the BSDs, inotify on Linux), turned into the same [`Seen`]
//! values as the inotify backend's.
//!
//! What it cannot see is when a write is complete: FSEvents and
//! `ReadDirectoryChangesW` report no closes, and no platform but Linux has
//! read leases. So the coalescer runs with a short quiet window
//! ([`QUIET`]): a path is read once no event came for it for that long.
//! Close events that `notify` does report (on Linux) are ignored on
//! purpose, so that this backend behaves the same everywhere and its tests
//! on Linux test what macOS and Windows users run. The guards after the
//! read are the engine's own: a read during which the file's size or
//! modification time moved is retried (`read.rs`), a read shorter than the
//! file was is believed only after a confirming re-read, and the queue is
//! drained after the read and before the commit (the fences).
//!
//! `notify` delivers events on a thread of its own; they wait in a bounded
//! queue, and each one wakes the engine.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{EventKind, ModifyKind, RenameMode};
use notify::{Event, RecommendedWatcher, RecursiveMode, Watcher, WatcherKind};

use super::intake::Seen;
use super::wake::Waker;
use crate::coalesce::Signal;
use crate::config::EngineSettings;
use crate::paths::PathFilter;
use crate::watch;

/// How long a path must be free of events before it is read: long enough
/// for a writer's `write` calls of one save to arrive together (they come
/// microseconds apart), short enough to keep a save's delivery in the
/// milliseconds. A writer that pauses longer mid-file is the known problem
/// this backend shares with polling, whose quiet period is 500 ms.
pub(crate) const QUIET: Duration = Duration::from_millis(10);

/// How long a file that came back shorter than it was must have been
/// unmodified before that read is believed (`Files::suspicious`). A writer
/// that truncates a file and stalls before its first write (descheduled,
/// on a busy machine) leaves an empty, silent file; without close events
/// or leases, only its age tells it from a file that really shrank. A save
/// that shortens a file is delivered this much later than others.
pub(crate) const SETTLE: Duration = Duration::from_millis(50);

/// The most events held between two reads of the queue. More means the
/// engine is far behind: the events are dropped and the tree rescanned, as
/// after an inotify overflow.
const MAX_QUEUED: usize = 64 * 1024;

#[derive(Default)]
struct Queue {
    events: Vec<Event>,
    /// Events were dropped (the queue was full, or `notify` reported an
    /// error): the tree must be compared with what is known.
    lost: bool,
}

/// A `notify` watcher over the workspace's wanted directories.
pub(crate) struct Portable {
    watcher: RecommendedWatcher,
    queue: Arc<Mutex<Queue>>,
    /// The directories under the root watched recursively (the root itself
    /// is watched alone, so that `data/` and other unwanted directories
    /// cost nothing).
    watched: BTreeSet<PathBuf>,
}

impl Portable {
    /// Watches the root and its wanted directories; every event wakes the
    /// engine through `waker`.
    pub(crate) fn start(s: &EngineSettings, waker: Waker) -> notify::Result<Portable> {
        let queue = Arc::new(Mutex::new(Queue::default()));
        let sink = Arc::clone(&queue);
        let watcher = RecommendedWatcher::new(
            move |event: notify::Result<Event>| {
                {
                    let mut q = sink.lock().unwrap_or_else(|e| e.into_inner());
                    match event {
                        Ok(event) if q.events.len() < MAX_QUEUED => q.events.push(event),
                        Ok(_) => q.lost = true,
                        Err(e) => {
                            tracing::warn!(error = %e, "the portable watcher reported an error; rescanning");
                            q.lost = true;
                        }
                    }
                }
                waker.wake();
            },
            notify::Config::default(),
        )?;
        let mut portable = Portable { watcher, queue, watched: BTreeSet::new() };
        portable.watcher.watch(&s.root, RecursiveMode::NonRecursive)?;
        portable.watch_children(&s.root, &s.filter);
        Ok(portable)
    }

    /// The platform interface in use, for [`WatcherMode`](super::WatcherMode).
    pub(crate) fn api() -> &'static str {
        match RecommendedWatcher::kind() {
            WatcherKind::Inotify => "inotify",
            WatcherKind::Fsevent => "FSEvents",
            WatcherKind::Kqueue => "kqueue",
            WatcherKind::ReadDirectoryChangesWatcher => "ReadDirectoryChangesW",
            WatcherKind::PollWatcher => "polling",
            _ => "notify",
        }
    }

    /// How many directories are watched recursively, the root aside.
    pub(crate) fn watch_count(&self) -> usize {
        self.watched.len()
    }

    /// Watches every wanted directory right under the root not watched yet.
    fn watch_children(&mut self, root: &Path, filter: &PathFilter) {
        let Ok(entries) = fs::read_dir(root) else { return };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                self.watch_dir(&entry.path(), filter);
            }
        }
    }

    fn watch_dir(&mut self, dir: &Path, filter: &PathFilter) -> bool {
        if !filter.wants_dir(dir) || self.watched.contains(dir) {
            return false;
        }
        match self.watcher.watch(dir, RecursiveMode::Recursive) {
            Ok(()) => {
                self.watched.insert(dir.to_path_buf());
                true
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; its changes will be missed");
                false
            }
        }
    }

    /// Watches the tree again after lost events: directories made meanwhile
    /// are watched from now on.
    pub(crate) fn rewatch(&mut self, s: &EngineSettings) {
        self.watched.retain(|dir| dir.is_dir());
        self.watch_children(&s.root, &s.filter);
    }

    /// Every event received since the last call, as [`Seen`] values;
    /// `recheck` collects the directories whose symlinks must be re-read.
    pub(crate) fn read(&mut self, s: &EngineSettings, recheck: &mut BTreeSet<PathBuf>) -> Vec<Seen> {
        let Queue { events, lost } = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()));
        let mut seen = Vec::new();
        let mut lost = lost;
        for event in events {
            if event.need_rescan() {
                lost = true;
                continue;
            }
            match event.kind {
                // Opens, reads and closes: ignored on purpose (see the module
                // docs), and reads are relive's own.
                EventKind::Access(_) => {}
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) if event.paths.len() == 2 => {
                    let (from, to) = (&event.paths[0], &event.paths[1]);
                    self.observe(s, from, Arrived::No, recheck, &mut seen);
                    self.observe(s, to, Arrived::Renamed(Some(from.clone())), recheck, &mut seen);
                }
                EventKind::Create(_) => {
                    for path in &event.paths {
                        self.observe(s, path, Arrived::Created, recheck, &mut seen);
                    }
                }
                EventKind::Modify(ModifyKind::Name(_)) => {
                    for path in &event.paths {
                        self.observe(s, path, Arrived::Renamed(None), recheck, &mut seen);
                    }
                }
                _ => {
                    for path in &event.paths {
                        self.observe(s, path, Arrived::No, recheck, &mut seen);
                    }
                }
            }
        }
        if lost {
            seen.push(Seen::Lost);
        }
        seen
    }

    /// What an event at `path` means, judged by what is there now: event
    /// kinds differ between platforms (FSEvents merges them, and reports a
    /// rename at both ends without saying which is which), the state of the
    /// path does not.
    fn observe(
        &mut self,
        s: &EngineSettings,
        path: &Path,
        arrived: Arrived,
        recheck: &mut BTreeSet<PathBuf>,
        seen: &mut Vec<Seen>,
    ) {
        // Like the inotify backend, which watches only wanted directories:
        // entries of any other directory (`data/`) are not looked at.
        let Some(parent) = path.parent().filter(|p| s.filter.wants_dir(p)) else { return };
        let tracked = s.filter.is_tracked(path);
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Gone: a file, or a directory with everything known in it.
                if tracked {
                    seen.push(Seen::Signal(path.to_path_buf(), Signal::Removed));
                } else {
                    recheck.insert(parent.to_path_buf());
                    if self.watched.remove(path) {
                        let _ = self.watcher.unwatch(path);
                    }
                    seen.push(Seen::DirGone(path.to_path_buf()));
                }
                return;
            }
            Err(_) => return,
        };
        let link = meta.file_type().is_symlink();
        if meta.is_dir() || link || !tracked {
            // A directory or symlink appearing may re-point symlinks next to
            // it: Kubernetes swaps `..data` this way.
            recheck.insert(parent.to_path_buf());
        }
        if meta.is_dir() {
            if !matches!(arrived, Arrived::No) {
                if parent == s.root {
                    self.watch_dir(path, &s.filter);
                }
                // Files may have been written into it before its events
                // reached us.
                for (file, _) in watch::scan(path, &s.filter) {
                    seen.push(Seen::Signal(file, Signal::Created { complete: true }));
                }
            }
            return;
        }
        if !tracked {
            return;
        }
        let signal = match arrived {
            Arrived::Renamed(from) => Signal::MovedIn { from: from.filter(|f| s.filter.is_tracked(f)) },
            Arrived::Created => Signal::Created { complete: link },
            Arrived::No => Signal::Modified,
        };
        seen.push(Seen::Signal(path.to_path_buf(), signal));
    }
}

/// How an entry came to be where an event says it is.
enum Arrived {
    /// It did not arrive: written to, or its metadata changed.
    No,
    /// Created there.
    Created,
    /// Renamed there, from the path given if the platform said.
    Renamed(Option<PathBuf>),
}
