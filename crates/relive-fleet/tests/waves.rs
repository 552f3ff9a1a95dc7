//! Progressive rollouts against a real etcd and real instances: waves that
//! grow and promote, a rejection that stops and returns everyone to the
//! stable version, one rollout per config, label waves, a failing gate, a
//! driver that stops mid-rollout and another that resumes it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Etcd, eventually};
use relive::{Format, Workspace};
use relive_fleet::{
    Action, Draft, Drive, Error, Expect, Fleet, FleetBuilder, FleetSource, FleetSourceBuilder, GateOutcome, Phase,
    Plan, Rollout, StatusRecord, choose_canaries, parse_waves,
};
use serde::Deserialize;

const PREFIX: &str = "app";
const WAIT: Duration = Duration::from_secs(30);

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

/// A running instance; `strict` ones refuse ports below 1024.
struct Instance {
    _dir: tempfile::TempDir,
    _ws: Workspace,
    _source: FleetSource,
    _strict: Option<relive::ConfigStream<Server>>,
}

async fn instance(etcd: &Etcd, id: &str, zone: Option<&str>, strict: bool) -> Instance {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let ws = Workspace::new(dir.path());
    let mut builder: FleetSourceBuilder = common::source(&etcd.endpoint(), PREFIX, id);
    if let Some(zone) = zone {
        builder = builder.label("zone", zone).unwrap();
    }
    let source = builder.start(&ws).await.unwrap();
    let strict = if strict {
        let stream = ws
            .config::<Server>("server")
            .validate(|s: &Server| {
                if s.port < 1024 { Err(relive::ValidationError::at("port", "must be 1024 or more")) } else { Ok(()) }
            })
            .watch()
            .await
            .unwrap();
        Some(stream)
    } else {
        None
    };
    Instance { _dir: dir, _ws: ws, _source: source, _strict: strict }
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("web-{i}")).collect()
}

/// Waits until `count` instances serve `version` of `server`.
async fn applied(etcd: &Etcd, count: usize, version: u64) -> Vec<StatusRecord> {
    eventually(&format!("{count} instances to serve version {version}"), WAIT, || async {
        let statuses = statuses(etcd).await;
        (statuses.len() == count && statuses.iter().all(|s| s.applied_version == Some(version) && s.version == version))
            .then_some(statuses)
    })
    .await
}

/// Every instance's status record for `server`.
async fn statuses(etcd: &Etcd) -> Vec<StatusRecord> {
    let mut kv = etcd.client().await;
    let resp =
        kv.get(format!("/{PREFIX}/instances/"), Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    resp.kvs()
        .iter()
        .filter(|kv| kv.key_str().unwrap().ends_with("/server"))
        .map(|kv| StatusRecord::from_json(kv.value()).unwrap())
        .collect()
}

fn plan(waves: &str, bake_ms: u64) -> Plan {
    let mut plan = Plan::new(parse_waves(waves).unwrap(), Duration::from_millis(bake_ms));
    plan.apply_timeout_ms = WAIT.as_millis() as u64;
    plan
}

/// Drives the rollout to its end, recording the instances of each wave
/// started.
async fn drive(fleet: &Fleet, gate: Option<&dyn relive_fleet::Gate>) -> (Rollout, Vec<Vec<String>>) {
    let waves = Arc::new(Mutex::new(Vec::new()));
    let seen = waves.clone();
    let mut progress = move |_: &Rollout, action: &Action| {
        if let Action::StartWave(ids) = action {
            seen.lock().unwrap().push(ids.clone());
        }
    };
    let drive = Drive { poll: Duration::from_millis(50), gate, progress: Some(&mut progress), ..Drive::default() };
    let done = tokio::time::timeout(WAIT * 2, fleet.drive_rollout("server", drive)).await.expect("in time").unwrap();
    let waves = waves.lock().unwrap().clone();
    (done, waves)
}

#[tokio::test(flavor = "current_thread")]
async fn four_waves_over_ten_instances_complete() {
    let etcd = Etcd::start();
    let fleet = fleet(&etcd).await;
    let mut instances = Vec::new();
    fleet.push("server", &toml(2000), Expect::Version(0)).await.unwrap();
    for id in ids(10) {
        instances.push(instance(&etcd, &id, None, false).await);
    }
    let base = fleet.rollout("server").await.unwrap();
    assert!(base.is_none());
    let v1 = fleet.versions("server", 1).await.unwrap().versions[0].version;
    applied(&etcd, 10, v1).await;

    let started = fleet.start_rollout("server", &toml(3000), Expect::Version(v1), plan("1,10%,50%,100%", 300)).await;
    assert_eq!(started.unwrap().phase, Phase::Running);
    let (done, waves) = drive(&fleet, None).await;
    assert_eq!(done.phase, Phase::Done, "{done:?}");
    let sizes: Vec<usize> = waves.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 1, 5, 10]);
    for pair in waves.windows(2) {
        assert!(pair[0].iter().all(|id| pair[1].contains(id)), "each wave keeps the one before: {pair:?}");
    }
    let version = done.version.expect("the promoted version");
    assert_eq!(fleet.versions("server", 1).await.unwrap().versions[0].version, version);
    applied(&etcd, 10, version).await;
    // The record stays, done, and a new rollout may start.
    assert_eq!(fleet.rollout("server").await.unwrap().unwrap().phase, Phase::Done);
    fleet.start_rollout("server", &toml(4000), Expect::Version(version), plan("100%", 0)).await.unwrap();
    drop(instances);
}

