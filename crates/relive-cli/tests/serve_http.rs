//! `relive serve` over HTTP, with requests written by hand on a raw
//! `TcpStream` (HTTP clients normalize `..` away before sending): no
//! request escapes `static/` or reaches a file through the page route, the
//! server binds loopback unless told otherwise, a template that fails while
//! rendering is a 500 with the overlay, a deleted config keeps its last
//! value with a notice in the browsers, a superseded fingerprint answers
//! with the current content, the LiveReload extensions' port serves the
//! LiveReload endpoints only, `--no-inject` keeps the client out, and
//! template errors are told on stderr as they come and go, a burst of
//! saves is one reload, and the README's first command serves the demo.

// The harness (tests/common) stops relive with SIGTERM and watches its
// processes with kill(2): Unix's. On Windows the CLI is type-checked in CI.
#![cfg(unix)]

mod browser;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use browser::{TIMEOUT, Workspace, free_port, index, serve, serve_with, stylesheet};
use serde_json::{Value, json};

const SECRET: &str = "hunter2-relive-secret";

/// A response: its status and everything after the status line.
struct Response {
    status: u16,
    text: String,
}

/// Sends `GET target` exactly as written, and reads the whole response.
fn get(addr: &str, target: &str) -> Response {
    get_with(addr, target, &[&format!("Host: {addr}")])
}

/// Sends `GET target` with `headers` (`Name: value`, `Host` included or
/// not) exactly as written, and reads the response: all of it, or its
/// head alone if it is a switch to WebSocket or an event stream (which do
/// not end).
fn get_with(addr: &str, target: &str, headers: &[&str]) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    let mut request = format!("GET {target} HTTP/1.1\r\n");
    for header in headers {
        request.push_str(&format!("{header}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    if headers.iter().any(|h| h.starts_with("Upgrade:")) {
        // Still closed after an answer that is not the switch.
        request = request.replace("Connection: close\r\n", "Connection: Upgrade, close\r\n");
    }
    stream.write_all(request.as_bytes()).expect("send the request");
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).unwrap_or_else(|e| panic!("GET {target}: {e}"));
        bytes.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
        let streaming = text.starts_with("http/1.1 101") || text.contains("content-type: text/event-stream");
        if n == 0 || (streaming && text.contains("\r\n\r\n")) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("GET {target}: not an HTTP response: {text:?}"));
    Response { status, text }
}

/// A workspace with a secret in `config/`, and a secret outside it that
/// symlinks in `static/` point at (a file, a directory, and `config/`).
fn workspace_with_secrets() -> (Workspace, tempfile::TempDir) {
    let ws = Workspace::new();
    ws.write("config/secret.toml", &format!("password = \"{SECRET}\"\n"));
    let outside = tempfile::tempdir().expect("temp dir");
    std::fs::write(outside.path().join("outside.txt"), SECRET).expect("write outside");
    let root = ws.root();
    symlink(outside.path().join("outside.txt"), root.join("static/leak.txt")).expect("symlink to a file");
    symlink(outside.path(), root.join("static/leakdir")).expect("symlink to a directory");
    symlink(root.join("config"), root.join("static/cfg")).expect("symlink to config/");
    (ws, outside)
}

