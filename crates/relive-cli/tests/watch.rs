//! `relive watch`: events as JSON lines, `--exec`, `--webhook` and
//! `--metrics-addr`, against the real binary.

// The harness (tests/common) stops relive with SIGTERM and watches its
// processes with kill(2): Unix's. On Windows the CLI is type-checked in CI.
#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use common::{TIMEOUT, Ws, alive, wait_until};

#[test]
fn watch_prints_changes_and_rejections_as_json_lines() {
    let ws = Ws::new();
    ws.write("config/app.toml", "port = 8080\npassword = \"hunter2\"\n");
    ws.write("config/app.schema.json", r#"{"properties": {"port": {"type": "integer", "maximum": 65535}}}"#);
    let mut watch = ws.watch(&[]);

    ws.write("config/app.toml", "port = 9090\npassword = \"hunter3\"\n");
    let changed = watch.wait_kind("config_changed", "app");
    assert_eq!(changed["new"]["port"], 9090);
    assert_eq!(changed["old"]["port"], 8080);
    assert_eq!(changed["new"]["password"], "[redacted]", "secrets are redacted: {changed}");
    assert!(changed["path"].as_str().unwrap().ends_with("config/app.toml"));
    let completed = watch.wait_kind("reload_completed", "app");
    assert!(completed["duration_ms"].as_f64().unwrap() >= 0.0);

    // A schema violation is a rejection, located at the key.
    ws.write("config/app.toml", "# bigger\nport = 99999\n");
    let failed = watch.wait_kind("validation_failed", "app");
    assert_eq!(failed["key"], "port");
    assert_eq!((failed["line"].as_u64(), failed["column"].as_u64()), (Some(2), Some(1)));
    assert_eq!(failed["error"], "99999 is greater than the maximum of 65535");

    // So is a syntax error.
    ws.write("config/app.toml", "port = [\n");
    let failed = watch.wait_kind("validation_failed", "app");
    assert_eq!(failed["location"], "config/app.toml:1:9: unclosed array, expected `]`");
    assert_eq!(watch.terminate(), 0);
}

/// The lines `$$ $RELIVE_CONFIG` that each start of the program appended.
fn starts(ws: &Ws) -> Vec<String> {
    ws.read("starts.txt").lines().map(str::to_string).collect()
}

#[test]
fn exec_restarts_the_program_only_after_a_valid_change() {
    let ws = Ws::new();
    ws.write("config/app.toml", "port = 1\n");
    ws.write("config/other.toml", "x = 1\n");
    let script = "echo \"$$ $RELIVE_CONFIG\" >> starts.txt; exec sleep 600";
    let mut watch = ws.watch(&["--exec", script, "--grace-ms", "2000"]);
    wait_until("first start", || starts(&ws).len() == 1);
    let first_pid: u32 = starts(&ws)[0].split(' ').next().unwrap().parse().unwrap();
    assert!(alive(first_pid));

    ws.write("config/app.toml", "port = 2\n");
    watch.wait_kind("config_changed", "app");
    wait_until("restart after a valid change", || starts(&ws).len() == 2);
    assert!(starts(&ws)[1].ends_with(" app"), "RELIVE_CONFIG names the config: {:?}", starts(&ws));
    wait_until("the first program to be gone", || !alive(first_pid));

    // An invalid change is reported and does not restart the program. The
    // change to `other` after it is the next restart, and the only one.
    ws.write("config/app.toml", "port = \n");
    watch.wait_kind("validation_failed", "app");
    ws.write("config/other.toml", "x = 2\n");
    watch.wait_kind("config_changed", "other");
    wait_until("restart after the next valid change", || starts(&ws).len() >= 3);
    let all = starts(&ws);
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(all[2].ends_with(" other"), "{all:?}");

    // SIGTERM to relive stops the program too.
    let last_pid: u32 = all[2].split(' ').next().unwrap().parse().unwrap();
    assert!(alive(last_pid));
    assert_eq!(watch.terminate(), 0);
    wait_until("the program to be stopped with relive", || !alive(last_pid));
}

#[test]
fn exec_with_signal_signals_instead_of_restarting() {
    let ws = Ws::new();
    ws.write("config/app.yaml", "level: info\n");
    let script = "trap 'echo \"$RELIVE_CONFIG\" >> signals.txt' USR1; echo \"$$\" >> starts.txt; \
                  while :; do sleep 0.05; done";
    let mut watch = ws.watch(&["--exec", script, "--signal", "USR1", "--no-history"]);
    wait_until("first start", || starts(&ws).len() == 1);
    ws.write("config/app.yaml", "level: debug\n");
    watch.wait_kind("config_changed", "app");
    wait_until("the signal to be handled", || ws.read("signals.txt").lines().count() == 1);
    assert_eq!(starts(&ws).len(), 1, "signalled, not restarted");
    assert!(!ws.path("data/history").exists(), "--no-history records nothing");
    assert_eq!(watch.terminate(), 0);
}

/// A tiny HTTP server: answers the first request 500 and every other 200,
/// and sends each request body to the test.
fn webhook_server() -> (String, mpsc::Receiver<(u16, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/-/reload", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { break };
            let status = if n == 0 { 500 } else { 200 };
            let Some(body) = read_request(&stream) else { continue };
            let mut stream = stream;
            let reason = if status == 200 { "OK" } else { "Internal Server Error" };
            let _ = write!(stream, "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if tx.send((status, body)).is_err() {
                break;
            }
        }
    });
    (url, rx)
}

