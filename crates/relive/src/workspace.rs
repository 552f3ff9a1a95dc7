//! The workspace, its hot reload settings, and the manager of a running
//! engine.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use crate::changeset::ChangeSetId;
use crate::config::{EngineSettings, HotReloadConfig};
use crate::document::Document;
use crate::engine::{Engine, HandlerKey, PauseGuard, WatcherMode};
use crate::error::{ConfigError, Error, Result};
use crate::event::ChangeEvent;
use crate::group::GroupBuilder;
use crate::handler::{DynHandler, HandlerError, ReloadHandler};
use crate::history::{ChangeSet, Diff, History, HistoryEntry, Version};
use crate::hold::Hold;
use crate::redact::Redactor;
use crate::stream::{ConfigBuilder, ConfigStream};

/// A directory with `config/`, `templates/`, `static/` and `data/`.
///
/// Clones share one hot reload engine: one watcher per workspace serves
/// every stream and handler.
#[derive(Clone)]
pub struct Workspace {
    inner: Arc<Inner>,
}

type PendingHandler = (HandlerKey, String, Option<String>, Arc<dyn DynHandler>);

struct Inner {
    root: PathBuf,
    env: Option<String>,
    engine: Mutex<Option<Arc<Engine>>>,
    /// What the engine starts with, whoever starts it.
    config: Mutex<HotReloadConfig>,
    /// Why `relive.toml` could not be used: reported by whatever needs
    /// the settings (starting the engine, a one-shot load).
    settings_error: Mutex<Option<(PathBuf, String)>>,
    /// Serializes engine start-up.
    starting: tokio::sync::Mutex<()>,
    /// Handlers registered before the engine started.
    pending: Mutex<Vec<PendingHandler>>,
    /// Handler keys, unique for the workspace's life (engines come and go).
    next_handler: std::sync::atomic::AtomicU64,
    /// The redactor of the last engine started, for diffs.
    redactor: Mutex<Option<Redactor>>,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace").field("root", &self.inner.root).field("env", &self.inner.env).finish()
    }
}

impl Workspace {
    /// A workspace rooted at `root`. The environment comes from `RELIVE_ENV`
    /// (see [`with_env`](Workspace::with_env)).
    pub fn new(root: impl AsRef<Path>) -> Workspace {
        let root = root.as_ref();
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        let env = std::env::var("RELIVE_ENV").ok().filter(|e| !e.is_empty());
        Workspace::with_parts(root, env)
    }

    fn with_parts(root: PathBuf, env: Option<String>) -> Workspace {
        let (config, settings_error) = match HotReloadConfig::for_workspace(&root) {
            Ok(config) => (config, None),
            Err(Error::Settings { path, message }) => (HotReloadConfig::default(), Some((path, message))),
            Err(e) => (HotReloadConfig::default(), Some((root.join("relive.toml"), e.to_string()))),
        };
        Workspace {
            inner: Arc::new(Inner {
                root,
                env,
                engine: Mutex::new(None),
                config: Mutex::new(config),
                settings_error: Mutex::new(settings_error),
                starting: tokio::sync::Mutex::new(()),
                pending: Mutex::new(Vec::new()),
                next_handler: std::sync::atomic::AtomicU64::new(1),
                redactor: Mutex::new(None),
            }),
        }
    }

    /// Finds the workspace: the directory in `RELIVE_WORKSPACE` if set,
    /// else the nearest directory at or above the current one that has a
    /// `relive.toml` or a `config/` directory.
    pub fn discover() -> Result<Workspace> {
        if let Some(dir) = std::env::var_os("RELIVE_WORKSPACE").filter(|d| !d.is_empty()) {
            return Ok(Workspace::new(dir));
        }
        let start = std::env::current_dir().map_err(|e| Error::io(".", e))?;
        start
            .ancestors()
            .find(|dir| dir.join("relive.toml").is_file() || dir.join("config").is_dir())
            .map(Workspace::new)
            .ok_or(Error::NoWorkspace { start })
    }

