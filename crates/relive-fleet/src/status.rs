//! The fleet's status as an operator sees it: for every instance and
//! config, what it runs, what it should run, and in what state it is.
//!
//! Built by a pure function from one consistent read of etcd (configs,
//! canaries and status keys at one revision), so it is tested without etcd.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::layout::{AckState, Canary, StatusRecord};

/// Where an instance stands with a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SyncState {
    /// It runs the version it should.
    Synced,
    /// It runs an older version (or none) and has not rejected the one it
    /// should run: it has yet to answer it.
    Stale,
    /// It rejected the version it should run, and serves its last good one.
    Rejected,
    /// The config's key was deleted from etcd: instances keep their last
    /// value, and there is nothing to compare it with.
    Removed,
}

impl SyncState {
    /// `SYNCED`, `STALE`, `REJECTED` or `REMOVED`.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Synced => "SYNCED",
            SyncState::Stale => "STALE",
            SyncState::Rejected => "REJECTED",
            SyncState::Removed => "REMOVED",
        }
    }
}

/// One instance's state for one config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceState {
    /// The instance's id.
    pub instance: String,
    /// The host it reported.
    pub host: String,
    /// The config.
    pub config: String,
    /// The version it serves (`None`: none yet).
    pub version: Option<u64>,
    /// The version it should serve: its canary's if it is in one, else the
    /// config key's (`None`: the key was deleted).
    pub target: Option<u64>,
    /// Where it stands.
    pub state: SyncState,
    /// Whether it is one of the config's canary instances.
    pub canary: bool,
    /// Why it rejected the target, when [`SyncState::Rejected`]; else a
    /// note on the version it serves (`rollout aborted: <why>`), if any.
    pub error: Option<String>,
    /// When it last answered a version of the config (RFC 3339), if ever.
    pub at: Option<String>,
}

/// A config's versions: the stable one and its canary's, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigStatus {
    /// The config.
    pub config: String,
    /// The config key's version (`None`: deleted).
    pub version: Option<u64>,
    /// Who wrote that version (`alice@laptop`), if its value says so.
    pub by: Option<String>,
    /// The canary in progress, if any.
    pub canary: Option<CanaryState>,
}

/// A canary in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CanaryState {
    /// The canary's version.
    pub version: u64,
    /// The version the others keep.
    pub base_version: u64,
    /// Its instances.
    pub instances: Vec<String>,
    /// The percentage they were chosen by, if they were.
    pub percent: Option<u8>,
    /// Who started it.
    pub by: String,
    /// When.
    pub at: String,
}

/// The fleet's status at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FleetStatus {
    /// The store's revision it was read at.
    pub revision: u64,
    /// Every config, by name.
    pub configs: Vec<ConfigStatus>,
    /// Every live instance × config, by config then instance.
    pub instances: Vec<InstanceState>,
}

impl FleetStatus {
    /// The status from what etcd holds: each config's version and author, each
    /// canary (its key's version and record), and every status key.
    ///
    /// Every live instance (one with any status key) gets a row for every
    /// config that exists and every config it reported on: an instance
    /// that has not answered a new config yet is [`SyncState::Stale`].
    pub fn build(
        revision: u64,
        configs: Vec<(String, u64, Option<String>)>,
        canaries: Vec<(String, u64, Canary)>,
        statuses: Vec<StatusRecord>,
    ) -> FleetStatus {
        let authors: BTreeMap<String, Option<String>> =
            configs.iter().map(|(name, _, by)| (name.clone(), by.clone())).collect();
        let stable: BTreeMap<String, u64> = configs.into_iter().map(|(name, version, _)| (name, version)).collect();
        let canaries: BTreeMap<String, (u64, Canary)> = canaries.into_iter().map(|(n, v, c)| (n, (v, c))).collect();
        let mut hosts: BTreeMap<String, String> = BTreeMap::new();
        let mut reported: BTreeMap<(String, String), StatusRecord> = BTreeMap::new();
        for status in statuses {
            hosts.insert(status.instance.clone(), status.host.clone());
            reported.insert((status.config.clone(), status.instance.clone()), status);
        }
        let names: BTreeSet<&String> =
            stable.keys().chain(canaries.keys()).chain(reported.keys().map(|(config, _)| config)).collect();

        let mut rows = Vec::new();
        for &name in &names {
            let canary = canaries.get(name);
            for (instance, host) in &hosts {
                let status = reported.get(&(name.clone(), instance.clone()));
                if status.is_none() && !stable.contains_key(name) {
                    continue;
                }
                let member = canary.is_some_and(|(_, c)| c.includes(instance));
                let target = match canary {
                    Some((version, _)) if member => Some(*version),
                    _ => stable.get(name).copied(),
                };
                let version = status.and_then(|s| s.applied_version);
                let rejected = status.filter(|s| s.state == AckState::Rejected && Some(s.version) == target);
                let state = match target {
                    None => SyncState::Removed,
                    Some(_) if rejected.is_some() => SyncState::Rejected,
                    Some(t) if version == Some(t) => SyncState::Synced,
                    Some(_) => SyncState::Stale,
                };
                rows.push(InstanceState {
                    instance: instance.clone(),
                    host: status.map_or(host, |s| &s.host).clone(),
                    config: name.clone(),
                    version,
                    target,
                    state,
                    canary: member,
                    // A rejection's reason, or a note on the version served
                    // (`rollout aborted: ...`).
                    error: rejected
                        .or_else(|| status.filter(|s| Some(s.version) == target))
                        .and_then(|s| s.error.clone()),
                    at: status.map(|s| s.at.clone()),
                });
            }
        }
        let configs = names
            .iter()
            .map(|&name| ConfigStatus {
                config: name.clone(),
                version: stable.get(name).copied(),
                by: authors.get(name).cloned().flatten(),
                canary: canaries.get(name).map(|(version, c)| CanaryState {
                    version: *version,
                    base_version: c.base_version,
                    instances: c.instances.clone(),
                    percent: c.percent,
                    by: c.by.clone(),
                    at: c.at.clone(),
                }),
            })
            .collect();
        FleetStatus { revision, configs, instances: rows }
    }

