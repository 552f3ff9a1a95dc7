//! How long a version published in etcd takes to reach a fleet of relive
//! instances: from the `put` to the moment every instance has applied it
//! *and said so in etcd*, next to what etcd alone takes for the same fan-out.
//!
//! ```sh
//! cargo run --release -p relive-fleet --example fleet_bench                        # 100 instances, 200 versions
//! cargo run --release -p relive-fleet --example fleet_bench -- --instances 1000
//! cargo run --release -p relive-fleet --example fleet_bench -- --quick             # CI-sized: 10 instances, 20 versions
//! cargo run --release -p relive-fleet --example fleet_bench -- --endpoint http://127.0.0.1:2379
//! cargo run --release -p relive-fleet --example fleet_bench -- --cluster 3          # a 3-member cluster
//! cargo run --release -p relive-fleet --example fleet_bench -- --tls                # mutual TLS and auth
//! cargo run --release -p relive-fleet --example fleet_bench -- --tls --no-auth      # mutual TLS, auth off
//! cargo run --release -p relive-fleet --example fleet_bench -- --compare-tls        # plaintext, TLS, TLS + auth interleaved: the ratios
//! ```
//!
//! Without `--endpoint` the bench starts its own etcd with the tests'
//! harness (`tests/common`): `etcd` on the `PATH`, or `ETCD_BIN`, on
//! 127.0.0.1 with free ports and a temporary data dir, its output in
//! `etcd.1.log` there. Everything it writes is under a prefix of its own
//! (`/fleet-bench-<pid>-<time>`), so an existing etcd can be used.
//!
//! `--cluster 3` starts a 3-member cluster on loopback instead (the tests'
//! `Cluster`); instance `i` lists the members starting from member `i mod
//! 3`, and so do the baselines' watchers. `--tls` serves clients over
//! mutual TLS with authentication on: certificates made by the tests' `Pki`
//! (`openssl`), every client (instances, baselines, the bench) with the
//! certificate of user `root` (`--no-auth`: TLS alone). `--compare-tls`
//! starts three etcds (or clusters), one plaintext, one over mutual TLS
//! with auth off and one with auth on, a fleet of N instances on each, and
//! interleaves their rounds (relive only, no baselines), so all meet the
//! same load; it prints each side's p50 and p99, their ratios to
//! plaintext, and the CPU each side's rounds cost.
//!
//! # What runs
//!
//! N instances in this process, each as a service would run one: its own
//! [`Workspace`] in a temporary directory, an [`FleetSourceBuilder`] with its own
//! etcd connection, lease and watch, and a `ConfigStream<Bench>` with a
//! validator, so every version is deserialized and validated by every
//! instance before it is applied. The engines poll their (empty) config
//! directories once an hour instead of taking an inotify instance each: the
//! kernel allows 128 per user by default (`fs.inotify.max_user_instances`),
//! fewer than 1,000 instances in one process need. `--inotify` keeps the
//! default engine settings. The instances boot `--boot-concurrency` at a
//! time (default 100). Their workspaces are in a temporary directory, under
//! `--workspaces DIR` if given (each instance writes its fleet cache there,
//! with `fsync`, before it acknowledges a version: compare a disk with
//! `/dev/shm`). `--no-history` turns off each workspace's version history
//! (on by default), which writes every version to disk in the background.
//!
//! # What is measured
//!
//! `--versions` rounds (after a few unmeasured warm-up rounds), 2–5 ms apart.
//! Each round publishes, in a rotating order, and waits for each in turn:
//!
//! - **relive**: a new version of the config `bench` (about 1 KB of TOML);
//!   done when one watch on `/<prefix>/instances/` has seen every
//!   instance's status key say `applied` for that version;
//! - **1 raw watcher**: a put → one plain etcd watcher gets the event;
//! - **N raw watchers**: a put → N plain watchers, each with its own
//!   client (connection), all got the event;
//! - **N raw watchers + ack**: a put → each of the N plain watchers puts an
//!   acknowledgement key, and one watch has seen all N. This is the floor of
//!   any "acknowledged in etcd" scheme; relive's own cost is what it adds.
//!
//! Every time runs from just before the `put` to the event that completes
//! it, stamped by the task that receives it. The bench also prints the time
//! to boot the fleet, the process's RSS, threads and file descriptors
//! (with and without the fleet), etcd's, and the load average before and
//! after. It fails (exit status 1) if a version is rejected, not
//! acknowledged by every instance within 30 s, or not the value every
//! instance's stream holds at the end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Cluster, Etcd, Pki};
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions, WatchStream};
use relive::{Format, HotReloadConfig, Polling, Workspace};
use relive_fleet::layout::encode_config;
use relive_fleet::{AckState, Boot, FleetSource, FleetSourceBuilder, Layout, SourceEvent, StatusRecord};
use serde::Deserialize;
use tokio::sync::{Semaphore, broadcast, mpsc};

/// The config every instance subscribes to.
const CONFIG: &str = "bench";
/// How long a version may take to reach every instance before the bench fails.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// The flags the bench's own etcd runs with, beyond its ports and data dir.
const BENCH_ETCD_FLAGS: [&str; 3] =
    ["--auto-compaction-mode=revision", "--auto-compaction-retention=1000", "--quota-backend-bytes=2147483648"];