fn read_request(stream: &TcpStream) -> Option<String> {
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    assert!(request_line.starts_with("POST /-/reload "), "{request_line}");
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    String::from_utf8(body).ok()
}

#[test]
fn webhook_delivers_every_event_and_retries_a_failure() {
    let (url, requests) = webhook_server();
    let ws = Ws::new();
    ws.write("config/app.toml", "port = 1\n");
    let mut watch = ws.watch(&["--webhook", &url, "--webhook-backoff-ms", "20"]);
    ws.write("config/app.toml", "port = 2\n");
    watch.wait_kind("config_changed", "app");

    let mut received = Vec::new();
    while !received.iter().any(|(_, b): &(u16, String)| b.contains("\"kind\":\"config_changed\"")) {
        received.push(requests.recv_timeout(TIMEOUT).expect("a webhook request"));
    }
    // The first delivery failed with 500 and the same event came again.
    assert_eq!(received[0].0, 500);
    assert_eq!(received[1].0, 200);
    assert_eq!(received[0].1, received[1].1, "the retry carries the same event");
    let first: serde_json::Value = serde_json::from_str(&received[0].1).unwrap();
    assert_eq!(first["kind"], "file_changed");
    let changed: serde_json::Value = serde_json::from_str(&received.last().unwrap().1).unwrap();
    assert_eq!((changed["config"].as_str(), changed["new"]["port"].as_i64()), (Some("app"), Some(2)));
}

#[test]
fn metrics_are_served_where_asked() {
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().unwrap().port()
    };
    let ws = Ws::new();
    ws.write("config/app.toml", "port = 1\n");
    let addr = format!("127.0.0.1:{port}");
    let mut watch = ws.watch(&["--metrics-addr", &addr]);
    ws.write("config/app.toml", "port = 2\n");
    watch.wait_kind("config_changed", "app");
    ws.write("config/app.toml", "port = \n");
    watch.wait_kind("validation_failed", "app");

    let mut body = String::new();
    wait_until("metrics with the reloads", || {
        body = scrape(&addr);
        body.contains("relive_reloads_total{config=\"app\",result=\"rejected\"} 1")
    });
    assert!(body.contains("relive_reloads_total{config=\"app\",result=\"applied\"}"), "{body}");
    assert!(body.contains("relive_versions_applied_total{config=\"app\"} 1"), "{body}");
    assert!(body.contains("relive_reload_duration_seconds_bucket"), "{body}");
    assert!(body.contains("relive_events_total{kind=\"validation_failed\"} 1"), "{body}");
}

