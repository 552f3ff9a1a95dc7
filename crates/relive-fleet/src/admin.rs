//! The operator's side: publish with compare-and-set, canaries, promote,
//! abort, rollback, versions and the fleet's status.
//!
//! Every write is one etcd transaction that compares what the operator
//! read with what is there: two operators never overwrite each other
//! silently, and a canary's document and its instances change together.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use etcd_client::{Client, Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse, WatchOptions};
use relive::{ConfigError, ConfigErrorKind};
use serde::Serialize;
use tokio::time::timeout;

use crate::Error;
use crate::connect::Connection;
use crate::draft::Draft;
use crate::layout::{
    Canary, Layout, StatusRecord, check_instance_id, config_author, decode_config, push_id, with_author_and_push,
};
use crate::status::FleetStatus;

mod set;
pub use set::{MAX_SET, PushedSet};

/// Settings of an operator's connection to a fleet;
/// [`connect`](FleetBuilder::connect) makes a [`Fleet`].
///
/// ```no_run
/// # async fn f() -> Result<(), relive_fleet::Error> {
/// use relive_fleet::{FleetBuilder, Draft, Expect};
/// let fleet = FleetBuilder::new("http://127.0.0.1:2379", "shop")?.operator("alice").connect().await?;
/// let draft = Draft::read("server.toml")?;
/// let pushed = fleet.push("server", &draft, Expect::Current).await?;
/// println!("server is at version {}", pushed.version);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FleetBuilder {
    conn: Connection,
    layout: Layout,
    operator: Option<String>,
    request_timeout: Duration,
}

impl FleetBuilder {
    /// The fleet under `prefix` in the etcd at `endpoint`
    /// (`http://127.0.0.1:2379`, `https://etcd-1:2379`).
    pub fn new(endpoint: impl Into<String>, prefix: &str) -> Result<FleetBuilder, Error> {
        Ok(FleetBuilder {
            conn: Connection::new(endpoint.into()),
            layout: Layout::new(prefix)?,
            operator: None,
            request_timeout: Duration::from_secs(5),
        })
    }

    /// More endpoints of the same cluster.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> FleetBuilder {
        self.conn.endpoints.push(endpoint.into());
        self
    }

    /// The CA certificates (PEM) that sign etcd's server certificate, for
    /// `https://` endpoints.
    pub fn ca_certificate(mut self, path: impl Into<PathBuf>) -> FleetBuilder {
        self.conn.ca(path.into());
        self
    }

    /// A client certificate and its private key (PEM), for etcd's
    /// `--client-cert-auth`. With authentication on and no user, etcd
    /// takes the certificate's common name as the user.
    pub fn client_certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> FleetBuilder {
        self.conn.identity(cert.into(), key.into());
        self
    }

    /// An etcd user and its password. The password is sent only over
    /// `https://`, or in clear to a loopback address, unless
    /// [`insecure_plaintext`](FleetBuilder::insecure_plaintext).
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> FleetBuilder {
        self.conn.user(name.into(), password.into());
        self
    }

    /// Allows sending a password in clear to an `http://` endpoint that is
    /// not on this machine. Default: refused ([`Error::Plaintext`]).
    pub fn insecure_plaintext(mut self, allow: bool) -> FleetBuilder {
        self.conn.insecure_plaintext(allow);
        self
    }

    /// Who is operating, as recorded with every write (`alice@laptop`).
    /// Default: the etcd user, else the client certificate's subject, at
    /// this host; without either, `$USER@<host> (unauthenticated)`.
    pub fn operator(mut self, operator: impl Into<String>) -> FleetBuilder {
        self.operator = Some(operator.into());
        self
    }

    /// How long one call to etcd may take. Default 5 s.
    pub fn request_timeout(mut self, timeout: Duration) -> FleetBuilder {
        self.request_timeout = timeout;
        self
    }

    /// Connects to etcd (and authenticates, with a user).
    pub async fn connect(mut self) -> Result<Fleet, Error> {
        let options = self
            .conn
            .options()?
            .with_connect_timeout(self.request_timeout)
            .with_auto_token_refresh(self.conn.user_name().is_some())
            // A member cut off from the others refuses the call ("no
            // leader", sent again to another member) instead of holding
            // it until the request timeout.
            .with_require_leader(true);
        let host = crate::source::hostname();
        let operator = match (self.operator.take(), self.conn.principal()?) {
            (Some(operator), _) => operator,
            (None, Some(principal)) => format!("{principal}@{host}"),
            (None, None) => {
                let user = std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "unknown".into());
                format!("{user}@{host} (unauthenticated)")
            }
        };
        let client = self.sign_in(options).await?;
        Ok(Fleet { client, operator: clean(&operator), opts: self })
    }

    /// A client of every endpoint, signed in (with a user) through the
    /// first member that answers, the others added once it did.
    ///
    /// Signing in is the one call etcd-client makes itself, without this
    /// crate's retries; over a fresh balanced channel it goes to whichever
    /// member is ready first, and a dead member is "ready" at once (its
    /// refused connection is an error to hand out), so an operator whose
    /// first endpoint was down could not sign in at all. Later calls are
    /// balanced over every member and sent again when one fails.
    async fn sign_in(&self, options: etcd_client::ConnectOptions) -> Result<Client, Error> {
        let endpoints = &self.conn.endpoints;
        let mut errors = Vec::new();
        for (i, endpoint) in endpoints.iter().enumerate() {
            match bounded(self.request_timeout, Client::connect([endpoint], Some(options.clone()))).await {
                Ok(client) => {
                    for other in endpoints.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, e)| e) {
                        client.add_endpoint(other).await.map_err(|e| self.etcd("connect", Failed::Etcd(e)))?;
                    }
                    return Ok(client);
                }
                Err(e) if endpoints.len() == 1 => return Err(self.etcd("connect", e)),
                Err(e) => errors.push(format!("{endpoint}: {}", self.conn.explain(e.to_string()))),
            }
        }
        Err(Error::Etcd { endpoints: self.conn.endpoints_text(), action: "connect".into(), message: errors.join("; ") })
    }

    fn etcd(&self, action: impl Into<String>, error: Failed) -> Error {
        let message = self.conn.explain(error.to_string());
        Error::Etcd { endpoints: self.conn.endpoints_text(), action: action.into(), message }
    }
}

