//! Staged rollouts against a real etcd, started by the tests: pushes with
//! compare-and-set, canaries, promote, abort, rollback, status, and the
//! sidecar agent.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Etcd, Proxy, eventually};
use etcd_client::CompactionOptions;
use relive::{Format, Workspace};
use relive_fleet::layout::encode_config;
use relive_fleet::{
    Canaries, Draft, Error, Expect, Fleet, FleetAgentBuilder, FleetBuilder, FleetSource, FleetSourceBuilder,
    FleetStatus, Layout, SourceEvent, SyncState, choose_canaries,
};
use serde::Deserialize;

const PREFIX: &str = "app";
const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Deserialize, PartialEq)]
struct Server {
    port: u16,
}

fn toml(port: u16) -> Draft {
    Draft::new(Format::Toml, format!("port = {port}\n")).origin("server.toml")
}

async fn fleet(etcd: &Etcd) -> Fleet {
    FleetBuilder::new(etcd.endpoint(), PREFIX).unwrap().operator("tester@test").connect().await.unwrap()
}

fn source(endpoint: &str, instance: &str) -> FleetSourceBuilder {
    common::source(endpoint, PREFIX, instance)
}

/// A running instance: its workspace, its source and its view of `server`.
struct Instance {
    _dir: tempfile::TempDir,
    _ws: Workspace,
    fleet: FleetSource,
    server: relive::Live<Server>,
}

async fn instance(endpoint: &str, id: &str) -> Instance {
    instance_with(source(endpoint, id)).await
}

async fn instance_with(source: FleetSourceBuilder) -> Instance {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let ws = Workspace::new(dir.path());
    let fleet = source.start(&ws).await.unwrap();
    let server = ws.config::<Server>("server").live().await.expect("server config");
    Instance { _dir: dir, _ws: ws, fleet, server }
}

/// A fleet whose config `server` is `port = 1`, served by instances `ids`
/// that all run it.
async fn fleet_of(etcd: &Etcd, ids: &[&str]) -> (Fleet, u64, Vec<Instance>) {
    let fleet = fleet(etcd).await;
    let v1 = fleet.push("server", &toml(1), Expect::Version(0)).await.unwrap().version;
    let mut instances = Vec::new();
    for id in ids {
        instances.push(instance(&etcd.endpoint(), id).await);
    }
    let all: Vec<(&str, u64, SyncState)> = ids.iter().map(|&i| (i, v1, SyncState::Synced)).collect();
    converged(&fleet, &all).await;
    (fleet, v1, instances)
}

/// Waits until every row of `server` in the status matches `want`
/// (instance, version it serves, state), and returns the status.
async fn converged(fleet: &Fleet, want: &[(&str, u64, SyncState)]) -> FleetStatus {
    eventually(&format!("the fleet's status to be {want:?}"), WAIT, || async {
        let status = fleet.status().await.unwrap().only("server");
        let rows: Vec<(&str, u64, SyncState)> =
            status.instances.iter().map(|r| (r.instance.as_str(), r.version.unwrap_or(0), r.state)).collect();
        (rows == want).then_some(status)
    })
    .await
}

async fn port_becomes(live: &relive::Live<Server>, port: u16) {
    eventually(&format!("port {port}"), WAIT, || async { (live.load().port == port).then_some(()) }).await
}