    /// The same workspace with `env` as its environment (`production`
    /// selects `app.production.toml` overlays). Call it before starting hot
    /// reload: the result has an engine of its own.
    pub fn with_env(self, env: impl Into<String>) -> Workspace {
        let env = env.into();
        Workspace::with_parts(self.inner.root.clone(), Some(env).filter(|e| !e.is_empty()))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The environment, if one is set.
    pub fn env(&self) -> Option<&str> {
        self.inner.env.as_deref()
    }

    /// `root/config`.
    pub fn config_dir(&self) -> PathBuf {
        self.inner.root.join("config")
    }

    /// `root/data`, where history and backups live.
    pub fn data_dir(&self) -> PathBuf {
        self.inner.root.join("data")
    }

    /// `root/templates`.
    pub fn templates_dir(&self) -> PathBuf {
        self.inner.root.join("templates")
    }

    /// `root/static`.
    pub fn static_dir(&self) -> PathBuf {
        self.inner.root.join("static")
    }

    /// `path` relative to the root.
    pub fn join(&self, path: impl AsRef<Path>) -> PathBuf {
        self.inner.root.join(path)
    }

    /// The settings hot reload starts with, whoever starts it (this call,
    /// [`start_hot_reload`](Workspace::start_hot_reload), or the first
    /// stream or handler). Set it before anything starts the engine; a
    /// running engine keeps the settings it started with.
    pub fn with_config(self, config: HotReloadConfig) -> Workspace {
        *self.inner.config.lock().expect("config lock") = config;
        // Settings given in code replace those of `relive.toml`, and with
        // them any error it had.
        *self.inner.settings_error.lock().expect("settings lock") = None;
        self
    }

    /// The settings hot reload starts (or started) with, which one-shot
    /// loads use too: the defaults with what `relive.toml` says, or those
    /// given to [`with_config`](Workspace::with_config). Build on them to
    /// change a few: `HotReloadConfig { polling, ..ws.settings()? }`.
    /// Fails if `relive.toml` is invalid.
    pub fn settings(&self) -> Result<HotReloadConfig> {
        if let Some((path, message)) = self.inner.settings_error.lock().expect("settings lock").clone() {
            return Err(Error::Settings { path, message });
        }
        Ok(self.inner.config.lock().expect("config lock").clone())
    }

    /// The redactor of the workspace's settings (default patterns and those
    /// of `relive.toml`), for what is shown without an engine.
    pub fn redactor(&self) -> Result<Redactor> {
        Redactor::new(&self.settings()?.redact_patterns)
    }

    /// Starts hot reload with the workspace's settings (the defaults, or
    /// those given to [`with_config`](Workspace::with_config)).
    ///
    /// If hot reload is already running (a stream started it, say), this
    /// returns a manager for it rather than failing: there is one engine per
    /// workspace.
    pub async fn start_hot_reload(&self) -> Result<HotReloadManager> {
        let engine = self.engine().await?;
        Ok(HotReloadManager { engine, ws: self.clone() })
    }

    /// A manager for the running engine, if hot reload is running.
    pub fn manager(&self) -> Option<HotReloadManager> {
        let engine = self.inner.engine.lock().expect("engine lock").clone()?;
        Some(HotReloadManager { engine, ws: self.clone() })
    }

    /// Starts hot reload with `config`. Returns once the watcher is set up
    /// and the first scan is done: every change after this returns is seen.
    /// Fails with [`Error::AlreadyRunning`] if it is running, since the
    /// running engine cannot take `config`. To be sure the settings apply
    /// whatever starts the engine first, give them to
    /// [`with_config`](Workspace::with_config).
    pub async fn start_hot_reload_with_config(&self, config: HotReloadConfig) -> Result<HotReloadManager> {
        let _starting = self.inner.starting.lock().await;
        if self.inner.engine.lock().expect("engine lock").is_some() {
            return Err(Error::AlreadyRunning);
        }
        *self.inner.config.lock().expect("config lock") = config;
        let engine = self.start_locked().await?;
        Ok(HotReloadManager { engine, ws: self.clone() })
    }

    /// The running engine, started with the workspace's settings if need
    /// be. The one way an engine is started.
    pub(crate) async fn engine(&self) -> Result<Arc<Engine>> {
        if let Some(engine) = self.inner.engine.lock().expect("engine lock").clone() {
            return Ok(engine);
        }
        let _starting = self.inner.starting.lock().await;
        self.start_locked().await
    }

    /// Starts the engine unless one runs; the caller holds `starting`.
    async fn start_locked(&self) -> Result<Arc<Engine>> {
        if let Some(engine) = self.inner.engine.lock().expect("engine lock").clone() {
            return Ok(engine);
        }
        let config = self.settings()?;
        let settings =
            EngineSettings::new(&self.inner.root, self.config_dir(), self.data_dir(), self.inner.env.clone(), &config)?;
        *self.inner.redactor.lock().expect("redactor lock") = Some(settings.redactor.clone());
        let engine = Engine::start(settings).await?;
        // Handlers registered meanwhile wait in `pending` until the engine
        // is in its slot: both are decided under the slot's lock.
        let mut slot = self.inner.engine.lock().expect("engine lock");
        for (key, name, pattern, handler) in self.inner.pending.lock().expect("pending lock").drain(..) {
            engine.add_handler(key, name, pattern.as_deref(), handler)?;
        }
        *slot = Some(Arc::clone(&engine));
        Ok(engine)
    }

    /// The recorded history of config `name`, read from
    /// `data/history/`: every version kept, applied and rejected, and the
    /// records that were skipped as corrupt or truncated
    /// ([`History::warnings`]). Needs no running engine.
    pub fn open_history(&self, name: &str) -> Result<History> {
        let history = History::open(&self.inner.root, name)?;
        // The workspace's age identities, so that SOPS versions have
        // values (shown redacted); without settings, none.
        Ok(match self.settings().and_then(|s| s.decode()) {
            Ok(decode) => history.with_decode(decode),
            Err(_) => history,
        })
    }

    /// Every version of config `name` that was applied or rejected, oldest
    /// first (see [`HistoryConfig`](crate::HistoryConfig) for what is kept). A config with no
    /// history has none. Corrupt records are skipped with a warning in the
    /// log; [`open_history`](Workspace::open_history) lists them.
    ///
    /// ```no_run
    /// # fn f(ws: relive::Workspace) -> relive::Result<()> {
    /// for entry in ws.history("server")? {
    ///     println!("{} {:?} {}", entry.version, entry.status, entry.diff);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn history(&self, name: &str) -> Result<Vec<HistoryEntry>> {
        Ok(self.open_history(name)?.entries().to_vec())
    }

