//! The etcd source against a real etcd, started by the tests.

mod common;

use std::time::Duration;

use common::{Etcd, Proxy, eventually};
use etcd_client::{Client, CompactionOptions};
use relive::{Format, Workspace};
use relive_fleet::layout::encode_config;
use relive_fleet::{AckState, Boot, FleetSource, FleetSourceBuilder, Layout, SourceEvent, StatusRecord};
use serde::Deserialize;
use tokio::sync::broadcast;

const PREFIX: &str = "app";
const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Deserialize, PartialEq)]
struct Server {
    port: u16,
    workers: usize,
}

fn workspace() -> (tempfile::TempDir, Workspace) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let ws = Workspace::new(dir.path());
    (dir, ws)
}

fn source(endpoint: &str, instance: &str) -> FleetSourceBuilder {
    common::source(endpoint, PREFIX, instance)
}

async fn watch_server(ws: &Workspace) -> relive::ConfigStream<Server> {
    ws.config::<Server>("server")
        .validate(|s: &Server| {
            if s.workers == 0 { Err(relive::ValidationError::at("workers", "must be at least 1")) } else { Ok(()) }
        })
        .watch()
        .await
        .expect("server config")
}

/// Puts config `name` as TOML; returns its version.
async fn put(client: &mut Client, name: &str, toml: &str) -> u64 {
    let key = Layout::new(PREFIX).unwrap().config_key(name).unwrap();
    let resp = client.put(key, encode_config(Format::Toml, toml.as_bytes()), None).await.expect("put");
    resp.header().unwrap().revision() as u64
}

async fn status(client: &mut Client, instance: &str, name: &str) -> Option<StatusRecord> {
    let key = Layout::new(PREFIX).unwrap().status_key(instance, name).unwrap();
    let resp = client.get(key, None).await.expect("get status");
    resp.kvs().first().map(|kv| StatusRecord::from_json(kv.value()).expect("status json"))
}

/// Waits until `instance`'s status for `server` answers `version`.
async fn status_for(client: &Client, instance: &str, version: u64) -> StatusRecord {
    eventually(&format!("{instance}'s status for version {version}"), WAIT, || {
        let mut client = client.clone();
        async move { status(&mut client, instance, "server").await.filter(|s| s.version == version) }
    })
    .await
}

