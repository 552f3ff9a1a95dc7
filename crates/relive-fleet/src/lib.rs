//! relive-fleet: many instances of a service, one configuration, through
//! etcd.
//!
//! A [`FleetSourceBuilder`] starts a [`FleetSource`], which feeds a relive
//! [`Workspace`](relive::Workspace) from etcd instead of files: the same
//! parse, merge, validation by every subscriber, swap, events and history.
//! A service reads its configs through `ConfigStream<T>` and `Live<T>`
//! either way, so it changes source without changing its code. Each
//! instance acknowledges or rejects every version in a status key of its
//! own (a [`StatusRecord`]), with the validation error when it rejects one
//! (like Envoy's NACK), so an operator sees which instances run what.
//!
//! Operators publish through a [`Fleet`] ([`FleetBuilder::connect`]):
//! pushes with compare-and-set, canaries to a subset of the instances,
//! promote, abort, rollback, the versions etcd still holds and the fleet's
//! [`FleetStatus`]. A [`FleetAgent`] ([`FleetAgentBuilder::start`]) is an
//! instance for programs that read files: it writes each version into a
//! local workspace (sidecar mode). `relive fleet` is the command line over
//! all of it.
//!
//! Every builder is named after what it makes: [`FleetBuilder`] →
//! [`Fleet`], [`FleetSourceBuilder`] → [`FleetSource`],
//! [`FleetAgentBuilder`] → [`FleetAgent`]. The names before (`Admin`,
//! `EtcdSource`, `Agent`, `RunningAgent`, and `Status`, `State`,
//! `ConfigState`) remain as deprecated aliases.
//!
//! ```no_run
//! # #[derive(serde::Deserialize)] struct Server { port: u16 }
//! # async fn f() -> Result<(), relive_fleet::Error> {
//! let ws = relive::Workspace::new("/srv/shop");
//! let fleet = relive_fleet::FleetSourceBuilder::new("http://127.0.0.1:2379", "shop")?
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
//! | `/shop/configs/<name>` | `# relive-format: toml` (or `yaml`, `json`), a newline, optionally `# relive-by: <who>` and a newline, optionally `# relive-push: <id>` and a newline (a push's own id: see [`layout::PUSH_HEADER`]), then the document |
//! | `/shop/instances/<id>/<name>` | the instance's [`StatusRecord`] for that config, JSON, on the instance's lease |
//! | `/shop/canary/<name>` | a [`Canary`] in progress, JSON: the canary document (header included), the instances it goes to, the base version, who started it and when |
//! | `/shop/rollout/<name>` | the config's [`Rollout`], JSON: plan, document, base (stable) version, current wave, the instances of each wave, `phase` `running`\|`baking`\|`done`\|`stopped`\|`aborted` with its reason, who started it, when it changed; it stays after it ends |
//!
//! A config's version is its key's `mod_revision`. The configs written by
//! one transaction share it: a change set ([`Fleet::push_set`]) is the
//! config keys of one revision. A status is
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
//! # A secured etcd
//!
//! Every builder takes `https://` endpoints with a CA bundle
//! ([`FleetBuilder::ca_certificate`]), a client certificate for etcd's
//! `--client-cert-auth` ([`FleetBuilder::client_certificate`]) and an etcd
//! user ([`FleetBuilder::user`]); [`FleetSourceBuilder`] has the same, and
//! a [`FleetAgentBuilder`] uses its source's. The transport is
//! etcd-client's (rustls); etcd-client renews a user's token. A password
//! is sent in clear only to a loopback address, unless
//! [`FleetBuilder::insecure_plaintext`] ([`Error::Plaintext`]).
//!
//! [`Fleet::create_roles`] creates least-privilege roles for the prefix:
//! `<prefix>-operator` (read and write `configs/`, `canary/`, `rollout/`;
//! read `instances/`) and `<prefix>-instance` (read `canary/` and
//! `configs/`; write `instances/`). [`Fleet::add_instance`] creates the
//! role and user `<prefix>-instance-<id>`, which may write only
//! `instances/<id>/`: an instance can then neither push nor write another
//! instance's status. [`Fleet::add_operator`] grants the operator role.
//!
//! Every write of a [`Fleet`] records who made it in the config value's
//! `# relive-by:` line: the etcd user, else the client certificate's
//! subject (`O=shop,CN=alice`), at the host ([`Fleet::operator`]).
//! [`ConfigVersion::by`] and [`ConfigStatus::by`] show it.
//!
//! # Rollout
//!
//! ```no_run
//! # async fn f() -> Result<(), relive_fleet::Error> {
//! use relive_fleet::{FleetBuilder, Canaries, Draft, Expect};
//! let fleet = FleetBuilder::new("http://127.0.0.1:2379", "shop")?.connect().await?;
//! let draft = Draft::read("server.toml")?;
//! // To 10% of the instances first, if server is still at version 41.
//! let canary = fleet.canary("server", &draft, Expect::Version(41), &Canaries::Percent(10)).await?;
//! let status = fleet.status().await?.only("server");
//! // ... every canary instance SYNCED, none REJECTED ...
//! fleet.promote("server").await?;
//! # Ok(()) }
//! ```
//!
//! - **Push** ([`Fleet::push`]) parses the document locally with relive's
//!   own parser ([`Draft::check`]), then writes it in one transaction that
//!   requires the config to be at the expected version ([`Expect`]: the
//!   one read just before, or the one the operator names; 0 for "must not
//!   exist") and no canary of it to be in progress. Otherwise nothing is
//!   written and [`Error::Conflict`] says which key, the version it is at,
//!   the version expected and what to do. The same bytes as the current
//!   version write nothing ([`Pushed::unchanged`]). A push carries an id of
//!   its own (`# relive-push:`): when etcd's answer is lost (a member that
//!   died, a leader that changed), it sends the same transaction again and
//!   finds the version it wrote by that id, so it is one version and never
//!   a conflict with itself.
//! - **Push a change set** ([`Fleet::push_set`], `relive fleet push --set
//!   DIR`) writes several configs in one transaction: one revision, a
//!   compare-and-set on each config's expected version (and that none has
//!   a canary), one push id in every document. Every member is written,
//!   unchanged ones too, so the set is whole in its revision. An instance
//!   publishes the configs of one revision as one change set
//!   ([`relive::HotReloadManager::publish_set`]: every one or none, the
//!   groups they are in validated with them) and answers the set as a
//!   whole, its statuses in one transaction: all `applied`, or all
//!   `rejected`, the failing config's with its own error and the others'
//!   with `not applied: <config>, in the same change set (...), was
//!   rejected: <error>`.
//! - **Canary** ([`Fleet::canary`]) writes `/shop/canary/<name>` instead,
//!   with the same compare-and-set. Its instances are named, or chosen by
//!   percentage among the instances that report a status for the config at
//!   that moment: `ceil(n × p / 100)`, at least one, ordered by a hash of
//!   the config name and instance id ([`choose_canaries`]), so the choice
//!   is deterministic and spreads over instances across configs. The
//!   chosen ids are recorded, so the status is exact; an instance that
//!   joins later gets the stable version. A canary instance serves the
//!   canary's version (its key's `mod_revision`) and acknowledges it; the
//!   others never see it.
//! - **Promote** ([`Fleet::promote`]) writes the canary's document to the
//!   config key and deletes the canary key in one transaction (refused if
//!   the config key moved since the canary started); every instance
//!   converges on the new version. **Abort** ([`Fleet::abort`]) deletes
//!   the canary key; its instances return to the stable version and
//!   acknowledge it again.
//! - **Rollback** ([`Fleet::rollback`]) reads the config at a revision
//!   (which must be one of its versions: [`Error::NotAVersion`] names the
//!   nearest ones; [`Error::Compacted`] names etcd's compaction revision)
//!   and pushes those bytes as a new version. [`Fleet::versions`] lists the
//!   versions etcd still holds.
//! - **Status** ([`Fleet::status`]) reads configs, canaries and status keys
//!   in one transaction and gives, per live instance and config, the
//!   version served, the target (the canary's for its instances, else the
//!   config key's) and [`SyncState`]: `SYNCED`, `STALE` (behind, not
//!   rejected), `REJECTED` (with the reason) or `REMOVED` (the key was
//!   deleted).
//! - **Agent** ([`FleetAgent`]): an instance on a private workspace under
//!   `DIR/data/fleet-agent/` that writes every version it accepts to
//!   `DIR/config/<name>.<ext>` atomically (temp file in the same
//!   directory, fsync, rename, directory fsync) before acknowledging it;
//!   a version that does not parse is rejected and the file left alone.
//!
//! # Progressive rollouts
//!
//! [`Fleet::start_rollout`] stores a [`Rollout`] of a config (a [`Plan`]:
//! waves given as counts, percentages or labels ([`parse_waves`]), a bake
//! time, how many rejections are allowed, an optional gate) with
//! compare-and-set: one per config at a time ([`Error::RolloutInProgress`]).
//! [`Fleet::drive_rollout`] then takes it to its end from whatever state
//! etcd holds, so any process can resume it. Each wave is a canary of a
//! growing set (the waves before, plus the instances its selector adds, in
//! [`choose_canaries`]' order); the next starts once every instance of the
//! wave applied the version and the bake passed with none rejecting (beyond
//! [`Plan::max_rejected`]) and none vanishing, and the gate passed; the last
//! is promoted. Otherwise the rollout stops: the canary record goes to no
//! instance, marked with the reason, and every instance returns to the
//! stable version with `rollout aborted: <why>` in its status; then the
//! canary key is deleted. Every move is decided by [`step`], a pure
//! function of the state, an [`Observation`] and the time.
//!
//! Labels: [`FleetSourceBuilder::label`] (`zone=a`) is published in each
//! [`StatusRecord`]; a wave `zone=a` selects the live instances that have it.
//!
//! # How the source behaves
//!
//! - It reads every config under the prefix, publishes each, then watches
//!   from the next revision. Every version is applied or rejected, and the
//!   instance's status key says which.
//! - The configs of one revision (a change set, or a promotion) are
//!   published together, all or none, when watched, when read at
//!   connection (grouped by `mod_revision`) and when read from the cache.
//! - It talks to one member at a time: its watch and lease live on one
//!   connection anyway. When it loses that member it tries the next one at
//!   once, each in turn, and backs off only once every member failed. (A
//!   balanced channel over all members, rebuilt on each attempt, sent its
//!   first calls to a dead member, whose refusal is quicker than a live
//!   member's TLS handshake: an instance stayed deaf for as long as the
//!   member was down.)
//! - After a disconnect it reconnects with bounded exponential backoff
//!   ([`FleetSourceBuilder::backoff`], with jitter) and resumes the watch from the
//!   last revision it handled, so no version is skipped.
//! - If etcd compacted that revision, it re-reads every config and goes on
//!   from the newest values (versions in between are never seen, by
//!   anyone).
//! - While etcd is unreachable the services keep their last good values.
//! - Each applied value is written to a local cache
//!   (`data/fleet/<prefix>/configs/<name>.cached`, replaced atomically) by
//!   a thread of its own after the acknowledgement, at most every 100 ms
//!   while versions keep coming (the newest value wins; a clean shutdown
//!   writes what is queued); an instance that boots while etcd is down
//!   starts from it ([`Boot::Cache`]), and catches up when etcd answers.
//! - Status keys are attached to a lease kept alive while the source runs:
//!   [`FleetSource::shutdown`] revokes it, and an instance that dies loses
//!   them when the lease expires ([`FleetSourceBuilder::lease_ttl`]).
//! - Deleting a config key does not unload the config: instances keep its
//!   last value (and their cache of it).
//!
//! # etcd settings
//!
//! - **Auto-compaction.** etcd keeps every revision until compacted (3.4:
//!   off by default). Use `--auto-compaction-mode=periodic
//!   --auto-compaction-retention=1h`. Revision mode counts the fleet's own
//!   acknowledgements too: each version costs N+1 revisions for N
//!   instances, so `--auto-compaction-retention=1000` keeps less than one
//!   version at 1,000 instances (and 3.4 compacts in that mode only every
//!   5 minutes). An instance away longer than the retention re-reads
//!   everything on return: correct, but it skips the versions in between.
//! - **Quota.** `--quota-backend-bytes` (2 GiB by default). Past it etcd
//!   raises NOSPACE and refuses every write: pushes fail and instances
//!   cannot acknowledge. Recover with a compaction, `etcdctl defrag` (a
//!   compaction alone returns no space) and `etcdctl alarm disarm`.
//!   Measured: 100 instances × 200 versions of 1 KB = 41,922 revisions,
//!   8.9 MiB before compaction.
//! - **Size.** A config is one etcd request: at most `--max-request-bytes`
//!   (1.5 MiB by default; larger puts fail with "etcdserver: request is
//!   too large"). The source and `relive fleet status` decode responses of
//!   any size up to 1 GiB, so many large configs under one prefix are fine.
//! - **Leases.** The minimum lease TTL is 1.5 × `--election-timeout`,
//!   rounded up to whole seconds (2 s by default, 8 s at 5000 ms); shorter
//!   TTLs are raised to it. Each instance renews every TTL/3 (1,000
//!   instances at a 10 s TTL make about 300 keep-alives a second).
//! - **Keep-alive pings.** The source pings its connection every 6 s:
//!   etcd answers pings more frequent than its `--grpc-keepalive-min-time`
//!   (5 s by default) with GOAWAY when no data flows between them. Do not
//!   raise that setting above 6 s.
//! - **TLS: give gRPC the client port alone.** An etcd whose client port
//!   serves TLS and also HTTP (`/health`, `/metrics`, the JSON gateway)
//!   serves gRPC there through Go's HTTP/2 server instead of its own gRPC
//!   server, and every message costs it more CPU: measured with 100
//!   instances, etcd spent 1.7–2.2× plaintext's CPU per version, and the
//!   fleet took up to 1.31× as long at p99 (BENCHMARKS.md §12). etcd's
//!   `--listen-client-http-urls` moves HTTP to a port of its own; the
//!   client port then serves gRPC alone, natively: etcd's CPU was within
//!   10% of plaintext's, and the fleet's p99 0.82–1.11× plaintext's. etcd
//!   3.5.16 (Debian 13's) has the flag; 3.4.23 (Debian 12's) does not.
//! - **Partitions.** Instances and operators ask etcd to require a leader
//!   (etcd-client's `require_leader`): a member cut off from the others
//!   ends their streams and refuses their calls once it has had no leader
//!   for a few election timeouts, and they move to the next member. Give
//!   every instance more than one endpoint.
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
//! - A push checks syntax (and, from the CLI, a JSON Schema) only: the
//!   instances' own validators run on the instances, so a version they
//!   refuse shows as `REJECTED` after the push, not as a push error. A
//!   canary is the way to find out on a few instances first.
//! - Canary instances are chosen among those alive at push time, by id. A
//!   new process that reuses a canary instance's id gets the canary.
//! - A canary of a config that does not exist yet is refused: there would
//!   be no version for the others, nor for an abort to return to.
//! - [`Fleet::versions`] walks back one read per version, and only through
//!   versions since the key was last created: a config deleted and
//!   created again lists the new generation only.
//! - The `# relive-by:` line is what the writer's client says: etcd checks
//!   that the writer may write the key, not what it puts in that line.
//!   Instances of a version before this line existed read it as part of
//!   the document (a comment in TOML and YAML; JSON fails to parse); the
//!   same holds for the `# relive-push:` line.
//! - A push whose answers stay lost for longer than three request timeouts
//!   fails, and its error says the push may have been carried out and
//!   names its push id ([`ConfigVersion::push`], and `relive fleet versions
//!   --json`, show whether a version carries it). Starting a canary and
//!   promoting one carry an id too (in the canary's document, and in the
//!   version a promotion writes) and are sent again the same way. An abort
//!   deletes a key and carries no id: after a lost answer, a canary found
//!   gone with the config where it was counts as aborted, whoever deleted
//!   it.
//! - A change set is one revision: configs pushed one by one are not a
//!   set, and a canary or a rollout takes one config (a set is refused
//!   while one of its configs has a canary). A set holds at most
//!   [`MAX_SET`] configs (etcd's default `--max-txn-ops` is 128). An
//!   instance of a version before change sets applies a set's configs one
//!   by one.
//! - The agent writes a set's files one after the other, each atomically,
//!   under a hold on its directory (`DIR/data/hold`, as `relive apply`
//!   does): a relive engine on that directory (`relive watch`, a service's
//!   `Workspace`) applies them as one change set, but a program that reads
//!   the files itself may see a mix for a moment. If another process holds
//!   the directory for more than a second, the files are written without
//!   the hold, with a warning. A file it cannot write makes that config's
//!   status `rejected` while the others of the set say `applied`.
//! - A member cut off from the others is left only once it has had no
//!   leader for a few of its election timeouts (about 1.5 s at etcd's
//!   defaults, measured in `tests/partition.rs`): until then, it serves
//!   what it has and holds writes. An instance with one endpoint has
//!   nowhere to go and waits, with its last good values, for the partition
//!   to heal.
//! - `https://` endpoints trust only the CA certificates given: there are
//!   no system trust roots.
//! - A revoked credential stops an instance at its next reconnection (etcd
//!   may keep a watch it already granted open): it keeps its last good
//!   values and retries with backoff, each attempt's error in a
//!   [`SourceEvent::Disconnected`].
//! - Certificates, keys and the password are read when a source starts
//!   (a [`Fleet`] when it connects): a renewed certificate takes effect at
//!   the next start. An expired auth token is renewed by signing in again
//!   (etcd-client's, tested through a [`Fleet`]); a password changed or a
//!   user deleted meanwhile makes that fail with "authentication failed".
//! - An etcd with `--client-cert-auth` closes a TLS connection without a
//!   client certificate without saying why: the error says "connection
//!   closed", with that explanation added when no certificate was given.
//! - The agent rejects config names it cannot write as files: a dot in
//!   the last segment (`app.v2.toml` is config `app` for environment
//!   `v2`) or a segment that starts with `.`. When a config's format
//!   changes, the new file is renamed in before the old one is removed,
//!   so a reader may see both for a moment (relive reports the config
//!   ambiguous until the old one goes).
//! - `at` in statuses comes from each instance's clock, and a rollout's
//!   bake time from its driver's: a rollout resumed on a machine whose
//!   clock is ahead bakes less.
//! - An instance of a version before rollouts existed ignores the
//!   `aborted` mark of a stopped rollout's canary record: it returns to the
//!   stable version all the same (the record names no instance) but its
//!   status does not say why.
//! - A rollout's first wave starts at the driver's first step, not in the
//!   transaction that creates it: a push in between changes the config and
//!   the rollout stops, saying so.