#[derive(Debug, Deserialize)]
struct Bench {
    version: u64,
    workers: usize,
    routes: Vec<Route>,
}

#[derive(Debug, Deserialize)]
struct Route {
    path: String,
    upstream: String,
    timeout_ms: u64,
}

fn validate(b: &Bench) -> Result<(), relive::ValidationError> {
    if b.workers == 0 {
        return Err(relive::ValidationError::at("workers", "must be at least 1"));
    }
    for (i, r) in b.routes.iter().enumerate() {
        if !r.path.starts_with('/') {
            return Err(relive::ValidationError::at(format!("routes[{i}].path"), "must start with `/`"));
        }
        if r.upstream.is_empty() || r.timeout_ms == 0 {
            return Err(relive::ValidationError::at(format!("routes[{i}]"), "needs an upstream and a timeout"));
        }
    }
    Ok(())
}

/// Version `n` of the config: about 1 KB of TOML.
fn document(n: u64) -> Vec<u8> {
    let mut doc = format!("version = {n}\nworkers = {}\n", 1 + n % 8);
    for r in 0..16 {
        doc.push_str(&format!(
            "\n[[routes]]\npath = \"/api/v{n}/service-{r:02}\"\nupstream = \"http://10.0.{r}.1:8080\"\ntimeout_ms = {}\n",
            100 + r
        ));
    }
    encode_config(Format::Toml, doc.as_bytes())
}

/// How the bench's clients reach etcd.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Security {
    Plaintext,
    /// Mutual TLS (`--client-cert-auth`), authentication off.
    Tls,
    /// Mutual TLS with authentication on: every client is user `root` by
    /// its certificate. What a secured production cluster runs.
    TlsAuth,
}

impl Security {
    fn tls(self) -> bool {
        self != Security::Plaintext
    }

    fn name(self) -> &'static str {
        match self {
            Security::Plaintext => "plaintext",
            Security::Tls => "mutual TLS, auth off",
            Security::TlsAuth => "mutual TLS + auth",
        }
    }
}

struct Args {
    instances: usize,
    versions: usize,
    warmup: usize,
    endpoint: Option<String>,
    inotify: bool,
    boot_concurrency: usize,
    workspaces: Option<PathBuf>,
    history: bool,
    /// Members of the etcd the bench starts: 1 or 3.
    cluster: usize,
    security: Security,
    compare_tls: bool,
    /// `--compare-tls` boots its fleets last side first.
    boot_reversed: bool,
}

const USAGE: &str = "usage: fleet_bench [--instances N] [--versions M] [--endpoint URL] [--inotify] \
                     [--boot-concurrency K] [--workspaces DIR] [--no-history] [--quick] [--cluster 1|3] \
                     [--tls [--no-auth] | --compare-tls [--boot-reversed]] [--shared-client-port]";

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut instances, mut versions, mut endpoint, mut inotify, mut quick, mut boot) =
        (None, None, None, false, false, 100);
    let (mut workspaces, mut history) = (None, true);
    let (mut cluster, mut tls, mut compare_tls, mut auth, mut boot_reversed) = (1, false, false, true, false);
    let number = |flag: &str, v: Option<String>| -> Result<usize, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        v.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| format!("{flag} takes a positive number, not `{v}`"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--instances" => instances = Some(number("--instances", args.next())?),
            "--versions" => versions = Some(number("--versions", args.next())?),
            "--boot-concurrency" => boot = number("--boot-concurrency", args.next())?,
            "--endpoint" => endpoint = Some(args.next().ok_or_else(|| format!("--endpoint needs a URL\n{USAGE}"))?),
            "--workspaces" => {
                workspaces = Some(
                    args.next().map(PathBuf::from).ok_or_else(|| format!("--workspaces needs a directory\n{USAGE}"))?,
                )
            }
            "--inotify" => inotify = true,
            "--no-history" => history = false,
            "--quick" => quick = true,
            "--cluster" => {
                cluster = number("--cluster", args.next())?;
                if cluster != 1 && cluster != 3 {
                    return Err(format!("--cluster takes 1 or 3, not {cluster}"));
                }
            }
            "--tls" => tls = true,
            "--compare-tls" => compare_tls = true,
            "--no-auth" => auth = false,
            "--boot-reversed" => boot_reversed = true,
            "--shared-client-port" => common::SHARED_CLIENT_PORT.store(true, std::sync::atomic::Ordering::Relaxed),
            // `cargo bench` passes it to every bench target.
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(Args {
        instances: instances.unwrap_or(if quick { 10 } else { 100 }),
        versions: versions.unwrap_or(if quick { 20 } else { 200 }),
        warmup: if quick { 2 } else { 5 },
        endpoint,
        inotify,
        boot_concurrency: boot,
        workspaces,
        history,
        cluster,
        security: match (tls, auth) {
            (false, _) => Security::Plaintext,
            (true, false) => Security::Tls,
            (true, true) => Security::TlsAuth,
        },
        compare_tls,
        boot_reversed,
    })
    .and_then(|a: Args| {
        if !auth && !tls {
            return Err("--no-auth goes with --tls (--compare-tls measures both)".into());
        }
        if a.endpoint.is_some() && (a.security.tls() || a.compare_tls || a.cluster != 1) {
            return Err("--tls, --compare-tls and --cluster start the bench's own etcd: not with --endpoint".into());
        }
        Ok(a)
    })
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("fleet_bench: {e}");
            std::process::exit(2);
        }
    };
    let result = if args.compare_tls { compare_tls(&args).await } else { run(&args, args.security).await.map(drop) };
    if let Err(e) = result {
        eprintln!("fleet_bench: {e}");
        std::process::exit(1);
    }
}

