//! Decides when a watched path's content is complete enough to read.
//!
//! Watcher backends report a stream of low-level observations (a write, a close,
//! a rename, ...). Reading a file on every one of them would deliver half-written
//! content and flood the engine during bursts, so the [`Coalescer`] folds the
//! observations for each path into a single pending entry with a deadline, and
//! hands a path out only once its deadline has passed.
//!
//! The coalescer is a pure state machine: it never sleeps and never reads the
//! clock. Every method takes `now`, which keeps the timing rules testable with
//! synthetic time and lets the engine drive it from whatever event loop it uses.
//! It also never looks at file contents; the engine classifies a ready path as
//! created, modified or deleted by hashing what it reads.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a watcher backend observed for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Data was written (IN_MODIFY, or a truncate); the writer may still have the file open.
    Modified,
    /// A writer closed the file (IN_CLOSE_WRITE): what it wrote is complete.
    /// Only inotify reports closes; the coalescer's cases use it everywhere.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Closed,
    /// A new entry appeared. `complete: false` for a regular file created by
    /// open(O_CREAT): its writer will close it later. `complete: true` for entries
    /// that are whole at once (symlinks, hard links).
    Created {
        /// Whether the entry's content is whole the moment it appears.
        complete: bool,
    },
    /// The entry was unlinked or renamed away.
    Removed,
    /// An entry was renamed into this path (complete at once). `from` is the old
    /// path if it was inside the watched tree.
    MovedIn {
        /// The path the entry was renamed from, when that path is watched too.
        from: Option<PathBuf>,
    },
    /// Metadata changed (chmod, touch); the content may be the same.
    Touched,
}

/// Timing rules for a [`Coalescer`].
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    /// How long to wait for a writer that modified a file but has not closed it.
    /// After this much time with no further signal for the path, it is ready anyway.
    pub write_timeout: Duration,
    /// How long a removed path waits before it is reported ready (as likely
    /// deleted); a re-creation within this time (vim's backup-and-rename, a
    /// delete-then-write) merges into one change.
    pub delete_grace: Duration,
    /// `Some(q)` for backends that cannot see closes (polling): every signal makes
    /// the path ready only after `q` with no further signal for it. `None` for inotify.
    pub quiet: Option<Duration>,
    /// Retry policy for reads that failed transiently.
    pub backoff: Backoff,
    /// The shortest time between two reads of one path that complete
    /// content makes ready. The first change after a quiet spell is ready at
    /// once; changes within this time of the last read are merged and ready
    /// when it has passed. A burst of writes thus costs one read per
    /// interval, and its last value is ready at most this long after the
    /// last write. Zero turns it off.
    pub min_interval: Duration,
}

/// Bounded exponential backoff: delay(n) = min(base * factor^n, max_delay), for n < max_attempts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    /// The delay before the first retry.
    pub base: Duration,
    /// How much each further retry multiplies the delay by.
    pub factor: u32,
    /// The longest delay, however many retries came before.
    pub max_delay: Duration,
    /// How many retries are allowed before giving up.
    pub max_attempts: u32,
}

impl Backoff {
    /// The delay before retrying after `attempt` failed, or `None` once
    /// `attempt >= max_attempts`.
    pub(crate) fn delay(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        // An overflow in either step means the uncapped delay is astronomically
        // large, so the cap applies; saturating here keeps a generous
        // max_attempts from panicking.
        let uncapped = self
            .factor
            .checked_pow(attempt)
            .and_then(|multiplier| self.base.checked_mul(multiplier))
            .unwrap_or(Duration::MAX);
        Some(uncapped.min(self.max_delay))
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { base: Duration::from_millis(5), factor: 2, max_delay: Duration::from_millis(500), max_attempts: 8 }
    }
}

/// A path whose content should be read now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ready {
    /// The path to read.
    pub path: PathBuf,
    /// Set when the path's last arrival was a rename from another watched path.
    pub moved_from: Option<PathBuf>,
    /// When the first signal of this batch arrived (for latency accounting).
    pub first_seen: Instant,
    /// 0 for a normal read; n for the n-th retry.
    pub attempt: u32,
}

/// Why a pending entry is waiting, which decides how later signals treat it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A writer may still have the file open; only a close or the write timeout
    /// makes it ready, and metadata changes must not cut that wait short.
    Writing,
    /// The entry is gone; it becomes ready (as a likely deletion) after the grace
    /// period unless something re-creates it first.
    Removed,
    /// The content is complete and only waits to be taken.
    Settled,
    /// A read failed and waits for its backoff delay.
    Retrying,
}

