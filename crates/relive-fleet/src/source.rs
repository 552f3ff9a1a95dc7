//! The etcd-backed config source: configs from etcd into a workspace's
//! engine, and every version acknowledged or rejected in etcd.
//!
//! For each config the source knows two candidate values: the config key's
//! (stable) and, when a canary that names this instance is in progress, the
//! canary key's. The target is the canary if there is one, else the stable
//! value; whenever the target's version differs from the version last
//! handled, the source publishes it and answers it. A watch response is
//! recorded whole before any config is reconciled, so a promotion (the
//! config key written and the canary key deleted in one revision) is one
//! step, not two.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions, WatchStream};
use relive::{Document, Format, HotReloadManager, Workspace};
use tokio::sync::{broadcast, oneshot};
use tokio::time::timeout;

use crate::Error;
use crate::backoff::{Backoff, jitter};
use crate::cache::{Cache, CacheWriter};
use crate::connect::Connection;
use crate::layout::{AckState, Canary, Layout, StatusRecord, check_instance_id, decode_config};

/// Called with the versions an instance applies, before it acknowledges
/// them: the agent writes each document to a file here. Several at once
/// are one change set (the configs of one revision), written together.
/// Returns one result per document; an error rejects that config's version
/// with that error.
pub(crate) type MirrorFn = dyn Fn(&[(String, Format, Vec<u8>)]) -> Vec<Result<(), String>> + Send + Sync;

/// A [`MirrorFn`], shared.
#[derive(Clone)]
pub(crate) struct Mirror(pub(crate) Arc<MirrorFn>);

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mirror")
    }
}

/// Settings of an etcd config source; [`start`](FleetSourceBuilder::start) runs it.
///
/// ```no_run
/// # async fn f() -> Result<(), relive_fleet::Error> {
/// let ws = relive::Workspace::new("/srv/shop");
/// let source = relive_fleet::FleetSourceBuilder::new("http://127.0.0.1:2379", "shop")?
///     .instance("web-1")?
///     .start(&ws)
///     .await?;
/// // The service reads its configs exactly as it would from files.
/// let server = ws.config::<serde_json::Value>("server").watch().await?;
/// # drop((source, server)); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FleetSourceBuilder {
    conn: Connection,
    layout: Layout,
    instance: String,
    host: String,
    labels: BTreeMap<String, String>,
    lease_ttl: Duration,
    request_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    mirror: Option<Mirror>,
}

impl FleetSourceBuilder {
    /// A source reading the configs under `prefix` from the etcd at
    /// `endpoint` (`http://127.0.0.1:2379`). The instance id defaults to
    /// `<host>-<pid>`.
    pub fn new(endpoint: impl Into<String>, prefix: &str) -> Result<FleetSourceBuilder, Error> {
        let host = hostname();
        Ok(FleetSourceBuilder {
            conn: Connection::new(endpoint.into()),
            layout: Layout::new(prefix)?,
            instance: format!("{host}-{}", std::process::id()).replace('/', "_"),
            host,
            labels: BTreeMap::new(),
            lease_ttl: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            mirror: None,
        })
    }