/// Relive's publish → applied + acked over plaintext, mutual TLS with auth
/// off, and mutual TLS with auth on, in one run: three etcds (or
/// clusters), a fleet of N instances on each, and the rounds interleaved
/// (the side that goes first rotates every round), so every side meets the
/// same load on this shared machine. Then p50 and p99 side by side, and the
/// CPU each side's rounds cost, in this process and in the etcds.
async fn compare_tls(args: &Args) -> Result<(), String> {
    const SIDES: [Security; 3] = [Security::Plaintext, Security::Tls, Security::TlsAuth];
    let n = args.instances;
    let members = if args.cluster == 3 { "a 3-member cluster each" } else { "one etcd each" };
    println!(
        "fleet_bench --compare-tls: {n} instances on each of {} sides, {} rounds (+{} warm-up), {members}",
        SIDES.len(),
        args.versions,
        args.warmup
    );
    println!("load average before: {}", loadavg());
    // Booted in order, or the other way round (`--boot-reversed`): a
    // fleet's place in the boot order must not be what a ratio measures.
    let mut sides: Vec<Option<Side>> = SIDES.iter().map(|_| None).collect();
    let mut order: Vec<usize> = (0..SIDES.len()).collect();
    if args.boot_reversed {
        order.reverse();
    }
    for k in order {
        sides[k] = Some(Side::start(args, SIDES[k]).await?);
    }
    let mut sides: Vec<Side> = sides.into_iter().map(|s| s.expect("every side booted")).collect();
    let mut cpu = CpuMeter::per_kind(sides.iter().map(|s| s.server.pids()).collect());
    let mut times: [Vec<Duration>; 3] = Default::default();
    let total = args.warmup + args.versions;
    for round in 0..total {
        for k in 0..SIDES.len() {
            let side = (round + k) % SIDES.len();
            // The window runs until the next side's put: the trailing work
            // (history records, cache writes) of a round is its own.
            cpu.switch(side, round > args.warmup || (round == args.warmup && k > 0));
            let started = Instant::now();
            let done = sides[side].round(round as u64 + 1).await?;
            if round >= args.warmup {
                times[side].push(done - started);
            }
        }
        tokio::time::sleep(Duration::from_micros(2000 + (round as u64 * 7919) % 3000)).await;
    }
    cpu.switch(0, true);
    println!("load average after: {}", loadavg());
    for side in sides {
        side.stop().await?;
    }
    let summaries = times.map(Summary::of);
    let plain = &summaries[0];
    let per_round = |ticks: u64| ticks as f64 / ticks_per_second() * 1e3 / args.versions as f64;
    println!();
    println!("TLS against plaintext, same run, interleaved: publish → {n} instances applied + acked, {members}");
    println!(
        "{:<24} {:>8} {:>8} {:>8} {:>15} {:>15} {:>13}",
        "(ms)", "p50", "p99", "max", "× plain p50", "× plain p99", "CPU/round"
    );
    for (k, security) in SIDES.iter().enumerate() {
        let s = &summaries[k];
        let (us, etcd) = cpu.used[k];
        println!(
            "{:<24} {:>8.2} {:>8.2} {:>8.2} {:>14.2}× {:>14.2}× {:>6.1} + {:>4.1}",
            security.name(),
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            ratio(s.p50, plain.p50),
            ratio(s.p99, plain.p99),
            per_round(us),
            per_round(etcd),
        );
    }
    println!("(CPU/round: ms of CPU per round in this process + in that side's etcd, trailing work included)");
    let r99 = ratio(summaries[2].p99, plain.p99);
    println!(
        "target: TLS (with auth) adds ≤ 20% at p99: {} ({:+.0}%)",
        if r99 <= 1.2 { "met" } else { "missed" },
        (r99 - 1.0) * 100.0
    );
    Ok(())
}

/// One side of `--compare-tls`: an etcd, a fleet on it, and one watch on
/// its acknowledgements.
struct Side {
    server: Server,
    client: Client,
    config_key: String,
    layout: Layout,
    acks: AckCounter,
    fleet: Vec<Instance>,
    n: usize,
    _root: tempfile::TempDir,
}

impl Side {
    async fn start(args: &Args, security: Security) -> Result<Side, String> {
        let server = Server::start(args, security).await;
        let conn = server.conn.clone();
        let mut client = conn.client(0).await?;
        let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis();
        let prefix = format!("fleet-bench-{}-{stamp}", std::process::id());
        let layout = Layout::new(&prefix).map_err(|e| e.to_string())?;
        let config_key = layout.config_key(CONFIG).map_err(|e| e.to_string())?;
        let n = args.instances;
        let mut acks = AckCounter::start(&mut client, &layout.instances_prefix(), n, {
            let layout = layout.clone();
            move |key, value| relive_ack(&layout, key, value)
        })
        .await?;
        let first = put(&mut client, &config_key, document(0)).await?;
        let root = tempfile::Builder::new()
            .prefix("relive-fleet-bench")
            .tempdir()
            .map_err(|e| format!("cannot create the instances' directory: {e}"))?;
        let fleet = boot_fleet(&conn, &prefix, root.path(), args).await?;
        acks.wait(first, ACK_TIMEOUT).await.map_err(|e| format!("boot: {e}"))?;
        println!("{}: {n} instances booted at {}", security.name(), conn.endpoints.join(","));
        Ok(Side { server, client, config_key, layout, acks, fleet, n, _root: root })
    }

