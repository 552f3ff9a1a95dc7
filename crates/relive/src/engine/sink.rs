//! The contract between the engine and a config's subscribers: prepare
//! every one, then commit every one.
//!
//! A [`Sink`] is one typed subscriber of a config with its type erased
//! (`stream.rs` implements it for `ConfigStream<T>`/`Live<T>`). The engine
//! calls [`Sink::prepare`] on each; only when all of them accept does it run
//! the [`Commit`]s, which cannot fail. So a change is applied to every
//! subscriber of a config or to none, by construction rather than by
//! convention.

use serde_json::Value;

use crate::document::Sources;
use crate::error::ConfigError;

/// Builds a subscriber from the config's current value (or its load error),
/// on the engine's thread. Returns the sink and, when a default stood in for
/// a bad value, the error to report.
pub(crate) type SinkFactory = Box<
    dyn FnOnce(
            Result<(&Value, &Sources), ConfigError>,
            bool,
        ) -> Result<(Box<dyn Sink>, Option<ConfigError>), ConfigError>
        + Send,
>;

/// What the engine drives: one typed subscriber of a config, type-erased.
pub(crate) trait Sink: Send {
    /// Deserializes and validates `value`; returns a commit that makes it
    /// live. Nothing is visible to readers until the commit runs, so a
    /// change is applied to every subscriber or to none.
    fn prepare(&self, value: &Value, sources: &Sources, run_validators: bool) -> Result<Commit, ConfigError>;
    /// True once no stream or `Live` handle is left.
    fn is_closed(&self) -> bool;
}

/// Makes a prepared value live.
pub(crate) type Commit = Box<dyn FnOnce() + Send>;