    /// More endpoints of the same cluster. The source talks to one member
    /// at a time (its watch and lease live on one connection anyway) and,
    /// when it loses it, tries the next member at once, each in turn,
    /// before it backs off.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> FleetSourceBuilder {
        self.conn.endpoints.push(endpoint.into());
        self
    }

    /// The CA certificates (PEM) that sign etcd's server certificate, for
    /// `https://` endpoints.
    pub fn ca_certificate(mut self, path: impl Into<PathBuf>) -> FleetSourceBuilder {
        self.conn.ca(path.into());
        self
    }

    /// A client certificate and its private key (PEM), for etcd's
    /// `--client-cert-auth`. With authentication on and no user, etcd
    /// takes the certificate's common name as the user.
    pub fn client_certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> FleetSourceBuilder {
        self.conn.identity(cert.into(), key.into());
        self
    }

    /// An etcd user and its password (etcd-client refreshes its token).
    /// The password is sent only over `https://`, or in clear to a
    /// loopback address, unless
    /// [`insecure_plaintext`](FleetSourceBuilder::insecure_plaintext).
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> FleetSourceBuilder {
        self.conn.user(name.into(), password.into());
        self
    }

    /// Allows sending a password in clear to an `http://` endpoint that is
    /// not on this machine. Default: refused ([`Error::Plaintext`]).
    pub fn insecure_plaintext(mut self, allow: bool) -> FleetSourceBuilder {
        self.conn.insecure_plaintext(allow);
        self
    }

    /// This instance's id, unique in the fleet: the name of its status keys.
    /// No `/`, not empty.
    pub fn instance(mut self, id: impl Into<String>) -> Result<FleetSourceBuilder, Error> {
        let id = id.into();
        check_instance_id(&id)?;
        self.instance = id;
        Ok(self)
    }

    /// The host reported in status keys. Default: the machine's host name.
    pub fn host(mut self, host: impl Into<String>) -> FleetSourceBuilder {
        self.host = host.into();
        self
    }

    /// A label published in the instance's status keys (`zone`, `a`), which
    /// a rollout's wave can select (`--waves zone=a,100%`). The key is
    /// letters, digits and `-_./`; the value has no `,` nor control
    /// characters, so a wave selector can name it.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Result<FleetSourceBuilder, Error> {
        let (key, value) = (key.into(), value.into());
        crate::rollout::check_label(&key, &value)?;
        self.labels.insert(key, value);
        Ok(self)
    }

    /// The TTL of the instance's lease: how long its status keys outlive it
    /// when it dies without shutting down. Default 10 s. etcd raises TTLs
    /// below its minimum (about 2 s with default settings).
    pub fn lease_ttl(mut self, ttl: Duration) -> FleetSourceBuilder {
        self.lease_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// How long one call to etcd may take before the connection counts as
    /// lost; also how long a boot waits for etcd before starting from the
    /// cache. Default 5 s.
    pub fn request_timeout(mut self, timeout: Duration) -> FleetSourceBuilder {
        self.request_timeout = timeout;
        self
    }

    /// The delays between reconnection attempts: from `min`, doubling on
    /// each failure, up to `max`, each drawn in `[d/2, d]`. Default 100 ms
    /// to 10 s.
    pub fn backoff(mut self, min: Duration, max: Duration) -> FleetSourceBuilder {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// The layout of the keys this source reads and writes.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The instance id.
    pub fn instance_id(&self) -> &str {
        &self.instance
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.conn.endpoints
    }

    /// Runs `mirror` (on a blocking thread) for each version applied,
    /// before acknowledging it.
    pub(crate) fn mirror(mut self, mirror: Mirror) -> FleetSourceBuilder {
        self.mirror = Some(mirror);
        self
    }

    /// Starts the source for `ws`, starting its hot reload engine with the
    /// default settings if it is not running (start it first for others).
    ///
    /// Returns once the configs are published: read from etcd, or, when
    /// no endpoint answers within the request timeout, from the local
    /// cache under `ws.data_dir()`. Subscribe to configs after this, so
    /// that they start from those values. The source then runs on the
    /// current Tokio runtime until [`FleetSource::shutdown`] or drop.
    pub async fn start(self, ws: &Workspace) -> Result<FleetSource, Error> {
        // Settings that cannot work (a password in clear, an unreadable
        // certificate) fail here, not in a reconnection loop.
        let connect_options = self.conn.options()?.with_auto_token_refresh(self.conn.user_name().is_some());
        let manager = ws.start_hot_reload().await?;
        let cache_dir = ws.data_dir().join("fleet").join(self.layout.prefix().trim_start_matches('/')).join("configs");
        let (events, _) = broadcast::channel(1024);
        let mut worker = Worker {
            backoff: Backoff::new(self.backoff_min, self.backoff_max),
            opts: self,
            connect_options,
            manager,
            cache: Cache::new(cache_dir.clone()),
            cache_writer: CacheWriter::start(Cache::new(cache_dir.clone()))
                .map_err(|source| Error::Io { path: cache_dir, source })?,
            events: events.clone(),
            member: 0,
            revision: 0,
            stable: BTreeMap::new(),
            canaries: BTreeMap::new(),
            versions: BTreeMap::new(),
            applied: BTreeMap::new(),
            statuses: BTreeMap::new(),
            aborted: BTreeMap::new(),
        };
        let (boot, session) = match worker.connect().await {
            Ok(session) => (Boot::Etcd { revision: worker.revision as u64 }, Some(session)),
            Err(Stop::Engine) => return Err(Error::Relive(relive::Error::Stopped)),
            Err(Stop::Lost(error)) => {
                tracing::warn!(%error, "etcd unreachable at boot; starting from the local cache");
                let configs = worker.boot_from_cache().await?;
                (Boot::Cache { configs }, None)
            }
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(worker.run(session, stop_rx));
        Ok(FleetSource { boot, events, stop: Some(stop_tx), task: Some(task) })
    }
}

/// Where a source found its configs when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// From etcd, at this revision.
    Etcd {
        /// The store's revision when the configs were read.
        revision: u64,
    },
    /// etcd did not answer: from the local cache, this many configs.
    Cache {
        /// How many configs the cache held.
        configs: usize,
    },
}

/// What a running source did: for logs, metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceEvent {
    /// Connected, read what was missed, and watching from `revision`.
    Connected {
        /// The last revision seen.
        revision: u64,
    },
    /// The connection was lost; the next attempt is in `retry_in`.
    Disconnected {
        /// Why.
        error: String,
        /// The delay before reconnecting.
        retry_in: Duration,
    },
    /// The revision to resume from was compacted: everything is re-read.
    Resync {
        /// etcd's compaction revision.
        compacted: u64,
    },
    /// A version was applied and acknowledged.
    Applied {
        /// The config.
        config: String,
        /// Its version (the key's `mod_revision`).
        version: u64,
    },
    /// A version was rejected: the last good value stays live.
    Rejected {
        /// The config.
        config: String,
        /// The rejected version.
        version: u64,
        /// Why, as written to the status key.
        error: String,
    },
}

