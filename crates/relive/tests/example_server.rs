//! Runs `examples/hot_reload_server.rs` as a process and checks that it
//! reconfigures itself from `config/server.toml` without losing state.
//!
//! Cargo does not build examples for `cargo test --test example_server`, so
//! the test asks cargo to build the example first (a no-op when it is fresh).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long any single wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(15);
/// The example's first start also starts the engine: allow more.
const START_WAIT: Duration = Duration::from_secs(60);

/// The example binary, built once per test run.
fn server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // Tests run from target/<profile>/deps; examples land in
        // target/<profile>/examples.
        let exe = std::env::current_exe().expect("current exe");
        let deps = exe.parent().expect("deps dir");
        let profile_dir = if deps.ends_with("deps") { deps.parent().expect("profile dir") } else { deps };
        let profile = profile_dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "relive", "--example", "hot_reload_server"]);
        build.current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile != "debug" {
            build.args(["--profile", profile]);
        }
        let out = build.output().expect("run cargo build");
        assert!(out.status.success(), "cargo build --example failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let binary = profile_dir.join("examples").join(format!("hot_reload_server{}", std::env::consts::EXE_SUFFIX));
        assert!(binary.is_file(), "example binary not found at {}", binary.display());
        binary
    })
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind :0").local_addr().expect("local addr").port()
}

fn config(port: u16, greeting: &str, max_connections: usize) -> String {
    format!("host = \"127.0.0.1\"\nport = {port}\nmax_connections = {max_connections}\ngreeting = \"{greeting}\"\n")
}

struct TempWorkspace {
    dir: tempfile::TempDir,
}

impl TempWorkspace {
    fn new(initial: &str) -> TempWorkspace {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("config")).expect("mkdir config");
        let ws = TempWorkspace { dir };
        ws.write(initial);
        ws
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, server_toml: &str) {
        std::fs::write(self.dir.path().join("config/server.toml"), server_toml).expect("write server.toml");
    }
}

/// The running example; killed when dropped.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(workspace: &Path) -> Server {
        let mut child = Command::new(server_binary())
            .arg(workspace)
            .env_remove("RELIVE_ENV")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn example");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = lines(child.stdout.take().expect("stdout"), Arc::clone(&log), "stdout");
        let stderr = lines(child.stderr.take().expect("stderr"), Arc::clone(&log), "stderr");
        Server { stdin: child.stdin.take(), child, stdout, stderr, log }
    }

    /// The address in the next `listening on ADDR` line on stdout.
    fn listening(&self, timeout: Duration) -> SocketAddr {
        let line = wait_line(&self.stdout, timeout, |l| l.starts_with("listening on "), "a `listening on` line");
        line["listening on ".len()..].parse().expect("listening address")
    }

    /// The next stderr line that satisfies `pred`.
    fn stderr_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_line(&self.stderr, WAIT, pred, what)
    }

    /// Closes stdin (a graceful shutdown) and waits for the exit.
    fn close_stdin_and_wait(&mut self) -> ExitStatus {
        drop(self.stdin.take());
        let status = poll(WAIT, "the server to exit", || self.child.try_wait().expect("try_wait"));
        // Let the reader threads drain.
        while self.stderr.recv_timeout(WAIT).is_ok() {}
        status
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- server output ---\n{}", self.log().join("\n"));
        }
    }
}

/// Forwards the lines of `pipe` to the returned channel, and into `log`.
fn lines(pipe: impl Read + Send + 'static, log: Arc<Mutex<Vec<String>>>, name: &'static str) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            log.lock().expect("log lock").push(format!("[{name}] {line}"));
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(rx: &Receiver<String>, timeout: Duration, pred: impl Fn(&str) -> bool, what: &str) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if pred(&line) => return line,
            Ok(_) => {}
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    }
}

/// Calls `f` until it returns `Some`, for at most `timeout`.
fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A reply to `GET`.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    greeting: String,
    requests: u64,
    generation: u64,
}

impl Reply {
    fn new(greeting: &str, requests: u64, generation: u64) -> Reply {
        Reply { greeting: greeting.to_string(), requests, generation }
    }

    /// Parses `[OK ]GREETING requests=N generation=G`.
    fn parse(line: &str) -> Reply {
        let body = line.strip_prefix("OK ").unwrap_or(line);
        let (rest, generation) =
            body.rsplit_once(" generation=").unwrap_or_else(|| panic!("no generation in {line:?}"));
        let (greeting, requests) = rest.rsplit_once(" requests=").unwrap_or_else(|| panic!("no requests in {line:?}"));
        Reply {
            greeting: greeting.to_string(),
            requests: requests.parse().unwrap_or_else(|_| panic!("bad requests in {line:?}")),
            generation: generation.trim().parse().unwrap_or_else(|_| panic!("bad generation in {line:?}")),
        }
    }
}

/// A connection that sends `GET` lines.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let stream = TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), WAIT)
            .unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
        stream.set_read_timeout(Some(WAIT)).expect("read timeout");
        let writer = stream.try_clone().expect("clone stream");
        Conn { reader: BufReader::new(stream), writer }
    }

    /// Sends `GET`; returns the raw reply line.
    fn get_raw(&mut self) -> String {
        self.writer.write_all(b"GET\n").expect("send GET");
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read reply");
        line.trim_end().to_string()
    }

    fn get(&mut self) -> Reply {
        let line = self.get_raw();
        assert!(line.starts_with("OK "), "unexpected reply {line:?}");
        Reply::parse(&line)
    }
}

