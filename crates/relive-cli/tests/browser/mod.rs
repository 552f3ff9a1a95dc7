//! `relive serve` and a real headless Chromium to look at it, for the end to
//! end tests (`tests/serve_e2e.rs`), the HTTP tests (`tests/serve_http.rs`)
//! and the latency bench (`benches/browser.rs`, which includes this file by
//! path).
//!
//! The browser is driven over the W3C WebDriver HTTP API (chromedriver,
//! Debian's `chromium` and `chromium-driver`; run `scripts/install-deps`).
//! Every wait polls with a deadline; the server, chromedriver and the
//! browser are stopped when dropped.
//!
//! Latency is measured in the page, not by polling from outside: a probe
//! script (installed in every document before the page's own scripts, over
//! the DevTools protocol) records `Date.now()` at the first moment a
//! condition holds, checked on every DOM mutation, every resource load and
//! every animation frame, and keeps it in `sessionStorage` so that it
//! survives a reload. The test process takes its own timestamp from the same
//! system clock just before it saves a file, so WebDriver's round trips are
//! not in the figure.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
#[cfg(unix)]
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// How long any single wait may take.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The layout every page extends: the site's title and the stylesheet.
pub const BASE_HTML: &str = r#"<!doctype html>
<html><head><title>{{ site.title }}</title>
<link rel="stylesheet" href="{{ static_url('app.css') }}"></head>
<body>{% block content %}{% endblock %}</body></html>
"#;

/// `templates/index.html` with heading `heading` (then the site's title).
pub fn index(heading: &str) -> String {
    format!(
        "{{% extends 'base.html' %}}{{% block content %}}<h1 id=\"title\">{heading} {{{{ site.title }}}}</h1>{{% endblock %}}\n"
    )
}

/// `static/app.css` giving the body the background `rgb`.
pub fn stylesheet(rgb: (u8, u8, u8)) -> String {
    format!("body {{ background-color: rgb({}, {}, {}); }}\n", rgb.0, rgb.1, rgb.2)
}

/// The page's computed background, as `rgb(r, g, b)`.
pub const BACKGROUND: &str = "getComputedStyle(document.body).backgroundColor";
/// The page's heading text.
pub const TITLE: &str = "(document.getElementById('title') || {}).textContent";
/// Whether the error overlay is up.
pub const OVERLAY_SHOWN: &str = "document.getElementById('relive-error-overlay') !== null";

/// Milliseconds since the Unix epoch, on the clock `Date.now()` reads.
pub fn epoch_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs_f64() * 1e3
}

/// A temp workspace: one config, a layout and a page, a stylesheet.
pub struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    /// `config/site.toml` (title "Demo"), `templates/base.html`,
    /// `templates/index.html` ("Version 1"), a red `static/app.css`.
    pub fn new() -> Workspace {
        let ws = Workspace { dir: tempfile::tempdir().expect("temp dir") };
        ws.write("config/site.toml", "title = \"Demo\"\n");
        ws.write("templates/base.html", BASE_HTML);
        ws.write("templates/index.html", &index("Version 1"));
        ws.write("static/app.css", &stylesheet((255, 0, 0)));
        ws
    }

    /// A copy of the workspace at `dir` (its `data/` left out).
    pub fn copy_of(dir: &std::path::Path) -> Workspace {
        fn copy(from: &std::path::Path, to: &std::path::Path) {
            std::fs::create_dir_all(to).expect("mkdir");
            for entry in std::fs::read_dir(from).expect("read_dir").map(|e| e.expect("entry")) {
                let target = to.join(entry.file_name());
                if !entry.file_type().expect("file type").is_dir() {
                    std::fs::copy(entry.path(), target).expect("copy");
                } else if entry.file_name() != "data" {
                    copy(&entry.path(), &target);
                }
            }
        }
        let ws = Workspace { dir: tempfile::tempdir().expect("temp dir") };
        copy(dir, ws.root());
        ws
    }

    /// The workspace directory.
    pub fn root(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes `rel` atomically, as editors do (a hidden temp file renamed
    /// over it); returns the moment of the save ([`epoch_ms`], just before the
    /// rename).
    pub fn write(&self, rel: &str, text: &str) -> f64 {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        // Hidden, as many editors name theirs: not an asset nor a template.
        let name = path.file_name().expect("a file name").to_string_lossy();
        let tmp = path.with_file_name(format!(".{name}.relive-test-tmp"));
        std::fs::write(&tmp, text).expect("write");
        let saved = epoch_ms();
        std::fs::rename(&tmp, &path).expect("rename");
        saved
    }

    /// Removes `rel`.
    pub fn remove(&self, rel: &str) {
        std::fs::remove_file(self.dir.path().join(rel)).expect("remove");
    }
}

/// A child in its own process group, killed (the whole group) on drop.
pub struct Group(pub Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0.id())]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` in a process group of its own (Unix's; on Windows, where
/// the benchmark is type-checked, not run, only the child is killed).
pub fn spawn_group(cmd: &mut Command) -> Group {
    #[cfg(unix)]
    cmd.process_group(0);
    Group(cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")))
}

/// Text a thread keeps appending to (a child's output).
type Shared = std::sync::Arc<std::sync::Mutex<String>>;

/// A running `relive serve`.
pub struct Server {
    /// `http://ADDR`, as it printed.
    pub url: String,
    /// What it wrote to stdout after its first line, read on a thread.
    stdout: Shared,
    /// What it wrote to stderr so far (warnings), read on a thread.
    stderr: Shared,
    _child: Group,
}