/// A running etcd source. Dropping it stops the source abruptly, like a
/// crash: its status keys go when its lease expires.
/// [`shutdown`](FleetSource::shutdown) revokes the lease, so they go at once.
#[derive(Debug)]
pub struct FleetSource {
    boot: Boot,
    events: broadcast::Sender<SourceEvent>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FleetSource {
    /// Where the configs came from at start.
    pub fn boot(&self) -> Boot {
        self.boot
    }

    /// Every [`SourceEvent`] from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SourceEvent> {
        self.events.subscribe()
    }

    /// Stops the source: revokes its lease (its status keys vanish) and
    /// waits for it. The configs keep their last values.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FleetSource {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Why serving stopped.
enum Stop {
    /// The connection, the watch or the lease was lost: reconnect.
    Lost(String),
    /// The engine stopped: nothing left to feed.
    Engine,
}

enum Served {
    Stopped,
    Lost(String),
    Compacted(i64),
    Engine,
}

/// A live connection: a client, the instance's lease and its keep-alive,
/// and the watch of the configs.
struct Session {
    client: Client,
    lease: i64,
    keeper: etcd_client::LeaseKeeper,
    keep_alive: etcd_client::LeaseKeepAliveStream,
    watch: WatchStream,
}

struct Worker {
    opts: FleetSourceBuilder,
    /// TLS and credentials, loaded at start.
    connect_options: ConnectOptions,
    manager: HotReloadManager,
    cache: Cache,
    /// Stores applied values in `cache` off the path of the next version.
    cache_writer: CacheWriter,
    events: broadcast::Sender<SourceEvent>,
    backoff: Backoff,
    /// The index of the endpoint the next connection tries first.
    member: usize,
    /// Every event up to this revision has been handled; 0: nothing read
    /// yet, or a re-read is needed.
    revision: i64,
    /// The config key's version and value, per config.
    stable: BTreeMap<String, (i64, Vec<u8>)>,
    /// The canaries that name this instance: the canary key's version and
    /// the canary value, per config.
    canaries: BTreeMap<String, (i64, Vec<u8>)>,
    /// The last version handled (applied or rejected) per config.
    versions: BTreeMap<String, i64>,
    /// The last version applied per config.
    applied: BTreeMap<String, u64>,
    /// The status of each config, written again on every reconnect.
    statuses: BTreeMap<String, StatusRecord>,
    /// Why a rollout that this instance was in stopped, per config, until
    /// the stable version it returns to is answered with it.
    aborted: BTreeMap<String, String>,
}

impl Worker {
    /// Serves until stopped, then writes what the cache still has queued.
    async fn run(mut self, session: Option<Session>, stop: oneshot::Receiver<()>) {
        self.serve_until_stopped(session, stop).await;
        let Worker { cache_writer, .. } = self;
        cache_writer.finish().await;
    }

