//! A secured etcd, started by the tests: TLS with client certificates
//! (`--client-cert-auth`), users and roles (`auth enable`), certificates
//! made by the tests with `openssl`.

mod common;

use std::time::Duration;

use common::{Etcd, Pki, Proxy, eventually};
use relive::{Format, Workspace};
use relive_fleet::{Draft, Error, Expect, Fleet, FleetBuilder, FleetSourceBuilder, SourceEvent};
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

/// An operator's builder with the CA and `user`'s client certificate.
fn builder(endpoint: &str, pki: &Pki, user: &str) -> FleetBuilder {
    let (cert, key) = pki.client(user);
    FleetBuilder::new(endpoint, PREFIX)
        .unwrap()
        .ca_certificate(pki.ca())
        .client_certificate(cert, key)
        .request_timeout(Duration::from_secs(3))
}

async fn fleet_as(etcd: &Etcd, pki: &Pki, user: &str) -> Fleet {
    builder(&etcd.endpoint(), pki, user).connect().await.unwrap()
}

/// A source for instance `id` signing in as `user` with its certificate.
fn source_as(endpoint: &str, pki: &Pki, user: &str, id: &str) -> FleetSourceBuilder {
    let (cert, key) = pki.client(user);
    common::source(endpoint, PREFIX, id).ca_certificate(pki.ca()).client_certificate(cert, key)
}

/// The error of the first call through `builder`: at connection, or at
/// the first read (the channel connects lazily).
async fn first_error(builder: FleetBuilder) -> Error {
    match builder.connect().await {
        Err(e) => e,
        Ok(fleet) => fleet.status().await.expect_err("the read succeeded"),
    }
}