    /// Version `n` of config `name`, with its documents exactly as they
    /// were on disk (secrets included) and its merged value. Fails with
    /// [`Error::UnknownVersion`] if it was never recorded or was pruned.
    pub fn version(&self, name: &str, n: u64) -> Result<Version> {
        self.open_history(name)?.version(n)
    }

    /// What changed in config `name` from version `a` to version `b`, with
    /// secrets redacted (by the running engine's
    /// [`redact_patterns`](HotReloadConfig::redact_patterns), or the
    /// default ones).
    pub fn diff(&self, name: &str, a: u64, b: u64) -> Result<Diff> {
        let running = self.inner.redactor.lock().expect("redactor lock").clone();
        let redactor = match running {
            Some(redactor) => redactor,
            None => self.redactor()?,
        };
        self.open_history(name)?.diff(a, b, &redactor)
    }

    /// Restores version `n` of config `name`: writes its documents back to
    /// the files they came from, each atomically (temp file + rename) and
    /// all under one [`hold`](Workspace::hold), so that the engine
    /// validates and applies them like any change, and a base and its
    /// overlay as one version. The history then records a new version with
    /// `rollback_of: Some(n)`.
    ///
    /// It works without an engine in this process: a marker in the history
    /// tells whichever engine applies the files (another process, or the
    /// next one started) that they are a rollback. When an engine runs in
    /// this process, this waits (up to 10 s) for it to apply the files, and
    /// returns [`Error::Config`] if it rejected them; the files are written
    /// either way.
    ///
    /// Only applied, file-fed versions can be restored. Files the config has
    /// now that version `n` did not have (an overlay added since) are left
    /// alone. A rollback to what is already on disk writes nothing.
    pub async fn rollback(&self, name: &str, n: u64) -> Result<()> {
        self.restore(vec![(name.to_string(), n)]).await.map(|_| ())
    }

