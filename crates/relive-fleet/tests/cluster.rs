//! The fleet on a real 3-member etcd cluster: a leader killed in the middle
//! of a rollout, and a push whose answer is lost.
//!
//! The operator here works as a rollout does: it pushes a version with
//! compare-and-set (`--expect`) and waits until every instance applied it
//! before it pushes the next. So no instance may skip a version (a
//! reconnecting instance coalesces only versions that arrived while it was
//! away, and here none do), and each applies each version once, in order.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cluster, Etcd, Pki, Proxy, eventually};
use etcd_client::{EventType, WatchOptions};
use relive::Workspace;
use relive_fleet::layout::push_id;
use relive_fleet::{Canaries, Draft, Expect, Fleet, FleetBuilder, FleetSource, Layout, SourceEvent};

const PREFIX: &str = "app";
const WAIT: Duration = Duration::from_secs(30);

fn draft(n: u64) -> Draft {
    Draft::new(relive::Format::Toml, format!("port = {}\n", 1000 + n).into_bytes())
}

/// An instance: its source, its workspace, and every version of `server`
/// it applied, in order, from its events.
struct Instance {
    _dir: tempfile::TempDir,
    _ws: Workspace,
    source: FleetSource,
    applied: Arc<Mutex<Vec<u64>>>,
}

async fn instance(endpoints: &[String], id: &str) -> Instance {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let ws = Workspace::new(dir.path());
    let (first, rest) = endpoints.split_first().unwrap();
    let mut builder = common::source(first, PREFIX, id);
    for e in rest {
        builder = builder.endpoint(e.clone());
    }
    let source = builder.start(&ws).await.expect("start the source");
    let applied = Arc::new(Mutex::new(Vec::new()));
    let mut events = source.subscribe();
    let log = Arc::clone(&applied);
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let SourceEvent::Applied { config, version } = event {
                if config == "server" {
                    log.lock().unwrap().push(version);
                }
            }
        }
    });
    Instance { _dir: dir, _ws: ws, source, applied }
}

async fn operator(endpoints: &[String], timeout: Duration) -> Fleet {
    let (first, rest) = endpoints.split_first().unwrap();
    let mut builder = FleetBuilder::new(first.clone(), PREFIX).unwrap().operator("ops@test").request_timeout(timeout);
    for e in rest {
        builder = builder.endpoint(e.clone());
    }
    builder.connect().await.expect("connect the operator")
}

/// Every revision at which `key` was put, from etcd's own history (a
/// watch from revision 1), up to `last`, with the push id each carries.
async fn history(client: &etcd_client::Client, key: &str, last: u64) -> Vec<(u64, Option<String>)> {
    let mut client = client.clone();
    let mut stream =
        client.watch(key, Some(WatchOptions::new().with_start_revision(1))).await.expect("watch the history");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, async {
        while out.last().is_none_or(|(rev, _)| *rev < last) {
            let resp = stream.message().await.expect("history").expect("history stream");
            for event in resp.events() {
                let kv = event.kv().expect("kv");
                assert_eq!(event.event_type(), EventType::Put, "{key} was deleted at {}", kv.mod_revision());
                out.push((kv.mod_revision() as u64, push_id(kv.value())));
            }
        }
    })
    .await
    .expect("etcd's history up to the last push");
    out
}

