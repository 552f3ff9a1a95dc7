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

/// What the engine drives for a group: one typed subscriber of several
/// configs at once, whose value is an object with one key per member.
pub(crate) trait GroupSink: Send {
    /// Deserializes and validates the group's `value`; returns a commit
    /// that makes it live, or the error and the member it is about.
    fn prepare(&self, value: &Value, members: &Members<'_>, run_validators: bool) -> Result<Commit, MemberError>;
    /// True once no stream or `Live` handle is left.
    fn is_closed(&self) -> bool;
}

/// Builds a group's subscriber from its members' current values, on the
/// engine's thread.
pub(crate) type GroupSinkFactory =
    Box<dyn FnOnce(&Value, &Members<'_>, bool) -> Result<Box<dyn GroupSink>, MemberError> + Send>;

/// A group's members and their documents, to locate an error on the member
/// its key names.
pub(crate) struct Members<'a> {
    /// Name and documents of each member, in the group's order.
    pub members: Vec<(&'a str, &'a Sources)>,
}

/// An error about one member of a group.
#[derive(Debug, Clone)]
pub(crate) struct MemberError {
    /// The member the error is located on.
    pub member: String,
    /// The error, at the member's file, line and column.
    pub error: Box<ConfigError>,
}

impl MemberError {
    /// The error `error`, about member `member`.
    pub fn new(member: impl Into<String>, error: ConfigError) -> MemberError {
        MemberError { member: member.into(), error: Box::new(error) }
    }
}

impl Members<'_> {
    /// The error about group key `key` (`proxy.target`): located on the
    /// member its first segment names, at the rest of the key. A key that
    /// names no member (a validator's error without a key) is put on the
    /// group's first member, without a position.
    pub fn error_at(&self, kind: crate::error::ConfigErrorKind, key: &str, message: String) -> MemberError {
        let named = self
            .members
            .iter()
            .filter(|(name, _)| {
                key.strip_prefix(name).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            })
            .max_by_key(|(name, _)| name.len());
        match named {
            Some((name, sources)) => {
                let rest = key[name.len()..].trim_start_matches('.');
                MemberError::new(name.to_string(), sources.error_at(kind, rest, message))
            }
            None => match self.members.first() {
                Some((name, sources)) => MemberError::new(name.to_string(), sources.error_at(kind, "", message)),
                None => MemberError::new(String::new(), ConfigError::new(kind, message)),
            },
        }
    }
}

/// Where the errors of a typed value are located: in one config's files
/// ([`Sources`](crate::document::Sources)), or in the member of a group
/// that a key names ([`Members`]). What the typed sinks of a config and of
/// a group share.
pub(crate) trait Locate {
    /// The located error.
    type Error;
    /// An error of `kind` about `key` (`a.b[2]`, or empty for the whole).
    fn error_at(&self, kind: crate::error::ConfigErrorKind, key: &str, message: String) -> Self::Error;
}

impl Locate for crate::document::Sources {
    type Error = crate::error::ConfigError;
    fn error_at(&self, kind: crate::error::ConfigErrorKind, key: &str, message: String) -> Self::Error {
        crate::document::Sources::error_at(self, kind, key, message)
    }
}

impl Locate for Members<'_> {
    type Error = MemberError;
    fn error_at(&self, kind: crate::error::ConfigErrorKind, key: &str, message: String) -> Self::Error {
        Members::error_at(self, kind, key, message)
    }
}