impl Server {
    /// `host:port`, for raw TCP.
    pub fn addr(&self) -> &str {
        self.url.strip_prefix("http://").expect("an http URL")
    }

    /// Waits until stderr contains `needle`; returns all of it.
    pub fn wait_for_stderr(&self, needle: &str) -> String {
        wait_for_text(&self.stderr, "stderr", needle)
    }

    /// Waits until stdout (after the first line) contains `needle`;
    /// returns all of it.
    pub fn wait_for_stdout(&self, needle: &str) -> String {
        wait_for_text(&self.stdout, "stdout", needle)
    }

    /// The LiveReload port's `host:port`, from the line that follows
    /// `serving http://ADDR` (only with `--livereload-port P`).
    pub fn livereload_addr(&self) -> String {
        let text = self.wait_for_stdout("livereload http://");
        let line = text.lines().find(|l| l.starts_with("livereload http://")).expect("the livereload line");
        line["livereload http://".len()..].split_whitespace().next().expect("an address").to_string()
    }
}

fn wait_for_text(text: &Shared, what: &str, needle: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = text.lock().expect("output lock").clone();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "relive serve did not print {needle:?}; {what}: {text}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `relive serve --port 0 --livereload-port 0 DIR` and the address it
/// printed on its first line.
pub fn serve(ws: &Workspace) -> Server {
    serve_with(ws, &[])
}

/// `relive serve --port 0 ARGS DIR`, with `--livereload-port 0` unless
/// `ARGS` has a `--livereload-port` (tests run in parallel: they must not
/// all try the extensions' port 35729).
pub fn serve_with(ws: &Workspace, args: &[&str]) -> Server {
    let own_port = args.iter().any(|a| a.starts_with("--livereload-port"));
    let mut child = spawn_group(
        Command::new(env!("CARGO_BIN_EXE_relive"))
            .args(["serve", "--port", "0"])
            .args(if own_port { &[][..] } else { &["--livereload-port", "0"][..] })
            .args(args)
            .arg(ws.root())
            .env_remove("RELIVE_ENV")
            .env_remove("RELIVE_WORKSPACE")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let rest = Shared::default();
    let sink = rest.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep reading, so that the server never writes into a closed pipe.
        let mut line = String::new();
        while let Ok(1..) = reader.read_line(&mut line) {
            sink.lock().expect("stdout lock").push_str(&std::mem::take(&mut line));
        }
    });
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut pipe = child.0.stderr.take().expect("stderr");
    let sink = stderr.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut chunk) {
            let text = String::from_utf8_lossy(&chunk[..n]);
            eprint!("{text}");
            sink.lock().expect("stderr lock").push_str(&text);
        }
    });
    let line = rx.recv_timeout(TIMEOUT).expect("relive serve prints its address");
    let url = line.trim().strip_prefix("serving ").unwrap_or_else(|| panic!("first line: {line:?}")).to_string();
    Server { url, stdout: rest, stderr, _child: child }
}