/// `text` without control characters: it goes on one line of a header.
fn clean(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

/// The version a write expects a config to be at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Whatever version it is at when read, just before the write (the
    /// write still fails if it changes in between). This overwrites a
    /// change someone made after the caller last looked: operators' tools
    /// should pass the version the operator reviewed, as `relive fleet`
    /// does (it asks for `--expect` or `--force`).
    Current,
    /// This version (`--expect N`); 0: the config must not exist.
    Version(u64),
}

/// Which instances a canary goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Canaries {
    /// This percentage (1 to 100) of the instances that report a status for
    /// the config now: `ceil(n × percent / 100)`, at least one, chosen by
    /// [`choose_canaries`].
    Percent(u8),
    /// These instances; each must report a status for the config now.
    Instances(Vec<String>),
}

/// The outcome of a push or a rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pushed {
    /// The config.
    pub config: String,
    /// Its version now.
    pub version: u64,
    /// Its version before (`None`: it did not exist).
    pub previous: Option<u64>,
    /// The bytes were those of the current version: nothing was written.
    pub unchanged: bool,
}

/// A canary that was started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CanaryStarted {
    /// The config.
    pub config: String,
    /// The canary's version (its key's `mod_revision`).
    pub version: u64,
    /// The version the other instances keep.
    pub base_version: u64,
    /// The instances that get it, sorted.
    pub instances: Vec<String>,
}

/// A canary that was promoted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Promoted {
    /// The config.
    pub config: String,
    /// The config's new version: the canary's document, for everyone.
    pub version: u64,
    /// The canary's version.
    pub canary_version: u64,
}

/// A canary that was aborted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Aborted {
    /// The config.
    pub config: String,
    /// The canary's version, gone.
    pub canary_version: u64,
    /// The version every instance returns to.
    pub version: u64,
}

/// One version of a config still in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigVersion {
    /// The version (the key's `mod_revision` when it was written).
    pub version: u64,
    /// The format its header names (`toml`), or `None` for a value without
    /// a valid header.
    pub format: Option<String>,
    /// The document's size in bytes.
    pub size: usize,
    /// Who wrote it (`alice@laptop`), as its author line says; `None` for
    /// a value written without one (with `etcdctl`).
    pub by: Option<String>,
    /// The id of the push that wrote it, from its `# relive-push:` line;
    /// `None` for a value written otherwise (a promote, `etcdctl`).
    pub push: Option<String>,
    /// The value as stored: header and document.
    #[serde(skip)]
    pub value: Vec<u8>,
}

impl ConfigVersion {
    fn from_kv(kv: &KeyValue) -> ConfigVersion {
        let decoded = decode_config(kv.value()).ok();
        ConfigVersion {
            version: kv.mod_revision() as u64,
            format: decoded.map(|(f, _)| f.name().to_string()),
            size: decoded.map_or(kv.value().len(), |(_, d)| d.len()),
            by: config_author(kv.value()),
            push: push_id(kv.value()),
            value: kv.value().to_vec(),
        }
    }
}

/// The versions of a config that etcd still holds, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Versions {
    /// The config.
    pub config: String,
    /// The versions, newest first (the current one first).
    pub versions: Vec<ConfigVersion>,
    /// When older versions were compacted away: etcd's compaction
    /// revision.
    pub compacted: Option<u64>,
    /// More versions exist than the limit asked for.
    pub truncated: bool,
}

/// A connection to a fleet, for operators. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    client: Client,
    /// Who writes, as recorded with every write.
    operator: String,
    opts: FleetBuilder,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("opts", &self.opts).finish_non_exhaustive()
    }
}

/// What a read of one config finds: its key and its canary's, at one
/// revision.
struct Snapshot {
    key: String,
    canary_key: String,
    config: Option<KeyValue>,
    canary: Option<KeyValue>,
}

