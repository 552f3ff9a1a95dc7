//! Reload handlers: user code that runs on change events.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use crate::error::ConfigError;
use crate::event::ChangeEvent;

/// The error a handler returns. Any error converts into it with `?`.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Code that runs when something changes.
///
/// Implement it for a type, or pass a closure `|event| -> Result<(),
/// HandlerError>` (closures implement it). Each handler gets events in order,
/// one at a time, on its own task: a slow handler delays only itself, and a
/// handler that returns an error or panics is reported as a
/// [`ChangeEvent::HandlerFailed`] and then gets the next event.
///
/// ```
/// use relive::{ChangeEvent, HandlerError, ReloadHandler};
///
/// struct Recompile;
///
/// impl ReloadHandler for Recompile {
///     fn can_handle(&self, event: &ChangeEvent) -> bool {
///         matches!(event, ChangeEvent::FileChanged { .. })
///     }
///
///     async fn handle_change(&self, event: ChangeEvent) -> Result<(), HandlerError> {
///         println!("recompiling after {event:?}");
///         Ok(())
///     }
/// }
/// ```
pub trait ReloadHandler: Send + Sync + 'static {
    /// Whether this handler wants `event`. Called on the handler's own task.
    fn can_handle(&self, event: &ChangeEvent) -> bool {
        let _ = event;
        true
    }

    /// Handles one event.
    fn handle_change(&self, event: ChangeEvent) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

impl<F> ReloadHandler for F
where
    F: Fn(ChangeEvent) -> Result<(), HandlerError> + Send + Sync + 'static,
{
    fn handle_change(&self, event: ChangeEvent) -> impl Future<Output = Result<(), HandlerError>> + Send {
        std::future::ready(self(event))
    }
}

/// A [`ReloadHandler`] made from an async closure, for
/// [`Workspace::register_handler_for`](crate::Workspace::register_handler_for):
///
/// ```no_run
/// # fn f(ws: relive::Workspace) -> relive::Result<()> {
/// ws.register_handler_for(
///     "templates/**/*",
///     relive::handler_fn(|event| async move {
///         println!("{event:?}");
///         Ok(())
///     }),
/// )?;
/// # Ok(()) }
/// ```
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(ChangeEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    HandlerFn(f)
}

/// An async closure as a [`ReloadHandler`]; made by [`handler_fn`].
#[derive(Debug, Clone)]
pub struct HandlerFn<F>(F);

impl<F, Fut> ReloadHandler for HandlerFn<F>
where
    F: Fn(ChangeEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn handle_change(&self, event: ChangeEvent) -> impl Future<Output = Result<(), HandlerError>> + Send {
        (self.0)(event)
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;

/// A handler with its future boxed, so handlers of any type can sit in one
/// list.
pub(crate) trait DynHandler: Send + Sync {
    fn can_handle(&self, event: &ChangeEvent) -> bool;
    fn call(self: Arc<Self>, event: ChangeEvent) -> BoxFuture;
}

impl<H: ReloadHandler> DynHandler for H {
    fn can_handle(&self, event: &ChangeEvent) -> bool {
        ReloadHandler::can_handle(self, event)
    }

    fn call(self: Arc<Self>, event: ChangeEvent) -> BoxFuture {
        Box::pin(async move { self.handle_change(event).await })
    }
}

/// How many events may wait for one handler before new ones are dropped
/// (and counted): a stuck handler must not grow memory without bound.
pub(crate) const HANDLER_QUEUE: usize = 1024;

/// Runs one handler until its queue closes (the engine stopped).
pub(crate) async fn run(
    name: String,
    handler: Arc<dyn DynHandler>,
    mut rx: mpsc::Receiver<ChangeEvent>,
    events: broadcast::Sender<ChangeEvent>,
) {
    while let Some(event) = rx.recv().await {
        let wanted = {
            let handler = Arc::clone(&handler);
            let event = &event;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || handler.can_handle(event)))
        };
        let failure = match wanted {
            Ok(false) => continue,
            Err(panic) => Some((format!("panicked in can_handle: {}", panic_message(&*panic)), None)),
            // A task of its own, so that a panic is caught as a JoinError
            // rather than unwinding through this loop.
            Ok(true) => match tokio::spawn(Arc::clone(&handler).call(event)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some((e.to_string(), located(&*e))),
                Err(join) if join.is_panic() => {
                    Some((format!("panicked: {}", panic_message(&*join.into_panic())), None))
                }
                Err(join) => Some((join.to_string(), None)),
            },
        };
        if let Some((error, located)) = failure {
            tracing::warn!(handler = %name, %error, "reload handler failed");
            metrics::counter!("relive_handler_failures_total").increment(1);
            let _ = events.send(ChangeEvent::HandlerFailed { handler: name.clone(), error, located });
        }
    }
}

/// The first [`ConfigError`] in an error's chain, for its location.
fn located(error: &(dyn std::error::Error + 'static)) -> Option<Arc<ConfigError>> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<ConfigError>() {
            return Some(Arc::new(found.clone()));
        }
        next = e.source();
    }
    None
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}