#[tokio::test(flavor = "current_thread")]
async fn a_rejection_in_wave_two_stops_it_and_returns_everyone_to_stable() {
    let etcd = Etcd::start();
    let fleet = fleet(&etcd).await;
    let all = ids(10);
    // Not in wave 1 (10%), in wave 2 (50%): the waves grow in
    // choose_canaries' order.
    let wave1 = choose_canaries("server", &all, 10);
    let strict = choose_canaries("server", &all, 50).into_iter().find(|id| !wave1.contains(id)).unwrap();
    fleet.push("server", &toml(2000), Expect::Version(0)).await.unwrap();
    let mut instances = Vec::new();
    for id in &all {
        instances.push(instance(&etcd, id, None, *id == strict).await);
    }
    let base = fleet.versions("server", 1).await.unwrap().versions[0].version;
    applied(&etcd, 10, base).await;

    fleet.start_rollout("server", &toml(80), Expect::Version(base), plan("10%,50%,100%", 200)).await.unwrap();
    let (done, waves) = drive(&fleet, None).await;
    assert_eq!(done.phase, Phase::Stopped, "{done:?}");
    assert!(done.settled);
    assert_eq!(done.wave, 1, "stopped in wave 2");
    assert_eq!(waves.len(), 2);
    let reason = done.reason.clone().unwrap();
    assert!(reason.contains(&format!("{strict} rejected version")) && reason.contains("1024"), "{reason}");

    // Everyone serves the stable version again, and those that left it
    // say why.
    let statuses = applied(&etcd, 10, base).await;
    for s in &statuses {
        if waves[1].contains(&s.instance) {
            let note = s.error.as_deref().unwrap_or("");
            assert!(note.starts_with("rollout aborted: ") && note.contains("rejected"), "{}: {note:?}", s.instance);
        } else {
            assert_eq!(s.error, None, "{} never left the stable version", s.instance);
        }
    }
    let status = fleet.status().await.unwrap().only("server");
    assert!(status.configs[0].canary.is_none(), "the canary key is gone");
    assert_eq!(status.configs[0].version, Some(base));
    let row = status.get(&strict, "server").unwrap();
    assert!(row.error.as_deref().unwrap().starts_with("rollout aborted: "), "{row:?}");
    drop(instances);
}