impl Snapshot {
    fn version(&self) -> Option<u64> {
        self.config.as_ref().map(|kv| kv.mod_revision() as u64)
    }
}

impl Fleet {
    /// The layout of the fleet's keys.
    pub fn layout(&self) -> &Layout {
        &self.opts.layout
    }

    /// Who this connection writes as (`alice@laptop`), as recorded with
    /// every write.
    pub fn operator(&self) -> &str {
        &self.operator
    }

    /// Publishes `draft` as the next version of config `name`, for every
    /// instance.
    ///
    /// The draft is checked first ([`Draft::check`]); nothing is sent if it
    /// does not parse. The write is one transaction that requires the
    /// config to be at the `expect`ed version and no canary of it to be in
    /// progress; otherwise nothing is written and the error says what it
    /// found. The same bytes as the current version write nothing
    /// ([`Pushed::unchanged`]).
    pub async fn push(&self, name: &str, draft: &Draft, expect: Expect) -> Result<Pushed, Error> {
        draft.check().map_err(|e| Error::Invalid(Box::new(e)))?;
        self.write(name, draft.encoded(), expect).await
    }

    async fn write(&self, name: &str, value: Vec<u8>, expect: Expect) -> Result<Pushed, Error> {
        let snap = self.snapshot(name).await?;
        self.refuse_during_canary(name, &snap)?;
        let previous = snap.version();
        let expected = self.expected(name, &snap, expect)?;
        let push = new_push_id();
        let value = with_author_and_push(&value, &self.operator, &push);
        if snap.config.as_ref().is_some_and(|kv| same_document(kv.value(), &value)) {
            return Ok(Pushed { config: name.to_string(), version: expected, previous, unchanged: true });
        }
        let version = self.publish_once(name, &snap, expected, value, &push).await?;
        Ok(Pushed { config: name.to_string(), version, previous, unchanged: false })
    }

    /// Puts `value`, which carries push id `push`, at config `name`'s key
    /// if the config is still at `expected` and has no canary; returns the
    /// version that holds it.
    ///
    /// When an answer is lost (no answer in time, a broken connection, a
    /// leader that changed or died while the write was in flight) the write
    /// may or may not have been committed. The transaction is then sent
    /// again, for up to three request timeouts: its compare-and-set makes a
    /// second commit impossible, and when the compare fails the key is read
    /// back: a version carrying `push` is this push's, and is its answer.
    /// So a push is one version, and never a conflict with itself.
    async fn publish_once(
        &self,
        name: &str,
        snap: &Snapshot,
        expected: u64,
        value: Vec<u8>,
        push: &str,
    ) -> Result<u64, Error> {
        let txn = put_if_txn(snap, expected, snap.key.clone(), value);
        match self.send(&format!("push {push} of {name}"), &txn).await {
            Ok(Answer { resp, .. }) if resp.succeeded() => Ok(revision(resp.header())),
            Ok(Answer { resp, lost }) => {
                let now = self.snapshot_from(snap, &resp);
                if lost {
                    if let Some(version) = self.landed(&now, expected, push).await? {
                        tracing::info!(config = name, version, push, "an earlier attempt of this push landed");
                        return Ok(version);
                    }
                }
                self.refuse_during_canary(name, &now)?;
                Err(self.conflict(name, &now, expected))
            }
            Err(failed) => Err(self.unanswered(
                format!("publish {}", snap.key),
                failed,
                Some(format!("the version it wrote carries `# relive-push: {push}`")),
            )),
        }
    }

    /// The version of config `snap.key` that push `push` wrote, if it is
    /// among the versions after `expected`: `now` holds the key as the
    /// failed compare found it, and the versions before it are read back
    /// to `expected` (a few at most: one push's write follows `expected`
    /// directly).
    async fn landed(&self, now: &Snapshot, expected: u64, push: &str) -> Result<Option<u64>, Error> {
        let mut next = now.config.clone();
        for _ in 0..64 {
            let Some(kv) = next.take() else { return Ok(None) };
            if push_id(kv.value()).as_deref() == Some(push) {
                return Ok(Some(kv.mod_revision() as u64));
            }
            if kv.mod_revision() as u64 <= expected || kv.version() <= 1 {
                return Ok(None);
            }
            let before = GetOptions::new().with_revision(kv.mod_revision() - 1);
            next =
                self.get(&now.key, Some(before)).await.map_err(|e| self.opts.etcd(format!("read {}", now.key), e))?;
        }
        Ok(None)
    }

