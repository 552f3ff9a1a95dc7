//! Typed delivery: [`ConfigStream`], [`Live`], and the builder that makes
//! them.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;

use crate::document::Sources;
use crate::engine::sink::{Commit, GroupSink, Locate, MemberError, Members, Sink, SinkFactory};
use crate::error::{ConfigError, ConfigErrorKind, Error, ValidationError};
use crate::locate;
use crate::workspace::Workspace;

/// A lock-free handle to the current value of a config, for hot paths.
///
/// [`load`](Live::load) is a single atomic load (it is an
/// [`arc_swap::ArcSwap`] underneath): readers never block the engine and the
/// engine never blocks readers. Load once per unit of work (a request, a
/// batch) and use that snapshot throughout, so one unit never sees two
/// configs.
pub struct Live<T> {
    inner: Arc<ArcSwap<T>>,
}

impl<T> Live<T> {
    /// A handle that always holds `value` (useful in tests and defaults).
    pub fn new(value: T) -> Live<T> {
        Live { inner: Arc::new(ArcSwap::from_pointee(value)) }
    }

    /// The current snapshot, cheaply (no reference count is touched in the
    /// common case). Do not hold the guard for long: use
    /// [`load_full`](Live::load_full) to keep a snapshot.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<T>> {
        self.inner.load()
    }

    /// The current snapshot as an `Arc`, to keep.
    #[inline]
    pub fn load_full(&self) -> Arc<T> {
        self.inner.load_full()
    }
}

impl<T> Clone for Live<T> {
    fn clone(&self) -> Live<T> {
        Live { inner: Arc::clone(&self.inner) }
    }
}

impl<T: fmt::Debug> fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Live").field(&*self.load()).finish()
    }
}

/// A stream of validated values of one config.
///
/// [`current`](ConfigStream::current) is the value last returned by
/// [`next`](ConfigStream::next) (or the initial value); `next` waits for the
/// next value that passed validation. A slow reader skips intermediate
/// values and gets the newest: config is state, not a log. `next` returns
/// `None` once the engine has stopped.
pub struct ConfigStream<T> {
    rx: watch::Receiver<Arc<T>>,
    current: Arc<T>,
    live: Live<T>,
}

impl<T> ConfigStream<T> {
    /// The value last returned by `next`, or the initial value.
    pub fn current(&self) -> &T {
        &self.current
    }

    /// The value last returned by `next`, or the initial value, as an `Arc`.
    pub fn current_arc(&self) -> Arc<T> {
        Arc::clone(&self.current)
    }

    /// Waits for the next validated value. `None` once the engine stopped.
    pub async fn next(&mut self) -> Option<Arc<T>> {
        self.rx.changed().await.ok()?;
        let value = Arc::clone(&self.rx.borrow_and_update());
        self.current = Arc::clone(&value);
        Some(value)
    }

    /// Another stream of the same config, starting at the newest value, with
    /// its own position.
    pub fn subscribe(&self) -> ConfigStream<T> {
        let mut rx = self.rx.clone();
        let current = Arc::clone(&rx.borrow_and_update());
        ConfigStream { rx, current, live: self.live.clone() }
    }

    /// A lock-free handle to the newest value.
    pub fn live(&self) -> Live<T> {
        self.live.clone()
    }
}

impl<T> ConfigStream<T> {
    /// A stream over `rx`, with `live` as its lock-free handle.
    pub(crate) fn from_parts(mut rx: watch::Receiver<Arc<T>>, live: Arc<ArcSwap<T>>) -> ConfigStream<T> {
        let current = Arc::clone(&rx.borrow_and_update());
        ConfigStream { rx, current, live: Live { inner: live } }
    }
}

impl<T: fmt::Debug> fmt::Debug for ConfigStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigStream").field("current", &self.current).finish()
    }
}

/// A type that can check its own values, for
/// [`ConfigBuilder::validated`].
pub trait Validate {
    /// Returns an error if the value must not be applied.
    fn validate(&self) -> Result<(), ValidationError>;
}

pub(crate) type Validator<T> = Arc<dyn Fn(&T) -> Result<(), ValidationError> + Send + Sync>;

/// Sets up a typed, validated config: from
/// [`Workspace::config`](crate::Workspace::config).
///
/// ```no_run
/// # async fn f(ws: relive::Workspace) -> relive::Result<()> {
/// #[derive(serde::Deserialize)]
/// struct Server { port: u16, workers: usize }
///
/// let stream = ws
///     .config::<Server>("server")
///     .validate(|s: &Server| if s.workers == 0 { Err("workers must be at least 1") } else { Ok(()) })
///     .watch()
///     .await?;
/// # Ok(()) }
/// ```
pub struct ConfigBuilder<'w, T> {
    ws: &'w Workspace,
    name: String,
    validators: Vec<Validator<T>>,
    default: Option<T>,
}