/// 5 instances spread over the 3 members, an operator pushing 30 versions
/// with compare-and-set, the leader killed twice in the middle (a push sent
/// right after each kill, during the election) and restarted. Every push
/// lands once, at the revision it returns; every instance applies every
/// version once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_mid_rollout_loses_no_push_and_doubles_none() {
    let mut cluster = Cluster::start();
    let endpoints = cluster.endpoints();
    let key = Layout::new(PREFIX).unwrap().config_key("server").unwrap();
    let fleet = operator(&endpoints, Duration::from_secs(2)).await;

    let mut instances = Vec::new();
    for i in 0..5 {
        // Each instance lists the members from a different one.
        let mut mine = endpoints.clone();
        mine.rotate_left(i % 3);
        instances.push(instance(&mine, &format!("web-{i}")).await);
    }
    // After the instances subscribed: they see every version as an event.
    let mut pushed = vec![fleet.push("server", &draft(0), Expect::Version(0)).await.expect("first push").version];
    let all_applied = |version: u64| {
        let logs: Vec<_> = instances.iter().map(|i| Arc::clone(&i.applied)).collect();
        async move {
            eventually(&format!("every instance applied version {version}"), WAIT, || {
                let done = logs.iter().all(|l| l.lock().unwrap().last() == Some(&version));
                async move { done.then_some(()) }
            })
            .await
        }
    };
    all_applied(pushed[0]).await;

    let mut killed = Vec::new();
    for n in 1..=30u64 {
        match n {
            10 | 22 => {
                let leader = cluster.leader().await;
                cluster.kill(leader);
                killed.push(leader);
            }
            16 | 27 => {
                let member = killed.pop().expect("a killed member");
                cluster.restart(member);
            }
            _ => {}
        }
        let previous = *pushed.last().unwrap();
        let result = fleet.push("server", &draft(n), Expect::Version(previous)).await;
        let done = result.unwrap_or_else(|e| panic!("push {n} (expecting version {previous}): {e}"));
        assert_eq!(done.previous, Some(previous), "push {n}");
        assert!(!done.unchanged, "push {n}");
        pushed.push(done.version);
        all_applied(done.version).await;
    }
    assert!(pushed.windows(2).all(|w| w[0] < w[1]), "versions must increase: {pushed:?}");

    // etcd's history of the key: exactly one revision per push, each the one
    // the push returned, each with a push id of its own.
    let client = cluster.client().await;
    let history = history(&client, &key, *pushed.last().unwrap()).await;
    let revisions: Vec<u64> = history.iter().map(|(rev, _)| *rev).collect();
    assert_eq!(revisions, pushed, "etcd's history of {key} against the pushes' answers");
    let ids: std::collections::BTreeSet<_> = history.iter().map(|(_, id)| id.clone().expect("a push id")).collect();
    assert_eq!(ids.len(), pushed.len(), "every push has an id of its own");

    // Every instance applied every version exactly once, in order.
    let mut seen = BTreeMap::new();
    for (i, instance) in instances.iter().enumerate() {
        seen.insert(format!("web-{i}"), instance.applied.lock().unwrap().clone());
    }
    for (id, applied) in &seen {
        assert_eq!(applied, &pushed, "versions {id} applied");
    }
    for instance in instances {
        instance.source.shutdown().await;
    }
}

/// A push whose transaction etcd commits but whose answer never comes back
/// (the connection dies just after the commit): the push must answer with
/// the version it wrote, not fail, not report a conflict with itself, and
/// not write a second version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_answer_is_lost_is_one_version_not_a_conflict() {
    let etcd = Etcd::start();
    let proxy = Arc::new(Proxy::start(etcd.addr()).await);
    let key = Layout::new(PREFIX).unwrap().config_key("server").unwrap();
    let fleet = operator(&[proxy.endpoint()], Duration::from_secs(1)).await;
    let first = fleet.push("server", &draft(1), Expect::Version(0)).await.expect("first push").version;

    // From now on the proxy carries the push to etcd and drops the answer;
    // once the write is in etcd, the connection is cut, then healed. The
    // write is the only request that carries the new document.
    let client = etcd.client().await;
    let cut = lose_the_answer(&proxy, &client, &key, b"port = 1002").await;
    let pushed = fleet.push("server", &draft(2), Expect::Version(first)).await;
    let landed = tokio::time::timeout(WAIT, cut).await.expect("the push reached etcd").unwrap();
    let pushed = pushed.unwrap_or_else(|e| panic!("the push landed at version {landed}, yet it answered: {e}"));
    assert_eq!(pushed.version, landed, "the push answers the version that holds it");
    assert_eq!(pushed.previous, Some(first));

    // One revision for that push, and the next push expects it.
    let history = history(&client, &key, landed).await;
    assert_eq!(history.iter().map(|(rev, _)| *rev).collect::<Vec<_>>(), [first, landed]);
    let next = fleet.push("server", &draft(3), Expect::Version(landed)).await.expect("the next push");
    assert!(next.version > landed);
    let versions = eventually("three versions", WAIT, || async {
        fleet.versions("server", 10).await.ok().filter(|v| v.versions.len() == 3)
    })
    .await;
    let order: Vec<u64> = versions.versions.iter().rev().map(|v| v.version).collect();
    assert_eq!(order, [first, landed, next.version]);
}

