//! relive: typed, validated hot reload of configuration, templates and
//! assets.
//!
//! Point a [`Workspace`] at a directory with `config/`, `templates/` and
//! `static/`, and ask for a config as a type. relive watches the files,
//! and when one changes it reads, parses, merges overlays, deserializes and
//! validates the new value before anyone sees it. A value that fails is
//! never delivered: readers keep the last good one, and a
//! [`ChangeEvent::ValidationFailed`] says why, with file, line and column.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Server {
//!     port: u16,
//!     workers: usize,
//! }
//!
//! let dir = tempfile::tempdir()?;
//! std::fs::create_dir(dir.path().join("config"))?;
//! std::fs::write(dir.path().join("config/server.toml"), "port = 8080\nworkers = 4\n")?;
//!
//! let ws = relive::Workspace::new(dir.path());
//! let mut server = ws
//!     .config::<Server>("server")
//!     .validate(|s: &Server| if s.workers == 0 { Err("workers must be at least 1") } else { Ok(()) })
//!     .watch()
//!     .await?;
//! assert_eq!(server.current().port, 8080);
//!
//! // Hot paths read through a lock-free handle.
//! let live = server.live();
//!
//! // An invalid value is never delivered...
//! std::fs::write(dir.path().join("config/server.toml"), "port = 8080\nworkers = 0\n")?;
//! // ...a valid one is, as soon as the writer closes the file.
//! std::fs::write(dir.path().join("config/server.toml"), "port = 9090\nworkers = 2\n")?;
//! let next = server.next().await.expect("engine running");
//! assert_eq!((next.port, next.workers), (9090, 2));
//! assert_eq!(live.load().port, 9090);
//! # Ok(())
//! # }
//! ```
//!
//! # How changes are seen
//!
//! relive builds and watches natively on Linux, macOS and Windows; which
//! backend runs is [`HotReloadConfig::backend`] ([`Backend`]):
//!
//! | platform | backend | a file is read when |
//! | --- | --- | --- |
//! | Linux | inotify, read directly (default) | its writer closes it, or renames it into place; under a read lease |
//! | macOS | portable: FSEvents through `notify` | no event came for it for 10 ms |
//! | Windows | portable: `ReadDirectoryChangesW` through `notify` | no event came for it for 10 ms |
//! | BSDs | portable: kqueue through `notify` | no event came for it for 10 ms |
//!
//! On Linux relive reads inotify itself. A file is read when its writer
//! closes it (`IN_CLOSE_WRITE`) or renames it into place, not after a fixed
//! delay, so changes arrive in well under a millisecond; and it reads under
//! a read lease, which the kernel grants only while no writer has the file
//! open, so a half-written file is never read.
//!
//! Elsewhere the portable backend runs ([`Backend::Portable`], also
//! available on Linux, where `RELIVE_BACKEND=portable` selects it). It has
//! neither close events nor leases, so it keeps the promise of whole reads
//! another way: a path is read once it has been free of events for a short
//! quiet window (10 ms); a read during which the file's size or
//! modification time moved is thrown away and retried; a read that comes
//! back shorter than the file was is believed only after a second read
//! that no event interrupted, and only once the file has been unmodified
//! for 50 ms (a writer that truncated it and stalled leaves it short); and
//! the event queue is drained after the read and again before the commit,
//! deferring the value if its file changed meanwhile. Close events that
//! `notify` reports on Linux are ignored on purpose, so that the portable
//! backend behaves the same on every platform: its tests on Linux (CI runs
//! the engine's and the CLI's suites a second time with
//! `RELIVE_BACKEND=portable`) test the code macOS and Windows users run.
//! Where its guarantee is weaker, "Known problems" says so.
//!
//! With either backend, the changes editors and deploy tools really make
//! all work: in-place writes, atomic saves (temp file + rename), vim's
//! backup-and-rename, JetBrains' safe write, Kubernetes ConfigMap `..data`
//! symlink swaps, deletes and re-creates, bursts (coalesced; the last
//! value wins), and no-op saves (content hashes: nothing is delivered). A
//! lost-events report (a kernel queue overflow) triggers a rescan. Where
//! there are no events (on Linux: NFS, SMB, 9P, FUSE, the watch limit or
//! the limit on inotify instances reached; anywhere: [`Polling::Always`])
//! relive polls, with a warning.
//!
//! # Configs
//!
//! Config `name` is `config/name.{toml,yaml,yml,json}`, deep-merged with the
//! overlay `config/name.<env>.<ext>` for the environment (`RELIVE_ENV`, or
//! [`Workspace::with_env`]). Subdirectories give names like `db/main`.
//!
//! # Secrets
//!
//! A config file that carries SOPS metadata (YAML or JSON as the `sops`
//! command writes them) is decrypted with an age identity before it is
//! merged ([`sops`], [`HotReloadConfig::age_key_files`]). A string value
//! `"${file:PATH}"` is replaced by the file's content and `"${env:NAME}"` by
//! the variable; referenced files are watched wherever they are. Encrypted
//! and referenced values are secrets whatever their keys: they are redacted
//! by path, besides the key names of [`Redactor`], in events, diffs and
//! [`LoadedConfig::redacted_value`], and an error about a secret never
//! quotes it. History stores files as they are on disk (encrypted, or the
//! reference).
//!
//! # Layers
//!
//! A config is its base file, the overlay for the environment, and the
//! environment layer above both: `RELIVE__SERVER__PORT=8080` sets `port` of
//! config `server` ([`EnvLayer`], [`HotReloadConfig::env_layer`]).
//! [`LoadedConfig::layers`] says which layer set each value. A
//! `relive.toml` at the workspace's root sets redaction patterns, limits,
//! age key files and the environment layer for the library and the CLI.
//!
//! # Hostile input
//!
//! A document is checked against [`Limits`] before and while it is parsed:
//! its size before it is read, the nesting of YAML flow collections before
//! the parser sees it, and a budget of values and depth while the value is
//! built (YAML aliases counted at each expansion). A FIFO, socket or device
//! in the tree is refused without a blocking open. A panic in a validator or
//! `Deserialize` impl rejects that value. In each case the last good value
//! stays and the other configs keep reloading. A file rejected for going
//! over the limits is read again at most every 100 ms while it keeps
//! changing, so a writer that rewrites it without pause cannot take the
//! engine thread from the other configs (a fix of it is seen within that
//! time).
//!
//! # History and rollback
//!
//! Every version of a config that is applied or rejected is recorded under
//! `data/history/` ([`HistoryConfig`]): its files as they were, a hash, the
//! time, the environment, the error if it was rejected, and a diff from the
//! version before with secrets redacted. [`Workspace::history`],
//! [`Workspace::version`] and [`Workspace::diff`] read it, with or without
//! a running engine; [`Workspace::rollback`] writes an old version back to
//! its files, so that it is validated and applied like any change. The
//! engine hands versions to a thread of its own: a reload never waits for a
//! disk. The store survives a crash at any point: a record is complete or
//! absent, and a damaged one is skipped with a warning.
//!
//! Each version records the [`ChangeSetId`] of the change set it was
//! applied in: [`Workspace::change_sets`] groups every config's versions by
//! set, and [`Workspace::rollback_change_set`] (undo a set) and
//! [`Workspace::restore_change_set`] (back to a set's versions) write every
//! config's files under one [`Workspace::hold`], so that they are applied,
//! and recorded, as one change set. A rollback of a base and its overlay is
//! one version.
//!
//! History holds secrets, so it is private: `data/` and the directories
//! relive creates under it are 0700, its files 0600, whatever the umask (a
//! wider `data/` is narrowed, with a warning). A file that resolves through
//! a symlink to outside the workspace is recorded without its content
//! ([`DocumentInfo::withheld`]). A rollback writes only to relative paths
//! under `config/` that resolve inside `config/`, over regular files, and
//! refuses any other record; the file it replaces keeps its mode and owner.
//!
//! # Change sets and groups
//!
//! Configs that change together are applied together: every step of the
//! engine that applies values is one change set, with a [`ChangeSetId`]
//! that the history records, and its configs' `ConfigChanged` events are
//! followed by one [`ChangeEvent::ChangeSetApplied`]. Every value of a set
//! is prepared (deserialized and validated by every subscriber) before any
//! is committed.
//!
//! Configs that must agree with each other are a group:
//! [`Workspace::group`] gives one typed value for several configs, with
//! validators that see all of them. A change to any member is validated
//! with the others as they are on disk, and every member's new value is
//! committed, to the members' own subscribers and to the group's, or none
//! is. A refusal names the member, with its file, line and column.
//!
//! ```no_run
//! # async fn f(ws: relive::Workspace) -> relive::Result<()> {
//! #[derive(serde::Deserialize)]
//! struct Server { port: u16 }
//! #[derive(serde::Deserialize)]
//! struct Proxy { target: u16 }
//! #[derive(serde::Deserialize)]
//! struct Net { server: Server, proxy: Proxy }
//!
//! let net = ws
//!     .group::<Net>(["server", "proxy"])
//!     .validate(|n: &Net| match n.proxy.target == n.server.port {
//!         true => Ok(()),
//!         false => Err(relive::ValidationError::at("proxy.target", "must be the server's port")),
//!     })
//!     .live()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! What makes several files one change:
//!
//! | writer | how |
//! | --- | --- |
//! | a deploy script, `git checkout`, `rsync` (members or a base and overlay written a few ms apart) | the members wait [`HotReloadConfig::change_set_window_ms`] (10 ms, restarted by each change, at most ten times); a config of one file in no group is not delayed |
//! | a Kubernetes ConfigMap `..data` swap | one step for every config it changes |
//! | a tool that wants certainty (`relive apply`) | [`Workspace::hold`]: the engine applies nothing while the [`Hold`] exists, then everything pending as one set |
//! | a source in code (etcd) | [`HotReloadManager::publish_set`]: the whole set or nothing, the error naming the config |
//!
//! # Known problems
//!
//! - Polling cannot see whether a writer is done: a file is read once it
//!   has been quiet for [`HotReloadConfig::debounce_ms`], which can catch a
//!   writer that paused longer than that mid-file.
//! - A writer that keeps a file open without closing it is read after
//!   [`HotReloadConfig::write_timeout_ms`] of silence.
//! - A file already half-written when its directory is first watched (at
//!   start, or in a directory just created) is read as it is; the writer's
//!   close then delivers the whole file.
//! - Files reached through a symlinked *directory* are not watched; only
//!   symlinked files next to a changing directory or symlink are re-read
//!   (which is what Kubernetes does).
//! - relive proves that no writer has a file open with a read lease
//!   (`F_SETLEASE`), which needs the file's owner or `CAP_LEASE`. Without
//!   one, a file that shrinks is delivered only after a confirming re-read a
//!   few milliseconds later, and a write whose event the kernel queues late
//!   could in principle slip through. While relive holds a lease (for the
//!   microseconds of one read) a writer's `open(2)` waits.
//! - A config made of several files (a base and an overlay), or a member
//!   of a group, is reloaded once none of its files changed for
//!   [`HotReloadConfig::change_set_window_ms`] (10 ms): a writer that
//!   pauses longer than that between two files has its mix validated in
//!   between (a group's validator refuses it; a lone config with an
//!   overlay has no validator that sees both, and may apply it). Tools
//!   that want certainty take a [`Hold`] (`relive apply`). A ConfigMap
//!   swap, a released hold and a published set need no window.
//! - A [`Hold`] is obeyed for at most
//!   [`HotReloadConfig::hold_timeout_ms`] (30 s), and not at all once its
//!   process is gone (on Windows only the bound applies): a copy that
//!   takes longer is applied in parts. An engine in another process
//!   notices a release within 5 ms.
//! - Files that secret references read are looked at every 250 ms (their
//!   metadata, symlinks followed), not watched by events: a rotation is
//!   seen within that time. A reference inside a SOPS-encrypted value is
//!   found only once the file decrypts; while it does not, a missing
//!   referenced file it names is not looked at.
//! - History keeps config files as they are on disk: a secret written in
//!   clear in a file (not encrypted, not referenced) is in its history copy,
//!   which is private (0600) but not redacted.
//! - The environment layer is read when the engine starts (and at each
//!   one-shot load): variables set later in the process are not seen.
//! - Age identities are read when the engine starts: a key added to
//!   `keys.txt` later is used after a restart.
//! - One engine per workspace records history (it holds a lock on
//!   `data/history/.lock`); a second one, in another process or for another
//!   environment of the same workspace, records nothing and says so.
//! - The portable backend (macOS, Windows, the BSDs, and Linux with
//!   `RELIVE_BACKEND=portable`) sees no closes: a writer that pauses for
//!   longer than its 10 ms quiet window in the middle of a file can have
//!   the part written so far read, and delivered if it parses and
//!   validates (the whole file follows when the writer is done); with
//!   inotify the writer's close is awaited. For the same reason a writer
//!   that keeps a file open is read 10 ms after its last write, not after
//!   [`HotReloadConfig::write_timeout_ms`], which only inotify uses. A
//!   save that makes a file shorter is delivered about 50 ms later than
//!   others. Its fences are weaker than inotify's: events reach relive
//!   through `notify`'s own thread, so a write that raced with a read may
//!   be noticed only after the value was committed (the next value then
//!   follows at once). Editors, deploy tools and Kubernetes write whole
//!   files quickly or rename them into place, and those are the cases it
//!   is tested on.
//! - [`HotReloadConfig::watch_limit`] counts inotify watches: the portable
//!   backend watches each directory under the root recursively and ignores
//!   it. Network filesystems are detected (and polled) on Linux only; on
//!   macOS and Windows a share mounted from another machine reports only
//!   this machine's changes: set [`Polling::Always`] for one.
//! - macOS and Windows builds are type-checked by this repository's CI
//!   (`cargo check --all-targets` for x86_64 and aarch64 macOS and x86_64
//!   Windows, MSVC and GNU), not run: CI runs on Linux. The portable
//!   backend's code is run there through `notify`'s inotify, not through
//!   FSEvents or `ReadDirectoryChangesW`. See the README.
//!
//! # Metrics
//!
//! relive records through the [`metrics`] facade (install any recorder):
//! `relive_reloads_total{config,result}`, `relive_reload_duration_seconds{config}`,
//! `relive_events_total{kind}`, `relive_rescans_total{reason}`,
//! `relive_polling_fallbacks_total`, `relive_watches`,
//! `relive_handler_failures_total`, `relive_handler_events_dropped_total`.