#[test]
fn no_request_reaches_a_file_outside_static() {
    let (ws, _outside) = workspace_with_secrets();
    let server = serve(&ws);
    let addr = server.addr();

    // The control: static files and pages are served.
    let css = get(addr, "/static/app.css");
    assert_eq!(css.status, 200, "{}", css.text);
    assert!(css.text.contains("background-color"), "{}", css.text);
    assert_eq!(get(addr, "/").status, 200);

    let cases: &[(&str, u16)] = &[
        ("/static/../config/secret.toml", 403),
        ("/static/%2e%2e/config/secret.toml", 403),
        ("/static/%2E%2E/config/secret.toml", 403),
        ("/static/%2e%2e%2fconfig%2fsecret.toml", 403),
        ("/static/..%2fconfig%2fsecret.toml", 403),
        ("/static/..%2Fconfig/secret.toml", 403),
        ("/static/%252e%252e/config/secret.toml", 404),
        ("/static/%252e%252e%252fconfig%252fsecret.toml", 404),
        ("/static/..\\config\\secret.toml", 403),
        ("/static/..%5cconfig%5csecret.toml", 403),
        ("/static/..%5Cconfig/secret.toml", 403),
        ("/static/app.css%00.txt", 403),
        ("/static/%00/../config/secret.toml", 403),
        ("/static//etc/passwd", 403),
        ("/static/%2fetc%2fpasswd", 403),
        ("/static/%2e/../config/secret.toml", 403),
        ("/static/./../config/secret.toml", 403),
        ("/static/leak.txt", 403),
        ("/static/leakdir/outside.txt", 403),
        ("/static/cfg/secret.toml", 403),
        ("/static/.%2e/config/secret.toml", 403),
        // The page route: only plain names of templates.
        ("/../config/secret.toml", 404),
        ("/%2e%2e/config/secret.toml", 404),
        ("/..%2fconfig%2fsecret.toml", 404),
        ("/..\\config\\secret.toml", 404),
        ("/config/secret.toml", 404),
        ("/config/secret", 404),
        ("//etc/passwd", 404),
        ("/templates/../config/secret.toml", 404),
        ("/%00", 404),
    ];
    let mut wrong = Vec::new();
    for (target, status) in cases {
        let response = get(addr, target);
        assert!(!response.text.contains(SECRET), "{target} leaked the secret: {}", response.text);
        assert!(!response.text.contains("root:x:0:0"), "{target} leaked /etc/passwd: {}", response.text);
        if response.status != *status {
            wrong.push(format!("{target}: {} (expected {status})", response.status));
        }
    }
    assert!(wrong.is_empty(), "unexpected statuses:\n{}", wrong.join("\n"));

    // The absolute form of the request target, which proxies send.
    let absolute = get(addr, &format!("http://{addr}/static/../config/secret.toml"));
    assert!(!absolute.text.contains(SECRET), "{}", absolute.text);
    assert!(matches!(absolute.status, 400 | 403 | 404), "{}", absolute.status);
}

/// Whether something accepts TCP connections at `addr`.
fn accepts(addr: &str) -> bool {
    TcpStream::connect_timeout(&addr.parse().expect("an address"), Duration::from_secs(2)).is_ok()
}

#[test]
fn it_binds_loopback_by_default_and_host_changes_that() {
    let ws = Workspace::new();
    let default = serve(&ws);
    assert!(default.url.starts_with("http://127.0.0.1:"), "{}", default.url);
    assert_eq!(get(default.addr(), "/").status, 200);
    let port = default.addr().rsplit_once(':').expect("a port").1;
    assert!(!accepts(&format!("127.0.0.2:{port}")), "only 127.0.0.1 is bound, not every address");

    let other = serve_with(&ws, &["--host", "127.0.0.2"]);
    assert!(other.url.starts_with("http://127.0.0.2:"), "{}", other.url);
    assert_eq!(get(other.addr(), "/").status, 200);
    let port = other.addr().rsplit_once(':').expect("a port").1;
    assert!(!accepts(&format!("127.0.0.1:{port}")), "--host 127.0.0.2 binds only that address");

    let v6 = serve_with(&ws, &["--host", "::1"]);
    assert!(v6.url.starts_with("http://[::1]:"), "{}", v6.url);
    assert_eq!(get(v6.addr(), "/").status, 200);
}