    /// Publishes document `doc`; returns when every instance acknowledged it.
    async fn round(&mut self, doc: u64) -> Result<Instant, String> {
        let v = put(&mut self.client, &self.config_key, document(doc)).await?;
        self.acks.wait(v, ACK_TIMEOUT).await.map_err(|e| fleet_failure(e, &self.layout, self.n, v))
    }

    async fn stop(self) -> Result<(), String> {
        let mut problems = Vec::new();
        for mut i in self.fleet {
            while let Ok(event) = i.events.try_recv() {
                if let SourceEvent::Rejected { version, error, .. } = event {
                    problems.push(format!("{} rejected version {version}: {error}", i.id));
                }
            }
            i.source.shutdown().await;
            drop(i.ws);
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
    }
}

/// The etcd the bench talks to, and how.
#[derive(Clone)]
struct Conn {
    endpoints: Vec<String>,
    /// Mutual TLS with user `root`'s certificate.
    pki: Option<Pki>,
}

impl Conn {
    /// The endpoints starting from member `i mod n`: clients spread over
    /// the members.
    fn rotated(&self, i: usize) -> Vec<String> {
        let mut endpoints = self.endpoints.clone();
        let len = endpoints.len();
        endpoints.rotate_left(i % len);
        endpoints
    }

    fn options(&self) -> Option<ConnectOptions> {
        self.pki.as_ref().map(|pki| ConnectOptions::new().with_tls(pki.tls_options("root")))
    }

    async fn client(&self, i: usize) -> Result<Client, String> {
        let endpoints = self.rotated(i);
        Client::connect(&endpoints, self.options())
            .await
            .map_err(|e| format!("cannot connect to etcd at {}: {e}", endpoints.join(",")))
    }

    fn source(&self, i: usize, prefix: &str) -> Result<FleetSourceBuilder, relive_fleet::Error> {
        let endpoints = self.rotated(i);
        let mut source = FleetSourceBuilder::new(endpoints[0].clone(), prefix)?;
        for e in &endpoints[1..] {
            source = source.endpoint(e.clone());
        }
        if let Some(pki) = &self.pki {
            let (crt, key) = pki.client("root");
            source = source.ca_certificate(pki.ca()).client_certificate(crt, key);
        }
        Ok(source)
    }
}

/// The etcd processes the bench started, if it did.
struct Server {
    conn: Conn,
    single: Option<Etcd>,
    cluster: Option<Cluster>,
}

impl Server {
    /// The tests' etcd harness: it waits until etcd is healthy, and panics
    /// with etcd's log if it does not start.
    async fn start(args: &Args, security: Security) -> Server {
        let pki = security.tls().then(Pki::new);
        let auth = security == Security::TlsAuth;
        if let Some(endpoint) = &args.endpoint {
            return Server { conn: Conn { endpoints: vec![endpoint.clone()], pki }, single: None, cluster: None };
        }
        if args.cluster == 3 {
            let cluster = Cluster::start_with(pki.as_ref(), &BENCH_ETCD_FLAGS);
            if auth {
                cluster.enable_auth().await;
            }
            let conn = Conn { endpoints: cluster.endpoints(), pki };
            return Server { conn, single: None, cluster: Some(cluster) };
        }
        let etcd = match &pki {
            Some(pki) => Etcd::start_tls(pki, &BENCH_ETCD_FLAGS),
            None => Etcd::start_with(&BENCH_ETCD_FLAGS),
        };
        if auth {
            etcd.enable_auth().await;
        }
        Server { conn: Conn { endpoints: vec![etcd.endpoint()], pki }, single: Some(etcd), cluster: None }
    }

    fn started(&self) -> bool {
        self.single.is_some() || self.cluster.is_some()
    }

    fn flags(&self) -> Option<Vec<String>> {
        match (&self.single, &self.cluster) {
            (Some(etcd), _) => Some(etcd.flags()),
            (_, Some(cluster)) => Some(cluster.flags(0)),
            _ => None,
        }
    }