    /// Starts a canary: `draft` becomes the version of config `name` for
    /// the chosen instances only, until [`promote`](Fleet::promote) or
    /// [`abort`](Fleet::abort). Others, and instances that join later,
    /// keep the config's current version.
    ///
    /// The config must exist (push a first version without a canary), be at
    /// the `expect`ed version, and have no canary in progress. The
    /// instances are chosen among those that report a status for the
    /// config now, and recorded in the canary, so the status is exact.
    pub async fn canary(
        &self,
        name: &str,
        draft: &Draft,
        expect: Expect,
        canaries: &Canaries,
    ) -> Result<CanaryStarted, Error> {
        draft.check().map_err(|e| Error::Invalid(Box::new(e)))?;
        if let Canaries::Percent(p) = canaries {
            if !(1..=100).contains(p) {
                return Err(Error::InvalidPercent { percent: *p });
            }
        }
        let snap = self.snapshot(name).await?;
        self.refuse_during_canary(name, &snap)?;
        let Some(current) = &snap.config else {
            return Err(Error::NoConfig {
                config: name.to_string(),
                key: snap.key.clone(),
                hint: "a canary needs a version to compare with: publish a first version to every instance",
            });
        };
        let base = self.expected(name, &snap, expect)?;
        let push = new_push_id();
        let value = with_author_and_push(&draft.encoded(), &self.operator, &push);
        if same_document(current.value(), &value) {
            return Err(Error::CanaryUnchanged { config: name.to_string(), version: base });
        }
        let alive = self.serving(name).await?;
        let instances = match canaries {
            Canaries::Percent(p) => {
                if alive.is_empty() {
                    return Err(Error::NoLiveInstances { config: name.to_string() });
                }
                choose_canaries(name, &alive, *p)
            }
            Canaries::Instances(ids) => {
                for id in ids {
                    check_instance_id(id)?;
                }
                let unknown: Vec<String> = ids.iter().filter(|id| !alive.contains(id)).cloned().collect();
                if !unknown.is_empty() || ids.is_empty() {
                    return Err(Error::UnknownInstances { config: name.to_string(), unknown, alive });
                }
                let mut ids = ids.clone();
                ids.sort();
                ids.dedup();
                ids
            }
        };
        let record = Canary {
            value: String::from_utf8(value).map_err(|_| {
                Error::Invalid(Box::new(ConfigError::new(ConfigErrorKind::Syntax, "the document is not UTF-8")))
            })?,
            instances: instances.clone(),
            base_version: base,
            percent: match canaries {
                Canaries::Percent(p) => Some(*p),
                Canaries::Instances(_) => None,
            },
            by: self.operator.clone(),
            at: now(),
            aborted: None,
            returning: Vec::new(),
        };
        let txn = put_if_txn(&snap, base, snap.canary_key.clone(), record.to_json());
        let version = match self.send(&format!("canary {push} of {name}"), &txn).await {
            Ok(Answer { resp, .. }) if resp.succeeded() => revision(resp.header()),
            Ok(Answer { resp, lost }) => {
                let now = self.snapshot_from(&snap, &resp);
                // An earlier attempt started it: the canary carries its id.
                let ours = now.canary.as_ref().filter(|kv| {
                    Canary::from_json(kv.value()).is_ok_and(|c| push_id(c.value.as_bytes()).as_deref() == Some(&push))
                });
                match ours {
                    Some(kv) if lost => kv.mod_revision() as u64,
                    _ => {
                        self.refuse_during_canary(name, &now)?;
                        return Err(self.conflict(name, &now, base));
                    }
                }
            }
            Err(failed) => {
                return Err(self.unanswered(
                    "start the canary".into(),
                    failed,
                    Some(format!("the canary it started carries `# relive-push: {push}`")),
                ));
            }
        };
        Ok(CanaryStarted { config: name.to_string(), version, base_version: base, instances })
    }

    /// Ends config `name`'s canary by publishing its document to everyone:
    /// one transaction writes it to the config key and deletes the canary.
    pub async fn promote(&self, name: &str) -> Result<Promoted, Error> {
        let snap = self.snapshot(name).await?;
        let (kv, canary) = self.in_progress(name, &snap)?;
        let canary_version = kv.mod_revision();
        if snap.version() != Some(canary.base_version) {
            return Err(Error::CanaryStale {
                config: name.to_string(),
                base: canary.base_version,
                now: snap.version(),
            });
        }
        let push = new_push_id();
        let txn = Txn::new()
            .when(vec![
                Compare::mod_revision(snap.canary_key.clone(), CompareOp::Equal, canary_version),
                Compare::mod_revision(snap.key.clone(), CompareOp::Equal, canary.base_version as i64),
            ])
            .and_then(vec![
                // Recorded as written by whoever promotes it, with an id of
                // its own.
                TxnOp::put(
                    snap.key.clone(),
                    with_author_and_push(canary.value.as_bytes(), &self.operator, &push),
                    None,
                ),
                TxnOp::delete(snap.canary_key.clone(), None),
            ])
            .or_else(vec![TxnOp::get(snap.key.clone(), None), TxnOp::get(snap.canary_key.clone(), None)]);
        let version = match self.send(&format!("promote {push} of {name}"), &txn).await {
            Ok(Answer { resp, .. }) if resp.succeeded() => revision(resp.header()),
            Ok(Answer { resp, lost }) => {
                // After a lost answer, the version carrying this promotion's
                // id is its answer.
                let now = self.snapshot_from(&snap, &resp);
                let landed = if lost { self.landed(&now, canary.base_version, &push).await? } else { None };
                landed.ok_or_else(|| Error::CanaryChanged { config: name.to_string() })?
            }
            Err(failed) => {
                return Err(self.unanswered(
                    "promote the canary".into(),
                    failed,
                    Some(format!("the version it wrote carries `# relive-push: {push}`")),
                ));
            }
        };
        Ok(Promoted { config: name.to_string(), version, canary_version: canary_version as u64 })
    }