fn scrape(addr: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(addr) else { return String::new() };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(stream, "GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// Runs `relive watch --json` on `ws` with `env` (and neither RELIVE_LOG
/// nor RUST_LOG otherwise) until it has seen `config/app.toml` become
/// `text`, stops it, and returns its stderr. A clean stop joins the
/// library's threads, so every log event is in it.
fn watch_once(ws: &Ws, env: &[(&str, &str)], text: &str, kind: &str) -> String {
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut command = ws.relive(&["watch", "--json"]);
    command.env_remove("RELIVE_LOG").env_remove("RUST_LOG").envs(env.iter().copied());
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .expect("spawn relive watch");
    let (tx, stdout) = mpsc::channel();
    let pipe = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(std::result::Result::ok) {
            let _ = tx.send(line);
        }
    });
    let log = || std::fs::read_to_string(stderr.path()).unwrap_or_default();
    wait_until("relive to watch", || log().contains("relive: watching "));
    ws.write("config/app.toml", text);
    loop {
        let line = stdout.recv_timeout(TIMEOUT).unwrap_or_else(|_| panic!("no {kind} event; stderr: {}", log()));
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
        if event["kind"] == kind {
            break;
        }
    }
    common::signal(child.id(), rustix::process::Signal::TERM);
    let (tx, exited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = exited.recv_timeout(TIMEOUT).expect("relive to exit after SIGTERM").unwrap();
    assert_eq!(status.code(), Some(0), "{}", log());
    // Everything on stdout was JSON (checked above), logs included.
    while let Ok(line) = stdout.try_recv() {
        assert!(serde_json::from_str::<serde_json::Value>(&line).is_ok(), "not JSON on stdout: {line}");
    }
    log()
}

#[test]
fn library_warnings_are_shown_on_stderr_unless_relive_log_hides_them() {
    let ws = Ws::new();
    ws.write("config/app.toml", "port = 1\n");
    // This one holds the history lock once it has recorded a version.
    let mut first = ws.watch(&[]);
    ws.write("config/app.toml", "port = 2\n");
    first.wait_kind("config_changed", "app");
    wait_until("the first watcher to record", || ws.run(&["history", "app"]).stdout().contains("applied"));

    let locked = "relive: warning: another engine records history for this workspace; this one does not (dir=";
    let stderr = watch_once(&ws, &[], "port = 3\n", "config_changed");
    assert!(stderr.contains(locked), "warnings are shown by default: {stderr}");
    let stderr = watch_once(&ws, &[("RELIVE_LOG", "error")], "port = 4\n", "config_changed");
    assert!(!stderr.contains("another engine"), "RELIVE_LOG=error hides warnings: {stderr}");
    let stderr = watch_once(&ws, &[("RUST_LOG", "error")], "port = 5\n", "config_changed");
    assert!(!stderr.contains("another engine"), "so does RUST_LOG: {stderr}");
    let stderr = watch_once(&ws, &[("RELIVE_LOG", "warn"), ("RUST_LOG", "error")], "port = 6\n", "config_changed");
    assert!(stderr.contains(locked), "RELIVE_LOG comes first: {stderr}");
    let stderr = watch_once(&ws, &[("RELIVE_LOG", "no=such=filter")], "port = 7\n", "config_changed");
    assert!(stderr.contains("relive: warning: RELIVE_LOG: `no=such=filter` is not a log filter"), "{stderr}");
    assert!(stderr.contains(locked), "a bad filter falls back to warnings: {stderr}");
    assert_eq!(first.terminate(), 0);
}

#[test]
fn a_rejection_is_told_once_unless_the_library_log_is_asked_for() {
    let ws = Ws::new();
    ws.write("config/app.toml", "port = 1\n");
    let rejected = "config rejected; keeping the last good value";
    // The validation_failed event says it; the library's warning would say
    // it again.
    let stderr = watch_once(&ws, &[], "port = [\n", "validation_failed");
    assert!(!stderr.contains(rejected), "{stderr}");
    ws.write("config/app.toml", "port = 1\n");
    let stderr = watch_once(&ws, &[("RELIVE_LOG", "warn")], "port = [\n", "validation_failed");
    assert!(stderr.contains(&format!("relive: warning: {rejected} (config=app, error=")), "{stderr}");
}
