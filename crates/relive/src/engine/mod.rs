//! The engine: one thread per workspace that watches, coalesces, reads,
//! parses, validates, swaps and notifies.
//!
//! ```text
//! intake ──signals──▶ Coalescer ──ready──▶ read (lease) ─▶ fence ─▶ store (hash)
//!        ─▶ reload: sources ─▶ merge ─▶ prepare (all sinks) ─▶ fence ─▶ commit ─▶ notify, record
//! ```
//!
//! Each stage is a room of its own and returns what happened:
//! - `intake.rs`: the backend (inotify or polling); turns kernel events and
//!   scans into [`Seen`](intake::Seen) values for the coalescer.
//! - `read.rs`: reads ready files under a lease ([`read::Read`]), keeps
//!   what is known of each file, and stores new content as a
//!   [`read::Stored`].
//! - `apply.rs`: one config's subscribers; prepares a value with all of
//!   them and commits it to all of them.
//! - `step.rs`: one change set: every config of a step and the groups
//!   they are in, prepared, then committed together or refused.
//! - `notify.rs`: events out, to the broadcast channel and handlers.
//! - `sink.rs`: the prepare → commit contract that subscribers implement.
//!
//! This module holds the handle ([`Engine`]), the commands, and the loop
//! that runs the stages in order. Everything here runs on the engine's own
//! thread and owns its state; the rest of the crate talks to it through
//! [`Command`]s. Nothing on this thread awaits or takes a lock that user
//! code holds, and user code (handlers, validators aside) never runs here.

mod apply;
mod intake;
mod notify;
mod portable;
mod read;
mod refs;
pub(crate) mod sink;
mod step;
mod wake;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use globset::GlobMatcher;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::changeset::ChangeSetId;
use crate::coalesce::{Backoff, Coalescer, Ready, Signal, Timing};
use crate::config::EngineSettings;
use crate::document::{Document, Parsed, SecretPaths, Sources};
use crate::error::{ConfigError, ConfigErrorKind, Error};
use crate::event::{ChangeEvent, ChangeType};
use crate::handler::{self, DynHandler, HANDLER_QUEUE};
use crate::history::Recorder;
use crate::paths;

use apply::{ConfigState, GroupState, Prepared};
use intake::{Intake, Seen};
use notify::Notifier;
pub(crate) use read::open_nonblocking;
use read::{Files, Stored};
use sink::{GroupSinkFactory, MemberError, SinkFactory};
use wake::{Waker, Wakeup};

/// How long a deleted file waits before it is reported, so that a
/// delete-then-write (vim's backup-and-rename) is one change.
const DELETE_GRACE: Duration = Duration::from_millis(50);

/// The shortest time between two reads of one file in a burst of writes:
/// the first change is read at once, the ones after it at most this often.
/// A burst's last value thus arrives within this time of the last write.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// How long a file rejected for going over the [`Limits`](crate::Limits)
/// waits before it is read again while it keeps changing: rejecting a
/// hostile file costs a millisecond or two of the one engine thread, and a
/// writer that rewrites it without pause must not take that thread from
/// the other configs.
const HOSTILE_COOLDOWN: Duration = Duration::from_millis(100);

/// How many times a step reads the queue again after a free look at the
/// hold, while it keeps finding events (see `Worker::run`).
const RELOOK: usize = 16;

/// How often a held engine looks at the hold file: a hold released by
/// another process (whose release cannot wake this thread) is noticed
/// within this time.
const HOLD_POLL: Duration = Duration::from_millis(5);

