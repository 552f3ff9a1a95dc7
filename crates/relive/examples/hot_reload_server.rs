//! A TCP server that reconfigures itself when `config/server.toml` changes,
//! without restarting and without losing its state.
//!
//! ```text
//! cargo run -p relive --example hot_reload_server -- examples/demo
//! printf 'GET\nGET\n' | nc 127.0.0.1 7878     # line protocol
//! curl http://127.0.0.1:7878/                 # or HTTP/1.x
//! ```
//!
//! Each `GET` is answered with the configured greeting, the server's request
//! counter and the config generation:
//!
//! ```text
//! OK Hello from relive! requests=3 generation=2
//! ```
//!
//! Edit `config/server.toml` while it runs:
//!
//! - `greeting` and `debug` apply to the next connection. A connection reads
//!   the config once, when it is accepted, and keeps that snapshot, so one
//!   conversation never sees two configs.
//! - `max_connections` resizes the connection limit at once. Connections
//!   above a lowered limit are not cut; they finish, and their slots are
//!   retired as they close. A client over the limit gets `BUSY`.
//! - `host` and `port` move the listener: the new address is bound first,
//!   then the old listener stops accepting; connections accepted on it
//!   finish normally. If the new address cannot be bound, the old listener
//!   keeps serving and the error is logged; the next config change retries.
//! - An invalid value (`port = 0`, `max_connections = 0`, a typo, a syntax
//!   error) is rejected with file, line and column; the last good config
//!   stays live.
//!
//! The request counter lives in the process and survives every reload.
//! Ctrl-C, or closing stdin (Ctrl-D), shuts down gracefully. Stdout carries
//! only `listening on ADDR` lines; everything else is logged on stderr.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relive::{ChangeEvent, Live, ValidationError, Workspace};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// The longest request or header line accepted, in bytes.
const MAX_LINE: u64 = 8 * 1024;
/// The most header lines read from an HTTP request.
const MAX_HEADERS: usize = 100;
/// How long an idle connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long shutdown waits for open connections before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The largest `max_connections` accepted.
const MAX_CONNECTIONS_LIMIT: usize = 100_000;

/// `config/server.toml`.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct ServerConfig {
    #[serde(default = "default_host")]
    host: String,
    port: u16,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default)]
    debug: bool,
    #[serde(default = "default_greeting")]
    greeting: String,
}

fn default_host() -> String {
    "127.0.0.1".to_string()
}

fn default_max_connections() -> usize {
    64
}

fn default_greeting() -> String {
    "Hello from relive!".to_string()
}

fn validate(config: &ServerConfig) -> Result<(), ValidationError> {
    if config.host.trim().is_empty() {
        return Err(ValidationError::at("host", "must not be empty"));
    }
    if config.port == 0 {
        return Err(ValidationError::at("port", "must not be 0 (pick a fixed port)"));
    }
    if !(1..=MAX_CONNECTIONS_LIMIT).contains(&config.max_connections) {
        return Err(ValidationError::at("max_connections", format!("must be between 1 and {MAX_CONNECTIONS_LIMIT}")));
    }
    if config.greeting.contains(['\r', '\n']) {
        return Err(ValidationError::at("greeting", "must be a single line"));
    }
    Ok(())
}

/// The names of the fields that differ, for the reload log.
fn changed_fields(old: &ServerConfig, new: &ServerConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.host != new.host {
        changed.push("host");
    }
    if old.port != new.port {
        changed.push("port");
    }
    if old.max_connections != new.max_connections {
        changed.push("max_connections");
    }
    if old.debug != new.debug {
        changed.push("debug");
    }
    if old.greeting != new.greeting {
        changed.push("greeting");
    }
    changed
}

/// What every connection shares. Nothing here is rebuilt on reload.
struct Shared {
    /// The current config, lock-free. Loaded once per connection.
    config: Live<ServerConfig>,
    /// Requests served since start: the state that must survive reloads.
    requests: AtomicU64,
    /// The config the reload loop applied last, and its generation.
    applied: Mutex<(Arc<ServerConfig>, u64)>,
    limit: Arc<ConnLimit>,
    /// Becomes true at shutdown: connections finish their request and close.
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// The generation of a snapshot from `config`. The `Live` handle is
    /// updated a moment before the reload loop hears of the value, so a
    /// snapshot it has not seen yet is the one it is about to number.
    fn generation_of(&self, snapshot: &Arc<ServerConfig>) -> u64 {
        let applied = self.applied.lock().expect("applied lock");
        if Arc::ptr_eq(&applied.0, snapshot) { applied.1 } else { applied.1 + 1 }
    }
}