    async fn serve_until_stopped(&mut self, mut session: Option<Session>, mut stop: oneshot::Receiver<()>) {
        loop {
            let mut current = match session.take() {
                Some(s) => s,
                None => {
                    let attempt = tokio::select! {
                        r = self.connect() => r,
                        _ = &mut stop => return,
                    };
                    match attempt {
                        Ok(s) => s,
                        Err(Stop::Engine) => return,
                        Err(Stop::Lost(error)) => {
                            if self.pause(error, &mut stop).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
            };
            self.backoff.reset();
            let _ = self.events.send(SourceEvent::Connected { revision: self.revision as u64 });
            match self.serve(&mut current, &mut stop).await {
                Served::Stopped | Served::Engine => {
                    let _ = timeout(self.opts.request_timeout, current.client.lease_revoke(current.lease)).await;
                    return;
                }
                Served::Compacted(compacted) => {
                    tracing::warn!(compacted, resume = self.revision + 1, "watch revision compacted; re-reading");
                    let _ = self.events.send(SourceEvent::Resync { compacted: compacted as u64 });
                    self.revision = 0;
                    self.revoke_later(current);
                }
                Served::Lost(error) => {
                    self.revoke_later(current);
                    if self.pause(error, &mut stop).await {
                        return;
                    }
                }
            }
        }
    }

    /// The old lease goes when a new one holds the status keys; revoking it
    /// is best effort, since it may be the lost connection's.
    fn revoke_later(&self, session: Session) {
        let Session { mut client, lease, .. } = session;
        let limit = self.opts.request_timeout;
        tokio::spawn(async move {
            let _ = timeout(limit, client.lease_revoke(lease)).await;
        });
    }

    /// Waits out the backoff after a failure. True if told to stop.
    async fn pause(&mut self, error: String, stop: &mut oneshot::Receiver<()>) -> bool {
        let retry_in = self.backoff.next(jitter());
        tracing::warn!(%error, ?retry_in, "etcd connection lost; reconnecting");
        let _ = self.events.send(SourceEvent::Disconnected { error, retry_in });
        tokio::select! {
            _ = tokio::time::sleep(retry_in) => false,
            _ = stop => true,
        }
    }

    /// Connects to one member after another, from the one after the
    /// member last used, until one serves a whole session; fails once each
    /// was tried.
    ///
    /// One member at a time, not etcd-client's balanced channel over all of
    /// them: a fresh balanced channel sends its first calls to whichever
    /// member is ready first, and a dead member is "ready" at once (its
    /// refused connection is an error to hand out), while a live one is
    /// still in its TLS handshake. A source rebuilding its client after
    /// losing a member then lost the race on every attempt, for as long as
    /// the member stayed dead (77 attempts, 27 s, in one run under load).
    async fn connect(&mut self) -> Result<Session, Stop> {
        let count = self.opts.conn.endpoints.len();
        let mut errors = Vec::new();
        for k in 0..count {
            let i = (self.member + k) % count;
            let endpoint = self.opts.conn.endpoints[i].clone();
            match self.connect_to(&endpoint).await {
                Ok(session) => {
                    // A session lost later resumes with the next member.
                    self.member = (i + 1) % count;
                    return Ok(session);
                }
                Err(Stop::Engine) => return Err(Stop::Engine),
                Err(Stop::Lost(error)) if count == 1 => return Err(Stop::Lost(error)),
                Err(Stop::Lost(error)) => errors.push(format!("{endpoint}: {error}")),
            }
        }
        Err(Stop::Lost(errors.join("; ")))
    }

    /// Connects to `endpoint`, takes a lease, reads what was missed
    /// (everything, the first time and after a compaction), writes every
    /// status under the new lease and watches from the next revision.
    async fn connect_to(&mut self, endpoint: &str) -> Result<Session, Stop> {
        let limit = self.opts.request_timeout;
        let conn = self.opts.conn.clone();
        let lost = |e: String| Stop::Lost(conn.explain(e));
        let options = self
            .connect_options
            .clone()
            .with_connect_timeout(limit)
            // etcd answers pings more frequent than its
            // --grpc-keepalive-min-time (5 s by default) with GOAWAY
            // (too_many_pings) once no data flowed between three of them.
            .with_keep_alive(Duration::from_secs(6), limit)
            .with_keep_alive_while_idle(true)
            // A member cut off from the others by a partition still
            // answers, but learns of no new revision: with this, it ends
            // the watch and refuses calls once it has had no leader for a
            // few election timeouts, and the next member takes over.
            // Without it, an instance stayed on such a member, deaf, until
            // its lease keep-alive failed (9.5 s at a 10 s TTL;
            // tests/partition.rs: 2 s with it).
            .with_require_leader(true);
        let mut client = call(limit, Client::connect([endpoint], Some(options))).await.map_err(lost)?;
        let ttl = self.opts.lease_ttl.as_secs().max(1) as i64;
        let lease = call(limit, client.lease_grant(ttl, None)).await.map_err(lost)?.id();
        let (keeper, keep_alive) = call(limit, client.lease_keep_alive(lease)).await.map_err(lost)?;
        let (start, end) = self.opts.layout.source_range();
        if self.revision == 0 {
            let options = GetOptions::new().with_range(end.clone());
            let resp = call(limit, crate::kv(&client).get(start.clone(), Some(options))).await.map_err(lost)?;
            let revision = resp.header().map_or(0, |h| h.revision());
            // What is not in the store now is gone: deleted configs keep
            // their last value, ended canaries give way to the stable one.
            self.stable.clear();
            self.canaries.clear();
            let mut touched = BTreeSet::new();
            for kv in resp.kvs() {
                touched.extend(self.record(kv.key(), Some((kv.value(), kv.mod_revision()))));
            }
            touched.extend(self.versions.keys().cloned());
            // The configs one transaction wrote (one revision) are one
            // change set here too, as they are when watched.
            let mut by_revision: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
            for name in touched {
                let at = self.target(&name).map_or(0, |(version, _)| *version);
                by_revision.entry(at).or_default().insert(name);
            }
            for names in by_revision.values() {
                self.reconcile_set(None, names).await?;
            }
            self.revision = revision;
        }
        for status in self.statuses.values() {
            let key = self.opts.layout.status_key(&self.opts.instance, &status.config).expect("checked names");
            let put = client.put(key, status.to_json(), Some(PutOptions::new().with_lease(lease)));
            call(limit, put).await.map_err(lost)?;
        }
        let options = WatchOptions::new().with_range(end).with_start_revision(self.revision + 1).with_progress_notify();
        let watch = call(limit, crate::watcher(&client).watch(start, Some(options))).await.map_err(lost)?;
        Ok(Session { client, lease, keeper, keep_alive, watch })
    }

    async fn serve(&mut self, s: &mut Session, stop: &mut oneshot::Receiver<()>) -> Served {
        let limit = self.opts.request_timeout;
        let mut tick = tokio::time::interval((self.opts.lease_ttl / 3).max(Duration::from_millis(300)));
        loop {
            tokio::select! {
                _ = &mut *stop => return Served::Stopped,
                _ = tick.tick() => {
                    if let Err(e) = call(limit, s.keeper.keep_alive()).await {
                        return Served::Lost(format!("lease keep-alive: {e}"));
                    }
                }
                msg = s.keep_alive.message() => match msg {
                    Ok(Some(r)) if r.ttl() <= 0 => return Served::Lost("lease expired".into()),
                    Ok(Some(_)) => {}
                    Ok(None) => return Served::Lost("lease keep-alive stream closed".into()),
                    Err(e) => return Served::Lost(format!("lease keep-alive: {e}")),
                },
                msg = s.watch.message() => {
                    let resp = match msg {
                        Ok(Some(resp)) => resp,
                        Ok(None) => return Served::Lost("watch stream closed".into()),
                        Err(e) => return Served::Lost(format!("watch: {e}")),
                    };
                    if resp.compact_revision() > 0 {
                        return Served::Compacted(resp.compact_revision());
                    }
                    if resp.canceled() {
                        return Served::Lost(format!("watch canceled: {}", resp.cancel_reason()));
                    }
                    // One revision at a time, every version answered; the
                    // events of one transaction (one revision) are recorded
                    // together before any config is reconciled.
                    let events = resp.events();
                    let mut at = 0;
                    while at < events.len() {
                        let revision = events[at].kv().map_or(0, |kv| kv.mod_revision());
                        let mut touched = BTreeSet::new();
                        while let Some(event) = events.get(at).filter(|e| e.kv().map_or(0, |kv| kv.mod_revision()) == revision) {
                            at += 1;
                            let Some(kv) = event.kv() else { continue };
                            let value = match event.event_type() {
                                EventType::Put => Some((kv.value(), kv.mod_revision())),
                                EventType::Delete => None,
                            };
                            touched.extend(self.record(kv.key(), value));
                        }
                        match self.reconcile_set(Some((&mut s.client, s.lease)), &touched).await {
                            Ok(()) => {}
                            Err(Stop::Engine) => return Served::Engine,
                            Err(Stop::Lost(e)) => return Served::Lost(e),
                        }
                        // Only now: a lost connection above replays this
                        // revision, and handled versions are skipped.
                        self.revision = self.revision.max(revision);
                    }
                    // A progress notification (no events) promises every
                    // event up to its header's revision was sent.
                    if resp.events().is_empty() && !resp.created() {
                        if let Some(h) = resp.header() {
                            self.revision = self.revision.max(h.revision());
                        }
                    }
                }
            }
        }
    }

    /// Records a config or canary key's new value (`None`: deleted).
    /// Returns the config it concerns.
    fn record(&mut self, key: &[u8], value: Option<(&[u8], i64)>) -> Option<String> {
        let layout = &self.opts.layout;
        if let Some(name) = layout.config_name(key) {
            match value {
                Some((value, version)) => {
                    self.stable.insert(name.to_string(), (version, value.to_vec()));
                }
                None => {
                    tracing::warn!(config = name, "config deleted in etcd; keeping its last value");
                    self.stable.remove(name);
                }
            }
            return Some(name.to_string());
        }
        if let Some(name) = layout.canary_name(key) {
            let canary = match value.map(|(value, version)| (Canary::from_json(value), version)) {
                None => None,
                Some((Ok(canary), version)) => {
                    // A stopped rollout's canary goes to no one; the
                    // instances it went to say why they return.
                    if let Some(reason) = &canary.aborted {
                        if self.canaries.contains_key(name) && canary.returning.contains(&self.opts.instance) {
                            self.aborted.insert(name.to_string(), reason.clone());
                        }
                    }
                    canary.includes(&self.opts.instance).then(|| (version, canary.value.into_bytes()))
                }
                Some((Err(error), _)) => {
                    tracing::warn!(config = name, %error, "ignoring a canary record that is not valid JSON");
                    None
                }
            };
            match canary {
                Some(canary) => self.canaries.insert(name.to_string(), canary),
                None => self.canaries.remove(name),
            };
            return Some(name.to_string());
        }
        tracing::warn!(key = %String::from_utf8_lossy(key), "ignoring a key with an unusable config name");
        None
    }

    /// The version `name` should run here: the canary's if this instance
    /// is in one, else the config key's; none if deleted (the last value
    /// stays).
    fn target(&self, name: &str) -> Option<&(i64, Vec<u8>)> {
        self.canaries.get(name).or_else(|| self.stable.get(name))
    }

    /// Publishes and answers the versions `names` should run here, those
    /// not handled already, as one change set: the configs of one
    /// revision, applied all or none.
    async fn reconcile_set(
        &mut self,
        client: Option<(&mut Client, i64)>,
        names: &BTreeSet<String>,
    ) -> Result<(), Stop> {
        let mut due = Vec::new();
        for name in names {
            let Some((version, value)) = self.target(name) else { continue };
            if self.versions.get(name) == Some(version) {
                // Never left the stable version: nothing to explain.
                self.aborted.remove(name);
                continue;
            }
            due.push((name.clone(), *version, value.clone()));
        }
        match due.len() {
            0 => Ok(()),
            1 => {
                let (name, version, value) = due.pop().expect("one");
                self.handle(client, &name, &value, version).await
            }
            _ => self.handle_set(client, due).await,
        }
    }

    /// Publishes several configs as one change set, all or none, and
    /// answers every one with the set's outcome: all applied, or all
    /// rejected with the reason naming the config that failed. The
    /// statuses are written in one transaction.
    async fn handle_set(
        &mut self,
        client: Option<(&mut Client, i64)>,
        due: Vec<(String, i64, Vec<u8>)>,
    ) -> Result<(), Stop> {
        let names: Vec<&str> = due.iter().map(|(name, _, _)| name.as_str()).collect();
        let list = names.join(", ");
        let mut set = Vec::new();
        let mut refused = None;
        for (name, _, value) in &due {
            let origin = format!("etcd:{}{name}", self.opts.layout.configs_prefix());
            match decode_config(value) {
                Ok((format, document)) => {
                    set.push((name.clone(), vec![Document::new(&origin, format, document.to_vec())]))
                }
                Err(message) => {
                    refused = Some((name.clone(), format!("{origin}: {message}")));
                    break;
                }
            }
        }
        if refused.is_none() {
            match self.manager.publish_set(set).await {
                Ok(_) => {}
                Err(relive::Error::Config { name, error }) => refused = Some((name, error.to_string())),
                Err(e) => {
                    tracing::error!(error = %e, "the hot reload engine stopped; the etcd source stops");
                    return Err(Stop::Engine);
                }
            }
        }
        // Applied whole: the mirror, if any, writes the set's files in one
        // call, one result per config in `due`'s order.
        let mut mirrored = match (&refused, &self.opts.mirror) {
            (None, Some(_)) => {
                let docs = due
                    .iter()
                    .filter_map(|(name, _, value)| {
                        let (format, document) = decode_config(value).ok()?;
                        Some((name.clone(), format, document.to_vec()))
                    })
                    .collect::<Vec<_>>();
                self.mirror_set(docs).await.into_iter()
            }
            _ => Vec::new().into_iter(),
        };
        let mut statuses = Vec::new();
        for (name, version, value) in &due {
            let result = match &refused {
                Some((bad, error)) if bad == name => Err(format!("{error} (its change set of {list} was not applied)")),
                Some((bad, error)) => {
                    Err(format!("not applied: {bad}, in the same change set ({list}), was rejected: {error}"))
                }
                None => mirrored.next().unwrap_or(Ok(())),
            };
            let applied = self.outcome(name, *version as u64, &result);
            self.versions.insert(name.clone(), *version);
            if applied {
                self.cache_writer.store(name, *version as u64, value);
            }
            statuses.push(name.clone());
        }
        let Some((client, lease)) = client else { return Ok(()) };
        let puts = statuses
            .iter()
            .map(|name| {
                let key = self.opts.layout.status_key(&self.opts.instance, name).expect("checked names");
                TxnOp::put(key, self.statuses[name].to_json(), Some(PutOptions::new().with_lease(lease)))
            })
            .collect::<Vec<_>>();
        call(self.opts.request_timeout, crate::kv(client).txn(Txn::new().and_then(puts)))
            .await
            .map(drop)
            .map_err(Stop::Lost)
    }

    /// Publishes one version of a config and acknowledges or rejects it.
    /// Without a client (at connection, or booting from the cache) the
    /// status is written with the others once connected.
    async fn handle(
        &mut self,
        client: Option<(&mut Client, i64)>,
        name: &str,
        value: &[u8],
        version: i64,
    ) -> Result<(), Stop> {
        let name = name.to_string();
        let applied = self.apply(&name, value, version as u64).await?;
        self.versions.insert(name.clone(), version);
        // Acknowledge, then queue the cache write: the cache is only the
        // fallback for a boot without etcd, and its fsyncs would delay this
        // acknowledgement and the next version.
        let acked = match client {
            Some((client, lease)) => {
                let key = self.opts.layout.status_key(&self.opts.instance, &name).expect("checked names");
                // etcd keeps a key's lease only if the put names it again.
                let put = client.put(key, self.statuses[&name].to_json(), Some(PutOptions::new().with_lease(lease)));
                call(self.opts.request_timeout, put).await.map(drop).map_err(Stop::Lost)
            }
            None => Ok(()),
        };
        if applied {
            self.cache_writer.store(&name, version as u64, value);
        }
        acked
    }

    /// Publishes `value` into the engine and records the status. True if
    /// it was applied.
    async fn apply(&mut self, name: &str, value: &[u8], version: u64) -> Result<bool, Stop> {
        let origin = format!("etcd:{}{name}", self.opts.layout.configs_prefix());
        let result = match decode_config(value) {
            Err(message) => Err(format!("{origin}: {message}")),
            Ok((format, document)) => {
                match self.manager.publish(name, vec![Document::new(&origin, format, document.to_vec())]).await {
                    Ok(_) => self.mirror(name, format, document).await,
                    Err(relive::Error::Config { error, .. }) => Err(error.to_string()),
                    Err(e) => {
                        tracing::error!(error = %e, "the hot reload engine stopped; the etcd source stops");
                        return Err(Stop::Engine);
                    }
                }
            }
        };
        Ok(self.outcome(name, version, &result))
    }

    /// Records the outcome of a version: the event and the status to
    /// write. True if it was applied.
    fn outcome(&mut self, name: &str, version: u64, result: &Result<(), String>) -> bool {
        let aborted = self.aborted.remove(name).map(|reason| format!("rollout aborted: {reason}"));
        let (state, error) = match result {
            Ok(()) => {
                self.applied.insert(name.to_string(), version);
                let _ = self.events.send(SourceEvent::Applied { config: name.to_string(), version });
                (AckState::Applied, aborted)
            }
            Err(error) => {
                tracing::warn!(config = name, version, %error, "rejected a version from etcd");
                let _ =
                    self.events.send(SourceEvent::Rejected { config: name.to_string(), version, error: error.clone() });
                (AckState::Rejected, Some(error.clone()))
            }
        };
        let status = StatusRecord {
            instance: self.opts.instance.clone(),
            host: self.opts.host.clone(),
            config: name.to_string(),
            version,
            applied_version: self.applied.get(name).copied(),
            state,
            error,
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            labels: self.opts.labels.clone(),
        };
        self.statuses.insert(name.to_string(), status);
        result.is_ok()
    }

    /// Runs the mirror, if any, for an applied version.
    async fn mirror(&self, name: &str, format: Format, document: &[u8]) -> Result<(), String> {
        // Every applied version of every instance passes here: no copy
        // without a mirror.
        if self.opts.mirror.is_none() {
            return Ok(());
        }
        let mut results = self.mirror_set(vec![(name.to_string(), format, document.to_vec())]).await;
        results.pop().unwrap_or(Ok(()))
    }

    /// Runs the mirror, if any, for the versions of one change set, in one
    /// call: exactly one result per document.
    async fn mirror_set(&self, docs: Vec<(String, Format, Vec<u8>)>) -> Vec<Result<(), String>> {
        let Some(Mirror(mirror)) = self.opts.mirror.clone() else { return docs.iter().map(|_| Ok(())).collect() };
        let n = docs.len();
        let mut results = tokio::task::spawn_blocking(move || mirror(&docs))
            .await
            .unwrap_or_else(|e| vec![Err(format!("the mirror panicked: {e}")); n]);
        results.resize_with(n, || Err("the mirror gave no answer for this config".into()));
        results
    }

    /// Publishes every cached config. Returns how many there were.
    async fn boot_from_cache(&mut self) -> Result<usize, Error> {
        let cache = self.cache.clone();
        let cached = tokio::task::spawn_blocking(move || cache.load()).await.unwrap_or_default();
        // The configs of one revision (a change set) were cached with that
        // version: they are published together again.
        let mut by_version: BTreeMap<u64, Vec<(String, i64, Vec<u8>)>> = BTreeMap::new();
        for c in &cached {
            by_version.entry(c.version).or_default().push((c.name.clone(), c.version as i64, c.value.clone()));
        }
        for (_, mut set) in by_version {
            let done = if set.len() == 1 {
                let (name, version, value) = set.pop().expect("one");
                self.handle(None, &name, &value, version).await
            } else {
                self.handle_set(None, set).await
            };
            done.map_err(|_| Error::Relive(relive::Error::Stopped))?;
        }
        Ok(cached.len())
    }
}

/// A call to etcd, bounded by `limit`, with its error as text.
async fn call<T, F>(limit: Duration, f: F) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    match timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(crate::connect::describe(&e)),
        Err(_) => Err(format!("etcd did not answer within {limit:?}")),
    }
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "localhost".to_string())
}
