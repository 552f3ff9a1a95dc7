//! Intake: where changes come in. The backend is inotify (kernel events,
//! Linux), the portable backend (the platform's events through `notify`,
//! `portable.rs`) or polling (periodic scans of file metadata); whichever
//! runs, what it saw is returned as [`Seen`] values for the coalescer,
//! which decides when a path is ready.

use std::collections::{BTreeSet, HashMap};
use std::fs;
#[cfg(target_os = "linux")]
use std::os::fd::BorrowedFd;
#[cfg(target_os = "linux")]
use std::path::Path;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::WatcherMode;
use super::portable::{self, Portable};
use super::wake::Waker;
use crate::coalesce::Signal;
use crate::config::{Backend, EngineSettings, Polling};
use crate::error::Error;
#[cfg(target_os = "linux")]
use crate::paths::PathFilter;
use crate::watch::{self, Meta};
#[cfg(target_os = "linux")]
use crate::watch::{AddError, Inotify, Raw, RawKind};

/// What intake saw.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Seen {
    /// A signal for one path.
    Signal(PathBuf, Signal),
    /// A directory went away: every file known under it is removed.
    DirGone(PathBuf),
    /// Events were lost (the kernel queue overflowed): compare the tree
    /// with what is known.
    Lost,
    /// Intake fell back to polling: the coalescer needs polling's timing.
    /// Only the inotify intake falls back (at its watch limits).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    NowPolling,
}

enum Source {
    #[cfg(target_os = "linux")]
    Events(Inotify),
    Portable(Portable),
    /// The next scan, and what each file looked like at the last one.
    Polling {
        next: Instant,
        seen: HashMap<PathBuf, Meta>,
    },
}

/// The backend, and what it needs between two reads.
pub(super) struct Intake {
    source: Source,
    #[cfg(target_os = "linux")]
    raw: Vec<Raw>,
    /// Directories whose symlinks must be re-read (a directory or symlink
    /// next to them changed: Kubernetes swaps `..data` this way).
    recheck: BTreeSet<PathBuf>,
    mode: Arc<Mutex<WatcherMode>>,
}

impl Intake {
    /// Chooses inotify, the portable backend or polling, and sets up the
    /// watches. The portable backend wakes the engine through `waker`.
    pub fn start(s: &EngineSettings, mode: Arc<Mutex<WatcherMode>>, waker: Waker) -> Result<Intake, Error> {
        let mut intake = Intake {
            source: Source::Polling { next: Instant::now(), seen: HashMap::new() },
            #[cfg(target_os = "linux")]
            raw: Vec::new(),
            recheck: BTreeSet::new(),
            mode,
        };
        match s.polling {
            Polling::Always => {
                intake.enter_polling(s, "polling was requested".to_string());
                return Ok(intake);
            }
            Polling::Auto => {
                if let Some(fs) = watch::eventless_filesystem(&s.root) {
                    let reason = format!(
                        "{} is on a {fs} filesystem, which reports no changes made by other machines",
                        s.root.display()
                    );
                    intake.enter_polling(s, reason);
                    return Ok(intake);
                }
            }
            Polling::Never => {}
        }
        if s.backend == Backend::Portable || !cfg!(target_os = "linux") {
            match Portable::start(s, waker) {
                Ok(portable) => {
                    *intake.mode.lock().expect("mode lock") =
                        WatcherMode::Portable { api: Portable::api(), watches: portable.watch_count() };
                    intake.source = Source::Portable(portable);
                }
                Err(e) if s.polling == Polling::Never => {
                    return Err(Error::Watch(format!("{}: {e}", Portable::api())));
                }
                Err(e) => intake.enter_polling(s, format!("{} cannot watch the workspace: {e}", Portable::api())),
            }
            return Ok(intake);
        }
        #[cfg(target_os = "linux")]
        return Intake::start_inotify(intake, s);
        #[cfg(not(target_os = "linux"))]
        unreachable!("only Linux has the inotify backend")
    }

