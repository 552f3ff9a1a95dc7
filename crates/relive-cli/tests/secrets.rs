//! Nothing relive writes or prints holds a secret in clear: a run with a
//! SOPS-encrypted config, a `${file:...}` reference and a secret by name,
//! through `relive watch --json` with a webhook, `check`, `show`, `history`,
//! `diff` and the page `relive serve` renders with an error overlay, grepped
//! for each secret's clear text.

// The harness (tests/common) stops relive with SIGTERM and watches its
// processes with kill(2): Unix's. On Windows the CLI is type-checked in CI.
#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;

use common::{TIMEOUT, Ws};

/// Secrets, each unique enough that finding it anywhere is a leak.
const SOPS_1: &str = "qx-sops-first-9931";
const SOPS_2: &str = "qx-sops-second-2717";
const REFERENCED: &str = "qx-referenced-4402";
const BY_NAME: &str = "qx-by-name-6158";

fn binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not on PATH: run scripts/install-deps (it installs age and sops)"))
}

/// An `age-keygen` key at `file`; returns its recipient.
fn keygen(file: &Path) -> String {
    let out = Command::new(binary("age-keygen")).arg("-o").arg(file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(file).unwrap();
    text.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_owned()
}

fn encrypt(plain: &str, recipient: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("db.yaml"), plain).unwrap();
    let out = Command::new(binary("sops"))
        .current_dir(dir.path())
        .env("SOPS_DISABLE_VERSION_CHECK", "1")
        .env("XDG_CONFIG_HOME", dir.path().join("none"))
        .args(["encrypt", "--age", recipient, "db.yaml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// An HTTP server that answers 200 and sends each request body to the test.
fn webhook_server() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim_end().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = write!(stream, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if tx.send(String::from_utf8_lossy(&body).into_owned()).is_err() {
                break;
            }
        }
    });
    (url, rx)
}

/// A raw HTTP GET; the whole response.
fn get(addr: &str, target: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(stream, "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

/// Every file under `dir`, as text.
fn files_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
    }
    out
}

#[test]
fn no_secret_is_written_or_printed_in_clear() {
    let ws = Ws::new();
    let recipient = keygen(&ws.path("age.txt"));
    ws.write("relive.toml", "[secrets]\nage_key_files = [\"age.txt\"]\n");
    ws.write("config/db.yaml", &encrypt(&format!("host: db\nopaque: {SOPS_1}\n"), &recipient));
    ws.write("secret.txt", &format!("{REFERENCED}\n"));
    ws.write("config/app.toml", &format!("port = 1\nlink = \"${{file:../secret.txt}}\"\napi_token = \"{BY_NAME}\"\n"));
    // A schema that the secrets break: its messages quote the value.
    ws.write(
        "config/app.schema.json",
        r#"{"properties": {"link": {"minLength": 100}, "api_token": {"pattern": "^sk_live_"}, "port": {"type": "integer"}}}"#,
    );
    ws.write("templates/index.html", "<p>{{ db.host }} {{ nope | no_such_filter }}</p>\n");
    let mut printed = String::new();

    let (url, hooks) = webhook_server();
    let mut watch = ws.watch(&["--webhook", &url]);
    ws.write("config/db.yaml", &encrypt(&format!("host: db2\nopaque: {SOPS_2}\n"), &recipient));
    let changed = watch.wait_kind("config_changed", "db");
    assert_eq!(changed["new"]["opaque"], "[redacted]", "{changed}");
    ws.write("config/app.toml", &format!("port = 2\nlink = \"${{file:../secret.txt}}\"\napi_token = \"{BY_NAME}\"\n"));
    watch.wait_kind("validation_failed", "app");
    let mut bodies = Vec::new();
    while let Ok(body) = hooks.recv_timeout(std::time::Duration::from_secs(2)) {
        bodies.push(body);
    }
    assert!(!bodies.is_empty(), "the webhook was called");
    assert_eq!(watch.terminate(), 0);
    printed.push_str(&watch.all_output());

    for args in [
        &["check"][..],
        &["show", "db"],
        &["show", "app"],
        &["show", "db", "--json"],
        &["history", "db"],
        &["history", "app", "--json"],
        &["diff", "db", "1", "2"],
    ] {
        let run = ws.run(args);
        printed.push_str(&format!("{args:?}\n{}\n{}\n", run.stdout(), run.stderr()));
    }
    assert!(printed.contains("[redacted]"), "{printed}");

    // `relive serve`: the page with its error overlay, and what it prints.
    let mut serve = ws
        .relive(&["serve", "--port", "0", "--livereload-port", "0", "."])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(serve.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let addr = first.trim().strip_prefix("serving http://").unwrap_or_else(|| panic!("{first}")).to_string();
    let page = get(&addr, "/");
    assert!(page.contains("no_such_filter"), "the error overlay: {page}");
    common::signal(serve.id(), rustix::process::Signal::TERM);
    let out = serve.wait_with_output().unwrap();
    printed.push_str(&String::from_utf8_lossy(&out.stderr));

    assert!(printed.contains("~ /opaque: \"[redacted]\" -> \"[redacted]\""), "diff of SOPS versions: {printed}");
    let mut leaks = Vec::new();
    let mut haystacks: Vec<(String, String)> =
        vec![("printed".into(), printed), ("page".into(), page), ("webhooks".into(), bodies.join("\n"))];
    haystacks.extend(files_under(&ws.path("data")).into_iter().map(|(p, t)| (p.display().to_string(), t)));
    for (what, text) in &haystacks {
        // A secret written in clear in a config file is stored as written
        // (history keeps files as they are on disk, in private files): to
        // keep it out of `data/`, encrypt it or reference it.
        let secrets: &[&str] = if what.contains("/data/") {
            &[SOPS_1, SOPS_2, REFERENCED]
        } else {
            &[SOPS_1, SOPS_2, REFERENCED, BY_NAME]
        };
        for &secret in secrets {
            if text.contains(secret) {
                leaks.push(format!("{secret} in {what}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets in clear: {leaks:#?}\n{haystacks:#?}");
    // History has the files as they are: the SOPS file encrypted.
    assert!(haystacks.iter().any(|(_, t)| t.contains("ENC[AES256_GCM,")), "history keeps the encrypted file");
}