/// The text of the element the client shows as its overlay, unescaped.
fn page_error(text: &str) -> Option<String> {
    let start = text.find(&format!("<pre id=\"{}\">", relive_web::PAGE_ERROR_ID))?;
    let rest = &text[start..];
    let body = &rest[rest.find('>')? + 1..rest.find("</pre>")?];
    Some(body.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&amp;", "&"))
}

/// Waits until `GET target` gives a response that `ok` accepts; returns it.
fn wait_for_response(addr: &str, target: &str, ok: impl Fn(&Response) -> bool) -> Response {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let response = get(addr, target);
        if ok(&response) {
            return response;
        }
        assert!(Instant::now() < deadline, "GET {target}: not the response expected; last: {}", response.text);
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_template_that_fails_while_rendering_is_a_500_with_the_overlay_and_the_client() {
    let ws = Workspace::new();
    let server = serve(&ws);
    let addr = server.addr();
    let cases = [
        ("a missing include", "line one\n  {% include 'no-such.html' %}\n", 2, "template not found"),
        ("an unknown filter", "{{ site.title | no_such_filter }}\n", 1, "unknown filter"),
        ("a division by zero", "one\ntwo\n  {{ 1 // 0 }}\n", 3, ""),
        ("an undefined call", "{{ no_such_function() }}\n", 1, ""),
    ];
    for (what, source, line, message) in cases {
        ws.write("templates/broken.html", source);
        // The templates are rebuilt when the engine sees the file: wait for this case's error.
        let at = format!("templates/broken.html:{line}:");
        let response = wait_for_response(addr, "/broken", |r| {
            r.status == 500 && page_error(&r.text).is_some_and(|e| e.starts_with(&at) && e.contains(message))
        });
        // The client, stamped with the change count (see `relive_web::inject_at`).
        assert!(
            response.text.contains(r#"<script src="/livereload.js" async data-relive-changes=""#),
            "{what}: no client"
        );
        assert!(response.text.to_ascii_lowercase().contains("content-type: text/html"), "{what}");
        server.wait_for_stderr(&format!("broken.html:{line}:"));
    }
    // Fixed: the page renders again.
    ws.write("templates/broken.html", "fine {{ site.title }}\n");
    let fixed = wait_for_response(addr, "/broken", |r| r.status == 200);
    assert!(fixed.text.contains("fine Demo"), "{}", fixed.text);
    assert_eq!(page_error(&fixed.text), None);
}

/// An SSE stream of the live reload messages.
struct Events {
    stream: TcpStream,
    buffer: String,
    seen: usize,
}

impl Events {
    /// Subscribes at `addr` (`host:port`).
    fn connect(addr: &str) -> Events {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
        write!(stream, "GET /livereload/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
            .expect("send");
        let mut events = Events { stream, buffer: String::new(), seen: 0 };
        let deadline = Instant::now() + TIMEOUT;
        while !events.buffer.contains("\r\n\r\n") {
            assert!(Instant::now() < deadline, "no response to the event stream request");
            events.read();
        }
        assert!(events.buffer.starts_with("HTTP/1.1 200"), "{}", events.buffer);
        events
    }

    fn read(&mut self) {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => panic!("the event stream ended"),
            Ok(n) => self.buffer.push_str(&String::from_utf8_lossy(&chunk[..n])),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading the event stream: {e}"),
        }
    }

    /// The next message.
    fn next(&mut self) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let data: Vec<&str> = self.buffer.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            if let Some(line) = data.get(self.seen) {
                self.seen += 1;
                return serde_json::from_str(line).expect("JSON");
            }
            assert!(Instant::now() < deadline, "no message; so far: {}", self.buffer);
            self.read();
        }
    }
}

#[test]
fn a_deleted_config_keeps_its_last_value_with_a_notice_until_it_is_back() {
    let ws = Workspace::new();
    let server = serve(&ws);
    let addr = server.addr();
    let mut events = Events::connect(server.addr());
    assert!(get(addr, "/").text.contains("Version 1 Demo"));

    ws.remove("config/site.toml");
    let notice = events.next();
    assert_eq!(notice["command"], json!("alert"), "{notice}");
    let message = notice["message"].as_str().expect("a message");
    assert!(message.contains("config `site`: its files are gone; pages keep its last value"), "{message}");
    server.wait_for_stderr("config `site`: its files are gone");
    // The last value is still the context; so says the page, with the notice for new browsers.
    assert!(get(addr, "/").text.contains("Version 1 Demo"));
    let mut late = Events::connect(server.addr());
    assert_eq!(late.next(), notice, "a browser that connects is shown the notice");

    // Back with the very same value: no new value, but the notice goes.
    ws.write("config/site.toml", "title = \"Demo\"\n");
    for events in [&mut events, &mut late] {
        let reload = events.next();
        assert_eq!(reload, json!({"command": "reload", "path": "config/site", "liveCSS": false, "liveImg": false}));
    }
    let mut after = Events::connect(server.addr());
    ws.write("templates/index.html", &index("Version 2"));
    assert_eq!(after.next()["command"], json!("reload"), "no notice stands");

    // Invalid: the located error, and the last good value stays.
    ws.write("config/site.toml", "title = \"Broken\n");
    let alert = after.next();
    let message = alert["message"].as_str().expect("a message");
    assert!(message.contains("site.toml:1:") && message.contains("pages keep the last good value"), "{message}");
    assert!(get(addr, "/").text.contains("Version 2 Demo"));
    // Fixed with a new value: the notice goes, the page has it.
    ws.write("config/site.toml", "title = \"Fixed\"\n");
    assert_eq!(after.next()["path"], json!("config/site"));
    assert!(get(addr, "/").text.contains("Version 2 Fixed"));
}

/// The value of header `name` (lowercase) in a response.
fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    let head = response.text.split("\r\n\r\n").next().unwrap_or_default();
    head.lines().find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
}