    /// Ends config `name`'s canary without publishing it: the canary's
    /// instances return to the config's version.
    pub async fn abort(&self, name: &str) -> Result<Aborted, Error> {
        let snap = self.snapshot(name).await?;
        let (kv, _) = self.in_progress(name, &snap)?;
        let canary_version = kv.mod_revision();
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(snap.canary_key.clone(), CompareOp::Equal, canary_version)])
            .and_then(vec![TxnOp::delete(snap.canary_key.clone(), None), TxnOp::get(snap.key.clone(), None)])
            .or_else(vec![TxnOp::get(snap.key.clone(), None), TxnOp::get(snap.canary_key.clone(), None)]);
        let version = match self.send(&format!("abort the canary of {name}"), &txn).await {
            Ok(Answer { resp, .. }) if resp.succeeded() => match resp.op_responses().get(1) {
                Some(TxnOpResponse::Get(get)) => get.kvs().first().map_or(0, |kv| kv.mod_revision() as u64),
                _ => 0,
            },
            Ok(Answer { resp, lost }) => {
                // A delete carries no id. After a lost answer, a canary that
                // is gone while the config stayed where it was is this
                // abort's doing, or an abort's all the same: the state asked
                // for.
                let now = self.snapshot_from(&snap, &resp);
                if lost && now.canary.is_none() && now.version() == snap.version() {
                    now.version().unwrap_or(0)
                } else {
                    return Err(Error::CanaryChanged { config: name.to_string() });
                }
            }
            Err(failed) => return Err(self.unanswered("abort the canary".into(), failed, None)),
        };
        Ok(Aborted { config: name.to_string(), canary_version: canary_version as u64, version })
    }

    /// Publishes the document of config `name` at version `to` again, as
    /// a new version (with compare-and-set, like [`push`](Fleet::push)).
    pub async fn rollback(&self, name: &str, to: u64, expect: Expect) -> Result<Pushed, Error> {
        let old = self.version(name, to).await?;
        self.write(name, old.value, expect).await
    }

    /// Version `version` of config `name`, if etcd still has it.
    ///
    /// Fails with [`Error::NotAVersion`] (naming the nearest versions) if
    /// the config's key was not written at that revision, and with
    /// [`Error::Compacted`] if etcd compacted it away.
    pub async fn version(&self, name: &str, version: u64) -> Result<ConfigVersion, Error> {
        let key = self.opts.layout.config_key(name)?;
        let at = |rev: u64| GetOptions::new().with_revision(rev as i64);
        let found = match self.get(&key, Some(at(version))).await {
            Ok(kv) => kv,
            Err(Failed::Etcd(e)) if e.to_string().contains("required revision has been compacted") => {
                // etcd keeps, at its compaction revision, the newest version
                // of each key from before it.
                let compacted = self.compaction_revision(&key).await?;
                let kv = self.get(&key, Some(at(compacted))).await.map_err(|e| self.opts.etcd("read", e))?;
                match kv {
                    Some(kv) if kv.mod_revision() as u64 == version => return Ok(ConfigVersion::from_kv(&kv)),
                    _ => return Err(Error::Compacted { config: name.to_string(), version, compacted }),
                }
            }
            Err(Failed::Etcd(e)) if e.to_string().contains("future revision") => {
                let now = self.revision().await?;
                return Err(Error::FutureRevision { version, now });
            }
            Err(e) => return Err(self.opts.etcd(format!("read {key} at revision {version}"), e)),
        };
        match found {
            Some(kv) if kv.mod_revision() as u64 == version => Ok(ConfigVersion::from_kv(&kv)),
            _ => {
                let all = self.versions(name, 1000).await?;
                let older = all.versions.iter().map(|v| v.version).find(|&v| v < version);
                let newer = all.versions.iter().rev().map(|v| v.version).find(|&v| v > version);
                Err(Error::NotAVersion { config: name.to_string(), version, older, newer })
            }
        }
    }

    /// The versions of config `name` that etcd still holds, newest first,
    /// at most `limit`: the versions since the key was last created and
    /// not compacted away.
    pub async fn versions(&self, name: &str, limit: usize) -> Result<Versions, Error> {
        let key = self.opts.layout.config_key(name)?;
        let mut out = Versions { config: name.to_string(), versions: Vec::new(), compacted: None, truncated: false };
        let mut next = self.get(&key, None).await.map_err(|e| self.opts.etcd(format!("read {key}"), e))?;
        // Each get at the revision before a version finds the one before it.
        while let Some(kv) = next.take() {
            if out.versions.len() == limit {
                out.truncated = true;
                break;
            }
            out.versions.push(ConfigVersion::from_kv(&kv));
            if kv.version() <= 1 {
                break;
            }
            match self.get(&key, Some(GetOptions::new().with_revision(kv.mod_revision() - 1))).await {
                Ok(kv) => next = kv,
                Err(Failed::Etcd(e)) if e.to_string().contains("required revision has been compacted") => {
                    out.compacted = Some(self.compaction_revision(&key).await?);
                }
                Err(e) => return Err(self.opts.etcd(format!("read {key}"), e)),
            }
        }
        Ok(out)
    }

    /// Every instance's state for every config: what it runs, what it
    /// should run, and whether it rejected it.
    pub async fn status(&self) -> Result<FleetStatus, Error> {
        let layout = &self.opts.layout;
        let prefix = |p: String, keys_only: bool| {
            let options = GetOptions::new().with_prefix();
            TxnOp::get(p, Some(if keys_only { options.with_keys_only() } else { options }))
        };
        // One transaction: configs, canaries and statuses at one revision.
        let txn = Txn::new().and_then(vec![
            // Values too: their author lines.
            prefix(layout.configs_prefix(), false),
            prefix(layout.canary_prefix(), false),
            prefix(layout.instances_prefix(), false),
        ]);
        let resp = self.read_txn("read the fleet's status", txn).await?;
        let gets: Vec<Vec<KeyValue>> = resp
            .op_responses()
            .into_iter()
            .map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().to_vec(),
                _ => Vec::new(),
            })
            .collect();
        let [configs, canaries, statuses] = <[Vec<KeyValue>; 3]>::try_from(gets).map_err(|_| Error::Etcd {
            endpoints: self.opts.conn.endpoints_text(),
            action: "read the fleet's status".into(),
            message: "unexpected transaction response".into(),
        })?;
        let configs = configs.iter().filter_map(|kv| {
            let name = layout.config_name(kv.key())?.to_string();
            Some((name, kv.mod_revision() as u64, config_author(kv.value())))
        });
        let canaries = canaries.iter().filter_map(|kv| {
            let name = layout.canary_name(kv.key())?;
            match Canary::from_json(kv.value()) {
                Ok(canary) => Some((name.to_string(), kv.mod_revision() as u64, canary)),
                Err(error) => {
                    tracing::warn!(config = name, %error, "ignoring a canary record that is not valid JSON");
                    None
                }
            }
        });
        let statuses = statuses.iter().filter_map(|kv| {
            layout.parse_status_key(kv.key())?;
            StatusRecord::from_json(kv.value()).ok()
        });
        Ok(FleetStatus::build(revision(resp.header()), configs.collect(), canaries.collect(), statuses.collect()))
    }

    /// The instances that report a status for config `name` now, sorted.
    async fn serving(&self, name: &str) -> Result<Vec<String>, Error> {
        let layout = &self.opts.layout;
        let mut client = self.client.clone();
        let options = GetOptions::new().with_prefix().with_keys_only();
        let resp = bounded(self.opts.request_timeout, client.get(layout.instances_prefix(), Some(options)))
            .await
            .map_err(|e| self.opts.etcd("list the instances", e))?;
        let mut ids: Vec<String> = resp
            .kvs()
            .iter()
            .filter_map(|kv| layout.parse_status_key(kv.key()))
            .filter(|(_, config)| *config == name)
            .map(|(id, _)| id.to_string())
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// The store's revision now.
    async fn revision(&self) -> Result<u64, Error> {
        let mut client = self.client.clone();
        // A key inside the configs' range: an operator's role may read it.
        let resp = bounded(self.opts.request_timeout, client.get(self.opts.layout.configs_prefix(), None))
            .await
            .map_err(|e| self.opts.etcd("read the store's revision", e))?;
        Ok(revision(resp.header()))
    }

    /// etcd's compaction revision: a watch from revision 1 is refused with
    /// it once anything was compacted.
    async fn compaction_revision(&self, key: &str) -> Result<u64, Error> {
        let limit = self.opts.request_timeout;
        let mut client = self.client.clone();
        let options = WatchOptions::new().with_start_revision(1);
        let mut stream = bounded(limit, client.watch(key, Some(options)))
            .await
            .map_err(|e| self.opts.etcd("find the compaction revision", e))?;
        loop {
            let msg = bounded(limit, stream.message())
                .await
                .map_err(|e| self.opts.etcd("find the compaction revision", e))?;
            match msg {
                Some(resp) if resp.compact_revision() > 0 => return Ok(resp.compact_revision() as u64),
                Some(resp) if resp.created() => continue,
                _ => return Ok(0),
            }
        }
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// A call to etcd bounded by the request timeout, its error in words.
    pub(crate) async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, String> {
        bounded(self.opts.request_timeout, f).await.map_err(|e| e.to_string())
    }

    /// An [`Error::Etcd`] for `action`.
    pub(crate) fn failed(&self, action: String, message: String) -> Error {
        Error::Etcd { endpoints: self.opts.conn.endpoints_text(), action, message: self.opts.conn.explain(message) }
    }

    async fn get(&self, key: &str, options: Option<GetOptions>) -> Result<Option<KeyValue>, Failed> {
        let resp = bounded(self.opts.request_timeout, crate::kv(&self.client).get(key, options)).await?;
        Ok(resp.kvs().first().cloned())
    }

    /// A transaction that only reads, sent again while etcd fails in a way
    /// that passes (a leader lost or changing, a member gone): an
    /// operator's command rides out an election.
    async fn read_txn(&self, action: &str, txn: Txn) -> Result<etcd_client::TxnResponse, Error> {
        self.send(action, &txn).await.map(|answer| answer.resp).map_err(|failed| self.opts.etcd(action, failed.error))
    }

    /// Sends `txn` until etcd answers it, for up to three request
    /// timeouts: while a call fails in a way that leaves its outcome
    /// unknown (no answer in time, a broken connection, a leader changing
    /// or lost, a member without a leader), the same transaction is sent
    /// again, 50 ms later, doubling up to 1 s. The one loop behind every
    /// operator command: reads ride out an election, and a write, whose
    /// compare-and-set makes a second commit impossible, learns from
    /// [`Answer::lost`] that an earlier attempt may have been carried out.
    pub(crate) async fn send(&self, what: &str, txn: &Txn) -> Result<Answer, Unanswered> {
        let limit = self.opts.request_timeout;
        let deadline = tokio::time::Instant::now() + limit * 3;
        let mut delay = Duration::from_millis(50);
        let mut lost = false;
        loop {
            match bounded(limit, crate::kv(&self.client).txn(txn.clone())).await {
                Ok(resp) => return Ok(Answer { resp, lost }),
                Err(error) if error.unknown_outcome() && tokio::time::Instant::now() + delay < deadline => {
                    tracing::warn!(what, %error, ?delay, "etcd's answer was lost; sending the same request again");
                    lost = true;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(error) => return Err(Unanswered { error, lost }),
            }
        }
    }

    /// The error for a write that got no answer: when an earlier attempt's
    /// answer was lost, it says the write may have been carried out, and
    /// how to tell (`carries`).
    pub(crate) fn unanswered(&self, action: String, failed: Unanswered, carries: Option<String>) -> Error {
        match self.opts.etcd(action, failed.error) {
            Error::Etcd { endpoints, action, message } if failed.lost => Error::Etcd {
                endpoints,
                action,
                message: format!(
                    "{message} (an earlier attempt's answer was lost: it may have been carried out{})",
                    carries.map(|c| format!("; {c}")).unwrap_or_default()
                ),
            },
            other => other,
        }
    }

    /// Config `name`'s key and its canary's, read at one revision.
    async fn snapshot(&self, name: &str) -> Result<Snapshot, Error> {
        let key = self.opts.layout.config_key(name)?;
        let canary_key = self.opts.layout.canary_key(name)?;
        let txn = Txn::new().and_then(vec![TxnOp::get(key.clone(), None), TxnOp::get(canary_key.clone(), None)]);
        let resp = self.read_txn(&format!("read {key}"), txn).await?;
        let empty = Snapshot { key, canary_key, config: None, canary: None };
        Ok(self.snapshot_from(&empty, &resp))
    }

    /// The keys of `snap` as two gets in `resp` found them.
    fn snapshot_from(&self, snap: &Snapshot, resp: &etcd_client::TxnResponse) -> Snapshot {
        let mut found = resp.op_responses().into_iter().map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        });
        Snapshot {
            key: snap.key.clone(),
            canary_key: snap.canary_key.clone(),
            config: found.next().flatten(),
            canary: found.next().flatten(),
        }
    }

    fn refuse_during_canary(&self, name: &str, snap: &Snapshot) -> Result<(), Error> {
        let Some(kv) = &snap.canary else { return Ok(()) };
        let instances = Canary::from_json(kv.value()).map(|c| c.instances).unwrap_or_default();
        Err(Error::CanaryInProgress { config: name.to_string(), version: kv.mod_revision() as u64, instances })
    }

    fn in_progress(&self, name: &str, snap: &Snapshot) -> Result<(KeyValue, Canary), Error> {
        let Some(kv) = snap.canary.clone() else { return Err(Error::NoCanary { config: name.to_string() }) };
        let canary = Canary::from_json(kv.value())
            .map_err(|e| Error::BadCanary { key: snap.canary_key.clone(), message: e.to_string() })?;
        Ok((kv, canary))
    }

    /// The version `expect` names, checked against what `snap` found.
    fn expected(&self, name: &str, snap: &Snapshot, expect: Expect) -> Result<u64, Error> {
        let current = snap.version().unwrap_or(0);
        match expect {
            Expect::Current => Ok(current),
            Expect::Version(v) if v == current => Ok(v),
            Expect::Version(v) => Err(self.conflict(name, snap, v)),
        }
    }

    fn conflict(&self, name: &str, snap: &Snapshot, expected: u64) -> Error {
        Error::Conflict { config: name.to_string(), key: snap.key.clone(), current: snap.version(), expected }
    }
}