/// The next event that `pick` maps to `Some`, skipping others.
async fn next_event<T>(
    rx: &mut broadcast::Receiver<SourceEvent>,
    what: &str,
    mut pick: impl FnMut(&SourceEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = rx.recv().await.expect("source events");
            if let Some(t) = pick(&event) {
                return t;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn applied(rx: &mut broadcast::Receiver<SourceEvent>, version: u64) {
    next_event(rx, &format!("version {version} applied"), |e| match e {
        SourceEvent::Applied { version: v, .. } if *v == version => Some(()),
        _ => None,
    })
    .await
}

#[test]
fn harness_restarts_etcd_with_its_data() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut etcd = Etcd::start();
    rt.block_on(async {
        let mut c = etcd.client().await;
        c.put("k", "v1", None).await.unwrap();
    });
    etcd.kill();
    etcd.restart();
    rt.block_on(async {
        let mut c = etcd.client().await;
        let resp = c.get("k", None).await.unwrap();
        assert_eq!(resp.kvs()[0].value(), b"v1", "the data dir survives a restart");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_reaches_a_config_stream_and_is_acknowledged() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let v1 = put(&mut client, "server", "port = 1\nworkers = 1\n").await;
    let (_dir, ws) = workspace();
    let fleet = source(&etcd.endpoint(), "web-1").start(&ws).await.unwrap();
    assert_eq!(fleet.boot(), Boot::Etcd { revision: v1 });
    let mut server = watch_server(&ws).await;
    assert_eq!(*server.current(), Server { port: 1, workers: 1 });
    let live = server.live();
    let s = status_for(&client, "web-1", v1).await;
    assert_eq!((s.state, s.applied_version, s.host.as_str()), (AckState::Applied, Some(v1), "test-host"));

    let v2 = put(&mut client, "server", "port = 2\nworkers = 3\n").await;
    let next = tokio::time::timeout(WAIT, server.next()).await.expect("delivered").expect("stream open");
    assert_eq!(*next, Server { port: 2, workers: 3 });
    assert_eq!(live.load().port, 2);
    let s = status_for(&client, "web-1", v2).await;
    assert_eq!((s.state, s.applied_version, s.error), (AckState::Applied, Some(v2), None));
    assert_eq!((s.instance.as_str(), s.config.as_str()), ("web-1", "server"));
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_version_is_rejected_with_the_reason_and_the_last_good_value_stays() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let v1 = put(&mut client, "server", "port = 1\nworkers = 1\n").await;
    let (_dir, ws) = workspace();
    let fleet = source(&etcd.endpoint(), "web-1").start(&ws).await.unwrap();
    let mut server = watch_server(&ws).await;
    let live = server.live();

    let v2 = put(&mut client, "server", "port = 2\nworkers = 0\n").await;
    let s = status_for(&client, "web-1", v2).await;
    assert_eq!((s.state, s.applied_version), (AckState::Rejected, Some(v1)));
    let error = s.error.expect("a rejection says why");
    assert!(error.contains("must be at least 1 (at `workers`)"), "{error}");
    assert!(error.starts_with("etcd:/app/configs/server:2:"), "located in the document: {error}");

    let v3 = put(&mut client, "server", "port = \n").await;
    let s = status_for(&client, "web-1", v3).await;
    assert_eq!((s.state, s.applied_version), (AckState::Rejected, Some(v1)));
    assert!(s.error.as_deref().unwrap().starts_with("etcd:/app/configs/server:1:"), "{:?}", s.error);

    let key = Layout::new(PREFIX).unwrap().config_key("server").unwrap();
    let v4 = client.put(key, "port = 4\n", None).await.unwrap().header().unwrap().revision() as u64;
    let s = status_for(&client, "web-1", v4).await;
    assert_eq!(s.state, AckState::Rejected);
    assert!(s.error.as_deref().unwrap().contains("missing format header"), "{:?}", s.error);

    assert_eq!(*server.current(), Server { port: 1, workers: 1 });
    assert_eq!(live.load().port, 1, "readers keep the last good value");

    let v5 = put(&mut client, "server", "port = 5\nworkers = 2\n").await;
    let next = tokio::time::timeout(WAIT, server.next()).await.expect("delivered").expect("stream open");
    assert_eq!(*next, Server { port: 5, workers: 2 }, "the first value after the rejections is the next good one");
    let s = status_for(&client, "web-1", v5).await;
    assert_eq!((s.state, s.applied_version, s.error), (AckState::Applied, Some(v5), None));
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_rejects_while_another_applies() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    put(&mut client, "server", "port = 1\nworkers = 1\n").await;
    let (_d1, lenient) = workspace();
    let (_d2, strict) = workspace();
    let a = source(&etcd.endpoint(), "lenient").start(&lenient).await.unwrap();
    let b = source(&etcd.endpoint(), "strict").start(&strict).await.unwrap();
    let _a_stream = watch_server(&lenient).await;
    let _b_stream =
        strict
            .config::<Server>("server")
            .validate(|s: &Server| {
                if s.port < 1024 { Err(relive::ValidationError::at("port", "must be 1024 or more")) } else { Ok(()) }
            })
            .default_value(Server { port: 8080, workers: 1 })
            .watch()
            .await
            .unwrap();

    let v2 = put(&mut client, "server", "port = 80\nworkers = 2\n").await;
    let ok = status_for(&client, "lenient", v2).await;
    let nack = status_for(&client, "strict", v2).await;
    assert_eq!(ok.state, AckState::Applied);
    assert_eq!(nack.state, AckState::Rejected);
    assert!(nack.error.as_deref().unwrap().contains("must be 1024 or more"), "{:?}", nack.error);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_and_restarting_etcd_loses_no_version() {
    let mut etcd = Etcd::start();
    let mut client = etcd.client().await;
    let v1 = put(&mut client, "server", "port = 1\nworkers = 1\n").await;
    let (_dir, ws) = workspace();
    let fleet = source(&etcd.endpoint(), "web-1").start(&ws).await.unwrap();
    let server = watch_server(&ws).await;
    let mut events = fleet.subscribe();
    let mut changes = ws.manager().unwrap().subscribe();

    // Two versions written just before the kill: the source may or may not
    // have seen them when etcd dies.
    let v2 = put(&mut client, "server", "port = 2\nworkers = 1\n").await;
    let v3 = put(&mut client, "server", "port = 3\nworkers = 1\n").await;
    tokio::task::block_in_place(|| etcd.kill());
    // Versions applied before the disconnect count too.
    let mut seen = Vec::new();
    next_event(&mut events, "a disconnect", |e| match e {
        SourceEvent::Applied { version, .. } => {
            seen.push(*version);
            None
        }
        SourceEvent::Disconnected { .. } => Some(()),
        _ => None,
    })
    .await;
    tokio::task::block_in_place(|| etcd.restart());
    let mut client = etcd.client().await;
    let v4 = put(&mut client, "server", "port = 4\nworkers = 1\n").await;

    next_event(&mut events, "version 4 applied", |e| match e {
        SourceEvent::Applied { version, .. } => {
            seen.push(*version);
            (*version == v4).then_some(())
        }
        _ => None,
    })
    .await;
    assert_eq!(seen, [v2, v3, v4], "every version once, in order (v1 was {v1})");
    // The engine saw each of them as a change, too.
    let mut ports = Vec::new();
    while let Ok(event) = changes.try_recv() {
        if let relive::ChangeEvent::ConfigChanged { new_value, .. } = event {
            ports.push(new_value["port"].as_u64().unwrap());
        }
    }
    assert_eq!(ports, [2, 3, 4]);
    assert_eq!(server.live().load().port, 4);
    let s = status_for(&client, "web-1", v4).await;
    assert_eq!((s.state, s.applied_version), (AckState::Applied, Some(v4)));
    fleet.shutdown().await;
}

/// An instance behind a proxy, at version 1 of `server`, cut off while
/// versions 2 and 3 are written; `proxy.heal()` ends the partition.
struct Partitioned {
    proxy: Proxy,
    client: Client,
    fleet: FleetSource,
    server: relive::ConfigStream<Server>,
    events: broadcast::Receiver<SourceEvent>,
    v2: u64,
    v3: u64,
    _dir: tempfile::TempDir,
}

async fn partitioned(etcd: &Etcd) -> Partitioned {
    let proxy = Proxy::start(etcd.addr()).await;
    let mut client = etcd.client().await;
    put(&mut client, "server", "port = 1\nworkers = 1\n").await;
    let (dir, ws) = workspace();
    let fleet = source(&proxy.endpoint(), "web-1").start(&ws).await.unwrap();
    let server = watch_server(&ws).await;
    let mut events = fleet.subscribe();

    proxy.cut();
    next_event(&mut events, "a disconnect", |e| matches!(e, SourceEvent::Disconnected { .. }).then_some(())).await;
    let v2 = put(&mut client, "server", "port = 2\nworkers = 1\n").await;
    let v3 = put(&mut client, "server", "port = 3\nworkers = 1\n").await;
    assert_eq!(server.live().load().port, 1, "nothing arrives through the partition");
    Partitioned { proxy, client, fleet, server, events, v2, v3, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_revision_is_re_read_after_a_partition() {
    let etcd = Etcd::start();
    let Partitioned { proxy, mut client, fleet, server, mut events, v2, v3, _dir } = partitioned(&etcd).await;
    client.compact(v3 as i64, Some(CompactionOptions::new().with_physical())).await.unwrap();
    proxy.heal();

    let compacted = next_event(&mut events, "a resync", |e| match e {
        SourceEvent::Resync { compacted } => Some(*compacted),
        SourceEvent::Applied { version, .. } => panic!("applied version {version} before re-reading"),
        _ => None,
    })
    .await;
    assert_eq!(compacted, v3);
    applied(&mut events, v3).await;
    assert_eq!(server.live().load().port, 3, "the newest value, read again (v2 = {v2} was compacted away)");
    let s = status_for(&client, "web-1", v3).await;
    assert_eq!(s.state, AckState::Applied);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_partition_the_watch_resumes_from_the_last_revision_seen() {
    let etcd = Etcd::start();
    // v2 and v3 were written while the instance could not see them, and not
    // compacted: the resumed watch must replay both, in order, with no
    // re-read.
    let Partitioned { proxy, client, fleet, server, mut events, v2, v3, _dir } = partitioned(&etcd).await;
    proxy.heal();

    let mut seen = Vec::new();
    while seen.last() != Some(&v3) {
        let version = next_event(&mut events, "the missed versions", |e| match e {
            SourceEvent::Applied { version, .. } => Some(*version),
            SourceEvent::Resync { compacted } => {
                panic!("re-read everything (compacted {compacted}) instead of resuming")
            }
            _ => None,
        })
        .await;
        seen.push(version);
    }
    assert_eq!(seen, [v2, v3], "every missed version, each once, in order");
    assert_eq!(server.live().load().port, 3);
    assert_eq!(status_for(&client, "web-1", v3).await.state, AckState::Applied);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_with_etcd_down_serves_the_cached_value() {
    let mut etcd = Etcd::start();
    let mut client = etcd.client().await;
    put(&mut client, "server", "port = 1\nworkers = 1\n").await;
    let (dir, ws) = workspace();
    let fleet = source(&etcd.endpoint(), "web-1").start(&ws).await.unwrap();
    let v2 = put(&mut client, "server", "port = 2\nworkers = 2\n").await;
    status_for(&client, "web-1", v2).await;
    // A clean shutdown writes the cache's queue first.
    fleet.shutdown().await;
    ws.manager().unwrap().shutdown().await.unwrap();
    drop(ws);
    tokio::task::block_in_place(|| etcd.kill());

    let ws = Workspace::new(dir.path());
    let fleet = source(&etcd.endpoint(), "web-1").start(&ws).await.unwrap();
    assert_eq!(fleet.boot(), Boot::Cache { configs: 1 });
    let server = watch_server(&ws).await;
    assert_eq!(*server.current(), Server { port: 2, workers: 2 });

    // When etcd is back, the instance catches up and reports.
    let mut events = fleet.subscribe();
    tokio::task::block_in_place(|| etcd.restart());
    let mut client = etcd.client().await;
    let v3 = put(&mut client, "server", "port = 3\nworkers = 3\n").await;
    applied(&mut events, v3).await;
    assert_eq!(server.live().load().port, 3);
    status_for(&client, "web-1", v3).await;
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_removes_the_status_at_once() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let v1 = put(&mut client, "server", "port = 1\nworkers = 1\n").await;
    let (_dir, ws) = workspace();
    // A TTL far longer than the test: only a revoked lease removes the key.
    let fleet = source(&etcd.endpoint(), "web-1").lease_ttl(Duration::from_secs(120)).start(&ws).await.unwrap();
    status_for(&client, "web-1", v1).await;
    fleet.shutdown().await;
    assert_eq!(status(&mut client, "web-1", "server").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_s_status_expires_with_its_lease() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let v1 = put(&mut client, "server", "port = 1\nworkers = 1\n").await;
    let (_dir, ws) = workspace();
    // A generous request timeout: on a loaded machine a keep-alive that
    // takes over a second is slow, not lost, and this test is about leases.
    let fleet: FleetSource = source(&etcd.endpoint(), "web-1")
        .lease_ttl(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(10))
        .start(&ws)
        .await
        .unwrap();
    status_for(&client, "web-1", v1).await;
    // Kept alive past its TTL while the instance runs...
    let mut events = fleet.subscribe();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(status(&mut client, "web-1", "server").await.is_some(), "the lease is kept alive");
    assert!(matches!(events.try_recv(), Err(broadcast::error::TryRecvError::Empty)), "no reconnect needed");
    // ...and gone within a few TTLs of its death (dropped: no revoke).
    drop(fleet);
    eventually("the status key to expire", WAIT, || {
        let mut client = client.clone();
        async move { status(&mut client, "web-1", "server").await.is_none().then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_config_keeps_its_last_value() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let v1 = put(&mut client, "server", "port = 1\nworkers = 1\n").await;
    let (_dir, ws) = workspace();
    let fleet = source(&etcd.endpoint(), "web-1").start(&ws).await.unwrap();
    let server = watch_server(&ws).await;
    let mut events = fleet.subscribe();
    let key = Layout::new(PREFIX).unwrap().config_key("server").unwrap();
    client.delete(key, None).await.unwrap();
    // Events arrive in revision order: once a later put is handled, so is
    // the delete.
    let barrier = put(&mut client, "other", "x = 1\n").await;
    applied(&mut events, barrier).await;
    assert_eq!(server.live().load().port, 1);
    let s = status(&mut client, "web-1", "server").await.expect("status kept");
    assert_eq!((s.state, s.version), (AckState::Applied, v1));
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_totalling_more_than_the_grpc_default_of_4_mib_are_read() {
    // Each config is under etcd's 1.5 MiB request limit; together they are
    // over tonic's default 4 MiB response limit, which once made the first
    // read fail forever.
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let filler = "x".repeat(1_400_000);
    let mut last = 0;
    for i in 0..4 {
        last = put(&mut client, &format!("big{i}"), &format!("filler = \"{filler}\"\nn = {i}\n")).await;
    }
    let (_dir, ws) = workspace();
    let fleet = source(&etcd.endpoint(), "web-1").start(&ws).await.unwrap();
    assert_eq!(fleet.boot(), Boot::Etcd { revision: last });
    for i in 0..4 {
        let loaded = ws.config::<serde_json::Value>(&format!("big{i}")).watch().await.unwrap();
        assert_eq!(loaded.current()["n"], i);
    }
    // The watch takes versions that big too.
    let mut events = fleet.subscribe();
    let next = put(&mut client, "big0", &format!("filler = \"{filler}\"\nn = 10\n")).await;
    applied(&mut events, next).await;
    fleet.shutdown().await;
}