/// Pushes config `other` and waits until each instance answered it: its
/// watch then handled every earlier revision too.
async fn barrier(fleet: &Fleet, instances: &[&str]) {
    let draft = Draft::new(Format::Toml, format!("n = {}\n", rand_u64()));
    let version = fleet.push("other", &draft, Expect::Current).await.unwrap().version;
    eventually("every instance to answer the barrier", WAIT, || async {
        let status = fleet.status().await.unwrap();
        instances.iter().all(|i| status.get(i, "other").is_some_and(|r| r.version == Some(version))).then_some(())
    })
    .await
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_reaches_only_its_subset_until_promoted() {
    let etcd = Etcd::start();
    let (fleet, v1, instances) = fleet_of(&etcd, &["a", "b", "c"]).await;
    let [a, b, c] = <[Instance; 3]>::try_from(instances).ok().unwrap();

    let canary = fleet.canary("server", &toml(2), Expect::Version(v1), &Canaries::Instances(vec!["b".into()])).await;
    let canary = canary.unwrap();
    assert_eq!((canary.base_version, canary.instances.as_slice()), (v1, &["b".to_string()][..]));
    assert!(canary.version > v1);
    port_becomes(&b.server, 2).await;
    // Once a and c answered a later revision, they have seen the canary
    // key, and ignored it.
    barrier(&fleet, &["a", "b", "c"]).await;
    assert_eq!((a.server.load().port, c.server.load().port), (1, 1), "the others keep the stable version");
    let status = converged(
        &fleet,
        &[("a", v1, SyncState::Synced), ("b", canary.version, SyncState::Synced), ("c", v1, SyncState::Synced)],
    )
    .await;
    let b_row = status.get("b", "server").unwrap();
    assert_eq!((b_row.canary, b_row.target), (true, Some(canary.version)));
    assert_eq!(
        (status.get("a", "server").unwrap().canary, status.get("a", "server").unwrap().target),
        (false, Some(v1))
    );
    let config = &status.configs[0];
    assert_eq!(config.version, Some(v1));
    let in_progress = config.canary.as_ref().expect("the canary shows");
    assert_eq!((in_progress.version, in_progress.by.as_str()), (canary.version, "tester@test"));

    // Nothing else is published while the canary runs.
    let refused = fleet.push("server", &toml(3), Expect::Current).await.unwrap_err();
    assert!(matches!(refused, Error::CanaryInProgress { .. }), "{refused}");
    assert!(refused.to_string().contains("promote it or abort it first"), "{refused}");

    let promoted = fleet.promote("server").await.unwrap();
    assert_eq!(promoted.canary_version, canary.version);
    let p = promoted.version;
    for instance in [&a, &b, &c] {
        port_becomes(&instance.server, 2).await;
    }
    let status =
        converged(&fleet, &[("a", p, SyncState::Synced), ("b", p, SyncState::Synced), ("c", p, SyncState::Synced)])
            .await;
    assert!(status.configs[0].canary.is_none() && status.instances.iter().all(|r| !r.canary));
    let e = fleet.promote("server").await.unwrap_err();
    assert_eq!(e.to_string(), "no canary of server is in progress");
    for i in [a, b, c] {
        i.fleet.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_a_canary_returns_its_instances_to_the_stable_version() {
    let etcd = Etcd::start();
    let (fleet, v1, instances) = fleet_of(&etcd, &["a", "b"]).await;
    let [a, b] = <[Instance; 2]>::try_from(instances).ok().unwrap();

    let canary =
        fleet.canary("server", &toml(2), Expect::Current, &Canaries::Instances(vec!["a".into()])).await.unwrap();
    port_becomes(&a.server, 2).await;
    converged(&fleet, &[("a", canary.version, SyncState::Synced), ("b", v1, SyncState::Synced)]).await;

    let aborted = fleet.abort("server").await.unwrap();
    assert_eq!((aborted.canary_version, aborted.version), (canary.version, v1));
    port_becomes(&a.server, 1).await;
    // a answers the stable version again.
    converged(&fleet, &[("a", v1, SyncState::Synced), ("b", v1, SyncState::Synced)]).await;
    assert_eq!(b.server.load().port, 1);
    // And the next push goes to everyone.
    let v2 = fleet.push("server", &toml(3), Expect::Version(v1)).await.unwrap().version;
    port_becomes(&a.server, 3).await;
    port_becomes(&b.server, 3).await;
    converged(&fleet, &[("a", v2, SyncState::Synced), ("b", v2, SyncState::Synced)]).await;
    a.fleet.shutdown().await;
    b.fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percentage_canary_picks_the_ceiling_of_the_live_instances() {
    let etcd = Etcd::start();
    let ids = ["w0", "w1", "w2", "w3", "w4"];
    let (fleet, v1, instances) = fleet_of(&etcd, &ids).await;

    // ceil(30% of 5) = 2.
    let canary = fleet.canary("server", &toml(2), Expect::Current, &Canaries::Percent(30)).await.unwrap();
    let alive: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    assert_eq!(canary.instances, choose_canaries("server", &alive, 30));
    assert_eq!(canary.instances.len(), 2);
    for (id, instance) in ids.iter().zip(&instances) {
        let want = if canary.instances.iter().any(|c| c == id) { 2 } else { 1 };
        port_becomes(&instance.server, want).await;
    }
    // An instance that joins during the canary gets the stable version.
    let late = instance(&etcd.endpoint(), "w5").await;
    assert_eq!(late.server.load().port, 1);
    let status = fleet.status().await.unwrap();
    let row = status.get("w5", "server").unwrap();
    assert_eq!((row.canary, row.target), (false, Some(v1)));
    let members = status.instances.iter().filter(|r| r.config == "server" && r.canary).count();
    assert_eq!(members, 2);
    fleet.abort("server").await.unwrap();

    // ceil(1% of 6) = 1; a percentage out of range is refused.
    let one = fleet.canary("server", &toml(2), Expect::Current, &Canaries::Percent(1)).await.unwrap();
    assert_eq!(one.instances.len(), 1);
    fleet.abort("server").await.unwrap();
    let e = fleet.canary("server", &toml(2), Expect::Current, &Canaries::Percent(0)).await.unwrap_err();
    assert!(matches!(e, Error::InvalidPercent { percent: 0 }), "{e}");
    let e = fleet.canary("server", &toml(2), Expect::Current, &Canaries::Instances(vec!["ghost".into()])).await;
    let e = e.unwrap_err().to_string();
    assert!(e.contains("ghost") && e.contains("w5"), "{e}");
    for i in instances.into_iter().chain([late]) {
        i.fleet.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_pushes_with_the_same_expected_version_one_wins() {
    let etcd = Etcd::start();
    let fleet = fleet(&etcd).await;
    let mut version = fleet.push("server", &toml(0), Expect::Current).await.unwrap().version;
    for round in 0..40u16 {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let tasks: Vec<_> = [1000 + round, 2000 + round]
            .into_iter()
            .map(|port| {
                let (fleet, barrier) = (fleet.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    fleet.push("server", &toml(port), Expect::Version(version)).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        let won: Vec<u64> = results.iter().filter_map(|r| r.as_ref().ok()).map(|p| p.version).collect();
        assert_eq!(won.len(), 1, "round {round}: exactly one push wins: {results:?}");
        let winner = won[0];
        assert!(!results.iter().flatten().any(|p| p.unchanged));
        let lost = results.into_iter().find_map(Result::err).expect("one push lost");
        match &lost {
            Error::Conflict { current, expected, key, .. } => {
                assert_eq!((*current, *expected, key.as_str()), (Some(winner), version, "/app/configs/server"));
            }
            other => panic!("round {round}: not a conflict: {other}"),
        }
        let message = lost.to_string();
        assert!(
            message.contains(&format!("is at version {winner}, but this push expected version {version}"))
                && message.contains(&format!("write again expecting version {winner}")),
            "{message}"
        );
        version = winner;
    }
    // etcd holds the winner's document.
    let versions = fleet.versions("server", 1).await.unwrap();
    assert_eq!(versions.versions[0].version, version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_checks_the_document_and_the_expected_version_before_writing() {
    let etcd = Etcd::start();
    let fleet = fleet(&etcd).await;
    let v1 = fleet.push("server", &toml(1), Expect::Version(0)).await.unwrap();
    assert_eq!((v1.previous, v1.unchanged), (None, false));
    let v1 = v1.version;

    let same = fleet.push("server", &toml(1), Expect::Current).await.unwrap();
    assert_eq!((same.version, same.unchanged), (v1, true), "the same bytes: no new version");
    assert_eq!(fleet.versions("server", 10).await.unwrap().versions.len(), 1);

    let broken = Draft::new(Format::Toml, "port = 1\nworkers = \n").origin("conf/server.toml");
    let e = fleet.push("server", &broken, Expect::Current).await.unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    assert!(e.to_string().starts_with("conf/server.toml:2:"), "located in the file: {e}");

    let e = fleet.push("server", &toml(2), Expect::Version(0)).await.unwrap_err();
    assert!(e.to_string().contains(&format!("is at version {v1}, but this push expected it not to exist")), "{e}");
    let e = fleet.push("server", &toml(2), Expect::Version(v1 + 100)).await.unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e}");
    let e = fleet.push("fresh", &toml(2), Expect::Version(7)).await.unwrap_err();
    assert!(e.to_string().contains("/app/configs/fresh does not exist, but this push expected version 7"), "{e}");
    let v2 = fleet.push("server", &toml(2), Expect::Version(v1)).await.unwrap();
    assert_eq!((v2.previous, v2.unchanged), (Some(v1), false));

    let e = fleet.canary("fresh", &toml(2), Expect::Current, &Canaries::Percent(50)).await.unwrap_err();
    assert!(e.to_string().contains("publish a first version to every instance"), "{e}");
    let e = fleet.canary("server", &toml(2), Expect::Current, &Canaries::Percent(50)).await.unwrap_err();
    assert!(matches!(e, Error::CanaryUnchanged { .. }), "{e}");
    let e = fleet.canary("server", &toml(3), Expect::Current, &Canaries::Percent(50)).await.unwrap_err();
    assert!(matches!(e, Error::NoLiveInstances { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_publishes_an_old_version_as_a_new_one() {
    let etcd = Etcd::start();
    let fleet = fleet(&etcd).await;
    let v1 = fleet.push("server", &toml(1), Expect::Current).await.unwrap().version;
    let a = instance(&etcd.endpoint(), "a").await;
    let v2 = fleet.push("server", &toml(2), Expect::Current).await.unwrap().version;
    let v3 = fleet.push("server", &toml(3), Expect::Current).await.unwrap().version;
    port_becomes(&a.server, 3).await;

    let back = fleet.rollback("server", v1, Expect::Current).await.unwrap();
    assert_eq!((back.previous, back.unchanged), (Some(v3), false));
    assert!(back.version > v3);
    port_becomes(&a.server, 1).await;
    converged(&fleet, &[("a", back.version, SyncState::Synced)]).await;
    let versions = fleet.versions("server", 10).await.unwrap();
    let numbers: Vec<u64> = versions.versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, [back.version, v3, v2, v1]);
    // The same document; the header's push id is the rollback's own.
    let document = |v: &relive_fleet::ConfigVersion| relive_fleet::layout::decode_config(&v.value).unwrap().1.to_vec();
    assert_eq!(document(&versions.versions[0]), document(&versions.versions[3]), "the same bytes as version {v1}");
    assert_ne!(versions.versions[0].push, versions.versions[3].push, "a rollback is a push of its own");
    assert_eq!(versions.versions[0].format.as_deref(), Some("toml"));
    let limited = fleet.versions("server", 2).await.unwrap();
    assert_eq!((limited.versions.len(), limited.truncated), (2, true));
    // Rolling back to the current bytes is no new version.
    let again = fleet.rollback("server", v1, Expect::Current).await.unwrap();
    assert_eq!((again.version, again.unchanged), (back.version, true));
    a.fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_to_a_revision_that_is_no_version_or_was_compacted_is_explained() {
    let etcd = Etcd::start();
    let fleet = fleet(&etcd).await;
    let v1 = fleet.push("server", &toml(1), Expect::Current).await.unwrap().version;
    let other = fleet.push("other", &toml(9), Expect::Current).await.unwrap().version;
    let v2 = fleet.push("server", &toml(2), Expect::Current).await.unwrap().version;

    let e = fleet.rollback("server", other, Expect::Current).await.unwrap_err();
    assert!(matches!(e, Error::NotAVersion { older: Some(o), newer: Some(n), .. } if o == v1 && n == v2), "{e}");
    assert!(e.to_string().contains(&format!("nearest versions are {v1} and {v2}")), "{e}");
    let e = fleet.rollback("server", v2 + 1000, Expect::Current).await.unwrap_err();
    assert!(matches!(e, Error::FutureRevision { .. }), "{e}");

    let v3 = fleet.push("server", &toml(3), Expect::Current).await.unwrap().version;
    let compact_at = v3 - 1;
    let mut client = etcd.client().await;
    client.compact(compact_at as i64, Some(CompactionOptions::new().with_physical())).await.unwrap();
    let e = fleet.rollback("server", v1, Expect::Current).await.unwrap_err();
    assert!(matches!(e, Error::Compacted { compacted, .. } if compacted == compact_at), "{e}");
    let message = e.to_string();
    assert!(message.contains(&format!("compacted its history up to revision {compact_at}")), "{message}");
    assert!(message.contains("--auto-compaction-retention"), "{message}");
    // The newest version before the compaction is still there, and listed.
    let versions = fleet.versions("server", 10).await.unwrap();
    let numbers: Vec<u64> = versions.versions.iter().map(|v| v.version).collect();
    assert_eq!((numbers.as_slice(), versions.compacted), (&[v3, v2][..], Some(compact_at)));
    let back = fleet.rollback("server", v2, Expect::Current).await.unwrap();
    assert!(back.version > v3 && !back.unchanged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_synced_stale_and_rejected_with_the_reason() {
    let etcd = Etcd::start();
    let proxy = Proxy::start(etcd.addr()).await;
    let fleet = fleet(&etcd).await;
    let v1 = fleet.push("server", &toml(2000), Expect::Current).await.unwrap().version;
    let lenient = instance(&etcd.endpoint(), "lenient").await;
    // Its status must outlive the partition below.
    let far = instance_with(source(&proxy.endpoint(), "far").lease_ttl(Duration::from_secs(120))).await;
    let dir = tempfile::tempdir().unwrap();
    let strict = Workspace::new(dir.path());
    let strict_source = source(&etcd.endpoint(), "strict").start(&strict).await.unwrap();
    let _strict_stream =
        strict
            .config::<Server>("server")
            .validate(|s: &Server| {
                if s.port < 1024 { Err(relive::ValidationError::at("port", "must be 1024 or more")) } else { Ok(()) }
            })
            .watch()
            .await
            .unwrap();
    converged(
        &fleet,
        &[("far", v1, SyncState::Synced), ("lenient", v1, SyncState::Synced), ("strict", v1, SyncState::Synced)],
    )
    .await;

    let mut events = far.fleet.subscribe();
    proxy.cut();
    tokio::time::timeout(WAIT, async { while !matches!(events.recv().await, Ok(SourceEvent::Disconnected { .. })) {} })
        .await
        .expect("far disconnects");
    let v2 = fleet.push("server", &toml(80), Expect::Current).await.unwrap().version;
    let status = converged(
        &fleet,
        &[("far", v1, SyncState::Stale), ("lenient", v2, SyncState::Synced), ("strict", v1, SyncState::Rejected)],
    )
    .await;
    let rejected = status.get("strict", "server").unwrap();
    assert_eq!(rejected.target, Some(v2));
    let reason = rejected.error.as_deref().expect("a reason");
    assert!(reason.contains("must be 1024 or more (at `port`)"), "{reason}");
    assert_eq!(status.get("lenient", "server").unwrap().error, None);
    assert_eq!(status.get("far", "server").unwrap().target, Some(v2));
    assert_eq!(lenient.server.load().port, 80);
    let json = serde_json::to_value(&status).unwrap();
    let strict_json = json["instances"].as_array().unwrap().iter().find(|r| r["instance"] == "strict").unwrap();
    assert_eq!(strict_json["state"], "REJECTED");
    assert_eq!(strict_json["host"], "test-host");

    proxy.heal();
    converged(
        &fleet,
        &[("far", v2, SyncState::Synced), ("lenient", v2, SyncState::Synced), ("strict", v1, SyncState::Rejected)],
    )
    .await;
    assert_eq!(far.server.load().port, 80);
    for i in [lenient, far] {
        i.fleet.shutdown().await;
    }
    strict_source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_writes_files_atomically_that_a_workspace_on_its_dir_follows() {
    let etcd = Etcd::start();
    let fleet = fleet(&etcd).await;
    let v1 = fleet.push("server", &toml(1), Expect::Current).await.unwrap().version;
    let dir = tempfile::tempdir().unwrap();
    let agent =
        FleetAgentBuilder::new(source(&etcd.endpoint(), "sidecar").lease_ttl(Duration::from_secs(120)), dir.path())
            .start()
            .await
            .unwrap();
    let file = dir.path().join("config/server.toml");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "port = 1\n", "written before start returns");
    converged(&fleet, &[("sidecar", v1, SyncState::Synced)]).await;

    // A program reading the directory, through relive's file engine.
    let ws = Workspace::new(dir.path());
    let mut server = ws.config::<Server>("server").watch().await.unwrap();
    assert_eq!(*server.current(), Server { port: 1 });

    // A reader that never sees a partial file while versions land.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (file, stop) = (file.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = std::fs::read_to_string(&file).expect("the file is always there");
                let port: u16 = text
                    .strip_prefix("port = ")
                    .and_then(|t| t.strip_suffix('\n'))
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("a torn read: {text:?}"));
                assert!((1..=30).contains(&port), "{port}");
                reads += 1;
            }
            reads
        })
    };
    let mut last = v1;
    for port in 2..=30 {
        last = fleet.push("server", &toml(port), Expect::Current).await.unwrap().version;
    }
    converged(&fleet, &[("sidecar", last, SyncState::Synced)]).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().expect("no torn read") > 0);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "port = 30\n");
    // The stream skips to the newest value: it ends at the last file.
    tokio::time::timeout(WAIT, async {
        while server.current().port != 30 {
            server.next().await.expect("the engine runs");
        }
    })
    .await
    .expect("the config stream on the directory reaches port 30");

    // A version that does not parse is rejected, and the file left alone.
    let key = Layout::new(PREFIX).unwrap().config_key("server").unwrap();
    let mut client = etcd.client().await;
    let bad = client.put(key, encode_config(Format::Toml, b"port = \n"), None).await.unwrap();
    let bad = bad.header().unwrap().revision() as u64;
    let status = converged(&fleet, &[("sidecar", last, SyncState::Rejected)]).await;
    let row = status.get("sidecar", "server").unwrap();
    assert_eq!(row.target, Some(bad));
    assert!(row.error.as_deref().unwrap().starts_with("etcd:/app/configs/server:1:"), "{:?}", row.error);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "port = 30\n");

    // Its own state stays out of config/.
    let names: Vec<String> = std::fs::read_dir(dir.path().join("config"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["server.toml"]);
    assert!(FleetAgentBuilder::private_root(dir.path()).join("data/fleet/app/configs/server.cached").is_file());

    // A clean shutdown removes its status at once, despite the long TTL.
    agent.shutdown().await.unwrap();
    let status = fleet.status().await.unwrap();
    assert!(status.get("sidecar", "server").is_none(), "{status:?}");
    ws.manager().unwrap().shutdown().await.unwrap();
}

/// Every directory under `dir` (itself included) and every file, with its
/// permission bits (Unix's).
#[cfg(unix)]
fn modes_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, bool, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = vec![(dir.to_path_buf(), true, std::fs::metadata(dir).unwrap().permissions().mode() & 0o7777)];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.extend(modes_under(&path));
        } else {
            out.push((path, false, meta.permissions().mode() & 0o7777));
        }
    }
    out
}

/// The agent replaces a file keeping its mode and owner, writes a new one
/// 0600, and keeps its cache 0600 in 0700 directories, under a `data/` that
/// was 0755: what comes from etcd may be a secret.
// Modes and owners are Unix's.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_s_files_are_private_and_a_replaced_file_keeps_its_mode_and_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    const NOBODY: u32 = 65534;
    let etcd = Etcd::start();
    let fleet = fleet(&etcd).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::set_permissions(dir.path().join("data"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = config.join("server.toml");
    std::fs::write(&file, "port = 0\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    // Root gives the file to another user, as a deployment would for the
    // service that reads it.
    let root = std::fs::metadata(&file).unwrap().uid() == 0;
    if root {
        std::os::unix::fs::chown(&file, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let before = std::fs::metadata(&file).unwrap();

    let v1 = fleet.push("server", &toml(1), Expect::Current).await.unwrap().version;
    fleet.push("db", &Draft::new(Format::Toml, "password = \"hunter2\"\n"), Expect::Current).await.unwrap();
    let agent = FleetAgentBuilder::new(source(&etcd.endpoint(), "sidecar"), dir.path()).start().await.unwrap();
    converged(&fleet, &[("sidecar", v1, SyncState::Synced)]).await;
    let v2 = fleet.push("server", &toml(2), Expect::Current).await.unwrap().version;
    converged(&fleet, &[("sidecar", v2, SyncState::Synced)]).await;
    agent.shutdown().await.unwrap();

    assert_eq!(std::fs::read_to_string(&file).unwrap(), "port = 2\n");
    let after = std::fs::metadata(&file).unwrap();
    assert_eq!(
        (after.permissions().mode() & 0o7777, after.uid(), after.gid()),
        (0o640, before.uid(), before.gid()),
        "mode, owner and group are kept"
    );
    let db = std::fs::metadata(config.join("db.toml")).unwrap();
    assert_eq!(db.permissions().mode() & 0o7777, 0o600, "a new file is private");
    let modes = modes_under(&dir.path().join("data"));
    assert!(modes.iter().any(|(p, _, _)| p.ends_with("server.cached")), "{modes:?}");
    for (path, is_dir, mode) in modes {
        assert_eq!(mode, if is_dir { 0o700 } else { 0o600 }, "{} is {mode:o}", path.display());
    }
}
