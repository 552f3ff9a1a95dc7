//! The engine: one thread per workspace that watches, coalesces, reads,
//! parses, validates, swaps and notifies.
//!
//! ```text
//! inotify / poll ──▶ Coalescer ──ready──▶ read ─▶ fence ─▶ hash ─▶ parse+merge ─▶ validate (all sinks) ─▶ swap ─▶ events
//! ```
//!
//! Everything here runs on the engine's own thread and owns its state; the
//! rest of the crate talks to it through [`Command`]s. Nothing on this thread
//! awaits or takes a lock that user code holds, and user code (handlers,
//! validators aside) never runs here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use globset::GlobMatcher;
use rustix::event::{PollFd, PollFlags};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::coalesce::{Backoff, Coalescer, Ready, Settings as CoalesceSettings, Signal};
use crate::error::{ConfigError, ConfigErrorKind, Error};
use crate::event::{ChangeEvent, ChangeType};
use crate::handler::{self, DynHandler, HANDLER_QUEUE};
use crate::history::{HistoryConfig, Recorder};
use crate::paths::{self, ConfigFile, PathFilter};
use crate::pipeline::{Document, Parsed, Sources};
use crate::redact::Redactor;
use crate::stream::{Sink, SinkFactory};
use crate::sys;
use crate::watch::{self, AddError, Inotify, Meta, Raw, RawKind};
use crate::workspace::{HotReloadConfig, Polling};

/// How long a deleted file waits before it is reported, so that a
/// delete-then-write (vim's backup-and-rename) is one change.
const DELETE_GRACE: Duration = Duration::from_millis(50);

/// The shortest time between two reads of one file in a burst of writes:
/// the first change is read at once, the ones after it at most this often.
/// A burst's last value thus arrives within this time of the last write.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// How the engine learns about changes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatcherMode {
    /// Kernel events (inotify): changes are seen as they happen.
    Events {
        /// How many directories are watched.
        watches: usize,
    },
    /// Periodic scans, because events are unavailable or were turned off.
    Polling {
        /// Why relive polls.
        reason: String,
        /// Time between scans.
        interval: Duration,
    },
}

/// Everything the engine needs, resolved from a [`HotReloadConfig`].
pub(crate) struct Settings {
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
    pub poll_interval: Duration,
    pub quiet: Duration,
    pub write_timeout: Duration,
    pub watch_limit: Option<usize>,
}

impl Settings {
    pub(crate) fn new(
        root: &Path,
        config_dir: PathBuf,
        data_dir: PathBuf,
        env: Option<String>,
        c: &HotReloadConfig,
    ) -> Result<Settings, Error> {
        Ok(Settings {
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
            poll_interval: Duration::from_millis(c.poll_interval_ms.max(1)),
            quiet: Duration::from_millis(c.debounce_ms),
            write_timeout: Duration::from_millis(c.write_timeout_ms),
            watch_limit: c.watch_limit,
        })
    }
}

enum Command {
    Subscribe { name: String, factory: SinkFactory, reply: oneshot::Sender<Result<(), ConfigError>> },
    AddHandler { name: String, glob: Option<GlobMatcher>, tx: mpsc::Sender<ChangeEvent> },
    Publish { name: String, docs: Vec<Document>, reply: oneshot::Sender<Result<bool, ConfigError>> },
    Pause { paused: std::sync::mpsc::SyncSender<()>, resume: std::sync::mpsc::Receiver<()> },
    FlushHistory { reply: oneshot::Sender<()> },
    Shutdown,
}

/// The handle side of the engine, shared by the workspace and managers.
pub(crate) struct Engine {
    tx: std::sync::mpsc::Sender<Command>,
    wake: OwnedFd,
    events: broadcast::Sender<ChangeEvent>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    runtime: tokio::runtime::Handle,
    mode: Arc<Mutex<WatcherMode>>,
    root: PathBuf,
}

/// Keeps the engine paused until dropped. For tests that need the kernel's
/// event queue to overflow.
#[doc(hidden)]
pub struct PauseGuard {
    _resume: std::sync::mpsc::SyncSender<()>,
}