/// The stylesheet URL a page links.
fn stylesheet_url(page: &Response) -> String {
    let at = page.text.find("href=\"/static/app.").unwrap_or_else(|| panic!("no stylesheet link: {}", page.text));
    let rest = &page.text[at + "href=\"".len()..];
    rest[..rest.find('"').expect("a closing quote")].to_string()
}

#[test]
fn a_superseded_fingerprint_serves_the_current_stylesheet_to_be_revalidated() {
    let ws = Workspace::new();
    let server = serve(&ws);
    let addr = server.addr();
    let old = stylesheet_url(&get(addr, "/"));
    let first = get(addr, &old);
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(header(&first, "cache-control"), Some("public, max-age=31536000, immutable"));

    ws.write("static/app.css", &stylesheet((0, 0, 255)));
    let page = wait_for_response(addr, "/", |r| stylesheet_url(r) != old);
    let new = stylesheet_url(&page);
    // The URL the page had (livereload-js re-fetches it, with a cache-buster).
    for target in [old.clone(), format!("{old}?livereload=1700000000000")] {
        let stale = get(addr, &target);
        assert_eq!(stale.status, 200, "{target}: {}", stale.text);
        assert!(stale.text.contains("rgb(0, 0, 255)"), "{target}: the current content: {}", stale.text);
        assert_eq!(header(&stale, "cache-control"), Some("no-cache"), "{target}: never cached for good");
        assert_eq!(header(&stale, "content-type"), Some("text/css; charset=utf-8"));
    }
    assert_eq!(header(&get(addr, &new), "cache-control"), Some("public, max-age=31536000, immutable"));
    // Only a fingerprint of an asset that exists answers; the checks still hold.
    assert_eq!(get(addr, "/static/nothing.d3d9000b.css").status, 404);
    assert_eq!(get(addr, "/static/..%2fconfig%2fsite.d3d9000b.toml").status, 403);
    ws.remove("static/app.css");
    wait_for_response(addr, &old, |r| r.status == 404);
}

#[test]
fn the_extensions_port_serves_the_livereload_endpoints_and_nothing_else() {
    let ws = Workspace::new();
    let port = free_port().to_string();
    let server = serve_with(&ws, &["--livereload-port", &port]);
    let livereload = server.livereload_addr();
    assert_eq!(livereload, format!("127.0.0.1:{port}"));

    let client = get(&livereload, "/livereload.js");
    assert_eq!(client.status, 200, "{}", client.text);
    assert!(client.text.contains("WebSocket"), "relive's client: {}", client.text);
    // Nothing of the workspace is there.
    for target in ["/", "/static/app.css", "/index"] {
        assert_eq!(get(&livereload, target).status, 404, "{target}");
    }
    // Changes are told there.
    let mut events = Events::connect(&livereload);
    ws.write("templates/index.html", &index("Version 2"));
    assert_eq!(events.next()["command"], json!("reload"));

    // A port in use: a note that names it, and the pages are served all the same.
    let other = Workspace::new();
    let second = serve_with(&other, &["--livereload-port", &port]);
    let note = second.wait_for_stderr("for the LiveReload browser extensions");
    assert!(note.contains(&format!("not listening on 127.0.0.1:{port}")), "{note}");
    assert!(get(second.addr(), "/").text.contains("Version 1 Demo"));
    assert!(get(&livereload, "/livereload.js").status == 200, "the first server keeps the port");
}

