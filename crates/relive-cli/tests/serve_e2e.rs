//! `relive serve` end to end, in real headless Chromium: the real binary on
//! 127.0.0.1:0 against a temp workspace, driven over WebDriver (the harness
//! is `tests/browser/mod.rs`, shared with `benches/browser.rs`). Every wait
//! polls with a deadline; the server, chromedriver and the browser are
//! stopped when dropped.
//!
//! One test runs the real livereload-js 4.0.2 (the client of the
//! LiveReload browser extensions, vendored in `tests/fixtures/`) in place
//! of relive's own client, from the main port's page to the LiveReload
//! port (a cross-port `Origin` the server accepts as its own). Another
//! maps `attacker.example` to 127.0.0.1 in Chromium, as DNS rebinding
//! would, and checks that such a page gets neither the pages nor a socket.

// The harness (tests/common) stops relive with SIGTERM and watches its
// processes with kill(2): Unix's. On Windows the CLI is type-checked in CI.
#![cfg(unix)]

mod browser;

use browser::{
    BACKGROUND, BASE_HTML, Browser, OVERLAY_SHOWN, Server, TITLE, Workspace, free_port, index, serve, serve_with,
    stylesheet,
};
use serde_json::json;

/// A workspace, `relive serve` on it, and a browser showing its page.
fn start() -> (Workspace, Server, Browser) {
    let ws = Workspace::new();
    let server = serve(&ws);
    let browser = Browser::start();
    browser.open(&server.url);
    (ws, server, browser)
}

#[test]
fn a_css_edit_restyles_the_page_without_a_reload() {
    let (ws, _server, browser) = start();
    restyle_in_place(&ws, &browser, "css");
}

/// Turns the red page blue with a CSS edit and checks that the page was
/// not reloaded (a JS variable survives); prints the latency as `label`.
fn restyle_in_place(ws: &Workspace, browser: &Browser, label: &str) {
    assert_eq!(browser.eval(BACKGROUND), json!("rgb(255, 0, 0)"));
    browser.run("window.__marker = 42").expect("set the marker");

    browser.arm(&format!("{BACKGROUND} === 'rgb(0, 0, 255)'"));
    let saved = ws.write("static/app.css", &stylesheet((0, 0, 255)));
    let seen = browser.seen("the new background");
    eprintln!("{label}: save to computed style in {:.0} ms", seen.at - saved);
    assert_eq!(browser.eval("window.__marker"), json!(42), "the page must not reload for a CSS change");
}

/// Changes the page's heading with a template edit and checks that the
/// page was reloaded (a JS variable is gone); prints the latency as `label`.
fn reload_for_template(ws: &Workspace, browser: &Browser, label: &str) {
    assert_eq!(browser.eval(TITLE), json!("Version 1 Demo"));
    browser.run("window.__marker = 42").expect("set the marker");

    browser.arm(&format!("{TITLE} === 'Version 2 Demo'"));
    let saved = ws.write("templates/index.html", &index("Version 2"));
    let seen = browser.seen("the new heading");
    eprintln!("{label}: save to new content in {:.0} ms", seen.at - saved);
    assert_eq!(browser.eval("window.__marker === undefined"), json!(true), "a template change reloads the page");
}

#[test]
fn a_template_edit_reloads_the_page_with_the_new_content() {
    let (ws, _server, browser) = start();
    reload_for_template(&ws, &browser, "template");

    // A config is context: its change reloads the page too.
    browser.wait_connected();
    ws.write("config/site.toml", "title = \"Configured\"\n");
    browser.wait_for("the new config value", &format!("return {TITLE} === 'Version 2 Configured'"));
}

/// Waits for the error overlay; checks that it names `located`; returns its text.
fn wait_for_overlay(browser: &Browser, located: &str) -> String {
    browser.wait_for("the error overlay", &format!("return {OVERLAY_SHOWN}"));
    let text = browser.eval("document.getElementById('relive-error-overlay').textContent");
    let text = text.as_str().expect("overlay text").to_string();
    assert!(text.contains(located), "{text}");
    text
}

/// Fixes the index page and waits for it, without the overlay.
fn fix_and_wait(ws: &Workspace, browser: &Browser) {
    ws.write("templates/index.html", &index("Fixed"));
    browser.wait_for(
        "the fixed page without the overlay",
        &format!("return !({OVERLAY_SHOWN}) && {TITLE} === 'Fixed Demo'"),
    );
}