    /// The etcd processes' ids.
    fn pids(&self) -> Vec<String> {
        let pids = match (&self.single, &self.cluster) {
            (Some(etcd), _) => etcd.pid().into_iter().collect(),
            (_, Some(cluster)) => cluster.pids(),
            _ => Vec::new(),
        };
        pids.iter().map(u32::to_string).collect()
    }
}

/// Runs the bench once; returns relive's times.
async fn run(args: &Args, security: Security) -> Result<Summary, String> {
    let n = args.instances;
    let load_before = loadavg();
    let idle = ProcStats::of("self");
    let server = Server::start(args, security).await;
    let conn = server.conn.clone();
    let endpoint = conn.endpoints.join(",");
    let mut client = conn.client(0).await?;
    let etcd_version = client
        .status()
        .await
        .map_err(|e| format!("etcd at {endpoint} does not answer its status: {e}"))?
        .version()
        .to_string();
    let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis();
    let prefix = format!("fleet-bench-{}-{stamp}", std::process::id());
    let layout = Layout::new(&prefix).map_err(|e| e.to_string())?;
    let config_key = layout.config_key(CONFIG).map_err(|e| e.to_string())?;
    let raw = format!("/{prefix}-raw");

    println!(
        "fleet_bench: {n} instances, {} versions (+{} warm-up), etcd {etcd_version} at {endpoint} ({}{}, {})",
        args.versions,
        args.warmup,
        if server.started() { "started by the bench" } else { "given" },
        if server.cluster.is_some() { ", 3 members" } else { "" },
        security.name()
    );
    if let Some(flags) = server.flags() {
        println!("etcd flags: {}", flags.join(" "));
    }
    println!(
        "instances: engines {}, history {}, workspaces in {}",
        if args.inotify { "on inotify" } else { "polling hourly" },
        if args.history { "on" } else { "off" },
        args.workspaces.as_deref().unwrap_or(&std::env::temp_dir()).display()
    );
    println!("load average before: {load_before}");

    // The acknowledgements of the fleet, seen by one watch from before the
    // first instance boots.
    let mut fleet_acks = AckCounter::start(&mut client, &layout.instances_prefix(), n, {
        let layout = layout.clone();
        move |key, value| relive_ack(&layout, key, value)
    })
    .await?;

    // Boot: the first version is in etcd before any instance starts.
    let first = put(&mut client, &config_key, document(0)).await?;
    let root = match &args.workspaces {
        Some(dir) => tempfile::Builder::new().prefix("relive-fleet-bench").tempdir_in(dir),
        None => tempfile::Builder::new().prefix("relive-fleet-bench").tempdir(),
    }
    .map_err(|e| format!("cannot create the instances' directory: {e}"))?;
    let boot_started = Instant::now();
    let fleet = boot_fleet(&conn, &prefix, root.path(), args).await?;
    let all_started = boot_started.elapsed();
    let all_acked = fleet_acks.wait(first, ACK_TIMEOUT).await.map_err(|e| format!("boot: {e}"))? - boot_started;
    let cache_boots = fleet.iter().filter(|i| matches!(i.source.boot(), Boot::Cache { .. })).count();
    let with_fleet = ProcStats::of("self");
    println!(
        "boot: {n} instances started in {:.2} s ({} at a time), all acknowledged version {first} after {:.2} s{}",
        all_started.as_secs_f64(),
        args.boot_concurrency.min(n),
        all_acked.as_secs_f64(),
        if cache_boots > 0 {
            format!(" ({cache_boots} booted from the cache: etcd was too slow)")
        } else {
            String::new()
        }
    );

    // The plain etcd watchers of the baselines.
    let mut raw_one = RawWatchers::start(&conn, &format!("{raw}/one/"), &format!("{raw}/acks/"), 1).await?;
    let mut raw_fan = RawWatchers::start(&conn, &format!("{raw}/fan/"), &format!("{raw}/acks/"), n).await?;
    let mut raw_acks = AckCounter::start(&mut client, &format!("{raw}/acks/"), n, raw_ack).await?;
    let with_watchers = ProcStats::of("self");

    let mut times: [Vec<Duration>; 4] = Default::default();
    let etcd_pids = server.pids();
    let mut cpu = CpuMeter::new(etcd_pids.clone());
    let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ stamp as u64;
    let total = args.warmup + args.versions;
    let rounds_started = Instant::now();
    for round in 0..total {
        for k in 0..4 {
            let kind = (round + k) % 4;
            cpu.switch(kind, round >= args.warmup);
            let started = Instant::now();
            let done = match kind {
                0 => {
                    let v = put(&mut client, &config_key, document(round as u64 + 1)).await?;
                    fleet_acks.wait(v, ACK_TIMEOUT).await.map_err(|e| fleet_failure(e, &layout, n, v))?
                }
                1 => raw_one.round(&mut client, &format!("{raw}/one/k")).await?,
                2 => raw_fan.round(&mut client, &format!("{raw}/fan/k")).await?,
                _ => {
                    let rev = put(&mut client, &format!("{raw}/fan/ack"), b"ack".to_vec()).await?;
                    raw_acks.wait(rev, ACK_TIMEOUT).await.map_err(|e| format!("raw acks: {e}"))?
                }
            };
            if round >= args.warmup {
                times[kind].push(done - started);
            }
        }
        if (round + 1) % (total / 10).max(1) == 0 {
            eprintln!("  round {}/{total} after {:.0?}", round + 1, rounds_started.elapsed());
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_micros(2000 + seed % 3000)).await;
    }
    cpu.switch(0, true);
    let load_after = loadavg();

    let [relive, one, fan, fan_ack] = times.map(Summary::of);
    println!();
    println!("{:<44} {:>9} {:>9} {:>9}", "publish → done (ms)", "p50", "p99", "max");
    let rows = [
        ("put → 1 raw watcher", &one),
        (&*format!("put → {n} raw watchers"), &fan),
        (&*format!("put → {n} raw watchers acked in etcd"), &fan_ack),
        (&*format!("put → {n} relive instances applied + acked"), &relive),
    ];
    for (name, s) in rows {
        println!("{name:<44} {:>9.2} {:>9.2} {:>9.2}", ms(s.p50), ms(s.p99), ms(s.max));
    }
    println!("relive / baseline (p50, p99):");
    for (name, s) in [("1 raw watcher", &one), ("N raw watchers", &fan), ("N raw watchers acked", &fan_ack)] {
        println!("  vs {name:<22} {:>7.1}× {:>7.1}×", ratio(relive.p50, s.p50), ratio(relive.p99, s.p99));
    }
    let hz = ticks_per_second();
    let per_round = |ticks: u64| ticks as f64 * 1e3 / hz / args.versions as f64;
    println!("CPU per round (ms), this process + etcd:");
    let names = ["relive instances", "1 raw watcher", "N raw watchers", "N raw watchers acked"];
    for (kind, name) in names.iter().enumerate() {
        let (own, etcd) = cpu.used[kind];
        let etcd = if !etcd_pids.is_empty() { format!("{:.2}", per_round(etcd)) } else { "?".into() };
        println!("  {name:<22} {:>7.2} + {etcd}", per_round(own));
    }
    println!(
        "target: p99 ≤ 50 ms from publish to {n} instances applied: {} ({:.2} ms)",
        if relive.p99 <= Duration::from_millis(50) { "met" } else { "missed" },
        ms(relive.p99)
    );
    println!("load average after: {load_after}");

    println!();
    println!("this process: {idle} before the fleet");
    println!("              {with_fleet} with {n} instances");
    println!("              {with_watchers} with {n} + 1 raw watchers too");
    println!("per instance: {}", with_fleet.per(&idle, n));
    for pid in &etcd_pids {
        println!("etcd:         {}", ProcStats::of(pid));
    }
    if let Ok(status) = client.status().await {
        let revision = status.header().map_or(0, |h| h.revision());
        println!("etcd store:   revision {revision}, db {:.1} MiB", status.db_size() as f64 / 1048576.0);
    }

    // Every instance serves the last version, and none lost its connection.
    let mut problems = Vec::new();
    let (mut disconnects, mut resyncs, mut rejected, mut lagged) = (0, 0, 0, 0);
    // Round r publishes document(r + 1).
    let last_doc = (args.warmup + args.versions) as u64;
    for mut i in fleet {
        loop {
            match i.events.try_recv() {
                Ok(SourceEvent::Disconnected { .. }) => disconnects += 1,
                Ok(SourceEvent::Resync { .. }) => resyncs += 1,
                Ok(SourceEvent::Rejected { .. }) => rejected += 1,
                Ok(_) => {}
                Err(broadcast::error::TryRecvError::Lagged(_)) => lagged += 1,
                Err(_) => break,
            }
        }
        let serves = i.stream.live().load().version;
        if serves != last_doc {
            problems.push(format!("{} serves document {serves}, not the last one published ({last_doc})", i.id));
        }
        i.source.shutdown().await;
        drop(i.ws);
    }
    println!(
        "health: {disconnects} disconnects, {resyncs} re-reads after compaction, {rejected} rejections{}",
        if lagged > 0 { format!(", events lost by {lagged} instances") } else { String::new() }
    );
    let left = client
        .get(layout.instances_prefix(), Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .map_err(|e| format!("count status keys: {e}"))?
        .count();
    if left != 0 {
        problems.push(format!("{left} status keys are left after every instance shut down (revoked its lease)"));
    }
    let _ = client.delete(format!("/{prefix}"), Some(etcd_client::DeleteOptions::new().with_prefix())).await;
    let _ = client.delete(raw, Some(etcd_client::DeleteOptions::new().with_prefix())).await;
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    Ok(relive)
}

fn fleet_failure(e: String, layout: &Layout, n: usize, version: u64) -> String {
    format!(
        "version {version} of `{CONFIG}` under {}: {e} (of {n} instances; `etcdctl get --prefix {}` shows their statuses)",
        layout.configs_prefix(),
        layout.instances_prefix()
    )
}

/// One instance of the fleet, as a service would run it.
struct Instance {
    id: String,
    ws: Workspace,
    source: FleetSource,
    /// Kept open: every version is deserialized and validated for it.
    stream: relive::ConfigStream<Bench>,
    events: broadcast::Receiver<SourceEvent>,
}

/// How each instance's engine runs.
#[derive(Clone, Copy)]
struct Engine {
    /// inotify (the default settings) rather than polling once an hour.
    inotify: bool,
    /// Record every version in the workspace's history (the default).
    history: bool,
}

async fn boot_fleet(conn: &Conn, prefix: &str, root: &Path, args: &Args) -> Result<Vec<Instance>, String> {
    let limit = Arc::new(Semaphore::new(args.boot_concurrency));
    let mut tasks = Vec::with_capacity(args.instances);
    for i in 0..args.instances {
        let (conn, prefix, dir, limit) =
            (conn.clone(), prefix.to_string(), root.join(format!("i{i:04}")), limit.clone());
        let settings = Engine { inotify: args.inotify, history: args.history };
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.map_err(|e| e.to_string())?;
            boot_instance(&conn, i, &prefix, &dir, settings).await
        }));
    }
    let mut fleet = Vec::with_capacity(tasks.len());
    for t in tasks {
        fleet.push(t.await.map_err(|e| format!("boot task: {e}"))??);
    }
    Ok(fleet)
}

