//! Events out: to the broadcast channel that streams and the CLI read, and
//! to each handler's bounded queue.

use std::path::{Path, PathBuf};

use globset::GlobMatcher;
use tokio::sync::{broadcast, mpsc};

use super::HandlerKey;
use super::read::Files;
use crate::error::ConfigError;
use crate::event::ChangeEvent;

struct HandlerSlot {
    key: HandlerKey,
    name: String,
    glob: Option<GlobMatcher>,
    tx: mpsc::Sender<ChangeEvent>,
}

/// Where events go.
pub(super) struct Notifier {
    root: PathBuf,
    events: broadcast::Sender<ChangeEvent>,
    handlers: Vec<HandlerSlot>,
}

impl Notifier {
    pub fn new(root: PathBuf, events: broadcast::Sender<ChangeEvent>) -> Notifier {
        Notifier { root, events, handlers: Vec::new() }
    }

    pub fn add(&mut self, key: HandlerKey, name: String, glob: Option<GlobMatcher>, tx: mpsc::Sender<ChangeEvent>) {
        self.handlers.push(HandlerSlot { key, name, glob, tx });
    }

    /// Drops a handler's queue: its task finishes what it has, then ends.
    pub fn remove(&mut self, key: HandlerKey) {
        self.handlers.retain(|h| h.key != key);
    }

    /// Whether anyone would see an event: building events that nobody
    /// reads (redacting values, say) is skipped otherwise.
    pub fn has_listeners(&self) -> bool {
        self.events.receiver_count() > 0 || !self.handlers.is_empty()
    }

    /// Sends `event` to every handler it routes to, then to the channel.
    /// A full handler queue drops the event for that handler (counted).
    pub fn emit(&self, event: ChangeEvent, files: &Files) {
        metrics::counter!("relive_events_total", "kind" => event.kind()).increment(1);
        for slot in &self.handlers {
            if !self.routes(slot, &event, files) {
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
    /// config event by any of the config's files, a change set by any of
    /// its configs' files.
    fn routes(&self, slot: &HandlerSlot, event: &ChangeEvent, files: &Files) -> bool {
        if matches!(event, ChangeEvent::HandlerFailed { .. }) {
            return false;
        }
        let Some(glob) = &slot.glob else { return true };
        let matches = |p: &Path| p.strip_prefix(&self.root).is_ok_and(|rel| glob.is_match(rel));
        match event {
            ChangeEvent::ConfigChanged { files, .. } => files.iter().any(|f| matches(f)),
            // A set goes to the handlers of any of its configs.
            ChangeEvent::ChangeSetApplied { configs, .. } => {
                configs.iter().any(|name| files.of_config(name).any(|f| matches(f)))
            }
            _ => match (event.path(), event.config_name()) {
                (Some(path), _) => matches(path),
                (None, Some(name)) => files.of_config(name).any(|f| matches(f)),
                _ => false,
            },
        }
    }
}

/// The event for a rejected config, counted and logged.
pub(super) fn rejected(name: &str, error: ConfigError) -> ChangeEvent {
    metrics::counter!("relive_reloads_total", "config" => name.to_string(), "result" => "rejected").increment(1);
    tracing::warn!(config = name, error = %error, "config rejected; keeping the last good value");
    ChangeEvent::ValidationFailed { config_name: name.to_string(), error: std::sync::Arc::new(error) }
}