#[tokio::test(flavor = "current_thread")]
async fn one_rollout_per_config_and_an_abort_returns_its_instances() {
    let etcd = Etcd::start();
    let fleet = fleet(&etcd).await;
    let mut instances = Vec::new();
    fleet.push("server", &toml(2000), Expect::Version(0)).await.unwrap();
    for id in ids(3) {
        instances.push(instance(&etcd, &id, None, false).await);
    }
    let base = fleet.versions("server", 1).await.unwrap().versions[0].version;
    applied(&etcd, 3, base).await;

    // A long bake: the rollout stays in its first wave.
    fleet.start_rollout("server", &toml(3000), Expect::Version(base), plan("1,100%", 600_000)).await.unwrap();
    let other = FleetBuilder::new(etcd.endpoint(), PREFIX).unwrap().operator("bob@test").connect().await.unwrap();
    let e = other.start_rollout("server", &toml(4000), Expect::Version(base), plan("100%", 0)).await.unwrap_err();
    assert!(matches!(e, Error::RolloutInProgress { wave: 1, waves: 2, .. }), "{e}");
    assert!(e.to_string().contains("started by tester@test"), "{e}");

    // Drive until it bakes, then stop driving (a driver that died).
    let driving = fleet.clone();
    let driver = tokio::spawn(async move { drive(&driving, None).await });
    let baking = eventually("the first wave to bake", WAIT, || async {
        fleet.rollout("server").await.unwrap().filter(|r| r.phase == Phase::Baking)
    })
    .await;
    driver.abort();
    let e = fleet.push("server", &toml(5000), Expect::Version(base)).await.unwrap_err();
    assert!(matches!(e, Error::CanaryInProgress { .. }), "a push waits for the rollout: {e}");

    let aborted = other.abort_rollout("server", "aborted by bob@test").await.unwrap();
    assert_eq!(aborted.phase, Phase::Aborted);
    let (done, _) = drive(&other, None).await;
    assert_eq!((done.phase, done.settled), (Phase::Aborted, true));
    let statuses = applied(&etcd, 3, base).await;
    let returned = statuses.iter().find(|s| s.instance == baking.instances[0][0]).unwrap();
    assert_eq!(returned.error.as_deref(), Some("rollout aborted: aborted by bob@test"));
    // Over: the next one may start.
    other.start_rollout("server", &toml(4000), Expect::Version(base), plan("100%", 0)).await.unwrap();
    drop(instances);
}

#[tokio::test(flavor = "current_thread")]
async fn a_driver_that_stops_mid_bake_is_resumed_by_another() {
    let etcd = Etcd::start();
    let fleet = fleet(&etcd).await;
    let mut instances = Vec::new();
    fleet.push("server", &toml(2000), Expect::Version(0)).await.unwrap();
    for id in ids(4) {
        instances.push(instance(&etcd, &id, None, false).await);
    }
    let base = fleet.versions("server", 1).await.unwrap().versions[0].version;
    applied(&etcd, 4, base).await;
    fleet.start_rollout("server", &toml(3000), Expect::Version(base), plan("1,50%,100%", 4000)).await.unwrap();
    let driving = fleet.clone();
    let first = tokio::spawn(async move { drive(&driving, None).await });
    eventually("wave 2 to bake", WAIT, || async {
        fleet.rollout("server").await.unwrap().filter(|r| r.wave == 1 && r.phase == Phase::Baking)
    })
    .await;
    first.abort();
    let _ = first.await;
    // Stopped mid-bake: the bake outlasts the wait above by far.
    let r = fleet.rollout("server").await.unwrap().unwrap();
    assert_eq!((r.wave, r.phase), (1, Phase::Baking), "the first driver stopped during wave 2's bake");

    // Two drivers at once, on their own connections: each step is made by
    // one of them, so every wave starts once.
    let a = FleetBuilder::new(etcd.endpoint(), PREFIX).unwrap().connect().await.unwrap();
    let b = FleetBuilder::new(etcd.endpoint(), PREFIX).unwrap().connect().await.unwrap();
    let ((done_a, waves_a), (done_b, waves_b)) = tokio::join!(drive(&a, None), drive(&b, None));
    assert_eq!(done_a.phase, Phase::Done);
    assert_eq!(done_a.version, done_b.version);
    assert_eq!(waves_a.len() + waves_b.len(), 1, "wave 3 started once: {waves_a:?} {waves_b:?}");
    applied(&etcd, 4, done_a.version.unwrap()).await;
    drop(instances);
}