/// A TLS etcd with authentication on, this fleet's roles, an operator
/// `alice` and instances `web-1` and `web-2`, each signing in with a
/// certificate whose common name is its user.
async fn secured() -> (Pki, Etcd) {
    let pki = Pki::new();
    let etcd = Etcd::start_tls(&pki, &[]);
    etcd.enable_auth().await;
    let root = fleet_as(&etcd, &pki, "root").await;
    root.create_roles().await.unwrap();
    root.add_operator("alice", None).await.unwrap();
    for id in ["web-1", "web-2"] {
        let done = root.add_instance(id, None).await.unwrap();
        assert_eq!(done.users, [format!("app-instance-{id}")]);
    }
    (pki, etcd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_certificate_is_served_and_one_without_is_refused() {
    let pki = Pki::new();
    let etcd = Etcd::start_tls(&pki, &[]);
    let fleet = fleet_as(&etcd, &pki, "root").await;
    let v1 = fleet.push("server", &toml(1), Expect::Version(0)).await.unwrap().version;
    assert!(v1 > 0);

    let bare = FleetBuilder::new(etcd.endpoint(), PREFIX)
        .unwrap()
        .ca_certificate(pki.ca())
        .request_timeout(Duration::from_secs(3));
    let e = first_error(bare).await.to_string();
    assert!(e.contains(&etcd.endpoint()), "{e}");
    assert!(e.contains("no client certificate was given"), "the message names the certificate problem: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_fails_naming_the_endpoint_and_the_certificate_problem() {
    let pki = Pki::new();
    let etcd = Etcd::start_tls(&pki, &[]);
    let (cert, key) = pki.client("root");
    let wrong = FleetBuilder::new(etcd.endpoint(), PREFIX)
        .unwrap()
        .ca_certificate(pki.other_ca())
        .client_certificate(cert, key)
        .request_timeout(Duration::from_secs(3));
    let e = first_error(wrong).await.to_string();
    assert!(e.contains(&etcd.endpoint()), "{e}");
    assert!(e.contains("invalid peer certificate") && e.contains("UnknownIssuer"), "{e}");
    assert!(
        e.contains(&format!("not signed by a CA trusted here: the CA certificates of {}", pki.other_ca().display())),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_certificate_is_named() {
    let pki = Pki::new();
    let (_, key) = pki.client("root");
    let junk = pki.dir().join("junk.crt");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let e = FleetBuilder::new("https://127.0.0.1:1", PREFIX)
        .unwrap()
        .ca_certificate(&junk)
        .client_certificate(pki.ca(), &key)
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(&e, Error::Certificate { path, .. } if path == &junk), "{e}");
    // A certificate where the key should be: named, its bytes not shown.
    let e = FleetBuilder::new("https://127.0.0.1:1", PREFIX)
        .unwrap()
        .ca_certificate(pki.ca())
        .client_certificate(pki.ca(), pki.ca())
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), format!("{}: no PEM private key in it", pki.ca().display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_can_push_and_an_instance_can_neither_push_nor_write_another_status() {
    let (pki, etcd) = secured().await;
    let alice = fleet_as(&etcd, &pki, "alice").await;
    let v1 = alice.push("server", &toml(1), Expect::Version(0)).await.unwrap().version;

    // Recorded as written by alice's certificate, at this host.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let by = format!("O=relive tests,CN=alice@{host}");
    assert_eq!(alice.versions("server", 1).await.unwrap().versions[0].by.as_deref(), Some(by.as_str()));
    assert_eq!(alice.status().await.unwrap().configs[0].by.as_deref(), Some(by.as_str()));

    // The instance serves it and acknowledges it under its own key.
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::new(dir.path());
    let source =
        source_as(&etcd.endpoint(), &pki, "app-instance-web-1", "web-1").start(&ws).await.expect("web-1 starts");
    let server = ws.config::<Server>("server").live().await.unwrap();
    assert_eq!(server.load().port, 1);
    eventually("web-1's acknowledgement", WAIT, || async {
        let status = alice.status().await.unwrap();
        status.get("web-1", "server").filter(|r| r.version == Some(v1)).map(drop)
    })
    .await;

    // Its credential cannot push, through the library or etcd directly.
    let as_instance = fleet_as(&etcd, &pki, "app-instance-web-1").await;
    let e = as_instance.push("server", &toml(2), Expect::Version(v1)).await.unwrap_err().to_string();
    assert!(e.contains("permission denied"), "{e}");
    let mut raw = instance_client(&etcd, &pki, "app-instance-web-1").await;
    let e = raw.put("/app/configs/server", "# relive-format: toml\nport = 3\n", None).await.unwrap_err();
    assert!(e.to_string().contains("permission denied"), "{e}");
    // Nor write another instance's status, nor start a canary.
    let e = raw.put("/app/instances/web-2/server", "{}", None).await.unwrap_err();
    assert!(e.to_string().contains("permission denied"), "{e}");
    let e = raw.put("/app/canary/server", "{}", None).await.unwrap_err();
    assert!(e.to_string().contains("permission denied"), "{e}");
    // Its own status key it may write (the check above is about the key).
    raw.put("/app/instances/web-1/probe", "{}", None).await.unwrap();

    // The operator's push still reaches it.
    let v2 = alice.push("server", &toml(2), Expect::Version(v1)).await.unwrap().version;
    eventually("port 2 on web-1", WAIT, || async { (server.load().port == 2).then_some(()) }).await;
    assert!(v2 > v1);
    source.shutdown().await;
}

/// The next disconnection whose error says etcd refused the instance.
async fn refused(events: &mut tokio::sync::broadcast::Receiver<SourceEvent>) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(SourceEvent::Disconnected { error, .. })) if error.contains("permission denied") => return error,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("events: {e}"),
            Err(_) => panic!("no disconnection naming the refusal within {WAIT:?}"),
        }
    }
}

async fn instance_client(etcd: &Etcd, pki: &Pki, user: &str) -> etcd_client::Client {
    let options = etcd_client::ConnectOptions::new().with_tls(pki.tls_options(user));
    etcd_client::Client::connect([etcd.endpoint()], Some(options)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_credential_is_a_clear_error_and_the_instance_keeps_its_last_good_config() {
    let (pki, etcd) = secured().await;
    let alice = fleet_as(&etcd, &pki, "alice").await;
    let v1 = alice.push("server", &toml(1), Expect::Version(0)).await.unwrap().version;
    // The instance reaches etcd through a proxy, so that its connection
    // can be cut and it must sign in again.
    let proxy = Proxy::start(etcd.addr()).await;
    let endpoint = proxy.endpoint().replace("http://", "https://");
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::new(dir.path());
    let source = source_as(&endpoint, &pki, "app-instance-web-1", "web-1").start(&ws).await.unwrap();
    let mut events = source.subscribe();
    let server = ws.config::<Server>("server").live().await.unwrap();
    assert_eq!(server.load().port, 1);

    let mut root = etcd.client().await;
    root.user_revoke_role("app-instance-web-1", "app-instance-web-1").await.unwrap();
    proxy.cut();
    proxy.heal();
    let error = refused(&mut events).await;
    assert!(error.contains("permission denied"), "{error}");
    // A new version pushed now is out of its reach: after its next attempt
    // to sign in again, refused too, it still serves its last good value.
    alice.push("server", &toml(2), Expect::Version(v1)).await.unwrap();
    refused(&mut events).await;
    assert_eq!(server.load().port, 1);
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_over_plaintext_to_another_machine_is_refused_without_the_flag() {
    // 192.0.2.1 is TEST-NET-1: not this machine, and nothing answers.
    let endpoint = "http://192.0.2.1:2379";
    let e = FleetBuilder::new(endpoint, PREFIX).unwrap().user("alice", "s3cret").connect().await.unwrap_err();
    assert!(matches!(e, Error::Plaintext { .. }), "{e}");
    assert!(e.to_string().contains(endpoint) && !e.to_string().contains("s3cret"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::new(dir.path());
    let e = common::source(endpoint, PREFIX, "web-1").user("alice", "s3cret").start(&ws).await.unwrap_err();
    assert!(matches!(e, Error::Plaintext { .. }), "{e}");
    // Insisting: the connection is tried (and times out: nobody is there).
    let e = FleetBuilder::new(endpoint, PREFIX)
        .unwrap()
        .user("alice", "s3cret")
        .insecure_plaintext(true)
        .request_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Etcd { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_passwords_work_and_a_wrong_password_is_a_clear_error() {
    let pki = Pki::new();
    let etcd = Etcd::start_tls(&pki, &[]);
    etcd.enable_auth().await;
    let root = fleet_as(&etcd, &pki, "root").await;
    root.add_operator("bob", Some("bob-pw")).await.unwrap();
    // bob's certificate is not needed: his password is (the TLS client
    // certificate of another, unprivileged, name proves only the channel).
    let (cert, key) = pki.client("nobody");
    let bob = FleetBuilder::new(etcd.endpoint(), PREFIX)
        .unwrap()
        .ca_certificate(pki.ca())
        .client_certificate(&cert, &key)
        .user("bob", "bob-pw")
        .request_timeout(Duration::from_secs(3));
    let fleet = bob.clone().connect().await.unwrap();
    assert!(fleet.operator().starts_with("bob@"), "{}", fleet.operator());
    let v1 = fleet.push("server", &toml(1), Expect::Version(0)).await.unwrap().version;
    let by = fleet.version("server", v1).await.unwrap().by.unwrap();
    assert!(by.starts_with("bob@"), "the etcd user, not the certificate's subject: {by}");
    let e = first_error(bob.user("bob", "wrong")).await.to_string();
    assert!(e.contains("authentication failed") && e.contains(&etcd.endpoint()), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_is_a_clear_error() {
    let pki = Pki::new();
    let etcd = Etcd::start_tls(&pki, &[]);
    let (cert, key) = pki.expired_client("root");
    // Valid until the second it was made: wait for that second to pass.
    let mut check = std::process::Command::new("openssl");
    check.args(["x509", "-noout", "-checkend", "0", "-in"]).arg(&cert);
    eventually("the certificate to expire", WAIT, || {
        let expired = !check.status().unwrap().success();
        async move { expired.then_some(()) }
    })
    .await;
    let builder = FleetBuilder::new(etcd.endpoint(), PREFIX)
        .unwrap()
        .ca_certificate(pki.ca())
        .client_certificate(cert, key)
        .request_timeout(Duration::from_secs(3));
    let e = first_error(builder).await.to_string();
    assert!(
        e.starts_with(&format!("{}: the client certificate expired at ", pki.dir().join("expired-root.crt").display())),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_auth_token_is_renewed_by_signing_in_again() {
    let pki = Pki::new();
    // Tokens that expire after a second of disuse.
    let etcd = Etcd::start_tls(&pki, &["--auth-token-ttl=1"]);
    etcd.enable_auth().await;
    fleet_as(&etcd, &pki, "root").await.add_operator("bob", Some("bob-pw")).await.unwrap();
    let (cert, key) = pki.client("nobody");
    let bob = FleetBuilder::new(etcd.endpoint(), PREFIX)
        .unwrap()
        .ca_certificate(pki.ca())
        .client_certificate(&cert, &key)
        .user("bob", "bob-pw")
        .request_timeout(Duration::from_secs(3))
        .connect()
        .await
        .unwrap();
    let v1 = bob.push("server", &toml(1), Expect::Version(0)).await.unwrap().version;
    // etcd drops a simple token after its TTL of disuse, checked once a
    // second: after 3 s bob's token is gone, and a call with it alone is
    // refused with "invalid auth token" (checked by turning the renewal
    // off: this push then fails).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v2 = bob.push("server", &toml(2), Expect::Version(v1)).await.expect("signed in again").version;
    assert!(v2 > v1);
}