    /// Every config's versions grouped by change set, newest set first, at
    /// most `limit` sets: the versions applied (or rejected) together share
    /// one [`ChangeSetId`](crate::ChangeSetId). Reads `data/history/`; needs
    /// no running engine.
    pub fn change_sets(&self, limit: usize) -> Result<Vec<ChangeSet>> {
        Ok(crate::history::group(&crate::history::open_all(&self.inner.root)?, limit))
    }

    /// Undoes change set `id`: every config it changed goes back to its
    /// newest applied version before the set, and all of them are written
    /// under one [`hold`](Workspace::hold), so that the engine (in this
    /// process or another) applies them as one change set, which the
    /// history records with one new version per config and one shared id.
    /// Like [`rollback`](Workspace::rollback), an engine in this process is
    /// waited for (up to 10 s) and its rejection is an error. Returns each
    /// config with the version it goes back to.
    ///
    /// Everything is checked before any file is written: a set that was
    /// rejected, or a config with no earlier applied version to go back to
    /// (the set created it), is an error and nothing is written.
    pub async fn rollback_change_set(&self, id: crate::ChangeSetId) -> Result<Vec<(String, u64)>> {
        let set = self.find_change_set(id).await?;
        if !set.is_applied() {
            return Err(Error::History {
                name: set.configs().collect::<Vec<_>>().join(", "),
                message: format!("change set {id} was rejected; it changed nothing to undo"),
            });
        }
        let mut targets = Vec::new();
        for member in &set.members {
            let history = self.open_history(&member.config)?;
            let before = history
                .entries()
                .iter()
                .rev()
                .find(|e| e.version < member.entry.version && e.is_applied() && !e.published)
                .ok_or_else(|| Error::History {
                    name: member.config.clone(),
                    message: format!("no applied version before change set {id} to go back to"),
                })?;
            targets.push((member.config.clone(), before.version));
        }
        self.restore(targets.clone()).await?;
        Ok(targets)
    }

    /// Restores every config of change set `id` to its version in that
    /// set, as one change set (see
    /// [`rollback_change_set`](Workspace::rollback_change_set)). Returns
    /// each config with its version.
    pub async fn restore_change_set(&self, id: crate::ChangeSetId) -> Result<Vec<(String, u64)>> {
        let set = self.find_change_set(id).await?;
        let targets: Vec<(String, u64)> = set.members.iter().map(|m| (m.config.clone(), m.entry.version)).collect();
        self.restore(targets.clone()).await?;
        Ok(targets)
    }

    /// True if an engine, in this process or another, records this
    /// workspace's history now (it holds the lock on
    /// `data/history/.lock`): what tells a tool that wrote files whether a
    /// verdict on them will be recorded.
    pub fn is_recording(&self) -> bool {
        crate::history::recording(&self.inner.root)
    }

    async fn find_change_set(&self, id: crate::ChangeSetId) -> Result<ChangeSet> {
        let engine = self.inner.engine.lock().expect("engine lock").clone();
        if let Some(engine) = &engine {
            let _ = engine.flush_history().await;
        }
        let root = self.inner.root.clone();
        let sets = tokio::task::spawn_blocking(move || crate::history::open_all(&root))
            .await
            .map_err(|e| Error::Watch(format!("reading the history failed: {e}")))??;
        crate::history::group(&sets, usize::MAX)
            .into_iter()
            .find(|s| s.id == Some(id))
            .ok_or(Error::UnknownChangeSet { id })
    }

