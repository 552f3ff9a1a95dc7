//! Several configs pushed as one change set: one etcd transaction, so one
//! revision, that compares every config's expected version (and that none
//! has a canary) and puts every changed document, each carrying the set's
//! push id. Instances see the set as the events of one revision and apply
//! it whole or not at all ([`FleetSource`](crate::FleetSource)).

use std::collections::BTreeSet;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::Serialize;

use super::{Answer, Expect, Fleet, Pushed, Snapshot, new_push_id, revision, same_document};
use crate::Error;
use crate::draft::Draft;
use crate::layout::{push_id, with_author_and_push};

/// The outcome of [`Fleet::push_set`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushedSet {
    /// The revision that holds the set: the version of every config it
    /// changed. `None` when no config changed (nothing was written).
    pub revision: Option<u64>,
    /// The set's push id, in every document it wrote (`# relive-push:`).
    pub push: String,
    /// Each config, in the order given: its version now and before.
    pub configs: Vec<Pushed>,
}

/// The most configs one set may hold: etcd refuses a transaction of more
/// than 128 operations by default (`--max-txn-ops`), and a set needs two
/// compares per config.
pub const MAX_SET: usize = 64;

impl Fleet {
    /// Publishes several configs as one change set: one transaction, so
    /// one revision, that requires every config to be at its `expect`ed
    /// version and none to have a canary in progress; otherwise nothing is
    /// written and the error names the config that did not match.
    ///
    /// Instances apply the configs of one revision as one change set:
    /// every one of them or none ([`relive::HotReloadManager::publish_set`]),
    /// and answer each config's status with the set's outcome. Every
    /// config is written, even one whose document is the current one, so
    /// that the set is whole in its revision; when every document is the
    /// current one nothing is written ([`PushedSet::revision`] is `None`).
    /// Each draft is checked first ([`Draft::check`]).
    pub async fn push_set(&self, configs: &[(&str, &Draft, Expect)]) -> Result<PushedSet, Error> {
        if configs.is_empty() || configs.len() > MAX_SET {
            let message = format!("a change set holds 1 to {MAX_SET} configs, not {}", configs.len());
            return Err(Error::InvalidSet { message });
        }
        let mut names = BTreeSet::new();
        for (name, draft, _) in configs {
            if !names.insert(*name) {
                return Err(Error::InvalidSet { message: format!("{name} is in the set twice") });
            }
            self.opts.layout.config_key(name)?;
            draft.check().map_err(|e| Error::Invalid(Box::new(e)))?;
        }
        let names: Vec<&str> = configs.iter().map(|(name, _, _)| *name).collect();
        let snaps = self.snapshots(&names).await?;
        let push = new_push_id();
        let mut expected = Vec::new();
        let mut writes = Vec::new();
        let mut out = Vec::new();
        for ((name, draft, expect), snap) in configs.iter().zip(&snaps) {
            self.refuse_during_canary(name, snap)?;
            let at = self.expected(name, snap, *expect)?;
            expected.push(at);
            let value = with_author_and_push(&draft.encoded(), &self.operator, &push);
            let unchanged = snap.config.as_ref().is_some_and(|kv| same_document(kv.value(), &value));
            writes.push(TxnOp::put(snap.key.clone(), value, None));
            out.push(Pushed { config: name.to_string(), version: at, previous: snap.version(), unchanged });
        }
        if out.iter().all(|p| p.unchanged) {
            return Ok(PushedSet { revision: None, push, configs: out });
        }
        // Every member is written, the unchanged ones too: the set is then
        // whole in this one revision, and an instance that refused an
        // earlier set with these members gets all of them again, not a
        // mix of this set and the one before.
        let version = self.publish_set_once(&snaps, &expected, writes, &push).await?;
        for pushed in &mut out {
            pushed.version = version;
            pushed.unchanged = false;
        }
        Ok(PushedSet { revision: Some(version), push, configs: out })
    }

