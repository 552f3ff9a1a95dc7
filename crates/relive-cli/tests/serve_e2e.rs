//! `relive serve` end to end, in real headless Chromium: the real binary on
//! 127.0.0.1:0 against a temp workspace, driven over WebDriver (the harness
//! is `tests/browser/mod.rs`, shared with `benches/browser.rs`). Every wait
//! polls with a deadline; the server, chromedriver and the browser are
//! stopped when dropped.

mod browser;

use browser::{BACKGROUND, Browser, OVERLAY_SHOWN, Server, TITLE, Workspace, index, serve, stylesheet};
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
    assert_eq!(browser.eval(BACKGROUND), json!("rgb(255, 0, 0)"));
    browser.run("window.__marker = 42").expect("set the marker");

    browser.arm(&format!("{BACKGROUND} === 'rgb(0, 0, 255)'"));
    let saved = ws.write("static/app.css", &stylesheet((0, 0, 255)));
    let seen = browser.seen("the new background");
    eprintln!("css: save to computed style in {:.0} ms", seen.at - saved);
    assert_eq!(browser.eval("window.__marker"), json!(42), "the page must not reload for a CSS change");
}

#[test]
fn a_template_edit_reloads_the_page_with_the_new_content() {
    let (ws, _server, browser) = start();
    assert_eq!(browser.eval(TITLE), json!("Version 1 Demo"));
    browser.run("window.__marker = 42").expect("set the marker");

    browser.arm(&format!("{TITLE} === 'Version 2 Demo'"));
    let saved = ws.write("templates/index.html", &index("Version 2"));
    let seen = browser.seen("the new heading");
    eprintln!("template: save to new content in {:.0} ms", seen.at - saved);
    assert_eq!(browser.eval("window.__marker === undefined"), json!(true), "a template change reloads the page");

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
