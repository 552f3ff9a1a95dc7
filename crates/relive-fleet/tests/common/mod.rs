//! A real etcd for tests (and for `examples/fleet_bench.rs`, which includes
//! this file), and a TCP proxy that can cut the connections between a
//! client and it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod netns;
pub use netns::Netns;

/// How long etcd may take to answer after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// An etcd server on 127.0.0.1 with a data dir of its own, killed on drop.
pub struct Etcd {
    dir: tempfile::TempDir,
    client: SocketAddr,
    peer: SocketAddr,
    child: Option<Child>,
    starts: u32,
    /// Flags after the ones that place it (ports, data dir).
    extra: Vec<String>,
    /// Serves clients over TLS with these certificates.
    tls: Option<Pki>,
    /// Where `/health` is served (over plain HTTP even when clients use
    /// TLS).
    metrics: SocketAddr,
    /// Where etcd's HTTP services are served, apart from gRPC.
    http: SocketAddr,
}

impl Etcd {
    /// Starts etcd on two free ports and waits until it answers.
    pub fn start() -> Etcd {
        Etcd::start_with(&[])
    }

    /// [`start`](Etcd::start) with `extra` flags (`--auto-compaction-mode=revision`).
    pub fn start_with(extra: &[&str]) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let extra = extra.iter().map(|f| f.to_string()).collect();
        let mut etcd = Etcd {
            dir,
            client,
            peer,
            child: None,
            starts: 0,
            extra,
            tls: None,
            metrics: free_port(),
            http: free_port(),
        };
        etcd.restart();
        etcd
    }

    /// Starts etcd serving clients over TLS with `pki`'s server certificate,
    /// requiring client certificates signed by its CA
    /// (`--client-cert-auth`), with `extra` flags.
    pub fn start_tls(pki: &Pki, extra: &[&str]) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let extra = extra.iter().map(|f| f.to_string()).collect();
        let tls = Some(pki.clone());
        let mut etcd =
            Etcd { dir, client, peer, child: None, starts: 0, extra, tls, metrics: free_port(), http: free_port() };
        etcd.restart();
        etcd
    }

    /// Every flag etcd runs with.
    pub fn flags(&self) -> Vec<String> {
        let client = self.endpoint();
        let peer = format!("http://{}", self.peer);
        let mut flags = vec![
            "--name=test".to_string(),
            format!("--data-dir={}", self.data_dir().display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=test={peer}"),
            format!("--listen-metrics-urls=http://{}", self.metrics),
        ];
        flags.extend(separate_http(self.tls.is_some(), self.http));
        if let Some(pki) = &self.tls {
            flags.extend([
                "--client-cert-auth".to_string(),
                format!("--trusted-ca-file={}", pki.ca().display()),
                format!("--cert-file={}", pki.dir().join("server.crt").display()),
                format!("--key-file={}", pki.dir().join("server.key").display()),
            ]);
        }
        flags.extend(self.extra.iter().cloned());
        flags
    }

    /// etcd's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `http://127.0.0.1:<port>` (`https://` with TLS), for clients.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client)
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        self.client
    }

    /// Kills etcd (SIGKILL: no clean shutdown) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The port is free once the process is gone; nothing answers on it.
        assert!(!answers(self.client), "etcd still answers after kill");
    }

    /// (Re)starts etcd with the same data dir and ports, and waits until it
    /// answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd is running");
        self.starts += 1;
        let log = self.dir.path().join(format!("etcd.{}.log", self.starts));
        let out = std::fs::File::create(&log).expect("etcd log");
        let child = Command::new(etcd_binary())
            .args(self.flags())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run etcd ({e}): install etcd-server (scripts/test does)"));
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !healthy(self.metrics) {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("etcd exited with {status}; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not answer within {START_TIMEOUT:?}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where etcd keeps its data.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A client (with the certificate of user `root` when etcd uses
    /// TLS).
    pub async fn client(&self) -> etcd_client::Client {
        let options = self.tls.as_ref().map(|pki| etcd_client::ConnectOptions::new().with_tls(pki.tls_options("root")));
        etcd_client::Client::connect([self.endpoint()], options).await.expect("connect to etcd")
    }

    /// A client authenticated as `user` with `password`.
    pub async fn client_as(&self, user: &str, password: &str) -> etcd_client::Client {
        let mut options = etcd_client::ConnectOptions::new().with_user(user, password);
        if let Some(pki) = &self.tls {
            options = options.with_tls(pki.tls_options(user));
        }
        etcd_client::Client::connect([self.endpoint()], Some(options)).await.expect("connect to etcd")
    }

    /// Adds user `root` (password `root-pw`) with the root role and enables
    /// authentication, as `etcdctl user add root`, `etcdctl auth enable`.
    pub async fn enable_auth(&self) {
        let mut client = self.client().await;
        client.user_add("root", "root-pw", None).await.expect("user add root");
        client.user_grant_role("root", "root").await.expect("grant root");
        client.auth_enable().await.expect("auth enable");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Serve HTTP and gRPC on one client port even where etcd can separate
/// them: `fleet_bench --shared-client-port` measures what that costs.
pub static SHARED_CLIENT_PORT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--listen-client-http-urls` on `addr`, if this etcd has the flag (3.5.8
/// and 3.4.25 on): the client port then serves gRPC alone, with etcd's own
/// gRPC server, as etcd recommends for production. Without it, a TLS
/// client port serves gRPC through Go's HTTP/2 server, and every message
/// costs etcd more CPU than plaintext's native gRPC does (BENCHMARKS.md §12).
fn separate_http(tls: bool, addr: SocketAddr) -> Option<String> {
    if SHARED_CLIENT_PORT.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    static HAS_FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let has = *HAS_FLAG.get_or_init(|| {
        Command::new(etcd_binary())
            .arg("--help")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).contains("--listen-client-http-urls")
                    || String::from_utf8_lossy(&o.stderr).contains("--listen-client-http-urls")
            })
            .unwrap_or(false)
    });
    let scheme = if tls { "https" } else { "http" };
    has.then(|| format!("--listen-client-http-urls={scheme}://{addr}"))
}

fn etcd_binary() -> PathBuf {
    std::env::var_os("ETCD_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("etcd"))
}

/// A port nobody listens on now. (Another process could take it before
/// etcd does; on a test machine that is rare enough.)
pub fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

fn answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Whether etcd's `/health` says it is healthy (it has a leader).
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

/// A 3-member etcd cluster on 127.0.0.1: each member with its own ports,
/// data dir and log file (`<dir>/<name>.<start>.log`), killed on drop.
///
/// Clients reach it over TLS when it is started with a [`Pki`]; the members
/// talk to each other over plain HTTP on loopback (peer traffic never leaves
/// the machine, and relive never speaks the peer protocol), which keeps the
/// harness to one server certificate.
pub struct Cluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    tls: Option<Pki>,
    /// Flags after the ones that place each member.
    extra: Vec<String>,
    /// The members' network namespaces, when they can be partitioned.
    net: Option<Netns>,
}

struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    metrics: SocketAddr,
    http: SocketAddr,
    child: Option<Child>,
    starts: u32,
}

impl Cluster {
    /// Starts a plaintext 3-member cluster and waits until it has a leader.
    pub fn start() -> Cluster {
        Cluster::start_with(None, &[])
    }

    /// A 3-member cluster whose clients use TLS with `pki`'s server
    /// certificate and must bring a certificate signed by its CA.
    pub fn start_tls(pki: &Pki) -> Cluster {
        Cluster::start_with(Some(pki), &[])
    }

    /// A 3-member cluster, over TLS with `pki` if given, each member with
    /// `extra` flags too.
    pub fn start_with(pki: Option<&Pki>, extra: &[&str]) -> Cluster {
        let tls = pki.cloned();
        let extra = extra.iter().map(|f| f.to_string()).collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let members = (0..3)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                metrics: free_port(),
                http: free_port(),
                child: None,
                starts: 0,
            })
            .collect();
        Cluster::boot(Cluster { dir, members, tls, extra, net: None })
    }

    /// A plaintext 3-member cluster whose members each run in a network
    /// namespace of their own (needs root), so that one can be cut off
    /// from the others while its clients still reach it:
    /// [`partition`](Cluster::partition).
    pub fn start_partitionable() -> Cluster {
        let net = Netns::new(3);
        let members = (0..3)
            .map(|i| Member {
                name: format!("m{i}"),
                client: net.client_addr(i, 2379),
                peer: net.peer_addr(i),
                metrics: net.client_addr(i, 2381),
                http: net.client_addr(i, 2382),
                child: None,
                starts: 0,
            })
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        Cluster::boot(Cluster { dir, members, tls: None, extra: Vec::new(), net: Some(net) })
    }

    fn boot(mut cluster: Cluster) -> Cluster {
        // All three first: a member alone has no quorum and is not healthy.
        for i in 0..3 {
            cluster.spawn(i);
        }
        for i in 0..3 {
            cluster.wait_healthy(i);
        }
        cluster
    }

    /// Cuts member `i` off from the other members (its peer link goes
    /// down); clients still reach it. Only for
    /// [`start_partitionable`](Cluster::start_partitionable).
    pub fn partition(&self, i: usize) {
        self.net.as_ref().expect("a partitionable cluster").partition(i);
    }

    /// Joins member `i` to the others again.
    pub fn heal(&self, i: usize) {
        self.net.as_ref().expect("a partitionable cluster").heal(i);
    }

    /// Member `i`'s client endpoint (`http://` or `https://`).
    pub fn endpoint(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.members[i].client)
    }

    /// Every member's client endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Member `i`'s client address.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.members[i].client
    }

    /// Every flag member `i` runs with.
    pub fn flags(&self, i: usize) -> Vec<String> {
        let m = &self.members[i];
        let client = self.endpoint(i);
        let peers: Vec<String> = self.members.iter().map(|m| format!("{}=http://{}", m.name, m.peer)).collect();
        let mut flags = vec![
            format!("--name={}", m.name),
            format!("--data-dir={}", self.dir.path().join(&m.name).display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls=http://{}", m.peer),
            format!("--initial-advertise-peer-urls=http://{}", m.peer),
            format!("--initial-cluster={}", peers.join(",")),
            "--initial-cluster-state=new".to_string(),
            "--initial-cluster-token=relive-test".to_string(),
            format!("--listen-metrics-urls=http://{}", m.metrics),
            // A lost leader is replaced within about a second, as on a
            // production cluster with default timeouts and a fast network.
            "--heartbeat-interval=50".to_string(),
            "--election-timeout=500".to_string(),
        ];
        flags.extend(separate_http(self.tls.is_some(), m.http));
        if let Some(pki) = &self.tls {
            flags.extend([
                "--client-cert-auth".to_string(),
                format!("--trusted-ca-file={}", pki.ca().display()),
                format!("--cert-file={}", pki.dir().join("server.crt").display()),
                format!("--key-file={}", pki.dir().join("server.key").display()),
            ]);
        }
        flags.extend(self.extra.iter().cloned());
        flags
    }

    /// The members' process ids, of those that run.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(|m| m.child.as_ref().map(Child::id)).collect()
    }

    /// Adds user `root` (password `root-pw`) with the root role and enables
    /// authentication, as [`Etcd::enable_auth`] does.
    pub async fn enable_auth(&self) {
        let mut client = self.client().await;
        client.user_add("root", "root-pw", None).await.expect("user add root");
        client.user_grant_role("root", "root").await.expect("grant root");
        client.auth_enable().await.expect("auth enable");
    }

    fn log(&self, i: usize) -> PathBuf {
        let m = &self.members[i];
        self.dir.path().join(format!("{}.{}.log", m.name, m.starts))
    }

    fn spawn(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.members[i].starts += 1;
        let out = std::fs::File::create(self.log(i)).expect("etcd log");
        let mut command = match &self.net {
            // `ip netns exec` enters the namespace and execs etcd: the
            // child is etcd itself.
            Some(net) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &net.namespace(i)]).arg(etcd_binary());
                c
            }
            None => Command::new(etcd_binary()),
        };
        let child = command
            .args(self.flags(i))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run etcd ({e}): install etcd-server (scripts/test does)"));
        self.members[i].child = Some(child);
    }

    fn wait_healthy(&mut self, i: usize) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !healthy(self.members[i].metrics) {
            let log = self.log(i);
            if let Some(status) = self.members[i].child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("etcd {i} exited with {status}; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            assert!(
                Instant::now() < deadline,
                "etcd {i} had no leader within {START_TIMEOUT:?}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills member `i` (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(!answers(self.members[i].client), "etcd {i} still answers after kill");
    }

    /// Restarts member `i` with its data dir and ports, and waits until it
    /// is back in the cluster (healthy: it knows the leader).
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_healthy(i);
    }

    /// Whether member `i` runs.
    pub fn running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// A client of member `i` alone (as `root` with TLS).
    pub async fn member_client(&self, i: usize) -> etcd_client::Client {
        let options = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(3));
        let options = match &self.tls {
            Some(pki) => options.with_tls(pki.tls_options("root")),
            None => options,
        };
        etcd_client::Client::connect([self.endpoint(i)], Some(options)).await.expect("connect to etcd member")
    }

    /// A client of every member (as `root` with TLS).
    pub async fn client(&self) -> etcd_client::Client {
        let options = self.tls.as_ref().map(|pki| etcd_client::ConnectOptions::new().with_tls(pki.tls_options("root")));
        etcd_client::Client::connect(self.endpoints(), options).await.expect("connect to etcd")
    }

    /// The member that leads now, waiting (bounded) until the running
    /// members agree on one of them: each member's `status()` names the
    /// leader's id and its own.
    pub async fn leader(&self) -> usize {
        // One client per member for every round, so that its connection
        // (a TLS handshake, slow on a loaded machine) is made once.
        let mut clients = Vec::new();
        for i in (0..self.members.len()).filter(|&i| self.running(i)) {
            clients.push((i, self.member_client(i).await));
        }
        eventually("a leader among the running members", Duration::from_secs(30), || async {
            let mut ids = Vec::new();
            let mut leaders = Vec::new();
            for (i, client) in &clients {
                let (i, mut client) = (*i, client.clone());
                let status = tokio::time::timeout(Duration::from_secs(3), client.status()).await.ok()?.ok()?;
                ids.push((status.header()?.member_id(), i));
                leaders.push(status.leader());
            }
            let leader = *leaders.first()?;
            if leader == 0 || leaders.iter().any(|&l| l != leader) {
                return None;
            }
            ids.iter().find(|(id, _)| *id == leader).map(|&(_, i)| i)
        })
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Certificates made by the test with `openssl`: a CA, a server
/// certificate for 127.0.0.1 and localhost, and client certificates whose
/// common name is the etcd user they stand for.
#[derive(Clone)]
pub struct Pki {
    dir: Arc<tempfile::TempDir>,
}

impl Pki {
    /// A new CA (`ca.crt`) and a server certificate (`server.crt`).
    pub fn new() -> Pki {
        let pki = Pki { dir: Arc::new(tempfile::tempdir().expect("tempdir")) };
        pki.ca_named("ca", "relive test CA");
        pki.request("server", "/CN=etcd", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
        pki.sign("server", "ca", "2");
        pki
    }

    /// The certificates already in `dir` (`ca.crt`, `ca.key`,
    /// `server.crt`, `server.key`, and clients' `<user>.crt`, `<user>.key`).
    pub fn at(dir: tempfile::TempDir) -> Pki {
        Pki { dir: Arc::new(dir) }
    }

    fn ca_named(&self, name: &str, cn: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
        ]);
    }

    /// A key (`<name>.key`), a signing request for `subject`
    /// (`<name>.csr`) and the extensions the certificate gets (`<name>.ext`).
    fn request(&self, name: &str, subject: &str, extensions: &str) {
        self.openssl(&[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ]);
        std::fs::write(self.dir().join(format!("{name}.ext")), extensions).unwrap();
    }

    /// `<name>.crt`, signed by CA `ca`, valid for `days` days.
    fn sign(&self, name: &str, ca: &str, days: &str) {
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            days,
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }

    /// A client certificate and key for `user` (`<user>.crt`, `<user>.key`,
    /// subject `CN=<user>, O=relive tests`), signed by the CA.
    pub fn client(&self, user: &str) -> (PathBuf, PathBuf) {
        let (crt, key) = (self.dir().join(format!("{user}.crt")), self.dir().join(format!("{user}.key")));
        if !crt.exists() {
            self.request(user, &format!("/O=relive tests/CN={user}"), "extendedKeyUsage=clientAuth\n");
            self.sign(user, "ca", "2");
        }
        (crt, key)
    }

    /// A client certificate for `user` signed by the CA that expires at
    /// once (`-days 0`: valid until the second it was made), as
    /// `expired-<user>.crt` and `.key`.
    pub fn expired_client(&self, user: &str) -> (PathBuf, PathBuf) {
        let name = format!("expired-{user}");
        self.request(&name, &format!("/CN={user}"), "extendedKeyUsage=clientAuth\n");
        self.sign(&name, "ca", "0");
        (self.dir().join(format!("{name}.crt")), self.dir().join(format!("{name}.key")))
    }

    /// Another CA, which signed nothing etcd trusts: `other-ca.crt`.
    pub fn other_ca(&self) -> PathBuf {
        let path = self.dir().join("other-ca.crt");
        if !path.exists() {
            self.ca_named("other-ca", "some other CA");
        }
        path
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir().join("ca.crt")
    }

    /// Where the files are.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// etcd-client's TLS options with the CA and `user`'s certificate.
    pub fn tls_options(&self, user: &str) -> etcd_client::TlsOptions {
        let (crt, key) = self.client(user);
        let read = |p: &std::path::Path| std::fs::read(p).unwrap();
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca())))
            .identity(etcd_client::Identity::from_pem(read(&crt), read(&key)))
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl").args(args).current_dir(self.dir()).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// A TCP proxy in front of etcd that can cut every connection and refuse
/// new ones, while etcd itself keeps running: a network partition between
/// one client and the cluster.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    cut: bool,
    /// Requests still reach etcd, its answers are dropped.
    hold: Arc<std::sync::atomic::AtomicBool>,
    /// Bytes that, once a client sends them, turn `hold` on.
    trigger: Arc<Mutex<Option<Vec<u8>>>>,
    conns: Vec<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// A proxy on a free port forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let shared = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut state = shared.lock().unwrap();
                if state.cut {
                    // Refused: the client sees its connection close.
                    continue;
                }
                state.conns.retain(|c| !c.is_finished());
                let hold = Arc::clone(&state.hold);
                let trigger = Arc::clone(&state.trigger);
                state.conns.push(tokio::spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let (mut from_client, mut to_client) = inbound.into_split();
                        let (mut from_server, mut to_server) = outbound.into_split();
                        let requests = async {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let mut buf = vec![0u8; 16 * 1024];
                            // The last bytes seen, for a trigger split over two reads.
                            let mut seen: Vec<u8> = Vec::new();
                            loop {
                                let n = match from_client.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                seen.extend_from_slice(&buf[..n]);
                                match trigger.lock().unwrap().as_ref() {
                                    Some(pattern) => {
                                        if seen.windows(pattern.len()).any(|w| w == &pattern[..]) {
                                            hold.store(true, std::sync::atomic::Ordering::SeqCst);
                                        }
                                        // Less than a pattern: a request sent
                                        // before the trigger was set cannot
                                        // set it off.
                                        let keep = pattern.len().saturating_sub(1);
                                        seen.drain(..seen.len().saturating_sub(keep));
                                    }
                                    None => seen.clear(),
                                }
                                if to_server.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        };
                        let replies = async {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let mut buf = vec![0u8; 16 * 1024];
                            loop {
                                let n = match from_server.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                // Held: etcd's answer never reaches the client.
                                if hold.load(std::sync::atomic::Ordering::SeqCst) {
                                    continue;
                                }
                                if to_client.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        };
                        tokio::select! {
                            _ = requests => {}
                            _ = replies => {}
                        }
                    }
                }));
            }
        });
        Proxy { addr, state, accept }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every connection and refuses new ones until [`heal`](Proxy::heal).
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.cut = true;
        for conn in state.conns.drain(..) {
            conn.abort();
        }
    }

    /// Forwards new connections again (answers too).
    pub fn heal(&self) {
        let mut state = self.state.lock().unwrap();
        state.cut = false;
        state.hold.store(false, std::sync::atomic::Ordering::SeqCst);
        *state.trigger.lock().unwrap() = None;
    }

    /// Once a client sends `pattern` (bytes of one request: gRPC does not
    /// compress them), keeps forwarding requests to etcd but drops its
    /// answers, until [`cut`](Proxy::cut) and [`heal`](Proxy::heal): that
    /// request is carried out and its answer lost, as when the member that
    /// answers dies just after the commit.
    pub fn hold_answers_after(&self, pattern: &[u8]) {
        *self.state.lock().unwrap().trigger.lock().unwrap() = Some(pattern.to_vec());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Waits up to `timeout` for `f` to return `Some`, polling every 20 ms.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An etcd source for tests: fast reconnects, a short request timeout,
/// host `test-host`.
pub fn source(endpoint: &str, prefix: &str, instance: &str) -> relive_fleet::FleetSourceBuilder {
    relive_fleet::FleetSourceBuilder::new(endpoint, prefix)
        .unwrap()
        .instance(instance)
        .unwrap()
        .host("test-host")
        .request_timeout(Duration::from_secs(1))
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
}

/// etcd refuses requests over 1.5 MiB by default, which would stop the
/// 9 MiB document before any instance saw it; a store configured for
/// large values must not make instances fall over either.
pub const LARGE_REQUESTS: &str = "--max-request-bytes=33554432";

/// The hostile documents, with the limit each must be refused by.
pub fn hostile_documents() -> Vec<(&'static str, relive::Format, Vec<u8>)> {
    let items: Vec<String> = (0..6000).map(|i| format!("x{i}")).collect();
    let bomb = format!("port: 1\nbase: &a [{}]\nrefs: [{}]\n", items.join(","), vec!["*a"; 6000].join(","));
    let deep = format!("port: 1\ndeep: {}{}\n", "[".repeat(50_000), "]".repeat(50_000));
    let mut big = String::from("{\"port\": 1, \"items\": [");
    while big.len() < 9 << 20 {
        big.push_str("\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\",");
    }
    big.push_str("\"end\"]}");
    vec![
        ("max_nodes", relive::Format::Yaml, bomb.into_bytes()),
        ("max_depth", relive::Format::Yaml, deep.into_bytes()),
        ("max_file_size", relive::Format::Json, big.into_bytes()),
    ]
}