    #[cfg(target_os = "linux")]
    fn start_inotify(mut intake: Intake, s: &EngineSettings) -> Result<Intake, Error> {
        let mut inotify = match Inotify::new(s.watch_limit) {
            Ok(inotify) => inotify,
            // EMFILE from inotify_init is the per-user limit on inotify
            // instances (128 by default: about 128 watching processes of one
            // user, or pods of one UID on a node), not the file limit its
            // message names. Like the watch limit, it is a reason to poll.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::MFILE.raw_os_error()) => {
                let reason = format!(
                    "the limit on inotify instances of this user is reached ({e}): raise \
                     fs.inotify.max_user_instances (sysctl fs.inotify.max_user_instances=1024)"
                );
                if s.polling == Polling::Never {
                    return Err(Error::Watch(reason));
                }
                intake.enter_polling(s, reason);
                return Ok(intake);
            }
            Err(e) => return Err(Error::Watch(format!("inotify: {e}"))),
        };
        match inotify.watch_tree(&s.root, &s.filter) {
            Ok(_) => {
                intake.set_watches(inotify.watch_count());
                intake.source = Source::Events(inotify);
                Ok(intake)
            }
            Err(AddError::Limit(reason)) if s.polling != Polling::Never => {
                intake.enter_polling(s, reason);
                Ok(intake)
            }
            Err(AddError::Limit(reason)) => Err(Error::Watch(reason)),
            Err(AddError::Io(e)) => Err(Error::io(&s.root, e)),
        }
    }

    /// The coalescer's quiet window: how long a path must be free of
    /// signals before it is read, for backends that cannot see a writer's
    /// close. `None` for inotify.
    pub fn quiet(&self, s: &EngineSettings) -> Option<Duration> {
        match &self.source {
            #[cfg(target_os = "linux")]
            Source::Events(_) => None,
            Source::Portable(_) => Some(portable::QUIET),
            Source::Polling { .. } => Some(s.quiet),
        }
    }

    /// How long a file that came back shorter must have been unmodified
    /// before the shorter read is believed: only without close events and
    /// leases (see [`Files::suspicious`](super::read::Files::suspicious)).
    pub fn settle(&self) -> Option<Duration> {
        matches!(self.source, Source::Portable(_)).then_some(portable::SETTLE)
    }

    /// Whether changes come from events, which can fence a read.
    pub fn has_events(&self) -> bool {
        !matches!(self.source, Source::Polling { .. })
    }

    /// Whether reads take a read lease (`lease.rs`): only with inotify, so
    /// that the portable backend runs the same code on Linux as elsewhere.
    pub fn leases(&self) -> bool {
        #[cfg(target_os = "linux")]
        return matches!(self.source, Source::Events(_));
        #[cfg(not(target_os = "linux"))]
        false
    }

    /// The descriptor to wait on for events, if any.
    #[cfg(target_os = "linux")]
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.source {
            Source::Events(inotify) => Some(inotify.fd()),
            Source::Portable(_) | Source::Polling { .. } => None,
        }
    }

    /// When polling: the time of the next scan.
    pub fn next_scan(&self) -> Option<Instant> {
        match &self.source {
            Source::Polling { next, .. } => Some(*next),
            _ => None,
        }
    }

    /// Every tracked file under the root, with its metadata.
    pub fn scan(&self, s: &EngineSettings) -> Vec<(PathBuf, Meta)> {
        watch::scan(&s.root, &s.filter)
    }

    #[cfg(target_os = "linux")]
    fn set_watches(&self, count: usize) {
        *self.mode.lock().expect("mode lock") = WatcherMode::Events { watches: count };
        metrics::gauge!("relive_watches").set(count as f64);
    }

    fn enter_polling(&mut self, s: &EngineSettings, reason: String) {
        tracing::warn!(
            root = %s.root.display(),
            %reason,
            interval_ms = s.poll_interval.as_millis() as u64,
            "relive falls back to polling: changes are seen at the next scan, and a file still being written may be read once it has been quiet for debounce_ms"
        );
        metrics::counter!("relive_polling_fallbacks_total").increment(1);
        let seen = watch::scan(&s.root, &s.filter).into_iter().collect();
        self.source = Source::Polling { next: Instant::now() + s.poll_interval, seen };
        *self.mode.lock().expect("mode lock") = WatcherMode::Polling { reason, interval: s.poll_interval };
    }

    /// Watches the whole tree again (after lost events). Directories made
    /// while events were lost are watched from now on.
    pub fn rewatch(&mut self, s: &EngineSettings) -> Vec<Seen> {
        if let Source::Portable(portable) = &mut self.source {
            portable.rewatch(s);
            let count = portable.watch_count();
            *self.mode.lock().expect("mode lock") = WatcherMode::Portable { api: Portable::api(), watches: count };
            return Vec::new();
        }
        #[cfg(target_os = "linux")]
        return self.rewatch_inotify(s);
        #[cfg(not(target_os = "linux"))]
        Vec::new()
    }

    #[cfg(target_os = "linux")]
    fn rewatch_inotify(&mut self, s: &EngineSettings) -> Vec<Seen> {
        let Source::Events(inotify) = &mut self.source else { return Vec::new() };
        match inotify.watch_tree(&s.root, &s.filter) {
            Err(AddError::Limit(reason)) => {
                self.enter_polling(s, reason);
                vec![Seen::NowPolling]
            }
            Ok(_) => {
                let count = inotify.watch_count();
                self.set_watches(count);
                Vec::new()
            }
            Err(AddError::Io(_)) => Vec::new(),
        }
    }

    /// Every pending event, without blocking.
    pub fn read(&mut self, s: &EngineSettings) -> Vec<Seen> {
        if let Source::Portable(portable) = &mut self.source {
            let mut seen = portable.read(s, &mut self.recheck);
            self.flush_rechecks(s, &mut seen);
            return seen;
        }
        #[cfg(target_os = "linux")]
        return self.read_inotify(s);
        #[cfg(not(target_os = "linux"))]
        Vec::new()
    }

    #[cfg(target_os = "linux")]
    fn read_inotify(&mut self, s: &EngineSettings) -> Vec<Seen> {
        let Source::Events(inotify) = &mut self.source else { return Vec::new() };
        self.raw.clear();
        if let Err(e) = inotify.read(&mut self.raw) {
            tracing::error!(error = %e, "reading inotify events failed");
            return Vec::new();
        }
        if self.raw.is_empty() {
            return Vec::new();
        }
        let raws = std::mem::take(&mut self.raw);
        let mut seen = Vec::with_capacity(raws.len());
        let mut moves: HashMap<u32, PathBuf> = HashMap::new();
        let mut overflow = false;
        for raw in &raws {
            let Raw::Path { path, kind, is_dir, cookie } = raw else {
                overflow = true;
                continue;
            };
            let tracked = s.filter.is_tracked(path);
            match kind {
                RawKind::Modify if tracked => seen.push(Seen::Signal(path.clone(), Signal::Modified)),
                RawKind::CloseWrite if tracked => seen.push(Seen::Signal(path.clone(), Signal::Closed)),
                RawKind::Attrib if tracked => seen.push(Seen::Signal(path.clone(), Signal::Touched)),
                RawKind::Create => self.arrived(s, path, *is_dir, None, false, &mut seen),
                RawKind::MovedTo => {
                    let from = moves.remove(cookie);
                    self.arrived(s, path, *is_dir, from, true, &mut seen);
                }
                RawKind::Delete => self.removed(s, path, *is_dir, &mut seen),
                RawKind::MovedFrom => {
                    moves.insert(*cookie, path.clone());
                    self.removed(s, path, *is_dir, &mut seen);
                }
                RawKind::SelfGone => {
                    if let Source::Events(inotify) = &mut self.source {
                        inotify.forget_tree(path);
                    }
                }
                _ => {}
            }
        }
        self.raw = raws;
        if overflow {
            seen.push(Seen::Lost);
        }
        self.flush_rechecks(s, &mut seen);
        seen
    }

    /// When polling and a scan is due: what changed since the last scan.
    pub fn poll(&mut self, s: &EngineSettings, now: Instant) -> Vec<Seen> {
        let Source::Polling { next, seen } = &mut self.source else { return Vec::new() };
        if *next > now {
            return Vec::new();
        }
        *next = now + s.poll_interval;
        let found: HashMap<PathBuf, Meta> = watch::scan(&s.root, &s.filter).into_iter().collect();
        let mut out = Vec::new();
        for (path, meta) in &found {
            match seen.get(path) {
                Some(old) if old == meta => {}
                Some(_) => out.push(Seen::Signal(path.clone(), Signal::Modified)),
                None => out.push(Seen::Signal(path.clone(), Signal::Created { complete: false })),
            }
        }
        for path in seen.keys() {
            if !found.contains_key(path) {
                out.push(Seen::Signal(path.clone(), Signal::Removed));
            }
        }
        *seen = found;
        out
    }

    // The two helpers below push into the batch that `read` is building and
    // returns; nothing outside this function sees the vector.

    /// A new entry at `path`: created, or renamed into place.
    #[cfg(target_os = "linux")]
    fn arrived(
        &mut self,
        s: &EngineSettings,
        path: &Path,
        is_dir: bool,
        from: Option<PathBuf>,
        moved: bool,
        seen: &mut Vec<Seen>,
    ) {
        let filter = &s.filter;
        if let Some(parent) = path.parent() {
            // A directory or symlink appearing may re-point symlinks next to
            // it: Kubernetes swaps `..data` this way.
            let link = fs::symlink_metadata(path).map(|m| m.file_type().is_symlink()).unwrap_or(false);
            if is_dir || link || !filter.is_tracked(path) {
                self.recheck.insert(parent.to_path_buf());
            }
        }
        if is_dir {
            seen.extend(self.watch_new_dir(s, path));
            return;
        }
        if !filter.is_tracked(path) {
            return;
        }
        let signal = if moved {
            Signal::MovedIn { from: from.filter(|f| filter.is_tracked(f)) }
        } else {
            // A symlink or hard link is whole at once; a file created by
            // open(O_CREAT) is complete only when its writer closes it.
            let whole = fs::symlink_metadata(path).map(|m| m.file_type().is_symlink()).unwrap_or(false);
            Signal::Created { complete: whole }
        };
        seen.push(Seen::Signal(path.to_path_buf(), signal));
    }

    #[cfg(target_os = "linux")]
    fn removed(&mut self, s: &EngineSettings, path: &Path, is_dir: bool, seen: &mut Vec<Seen>) {
        if let Some(parent) = path.parent() {
            if is_dir || !s.filter.is_tracked(path) {
                self.recheck.insert(parent.to_path_buf());
            }
        }
        if is_dir {
            if let Source::Events(inotify) = &mut self.source {
                inotify.forget_tree(path);
            }
            seen.push(Seen::DirGone(path.to_path_buf()));
        } else if s.filter.is_tracked(path) {
            // Every known file is tracked: the filter does not change while
            // the engine runs.
            seen.push(Seen::Signal(path.to_path_buf(), Signal::Removed));
        }
    }

    #[cfg(target_os = "linux")]
    fn watch_new_dir(&mut self, s: &EngineSettings, dir: &Path) -> Vec<Seen> {
        let mut seen = Vec::new();
        if let Source::Events(inotify) = &mut self.source {
            match inotify.watch_tree(dir, &s.filter) {
                Ok(_) => {
                    let count = inotify.watch_count();
                    self.set_watches(count);
                }
                Err(AddError::Limit(reason)) => {
                    if s.polling == Polling::Never {
                        tracing::error!(%reason, dir = %dir.display(), "cannot watch new directory; its changes will be missed");
                    } else {
                        self.enter_polling(s, reason);
                        return vec![Seen::NowPolling];
                    }
                }
                Err(AddError::Io(_)) => {}
            }
        }
        // Files may have been written into it before the watch existed.
        let sub = PathFilter::clone(&s.filter);
        for (file, _) in watch::scan(dir, &sub) {
            seen.push(Seen::Signal(file, Signal::Created { complete: true }));
        }
        seen
    }

    /// Re-reads the tracked symlinks in directories where a directory or
    /// symlink changed: their targets may have moved.
    fn flush_rechecks(&mut self, s: &EngineSettings, seen: &mut Vec<Seen>) {
        for dir in std::mem::take(&mut self.recheck) {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_symlink()) && s.filter.is_tracked(&path) {
                    seen.push(Seen::Signal(path, Signal::Touched));
                }
            }
        }
    }
}