/// The merged state of every signal seen for one path since it was last taken.
#[derive(Debug)]
struct Entry {
    /// The map key, kept here too so the deadline index can be updated without
    /// allocating a new path for every signal of a burst.
    key: Arc<Path>,
    phase: Phase,
    deadline: Instant,
    first_seen: Instant,
    moved_from: Option<PathBuf>,
    attempt: u32,
    /// Whether content was written to the path (as opposed to a touch or a
    /// re-check): only reads that follow writes arm `min_interval`.
    written: bool,
}

/// How a signal changes the recorded origin of a path's content.
enum Arrival {
    /// The content is still the one that arrived last (a write in place, a close, a chmod).
    Keep,
    /// The content arrived anew, by a rename from `Some(path)` or otherwise.
    Replace(Option<PathBuf>),
}

/// Folds per-path signals into reads that happen once content is complete.
///
/// Pending entries live in a map keyed by path, and their deadlines in an
/// ordered index, so that observing a signal, finding the next deadline and
/// taking what is due all stay logarithmic even during a burst over many files.
/// The index is kept exact (an entry's old deadline is removed when it moves),
/// which keeps [`Coalescer::next_deadline`] a plain lookup with no stale items
/// to skip.
#[derive(Debug)]
pub(crate) struct Coalescer {
    settings: Timing,
    entries: HashMap<Arc<Path>, Entry>,
    deadlines: BTreeSet<(Instant, Arc<Path>)>,
    /// When each recently taken path was taken, for `min_interval`.
    taken: HashMap<Arc<Path>, Instant>,
}

impl Coalescer {
    pub(crate) fn new(settings: Timing) -> Coalescer {
        Coalescer { settings, entries: HashMap::new(), deadlines: BTreeSet::new(), taken: HashMap::new() }
    }

    /// When a path that `phase` made ready after `wait` may be taken:
    /// complete content waits out the rest of `min_interval` since the
    /// path's last read.
    fn ready_at(&self, path: &Path, phase: Phase, wait: Duration, now: Instant) -> Instant {
        let at = later(now, wait);
        if phase != Phase::Settled || self.settings.quiet.is_some() || self.settings.min_interval.is_zero() {
            return at;
        }
        match self.taken.get(path) {
            Some(last) => at.max(later(*last, self.settings.min_interval)),
            None => at,
        }
    }

    /// Records one signal for `path` observed at `now`.
    pub(crate) fn observe(&mut self, path: &Path, signal: Signal, now: Instant) {
        let (phase, wait, arrival) = self.rule(&signal);
        let deadline = self.ready_at(path, phase, wait, now);
        if let Some(entry) = self.entries.get_mut(path) {
            // A metadata change says nothing about whether a writer is done, so
            // it must not release a file that is still being written.
            if signal == Signal::Touched && entry.phase == Phase::Writing && self.settings.quiet.is_none() {
                return;
            }
            if entry.deadline != deadline {
                self.deadlines.remove(&(entry.deadline, entry.key.clone()));
                self.deadlines.insert((deadline, entry.key.clone()));
                entry.deadline = deadline;
            }
            entry.phase = phase;
            // A fresh signal means a fresh change to read, so any retry count
            // belonged to content that is now stale. first_seen is kept: the
            // change first seen then has still not been delivered.
            entry.attempt = 0;
            entry.written |= writes(&signal);
            if let Arrival::Replace(from) = arrival {
                entry.moved_from = from;
            }
        } else {
            let moved_from = match arrival {
                Arrival::Keep => None,
                Arrival::Replace(from) => from,
            };
            self.insert(path, phase, deadline, now, moved_from, 0);
            if let Some(entry) = self.entries.get_mut(path) {
                entry.written = writes(&signal);
            }
        }
    }

    /// Schedules another read of `path` after a failed one; `attempt` is the
    /// attempt that failed (Ready::attempt). Returns false (and schedules
    /// nothing) when the backoff is exhausted.
    ///
    /// If a signal for `path` arrived after the failed read was taken, its
    /// pending entry already guarantees a fresh read, so that entry is kept as
    /// it is (only its `first_seen` moves back to the earlier time). A retried
    /// read carries no `moved_from`: the caller still has it from the failed one.
    pub(crate) fn retry(&mut self, path: &Path, attempt: u32, first_seen: Instant, now: Instant) -> bool {
        let Some(delay) = self.settings.backoff.delay(attempt) else {
            return false;
        };
        // delay() returned Some, so attempt < max_attempts <= u32::MAX and the
        // increment cannot actually saturate.
        let next_attempt = attempt.saturating_add(1);
        let deadline = later(now, delay);
        match self.entries.get_mut(path) {
            Some(entry) if entry.phase != Phase::Retrying => {
                entry.first_seen = entry.first_seen.min(first_seen);
            }
            Some(entry) => {
                if entry.deadline != deadline {
                    self.deadlines.remove(&(entry.deadline, entry.key.clone()));
                    self.deadlines.insert((deadline, entry.key.clone()));
                    entry.deadline = deadline;
                }
                entry.first_seen = first_seen;
                entry.attempt = next_attempt;
            }
            None => {
                self.insert(path, Phase::Retrying, deadline, first_seen, None, next_attempt);
            }
        }
        true
    }