/// How the engine learns about changes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatcherMode {
    /// Kernel events (inotify, read directly; Linux): changes are seen as
    /// they happen, and a file is read when its writer closes it.
    Events {
        /// How many directories are watched.
        watches: usize,
    },
    /// The portable backend ([`Backend::Portable`](crate::Backend::Portable)):
    /// the platform's own events through the `notify` crate; a file is read
    /// once it has been free of events for a few milliseconds.
    Portable {
        /// The platform interface: `FSEvents`, `ReadDirectoryChangesW`,
        /// `kqueue` or `inotify`.
        api: &'static str,
        /// How many directories are watched recursively (the root, watched
        /// on its own, aside).
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

/// What a publish returns: the change set and which configs changed, or
/// the config that was refused and why.
type PublishReply = Result<(Option<ChangeSetId>, Vec<bool>), MemberError>;

/// A handler's identity, to remove it later.
pub(crate) type HandlerKey = u64;

enum Command {
    Subscribe { name: String, factory: SinkFactory, reply: oneshot::Sender<Result<(), ConfigError>> },
    AddHandler { key: HandlerKey, name: String, glob: Option<GlobMatcher>, tx: mpsc::Sender<ChangeEvent> },
    RemoveHandler { key: HandlerKey },
    SubscribeGroup { members: Vec<String>, factory: GroupSinkFactory, reply: oneshot::Sender<Result<(), MemberError>> },
    Publish { set: Vec<(String, Vec<Document>)>, reply: oneshot::Sender<PublishReply> },
    Pause { paused: std::sync::mpsc::SyncSender<()>, resume: std::sync::mpsc::Receiver<()> },
    FlushHistory { reply: oneshot::Sender<()> },
    Shutdown,
}

/// The handle side of the engine, shared by the workspace and managers.
pub(crate) struct Engine {
    tx: std::sync::mpsc::Sender<Command>,
    wake: Waker,
    events: broadcast::Sender<ChangeEvent>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    tasks: Mutex<HashMap<HandlerKey, tokio::task::JoinHandle<()>>>,
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
    pub(crate) async fn start(settings: EngineSettings) -> Result<Arc<Engine>, Error> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (wake, wake_rx) = wake::pair().map_err(|e| Error::Watch(format!("cannot create wake pipe: {e}")))?;
        let intake_wake = wake.clone();
        let (events, _) = broadcast::channel(1024);
        let mode = Arc::new(Mutex::new(WatcherMode::Events { watches: 0 }));
        let (started_tx, started_rx) = oneshot::channel();
        let root = settings.root.clone();
        let worker_events = events.clone();
        let worker_mode = Arc::clone(&mode);
        let thread = std::thread::Builder::new()
            .name("relive-engine".into())
            .spawn(move || match Worker::new(settings, rx, wake_rx, intake_wake, worker_events, worker_mode) {
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
            tasks: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
            mode,
            root,
        }))
    }

    fn send(&self, command: Command) -> Result<(), Error> {
        self.tx.send(command).map_err(|_| Error::Stopped)?;
        self.wake.wake();
        Ok(())
    }

    pub(crate) async fn subscribe(&self, name: &str, factory: SinkFactory) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Subscribe { name: name.to_string(), factory, reply })?;
        rx.await
            .map_err(|_| Error::Stopped)?
            .map_err(|error| Error::Config { name: name.to_string(), error: Box::new(error) })
    }

    pub(crate) async fn subscribe_group(&self, members: Vec<String>, factory: GroupSinkFactory) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::SubscribeGroup { members, factory, reply })?;
        rx.await.map_err(|_| Error::Stopped)?.map_err(|e| Error::Config { name: e.member, error: e.error })
    }

    /// Publishes configs as one change set: the set's id if anything
    /// changed, and whether each config's live value did.
    pub(crate) async fn publish_set(
        &self,
        set: Vec<(String, Vec<Document>)>,
    ) -> Result<(Option<ChangeSetId>, Vec<bool>), Error> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Publish { set, reply })?;
        rx.await.map_err(|_| Error::Stopped)?.map_err(|e| Error::Config { name: e.member, error: e.error })
    }

    /// Waits until every version the engine has applied or rejected so far
    /// is in the history on disk.
    pub(crate) async fn flush_history(&self) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::FlushHistory { reply })?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Starts a handler's task and routes events to it from now on.
    pub(crate) fn add_handler(
        &self,
        key: HandlerKey,
        name: String,
        pattern: Option<&str>,
        handler: Arc<dyn DynHandler>,
    ) -> Result<(), Error> {
        let glob = pattern.map(compile_glob).transpose()?;
        let (tx, rx) = mpsc::channel(HANDLER_QUEUE);
        let task = self.runtime.spawn(handler::run(name.clone(), handler, rx, self.events.clone()));
        self.tasks.lock().expect("tasks lock").insert(key, task);
        self.send(Command::AddHandler { key, name, glob, tx })
    }

    /// Stops routing events to a handler. Its task finishes the events it
    /// has, then ends. Returns false if no such handler is registered.
    pub(crate) fn remove_handler(&self, key: HandlerKey) -> bool {
        let known = self.tasks.lock().expect("tasks lock").remove(&key).is_some();
        // Dropping the queue's sender (on the engine thread) ends the task.
        known && self.send(Command::RemoveHandler { key }).is_ok()
    }

    /// Wakes the engine thread, to look at the hold again.
    pub(crate) fn nudge(&self) {
        self.wake.wake();
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
        for (_, mut task) in tasks {
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

/// A handler glob: relative to the root, `*` not crossing `/`.
pub(crate) fn compile_glob(pattern: &str) -> Result<GlobMatcher, Error> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| Error::Pattern { pattern: pattern.to_string(), message: e.to_string() })
}

