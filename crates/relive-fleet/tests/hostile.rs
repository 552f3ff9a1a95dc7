//! A hostile push (an alias bomb, deep nesting, a document over the size
//! limit) put straight into etcd, past `relive fleet push`'s local check:
//! each instance rejects it with a limit error and carries on, and the
//! next good push applies.

mod common;

use std::time::Duration;

use common::{Etcd, LARGE_REQUESTS, eventually, hostile_documents};
use etcd_client::Client;
use relive::{Format, Workspace};
use relive_fleet::layout::encode_config;
use relive_fleet::{AckState, Layout, SourceEvent, StatusRecord};
use serde::Deserialize;
use tokio::sync::broadcast;

const PREFIX: &str = "app";
const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize, PartialEq)]
struct Server {
    port: u16,
}

async fn put(client: &mut Client, format: Format, document: &[u8]) -> u64 {
    let key = Layout::new(PREFIX).unwrap().config_key("server").unwrap();
    let resp = client.put(key, encode_config(format, document), None).await.expect("put");
    resp.header().unwrap().revision() as u64
}

async fn status(client: &Client, instance: &str, version: u64) -> StatusRecord {
    let key = Layout::new(PREFIX).unwrap().status_key(instance, "server").unwrap();
    eventually(&format!("{instance}'s status for version {version}"), WAIT, || {
        let (mut client, key) = (client.clone(), key.clone());
        async move {
            let resp = client.get(key, None).await.ok()?;
            resp.kvs()
                .first()
                .map(|kv| StatusRecord::from_json(kv.value()).expect("status json"))
                .filter(|s| s.version == version)
        }
    })
    .await
}

async fn next_event<T>(
    rx: &mut broadcast::Receiver<SourceEvent>,
    what: &str,
    mut pick: impl FnMut(&SourceEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            match rx.recv().await {
                Ok(event) => {
                    if let Some(t) = pick(&event) {
                        return t;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("source events: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_push_is_one_rejection_and_the_next_good_push_applies() {
    let etcd = Etcd::start_with(&[LARGE_REQUESTS]);
    let mut client = etcd.client().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let ws = Workspace::new(dir.path());
    let v1 = put(&mut client, Format::Toml, b"port = 1\n").await;
    let source = common::source(&etcd.endpoint(), PREFIX, "web-1").start(&ws).await.unwrap();
    let mut events = source.subscribe();
    let mut server = ws.config::<Server>("server").watch().await.unwrap();
    assert_eq!(server.current().port, 1);
    assert_eq!(status(&client, "web-1", v1).await.state, AckState::Applied);

    let mut port = 1;
    for (limit, format, document) in hostile_documents() {
        let version = put(&mut client, format, &document).await;
        let error = next_event(&mut events, &format!("rejection of {limit}"), |e| match e {
            SourceEvent::Rejected { version: v, error, .. } if *v == version => Some(error.clone()),
            _ => None,
        })
        .await;
        assert!(error.contains(limit), "{limit}: {error}");
        let answered = status(&client, "web-1", version).await;
        assert_eq!(answered.state, AckState::Rejected, "{limit}: {answered:?}");
        assert!(answered.error.as_deref().is_some_and(|e| e.contains(limit)), "{limit}: {answered:?}");
        assert!(answered.error.as_deref().is_some_and(|e| e.len() < 1000), "{limit}: a short error");
        assert_eq!(server.current().port, port, "{limit}: the last good value stays");

        // The next good push applies.
        port += 1;
        let good = put(&mut client, Format::Toml, format!("port = {port}\n").as_bytes()).await;
        next_event(&mut events, "the next good version", |e| match e {
            SourceEvent::Applied { version, .. } if *version == good => Some(()),
            _ => None,
        })
        .await;
        assert_eq!(status(&client, "web-1", good).await.state, AckState::Applied, "{limit}");
        assert_eq!(server.next().await.unwrap().port, port, "{limit}");
    }
    source.shutdown().await;
}