async fn boot_instance(conn: &Conn, i: usize, prefix: &str, dir: &Path, settings: Engine) -> Result<Instance, String> {
    let id = format!("i{i:04}");
    let failed = |what: &str, e: &dyn std::fmt::Display| format!("instance {id}: {what}: {e}");
    std::fs::create_dir_all(dir.join("config")).map_err(|e| failed(&format!("create {}", dir.display()), &e))?;
    let ws = Workspace::new(dir);
    let mut engine = HotReloadConfig::default();
    if !settings.inotify {
        (engine.polling, engine.poll_interval_ms) = (Polling::Always, 3_600_000);
    }
    engine.history.enabled = settings.history;
    let hint = if settings.inotify {
        " (the kernel allows fs.inotify.max_user_instances inotify instances per user, 128 by default: \
         raise it or run without --inotify)"
    } else {
        ""
    };
    ws.start_hot_reload_with_config(engine).await.map_err(|e| failed(&format!("start the engine{hint}"), &e))?;
    let source = conn
        .source(i, prefix)
        .and_then(|s| s.instance(id.clone()))
        .map_err(|e| failed("settings", &e))?
        .host("fleet-bench")
        .start(&ws)
        .await
        .map_err(|e| failed("start the etcd source", &e))?;
    let events = source.subscribe();
    let stream = ws.config::<Bench>(CONFIG).validate(validate).watch().await.map_err(|e| failed("subscribe", &e))?;
    Ok(Instance { id, ws, source, stream, events })
}