#[test]
fn no_inject_keeps_the_client_out_of_every_page() {
    let ws = Workspace::new();
    let injected = serve(&ws);
    assert!(get(injected.addr(), "/").text.contains("/livereload.js"), "the control: injected by default");

    let server = serve_with(&ws, &["--no-inject"]);
    let addr = server.addr();
    let page = get(addr, "/");
    assert!(page.text.contains("Version 1 Demo"), "{}", page.text);
    let missing = get(addr, "/missing");
    assert_eq!(missing.status, 404);
    ws.write("templates/index.html", "{% extends 'base.html' %}{% block content %}\n{{ 1 // 0 }}{% endblock %}\n");
    let error = wait_for_response(addr, "/", |r| r.status == 500);
    assert!(page_error(&error.text).is_some_and(|e| e.contains("templates/index.html:2:")), "{}", error.text);
    for response in [&page, &missing, &error] {
        assert!(!response.text.contains("livereload.js"), "{}", response.text);
    }
}

#[test]
fn template_errors_are_told_on_stderr_while_it_runs() {
    let ws = Workspace::new();
    let server = serve(&ws);
    ws.write("templates/index.html", "{% extends 'base.html' %}{% block content %}{% if %}{% endblock %}\n");
    let stderr = server.wait_for_stderr("templates/index.html:1:");
    let line = stderr.lines().find(|l| l.contains("templates/index.html:1:")).expect("the line");
    assert!(line.starts_with("relive: warning: templates/index.html:1:") && line.contains("syntax error"), "{line}");
    ws.write("templates/index.html", &index("Fixed"));
    server.wait_for_stderr("relive: templates: they compile again");
    // Another error after the fix is told too, where it is.
    ws.write("templates/about.html", "{% extends 'base.html' %}\n{% block content %}{{ }}{% endblock %}\n");
    let stderr = server.wait_for_stderr("templates/about.html:2:");
    assert_eq!(stderr.matches("templates/index.html:1:").count(), 1, "each error once: {stderr}");
}

#[test]
fn a_burst_of_twenty_saves_is_one_reload() {
    let ws = Workspace::new();
    let server = serve(&ws);
    let mut events = Events::connect(server.addr());
    // As a "save all" or a checkout writes them: back to back, CSS first.
    for i in 0..10 {
        ws.write(&format!("static/c{i}.css"), &stylesheet((i, 0, 0)));
        ws.write(&format!("templates/p{i}.html"), &index(&format!("Page {i}")));
    }
    // Stylesheet swaps may lead (the first CSS save is swapped at once; on
    // a loaded machine a gap of more than 10 ms before the next save makes
    // that one lead too), then one reload for everything.
    let mut swaps = Vec::new();
    let reload = loop {
        let message = events.next();
        if message["liveCSS"] != json!(true) {
            break message;
        }
        let path = message["path"].as_str().expect("a path").to_string();
        assert!(path.starts_with("/static/c") && path.ends_with(".css"), "a stylesheet of the burst: {message}");
        swaps.push(path);
    };
    eprintln!("burst: {} leading stylesheet swap(s) {swaps:?}, then {reload}", swaps.len());
    assert_eq!(swaps.first().map(String::as_str), Some("/static/c0.css"), "the first save leads");
    assert_eq!(reload, json!({"command": "reload", "path": "templates/*", "liveCSS": false, "liveImg": false}));
    // Nothing else comes from the burst: the next message is for a change
    // made after its reload arrived.
    ws.write("config/site.toml", "title = \"After\"\n");
    let after = events.next();
    assert_eq!(after, json!({"command": "reload", "path": "config/site", "liveCSS": false, "liveImg": false}));
}