#[test]
fn a_template_syntax_error_shows_the_overlay_until_it_is_fixed() {
    let (ws, _server, browser) = start();

    ws.write("templates/index.html", "{% extends 'base.html' %}{% block content %}{% if %}{% endblock %}\n");
    let text = wait_for_overlay(&browser, "templates/index.html:1:");
    assert!(text.contains("syntax error"), "{text}");
    // The last good templates keep serving underneath.
    assert_eq!(browser.eval(TITLE), json!("Version 1 Demo"));
    fix_and_wait(&ws, &browser);
}

#[test]
fn a_template_that_fails_while_rendering_shows_the_overlay_and_reloads_when_fixed() {
    let (ws, _server, browser) = start();

    // It compiles, so the page reloads, and the render fails: a 500 with the overlay.
    ws.write("templates/index.html", "{% extends 'base.html' %}{% block content %}\n{{ 1 // 0 }}{% endblock %}\n");
    wait_for_overlay(&browser, "templates/index.html:2:");
    assert_eq!(browser.eval(TITLE), json!(null), "the page is the error page");
    browser.wait_connected();
    fix_and_wait(&ws, &browser);
}

#[test]
fn a_change_made_while_the_client_was_away_reloads_the_page_when_it_is_back() {
    let (ws, server, browser) = start();
    browser.run("window.__marker = 42").expect("set the marker");
    // Away: the client reconnects after 250 ms.
    browser.run("for (const s of window.__reliveProbeSockets) s.close()").expect("close the socket");
    browser.wait_for("the client to notice", "return window.__reliveConnected === false");
    ws.write("templates/index.html", &index("Version 2"));
    // Live on the server well before the client is back: its message reached no browser.
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(browser::TIMEOUT)).build().into();
    let deadline = std::time::Instant::now() + browser::TIMEOUT;
    while !agent
        .get(&server.url)
        .call()
        .expect("GET /")
        .body_mut()
        .read_to_string()
        .expect("body")
        .contains("Version 2")
    {
        assert!(std::time::Instant::now() < deadline, "the server never served the new page");
    }
    // The client says how old its page is when it is back, and is told to reload.
    browser.wait_for("the new heading", &format!("return {TITLE} === 'Version 2 Demo'"));
    assert_eq!(browser.eval("window.__marker === undefined"), json!(true), "the page was reloaded");
}

/// livereload-js 4.0.2, unmodified (see `tests/fixtures/livereload-js-4.0.2/README.md`).
const LIVERELOAD_JS: &str = include_str!("fixtures/livereload-js-4.0.2/livereload.js");

/// How long livereload-js waits for a stylesheet it re-attached to load
/// before it removes the old one anyway (`stylesheetReloadTimeout`, 15 s,
/// its reloader.js:134), and a second more.
const FAIL_SAFE_MS: u64 = 16_000;

/// The page's one stylesheet link, or `null` if it has none or several.
const ONLY_LINK: &str = "(function () { var l = document.querySelectorAll('link[rel=stylesheet]'); \
                         return l.length === 1 ? l[0] : null; })()";