/// Puts `value` at `key`; returns the revision it made.
async fn put(client: &mut Client, key: &str, value: Vec<u8>) -> Result<u64, String> {
    let resp = client.put(key, value, None).await.map_err(|e| format!("put {key}: {e}"))?;
    Ok(resp.header().map_or(0, |h| h.revision()) as u64)
}

/// A watch that opened (etcd sent its `created` response).
async fn open_watch(client: &mut Client, prefix: &str) -> Result<WatchStream, String> {
    let mut watch = client
        .watch(prefix, Some(WatchOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("watch {prefix}: {e}"))?;
    match watch.message().await {
        Ok(Some(resp)) if resp.created() => Ok(watch),
        other => Err(format!("watch {prefix} did not open: {other:?}")),
    }
}

/// What one status (or acknowledgement) key says.
enum Ack {
    /// `who` applied `version`.
    Applied { who: String, version: u64 },
    /// `who` rejected `version`.
    Rejected { who: String, version: u64, error: String },
    /// Not an acknowledgement of this bench's config.
    Other,
}

fn relive_ack(layout: &Layout, key: &[u8], value: &[u8]) -> Ack {
    let Some((who, config)) = layout.parse_status_key(key) else { return Ack::Other };
    let Ok(status) = StatusRecord::from_json(value) else { return Ack::Other };
    if config != CONFIG {
        return Ack::Other;
    }
    match status.state {
        AckState::Applied => Ack::Applied { who: who.to_string(), version: status.version },
        AckState::Rejected => {
            Ack::Rejected { who: who.to_string(), version: status.version, error: status.error.unwrap_or_default() }
        }
    }
}

fn raw_ack(key: &[u8], value: &[u8]) -> Ack {
    let who = String::from_utf8_lossy(key).rsplit('/').next().unwrap_or_default().to_string();
    match std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
        Some(version) => Ack::Applied { who, version },
        None => Ack::Other,
    }
}

/// One watch over acknowledgement keys: tells when all `n` acknowledged a
/// version, stamped when the completing event arrived.
struct AckCounter {
    done: mpsc::UnboundedReceiver<Result<(u64, Instant), String>>,
}