/// The engine thread's state: one field per stage, and the loop that runs
/// them in order.
struct Worker {
    s: EngineSettings,
    rx: std::sync::mpsc::Receiver<Command>,
    wake_rx: Wakeup,
    intake: Intake,
    coalescer: Coalescer,
    files: Files,
    configs: HashMap<String, ConfigState>,
    /// Groups of configs validated and applied together.
    groups: Vec<GroupState>,
    /// Configs whose commit the pre-commit fence deferred, with when their
    /// change was first seen: re-evaluated once their files settle, because
    /// their new content is already recorded as known and a re-read of an
    /// unchanged file would not mark them again.
    deferred: BTreeMap<String, Instant>,
    /// Configs made of several files (a base and its overlay) that changed
    /// and wait for the rest of their change: name → (first seen, due).
    /// A deploy, `git checkout` or a rollback rewrites both files a moment
    /// apart; applying the first alone would deliver (or reject) a mix
    /// nobody wrote.
    settling: BTreeMap<String, (Instant, Instant)>,
    /// Files rejected for going over the limits, and until when a change
    /// to them waits (see [`HOSTILE_COOLDOWN`]).
    cooldown: HashMap<PathBuf, Instant>,
    /// Ready paths waiting out their cooldown: the newest readiness of each.
    held: BTreeMap<PathBuf, Ready>,
    /// The workspace's hold (`data/hold`), and what waits for its release.
    hold: HoldWatch,
    notifier: Notifier,
    /// Files that secret references read, and the configs reading them.
    references: refs::References,
    /// The history's writer thread, when history is on.
    history: Option<Recorder>,
    stop: bool,
}

/// The hold as the engine sees it.
struct HoldWatch {
    path: PathBuf,
    timeout: Duration,
    /// A hold was in force at the last look.
    holding: bool,
    /// Ready paths parked while held, read on release.
    parked: BTreeMap<PathBuf, Ready>,
    /// When the hold was seen gone, while what was written under it is
    /// still settling in the coalescer.
    released: Option<Instant>,
    /// The stale hold last warned about, to warn once per hold.
    warned: Option<String>,
    /// The last release marker seen ([`crate::hold::release_stamp`]).
    last_release: Option<(u64, SystemTime, u64)>,
}

impl HoldWatch {
    /// Whether a hold is in force now. A stale one is not, with a warning
    /// (once).
    fn look(&mut self) -> bool {
        match crate::hold::state(&self.path, self.timeout, SystemTime::now()) {
            crate::hold::HoldState::Free => false,
            crate::hold::HoldState::Held { .. } => true,
            crate::hold::HoldState::Stale { content, reason } => {
                if self.warned.as_deref() != Some(&content) {
                    tracing::warn!(path = %self.path.display(), reason, "ignoring a stale hold");
                    self.warned = Some(content);
                }
                false
            }
        }
    }

    /// Whether a hold was released since the last call, seen or not.
    fn came_and_went(&mut self) -> bool {
        let stamp = self.path.parent().and_then(crate::hold::release_stamp);
        stamp.is_some() && std::mem::replace(&mut self.last_release, stamp) != stamp
    }
}

/// Whether a step may wait for the rest of a change set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Configs of several files wait out the window (`settling`).
    Window,
    /// A hold was released: everything pending is one change set, now.
    Release,
}

/// What the reads of one batch had in common, for the commits that follow.
#[derive(Debug, Clone, Copy)]
struct Batch {
    /// Some file was read without a lease, so commits need the second
    /// fence (see [`Worker::reload`]).
    unleased: bool,
    /// The change set that what this batch applies belongs to.
    change_set: ChangeSetId,
}

impl Batch {
    /// A batch of its own change set.
    fn new(unleased: bool) -> Batch {
        Batch { unleased, change_set: ChangeSetId::next() }
    }
}

/// The event that closes a change set, if it applied anything.
fn set_applied(batch: Batch, configs: Vec<String>) -> Option<ChangeEvent> {
    (!configs.is_empty()).then(|| ChangeEvent::ChangeSetApplied { id: batch.change_set, configs: configs.into() })
}