impl<'w, T> ConfigBuilder<'w, T>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    pub(crate) fn new(ws: &'w Workspace, name: &str) -> ConfigBuilder<'w, T> {
        ConfigBuilder { ws, name: name.to_string(), validators: Vec::new(), default: None }
    }

    /// Adds a validator. A value is applied only if every validator accepts
    /// it. Return [`ValidationError::at`] to point at a key: the error then
    /// names the file, line and column that set it.
    pub fn validate<F, E>(mut self, f: F) -> Self
    where
        F: Fn(&T) -> Result<(), E> + Send + Sync + 'static,
        E: Into<ValidationError>,
    {
        self.validators.push(Arc::new(move |v: &T| f(v).map_err(Into::into)));
        self
    }

    /// Adds `T`'s own [`Validate`] implementation as a validator.
    pub fn validated(self) -> Self
    where
        T: Validate,
    {
        self.validate(|v: &T| v.validate())
    }

    /// A value to start from when the config is missing or invalid at
    /// startup, instead of failing. The first good value replaces it.
    pub fn default_value(mut self, value: T) -> Self {
        self.default = Some(value);
        self
    }

    /// Starts watching: returns the stream once the initial value is loaded.
    ///
    /// Starts the workspace's hot reload engine with the default
    /// [`HotReloadConfig`](crate::HotReloadConfig) if it is not running.
    /// Fails if the config is missing or invalid and no default was given;
    /// with a default, the failure is reported as a
    /// [`ChangeEvent::ValidationFailed`](crate::ChangeEvent::ValidationFailed)
    /// and the first good value replaces the default.
    pub async fn watch(self) -> Result<ConfigStream<T>, Error> {
        let ConfigBuilder { ws, name, validators, default } = self;
        let (parts_tx, parts_rx) = tokio::sync::oneshot::channel();
        // The engine calls this on its own thread with the config's current
        // value, so that no change can slip between the first load and the
        // subscription.
        let factory: SinkFactory = Box::new(move |loaded, run_validators| {
            let checked = loaded.and_then(|(value, sources)| check(&validators, value, sources, run_validators));
            let (initial, warning) = match (checked, default) {
                (Ok(value), _) => (Arc::new(value), None),
                (Err(error), Some(default)) => (Arc::new(default), Some(error)),
                (Err(error), None) => return Err(error),
            };
            let (tx, rx) = watch::channel(Arc::clone(&initial));
            let live = Arc::new(ArcSwap::new(initial));
            let _ = parts_tx.send((rx, Live { inner: Arc::clone(&live) }));
            let sink: Box<dyn Sink> = Box::new(TypedSink { tx, live, validators });
            Ok((sink, warning))
        });
        ws.engine().await?.subscribe(&name, factory).await?;
        let (mut rx, live) = parts_rx.await.map_err(|_| Error::Stopped)?;
        let current = Arc::clone(&rx.borrow_and_update());
        Ok(ConfigStream { rx, current, live })
    }

    /// Starts watching and returns only the lock-free handle.
    pub async fn live(self) -> Result<Live<T>, Error> {
        Ok(self.watch().await?.live())
    }
}

/// `value` as a `T`, checked by `validators` (when `run_validators`), or
/// the first error, located by `at`: in a config's files, or in a group's
/// member.
pub(crate) fn check<T: DeserializeOwned, L: Locate>(
    validators: &[Validator<T>],
    value: &Value,
    at: &L,
    run_validators: bool,
) -> Result<T, L::Error> {
    let typed: T = serde_path_to_error::deserialize(value).map_err(|e| {
        let key = locate::render_path(e.path());
        at.error_at(ConfigErrorKind::Type, &key, e.into_inner().to_string())
    })?;
    if run_validators {
        for validator in validators {
            validator(&typed)
                .map_err(|e| at.error_at(ConfigErrorKind::Invalid, e.key.as_deref().unwrap_or(""), e.message))?;
        }
    }
    Ok(typed)
}

/// A typed value's subscribers, for a config ([`Sink`]) or a group
/// ([`GroupSink`]): the stream's sender, the lock-free handle, and the
/// validators.
pub(crate) struct TypedSink<T> {
    pub(crate) tx: watch::Sender<Arc<T>>,
    pub(crate) live: Arc<ArcSwap<T>>,
    pub(crate) validators: Vec<Validator<T>>,
}

impl<T> TypedSink<T>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    /// Checks `value`, errors located by `at`, and returns what makes it
    /// live.
    fn prepare_at<L: Locate>(&self, value: &Value, at: &L, run_validators: bool) -> Result<Commit, L::Error> {
        let value = Arc::new(check(&self.validators, value, at, run_validators)?);
        let tx = self.tx.clone();
        let live = Arc::clone(&self.live);
        Ok(Box::new(move || {
            // The lock-free handle first, so hot paths see the value as soon
            // as possible; then wake the streams.
            live.store(Arc::clone(&value));
            tx.send_replace(value);
        }))
    }

    fn closed(&self) -> bool {
        self.tx.is_closed() && Arc::strong_count(&self.live) == 1
    }
}

impl<T> Sink for TypedSink<T>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    fn prepare(&self, value: &Value, sources: &Sources, run_validators: bool) -> Result<Commit, ConfigError> {
        self.prepare_at(value, sources, run_validators)
    }

    fn is_closed(&self) -> bool {
        self.closed()
    }
}

impl<T> GroupSink for TypedSink<T>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    fn prepare(&self, value: &Value, members: &Members<'_>, run_validators: bool) -> Result<Commit, MemberError> {
        self.prepare_at(value, members, run_validators)
    }

    fn is_closed(&self) -> bool {
        self.closed()
    }
}
