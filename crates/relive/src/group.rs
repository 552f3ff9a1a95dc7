//! Groups: several configs as one typed value, validated together and
//! applied together.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::engine::sink::{GroupSink, GroupSinkFactory};
use crate::error::{Error, ValidationError};
use crate::stream::{ConfigStream, Live, TypedSink, Validator, check};
use crate::workspace::Workspace;

/// Sets up a group of configs that go together: from
/// [`Workspace::group`](crate::Workspace::group).
///
/// `T` deserializes from an object with one key per member, holding that
/// member's value: for `["server", "proxy"]`, a
/// `struct Net { server: Server, proxy: Proxy }`. A change to any member is
/// validated with the others' current values; the members' new values and
/// the group's value become live together, for every subscriber of each
/// member and of the group, or not at all. Members written a few
/// milliseconds apart (a deploy script, `git checkout`) wait out
/// [`change_set_window_ms`](crate::HotReloadConfig::change_set_window_ms)
/// so that they are one change.
///
/// An error names the member it is about and points at that member's file,
/// line and column: a type error by where it is; a validator's error by
/// the key it gives to [`ValidationError::at`], whose first segment is the
/// member (`ValidationError::at("proxy.target", ..)`); a validator's error
/// without a key is put on the first member.
///
/// ```no_run
/// # async fn f(ws: relive::Workspace) -> relive::Result<()> {
/// #[derive(serde::Deserialize)]
/// struct Server { port: u16 }
/// #[derive(serde::Deserialize)]
/// struct Proxy { target_port: u16 }
/// #[derive(serde::Deserialize)]
/// struct Net { server: Server, proxy: Proxy }
///
/// let net = ws
///     .group::<Net>(["server", "proxy"])
///     .validate(|n: &Net| {
///         if n.proxy.target_port == n.server.port {
///             Ok(())
///         } else {
///             Err(relive::ValidationError::at("proxy.target_port", "must be the server's port"))
///         }
///     })
///     .live()
///     .await?;
/// # Ok(()) }
/// ```
pub struct GroupBuilder<'w, T> {
    ws: &'w Workspace,
    members: Vec<String>,
    validators: Vec<Validator<T>>,
}

impl<'w, T> GroupBuilder<'w, T>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    pub(crate) fn new(ws: &'w Workspace, members: Vec<String>) -> GroupBuilder<'w, T> {
        GroupBuilder { ws, members, validators: Vec::new() }
    }

    /// Adds a validator, which sees every member. A value is applied only
    /// if every validator accepts it. Return [`ValidationError::at`] with a
    /// key that starts with a member's name to point at that member's
    /// file, line and column.
    pub fn validate<F, E>(mut self, f: F) -> Self
    where
        F: Fn(&T) -> Result<(), E> + Send + Sync + 'static,
        E: Into<ValidationError>,
    {
        self.validators.push(Arc::new(move |v: &T| f(v).map_err(Into::into)));
        self
    }

    /// Starts watching: returns the stream once the members' current
    /// values are loaded and accepted. Fails if a member is missing or
    /// their values do not pass, naming the member.
    pub async fn watch(self) -> Result<ConfigStream<T>, Error> {
        let GroupBuilder { ws, members, validators } = self;
        if members.is_empty() {
            return Err(Error::Group { members, message: "a group needs at least one member".to_string() });
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = members.iter().find(|m| !seen.insert(m.as_str())) {
            return Err(Error::Group { members: members.clone(), message: format!("member `{twice}` is named twice") });
        }
        let (parts_tx, parts_rx) = tokio::sync::oneshot::channel();
        let factory: GroupSinkFactory = Box::new(move |value, members, run_validators| {
            let initial = Arc::new(check(&validators, value, members, run_validators)?);
            let (tx, rx) = watch::channel(Arc::clone(&initial));
            let live = Arc::new(ArcSwap::new(initial));
            let _ = parts_tx.send((rx, Arc::clone(&live)));
            let sink: Box<dyn GroupSink> = Box::new(TypedSink { tx, live, validators });
            Ok(sink)
        });
        ws.engine().await?.subscribe_group(members, factory).await?;
        let (rx, live) = parts_rx.await.map_err(|_| Error::Stopped)?;
        Ok(ConfigStream::from_parts(rx, live))
    }

    /// Starts watching and returns only the lock-free handle.
    pub async fn live(self) -> Result<Live<T>, Error> {
        Ok(self.watch().await?.live())
    }
}