/// From the next request carrying `pattern`, the proxy carries requests to
/// etcd and drops the answers; once `key` changes, the connection is cut
/// and healed. The task returns the revision of that change.
async fn lose_the_answer(
    proxy: &Arc<Proxy>,
    client: &etcd_client::Client,
    key: &str,
    pattern: &[u8],
) -> tokio::task::JoinHandle<u64> {
    let mut watcher = client.clone();
    let mut changes = watcher.watch(key, None).await.expect("watch");
    proxy.hold_answers_after(pattern);
    let cutter = Arc::clone(proxy);
    tokio::spawn(async move {
        loop {
            let resp = changes.message().await.expect("watch").expect("watch stream");
            if let Some(kv) = resp.events().first().and_then(|e| e.kv()) {
                cutter.cut();
                cutter.heal();
                return kv.mod_revision() as u64;
            }
        }
    })
}

/// Starting a canary, promoting it, and aborting another, each with its
/// answer lost after etcd carried it out: each is sent again, finds its
/// own doing, and reports it, instead of a conflict or "the canary
/// changed"; and each happened once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_a_promotion_and_an_abort_whose_answers_are_lost_report_what_they_did() {
    let etcd = Etcd::start();
    let proxy = Arc::new(Proxy::start(etcd.addr()).await);
    let layout = Layout::new(PREFIX).unwrap();
    let (key, canary_key) = (layout.config_key("server").unwrap(), layout.canary_key("server").unwrap());
    let fleet = operator(&[proxy.endpoint()], Duration::from_secs(1)).await;
    let client = etcd.client().await;
    // A canary goes to live instances: one, straight to etcd.
    let web = instance(&[etcd.endpoint()], "web-0").await;
    let first = fleet.push("server", &draft(1), Expect::Version(0)).await.expect("first push").version;
    eventually("the instance applied the first version", WAIT, || {
        let done = web.applied.lock().unwrap().last() == Some(&first);
        async move { done.then_some(()) }
    })
    .await;
    let only_web = Canaries::Instances(vec!["web-0".into()]);

    // The canary's request is the only one that carries its document.
    let cut = lose_the_answer(&proxy, &client, &canary_key, b"port = 1002").await;
    let started = fleet.canary("server", &draft(2), Expect::Version(first), &only_web).await;
    let landed = tokio::time::timeout(WAIT, cut).await.expect("the canary reached etcd").unwrap();
    let started = started.unwrap_or_else(|e| panic!("the canary started at {landed}, yet it answered: {e}"));
    assert_eq!(started.version, landed);
    let kv = client.clone().get(canary_key.clone(), None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.mod_revision() as u64, kv.version()), (landed, 1), "the canary key was written once");

    // The promotion writes the canary's document to the config key.
    let cut = lose_the_answer(&proxy, &client, &key, b"port = 1002").await;
    let promoted = fleet.promote("server").await;
    let landed = tokio::time::timeout(WAIT, cut).await.expect("the promotion reached etcd").unwrap();
    let promoted = promoted.unwrap_or_else(|e| panic!("the promotion landed at {landed}, yet it answered: {e}"));
    assert_eq!(promoted.version, landed);
    assert_eq!(history(&client, &key, landed).await.iter().map(|(rev, _)| *rev).collect::<Vec<_>>(), [first, landed]);

    // An abort deletes the canary key: its request is the only one with a
    // delete of that key (RequestOp.request_delete_range, field 3, holding
    // DeleteRangeRequest.key, field 1).
    let canary = fleet.canary("server", &draft(3), Expect::Version(landed), &only_web).await.expect("a second canary");
    let mut delete = vec![0x1a, 2 + canary_key.len() as u8, 0x0a, canary_key.len() as u8];
    delete.extend_from_slice(canary_key.as_bytes());
    let cut = lose_the_answer(&proxy, &client, &canary_key, &delete).await;
    let aborted = fleet.abort("server").await;
    let deleted = tokio::time::timeout(WAIT, cut).await.expect("the abort reached etcd").unwrap();
    let aborted = aborted.unwrap_or_else(|e| panic!("the abort deleted the canary at {deleted}, yet it answered: {e}"));
    assert_eq!((aborted.canary_version, aborted.version), (canary.version, landed));
    assert!(client.clone().get(canary_key.clone(), None).await.unwrap().kvs().is_empty(), "no canary");
}