/// A port nothing listens on now, on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Runs in every document before its own scripts (see the module docs).
/// `sessionStorage['relive-probe']` holds the condition, a JS expression;
/// the probe writes `relive-probe-at` (when it first held),
/// `relive-probe-frame` (the animation frame after that: the change is
/// painted), `relive-probe-message` (when the page first received a live
/// reload message after arming) and, in a page that loaded meanwhile,
/// `relive-probe-nav` (its navigation start and response end). Every
/// WebSocket the page opens is in `window.__reliveProbeSockets`.
const PROBE_JS: &str = r#"
(function () {
  var store;
  try { store = window.sessionStorage; } catch (e) { return; }
  if (!store) return;
  function record(key) { if (store.getItem(key) === null) store.setItem(key, String(Date.now())); }
  var Ws = window.WebSocket;
  if (Ws && !Ws.__reliveProbe) {
    var Wrapped = function (url, protocols) {
      var socket = protocols === undefined ? new Ws(url) : new Ws(url, protocols);
      (window.__reliveProbeSockets = window.__reliveProbeSockets || []).push(socket);
      socket.addEventListener("message", function (event) {
        if (store.getItem("relive-probe") !== null && String(event.data).indexOf('"hello"') < 0) {
          record("relive-probe-message");
        }
      });
      return socket;
    };
    Wrapped.prototype = Ws.prototype;
    Wrapped.__reliveProbe = true;
    ["CONNECTING", "OPEN", "CLOSING", "CLOSED"].forEach(function (k) { Wrapped[k] = Ws[k]; });
    window.WebSocket = Wrapped;
  }
  window.__reliveProbe = function () {
    var condition = store.getItem("relive-probe");
    if (condition === null) return;
    var check = new Function("return (" + condition + ");");
    var done = false;
    var observer;
    function test() {
      if (done || store.getItem("relive-probe") !== condition) return;
      var ok = false;
      try { ok = check() === true; } catch (e) { ok = false; }
      if (!ok) return;
      done = true;
      record("relive-probe-at");
      var nav = performance.getEntriesByType("navigation")[0];
      if (nav && store.getItem("relive-probe-nav") === null && performance.timeOrigin > Number(store.getItem("relive-probe-armed"))) {
        store.setItem("relive-probe-nav", JSON.stringify({
          start: performance.timeOrigin,
          response: performance.timeOrigin + nav.responseEnd,
        }));
      }
      requestAnimationFrame(function () { record("relive-probe-frame"); });
      if (observer) observer.disconnect();
    }
    observer = new MutationObserver(test);
    observer.observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
    document.addEventListener("load", test, true);
    (function frame() {
      if (done || store.getItem("relive-probe") !== condition) return;
      test();
      requestAnimationFrame(frame);
    })();
  };
  window.__reliveProbe();
})();
"#;

/// When a change was seen in the page (epoch ms); see [`Browser::arm`].
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// The condition first held (the DOM or the computed style has the change).
    pub at: f64,
    /// The animation frame after that one: the change is on screen.
    pub frame: f64,
    /// The page received a live reload message (the old page, for a reload).
    pub message: Option<f64>,
    /// For a reload: the new page's navigation started.
    pub navigation: Option<f64>,
    /// For a reload: the new page's HTML was in.
    pub response: Option<f64>,
}

/// A headless Chromium session through chromedriver.
pub struct Browser {
    agent: ureq::Agent,
    session: String,
    _profile: tempfile::TempDir,
    // Dropped after the session is deleted (`Drop` below), then killed.
    _driver: Group,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with the probe installed.
    pub fn start() -> Browser {
        Browser::start_with(&[])
    }