impl Engine {
    /// Starts the engine thread; returns once the first scan is done and
    /// every change from now on will be seen.
    pub(crate) async fn start(settings: Settings) -> Result<Arc<Engine>, Error> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (wake_rx, wake) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK)
                .map_err(|e| Error::Watch(format!("cannot create wake pipe: {e}")))?;
        let (events, _) = broadcast::channel(1024);
        let mode = Arc::new(Mutex::new(WatcherMode::Events { watches: 0 }));
        let (started_tx, started_rx) = oneshot::channel();
        let root = settings.root.clone();
        let worker_events = events.clone();
        let worker_mode = Arc::clone(&mode);
        let thread = std::thread::Builder::new()
            .name("relive-engine".into())
            .spawn(move || match Worker::new(settings, rx, wake_rx, worker_events, worker_mode) {
                Ok(mut worker) => {
                    let _ = started_tx.send(Ok(()));
                    worker.run();
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                }
            })
            .map_err(|e| Error::Watch(format!("cannot start engine thread: {e}")))?;
        started_rx.await.map_err(|_| Error::Stopped)??;
        Ok(Arc::new(Engine {
            tx,
            wake,
            events,
            thread: Mutex::new(Some(thread)),
            tasks: Mutex::new(Vec::new()),
            runtime: tokio::runtime::Handle::current(),
            mode,
            root,
        }))
    }

    fn send(&self, command: Command) -> Result<(), Error> {
        self.tx.send(command).map_err(|_| Error::Stopped)?;
        // A full pipe already wakes the engine; any other error means it is
        // gone, which the next send reports.
        let _ = rustix::io::write(&self.wake, &[1]);
        Ok(())
    }

    pub(crate) async fn subscribe(&self, name: &str, factory: SinkFactory) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Subscribe { name: name.to_string(), factory, reply })?;
        rx.await
            .map_err(|_| Error::Stopped)?
            .map_err(|error| Error::Config { name: name.to_string(), error: Box::new(error) })
    }

    pub(crate) async fn publish(&self, name: &str, docs: Vec<Document>) -> Result<bool, Error> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Publish { name: name.to_string(), docs, reply })?;
        rx.await
            .map_err(|_| Error::Stopped)?
            .map_err(|error| Error::Config { name: name.to_string(), error: Box::new(error) })
    }

    /// Waits until every version the engine has applied or rejected so far
    /// is in the history on disk.
    pub(crate) async fn flush_history(&self) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::FlushHistory { reply })?;
        rx.await.map_err(|_| Error::Stopped)
    }

    pub(crate) fn add_handler(
        &self,
        name: String,
        pattern: Option<&str>,
        handler: Arc<dyn DynHandler>,
    ) -> Result<(), Error> {
        let glob = pattern
            .map(|p| {
                globset::GlobBuilder::new(p)
                    .literal_separator(true)
                    .build()
                    .map(|g| g.compile_matcher())
                    .map_err(|e| Error::Pattern { pattern: p.to_string(), message: e.to_string() })
            })
            .transpose()?;
        let (tx, rx) = mpsc::channel(HANDLER_QUEUE);
        let task = self.runtime.spawn(handler::run(name.clone(), handler, rx, self.events.clone()));
        self.tasks.lock().expect("tasks lock").push(task);
        self.send(Command::AddHandler { name, glob, tx })
    }

    pub(crate) fn events(&self) -> broadcast::Receiver<ChangeEvent> {
        self.events.subscribe()
    }

    pub(crate) fn mode(&self) -> WatcherMode {
        self.mode.lock().expect("mode lock").clone()
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn pause(&self) -> PauseGuard {
        let (paused_tx, paused_rx) = std::sync::mpsc::sync_channel(1);
        let (resume_tx, resume_rx) = std::sync::mpsc::sync_channel(1);
        if self.send(Command::Pause { paused: paused_tx, resume: resume_rx }).is_ok() {
            let _ = paused_rx.recv_timeout(Duration::from_secs(10));
        }
        PauseGuard { _resume: resume_tx }
    }

    /// Stops the thread and every handler task; waits for them.
    pub(crate) async fn shutdown(&self) {
        let _ = self.send(Command::Shutdown);
        let thread = self.thread.lock().expect("thread lock").take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        // The thread dropped the handlers' queues: each task finishes what
        // it has, then ends. A handler stuck forever is cut off.
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for mut task in tasks {
            if tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.send(Command::Shutdown);
    }
}

/// What the engine knows of a tracked file.
struct Known {
    hash: u64,
    meta: Meta,
    /// The bytes, kept for config files only (for merging, backups and
    /// error locations).
    content: Option<Arc<[u8]>>,
    parsed: Option<Result<Parsed, ConfigError>>,
    config: Option<ConfigFile>,
}

#[derive(Default)]
struct ConfigState {
    /// The last applied value (unredacted), `None` until one is.
    value: Option<Arc<Value>>,
    sinks: Vec<Box<dyn Sink>>,
    /// Fed by [`HotReloadManager::publish`](crate::HotReloadManager::publish),
    /// not by files.
    external: bool,
    /// For a published config: the documents of its live value, to locate
    /// errors of subscribers that come later.
    published: Option<Sources>,
}

struct HandlerSlot {
    name: String,
    glob: Option<GlobMatcher>,
    tx: mpsc::Sender<ChangeEvent>,
}

struct Worker {
    s: Settings,
    rx: std::sync::mpsc::Receiver<Command>,
    wake_rx: OwnedFd,
    events: broadcast::Sender<ChangeEvent>,
    mode: Arc<Mutex<WatcherMode>>,
    inotify: Option<Inotify>,
    /// When polling: the next scan, and what each file looked like at the
    /// last one.
    poll: Option<(Instant, HashMap<PathBuf, Meta>)>,
    coalescer: Coalescer,
    known: HashMap<PathBuf, Known>,
    /// Config name → its files.
    config_files: BTreeMap<String, BTreeSet<PathBuf>>,
    configs: HashMap<String, ConfigState>,
    handlers: Vec<HandlerSlot>,
    raw: Vec<Raw>,
    recheck: BTreeSet<PathBuf>,
    /// Reads that came back shorter than the file was, by content hash,
    /// waiting for a confirming re-read (see `Worker::suspicious`).
    suspects: HashMap<PathBuf, u64>,
    /// Configs whose commit the pre-commit fence deferred, with when their
    /// change was first seen: re-evaluated once their files settle, because
    /// their new content is already recorded as known and a re-read of an
    /// unchanged file would not mark them again.
    deferred: BTreeMap<String, Instant>,
    /// Whether the batch being processed read any file without a lease, so
    /// that commits need the second fence.
    unleased_batch: bool,
    /// The history's writer thread, when history is on.
    history: Option<Recorder>,
    stop: bool,
}

impl Worker {
    fn new(
        s: Settings,
        rx: std::sync::mpsc::Receiver<Command>,
        wake_rx: OwnedFd,
        events: broadcast::Sender<ChangeEvent>,
        mode: Arc<Mutex<WatcherMode>>,
    ) -> Result<Worker, Error> {
        if !s.root.is_dir() {
            return Err(Error::io(
                &s.root,
                io::Error::new(io::ErrorKind::NotFound, "workspace root is not a directory"),
            ));
        }
        let coalescer = Coalescer::new(coalesce_settings(&s, false));
        let history = match &s.history {
            Some(config) => Some(
                Recorder::start(s.root.clone(), s.env.clone(), config.clone(), s.redactor.clone())
                    .map_err(|e| Error::Watch(format!("cannot start the history thread: {e}")))?,
            ),
            None => None,
        };
        let mut worker = Worker {
            s,
            rx,
            wake_rx,
            events,
            mode,
            inotify: None,
            poll: None,
            coalescer,
            known: HashMap::new(),
            config_files: BTreeMap::new(),
            configs: HashMap::new(),
            handlers: Vec::new(),
            raw: Vec::new(),
            recheck: BTreeSet::new(),
            suspects: HashMap::new(),
            deferred: BTreeMap::new(),
            unleased_batch: false,
            history,
            stop: false,
        };
        worker.start_backend()?;
        worker.initial_scan();
        Ok(worker)
    }

    /// Chooses inotify or polling, and sets up watches before the first scan
    /// so that nothing written during the scan is missed.
    fn start_backend(&mut self) -> Result<(), Error> {
        match self.s.polling {
            Polling::Always => {
                self.enter_polling("polling was requested".to_string());
                return Ok(());
            }
            Polling::Auto => {
                if let Some(fs) = watch::eventless_filesystem(&self.s.root) {
                    self.enter_polling(format!(
                        "{} is on a {fs} filesystem, which reports no changes made by other machines",
                        self.s.root.display()
                    ));
                    return Ok(());
                }
            }
            Polling::Never => {}
        }
        let mut inotify = match Inotify::new(self.s.watch_limit) {
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
                if self.s.polling == Polling::Never {
                    return Err(Error::Watch(reason));
                }
                self.enter_polling(reason);
                return Ok(());
            }
            Err(e) => return Err(Error::Watch(format!("inotify: {e}"))),
        };
        match inotify.watch_tree(&self.s.root, &self.s.filter) {
            Ok(_) => {
                *self.mode.lock().expect("mode lock") = WatcherMode::Events { watches: inotify.watch_count() };
                metrics::gauge!("relive_watches").set(inotify.watch_count() as f64);
                self.inotify = Some(inotify);
                Ok(())
            }
            Err(AddError::Limit(reason)) if self.s.polling != Polling::Never => {
                self.enter_polling(reason);
                Ok(())
            }
            Err(AddError::Limit(reason)) => Err(Error::Watch(reason)),
            Err(AddError::Io(e)) => Err(Error::io(&self.s.root, e)),
        }
    }

    fn enter_polling(&mut self, reason: String) {
        tracing::warn!(
            root = %self.s.root.display(),
            %reason,
            interval_ms = self.s.poll_interval.as_millis() as u64,
            "relive falls back to polling: changes are seen at the next scan, and a file still being written may be read once it has been quiet for debounce_ms"
        );
        metrics::counter!("relive_polling_fallbacks_total").increment(1);
        self.inotify = None;
        let baseline = watch::scan(&self.s.root, &self.s.filter).into_iter().collect();
        self.poll = Some((Instant::now() + self.s.poll_interval, baseline));
        self.coalescer = Coalescer::new(coalesce_settings(&self.s, true));
        *self.mode.lock().expect("mode lock") = WatcherMode::Polling { reason, interval: self.s.poll_interval };
    }

    fn initial_scan(&mut self) {
        for (path, _) in watch::scan(&self.s.root, &self.s.filter) {
            // A file someone is writing right now is read as it is: its
            // writer's close will deliver the whole file (a known problem).
            let read = match read_file(&path, true) {
                Ok(ReadOutcome::Busy) => read_file(&path, false),
                other => other,
            };
            match read {
                Ok(ReadOutcome::Busy) => {}
                Ok(ReadOutcome::Done((bytes, meta), _)) => {
                    let mut ignored = Vec::new();
                    self.store(&path, bytes, meta, None, &mut ignored, &mut BTreeMap::new());
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot read file"),
            }
        }
        let names: Vec<String> = self.config_files.keys().cloned().collect();
        let now = Instant::now();
        for name in names {
            let mut out = Vec::new();
            self.reload(&name, now, &mut out);
        }
    }

    fn run(&mut self) {
        while !self.stop {
            let now = Instant::now();
            let deadline = match (self.coalescer.next_deadline(), self.poll.as_ref().map(|p| p.0)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            self.wait(deadline.map(|d| d.saturating_duration_since(now)));
            self.drain_wake();
            while let Ok(command) = self.rx.try_recv() {
                self.command(command);
                if self.stop {
                    return;
                }
            }
            self.read_events();
            if self.poll.as_ref().is_some_and(|p| p.0 <= Instant::now()) {
                self.poll_scan();
            }
            let ready = self.coalescer.take_ready(Instant::now());
            if !ready.is_empty() {
                self.process(ready);
            }
        }
    }

    /// Sleeps until an event, a command or `timeout`. With nothing pending
    /// and no polling, that is until an event or command: an idle engine
    /// uses no CPU.
    fn wait(&self, timeout: Option<Duration>) {
        let timespec = timeout.map(|t| {
            rustix::event::Timespec::try_from(t).unwrap_or(rustix::event::Timespec { tv_sec: i64::MAX / 2, tv_nsec: 0 })
        });
        let mut fds = Vec::with_capacity(2);
        fds.push(PollFd::new(&self.wake_rx, PollFlags::IN));
        if let Some(inotify) = &self.inotify {
            fds.push(PollFd::from_borrowed_fd(inotify.fd(), PollFlags::IN));
        }
        // EINTR and friends just mean "look again".
        let _ = rustix::event::poll(&mut fds, timespec.as_ref());
    }

    fn drain_wake(&self) {
        let mut buf = [0u8; 64];
        while matches!(rustix::io::read(self.wake_rx.as_fd(), &mut buf), Ok(n) if n > 0) {}
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Subscribe { name, factory, reply } => {
                let result = self.subscribe(&name, factory);
                let _ = reply.send(result);
            }
            Command::AddHandler { name, glob, tx } => self.handlers.push(HandlerSlot { name, glob, tx }),
            Command::Publish { name, docs, reply } => {
                let result = self.publish(&name, docs);
                let _ = reply.send(result);
            }
            Command::Pause { paused, resume } => {
                let _ = paused.send(());
                // Returns when the guard is dropped.
                let _ = resume.recv();
            }
            Command::FlushHistory { reply } => match &self.history {
                Some(history) => history.flush(reply),
                None => {
                    let _ = reply.send(());
                }
            },
            Command::Shutdown => self.stop = true,
        }
    }

    /// Reads every pending kernel event into the coalescer, without blocking.
    fn read_events(&mut self) {
        let Some(inotify) = &mut self.inotify else { return };
        self.raw.clear();
        if let Err(e) = inotify.read(&mut self.raw) {
            tracing::error!(error = %e, "reading inotify events failed");
            return;
        }
        if self.raw.is_empty() {
            return;
        }
        let now = Instant::now();
        let raws = std::mem::take(&mut self.raw);
        let mut moves: HashMap<u32, PathBuf> = HashMap::new();
        let mut overflow = false;
        for raw in &raws {
            let Raw::Path { path, kind, is_dir, cookie } = raw else {
                overflow = true;
                continue;
            };
            let tracked = self.s.filter.is_tracked(path);
            match kind {
                RawKind::Modify if tracked => self.coalescer.observe(path, Signal::Modified, now),
                RawKind::CloseWrite if tracked => self.coalescer.observe(path, Signal::Closed, now),
                RawKind::Attrib if tracked => self.coalescer.observe(path, Signal::Touched, now),
                RawKind::Create => self.arrived(path, *is_dir, None, false, now),
                RawKind::MovedTo => {
                    let from = moves.remove(cookie);
                    self.arrived(path, *is_dir, from, true, now);
                }
                RawKind::Delete => self.removed(path, *is_dir, now),
                RawKind::MovedFrom => {
                    moves.insert(*cookie, path.clone());
                    self.removed(path, *is_dir, now);
                }
                RawKind::SelfGone => {
                    if let Some(inotify) = &mut self.inotify {
                        inotify.forget_tree(path);
                    }
                }
                _ => {}
            }
        }
        self.raw = raws;
        if overflow {
            self.rescan("overflow");
        }
        self.flush_rechecks(now);
    }

    /// A new entry at `path`: created, or renamed into place.
    fn arrived(&mut self, path: &Path, is_dir: bool, from: Option<PathBuf>, moved: bool, now: Instant) {
        if let Some(parent) = path.parent() {
            // A directory or symlink appearing may re-point symlinks next to
            // it: Kubernetes swaps `..data` this way.
            let link = fs::symlink_metadata(path).map(|m| m.file_type().is_symlink()).unwrap_or(false);
            if is_dir || link || !self.s.filter.is_tracked(path) {
                self.recheck.insert(parent.to_path_buf());
            }
        }
        if is_dir {
            self.watch_new_dir(path, now);
            return;
        }
        if !self.s.filter.is_tracked(path) {
            return;
        }
        let signal = if moved {
            Signal::MovedIn { from: from.filter(|f| self.s.filter.is_tracked(f)) }
        } else {
            // A symlink or hard link is whole at once; a file created by
            // open(O_CREAT) is complete only when its writer closes it.
            let whole = fs::symlink_metadata(path).map(|m| m.file_type().is_symlink()).unwrap_or(false);
            Signal::Created { complete: whole }
        };
        self.coalescer.observe(path, signal, now);
    }

    fn removed(&mut self, path: &Path, is_dir: bool, now: Instant) {
        if let Some(parent) = path.parent() {
            if is_dir || !self.s.filter.is_tracked(path) {
                self.recheck.insert(parent.to_path_buf());
            }
        }
        if is_dir {
            if let Some(inotify) = &mut self.inotify {
                inotify.forget_tree(path);
            }
            let gone: Vec<PathBuf> = self.known.keys().filter(|p| p.starts_with(path)).cloned().collect();
            for p in gone {
                self.coalescer.observe(&p, Signal::Removed, now);
            }
        } else if self.known.contains_key(path) || self.s.filter.is_tracked(path) {
            self.coalescer.observe(path, Signal::Removed, now);
        }
    }

    fn watch_new_dir(&mut self, dir: &Path, now: Instant) {
        if let Some(inotify) = &mut self.inotify {
            match inotify.watch_tree(dir, &self.s.filter) {
                Ok(_) => {
                    let count = inotify.watch_count();
                    *self.mode.lock().expect("mode lock") = WatcherMode::Events { watches: count };
                    metrics::gauge!("relive_watches").set(count as f64);
                }
                Err(AddError::Limit(reason)) => {
                    if self.s.polling == Polling::Never {
                        tracing::error!(%reason, dir = %dir.display(), "cannot watch new directory; its changes will be missed");
                    } else {
                        self.enter_polling(reason);
                        return;
                    }
                }
                Err(AddError::Io(_)) => {}
            }
        }
        // Files may have been written into it before the watch existed.
        let sub = PathFilter::clone(&self.s.filter);
        for (file, _) in watch::scan(dir, &sub) {
            self.coalescer.observe(&file, Signal::Created { complete: true }, now);
        }
    }

    /// Re-reads the tracked symlinks in directories where a directory or
    /// symlink changed: their targets may have moved.
    fn flush_rechecks(&mut self, now: Instant) {
        for dir in std::mem::take(&mut self.recheck) {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_symlink()) && self.s.filter.is_tracked(&path) {
                    self.coalescer.observe(&path, Signal::Touched, now);
                }
            }
        }
    }

    /// After lost events: compare the whole tree with what we know.
    fn rescan(&mut self, reason: &'static str) {
        tracing::warn!(root = %self.s.root.display(), reason, "rescanning the workspace");
        metrics::counter!("relive_rescans_total", "reason" => reason).increment(1);
        let now = Instant::now();
        if let Some(inotify) = &mut self.inotify {
            if let Err(AddError::Limit(reason)) = inotify.watch_tree(&self.s.root, &self.s.filter) {
                self.enter_polling(reason);
            }
        }
        let found = watch::scan(&self.s.root, &self.s.filter);
        let present: BTreeSet<&PathBuf> = found.iter().map(|(p, _)| p).collect();
        let gone: Vec<PathBuf> = self.known.keys().filter(|p| !present.contains(p)).cloned().collect();
        for path in gone {
            self.coalescer.observe(&path, Signal::Removed, now);
        }
        for (path, meta) in &found {
            if self.known.get(path).is_none_or(|k| k.meta != *meta) {
                self.coalescer.observe(path, Signal::Touched, now);
            }
        }
    }

    fn poll_scan(&mut self) {
        let now = Instant::now();
        let Some((next, seen)) = &mut self.poll else { return };
        *next = now + self.s.poll_interval;
        let found: HashMap<PathBuf, Meta> = watch::scan(&self.s.root, &self.s.filter).into_iter().collect();
        let mut signals = Vec::new();
        for (path, meta) in &found {
            match seen.get(path) {
                Some(old) if old == meta => {}
                Some(_) => signals.push((path.clone(), Signal::Modified)),
                None => signals.push((path.clone(), Signal::Created { complete: false })),
            }
        }
        for path in seen.keys() {
            if !found.contains_key(path) {
                signals.push((path.clone(), Signal::Removed));
            }
        }
        *seen = found;
        for (path, signal) in signals {
            self.coalescer.observe(&path, signal, now);
        }
    }

    /// Drains the kernel queue after reading files. Events are queued by the
    /// kernel inside the writer's system call, so a write that overlapped a
    /// read is in the queue by now; its path then has a pending entry and
    /// the read is discarded.
    fn fence(&mut self) {
        if self.inotify.is_some() {
            self.read_events();
        }
    }

    fn process(&mut self, ready: Vec<Ready>) {
        let now = Instant::now();
        let mut reads: Vec<(Ready, io::Result<FileRead>, bool)> = Vec::with_capacity(ready.len());
        for r in ready {
            let result = match read_file(&r.path, true) {
                Ok(ReadOutcome::Done(read, leased)) => (Ok(read), leased),
                // A writer has it open. Its close wakes us; the backoff only
                // matters for a writer that keeps the file open, which is
                // read without a lease once the backoff is spent.
                Ok(ReadOutcome::Busy) if self.coalescer.retry(&r.path, r.attempt, r.first_seen, now) => continue,
                Ok(ReadOutcome::Busy) => match read_file(&r.path, false) {
                    Ok(ReadOutcome::Done(read, _)) => (Ok(read), false),
                    Ok(ReadOutcome::Busy) => continue,
                    Err(e) => (Err(e), false),
                },
                Err(e) => (Err(e), false),
            };
            reads.push((r, result.0, result.1));
        }
        self.fence();
        self.unleased_batch = reads.iter().any(|(_, result, leased)| result.is_ok() && !leased);
        let now = Instant::now();
        let mut file_events = Vec::new();
        let mut dirty: BTreeMap<String, Instant> = BTreeMap::new();
        for (ready, result, leased) in reads {
            if self.coalescer.is_pending(&ready.path) {
                continue;
            }
            match result {
                Ok((bytes, _)) if !leased && self.suspicious(&ready, &bytes, now) => {}
                Ok((bytes, meta)) => {
                    self.store(&ready.path, bytes, meta, Some(&ready), &mut file_events, &mut dirty);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if let Some(old) = self.known.remove(&ready.path) {
                        if let Some(cf) = &old.config {
                            self.unindex(&cf.name, &ready.path);
                            dirty.entry(cf.name.clone()).or_insert(ready.first_seen);
                        }
                        self.backup(&ready.path, &old);
                        file_events.push(ChangeEvent::FileChanged {
                            path: ready.path.clone(),
                            change_type: ChangeType::Deleted,
                        });
                    }
                }
                Err(e) => {
                    if !self.coalescer.retry(&ready.path, ready.attempt, ready.first_seen, now) {
                        tracing::warn!(path = %ready.path.display(), error = %e, attempts = ready.attempt + 1, "giving up reading file");
                        file_events.push(ChangeEvent::ReadFailed { path: ready.path.clone(), error: e.to_string() });
                        if let Some(cf) = paths::config_file(&self.s.config_dir, &ready.path) {
                            let error = ConfigError::new(ConfigErrorKind::Io, format!("cannot read file: {e}"))
                                .with_file(&ready.path);
                            file_events.push(self.rejected(&cf.name, error));
                        }
                    }
                }
            }
        }
        let settled: Vec<String> = self
            .deferred
            .keys()
            .filter(|name| {
                let files = self.config_files.get(*name).into_iter().flatten();
                !files.into_iter().any(|f| self.coalescer.is_pending(f))
            })
            .cloned()
            .collect();
        for name in settled {
            if let Some(first_seen) = self.deferred.remove(&name) {
                dirty.entry(name).or_insert(first_seen);
            }
        }
        let mut config_events = Vec::new();
        for (name, first_seen) in dirty {
            self.reload(&name, first_seen, &mut config_events);
        }
        self.unleased_batch = false;
        for event in file_events.into_iter().chain(config_events) {
            self.emit(event);
        }
    }

    /// True if the read must be confirmed before it is believed; a re-read
    /// is then scheduled.
    ///
    /// `open(O_TRUNC)` empties a file before the kernel queues the event that
    /// says so (ext4 frees the blocks in between), so a read can see a file
    /// that a writer has just truncated and the fence find nothing yet. Such
    /// a read is always shorter than the content before it. A shorter read
    /// is therefore re-read after a short backoff: if the writer was at
    /// work, its events have arrived by then and the path waits for its
    /// close; if the same bytes come back and nothing happened to the path
    /// meanwhile, they are the real content.
    fn suspicious(&mut self, ready: &Ready, bytes: &[u8], now: Instant) -> bool {
        let shorter = self.known.get(&ready.path).is_some_and(|k| (bytes.len() as u64) < k.meta.len());
        if !shorter || self.inotify.is_none() {
            self.suspects.remove(&ready.path);
            return false;
        }
        let hash = xxhash_rust::xxh3::xxh3_64(bytes);
        // A confirming read is a retry that no signal interrupted (any
        // signal for the path resets its attempt to 0): the writer, if
        // there was one, has been silent since. Every truncation reads as
        // the same empty bytes, so an equal hash alone proves nothing.
        if ready.attempt > 0 && self.suspects.get(&ready.path) == Some(&hash) {
            self.suspects.remove(&ready.path);
            return false;
        }
        self.suspects.insert(ready.path.clone(), hash);
        // With the backoff exhausted the read is believed: a file that keeps
        // shrinking is being written that way.
        self.coalescer.retry(&ready.path, ready.attempt, ready.first_seen, now)
    }

    /// Records a file's new content; reports what kind of change it was.
    fn store(
        &mut self,
        path: &Path,
        bytes: Vec<u8>,
        meta: Meta,
        ready: Option<&Ready>,
        events: &mut Vec<ChangeEvent>,
        dirty: &mut BTreeMap<String, Instant>,
    ) {
        let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
        let first_seen = ready.map_or_else(Instant::now, |r| r.first_seen);
        let change = match self.known.get_mut(path) {
            Some(known) if known.hash == hash => {
                // Same bytes (a no-op save, a touch): nothing to deliver.
                known.meta = meta;
                return;
            }
            Some(_) => ChangeType::Modified,
            None => match ready.and_then(|r| r.moved_from.clone()) {
                Some(from) if self.known.contains_key(&from) && fs::symlink_metadata(&from).is_err() => {
                    if let Some(old) = self.known.remove(&from) {
                        if let Some(cf) = old.config {
                            self.unindex(&cf.name, &from);
                            dirty.entry(cf.name).or_insert(first_seen);
                        }
                    }
                    ChangeType::Renamed { from }
                }
                _ => ChangeType::Created,
            },
        };
        let config = paths::config_file(&self.s.config_dir, path);
        if change == ChangeType::Modified {
            if let Some(old) = self.known.get(path) {
                self.backup(path, old);
            }
        }
        if let Some(cf) = &config {
            self.config_files.entry(cf.name.clone()).or_default().insert(path.to_path_buf());
            dirty.entry(cf.name.clone()).or_insert(first_seen);
        }
        let content: Option<Arc<[u8]>> = config.as_ref().map(|_| bytes.into());
        self.known.insert(path.to_path_buf(), Known { hash, meta, content, parsed: None, config });
        if ready.is_some() {
            events.push(ChangeEvent::FileChanged { path: path.to_path_buf(), change_type: change });
        }
    }

    fn unindex(&mut self, name: &str, path: &Path) {
        if let Some(files) = self.config_files.get_mut(name) {
            files.remove(path);
            if files.is_empty() {
                self.config_files.remove(name);
            }
        }
    }

    /// `backup_on_change`: keeps the previous content of a config file as
    /// `data/backups/configs/<timestamp>_<file name>`.
    fn backup(&self, path: &Path, old: &Known) {
        let (true, Some(content), Some(name)) = (self.s.backup, &old.content, path.file_name()) else { return };
        let dir = self.s.data_dir.join("backups").join("configs");
        let stamp: String = humantime::format_rfc3339_micros(SystemTime::now())
            .to_string()
            .chars()
            .filter_map(|c| match c {
                '0'..='9' => Some(c),
                'T' | '.' => Some('_'),
                _ => None,
            })
            .collect();
        let target = dir.join(format!("{stamp}_{}", name.to_string_lossy()));
        if let Err(e) = fs::create_dir_all(&dir).and_then(|()| fs::write(&target, content)) {
            tracing::warn!(path = %target.display(), error = %e, "cannot write config backup");
        }
    }

    /// The documents of config `name` from files: the base, then the
    /// overlay for the current environment.
    fn sources(&mut self, name: &str) -> Result<Sources, ConfigError> {
        let files = self.config_files.get(name).into_iter().flatten().filter_map(|path| {
            let cf = self.known.get(path)?.config.as_ref()?;
            Some((path.as_path(), cf))
        });
        let chosen = paths::select(name, self.s.env.as_deref(), &self.s.config_dir, files)?;
        let mut docs = Vec::new();
        for path in chosen {
            let known = self.known.get_mut(&path).expect("indexed files are known");
            let parsed = known.parsed.get_or_insert_with(|| {
                let cf = known.config.as_ref().expect("config file");
                let content = known.content.clone().unwrap_or_else(|| Arc::from(&[][..]));
                Parsed::parse(Document::new(&path, cf.format, content))
            });
            docs.push(parsed.clone()?);
        }
        Ok(Sources { docs })
    }

    /// The documents of config `name` as they are, parsed or not: for the
    /// history of a version that failed to load.
    fn documents(&self, name: &str) -> Vec<Document> {
        let mut docs: Vec<(bool, Document)> = Vec::new();
        for path in self.config_files.get(name).into_iter().flatten() {
            let Some(known) = self.known.get(path) else { continue };
            let Some(cf) = &known.config else { continue };
            let overlay = match &cf.env {
                None => false,
                Some(env) if Some(env) == self.s.env.as_ref() => true,
                Some(_) => continue,
            };
            let content = known.content.clone().unwrap_or_else(|| Arc::from(&[][..]));
            docs.push((overlay, Document::new(path, cf.format, content)));
        }
        docs.sort_by_key(|(overlay, _)| *overlay);
        docs.into_iter().map(|(_, d)| d).collect()
    }

    fn reload(&mut self, name: &str, first_seen: Instant, events: &mut Vec<ChangeEvent>) {
        if self.configs.get(name).is_some_and(|c| c.external) {
            return;
        }
        match self.sources(name) {
            Ok(sources) => {
                let merged = sources.merge();
                self.apply(name, merged, &sources, first_seen, events);
            }
            Err(error) => {
                let had_value = self.configs.get(name).is_some_and(|c| c.value.is_some());
                // A config that never existed is not an error; one whose
                // files went away keeps its last good value, and says so.
                if error.kind() != ConfigErrorKind::Missing || had_value {
                    if let Some(history) = &self.history {
                        history.record(name, self.documents(name), None, Some(error.clone()), false);
                    }
                    events.push(self.rejected(name, error));
                }
            }
        }
    }

    /// Validates `merged` with every subscriber, then makes it live for all
    /// of them, or for none.
    fn apply(
        &mut self,
        name: &str,
        merged: Value,
        sources: &Sources,
        first_seen: Instant,
        events: &mut Vec<ChangeEvent>,
    ) -> bool {
        let state = self.configs.entry(name.to_string()).or_default();
        if state.value.as_deref() == Some(&merged) {
            // Same data (whitespace, comments, key order): nothing to do. The
            // history is told all the same: a rollback to the live value is
            // done when its content comes back.
            if let Some(history) = &self.history {
                let docs = sources.docs.iter().map(|p| p.doc.clone()).collect();
                history.record(name, docs, Some(Arc::new(merged)), None, state.external);
            }
            return true;
        }
        state.sinks.retain(|s| !s.is_closed());
        let published = state.external;
        let mut commits = Vec::with_capacity(state.sinks.len());
        for sink in &state.sinks {
            match sink.prepare(&merged, sources, self.s.validate) {
                Ok(commit) => commits.push(commit),
                Err(error) => {
                    if let Some(history) = &self.history {
                        let docs = sources.docs.iter().map(|p| p.doc.clone()).collect();
                        history.record(name, docs, Some(Arc::new(merged)), Some(error.clone()), published);
                    }
                    events.push(self.rejected(name, error));
                    return false;
                }
            }
        }
        // Parsing and validating took time: look at the kernel queue once
        // more, so that a write which raced with the read (a multi-page
        // write caught mid-copy, a truncation queued late) defers the value
        // instead of delivering it. The path is pending again and will be
        // re-read when its writer is done.
        // Reads under a lease cannot be torn, so only a batch with a read
        // that had none needs this.
        if self.inotify.is_some() && self.unleased_batch {
            self.fence();
            if sources.docs.iter().any(|d| self.coalescer.is_pending(d.doc.origin())) {
                self.deferred.entry(name.to_string()).or_insert(first_seen);
                return false;
            }
        }
        for commit in commits {
            commit();
        }
        let state = self.configs.get_mut(name).expect("state exists");
        let merged = Arc::new(merged);
        let old = state.value.replace(Arc::clone(&merged));
        if let Some(history) = &self.history {
            // Off the reload path: the writer thread hashes, diffs and syncs.
            let docs = sources.docs.iter().map(|p| p.doc.clone()).collect();
            history.record(name, docs, Some(Arc::clone(&merged)), None, published);
        }
        let duration = first_seen.elapsed();
        metrics::counter!("relive_reloads_total", "config" => name.to_string(), "result" => "applied").increment(1);
        metrics::histogram!("relive_reload_duration_seconds", "config" => name.to_string())
            .record(duration.as_secs_f64());
        tracing::info!(config = name, duration_us = duration.as_micros() as u64, "config applied");
        if self.has_listeners() {
            let redact = |v: Option<&Arc<Value>>| Arc::new(v.map_or(Value::Null, |v| self.s.redactor.redact(v)));
            events.push(ChangeEvent::ConfigChanged {
                config_name: name.to_string(),
                old_value: redact(old.as_ref()),
                new_value: redact(Some(&merged)),
                files: sources.files(),
            });
            events.push(ChangeEvent::ReloadCompleted { config_name: name.to_string(), duration });
        }
        true
    }

    fn rejected(&self, name: &str, error: ConfigError) -> ChangeEvent {
        metrics::counter!("relive_reloads_total", "config" => name.to_string(), "result" => "rejected").increment(1);
        tracing::warn!(config = name, error = %error, "config rejected; keeping the last good value");
        ChangeEvent::ValidationFailed { config_name: name.to_string(), error: Arc::new(error) }
    }

    fn has_listeners(&self) -> bool {
        self.events.receiver_count() > 0 || !self.handlers.is_empty()
    }

    fn subscribe(&mut self, name: &str, factory: SinkFactory) -> Result<(), ConfigError> {
        let external = self.configs.get(name).is_some_and(|c| c.external);
        let sources = if external {
            Ok(self.configs.get(name).and_then(|c| c.published.clone()).unwrap_or_default())
        } else {
            self.sources(name)
        };
        let applied = self.configs.get(name).and_then(|c| c.value.clone());
        // The last applied value wins over what is on disk now: readers keep
        // the last good value while the files are broken.
        let fresh = match (&applied, &sources) {
            (None, Ok(sources)) => Some(sources.merge()),
            _ => None,
        };
        let empty = Sources::default();
        let loaded = match (applied.as_deref().or(fresh.as_ref()), &sources) {
            (Some(value), Ok(sources)) => Ok((value, sources)),
            (Some(value), Err(_)) => Ok((value, &empty)),
            (None, Err(e)) => Err(e.clone()),
            (None, Ok(_)) => unreachable!("a value is merged whenever sources load"),
        };
        let (sink, warning) = factory(loaded, self.s.validate)?;
        let state = self.configs.entry(name.to_string()).or_default();
        if state.value.is_none() && state.sinks.is_empty() && warning.is_none() {
            state.value = fresh.map(Arc::new);
        }
        state.sinks.push(sink);
        if let Some(error) = warning {
            let event = self.rejected(name, error);
            self.emit(event);
        }
        Ok(())
    }

    fn publish(&mut self, name: &str, docs: Vec<Document>) -> Result<bool, ConfigError> {
        let raw = self.history.as_ref().map(|_| docs.clone());
        let docs = docs.into_iter().map(Parsed::parse).collect::<Result<Vec<_>, _>>();
        let mut events = Vec::new();
        let result = match docs {
            Ok(docs) => {
                let sources = Sources { docs };
                let state = self.configs.entry(name.to_string()).or_default();
                state.external = true;
                let live_before = state.value.clone();
                let before = events.len();
                let accepted = self.apply(name, sources.merge(), &sources, Instant::now(), &mut events);
                match events.get(before) {
                    Some(ChangeEvent::ValidationFailed { error, .. }) if !accepted => Err(ConfigError::clone(error)),
                    // `apply` accepts an unchanged value without swapping
                    // it; tell the caller whether the live value changed.
                    _ => {
                        let state = self.configs.get_mut(name).expect("state exists");
                        state.published = Some(sources.clone());
                        let live_after = state.value.clone();
                        Ok(match (live_before, live_after) {
                            (Some(a), Some(b)) => !Arc::ptr_eq(&a, &b),
                            (None, Some(_)) => true,
                            _ => false,
                        })
                    }
                }
            }
            Err(error) => {
                if let (Some(history), Some(raw)) = (&self.history, raw) {
                    history.record(name, raw, None, Some(error.clone()), true);
                }
                events.push(self.rejected(name, error.clone()));
                Err(error)
            }
        };
        for event in events {
            self.emit(event);
        }
        result
    }

    fn emit(&mut self, event: ChangeEvent) {
        metrics::counter!("relive_events_total", "kind" => event.kind()).increment(1);
        for slot in &self.handlers {
            if !self.routes(slot, &event) {
                continue;
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = slot.tx.try_send(event.clone()) {
                metrics::counter!("relive_handler_events_dropped_total").increment(1);
                tracing::warn!(handler = %slot.name, "handler queue full; event dropped");
            }
        }
        let _ = self.events.send(event);
    }

    /// Whether a handler's glob selects `event`: a file event by its path, a
    /// config event by any of the config's files.
    fn routes(&self, slot: &HandlerSlot, event: &ChangeEvent) -> bool {
        if matches!(event, ChangeEvent::HandlerFailed { .. }) {
            return false;
        }
        let Some(glob) = &slot.glob else { return true };
        let matches = |p: &Path| p.strip_prefix(&self.s.root).is_ok_and(|rel| glob.is_match(rel));
        match event {
            ChangeEvent::ConfigChanged { files, .. } => files.iter().any(|f| matches(f)),
            _ => match (event.path(), event.config_name()) {
                (Some(path), _) => matches(path),
                (None, Some(name)) => self.config_files.get(name).is_some_and(|fs| fs.iter().any(|f| matches(f))),
                _ => false,
            },
        }
    }
}