    /// Writes back version `n` of each `(name, n)`: every version checked
    /// first, then every file written under one hold, so that the engine
    /// applies them as one change set. With an engine in this process,
    /// waits (up to 10 s) for it to apply them, and returns
    /// [`Error::Config`] if it rejected one.
    async fn restore(&self, targets: Vec<(String, u64)>) -> Result<()> {
        let engine = self.inner.engine.lock().expect("engine lock").clone();
        if let Some(engine) = &engine {
            // The engine records on its own thread: let the history catch
            // up, so that it knows which version is live.
            let _ = engine.flush_history().await;
        }
        let ws = self.clone();
        let (changed, mut events) = tokio::task::spawn_blocking(move || -> Result<_> {
            let plans = targets
                .iter()
                .map(|(name, n)| ws.open_history(name)?.plan(*n))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .collect::<Vec<_>>();
            if plans.is_empty() {
                return Ok((Vec::new(), None));
            }
            // One hold over every file of every config: the engine, here or
            // in another process, reads none of them before all are there.
            let hold = ws.hold()?;
            // Subscribed under the hold: what the engine says from now on
            // is about this change, not about one it made before (a
            // rejection of a file deleted a moment ago, say).
            let events = engine.as_ref().map(|e| e.events());
            for plan in &plans {
                plan.write()?;
            }
            hold.release()?;
            let changed = plans.iter().filter(|p| p.changes_value).map(|p| p.name().to_string()).collect();
            Ok((changed, events))
        })
        .await
        .map_err(|e| Error::Watch(format!("rollback failed: {e}")))??;
        let Some(events) = &mut events else { return Ok(()) };
        let mut pending: std::collections::BTreeSet<String> = changed.into_iter().collect();
        if pending.is_empty() {
            return Ok(());
        }
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match events.recv().await {
                    Ok(ChangeEvent::ConfigChanged { config_name, .. }) => {
                        pending.remove(&config_name);
                        if pending.is_empty() {
                            return Ok(());
                        }
                    }
                    Ok(ChangeEvent::ValidationFailed { config_name, error }) if pending.contains(&config_name) => {
                        return Err(Error::Config { name: config_name, error: Box::new(ConfigError::clone(&error)) });
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        })
        .await;
        outcome.unwrap_or(Ok(()))
    }

    /// Holds the engine (of this process and of any other on this
    /// workspace): until the [`Hold`] is dropped, it reads and validates
    /// nothing and keeps every change pending; then it applies everything
    /// pending as one change set, groups whole or not at all. For a tool
    /// that copies several files in and wants them applied together with
    /// certainty, rather than within
    /// [`change_set_window_ms`](HotReloadConfig::change_set_window_ms):
    /// take the hold, write each file (atomically), drop the hold.
    ///
    /// The hold is the file `data/hold` (mode 0600, created exclusively,
    /// with this process's id). Fails with [`Error::Held`] while another
    /// live process holds it; a hold whose process is gone, or older than
    /// [`hold_timeout_ms`](HotReloadConfig::hold_timeout_ms), is cleared
    /// and taken (and ignored by engines meanwhile).
    pub fn hold(&self) -> Result<Hold> {
        let timeout = std::time::Duration::from_millis(self.settings().unwrap_or_default().hold_timeout_ms);
        let engine = self.inner.engine.lock().expect("engine lock").as_ref().map_or_else(Weak::new, Arc::downgrade);
        Hold::take(&self.data_dir(), timeout, engine)
    }

