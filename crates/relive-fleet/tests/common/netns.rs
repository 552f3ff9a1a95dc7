//! Network namespaces for a cluster whose members can be cut off from each
//! other while their clients still reach them: a network partition, which
//! killing a process cannot stand in for (a killed member refuses
//! connections; a partitioned one accepts them and has no leader).
//!
//! Each member runs in a namespace of its own with two links: one to a
//! bridge for clients, which this process reaches at `10.N.1.254`, and one
//! to a bridge for the members' peer traffic. Cutting member `i` takes its
//! peer link down; its client link stays up.
//!
//! It needs root (`ip netns`, `ip link`), as the tests run in CI. A machine
//! where it cannot be set up fails the test with `ip`'s own message: a
//! partition test that skips itself would pass without checking anything.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The namespaces, links and bridges of one cluster; removed on drop.
pub struct Netns {
    /// Short and unique on this machine: interface names have 15 bytes.
    tag: String,
    /// The second octet of the cluster's two subnets.
    octet: u8,
    members: usize,
}

impl Netns {
    /// Namespaces and links for `members` members.
    pub fn new(members: usize) -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // Clusters choose their subnets one after the other, in this
        // process (the mutex) and across test processes (the file lock):
        // each must see the others' addresses before it chooses.
        static CHOOSING: Mutex<()> = Mutex::new(());
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{:x}{n}", std::process::id() % 0xfffff);
        let choosing = CHOOSING.lock().unwrap_or_else(|e| e.into_inner());
        let lock = DirLock::take();
        let octet = free_octet();
        let net = Netns { tag, octet, members };
        // Both bridges first, so a failure half way is cleaned up by drop.
        for side in ["c", "p"] {
            let bridge = net.bridge(side);
            ip(&["link", "add", &bridge, "type", "bridge"]);
            ip(&["link", "set", &bridge, "up"]);
        }
        ip(&["addr", "add", &format!("10.{octet}.1.254/24"), "dev", &net.bridge("c")]);
        drop((lock, choosing));
        for i in 0..members {
            let ns = net.namespace(i);
            ip(&["netns", "add", &ns]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
            for (side, subnet) in [("c", 1), ("p", 2)] {
                let (host, inside) = (net.host_link(side, i), format!("{side}{i}"));
                // The inside end is made in the namespace: made here and
                // moved, its name would clash with another cluster's.
                ip(&["link", "add", &host, "type", "veth", "peer", "name", &inside, "netns", &ns]);
                ip(&["link", "set", &host, "master", &net.bridge(side), "up"]);
                let addr = format!("10.{octet}.{subnet}.{}/24", i + 1);
                ip(&["netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", &inside]);
                ip(&["netns", "exec", &ns, "ip", "link", "set", &inside, "up"]);
            }
        }
        net
    }

    /// The namespace member `i` runs in.
    pub fn namespace(&self, i: usize) -> String {
        format!("rl{}m{i}", self.tag)
    }

    /// Member `i`'s address for clients (port `port`).
    pub fn client_addr(&self, i: usize, port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(10, self.octet, 1, i as u8 + 1), port))
    }

    /// Member `i`'s address for its peers.
    pub fn peer_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(10, self.octet, 2, i as u8 + 1), 2380))
    }

    /// Cuts member `i` off from the others; its clients still reach it.
    pub fn partition(&self, i: usize) {
        ip(&["link", "set", &self.host_link("p", i), "down"]);
    }

    /// Undoes [`partition`](Netns::partition).
    pub fn heal(&self, i: usize) {
        ip(&["link", "set", &self.host_link("p", i), "up"]);
    }

    fn bridge(&self, side: &str) -> String {
        format!("rl{}{side}", self.tag)
    }

    fn host_link(&self, side: &str, i: usize) -> String {
        format!("rl{}{side}{i}", self.tag)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A veth pair goes with either end. The host's ends are deleted
        // here rather than left to the namespace's teardown, which the
        // kernel may put off (seen: links outliving their namespace).
        // Errors are ignored: this may run after a failed setup.
        for i in 0..self.members {
            for side in ["c", "p"] {
                let _ = Command::new("ip").args(["link", "del", &self.host_link(side, i)]).output();
            }
            let _ = Command::new("ip").args(["netns", "del", &self.namespace(i)]).output();
        }
        for side in ["c", "p"] {
            let _ = Command::new("ip").args(["link", "del", &self.bridge(side)]).output();
        }
    }
}

/// A lock between test processes: a directory, which only one can create.
struct DirLock(PathBuf);

impl DirLock {
    fn take() -> DirLock {
        let path = std::env::temp_dir().join("relive-test-netns.lockdir");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match std::fs::create_dir(&path) {
                Ok(()) => return DirLock(path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // A holder killed while it held the lock leaves it
                    // behind; choosing a subnet takes milliseconds.
                    let age = std::fs::metadata(&path).and_then(|m| m.modified()).ok().and_then(|m| m.elapsed().ok());
                    if age.is_some_and(|age| age > Duration::from_secs(10)) {
                        let _ = std::fs::remove_dir(&path).or_else(|_| std::fs::remove_file(&path));
                    }
                    assert!(Instant::now() < deadline, "{} stayed locked for a minute", path.display());
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("cannot create {}: {e}", path.display()),
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Runs `ip args`, panicking with its message if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` ({e}): the partition tests need iproute2 and root"));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}; the partition tests need root (network namespaces)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A second octet `N` such that no interface has an address in `10.N.0.0/16`.
fn free_octet() -> u8 {
    let out = Command::new("ip").args(["-o", "-4", "addr", "show"]).output().map(|o| o.stdout).unwrap_or_default();
    let used = String::from_utf8_lossy(&out).into_owned();
    let start = std::process::id() % 200;
    (0..200u32)
        .map(|k| (20 + (start + k) % 200) as u8)
        .find(|n| !used.contains(&format!(" 10.{n}.")))
        .expect("a free 10.N.0.0/16 for the test network")
}