/// A connection limit that can be resized while connections hold permits.
struct ConnLimit {
    semaphore: Arc<Semaphore>,
    state: Mutex<LimitState>,
}

struct LimitState {
    limit: usize,
    /// Permits to retire as they are released, after the limit was lowered
    /// below the number in use.
    debt: usize,
}

impl ConnLimit {
    fn new(limit: usize) -> Arc<ConnLimit> {
        Arc::new(ConnLimit {
            semaphore: Arc::new(Semaphore::new(limit)),
            state: Mutex::new(LimitState { limit, debt: 0 }),
        })
    }

    fn limit(&self) -> usize {
        self.state.lock().expect("limit lock").limit
    }

    fn try_acquire(self: &Arc<Self>) -> Option<ConnPermit> {
        let permit = Arc::clone(&self.semaphore).try_acquire_owned().ok()?;
        Some(ConnPermit { permit: Some(permit), limit: Arc::clone(self) })
    }

    fn resize(&self, new_limit: usize) {
        let mut state = self.state.lock().expect("limit lock");
        if new_limit >= state.limit {
            let grow = new_limit - state.limit;
            let repaid = grow.min(state.debt);
            state.debt -= repaid;
            self.semaphore.add_permits(grow - repaid);
        } else {
            let shrink = state.limit - new_limit;
            let retired = self.semaphore.forget_permits(shrink);
            state.debt += shrink - retired;
        }
        state.limit = new_limit;
    }
}

struct ConnPermit {
    permit: Option<OwnedSemaphorePermit>,
    limit: Arc<ConnLimit>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut state = self.limit.state.lock().expect("limit lock");
        let permit = self.permit.take().expect("permit present until drop");
        if state.debt > 0 {
            state.debt -= 1;
            permit.forget();
        } else {
            drop(permit);
        }
    }
}

/// An accepting listener and the task that runs it.
struct Listener {
    addr: SocketAddr,
    /// The `(host, port)` it was bound for, to tell whether a config moves it.
    bound_for: (String, u16),
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Listener {
    fn start(listener: TcpListener, bound_for: (String, u16), shared: Arc<Shared>) -> std::io::Result<Listener> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, addr, stopped, shared));
        Ok(Listener { addr, bound_for, stop: Some(stop), task })
    }

    /// Stops accepting; connections already accepted finish on their own.
    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn accept_loop(listener: TcpListener, addr: SocketAddr, mut stop: oneshot::Receiver<()>, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(stream, peer, Arc::clone(&shared)));
                }
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    eprintln!("accept on {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    // Closing the socket frees the address right away.
    drop(listener);
    if !connections.is_empty() {
        eprintln!("stopped accepting on {addr}; {} connection(s) finishing", connections.len());
    }
    while connections.join_next().await.is_some() {}
    eprintln!("listener {addr} closed");
}

async fn serve_connection(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let Some(_permit) = shared.limit.try_acquire() else {
        let message = format!("BUSY max_connections={}\n", shared.limit.limit());
        let _ = stream.write_all(message.as_bytes()).await;
        return;
    };
    // One snapshot for the whole connection.
    let config = shared.config.load_full();
    let generation = shared.generation_of(&config);
    let mut shutdown = shared.shutdown.clone();
    let (reader, mut writer) = stream.split();
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    loop {
        line.clear();
        let read = tokio::select! {
            read = tokio::time::timeout(IDLE_TIMEOUT, read_line(&mut reader, &mut line)) => read,
            _ = shutdown.wait_for(|stopping| *stopping) => break,
        };
        let request = match read {
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(e)) => {
                if config.debug {
                    eprintln!("[debug] {peer}: {e}");
                }
                let _ = writer.write_all(format!("ERR {e}\n").as_bytes()).await;
                break;
            }
        };
        if config.debug {
            eprintln!("[debug] {peer} (generation {generation}): {request:?}");
        }
        let reply = || {
            let requests = shared.requests.fetch_add(1, Ordering::Relaxed) + 1;
            format!("{} requests={requests} generation={generation}", config.greeting)
        };
        let result = if request == "GET" {
            writer.write_all(format!("OK {}\n", reply()).as_bytes()).await
        } else if request.starts_with("GET ") && request.contains(" HTTP/1.") {
            // Skip the headers, answer, close.
            let mut headers = 0;
            while let Ok(Ok(Some(header))) = tokio::time::timeout(IDLE_TIMEOUT, read_line(&mut reader, &mut line)).await
            {
                headers += 1;
                if header.is_empty() || headers > MAX_HEADERS {
                    break;
                }
            }
            let body = format!("{}\n", reply());
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = writer.write_all(response.as_bytes()).await;
            break;
        } else if request == "QUIT" {
            break;
        } else if request.is_empty() {
            Ok(())
        } else {
            writer.write_all(b"ERR unknown request; send GET\n").await
        };
        if result.is_err() {
            break;
        }
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes into `buf`, returned without
/// its line ending; `None` at end of stream.
async fn read_line<R>(reader: &mut R, buf: &mut String) -> std::io::Result<Option<String>>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    buf.clear();
    let n = reader.take(MAX_LINE).read_line(buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if !buf.ends_with('\n') && n as u64 >= MAX_LINE {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "line too long"));
    }
    Ok(Some(buf.trim_end_matches(['\r', '\n']).to_string()))
}