impl Worker {
    fn new(
        s: EngineSettings,
        rx: std::sync::mpsc::Receiver<Command>,
        wake_rx: Wakeup,
        waker: Waker,
        events: broadcast::Sender<ChangeEvent>,
        mode: Arc<Mutex<WatcherMode>>,
    ) -> Result<Worker, Error> {
        if !s.root.is_dir() {
            return Err(Error::io(
                &s.root,
                io::Error::new(io::ErrorKind::NotFound, "workspace root is not a directory"),
            ));
        }
        let history = match &s.history {
            Some(config) => Some(
                Recorder::start(s.root.clone(), s.env.clone(), config.clone(), s.redactor.clone())
                    .map_err(|e| Error::Watch(format!("cannot start the history thread: {e}")))?,
            ),
            None => None,
        };
        // Watches are set up before the first scan, so that nothing written
        // during the scan is missed.
        let intake = Intake::start(&s, mode, waker)?;
        let coalescer = Coalescer::new(timing(&s, intake.quiet(&s)));
        let notifier = Notifier::new(s.root.clone(), events);
        let (hold_path, hold_timeout) = (s.data_dir.join(crate::hold::HOLD_FILE), s.hold_timeout);
        let hold_dir_stamp = crate::hold::release_stamp(&s.data_dir);
        let mut worker = Worker {
            s,
            rx,
            wake_rx,
            intake,
            coalescer,
            files: Files::default(),
            configs: HashMap::new(),
            groups: Vec::new(),
            deferred: BTreeMap::new(),
            settling: BTreeMap::new(),
            cooldown: HashMap::new(),
            held: BTreeMap::new(),
            hold: HoldWatch {
                path: hold_path,
                timeout: hold_timeout,
                holding: false,
                parked: BTreeMap::new(),
                released: None,
                warned: None,
                last_release: hold_dir_stamp,
            },
            notifier,
            references: refs::References::default(),
            history,
            stop: false,
        };
        worker.initial_scan();
        Ok(worker)
    }