impl AckCounter {
    async fn start(
        client: &mut Client,
        prefix: &str,
        n: usize,
        parse: impl Fn(&[u8], &[u8]) -> Ack + Send + 'static,
    ) -> Result<AckCounter, String> {
        let mut watch = open_watch(client, prefix).await?;
        let (tx, done) = mpsc::unbounded_channel();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            let mut last: HashMap<String, u64> = HashMap::new();
            let mut counts: HashMap<u64, usize> = HashMap::new();
            loop {
                let resp = match watch.message().await {
                    Ok(Some(resp)) => resp,
                    other => {
                        let _ = tx.send(Err(format!("the watch on {prefix} ended: {other:?}")));
                        return;
                    }
                };
                let now = Instant::now();
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    if event.event_type() == EventType::Delete {
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        let _ = tx.send(Err(format!("{key} vanished: its instance lost its lease")));
                        continue;
                    }
                    match parse(kv.key(), kv.value()) {
                        Ack::Applied { who, version } => {
                            // Rewrites of an older status (after a
                            // reconnect) do not count twice.
                            if last.get(&who).is_some_and(|&v| v >= version) {
                                continue;
                            }
                            last.insert(who, version);
                            let count = counts.entry(version).or_default();
                            *count += 1;
                            if *count == n {
                                counts.remove(&version);
                                let _ = tx.send(Ok((version, now)));
                            }
                        }
                        Ack::Rejected { who, version, error } => {
                            let _ = tx.send(Err(format!("{who} rejected version {version}: {error}")));
                        }
                        Ack::Other => {}
                    }
                }
            }
        });
        Ok(AckCounter { done })
    }

    /// When every instance had acknowledged `version`.
    async fn wait(&mut self, version: u64, limit: Duration) -> Result<Instant, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.done.recv()).await {
                Err(_) => return Err(format!("not acknowledged by every instance within {limit:?}")),
                Ok(None) => return Err("the acknowledgement watch stopped".into()),
                Ok(Some(Err(e))) => return Err(e),
                Ok(Some(Ok((v, at)))) if v == version => return Ok(at),
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// Plain etcd watchers, each with its own client, as the baselines' fleet.
/// A put of `<prefix>k` is reported by each; a put of `<prefix>ack` makes
/// watcher `i` put `<acks>w<i>` = the revision.
struct RawWatchers {
    n: usize,
    seen: mpsc::UnboundedReceiver<(u64, Instant)>,
}

impl RawWatchers {
    async fn start(conn: &Conn, prefix: &str, acks: &str, n: usize) -> Result<RawWatchers, String> {
        let (tx, rx) = mpsc::unbounded_channel();
        for i in 0..n {
            let mut client = conn.client(i).await.map_err(|e| format!("raw watcher {i}: {e}"))?;
            let mut watch = open_watch(&mut client, prefix).await?;
            let (tx, ack_key) = (tx.clone(), format!("{acks}w{i:04}"));
            tokio::spawn(async move {
                while let Ok(Some(resp)) = watch.message().await {
                    let now = Instant::now();
                    for event in resp.events() {
                        let Some(kv) = event.kv() else { continue };
                        if kv.key().ends_with(b"/ack") {
                            let _ = client.put(ack_key.as_str(), kv.mod_revision().to_string(), None).await;
                        } else {
                            let _ = tx.send((kv.mod_revision() as u64, now));
                        }
                    }
                }
            });
        }
        Ok(RawWatchers { n, seen: rx })
    }

    /// Puts `key`; returns when the last of the watchers got it.
    async fn round(&mut self, client: &mut Client, key: &str) -> Result<Instant, String> {
        let rev = put(client, key, b"x".to_vec()).await?;
        let (mut got, mut latest) = (0, Instant::now());
        let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
        while got < self.n {
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some((r, at))) if r == rev => {
                    got += 1;
                    latest = at;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    return Err(format!("{got} of {} raw watchers saw revision {rev} of {key}", self.n));
                }
            }
        }
        Ok(latest)
    }
}

/// p50, p99 and max of a set of times (nearest rank).
struct Summary {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Summary {
    fn of(mut times: Vec<Duration>) -> Summary {
        times.sort();
        let rank = |p: f64| times[((p * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
        Summary { p50: rank(0.50), p99: rank(0.99), max: times[times.len() - 1] }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

/// CPU time of this process and of etcd, charged to the kind of round
/// measured from its put until the next measurement starts, so trailing
/// work (history records, cache writes) counts too.
struct CpuMeter {
    /// etcd's processes (one per member), for each kind of round.
    etcd: Vec<Vec<String>>,
    /// Ticks (this process, etcd) used by each kind of round.
    used: [(u64, u64); 4],
    since: (u64, u64),
    kind: usize,
}

impl CpuMeter {
    /// Every kind of round served by the same etcd.
    fn new(etcd: Vec<String>) -> CpuMeter {
        CpuMeter::per_kind(vec![etcd; 4])
    }

    /// Kind `k`'s rounds served by `etcd[k]`: its window is charged that
    /// etcd's CPU alone.
    fn per_kind(etcd: Vec<Vec<String>>) -> CpuMeter {
        let mut meter = CpuMeter { etcd, used: [(0, 0); 4], since: (0, 0), kind: 0 };
        meter.since = meter.now();
        meter
    }

    fn now(&self) -> (u64, u64) {
        (cpu_ticks("self"), self.etcd[self.kind].iter().map(|pid| cpu_ticks(pid)).sum())
    }

    /// Ends the current window (charging it to its kind if `charge`) and
    /// starts one for `kind`.
    fn switch(&mut self, kind: usize, charge: bool) {
        let now = self.now();
        if charge {
            self.used[self.kind].0 += now.0 - self.since.0;
            self.used[self.kind].1 += now.1 - self.since.1;
        }
        self.kind = kind;
        // The new window starts from the new kind's etcd.
        self.since = self.now();
    }
}

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the whole line.
    field(11) + field(12)
}

/// `getconf CLK_TCK` (USER_HZ, 100 on Linux).
fn ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().ok();
    out.and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(100.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Memory, threads and file descriptors of a process, from `/proc`.
#[derive(Clone, Copy)]
struct ProcStats {
    rss_kib: u64,
    threads: u64,
    fds: u64,
}

impl ProcStats {
    /// `pid` is a number or `self`.
    fn of(pid: &str) -> ProcStats {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
        ProcStats { rss_kib: field("VmRSS:"), threads: field("Threads:"), fds }
    }

    /// What each of `n` instances added to `base`.
    fn per(&self, base: &ProcStats, n: usize) -> String {
        let n = n as f64;
        format!(
            "{:.0} KiB RSS, {:.1} threads, {:.1} file descriptors",
            self.rss_kib.saturating_sub(base.rss_kib) as f64 / n,
            self.threads.saturating_sub(base.threads) as f64 / n,
            self.fds.saturating_sub(base.fds) as f64 / n
        )
    }
}

impl std::fmt::Display for ProcStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RSS {:.1} MiB, {} threads, {} fds", self.rss_kib as f64 / 1024.0, self.threads, self.fds)
    }
}
