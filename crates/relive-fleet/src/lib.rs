//! relive-fleet: many instances of a service, one configuration, through
//! etcd.
//!
//! An [`EtcdSource`] feeds a relive [`Workspace`](relive::Workspace) from
//! etcd instead of files: the same parse, merge, validation by every
//! subscriber, swap, events and history. A service reads its configs
//! through `ConfigStream<T>` and `Live<T>` either way, so it changes source
//! without changing its code. Each instance acknowledges or rejects every
//! version in a status key of its own, with the validation error when it
//! rejects one (like Envoy's NACK), so an operator sees which instances run
//! what.
//!
//! ```no_run
//! # #[derive(serde::Deserialize)] struct Server { port: u16 }
//! # async fn f() -> Result<(), relive_fleet::Error> {
//! let ws = relive::Workspace::new("/srv/shop");
//! let fleet = relive_fleet::EtcdSource::new("http://127.0.0.1:2379", "shop")?
//!     .instance("web-1")?
//!     .start(&ws)
//!     .await?;
//! let mut server = ws.config::<Server>("server").watch().await?;
//! while let Some(new) = server.next().await {
//!     println!("now on port {}", new.port);
//! }
//! fleet.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout in etcd
//!
//! Under a prefix per application (`/shop`):
//!
//! | key | value |
//! | --- | --- |
//! | `/shop/configs/<name>` | `# relive-format: toml` (or `yaml`, `json`), a newline, then the document |
//! | `/shop/instances/<id>/<name>` | the instance's [`Status`] for that config, JSON, on the instance's lease |
//!
//! A config's version is its key's `mod_revision`. A status is
//! `{"instance", "host", "config", "version", "applied_version", "state":
//! "applied"|"rejected", "error", "at"}`: `version` is the one it answers,
//! `applied_version` the one the instance serves. Publish a config with
//! `etcdctl`:
//!
//! ```text
//! { echo '# relive-format: toml'; cat server.toml; } | etcdctl put /shop/configs/server
//! ```
//!
//! See [`layout`] for the details and the reserved names.
//!
//! # How the source behaves
//!
//! - It reads every config under the prefix, publishes each, then watches
//!   from the next revision. Every version is applied or rejected, and the
//!   instance's status key says which.
//! - After a disconnect it reconnects with bounded exponential backoff
//!   ([`EtcdSource::backoff`], with jitter) and resumes the watch from the
//!   last revision it handled, so no version is skipped.
//! - If etcd compacted that revision, it re-reads every config and goes on
//!   from the newest values (versions in between are never seen, by
//!   anyone).
//! - While etcd is unreachable the services keep their last good values.
//! - Each applied value is written to a local cache
//!   (`data/fleet/<prefix>/configs/<name>.cached`, replaced atomically); an
//!   instance that boots while etcd is down starts from it
//!   ([`Boot::Cache`]), and catches up when etcd answers.
//! - Status keys are attached to a lease kept alive while the source runs:
//!   [`FleetSource::shutdown`] revokes it, and an instance that dies loses
//!   them when the lease expires ([`EtcdSource::lease_ttl`]).
//! - Deleting a config key does not unload the config: instances keep its
//!   last value (and their cache of it).
//!
//! # etcd settings
//!
//! - **Auto-compaction.** etcd keeps every revision until compacted; a
//!   fleet that publishes often needs `--auto-compaction-mode=periodic
//!   --auto-compaction-retention=1h` (or `revision` mode). An instance that
//!   was away longer than the retention re-reads everything on return,
//!   which is correct but skips the versions in between.
//! - **Quota.** `--quota-backend-bytes` (2 GiB by default) bounds the
//!   store; compaction alone does not return space, `etcdctl defrag` does.
//!   Each instance writes one small status key per config per version.
//! - **Leases.** etcd's minimum lease TTL follows its election timeout
//!   (about 2 s by default); shorter TTLs are raised to it.
//!
//! # Building
//!
//! The etcd client is generated from protobuf definitions at build time and
//! needs `protoc`: `apt-get install protobuf-compiler` (or set `PROTOC`).
//! Without it the build stops in `etcd-client`'s build script with
//! "Could not find `protoc`. [...] To install it on Debian, run `apt-get
//! install protobuf-compiler`." (prost-build's message; a build script of
//! this crate would run too late to say it first). The tests start a
//! real `etcd` (`apt-get install etcd-server`); `scripts/test` installs
//! both when they are missing.
//!
//! # Known problems
//!
//! - A config published before any subscriber exists (at start) is checked
//!   only for syntax: validators run when a stream subscribes, and a
//!   subscription to an invalid value fails (or takes its default). The
//!   status says `applied` for it all the same.
//! - A status key holds the outcome of the last version only: an instance
//!   that rejected version 7 and then applied 8 shows only 8.

#![deny(missing_docs)]

mod backoff;
mod cache;
pub mod layout;
mod source;

pub use layout::{Layout, State, Status};
pub use source::{Boot, EtcdSource, FleetSource, SourceEvent};

/// An error from setting up the fleet source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A prefix, config name or instance id that cannot be part of a key.
    #[error(transparent)]
    InvalidName(#[from] layout::InvalidName),
    /// The workspace's engine failed.
    #[error(transparent)]
    Relive(#[from] relive::Error),
}