#![deny(missing_docs)]

mod changeset;
mod coalesce;
mod config;
mod document;
mod engine;
mod envlayer;
mod error;
mod event;
mod format;
mod group;
mod handler;
mod history;
mod hold;
mod inventory;
#[cfg(target_os = "linux")]
mod lease;
mod locate;
mod paths;
mod private;
mod redact;
pub mod sops;
mod stream;
mod watch;
mod workspace;

pub use changeset::{ChangeSetId, ParseChangeSetIdError};
pub use config::{Backend, HotReloadConfig, Limits, Polling};
pub use document::Document;
pub use engine::{PauseGuard, WatcherMode};
pub use envlayer::EnvLayer;
pub use error::{ConfigError, ConfigErrorKind, Error, Result, ValidationError};
pub use event::{ChangeEvent, ChangeType};
pub use format::Format;
pub use group::GroupBuilder;
pub use handler::{HandlerError, HandlerFn, ReloadHandler, handler_fn};
pub use history::{
    ChangeSet, ChangeSetMember, Diff, DiffEntry, DocumentInfo, History, HistoryConfig, HistoryEntry, HistoryWarning,
    Version, VersionStatus,
};
pub use hold::Hold;
pub use inventory::{ConfigFiles, Layer, LoadedConfig};
pub use paths::{ConfigPath, config_path};
pub use redact::{REDACTED, Redactor};
pub use stream::{ConfigBuilder, ConfigStream, Live, Validate};
pub use workspace::{HandlerId, HotReloadManager, Workspace};