#[tokio::test(flavor = "current_thread")]
async fn label_waves_and_a_failing_gate() {
    let etcd = Etcd::start();
    let fleet = fleet(&etcd).await;
    let mut instances = Vec::new();
    fleet.push("server", &toml(2000), Expect::Version(0)).await.unwrap();
    for (id, zone) in [("a-1", "a"), ("a-2", "a"), ("b-1", "b"), ("c-1", "c")] {
        instances.push(instance(&etcd, id, Some(zone), false).await);
    }
    let base = fleet.versions("server", 1).await.unwrap().versions[0].version;
    let statuses = applied(&etcd, 4, base).await;
    let b1 = statuses.iter().find(|s| s.instance == "b-1").unwrap();
    assert_eq!(b1.labels.get("zone").map(String::as_str), Some("b"), "labels are in the status");

    // The gate passes after wave 1 and fails after wave 2.
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let gate = move |r: Rollout| {
        seen.lock().unwrap().push(r.wave);
        async move { if r.wave == 0 { GateOutcome::Passed } else { GateOutcome::Failed("exit status 7".into()) } }
    };
    let mut p = plan("zone=a,zone=b,100%", 100);
    p.gate = Some("healthz".into());
    fleet.start_rollout("server", &toml(3000), Expect::Version(base), p).await.unwrap();
    let (done, waves) = drive(&fleet, Some(&gate)).await;
    assert_eq!(waves, [vec!["a-1", "a-2"], vec!["a-1", "a-2", "b-1"]]);
    assert_eq!(*calls.lock().unwrap(), [0, 1]);
    assert_eq!(
        (done.phase, done.reason.as_deref()),
        (Phase::Stopped, Some("the gate failed after wave 2: exit status 7"))
    );
    applied(&etcd, 4, base).await;
    drop(instances);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_rides_out_an_etcd_restart() {
    let mut etcd = Etcd::start();
    let fleet = fleet(&etcd).await;
    let mut instances = Vec::new();
    fleet.push("server", &toml(2000), Expect::Version(0)).await.unwrap();
    for id in ids(3) {
        instances.push(instance(&etcd, &id, None, false).await);
    }
    let base = fleet.versions("server", 1).await.unwrap().versions[0].version;
    applied(&etcd, 3, base).await;
    fleet.start_rollout("server", &toml(3000), Expect::Version(base), plan("1,100%", 2000)).await.unwrap();
    let driving = fleet.clone();
    let driver = tokio::spawn(async move { drive(&driving, None).await });
    eventually("the first wave to bake", WAIT, || async {
        fleet.rollout("server").await.unwrap().filter(|r| r.phase == Phase::Baking)
    })
    .await;
    // Down for longer than a poll and a request timeout: the driver's
    // reads fail meanwhile.
    etcd.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.restart();
    let (done, waves) = tokio::time::timeout(WAIT * 2, driver).await.expect("in time").unwrap();
    assert_eq!(done.phase, Phase::Done, "{done:?}");
    assert_eq!(waves.len(), 2);
    applied(&etcd, 3, done.version.unwrap()).await;
    drop(instances);
}

/// A rollout on a secured etcd (mutual TLS, authentication on): the
/// operator signs in with its certificate and holds only the fleet's
/// operator role; each instance holds only its own role (`add_instance`),
/// publishes a label, and writes its statuses. A label rollout that a
/// validating instance stops in wave 2 returns everyone with "rollout
/// aborted" in their statuses, and the next one completes: every key a
/// rollout writes (its record, the canary, the promotion, the statuses)
/// is allowed by those roles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_on_a_secured_cluster_runs_with_least_privilege_roles() {
    let pki = common::Pki::new();
    let etcd = Etcd::start_tls(&pki, &[]);
    etcd.enable_auth().await;
    let as_user = |user: &str| {
        let (cert, key) = pki.client(user);
        FleetBuilder::new(etcd.endpoint(), PREFIX)
            .unwrap()
            .ca_certificate(pki.ca())
            .client_certificate(cert, key)
            .request_timeout(Duration::from_secs(3))
    };
    let root = as_user("root").connect().await.unwrap();
    root.create_roles().await.unwrap();
    root.add_operator("alice", None).await.unwrap();
    let zones = [("a-1", "a"), ("a-2", "a"), ("b-1", "b"), ("c-1", "c")];
    for (id, _) in zones {
        root.add_instance(id, None).await.unwrap();
    }
    let fleet = as_user("alice").connect().await.unwrap();
    fleet.push("server", &toml(2000), Expect::Version(0)).await.unwrap();

    let mut instances = Vec::new();
    for (id, zone) in zones {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        let ws = Workspace::new(dir.path());
        let (cert, key) = pki.client(&format!("{PREFIX}-instance-{id}"));
        let source = common::source(&etcd.endpoint(), PREFIX, id)
            .ca_certificate(pki.ca())
            .client_certificate(cert, key)
            .label("zone", zone)
            .unwrap()
            .start(&ws)
            .await
            .unwrap();
        // b-1 refuses ports below 1024.
        let strict = if id == "b-1" {
            let stream = ws
                .config::<Server>("server")
                .validate(|s: &Server| {
                    if s.port < 1024 {
                        Err(relive::ValidationError::at("port", "must be 1024 or more"))
                    } else {
                        Ok(())
                    }
                })
                .watch()
                .await
                .unwrap();
            Some(stream)
        } else {
            None
        };
        instances.push(Instance { _dir: dir, _ws: ws, _source: source, _strict: strict });
    }
    let base = fleet.versions("server", 1).await.unwrap().versions[0].version;
    let statuses = applied(&etcd, 4, base).await;
    for s in &statuses {
        let zone = zones.iter().find(|(id, _)| *id == s.instance).map(|(_, zone)| *zone);
        assert_eq!(s.labels.get("zone").map(String::as_str), zone, "{} publishes its label", s.instance);
    }

    // Stopped in wave 2 by b-1's rejection: everyone returns to the base.
    fleet.start_rollout("server", &toml(80), Expect::Version(base), plan("zone=a,zone=b,100%", 100)).await.unwrap();
    let (done, waves) = drive(&fleet, None).await;
    assert_eq!((done.phase, done.wave, done.settled), (Phase::Stopped, 1, true), "{done:?}");
    assert_eq!(waves, [vec!["a-1", "a-2"], vec!["a-1", "a-2", "b-1"]]);
    let reason = done.reason.clone().unwrap();
    assert!(reason.contains("b-1 rejected version") && reason.contains("1024"), "{reason}");
    let statuses = applied(&etcd, 4, base).await;
    for s in &statuses {
        let note = s.error.as_deref().unwrap_or("");
        if s.instance == "c-1" {
            assert_eq!(s.error, None, "c-1 never left the stable version");
        } else {
            assert!(note.starts_with("rollout aborted: "), "{}: {note:?}", s.instance);
        }
    }
    assert!(fleet.status().await.unwrap().only("server").configs[0].canary.is_none(), "the canary key is gone");

    // The next rollout completes: the operator promotes it.
    fleet.start_rollout("server", &toml(3000), Expect::Version(base), plan("zone=a,100%", 100)).await.unwrap();
    let (done, waves) = drive(&fleet, None).await;
    assert_eq!(done.phase, Phase::Done, "{done:?}");
    assert_eq!(waves.len(), 2);
    let version = done.version.expect("the promoted version");
    let statuses = applied(&etcd, 4, version).await;
    assert!(statuses.iter().all(|s| s.error.is_none()), "{statuses:?}");
    let rollout = fleet.rollout("server").await.unwrap().unwrap();
    assert_eq!(rollout.phase, Phase::Done);

    // What the roles refuse: an instance cannot drive a rollout nor write
    // another instance's status.
    let (cert, key) = pki.client(&format!("{PREFIX}-instance-a-1"));
    let intruder = FleetBuilder::new(etcd.endpoint(), PREFIX)
        .unwrap()
        .ca_certificate(pki.ca())
        .client_certificate(cert, key)
        .connect()
        .await
        .unwrap();
    let e = intruder.start_rollout("server", &toml(4000), Expect::Version(version), plan("100%", 0)).await.unwrap_err();
    assert!(e.to_string().contains("permission denied"), "{e}");
    drop(instances);
}
