//! Change sets over etcd: several configs pushed in one transaction (one
//! revision) are applied by every instance as one change set, whole or not
//! at all, and answered as a whole.

mod common;

use std::time::Duration;

use common::{Etcd, eventually};
use relive::{ChangeEvent, Format, Workspace};
use relive_fleet::{AckState, Draft, Error, Expect, Fleet, FleetAgentBuilder, FleetBuilder, FleetSource, StatusRecord};
use serde::Deserialize;

const PREFIX: &str = "app";
const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Deserialize, PartialEq)]
struct Server {
    port: u16,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
struct Proxy {
    target_port: u16,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
struct Net {
    server: Server,
    proxy: Proxy,
}

fn server(port: u16) -> Draft {
    Draft::new(Format::Toml, format!("port = {port}\n")).origin("server.toml")
}

fn proxy(port: u16) -> Draft {
    Draft::new(Format::Toml, format!("target_port = {port}\n")).origin("proxy.toml")
}

async fn fleet(etcd: &Etcd) -> Fleet {
    FleetBuilder::new(etcd.endpoint(), PREFIX).unwrap().operator("tester@test").connect().await.unwrap()
}

/// Pushes server and proxy at `port` as one set, expecting them at `at`.
async fn push_pair(fleet: &Fleet, port: u16, at: (u64, u64)) -> u64 {
    let (s, p) = (server(port), proxy(port));
    let pushed =
        fleet.push_set(&[("server", &s, Expect::Version(at.0)), ("proxy", &p, Expect::Version(at.1))]).await.unwrap();
    let revision = pushed.revision.expect("the set changed both");
    assert!(pushed.configs.iter().all(|c| c.version == revision), "{pushed:?}");
    revision
}

struct Instance {
    _dir: tempfile::TempDir,
    ws: Workspace,
    source: FleetSource,
}

async fn instance(etcd: &Etcd, id: &str) -> Instance {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let ws = Workspace::new(dir.path());
    let source = common::source(&etcd.endpoint(), PREFIX, id).start(&ws).await.unwrap();
    Instance { _dir: dir, ws, source }
}

async fn status(etcd: &Etcd, id: &str, config: &str) -> Option<StatusRecord> {
    let mut kv = etcd.client().await;
    let resp = kv.get(format!("/{PREFIX}/instances/{id}/{config}"), None).await.unwrap();
    resp.kvs().first().map(|kv| StatusRecord::from_json(kv.value()).unwrap())
}

/// Waits until instance `id`'s statuses of both configs answer `version`.
async fn answered(etcd: &Etcd, id: &str, version: u64) -> (StatusRecord, StatusRecord) {
    eventually(&format!("{id} to answer version {version} of both"), WAIT, || async {
        let s = status(etcd, id, "server").await.filter(|s| s.version == version)?;
        let p = status(etcd, id, "proxy").await.filter(|s| s.version == version)?;
        Some((s, p))
    })
    .await
}

/// A set whose server is invalid for a validating instance: that instance
/// rejects both configs (neither is applied, the proxy's reason names the
/// server), while an instance without the validator applies both as one
/// change set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_with_a_member_one_instance_refuses_is_rejected_whole_there() {
    let etcd = Etcd::start();
    let fleet = fleet(&etcd).await;
    let first = push_pair(&fleet, 2000, (0, 0)).await;
    let strict = instance(&etcd, "strict").await;
    let lax = instance(&etcd, "lax").await;
    let _validator =
        strict
            .ws
            .config::<Server>("server")
            .validate(|s: &Server| {
                if s.port < 1024 { Err(relive::ValidationError::at("port", "must be 1024 or more")) } else { Ok(()) }
            })
            .watch()
            .await
            .unwrap();
    let strict_proxy = strict.ws.config::<Proxy>("proxy").live().await.unwrap();
    let mut lax_events = lax.ws.start_hot_reload().await.unwrap().subscribe();
    answered(&etcd, "strict", first).await;

    let bad = push_pair(&fleet, 80, (first, first)).await;
    let (s, p) = answered(&etcd, "strict", bad).await;
    assert_eq!((s.state, p.state), (AckState::Rejected, AckState::Rejected), "{s:?} {p:?}");
    assert_eq!((s.applied_version, p.applied_version), (Some(first), Some(first)));
    let server_error = s.error.unwrap();
    assert!(server_error.contains("1024") && server_error.contains("server"), "{server_error}");
    let proxy_error = p.error.unwrap();
    assert!(
        proxy_error.contains("server") && proxy_error.contains("1024"),
        "the proxy's reason names the server: {proxy_error}"
    );
    assert_eq!(strict_proxy.load().target_port, 2000, "the proxy kept its value at the validating instance");

    let (s, p) = answered(&etcd, "lax", bad).await;
    assert_eq!((s.state, p.state, s.error, p.error), (AckState::Applied, AckState::Applied, None, None));
    let configs = tokio::time::timeout(WAIT, async {
        loop {
            if let ChangeEvent::ChangeSetApplied { configs, .. } = lax_events.recv().await.unwrap() {
                return configs;
            }
        }
    })
    .await
    .expect("a change set at the lax instance");
    let mut configs = configs.to_vec();
    configs.sort();
    assert_eq!(configs, ["proxy", "server"], "one change set with both");