/// The transaction that puts `value` at `key` if config `snap.key` is at
/// `expected` (0: does not exist) and has no canary; otherwise it reads
/// both keys.
fn put_if_txn(snap: &Snapshot, expected: u64, key: String, value: Vec<u8>) -> Txn {
    Txn::new()
        .when(vec![
            if expected == 0 {
                Compare::create_revision(snap.key.clone(), CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(snap.key.clone(), CompareOp::Equal, expected as i64)
            },
            Compare::create_revision(snap.canary_key.clone(), CompareOp::Equal, 0),
        ])
        .and_then(vec![TxnOp::put(key, value, None)])
        .or_else(vec![TxnOp::get(snap.key.clone(), None), TxnOp::get(snap.canary_key.clone(), None)])
}

/// A new push id: 32 hex digits, unique to one push (not a secret).
///
/// std's `RandomState` is seeded from the operating system's randomness
/// once per thread and moved on for every new one; hashing the time, the
/// process and a counter with two of them gives 128 bits no other push,
/// here or on another machine, will have.
fn new_push_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let half = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_u64(count);
        h.finish()
    };
    format!("{:016x}{:016x}", half(), half())
}

/// The canary instances for `percent` of `alive`: `ceil(n × percent /
/// 100)` of them, at least one, sorted.
///
/// The choice is deterministic: the instances ordered by a hash of the
/// config name and their id (FNV-1a), the first ones taken. The same
/// instances and config give the same choice, and different configs spread
/// their canaries over different instances.
pub fn choose_canaries(config: &str, alive: &[String], percent: u8) -> Vec<String> {
    let n = alive.len();
    let k = (n * usize::from(percent.min(100))).div_ceil(100).clamp(n.min(1), n);
    let mut ranked: Vec<(u64, &String)> = alive.iter().map(|id| (fnv1a(config, id), id)).collect();
    ranked.sort();
    let mut chosen: Vec<String> = ranked.into_iter().take(k).map(|(_, id)| id.clone()).collect();
    chosen.sort();
    chosen
}