/// The same over mutual TLS: an operator and an instance given the three
/// `https://` endpoints ride out the loss of the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_loses_its_leader_and_the_fleet_carries_on() {
    let pki = Pki::new();
    let mut cluster = Cluster::start_tls(&pki);
    let endpoints = cluster.endpoints();
    assert!(endpoints.iter().all(|e| e.starts_with("https://")), "{endpoints:?}");
    let (crt, key) = pki.client("ops");
    let mut builder = FleetBuilder::new(endpoints[0].clone(), PREFIX)
        .unwrap()
        .ca_certificate(pki.ca())
        .client_certificate(&crt, &key)
        .request_timeout(Duration::from_secs(2));
    for e in &endpoints[1..] {
        builder = builder.endpoint(e.clone());
    }
    let fleet = builder.connect().await.expect("connect over TLS");

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let ws = Workspace::new(dir.path());
    let (crt, key) = pki.client("web-1");
    let mut source =
        common::source(&endpoints[1], PREFIX, "web-1").ca_certificate(pki.ca()).client_certificate(crt, key);
    for e in [&endpoints[2], &endpoints[0]] {
        source = source.endpoint(e.clone());
    }
    let source = source.start(&ws).await.expect("start the source over TLS");
    let mut events = source.subscribe();
    let first = fleet.push("server", &draft(1), Expect::Version(0)).await.expect("first push").version;
    applied_event(&mut events, first).await;
    let leader = cluster.leader().await;
    cluster.kill(leader);
    let second = fleet.push("server", &draft(2), Expect::Version(first)).await.expect("push without the leader");
    assert_eq!(second.previous, Some(first));
    applied_event(&mut events, second.version).await;
    cluster.restart(leader);
    let third = fleet.push("server", &draft(3), Expect::Version(second.version)).await.expect("push after restart");
    applied_event(&mut events, third.version).await;
    source.shutdown().await;
}

/// A source whose first endpoint is a member that is down (nothing listens
/// there: its connections are refused at once) reads its configs from the
/// live member behind it, every time, not from its cache. The member's
/// refusal is quicker than the live member's TLS handshake, and a
/// balanced channel over both handed the first calls to the dead one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_whose_first_member_is_down_reads_etcd_not_its_cache() {
    let pki = Pki::new();
    let etcd = Etcd::start_tls(&pki, &[]);
    let down = format!("https://{}", common::free_port());
    let (crt, key) = pki.client("ops");
    let fleet = FleetBuilder::new(etcd.endpoint(), PREFIX)
        .unwrap()
        .ca_certificate(pki.ca())
        .client_certificate(&crt, &key)
        .connect()
        .await
        .expect("connect over TLS");
    let version = fleet.push("server", &draft(1), Expect::Version(0)).await.expect("push").version;
    let (crt, key) = pki.client("web-1");
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        let ws = Workspace::new(dir.path());
        let source = common::source(&down, PREFIX, "web-1")
            .ca_certificate(pki.ca())
            .client_certificate(&crt, &key)
            .endpoint(etcd.endpoint())
            .start(&ws)
            .await
            .expect("start the source");
        assert!(
            matches!(source.boot(), relive_fleet::Boot::Etcd { revision } if revision >= version),
            "round {round}: booted from {:?}",
            source.boot()
        );
        source.shutdown().await;
    }
}

/// Waits for the event that says `version` was applied.
async fn applied_event(events: &mut tokio::sync::broadcast::Receiver<SourceEvent>, version: u64) {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.recv().await.expect("events");
            // Shown when the test fails: what the source did meanwhile.
            eprintln!("event: {event:?}");
            if let SourceEvent::Applied { version: v, .. } = event {
                if v == version {
                    return;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("version {version} was not applied within {WAIT:?}"));
}

/// An operator that signs in with a password, whose first endpoint is a
/// member that is down: it signs in through the live one, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_whose_first_member_is_down_signs_in_through_another() {
    let pki = Pki::new();
    let etcd = Etcd::start_tls(&pki, &[]);
    etcd.enable_auth().await;
    let down = format!("https://{}", common::free_port());
    let (crt, key) = pki.client("ops");
    for round in 0..5 {
        let fleet = FleetBuilder::new(down.clone(), PREFIX)
            .unwrap()
            .endpoint(etcd.endpoint())
            .ca_certificate(pki.ca())
            .client_certificate(&crt, &key)
            .user("root", "root-pw")
            .request_timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        fleet.push("server", &draft(round), Expect::Current).await.unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
}