/// Completes when stdin reaches its end. A plain thread, so that a blocked
/// read never holds up the runtime's shutdown.
fn stdin_closed() -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = tx.send(());
    });
    rx
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let ws = match std::env::args_os().nth(1) {
        Some(dir) => Workspace::new(dir),
        None => Workspace::discover()?,
    };
    let manager = ws.start_hot_reload().await?;
    let mut events = manager.subscribe();
    let mut configs = ws.config::<ServerConfig>("server").validate(validate).watch().await?;

    let initial = configs.current_arc();
    let bound_for = (initial.host.clone(), initial.port);
    let listener = TcpListener::bind((initial.host.as_str(), initial.port))
        .await
        .map_err(|e| format!("cannot bind {}:{}: {e}", initial.host, initial.port))?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        config: configs.live(),
        requests: AtomicU64::new(0),
        applied: Mutex::new((Arc::clone(&initial), 1)),
        limit: ConnLimit::new(initial.max_connections),
        shutdown: shutdown_rx,
    });
    let mut current = Listener::start(listener, bound_for, Arc::clone(&shared))?;
    println!("listening on {}", current.addr);
    eprintln!("workspace {}; config generation 1: {initial:?}", ws.root().display());

    let mut generation = 1;
    let mut retired: Vec<Listener> = Vec::new();
    let mut events_open = true;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut stdin_closed = stdin_closed();

    loop {
        tokio::select! {
            next = configs.next() => {
                let Some(config) = next else {
                    eprintln!("hot reload engine stopped");
                    break;
                };
                let previous = {
                    let mut applied = shared.applied.lock().expect("applied lock");
                    generation += 1;
                    std::mem::replace(&mut *applied, (Arc::clone(&config), generation)).0
                };
                shared.limit.resize(config.max_connections);
                retired.retain(|l| !l.task.is_finished());
                let wanted = (config.host.clone(), config.port);
                if wanted != current.bound_for {
                    match TcpListener::bind((config.host.as_str(), config.port)).await {
                        Ok(listener) => {
                            let mut old = std::mem::replace(
                                &mut current,
                                Listener::start(listener, wanted, Arc::clone(&shared))?,
                            );
                            println!("listening on {}", current.addr);
                            old.stop();
                            retired.push(old);
                        }
                        Err(e) => eprintln!(
                            "cannot bind {}:{}: {e}; still listening on {}",
                            config.host, config.port, current.addr
                        ),
                    }
                }
                // Logged once the limit and the listener are updated: the line means
                // the reload is complete.
                eprintln!(
                    "reloaded: config generation {generation} ({} changed)",
                    changed_fields(&previous, &config).join(", ")
                );
            }
            event = events.recv(), if events_open => match event {
                Ok(ChangeEvent::ValidationFailed { config_name, error, .. }) => {
                    eprintln!("rejected config `{config_name}`: {error}; keeping generation {generation}");
                }
                Ok(ChangeEvent::ReadFailed { path, error, .. }) => {
                    eprintln!("cannot read {}: {error}", path.display());
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => eprintln!("missed {n} events"),
                Err(RecvError::Closed) => events_open = false,
            },
            signal = &mut ctrl_c => {
                if let Err(e) = signal {
                    eprintln!("cannot listen for Ctrl-C: {e}");
                }
                eprintln!("interrupted");
                break;
            }
            _ = &mut stdin_closed => {
                eprintln!("stdin closed");
                break;
            }
        }
    }

    eprintln!("shutting down");
    current.stop();
    retired.push(current);
    let _ = shutdown_tx.send(true);
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    for mut listener in retired {
        if tokio::time::timeout_at(deadline, &mut listener.task).await.is_err() {
            eprintln!("connections on {} did not finish in time; closing them", listener.addr);
            listener.task.abort();
        }
    }
    manager.shutdown().await?;
    eprintln!("served {} requests", shared.requests.load(Ordering::Relaxed));
    Ok(())
}