    /// Watches config `name` as `T`: the stream starts at the current value
    /// and yields each new value that deserializes into `T`. Shorthand for
    /// `self.config::<T>(name).watch()`; use [`config`](Workspace::config)
    /// to add validators or a default.
    pub async fn watch_config_changes<T>(&self, name: &str) -> Result<ConfigStream<T>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        self.config::<T>(name).watch().await
    }

    /// Sets up config `name` as `T`, with validators and a default.
    pub fn config<T>(&self, name: &str) -> ConfigBuilder<'_, T>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        ConfigBuilder::new(self, name)
    }

    /// Sets up a group of configs that go together (`["server", "proxy"]`)
    /// as one `T`, which deserializes from an object with one key per
    /// member (`struct Net { server: Server, proxy: Proxy }`). A change to
    /// any member is validated with the others, and every member's new
    /// value is applied with the group's, or none is. See [`GroupBuilder`].
    ///
    /// Named `group` rather than a plural of [`config`](Workspace::config)
    /// because [`configs`](Workspace::configs) lists the workspace's
    /// configs, and because what it sets up is more than several configs:
    /// one value, one validator, one commit.
    pub fn group<T>(&self, members: impl IntoIterator<Item = impl Into<String>>) -> GroupBuilder<'_, T>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        GroupBuilder::new(self, members.into_iter().map(Into::into).collect())
    }

    /// Runs `handler` for every event about a path matching `pattern` (a
    /// glob relative to the root, such as `templates/**/*.html`). Config
    /// events match by the config's files. Works before or after hot reload
    /// starts. Returns an id for [`remove_handler`](Workspace::remove_handler).
    pub fn register_reload_handler<F>(&self, pattern: &str, handler: F) -> Result<HandlerId>
    where
        F: Fn(ChangeEvent) -> std::result::Result<(), HandlerError> + Send + Sync + 'static,
    {
        self.add_handler(pattern.to_string(), Some(pattern), Arc::new(handler))
    }

    /// Runs `handler`, a [`ReloadHandler`] (async, with state of its own),
    /// for every event about a path matching `pattern` that it
    /// [`can_handle`](ReloadHandler::can_handle). For an async closure, wrap
    /// it in [`handler_fn`](crate::handler_fn).
    pub fn register_handler_for<H: ReloadHandler>(&self, pattern: &str, handler: H) -> Result<HandlerId> {
        self.add_handler(pattern.to_string(), Some(pattern), Arc::new(handler))
    }

    /// Runs `handler` for every event it [`can_handle`](ReloadHandler::can_handle).
    pub fn register_handler<H: ReloadHandler>(&self, handler: H) -> Result<HandlerId> {
        self.add_handler(std::any::type_name::<H>().to_string(), None, Arc::new(handler))
    }

    /// Stops running a handler: it gets no event after this returns (it
    /// finishes the one it is handling, if any). Returns false if the id is
    /// not registered (removed already, or its engine was shut down).
    pub fn remove_handler(&self, id: HandlerId) -> bool {
        let slot = self.inner.engine.lock().expect("engine lock");
        if let Some(engine) = &*slot {
            return engine.remove_handler(id.0);
        }
        let mut pending = self.inner.pending.lock().expect("pending lock");
        let before = pending.len();
        pending.retain(|(key, ..)| *key != id.0);
        pending.len() != before
    }

    fn add_handler(&self, name: String, pattern: Option<&str>, handler: Arc<dyn DynHandler>) -> Result<HandlerId> {
        if let Some(p) = pattern {
            crate::engine::compile_glob(p)?;
        }
        let key = self.inner.next_handler.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let slot = self.inner.engine.lock().expect("engine lock");
        match &*slot {
            Some(engine) => engine.add_handler(key, name, pattern, handler)?,
            None => {
                self.inner.pending.lock().expect("pending lock").push((key, name, pattern.map(str::to_string), handler))
            }
        }
        Ok(HandlerId(key))
    }
}

/// A registered handler, to remove it with
/// [`Workspace::remove_handler`] or [`HotReloadManager::remove_handler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandlerId(HandlerKey);

/// A running hot reload engine.
///
/// Dropping the manager leaves the engine running for the workspace's other
/// users; [`shutdown`](HotReloadManager::shutdown) stops it. The engine also
/// stops when the workspace and every manager are dropped.
pub struct HotReloadManager {
    engine: Arc<Engine>,
    ws: Workspace,
}

