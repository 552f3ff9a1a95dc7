//! A member cut off from the rest of its cluster by a network partition.
//!
//! Such a member still accepts connections and answers its clients, but it
//! has no leader, so it learns of no new revision: an instance watching
//! through it would keep its last config for as long as the partition
//! lasts, and think itself connected. The source asks etcd to require a
//! leader (gRPC metadata `hasleader`): the member then ends its streams
//! and refuses its calls once it has had no leader for a few election
//! timeouts, and the source moves to the next member.
//!
//! The members run in network namespaces of their own (`common::Netns`,
//! root needed): killing a process is not a partition, since a dead member
//! refuses connections, which the source handled already.

// Network namespaces are Linux's; the CI runs these as root.
#![cfg(target_os = "linux")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, eventually};
use relive::Workspace;
use relive_fleet::{AckState, Draft, Expect, FleetBuilder, FleetSource, Layout, SourceEvent, StatusRecord};

const PREFIX: &str = "app";
/// A few election timeouts (500 ms here) for etcd to give up on the
/// leader, the source's reconnection, and a loaded machine's slack; well
/// under the instances' lease keep-alive period (`LEASE_TTL` / 3), whose
/// failure on a member without a leader also moved an instance, before
/// `require_leader`, after 9.5 s with a 10 s TTL.
const WAIT: Duration = Duration::from_secs(15);
const LEASE_TTL: Duration = Duration::from_secs(60);

fn draft(n: u64) -> Draft {
    Draft::new(relive::Format::Toml, format!("port = {}\n", 1000 + n).into_bytes())
}

struct Instance {
    _dir: tempfile::TempDir,
    _ws: Workspace,
    _source: FleetSource,
    applied: Arc<Mutex<Vec<u64>>>,
    /// Why it lost its connections.
    lost: Arc<Mutex<Vec<String>>>,
}

/// An instance that lists `endpoints` in this order: it connects to the
/// first one that answers.
async fn instance(endpoints: &[String], id: &str) -> Instance {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let ws = Workspace::new(dir.path());
    let (first, rest) = endpoints.split_first().unwrap();
    let mut builder = common::source(first, PREFIX, id).lease_ttl(LEASE_TTL);
    for e in rest {
        builder = builder.endpoint(e.clone());
    }
    let source = builder.start(&ws).await.expect("start the source");
    let (applied, lost) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let mut events = source.subscribe();
    let (applied_log, lost_log) = (Arc::clone(&applied), Arc::clone(&lost));
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                SourceEvent::Applied { config, version } if config == "server" => {
                    applied_log.lock().unwrap().push(version)
                }
                SourceEvent::Disconnected { error, .. } => lost_log.lock().unwrap().push(error),
                _ => {}
            }
        }
    });
    Instance { _dir: dir, _ws: ws, _source: source, applied, lost }
}

/// Cuts off member `cut` (the leader, or a follower) while an instance
/// watches through it; a version pushed on the majority's side reaches the
/// instance, whose status says so on that side.
async fn an_instance_moves_off_a_member_cut_off_from_the_cluster(cut_the_leader: bool) {
    let cluster = Cluster::start_partitionable();
    let endpoints = cluster.endpoints();
    let leader = cluster.leader().await;
    let cut = if cut_the_leader { leader } else { (leader + 1) % 3 };
    let others: Vec<String> = (0..3).filter(|&i| i != cut).map(|i| endpoints[i].clone()).collect();

    // The instance lists the member to be cut first: it watches through it.
    let mut mine = vec![endpoints[cut].clone()];
    mine.extend(others.iter().cloned());
    let web = instance(&mine, "web-0").await;
    let fleet = FleetBuilder::new(others[0].clone(), PREFIX)
        .unwrap()
        .endpoint(others[1].clone())
        .operator("ops@test")
        .connect()
        .await
        .expect("connect the operator");
    let first = fleet.push("server", &draft(0), Expect::Version(0)).await.expect("first push").version;
    let applied = |version: u64| {
        let log = Arc::clone(&web.applied);
        async move {
            eventually(&format!("the instance applied version {version}"), WAIT, || {
                let done = log.lock().unwrap().last() == Some(&version);
                async move { done.then_some(()) }
            })
            .await
        }
    };
    applied(first).await;
    // And acknowledged: an acknowledgement still in flight when the member
    // is cut would time out, a reason to leave other than the one tested.
    let key = Layout::new(PREFIX).unwrap().status_key("web-0", "server").unwrap();
    let majority = etcd_client::Client::connect([others[0].clone()], None).await.expect("connect to the majority");
    let status_of = |version: u64| {
        let (majority, key) = (majority.clone(), key.clone());
        async move {
            eventually(&format!("the instance's status for version {version}"), WAIT, || {
                let (mut client, key) = (majority.clone(), key.clone());
                async move {
                    let resp = client.get(key, None).await.ok()?;
                    let status = StatusRecord::from_json(resp.kvs().first()?.value()).expect("status json");
                    (status.version == version).then_some(status)
                }
            })
            .await
        }
    };
    status_of(first).await;

    let cut_at = Instant::now();
    cluster.partition(cut);
    // The majority goes on (with a new leader if the cut member led).
    let second = fleet.push("server", &draft(1), Expect::Version(first)).await.expect("push on the majority's side");
    applied(second.version).await;
    let moved_after = cut_at.elapsed();
    // It left because the member said it had no leader.
    let lost = web.lost.lock().unwrap().clone();
    assert!(lost.iter().any(|e| e.contains("no leader")), "left the cut member for another reason: {lost:?}");

    // Its acknowledgement is on the majority's side, under a lease held
    // there.
    let status = status_of(second.version).await;
    assert_eq!(status.state, AckState::Applied, "{status:?}");

    // An operator that lists the cut member first still pushes: the member
    // refuses ("no leader") and the push goes to another, once.
    let mut through_cut = FleetBuilder::new(endpoints[cut].clone(), PREFIX).unwrap().operator("ops@test");
    for e in &others {
        through_cut = through_cut.endpoint(e.clone());
    }
    let through_cut =
        through_cut.request_timeout(Duration::from_secs(2)).connect().await.expect("connect through the cut member");
    let third = through_cut
        .push("server", &draft(2), Expect::Version(second.version))
        .await
        .expect("a push from an operator that lists the cut member first");
    applied(third.version).await;
    assert_eq!(web.applied.lock().unwrap().as_slice(), [first, second.version, third.version], "each version once");
    eprintln!(
        "cut member {cut} (leader: {cut_the_leader}); the instance applied the next version {moved_after:?} after the cut"
    );
    cluster.heal(cut);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_on_a_follower_cut_off_from_the_cluster_moves_to_a_member_with_a_leader() {
    an_instance_moves_off_a_member_cut_off_from_the_cluster(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_on_a_leader_cut_off_from_the_cluster_moves_to_a_member_with_a_leader() {
    an_instance_moves_off_a_member_cut_off_from_the_cluster(true).await;
}