pub(crate) fn fnv1a(config: &str, id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in config.as_bytes().iter().chain(b"\0").chain(id.as_bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Whether two stored values hold the same format and document, whoever
/// wrote them.
pub(crate) fn same_document(a: &[u8], b: &[u8]) -> bool {
    match (decode_config(a), decode_config(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn revision(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| h.revision() as u64)
}

pub(crate) fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// etcd's answer to a transaction sent by [`Fleet::send`].
pub(crate) struct Answer {
    pub(crate) resp: etcd_client::TxnResponse,
    /// An earlier attempt's answer was lost: that attempt may have been
    /// carried out, and a failed compare may be its doing.
    pub(crate) lost: bool,
}

/// A transaction [`Fleet::send`] got no answer to.
pub(crate) struct Unanswered {
    error: Failed,
    /// An earlier attempt's answer was lost, as in [`Answer::lost`].
    lost: bool,
}

/// Why a call to etcd failed.
enum Failed {
    Etcd(etcd_client::Error),
    Timeout(Duration),
}

impl Failed {
    /// Whether the request may have been carried out although it failed:
    /// no answer in time, a broken connection, or etcd's "leader changed"
    /// and "request timed out" (both `Unavailable`).
    fn unknown_outcome(&self) -> bool {
        match self {
            Failed::Timeout(_) => true,
            Failed::Etcd(etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_)) => true,
            Failed::Etcd(etcd_client::Error::GRpcStatus(status)) => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
            ),
            Failed::Etcd(_) => false,
        }
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Etcd(e) => write!(f, "{}", crate::connect::describe(e)),
            Failed::Timeout(limit) => write!(f, "no answer within {limit:?}; is etcd running there?"),
        }
    }
}

async fn bounded<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Failed> {
    match timeout(limit, f).await {
        Ok(r) => r.map_err(Failed::Etcd),
        Err(_) => Err(Failed::Timeout(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("web-{i}")).collect()
    }

    #[test]
    fn a_percentage_picks_the_ceiling_and_at_least_one() {
        for (n, percent, want) in
            [(3, 34, 2), (3, 33, 1), (10, 10, 1), (10, 11, 2), (1, 1, 1), (7, 100, 7), (200, 1, 2)]
        {
            let alive = ids(n);
            let chosen = choose_canaries("server", &alive, percent);
            assert_eq!(chosen.len(), want, "{percent}% of {n}");
            assert!(chosen.iter().all(|c| alive.contains(c)));
            assert!(chosen.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
        }
        assert!(choose_canaries("server", &[], 50).is_empty());
    }

    #[test]
    fn the_choice_is_deterministic_and_differs_between_configs() {
        let alive = ids(50);
        let mut shuffled = alive.clone();
        shuffled.reverse();
        assert_eq!(choose_canaries("server", &alive, 10), choose_canaries("server", &shuffled, 10));
        let picks: std::collections::BTreeSet<Vec<String>> =
            ["a", "b", "c", "d", "e"].iter().map(|c| choose_canaries(c, &alive, 10)).collect();
        assert!(picks.len() > 1, "every config got the same canaries: {picks:?}");
    }
}