    fn initial_scan(&mut self) {
        for (path, _) in self.intake.scan(&self.s) {
            match read::read_at_start(&path, self.keep(&path), self.intake.leases()) {
                Ok(Some(read)) => {
                    // Nothing is reported for the files found at start.
                    let _ = self.files.store(&path, read, None, &self.s.config_dir);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot read file"),
            }
        }
        let now = Instant::now();
        // The values found at start are one change set. Nobody listens
        // yet: the outcome is recorded, not reported.
        let inputs = self.files.config_names().into_iter().map(|name| step::Input::files(name, now)).collect();
        let _ = self.step(inputs, Batch::new(false), false);
    }

    fn run(&mut self) {
        while !self.stop {
            let now = Instant::now();
            let holding = self.hold.holding;
            // While held, settled configs wait for the release, which a
            // look at the hold every few milliseconds notices.
            let settle = self.settling.values().map(|(_, due)| *due).min().filter(|_| !holding);
            let hold_poll = holding.then(|| now + HOLD_POLL);
            let cooled = self.held.keys().filter_map(|p| self.cooldown.get(p).copied()).min();
            let deadline = [
                self.coalescer.next_deadline(),
                self.intake.next_scan(),
                self.references.next_check(),
                settle,
                cooled,
                hold_poll,
            ]
            .into_iter()
            .flatten()
            .min();
            self.wait(deadline.map(|d| d.saturating_duration_since(now)));
            self.drain_wake();
            while let Ok(command) = self.rx.try_recv() {
                self.command(command);
                if self.stop {
                    return;
                }
            }
            let seen = self.intake.read(&self.s);
            self.take_in(seen);
            let seen = self.intake.poll(&self.s, Instant::now());
            self.take_in(seen);
            let ready = self.coalescer.take_ready(Instant::now());
            let mut ready = self.cool_down(ready);
            // A hold released between the read above and this look was
            // released after its writes, whose events are queued by now:
            // read again until a read after a free look finds nothing, so
            // that the step has all of them. Bounded: a writer that never
            // pauses must not keep the loop from its commands.
            let mut held = self.hold.look();
            for _ in 0..RELOOK {
                if held {
                    break;
                }
                let seen = self.intake.read(&self.s);
                if seen.is_empty() {
                    break;
                }
                self.take_in(seen);
                let more = self.coalescer.take_ready(Instant::now());
                ready.extend(self.cool_down(more));
                held = self.hold.look();
            }
            if held {
                // Held: read nothing, validate nothing; park what is ready.
                if !self.hold.holding {
                    tracing::info!(path = %self.hold.path.display(), "held: changes wait for the release");
                }
                self.hold.holding = true;
                self.hold.released = None;
                for r in ready {
                    self.hold.parked.insert(r.path.clone(), r);
                }
                continue;
            }
            // A hold taken and released between two looks: what was
            // written under it is one change set all the same.
            if self.hold.came_and_went() && !self.hold.holding {
                self.hold.holding = true;
                self.hold.released = None;
            }
            if self.hold.holding {
                // Released. Every write made under the hold was queued by
                // the kernel in the writer's own system call, before the
                // holder removed the file: take in what came since the
                // reads above, or a write that raced with this look would
                // be left out of the set.
                self.fence();
                // Without a kernel queue read here (the portable backend's
                // events come from notify's thread, polling's from the next
                // scan), a write made under the hold may not have been seen
                // yet: compare the files with what was read, once, at the
                // release, so that every one of them is in the set.
                if self.hold.released.is_none() && self.intake.quiet(&self.s).is_some() {
                    self.compare_with_disk(Instant::now());
                }
                let more = self.coalescer.take_ready(Instant::now());
                ready.extend(self.cool_down(more));
                // What was written under the hold may still be
                // settling (the portable backend's quiet window, a writer
                // not yet closed): wait for it, within the write timeout,
                // so that it is part of the set.
                let now = Instant::now();
                let released = *self.hold.released.get_or_insert(now);
                if self.coalescer.next_deadline().is_some() && now < released + self.s.write_timeout {
                    for r in ready {
                        self.hold.parked.insert(r.path.clone(), r);
                    }
                    continue;
                }
                self.hold.holding = false;
                self.hold.released = None;
                // Everything pending is one change set, each path once.
                for r in ready {
                    self.hold.parked.insert(r.path.clone(), r);
                }
                let ready: Vec<Ready> = std::mem::take(&mut self.hold.parked).into_values().collect();
                tracing::info!(paths = ready.len(), "hold released: applying what waited as one change set");
                self.process(ready, Step::Release);
            } else if !ready.is_empty() {
                self.process(ready, Step::Window);
            }
            self.check_references();
            self.settle();
        }
    }

    /// Holds back the ready paths that are cooling down after a rejection
    /// for going over the limits, and releases those whose time is up.
    fn cool_down(&mut self, ready: Vec<Ready>) -> Vec<Ready> {
        let now = Instant::now();
        let mut out = Vec::with_capacity(ready.len());
        for r in ready {
            match self.cooldown.get(&r.path) {
                Some(until) if *until > now => {
                    self.held.insert(r.path.clone(), r);
                }
                _ => out.push(r),
            }
        }
        let released: Vec<PathBuf> =
            self.held.keys().filter(|p| self.cooldown.get(*p).is_none_or(|until| *until <= now)).cloned().collect();
        for path in released {
            if let Some(r) = self.held.remove(&path) {
                out.push(r);
            }
        }
        self.cooldown.retain(|_, until| *until > now);
        out
    }

    /// Reloads the configs whose change has settled: no file of theirs
    /// changed for the window.
    fn settle(&mut self) {
        let now = Instant::now();
        let due: Vec<(String, Instant)> = self
            .settling
            .iter()
            .filter(|(_, (_, due))| *due <= now)
            .map(|(name, (first_seen, _))| (name.clone(), *first_seen))
            .collect();
        if due.is_empty() {
            return;
        }
        for (name, _) in &due {
            self.settling.remove(name);
        }
        // The reads are behind us: fence again before the commit.
        let inputs = due.into_iter().map(|(name, first_seen)| step::Input::files(name, first_seen)).collect();
        let result = self.step(inputs, Batch::new(true), false);
        self.emit_step(result);
    }

    /// Reloads the configs whose referenced files changed, if a look is due.
    fn check_references(&mut self) {
        let now = Instant::now();
        let changed = self.references.check(now);
        if changed.is_empty() {
            return;
        }
        for name in &changed {
            // The documents' parses hold the old content: parse again.
            self.files.invalidate(name);
        }
        let inputs = changed.into_iter().map(|name| step::Input::files(name, now)).collect();
        let result = self.step(inputs, Batch::new(false), false);
        self.emit_step(result);
    }

    /// Sleeps until an event, a command or `timeout`. With nothing pending
    /// and no polling, that is until an event or command: an idle engine
    /// uses no CPU.
    fn wait(&self, timeout: Option<Duration>) {
        #[cfg(target_os = "linux")]
        self.wake_rx.wait(timeout, self.intake.fd());
        #[cfg(all(unix, not(target_os = "linux")))]
        self.wake_rx.wait(timeout, None);
        #[cfg(not(unix))]
        self.wake_rx.wait(timeout);
    }

    fn drain_wake(&self) {
        self.wake_rx.drain();
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Subscribe { name, factory, reply } => {
                let result = self.subscribe(&name, factory);
                let _ = reply.send(result);
            }
            Command::AddHandler { key, name, glob, tx } => self.notifier.add(key, name, glob, tx),
            Command::RemoveHandler { key } => self.notifier.remove(key),
            Command::SubscribeGroup { members, factory, reply } => {
                let result = self.subscribe_group(members, factory);
                let _ = reply.send(result);
            }
            Command::Publish { set, reply } => {
                let result = self.publish_set(set);
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

    /// Feeds what intake saw to the coalescer.
    fn take_in(&mut self, seen: Vec<Seen>) {
        if seen.is_empty() {
            return;
        }
        let now = Instant::now();
        for seen in seen {
            match seen {
                Seen::Signal(path, signal) => self.coalescer.observe(&path, signal, now),
                Seen::DirGone(dir) => {
                    for path in self.files.under(&dir) {
                        self.coalescer.observe(&path, Signal::Removed, now);
                    }
                }
                Seen::Lost => self.rescan("overflow"),
                Seen::NowPolling => self.coalescer = Coalescer::new(timing(&self.s, Some(self.s.quiet))),
            }
        }
    }

    /// After lost events: compare the whole tree with what we know.
    fn rescan(&mut self, reason: &'static str) {
        tracing::warn!(root = %self.s.root.display(), reason, "rescanning the workspace");
        metrics::counter!("relive_rescans_total", "reason" => reason).increment(1);
        let now = Instant::now();
        let switched = self.intake.rewatch(&self.s);
        self.take_in(switched);
        self.compare_with_disk(now);
    }

    /// Marks every watched file whose size or mtime differs from what was
    /// read, or that is gone, as changed: what a rescan finds.
    fn compare_with_disk(&mut self, now: Instant) {
        let found = self.intake.scan(&self.s);
        for path in self.files.gone(&found) {
            self.coalescer.observe(&path, Signal::Removed, now);
        }
        for (path, meta) in &found {
            if !self.files.same_meta(path, meta) {
                self.coalescer.observe(path, Signal::Touched, now);
            }
        }
    }

    /// Drains the kernel queue after reading files. Events are queued by the
    /// kernel inside the writer's system call, so a write that overlapped a
    /// read is in the queue by now; its path then has a pending entry and
    /// the read is discarded.
    fn fence(&mut self) {
        let seen = self.intake.read(&self.s);
        self.take_in(seen);
    }

    /// Reads the ready paths, stores what changed, reloads the configs it
    /// touched, and reports it all.
    fn process(&mut self, ready: Vec<Ready>, step: Step) {
        let (config_dir, max_len) = (&self.s.config_dir, self.s.decode.limits.max_file_size);
        let keep = |path: &Path| read::keep(config_dir, path, max_len);
        let reads = read::read_ready(ready, &mut self.coalescer, keep, self.intake.leases());
        self.fence();
        let batch = Batch::new(reads.iter().any(|r| r.result.is_ok() && !r.leased));
        let now = Instant::now();
        let mut file_events = Vec::new();
        let mut dirty: BTreeMap<String, Instant> = BTreeMap::new();
        for read in reads {
            let path = &read.ready.path;
            if self.coalescer.is_pending(path) {
                continue;
            }
            let first_seen = read.ready.first_seen;
            match read.result {
                Ok(content) if !read.leased && self.suspicious(&read.ready, &content, now) => {}
                Ok(content) => {
                    let moved_from = read.ready.moved_from.as_deref();
                    match self.files.store(path, content, moved_from, &self.s.config_dir) {
                        Stored::Unchanged => {}
                        Stored::Changed { change, hash, configs, replaced } => {
                            if let Some(old) = replaced {
                                self.backup(path, &old);
                            }
                            for name in configs {
                                dirty.entry(name).or_insert(first_seen);
                            }
                            file_events.push(ChangeEvent::FileChanged {
                                path: path.clone(),
                                change_type: change,
                                hash: Some(hash),
                            });
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if let Some(removed) = self.files.remove(path) {
                        if let Some(name) = removed.config {
                            dirty.entry(name).or_insert(first_seen);
                        }
                        if let Some(old) = removed.content {
                            self.backup(path, &old);
                        }
                        file_events.push(ChangeEvent::FileChanged {
                            path: path.clone(),
                            change_type: ChangeType::Deleted,
                            hash: None,
                        });
                    }
                }
                Err(e) => {
                    // A FIFO, socket or device is refused for good: no retry.
                    let retry = e.kind() != io::ErrorKind::InvalidInput;
                    if !(retry && self.coalescer.retry(path, read.ready.attempt, first_seen, now)) {
                        tracing::warn!(path = %path.display(), error = %e, attempts = read.ready.attempt + 1, "giving up reading file");
                        file_events.push(ChangeEvent::ReadFailed { path: path.clone(), error: e.to_string() });
                        if let Some(cf) = paths::config_file(&self.s.config_dir, path) {
                            let error =
                                ConfigError::new(ConfigErrorKind::Io, format!("cannot read file: {e}")).with_file(path);
                            file_events.push(notify::rejected(&cf.name, error));
                        }
                    }
                }
            }
        }
        for name in self.settled() {
            if let Some(first_seen) = self.deferred.remove(&name) {
                dirty.entry(name).or_insert(first_seen);
            }
        }
        if step == Step::Release {
            // What was settling when the hold came is part of the set.
            for (name, (first_seen, _)) in std::mem::take(&mut self.settling) {
                dirty.entry(name).or_insert(first_seen);
            }
        }
        let window = self.s.change_set_window;
        let mut inputs = Vec::new();
        for (name, first_seen) in dirty {
            // A config of one file is applied at once; one of several files,
            // or a member of a group, waits for the window after its last
            // change (at most ten), and so do the members of its groups
            // that are waiting.
            let waits = self.files.is_layered(&name, self.s.env.as_deref()) || self.in_group(&name);
            if step == Step::Window && !window.is_zero() && waits {
                let cap = first_seen + window * 10;
                let entry = self.settling.entry(name.clone()).or_insert((first_seen, now));
                entry.1 = (now + window).min(cap.max(now));
                let due = entry.1;
                let partners: Vec<String> = self
                    .groups
                    .iter()
                    .filter(|g| g.members.contains(&name))
                    .flat_map(|g| g.members.iter().cloned())
                    .collect();
                for partner in partners {
                    if let Some(entry) = self.settling.get_mut(&partner) {
                        entry.1 = entry.1.max(due);
                    }
                }
                continue;
            }
            inputs.push(step::Input::files(name, first_seen));
        }
        let result = self.step(inputs, batch, false);
        for event in file_events {
            self.emit(event);
        }
        self.emit_step(result);
    }

    /// The deferred configs none of whose files is pending any more.
    fn settled(&self) -> Vec<String> {
        self.deferred
            .keys()
            .filter(|name| !self.files.of_config(name).any(|f| self.coalescer.is_pending(f)))
            .cloned()
            .collect()
    }

    /// True if the read must be confirmed before it is believed; a re-read
    /// is then scheduled (see [`Files::suspicious`]).
    fn suspicious(&mut self, ready: &Ready, content: &read::FileRead, now: Instant) -> bool {
        if !self.intake.has_events() {
            return false;
        }
        self.files.suspicious(ready, content, self.intake.settle())
            && self.coalescer.retry(&ready.path, ready.attempt, ready.first_seen, now)
    }

    /// What to keep of a file read at `path`.
    fn keep(&self, path: &Path) -> read::Keep {
        read::keep(&self.s.config_dir, path, self.s.decode.limits.max_file_size)
    }

    /// `backup_on_change`: keeps the previous content of a config file as
    /// `data/backups/configs/<timestamp>_<file name>`.
    fn backup(&self, path: &Path, content: &[u8]) {
        let (true, Some(name)) = (self.s.backup, path.file_name()) else { return };
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
        // A backup holds a config's secrets as they were: private, like
        // everything under `data/`.
        let written = crate::private::narrow_dir(&self.s.data_dir)
            .and_then(|()| crate::private::create_private_dir(&dir))
            .and_then(|()| crate::private::write_private(&target, content));
        if let Err(e) = written {
            tracing::warn!(path = %target.display(), error = %e, "cannot write config backup");
        }
    }

    /// Hands a version to the history's writer thread, if history is on,
    /// with the change set it was applied (or tried) in: `None` for a
    /// value that changed nothing live.
    fn record(
        &self,
        name: &str,
        docs: Vec<Document>,
        merged: Option<(Arc<Value>, SecretPaths)>,
        error: Option<&ConfigError>,
        published: bool,
        change_set: Option<ChangeSetId>,
    ) {
        if let Some(history) = &self.history {
            let (value, secrets) = merged.map_or((None, SecretPaths::default()), |(v, s)| (Some(v), s));
            history.record(name, docs, value, secrets, error.cloned(), published, change_set);
        }
    }

    fn emit(&self, event: ChangeEvent) {
        self.notifier.emit(event, &self.files);
    }

    fn subscribe(&mut self, name: &str, factory: SinkFactory) -> Result<(), ConfigError> {
        let external = self.configs.get(name).is_some_and(|c| c.external);
        let sources = if external {
            Ok(self.configs.get(name).and_then(|c| c.published.clone()).unwrap_or_default())
        } else {
            self.files.sources(name, self.s.env.as_deref(), &self.s.config_dir, &self.s.decode)
        };
        let state = self.configs.entry(name.to_string()).or_default();
        let warning = state.subscribe(sources, factory, self.s.validate)?;
        if let Some(error) = warning {
            self.emit(notify::rejected(name, error));
        }
        Ok(())
    }

    /// Feeds configs from documents given in code (etcd, an HTTP
    /// endpoint) as one change set: every config applied, or none, with
    /// the error of the first refused and its name.
    fn publish_set(
        &mut self,
        set: Vec<(String, Vec<Document>)>,
    ) -> Result<(Option<ChangeSetId>, Vec<bool>), MemberError> {
        let batch = Batch::new(false);
        let now = Instant::now();
        let mut inputs = Vec::with_capacity(set.len());
        let mut failed = None;
        for (name, docs) in &set {
            let parsed = docs.iter().map(|d| Parsed::parse(d.clone(), &self.s.decode)).collect::<Result<Vec<_>, _>>();
            match parsed {
                Ok(docs) => inputs.push(step::Input {
                    name: name.clone(),
                    first_seen: now,
                    published: Some(Sources { docs, redactor: self.s.redactor.clone() }),
                }),
                Err(error) => {
                    failed = Some((name.clone(), error));
                    break;
                }
            }
        }
        if let Some((name, error)) = failed {
            // Nothing of the set is applied: each config's documents are
            // recorded as refused, the one that failed with its error.
            for (other, docs) in set {
                let error = if other == name {
                    error.clone()
                } else {
                    error.clone().prefixed(&format!("not applied: `{name}` in the same change set was rejected: "))
                };
                self.record(&other, docs, None, Some(&error), true, Some(batch.change_set));
                self.emit(notify::rejected(&other, error));
            }
            return Err(MemberError::new(name, error));
        }
        let names: Vec<String> = inputs.iter().map(|i| i.name.clone()).collect();
        let published: Vec<Sources> = inputs.iter().filter_map(|i| i.published.clone()).collect();
        let result = self.step(inputs, batch, true);
        for event in result.events {
            self.emit(event);
        }
        if let Some((name, error)) = result.refused {
            return Err(MemberError::new(name, error));
        }
        for (name, sources) in names.iter().zip(published) {
            self.configs.get_mut(name).expect("state exists").published = Some(sources);
        }
        let changed =
            names.iter().map(|n| result.outcomes.iter().any(|(o, r)| o == n && matches!(r, Ok(true)))).collect();
        Ok((result.applied, changed))
    }

    /// Adds a subscriber of a group, built from its members' live values.
    fn subscribe_group(&mut self, members: Vec<String>, factory: GroupSinkFactory) -> Result<(), MemberError> {
        let mut object = serde_json::Map::new();
        let mut sources = Vec::with_capacity(members.len());
        for m in &members {
            let loaded = self.current_sources(m);
            let value = self.configs.get(m).and_then(|c| c.value.clone());
            let value = match (value, &loaded) {
                (Some(value), _) => value,
                (None, Err(error)) => return Err(MemberError::new(m.clone(), error.clone())),
                (None, Ok(_)) => {
                    let error = ConfigError::new(ConfigErrorKind::Missing, format!("config `{m}` has no valid value"));
                    return Err(MemberError::new(m.clone(), error));
                }
            };
            object.insert(m.clone(), Value::clone(&value));
            sources.push(loaded.unwrap_or_default());
        }
        let view = sink::Members { members: members.iter().map(String::as_str).zip(sources.iter()).collect() };
        let value = Value::Object(object);
        let validate = self.s.validate;
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| factory(&value, &view, validate)));
        let sink = built.unwrap_or_else(|panic| Err(MemberError::new(members[0].clone(), apply::panicked(&*panic))))?;
        match self.groups.iter_mut().find(|g| g.members == members) {
            Some(group) => group.sinks.push(sink),
            None => self.groups.push(GroupState { members, sinks: vec![sink] }),
        }
        Ok(())
    }

    /// Whether config `name` is a member of a group that has subscribers.
    fn in_group(&self, name: &str) -> bool {
        self.groups.iter().any(|g| g.members.iter().any(|m| m == name))
    }

    /// Emits what a step did.
    fn emit_step(&self, result: step::StepResult) {
        for event in result.events {
            self.emit(event);
        }
    }
}

/// The coalescer's timing for these settings, with the backend's quiet
/// window (polling's, the portable backend's, or none for inotify).
fn timing(s: &EngineSettings, quiet: Option<Duration>) -> Timing {
    Timing {
        write_timeout: s.write_timeout,
        delete_grace: DELETE_GRACE,
        quiet,
        backoff: Backoff::default(),
        min_interval: MIN_INTERVAL,
    }
}