#![deny(missing_docs)]

mod admin;
mod agent;
mod backoff;
mod cache;
mod connect;
mod draft;
pub mod layout;
mod roles;
mod rollout;
mod source;
mod status;

/// The largest etcd response the fleet decodes. tonic's default (4 MiB)
/// would make configs that total more than that under one prefix
/// unreadable, even though etcd accepts each of them (up to its
/// `--max-request-bytes`, 1.5 MiB by default): the first read of a source
/// and a status read return them all at once.
const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// A KV client of `client` that decodes responses up to
/// [`MAX_RESPONSE_BYTES`].
fn kv(client: &etcd_client::Client) -> etcd_client::KvClient {
    client.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// A watch client of `client` that decodes responses up to
/// [`MAX_RESPONSE_BYTES`].
fn watcher(client: &etcd_client::Client) -> etcd_client::WatchClient {
    client.watch_client().max_decoding_message_size(MAX_RESPONSE_BYTES)
}

use std::path::PathBuf;

pub use admin::{
    Aborted, Canaries, CanaryStarted, ConfigVersion, Expect, Fleet, FleetBuilder, MAX_SET, Promoted, Pushed, PushedSet,
    Versions, choose_canaries,
};
pub use agent::{FleetAgent, FleetAgentBuilder};
pub use draft::{Checked, Draft};
pub use layout::{AckState, Canary, Layout, StatusRecord};
pub use roles::RolesCreated;
pub use rollout::{
    Action, Drive, Gate, GateOutcome, Observation, Phase, Plan, Progress, Rollout, Seen, SeenCanary, Wave, check_label,
    now_ms, parse_waves, step,
};
pub use source::{Boot, FleetSource, FleetSourceBuilder, SourceEvent};
pub use status::{CanaryState, ConfigStatus, FleetStatus, InstanceState, SyncState};

// The names before each builder was named after what it builds
// (`FleetBuilder` → `Fleet`, `FleetSourceBuilder` → `FleetSource`,
// `FleetAgentBuilder` → `FleetAgent`) and the wire records after what they
// are: kept so that code written against them still compiles.

/// The builder of a [`Fleet`].
#[deprecated(note = "renamed `FleetBuilder`")]
pub type Admin = FleetBuilder;
/// The builder of a [`FleetSource`].
#[deprecated(note = "renamed `FleetSourceBuilder`")]
pub type EtcdSource = FleetSourceBuilder;
/// The builder of a [`FleetAgent`].
#[deprecated(note = "renamed `FleetAgentBuilder`")]
pub type Agent = FleetAgentBuilder;
/// A running agent.
#[deprecated(note = "renamed `FleetAgent`")]
pub type RunningAgent = FleetAgent;
/// A config's versions in a [`FleetStatus`].
#[deprecated(note = "renamed `ConfigStatus`")]
pub type ConfigState = ConfigStatus;
/// The value of a status key.
#[deprecated(note = "renamed `StatusRecord`")]
pub type Status = StatusRecord;
/// Whether an instance applied or rejected a version.
#[deprecated(note = "renamed `AckState`")]
pub type State = AckState;

/// An error from the fleet source, the agent or an operator's command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A prefix, config name or instance id that cannot be part of a key.
    #[error(transparent)]
    InvalidName(#[from] layout::InvalidName),
    /// The workspace's engine failed.
    #[error(transparent)]
    Relive(#[from] relive::Error),
    /// A call to etcd failed.
    #[error("etcd at {endpoints}: could not {action}: {message}")]
    Etcd {
        /// The endpoints tried.
        endpoints: String,
        /// What was being done (`publish`, `read /shop/configs/server`).
        action: String,
        /// etcd's error, or the timeout.
        message: String,
    },
    /// A file could not be read or written.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A CA certificate, client certificate or key file that cannot be
    /// used.
    #[error("{}: {message}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it (never its contents).
        message: String,
    },
    /// TLS settings for an endpoint that is not `https://`: the
    /// connection would be in clear.
    #[error("{endpoint}: a CA or client certificate was given, but the endpoint is not https://")]
    NotHttps {
        /// The endpoint.
        endpoint: String,
    },
    /// A password would cross the network in clear: the endpoint is
    /// `http://` and not on this machine.
    #[error(
        "refusing to send the password of etcd user {user} in clear to {endpoint}: use an https:// endpoint, \
         or allow plaintext credentials explicitly"
    )]
    Plaintext {
        /// The endpoint.
        endpoint: String,
        /// The etcd user.
        user: String,
    },
    /// A document's format cannot be told from its file name.
    #[error("cannot tell the format of {}: name it .toml, .yaml, .yml or .json", path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// The document does not parse: nothing was published.
    #[error("{0}")]
    Invalid(Box<relive::ConfigError>),
    /// The config is not at the version the write expected: nothing was
    /// written.
    #[error(
        "conflict: {key} {}, but this push expected {}; nothing was written: someone else changed it \
         since it was read; review the current version ({config}'s versions), then write again \
         expecting version {}",
        is_at(*current), if *expected == 0 { "it not to exist".to_string() } else { format!("version {expected}") },
        current.unwrap_or(0)
    )]
    Conflict {
        /// The config.
        config: String,
        /// Its key.
        key: String,
        /// Its version now (`None`: it does not exist).
        current: Option<u64>,
        /// The version the write expected (0: not to exist).
        expected: u64,
    },
    /// A canary of the config is in progress: it must be promoted or
    /// aborted before anything else is published.
    #[error(
        "a canary of {config} is in progress (version {version}, on {}): promote it or abort it first",
        instances.join(", ")
    )]
    CanaryInProgress {
        /// The config.
        config: String,
        /// The canary's version.
        version: u64,
        /// Its instances.
        instances: Vec<String>,
    },
    /// A rollout of the config is in progress: only one at a time.
    #[error(
        "a rollout of {config} is in progress (wave {wave} of {waves}, started by {by}): see it with `relive fleet \
         rollout status {config}`, resume it or abort it"
    )]
    RolloutInProgress {
        /// The config.
        config: String,
        /// Its current wave, from 1.
        wave: usize,
        /// How many waves it has.
        waves: usize,
        /// Who started it.
        by: String,
    },
    /// No rollout of the config is in progress (or none exists).
    #[error("no rollout of {config} is in progress")]
    NoRollout {
        /// The config.
        config: String,
    },
    /// The rollout record in etcd is not valid.
    #[error("the rollout at {key} is not a valid rollout record ({message})")]
    BadRollout {
        /// Its key.
        key: String,
        /// Why.
        message: String,
    },
    /// A change set that cannot be pushed (empty, too large, a config
    /// twice).
    #[error("invalid change set: {message}")]
    InvalidSet {
        /// Why.
        message: String,
    },
    /// A rollout plan that cannot run.
    #[error("invalid rollout: {message}")]
    InvalidRollout {
        /// Why.
        message: String,
    },
    /// No canary of the config is in progress.
    #[error("no canary of {config} is in progress")]
    NoCanary {
        /// The config.
        config: String,
    },
    /// The canary record in etcd is not valid.
    #[error("the canary at {key} is not a valid canary record ({message}): delete the key, or abort the canary")]
    BadCanary {
        /// Its key.
        key: String,
        /// Why.
        message: String,
    },
    /// The config changed since its canary started, so promoting it would
    /// overwrite that change.
    #[error(
        "{config} changed since its canary started (its key {}, the canary was based on version {base}): \
         abort the canary and start it again",
        is_at(*now)
    )]
    CanaryStale {
        /// The config.
        config: String,
        /// The version the canary was based on.
        base: u64,
        /// The config's version now.
        now: Option<u64>,
    },
    /// The canary changed while this command ran: nothing was written.
    #[error(
        "the canary of {config} changed while this command ran; nothing was written: read the fleet's status and try again"
    )]
    CanaryChanged {
        /// The config.
        config: String,
    },
    /// A canary with the bytes of the current version.
    #[error("the canary of {config} would be the same as its version {version}: nothing to roll out")]
    CanaryUnchanged {
        /// The config.
        config: String,
        /// Its version.
        version: u64,
    },
    /// A canary percentage out of range.
    #[error("a canary percentage must be from 1 to 100, not {percent}")]
    InvalidPercent {
        /// The percentage given.
        percent: u8,
    },
    /// No instance serves the config, so a canary has nowhere to go.
    #[error("no live instance reports a status for {config}: a canary goes to instances that serve it")]
    NoLiveInstances {
        /// The config.
        config: String,
    },
    /// Canary instances that are not alive (or none given).
    #[error(
        "cannot start a canary of {config} on {}: not a live instance serving it (live: {})",
        if unknown.is_empty() { "no instance".to_string() } else { unknown.join(", ") },
        if alive.is_empty() { "none".to_string() } else { alive.join(", ") }
    )]
    UnknownInstances {
        /// The config.
        config: String,
        /// The ids given that are not alive.
        unknown: Vec<String>,
        /// The live instances serving the config.
        alive: Vec<String>,
    },
    /// The config does not exist in etcd.
    #[error("{config} does not exist (no key {key}): {hint}")]
    NoConfig {
        /// The config.
        config: String,
        /// Its key.
        key: String,
        /// What to do.
        hint: &'static str,
    },
    /// The revision is not one at which the config's key was written.
    #[error(
        "revision {version} is not a version of {config}: the nearest versions are {} and {}",
        older.map_or("none older".to_string(), |v| v.to_string()),
        newer.map_or("none newer".to_string(), |v| v.to_string())
    )]
    NotAVersion {
        /// The config.
        config: String,
        /// The revision asked for.
        version: u64,
        /// The nearest older version etcd still has.
        older: Option<u64>,
        /// The nearest newer version.
        newer: Option<u64>,
    },
    /// The revision was compacted away.
    #[error(
        "version {version} of {config} is gone: etcd compacted its history up to revision {compacted} \
         (its --auto-compaction-mode and --auto-compaction-retention decide how long versions are kept); \
         pick a newer one from {config}'s versions"
    )]
    Compacted {
        /// The config.
        config: String,
        /// The version asked for.
        version: u64,
        /// etcd's compaction revision.
        compacted: u64,
    },
    /// The revision is newer than the store.
    #[error("revision {version} does not exist yet: the store is at revision {now}")]
    FutureRevision {
        /// The revision asked for.
        version: u64,
        /// The store's revision.
        now: u64,
    },
}