/// One `GET` on a fresh connection.
fn get(port: u16) -> Reply {
    Conn::open(port).get()
}

/// One `GET` on a fresh connection, raw.
fn get_raw(port: u16) -> String {
    Conn::open(port).get_raw()
}

#[test]
fn reloads_keep_state_reject_bad_configs_and_move_the_listener() {
    let p1 = free_port();
    let ws = TempWorkspace::new(&config(p1, "hello", 8));
    let mut server = Server::start(ws.path());
    assert_eq!(server.listening(START_WAIT), SocketAddr::from((Ipv4Addr::LOCALHOST, p1)));

    // Requests count up.
    let mut served = 0;
    for _ in 0..3 {
        served += 1;
        assert_eq!(get(p1), Reply::new("hello", served, 1));
    }

    // HTTP works too, and counts.
    let mut http = TcpStream::connect((Ipv4Addr::LOCALHOST, p1)).expect("connect");
    http.set_read_timeout(Some(WAIT)).expect("read timeout");
    http.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n").expect("send");
    let mut response = String::new();
    http.read_to_string(&mut response).expect("read response");
    served += 1;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response:?}");
    let body = response.split("\r\n\r\n").nth(1).expect("body");
    assert_eq!(Reply::parse(body), Reply::new("hello", served, 1));

    // A connection that stays open across every reload below.
    let mut held = Conn::open(p1);
    served += 1;
    assert_eq!(held.get(), Reply::new("hello", served, 1));

    // A new greeting applies to new connections; the counter goes on.
    ws.write(&config(p1, "howdy", 8));
    let reply = poll(WAIT, "the new greeting", || {
        let reply = get(p1);
        served += 1;
        assert_eq!(reply.requests, served, "the request counter must survive reloads");
        (reply.greeting == "howdy").then_some(reply)
    });
    assert_eq!(reply.generation, 2);

    // An invalid config is rejected; the last good one keeps serving.
    ws.write("host = \"127.0.0.1\"\nport = 0\ngreeting = \"broken\"\n");
    let rejected = server.stderr_line("the rejection", |l| l.contains("rejected config `server`"));
    assert!(rejected.contains("server.toml:2:") && rejected.contains("port"), "{rejected}");
    served += 1;
    assert_eq!(get(p1), Reply::new("howdy", served, 2));

    // A new port: the server binds it, then stops accepting on the old one.
    let p2 = poll(WAIT, "a second free port", || Some(free_port()).filter(|&p| p != p1));
    ws.write(&config(p2, "moved", 8));
    assert_eq!(server.listening(WAIT), SocketAddr::from((Ipv4Addr::LOCALHOST, p2)));
    served += 1;
    assert_eq!(get(p2), Reply::new("moved", served, 3));
    poll(WAIT, "the old listener to close", || {
        TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, p1)), WAIT).is_err().then_some(())
    });

    // The connection accepted on the old listener still works, with the
    // config it was accepted under, and the shared counter.
    served += 1;
    assert_eq!(held.get(), Reply::new("hello", served, 1));
    drop(held);

    // An unbindable address keeps the current listener.
    let blocker = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind blocker");
    let taken = blocker.local_addr().expect("blocker addr").port();
    ws.write(&config(taken, "blocked", 8));
    server.stderr_line("the bind failure", |l| l.contains(&format!("cannot bind 127.0.0.1:{taken}")));
    served += 1;
    assert_eq!(get(p2), Reply::new("blocked", served, 4));

    // End of stdin shuts down gracefully.
    let status = server.close_stdin_and_wait();
    assert!(status.success(), "exit status {status}");
    let log = server.log();
    assert!(log.iter().any(|l| l.contains(&format!("served {served} requests"))), "{log:#?}");
}

#[test]
fn max_connections_is_resized_live() {
    let port = free_port();
    let ws = TempWorkspace::new(&config(port, "hi", 1));
    let server = Server::start(ws.path());
    server.listening(START_WAIT);

    // One slot: a second client is turned away.
    let mut a = Conn::open(port);
    a.get();
    assert_eq!(get_raw(port), "BUSY max_connections=1");

    // Two slots: room for one more.
    ws.write(&config(port, "hi", 2));
    poll(WAIT, "a second slot", || get_raw(port).starts_with("OK ").then_some(()));
    let mut b = poll(WAIT, "the second slot to be free", || {
        let mut conn = Conn::open(port);
        conn.get_raw().starts_with("OK ").then_some(conn)
    });

    // Back to one while two are in use: both keep working, newcomers wait.
    ws.write(&config(port, "hi", 1));
    server.stderr_line("the reload", |l| l.contains("config generation 3"));
    assert_eq!(get_raw(port), "BUSY max_connections=1");
    a.get();
    b.get();

    // Once both are gone there is exactly one slot again.
    drop(a);
    drop(b);
    let mut c = poll(WAIT, "a free slot", || {
        let mut conn = Conn::open(port);
        conn.get_raw().starts_with("OK ").then_some(conn)
    });
    assert_eq!(get_raw(port), "BUSY max_connections=1");
    c.get();
}