    // A good set afterwards is applied whole at both.
    let good = push_pair(&fleet, 3000, (bad, bad)).await;
    for id in ["strict", "lax"] {
        let (s, p) = answered(&etcd, id, good).await;
        assert_eq!((s.state, p.state), (AckState::Applied, AckState::Applied), "{id}");
    }
    assert_eq!(strict_proxy.load().target_port, 3000);
    for i in [strict, lax] {
        i.source.shutdown().await;
    }
}

/// Three instances, each with a group of server and proxy whose validator
/// refuses a mix, and 20 sets pushed one after the other: every instance
/// gets each set as one change set with both configs, never a mix, never a
/// refusal, and ends at the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_sets_arrive_whole_at_every_instance_over_many_rounds() {
    const ROUNDS: u16 = 20;
    let etcd = Etcd::start();
    let fleet = fleet(&etcd).await;
    let mut at = push_pair(&fleet, 2000, (0, 0)).await;
    let mut instances = Vec::new();
    for i in 0..3 {
        let instance = instance(&etcd, &format!("web-{i}")).await;
        let group = instance
            .ws
            .group::<Net>(["server", "proxy"])
            .validate(|n: &Net| {
                if n.server.port == n.proxy.target_port {
                    Ok(())
                } else {
                    Err(relive::ValidationError::at("proxy.target_port", "must be the server's port"))
                }
            })
            .watch()
            .await
            .unwrap();
        let events = instance.ws.start_hot_reload().await.unwrap().subscribe();
        instances.push((instance, group, events));
    }
    for round in 1..=ROUNDS {
        at = push_pair(&fleet, 2000 + round, (at, at)).await;
    }
    let last = 2000 + ROUNDS;
    for (i, (instance, mut group, mut events)) in instances.into_iter().enumerate() {
        // The group's values: each a consistent pair, ending at the last.
        tokio::time::timeout(WAIT, async {
            while let Some(net) = group.next().await {
                assert_eq!(net.server.port, net.proxy.target_port, "web-{i} was given a mix: {net:?}");
                if net.server.port == last {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("web-{i} did not reach {last}"));
        answered(&etcd, &format!("web-{i}"), at).await;
        // One change set per push, each with both configs; nothing refused.
        let is_set = |event: ChangeEvent| match event {
            ChangeEvent::ChangeSetApplied { configs, .. } => {
                let mut configs = configs.to_vec();
                configs.sort();
                assert_eq!(configs, ["proxy", "server"], "web-{i}: a change set without both configs");
                1
            }
            ChangeEvent::ValidationFailed { config_name, error } => panic!("web-{i}: {config_name} refused: {error}"),
            _ => 0,
        };
        let mut sets = 0;
        let waited = tokio::time::timeout(WAIT, async {
            while sets < ROUNDS {
                sets += is_set(events.recv().await.expect("events"));
            }
        })
        .await;
        assert!(waited.is_ok(), "web-{i}: {sets} change sets of {ROUNDS}");
        while let Ok(event) = events.try_recv() {
            sets += is_set(event);
        }
        assert_eq!(sets, ROUNDS, "web-{i}: one change set per push");
        instance.source.shutdown().await;
    }
}

/// The agent writes a set's files under a hold on its directory, so an
/// engine watching that directory (the service's; the configs are in no
/// group, so no change-set window joins them) applies each set as one
/// change set with both files, round after round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_writes_a_set_so_that_an_engine_on_its_directory_applies_it_whole() {
    const ROUNDS: u16 = 20;
    let etcd = Etcd::start();
    let fleet = fleet(&etcd).await;
    let mut at = push_pair(&fleet, 2000, (0, 0)).await;
    let dir = tempfile::tempdir().unwrap();
    let agent =
        FleetAgentBuilder::new(common::source(&etcd.endpoint(), PREFIX, "sidecar"), dir.path()).start().await.unwrap();
    let ws = Workspace::new(dir.path());
    let mut events = ws.start_hot_reload().await.unwrap().subscribe();
    let mut server = ws.config::<Server>("server").watch().await.unwrap();
    let mut proxy_values = ws.config::<Proxy>("proxy").watch().await.unwrap();
    for round in 1..=ROUNDS {
        let port = 2000 + round;
        at = push_pair(&fleet, port, (at, at)).await;
        // Both live before the next push: one set per round.
        tokio::time::timeout(WAIT, async {
            while server.current().port != port {
                server.next().await;
            }
            while proxy_values.current().target_port != port {
                proxy_values.next().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("round {round}: the engine did not get both files"));
    }
    // The event of a set follows its values: the last may still be on
    // its way.
    fn record(sets: &mut Vec<Vec<String>>, event: ChangeEvent) {
        if let ChangeEvent::ChangeSetApplied { configs, .. } = event {
            let mut configs = configs.to_vec();
            configs.sort();
            sets.push(configs);
        }
    }
    let mut sets = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        while sets.len() < usize::from(ROUNDS) {
            record(&mut sets, events.recv().await.expect("events"));
        }
    })
    .await;
    while let Ok(event) = events.try_recv() {
        record(&mut sets, event);
    }
    assert!(sets.iter().all(|c| c == &["proxy", "server"]), "a set's files applied apart: {sets:?}");
    assert_eq!(sets.len(), usize::from(ROUNDS), "one change set per round: {sets:?}");
    agent.shutdown().await.unwrap();
}

/// The set's compare-and-set covers every config: one stale expectation
/// writes nothing and names its config; an empty set or a config twice is
/// refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_is_compared_on_every_config_and_written_whole_or_not_at_all() {
    let etcd = Etcd::start();
    let fleet = fleet(&etcd).await;
    let first = push_pair(&fleet, 2000, (0, 0)).await;
    let later = fleet.push("proxy", &proxy(2001), Expect::Version(first)).await.unwrap().version;
    let (s, p) = (server(3000), proxy(3000));
    let e = fleet
        .push_set(&[("server", &s, Expect::Version(first)), ("proxy", &p, Expect::Version(first))])
        .await
        .unwrap_err();
    assert!(matches!(&e, Error::Conflict { config, current: Some(c), .. } if config == "proxy" && *c == later), "{e}");
    assert_eq!(fleet.versions("server", 5).await.unwrap().versions.len(), 1, "server was not written");

    let e = fleet.push_set(&[]).await.unwrap_err();
    assert!(matches!(e, Error::InvalidSet { .. }), "{e}");
    let e = fleet.push_set(&[("server", &s, Expect::Current), ("server", &s, Expect::Current)]).await.unwrap_err();
    assert!(e.to_string().contains("server is in the set twice"), "{e}");

    // A member whose document is unchanged is written with the others:
    // the set is whole in its revision, with one push id.
    let pushed = fleet
        .push_set(&[("server", &server(2000), Expect::Version(first)), ("proxy", &p, Expect::Version(later))])
        .await
        .unwrap();
    let revision = pushed.revision.unwrap();
    assert!(pushed.configs.iter().all(|c| c.version == revision && !c.unchanged), "{pushed:?}");
    for name in ["server", "proxy"] {
        assert_eq!(fleet.version(name, revision).await.unwrap().push, Some(pushed.push.clone()), "{name}");
    }
    // Nothing changed at all: nothing is written.
    let again = fleet
        .push_set(&[("server", &server(2000), Expect::Version(revision)), ("proxy", &p, Expect::Version(revision))])
        .await
        .unwrap();
    assert_eq!(again.revision, None);
    assert!(again.configs.iter().all(|c| c.unchanged && c.version == revision), "{again:?}");
}

/// A set whose transaction etcd commits but whose answer is lost (the
/// connection dies just after the commit): the push answers with the
/// revision it wrote, found by its push id, not a conflict with itself,
/// and it is one revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_whose_answer_is_lost_is_one_revision_not_a_conflict() {
    use std::sync::Arc;
    let etcd = Etcd::start();
    let proxy_to_etcd = Arc::new(common::Proxy::start(etcd.addr()).await);
    let fleet = FleetBuilder::new(proxy_to_etcd.endpoint(), PREFIX)
        .unwrap()
        .request_timeout(Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    let first = push_pair(&fleet, 2000, (0, 0)).await;

    let client = etcd.client().await;
    let mut watcher = client.clone();
    let options = etcd_client::WatchOptions::new().with_prefix().with_start_revision(first as i64 + 1);
    let mut changes = watcher.watch(format!("/{PREFIX}/configs/"), Some(options)).await.unwrap();
    // The write is the only request that carries the new documents.
    proxy_to_etcd.hold_answers_after(b"port = 2001");
    let cutter = Arc::clone(&proxy_to_etcd);
    let cut = tokio::spawn(async move {
        loop {
            let resp = changes.message().await.unwrap().expect("watch stream");
            if let Some(kv) = resp.events().first().and_then(|e| e.kv()) {
                cutter.cut();
                cutter.heal();
                return (kv.mod_revision() as u64, resp.events().len());
            }
        }
    });
    let (s, p) = (server(2001), proxy(2001));
    let pushed = fleet.push_set(&[("server", &s, Expect::Version(first)), ("proxy", &p, Expect::Version(first))]).await;
    let (landed, events) = tokio::time::timeout(WAIT, cut).await.expect("the set reached etcd").unwrap();
    assert_eq!(events, 2, "both configs in the one revision");
    let pushed = pushed.unwrap_or_else(|e| panic!("the set landed at revision {landed}, yet it answered: {e}"));
    assert_eq!(pushed.revision, Some(landed));
    for name in ["server", "proxy"] {
        let versions = fleet.versions(name, 10).await.unwrap();
        let order: Vec<u64> = versions.versions.iter().rev().map(|v| v.version).collect();
        assert_eq!(order, [first, landed], "{name}: one version for the set");
    }
}