/// `is at version 7`, or `does not exist`.
fn is_at(version: Option<u64>) -> String {
    match version {
        Some(0) | None => "does not exist".to_string(),
        Some(v) => format!("is at version {v}"),
    }
}

#[cfg(test)]
mod tests {
    use std::any::TypeId;

    /// Code written against the names before the renaming still compiles,
    /// and each old name is the type it was.
    #[test]
    #[allow(deprecated)]
    fn the_old_names_still_name_the_same_types() {
        fn same<T: 'static, U: 'static>() -> bool {
            TypeId::of::<T>() == TypeId::of::<U>()
        }
        assert!(same::<crate::Admin, crate::FleetBuilder>());
        assert!(same::<crate::EtcdSource, crate::FleetSourceBuilder>());
        assert!(same::<crate::Agent, crate::FleetAgentBuilder>());
        assert!(same::<crate::RunningAgent, crate::FleetAgent>());
        assert!(same::<crate::ConfigState, crate::ConfigStatus>());
        assert!(same::<crate::Status, crate::StatusRecord>());
        assert!(same::<crate::State, crate::AckState>());
        assert!(same::<crate::layout::Status, crate::StatusRecord>());
        let source = crate::EtcdSource::new("http://127.0.0.1:2379", "shop").unwrap().instance("web-1").unwrap();
        let _agent: crate::Agent = crate::Agent::new(source, "/srv/shop");
        let _admin: crate::Admin = crate::Admin::new("http://127.0.0.1:2379", "shop").unwrap();
    }

    /// The library speaks its own language: the CLI, not the library,
    /// names `relive fleet` commands and flags.
    #[test]
    fn errors_name_no_command_and_no_flag() {
        use crate::Error as E;
        let c = || "server".to_string();
        let errors = [
            E::Conflict { config: c(), key: "/shop/configs/server".into(), current: Some(9), expected: 7 },
            E::CanaryInProgress { config: c(), version: 9, instances: vec!["web-1".into()] },
            E::CanaryStale { config: c(), base: 7, now: Some(9) },
            E::CanaryChanged { config: c() },
            E::NotAVersion { config: c(), version: 8, older: Some(7), newer: Some(9) },
            E::Compacted { config: c(), version: 3, compacted: 5 },
            E::NoCanary { config: c() },
        ];
        for error in errors {
            let text = error.to_string();
            assert!(
                !text.contains("relive fleet") && !text.contains("--expect") && !text.contains("--force"),
                "{text}"
            );
        }
    }
}