#[test]
fn the_demo_serves_a_page_built_from_its_configs_templates_and_stylesheet() {
    // The README's first command, `relive serve examples/demo`, on a copy.
    let ws = Workspace::copy_of(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo"));
    let server = serve_with(&ws, &["--no-history"]);
    let page = get(server.addr(), "/");
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(page.text.contains("<h1 id=\"title\">relive demo</h1>"), "site.toml's title: {}", page.text);
    assert!(page.text.contains("config/server.toml says: "), "{}", page.text);
    assert!(page.text.contains("/livereload.js"), "the live reload client is injected: {}", page.text);
    let css = page.text.split("href=\"").filter_map(|s| s.split('"').next()).find(|h| h.ends_with(".css"));
    let css = css.unwrap_or_else(|| panic!("a stylesheet link: {}", page.text));
    assert!(css.starts_with("/static/app.") && css != "/static/app.css", "fingerprinted: {css}");
    let sheet = get(server.addr(), css);
    assert_eq!(sheet.status, 200);
    assert!(sheet.text.ends_with(&std::fs::read_to_string(ws.root().join("static/app.css")).unwrap()));

    // An edit is in the next page once the server has it.
    let site = std::fs::read_to_string(ws.root().join("config/site.toml")).unwrap();
    ws.write("config/site.toml", &site.replace("title = \"relive demo\"", "title = \"edited\""));
    let deadline = Instant::now() + TIMEOUT;
    while !get(server.addr(), "/").text.contains("<h1 id=\"title\">edited</h1>") {
        assert!(Instant::now() < deadline, "the edit did not reach the page within {TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `relive serve` with a secret config that page `/secret` shows, and the
/// LiveReload port on: the server, its address and the LiveReload port's.
fn serve_secret(args: &[&str]) -> (Workspace, browser::Server, String, String) {
    let ws = Workspace::new();
    ws.write("config/secret.toml", &format!("password = \"{SECRET}\"\n"));
    ws.write("templates/secret.html", "{{ secret.password }}\n");
    let port = free_port().to_string();
    let server = serve_with(&ws, &[&["--livereload-port", &port][..], args].concat());
    let (addr, livereload) = (server.addr().to_string(), server.livereload_addr());
    (ws, server, addr, livereload)
}

/// The port of `host:port`.
fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').expect("a port").1
}

/// Asserts that `response` is the refusal of a request for another host:
/// a 421 that says so, and nothing of the workspace.
fn assert_misdirected(response: &Response, what: &str) {
    assert_eq!(response.status, 421, "{what}: {}", response.text);
    assert!(!response.text.contains(SECRET) && !response.text.contains("Demo"), "{what}: {}", response.text);
    assert!(response.text.contains("the Host header does not name this server"), "{what}: {}", response.text);
    assert!(response.text.contains("--allow-host NAME"), "{what}: {}", response.text);
}

#[test]
fn dns_rebinding_a_request_for_another_host_gets_no_page_on_either_port() {
    let (_ws, _server, addr, livereload) = serve_secret(&[]);
    let own = get(&addr, "/secret");
    assert!(own.status == 200 && own.text.contains(SECRET), "the control: its own host gets the page: {}", own.text);

    let port = port_of(&addr);
    let foreign = [
        format!("attacker.example:{port}"),
        "attacker.example".to_string(),
        format!("localhost.attacker.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        format!("10.0.0.1:{port}"),
        format!("0.0.0.0:{port}"),
    ];
    for host in &foreign {
        let header = format!("Host: {host}");
        for target in ["/", "/secret", "/index", "/static/app.css", "/livereload.js", "/livereload/events", "/nothing"]
        {
            assert_misdirected(&get_with(&addr, target, &[&header]), &format!("{host} {target}"));
        }
        for target in ["/livereload.js", "/livereload/events", "/livereload", "/"] {
            assert_misdirected(
                &get_with(&livereload, target, &[&header]),
                &format!("{host} {target} (LiveReload port)"),
            );
        }
    }
    // Without a Host, with two, or naming another in an absolute-form target.
    for (target, headers) in [
        ("/secret".to_string(), vec![]),
        ("/secret".to_string(), vec![format!("Host: {addr}"), "Host: attacker.example".to_string()]),
        (format!("http://attacker.example:{port}/secret"), vec![format!("Host: {addr}")]),
    ] {
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let response = get_with(&addr, &target, &headers);
        assert!(!response.text.contains(SECRET), "{target} {headers:?}: {}", response.text);
        assert!(matches!(response.status, 400 | 421), "{target} {headers:?}: {}", response.text);
    }
}

#[test]
fn loopback_names_and_the_host_address_are_answered_and_no_other_name() {
    let ws = Workspace::new();
    let cases: [(&[&str], Vec<String>); 3] = [
        (
            &[],
            vec!["127.0.0.1:{port}", "127.0.0.1", "127.0.0.1:1", "localhost:{port}", "LocalHost", "[::1]:{port}"]
                .into_iter()
                .map(String::from)
                .collect(),
        ),
        (&["--host", "127.0.0.2"], vec!["127.0.0.2:{port}".into(), "127.0.0.2".into(), "localhost:{port}".into()]),
        (&["--host", "::1"], vec!["[::1]:{port}".into(), "[::1]".into(), "[0:0:0:0:0:0:0:1]:{port}".into()]),
    ];
    for (args, hosts) in cases {
        let server = serve_with(&ws, args);
        let addr = server.addr();
        for host in hosts {
            let host = host.replace("{port}", port_of(addr));
            let page = get_with(addr, "/", &[&format!("Host: {host}")]);
            assert_eq!(page.status, 200, "{args:?} Host: {host}: {}", page.text);
            assert!(page.text.contains("Version 1 Demo"), "{args:?} Host: {host}: {}", page.text);
        }
        let foreign = get_with(addr, "/", &[&format!("Host: attacker.example:{}", port_of(addr))]);
        assert_misdirected(&foreign, &format!("{args:?}"));
    }
}

#[test]
fn allow_host_adds_exactly_the_names_given() {
    let (_ws, _server, addr, livereload) =
        serve_secret(&["--allow-host", "dev.example", "--allow-host", "Other.Example", "--allow-host", "10.1.2.3"]);
    let port = port_of(&addr);
    for host in [format!("dev.example:{port}"), "DEV.EXAMPLE".into(), "other.example:8080".into(), "10.1.2.3".into()] {
        let page = get_with(&addr, "/secret", &[&format!("Host: {host}")]);
        assert!(page.status == 200 && page.text.contains(SECRET), "Host: {host}: {}", page.text);
        let client = get_with(&livereload, "/livereload.js", &[&format!("Host: {host}")]);
        assert_eq!(client.status, 200, "Host: {host} (LiveReload port): {}", client.text);
    }
    for host in [format!("a.dev.example:{port}"), "dev.example.attacker.example".into(), "example".into()] {
        assert_misdirected(&get_with(&addr, "/secret", &[&format!("Host: {host}")]), &host);
    }
    // A page of an allowed name may open the streams.
    let socket = upgrade(&livereload, &livereload, Some(&format!("http://dev.example:{port}")));
    assert_eq!(socket.status, 101, "{}", socket.text);

    // Names only: no wildcard, no port.
    for (bad, says) in [("*.example", "wildcards are not supported"), ("dev.example:8000", "without a port")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_relive"))
            .args(["serve", "--port", "0", "--livereload-port", "0", "--allow-host", bad])
            .arg(_ws.root())
            .output()
            .expect("run relive serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains(says), "{bad}: {stderr}");
    }
}

/// A WebSocket handshake for `/livereload` at `addr` with `Host: host`,
/// and `Origin: origin` if given; the response's head.
fn upgrade(addr: &str, host: &str, origin: Option<&str>) -> Response {
    let mut headers = vec![
        format!("Host: {host}"),
        "Upgrade: websocket".to_string(),
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==".to_string(),
        "Sec-WebSocket-Version: 13".to_string(),
    ];
    headers.extend(origin.map(|o| format!("Origin: {o}")));
    get_with(addr, "/livereload", &headers.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The Origins a page of another site sends, or a `file://` page (`null`).
fn foreign_origins(port: &str) -> Vec<String> {
    vec![
        "http://attacker.example".into(),
        format!("http://attacker.example:{port}"),
        format!("https://127.0.0.1.attacker.example:{port}"),
        format!("http://127.0.0.1@attacker.example:{port}"),
        "null".into(),
        "file://".into(),
    ]
}

/// The Origins allowed: the server's own pages (on the main port: a
/// cross-port origin for the LiveReload port), loopback pages, and the
/// LiveReload extensions.
fn own_origins(addr: &str) -> Vec<String> {
    vec![
        format!("http://{addr}"),
        format!("http://localhost:{}", port_of(addr)),
        "http://localhost:3000".into(),
        "chrome-extension://jnihajbhpnppcggbcgedagnkighmdlei".into(),
        "moz-extension://0b8fa3f6-1c4a-4b7e-9d36-2e4f6a8b1c9d".into(),
        "safari-web-extension://E5A2C6F1-0B3D-4E7A-9C21-3F6B8D4A2E10".into(),
    ]
}

#[test]
fn a_websocket_from_a_page_of_another_site_is_refused_on_both_ports() {
    let (_ws, _server, addr, livereload) = serve_secret(&[]);
    for at in [&addr, &livereload] {
        assert_eq!(upgrade(at, at, None).status, 101, "{at}: no Origin (not a browser)");
        for origin in own_origins(&addr) {
            let response = upgrade(at, at, Some(&origin));
            assert_eq!(response.status, 101, "{at} Origin: {origin}: {}", response.text);
        }
        for origin in foreign_origins(port_of(&addr)) {
            let response = upgrade(at, at, Some(&origin));
            assert_eq!(response.status, 403, "{at} Origin: {origin}: {}", response.text);
            assert!(response.text.contains("cross-origin request refused"), "{at} Origin: {origin}: {}", response.text);
        }
    }
}

#[test]
fn an_event_stream_for_a_page_of_another_site_is_refused_on_both_ports() {
    let (_ws, _server, addr, livereload) = serve_secret(&[]);
    let events = |at: &str, origin: Option<&str>| {
        let mut headers = vec![format!("Host: {at}"), "Accept: text/event-stream".to_string()];
        headers.extend(origin.map(|o| format!("Origin: {o}")));
        get_with(at, "/livereload/events", &headers.iter().map(String::as_str).collect::<Vec<_>>())
    };
    for at in [&addr, &livereload] {
        let open = |r: &Response| r.status == 200 && r.text.to_ascii_lowercase().contains("text/event-stream");
        assert!(open(&events(at, None)), "{at}: no Origin");
        for origin in own_origins(&addr) {
            let response = events(at, Some(&origin));
            assert!(open(&response), "{at} Origin: {origin}: {}", response.text);
        }
        for origin in foreign_origins(port_of(&addr)) {
            let response = events(at, Some(&origin));
            assert_eq!(response.status, 403, "{at} Origin: {origin}: {}", response.text);
            assert!(response.text.contains("cross-origin request refused"), "{at} Origin: {origin}: {}", response.text);
        }
    }
}

#[test]
fn a_host_that_is_not_loopback_is_warned_about() {
    let ws = Workspace::new();
    let server = serve_with(&ws, &["--host", "0.0.0.0"]);
    let stderr = server.wait_for_stderr("readable from the network");
    assert!(
        stderr.contains("warning: --host 0.0.0.0: not a loopback address, so every config (secrets included)"),
        "{stderr}"
    );
    assert_eq!(get(server.addr(), "/").status, 200, "it serves all the same");
}