    /// Only config `name`.
    pub fn only(mut self, name: &str) -> FleetStatus {
        self.configs.retain(|c| c.config == name);
        self.instances.retain(|i| i.config == name);
        self
    }

    /// The row of `instance` for `config`.
    pub fn get(&self, instance: &str, config: &str) -> Option<&InstanceState> {
        self.instances.iter().find(|i| i.instance == instance && i.config == config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(instance: &str, config: &str, version: u64, applied: Option<u64>, state: AckState) -> StatusRecord {
        StatusRecord {
            instance: instance.into(),
            host: format!("{instance}.host"),
            config: config.into(),
            version,
            applied_version: applied,
            state,
            error: (state == AckState::Rejected).then(|| format!("{instance} says no")),
            at: "2026-01-01T00:00:00.000Z".into(),
            labels: Default::default(),
        }
    }

    fn canary(instances: &[&str], base: u64) -> Canary {
        Canary {
            value: "# relive-format: toml\n".into(),
            instances: instances.iter().map(|s| s.to_string()).collect(),
            base_version: base,
            percent: None,
            by: "alice@h".into(),
            at: "t".into(),
            aborted: None,
            returning: Vec::new(),
        }
    }

    #[test]
    fn synced_stale_and_rejected_against_the_stable_version() {
        let s = FleetStatus::build(
            12,
            vec![("server".into(), 10, None)],
            vec![],
            vec![
                status("a", "server", 10, Some(10), AckState::Applied),
                status("b", "server", 7, Some(7), AckState::Applied),
                status("c", "server", 10, Some(7), AckState::Rejected),
                // Rejected an older version, has not answered the newest.
                status("d", "server", 8, Some(7), AckState::Rejected),
            ],
        );
        let row = |i| s.get(i, "server").unwrap();
        assert_eq!((row("a").state, row("a").version, row("a").target), (SyncState::Synced, Some(10), Some(10)));
        assert_eq!(row("b").state, SyncState::Stale);
        assert_eq!((row("c").state, row("c").error.as_deref()), (SyncState::Rejected, Some("c says no")));
        assert_eq!((row("d").state, row("d").error.as_deref()), (SyncState::Stale, None));
        assert_eq!(row("a").host, "a.host");
        assert!(s.instances.iter().all(|r| !r.canary));
    }

    #[test]
    fn canary_members_target_the_canary_version_and_others_the_stable_one() {
        let s = FleetStatus::build(
            20,
            vec![("server".into(), 10, None)],
            vec![("server".into(), 15, canary(&["a"], 10))],
            vec![
                status("a", "server", 15, Some(15), AckState::Applied),
                status("b", "server", 10, Some(10), AckState::Applied),
            ],
        );
        let a = s.get("a", "server").unwrap();
        assert_eq!((a.canary, a.target, a.state), (true, Some(15), SyncState::Synced));
        let b = s.get("b", "server").unwrap();
        assert_eq!((b.canary, b.target, b.state), (false, Some(10), SyncState::Synced));
        let c = s.configs[0].canary.as_ref().unwrap();
        assert_eq!((c.version, c.base_version, c.instances.as_slice()), (15, 10, &["a".to_string()][..]));
        // After an abort, until `a` answers the stable version again.
        let s = FleetStatus::build(
            21,
            vec![("server".into(), 10, None)],
            vec![],
            vec![status("a", "server", 15, Some(15), AckState::Applied)],
        );
        assert_eq!(s.get("a", "server").unwrap().state, SyncState::Stale);
    }

    #[test]
    fn a_new_config_not_yet_answered_is_stale_and_a_deleted_one_removed() {
        let s = FleetStatus::build(
            30,
            vec![("server".into(), 10, None), ("db".into(), 29, Some("alice@h".into()))],
            vec![],
            vec![
                status("a", "server", 10, Some(10), AckState::Applied),
                status("a", "old", 3, Some(3), AckState::Applied),
            ],
        );
        let db = s.get("a", "db").unwrap();
        assert_eq!((db.state, db.version, db.target, db.at.as_deref()), (SyncState::Stale, None, Some(29), None));
        assert_eq!(db.host, "a.host");
        let old = s.get("a", "old").unwrap();
        assert_eq!((old.state, old.target), (SyncState::Removed, None));
        assert_eq!(
            s.configs.iter().map(|c| c.by.as_deref()).collect::<Vec<_>>(),
            [Some("alice@h"), None, None],
            "db, old, server"
        );
        let only = s.clone().only("db");
        assert_eq!((only.configs.len(), only.instances.len()), (1, 1));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["instances"][0]["state"], "STALE");
        assert_eq!(json["instances"][0]["config"], "db");
        assert_eq!(json["revision"], 30);
    }
}
