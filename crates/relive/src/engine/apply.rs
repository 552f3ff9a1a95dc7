//! One config's subscribers, and the all-or-nothing rule: a value is
//! prepared by every subscriber (deserialized into its type, validated)
//! before any of them commits it.
//!
//! User code runs here (validators and `Deserialize` impls, inside
//! `prepare`, and a stream's setup, inside its factory). A panic in it is
//! caught and becomes a rejection of that value for that config: the engine
//! thread, the other configs and the last good value carry on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use serde_json::Value;

use super::sink::{Commit, GroupSink, Sink, SinkFactory};
use crate::document::{SecretPaths, Sources};
use crate::error::{ConfigError, ConfigErrorKind};

/// The result of preparing a value with every subscriber.
pub(super) enum Prepared {
    /// Accepted by all: run these to make it live.
    Ready(Vec<Commit>),
    /// The same data as the live value.
    Unchanged,
    /// Refused by a subscriber.
    Rejected(ConfigError),
}

/// A group of configs as the engine holds it: its members and its
/// subscribers.
pub(super) struct GroupState {
    pub members: Vec<String>,
    pub sinks: Vec<Box<dyn GroupSink>>,
}

/// One config as the engine holds it.
#[derive(Default)]
pub(super) struct ConfigState {
    /// The last applied value (unredacted), `None` until one is.
    pub value: Option<Arc<Value>>,
    /// The paths of the values in it that are secret by where they came
    /// from (SOPS, references), for redacting it later.
    pub secrets: SecretPaths,
    sinks: Vec<Box<dyn Sink>>,
    /// Fed by [`HotReloadManager::publish`](crate::HotReloadManager::publish),
    /// not by files.
    pub external: bool,
    /// For a published config: the documents of its live value, to locate
    /// errors of subscribers that come later.
    pub published: Option<Sources>,
}

impl ConfigState {
    /// Deserializes and validates `merged` with every subscriber, stopping at
    /// the first that refuses it. Nothing is live until the commits run.
    pub fn prepare(&mut self, merged: &Value, sources: &Sources, validate: bool) -> Prepared {
        if self.value.as_deref() == Some(merged) {
            return Prepared::Unchanged;
        }
        self.sinks.retain(|s| !s.is_closed());
        let mut commits = Vec::with_capacity(self.sinks.len());
        for sink in &self.sinks {
            let prepared = catch_unwind(AssertUnwindSafe(|| sink.prepare(merged, sources, validate)));
            match prepared.unwrap_or_else(|panic| Err(panicked(&*panic))) {
                Ok(commit) => commits.push(commit),
                Err(error) => return Prepared::Rejected(error),
            }
        }
        Prepared::Ready(commits)
    }

    /// Makes a prepared value live for every subscriber; returns the value
    /// it replaced. Commits cannot fail.
    pub fn commit(
        &mut self,
        commits: Vec<Commit>,
        merged: Arc<Value>,
        secrets: SecretPaths,
    ) -> Option<(Arc<Value>, SecretPaths)> {
        for commit in commits {
            commit();
        }
        let old_secrets = std::mem::replace(&mut self.secrets, secrets);
        self.value.replace(merged).map(|old| (old, old_secrets))
    }

    /// Adds a subscriber, built by `factory` from the live value (or, before
    /// there is one, from `sources`). Returns the error to report when a
    /// default stood in for a bad value.
    pub fn subscribe(
        &mut self,
        sources: Result<Sources, ConfigError>,
        factory: SinkFactory,
        validate: bool,
    ) -> Result<Option<ConfigError>, ConfigError> {
        let applied = self.value.clone();
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
        let built = catch_unwind(AssertUnwindSafe(|| factory(loaded, validate)));
        let (sink, warning) = built.unwrap_or_else(|panic| Err(panicked(&*panic)))?;
        if self.value.is_none() && self.sinks.is_empty() && warning.is_none() {
            self.value = fresh.map(Arc::new);
            if let Ok(sources) = &sources {
                self.secrets = sources.secrets();
            }
        }
        self.sinks.push(sink);
        Ok(warning)
    }
}

/// A panic in a validator or `Deserialize` impl, as the rejection of the
/// value it was looking at.
pub(super) fn panicked(panic: &(dyn std::any::Any + Send)) -> ConfigError {
    // The first line only, and short: a panic message is user text that
    // may quote the value it choked on.
    let message = crate::handler::panic_message(panic);
    let mut message: String = message.lines().next().unwrap_or("").chars().take(200).collect();
    if message.is_empty() {
        message = "no message".to_string();
    }
    ConfigError::new(ConfigErrorKind::Invalid, format!("a validator or Deserialize impl panicked: {message}"))
}