#[test]
fn livereload_js_swaps_css_in_place_and_reloads_the_page_for_a_template() {
    let ws = Workspace::new();
    let port = free_port();
    // As the extensions put it in a page: a script whose src ends in
    // `livereload.js?host=...&port=...`; relive's own client stays out.
    ws.write("static/livereload.js", LIVERELOAD_JS);
    let scripts = format!(
        "<script>document.addEventListener('LiveReloadConnect', function () {{ window.__lrConnected = true; }});</script>\n\
         <script src=\"/static/livereload.js?host=127.0.0.1&port={port}\"></script></body>"
    );
    ws.write("templates/base.html", &BASE_HTML.replace("</body>", &scripts));
    let server = serve_with(&ws, &["--no-inject", "--livereload-port", &port.to_string()]);
    assert_eq!(server.livereload_addr(), format!("127.0.0.1:{port}"));
    let browser = Browser::start();
    browser.goto(&server.url);
    let connected = "return window.__lrConnected === true";
    browser.wait_for("livereload-js to connect", connected);
    assert_eq!(
        browser.eval("window.__reliveProbeSockets.map(function (s) { return s.url; })"),
        json!([format!("ws://127.0.0.1:{port}/livereload")]),
        "livereload-js alone, on the LiveReload port"
    );
    let linked = browser.eval(&format!("new URL({ONLY_LINK}.href).pathname"));
    let linked = linked.as_str().expect("the stylesheet's path").to_string();
    assert!(linked.starts_with("/static/app.") && linked != "/static/app.css", "fingerprinted: {linked}");

    // CSS: in place. livereload-js cannot match /static/app.css to the
    // fingerprinted link, so it re-attaches it under the URL it has (now a
    // superseded fingerprint) with a cache-buster, then drops the old link.
    restyle_in_place(&ws, &browser, "livereload-js css");
    browser.wait_for("livereload-js to remove the old link", &format!("return {ONLY_LINK} !== null"));
    let link = browser.eval(&format!("(function (u) {{ return [u.pathname, u.search]; }})(new URL({ONLY_LINK}.href))"));
    assert_eq!(link[0], json!(linked), "re-attached under the URL the page had");
    assert!(link[1].as_str().is_some_and(|q| q.starts_with("?livereload=")), "with its cache-buster: {link}");
    // Past its fail-safe, the stylesheet is still there and applied.
    browser
        .run(&format!(
            "window.__afterFailSafe = undefined; \
             setTimeout(function () {{ window.__afterFailSafe = [{BACKGROUND}, {ONLY_LINK} !== null]; }}, {FAIL_SAFE_MS});"
        ))
        .expect("start the timer");
    browser.wait_for("the fail-safe to have passed", "return window.__afterFailSafe !== undefined");
    assert_eq!(browser.eval("window.__afterFailSafe"), json!(["rgb(0, 0, 255)", true]));
    assert_eq!(browser.eval("window.__marker"), json!(42));

    // A template: the page reloads, with the new content.
    reload_for_template(&ws, &browser, "livereload-js template");
    browser.wait_for("livereload-js to connect again", connected);
    assert_eq!(browser.eval(BACKGROUND), json!("rgb(0, 0, 255)"));
}

/// Opens a WebSocket to each of `urls` from the page, and records in
/// `window.__sockets[url]` whether it opened (`open`) or was closed first
/// (`refused`).
fn open_sockets(browser: &Browser, urls: &[String]) {
    let script = format!(
        "window.__sockets = {{}}; {urls}.forEach(function (url) {{ \
           var s = new WebSocket(url); \
           s.onopen = function () {{ window.__sockets[url] = 'open'; s.close(); }}; \
           s.onclose = function () {{ if (!window.__sockets[url]) window.__sockets[url] = 'refused'; }}; \
         }}); return true;",
        urls = json!(urls)
    );
    browser.run(&script).expect("open the sockets");
    let done = format!("return Object.keys(window.__sockets).length === {}", urls.len());
    browser.wait_for("every socket to open or be refused", &done);
}

#[test]
fn a_page_of_another_site_gets_neither_the_pages_nor_the_live_reload_stream() {
    let ws = Workspace::new();
    let livereload = free_port();
    let server = serve_with(&ws, &["--livereload-port", &livereload.to_string()]);
    let main = server.addr().rsplit_once(':').expect("a port").1.to_string();
    // The other site, served by a server of its own (relive, told to answer for its name).
    let elsewhere = Workspace::new();
    elsewhere.write("templates/index.html", &index("Elsewhere"));
    let other = serve_with(&elsewhere, &["--allow-host", "attacker.example"]);
    let other_port = other.addr().rsplit_once(':').expect("a port").1.to_string();
    // In this browser attacker.example is 127.0.0.1, as DNS rebinding makes it.
    let browser = Browser::start_with(&["--host-resolver-rules=MAP attacker.example 127.0.0.1"]);

    // The server's own port under the other site's name: the refusal, not the page.
    browser.goto(&format!("http://attacker.example:{main}/"));
    let text = browser.eval("document.body.textContent");
    let text = text.as_str().expect("a text");
    assert!(text.contains("the Host header does not name this server"), "{text}");
    assert!(!text.contains("Demo"), "{text}");

    // The other site's page opens sockets to this server's two ports: refused.
    browser.goto(&format!("http://attacker.example:{other_port}/"));
    browser.wait_for("the other site's page", &format!("return {TITLE} === 'Elsewhere Demo'"));
    let urls = [format!("ws://127.0.0.1:{main}/livereload"), format!("ws://127.0.0.1:{livereload}/livereload")];
    open_sockets(&browser, &urls);
    let refused = json!({ &urls[0]: "refused", &urls[1]: "refused" });
    assert_eq!(browser.eval("window.__sockets"), refused);

    // The control: the server's own page opens both (the LiveReload port cross-port).
    browser.goto(&server.url);
    open_sockets(&browser, &urls);
    assert_eq!(browser.eval("window.__sockets"), json!({ &urls[0]: "open", &urls[1]: "open" }));
}