impl std::fmt::Debug for HotReloadManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotReloadManager")
            .field("root", &self.engine.root())
            .field("mode", &self.engine.mode())
            .finish()
    }
}

impl HotReloadManager {
    /// Every event from now on. A receiver that falls more than 1,024 events
    /// behind gets `RecvError::Lagged` and goes on from the oldest kept.
    pub fn subscribe(&self) -> broadcast::Receiver<ChangeEvent> {
        self.engine.events()
    }

    /// See [`Workspace::register_reload_handler`].
    pub fn register_reload_handler<F>(&self, pattern: &str, handler: F) -> Result<HandlerId>
    where
        F: Fn(ChangeEvent) -> std::result::Result<(), HandlerError> + Send + Sync + 'static,
    {
        self.ws.register_reload_handler(pattern, handler)
    }

    /// See [`Workspace::register_handler_for`].
    pub fn register_handler_for<H: ReloadHandler>(&self, pattern: &str, handler: H) -> Result<HandlerId> {
        self.ws.register_handler_for(pattern, handler)
    }

    /// See [`Workspace::register_handler`].
    pub fn register_handler<H: ReloadHandler>(&self, handler: H) -> Result<HandlerId> {
        self.ws.register_handler(handler)
    }

    /// See [`Workspace::remove_handler`].
    pub fn remove_handler(&self, id: HandlerId) -> bool {
        self.ws.remove_handler(id)
    }

    /// The workspace this engine serves.
    pub fn workspace(&self) -> &Workspace {
        &self.ws
    }

    /// How the engine learns about changes: kernel events or polling.
    pub fn watcher_mode(&self) -> WatcherMode {
        self.engine.mode()
    }

    /// Feeds config `name` from a source other than files (etcd, an HTTP
    /// endpoint): the documents are parsed, merged in order, validated by
    /// every subscriber and applied, exactly like files. From then on files
    /// no longer feed `name`. Returns whether the value changed, or the
    /// error that rejected it (the last good value stays live).
    pub async fn publish(&self, name: &str, documents: Vec<Document>) -> Result<bool> {
        let (_, changed) = self.engine.publish_set(vec![(name.to_string(), documents)]).await?;
        Ok(changed.first().copied().unwrap_or(false))
    }

    /// Feeds several configs from a source other than files, as one change
    /// set (one etcd revision, say): each is parsed, merged and validated
    /// like [`publish`](HotReloadManager::publish), with the groups they are
    /// in, and then all of them are applied, or none is. Returns the set's
    /// id if any live value changed (`None` if all were the same), or the
    /// error that refused the set, naming the config
    /// ([`Error::Config`]); the last good values stay live.
    pub async fn publish_set(&self, configs: Vec<(String, Vec<Document>)>) -> Result<Option<ChangeSetId>> {
        Ok(self.engine.publish_set(configs).await?.0)
    }

    /// Waits until every version the engine has applied or rejected so far
    /// is recorded in the history on disk. (The engine records on a thread
    /// of its own, so a reload never waits for the disk.)
    pub async fn flush_history(&self) -> Result<()> {
        self.engine.flush_history().await
    }

    /// Stops the engine and every task it started, and waits for them. The
    /// history records what is queued before it stops.
    /// Streams then end (`next` returns `None`); `Live` handles keep their
    /// last value.
    pub async fn shutdown(self) -> Result<()> {
        {
            let mut slot = self.ws.inner.engine.lock().expect("engine lock");
            if slot.as_ref().is_some_and(|e| Arc::ptr_eq(e, &self.engine)) {
                *slot = None;
            }
        }
        self.engine.shutdown().await;
        Ok(())
    }

    /// Pauses the engine until the guard drops, so tests can overflow the
    /// kernel's event queue. Not part of the stable API.
    #[doc(hidden)]
    pub fn pause(&self) -> PauseGuard {
        self.engine.pause()
    }
}