    /// Every config's key and canary key, read at one revision.
    async fn snapshots(&self, names: &[&str]) -> Result<Vec<Snapshot>, Error> {
        let mut empty = Vec::new();
        let mut gets = Vec::new();
        for name in names {
            let key = self.opts.layout.config_key(name)?;
            let canary_key = self.opts.layout.canary_key(name)?;
            gets.push(TxnOp::get(key.clone(), None));
            gets.push(TxnOp::get(canary_key.clone(), None));
            empty.push(Snapshot { key, canary_key, config: None, canary: None });
        }
        let resp = self.read_txn("read the configs of a change set", Txn::new().and_then(gets)).await?;
        Ok(self.snapshots_from(&empty, &resp))
    }

    /// The snapshots of `snaps` as a transaction's gets (two per config,
    /// in order) found them.
    fn snapshots_from(&self, snaps: &[Snapshot], resp: &etcd_client::TxnResponse) -> Vec<Snapshot> {
        let mut found = resp.op_responses().into_iter().map(|op| match op {
            etcd_client::TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        });
        snaps
            .iter()
            .map(|snap| Snapshot {
                key: snap.key.clone(),
                canary_key: snap.canary_key.clone(),
                config: found.next().flatten(),
                canary: found.next().flatten(),
            })
            .collect()
    }

    /// Sends the set's transaction, again while its answer is lost (as
    /// [`push`](Fleet::push) does for one config): when the compare then
    /// fails, a config of the set that carries `push` says an earlier
    /// attempt landed, and its revision is the answer.
    async fn publish_set_once(
        &self,
        snaps: &[Snapshot],
        expected: &[u64],
        writes: Vec<TxnOp>,
        push: &str,
    ) -> Result<u64, Error> {
        let mut when = Vec::new();
        for (snap, &at) in snaps.iter().zip(expected) {
            when.push(if at == 0 {
                Compare::create_revision(snap.key.clone(), CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(snap.key.clone(), CompareOp::Equal, at as i64)
            });
            when.push(Compare::create_revision(snap.canary_key.clone(), CompareOp::Equal, 0));
        }
        let reads: Vec<TxnOp> = snaps
            .iter()
            .flat_map(|s| [TxnOp::get(s.key.clone(), None), TxnOp::get(s.canary_key.clone(), None)])
            .collect();
        let txn = Txn::new().when(when).and_then(writes).or_else(reads);
        match self.send(&format!("change set {push}"), &txn).await {
            Ok(Answer { resp, .. }) if resp.succeeded() => Ok(revision(resp.header())),
            Ok(Answer { resp, lost }) => {
                let now = self.snapshots_from(snaps, &resp);
                if lost {
                    // Every config the set wrote holds its push id at the
                    // same revision, unless written again since: then the
                    // versions before are read back.
                    for (snap, &at) in now.iter().zip(expected) {
                        if snap.config.as_ref().is_some_and(|kv| push_id(kv.value()).as_deref() == Some(push)) {
                            return Ok(snap.version().unwrap_or(0));
                        }
                        if let Some(version) = self.landed(snap, at, push).await? {
                            return Ok(version);
                        }
                    }
                }
                for ((name, snap), &at) in snaps.iter().map(|s| s.name(self)).zip(&now).zip(expected) {
                    self.refuse_during_canary(&name, snap)?;
                    if snap.version().unwrap_or(0) != at {
                        return Err(self.conflict(&name, snap, at));
                    }
                }
                Err(Error::InvalidSet { message: "etcd refused the set's compare-and-set".into() })
            }
            Err(failed) => Err(self.unanswered(
                "publish a change set".into(),
                failed,
                Some(format!("the versions it wrote carry `# relive-push: {push}`")),
            )),
        }
    }
}

impl Snapshot {
    /// The config's name, from its key.
    fn name(&self, fleet: &Fleet) -> String {
        fleet.opts.layout.config_name(self.key.as_bytes()).unwrap_or(&self.key).to_string()
    }
}
