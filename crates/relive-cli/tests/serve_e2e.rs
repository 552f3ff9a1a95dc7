//! `relive serve` end to end, in real headless Chromium: the real binary on
//! 127.0.0.1:0 against a temp workspace, driven over the W3C WebDriver HTTP
//! API (chromedriver, Debian's `chromium` and `chromium-driver`; run
//! `scripts/install-deps`). Every wait polls with a deadline; the server,
//! chromedriver and the browser are stopped when dropped.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long any single wait may take.
const TIMEOUT: Duration = Duration::from_secs(20);

const PAGE: &str = r#"<!doctype html>
<html><head><title>{{ site.title }}</title>
<link rel="stylesheet" href="{{ static_url('app.css') }}"></head>
<body>{% block content %}{% endblock %}</body></html>
"#;

fn index(heading: &str) -> String {
    format!(
        "{{% extends 'base.html' %}}{{% block content %}}<h1 id=\"title\">{heading} {{{{ site.title }}}}</h1>{{% endblock %}}\n"
    )
}

/// A temp copy of a small workspace: one config, a layout and a page, a stylesheet.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        let ws = Workspace { dir: tempfile::tempdir().expect("temp dir") };
        ws.write("config/site.toml", "title = \"Demo\"\n");
        ws.write("templates/base.html", PAGE);
        ws.write("templates/index.html", &index("Version 1"));
        ws.write("static/app.css", "body { background-color: rgb(255, 0, 0); }\n");
        ws
    }

    /// Writes `rel` atomically, as editors do.
    fn write(&self, rel: &str, text: &str) {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let tmp = path.with_extension("relive-test-tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
    }
}

/// A child in its own process group, killed (the whole group) on drop.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0.id())]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_group(cmd: &mut Command) -> Group {
    Group(cmd.process_group(0).spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")))
}

/// `relive serve` on 127.0.0.1:0 and the address it printed.
fn serve(ws: &Workspace) -> (Group, String) {
    let mut child = spawn_group(
        Command::new(env!("CARGO_BIN_EXE_relive"))
            .args(["serve", "--port", "0"])
            .arg(ws.dir.path())
            .env_remove("RELIVE_ENV")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(TIMEOUT).expect("relive serve prints its address");
    let url = line.trim().strip_prefix("serving ").unwrap_or_else(|| panic!("first line: {line:?}")).to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    (child, url)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A headless Chromium session through chromedriver.
struct Browser {
    agent: ureq::Agent,
    session: String,
    base: String,
    _profile: tempfile::TempDir,
    // Dropped after the session is deleted (`Drop` below), then killed.
    _driver: Group,
}

impl Browser {
    fn start() -> Browser {
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
        let caps = json!({ "capabilities": { "alwaysMatch": { "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }}}});
        let created = request(&agent, "POST", &format!("{base}/session"), Some(caps));
        let session = created["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}")).to_string();
        Browser { agent, session: format!("{base}/session/{session}"), base, _profile: profile, _driver: driver }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let value = request(&self.agent, method, &format!("{}{path}", self.session), body);
        match value.get("error") {
            Some(_) => Err(value),
            None => Ok(value),
        }
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
    }

    /// Runs `script` (a function body) in the page.
    fn run(&self, script: &str) -> Result<Value, Value> {
        self.call("POST", "/execute/sync", Some(json!({ "script": script, "args": [] })))
    }

    /// Polls `script` until it returns `true`; errors (a page that is
    /// reloading) count as not yet. Returns how long it took.
    fn wait_for(&self, what: &str, script: &str) -> Duration {
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
    fn open(&self, url: &str) {
        self.goto(url);
        self.wait_for("the live reload client to connect", "return window.__reliveConnected === true");
    }

    fn eval(&self, expression: &str) -> Value {
        self.run(&format!("return {expression}")).unwrap_or_else(|e| panic!("{expression}: {e}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closes Chromium; chromedriver's process group is killed after.
        let _ = request(&self.agent, "DELETE", &self.session, None);
        let _ = &self.base;
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

const BACKGROUND: &str = "getComputedStyle(document.body).backgroundColor";
const TITLE: &str = "(document.getElementById('title') || {}).textContent";

#[test]
fn a_css_edit_restyles_the_page_without_a_reload() {
    let ws = Workspace::new();
    let (_server, url) = serve(&ws);
    let browser = Browser::start();
    browser.open(&url);
    assert_eq!(browser.eval(BACKGROUND), json!("rgb(255, 0, 0)"));
    browser.run("window.__marker = 42").expect("set the marker");

    ws.write("static/app.css", "body { background-color: rgb(0, 0, 255); }\n");
    let took = browser.wait_for("the new background", &format!("return {BACKGROUND} === 'rgb(0, 0, 255)'"));
    eprintln!("css: save to computed style in {} ms", took.as_millis());
    assert_eq!(browser.eval("window.__marker"), json!(42), "the page must not reload for a CSS change");
}

#[test]
fn a_template_edit_reloads_the_page_with_the_new_content() {
    let ws = Workspace::new();
    let (_server, url) = serve(&ws);
    let browser = Browser::start();
    browser.open(&url);
    assert_eq!(browser.eval(TITLE), json!("Version 1 Demo"));
    browser.run("window.__marker = 42").expect("set the marker");

    ws.write("templates/index.html", &index("Version 2"));
    let took = browser.wait_for("the new heading", &format!("return {TITLE} === 'Version 2 Demo'"));
    eprintln!("template: save to new content in {} ms", took.as_millis());
    assert_eq!(browser.eval("window.__marker === undefined"), json!(true), "a template change reloads the page");

    // A config is context: its change reloads the page too.
    browser.wait_for("the client to reconnect", "return window.__reliveConnected === true");
    ws.write("config/site.toml", "title = \"Configured\"\n");
    browser.wait_for("the new config value", &format!("return {TITLE} === 'Version 2 Configured'"));
}

#[test]
fn a_template_syntax_error_shows_the_overlay_until_it_is_fixed() {
    let ws = Workspace::new();
    let (_server, url) = serve(&ws);
    let browser = Browser::start();
    browser.open(&url);

    ws.write("templates/index.html", "{% extends 'base.html' %}{% block content %}{% if %}{% endblock %}\n");
    browser.wait_for("the error overlay", "return document.getElementById('relive-error-overlay') !== null");
    let text = browser.eval("document.getElementById('relive-error-overlay').textContent");
    let text = text.as_str().expect("overlay text");
    assert!(text.contains("templates/index.html:1:") && text.contains("syntax error"), "{text}");
    // The last good templates keep serving underneath.
    assert_eq!(browser.eval(TITLE), json!("Version 1 Demo"));

    ws.write("templates/index.html", &index("Fixed"));
    browser.wait_for(
        "the fixed page without the overlay",
        &format!("return document.getElementById('relive-error-overlay') === null && {TITLE} === 'Fixed Demo'"),
    );
}