    /// True if the path has a pending (not yet ready or not yet taken) entry.
    pub(crate) fn is_pending(&self, path: &Path) -> bool {
        self.entries.contains_key(path)
    }

    /// The earliest time at which take_ready would return something, if anything is pending.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// Removes and returns every entry whose time has come, ordered by path.
    pub(crate) fn take_ready(&mut self, now: Instant) -> Vec<Ready> {
        let mut ready = Vec::new();
        while self.deadlines.first().is_some_and(|(deadline, _)| *deadline <= now) {
            let Some((_, key)) = self.deadlines.pop_first() else {
                break;
            };
            if let Some(entry) = self.entries.remove(&key) {
                // Only a read after a write starts an interval: a re-check
                // (a Kubernetes `..data_tmp` symlink appearing, a touch) must
                // not hold back the real change that follows it.
                if entry.written && !self.settings.min_interval.is_zero() {
                    self.taken.insert(key.clone(), now);
                }
                ready.push(Ready {
                    path: key.to_path_buf(),
                    moved_from: entry.moved_from,
                    first_seen: entry.first_seen,
                    attempt: entry.attempt,
                });
            }
        }
        // Forget reads older than the interval, so the map holds only the
        // paths of a burst in progress.
        if self.taken.len() > 64 {
            let horizon = self.settings.min_interval;
            self.taken.retain(|_, at| now.saturating_duration_since(*at) < horizon);
        }
        // The index orders by deadline; callers want a stable, path-ordered
        // batch so that, for example, a rename's target and source are handled
        // in a reproducible order.
        ready.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        ready
    }

    /// Drops every pending entry (used after a full rescan).
    #[cfg(test)]
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.deadlines.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The phase a signal puts a path in, how long it then waits, and what it
    /// does to the record of where the content came from.
    fn rule(&self, signal: &Signal) -> (Phase, Duration, Arrival) {
        let (phase, inotify_wait, arrival) = match signal {
            Signal::Modified => (Phase::Writing, self.settings.write_timeout, Arrival::Keep),
            Signal::Created { complete: false } => {
                (Phase::Writing, self.settings.write_timeout, Arrival::Replace(None))
            }
            Signal::Closed | Signal::Touched => (Phase::Settled, Duration::ZERO, Arrival::Keep),
            Signal::Created { complete: true } => (Phase::Settled, Duration::ZERO, Arrival::Replace(None)),
            Signal::MovedIn { from } => (Phase::Settled, Duration::ZERO, Arrival::Replace(from.clone())),
            // The removed content has no origin any more; should the path
            // reappear, the new arrival records its own.
            Signal::Removed => (Phase::Removed, self.settings.delete_grace, Arrival::Replace(None)),
        };
        let wait = match self.settings.quiet {
            None => inotify_wait,
            // A polling backend cannot tell a finished write from a paused one,
            // so every signal restarts the quiet period; a removal still gets at
            // least the grace period so a quick re-creation merges with it.
            Some(quiet) if phase == Phase::Removed => quiet.max(self.settings.delete_grace),
            Some(quiet) => quiet,
        };
        (phase, wait, arrival)
    }

    /// Adds an entry for a path that has none.
    fn insert(
        &mut self,
        path: &Path,
        phase: Phase,
        deadline: Instant,
        first_seen: Instant,
        moved_from: Option<PathBuf>,
        attempt: u32,
    ) {
        let key: Arc<Path> = Arc::from(path);
        self.deadlines.insert((deadline, key.clone()));
        self.entries
            .insert(key.clone(), Entry { key, phase, deadline, first_seen, moved_from, attempt, written: false });
    }
}

/// Whether a signal means content was written to the path.
fn writes(signal: &Signal) -> bool {
    matches!(signal, Signal::Modified | Signal::Closed | Signal::Created { complete: false } | Signal::MovedIn { .. })
}

/// `now + wait`, saturating instead of panicking when a huge configured
/// duration would overflow the platform's `Instant`.
fn later(now: Instant, mut wait: Duration) -> Instant {
    loop {
        if let Some(deadline) = now.checked_add(wait) {
            return deadline;
        }
        // The first halved duration that fits is still at least half the
        // largest representable span, which is indistinguishable from "never".
        wait /= 2;
    }
}

#[cfg(test)]
#[path = "coalesce/tests.rs"]
mod tests;