fn coalesce_settings(s: &Settings, polling: bool) -> CoalesceSettings {
    CoalesceSettings {
        write_timeout: s.write_timeout,
        delete_grace: DELETE_GRACE,
        quiet: polling.then_some(s.quiet),
        backoff: Backoff::default(),
        min_interval: MIN_INTERVAL,
    }
}

/// A file's bytes and its metadata at the time of the read.
type FileRead = (Vec<u8>, Meta);

/// What a read found.
enum ReadOutcome {
    /// The content, and whether it was read under a lease (and so is
    /// certainly whole).
    Done(FileRead, bool),
    /// A writer has the file open: its close will say when to read.
    Busy,
}

/// Reads a whole file (following symlinks) and its metadata, under a read
/// lease when `lease` is set and leases work here (see `sys.rs`).
fn read_file(path: &Path, lease: bool) -> io::Result<ReadOutcome> {
    let file = fs::File::open(path)?;
    let held = match lease.then(|| sys::read_lease(&file)) {
        Some(sys::Lease::Busy) => return Ok(ReadOutcome::Busy),
        Some(sys::Lease::Held(held)) => Some(held),
        Some(sys::Lease::Unsupported) | None => None,
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "not a regular file"));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize + 1);
    (&file).read_to_end(&mut bytes)?;
    let leased = held.is_some();
    drop(held);
    Ok(ReadOutcome::Done((bytes, Meta::of(&meta)), leased))
}