    /// [`start`](Browser::start), with more Chromium command-line `args`.
    pub fn start_with(args: &[&str]) -> Browser {
        let port = free_port();
        let driver = spawn_group(
            Command::new("chromedriver").arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()),
        );
        let base = format!("http://127.0.0.1:{port}");
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(TIMEOUT)).build().into();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let ready = agent
                .get(format!("{base}/status"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|body| serde_json::from_str::<Value>(&body).ok())
                .is_some_and(|v| v["value"]["ready"] == json!(true));
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready within {TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let chromium = which("chromium");
        let mut chromium_args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
        ]
        .iter()
        .chain(args)
        .map(|a| a.to_string())
        .collect();
        chromium_args.push(format!("--user-data-dir={}", profile.path().display()));
        let caps = json!({ "capabilities": { "alwaysMatch": { "goog:chromeOptions": {
            "binary": chromium,
            "args": chromium_args,
        }}}});
        let created = request(&agent, "POST", &format!("{base}/session"), Some(caps));
        let session = created["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}")).to_string();
        let browser =
            Browser { agent, session: format!("{base}/session/{session}"), _profile: profile, _driver: driver };
        browser
            .call(
                "POST",
                "/goog/cdp/execute",
                Some(json!({ "cmd": "Page.addScriptToEvaluateOnNewDocument", "params": { "source": PROBE_JS } })),
            )
            .unwrap_or_else(|e| panic!("install the probe: {e}"));
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let value = request(&self.agent, method, &format!("{}{path}", self.session), body);
        match value.get("error") {
            Some(_) => Err(value),
            None => Ok(value),
        }
    }

    /// Navigates to `url`.
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
    }

    /// Runs `script` (a function body) in the page.
    pub fn run(&self, script: &str) -> Result<Value, Value> {
        self.call("POST", "/execute/sync", Some(json!({ "script": script, "args": [] })))
    }

    /// Polls `script` until it returns `true`; errors (a page that is
    /// reloading) count as not yet. Returns how long it took.
    pub fn wait_for(&self, what: &str, script: &str) -> Duration {
        let start = Instant::now();
        loop {
            let last = self.run(script);
            if matches!(&last, Ok(v) if v == &json!(true)) {
                return start.elapsed();
            }
            if start.elapsed() > TIMEOUT {
                let page = self.run("return document.documentElement.outerHTML");
                panic!("timed out waiting for {what} ({script}); last: {last:?}; page: {page:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Opens `url` and waits until the live reload client is connected.
    pub fn open(&self, url: &str) {
        self.goto(url);
        self.wait_connected();
    }

    /// Waits until the live reload client is connected (again).
    pub fn wait_connected(&self) {
        self.wait_for("the live reload client to connect", "return window.__reliveConnected === true");
    }

    /// The value of JS `expression` in the page.
    pub fn eval(&self, expression: &str) -> Value {
        self.run(&format!("return {expression}")).unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    /// Arms the probe: from now on, in this page and in any page that
    /// replaces it, the first moment JS `condition` is true is recorded.
    /// `condition` must be false now. Read it with [`seen`](Browser::seen).
    pub fn arm(&self, condition: &str) {
        let script = format!(
            "for (const k of ['relive-probe-at', 'relive-probe-frame', 'relive-probe-message', 'relive-probe-nav']) \
               sessionStorage.removeItem(k); \
             if ({condition}) return 'already true'; \
             sessionStorage.setItem('relive-probe-armed', String(Date.now())); \
             sessionStorage.setItem('relive-probe', {cond}); \
             window.__reliveProbe(); return true;",
            cond = json!(condition)
        );
        let armed = self.run(&script).unwrap_or_else(|e| panic!("arm the probe: {e}"));
        assert_eq!(armed, json!(true), "arming the probe for {condition}");
    }

    /// Waits for the armed condition to hold and to be painted; returns when.
    pub fn seen(&self, what: &str) -> Seen {
        self.wait_for(what, "return sessionStorage.getItem('relive-probe-frame') !== null");
        let value = self.eval(
            "{ at: sessionStorage.getItem('relive-probe-at'), frame: sessionStorage.getItem('relive-probe-frame'), \
               message: sessionStorage.getItem('relive-probe-message'), nav: sessionStorage.getItem('relive-probe-nav') }",
        );
        self.run("sessionStorage.removeItem('relive-probe')").expect("disarm the probe");
        let number = |v: &Value| v.as_str().and_then(|s| s.parse::<f64>().ok());
        let nav: Option<Value> = value["nav"].as_str().and_then(|s| serde_json::from_str(s).ok());
        Seen {
            at: number(&value["at"]).expect("probe time"),
            frame: number(&value["frame"]).expect("probe frame time"),
            message: number(&value["message"]),
            navigation: nav.as_ref().and_then(|n| n["start"].as_f64()),
            response: nav.as_ref().and_then(|n| n["response"].as_f64()),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closes Chromium; chromedriver's process group is killed after.
        let _ = request(&self.agent, "DELETE", &self.session, None);
    }
}

fn request(agent: &ureq::Agent, method: &str, url: &str, body: Option<Value>) -> Value {
    let response = match method {
        "POST" => agent
            .post(url)
            .header("content-type", "application/json")
            .send(body.unwrap_or_else(|| json!({})).to_string()),
        "DELETE" => agent.delete(url).call(),
        _ => agent.get(url).call(),
    };
    let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let text = response.body_mut().read_to_string().unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let parsed: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {url}: {e}: {text}"));
    parsed["value"].clone()
}

fn which(program: &str) -> String {
    let out = Command::new("sh").args(["-c", &format!("command -v {program}")]).output().expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "{program} is not installed; run scripts/install-deps (Debian's chromium, chromium-driver)"
    );
    path
}
